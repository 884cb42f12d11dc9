//! `demo`, `synth`, `train`, `evaluate` and `bench`: flags, progress bars and printing.

use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use reclmis::data::ReadOptions;
use reclmis::data::dataset::Augment;
use reclmis::data::layout::Split;
use reclmis::data::synth::{SynthConfig, write_lvit};
use reclmis::demo::DemoConfig;
use reclmis::device::DeviceChoice;
use reclmis::eval::{PROTOCOLS, TextMode};
use reclmis::model::Preset;
use reclmis::train::{EpochMetrics, Event, TrainConfig};
use reclmis::{Error, app};

#[derive(Args)]
pub struct DemoArgs {
    /// Report folder (index.html, report.json, curves, examples, the trained run)
    #[arg(long, value_name = "DIR", default_value = "reclmis-demo")]
    pub out: PathBuf,
    /// Seed of the data and the training
    #[arg(long, value_name = "S")]
    pub seed: Option<u64>,
    /// Training epochs (default: the demo's)
    #[arg(long, value_name = "N")]
    pub epochs: Option<usize>,
    /// Image side (a multiple of 16; default 48)
    #[arg(long, value_name = "PX")]
    pub image_size: Option<usize>,
    /// Training images (default 400)
    #[arg(long, value_name = "N")]
    pub n_train: Option<u64>,
    /// The paper's setting instead of the demo's default `clean` one (docs §7)
    #[arg(long)]
    pub paper: bool,
    /// Most lesions per phantom, 1–4 (default 4)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u8).range(1..=4))]
    pub max_lesions: Option<u8>,
    /// TOML file over the demo's defaults (any field of `report.json`'s `demo` table); flags
    /// given as well win
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

#[derive(Args)]
pub struct SynthArgs {
    /// Output folder (LViT layout; must not exist or be empty)
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Number of images, split 70 / 10 / 20 into train / val / test
    #[arg(long, value_name = "N")]
    pub n: u64,
    #[arg(long, value_name = "S", default_value_t = 0)]
    pub seed: u64,
    /// Image side in pixels
    #[arg(long, value_name = "PX", default_value_t = 224)]
    pub size: usize,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum AugmentArg {
    None,
    Paper,
    TextFaithful,
}

#[derive(Args)]
pub struct TrainArgs {
    /// Dataset root in LViT layout ({Train,Val}_Folder/{img,labelcol} + notes)
    #[arg(long, value_name = "DIR")]
    pub data: PathBuf,
    /// The paper configuration to start from
    #[arg(long, value_name = "P", default_value = "qata")]
    pub preset: Preset,
    /// TOML file overriding any field of the training config (see config.toml in a run folder)
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Run folder (checkpoints, metrics.jsonl, curves.png, config.toml)
    #[arg(long, value_name = "DIR", default_value = "runs/train")]
    pub out: PathBuf,
    /// Continue the run in --out where it stopped
    #[arg(long)]
    pub resume: bool,
    /// CLIP text weights (our imported checkpoint, ViT-B-32.pt or HF safetensors); without it the
    /// built-in text encoder is trained along
    #[arg(long, value_name = "FILE")]
    pub clip: Option<PathBuf>,
    /// Model input size (a multiple of 16)
    #[arg(long, value_name = "PX")]
    pub image_size: Option<usize>,
    /// Model width (64 is the paper's; at least 8)
    #[arg(long, value_name = "C")]
    pub base_channels: Option<usize>,
    #[arg(long, value_name = "N")]
    pub epochs: Option<usize>,
    #[arg(long, value_name = "N")]
    pub batch_size: Option<usize>,
    /// Cut each step's batch into K shards whose gradients are summed before the update
    /// (gradient accumulation; config: `micro_batches`)
    #[arg(long, value_name = "K")]
    pub micro_batches: Option<usize>,
    /// Data-parallel training: each step's batch is spread over these devices, the model and
    /// optimiser living on the first (`0,1` means gpu:0,gpu:1; `cpu,cpu` runs two copies in turn
    /// on the CPU). Replaces --device
    #[arg(long, value_name = "LIST")]
    pub devices: Option<String>,
    #[arg(long, value_name = "LR")]
    pub lr: Option<f64>,
    #[arg(long, value_name = "S")]
    pub seed: Option<u64>,
    #[arg(long, value_enum)]
    pub augment: Option<AugmentArg>,
    /// Use at most N training / validation images
    #[arg(long, value_name = "N")]
    pub max_train: Option<usize>,
    #[arg(long, value_name = "N")]
    pub max_val: Option<usize>,
    /// Stop after the epoch during which this many minutes have passed
    #[arg(long, value_name = "MIN")]
    pub time_budget_min: Option<f64>,
    /// The `clean` setting instead of the paper's (docs §7)
    #[arg(long)]
    pub clean: bool,
    /// Use the empty note for images without one (default: an error)
    #[arg(long)]
    pub allow_missing_notes: bool,
    /// Train the text-free baseline instead (same encoder and decoder, CNN bottleneck, no text)
    #[arg(long)]
    pub text_free: bool,
    /// The text encoder reads each note's canonical sentence (the note parsed into its finding
    /// and written back in the cleaned QaTa style); saved in the checkpoint, so `evaluate` and
    /// `predict` read notes the same way (config: `model.notes.canonical`)
    #[arg(long)]
    pub canonical_notes: bool,
    /// Probability that a training note is reworded at each step (paraphrase augmentation;
    /// config: `paraphrase`)
    #[arg(long, value_name = "P")]
    pub paraphrase: Option<f64>,
    /// Probability that a training sample is narrowed to one side at each step, its note and
    /// mask alike, so the side a note names matters (side focus; config: `side_focus`)
    #[arg(long, value_name = "P")]
    pub side_focus: Option<f64>,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum NotesAs {
    Raw,
    Canonical,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum SplitArg {
    Train,
    Val,
    Test,
}

#[derive(Args)]
pub struct EvaluateArgs {
    /// A run folder (its best.safetensors) or a checkpoint file
    #[arg(long, value_name = "RUN_OR_FILE")]
    pub checkpoint: PathBuf,
    /// Dataset root in LViT layout
    #[arg(long, value_name = "DIR")]
    pub data: PathBuf,
    #[arg(long, value_enum, default_value = "test")]
    pub split: SplitArg,
    /// given: each image's own note; shuffled: another image's (seeded); empty: the empty note
    #[arg(long, value_name = "MODE", default_value = "given")]
    pub text: TextMode,
    #[arg(long, value_name = "S", default_value_t = 0)]
    pub seed: u64,
    /// Per-image CSV (default: beside the checkpoint, eval-<split>-<text>.csv)
    #[arg(long, value_name = "FILE")]
    pub csv: Option<PathBuf>,
    /// JSON summary on stdout
    #[arg(long)]
    pub json: bool,
    /// Read the notes raw or as canonical sentences, overriding the checkpoint's
    /// `notes.canonical` (to see what canonical reading changes for one model)
    #[arg(long, value_enum, value_name = "HOW")]
    pub notes_as: Option<NotesAs>,
    #[arg(long)]
    pub allow_missing_notes: bool,
    /// Score with the notes of this file (.xlsx, .csv or .jsonl; `Image` = the mask name, e.g.
    /// mask_<image>.png, any case) instead of the split's own: every image needs a row, every
    /// row must be an image of the split. --text shuffled/empty apply on top
    #[arg(long, value_name = "FILE", conflicts_with = "allow_missing_notes")]
    pub notes: Option<PathBuf>,
    /// The slice of NIfTI images and masks (third axis) or frame of DICOM ones, from 0
    /// (default: the middle one)
    #[arg(long, value_name = "N")]
    pub slice: Option<usize>,
}

#[derive(Args)]
pub struct BenchArgs {
    /// JSON on stdout
    #[arg(long)]
    pub json: bool,
    /// Timed training steps
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub steps: usize,
    #[arg(long, value_name = "PX", default_value_t = 224)]
    pub image_size: usize,
    #[arg(long, value_name = "N", default_value_t = 4)]
    pub batch_size: usize,
    /// Conv/BatchNorm kernels: ours, or burn's generic ops (for a before/after comparison)
    #[arg(long, value_enum, default_value_t = Kernels::Ours)]
    pub kernels: Kernels,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Kernels {
    Ours,
    Burn,
}

fn bar_style() -> ProgressStyle {
    ProgressStyle::with_template("{prefix:>12} [{bar:30}] {pos}/{len} {msg} (ETA {eta})")
        .expect("the template is valid")
        .progress_chars("=> ")
}

/// Renders trainer events as one progress bar per epoch and one summary line after it.
fn progress(quiet: bool) -> impl FnMut(Event) {
    let mut bar: Option<ProgressBar> = None;
    move |e| {
        if quiet {
            return;
        }
        match e {
            Event::Resumed { epoch } => eprintln!("resuming after epoch {epoch}"),
            Event::SideFocus(o) => eprintln!("side focus: {o}"),
            Event::EpochStart {
                epoch,
                epochs,
                steps,
            } => {
                let b = ProgressBar::new(steps as u64).with_style(bar_style());
                b.set_prefix(format!("epoch {epoch}/{epochs}"));
                bar = Some(b);
            }
            Event::Step { loss, dice, .. } => {
                if let Some(b) = &bar {
                    b.set_message(format!("loss {loss:.3} dice {dice:.3}"));
                    b.inc(1);
                }
            }
            Event::Validating { .. } => {
                if let Some(b) = &bar {
                    b.set_message("validating");
                }
            }
            Event::EpochEnd(m) => {
                if let Some(b) = bar.take() {
                    b.finish_and_clear();
                }
                eprintln!("{}", epoch_line(m));
            }
        }
    }
}

fn epoch_line(m: &EpochMetrics) -> String {
    let parts = if m.aux {
        format!(
            "crit {:.4} ccl {:.4} rec {:.4}/{:.4}",
            m.train_criterion, m.train_ccl, m.train_text_rec, m.train_img_rec
        )
    } else {
        format!("crit {:.4}, no auxiliary losses yet", m.train_criterion)
    };
    format!(
        "epoch {:>3}: loss {:.4} ({parts}) train dice {:.4} | val dice {:.4}{} | lr {:.2e} | \
         {:.0}s",
        m.epoch,
        m.train_loss,
        m.train_dice,
        m.val_dice,
        if m.best { " (best)" } else { "" },
        m.lr,
        m.seconds
    )
}

pub fn run_demo(args: DemoArgs) -> Result<()> {
    let mut cfg = DemoConfig::default();
    if let Some(path) = &args.config {
        cfg = app::merged_config(&cfg, path)?;
    }
    if let Some(s) = args.seed {
        cfg.seed = s;
    }
    if let Some(e) = args.epochs {
        cfg.epochs = e;
    }
    if let Some(s) = args.image_size {
        app::check_image_size(s)?;
        cfg.image_size = s;
    }
    if let Some(n) = args.n_train {
        cfg.n_train = n;
    }
    if args.paper {
        cfg.clean = false;
    }
    if let Some(n) = args.max_lesions {
        cfg.max_lesions = n.into();
    }
    create_dir(&args.out)?;
    let data = if cfg.fresh_train {
        format!(
            "{} fresh training phantoms every epoch, {} validation, {} test",
            cfg.n_train, cfg.n_val, cfg.n_test
        )
    } else {
        format!(
            "{} train / {} val / {} test phantoms",
            cfg.n_train, cfg.n_val, cfg.n_test
        )
    };
    eprintln!(
        "reclmis demo: procedural chest films at {} px ({data}), a reduced RecLMIS (base {}, \
         built-in text encoder, {} setting), {} epochs (auxiliary losses from epoch {}), seed {}",
        cfg.image_size,
        cfg.base_channels,
        if cfg.clean { "clean" } else { "paper" },
        cfg.epochs,
        cfg.aux_from_epoch + 1,
        cfg.seed
    );
    let outcome = reclmis::demo::run_on(
        &cfg,
        Some(&args.out),
        &crate::device()?,
        &mut progress(false),
    )
    .map_err(Error::from)?;
    let r = &outcome.report;
    let files = reclmis::demo::report::write_report(&args.out, &outcome, &cfg)?;
    println!(
        "test Dice {:.3} (mIoU {:.3}) with the true notes, {:.3} with shuffled notes, {:.3} with \
         empty notes; trained in {:.0}s",
        r.dice_true, r.miou_true, r.dice_shuffled, r.dice_empty, r.train_seconds
    );
    println!("report: {}", files.index.display());
    Ok(())
}

pub fn run_synth(args: SynthArgs) -> Result<()> {
    let cfg = SynthConfig {
        size: args.size,
        seed: args.seed,
        ..Default::default()
    };
    let [n_train, n_val, n_test] = app::synth_split(args.n);
    write_lvit(
        &args.out,
        n_train as usize,
        n_val as usize,
        n_test as usize,
        &cfg,
    )
    .map_err(Error::from)?;
    println!(
        "wrote {}: {n_train} train, {n_val} val, {n_test} test images at {} px (seed {})",
        args.out.display(),
        args.size,
        args.seed
    );
    Ok(())
}

fn usage(msg: impl Into<String>) -> anyhow::Error {
    Error::Usage(msg.into()).into()
}

/// The training config: preset, then the TOML file, then the flags.
fn train_config(args: &TrainArgs) -> Result<TrainConfig, Error> {
    let o = app::TrainOverrides {
        image_size: args.image_size,
        base_channels: args.base_channels,
        clean: args.clean,
        text_free: args.text_free,
        canonical_notes: args.canonical_notes,
        paraphrase: args.paraphrase,
        side_focus: args.side_focus,
        epochs: args.epochs,
        batch_size: args.batch_size,
        micro_batches: args.micro_batches,
        lr: args.lr,
        seed: args.seed,
        augment: args.augment.map(|a| match a {
            AugmentArg::None => Augment::None,
            AugmentArg::Paper => Augment::Paper,
            AugmentArg::TextFaithful => Augment::TextFaithful,
        }),
        max_train: args.max_train,
        max_val: args.max_val,
        time_budget_min: args.time_budget_min,
    };
    let layer = args.config.as_deref().map(app::ConfigLayer::File);
    app::train_config(args.preset, args.clip.is_some(), layer, &o)
}

fn create_dir(dir: &Path) -> Result<(), Error> {
    std::fs::create_dir_all(dir).map_err(|source| Error::Io {
        path: dir.to_path_buf(),
        source,
    })
}

fn warn_size_mismatches(count: usize, split: Split, size: usize) {
    if count > 0 {
        eprintln!(
            "warning: {count} {} image(s) have a mask of another size; both were resized to \
             {size}×{size}",
            split.name(),
        );
    }
}

pub fn run_train(args: TrainArgs) -> Result<()> {
    let req = app::TrainRequest {
        data: args.data.clone(),
        out: args.out.clone(),
        cfg: train_config(&args)?,
        clip: args.clip.clone(),
        resume: args.resume,
        allow_missing_notes: args.allow_missing_notes,
    };
    let mut bars = progress(false);
    let devices = match &args.devices {
        None => vec![crate::device()?],
        Some(list) => {
            if crate::device_choice() != DeviceChoice::Cpu {
                return Err(usage("give either --device or --devices, not both"));
            }
            let list = reclmis::device::parse_list(list).map_err(Error::from)?;
            list.into_iter()
                .map(reclmis::device::open)
                .collect::<Result<Vec<_>, _>>()
                .map_err(Error::from)?
        }
    };
    let outcome = app::train_on(&req, &devices, &mut |p| match p {
        app::TrainProgress::Loading { data, size } => {
            eprintln!("loading {} at {size}×{size}…", data.display());
        }
        app::TrainProgress::Loaded { train, val, cfg } => {
            warn_size_mismatches(train.size_mismatches, Split::Train, train.size);
            warn_size_mismatches(val.size_mismatches, Split::Val, val.size);
            eprintln!(
                "{} train / {} val images ({} with an empty mask); text encoder {}; parity {:?}; \
                 augmentation {:?}; notes {}, paraphrase p {}, side focus p {}",
                train.len(),
                val.len(),
                train.empty_masks + val.empty_masks,
                cfg.model.text_encoder.kind(),
                cfg.model.parity,
                cfg.augment,
                if cfg.model.notes.canonical {
                    "canonical"
                } else {
                    "raw"
                },
                cfg.paraphrase,
                cfg.side_focus
            );
            if cfg.micro_batches > 1 || devices.len() > 1 {
                let names: Vec<String> = devices.iter().map(reclmis::device::describe).collect();
                eprintln!(
                    "each step in {} shards over {} device(s): {}",
                    cfg.micro_batches,
                    devices.len(),
                    names.join(", ")
                );
            }
        }
        app::TrainProgress::Train(e) => bars(e),
    })?;
    println!(
        "best val Dice {:.4} at epoch {}; run folder {}",
        outcome.best_val_dice,
        outcome.best_epoch,
        outcome.out.display()
    );
    Ok(())
}

pub fn run_evaluate(args: EvaluateArgs) -> Result<()> {
    let split = match args.split {
        SplitArg::Train => Split::Train,
        SplitArg::Val => Split::Val,
        SplitArg::Test => Split::Test,
    };
    let req = app::EvalRequest {
        checkpoint: args.checkpoint.clone(),
        data: args.data.clone(),
        split,
        text: args.text,
        notes: args.notes.clone(),
        notes_as: args.notes_as.map(|n| match n {
            NotesAs::Raw => app::NotesAs::Raw,
            NotesAs::Canonical => app::NotesAs::Canonical,
        }),
        seed: args.seed,
        allow_missing_notes: args.allow_missing_notes,
        read: ReadOptions { slice: args.slice },
    };
    let out = app::evaluate_split_on(&req, &crate::device()?)?;
    let (s, ckpt, cfg) = (&out.summary, &out.checkpoint, &out.cfg);
    warn_size_mismatches(out.size_mismatches, split, cfg.image_size);
    let csv_path = args.csv.clone().unwrap_or_else(|| {
        ckpt.parent().unwrap_or(Path::new(".")).join(format!(
            "eval-{}-{}.csv",
            split.name(),
            args.text
        ))
    });
    let mut w = csv::Writer::from_writer(Vec::new());
    for r in &s.per_image {
        w.serialize(r)?;
    }
    let bytes = w.into_inner().map_err(|e| anyhow::anyhow!("{e}"))?;
    reclmis::files::write_atomic(&csv_path, &bytes).map_err(|source| Error::Io {
        path: csv_path.clone(),
        source,
    })?;
    let notes = out.notes_file.display().to_string();
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "dice": s.dice, "miou": s.miou,
                "dice_pooled": s.dice_pooled, "iou_pooled": s.iou_pooled, "protocols": PROTOCOLS,
                "n": s.n, "text": s.text.to_string(), "notes": notes,
                "split": split.name(), "checkpoint": ckpt.display().to_string(),
                "text_encoder": if cfg.text_free { "none (text-free baseline)" } else { cfg.text_encoder.kind() },
                "csv": csv_path.display().to_string(),
                "notes_read": s.notes,
            })
        );
    } else {
        println!(
            "{} {} images, {} notes ({notes}): Dice {:.4} per-image mean (LViT), {:.4} pooled \
             over pixels; mIoU {:.4}, pooled IoU {:.4} (per image: {})",
            split.name(),
            s.n,
            s.text,
            s.dice,
            s.dice_pooled,
            s.miou,
            s.iou_pooled,
            csv_path.display()
        );
        if !cfg.text_free {
            println!("{}", s.notes.summary());
        }
    }
    Ok(())
}

pub fn run_bench(args: BenchArgs) -> Result<()> {
    let bc = reclmis::bench::BenchConfig {
        image_size: args.image_size,
        batch_size: args.batch_size,
        steps: args.steps,
        infer_reps: 3,
    };
    app::check_image_size(bc.image_size)?;
    if bc.batch_size == 0 {
        return Err(usage("--batch-size must be at least 1"));
    }
    reclmis::kernels::set_kernels(match args.kernels {
        Kernels::Ours => reclmis::kernels::KernelChoice::Ours,
        Kernels::Burn => reclmis::kernels::KernelChoice::Burn,
    });
    let quiet = args.json;
    let r = reclmis::bench::run_on(&bc, &crate::device()?, &mut |label| {
        if !quiet {
            eprintln!("  {label}");
        }
    });
    if args.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        println!(
            "training step {:.2}s (batch {}, {} px) | inference {:.2}s (batch 1), {:.2}s (batch 4) \
             | peak RSS {:.0} MiB | {} threads, {}, {}, {} kernels ({}) | {}",
            r.train_step_s,
            bc.batch_size,
            bc.image_size,
            r.infer_b1_s,
            r.infer_b4_s,
            r.peak_rss_mb,
            r.threads,
            r.backend,
            r.precision,
            r.kernels,
            r.isa,
            r.cpu
        );
    }
    Ok(())
}
