//! `reclmis`, the command-line tool: it parses flags, shows progress and prints results; the work
//! is done by library functions (docs/product.md "Commands").
//!
//! Exit codes: 0 success, 1 runtime failure, 2 bad usage or bad input. A failure prints one line
//! `error: …` on stderr, and `hint: …` where one helps.

mod serve;
mod training;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::OnceLock;

use anyhow::Result;
use burn::tensor::Device;
use clap::{ArgGroup, Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use reclmis::Error;
use reclmis::checkpoint::import::ImportError;
use reclmis::checkpoint::ours::{self, SaveOptions};
use reclmis::data::image::{ReadOptions, read_bgr_with};
use reclmis::data::{DataError, LISTED_PROBLEMS};
use reclmis::device::DeviceChoice;
use reclmis::inspect::{Inspection, inspect_checkpoint, inspect_config, thousands};
use reclmis::model::{ModelConfig, Preset};
use reclmis::predict::{self, FolderOptions, Prediction};

#[derive(Parser)]
#[command(
    name = "reclmis",
    version,
    about = "Language-guided medical image segmentation with RecLMIS",
    long_about = "Language-guided medical image segmentation with RecLMIS: an image and a short \
                  clinical note in, the lesion mask the note describes out, with the patches (POI) \
                  and words (WOI) the model relied on.\n\nExit codes: 0 success, 1 runtime \
                  failure, 2 bad usage or bad input."
)]
struct Cli {
    /// Worker threads for image decoding and CPU tensor work. Sets RAYON_NUM_THREADS for this
    /// run (default: that variable if set, else one thread per core).
    #[arg(long, global = true, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    threads: Option<u16>,

    /// Arithmetic of the convolutions and Linear layers on a CPU: fp32, or bf16 operands with
    /// fp32 accumulation (needs AVX-512 BF16, uses AMX tiles where present; elsewhere it falls
    /// back to fp32 and says so)
    #[arg(long, global = true, value_enum, default_value_t = Precision::Fp32)]
    precision: Precision,

