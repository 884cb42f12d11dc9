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

use std::collections::BTreeSet;
use std::fmt;

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

// ---------------------------------------------------------------------------------------------
// Lexicon

/// What one normalised word means to the grammar.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Lex {
    Zone(Zone),
    /// Apices, bases: a zone of both lungs unless a side is named.
    ZonePlural(Zone),
    /// All three zones.
    AllZones,
    Side(Side),
    /// A lobe or zone abbreviation: side and zone in one word.
    SideZone(Side, Zone),
    /// Bilateral, both; bibasal (both, lower).
    Both(Option<Zone>),
    /// Lung, lungs, hemithorax, field: makes a bare side mean the whole lung.
    LungNoun,
    /// Negates from here to the end of the clause.
    NegForward,
    /// Negates its whole clause.
    NegClause,
    /// Ends a clause (but, while, with, …).
    ClauseBreak,
    /// Joins phrases (and, or).
    PhraseBreak,
    Number(u32),
    /// `x3`, `3x`: a count by itself.
    Count(u32),
    /// A count noun after a number (areas, zones, foci).
    CountNoun,
    /// Words that carry no location: findings, verbs, articles.
    Filler,
}

impl Lex {
    /// Names a place: a zone, a side, or both.
    fn is_location(self) -> bool {
        matches!(
            self,
            Lex::Zone(_)
                | Lex::ZonePlural(_)
                | Lex::AllZones
                | Lex::Side(_)
                | Lex::SideZone(..)
                | Lex::Both(_)
        )
    }
}

fn lexicon(w: &str) -> Option<Lex> {
    use self::Side::{Left, Right};
    use self::Zone::{Lower, Middle, Upper};
    use Lex::*;
    Some(match w {
        "upper" | "top" | "superior" | "apex" | "apical" | "apically" | "upp" | "uppermost" => {
            Zone(Upper)
        }
        "apices" => ZonePlural(Upper),
        "middle" | "mid" | "midzone" | "midzones" | "mid-zone" | "central" | "midlung" => {
            Zone(Middle)
        }
        "lower" | "bottom" | "inferior" | "base" | "basal" | "basally" | "basilar" | "lwr"
        | "lowest" | "low" | "infrahilar" => Zone(Lower),
        "bases" => ZonePlural(Lower),
        "lingula" | "lingular" => SideZone(Left, Middle),
        "all" | "whole" | "entire" | "entirely" | "throughout" | "diffuse" | "diffusely"
        | "completely" | "widespread" | "every" | "panlobar" => AllZones,
        "left" | "l" | "lt" | "lft" | "leftsided" => Side(Left),
        "right" | "r" | "rt" | "rght" | "rightsided" => Side(Right),
        "lul" | "luz" => SideZone(Left, Upper),
        "lml" | "lmz" => SideZone(Left, Middle),
        "lll" | "llz" => SideZone(Left, Lower),
        "rul" | "ruz" => SideZone(Right, Upper),
        "rml" | "rmz" => SideZone(Right, Middle),
        "rll" | "rlz" => SideZone(Right, Lower),
        "bilateral" | "bilaterally" | "both" | "bilat" | "bil" | "bl" | "bi" | "either" => {
            Both(None)
        }
        "bibasal" | "bibasilar" | "bibasally" => Both(Some(Lower)),
        "biapical" | "biapically" => Both(Some(Upper)),
        // "Unilateral" only describes the rest of the note.
        "unilateral" | "unilaterally" => Filler,
        "lung" | "lungs" | "hemithorax" | "hemithoraces" | "hemithoraxes" | "field" | "fields" => {
            LungNoun
        }
        "no" | "not" | "without" | "sparing" | "spares" | "except" | "excluding" | "nor"
        | "neither" | "none" | "wo" | "minus" | "besides" | "nothing" => NegForward,
        "clear" | "clean" | "spared" | "normal" | "unremarkable" | "uninvolved" | "unaffected"
        | "free" | "absent" | "negative" | "preserved" | "intact" | "nil" | "nad" | "fine"
        | "ok" | "okay" => NegClause,
        "but" | "while" | "whereas" | "however" | "although" | "though" | "yet" | "with" => {
            ClauseBreak
        }
        "and" | "or" | "plus" => PhraseBreak,
        "area" | "areas" | "zone" | "zones" | "focus" | "foci" | "region" | "regions" | "site"
        | "sites" | "patch" | "patches" | "lesion" | "lesions" | "segment" | "segments"
        | "spots" | "places" | "locations" | "parts" => CountNoun,
        _ => {
            if let Some(n) = NUMBER_WORDS.iter().position(|&x| x == w) {
                return Some(Number(n as u32));
            }
            if let Ok(n) = w.parse::<u32>() {
                return Some(Number(n));
            }
            if FILLER.contains(&w) {
                return Some(Filler);
            }
            return None;
        }
    })
}

