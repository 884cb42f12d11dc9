//! `import`: one entry point for every weight file reclmis reads from elsewhere.

use std::path::Path;

use burn::tensor::Device;

use crate::Error;
use crate::checkpoint::import::{ImportError, import_authors_checkpoint, model_with_clip};
use crate::checkpoint::ours::{self, TrainState};
use crate::checkpoint::torch::{Format, sniff};
use crate::model::{ModelConfig, Preset, RecLMIS};

/// A model built from a foreign file, with the config and provenance to save it under.
pub struct Imported {
    pub model: RecLMIS,
    pub cfg: ModelConfig,
    pub state: TrainState,
}

/// Reads `src`, whatever it is: the authors' `torch.save` checkpoint (a whole RecLMIS, whose
/// preset must match `preset` when one is given), or OpenAI's TorchScript / Hugging Face
/// safetensors CLIP (its text tower in a fresh model of `preset`, default QaTa, the rest
/// initialised with `seed`). A reclmis checkpoint is refused: it needs no import.
pub fn import(
    src: &Path,
    preset: Option<Preset>,
    seed: u64,
    device: &Device,
) -> Result<Imported, Error> {
    let format = sniff(src).map_err(|e| Error::Import(ImportError::Torch(e)))?;
    match format {
        Format::TorchSave => {
            let (model, cfg, state) = import_authors_checkpoint(src, device)?;
            if let Some(p) = preset.filter(|&p| p != cfg.preset) {
                return Err(Error::Usage(format!(
                    "--preset {p} given, but {} is a {} checkpoint ({} reconstructor layers)",
                    src.display(),
                    cfg.preset,
                    cfg.rec_layers
                )));
            }
            Ok(Imported { model, cfg, state })
        }
        Format::Safetensors if ours::read_header(src).is_ok() => Err(Error::Usage(format!(
            "{} is already a reclmis checkpoint; use it directly",
            src.display()
        ))),
        Format::TorchScript | Format::Safetensors => {
            let (model, cfg) = model_with_clip(src, preset.unwrap_or(Preset::Qata), seed, device)?;
            let name = src
                .file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
            let state = TrainState {
                origin: format!(
                    "import:{name} (CLIP text tower; the rest initialised with seed {seed})"
                ),
                ..TrainState::default()
            };
            Ok(Imported { model, cfg, state })
        }
    }
}
