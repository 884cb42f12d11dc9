//! Our own CPU kernels for the model's hot block (conv → BatchNorm → ReLU), plugged into burn as a
//! backend extension of flex and of its autodiff wrapper, with hand-written backward passes.
//!
//! burn-flex's convolution backward runs the weight gradient as a skinny gemm and the input
//! gradient as a scalar scatter-add, and its training BatchNorm is a chain of unfused passes; the
//! kernels in [`cpu`] do each of these as one threaded pass or one well-shaped gemm. Other devices
//! (CUDA) and `RECLMIS_KERNELS=burn` keep burn's own ops, which are also the reference the tests
//! compare against.

#[cfg(target_arch = "x86_64")]
pub mod amx;
pub mod attention;
pub mod bf16;
pub mod cpu;
pub mod heap;
pub mod plam;
pub(crate) mod simd;
pub mod thin;
pub mod winograd;

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, DispatchDevice, Flex, TensorMetadata, backend_extension};
use burn::tensor::{DType, Device, Tensor, TensorData};

use attention::AttnShape;
use cpu::ConvShape;
use rayon::prelude::*;

/// Which implementation the conv/BatchNorm blocks use on a CPU device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelChoice {
    /// Ours ([`cpu`]); the default.
    Ours,
    /// burn's generic ops (the reference; also what non-CPU devices always use).
    Burn,
}

// 0 = not read yet, 1 = ours, 2 = burn.
static CHOICE: AtomicU8 = AtomicU8::new(0);

/// The current choice: set by [`set_kernels`], else `RECLMIS_KERNELS=burn|ours`, else ours.
pub fn kernels() -> KernelChoice {
    match CHOICE.load(Ordering::Relaxed) {
        1 => KernelChoice::Ours,
        2 => KernelChoice::Burn,
        _ => {
            let choice = match std::env::var("RECLMIS_KERNELS").as_deref() {
                Ok("burn") => KernelChoice::Burn,
                _ => KernelChoice::Ours,
            };
            set_kernels(choice);
            choice
        }
    }
}

/// Process-wide switch, used by `bench` to time both implementations in one run.
pub fn set_kernels(choice: KernelChoice) {
    let v = match choice {
        KernelChoice::Ours => 1,
        KernelChoice::Burn => 2,
    };
    CHOICE.store(v, Ordering::Relaxed);
}

/// Arithmetic of our convolutions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    Fp32,
    /// Operands rounded to bf16, products accumulated in fp32 (AVX-512 BF16 dot products).
    /// BatchNorm, the other layers, the master weights and the optimiser stay fp32.
    Bf16,
}

// 0 = fp32, 1 = bf16.
static PRECISION: AtomicU8 = AtomicU8::new(0);

/// Selects the convolutions' arithmetic for the process. Asking for bf16 on a CPU without
/// AVX-512 BF16 keeps fp32 and returns an error saying so.
pub fn set_precision(p: Precision) -> Result<(), String> {
    if p == Precision::Bf16 && !bf16::bf16_supported() {
        PRECISION.store(0, Ordering::Relaxed);
        return Err("this CPU lacks AVX-512 BF16; the convolutions stay fp32".into());
    }
    PRECISION.store(u8::from(p == Precision::Bf16), Ordering::Relaxed);
    Ok(())
}

pub fn precision() -> Precision {
    if PRECISION.load(Ordering::Relaxed) == 1 {
        Precision::Bf16
    } else {
        Precision::Fp32
    }
}

/// What the convolutions run as, for reports: `fp32`, or bf16 where our kernels do the work.
pub fn precision_label() -> String {
    match (kernels(), precision()) {
        (KernelChoice::Ours, Precision::Bf16) => "bf16 operands, fp32 accumulation".into(),
        _ => "fp32".into(),
    }
}

/// The instruction set our kernels use on this CPU, detected at run time (capped by
/// `RECLMIS_ISA=avx2|portable`): `avx512f`, `avx2+fma` or `portable`; with `+avx512bf16` where the
/// bf16 kernels can run and `+amx` where they use AMX tiles. The `gemm` crate under the im2col
/// convolutions and burn's matmuls detects its own.
pub fn isa() -> String {
    let base = simd::isa_name();
    let mut isa = base.to_owned();
    if bf16::bf16_supported() {
        isa.push_str("+avx512bf16");
    }
    #[cfg(target_arch = "x86_64")]
    if bf16::bf16_supported() && amx::available() {
        isa.push_str("+amx");
    }
    isa
}

/// Whether tensors on `device` go through our kernels.
pub fn enabled(device: &Device) -> bool {
    kernels() == KernelChoice::Ours
        && matches!(
            device.as_dispatch().clone().inner(),
            DispatchDevice::Flex(_)
        )
}

#[backend_extension(Flex, Autodiff)]
pub trait FastOps: burn::backend::Backend {
    /// Same-size convolution (odd square kernel, stride 1, zero padding k/2) with bias, and a
    /// ReLU epilogue when `relu`.
    fn fast_conv(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        relu: bool,
    ) -> FloatTensor<Self>;

    /// Training-mode BatchNorm over axis 1 of `[B, C, …]` (batch statistics, biased variance),
    /// then ReLU when `relu`. Returns the output and `[2, C]`: batch mean and biased variance.
    fn fast_bn_train(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        eps: f64,
        relu: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);

    /// [`fast_conv`](FastOps::fast_conv) with each output channel multiplied by `scale [Cout]`
    /// before the bias: an inference BatchNorm folded into the convolution without rescaling
    /// the weight tensor on every call.
    fn fast_conv_scaled(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        scale: FloatTensor<Self>,
        relu: bool,
    ) -> FloatTensor<Self>;

    /// 2×2 max pooling, stride 2, over `[B, C, H, W]`.
    fn fast_maxpool2(x: FloatTensor<Self>) -> FloatTensor<Self>;

    /// `cat([skip, upsample_nearest2(x)], 1)` ([`cpu::upcat_forward`]).
    fn fast_upcat(skip: FloatTensor<Self>, x: FloatTensor<Self>) -> FloatTensor<Self>;

    /// One Adam update of a parameter, fused ([`cpu::adam_update`]): returns the new parameter
    /// and moments. `combined` and `eps_bc` are Adam's bias-corrected factors for this step.
    #[allow(clippy::too_many_arguments)]
    fn fast_adam(
        param: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        moment_1: FloatTensor<Self>,
        moment_2: FloatTensor<Self>,
        lr: f64,
        betas: (f64, f64),
        combined: f64,
        eps_bc: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);

