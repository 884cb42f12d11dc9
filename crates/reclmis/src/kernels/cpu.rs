//! CPU kernels for the hot `Conv2d(k, pad k/2, bias) → BatchNorm(train) → ReLU` block, on raw
//! NCHW f32 slices.
//!
//! Convolutions are im2col + `gemm` over row tiles of one image; each rayon thread owns one column
//! buffer for the whole call and a fixed run of tiles, so nothing is allocated per tile and
//! results depend on the thread count only, not on scheduling. The input gradient is the forward
//! convolution of `dy` with the flipped, channel-transposed kernel (same padding for odd `k`),
//! which keeps it a fat gemm instead of a scatter-add. The weight gradient contracts over pixels
//! (a long-k gemm) into one accumulator per thread, summed at the end.

use std::ops::Range;

use gemm::{Parallelism, gemm};
use rayon::prelude::*;

/// Geometry of a stride-1, dilation-1, groups-1 convolution with odd square kernel `k` and
/// padding `k / 2`, so the output has the input's spatial size: `[b, cin, h, w] → [b, cout, h, w]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvShape {
    pub b: usize,
    pub cin: usize,
    pub cout: usize,
    pub h: usize,
    pub w: usize,
    pub k: usize,
}

impl ConvShape {
    pub(crate) fn hw(&self) -> usize {
        self.h * self.w
    }

    /// Rows of the im2col matrix (the gemm reduction length of the forward pass).
    pub(crate) fn kk(&self) -> usize {
        self.cin * self.k * self.k
    }

    fn check(&self) {
        assert!(
            self.k % 2 == 1,
            "conv kernel size must be odd, got {}",
            self.k
        );
    }

    /// The shape of the input-gradient pass, a forward convolution from `cout` to `cin` channels.
    pub(crate) fn adjoint(&self) -> ConvShape {
        ConvShape {
            cin: self.cout,
            cout: self.cin,
            ..*self
        }
    }

    /// Asserts an odd kernel and the buffer lengths of a forward pass.
    pub(crate) fn check_forward(&self, x: &[f32], w: &[f32], bias: Option<&[f32]>, out: &[f32]) {
        self.check();
        assert_eq!(x.len(), self.b * self.cin * self.hw(), "conv input length");
        assert_eq!(w.len(), self.cout * self.kk(), "conv weight length");
        assert_eq!(
            out.len(),
            self.b * self.cout * self.hw(),
            "conv output length"
        );
        if let Some(bias) = bias {
            assert_eq!(bias.len(), self.cout, "conv bias length");
        }
    }

    /// As [`ConvShape::check_forward`], for the input gradient.
    pub(crate) fn check_input_grad(&self, dy: &[f32], w: &[f32], dx: &[f32]) {
        self.check();
        assert_eq!(w.len(), self.cout * self.kk(), "conv weight length");
        assert_eq!(
            dy.len(),
            self.b * self.cout * self.hw(),
            "conv output-grad length"
        );
        assert_eq!(
            dx.len(),
            self.b * self.cin * self.hw(),
            "conv input-grad length"
        );
    }

    /// As [`ConvShape::check_forward`], for the weight and bias gradients.
    pub(crate) fn check_weight_grad(&self, x: &[f32], dy: &[f32], dw: &[f32], db: Option<&[f32]>) {
        self.check();
        assert_eq!(x.len(), self.b * self.cin * self.hw(), "conv input length");
        assert_eq!(
            dy.len(),
            self.b * self.cout * self.hw(),
            "conv output-grad length"
        );
        assert_eq!(dw.len(), self.cout * self.kk(), "conv weight-grad length");
        if let Some(db) = db {
            assert_eq!(db.len(), self.cout, "conv bias-grad length");
        }
    }
}

/// Bytes of im2col tile each thread aims for: about half of a 1 MiB L2, so the tile is still
/// cached when gemm packs it (measured best among 0.25-4 MiB on the 2-core Zen 5 target).
const COL_BUDGET: usize = 1 << 19;
/// Fewest output pixels per tile; below this, repacking the weights for every tile dominates.
const MIN_TILE_PIXELS: usize = 256;

/// Weight-gradient size from which all threads share one accumulator.
const SHARED_DW_ELEMS: usize = 1 << 21;

/// A raw pointer that rayon tasks may share; every use writes a region no other task touches.
#[derive(Clone, Copy)]
pub(crate) struct SyncPtr(pub(crate) *mut f32);
// SAFETY: only used to hand disjoint output regions to threads (see each use).
unsafe impl Send for SyncPtr {}
unsafe impl Sync for SyncPtr {}

/// One image's output rows `rows`.
#[derive(Clone, Debug)]
pub(crate) struct Tile {
    pub(crate) img: usize,
    pub(crate) rows: Range<usize>,
}

