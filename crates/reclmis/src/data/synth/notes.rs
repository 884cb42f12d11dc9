//! The notes of the synthetic set: QaTa's cleaned caption style, read back and mirrored.

use super::{Level, Side, Zone};

const COUNT_WORDS: [&str; 7] = ["no", "one", "two", "three", "four", "five", "six"];

pub(super) fn side_word(side: Side) -> &'static str {
    match side {
        Side::Left => "left",
        Side::Right => "right",
    }
}

pub(super) fn level_word(level: Level) -> &'static str {
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
