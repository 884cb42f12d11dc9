//! The `gpu` build on whatever Vulkan device the machine has (in CI, Mesa's software lavapipe):
//! burn's ops and a small model's forward, backward and Adam step there agree with the CPU.
//!
//! Without a Vulkan device the tests say so and pass, unless `RECLMIS_REQUIRE_GPU` is set (CI
//! sets it where it installed one). The parity fixtures run on the GPU with
//! `RECLMIS_TEST_DEVICE=gpu` (tests/parity.rs; docs/gpu.md).
#![cfg(feature = "gpu")]

use burn::module::{Module, Param};
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::{Device, Tensor, TensorData};
use reclmis::data::dataset::Dataset;
use reclmis::data::synth::SynthConfig;
use reclmis::device::{DeviceChoice, DeviceError, describe, gpus, open};
use reclmis::model::nn::Conv2d;
use reclmis::model::weights::{named_grads, named_param_grads, named_tensors};
use reclmis::model::{Branches, ModelConfig, RecLMIS, TokenBatch, to_vec};
use reclmis::train::{TrainConfig, Trainer};

/// The first Vulkan device, or `None` (and a note) where there is none and none is required.
fn gpu() -> Option<Device> {
    match open(DeviceChoice::Gpu(0)) {
        Ok(d) => {
            eprintln!("on {}", describe(&d));
            Some(d)
        }
        Err(e @ DeviceError::NoAdapter(_)) if std::env::var_os("RECLMIS_REQUIRE_GPU").is_none() => {
            eprintln!("skipped: {e}");
            None
        }
        Err(e) => panic!("{e}"),
    }
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).fold(0.0, |m, (x, y)| m.max((x - y).abs()))
}

fn ramp(n: usize, k: usize) -> Vec<f32> {
    (0..n).map(|i| ((i * k) % 97) as f32 / 97.0 - 0.5).collect()
}

#[test]
fn a_device_past_the_last_is_refused_with_the_count() {
    let count = gpus().len();
    let e = open(DeviceChoice::Gpu(count)).unwrap_err();
    if count == 0 {
        assert!(matches!(e, DeviceError::NoAdapter(_)), "{e}");
    } else {
        assert!(e.to_string().contains(&format!("only {count}")), "{e}");
    }
}

#[test]
fn matmul_conv_and_softmax_match_the_cpu() {
    let Some(gpu) = gpu() else { return };
    let cpu = Device::flex();
    let run = |d: &Device| {
        let a = Tensor::<2>::from_data(TensorData::new(ramp(64 * 96, 7), [64, 96]), d);
        let b = Tensor::<2>::from_data(TensorData::new(ramp(96 * 32, 11), [96, 32]), d);
        let x = Tensor::<4>::from_data(
            TensorData::new(ramp(2 * 4 * 16 * 16, 13), [2, 4, 16, 16]),
            d,
        );
        let w = Tensor::<4>::from_data(TensorData::new(ramp(8 * 4 * 3 * 3, 17), [8, 4, 3, 3]), d);
        let conv = burn::tensor::module::conv2d(
            x,
            w,
            None,
            burn::tensor::ops::ConvOptions::new([1, 1], [1, 1], [1, 1], 1),
        );
        let mm = a.matmul(b);
        let sm = burn::tensor::activation::softmax(mm.clone(), 1);
        (to_vec(&mm), to_vec(&conv), to_vec(&sm))
    };
    let (c, g) = (run(&cpu), run(&gpu));
    for (name, a, b) in [
        ("matmul", &c.0, &g.0),
        ("conv2d", &c.1, &g.1),
        ("softmax", &c.2, &g.2),
    ] {
        let d = max_abs_diff(a, b);
        eprintln!("{name}: max abs diff {d:.2e}");
        assert!(d < 1e-4, "{name}: {d}");
    }
}

