//! The note model: a clinical note parsed into a structured finding, and rendered back to one
//! canonical sentence.
//!
//! A QaTa-style note says which lung zones hold the infection: per side (the patient's left and
//! right, as the note names them), which of the upper, middle and lower zones are involved.
//! Clinicians say this in many ways ("all left lung", "throughout the left lung", "LLZ and LMZ",
//! "bibasal opacities, right lung clear"); the model was trained on one. [`parse`] reads any of
//! them into a [`Finding`] with a small grammar, in the spirit of rule-based report labelers
//! (CheXpert's labeler, NegBio): a closed vocabulary of zone, side and negation words, typo
//! correction into that vocabulary, and negation scopes bounded by clauses.
//!
//! [`Finding::canonical`] renders a finding in the cleaned QaTa caption style that the training
//! notes use ("bilateral pulmonary infection, four infected areas, upper middle lower left lung
//! and lower right lung."), counting one area per involved zone as those captions do. With
//! `notes.canonical = true` that sentence is what the text encoder reads, in training and at
//! test time alike (see [`NotesConfig`]).
//!
//! The grammar, in short:
//! - **Zones**: upper (apex, apical, upper lobe, `upp`), middle (mid, mid-zone, lingula),
//!   lower (base, basal, basilar, `lwr`); "all", "whole", "entire", "throughout", "diffuse",
//!   "all three zones" mean all three.
//! - **Sides**: left / right (`L`, `Lt`, `R`, `Rt`); "both", "bilateral", "bilaterally",
//!   "bibasal", "biapical" mean both when they carry zones or a lung noun ("both lungs"); a
//!   bare "bilateral pulmonary infection" only describes the rest of the note.
//! - **Abbreviations**: lobes `RUL RML RLL LUL LLL`, zones `RUZ RMZ RLZ LUZ LMZ LLZ`, `b/l`,
//!   `bilat`, `w/o`, `x3` as a count.
//! - **Attachment**: a note is split into sentences, clauses (at `, ; :` and contrastive
//!   words) and phrases (at "and", "or", "/"). Zones attach to the sides of their phrase; a
//!   phrase without a side takes the side of the phrase before it in the sentence ("left upper
//!   and middle zones"), or after it ("upper and middle zones of the left lung").
//! - **Negation**: "no", "not", "without", "sparing", "except", "nor" negate from the cue to the
//!   end of the clause; "clear", "spared", "normal", "unremarkable", "uninvolved", "free",
//!   "absent" negate their whole clause ("the right lung is clear"). Negated zones are removed
//!   from the finding: "throughout the left lung, sparing the apex" is the left middle and lower
//!   zones.
//! - **Typos** within a small edit distance are corrected into the closed vocabulary ("uppper",
//!   "leff", "midlle"); "left" and "right" are four edits apart, so a correction never turns one
//!   into the other. Words outside the vocabulary are kept in [`Reading::unknown`] and reported.

mod grammar;
mod lexicon;
#[cfg(test)]
mod tests;

use std::fmt;

pub use grammar::parse;

use serde::{Deserialize, Serialize};

/// The three lung zones of a chest film, top to bottom.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Zone {
    Upper,
    Middle,
    Lower,
}

impl Zone {
    pub const ALL: [Zone; 3] = [Zone::Upper, Zone::Middle, Zone::Lower];

    pub fn word(self) -> &'static str {
        match self {
            Zone::Upper => "upper",
            Zone::Middle => "middle",
            Zone::Lower => "lower",
        }
    }

    fn bit(self) -> u8 {
        1 << self as u8
    }
}

/// A set of zones of one lung, as bits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(into = "Vec<Zone>", from = "Vec<Zone>")]
pub struct Zones(u8);

impl Zones {
    pub const NONE: Zones = Zones(0);
    pub const ALL: Zones = Zones(0b111);

    pub fn contains(self, z: Zone) -> bool {
        self.0 & z.bit() != 0
    }

    pub fn insert(&mut self, z: Zone) {
        self.0 |= z.bit();
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn len(self) -> usize {
        self.0.count_ones() as usize
    }

    pub fn union(self, o: Zones) -> Zones {
        Zones(self.0 | o.0)
    }

    pub fn minus(self, o: Zones) -> Zones {
        Zones(self.0 & !o.0)
    }

    /// Top to bottom.
    pub fn iter(self) -> impl Iterator<Item = Zone> {
        Zone::ALL.into_iter().filter(move |&z| self.contains(z))
    }
}

impl From<Vec<Zone>> for Zones {
    fn from(v: Vec<Zone>) -> Self {
        let mut z = Zones::NONE;
        for x in v {
            z.insert(x);
        }
        z
    }
}

impl From<Zones> for Vec<Zone> {
    fn from(z: Zones) -> Self {
        z.iter().collect()
    }
}

/// The patient's left or right, as the note names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    Left,
    Right,
}

impl Side {
    pub const BOTH: [Side; 2] = [Side::Left, Side::Right];

