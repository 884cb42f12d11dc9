//! The embedded procedural dataset: chest-X-ray-like phantoms with QaTa-style notes, built so that
//! the note is necessary to find the lesions.
//!
//! Every image holds 1–`max_lesions` opacities ("lesions", in the mask and named by the note) and
//! 1–`max_distractors` opacities drawn from the same appearance distribution in zones the note does
//! not name ("distractors", not in the mask). An image-only model cannot tell them apart; a model
//! that reads the note can.
//!
//! Conventions:
//! - **Radiological orientation, as QaTa-COV19:** the patient faces the viewer, so the patient's
//!   *left* lung ([`Side::Left`]) is on the *right* half of the image and the patient's right lung
//!   on the left half. Notes speak of the patient's sides.
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
//!   words within CLIP's 18-token context (reclmis.md §1.4 truncation).
//! - **Determinism:** a sample depends only on `(seed, index, max_lesions, max_distractors)` and
//!   the size it is drawn at; the scene is laid out in size-free body coordinates, so the same
//!   index at 64 and 224 px is the same chest. Randomness comes from a SplitMix64 stream written
//!   here, and the rendering uses only IEEE correctly rounded operations (`+ − × ÷ √`, own cosine
//!   polynomial), so the bytes do not change with a crate version or a platform's maths library.
//! - **Size of things** (defaults, 64 px): lesions average ~57 pixels (a blob ~8 px across) and
//!   add ~50 grey levels; the mask covers ~3.5 % of the image (real QaTa masks: 9–13 %, but a
//!   zone here is only ~4 % of the image).
//! - **On disk** ([`write_lvit`]): file `synth_000123.png` is `sample(cfg, 123)`; files are
//!   numbered train first, then val, then test, so the splits never share a sample.

use std::f64::consts::{FRAC_PI_2, PI, TAU};
use std::fmt;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

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
// Notes

const COUNT_WORDS: [&str; 7] = ["no", "one", "two", "three", "four", "five", "six"];

fn side_word(side: Side) -> &'static str {
    match side {
        Side::Left => "left",
        Side::Right => "right",
    }
}

fn level_word(level: Level) -> &'static str {
    match level {
        Level::Upper => "upper",
        Level::Middle => "middle",
        Level::Lower => "lower",
    }
}

/// The QaTa-style note naming `zones` (order and duplicates do not matter), e.g.
/// "Bilateral pulmonary infection, two infected areas, lower left lung and middle right lung.".
/// No zones give "No pulmonary infection.".
pub fn note_for(zones: &[Zone]) -> String {
    let mut zones = zones.to_vec();
    zones.sort();
    zones.dedup();
    if zones.is_empty() {
        return "No pulmonary infection.".into();
    }
    let lungs: Vec<String> = [Side::Left, Side::Right]
        .into_iter()
        .filter_map(|side| {
            let levels: Vec<&str> = zones
                .iter()
                .filter(|z| z.side == side)
                .map(|z| level_word(z.level))
                .collect();
            (!levels.is_empty()).then(|| format!("{} {} lung", levels.join(" "), side_word(side)))
        })
        .collect();
    let lateral = if lungs.len() == 2 {
        "Bilateral"
    } else {
        "Unilateral"
    };
    let area = if zones.len() == 1 { "area" } else { "areas" };
    format!(
        "{lateral} pulmonary infection, {} infected {area}, {}.",
        COUNT_WORDS[zones.len()],
        lungs.join(" and ")
    )
}

/// The zones a QaTa-style note names, in note order, or `None` when its location clause (the text
/// after the last comma) is not a list of "<levels> left|right lung" joined by "and". Case is
/// ignored; "all" or no level word mean the whole lung (LViT's "all left lung", "right lung");
/// the header ("bilateral …, two infected areas") is not checked, as LViT's counts are loose.
pub fn parse_note(note: &str) -> Option<Vec<Zone>> {
    let lower = note.trim().to_lowercase();
    let body = lower.trim_end_matches('.').trim();
    if body == "no pulmonary infection" {
        return Some(Vec::new());
    }
    let location = body.rsplit(',').next()?.trim();
    let mut zones = Vec::new();
    for part in location.split(" and ") {
        let words: Vec<&str> = part.split_whitespace().collect();
        let (&last, rest) = words.split_last()?;
        if last != "lung" {
            return None;
        }
        let (&side_w, level_words) = rest.split_last()?;
        let side = match side_w {
            "left" => Side::Left,
            "right" => Side::Right,
            _ => return None,
        };
        let all = [Level::Upper, Level::Middle, Level::Lower];
        if level_words.is_empty() {
            zones.extend(all.map(|level| Zone::new(side, level)));
        }
        for &w in level_words {
            match w {
                "upper" => zones.push(Zone::new(side, Level::Upper)),
                "middle" => zones.push(Zone::new(side, Level::Middle)),
                "lower" => zones.push(Zone::new(side, Level::Lower)),
                "all" => zones.extend(all.map(|level| Zone::new(side, level))),
                _ => return None,
            }
        }
    }
    zones.sort();
    zones.dedup();
    Some(zones)
}

/// Swaps the whole words "left" and "right" (any case, keeping capitalisation), so that a note
/// stays true after the image is flipped horizontally. Everything else is kept byte for byte,
/// including the order of the lungs (a flipped note may name the right lung first).
pub fn flip_note_lr(note: &str) -> String {
    let mut out = String::with_capacity(note.len() + 8);
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        let swapped = match word.to_lowercase().as_str() {
            "left" => Some("right"),
            "right" => Some("left"),
            _ => None,
        };
        match swapped {
            Some(s) => out.push_str(&match_case(word, s)),
            None => out.push_str(word),
        }
        word.clear();
    };
    for c in note.chars() {
        if c.is_alphanumeric() {
            word.push(c);
        } else {
            flush(&mut word, &mut out);
            out.push(c);
        }
    }
    flush(&mut word, &mut out);
    out
}

/// `replacement` (lower case) in the case pattern of `original`: UPPER, Capitalised or lower.
fn match_case(original: &str, replacement: &str) -> String {
    let mut chars = original.chars();
    let first_upper = chars.next().is_some_and(char::is_uppercase);
    let rest_upper = original.chars().skip(1).all(char::is_uppercase);
    if first_upper && rest_upper {
        replacement.to_uppercase()
    } else if first_upper {
        let mut r = replacement.chars();
        r.next()
            .map(|c| c.to_uppercase().chain(r).collect())
            .unwrap_or_default()
    } else {
        replacement.to_string()
    }
}

// ---------------------------------------------------------------------------------------------
// Deterministic randomness and maths

/// SplitMix64 (Steele, Lea & Flood 2014): tiny, fast and fixed forever.
#[derive(Debug, Clone)]
struct SplitMix64 {
    state: u64,
}

fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl SplitMix64 {
    /// An independent stream per (seed, index, purpose); purposes keep the pixel noise from
    /// shifting the geometry draws.
    fn stream(seed: u64, index: u64, purpose: u64) -> Self {
        let state = mix64(seed ^ mix64(index ^ mix64(purpose.wrapping_add(0x9E37_79B9_7F4A_7C15))));
        SplitMix64 { state }
    }

    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix64(self.state)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }

    /// Uniform in 0..n (n > 0), by the multiply-high method.
    fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }

    /// Approximately standard normal (Irwin–Hall of 4 uniforms): no logarithms needed.
    fn normal(&mut self) -> f64 {
        let s: f64 = (0..4).map(|_| self.unit()).sum();
        (s - 2.0) * 3f64.sqrt()
    }
}

/// Cosine from +, ×, rounding only (bit-identical everywhere): Taylor series of cos(x/4) on
/// |x/4| ≤ π/4, then two angle doublings. Absolute error below 1e-10.
fn cos_det(x: f64) -> f64 {
    let r = x - (x / TAU).round() * TAU;
    let a2 = (r * 0.25) * (r * 0.25);
    let c = 1.0
        + a2 * (-1.0 / 2.0
            + a2 * (1.0 / 24.0
                + a2 * (-1.0 / 720.0
                    + a2 * (1.0 / 40_320.0 + a2 * (-1.0 / 3_628_800.0 + a2 / 479_001_600.0)))));
    let c2 = 2.0 * c * c - 1.0;
    2.0 * c2 * c2 - 1.0
}

fn sin_det(x: f64) -> f64 {
    cos_det(x - FRAC_PI_2)
}

fn smoothstep(e0: f64, e1: f64, x: f64) -> f64 {
    let t = ((x - e0) / (e1 - e0)).clamp(0.0, 1.0);
    t * t * (3.0 - 2.0 * t)
}

/// A smooth compact bump: 1 at 0, 0 beyond |t| = 1.
fn bump(t: f64) -> f64 {
    let s = 1.0 - t * t;
    if s > 0.0 { s * s } else { 0.0 }
}

/// Signed distance estimate `f / |∇f|` of an implicit shape (`f > 0` inside). Exact to first
/// order near the boundary, which is where the soft edges and the zone windows need it.
fn inner_distance(f: impl Fn(f64, f64) -> f64, x: f64, y: f64) -> f64 {
    const H: f64 = 1e-4;
    let v = f(x, y);
    let gx = (f(x + H, y) - f(x - H, y)) / (2.0 * H);
    let gy = (f(x, y + H) - f(x, y - H)) / (2.0 * H);
    let g = (gx * gx + gy * gy).sqrt();
    if g > 1e-9 { v / g } else { v }
}

// ---------------------------------------------------------------------------------------------
// The phantom
//
// Body coordinates: X across the image (0 on the body's midline, + towards the image's right),
// Y downwards (0 about the lung apices' top margin). Pixel centre (u, v) ∈ [0,1]² maps to
// X = (u − ox) / scale, Y = (v − oy) / scale.

/// Lungs may not cross this distance from the midline (keeps the two fields apart).
const MEDIASTINUM: f64 = 0.05;

#[derive(Debug, Clone)]
struct Lung {
    side: Side,
    /// +1 when the lung is on the image's right (the patient's left).
    sign: f64,
    /// Centre distance from the midline, half-width, centre height, half-height, egg factor.
    lc: f64,
    hw: f64,
    vc: f64,
    hh: f64,
    egg: f64,
    /// Diaphragm: lowest (lateral/medial) height and dome rise at mid-lung.
    dome_base: f64,
    dome_rise: f64,
    /// Apex, the two band boundaries, lowest point.
    bands: [f64; 4],
    /// Hilum position (lateral distance, height).
    hilum: (f64, f64),
    vessels: Vec<Vessel>,
}

#[derive(Debug, Clone)]
struct Vessel {
    /// Start (lateral, height), direction, length, start width.
    l0: f64,
    y0: f64,
    dl: f64,
    dy: f64,
    len: f64,
    width: f64,
}

impl Lung {
    fn lateral(&self, x: f64) -> f64 {
        self.sign * x
    }

    /// Egg-shaped outline, narrow round apex and broad square-ish base; > 0 inside.
    fn egg_fn(&self, l: f64, y: f64) -> f64 {
        let a = (l - self.lc) / self.hw;
        let b = (y - self.vc) / self.hh;
        let s = 1.0 + self.egg * b;
        if s <= 0.05 {
            return -1.0;
        }
        let q = a / s;
        if b < 0.0 {
            1.0 - (q * q + b * b).sqrt()
        } else {
            1.0 - (q * q * q * q + b * b * b * b).sqrt().sqrt()
        }
    }

    fn dome(&self, l: f64) -> f64 {
        let a = ((l - self.lc) / self.hw).clamp(-1.0, 1.0);
        self.dome_base - self.dome_rise * (1.0 - a * a)
    }

    fn inside_shape(&self, x: f64, y: f64) -> bool {
        let l = self.lateral(x);
        l > MEDIASTINUM && self.egg_fn(l, y) > 0.0 && y < self.dome(l)
    }

    /// Inner distance to the outline (without the heart), > 0 inside.
    fn shape_distance(&self, x: f64, y: f64) -> f64 {
        let l = self.lateral(x);
        let egg = inner_distance(|l, y| self.egg_fn(l, y), l, y);
        let dome = inner_distance(|l, y| self.dome(l) - y, l, y);
        egg.min(dome).min(l - MEDIASTINUM)
    }

    fn level_at(&self, y: f64) -> Level {
        if y < self.bands[1] {
            Level::Upper
        } else if y < self.bands[2] {
            Level::Middle
        } else {
            Level::Lower
        }
    }

    fn band(&self, level: Level) -> (f64, f64) {
        match level {
            Level::Upper => (self.bands[0], self.bands[1]),
            Level::Middle => (self.bands[1], self.bands[2]),
            Level::Lower => (self.bands[2], self.bands[3]),
        }
    }
}

#[derive(Debug, Clone)]
struct Heart {
    cx: f64,
    cy: f64,
    ax: f64,
    ay: f64,
    cos: f64,
    sin: f64,
}

impl Heart {
    /// > 0 outside the heart.
    fn outside_fn(&self, x: f64, y: f64) -> f64 {
        let dx = x - self.cx;
        let dy = y - self.cy;
        let p = (dx * self.cos + dy * self.sin) / self.ax;
        let q = (-dx * self.sin + dy * self.cos) / self.ay;
        (p * p + q * q).sqrt() - 1.0
    }
}

#[derive(Debug, Clone)]
struct Phantom {
    ox: f64,
    oy: f64,
    scale: f64,
    /// Index 0: the patient's left lung (image right); 1: the patient's right lung.
    lungs: [Lung; 2],
    heart: Heart,
    background: f64,
    tissue: f64,
    lung_depth: f64,
    ribs_posterior: Vec<f64>,
    ribs_anterior: Vec<f64>,
    rib_amp: f64,
    clavicle_y: f64,
    /// Low-frequency exposure variation: (frequency u, frequency v, phase, amplitude).
    waves: [(f64, f64, f64, f64); 3],
    gain: f64,
    offset: f64,
    noise: f64,
}

