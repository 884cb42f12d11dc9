//! CPU kernels for the hot `Conv2d(k, pad k/2, bias) → BatchNorm(train) → ReLU` block, on raw
//! NCHW f32 slices.
//!
//! Convolutions are im2col + `gemm` over row tiles of one image; each rayon thread owns one column
//! buffer for the whole call and a fixed run of tiles, so nothing is allocated per tile and
//! results depend on the thread count only, not on scheduling. The input gradient is the forward
//! convolution of `dy` with the flipped, channel-transposed kernel (same padding for odd `k`),
//! which keeps it a fat gemm instead of a scatter-add. The weight gradient contracts over pixels
//! (a long-k gemm) into one accumulator per thread, summed at the end.
//!
//! This file is longer than the project's ~700-line guide on purpose: forward, input gradient,
//! weight gradient and the fused BatchNorm/ReLU passes share their tiling and buffer layout, and
//! reading them side by side is how one checks that they agree.

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
    /// Batch, input and output channels, height, width, kernel side.
    pub const fn new(b: usize, cin: usize, cout: usize, h: usize, w: usize, k: usize) -> Self {
        Self {
            b,
            cin,
            cout,
            h,
            w,
            k,
        }
    }

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
        assert_eq!(x.len(), self.b * self.cin * self.hw(), "conv input length");
        self.check_operands(w, bias, out);
    }

    /// A per-output-channel scale, where given, has `cout` entries.
    pub(crate) fn check_scale(&self, scale: Option<&[f32]>) {
        if let Some(sc) = scale {
            assert_eq!(sc.len(), self.cout, "conv scale has {} channels", sc.len());
        }
    }

    /// As [`ConvShape::check_forward`], without the input (for inputs composed of parts).
    pub(crate) fn check_operands(&self, w: &[f32], bias: Option<&[f32]>, out: &[f32]) {
        self.check();
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

impl SyncPtr {
    /// The pointer `i` elements on. A method, so closures capture the `SyncPtr`, not its field.
    ///
    /// # Safety
    /// As `pointer::add`: the result must stay inside the allocation.
    #[inline]
    pub(crate) unsafe fn at(self, i: usize) -> *mut f32 {
        // SAFETY: forwarded from the caller's contract.
        unsafe { self.0.add(i) }
    }
}

/// Elements per task of [`filled`]: 256 KiB of f32.
const FILL_CHUNK: usize = 1 << 16;

/// `n` copies of `value`, written by the worker threads together. A fresh multi-megabyte buffer
/// costs a page fault (and the kernel's zeroing) for every 4 KiB it touches, and `vec![0.0; n]`
/// pays that, or a `memset` of recycled memory, on the calling thread alone while the workers
/// wait: at batch 1 that serial time was a tenth of the inference pass. Small buffers are
/// allocated as usual.
pub(crate) fn filled<T: Copy + Send + Sync>(n: usize, value: T) -> Vec<T> {
    if n < 4 * FILL_CHUNK || rayon::current_num_threads() < 2 {
        return vec![value; n];
    }
    par_from_chunks(n, FILL_CHUNK, |_, len| std::iter::repeat_n(value, len))
}

/// A vector of `n` values made chunk by chunk on the worker threads, so that (as in [`filled`])
/// its pages are first touched by all of them: chunk `i` holds `chunk` values (the last one
/// fewer) and is `items(i, len)`, which must yield exactly `len` values.
pub(crate) fn par_from_chunks<T: Send, I: Iterator<Item = T>>(
    n: usize,
    chunk: usize,
    items: impl Fn(usize, usize) -> I + Sync,
) -> Vec<T> {
    let mut v = Vec::with_capacity(n);
    v.spare_capacity_mut()[..n]
        .par_chunks_mut(chunk.max(1))
        .enumerate()
        .for_each(|(i, dst)| {
            let (len, mut written) = (dst.len(), 0);
            for (d, x) in dst.iter_mut().zip(items(i, len)) {
                d.write(x);
                written += 1;
            }
            assert_eq!(written, len, "chunk {i} of {n} values was not filled");
        });
    // SAFETY: each chunk of the first `n` elements (the capacity is at least `n`) was written in
    // full, or the assertion above panicked before this point.
    unsafe { v.set_len(n) };
    v
}

/// [`filled`] with zeros: the output buffer of a kernel.
pub(crate) fn zeroed(n: usize) -> Vec<f32> {
    filled(n, 0.0)
}

/// Values per independently seeded block of [`dropout_mask`].
const MASK_BLOCK: usize = 1 << 14;

/// An inverted-dropout mask of `n` values: `1 / keep` with probability `keep`, else 0.
///
/// burn's `random_like(Bernoulli)` draws one value at a time on the calling thread (about 3 % of
/// a 224 px training step, with both workers waiting) and needs two more passes to scale the
/// mask. Here the blocks of [`MASK_BLOCK`] values are drawn in parallel, block `i` from its own
/// stream `SplitMix64::stream(seed, i, ..)`, so the mask depends on the seed alone, not on the
/// thread count. Each 64-bit draw gives two 32-bit uniforms `u`, kept where `u < keep · 2³²`.
pub fn dropout_mask(n: usize, keep: f64, seed: u64) -> Vec<f32> {
    /// Keeps the dropout streams apart from every other use of the seed.
    const PURPOSE: u64 = 0xD7_0900;
    assert!(
        keep > 0.0 && keep <= 1.0,
        "dropout keeps a fraction in (0, 1]: {keep}"
    );
    let threshold = (keep * 4_294_967_296.0).round() as u64;
    let scale = (1.0 / keep) as f32;
    par_from_chunks(n, MASK_BLOCK, |i, len| {
        let mut rng = crate::rng::SplitMix64::stream(seed, i as u64, PURPOSE);
        let mut r = 0;
        (0..len).map(move |j| {
            if j % 2 == 0 {
                r = rng.next_u64();
            }
            let u = (r >> (32 * (j % 2))) & 0xFFFF_FFFF;
            if u < threshold { scale } else { 0.0 }
        })
    })
}

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
pub(crate) unsafe fn sgemm(
    dims: (usize, usize, usize),
    dst: *mut f32,
    dst_rs: usize,
    accumulate: bool,
    lhs: (*const f32, usize, usize),
    rhs: (*const f32, usize, usize),
    par: Parallelism,
) {
    // SAFETY: forwarded from the caller's contract.
    unsafe { sgemm_scaled(dims, (dst, dst_rs), accumulate, lhs, rhs, 1.0, par) }
}

/// [`sgemm`] with the product multiplied by `scale`: `dst = (accumulate ? dst : 0) + scale ·
/// lhs · rhs`.
///
/// # Safety
/// As [`sgemm`].
pub(crate) unsafe fn sgemm_scaled(
    (m, n, kd): (usize, usize, usize),
    (dst, dst_rs): (*mut f32, usize),
    accumulate: bool,
    (lhs, lhs_rs, lhs_cs): (*const f32, usize, usize),
    (rhs, rhs_rs, rhs_cs): (*const f32, usize, usize),
    scale: f32,
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
            scale,
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
    forward(x, w, bias, None, s, relu, out);
}

/// [`conv_forward`] and [`conv_forward_scaled`]: checks, then Winograd where it applies, else
/// im2col + gemm.
fn forward(
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    scale: Option<&[f32]>,
    s: ConvShape,
    relu: bool,
    out: &mut [f32],
) {
    s.check_forward(x, w, bias, out);
    s.check_scale(scale);
    if out.is_empty() {
        return;
    }
    if s.kk() == 0 {
        fill_bias(out, bias, &s, relu);
        return;
    }
    if super::winograd::applies(&s) {
        let x = super::winograd::Input::Plain(x);
        super::winograd::forward_checked(x, w, bias, scale, s, relu, out);
        return;
    }
    // A scale goes into the gemm's epilogue: rescaling a copy of the weights instead cost more
    // than the product itself for the 14 and 28 px layers at batch 1 (9 MB of weights for 0.2 M
    // outputs).
    im2col_forward(x, w, bias, scale, s, relu, out);
}

/// [`conv_forward`] as im2col + gemm, with `scale` (if any) multiplying each output channel
/// before the bias; operands already checked.
fn im2col_forward(
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    scale: Option<&[f32]>,
    s: ConvShape,
    relu: bool,
    out: &mut [f32],
) {
    let threads = rayon::current_num_threads().max(1);
    let tiles = plan_tiles(&s, s.kk(), threads);
    let out_ptr = SyncPtr(out.as_mut_ptr());
    let epilogue = Epilogue { bias, scale, relu };
    let work = |range: Range<usize>, par: Parallelism| {
        let max_pix = tiles[range.clone()]
            .iter()
            .map(|t| t.rows.len() * s.w)
            .max();
        let len = if s.k == 1 {
            0
        } else {
            s.kk() * max_pix.unwrap_or(0)
        };
        with_col(len, |col| {
            for tile in &tiles[range] {
                forward_tile(x, w, &epilogue, &s, tile, col, out_ptr, par);
            }
        });
    };
    if tiles.len() < threads {
        work(0..tiles.len(), Parallelism::Rayon(threads));
    } else {
        (0..threads)
            .into_par_iter()
            .for_each(|t| work(share(tiles.len(), t, threads), Parallelism::None));
    }
}

/// [`conv_forward`] with each output channel multiplied by `scale` before the bias: a
/// BatchNorm folded into the convolution at inference. The Winograd path folds the scale into
/// its filter transform; im2col + gemm applies it to the product.
pub fn conv_forward_scaled(
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    scale: &[f32],
    s: ConvShape,
    relu: bool,
    out: &mut [f32],
) {
    forward(x, w, bias, Some(scale), s, relu, out);
}

/// `w [rows, …]` with row `r` multiplied by `scale[r]`.
pub(crate) fn scale_rows(w: &[f32], scale: &[f32]) -> Vec<f32> {
    let n = (w.len() / scale.len().max(1)).max(1);
    par_from_chunks(w.len(), n, |r, len| {
        let c = scale[r];
        w[r * n..][..len].iter().map(move |&g| g * c)
    })
}

/// Output for a kernel with no inputs (`cin == 0`): just the bias.
fn fill_bias(out: &mut [f32], bias: Option<&[f32]>, s: &ConvShape, relu: bool) {
    for (i, plane) in out.chunks_exact_mut(s.hw()).enumerate() {
        let v = bias.map_or(0.0, |b| b[i % s.cout]);
        plane.fill(if relu { relu_f32(v) } else { v });
    }
}

/// What [`forward_tile`] does to the product: `relu?(scale ⊙ (w ⋆ x) + bias)`.
struct Epilogue<'a> {
    bias: Option<&'a [f32]>,
    scale: Option<&'a [f32]>,
    relu: bool,
}

