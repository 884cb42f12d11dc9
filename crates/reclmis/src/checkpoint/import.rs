//! From a foreign state dict to the model's tensors.

use std::collections::HashMap;

use super::torch::StateDict;
use crate::model::weights::HostTensor;

/// The float tensors the model can hold. Integer buffers (`num_batches_tracked`) and the CLIP
/// visual tower, which RecLMIS never runs (§7 #23), are left out.
pub fn host_tensors(sd: &StateDict) -> HashMap<String, HostTensor> {
    sd.tensors
        .iter()
        .filter(|(k, t)| t.ints.is_none() && !k.starts_with("clip.visual."))
        .map(|(k, t)| {
            (
                k.clone(),
                HostTensor {
                    shape: t.shape.clone(),
                    data: t.data.clone(),
                },
            )
        })
        .collect()
}

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::tensor::Device;

use super::ours::TrainState;
use super::torch::{self, Format, TorchError};
use crate::model::weights::{WeightsError, load_tensors};
use crate::model::{ModelConfig, Preset, RecLMIS, TextEncoderConfig};

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error(transparent)]
    Torch(#[from] TorchError),
    #[error("{path}: not a RecLMIS checkpoint: {detail}")]
    WrongModel { path: PathBuf, detail: String },
    #[error("{path}: {source}")]
    Weights { path: PathBuf, source: WeightsError },
    #[error("{path}: the checkpoint lacks '{first}' ({count} model tensors missing)")]
    Missing {
        path: PathBuf,
        first: String,
        count: usize,
    },
}

/// The CLIP text-tower shape read off `clip.*` tensors (sizes are never assumed).
fn clip_config(
    path: &Path,
    t: &HashMap<String, HostTensor>,
) -> Result<TextEncoderConfig, ImportError> {
    let shape = |k: &str| -> Result<Vec<usize>, ImportError> {
        t.get(k)
            .map(|x| x.shape.clone())
            .ok_or_else(|| ImportError::WrongModel {
                path: path.into(),
                detail: format!("no tensor '{k}'"),
            })
    };
    let tok = shape("clip.token_embedding.weight")?;
    let pos = shape("clip.positional_embedding")?;
    let proj = shape("clip.text_projection")?;
    let layers = (0..)
        .take_while(|i| {
            t.contains_key(&format!(
                "clip.transformer.resblocks.{i}.attn.in_proj_weight"
            ))
        })
        .count();
    let (width, embed) = (tok[1], proj[1]);
    Ok(TextEncoderConfig::Clip {
        vocab: tok[0],
        context: pos[0],
        width,
        layers,
        // CLIP's rule: one head per 64 channels.
        heads: (width / 64).max(1),
        embed,
    })
}

fn reconstructor_layers(t: &HashMap<String, HostTensor>) -> usize {
    (0..)
        .take_while(|i| {
            t.contains_key(&format!(
                "rec_text_trans1.decoder1.decoder_layers.{i}.fc1.weight"
            ))
        })
        .count()
}

/// The authors' `best_model-RecLMIS.pth.tar` → model and config. The preset follows from the
/// reconstructor depth (L = 4 QaTa, 3 MosMed); widths and sizes from the tensors.
pub fn import_authors_checkpoint(
    path: &Path,
    device: &Device,
) -> Result<(RecLMIS, ModelConfig, TrainState), ImportError> {
    let ckpt = torch::read_checkpoint_filtered(path, |k| !k.starts_with("clip.visual."))?;
    let tensors = host_tensors(&ckpt.state_dict);
    let wrong = |detail: String| ImportError::WrongModel {
        path: path.into(),
        detail,
    };
    let inc = tensors
        .get("inc.conv.weight")
        .ok_or_else(|| wrong("no 'inc.conv.weight' (is this a RecLMIS checkpoint?)".into()))?;
    let pos = tensors
        .get("interact.embeddings.position_embeddings")
        .ok_or_else(|| wrong("no 'interact.embeddings.position_embeddings'".into()))?;
    let layers = reconstructor_layers(&tensors);
    let mut cfg = match layers {
        3 => ModelConfig::mosmed(),
        _ => ModelConfig::qata(),
    };
    if layers == 0 {
        return Err(wrong("no reconstructor layers".into()));
    }
    cfg.rec_layers = layers;
    cfg.base_channels = inc.shape[0];
    let n = pos.shape.get(1).copied().unwrap_or(0);
    let grid = (n as f64).sqrt().round() as usize;
    if grid * grid != n {
        return Err(wrong(format!("{n} image tokens is not a square grid")));
    }
    cfg.image_size = 16 * grid;
    cfg.text_encoder = clip_config(path, &tensors)?;
    cfg.validate().map_err(|e| wrong(e.to_string()))?;
    let model = RecLMIS::new(&cfg, 0, device);
    let (mut model, report) =
        load_tensors(model, &tensors).map_err(|source| ImportError::Weights {
            path: path.into(),
            source,
        })?;
    if let Some(first) = report.missing.first() {
        return Err(ImportError::Missing {
            path: path.into(),
            first: first.clone(),
            count: report.missing.len(),
        });
    }
    model.clip = model.clip.set_require_grad(false);
    let state = TrainState {
        epoch: ckpt.epoch.map_or(0, |e| e as usize + 1),
        origin: format!(
            "import:{}",
            path.file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
        ),
        ..Default::default()
    };
    Ok((model, cfg, state))
}

