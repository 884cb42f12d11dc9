//! The training loop (docs §2): Adam, validation every epoch on the hard Dice, best and last
//! checkpoints written atomically, early stopping, a time budget and `--resume`.

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::Module;
use burn::optim::{GradientsAccumulator, GradientsParams, ModuleOptimizer};

use crate::train::adam::FusedAdam;
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::TrainConfig;
use crate::checkpoint::ours::{self, CheckpointError, SaveOptions, TrainState};
use crate::data::dataset::{Dataset, Sample, augment};
use crate::data::metrics;
use crate::data::paraphrase::paraphrase_note;
use crate::data::side_focus::{self, Orientation, focus_side};
use crate::files::write_atomic;
use crate::model::{Branches, RecLMIS, to_vec};
use crate::rng::{SplitMix64, mix};
use crate::step::{self, TextCache, make_batch};

fn yes() -> bool {
    true
}

/// One line of `metrics.jsonl`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct EpochMetrics {
    /// 1-based.
    pub epoch: usize,
    pub lr: f64,
    pub train_loss: f64,
    pub train_criterion: f64,
    /// The auxiliary losses below are 0 for an epoch without them (`aux` false).
    pub train_ccl: f64,
    pub train_text_rec: f64,
    pub train_img_rec: f64,
    /// Whether the auxiliary losses were part of the training loss (see `aux_from_epoch`).
    #[serde(default = "yes")]
    pub aux: bool,
    pub train_dice: f64,
    pub val_loss: f64,
    pub val_dice: f64,
    pub seconds: f64,
    pub best: bool,
}

/// What the trainer tells its caller while it runs.
pub enum Event<'a> {
    EpochStart {
        epoch: usize,
        epochs: usize,
        steps: usize,
    },
    Step {
        step: usize,
        loss: f64,
        dice: f64,
    },
    Validating {
        epoch: usize,
    },
    EpochEnd(&'a EpochMetrics),
    Resumed {
        epoch: usize,
    },
    /// Side focus measured which image half "left" names (once, before its first epoch).
    SideFocus(Orientation),
}

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    Config(#[from] crate::model::config::ConfigError),
    #[error("cannot write {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the loss became {value} at epoch {epoch}, step {step}; training stopped, the last good \
         checkpoint is {last_good}"
    )]
    NonFinite {
        value: f64,
        epoch: usize,
        step: usize,
        last_good: String,
    },
    #[error("cannot resume: {0}")]
    Resume(String),
    #[error("the training set is empty")]
    Empty,
    #[error("{0}")]
    SideFocus(String),
    #[error("devices: {0}")]
    Devices(String),
}

/// Files of a run folder.
pub struct RunPaths {
    pub dir: PathBuf,
}

impl RunPaths {
    pub fn best(&self) -> PathBuf {
        self.dir.join("best.safetensors")
    }
    pub fn last(&self) -> PathBuf {
        self.dir.join("last.safetensors")
    }
    /// Adam's state after `epoch` epochs. One file per epoch, so `last.safetensors` never pairs
    /// with the state of another epoch: a run killed between writing the two resumes from the
    /// older pair, which is still on disk (older files are removed once `last` is written).
    pub fn optimizer_at(&self, epoch: usize) -> PathBuf {
        self.dir.join(format!("optimizer-{epoch:05}.bin"))
    }
    /// The single optimizer file of runs written before per-epoch files.
    pub fn optimizer_legacy(&self) -> PathBuf {
        self.dir.join("optimizer.bin")
    }
    /// Removes the temporary files of writes a killed run left behind (`.<name>.tmp-<pid>`; the
    /// files they were to replace are intact).
    pub fn remove_interrupted_writes(&self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') && name.contains(".tmp-") {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    pub fn text_tower(&self) -> PathBuf {
        self.dir.join(TEXT_TOWER_FILE)
    }
    pub fn metrics(&self) -> PathBuf {
        self.dir.join("metrics.jsonl")
    }
    pub fn config(&self) -> PathBuf {
        self.dir.join("config.toml")
    }
}

const TEXT_TOWER_FILE: &str = "text_tower.safetensors";

