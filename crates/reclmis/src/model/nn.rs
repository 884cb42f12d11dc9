//! Thin layers with PyTorch's parameter names and layouts.
//!
//! burn's own layers store `Linear` weights transposed and name BatchNorm parameters
//! `gamma`/`beta`; ours keep the authors' names and shapes so a state-dict key maps to a field
//! path one to one (see `weights.rs`), and every layer takes `train` explicitly instead of
//! inferring the mode from the device.

use burn::module::{Module, Param, RunningState};
use burn::tensor::activation::{relu, softmax};
use burn::tensor::module::{batch_norm, conv1d, conv2d, layer_norm, unfold4d};
use burn::tensor::ops::{ConvOptions, PadMode, UnfoldOptions};
use burn::tensor::{Device, Distribution, FloatDType, Tensor, TensorData};

use super::init::Init;
use crate::kernels;

/// Large negative logit used as "-inf" in attention masks: `exp` of it underflows to exactly 0,
/// like `-inf`, without producing NaN when added to other values.
pub const NEG_INF: f32 = -1.0e30;

/// `nn.Conv2d` with bias, square kernel, stride 1, zero padding `k/2`.
#[derive(Module, Debug)]
pub struct Conv2d {
    pub weight: Param<Tensor<4>>,
    pub bias: Option<Param<Tensor<1>>>,
}

impl Conv2d {
    /// PyTorch's default initialisation (kaiming-uniform, a = √5): U(±1/√fan_in) for both.
    pub fn new(cin: usize, cout: usize, k: usize, bias: bool, init: &mut Init) -> Self {
        let fan_in = cin * k * k;
        let bound = 1.0 / (fan_in as f32).sqrt();
        Self {
            weight: init.uniform([cout, cin, k, k], bound),
            bias: bias.then(|| init.uniform([cout], bound)),
        }
    }

    // [B, cin, H, W] -> [B, cout, H, W]
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        if kernels::enabled(&x.device()) {
            let bias = match &self.bias {
                Some(b) => b.val(),
                None => Tensor::zeros([self.weight.dims()[0]], &x.device()),
            };
            return kernels::conv(x, self.weight.val(), bias, false);
        }
        self.forward_generic(x)
    }

    /// The convolution on devices without our kernels: burn's, except where the weight is
    /// trained on a GPU. There, burn 0.22's wgpu convolution gives weight gradients that miss
    /// part of their sum once a batch has more than about 2·10⁴ pixels (B·H·W; measured on Mesa's
    /// lavapipe, tests/gpu.rs, docs/gpu.md), so the convolution runs as an im2col matrix product,
    /// whose gradients are right at any size.
    pub fn forward_generic(&self, x: Tensor<4>) -> Tensor<4> {
        if self.weight.val().is_require_grad() && !crate::device::is_cpu(&x.device()) {
            return conv2d_im2col(x, self.weight.val(), self.bias.as_ref().map(|b| b.val()));
        }
        self.forward_burn(x)
    }

    /// burn's own convolution: the reference for our kernel.
    pub fn forward_burn(&self, x: Tensor<4>) -> Tensor<4> {
        let k = self.weight.dims()[2];
        let p = k / 2;
        conv2d(
            x,
            self.weight.val(),
            self.bias.as_ref().map(|b| b.val()),
            ConvOptions::new([1, 1], [p, p], [1, 1], 1),
        )
    }
}

