//! The text–image Interactor at the bottleneck (docs §1.6).

use burn::module::{Module, Param};
use burn::tensor::Tensor;

use super::init::Init;
use super::nn::{Attention, AttnOptions, BatchNorm, Conv1d, Conv2d, NEG_INF, dropout};

#[derive(Module, Debug)]
pub struct Embeddings {
    /// 1×1 conv from the CNN bottleneck channels to the token width.
    pub patch_embeddings: Conv2d,
    /// `[1, N, D]`, zeros at initialisation.
    pub position_embeddings: Param<Tensor<3>>,
}

/// Conv1d(k 3) over tokens → BatchNorm1d → ReLU.
#[derive(Module, Debug)]
pub struct Ctbn {
    pub conv: Conv1d,
    pub norm: BatchNorm,
}

#[derive(Module, Debug)]
pub struct Interactor {
    pub embeddings: Embeddings,
    pub ctbn: Ctbn,
    pub attn_text: Attention,
    pub attn_img: Attention,
}

impl Interactor {
    pub fn new(c_img: usize, d: usize, n: usize, heads: usize, init: &mut Init) -> Self {
        Self {
            embeddings: Embeddings {
                patch_embeddings: Conv2d::new(c_img, d, 1, true, init),
                position_embeddings: init.constant([1, n, d], 0.0),
            },
            ctbn: Ctbn {
                conv: Conv1d::new(d, d, 3, init),
                norm: BatchNorm::new(d, init),
            },
            attn_text: Attention::new(d, heads, false, init),
            attn_img: Attention::new(d, heads, false, init),
        }
    }

    /// `img_feat4 [B, C, g, g]`, `text_feat [B, L, D]` -> (`V' = img_feat4_4rec [B, N, D]`,
    /// `T'' = text_feat4_4rec [B, L, D]`). `with_text_branch` computes `T''` (CTBN), which only
    /// the POI/WOI heads need. `p`: dropout (0.1 in the authors' code). `clean`: the text mask
    /// `[B, L]` for the clean setting (residuals, pads masked); `None` is the paper's Interactor.
    pub fn forward(
        &self,
        img_feat4: Tensor<4>,
        text_feat: Tensor<3>,
        p: f64,
        train: bool,
        with_text_branch: bool,
        clean: Option<Tensor<2>>,
    ) -> (Tensor<3>, Option<Tensor<3>>) {
        let e = self.embeddings.patch_embeddings.forward(img_feat4); // [B, D, g, g]
        let e = e.flatten::<3>(2, 3).swap_dims(1, 2); // [B, N, D], token n = h·g + w
        let e = e + self.embeddings.position_embeddings.val();
        let e = dropout(e, p, train);
        let attn = || AttnOptions {
            dropout: p,
            ..Default::default()
        };
        let (t1, v1) = if clean.is_none() {
            // paper-parity: §7 #13 — no residuals, no norms, no key-padding mask.
            let t1 = self.attn_text.forward(text_feat, e.clone(), attn(), train); // [B, L, D]
            let v1 = self.attn_img.forward(e, t1.clone(), attn(), train); // [B, N, D]
            (t1, v1)
        } else {
            // clean: residual connections (each followed by a parameter-free LayerNorm) keep each
            // token's own identity, so the words reach the bottleneck at first order; text pads
            // are masked as keys.
            let pad_mask = clean.map(|m| {
                let [b, l] = m.dims();
                m.neg()
                    .add_scalar(1.0)
                    .mul_scalar(NEG_INF as f64)
                    .reshape([b, 1, 1, l])
            });
            let t1 = plain_ln(
                text_feat.clone() + self.attn_text.forward(text_feat, e.clone(), attn(), train),
            );
            let opts = AttnOptions {
                mask: pad_mask,
                dropout: p,
                ..Default::default()
            };
            let v1 = plain_ln(e.clone() + self.attn_img.forward(e, t1.clone(), opts, train));
            (t1, v1)
        };
        let t2 = with_text_branch.then(|| {
            let t = self.ctbn.conv.forward(t1.swap_dims(1, 2)); // [B, D, L]
            self.ctbn.norm.forward_relu(t, train).swap_dims(1, 2) // [B, L, D]
        });
        (v1, t2)
    }
}

/// LayerNorm without learned scale and shift, so the clean setting keeps the authors' state-dict
/// keys.
fn plain_ln(x: Tensor<3>) -> Tensor<3> {
    let d = x.dims()[2];
    let device = x.device();
    burn::tensor::module::layer_norm(x, Tensor::ones([d], &device), None, 1e-5)
}