/// Validation pass: mean criterion loss and the authors' hard validation Dice (§2 step 4).
pub fn validate(
    model: &RecLMIS,
    data: &Dataset,
    batch_size: usize,
    cache: &mut TextCache,
) -> (f64, f64) {
    let eval = model.valid();
    let device = eval.device();
    let (mut loss, mut dice, mut n) = (0.0, 0.0, 0usize);
    for chunk in data.samples.chunks(batch_size.max(1)) {
        let b = make_batch(chunk, data.size, eval.cfg(), &device);
        let tfc = cache.encode(&eval, &b.tokens, false);
        let out = eval.forward(b.images, tfc, &b.tokens, Branches::Segment, false);
        let l = crate::model::losses::criterion(out.probs.clone(), b.masks);
        let probs = to_vec(&out.probs);
        let px = data.size * data.size;
        for (i, p) in probs.chunks(px).enumerate() {
            dice += metrics::val_dice(p, &b.mask_values[i * px..(i + 1) * px]) as f64;
        }
        loss += to_vec(&l)[0] as f64 * chunk.len() as f64;
        n += chunk.len();
    }
    (loss / n.max(1) as f64, dice / n.max(1) as f64)
}

/// One step before the update: its losses (shard-weighted means), the summed Dice of its
/// samples and the gradients summed over its shards, on the model's device.
pub struct StepGradients {
    pub total: f64,
    /// total, criterion, CCL, text and image reconstruction.
    pub parts: [f64; 5],
    pub dice: f64,
    pub grads: GradientsParams,
}

/// A training run over in-memory data.
pub struct Trainer {
    pub cfg: TrainConfig,
    pub model: RecLMIS,
    pub optim: ModuleOptimizer,
    pub state: TrainState,
    pub history: Vec<EpochMetrics>,
    pub paths: Option<RunPaths>,
    device: Device,
    /// Where a step's shards run: shard `j` on `devices[j mod n]`; the first is `device`, where
    /// the model and the optimiser state live.
    devices: Vec<Device>,
    cache: TextCache,
    /// Which image half each side word names, measured once on the first training set
    /// (only with side focus).
    orientation: Option<Orientation>,
}

impl Trainer {
    /// A fresh run, or (`resume`) the continuation of the one in `out`.
    pub fn new(
        cfg: TrainConfig,
        init: Option<RecLMIS>,
        out: Option<&Path>,
        resume: bool,
        device: &Device,
    ) -> Result<Self, TrainError> {
        cfg.validate()?;
        let paths = out.map(|d| RunPaths {
            dir: d.to_path_buf(),
        });
        let optim = FusedAdam::init(1e-8);
        if let Some(p) = &paths {
            p.remove_interrupted_writes();
        }
        if resume {
            let p = paths
                .as_ref()
                .ok_or_else(|| TrainError::Resume("no run folder given".into()))?;
            return Self::resume(cfg, p, optim, device);
        }
        let mut model = init.unwrap_or_else(|| RecLMIS::new(&cfg.model, cfg.seed, device));
        if cfg.model.text_encoder.is_frozen() {
            model.clip = model.clip.set_require_grad(false);
        }
        if let Some(p) = &paths {
            std::fs::create_dir_all(&p.dir).map_err(|source| TrainError::Io {
                path: p.dir.clone(),
                source,
            })?;
            let toml = toml::to_string(&cfg).expect("a train config serialises to TOML");
            write_atomic(&p.config(), toml.as_bytes()).map_err(|source| TrainError::Io {
                path: p.config(),
                source,
            })?;
            if cfg.model.text_encoder.is_frozen() {
                ours::save_text_tower(&p.text_tower(), &model)?;
            }
            // A fresh run starts a fresh metrics file.
            let _ = std::fs::remove_file(p.metrics());
        }
        Ok(Self {
            cfg,
            model,
            optim,
            state: TrainState {
                origin: "train".into(),
                ..Default::default()
            },
            history: Vec::new(),
            paths,
            device: device.clone(),
            devices: vec![device.clone()],
            cache: TextCache::default(),
            orientation: None,
        })
    }

