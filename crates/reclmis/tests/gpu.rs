//! The `gpu` build on whatever Vulkan device the machine has (in CI, Mesa's software lavapipe):
//! burn's ops and a small model's forward, backward and Adam step there agree with the CPU.
//!
//! Without a Vulkan device the tests say so and pass, unless `RECLMIS_REQUIRE_GPU` is set (CI
//! sets it where it installed one). The parity fixtures run on the GPU with
//! `RECLMIS_TEST_DEVICE=gpu` (tests/parity.rs; docs/gpu.md).
#![cfg(feature = "gpu")]

use burn::module::Module;
use burn::optim::{AdamConfig, GradientsParams, Optimizer};
use burn::tensor::{Device, Tensor, TensorData};
use reclmis::device::{DeviceChoice, DeviceError, describe, gpus, open};
use reclmis::model::weights::{named_grads, named_tensors};
use reclmis::model::{Branches, ModelConfig, RecLMIS, TokenBatch, to_vec};

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
        let x = Tensor::<4>::from_data(TensorData::new(ramp(2 * 4 * 16 * 16, 13), [2, 4, 16, 16]), d);
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
    for (name, a, b) in [("matmul", &c.0, &g.0), ("conv2d", &c.1, &g.1), ("softmax", &c.2, &g.2)] {
        let d = max_abs_diff(a, b);
        eprintln!("{name}: max abs diff {d:.2e}");
        assert!(d < 1e-4, "{name}: {d}");
    }
}

fn small_config() -> ModelConfig {
    let mut cfg = ModelConfig::qata();
    cfg.image_size = 32;
    cfg.base_channels = 8;
    cfg.rec_layers = 2;
    cfg.with_builtin_text(1)
}

/// Probabilities of an eval forward, the gradients of a training step, and the weights after
/// one Adam step, from the same initial weights.
fn step(device: &Device) -> (Vec<f32>, Vec<(String, Vec<f32>)>, Vec<(String, Vec<f32>)>) {
    let cfg = small_config();
    let device = device.clone().autodiff();
    let model = RecLMIS::new(&cfg, 3, &device);
    let (b, s) = (2, cfg.image_size);
    let images =
        || Tensor::<4>::from_data(TensorData::new(ramp(b * 3 * s * s, 5), [b, 3, s, s]), &device);
    let rows = vec![vec![49406, 320, 1125, 49407], vec![49406, 530, 49407, 0]];
    let tokens = TokenBatch::new(&rows);
    let target: Vec<f32> = (0..b * s * s).map(|i| ((i % s) > s / 2) as u8 as f32).collect();
    let target = Tensor::<3>::from_data(TensorData::new(target, [b, s, s]), &device);

    let eval = model.valid();
    let tfc = eval.encode_text(&tokens, false);
    let probs = to_vec(&eval.forward(images(), tfc, &tokens, Branches::Segment, false).probs);

    let tfc = model.encode_text(&tokens, true);
    let out = model.forward(images(), tfc, &tokens, Branches::Aux { seed: 1 }, true);
    let grads = model.losses(&out, target).total.backward();
    let named = named_grads(&model, &grads)
        .into_iter()
        .map(|(k, t)| (k, t.data))
        .collect();
    let gp = GradientsParams::from_grads(grads, &model);
    let mut optim = AdamConfig::new().with_epsilon(1e-8).init();
    let model = optim.step(1e-3, model, gp);
    let after = named_tensors(&model)
        .into_iter()
        .map(|(k, t)| (k, t.data))
        .collect();
    (probs, named, after)
}

#[test]
fn a_small_model_trains_alike_on_both() {
    let Some(gpu) = gpu() else { return };
    let (cp, cg, ca) = step(&Device::flex());
    let (gp, gg, ga) = step(&gpu);
    let d = max_abs_diff(&cp, &gp);
    eprintln!("probs: max abs diff {d:.2e}");
    assert!(d < 1e-4, "probs differ by {d}");
    let worst = |c: &[(String, Vec<f32>)], g: &[(String, Vec<f32>)]| {
        assert_eq!(c.len(), g.len());
        c.iter()
            .zip(g)
            .map(|((kc, vc), (kg, vg))| {
                assert_eq!(kc, kg);
                let scale = vc.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
                (max_abs_diff(vc, vg) / scale, kc.clone())
            })
            .fold((0.0f32, String::new()), |m, x| if x.0 > m.0 { x } else { m })
    };
    let (g, at) = worst(&cg, &gg);
    eprintln!("gradients: worst relative diff {g:.2e} ({at})");
    assert!(g < 1e-2, "gradient of {at} differs by {g} of its max");
    let (w, at) = worst(&ca, &ga);
    eprintln!("weights after Adam: worst relative diff {w:.2e} ({at})");
    assert!(w < 1e-3, "{at} after one Adam step differs by {w} of its max");
}
