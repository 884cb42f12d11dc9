//! Writing files so that a crash never leaves half of one: every file reclmis writes (checkpoints,
//! metrics, configs, reports, pictures) goes through [`write_atomic`].

use std::io::Write;
use std::path::Path;

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
        f.write_all(bytes)?;
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
