//! The report folder of `reclmis demo`: `index.html` with the headline numbers, `curves.png`
//! (also written by `train`), and for a few test images the input, the ground truth and what the
//! model made of it with its own note and with another image's note.
//!
//! Every file is written atomically; the page is self-contained (inline CSS, relative links to
//! the PNGs beside it, no script), so the folder can be copied or zipped as it is.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Once;

use burn::module::Module;
use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::Error;
use crate::data::ImageU8;
use crate::data::dataset::Sample;
use crate::data::metrics::test_scores;
use crate::demo::{DemoConfig, DemoOutcome, DemoReport};
use crate::eval::{TextMode, notes_for};
use crate::predict::{Prediction, WordWeight, predict_image};
use crate::report::{
    colour_map, heatmap_overlay, normalise, overlay_mask, to_rgb, upsample_bilinear, write_file,
    write_png,
};
use crate::train::EpochMetrics;

/// What [`write_report`] wrote.
#[derive(Clone, Debug)]
pub struct ReportFiles {
    pub index: PathBuf,
    pub curves: PathBuf,
    /// The example pictures, five per test image, in page order.
    pub examples: Vec<PathBuf>,
}

/// Pictures are enlarged (nearest neighbour, whole factors) to at least this many pixels a side,
/// so a 64 px phantom is not a thumbnail on the page.
const MIN_DISPLAY: usize = 256;

/// Size of `curves.png`: two panels side by side.
const CURVES_W: u32 = 1200;
const CURVES_H: u32 = 440;

/// Name under which the embedded font is registered with plotters.
const FONT: &str = "reclmis-sans";
/// DejaVu Sans cut down to ASCII (10 KB); licence in `assets/DejaVu-LICENSE`.
static FONT_BYTES: &[u8] = include_bytes!("../assets/DejaVuSans-subset.ttf");

/// Dice (as a fraction) by which the own notes must beat the shuffled ones for the page to say the
/// notes matter.
const NOTE_MATTERS: f64 = 0.02;

/// WOI weight at which a word of a note is shaded fully (unless another word weighs more).
const FULL_SHADE: f32 = 0.25;

/// WOI words listed per note.
const TOP_WORDS: usize = 4;

/// The five pictures of one example: file suffix, column title, what it shows.
const PICTURES: [(&str, &str, &str); 5] = [
    ("input", "Input", "the test image"),
    (
        "truth",
        "Ground truth",
        "the lesions its note names (distractors are not in the mask)",
    ),
    ("pred", "Prediction", "with the image's own note"),
    (
        "poi",
        "POI",
        "the patches the model weighed, with its own note (bright = heavy)",
    ),
    (
        "shuffled",
        "Shuffled note",
        "prediction with another image's note",
    ),
];

/// Writes `curves.png`, the example pictures under `examples/` and `index.html` into `out`
/// (`report.json` is written by [`crate::demo::run`]). The examples are the first
/// `cfg.n_examples` test images, predicted with their own note and with the note the shuffled
/// evaluation gave them.
pub fn write_report(
    out: &Path,
    outcome: &DemoOutcome,
    cfg: &DemoConfig,
) -> Result<ReportFiles, Error> {
    let examples_dir = out.join("examples");
    std::fs::create_dir_all(&examples_dir).map_err(|source| Error::Io {
        path: examples_dir.clone(),
        source,
    })?;
    let curves = out.join("curves.png");
    write_curves(&curves, &outcome.report.history)?;

    let model = &outcome.trainer.model;
    let mcfg = &outcome.trainer.cfg.model;
    let test = &outcome.test;
    let shuffled = notes_for(test, TextMode::Shuffled, cfg.seed);
    let mut examples = Vec::new();
    let mut rows = Vec::new();
    for (sample, shuffled_note) in test.samples.iter().zip(&shuffled).take(cfg.n_examples) {
        let img = planar_to_image(sample, test.size);
        let own = predict_image(model, mcfg, &img, &sample.note);
        let other = predict_image(model, mcfg, &img, shuffled_note);
        let pictures = example_pictures(&img, &sample.mask, &own, &other);
        let side = pictures.side;
        let mut files = Vec::with_capacity(PICTURES.len());
        for ((suffix, _, _), rgb) in PICTURES.iter().zip(&pictures.rgb) {
            let name = format!("{}-{suffix}.png", sample.key);
            let path = examples_dir.join(&name);
            write_png(&path, side, side, 3, rgb)?;
            examples.push(path);
            files.push(format!("examples/{name}"));
        }
        rows.push(ExampleRow {
            key: sample.key.clone(),
            own_dice: f64::from(test_scores(&own.prob, &sample.mask).dice),
            other_dice: f64::from(test_scores(&other.prob, &sample.mask).dice),
            own,
            other,
            files,
        });
    }

    let index = out.join("index.html");
    let facts = RunFacts {
        parameters: model.num_params() as u64,
        n_train: cfg.n_train,
        n_val: cfg.n_val,
    };
    let html = render_html(&outcome.report, &facts, &rows);
    write_file(&index, html.as_bytes())?;
    Ok(ReportFiles {
        index,
        curves,
        examples,
    })
}

