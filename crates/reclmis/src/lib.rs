//! RecLMIS: language-guided medical image segmentation.
//!
//! A chest X-ray or CT slice and a short clinical note go in; the lesion mask the note describes
//! comes out, together with the patches (POI) and words (WOI) that drove it. The model is the one
//! of Huang et al., *Cross-Modal Conditioned Reconstruction for Language-guided Medical Image
//! Segmentation* (IEEE TMI 2025), computed exactly as the authors' code computes it.

pub mod app;
pub mod bench;
pub mod checkpoint;
pub mod data;
pub mod demo;
pub mod device;
pub mod error;
pub mod eval;
pub mod files;
pub mod finding;
pub mod inspect;
pub mod kernels;
pub mod model;
pub mod predict;
pub mod report;
pub mod rng;
pub mod step;
pub mod tokenizer;
pub mod train;

pub use error::Error;

/// What the unit tests share: the reference folder beside the checkout (`../shared`, or
/// `RECLMIS_SHARED`).
#[cfg(test)]
pub(crate) mod test_support {
    pub fn shared() -> std::path::PathBuf {
        std::env::var_os("RECLMIS_SHARED")
            .map(Into::into)
            .unwrap_or_else(|| {
                std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared")
            })
    }
}
