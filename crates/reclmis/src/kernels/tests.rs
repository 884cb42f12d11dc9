use burn::tensor::Gradients;

use super::test_util::rel_err;
use super::*;
use crate::model::decoder::PixLevelModule;
use crate::model::encoder::ConvBatchNorm;
use crate::model::init::Init;
use crate::model::nn::{BatchNorm, Conv2d};

fn device() -> Device {
    Device::flex().autodiff()
}

fn random<const D: usize>(init: &mut Init, shape: [usize; D]) -> Tensor<D> {
    init.uniform(shape, 1.0).val()
}

fn host<const D: usize>(t: &Tensor<D>) -> Vec<f32> {
    t.clone()
        .into_data()
        .try_to_vec::<f32>()
        .expect("float32 tensor")
}

fn grad<const D: usize>(t: &Tensor<D>, grads: &Gradients) -> Vec<f32> {
    let g = t.grad(grads).expect("tensor has a gradient");
    g.into_data().try_to_vec::<f32>().expect("float32 gradient")
}

#[test]
fn conv_matches_burn_forward_and_gradients() {
    for (i, &(b, cin, cout, h, w, k, bias)) in [
        (2, 3, 5, 7, 9, 3, true),
        (2, 4, 3, 6, 5, 1, false),
        (1, 3, 2, 5, 6, 5, true),
        (2, 16, 8, 12, 12, 3, true),
    ]
    .iter()
    .enumerate()
    {
        let mut init = Init::new(40 + i as u64, &device());
        let conv = Conv2d::new(cin, cout, k, bias, &mut init);
        let x = random(&mut init, [b, cin, h, w]).require_grad();
        let r = random(&mut init, [b, cout, h, w]);
        let run = |y: Tensor<4>| {
            let grads = (y.clone() * r.clone()).sum().backward();
            let mut out = vec![host(&y), grad(&x, &grads), grad(&conv.weight.val(), &grads)];
            if let Some(bias) = &conv.bias {
                out.push(grad(&bias.val(), &grads));
            }
            out
        };
        let ours = run(conv.forward(x.clone()));
        let reference = run(conv.forward_burn(x.clone()));
        for (j, (o, r)) in ours.iter().zip(&reference).enumerate() {
            let e = rel_err(o, r);
            assert!(
                e <= 1e-5,
                "case {i}, tensor {j} (y, dx, dw, db): rel err {e:.2e}"
            );
        }
    }
}

#[test]
fn batch_norm_train_matches_burn_with_and_without_relu() {
    for (i, &(b, c, h, w, relu)) in [(2, 3, 5, 7, true), (3, 4, 1, 11, false), (2, 6, 8, 8, true)]
        .iter()
        .enumerate()
    {
        let mut init = Init::new(60 + i as u64, &device());
        let ours_bn = BatchNorm::new(c, &mut init);
        let ref_bn = BatchNorm::new(c, &mut init);
        let gamma = random(&mut init, [c]);
        let beta = random(&mut init, [c]);
        let x = random(&mut init, [b, c, h, w])
            .mul_scalar(3.0)
            .add_scalar(0.5)
            .detach()
            .require_grad();
        let r = random(&mut init, [b, c, h, w]);
        // Same affine parameters in both modules.
        let ours_bn = BatchNorm {
            weight: burn::module::Param::from_tensor(gamma.clone()),
            bias: burn::module::Param::from_tensor(beta.clone()),
            ..ours_bn
        };
        let ref_bn = BatchNorm {
            weight: burn::module::Param::from_tensor(gamma),
            bias: burn::module::Param::from_tensor(beta),
            ..ref_bn
        };
        let run = |bn: &BatchNorm, y: Tensor<4>| {
            let grads = (y.clone() * r.clone()).sum().backward();
            vec![
                host(&y),
                grad(&x, &grads),
                grad(&bn.weight.val(), &grads),
                grad(&bn.bias.val(), &grads),
                host(&bn.running_mean.value()),
                host(&bn.running_var.value()),
            ]
        };
        let y_ours = if relu {
            ours_bn.forward_relu(x.clone(), true)
        } else {
            ours_bn.forward(x.clone(), true)
        };
        let mut y_ref = ref_bn.forward_burn(x.clone(), true);
        if relu {
            y_ref = burn::tensor::activation::relu(y_ref);
        }
        let ours = run(&ours_bn, y_ours);
        let reference = run(&ref_bn, y_ref);
        for (j, (o, r)) in ours.iter().zip(&reference).enumerate() {
            let e = rel_err(o, r);
            assert!(
                e <= 1e-5,
                "case {i}, tensor {j} (y, dx, dγ, dβ, running mean, running var): rel err {e:.2e}"
            );
        }
    }
}

