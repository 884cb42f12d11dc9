//! 3×3 convolutions by Winograd's minimal filtering, F(4×4, 3×3) (Lavin & Gray, "Fast Algorithms
//! for Convolutional Neural Networks", CVPR 2016).
//!
//! Each 4×4 block of output pixels ("tile") is computed from the 6×6 input patch around it as
//! `Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A`: 36 products per tile and channel pair instead of 144, so the
//! inner matrix products do a quarter of the im2col gemm's multiplications. The price is three
//! transforms (filter, input, output) and a little fp32 rounding: the transforms' coefficients
//! (up to 8 and 1/24) make the result differ from the direct sum by a few units in the last
//! place of the largest term, well inside the parity tolerances (tests in `cpu/tests.rs`).
//!
//! Layout. The filter transform is packed once per call as `[panel][ξ][ci][P]`, `P` output
//! channels per panel (the width of the micro-kernel's accumulators). The image is cut into bands
//! of tile rows; for each band a thread copies the input rows channel-last (so that every
//! transform works on `L` channels at once, one SIMD register), writes the transformed patches
//! `V[ξ][tile][ci]`, runs 36 small products `M[ξ] = V[ξ] · U[ξ]` with its own register-blocked
//! micro-kernel, and transforms `M` back into the band's output rows. A band's buffers stay in
//! the core's L2 cache.
//!
//! Instruction sets are chosen at run time: the same generic code is compiled once with
//! AVX-512 (16 lanes, 64-channel panels) and once with AVX2+FMA (8 lanes, 16-channel panels);
//! other CPUs get it without either.

// The transforms and the register tile index their small arrays by (row, column) as the
// formulas do.
#![allow(clippy::needless_range_loop)]

use std::cell::RefCell;
use std::sync::OnceLock;

use rayon::prelude::*;

use super::cpu::{ConvShape, SyncPtr};
#[cfg(test)]
use super::simd::isas;
#[cfg(target_arch = "x86_64")]
use super::simd::{Avx2, Avx512};
use super::simd::{Isa, Portable, Simd, column, isa, load_n};

/// Output pixels per tile side.
const TILE: usize = 4;
/// Input pixels per patch side (`TILE + 3 − 1`).
const PATCH: usize = 6;
/// Points of the transformed domain (`PATCH²`).
const XI: usize = PATCH * PATCH;
/// Bytes of transformed input and output (`V` and `M`) a band may hold, so that they stay in the
/// core's L2 cache between the transforms and the products.
const BAND_BYTES: usize = 3 << 20;
/// Tile rows of the micro-kernel (broadcast operands).
const RT: usize = 6;
/// Input channels per block of the products: a block of the filter panel (`KC·P` floats, 32 KiB
/// with AVX-512) stays in L1 while the band's tiles pass it.
const KC: usize = 128;

/// Whether [`conv_forward`] is the faster way to compute this convolution: 3×3 kernels with
/// enough channels that the products dominate the transforms, and enough tiles that the filter
/// transform (once per call) is paid back.
/// `RECLMIS_WINOGRAD=0` turns it off (every convolution then runs as im2col + gemm), for
/// before/after timings and for bit-level comparisons with earlier runs.
pub(crate) fn applies(s: &ConvShape) -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("RECLMIS_WINOGRAD").is_none_or(|v| v != "0"))
        && s.k == 3
        && s.cin >= 16
        && s.cout >= 16
        && s.h >= TILE
        && s.w >= TILE
        && s.b * s.h.div_ceil(TILE) * s.w.div_ceil(TILE) >= 128
}

/// Forward 3×3 convolution (cross-correlation, padding 1), `out = relu?(scale ⊙ (w ⋆ x) + bias)`.
///
/// `x: [b, cin, h, w]`, `w: [cout, cin, 3, 3]`, `bias: [cout]`, `out: [b, cout, h, w]`; `scale`
/// multiplies each output channel before the bias (a BatchNorm folded into the convolution).
pub fn conv_forward(
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
    forward_checked(Input::Plain(x), w, bias, scale, s, relu, out);
}

