//! The embedded procedural dataset: chest-X-ray-like phantoms with QaTa-style notes, built so that
//! the note is necessary to find the lesions.
//!
//! Every image holds 1–`max_lesions` opacities ("lesions", in the mask and named by the note) and
//! 1–`max_distractors` opacities drawn from the same appearance distribution in zones the note does
//! not name ("distractors", not in the mask). An image-only model cannot tell them apart; a model
//! that reads the note can.
//!
//! Conventions:
//! - **Radiological orientation:** the patient faces the viewer, so the patient's *left* lung
//!   ([`Side::Left`]) is on the *right* half of the image and the patient's right lung on the
//!   left half. Notes speak of the patient's sides. (QaTa-COV19's captions do the opposite: their
//!   "left" is the image's left half; training measures which, see
//!   [`side_focus`](crate::data::side_focus).)
//! - **Zones:** each lung field is split by height into three equal bands between its apex and
//!   the top of its diaphragm dome: upper, middle, lower (the lower band also takes the
//!   costophrenic recess below the dome's top). A pixel belongs to a zone when its centre lies
//!   inside that lung field (heart shadow excluded) and inside that band; [`zone_map`] draws them.
//! - **Lesions and distractors** are confined to their zone: every mask pixel lies in a zone the
//!   note names, every distractor in a zone it does not name. One opacity per zone.
//! - **Notes** follow the cleaned QaTa captions (area count = number of zones, several levels of a
//!   lung written as "upper middle lower left lung", left lung before right lung), capitalised as
//!   LViT's notes are: "Bilateral pulmonary infection, two infected areas, lower left lung and
//!   middle right lung." With up to four zones (the default), every note keeps all its zone
//!   words within CLIP's 18-token context (docs §1.4 truncation).
//! - **Determinism:** a sample depends only on `(seed, index, max_lesions, max_distractors)` and
//!   the size it is drawn at; the scene is laid out in size-free body coordinates, so the same
//!   index at 64 and 224 px is the same chest. Randomness comes from the crate's SplitMix64
//!   ([`crate::rng`]), and the rendering uses only IEEE correctly rounded operations
//!   (`+ − × ÷ √`, own cosine polynomial), so the bytes do not change with a crate version or a platform's maths library.
//! - **Size of things** (defaults, 64 px): lesions average ~57 pixels (a blob ~8 px across) and
//!   add ~50 grey levels; the mask covers ~3.5 % of the image (real QaTa masks: 9–13 %, but a
//!   zone here is only ~4 % of the image).
//! - **On disk** ([`write_lvit`]): file `synth_000123.png` is `sample(cfg, 123)`; files are
//!   numbered train first, then val, then test, so the splits never share a sample.

mod lesions;
mod notes;
mod phantom;
mod render;
#[cfg(test)]
mod tests;

pub use notes::{flip_note_lr, note_for, parse_note};
use notes::{level_word, side_word};
use phantom::Phantom;
use render::render;

use std::fmt;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::rng::SplitMix64;

/// The patient's side (not the image's): [`Side::Left`] is drawn on the image's right half.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Side {
    Left,
    Right,
}

/// A third of a lung field by height.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Level {
    Upper,
    Middle,
    Lower,
}

/// One of the six QaTa zones. Ordered as the notes list them: left lung first, upper to lower.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Zone {
    pub side: Side,
    pub level: Level,
}

impl Zone {
    /// The six zones in note order.
    pub const ALL: [Zone; 6] = [
        Zone::new(Side::Left, Level::Upper),
        Zone::new(Side::Left, Level::Middle),
        Zone::new(Side::Left, Level::Lower),
        Zone::new(Side::Right, Level::Upper),
        Zone::new(Side::Right, Level::Middle),
        Zone::new(Side::Right, Level::Lower),
    ];

    pub const fn new(side: Side, level: Level) -> Self {
        Zone { side, level }
    }
}

impl fmt::Display for Zone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} lung",
            level_word(self.level),
            side_word(self.side)
        )
    }
}

/// Generator settings. Defaults: 96 px (large enough to show ribs and lesion shapes, small enough
/// for CPU training), seed 0, up to 4 lesions and 3 distractors.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SynthConfig {
    /// Image side in pixels (images are square).
    pub size: usize,
    pub seed: u64,
    /// Most lesions (named zones) per image; at least 1 is always drawn. More than 6 acts as 6.
    pub max_lesions: usize,
    /// Most distractors per image; limited by the zones the note leaves free.
    pub max_distractors: usize,
}

