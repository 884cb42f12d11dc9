//! `y = x · wᵀ` for a `Linear` layer applied to few rows (a note's tokens at inference, or the
//! frozen text tower's), streaming the weight once instead of packing it.
//!
//! A general gemm repacks the whole weight into panels on every call. With a handful of rows
//! that copy is as large as the product itself: the text tower's 12 layers have 37 M weights
//! and see 18 rows per note, so packing took most of its time. Here each block of `JB` weight
//! rows is read straight from memory once and multiplied against all rows of `x` (which stay in
//! L1), `R` rows at a time in `R·JB` accumulator registers, reduced across lanes at the end.

// The register block is indexed by (row, column) as the product is.
#![allow(clippy::needless_range_loop)]

use std::ops::Range;

use rayon::prelude::*;

use super::cpu::SyncPtr;
#[cfg(target_arch = "x86_64")]
use super::simd::{Avx2, Avx512};
use super::simd::{Isa, Portable, Simd, isa};

/// Most rows for which [`linear`] beats packing the weight (measured on the text tower: 18 and
/// 72 rows; at a few hundred rows the gemm's register blocking wins).
pub const MAX_ROWS: usize = 128;

/// Weight rows per parallel job.
const JOB_COLS: usize = 64;

/// `y [rows, dout] = x [rows, din] · w [dout, din]ᵀ`, overwriting `y`.
pub fn linear(x: &[f32], rows: usize, din: usize, w: &[f32], dout: usize, y: &mut [f32]) {
    linear_with(isa(), x, rows, din, w, dout, y);
}

/// [`linear`] with the instruction set `isa`, which the CPU must have ([`super::simd::isas`]).
pub(crate) fn linear_with(
    isa: Isa,
    x: &[f32],
    rows: usize,
    din: usize,
    w: &[f32],
    dout: usize,
    y: &mut [f32],
) {
    assert_eq!(x.len(), rows * din, "linear: input is not [{rows}, {din}]");
    assert_eq!(w.len(), dout * din, "linear: weight is not [{dout}, {din}]");
    assert_eq!(
        y.len(),
        rows * dout,
        "linear: output is not [{rows}, {dout}]"
    );
    if y.is_empty() {
        return;
    }
    let yp = SyncPtr(y.as_mut_ptr());
    let p = Problem {
        x,
        rows,
        din,
        w,
        dout,
    };
    let jobs = dout.div_ceil(JOB_COLS);
    (0..jobs).into_par_iter().for_each(|j| {
        let cols = j * JOB_COLS..((j + 1) * JOB_COLS).min(dout);
        // SAFETY: each job writes only columns `cols` of `y` (see `columns`); `isa` is one the
        // CPU has (the caller's contract).
        unsafe {
            match isa {
                #[cfg(target_arch = "x86_64")]
                Isa::Avx512 => avx512(&p, cols, yp),
                #[cfg(target_arch = "x86_64")]
                Isa::Avx2 => avx2(&p, cols, yp),
                Isa::Portable => columns::<Portable, 2, 2>(&p, cols, yp),
            }
        }
    });
}

