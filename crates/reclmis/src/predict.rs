//! Prediction for people: one image and its note in, the lesion mask and why out — the
//! probability map, the mask at 0.5, the patches (POI) and the words (WOI) the model relied on.

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::tensor::{Tensor, TensorData};
use rayon::prelude::*;
use serde::Serialize;

use crate::Error;
use crate::data::image::hwc_to_chw_unit;
use crate::data::image::{ReadOptions, read_bgr, read_bgr_with};
use crate::data::medical::medical_stem;
use crate::data::{DataError, ImageU8, Notes};
use crate::finding::{Reading, parse};
use crate::model::{Branches, RecLMIS, TokenBatch, to_vec};
use crate::report;
use crate::tokenizer::{EOT, SOT, Tokenizer, pad_note};

/// Probability above which a pixel is foreground (the authors' test threshold, §5).
pub const THRESHOLD: f32 = 0.5;

/// Extensions `predict --images` picks up (case-insensitive), besides DICOM and NIfTI ones
/// (`.dcm`, `.nii`, `.nii.gz`).
const IMAGE_EXTENSIONS: [&str; 6] = ["png", "jpg", "jpeg", "bmp", "tif", "tiff"];

/// One word of the note as the model read it, with the WOI weight of its tokens.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct WordWeight {
    /// Lower case, as CLIP's tokenizer cleans it; punctuation is a word of its own.
    pub word: String,
    /// Sum of the WOI weights of its tokens.
    pub weight: f32,
    /// Filler the authors append to short notes (`EOF XXX`, §1.4), not the user's text.
    pub padding: bool,
}

/// What the model made of one image and note, at the model's size `S` and grid `g = S/16`.
#[derive(Clone, Debug)]
pub struct Prediction {
    pub size: usize,
    pub grid: usize,
    /// The note as given (before padding).
    pub note: String,
    /// What the text encoder read: the note itself, or its canonical sentence when the model's
    /// config says `notes.canonical` (WOI weighs the words of this text).
    pub model_text: String,
    /// How the grammar read the note (`None` when the model reads raw notes).
    pub reading: Option<Reading>,
    /// Sigmoid probabilities `[S, S]`.
    pub prob: Vec<f32>,
    /// `prob > 0.5` as 0/1, `[S, S]`.
    pub mask: Vec<u8>,
    /// POI, one weight per 16×16 patch, `[g, g]`, summing to 1.
    pub poi: Vec<f32>,
    /// WOI merged into words, SOT/EOT left out (their weights are not a word's).
    pub woi: Vec<WordWeight>,
    /// Words of the note that did not fit the token context (a word cut inside is listed here
    /// and its kept part appears in `woi`).
    pub truncated_words: Vec<String>,
}

impl Prediction {
    /// Share of pixels in the mask.
    pub fn mask_fraction(&self) -> f64 {
        let n = self.mask.iter().filter(|&&m| m != 0).count();
        n as f64 / self.mask.len().max(1) as f64
    }

    /// The `n` heaviest words of the user's note, heaviest first.
    pub fn top_words(&self, n: usize) -> Vec<&WordWeight> {
        let mut words: Vec<&WordWeight> = self.woi.iter().filter(|w| !w.padding).collect();
        words.sort_by(|a, b| b.weight.total_cmp(&a.weight));
        words.truncate(n);
        words
    }
}

/// Contents of `woi.json`.
#[derive(Clone, Debug, Serialize)]
pub struct WoiReport<'a> {
    pub note: &'a str,
    pub model_text: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reading: Option<&'a Reading>,
    pub threshold: f32,
    pub words: &'a [WordWeight],
    pub truncated_words: &'a [String],
}

/// Predicts one image file with its note: the image is read and resized as the authors' loader
/// does (§4.4), the note padded (§1.4) and tokenized to the config's context.
pub fn predict_one(model: &RecLMIS, image: &Path, note: &str) -> Result<Prediction, Error> {
    let img = read_bgr(image)?;
    Ok(predict_image(model, &img, note))
}

