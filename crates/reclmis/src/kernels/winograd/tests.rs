use super::*;
use crate::kernels::cpu;
use crate::kernels::test_util::{in_pools, rand_vec, rel_err};

/// `scale ⊙ (w ⋆ x) + bias` (ReLU optional) by the definition, in f64.
fn naive(
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    scale: Option<&[f32]>,
    s: &ConvShape,
    relu: bool,
) -> Vec<f64> {
    let (h, wd) = (s.h as isize, s.w as isize);
    let mut out = vec![0.0f64; s.b * s.cout * s.hw()];
    for i in 0..s.b {
        for co in 0..s.cout {
            for oy in 0..h {
                for ox in 0..wd {
                    let mut acc = 0.0f64;
                    for ci in 0..s.cin {
                        for ky in 0..3isize {
                            for kx in 0..3isize {
                                let (iy, ix) = (oy + ky - 1, ox + kx - 1);
                                if iy < 0 || ix < 0 || iy >= h || ix >= wd {
                                    continue;
                                }
                                let xv =
                                    x[((i * s.cin + ci) * s.h + iy as usize) * s.w + ix as usize];
                                let wv = w[(co * s.cin + ci) * 9 + (ky * 3 + kx) as usize];
                                acc += f64::from(xv) * f64::from(wv);
                            }
                        }
                    }
                    let sc = scale.map_or(1.0, |sc| f64::from(sc[co]));
                    let b = bias.map_or(0.0, |b| f64::from(b[co]));
                    let y = acc * sc + b;
                    let y = if relu { y.max(0.0) } else { y };
                    out[((i * s.cout + co) * s.h + oy as usize) * s.w + ox as usize] = y;
                }
            }
        }
    }
    out
}

/// Worst relative error of `forward_with(isa)` over bias/scale/ReLU combinations.
fn worst_error(isa: Isa, s: ConvShape) -> f64 {
    let x = rand_vec(s.b * s.cin * s.hw(), 1);
    let w = rand_vec(s.cout * s.cin * 9, 2);
    let bias = rand_vec(s.cout, 3);
    let scale: Vec<f32> = rand_vec(s.cout, 4).iter().map(|v| 0.5 + v.abs()).collect();
    let mut worst = 0.0f64;
    for (b, sc, relu) in [
        (Some(&bias[..]), None, false),
        (Some(&bias[..]), Some(&scale[..]), true),
        (None, Some(&scale[..]), false),
        (None, None, true),
    ] {
        let mut out = vec![f32::NAN; s.b * s.cout * s.hw()];
        let call = Call {
            x: Input::Plain(&x),
            w: &w,
            bias: b,
            scale: sc,
            s,
            relu,
        };
        forward_with(isa, &call, &mut out);
        let e = rel_err(&out, &naive(&x, &w, b, sc, &s, relu));
        eprintln!(
            "{isa:?} {s:?} bias {} scale {} relu {relu}: {e:.2e}",
            b.is_some(),
            sc.is_some()
        );
        worst = worst.max(e);
    }
    worst
}

/// Sizes that are not multiples of the 4×4 tile, channel counts that fill neither a SIMD vector
/// nor a filter panel (19 < 64 < 70 output channels), and an image smaller than one patch.
const SHAPES: [ConvShape; 4] = [
    ConvShape::new(2, 17, 19, 13, 22, 3),
    ConvShape::new(1, 8, 70, 9, 5, 3),
    ConvShape::new(1, 3, 4, 4, 4, 3),
    ConvShape::new(3, 5, 2, 1, 6, 3),
];

#[test]
fn every_instruction_set_matches_the_definition() {
    for isa in isas() {
        for s in SHAPES {
            let e = worst_error(isa, s);
            assert!(e <= 1e-5, "{isa:?} {s:?}: relative error {e:.2e}");
        }
    }
}

/// One band per job, more threads than bands, and one thread: the bands must tile the image.
#[test]
fn bands_cover_the_image_in_any_pool() {
    let tall = ConvShape::new(2, 16, 16, 61, 9, 3);
    assert!(
        band_rows(&tall, 1) > 1,
        "the test needs several tile rows per band"
    );
    in_pools(|| {
        for s in [tall, SHAPES[0]] {
            let e = worst_error(isa(), s);
            assert!(e <= 1e-5, "{s:?}: relative error {e:.2e}");
        }
    });
}

