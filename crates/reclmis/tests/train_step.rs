//! One Adam step on a small batch: all five losses finite and non-zero, every trainable tensor
//! (reconstructors and POI/WOI heads included) receives a gradient, the frozen text tower none.

use burn::module::Module;
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::{Device, Tensor, TensorData};
use reclmis::model::weights::{named_grads, named_tensors};
use reclmis::model::{Branches, ModelConfig, RecLMIS, TokenBatch, to_vec};
use reclmis::tokenizer::Tokenizer;

fn small_config(clip: bool) -> ModelConfig {
    let mut cfg = ModelConfig::qata();
    cfg.image_size = 32;
    cfg.base_channels = 8;
    cfg.rec_layers = 2;
    if clip {
        // A tiny frozen CLIP-shaped tower of width 64 = 8·base.
        cfg.text_encoder = reclmis::model::TextEncoderConfig::Clip {
            vocab: 49408,
            context: 77,
            width: 64,
            layers: 1,
            heads: 2,
            embed: 64,
        };
        cfg
    } else {
        cfg.with_builtin_text(1)
    }
}

fn batch(cfg: &ModelConfig, device: &Device) -> (Tensor<4>, TokenBatch, Tensor<3>) {
    let s = cfg.image_size;
    let b = 3;
    let img: Vec<f32> = (0..b * 3 * s * s)
        .map(|i| ((i * 7919) % 255) as f32 / 255.0)
        .collect();
    let mask: Vec<f32> = (0..b * s * s)
        .map(|i| (((i % s) > s / 3 && (i / s) % s > s / 2) as u8) as f32)
        .collect();
    let notes = [
        "Bilateral pulmonary infection, two infected areas, upper left lung and upper right lung.",
        "Unilateral pulmonary infection, one infected area, lower left lung.",
        "Unilateral pulmonary infection, one infected area, middle right lung.",
    ];
    let tok = Tokenizer::clip();
    let rows: Vec<Vec<i64>> = notes
        .iter()
        .map(|n| {
            tok.tokenize(&reclmis::tokenizer::pad_note(n), cfg.context)
                .ids
        })
        .collect();
    (
        Tensor::from_data(TensorData::new(img, [b, 3, s, s]), device),
        TokenBatch::new(&rows),
        Tensor::from_data(TensorData::new(mask, [b, s, s]), device),
    )
}

fn step(clip: bool) {
    let cfg = small_config(clip);
    cfg.validate().unwrap();
    let device = Device::flex().autodiff();
    let mut model = RecLMIS::new(&cfg, 3, &device);
    if cfg.text_encoder.is_frozen() {
        model.clip = model.clip.set_require_grad(false);
    }
    let before = named_tensors(&model);
    let (images, tokens, target) = batch(&cfg, &device);
    let tfc = model.encode_text(&tokens, true);
    let out = model.forward(images, tfc, &tokens, Branches::Aux { seed: 1 }, true);
    let losses = model.losses(&out, target);
    for (name, l) in [
        ("criterion", Some(&losses.criterion)),
        ("ccl", losses.ccl.as_ref()),
        ("text_rec", losses.text_rec.as_ref()),
        ("img_rec", losses.img_rec.as_ref()),
    ] {
        let v = to_vec(l.unwrap_or_else(|| panic!("{name} missing")))[0];
        assert!(v.is_finite() && v != 0.0, "{name} = {v}");
    }
    let grads = losses.total.backward();
    let with_grad: std::collections::HashSet<String> = named_grads(&model, &grads)
        .into_iter()
        .filter(|(_, g)| g.data.iter().any(|v| *v != 0.0))
        .map(|(k, _)| k)
        .collect();
    // The last bias before a softmax (POI over patches, WOI over words) has a zero gradient by
    // construction: softmax ignores a shift shared by all its inputs.
    let shift_invariant = |k: &str| k == "mlp_visual.2.bias" || k == "mlp_woi.2.bias";
    for (key, _) in &before {
        if shift_invariant(key) {
            continue;
        }
        let never = key.contains("running_")
            || key.contains("conv_sig")
            // decoder1 has no memory, so its cross-attention is never called (§1.9).
            || key.contains("decoder1.") && key.contains("encoder_attn")
            || key == "clip.logit_scale";
        let frozen = cfg.text_encoder.is_frozen() && key.starts_with("clip.");
        if frozen || never {
            assert!(
                !with_grad.contains(key),
                "{key} must not receive a gradient"
            );
        } else {
            assert!(with_grad.contains(key), "{key} received no gradient");
        }
    }
    let gp = GradientsParams::from_grads(grads, &model);
    let mut optim = AdamConfig::new().with_epsilon(1e-8).init();
    let model = optim.step(3e-4, model, gp);
    let after: std::collections::HashMap<String, Vec<f32>> = named_tensors(&model)
        .into_iter()
        .map(|(k, t)| (k, t.data))
        .collect();
    for (key, t) in &before {
        if shift_invariant(key) {
            continue;
        }
        let moved = after[key] != t.data;
        if with_grad.contains(key) {
            assert!(moved, "{key} did not move after the Adam step");
        } else if !key.contains("running_") {
            assert!(!moved, "{key} moved without a gradient");
        }
    }
}

#[test]
fn adam_step_trains_everything_but_the_frozen_clip_tower() {
    step(true);
}

#[test]
fn adam_step_trains_the_builtin_text_encoder() {
    step(false);
}

#[test]
fn text_free_baseline_ignores_the_note_and_trains() {
    let mut cfg = small_config(false);
    cfg.text_free = true;
    let device = Device::flex().autodiff();
    let model = RecLMIS::new(&cfg, 3, &device);
    let (images, tokens, target) = batch(&cfg, &device);
    let mut other = tokens.clone();
    other.ids.reverse();
    let run = |t: &TokenBatch| {
        let mut cache = reclmis::step::TextCache::default();
        let tfc = cache.encode(&model, t, true);
        model.forward(images.clone(), tfc, t, Branches::Aux { seed: 1 }, true)
    };
    let (a, b) = (run(&tokens), run(&other));
    assert_eq!(to_vec(&a.probs), to_vec(&b.probs));
    assert!(a.aux.is_none() && a.explain.is_none());
    let losses = model.losses(&a, target);
    assert!(losses.ccl.is_none() && losses.text_rec.is_none());
    let grads = losses.total.backward();
    let with_grad: Vec<String> = named_grads(&model, &grads)
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert!(with_grad.iter().any(|k| k == "down4.nConvs.1.conv.weight"));
    assert!(
        with_grad
            .iter()
            .all(|k| !k.starts_with("interact.") && !k.starts_with("clip."))
    );
}
