//! Training runs on the procedural data: resume gives the weights of an uninterrupted run,
//! a NaN stops the run and keeps the last good checkpoint, and a step spread over two devices
//! (`Trainer::spread_over`) gives what one device gives for the same shards, the shards'
//! weighted gradients adding up to the whole batch's. Two CPU "devices" are one CPU taking
//! turns; tests/gpu.rs pairs the CPU with a GPU where there is one.

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use reclmis::checkpoint::ours;
use reclmis::data::dataset::{Augment, Dataset};
use reclmis::data::synth::SynthConfig;
use reclmis::model::ModelConfig;
use reclmis::model::weights::named_param_grads;
use reclmis::train::{LrSchedule, TrainConfig, TrainError, Trainer};

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("reclmis-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn config(epochs: usize) -> TrainConfig {
    let mut m = ModelConfig::qata();
    m.image_size = 32;
    m.base_channels = 8;
    m.rec_layers = 1;
    // burn seeds its random streams process-wide, and tests run in parallel threads: without
    // dropout the runs depend only on our own seeded streams.
    m.dropout = 0.0;
    TrainConfig {
        model: m.with_builtin_text(1),
        epochs,
        batch_size: 4,
        lr: 1e-3,
        schedule: LrSchedule::CosineRestarts {
            t0: 3,
            eta_min: 1e-4,
        },
        patience: 10,
        seed: 5,
        augment: Augment::TextFaithful,
        max_train: None,
        max_val: None,
        time_budget_s: None,
        aux_from_epoch: 0,
        // Reworded and side-focused notes on the training path (seeded, so resumed runs stay
        // exact).
        paraphrase: 0.5,
        side_focus: 0.3,
        micro_batches: 1,
    }
}

/// [`config`] with each step cut into `micro_batches` shards.
fn config_sharded(epochs: usize, micro_batches: usize) -> TrainConfig {
    TrainConfig {
        micro_batches,
        ..config(epochs)
    }
}

fn data() -> (Dataset, Dataset) {
    let sc = SynthConfig {
        size: 32,
        seed: 3,
        ..Default::default()
    };
    (
        Dataset::synthetic(&sc, 0..10),
        Dataset::synthetic(&sc, 1000..1004),
    )
}

fn tensors(path: &Path) -> Vec<(String, Vec<f32>)> {
    let raw = ours::read_raw(path).unwrap();
    let mut v: Vec<_> = raw.tensors.into_iter().map(|(k, t)| (k, t.data)).collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// Asserts that the runs in `a` and `b` ended with bit-identical tensors; returns `a`'s.
fn assert_same_weights(a: &Path, b: &Path, what: &str) -> Vec<(String, Vec<f32>)> {
    let (wa, wb) = (
        tensors(&a.join("last.safetensors")),
        tensors(&b.join("last.safetensors")),
    );
    assert_eq!(wa.len(), wb.len());
    for ((ka, va), (kb, vb)) in wa.iter().zip(&wb) {
        assert_eq!(ka, kb);
        let worst = va
            .iter()
            .zip(vb)
            .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()));
        assert!(worst == 0.0, "{ka}: {what} differs by {worst:e}");
    }
    wa
}

#[test]
fn resume_after_an_interruption_gives_the_same_weights() {
    let device = Device::flex().autodiff();
    let (train, val) = data();
    let a = tmp("straight");
    let mut t = Trainer::new(config(3), None, Some(&a), false, &device).unwrap();
    t.run(&train, &val, &mut |_| {}).unwrap();

    let b = tmp("resumed");
    let mut t = Trainer::new(config(1), None, Some(&b), false, &device).unwrap();
    t.run(&train, &val, &mut |_| {}).unwrap();
    drop(t); // the process "dies" here
    let mut t = Trainer::new(config(3), None, Some(&b), true, &device).unwrap();
    assert_eq!(t.state.epoch, 1);
    t.run(&train, &val, &mut |_| {}).unwrap();
    assert_eq!(t.state.epoch, 3);

    assert_same_weights(&a, &b, "resumed run");
    let lines = std::fs::read_to_string(b.join("metrics.jsonl")).unwrap();
    assert_eq!(lines.lines().count(), 3);
    for d in [a, b] {
        let _ = std::fs::remove_dir_all(d);
    }
}

