//! Writing files so that a crash never leaves half of one: every file reclmis writes (checkpoints,
//! metrics, configs, reports, pictures) goes through [`write_atomic`].

use std::io::Write;
use std::path::Path;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// Fault injection for tests: with `RECLMIS_FAIL_WRITE_AFTER_BYTES=N` in the environment,
/// [`write_atomic`] fails as a full disk does ("No space left on device") once this process has
/// written N bytes through it, so the tests can check what a full disk leaves behind without
/// filling one. Read once, at the first write; unset (or not a number), writes are unlimited.
pub const FAIL_WRITE_AFTER_BYTES: &str = "RECLMIS_FAIL_WRITE_AFTER_BYTES";

/// Writes `bytes` to `path` through a temporary sibling, `fsync` and a rename, then syncs the
/// folder: a reader never sees a half-written file, an existing file survives a failed write, and
/// once this returns the new file survives a power cut or a killed process.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty());
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let dir = dir.unwrap_or(Path::new("."));
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        let room = injected_room(bytes.len());
        f.write_all(&bytes[..room])?;
        if room < bytes.len() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::StorageFull,
                "No space left on device",
            ));
        }
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
        return result;
    }
    sync_dir(dir);
    Ok(())
}

/// Makes a rename in `dir` durable. Best effort: some file systems refuse to sync a folder, and
/// the file itself is already complete on disk.
fn sync_dir(dir: &Path) {
    #[cfg(unix)]
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    #[cfg(not(unix))]
    let _ = dir;
}

/// How many of the next `want` bytes may be written under [`FAIL_WRITE_AFTER_BYTES`]: all of them
/// without it.
fn injected_room(want: usize) -> usize {
    static LIMIT: OnceLock<Option<u64>> = OnceLock::new();
    static WRITTEN: AtomicU64 = AtomicU64::new(0);
    let limit = LIMIT.get_or_init(|| {
        std::env::var(FAIL_WRITE_AFTER_BYTES)
            .ok()
            .and_then(|v| v.trim().parse().ok())
    });
    let Some(limit) = *limit else {
        return want;
    };
    let before = WRITTEN.fetch_add(want as u64, Ordering::Relaxed);
    limit.saturating_sub(before).min(want as u64) as usize
}
