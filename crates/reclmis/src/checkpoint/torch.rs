//! PyTorch and Hugging Face weight files, read without running pickled code (reclmis.md §6).
//!
//! Three containers arrive here: the authors' `torch.save` checkpoints
//! (`best_model-RecLMIS.pth.tar`), OpenAI's TorchScript `ViT-B-32.pt`, and Hugging Face
//! `CLIPModel` safetensors. All three come out as a [`StateDict`] of materialised tensors under
//! the names the RecLMIS checkpoint uses (OpenAI's CLIP names for the CLIP files).

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use rayon::prelude::*;

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

    /// Integer (and bool) types, whose exact values go to [`RawTensor::ints`].
    pub fn is_int(self) -> bool {
        matches!(self, DType::I64 | DType::I32 | DType::U8 | DType::Bool)
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
    /// 0-based epoch at which it was saved (reclmis.md §6), when present.
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

/// Parameters and buffers of a TorchScript archive (OpenAI's `ViT-B-32.pt` form), named by their
/// attribute path from the root module: `transformer.resblocks.0.attn.in_proj_weight`, ….
pub fn read_torchscript(path: &Path) -> Result<StateDict> {
    let mut archive = Archive::open(path)?;
    let root = archive.data_pkl()?;
    if !is_torchscript_root(&root) {
        return Err(TorchError::Structure {
            path: path.into(),
            what: format!(
                "the pickled top-level value is {}, not a TorchScript module (a torch.save file? use read_checkpoint)",
                root.type_name()
            ),
        });
    }
    let mut specs = Vec::new();
    walk_module(path, &root, "", &mut specs)?;
    if specs.is_empty() {
        return Err(TorchError::Structure {
            path: path.into(),
            what: "the TorchScript module holds no tensors".into(),
        });
    }
    archive.materialise(specs)
}

/// Text tower of a Hugging Face `CLIPModel` safetensors file under OpenAI's names, in OpenAI's
/// order, so it compares key for key with [`read_torchscript`] of the same weights.
pub fn read_hf_clip(path: &Path) -> Result<StateDict> {
    let bytes = read_file(path)?;
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|source| {
        TorchError::Safetensors {
            path: path.into(),
            source,
        }
    })?;
    let get = |key: &str| -> Result<RawTensor> {
        let view = st.tensor(key).map_err(|_| TorchError::MissingKey {
            path: path.into(),
            key: key.into(),
        })?;
        safetensors_tensor(&view).map_err(|reason| TorchError::BadTensor {
            path: path.into(),
            key: key.into(),
            reason,
        })
    };
    let layers = st
        .names()
        .iter()
        .filter_map(|n| n.strip_prefix("text_model.encoder.layers."))
        .filter_map(|rest| rest.split('.').next()?.parse::<usize>().ok())
        .max()
        .map_or(0, |n| n + 1);
    if layers == 0 {
        return Err(TorchError::MissingKey {
            path: path.into(),
            key: "text_model.encoder.layers.0.*".into(),
        });
    }

    let mut out = Vec::with_capacity(6 + 12 * layers);
    out.push((
        "positional_embedding".to_owned(),
        get("text_model.embeddings.position_embedding.weight")?,
    ));
    // HF keeps the projection as a Linear weight [embed_dim, width]; OpenAI multiplies by
    // [width, embed_dim].
    let proj = get("text_projection.weight")?;
    let proj = transpose_2d(&proj).map_err(|reason| TorchError::BadTensor {
        path: path.into(),
        key: "text_projection.weight".into(),
        reason,
    })?;
    out.push(("text_projection".to_owned(), proj));
    out.push(("logit_scale".to_owned(), get("logit_scale")?));
    for n in 0..layers {
        let hf = format!("text_model.encoder.layers.{n}");
        let ours = format!("transformer.resblocks.{n}");
        for (suffix, what) in [("in_proj_weight", "weight"), ("in_proj_bias", "bias")] {
            let qkv = ["q", "k", "v"].map(|p| format!("{hf}.self_attn.{p}_proj.{what}"));
            let parts = [get(&qkv[0])?, get(&qkv[1])?, get(&qkv[2])?];
            let joined = concat_rows(&parts).map_err(|reason| TorchError::BadTensor {
                path: path.into(),
                key: qkv[0].clone(),
                reason,
            })?;
            out.push((format!("{ours}.attn.{suffix}"), joined));
        }
        for (from, to) in [
            ("self_attn.out_proj.weight", "attn.out_proj.weight"),
            ("self_attn.out_proj.bias", "attn.out_proj.bias"),
            ("layer_norm1.weight", "ln_1.weight"),
            ("layer_norm1.bias", "ln_1.bias"),
            ("mlp.fc1.weight", "mlp.c_fc.weight"),
            ("mlp.fc1.bias", "mlp.c_fc.bias"),
            ("mlp.fc2.weight", "mlp.c_proj.weight"),
            ("mlp.fc2.bias", "mlp.c_proj.bias"),
            ("layer_norm2.weight", "ln_2.weight"),
            ("layer_norm2.bias", "ln_2.bias"),
        ] {
            out.push((format!("{ours}.{to}"), get(&format!("{hf}.{from}"))?));
        }
    }
    out.push((
        "token_embedding.weight".to_owned(),
        get("text_model.embeddings.token_embedding.weight")?,
    ));
    out.push((
        "ln_final.weight".to_owned(),
        get("text_model.final_layer_norm.weight")?,
    ));
    out.push((
        "ln_final.bias".to_owned(),
        get("text_model.final_layer_norm.bias")?,
    ));
    Ok(StateDict { tensors: out })
}

/// The text-tower tensors of an OpenAI-named CLIP state dict, renamed `clip.*` as in the
/// RecLMIS state dict (reclmis.md §6). The visual tower and extras such as `attn_mask`,
/// `input_resolution` or `context_length` are dropped.
pub fn clip_text_from_openai(sd: &StateDict) -> StateDict {
    let tensors = sd
        .tensors
        .iter()
        .filter(|(k, _)| is_openai_text_key(k))
        .map(|(k, t)| (format!("clip.{k}"), t.clone()))
        .collect();
    StateDict { tensors }
}

fn is_openai_text_key(key: &str) -> bool {
    const TOP: [&str; 6] = [
        "positional_embedding",
        "text_projection",
        "logit_scale",
        "token_embedding.weight",
        "ln_final.weight",
        "ln_final.bias",
    ];
    const BLOCK: [&str; 12] = [
        "attn.in_proj_weight",
        "attn.in_proj_bias",
        "attn.out_proj.weight",
        "attn.out_proj.bias",
        "ln_1.weight",
        "ln_1.bias",
        "mlp.c_fc.weight",
        "mlp.c_fc.bias",
        "mlp.c_proj.weight",
        "mlp.c_proj.bias",
        "ln_2.weight",
        "ln_2.bias",
    ];
    if TOP.contains(&key) {
        return true;
    }
    key.strip_prefix("transformer.resblocks.")
        .and_then(|rest| rest.split_once('.'))
        .is_some_and(|(n, suffix)| n.parse::<usize>().is_ok() && BLOCK.contains(&suffix))
}

