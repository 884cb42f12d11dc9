//! PyTorch and Hugging Face weight files, read without running pickled code (docs §6).
//!
//! Three containers arrive here: the authors' `torch.save` checkpoints
//! (`best_model-RecLMIS.pth.tar`), OpenAI's TorchScript `ViT-B-32.pt`, and Hugging Face
//! `CLIPModel` safetensors. All three come out as a [`StateDict`] of materialised tensors under
//! the names the RecLMIS checkpoint uses (OpenAI's CLIP names for the CLIP files).
//!
//! - this file: the shared tensor types, the errors, format sniffing and the `torch.save` reader;
//! - [`archive`]: the zip container torch writes and the tensors its pickle describes;
//! - [`torchscript`]: OpenAI's scripted CLIP;
//! - [`hf_clip`]: Hugging Face's CLIP safetensors, renamed to OpenAI's keys.

mod archive;
mod hf_clip;
#[cfg(test)]
mod tests;
mod torchscript;

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use archive::{Archive, tensor_spec};
pub use hf_clip::{clip_text_from_openai, read_hf_clip};
use torchscript::is_torchscript_root;
pub use torchscript::read_torchscript;

use super::pickle::{self, Value};

/// Element type of a stored tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DType {
    F16,
    BF16,
    F32,
    F64,
    I64,
    I32,
    U8,
    Bool,
}

impl DType {
    /// Bytes per element in the storage.
    pub fn size(self) -> usize {
        match self {
            DType::F16 | DType::BF16 => 2,
            DType::F32 | DType::I32 => 4,
            DType::F64 | DType::I64 => 8,
            DType::U8 | DType::Bool => 1,
        }
    }

    fn from_storage(name: &str) -> Option<DType> {
        Some(match name {
            "FloatStorage" => DType::F32,
            "HalfStorage" => DType::F16,
            "BFloat16Storage" => DType::BF16,
            "DoubleStorage" => DType::F64,
            "LongStorage" => DType::I64,
            "IntStorage" => DType::I32,
            "ByteStorage" => DType::U8,
            "BoolStorage" => DType::Bool,
            _ => return None,
        })
    }
}

/// A tensor materialised in row-major order.
#[derive(Debug, Clone, PartialEq)]
pub struct RawTensor {
    pub shape: Vec<usize>,
    pub dtype: DType,
    /// Every value as f32 (f16/bf16 upcast exactly, f64 and large integers rounded).
    pub data: Vec<f32>,
    /// Exact values for integer and bool dtypes; `None` for floats.
    pub ints: Option<Vec<i64>>,
}

impl RawTensor {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    fn from_f32(shape: Vec<usize>, dtype: DType, data: Vec<f32>) -> Self {
        Self {
            shape,
            dtype,
            data,
            ints: None,
        }
    }

    fn from_ints(shape: Vec<usize>, dtype: DType, ints: Vec<i64>) -> Self {
        Self {
            shape,
            dtype,
            data: ints.iter().map(|&i| i as f32).collect(),
            ints: Some(ints),
        }
    }
}

/// Named tensors in file order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StateDict {
    pub tensors: Vec<(String, RawTensor)>,
}

impl StateDict {
    pub fn get(&self, key: &str) -> Option<&RawTensor> {
        self.tensors.iter().find(|(k, _)| k == key).map(|(_, t)| t)
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.tensors.iter().map(|(k, _)| k.as_str())
    }

    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }
}

/// A `torch.save` training checkpoint: the weights and the bookkeeping saved beside them.
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    pub state_dict: StateDict,
    /// 0-based epoch at which it was saved (docs §6), when present.
    pub epoch: Option<i64>,
    pub best_model: Option<bool>,
    pub model: Option<String>,
    pub val_loss: Option<f64>,
}

/// Which reader a file needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `torch.save` zip (a pickled dict).
    TorchSave,
    /// `torch.jit.save` zip (a pickled module tree), e.g. OpenAI's `ViT-B-32.pt`.
    TorchScript,
    Safetensors,
}

