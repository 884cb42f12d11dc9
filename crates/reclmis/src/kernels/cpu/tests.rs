use super::*;
use crate::kernels::test_util::{in_pools, rand_vec, rel_err};

/// Value of x at (img, ch, y, x) or 0 in the padding.
fn at(t: &[f32], c: usize, s: &ConvShape, (i, ch, y, x): (usize, usize, isize, isize)) -> f64 {
    if y < 0 || x < 0 || y >= s.h as isize || x >= s.w as isize {
        return 0.0;
    }
    t[((i * c + ch) * s.h + y as usize) * s.w + x as usize] as f64
}

/// Visits every (img, co, ci, oy, ox, ky, kx) term of the convolution sum with the input
/// coordinates it reads.
fn for_each_term(s: &ConvShape, mut f: impl FnMut([usize; 7], isize, isize)) {
    let p = (s.k / 2) as isize;
    for i in 0..s.b {
        for co in 0..s.cout {
            for ci in 0..s.cin {
                for oy in 0..s.h {
                    for ox in 0..s.w {
                        for ky in 0..s.k {
                            for kx in 0..s.k {
                                let iy = oy as isize + ky as isize - p;
                                let ix = ox as isize + kx as isize - p;
                                f([i, co, ci, oy, ox, ky, kx], iy, ix);
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Relative errors of (forward, forward+ReLU, forward without bias, dx, dw, dbias) against
/// naive f64 loops.
fn conv_errors(s: ConvShape) -> [f64; 6] {
    let x = rand_vec(s.b * s.cin * s.hw(), 1);
    let w = rand_vec(s.cout * s.kk(), 2);
    let bias = rand_vec(s.cout, 3);
    let dy = rand_vec(s.b * s.cout * s.hw(), 4);
    let mut y = vec![0.0f64; dy.len()];
    let mut dx = vec![0.0f64; x.len()];
    let mut dw = vec![0.0f64; w.len()];
    let mut db = vec![0.0f64; s.cout];
    for_each_term(&s, |[i, co, ci, oy, ox, ky, kx], iy, ix| {
        let wi = ((co * s.cin + ci) * s.k + ky) * s.k + kx;
        let yi = ((i * s.cout + co) * s.h + oy) * s.w + ox;
        let xv = at(&x, s.cin, &s, (i, ci, iy, ix));
        y[yi] += w[wi] as f64 * xv;
        dw[wi] += dy[yi] as f64 * xv;
        if iy >= 0 && ix >= 0 && iy < s.h as isize && ix < s.w as isize {
            dx[((i * s.cin + ci) * s.h + iy as usize) * s.w + ix as usize] +=
                w[wi] as f64 * dy[yi] as f64;
        }
        if ci == 0 && ky == 0 && kx == 0 {
            db[co] += dy[yi] as f64;
        }
    });
    let y_bias: Vec<f64> = (y.iter().enumerate())
        .map(|(j, v)| v + bias[(j / s.hw()) % s.cout] as f64)
        .collect();
    let y_relu: Vec<f64> = y_bias.iter().map(|v| v.max(0.0)).collect();
    let mut out = vec![f32::NAN; y.len()];
    let mut errs = [0.0; 6];
    for (e, (b, relu, want)) in errs.iter_mut().zip([
        (Some(&bias[..]), false, &y_bias),
        (Some(&bias[..]), true, &y_relu),
        (None, false, &y),
    ]) {
        conv_forward(&x, &w, b, s, relu, &mut out);
        *e = rel_err(&out, want);
    }
    let mut got_dx = vec![f32::NAN; x.len()];
    conv_input_grad(&dy, &w, s, &mut got_dx);
    errs[3] = rel_err(&got_dx, &dx);
    let mut got_dw = vec![f32::NAN; w.len()];
    let mut got_db = vec![f32::NAN; s.cout];
    conv_weight_grad(&x, &dy, s, &mut got_dw, Some(&mut got_db));
    errs[5] = rel_err(&got_db, &db);
    got_dw.fill(f32::NAN);
    conv_weight_grad(&x, &dy, s, &mut got_dw, None);
    errs[4] = rel_err(&got_dw, &dw);
    errs
}

fn assert_conv(s: ConvShape) {
    let errs = conv_errors(s);
    eprintln!("{s:?}: fwd, fwd+relu, fwd no bias, dx, dw, dbias rel err {errs:?}");
    assert!(errs.iter().all(|&e| e <= 1e-5), "{s:?}: {errs:?}");
}

#[test]
fn conv_matches_naive_loops() {
    for k in [3, 1, 5] {
        assert_conv(ConvShape::new(2, 3, 5, 7, 9, k));
    }
}

/// Several row tiles per image, more threads than images, one thread, and a one-row image,
/// so every scheduling path meets the reference.
#[test]
fn conv_matches_naive_loops_across_tilings_and_pools() {
    let wide = ConvShape::new(1, 40, 6, 30, 64, 3);
    let odd = ConvShape::new(3, 2, 3, 1, 5, 3);
    let single = ConvShape { b: 1, ..odd };
    assert!(plan_tiles(&wide, wide.kk(), 1).len() > 1);
    assert!(plan_tiles(&single, single.kk(), 3).len() < 3);
    in_pools(|| [wide, odd, single].into_iter().for_each(assert_conv));
}

const EPS: f64 = 1e-5;
const BN: (usize, usize, usize) = (2, 3, 11);

fn to_f64(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// f64 reference forward from the definition: (y, mean, biased var).
fn bn_ref(x: &[f64], gamma: &[f64], beta: &[f64], relu: bool) -> [Vec<f64>; 3] {
    let (b, c, n) = BN;
    let cnt = (b * n) as f64;
    let mut y = vec![0.0; x.len()];
    let (mut ms, mut vs) = (vec![0.0; c], vec![0.0; c]);
    for ch in 0..c {
        let all = || (0..b).flat_map(move |i| (0..n).map(move |j| (i * c + ch) * n + j));
        let m = all().map(|k| x[k]).sum::<f64>() / cnt;
        let v = all().map(|k| (x[k] - m) * (x[k] - m)).sum::<f64>() / cnt;
        for k in all() {
            let o = (x[k] - m) / (v + EPS).sqrt() * gamma[ch] + beta[ch];
            y[k] = if relu { o.max(0.0) } else { o };
        }
        (ms[ch], vs[ch]) = (m, v);
    }
    [y, ms, vs]
}

/// (x, gamma, beta, dy); the offset mean checks that the statistics do not cancel.
fn bn_inputs() -> [Vec<f32>; 4] {
    let (b, c, n) = BN;
    let x = rand_vec(b * c * n, 8)
        .iter()
        .map(|v| 3.0 * v + 0.5)
        .collect();
    let gamma = rand_vec(c, 9).iter().map(|v| v + 1.5).collect();
    [x, gamma, rand_vec(c, 10), rand_vec(b * c * n, 11)]
}

/// Kernel forward then backward: (y, dx, dgamma, dbeta).
fn run_bn(relu: bool) -> [Vec<f32>; 4] {
    let (b, c, n) = BN;
    let [x, gamma, beta, dy] = bn_inputs();
    let mut y = vec![f32::NAN; x.len()];
    let (mut m, mut v) = (vec![f64::NAN; c], vec![f64::NAN; c]);
    bn_train_forward(
        &x, &gamma, &beta, b, c, n, EPS, relu, &mut y, &mut m, &mut v,
    );
    let [x64, g64, b64] = [&x, &gamma, &beta].map(|v| to_f64(v));
    let [_, wm, wv] = bn_ref(&x64, &g64, &b64, relu);
    for ch in 0..c {
        assert!((m[ch] - wm[ch]).abs() <= 1e-12 && (v[ch] - wv[ch]).abs() <= 1e-12);
    }
    let mut dx = vec![f32::NAN; x.len()];
    let (mut dg, mut db) = (vec![f32::NAN; c], vec![f32::NAN; c]);
    bn_train_backward(
        &dy, &x, &y, &gamma, &m, &v, b, c, n, EPS, relu, &mut dx, &mut dg, &mut db,
    );
    [y, dx, dg, db]
}

#[test]
fn bn_matches_naive_loops() {
    let (b, c, n) = BN;
    let [x, gamma, beta, dy] = bn_inputs().map(|v| to_f64(&v));
    let cnt = (b * n) as f64;
    for relu in [false, true] {
        let [y, ms, vs] = bn_ref(&x, &gamma, &beta, relu);
        let (mut dx, mut dg, mut db) = (vec![0.0; x.len()], vec![0.0; c], vec![0.0; c]);
        for ch in 0..c {
            let ks: Vec<usize> = (0..b)
                .flat_map(|i| (0..n).map(move |j| (i * c + ch) * n + j))
                .collect();
            let inv = 1.0 / (vs[ch] + EPS).sqrt();
            let g = |k: usize| if !relu || y[k] > 0.0 { dy[k] } else { 0.0 };
            let xh = |k: usize| (x[k] - ms[ch]) * inv;
            db[ch] = ks.iter().map(|&k| g(k)).sum();
            dg[ch] = ks.iter().map(|&k| g(k) * xh(k)).sum();
            for &k in &ks {
                dx[k] = gamma[ch] * inv * (g(k) - db[ch] / cnt - xh(k) * dg[ch] / cnt);
            }
        }
        let got = run_bn(relu);
        let errs: Vec<f64> = (got.iter().zip([&y, &dx, &dg, &db]))
            .map(|(g, w)| rel_err(g, w))
            .collect();
        eprintln!("bn relu={relu}: y, dx, dgamma, dbeta rel err {errs:?}");
        assert!(
            errs[0] <= 1e-6 && errs.iter().all(|&e| e <= 1e-5),
            "{errs:?}"
        );
    }
}

#[test]
fn bn_backward_matches_finite_differences() {
    let [x, gamma, beta, r] = bn_inputs().map(|v| to_f64(&v));
    for relu in [false, true] {
        // loss = Σ y·r, so dloss/dy = r (the `dy` the kernel gets).
        let loss = |x: &[f64], g: &[f64], bt: &[f64]| -> f64 {
            let [y, _, _] = bn_ref(x, g, bt, relu);
            y.iter().zip(&r).map(|(a, b)| a * b).sum()
        };
        let h = 1e-6;
        let central = |v: &[f64], f: &dyn Fn(&[f64]) -> f64| -> Vec<f64> {
            (0..v.len())
                .map(|k| {
                    let (mut p, mut m) = (v.to_vec(), v.to_vec());
                    p[k] += h;
                    m[k] -= h;
                    (f(&p) - f(&m)) / (2.0 * h)
                })
                .collect()
        };
        let fd = [
            central(&x, &|v| loss(v, &gamma, &beta)),
            central(&gamma, &|v| loss(&x, v, &beta)),
            central(&beta, &|v| loss(&x, &gamma, v)),
        ];
        let [_, dx, dg, db] = run_bn(relu);
        let errs: Vec<f64> = (fd.iter().zip([&dx, &dg, &db]))
            .map(|(w, g)| rel_err(g, w))
            .collect();
        eprintln!("bn finite differences relu={relu}: dx, dgamma, dbeta rel err {errs:?}");
        assert!(errs.iter().all(|&e| e <= 1e-3), "relu={relu}: {errs:?}");
    }
}

/// The dropout mask holds `1 / keep` or 0, keeps `keep` of the values (within four standard
/// deviations of a binomial draw), is the same for the same seed whatever the thread count, and
/// another for another seed.
#[test]
fn dropout_mask_keeps_its_fraction_and_depends_on_the_seed_only() {
    let (n, keep) = (200_001, 0.9);
    let mask = dropout_mask(n, keep, 7);
    let scale = (1.0 / keep) as f32;
    assert_eq!(mask.len(), n);
    assert!(mask.iter().all(|&v| v == 0.0 || v == scale));
    let kept = mask.iter().filter(|&&v| v != 0.0).count() as f64 / n as f64;
    let sd = (keep * (1.0 - keep) / n as f64).sqrt();
    assert!(
        (kept - keep).abs() < 4.0 * sd,
        "kept {kept} of the values, want {keep}"
    );
    let pools: std::sync::Mutex<Vec<Vec<f32>>> = Default::default();
    in_pools(|| pools.lock().unwrap().push(dropout_mask(n, keep, 7)));
    assert!(pools.into_inner().unwrap().iter().all(|m| *m == mask));
    assert_ne!(dropout_mask(n, keep, 8), mask);
    assert!(dropout_mask(1000, 1.0, 3).iter().all(|&v| v == 1.0));
}
