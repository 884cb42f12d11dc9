//! What a training run is: the model config plus the recipe (docs §2): epochs, batch size,
//! learning rate and its schedule, early stopping, augmentation and the note augmentations.

use serde::{Deserialize, Serialize};

use crate::data::dataset::Augment;
use crate::model::{ModelConfig, Preset};

/// Learning rate as a function of the 0-based epoch, stepped once per epoch after validation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum LrSchedule {
    /// QaTa: `eta_min + (lr − eta_min)·(1 + cos(π·(e mod t0)/t0))/2`.
    CosineRestarts {
        t0: usize,
        eta_min: f64,
    },
    /// MosMed: `lr·max(gamma^e, floor)`.
    Exp {
        gamma: f64,
        floor: f64,
    },
    Constant,
}

impl LrSchedule {
    pub fn lr(&self, base: f64, epoch: usize) -> f64 {
        match *self {
            Self::CosineRestarts { t0, eta_min } => {
                let t = (epoch % t0.max(1)) as f64 / t0.max(1) as f64;
                eta_min + (base - eta_min) * (1.0 + (std::f64::consts::PI * t).cos()) / 2.0
            }
            Self::Exp { gamma, floor } => base * gamma.powi(epoch as i32).max(floor),
            Self::Constant => base,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TrainConfig {
    pub model: ModelConfig,
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub schedule: LrSchedule,
    /// Stop after this many epochs without a better validation Dice (§2 step 6).
    pub patience: usize,
    pub seed: u64,
    pub augment: Augment,
    /// Use at most this many training / validation images (quick runs).
    pub max_train: Option<usize>,
    pub max_val: Option<usize>,
    /// Stop at the end of the epoch during which this many seconds have passed.
    pub time_budget_s: Option<f64>,
    /// Epochs that train the segmentation loss alone before the auxiliary branch (POI/WOI,
    /// reconstructors, CCL) joins; 0, the paper's recipe, has it from the first step. A model
    /// trained from scratch with a built-in text encoder needs a few such epochs to start
    /// reading the notes (README, "What the demo does").
    pub aux_from_epoch: usize,
    /// Probability that a training note is rewritten in a new wording at a step
    /// ([`crate::data::paraphrase`]); 0 trains on the notes as written.
    pub paraphrase: f64,
    /// Probability that a training sample is narrowed to one side at a step, its note and
    /// target mask alike ([`crate::data::side_focus`]); 0 trains on the samples as they are.
    pub side_focus: f64,
    /// Shards each step's batch is cut into, each with its own forward and backward pass
    /// (BatchNorm statistics and batch-level losses per shard) and their gradients summed,
    /// weighted by shard size, before one optimiser step: gradient accumulation on one device,
    /// data parallelism over several (shard `j` runs on device `j mod n`; [`super::Trainer::spread_over`]).
    /// 1 trains on the whole batch at once.
    pub micro_batches: usize,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self::preset(Preset::Qata)
    }
}

impl TrainConfig {
    /// The authors' recipe for a preset (§2).
    pub fn preset(p: Preset) -> Self {
        let (batch_size, epochs, patience, schedule) = match p {
            Preset::Qata => (
                32,
                2000,
                100,
                LrSchedule::CosineRestarts {
                    t0: 10,
                    eta_min: 1e-4,
                },
            ),
            Preset::Mosmed => (
                20,
                400,
                30,
                LrSchedule::Exp {
                    gamma: 0.99,
                    floor: 0.1,
                },
            ),
        };
        Self {
            model: ModelConfig::preset(p),
            epochs,
            batch_size,
            lr: 3e-4,
            schedule,
            patience,
            seed: 3407,
            augment: Augment::TextFaithful,
            max_train: None,
            max_val: None,
            time_budget_s: None,
            aux_from_epoch: 0,
            paraphrase: 0.0,
            side_focus: 0.0,
            micro_batches: 1,
        }
    }

    pub fn validate(&self) -> Result<(), crate::model::config::ConfigError> {
        use crate::model::config::ConfigError;
        self.model.validate()?;
        if self.batch_size == 0 {
            return Err(ConfigError("batch_size must be at least 1".into()));
        }
        if self.micro_batches == 0 {
            return Err(ConfigError("micro_batches must be at least 1".into()));
        }
        if self.epochs == 0 {
            return Err(ConfigError("epochs must be at least 1".into()));
        }
        for (name, p) in [
            ("paraphrase", self.paraphrase),
            ("side_focus", self.side_focus),
        ] {
            if !(0.0..=1.0).contains(&p) {
                return Err(ConfigError(format!(
                    "{name} {p} must be a probability in [0, 1]"
                )));
            }
        }
        if self.model.text_free && self.side_focus > 0.0 {
            return Err(ConfigError(
                "side_focus needs a model that reads notes (not text_free)".into(),
            ));
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(ConfigError(format!("lr {} must be positive", self.lr)));
        }
        Ok(())
    }
}
