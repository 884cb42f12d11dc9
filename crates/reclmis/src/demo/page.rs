//! The demo's `index.html`: the headline numbers, the verdict on whether the notes matter, and
//! one row per example with its notes shaded by their word weights. Pure rendering: it gets
//! numbers and file names, never the model. The style sheet is `page.css`, inlined.

use std::fmt::Write as _;

use super::DemoReport;
use super::report::PICTURES;
use crate::predict::{Prediction, WordWeight};
use crate::report::colour_map;

/// Dice (as a fraction) by which the own notes must beat the shuffled ones for the page to say the
/// notes matter.
const NOTE_MATTERS: f64 = 0.02;

/// WOI weight at which a word of a note is shaded fully (unless another word weighs more).
const FULL_SHADE: f32 = 0.25;

/// WOI words listed per note.
const TOP_WORDS: usize = 4;

pub(super) struct ExampleRow {
    pub(super) key: String,
    pub(super) own: Prediction,
    pub(super) other: Prediction,
    pub(super) own_dice: f64,
    pub(super) other_dice: f64,
    /// Relative paths of the pictures, in the order of [`PICTURES`].
    pub(super) files: Vec<String>,
}

/// What the page shows beside the report's own numbers.
pub(super) struct RunFacts {
    pub(super) parameters: u64,
    pub(super) n_train: u64,
    pub(super) n_val: u64,
}

const CSS: &str = include_str!("page.css");

/// The page.
pub(super) fn render_html(r: &DemoReport, facts: &RunFacts, rows: &[ExampleRow]) -> String {
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
pub(super) fn note_html(h: &mut String, which: &str, class: &str, pred: &Prediction, dice: f64) {
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
pub(super) fn esc(s: &str) -> String {
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
pub(super) fn n_epochs(n: usize) -> String {
    if n == 1 {
        "1 epoch".into()
    } else {
        format!("{n} epochs")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn text_is_escaped() {
        assert_eq!(esc("a<b & \"c\""), "a&lt;b &amp; &quot;c&quot;");
    }
}