/// [`conv_forward`] over the decoder's `cat([skip ⊙ gate, upsample_nearest2(low)], 1)` without
/// writing that tensor: each band reads its input rows straight from the three sources.
///
/// `skip: [b, cs, h, w]`, `gate: [b, h, w]` (one factor per pixel, PLAM's), `low: [b, cin − cs,
/// h/2, w/2]`; `s` is the shape of the convolution over the concatenation (`h`, `w` even). The
/// result is bit for bit that of [`conv_forward`] on the materialised concatenation.
#[allow(clippy::too_many_arguments)]
pub fn conv_forward_upcat(
    (skip, gate, low): (&[f32], &[f32], &[f32]),
    cs: usize,
    w: &[f32],
    bias: Option<&[f32]>,
    scale: Option<&[f32]>,
    s: ConvShape,
    relu: bool,
    out: &mut [f32],
) {
    assert!(
        cs <= s.cin && s.h.is_multiple_of(2) && s.w.is_multiple_of(2),
        "winograd upcat: {cs} skip channels of {s:?}"
    );
    let hw = s.hw();
    assert_eq!(skip.len(), s.b * cs * hw, "winograd upcat: skip length");
    assert_eq!(gate.len(), s.b * hw, "winograd upcat: gate length");
    assert_eq!(
        low.len(),
        s.b * (s.cin - cs) * hw / 4,
        "winograd upcat: low length"
    );
    s.check_operands(w, bias, out);
    s.check_scale(scale);
    let x = Input::UpCat {
        skip,
        gate,
        low,
        cs,
    };
    forward_checked(x, w, bias, scale, s, relu, out);
}

/// [`conv_forward`] on operands whose lengths the caller has checked.
pub(crate) fn forward_checked(
    x: Input,
    w: &[f32],
    bias: Option<&[f32]>,
    scale: Option<&[f32]>,
    s: ConvShape,
    relu: bool,
    out: &mut [f32],
) {
    assert_eq!(s.k, 3, "winograd: 3×3 kernels only");
    if out.is_empty() {
        return;
    }
    let call = Call {
        x,
        w,
        bias,
        scale,
        s,
        relu,
    };
    forward_with(isa(), &call, out);
}

/// Where a convolution's input channels come from.
#[derive(Clone, Copy)]
pub(crate) enum Input<'a> {
    /// `[b, cin, h, w]`.
    Plain(&'a [f32]),
    /// Channels `..cs` are `skip ⊙ gate`, the rest `low` upsampled ×2 (see
    /// [`conv_forward_upcat`]).
    UpCat {
        skip: &'a [f32],
        gate: &'a [f32],
        low: &'a [f32],
        cs: usize,
    },
}

impl<'a> Input<'a> {
    /// The sources of image `img`.
    fn image(self, img: usize, s: &ConvShape) -> Self {
        let hw = s.hw();
        match self {
            Input::Plain(x) => Input::Plain(&x[img * s.cin * hw..][..s.cin * hw]),
            Input::UpCat {
                skip,
                gate,
                low,
                cs,
            } => {
                let lo = (s.cin - cs) * hw / 4;
                Input::UpCat {
                    skip: &skip[img * cs * hw..][..cs * hw],
                    gate: &gate[img * hw..][..hw],
                    low: &low[img * lo..][..lo],
                    cs,
                }
            }
        }
    }
}

/// One convolution's operands (see [`conv_forward`]).
struct Call<'a> {
    x: Input<'a>,
    w: &'a [f32],
    bias: Option<&'a [f32]>,
    scale: Option<&'a [f32]>,
    s: ConvShape,
    relu: bool,
}

/// [`conv_forward`] with the instruction set `isa` (which the CPU must have: see [`isas`]), on
/// operands already checked.
fn forward_with(isa: Isa, call: &Call, out: &mut [f32]) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX-512F and FMA (the caller's contract, checked by `isa`).
        Isa::Avx512 => unsafe { run_avx512(call, out) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX2 and FMA (as above).
        Isa::Avx2 => unsafe { run_avx2(call, out) },
        Isa::Portable => run::<Portable>(call, out),
    }
}

// The filter packing and the band loop are compiled per instruction set; rayon's worker
// closures are separate functions, so each band enters a feature-enabled function again
// (`run_in`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
unsafe fn run_avx512(call: &Call, out: &mut [f32]) {
    run::<Avx512>(call, out);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn run_avx2(call: &Call, out: &mut [f32]) {
    run::<Avx2>(call, out);
}

/// The packed filter transform `U`, `[panel][ξ][ci][P]` with `P = L·NV` output channels a panel
/// (zero past `cout`).
struct Filters {
    u: Vec<f32>,
    p: usize,
    panels: usize,
    cin: usize,
}

impl Filters {
    fn panel(&self, panel: usize, xi: usize) -> &[f32] {
        let n = self.cin * self.p;
        &self.u[(panel * XI + xi) * n..][..n]
    }
}

/// `G = [[1/4, 0, 0], [-1/6, -1/6, -1/6], [-1/6, 1/6, -1/6], [1/24, 1/12, 1/6],
/// [1/24, -1/12, 1/6], [0, 0, 1]]`, so that `U = G g Gᵀ`.
const G: [[f64; 3]; PATCH] = [
    [0.25, 0.0, 0.0],
    [-1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0],
    [-1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0],
    [1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0],
    [1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0],
    [0.0, 0.0, 1.0],
];

/// `U[ξ = 6i + j] = Σ_{a,b} G[i][a]·G[j][b]·g[a][b]`: the filter transform as a 36×9 matrix, with
/// the nonzero taps of each row (each coefficient is rounded to f32 once).
fn filter_taps() -> &'static [Vec<(usize, f32)>; XI] {
    static TAPS: OnceLock<[Vec<(usize, f32)>; XI]> = OnceLock::new();
    TAPS.get_or_init(|| {
        std::array::from_fn(|xi| {
            let (i, j) = (xi / PATCH, xi % PATCH);
            (0..9)
                .map(|k| (k, G[i][k / 3] * G[j][k % 3]))
                .filter(|&(_, c)| c != 0.0)
                .map(|(k, c)| (k, c as f32))
                .collect()
        })
    })
}

