//! Whole commands as functions: train a run, evaluate a checkpoint, load any model file. Each
//! reports what it is doing through a callback, so a front end decides how to show it.

use std::path::{Path, PathBuf};

use burn::tensor::Device;

use super::runs::{initial_model, load_splits};
use crate::Error;
use crate::checkpoint::import::import_authors_checkpoint;
use crate::checkpoint::ours;
use crate::checkpoint::torch::{Format, sniff};
use crate::data::dataset::Dataset;
use crate::data::layout::{LayoutOptions, Split, scan_split_with_notes, survey_split};
use crate::data::{DataError, ReadOptions};
use crate::eval::{EvalSummary, TextMode, evaluate};
use crate::model::{ModelConfig, RecLMIS};
use crate::report::curves::write_curves;
use crate::train::{EpochMetrics, Event, TrainConfig, Trainer};

/// The model in `path`: a checkpoint of ours (a file, or a run folder's best), or the authors'
/// `torch.save` checkpoint, imported on the fly without running pickle code.
pub fn load_model(path: &Path, device: &Device) -> Result<RecLMIS, Error> {
    let file = ours::checkpoint_file(path);
    if matches!(sniff(&file), Ok(Format::TorchSave)) {
        return Ok(import_authors_checkpoint(&file, device)?.0);
    }
    Ok(ours::load(&file, device)?.model)
}

/// A training run: data in LViT layout, a run folder, a config (see [`super::train_config`]).
#[derive(Clone, Debug)]
pub struct TrainRequest {
    pub data: PathBuf,
    pub out: PathBuf,
    pub cfg: TrainConfig,
    /// CLIP weights to start from (OpenAI, Hugging Face, or a checkpoint of ours).
    pub clip: Option<PathBuf>,
    pub resume: bool,
    pub allow_missing_notes: bool,
}

/// What a training run reports as it goes.
pub enum TrainProgress<'a> {
    /// Reading the images of both splits at this size.
    Loading { data: &'a Path, size: usize },
    /// Both splits are in memory; the config is final.
    Loaded {
        train: &'a Dataset,
        val: &'a Dataset,
        cfg: &'a TrainConfig,
    },
    /// The trainer's own events (epochs, steps, validation).
    Train(Event<'a>),
}

/// What a finished run left.
#[derive(Clone, Debug)]
pub struct TrainOutcome {
    pub best_val_dice: f64,
    pub best_epoch: usize,
    pub history: Vec<EpochMetrics>,
    pub out: PathBuf,
}

/// Trains `req` on the CPU: initial weights, both splits, the run, `curves.png` (also after a
/// failed epoch, for what was done).
pub fn train(req: &TrainRequest, on: &mut dyn FnMut(TrainProgress)) -> Result<TrainOutcome, Error> {
    train_on(req, &[Device::flex()], on)
}

/// [`train`] on `devices` (see [`crate::device::open`]): the model lives on the first, and with
/// more than one each step is spread over all of them ([`Trainer::spread_over`]; at least one
/// shard per device, so `micro_batches` is raised to the device count). Autodiff is added here.
pub fn train_on(
    req: &TrainRequest,
    devices: &[Device],
    on: &mut dyn FnMut(TrainProgress),
) -> Result<TrainOutcome, Error> {
    let Some(first) = devices.first() else {
        return Err(Error::Usage("no device to train on".into()));
    };
    let mut cfg = req.cfg.clone();
    cfg.micro_batches = cfg.micro_batches.max(devices.len());
    let device = first.clone().autodiff();
    let init = initial_model(req.clip.as_deref(), req.resume, &mut cfg, &device)?;
    let size = cfg.model.image_size;
    on(TrainProgress::Loading {
        data: &req.data,
        size,
    });
    // Both splits are checked before the run folder is touched; every problem in one error.
    let splits = [(Split::Train, cfg.max_train), (Split::Val, cfg.max_val)];
    let [train, val]: [Dataset; 2] =
        load_splits(&req.data, &splits, size, req.allow_missing_notes)?
            .try_into()
            .expect("one dataset per split asked for");
    on(TrainProgress::Loaded {
        train: &train,
        val: &val,
        cfg: &cfg,
    });
    let mut trainer = Trainer::new(cfg, init, Some(&req.out), req.resume, &device)?;
    trainer.spread_over(devices.iter().map(|d| d.clone().autodiff()).collect())?;
    let result = trainer
        .run(&train, &val, &mut |e| on(TrainProgress::Train(e)))
        .map(|h| h.to_vec());
    if !trainer.history.is_empty() {
        let curves = write_curves(&req.out.join("curves.png"), &trainer.history);
        // After a failed epoch the curves are best effort: the error to report is the epoch's
        // (on a full disk, the checkpoint that could not be written, not the picture after it).
        if result.is_ok() {
            curves?;
        }
    }
    let history = result?;
    Ok(TrainOutcome {
        best_val_dice: trainer.state.best_val_dice.unwrap_or(0.0),
        best_epoch: trainer.state.best_epoch.unwrap_or(0),
        history,
        out: req.out.clone(),
    })
}

/// The size images are decoded at only to check that they can be.
const CHECK_SIZE: usize = 16;

/// How notes are read for an evaluation (overrides the checkpoint's `notes.canonical`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotesAs {
    Raw,
    Canonical,
}