    /// Multi-head attention `softmax(q·kᵀ/√hd + bias)·v` ([`attention`]): `q [B, Lq, D]`,
    /// `k, v [B, Lk, D]`, `bias [Bb, Lqb, Lk]` with `Bb` 1 or `B` and `Lqb` 1 or `Lq`.
    fn fast_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        heads: usize,
    ) -> FloatTensor<Self>;

    /// `x [rows, din] · wᵀ` for a `Linear` weight `w [dout, din]` and few rows, without packing
    /// the weight ([`thin::linear`]).
    fn fast_linear_thin(x: FloatTensor<Self>, w: FloatTensor<Self>) -> FloatTensor<Self>;

    /// `x [rows, din] · wᵀ` for a `Linear` weight `w [dout, din]`, with bf16 operands and f32
    /// accumulation ([`bf16::matmul_bf16`]).
    fn fast_linear_bf16(x: FloatTensor<Self>, w: FloatTensor<Self>) -> FloatTensor<Self>;

    /// The decoder's pixel-level attention ([`plam`]) on a skip `[B, C, H, W]`: 1×1 weights
    /// `[C, C, 1, 1]` of the mean and max paths, then the 3 → 6 → 1 MLP's weights and biases.
    #[allow(clippy::too_many_arguments)]
    fn fast_plam(
        s: FloatTensor<Self>,
        w_avg: FloatTensor<Self>,
        w_max: FloatTensor<Self>,
        l0w: FloatTensor<Self>,
        l0b: FloatTensor<Self>,
        l2w: FloatTensor<Self>,
        l2b: FloatTensor<Self>,
    ) -> FloatTensor<Self>;

    /// A decoder block's first convolution, `fast_conv_scaled(fast_upcat(fast_plam(skip, …),
    /// x), weight, bias, scale, relu)`, where possible without writing the gated skip or the
    /// concatenation ([`winograd::conv_forward_upcat`]); the arguments are those of the three.
    #[allow(clippy::too_many_arguments)]
    fn fast_upcat_conv_scaled(
        skip: FloatTensor<Self>,
        x: FloatTensor<Self>,
        w_avg: FloatTensor<Self>,
        w_max: FloatTensor<Self>,
        l0w: FloatTensor<Self>,
        l0b: FloatTensor<Self>,
        l2w: FloatTensor<Self>,
        l2b: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        scale: FloatTensor<Self>,
        relu: bool,
    ) -> FloatTensor<Self>;
}

/// PLAM's parameters, in the order of the autodiff parents after the input.
#[derive(Clone, Debug)]
pub struct PlamParams<T> {
    pub w_avg: T,
    pub w_max: T,
    pub l0w: T,
    pub l0b: T,
    pub l2w: T,
    pub l2b: T,
}

impl<T> PlamParams<T> {
    fn map<U>(self, f: impl Fn(T) -> U) -> PlamParams<U> {
        PlamParams {
            w_avg: f(self.w_avg),
            w_max: f(self.w_max),
            l0w: f(self.l0w),
            l0b: f(self.l0b),
            l2w: f(self.l2w),
            l2b: f(self.l2b),
        }
    }
}

fn contiguous_f32(t: FlexTensor) -> FlexTensor {
    assert_eq!(t.dtype(), DType::F32, "reclmis kernels work on float32");
    if t.as_slice::<f32>().is_some() {
        t
    } else {
        t.to_contiguous()
    }
}

fn data(t: &FlexTensor) -> &[f32] {
    t.as_slice::<f32>()
        .expect("contiguous float32 tensor (made so by contiguous_f32)")
}

fn flex(values: Vec<f32>, shape: Vec<usize>) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, shape))
}

fn conv_shape(x: &FlexTensor, w: &FlexTensor) -> ConvShape {
    let [b, cin, h, wd] = x.shape().dims::<4>();
    let [cout, wcin, k, k2] = w.shape().dims::<4>();
    assert!(
        wcin == cin && k == k2 && k % 2 == 1,
        "fast_conv: input {:?} and weight {:?} do not make a same-size convolution",
        x.shape(),
        w.shape()
    );
    ConvShape {
        b,
        cin,
        cout,
        h,
        w: wd,
        k,
    }
}

fn conv_forward(x: &FlexTensor, w: &FlexTensor, bias: &FlexTensor, relu: bool) -> FlexTensor {
    conv_forward_scaled(x, w, bias, None, relu)
}

/// The convolution, with each output channel scaled before the bias when `scale` is given.
fn conv_forward_scaled(
    x: &FlexTensor,
    w: &FlexTensor,
    bias: &FlexTensor,
    scale: Option<&FlexTensor>,
    relu: bool,
) -> FlexTensor {
    let s = conv_shape(x, w);
    let mut out = cpu::zeroed(s.b * s.cout * s.h * s.w);
    let (xd, wd, bd) = (data(x), data(w), Some(data(bias)));
    match (precision(), scale) {
        (Precision::Fp32, None) => cpu::conv_forward(xd, wd, bd, s, relu, &mut out),
        (Precision::Fp32, Some(sc)) => {
            cpu::conv_forward_scaled(xd, wd, bd, data(sc), s, relu, &mut out);
        }
        (Precision::Bf16, None) => bf16::conv_forward_bf16(xd, wd, bd, s, relu, &mut out),
        (Precision::Bf16, Some(sc)) if bf16::winograd_instead(&s) => {
            cpu::conv_forward_scaled(xd, wd, bd, data(sc), s, relu, &mut out);
        }
        (Precision::Bf16, Some(sc)) => {
            let ws = cpu::scale_rows(wd, data(sc));
            bf16::conv_forward_bf16(xd, &ws, bd, s, relu, &mut out);
        }
    }
    flex(out, vec![s.b, s.cout, s.h, s.w])
}

/// `x` viewed as `[b, c, n]`.
fn bn_dims(x: &FlexTensor) -> (usize, usize, usize) {
    let dims = x.shape();
    let dims = dims.as_slice();
    assert!(dims.len() >= 2, "fast_bn_train needs [B, C, …]");
    (dims[0], dims[1], dims[2..].iter().product())
}

struct BnForward {
    y: FlexTensor,
    mean: Vec<f64>,
    var: Vec<f64>,
}

fn bn_forward(
    x: &FlexTensor,
    gamma: &FlexTensor,
    beta: &FlexTensor,
    eps: f64,
    relu: bool,
) -> BnForward {
    let (b, c, n) = bn_dims(x);
    let mut y = cpu::zeroed(b * c * n);
    let mut mean = vec![0.0f64; c];
    let mut var = vec![0.0f64; c];
    cpu::bn_train_forward(
        data(x),
        data(gamma),
        data(beta),
        b,
        c,
        n,
        eps,
        relu,
        &mut y,
        &mut mean,
        &mut var,
    );
    BnForward {
        y: flex(y, x.shape().as_slice().to_vec()),
        mean,
        var,
    }
}