/// Words that carry no location: kinds of finding, verbs, articles, prepositions, degrees.
const FILLER: &[&str] = &[
    "a",
    "an",
    "the",
    "of",
    "in",
    "on",
    "at",
    "within",
    "involving",
    "involves",
    "involve",
    "involved",
    "involvement",
    "affecting",
    "affects",
    "affected",
    "is",
    "are",
    "be",
    "been",
    "was",
    "were",
    "seen",
    "noted",
    "present",
    "presence",
    "there",
    "visible",
    "demonstrated",
    "shows",
    "show",
    "showing",
    "demonstrates",
    "evidence",
    "suggest",
    "suggests",
    "suggestive",
    "consistent",
    "compatible",
    "likely",
    "possible",
    "probable",
    "pulmonary",
    "infection",
    "infections",
    "infected",
    "infective",
    "opacity",
    "opacities",
    "opacification",
    "opacified",
    "opaque",
    "consolidation",
    "consolidations",
    "consolidative",
    "consolidated",
    "ground",
    "glass",
    "groundglass",
    "ggo",
    "ggos",
    "airspace",
    "air",
    "space",
    "disease",
    "changes",
    "change",
    "shadowing",
    "shadow",
    "shadows",
    "haziness",
    "hazy",
    "infiltrate",
    "infiltrates",
    "infiltration",
    "infiltrative",
    "pneumonia",
    "pneumonitis",
    "covid",
    "covid19",
    "covid-19",
    "viral",
    "lobe",
    "lobes",
    "lobar",
    "lobular",
    "portion",
    "portions",
    "part",
    "aspect",
    "aspects",
    "patchy",
    "multifocal",
    "focal",
    "scattered",
    "mild",
    "moderate",
    "severe",
    "extensive",
    "minimal",
    "small",
    "large",
    "dense",
    "faint",
    "subtle",
    "peripheral",
    "predominantly",
    "predominant",
    "mainly",
    "mostly",
    "chiefly",
    "primarily",
    "also",
    "only",
    "solely",
    "isolated",
    "single",
    "multiple",
    "several",
    "few",
    "some",
    "finding",
    "findings",
    "abnormality",
    "abnormalities",
    "abnormal",
    "process",
    "processes",
    "markings",
    "marking",
    "chest",
    "cxr",
    "xray",
    "x-ray",
    "radiograph",
    "film",
    "ap",
    "pa",
    "view",
    "study",
    "image",
    "impression",
    "for",
    "by",
    "from",
    "as",
    "to",
    "its",
    "this",
    "that",
    "these",
    "it",
    "has",
    "have",
    "had",
    "which",
    "extending",
    "extends",
    "extend",
    "into",
    "over",
    "per",
    "each",
    "areas",
    "lesion",
    "region",
    "zones",
    "distribution",
    "distributed",
    "pattern",
    "appearance",
    "appears",
    "appear",
    "identified",
    "detected",
    "observed",
    "evident",
    "residual",
    "new",
    "persistent",
    "increased",
    "worsening",
    "improving",
    "stable",
    "interval",
    "bilateral",
    "s",
    "x",
    "side",
    "sided",
    "sides",
    "total",
    "complete",
];