/// A same-size convolution (stride 1, zero padding `k/2`) as matrix products of the weight
/// `[C_out, C_in·k·k]` and the image's patches `[C_in·k·k, rows·W]` (burn's `unfold4d`, in the
/// weight's order), one band of rows at a time so that no patch matrix passes
/// [`IM2COL_FLOATS`] (wgpu binds at most 128 MiB per buffer by default; a 128-channel 3×3
/// convolution over one 224 px image has 231 MB of patches). Its weight gradient is a sum of
/// matrix products.
pub fn conv2d_im2col(x: Tensor<4>, weight: Tensor<4>, bias: Option<Tensor<1>>) -> Tensor<4> {
    let [b, cin, h, w] = x.dims();
    let [cout, _, k, _] = weight.dims();
    let (p, kk) = (k / 2, cin * k * k);
    let rows = (IM2COL_FLOATS / (b * kk * w).max(1)).clamp(1, h);
    let x = if p > 0 {
        x.pad((p, p, p, p), PadMode::Constant(0.0))
    } else {
        x
    };
    let weight = weight.reshape([1, cout, kk]);
    let mut bands: Vec<Tensor<4>> = (0..h)
        .step_by(rows)
        .map(|r0| {
            let r = rows.min(h - r0);
            let band = x
                .clone()
                .slice([0..b, 0..cin, r0..r0 + r + 2 * p, 0..w + 2 * p]);
            let cols = unfold4d(band, [k, k], UnfoldOptions::new([1, 1], [0, 0], [1, 1]));
            weight.clone().matmul(cols).reshape([b, cout, r, w])
        })
        .collect();
    let y = if bands.len() == 1 {
        bands.remove(0)
    } else {
        Tensor::cat(bands, 2)
    };
    match bias {
        Some(bias) => y + bias.reshape([1, cout, 1, 1]),
        None => y,
    }
}

/// The most floats one patch matrix of [`conv2d_im2col`] holds (64 MiB), down to one row of the
/// whole batch: a batch so large that one row passes it (B·C_in·k²·W > 2²⁴, batch 64 of the
/// paper model's widest conv) would also need bands of the batch.
pub const IM2COL_FLOATS: usize = 1 << 24;

/// `nn.Conv1d(c, c, k, padding = k/2)` with bias, over the last axis.
#[derive(Module, Debug)]
pub struct Conv1d {
    pub weight: Param<Tensor<3>>,
    pub bias: Param<Tensor<1>>,
}

impl Conv1d {
    pub fn new(cin: usize, cout: usize, k: usize, init: &mut Init) -> Self {
        let bound = 1.0 / ((cin * k) as f32).sqrt();
        Self {
            weight: init.uniform([cout, cin, k], bound),
            bias: init.uniform([cout], bound),
        }
    }

    // [B, cin, L] -> [B, cout, L]
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let p = self.weight.dims()[2] / 2;
        conv1d(
            x,
            self.weight.val(),
            Some(self.bias.val()),
            ConvOptions::new([1], [p], [1], 1),
        )
    }

    /// The convolution over the token axis of a sequence: `[B, L, C] -> [B, L, C']`.
    pub fn forward_tokens(&self, x: Tensor<3>) -> Tensor<3> {
        self.forward(x.swap_dims(1, 2)).swap_dims(1, 2)
    }
}

/// `nn.Linear(a -> b)`: `weight [b, a]`, `y = x·Wᵀ + b`.
#[derive(Module, Debug)]
pub struct Linear {
    pub weight: Param<Tensor<2>>,
    pub bias: Param<Tensor<1>>,
}

impl Linear {
    pub fn new(din: usize, dout: usize, init: &mut Init) -> Self {
        let bound = 1.0 / (din as f32).sqrt();
        Self {
            weight: init.uniform([dout, din], bound),
            bias: init.uniform([dout], bound),
        }
    }

    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        linear(x, self.weight.val(), self.bias.val())
    }
}

/// `Linear → ReLU → Linear` as an `nn.Sequential` (keys `0.*`, `2.*`).
#[derive(Module, Debug)]
pub struct Mlp2 {
    pub layer0: Linear,
    pub layer2: Linear,
}

impl Mlp2 {
    pub fn new(din: usize, hidden: usize, dout: usize, init: &mut Init) -> Self {
        Self {
            layer0: Linear::new(din, hidden, init),
            layer2: Linear::new(hidden, dout, init),
        }
    }

    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        self.layer2
            .forward(burn::tensor::activation::relu(self.layer0.forward(x)))
    }
}

