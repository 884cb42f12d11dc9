//! Shared by the targets: the input bytes as a file the reader opens (readers take paths), in a
//! folder of this process's own.

use std::path::PathBuf;

// Not every target reads from disk (nifti reads from memory only).
#[allow(dead_code)]
pub fn as_file(name: &str, data: &[u8]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("reclmis-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, data).unwrap();
    path
}

/// A refusal must name the file, like every error of reclmis.
pub fn names_the_file<T, E: std::fmt::Display>(r: Result<T, E>, name: &str) {
    if let Err(e) = r {
        let msg = e.to_string();
        assert!(
            msg.contains(name),
            "the error does not name the file: {msg}"
        );
    }
}