/// Row tiles over all images: about [`COL_BUDGET`] of im2col each, equal within an image, and
/// a multiple of the thread count where the shape allows, so static shares balance.
pub(crate) fn plan_tiles(s: &ConvShape, col_rows: usize, threads: usize) -> Vec<Tile> {
    if s.b == 0 || s.h == 0 || s.w == 0 {
        return Vec::new();
    }
    let row_bytes = (col_rows * s.w * 4).max(1);
    let rows = (COL_BUDGET / row_bytes).max(MIN_TILE_PIXELS.div_ceil(s.w.max(1)));
    let mut per_img = s.h.div_ceil(rows.max(1)).max(threads.div_ceil(s.b));
    while !(s.b * per_img).is_multiple_of(threads) && per_img < s.h {
        per_img += 1;
    }
    let per_img = per_img.min(s.h);
    (0..s.b)
        .flat_map(|img| {
            (0..per_img).map(move |t| Tile {
                img,
                rows: s.h * t / per_img..s.h * (t + 1) / per_img,
            })
        })
        .collect()
}

/// Contiguous share of `n` items for thread `t` of `threads`.
pub(crate) fn share(n: usize, t: usize, threads: usize) -> Range<usize> {
    (n * t / threads)..(n * (t + 1) / threads)
}

/// Writes the im2col matrix `[cin·k·k, rows·w]` of one image `[cin, h, w]` for output `rows`.
fn im2col(x: &[f32], s: &ConvShape, rows: &Range<usize>, col: &mut [f32]) {
    let (h, w, k) = (s.h, s.w, s.k);
    let p = (k / 2) as isize;
    let npix = rows.len() * w;
    for (r, col_row) in col.chunks_exact_mut(npix).take(s.kk()).enumerate() {
        let (ci, ky, kx) = (r / (k * k), (r / k) % k, r % k);
        let plane = &x[ci * h * w..(ci + 1) * h * w];
        let shift = kx as isize - p;
        for (y, dst) in rows.clone().zip(col_row.chunks_exact_mut(w)) {
            let sy = y as isize + ky as isize - p;
            if sy < 0 || sy >= h as isize {
                dst.fill(0.0);
                continue;
            }
            let src = &plane[sy as usize * w..(sy as usize + 1) * w];
            let a = shift.unsigned_abs().min(w);
            if shift >= 0 {
                dst[..w - a].copy_from_slice(&src[a..]);
                dst[w - a..].fill(0.0);
            } else {
                dst[..a].fill(0.0);
                dst[a..].copy_from_slice(&src[..w - a]);
            }
        }
    }
}

/// `dst[m, n] (row stride dst_rs) = (accumulate ? dst : 0) + lhs[m, kd] · rhs[kd, n]`, with
/// strides in elements.
///
/// # Safety
/// Every pointer must address the full strided matrix it describes, and `dst` must not be
/// written by anyone else meanwhile.
#[allow(clippy::too_many_arguments)]
unsafe fn sgemm(
    (m, n, kd): (usize, usize, usize),
    dst: *mut f32,
    dst_rs: usize,
    accumulate: bool,
    (lhs, lhs_rs, lhs_cs): (*const f32, usize, usize),
    (rhs, rhs_rs, rhs_cs): (*const f32, usize, usize),
    par: Parallelism,
) {
    // SAFETY: forwarded from the caller's contract.
    unsafe {
        gemm(
            m,
            n,
            kd,
            dst,
            1,
            dst_rs as isize,
            accumulate,
            lhs,
            lhs_cs as isize,
            lhs_rs as isize,
            rhs,
            rhs_cs as isize,
            rhs_rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            par,
        )
    }
}

/// Forward convolution (cross-correlation, like PyTorch) with optional bias and fused ReLU.
///
/// `x: [b, cin, h, w]`, `w: [cout, cin, k, k]`, `bias: [cout]`, `out: [b, cout, h, w]`.
pub fn conv_forward(
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    s: ConvShape,
    relu: bool,
    out: &mut [f32],
) {
    s.check_forward(x, w, bias, out);
    if out.is_empty() {
        return;
    }
    if s.kk() == 0 {
        fill_bias(out, bias, &s, relu);
        return;
    }
    let threads = rayon::current_num_threads().max(1);
    let tiles = plan_tiles(&s, s.kk(), threads);
    let out_ptr = SyncPtr(out.as_mut_ptr());
    let work = |range: Range<usize>, par: Parallelism| {
        let mut col = if s.k == 1 {
            Vec::new()
        } else {
            let max_pix = tiles[range.clone()]
                .iter()
                .map(|t| t.rows.len() * s.w)
                .max();
            vec![0.0f32; s.kk() * max_pix.unwrap_or(0)]
        };
        for tile in &tiles[range] {
            forward_tile(x, w, bias, &s, relu, tile, &mut col, out_ptr, par);
        }
    };
    if tiles.len() < threads {
        work(0..tiles.len(), Parallelism::Rayon(threads));
    } else {
        (0..threads)
            .into_par_iter()
            .for_each(|t| work(share(tiles.len(), t, threads), Parallelism::None));
    }
}

/// Output for a kernel with no inputs (`cin == 0`): just the bias.
fn fill_bias(out: &mut [f32], bias: Option<&[f32]>, s: &ConvShape, relu: bool) {
    for (i, plane) in out.chunks_exact_mut(s.hw()).enumerate() {
        let v = bias.map_or(0.0, |b| b[i % s.cout]);
        plane.fill(if relu { relu_f32(v) } else { v });
    }
}

