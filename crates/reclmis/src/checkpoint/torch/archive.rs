//! The zip container `torch.save` and TorchScript write, and the tensors its pickle describes:
//! storages, strided views (the authors' large weights are views, as torch allows) and the
//! element decoders.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use super::pickle::{self, Value};
use super::{DType, RawTensor, Result, StateDict, TorchError, is_legacy_torch, read_head};

/// Where a tensor's values live and how to walk them (`_rebuild_tensor_v2` arguments).
#[derive(Debug, Clone, PartialEq)]
pub(super) struct TensorSpec {
    /// Name of the `data/<storage>` entry.
    pub(super) storage: String,
    pub(super) dtype: DType,
    /// Elements the persistent id declares for the storage.
    pub(super) storage_numel: usize,
    /// In elements.
    pub(super) offset: usize,
    pub(super) shape: Vec<usize>,
    /// In elements; 0 for broadcast (expanded) dimensions.
    pub(super) strides: Vec<usize>,
}

impl TensorSpec {
    pub(super) fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// One past the last storage element the view touches (0 for an empty tensor).
    pub(super) fn extent(&self) -> Option<usize> {
        if self.shape.contains(&0) {
            return Some(0);
        }
        let mut last = self.offset;
        for (&n, &s) in self.shape.iter().zip(&self.strides) {
            last = last.checked_add((n - 1).checked_mul(s)?)?;
        }
        last.checked_add(1)
    }

    pub(super) fn is_contiguous(&self) -> bool {
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
pub(super) enum SpecError {
    Global(String),
    Malformed(String),
}

impl SpecError {
    pub(super) fn at(self, path: &Path, key: &str) -> TorchError {
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

pub(super) fn malformed<T>(reason: impl Into<String>) -> std::result::Result<T, SpecError> {
    Err(SpecError::Malformed(reason.into()))
}

/// The tensor a value describes; `Ok(None)` for values that are not calls at all (ints, strs,
/// dicts …), an error for calls this reader does not understand.
pub(super) fn tensor_spec(v: &Value) -> std::result::Result<Option<TensorSpec>, SpecError> {
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
pub(super) fn rebuild_args(args: &[Value]) -> std::result::Result<TensorSpec, SpecError> {
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

/// The most elements a view may repeat its storage to (stride 0): 2^26, 256 MB as float32, above
/// any tensor of the models reclmis reads (CLIP ViT-L/14's token embedding is 38 M).
const MAX_REPEATED_ELEMENTS: usize = 1 << 26;

// ---------------------------------------------------------------------------------------------
// The zip container

pub(super) struct Archive {
    path: PathBuf,
    zip: zip::ZipArchive<BufReader<File>>,
    /// `<folder>/`, shared by every entry; the folder name varies between writers.
    prefix: String,
    file_len: u64,
}

impl Archive {
    pub(super) fn open(path: &Path) -> Result<Self> {
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

    pub(super) fn is_torchscript(&self) -> bool {
        let constants = format!("{}constants.pkl", self.prefix);
        let code = format!("{}code/", self.prefix);
        self.zip
            .file_names()
            .filter_map(|n| n.ok())
            .any(|n| n == constants || n.starts_with(&code))
    }

    /// The bytes of `<prefix><name>`, or `None` when there is no such entry.
    pub(super) fn entry(&mut self, name: &str) -> Result<Option<Vec<u8>>> {
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

    pub(super) fn data_pkl(&mut self) -> Result<Value> {
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
    pub(super) fn materialise(&mut self, specs: Vec<(String, TensorSpec)>) -> Result<StateDict> {
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
            // The storage is in the file, so a view no larger is bounded by the file's size; a
            // view repeating it (stride 0) may claim any count, and is copied out in full.
            if spec.numel() > spec.storage_numel.max(MAX_REPEATED_ELEMENTS) {
                return Err(TorchError::BadTensor {
                    path: self.path.clone(),
                    key,
                    reason: format!(
                        "size {:?} claims {} elements over a storage of {}, more than the {} \
                         reclmis copies out of a repeated view",
                        spec.shape,
                        spec.numel(),
                        spec.storage_numel,
                        MAX_REPEATED_ELEMENTS
                    ),
                });
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

    pub(super) fn truncated(&self, key: &str, entry: &str, need: usize, have: usize) -> TorchError {
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
pub(super) fn f32_of(b: [u8; 4]) -> f32 {
    f32::from_le_bytes(b)
}
pub(super) fn f16_of(b: [u8; 2]) -> f32 {
    half::f16::from_le_bytes(b).to_f32()
}
pub(super) fn bf16_of(b: [u8; 2]) -> f32 {
    half::bf16::from_le_bytes(b).to_f32()
}
pub(super) fn f64_of(b: [u8; 8]) -> f32 {
    f64::from_le_bytes(b) as f32
}
pub(super) fn i64_of(b: [u8; 8]) -> i64 {
    i64::from_le_bytes(b)
}
pub(super) fn i32_of(b: [u8; 4]) -> i64 {
    i32::from_le_bytes(b).into()
}
pub(super) fn u8_of(b: [u8; 1]) -> i64 {
    b[0].into()
}
pub(super) fn bool_of(b: [u8; 1]) -> i64 {
    i64::from(b[0] != 0)
}

/// The view `spec` describes over the raw storage bytes, decoded and in row-major order.
/// The caller has checked that the view lies inside `bytes`.
pub(super) fn materialise_view(bytes: &[u8], spec: &TensorSpec) -> RawTensor {
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
pub(super) fn decode_all(bytes: &[u8], dtype: DType) -> RawTensor {
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
pub(super) fn gather<T: Copy, const N: usize>(
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