    /// Where the model runs: cpu, or gpu / gpu:N, the Nth Vulkan device (needs a build with the
    /// `gpu` cargo feature; docs/gpu.md). Used by every command that runs the model
    #[arg(long, global = true, value_name = "cpu|gpu[:N]", default_value_t = DeviceChoice::Cpu)]
    device: DeviceChoice,

    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Precision {
    Fp32,
    Bf16,
}

#[derive(Subcommand)]
enum Command {
    /// Segment images from their notes: mask.png, prob.npy, overlay.png, poi.png, woi.json
    Predict(PredictArgs),
    /// Convert the authors' .pth.tar, OpenAI's ViT-B-32.pt or HF CLIP safetensors to our checkpoint
    Import(ImportArgs),
    /// Parameter table per block, config and text encoder of a preset or checkpoint
    Inspect(InspectArgs),
    /// Procedural data, a short training, evaluation with true and shuffled notes, a report
    Demo(training::DemoArgs),
    /// Write the procedural dataset in LViT layout
    Synth(training::SynthArgs),
    /// Train on a dataset in LViT layout (the paper's recipe, every field overridable)
    Train(training::TrainArgs),
    /// The LViT test protocol: Dice and mIoU with given, shuffled, empty or other notes
    Evaluate(training::EvaluateArgs),
    /// A self-contained copy of a checkpoint, optionally float16 and inference-only
    Export(ExportArgs),
    /// Time a training step and inference in the paper configuration
    Bench(training::BenchArgs),
    /// How the note grammar reads a notes file: findings, canonical text, unknown words
    Notes(NotesArgs),
    /// A local web viewer and JSON API: drop an image, type a note, see the mask follow
    Serve(serve::ServeArgs),
}

#[derive(Args)]
struct NotesArgs {
    /// Notes file (.xlsx, .csv or .jsonl with `Image` and `Description`)
    file: PathBuf,
    /// A second notes file with the same keys (e.g. the cleaned captions): count the notes
    /// whose zones agree
    #[arg(long, value_name = "FILE")]
    reference: Option<PathBuf>,
    /// Print every note's reading as JSON instead of the summary
    #[arg(long)]
    json: bool,
    /// List at most this many notes that were not read fully or disagree with the reference
    #[arg(long, value_name = "N", default_value_t = 10)]
    show: usize,
    /// Also write every note reworded by the training's paraphrase augmentation to this CSV
    /// (Image, Description), to see it or to score a model on reworded notes
    #[arg(long, value_name = "FILE")]
    paraphrase_to: Option<PathBuf>,
    /// Seed of --paraphrase-to
    #[arg(long, value_name = "S", default_value_t = 0)]
    seed: u64,
}

#[derive(Args)]
#[command(group(ArgGroup::new("input").required(true).args(["image", "images"])))]
struct PredictArgs {
    /// Our checkpoint (`reclmis import` makes one from the authors' .pth.tar)
    #[arg(long, value_name = "FILE")]
    checkpoint: PathBuf,
    /// One image (PNG, JPEG, BMP, TIFF, DICOM, NIfTI .nii/.nii.gz)
    #[arg(long, value_name = "FILE", requires = "text")]
    image: Option<PathBuf>,
    /// The clinical note of --image
    #[arg(long, value_name = "NOTE", requires = "image")]
    text: Option<String>,
    /// A folder of images (the formats of --image); outputs go to one subfolder per image
    #[arg(long, value_name = "DIR", requires = "notes")]
    images: Option<PathBuf>,
    /// Notes of --images (.xlsx, .csv or .jsonl with `Image` and `Description`); keys match
    /// the file name or `mask_` + the file name, ignoring case
    #[arg(long, value_name = "FILE", requires = "images")]
    notes: Option<PathBuf>,
    /// Use the empty note for images of --images that have none (default: an error)
    #[arg(long, requires = "images")]
    allow_missing_notes: bool,
    /// The slice of a NIfTI volume (third axis) or frame of a DICOM to read, from 0 (default:
    /// the middle one)
    #[arg(long, value_name = "N")]
    slice: Option<usize>,
    /// Output folder
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
}

#[derive(Args)]
struct ImportArgs {
    /// best_model-RecLMIS.pth.tar (the authors'), ViT-B-32.pt (OpenAI) or model.safetensors (HF CLIP)
    src: PathBuf,
    /// Where to write our checkpoint (.safetensors)
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// For CLIP weights: the preset of the fresh model around them (default qata). For the
    /// authors' checkpoint it is read from the file; giving a different one is an error.
    #[arg(long, value_name = "P")]
    preset: Option<Preset>,
    /// For CLIP weights: seed of the fresh model's initialisation
    #[arg(long, value_name = "S", default_value_t = 0)]
    seed: u64,
}

#[derive(Args)]
#[command(group(ArgGroup::new("what").required(true).args(["preset", "checkpoint"])))]
struct InspectArgs {
    /// qata or mosmed (the paper's configurations)
    #[arg(long, value_name = "P")]
    preset: Option<Preset>,
    /// Our checkpoint (only its header is read)
    #[arg(long, value_name = "FILE")]
    checkpoint: Option<PathBuf>,
    /// JSON on stdout instead of the table
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct ExportArgs {
    /// A run folder (its best.safetensors) or a checkpoint file of ours
    #[arg(long, value_name = "RUN_OR_FILE")]
    checkpoint: PathBuf,
    /// Where to write the copy (.safetensors); a text tower kept beside the source is embedded
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// Store float16 (half the size; loading converts back to float32)
    #[arg(long)]
    fp16: bool,
    /// Leave out what only training uses (the reconstructors, CLIP's logit scale): the copy
    /// predicts and evaluates, but cannot continue training
    #[arg(long)]
    inference_only: bool,
}

fn main() -> ExitCode {
    // Before any thread starts: large freed buffers stay in the heap for the next step.
    reclmis::kernels::heap::keep_freed_memory();
    let cli = Cli::parse();
    if let Some(n) = cli.threads {
        // SAFETY: nothing else runs yet (no thread has been started, rayon's pool is built
        // lazily on first use), so no one reads the environment concurrently.
        unsafe { std::env::set_var("RAYON_NUM_THREADS", n.to_string()) };
    }
    if cli.precision == Precision::Bf16
        && reclmis::kernels::set_precision(reclmis::kernels::Precision::Bf16).is_err()
    {
        eprintln!("note: this CPU lacks AVX-512 BF16, so --precision bf16 falls back to fp32");
    }
    DEVICE
        .set(cli.device)
        .expect("the device is chosen once, before any command runs");
    let json = match &cli.command {
        Command::Inspect(a) => a.json,
        Command::Evaluate(a) => a.json,
        Command::Bench(a) => a.json,
        Command::Notes(a) => a.json,
        _ => false,
    };
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => ExitCode::from(report_error(&e, json)),
    }
}

fn run(command: Command) -> Result<()> {
    match command {
        Command::Predict(args) => run_predict(args),
        Command::Import(args) => run_import(args),
        Command::Inspect(args) => run_inspect(args),
        Command::Demo(args) => training::run_demo(args),
        Command::Synth(args) => training::run_synth(args),
        Command::Train(args) => training::run_train(args),
        Command::Evaluate(args) => training::run_evaluate(args),
        Command::Export(args) => run_export(args),
        Command::Bench(args) => training::run_bench(args),
        Command::Notes(args) => run_notes(args),
        Command::Serve(args) => serve::run_serve(args),
    }
}

/// Prints the error (one line, causes joined) and its hint; returns the exit code.
fn report_error(e: &anyhow::Error, json: bool) -> u8 {
    let mut message = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        // Many messages already quote their cause; do not say it twice.
        if message.contains(&text) {
            continue;
        }
        if !message.is_empty() {
            message.push_str(": ");
        }
        message.push_str(&text);
    }
    let message = one_line(&message);
    let lib = e.chain().find_map(|c| c.downcast_ref::<Error>());
    let hint = lib.and_then(Error::hint).map(|h| one_line(&h));
    let code = match lib {
        Some(l) => l.exit_code(),
        // A library error that reached here without going through `reclmis::Error` is still
        // bad input.
        None if e.chain().any(is_library_input_error) => reclmis::error::EXIT_BAD_INPUT,
        None => reclmis::error::EXIT_RUNTIME,
    };
    // Several data problems: a header line, then one line each (docs/product.md "Exit codes").
    let problems: Vec<String> = e
        .chain()
        .find_map(|c| match c.downcast_ref::<Error>() {
            Some(Error::Data(d @ DataError::Problems(_))) => Some(d),
            _ => c
                .downcast_ref::<DataError>()
                .filter(|d| matches!(d, DataError::Problems(_))),
        })
        .map(|d| {
            d.problems()
                .iter()
                .map(|p| one_line(&p.to_string()))
                .collect()
        })
        .unwrap_or_default();
    if problems.is_empty() {
        eprintln!("error: {message}");
    } else {
        eprintln!("error: {} problems with the data:", problems.len());
        for p in problems.iter().take(LISTED_PROBLEMS) {
            eprintln!("  {p}");
        }
        if problems.len() > LISTED_PROBLEMS {
            eprintln!("  … and {} more", problems.len() - LISTED_PROBLEMS);
        }
    }
    if let Some(h) = &hint {
        eprintln!("hint: {h}");
    }
    if json {
        let mut v = serde_json::json!({ "error": message, "hint": hint, "exit_code": code });
        if !problems.is_empty() {
            v["problems"] = problems.into();
        }
        println!("{v}");
    }
    u8::try_from(code).unwrap_or(1)
}

