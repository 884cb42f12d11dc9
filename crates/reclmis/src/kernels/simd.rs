//! The few SIMD operations the hand-written kernels share, over `L` lanes of f32, for each
//! instruction set the CPU may have: AVX-512 (16 lanes), AVX2 with FMA (8 lanes), or plain
//! arrays. Kernels are written once, generic over [`Simd`], and entered through a function
//! compiled with the matching `target_feature` after run-time detection ([`isa`]).

use std::sync::OnceLock;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Isa {
    #[cfg(target_arch = "x86_64")]
    Avx512,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    Portable,
}

impl Isa {
    /// f32 lanes of one vector ([`Simd::L`] of the matching implementation).
    pub(crate) const fn lanes(self) -> usize {
        match self {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => Avx512::L,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => Avx2::L,
            Isa::Portable => Portable::L,
        }
    }
}

/// The instruction sets this CPU can run, best first.
pub(crate) fn isas() -> Vec<Isa> {
    let mut v = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("fma") {
            v.push(Isa::Avx512);
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            v.push(Isa::Avx2);
        }
    }
    v.push(Isa::Portable);
    v
}

/// The instruction set the kernels use: the best this CPU has, or a lower one named by
/// `RECLMIS_ISA` (`avx2` or `portable`), to time or test another machine's path on this one.
/// A name the CPU cannot run, or an unknown one, is ignored.
pub(crate) fn isa() -> Isa {
    static ISA: OnceLock<Isa> = OnceLock::new();
    *ISA.get_or_init(|| {
        let have = isas();
        let wanted = match std::env::var("RECLMIS_ISA").as_deref() {
            #[cfg(target_arch = "x86_64")]
            Ok("avx2") => Some(Isa::Avx2),
            Ok("portable") => Some(Isa::Portable),
            _ => None,
        };
        wanted.filter(|w| have.contains(w)).unwrap_or(have[0])
    })
}

/// The name [`isa`] goes by in reports.
pub(crate) fn isa_name() -> &'static str {
    match isa() {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => "avx512f",
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => "avx2+fma",
        Isa::Portable => "portable",
    }
}

/// `N` vectors from `p`, `stride` floats apart.
///
/// The kernels build their arrays of vectors with this and [`column`], not with closures
/// (`std::array::from_fn`): a closure is a function of its own without the caller's
/// `target_feature`s, so where the inliner leaves one behind a call, every intrinsic in it
/// becomes a call too (a Winograd band ran 20 % slower after an unrelated change moved code
/// around).
///
/// # Safety
/// The `N` vectors lie inside one allocation; the CPU has `S`'s instruction set.
#[inline(always)]
pub(crate) unsafe fn load_n<S: Simd, const N: usize>(p: *const f32, stride: usize) -> [S::V; N] {
    // SAFETY: the caller's contract.
    unsafe {
        let mut a = [S::splat(0.0); N];
        for (i, v) in a.iter_mut().enumerate() {
            *v = S::load(p.add(i * stride));
        }
        a
    }
}

/// Element `i` of each of the `M` arrays: a column of a matrix stored as rows.
#[inline(always)]
pub(crate) fn column<T: Copy, const N: usize, const M: usize>(
    rows: &[[T; N]; M],
    i: usize,
) -> [T; M] {
    let mut a = [rows[0][i]; M];
    for (v, row) in a.iter_mut().zip(rows).skip(1) {
        *v = row[i];
    }
    a
}