/// CLIP text-tower weights (OpenAI TorchScript `ViT-B-32.pt` or HF `CLIPModel` safetensors) as
/// `clip.*` tensors, with the text-tower config they imply.
pub fn read_clip_text(
    path: &Path,
) -> Result<(HashMap<String, HostTensor>, TextEncoderConfig), ImportError> {
    let sd = match torch::sniff(path)? {
        Format::TorchScript => torch::read_torchscript(path)?,
        Format::Safetensors => torch::read_hf_clip(path)?,
        Format::TorchSave => torch::read_checkpoint(path)?,
    };
    let text = if sd.keys().any(|k| k.starts_with("clip.")) {
        sd
    } else {
        torch::clip_text_from_openai(&sd)
    };
    let tensors = host_tensors(&text);
    let mut cfg = clip_config(path, &tensors)?;
    // The head count is the one size tensors do not carry: HF keeps it in config.json, a traced
    // TorchScript archive in its attention code; OpenAI's rule (width / 64) is the fallback.
    if let Some(h) = hf_heads(path).or_else(|| torchscript_heads(path))
        && let TextEncoderConfig::Clip { heads, .. } = &mut cfg
    {
        *heads = h;
    }
    Ok((tensors, cfg))
}

/// A fresh model of `preset` whose text tower is the given CLIP (the starting point of training
/// with the paper's frozen CLIP).
pub fn model_with_clip(
    path: &Path,
    preset: Preset,
    seed: u64,
    device: &Device,
) -> Result<(RecLMIS, ModelConfig), ImportError> {
    let (tensors, text_cfg) = read_clip_text(path)?;
    let mut cfg = ModelConfig::preset(preset);
    cfg.text_encoder = text_cfg;
    cfg.validate().map_err(|e| ImportError::WrongModel {
        path: path.into(),
        detail: e.to_string(),
    })?;
    let model = RecLMIS::new(&cfg, seed, device);
    let (mut model, report) =
        load_tensors(model, &tensors).map_err(|source| ImportError::Weights {
            path: path.into(),
            source,
        })?;
    if let Some(first) = report
        .missing
        .iter()
        .find(|k| k.starts_with("clip.") && *k != "clip.logit_scale")
    {
        return Err(ImportError::Missing {
            path: path.into(),
            first: first.clone(),
            count: report
                .missing
                .iter()
                .filter(|k| k.starts_with("clip."))
                .count(),
        });
    }
    model.clip = model.clip.set_require_grad(false);
    Ok((model, cfg))
}

/// `text_config.num_attention_heads` of the `config.json` beside an HF safetensors file.
fn hf_heads(path: &Path) -> Option<usize> {
    if path.extension()? != "safetensors" {
        return None;
    }
    let text = std::fs::read_to_string(path.with_file_name("config.json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    let h = v.get("text_config")?.get("num_attention_heads")?.as_u64()?;
    usize::try_from(h).ok().filter(|&h| h > 0)
}

/// The head count a traced `nn.MultiheadAttention` bakes into its code
/// (`q1 = torch.view(q0, [bsz, HEADS, tgt_len, head_dim])`), read from the code file of the class
/// that `transformer.resblocks.0.attn` is an instance of.
fn torchscript_heads(path: &Path) -> Option<usize> {
    use super::pickle::Value;
    use std::io::Read;
    let file = std::fs::File::open(path).ok()?;
    let mut zip = zip::ZipArchive::new(file).ok()?;
    let names: Vec<String> = (0..zip.len())
        .filter_map(|i| {
            zip.name_for_index(i)
                .and_then(Result::ok)
                .map(|n| n.into_owned())
        })
        .collect();
    let read = |zip: &mut zip::ZipArchive<std::fs::File>, name: &str| -> Option<Vec<u8>> {
        let mut buf = Vec::new();
        zip.by_name(name).ok()?.read_to_end(&mut buf).ok()?;
        Some(buf)
    };
    let pkl = names.iter().find(|n| n.ends_with("/data.pkl"))?;
    let prefix = pkl.trim_end_matches("data.pkl").to_string();
    let root = super::pickle::load(&read(&mut zip, pkl)?).ok()?;
    let child = |v: &Value, key: &str| -> Option<Value> {
        let Value::Object(o) = v else { return None };
        let Some(Value::Dict(items)) = &o.state else {
            return None;
        };
        items
            .iter()
            .find(|(k, _)| matches!(k, Value::Str(s) if s == key))
            .map(|(_, v)| v.clone())
    };
    let mut node = root;
    for key in ["transformer", "resblocks", "0", "attn"] {
        node = child(&node, key)?;
    }
    let Value::Object(o) = &node else { return None };
    let Value::Global { module, .. } = &o.callable else {
        return None;
    };
    // `__torch__.a.b.c` -> `<prefix>code/__torch__/a/b/c.py`
    let file = format!("{prefix}code/{}.py", module.replace('.', "/"));
    let code = String::from_utf8(read(&mut zip, &file)?).ok()?;
    code.lines().find_map(|line| {
        let rest = line.split("torch.view(q0, [").nth(1)?;
        rest.split(',').nth(1)?.trim().parse().ok()
    })
}