/// Words the typo corrector may correct into: every word the grammar knows.
fn vocabulary() -> &'static [&'static str] {
    static VOCAB: std::sync::OnceLock<Vec<&'static str>> = std::sync::OnceLock::new();
    VOCAB.get_or_init(|| {
        let mut v: BTreeSet<&'static str> = FILLER.iter().copied().collect();
        v.extend([
            "upper",
            "middle",
            "lower",
            "apex",
            "apical",
            "apices",
            "base",
            "bases",
            "basal",
            "basilar",
            "lingula",
            "lingular",
            "all",
            "whole",
            "entire",
            "entirely",
            "throughout",
            "diffuse",
            "diffusely",
            "widespread",
            "every",
            "left",
            "right",
            "bilateral",
            "bilaterally",
            "both",
            "bibasal",
            "bibasilar",
            "biapical",
            "unilateral",
            "lung",
            "lungs",
            "hemithorax",
            "field",
            "fields",
            "side",
            "sided",
            "without",
            "sparing",
            "except",
            "excluding",
            "neither",
            "clear",
            "spared",
            "normal",
            "unremarkable",
            "uninvolved",
            "unaffected",
            "free",
            "absent",
            "negative",
            "preserved",
            "intact",
            "while",
            "whereas",
            "however",
            "although",
            "though",
            "with",
            "area",
            "areas",
            "zone",
            "zones",
            "focus",
            "region",
            "regions",
            "patch",
            "patches",
            "lesion",
            "lesions",
            "segment",
            "segments",
            "superior",
            "inferior",
            "central",
            "midzone",
            "three",
            "seven",
            "eight",
            "eleven",
            "twelve",
        ]);
        // Number words shorter than four letters are matched exactly only.
        v.into_iter().filter(|w| w.len() >= 4).collect()
    })
}

