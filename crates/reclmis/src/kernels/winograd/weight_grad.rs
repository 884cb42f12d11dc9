//! The weight gradient of a 3×3 convolution by the same F(4×4, 3×3) transforms, transposed.
//!
//! Forward, each 4×4 output tile is `y = Aᵀ [U ⊙ V] A` with `U = G g Gᵀ` and `V = Bᵀ d B` (see
//! the parent module). `y` is linear in the filter `g`, so the gradient of `Σ dy ⊙ y` with
//! respect to `g` is `Gᵀ [(A dy Aᵀ) ⊙ V] G`, and the weight gradient is its sum over the tiles:
//!
//! 1. every tile's `V[ξ][tile][ci]` (the forward's input transform) and
//!    `D[ξ][tile][co] = (A dy Aᵀ)[ξ]` of the output gradient's 4×4 block;
//! 2. for each of the 36 points ξ, `M[ξ][co][ci] = Σ_tiles D[ξ][tile][co] · V[ξ][tile][ci]`, a
//!    matrix product whose inner dimension is the tiles;
//! 3. `dw[co][ci] = Gᵀ M[·][co][ci] G`, from 6×6 back to 3×3.
//!
//! The products do 36 multiplications per tile and channel pair where im2col does 144. Tiles
//! are taken in chunks of whole tile rows whose `V` and `D` fit [`CHUNK_BYTES`]; `M` sums over
//! the chunks. Step 1 runs a tile row per task, step 2 one ξ per task, step 3 a block of output
//! channels per task.

use std::cell::RefCell;

use gemm::Parallelism;
use rayon::prelude::*;

use super::super::cpu::{ConvShape, SyncPtr, sgemm, sum_f64};
use super::{
    Input, Job, PATCH, Planes, Scratch, TILE, XI, channel_last, input_tiles, resize, run_in,
    with_scratch,
};
use crate::kernels::simd::{Isa, Simd, column, isa, load_n};

/// Bytes of `V` and `D` one chunk of tiles may hold.
const CHUNK_BYTES: usize = 16 << 20;

/// Gradients of a 3×3 convolution (padding 1) with respect to its weight and bias; overwrites
/// `dw: [cout, cin, 3, 3]` and `dbias: [cout]`, as [`crate::kernels::cpu::conv_weight_grad`].
///
/// `x: [b, cin, h, w]`, `dy: [b, cout, h, w]`.
pub fn conv_weight_grad(
    x: &[f32],
    dy: &[f32],
    s: ConvShape,
    dw: &mut [f32],
    dbias: Option<&mut [f32]>,
) {
    s.check_weight_grad(x, dy, dw, dbias.as_deref());
    weight_grad_with((isa(), CHUNK_BYTES), x, dy, s, dw, dbias);
}

thread_local! {
    /// The calling thread's `V`, `D` and `M`, kept between calls (as the forward's packed
    /// filters: fresh buffers of this size cost a page fault per 4 KiB).
    static BUFS: RefCell<[Vec<f32>; 3]> = RefCell::default();
}

