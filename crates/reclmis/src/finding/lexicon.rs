//! The grammar's closed vocabulary: what each word means, the filler words it may skip, and
//! typo correction into the vocabulary.

use std::collections::BTreeSet;

use super::{NUMBER_WORDS, Side, Zone};

/// What one normalised word means to the grammar.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Lex {
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
    pub(super) fn is_location(self) -> bool {
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

pub(super) fn lexicon(w: &str) -> Option<Lex> {
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
pub(super) const FILLER: &[&str] = &[
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
pub(super) fn vocabulary() -> &'static [&'static str] {
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
pub(super) fn edit_distance(a: &[u8], b: &[u8], max: usize) -> usize {
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
pub(super) fn correct(w: &str) -> Option<&'static str> {
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