#[test]
fn batch_norm_1d_over_tokens_matches_burn() {
    let mut init = Init::new(70, &device());
    let bn = BatchNorm::new(5, &mut init);
    let x = random(&mut init, [3, 5, 10]).require_grad();
    let r = random(&mut init, [3, 5, 10]);
    let ours = bn.forward_relu(x.clone(), true);
    let reference = burn::tensor::activation::relu(bn.forward_burn(x.clone(), true));
    let g_ours = grad(&x, &(ours.clone() * r.clone()).sum().backward());
    let g_ref = grad(&x, &(reference.clone() * r).sum().backward());
    assert!(rel_err(&host(&ours), &host(&reference)) <= 1e-5);
    assert!(rel_err(&g_ours, &g_ref) <= 1e-5);
}

#[test]
fn maxpool_matches_burn_forward_and_gradient() {
    use burn::tensor::module::max_pool2d;
    use burn::tensor::ops::MaxPoolOptions;
    let mut init = Init::new(90, &device());
    for dims in [[2, 3, 8, 10], [1, 2, 7, 9]] {
        let x = random(&mut init, dims).require_grad();
        let r = random(&mut init, [dims[0], dims[1], dims[2] / 2, dims[3] / 2]);
        let run = |y: Tensor<4>| {
            let grads = (y.clone() * r.clone()).sum().backward();
            (host(&y), grad(&x, &grads))
        };
        let (y, g) = run(maxpool2(x.clone()));
        let (y_ref, g_ref) = run(max_pool2d(x.clone(), MaxPoolOptions::new([2, 2])));
        assert_eq!(y, y_ref, "{dims:?}: pooled values");
        assert_eq!(g, g_ref, "{dims:?}: gradient");
    }
}

#[test]
fn upsample_cat_matches_burn_forward_and_gradients() {
    use crate::model::decoder::upsample_nearest2;
    let mut init = Init::new(91, &device());
    for (b, cs, cx, h, w) in [(2, 3, 4, 5, 7), (1, 1, 2, 1, 1)] {
        let skip = random(&mut init, [b, cs, 2 * h, 2 * w]).require_grad();
        let x = random(&mut init, [b, cx, h, w]).require_grad();
        let r = random(&mut init, [b, cs + cx, 2 * h, 2 * w]);
        let run = |y: Tensor<4>| {
            let grads = (y.clone() * r.clone()).sum().backward();
            (host(&y), grad(&skip, &grads), grad(&x, &grads))
        };
        let ours = run(upsample_cat(skip.clone(), x.clone()));
        let reference = run(Tensor::cat(
            vec![skip.clone(), upsample_nearest2(x.clone())],
            1,
        ));
        assert_eq!(ours.0, reference.0, "values");
        assert_eq!(ours.1, reference.1, "skip gradient");
        let e = rel_err(&ours.2, &reference.2);
        assert!(e <= 1e-6, "input gradient: rel err {e:.2e}");
    }
}

/// Both ways of folding: the scale in a copy of the weights (small layers) and in the
/// Winograd filter transform (`cin = 16` at 48 px).
#[test]
fn folded_inference_block_matches_conv_then_batch_norm() {
    let mut init = Init::new(80, &Device::flex());
    for (cin, cout, b, side) in [(4, 6, 2, 9), (16, 20, 1, 48)] {
        let mut block = ConvBatchNorm::new(cin, cout, &mut init);
        // Non-trivial running statistics, as after training.
        block.norm.running_mean = burn::module::RunningState::new(random(&mut init, [cout]));
        block.norm.running_var =
            burn::module::RunningState::new(random(&mut init, [cout]).abs().add_scalar(0.2));
        let x = random(&mut init, [b, cin, side, side]);
        let ours = block.forward(x.clone(), false);
        let reference = burn::tensor::activation::relu(
            block.norm.forward_burn(block.conv.forward_burn(x), false),
        );
        let e = rel_err(&host(&ours), &host(&reference));
        assert!(
            e <= 1e-5,
            "folded conv+BN+ReLU {cin}→{cout}: rel err {e:.2e}"
        );
    }
    assert!(enabled(&Device::flex()));
}