    fn resume(
        cfg: TrainConfig,
        p: &RunPaths,
        optim: ModuleOptimizer,
        device: &Device,
    ) -> Result<Self, TrainError> {
        let loaded = ours::load(&p.last(), device)?;
        if loaded.model.cfg != cfg.model {
            return Err(TrainError::Resume(format!(
                "the model config of {} differs from this run's",
                p.last().display()
            )));
        }
        let mut opt_path = p.optimizer_at(loaded.state.epoch);
        if !opt_path.exists() && p.optimizer_legacy().exists() {
            opt_path = p.optimizer_legacy();
        }
        let bytes = std::fs::read(&opt_path)
            .map_err(|e| TrainError::Resume(format!("{}: {e}", opt_path.display())))?;
        let optim = optim
            .from_bytes(burn::tensor::Bytes::from_bytes_vec(bytes))
            .map_err(|e| TrainError::Resume(format!("{}: {e:?}", opt_path.display())))?;
        let history: Vec<EpochMetrics> = std::fs::read_to_string(p.metrics())
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .take(loaded.state.epoch)
            .collect();
        Ok(Self {
            cfg,
            model: loaded.model,
            optim,
            state: loaded.state,
            history,
            paths: Some(RunPaths { dir: p.dir.clone() }),
            device: device.clone(),
            devices: vec![device.clone()],
            cache: TextCache::default(),
            orientation: None,
        })
    }

    /// Trains until `epochs`, early stopping or the time budget; returns the history.
    pub fn run(
        &mut self,
        train: &Dataset,
        val: &Dataset,
        on: &mut dyn FnMut(Event),
    ) -> Result<&[EpochMetrics], TrainError> {
        self.run_with(|_| Cow::Borrowed(train), val, on)
    }