fn is_library_input_error(e: &(dyn std::error::Error + 'static)) -> bool {
    e.is::<DataError>()
        || e.is::<ImportError>()
        || e.is::<ours::CheckpointError>()
        || e.is::<reclmis::model::config::ConfigError>()
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `--device`, set once in `main`.
static DEVICE: OnceLock<DeviceChoice> = OnceLock::new();

/// The device `--device` names, opened when a command first needs it, so commands without
/// tensors never touch a GPU driver.
pub(crate) fn device() -> Result<Device, Error> {
    Ok(reclmis::device::open(device_choice())?)
}

pub(crate) fn device_choice() -> DeviceChoice {
    DEVICE.get().copied().unwrap_or_default()
}

fn load_checkpoint(path: &Path) -> Result<ours::Loaded, Error> {
    Ok(ours::load(path, &device()?)?)
}

fn create_dir(dir: &Path) -> Result<(), Error> {
    std::fs::create_dir_all(dir).map_err(|source| Error::Io {
        path: dir.to_path_buf(),
        source,
    })
}

fn run_predict(args: PredictArgs) -> Result<()> {
    match (&args.image, &args.text, &args.images, &args.notes) {
        (Some(image), Some(text), None, None) => predict_single(&args, image, text),
        (None, None, Some(images), Some(notes)) => predict_many(&args, images, notes),
        _ => Err(Error::Usage("give --image with --text, or --images with --notes".into()).into()),
    }
}

fn predict_single(args: &PredictArgs, image: &Path, text: &str) -> Result<()> {
    // Inputs first, so a bad image fails before the model is loaded.
    let read = ReadOptions { slice: args.slice };
    let img = read_bgr_with(image, &read).map_err(Error::from)?;
    create_dir(&args.out)?;
    let loaded = load_checkpoint(&args.checkpoint)?;
    let s = loaded.model.cfg.image_size;
    let img = img.resized(s, s);
    let pred = predict::predict_image(&loaded.model, &img, text);
    predict::write_prediction(&args.out, &pred, &img)?;
    warn_truncated(
        &loaded.model.cfg,
        std::slice::from_ref(&pred.truncated_words),
    );
    if let Some(r) = &pred.reading {
        report_reading(r, &pred.model_text);
    }
    println!(
        "wrote {} (mask.png, prob.npy, overlay.png, poi.png, woi.json)",
        args.out.display()
    );
    print_summary(&pred);
    Ok(())
}

/// What the grammar made of a note, for a model that reads canonical notes.
fn report_reading(r: &reclmis::finding::Reading, model_text: &str) {
    use reclmis::finding::ParseStatus;
    match r.status {
        ParseStatus::Unparsed => eprintln!(
            "warning: the note names no lung zone the grammar knows; the model reads it as \
             written"
        ),
        ParseStatus::Partial | ParseStatus::Full => {
            println!(
                "note read as {} -> the model reads \"{model_text}\"",
                r.finding
            );
            if !r.unknown.is_empty() || !r.unresolved.is_empty() {
                eprintln!(
                    "warning: the note was read only in part: unknown words [{}]{}",
                    r.unknown.join(", "),
                    if r.unresolved.is_empty() {
                        String::new()
                    } else {
                        format!("; zones without a side [{}]", r.unresolved.join(", "))
                    }
                );
            }
        }
    }
    for (from, to) in &r.corrections {
        eprintln!("note: read \"{from}\" as \"{to}\"");
    }
}

fn print_summary(pred: &Prediction) {
    let n = pred.mask.iter().filter(|&&m| m != 0).count();
    println!(
        "mask: {} pixels, {:.1}% of {}×{}",
        thousands(n as u64),
        100.0 * pred.mask_fraction(),
        pred.size,
        pred.size
    );
    let words: Vec<String> = pred
        .top_words(5)
        .iter()
        .map(|w| format!("{} {:.3}", w.word, w.weight))
        .collect();
    println!("words the model relied on most (WOI): {}", words.join(", "));
}

fn warn_truncated(cfg: &ModelConfig, cut: &[Vec<String>]) {
    let notes = cut.iter().filter(|c| !c.is_empty()).count();
    if let Some(first) = cut.iter().find(|c| !c.is_empty()) {
        if notes == 1 {
            eprintln!(
                "warning: the note is longer than the model's {} tokens; left out: {}",
                cfg.context,
                first.join(" ")
            );
        } else {
            eprintln!(
                "warning: {notes} notes are longer than the model's {} tokens and were cut (as \
                 CLIP does); see truncated_words in their woi.json",
                cfg.context
            );
        }
    }
}

fn predict_many(args: &PredictArgs, images: &Path, notes: &Path) -> Result<()> {
    let opts = FolderOptions {
        allow_missing_notes: args.allow_missing_notes,
        read: ReadOptions { slice: args.slice },
    };
    // Notes and names are checked before the model is loaded.
    let plan = predict::plan_folder(images, notes, &args.out, &opts)?;
    let missing = plan.iter().filter(|i| i.missing_note).count();
    if missing > 0 {
        eprintln!("warning: {missing} images have no note and are predicted with the empty note");
    }
    create_dir(&args.out)?;
    let loaded = load_checkpoint(&args.checkpoint)?;
    let bar = ProgressBar::new(plan.len() as u64).with_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} images, {elapsed} (eta {eta}) {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let results = predict::predict_folder(
        &loaded.model,
        images,
        notes,
        &args.out,
        &opts,
        |_, item, _| {
            bar.set_message(
                item.image
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
            );
            bar.inc(1);
        },
    )?;
    bar.finish_and_clear();
    let cut: Vec<Vec<String>> = results.iter().map(|r| r.truncated_words.clone()).collect();
    warn_truncated(&loaded.model.cfg, &cut);
    let readings: Vec<_> = results.iter().filter_map(|r| r.reading.as_ref()).collect();
    if !readings.is_empty() {
        use reclmis::finding::ParseStatus;
        let count = |s: ParseStatus| readings.iter().filter(|r| r.status == s).count();
        println!(
            "notes read as canonical sentences: {} parsed fully, {} in part, {} not understood \
             (those are read as written); see reading in each woi.json",
            count(ParseStatus::Full),
            count(ParseStatus::Partial),
            count(ParseStatus::Unparsed)
        );
    }
    let empty = results.iter().filter(|r| r.mask_fraction == 0.0).count();
    println!(
        "predicted {} images into {} (one folder each); {} with an empty mask",
        results.len(),
        args.out.display(),
        empty
    );
    Ok(())
}

fn run_import(args: ImportArgs) -> Result<()> {
    let device = device()?;
    let reclmis::app::Imported { model, cfg, state } =
        reclmis::app::import(&args.src, args.preset, args.seed, &device)?;
    if let Some(dir) = args.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        create_dir(dir)?;
    }
    ours::save(&args.out, &model, &state, SaveOptions::default()).map_err(Error::from)?;
    let ins = reclmis::inspect::table(
        &cfg,
        &reclmis::model::weights::named_shapes(&model),
        args.out.display().to_string(),
    );
    println!(
        "wrote {}: preset {}, image {}×{}, text encoder {}, {} parameters ({} trainable)",
        args.out.display(),
        cfg.preset,
        cfg.image_size,
        cfg.image_size,
        cfg.text_encoder.kind(),
        thousands(ins.totals.all),
        thousands(ins.totals.trainable)
    );
    Ok(())
}

fn run_export(args: ExportArgs) -> Result<()> {
    if let Some(dir) = args.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        create_dir(dir)?;
    }
    let opts = ours::ExportOptions {
        dtype: if args.fp16 {
            ours::StoreDtype::F16
        } else {
            ours::StoreDtype::F32
        },
        inference_only: args.inference_only,
    };
    let e = ours::export(&args.checkpoint, &args.out, opts, &device()?).map_err(Error::from)?;
    let left_out = if e.inference_only {
        format!(
            ", inference-only ({} training-only tensors left out)",
            e.left_out
        )
    } else {
        String::new()
    };
    println!(
        "wrote {} from {}: {} tensors in {}{left_out}, {:.1} MB",
        args.out.display(),
        e.source.display(),
        e.tensors,
        if args.fp16 { "float16" } else { "float32" },
        e.bytes as f64 / 1e6
    );
    Ok(())
}

