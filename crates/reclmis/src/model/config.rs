//! Model configuration: the paper presets and the reduced variants, validated once.

use serde::{Deserialize, Serialize};

pub use crate::finding::NotesConfig;

/// Which dataset's configuration file the authors used (docs §1.1, §2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Preset {
    /// `Config_covid19.py` (QaTa-COV19).
    Qata,
    /// `Config_MosMedPlus.py` (MosMedData+).
    Mosmed,
}

impl std::str::FromStr for Preset {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "qata" => Ok(Self::Qata),
            "mosmed" => Ok(Self::Mosmed),
            other => Err(format!(
                "unknown preset '{other}' (expected qata or mosmed)"
            )),
        }
    }
}

impl std::fmt::Display for Preset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Qata => "qata",
            Self::Mosmed => "mosmed",
        })
    }
}

/// `paper` computes what the authors' code computes, quirks included (docs §7);
/// `clean` fixes the quirks that change the training signal (see [`Parity::differences`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Parity {
    Paper,
    Clean,
}

impl Parity {
    /// What the `clean` setting changes, for configs and reports.
    pub fn differences(self) -> &'static [&'static str] {
        match self {
            Parity::Paper => &[],
            Parity::Clean => &[
                "CCL uses POI/WOI once (no second softmax) and gives pads zero weight (§7 #1)",
                "reconstructor self-attention is bidirectional (§7 #2)",
                "the image reconstruction target V' is detached (§7 #4)",
                "the text reconstruction MSE averages over real tokens only (§7 #5)",
                "CCL normalisation has an epsilon (§7 #20); v2t ignores pad rows (§7 #21)",
                "the Interactor has residual connections and masks text pads (§7 #13)",
            ],
        }
    }
}

/// Which text tower turns token ids into `text_feat_clip`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum TextEncoderConfig {
    /// OpenAI CLIP's text transformer, frozen (paper setting; ViT-B/32: width 512, 12 layers,
    /// 8 heads, embed 512).
    Clip {
        vocab: usize,
        context: usize,
        width: usize,
        layers: usize,
        heads: usize,
        /// Output width (`text_projection [width, embed]`).
        embed: usize,
    },
    /// A small trainable transformer of the same shape family that needs no download.
    Builtin {
        width: usize,
        layers: usize,
        heads: usize,
    },
}

impl TextEncoderConfig {
    pub fn clip_vit_b32() -> Self {
        Self::Clip {
            vocab: 49408,
            context: 77,
            width: 512,
            layers: 12,
            heads: 8,
            embed: 512,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Self::Clip { .. } => "clip",
            Self::Builtin { .. } => "builtin",
        }
    }

