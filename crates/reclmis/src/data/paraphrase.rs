//! Paraphrase augmentation: a training note's finding rendered in a new surface form at every
//! step, so a text encoder learns what a note means rather than one way of writing it.
//!
//! The note is parsed ([`crate::finding::parse`]); its involved zones are then written with a
//! randomly chosen template, clause order, synonyms for the finding and the zones,
//! abbreviations (`L`, `Rt`, `LLZ`, `RUL`), a count in words or digits (or none), case, an
//! occasional typo the grammar can undo, and, for one-sided notes, sometimes a clause saying the
//! other lung is clear. Every rendering parses back to the same zones (tested for all 63
//! findings), so the augmentation changes wording, never meaning.
//!
//! The vocabulary here is the augmentation's own. The held-out wording suites that measure
//! robustness (`bench/wordings/`) are written independently of it.

use crate::finding::{Finding, Side, Zone, Zones, number_word, parse};
use crate::rng::SplitMix64;

/// A new wording of `note`, or `None` when the grammar finds no involved zone in it (such notes
/// are left as they are).
pub fn paraphrase_note(note: &str, rng: &mut SplitMix64) -> Option<String> {
    let r = parse(note);
    (!r.finding.is_empty()).then(|| paraphrase(&r.finding, rng))
}

fn pick<'a>(rng: &mut SplitMix64, options: &[&'a str]) -> &'a str {
    options[rng.below(options.len())]
}

fn chance(rng: &mut SplitMix64, p: f64) -> bool {
    rng.unit_f64() < p
}

const NOUNS: &[&str] = &[
    "infection",
    "opacity",
    "opacities",
    "consolidation",
    "ground-glass opacities",
    "airspace opacification",
    "infiltrates",
    "airspace disease",
    "patchy shadowing",
    "pneumonia",
];

fn zone_word(z: Zone, rng: &mut SplitMix64) -> &'static str {
    match z {
        Zone::Upper => pick(rng, &["upper", "upper", "apical", "upp"]),
        Zone::Middle => pick(rng, &["middle", "middle", "mid", "mid"]),
        Zone::Lower => pick(rng, &["lower", "lower", "basal", "lwr"]),
    }
}

fn side_word(s: Side, rng: &mut SplitMix64, terse: bool) -> &'static str {
    match (s, terse) {
        (Side::Left, false) => "left",
        (Side::Right, false) => "right",
        (Side::Left, true) => pick(rng, &["L", "Lt", "left"]),
        (Side::Right, true) => pick(rng, &["R", "Rt", "right"]),
    }
}

/// "upper and middle", "upper/middle", "upper, middle and lower", "upper middle".
fn zone_list(z: Zones, rng: &mut SplitMix64) -> String {
    let words: Vec<&str> = z.iter().map(|z| zone_word(z, rng)).collect();
    match (words.len(), rng.below(3)) {
        (1, _) => words[0].to_owned(),
        (_, 0) => words.join("/"),
        (_, 1) => words.join(" "),
        (n, _) => format!("{} and {}", words[..n - 1].join(", "), words[n - 1]),
    }
}

/// One side's location phrase.
fn location(s: Side, z: Zones, rng: &mut SplitMix64) -> String {
    let side = side_word(s, rng, false);
    if z == Zones::ALL && chance(rng, 0.6) {
        return match rng.below(5) {
            0 => format!("all {side} lung"),
            1 => format!("the whole {side} lung"),
            2 => format!("the entire {side} lung"),
            3 => format!("throughout the {side} lung"),
            _ => format!("all three {side} zones"),
        };
    }
    let n = z.len();
    let zones = if n > 1 { "zones" } else { "zone" };
    match rng.below(6) {
        0 => format!("{} {side} lung", zone_list(z, rng)),
        1 => format!("{side} {} {zones}", zone_list(z, rng)),
        2 => format!("the {} {zones} of the {side} lung", zone_list(z, rng)),
        3 => {
            let terse = side_word(s, rng, true);
            format!("{terse} {}", zone_list(z, rng))
        }
        4 => {
            let letter = if s == Side::Left { 'L' } else { 'R' };
            let abbr: Vec<String> = z
                .iter()
                .map(|z| format!("{letter}{}Z", z.word()[..1].to_ascii_uppercase()))
                .collect();
            abbr.join(pick(rng, &[", ", " and ", "/"]))
        }
        _ => format!("the {side} {} {zones}", zone_list(z, rng)),
    }
}