#[allow(clippy::too_many_arguments)]
fn forward_tile(
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    s: &ConvShape,
    relu: bool,
    tile: &Tile,
    col: &mut [f32],
    out: SyncPtr,
    par: Parallelism,
) {
    let hw = s.hw();
    let npix = tile.rows.len() * s.w;
    let p0 = tile.rows.start * s.w;
    let x_img = &x[tile.img * s.cin * hw..(tile.img + 1) * s.cin * hw];
    let (rhs, rhs_rs) = if s.k == 1 {
        (x_img[p0..].as_ptr(), hw)
    } else {
        im2col(x_img, s, &tile.rows, col);
        (col.as_ptr(), npix)
    };
    // SAFETY: tiles are disjoint row ranges of distinct (image, rows) pairs, so this tile's
    // `[cout, npix]` block of `out` (row stride `hw`) is written by this task alone, and it lies
    // inside `out`, whose length was checked.
    let dst = unsafe { out.0.add(tile.img * s.cout * hw + p0) };
    if let Some(bias) = bias {
        for (co, &bv) in bias.iter().enumerate() {
            // SAFETY: as above; row `co` of the block.
            unsafe { std::slice::from_raw_parts_mut(dst.add(co * hw), npix) }.fill(bv);
        }
    }
    // SAFETY: `w` is `[cout, kk]`, `rhs` is `[kk, npix]` with row stride `rhs_rs` inside `x` or
    // `col` (sized for the largest tile), `dst` as above.
    unsafe {
        sgemm(
            (s.cout, npix, s.kk()),
            dst,
            hw,
            bias.is_some(),
            (w.as_ptr(), s.kk(), 1),
            (rhs, rhs_rs, 1),
            par,
        );
    }
    if relu {
        for co in 0..s.cout {
            // SAFETY: as above; row `co` of the block.
            let row = unsafe { std::slice::from_raw_parts_mut(dst.add(co * hw), npix) };
            row.iter_mut().for_each(|v| *v = relu_f32(*v));
        }
    }
}

/// Gradient of [`conv_forward`] (without ReLU) with respect to its input; overwrites `dx`.
///
/// `dy: [b, cout, h, w]`, `w: [cout, cin, k, k]`, `dx: [b, cin, h, w]`.
pub fn conv_input_grad(dy: &[f32], w: &[f32], s: ConvShape, dx: &mut [f32]) {
    s.check_input_grad(dy, w, dx);
    let k2 = s.k * s.k;
    // [cin, cout, k, k], spatially flipped: the adjoint of a padded correlation.
    let mut wt = vec![0.0f32; w.len()];
    for co in 0..s.cout {
        for ci in 0..s.cin {
            let src = &w[(co * s.cin + ci) * k2..][..k2];
            copy_flipped(src, &mut wt[(ci * s.cout + co) * k2..][..k2]);
        }
    }
    conv_forward(dy, &wt, None, s.adjoint(), false, dx);
}

/// `dst` = one `k×k` kernel rotated by 180°, the adjoint of a padded correlation.
pub(crate) fn copy_flipped(src: &[f32], dst: &mut [f32]) {
    dst.iter_mut()
        .zip(src.iter().rev())
        .for_each(|(d, &v)| *d = v);
}

/// Gradients of [`conv_forward`] (without ReLU) with respect to the weight and bias; overwrites
/// `dw: [cout, cin, k, k]` and `dbias: [cout]`.
pub fn conv_weight_grad(
    x: &[f32],
    dy: &[f32],
    s: ConvShape,
    dw: &mut [f32],
    dbias: Option<&mut [f32]>,
) {
    s.check_weight_grad(x, dy, dw, dbias.as_deref());
    let hw = s.hw();
    let threads = rayon::current_num_threads().max(1);
    let tiles = plan_tiles(&s, s.kk(), threads);
    let want_bias = dbias.is_some();
    // Each share accumulates `[cout, kk]` (+ f64 bias sums) privately; share 0 uses `dw` itself.
    let work = |range: Range<usize>, acc: &mut [f32], par: Parallelism| -> Vec<f64> {
        let max_pix = tiles[range.clone()]
            .iter()
            .map(|t| t.rows.len() * s.w)
            .max();
        let mut col = if s.k == 1 {
            Vec::new()
        } else {
            vec![0.0f32; s.kk() * max_pix.unwrap_or(0)]
        };
        let mut bsum = vec![0.0f64; if want_bias { s.cout } else { 0 }];
        let mut first = true;
        for tile in &tiles[range] {
            let npix = tile.rows.len() * s.w;
            let p0 = tile.rows.start * s.w;
            let x_img = &x[tile.img * s.cin * hw..(tile.img + 1) * s.cin * hw];
            let dy_img = &dy[tile.img * s.cout * hw..(tile.img + 1) * s.cout * hw];
            // col^T as `[npix, kk]`: pixel stride 1, im2col-row stride `rhs_cs`.
            let (rhs, rhs_cs) = if s.k == 1 {
                (x_img[p0..].as_ptr(), hw)
            } else {
                im2col(x_img, &s, &tile.rows, &mut col);
                (col.as_ptr(), npix)
            };
            if !acc.is_empty() {
                // SAFETY: `acc` is `[cout, kk]` owned by this task; `dy_img[p0..]` holds
                // `[cout, npix]` with row stride `hw`; `rhs` is `[npix, kk]` as described.
                unsafe {
                    sgemm(
                        (s.cout, s.kk(), npix),
                        acc.as_mut_ptr(),
                        s.kk(),
                        !first,
                        (dy_img[p0..].as_ptr(), hw, 1),
                        (rhs, 1, rhs_cs),
                        par,
                    );
                }
            }
            first = false;
            for (co, bs) in bsum.iter_mut().enumerate() {
                *bs += sum_f64(&dy_img[co * hw + p0..co * hw + p0 + npix]);
            }
        }
        if first {
            acc.fill(0.0);
        }
        bsum
    };
    // Per-thread accumulators as large as the L3 share cost more in traffic (and the final sum)
    // than one rayon-parallel gemm per tile loses to its serial im2col (measured at 8 MiB).
    let shared = s.cout * s.kk() >= SHARED_DW_ELEMS;
    let bsums: Vec<Vec<f64>> = if shared || tiles.len() < threads || threads == 1 || dw.is_empty() {
        vec![work(0..tiles.len(), dw, Parallelism::Rayon(threads))]
    } else {
        let mut extra = vec![0.0f32; (threads - 1) * dw.len()];
        let mut accs: Vec<&mut [f32]> = vec![&mut *dw];
        accs.extend(extra.chunks_exact_mut(s.cout * s.kk()));
        let bsums = accs
            .into_par_iter()
            .enumerate()
            .map(|(t, acc)| work(share(tiles.len(), t, threads), acc, Parallelism::None))
            .collect();
        let chunk = dw.len().div_ceil(threads * 4).max(1024);
        dw.par_chunks_mut(chunk).enumerate().for_each(|(i, d)| {
            for part in extra.chunks_exact(s.cout * s.kk()) {
                let src = &part[i * chunk..i * chunk + d.len()];
                d.iter_mut().zip(src).for_each(|(a, &b)| *a += b);
            }
        });
        bsums
    };
    if let Some(db) = dbias {
        for (co, d) in db.iter_mut().enumerate() {
            *d = bsums.iter().map(|b| b[co]).sum::<f64>() as f32;
        }
    }
}