#[derive(Debug, thiserror::Error)]
pub enum TorchError {
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} is empty (0 bytes); re-download or re-save it", path.display())]
    Empty { path: PathBuf },
    #[error("{} is not a readable zip archive (corrupt or truncated?): {source}", path.display())]
    NotZip {
        path: PathBuf,
        source: zip::result::ZipError,
    },
    #[error("{}: zip entry {entry} is corrupt: {reason}", path.display())]
    Entry {
        path: PathBuf,
        entry: String,
        reason: String,
    },
    #[error("{}: no data.pkl in the zip, so it is not a PyTorch file", path.display())]
    NoDataPkl { path: PathBuf },
    #[error(
        "{} is a legacy (pre-1.6, non-zip) torch.save file; re-save it with torch.save in torch >= 1.6",
        path.display()
    )]
    Legacy { path: PathBuf },
    #[error("{}: byte order {order:?} is not supported (only little-endian)", path.display())]
    ByteOrder { path: PathBuf, order: String },
    #[error("{}: {entry}: {source}", path.display())]
    Pickle {
        path: PathBuf,
        entry: String,
        source: pickle::PickleError,
    },
    #[error(
        "{}: {key}: unsupported global {global} (only tensors are read; nothing is executed)",
        path.display()
    )]
    UnsupportedGlobal {
        path: PathBuf,
        key: String,
        global: String,
    },
    #[error("{}: {key}: {reason}", path.display())]
    BadTensor {
        path: PathBuf,
        key: String,
        reason: String,
    },
    #[error("{}: tensor {key}: storage entry {entry} is missing", path.display())]
    MissingStorage {
        path: PathBuf,
        key: String,
        entry: String,
    },
    #[error(
        "{}: tensor {key}: storage {entry} holds {have} elements but {need} are needed (truncated file?)",
        path.display()
    )]
    TruncatedStorage {
        path: PathBuf,
        key: String,
        entry: String,
        need: usize,
        have: usize,
    },
    #[error("{}: {what}", path.display())]
    Structure { path: PathBuf, what: String },
    #[error("{}: not a valid safetensors file: {source}", path.display())]
    Safetensors {
        path: PathBuf,
        source: safetensors::SafeTensorError,
    },
    #[error("{}: tensor {key} is missing", path.display())]
    MissingKey { path: PathBuf, key: String },
    #[error(
        "{}: not a PyTorch zip, TorchScript archive or safetensors file",
        path.display()
    )]
    Unrecognised { path: PathBuf },
}

type Result<T> = std::result::Result<T, TorchError>;

/// Tell the three formats apart by their first bytes (and, for zips, by their entries).
pub fn sniff(path: &Path) -> Result<Format> {
    let head = read_head(path)?;
    if head.starts_with(b"PK") {
        let archive = Archive::open(path)?;
        return Ok(if archive.is_torchscript() {
            Format::TorchScript
        } else {
            Format::TorchSave
        });
    }
    if looks_like_safetensors(path, &head)? {
        return Ok(Format::Safetensors);
    }
    if is_legacy_torch(&head) {
        return Err(TorchError::Legacy { path: path.into() });
    }
    Err(TorchError::Unrecognised { path: path.into() })
}

/// The state dict of a `torch.save` checkpoint: the `state_dict` entry of the authors' dict,
/// or the whole file when it is a bare state dict. A leading `module.` is stripped from keys.
pub fn read_checkpoint(path: &Path) -> Result<StateDict> {
    read_checkpoint_with_meta(path).map(|c| c.state_dict)
}

/// [`read_checkpoint`] plus `epoch`, `best_model`, `model` and `val_loss` when present.
pub fn read_checkpoint_with_meta(path: &Path) -> Result<Checkpoint> {
    read_checkpoint_filtered(path, |_| true)
}

