//! The decoder's pixel-level attention (PLAM, docs/model.md "Decoder") as one fused pass, with
//! its hand-written backward.
//!
//! Per pixel `p` of a skip `s: [B, C, H, W]`:
//! ```text
//! u = Wa·s[:, p], v = Wm·s[:, p]            (two 1×1 convolutions without bias)
//! a = mean_c relu(u),  m = max_c relu(v)
//! h = relu(L0·[a, m, a + m] + b0)           (Linear 3 → 6)
//! z = L2·h + b2                             (Linear 6 → 1, no sigmoid: §7 #12)
//! y[:, p] = z · s[:, p]
//! ```
//! Written with burn's ops this is a dozen passes over the full-resolution skip, each with its
//! own tensor (and as many again backwards). Here both 1×1 convolutions are one gemm over a tile
//! of pixels into a buffer that stays in cache, the reductions and the little MLP run on that
//! tile, and only `y` and four numbers per pixel are written. The backward recomputes `u` (one
//! more 1×1 gemm) instead of keeping `[B, 2C, H, W]` alive between the passes.

use std::ops::Range;

use gemm::Parallelism;
use rayon::prelude::*;

use super::cpu::{SyncPtr, sgemm, share};

/// Hidden width of PLAM's bottleneck MLP (3 → 6 → 1).
pub const HIDDEN: usize = 6;

/// The bottleneck MLP's parameters, in PyTorch's `Linear` layouts.
#[derive(Clone, Copy, Debug)]
pub struct Mlp<'a> {
    /// `[6, 3]`
    pub l0w: &'a [f32],
    /// `[6]`
    pub l0b: &'a [f32],
    /// `[1, 6]`
    pub l2w: &'a [f32],
    /// `[1]`
    pub l2b: &'a [f32],
}

impl Mlp<'_> {
    fn check(&self) {
        assert_eq!(self.l0w.len(), 3 * HIDDEN, "PLAM layer0 weight length");
        assert_eq!(self.l0b.len(), HIDDEN, "PLAM layer0 bias length");
        assert_eq!(self.l2w.len(), HIDDEN, "PLAM layer2 weight length");
        assert_eq!(self.l2b.len(), 1, "PLAM layer2 bias length");
    }

    /// Pre-activations of the hidden layer for the features `[a, m, a + m]`.
    #[inline]
    fn hidden(&self, a: f32, m: f32) -> [f32; HIDDEN] {
        let f = [a, m, a + m];
        std::array::from_fn(|j| {
            self.l0w[3 * j] * f[0]
                + self.l0w[3 * j + 1] * f[1]
                + self.l0w[3 * j + 2] * f[2]
                + self.l0b[j]
        })
    }

    #[inline]
    fn gate(&self, pre: &[f32; HIDDEN]) -> f32 {
        pre.iter()
            .zip(self.l2w)
            .fold(self.l2b[0], |z, (&h, &w)| z + w * h.max(0.0))
    }
}

/// Per-pixel values the backward pass needs, each `[B, H·W]`.
#[derive(Clone, Debug, Default)]
pub struct Saved {
    pub a: Vec<f32>,
    pub m: Vec<f32>,
    /// Channel of the max in `relu(v)` (the first one on ties, like `argmax`).
    pub idx: Vec<u32>,
    pub z: Vec<f32>,
}

/// Gradients of the MLP parameters, in the layouts of [`Mlp`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MlpGrads {
    pub l0w: Vec<f32>,
    pub l0b: Vec<f32>,
    pub l2w: Vec<f32>,
    pub l2b: Vec<f32>,
}

/// Pixel sums of the backward pass: l0w (18), l0b (6), l2w (6), l2b (1).
const SUMS: usize = 5 * HIDDEN + 1;

/// Geometry: batch, channels, pixels per image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlamShape {
    pub b: usize,
    pub c: usize,
    pub hw: usize,
}