#[test]
fn plam_matches_burn_forward_and_gradients() {
    // Sizes cover one tile, several tiles per image and a ragged last tile.
    for (i, &(b, c, h, w)) in [(2, 3, 5, 7), (2, 16, 50, 50), (1, 70, 23, 31)]
        .iter()
        .enumerate()
    {
        let mut init = Init::new(60 + i as u64, &device());
        let plam = PixLevelModule::new(c, &mut init);
        let s = random(&mut init, [b, c, h, w]).require_grad();
        let r = random(&mut init, [b, c, h, w]);
        let (l0, l2) = (&plam.bottleneck.layer0, &plam.bottleneck.layer2);
        let run = |y: Tensor<4>| {
            let grads = (y.clone() * r.clone()).sum().backward();
            vec![
                host(&y),
                grad(&s, &grads),
                grad(&plam.conv_avg.weight.val(), &grads),
                grad(&plam.conv_max.weight.val(), &grads),
                grad(&l0.weight.val(), &grads),
                grad(&l0.bias.val(), &grads),
                grad(&l2.weight.val(), &grads),
                grad(&l2.bias.val(), &grads),
            ]
        };
        let reference = run(plam.forward_burn(s.clone()));
        test_util::in_pools(|| {
            let ours = run(plam.forward(s.clone()));
            for (j, (o, r)) in ours.iter().zip(&reference).enumerate() {
                let e = rel_err(o, r);
                assert!(
                    e <= 1e-5,
                    "case {i}, tensor {j} (y, ds, dWa, dWm, dL0, db0, dL2, db2): rel err {e:.2e}"
                );
            }
        });
    }
}

#[test]
fn bf16_linear_matches_f32_on_bf16_inputs_forward_and_gradients() {
    let round = |t: Tensor<2>| {
        let [r, c] = t.dims();
        let v: Vec<f32> = host(&t)
            .iter()
            .map(|&x| half::bf16::from_f32(x).to_f32())
            .collect();
        Tensor::<2>::from_data(TensorData::new(v, [r, c]), &device())
    };
    // Odd sizes (row, column and `k` tails) and sizes with whole AMX tiles and a `k` tail.
    for (i, &(rows, din, dout)) in [(5, 7, 3), (37, 50, 21), (70, 96, 53)].iter().enumerate() {
        let mut init = Init::new(80 + i as u64, &device());
        let x = round(random(&mut init, [rows, din])).require_grad();
        let w = round(random(&mut init, [dout, din])).require_grad();
        let r = round(random(&mut init, [rows, dout]));
        let run = |y: Tensor<2>| {
            let grads = (y.clone() * r.clone()).sum().backward();
            vec![host(&y), grad(&x, &grads), grad(&w, &grads)]
        };
        let ours = run(linear_bf16(x.clone(), w.clone()));
        let reference = run(x.clone().matmul(w.clone().transpose()));
        for (j, (o, r)) in ours.iter().zip(&reference).enumerate() {
            let e = rel_err(o, r);
            let tol = if bf16::bf16_supported() { 1e-5 } else { 1e-6 };
            assert!(
                e <= tol,
                "case {i}, tensor {j} (y, dx, dw): rel err {e:.2e}"
            );
        }
        // Unrounded inputs are rounded by the kernel: close to f32, but not equal.
        let (x, w) = (
            random(&mut init, [rows, din]),
            random(&mut init, [dout, din]),
        );
        let e = rel_err(
            &host(&linear_bf16(x.clone(), w.clone())),
            &host(&x.matmul(w.transpose())),
        );
        assert!(e <= 1e-2, "case {i}: rel err {e:.2e} against f32");
        if bf16::bf16_supported() {
            assert!(e > 1e-5, "case {i}: operands were not rounded ({e:.2e})");
        }
    }
}

/// A decoder block at inference gives what PLAM, the upsampling concatenation and its folded
/// first convolution give one after another: on the plain CPU backend (where the Winograd
/// kernel reads the three sources itself, and where it does not apply) and on the autodiff one.
#[test]
fn the_fused_decoder_convolution_matches_its_three_steps() {
    use crate::model::decoder::UpBlock;
    use burn::module::Module;
    for (i, &(b, cs, cx, h)) in [(2, 16, 16, 24), (1, 5, 3, 6)].iter().enumerate() {
        let mut init = Init::new(90 + i as u64, &Device::flex());
        let mut block = UpBlock::new(cs, cx, 20, &mut init);
        block.n_convs[0].norm.running_var =
            burn::module::RunningState::new(random(&mut init, [20]).abs().add_scalar(0.2));
        let skip = random(&mut init, [b, cs, 2 * h, 2 * h]);
        let x = random(&mut init, [b, cx, h, h]);
        let steps = {
            let sa = block.pix_module.forward(skip.clone());
            let (w, bias, scale) = block.n_convs[0].folded(&skip.device());
            let y = conv_scaled(upsample_cat(sa, x.clone()), w, bias, scale, true);
            block.n_convs[1].forward(y, false)
        };
        let fused = block.forward(x.clone(), skip.clone(), false);
        // The same float operations in the same order: equal to the bit.
        assert_eq!(host(&fused), host(&steps), "{b}×{cs}+{cx} at {h}");
        let on_autodiff = block.clone().to_device(&device()).forward(
            x.to_device(&device()),
            skip.to_device(&device()),
            false,
        );
        let e = rel_err(&host(&on_autodiff), &host(&steps));
        assert!(e <= 1e-6, "autodiff {b}×{cs}+{cx} at {h}: rel err {e:.2e}");
    }
}

