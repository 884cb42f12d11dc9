//! `reclmis demo`: the procedural dataset, a short training of a reduced RecLMIS, evaluation
//! with true and shuffled notes, and a report folder with an `index.html`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use crate::checkpoint::ours::write_atomic;
use crate::data::dataset::{Augment, Dataset};
use crate::data::synth::SynthConfig;
use crate::eval::{EvalSummary, TextMode, evaluate};
use crate::model::ModelConfig;
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
}

impl Default for DemoConfig {
    /// 45 short epochs on 400 images at 48 px, about five minutes on 2 cores. The model learns
    /// to segment every opacity within a few epochs; whether it then learns to drop the
    /// distractors the note rules out depends on the run (README, "What the demo does": most
    /// runs measured so far did not). The `clean` setting is used: with the paper's Interactor
    /// (no residuals) the text reached the bottleneck too weakly for a reduced model.
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
            batch_size: 16,
            lr: 1e-3,
            n_examples: 6,
            clean: true,
            max_lesions: SynthConfig::default().max_lesions,
            max_distractors: SynthConfig::default().max_distractors,
        }
    }
}

impl DemoConfig {
    pub fn train_config(&self) -> TrainConfig {
        let mut m = ModelConfig::qata();
        m.image_size = self.image_size;
        m.base_channels = self.base_channels;
        m.rec_layers = self.rec_layers;
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

/// The datasets of the demo: disjoint index ranges of the procedural generator.
pub fn datasets(cfg: &DemoConfig) -> (Dataset, Dataset, Dataset) {
    let s = cfg.synth();
    let train = Dataset::synthetic(&s, 0..cfg.n_train);
    let val = Dataset::synthetic(&s, 1_000_000..1_000_000 + cfg.n_val);
    let test = Dataset::synthetic(&s, 2_000_000..2_000_000 + cfg.n_test);
    (train, val, test)
}

pub struct DemoOutcome {
    pub report: DemoReport,
    pub trainer: Trainer,
    pub test: Dataset,
    pub evals: [EvalSummary; 3],
}

/// Trains and evaluates; `out` receives the run folder (checkpoints, metrics) under `run/`.
pub fn run(
    cfg: &DemoConfig,
    out: Option<&Path>,
    on: &mut dyn FnMut(Event),
) -> Result<DemoOutcome, TrainError> {
    let t0 = Instant::now();
    let (train, val, test) = datasets(cfg);
    let tc = cfg.train_config();
    let device = Device::flex().autodiff();
    let run_dir: Option<PathBuf> = out.map(|o| o.join("run"));
    let mut trainer = Trainer::new(tc.clone(), None, run_dir.as_deref(), false, &device)?;
    let t_train = Instant::now();
    trainer.run(&train, &val, on)?;
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
    let ev = |mode| evaluate(&trainer.model, &tc.model, &test, mode, cfg.seed, 32);
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