struct Problem<'a> {
    x: &'a [f32],
    rows: usize,
    din: usize,
    w: &'a [f32],
    dout: usize,
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
unsafe fn avx512(p: &Problem, cols: Range<usize>, y: SyncPtr) {
    // SAFETY: forwarded.
    unsafe { columns::<Avx512, 6, 4>(p, cols, y) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn avx2(p: &Problem, cols: Range<usize>, y: SyncPtr) {
    // SAFETY: forwarded.
    unsafe { columns::<Avx2, 3, 3>(p, cols, y) }
}

/// Output columns `cols` of every row.
///
/// # Safety
/// No one else writes those columns of `y` meanwhile; the CPU has `S`'s instruction set.
#[inline(always)]
unsafe fn columns<S: Simd, const R: usize, const JB: usize>(
    p: &Problem,
    cols: Range<usize>,
    y: SyncPtr,
) {
    let mut j = cols.start;
    while j < cols.end {
        let nj = JB.min(cols.end - j);
        let mut r = 0;
        while r < p.rows {
            let nr = R.min(p.rows - r);
            // SAFETY: forwarded; the block lies inside `x`, `w` and `y`.
            unsafe {
                if nr == R && nj == JB {
                    block::<S, R, JB>(p, r, j, y);
                } else {
                    block_edge(p, r..r + nr, j..j + nj, y);
                }
            }
            r += nr;
        }
        j += nj;
    }
}

/// `y[r0..r0+R][j0..j0+JB]`, vectorised along `din`.
///
/// # Safety
/// As [`columns`]; rows `r0..r0+R` and columns `j0..j0+JB` exist.
#[inline(always)]
unsafe fn block<S: Simd, const R: usize, const JB: usize>(
    p: &Problem,
    r0: usize,
    j0: usize,
    y: SyncPtr,
) {
    let din = p.din;
    let full = din - din % S::L;
    // SAFETY: every load reads `L` floats below `full ≤ din` of a row inside `x` or `w`; the
    // stores write this block of `y` only.
    unsafe {
        let (xp, wp) = (p.x.as_ptr().add(r0 * din), p.w.as_ptr().add(j0 * din));
        let mut acc = [[S::splat(0.0); JB]; R];
        let mut k = 0;
        while k < full {
            let wv: [S::V; JB] = std::array::from_fn(|q| S::load(wp.add(q * din + k)));
            for r in 0..R {
                let xv = S::load(xp.add(r * din + k));
                for q in 0..JB {
                    acc[r][q] = S::madd(xv, wv[q], acc[r][q]);
                }
            }
            k += S::L;
        }
        for r in 0..R {
            for q in 0..JB {
                let mut sum = S::hsum(acc[r][q]);
                for k in full..din {
                    sum += *xp.add(r * din + k) * *wp.add(q * din + k);
                }
                *y.at((r0 + r) * p.dout + j0 + q) = sum;
            }
        }
    }
}

/// The ragged edge of the block grid, one dot product at a time.
///
/// # Safety
/// As [`columns`].
unsafe fn block_edge(p: &Problem, rows: Range<usize>, cols: Range<usize>, y: SyncPtr) {
    for r in rows {
        let xr = &p.x[r * p.din..][..p.din];
        for j in cols.clone() {
            let wr = &p.w[j * p.din..][..p.din];
            let sum: f32 = xr.iter().zip(wr).map(|(a, b)| a * b).sum();
            // SAFETY: (r, j) is inside `y` and in this job's columns.
            unsafe { *y.at(r * p.dout + j) = sum };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::simd::isas;
    use crate::kernels::test_util::{rand_vec, rel_err};

    /// Every instruction set, with row and column counts that fill no register block evenly and
    /// a `din` that is not a multiple of the vector width.
    #[test]
    fn every_instruction_set_matches_the_definition() {
        for (rows, din, dout) in [(18, 512, 2048), (7, 37, 70), (1, 16, 3), (13, 9, 130)] {
            let x = rand_vec(rows * din, 1);
            let w = rand_vec(dout * din, 2);
            let want: Vec<f64> = (0..rows * dout)
                .map(|i| {
                    let (r, j) = (i / dout, i % dout);
                    (0..din)
                        .map(|k| f64::from(x[r * din + k]) * f64::from(w[j * din + k]))
                        .sum()
                })
                .collect();
            for isa in isas() {
                let mut y = vec![f32::NAN; rows * dout];
                linear_with(isa, &x, rows, din, &w, dout, &mut y);
                let e = rel_err(&y, &want);
                assert!(
                    e <= 1e-6,
                    "{isa:?} [{rows}, {din}] x [{dout}, {din}]ᵀ: {e:.2e}"
                );
            }
        }
    }
}
