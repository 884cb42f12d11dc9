//! `reclmis demo`: the procedural dataset, a short training of a reduced RecLMIS, evaluation
//! with true and shuffled notes, and a report folder with an `index.html`.

mod page;
pub mod report;

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use crate::data::dataset::{Augment, Dataset};
use crate::data::synth::SynthConfig;
use crate::eval::{EvalSummary, TextMode, evaluate};
use crate::files::write_atomic;
use crate::model::ModelConfig;
use crate::model::config::LossWeights;
use crate::train::{EpochMetrics, Event, LrSchedule, TrainConfig, TrainError, Trainer};

/// Everything the demo does is fixed by this (the defaults are what the README reports).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DemoConfig {
    pub seed: u64,
    pub image_size: usize,
    pub base_channels: usize,
    pub text_layers: usize,
    pub rec_layers: usize,
    pub n_train: u64,
    pub n_val: u64,
    pub n_test: u64,
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    /// Test images shown in the report.
    pub n_examples: usize,
    /// The `clean` setting instead of the paper's.
    pub clean: bool,
    /// Most lesions per phantom (1–4; fewer lesions leave more room for distractors, so reading
    /// the note pays off sooner).
    pub max_lesions: usize,
    /// Most distractors per phantom (1–3).
    pub max_distractors: usize,
    /// New training phantoms every epoch (indices `e·n_train..(e+1)·n_train`) instead of the
    /// same `n_train` each time: a model cannot memorise which opacity of a training image is
    /// the distractor, so reading the note is the only way left to improve.
    pub fresh_train: bool,
    /// Weights of the segmentation and auxiliary losses (the paper's by default, §3).
    pub loss_weights: LossWeights,
    /// Epochs of segmentation loss alone before the auxiliary losses join.
    pub aux_from_epoch: usize,
}

impl Default for DemoConfig {
    /// 45 short epochs of 400 fresh phantoms each at 48 px, about three minutes on 2 cores.
    /// The first 10 epochs train the segmentation loss alone: the model learns to segment every
    /// opacity and then, with no training image seen twice, to keep only those in the zones the
    /// note names. The auxiliary losses then join with the paper's weights. From the first step
    /// they keep a model trained from scratch from ever starting to read the notes (README,
    /// "What the demo does", has the runs). The `clean` setting is used (residual connections
    /// in the Interactor; the paper setting is `--paper`).
    fn default() -> Self {
        Self {
            seed: 7,
            image_size: 48,
            base_channels: 16,
            text_layers: 2,
            rec_layers: 1,
            n_train: 400,
            n_val: 100,
            n_test: 200,
            epochs: 45,
            batch_size: 32,
            lr: 1e-3,
            n_examples: 6,
            clean: true,
            max_lesions: SynthConfig::default().max_lesions,
            max_distractors: SynthConfig::default().max_distractors,
            fresh_train: true,
            loss_weights: LossWeights::default(),
            aux_from_epoch: 10,
        }
    }
}

impl DemoConfig {
    pub fn train_config(&self) -> TrainConfig {
        let mut m = ModelConfig::qata();
        m.image_size = self.image_size;
        m.base_channels = self.base_channels;
        m.rec_layers = self.rec_layers;
        m.loss_weights = self.loss_weights.clone();
        if self.clean {
            m.parity = crate::model::Parity::Clean;
        }
        TrainConfig {
            model: m.with_builtin_text(self.text_layers),
            epochs: self.epochs,
            batch_size: self.batch_size,
            lr: self.lr,
            schedule: LrSchedule::CosineRestarts {
                t0: self.epochs.max(1),
                eta_min: self.lr / 10.0,
            },
            patience: self.epochs,
            seed: self.seed,
            augment: Augment::TextFaithful,
            max_train: None,
            max_val: None,
            time_budget_s: None,
            aux_from_epoch: self.aux_from_epoch,
            paraphrase: 0.0,
            side_focus: 0.0,
            micro_batches: 1,
        }
    }

    pub fn synth(&self) -> SynthConfig {
        SynthConfig {
            size: self.image_size,
            seed: self.seed,
            max_lesions: self.max_lesions,
            max_distractors: self.max_distractors,
        }
    }
}

/// `report.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DemoReport {
    pub dice_true: f64,
    pub miou_true: f64,
    pub dice_shuffled: f64,
    pub miou_shuffled: f64,
    pub dice_empty: f64,
    pub miou_empty: f64,
    pub n_test: usize,
    pub train_seconds: f64,
    pub total_seconds: f64,
    pub text_encoder: String,
    pub parity: String,
    pub threads: usize,
    /// The epoch whose weights were tested: the best validation Dice when the run was saved.
    #[serde(default)]
    pub evaluated_epoch: Option<usize>,
    /// `fp32`, or `bf16` convolutions (`--precision bf16`).
    #[serde(default)]
    pub precision: String,
    pub demo: DemoConfig,
    pub train: TrainConfig,
    pub history: Vec<EpochMetrics>,
}