/// `x·Wᵀ + b` for a PyTorch-layout weight `[out, in]` over the last axis of `x`.
pub fn linear<const D: usize>(x: Tensor<D>, w: Tensor<2>, b: Tensor<1>) -> Tensor<D> {
    // One 2-D matmul against the transposed view: the gemm reads `w` through its strides.
    // burn's `module::linear` reshapes the weight for broadcasting, which copies a transposed
    // weight on every call (measured: ~9 % of a CLIP-sized inference).
    let mut dims = x.dims();
    let din = dims[D - 1];
    let rows: usize = dims[..D - 1].iter().product();
    dims[D - 1] = w.dims()[0];
    let x = x.reshape([rows, din]);
    let ours = kernels::enabled(&x.device());
    let y = if ours
        && rows <= kernels::thin::MAX_ROWS
        && !x.is_require_grad()
        && !w.is_require_grad()
    {
        // Few rows and nothing to differentiate (inference, the frozen text tower): in fp32
        // whatever the precision, since streaming the weight costs the same either way.
        kernels::linear_thin(x, w)
    } else if ours && kernels::precision() == kernels::Precision::Bf16 {
        kernels::linear_bf16(x, w)
    } else {
        x.matmul(w.transpose())
    } + b.unsqueeze::<2>();
    y.reshape(dims)
}

/// BatchNorm over axis 1 (2-D or 1-D), eps 1e-5, momentum 0.1. Training mode normalises with the
/// biased batch variance and updates the running variance with the unbiased one, as PyTorch does.
#[derive(Module, Debug)]
pub struct BatchNorm {
    pub weight: Param<Tensor<1>>,
    pub bias: Param<Tensor<1>>,
    pub running_mean: RunningState<Tensor<1>>,
    pub running_var: RunningState<Tensor<1>>,
}

pub const BN_EPS: f64 = 1e-5;
const BN_MOMENTUM: f64 = 0.1;

impl BatchNorm {
    pub fn new(c: usize, init: &mut Init) -> Self {
        Self {
            weight: init.constant([c], 1.0),
            bias: init.constant([c], 0.0),
            running_mean: RunningState::new(Tensor::zeros([c], init.device())),
            running_var: RunningState::new(Tensor::ones([c], init.device())),
        }
    }

    /// `relu(self.forward(x, train))`, fused into one pass where our kernels run.
    pub fn forward_relu<const D: usize>(&self, x: Tensor<D>, train: bool) -> Tensor<D> {
        if train && kernels::enabled(&x.device()) {
            return self.forward_fast(x, true);
        }
        relu(self.forward(x, train))
    }

    /// The inference-mode BatchNorm folded into the convolution before it, which applies the
    /// scale itself (`kernels::conv_scaled`): the scale `s = γ/√(σ² + ε)` and the folded bias
    /// `(b − μ)·s + β`, so that `conv(x, w·s, bias') = BN(conv(x, w, b))`.
    pub fn fold_scale(
        &self,
        bias: Option<Tensor<1>>,
        c: usize,
        device: &Device,
    ) -> (Tensor<1>, Tensor<1>) {
        let (mean, var) = self.running();
        let scale = self.weight.val() / var.add_scalar(BN_EPS).sqrt();
        let bias = bias.unwrap_or_else(|| Tensor::zeros([c], device));
        let b = (bias - mean) * scale.clone() + self.bias.val();
        (scale, b)
    }

    fn forward_fast<const D: usize>(&self, x: Tensor<D>, relu: bool) -> Tensor<D> {
        let dims = x.dims();
        let n: usize = dims[0] * dims[2..].iter().product::<usize>();
        let (y, stats) = kernels::bn_train(x, self.weight.val(), self.bias.val(), BN_EPS, relu);
        let c = dims[1];
        let mean = stats.clone().narrow(0, 0, 1).reshape([c]);
        let var = stats.narrow(0, 1, 1).reshape([c]);
        self.update_running(mean, var, n);
        y
    }