/// Gradients of one 3×3 convolution (padding 1) with respect to its input, weight and bias,
/// and of a mean/variance normalisation after it, as training-mode BatchNorm computes it.
fn conv_grads(d: &Device, normalise: bool) -> Vec<Vec<f32>> {
    let d = d.clone().autodiff();
    let x = Tensor::<4>::from_data(TensorData::new(ramp(2 * 4 * 8 * 8, 13), [2, 4, 8, 8]), &d)
        .require_grad();
    let w = Tensor::<4>::from_data(TensorData::new(ramp(6 * 4 * 3 * 3, 17), [6, 4, 3, 3]), &d)
        .require_grad();
    let b = Tensor::<1>::from_data(TensorData::new(ramp(6, 5), [6]), &d).require_grad();
    let y = burn::tensor::module::conv2d(
        x.clone(),
        w.clone(),
        Some(b.clone()),
        burn::tensor::ops::ConvOptions::new([1, 1], [1, 1], [1, 1], 1),
    );
    let y = if normalise {
        // In float32: in float64 (cast there and back) the GPU's input and weight gradients
        // are off by most of their size, which is why the model's BatchNorm keeps float64 to
        // the CPU.
        let mean = y.clone().mean_dims(&[0, 2, 3]);
        let centred = y - mean;
        let var = centred.clone().powi_scalar(2).mean_dims(&[0, 2, 3]);
        centred / (var + 1e-5).sqrt()
    } else {
        y
    };
    let target = Tensor::<4>::from_data(TensorData::new(ramp(2 * 6 * 8 * 8, 7), [2, 6, 8, 8]), &d);
    let grads = (y * target).sum().backward();
    vec![
        to_vec(&x.grad(&grads).unwrap()),
        to_vec(&w.grad(&grads).unwrap()),
        to_vec(&b.grad(&grads).unwrap()),
    ]
}

#[test]
fn conv_backward_matches_the_cpu() {
    let Some(gpu) = gpu() else { return };
    for normalise in [false, true] {
        let (c, g) = (
            conv_grads(&Device::flex(), normalise),
            conv_grads(&gpu, normalise),
        );
        for (name, a, b) in [
            ("input", &c[0], &g[0]),
            ("weight", &c[1], &g[1]),
            ("bias", &c[2], &g[2]),
        ] {
            let d = max_abs_diff(a, b);
            eprintln!("conv (normalised: {normalise}) d{name}: max abs diff {d:.2e}");
            assert!(d < 1e-4, "d{name} (normalised: {normalise}) differs by {d}");
        }
    }
}

/// Input and weight gradients of the model's convolution (`nn::Conv2d::forward`) over a full-size
/// image: on the GPU it trains through an im2col product, because burn's own wgpu convolution
/// drops part of the weight gradient's sum past about 2·10⁴ pixels (printed for the record).
fn full_size_conv_grads(
    d: &Device,
    cin: usize,
    cout: usize,
    k: usize,
    burns: bool,
) -> [Vec<f32>; 3] {
    let d = d.clone().autodiff();
    let s = 224;
    let x = Tensor::<4>::from_data(TensorData::new(ramp(cin * s * s, 13), [1, cin, s, s]), &d)
        .require_grad();
    let conv = Conv2d {
        weight: Param::from_tensor(Tensor::from_data(
            TensorData::new(ramp(cout * cin * k * k, 17), [cout, cin, k, k]),
            &d,
        )),
        bias: Some(Param::from_tensor(Tensor::from_data(
            TensorData::new(ramp(cout, 5), [cout]),
            &d,
        ))),
    };
    let y = if burns {
        conv.forward_burn(x.clone())
    } else {
        conv.forward(x.clone())
    };
    let target =
        Tensor::<4>::from_data(TensorData::new(ramp(cout * s * s, 7), [1, cout, s, s]), &d);
    let grads = (y * target).sum().backward();
    let grad = |p: &Param<Tensor<4>>| to_vec(&p.val().grad(&grads).unwrap());
    [
        to_vec(&x.grad(&grads).unwrap()),
        grad(&conv.weight),
        to_vec(&conv.bias.as_ref().unwrap().val().grad(&grads).unwrap()),
    ]
}