/// Predicts an image already decoded (B, G, R; any size, resized to the model's).
pub fn predict_image(model: &RecLMIS, image: &ImageU8, note: &str) -> Prediction {
    let cfg = model.cfg();
    let s = cfg.image_size;
    let g = cfg.grid();
    let tok = Tokenizer::clip();
    let reading = cfg.notes.canonical.then(|| parse(note));
    // The canonical sentence, or the note as written (raw reading, or a note not understood).
    let model_text = reading
        .as_ref()
        .and_then(Reading::canonical)
        .unwrap_or_else(|| note.to_owned());
    // paper-parity: §1.4 — the authors pad short notes before tokenizing.
    let padded = pad_note(&model_text);
    let tokens = tok.tokenize(&padded, cfg.context);

    // Eval mode whatever the caller holds: no autodiff graph, BatchNorm on running statistics.
    let model = model.valid();
    let device = model.device();
    let pixels = if image.width == s && image.height == s {
        hwc_to_chw_unit(image)
    } else {
        hwc_to_chw_unit(&image.resized(s, s))
    };
    let images = Tensor::<4>::from_data(TensorData::new(pixels, [1, 3, s, s]), &device);
    let batch = TokenBatch::new(std::slice::from_ref(&tokens.ids));
    let text = model.encode_text(&batch, false);
    let out = model.forward(images, text, &batch, Branches::Explain, false);

    let prob = to_vec(&out.probs); // [1, 1, S, S]
    let mask = prob.iter().map(|&p| u8::from(p > THRESHOLD)).collect();
    let explain = out
        .explain
        .expect("Branches::Explain always computes POI and WOI");
    let poi = to_vec(&explain.poi); // [1, g·g], patch h·g + w
    let woi = to_vec(&explain.woi); // [1, L]
    let (woi, truncated_words) = word_weights(tok, &model_text, &padded, &tokens.ids, &woi);
    Prediction {
        size: s,
        grid: g,
        note: note.to_owned(),
        model_text,
        reading,
        prob,
        mask,
        poi,
        woi,
        truncated_words,
    }
}

/// Merges per-token WOI into words. `ids` are the tokens the model saw (SOT, kept tokens, EOT,
/// pads) and `woi` their weights; `note` is the user's note and `padded` what was tokenized.
/// A token whose vocabulary entry ends with `</w>` ends a word. Returns the kept words and the
/// user's words that did not fit.
pub fn word_weights(
    tok: &Tokenizer,
    note: &str,
    padded: &str,
    ids: &[i64],
    woi: &[f32],
) -> (Vec<WordWeight>, Vec<String>) {
    let all = tok.encode(padded);
    // Padding starts with a space, so the note's tokens are a prefix of the padded note's.
    let n_note = tok.encode(note).len();
    let n_kept = ids
        .iter()
        .skip(1)
        .take_while(|&&id| id != EOT && id != 0 && id != SOT)
        .count()
        .min(all.len());

    let mut words = Vec::new();
    let mut truncated = Vec::new();
    let mut start = 0;
    for (i, &id) in all.iter().enumerate() {
        let ends_word = tok.decode(&[id]).ends_with(' ') || i + 1 == all.len();
        if !ends_word {
            continue;
        }
        let (a, b) = (start, i + 1);
        start = b;
        let padding = a >= n_note;
        if a < n_kept {
            let kept = b.min(n_kept);
            words.push(WordWeight {
                word: tok.decode(&all[a..kept]).trim().to_owned(),
                // Position 0 of `woi` is SOT.
                weight: woi.get(1 + a..1 + kept).map_or(0.0, |w| w.iter().sum()),
                padding,
            });
        }
        if b > n_kept && !padding {
            truncated.push(tok.decode(&all[a..b]).trim().to_owned());
        }
    }
    (words, truncated)
}

