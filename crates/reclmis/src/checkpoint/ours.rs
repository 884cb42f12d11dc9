//! Our checkpoint format: one safetensors file whose metadata holds the model config and the
//! training state as JSON (product.md "Our checkpoint format").
//!
//! Tensors keep the authors' state-dict names. A frozen text tower may live in a sibling file
//! named by the `text_tower` metadata field, so per-epoch training checkpoints carry only what
//! training changes; an imported checkpoint is one self-contained file.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::tensor::Device;
use safetensors::{Dtype, SafeTensors, tensor::TensorView};
use serde::{Deserialize, Serialize};

use crate::model::weights::{HostTensor, WeightsError, load_tensors, named_tensors};
use crate::model::{ModelConfig, RecLMIS};

pub const FORMAT: &str = "reclmis-checkpoint";
pub const FORMAT_VERSION: u32 = 1;

/// Where training stood when the checkpoint was written.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Epochs completed.
    pub epoch: usize,
    /// Optimiser steps taken.
    pub step: u64,
    /// Best validation Dice so far and the epoch (1-based) it was reached at.
    pub best_val_dice: Option<f64>,
    pub best_epoch: Option<usize>,
    /// Where the weights came from (`import:<file>`, `train`, `init`).
    pub origin: String,
}

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("cannot read checkpoint {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a reclmis checkpoint (safetensors): {detail}")]
    Format { path: PathBuf, detail: String },
    #[error(
        "{path} was written by a newer reclmis (format version {found}, this build reads up to \
         {FORMAT_VERSION}); upgrade reclmis"
    )]
    NewerFormat { path: PathBuf, found: u32 },
    #[error("{path}: config field invalid: {detail}")]
    Config { path: PathBuf, detail: String },
    #[error("{path}: {source}")]
    Weights { path: PathBuf, source: WeightsError },
    #[error("{path}: the model needs tensor '{first}' ({count} missing in all)")]
    Missing {
        path: PathBuf,
        first: String,
        count: usize,
    },
}

/// Writes `bytes` to `path` through a temporary sibling and a rename, so a reader never sees a
/// half-written file and an existing file survives a failed write.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty());
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir
        .unwrap_or(Path::new("."))
        .join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// What to put in a checkpoint file.
pub struct SaveOptions<'a> {
    /// Leave the frozen text tower out and point to this sibling file instead.
    pub text_tower_file: Option<&'a str>,
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Serialises named tensors and metadata to safetensors bytes.
pub fn encode(
    tensors: &[(String, HostTensor)],
    metadata: HashMap<String, String>,
) -> Result<Vec<u8>, safetensors::SafeTensorError> {
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(k, t)| (k.clone(), t.shape.clone(), f32_bytes(&t.data)))
        .collect();
    let views: Vec<(String, TensorView)> = bytes
        .iter()
        .map(|(k, s, b)| TensorView::new(Dtype::F32, s.clone(), b).map(|v| (k.clone(), v)))
        .collect::<Result<_, _>>()?;
    safetensors::serialize(views, Some(metadata))
}

/// Encodes and writes atomically.
fn write_tensors(
    path: &Path,
    tensors: &[(String, HostTensor)],
    meta: HashMap<String, String>,
) -> Result<(), CheckpointError> {
    let bytes = encode(tensors, meta).map_err(|e| CheckpointError::Format {
        path: path.into(),
        detail: e.to_string(),
    })?;
    write_atomic(path, &bytes).map_err(|source| CheckpointError::Write {
        path: path.into(),
        source,
    })
}

/// Saves the model with its config and training state.
pub fn save(
    path: &Path,
    model: &RecLMIS,
    cfg: &ModelConfig,
    state: &TrainState,
    opts: SaveOptions,
) -> Result<(), CheckpointError> {
    let mut tensors = named_tensors(model);
    let mut meta = HashMap::new();
    meta.insert("format".into(), FORMAT.into());
    meta.insert("format_version".into(), FORMAT_VERSION.to_string());
    meta.insert(
        "config".into(),
        serde_json::to_string(cfg).expect("a config serialises to JSON"),
    );
    meta.insert(
        "state".into(),
        serde_json::to_string(state).expect("a train state serialises to JSON"),
    );
    if let (Some(file), true) = (opts.text_tower_file, cfg.text_encoder.is_frozen()) {
        tensors.retain(|(k, _)| !k.starts_with("clip."));
        meta.insert("text_tower".into(), file.into());
    }
    write_tensors(path, &tensors, meta)
}

/// Saves only the text tower (`clip.*`), for checkpoints that refer to it.
pub fn save_text_tower(path: &Path, model: &RecLMIS) -> Result<(), CheckpointError> {
    let tensors: Vec<_> = named_tensors(model)
        .into_iter()
        .filter(|(k, _)| k.starts_with("clip."))
        .collect();
    let mut meta = HashMap::new();
    meta.insert("format".into(), FORMAT.into());
    meta.insert("format_version".into(), FORMAT_VERSION.to_string());
    meta.insert("content".into(), "text_tower".into());
    write_tensors(path, &tensors, meta)
}