fn bn_stats(mean: &[f64], var: &[f64]) -> FlexTensor {
    let c = mean.len();
    let v: Vec<f32> = mean.iter().chain(var).map(|&v| v as f32).collect();
    flex(v, vec![2, c])
}

fn upcat_dims(skip: &FlexTensor, x: &FlexTensor) -> cpu::UpCat {
    let [b, cs, h2, w2] = skip.shape().dims::<4>();
    let [bx, cx, h, w] = x.shape().dims::<4>();
    assert!(
        b == bx && h2 == 2 * h && w2 == 2 * w,
        "upcat: skip {:?} is not twice the size of {:?}",
        skip.shape(),
        x.shape()
    );
    (b, cs, cx, h, w)
}

fn upcat_forward(skip: &FlexTensor, x: &FlexTensor) -> (FlexTensor, cpu::UpCat) {
    let d = upcat_dims(skip, x);
    let (b, cs, cx, h, w) = d;
    let mut y = cpu::zeroed(b * (cs + cx) * 4 * h * w);
    cpu::upcat_forward(data(skip), data(x), d, &mut y);
    (flex(y, vec![b, cs + cx, 2 * h, 2 * w]), d)
}

fn maxpool_forward(x: &FlexTensor) -> (FlexTensor, Vec<u8>) {
    let [b, c, h, w] = x.shape().dims::<4>();
    let n = b * c * (h / 2) * (w / 2);
    let (mut y, mut idx) = (cpu::zeroed(n), cpu::filled(n, 0u8));
    cpu::maxpool2_forward(data(x), b * c, h, w, &mut y, &mut idx);
    (flex(y, vec![b, c, h / 2, w / 2]), idx)
}

/// `[Wa; Wm]` as one `[2C, C]` matrix, the shape and the forward pass of [`plam`].
fn plam_forward(
    s: &FlexTensor,
    p: &PlamParams<FlexTensor>,
) -> (FlexTensor, Vec<f32>, plam::PlamShape, plam::Saved) {
    let dims = s.shape().as_slice().to_vec();
    let mut y = cpu::zeroed(s.shape().num_elements());
    let (w2, sh, saved) = plam_run(s, p, Some(&mut y));
    (flex(y, dims), w2, sh, saved)
}

/// PLAM's per-pixel gate `z [B, H, W]` alone, for a consumer that applies it itself.
fn plam_gate(s: &FlexTensor, p: &PlamParams<FlexTensor>) -> Vec<f32> {
    plam_run(s, p, None).2.z
}

/// [`plam::plam_forward`] on `s [B, C, H, W]`, writing `y` where given.
fn plam_run(
    s: &FlexTensor,
    p: &PlamParams<FlexTensor>,
    y: Option<&mut [f32]>,
) -> (Vec<f32>, plam::PlamShape, plam::Saved) {
    let [b, c, h, w] = s.shape().dims::<4>();
    let sh = plam::PlamShape { b, c, hw: h * w };
    let w2 = [data(&p.w_avg), data(&p.w_max)].concat();
    let saved = plam::plam_forward(data(s), &w2, plam_mlp(p), sh, y);
    (w2, sh, saved)
}

fn plam_mlp(p: &PlamParams<FlexTensor>) -> plam::Mlp<'_> {
    plam::Mlp {
        l0w: data(&p.l0w),
        l0b: data(&p.l0b),
        l2w: data(&p.l2w),
        l2b: data(&p.l2b),
    }
}

/// Contiguous float32 storage of `t`, owned by the result (copied only where shared).
fn owned_f32(t: FlexTensor) -> FlexTensor {
    let mut t = contiguous_f32(t);
    let _ = t.storage_mut::<f32>();
    t
}

#[allow(clippy::too_many_arguments)]
fn adam_flex(
    param: FlexTensor,
    grad: FlexTensor,
    m1: FlexTensor,
    m2: FlexTensor,
    lr: f64,
    (b1, b2): (f64, f64),
    combined: f64,
    eps_bc: f64,
) -> (FlexTensor, FlexTensor, FlexTensor) {
    let grad = contiguous_f32(grad);
    let (mut p, mut m1, mut m2) = (owned_f32(param), owned_f32(m1), owned_f32(m2));
    let h = cpu::AdamStep {
        lr: lr as f32,
        beta_1: b1 as f32,
        beta_2: b2 as f32,
        combined: combined as f32,
        eps_bc: eps_bc as f32,
    };
    cpu::adam_update(
        p.storage_mut(),
        data(&grad),
        m1.storage_mut(),
        m2.storage_mut(),
        h,
    );
    (p, m1, m2)
}

fn linear_bf16_forward(x: &FlexTensor, w: &FlexTensor) -> FlexTensor {
    let [rows, din] = x.shape().dims::<2>();
    let [dout, wdin] = w.shape().dims::<2>();
    assert_eq!(
        din,
        wdin,
        "linear: input width {din}, weight {:?}",
        w.shape()
    );
    let mut y = cpu::zeroed(rows * dout);
    let (xd, wd) = (data(x), data(w));
    bf16::matmul_bf16(
        (rows, dout, din),
        bf16::Mat {
            data: xd,
            rs: din,
            cs: 1,
        },
        bf16::Mat {
            data: wd,
            rs: 1,
            cs: din,
        },
        &mut y,
    );
    flex(y, vec![rows, dout])
}

impl FastOps for Flex {
    fn fast_linear_bf16(x: FlexTensor, w: FlexTensor) -> FlexTensor {
        linear_bf16_forward(&contiguous_f32(x), &contiguous_f32(w))
    }

    fn fast_attention(
        q: FlexTensor,
        k: FlexTensor,
        v: FlexTensor,
        bias: FlexTensor,
        heads: usize,
    ) -> FlexTensor {
        let [q, k, v, bias] = [q, k, v, bias].map(contiguous_f32);
        let s = attn_shape(&q, &k, &bias, heads);
        let (out, _) = attention::forward(data(&q), data(&k), data(&v), data(&bias), s);
        flex(out, vec![s.b, s.lq, s.d])
    }