/// First generator index of the validation and of the test phantoms; training uses the indices
/// below `VAL_START` (`0..n_train`, or `e·n_train..(e+1)·n_train` in epoch `e` with fresh data).
pub const VAL_START: u64 = 1_000_000;
pub const TEST_START: u64 = 2_000_000;

/// The datasets of the demo (training: the first epoch's): disjoint index ranges of the
/// procedural generator.
pub fn datasets(cfg: &DemoConfig) -> (Dataset, Dataset, Dataset) {
    let s = cfg.synth();
    let train = Dataset::synthetic(&s, 0..cfg.n_train);
    let val = Dataset::synthetic(&s, VAL_START..VAL_START + cfg.n_val);
    let test = Dataset::synthetic(&s, TEST_START..TEST_START + cfg.n_test);
    (train, val, test)
}

pub struct DemoOutcome {
    pub report: DemoReport,
    pub trainer: Trainer,
    pub test: Dataset,
    pub evals: [EvalSummary; 3],
}

/// Trains and evaluates on the CPU; `out` receives the run folder (checkpoints, metrics) under
/// `run/`.
pub fn run(
    cfg: &DemoConfig,
    out: Option<&Path>,
    on: &mut dyn FnMut(Event),
) -> Result<DemoOutcome, TrainError> {
    run_on(cfg, out, &Device::flex(), on)
}

/// [`run`] on `device` (see [`crate::device::open`]; autodiff is added here).
pub fn run_on(
    cfg: &DemoConfig,
    out: Option<&Path>,
    device: &Device,
    on: &mut dyn FnMut(Event),
) -> Result<DemoOutcome, TrainError> {
    let t0 = Instant::now();
    if cfg.fresh_train && (cfg.epochs as u64).saturating_mul(cfg.n_train) > VAL_START {
        return Err(crate::model::config::ConfigError(format!(
            "fresh training phantoms for {} epochs of {} would run into the validation indices \
             (from {VAL_START})",
            cfg.epochs, cfg.n_train
        ))
        .into());
    }
    let (train, val, test) = datasets(cfg);
    let tc = cfg.train_config();
    let device = device.clone().autodiff();
    let run_dir: Option<PathBuf> = out.map(|o| o.join("run"));
    let mut trainer = Trainer::new(tc.clone(), None, run_dir.as_deref(), false, &device)?;
    let t_train = Instant::now();
    if cfg.fresh_train {
        let s = cfg.synth();
        let n = cfg.n_train;
        trainer.run_with(
            |e| match e {
                0 => Cow::Borrowed(&train),
                e => Cow::Owned(Dataset::synthetic(&s, e as u64 * n..(e as u64 + 1) * n)),
            },
            &val,
            on,
        )?;
    } else {
        trainer.run(&train, &val, on)?;
    }
    let train_seconds = t_train.elapsed().as_secs_f64();
    // As in the authors' protocol, the test set sees the checkpoint with the best validation
    // Dice, not the last epoch's weights.
    let best_path = run_dir.as_ref().map(|d| d.join("best.safetensors"));
    let evaluated_epoch = match best_path.filter(|p| p.exists()) {
        Some(p) => {
            trainer.model = crate::checkpoint::ours::load(&p, &device)?.model;
            trainer.state.best_epoch
        }
        None => Some(trainer.state.epoch),
    };
    let ev = |mode| evaluate(&trainer.model, &test, mode, cfg.seed, 32);
    let evals = [
        ev(TextMode::Given),
        ev(TextMode::Shuffled),
        ev(TextMode::Empty),
    ];
    let report = DemoReport {
        dice_true: evals[0].dice,
        miou_true: evals[0].miou,
        dice_shuffled: evals[1].dice,
        miou_shuffled: evals[1].miou,
        dice_empty: evals[2].dice,
        miou_empty: evals[2].miou,
        n_test: test.len(),
        train_seconds,
        total_seconds: t0.elapsed().as_secs_f64(),
        text_encoder: tc.model.text_encoder.kind().to_string(),
        parity: format!("{:?}", tc.model.parity).to_lowercase(),
        threads: rayon::current_num_threads(),
        evaluated_epoch,
        precision: crate::kernels::precision_label(),
        demo: cfg.clone(),
        train: tc,
        history: trainer.history.clone(),
    };
    if let Some(o) = out {
        let json = serde_json::to_string_pretty(&report).expect("the report serialises");
        write_atomic(&o.join("report.json"), json.as_bytes()).map_err(|source| TrainError::Io {
            path: o.join("report.json"),
            source,
        })?;
    }
    Ok(DemoOutcome {
        report,
        trainer,
        test,
        evals,
    })
}
