use super::*;
use crate::kernels::test_util::{in_pools, rand_vec, rel_err};

/// Forward and gradients by the definition, in f64: `[out, dq, dk, dv, dbias]`.
fn naive(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    bias: &[f32],
    dout: &[f32],
    s: AttnShape,
) -> [Vec<f64>; 5] {
    let (lq, lk, d, hd) = (s.lq, s.lk, s.d, s.hd());
    let scale = 1.0 / (hd as f64).sqrt();
    let mut out = vec![0.0; dout.len()];
    let (mut dq, mut dk, mut dv) = (vec![0.0; q.len()], vec![0.0; k.len()], vec![0.0; v.len()]);
    let mut dbias = vec![0.0; bias.len()];
    let f = |x: f32| f64::from(x);
    for img in 0..s.b {
        for h in 0..s.heads {
            let qi = |i: usize, c: usize| f(q[(img * lq + i) * d + h * hd + c]);
            let kj = |j: usize, c: usize| f(k[(img * lk + j) * d + h * hd + c]);
            let vj = |j: usize, c: usize| f(v[(img * lk + j) * d + h * hd + c]);
            let go = |i: usize, c: usize| f(dout[(img * lq + i) * d + h * hd + c]);
            for i in 0..lq {
                let b0 = s.bias_offset(img, i);
                let sc: Vec<f64> = (0..lk)
                    .map(|j| {
                        (0..hd).map(|c| qi(i, c) * kj(j, c)).sum::<f64>() * scale + f(bias[b0 + j])
                    })
                    .collect();
                let max = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = sc.iter().map(|x| (x - max).exp()).collect();
                let sum: f64 = e.iter().sum();
                let p: Vec<f64> = e.iter().map(|x| x / sum).collect();
                let dp: Vec<f64> = (0..lk)
                    .map(|j| (0..hd).map(|c| go(i, c) * vj(j, c)).sum())
                    .collect();
                let dot: f64 = dp.iter().zip(&p).map(|(a, b)| a * b).sum();
                for j in 0..lk {
                    let ds = p[j] * (dp[j] - dot);
                    dbias[b0 + j] += ds;
                    for c in 0..hd {
                        out[(img * lq + i) * d + h * hd + c] += p[j] * vj(j, c);
                        dv[(img * lk + j) * d + h * hd + c] += p[j] * go(i, c);
                        dq[(img * lq + i) * d + h * hd + c] += ds * kj(j, c) * scale;
                        dk[(img * lk + j) * d + h * hd + c] += ds * qi(i, c) * scale;
                    }
                }
            }
        }
    }
    [out, dq, dk, dv, dbias]
}

/// Every broadcast of the bias, a causal mask (`NEG_INF`) with log-weights, cross-attention
/// with more keys than queries and the reverse, one and three threads.
#[test]
fn attention_matches_the_definition() {
    let shapes = [
        (2, 7, 7, 16, 4, true, true),
        (2, 5, 9, 24, 3, true, false),
        (3, 9, 4, 8, 1, false, true),
        (1, 6, 6, 32, 8, false, false),
    ];
    in_pools(|| {
        for (i, &(b, lq, lk, d, heads, per_image, per_query)) in shapes.iter().enumerate() {
            let s = AttnShape {
                b,
                lq,
                lk,
                d,
                heads,
                bias_per_image: per_image,
                bias_per_query: per_query,
            };
            let seed = 10 * i as u64;
            let (q, k, v) = (
                rand_vec(b * lq * d, seed),
                rand_vec(b * lk * d, seed + 1),
                rand_vec(b * lk * d, seed + 2),
            );
            let mut bias = rand_vec(s.bias_len(), seed + 3);
            if per_query && lq == lk {
                // A causal mask on top: key j > query i is blocked.
                for img in 0..if per_image { b } else { 1 } {
                    for qi in 0..lq {
                        for j in qi + 1..lk {
                            bias[s.bias_offset(img, qi) + j] = -1.0e30;
                        }
                    }
                }
            }
            let dout = rand_vec(b * lq * d, seed + 4);
            let (out, p) = forward(&q, &k, &v, &bias, s);
            let [dq, dk, dv, db] = backward(&q, &k, &v, &p, &dout, s.bias_len(), true, s);
            let want = naive(&q, &k, &v, &bias, &dout, s);
            for (name, got, want) in [
                ("out", &out, &want[0]),
                ("dq", &dq, &want[1]),
                ("dk", &dk, &want[2]),
                ("dv", &dv, &want[3]),
                ("dbias", &db, &want[4]),
            ] {
                let e = rel_err(got, want);
                assert!(e <= 1e-5, "{s:?} {name}: relative error {e:.2e}");
            }
            let [_, _, _, none] = backward(&q, &k, &v, &p, &dout, s.bias_len(), false, s);
            assert!(none.is_empty());
        }
    });
}
