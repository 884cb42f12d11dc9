//! Hugging Face `CLIPModel` safetensors: the text tower under OpenAI's names and order.

use std::path::Path;

use super::archive::decode_all;
use super::{DType, RawTensor, Result, StateDict, TorchError, read_file};

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
/// RecLMIS state dict (docs §6). The visual tower and extras such as `attn_mask`,
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
