//! Parity with the authors' code: their checkpoint goes through our importer, their four inputs
//! through our model, and every tensor their code computed must come out (official-parity
//! README: eval mode, then training mode with dropout 0, then gradients of the total loss).

use std::collections::HashMap;
use std::path::PathBuf;

use burn::tensor::{Device, Tensor, TensorData};
use reclmis::checkpoint::{import::host_tensors, torch::read_checkpoint};
use reclmis::device::DeviceChoice;
use reclmis::model::weights::{load_tensors, named_grads};
use reclmis::model::{Branches, ModelConfig, Outputs, RecLMIS, TokenBatch, TokenMask, to_vec};
use safetensors::SafeTensors;

/// `RECLMIS_TEST_DEVICE` (`cpu`, the default, or `gpu[:N]` in a build with the `gpu` feature):
/// the same fixtures on another device (docs/gpu.md).
fn test_device() -> Device {
    let choice: DeviceChoice = std::env::var("RECLMIS_TEST_DEVICE")
        .as_deref()
        .unwrap_or("cpu")
        .parse()
        .unwrap();
    reclmis::device::open(choice).unwrap_or_else(|e| panic!("RECLMIS_TEST_DEVICE: {e}"))
}

fn shared() -> PathBuf {
    std::env::var_os("RECLMIS_SHARED")
        .map(Into::into)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared"))
}

struct Io {
    f32s: HashMap<String, (Vec<usize>, Vec<f32>)>,
    ints: HashMap<String, (Vec<usize>, Vec<i64>)>,
}

fn read_io(path: &std::path::Path) -> Io {
    let bytes = std::fs::read(path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut io = Io {
        f32s: HashMap::new(),
        ints: HashMap::new(),
    };
    for (name, view) in st.tensors() {
        let shape = view.shape().to_vec();
        let d = view.data();
        match view.dtype() {
            safetensors::Dtype::F32 => {
                let v = d
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                    .collect();
                io.f32s.insert(name, (shape, v));
            }
            safetensors::Dtype::I64 => {
                let v = d
                    .chunks_exact(8)
                    .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
                    .collect();
                io.ints.insert(name, (shape, v));
            }
            safetensors::Dtype::U8 => {
                io.ints
                    .insert(name, (shape, d.iter().map(|&x| x as i64).collect()));
            }
            other => panic!("unexpected dtype {other:?}"),
        }
    }
    io
}

/// Compares in data-flow order and stops at the first tensor off by more than `tol` relative to
/// the reference's largest magnitude.
struct Checker<'a> {
    io: &'a Io,
    report: Vec<String>,
}

impl Checker<'_> {
    fn check(&mut self, name: &str, ours: &[f32], tol: f32) {
        let (_, theirs) = self
            .io
            .f32s
            .get(name)
            .unwrap_or_else(|| panic!("io.safetensors has no '{name}'"));
        assert_eq!(ours.len(), theirs.len(), "{name}: element count");
        let scale = theirs.iter().fold(f32::MIN_POSITIVE, |m, v| m.max(v.abs()));
        let (mut worst, mut at) = (0.0f32, 0);
        for (i, (a, b)) in ours.iter().zip(theirs).enumerate() {
            let e = (a - b).abs();
            if e > worst || e.is_nan() {
                worst = e;
                at = i;
            }
        }
        self.report.push(format!(
            "{name:<28} max abs err {worst:.3e} (scale {scale:.3e})"
        ));
        if std::env::var_os("PARITY_ALL").is_some() {
            if worst > tol * scale {
                self.report.push(format!("  ^ FAIL {name}"));
            }
            return;
        }
        assert!(
            worst <= tol * scale,
            "first tensor that differs: '{name}': max abs error {worst:.3e} at flat index {at} \
             (ours {}, theirs {}), tolerance {:.1e}\n{}",
            ours[at],
            theirs[at],
            tol * scale,
            self.report.join("\n")
        );
    }
}

/// Spatial means `[B, C]` of a `[B, C, H, W]` map.
fn spatial_mean(t: &Tensor<4>) -> Vec<f32> {
    to_vec(&t.clone().mean_dims(&[2, 3]))
}

fn mask_of(io: &Io, name: &str) -> TokenMask {
    let (shape, v) = &io.ints[name];
    TokenMask {
        rows: v
            .chunks(shape[1])
            .map(|r| r.iter().map(|&x| x as u8).collect())
            .collect(),
    }
}

