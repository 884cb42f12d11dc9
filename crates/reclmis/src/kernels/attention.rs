//! Multi-head scaled dot-product attention, `softmax(q·kᵀ/√hd + bias)·v` per head, with its
//! gradient, one (image, head) pair a task.
//!
//! Written as burn ops, one attention call is some twenty tensor passes: heads split into copies,
//! a batched matmul, the mask added, the softmax's max, subtraction, exponential, sum and
//! division, the reweighting's product, sum and division, the merge of the heads into another
//! copy; and as many again backwards, several of them on the calling thread alone. Here each
//! task reads its head's columns of `q`, `k`, `v` in place (row stride `D`), keeps its
//! probabilities for the backward pass, and writes its columns of the output.
//!
//! `bias [Bb, Lqb, Lk]` (`Bb` is 1 or `B`, `Lqb` 1 or `Lq`: broadcast over images, queries and
//! heads) carries the additive mask and the reweighting: `softmax(s + m) ⊙ w / Σ(softmax(s +
//! m) ⊙ w) = softmax(s + m + ln w)`, so `A ⊙ (w + 1e-10)` renormalised (§1.9) is the bias
//! `ln(w + 1e-10)`, exactly in real arithmetic.

use gemm::Parallelism;
use rayon::prelude::*;

use super::cpu::{self, SyncPtr};

/// The sizes of one attention call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttnShape {
    pub b: usize,
    pub lq: usize,
    pub lk: usize,
    /// Model width `D`; each of the `heads` heads has `D / heads` channels.
    pub d: usize,
    pub heads: usize,
    /// Whether the bias has a row per image (else one for all) and per query (else one for all).
    pub bias_per_image: bool,
    pub bias_per_query: bool,
}

impl AttnShape {
    fn hd(&self) -> usize {
        self.d / self.heads
    }

    fn scale(&self) -> f32 {
        1.0 / (self.hd() as f32).sqrt()
    }

    /// Length of the bias `[Bb, Lqb, Lk]`.
    pub fn bias_len(&self) -> usize {
        let bb = if self.bias_per_image { self.b } else { 1 };
        let lqb = if self.bias_per_query { self.lq } else { 1 };
        bb * lqb * self.lk
    }

    /// Where row `i` of image `img`'s bias starts.
    fn bias_offset(&self, img: usize, i: usize) -> usize {
        let img = if self.bias_per_image { img } else { 0 };
        let (i, lqb) = if self.bias_per_query {
            (i, self.lq)
        } else {
            (0, 1)
        };
        (img * lqb + i) * self.lk
    }

    fn check(&self, q: &[f32], k: &[f32], v: &[f32], bias: &[f32]) {
        assert!(
            self.heads > 0 && self.d.is_multiple_of(self.heads),
            "attention: {} heads of width {}",
            self.heads,
            self.d
        );
        assert_eq!(q.len(), self.b * self.lq * self.d, "attention: q length");
        assert_eq!(k.len(), self.b * self.lk * self.d, "attention: k length");
        assert_eq!(v.len(), self.b * self.lk * self.d, "attention: v length");
        assert_eq!(bias.len(), self.bias_len(), "attention: bias length");
    }
}

/// One strided matrix operand: `(pointer, row stride, column stride)`.
type Operand = (*const f32, usize, usize);

/// `dst [m, n] (row stride dst_rs) = beta · lhs · rhs` on this thread.
///
/// # Safety
/// As [`cpu::sgemm`].
unsafe fn product(
    dims: (usize, usize, usize),
    dst: (*mut f32, usize),
    lhs: Operand,
    rhs: Operand,
    beta: f32,
) {
    // SAFETY: the caller's contract.
    unsafe { cpu::sgemm_scaled(dims, dst, false, lhs, rhs, beta, Parallelism::None) }
}

/// `softmax(q_h·k_hᵀ/√hd + bias)·v_h` for every image and head: returns the output `[B, Lq, D]`
/// and the probabilities `[B, heads, Lq, Lk]` (for [`backward`]).
pub fn forward(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    bias: &[f32],
    s: AttnShape,
) -> (Vec<f32>, Vec<f32>) {
    s.check(q, k, v, bias);
    let (lq, lk, d, hd) = (s.lq, s.lk, s.d, s.hd());
    let mut out = cpu::zeroed(s.b * lq * d);
    let mut p = cpu::zeroed(s.b * s.heads * lq * lk);
    let out_ptr = SyncPtr(out.as_mut_ptr());
    p.par_chunks_mut(lq * lk).enumerate().for_each(|(task, p)| {
        let (img, h) = (task / s.heads, task % s.heads);
        let col = img * lq * d + h * hd;
        let kv = img * lk * d + h * hd;
        // SAFETY: q_h is `[lq, hd]` at row stride d inside `q`, k_hᵀ `[hd, lk]` (column stride
        // d) inside `k`; `p` is this task's `[lq, lk]`.
        unsafe {
            product(
                (lq, lk, hd),
                (p.as_mut_ptr(), lk),
                (q[col..].as_ptr(), d, 1),
                (k[kv..].as_ptr(), 1, d),
                s.scale(),
            );
        }
        for (i, row) in p.chunks_exact_mut(lk).enumerate() {
            let b = &bias[s.bias_offset(img, i)..][..lk];
            let mut max = f32::NEG_INFINITY;
            for (x, &c) in row.iter_mut().zip(b) {
                *x += c;
                max = max.max(*x);
            }
            let mut sum = 0.0f32;
            for x in row.iter_mut() {
                // exp underflows to 0 below −104 anyway; masked keys (NEG_INF) would otherwise
                // take libm's slow underflow path, about half of a causal row.
                let e = *x - max;
                *x = if e < -104.0 { 0.0 } else { e.exp() };
                sum += *x;
            }
            row.iter_mut().for_each(|x| *x /= sum);
        }
        // SAFETY: v_h is `[lk, hd]` at row stride d; this task alone writes head h's columns
        // of image img's rows of `out`.
        unsafe {
            product(
                (lq, hd, lk),
                (out_ptr.at(col), d),
                (p.as_ptr(), lk, 1),
                (v[kv..].as_ptr(), d, 1),
                1.0,
            );
        }
    });
    (out, p)
}