#[test]
fn full_size_convolutions_get_their_whole_weight_gradient() {
    let Some(gpu) = gpu() else { return };
    let rel =
        |a: &[f32], b: &[f32]| max_abs_diff(a, b) / a.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    // The first conv of the encoder, the 1×1 output conv of a 224 px model, and a conv as wide as
    // the paper model's last up block, whose patches take four bands of rows.
    for (cin, cout, k) in [(3, 8, 3), (16, 1, 1), (128, 2, 3)] {
        let c = full_size_conv_grads(&Device::flex(), cin, cout, k, false);
        let g = full_size_conv_grads(&gpu, cin, cout, k, false);
        let burns = full_size_conv_grads(&gpu, cin, cout, k, true);
        eprintln!(
            "{cin}->{cout} k{k} at 224 px: dx {:.1e}, dw {:.1e}, db {:.1e} (burn's own conv: dw {:.1e})",
            rel(&c[0], &g[0]),
            rel(&c[1], &g[1]),
            rel(&c[2], &g[2]),
            rel(&c[1], &burns[1]),
        );
        for (name, i) in [("dx", 0), ("dw", 1), ("db", 2)] {
            let r = rel(&c[i], &g[i]);
            assert!(
                r < 1e-4,
                "{cin}->{cout} k{k}: {name} differs by {r:e} of its max"
            );
        }
    }
}

const LR: f64 = 1e-3;

/// Tensors on the host under their state-dict keys.
type Named = Vec<(String, Vec<f32>)>;

fn small_config() -> ModelConfig {
    let mut cfg = ModelConfig::qata();
    cfg.image_size = 32;
    cfg.base_channels = 8;
    cfg.rec_layers = 2;
    // Dropout draws from each device's own generator; without it both run the same arithmetic.
    cfg.dropout = 0.0;
    cfg.head_dropout = 0.0;
    cfg.with_builtin_text(1)
}

/// Probabilities of an eval forward, the gradients of a training step, and the weights after
/// one Adam step, from the same initial weights.
fn step(device: &Device) -> (Vec<f32>, Named, Named) {
    let cfg = small_config();
    let device = device.clone().autodiff();
    let model = RecLMIS::new(&cfg, 3, &device);
    let (b, s) = (2, cfg.image_size);
    let images = || {
        Tensor::<4>::from_data(
            TensorData::new(ramp(b * 3 * s * s, 5), [b, 3, s, s]),
            &device,
        )
    };
    let rows = vec![vec![49406, 320, 1125, 49407], vec![49406, 530, 49407, 0]];
    let tokens = TokenBatch::new(&rows);
    let target: Vec<f32> = (0..b * s * s)
        .map(|i| ((i % s) > s / 2) as u8 as f32)
        .collect();
    let target = Tensor::<3>::from_data(TensorData::new(target, [b, s, s]), &device);

    let eval = model.valid();
    let tfc = eval.encode_text(&tokens, false);
    let probs = to_vec(
        &eval
            .forward(images(), tfc, &tokens, Branches::Segment, false)
            .probs,
    );

    let tfc = model.encode_text(&tokens, true);
    let out = model.forward(images(), tfc, &tokens, Branches::Aux { seed: 1 }, true);
    let grads = model.losses(&out, target).total.backward();
    let named = named_grads(&model, &grads)
        .into_iter()
        .map(|(k, t)| (k, t.data))
        .collect();
    let gp = GradientsParams::from_grads(grads, &model);
    let mut optim = AdamConfig::new().with_epsilon(1e-8).init();
    let model = optim.step(LR, model, gp);
    let after = named_tensors(&model)
        .into_iter()
        .map(|(k, t)| (k, t.data))
        .collect();
    (probs, named, after)
}

/// The largest difference between two sets of named tensors, relative to the tensor's largest
/// magnitude, and where it is. A tensor that is zero in exact arithmetic (a conv bias before a
/// training-mode BatchNorm, the last bias before a softmax) is rounding noise on both devices:
/// only its size is checked. burn's generic BatchNorm backward, which the GPU runs, leaves more
/// of it (~4e-5 here) than our fused one.
fn worst_relative(c: &Named, g: &Named) -> (f32, String) {
    assert_eq!(c.len(), g.len());
    c.iter()
        .zip(g)
        .filter_map(|((kc, vc), (kg, vg))| {
            assert_eq!(kc, kg);
            let scale = |v: &[f32]| v.iter().fold(0.0f32, |m, x| m.max(x.abs()));
            if scale(vc) < 1e-6 {
                assert!(
                    scale(vg) < 1e-4,
                    "{kc}: ~0 on the CPU, {} on the GPU",
                    scale(vg)
                );
                return None;
            }
            Some((max_abs_diff(vc, vg) / scale(vc), kc.clone()))
        })
        .fold(
            (0.0f32, String::new()),
            |m, x| if x.0 > m.0 { x } else { m },
        )
}