/// Writes the training curves of `history` as a PNG: the training loss and its four parts on the
/// left, train and validation Dice on the right, one point per epoch.
pub fn write_curves(path: &Path, history: &[EpochMetrics]) -> Result<(), Error> {
    let rgb = render_curves(history).map_err(|e| Error::Io {
        path: path.to_path_buf(),
        source: std::io::Error::other(format!("drawing the curves failed: {e}")),
    })?;
    write_png(path, CURVES_W as usize, CURVES_H as usize, 3, &rgb)
}

/// Registers the embedded font with plotters' global font table (once per process).
fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let ok = plotters::style::register_font(FONT, FontStyle::Normal, FONT_BYTES).is_ok();
        assert!(
            ok,
            "the embedded DejaVu Sans subset is a valid TrueType font"
        );
    });
}

/// One line of a panel: label, colour and the value of each epoch.
struct Curve {
    label: &'static str,
    colour: RGBColor,
    value: fn(&EpochMetrics) -> f64,
}

const LOSS_CURVES: [Curve; 5] = [
    Curve {
        label: "total",
        colour: RGBColor(20, 20, 20),
        value: |m| m.train_loss,
    },
    Curve {
        label: "criterion (Dice + BCE)",
        colour: RGBColor(214, 39, 40),
        value: |m| m.train_criterion,
    },
    Curve {
        label: "CCL",
        colour: RGBColor(31, 119, 180),
        value: |m| if m.aux { m.train_ccl } else { f64::NAN },
    },
    Curve {
        label: "text reconstruction",
        colour: RGBColor(44, 160, 44),
        value: |m| if m.aux { m.train_text_rec } else { f64::NAN },
    },
    Curve {
        label: "image reconstruction",
        colour: RGBColor(148, 103, 189),
        value: |m| if m.aux { m.train_img_rec } else { f64::NAN },
    },
];

const DICE_CURVES: [Curve; 2] = [
    Curve {
        label: "train Dice",
        colour: RGBColor(31, 119, 180),
        value: |m| m.train_dice,
    },
    Curve {
        label: "validation Dice",
        colour: RGBColor(255, 127, 14),
        value: |m| m.val_dice,
    },
];

type PlotError = Box<dyn std::error::Error>;

/// RGB pixels of the curves (`CURVES_W × CURVES_H`).
fn render_curves(history: &[EpochMetrics]) -> Result<Vec<u8>, PlotError> {
    register_font();
    let mut buf = vec![0u8; (CURVES_W * CURVES_H * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (CURVES_W, CURVES_H)).into_drawing_area();
        root.fill(&WHITE)?;
        let panels = root.split_evenly((1, 2));
        let loss_max = LOSS_CURVES
            .iter()
            .flat_map(|c| history.iter().map(c.value))
            .filter(|v| v.is_finite())
            .fold(0.0f64, f64::max);
        draw_panel(
            &panels[0],
            history,
            "Training loss",
            "loss",
            // Headroom so the first epoch's total is not drawn on the frame.
            (0.0, nice_ceiling(1.05 * loss_max)),
            &LOSS_CURVES,
            SeriesLabelPosition::UpperRight,
        )?;
        draw_panel(
            &panels[1],
            history,
            "Dice per epoch",
            "Dice",
            (0.0, 1.0),
            &DICE_CURVES,
            SeriesLabelPosition::LowerRight,
        )?;
        root.present()?;
    }
    Ok(buf)
}

fn draw_panel(
    area: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
    history: &[EpochMetrics],
    title: &str,
    y_desc: &str,
    (y0, y1): (f64, f64),
    curves: &[Curve],
    legend: SeriesLabelPosition,
) -> Result<(), PlotError> {
    let epochs = history.iter().map(|m| m.epoch).max().unwrap_or(1).max(1);
    // Whole epochs on the x axis, half an epoch of margin either side so a single epoch's point is
    // not on the frame.
    let x_range = 0.5..epochs as f64 + 0.5;
    let mut chart = ChartBuilder::on(area)
        .caption(title, (FONT, 20))
        .margin(14)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d(x_range, y0..y1)?;
    let decimals = if y1 - y0 >= 5.0 {
        0
    } else if y1 - y0 >= 0.5 {
        1
    } else {
        2
    };
    chart
        .configure_mesh()
        .x_labels(epochs.min(10) + 2)
        .x_label_formatter(&|x| {
            let e = x.round();
            // Plotters puts ticks on round numbers, halves included; only whole epochs get a label.
            let whole = (x - e).abs() < 1e-6 && e >= 1.0;
            if whole {
                format!("{e:.0}")
            } else {
                String::new()
            }
        })
        .y_labels(6)
        .y_label_formatter(&|y| format!("{y:.decimals$}"))
        .x_desc("epoch")
        .y_desc(y_desc)
        .label_style((FONT, 14))
        .axis_desc_style((FONT, 15))
        .light_line_style(RGBColor(238, 238, 238))
        .bold_line_style(RGBColor(215, 215, 215))
        .draw()?;
    for c in curves {
        let points: Vec<(f64, f64)> = history
            .iter()
            .map(|m| (m.epoch as f64, (c.value)(m)))
            .filter(|(_, v)| v.is_finite())
            .collect();
        let colour = c.colour;
        chart
            .draw_series(LineSeries::new(
                points.iter().copied(),
                colour.stroke_width(2),
            ))?
            .label(c.label)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], colour.stroke_width(2)));
        // Dots mark the epochs while they are few enough to tell apart.
        if points.len() <= 20 {
            chart.draw_series(points.iter().map(|&p| Circle::new(p, 3, colour.filled())))?;
        }
    }
    chart
        .configure_series_labels()
        .position(legend)
        .label_font((FONT, 14))
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(200, 200, 200))
        .margin(10)
        .draw()?;
    Ok(())
}

