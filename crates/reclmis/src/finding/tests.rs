use super::lexicon::{correct, edit_distance};
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
    for (note, left, right) in [
        (
            "Unilateral pulmonary infection, one infected area, middle right lung.",
            "",
            "middle",
        ),
        (
            "Bilateral pulmonary infection, two infected areas, all left lung and right lung.",
            "upper middle lower",
            "upper middle lower",
        ),
        (
            "Bilateral pulmonary infection, two infected areas, all left lung and middle lower lung.",
            "upper middle lower",
            "middle lower",
        ),
    ] {
        reads(note, left, right);
    }
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
    for (note, left, right) in [
        (
            "Opacity in the left lower zone. The right lung is clear.",
            "lower",
            "",
        ),
        (
            "left lower zone consolidation, no opacity on the right",
            "lower",
            "",
        ),
        (
            "Opacities throughout the left lung, sparing the apex.",
            "middle lower",
            "",
        ),
        (
            "right basal consolidation without left lung involvement",
            "",
            "lower",
        ),
        (
            "No opacity in the right lung; left mid and lower zone opacities.",
            "middle lower",
            "",
        ),
        (
            "left lower opacity and the right lung is unremarkable",
            "lower",
            "",
        ),
    ] {
        reads(note, left, right);
    }
    let r = parse("The right lung is clear.");
    assert_eq!(r.status, ParseStatus::Unparsed);
    assert_eq!(r.finding.negated_right, Zones::ALL);
}

#[test]
fn abbreviations_and_synonyms() {
    for (note, left, right) in [
        ("LLZ and RMZ opacities", "lower", "middle"),
        ("RUL, RML consolidation", "", "upper middle"),
        ("bibasal opacities", "lower", "lower"),
        ("b/l lower zone GGO", "lower", "lower"),
        (
            "Diffuse opacities in both lungs.",
            "upper middle lower",
            "upper middle lower",
        ),
        ("L mid/lower zone opac; R clear", "middle lower", ""),
        ("left upper and middle zones", "upper middle", ""),
        (
            "upper and middle zones of the left lung",
            "upper middle",
            "",
        ),
        ("left and right upper zones", "upper", "upper"),
        (
            "CXR: patchy consolidation at the L base, upper zones spared; rt lung clear",
            "lower",
            "",
        ),
        (
            "left upper, middle and lower zones are clear. RLL opacity",
            "",
            "lower",
        ),
        ("opacity at both bases", "lower", "lower"),
        ("Lt apex and Rt base", "upper", "lower"),
        (
            "all three zones of the right lung",
            "",
            "upper middle lower",
        ),
        ("lingular opacity", "middle", ""),
    ] {
        reads(note, left, right);
    }
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