/// Input channels per task of [`pack_filters`]: a task's block of scaled weights
/// (`PACK_CI·9·P` floats, 36 KiB with AVX-512) stays in L1 while its 36 rows are formed.
const PACK_CI: usize = 16;

/// The filter transform of every output channel, `U = G (scale·g) Gᵀ`, packed as [`Filters`].
/// Tasks are (panel, block of input channels) pairs, so that a layer with a single panel (64
/// output channels) is spread over the threads too.
fn pack_filters<S: Simd>(w: &[f32], scale: Option<&[f32]>, s: &ConvShape, p: usize) -> Filters {
    let panels = s.cout.div_ceil(p);
    let n = s.cin * p;
    let mut u = PACKED.with(|cell| std::mem::take(&mut *cell.borrow_mut()));
    resize(&mut u, panels * XI * n);
    let taps = filter_taps();
    let blocks = s.cin.div_ceil(PACK_CI);
    let u_ptr = SyncPtr(u.as_mut_ptr());
    (0..panels * blocks).into_par_iter().for_each(|job| {
        let (panel, ci0) = (job / blocks, job % blocks * PACK_CI);
        let cis = PACK_CI.min(s.cin - ci0);
        with_scratch(|scratch| {
            // gt[ci][k][l] = scale[co]·w[co][ci0 + ci][k] for co = panel·P + l (zero past cout):
            // row `ci·9 + k` of the block, as `w` stores (ci, k) of one output channel.
            resize(&mut scratch.gt, cis * 9 * p);
            let gt = &mut scratch.gt[..cis * 9 * p];
            gt.fill(0.0);
            for l in 0..p.min(s.cout - panel * p) {
                let co = panel * p + l;
                let sc = scale.map_or(1.0, |sc| sc[co]);
                for (i, &g) in w[(co * s.cin + ci0) * 9..][..cis * 9].iter().enumerate() {
                    gt[i * p + l] = g * sc;
                }
            }
            for (xi, taps) in taps.iter().enumerate() {
                // SAFETY: this job alone writes channels `ci0 .. ci0 + cis` of panel `panel`
                // (for every ξ), a run of `cis·P` floats inside `u`'s `panels·36·n`.
                let dst = unsafe {
                    std::slice::from_raw_parts_mut(
                        u_ptr.at((panel * XI + xi) * n + ci0 * p),
                        cis * p,
                    )
                };
                // SAFETY: `S` is the instruction set the caller detected.
                unsafe { transform_filters::<S>(taps, gt, p, dst) };
            }
        })
    });
    Filters {
        u,
        p,
        panels,
        cin: s.cin,
    }
}

/// One ξ of the filter transform for a block of input channels:
/// `dst[ci][l] = Σ_taps c·gt[ci][k][l]`, a product then a sum per tap in the taps' order (the
/// same rounding on every instruction set). Compiled for `S`'s instruction set, so that the
/// loops over `l` use its vector width.
///
/// # Safety
/// The CPU must have `S`'s instruction set.
unsafe fn transform_filters<S: Simd>(taps: &[(usize, f32)], gt: &[f32], p: usize, dst: &mut [f32]) {
    #[inline(always)]
    fn rows(taps: &[(usize, f32)], gt: &[f32], p: usize, dst: &mut [f32]) {
        let (&(k0, c0), rest) = taps.split_first().expect("every row has a tap");
        for (out, src) in dst.chunks_exact_mut(p).zip(gt.chunks_exact(9 * p)) {
            out.iter_mut()
                .zip(&src[k0 * p..][..p])
                .for_each(|(o, &g)| *o = c0 * g);
            for &(k, c) in rest {
                out.iter_mut()
                    .zip(&src[k * p..][..p])
                    .for_each(|(o, &g)| *o += c * g);
            }
        }
    }
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f")]
        unsafe fn avx512(taps: &[(usize, f32)], gt: &[f32], p: usize, dst: &mut [f32]) {
            rows(taps, gt, p, dst)
        }
        #[target_feature(enable = "avx2")]
        unsafe fn avx2(taps: &[(usize, f32)], gt: &[f32], p: usize, dst: &mut [f32]) {
            rows(taps, gt, p, dst)
        }
        match S::ISA {
            // SAFETY: the caller's contract.
            Isa::Avx512 => return unsafe { avx512(taps, gt, p, dst) },
            // SAFETY: the caller's contract.
            Isa::Avx2 => return unsafe { avx2(taps, gt, p, dst) },
            Isa::Portable => {}
        }
    }
    rows(taps, gt, p, dst)
}