impl Default for SynthConfig {
    fn default() -> Self {
        SynthConfig {
            size: 96,
            seed: 0,
            max_lesions: 4,
            max_distractors: 3,
        }
    }
}

impl SynthConfig {
    /// Smallest and largest image side [`SynthConfig::validate`] accepts.
    pub const SIZE_RANGE: (usize, usize) = (32, 1024);

    /// Checks the settings once at the boundary ([`write_lvit`] calls it; [`sample`] clamps).
    pub fn validate(&self) -> Result<(), SynthError> {
        let (lo, hi) = Self::SIZE_RANGE;
        if !(lo..=hi).contains(&self.size) {
            return Err(SynthError::Config(format!(
                "image size {} is outside {lo}..={hi}",
                self.size
            )));
        }
        if self.max_lesions == 0 {
            return Err(SynthError::Config(
                "max_lesions must be at least 1 (every image has a lesion)".into(),
            ));
        }
        Ok(())
    }
}

/// One generated image with its mask and note.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SynthSample {
    /// Grey levels, row-major, `size * size`.
    pub image: Vec<u8>,
    /// 1 on lesion pixels, 0 elsewhere, row-major, `size * size`.
    pub mask: Vec<u8>,
    pub note: String,
    /// The zones holding a lesion, in note order; the note names exactly these.
    pub zones: Vec<Zone>,
    /// The zones holding a distractor, in note order; disjoint from `zones`.
    pub distractor_zones: Vec<Zone>,
}

/// Why the procedural dataset could not be written. Messages end in `(<file>)` like the data
/// loader's, so the CLI prints them the same way.
#[derive(Debug, thiserror::Error)]
pub enum SynthError {
    #[error("invalid procedural dataset settings: {0}")]
    Config(String),
    #[error("output folder already exists and is not empty ({})", .0.display())]
    OutputExists(PathBuf),
    #[error("cannot write: {source} ({})", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write image: {source} ({})", .path.display())]
    Image {
        path: PathBuf,
        #[source]
        source: image::ImageError,
    },
    #[error("cannot write notes file: {source} ({})", .path.display())]
    Xlsx {
        path: PathBuf,
        #[source]
        source: rust_xlsxwriter::XlsxError,
    },
}

impl SynthError {
    /// A second line for people: what to do about it.
    pub fn hint(&self) -> Option<String> {
        match self {
            SynthError::OutputExists(_) => {
                Some("choose a new output folder, or remove this one first".into())
            }
            SynthError::Config(_) => Some(format!(
                "image size must be in {}..={} and max_lesions at least 1",
                SynthConfig::SIZE_RANGE.0,
                SynthConfig::SIZE_RANGE.1
            )),
            _ => None,
        }
    }
}

/// Generates sample `index` of the dataset `cfg.seed` at `cfg.size` pixels.
pub fn sample(cfg: &SynthConfig, index: u64) -> SynthSample {
    render(cfg, index).sample
}