    pub fn is_frozen(&self) -> bool {
        matches!(self, Self::Clip { .. })
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    pub preset: Preset,
    pub parity: Parity,
    /// Square input size; a multiple of 16 (four 2× poolings).
    pub image_size: usize,
    /// Channels of `inc`; the paper's 64. The bottleneck has 8× this many, and it must equal the
    /// text width `d_model` (the authors hard-code 512 = 8·64 = CLIP's width, §7 #9).
    pub base_channels: usize,
    pub text_encoder: TextEncoderConfig,
    /// Token context of the notes (18 in the paper, §1.4).
    pub context: usize,
    /// Heads of the Interactor's two attentions (4 in the paper).
    pub interactor_heads: usize,
    /// Heads and layers `L` of each reconstructor decoder (4 and 4/3 in the paper).
    pub rec_heads: usize,
    pub rec_layers: usize,
    pub img_mask_rate: f64,
    pub text_mask_rate: f64,
    /// Dropout before the POI/WOI heads (`config.dropout` / `dropout_value`): MosMed 0.5, QaTa off.
    pub head_dropout: f64,
    /// Dropout of the Interactor and reconstructors (0.1 in the authors' code).
    pub dropout: f64,
    pub loss_weights: LossWeights,
    /// A text-free baseline: the CNN bottleneck `img_feat4` goes straight to the decoder (a
    /// U-Net with PLAM skips); no text, no Interactor, no auxiliary losses.
    #[serde(default)]
    pub text_free: bool,
    /// How notes reach the text encoder: raw (the paper) or as the canonical sentence of their
    /// parsed finding ([`crate::finding`]). Checkpoints without this table read raw notes.
    #[serde(default)]
    pub notes: NotesConfig,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LossWeights {
    pub criterion: f64,
    pub ccl: f64,
    pub text_rec: f64,
    pub img_rec: f64,
}

impl Default for LossWeights {
    fn default() -> Self {
        Self {
            criterion: 5.0,
            ccl: 0.2,
            text_rec: 1.0,
            img_rec: 1.0,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("invalid model config: {0}")]
pub struct ConfigError(pub String);

impl ModelConfig {
    /// The authors' `Config_covid19.py`.
    pub fn qata() -> Self {
        Self {
            preset: Preset::Qata,
            parity: Parity::Paper,
            image_size: 224,
            base_channels: 64,
            text_encoder: TextEncoderConfig::clip_vit_b32(),
            context: 18,
            interactor_heads: 4,
            rec_heads: 4,
            rec_layers: 4,
            img_mask_rate: 0.5,
            text_mask_rate: 0.3,
            head_dropout: 0.0,
            dropout: 0.1,
            loss_weights: LossWeights::default(),
            text_free: false,
            notes: NotesConfig::default(),
        }
    }

    /// The authors' `Config_MosMedPlus.py`.
    pub fn mosmed() -> Self {
        Self {
            preset: Preset::Mosmed,
            rec_layers: 3,
            img_mask_rate: 0.3,
            head_dropout: 0.5,
            ..Self::qata()
        }
    }

    pub fn preset(p: Preset) -> Self {
        match p {
            Preset::Qata => Self::qata(),
            Preset::Mosmed => Self::mosmed(),
        }
    }

    /// A paper preset with the built-in text encoder at width `8·base`, for training without
    /// CLIP weights or at reduced width.
    pub fn with_builtin_text(mut self, layers: usize) -> Self {
        let width = 8 * self.base_channels;
        self.text_encoder = TextEncoderConfig::Builtin {
            width,
            layers,
            heads: (width / 64).max(1),
        };
        self
    }

    /// Width of text tokens and of the bottleneck (512 in the paper).
    pub fn d_model(&self) -> usize {
        8 * self.base_channels
    }

    /// Bottleneck grid side (14 at 224 px).
    pub fn grid(&self) -> usize {
        self.image_size / 16
    }

    pub fn n_img_tokens(&self) -> usize {
        self.grid() * self.grid()
    }

    /// Masked image tokens per sample: `max(⌊N·rate⌋, 1)` (§1.8).
    pub fn n_img_masked(&self) -> usize {
        ((self.n_img_tokens() as f64 * self.img_mask_rate).floor() as usize).max(1)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |s: String| Err(ConfigError(s));
        if self.image_size == 0 || !self.image_size.is_multiple_of(16) {
            return err(format!(
                "image_size {} is not a positive multiple of 16",
                self.image_size
            ));
        }
        if self.base_channels < 8 {
            return err(format!("base_channels {} < 8", self.base_channels));
        }
        // Upper bounds far above any real model (the paper: 224 px, base 64, CLIP 12 layers),
        // checked before anything is built, so a config read from a file cannot ask for
        // terabytes of weights.
        let text_sizes = match &self.text_encoder {
            TextEncoderConfig::Clip {
                vocab,
                context,
                width,
                layers,
                embed,
                ..
            } => vec![
                ("CLIP vocab", *vocab, 1 << 20),
                ("CLIP context", *context, 4096),
                ("CLIP width", *width, 8192),
                ("CLIP layers", *layers, 96),
                ("CLIP embed", *embed, 8192),
            ],
            TextEncoderConfig::Builtin { width, layers, .. } => {
                vec![("text width", *width, 8192), ("text layers", *layers, 96)]
            }
        };
        for (name, value, most) in [
            ("image_size", self.image_size, 4096),
            ("base_channels", self.base_channels, 1024),
            ("rec_layers", self.rec_layers, 96),
            ("context", self.context, 4096),
        ]
        .into_iter()
        .chain(text_sizes)
        {
            if value > most {
                return err(format!(
                    "{name} {value} is over the most reclmis builds ({most})"
                ));
            }
        }
        let d = self.d_model();
        let (width, heads) = match &self.text_encoder {
            TextEncoderConfig::Clip {
                width,
                heads,
                context,
                embed,
                ..
            } => {
                if width % heads != 0 {
                    return err(format!(
                        "CLIP heads {heads} do not divide its width {width}"
                    ));
                }
                if self.context > *context {
                    return err(format!(
                        "context {} exceeds CLIP's positional table ({context})",
                        self.context
                    ));
                }
                (*embed, self.interactor_heads)
            }
            TextEncoderConfig::Builtin { width, heads, .. } => (*width, *heads),
        };
        if width != d {
            return err(format!(
                "text width {width} must equal 8·base_channels = {d} (the bottleneck width); \
                 CLIP ViT-B/32 needs base_channels 64"
            ));
        }
        for (name, h) in [
            ("text heads", heads),
            ("interactor_heads", self.interactor_heads),
            ("rec_heads", self.rec_heads),
        ] {
            if h == 0 || !d.is_multiple_of(h) {
                return err(format!("{name} {h} does not divide the width {d}"));
            }
        }
        if self.context < 2 {
            return err(format!("context {} < 2", self.context));
        }
        if self.rec_layers == 0 {
            return err("rec_layers must be at least 1".into());
        }
        for (name, r) in [
            ("img_mask_rate", self.img_mask_rate),
            ("text_mask_rate", self.text_mask_rate),
            ("head_dropout", self.head_dropout),
            ("dropout", self.dropout),
        ] {
            if !(0.0..1.0).contains(&r) {
                return err(format!("{name} {r} outside [0, 1)"));
            }
        }
        Ok(())
    }
}
