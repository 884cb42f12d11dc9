//! Reading a note: tokens, clauses and phrases, attachment of zones to sides, negation scopes.

use super::lexicon::*;
use super::{Finding, ParseStatus, Reading, Zone, Zones};

/// One token of a note: a word (lower case) or a punctuation mark.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Tok {
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

pub(super) fn tokenize(note: &str) -> Vec<Tok> {
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
pub(super) fn count_word(w: &str) -> Option<u32> {
    let digits = w.strip_prefix('x').or_else(|| w.strip_suffix('x'))?;
    digits.parse().ok()
}

// ---------------------------------------------------------------------------------------------
// Parsing

/// A location word in a phrase.
#[derive(Clone, Copy, Debug)]
pub(super) struct Item {
    pub(super) lex: Lex,
    pub(super) neg: bool,
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
pub(super) fn and_splits_clause(toks: &[Tok], lexed: &[Option<Lex>], i: usize) -> bool {
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

pub(super) const FINDING_NOUNS: &[&str] = &[
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
pub(super) struct Phrase {
    pub(super) zones: Zones,
    pub(super) sides: [bool; 2],
    pub(super) both: bool,
    /// "apices", "bases": both lungs unless a side is named.
    pub(super) plural: bool,
    /// "lung", "hemithorax": a bare side then means the whole lung.
    pub(super) lung: bool,
    /// A noun of its own ("lower zones"), so it is no ellipsis of the next phrase's noun.
    pub(super) noun: bool,
    pub(super) neg: bool,
    /// "all", "whole", "throughout": the zones are the whole lung, not named one by one.
    pub(super) whole: bool,
    pub(super) clause: usize,
    /// A side word came before its zone words ("left upper") rather than after them ("upper
    /// zone of the left lung").
    pub(super) side_first: bool,
}

impl Phrase {
    fn has_side(&self) -> bool {
        self.sides.iter().any(|&s| s)
    }
}

/// Zones attached to sides so far: involved, free by name, free as a whole lung.
#[derive(Default)]
pub(super) struct Attached {
    pub(super) pos: [Zones; 2],
    pub(super) neg_zones: [Zones; 2],
    pub(super) neg_whole: [Zones; 2],
}

/// Attaches the zones of one sentence's phrases to sides; `sided` says whether the note names
/// a side anywhere.
pub(super) fn resolve_sentence(
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