    fn fast_linear_thin(x: FlexTensor, w: FlexTensor) -> FlexTensor {
        let (x, w) = (contiguous_f32(x), contiguous_f32(w));
        let [rows, din] = x.shape().dims::<2>();
        let dout = w.shape().dims::<2>()[0];
        let mut y = cpu::zeroed(rows * dout);
        thin::linear(data(&x), rows, din, data(&w), dout, &mut y);
        flex(y, vec![rows, dout])
    }

    fn fast_adam(
        param: FlexTensor,
        grad: FlexTensor,
        moment_1: FlexTensor,
        moment_2: FlexTensor,
        lr: f64,
        betas: (f64, f64),
        combined: f64,
        eps_bc: f64,
    ) -> (FlexTensor, FlexTensor, FlexTensor) {
        adam_flex(param, grad, moment_1, moment_2, lr, betas, combined, eps_bc)
    }

    fn fast_plam(
        s: FlexTensor,
        w_avg: FlexTensor,
        w_max: FlexTensor,
        l0w: FlexTensor,
        l0b: FlexTensor,
        l2w: FlexTensor,
        l2b: FlexTensor,
    ) -> FlexTensor {
        let p = PlamParams {
            w_avg,
            w_max,
            l0w,
            l0b,
            l2w,
            l2b,
        };
        plam_forward(&contiguous_f32(s), &p.map(contiguous_f32)).0
    }

    fn fast_maxpool2(x: FlexTensor) -> FlexTensor {
        maxpool_forward(&contiguous_f32(x)).0
    }

    fn fast_upcat(skip: FlexTensor, x: FlexTensor) -> FlexTensor {
        upcat_forward(&contiguous_f32(skip), &contiguous_f32(x)).0
    }

    fn fast_upcat_conv_scaled(
        skip: FlexTensor,
        x: FlexTensor,
        w_avg: FlexTensor,
        w_max: FlexTensor,
        l0w: FlexTensor,
        l0b: FlexTensor,
        l2w: FlexTensor,
        l2b: FlexTensor,
        weight: FlexTensor,
        bias: FlexTensor,
        scale: FlexTensor,
        relu: bool,
    ) -> FlexTensor {
        let (skip, x) = (contiguous_f32(skip), contiguous_f32(x));
        let p = PlamParams {
            w_avg,
            w_max,
            l0w,
            l0b,
            l2w,
            l2b,
        }
        .map(contiguous_f32);
        let (weight, bias, scale) = (
            contiguous_f32(weight),
            contiguous_f32(bias),
            contiguous_f32(scale),
        );
        let (b, cs, cx, h, w) = upcat_dims(&skip, &x);
        let s = ConvShape::new(b, cs + cx, weight.shape()[0], 2 * h, 2 * w, 3);
        let winograd = match precision() {
            Precision::Fp32 => winograd::applies(&s),
            Precision::Bf16 => bf16::winograd_instead(&s),
        };
        let fused = winograd && weight.shape().dims::<4>() == [s.cout, s.cin, 3, 3];
        if !fused {
            let cat = upcat_forward(&plam_forward(&skip, &p).0, &x).0;
            return conv_forward_scaled(&cat, &weight, &bias, Some(&scale), relu);
        }
        let gate = plam_gate(&skip, &p);
        let mut out = cpu::zeroed(s.b * s.cout * s.hw());
        winograd::conv_forward_upcat(
            (data(&skip), &gate, data(&x)),
            cs,
            data(&weight),
            Some(data(&bias)),
            Some(data(&scale)),
            s,
            relu,
            &mut out,
        );
        flex(out, vec![s.b, s.cout, s.h, s.w])
    }

    fn fast_conv(x: FlexTensor, weight: FlexTensor, bias: FlexTensor, relu: bool) -> FlexTensor {
        let (x, weight, bias) = (
            contiguous_f32(x),
            contiguous_f32(weight),
            contiguous_f32(bias),
        );
        conv_forward(&x, &weight, &bias, relu)
    }

    fn fast_conv_scaled(
        x: FlexTensor,
        weight: FlexTensor,
        bias: FlexTensor,
        scale: FlexTensor,
        relu: bool,
    ) -> FlexTensor {
        let (x, weight, bias, scale) = (
            contiguous_f32(x),
            contiguous_f32(weight),
            contiguous_f32(bias),
            contiguous_f32(scale),
        );
        conv_forward_scaled(&x, &weight, &bias, Some(&scale), relu)
    }

    fn fast_bn_train(
        x: FlexTensor,
        gamma: FlexTensor,
        beta: FlexTensor,
        eps: f64,
        relu: bool,
    ) -> (FlexTensor, FlexTensor) {
        let (x, gamma, beta) = (
            contiguous_f32(x),
            contiguous_f32(gamma),
            contiguous_f32(beta),
        );
        let f = bn_forward(&x, &gamma, &beta, eps, relu);
        let stats = bn_stats(&f.mean, &f.var);
        (f.y, stats)
    }
}

/// `dy`, zero where the ReLU's output `y` is not positive: a new buffer, written by the worker
/// threads (rayon collects an indexed iterator in place), so its pages are not first touched by
/// the calling thread alone.
fn relu_masked(dy: &[f32], y: &[f32]) -> Vec<f32> {
    assert_eq!(dy.len(), y.len(), "relu mask: gradient and output lengths");
    dy.par_iter()
        .zip(y.par_iter())
        .map(|(&d, &v)| if v <= 0.0 { 0.0 } else { d })
        .collect()
}

#[derive(Clone, Debug)]
struct ConvState {
    x: FlexTensor,
    weight: FlexTensor,
    /// The output, kept only when a ReLU was applied (its mask gates the gradient).
    y: Option<FlexTensor>,
    shape: ConvShape,
    /// The forward's precision, so a switch between forward and backward cannot mix them.
    precision: Precision,
}

#[derive(Debug)]
struct ConvBackward;

impl Backward<Flex, 3> for ConvBackward {
    type State = ConvState;