/// On the training device, a product of untracked operands (the frozen text tower) runs the
/// thin kernel as it does at inference, bit for bit; a tracked one still gets its gradient.
#[test]
fn thin_linear_runs_untracked_on_the_autodiff_device() {
    let (rows, din, dout) = (72, 512, 96);
    let plain = Device::flex();
    let mut init = Init::new(61, &plain);
    let (xv, wv) = (
        host(&random(&mut init, [rows, din])),
        host(&random(&mut init, [dout, din])),
    );
    let on = |device: &Device| {
        (
            Tensor::<2>::from_data(TensorData::new(xv.clone(), [rows, din]), device),
            Tensor::<2>::from_data(TensorData::new(wv.clone(), [dout, din]), device),
        )
    };
    let (x, w) = on(&plain);
    let inference = host(&linear_thin(x, w));
    let (x, w) = on(&device());
    let training = linear_thin(x.clone(), w.clone());
    assert!(!training.is_require_grad());
    assert_eq!(host(&training), inference, "not the thin kernel");
    let reference = host(&x.clone().matmul(w.clone().transpose()));
    assert!(rel_err(&inference, &reference) <= 1e-5);

    let x = x.require_grad();
    let r = random(&mut init, [rows, dout]);
    let g = (linear_thin(x.clone(), w.clone()) * r.clone())
        .sum()
        .backward();
    let g_ref = (x.clone().matmul(w.transpose()) * r).sum().backward();
    assert!(rel_err(&grad(&x, &g), &grad(&x, &g_ref)) <= 1e-6);
}

/// A reconstructor-style attention (causal mask, per-key reweighting, cross-attention to
/// another sequence) through the fused kernel gives burn's tensor ops' output and gradients,
/// the reweighting's included (there it is a log-bias, here a product and a renormalisation).
#[test]
fn fused_attention_matches_burn_ops() {
    use crate::model::nn::{Attention, AttnOptions, causal_mask};
    let (b, lq, lk, d, heads) = (2, 9, 6, 32, 4);
    let mut init = Init::new(71, &device());
    let attn = Attention::new(d, heads, true, &mut init);
    let xq = random(&mut init, [b, lq, d]).require_grad();
    let xk = random(&mut init, [b, lk, d]).require_grad();
    // Weights as POI/WOI give them: positive, one of them zero (a pad).
    let mut weights = |n: usize| {
        let mut v: Vec<f32> = host(&random(&mut init, [b, n]))
            .iter()
            .map(|x| x.abs())
            .collect();
        v[1] = 0.0;
        Tensor::<2>::from_data(TensorData::new(v, [b, n]), &device()).require_grad()
    };
    let (w, wq) = (weights(lk), weights(lq));
    let r = random(&mut init, [b, lq, d]);
    for (cross, mask) in [(true, false), (false, true), (false, false)] {
        let run = |fused: bool| {
            let (kv, rw) = if cross {
                (xk.clone(), w.clone())
            } else {
                (xq.clone(), wq.clone())
            };
            let opts = AttnOptions {
                mask: mask.then(|| causal_mask(lq, &device())),
                reweight: Some(rw.clone()),
                dropout: 0.0,
            };
            let y = attn.forward_with(xq.clone(), kv.clone(), opts, true, fused);
            let g = (y.clone() * r.clone()).sum().backward();
            vec![
                host(&y),
                grad(&xq, &g),
                grad(&kv, &g),
                grad(&rw, &g),
                grad(&attn.in_proj_weight.val(), &g),
            ]
        };
        let (ours, reference) = (run(true), run(false));
        for (j, (o, r)) in ours.iter().zip(&reference).enumerate() {
            let e = rel_err(o, r);
            assert!(
                e <= 1e-5,
                "cross {cross} mask {mask}, tensor {j} (y, dq_in, dkv_in, dw, dW_in): {e:.2e}"
            );
        }
    }
}
