//! Side focus: a training augmentation that makes the side a note names matter.
//!
//! On QaTa a lesion is visible in the image, so a model can segment it well while ignoring which
//! lung the note names: the note's side is redundant with the pixels. Such a model follows a
//! note that swaps left and right as if nothing had changed. Side focus adds the missing
//! counter-examples. At a step, with its probability, a training sample is narrowed to one
//! side, chosen at random:
//! - the note is rewritten to name only that side (with the zones the note gave it), and
//! - the target mask keeps only that side's half of the image.
//!
//! When the note never mentioned the chosen side (a one-sided note, the other lung drawn), the
//! new note names the chosen side with the zones of the side that was involved, and the target
//! is that half of the mask, which is (nearly) empty: "the lesion the note describes is not
//! there". Bilateral notes teach the converse: naming one lung means segmenting in that lung
//! only. The image is never changed.
//!
//! Which image half a side word names is measured on the training set, never assumed
//! ([`orientation`]): datasets differ. QaTa-COV19's captions call the image's left half "left"
//! (of the subset's one-sided train/val captions, 118 of 121 "left" ones have most of their mask
//! in the image's left half and 127 of 136 "right" ones in the right half), while the embedded
//! synthetic set follows radiological convention (the patient's left on the image's right).
//! [`Augment::TextFaithful`](super::dataset::Augment) keeps either convention under flips (a
//! flip swaps the side words too).

use std::fmt;

use super::dataset::{Dataset, Sample};
use crate::finding::{Finding, Side, parse};
use crate::rng::SplitMix64;

/// Which image half a note's "left" names, as measured on a dataset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Orientation {
    /// "left" names columns `x < size / 2`.
    pub left_is_image_left: bool,
    /// One-sided notes whose mask lies mostly in the half their side names, under this
    /// orientation, and all one-sided notes with a mask.
    pub agree: usize,
    pub one_sided: usize,
}

impl Orientation {
    /// The image half `side` names: `true` for column `x`.
    fn names(self, side: Side, x: usize, size: usize) -> bool {
        (x < size / 2) == ((side == Side::Left) == self.left_is_image_left)
    }
}

impl fmt::Display for Orientation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "\"left\" is the image's {} half ({} of {} one-sided masks agree)",
            if self.left_is_image_left {
                "left"
            } else {
                "right"
            },
            self.agree,
            self.one_sided
        )
    }
}

/// At least this many one-sided notes with a mask, and at least this share of them on one side,
/// or the orientation is not trusted.
const MIN_ONE_SIDED: usize = 3;
const MIN_AGREEMENT: f64 = 0.8;

/// Measures which image half the side words of `data`'s notes name: over the one-sided notes,
/// in which half most of each mask lies. An error (saying why) when there are too few
/// one-sided notes or they disagree.
pub fn orientation(data: &Dataset) -> Result<Orientation, String> {
    let size = data.size;
    let (mut image_left, mut one_sided) = (0, 0);
    for s in &data.samples {
        let f = parse(&s.note).finding;
        let side = match (f.left.is_empty(), f.right.is_empty()) {
            (false, true) => Side::Left,
            (true, false) => Side::Right,
            _ => continue,
        };
        let (mut l, mut r) = (0u64, 0u64);
        for row in s.mask.chunks(size) {
            for (x, &v) in row.iter().enumerate() {
                if x < size / 2 {
                    l += u64::from(v);
                } else {
                    r += u64::from(v);
                }
            }
        }
        if l == r {
            continue;
        }
        one_sided += 1;
        if (l > r) == (side == Side::Left) {
            image_left += 1;
        }
    }
    if one_sided < MIN_ONE_SIDED {
        return Err(format!(
            "side focus needs one-sided notes to tell which image half \"left\" names; the \
             training set has {one_sided} (at least {MIN_ONE_SIDED})"
        ));
    }
    let left_is_image_left = 2 * image_left >= one_sided;
    let agree = if left_is_image_left {
        image_left
    } else {
        one_sided - image_left
    };
    if (agree as f64) < MIN_AGREEMENT * one_sided as f64 {
        return Err(format!(
            "side focus cannot tell which image half \"left\" names: of {one_sided} one-sided \
             training masks, {image_left} lie mostly in the image's left half and {} in its \
             right half",
            one_sided - image_left
        ));
    }
    Ok(Orientation {
        left_is_image_left,
        agree,
        one_sided,
    })
}