    fn backward(self, ops: Ops<ConvState, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x, node_w, node_b] = ops.parents;
        let st = ops.state;
        let s = st.shape;
        let dy = contiguous_f32(grads.consume::<Flex>(&ops.node));
        let dy: std::borrow::Cow<'_, [f32]> = match &st.y {
            Some(y) => relu_masked(data(&dy), data(y)).into(),
            None => data(&dy).into(),
        };
        if let Some(node) = node_x {
            let mut dx = cpu::zeroed(s.b * s.cin * s.h * s.w);
            match st.precision {
                Precision::Fp32 => cpu::conv_input_grad(&dy, data(&st.weight), s, &mut dx),
                Precision::Bf16 => bf16::conv_input_grad_bf16(&dy, data(&st.weight), s, &mut dx),
            }
            grads.register::<Flex>(node.id, flex(dx, vec![s.b, s.cin, s.h, s.w]));
        }
        if node_w.is_some() || node_b.is_some() {
            let mut dw = cpu::zeroed(s.cout * s.cin * s.k * s.k);
            let mut db = cpu::zeroed(s.cout);
            match st.precision {
                Precision::Fp32 => {
                    cpu::conv_weight_grad(data(&st.x), &dy, s, &mut dw, Some(&mut db))
                }
                Precision::Bf16 => {
                    bf16::conv_weight_grad_bf16(data(&st.x), &dy, s, &mut dw, Some(&mut db))
                }
            }
            if let Some(node) = node_w {
                grads.register::<Flex>(node.id, flex(dw, vec![s.cout, s.cin, s.k, s.k]));
            }
            if let Some(node) = node_b {
                grads.register::<Flex>(node.id, flex(db, vec![s.cout]));
            }
        }
    }
}

#[derive(Clone, Debug)]
struct BnState {
    x: FlexTensor,
    y: Option<FlexTensor>,
    gamma: FlexTensor,
    mean: Arc<Vec<f64>>,
    var: Arc<Vec<f64>>,
    eps: f64,
}

#[derive(Debug)]
struct BnBackward;

impl Backward<Flex, 3> for BnBackward {
    type State = BnState;

    fn backward(self, ops: Ops<BnState, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x, node_g, node_b] = ops.parents;
        let st = ops.state;
        let (b, c, n) = bn_dims(&st.x);
        let dy = contiguous_f32(grads.consume::<Flex>(&ops.node));
        let (mut dx, mut dg, mut db) = (cpu::zeroed(b * c * n), cpu::zeroed(c), cpu::zeroed(c));
        let relu = st.y.is_some();
        let y = st.y.as_ref().map_or(&[][..], data);
        cpu::bn_train_backward(
            data(&dy),
            data(&st.x),
            y,
            data(&st.gamma),
            &st.mean,
            &st.var,
            b,
            c,
            n,
            st.eps,
            relu,
            &mut dx,
            &mut dg,
            &mut db,
        );
        if let Some(node) = node_x {
            grads.register::<Flex>(node.id, flex(dx, st.x.shape().as_slice().to_vec()));
        }
        if let Some(node) = node_g {
            grads.register::<Flex>(node.id, flex(dg, vec![c]));
        }
        if let Some(node) = node_b {
            grads.register::<Flex>(node.id, flex(db, vec![c]));
        }
    }
}

#[derive(Clone, Debug)]
struct PoolState {
    /// `[B, C, H, W]` of the input.
    dims: [usize; 4],
    idx: Arc<Vec<u8>>,
}

#[derive(Debug)]
struct PoolBackward;

impl Backward<Flex, 1> for PoolBackward {
    type State = PoolState;

    fn backward(self, ops: Ops<PoolState, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x] = ops.parents;
        let dy = contiguous_f32(grads.consume::<Flex>(&ops.node));
        if let Some(node) = node_x {
            let [b, c, h, w] = ops.state.dims;
            let mut dx = cpu::zeroed(b * c * h * w);
            cpu::maxpool2_backward(data(&dy), &ops.state.idx, b * c, h, w, &mut dx);
            grads.register::<Flex>(node.id, flex(dx, vec![b, c, h, w]));
        }
    }
}

#[derive(Debug)]
struct UpCatBackward;

impl Backward<Flex, 2> for UpCatBackward {
    type State = cpu::UpCat;

    fn backward(self, ops: Ops<cpu::UpCat, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_skip, node_x] = ops.parents;
        let dy = contiguous_f32(grads.consume::<Flex>(&ops.node));
        let d @ (b, cs, cx, h, w) = ops.state;
        let mut dskip = node_skip.as_ref().map(|_| cpu::zeroed(b * cs * 4 * h * w));
        let mut dx = node_x.as_ref().map(|_| cpu::zeroed(b * cx * h * w));
        cpu::upcat_backward(data(&dy), d, dskip.as_deref_mut(), dx.as_deref_mut());
        if let (Some(node), Some(g)) = (node_skip, dskip) {
            grads.register::<Flex>(node.id, flex(g, vec![b, cs, 2 * h, 2 * w]));
        }
        if let (Some(node), Some(g)) = (node_x, dx) {
            grads.register::<Flex>(node.id, flex(g, vec![b, cx, h, w]));
        }
    }
}

#[derive(Clone, Debug)]
struct PlamState {
    s: FlexTensor,
    w2: Arc<Vec<f32>>,
    params: PlamParams<FlexTensor>,
    shape: plam::PlamShape,
    saved: Arc<plam::Saved>,
}

#[derive(Debug)]
struct PlamBackward;

impl Backward<Flex, 7> for PlamBackward {
    type State = PlamState;

    fn backward(self, ops: Ops<PlamState, 7>, grads: &mut Gradients, _: &mut Checkpointer) {
        let dy = contiguous_f32(grads.consume::<Flex>(&ops.node));
        let st = ops.state;
        let sh = st.shape;
        let c = sh.c;
        let mut ds = cpu::zeroed(sh.b * c * sh.hw);
        let mut dw2 = cpu::zeroed(2 * c * c);
        let g = plam::plam_backward(
            data(&dy),
            data(&st.s),
            &st.w2,
            plam_mlp(&st.params),
            &st.saved,
            sh,
            &mut ds,
            &mut dw2,
        );
        let dw_max = dw2.split_off(c * c);
        let outs = [
            (ds, st.s.shape().as_slice().to_vec()),
            (dw2, vec![c, c, 1, 1]),
            (dw_max, vec![c, c, 1, 1]),
            (g.l0w, vec![plam::HIDDEN, 3]),
            (g.l0b, vec![plam::HIDDEN]),
            (g.l2w, vec![1, plam::HIDDEN]),
            (g.l2b, vec![1]),
        ];
        for (node, (values, shape)) in ops.parents.into_iter().zip(outs) {
            if let Some(node) = node {
                grads.register::<Flex>(node.id, flex(values, shape));
            }
        }
    }
}

#[derive(Clone, Debug)]
struct LinearState {
    x: FlexTensor,
    w: FlexTensor,
}

#[derive(Debug)]
struct LinearBackward;

impl Backward<Flex, 2> for LinearBackward {
    type State = LinearState;