impl PlamShape {
    fn check(&self, s: &[f32], w2: &[f32]) {
        assert_eq!(s.len(), self.b * self.c * self.hw, "PLAM input length");
        assert_eq!(w2.len(), 2 * self.c * self.c, "PLAM 1×1 weights length");
    }

    /// Pixel tiles `(image, pixels)`: `[2C, P]` floats of about 256 KiB each.
    fn tiles(&self) -> Vec<(usize, Range<usize>)> {
        let per = ((1usize << 16) / (2 * self.c).max(1)).clamp(64, 4096);
        (0..self.b)
            .flat_map(|img| {
                (0..self.hw.div_ceil(per))
                    .map(move |t| (img, t * per..((t + 1) * per).min(self.hw)))
            })
            .collect()
    }
}

/// `dst [rows, np] = w [rows, c] · s_img[:, p0..p0+np]` (row stride `hw`).
fn project(
    w: &[f32],
    rows: usize,
    s_img: &[f32],
    sh: &PlamShape,
    pix: &Range<usize>,
    dst: &mut [f32],
) {
    let np = pix.len();
    // SAFETY: `w` is `[rows, c]`, the right-hand side is `[c, np]` with row stride `hw` inside
    // `s_img` (`[c, hw]`), `dst` holds at least `rows · np` floats owned by the caller.
    unsafe {
        sgemm(
            (rows, np, sh.c),
            dst.as_mut_ptr(),
            np,
            false,
            (w.as_ptr(), sh.c, 1),
            (s_img[pix.start..].as_ptr(), sh.hw, 1),
            Parallelism::None,
        );
    }
}

/// Runs `work(tile range, thread buffer)` over static shares of the tiles, one per thread.
fn for_shares<R: Send>(n_tiles: usize, work: impl Fn(Range<usize>) -> R + Sync + Send) -> Vec<R> {
    let threads = rayon::current_num_threads().clamp(1, n_tiles.max(1));
    (0..threads)
        .into_par_iter()
        .map(|t| work(share(n_tiles, t, threads)))
        .collect()
}