/// Damerau–Levenshtein distance (optimal string alignment), stopping early past `max`.
fn edit_distance(a: &[u8], b: &[u8], max: usize) -> usize {
    if a.len().abs_diff(b.len()) > max {
        return max + 1;
    }
    let (n, m) = (a.len(), b.len());
    let mut d = vec![vec![0usize; m + 1]; n + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=n {
        let mut best = usize::MAX;
        for j in 1..=m {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut v = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                v = v.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = v;
            best = best.min(v);
        }
        if best > max {
            return max + 1;
        }
    }
    d[n][m]
}

/// The vocabulary word a typo most likely meant: the unique nearest one within one edit (two for
/// words of seven letters or more). Words under three letters are never corrected.
fn correct(w: &str) -> Option<&'static str> {
    if w.len() < 3 || !w.bytes().all(|b| b.is_ascii_lowercase()) {
        return None;
    }
    let max = if w.len() >= 7 { 2 } else { 1 };
    let mut best: Option<(usize, &'static str)> = None;
    let mut tie = false;
    for &v in vocabulary() {
        let d = edit_distance(w.as_bytes(), v.as_bytes(), max);
        if d > max {
            continue;
        }
        match best {
            Some((bd, _)) if d > bd => {}
            Some((bd, bv)) if d == bd => tie |= bv != v,
            _ => {
                best = Some((d, v));
                tie = false;
            }
        }
    }
    match best {
        Some((_, v)) if !tie => Some(v),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// Tokens

/// One token of a note: a word (lower case) or a punctuation mark.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Tok {
    Word(String),
    /// `.` `;` `!` `?` and line breaks.
    SentenceEnd,
    /// `,`: ends a clause, or separates a list of zones ("upper, middle and lower").
    Comma,
    /// Brackets and dashes: always end a clause.
    Bracket,
    /// `/` between words: a list inside one phrase ("mid/lower", "L/R").
    Slash,
}

fn tokenize(note: &str) -> Vec<Tok> {
    let lower = note.to_lowercase();
    // Abbreviations written with a slash are words, not two words.
    let lower = lower
        .replace("b/l", " bilateral ")
        .replace("w/o", " without ")
        .replace("w/", " with ")
        .replace(" as well as ", " and ")
        // A dash between spaces ends a clause like a comma; inside a word it is a hyphen.
        .replace(" - ", " ; ")
        .replace(" -- ", " ; ");
    let mut out = Vec::new();
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut Vec<Tok>| {
        if !word.is_empty() {
            out.push(Tok::Word(std::mem::take(word)));
        }
    };
    let chars: Vec<char> = lower.chars().collect();
    for (i, &c) in chars.iter().enumerate() {
        if c.is_alphanumeric() {
            word.push(c);
            continue;
        }
        // An apostrophe inside a word ("patient's") and a hyphen inside a word ("mid-zone",
        // "ground-glass") split it, except a hyphen in "covid-19".
        flush(&mut word, &mut out);
        match c {
            '.' if chars.get(i + 1).is_some_and(|n| n.is_ascii_digit()) => {}
            '.' | ';' | '!' | '?' | '\n' => out.push(Tok::SentenceEnd),
            // "R-sided opacity: R lwr": a colon introduces detail of the same sentence.
            ',' => out.push(Tok::Comma),
            '(' | ')' | '[' | ']' | '\u{2013}' | '\u{2014}' => out.push(Tok::Bracket),
            // "Right side: NAD", "R-sided opacity: R lwr": a colon joins like "and".
            ':' => out.push(Tok::Word("and".into())),
            // "L mid/lwr + R lwr", "mid+lwr": a plus joins like "and".
            '&' | '+' => out.push(Tok::Word("and".into())),
            '/' => out.push(Tok::Slash),
            _ => {}
        }
    }
    flush(&mut word, &mut out);
    out
}

/// Splits a word like `x3` (a count) or `2x`.
fn count_word(w: &str) -> Option<u32> {
    let digits = w.strip_prefix('x').or_else(|| w.strip_suffix('x'))?;
    digits.parse().ok()
}

// ---------------------------------------------------------------------------------------------
// Parsing

/// A location word in a phrase.
#[derive(Clone, Copy, Debug)]
struct Item {
    lex: Lex,
    neg: bool,
}

/// Parses a note into a finding (see the module documentation for the grammar).
pub fn parse(note: &str) -> Reading {
    let mut unknown = Vec::new();
    let mut corrections = Vec::new();
    let mut count = None;
    let toks = tokenize(note);
    let lexed: Vec<Option<Lex>> = toks
        .iter()
        .map(|t| match t {
            Tok::Word(w) => {
                let lex = lexicon(w)
                    .or_else(|| count_word(w).map(Lex::Count))
                    .or_else(|| {
                        let c = correct(w)?;
                        corrections.push((w.clone(), c.to_owned()));
                        lexicon(c)
                    });
                if lex.is_none() {
                    unknown.push(w.clone());
                }
                lex
            }
            // "mid/lower", "L/R": a slash lists within a phrase.
            _ => None,
        })
        .collect();
    let zone_at = |k: Option<usize>| {
        k.and_then(|k| lexed.get(k).copied().flatten())
            .is_some_and(|l| matches!(l, Lex::Zone(_)))
    };
    let boundary: Vec<bool> = (0..toks.len())
        .map(|i| {
            // "apical, mid and lower zones": a comma inside a list of zones ends nothing.
            // Not between two sides, though ("Lt upper, upper/middle right lung"), nor once an
            // "and" has closed the list ("mid and basal, mid lower left lung").
            let segment: Vec<usize> = (0..i)
                .rev()
                .take_while(|&k| !matches!(toks[k], Tok::SentenceEnd | Tok::Comma | Tok::Bracket))
                .collect();
            let sided = segment
                .iter()
                .any(|&k| matches!(lexed[k], Some(Lex::Side(_) | Lex::SideZone(..))));
            let closed = segment.iter().any(|&k| {
                matches!(lexed[k], Some(Lex::PhraseBreak))
                    && segment.iter().any(|&j| j < k && zone_at(Some(j)))
            });
            // The rest of the list: up to the "and" after the one that closes it.
            let mut ands = 0;
            let sided_after = (i + 1..toks.len())
                .take_while(|&k| {
                    ands += usize::from(matches!(lexed[k], Some(Lex::PhraseBreak)));
                    !matches!(toks[k], Tok::SentenceEnd | Tok::Comma | Tok::Bracket) && ands < 2
                })
                .any(|k| matches!(lexed[k], Some(Lex::Side(_) | Lex::SideZone(..))));
            // Nor between a finding and a negated clause: "consolidation at the L base, upper
            // zones spared".
            let stated = segment
                .iter()
                .any(|&k| matches!(&toks[k], Tok::Word(w) if FINDING_NOUNS.contains(&w.as_str())));
            let negated_after = (i + 1..toks.len())
                .take_while(|&k| !matches!(toks[k], Tok::SentenceEnd | Tok::Comma | Tok::Bracket))
                .any(|k| matches!(lexed[k], Some(Lex::NegClause | Lex::NegForward)));
            let listing = toks[i] == Tok::Comma
                && zone_at(i.checked_sub(1))
                && zone_at(Some(i + 1))
                && !(sided && sided_after)
                && !(stated && negated_after)
                && !closed;
            matches!(toks[i], Tok::SentenceEnd | Tok::Bracket)
                || (toks[i] == Tok::Comma && !listing)
                || matches!(lexed[i], Some(Lex::ClauseBreak))
                || (matches!(lexed[i], Some(Lex::PhraseBreak))
                    && and_splits_clause(&toks, &lexed, i))
        })
        .collect();

    // Sentences of clauses of phrases of location words.
    let mut sentences: Vec<Vec<Vec<Vec<Item>>>> = vec![vec![]];
    let mut start = 0;
    while start <= toks.len() {
        let end = (start..toks.len())
            .find(|&k| boundary[k])
            .unwrap_or(toks.len());
        // "clear", "spared": the whole clause is negated; "no", "sparing": from the cue on.
        // "The right lung shows no opacity": a cue with no location after it negates the
        // whole clause too.
        let is_location = |k: usize| lexed[k].is_some_and(Lex::is_location);
        let trailing_cue = (start..end)
            .any(|c| matches!(lexed[c], Some(Lex::NegForward)) && !(c + 1..end).any(is_location));
        let backward =
            trailing_cue || (start..end).any(|k| matches!(lexed[k], Some(Lex::NegClause)));
        let mut forward = false;
        let mut number: Option<u32> = None;
        let mut phrases: Vec<Vec<Item>> = vec![vec![]];
        // After "upper, middle" the next "and" closes the list instead of starting a phrase.
        let mut listing = false;
        for k in start..end {
            if toks[k] == Tok::Comma {
                listing = true;
            }
            let Some(lex) = lexed[k] else { continue };
            match lex {
                Lex::PhraseBreak if listing => listing = false,
                Lex::PhraseBreak => phrases.push(vec![]),
                Lex::NegForward => {
                    // What follows the cue is negated, what came before it is not.
                    forward = true;
                    phrases.push(vec![]);
                }
                Lex::Number(n) => number = Some(n),
                Lex::Count(n) => {
                    count.get_or_insert(n);
                }
                Lex::CountNoun => {
                    if let Some(n) = number.take() {
                        count.get_or_insert(n);
                    }
                    phrases
                        .last_mut()
                        .expect("a clause always has an open phrase")
                        .push(Item { lex, neg: false });
                }
                Lex::Filler | Lex::NegClause | Lex::ClauseBreak => {}
                lex => phrases
                    .last_mut()
                    .expect("a clause always has an open phrase")
                    .push(Item {
                        lex,
                        neg: forward || backward,
                    }),
            }
        }
        sentences
            .last_mut()
            .expect("one sentence is always open")
            .push(phrases);
        if end < toks.len() && toks[end] == Tok::SentenceEnd {
            sentences.push(vec![]);
        }
        start = end + 1;
    }

    // A note that names no side at all ("opacities in all six zones") speaks of both lungs.
    let sided = lexed
        .iter()
        .any(|l| matches!(l, Some(Lex::Side(_) | Lex::SideZone(..))));
    let mut at = Attached::default();
    let mut unresolved = Vec::new();
    for sentence in &sentences {
        resolve_sentence(sentence, sided, &mut at, &mut unresolved);
    }
    // Named zones said to be free win over everything ("throughout the left lung, sparing the
    // apex"); a whole lung said to be free only covers what no phrase names as involved ("R
    // base consolidation, rest of the right lung clear").
    let negated = |s: usize| at.neg_zones[s].union(at.neg_whole[s].minus(at.pos[s]));
    let finding = Finding {
        left: at.pos[0].minus(at.neg_zones[0]),
        right: at.pos[1].minus(at.neg_zones[1]),
        negated_left: negated(0),
        negated_right: negated(1),
        count,
    };
    let status = if finding.is_empty() {
        ParseStatus::Unparsed
    } else if unknown.is_empty() && unresolved.is_empty() {
        ParseStatus::Full
    } else {
        ParseStatus::Partial
    };
    Reading {
        finding,
        status,
        unknown,
        corrections,
        unresolved,
    }
}

/// "and" ends a clause when both halves describe a finding at a place of their own: "left
/// lower opacity and the right lung is clear", but not "no opacity in the left and right lungs"
/// nor "no consolidation or ground-glass change on the left".
fn and_splits_clause(toks: &[Tok], lexed: &[Option<Lex>], i: usize) -> bool {
    let is_finding = |k: usize| {
        matches!(lexed[k], Some(Lex::NegClause) | Some(Lex::NegForward))
            || matches!(&toks[k], Tok::Word(w) if FINDING_NOUNS.contains(&w.as_str()))
    };
    let is_location = |k: usize| lexed[k].is_some_and(Lex::is_location);
    let stop = |k: usize| {
        matches!(toks[k], Tok::SentenceEnd | Tok::Comma | Tok::Bracket)
            || matches!(lexed[k], Some(Lex::ClauseBreak))
    };
    let before: Vec<usize> = (0..i).rev().take_while(|&k| !stop(k)).collect();
    let after: Vec<usize> = (i + 1..toks.len()).take_while(|&k| !stop(k)).collect();
    before.iter().any(|&k| is_finding(k))
        && after.iter().any(|&k| is_finding(k))
        && before.iter().any(|&k| is_location(k))
        && after.iter().any(|&k| is_location(k))
}

const FINDING_NOUNS: &[&str] = &[
    "opacity",
    "opacities",
    "opacification",
    "consolidation",
    "infection",
    "infiltrate",
    "infiltrates",
    "disease",
    "changes",
    "shadowing",
    "haziness",
    "pneumonia",
    "involvement",
    "ggo",
    "ggos",
    "glass",
    "change",
];

/// One phrase of a sentence: its zone words and side words, and what shapes their attachment.
#[derive(Default, Clone, Copy)]
struct Phrase {
    zones: Zones,
    sides: [bool; 2],
    both: bool,
    /// "apices", "bases": both lungs unless a side is named.
    plural: bool,
    /// "lung", "hemithorax": a bare side then means the whole lung.
    lung: bool,
    /// A noun of its own ("lower zones"), so it is no ellipsis of the next phrase's noun.
    noun: bool,
    neg: bool,
    /// "all", "whole", "throughout": the zones are the whole lung, not named one by one.
    whole: bool,
    clause: usize,
    /// A side word came before its zone words ("left upper") rather than after them ("upper
    /// zone of the left lung").
    side_first: bool,
}

impl Phrase {
    fn has_side(&self) -> bool {
        self.sides.iter().any(|&s| s)
    }
}

/// Zones attached to sides so far: involved, free by name, free as a whole lung.
#[derive(Default)]
struct Attached {
    pos: [Zones; 2],
    neg_zones: [Zones; 2],
    neg_whole: [Zones; 2],
}

/// Attaches the zones of one sentence's phrases to sides; `sided` says whether the note names
/// a side anywhere.
fn resolve_sentence(
    clauses: &[Vec<Vec<Item>>],
    sided: bool,
    at: &mut Attached,
    unresolved: &mut Vec<String>,
) {
    let mut phrases: Vec<Phrase> = Vec::new();
    // Lobe and zone abbreviations ("RLL", "LMZ") name their side themselves.
    let mut direct: Vec<(usize, Zone, bool)> = Vec::new();
    for (ci, clause) in clauses.iter().enumerate() {
        for items in clause {
            let mut p = Phrase {
                clause: ci,
                ..Phrase::default()
            };
            for it in items {
                p.neg |= it.neg;
                if matches!(it.lex, Lex::Side(_)) && p.zones.is_empty() {
                    p.side_first = true;
                }
                match it.lex {
                    Lex::Zone(z) => p.zones.insert(z),
                    Lex::ZonePlural(z) => {
                        p.zones.insert(z);
                        p.plural = true;
                    }
                    Lex::AllZones => {
                        p.zones = Zones::ALL;
                        p.whole = true;
                    }
                    Lex::Side(s) => p.sides[s as usize] = true,
                    Lex::SideZone(s, z) => direct.push((s as usize, z, it.neg)),
                    Lex::Both(z) => {
                        p.both = true;
                        if let Some(z) = z {
                            p.zones.insert(z);
                        }
                    }
                    Lex::LungNoun => p.lung = true,
                    Lex::CountNoun => p.noun = true,
                    _ => {}
                }
            }
            // A bilateral marker with zones or a lung noun names both lungs; alone ("bilateral
            // pulmonary infection") it only describes the rest of the note.
            if p.both && !p.has_side() && (!p.zones.is_empty() || p.lung) {
                p.sides = [true, true];
            }
            if !p.zones.is_empty() || p.has_side() {
                phrases.push(p);
            }
        }
    }

    // Pass 1: zones without a side take one from their neighbours.
    let named: Vec<[bool; 2]> = phrases
        .iter()
        .filter(|p| p.has_side())
        .map(|p| p.sides)
        .collect();
    let mut sides_of: Vec<Option<[bool; 2]>> = Vec::with_capacity(phrases.len());
    for (k, p) in phrases.iter().enumerate() {
        let sides = if p.has_side() {
            Some(p.sides)
        } else if p.plural || !sided {
            Some([true, true])
        } else if p.lung && !p.whole && named.len() == 1 && named[0] != [true, true] && !p.neg {
            // "all left lung and middle lower lung": a second lung named without its side is
            // the other one.
            Some([!named[0][0], !named[0][1]])
        } else if let Some(next) = phrases.get(k + 1).filter(|q| {
            !p.noun && q.clause == p.clause && q.has_side() && !q.side_first && !q.whole
        }) {
            // "the upper and middle zones of the right lung": "upper" shares the next phrase's
            // noun and its side.
            Some(next.sides)
        } else if let Some(prev) = phrases[..k].iter().rev().find(|q| q.has_side()) {
            // "left upper and middle zones", "left lung, sparing the apex".
            Some(prev.sides)
        } else {
            phrases[k + 1..]
                .iter()
                .find(|q| q.has_side())
                .map(|q| q.sides)
        };
        if sides.is_none() {
            unresolved.extend(p.zones.iter().map(|z| z.word().to_owned()));
        }
        sides_of.push(sides);
    }

    // Pass 2: a side without zones. Where the sentence gives that side zones elsewhere it is a
    // heading ("R-sided opacity: R lwr", "the left lung has opacities in its lower zone");
    // "left and right upper zones" shares the next phrase's zones; otherwise it is the whole
    // lung ("all left lung and right lung", "the right lung is clear").
    let mut zones_of: Vec<Zones> = phrases.iter().map(|p| p.zones).collect();
    let mut whole: Vec<bool> = phrases.iter().map(|p| p.whole).collect();
    for k in 0..phrases.len() {
        let p = phrases[k];
        if !p.zones.is_empty() {
            continue;
        }
        let covered = |s: usize| {
            phrases.iter().enumerate().any(|(j, q)| {
                j != k
                    && q.neg == p.neg
                    && !q.zones.is_empty()
                    && sides_of[j].is_some_and(|sj| sj[s])
            }) || direct.iter().any(|&(ds, _, dn)| ds == s && dn == p.neg)
        };
        if (0..2).filter(|&s| p.sides[s]).all(covered) {
            continue;
        }
        zones_of[k] = match phrases.get(k + 1) {
            Some(next) if !p.lung && next.has_side() && !next.zones.is_empty() => next.zones,
            _ => {
                whole[k] = true;
                Zones::ALL
            }
        };
    }

    for (k, p) in phrases.iter().enumerate() {
        let Some(sides) = sides_of[k] else { continue };
        for s in (0..2).filter(|&s| sides[s]) {
            let target = match (p.neg, whole[k]) {
                (false, _) => &mut at.pos[s],
                (true, false) => &mut at.neg_zones[s],
                (true, true) => &mut at.neg_whole[s],
            };
            *target = target.union(zones_of[k]);
        }
    }
    for (s, z, n) in direct {
        let target = if n {
            &mut at.neg_zones[s]
        } else {
            &mut at.pos[s]
        };
        target.insert(z);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zones(words: &str) -> Zones {
        let mut z = Zones::NONE;
        for w in words.split_whitespace() {
            z.insert(match w {
                "upper" => Zone::Upper,
                "middle" => Zone::Middle,
                "lower" => Zone::Lower,
                o => panic!("zone {o}"),
            });
        }
        z
    }

    fn reads(note: &str, left: &str, right: &str) {
        let r = parse(note);
        assert_eq!(
            r.finding.structure(),
            (zones(left), zones(right)),
            "{note:?} read as {} ({:?})",
            r.finding,
            r
        );
    }

    #[test]
    fn qata_captions_in_both_styles() {
        reads(
            "Bilateral pulmonary infection, two infected areas, all left lung and lower right lung.",
            "upper middle lower",
            "lower",
        );
        reads(
            "bilateral pulmonary infection, four infected areas, upper middle lower left lung and \
             lower right lung.",
            "upper middle lower",
            "lower",
        );
        reads(
            "Unilateral pulmonary infection, one infected area, middle right lung.",
            "",
            "middle",
        );
        reads(
            "Bilateral pulmonary infection, two infected areas, all left lung and right lung.",
            "upper middle lower",
            "upper middle lower",
        );
        reads(
            "Bilateral pulmonary infection, two infected areas, all left lung and middle lower lung.",
            "upper middle lower",
            "middle lower",
        );
    }

    #[test]
    fn typos_are_corrected_and_reported() {
        let r = parse(
            "Bilateral pulmonary infection, three infected areas, middle left lung and uppper lower right lung.",
        );
        assert_eq!(
            r.finding.structure(),
            (zones("middle"), zones("upper lower"))
        );
        assert_eq!(r.corrections, vec![("uppper".into(), "upper".into())]);
        reads(
            "Bilateral pulmonary infection, two infected areas, all leff lung and all right lung.",
            "upper middle lower",
            "upper middle lower",
        );
        reads(
            "upper midlle left lung and loweer right lung",
            "upper middle",
            "lower",
        );
    }

    #[test]
    fn negation_removes_sides_and_zones() {
        reads(
            "Opacity in the left lower zone. The right lung is clear.",
            "lower",
            "",
        );
        reads(
            "left lower zone consolidation, no opacity on the right",
            "lower",
            "",
        );
        reads(
            "Opacities throughout the left lung, sparing the apex.",
            "middle lower",
            "",
        );
        reads(
            "right basal consolidation without left lung involvement",
            "",
            "lower",
        );
        reads(
            "No opacity in the right lung; left mid and lower zone opacities.",
            "middle lower",
            "",
        );
        reads(
            "left lower opacity and the right lung is unremarkable",
            "lower",
            "",
        );
        let r = parse("The right lung is clear.");
        assert_eq!(r.status, ParseStatus::Unparsed);
        assert_eq!(r.finding.negated_right, Zones::ALL);
    }

    #[test]
    fn abbreviations_and_synonyms() {
        reads("LLZ and RMZ opacities", "lower", "middle");
        reads("RUL, RML consolidation", "", "upper middle");
        reads("bibasal opacities", "lower", "lower");
        reads("b/l lower zone GGO", "lower", "lower");
        reads(
            "Diffuse opacities in both lungs.",
            "upper middle lower",
            "upper middle lower",
        );
        reads("L mid/lower zone opac; R clear", "middle lower", "");
        reads("left upper and middle zones", "upper middle", "");
        reads(
            "upper and middle zones of the left lung",
            "upper middle",
            "",
        );
        reads("left and right upper zones", "upper", "upper");
        reads(
            "CXR: patchy consolidation at the L base, upper zones spared; rt lung clear",
            "lower",
            "",
        );
        reads(
            "left upper, middle and lower zones are clear. RLL opacity",
            "",
            "lower",
        );
        reads("opacity at both bases", "lower", "lower");
        reads("Lt apex and Rt base", "upper", "lower");
        reads(
            "all three zones of the right lung",
            "",
            "upper middle lower",
        );
        reads("lingular opacity", "middle", "");
    }

    #[test]
    fn left_never_becomes_right() {
        for w in ["lefft", "leftt", "lef", "leff", "lleft", "letf"] {
            let r = parse(&format!("lower {w} lung"));
            assert!(r.finding.right.is_empty(), "{w}: {}", r.finding);
        }
        for w in ["rigt", "rihgt", "rightt", "riht", "rght"] {
            let r = parse(&format!("lower {w} lung"));
            assert!(r.finding.left.is_empty(), "{w}: {}", r.finding);
        }
    }

    #[test]
    fn unknown_words_are_kept() {
        let r = parse("lower left lung zzyzx opacity");
        assert_eq!(r.unknown, vec!["zzyzx".to_owned()]);
        assert_eq!(r.status, ParseStatus::Partial);
        assert_eq!(parse("pneumothorax").status, ParseStatus::Unparsed);
    }

    #[test]
    fn canonical_text_is_the_cleaned_caption() {
        let r = parse(
            "Bilateral pulmonary infection, two infected areas, all left lung and lower right lung.",
        );
        assert_eq!(
            r.canonical().as_deref(),
            Some(
                "bilateral pulmonary infection, four infected areas, upper middle lower left lung \
                 and lower right lung."
            )
        );
        assert_eq!(
            parse("RLL opacity").canonical().as_deref(),
            Some("unilateral pulmonary infection, one infected area, lower right lung.")
        );
    }

    #[test]
    fn edit_distance_counts_transpositions_once() {
        assert_eq!(edit_distance(b"midlle", b"middle", 2), 1);
        assert_eq!(edit_distance(b"left", b"right", 9), 4);
        assert_eq!(correct("uppper"), Some("upper"));
        assert_eq!(correct("the"), None);
    }
}
