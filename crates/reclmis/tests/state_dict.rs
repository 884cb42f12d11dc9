//! The model's tensors carry exactly the authors' state-dict keys and shapes
//! (`reclmis-{qata,mosmed}-state-dict.tsv`), minus what we never build.

use reclmis::model::{ModelConfig, RecLMIS, weights::named_shapes};
use std::path::PathBuf;

fn shared() -> PathBuf {
    std::env::var_os("RECLMIS_SHARED")
        .map(Into::into)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared"))
}

fn check(cfg: ModelConfig, tsv: &str) {
    let text = std::fs::read_to_string(shared().join("reference").join(tsv)).unwrap();
    let expected: Vec<(String, Vec<usize>)> = text
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            let key = f[0];
            if key.starts_with("clip.visual.") || key.ends_with("num_batches_tracked") {
                return None;
            }
            let shape = if f[1].is_empty() || f[1] == "scalar" || f[1] == "()" {
                vec![]
            } else {
                f[1].split('x').map(|d| d.parse().unwrap()).collect()
            };
            Some((key.to_string(), shape))
        })
        .collect();
    let model = RecLMIS::new(&cfg, 0, &burn::tensor::Device::flex());
    let mut ours = named_shapes(&model);
    let mut exp = expected.clone();
    ours.sort();
    exp.sort();
    for ((k1, s1), (k2, s2)) in ours.iter().zip(exp.iter()) {
        let s2 = if s2.is_empty() { vec![1] } else { s2.clone() };
        assert_eq!((k1, s1), (k2, &s2), "first key or shape that differs");
    }
    assert_eq!(ours.len(), exp.len());
}

#[test]
fn qata_keys_and_shapes_match_the_authors() {
    check(ModelConfig::qata(), "reclmis-qata-state-dict.tsv");
}

#[test]
fn mosmed_keys_and_shapes_match_the_authors() {
    check(ModelConfig::mosmed(), "reclmis-mosmed-state-dict.tsv");
}
