//! The text tower: CLIP's text transformer as RecLMIS calls it (docs §1.3), and the
//! built-in encoder, which is the same architecture at a smaller size and trainable.

use burn::module::{Module, Param};
use burn::tensor::module::embedding;
use burn::tensor::{Device, Int, Tensor, TensorData};

use super::config::TextEncoderConfig;
use super::init::Init;
use super::nn::{Attention, AttnOptions, LayerNorm, Linear, NEG_INF};

/// CLIP BPE vocabulary size (the built-in encoder reads the same ids).
pub const CLIP_VOCAB: usize = 49408;

/// Token ids of a batch of notes, `[B, L]` row-major, 0 = padding.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenBatch {
    pub ids: Vec<i64>,
    pub batch: usize,
    pub len: usize,
}

impl TokenBatch {
    pub fn new(rows: &[Vec<i64>]) -> Self {
        let len = rows.first().map_or(0, Vec::len);
        assert!(
            rows.iter().all(|r| r.len() == len),
            "token rows of one batch share one context length"
        );
        Self {
            ids: rows.concat(),
            batch: rows.len(),
            len,
        }
    }

    /// `text_mask`: 1 where the id is not 0 (§4.3).
    pub fn mask_values(&self) -> Vec<f32> {
        self.ids.iter().map(|&i| (i != 0) as u8 as f32).collect()
    }

    pub fn mask(&self, device: &Device) -> Tensor<2> {
        Tensor::from_data(
            TensorData::new(self.mask_values(), [self.batch, self.len]),
            device,
        )
    }

    pub fn ids_tensor(&self, device: &Device) -> Tensor<2, Int> {
        Tensor::from_data(
            TensorData::new(self.ids.clone(), [self.batch, self.len]),
            device,
        )
    }

    /// Per-sample attention mask `[B, 1, L, L]`: causal, and every padding column blocked in every
    /// row (§1.3 "Attention mask, exactly as built").
    pub fn clip_attention_mask(&self, device: &Device) -> Tensor<4> {
        let l = self.len;
        let mut m = vec![0.0f32; self.batch * l * l];
        for b in 0..self.batch {
            for i in 0..l {
                for j in 0..l {
                    if j > i || self.ids[b * l + j] == 0 {
                        m[(b * l + i) * l + j] = NEG_INF;
                    }
                }
            }
        }
        Tensor::from_data(TensorData::new(m, [self.batch, 1, l, l]), device)
    }
}

#[derive(Module, Debug)]
pub struct Mlp {
    pub c_fc: Linear,
    pub c_proj: Linear,
}

/// Pre-LN residual block: `X += MHA(LN_1 X)`, `X += c_proj(QuickGELU(c_fc(LN_2 X)))`.
#[derive(Module, Debug)]
pub struct ResBlock {
    pub attn: Attention,
    pub ln_1: LayerNorm,
    pub mlp: Mlp,
    pub ln_2: LayerNorm,
}

impl ResBlock {
    fn new(width: usize, heads: usize, init: &mut Init) -> Self {
        Self {
            attn: Attention::new(width, heads, false, init),
            ln_1: LayerNorm::new(width, init),
            mlp: Mlp {
                c_fc: Linear::new(width, 4 * width, init),
                c_proj: Linear::new(4 * width, width, init),
            },
            ln_2: LayerNorm::new(width, init),
        }
    }

    fn forward(&self, x: Tensor<3>, mask: Tensor<4>, train: bool) -> Tensor<3> {
        let h = self.ln_1.forward(x.clone());
        let opts = AttnOptions {
            mask: Some(mask),
            ..Default::default()
        };
        let x = x + self.attn.forward(h.clone(), h, opts, train);
        let h = self.mlp.c_fc.forward(self.ln_2.forward(x.clone()));
        let h = h.clone() * burn::tensor::activation::sigmoid(h.mul_scalar(1.702)); // QuickGELU
        x + self.mlp.c_proj.forward(h)
    }
}

#[derive(Module, Debug)]
pub struct Transformer {
    pub resblocks: Vec<ResBlock>,
}

/// CLIP's text transformer (keys `clip.*`), or the built-in encoder of the same architecture.
#[derive(Module, Debug)]
pub struct TextTower {
    pub token_embedding: Embedding,
    pub positional_embedding: Param<Tensor<2>>,
    pub transformer: Transformer,
    pub ln_final: LayerNorm,
    /// `[width, embed]`, applied as `x @ text_projection` (no transpose).
    pub text_projection: Param<Tensor<2>>,
    /// ln 100; CCL uses `exp(logit_scale)` (§3). Frozen in both settings (§7 #22).
    pub logit_scale: Param<Tensor<1>>,
}

#[derive(Module, Debug)]
pub struct Embedding {
    pub weight: Param<Tensor<2>>,
}

impl TextTower {
    pub fn new(cfg: &TextEncoderConfig, context: usize, init: &mut Init) -> Self {
        let (vocab, ctx, width, layers, heads, embed) = match *cfg {
            TextEncoderConfig::Clip {
                vocab,
                context,
                width,
                layers,
                heads,
                embed,
            } => (vocab, context, width, layers, heads, embed),
            TextEncoderConfig::Builtin {
                width,
                layers,
                heads,
            } => (CLIP_VOCAB, context, width, layers, heads, width),
        };
        // CLIP's own initialisation (token N(0, 0.02), positions N(0, 0.01), projection
        // N(0, width^-1/2)); only the built-in encoder is ever trained from it.
        Self {
            token_embedding: Embedding {
                weight: init.normal([vocab, width], 0.02),
            },
            positional_embedding: init.normal([ctx, width], 0.01),
            transformer: Transformer {
                resblocks: (0..layers)
                    .map(|_| ResBlock::new(width, heads, init))
                    .collect(),
            },
            ln_final: LayerNorm::new(width, init),
            text_projection: init.normal([width, embed], (width as f32).powf(-0.5)),
            logit_scale: init.constant([1], 100f32.ln()),
        }
    }

    /// `text_feat_clip [B, L, D]` for every position, pads included (§1.3 steps 1–4).
    pub fn forward(&self, tokens: &TokenBatch, train: bool) -> Tensor<3> {
        let device = self.positional_embedding.val().device();
        let l = tokens.len;
        let x = embedding(
            self.token_embedding.weight.val(),
            tokens.ids_tensor(&device),
        );
        let pos = self
            .positional_embedding
            .val()
            .narrow(0, 0, l)
            .unsqueeze_dim(0);
        let mut x = x + pos; // [B, L, W]
        let mask = tokens.clip_attention_mask(&device);
        for block in &self.transformer.resblocks {
            x = block.forward(x, mask.clone(), train);
        }
        let x = self.ln_final.forward(x);
        x.matmul(self.text_projection.val().unsqueeze_dim(0))
    }
}