/// Forward pass. `w2 = [Wa; Wm]` is `[2C, C]`; writes `y = s ⊙ z: [B, C, H, W]` where given
/// and returns [`Saved`] (whose `z` is the gate, for a consumer that applies it itself).
pub fn plam_forward(
    s: &[f32],
    w2: &[f32],
    mlp: Mlp,
    sh: PlamShape,
    mut y: Option<&mut [f32]>,
) -> Saved {
    sh.check(s, w2);
    mlp.check();
    if let Some(y) = &y {
        assert_eq!(y.len(), s.len(), "PLAM output length");
    }
    let n = sh.b * sh.hw;
    let mut saved = Saved {
        a: vec![0.0; n],
        m: vec![0.0; n],
        idx: vec![0; n],
        z: vec![0.0; n],
    };
    if s.is_empty() {
        return saved;
    }
    let c = sh.c;
    let tiles = sh.tiles();
    let y_ptr = y.as_mut().map(|y| SyncPtr(y.as_mut_ptr()));
    let ptrs = (
        SyncPtr(saved.a.as_mut_ptr()),
        SyncPtr(saved.m.as_mut_ptr()),
        SyncPtr(saved.z.as_mut_ptr()),
        saved.idx.as_mut_ptr() as usize,
    );
    for_shares(tiles.len(), |range| {
        let mut uv = Vec::new();
        let (mut a, mut m, mut idx) = (Vec::new(), Vec::new(), Vec::<u32>::new());
        for (img, pix) in &tiles[range] {
            let np = pix.len();
            let s_img = &s[img * c * sh.hw..(img + 1) * c * sh.hw];
            uv.resize(2 * c * np, 0.0);
            project(w2, 2 * c, s_img, &sh, pix, &mut uv);
            a.clear();
            a.resize(np, 0.0);
            m.clear();
            m.resize(np, 0.0);
            idx.clear();
            idx.resize(np, 0);
            let (u, v) = uv.split_at(c * np);
            for row in u.chunks_exact(np) {
                a.iter_mut().zip(row).for_each(|(a, &x)| *a += x.max(0.0));
            }
            for (ch, row) in v.chunks_exact(np).enumerate() {
                for ((m, i), &x) in m.iter_mut().zip(idx.iter_mut()).zip(row) {
                    // relu(v) ≥ 0, so the first channel whose relu(v) beats the running max
                    // wins; with every v ≤ 0 the max is channel 0's zero.
                    if x > *m {
                        *m = x;
                        *i = ch as u32;
                    }
                }
            }
            let base = img * sh.hw + pix.start;
            // SAFETY: tiles are disjoint `(image, pixels)` ranges, so these per-pixel slots and
            // the `[C, np]` block of `y` (row stride `hw`) are written by this task alone.
            let (sa, sm, sz, si) = unsafe {
                (
                    std::slice::from_raw_parts_mut(ptrs.0.at(base), np),
                    std::slice::from_raw_parts_mut(ptrs.1.at(base), np),
                    std::slice::from_raw_parts_mut(ptrs.2.at(base), np),
                    std::slice::from_raw_parts_mut((ptrs.3 as *mut u32).add(base), np),
                )
            };
            for p in 0..np {
                let a = a[p] / c as f32;
                let z = mlp.gate(&mlp.hidden(a, m[p]));
                (sa[p], sm[p], sz[p], si[p]) = (a, m[p], z, idx[p]);
            }
            let Some(y_ptr) = y_ptr else { continue };
            for ch in 0..c {
                let src = &s_img[ch * sh.hw + pix.start..][..np];
                // SAFETY: as above; row `ch` of this tile's block of `y`.
                let dst = unsafe {
                    std::slice::from_raw_parts_mut(y_ptr.at((img * c + ch) * sh.hw + pix.start), np)
                };
                for ((d, &x), &z) in dst.iter_mut().zip(src).zip(sz.iter()) {
                    *d = x * z;
                }
            }
        }
    });
    saved
}