#[test]
fn a_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint() {
    let device = Device::flex().autodiff();
    let (train, val) = data();
    let dir = tmp("nan");
    let mut t = Trainer::new(config(1), None, Some(&dir), false, &device).unwrap();
    t.run(&train, &val, &mut |_| {}).unwrap();
    let good = std::fs::read(dir.join("last.safetensors")).unwrap();

    let mut cfg = config(3);
    cfg.lr = 1e30;
    let mut t = Trainer::new(cfg, None, Some(&dir), true, &device).unwrap();
    let err = t.run(&train, &val, &mut |_| {}).unwrap_err();
    match &err {
        TrainError::NonFinite { epoch, step, .. } => {
            assert_eq!(*epoch, 2);
            assert!(*step >= 2, "the first step at lr 1e30 is still finite");
        }
        other => panic!("expected NonFinite, got {other}"),
    }
    assert!(err.to_string().contains("last.safetensors"), "{err}");
    assert_eq!(std::fs::read(dir.join("last.safetensors")).unwrap(), good);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn two_devices_give_the_weights_of_one_device_taking_the_same_shards() {
    let cpu = Device::flex().autodiff();
    // 10 images in batches of 4: shards of 2+2 and, at the epoch's end, 1+1.
    let (train, val) = data();
    let (a, b) = (tmp("one-device"), tmp("two-devices"));
    let mut one = Trainer::new(config_sharded(2, 2), None, Some(&a), false, &cpu).unwrap();
    one.run(&train, &val, &mut |_| {}).unwrap();
    let mut two = Trainer::new(config_sharded(2, 2), None, Some(&b), false, &cpu).unwrap();
    two.spread_over(vec![cpu.clone(), cpu.clone()]).unwrap();
    two.run(&train, &val, &mut |_| {}).unwrap();

    let wa = assert_same_weights(&a, &b, "two devices");
    let start = tensors_of_a_fresh_model();
    let moved = wa
        .iter()
        .zip(&start)
        .filter(|((_, v), (_, v0))| v != v0)
        .count();
    // The runs trained: most tensors left their initial values.
    assert!(
        moved * 2 > wa.len(),
        "only {moved} of {} tensors changed",
        wa.len()
    );
    for d in [a, b] {
        let _ = std::fs::remove_dir_all(d);
    }
}

fn tensors_of_a_fresh_model() -> Vec<(String, Vec<f32>)> {
    let dir = tmp("fresh");
    let cfg = config_sharded(1, 1);
    let cpu = Device::flex().autodiff();
    let t = Trainer::new(cfg, None, Some(&dir), false, &cpu).unwrap();
    let path = dir.join("fresh.safetensors");
    ours::save(&path, &t.model, &t.state, Default::default()).unwrap();
    let v = tensors(&path);
    let _ = std::fs::remove_dir_all(dir);
    v
}

#[test]
fn shard_gradients_add_up_to_the_whole_batch_gradient() {
    // A batch of one sample repeated: BatchNorm sees the same statistics in the whole batch as in
    // each shard, and the segmentation loss is a per-sample mean, so splitting the batch must
    // not change the gradient (only the order of float sums). A shard weighted wrongly (say,
    // summed unweighted) scales it.
    let x = data().0.samples.remove(0);
    let batch = vec![x.clone(), x.clone(), x];
    let cpu = Device::flex().autodiff();
    let mut cfg = config_sharded(1, 1);
    // The segmentation branch only: the contrastive loss compares the samples of a shard.
    cfg.aux_from_epoch = 10;
    let mut whole = Trainer::new(cfg.clone(), None, None, false, &cpu).unwrap();
    cfg.micro_batches = 2; // shards of 2 and 1
    let mut split = Trainer::new(cfg, None, None, false, &cpu).unwrap();
    split.spread_over(vec![cpu.clone(), cpu.clone()]).unwrap();

    let gw = whole.forward_backward(&batch, 32, 0, 7);
    let gs = split.forward_backward(&batch, 32, 0, 7);
    assert!(
        (gw.total - gs.total).abs() <= 1e-6 * gw.total.abs(),
        "loss {} vs {}",
        gw.total,
        gs.total
    );
    assert!((gw.dice - gs.dice).abs() < 1e-9);
    let (a, b) = (
        named_param_grads(&whole.model, &gw.grads),
        named_param_grads(&split.model, &gs.grads),
    );
    assert_eq!(a.len(), b.len());
    assert!(a.len() > 50, "{} gradients", a.len());
    let max_abs = |v: &[f32]| v.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    // Gradients that are zero in exact arithmetic (a conv bias before a BatchNorm) are float
    // noise; they are held to the scale of the largest gradient.
    let largest = a
        .iter()
        .map(|(_, g)| max_abs(&g.data))
        .fold(0.0f32, f32::max);
    let mut report = Vec::new();
    for ((key, ga), (kb, gb)) in a.iter().zip(&b) {
        assert_eq!(key, kb);
        let scale = max_abs(&ga.data);
        let worst = ga
            .data
            .iter()
            .zip(&gb.data)
            .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()));
        report.push((worst / scale.max(1e-2 * largest), key.clone(), worst, scale));
    }
    report.sort_by(|x, y| y.0.total_cmp(&x.0));
    eprintln!("worst relative differences: {:?}", &report[..3]);
    let (rel, key, worst, scale) = &report[0];
    assert!(
        *rel <= 1e-4,
        "gradient of {key}: off by {worst:e} (scale {scale:e}, largest {largest:e})"
    );
}

#[test]
fn the_first_device_must_hold_the_model() {
    let cpu = Device::flex().autodiff();
    let mut t = Trainer::new(config_sharded(1, 1), None, None, false, &cpu).unwrap();
    let e = t.spread_over(vec![]).unwrap_err();
    assert!(e.to_string().contains("first device"), "{e}");
}