/// [`conv_weight_grad`] with the instruction set `isa` (which the CPU must have) and chunks of
/// at most `chunk_bytes` (at least one tile row), on operands already checked.
pub(super) fn weight_grad_with(
    (isa, chunk_bytes): (Isa, usize),
    x: &[f32],
    dy: &[f32],
    s: ConvShape,
    dw: &mut [f32],
    dbias: Option<&mut [f32]>,
) {
    assert_eq!(s.k, 3, "winograd: 3×3 kernels only");
    if let Some(db) = dbias {
        let hw = s.hw();
        db.par_iter_mut().enumerate().for_each(|(co, d)| {
            let sum: f64 = (0..s.b)
                .map(|img| sum_f64(&dy[(img * s.cout + co) * hw..][..hw]))
                .sum();
            *d = sum as f32;
        });
    }
    if dw.is_empty() {
        return;
    }
    if s.b * s.hw() == 0 {
        dw.fill(0.0);
        return;
    }
    let l = isa.lanes();
    let (cin_p, cout_p) = (s.cin.next_multiple_of(l), s.cout.next_multiple_of(l));
    let (th, tw) = (s.h.div_ceil(TILE), s.w.div_ceil(TILE));
    let all_rows = s.b * th;
    let rows = (chunk_bytes / (XI * tw * (cin_p + cout_p) * 4)).clamp(1, all_rows);
    let cap = rows * tw;
    let mut bufs = BUFS.with(|cell| std::mem::take(&mut *cell.borrow_mut()));
    let [v, d, m] = &mut bufs;
    resize(v, XI * cap * cin_p);
    resize(d, XI * cap * cout_p);
    resize(m, XI * s.cout * cin_p);
    let (v_ptr, d_ptr, m_ptr) = (
        SyncPtr(v.as_mut_ptr()),
        SyncPtr(d.as_mut_ptr()),
        SyncPtr(m.as_mut_ptr()),
    );
    for (n, g0) in (0..all_rows).step_by(rows).enumerate() {
        let chunk = g0..(g0 + rows).min(all_rows);
        let tiles = chunk.len() * tw;
        // 1. V and D of the chunk's tile rows, one row a task.
        chunk.clone().into_par_iter().for_each(|g| {
            let (img, tr) = (g / th, g % th);
            let t0 = (g - chunk.start) * tw;
            let job = TileRow {
                x: &x[img * s.cin * s.hw()..][..s.cin * s.hw()],
                dy: &dy[img * s.cout * s.hw()..][..s.cout * s.hw()],
                s: &s,
                tr,
                // SAFETY: tile `t0 .. t0 + tw` of each ξ's run of `cap` tiles: this task alone
                // writes them, inside `v` (36·cap·cin_p floats) and `d` (36·cap·cout_p).
                v: unsafe { SyncPtr(v_ptr.at(t0 * cin_p)) },
                d: unsafe { SyncPtr(d_ptr.at(t0 * cout_p)) },
                stride: cap,
                c_p: (cin_p, cout_p),
            };
            // SAFETY: `isa` is the caller's instruction set.
            with_scratch(|scratch| unsafe { run_in(isa, &job, scratch) });
        });
        // 2. M[ξ] (+)= D[ξ]ᵀ · V[ξ], one ξ a task.
        (0..XI).into_par_iter().for_each(|xi| {
            // SAFETY: `D[ξ]` is `[tiles, cout]` at row stride `cout_p` (read as its transpose),
            // `V[ξ]` `[tiles, cin]` at `cin_p`, `M[ξ]` `[cout, cin]` at `cin_p`; this task alone
            // writes `M[ξ]`.
            unsafe {
                sgemm(
                    (s.cout, s.cin, tiles),
                    m_ptr.at(xi * s.cout * cin_p),
                    cin_p,
                    n > 0,
                    (d_ptr.at(xi * cap * cout_p), 1, cout_p),
                    (v_ptr.at(xi * cap * cin_p), cin_p, 1),
                    Parallelism::None,
                );
            }
        });
    }
    // 3. dw = Gᵀ M G, a block of output channels a task.
    let block = (s.cout / (4 * rayon::current_num_threads().max(1))).clamp(1, 64);
    let m: &[f32] = m;
    dw.par_chunks_mut(block * s.cin * 9)
        .enumerate()
        .for_each(|(i, dw)| {
            let job = FilterGrads {
                m,
                s: &s,
                cin_p,
                co0: i * block,
                dw: SyncPtr(dw.as_mut_ptr()),
                len: dw.len(),
            };
            // SAFETY: as above.
            with_scratch(|scratch| unsafe { run_in(isa, &job, scratch) });
        });
    BUFS.with(|cell| *cell.borrow_mut() = bufs);
}

/// Step 1 for one tile row of one image.
struct TileRow<'a> {
    /// The image's input `[cin, h, w]` and output gradient `[cout, h, w]`.
    x: &'a [f32],
    dy: &'a [f32],
    s: &'a ConvShape,
    tr: usize,
    /// Where the row's first tile goes in `V` and `D`, whose ξ runs are `stride` tiles apart.
    v: SyncPtr,
    d: SyncPtr,
    stride: usize,
    /// Padded channel counts (`cin_p`, `cout_p`), multiples of the vector width.
    c_p: (usize, usize),
}

impl Job for TileRow<'_> {
    #[inline(always)]
    unsafe fn run<S: Simd>(&self, scratch: &mut Scratch) {
        let &TileRow {
            x,
            dy,
            s,
            tr,
            v,
            d,
            stride,
            c_p: (cin_p, cout_p),
        } = self;
        let tw = s.w.div_ceil(TILE);
        let (h, w) = (s.h, s.w);
        // The input patch rows 4·tr − 1 .. 4·tr + 5, padded as forward.
        let cols = TILE * tw + 2;
        let len = PATCH * cols * cin_p;
        resize(&mut scratch.xt, len);
        let planes = Planes {
            x: Input::Plain(x),
            c: s.cin,
            h,
            w,
        };
        // SAFETY: `xt` holds the 6 rows `input_tiles` reads; `v` the caller's runs (see
        // `weight_grad_with`); the instruction set is the caller's contract.
        unsafe {
            channel_last::<S>(
                &planes,
                (TILE * tr) as isize - 1,
                1,
                (cols, cin_p),
                &mut scratch.row,
                &mut scratch.xt[..len],
            );
            input_tiles::<S>(&scratch.xt[..len], (cols, cin_p), (1, tw), v.0, stride);
        }
        // The output gradient's rows 4·tr .. 4·tr + 4 (zero below the image and right of it).
        let cols = TILE * tw;
        let len = TILE * cols * cout_p;
        resize(&mut scratch.m, len);
        let planes = Planes {
            x: Input::Plain(dy),
            c: s.cout,
            h,
            w,
        };
        // SAFETY: as above.
        unsafe {
            channel_last::<S>(
                &planes,
                (TILE * tr) as isize,
                0,
                (cols, cout_p),
                &mut scratch.row,
                &mut scratch.m[..len],
            );
        }
        let dt = scratch.m.as_ptr();
        for tc in 0..tw {
            for cb in (0..cout_p).step_by(S::L) {
                let at = TILE * tc * cout_p + cb;
                // SAFETY: the block's 16 vectors at `at + (i·cols + j)·cout_p`, i, j < 4, lie
                // inside `dt` (len floats), and each store lies in the caller's run of `d`; the
                // instruction set is the caller's contract.
                unsafe {
                    let mut cs = [[S::splat(0.0); PATCH]; TILE];
                    for (j, c) in cs.iter_mut().enumerate() {
                        *c =
                            grad_1d::<S>(load_n::<S, TILE>(dt.add(at + j * cout_p), cols * cout_p));
                    }
                    for i in 0..PATCH {
                        let row = grad_1d::<S>(column(&cs, i));
                        for (j, &val) in row.iter().enumerate() {
                            S::store(d.at(((i * PATCH + j) * stride + tc) * cout_p + cb), val);
                        }
                    }
                }
            }
        }
    }
}

