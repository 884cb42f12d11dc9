//! Conditioned masking `_mask_feat`, mode "dist" (docs §1.8).

use crate::rng::SplitMix64;

/// Which tokens are zeroed: `[B, len]` as 0/1 rows.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenMask {
    pub rows: Vec<Vec<u8>>,
}

impl TokenMask {
    pub fn flat_f32(&self) -> Vec<f32> {
        self.rows.iter().flatten().map(|&m| m as f32).collect()
    }
}

/// Picks `n` of the first `l` positions by weighted sampling without replacement from `p`
/// (successive draws renormalised over what is left, which is numpy's `choice(replace=False)` in
/// distribution); when fewer than `n` weights are positive, the rest is drawn uniformly from the
/// positions not yet chosen (`mask_mode_dist_random`).
pub fn sample_indices(p: &[f32], n: usize, rng: &mut SplitMix64) -> Vec<usize> {
    let l = p.len();
    let n = n.min(l);
    let mut w: Vec<f64> = p.iter().map(|&x| (x as f64).max(0.0)).collect();
    let mut chosen = Vec::with_capacity(n);
    while chosen.len() < n {
        let total: f64 = w.iter().sum();
        if total <= 0.0 {
            break;
        }
        let mut r = rng.unit_f64() * total;
        let mut pick = None;
        for (i, &wi) in w.iter().enumerate() {
            if wi > 0.0 {
                pick = Some(i);
                if r < wi {
                    break;
                }
                r -= wi;
            }
        }
        let Some(i) = pick else { break };
        chosen.push(i);
        w[i] = 0.0;
    }
    let mut rest: Vec<usize> = (0..l).filter(|i| !chosen.contains(i)).collect();
    while chosen.len() < n {
        let k = rng.below(rest.len());
        chosen.push(rest.swap_remove(k));
    }
    chosen
}

/// Samples the image and text masks from POI `[B, N]` and WOI `[B, L]` (row-major host copies).
/// `lens[b]` is the number of real tokens of sample b (masking only ever picks among those).
#[allow(clippy::too_many_arguments)]
pub fn sample_masks(
    poi: &[f32],
    woi: &[f32],
    n_img: usize,
    text_len: usize,
    lens: &[usize],
    n_img_masked: usize,
    text_rate: f64,
    rng: &mut SplitMix64,
) -> (TokenMask, TokenMask) {
    let b = lens.len();
    let mut img = Vec::with_capacity(b);
    let mut text = Vec::with_capacity(b);
    for (s, &l) in lens.iter().enumerate() {
        let mut row = vec![0u8; n_img];
        for i in sample_indices(&poi[s * n_img..(s + 1) * n_img], n_img_masked, rng) {
            row[i] = 1;
        }
        img.push(row);
        let n_text = ((l as f64 * text_rate).floor() as usize).max(1);
        let mut row = vec![0u8; text_len];
        let l = l.min(text_len);
        for i in sample_indices(&woi[s * text_len..s * text_len + l], n_text, rng) {
            row[i] = 1;
        }
        text.push(row);
    }
    (TokenMask { rows: img }, TokenMask { rows: text })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_distinct_indices_and_falls_back_to_uniform() {
        let mut rng = SplitMix64::new(7);
        let p = [0.5, 0.5, 0.0, 0.0, 0.0];
        let idx = sample_indices(&p, 4, &mut rng);
        assert_eq!(idx.len(), 4);
        let mut s = idx.clone();
        s.sort();
        s.dedup();
        assert_eq!(s.len(), 4, "indices are distinct: {idx:?}");
        // The two positive weights come first; the rest is uniform among the zeros.
        let mut first = idx[..2].to_vec();
        first.sort();
        assert_eq!(first, vec![0, 1]);
    }

    #[test]
    fn weighted_draws_follow_the_weights() {
        let mut rng = SplitMix64::new(1);
        let p = [0.7, 0.2, 0.1];
        let mut first = [0usize; 3];
        for _ in 0..20_000 {
            first[sample_indices(&p, 1, &mut rng)[0]] += 1;
        }
        let f0 = first[0] as f64 / 20_000.0;
        assert!((f0 - 0.7).abs() < 0.02, "P(first = 0) = {f0}");
    }
}