impl Phantom {
    fn new(rng: &mut SplitMix64) -> Self {
        let scale = rng.range(0.97, 1.05);
        let ox = 0.5 + rng.range(-0.02, 0.02);
        let oy = 0.5 - 0.5 * scale + rng.range(-0.015, 0.015);
        let heart_angle = rng.range(-0.45, -0.25);
        let heart = Heart {
            cx: rng.range(0.06, 0.09),
            cy: rng.range(0.66, 0.69),
            ax: rng.range(0.16, 0.19),
            ay: rng.range(0.12, 0.14),
            cos: cos_det(heart_angle),
            sin: sin_det(heart_angle),
        };
        let lungs = [
            Self::lung(rng, Side::Left, &heart),
            Self::lung(rng, Side::Right, &heart),
        ];
        let first_rib = rng.range(0.07, 0.10);
        let rib_step = rng.range(0.066, 0.074);
        let ribs_posterior = (0..11)
            .map(|i| first_rib + rib_step * i as f64 + rng.range(-0.004, 0.004))
            .collect();
        let ribs_anterior = (0..6)
            .map(|i| first_rib + 0.1 + 0.085 * i as f64 + rng.range(-0.004, 0.004))
            .collect();
        let mut waves = [(0.0, 0.0, 0.0, 0.0); 3];
        for w in &mut waves {
            let angle = rng.range(0.0, TAU);
            let freq = TAU * rng.range(0.5, 1.5);
            *w = (
                freq * cos_det(angle),
                freq * sin_det(angle),
                rng.range(0.0, TAU),
                rng.range(0.005, 0.018),
            );
        }
        Phantom {
            ox,
            oy,
            scale,
            lungs,
            heart,
            background: rng.range(0.02, 0.06),
            tissue: rng.range(0.46, 0.54),
            lung_depth: rng.range(0.28, 0.34),
            ribs_posterior,
            ribs_anterior,
            rib_amp: rng.range(0.06, 0.09),
            clavicle_y: rng.range(0.13, 0.16),
            waves,
            gain: rng.range(0.92, 1.08),
            offset: rng.range(-0.03, 0.03),
            noise: rng.range(0.012, 0.022),
        }
    }

    fn lung(rng: &mut SplitMix64, side: Side, heart: &Heart) -> Lung {
        // The patient's right hemidiaphragm sits a little higher, as in real films.
        let (sign, lift) = match side {
            Side::Left => (1.0, 0.0),
            Side::Right => (-1.0, 0.02),
        };
        let vc = rng.range(0.455, 0.48);
        let hh = rng.range(0.325, 0.345);
        let hilum = (rng.range(0.09, 0.12), rng.range(0.40, 0.45));
        let vessels = (0..7)
            .map(|_| {
                let angle = rng.range(-1.2, 1.3);
                Vessel {
                    l0: hilum.0 + rng.range(-0.01, 0.01),
                    y0: hilum.1 + rng.range(-0.02, 0.02),
                    dl: cos_det(angle),
                    dy: sin_det(angle),
                    len: rng.range(0.10, 0.24),
                    width: rng.range(0.005, 0.009),
                }
            })
            .collect();
        let mut lung = Lung {
            side,
            sign,
            lc: rng.range(0.23, 0.245),
            hw: rng.range(0.152, 0.165),
            vc,
            hh,
            egg: 0.2,
            dome_base: vc + hh * rng.range(0.86, 0.9) - lift,
            dome_rise: rng.range(0.05, 0.08),
            bands: [0.0; 4],
            hilum,
            vessels,
        };
        let inside =
            |l: f64, y: f64| lung.inside_shape(l * sign, y) && heart.outside_fn(l * sign, y) > 0.0;
        // Lowest point of the field (numerically; the outline has no closed form for it).
        let mut bottom = lung.vc;
        for i in 0..=256 {
            let l = lung.lc + lung.hw * (-1.4 + 2.8 * i as f64 / 256.0);
            let mut y = lung.vc + lung.hh;
            while y > bottom {
                if inside(l, y) {
                    bottom = y;
                    break;
                }
                y -= lung.hh / 512.0;
            }
        }
        // One scan step below the last inside point: nothing of the field lies lower.
        let bottom = bottom + lung.hh / 512.0;
        // Thirds of the height from the apex to the top of the diaphragm dome; the lower band
        // also takes the costophrenic recess below the dome's top.
        let top = lung.vc - lung.hh;
        let third = (lung.dome_base - lung.dome_rise - top) / 3.0;
        lung.bands = [top, top + third, top + 2.0 * third, bottom];
        lung
    }

    fn lung_of(&self, side: Side) -> &Lung {
        match side {
            Side::Left => &self.lungs[0],
            Side::Right => &self.lungs[1],
        }
    }

    fn to_body(&self, u: f64, v: f64) -> (f64, f64) {
        ((u - self.ox) / self.scale, (v - self.oy) / self.scale)
    }

    fn to_image(&self, x: f64, y: f64) -> (f64, f64) {
        (self.ox + self.scale * x, self.oy + self.scale * y)
    }

    /// The zone a body point lies in, if any.
    fn zone_at(&self, x: f64, y: f64) -> Option<Zone> {
        self.lungs.iter().find_map(|lung| {
            (lung.inside_shape(x, y) && self.heart.outside_fn(x, y) > 0.0 && y < lung.bands[3])
                .then(|| Zone::new(lung.side, lung.level_at(y)))
        })
    }

    /// Inner distance of the lung field (heart shadow cut out), > 0 inside.
    fn field_distance(&self, lung: &Lung, x: f64, y: f64) -> f64 {
        let heart = inner_distance(|x, y| self.heart.outside_fn(x, y), x, y);
        lung.shape_distance(x, y).min(heart)
    }

    /// Inner distance of a zone, > 0 exactly where `zone_at` gives this zone.
    fn zone_distance(&self, zone: Zone, x: f64, y: f64) -> f64 {
        let lung = self.lung_of(zone.side);
        let (lo, hi) = lung.band(zone.level);
        self.field_distance(lung, x, y).min(y - lo).min(hi - y)
    }

    /// Neck, then rounded shoulders (a quarter circle), then a slowly widening chest.
    fn body_half_width(y: f64) -> f64 {
        let t = ((y + 0.06) / 0.2).clamp(0.0, 1.0);
        0.09 + 0.355 * (1.0 - (1.0 - t) * (1.0 - t)).sqrt() + 0.02 * y.clamp(0.0, 1.0)
    }

