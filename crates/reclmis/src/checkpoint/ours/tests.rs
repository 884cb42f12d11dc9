use super::*;
use crate::data::dataset::Dataset;
use crate::data::synth::SynthConfig;
use crate::eval::{TextMode, evaluate, notes_for, predict_probs};
use crate::model::TextEncoderConfig;
use crate::model::weights::named_shapes;

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("reclmis-ours-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir is writable");
    dir
}

/// A small model with a frozen CLIP-shaped tower, so a run folder keeps it in a sibling.
fn small() -> ModelConfig {
    let mut m = ModelConfig::qata();
    m.image_size = 32;
    m.base_channels = 8;
    m.rec_layers = 1;
    m.text_encoder = TextEncoderConfig::Clip {
        vocab: 49408,
        context: 77,
        width: 64,
        layers: 1,
        heads: 1,
        embed: 64,
    };
    m
}

fn max_abs_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    a.iter()
        .flatten()
        .zip(b.iter().flatten())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn a_flipped_weight_bit_is_refused_on_load() {
    let device = Device::flex();
    let mut cfg = small();
    cfg.text_encoder = TextEncoderConfig::Builtin {
        width: 64,
        layers: 1,
        heads: 1,
    };
    let dir = scratch("sha");
    let path = dir.join("ckpt.safetensors");
    let model = RecLMIS::new(&cfg, 1, &device);
    save(
        &path,
        &model,
        &TrainState::default(),
        SaveOptions::default(),
    )
    .expect("saves");
    let raw = read_raw(&path).expect("an intact file reads");
    assert_eq!(raw.metadata[WEIGHTS_SHA256].len(), 64);
    // Flip one bit of the last weight byte (the data follows the JSON header).
    let mut bytes = std::fs::read(&path).expect("reads");
    let last = bytes.len() - 1;
    bytes[last] ^= 0x10;
    std::fs::write(&path, &bytes).expect("writes");
    match load(&path, &device) {
        Err(CheckpointError::Corrupt {
            expected, found, ..
        }) => {
            assert_eq!(expected, raw.metadata[WEIGHTS_SHA256]);
            assert_ne!(found, expected);
        }
        Err(e) => panic!("another error: {e}"),
        Ok(_) => panic!("a flipped bit loaded silently"),
    }
    // Without the checksum (a file from before it existed) the same bytes load.
    let st = SafeTensors::deserialize(&bytes).expect("still a safetensors file");
    let mut meta = raw.metadata.clone();
    meta.remove(WEIGHTS_SHA256);
    let views: Vec<(String, TensorView)> = st
        .tensors()
        .into_iter()
        .map(|(k, v)| {
            (
                k,
                TensorView::new(v.dtype(), v.shape().to_vec(), v.data()).unwrap(),
            )
        })
        .collect();
    let old = safetensors::serialize(views, Some(meta)).expect("serialises");
    std::fs::write(&path, old).expect("writes");
    assert!(load(&path, &device).is_ok());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn fp16_and_inference_only_exports_predict_like_the_original() {
    let device = Device::flex();
    let cfg = small();
    let model = RecLMIS::new(&cfg, 3, &device);
    // A run folder: best.safetensors points at its text tower.
    let run = scratch("export");
    let tower = "text_tower.safetensors";
    let opts = SaveOptions {
        text_tower_file: Some(tower),
        ..SaveOptions::default()
    };
    save(
        &run.join("best.safetensors"),
        &model,
        &TrainState::default(),
        opts,
    )
    .expect("saves");
    save_text_tower(&run.join(tower), &model).expect("saves");
    assert!(
        !read_raw(&run.join("best.safetensors"))
            .expect("reads")
            .tensors
            .contains_key("clip.token_embedding.weight")
    );

    let out = scratch("export-out");
    let (full, half, lean) = (
        out.join("full.safetensors"),
        out.join("half.safetensors"),
        out.join("lean.safetensors"),
    );
    let f16 = ExportOptions {
        dtype: StoreDtype::F16,
        inference_only: false,
    };
    let all = named_shapes(&model).len();
    let e = export(&run, &full, ExportOptions::default(), &device).expect("exports");
    assert_eq!((e.tensors, e.left_out, e.inference_only), (all, 0, false));
    assert!(e.source.ends_with("best.safetensors"));
    export(&run, &half, f16, &device).expect("exports");
    let lean_options = ExportOptions {
        inference_only: true,
        ..f16
    };
    let e = export(&run, &lean, lean_options, &device).expect("exports");
    // rec_text_trans1, rec_img_trans1 and clip.logit_scale go; the POI/WOI heads stay.
    assert!(e.inference_only && e.left_out > 2 && e.tensors + e.left_out == all);
    std::fs::remove_dir_all(&run).expect("rm");

    // Self-contained (the tower is embedded), float16 throughout, about half the size.
    let size = |p: &Path| std::fs::metadata(p).expect("exists").len();
    let bytes = std::fs::read(&half).expect("reads");
    let st = SafeTensors::deserialize(&bytes).expect("safetensors");
    assert!(st.tensors().iter().all(|(_, v)| v.dtype() == Dtype::F16));
    assert!(st.tensor("clip.token_embedding.weight").is_ok());
    assert!(size(&half) < size(&full) / 2 + 16 * 1024, "{}", size(&half));
    let raw = read_raw(&lean).expect("reads");
    assert_eq!(
        raw.metadata.get(INFERENCE_ONLY).map(String::as_str),
        Some("true")
    );
    assert!(!raw.metadata.contains_key("text_tower"));
    assert_eq!(raw.tensors.len(), e.tensors);
    assert!(raw.tensors.keys().all(|k| !is_training_only(k)));
    assert!(raw.tensors.contains_key("mlp_woi.0.weight"));
    assert!(size(&lean) < size(&half));

    // Loaded back as float32: every weight is its float16 rounding.
    let original: HashMap<String, HostTensor> = named_tensors(&model).into_iter().collect();
    let loaded = load(&half, &device).expect("loads");
    assert!(!loaded.inference_only);
    for (key, t) in named_tensors(&loaded.model) {
        let rounded: Vec<f32> = original[&key]
            .data
            .iter()
            .map(|&x| half::f16::from_f32(x).to_f32())
            .collect();
        assert_eq!(t.data, rounded, "{key}");
    }

    // Probabilities within 1e-2 of float32's, for the full and the inference-only file.
    let data = Dataset::synthetic(
        &SynthConfig {
            size: 32,
            seed: 1,
            ..Default::default()
        },
        0..6,
    );
    let notes = notes_for(&data, TextMode::Given, 0);
    let reference = predict_probs(&model, &data, &notes, 4);
    let from_full = load(&full, &device).expect("loads");
    assert_eq!(predict_probs(&from_full.model, &data, &notes, 4), reference);
    let lean_loaded = load(&lean, &device).expect("loads");
    assert!(lean_loaded.inference_only);
    for m in [&loaded, &lean_loaded] {
        let probs = predict_probs(&m.model, &data, &notes, 4);
        let err = max_abs_diff(&probs, &reference);
        assert!(err < 1e-2, "float16 moves a probability by {err}");
    }
    // The inference-only model evaluates exactly as the full float16 one: what it lacks is
    // off the segmentation path.
    let a = evaluate(&loaded.model, &data, TextMode::Given, 0, 4);
    let b = evaluate(&lean_loaded.model, &data, TextMode::Given, 0, 4);
    assert_eq!((a.n, a.dice, a.dice_pooled), (b.n, b.dice, b.dice_pooled));
    std::fs::remove_dir_all(&out).ok();
}

#[test]
fn only_inference_only_files_may_lack_training_tensors() {
    let device = Device::flex();
    let cfg = small();
    let model = RecLMIS::new(&cfg, 4, &device);
    let dir = scratch("missing");
    let full = dir.join("full.safetensors");
    save(
        &full,
        &model,
        &TrainState::default(),
        SaveOptions::default(),
    )
    .expect("saves");
    let raw = read_raw(&full).expect("reads");
    let write_without =
        |name: &str, drop: &dyn Fn(&str) -> bool, meta: &HashMap<String, String>| {
            let mut tensors: Vec<(String, HostTensor)> = raw
                .tensors
                .iter()
                .filter(|(k, _)| !drop(k))
                .map(|(k, t)| (k.clone(), t.clone()))
                .collect();
            tensors.sort_by(|a, b| a.0.cmp(&b.0));
            let path = dir.join(name);
            std::fs::write(&path, encode(&tensors, meta.clone()).expect("encodes")).expect("write");
            path
        };
    let no_rec = |k: &str| k.starts_with("rec_img_trans1.");
    // A normal checkpoint without a reconstructor: an error naming a missing tensor.
    let path = write_without("plain.safetensors", &no_rec, &raw.metadata);
    match load(&path, &device) {
        Err(CheckpointError::Missing { first, count, .. }) => {
            assert!(first.starts_with("rec_img_trans1.") && count > 1, "{first}");
        }
        other => panic!("expected a missing tensor, got {:?}", other.err()),
    }
    // Marked inference-only: the reconstructor is initialised instead.
    let mut marked = raw.metadata.clone();
    marked.insert(INFERENCE_ONLY.into(), "true".into());
    let path = write_without("marked.safetensors", &no_rec, &marked);
    assert!(load(&path, &device).expect("loads").inference_only);
    // Even marked, a tensor on the inference path must be there.
    let path = write_without("no-outc.safetensors", &|k| k.starts_with("outc."), &marked);
    match load(&path, &device) {
        Err(CheckpointError::Missing { first, .. }) => assert!(first.starts_with("outc.")),
        other => panic!("expected a missing tensor, got {:?}", other.err()),
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn headers_claiming_a_trillion_elements_are_refused_before_allocating() {
    let dir = scratch("huge");
    let t0 = std::time::Instant::now();
    let good = dir.join("good.safetensors");
    let model = RecLMIS::new(&small(), 1, &Device::flex());
    save(
        &good,
        &model,
        &TrainState::default(),
        SaveOptions::default(),
    )
    .expect("saves");
    let bytes = std::fs::read(&good).expect("reads");
    let (_, header) = SafeTensors::read_metadata(&bytes).expect("our header");
    let meta = serde_json::to_value(header.metadata()).expect("metadata as JSON");
    // A safetensors file: header length, JSON header, data.
    let file = |name: &str, header_len: Option<u64>, tensor: serde_json::Value| {
        let json = serde_json::json!({ "__metadata__": meta, "down1.w": tensor }).to_string();
        let mut out = header_len
            .unwrap_or(json.len() as u64)
            .to_le_bytes()
            .to_vec();
        out.extend_from_slice(json.as_bytes());
        out.extend_from_slice(&[0; 16]);
        let path = dir.join(name);
        std::fs::write(&path, out).expect("write");
        path
    };
    let trillion = serde_json::json!([1_000_000, 1_000_000]);
    let cases = [
        // The shape and its byte range agree, the file is 16 bytes of data.
        file(
            "range.safetensors",
            None,
            serde_json::json!({"dtype": "F32", "shape": trillion, "data_offsets": [0, 4_000_000_000_000u64]}),
        ),
        // The byte range fits the file, the shape claims 10^12 elements.
        file(
            "shape.safetensors",
            None,
            serde_json::json!({"dtype": "F32", "shape": trillion, "data_offsets": [0, 16]}),
        ),
        // The header itself claims 10^12 bytes.
        file(
            "header.safetensors",
            Some(1_000_000_000_000),
            serde_json::json!({"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}),
        ),
    ];
    for path in &cases {
        for err in [
            read_raw(path).err().map(|e| e.to_string()),
            load(path, &Device::flex()).err().map(|e| e.to_string()),
        ] {
            let msg = err.expect("refused");
            assert!(msg.contains(&path.display().to_string()), "{msg}");
            assert!(msg.contains("is not a reclmis checkpoint"), "{msg}");
        }
    }
    // A config claiming a model of 10^12-scale weights is refused before the model is built.
    for (field, value) in [("base_channels", 1_000_000u64), ("image_size", 1 << 40)] {
        let mut cfg: serde_json::Value =
            serde_json::from_str(meta["config"].as_str().expect("config")).expect("JSON");
        cfg[field] = value.into();
        let mut meta = meta.clone();
        meta["config"] = cfg.to_string().into();
        // As a file written without a checksum (or one rewritten with a matching one) would be.
        meta.as_object_mut().expect("a map").remove(WEIGHTS_SHA256);
        let mut json = serde_json::json!({ "__metadata__": meta });
        json["down1.w"] =
            serde_json::json!({"dtype": "F32", "shape": [4], "data_offsets": [0, 16]});
        let json = json.to_string();
        let mut out = (json.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(json.as_bytes());
        out.extend_from_slice(&[0; 16]);
        let path = dir.join(format!("{field}.safetensors"));
        std::fs::write(&path, out).expect("write");
        let msg = load(&path, &Device::flex())
            .err()
            .expect("refused")
            .to_string();
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(
            msg.contains(&format!("{field} {value} is over the most")),
            "{msg}"
        );
    }
    assert!(t0.elapsed() < std::time::Duration::from_secs(10));
    std::fs::remove_dir_all(dir).expect("rm");
}