impl Drop for Filters {
    /// Hands the buffer back for the next call on this thread.
    fn drop(&mut self) {
        let u = std::mem::take(&mut self.u);
        PACKED.with(|cell| *cell.borrow_mut() = u);
    }
}

thread_local! {
    /// The packed filters of the last call from this thread, and each worker's band buffers,
    /// kept between calls: a fresh multi-megabyte buffer costs a page fault for every 4 KiB it
    /// touches, which on a virtual machine took longer than the products themselves.
    static PACKED: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    static SCRATCH: RefCell<Scratch> = RefCell::default();
}

/// Runs `f` with this thread's [`Scratch`] (a fresh one if it is already in use further up the
/// stack).
fn with_scratch<R>(f: impl FnOnce(&mut Scratch) -> R) -> R {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut scratch) => f(&mut scratch),
        Err(_) => f(&mut Scratch::default()),
    })
}

/// One thread's buffers, reused across its bands.
#[derive(Default)]
struct Scratch {
    gt: Vec<f32>,
    /// One row of a block of channels of a composed input ([`Input::UpCat`]).
    row: Vec<f32>,
    xt: Vec<f32>,
    v: Vec<f32>,
    m: Vec<f32>,
}

fn resize(buf: &mut Vec<f32>, n: usize) {
    if buf.len() < n {
        buf.resize(n, 0.0);
    }
}

#[inline(always)]
fn run<S: Simd>(call: &Call, out: &mut [f32]) {
    let &Call {
        x,
        w,
        bias,
        scale,
        s,
        relu,
    } = call;
    let f = pack_filters::<S>(w, scale, &s, S::L * panel_vectors(S::ISA));
    let th = s.h.div_ceil(TILE);
    let rows = band_rows(&s, rayon::current_num_threads().max(1));
    let bands_per_img = th.div_ceil(rows);
    let out_ptr = SyncPtr(out.as_mut_ptr());
    let zero_bias = vec![0.0f32; s.cout];
    let bias = bias.unwrap_or(&zero_bias);
    (0..s.b * bands_per_img).into_par_iter().for_each(|job| {
        with_scratch(|scratch| {
            let (img, band) = (job / bands_per_img, job % bands_per_img);
            let ty = band * rows..((band + 1) * rows).min(th);
            let x_img = x.image(img, &s);
            // SAFETY: bands are disjoint tile rows of distinct images, so this job alone writes
            // output rows `4·ty.start .. 4·ty.end` of image `img`, which lie inside `out`.
            let out_img = unsafe { SyncPtr(out_ptr.at(img * s.cout * s.hw())) };
            let job = Band {
                x: x_img,
                s: &s,
                ty,
                f: &f,
                bias,
                relu,
                out: out_img,
            };
            // SAFETY: `S` is the instruction set `conv_forward` detected.
            unsafe { run_in(S::ISA, &job, scratch) };
        })
    });
}

/// Tile rows per band: the most rows whose `V` and `M` fit the band's budget (at least one),
/// among those that spread the bands over the threads evenly (the busiest thread's tile rows
/// are fewest). The budget is [`BAND_BYTES`], or a third of the packed filters where those are
/// larger: every band streams all of them once, and at 512 × 512 channels (38 MB) that traffic,
/// not the products, set the pace (a 28 px layer at batch 4 took 40 ms in bands of 3 MB and
/// 29 ms in bands of 12 MB on an AMD EPYC; layers with small filters were not helped by larger
/// bands, and those at 224 px were slowed).
fn band_rows(s: &ConvShape, threads: usize) -> usize {
    let (th, tw) = (s.h.div_ceil(TILE), s.w.div_ceil(TILE));
    let per_tile = XI * 4 * (s.cin + s.cout);
    let budget = BAND_BYTES.max(XI * 4 * s.cin * s.cout / 3);
    let fit = (budget / (per_tile * tw)).clamp(1, th);
    let busiest = |r: usize| (s.b * th.div_ceil(r)).div_ceil(threads) * r;
    (1..=fit)
        .min_by_key(|&r| (busiest(r), usize::MAX - r))
        .unwrap_or(1)
}