    /// Noise-free grey value (0..1 before exposure) at image point (u, v).
    fn value(&self, u: f64, v: f64) -> f64 {
        let (x, y) = self.to_body(u, v);
        let ax = x.abs();
        let half = Self::body_half_width(y);
        let body = smoothstep(0.0, 0.025, half - ax);
        let heart = 1.0 - smoothstep(-0.08, 0.08, self.heart.outside_fn(x, y));
        // Heart, mediastinum and abdomen are one continuous dense silhouette: take the
        // thickest, so no outline shows where they meet.
        let dense = (0.12 * heart)
            .max(0.12 * bump(x / 0.16))
            .max(0.15 * smoothstep(0.72, 0.98, y));
        let tissue = self.tissue + 0.05 * (ax / half).min(1.0) * (ax / half).min(1.0) + dense;
        let mut g = self.background + (tissue - self.background) * body;
        let mut in_lung: f64 = 0.0;

        for lung in &self.lungs {
            let l = lung.lateral(x);
            // Far from a lung nothing below contributes; skip the distance estimates.
            if l < 0.0 || (l - lung.lc).abs() > 2.0 * lung.hw || y < lung.bands[0] - 0.05 {
                continue;
            }
            let d = self.field_distance(lung, x, y);
            let alpha = smoothstep(-0.004, 0.014, d);
            if alpha <= 0.0 {
                continue;
            }
            let base_fade = 1.0 - 0.3 * smoothstep(lung.vc, lung.bands[3], y);
            let rim = 0.8 + 0.2 * smoothstep(0.0, 0.06, d);
            let mut lung_g = -self.lung_depth * base_fade * rim;
            let (hl, hy) = lung.hilum;
            let r = ((l - hl) * (l - hl) + (y - hy) * (y - hy)).sqrt();
            lung_g += 0.07 * bump(r / 0.07);
            for vs in &lung.vessels {
                // Starting off the hilum's centre keeps the vessels from adding up to a star.
                let t = ((l - vs.l0) * vs.dl + (y - vs.y0) * vs.dy).clamp(0.03, vs.len);
                let px = vs.l0 + t * vs.dl - l;
                let py = vs.y0 + t * vs.dy - y;
                let taper = 1.0 - 0.7 * t / vs.len;
                let dist = (px * px + py * py).sqrt();
                lung_g += 0.035 * taper * bump(dist / (vs.width * taper));
            }
            g += alpha * lung_g;
            in_lung = in_lung.max(alpha);
        }

        let mut bones = 0.0;
        if ax > 0.02 && ax < half {
            let edge_fade = smoothstep(0.02, 0.07, ax) * (1.0 - smoothstep(half - 0.04, half, ax));
            for &y0 in &self.ribs_posterior {
                // Posterior ribs rise slightly from the spine, then curve down laterally.
                let yr = y0 - 0.25 * ax + 1.3 * ax * ax;
                let slope = -0.25 + 2.6 * ax;
                let dist = (y - yr) / (1.0 + slope * slope).sqrt();
                let t = dist / 0.016;
                // Brighter cortex at the rib edges.
                bones += self.rib_amp * (bump(t) + 0.35 * bump((t.abs() - 0.8) / 0.25));
            }
            for &y0 in &self.ribs_anterior {
                // Anterior ribs run down towards the midline; fainter, ending before the spine.
                let yr = y0 + 0.4 * (0.42 - ax);
                let dist = (y - yr) / (1.0f64 + 0.16).sqrt();
                bones += 0.4 * self.rib_amp * bump(dist / 0.012) * smoothstep(0.08, 0.16, ax);
            }
            if ax < 0.36 {
                let yc = self.clavicle_y - 0.14 * ax + 0.25 * ax * ax;
                bones += 0.11 * bump((y - yc) / 0.017) * (1.0 - smoothstep(0.30, 0.36, ax));
            }
            // Ribs show best against air; over soft tissue they fade.
            bones *= edge_fade * (0.4 + 0.6 * in_lung);
        }
        let vertebra = 0.85 + 0.15 * cos_det(TAU * y / 0.07);
        bones += 0.16 * bump(x / 0.045) * vertebra;
        bones -= 0.07 * bump(x / 0.02) * (1.0 - smoothstep(0.22, 0.32, y));
        g += bones * body;

        for &(fu, fv, phase, amp) in &self.waves {
            g += amp * cos_det(fu * u + fv * v + phase);
        }
        g
    }
}

// ---------------------------------------------------------------------------------------------
// Opacities (lesions and distractors share this one generator)

#[derive(Debug, Clone)]
struct Opacity {
    zone: Zone,
    lesion: bool,
    /// Centre (body coordinates), semi-axes and orientation.
    cx: f64,
    cy: f64,
    rx: f64,
    ry: f64,
    cos: f64,
    sin: f64,
    /// Outline harmonics k = 2, 3, 4: (amplitude, cos φ, sin φ).
    harmonics: [(f64, f64, f64); 3],
    /// Lobes in ellipse units: (offset x, offset y, scale); the first is the main body.
    lobes: Vec<(f64, f64, f64)>,
    /// Half-width of the soft edge in ellipse units; the mask edge is at radius 0.9.
    edge: f64,
    contrast: f64,
    /// Mottling: (frequency x, frequency y, phase) in body units, and its depth.
    texture: [(f64, f64, f64); 2],
    texture_depth: f64,
}

/// Radius (in outline units) where an opacity reaches half its strength: the mask edge.
const MASK_RADIUS: f64 = 0.9;

impl Opacity {
    fn new(rng: &mut SplitMix64, phantom: &Phantom, zone: Zone, lesion: bool) -> Self {
        let angle = rng.range(0.0, PI);
        let mut harmonics = [(0.0, 0.0, 0.0); 3];
        for (k, h) in harmonics.iter_mut().enumerate() {
            let phase = rng.range(0.0, TAU);
            *h = (
                rng.range(0.0, [0.12, 0.08, 0.05][k]),
                cos_det(phase),
                sin_det(phase),
            );
        }
        let wobble: f64 = harmonics.iter().map(|h| h.0).sum();
        let mut lobes = vec![(0.0, 0.0, 1.0)];
        for _ in 0..[0, 0, 0, 1, 2][rng.below(5)] {
            let a = rng.range(0.0, TAU);
            let dist = rng.range(0.45, 0.7);
            lobes.push((dist * cos_det(a), dist * sin_det(a), rng.range(0.5, 0.7)));
        }
        let edge = rng.range(0.2, 0.42);
        // Extent of the mask in outline units, then the physical extent we aim for.
        let reach = lobes
            .iter()
            .map(|&(ox, oy, s)| (ox * ox + oy * oy).sqrt() + s * MASK_RADIUS * (1.0 + wobble))
            .fold(0.0, f64::max);
        let aspect = rng.range(0.75, 1.33).sqrt();
        let mut extent = rng.range(0.07, 0.13);

        // Centre: a point of the zone with room for the whole mask (plus the window ramp).
        let lung = phantom.lung_of(zone.side);
        let (lo, hi) = lung.band(zone.level);
        let mut best = (f64::NEG_INFINITY, 0.0, 0.0);
        for _ in 0..64 {
            let l = lung.lc + lung.hw * rng.range(-1.1, 1.3);
            let y = rng.range(lo, hi);
            let x = lung.sign * l;
            let room = phantom.zone_distance(zone, x, y) - WINDOW;
            if room > best.0 {
                best = (room, x, y);
            }
            if room * ROOM_SLACK >= extent {
                break;
            }
        }
        let (room, cx, cy) = best;
        extent = extent.min(room * ROOM_SLACK).max(0.02);
        let r = extent / (reach * aspect);
        let mut texture = [(0.0, 0.0, 0.0); 2];
        for t in &mut texture {
            let a = rng.range(0.0, TAU);
            let f = TAU / (r * rng.range(0.6, 1.4));
            *t = (f * cos_det(a), f * sin_det(a), rng.range(0.0, TAU));
        }
        Opacity {
            zone,
            lesion,
            cx,
            cy,
            rx: r * aspect,
            ry: r / aspect,
            cos: cos_det(angle),
            sin: sin_det(angle),
            harmonics,
            lobes,
            edge,
            contrast: rng.range(0.16, 0.30),
            texture,
            texture_depth: rng.range(0.05, 0.2),
        }
    }

