//! The library's top-level error: every failure a command can end in, with the exit code and the
//! hint the CLI prints (docs/product.md "Exit codes" and "Bad input").

use std::io::ErrorKind;
use std::path::PathBuf;

use crate::checkpoint::import::ImportError;
use crate::checkpoint::ours::CheckpointError;
use crate::checkpoint::torch::TorchError;
use crate::data::DataError;
use crate::model::config::ConfigError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    Import(#[from] ImportError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Flags that parse but do not make sense together.
    #[error(transparent)]
    Train(#[from] crate::train::TrainError),
    #[error(transparent)]
    Synth(#[from] crate::data::synth::SynthError),
    /// `--device` names a device this build or this machine does not have.
    #[error(transparent)]
    Device(#[from] crate::device::DeviceError),
    #[error("{0}")]
    Usage(String),
    /// Writing an output (or creating its folder) failed.
    #[error("cannot write {}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Exit status of a failed command: bad usage or bad input.
pub const EXIT_BAD_INPUT: i32 = 2;
/// Exit status of a failed command: the input was fine, the run was not.
pub const EXIT_RUNTIME: i32 = 1;

impl Error {
    /// 2 for bad usage or bad input (unreadable data, a corrupt, foreign or missing checkpoint, an
    /// invalid config, an output folder that cannot be written or a full disk, which docs/product.md
    /// lists as bad input); 1 for everything else.
    pub fn exit_code(&self) -> i32 {
        let bad = match self {
            Error::Data(_)
            | Error::Import(_)
            | Error::Config(_)
            | Error::Usage(_)
            | Error::Device(_) => true,
            Error::Checkpoint(CheckpointError::Write { source, .. }) => io_is_bad_input(source),
            Error::Checkpoint(_) => true,
            Error::Io { source, .. } => io_is_bad_input(source),
            Error::Train(t) => {
                use crate::train::TrainError as T;
                match t {
                    T::Checkpoint(CheckpointError::Write { source, .. }) => io_is_bad_input(source),
                    T::Io { source, .. } => io_is_bad_input(source),
                    T::Checkpoint(_)
                    | T::Config(_)
                    | T::Resume(_)
                    | T::Empty
                    | T::SideFocus(_)
                    | T::Devices(_) => true,
                    T::NonFinite { .. } => false,
                }
            }
            Error::Synth(crate::data::synth::SynthError::Io { source, .. }) => {
                io_is_bad_input(source)
            }
            Error::Synth(_) => true,
        };
        if bad { EXIT_BAD_INPUT } else { EXIT_RUNTIME }
    }

    /// A second line for people: what to do about it. `None` where the message says it all.
    pub fn hint(&self) -> Option<String> {
        match self {
            Error::Data(e) => e.hint(),
            Error::Checkpoint(e) => checkpoint_hint(e),
            Error::Import(ImportError::Torch(e)) => torch_hint(e),
            Error::Import(ImportError::WrongModel { detail, .. }) if detail.contains("width") => {
                Some(
                    "the paper presets need CLIP ViT-B/32's text tower (width 512); other CLIP \
                     sizes do not fit them"
                        .into(),
                )
            }
            Error::Import(ImportError::WrongModel { .. }) => Some(
                "`import` reads the authors' best_model-RecLMIS.pth.tar, OpenAI's ViT-B-32.pt or \
                 a Hugging Face CLIP model.safetensors"
                    .into(),
            ),
            Error::Import(_) => None,
            Error::Config(e) if e.0.contains("image size") || e.0.contains("channels") => Some(
                "image size must be a positive multiple of 16, base channels at least 8, and the \
                 text width 8 × base channels"
                    .into(),
            ),
            Error::Config(_) => None,
            Error::Usage(_) => None,
            Error::Io { source, .. } => io_hint(source),
            Error::Train(crate::train::TrainError::NonFinite { .. }) => Some(
                "lower --lr or the batch size; `--resume` continues from the last good checkpoint"
                    .into(),
            ),
            Error::Train(crate::train::TrainError::Resume(_)) => Some(
                "--resume needs the run folder of an earlier `train` with the same model flags"
                    .into(),
            ),
            Error::Train(crate::train::TrainError::Checkpoint(e)) => checkpoint_hint(e),
            Error::Train(crate::train::TrainError::Io { source, .. }) => io_hint(source),
            Error::Train(crate::train::TrainError::SideFocus(_)) => Some(
                "train without --side-focus, or on notes that name the side of each lesion".into(),
            ),
            Error::Train(_) => None,
            Error::Synth(e) => e.hint(),
            Error::Device(e) => e.hint(),
        }
    }
}

/// Output problems the user can fix: a missing, read-only or full destination.
fn io_is_bad_input(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::PermissionDenied
            | ErrorKind::NotFound
            | ErrorKind::ReadOnlyFilesystem
            | ErrorKind::NotADirectory
            | ErrorKind::IsADirectory
            | ErrorKind::AlreadyExists
            | ErrorKind::StorageFull
            | ErrorKind::QuotaExceeded
            | ErrorKind::InvalidFilename
    )
}

fn io_hint(e: &std::io::Error) -> Option<String> {
    match e.kind() {
        ErrorKind::PermissionDenied | ErrorKind::ReadOnlyFilesystem => {
            Some("choose an output folder you can write to (--out)".into())
        }
        ErrorKind::NotADirectory | ErrorKind::AlreadyExists => {
            Some("--out names an existing file; give a folder path".into())
        }
        ErrorKind::StorageFull | ErrorKind::QuotaExceeded => {
            Some("free some disk space or choose another --out; nothing else was changed".into())
        }
        _ => None,
    }
}

fn checkpoint_hint(e: &CheckpointError) -> Option<String> {
    match e {
        CheckpointError::Read { .. } => Some("check the --checkpoint path".into()),
        // The "not ours" message already points at `reclmis import`.
        CheckpointError::Format { detail, .. } if detail.contains("reclmis import") => None,
        CheckpointError::Format { .. } => Some(
            "the file is truncated or not a safetensors file; copy it again, or convert the \
             authors' checkpoint with `reclmis import`"
                .into(),
        ),
        CheckpointError::Weights { .. } | CheckpointError::Missing { .. } => Some(
            "the tensors do not fit the config stored in the file; re-create it with \
             `reclmis import` or training"
                .into(),
        ),
        CheckpointError::Write { source, .. } => io_hint(source),
        CheckpointError::Corrupt { .. } => Some(
            "a bit flipped on disk or a copy went wrong: restore the file from another copy (a \
             run folder keeps best.safetensors and last.safetensors)"
                .into(),
        ),
        CheckpointError::NewerFormat { .. }
        | CheckpointError::Config { .. }
        | CheckpointError::Fp16Range { .. } => None,
    }
}

fn torch_hint(e: &TorchError) -> Option<String> {
    match e {
        TorchError::Unrecognised { .. } => Some(
            "`import` reads the authors' best_model-RecLMIS.pth.tar, OpenAI's ViT-B-32.pt or a \
             Hugging Face CLIP model.safetensors"
                .into(),
        ),
        TorchError::NotZip { .. }
        | TorchError::Entry { .. }
        | TorchError::TruncatedStorage { .. }
        | TorchError::MissingStorage { .. }
        | TorchError::Safetensors { .. } => {
            Some("the file looks truncated or corrupt; download or copy it again".into())
        }
        TorchError::Io { .. } => Some("check the path".into()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_product_table() {
        let data = Error::from(DataError::Image {
            path: "a.png".into(),
            reason: "truncated".into(),
        });
        assert_eq!(data.exit_code(), 2);
        assert!(data.to_string().contains("a.png"));
        let corrupt = Error::from(CheckpointError::Format {
            path: "c.safetensors".into(),
            detail: "header too large".into(),
        });
        assert_eq!(corrupt.exit_code(), 2);
        assert!(corrupt.hint().is_some_and(|h| h.contains("truncated")));
        assert_eq!(Error::Usage("x".into()).exit_code(), 2);
        assert_eq!(Error::from(ConfigError("bad".into())).exit_code(), 2);
        let denied = Error::Io {
            path: "out".into(),
            source: std::io::Error::from(ErrorKind::PermissionDenied),
        };
        assert_eq!(denied.exit_code(), 2);
        let other = Error::Io {
            path: "out".into(),
            source: std::io::Error::other("device lost"),
        };
        assert_eq!(other.exit_code(), 1);
        assert!(other.to_string().contains("cannot write out"));
        // A full disk during training: bad input, with what to do about it.
        let full = Error::from(crate::train::TrainError::Io {
            path: "run/optimizer-00003.bin".into(),
            source: std::io::Error::from(ErrorKind::StorageFull),
        });
        assert_eq!(full.exit_code(), 2);
        assert!(
            full.hint()
                .is_some_and(|h| h.contains("free some disk space"))
        );
    }
}
