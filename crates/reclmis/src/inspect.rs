//! What a model is made of: parameters per block, which of them train, which the segmentation
//! path runs (docs §1.11, §1.12), the config and the text encoder.

use std::fmt::{self, Write as _};
use std::path::Path;

use burn::tensor::Device;
use serde::Serialize;

use crate::Error;
use crate::checkpoint::ours::{TrainState, read_header};
use crate::model::weights::named_shapes;
use crate::model::{ModelConfig, RecLMIS, TextEncoderConfig};

/// Parameters of CLIP ViT-B/32's visual tower in the authors' checkpoints, which RecLMIS never
/// runs and this crate never builds (§1.11, §7 #23).
pub const CLIP_VISUAL_PARAMS: u64 = 87_849_216;

/// When a block runs (§1.12).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// On the segmentation path.
    Inference,
    /// Only to explain a prediction (POI/WOI) and in training.
    Explain,
    /// Only in training.
    Training,
}

/// One row of the parameter table.
#[derive(Clone, Debug, Serialize)]
pub struct Block {
    pub name: &'static str,
    /// State-dict key prefixes, for people.
    pub keys: &'static str,
    /// Parameters (BatchNorm running statistics excluded).
    pub parameters: u64,
    /// Parameter tensors.
    pub tensors: usize,
    pub trainable: bool,
    pub role: Role,
    pub inference_path: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct Totals {
    /// Everything segmentation runs: encoder, decoder, text conv, Interactor, text tower.
    pub inference_path: u64,
    /// The POI/WOI heads `predict` adds to explain.
    pub explain_heads: u64,
    pub inference_with_explain: u64,
    pub inference_path_without_text_tower: u64,
    pub trainable: u64,
    pub frozen: u64,
    /// Every parameter built.
    pub all: u64,
    /// BatchNorm running statistics (not parameters; saved in checkpoints).
    pub buffer_values: u64,
}

/// A part of the authors' checkpoints that is not built.
#[derive(Clone, Debug, Serialize)]
pub struct NotBuilt {
    pub name: &'static str,
    pub keys: &'static str,
    /// Known for CLIP ViT-B/32 only.
    pub parameters: Option<u64>,
    pub why: &'static str,
}

/// The parameter table of one model, its config and where it came from.
#[derive(Clone, Debug, Serialize)]
pub struct Inspection {
    /// `preset qata` or the checkpoint path.
    pub source: String,
    pub config: ModelConfig,
    /// One line on the text encoder (kind, size, frozen or trainable).
    pub text_encoder: String,
    /// Training state of a checkpoint.
    pub state: Option<TrainState>,
    pub blocks: Vec<Block>,
    pub totals: Totals,
    pub not_built: Vec<NotBuilt>,
    /// What the `clean` setting changes (empty for `paper`).
    pub parity_differences: Vec<&'static str>,
}

struct BlockDef {
    name: &'static str,
    keys: &'static str,
    prefixes: &'static [&'static str],
    role: Role,
}

/// In match order: `clip.logit_scale` before the rest of `clip.`.
const BLOCKS: &[BlockDef] = &[
    BlockDef {
        name: "encoder",
        keys: "inc, down1..4",
        prefixes: &["inc.", "down1.", "down2.", "down3.", "down4."],
        role: Role::Inference,
    },
    BlockDef {
        name: "decoder",
        keys: "up1..4, outc",
        prefixes: &["up1.", "up2.", "up3.", "up4.", "outc."],
        role: Role::Inference,
    },
    BlockDef {
        name: "text_conv",
        keys: "text_module4",
        prefixes: &["text_module4."],
        role: Role::Inference,
    },
    BlockDef {
        name: "interactor",
        keys: "interact",
        prefixes: &["interact."],
        role: Role::Inference,
    },
    BlockDef {
        name: "poi_head",
        keys: "mlp_visual",
        prefixes: &["mlp_visual."],
        role: Role::Explain,
    },
    BlockDef {
        name: "woi_head",
        keys: "mlp_woi",
        prefixes: &["mlp_woi."],
        role: Role::Explain,
    },
    BlockDef {
        name: "reconstructor_text",
        keys: "rec_text_trans1",
        prefixes: &["rec_text_trans1."],
        role: Role::Training,
    },
    BlockDef {
        name: "reconstructor_img",
        keys: "rec_img_trans1",
        prefixes: &["rec_img_trans1."],
        role: Role::Training,
    },
    BlockDef {
        name: "clip_logit_scale",
        keys: "clip.logit_scale",
        prefixes: &["clip.logit_scale"],
        role: Role::Training,
    },
    BlockDef {
        name: "clip_text",
        keys: "clip.* (text tower, not visual)",
        prefixes: &["clip."],
        role: Role::Inference,
    },
];