    fn backward(self, ops: Ops<LinearState, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x, node_w] = ops.parents;
        let dy = contiguous_f32(grads.consume::<Flex>(&ops.node));
        let LinearState { x, w } = ops.state;
        let [rows, din] = x.shape().dims::<2>();
        let dout = w.shape().dims::<2>()[0];
        let (dyd, xd, wd) = (data(&dy), data(&x), data(&w));
        if let Some(node) = node_x {
            let mut dx = cpu::zeroed(rows * din);
            bf16::matmul_bf16(
                (rows, din, dout),
                bf16::Mat {
                    data: dyd,
                    rs: dout,
                    cs: 1,
                },
                bf16::Mat {
                    data: wd,
                    rs: din,
                    cs: 1,
                },
                &mut dx,
            );
            grads.register::<Flex>(node.id, flex(dx, vec![rows, din]));
        }
        if let Some(node) = node_w {
            let mut dw = cpu::zeroed(dout * din);
            bf16::matmul_bf16(
                (dout, din, rows),
                bf16::Mat {
                    data: dyd,
                    rs: 1,
                    cs: dout,
                },
                bf16::Mat {
                    data: xd,
                    rs: din,
                    cs: 1,
                },
                &mut dw,
            );
            grads.register::<Flex>(node.id, flex(dw, vec![dout, din]));
        }
    }
}

/// The sizes of an attention call on `q [B, Lq, D]`, `k [B, Lk, D]`, `bias [Bb, Lqb, Lk]`.
fn attn_shape(q: &FlexTensor, k: &FlexTensor, bias: &FlexTensor, heads: usize) -> AttnShape {
    let [b, lq, d] = q.shape().dims::<3>();
    let lk = k.shape().dims::<3>()[1];
    let [bb, lqb, lkb] = bias.shape().dims::<3>();
    assert!(
        (bb == 1 || bb == b) && (lqb == 1 || lqb == lq) && lkb == lk,
        "attention: bias {:?} for {b} images, {lq} queries and {lk} keys",
        [bb, lqb, lkb]
    );
    AttnShape {
        b,
        lq,
        lk,
        d,
        heads,
        bias_per_image: bb != 1,
        bias_per_query: lqb != 1,
    }
}

#[derive(Clone, Debug)]
struct AttnState {
    q: FlexTensor,
    k: FlexTensor,
    v: FlexTensor,
    /// The forward's probabilities `[B, heads, Lq, Lk]`.
    p: Arc<Vec<f32>>,
    shape: AttnShape,
}

#[derive(Debug)]
struct AttnBackward;

impl Backward<Flex, 4> for AttnBackward {
    type State = AttnState;

    fn backward(self, ops: Ops<AttnState, 4>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_q, node_k, node_v, node_bias] = ops.parents;
        let dy = contiguous_f32(grads.consume::<Flex>(&ops.node));
        let st = ops.state;
        let s = st.shape;
        let [dq, dk, dv, dbias] = attention::backward(
            data(&st.q),
            data(&st.k),
            data(&st.v),
            &st.p,
            data(&dy),
            s.bias_len(),
            node_bias.is_some(),
            s,
        );
        let bias_dims = vec![
            if s.bias_per_image { s.b } else { 1 },
            if s.bias_per_query { s.lq } else { 1 },
            s.lk,
        ];
        let outs = [
            (dq, vec![s.b, s.lq, s.d]),
            (dk, vec![s.b, s.lk, s.d]),
            (dv, vec![s.b, s.lk, s.d]),
            (dbias, bias_dims),
        ];
        for (node, (values, shape)) in [node_q, node_k, node_v, node_bias].into_iter().zip(outs) {
            if let Some(node) = node {
                grads.register::<Flex>(node.id, flex(values, shape));
            }
        }
    }
}