/// Backward pass: overwrites `ds` (`[B, C, H, W]`) and `dw2` (`[2C, C]`) and returns the MLP's
/// gradients. Sums over pixels accumulate per thread share and are added in share order.
#[allow(clippy::too_many_arguments)]
pub fn plam_backward(
    dy: &[f32],
    s: &[f32],
    w2: &[f32],
    mlp: Mlp,
    saved: &Saved,
    sh: PlamShape,
    ds: &mut [f32],
    dw2: &mut [f32],
) -> MlpGrads {
    sh.check(s, w2);
    mlp.check();
    assert_eq!(dy.len(), s.len(), "PLAM output-grad length");
    assert_eq!(ds.len(), s.len(), "PLAM input-grad length");
    assert_eq!(dw2.len(), w2.len(), "PLAM weight-grad length");
    let c = sh.c;
    let tiles = sh.tiles();
    let ds_ptr = SyncPtr(ds.as_mut_ptr());
    // Per share: the `[2C, C]` weight gradient and the MLP's pixel sums.
    let parts = for_shares(tiles.len(), |range| {
        let mut acc = vec![0.0f32; 2 * c * c];
        let mut sums = [0.0f64; SUMS];
        let (mut u, mut duv, mut dz, mut da) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut first = true;
        for (img, pix) in &tiles[range] {
            let np = pix.len();
            let off = img * c * sh.hw;
            let (s_img, dy_img) = (&s[off..off + c * sh.hw], &dy[off..off + c * sh.hw]);
            let base = img * sh.hw + pix.start;
            let (a, m, idx, z) = (
                &saved.a[base..base + np],
                &saved.m[base..base + np],
                &saved.idx[base..base + np],
                &saved.z[base..base + np],
            );
            // dz = Σ_c dy·s; ds = dy·z (the 1×1 paths are added by the gemm below).
            dz.clear();
            dz.resize(np, 0.0f32);
            for ch in 0..c {
                let r = ch * sh.hw + pix.start..ch * sh.hw + pix.start + np;
                // SAFETY: tiles are disjoint, so this row of `ds` belongs to this task alone.
                let dst = unsafe { std::slice::from_raw_parts_mut(ds_ptr.at(off + r.start), np) };
                for p in 0..np {
                    dz[p] += dy_img[r.start + p] * s_img[r.start + p];
                    dst[p] = dy_img[r.start + p] * z[p];
                }
            }
            u.resize(c * np, 0.0);
            project(&w2[..c * c], c, s_img, &sh, pix, &mut u);
            duv.clear();
            duv.resize(2 * c * np, 0.0f32);
            let (du, dv) = duv.split_at_mut(c * np);
            da.clear();
            da.resize(np, 0.0f32);
            for p in 0..np {
                let pre = mlp.hidden(a[p], m[p]);
                let f = [a[p], m[p], a[p] + m[p]];
                let g = dz[p];
                let mut df = [0.0f32; 3];
                for j in 0..HIDDEN {
                    sums[4 * HIDDEN + j] += (g * pre[j].max(0.0)) as f64; // l2w
                    if pre[j] > 0.0 {
                        let dh = g * mlp.l2w[j];
                        for k in 0..3 {
                            sums[3 * j + k] += (dh * f[k]) as f64; // l0w
                            df[k] += mlp.l0w[3 * j + k] * dh;
                        }
                        sums[3 * HIDDEN + j] += dh as f64; // l0b
                    }
                }
                sums[5 * HIDDEN] += g as f64; // l2b
                da[p] = (df[0] + df[2]) / c as f32;
                if m[p] > 0.0 {
                    dv[idx[p] as usize * np + p] = df[1] + df[2];
                }
            }
            for (drow, urow) in du.chunks_exact_mut(np).zip(u.chunks_exact(np)) {
                for ((d, &x), &g) in drow.iter_mut().zip(urow).zip(&da) {
                    *d = if x > 0.0 { g } else { 0.0 };
                }
            }
            // SAFETY: `w2ᵀ` is `[C, 2C]` (row stride 1, column stride C) inside `w2`; `duv` is
            // `[2C, np]`; the destination is this tile's `[C, np]` block of `ds` (row stride
            // `hw`), written by this task alone.
            unsafe {
                sgemm(
                    (c, np, 2 * c),
                    ds_ptr.at(off + pix.start),
                    sh.hw,
                    true,
                    (w2.as_ptr(), 1, c),
                    (duv.as_ptr(), np, 1),
                    Parallelism::None,
                );
            }
            // SAFETY: `acc` is this share's `[2C, C]`; `duv` is `[2C, np]`; `sᵀ` is `[np, C]`
            // (row stride 1, column stride `hw`) inside `s_img`.
            unsafe {
                sgemm(
                    (2 * c, c, np),
                    acc.as_mut_ptr(),
                    c,
                    !first,
                    (duv.as_ptr(), np, 1),
                    (s_img[pix.start..].as_ptr(), 1, sh.hw),
                    Parallelism::None,
                );
            }
            first = false;
        }
        (acc, sums, first)
    });
    dw2.fill(0.0);
    let mut sums = [0.0f64; SUMS];
    for (acc, part, empty) in &parts {
        if !empty {
            dw2.iter_mut().zip(acc).for_each(|(d, &v)| *d += v);
        }
        sums.iter_mut().zip(part).for_each(|(d, &v)| *d += v);
    }
    let f = |r: Range<usize>| sums[r].iter().map(|&v| v as f32).collect::<Vec<f32>>();
    MlpGrads {
        l0w: f(0..3 * HIDDEN),
        l0b: f(3 * HIDDEN..4 * HIDDEN),
        l2w: f(4 * HIDDEN..5 * HIDDEN),
        l2b: f(5 * HIDDEN..SUMS),
    }
}
