//! Configs from presets, TOML files and overrides, in that order.

use std::path::Path;

use crate::Error;
use crate::data::dataset::Augment;
use crate::model::{Parity, Preset, TextEncoderConfig};
use crate::train::TrainConfig;

/// Deep-merges `over` into `base`: tables recursively, everything else replaced.
fn merge(base: &mut toml::Value, over: toml::Value) {
    match (base, over) {
        (toml::Value::Table(b), toml::Value::Table(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(slot) => merge(slot, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (slot, v) => *slot = v,
    }
}

/// `base` with the TOML file at `path` deep-merged over it: a file may set any subset of the
/// fields of a run's `config.toml`.
pub fn merged_config<T>(base: &T, path: &Path) -> Result<T, Error>
where
    T: serde::Serialize + serde::de::DeserializeOwned,
{
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let usage = |e: &dyn std::fmt::Display| Error::Usage(format!("{}: {e}", path.display()));
    let over: toml::Value = toml::from_str(&text).map_err(|e| usage(&e))?;
    merge_over(base, over).map_err(|e| usage(&e))
}

/// `base` with `over` (a table shaped like the config) deep-merged over it.
fn merge_over<T>(base: &T, over: toml::Value) -> Result<T, toml::de::Error>
where
    T: serde::Serialize + serde::de::DeserializeOwned,
{
    let mut merged = toml::Value::try_from(base).expect("a config converts to TOML");
    merge(&mut merged, over);
    merged.try_into()
}

/// What is merged over a preset before the overrides: a TOML file, or a table given in memory
/// (e.g. a Python dict) with the same shape.
#[derive(Clone, Debug)]
pub enum ConfigLayer<'a> {
    File(&'a Path),
    Table(serde_json::Value),
}

/// An image side the model takes: a positive multiple of 16 (four 2× poolings).
pub fn check_image_size(s: usize) -> Result<(), Error> {
    if s == 0 || !s.is_multiple_of(16) {
        return Err(Error::Usage(format!(
            "--image-size {s} is not a positive multiple of 16"
        )));
    }
    Ok(())
}

/// What a user may set on top of a preset and a config file (`None`/`false`: keep). The field
/// names are the command line's flags with `_` for `-`.
#[derive(Clone, Debug, Default, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainOverrides {
    pub image_size: Option<usize>,
    pub base_channels: Option<usize>,
    pub clean: bool,
    pub text_free: bool,
    pub canonical_notes: bool,
    pub paraphrase: Option<f64>,
    pub side_focus: Option<f64>,
    pub epochs: Option<usize>,
    pub batch_size: Option<usize>,
    pub micro_batches: Option<usize>,
    pub lr: Option<f64>,
    pub seed: Option<u64>,
    pub augment: Option<Augment>,
    pub max_train: Option<usize>,
    pub max_val: Option<usize>,
    pub time_budget_min: Option<f64>,
}

/// The training config: the preset, then the TOML file, then the overrides. Without CLIP weights
/// (`with_clip = false`) the text tower is the built-in encoder, sized to the model.
pub fn train_config(
    preset: Preset,
    with_clip: bool,
    layer: Option<ConfigLayer>,
    o: &TrainOverrides,
) -> Result<TrainConfig, Error> {
    let mut cfg = TrainConfig::preset(preset);
    if !with_clip {
        cfg.model = cfg.model.clone().with_builtin_text(4);
    }
    match layer {
        Some(ConfigLayer::File(path)) => cfg = merged_config(&cfg, path)?,
        Some(ConfigLayer::Table(table)) => {
            let usage = |e: &dyn std::fmt::Display| Error::Usage(format!("config: {e}"));
            let over = toml::Value::try_from(table).map_err(|e| usage(&e))?;
            cfg = merge_over(&cfg, over).map_err(|e| usage(&e))?;
        }
        None => {}
    }
    let m = &mut cfg.model;
    if let Some(s) = o.image_size {
        check_image_size(s)?;
        m.image_size = s;
    }
    if let Some(b) = o.base_channels {
        if b < 8 {
            return Err(Error::Usage(format!("--base-channels {b} is below 8")));
        }
        m.base_channels = b;
        if !m.text_encoder.is_frozen() {
            let layers = match m.text_encoder {
                TextEncoderConfig::Builtin { layers, .. } => layers,
                _ => 4,
            };
            *m = m.clone().with_builtin_text(layers);
        }
    }
    if o.clean {
        m.parity = Parity::Clean;
    }
    if o.text_free {
        m.text_free = true;
    }
    if o.canonical_notes {
        m.notes.canonical = true;
    }
    if let Some(p) = o.paraphrase {
        cfg.paraphrase = p;
    }
    if let Some(p) = o.side_focus {
        cfg.side_focus = p;
    }
    if let Some(e) = o.epochs {
        cfg.epochs = e;
    }
    if let Some(b) = o.batch_size {
        if b == 0 {
            return Err(Error::Usage("--batch-size must be at least 1".into()));
        }
        cfg.batch_size = b;
    }
    if let Some(k) = o.micro_batches {
        if k == 0 {
            return Err(Error::Usage("--micro-batches must be at least 1".into()));
        }
        cfg.micro_batches = k;
    }
    if let Some(lr) = o.lr {
        cfg.lr = lr;
    }
    if let Some(s) = o.seed {
        cfg.seed = s;
    }
    if let Some(a) = o.augment {
        cfg.augment = a;
    }
    cfg.max_train = o.max_train.or(cfg.max_train);
    cfg.max_val = o.max_val.or(cfg.max_val);
    if let Some(m) = o.time_budget_min {
        cfg.time_budget_s = Some(m * 60.0);
    }
    cfg.validate()?;
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_overrides_the_preset_and_flags_override_the_file() {
        let dir = std::env::temp_dir().join(format!("reclmis-app-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("over.toml");
        std::fs::write(&file, "epochs = 7\nlr = 0.001\n[model]\nimage_size = 64\n").unwrap();
        let o = TrainOverrides {
            lr: Some(0.002),
            ..Default::default()
        };
        let cfg = train_config(Preset::Qata, false, Some(ConfigLayer::File(&file)), &o).unwrap();
        assert_eq!((cfg.epochs, cfg.lr, cfg.model.image_size), (7, 0.002, 64));
        // Untouched fields keep the preset's.
        assert_eq!(cfg.batch_size, TrainConfig::preset(Preset::Qata).batch_size);
        std::fs::write(&file, "epochs = \"many\"\n").unwrap();
        let e = train_config(Preset::Qata, false, Some(ConfigLayer::File(&file)), &o).unwrap_err();
        assert!(
            matches!(e, Error::Usage(ref m) if m.contains("over.toml")),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_table_merges_like_a_file_and_overrides_read_from_names() {
        let table = serde_json::json!({"epochs": 3, "model": {"rec_layers": 1}});
        let o: TrainOverrides = serde_json::from_value(serde_json::json!({"lr": 0.01})).unwrap();
        let cfg = train_config(Preset::Qata, false, Some(ConfigLayer::Table(table)), &o).unwrap();
        assert_eq!((cfg.epochs, cfg.model.rec_layers, cfg.lr), (3, 1, 0.01));
        let unknown = serde_json::from_value::<TrainOverrides>(serde_json::json!({"epoch": 1}));
        assert!(unknown.unwrap_err().to_string().contains("epoch"));
    }

    #[test]
    fn bad_sizes_are_usage_errors() {
        for s in [0, 40] {
            let o = TrainOverrides {
                image_size: Some(s),
                ..Default::default()
            };
            assert!(matches!(
                train_config(Preset::Qata, false, None, &o),
                Err(Error::Usage(_))
            ));
        }
        assert!(check_image_size(48).is_ok());
    }
}