/// `A z` for one column of four vectors (`A` the transpose of the forward's output transform):
/// `[z0, z0+z1+z2+z3, z0−z1+z2−z3, z0+2z1+4z2+8z3, z0−2z1+4z2−8z3, z3]`.
#[inline(always)]
unsafe fn grad_1d<S: Simd>(z: [S::V; TILE]) -> [S::V; PATCH] {
    let [z0, z1, z2, z3] = z;
    // SAFETY: the caller's instruction-set contract.
    unsafe {
        let a = S::add(z0, z2);
        let b = S::add(z1, z3);
        let c = S::madd(S::splat(4.0), z2, z0);
        let e = S::madd(S::splat(4.0), z3, z1);
        let e = S::add(e, e);
        [
            z0,
            S::add(a, b),
            S::sub(a, b),
            S::add(c, e),
            S::sub(c, e),
            z3,
        ]
    }
}

/// `Gᵀ z` for one column of six vectors:
/// `[z0/4 − (z1+z2)/6 + (z3+z4)/24, (z2−z1)/6 + (z3−z4)/12, (z3+z4−z1−z2)/6 + z5]`.
#[inline(always)]
unsafe fn filter_grad_1d<S: Simd>(z: [S::V; PATCH]) -> [S::V; 3] {
    let [z0, z1, z2, z3, z4, z5] = z;
    // SAFETY: the caller's instruction-set contract.
    unsafe {
        let p = S::add(z1, z2);
        let q = S::sub(z2, z1);
        let r = S::add(z3, z4);
        let t = S::sub(z3, z4);
        let zero = S::splat(0.0);
        [
            S::madd(
                S::splat(0.25),
                z0,
                S::madd(
                    S::splat(1.0 / 24.0),
                    r,
                    S::madd(S::splat(-1.0 / 6.0), p, zero),
                ),
            ),
            S::madd(
                S::splat(1.0 / 12.0),
                t,
                S::madd(S::splat(1.0 / 6.0), q, zero),
            ),
            S::madd(S::splat(1.0 / 6.0), S::sub(r, p), z5),
        ]
    }
}

/// Step 3 for output channels `co0 ..` (as many as `len` floats of `dw` hold).
struct FilterGrads<'a> {
    /// `M[ξ][co][ci]`, rows of `cin_p`.
    m: &'a [f32],
    s: &'a ConvShape,
    cin_p: usize,
    co0: usize,
    /// `dw[co0 ..][ci][k]`, `len` floats.
    dw: SyncPtr,
    len: usize,
}

impl Job for FilterGrads<'_> {
    #[inline(always)]
    unsafe fn run<S: Simd>(&self, _: &mut Scratch) {
        let &FilterGrads {
            m,
            s,
            cin_p,
            co0,
            dw,
            len,
        } = self;
        let l_ = S::L;
        let mut block = vec![0.0f32; 9 * l_];
        for co in co0..co0 + len / (s.cin * 9) {
            for cb in (0..s.cin).step_by(l_) {
                let at = co * cin_p + cb;
                // SAFETY: the 36 vectors at `at + ξ·cout·cin_p` lie inside `m` (36·cout·cin_p
                // floats, cb + L ≤ cin_p), `block` holds 9·L floats; the instruction set is the
                // caller's contract.
                unsafe {
                    let (mp, xi_stride) = (m.as_ptr(), s.cout * cin_p);
                    let mut cs = [[S::splat(0.0); 3]; PATCH];
                    for (j, c) in cs.iter_mut().enumerate() {
                        let col = mp.add(at + j * xi_stride);
                        *c = filter_grad_1d::<S>(load_n::<S, PATCH>(col, PATCH * xi_stride));
                    }
                    for a in 0..3 {
                        let row = filter_grad_1d::<S>(column(&cs, a));
                        for (b, &val) in row.iter().enumerate() {
                            S::store(block.as_mut_ptr().add((a * 3 + b) * l_), val);
                        }
                    }
                }
                for l in 0..l_.min(s.cin - cb) {
                    let o = ((co - co0) * s.cin + cb + l) * 9;
                    for k in 0..9 {
                        // SAFETY: `o + k` < len: channel `co` of this task's block of `dw`.
                        unsafe { *dw.at(o + k) = block[k * l_ + l] };
                    }
                }
            }
        }
    }
}
