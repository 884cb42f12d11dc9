//! The report folder of `reclmis demo`: `index.html` with the headline numbers, `curves.png`
//! (also written by `train`), and for a few test images the input, the ground truth and what the
//! model made of it with its own note and with another image's note.
//!
//! This file runs the model on the examples and writes the pictures; [`super::page`] turns the
//! numbers into HTML without touching the model. Every file is written atomically; the page is
//! self-contained (inline CSS, relative links to the PNGs beside it, no script), so the folder
//! can be copied or zipped as it is.

use std::path::{Path, PathBuf};

use burn::module::Module;

use super::page::{ExampleRow, RunFacts, render_html};
use super::{DemoConfig, DemoOutcome};
use crate::Error;
use crate::data::ImageU8;
use crate::data::metrics::test_scores;
use crate::eval::{TextMode, notes_for};
use crate::predict::{Prediction, predict_image};
use crate::report::curves::write_curves;
use crate::report::{
    heatmap_overlay, normalise, overlay_mask, to_rgb, upsample_bilinear, write_file, write_png,
};

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

/// The five pictures of one example: file suffix, column title, what it shows.
pub(super) const PICTURES: [(&str, &str, &str); 5] = [
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
    let test = &outcome.test;
    let shuffled = notes_for(test, TextMode::Shuffled, cfg.seed);
    let mut examples = Vec::new();
    let mut rows = Vec::new();
    for (sample, shuffled_note) in test.samples.iter().zip(&shuffled).take(cfg.n_examples) {
        let img = ImageU8::from_planes(&sample.image, test.size, test.size, 3);
        let own = predict_image(model, &img, &sample.note);
        let other = predict_image(model, &img, shuffled_note);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::dataset::Sample;
    use crate::report::curves::{CURVES_H, CURVES_W};

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
    fn planes_interleave_and_enlarging_repeats_pixels() {
        let sample = Sample {
            key: "k".into(),
            // B plane 1..4, G plane 11..14, R plane 21..24 of a 2×2 image.
            image: vec![1, 2, 3, 4, 11, 12, 13, 14, 21, 22, 23, 24],
            mask: vec![0; 4],
            note: String::new(),
        };
        let img = ImageU8::from_planes(&sample.image, 2, 2, 3);
        assert_eq!(img.data, [1, 11, 21, 2, 12, 22, 3, 13, 23, 4, 14, 24]);
        assert_eq!(
            enlarge(&[1u8, 2, 3, 4], 2, 1, 2),
            [1, 1, 2, 2, 1, 1, 2, 2, 3, 3, 4, 4, 3, 3, 4, 4]
        );
    }
}