/// One job: the tile rows `ty` of one image.
struct Band<'a> {
    /// One image's input.
    x: Input<'a>,
    s: &'a ConvShape,
    ty: std::ops::Range<usize>,
    f: &'a Filters,
    bias: &'a [f32],
    relu: bool,
    out: SyncPtr,
}

/// Work compiled once per instruction set: rayon's worker closures are separate functions, not
/// part of `run_avx512`/`run_avx2`, so each job enters a feature-enabled function again through
/// [`run_in`].
trait Job {
    /// # Safety
    /// The CPU must have `S`'s instruction set.
    unsafe fn run<S: Simd>(&self, scratch: &mut Scratch);
}

/// Runs `job` compiled for `isa`.
///
/// # Safety
/// The CPU must have `isa` (see [`isas`]).
unsafe fn run_in<J: Job>(isa: Isa, job: &J, scratch: &mut Scratch) {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f,fma")]
        unsafe fn avx512<J: Job>(job: &J, scratch: &mut Scratch) {
            unsafe { job.run::<Avx512>(scratch) }
        }
        #[target_feature(enable = "avx2,fma")]
        unsafe fn avx2<J: Job>(job: &J, scratch: &mut Scratch) {
            unsafe { job.run::<Avx2>(scratch) }
        }
        match isa {
            // SAFETY: the caller's contract.
            Isa::Avx512 => return unsafe { avx512(job, scratch) },
            // SAFETY: the caller's contract.
            Isa::Avx2 => return unsafe { avx2(job, scratch) },
            Isa::Portable => {}
        }
    }
    // SAFETY: `Portable` needs no instruction set.
    unsafe { job.run::<Portable>(scratch) }
}

/// SIMD vectors per filter panel: the micro-kernel's accumulators are `RT` tiles by this many
/// vectors (24 of AVX-512's 32 registers, 12 of AVX2's 16).
const fn panel_vectors(isa: Isa) -> usize {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => 4,
        _ => 2,
    }
}

impl Job for Band<'_> {
    /// [`unit`] with the panel width of [`panel_vectors`] (a const generic there, so matched here).
    #[inline(always)]
    unsafe fn run<S: Simd>(&self, scratch: &mut Scratch) {
        // SAFETY: the caller's contract.
        unsafe {
            match panel_vectors(S::ISA) {
                4 => unit::<S, 4>(self, scratch),
                _ => unit::<S, 2>(self, scratch),
            }
        }
    }
}

/// `Bᵀ z` for one column of six vectors:
/// `Bᵀ = [[4,0,-5,0,1,0], [0,-4,-4,1,1,0], [0,4,-4,-1,1,0], [0,-2,-1,2,1,0], [0,2,-1,-2,1,0],
/// [0,4,0,-5,0,1]]`.
#[inline(always)]
unsafe fn input_1d<S: Simd>(z: [S::V; PATCH]) -> [S::V; PATCH] {
    let [z0, z1, z2, z3, z4, z5] = z;
    // SAFETY: the caller's instruction-set contract.
    unsafe {
        let (c4, c5, c2) = (S::splat(4.0), S::splat(-5.0), S::splat(2.0));
        let a = S::sub(z4, z2); // z4 - z2
        let b = S::sub(z3, z1); // z3 - z1
        let p = S::add(z3, z4);
        let q = S::sub(z4, z3);
        let r = S::add(z1, z2);
        let t = S::sub(z1, z2);
        [
            S::madd(c4, z0, S::madd(c5, z2, z4)),
            S::madd(S::splat(-4.0), r, p),
            S::madd(c4, t, q),
            S::madd(c2, b, a),
            S::madd(S::splat(-2.0), b, a),
            S::madd(c4, z1, S::madd(c5, z3, z5)),
        ]
    }
}

/// `Aᵀ m` for one column of six vectors:
/// `Aᵀ = [[1,1,1,1,1,0], [0,1,-1,2,-2,0], [0,1,1,4,4,0], [0,1,-1,8,-8,1]]`.
#[inline(always)]
unsafe fn output_1d<S: Simd>(m: [S::V; PATCH]) -> [S::V; TILE] {
    let [m0, m1, m2, m3, m4, m5] = m;
    // SAFETY: the caller's instruction-set contract.
    unsafe {
        let a = S::add(m1, m2);
        let b = S::sub(m1, m2);
        let c = S::add(m3, m4);
        let d = S::sub(m3, m4);
        [
            S::add(S::add(m0, a), c),
            S::madd(S::splat(2.0), d, b),
            S::madd(S::splat(4.0), c, a),
            S::madd(S::splat(8.0), d, S::add(b, m5)),
        ]
    }
}

