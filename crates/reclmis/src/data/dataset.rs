//! In-memory datasets at model size, batching and augmentation.
//!
//! Images are decoded once, resized as the authors' loader does (§4.4) and kept as BGR `u8`
//! (a QaTa split at 224 px is ~150 MB), so an epoch never waits on PNG decoding.

use std::path::Path;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::image::{ReadOptions, read_bgr_with, read_grey_with};
use super::layout::{LayoutOptions, Split, scan_split};
use super::synth::{self, SynthConfig};
use super::{DataError, layout::Item};
use crate::rng::SplitMix64;

/// One image at model size: `image [3, S, S]` BGR, `mask [S, S]` in {0, 1}.
#[derive(Clone, Debug)]
pub struct Sample {
    pub key: String,
    pub image: Vec<u8>,
    pub mask: Vec<u8>,
    pub note: String,
}

#[derive(Clone, Debug, Default)]
pub struct Dataset {
    pub size: usize,
    pub samples: Vec<Sample>,
    /// Images whose mask had another size (both are resized, §4.4).
    pub size_mismatches: usize,
    /// Masks with no foreground (allowed, counted).
    pub empty_masks: usize,
}

impl Dataset {
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// Loads one split of an LViT folder, decoding in parallel.
    pub fn from_split(
        root: &Path,
        split: Split,
        size: usize,
        opts: &LayoutOptions,
        limit: Option<usize>,
    ) -> Result<Self, DataError> {
        let mut items = scan_split(root, split, opts)?.items;
        if let Some(n) = limit {
            items.truncate(n);
        }
        Self::from_items(&items, size)
    }

    /// Decodes every item, in parallel; an unreadable image or mask does not stop the others,
    /// so the error lists every bad file (in item order).
    pub fn from_items(items: &[Item], size: usize) -> Result<Self, DataError> {
        Self::from_items_with(items, size, &ReadOptions::default())
    }

    /// [`Dataset::from_items`] with the slice of DICOM and NIfTI files chosen by `read`.
    pub fn from_items_with(
        items: &[Item],
        size: usize,
        read: &ReadOptions,
    ) -> Result<Self, DataError> {
        let results: Vec<Result<(Sample, bool), Vec<DataError>>> = items
            .par_iter()
            .map(|it| load_item(it, size, read))
            .collect();
        let mut loaded = Vec::with_capacity(results.len());
        let mut problems = Vec::new();
        for r in results {
            match r {
                Ok(sample) => loaded.push(sample),
                Err(e) => problems.extend(e),
            }
        }
        DataError::collect(problems)?;
        let size_mismatches = loaded.iter().filter(|(_, m)| *m).count();
        let samples: Vec<Sample> = loaded.into_iter().map(|(s, _)| s).collect();
        let empty_masks = samples
            .iter()
            .filter(|s| s.mask.iter().all(|&m| m == 0))
            .count();
        Ok(Self {
            size,
            samples,
            size_mismatches,
            empty_masks,
        })
    }

    /// Samples `range` of the procedural dataset, rendered at `size`.
    pub fn synthetic(cfg: &SynthConfig, range: std::ops::Range<u64>) -> Self {
        let size = cfg.size;
        let samples: Vec<Sample> = range
            .into_par_iter()
            .map(|i| {
                let s = synth::sample(cfg, i);
                let mut image = Vec::with_capacity(3 * size * size);
                for _ in 0..3 {
                    image.extend_from_slice(&s.image);
                }
                Sample {
                    key: format!("synth_{i:06}"),
                    image,
                    mask: s.mask,
                    note: s.note,
                }
            })
            .collect();
        Self {
            size,
            samples,
            size_mismatches: 0,
            empty_masks: 0,
        }
    }
}

/// One item at model size and whether its mask had another size; the image's and the mask's
/// problems both, when both are bad.
fn load_item(it: &Item, size: usize, read: &ReadOptions) -> Result<(Sample, bool), Vec<DataError>> {
    let (img, mask) = match (
        read_bgr_with(&it.image, read),
        read_grey_with(&it.mask, read),
    ) {
        (Ok(img), Ok(mask)) => (img, mask),
        (img, mask) => return Err(img.err().into_iter().chain(mask.err()).collect()),
    };
    let mismatch = (img.width, img.height) != (mask.width, mask.height);
    let img = img.resized(size, size);
    let mask = mask.resized(size, size);
    Ok((
        Sample {
            key: it.key.clone(),
            image: img.to_planes(3),
            mask: mask.data.iter().map(|&v| (v > 0) as u8).collect(),
            note: it.note.clone(),
        },
        mismatch,
    ))
}

/// Training-time augmentation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Augment {
    /// None at all.
    None,
    /// The authors' set (§4.5) as it acts on chest films: `random_rot_flip` (rot90 then a flip)
    /// with p 0.5, else `random_rotate` (±20°, nearest) with p 0.5, and PhotoMetricDistortion's
    /// brightness and contrast (its saturation and hue steps do nothing to grey images). Their
    /// per-row Gaussian blur (§7 #17) is not reproduced. Flips contradict left/right in notes
    /// (§7 #18), as in their code.
    Paper,
    /// Geometry that keeps notes true: a horizontal flip swaps "left" and "right" in the note,
    /// and no rot90 (which would turn "upper" into "left"); plus small rotations and the same
    /// brightness/contrast jitter.
    TextFaithful,
}

