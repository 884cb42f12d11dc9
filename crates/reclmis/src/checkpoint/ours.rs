//! Our checkpoint format: one safetensors file whose metadata holds the model config and the
//! training state as JSON (docs/product.md "Our checkpoint format").
//!
//! Tensors keep the authors' state-dict names. A frozen text tower may live in a sibling file
//! named by the `text_tower` metadata field, so per-epoch training checkpoints carry only what
//! training changes; an imported checkpoint is one self-contained file, and so is an exported one
//! (`export`), which may also store float16 and leave out what only training uses.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::tensor::Device;
use safetensors::{Dtype, SafeTensors, tensor::TensorView};
use serde::{Deserialize, Serialize};

use crate::files::write_atomic;
use crate::inspect::is_training_only;
use crate::model::weights::{HostTensor, WeightsError, load_tensors, named_tensors};
use crate::model::{ModelConfig, RecLMIS};
use crate::train::RunPaths;

pub const FORMAT: &str = "reclmis-checkpoint";
pub const FORMAT_VERSION: u32 = 1;

/// Metadata field marking a checkpoint without the training-only tensors: `"true"` lets `load`
/// initialise them instead of failing.
pub const INFERENCE_ONLY: &str = "inference_only";

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
    #[error(
        "{path}: the weights do not match the SHA-256 written with them (expected {}…, found \
         {}…): the file changed after it was saved",
        &expected[..12.min(expected.len())],
        &found[..12]
    )]
    Corrupt {
        path: PathBuf,
        expected: String,
        found: String,
    },
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
    #[error(
        "{path}: tensor '{key}' holds {value}, outside float16's range (±65504); keep this \
         checkpoint in float32"
    )]
    Fp16Range {
        path: PathBuf,
        key: String,
        value: f32,
    },
}

/// The checkpoint file of `path`: a run folder means its `best.safetensors`.
pub fn checkpoint_file(path: &Path) -> PathBuf {
    if path.is_dir() {
        RunPaths {
            dir: path.to_path_buf(),
        }
        .best()
    } else {
        path.to_path_buf()
    }
}

/// How a checkpoint stores its tensors; `load` reads either into float32.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreDtype {
    /// Exactly what the model computes with.
    #[default]
    F32,
    /// Half the size; weights rounded to 11 significant bits.
    F16,
}

impl StoreDtype {
    fn safetensors(self) -> Dtype {
        match self {
            StoreDtype::F32 => Dtype::F32,
            StoreDtype::F16 => Dtype::F16,
        }
    }
}

/// What to put in a checkpoint file.
#[derive(Clone, Copy, Debug, Default)]
pub struct SaveOptions<'a> {
    /// Leave the frozen text tower out and point to this sibling file instead.
    pub text_tower_file: Option<&'a str>,
    pub dtype: StoreDtype,
    /// Leave out the tensors only training uses (`inspect`'s "training only" blocks: the
    /// reconstructors and CLIP's logit scale) and mark the file, so `load` initialises them.
    pub inference_only: bool,
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Float16 bytes, or the first finite value float16 cannot hold.
fn f16_bytes(v: &[f32]) -> Result<Vec<u8>, f32> {
    let mut out = Vec::with_capacity(2 * v.len());
    for &x in v {
        let h = half::f16::from_f32(x);
        if x.is_finite() && !h.is_finite() {
            return Err(x);
        }
        out.extend_from_slice(&h.to_le_bytes());
    }
    Ok(out)
}

/// Serialises named tensors and metadata to safetensors bytes (float32).
pub fn encode(
    tensors: &[(String, HostTensor)],
    metadata: HashMap<String, String>,
) -> Result<Vec<u8>, safetensors::SafeTensorError> {
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(k, t)| (k.clone(), t.shape.clone(), f32_bytes(&t.data)))
        .collect();
    serialize(&bytes, Dtype::F32, metadata)
}

fn serialize(
    bytes: &[(String, Vec<usize>, Vec<u8>)],
    dtype: Dtype,
    mut metadata: HashMap<String, String>,
) -> Result<Vec<u8>, safetensors::SafeTensorError> {
    let views: Vec<(String, TensorView)> = bytes
        .iter()
        .map(|(k, s, b)| TensorView::new(dtype, s.clone(), b).map(|v| (k.clone(), v)))
        .collect::<Result<_, _>>()?;
    metadata.insert(
        WEIGHTS_SHA256.into(),
        weights_digest(views.iter().map(|(k, v)| (k.as_str(), v))),
    );
    safetensors::serialize(views, Some(metadata))
}

/// Metadata field holding the SHA-256 of the tensors, checked on every read: a file whose
/// weight bytes changed after it was written (a flipped bit on disk, a bad copy) is refused
/// instead of predicting slightly different masks.
pub const WEIGHTS_SHA256: &str = "weights_sha256";

