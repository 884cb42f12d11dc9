//! `reclmis bench`: the paper configuration (224 px, base 64, CLIP-sized text tower, all five
//! losses, Adam) timed on random weights and inputs.

use std::time::Instant;

use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::model::{Branches, ModelConfig, RecLMIS, TokenBatch, to_vec};
use crate::rng::SplitMix64;
use crate::step;
use crate::tokenizer::{Tokenizer, pad_note};
use crate::train::adam::FusedAdam;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BenchConfig {
    pub image_size: usize,
    pub batch_size: usize,
    /// Timed training steps (after one warm-up step).
    pub steps: usize,
    /// Timed inference repetitions per batch size (after one warm-up).
    pub infer_reps: usize,
}

impl Default for BenchConfig {
    fn default() -> Self {
        Self {
            image_size: 224,
            batch_size: 4,
            steps: 3,
            infer_reps: 3,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BenchResult {
    /// Median seconds of one training step (forward with all five losses, backward, Adam).
    pub train_step_s: f64,
    /// Median seconds of the inference path (text tower, encoder, Interactor, decoder).
    pub infer_b1_s: f64,
    pub infer_b4_s: f64,
    /// Peak resident memory of the process.
    pub peak_rss_mb: f64,
    pub backend: String,
    pub threads: usize,
    pub precision: String,
    /// `ours` or `burn`: which conv/BatchNorm kernels ran.
    pub kernels: String,
    /// The instruction set the kernels chose at run time (`avx512f`, `avx2+fma`, …).
    #[serde(default)]
    pub isa: String,
    /// The CPU's model name, so a record says what it ran on.
    #[serde(default)]
    pub cpu: String,
    pub config: BenchConfig,
    pub train_steps_s: Vec<f64>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// The value after `key:` on the first line of `file` that starts with `key` (`/proc` files).
fn proc_field(file: &str, key: &str) -> Option<String> {
    let text = std::fs::read_to_string(file).ok()?;
    let line = text.lines().find(|l| l.starts_with(key))?;
    Some(line.split_once(':')?.1.trim().to_owned())
}

/// Peak resident set size from `/proc/self/status` (`VmHWM`), in MiB; NaN where unavailable.
pub fn peak_rss_mb() -> f64 {
    proc_field("/proc/self/status", "VmHWM")
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// The CPU's model name (`/proc/cpuinfo`), for benchmark records; `unknown` elsewhere.
pub fn cpu_model() -> String {
    proc_field("/proc/cpuinfo", "model name").unwrap_or_else(|| "unknown".into())
}

fn inputs(
    cfg: &ModelConfig,
    b: usize,
    device: &Device,
    rng: &mut SplitMix64,
) -> (Tensor<4>, Tensor<3>, TokenBatch) {
    let s = cfg.image_size;
    let img: Vec<f32> = (0..b * 3 * s * s).map(|_| rng.unit_f64() as f32).collect();
    let mask: Vec<f32> = (0..b * s * s)
        .map(|_| (rng.unit_f64() < 0.1) as u8 as f32)
        .collect();
    let note =
        "Bilateral pulmonary infection, two infected areas, upper left lung and lower right lung.";
    let row = Tokenizer::clip().tokenize(&pad_note(note), cfg.context).ids;
    (
        Tensor::from_data(TensorData::new(img, [b, 3, s, s]), device),
        Tensor::from_data(TensorData::new(mask, [b, s, s]), device),
        TokenBatch::new(&vec![row; b]),
    )
}

/// Runs the benchmark on the CPU; `on_progress` gets a short label before each timed phase.
pub fn run(bc: &BenchConfig, on_progress: &mut dyn FnMut(&str)) -> BenchResult {
    run_on(bc, &Device::flex(), on_progress)
}

/// [`run`] on `device` (see [`crate::device::open`]). Every timed phase ends by reading a result
/// back, so an asynchronous device has finished its work when the clock stops.
pub fn run_on(bc: &BenchConfig, device: &Device, on_progress: &mut dyn FnMut(&str)) -> BenchResult {
    let mut cfg = ModelConfig::qata();
    cfg.image_size = bc.image_size;
    let on_cpu = crate::device::is_cpu(device);
    let device = device.clone().autodiff();
    let mut rng = SplitMix64::new(11);
    let mut model = RecLMIS::new(&cfg, 1, &device);
    model.clip = model.clip.set_require_grad(false);
    let mut optim = FusedAdam::init(1e-8);

    let mut times = Vec::new();
    for i in 0..=bc.steps {
        on_progress(&format!("train step {i}/{}", bc.steps));
        let (images, masks, tokens) = inputs(&cfg, bc.batch_size, &device, &mut rng);
        let t0 = Instant::now();
        let tfc = model.encode_text(&tokens, true);
        let (_, losses) = step::forward(
            &model,
            images,
            tfc,
            &tokens,
            masks,
            Branches::Aux { seed: i as u64 },
        );
        model = step::update(model, &mut optim, 3e-4, &losses);
        // Wait for the update to finish before stopping the clock.
        let _ = to_vec(&model.outc.weight.val());
        if i > 0 {
            times.push(t0.elapsed().as_secs_f64());
        }
    }
    let train_step_s = median(times.clone());

    let eval = model.valid();
    let eval_device = eval.device();
    let mut infer = |b: usize| {
        let mut t = Vec::new();
        for i in 0..=bc.infer_reps {
            on_progress(&format!("inference batch {b}, {i}/{}", bc.infer_reps));
            let (images, _, tokens) = inputs(&cfg, b, &eval_device, &mut rng);
            let t0 = Instant::now();
            let tfc = eval.encode_text(&tokens, false);
            let out = eval.forward(images, tfc, &tokens, Branches::Segment, false);
            let _ = to_vec(&out.probs);
            if i > 0 {
                t.push(t0.elapsed().as_secs_f64());
            }
        }
        median(t)
    };
    let infer_b1_s = infer(1);
    let infer_b4_s = infer(4);
    BenchResult {
        train_step_s,
        infer_b1_s,
        infer_b4_s,
        peak_rss_mb: peak_rss_mb(),
        backend: if on_cpu {
            "burn-flex (CPU)".into()
        } else {
            format!("burn-wgpu ({})", crate::device::describe(&eval_device))
        },
        threads: rayon::current_num_threads(),
        precision: crate::kernels::precision_label(),
        kernels: match crate::kernels::kernels() {
            crate::kernels::KernelChoice::Ours => "ours".into(),
            crate::kernels::KernelChoice::Burn => "burn".into(),
        },
        isa: crate::kernels::isa(),
        cpu: cpu_model(),
        config: bc.clone(),
        train_steps_s: times,
    }
}
