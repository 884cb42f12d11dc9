//! The LViT test protocol (reclmis.md §5) with true, shuffled or empty notes.

use burn::module::Module;
use serde::{Deserialize, Serialize};

use crate::data::dataset::{Dataset, Sample};
use crate::data::metrics::{self, TestScores};
use crate::model::init::SplitMix64;
use crate::model::{Branches, ModelConfig, RecLMIS, to_vec};
use crate::train::{TextCache, make_batch};

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

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EvalSummary {
    /// Mean per-image Dice and IoU, as fractions (the paper reports ×100).
    pub dice: f64,
    pub miou: f64,
    pub n: usize,
    pub text: TextMode,
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
    cfg: &ModelConfig,
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
        let b = make_batch(&with_notes, data.size, cfg, &device);
        let tfc = cache.encode(&eval, cfg, &b.tokens, false);
        let o = eval.forward(cfg, b.images, tfc, &b.tokens, Branches::Segment, false);
        out.extend(to_vec(&o.probs).chunks(px).map(<[f32]>::to_vec));
    }
    out
}

/// Scores every image with the test protocol (threshold > 0.5, §5).
pub fn evaluate(
    model: &RecLMIS,
    cfg: &ModelConfig,
    data: &Dataset,
    mode: TextMode,
    seed: u64,
    batch_size: usize,
) -> EvalSummary {
    let notes = notes_for(data, mode, seed);
    let probs = predict_probs(model, cfg, data, &notes, batch_size);
    let per_image: Vec<ImageScore> = data
        .samples
        .iter()
        .zip(&probs)
        .zip(notes)
        .map(|((s, p), note)| {
            let TestScores { dice, iou } = metrics::test_scores(p, &s.mask);
            ImageScore {
                key: s.key.clone(),
                note,
                dice: dice as f64,
                iou,
            }
        })
        .collect();
    let n = per_image.len();
    let mean = |f: fn(&ImageScore) -> f64| per_image.iter().map(f).sum::<f64>() / n.max(1) as f64;
    EvalSummary {
        dice: mean(|s| s.dice),
        miou: mean(|s| s.iou),
        n,
        text: mode,
        per_image,
    }
}