/// SHA-256 over the tensors in name order: each name, dtype, shape and data bytes.
fn weights_digest<'a, V: safetensors::View + 'a>(
    tensors: impl Iterator<Item = (&'a str, &'a V)>,
) -> String {
    use sha2::{Digest, Sha256};
    let mut sorted: Vec<(&str, &V)> = tensors.collect();
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    let mut h = Sha256::new();
    for (name, v) in sorted {
        h.update((name.len() as u64).to_le_bytes());
        h.update(name.as_bytes());
        h.update(format!("{:?}{:?}", v.dtype(), v.shape()).as_bytes());
        h.update(v.data().as_ref());
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Encodes in `dtype` and writes atomically.
fn write_tensors(
    path: &Path,
    tensors: &[(String, HostTensor)],
    meta: HashMap<String, String>,
    dtype: StoreDtype,
) -> Result<(), CheckpointError> {
    let mut bytes = Vec::with_capacity(tensors.len());
    for (key, t) in tensors {
        let data = match dtype {
            StoreDtype::F32 => f32_bytes(&t.data),
            StoreDtype::F16 => f16_bytes(&t.data).map_err(|value| CheckpointError::Fp16Range {
                path: path.into(),
                key: key.clone(),
                value,
            })?,
        };
        bytes.push((key.clone(), t.shape.clone(), data));
    }
    let bytes =
        serialize(&bytes, dtype.safetensors(), meta).map_err(|e| CheckpointError::Format {
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
    state: &TrainState,
    opts: SaveOptions,
) -> Result<(), CheckpointError> {
    let mut tensors = named_tensors(model);
    let cfg = model.cfg();
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
    if opts.inference_only {
        tensors.retain(|(k, _)| !is_training_only(k));
        meta.insert(INFERENCE_ONLY.into(), "true".into());
    }
    write_tensors(path, &tensors, meta, opts.dtype)
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
    write_tensors(path, &tensors, meta, StoreDtype::F32)
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
    // Files written before the checksum existed (and other tools' files) have none to check.
    if let Some(expected) = metadata.get(WEIGHTS_SHA256) {
        let views = st.tensors();
        let found = weights_digest(views.iter().map(|(k, v)| (k.as_str(), v)));
        if &found != expected {
            return Err(CheckpointError::Corrupt {
                path: path.into(),
                expected: expected.clone(),
                found,
            });
        }
    }
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
    /// The model, its config inside ([`RecLMIS::cfg`]).
    pub model: RecLMIS,
    pub state: TrainState,
    /// The file left out the training-only tensors; the model holds fresh ones in their place.
    pub inference_only: bool,
}

/// Loads a checkpoint of ours. Every model tensor must be present (directly or in the referenced
/// text-tower file) with the shape the config implies; otherwise nothing is loaded. The one
/// exception: a file marked inference-only may lack the training-only tensors, which are then
/// freshly initialised (segmentation and POI/WOI never read them).
pub fn load(path: &Path, device: &Device) -> Result<Loaded, CheckpointError> {
    let raw = read_raw(path)?;
    let inference_only = raw.metadata.get(INFERENCE_ONLY).map(String::as_str) == Some("true");
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
    let missing: Vec<&String> = report
        .missing
        .iter()
        .filter(|k| !(inference_only && is_training_only(k)))
        .collect();
    if let Some(first) = missing.first() {
        return Err(CheckpointError::Missing {
            path: path.into(),
            first: first.to_string(),
            count: missing.len(),
        });
    }
    if cfg.text_encoder.is_frozen() {
        model.clip = model.clip.set_require_grad(false);
    }
    Ok(Loaded {
        model,
        state,
        inference_only,
    })
}

/// How `export` writes its copy.
#[derive(Clone, Copy, Debug, Default)]
pub struct ExportOptions {
    pub dtype: StoreDtype,
    /// Leave out the training-only tensors (see [`SaveOptions::inference_only`]).
    pub inference_only: bool,
}

/// What `export` wrote.
#[derive(Clone, Debug)]
pub struct Exported {
    /// The checkpoint file read (a run folder's `best.safetensors`).
    pub source: PathBuf,
    pub cfg: ModelConfig,
    pub tensors: usize,
    /// Training-only tensors left out.
    pub left_out: usize,
    pub inference_only: bool,
    pub bytes: u64,
}

/// Writes a self-contained copy of the checkpoint `src` (a file, or a run folder's best) to
/// `out`: a text tower kept in a sibling file is embedded, tensors are stored in `opts.dtype`,
/// and with `opts.inference_only` the training-only tensors are left out. The source is loaded
/// and checked first, so a bad source writes nothing. A source that is itself inference-only
/// stays so: its training-only tensors cannot be brought back.
pub fn export(
    src: &Path,
    out: &Path,
    opts: ExportOptions,
    device: &Device,
) -> Result<Exported, CheckpointError> {
    let source = checkpoint_file(src);
    let loaded = load(&source, device)?;
    let inference_only = opts.inference_only || loaded.inference_only;
    let keys: Vec<String> = crate::model::weights::named_shapes(&loaded.model)
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    let left_out = if inference_only {
        keys.iter().filter(|k| is_training_only(k)).count()
    } else {
        0
    };
    save(
        out,
        &loaded.model,
        &loaded.state,
        SaveOptions {
            text_tower_file: None,
            dtype: opts.dtype,
            inference_only,
        },
    )?;
    let bytes = std::fs::metadata(out).map_or(0, |m| m.len());
    Ok(Exported {
        source,
        cfg: loaded.model.cfg.clone(),
        tensors: keys.len() - left_out,
        left_out,
        inference_only,
        bytes,
    })
}

#[cfg(test)]
mod tests;
