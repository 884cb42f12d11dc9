use super::*;
use crate::kernels::test_util::{in_pools, rand_vec, rel_err};

/// Round to nearest even bf16, independently of the kernels' conversion instruction.
fn round_bf16(v: &[f32]) -> Vec<f32> {
    v.iter()
        .map(|&x| half::bf16::from_f32(x).to_f32())
        .collect()
}

const OUTPUTS: [&str; 6] = ["fwd+bias", "fwd+bias+relu", "fwd", "dx", "dw", "dbias"];

/// All outputs of one kernel family on `(x, w, bias, dy)`, in [`OUTPUTS`] order.
fn outputs(bf16: bool, s: ConvShape, [x, w, bias, dy]: &[Vec<f32>; 4]) -> [Vec<f32>; 6] {
    let mut o: [Vec<f32>; 6] = Default::default();
    for (out, (b, relu)) in o.iter_mut().zip([
        (Some(&bias[..]), false),
        (Some(&bias[..]), true),
        (None, false),
    ]) {
        *out = vec![f32::NAN; dy.len()];
        if bf16 {
            conv_forward_bf16(x, w, b, s, relu, out);
        } else {
            cpu::conv_forward(x, w, b, s, relu, out);
        }
    }
    let [dx, dw, db] = &mut o[3..] else {
        unreachable!("six outputs")
    };
    *dx = vec![f32::NAN; x.len()];
    *dw = vec![f32::NAN; w.len()];
    *db = vec![f32::NAN; s.cout];
    if bf16 {
        conv_input_grad_bf16(dy, w, s, dx);
        conv_weight_grad_bf16(x, dy, s, dw, Some(db));
    } else {
        cpu::conv_input_grad(dy, w, s, dx);
        cpu::conv_weight_grad(x, dy, s, dw, Some(db));
    }
    o
}

fn inputs(s: ConvShape) -> [Vec<f32>; 4] {
    [
        rand_vec(s.b * s.cin * s.hw(), 1),
        rand_vec(s.cout * s.kk(), 2),
        rand_vec(s.cout, 3),
        rand_vec(s.b * s.cout * s.hw(), 4),
    ]
}

/// Checks one shape: within bf16 precision of the f32 kernels on the same inputs, and (with
/// bf16 hardware) within f32 summation noise of the f32 kernels on bf16-rounded inputs,
/// which pins the rounding; without it, identical to the f32 kernels (the fallback).
fn assert_shape(s: ConvShape) {
    let raw = inputs(s);
    let got = outputs(true, s, &raw);
    let f32_raw = outputs(false, s, &raw);
    let [x, w, bias, dy] = &raw;
    // The bias stays f32 and its gradient sums f32 `dy`, so only operands are rounded.
    let rounded = [round_bf16(x), round_bf16(w), bias.clone(), round_bf16(dy)];
    let f32_rounded = outputs(false, s, &rounded);
    for (i, name) in OUTPUTS.iter().enumerate() {
        let loose = rel_err(&got[i], &f32_raw[i]);
        let want = if name == &"dbias" {
            &f32_raw[i]
        } else {
            &f32_rounded[i]
        };
        let tight = rel_err(&got[i], want);
        eprintln!("{s:?} {name}: vs f32 {loose:.2e}, vs f32 on bf16 inputs {tight:.2e}");
        assert!(loose <= 1e-2, "{s:?} {name}: {loose:e} vs f32");
        if bf16_supported() {
            assert!(
                tight <= 1e-5,
                "{s:?} {name}: {tight:e} vs f32 on bf16 inputs"
            );
            if name != &"dbias" {
                assert!(loose > 1e-5, "{s:?} {name}: operands were not rounded");
            }
        } else {
            assert_eq!(
                got[i], f32_raw[i],
                "{s:?} {name}: fallback differs from f32"
            );
        }
    }
}

#[test]
fn conv_bf16_matches_f32_on_odd_shapes() {
    eprintln!(
        "bf16 kernels: {}, AMX tiles: {}",
        bf16_supported(),
        crate::kernels::amx::available()
    );
    for (cin, cout) in [(3, 5), (16, 32)] {
        for k in [3, 1] {
            assert_shape(ConvShape {
                b: 2,
                cin,
                cout,
                h: 7,
                w: 9,
                k,
            });
        }
    }
}

/// Several `k` blocks (fwd/dx in `deep`, dw in `wide`), row tiles and dw pixel chunks
/// (`wide`), tails in every dimension, one and three threads, so every packing and
/// scheduling path meets the references.
#[test]
fn conv_bf16_matches_f32_across_blocks_tilings_and_pools() {
    let deep = ConvShape::new(2, 64, 20, 5, 7, 3);
    let wide = ConvShape::new(1, 40, 13, 37, 41, 3);
    let tiny = ConvShape::new(3, 1, 2, 1, 5, 1);
    in_pools(|| [deep, wide, tiny].into_iter().for_each(assert_shape));
}

/// A 3×3 layer that Winograd takes (128 tiles of 4 × 4): without AMX tiles its forward pass,
/// input gradient and weight gradient stay the f32 kernels in bf16 mode, bit for bit
/// ([`winograd_instead`]); with AMX they run on the tiles with rounded operands.
#[test]
fn bf16_mode_keeps_winograd_layers_f32_without_amx() {
    let s = ConvShape::new(2, 16, 16, 32, 32, 3);
    assert!(
        crate::kernels::winograd::applies(&s) && crate::kernels::winograd::applies(&s.adjoint())
    );
    #[cfg(target_arch = "x86_64")]
    let amx = crate::kernels::amx::available();
    #[cfg(not(target_arch = "x86_64"))]
    let amx = false;
    assert_eq!(winograd_instead(&s), !amx);
    let raw = inputs(s);
    let got = outputs(true, s, &raw);
    let f32_raw = outputs(false, s, &raw);
    for (i, name) in OUTPUTS.iter().enumerate().take(5) {
        if amx && bf16_supported() {
            let err = rel_err(&got[i], &f32_raw[i]);
            assert!(err > 1e-5 && err <= 1e-2, "{name}: {err:e} vs f32 on AMX");
        } else {
            assert_eq!(got[i], f32_raw[i], "{name}: not the f32 Winograd kernel");
        }
    }
}