/// The smallest round number (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8 × a power of ten) at or above
/// `v` (1 when `v` is not positive), so the loss axis ends on a round number close to the data.
fn nice_ceiling(v: f64) -> f64 {
    if !(v.is_finite() && v > 0.0) {
        return 1.0;
    }
    let p = 10f64.powf(v.log10().floor());
    [1.0, 1.2, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0]
        .iter()
        .map(|m| m * p)
        .find(|&c| c >= v * (1.0 - 1e-12))
        .unwrap_or(10.0 * p)
}

/// A dataset sample (`[3, S, S]` B, G, R planes) as an interleaved image.
fn planar_to_image(sample: &Sample, size: usize) -> ImageU8 {
    let plane = size * size;
    let data = (0..plane)
        .flat_map(|i| [0, 1, 2].map(|c| sample.image[c * plane + i]))
        .collect();
    ImageU8 {
        width: size,
        height: size,
        channels: 3,
        data,
    }
}

/// Whole-number nearest-neighbour enlargement of a `[size, size]` grid of `channels`-byte pixels.
fn enlarge<T: Copy>(data: &[T], size: usize, channels: usize, factor: usize) -> Vec<T> {
    let side = size * factor;
    let mut out = Vec::with_capacity(side * side * channels);
    for y in 0..side {
        let row = &data[(y / factor) * size * channels..(y / factor + 1) * size * channels];
        for x in 0..side {
            let at = (x / factor) * channels;
            out.extend_from_slice(&row[at..at + channels]);
        }
    }
    out
}

struct Pictures {
    side: usize,
    /// RGB, in the order of [`PICTURES`].
    rgb: [Vec<u8>; 5],
}

/// The five pictures of an example at display size. The image and masks are enlarged first and
/// the overlays drawn after, so outlines stay thin and the POI heatmap is smooth rather than
/// blocky.
fn example_pictures(img: &ImageU8, truth: &[u8], own: &Prediction, other: &Prediction) -> Pictures {
    let size = img.width;
    let factor = MIN_DISPLAY.div_ceil(size).max(1);
    let side = size * factor;
    let big = ImageU8 {
        width: side,
        height: side,
        channels: img.channels,
        data: enlarge(&img.data, size, img.channels, factor),
    };
    let mask = |m: &[u8]| enlarge(m, size, 1, factor);
    let heat = upsample_bilinear(&normalise(&own.poi), own.grid, own.grid, side, side);
    Pictures {
        side,
        rgb: [
            to_rgb(&big),
            overlay_mask(&big, &mask(truth)),
            overlay_mask(&big, &mask(&own.mask)),
            heatmap_overlay(&big, &heat),
            overlay_mask(&big, &mask(&other.mask)),
        ],
    }
}

struct ExampleRow {
    key: String,
    own: Prediction,
    other: Prediction,
    own_dice: f64,
    other_dice: f64,
    /// Relative paths of the pictures, in the order of [`PICTURES`].
    files: Vec<String>,
}

/// What the page shows beside the report's own numbers.
struct RunFacts {
    parameters: u64,
    n_train: u64,
    n_val: u64,
}

const CSS: &str = r#"
:root { --ink: #1d2330; --muted: #5b6475; --line: #dfe3ea; --accent: #c62828; --bg: #f6f7f9; }
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--ink);
  font: 15px/1.5 -apple-system, "Segoe UI", "DejaVu Sans", Helvetica, Arial, sans-serif; }
main { max-width: 1240px; margin: 0 auto; padding: 28px 24px 48px; }
h1 { font-size: 30px; margin: 0 0 4px; letter-spacing: -0.5px; }
h2 { font-size: 20px; margin: 34px 0 12px; }
p.lede { color: var(--muted); margin: 0 0 22px; max-width: 900px; }
section.card, div.card { background: #fff; border: 1px solid var(--line); border-radius: 10px;
  padding: 18px 20px; }