/// Lanes of the f64 accumulators: independent partial sums so the add latency does not
/// serialise the loop, laid out so LLVM turns each step into vector ops.
const LANES: usize = 8;

#[inline(always)]
fn widen(v: &[f32]) -> [f64; LANES] {
    std::array::from_fn(|l| v[l] as f64)
}

/// Σ v in f64.
pub(crate) fn sum_f64(v: &[f32]) -> f64 {
    let mut acc = [0.0f64; LANES];
    let chunks = v.chunks_exact(LANES);
    let tail: f64 = chunks.remainder().iter().map(|&x| x as f64).sum();
    for c in chunks {
        let w = widen(c);
        for l in 0..LANES {
            acc[l] += w[l];
        }
    }
    acc.iter().sum::<f64>() + tail
}

/// Σ (v − m)² in f64.
fn sq_dev_sum(v: &[f32], m: f64) -> f64 {
    let mut acc = [0.0f64; LANES];
    let chunks = v.chunks_exact(LANES);
    let tail: f64 = (chunks.remainder().iter())
        .map(|&x| (x as f64 - m) * (x as f64 - m))
        .sum();
    for c in chunks {
        let w = widen(c);
        for l in 0..LANES {
            let d = w[l] - m;
            acc[l] += d * d;
        }
    }
    acc.iter().sum::<f64>() + tail
}

/// Per-channel views of a `[b, c, n]` tensor: entry `ch` holds the `b` rows of channel `ch`.
fn channel_rows_mut(t: &mut [f32], c: usize, n: usize) -> Vec<Vec<&mut [f32]>> {
    let mut per: Vec<Vec<&mut [f32]>> = (0..c).map(|_| Vec::new()).collect();
    if n > 0 {
        for (i, row) in t.chunks_exact_mut(n).enumerate() {
            per[i % c].push(row);
        }
    }
    per
}

/// Training-mode BatchNorm over axis 1 of `x: [b, c, n]`, optionally fused with ReLU.
///
/// Statistics are two-pass f64 and each element is normalised in f64 before rounding, so the
/// output and gradients track PyTorch's CPU numerics closely. Writes the batch `mean` and the
/// biased `var` (callers update running stats with the unbiased one themselves).
#[allow(clippy::too_many_arguments)]
pub fn bn_train_forward(
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    b: usize,
    c: usize,
    n: usize,
    eps: f64,
    relu: bool,
    y: &mut [f32],
    mean: &mut [f64],
    var: &mut [f64],
) {
    assert_eq!(x.len(), b * c * n, "batchnorm input length");
    assert_eq!(y.len(), x.len(), "batchnorm output length");
    for (len, what) in [
        (gamma.len(), "gamma"),
        (beta.len(), "beta"),
        (mean.len(), "mean"),
        (var.len(), "var"),
    ] {
        assert_eq!(len, c, "batchnorm {what} length");
    }
    let count = (b * n) as f64;
    channel_rows_mut(y, c, n)
        .into_par_iter()
        .zip(mean.par_iter_mut())
        .zip(var.par_iter_mut())
        .enumerate()
        .for_each(|(ch, ((y_rows, mean), var))| {
            let rows = || (0..b).map(|i| &x[(i * c + ch) * n..(i * c + ch + 1) * n]);
            let m = rows().map(sum_f64).sum::<f64>() / count;
            let v = rows().map(|r| sq_dev_sum(r, m)).sum::<f64>() / count;
            *mean = m;
            *var = v;
            let scale = gamma[ch] as f64 / (v + eps).sqrt();
            let shift = beta[ch] as f64;
            for (src, dst) in rows().zip(y_rows) {
                if relu {
                    normalize_row::<true>(src, m, scale, shift, dst);
                } else {
                    normalize_row::<false>(src, m, scale, shift, dst);
                }
            }
        });
}