/// The role of the block a state-dict key belongs to; `None` for keys outside every block.
pub fn role_of(key: &str) -> Option<Role> {
    BLOCKS
        .iter()
        .find(|d| d.prefixes.iter().any(|p| key.starts_with(p)))
        .map(|d| d.role)
}

/// Whether only training reads this tensor (a reconstructor, CLIP's logit scale), so an
/// inference-only checkpoint may leave it out. Keys outside the known blocks are kept.
pub fn is_training_only(key: &str) -> bool {
    role_of(key) == Some(Role::Training)
}

fn is_buffer(key: &str) -> bool {
    key.ends_with(".running_mean") || key.ends_with(".running_var")
}

/// The table for a model of this config (built once on the CPU to read its shapes).
pub fn inspect_config(cfg: &ModelConfig) -> Inspection {
    let model = RecLMIS::new(cfg, 0, &Device::flex());
    table(cfg, &named_shapes(&model), format!("preset {}", cfg.preset))
}

/// The table of a checkpoint of ours, from its config; its tensors are not read.
pub fn inspect_checkpoint(path: &Path) -> Result<Inspection, Error> {
    let (cfg, state) = read_header(path)?;
    let mut out = inspect_config(&cfg);
    out.source = path.display().to_string();
    out.state = Some(state);
    Ok(out)
}

/// The table from named shapes (`named_shapes` of a [`RecLMIS`]).
pub fn table(cfg: &ModelConfig, shapes: &[(String, Vec<usize>)], source: String) -> Inspection {
    let frozen_text = cfg.text_encoder.is_frozen();
    let mut blocks: Vec<Block> = BLOCKS
        .iter()
        .map(|d| Block {
            name: match (d.name, &cfg.text_encoder) {
                ("clip_text", TextEncoderConfig::Builtin { .. }) => "builtin_text",
                (name, _) => name,
            },
            keys: d.keys,
            parameters: 0,
            tensors: 0,
            trainable: match d.name {
                "clip_text" => !frozen_text,
                // Detached wherever it is used, in both settings (§7 #22).
                "clip_logit_scale" => false,
                _ => true,
            },
            role: d.role,
            inference_path: d.role == Role::Inference,
        })
        .collect();
    let mut other = Block {
        name: "other",
        keys: "keys outside the blocks above",
        parameters: 0,
        tensors: 0,
        trainable: true,
        role: Role::Training,
        inference_path: false,
    };
    let mut buffer_values = 0;
    for (key, shape) in shapes {
        let n = shape.iter().product::<usize>() as u64;
        if is_buffer(key) {
            buffer_values += n;
            continue;
        }
        let block = BLOCKS
            .iter()
            .position(|d| d.prefixes.iter().any(|p| key.starts_with(p)))
            .map_or(&mut other, |i| &mut blocks[i]);
        block.parameters += n;
        block.tensors += 1;
    }
    if other.tensors > 0 {
        blocks.push(other);
    }

    let sum =
        |f: &dyn Fn(&Block) -> bool| blocks.iter().filter(|b| f(b)).map(|b| b.parameters).sum();
    let inference_path = sum(&|b| b.inference_path);
    let explain_heads = sum(&|b| b.role == Role::Explain);
    let text_tower = sum(&|b| matches!(b.name, "clip_text" | "builtin_text"));
    let trainable = sum(&|b| b.trainable);
    let all = sum(&|_| true);
    let totals = Totals {
        inference_path,
        explain_heads,
        inference_with_explain: inference_path + explain_heads,
        inference_path_without_text_tower: inference_path - text_tower,
        trainable,
        frozen: all - trainable,
        all,
        buffer_values,
    };
    let vit_b32 = cfg.text_encoder == TextEncoderConfig::clip_vit_b32();
    let not_built = match cfg.text_encoder {
        TextEncoderConfig::Clip { .. } => vec![NotBuilt {
            name: "clip_visual",
            keys: "clip.visual.*",
            parameters: vit_b32.then_some(CLIP_VISUAL_PARAMS),
            why: "CLIP's image tower is in the authors' checkpoints but RecLMIS never runs it",
        }],
        TextEncoderConfig::Builtin { .. } => Vec::new(),
    };
    Inspection {
        source,
        config: cfg.clone(),
        text_encoder: describe_text_encoder(cfg),
        state: None,
        blocks,
        totals,
        not_built,
        parity_differences: cfg.parity.differences().to_vec(),
    }
}