    /// As [`Trainer::run`], with the training set of each (0-based) epoch from `train_for`:
    /// the demo draws fresh procedural phantoms every epoch.
    pub fn run_with<'d>(
        &mut self,
        mut train_for: impl FnMut(usize) -> Cow<'d, Dataset>,
        val: &Dataset,
        on: &mut dyn FnMut(Event),
    ) -> Result<&[EpochMetrics], TrainError> {
        if self.state.epoch > 0 {
            on(Event::Resumed {
                epoch: self.state.epoch,
            });
        }
        let started = Instant::now();
        while self.state.epoch < self.cfg.epochs {
            let train = train_for(self.state.epoch);
            if train.is_empty() {
                return Err(TrainError::Empty);
            }
            let m = self.epoch(&train, val, on)?;
            let stop_patience = self
                .state
                .best_epoch
                .is_some_and(|b| self.state.epoch - b > self.cfg.patience);
            on(Event::EpochEnd(&m));
            if stop_patience {
                break;
            }
            if let Some(budget) = self.cfg.time_budget_s
                && started.elapsed().as_secs_f64() >= budget
            {
                break;
            }
        }
        Ok(&self.history)
    }

    /// One epoch: training pass, validation, checkpoints, metrics line.
    pub fn epoch(
        &mut self,
        train: &Dataset,
        val: &Dataset,
        on: &mut dyn FnMut(Event),
    ) -> Result<EpochMetrics, TrainError> {
        let t0 = Instant::now();
        let e = self.state.epoch;
        let cfg = self.cfg.clone();
        let lr = cfg.schedule.lr(cfg.lr, e);
        let size = train.size;
        let mut order: Vec<usize> = (0..train.len()).collect();
        let mut rng = SplitMix64::new(mix(cfg.seed, e as u64, 1));
        for i in (1..order.len()).rev() {
            order.swap(i, rng.below(i + 1));
        }
        let steps = order.len().div_ceil(cfg.batch_size);
        if cfg.side_focus > 0.0 && self.orientation.is_none() {
            let o = side_focus::orientation(train).map_err(TrainError::SideFocus)?;
            self.orientation = Some(o);
            on(Event::SideFocus(o));
        }
        let orientation = self.orientation.filter(|_| cfg.side_focus > 0.0);
        on(Event::EpochStart {
            epoch: e + 1,
            epochs: cfg.epochs,
            steps,
        });
        let mut sums = [0.0f64; 6];
        let mut seen = 0usize;
        for (s, idx) in order.chunks(cfg.batch_size).enumerate() {
            let step_seed = mix(cfg.seed, e as u64, s as u64 + 2);
            let samples: Vec<Sample> = idx
                .iter()
                .map(|&i| {
                    let mut r = SplitMix64::new(mix(step_seed, i as u64, 3));
                    let mut s = augment(&train.samples[i], size, cfg.augment, &mut r);
                    // Streams of their own, so `side_focus = 0` and `paraphrase = 0` train
                    // exactly as before.
                    let mut r = SplitMix64::new(mix(step_seed, i as u64, 5));
                    if let Some(o) = orientation
                        && r.unit_f64() < cfg.side_focus
                    {
                        focus_side(&mut s, size, o, &mut r);
                    }
                    let mut r = SplitMix64::new(mix(step_seed, i as u64, 4));
                    if cfg.paraphrase > 0.0
                        && r.unit_f64() < cfg.paraphrase
                        && let Some(note) = paraphrase_note(&s.note, &mut r)
                    {
                        s.note = note;
                    }
                    s
                })
                .collect();
            let step = self.forward_backward(&samples, size, e, step_seed);
            let total = step.total;
            if !total.is_finite() {
                return Err(TrainError::NonFinite {
                    value: total,
                    epoch: e + 1,
                    step: s + 1,
                    last_good: self
                        .paths
                        .as_ref()
                        .map_or("(none: no run folder)".into(), |p| {
                            p.last().display().to_string()
                        }),
                });
            }
            let n = idx.len() as f64;
            for (sum, part) in sums.iter_mut().zip(step.parts) {
                *sum += part * n;
            }
            sums[5] += step.dice;
            seen += idx.len();
            self.model = self.optim.step(lr, self.model.clone(), step.grads);
            self.state.step += 1;
            on(Event::Step {
                step: s + 1,
                loss: total,
                dice: step.dice / n,
            });
        }
        on(Event::Validating { epoch: e + 1 });
        let (val_loss, val_dice) = if val.is_empty() {
            (f64::NAN, sums[5] / seen as f64)
        } else {
            validate(&self.model, val, cfg.batch_size, &mut self.cache)
        };
        self.state.epoch = e + 1;
        // paper-parity: §2 step 5 — strictly better than the best so far (which starts at 0).
        let best = val_dice > self.state.best_val_dice.unwrap_or(0.0);
        if best {
            self.state.best_val_dice = Some(val_dice);
            self.state.best_epoch = Some(e + 1);
        }
        let k = seen as f64;
        let m = EpochMetrics {
            epoch: e + 1,
            lr,
            train_loss: sums[0] / k,
            train_criterion: sums[1] / k,
            train_ccl: sums[2] / k,
            train_text_rec: sums[3] / k,
            train_img_rec: sums[4] / k,
            aux: e >= cfg.aux_from_epoch,
            train_dice: sums[5] / k,
            val_loss,
            val_dice,
            seconds: t0.elapsed().as_secs_f64(),
            best,
        };
        self.history.push(m.clone());
        self.save(best)?;
        Ok(m)
    }

    /// Spreads every step over `devices` (data parallelism, burn-train's "optimiser on the main
    /// device" strategy): each step's batch is cut into `max(micro_batches, devices)` shards,
    /// the model is forked to each shard's device, and the shards' gradients are moved to the
    /// first device and summed there with burn's `GradientsAccumulator` before one optimiser
    /// step. `devices[0]` must be the device the trainer was made on (autodiff included).
    pub fn spread_over(&mut self, devices: Vec<Device>) -> Result<(), TrainError> {
        if devices.first() != Some(&self.device) {
            return Err(TrainError::Devices(
                "the first device must be the one the model is on".into(),
            ));
        }
        self.devices = devices;
        Ok(())
    }

    /// One step's forward and backward passes over `samples`, cut into shards (one shard
    /// unless `micro_batches` or several devices ask for more). Each shard's loss is weighted
    /// by its share of the batch, so the summed gradient is that of the batch's mean loss as
    /// far as the losses are per-sample means (the segmentation criterion is); BatchNorm
    /// statistics and the CCL's negatives are per shard, as in PyTorch's
    /// DistributedDataParallel without SyncBatchNorm.
    /// `samples` are `size`×`size`; `epoch` (0-based) decides whether the auxiliary branch runs.
    pub fn forward_backward(
        &mut self,
        samples: &[Sample],
        size: usize,
        epoch: usize,
        step_seed: u64,
    ) -> StepGradients {
        let cfg = &self.cfg;
        let k = cfg.micro_batches.max(self.devices.len()).min(samples.len());
        let per = samples.len() / k;
        let extra = samples.len() % k;
        let mut start = 0;
        let mut runs = Vec::with_capacity(k);
        for j in 0..k {
            let len = per + usize::from(j < extra);
            let shard = &samples[start..start + len];
            start += len;
            let on = j % self.devices.len();
            let device = &self.devices[on];
            // One shard keeps the seeds of a run without shards.
            let seed = if k == 1 {
                step_seed
            } else {
                mix(step_seed, j as u64, 6)
            };
            let replica = if on == 0 {
                self.model.clone()
            } else {
                self.model.clone().fork(device)
            };
            device.seed(seed);
            let b = make_batch(shard, size, &cfg.model, device);
            let tfc = self.cache.encode(&replica, &b.tokens, true);
            let branches = if epoch >= cfg.aux_from_epoch {
                Branches::Aux { seed }
            } else {
                Branches::Segment
            };
            let (out, losses) =
                step::forward(&replica, b.images, tfc, &b.tokens, b.masks, branches);
            let weighted = if k == 1 {
                losses.total.clone()
            } else {
                losses
                    .total
                    .clone()
                    .mul_scalar(len as f64 / samples.len() as f64)
            };
            let grads = GradientsParams::from_grads(weighted.backward(), &replica);
            runs.push((len, b.mask_values, out.probs, losses, grads));
        }
        // Read back only once every shard is queued, so devices work side by side.
        let mut acc = GradientsAccumulator::new();
        let (mut parts, mut dice) = ([0.0f64; 5], 0.0f64);
        let px = size * size;
        for (len, masks, probs, losses, grads) in runs {
            let w = len as f64 / samples.len() as f64;
            let part = |t: &Option<Tensor<1>>| t.as_ref().map_or(0.0, |t| to_vec(t)[0] as f64);
            let values = [
                to_vec(&losses.total)[0] as f64,
                to_vec(&losses.criterion)[0] as f64,
                part(&losses.ccl),
                part(&losses.text_rec),
                part(&losses.img_rec),
            ];
            for (p, v) in parts.iter_mut().zip(values) {
                *p += w * v;
            }
            dice += to_vec(&probs)
                .chunks(px)
                .enumerate()
                .map(|(i, p)| metrics::val_dice(p, &masks[i * px..(i + 1) * px]) as f64)
                .sum::<f64>();
            acc.accumulate(&self.model, grads.to_device(&self.device, &self.model));
        }
        StepGradients {
            total: parts[0],
            parts,
            dice,
            grads: acc.grads(),
        }
    }

    fn save(&self, best: bool) -> Result<(), TrainError> {
        let Some(p) = &self.paths else { return Ok(()) };
        let opts = || SaveOptions {
            text_tower_file: Some(TEXT_TOWER_FILE),
            ..SaveOptions::default()
        };
        if best {
            ours::save(&p.best(), &self.model, &self.state, opts())?;
        }
        // Optimizer state first: `last` is what `--resume` trusts, so it is written last.
        let bytes = self
            .optim
            .into_bytes()
            .map_err(|e| TrainError::Resume(format!("optimizer state: {e:?}")))?;
        let opt_path = p.optimizer_at(self.state.epoch);
        write_atomic(&opt_path, &bytes).map_err(|source| TrainError::Io {
            path: opt_path.clone(),
            source,
        })?;
        let mut lines = String::new();
        for m in &self.history {
            lines.push_str(&serde_json::to_string(m).expect("metrics serialise"));
            lines.push('\n');
        }
        write_atomic(&p.metrics(), lines.as_bytes()).map_err(|source| TrainError::Io {
            path: p.metrics(),
            source,
        })?;
        ours::save(&p.last(), &self.model, &self.state, opts())?;
        // `last` now pairs with this epoch's state; older states can go.
        if let Ok(entries) = std::fs::read_dir(&p.dir) {
            for e in entries.flatten() {
                let path = e.path();
                let name = e.file_name().to_string_lossy().into_owned();
                let old = name.starts_with("optimizer") && name.ends_with(".bin");
                if old && path != opt_path {
                    let _ = std::fs::remove_file(path);
                }
            }
        }
        Ok(())
    }
}