/// The zone of every pixel of sample `index` (row-major, `size * size`; `None` outside the lung
/// fields), e.g. to draw the zones in a report.
pub fn zone_map(cfg: &SynthConfig, index: u64) -> Vec<Option<Zone>> {
    let mut rng = SplitMix64::stream(cfg.seed, index, 1);
    let phantom = Phantom::new(&mut rng);
    let size = cfg.size;
    let unit = |p: usize| (p as f64 + 0.5) / size as f64;
    (0..size * size)
        .map(|i| {
            let (x, y) = phantom.to_body(unit(i % size), unit(i / size));
            phantom.zone_at(x, y)
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Writing the LViT layout

/// Writes `n_train + n_val + n_test` samples as a QaTa-style LViT folder at `dir`:
/// `{Train,Val,Test}_Folder/img/synth_000123.png` (8-bit grey), `labelcol/mask_synth_000123.png`
/// (0/255), notes in `Train_Folder/Train_Val_text.xlsx` (train and val, as QaTa ships them) and
/// `Test_Folder/Test_text.xlsx`, columns `Image` (the mask file name) and `Description`.
/// File `synth_N` is `sample(cfg, N)`, numbered train, then val, then test.
///
/// The folder appears complete or not at all: it is built in a hidden sibling folder and renamed.
/// `dir` must not exist or be an empty folder.
pub fn write_lvit(
    dir: &Path,
    n_train: usize,
    n_val: usize,
    n_test: usize,
    cfg: &SynthConfig,
) -> Result<(), SynthError> {
    cfg.validate()?;
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| SynthError::Io { path, source }
    };
    let existing_empty = match std::fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(SynthError::OutputExists(dir.to_path_buf()));
            }
            true
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => {
            if dir.exists() {
                return Err(SynthError::OutputExists(dir.to_path_buf()));
            }
            return Err(io(dir)(e));
        }
    };
    let name = dir.file_name().ok_or_else(|| {
        SynthError::Config(format!("output path {} has no folder name", dir.display()))
    })?;
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(io(&parent))?;
    let tmp = parent.join(format!(
        ".{}.partial-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
    }
    let built = write_splits(&tmp, [n_train, n_val, n_test], cfg).and_then(|()| {
        if existing_empty {
            std::fs::remove_dir(dir).map_err(io(dir))?;
        }
        std::fs::rename(&tmp, dir).map_err(io(dir))
    });
    if built.is_err() {
        // Best effort: the error to report is the one that stopped the build.
        let _ = std::fs::remove_dir_all(&tmp);
    }
    built
}

fn write_splits(root: &Path, counts: [usize; 3], cfg: &SynthConfig) -> Result<(), SynthError> {
    let folders = ["Train_Folder", "Val_Folder", "Test_Folder"];
    let mut first = 0u64;
    let mut notes: Vec<Vec<(String, String)>> = Vec::new();
    for (folder, &count) in folders.iter().zip(&counts) {
        let split = root.join(folder);
        for sub in ["img", "labelcol"] {
            let d = split.join(sub);
            std::fs::create_dir_all(&d).map_err(|source| SynthError::Io { path: d, source })?;
        }
        let rows = (first..first + count as u64)
            .into_par_iter()
            .map(|index| write_sample(&split, index, cfg))
            .collect::<Result<Vec<_>, _>>()?;
        notes.push(rows);
        first += count as u64;
    }
    let train_val: Vec<_> = notes[0].iter().chain(&notes[1]).cloned().collect();
    write_notes(&root.join("Train_Folder/Train_Val_text.xlsx"), &train_val)?;
    write_notes(&root.join("Test_Folder/Test_text.xlsx"), &notes[2])
}

/// Writes image and mask of sample `index`; returns its notes row (mask name, note).
fn write_sample(
    split: &Path,
    index: u64,
    cfg: &SynthConfig,
) -> Result<(String, String), SynthError> {
    let s = sample(cfg, index);
    let size = cfg.size as u32;
    let stem = format!("synth_{index:06}");
    let mask_name = format!("mask_{stem}.png");
    let img_path = split.join("img").join(format!("{stem}.png"));
    let mask_path = split.join("labelcol").join(&mask_name);
    let mask: Vec<u8> = s.mask.iter().map(|&m| m * 255).collect();
    for (path, data) in [(&img_path, &s.image), (&mask_path, &mask)] {
        image::save_buffer_with_format(
            path,
            data,
            size,
            size,
            image::ExtendedColorType::L8,
            image::ImageFormat::Png,
        )
        .map_err(|source| SynthError::Image {
            path: path.clone(),
            source,
        })?;
    }
    Ok((mask_name, s.note))
}

fn write_notes(path: &Path, rows: &[(String, String)]) -> Result<(), SynthError> {
    let xlsx = |source| SynthError::Xlsx {
        path: path.to_path_buf(),
        source,
    };
    let mut book = rust_xlsxwriter::Workbook::new();
    let sheet = book.add_worksheet();
    sheet.write_string(0, 0, "Image").map_err(xlsx)?;
    sheet.write_string(0, 1, "Description").map_err(xlsx)?;
    for (i, (key, note)) in rows.iter().enumerate() {
        let row = u32::try_from(i + 1).map_err(|_| {
            SynthError::Config(format!("{} rows do not fit one worksheet", rows.len()))
        })?;
        sheet.write_string(row, 0, key).map_err(xlsx)?;
        sheet.write_string(row, 1, note).map_err(xlsx)?;
    }
    book.save(path).map_err(xlsx)
}
