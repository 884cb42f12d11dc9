//! Intel AMX tiles for the bf16 GEMM of [`super::bf16`]: one `TDPBF16PS` multiplies a 16 × 32
//! bf16 tile of `A` by a 32 × 16 tile of `B` into 16 × 16 f32, sixteen times the work of one
//! AVX-512 `VDPBF16PS`. The operands are the ones `bf16` packs already: `A` rows of `u32` bf16
//! pairs along `k`, and `B` panels of pairs of neighbouring `k` rows (AMX's "VNNI" layout), so a
//! tile is a strided load of either.
//!
//! Used only where the CPU reports AMX-TILE and AMX-BF16 *and* Linux grants the process the
//! tile state (`arch_prctl(ARCH_REQ_XCOMP_PERM)`); `RECLMIS_AMX=0` turns it off. Every thread
//! loads the one tile configuration (all eight tiles 16 rows × 64 bytes) before its first use.

use std::arch::asm;
use std::cell::Cell;
use std::sync::OnceLock;

/// Pairs of `k` per tile: 16 `u32` = 32 bf16 = 64 bytes per row.
pub const KT: usize = 16;

/// Whether the bf16 GEMM runs on AMX tiles on this machine (decided once per process).
pub fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        std::env::var("RECLMIS_AMX").as_deref() != Ok("0") && cpu_has_amx() && request_tiles()
    })
}

fn cpu_has_amx() -> bool {
    // CPUID leaf 7, sub-leaf 0: EDX bit 22 = AMX-BF16, bit 24 = AMX-TILE.
    let r = std::arch::x86_64::__cpuid_count(7, 0);
    r.edx & (1 << 22) != 0 && r.edx & (1 << 24) != 0
}

/// Asks Linux for the AMX tile state (XTILEDATA, feature 18) for this process.
fn request_tiles() -> bool {
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: a plain system call with integer arguments; failure is reported, not undefined.
    unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        ) == 0
    }
}

thread_local! {
    static CONFIGURED: Cell<bool> = const { Cell::new(false) };
}

/// Loads the tile configuration on this thread (once).
///
/// # Safety
/// Only where [`available`] is true.
unsafe fn configure() {
    if CONFIGURED.get() {
        return;
    }
    // Palette 1; bytes 16..48 are the 16 tiles' bytes per row (u16), 48..64 their rows.
    let mut cfg = [0u8; 64];
    cfg[0] = 1;
    for t in 0..8 {
        cfg[16 + 2 * t..18 + 2 * t].copy_from_slice(&64u16.to_le_bytes());
        cfg[48 + t] = 16;
    }
    // SAFETY: `cfg` is a valid 64-byte palette-1 configuration; AMX is enabled (caller).
    unsafe { asm!("ldtilecfg [{}]", in(reg) cfg.as_ptr(), options(nostack, readonly)) };
    CONFIGURED.set(true);
}

/// `out[16][16·V] = A · B` over `kc` pairs (a multiple of [`KT`]), where `A` is 16 rows of pairs
/// with row stride `lda` (in `u32`) and `B` is `[kc][width]` pairs (`width ≥ 16·V`).
///
/// # Safety
/// [`available`] must be true; `a` must address 16 rows of `kc` pairs at stride `lda`, `b` the
/// `kc × width` panel.
#[allow(clippy::needless_range_loop)]
pub unsafe fn block<const V: usize>(
    kc: usize,
    a: *const u32,
    lda: usize,
    b: *const u32,
    width: usize,
    out: &mut [f32],
) {
    debug_assert!(kc.is_multiple_of(KT) && (1..=3).contains(&V) && out.len() >= 16 * 16 * V);
    let (sa, sb, so) = (4 * lda, 4 * width, 4 * 16 * V);
    // SAFETY: AMX is available (caller); every tile load reads 16 rows of 64 bytes inside the
    // operands described by the caller, and every store writes 16 rows of 64 bytes of `out`.
    unsafe {
        configure();
        asm!(
            "tilezero tmm0",
            "tilezero tmm1",
            "tilezero tmm2",
            options(nostack, nomem)
        );
        for t in (0..kc).step_by(KT) {
            let (pa, pb) = (a.add(t), b.add(t * width));
            asm!("tileloadd tmm4, [{p} + {s}*1]", p = in(reg) pa, s = in(reg) sa, options(nostack, readonly));
            asm!("tileloadd tmm5, [{p} + {s}*1]", p = in(reg) pb, s = in(reg) sb, options(nostack, readonly));
            asm!("tdpbf16ps tmm0, tmm4, tmm5", options(nostack, nomem));
            if V > 1 {
                asm!("tileloadd tmm6, [{p} + {s}*1]", p = in(reg) pb.add(16), s = in(reg) sb, options(nostack, readonly));
                asm!("tdpbf16ps tmm1, tmm4, tmm6", options(nostack, nomem));
            }
            if V > 2 {
                asm!("tileloadd tmm7, [{p} + {s}*1]", p = in(reg) pb.add(32), s = in(reg) sb, options(nostack, readonly));
                asm!("tdpbf16ps tmm2, tmm4, tmm7", options(nostack, nomem));
            }
        }
        let o = out.as_mut_ptr();
        asm!("tilestored [{p} + {s}*1], tmm0", p = in(reg) o, s = in(reg) so, options(nostack));
        if V > 1 {
            asm!("tilestored [{p} + {s}*1], tmm1", p = in(reg) o.add(16), s = in(reg) so, options(nostack));
        }
        if V > 2 {
            asm!("tilestored [{p} + {s}*1], tmm2", p = in(reg) o.add(32), s = in(reg) so, options(nostack));
        }
    }
}