/// A decoded checkpoint file: its metadata and float tensors.
pub struct RawCheckpoint {
    pub metadata: HashMap<String, String>,
    pub tensors: HashMap<String, HostTensor>,
}

/// Reads and checks a safetensors file of ours (or any safetensors of f32/f16/bf16 tensors).
pub fn read_raw(path: &Path) -> Result<RawCheckpoint, CheckpointError> {
    let bytes = std::fs::read(path).map_err(|source| CheckpointError::Read {
        path: path.into(),
        source,
    })?;
    let bad = |detail: String| CheckpointError::Format {
        path: path.into(),
        detail,
    };
    let st = SafeTensors::deserialize(&bytes).map_err(|e| bad(e.to_string()))?;
    let (_, header) = SafeTensors::read_metadata(&bytes).map_err(|e| bad(e.to_string()))?;
    let metadata = header.metadata().clone().unwrap_or_default();
    let mut tensors = HashMap::new();
    for (name, view) in st.tensors() {
        let d = view.data();
        let data: Vec<f32> = match view.dtype() {
            Dtype::F32 => d
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            Dtype::F16 => d
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            Dtype::BF16 => d
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            other => {
                return Err(bad(format!(
                    "tensor '{name}' has unsupported dtype {other:?}"
                )));
            }
        };
        tensors.insert(
            name,
            HostTensor {
                shape: view.shape().to_vec(),
                data,
            },
        );
    }
    Ok(RawCheckpoint { metadata, tensors })
}

/// Config and state of a checkpoint, without building the model.
pub fn read_header(path: &Path) -> Result<(ModelConfig, TrainState), CheckpointError> {
    let bytes = std::fs::read(path).map_err(|source| CheckpointError::Read {
        path: path.into(),
        source,
    })?;
    let (_, header) = SafeTensors::read_metadata(&bytes).map_err(|e| CheckpointError::Format {
        path: path.into(),
        detail: e.to_string(),
    })?;
    parse_metadata(path, &header.metadata().clone().unwrap_or_default())
}

fn parse_metadata(
    path: &Path,
    meta: &HashMap<String, String>,
) -> Result<(ModelConfig, TrainState), CheckpointError> {
    let bad = |detail: String| CheckpointError::Format {
        path: path.into(),
        detail,
    };
    if meta.get("format").map(String::as_str) != Some(FORMAT) {
        return Err(bad(
            "no reclmis metadata (for the authors' .pth.tar or CLIP weights, run `reclmis import`)"
                .into(),
        ));
    }
    let version: u32 = meta
        .get("format_version")
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| bad("format_version missing or not a number".into()))?;
    if version > FORMAT_VERSION {
        return Err(CheckpointError::NewerFormat {
            path: path.into(),
            found: version,
        });
    }
    let cfg: ModelConfig = serde_json::from_str(meta.get("config").map_or("", String::as_str))
        .map_err(|e| CheckpointError::Config {
            path: path.into(),
            detail: format!("config: {e}"),
        })?;
    cfg.validate().map_err(|e| CheckpointError::Config {
        path: path.into(),
        detail: e.to_string(),
    })?;
    let state: TrainState = match meta.get("state") {
        Some(s) => serde_json::from_str(s).map_err(|e| CheckpointError::Config {
            path: path.into(),
            detail: format!("state: {e}"),
        })?,
        None => TrainState::default(),
    };
    Ok((cfg, state))
}

/// A loaded model with its config and training state.
pub struct Loaded {
    pub model: RecLMIS,
    pub cfg: ModelConfig,
    pub state: TrainState,
}

/// Loads a checkpoint of ours. Every model tensor must be present (directly or in the referenced
/// text-tower file) with the shape the config implies; otherwise nothing is loaded.
pub fn load(path: &Path, device: &Device) -> Result<Loaded, CheckpointError> {
    let raw = read_raw(path)?;
    let (cfg, state) = parse_metadata(path, &raw.metadata)?;
    let mut tensors = raw.tensors;
    if let Some(tower) = raw.metadata.get("text_tower") {
        let tower_path = path.parent().unwrap_or(Path::new(".")).join(tower);
        let t = read_raw(&tower_path)?;
        tensors.extend(t.tensors);
    }
    let model = RecLMIS::new(&cfg, 0, device);
    let (mut model, report) =
        load_tensors(model, &tensors).map_err(|source| CheckpointError::Weights {
            path: path.into(),
            source,
        })?;
    if let Some(first) = report.missing.first() {
        return Err(CheckpointError::Missing {
            path: path.into(),
            first: first.clone(),
            count: report.missing.len(),
        });
    }
    if cfg.text_encoder.is_frozen() {
        model.clip = model.clip.set_require_grad(false);
    }
    Ok(Loaded { model, cfg, state })
}