    /// The running mean and variance, on the device of the weights. Forked copies of a model
    /// (one per device in data-parallel training) share one running state, which follows the
    /// device of the last fork.
    fn running(&self) -> (Tensor<1>, Tensor<1>) {
        let device = self.weight.val().device();
        (
            self.running_mean.value().to_device(&device),
            self.running_var.value().to_device(&device),
        )
    }

    fn update_running(&self, mean: Tensor<1>, var: Tensor<1>, n: usize) {
        let unbiased = if n > 1 {
            n as f64 / (n as f64 - 1.0)
        } else {
            1.0
        };
        let device = mean.device();
        let rm = self.running_mean.value_sync().to_device(&device);
        let rv = self.running_var.value_sync().to_device(&device);
        self.running_mean
            .update((rm.mul_scalar(1.0 - BN_MOMENTUM) + mean.mul_scalar(BN_MOMENTUM)).detach());
        self.running_var.update(
            (rv.mul_scalar(1.0 - BN_MOMENTUM) + var.mul_scalar(BN_MOMENTUM * unbiased)).detach(),
        );
    }

    pub fn forward<const D: usize>(&self, x: Tensor<D>, train: bool) -> Tensor<D> {
        if train && kernels::enabled(&x.device()) {
            return self.forward_fast(x, false);
        }
        self.forward_burn(x, train)
    }

    /// BatchNorm from burn's tensor ops (statistics in float64): the reference for our kernel,
    /// and the path on other devices.
    pub fn forward_burn<const D: usize>(&self, x: Tensor<D>, train: bool) -> Tensor<D> {
        if !train {
            let (mean, var) = self.running();
            return batch_norm(x, self.weight.val(), self.bias.val(), mean, var, BN_EPS);
        }
        let dims = x.dims();
        let c = dims[1];
        let n: usize = dims
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != 1)
            .map(|(_, d)| d)
            .product();
        let reduce: Vec<usize> = (0..D).filter(|&i| i != 1).collect();
        let mut stat_shape = [1usize; D];
        stat_shape[1] = c;
        // Batch statistics accumulate in float64, as PyTorch's CPU kernels do: a float32 sum over
        // B·H·W ≈ 2·10⁵ terms drifts enough to move the gradients of the first layers by 1e-2.
        // Only on the CPU: wgpu's shaders have no float64, and burn's stand-in for it there gives
        // wrong gradients (tests/gpu.rs), so a GPU accumulates in float32 (docs/gpu.md).
        let acc = if crate::device::has_f64(&x.device()) {
            FloatDType::F64
        } else {
            FloatDType::F32
        };
        let x64 = x.cast(acc);
        let mean = x64.clone().sum_dims(&reduce).div_scalar(n as f64); // [1, C, 1, 1]
        let xc = x64 - mean.clone();
        let var = xc
            .clone()
            .powi_scalar(2)
            .sum_dims(&reduce)
            .div_scalar(n as f64);
        let inv = var.clone().add_scalar(BN_EPS).sqrt().recip();
        let w = self.weight.val().cast(acc).reshape(stat_shape);
        let b = self.bias.val().cast(acc).reshape(stat_shape);
        let y = (xc * inv * w + b).cast(FloatDType::F32);
        let mean = mean.detach().cast(FloatDType::F32).reshape([c]);
        let var = var.detach().cast(FloatDType::F32).reshape([c]);
        self.update_running(mean, var, n);
        y
    }
}

/// `nn.LayerNorm(d)`, eps 1e-5.
#[derive(Module, Debug)]
pub struct LayerNorm {
    pub weight: Param<Tensor<1>>,
    pub bias: Param<Tensor<1>>,
}