/// [`read_checkpoint_with_meta`] materialising only the tensors whose (`module.`-stripped) key
/// passes `keep`. Copying tensors out is nearly all the time, and a full RecLMIS checkpoint
/// holds 220 M values, most of them in parts inference never uses (`clip.visual.*`, `rec_*`).
/// Every entry is still checked to be a tensor.
pub fn read_checkpoint_filtered(path: &Path, keep: impl Fn(&str) -> bool) -> Result<Checkpoint> {
    let mut archive = Archive::open(path)?;
    let root = archive.data_pkl()?;
    let structure = |what: String| TorchError::Structure {
        path: path.into(),
        what,
    };
    let Value::Dict(top) = &root else {
        let hint = if is_torchscript_root(&root) {
            " (this is a TorchScript archive: read it with read_torchscript)"
        } else {
            ""
        };
        return Err(structure(format!(
            "the pickled top-level value is {}, not a dict{hint}",
            root.type_name()
        )));
    };
    let (sd, is_bare) = match root.get("state_dict") {
        Some(sd) => (sd, false),
        None => (&root, true),
    };
    let Value::Dict(entries) = sd else {
        return Err(structure(format!(
            "state_dict is {}, not a dict",
            sd.type_name()
        )));
    };
    let mut specs = Vec::with_capacity(entries.len());
    for (k, v) in entries {
        let Some(name) = k.as_str() else {
            return Err(structure(format!(
                "state-dict key {k:?} is {}, not a str",
                k.type_name()
            )));
        };
        let name = name.strip_prefix("module.").unwrap_or(name);
        match tensor_spec(v).map_err(|e| e.at(path, name))? {
            Some(spec) if keep(name) => specs.push((name.to_owned(), spec)),
            Some(_) => {}
            None if is_bare => {
                let keys: Vec<_> = top.iter().filter_map(|(k, _)| k.as_str()).collect();
                return Err(structure(format!(
                    "no state_dict entry and {name:?} is {}, so this is not a bare state dict either \
                     (top-level keys: {keys:?})",
                    v.type_name()
                )));
            }
            None => {
                return Err(TorchError::BadTensor {
                    path: path.into(),
                    key: name.to_owned(),
                    reason: format!("holds {}, not a tensor", v.type_name()),
                });
            }
        }
    }
    let val_loss = if is_bare {
        None
    } else {
        scalar(&mut archive, &root, "val_loss")?
    };
    let state_dict = archive.materialise(specs)?;
    Ok(Checkpoint {
        state_dict,
        // A bare state dict holding these names as non-tensors was refused above.
        epoch: root.get("epoch").and_then(|v| v.as_int()),
        best_model: match root.get("best_model") {
            Some(Value::Bool(b)) => Some(*b),
            _ => None,
        },
        model: root
            .get("model")
            .and_then(|v| v.as_str())
            .map(str::to_owned),
        val_loss,
    })
}

/// A top-level scalar that may be a float, an int or a 0-d/1-element tensor.
fn scalar(archive: &mut Archive, root: &Value, key: &str) -> Result<Option<f64>> {
    let Some(v) = root.get(key) else {
        return Ok(None);
    };
    Ok(match v {
        Value::Float(f) => Some(*f),
        Value::Int(i) => Some(*i as f64),
        _ => match tensor_spec(v) {
            Ok(Some(spec)) if spec.numel() == 1 => {
                let sd = archive.materialise(vec![(key.to_owned(), spec)])?;
                sd.tensors
                    .first()
                    .and_then(|(_, t)| t.data.first())
                    .map(|&x| f64::from(x))
            }
            _ => None,
        },
    })
}

// ---------------------------------------------------------------------------------------------
// Files

fn read_file(path: &Path) -> Result<Vec<u8>> {
    let bytes = std::fs::read(path).map_err(|source| TorchError::Io {
        path: path.into(),
        source,
    })?;
    if bytes.is_empty() {
        return Err(TorchError::Empty { path: path.into() });
    }
    Ok(bytes)
}

/// The first 16 bytes; errors for a missing or empty file.
fn read_head(path: &Path) -> Result<Vec<u8>> {
    let io = |source| TorchError::Io {
        path: path.into(),
        source,
    };
    let mut head = Vec::with_capacity(16);
    File::open(path)
        .map_err(io)?
        .take(16)
        .read_to_end(&mut head)
        .map_err(io)?;
    if head.is_empty() {
        return Err(TorchError::Empty { path: path.into() });
    }
    Ok(head)
}

/// Pre-1.6 `torch.save`: a bare pickle starting with PROTO 2 and LONG1 of torch's magic number.
fn is_legacy_torch(head: &[u8]) -> bool {
    head.starts_with(&[
        0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8,
    ])
}

/// Safetensors: an 8-byte little-endian header length, then a JSON object that fits in the file.
fn looks_like_safetensors(path: &Path, head: &[u8]) -> Result<bool> {
    if head.len() < 9 || head[8] != b'{' {
        return Ok(false);
    }
    let mut n = [0u8; 8];
    n.copy_from_slice(&head[..8]);
    let header = u64::from_le_bytes(n);
    let len = std::fs::metadata(path)
        .map_err(|source| TorchError::Io {
            path: path.into(),
            source,
        })?
        .len();
    Ok(header >= 2 && header <= len.saturating_sub(8))
}