/// One image's `c` channels of `h × w` pixels.
struct Planes<'a> {
    x: Input<'a>,
    c: usize,
    h: usize,
    w: usize,
}

/// Rows `y0 ..` of `src`, channel-last, with the zero padding written out:
/// `xt[r][pad + col][ch] = x[ch][y0 + r][col]` for the `xt.len() / (cols·c_p)` rows of `xt`,
/// zero outside the image and in the channels `c .. c_p` (`cols ≥ w + pad`, `c_p` a multiple of
/// `L`). `row` is scratch for one row of a composed input.
///
/// # Safety
/// The CPU must have `S`'s instruction set.
#[inline(always)]
unsafe fn channel_last<S: Simd>(
    src: &Planes,
    y0: isize,
    pad: usize,
    (cols, c_p): (usize, usize),
    row_buf: &mut Vec<f32>,
    xt: &mut [f32],
) {
    let l_ = S::L;
    let Planes { x, c: cin, h, w } = *src;
    let hw = h * w;
    assert!(cols >= w + pad && c_p >= cin && c_p.is_multiple_of(l_));
    xt.fill(0.0);
    for (r, row) in xt.chunks_exact_mut(cols * c_p).enumerate() {
        let y = y0 + r as isize;
        if y < 0 || y >= h as isize {
            continue;
        }
        let y = y as usize;
        for cb in (0..cin).step_by(l_) {
            let nl = l_.min(cin - cb);
            // Row y of channels cb..cb+nl: `src[l·rs + c]`.
            let (src, rs): (&[f32], usize) = match x {
                Input::Plain(x) => (&x[cb * hw + y * w..], hw),
                Input::UpCat {
                    skip,
                    gate,
                    low,
                    cs,
                } => {
                    resize(row_buf, l_ * w);
                    for (l, dst) in row_buf.chunks_exact_mut(w).take(nl).enumerate() {
                        let ch = cb + l;
                        if ch < cs {
                            let (sk, g) = (&skip[ch * hw + y * w..][..w], &gate[y * w..][..w]);
                            for ((d, &v), &z) in dst.iter_mut().zip(sk).zip(g) {
                                *d = v * z;
                            }
                        } else {
                            let lw = w / 2;
                            let lo = &low[((ch - cs) * (h / 2) + y / 2) * lw..][..lw];
                            for (pair, &v) in dst.chunks_exact_mut(2).zip(lo) {
                                pair.fill(v);
                            }
                        }
                    }
                    (&row_buf[..], w)
                }
            };
            let mut c = 0;
            if nl == l_ {
                while c + l_ <= w {
                    // SAFETY: rows 0..L of `src` (stride `rs`) hold pixels c..c+L, and pixels
                    // c+pad..c+pad+L of channel block cb lie in `row` (cols ≥ w + pad, cb + L ≤
                    // c_p); the instruction set is the caller's contract.
                    unsafe {
                        S::transpose(
                            src[c..].as_ptr(),
                            rs,
                            row[(c + pad) * c_p + cb..].as_mut_ptr(),
                            c_p,
                        );
                    }
                    c += l_;
                }
            }
            for c in c..w {
                let dst = &mut row[(c + pad) * c_p + cb..][..nl];
                for (l, d) in dst.iter_mut().enumerate() {
                    *d = src[l * rs + c];
                }
            }
        }
    }
}

/// The input transform of `rows × tw` tiles: `v[(ξ·stride + t)·c_p + ci] = (Bᵀ d B)[ξ]` for tile
/// `t = row·tw + col`, whose 6×6 patch `d` starts at pixel (4·row, 4·col) of `xt` (channel-last,
/// `cols` pixels of `c_p` channels a row, as [`channel_last`] writes it).
///
/// # Safety
/// `xt` holds `4·rows + 2` rows with `cols ≥ 4·tw + 2`; `v` addresses `36` runs of `stride ≥
/// rows·tw` tiles of `c_p` floats; the CPU must have `S`'s instruction set.
#[inline(always)]
unsafe fn input_tiles<S: Simd>(
    xt: &[f32],
    (cols, c_p): (usize, usize),
    (rows, tw): (usize, usize),
    v: *mut f32,
    stride: usize,
) {
    debug_assert!(xt.len() >= (TILE * rows + 2) * cols * c_p && cols >= TILE * tw + 2);
    let xt = xt.as_ptr();
    for t in 0..rows * tw {
        let (tr, tc) = (t / tw, t % tw);
        for cb in (0..c_p).step_by(S::L) {
            let at = ((TILE * tr) * cols + TILE * tc) * c_p + cb;
            // SAFETY: the patch's 36 vectors at `at + (i·cols + j)·c_p`, i, j < 6, lie inside
            // `xt`, and each store lies in `v` (the caller's contract); so is the instruction
            // set.
            unsafe {
                let mut cs = [[S::splat(0.0); PATCH]; PATCH];
                for (j, c) in cs.iter_mut().enumerate() {
                    *c = input_1d::<S>(load_n::<S, PATCH>(xt.add(at + j * c_p), cols * c_p));
                }
                for i in 0..PATCH {
                    let row = input_1d::<S>(column(&cs, i));
                    for (j, &val) in row.iter().enumerate() {
                        S::store(v.add(((i * PATCH + j) * stride + t) * c_p + cb), val);
                    }
                }
            }
        }
    }
}