impl LayerNorm {
    pub fn new(d: usize, init: &mut Init) -> Self {
        Self {
            weight: init.constant([d], 1.0),
            bias: init.constant([d], 0.0),
        }
    }

    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        layer_norm(x, self.weight.val(), Some(self.bias.val()), 1e-5)
    }
}

/// Inverted dropout; identity when `p == 0` or outside training.
///
/// With our CPU kernels the mask is drawn in parallel ([`kernels::cpu::dropout_mask`]) from a
/// seed taken from the device's generator, so a seeded run stays reproducible; elsewhere it is
/// burn's Bernoulli draw.
pub fn dropout<const D: usize>(x: Tensor<D>, p: f64, train: bool) -> Tensor<D> {
    if !train || p <= 0.0 {
        return x;
    }
    let device = x.device();
    if !kernels::enabled(&device) {
        let keep = x.random_like(Distribution::Bernoulli(1.0 - p));
        return x * keep.div_scalar(1.0 - p);
    }
    // 48 random bits from the device's generator (two uniform f32 with 24 each).
    let seed = Tensor::<1>::random([2], Distribution::Default, &device)
        .into_data()
        .iter::<f32>()
        .fold(0u64, |acc, u| (acc << 24) | (u * (1 << 24) as f32) as u64);
    let shape = x.shape();
    let mask = kernels::cpu::dropout_mask(shape.num_elements(), 1.0 - p, seed);
    x * Tensor::from_data(TensorData::new(mask, shape), &device)
}

/// Multi-head attention with PyTorch's packed projection (`in_proj_weight [3D, D]`, rows q|k|v,
/// `out_proj`). Covers `torch.nn.MultiheadAttention` (CLIP, Interactor) and fairseq's
/// `MultiheadAttention` (reconstructors), whose arithmetic is the same up to where the
/// 1/√d scaling is applied.
#[derive(Module, Debug)]
pub struct Attention {
    pub in_proj_weight: Param<Tensor<2>>,
    pub in_proj_bias: Param<Tensor<1>>,
    pub out_proj: Linear,
    pub heads: usize,
}

/// What an attention call adds to the plain softmax(q·kᵀ/√d)·v.
#[derive(Default)]
pub struct AttnOptions {
    /// Additive mask `[B or 1, 1, Lq, Lk]` (0 or `NEG_INF`).
    pub mask: Option<Tensor<4>>,
    /// Per-key weights `[B, Lk]`: `A ← A ⊙ (w + 1e-10)`, renormalised over keys (§1.9).
    pub reweight: Option<Tensor<2>>,
    /// Dropout on the attention probabilities (training only).
    pub dropout: f64,
}

impl Attention {
    /// `out_xavier`: fairseq initialises `out_proj.weight` Xavier-uniform too; torch's MHA uses the
    /// default Linear init for it. Biases start at 0 in both.
    pub fn new(d: usize, heads: usize, out_xavier: bool, init: &mut Init) -> Self {
        let in_bound = (6.0 / (d + 3 * d) as f32).sqrt();
        let out_bound = if out_xavier {
            (6.0 / (2 * d) as f32).sqrt()
        } else {
            1.0 / (d as f32).sqrt()
        };
        Self {
            in_proj_weight: init.uniform([3 * d, d], in_bound),
            in_proj_bias: init.constant([3 * d], 0.0),
            out_proj: Linear {
                weight: init.uniform([d, d], out_bound),
                bias: init.constant([d], 0.0),
            },
            heads,
        }
    }

    /// `q_in [B, Lq, D]`, `kv_in [B, Lk, D]` -> `[B, Lq, D]`.
    pub fn forward(
        &self,
        q_in: Tensor<3>,
        kv_in: Tensor<3>,
        opts: AttnOptions,
        train: bool,
    ) -> Tensor<3> {
        let fused = kernels::enabled(&q_in.device()) && (opts.dropout == 0.0 || !train);
        self.forward_with(q_in, kv_in, opts, train, fused)
    }

