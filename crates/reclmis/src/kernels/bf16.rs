//! bf16 mixed-precision variants of the convolutions in [`super::cpu`], for CPUs with AVX-512
//! BF16.
//!
//! Operands (activations, weights, output gradients) are rounded to bf16 (round to nearest even,
//! as VCVTNE2PS2BF16 does, which also flushes f32 subnormals to zero), products are accumulated
//! in f32 by VDPBF16PS, and everything else stays f32: outputs, the bias add and ReLU epilogue,
//! and the bias gradient (a plain sum of `dy`, computed exactly as the f32 kernel does).
//!
//! Each convolution is a GEMM `C[m, n] (+)= A[m, k] · B[k, n]` per tile. VDPBF16PS consumes `k`
//! in pairs (one 32-bit lane holds two bf16), so both operands are stored as `u32` pairs along
//! `k`: A row-major as `[m][k / 2]` (the microkernel broadcasts one pair per row), B packed as
//! `[n / NR][k / 2][NR]` (NR columns in NV vector loads); the microkernel holds an `MR × NR`
//! block of `C` in registers. The forward pass and the input gradient (the forward convolution
//! of `dy` with the flipped, channel-transposed kernel, as in the f32 version) convert the
//! weights once per call and write the im2col tile straight from the input as packed bf16 (masked
//! loads supply the zero padding). The weight gradient contracts over pixels: A is `dy`, B the
//! transposed im2col tile, and threads own disjoint column ranges of `dw`, so each im2col row is
//! made by one thread only and no per-thread accumulators are summed.
//!
//! Without AVX-512 BF16 (checked at run time by [`bf16_supported`]) every function falls back to
//! its f32 counterpart in [`super::cpu`].

use super::cpu::{self, ConvShape};

/// Whether this CPU runs the bf16 kernels (AVX-512 F, BW and BF16, and no `RECLMIS_ISA` cap
/// below AVX-512); when it does not, the `*_bf16` functions compute in f32.
pub fn bf16_supported() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        super::simd::isa() == super::simd::Isa::Avx512
            && is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether a bf16 forward (or input-gradient) convolution of shape `s` runs as the f32 Winograd
/// kernel instead: where the bf16 products are AVX-512 `VDPBF16PS` (no AMX tiles), bf16 only
/// doubles the multiply rate of f32 FMAs, while Winograd F(4×4, 3×3) needs a quarter of the
/// multiplications, and it is also the more exact of the two. On an AMD EPYC with AVX-512 BF16
/// this took a bf16 training step from 3.2 to 3.1 s and batch-4 inference from 0.69 to 0.59 s
/// (issue 13's records). With AMX, a tile instruction does sixteen times the work of a
/// `VDPBF16PS` and im2col on tiles stays the bf16 path.
pub fn winograd_instead(s: &ConvShape) -> bool {
    #[cfg(target_arch = "x86_64")]
    if super::amx::available() {
        return false;
    }
    super::winograd::applies(s)
}

/// [`cpu::conv_forward`] with bf16 operands and f32 accumulation (exactly that function where
/// [`bf16_supported`] is false, and where [`winograd_instead`] holds).
///
/// `x: [b, cin, h, w]`, `w: [cout, cin, k, k]`, `bias: [cout]`, `out: [b, cout, h, w]`.
pub fn conv_forward_bf16(
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    s: ConvShape,
    relu: bool,
    out: &mut [f32],
) {
    s.check_forward(x, w, bias, out);
    if winograd_instead(&s) {
        return cpu::conv_forward(x, w, bias, s, relu, out);
    }
    #[cfg(target_arch = "x86_64")]
    if bf16_supported() && !out.is_empty() && s.kk() > 0 {
        // SAFETY: the CPU has the features the kernels are compiled for (checked just above).
        unsafe { avx512::conv_forward(x, w, bias, s, relu, out) };
        return;
    }
    cpu::conv_forward(x, w, bias, s, relu, out);
}

/// [`cpu::conv_input_grad`] with bf16 operands and f32 accumulation (or that function, as
/// above, [`winograd_instead`] asked of the input-gradient shape); overwrites `dx`.
///
/// `dy: [b, cout, h, w]`, `w: [cout, cin, k, k]`, `dx: [b, cin, h, w]`.
pub fn conv_input_grad_bf16(dy: &[f32], w: &[f32], s: ConvShape, dx: &mut [f32]) {
    s.check_input_grad(dy, w, dx);
    if winograd_instead(&s.adjoint()) {
        return cpu::conv_input_grad(dy, w, s, dx);
    }
    #[cfg(target_arch = "x86_64")]
    if bf16_supported() && !dx.is_empty() && s.cout > 0 {
        // SAFETY: as in `conv_forward_bf16`.
        unsafe { avx512::conv_input_grad(dy, w, s, dx) };
        return;
    }
    cpu::conv_input_grad(dy, w, s, dx);
}

/// [`cpu::conv_weight_grad`] with bf16 operands and f32 accumulation (or that function, as
/// above: its Winograd weight gradient took 457 ms a step over the 14 layers where the bf16
/// im2col took 494 ms, timed layer by layer on an AMD EPYC); overwrites `dw: [cout, cin, k, k]` and `dbias: [cout]` (the latter summed from f32
/// `dy`, as there).
pub fn conv_weight_grad_bf16(
    x: &[f32],
    dy: &[f32],
    s: ConvShape,
    dw: &mut [f32],
    dbias: Option<&mut [f32]>,
) {
    s.check_weight_grad(x, dy, dw, dbias.as_deref());
    if winograd_instead(&s) {
        return cpu::conv_weight_grad(x, dy, s, dw, dbias);
    }
    #[cfg(target_arch = "x86_64")]
    if bf16_supported() && !dw.is_empty() && s.b * s.hw() > 0 {
        // SAFETY: as in `conv_forward_bf16`.
        unsafe { avx512::conv_weight_grad(x, dy, s, dw, dbias) };
        return;
    }
    cpu::conv_weight_grad(x, dy, s, dw, dbias);
}