.top { display: grid; grid-template-columns: 1.1fr 1fr; gap: 18px; }
.scores { display: grid; grid-template-columns: repeat(3, 1fr); gap: 12px; margin-bottom: 12px; }
.score { border: 1px solid var(--line); border-radius: 8px; padding: 10px 12px; }
.score .label { color: var(--muted); font-size: 13px; }
.score .big { font-size: 28px; font-weight: 650; }
.score .small { color: var(--muted); font-size: 13px; }
.score.true { border-color: #2e7d32; background: #f1f8f1; }
.verdict { margin: 4px 0 0; }
table.facts { border-collapse: collapse; width: 100%; font-size: 14px; }
table.facts th { text-align: left; font-weight: 600; color: var(--muted); padding: 4px 14px 4px 0;
  vertical-align: top; white-space: nowrap; }
table.facts td { padding: 4px 0; }
img.curves { width: 100%; height: auto; display: block; }
.data p { margin: 0 0 8px; }
.example { margin-bottom: 18px; }
.example h3 { font-size: 16px; margin: 0 0 10px; font-family: "DejaVu Sans Mono", monospace; }
.notes { display: grid; grid-template-columns: 1fr 1fr; gap: 14px; margin-bottom: 12px; }
.note { border-left: 4px solid #2e7d32; padding: 4px 10px; }
.note.other { border-left-color: #9e9e9e; }
.note .which { font-size: 12px; text-transform: uppercase; letter-spacing: 0.6px; color: var(--muted); }
.note .text { margin: 2px 0 4px; }
.note .text span { border-radius: 3px; padding: 0 1px; }
.note .top { display: block; font-size: 13px; color: var(--muted); }
.note .dice { font-weight: 600; color: var(--ink); }
.pics { display: grid; grid-template-columns: repeat(5, 1fr); gap: 10px; }
figure { margin: 0; }
figure img { width: 100%; height: auto; display: block; border-radius: 4px; }
figcaption { font-size: 13px; margin-top: 4px; }
figcaption b { display: block; }
figcaption span { color: var(--muted); }
.legend { display: flex; align-items: center; gap: 8px; font-size: 13px; color: var(--muted);
  margin: 0 0 14px; }
.legend .sw { width: 18px; height: 14px; border: 2px solid rgb(255,225,0);
  background: rgba(235,45,45,0.6); border-radius: 3px; }
.legend .grad { width: 120px; height: 14px; border-radius: 3px; margin-left: 18px; }
footer { color: var(--muted); font-size: 13px; margin-top: 30px; }
code { font-family: "DejaVu Sans Mono", monospace; font-size: 13px; }
"#;

/// The page.
fn render_html(r: &DemoReport, facts: &RunFacts, rows: &[ExampleRow]) -> String {
    let d = &r.demo;
    let m = &r.train.model;
    let mut h = String::new();
    let pct = |v: f64| format!("{:.1}", 100.0 * v);
    h.push_str("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    h.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n");
    h.push_str("<title>reclmis demo</title>\n<style>");
    h.push_str(CSS);
    h.push_str("</style>\n</head>\n<body>\n<main>\n<h1>reclmis demo</h1>\n");
    let _ = writeln!(
        h,
        "<p class=\"lede\">A reduced RecLMIS, trained for {} epochs on procedurally generated \
         chest-X-ray-like phantoms, segments the lesions a short clinical note describes. It is \
         tested on {} unseen phantoms three ways: with each image's own note, with another \
         image's note (shuffled), and with an empty note. A model that reads the notes finds the \
         lesions only with the image's own note.</p>",
        r.history.len(),
        r.n_test
    );

    // Headline numbers and run facts.
    h.push_str("<div class=\"top\">\n<section class=\"card\">\n");
    h.push_str("<h2 style=\"margin-top:0\">Test scores</h2>\n<div class=\"scores\">\n");
    for (class, label, dice, miou) in [
        ("score true", "own note", r.dice_true, r.miou_true),
        ("score", "shuffled note", r.dice_shuffled, r.miou_shuffled),
        ("score", "empty note", r.dice_empty, r.miou_empty),
    ] {
        let _ = writeln!(
            h,
            "<div class=\"{class}\"><div class=\"label\">{label}</div>\
             <div class=\"big\">{}</div><div class=\"small\">Dice ×100 · mIoU {}</div></div>",
            pct(dice),
            pct(miou)
        );
    }
    h.push_str("</div>\n");
    let gap = r.dice_true - r.dice_shuffled;
    let verdict = if gap >= NOTE_MATTERS {
        format!(
            "The notes matter: Dice falls by {} points when each image gets another image's note.",
            pct(gap)
        )
    } else if gap <= -NOTE_MATTERS {
        format!(
            "Shuffled notes score {} Dice points higher than the images' own notes: the model has \
             not learnt to read the notes.",
            pct(-gap)
        )
    } else {
        format!(
            "The notes barely matter in this run: Dice changes by {} points with shuffled notes, \
             so the model segments from the image alone.",
            pct(gap.abs())
        )
    };
    let _ = writeln!(
        h,
        "<p class=\"verdict\">{}</p>\n<p class=\"small\" style=\"color:var(--muted);font-size:13px;\
         margin:4px 0 0\">Mean per-image Dice and IoU over {} test images at threshold 0.5 (the \
         LViT test protocol).</p>",
        esc(&verdict),
        r.n_test
    );
    h.push_str("</section>\n<section class=\"card\">\n<h2 style=\"margin-top:0\">Run</h2>\n");
    h.push_str("<table class=\"facts\">\n");
    let text_layers = match &m.text_encoder {
        crate::model::TextEncoderConfig::Builtin { layers, .. }
        | crate::model::TextEncoderConfig::Clip { layers, .. } => *layers,
    };
    let parity = if m.parity.differences().is_empty() {
        format!("{} (the authors' computations, quirks included)", r.parity)
    } else {
        format!(
            "{} (fixes: {})",
            r.parity,
            m.parity.differences().join("; ")
        )
    };
    let fact_rows = [
        (
            "Model",
            format!(
                "{} px input, base channels {}, {}-layer reconstructors, {} parameters",
                m.image_size,
                m.base_channels,
                m.rec_layers,
                crate::inspect::thousands(facts.parameters)
            ),
        ),
        (
            "Text encoder",
            format!("{} ({} layers)", r.text_encoder, text_layers),
        ),
        ("Parity", parity),
        ("Convolutions", r.precision.clone()),
        (
            "Tested weights",
            r.evaluated_epoch.map_or("the last epoch's".into(), |e| {
                format!("epoch {e} (best validation Dice)")
            }),
        ),
        (
            "Data",
            if d.fresh_train {
                format!(
                    "{} new training phantoms every epoch ({} in all), {} validation, {} test",
                    facts.n_train,
                    facts.n_train * r.history.len() as u64,
                    facts.n_val,
                    r.n_test
                )
            } else {
                format!(
                    "{} train, {} validation, {} test phantoms",
                    facts.n_train, facts.n_val, r.n_test
                )
            },
        ),
        (
            "Training",
            format!(
                "{} epochs, batch {}, learning rate {}{}, {:.0} s ({:.0} s in all, {} threads)",
                r.history.len(),
                r.train.batch_size,
                r.train.lr,
                match r.train.aux_from_epoch {
                    0 => String::new(),
                    k => format!(
                        "; segmentation loss alone for {}, then all losses",
                        n_epochs(k)
                    ),
                },
                r.train_seconds,
                r.total_seconds,
                r.threads
            ),
        ),
        ("Seed", d.seed.to_string()),
    ];
    for (k, v) in fact_rows {
        let _ = writeln!(h, "<tr><th>{k}</th><td>{}</td></tr>", esc(&v));
    }
    h.push_str("</table>\n</section>\n</div>\n");

    // The data.
    h.push_str(
        "<h2>The data</h2>\n<section class=\"card data\">\n\
         <p>Every image is a <b>phantom</b>, not a patient: a synthetic chest X-ray with a body \
         outline, two lung fields, ribs, spine and heart shadow, drawn from a seed. Each lung is \
         split into upper, middle and lower zones, as in QaTa-COV19's notes.</p>\n\
         <p><b>Lesions</b> (soft opacities) lie in the zones the note names; they are the mask. \
         <b>Distractors</b> of exactly the same appearance lie in zones the note does not name and \
         are not in the mask. An image alone cannot tell them apart; the note can.</p>\n\
         <p>Images follow the <b>radiological convention</b>: the patient faces you, so the \
         patient's <i>left</i> lung is on the <i>right</i> of the image. Notes speak of the \
         patient's sides.</p>\n</section>\n",
    );

    // Curves.
    let _ = write!(
        h,
        "<h2>Training curves</h2>\n<section class=\"card\">\n\
         <img class=\"curves\" src=\"curves.png\" alt=\"Training loss and its parts (left); train \
         and validation Dice per epoch (right)\">\n\
         <p style=\"color:var(--muted);font-size:13px;margin:8px 0 0\">Left: the training loss \
         (mean over the epoch) and its parts: the segmentation criterion (Dice + BCE), the \
         cross-modal conditioned loss CCL between POI and WOI, and the text and image \
         reconstruction losses{}. Right: Dice on the training batches and on the validation set \
         after each epoch.</p>\n</section>\n",
        match r.train.aux_from_epoch {
            0 => String::new(),
            k => format!(
                " (the last three from epoch {}: the first {} train the segmentation alone)",
                k + 1,
                n_epochs(k)
            ),
        }
    );

    // Examples.
    let _ = writeln!(
        h,
        "<h2>Test examples</h2>\n<p style=\"color:var(--muted);margin:-4px 0 8px\">The first {} \
         test images with the note they were generated with (own) and the note the shuffled \
         evaluation gave them. The words of each note are shaded by their WOI weight, the \
         attention the model gave them (padding the authors append to short notes, \
         <code>EOF XXX</code>, also takes weight and is not shown).</p>",
        rows.len()
    );
    let gradient: Vec<String> = (0..=4)
        .map(|i| {
            let [r, g, b] = colour_map(i as f32 / 4.0);
            format!("rgb({r},{g},{b})")
        })
        .collect();
    let _ = writeln!(
        h,
        "<div class=\"legend\"><span class=\"sw\"></span>mask (lesions found or expected)\
         <span class=\"grad\" style=\"background:linear-gradient(to right,{})\"></span>POI \
         weight, low to high</div>",
        gradient.join(",")
    );
    for row in rows {
        h.push_str("<section class=\"card example\">\n");
        let _ = writeln!(h, "<h3>{}</h3>\n<div class=\"notes\">", esc(&row.key));
        note_html(&mut h, "own note", "note", &row.own, row.own_dice);
        note_html(
            &mut h,
            "shuffled note",
            "note other",
            &row.other,
            row.other_dice,
        );
        h.push_str("</div>\n<div class=\"pics\">\n");
        for ((_, title, what), file) in PICTURES.iter().zip(&row.files) {
            let _ = writeln!(
                h,
                "<figure><img src=\"{}\" alt=\"{title}: {what}\">\
                 <figcaption><b>{title}</b><span>{what}</span></figcaption></figure>",
                esc(file)
            );
        }
        h.push_str("</div>\n</section>\n");
    }

    h.push_str(
        "<footer>Numbers: <code>report.json</code>. Checkpoints and per-epoch metrics: \
         <code>run/</code>. Written by <code>reclmis demo</code>.</footer>\n</main>\n</body>\n\
         </html>\n",
    );
    h
}

/// One note: its words shaded by WOI weight, its heaviest words, and the Dice it led to.
fn note_html(h: &mut String, which: &str, class: &str, pred: &Prediction, dice: f64) {
    let words: Vec<&WordWeight> = pred.woi.iter().filter(|w| !w.padding).collect();
    // Shade relative to the heaviest word, but never more than a quarter of the attention counts as
    // full: near-uniform WOI then looks pale instead of all words looking heavy.
    let full = words.iter().map(|w| w.weight).fold(FULL_SHADE, f32::max);
    let _ = write!(
        h,
        "<div class=\"{class}\"><div class=\"which\">{which} · Dice <span class=\"dice\">{:.1}\
         </span></div><div class=\"text\">",
        100.0 * dice
    );
    for (i, w) in words.iter().enumerate() {
        let alpha = 0.55 * w.weight.max(0.0) / full;
        // Punctuation is a word of its own to the tokenizer; no space before it.
        let glue = i > 0 && w.word.chars().any(char::is_alphanumeric);
        let _ = write!(
            h,
            "{}<span style=\"background:rgba(235,45,45,{alpha:.2})\" title=\"WOI {:.3}\">{}</span>",
            if glue { " " } else { "" },
            w.weight,
            esc(&w.word)
        );
    }
    if words.is_empty() {
        h.push_str("<i>(empty)</i>");
    }
    h.push_str("</div><span class=\"top\">top words: ");
    // Words that got nothing are not worth listing (trained WOI is often nearly one-hot), nor is
    // punctuation.
    let mut ranked: Vec<&WordWeight> = words
        .iter()
        .copied()
        .filter(|w| w.weight >= 5e-4 && w.word.chars().any(char::is_alphanumeric))
        .collect();
    ranked.sort_by(|a, b| b.weight.total_cmp(&a.weight));
    let top: Vec<String> = ranked
        .iter()
        .take(TOP_WORDS)
        .map(|w| format!("{} {:.3}", esc(&w.word), w.weight))
        .collect();
    h.push_str(&if top.is_empty() {
        "none".to_owned()
    } else {
        top.join(" · ")
    });
    // A note's closing full stop often falls past the context; only words are worth a mention.
    let cut: Vec<&str> = pred
        .truncated_words
        .iter()
        .map(String::as_str)
        .filter(|w| w.chars().any(char::is_alphanumeric))
        .collect();
    if !cut.is_empty() {
        let _ = write!(h, "; past the token context: {}", esc(&cut.join(" ")));
    }
    h.push_str("</span></div>\n");
}

/// Text for HTML element content and attribute values.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// "1 epoch", "10 epochs".
fn n_epochs(n: usize) -> String {
    if n == 1 {
        "1 epoch".into()
    } else {
        format!("{n} epochs")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> DemoConfig {
        DemoConfig {
            seed: 3,
            image_size: 32,
            base_channels: 8,
            text_layers: 1,
            rec_layers: 1,
            n_train: 32,
            n_val: 8,
            n_test: 8,
            epochs: 2,
            batch_size: 8,
            lr: 1e-3,
            n_examples: 3,
            // One epoch without the auxiliary losses and one with them.
            aux_from_epoch: 1,
            ..DemoConfig::default()
        }
    }

    fn png_size(path: &Path) -> (u32, u32) {
        let img = image::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        (img.width(), img.height())
    }

    #[test]
    fn the_report_folder_holds_the_page_the_curves_and_the_examples() {
        let dir = std::env::temp_dir().join(format!("reclmis-demo-report-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let cfg = tiny();
        let outcome = crate::demo::run(&cfg, Some(&dir), &mut |_| {}).unwrap();
        let aux: Vec<bool> = outcome.report.history.iter().map(|m| m.aux).collect();
        assert_eq!(aux, [false, true], "auxiliary losses from the second epoch");
        assert_eq!(outcome.report.history[0].train_ccl, 0.0);
        assert!(outcome.report.history[1].train_ccl > 0.0);
        let files = write_report(&dir, &outcome, &cfg).unwrap();

        assert_eq!(files.index, dir.join("index.html"));
        assert_eq!(png_size(&files.curves), (CURVES_W, CURVES_H));
        // 3 examples × 5 pictures, 32 px enlarged ×8 to 256 px.
        assert_eq!(files.examples.len(), 15);
        for p in &files.examples {
            assert_eq!(png_size(p), (256, 256), "{}", p.display());
        }
        let html = std::fs::read_to_string(&files.index).unwrap();
        assert!(html.starts_with("<!DOCTYPE html>"));
        assert!(html.contains("<title>reclmis demo</title>"));
        assert!(html.contains("src=\"curves.png\""));
        assert!(html.contains("segmentation loss alone for 1 epoch, then all losses"));
        assert!(html.contains("32 new training phantoms every epoch (64 in all)"));
        for p in &files.examples {
            let rel = p
                .strip_prefix(&dir)
                .unwrap()
                .to_string_lossy()
                .replace('\\', "/");
            assert!(
                html.contains(&format!("src=\"{rel}\"")),
                "{rel} not on the page"
            );
        }
        // Every image the page links exists.
        let linked: Vec<&str> = html
            .split("src=\"")
            .skip(1)
            .map(|s| &s[..s.find('"').unwrap()])
            .collect();
        assert_eq!(linked.len(), 16);
        assert!(linked.iter().all(|l| dir.join(l).is_file()));
        // Headline numbers as the report has them, and both notes of the first example.
        let r = &outcome.report;
        let cards: Vec<usize> = [
            ("own note", r.dice_true, r.miou_true),
            ("shuffled note", r.dice_shuffled, r.miou_shuffled),
            ("empty note", r.dice_empty, r.miou_empty),
        ]
        .iter()
        .map(|(label, dice, miou)| {
            let card = format!(
                "<div class=\"label\">{label}</div><div class=\"big\">{:.1}</div>\
                 <div class=\"small\">Dice ×100 · mIoU {:.1}</div>",
                100.0 * dice,
                100.0 * miou
            );
            html.find(&card).unwrap_or_else(|| panic!("no card {card}"))
        })
        .collect();
        assert!(cards.windows(2).all(|w| w[0] < w[1]));
        let first = &outcome.test.samples[0];
        let first_word = |n: &str| n.split_whitespace().next().unwrap().to_lowercase();
        assert!(html.contains(&first_word(&first.note)));
        assert!(html.contains(&first.key));
        assert!(html.contains("radiological convention"));
        assert!(html.contains(&format!(
            "{} parameters",
            crate::inspect::thousands(outcome.trainer.model.num_params() as u64)
        )));

        // The ground-truth picture marks exactly the mask, enlarged ×8: the centre of every mask
        // pixel's 8×8 block is tinted red or on the yellow outline, and pixels whose neighbours
        // are all background are untouched.
        let input = image::open(&files.examples[0]).unwrap().to_rgb8();
        let truth = image::open(&files.examples[1]).unwrap().to_rgb8();
        let mask = &first.mask;
        let (mut marked, mut plain) = (0, 0);
        for y in 0..32usize {
            for x in 0..32usize {
                let (px, py) = (8 * x as u32 + 4, 8 * y as u32 + 4);
                let (a, b) = (input.get_pixel(px, py).0, truth.get_pixel(px, py).0);
                let clear = (y.saturating_sub(1)..=(y + 1).min(31)).all(|yy| {
                    (x.saturating_sub(1)..=(x + 1).min(31)).all(|xx| mask[yy * 32 + xx] == 0)
                });
                if mask[y * 32 + x] != 0 {
                    let red = i32::from(b[0]) - i32::from(b[1]) > 40;
                    assert!(red || b == [255, 225, 0], "({x}, {y}) {a:?} → {b:?}");
                    marked += 1;
                } else if clear {
                    assert_eq!(a, b, "({x}, {y})");
                    plain += 1;
                }
            }
        }
        assert!(marked > 0 && plain > 500, "{marked} {plain}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn curves_draw_every_epoch_and_survive_an_empty_history() {
        let m = |epoch: usize, loss: f64, dice: f64| EpochMetrics {
            epoch,
            lr: 1e-3,
            train_loss: loss,
            train_criterion: 0.6 * loss,
            train_ccl: 0.3 * loss,
            train_text_rec: 0.05 * loss,
            train_img_rec: 0.05 * loss,
            train_dice: dice,
            val_loss: loss,
            val_dice: dice * 0.9,
            seconds: 1.0,
            best: true,
            aux: true,
        };
        let history: Vec<EpochMetrics> = (1..=6)
            .map(|e| m(e, 2.0 / e as f64, 0.1 * e as f64))
            .collect();
        let rgb = render_curves(&history).unwrap();
        assert_eq!(rgb.len(), (CURVES_W * CURVES_H * 3) as usize);
        // The total loss is drawn in near-black, the validation Dice in orange: both present.
        let has = |c: [u8; 3]| rgb.chunks_exact(3).any(|p| p == c);
        assert!(has([20, 20, 20]));
        assert!(has([255, 127, 14]));
        // Text was drawn (the embedded font works): dark anti-aliased grey pixels in the top
        // caption band of the left panel.
        let caption_dark = (0..40)
            .flat_map(|y| (0..CURVES_W / 2).map(move |x| (x, y)))
            .filter(|&(x, y)| {
                let i = 3 * (y * CURVES_W + x) as usize;
                rgb[i] < 128
            })
            .count();
        assert!(caption_dark > 50, "{caption_dark}");
        assert_eq!(render_curves(&[]).unwrap().len(), rgb.len());
        assert_eq!(nice_ceiling(0.0), 1.0);
        assert_eq!(nice_ceiling(1.7), 2.0);
        assert_eq!(nice_ceiling(2.2), 2.5);
        assert_eq!(nice_ceiling(0.031), 0.04);
        assert_eq!(nice_ceiling(7.2), 8.0);
        assert_eq!(nice_ceiling(5.0), 5.0);
    }

    #[test]
    fn notes_are_shaded_by_woi_and_list_their_heaviest_words() {
        let word = |w: &str, weight: f32, padding: bool| WordWeight {
            word: w.into(),
            weight,
            padding,
        };
        let pred = Prediction {
            size: 16,
            grid: 1,
            note: "Lower left lung.".into(),
            model_text: "Lower left lung.".into(),
            reading: None,
            prob: vec![0.0; 256],
            mask: vec![0; 256],
            poi: vec![1.0],
            woi: vec![
                word("lower", 0.1, false),
                word("left", 0.5, false),
                word("lung", 0.0, false),
                word(".", 0.3, false),
                word("eof", 0.05, true),
            ],
            truncated_words: vec![".".into()],
        };
        let mut h = String::new();
        note_html(&mut h, "own note", "note", &pred, 0.5);
        // Shading relative to the heaviest word (0.5): 0.55 · 0.1 / 0.5 = 0.11.
        assert!(
            h.contains("rgba(235,45,45,0.11)\" title=\"WOI 0.100\">lower</span>"),
            "{h}"
        );
        assert!(h.contains("rgba(235,45,45,0.55)\" title=\"WOI 0.500\">left</span>"));
        assert!(
            h.contains("lung</span><span"),
            "no space before punctuation: {h}"
        );
        assert!(h.contains("Dice <span class=\"dice\">50.0"));
        // Punctuation, zero weights and padding are not listed; a cut full stop is not mentioned.
        assert!(
            h.contains("top words: left 0.500 · lower 0.100</span>"),
            "{h}"
        );
        assert!(!h.contains("eof") && !h.contains("past the token context"));
        // Near-uniform weights stay pale: a quarter of the attention is full shade.
        let uniform = Prediction {
            woi: vec![word("a", 0.06, false), word("b", 0.06, false)],
            ..pred
        };
        let mut h = String::new();
        note_html(&mut h, "own note", "note", &uniform, 0.0);
        assert!(h.contains("rgba(235,45,45,0.13)"), "{h}");
    }

    #[test]
    fn planes_interleave_and_enlarging_repeats_pixels() {
        let sample = Sample {
            key: "k".into(),
            // B plane 1..4, G plane 11..14, R plane 21..24 of a 2×2 image.
            image: vec![1, 2, 3, 4, 11, 12, 13, 14, 21, 22, 23, 24],
            mask: vec![0; 4],
            note: String::new(),
        };
        let img = planar_to_image(&sample, 2);
        assert_eq!(img.data, [1, 11, 21, 2, 12, 22, 3, 13, 23, 4, 14, 24]);
        assert_eq!(
            enlarge(&[1u8, 2, 3, 4], 2, 1, 2),
            [1, 1, 2, 2, 1, 1, 2, 2, 3, 3, 4, 4, 3, 3, 4, 4]
        );
        assert_eq!(esc("a<b & \"c\""), "a&lt;b &amp; &quot;c&quot;");
    }
}