/// `dst = (src − m)·scale + shift` per element in f64, then ReLU if `RELU`.
fn normalize_row<const RELU: bool>(src: &[f32], m: f64, scale: f64, shift: f64, dst: &mut [f32]) {
    let src = &src[..dst.len()];
    for j in 0..dst.len() {
        let o = ((src[j] as f64 - m) * scale + shift) as f32;
        dst[j] = if RELU { relu_f32(o) } else { o };
    }
}

/// Backward of [`bn_train_forward`]; overwrites `dx`, `dgamma` and `dbeta`.
///
/// `y` is the forward output, read only for the ReLU mask when `relu`.
#[allow(clippy::too_many_arguments)]
pub fn bn_train_backward(
    dy: &[f32],
    x: &[f32],
    y: &[f32],
    gamma: &[f32],
    mean: &[f64],
    var: &[f64],
    b: usize,
    c: usize,
    n: usize,
    eps: f64,
    relu: bool,
    dx: &mut [f32],
    dgamma: &mut [f32],
    dbeta: &mut [f32],
) {
    let len = b * c * n;
    assert_eq!(x.len(), len, "batchnorm input length");
    assert_eq!(dy.len(), len, "batchnorm output-grad length");
    assert_eq!(dx.len(), len, "batchnorm input-grad length");
    if relu {
        assert_eq!(y.len(), len, "batchnorm output length");
    }
    for (l, what) in [
        (gamma.len(), "gamma"),
        (mean.len(), "mean"),
        (var.len(), "var"),
        (dgamma.len(), "dgamma"),
        (dbeta.len(), "dbeta"),
    ] {
        assert_eq!(l, c, "batchnorm {what} length");
    }
    let count = (b * n) as f64;
    channel_rows_mut(dx, c, n)
        .into_par_iter()
        .zip(dgamma.par_iter_mut())
        .zip(dbeta.par_iter_mut())
        .enumerate()
        .for_each(|(ch, ((dx_rows, dgamma), dbeta))| {
            let at = |i: usize| (i * c + ch) * n..(i * c + ch + 1) * n;
            let m = mean[ch];
            let invstd = 1.0 / (var[ch] + eps).sqrt();
            let (mut sg, mut sgx) = (0.0f64, 0.0f64);
            for i in 0..b {
                let mask = relu.then(|| &y[at(i)]);
                let (a, bb) = grad_sums(&dy[at(i)], &x[at(i)], mask, m);
                sg += a;
                sgx += bb;
            }
            // Σ g·xhat = invstd · Σ g·(x − mean)
            let sgxhat = sgx * invstd;
            *dbeta = sg as f32;
            *dgamma = sgxhat as f32;
            let scale = gamma[ch] as f64 * invstd;
            let mg = sg / count;
            let mgx = sgxhat / count * invstd;
            let coef = [scale, mg, m, mgx];
            for (i, d) in dx_rows.into_iter().enumerate() {
                if relu {
                    dx_row::<true>(&dy[at(i)], &x[at(i)], &y[at(i)], coef, d);
                } else {
                    dx_row::<false>(&dy[at(i)], &x[at(i)], &dy[at(i)], coef, d);
                }
            }
        });
}

/// `dx = scale·(g − mg − (x − m)·mgx)` per element in f64, `g` masked by `mask > 0` if `RELU`.
fn dx_row<const RELU: bool>(
    dy: &[f32],
    x: &[f32],
    mask: &[f32],
    [scale, mg, m, mgx]: [f64; 4],
    dx: &mut [f32],
) {
    let n = dx.len();
    let (dy, x, mask) = (&dy[..n], &x[..n], &mask[..n]);
    for j in 0..n {
        let g = if RELU {
            relu_mask(dy[j], mask[j])
        } else {
            dy[j]
        } as f64;
        dx[j] = (scale * (g - mg - (x[j] as f64 - m) * mgx)) as f32;
    }
}

/// ReLU that keeps NaN visible, as PyTorch's does.
#[inline(always)]
fn relu_f32(v: f32) -> f32 {
    if v < 0.0 { 0.0 } else { v }
}

/// The ReLU backward mask: `g` where the output was positive.
#[inline(always)]
fn relu_mask(g: f32, y: f32) -> f32 {
    if y > 0.0 { g } else { 0.0 }
}