// ---------------------------------------------------------------------------------------------
// Tensors in the pickle

/// Where a tensor's values live and how to walk them (`_rebuild_tensor_v2` arguments).
#[derive(Debug, Clone, PartialEq)]
struct TensorSpec {
    /// Name of the `data/<storage>` entry.
    storage: String,
    dtype: DType,
    /// Elements the persistent id declares for the storage.
    storage_numel: usize,
    /// In elements.
    offset: usize,
    shape: Vec<usize>,
    /// In elements; 0 for broadcast (expanded) dimensions.
    strides: Vec<usize>,
}

impl TensorSpec {
    fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// One past the last storage element the view touches (0 for an empty tensor).
    fn extent(&self) -> Option<usize> {
        if self.shape.contains(&0) {
            return Some(0);
        }
        let mut last = self.offset;
        for (&n, &s) in self.shape.iter().zip(&self.strides) {
            last = last.checked_add((n - 1).checked_mul(s)?)?;
        }
        last.checked_add(1)
    }

    fn is_contiguous(&self) -> bool {
        let mut expected = 1;
        for (&n, &s) in self.shape.iter().zip(&self.strides).rev() {
            if n != 1 && s != expected {
                return false;
            }
            expected *= n;
        }
        true
    }
}

/// Why a value is not a usable tensor; the caller adds the file and the key.
enum SpecError {
    Global(String),
    Malformed(String),
}

impl SpecError {
    fn at(self, path: &Path, key: &str) -> TorchError {
        match self {
            SpecError::Global(global) => TorchError::UnsupportedGlobal {
                path: path.into(),
                key: key.into(),
                global,
            },
            SpecError::Malformed(reason) => TorchError::BadTensor {
                path: path.into(),
                key: key.into(),
                reason,
            },
        }
    }
}

fn malformed<T>(reason: impl Into<String>) -> std::result::Result<T, SpecError> {
    Err(SpecError::Malformed(reason.into()))
}

/// The tensor a value describes; `Ok(None)` for values that are not calls at all (ints, strs,
/// dicts …), an error for calls this reader does not understand.
fn tensor_spec(v: &Value) -> std::result::Result<Option<TensorSpec>, SpecError> {
    let Some(obj) = v.as_object() else {
        return Ok(None);
    };
    let Some((module, name)) = obj.global() else {
        return malformed("a call of a non-global callable");
    };
    let args = obj.args.as_seq().unwrap_or(&[]);
    match (module, name) {
        // nn.Parameter wraps the plain tensor rebuild.
        ("torch._utils", "_rebuild_parameter" | "_rebuild_parameter_with_state") => {
            match args.first() {
                Some(inner) => match tensor_spec(inner)? {
                    Some(spec) => Ok(Some(spec)),
                    None => malformed("a Parameter around a non-tensor"),
                },
                None => malformed("a Parameter without data"),
            }
        }
        ("torch._utils", "_rebuild_tensor_v2" | "_rebuild_tensor") => rebuild_args(args).map(Some),
        _ => Err(SpecError::Global(format!("{module}.{name}"))),
    }
}

/// `(storage, storage_offset, size, stride, ...)`.
fn rebuild_args(args: &[Value]) -> std::result::Result<TensorSpec, SpecError> {
    let [storage, offset, size, stride, ..] = args else {
        return malformed(format!(
            "_rebuild_tensor_v2 has {} arguments, expected at least 4",
            args.len()
        ));
    };
    let Value::PersistentId(pid) = storage else {
        return malformed(format!(
            "tensor storage is {}, not a persistent id",
            storage.type_name()
        ));
    };
    // ('storage', torch.<Type>Storage, key, location, numel). The location is ignored:
    // paper-parity: §7 quirk 27 (the authors save val_loss on 'cuda:0').
    let pid = pid.as_seq().unwrap_or(&[]);
    let [tag, ty, key, _location, numel, ..] = pid else {
        return malformed(format!("storage id has {} fields, expected 5", pid.len()));
    };
    if tag.as_str() != Some("storage") {
        return malformed(format!("persistent id of kind {tag:?}, expected 'storage'"));
    }
    let Some((ty_module, ty_name)) = ty.as_global() else {
        return malformed(format!("storage type is {}", ty.type_name()));
    };
    let dtype = match DType::from_storage(ty_name) {
        Some(d) if ty_module == "torch" => d,
        _ => return Err(SpecError::Global(format!("{ty_module}.{ty_name}"))),
    };
    let storage = match key {
        Value::Str(s) => s.clone(),
        Value::Int(i) => i.to_string(),
        other => return malformed(format!("storage key is {}", other.type_name())),
    };
    let index = |v: &Value, what: &str| -> std::result::Result<usize, SpecError> {
        v.as_int()
            .and_then(|i| usize::try_from(i).ok())
            .map_or_else(
                || malformed(format!("{what} {v:?} is not a non-negative int")),
                Ok,
            )
    };
    let dims = |v: &Value, what: &str| -> std::result::Result<Vec<usize>, SpecError> {
        let Some(items) = v.as_seq() else {
            return malformed(format!("{what} is {}, not a tuple", v.type_name()));
        };
        items.iter().map(|x| index(x, what)).collect()
    };
    let spec = TensorSpec {
        storage,
        dtype,
        storage_numel: index(numel, "storage size")?,
        offset: index(offset, "storage offset")?,
        shape: dims(size, "size")?,
        strides: dims(stride, "stride")?,
    };
    if spec.shape.len() != spec.strides.len() {
        return malformed(format!(
            "size {:?} and stride {:?} differ in length",
            spec.shape, spec.strides
        ));
    }
    // Bounded so that the materialised copy (8 bytes per element at most) can be allocated;
    // a stride-0 view may claim far more elements than its storage holds.
    let numel = spec.shape.iter().try_fold(1usize, |a, &n| a.checked_mul(n));
    if numel.is_none_or(|n| n > isize::MAX as usize / 8) {
        return malformed(format!("size {:?} is too large", spec.shape));
    }
    Ok(spec)
}

fn is_torchscript_root(v: &Value) -> bool {
    v.as_object()
        .and_then(|o| o.global())
        .is_some_and(|(m, _)| m.starts_with("__torch__"))
}

