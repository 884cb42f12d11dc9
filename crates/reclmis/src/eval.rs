//! The LViT test protocol (docs §5) with true, shuffled or empty notes.

use burn::module::Module;
use serde::{Deserialize, Serialize};

use crate::data::audit::NotesAudit;
use crate::data::dataset::{Dataset, Sample};
use crate::data::metrics::{self, Counts};
use crate::finding::ParseStatus;
use crate::model::{Branches, ModelConfig, RecLMIS, to_vec};
use crate::rng::SplitMix64;
use crate::step::{TextCache, make_batch};
use crate::tokenizer::Tokenizer;

/// Which note each image is paired with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TextMode {
    /// Its own note.
    Given,
    /// Another image's note (a seeded derangement: no image keeps its own note).
    Shuffled,
    /// The empty note (after the authors' padding: "EOF XXX" ×9).
    Empty,
}

impl std::str::FromStr for TextMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "given" | "true" => Ok(Self::Given),
            "shuffled" => Ok(Self::Shuffled),
            "empty" => Ok(Self::Empty),
            o => Err(format!("unknown text mode '{o}' (given, shuffled, empty)")),
        }
    }
}

impl std::fmt::Display for TextMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Given => "given",
            Self::Shuffled => "shuffled",
            Self::Empty => "empty",
        })
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ImageScore {
    pub key: String,
    pub note: String,
    pub dice: f64,
    pub iou: f64,
}

/// How the evaluated notes reached the text encoder: as written or as canonical sentences,
/// how many the grammar read fully, in part or not at all (those fall back to their raw text),
/// and how many the token context cut.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct NotesReport {
    /// `raw` or `canonical` (the model config's `notes.canonical`).
    pub read_as: String,
    /// Grammar counts; with `read_as = raw` they say what canonical reading would have done.
    pub full: usize,
    pub partial: usize,
    pub unparsed: usize,
    /// Keys of the notes the grammar could not read (the model got their raw text).
    pub fell_back: Vec<String>,
    /// The most frequent words outside the grammar's vocabulary, with counts.
    pub unknown_words: Vec<(String, usize)>,
    /// Notes whose encoder text was longer than the token context, and the most frequent tails
    /// the cut removed (with counts).
    pub truncated: usize,
    pub truncated_tails: Vec<(String, usize)>,
    /// The model's token context.
    pub context: usize,
}

impl NotesReport {
    /// `keys[i]`'s note is `notes[i]`; the context is the model's.
    pub fn of(cfg: &ModelConfig, keys: &[&str], notes: &[String]) -> NotesReport {
        let audit =
            NotesAudit::of_texts(keys.iter().copied().zip(notes.iter().map(String::as_str)));
        let tok = Tokenizer::clip();
        let mut tails = std::collections::BTreeMap::<String, usize>::new();
        let mut truncated = 0;
        for (note, read) in notes.iter().zip(&audit.notes) {
            // The audit already parsed each note: its model text is the canonical one.
            let text = if cfg.notes.canonical {
                &read.model_text
            } else {
                note
            };
            let ids = tok.encode(text);
            // SOT and EOT take two of the context's positions.
            let room = cfg.context.saturating_sub(2);
            if ids.len() > room {
                truncated += 1;
                *tails
                    .entry(tok.decode(&ids[room..]).trim().to_owned())
                    .or_default() += 1;
            }
        }
        let mut tails: Vec<(String, usize)> = tails.into_iter().collect();
        tails.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        tails.truncate(5);
        let mut unknown_words = audit.unknown_words();
        unknown_words.truncate(10);
        NotesReport {
            read_as: if cfg.notes.canonical {
                "canonical"
            } else {
                "raw"
            }
            .to_owned(),
            full: audit.full,
            partial: audit.partial,
            unparsed: audit.unparsed,
            fell_back: audit
                .notes
                .iter()
                .filter(|n| n.status == ParseStatus::Unparsed && !n.text.trim().is_empty())
                .map(|n| n.key.clone())
                .collect(),
            unknown_words,
            truncated,
            truncated_tails: tails,
            context: cfg.context,
        }
    }

    /// One line for people.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "notes read as {}: {} parsed fully, {} in part, {} not understood",
            self.read_as, self.full, self.partial, self.unparsed
        );
        if self.read_as == "canonical" && !self.fell_back.is_empty() {
            s.push_str(&format!(
                " ({} fell back to their raw text, e.g. {})",
                self.fell_back.len(),
                self.fell_back[0]
            ));
        }
        if self.truncated > 0 {
            s.push_str(&format!(
                "; {} cut by the {}-token context (most often: \"{}\")",
                self.truncated, self.context, self.truncated_tails[0].0
            ));
        }
        s
    }
}

/// The two ways the scores are pooled, in a few words (for `--json` readers).
pub const PROTOCOLS: &str = "dice, miou: mean over images of each image's Dice and IoU (LViT's \
     test protocol, the paper's numbers); dice_pooled, iou_pooled: one Dice and IoU over all \
     pixels of all images, 2·ΣTP/(2·ΣTP+ΣFP+ΣFN) and ΣTP/(ΣTP+ΣFP+ΣFN); both threshold p > 0.5";

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EvalSummary {
    /// Mean per-image Dice and IoU, as fractions (the paper reports ×100).
    pub dice: f64,
    pub miou: f64,
    /// Dice and IoU of the pixel counts summed over all images: large lesions weigh more, and
    /// an image with an empty prediction and mask adds nothing instead of a 0.
    pub dice_pooled: f64,
    pub iou_pooled: f64,
    pub n: usize,
    pub text: TextMode,
    pub notes: NotesReport,
    #[serde(skip)]
    pub per_image: Vec<ImageScore>,
}