/// Applies `aug` to a copy of `s` with its own random stream.
pub fn augment(s: &Sample, size: usize, aug: Augment, rng: &mut SplitMix64) -> Sample {
    let mut out = s.clone();
    match aug {
        Augment::None => return out,
        Augment::Paper => {
            if rng.unit_f64() < 0.5 {
                let k = rng.below(4);
                for _ in 0..k {
                    rot90(&mut out, size);
                }
                if rng.below(2) == 0 {
                    flip_vertical(&mut out, size);
                } else {
                    flip_horizontal(&mut out, size);
                }
            } else if rng.unit_f64() < 0.5 {
                let angle = rng.below(40) as f64 - 20.0;
                rotate(&mut out, size, angle);
            }
        }
        Augment::TextFaithful => {
            if rng.unit_f64() < 0.5 {
                flip_horizontal(&mut out, size);
                out.note = synth::flip_note_lr(&out.note);
            }
            if rng.unit_f64() < 0.25 {
                let angle = rng.below(21) as f64 - 10.0;
                rotate(&mut out, size, angle);
            }
        }
    }
    photometric(&mut out, rng);
    out
}

/// mmseg's brightness then contrast, each with p 0.5 (the order of `mode = 1`).
fn photometric(s: &mut Sample, rng: &mut SplitMix64) {
    if rng.below(2) == 1 {
        let delta = rng.unit_f64() * 64.0 - 32.0;
        for v in &mut s.image {
            *v = (*v as f64 + delta).clamp(0.0, 255.0) as u8;
        }
    }
    if rng.below(2) == 1 {
        let alpha = 0.5 + rng.unit_f64();
        for v in &mut s.image {
            *v = (*v as f64 * alpha).clamp(0.0, 255.0) as u8;
        }
    }
}

fn remap(s: &mut Sample, size: usize, src_of: impl Fn(usize, usize) -> Option<(usize, usize)>) {
    let n = size * size;
    let mut img = vec![0u8; 3 * n];
    let mut mask = vec![0u8; n];
    for y in 0..size {
        for x in 0..size {
            if let Some((sy, sx)) = src_of(y, x) {
                for c in 0..3 {
                    img[c * n + y * size + x] = s.image[c * n + sy * size + sx];
                }
                mask[y * size + x] = s.mask[sy * size + sx];
            }
        }
    }
    s.image = img;
    s.mask = mask;
}

fn flip_horizontal(s: &mut Sample, size: usize) {
    remap(s, size, |y, x| Some((y, size - 1 - x)));
}

fn flip_vertical(s: &mut Sample, size: usize) {
    remap(s, size, |y, x| Some((size - 1 - y, x)));
}

/// numpy's `rot90` (counter-clockwise).
fn rot90(s: &mut Sample, size: usize) {
    remap(s, size, |y, x| Some((x, size - 1 - y)));
}

/// Rotation about the centre by `deg`, nearest neighbour, zero fill, same size.
fn rotate(s: &mut Sample, size: usize, deg: f64) {
    let (sin, cos) = deg.to_radians().sin_cos();
    let c = (size as f64 - 1.0) / 2.0;
    remap(s, size, |y, x| {
        let (dy, dx) = (y as f64 - c, x as f64 - c);
        let sy = (cos * dy - sin * dx + c).round();
        let sx = (sin * dy + cos * dx + c).round();
        (sy >= 0.0 && sx >= 0.0 && sy < size as f64 && sx < size as f64)
            .then_some((sy as usize, sx as usize))
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(size: usize) -> Sample {
        let n = size * size;
        Sample {
            key: "k".into(),
            image: (0..3 * n).map(|i| (i % 251) as u8).collect(),
            mask: (0..n).map(|i| (i % size < size / 4) as u8).collect(),
            note: "Unilateral pulmonary infection, one infected area, upper left lung.".into(),
        }
    }

    #[test]
    fn flips_and_rotations_move_image_and_mask_together() {
        let s = sample(8);
        let mut f = s.clone();
        flip_horizontal(&mut f, 8);
        flip_horizontal(&mut f, 8);
        assert_eq!(f.image, s.image);
        let mut r = s.clone();
        for _ in 0..4 {
            rot90(&mut r, 8);
        }
        assert_eq!(
            (r.image.clone(), r.mask.clone()),
            (s.image.clone(), s.mask.clone())
        );
        let mut one = s.clone();
        rot90(&mut one, 8);
        // Left columns of the mask become bottom rows after a counter-clockwise turn.
        assert_eq!(one.mask[7 * 8], 1);
        assert_eq!(one.mask[0], 0);
        let mut z = s.clone();
        rotate(&mut z, 8, 0.0);
        assert_eq!(z.image, s.image);
    }

    #[test]
    fn text_faithful_flip_swaps_the_side_in_the_note() {
        let s = sample(8);
        let mut saw_flip = false;
        for seed in 0..20 {
            let a = augment(&s, 8, Augment::TextFaithful, &mut SplitMix64::new(seed));
            let flipped = a.note.contains("right");
            let mut m = s.mask.clone();
            if flipped {
                saw_flip = true;
                let mut f = s.clone();
                flip_horizontal(&mut f, 8);
                m = f.mask;
            }
            if a.mask != m {
                // A small rotation was applied too; the side still has to follow the mask.
                let left: u32 = (0..64)
                    .filter(|i| i % 8 < 4)
                    .map(|i| a.mask[i] as u32)
                    .sum();
                let right: u32 = (0..64)
                    .filter(|i| i % 8 >= 4)
                    .map(|i| a.mask[i] as u32)
                    .sum();
                assert_eq!(flipped, right > left, "seed {seed}");
            }
        }
        assert!(saw_flip);
    }
}
