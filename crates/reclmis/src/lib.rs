//! RecLMIS: language-guided medical image segmentation.
//!
//! A chest X-ray or CT slice and a short clinical note go in; the lesion mask the note describes
//! comes out, together with the patches (POI) and words (WOI) that drove it. The model is the one
//! of Huang et al., *Cross-Modal Conditioned Reconstruction for Language-guided Medical Image
//! Segmentation* (IEEE TMI 2025), computed exactly as the authors' code computes it.

pub mod model;

pub mod checkpoint;
pub mod data;
pub mod tokenizer;

pub mod error;
pub mod inspect;
pub mod predict;
pub mod report;
pub use error::Error;
pub mod bench;
pub mod demo;
pub mod demo_report;
pub mod eval;
pub mod train;