/// Writes `mask.png` (0/255), `prob.npy` (float32 `[S, S]`), `overlay.png` (mask over the image),
/// `poi.png` (POI heatmap over the image) and `woi.json` into `dir`, each file atomically.
/// `image` is the input (B, G, R), resized to the model's size when it is not.
pub fn write_prediction(dir: &Path, pred: &Prediction, image: &ImageU8) -> Result<(), Error> {
    std::fs::create_dir_all(dir).map_err(|source| Error::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let s = pred.size;
    let resized;
    let image = if image.width == s && image.height == s {
        image
    } else {
        resized = image.resized(s, s);
        &resized
    };
    let mask255: Vec<u8> = pred
        .mask
        .iter()
        .map(|&m| if m != 0 { 255 } else { 0 })
        .collect();
    report::write_png(&dir.join("mask.png"), s, s, 1, &mask255)?;
    report::write_file(&dir.join("prob.npy"), &report::npy_f32(&[s, s], &pred.prob))?;
    report::write_png(
        &dir.join("overlay.png"),
        s,
        s,
        3,
        &report::overlay_mask(image, &pred.mask),
    )?;
    let heat = report::upsample_bilinear(&report::normalise(&pred.poi), pred.grid, pred.grid, s, s);
    report::write_png(
        &dir.join("poi.png"),
        s,
        s,
        3,
        &report::heatmap_overlay(image, &heat),
    )?;
    let woi = WoiReport {
        note: &pred.note,
        model_text: &pred.model_text,
        reading: pred.reading.as_ref(),
        threshold: THRESHOLD,
        words: &pred.woi,
        truncated_words: &pred.truncated_words,
    };
    let json = serde_json::to_vec_pretty(&woi).expect("the WOI report serialises to JSON");
    report::write_file(&dir.join("woi.json"), &json)
}

/// One image of a folder, its note and where its outputs go.
#[derive(Clone, Debug, PartialEq)]
pub struct FolderItem {
    pub image: PathBuf,
    pub note: String,
    /// The image had no note and `allow_missing_notes` gave it the empty note.
    pub missing_note: bool,
    pub out_dir: PathBuf,
}

/// A finished folder item.
#[derive(Clone, Debug)]
pub struct FolderResult {
    pub item: FolderItem,
    pub mask_fraction: f64,
    pub truncated_words: Vec<String>,
    /// How the grammar read the note, when the model reads canonical notes.
    pub reading: Option<Reading>,
}

#[derive(Clone, Debug, Default)]
pub struct FolderOptions {
    /// Predict images without a note with the empty note instead of failing.
    pub allow_missing_notes: bool,
    /// The slice of each DICOM or NIfTI image.
    pub read: ReadOptions,
}

/// The images of `images_dir` (PNG, JPEG, BMP, TIFF, DICOM, NIfTI; sorted by name), each with
/// its note and output folder `out_dir/<file stem>` (the full file name where two images share a
/// stem; `x.nii.gz` has the stem `x`). A note's key matches the image's file name or `mask_` +
/// the file name, ignoring case (QaTa keys notes by mask name); a DICOM or NIfTI image `x.*` also
/// matches the mask names `x.png` and `mask_x.png`. Images without a note are an error naming
/// them, unless allowed.
pub fn plan_folder(
    images_dir: &Path,
    notes_file: &Path,
    out_dir: &Path,
    opts: &FolderOptions,
) -> Result<Vec<FolderItem>, Error> {
    let notes = Notes::read(notes_file)?;
    let names = list_images(images_dir)?;
    let stem = |n: &str| {
        medical_stem(n).map_or_else(
            || {
                Path::new(n)
                    .file_stem()
                    .map_or_else(|| n.to_owned(), |s| s.to_string_lossy().into_owned())
            },
            str::to_owned,
        )
    };
    let mut items = Vec::with_capacity(names.len());
    let mut unmatched = Vec::new();
    for name in &names {
        let mask_png = medical_stem(name).map(|s| format!("{s}.png"));
        let note = notes
            .get(name)
            .or_else(|| notes.get(&format!("mask_{name}")))
            .or_else(|| mask_png.as_ref().and_then(|m| notes.get(m)))
            .or_else(|| mask_png.and_then(|m| notes.get(&format!("mask_{m}"))));
        if note.is_none() && !opts.allow_missing_notes {
            unmatched.push(name.clone());
            continue;
        }
        let shared_stem = names.iter().filter(|m| stem(m) == stem(name)).count() > 1;
        let sub = if shared_stem {
            name.clone()
        } else {
            stem(name)
        };
        items.push(FolderItem {
            image: images_dir.join(name),
            note: note.map_or_else(String::new, |n| n.text.clone()),
            missing_note: note.is_none(),
            out_dir: out_dir.join(sub),
        });
    }
    if !unmatched.is_empty() {
        return Err(DataError::Unmatched {
            what: "images without a note",
            dir: notes_file.to_path_buf(),
            count: unmatched.len(),
            names: unmatched,
        }
        .into());
    }
    Ok(items)
}

/// Predicts every image of `images_dir` with its note from `notes_file` into `out_dir/<image>/`.
/// Every image is decoded before the first output is written, so an unreadable one stops the
/// run with nothing written. `on_item` is called after each image (for progress).
pub fn predict_folder(
    model: &RecLMIS,
    images_dir: &Path,
    notes_file: &Path,
    out_dir: &Path,
    opts: &FolderOptions,
    mut on_item: impl FnMut(usize, &FolderItem, &Prediction),
) -> Result<Vec<FolderResult>, Error> {
    let items = plan_folder(images_dir, notes_file, out_dir, opts)?;
    items
        .par_iter()
        .try_for_each(|item| read_bgr_with(&item.image, &opts.read).map(drop))?;
    let model = model.valid();
    let mut results = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        let s = model.cfg().image_size;
        let img = read_bgr_with(&item.image, &opts.read)?.resized(s, s);
        let pred = predict_image(&model, &img, &item.note);
        write_prediction(&item.out_dir, &pred, &img)?;
        on_item(i, &item, &pred);
        results.push(FolderResult {
            mask_fraction: pred.mask_fraction(),
            truncated_words: pred.truncated_words.clone(),
            reading: pred.reading.clone(),
            item,
        });
    }
    Ok(results)
}