/// The kernels' own convolution takes this path for large 3×3 layers, forward and for the
/// input gradient (a convolution with the flipped kernel); both still match the definition.
#[test]
fn the_cpu_convolution_uses_it_where_it_applies() {
    let s = ConvShape::new(1, 16, 24, 48, 48, 3);
    assert!(applies(&s) && applies(&s.adjoint()));
    assert!(!applies(&ConvShape::new(1, 16, 24, 48, 48, 1)));
    assert!(!applies(&ConvShape::new(1, 3, 24, 48, 48, 3)));
    let x = rand_vec(s.b * s.cin * s.hw(), 5);
    let w = rand_vec(s.cout * s.cin * 9, 6);
    let bias = rand_vec(s.cout, 7);
    let mut out = vec![f32::NAN; s.b * s.cout * s.hw()];
    cpu::conv_forward(&x, &w, Some(&bias), s, true, &mut out);
    let e = rel_err(&out, &naive(&x, &w, Some(&bias), None, &s, true));
    assert!(e <= 1e-5, "forward: {e:.2e}");

    // dx = the adjoint convolution of dy; its definition, term by term.
    let dy = rand_vec(s.b * s.cout * s.hw(), 8);
    let mut dx = vec![f32::NAN; x.len()];
    cpu::conv_input_grad(&dy, &w, s, &mut dx);
    let mut want = vec![0.0f64; x.len()];
    for co in 0..s.cout {
        for oy in 0..s.h {
            for ox in 0..s.w {
                let g = f64::from(dy[(co * s.h + oy) * s.w + ox]);
                for ci in 0..s.cin {
                    for k in 0..9 {
                        let (iy, ix) = (oy + k / 3, ox + k % 3);
                        if iy >= 1 && ix >= 1 && iy <= s.h && ix <= s.w {
                            want[(ci * s.h + iy - 1) * s.w + ix - 1] +=
                                g * f64::from(w[(co * s.cin + ci) * 9 + k]);
                        }
                    }
                }
            }
        }
    }
    let e = rel_err(&dx, &want);
    assert!(e <= 1e-5, "input gradient: {e:.2e}");
}

/// The decoder's composed input gives, bit for bit, what the same kernel gives on the
/// concatenation written out: skip channels that do and do not fill a vector, an image width
/// that is and is not a multiple of the vector width, every instruction set.
#[test]
fn the_composed_decoder_input_equals_the_written_concatenation() {
    for isa in isas() {
        for (b, cs, cx, h, w) in [(2, 17, 5, 12, 14), (1, 32, 16, 32, 32)] {
            let s = ConvShape::new(b, cs + cx, 20, h, w, 3);
            let skip = rand_vec(b * cs * h * w, 11);
            let gate = rand_vec(b * h * w, 12);
            let low = rand_vec(b * cx * (h / 2) * (w / 2), 13);
            let mut cat = vec![0.0f32; b * s.cin * h * w];
            for i in 0..b {
                for ch in 0..s.cin {
                    for y in 0..h {
                        for x in 0..w {
                            cat[((i * s.cin + ch) * h + y) * w + x] = if ch < cs {
                                skip[((i * cs + ch) * h + y) * w + x] * gate[(i * h + y) * w + x]
                            } else {
                                low[((i * cx + ch - cs) * (h / 2) + y / 2) * (w / 2) + x / 2]
                            };
                        }
                    }
                }
            }
            let wt = rand_vec(s.cout * s.cin * 9, 14);
            let bias = rand_vec(s.cout, 15);
            let scale: Vec<f32> = rand_vec(s.cout, 16).iter().map(|v| 0.5 + v.abs()).collect();
            let run = |x: Input| {
                let mut out = vec![f32::NAN; b * s.cout * h * w];
                let call = Call {
                    x,
                    w: &wt,
                    bias: Some(&bias),
                    scale: Some(&scale),
                    s,
                    relu: true,
                };
                forward_with(isa, &call, &mut out);
                out
            };
            let composed = run(Input::UpCat {
                skip: &skip,
                gate: &gate,
                low: &low,
                cs,
            });
            let written = run(Input::Plain(&cat));
            assert!(
                composed
                    .iter()
                    .zip(&written)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "{isa:?} {s:?}: the composed input differs"
            );
            let e = rel_err(
                &written,
                &naive(&cat, &wt, Some(&bias), Some(&scale), &s, true),
            );
            assert!(e <= 1e-5, "{isa:?} {s:?}: relative error {e:.2e}");
        }
    }
}

