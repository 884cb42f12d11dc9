//! The five losses (docs §3).

use burn::tensor::activation::{log_softmax, softmax};
use burn::tensor::{Tensor, TensorData};

use super::config::Parity;
use super::nn::NEG_INF;

/// Mean of a `[A, B, C]` tensor summed axis by axis: a flat float32 sum over 10⁵–10⁶ terms drifts
/// by ~1e-4 relative, more than the parity tolerance on the losses.
pub fn mean3(t: Tensor<3>) -> Tensor<1> {
    let [a, b, c] = t.dims();
    t.sum_dim(2)
        .sum_dim(1)
        .sum_dim(0)
        .reshape([1])
        .div_scalar((a * b * c) as f64)
}

/// `WeightedDiceBCE(0.5, 0.5)`: `0.5·mean_b Dice_b + 0.5·mean(BCE)`.
/// `probs [B, 1, H, W]`, `target [B, H, W]` in {0, 1}.
pub fn criterion(probs: Tensor<4>, target: Tensor<3>) -> Tensor<1> {
    let [b, _, h, w] = probs.dims();
    let p = probs.reshape([b, h * w]);
    let g = target.reshape([b, h * w]);
    // paper-parity: §7 #26 — the 0.5 class weights scale numerator and denominator, not the
    // smoothing.
    let (pw, gw) = (p.clone().mul_scalar(0.5), g.clone().mul_scalar(0.5));
    let inter = (pw.clone() * gw.clone())
        .sum_dim(1)
        .mul_scalar(2.0)
        .add_scalar(1e-5);
    let denom = (pw.clone() * pw + gw.clone() * gw)
        .sum_dim(1)
        .add_scalar(1e-5);
    let dice = (inter / denom).neg().add_scalar(1.0).mean(); // [1]
    let log_p = bce_log(p.clone());
    let log_q = bce_log(p.neg().add_scalar(1.0));
    let bce = mean3(
        (g.clone() * log_p + g.neg().add_scalar(1.0) * log_q)
            .neg()
            .reshape([b, h, w]),
    );
    dice.mul_scalar(0.5) + bce.mul_scalar(0.5)
}

/// `max(log x, −100)`, as PyTorch's `binary_cross_entropy` clamps, with a finite gradient
/// everywhere. `log(x).clamp_min(-100)` takes `0 · (1/0) = NaN` back through `log` when a
/// probability saturates to exactly 0 or 1 (a logit beyond ±17 in float32), which stopped a
/// run with batch 32 at its 12th step. Below the smallest normal float (≈ e^−87.3) the value
/// is −100 and the gradient 0; PyTorch gives `log x` for subnormal `x > e^−100` there.
fn bce_log<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    let tiny = x.clone().lower_elem(f32::MIN_POSITIVE);
    x.mask_fill(tiny.clone(), 1.0).log().mask_fill(tiny, -100.0)
}

/// `−mean_i log_softmax_row(X)[i, i]` for a square `X [B, B]`.
fn diag_ce(x: Tensor<2>) -> Tensor<1> {
    let n = x.dims()[0];
    let eye = Tensor::<2>::from_data(
        TensorData::new(
            (0..n * n)
                .map(|k| (k / n == k % n) as u8 as f32)
                .collect::<Vec<_>>(),
            [n, n],
        ),
        &x.device(),
    );
    (log_softmax(x, 1) * eye).sum().div_scalar(n as f64).neg()
}

/// Per-token L2 normalisation over the last axis.
fn l2_normalise(x: Tensor<3>, eps: f64) -> Tensor<3> {
    let norm = x.clone().powi_scalar(2).sum_dim(2).sqrt();
    if eps > 0.0 {
        x / norm.clamp_min(eps)
    } else {
        x / norm
    }
}