/// `(Σ g, Σ g·(x − m))` in f64 with `g = dy`, zeroed where `relu_out` is not positive.
fn grad_sums(dy: &[f32], x: &[f32], relu_out: Option<&[f32]>, m: f64) -> (f64, f64) {
    let Some(mask) = relu_out else {
        return plain_grad_sums(dy, x, m);
    };
    // Masking in its own map loop keeps it vectorised; fused into the f64 sums, LLVM turned it
    // into a branch per lane.
    const BLOCK: usize = 256;
    let mut g = [0.0f32; BLOCK];
    let (mut sg, mut sgx) = (0.0, 0.0);
    let blocks = dy
        .chunks(BLOCK)
        .zip(x.chunks(BLOCK))
        .zip(mask.chunks(BLOCK));
    for ((d, xs), ms) in blocks {
        let (g, ms) = (&mut g[..d.len()], &ms[..d.len()]);
        for j in 0..g.len() {
            g[j] = relu_mask(d[j], ms[j]);
        }
        let (a, b) = plain_grad_sums(g, xs, m);
        sg += a;
        sgx += b;
    }
    (sg, sgx)
}

/// `(Σ g, Σ g·(x − m))` in f64.
fn plain_grad_sums(g: &[f32], x: &[f32], m: f64) -> (f64, f64) {
    let (mut sg, mut sgx) = ([0.0f64; LANES], [0.0f64; LANES]);
    let (g8, x8) = (g.chunks_exact(LANES), x.chunks_exact(LANES));
    let (mut tg, mut tgx) = (0.0, 0.0);
    for (&gv, &xv) in g8.remainder().iter().zip(x8.remainder()) {
        tg += gv as f64;
        tgx += gv as f64 * (xv as f64 - m);
    }
    for (gs, xs) in g8.zip(x8) {
        let (gv, xv) = (widen(gs), widen(xs));
        for l in 0..LANES {
            sg[l] += gv[l];
            sgx[l] += gv[l] * (xv[l] - m);
        }
    }
    (sg.iter().sum::<f64>() + tg, sgx.iter().sum::<f64>() + tgx)
}

/// 2×2 max pooling with stride 2 over `planes` planes of `h × w` (odd edges dropped, as
/// PyTorch's floor mode does). `idx` records which of the four inputs won (0..4, row-major; the
/// first maximum on ties), for the backward pass.
pub fn maxpool2_forward(
    x: &[f32],
    planes: usize,
    h: usize,
    w: usize,
    y: &mut [f32],
    idx: &mut [u8],
) {
    let (ho, wo) = (h / 2, w / 2);
    assert_eq!(x.len(), planes * h * w, "maxpool input length");
    assert_eq!(y.len(), planes * ho * wo, "maxpool output length");
    assert_eq!(idx.len(), y.len(), "maxpool index length");
    if ho * wo == 0 {
        return;
    }
    y.par_chunks_mut(ho * wo)
        .zip(idx.par_chunks_mut(ho * wo))
        .enumerate()
        .for_each(|(p, (yp, ip))| {
            let xp = &x[p * h * w..(p + 1) * h * w];
            for i in 0..ho {
                let (r0, r1) = (&xp[2 * i * w..], &xp[(2 * i + 1) * w..]);
                for j in 0..wo {
                    let cand = [r0[2 * j], r0[2 * j + 1], r1[2 * j], r1[2 * j + 1]];
                    let mut best = 0;
                    for (k, &v) in cand.iter().enumerate().skip(1) {
                        if v > cand[best] {
                            best = k;
                        }
                    }
                    yp[i * wo + j] = cand[best];
                    ip[i * wo + j] = best as u8;
                }
            }
        });
}