/// An evaluation: a checkpoint, a split of a dataset, which notes.
#[derive(Clone, Debug)]
pub struct EvalRequest {
    pub checkpoint: PathBuf,
    pub data: PathBuf,
    pub split: Split,
    pub text: TextMode,
    /// Any notes file to read instead of the split's own (strict both ways: one note per image).
    pub notes: Option<PathBuf>,
    pub notes_as: Option<NotesAs>,
    pub seed: u64,
    pub allow_missing_notes: bool,
    /// The slice of DICOM and NIfTI images and masks.
    pub read: ReadOptions,
}

/// A finished evaluation.
pub struct EvalOutcome {
    pub summary: EvalSummary,
    /// The checkpoint file and the notes file actually read.
    pub checkpoint: PathBuf,
    pub notes_file: PathBuf,
    /// The config the model ran with (its notes reading as overridden).
    pub cfg: ModelConfig,
    /// Images whose mask had another size (both resized).
    pub size_mismatches: usize,
}

/// Scores `req` with the LViT test protocol. Layout and notes are checked before the model is
/// loaded, so bad data fails fast; with a problem there, the images are checked too (decoded at
/// a small size) and every problem comes back in one error.
pub fn evaluate_split(req: &EvalRequest) -> Result<EvalOutcome, Error> {
    evaluate_split_on(req, &Device::flex())
}

/// [`evaluate_split`] with the model on `device` (see [`crate::device::open`]).
pub fn evaluate_split_on(req: &EvalRequest, device: &Device) -> Result<EvalOutcome, Error> {
    let checkpoint = ours::checkpoint_file(&req.checkpoint);
    let scanned = match &req.notes {
        Some(file) => scan_split_with_notes(&req.data, req.split, file)?,
        None => {
            let opts = LayoutOptions {
                allow_missing_notes: req.allow_missing_notes,
                ..Default::default()
            };
            let (scanned, mut problems) = survey_split(&req.data, req.split, &opts)?;
            if !problems.is_empty() {
                if let Err(e) = Dataset::from_items(&scanned.items, CHECK_SIZE) {
                    problems.push(e);
                }
                DataError::collect(problems)?;
            }
            scanned
        }
    };
    let mut model = load_model(&checkpoint, device)?;
    if let Some(how) = req.notes_as {
        model.cfg.notes.canonical = how == NotesAs::Canonical;
    }
    let data = Dataset::from_items_with(&scanned.items, model.cfg.image_size, &req.read)?;
    let summary = evaluate(&model, &data, req.text, req.seed, 8);
    Ok(EvalOutcome {
        summary,
        checkpoint,
        notes_file: scanned.notes_file,
        cfg: model.cfg,
        size_mismatches: data.size_mismatches,
    })
}
