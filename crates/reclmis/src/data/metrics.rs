//! Segmentation scores as the authors compute them: the test protocol of `test_model.py`
//! (docs §5) and the validation hard Dice of `_show_dice` (§2 step 4, §3). The two differ
//! on purpose (§7 quirk 11): threshold `> 0.5` vs `≥ 0.5`, and empty/empty scores 0 vs 1.

/// Per-image scores of the test protocol.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TestScores {
    pub dice: f32,
    pub iou: f64,
}

/// Pixel counts of a binary prediction against a binary mask.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Predicted foreground (Σp).
    pub predicted: u64,
    /// Ground-truth foreground (Σg).
    pub truth: u64,
    /// Both (Σpg).
    pub overlap: u64,
}

impl Counts {
    /// Counts `p = keep(prob)` against `g = mask > 0`.
    ///
    /// # Panics
    /// If `probs` and `mask` differ in length (both are one image of the model size).
    pub fn new(probs: &[f32], mask: &[u8], keep: impl Fn(f32) -> bool) -> Counts {
        assert_eq!(
            probs.len(),
            mask.len(),
            "prediction and mask must cover the same pixels"
        );
        let mut counts = Counts::default();
        for (&p, &g) in probs.iter().zip(mask) {
            let (p, g) = (keep(p), g > 0);
            counts.predicted += u64::from(p);
            counts.truth += u64::from(g);
            counts.overlap += u64::from(p && g);
        }
        counts
    }
}

impl std::ops::AddAssign for Counts {
    fn add_assign(&mut self, other: Counts) {
        self.predicted += other.predicted;
        self.truth += other.truth;
        self.overlap += other.overlap;
    }
}

/// Test-time counts of one image: `p = prob > 0.5` against `g = mask > 0`.
pub fn test_counts(probs: &[f32], mask: &[u8]) -> Counts {
    // paper-parity: §5 — strict `> 0.5` at test time.
    Counts::new(probs, mask, |p| p > 0.5)
}

/// Test-time Dice and IoU of one image from its probabilities and 0/1 mask.
pub fn test_scores(probs: &[f32], mask: &[u8]) -> TestScores {
    let counts = test_counts(probs, mask);
    TestScores {
        dice: test_dice(counts),
        iou: jaccard(counts),
    }
}

/// `2·Σpg / (Σp + Σg + 1e-5)` in float32: no smoothing in the numerator, so an empty prediction
/// on an empty mask scores 0.
pub fn test_dice(c: Counts) -> f32 {
    // paper-parity: §5 / §7 quirk 11 — empty/empty is 0 at test time.
    2.0 * c.overlap as f32 / (c.predicted as f32 + c.truth as f32 + 1e-5)
}

/// `sklearn.metrics.jaccard_score` for the positive label: `tp / (tp + fp + fn)`, and 0 when
/// both are empty (sklearn's zero-division default).
pub fn jaccard(c: Counts) -> f64 {
    let union = c.predicted + c.truth - c.overlap;
    if union == 0 {
        0.0
    } else {
        c.overlap as f64 / union as f64
    }
}

/// Dice of counts summed over many images (`2·ΣTP / (2·ΣTP + ΣFP + ΣFN)`, no smoothing), the
/// "pooled" protocol that weighs every pixel alike; 0 when prediction and truth are both empty.
/// Not the paper's number: that is the mean of per-image [`test_dice`].
pub fn pooled_dice(total: Counts) -> f64 {
    let denominator = total.predicted + total.truth;
    if denominator == 0 {
        0.0
    } else {
        2.0 * total.overlap as f64 / denominator as f64
    }
}

/// Validation hard Dice of one image: `p = [prob ≥ 0.5]`, then `1 − L_dice` of the criterion's
/// Dice term, i.e. `(2Σpg + 4e-5)/(Σp + Σg + 4e-5)`; empty/empty scores 1.
pub fn val_dice(probs: &[f32], mask: &[u8]) -> f32 {
    // paper-parity: §3 `_show_dice` — `≥ 0.5`, and the 0.5 class weights scale the sums by
    // 0.25 but not the 1e-5 smoothing (§7 quirk 26).
    let c = Counts::new(probs, mask, |p| p >= 0.5);
    let w2 = 0.5f32 * 0.5;
    let numerator = 2.0 * (w2 * c.overlap as f32) + 1e-5;
    let denominator = w2 * c.predicted as f32 + w2 * c.truth as f32 + 1e-5;
    numerator / denominator
}