/// Gradient of [`maxpool2_forward`]: each output's gradient goes to the input that won.
pub fn maxpool2_backward(
    dy: &[f32],
    idx: &[u8],
    planes: usize,
    h: usize,
    w: usize,
    dx: &mut [f32],
) {
    let (ho, wo) = (h / 2, w / 2);
    assert_eq!(dx.len(), planes * h * w, "maxpool input-grad length");
    assert_eq!(dy.len(), planes * ho * wo, "maxpool output-grad length");
    assert_eq!(idx.len(), dy.len(), "maxpool index length");
    dx.par_chunks_mut(h * w).enumerate().for_each(|(p, dxp)| {
        dxp.fill(0.0);
        let (dyp, ip) = (&dy[p * ho * wo..], &idx[p * ho * wo..]);
        for i in 0..ho {
            for j in 0..wo {
                let k = ip[i * wo + j] as usize;
                dxp[(2 * i + k / 2) * w + 2 * j + k % 2] = dyp[i * wo + j];
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::test_util::{in_pools, rand_vec, rel_err};

    /// Value of x at (img, ch, y, x) or 0 in the padding.
    fn at(t: &[f32], c: usize, s: &ConvShape, (i, ch, y, x): (usize, usize, isize, isize)) -> f64 {
        if y < 0 || x < 0 || y >= s.h as isize || x >= s.w as isize {
            return 0.0;
        }
        t[((i * c + ch) * s.h + y as usize) * s.w + x as usize] as f64
    }

    /// Visits every (img, co, ci, oy, ox, ky, kx) term of the convolution sum with the input
    /// coordinates it reads.
    fn for_each_term(s: &ConvShape, mut f: impl FnMut([usize; 7], isize, isize)) {
        let p = (s.k / 2) as isize;
        for i in 0..s.b {
            for co in 0..s.cout {
                for ci in 0..s.cin {
                    for oy in 0..s.h {
                        for ox in 0..s.w {
                            for ky in 0..s.k {
                                for kx in 0..s.k {
                                    let iy = oy as isize + ky as isize - p;
                                    let ix = ox as isize + kx as isize - p;
                                    f([i, co, ci, oy, ox, ky, kx], iy, ix);
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /// Relative errors of (forward, forward+ReLU, forward without bias, dx, dw, dbias) against
    /// naive f64 loops.
    fn conv_errors(s: ConvShape) -> [f64; 6] {
        let x = rand_vec(s.b * s.cin * s.hw(), 1);
        let w = rand_vec(s.cout * s.kk(), 2);
        let bias = rand_vec(s.cout, 3);
        let dy = rand_vec(s.b * s.cout * s.hw(), 4);
        let mut y = vec![0.0f64; dy.len()];
        let mut dx = vec![0.0f64; x.len()];
        let mut dw = vec![0.0f64; w.len()];
        let mut db = vec![0.0f64; s.cout];
        for_each_term(&s, |[i, co, ci, oy, ox, ky, kx], iy, ix| {
            let wi = ((co * s.cin + ci) * s.k + ky) * s.k + kx;
            let yi = ((i * s.cout + co) * s.h + oy) * s.w + ox;
            let xv = at(&x, s.cin, &s, (i, ci, iy, ix));
            y[yi] += w[wi] as f64 * xv;
            dw[wi] += dy[yi] as f64 * xv;
            if iy >= 0 && ix >= 0 && iy < s.h as isize && ix < s.w as isize {
                dx[((i * s.cin + ci) * s.h + iy as usize) * s.w + ix as usize] +=
                    w[wi] as f64 * dy[yi] as f64;
            }
            if ci == 0 && ky == 0 && kx == 0 {
                db[co] += dy[yi] as f64;
            }
        });
        let y_bias: Vec<f64> = (y.iter().enumerate())
            .map(|(j, v)| v + bias[(j / s.hw()) % s.cout] as f64)
            .collect();
        let y_relu: Vec<f64> = y_bias.iter().map(|v| v.max(0.0)).collect();
        let mut out = vec![f32::NAN; y.len()];
        let mut errs = [0.0; 6];
        for (e, (b, relu, want)) in errs.iter_mut().zip([
            (Some(&bias[..]), false, &y_bias),
            (Some(&bias[..]), true, &y_relu),
            (None, false, &y),
        ]) {
            conv_forward(&x, &w, b, s, relu, &mut out);
            *e = rel_err(&out, want);
        }
        let mut got_dx = vec![f32::NAN; x.len()];
        conv_input_grad(&dy, &w, s, &mut got_dx);
        errs[3] = rel_err(&got_dx, &dx);
        let mut got_dw = vec![f32::NAN; w.len()];
        let mut got_db = vec![f32::NAN; s.cout];
        conv_weight_grad(&x, &dy, s, &mut got_dw, Some(&mut got_db));
        errs[5] = rel_err(&got_db, &db);
        got_dw.fill(f32::NAN);
        conv_weight_grad(&x, &dy, s, &mut got_dw, None);
        errs[4] = rel_err(&got_dw, &dw);
        errs
    }

    fn assert_conv(s: ConvShape) {
        let errs = conv_errors(s);
        eprintln!("{s:?}: fwd, fwd+relu, fwd no bias, dx, dw, dbias rel err {errs:?}");
        assert!(errs.iter().all(|&e| e <= 1e-5), "{s:?}: {errs:?}");
    }

    #[test]
    fn conv_matches_naive_loops() {
        for k in [3, 1, 5] {
            assert_conv(ConvShape {
                b: 2,
                cin: 3,
                cout: 5,
                h: 7,
                w: 9,
                k,
            });
        }
    }

    /// Several row tiles per image, more threads than images, one thread, and a one-row image,
    /// so every scheduling path meets the reference.
    #[test]
    fn conv_matches_naive_loops_across_tilings_and_pools() {
        let wide = ConvShape {
            b: 1,
            cin: 40,
            cout: 6,
            h: 30,
            w: 64,
            k: 3,
        };
        let odd = ConvShape {
            b: 3,
            cin: 2,
            cout: 3,
            h: 1,
            w: 5,
            k: 3,
        };
        let single = ConvShape { b: 1, ..odd };
        assert!(plan_tiles(&wide, wide.kk(), 1).len() > 1);
        assert!(plan_tiles(&single, single.kk(), 3).len() < 3);
        in_pools(|| [wide, odd, single].into_iter().for_each(assert_conv));
    }

    const EPS: f64 = 1e-5;
    const BN: (usize, usize, usize) = (2, 3, 11);

    fn to_f64(v: &[f32]) -> Vec<f64> {
        v.iter().map(|&x| x as f64).collect()
    }

    /// f64 reference forward from the definition: (y, mean, biased var).
    fn bn_ref(x: &[f64], gamma: &[f64], beta: &[f64], relu: bool) -> [Vec<f64>; 3] {
        let (b, c, n) = BN;
        let cnt = (b * n) as f64;
        let mut y = vec![0.0; x.len()];
        let (mut ms, mut vs) = (vec![0.0; c], vec![0.0; c]);
        for ch in 0..c {
            let all = || (0..b).flat_map(move |i| (0..n).map(move |j| (i * c + ch) * n + j));
            let m = all().map(|k| x[k]).sum::<f64>() / cnt;
            let v = all().map(|k| (x[k] - m) * (x[k] - m)).sum::<f64>() / cnt;
            for k in all() {
                let o = (x[k] - m) / (v + EPS).sqrt() * gamma[ch] + beta[ch];
                y[k] = if relu { o.max(0.0) } else { o };
            }
            (ms[ch], vs[ch]) = (m, v);
        }
        [y, ms, vs]
    }

    /// (x, gamma, beta, dy); the offset mean checks that the statistics do not cancel.
    fn bn_inputs() -> [Vec<f32>; 4] {
        let (b, c, n) = BN;
        let x = rand_vec(b * c * n, 8)
            .iter()
            .map(|v| 3.0 * v + 0.5)
            .collect();
        let gamma = rand_vec(c, 9).iter().map(|v| v + 1.5).collect();
        [x, gamma, rand_vec(c, 10), rand_vec(b * c * n, 11)]
    }

    /// Kernel forward then backward: (y, dx, dgamma, dbeta).
    fn run_bn(relu: bool) -> [Vec<f32>; 4] {
        let (b, c, n) = BN;
        let [x, gamma, beta, dy] = bn_inputs();
        let mut y = vec![f32::NAN; x.len()];
        let (mut m, mut v) = (vec![f64::NAN; c], vec![f64::NAN; c]);
        bn_train_forward(
            &x, &gamma, &beta, b, c, n, EPS, relu, &mut y, &mut m, &mut v,
        );
        let [x64, g64, b64] = [&x, &gamma, &beta].map(|v| to_f64(v));
        let [_, wm, wv] = bn_ref(&x64, &g64, &b64, relu);
        for ch in 0..c {
            assert!((m[ch] - wm[ch]).abs() <= 1e-12 && (v[ch] - wv[ch]).abs() <= 1e-12);
        }
        let mut dx = vec![f32::NAN; x.len()];
        let (mut dg, mut db) = (vec![f32::NAN; c], vec![f32::NAN; c]);
        bn_train_backward(
            &dy, &x, &y, &gamma, &m, &v, b, c, n, EPS, relu, &mut dx, &mut dg, &mut db,
        );
        [y, dx, dg, db]
    }

    #[test]
    fn bn_matches_naive_loops() {
        let (b, c, n) = BN;
        let [x, gamma, beta, dy] = bn_inputs().map(|v| to_f64(&v));
        let cnt = (b * n) as f64;
        for relu in [false, true] {
            let [y, ms, vs] = bn_ref(&x, &gamma, &beta, relu);
            let (mut dx, mut dg, mut db) = (vec![0.0; x.len()], vec![0.0; c], vec![0.0; c]);
            for ch in 0..c {
                let ks: Vec<usize> = (0..b)
                    .flat_map(|i| (0..n).map(move |j| (i * c + ch) * n + j))
                    .collect();
                let inv = 1.0 / (vs[ch] + EPS).sqrt();
                let g = |k: usize| if !relu || y[k] > 0.0 { dy[k] } else { 0.0 };
                let xh = |k: usize| (x[k] - ms[ch]) * inv;
                db[ch] = ks.iter().map(|&k| g(k)).sum();
                dg[ch] = ks.iter().map(|&k| g(k) * xh(k)).sum();
                for &k in &ks {
                    dx[k] = gamma[ch] * inv * (g(k) - db[ch] / cnt - xh(k) * dg[ch] / cnt);
                }
            }
            let got = run_bn(relu);
            let errs: Vec<f64> = (got.iter().zip([&y, &dx, &dg, &db]))
                .map(|(g, w)| rel_err(g, w))
                .collect();
            eprintln!("bn relu={relu}: y, dx, dgamma, dbeta rel err {errs:?}");
            assert!(
                errs[0] <= 1e-6 && errs.iter().all(|&e| e <= 1e-5),
                "{errs:?}"
            );
        }
    }

    #[test]
    fn bn_backward_matches_finite_differences() {
        let [x, gamma, beta, r] = bn_inputs().map(|v| to_f64(&v));
        for relu in [false, true] {
            // loss = Σ y·r, so dloss/dy = r (the `dy` the kernel gets).
            let loss = |x: &[f64], g: &[f64], bt: &[f64]| -> f64 {
                let [y, _, _] = bn_ref(x, g, bt, relu);
                y.iter().zip(&r).map(|(a, b)| a * b).sum()
            };
            let h = 1e-6;
            let central = |v: &[f64], f: &dyn Fn(&[f64]) -> f64| -> Vec<f64> {
                (0..v.len())
                    .map(|k| {
                        let (mut p, mut m) = (v.to_vec(), v.to_vec());
                        p[k] += h;
                        m[k] -= h;
                        (f(&p) - f(&m)) / (2.0 * h)
                    })
                    .collect()
            };
            let fd = [
                central(&x, &|v| loss(v, &gamma, &beta)),
                central(&gamma, &|v| loss(&x, v, &beta)),
                central(&beta, &|v| loss(&x, &gamma, v)),
            ];
            let [_, dx, dg, db] = run_bn(relu);
            let errs: Vec<f64> = (fd.iter().zip([&dx, &dg, &db]))
                .map(|(w, g)| rel_err(g, w))
                .collect();
            eprintln!("bn finite differences relu={relu}: dx, dgamma, dbeta rel err {errs:?}");
            assert!(errs.iter().all(|&e| e <= 1e-3), "relu={relu}: {errs:?}");
        }
    }
}
