//! The conditioned reconstructors `rec_text_trans1` / `rec_img_trans1` (docs §1.9).

use burn::module::Module;
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor};

use super::init::Init;
use super::nn::{Attention, AttnOptions, LayerNorm, Linear, causal_mask, dropout};

/// Post-LN decoder layer (fairseq style).
#[derive(Module, Debug)]
pub struct DecoderLayer {
    pub self_attn: Attention,
    pub self_attn_layer_norm: LayerNorm,
    /// Unused in `decoder1` (no memory), where it stays at its initial values.
    pub encoder_attn: Attention,
    pub encoder_attn_layer_norm: LayerNorm,
    pub fc1: Linear,
    pub fc2: Linear,
    pub final_layer_norm: LayerNorm,
}

/// How one decoder layer is called.
struct LayerCall<'a> {
    memory: Option<&'a Tensor<3>>,
    self_reweight: Option<&'a Tensor<2>>,
    cross_reweight: Option<&'a Tensor<2>>,
    future_mask: Option<&'a Tensor<4>>,
    dropout: f64,
    train: bool,
}

impl DecoderLayer {
    fn new(d: usize, heads: usize, init: &mut Init) -> Self {
        Self {
            self_attn: Attention::new(d, heads, true, init),
            self_attn_layer_norm: LayerNorm::new(d, init),
            encoder_attn: Attention::new(d, heads, true, init),
            encoder_attn_layer_norm: LayerNorm::new(d, init),
            fc1: Linear::new(d, 2 * d, init),
            fc2: Linear::new(2 * d, d, init),
            final_layer_norm: LayerNorm::new(d, init),
        }
    }

    fn forward(&self, x: Tensor<3>, c: &LayerCall) -> Tensor<3> {
        let sa = self.self_attn.forward(
            x.clone(),
            x.clone(),
            AttnOptions {
                mask: c.future_mask.cloned(),
                reweight: c.self_reweight.cloned(),
                dropout: 0.0,
            },
            c.train,
        );
        let mut x = self
            .self_attn_layer_norm
            .forward(x + dropout(sa, c.dropout, c.train));
        if let Some(mem) = c.memory {
            let ca = self.encoder_attn.forward(
                x.clone(),
                mem.clone(),
                AttnOptions {
                    reweight: c.cross_reweight.cloned(),
                    ..Default::default()
                },
                c.train,
            );
            x = self
                .encoder_attn_layer_norm
                .forward(x + dropout(ca, c.dropout, c.train));
        }
        let ff = self.fc2.forward(relu(self.fc1.forward(x.clone())));
        self.final_layer_norm
            .forward(x + dropout(ff, c.dropout, c.train))
    }
}

#[derive(Module, Debug)]
pub struct TransformerDecoder {
    pub decoder_layers: Vec<DecoderLayer>,
}

impl TransformerDecoder {
    fn new(d: usize, heads: usize, layers: usize, init: &mut Init) -> Self {
        Self {
            decoder_layers: (0..layers)
                .map(|_| DecoderLayer::new(d, heads, init))
                .collect(),
        }
    }

    fn forward(&self, mut x: Tensor<3>, c: &LayerCall) -> Tensor<3> {
        for layer in &self.decoder_layers {
            x = layer.forward(x, c);
        }
        x
    }
}

/// `DualTransformer` called with `decoding = 2`.
#[derive(Module, Debug)]
pub struct DualTransformer {
    pub decoder1: TransformerDecoder,
    pub decoder2: TransformerDecoder,
}

impl DualTransformer {
    pub fn new(d: usize, heads: usize, layers: usize, init: &mut Init) -> Self {
        Self {
            decoder1: TransformerDecoder::new(d, heads, layers, init),
            decoder2: TransformerDecoder::new(d, heads, layers, init),
        }
    }

    /// `src1 [B, L1, D]` (the condition, unmasked), `src2 [B, L2, D]` (masked), `w [B, L1]`
    /// -> reconstruction `[B, L2, D]`. `causal`: the authors' future mask in every
    /// self-attention (§7 #2). `p`: dropout after each sub-layer.
    pub fn forward(
        &self,
        src1: Tensor<3>,
        src2: Tensor<3>,
        w: &Tensor<2>,
        causal: bool,
        p: f64,
        train: bool,
    ) -> Tensor<3> {
        let device: Device = src1.device();
        let m1 = causal.then(|| causal_mask(src1.dims()[1], &device));
        let m2 = causal.then(|| causal_mask(src2.dims()[1], &device));
        let enc = self.decoder1.forward(
            src1,
            &LayerCall {
                memory: None,
                self_reweight: Some(w),
                cross_reweight: None,
                future_mask: m1.as_ref(),
                dropout: p,
                train,
            },
        );
        self.decoder2.forward(
            src2,
            &LayerCall {
                memory: Some(&enc),
                self_reweight: None,
                cross_reweight: Some(w),
                future_mask: m2.as_ref(),
                dropout: p,
                train,
            },
        )
    }
}