    /// Normalised radius: < 0.9 inside the mask outline, grows outwards.
    fn radius(&self, x: f64, y: f64) -> f64 {
        let dx = x - self.cx;
        let dy = y - self.cy;
        let p = (dx * self.cos + dy * self.sin) / self.rx;
        let q = (-dx * self.sin + dy * self.cos) / self.ry;
        let mut best = f64::INFINITY;
        for &(ox, oy, s) in &self.lobes {
            let a = (p - ox) / s;
            let b = (q - oy) / s;
            let rho = (a * a + b * b).sqrt();
            if rho < 1e-12 {
                return 0.0;
            }
            // cos kθ, sin kθ by repeated complex multiplication: no atan2 needed.
            let (c1, s1) = (a / rho, b / rho);
            let (mut ck, mut sk) = (c1, s1);
            let mut outline = 1.0;
            for &(amp, cp, sp) in &self.harmonics {
                (ck, sk) = (ck * c1 - sk * s1, sk * c1 + ck * s1);
                outline += amp * (ck * cp - sk * sp);
            }
            best = best.min(rho / (s * outline));
        }
        best
    }

    /// Half-extent of the drawn (soft) opacity in body units, for its bounding box.
    fn bound(&self) -> f64 {
        let wobble: f64 = 1.0 + self.harmonics.iter().map(|h| h.0).sum::<f64>();
        let reach = self
            .lobes
            .iter()
            .map(|&(ox, oy, s)| (ox * ox + oy * oy).sqrt() + s * (MASK_RADIUS + self.edge) * wobble)
            .fold(0.0, f64::max);
        reach * self.rx.max(self.ry) + 0.01
    }
}

/// How far past its zone's inscribed room an opacity may reach (the window trims the excess).
const ROOM_SLACK: f64 = 1.1;

/// Width of the ramp that fades an opacity to zero at its zone's boundary.
const WINDOW: f64 = 0.01;

// ---------------------------------------------------------------------------------------------
// Rendering

/// Pixels of one opacity above half strength (what the tests check zones against).
#[derive(Debug, Clone)]
#[cfg_attr(not(test), allow(dead_code))]
struct ObjectMask {
    zone: Zone,
    lesion: bool,
    pixels: Vec<usize>,
}

#[cfg_attr(not(test), allow(dead_code))]
struct Rendered {
    sample: SynthSample,
    phantom: Phantom,
    objects: Vec<ObjectMask>,
}

/// Random subset of `k` distinct items of `from`, in draw order.
fn choose<T: Copy>(rng: &mut SplitMix64, from: &[T], k: usize) -> Vec<T> {
    let mut pool = from.to_vec();
    (0..k.min(pool.len()))
        .map(|_| pool.swap_remove(rng.below(pool.len())))
        .collect()
}