/// Both lungs with the same zones: "bibasal", "both lower zones", "lower zones bilaterally".
fn both_location(z: Zones, rng: &mut SplitMix64) -> String {
    if z == Zones::ALL && chance(rng, 0.5) {
        return pick(
            rng,
            &[
                "both lungs",
                "diffusely in both lungs",
                "all zones of both lungs",
            ],
        )
        .to_owned();
    }
    if z == Zones::from(vec![Zone::Lower]) && chance(rng, 0.3) {
        return pick(rng, &["bibasal", "both bases"]).to_owned();
    }
    let zones = if z.len() > 1 { "zones" } else { "zone" };
    match rng.below(3) {
        0 => format!("both {} {zones}", zone_list(z, rng)),
        1 => format!("{} {zones} bilaterally", zone_list(z, rng)),
        _ => format!("bilateral {} {zones}", zone_list(z, rng)),
    }
}

fn count_text(n: usize, rng: &mut SplitMix64) -> String {
    let area = if n == 1 { "area" } else { "areas" };
    match rng.below(3) {
        0 => format!("{n} {area}"),
        1 => format!(
            "{} infected {area}",
            number_word(n as u32).unwrap_or("several")
        ),
        _ => format!("{} {area}", number_word(n as u32).unwrap_or("several")),
    }
}

/// A clause saying the uninvolved lung is clear.
fn clear_clause(s: Side, rng: &mut SplitMix64, noun: &str) -> String {
    let side = side_word(s, rng, false);
    match rng.below(5) {
        0 => format!("the {side} lung is clear"),
        1 => format!("no {noun} on the {side}"),
        2 => format!("sparing the {side} lung"),
        3 => format!("{side} lung unremarkable"),
        _ => format!("without {side} lung involvement"),
    }
}

/// A new wording of `f` (which must name at least one zone).
pub fn paraphrase(f: &Finding, rng: &mut SplitMix64) -> String {
    let noun = pick(rng, NOUNS);
    let n = f.left.len() + f.right.len();
    let mut sides: Vec<Side> = f.sides().collect();
    if chance(rng, 0.5) {
        sides.reverse();
    }
    let same_both = f.is_bilateral() && f.left == f.right && chance(rng, 0.4);
    let locations: Vec<String> = if same_both {
        vec![both_location(f.left, rng)]
    } else {
        sides
            .iter()
            .map(|&s| location(s, f.zones(s), rng))
            .collect()
    };
    let joined = match locations.len() {
        1 => locations[0].clone(),
        _ => {
            // "right upper and lower and the middle zone of the left lung" would be ambiguous.
            let joiners: &[&str] = if locations.iter().any(|l| l.contains(" and ")) {
                &[", ", "; ", ", and "]
            } else {
                &[" and ", ", ", "; "]
            };
            format!("{}{}{}", locations[0], pick(rng, joiners), locations[1])
        }
    };
    let laterality = if f.is_bilateral() {
        "bilateral"
    } else {
        "unilateral"
    };
    let mut text = match rng.below(6) {
        0 => format!(
            "{laterality} pulmonary {noun}, {}, {joined}.",
            count_text(n, rng)
        ),
        1 => format!("{noun} in {joined}."),
        2 => format!("{joined} {noun}."),
        3 => format!("there is {noun} involving {joined}."),
        4 => format!("{}: {joined}.", count_text(n, rng)),
        _ => format!("{noun} seen in {joined}, {}.", count_text(n, rng)),
    };
    if !f.is_bilateral() && chance(rng, 0.3) {
        let free = sides[0].other();
        let clause = clear_clause(free, rng, noun);
        text = if chance(rng, 0.5) {
            format!("{}. {clause}.", text.trim_end_matches('.'))
        } else {
            format!("{clause}. {text}")
        };
    }
    if chance(rng, 0.1) {
        text = typo(&text, rng);
    }
    match rng.below(10) {
        0 => text.to_uppercase(),
        1..=5 => capitalise(&text),
        _ => text,
    }
}

fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().collect::<String>() + c.as_str())
        .unwrap_or_default()
}

/// One typo (a dropped, doubled or swapped letter) in a word of five letters or more that the
/// grammar still reads as the same word.
fn typo(text: &str, rng: &mut SplitMix64) -> String {
    let words: Vec<&str> = text.split(' ').collect();
    let candidates: Vec<usize> = (0..words.len())
        .filter(|&i| {
            let w = words[i];
            w.len() >= 5 && w.bytes().all(|b| b.is_ascii_lowercase())
        })
        .collect();
    if candidates.is_empty() {
        return text.to_owned();
    }
    let i = candidates[rng.below(candidates.len())];
    let w = words[i].as_bytes();
    let k = 1 + rng.below(w.len() - 2);
    let mut t = w.to_vec();
    match rng.below(3) {
        0 => {
            t.remove(k);
        }
        1 => t.insert(k, w[k]),
        _ => t.swap(k, k + 1),
    }
    let typo = String::from_utf8(t).expect("ASCII letters stay ASCII");
    // Keep the typo only where the grammar reads it back as the original word.
    if parse(&typo).corrections.first().map(|(_, c)| c.as_str()) != Some(words[i]) {
        return text.to_owned();
    }
    let mut out: Vec<String> = words.iter().map(|w| (*w).to_owned()).collect();
    out[i] = typo;
    out.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_findings() -> Vec<Finding> {
        let mut out = Vec::new();
        for l in 0..8u8 {
            for r in 0..8u8 {
                let zones = |bits: u8| {
                    Zones::from(
                        Zone::ALL
                            .into_iter()
                            .filter(|z| bits & (1 << *z as u8) != 0)
                            .collect::<Vec<_>>(),
                    )
                };
                let f = Finding {
                    left: zones(l),
                    right: zones(r),
                    ..Finding::default()
                };
                if !f.is_empty() {
                    out.push(f);
                }
            }
        }
        out
    }

    #[test]
    fn every_paraphrase_keeps_the_structure() {
        let findings = all_findings();
        assert_eq!(findings.len(), 63);
        let mut rng = SplitMix64::new(11);
        let mut distinct = std::collections::HashSet::new();
        for f in &findings {
            for _ in 0..60 {
                let text = paraphrase(f, &mut rng);
                let r = parse(&text);
                assert_eq!(
                    r.finding.structure(),
                    f.structure(),
                    "{text:?} was read as {} instead of {f}",
                    r.finding
                );
                assert!(r.unknown.is_empty(), "{text:?}: unknown {:?}", r.unknown);
                distinct.insert(text);
            }
        }
        // Wording varies: far more distinct texts than findings.
        assert!(distinct.len() > 63 * 30, "{} distinct", distinct.len());
    }

    #[test]
    fn paraphrases_of_a_caption_are_seeded() {
        let note = "bilateral pulmonary infection, two infected areas, lower left lung and lower right lung.";
        let a = paraphrase_note(note, &mut SplitMix64::new(3));
        let b = paraphrase_note(note, &mut SplitMix64::new(3));
        assert_eq!(a, b);
        assert!(a.is_some());
        assert_eq!(
            paraphrase_note("pneumothorax", &mut SplitMix64::new(3)),
            None
        );
    }
}