/// Conditioned contrastive loss `cond_cons_loss`.
/// `text_feat [B, L, D]`, `img_tokens [B, N, D]` (CNN `img_feat4`), `woi [B, L]`, `poi [B, N]`,
/// `text_mask [B, L]` (0/1), `scale` = exp(logit_scale).
pub fn ccl(
    text_feat: Tensor<3>,
    img_tokens: Tensor<3>,
    woi: Tensor<2>,
    poi: Tensor<2>,
    text_mask: Tensor<2>,
    scale: Tensor<1>,
    parity: Parity,
) -> Tensor<1> {
    let [b, l, d] = text_feat.dims();
    let n = img_tokens.dims()[1];
    let paper = parity == Parity::Paper;
    let (omega_t, omega_v) = if paper {
        // paper-parity: §7 #1 — a second softmax over already-softmaxed weights; pads get e^0/Σ.
        (softmax(woi, 1), softmax(poi, 1))
    } else {
        (woi, poi)
    };
    // paper-parity: §7 #20 — no epsilon.
    let eps = if paper { 0.0 } else { 1e-8 };
    let t = l2_normalise(text_feat, eps).reshape([b * l, d]);
    let v = l2_normalise(img_tokens, eps).reshape([b * n, d]);
    let s = t
        .matmul(v.transpose())
        .reshape([b, l, b, n])
        .swap_dims(1, 2); // [a, b, L, N]
    let s = s * text_mask.clone().reshape([b, 1, l, 1]);
    // t2v[a, b] = Σ_t ω_t[a, t] · max_v S
    let t2v = (s.clone().max_dim(3).reshape([b, b, l]) * omega_t.reshape([b, 1, l]))
        .sum_dim(2)
        .reshape([b, b]);
    // v2t[a, b] = Σ_v ω_v[b, v] · max_t S
    let s_t = if paper {
        // paper-parity: §7 #21 — pad rows (zeroed) take part in the max.
        s
    } else {
        let pad = text_mask.neg().add_scalar(1.0).mul_scalar(NEG_INF as f64);
        s + pad.reshape([b, 1, l, 1])
    };
    let v2t = (s_t.max_dim(2).reshape([b, b, n]) * omega_v.reshape([1, b, n]))
        .sum_dim(2)
        .reshape([b, b]);
    let r = (t2v + v2t).mul_scalar(0.5) * scale.reshape([1, 1]);
    (diag_ce(r.clone()) + diag_ce(r.transpose())).mul_scalar(0.5)
}

/// Mean squared error; `row_mask [B, L]` restricts the mean to the rows where it is 1.
pub fn mse(pred: Tensor<3>, target: Tensor<3>, row_mask: Option<Tensor<2>>) -> Tensor<1> {
    let [b, l, d] = pred.dims();
    let sq = (pred - target).powi_scalar(2);
    match row_mask {
        None => mean3(sq),
        Some(m) => {
            let count = m.clone().sum().mul_scalar(d as f64);
            (sq * m.reshape([b, l, 1]))
                .sum_dim(2)
                .sum_dim(1)
                .sum_dim(0)
                .reshape([1])
                / count
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Device;

    /// Saturated probabilities (exactly 0 or 1, as float32 sigmoids of logits beyond ±17 give)
    /// keep the loss at PyTorch's value and every gradient finite.
    #[test]
    fn criterion_is_finite_at_saturated_probabilities() {
        let device = Device::flex().autodiff();
        // One image of four pixels: right and sure, wrong and sure both ways (p = 1 where
        // g = 0, p = 0 where g = 1), and an ordinary one.
        let p = [0.0f32, 1.0, 0.0, 0.25];
        let g = [0.0f32, 0.0, 1.0, 1.0];
        let probs = Tensor::<4>::from_data(TensorData::new(p.to_vec(), [1, 1, 2, 2]), &device)
            .require_grad();
        let target = Tensor::<3>::from_data(TensorData::new(g.to_vec(), [1, 2, 2]), &device);
        let loss = criterion(probs.clone(), target);
        let value = loss.clone().into_data().try_to_vec::<f32>().unwrap()[0] as f64;

        // PyTorch: BCE terms 0, 100, 100 (clamped), −log 0.25; Dice with the 0.5 weights.
        let bce = (0.0 + 100.0 + 100.0 - 0.25f64.ln()) / 4.0;
        let (pw, gw): (Vec<f64>, Vec<f64>) = p
            .iter()
            .zip(&g)
            .map(|(&p, &g)| (0.5 * p as f64, 0.5 * g as f64))
            .unzip();
        let inter: f64 = 2.0 * pw.iter().zip(&gw).map(|(a, b)| a * b).sum::<f64>() + 1e-5;
        let denom: f64 = pw.iter().chain(&gw).map(|a| a * a).sum::<f64>() + 1e-5;
        let want = 0.5 * (1.0 - inter / denom) + 0.5 * bce;
        assert!((value - want).abs() < 1e-5 * want, "{value} vs {want}");

        let grads = loss.backward();
        let dp = probs
            .grad(&grads)
            .unwrap()
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        assert!(dp.iter().all(|d| d.is_finite()), "gradient {dp:?}");
        // The ordinary pixel keeps BCE's −g/p (÷ 4 pixels, × 0.5) plus the Dice part.
        assert!(dp[3] < -0.5 / 0.25 / 4.0 + 1e-3, "{}", dp[3]);
    }
}