fn render(cfg: &SynthConfig, index: u64) -> Rendered {
    let size = cfg.size;
    let mut rng = SplitMix64::stream(cfg.seed, index, 1);
    let phantom = Phantom::new(&mut rng);

    let n_lesions = 1 + rng.below(cfg.max_lesions.clamp(1, 6));
    let mut zones = choose(&mut rng, &Zone::ALL, n_lesions);
    let free: Vec<Zone> = Zone::ALL
        .into_iter()
        .filter(|z| !zones.contains(z))
        .collect();
    let most = cfg.max_distractors.min(free.len());
    let n_distractors = if most == 0 { 0 } else { 1 + rng.below(most) };
    let mut distractor_zones = choose(&mut rng, &free, n_distractors);
    let opacities: Vec<Opacity> = zones
        .iter()
        .map(|&z| (z, true))
        .chain(distractor_zones.iter().map(|&z| (z, false)))
        .map(|(z, lesion)| Opacity::new(&mut rng, &phantom, z, lesion))
        .collect();
    zones.sort();
    distractor_zones.sort();

    let mut image = vec![0.0f64; size * size];
    let px_to_unit = |p: usize| (p as f64 + 0.5) / size as f64;
    for (row, line) in image.chunks_mut(size.max(1)).enumerate() {
        let v = px_to_unit(row);
        for (col, g) in line.iter_mut().enumerate() {
            *g = phantom.value(px_to_unit(col), v);
        }
    }

    let mut mask = vec![0u8; size * size];
    let mut objects = Vec::with_capacity(opacities.len());
    // An empty image (size 0) has no pixels to visit.
    for op in opacities.iter().filter(|_| size > 0) {
        let (u, v) = phantom.to_image(op.cx, op.cy);
        let half = op.bound() * phantom.scale * size as f64;
        let span = |c: f64| {
            let c = c * size as f64 - 0.5;
            let lo = (c - half).floor().max(0.0) as usize;
            let hi = ((c + half).ceil().max(0.0) as usize).min(size.saturating_sub(1));
            lo..=hi
        };
        let mut pixels = Vec::new();
        for row in span(v) {
            for col in span(u) {
                let (x, y) = phantom.to_body(px_to_unit(col), px_to_unit(row));
                let rad = op.radius(x, y);
                let profile = 1.0 - smoothstep(MASK_RADIUS - op.edge, MASK_RADIUS + op.edge, rad);
                if profile <= 0.0 {
                    continue;
                }
                let room = phantom.zone_distance(op.zone, x, y);
                if room <= 0.0 {
                    continue;
                }
                let strength = profile * smoothstep(0.0, WINDOW, room);
                let mottle: f64 = op
                    .texture
                    .iter()
                    .map(|&(fx, fy, ph)| cos_det(fx * x + fy * y + ph))
                    .sum::<f64>()
                    * 0.5;
                let i = row * size + col;
                image[i] += op.contrast * strength * (1.0 + op.texture_depth * mottle);
                if strength >= 0.5 {
                    pixels.push(i);
                    if op.lesion {
                        mask[i] = 1;
                    }
                }
            }
        }
        objects.push(ObjectMask {
            zone: op.zone,
            lesion: op.lesion,
            pixels,
        });
    }

    let mut noise_rng = SplitMix64::stream(cfg.seed, index, 2);
    let image = image
        .into_iter()
        .map(|g| {
            let g = g * phantom.gain + phantom.offset + phantom.noise * noise_rng.normal();
            (g.clamp(0.0, 1.0) * 255.0).round() as u8
        })
        .collect();
    let note = note_for(&zones);
    Rendered {
        sample: SynthSample {
            image,
            mask,
            note,
            zones,
            distractor_zones,
        },
        phantom,
        objects,
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    use crate::test_support::shared;

    fn cfg(size: usize) -> SynthConfig {
        SynthConfig {
            size,
            ..SynthConfig::default()
        }
    }

    fn fnv1a(bytes: impl IntoIterator<Item = u8>) -> u64 {
        bytes.into_iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        })
    }

    /// Zone of every pixel, from the same geometry the sample was drawn with.
    fn zones_of(r: &Rendered, size: usize) -> Vec<Option<Zone>> {
        let unit = |p: usize| (p as f64 + 0.5) / size as f64;
        (0..size * size)
            .map(|i| {
                let (x, y) = r.phantom.to_body(unit(i % size), unit(i / size));
                r.phantom.zone_at(x, y)
            })
            .collect()
    }

    fn z(side: Side, level: Level) -> Zone {
        Zone::new(side, level)
    }

    #[test]
    fn splitmix64_matches_the_published_sequence() {
        // First outputs of SplitMix64 from state 0 (Vigna's reference splitmix64.c).
        let mut rng = SplitMix64 { state: 0 };
        assert_eq!(rng.next_u64(), 0xe220_a839_7b1d_cdaf);
        assert_eq!(rng.next_u64(), 0x6e78_9e6a_a1b9_65f4);
        assert_eq!(rng.next_u64(), 0x06c4_5d18_8009_454f);
    }

    #[test]
    fn own_cosine_matches_std_to_1e_10() {
        for i in -5000..5000 {
            let x = f64::from(i) * 0.0137;
            assert!((cos_det(x) - x.cos()).abs() < 1e-10, "cos({x})");
            assert!((sin_det(x) - x.sin()).abs() < 1e-10, "sin({x})");
        }
    }

    #[test]
    fn same_seed_and_index_give_the_same_bytes() {
        let c = cfg(64);
        let a = sample(&c, 5);
        assert_eq!(a, sample(&c, 5));
        assert_ne!(a.image, sample(&c, 6).image);
        let other_seed = SynthConfig { seed: 1, ..c };
        assert_ne!(a.image, sample(&other_seed, 5).image);
    }

    #[test]
    fn output_is_pinned() {
        // Changing the generator changes every published demo number: update only on purpose.
        let s = sample(&cfg(64), 0);
        assert_eq!(
            s.note,
            "Bilateral pulmonary infection, two infected areas, lower left lung and upper right lung."
        );
        let hash = fnv1a(s.image.iter().chain(&s.mask).copied());
        assert_eq!(hash, 0x4778_c8ff_f495_39f9, "{hash:#018x}");
    }

    #[test]
    fn one_scene_at_every_size() {
        // Geometry is drawn in body coordinates, so sizes differ only by sampling.
        let small = sample(&cfg(64), 3);
        let large = sample(&cfg(224), 3);
        assert_eq!(small.note, large.note);
        assert_eq!(small.distractor_zones, large.distractor_zones);
        let frac = |m: &[u8]| m.iter().map(|&v| f64::from(v)).sum::<f64>() / m.len() as f64;
        assert!((frac(&small.mask) - frac(&large.mask)).abs() < 0.004);
    }

    #[test]
    fn lesions_lie_in_named_zones_and_distractors_outside() {
        for size in [64, 96] {
            let c = cfg(size);
            for index in 0..40 {
                let r = render(&c, index);
                let s = &r.sample;
                let zmap = zones_of(&r, size);
                if index < 3 {
                    assert_eq!(zone_map(&c, index), zmap, "public zone_map disagrees");
                }
                assert!((1..=4).contains(&s.zones.len()), "#{index}");
                assert!((1..=3).contains(&s.distractor_zones.len()), "#{index}");
                assert!(s.zones.is_sorted() && s.distractor_zones.is_sorted());
                assert!(s.distractor_zones.iter().all(|d| !s.zones.contains(d)));
                assert_eq!(parse_note(&s.note).as_ref(), Some(&s.zones), "{}", s.note);
                assert_eq!(s.image.len(), size * size);
                assert!(s.mask.iter().all(|&m| m <= 1));
                for (i, &m) in s.mask.iter().enumerate() {
                    if m == 1 {
                        let zone = zmap[i].expect("mask pixel outside every lung zone");
                        assert!(s.zones.contains(&zone), "#{index}: mask pixel in {zone}");
                    }
                }
                let mut lesion_pixels = 0;
                for obj in &r.objects {
                    // Each opacity is a visible blob of its own, entirely in its zone.
                    assert!(
                        obj.pixels.len() >= 10 * size * size / 4096,
                        "#{index} {obj:?}"
                    );
                    for &p in &obj.pixels {
                        assert_eq!(zmap[p], Some(obj.zone), "#{index}");
                        assert_eq!(s.mask[p] == 1, obj.lesion, "#{index}");
                    }
                    assert_eq!(obj.lesion, s.zones.contains(&obj.zone));
                    assert_eq!(!obj.lesion, s.distractor_zones.contains(&obj.zone));
                    if obj.lesion {
                        lesion_pixels += obj.pixels.len();
                    }
                }
                let mask_pixels = s.mask.iter().filter(|&&m| m == 1).count();
                assert_eq!(mask_pixels, lesion_pixels, "#{index}");
            }
        }
    }

    #[test]
    fn patients_left_lung_is_on_the_images_right() {
        let size = 64;
        let c = cfg(size);
        for index in 0..20 {
            let zmap = zone_map(&c, index);
            let (mut left, mut right) = (0, 0);
            for (i, zone) in zmap.iter().enumerate() {
                let on_image_right = i % size >= size / 2;
                match zone.map(|z| z.side) {
                    Some(Side::Left) => {
                        assert!(on_image_right);
                        left += 1;
                    }
                    Some(Side::Right) => {
                        assert!(!on_image_right);
                        right += 1;
                    }
                    None => {}
                }
            }
            // Both lung fields are large: 10-19 % of the image each.
            for n in [left, right] {
                let frac = f64::from(n) / (size * size) as f64;
                assert!((0.10..0.19).contains(&frac), "#{index}: {frac}");
            }
        }
    }

    /// How one opacity looks at 64 px.
    #[derive(Debug)]
    struct Look {
        lesion: bool,
        pixels: f64,
        /// Grey levels the opacity adds to the phantom, averaged over its mask.
        added: f64,
    }

    fn looks(n: u64) -> Vec<Look> {
        let size = 64;
        let c = cfg(size);
        let unit = |p: usize| (p as f64 + 0.5) / size as f64;
        let mut out = Vec::new();
        for index in 0..n {
            let r = render(&c, index);
            let ph = &r.phantom;
            for obj in &r.objects {
                // The pixel noise averages out over a blob of 40+ pixels.
                let added = obj
                    .pixels
                    .iter()
                    .map(|&p| {
                        let base = ph.value(unit(p % size), unit(p / size)) * ph.gain + ph.offset;
                        f64::from(r.sample.image[p]) - 255.0 * base.clamp(0.0, 1.0)
                    })
                    .sum::<f64>()
                    / obj.pixels.len() as f64;
                out.push(Look {
                    lesion: obj.lesion,
                    pixels: obj.pixels.len() as f64,
                    added,
                });
            }
        }
        out
    }

    #[test]
    fn lesions_are_visible_and_distractors_look_the_same() {
        let all = looks(300);
        let mean = |lesion: bool, f: fn(&Look) -> f64| {
            let v: Vec<f64> = all.iter().filter(|l| l.lesion == lesion).map(f).collect();
            v.iter().sum::<f64>() / v.len() as f64
        };
        let (area_l, area_d) = (mean(true, |l| l.pixels), mean(false, |l| l.pixels));
        let (rise_l, rise_d) = (mean(true, |l| l.added), mean(false, |l| l.added));
        eprintln!(
            "lesions {area_l:.1} px, +{rise_l:.1} grey; distractors {area_d:.1} px, +{rise_d:.1} grey"
        );
        assert!(
            (area_l - area_d).abs() / area_l < 0.1,
            "{area_l} vs {area_d}"
        );
        assert!(
            (rise_l - rise_d).abs() / rise_l < 0.05,
            "{rise_l} vs {rise_d}"
        );
        // At 64 px a lesion averages 50+ pixels and brightens the lung by 40+ grey levels.
        assert!(area_l > 50.0, "{area_l}");
        assert!(rise_l > 40.0, "{rise_l}");
        let faint: Vec<&Look> = all.iter().filter(|l| l.added < 25.0).collect();
        assert!(faint.is_empty(), "{faint:?}");
    }

    #[test]
    fn mask_covers_a_few_percent() {
        let c = cfg(64);
        let fracs: Vec<f64> = (0..200)
            .map(|i| {
                let m = sample(&c, i).mask;
                m.iter().map(|&v| f64::from(v)).sum::<f64>() / m.len() as f64
            })
            .collect();
        let mean = fracs.iter().sum::<f64>() / fracs.len() as f64;
        assert!((0.025..0.05).contains(&mean), "{mean}");
        assert!(fracs.iter().all(|&f| f > 0.004), "{fracs:?}");
    }

    #[test]
    fn degenerate_sizes_do_not_panic() {
        let s = sample(&cfg(0), 1);
        assert!(s.image.is_empty() && s.mask.is_empty() && !s.zones.is_empty());
        assert_eq!(sample(&cfg(1), 1).image.len(), 1);
    }

    #[test]
    fn limits_are_respected() {
        let one = SynthConfig {
            max_lesions: 1,
            max_distractors: 0,
            ..cfg(32)
        };
        let many = SynthConfig {
            max_lesions: 9,
            ..cfg(32)
        };
        let mut counts = [0usize; 7];
        for i in 0..60 {
            let s = sample(&one, i);
            assert_eq!((s.zones.len(), s.distractor_zones.len()), (1, 0));
            let s = sample(&many, i);
            counts[s.zones.len()] += 1;
            assert!(s.distractor_zones.len() <= (6 - s.zones.len()).min(3));
        }
        assert!(counts[6] > 0 && counts[0] == 0, "{counts:?}");
    }

    #[test]
    fn notes_in_qata_style() {
        assert_eq!(
            note_for(&[z(Side::Right, Level::Middle), z(Side::Left, Level::Lower)]),
            "Bilateral pulmonary infection, two infected areas, lower left lung and middle right lung."
        );
        assert_eq!(
            note_for(&[z(Side::Right, Level::Upper)]),
            "Unilateral pulmonary infection, one infected area, upper right lung."
        );
        assert_eq!(
            note_for(&[
                z(Side::Left, Level::Lower),
                z(Side::Left, Level::Upper),
                z(Side::Left, Level::Middle),
                z(Side::Left, Level::Upper),
            ]),
            "Unilateral pulmonary infection, three infected areas, upper middle lower left lung."
        );
        assert_eq!(note_for(&[]), "No pulmonary infection.");
        assert_eq!(parse_note("No pulmonary infection."), Some(vec![]));
    }

    #[test]
    fn every_cleaned_qata_test_caption_is_reproduced() {
        let path = shared().join("data/qata-cov19/Test_Folder/Test_text_cleaned.csv");
        let mut reader = csv::Reader::from_path(&path).expect("shared QaTa captions");
        let mut rows = 0;
        for record in reader.records() {
            let record = record.expect("csv row");
            let caption = &record[1];
            let zones = parse_note(caption).unwrap_or_else(|| panic!("{caption}"));
            assert_eq!(note_for(&zones).to_lowercase(), caption.to_lowercase());
            rows += 1;
        }
        assert_eq!(rows, 600);
    }

    #[test]
    fn lvit_notes_parse_except_typos() {
        use calamine::{Reader, open_workbook_auto};
        let path = shared().join("data/qata-cov19/Test_Folder/Test_text.xlsx");
        let mut book = open_workbook_auto(&path).expect("shared LViT notes");
        let range = book
            .worksheet_range_at(0)
            .expect("a sheet")
            .expect("readable");
        let notes: Vec<String> = range.rows().skip(1).map(|r| r[1].to_string()).collect();
        let failed: Vec<&String> = notes.iter().filter(|n| parse_note(n).is_none()).collect();
        assert_eq!(notes.len(), 600);
        // 7 misspellings ("midlle", "uppper", "leff", ...) and 2 notes without a side.
        assert_eq!(failed.len(), 9, "{failed:?}");
        assert_eq!(
            parse_note(
                "Bilateral pulmonary infection, two infected areas, all left lung and right lung."
            ),
            Some(Zone::ALL.to_vec())
        );
    }

    #[test]
    fn parse_note_rejects_what_is_not_a_zone_list() {
        for bad in [
            "",
            "lung",
            "Unilateral pulmonary infection, one infected area, upper leff lung.",
            "Bilateral pulmonary infection, two infected areas, lower left lobe.",
            "Unilateral pulmonary infection, one infected area, upper centre lung.",
        ] {
            assert_eq!(parse_note(bad), None, "{bad}");
        }
    }

    /// The tokens CLIP's BPE makes of these notes: one per word or punctuation mark, except
    /// "unilateral" (two; the golden file below confirms the model).
    fn note_tokens(note: &str) -> Vec<String> {
        note.to_lowercase()
            .replace("unilateral", "uni lateral")
            .replace(',', " ,")
            .replace('.', " .")
            .split_whitespace()
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn zone_words_survive_the_18_token_context() {
        // Check the one-token-per-word model against the reference tokenizer output.
        let path = shared().join("reference/tokenizer-golden.jsonl");
        let text = std::fs::read_to_string(&path).expect("tokenizer golden file");
        let mut checked = 0;
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line).expect("json line");
            let note = v["note"].as_str().expect("note");
            let Some(zones) = parse_note(note) else {
                continue;
            };
            if note_for(&zones).to_lowercase() != note {
                continue;
            }
            let ids = v["ids77_unpadded"].as_array().expect("ids");
            let n = ids.iter().filter(|id| id.as_u64() != Some(0)).count();
            assert_eq!(n, note_tokens(note).len() + 2, "{note}");
            checked += 1;
        }
        assert!(checked >= 50, "{checked}");
        // Truncation keeps SOT + 16 tokens + EOT: the last side word must be among those 16.
        for bits in 1u32..64 {
            let zones: Vec<Zone> = (0..6)
                .filter(|b| bits >> b & 1 == 1)
                .map(|b| Zone::ALL[b])
                .collect();
            if zones.len() > 4 {
                continue;
            }
            let tokens = note_tokens(&note_for(&zones));
            let last_side = tokens
                .iter()
                .rposition(|t| t == "left" || t == "right")
                .expect("side");
            assert!(last_side < 16, "{tokens:?}");
        }
    }

    #[test]
    fn flipping_swaps_left_and_right_only() {
        let note = "Bilateral pulmonary infection, two infected areas, lower left lung and middle right lung.";
        let flipped = flip_note_lr(note);
        assert_eq!(
            flipped,
            "Bilateral pulmonary infection, two infected areas, lower right lung and middle left lung."
        );
        assert_eq!(flip_note_lr(&flipped), note);
        assert_eq!(
            flip_note_lr("Left LEFT left, Right; leftover bright-left"),
            "Right RIGHT right, Left; leftover bright-right"
        );
        let c = cfg(32);
        for i in 0..30 {
            let s = sample(&c, i);
            let mut mirrored: Vec<Zone> = s
                .zones
                .iter()
                .map(|zn| {
                    let side = match zn.side {
                        Side::Left => Side::Right,
                        Side::Right => Side::Left,
                    };
                    z(side, zn.level)
                })
                .collect();
            mirrored.sort();
            assert_eq!(parse_note(&flip_note_lr(&s.note)), Some(mirrored));
        }
    }

    #[test]
    fn config_defaults_fill_missing_fields() {
        let c: SynthConfig = serde_json::from_str(r#"{"size": 64}"#).expect("json");
        assert_eq!(
            c,
            SynthConfig {
                size: 64,
                ..SynthConfig::default()
            }
        );
        assert_eq!((c.seed, c.max_lesions, c.max_distractors), (0, 4, 3));
        let back: SynthConfig =
            serde_json::from_str(&serde_json::to_string(&c).expect("ser")).expect("de");
        assert_eq!(back, c);
        assert_eq!(SynthConfig::default().size, 96);
        assert!(cfg(16).validate().is_err());
        assert!(
            SynthConfig {
                max_lesions: 0,
                ..cfg(64)
            }
            .validate()
            .is_err()
        );
    }

    #[test]
    fn write_lvit_layout_is_readable_and_atomic() {
        use calamine::{Reader, open_workbook_auto};
        let root = std::env::temp_dir().join(format!("reclmis-synth-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).expect("temp dir");
        let out = root.join("data");
        let c = cfg(64);

        // Bad settings: an error and nothing on disk.
        let err = write_lvit(&out, 1, 1, 1, &cfg(8)).expect_err("size 8");
        assert!(matches!(err, SynthError::Config(_)), "{err}");
        assert!(!out.exists());

        write_lvit(&out, 3, 2, 2, &c).expect("write");
        let leftovers: Vec<_> = std::fs::read_dir(&root)
            .expect("ls")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(leftovers, vec![std::ffi::OsString::from("data")]);

        let splits = [
            ("Train_Folder", 0..3u64),
            ("Val_Folder", 3..5),
            ("Test_Folder", 5..7),
        ];
        for (folder, range) in splits.clone() {
            assert_eq!(
                std::fs::read_dir(out.join(folder).join("img"))
                    .expect("img")
                    .count(),
                range.clone().count()
            );
            for index in range {
                let s = sample(&c, index);
                let img = image::open(out.join(format!("{folder}/img/synth_{index:06}.png")))
                    .expect("image");
                assert_eq!((img.width(), img.height()), (64, 64));
                assert_eq!(img.to_luma8().into_raw(), s.image);
                let mask =
                    image::open(out.join(format!("{folder}/labelcol/mask_synth_{index:06}.png")))
                        .expect("mask")
                        .to_luma8()
                        .into_raw();
                assert_eq!(mask, s.mask.iter().map(|&m| m * 255).collect::<Vec<_>>());
            }
        }
        let read = |file: &str| -> Vec<Vec<String>> {
            let mut book = open_workbook_auto(out.join(file)).expect("xlsx");
            let range = book
                .worksheet_range_at(0)
                .expect("sheet")
                .expect("readable");
            range
                .rows()
                .map(|r| r.iter().map(|c| c.to_string()).collect())
                .collect()
        };
        let train_val = read("Train_Folder/Train_Val_text.xlsx");
        assert_eq!(train_val[0], ["Image", "Description"]);
        assert_eq!(train_val.len(), 6);
        let test = read("Test_Folder/Test_text.xlsx");
        assert_eq!(test.len(), 3);
        for (row, index) in train_val[1..].iter().chain(&test[1..]).zip(0u64..) {
            assert_eq!(row[0], format!("mask_synth_{index:06}.png"));
            assert_eq!(row[1], sample(&c, index).note);
        }

        // A second run into the same folder is refused and leaves it as it was.
        let before = std::fs::read(out.join("Test_Folder/Test_text.xlsx")).expect("read");
        let err = write_lvit(
            &out,
            1,
            1,
            1,
            &SynthConfig {
                seed: 9,
                ..c.clone()
            },
        )
        .expect_err("exists");
        assert!(matches!(err, SynthError::OutputExists(_)), "{err}");
        assert!(
            err.to_string().ends_with(&format!("({})", out.display())),
            "{err}"
        );
        assert_eq!(
            std::fs::read(out.join("Test_Folder/Test_text.xlsx")).expect("read"),
            before
        );

        // An empty folder is fine to fill.
        let empty = root.join("empty");
        std::fs::create_dir(&empty).expect("mkdir");
        write_lvit(&empty, 1, 0, 1, &c).expect("write into empty folder");
        assert!(empty.join("Test_Folder/img/synth_000001.png").exists());
        std::fs::remove_dir_all(&root).expect("cleanup");
    }
}