/// Narrows `s` to one randomly chosen side (see the module docs), the side's image half given
/// by `o`. Returns the side, or `None` (and leaves `s` untouched) when the grammar finds no
/// involved zone in the note.
pub fn focus_side(
    s: &mut Sample,
    size: usize,
    o: Orientation,
    rng: &mut SplitMix64,
) -> Option<Side> {
    let read = parse(&s.note);
    let f = read.finding;
    if f.is_empty() {
        return None;
    }
    let side = Side::BOTH[rng.below(2)];
    let zones = if f.zones(side).is_empty() {
        // The other side's zones, drawn on this side: a swapped note.
        f.zones(side.other())
    } else {
        f.zones(side)
    };
    let mut narrowed = Finding::default();
    match side {
        Side::Left => narrowed.left = zones,
        Side::Right => narrowed.right = zones,
    }
    s.note = narrowed.canonical()?;
    for row in s.mask.chunks_mut(size) {
        for (x, v) in row.iter_mut().enumerate() {
            if !o.names(side, x, size) {
                *v = 0;
            }
        }
    }
    Some(side)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(note: &str, size: usize) -> Sample {
        Sample {
            key: "k".into(),
            image: vec![7; 3 * size * size],
            mask: vec![255; size * size],
            note: note.into(),
        }
    }

    const QATA: Orientation = Orientation {
        left_is_image_left: true,
        agree: 1,
        one_sided: 1,
    };

    fn half_sums(mask: &[u8], size: usize) -> (usize, usize) {
        let mut sums = (0, 0);
        for row in mask.chunks(size) {
            for (x, &v) in row.iter().enumerate() {
                if x < size / 2 {
                    sums.0 += v as usize;
                } else {
                    sums.1 += v as usize;
                }
            }
        }
        sums
    }

    #[test]
    fn a_bilateral_note_narrows_to_the_side_it_keeps() {
        let size = 6;
        let note = "Bilateral pulmonary infection, three infected areas, upper middle left lung \
                    and lower right lung.";
        let mut seen = [false; 2];
        for seed in 0..16 {
            let mut s = sample(note, size);
            let side = focus_side(&mut s, size, QATA, &mut SplitMix64::new(seed)).unwrap();
            let f = parse(&s.note).finding;
            let (l, r) = half_sums(&s.mask, size);
            match side {
                Side::Left => {
                    assert!(f.right.is_empty() && f.left.len() == 2, "{}", s.note);
                    assert!(l > 0 && r == 0);
                }
                Side::Right => {
                    assert!(f.left.is_empty() && f.right.len() == 1, "{}", s.note);
                    assert!(l == 0 && r > 0);
                }
            }
            assert_eq!(
                s.image,
                vec![7; 3 * size * size],
                "the image is never changed"
            );
            seen[side as usize] = true;
        }
        assert_eq!(seen, [true, true], "both sides are drawn");
    }

    #[test]
    fn a_one_sided_note_drawn_on_the_other_side_names_that_side() {
        let size = 4;
        for seed in 0..16 {
            let mut s = sample(
                "unilateral pulmonary infection, one infected area, lower left lung.",
                size,
            );
            if focus_side(&mut s, size, QATA, &mut SplitMix64::new(seed)) == Some(Side::Right) {
                assert_eq!(
                    s.note,
                    "unilateral pulmonary infection, one infected area, lower right lung."
                );
                assert_eq!(half_sums(&s.mask, size), (0, 255 * 8));
                return;
            }
        }
        panic!("no seed drew the right side");
    }

    #[test]
    fn a_note_without_a_finding_is_left_alone() {
        let mut s = sample("no finding", 4);
        assert_eq!(focus_side(&mut s, 4, QATA, &mut SplitMix64::new(1)), None);
        assert_eq!(s.note, "no finding");
        assert_eq!(s.mask, vec![255; 16]);
    }

    #[test]
    fn the_orientation_is_measured_from_the_one_sided_masks() {
        let size = 4;
        let one_sided = |note: &str, image_left: bool| {
            let mut s = sample(note, size);
            for row in s.mask.chunks_mut(size) {
                for (x, v) in row.iter_mut().enumerate() {
                    *v = if (x < size / 2) == image_left { 255 } else { 0 };
                }
            }
            s
        };
        let left = "unilateral pulmonary infection, one infected area, lower left lung.";
        let right = "unilateral pulmonary infection, one infected area, upper right lung.";
        let both = "bilateral pulmonary infection, two infected areas, lower left lung and lower \
                    right lung.";
        let data = |samples| Dataset {
            size,
            samples,
            ..Default::default()
        };
        // Radiological convention: the patient's left on the image's right.
        let radiological = data(vec![
            one_sided(left, false),
            one_sided(right, true),
            one_sided(left, false),
            one_sided(right, true),
            one_sided(right, false),
            sample(both, size),
        ]);
        let o = orientation(&radiological).unwrap();
        assert_eq!((o.left_is_image_left, o.agree, o.one_sided), (false, 4, 5));
        let s = (0..16)
            .map(|seed| {
                let mut s = sample(left, size);
                (focus_side(&mut s, size, o, &mut SplitMix64::new(seed)), s)
            })
            .find(|(side, _)| *side == Some(Side::Left))
            .unwrap()
            .1;
        assert_eq!(
            half_sums(&s.mask, size),
            (0, 255 * 8),
            "left is the image's right"
        );
        // QaTa's captions: "left" is the image's left.
        let qata = data(vec![
            one_sided(left, true),
            one_sided(right, false),
            one_sided(left, true),
        ]);
        assert!(orientation(&qata).unwrap().left_is_image_left);
        // Too few, or no majority: refused.
        assert!(orientation(&data(vec![one_sided(left, true)])).is_err());
        let split = data(vec![
            one_sided(left, true),
            one_sided(left, false),
            one_sided(right, true),
            one_sided(right, false),
        ]);
        assert!(orientation(&split).unwrap_err().contains("cannot tell"));
    }
}