/// Means of per-image test scores, the numbers the paper reports (×100 for percent).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct TestSummary {
    pub images: usize,
    pub dice_sum: f64,
    pub iou_sum: f64,
}

impl TestSummary {
    pub fn add(&mut self, scores: TestScores) {
        self.images += 1;
        self.dice_sum += f64::from(scores.dice);
        self.iou_sum += scores.iou;
    }

    pub fn mean_dice(&self) -> f64 {
        self.dice_sum / self.images.max(1) as f64
    }

    pub fn mean_iou(&self) -> f64 {
        self.iou_sum / self.images.max(1) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_protocol_by_hand() {
        // p > 0.5 → [1, 0, 0, 1] (0.5 itself is out); g = [1, 1, 0, 0]: tp 1, Σp 2, Σg 2.
        let s = test_scores(&[0.6, 0.5, 0.4, 0.9], &[1, 1, 0, 0]);
        assert_eq!(s.dice, 2.0f32 / 4.00001f32);
        assert!((s.dice - 0.499_998_75).abs() < 1e-7);
        assert_eq!(s.iou, 1.0 / 3.0);
        // Perfect: 2n/(2n + 1e-5), IoU 1.
        let s = test_scores(&[0.9, 0.9, 0.1], &[1, 1, 0]);
        assert_eq!(s.dice, 4.0f32 / (4.0f32 + 1e-5));
        assert_eq!(s.iou, 1.0);
        // Empty/empty scores 0 and 0 at test time; one side empty also 0 and 0.
        assert_eq!(
            test_scores(&[0.1, 0.5], &[0, 0]),
            TestScores {
                dice: 0.0,
                iou: 0.0
            }
        );
        assert_eq!(
            test_scores(&[0.1, 0.2], &[1, 0]),
            TestScores {
                dice: 0.0,
                iou: 0.0
            }
        );
        assert_eq!(
            test_scores(&[0.7, 0.2], &[0, 0]),
            TestScores {
                dice: 0.0,
                iou: 0.0
            }
        );
        // Masks count anything non-zero as foreground.
        assert_eq!(test_scores(&[0.9], &[255]).iou, 1.0);
    }

    #[test]
    fn pooled_dice_by_hand() {
        // tp 3, Σp 4, Σg 5 summed from two images: 6 / 9; IoU 3 / (4 + 5 − 3).
        let mut total = test_counts(&[0.9, 0.9, 0.2], &[1, 1, 1]);
        total += test_counts(&[0.9, 0.9, 0.1], &[1, 0, 1]);
        assert_eq!(
            total,
            Counts {
                predicted: 4,
                truth: 5,
                overlap: 3
            }
        );
        assert_eq!(pooled_dice(total), 6.0 / 9.0);
        assert_eq!(jaccard(total), 0.5);
        assert_eq!(pooled_dice(Counts::default()), 0.0);
    }

    #[test]
    fn validation_dice_by_hand() {
        // p ≥ 0.5 → [1, 1, 0, 1]; tp 2, Σp 3, Σg 2: (4 + 4e-5)/(5 + 4e-5) = 0.800 001 6.
        let d = val_dice(&[0.6, 0.5, 0.4, 0.9], &[1, 1, 0, 0]);
        assert!((d - 0.800_001_6).abs() < 1e-7, "{d}");
        assert_eq!(
            d,
            (0.5f32 * 2.0 + 1e-5) / (0.25f32 * 3.0 + 0.25 * 2.0 + 1e-5)
        );
        // Empty/empty scores 1 in validation (and 0 at test time).
        assert_eq!(val_dice(&[0.1, 0.49], &[0, 0]), 1.0);
        // Prediction empty, mask not: 1e-5 / (0.25·2 + 1e-5) ≈ 2e-5.
        let d = val_dice(&[0.1, 0.2], &[1, 1]);
        assert!((d - 2e-5).abs() < 1e-9, "{d}");
    }

    #[test]
    fn summary_means() {
        let mut summary = TestSummary::default();
        summary.add(TestScores {
            dice: 0.5,
            iou: 0.25,
        });
        summary.add(TestScores {
            dice: 1.0,
            iou: 0.75,
        });
        summary.add(TestScores {
            dice: 0.0,
            iou: 0.0,
        });
        assert_eq!(summary.images, 3);
        assert!((summary.mean_dice() - 0.5).abs() < 1e-12);
        assert!((summary.mean_iou() - 1.0 / 3.0).abs() < 1e-12);
        assert_eq!(TestSummary::default().mean_dice(), 0.0);
    }
}