/// One band: input copy, input transform, 36 products, output transform.
///
/// # Safety
/// The CPU must have `S`'s instruction set.
#[inline(always)]
unsafe fn unit<S: Simd, const NV: usize>(band: &Band, scratch: &mut Scratch) {
    let Band {
        x,
        s,
        ref ty,
        f,
        bias,
        relu,
        out,
    } = *band;
    let l_ = S::L;
    let p = l_ * NV;
    assert_eq!(p, f.p, "winograd: panel width");
    let (h, w, hw) = (s.h, s.w, s.hw());
    let cin_p = s.cin.next_multiple_of(l_);
    let cout_p = f.panels * p;
    let tw = w.div_ceil(TILE);
    let tiles = ty.len() * tw;
    let rows_n = TILE * ty.len() + 2;
    let cols_n = TILE * tw + 2;

    // 1. The band's input rows, channel-last, with the zero padding written out:
    // xt[r][c][ci] = x[ci][4·ty.start − 1 + r][c − 1].
    let xt_len = rows_n * cols_n * cin_p;
    resize(&mut scratch.xt, xt_len);
    let planes = Planes { x, c: s.cin, h, w };
    let y0 = (TILE * ty.start) as isize - 1;
    // SAFETY: the caller's instruction-set contract.
    unsafe {
        channel_last::<S>(
            &planes,
            y0,
            1,
            (cols_n, cin_p),
            &mut scratch.row,
            &mut scratch.xt[..xt_len],
        );
    }

    // 2. V[ξ][tile][ci] = (Bᵀ d B)[ξ] for every tile of the band.
    let v_len = XI * tiles * cin_p;
    resize(&mut scratch.v, v_len);
    let v = &mut scratch.v[..v_len];
    // SAFETY: `v` holds 36 rows of `tiles` tiles of `cin_p` floats; the instruction set is the
    // caller's contract.
    unsafe {
        input_tiles::<S>(
            &scratch.xt[..xt_len],
            (cols_n, cin_p),
            (ty.len(), tw),
            v.as_mut_ptr(),
            tiles,
        );
    }

    // 3. M[ξ][tile][co] = Σ_ci V[ξ][tile][ci] · U[ξ][ci][co].
    let m_len = XI * tiles * cout_p;
    resize(&mut scratch.m, m_len);
    let m = &mut scratch.m[..m_len];
    for panel in 0..f.panels {
        for xi in 0..XI {
            let u = f.panel(panel, xi);
            let vx = &v[xi * tiles * cin_p..][..tiles * cin_p];
            let mx = &mut m[xi * tiles * cout_p..][..tiles * cout_p];
            // Blocks of KC input channels, so that the filter block a micro-kernel call streams
            // stays in L1 across the band's tiles.
            for k0 in (0..s.cin).step_by(KC) {
                let kc = KC.min(s.cin - k0);
                let uk = &u[k0 * p..][..kc * p];
                let mut t0 = 0;
                while t0 < tiles {
                    let n = RT.min(tiles - t0);
                    let vv = &vx[t0 * cin_p + k0..][..(n - 1) * cin_p + kc];
                    let mm = &mut mx[t0 * cout_p + panel * p..][..(n - 1) * cout_p + p];
                    let acc = k0 > 0;
                    // SAFETY: `vv` holds `n` rows of `kc` floats at stride `cin_p`, `uk` `kc`
                    // rows of `p`, `mm` `n` rows of `p` at stride `cout_p`; the instruction set
                    // is the caller's contract.
                    unsafe {
                        match n {
                            6 => micro::<S, NV, 6>(kc, vv, cin_p, uk, mm, cout_p, acc),
                            5 => micro::<S, NV, 5>(kc, vv, cin_p, uk, mm, cout_p, acc),
                            4 => micro::<S, NV, 4>(kc, vv, cin_p, uk, mm, cout_p, acc),
                            3 => micro::<S, NV, 3>(kc, vv, cin_p, uk, mm, cout_p, acc),
                            2 => micro::<S, NV, 2>(kc, vv, cin_p, uk, mm, cout_p, acc),
                            _ => micro::<S, NV, 1>(kc, vv, cin_p, uk, mm, cout_p, acc),
                        }
                    }
                    t0 += n;
                }
            }
        }
    }

    // 4. out = Aᵀ M A (+ bias, ReLU), scattered back to NCHW.
    let mut block = vec![0.0f32; TILE * TILE * l_];
    let mut bias_p = bias.to_vec();
    bias_p.resize(cout_p, 0.0);
    let m_ptr = m.as_ptr();
    for t in 0..tiles {
        let (tr, tc) = (t / tw, t % tw);
        let (oy0, ox0) = (TILE * (ty.start + tr), TILE * tc);
        let ny = TILE.min(h - oy0);
        let nx = TILE.min(w - ox0);
        for cb in (0..s.cout).step_by(l_) {
            let at = t * cout_p + cb;
            // SAFETY: the 36 vectors at `at + ξ·tiles·cout_p` lie inside `m` (cb + L ≤ cout_p),
            // `block` holds 16·L floats and `bias_p` cout_p; the instruction set is the
            // caller's contract.
            unsafe {
                let mut cols = [[S::splat(0.0); TILE]; PATCH];
                for (j, c) in cols.iter_mut().enumerate() {
                    let col = m_ptr.add(at + j * tiles * cout_p);
                    *c = output_1d::<S>(load_n::<S, PATCH>(col, PATCH * tiles * cout_p));
                }
                let b = S::load(bias_p.as_ptr().add(cb));
                let zero = S::splat(0.0);
                for i in 0..TILE {
                    let row = output_1d::<S>(column(&cols, i));
                    for (j, &val) in row.iter().enumerate() {
                        let y = S::add(val, b);
                        let y = if relu { S::max(y, zero) } else { y };
                        S::store(block.as_mut_ptr().add((i * TILE + j) * l_), y);
                    }
                }
            }
            for l in 0..l_.min(s.cout - cb) {
                let plane = (cb + l) * hw;
                for i in 0..ny {
                    let o = plane + (oy0 + i) * w + ox0;
                    for j in 0..nx {
                        // SAFETY: `o + j` addresses pixel (oy0 + i, ox0 + j) of channel cb + l
                        // of this image, inside the band this job owns (see `run`).
                        unsafe { *out.at(o + j) = block[(i * TILE + j) * l_ + l] };
                    }
                }
            }
        }
    }
}