/// A strided `f32` matrix: element `(i, j)` is `data[i · rs + j · cs]`.
#[derive(Clone, Copy, Debug)]
pub struct Mat<'a> {
    pub data: &'a [f32],
    pub rs: usize,
    pub cs: usize,
}

impl Mat<'_> {
    /// Whether every element of a `rows × cols` matrix lies inside `data`.
    fn covers(&self, rows: usize, cols: usize) -> bool {
        (rows - 1) * self.rs + (cols - 1) * self.cs < self.data.len()
    }

    #[inline]
    fn at(&self, i: usize, j: usize) -> f32 {
        self.data[i * self.rs + j * self.cs]
    }
}

/// `c [m, n] (row-major) = a [m, k] · b [k, n]` with bf16 operands and f32 accumulation (AMX
/// tiles where available), rows split over the threads; the f32 GEMM of [`cpu`] where
/// [`bf16_supported`] is false.
pub fn matmul_bf16((m, n, k): (usize, usize, usize), a: Mat, b: Mat, c: &mut [f32]) {
    assert_eq!(c.len(), m * n, "matmul output length");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        c.fill(0.0);
        return;
    }
    assert!(
        a.covers(m, k) && b.covers(k, n),
        "matmul operand strides leave their slices"
    );
    #[cfg(target_arch = "x86_64")]
    if bf16_supported() {
        // SAFETY: the CPU has AVX-512 F, BW and BF16 (checked just above).
        unsafe { avx512::matmul((m, n, k), a, b, c) };
        return;
    }
    // SAFETY: both operands lie inside their slices (asserted above) and `c` is the full
    // `m × n` output.
    unsafe {
        cpu::sgemm(
            (m, n, k),
            c.as_mut_ptr(),
            n,
            false,
            (a.data.as_ptr(), a.rs, a.cs),
            (b.data.as_ptr(), b.rs, b.cs),
            gemm::Parallelism::Rayon(rayon::current_num_threads()),
        );
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;
    use std::ops::Range;

    use rayon::prelude::*;

    use super::super::amx::{self, KT};
    use super::cpu::{self, ConvShape, SyncPtr, Tile};

    /// Rows of `C` per microkernel call (`A` lanes broadcast per `k` pair).
    const MR: usize = 8;
    /// 16-lane vectors of `C` columns per microkernel call; `MR · NV` accumulators plus `NV`
    /// loaded `B` vectors stay within the 32 zmm registers.
    const NV: usize = 3;
    /// Columns of a full `B` panel.
    const NR: usize = 16 * NV;
    /// Most `k` pairs per cache block: a `KC × NR` slice of `B` (36 KiB) is reused from L1 by
    /// every row panel of `A`, whose `KC`-slice (`m · KC · 4` bytes) stays in L2. 128 to 256
    /// measured the same within noise.
    const KC: usize = 192;

    /// Reinterprets 32 bf16 as 16 `u32` pairs.
    #[target_feature(enable = "avx512f")]
    fn bits(v: __m512bh) -> __m512i {
        // SAFETY: both are plain 64-byte vectors for which every bit pattern is valid.
        unsafe { std::mem::transmute(v) }
    }

    /// Reinterprets 16 `u32` pairs as 32 bf16.
    #[target_feature(enable = "avx512f")]
    fn bf16s(v: __m512i) -> __m512bh {
        // SAFETY: as in `bits`.
        unsafe { std::mem::transmute(v) }
    }

    /// Rounds 32 consecutive values to bf16 pairs: lane `i` holds `v[2i]` (low half) and
    /// `v[2i + 1]` (high half).
    #[target_feature(enable = "avx512f,avx512bf16")]
    fn pairs_along(v: &[f32; 32]) -> __m512i {
        // SAFETY: `v` holds 32 floats.
        let (lo, hi) = unsafe {
            (
                _mm512_loadu_ps(v.as_ptr()),
                _mm512_loadu_ps(v.as_ptr().add(16)),
            )
        };
        bits(_mm512_cvtne2ps_pbh(hi, lo))
    }

    /// Rounds two vectors to bf16 pairs across them: lane `i` holds `lo[i]` (low half) and
    /// `hi[i]` (high half).
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    fn pairs_across(lo: __m512, hi: __m512) -> __m512i {
        // Words 0..16 are `lo`, 16..32 are `hi`; interleave them.
        let idx = _mm512_set_epi16(
            31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6, 21, 5, 20,
            4, 19, 3, 18, 2, 17, 1, 16, 0,
        );
        _mm512_permutexvar_epi16(idx, bits(_mm512_cvtne2ps_pbh(hi, lo)))
    }

    /// Rounds `src` to bf16 pairs along it into `dst: [src.len() / 2, rounded up]`, the odd tail
    /// paired with zero.
    #[target_feature(enable = "avx512f,avx512bf16")]
    fn to_pairs(src: &[f32], dst: &mut [u32]) {
        debug_assert_eq!(dst.len(), src.len().div_ceil(2));
        for (s, d) in src.chunks(32).zip(dst.chunks_mut(16)) {
            let v = match s.try_into() {
                Ok(s) => pairs_along(s),
                Err(_) => {
                    let mut buf = [0.0f32; 32];
                    buf[..s.len()].copy_from_slice(s);
                    pairs_along(&buf)
                }
            };
            if d.len() == 16 {
                // SAFETY: `d` has room for 16 `u32`.
                unsafe { _mm512_storeu_si512(d.as_mut_ptr().cast(), v) };
            } else {
                let mut out = [0u32; 16];
                // SAFETY: `out` has room for 16 `u32`.
                unsafe { _mm512_storeu_si512(out.as_mut_ptr().cast(), v) };
                d.copy_from_slice(&out[..d.len()]);
            }
        }
    }

    /// Transposes a 16 × 16 matrix of `u32`, one row per vector.
    #[target_feature(enable = "avx512f")]
    fn transpose16(r: [__m512i; 16]) -> [__m512i; 16] {
        // Interleave neighbouring rows by 32 then 64 bits: t[4g + c] holds rows 4g..4g+4 of
        // columns c, c + 4, c + 8, c + 12 in its four 128-bit lanes.
        let mut t = r;
        for i in 0..8 {
            t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
            t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
        }
        let mut u = t;
        for g in 0..4 {
            let (a, b) = (4 * g, 4 * g + 2);
            u[4 * g] = _mm512_unpacklo_epi64(t[a], t[b]);
            u[4 * g + 1] = _mm512_unpackhi_epi64(t[a], t[b]);
            u[4 * g + 2] = _mm512_unpacklo_epi64(t[a + 1], t[b + 1]);
            u[4 * g + 3] = _mm512_unpackhi_epi64(t[a + 1], t[b + 1]);
        }
        // Gather the 128-bit lanes of each column from the four row groups.
        let mut out = u;
        for c in 0..4 {
            let (v02, v13) = (
                _mm512_shuffle_i32x4::<0b10_00_10_00>(u[c], u[4 + c]),
                _mm512_shuffle_i32x4::<0b10_00_10_00>(u[8 + c], u[12 + c]),
            );
            let (w02, w13) = (
                _mm512_shuffle_i32x4::<0b11_01_11_01>(u[c], u[4 + c]),
                _mm512_shuffle_i32x4::<0b11_01_11_01>(u[8 + c], u[12 + c]),
            );
            out[c] = _mm512_shuffle_i32x4::<0b10_00_10_00>(v02, v13);
            out[c + 8] = _mm512_shuffle_i32x4::<0b11_01_11_01>(v02, v13);
            out[c + 4] = _mm512_shuffle_i32x4::<0b10_00_10_00>(w02, w13);
            out[c + 12] = _mm512_shuffle_i32x4::<0b11_01_11_01>(w02, w13);
        }
        out
    }

    /// The `A` operand: `m` rows of `2·kp` values as bf16 pairs, `[m][kp]`.
    struct PackedA {
        data: Vec<u32>,
        kp: usize,
    }

    /// Packs `A` (`m × kk`), rows in parallel blocks of [`MR`]: `rows(range, buf)` fills
    /// `buf: [range.len(), kk]` with those rows in f32.
    #[target_feature(enable = "avx512f,avx512bf16")]
    fn pack_a(m: usize, kk: usize, rows: impl Fn(Range<usize>, &mut [f32]) + Sync) -> PackedA {
        let kp = kk.div_ceil(2);
        let mut data = vec![0u32; m * kp];
        data.par_chunks_mut(MR * kp).enumerate().for_each_init(
            || vec![0.0f32; MR * kk],
            |buf, (i, dst)| {
                let range = i * MR..(i * MR + MR).min(m);
                let buf = &mut buf[..range.len() * kk];
                rows(range, buf);
                for (src, dst) in buf.chunks_exact(kk).zip(dst.chunks_exact_mut(kp)) {
                    to_pairs(src, dst);
                }
            },
        );
        PackedA { data, kp }
    }

    /// Columns of `B` panel `j` of `n` columns, rounded up to whole vectors.
    fn panel_width(n: usize, j: usize) -> usize {
        (n - j * NR).min(NR).div_ceil(16) * 16
    }

    /// What the microkernel does around its product `P = A_panel · B_panel`.
    #[derive(Clone, Copy)]
    struct Epilogue {
        /// `C += P` (else `C = P`).
        load_c: bool,
        /// Adds `bias[row]` (only without `load_c`).
        bias: Option<*const f32>,
        /// ReLU on the result.
        relu: bool,
    }

    impl Epilogue {
        /// Stores the lanes `mask` of product row `row`, `r`, at `ptr`: added to what is there
        /// (`load_c`), or plus the row's bias; then ReLU.
        ///
        /// # Safety
        /// The masked lanes at `ptr` must be valid to read and write; `bias`, if any, must hold
        /// `row + 1` floats.
        #[target_feature(enable = "avx512f")]
        unsafe fn store(self, mut r: __m512, ptr: *mut f32, mask: __mmask16, row: usize) {
            // SAFETY: the caller's contract.
            unsafe {
                if self.load_c {
                    r = _mm512_add_ps(r, _mm512_maskz_loadu_ps(mask, ptr));
                } else if let Some(bias) = self.bias {
                    r = _mm512_add_ps(r, _mm512_set1_ps(*bias.add(row)));
                }
                if self.relu {
                    // MAXPS returns its second operand for NaN and ±0, like `relu_f32`.
                    r = _mm512_max_ps(_mm512_setzero_ps(), r);
                }
                _mm512_mask_storeu_ps(ptr, mask, r);
            }
        }
    }

    /// `C[..m_valid, ..n_valid] = epilogue(A_panel · B_panel)` over `kc` pairs, where row `i`
    /// of `A_panel` is `a[i]: [kc]` and `B_panel` is `[kc][16 · V]` packed pairs.
    ///
    /// # Safety
    /// Each `a[i]` must address `kc` `u32` and `b` `kc · 16 · V`; `c` the `m_valid × n_valid`
    /// block (row stride `ldc`, `m_valid ≤ MR`, `n_valid ≤ 16 · V`), written by no one else
    /// meanwhile; `epi.bias`, if any, `m_valid` floats.
    #[target_feature(enable = "avx512f,avx512bf16")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn micro<const V: usize>(
        kc: usize,
        a: [*const u32; MR],
        b: *const u32,
        c: *mut f32,
        ldc: usize,
        m_valid: usize,
        n_valid: usize,
        epi: Epilogue,
    ) {
        if epi.load_c {
            // `C` is read only after the loop; fetching it now hides the miss behind the
            // product (it was last touched a whole `B` panel or `k` block ago).
            for i in 0..m_valid {
                for l in (0..n_valid).step_by(16) {
                    _mm_prefetch::<_MM_HINT_T0>(c.wrapping_add(i * ldc + l).cast());
                }
            }
        }
        let mut acc = [[_mm512_setzero_ps(); V]; MR];
        for p in 0..kc {
            // SAFETY: `p < kc`, so these reads stay inside the panels (caller's contract).
            let bv: [__m512bh; V] = std::array::from_fn(|v| unsafe {
                b.add((p * V + v) * 16).cast::<__m512bh>().read_unaligned()
            });
            for (i, acc_row) in acc.iter_mut().enumerate() {
                // SAFETY: as above.
                let av = bf16s(_mm512_set1_epi32(unsafe { *a[i].add(p) } as i32));
                for (acc, &bv) in acc_row.iter_mut().zip(&bv) {
                    *acc = _mm512_dpbf16_ps(*acc, av, bv);
                }
            }
        }
        for (i, acc_row) in acc.iter().enumerate().take(m_valid) {
            for (v, &acc) in acc_row.iter().enumerate() {
                let lanes = n_valid.saturating_sub(16 * v).min(16);
                if lanes == 0 {
                    break;
                }
                let mask = (u32::MAX >> (32 - lanes)) as __mmask16;
                // SAFETY: lanes `< lanes` of this row lie in the block (caller's contract);
                // masked-off lanes are neither read nor written.
                unsafe { epi.store(acc, c.add(i * ldc + 16 * v), mask, i) };
            }
        }
    }

    /// `C[m, n] (row stride ldc) = epilogue(A · B)` over `kp` pairs, `A` as `[m][kp]` pairs
    /// and `B` as `[n / NR][kp][NR]` pairs (the last panel [`panel_width`] wide). With
    /// `accumulate`, `C += A · B` and `bias` is ignored.
    ///
    /// # Safety
    /// `c` must address the `m × n` block with row stride `ldc`, written by no one else meanwhile.
    #[target_feature(enable = "avx512f,avx512bf16")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn gemm(
        (m, n, kp): (usize, usize, usize),
        a: &[u32],
        b: &[u32],
        c: *mut f32,
        ldc: usize,
        bias: Option<&[f32]>,
        relu: bool,
        accumulate: bool,
    ) {
        let (m_panels, n_panels) = (m.div_ceil(MR), n.div_ceil(NR));
        assert!(bias.is_none_or(|b| b.len() >= m), "gemm bias length");
        assert!(a.len() >= m * kp, "gemm lhs length");
        let amx = super::super::amx::available();
        // Equal blocks: a short last one would reload `C` for little work. On AMX, whole tiles
        // of `k`, so only the last block has a tail.
        let mut step = kp.div_ceil(kp.div_ceil(KC).max(1)).max(1);
        if amx {
            step = step.next_multiple_of(KT);
        }
        // The AMX product of one 16-row block, before the epilogue stores it; every use
        // overwrites the columns it reads.
        let mut p = [0.0f32; 16 * NR];
        for k0 in (0..kp).step_by(step) {
            let kc = step.min(kp - k0);
            let (first, last) = (k0 == 0, k0 + kc == kp);
            for j in 0..n_panels {
                let width = panel_width(n, j);
                let b_panel = &b[j * kp * NR + k0 * width..][..kc * width];
                let n_valid = (n - j * NR).min(NR);
                // Rows in whole 16-row tiles and `k` in whole tiles go through AMX.
                let (m16, kc16) = if amx {
                    (m / 16 * 16, kc / KT * KT)
                } else {
                    (0, 0)
                };
                let amx_rows = if kc16 > 0 { m16 } else { 0 };
                for i in (0..amx_rows).step_by(16) {
                    let epi = Epilogue {
                        load_c: accumulate || !first,
                        bias: bias
                            .filter(|_| first && !accumulate)
                            .map(|b| b[i..].as_ptr()),
                        relu: relu && last && kc16 == kc,
                    };
                    let ap = a[i * kp + k0..].as_ptr();
                    // SAFETY: AMX is available; rows `i..i + 16` of `a` hold `kp ≥ k0 + kc16`
                    // pairs at stride `kp`; the `B` panel holds `kc ≥ kc16` rows of `width`.
                    unsafe {
                        let bp = b_panel.as_ptr();
                        match width / 16 {
                            1 => amx::block::<1>(kc16, ap, kp, bp, width, &mut p),
                            2 => amx::block::<2>(kc16, ap, kp, bp, width, &mut p),
                            _ => amx::block::<NV>(kc16, ap, kp, bp, width, &mut p),
                        }
                    }
                    // SAFETY: the `C` block at (i, j·NR) lies in the caller's `m × n` block.
                    unsafe {
                        store_product(&p, width, c.add(i * ldc + j * NR), ldc, n_valid, epi);
                    }
                    if kc16 < kc {
                        // The `k` tail of these rows, added by the AVX-512 microkernel.
                        let tail = Epilogue {
                            load_c: true,
                            bias: None,
                            relu: relu && last,
                        };
                        for r0 in [i, i + MR] {
                            let ap =
                                std::array::from_fn(|r| a[(r0 + r) * kp + k0 + kc16..].as_ptr());
                            // SAFETY: as for the panels below, `kc16` pairs further on.
                            unsafe {
                                let bp = b_panel.as_ptr().add(kc16 * width);
                                let cp = c.add(r0 * ldc + j * NR);
                                let kt = kc - kc16;
                                match width / 16 {
                                    1 => micro::<1>(kt, ap, bp, cp, ldc, MR, n_valid, tail),
                                    2 => micro::<2>(kt, ap, bp, cp, ldc, MR, n_valid, tail),
                                    _ => micro::<NV>(kt, ap, bp, cp, ldc, MR, n_valid, tail),
                                }
                            }
                        }
                    }
                }
                for i in amx_rows / MR..m_panels {
                    let epi = Epilogue {
                        load_c: accumulate || !first,
                        bias: bias
                            .filter(|_| first && !accumulate)
                            .map(|b| b[i * MR..].as_ptr()),
                        relu: relu && last,
                    };
                    let m_valid = (m - i * MR).min(MR);
                    // Rows past `m` repeat the last one; their results are not stored.
                    let ap = std::array::from_fn(|r| {
                        a[(i * MR + r.min(m_valid - 1)) * kp + k0..].as_ptr()
                    });
                    // SAFETY: rows of `a` hold `kp ≥ k0 + kc` pairs (asserted above), the `B`
                    // panel was sliced to its full size; the `C` block at (i·MR, j·NR) lies in
                    // the caller's `m × n` block.
                    unsafe {
                        let bp = b_panel.as_ptr();
                        let cp = c.add(i * MR * ldc + j * NR);
                        match width / 16 {
                            1 => micro::<1>(kc, ap, bp, cp, ldc, m_valid, n_valid, epi),
                            2 => micro::<2>(kc, ap, bp, cp, ldc, m_valid, n_valid, epi),
                            _ => micro::<NV>(kc, ap, bp, cp, ldc, m_valid, n_valid, epi),
                        }
                    }
                }
            }
        }
    }

    /// Writes a 16-row product `p` (row stride `pw`) into `C` with the epilogue, columns
    /// `..n_valid`.
    ///
    /// # Safety
    /// `c` must address 16 rows of `n_valid` floats at stride `ldc`, written by no one else
    /// meanwhile; `epi.bias`, if any, 16 floats.
    #[target_feature(enable = "avx512f")]
    unsafe fn store_product(
        p: &[f32],
        pw: usize,
        c: *mut f32,
        ldc: usize,
        n_valid: usize,
        epi: Epilogue,
    ) {
        for i in 0..16 {
            for l in (0..n_valid).step_by(16) {
                let lanes = (n_valid - l).min(16);
                let mask = (u32::MAX >> (32 - lanes)) as __mmask16;
                // SAFETY: lanes `< lanes` of this row lie in the block (caller's contract);
                // `p` holds 16 rows of `pw ≥ n_valid` floats.
                unsafe {
                    let r = _mm512_loadu_ps(p.as_ptr().add(i * pw + l));
                    epi.store(r, c.add(i * ldc + l), mask, i);
                }
            }
        }
    }

    /// Where the im2col tile of output `rows` reads one image `[cin, h, w]`: im2col row
    /// `r = (ci, ky, kx)` at tile pixel `q` is `x_img[base(r) + q]`, except where that crosses a
    /// row or the image border (the zero padding). `masks[(ky·k + kx) · blocks + c]` keeps the
    /// lanes of pixels `16c..16c + 16` that read inside the image (and lie in the tile).
    struct Taps {
        masks: Vec<__mmask16>,
        blocks: usize,
        rows: Range<usize>,
    }

    impl Taps {
        fn new(s: &ConvShape, rows: &Range<usize>) -> Self {
            let (k, p, w) = (s.k, s.k / 2, s.w);
            let blocks = (rows.len() * w).div_ceil(16);
            let mut masks = vec![0; k * k * blocks];
            for (tap, masks) in masks.chunks_exact_mut(blocks).enumerate() {
                let (ky, kx) = (tap / k, tap % k);
                // Output columns whose input column `x + kx - p` lies in the row.
                let xs = p.saturating_sub(kx)..(w + p).saturating_sub(kx).min(w);
                for (yi, y) in rows.clone().enumerate() {
                    if (y + ky).checked_sub(p).is_some_and(|sy| sy < s.h) {
                        set_lanes(masks, yi * w + xs.start..yi * w + xs.end);
                    }
                }
            }
            Taps {
                masks,
                blocks,
                rows: rows.clone(),
            }
        }

        /// `(base(r), mask row)` of im2col row `r`, `None` for `r ≥ kk` (a zero row).
        fn of(&self, s: &ConvShape, r: usize) -> Option<(isize, usize)> {
            let (k, p) = (s.k, (s.k / 2) as isize);
            let (ci, ky, kx) = (r / (k * k), (r / k) % k, r % k);
            let top = (self.rows.start + ky) as isize - p;
            let base = (ci * s.h) as isize * s.w as isize + top * s.w as isize + kx as isize - p;
            (r < s.kk()).then_some((base, (ky * k + kx) * self.blocks))
        }

        /// Starts fetching channel `ci`'s input rows of the tile (a contiguous band): the taps
        /// read short pieces of many rows at once, which the hardware prefetchers miss.
        #[target_feature(enable = "avx512f")]
        fn prefetch(&self, x_img: &[f32], s: &ConvShape, ci: usize) {
            if ci >= s.cin {
                return;
            }
            let p = s.k / 2;
            let top = self.rows.start.saturating_sub(p);
            let bottom = (self.rows.end + p).min(s.h);
            let band = &x_img[(ci * s.h + top) * s.w..(ci * s.h + bottom) * s.w];
            for line in band.chunks(16) {
                _mm_prefetch::<_MM_HINT_T0>(line.as_ptr().cast());
            }
        }

        /// Tile pixels `16c..16c + 16` of the im2col row located by [`Taps::of`].
        #[target_feature(enable = "avx512f")]
        fn load(&self, x_img: &[f32], tap: Option<(isize, usize)>, c: usize) -> __m512 {
            match tap {
                Some((base, row)) if c < self.blocks => {
                    let mask = self.masks[row + c];
                    let at = x_img.as_ptr().wrapping_offset(base + 16 * c as isize);
                    // SAFETY: the mask keeps only lanes whose source pixel lies inside the image,
                    // i.e. inside `x_img`; the others are not accessed, so `at` may lie outside.
                    unsafe { _mm512_maskz_loadu_ps(mask, at) }
                }
                _ => _mm512_setzero_ps(),
            }
        }
    }

    /// Sets bits `q` of the 16-bit words `masks` for `q` in `range`.
    fn set_lanes(masks: &mut [__mmask16], range: Range<usize>) {
        let mut q = range.start;
        while q < range.end {
            let (word, lane) = (q / 16, q % 16);
            let n = (16 - lane).min(range.end - q);
            masks[word] |= (((1u32 << n) - 1) << lane) as __mmask16;
            q += n;
        }
    }

    /// Writes the im2col tile of one image for output `rows` as packed `B` (`k` = im2col rows,
    /// `n` = pixels): `[npix / NR][kp][NR]` pairs of neighbouring im2col rows.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    fn pack_cols(x_img: &[f32], s: &ConvShape, rows: &Range<usize>, b: &mut [u32]) {
        let kp = s.kk().div_ceil(2);
        let npix = rows.len() * s.w;
        let taps = Taps::new(s, rows);
        let k2 = s.k * s.k;
        taps.prefetch(x_img, s, 0);
        for rp in 0..kp {
            // Entering channel `ci`: fetch the next one.
            if (2 * rp) % k2 < 2 {
                taps.prefetch(x_img, s, 2 * rp / k2 + 1);
            }
            let (t0, t1) = (taps.of(s, 2 * rp), taps.of(s, 2 * rp + 1));
            for j in 0..npix.div_ceil(NR) {
                let width = panel_width(npix, j);
                let dst = &mut b[j * kp * NR + rp * width..][..width];
                for (v, dst) in dst.chunks_exact_mut(16).enumerate() {
                    let c = j * NV + v;
                    let pair = pairs_across(taps.load(x_img, t0, c), taps.load(x_img, t1, c));
                    // SAFETY: `dst` has room for 16 `u32`.
                    unsafe { _mm512_storeu_si512(dst.as_mut_ptr().cast(), pair) };
                }
            }
        }
    }

    /// Writes im2col rows `cols` of one image for output `rows`, transposed, as packed `B`
    /// (`k` = pixels, `n` = im2col rows): `[cols / NR][npix / 2][NR]` pairs of neighbouring
    /// pixels.
    #[target_feature(enable = "avx512f,avx512bf16")]
    fn pack_cols_t(
        x_img: &[f32],
        s: &ConvShape,
        rows: &Range<usize>,
        cols: &Range<usize>,
        b: &mut [u32],
    ) {
        let kp = (rows.len() * s.w).div_ceil(2);
        let taps = Taps::new(s, rows);
        let n = cols.len();
        for j in 0..n.div_ceil(NR) {
            let width = panel_width(n, j);
            for g in 0..width / 16 {
                let r0 = cols.start + j * NR + 16 * g;
                // This group reads up to two channels past its first; fetch the next two.
                let ci = r0 / (s.k * s.k);
                if j == 0 && g == 0 {
                    (ci..ci + 2).for_each(|c| taps.prefetch(x_img, s, c));
                }
                (ci + 2..ci + 4).for_each(|c| taps.prefetch(x_img, s, c));
                let rt: [_; 16] =
                    std::array::from_fn(|l| taps.of(s, r0 + l).filter(|_| r0 + l < cols.end));
                for t in 0..kp.div_ceil(16) {
                    let mut v = [_mm512_setzero_si512(); 16];
                    for (v, &tap) in v.iter_mut().zip(&rt) {
                        let lo = taps.load(x_img, tap, 2 * t);
                        let hi = taps.load(x_img, tap, 2 * t + 1);
                        *v = bits(_mm512_cvtne2ps_pbh(hi, lo));
                    }
                    for (c, v) in transpose16(v).into_iter().enumerate() {
                        let p = 16 * t + c;
                        if p >= kp {
                            break;
                        }
                        let dst = &mut b[j * kp * NR + p * width + 16 * g..][..16];
                        // SAFETY: `dst` has room for 16 `u32`.
                        unsafe { _mm512_storeu_si512(dst.as_mut_ptr().cast(), v) };
                    }
                }
            }
        }
    }

    /// [`super::matmul_bf16`] on AVX-512 BF16 (and AMX): `B` packed once, `A` per row block.
    ///
    /// # Safety
    /// The CPU must support AVX-512 F, BW and BF16.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub(super) unsafe fn matmul(
        (m, n, k): (usize, usize, usize),
        a: super::Mat,
        b: super::Mat,
        c: &mut [f32],
    ) {
        let kp = k.div_ceil(2);
        // B as [n / NR][kp][width] pairs of neighbouring rows.
        let n_panels = n.div_ceil(NR);
        let mut bp = vec![0u32; n_panels * NR * kp];
        let panel_len = |j: usize| kp * panel_width(n, j);
        let mut panels: Vec<&mut [u32]> = Vec::with_capacity(n_panels);
        let mut rest = &mut bp[..];
        for j in 0..n_panels {
            let (head, tail) = rest.split_at_mut(panel_len(j));
            panels.push(head);
            rest = tail;
        }
        panels.into_par_iter().enumerate().for_each(|(j, dst)| {
            let width = panel_width(n, j);
            let cols = j * NR..(j * NR + width).min(n);
            if b.rs == 1 {
                // Columns of `B` are contiguous (a weight read transposed): pair each column
                // along `k` at once, then scatter the pairs into the panel.
                let mut col_pairs = vec![0u32; kp];
                for (l, col) in cols.clone().enumerate() {
                    to_pairs(&b.data[col * b.cs..col * b.cs + k], &mut col_pairs);
                    for (p, &v) in col_pairs.iter().enumerate() {
                        dst[p * width + l] = v;
                    }
                }
                return;
            }
            let (mut lo, mut hi) = ([0.0f32; 16], [0.0f32; 16]);
            for p in 0..kp {
                for g in 0..width / 16 {
                    let c0 = j * NR + 16 * g;
                    let lanes = n.saturating_sub(c0).min(16);
                    let row = |r: usize, out: &mut [f32; 16]| {
                        out.fill(0.0);
                        if r < k {
                            if b.cs == 1 {
                                let start = r * b.rs + c0;
                                out[..lanes].copy_from_slice(&b.data[start..start + lanes]);
                            } else {
                                for (l, v) in out.iter_mut().enumerate().take(lanes) {
                                    *v = b.at(r, c0 + l);
                                }
                            }
                        }
                    };
                    row(2 * p, &mut lo);
                    row(2 * p + 1, &mut hi);
                    // SAFETY: `lo`/`hi` hold 16 floats; `dst` has room for this group.
                    unsafe {
                        let v = pairs_across(
                            _mm512_loadu_ps(lo.as_ptr()),
                            _mm512_loadu_ps(hi.as_ptr()),
                        );
                        _mm512_storeu_si512(dst[p * width + 16 * g..].as_mut_ptr().cast(), v);
                    }
                }
            }
        });
        let threads = rayon::current_num_threads().max(1);
        // Row blocks of whole AMX tiles where there are enough rows.
        let block = m.div_ceil(threads).next_multiple_of(16).max(16);
        c.par_chunks_mut(block * n)
            .enumerate()
            .for_each(|(t, c_rows)| {
                let rows = t * block..(t * block + c_rows.len() / n);
                let mut ap = vec![0u32; rows.len() * kp];
                let mut buf = vec![0.0f32; k];
                for (i, dst) in rows.clone().zip(ap.chunks_exact_mut(kp)) {
                    if a.cs == 1 {
                        to_pairs(&a.data[i * a.rs..i * a.rs + k], dst);
                        continue;
                    }
                    for (l, v) in buf.iter_mut().enumerate() {
                        *v = a.at(i, l);
                    }
                    to_pairs(&buf, dst);
                }
                // SAFETY: `c_rows` is this task's `rows × n` block (row stride `n`).
                unsafe {
                    gemm(
                        (rows.len(), n, kp),
                        &ap,
                        &bp,
                        c_rows.as_mut_ptr(),
                        n,
                        None,
                        false,
                        false,
                    );
                }
            });
    }

    /// See [`super::conv_forward_bf16`]; shapes checked there, `kk > 0`.
    ///
    /// # Safety
    /// The CPU must support AVX-512 F, BW and BF16.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub(super) unsafe fn conv_forward(
        x: &[f32],
        w: &[f32],
        bias: Option<&[f32]>,
        s: ConvShape,
        relu: bool,
        out: &mut [f32],
    ) {
        let kk = s.kk();
        let a = pack_a(s.cout, kk, |cos, buf| {
            buf.copy_from_slice(&w[cos.start * kk..cos.end * kk]);
        });
        forward_packed(x, &a, bias, s, relu, out);
    }

    /// See [`super::conv_input_grad_bf16`]; shapes checked there, `cout > 0`.
    ///
    /// # Safety
    /// As [`conv_forward`].
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub(super) unsafe fn conv_input_grad(dy: &[f32], w: &[f32], s: ConvShape, dx: &mut [f32]) {
        let k2 = s.k * s.k;
        let kk = s.cout * k2;
        // Row ci of A is `[cout, k, k]`, spatially flipped: the adjoint of a padded correlation.
        // A block of rows reads `w[co][cis]` contiguously.
        let a = pack_a(s.cin, kk, |cis, buf| {
            let block = |co: usize| &w[(co * s.cin + cis.start) * k2..(co * s.cin + cis.end) * k2];
            for co in 0..s.cout {
                let src = block(co);
                for (src, row) in src.chunks_exact(k2).zip(buf.chunks_exact_mut(kk)) {
                    cpu::copy_flipped(src, &mut row[co * k2..][..k2]);
                }
            }
        });
        forward_packed(dy, &a, None, s.adjoint(), false, dx);
    }

    /// Forward convolution with the weights already packed as `A`, over row tiles in parallel.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    fn forward_packed(
        x: &[f32],
        a: &PackedA,
        bias: Option<&[f32]>,
        s: ConvShape,
        relu: bool,
        out: &mut [f32],
    ) {
        let threads = rayon::current_num_threads().max(1);
        // The same tiles as the f32 kernel: its f32 im2col budget is our bf16 one twice over.
        let tiles = cpu::plan_tiles(&s, s.kk(), threads);
        let out = SyncPtr(out.as_mut_ptr());
        (0..threads).into_par_iter().for_each(|t| {
            let tiles = &tiles[cpu::share(tiles.len(), t, threads)];
            let max_pix = tiles.iter().map(|t| t.rows.len() * s.w).max().unwrap_or(0);
            let mut b = vec![0u32; max_pix.div_ceil(NR) * NR * a.kp];
            for tile in tiles {
                forward_tile(x, a, bias, &s, relu, tile, &mut b, out);
            }
        });
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    #[allow(clippy::too_many_arguments)]
    fn forward_tile(
        x: &[f32],
        a: &PackedA,
        bias: Option<&[f32]>,
        s: &ConvShape,
        relu: bool,
        tile: &Tile,
        b: &mut [u32],
        out: SyncPtr,
    ) {
        let hw = s.hw();
        let npix = tile.rows.len() * s.w;
        let p0 = tile.rows.start * s.w;
        let x_img = &x[tile.img * s.cin * hw..(tile.img + 1) * s.cin * hw];
        pack_cols(x_img, s, &tile.rows, b);
        // SAFETY: tiles are disjoint row ranges of distinct (image, rows) pairs, so this tile's
        // `[cout, npix]` block of `out` (row stride `hw`) is written by this task alone, and it
        // lies inside `out`, whose length the caller checked.
        unsafe {
            let dst = out.0.add(tile.img * s.cout * hw + p0);
            gemm((s.cout, npix, a.kp), &a.data, b, dst, hw, bias, relu, false);
        }
    }

    /// See [`super::conv_weight_grad_bf16`]; shapes checked there, `dw` and the pixels
    /// non-empty.
    ///
    /// # Safety
    /// As [`conv_forward`].
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub(super) unsafe fn conv_weight_grad(
        x: &[f32],
        dy: &[f32],
        s: ConvShape,
        dw: &mut [f32],
        dbias: Option<&mut [f32]>,
    ) {
        let (hw, kk) = (s.hw(), s.kk());
        let n_panels = kk.div_ceil(NR);
        let tasks = rayon::current_num_threads().clamp(1, n_panels);
        // Pixel chunks whose transposed im2col share per task is about the f32 kernel's budget.
        let chunks = cpu::plan_tiles(&s, kk.div_ceil(2 * tasks), 1);
        let dw_ptr = SyncPtr(dw.as_mut_ptr());
        (0..tasks).into_par_iter().for_each(|t| {
            let dw = dw_ptr;
            let panels = cpu::share(n_panels, t, tasks);
            let cols = panels.start * NR..(panels.end * NR).min(kk);
            let max_kp = chunks
                .iter()
                .map(|c| (c.rows.len() * s.w).div_ceil(2))
                .max()
                .unwrap_or(0);
            let mut a = vec![0u32; s.cout * max_kp];
            let mut b = vec![0u32; panels.len() * NR * max_kp];
            for (i, chunk) in chunks.iter().enumerate() {
                let npix = chunk.rows.len() * s.w;
                let p0 = chunk.rows.start * s.w;
                let x_img = &x[chunk.img * s.cin * hw..][..s.cin * hw];
                let dy_img = &dy[chunk.img * s.cout * hw..][..s.cout * hw];
                let kp = npix.div_ceil(2);
                for (co, a) in a.chunks_exact_mut(kp).take(s.cout).enumerate() {
                    to_pairs(&dy_img[co * hw + p0..][..npix], a);
                }
                pack_cols_t(x_img, &s, &chunk.rows, &cols, &mut b);
                // SAFETY: columns `cols` of `dw: [cout, kk]` belong to this task alone.
                unsafe {
                    let dst = dw.0.add(cols.start);
                    gemm(
                        (s.cout, cols.len(), kp),
                        &a,
                        &b,
                        dst,
                        kk,
                        None,
                        false,
                        i > 0,
                    );
                }
            }
        });
        if let Some(db) = dbias {
            db.par_iter_mut().enumerate().for_each(|(co, d)| {
                let planes = (0..s.b).map(|i| &dy[(i * s.cout + co) * hw..][..hw]);
                *d = planes.map(cpu::sum_f64).sum::<f64>() as f32;
            });
        }
    }
}

#[cfg(test)]
mod tests;