    pub fn word(self) -> &'static str {
        match self {
            Side::Left => "left",
            Side::Right => "right",
        }
    }

    pub fn other(self) -> Side {
        match self {
            Side::Left => Side::Right,
            Side::Right => Side::Left,
        }
    }
}

/// What a note says: the involved zones of each lung, the zones it says are free, and the count
/// of areas it gives (if any).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Finding {
    pub left: Zones,
    pub right: Zones,
    /// Zones the note explicitly calls free ("right lung clear"), after removing involved ones.
    pub negated_left: Zones,
    pub negated_right: Zones,
    /// "two infected areas", "x3": the number as written. The canonical text recounts (one area
    /// per involved zone, as the cleaned captions count), so a wrong count does not matter.
    pub count: Option<u32>,
}

impl Finding {
    pub fn zones(&self, side: Side) -> Zones {
        match side {
            Side::Left => self.left,
            Side::Right => self.right,
        }
    }

    /// No involved zone at all.
    pub fn is_empty(&self) -> bool {
        self.left.is_empty() && self.right.is_empty()
    }

    /// Involved zones on both sides.
    pub fn is_bilateral(&self) -> bool {
        !self.left.is_empty() && !self.right.is_empty()
    }

    /// The involved zones only: what the canonical text says.
    pub fn structure(&self) -> (Zones, Zones) {
        (self.left, self.right)
    }

    /// The sides that are involved, left first.
    pub fn sides(&self) -> impl Iterator<Item = Side> + '_ {
        Side::BOTH
            .into_iter()
            .filter(|&s| !self.zones(s).is_empty())
    }

    /// The cleaned QaTa caption of this finding, e.g. "unilateral pulmonary infection, one
    /// infected area, middle right lung.": lower case, zones top to bottom, the left lung first,
    /// one area per involved zone. `None` for an empty finding.
    pub fn canonical(&self) -> Option<String> {
        if self.is_empty() {
            return None;
        }
        let n = self.left.len() + self.right.len();
        let parts: Vec<String> = self
            .sides()
            .map(|s| {
                let zones: Vec<&str> = self.zones(s).iter().map(Zone::word).collect();
                format!("{} {} lung", zones.join(" "), s.word())
            })
            .collect();
        Some(format!(
            "{} pulmonary infection, {} infected area{}, {}.",
            if self.is_bilateral() {
                "bilateral"
            } else {
                "unilateral"
            },
            number_word(n as u32).unwrap_or("several"),
            if n == 1 { "" } else { "s" },
            parts.join(" and ")
        ))
    }
}

impl fmt::Display for Finding {
    /// Compact: `L: upper middle; R: lower`, `R: —` for a free side.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let side = |z: Zones| {
            if z.is_empty() {
                "—".to_owned()
            } else {
                z.iter().map(Zone::word).collect::<Vec<_>>().join(" ")
            }
        };
        write!(f, "L: {}; R: {}", side(self.left), side(self.right))
    }
}

/// English number words the grammar reads and the canonical text writes.
const NUMBER_WORDS: [&str; 13] = [
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    "eleven", "twelve",
];

pub fn number_word(n: u32) -> Option<&'static str> {
    NUMBER_WORDS.get(n as usize).copied()
}

/// How far a note was understood.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ParseStatus {
    /// Every word is in the vocabulary and every zone found its side.
    Full,
    /// A finding was read, but some words are unknown or some zones had no side.
    Partial,
    /// No involved zone was found: the model reads the raw text.
    Unparsed,
}

impl fmt::Display for ParseStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ParseStatus::Full => "full",
            ParseStatus::Partial => "partial",
            ParseStatus::Unparsed => "unparsed",
        })
    }
}

/// A note as the grammar read it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Reading {
    pub finding: Finding,
    pub status: ParseStatus,
    /// Words outside the vocabulary, in order of appearance (kept, never dropped silently).
    pub unknown: Vec<String>,
    /// Typos corrected into the vocabulary: (as written, as read).
    pub corrections: Vec<(String, String)>,
    /// Zone words that found no side ("lower zone" in a note that names no lung).
    pub unresolved: Vec<String>,
}

impl Reading {
    /// The canonical sentence, or `None` when the note was not understood.
    pub fn canonical(&self) -> Option<String> {
        match self.status {
            ParseStatus::Unparsed => None,
            _ => self.finding.canonical(),
        }
    }
}

/// How notes reach the text encoder; part of the model's config, so a checkpoint reads notes
/// the way it was trained to.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct NotesConfig {
    /// Feed the encoder the canonical sentence of each parsed note instead of its raw text.
    /// Notes the grammar cannot read fall back to their raw text (and are reported). Off in the
    /// paper setting, which reads raw text at context 18.
    pub canonical: bool,
}

impl NotesConfig {
    /// The text the encoder reads for `note`.
    pub fn model_text(&self, note: &str) -> String {
        if !self.canonical || note.trim().is_empty() {
            return note.to_owned();
        }
        parse(note).canonical().unwrap_or_else(|| note.to_owned())
    }
}