/// `m[r][0..P] (+)= Σ_ci v[r][ci] · u[ci][0..P]` for `R` rows (tiles) and `P = L·NV` columns
/// (output channels), adding to `m` when `accumulate`: `R·NV` accumulator registers, each `u`
/// vector loaded once per `ci`.
///
/// # Safety
/// `v` holds `R` rows of at least `k` floats at stride `vs`, `u` `k` rows of `P`, `m` `R` rows
/// of `P` at stride `ms`; the CPU must have `S`'s instruction set.
#[inline(always)]
unsafe fn micro<S: Simd, const NV: usize, const R: usize>(
    k: usize,
    v: &[f32],
    vs: usize,
    u: &[f32],
    m: &mut [f32],
    ms: usize,
    accumulate: bool,
) {
    let p = S::L * NV;
    debug_assert!(v.len() >= (R - 1) * vs + k && u.len() >= k * p);
    debug_assert!(m.len() >= (R - 1) * ms + p);
    // SAFETY: the caller's contract.
    unsafe {
        let (vp, up, mp) = (v.as_ptr(), u.as_ptr(), m.as_mut_ptr());
        let mut acc = [[S::splat(0.0); NV]; R];
        if accumulate {
            for r in 0..R {
                for q in 0..NV {
                    acc[r][q] = S::load(mp.add(r * ms + q * S::L));
                }
            }
        }
        for ci in 0..k {
            let uv = load_n::<S, NV>(up.add(ci * p), S::L);
            for r in 0..R {
                let a = S::splat(*vp.add(r * vs + ci));
                for q in 0..NV {
                    acc[r][q] = S::madd(a, uv[q], acc[r][q]);
                }
            }
        }
        for r in 0..R {
            for q in 0..NV {
                S::store(mp.add(r * ms + q * S::L), acc[r][q]);
            }
        }
    }
}

mod weight_grad;
pub use weight_grad::conv_weight_grad;

#[cfg(test)]
mod tests;
