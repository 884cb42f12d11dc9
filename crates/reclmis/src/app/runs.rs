//! What a training run starts from: its data splits and its initial weights.

use std::path::Path;

use burn::tensor::Device;

use crate::Error;
use crate::checkpoint::import::model_with_clip;
use crate::checkpoint::ours;
use crate::data::DataError;
use crate::data::dataset::Dataset;
use crate::data::layout::{LayoutOptions, Split, survey_split};
use crate::model::RecLMIS;
use crate::train::TrainConfig;

/// The initial model of a fresh run given CLIP weights at `clip` (`None` without them, or when
/// resuming, where the run folder decides). `clip` may be OpenAI's or Hugging Face's CLIP, or a
/// reclmis checkpoint whose CLIP tower is reused; either way `cfg`'s text encoder becomes that
/// tower's, and everything else is initialised from `cfg.seed`.
pub fn initial_model(
    clip: Option<&Path>,
    resume: bool,
    cfg: &mut TrainConfig,
    device: &Device,
) -> Result<Option<RecLMIS>, Error> {
    let Some(clip) = clip.filter(|_| !resume) else {
        return Ok(None);
    };
    let model = if ours::read_header(clip).is_ok() {
        let loaded = ours::load(clip, device)?;
        cfg.model.text_encoder = loaded.model.cfg.text_encoder.clone();
        let mut model = RecLMIS::new(&cfg.model, cfg.seed, device);
        model.clip = loaded.model.clip;
        model
    } else {
        let (model, c) = model_with_clip(clip, cfg.model.preset, cfg.seed, device)?;
        cfg.model.text_encoder = c.text_encoder;
        model
    };
    cfg.validate()?;
    Ok(Some(model))
}

/// One split of a dataset in LViT layout at `size` px, at most `limit` images.
pub fn load_split(
    data: &Path,
    split: Split,
    size: usize,
    allow_missing_notes: bool,
    limit: Option<usize>,
) -> Result<Dataset, Error> {
    let mut loaded = load_splits(data, &[(split, limit)], size, allow_missing_notes)?;
    Ok(loaded.remove(0))
}

/// Splits of a dataset in LViT layout at `size` px, each at most its limit of images, checked
/// together: every problem of every split (a missing folder, files without a partner, bad note
/// rows, images without a note and notes without an image, unreadable images and masks) comes
/// back in one error, so a user sees them all before anything is trained or written
/// (docs/product.md "Bad input").
pub fn load_splits(
    data: &Path,
    splits: &[(Split, Option<usize>)],
    size: usize,
    allow_missing_notes: bool,
) -> Result<Vec<Dataset>, Error> {
    let opts = LayoutOptions {
        allow_missing_notes,
        ..Default::default()
    };
    let mut problems = Vec::new();
    let mut loaded = Vec::with_capacity(splits.len());
    for &(split, limit) in splits {
        let mut items = match survey_split(data, split, &opts) {
            Ok((scanned, found)) => {
                problems.extend(found);
                scanned.items
            }
            Err(e) => {
                problems.push(e);
                continue;
            }
        };
        if let Some(n) = limit {
            items.truncate(n);
        }
        match Dataset::from_items(&items, size) {
            Ok(d) => loaded.push(d),
            Err(e) => problems.push(e),
        }
    }
    DataError::collect(problems)?;
    Ok(loaded)
}

/// How `synth` divides `n` images: 70 % train, 10 % validation, the rest test.
pub fn synth_split(n: u64) -> [u64; 3] {
    let train = n * 7 / 10;
    let val = n / 10;
    [train, val, n - train - val]
}

#[cfg(test)]
mod tests {
    #[test]
    fn synth_splits_add_up() {
        assert_eq!(super::synth_split(100), [70, 10, 20]);
        assert_eq!(super::synth_split(7), [4, 0, 3]);
    }
}