fn describe_text_encoder(cfg: &ModelConfig) -> String {
    match &cfg.text_encoder {
        TextEncoderConfig::Clip {
            width,
            layers,
            heads,
            embed,
            ..
        } => format!(
            "clip (CLIP text transformer, frozen: width {width}, {layers} layers, {heads} heads, \
             output {embed})"
        ),
        TextEncoderConfig::Builtin {
            width,
            layers,
            heads,
        } => format!(
            "builtin (trainable, no download: width {width}, {layers} layers, {heads} heads)"
        ),
    }
}

/// `1234567` → `1,234,567`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

impl fmt::Display for Inspection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.config;
        let mut s = String::new();
        writeln!(s, "RecLMIS — {}", self.source)?;
        writeln!(
            s,
            "preset {}, parity {}, image {}×{} (grid {}×{}), base channels {}, context {} tokens",
            c.preset,
            match c.parity {
                crate::model::Parity::Paper => "paper",
                crate::model::Parity::Clean => "clean",
            },
            c.image_size,
            c.image_size,
            c.grid(),
            c.grid(),
            c.base_channels,
            c.context
        )?;
        writeln!(s, "text encoder: {}", self.text_encoder)?;
        writeln!(s, "reconstructor layers {}", c.rec_layers)?;
        if let Some(st) = &self.state {
            write!(s, "trained: {} epochs, {} steps", st.epoch, st.step)?;
            if let (Some(d), Some(e)) = (st.best_val_dice, st.best_epoch) {
                write!(s, ", best val Dice {d:.4} at epoch {e}")?;
            }
            if !st.origin.is_empty() {
                write!(s, " (origin {})", st.origin)?;
            }
            writeln!(s)?;
        }
        for d in &self.parity_differences {
            writeln!(s, "clean setting: {d}")?;
        }
        writeln!(s)?;
        writeln!(
            s,
            "{:<20} {:<34} {:>12}  {:<9}  path",
            "block", "keys", "parameters", "trainable"
        )?;
        for b in &self.blocks {
            writeln!(
                s,
                "{:<20} {:<34} {:>12}  {:<9}  {}",
                b.name,
                b.keys,
                thousands(b.parameters),
                if b.trainable { "yes" } else { "no" },
                match b.role {
                    Role::Inference => "inference",
                    Role::Explain => "explain (POI/WOI) and training",
                    Role::Training => "training only",
                }
            )?;
        }
        let t = &self.totals;
        writeln!(s)?;
        for (label, n) in [
            ("inference path (segmentation)", thousands(t.inference_path)),
            (
                "+ POI/WOI heads (predict explains)",
                format!("+{}", thousands(t.explain_heads)),
            ),
            (
                "inference path without the text tower",
                thousands(t.inference_path_without_text_tower),
            ),
            ("trainable", thousands(t.trainable)),
            ("frozen", thousands(t.frozen)),
            ("all parameters built", thousands(t.all)),
        ] {
            writeln!(s, "{label:<56} {n:>12}")?;
        }
        for nb in &self.not_built {
            match nb.parameters {
                Some(p) => writeln!(
                    s,
                    "not built: {} ({}), {} parameters: {}",
                    nb.name,
                    nb.keys,
                    thousands(p),
                    nb.why
                )?,
                None => writeln!(s, "not built: {} ({}): {}", nb.name, nb.keys, nb.why)?,
            }
        }
        f.write_str(s.trim_end())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    use crate::test_support::shared;

    /// Per block of the authors' state dict: (parameters, trainable, inference path).
    fn reference(tsv: &str) -> BTreeMap<String, (u64, bool, bool)> {
        let text = std::fs::read_to_string(shared().join("reference").join(tsv)).unwrap();
        let mut lines = text.lines();
        let header: Vec<&str> = lines.next().unwrap().split('\t').collect();
        let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
        let (numel, kind, trainable, block, path) = (
            col("numel"),
            col("kind"),
            col("trainable"),
            col("block"),
            col("inference_path"),
        );
        let mut out = BTreeMap::new();
        for line in lines {
            let f: Vec<&str> = line.split('\t').collect();
            if f[kind] != "parameter" {
                continue;
            }
            let e = out.entry(f[block].to_string()).or_insert((
                0,
                f[trainable] == "true",
                f[path] == "true",
            ));
            e.0 += f[numel].parse::<u64>().unwrap();
            assert_eq!(
                (e.1, e.2),
                (f[trainable] == "true", f[path] == "true"),
                "{}: flags differ within block {}",
                f[0],
                f[block]
            );
        }
        out
    }

    fn check(cfg: ModelConfig, tsv: &str, totals: [u64; 4]) {
        let ins = inspect_config(&cfg);
        let theirs = reference(tsv);
        let ours: BTreeMap<String, (u64, bool, bool)> = ins
            .blocks
            .iter()
            .map(|b| {
                (
                    b.name.to_string(),
                    (b.parameters, b.trainable, b.inference_path),
                )
            })
            .collect();
        for (name, expected) in &theirs {
            if name == "clip_visual" {
                assert_eq!(expected.0, CLIP_VISUAL_PARAMS);
                assert_eq!(ins.not_built[0].parameters, Some(CLIP_VISUAL_PARAMS));
                continue;
            }
            assert_eq!(ours.get(name), Some(expected), "block {name}");
        }
        assert_eq!(ours.len(), theirs.len() - 1, "{ours:?}");
        let t = &ins.totals;
        assert_eq!(
            [
                t.inference_path,
                t.explain_heads,
                t.inference_path_without_text_tower,
                t.trainable
            ],
            totals
        );
        assert_eq!(
            t.all + CLIP_VISUAL_PARAMS,
            theirs.values().map(|v| v.0).sum::<u64>()
        );
        let text = ins.to_string();
        assert!(text.contains(&thousands(totals[0])), "{text}");
        let json = serde_json::to_value(&ins).unwrap();
        assert_eq!(json["totals"]["trainable"], totals[3]);
    }

    #[test]
    fn qata_matches_the_parameter_table() {
        // docs §1.11: inference path, +POI/WOI, without CLIP, trainable.
        check(
            ModelConfig::qata(),
            "reclmis-qata-state-dict.tsv",
            [81_871_101, 526_338, 18_443_005, 69_440_255],
        );
    }

    #[test]
    fn mosmed_matches_the_parameter_table() {
        check(
            ModelConfig::mosmed(),
            "reclmis-mosmed-state-dict.tsv",
            [81_871_101, 526_338, 18_443_005, 56_822_527],
        );
    }

    #[test]
    fn builtin_text_encoder_is_trainable_and_named() {
        let mut cfg = ModelConfig::qata();
        cfg.base_channels = 8;
        let cfg = cfg.with_builtin_text(1);
        let ins = inspect_config(&cfg);
        let text = ins
            .blocks
            .iter()
            .find(|b| b.name == "builtin_text")
            .unwrap();
        assert!(text.trainable && text.inference_path && text.parameters > 0);
        assert!(ins.not_built.is_empty());
        assert_eq!(ins.totals.frozen, 1, "only logit_scale");
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(thousands(999), "999");
    }
}