    /// [`forward`](Self::forward) through [`kernels::attention`] when `fused` (no dropout on the
    /// probabilities), else as burn tensor ops.
    pub(crate) fn forward_with(
        &self,
        q_in: Tensor<3>,
        kv_in: Tensor<3>,
        opts: AttnOptions,
        train: bool,
        fused: bool,
    ) -> Tensor<3> {
        let [b, lq, d] = q_in.dims();
        let lk = kv_in.dims()[1];
        let h = self.heads;
        let hd = d / h;
        let w = self.in_proj_weight.val();
        let bias = self.in_proj_bias.val();
        let q = linear(
            q_in,
            w.clone().narrow(0, 0, d),
            bias.clone().narrow(0, 0, d),
        );
        let k = linear(
            kv_in.clone(),
            w.clone().narrow(0, d, d),
            bias.clone().narrow(0, d, d),
        );
        let v = linear(kv_in, w.narrow(0, 2 * d, d), bias.narrow(0, 2 * d, d));
        if fused {
            let bias = attention_bias(opts.mask, opts.reweight, lk, &q.device());
            return self.out_proj.forward(kernels::attention(q, k, v, bias, h));
        }
        // [B, L, D] -> [B, h, L, hd]: head h uses channels h·hd .. h·hd+hd-1.
        let split = |t: Tensor<3>, l: usize| t.reshape([b, l, h, hd]).swap_dims(1, 2);
        let q = split(q, lq).mul_scalar(1.0 / (hd as f64).sqrt());
        let k = split(k, lk);
        let v = split(v, lk);
        let mut scores = q.matmul(k.swap_dims(2, 3)); // [B, h, Lq, Lk]
        if let Some(mask) = opts.mask {
            scores = scores + mask;
        }
        let mut attn = softmax(scores, 3);
        if let Some(rw) = opts.reweight {
            // paper-parity: §1.9 — same weights for every head and query row.
            let rw = rw.add_scalar(1e-10).reshape([b, 1, 1, lk]);
            attn = attn * rw;
            attn = attn.clone() / attn.sum_dim(3);
        }
        let attn = dropout(attn, opts.dropout, train);
        let out = attn.matmul(v).swap_dims(1, 2).reshape([b, lq, d]); // [B, Lq, D]
        self.out_proj.forward(out)
    }
}

/// The additive bias `[Bb, Lqb, Lk]` that [`kernels::attention`] adds to every head's scores:
/// the mask, plus `ln(w + 1e-10)` for a reweighting, since `softmax(s) ⊙ (w + 1e-10)`
/// renormalised over the keys is `softmax(s + ln(w + 1e-10))`.
fn attention_bias(
    mask: Option<Tensor<4>>,
    reweight: Option<Tensor<2>>,
    lk: usize,
    device: &Device,
) -> Tensor<3> {
    let mask = mask.map(|m| {
        let [mb, _, mq, mk] = m.dims();
        m.reshape([mb, mq, mk])
    });
    let log_w = reweight.map(|w| {
        let [b, k] = w.dims();
        w.add_scalar(1e-10).log().reshape([b, 1, k])
    });
    match (mask, log_w) {
        (Some(m), Some(w)) => m + w,
        (Some(m), None) => m,
        (None, Some(w)) => w,
        (None, None) => Tensor::zeros([1, 1, lk], device),
    }
}

/// `C[i, j] = 0` if `j <= i` else `NEG_INF`, as `[1, 1, L, L]`.
pub fn causal_mask(l: usize, device: &Device) -> Tensor<4> {
    let mut m = vec![0.0f32; l * l];
    for i in 0..l {
        for j in (i + 1)..l {
            m[i * l + j] = NEG_INF;
        }
    }
    Tensor::from_data(TensorData::new(m, [1, 1, l, l]), device)
}