#[allow(clippy::too_many_arguments)]
fn forward_tile(
    x: &[f32],
    w: &[f32],
    ep: &Epilogue,
    s: &ConvShape,
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
    // Without a scale the bias is the gemm's starting value; with one it is added after.
    let bias_first = ep.bias.filter(|_| ep.scale.is_none());
    if let Some(bias) = bias_first {
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
            bias_first.is_some(),
            (w.as_ptr(), s.kk(), 1),
            (rhs, rhs_rs, 1),
            par,
        );
    }
    if ep.scale.is_none() && !ep.relu {
        return;
    }
    for co in 0..s.cout {
        // SAFETY: as above; row `co` of the block.
        let row = unsafe { std::slice::from_raw_parts_mut(dst.add(co * hw), npix) };
        if let Some(scale) = ep.scale {
            let (c, b) = (scale[co], ep.bias.map_or(0.0, |b| b[co]));
            row.iter_mut().for_each(|v| *v = *v * c + b);
        }
        if ep.relu {
            row.iter_mut().for_each(|v| *v = relu_f32(*v));
        }
    }
}

thread_local! {
    /// Each thread's im2col buffer, kept between calls: a fresh one costs a page fault per 4 KiB
    /// on every call (megabytes per layer).
    static COL: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs `f` with this thread's im2col buffer of at least `len` floats (a fresh one if it is
/// already in use further up the stack). Its contents are whatever the last call left: im2col
/// writes every element a tile reads.
fn with_col<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    COL.with(|cell| match cell.try_borrow_mut() {
        Ok(mut col) => {
            if col.len() < len {
                col.resize(len, 0.0);
            }
            f(&mut col[..len])
        }
        Err(_) => f(&mut vec![0.0; len]),
    })
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
    if super::winograd::applies(&s) {
        return super::winograd::conv_weight_grad(x, dy, s, dw, dbias);
    }
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
        let len = if s.k == 1 {
            0
        } else {
            s.kk() * max_pix.unwrap_or(0)
        };
        let mut bsum = vec![0.0f64; if want_bias { s.cout } else { 0 }];
        let mut first = true;
        with_col(len, |col| {
            for tile in &tiles[range] {
                let npix = tile.rows.len() * s.w;
                let p0 = tile.rows.start * s.w;
                let x_img = &x[tile.img * s.cin * hw..(tile.img + 1) * s.cin * hw];
                let dy_img = &dy[tile.img * s.cout * hw..(tile.img + 1) * s.cout * hw];
                // col^T as `[npix, kk]`: pixel stride 1, im2col-row stride `rhs_cs`.
                let (rhs, rhs_cs) = if s.k == 1 {
                    (x_img[p0..].as_ptr(), hw)
                } else {
                    im2col(x_img, &s, &tile.rows, col);
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
        });
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

/// Scalars of one Adam step, all float32 as burn's `Adam` computes them.
#[derive(Clone, Copy, Debug)]
pub struct AdamStep {
    pub lr: f32,
    pub beta_1: f32,
    pub beta_2: f32,
    /// `sqrt(1 - β2^t) / (1 - β1^t)`
    pub combined: f32,
    /// `ε · sqrt(1 - β2^t)`
    pub eps_bc: f32,
}

/// One Adam step in place, in a single pass over parameter, gradient and moments; each element
/// goes through the same float32 operations, in the same order, as burn's tensor-op `Adam`
/// (which makes eleven passes), so the results are bit-identical to it.
pub fn adam_update(p: &mut [f32], g: &[f32], m1: &mut [f32], m2: &mut [f32], h: AdamStep) {
    assert!(
        g.len() == p.len() && m1.len() == p.len() && m2.len() == p.len(),
        "adam_update: parameter, gradient and moments differ in length"
    );
    let (f1, f2) = (1.0 - h.beta_1, 1.0 - h.beta_2);
    let chunk = (p.len() / (4 * rayon::current_num_threads().max(1))).max(1 << 14);
    p.par_chunks_mut(chunk)
        .zip(g.par_chunks(chunk))
        .zip(m1.par_chunks_mut(chunk))
        .zip(m2.par_chunks_mut(chunk))
        .for_each(|(((p, g), m1), m2)| {
            for i in 0..p.len() {
                let a = m1[i] * h.beta_1 + g[i] * f1;
                let b = m2[i] * h.beta_2 + (g[i] * g[i]) * f2;
                m1[i] = a;
                m2[i] = b;
                p[i] -= (a * h.combined) / (b.sqrt() + h.eps_bc) * h.lr;
            }
        });
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

/// The decoder's `cat([skip, upsample2(x)], 1)` in one pass: `skip: [b, cs, 2h, 2w]`,
/// `x: [b, cx, h, w]`, `out: [b, cs + cx, 2h, 2w]`, the upsampling nearest-neighbour
/// (`out[.., i, j] = x[.., ⌊i/2⌋, ⌊j/2⌋]`).
pub fn upcat_forward(skip: &[f32], x: &[f32], (b, cs, cx, h, w): UpCat, out: &mut [f32]) {
    let plane = 4 * h * w;
    assert_eq!(skip.len(), b * cs * plane, "upcat skip length");
    assert_eq!(x.len(), b * cx * h * w, "upcat input length");
    assert_eq!(out.len(), b * (cs + cx) * plane, "upcat output length");
    if plane == 0 {
        return;
    }
    out.par_chunks_mut(plane).enumerate().for_each(|(p, op)| {
        let (img, c) = (p / (cs + cx), p % (cs + cx));
        if c < cs {
            op.copy_from_slice(&skip[(img * cs + c) * plane..][..plane]);
            return;
        }
        let xp = &x[(img * cx + c - cs) * h * w..][..h * w];
        for (i, row) in xp.chunks_exact(w).enumerate() {
            let (r0, r1) = op[2 * i * 2 * w..][..4 * w].split_at_mut(2 * w);
            for (pair, &v) in r0.chunks_exact_mut(2).zip(row) {
                pair.fill(v);
            }
            r1.copy_from_slice(r0);
        }
    });
}

/// `(b, cs, cx, h, w)` of [`upcat_forward`]: batch, skip channels, upsampled channels, and the
/// height and width before upsampling.
pub type UpCat = (usize, usize, usize, usize, usize);

/// Gradient of [`upcat_forward`]: `dskip` is the first `cs` channels of `dy`, `dx` the sum of
/// each 2×2 block of the rest.
pub fn upcat_backward(
    dy: &[f32],
    (b, cs, cx, h, w): UpCat,
    dskip: Option<&mut [f32]>,
    dx: Option<&mut [f32]>,
) {
    let plane = 4 * h * w;
    assert_eq!(dy.len(), b * (cs + cx) * plane, "upcat output-grad length");
    if plane == 0 {
        return;
    }
    if let Some(dskip) = dskip {
        assert_eq!(dskip.len(), b * cs * plane, "upcat skip-grad length");
        dskip.par_chunks_mut(plane).enumerate().for_each(|(p, dp)| {
            let (img, c) = (p / cs, p % cs);
            dp.copy_from_slice(&dy[(img * (cs + cx) + c) * plane..][..plane]);
        });
    }
    if let Some(dx) = dx {
        assert_eq!(dx.len(), b * cx * h * w, "upcat input-grad length");
        dx.par_chunks_mut(h * w).enumerate().for_each(|(p, dp)| {
            let (img, c) = (p / cx, p % cx);
            let g = &dy[(img * (cs + cx) + cs + c) * plane..][..plane];
            for (i, row) in dp.chunks_exact_mut(w).enumerate() {
                let (r0, r1) = (
                    &g[2 * i * 2 * w..][..2 * w],
                    &g[(2 * i + 1) * 2 * w..][..2 * w],
                );
                for (j, d) in row.iter_mut().enumerate() {
                    *d = (r0[2 * j] + r0[2 * j + 1]) + (r1[2 * j] + r1[2 * j + 1]);
                }
            }
        });
    }
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
mod tests;