/// The gradients of [`forward`] from `dout [B, Lq, D]` and its probabilities `p`: `dq`, `dk`,
/// `dv`, and, when `want_bias`, the bias's (summed over the heads and over what it broadcasts).
#[allow(clippy::too_many_arguments)]
pub fn backward(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    p: &[f32],
    dout: &[f32],
    bias_len: usize,
    want_bias: bool,
    s: AttnShape,
) -> [Vec<f32>; 4] {
    let (lq, lk, d, hd) = (s.lq, s.lk, s.d, s.hd());
    assert_eq!(p.len(), s.b * s.heads * lq * lk, "attention: p length");
    assert_eq!(dout.len(), s.b * lq * d, "attention: dout length");
    assert_eq!(bias_len, s.bias_len(), "attention: bias length");
    let mut dq = cpu::zeroed(q.len());
    let mut dk = cpu::zeroed(k.len());
    let mut dv = cpu::zeroed(v.len());
    // dS of every task, kept only when the bias needs it.
    let mut ds = cpu::zeroed(if want_bias { p.len() } else { 0 });
    let (dq_ptr, dk_ptr, dv_ptr, ds_ptr) = (
        SyncPtr(dq.as_mut_ptr()),
        SyncPtr(dk.as_mut_ptr()),
        SyncPtr(dv.as_mut_ptr()),
        SyncPtr(ds.as_mut_ptr()),
    );
    (0..s.b * s.heads).into_par_iter().for_each(|task| {
        let (img, h) = (task / s.heads, task % s.heads);
        let col = img * lq * d + h * hd;
        let kv = img * lk * d + h * hd;
        let p = &p[task * lq * lk..][..lq * lk];
        let mut scratch = Vec::new();
        let dsv: &mut [f32] = if want_bias {
            // SAFETY: this task alone writes its `[lq, lk]` block of `ds`.
            unsafe { std::slice::from_raw_parts_mut(ds_ptr.at(task * lq * lk), lq * lk) }
        } else {
            scratch.resize(lq * lk, 0.0);
            &mut scratch
        };
        // SAFETY (all four products): operands are head h's `[rows, hd]` column blocks at row
        // stride d inside q, k, v, dout, or this task's `[lq, lk]` blocks; this task alone writes
        // head h's columns of image img in dq, dk, dv.
        unsafe {
            // dV_h = Pᵀ·dO_h.
            product(
                (lk, hd, lq),
                (dv_ptr.at(kv), d),
                (p.as_ptr(), 1, lk),
                (dout[col..].as_ptr(), d, 1),
                1.0,
            );
            // dP = dO_h·V_hᵀ.
            product(
                (lq, lk, hd),
                (dsv.as_mut_ptr(), lk),
                (dout[col..].as_ptr(), d, 1),
                (v[kv..].as_ptr(), 1, d),
                1.0,
            );
        }
        // dS = P ⊙ (dP − Σ_j dP·P), row by row.
        for (dr, pr) in dsv.chunks_exact_mut(lk).zip(p.chunks_exact(lk)) {
            let dot: f32 = dr.iter().zip(pr).map(|(a, b)| a * b).sum();
            dr.iter_mut()
                .zip(pr)
                .for_each(|(g, &pv)| *g = pv * (*g - dot));
        }
        // SAFETY: as above.
        unsafe {
            // dQ_h = dS·K_h/√hd, dK_h = dSᵀ·Q_h/√hd.
            product(
                (lq, hd, lk),
                (dq_ptr.at(col), d),
                (dsv.as_ptr(), lk, 1),
                (k[kv..].as_ptr(), d, 1),
                s.scale(),
            );
            product(
                (lk, hd, lq),
                (dk_ptr.at(kv), d),
                (dsv.as_ptr(), 1, lk),
                (q[col..].as_ptr(), d, 1),
                s.scale(),
            );
        }
    });
    let mut dbias = vec![0.0f32; if want_bias { bias_len } else { 0 }];
    if want_bias {
        for (task, block) in ds.chunks_exact(lq * lk).enumerate() {
            let img = task / s.heads;
            for (i, row) in block.chunks_exact(lk).enumerate() {
                let dst = &mut dbias[s.bias_offset(img, i)..][..lk];
                dst.iter_mut().zip(row).for_each(|(a, &g)| *a += g);
            }
        }
    }
    [dq, dk, dv, dbias]
}

#[cfg(test)]
mod tests;