/// The notes the images are evaluated with.
pub fn notes_for(data: &Dataset, mode: TextMode, seed: u64) -> Vec<String> {
    let n = data.len();
    match mode {
        TextMode::Given => data.samples.iter().map(|s| s.note.clone()).collect(),
        TextMode::Empty => vec![String::new(); n],
        TextMode::Shuffled => {
            // Sattolo's algorithm: a single cycle, so no image keeps its own note.
            let mut perm: Vec<usize> = (0..n).collect();
            let mut rng = SplitMix64::new(seed ^ 0x5417_FF1E);
            for i in (1..n).rev() {
                perm.swap(i, rng.below(i));
            }
            perm.iter().map(|&j| data.samples[j].note.clone()).collect()
        }
    }
}

/// Probabilities `[S·S]` per image, in data order, for the given notes (batched, eval mode).
pub fn predict_probs(
    model: &RecLMIS,
    data: &Dataset,
    notes: &[String],
    batch_size: usize,
) -> Vec<Vec<f32>> {
    let eval = model.valid();
    let device = eval.device();
    let mut cache = TextCache::default();
    let mut out = Vec::with_capacity(data.len());
    let px = data.size * data.size;
    for (chunk, notes) in data
        .samples
        .chunks(batch_size.max(1))
        .zip(notes.chunks(batch_size.max(1)))
    {
        let with_notes: Vec<Sample> = chunk
            .iter()
            .zip(notes)
            .map(|(s, n)| Sample {
                note: n.clone(),
                ..s.clone()
            })
            .collect();
        let b = make_batch(&with_notes, data.size, eval.cfg(), &device);
        let tfc = cache.encode(&eval, &b.tokens, false);
        let o = eval.forward(b.images, tfc, &b.tokens, Branches::Segment, false);
        out.extend(to_vec(&o.probs).chunks(px).map(<[f32]>::to_vec));
    }
    out
}

/// Scores every image with the test protocol (threshold > 0.5, §5).
pub fn evaluate(
    model: &RecLMIS,
    data: &Dataset,
    mode: TextMode,
    seed: u64,
    batch_size: usize,
) -> EvalSummary {
    let notes = notes_for(data, mode, seed);
    let probs = predict_probs(model, data, &notes, batch_size);
    let keys: Vec<&str> = data.samples.iter().map(|s| s.key.as_str()).collect();
    let report = NotesReport::of(model.cfg(), &keys, &notes);
    EvalSummary {
        notes: report,
        ..score(data, &probs, notes, mode)
    }
}

/// Per-image scores, their means and the pooled scores of `probs` (one `[S·S]` per sample).
pub fn score(
    data: &Dataset,
    probs: &[Vec<f32>],
    notes: Vec<String>,
    mode: TextMode,
) -> EvalSummary {
    let mut total = Counts::default();
    let per_image: Vec<ImageScore> = data
        .samples
        .iter()
        .zip(probs)
        .zip(notes)
        .map(|((s, p), note)| {
            let counts = metrics::test_counts(p, &s.mask);
            total += counts;
            ImageScore {
                key: s.key.clone(),
                note,
                dice: f64::from(metrics::test_dice(counts)),
                iou: metrics::jaccard(counts),
            }
        })
        .collect();
    let n = per_image.len();
    let mean = |f: fn(&ImageScore) -> f64| per_image.iter().map(f).sum::<f64>() / n.max(1) as f64;
    EvalSummary {
        dice: mean(|s| s.dice),
        miou: mean(|s| s.iou),
        dice_pooled: metrics::pooled_dice(total),
        iou_pooled: metrics::jaccard(total),
        n,
        text: mode,
        notes: NotesReport::default(),
        per_image,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::dataset::Sample;

    fn sample(key: &str, mask: [u8; 4]) -> Sample {
        Sample {
            key: key.into(),
            image: vec![0; 3 * 4],
            mask: mask.to_vec(),
            note: format!("note of {key}"),
        }
    }

    #[test]
    fn per_image_mean_and_pooled_differ_by_hand() {
        // Two 2×2 images. `a`: all four pixels lesion, all predicted: tp 4, Σp 4, Σg 4, so
        // Dice 8/(8 + 1e-5) and IoU 1. `b`: one lesion pixel, one other pixel predicted: tp 0,
        // Dice 0, IoU 0. Per-image means: Dice ≈ 0.5, mIoU 0.5. Pooled: tp 4, Σp 5, Σg 5, so
        // Dice 8/10 = 0.8 and IoU 4/(4 + 1 + 1) = 2/3.
        let data = Dataset {
            size: 2,
            samples: vec![sample("a", [1, 1, 1, 1]), sample("b", [1, 0, 0, 0])],
            ..Dataset::default()
        };
        let probs = vec![vec![0.9, 0.8, 0.7, 0.6], vec![0.1, 0.9, 0.5, 0.2]];
        let notes = notes_for(&data, TextMode::Given, 0);
        let s = score(&data, &probs, notes, TextMode::Given);
        let dice_a = f64::from(8.0f32 / (8.0f32 + 1e-5));
        assert_eq!(s.per_image[0].dice, dice_a);
        assert_eq!((s.per_image[1].dice, s.per_image[1].iou), (0.0, 0.0));
        assert_eq!(s.dice, dice_a / 2.0);
        assert!((s.dice - 0.5).abs() < 1e-6, "{}", s.dice);
        assert_eq!(s.miou, 0.5);
        assert_eq!(s.dice_pooled, 0.8);
        assert_eq!(s.iou_pooled, 2.0 / 3.0);
        assert_eq!(s.n, 2);
        assert_eq!(s.per_image[1].note, "note of b");
    }
}
