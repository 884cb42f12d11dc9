//! From samples to one optimiser step, shared by training, evaluation, the benchmark and the
//! tests: batches as the model takes them, the frozen text tower's cache, the forward pass with
//! its losses, and the whole-batch update.

use std::collections::HashMap;

use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::tensor::{Device, Tensor, TensorData};

use crate::data::dataset::Sample;
use crate::model::{Branches, Losses, ModelConfig, Outputs, RecLMIS, TokenBatch, to_vec};
use crate::tokenizer::{Tokenizer, pad_note};

/// A batch ready for the model.
pub struct BatchTensors {
    pub images: Tensor<4>,
    pub masks: Tensor<3>,
    pub tokens: TokenBatch,
    pub notes: Vec<String>,
    pub mask_values: Vec<u8>,
}

/// Builds model inputs from samples: BGR/255 images, 0/1 masks, notes padded and tokenised as
/// the authors do (§4.3), after `cfg.notes` has turned each note into the text the encoder reads.
pub fn make_batch(
    samples: &[Sample],
    size: usize,
    cfg: &ModelConfig,
    device: &Device,
) -> BatchTensors {
    let b = samples.len();
    let tok = Tokenizer::clip();
    let images: Vec<f32> = samples
        .iter()
        .flat_map(|s| s.image.iter().map(|&v| v as f32 / 255.0))
        .collect();
    let mask_values: Vec<u8> = samples
        .iter()
        .flat_map(|s| s.mask.iter().copied())
        .collect();
    let rows: Vec<Vec<i64>> = samples
        .iter()
        .map(|s| {
            tok.tokenize(&pad_note(&cfg.notes.model_text(&s.note)), cfg.context)
                .ids
        })
        .collect();
    BatchTensors {
        images: Tensor::from_data(TensorData::new(images, [b, 3, size, size]), device),
        masks: Tensor::from_data(
            TensorData::new(
                mask_values.iter().map(|&v| v as f32).collect::<Vec<_>>(),
                [b, size, size],
            ),
            device,
        ),
        tokens: TokenBatch::new(&rows),
        notes: samples.iter().map(|s| s.note.clone()).collect(),
        mask_values,
    }
}

/// Text features of a frozen tower, computed once per distinct note.
#[derive(Default)]
pub struct TextCache {
    rows: HashMap<Vec<i64>, Vec<f32>>,
}

impl TextCache {
    /// `text_feat_clip` for a batch: from the cache when the tower is frozen, else a fresh
    /// (differentiable) forward.
    pub fn encode(&mut self, model: &RecLMIS, tokens: &TokenBatch, train: bool) -> Tensor<3> {
        let cfg = model.cfg();
        let device = model.device();
        let (l, d) = (tokens.len, cfg.d_model());
        if cfg.text_free {
            return Tensor::zeros([tokens.batch, l, d], &device);
        }
        if !cfg.text_encoder.is_frozen() {
            return model.encode_text(tokens, train);
        }
        let missing: Vec<Vec<i64>> = tokens
            .ids
            .chunks(l)
            .filter(|r| !self.rows.contains_key(*r))
            .map(<[i64]>::to_vec)
            .collect();
        if !missing.is_empty() {
            let fresh = model.encode_text(&TokenBatch::new(&missing), false);
            let v = to_vec(&fresh);
            for (r, row) in missing.into_iter().zip(v.chunks(l * d)) {
                self.rows.insert(r, row.to_vec());
            }
        }
        let mut out = Vec::with_capacity(tokens.batch * l * d);
        for r in tokens.ids.chunks(l) {
            out.extend_from_slice(&self.rows[r]);
        }
        Tensor::from_data(TensorData::new(out, [tokens.batch, l, d]), &device)
    }
}

/// The training forward pass: outputs of every branch `branches` asks for, and the losses
/// against `masks`.
pub fn forward(
    model: &RecLMIS,
    images: Tensor<4>,
    text_features: Tensor<3>,
    tokens: &TokenBatch,
    masks: Tensor<3>,
    branches: Branches,
) -> (Outputs, Losses) {
    let out = model.forward(images, text_features, tokens, branches, true);
    let losses = model.losses(&out, masks);
    (out, losses)
}

/// Back-propagates `losses.total` and applies one step of `optim` at learning rate `lr` (the
/// benchmark's step; the trainer sums the gradients of its shards first, `Trainer::forward_backward`).
pub fn update(model: RecLMIS, optim: &mut ModuleOptimizer, lr: f64, losses: &Losses) -> RecLMIS {
    let grads = GradientsParams::from_grads(losses.total.backward(), &model);
    optim.step(lr, model, grads)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_carry_the_text_the_notes_config_asks_for() {
        let note = "Bibasal opacities, apices clear.";
        let canonical = "bilateral pulmonary infection, two infected areas, lower left lung and \
                         lower right lung.";
        let sample = Sample {
            key: "k".into(),
            image: vec![0; 3 * 16 * 16],
            mask: vec![0; 16 * 16],
            note: note.into(),
        };
        let device = Device::flex();
        let ids = |text: &str| Tokenizer::clip().tokenize(&pad_note(text), 18).ids;
        let mut cfg = ModelConfig::qata();
        let raw = make_batch(std::slice::from_ref(&sample), 16, &cfg, &device);
        assert_eq!(raw.tokens.ids, ids(note));
        cfg.notes.canonical = true;
        let read = make_batch(std::slice::from_ref(&sample), 16, &cfg, &device);
        assert_eq!(read.tokens.ids, ids(canonical));
        // The batch keeps the note as written, for reports.
        assert_eq!(read.notes, vec![note.to_owned()]);
    }
}