impl<C: CheckpointStrategy> FastOps for Autodiff<Flex, C> {
    fn fast_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        heads: usize,
    ) -> FloatTensor<Self> {
        let [qp, kp, vp, bp] = [&q, &k, &v, &bias].map(|t| contiguous_f32(t.primitive().clone()));
        let s = attn_shape(&qp, &kp, &bp, heads);
        let (out, p) = attention::forward(data(&qp), data(&kp), data(&vp), data(&bp), s);
        let y = flex(out, vec![s.b, s.lq, s.d]);
        match AttnBackward
            .prepare::<C>([q.node(), k.node(), v.node(), bias.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let state = AttnState {
                    q: qp,
                    k: kp,
                    v: vp,
                    p: Arc::new(p),
                    shape: s,
                };
                prep.finish(state, y)
            }
            OpsKind::UnTracked(prep) => prep.finish(y),
        }
    }

    /// The thin kernel on the inner tensors where neither operand is tracked (the frozen text
    /// tower inside a training step: burn's matmul there repacked 37 M weights a step), burn's
    /// tracked matmul otherwise.
    fn fast_linear_thin(x: FloatTensor<Self>, w: FloatTensor<Self>) -> FloatTensor<Self> {
        use burn::backend::ops::FloatTensorOps;
        if x.is_tracked() || w.is_tracked() {
            return Self::float_matmul(x, Self::float_transpose(w));
        }
        let y = Flex::fast_linear_thin(x.primitive().clone(), w.primitive().clone());
        FloatTensor::<Self>::new(y)
    }

    fn fast_linear_bf16(x: FloatTensor<Self>, w: FloatTensor<Self>) -> FloatTensor<Self> {
        let xp = contiguous_f32(x.primitive().clone());
        let wp = contiguous_f32(w.primitive().clone());
        let y = linear_bf16_forward(&xp, &wp);
        match LinearBackward
            .prepare::<C>([x.node(), w.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish(LinearState { x: xp, w: wp }, y),
            OpsKind::UnTracked(prep) => prep.finish(y),
        }
    }

    fn fast_adam(
        param: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        moment_1: FloatTensor<Self>,
        moment_2: FloatTensor<Self>,
        lr: f64,
        betas: (f64, f64),
        combined: f64,
        eps_bc: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        // An optimiser step is never differentiated: the results are untracked.
        let (p, m1, m2) = adam_flex(
            param.primitive().clone(),
            grad.primitive().clone(),
            moment_1.primitive().clone(),
            moment_2.primitive().clone(),
            lr,
            betas,
            combined,
            eps_bc,
        );
        (
            FloatTensor::<Self>::new(p),
            FloatTensor::<Self>::new(m1),
            FloatTensor::<Self>::new(m2),
        )
    }

    fn fast_plam(
        s: FloatTensor<Self>,
        w_avg: FloatTensor<Self>,
        w_max: FloatTensor<Self>,
        l0w: FloatTensor<Self>,
        l0b: FloatTensor<Self>,
        l2w: FloatTensor<Self>,
        l2b: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let p = PlamParams {
            w_avg,
            w_max,
            l0w,
            l0b,
            l2w,
            l2b,
        };
        let sp = contiguous_f32(s.primitive().clone());
        let params = p.clone().map(|t| contiguous_f32(t.primitive().clone()));
        let (y, w2, shape, saved) = plam_forward(&sp, &params);
        let parents = [
            s.node(),
            p.w_avg.node(),
            p.w_max.node(),
            p.l0w.node(),
            p.l0b.node(),
            p.l2w.node(),
            p.l2b.node(),
        ];
        match PlamBackward
            .prepare::<C>(parents)
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish(
                PlamState {
                    s: sp,
                    w2: Arc::new(w2),
                    params,
                    shape,
                    saved: Arc::new(saved),
                },
                y,
            ),
            OpsKind::UnTracked(prep) => prep.finish(y),
        }
    }

    fn fast_maxpool2(x: FloatTensor<Self>) -> FloatTensor<Self> {
        let xp = contiguous_f32(x.primitive().clone());
        let dims = xp.shape().dims::<4>();
        let (y, idx) = maxpool_forward(&xp);
        match PoolBackward
            .prepare::<C>([x.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish(
                PoolState {
                    dims,
                    idx: Arc::new(idx),
                },
                y,
            ),
            OpsKind::UnTracked(prep) => prep.finish(y),
        }
    }

    /// Tracked by autodiff as `fast_conv(x, weight · scale, bias)`, so gradients stay right.
    fn fast_conv_scaled(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        scale: FloatTensor<Self>,
        relu: bool,
    ) -> FloatTensor<Self> {
        use burn::backend::ops::FloatTensorOps;
        let c = scale.shape().num_elements();
        let scale = Self::float_reshape(scale, burn::tensor::Shape::new([c, 1, 1, 1]));
        Self::fast_conv(x, Self::float_mul(weight, scale), bias, relu)
    }

    fn fast_upcat(skip: FloatTensor<Self>, x: FloatTensor<Self>) -> FloatTensor<Self> {
        let sp = contiguous_f32(skip.primitive().clone());
        let xp = contiguous_f32(x.primitive().clone());
        let (y, dims) = upcat_forward(&sp, &xp);
        match UpCatBackward
            .prepare::<C>([skip.node(), x.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish(dims, y),
            OpsKind::UnTracked(prep) => prep.finish(y),
        }
    }

    /// The three tracked ops in turn, so gradients flow as without the fusion.
    fn fast_upcat_conv_scaled(
        skip: FloatTensor<Self>,
        x: FloatTensor<Self>,
        w_avg: FloatTensor<Self>,
        w_max: FloatTensor<Self>,
        l0w: FloatTensor<Self>,
        l0b: FloatTensor<Self>,
        l2w: FloatTensor<Self>,
        l2b: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        scale: FloatTensor<Self>,
        relu: bool,
    ) -> FloatTensor<Self> {
        let sa = Self::fast_plam(skip, w_avg, w_max, l0w, l0b, l2w, l2b);
        Self::fast_conv_scaled(Self::fast_upcat(sa, x), weight, bias, scale, relu)
    }

    fn fast_conv(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        relu: bool,
    ) -> FloatTensor<Self> {
        let xp = contiguous_f32(x.primitive().clone());
        let wp = contiguous_f32(weight.primitive().clone());
        let bp = contiguous_f32(bias.primitive().clone());
        let y = conv_forward(&xp, &wp, &bp, relu);
        match ConvBackward
            .prepare::<C>([x.node(), weight.node(), bias.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let shape = conv_shape(&xp, &wp);
                let state = ConvState {
                    x: xp,
                    weight: wp,
                    y: relu.then(|| y.clone()),
                    shape,
                    precision: precision(),
                };
                prep.finish(state, y)
            }
            OpsKind::UnTracked(prep) => prep.finish(y),
        }
    }

    fn fast_bn_train(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        eps: f64,
        relu: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let xp = contiguous_f32(x.primitive().clone());
        let gp = contiguous_f32(gamma.primitive().clone());
        let bp = contiguous_f32(beta.primitive().clone());
        let f = bn_forward(&xp, &gp, &bp, eps, relu);
        let stats = FloatTensor::<Self>::new(bn_stats(&f.mean, &f.var));
        let y = match BnBackward
            .prepare::<C>([x.node(), gamma.node(), beta.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let state = BnState {
                    x: xp,
                    y: relu.then(|| f.y.clone()),
                    gamma: gp,
                    mean: Arc::new(f.mean),
                    var: Arc::new(f.var),
                    eps,
                };
                prep.finish(state, f.y)
            }
            OpsKind::UnTracked(prep) => prep.finish(f.y),
        };
        (y, stats)
    }
}

/// Multi-head attention through our kernel: see [`FastOps::fast_attention`].
pub fn attention(
    q: Tensor<3>,
    k: Tensor<3>,
    v: Tensor<3>,
    bias: Tensor<3>,
    heads: usize,
) -> Tensor<3> {
    Tensor::from_dispatch(<burn::backend::Dispatch as FastOps>::fast_attention(
        q.into_dispatch(),
        k.into_dispatch(),
        v.into_dispatch(),
        bias.into_dispatch(),
        heads,
    ))
}

/// Same-size convolution with bias through our kernels (`relu` fuses a ReLU).
pub fn conv(x: Tensor<4>, weight: Tensor<4>, bias: Tensor<1>, relu: bool) -> Tensor<4> {
    let out = <burn::backend::Dispatch as FastOps>::fast_conv(
        x.into_dispatch(),
        weight.into_dispatch(),
        bias.into_dispatch(),
        relu,
    );
    Tensor::from_dispatch(out)
}

/// [`conv`] with each output channel multiplied by `scale` before the bias.
pub fn conv_scaled(
    x: Tensor<4>,
    weight: Tensor<4>,
    bias: Tensor<1>,
    scale: Tensor<1>,
    relu: bool,
) -> Tensor<4> {
    Tensor::from_dispatch(<burn::backend::Dispatch as FastOps>::fast_conv_scaled(
        x.into_dispatch(),
        weight.into_dispatch(),
        bias.into_dispatch(),
        scale.into_dispatch(),
        relu,
    ))
}

/// 2×2 max pooling with stride 2 through our kernels.
pub fn maxpool2(x: Tensor<4>) -> Tensor<4> {
    Tensor::from_dispatch(<burn::backend::Dispatch as FastOps>::fast_maxpool2(
        x.into_dispatch(),
    ))
}

/// `cat([skip, upsample_nearest2(x)], 1)` in one pass: `skip [B, Cs, 2H, 2W]`, `x [B, Cx, H, W]`.
pub fn upsample_cat(skip: Tensor<4>, x: Tensor<4>) -> Tensor<4> {
    Tensor::from_dispatch(<burn::backend::Dispatch as FastOps>::fast_upcat(
        skip.into_dispatch(),
        x.into_dispatch(),
    ))
}

/// `x [rows, din] · wᵀ` (`w: [dout, din]`) for few rows, streaming the weight ([`thin`]).
pub fn linear_thin(x: Tensor<2>, w: Tensor<2>) -> Tensor<2> {
    Tensor::from_dispatch(<burn::backend::Dispatch as FastOps>::fast_linear_thin(
        x.into_dispatch(),
        w.into_dispatch(),
    ))
}

/// `x [rows, din] · wᵀ` (`w: [dout, din]`) with bf16 operands and f32 accumulation.
pub fn linear_bf16(x: Tensor<2>, w: Tensor<2>) -> Tensor<2> {
    Tensor::from_dispatch(<burn::backend::Dispatch as FastOps>::fast_linear_bf16(
        x.into_dispatch(),
        w.into_dispatch(),
    ))
}

/// One fused Adam update through our kernels: the new parameter and moments.
#[allow(clippy::too_many_arguments)]
pub fn adam<const D: usize>(
    param: Tensor<D>,
    grad: Tensor<D>,
    moments: (Tensor<D>, Tensor<D>),
    lr: f64,
    betas: (f64, f64),
    combined: f64,
    eps_bc: f64,
) -> (Tensor<D>, Tensor<D>, Tensor<D>) {
    let (p, m1, m2) = <burn::backend::Dispatch as FastOps>::fast_adam(
        param.into_dispatch(),
        grad.into_dispatch(),
        moments.0.into_dispatch(),
        moments.1.into_dispatch(),
        lr,
        betas,
        combined,
        eps_bc,
    );
    (
        Tensor::from_dispatch(p),
        Tensor::from_dispatch(m1),
        Tensor::from_dispatch(m2),
    )
}

/// PLAM's weights as [`plam`] and [`upcat_conv_scaled`] take them: the 1×1 weights `[C, C, 1, 1]`
/// of the mean and max paths, then the 3 → 6 → 1 MLP's `(weight, bias)` pairs.
pub type PlamWeights = (
    [Tensor<4>; 2],
    (Tensor<2>, Tensor<1>),
    (Tensor<2>, Tensor<1>),
);

/// The decoder's pixel-level attention through our fused kernel ([`plam`]): `s [B, C, H, W]`,
/// the 1×1 weights `[C, C, 1, 1]` of its mean and max paths, and its MLP's `Linear` weights and
/// biases (`[6, 3]`, `[6]`, `[1, 6]`, `[1]`).
pub fn plam(s: Tensor<4>, weights: PlamWeights) -> Tensor<4> {
    let ([w_avg, w_max], (l0w, l0b), (l2w, l2b)) = weights;
    Tensor::from_dispatch(<burn::backend::Dispatch as FastOps>::fast_plam(
        s.into_dispatch(),
        w_avg.into_dispatch(),
        w_max.into_dispatch(),
        l0w.into_dispatch(),
        l0b.into_dispatch(),
        l2w.into_dispatch(),
        l2b.into_dispatch(),
    ))
}

/// A decoder block's first convolution (inference): `conv_scaled(upsample_cat(plam(skip, …), x),
/// weight, bias, scale, relu)`, without writing the two intermediate tensors where the Winograd
/// kernel runs it ([`FastOps::fast_upcat_conv_scaled`]).
pub fn upcat_conv_scaled(
    skip: Tensor<4>,
    x: Tensor<4>,
    plam: PlamWeights,
    (weight, bias, scale): (Tensor<4>, Tensor<1>, Tensor<1>),
    relu: bool,
) -> Tensor<4> {
    let ([w_avg, w_max], (l0w, l0b), (l2w, l2b)) = plam;
    Tensor::from_dispatch(
        <burn::backend::Dispatch as FastOps>::fast_upcat_conv_scaled(
            skip.into_dispatch(),
            x.into_dispatch(),
            w_avg.into_dispatch(),
            w_max.into_dispatch(),
            l0w.into_dispatch(),
            l0b.into_dispatch(),
            l2w.into_dispatch(),
            l2b.into_dispatch(),
            weight.into_dispatch(),
            bias.into_dispatch(),
            scale.into_dispatch(),
            relu,
        ),
    )
}

/// Training BatchNorm (+ ReLU) through our kernels: the output and the `[2, C]` batch statistics
/// (mean, biased variance), detached.
pub fn bn_train<const D: usize>(
    x: Tensor<D>,
    gamma: Tensor<1>,
    beta: Tensor<1>,
    eps: f64,
    relu: bool,
) -> (Tensor<D>, Tensor<2>) {
    let (y, stats) = <burn::backend::Dispatch as FastOps>::fast_bn_train(
        x.into_dispatch(),
        gamma.into_dispatch(),
        beta.into_dispatch(),
        eps,
        relu,
    );
    (Tensor::from_dispatch(y), Tensor::from_dispatch(stats))
}

/// Helpers shared by the kernel tests of this module, `cpu` and `bf16`.
#[cfg(test)]
pub(crate) mod test_util {
    use crate::rng::SplitMix64;

    /// Deterministic values in [-1, 1), so failures reproduce.
    pub fn rand_vec(len: usize, seed: u64) -> Vec<f32> {
        let mut rng = SplitMix64::new(seed);
        (0..len)
            .map(|_| (rng.unit_f64() * 2.0 - 1.0) as f32)
            .collect()
    }

    /// Max abs difference over the reference's max abs.
    pub fn rel_err<T: Copy + Into<f64>>(got: &[f32], want: &[T]) -> f64 {
        assert_eq!(got.len(), want.len());
        let scale = want.iter().fold(0.0f64, |m, &v| m.max(v.into().abs()));
        let diff = got
            .iter()
            .zip(want)
            .fold(0.0f64, |m, (&g, &w)| m.max((g as f64 - w.into()).abs()));
        diff / scale.max(f64::MIN_POSITIVE)
    }

    /// Runs `f` inside rayon pools of one and of three threads, so single-threaded and
    /// oversubscribed schedules both meet the reference.
    pub fn in_pools(f: impl Fn() + Send + Sync) {
        for threads in [1, 3] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .expect("test thread pool builds");
            pool.install(&f);
        }
    }
}

#[cfg(test)]
mod tests;