/// `dw[co][ci][k] = Σ dy[co][y][x] · x[ci][y + ky − 1][x + kx − 1]` and `db[co] = Σ dy[co]`, in
/// f64.
fn naive_weight_grad(x: &[f32], dy: &[f32], s: &ConvShape) -> (Vec<f64>, Vec<f64>) {
    let mut dw = vec![0.0f64; s.cout * s.cin * 9];
    let mut db = vec![0.0f64; s.cout];
    for i in 0..s.b {
        for co in 0..s.cout {
            for oy in 0..s.h {
                for ox in 0..s.w {
                    let g = f64::from(dy[((i * s.cout + co) * s.h + oy) * s.w + ox]);
                    db[co] += g;
                    for ci in 0..s.cin {
                        for k in 0..9 {
                            let (iy, ix) = (oy + k / 3, ox + k % 3);
                            if iy >= 1 && ix >= 1 && iy <= s.h && ix <= s.w {
                                let xv = x[((i * s.cin + ci) * s.h + iy - 1) * s.w + ix - 1];
                                dw[(co * s.cin + ci) * 9 + k] += g * f64::from(xv);
                            }
                        }
                    }
                }
            }
        }
    }
    (dw, db)
}

/// The transposed transforms give the weight gradient of the definition on every instruction
/// set: sizes that are not multiples of the tile, channel counts that fill no vector, several
/// images, and one chunk of tiles as well as a chunk per tile row.
#[test]
fn the_weight_gradient_matches_the_definition() {
    let shapes = [
        ConvShape::new(2, 17, 19, 13, 22, 3),
        ConvShape::new(1, 8, 70, 9, 5, 3),
        ConvShape::new(3, 5, 2, 1, 6, 3),
        ConvShape::new(2, 32, 16, 16, 16, 3),
    ];
    for isa in isas() {
        for s in shapes {
            let x = rand_vec(s.b * s.cin * s.hw(), 21);
            let dy = rand_vec(s.b * s.cout * s.hw(), 22);
            let (want_dw, want_db) = naive_weight_grad(&x, &dy, &s);
            for chunk in [1, 1 << 30] {
                let mut dw = vec![f32::NAN; want_dw.len()];
                let mut db = vec![f32::NAN; s.cout];
                weight_grad::weight_grad_with((isa, chunk), &x, &dy, s, &mut dw, Some(&mut db));
                let e = rel_err(&dw, &want_dw);
                eprintln!("{isa:?} {s:?} chunk {chunk}: weight gradient {e:.2e}");
                assert!(e <= 1e-5, "{isa:?} {s:?}: weight gradient error {e:.2e}");
                let e = rel_err(&db, &want_db);
                assert!(e <= 1e-6, "{isa:?} {s:?}: bias gradient error {e:.2e}");
            }
        }
    }
}

/// The kernels' own weight gradient takes this path where Winograd applies, in any pool.
#[test]
fn the_cpu_weight_gradient_uses_it_where_it_applies() {
    let s = ConvShape::new(2, 24, 16, 30, 34, 3);
    assert!(applies(&s));
    let x = rand_vec(s.b * s.cin * s.hw(), 23);
    let dy = rand_vec(s.b * s.cout * s.hw(), 24);
    let (want_dw, want_db) = naive_weight_grad(&x, &dy, &s);
    in_pools(|| {
        let mut dw = vec![f32::NAN; want_dw.len()];
        let mut db = vec![f32::NAN; s.cout];
        cpu::conv_weight_grad(&x, &dy, s, &mut dw, Some(&mut db));
        let e = rel_err(&dw, &want_dw);
        assert!(e <= 1e-5, "weight gradient error {e:.2e}");
        assert!(rel_err(&db, &want_db) <= 1e-6);
    });
}