fn check_outputs(c: &mut Checker, out: &Outputs, prefix: &str, eval: bool) {
    let p = |n: &str| format!("{prefix}{n}");
    if eval {
        c.check("text_hidden", &to_vec(&out.text_feat_clip), 1e-5);
        // `text_feat` is stored as [B, D, L].
        c.check(
            "text_feat",
            &to_vec(&out.text_feat.clone().swap_dims(1, 2)),
            1e-5,
        );
        for (name, t) in ["x1_mean", "feat1_mean", "feat2_mean", "feat3_mean"]
            .iter()
            .zip(&out.enc)
        {
            c.check(name, &spatial_mean(t), 1e-4);
        }
        c.check("feat4", &to_vec(&out.enc[4]), 1e-4);
        c.check("inter_img", &to_vec(&out.inter_img), 1e-4);
        let ex = out.explain.as_ref().expect("explain branch ran");
        c.check("inter_text", &to_vec(&ex.inter_text), 1e-4);
    }
    let ex = out.explain.as_ref().expect("explain branch ran");
    c.check(&p("poi"), &to_vec(&ex.poi), 1e-4);
    c.check(&p("woi"), &to_vec(&ex.woi), 1e-4);
    let aux = out.aux.as_ref().expect("aux branch ran");
    c.check(&p("rec_img"), &to_vec(&aux.rec_img), 1e-4);
    c.check(&p("rec_text"), &to_vec(&aux.rec_text), 1e-4);
    if eval {
        for (name, t) in ["up4_mean", "up3_mean", "up2_mean", "up1_mean"]
            .iter()
            .zip(&out.up)
        {
            c.check(name, &spatial_mean(t), 1e-4);
        }
        c.check("logits", &to_vec(&out.logits), 1e-4);
    }
    c.check(&p("probs"), &to_vec(&out.probs), 1e-4);
    c.check(&p("loss_ccl"), &to_vec(&aux.loss_ccl), 1e-4);
    c.check(&p("loss_text_rec"), &to_vec(&aux.loss_text_rec), 1e-4);
    c.check(&p("loss_img_rec"), &to_vec(&aux.loss_img_rec), 1e-4);
}

