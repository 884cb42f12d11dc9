//! Helpers shared by the binary's test targets (`cli`, `crash`, `serve`): where the reference
//! fixtures are, scratch folders, and the parity fixture's tensors. Each target uses a part.
#![allow(dead_code)]

use std::path::PathBuf;

/// The shared folder beside the checkout (`RECLMIS_SHARED` overrides it).
pub fn shared() -> PathBuf {
    std::env::var_os("RECLMIS_SHARED")
        .map(Into::into)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared"))
}

/// The authors' QaTa checkpoint with its inputs and every intermediate tensor (docs §1.11).
pub fn parity_dir() -> PathBuf {
    shared().join("reference/official-parity/qata")
}

/// A fresh folder under the system temp dir, removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let dir =
            std::env::temp_dir().join(format!("reclmis-cli-{tag}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub fn join(&self, rel: &str) -> PathBuf {
        self.0.join(rel)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The raw little-endian bytes of tensor `name` in the parity fixture's `io.safetensors`.
fn io_bytes(name: &str) -> Vec<u8> {
    let bytes = std::fs::read(parity_dir().join("io.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensor(name).unwrap().data().to_vec()
}

pub fn io_floats(name: &str) -> Vec<f32> {
    io_bytes(name)
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

pub fn io_ints(name: &str) -> Vec<i64> {
    io_bytes(name)
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
        .collect()
}