fn run_inspect(args: InspectArgs) -> Result<()> {
    let ins: Inspection = match (&args.preset, &args.checkpoint) {
        (Some(p), None) => inspect_config(&ModelConfig::preset(*p)),
        (None, Some(c)) => inspect_checkpoint(c)?,
        _ => return Err(Error::Usage("give --preset or --checkpoint".into()).into()),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&ins)?);
    } else {
        println!("{ins}");
    }
    Ok(())
}

fn run_notes(args: NotesArgs) -> Result<()> {
    use reclmis::data::audit::NotesAudit;
    let notes = reclmis::data::Notes::read(&args.file).map_err(Error::from)?;
    let reference = args
        .reference
        .as_deref()
        .map(reclmis::data::Notes::read)
        .transpose()
        .map_err(Error::from)?;
    let audit = NotesAudit::of(&notes, reference.as_ref());
    if let Some(out) = &args.paraphrase_to {
        let mut w = csv::Writer::from_writer(Vec::new());
        w.write_record(["Image", "Description"])?;
        for (i, note) in notes.iter().enumerate() {
            let mut rng = reclmis::rng::SplitMix64::new(args.seed ^ ((i as u64) << 20));
            let text = reclmis::data::paraphrase::paraphrase_note(&note.text, &mut rng)
                .unwrap_or_else(|| note.text.clone());
            w.write_record([note.key.as_str(), text.as_str()])?;
        }
        let bytes = w.into_inner().map_err(|e| anyhow::anyhow!("{e}"))?;
        reclmis::files::write_atomic(out, &bytes).map_err(|source| Error::Io {
            path: out.clone(),
            source,
        })?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&audit)?);
        return Ok(());
    }
    println!("{}: {}", args.file.display(), audit.summary());
    let unknown = audit.unknown_words();
    if !unknown.is_empty() {
        let words: Vec<String> = unknown
            .iter()
            .take(30)
            .map(|(w, c)| format!("{w} ×{c}"))
            .collect();
        println!(
            "unknown words (kept in the raw text, ignored by the grammar): {}",
            words.join(", ")
        );
    }
    if !audit.missing_in_reference.is_empty() {
        println!(
            "{} keys are not in the reference, e.g. {}",
            audit.missing_in_reference.len(),
            audit.missing_in_reference[0]
        );
    }
    let odd = audit
        .notes
        .iter()
        .filter(|n| n.status != reclmis::finding::ParseStatus::Full || n.agrees == Some(false));
    for n in odd.take(args.show) {
        println!(
            "  row {} [{}{}] {:?} -> {}",
            n.row,
            n.status,
            if n.agrees == Some(false) {
                ", disagrees"
            } else {
                ""
            },
            n.text,
            n.finding
        );
    }
    Ok(())
}