/// Depth-first over a scripted module's attributes, in their pickled order: tensors are named
/// by their attribute path, `__torch__.*` objects are descended into, everything else is skipped.
fn walk_module(
    path: &Path,
    module: &Value,
    prefix: &str,
    out: &mut Vec<(String, TensorSpec)>,
) -> Result<()> {
    let Some(attrs) = module
        .as_object()
        .and_then(|o| o.state.as_ref())
        .and_then(|s| s.as_dict())
    else {
        return Ok(());
    };
    for (k, v) in attrs {
        let Some(name) = k.as_str() else { continue };
        let key = format!("{prefix}{name}");
        if is_torchscript_root(v) {
            walk_module(path, v, &format!("{key}."), out)?;
            continue;
        }
        match tensor_spec(v) {
            Ok(Some(spec)) => out.push((key, spec)),
            // Non-tensor attributes (flags, hooks, ints, objects of other classes) carry no weights.
            Ok(None) | Err(SpecError::Global(_)) => {}
            Err(e) => return Err(e.at(path, &key)),
        }
    }
    Ok(())
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
// The zip container

struct Archive {
    path: PathBuf,
    zip: zip::ZipArchive<BufReader<File>>,
    /// `<folder>/`, shared by every entry; the folder name varies between writers.
    prefix: String,
    file_len: u64,
}

impl Archive {
    fn open(path: &Path) -> Result<Self> {
        let io = |source| TorchError::Io {
            path: path.into(),
            source,
        };
        let head = read_head(path)?;
        if is_legacy_torch(&head) {
            return Err(TorchError::Legacy { path: path.into() });
        }
        let file = File::open(path).map_err(io)?;
        let file_len = file.metadata().map_err(io)?.len();
        let zip =
            zip::ZipArchive::new(BufReader::new(file)).map_err(|source| TorchError::NotZip {
                path: path.into(),
                source,
            })?;
        let prefix = zip
            .file_names()
            .filter_map(|n| n.ok())
            .filter(|n| *n == "data.pkl" || n.ends_with("/data.pkl"))
            .min_by_key(|n| n.matches('/').count())
            .map(|n| n[..n.len() - "data.pkl".len()].to_owned())
            .ok_or_else(|| TorchError::NoDataPkl { path: path.into() })?;
        let mut archive = Self {
            path: path.into(),
            zip,
            prefix,
            file_len,
        };
        if let Some(order) = archive.entry("byteorder")? {
            let order = String::from_utf8_lossy(&order).trim().to_owned();
            if order != "little" {
                return Err(TorchError::ByteOrder {
                    path: path.into(),
                    order,
                });
            }
        }
        Ok(archive)
    }

    fn is_torchscript(&self) -> bool {
        let constants = format!("{}constants.pkl", self.prefix);
        let code = format!("{}code/", self.prefix);
        self.zip
            .file_names()
            .filter_map(|n| n.ok())
            .any(|n| n == constants || n.starts_with(&code))
    }

    /// The bytes of `<prefix><name>`, or `None` when there is no such entry.
    fn entry(&mut self, name: &str) -> Result<Option<Vec<u8>>> {
        let full = format!("{}{name}", self.prefix);
        let corrupt = |reason: String| TorchError::Entry {
            path: self.path.clone(),
            entry: full.clone(),
            reason,
        };
        let mut f = match self.zip.by_name(&full) {
            Ok(f) => f,
            Err(zip::result::ZipError::FileNotFound) => return Ok(None),
            Err(e) => return Err(corrupt(e.to_string())),
        };
        // The declared size is untrusted: cap the up-front allocation by the file's length.
        let cap = f.size().min(self.file_len);
        let mut buf = Vec::with_capacity(usize::try_from(cap).unwrap_or(0));
        f.read_to_end(&mut buf)
            .map_err(|e| corrupt(e.to_string()))?;
        Ok(Some(buf))
    }

    fn data_pkl(&mut self) -> Result<Value> {
        let bytes = self
            .entry("data.pkl")?
            .ok_or_else(|| TorchError::NoDataPkl {
                path: self.path.clone(),
            })?;
        pickle::load(&bytes).map_err(|source| TorchError::Pickle {
            path: self.path.clone(),
            entry: format!("{}data.pkl", self.prefix),
            source,
        })
    }

    /// Read every storage the specs view and copy each view out in row-major order.
    fn materialise(&mut self, specs: Vec<(String, TensorSpec)>) -> Result<StateDict> {
        // Read each storage once (views may share one) and check every view fits in it.
        let mut storages: Vec<Vec<u8>> = Vec::new();
        let mut index: HashMap<String, usize> = HashMap::new();
        let mut views = Vec::with_capacity(specs.len());
        for (key, spec) in specs {
            let entry = format!("data/{}", spec.storage);
            let slot = match index.get(&spec.storage) {
                Some(&i) => i,
                None => {
                    let bytes = self
                        .entry(&entry)?
                        .ok_or_else(|| TorchError::MissingStorage {
                            path: self.path.clone(),
                            key: key.clone(),
                            entry: format!("{}{entry}", self.prefix),
                        })?;
                    storages.push(bytes);
                    index.insert(spec.storage.clone(), storages.len() - 1);
                    storages.len() - 1
                }
            };
            let have = storages[slot].len() / spec.dtype.size();
            if have < spec.storage_numel {
                return Err(self.truncated(&key, &entry, spec.storage_numel, have));
            }
            let need = spec.extent().ok_or_else(|| TorchError::BadTensor {
                path: self.path.clone(),
                key: key.clone(),
                reason: format!(
                    "view offset {} size {:?} stride {:?} overflows",
                    spec.offset, spec.shape, spec.strides
                ),
            })?;
            if need > spec.storage_numel {
                return Err(self.truncated(&key, &entry, need, spec.storage_numel));
            }
            views.push((key, spec, slot));
        }
        // Copying out is most of the time for large files: one task per tensor.
        let tensors = views
            .into_par_iter()
            .map(|(key, spec, slot)| {
                let t = materialise_view(&storages[slot], &spec);
                (key, t)
            })
            .collect();
        Ok(StateDict { tensors })
    }

    fn truncated(&self, key: &str, entry: &str, need: usize, have: usize) -> TorchError {
        TorchError::TruncatedStorage {
            path: self.path.clone(),
            key: key.into(),
            entry: format!("{}{entry}", self.prefix),
            need,
            have,
        }
    }
}

// Little-endian element decoders, one per dtype.
fn f32_of(b: [u8; 4]) -> f32 {
    f32::from_le_bytes(b)
}
fn f16_of(b: [u8; 2]) -> f32 {
    half::f16::from_le_bytes(b).to_f32()
}
fn bf16_of(b: [u8; 2]) -> f32 {
    half::bf16::from_le_bytes(b).to_f32()
}
fn f64_of(b: [u8; 8]) -> f32 {
    f64::from_le_bytes(b) as f32
}
fn i64_of(b: [u8; 8]) -> i64 {
    i64::from_le_bytes(b)
}
fn i32_of(b: [u8; 4]) -> i64 {
    i32::from_le_bytes(b).into()
}
fn u8_of(b: [u8; 1]) -> i64 {
    b[0].into()
}
fn bool_of(b: [u8; 1]) -> i64 {
    i64::from(b[0] != 0)
}

/// The view `spec` describes over the raw storage bytes, decoded and in row-major order.
/// The caller has checked that the view lies inside `bytes`.
fn materialise_view(bytes: &[u8], spec: &TensorSpec) -> RawTensor {
    let shape = spec.shape.clone();
    let d = spec.dtype;
    match d {
        DType::F32 => RawTensor::from_f32(shape, d, gather(bytes, spec, f32_of)),
        DType::F16 => RawTensor::from_f32(shape, d, gather(bytes, spec, f16_of)),
        DType::BF16 => RawTensor::from_f32(shape, d, gather(bytes, spec, bf16_of)),
        DType::F64 => RawTensor::from_f32(shape, d, gather(bytes, spec, f64_of)),
        DType::I64 => RawTensor::from_ints(shape, d, gather(bytes, spec, i64_of)),
        DType::I32 => RawTensor::from_ints(shape, d, gather(bytes, spec, i32_of)),
        DType::U8 => RawTensor::from_ints(shape, d, gather(bytes, spec, u8_of)),
        DType::Bool => RawTensor::from_ints(shape, d, gather(bytes, spec, bool_of)),
    }
}

/// A whole storage (safetensors data), decoded.
fn decode_all(bytes: &[u8], dtype: DType) -> RawTensor {
    let numel = bytes.len() / dtype.size();
    let spec = TensorSpec {
        storage: String::new(),
        dtype,
        storage_numel: numel,
        offset: 0,
        shape: vec![numel],
        strides: vec![1],
    };
    materialise_view(bytes, &spec)
}

/// Copy a strided view of `N`-byte elements out in row-major order, decoding each with `dec`.
fn gather<T: Copy, const N: usize>(
    bytes: &[u8],
    spec: &TensorSpec,
    dec: fn([u8; N]) -> T,
) -> Vec<T> {
    let decode = |c: &[u8]| {
        let mut a = [0u8; N];
        a.copy_from_slice(c);
        dec(a)
    };
    // `n` elements `step` apart from element `start`.
    let run = |start: usize, n: usize, step: usize, out: &mut Vec<T>| {
        let end = start + (n - 1) * step + 1;
        let chunks = bytes[start * N..end * N].chunks_exact(N);
        match step {
            1 => out.extend(chunks.map(decode)),
            0 => out.extend(std::iter::repeat_n(decode(&bytes[start * N..end * N]), n)),
            _ => out.extend(chunks.step_by(step).map(decode)),
        }
    };
    let numel = spec.numel();
    let mut out = Vec::with_capacity(numel);
    if numel == 0 {
        return out;
    }
    if spec.is_contiguous() {
        run(spec.offset, numel, 1, &mut out);
        return out;
    }
    let (Some((&n, outer_shape)), Some((&s, outer_strides))) =
        (spec.shape.split_last(), spec.strides.split_last())
    else {
        // 0-d: contiguous, handled above.
        return out;
    };
    let mut idx = vec![0usize; outer_shape.len()];
    let mut base = spec.offset;
    loop {
        run(base, n, s, &mut out);
        // Odometer over the outer dimensions.
        let mut d = outer_shape.len();
        loop {
            if d == 0 {
                return out;
            }
            d -= 1;
            idx[d] += 1;
            base += outer_strides[d];
            if idx[d] < outer_shape[d] {
                break;
            }
            base -= outer_strides[d] * outer_shape[d];
            idx[d] = 0;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Safetensors

fn safetensors_tensor(
    view: &safetensors::tensor::TensorView<'_>,
) -> std::result::Result<RawTensor, String> {
    use safetensors::Dtype as D;
    let dtype = match view.dtype() {
        D::F32 => DType::F32,
        D::F16 => DType::F16,
        D::BF16 => DType::BF16,
        D::F64 => DType::F64,
        D::I64 => DType::I64,
        D::I32 => DType::I32,
        D::U8 => DType::U8,
        D::BOOL => DType::Bool,
        other => return Err(format!("unsupported dtype {other:?}")),
    };
    let mut t = decode_all(view.data(), dtype);
    t.shape = view.shape().to_vec();
    Ok(t)
}

/// Stack tensors along dim 0 (q, k, v → in_proj).
fn concat_rows(parts: &[RawTensor]) -> std::result::Result<RawTensor, String> {
    let first = &parts[0];
    let stackable = |p: &RawTensor| {
        !p.shape.is_empty() && p.shape[1..] == first.shape[1..] && p.dtype == first.dtype
    };
    if first.shape.is_empty() || !parts.iter().all(stackable) {
        let shapes: Vec<_> = parts.iter().map(|p| &p.shape).collect();
        return Err(format!("q/k/v shapes {shapes:?} cannot be stacked"));
    }
    let mut shape = first.shape.clone();
    shape[0] = parts.iter().map(|p| p.shape[0]).sum();
    let data = parts.iter().flat_map(|p| p.data.iter().copied()).collect();
    let ints = parts
        .iter()
        .map(|p| p.ints.as_deref())
        .collect::<Option<Vec<_>>>()
        .map(|v| v.concat());
    Ok(RawTensor {
        shape,
        dtype: first.dtype,
        data,
        ints,
    })
}

fn transpose_2d(t: &RawTensor) -> std::result::Result<RawTensor, String> {
    fn transpose<T: Copy>(v: &[T], rows: usize, cols: usize) -> Vec<T> {
        (0..cols)
            .flat_map(|c| (0..rows).map(move |r| v[r * cols + c]))
            .collect()
    }
    let &[rows, cols] = t.shape.as_slice() else {
        return Err(format!("expected a matrix, found shape {:?}", t.shape));
    };
    Ok(RawTensor {
        shape: vec![cols, rows],
        dtype: t.dtype,
        data: transpose(&t.data, rows, cols),
        ints: t.ints.as_ref().map(|v| transpose(v, rows, cols)),
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    use crate::test_support::shared;

    fn parity(preset: &str) -> PathBuf {
        shared().join(format!(
            "reference/official-parity/{preset}/best_model-RecLMIS.pth.tar"
        ))
    }

    fn clip_formats() -> PathBuf {
        shared().join("reference/clip-formats")
    }

    /// A fresh folder per test (tests run in parallel).
    fn temp_dir(test: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("reclmis-torch-{}-{test}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// Builds protocol-2 pickles the way `torch.save` writes them.
    struct Pk(Vec<u8>);

    impl Pk {
        fn new() -> Self {
            Pk(vec![0x80, 2])
        }
        fn op(&mut self, b: &[u8]) -> &mut Self {
            self.0.extend_from_slice(b);
            self
        }
        fn str(&mut self, s: &str) -> &mut Self {
            self.0.push(b'X');
            self.0.extend((s.len() as u32).to_le_bytes());
            self.op(s.as_bytes())
        }
        fn int(&mut self, i: i32) -> &mut Self {
            self.0.push(b'J');
            self.op(&i.to_le_bytes())
        }
        fn global(&mut self, module: &str, name: &str) -> &mut Self {
            self.op(format!("c{module}\n{name}\n").as_bytes())
        }
        fn ints(&mut self, v: &[i32]) -> &mut Self {
            self.op(b"(");
            for &i in v {
                self.int(i);
            }
            self.op(b"t")
        }
        /// `_rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict())`.
        fn tensor(
            &mut self,
            ty: &str,
            key: &str,
            numel: i32,
            offset: i32,
            size: &[i32],
            stride: &[i32],
        ) -> &mut Self {
            self.global("torch._utils", "_rebuild_tensor_v2").op(b"((");
            self.str("storage")
                .global("torch", ty)
                .str(key)
                .str("cpu")
                .int(numel);
            self.op(b"tQ").int(offset).ints(size).ints(stride);
            self.op(b"\x89")
                .global("collections", "OrderedDict")
                .op(b")Rt")
                .op(b"R")
        }
    }

    fn write_zip(path: &Path, entries: &[(&str, &[u8])]) {
        let mut z = zip::ZipWriter::new(File::create(path).unwrap());
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        for (name, bytes) in entries {
            z.start_file(*name, opts).unwrap();
            z.write_all(bytes).unwrap();
        }
        z.finish().unwrap();
    }

    fn f32_bytes(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    /// `{'epoch': 3, 'state_dict': {<entries>}}` with `entries` written by `f`.
    fn checkpoint_pickle(f: impl FnOnce(&mut Pk)) -> Vec<u8> {
        let mut p = Pk::new();
        p.op(b"}(").str("epoch").int(3).str("state_dict").op(b"}(");
        f(&mut p);
        p.op(b"uu.");
        p.0
    }

    fn reference_tsv(preset: &str) -> Vec<(String, Vec<usize>, usize, String)> {
        let path = shared().join(format!("reference/reclmis-{preset}-state-dict.tsv"));
        let text = std::fs::read_to_string(path).unwrap();
        text.lines()
            .skip(1)
            .map(|line| {
                let f: Vec<&str> = line.split('\t').collect();
                let shape = if f[1].is_empty() || f[1] == "scalar" || f[1] == "()" {
                    vec![]
                } else {
                    f[1].split('x').map(|d| d.parse().unwrap()).collect()
                };
                (
                    f[0].to_owned(),
                    shape,
                    f[2].parse().unwrap(),
                    f[3].to_owned(),
                )
            })
            .collect()
    }

    fn check_parity_checkpoint(preset: &str, keys: usize) {
        let ck = read_checkpoint_with_meta(&parity(preset)).unwrap();
        let sd = &ck.state_dict;
        let want = reference_tsv(preset);
        assert_eq!(want.len(), keys);
        assert_eq!(sd.len(), keys);
        for ((key, t), (wkey, wshape, wnumel, wdtype)) in sd.tensors.iter().zip(&want) {
            assert_eq!(key, wkey, "file order");
            assert_eq!(&t.shape, wshape, "{key}");
            assert_eq!(t.numel(), *wnumel, "{key}");
            assert_eq!(t.data.len(), *wnumel, "{key}");
            let dtype = match wdtype.as_str() {
                "float32" => DType::F32,
                "int64" => DType::I64,
                other => panic!("{other}"),
            };
            assert_eq!(t.dtype, dtype, "{key}");
            assert_eq!(t.ints.is_some(), dtype == DType::I64, "{key}");
        }
        // Block order of reclmis.md §6.
        let mut blocks: Vec<&str> = Vec::new();
        for k in sd.keys() {
            let b = k.split('.').next().unwrap();
            if blocks.last() != Some(&b) {
                blocks.push(b);
            }
        }
        let order = [
            "inc",
            "interact",
            "down1",
            "down2",
            "down3",
            "down4",
            "up4",
            "up3",
            "up2",
            "up1",
            "outc",
            "text_module4",
            "clip",
            "mlp_woi",
            "mlp_visual",
            "rec_text_trans1",
            "rec_img_trans1",
        ];
        assert_eq!(blocks, order);
        let mut clip: Vec<&str> = Vec::new();
        for k in sd.keys().filter_map(|k| k.strip_prefix("clip.")) {
            let b = k.split('.').next().unwrap();
            if clip.last() != Some(&b) {
                clip.push(b);
            }
        }
        let clip_order = [
            "positional_embedding",
            "text_projection",
            "logit_scale",
            "visual",
            "transformer",
            "token_embedding",
            "ln_final",
        ];
        assert_eq!(clip, clip_order);

        // num_batches_tracked: int64, exact (BN statistics from 1000 batches' worth of updates).
        let nbt = sd.get("inc.norm.num_batches_tracked").unwrap();
        assert_eq!((nbt.dtype, nbt.shape.as_slice()), (DType::I64, &[][..]));
        assert_eq!(nbt.ints.as_deref(), Some(&[1000i64][..]));
        assert_eq!(nbt.data, vec![1000.0]);
        let n_nbt = sd
            .keys()
            .filter(|k| k.ends_with("num_batches_tracked"))
            .count();
        assert_eq!(n_nbt, 18);

        let ls = sd.get("clip.logit_scale").unwrap();
        assert!(ls.shape.is_empty());
        assert!((ls.data[0] - 100f32.ln()).abs() < 1e-6, "{}", ls.data[0]);

        assert_eq!(ck.epoch, Some(41));
        assert_eq!(ck.best_model, Some(true));
        assert_eq!(ck.model.as_deref(), Some("RecLMIS"));
        assert_eq!(ck.val_loss, Some(f64::from(0.2345f32)));
    }

    #[test]
    fn qata_checkpoint_matches_reference_keys() {
        check_parity_checkpoint("qata", 771);
    }

    #[test]
    fn filtered_read_skips_unused_towers() {
        let keep = |k: &str| !k.starts_with("clip.") && !k.starts_with("rec_");
        let ck = read_checkpoint_filtered(&parity("qata"), keep).unwrap();
        let want: Vec<_> = reference_tsv("qata")
            .into_iter()
            .filter(|(k, ..)| keep(k))
            .map(|(k, ..)| k)
            .collect();
        // 771 − 302 CLIP − 2·2·4·18 reconstructor keys.
        assert_eq!(want.len(), 771 - 302 - 288);
        assert_eq!(ck.state_dict.keys().collect::<Vec<_>>(), want);
        assert_eq!(ck.epoch, Some(41));
    }

    #[test]
    fn mosmed_checkpoint_matches_reference_keys() {
        check_parity_checkpoint("mosmed", 699);
    }

    /// Element [i, j…] of a large parity tensor is `s[offset + 2·i + 3·flat(j)]` (parity README),
    /// leading 1-dims skipped; checked against the storage bytes read straight from the zip.
    #[test]
    fn strided_views_follow_the_parity_rule() {
        let path = parity("qata");
        let keys = [
            "interact.attn_text.in_proj_weight",
            "interact.embeddings.position_embeddings",
            "clip.visual.conv1.weight",
            "down1.nConvs.0.conv.weight",
        ];
        let sd = read_checkpoint_filtered(&path, |k| {
            keys.contains(&k) || k == "clip.token_embedding.weight"
        })
        .unwrap()
        .state_dict;
        assert_eq!(sd.len(), 5);
        let mut archive = Archive::open(&path).unwrap();
        let root = archive.data_pkl().unwrap();
        let entries = root.get("state_dict").unwrap();
        for key in keys {
            let spec = tensor_spec(entries.get(key).unwrap())
                .ok()
                .flatten()
                .unwrap();
            let raw = archive
                .entry(&format!("data/{}", spec.storage))
                .unwrap()
                .unwrap();
            let s: Vec<f32> = raw
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            assert_eq!(s.len(), spec.storage_numel);
            let t = sd.get(key).unwrap();
            let lead = t.shape.iter().take_while(|&&n| n == 1).count();
            let dims = &t.shape[lead..];
            let inner: usize = dims[1..].iter().product();
            assert!(t.numel() > 4096 && inner > 1, "{key}");
            assert!(
                spec.strides[..lead].iter().all(|&x| x == 0),
                "{key}: stride 0 on leading 1s"
            );
            for i in 0..dims[0] {
                for j in 0..inner {
                    let want = s[spec.offset + 2 * i + 3 * j];
                    assert_eq!(
                        t.data[i * inner + j].to_bits(),
                        want.to_bits(),
                        "{key}[{i}, {j}]"
                    );
                }
            }
        }
        // The embedding table is a view too, with rows 3 apart (not the README's 2·i + 3·j).
        let emb = sd.get("clip.token_embedding.weight").unwrap();
        let spec = tensor_spec(entries.get("clip.token_embedding.weight").unwrap())
            .ok()
            .flatten()
            .unwrap();
        assert_eq!(
            (spec.shape.as_slice(), spec.strides.as_slice()),
            (&[49408, 512][..], &[3, 1][..])
        );
        let raw = archive
            .entry(&format!("data/{}", spec.storage))
            .unwrap()
            .unwrap();
        for (i, j) in [
            (0, 0),
            (1, 0),
            (1, 511),
            (49407, 0),
            (49407, 511),
            (12345, 77),
        ] {
            let at = 4 * (3 * i + j);
            let want = f32::from_le_bytes([raw[at], raw[at + 1], raw[at + 2], raw[at + 3]]);
            assert_eq!(emb.data[i * 512 + j].to_bits(), want.to_bits());
        }
    }

    /// Offsets, transposes, stride-0 broadcasts, one storage shared by several views, every dtype,
    /// `module.` prefixes and a bare state dict, on a hand-written checkpoint.
    #[test]
    fn views_dtypes_and_shared_storage() {
        let dir = temp_dir("views");
        let s: Vec<f32> = (0..10).map(|i| i as f32 + 0.5).collect();
        let half: Vec<u8> = [1.5f32, -2.0, 65504.0]
            .iter()
            .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
            .collect();
        let bf: Vec<u8> = [1.5f32, -3.0e38]
            .iter()
            .flat_map(|&x| half::bf16::from_f32(x).to_le_bytes())
            .collect();
        let f64s: Vec<u8> = [0.1f64, -7.0]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        let i64s: Vec<u8> = [i64::MAX, -5]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        let i32s: Vec<u8> = [-1i32, 7, 9].iter().flat_map(|x| x.to_le_bytes()).collect();
        let pkl = checkpoint_pickle(|p| {
            p.str("module.rows")
                .tensor("FloatStorage", "0", 10, 2, &[2, 3], &[3, 1]);
            p.str("cols")
                .tensor("FloatStorage", "0", 10, 2, &[3, 2], &[1, 3]);
            p.str("bcast")
                .tensor("FloatStorage", "0", 10, 1, &[2, 3], &[0, 1]);
            p.str("scalar").tensor("FloatStorage", "0", 10, 9, &[], &[]);
            p.str("empty")
                .tensor("FloatStorage", "0", 10, 0, &[0, 4], &[4, 1]);
            p.str("half").tensor("HalfStorage", "1", 3, 0, &[3], &[1]);
            p.str("bf16")
                .tensor("BFloat16Storage", "2", 2, 0, &[2], &[1]);
            p.str("f64").tensor("DoubleStorage", "3", 2, 0, &[2], &[1]);
            p.str("i64").tensor("LongStorage", "4", 2, 1, &[1], &[1]);
            p.str("i32").tensor("IntStorage", "5", 3, 0, &[3], &[1]);
            p.str("u8").tensor("ByteStorage", "6", 2, 0, &[2], &[1]);
            p.str("bool").tensor("BoolStorage", "7", 2, 0, &[2], &[1]);
        });
        let path = dir.join("views.pth");
        write_zip(
            &path,
            &[
                ("views/data.pkl", &pkl),
                ("views/byteorder", b"little"),
                ("views/data/0", &f32_bytes(&s)),
                ("views/data/1", &half),
                ("views/data/2", &bf),
                ("views/data/3", &f64s),
                ("views/data/4", &i64s),
                ("views/data/5", &i32s),
                ("views/data/6", &[0, 255]),
                ("views/data/7", &[0, 1]),
                ("views/version", b"3\n"),
            ],
        );
        assert_eq!(sniff(&path).unwrap(), Format::TorchSave);
        let ck = read_checkpoint_with_meta(&path).unwrap();
        assert_eq!(ck.epoch, Some(3));
        assert_eq!(ck.val_loss, None);
        let sd = ck.state_dict;
        let t = |k: &str| sd.get(k).unwrap_or_else(|| panic!("{k}"));
        assert_eq!(sd.keys().next(), Some("rows"));
        assert_eq!(t("rows").data, [2.5, 3.5, 4.5, 5.5, 6.5, 7.5]);
        assert_eq!(t("cols").shape, [3, 2]);
        assert_eq!(t("cols").data, [2.5, 5.5, 3.5, 6.5, 4.5, 7.5]);
        assert_eq!(t("bcast").data, [1.5, 2.5, 3.5, 1.5, 2.5, 3.5]);
        assert_eq!(
            (t("scalar").shape.len(), t("scalar").data.as_slice()),
            (0, &[9.5][..])
        );
        assert!(t("empty").data.is_empty() && t("empty").shape == [0, 4]);
        assert_eq!(t("half").data, [1.5, -2.0, 65504.0]);
        assert_eq!(
            t("bf16").data,
            [1.5, half::bf16::from_f32(-3.0e38).to_f32()]
        );
        assert_eq!(t("f64").data, [0.1f64 as f32, -7.0]);
        assert_eq!(t("i64").ints.as_deref(), Some(&[-5i64][..]));
        assert_eq!(t("i32").ints.as_deref(), Some(&[-1i64, 7, 9][..]));
        assert_eq!(t("i32").data, [-1.0, 7.0, 9.0]);
        assert_eq!(t("u8").ints.as_deref(), Some(&[0i64, 255][..]));
        assert_eq!(
            (t("bool").dtype, t("bool").ints.as_deref()),
            (DType::Bool, Some(&[0i64, 1][..]))
        );
        assert_eq!(t("half").ints, None);

        // The same tensors as a bare state dict (no wrapper dict).
        let mut p = Pk::new();
        p.op(b"}(")
            .str("module.w")
            .tensor("FloatStorage", "0", 10, 4, &[2, 2], &[1, 2])
            .op(b"u.");
        let bare = dir.join("bare.pt");
        write_zip(
            &bare,
            &[
                ("archive/data.pkl", &p.0),
                ("archive/data/0", &f32_bytes(&s)),
            ],
        );
        let ck = read_checkpoint_with_meta(&bare).unwrap();
        assert_eq!(ck.epoch, None);
        assert_eq!(ck.state_dict.keys().collect::<Vec<_>>(), ["w"]);
        assert_eq!(ck.state_dict.tensors[0].1.data, [4.5, 6.5, 5.5, 7.5]);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn gather_walks_any_strides() {
        let src: Vec<u8> = (0..100i64).flat_map(|i| i.to_le_bytes()).collect();
        let spec = |offset, shape: &[usize], strides: &[usize]| TensorSpec {
            storage: "0".into(),
            dtype: DType::I64,
            storage_numel: 100,
            offset,
            shape: shape.to_vec(),
            strides: strides.to_vec(),
        };
        let ints = |sp: &TensorSpec| materialise_view(&src, sp).ints.unwrap();
        // [2, 3, 2] with strides (30, 1, 10) from offset 5, against a naive triple loop.
        let sp = spec(5, &[2, 3, 2], &[30, 1, 10]);
        let mut want = Vec::new();
        for a in 0..2 {
            for b in 0..3 {
                for c in 0..2 {
                    want.push(5 + 30 * a + b + 10 * c);
                }
            }
        }
        assert_eq!(ints(&sp), want);
        assert_eq!(sp.extent(), Some(5 + 30 + 2 + 10 + 1));
        assert_eq!(ints(&spec(7, &[2, 1, 3], &[0, 0, 1])), [7, 8, 9, 7, 8, 9]);
        assert_eq!(ints(&spec(3, &[4], &[0])), [3, 3, 3, 3]);
        assert_eq!(ints(&spec(42, &[], &[])), [42]);
        assert_eq!(ints(&spec(90, &[3, 2], &[2, 1])), [90, 91, 92, 93, 94, 95]);
        assert!(spec(0, &[1, 4], &[99, 1]).is_contiguous());
        assert!(!spec(0, &[2, 2], &[1, 2]).is_contiguous());
    }

    #[test]
    fn torchscript_and_hf_clip_agree_bit_for_bit() {
        let dir = clip_formats();
        let ts = dir.join("ViT-tiny.pt");
        let hf = dir.join("hf/model.safetensors");
        assert_eq!(sniff(&ts).unwrap(), Format::TorchScript);
        assert_eq!(sniff(&hf).unwrap(), Format::Safetensors);

        let openai = read_torchscript(&ts).unwrap();
        let shape = |k: &str| openai.get(k).unwrap_or_else(|| panic!("{k}")).shape.clone();
        assert_eq!(shape("token_embedding.weight"), [1000, 64]);
        assert_eq!(shape("positional_embedding"), [77, 64]);
        assert_eq!(shape("text_projection"), [64, 48]);
        assert_eq!(shape("logit_scale"), Vec::<usize>::new());
        assert_eq!(
            shape("transformer.resblocks.1.attn.in_proj_weight"),
            [192, 64]
        );
        assert_eq!(shape("transformer.resblocks.1.mlp.c_fc.weight"), [256, 64]);
        assert_eq!(shape("visual.conv1.weight").len(), 4);
        assert!(openai.keys().all(|k| !k.contains("training")));

        let from_ts = clip_text_from_openai(&openai);
        let from_hf = clip_text_from_openai(&read_hf_clip(&hf).unwrap());
        assert_eq!(from_ts.len(), 6 + 2 * 12);
        assert!(
            from_ts
                .keys()
                .all(|k| k.starts_with("clip.") && !k.starts_with("clip.visual"))
        );
        let ts_keys: Vec<_> = from_ts.keys().collect();
        let hf_keys: Vec<_> = from_hf.keys().collect();
        assert_eq!(ts_keys, hf_keys);
        for ((key, a), (_, b)) in from_ts.tensors.iter().zip(&from_hf.tensors) {
            assert_eq!(a.shape, b.shape, "{key}");
            assert_eq!(a.dtype, b.dtype, "{key}");
            let bits = |t: &RawTensor| t.data.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert!(bits(a) == bits(b), "{key} differs");
            assert!(a.data.iter().any(|&x| x != 0.0), "{key} is all zeros");
        }
    }

    #[test]
    fn wrong_reader_says_which_to_use() {
        let ts = clip_formats().join("ViT-tiny.pt");
        let err = read_checkpoint(&ts).unwrap_err().to_string();
        assert!(
            err.contains("read_torchscript") && err.contains("ViT-tiny.pt"),
            "{err}"
        );
        let err = read_torchscript(&parity("mosmed")).unwrap_err().to_string();
        assert!(err.contains("read_checkpoint"), "{err}");
    }

    #[test]
    fn corrupt_inputs_are_clear_errors() {
        let dir = temp_dir("corrupt");
        let named = |e: TorchError, file: &str| {
            let msg = e.to_string();
            assert!(msg.contains(file), "{msg}");
            e
        };

        let missing = dir.join("missing.pth.tar");
        assert!(matches!(
            named(read_checkpoint(&missing).unwrap_err(), "missing.pth.tar"),
            TorchError::Io { .. }
        ));

        let empty = dir.join("empty.pth.tar");
        std::fs::write(&empty, b"").unwrap();
        assert!(matches!(
            named(read_checkpoint(&empty).unwrap_err(), "empty.pth.tar"),
            TorchError::Empty { .. }
        ));
        assert!(matches!(sniff(&empty), Err(TorchError::Empty { .. })));

        let whole = std::fs::read(parity("mosmed")).unwrap();
        let truncated = dir.join("truncated.pth.tar");
        std::fs::write(&truncated, &whole[..whole.len() / 2]).unwrap();
        assert!(matches!(
            named(
                read_checkpoint(&truncated).unwrap_err(),
                "truncated.pth.tar"
            ),
            TorchError::NotZip { .. }
        ));

        // Deterministic noise (an LCG), not starting with a zip or safetensors header.
        let mut x = 0x2545f4914f6cdd1du64;
        let noise: Vec<u8> = (0..4096)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (x >> 56) as u8
            })
            .collect();
        let random = dir.join("random.bin");
        std::fs::write(&random, &noise).unwrap();
        assert!(matches!(
            named(read_checkpoint(&random).unwrap_err(), "random.bin"),
            TorchError::NotZip { .. }
        ));
        assert!(matches!(
            sniff(&random),
            Err(TorchError::Unrecognised { .. })
        ));
        assert!(matches!(
            named(read_hf_clip(&random).unwrap_err(), "random.bin"),
            TorchError::Safetensors { .. }
        ));

        let legacy = dir.join("legacy.pth");
        std::fs::write(
            &legacy,
            [
                0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19,
            ],
        )
        .unwrap();
        assert!(matches!(
            named(read_checkpoint(&legacy).unwrap_err(), "legacy.pth"),
            TorchError::Legacy { .. }
        ));

        // A flipped byte inside a storage: the entry's CRC no longer matches.
        let mut flipped = whole.clone();
        let start = {
            let mut z = zip::ZipArchive::new(std::io::Cursor::new(&whole)).unwrap();
            let f = z.by_name("best_model-RecLMIS.pth/data/0").unwrap();
            f.data_start().unwrap() as usize
        };
        flipped[start + 3] ^= 0x40;
        let crc = dir.join("crc.pth.tar");
        std::fs::write(&crc, &flipped).unwrap();
        match named(read_checkpoint(&crc).unwrap_err(), "crc.pth.tar") {
            e @ TorchError::Entry { .. } => assert!(e.to_string().contains("data/0"), "{e}"),
            e => panic!("{e}"),
        }

        let no_pkl = dir.join("no_pkl.pth.tar");
        write_zip(&no_pkl, &[("ck/version", b"3\n"), ("ck/data/0", &[0; 8])]);
        assert!(matches!(
            named(read_checkpoint(&no_pkl).unwrap_err(), "no_pkl.pth.tar"),
            TorchError::NoDataPkl { .. }
        ));

        let s = f32_bytes(&[1.0; 6]);
        let short_view = dir.join("short_view.pth.tar");
        let pkl = checkpoint_pickle(|p| {
            p.str("ok").tensor("FloatStorage", "0", 6, 0, &[6], &[1]);
            p.str("down1.w")
                .tensor("FloatStorage", "0", 6, 2, &[3, 2], &[2, 1]);
        });
        write_zip(&short_view, &[("ck/data.pkl", &pkl), ("ck/data/0", &s)]);
        match named(
            read_checkpoint(&short_view).unwrap_err(),
            "short_view.pth.tar",
        ) {
            e @ TorchError::TruncatedStorage {
                need: 8, have: 6, ..
            } => assert!(e.to_string().contains("down1.w")),
            e => panic!("{e}"),
        }

        let short_entry = dir.join("short_entry.pth.tar");
        let pkl = checkpoint_pickle(|p| {
            p.str("up1.w").tensor("FloatStorage", "0", 6, 0, &[6], &[1]);
        });
        write_zip(
            &short_entry,
            &[("ck/data.pkl", &pkl), ("ck/data/0", &s[..20])],
        );
        match named(
            read_checkpoint(&short_entry).unwrap_err(),
            "short_entry.pth.tar",
        ) {
            e @ TorchError::TruncatedStorage {
                need: 6, have: 5, ..
            } => assert!(e.to_string().contains("up1.w")),
            e => panic!("{e}"),
        }

        let no_storage = dir.join("no_storage.pth.tar");
        write_zip(&no_storage, &[("ck/data.pkl", &pkl)]);
        assert!(matches!(
            named(
                read_checkpoint(&no_storage).unwrap_err(),
                "no_storage.pth.tar"
            ),
            TorchError::MissingStorage { .. }
        ));

        let bad_op = dir.join("bad_op.pth.tar");
        write_zip(&bad_op, &[("ck/data.pkl", b"\x80\x02}(\xfe")]);
        match named(read_checkpoint(&bad_op).unwrap_err(), "bad_op.pth.tar") {
            TorchError::Pickle {
                source:
                    pickle::PickleError::UnknownOpcode {
                        opcode: 0xfe,
                        at: 4,
                    },
                ..
            } => {}
            e => panic!("{e}"),
        }

        let evil = dir.join("evil.pth.tar");
        let mut p = Pk::new();
        p.op(b"}(").str("state_dict").op(b"}(").str("outc.weight");
        p.global("os", "system")
            .str("echo pwned")
            .op(b"\x85R")
            .op(b"uu.");
        write_zip(&evil, &[("ck/data.pkl", &p.0)]);
        match named(read_checkpoint(&evil).unwrap_err(), "evil.pth.tar") {
            e @ TorchError::UnsupportedGlobal { .. } => {
                let msg = e.to_string();
                assert!(
                    msg.contains("os.system") && msg.contains("outc.weight"),
                    "{msg}"
                );
            }
            e => panic!("{e}"),
        }

        let complex = dir.join("complex.pth.tar");
        let pkl = checkpoint_pickle(|p| {
            p.str("w")
                .tensor("ComplexFloatStorage", "0", 1, 0, &[1], &[1]);
        });
        write_zip(&complex, &[("ck/data.pkl", &pkl), ("ck/data/0", &[0; 8])]);
        assert!(matches!(
            named(read_checkpoint(&complex).unwrap_err(), "complex.pth.tar"),
            TorchError::UnsupportedGlobal { .. }
        ));

        std::fs::remove_dir_all(dir).unwrap();
    }
}