fn parity(preset: &str, cfg: ModelConfig) {
    let dir = shared().join("reference/official-parity").join(preset);
    let sd = read_checkpoint(&dir.join("best_model-RecLMIS.pth.tar")).unwrap();
    let source = host_tensors(&sd);
    let io = read_io(&dir.join("io.safetensors"));
    let device = test_device().autodiff();

    let model = RecLMIS::new(&cfg, 0, &device);
    let (mut model, report) = load_tensors(model, &source).unwrap();
    assert!(
        report.missing.is_empty(),
        "model keys absent from the checkpoint: {:?}",
        report.missing
    );
    assert!(report.unused.is_empty(), "unused: {:?}", report.unused);
    model.clip = burn::module::Module::set_require_grad(model.clip, false);

    let (ishape, ivals) = &io.f32s["image"];
    let images = || {
        Tensor::<4>::from_data(
            TensorData::new(ivals.clone(), [ishape[0], ishape[1], ishape[2], ishape[3]]),
            &device,
        )
    };
    let (tshape, tids) = &io.ints["text_token"];
    let tokens = TokenBatch {
        ids: tids.clone(),
        batch: tshape[0],
        len: tshape[1],
    };
    let masks = || Branches::AuxWithMasks {
        img: mask_of(&io, "mask_img"),
        text: mask_of(&io, "mask_text"),
    };
    let (lshape, lvals) = &io.ints["label"];
    let label = Tensor::<3>::from_data(
        TensorData::new(
            lvals.iter().map(|&v| v as f32).collect::<Vec<_>>(),
            [lshape[0], lshape[1], lshape[2]],
        ),
        &device,
    );
    let mut c = Checker {
        io: &io,
        report: Vec::new(),
    };

    // Eval mode: BatchNorm on running statistics, no dropout.
    let eval_model = burn::module::Module::valid(&model);
    let tfc = eval_model.encode_text(&tokens, false);
    let text_cls: Vec<f32> = {
        let h = to_vec(&tfc);
        let (b, l, d) = (tokens.batch, tokens.len, cfg.d_model());
        (0..b)
            .flat_map(|s| {
                let row = &tokens.ids[s * l..(s + 1) * l];
                let eot = (0..l).max_by_key(|&j| row[j]).unwrap();
                h[(s * l + eot) * d..(s * l + eot + 1) * d].to_vec()
            })
            .collect()
    };
    c.check("text_cls", &text_cls, 1e-5);
    let started = std::time::Instant::now();
    let out = eval_model.forward(images(), tfc, &tokens, masks(), false);
    let logits = to_vec(&out.logits);
    let eval_forward = started.elapsed();
    drop(logits);
    check_outputs(&mut c, &out, "", true);
    let crit = eval_model.losses(&out, label.clone());
    c.check("loss_criterion", &to_vec(&crit.criterion), 1e-4);
    c.check("loss_total", &to_vec(&crit.total), 1e-4);

    // Training mode (batch statistics), dropout 0, the same masks; then gradients.
    let mut model = model;
    model.cfg = ModelConfig {
        dropout: 0.0,
        head_dropout: 0.0,
        ..cfg.clone()
    };
    let started = std::time::Instant::now();
    let tfc = model.encode_text(&tokens, true);
    let out = model.forward(images(), tfc, &tokens, masks(), true);
    check_outputs(&mut c, &out, "train/", false);
    let losses = model.losses(&out, label);
    c.check("train/loss_criterion", &to_vec(&losses.criterion), 1e-4);
    c.check("train/loss_total", &to_vec(&losses.total), 1e-4);

    let grads = losses.total.backward();
    let ours: HashMap<String, Vec<f32>> = named_grads(&model, &grads)
        .into_iter()
        .map(|(k, t)| (k, t.data))
        .collect();
    // Read back to the host, so a device that queues work has finished it.
    let train_step = started.elapsed();
    assert!(
        !ours.keys().any(|k| k.starts_with("clip.")),
        "the frozen text tower received a gradient"
    );
    let mut grad_names: Vec<&String> = io.f32s.keys().filter(|k| k.starts_with("grad/")).collect();
    grad_names.sort();
    for name in grad_names {
        let key = &name["grad/".len()..];
        let g = ours
            .get(key)
            .unwrap_or_else(|| panic!("no gradient reached '{key}'"));
        let theirs = &io.f32s[name.as_str()].1;
        if let Some(dir) = std::env::var_os("PARITY_DUMP") {
            // Our gradient as raw little-endian f32, for bench/grads_float64.py.
            let bytes: Vec<u8> = g[..theirs.len()]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect();
            let file = std::path::Path::new(&dir).join(format!("{preset}-{key}.f32"));
            std::fs::write(&file, bytes).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        }
        let n = theirs.len();
        if theirs.iter().all(|v| v.abs() < 1e-6) {
            // Zero in exact arithmetic (a conv bias before a training-mode BatchNorm, the last
            // bias before a softmax): both sides are rounding noise, so only its size is checked.
            let worst = g[..n].iter().fold(0.0f32, |m, v| m.max(v.abs()));
            assert!(
                worst < 1e-6,
                "{name}: should be ~0, ours reaches {worst:.3e}"
            );
            c.report
                .push(format!("{name:<28} ~0 (ours max {worst:.1e})"));
            continue;
        }
        // Behind a training-mode BatchNorm these gradients are sums with heavy cancellation, so
        // float32 rounding decides their small entries, and the reference itself is that far from
        // the exact values. `bench/grads_float64.py` (the model in float64, against the stored
        // gradients and ours dumped with PARITY_DUMP=<dir>) measured, of each tensor's max, on
        // qata: `up4.pixModule.bottleneck.0.weight` reference 7.4e-3 from float64, ours 1.8e-3
        // (so ours is 9.1e-3 from the reference); `inc.conv.weight` 3.0e-3 and 1.9e-3. The
        // tolerance there is the reference's error plus ours, with a margin; 2e-3 elsewhere.
        let tol = if key.contains("pixModule.bottleneck") {
            1.1e-2
        } else if key.starts_with("inc.") {
            7.5e-3
        } else {
            2e-3
        };
        c.check(name, &g[..n], tol);
    }
    println!(
        "{preset} on {}: eval forward {eval_forward:.2?}, training forward + backward \
         {train_step:.2?}\n{}",
        reclmis::device::describe(&device),
        c.report.join("\n")
    );
}

#[test]
fn qata_matches_the_authors_code() {
    parity("qata", ModelConfig::qata());
}

#[test]
fn mosmed_matches_the_authors_code() {
    parity("mosmed", ModelConfig::mosmed());
}
