//! `import` of CLIP text weights: OpenAI's TorchScript archive and HF safetensors give the text
//! features the authors' text tower computes (clip-formats/expected.safetensors).

use std::path::PathBuf;

use burn::tensor::Device;
use reclmis::checkpoint::import::read_clip_text;
use reclmis::model::init::Init;
use reclmis::model::text::TextTower;
use reclmis::model::weights::load_tensors;
use reclmis::model::{TokenBatch, to_vec};
use safetensors::SafeTensors;

fn shared() -> PathBuf {
    std::env::var_os("RECLMIS_SHARED")
        .map(Into::into)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared"))
}

fn expected() -> (TokenBatch, Vec<f32>, Vec<f32>) {
    let bytes =
        std::fs::read(shared().join("reference/clip-formats/expected.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let ints = |n: &str| -> (Vec<usize>, Vec<i64>) {
        let v = st.tensor(n).unwrap();
        let data = match v.dtype() {
            safetensors::Dtype::I64 => v
                .data()
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
                .collect(),
            safetensors::Dtype::I32 => v
                .data()
                .chunks_exact(4)
                .map(|c| i32::from_le_bytes(c.try_into().unwrap()) as i64)
                .collect(),
            d => panic!("{n}: {d:?}"),
        };
        (v.shape().to_vec(), data)
    };
    let floats = |n: &str| -> Vec<f32> {
        st.tensor(n)
            .unwrap()
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    };
    let (shape, ids) = ints("text_token");
    (
        TokenBatch {
            ids,
            batch: shape[0],
            len: shape[1],
        },
        floats("text_hidden"),
        floats("text_cls"),
    )
}

fn check(file: &str) {
    let (tensors, cfg) =
        read_clip_text(&shared().join("reference/clip-formats").join(file)).unwrap();
    let device = Device::flex();
    let (tokens, hidden, cls) = expected();
    let tower = TextTower::new(&cfg, tokens.len, &mut Init::new(0, &device));
    let (tower, report) = load_tensors(tower, &strip(&tensors)).unwrap();
    assert!(report.missing.is_empty(), "missing {:?}", report.missing);
    let ours = to_vec(&tower.forward(&tokens, false));
    let worst = ours
        .iter()
        .zip(&hidden)
        .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(worst < 1e-5, "{file}: text_hidden max abs error {worst:e}");
    // cls = the row at the largest id (EOT).
    let (l, e) = (tokens.len, ours.len() / (tokens.batch * tokens.len));
    for b in 0..tokens.batch {
        let row = &tokens.ids[b * l..(b + 1) * l];
        let eot = (0..l).max_by_key(|&j| row[j]).unwrap();
        for k in 0..e {
            let d = (ours[(b * l + eot) * e + k] - cls[b * e + k]).abs();
            assert!(d < 1e-5, "{file}: text_cls[{b},{k}] off by {d:e}");
        }
    }
}

/// The tower's own keys are the `clip.*` keys without the prefix.
fn strip(
    t: &std::collections::HashMap<String, reclmis::model::weights::HostTensor>,
) -> std::collections::HashMap<String, reclmis::model::weights::HostTensor> {
    t.iter()
        .filter_map(|(k, v)| k.strip_prefix("clip.").map(|k| (k.to_string(), v.clone())))
        .collect()
}

#[test]
fn torchscript_clip_gives_the_expected_text_features() {
    check("ViT-tiny.pt");
}

#[test]
fn hf_safetensors_clip_gives_the_expected_text_features() {
    check("hf/model.safetensors");
}
