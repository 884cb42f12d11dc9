//! LViT's decoder with pixel-level attention (PLAM) on the skips, and the head (docs §1.10).

use burn::module::Module;
use burn::tensor::Tensor;
use burn::tensor::activation::relu;

use super::encoder::{ConvBatchNorm, forward_convs, n_convs};
use super::init::Init;
use super::nn::{Conv2d, Mlp2};
use crate::kernels;

/// `PixLevelModule(C)`: a per-pixel gate from channel-mean and channel-max statistics.
#[derive(Module, Debug)]
pub struct PixLevelModule {
    pub conv_avg: Conv2d,
    pub conv_max: Conv2d,
    /// `Linear(3→6) → ReLU → Linear(6→1)`.
    pub bottleneck: Mlp2,
    /// Built and saved by the authors, never used in the forward pass (§7 #12).
    pub conv_sig: ConvSig,
}

/// `conv_sig.0` (a 1×1 conv with bias); unused.
#[derive(Module, Debug)]
pub struct ConvSig {
    pub layer0: Conv2d,
}

impl PixLevelModule {
    pub fn new(c: usize, init: &mut Init) -> Self {
        Self {
            conv_avg: Conv2d::new(c, c, 1, false, init),
            conv_max: Conv2d::new(c, c, 1, false, init),
            bottleneck: Mlp2::new(3, 6, 1, init),
            conv_sig: ConvSig {
                layer0: Conv2d::new(c, c, 1, true, init),
            },
        }
    }

    // s [B, C, H, W] -> z ⊙ s
    pub fn forward(&self, s: Tensor<4>) -> Tensor<4> {
        if kernels::enabled(&s.device()) {
            return kernels::plam(s, self.weights());
        }
        self.forward_burn(s)
    }

    /// The weights as our kernels take them ([`kernels::PlamWeights`]).
    pub fn weights(&self) -> kernels::PlamWeights {
        let (l0, l2) = (&self.bottleneck.layer0, &self.bottleneck.layer2);
        (
            [self.conv_avg.weight.val(), self.conv_max.weight.val()],
            (l0.weight.val(), l0.bias.val()),
            (l2.weight.val(), l2.bias.val()),
        )
    }

    /// The same with burn's ops: the path of other devices, and the kernels' reference.
    pub fn forward_burn(&self, s: Tensor<4>) -> Tensor<4> {
        let a = relu(self.conv_avg.forward_generic(s.clone())).mean_dim(1); // [B, 1, H, W]
        let m = relu(self.conv_max.forward_generic(s.clone())).max_dim(1); // [B, 1, H, W]
        let f = Tensor::cat(vec![a.clone(), m.clone(), a + m], 1); // [B, 3, H, W]
        let f = f.permute([0, 2, 3, 1]); // [B, H, W, 3]
        let z = self.bottleneck.forward(f); // [B, H, W, 1]
        // paper-parity: §7 #12 — no sigmoid on the gate.
        s * z.permute([0, 3, 1, 2])
    }
}

/// `UpblockAttention`: nearest ×2 upsampling, PLAM on the skip, concat [skip, up], two convs.
#[derive(Module, Debug)]
pub struct UpBlock {
    pub pix_module: PixLevelModule,
    pub n_convs: Vec<ConvBatchNorm>,
}

impl UpBlock {
    /// `c_skip` channels of the skip, `c_up` of the upsampled input.
    pub fn new(c_skip: usize, c_up: usize, cout: usize, init: &mut Init) -> Self {
        Self {
            pix_module: PixLevelModule::new(c_skip, init),
            n_convs: n_convs(c_skip + c_up, cout, init),
        }
    }

    pub fn forward(&self, x: Tensor<4>, skip: Tensor<4>, train: bool) -> Tensor<4> {
        let device = x.device();
        if !train && kernels::enabled(&device) {
            // Inference: PLAM's gate, the upsampling and the concatenation are read by the
            // first convolution's kernel instead of being written out.
            let y = kernels::upcat_conv_scaled(
                skip,
                x,
                self.pix_module.weights(),
                self.n_convs[0].folded(&device),
                true,
            );
            return forward_convs(&self.n_convs[1..], y, false);
        }
        let sa = self.pix_module.forward(skip);
        let cat = if kernels::enabled(&device) {
            kernels::upsample_cat(sa, x)
        } else {
            Tensor::cat(vec![sa, upsample_nearest2(x)], 1)
        };
        forward_convs(&self.n_convs, cat, train)
    }
}

/// `out[i, j] = in[⌊i/2⌋, ⌊j/2⌋]`: [B, C, H, W] -> [B, C, 2H, 2W].
pub fn upsample_nearest2(x: Tensor<4>) -> Tensor<4> {
    let [b, c, h, w] = x.dims();
    x.reshape([b, c, h, 1, w, 1])
        .expand([b, c, h, 2, w, 2])
        .reshape([b, c, 2 * h, 2 * w])
}