/// The few vector operations the kernel needs, over `L` lanes of f32.
///
/// # Safety
/// Every method may only run on a CPU with the instruction set of its implementation (kernels
/// reach them through feature-enabled entry points, after run-time detection); pointers must
/// address `L` readable (or writable) floats.
pub(crate) trait Simd: Copy {
    const ISA: Isa;
    const L: usize;
    type V: Copy;
    unsafe fn splat(v: f32) -> Self::V;
    unsafe fn load(p: *const f32) -> Self::V;
    unsafe fn store(p: *mut f32, v: Self::V);
    unsafe fn add(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn sub(a: Self::V, b: Self::V) -> Self::V;
    /// `a · b + c`, fused where the instruction set has FMA.
    unsafe fn madd(a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    unsafe fn max(a: Self::V, b: Self::V) -> Self::V;
    /// The sum of the `L` lanes, as a tree of pairwise sums (not one long chain of additions:
    /// a dot product's reduction then costs a few instructions, not `L` dependent ones).
    unsafe fn hsum(v: Self::V) -> f32;
    /// Copies the `L×L` block of `L` rows of `L` floats at `src` (row stride `src_rs`) to `dst`
    /// transposed (row stride `dst_rs`).
    unsafe fn transpose(src: *const f32, src_rs: usize, dst: *mut f32, dst_rs: usize) {
        for i in 0..Self::L {
            for j in 0..Self::L {
                // SAFETY: the caller's contract: both blocks lie inside their buffers.
                unsafe { *dst.add(j * dst_rs + i) = *src.add(i * src_rs + j) };
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
pub(crate) struct Avx512;

#[cfg(target_arch = "x86_64")]
impl Simd for Avx512 {
    const ISA: Isa = Isa::Avx512;
    const L: usize = 16;
    type V = std::arch::x86_64::__m512;
    #[inline(always)]
    unsafe fn splat(v: f32) -> Self::V {
        unsafe { std::arch::x86_64::_mm512_set1_ps(v) }
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self::V {
        unsafe { std::arch::x86_64::_mm512_loadu_ps(p) }
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: Self::V) {
        unsafe { std::arch::x86_64::_mm512_storeu_ps(p, v) }
    }
    #[inline(always)]
    unsafe fn add(a: Self::V, b: Self::V) -> Self::V {
        unsafe { std::arch::x86_64::_mm512_add_ps(a, b) }
    }
    #[inline(always)]
    unsafe fn sub(a: Self::V, b: Self::V) -> Self::V {
        unsafe { std::arch::x86_64::_mm512_sub_ps(a, b) }
    }
    #[inline(always)]
    unsafe fn madd(a: Self::V, b: Self::V, c: Self::V) -> Self::V {
        unsafe { std::arch::x86_64::_mm512_fmadd_ps(a, b, c) }
    }
    #[inline(always)]
    unsafe fn max(a: Self::V, b: Self::V) -> Self::V {
        unsafe { std::arch::x86_64::_mm512_max_ps(a, b) }
    }
    #[inline(always)]
    unsafe fn hsum(v: Self::V) -> f32 {
        unsafe { std::arch::x86_64::_mm512_reduce_add_ps(v) }
    }
    /// Three rounds of interleaves (32-bit, 64-bit, then 128-bit lanes twice).
    #[inline(always)]
    unsafe fn transpose(src: *const f32, src_rs: usize, dst: *mut f32, dst_rs: usize) {
        use std::arch::x86_64::*;
        // SAFETY: the caller's contract.
        unsafe {
            let r: [__m512; 16] = std::array::from_fn(|i| _mm512_loadu_ps(src.add(i * src_rs)));
            // t[2i], t[2i+1]: rows 2i and 2i+1 interleaved, low and high pairs of each 128-bit lane.
            let mut t = r;
            for i in 0..8 {
                t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
                t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
            }
            // u[4i + j], 128-bit lane k: column 4k + j of rows 4i..4i+4.
            let mut u = t;
            for i in 0..4 {
                let d = |v: __m512| _mm512_castps_pd(v);
                let (a, b, c, e) = (t[4 * i], t[4 * i + 1], t[4 * i + 2], t[4 * i + 3]);
                u[4 * i] = _mm512_castpd_ps(_mm512_unpacklo_pd(d(a), d(c)));
                u[4 * i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(d(a), d(c)));
                u[4 * i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(d(b), d(e)));
                u[4 * i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(d(b), d(e)));
            }
            for j in 0..4 {
                let lo01 = _mm512_shuffle_f32x4::<0x44>(u[j], u[4 + j]);
                let hi01 = _mm512_shuffle_f32x4::<0xEE>(u[j], u[4 + j]);
                let lo23 = _mm512_shuffle_f32x4::<0x44>(u[8 + j], u[12 + j]);
                let hi23 = _mm512_shuffle_f32x4::<0xEE>(u[8 + j], u[12 + j]);
                let out = [
                    _mm512_shuffle_f32x4::<0x88>(lo01, lo23),
                    _mm512_shuffle_f32x4::<0xDD>(lo01, lo23),
                    _mm512_shuffle_f32x4::<0x88>(hi01, hi23),
                    _mm512_shuffle_f32x4::<0xDD>(hi01, hi23),
                ];
                for (k, v) in out.into_iter().enumerate() {
                    _mm512_storeu_ps(dst.add((4 * k + j) * dst_rs), v);
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
pub(crate) struct Avx2;

#[cfg(target_arch = "x86_64")]
impl Simd for Avx2 {
    const ISA: Isa = Isa::Avx2;
    const L: usize = 8;
    type V = std::arch::x86_64::__m256;
    #[inline(always)]
    unsafe fn splat(v: f32) -> Self::V {
        unsafe { std::arch::x86_64::_mm256_set1_ps(v) }
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self::V {
        unsafe { std::arch::x86_64::_mm256_loadu_ps(p) }
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: Self::V) {
        unsafe { std::arch::x86_64::_mm256_storeu_ps(p, v) }
    }
    #[inline(always)]
    unsafe fn add(a: Self::V, b: Self::V) -> Self::V {
        unsafe { std::arch::x86_64::_mm256_add_ps(a, b) }
    }
    #[inline(always)]
    unsafe fn sub(a: Self::V, b: Self::V) -> Self::V {
        unsafe { std::arch::x86_64::_mm256_sub_ps(a, b) }
    }
    #[inline(always)]
    unsafe fn madd(a: Self::V, b: Self::V, c: Self::V) -> Self::V {
        unsafe { std::arch::x86_64::_mm256_fmadd_ps(a, b, c) }
    }
    #[inline(always)]
    unsafe fn max(a: Self::V, b: Self::V) -> Self::V {
        unsafe { std::arch::x86_64::_mm256_max_ps(a, b) }
    }
    /// Halves added three times: 256 → 128 → 64 → 32 bits.
    #[inline(always)]
    unsafe fn hsum(v: Self::V) -> f32 {
        use std::arch::x86_64::*;
        unsafe {
            let q = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
            let d = _mm_add_ps(q, _mm_movehl_ps(q, q));
            _mm_cvtss_f32(_mm_add_ss(d, _mm_movehdup_ps(d)))
        }
    }
    /// Interleaves (32-bit, then 64-bit), then 128-bit halves.
    #[inline(always)]
    unsafe fn transpose(src: *const f32, src_rs: usize, dst: *mut f32, dst_rs: usize) {
        use std::arch::x86_64::*;
        // SAFETY: the caller's contract.
        unsafe {
            let r: [__m256; 8] = std::array::from_fn(|i| _mm256_loadu_ps(src.add(i * src_rs)));
            let mut t = r;
            for i in 0..4 {
                t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
                t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
            }
            // s[4h + j], 128-bit lane k: column 4k + j of rows 4h..4h+4.
            let mut s = t;
            for h in 0..2 {
                let (a, b, c, d) = (t[4 * h], t[4 * h + 1], t[4 * h + 2], t[4 * h + 3]);
                s[4 * h] = _mm256_shuffle_ps::<0x44>(a, c);
                s[4 * h + 1] = _mm256_shuffle_ps::<0xEE>(a, c);
                s[4 * h + 2] = _mm256_shuffle_ps::<0x44>(b, d);
                s[4 * h + 3] = _mm256_shuffle_ps::<0xEE>(b, d);
            }
            for j in 0..4 {
                let lo = _mm256_permute2f128_ps::<0x20>(s[j], s[4 + j]);
                let hi = _mm256_permute2f128_ps::<0x31>(s[j], s[4 + j]);
                _mm256_storeu_ps(dst.add(j * dst_rs), lo);
                _mm256_storeu_ps(dst.add((4 + j) * dst_rs), hi);
            }
        }
    }
}

/// Plain arrays, for CPUs without either instruction set.
#[derive(Clone, Copy)]
pub(crate) struct Portable;

impl Simd for Portable {
    const ISA: Isa = Isa::Portable;
    const L: usize = 8;
    type V = [f32; 8];
    #[inline(always)]
    unsafe fn splat(v: f32) -> Self::V {
        [v; 8]
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self::V {
        // SAFETY: the caller's contract: `p` addresses 8 floats.
        unsafe { p.cast::<[f32; 8]>().read_unaligned() }
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: Self::V) {
        // SAFETY: as `load`.
        unsafe { p.cast::<[f32; 8]>().write_unaligned(v) }
    }
    #[inline(always)]
    unsafe fn add(a: Self::V, b: Self::V) -> Self::V {
        std::array::from_fn(|l| a[l] + b[l])
    }
    #[inline(always)]
    unsafe fn sub(a: Self::V, b: Self::V) -> Self::V {
        std::array::from_fn(|l| a[l] - b[l])
    }
    #[inline(always)]
    unsafe fn madd(a: Self::V, b: Self::V, c: Self::V) -> Self::V {
        std::array::from_fn(|l| a[l] * b[l] + c[l])
    }
    #[inline(always)]
    unsafe fn max(a: Self::V, b: Self::V) -> Self::V {
        std::array::from_fn(|l| a[l].max(b[l]))
    }
    #[inline(always)]
    unsafe fn hsum(v: Self::V) -> f32 {
        let q: [f32; 4] = std::array::from_fn(|l| v[l] + v[l + 4]);
        (q[0] + q[2]) + (q[1] + q[3])
    }
}