fn list_images(dir: &Path) -> Result<Vec<String>, DataError> {
    if !dir.is_dir() {
        return Err(DataError::MissingPath {
            what: "image folder".into(),
            path: dir.to_path_buf(),
        });
    }
    let io = |source| DataError::Io {
        what: "image folder",
        path: dir.to_path_buf(),
        source,
    };
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let ext = Path::new(&name)
            .extension()
            .map(|e| e.to_string_lossy().to_ascii_lowercase())
            .unwrap_or_default();
        let is_file = entry.file_type().map(|t| !t.is_dir()).unwrap_or(false);
        let known = IMAGE_EXTENSIONS.contains(&ext.as_str()) || medical_stem(&name).is_some();
        if is_file && !name.starts_with('.') && known {
            names.push(name);
        }
    }
    if names.is_empty() {
        return Err(DataError::MissingPath {
            what: "images (PNG, JPEG, BMP, TIFF, DICOM or NIfTI)".into(),
            path: dir.to_path_buf(),
        });
    }
    names.sort();
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::import::import_authors_checkpoint;
    use crate::tokenizer::CONTEXT_PAPER;

    use crate::test_support::shared;

    /// Weights of `1, 2, 3, …` at positions 1.. so sums show which tokens a word took.
    fn ramp(ids: &[i64]) -> Vec<f32> {
        (0..ids.len()).map(|i| i as f32).collect()
    }

    #[test]
    fn tokens_merge_into_words_and_padding_is_flagged() {
        let tok = Tokenizer::clip();
        let note = "Unilateral pulmonary infection, one infected area, middle left lung.";
        let padded = pad_note(note);
        assert_eq!(padded, note, "nine words get no padding");
        let short = "Lower left lung.";
        let padded_short = pad_note(short);
        let t = tok.tokenize(&padded_short, CONTEXT_PAPER);
        let (words, cut) = word_weights(tok, short, &padded_short, &t.ids, &ramp(&t.ids));
        let text: Vec<&str> = words.iter().map(|w| w.word.as_str()).collect();
        // "eof" is two BPE tokens (e, of): the note's 4 tokens and 4 of its 6 repeats of
        // "eof xxx" (3 tokens each) fill the 16 content positions of the context.
        assert_eq!(
            &text[..6],
            ["lower", "left", "lung", ".", "eof", "xxx"],
            "{words:?}"
        );
        assert!(words[..4].iter().all(|w| !w.padding));
        assert!(words[4..].iter().all(|w| w.padding));
        assert_eq!(words[0].weight, 1.0);
        assert_eq!(words[4].weight, 5.0 + 6.0, "both tokens of 'eof'");
        assert!(t.truncated, "the padded note overflows the context");
        assert!(cut.is_empty(), "only padding was cut: {cut:?}");
        let kept: f32 = words.iter().map(|w| w.weight).sum();
        assert_eq!(
            kept,
            (1..=16).sum::<usize>() as f32,
            "every kept token counted once"
        );
    }

    #[test]
    fn words_past_the_context_are_reported() {
        let tok = Tokenizer::clip();
        let note = "Bilateral pulmonary infection, three infected areas, middle lower left lung \
                    and upper middle lower right lung.";
        let t = tok.tokenize(note, CONTEXT_PAPER);
        assert!(t.truncated);
        let (words, cut) = word_weights(tok, note, note, &t.ids, &ramp(&t.ids));
        let text: Vec<&str> = words.iter().map(|w| w.word.as_str()).collect();
        // 18 positions: SOT, 16 kept tokens, and EOT written over the 17th.
        assert_eq!(
            text,
            [
                "bilateral",
                "pulmonary",
                "infection",
                ",",
                "three",
                "infected",
                "areas",
                ",",
                "middle",
                "lower",
                "left",
                "lung",
                "and",
                "upper",
                "middle",
                "lower"
            ]
        );
        assert_eq!(cut, ["right", "lung", "."]);
    }

    #[test]
    fn a_word_cut_inside_keeps_its_first_tokens() {
        let tok = Tokenizer::clip();
        assert!(tok.encode("pneumothorax").len() > 1);
        let note = format!("{}pneumothorax", "a ".repeat(15));
        let t = tok.tokenize(&note, CONTEXT_PAPER);
        let (words, cut) = word_weights(tok, &note, &note, &t.ids, &ramp(&t.ids));
        assert_eq!(words.len(), 16);
        let last = &words[15];
        assert!(
            "pneumothorax".starts_with(&last.word) && last.word.len() < "pneumothorax".len(),
            "{last:?}"
        );
        assert_eq!(last.weight, 16.0, "only the kept token's weight");
        assert_eq!(cut, ["pneumothorax"]);
    }

    #[test]
    fn predicts_the_authors_probabilities_poi_and_woi() {
        use safetensors::SafeTensors;
        let dir = shared().join("reference/official-parity/qata");
        let device = burn::tensor::Device::flex();
        let (model, _, _) =
            import_authors_checkpoint(&dir.join("best_model-RecLMIS.pth.tar"), &device).unwrap();
        let manifest: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
        let first = &manifest["inputs"][0];
        let image = dir
            .join("inputs/img")
            .join(first["image"].as_str().unwrap());
        let note = first["note"].as_str().unwrap();
        let pred = predict_one(&model, &image, note).unwrap();

        let io = std::fs::read(dir.join("io.safetensors")).unwrap();
        let st = SafeTensors::deserialize(&io).unwrap();
        let floats = |n: &str, count: usize| -> Vec<f32> {
            st.tensor(n).unwrap().data()[..4 * count]
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect()
        };
        let max_err = |a: &[f32], b: &[f32]| {
            assert_eq!(a.len(), b.len());
            a.iter()
                .zip(b)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0, f32::max)
        };
        let probs = floats("probs", 224 * 224);
        assert!(max_err(&pred.prob, &probs) < 1e-4);
        let poi = floats("poi", 196);
        assert!(max_err(&pred.poi, &poi) < 1e-5);
        // Words carry every WOI weight but SOT's and EOT's.
        let woi = floats("woi", 18);
        let tokens = Tokenizer::clip().tokenize(note, 18);
        let eot = tokens.ids.iter().position(|&i| i == EOT).unwrap();
        let expected: f32 = woi[1..eot].iter().sum();
        let ours: f32 = pred.woi.iter().map(|w| w.weight).sum();
        assert!((ours - expected).abs() < 1e-5, "{ours} vs {expected}");
        assert_eq!(pred.woi[0].word, "bilateral");
        assert!((pred.woi[0].weight - woi[1]).abs() < 1e-6);
        // The mask thresholds at 0.5; only pixels within the probability tolerance of it may
        // fall on the other side.
        let flipped = pred
            .mask
            .iter()
            .zip(&probs)
            .filter(|&(&m, &p)| m != u8::from(p > 0.5) && (p - 0.5).abs() >= 1e-4)
            .count();
        assert_eq!(
            flipped, 0,
            "mask pixels disagreeing with the authors' probabilities"
        );
    }
}