#[test]
fn a_small_model_trains_alike_on_both() {
    let Some(gpu) = gpu() else { return };
    let (cp, cg, ca) = step(&Device::flex());
    let (gp, gg, ga) = step(&gpu);
    let d = max_abs_diff(&cp, &gp);
    eprintln!("probs: max abs diff {d:.2e}");
    assert!(d < 1e-4, "probs differ by {d}");
    let (g, at) = worst_relative(&cg, &gg);
    eprintln!("gradients: worst relative diff {g:.2e} ({at})");
    assert!(g < 1e-3, "gradient of {at} differs by {g} of its max");
    // Adam moves every weight by about the learning rate whatever the size of its gradient, so a
    // gradient that is rounding noise on both devices (a key bias before a softmax) moves it
    // either way: the weights are compared in absolute terms, against the step size.
    let (w, at) = ca
        .iter()
        .zip(&ga)
        .map(|((k, c), (_, g))| (max_abs_diff(c, g), k))
        .fold((0.0f32, &ca[0].0), |m, x| if x.0 > m.0 { x } else { m });
    eprintln!("weights after Adam: max abs diff {w:.2e} ({at}), learning rate {LR:.0e}");
    assert!(
        w <= 2.0 * LR as f32 + 1e-6,
        "{at} after one Adam step differs by {w}"
    );
}

/// Data parallelism over the CPU and the GPU: each step's batch cut in two, one shard per device,
/// the GPU's gradients moved to the CPU and summed there.
#[test]
fn a_step_spread_over_the_cpu_and_the_gpu_matches_the_cpu_alone() {
    let Some(gpu) = gpu() else { return };
    let cpu = Device::flex().autodiff();
    let cfg = TrainConfig {
        model: small_config(),
        epochs: 1,
        batch_size: 4,
        lr: LR,
        micro_batches: 2,
        ..TrainConfig::default()
    };
    let sc = SynthConfig {
        size: 32,
        seed: 3,
        ..Default::default()
    };
    let (train, val) = (
        Dataset::synthetic(&sc, 0..8),
        Dataset::synthetic(&sc, 100..102),
    );
    let mut one = Trainer::new(cfg.clone(), None, None, false, &cpu).unwrap();
    let mut two = Trainer::new(cfg, None, None, false, &cpu).unwrap();
    two.spread_over(vec![cpu.clone(), gpu.autodiff()]).unwrap();

    let batch = &train.samples[..4];
    let (a, b) = (
        one.forward_backward(batch, 32, 0, 7),
        two.forward_backward(batch, 32, 0, 7),
    );
    eprintln!("loss: {} on the CPU, {} spread", a.total, b.total);
    assert!((a.total - b.total).abs() < 1e-5 * a.total.abs());
    let host = |m: &RecLMIS, g: &GradientsParams| -> Named {
        named_param_grads(m, g)
            .into_iter()
            .map(|(k, t)| (k, t.data))
            .collect()
    };
    let (g, at) = worst_relative(&host(&one.model, &a.grads), &host(&two.model, &b.grads));
    eprintln!("summed gradients: worst relative diff {g:.2e} ({at})");
    assert!(g < 1e-3, "gradient of {at} differs by {g} of its max");

    // A whole epoch (two steps and validation) on both devices; the model stays on the CPU.
    one.run(&train, &val, &mut |_| {}).unwrap();
    let m = two.run(&train, &val, &mut |_| {}).unwrap()[0].clone();
    assert!(m.val_dice.is_finite());
    assert_eq!(two.model.device(), cpu);
    let (wa, wb) = (named_tensors(&one.model), named_tensors(&two.model));
    let (w, at) = wa
        .iter()
        .zip(&wb)
        .map(|((k, c), (_, g))| (max_abs_diff(&c.data, &g.data), k))
        .fold((0.0f32, &wa[0].0), |m, x| if x.0 > m.0 { x } else { m });
    // As in `a_small_model_trains_alike_on_both`: a weight whose gradient is rounding noise moves
    // by about the learning rate per step, either way on each side (a little more where Adam's
    // second moment lags its first).
    eprintln!("weights after 2 steps: max abs diff {w:.2e} ({at})");
    assert!(w <= 6.0 * LR as f32, "{at} differs by {w}");
}
