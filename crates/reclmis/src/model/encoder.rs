//! LViT's CNN encoder (docs §1.2).

use burn::module::Module;
use burn::tensor::activation::relu;
use burn::tensor::module::max_pool2d;
use burn::tensor::ops::MaxPoolOptions;
use burn::tensor::{Device, Tensor};

use super::init::Init;
use super::nn::{BatchNorm, Conv2d};
use crate::kernels;

/// Conv3×3 (bias) → BatchNorm → ReLU. Keys `conv.*`, `norm.*`.
#[derive(Module, Debug)]
pub struct ConvBatchNorm {
    pub conv: Conv2d,
    pub norm: BatchNorm,
}

impl ConvBatchNorm {
    pub fn new(cin: usize, cout: usize, init: &mut Init) -> Self {
        Self {
            conv: Conv2d::new(cin, cout, 3, true, init),
            norm: BatchNorm::new(cout, init),
        }
    }

    pub fn forward(&self, x: Tensor<4>, train: bool) -> Tensor<4> {
        if !kernels::enabled(&x.device()) {
            return relu(self.norm.forward(self.conv.forward(x), train));
        }
        if train {
            return self.norm.forward_relu(self.conv.forward(x), true);
        }
        // Inference: the BatchNorm folded into the convolution (its scale applied by the
        // kernel, so the weights are not rescaled on every call), the ReLU in its epilogue.
        let (weight, bias, scale) = self.folded(&x.device());
        kernels::conv_scaled(x, weight, bias, scale, true)
    }

    /// The inference block as `(weight, bias, scale)` of one convolution whose output channel
    /// `c` is `scale[c]·(weight ⋆ x)[c] + bias[c]` (see `BatchNorm::fold_scale`).
    pub fn folded(&self, device: &Device) -> (Tensor<4>, Tensor<1>, Tensor<1>) {
        let weight = self.conv.weight.val();
        let (scale, bias) = self.norm.fold_scale(
            self.conv.bias.as_ref().map(|b| b.val()),
            weight.dims()[0],
            device,
        );
        (weight, bias, scale)
    }
}

/// Two `ConvBatchNorm`s, keys `nConvs.{0,1}`.
pub fn n_convs(cin: usize, cout: usize, init: &mut Init) -> Vec<ConvBatchNorm> {
    vec![
        ConvBatchNorm::new(cin, cout, init),
        ConvBatchNorm::new(cout, cout, init),
    ]
}

pub fn forward_convs(convs: &[ConvBatchNorm], mut x: Tensor<4>, train: bool) -> Tensor<4> {
    for c in convs {
        x = c.forward(x, train);
    }
    x
}

/// MaxPool 2×2 → two `ConvBatchNorm`s.
#[derive(Module, Debug)]
pub struct DownBlock {
    pub n_convs: Vec<ConvBatchNorm>,
}

impl DownBlock {
    pub fn new(cin: usize, cout: usize, init: &mut Init) -> Self {
        Self {
            n_convs: n_convs(cin, cout, init),
        }
    }

    // [B, cin, H, W] -> [B, cout, H/2, W/2]
    pub fn forward(&self, x: Tensor<4>, train: bool) -> Tensor<4> {
        let x = if kernels::enabled(&x.device()) {
            kernels::maxpool2(x)
        } else {
            max_pool2d(x, MaxPoolOptions::new([2, 2]))
        };
        forward_convs(&self.n_convs, x, train)
    }
}
