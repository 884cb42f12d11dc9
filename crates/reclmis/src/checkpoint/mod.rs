//! Checkpoints: the authors' PyTorch files (read without running pickle code) and our own format.

pub mod import;
pub mod ours;
pub mod pickle;
pub mod torch;
