use super::clean::HALF_FULL_WIDTH;
use super::*;

use crate::test_support::shared;

#[derive(serde::Deserialize)]
struct GoldenLine {
    note: String,
    padded: String,
    ids: Vec<i64>,
    ids77_unpadded: Vec<i64>,
    needs_ftfy: bool,
}

#[test]
fn every_golden_line_matches_clip() {
    let path = shared().join("reference/tokenizer-golden.jsonl");
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<GoldenLine> = text
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(lines.len(), 278);
    assert_eq!(lines.iter().filter(|l| l.needs_ftfy).count(), 1);

    let tokenizer = Tokenizer::clip();
    let mut failed = Vec::new();
    for line in &lines {
        let padded = pad_note(&line.note);
        let ids18 = tokenizer.tokenize(&padded, CONTEXT_PAPER);
        let ids77 = tokenizer.tokenize(&line.note, 77);
        if padded != line.padded || ids18.ids != line.ids || ids77.ids != line.ids77_unpadded {
            failed.push(line.note.as_str());
        }
        let mask: Vec<i64> = line.ids.iter().map(|&id| i64::from(id != 0)).collect();
        assert_eq!(ids18.mask, mask, "{:?}", line.note);
    }
    println!(
        "golden lines matched: {} / {}",
        lines.len() - failed.len(),
        lines.len()
    );
    // The ftfy line ("mojibake cafÃ©") is included: the Latin-1 repair covers it.
    assert!(failed.is_empty(), "mismatched notes: {failed:?}");
}

#[test]
fn worked_examples_of_the_spec() {
    let tokenizer = Tokenizer::clip();
    let note =
        "Bilateral pulmonary infection, two infected areas, upper left lung and upper right lung.";
    let tokens = tokenizer.tokenize(note, CONTEXT_PAPER);
    assert_eq!(
        tokens.ids,
        [
            49406, 25599, 39132, 14774, 267, 1237, 26136, 5429, 267, 7067, 1823, 16271, 537, 7067,
            1155, 16271, 269, 49407
        ]
    );
    assert!(!tokens.truncated, "exactly 18 tokens fit");
    assert_eq!(tokens.mask, [1; 18]);

    let pad = tokenizer.encode(" EOF XXX");
    assert_eq!(pad, [68, 539, 8352]);
    let words: Vec<String> = pad.iter().map(|&id| tokenizer.token_str(id)).collect();
    assert_eq!(words, ["e", "of", "xxx"]);
}

#[test]
fn truncation_keeps_context_minus_one_and_ends_with_eot() {
    let tokenizer = Tokenizer::clip();
    let note = "Unilateral pulmonary infection, one infected area, lower left lung and a very long \
                tail of words that must be cut at eighteen tokens by truncation";
    let full = tokenizer.tokenize(note, 77);
    let content = full.mask.iter().sum::<i64>();
    assert_eq!(content, 31);
    assert!(!full.truncated);
    assert_eq!(full.ids[30], EOT);

    let cut = tokenizer.tokenize(note, CONTEXT_PAPER);
    assert!(cut.truncated);
    assert_eq!(cut.ids[..17], full.ids[..17]);
    assert_eq!(cut.ids[17], EOT);
    assert_eq!(cut.mask, [1; 18]);

    let short = tokenizer.tokenize("Lung.", CONTEXT_PAPER);
    assert!(!short.truncated);
    assert_eq!(short.ids[..4], [SOT, 16271, 269, EOT]);
    assert_eq!(short.mask.iter().sum::<i64>(), 4);
    assert_eq!(short.ids.len(), 18);

    let tiny = tokenizer.tokenize("Lung.", 1);
    assert_eq!((tiny.ids, tiny.truncated), (vec![EOT], true));
}

#[test]
fn token_str_reads_back_the_note() {
    let tokenizer = Tokenizer::clip();
    let note =
        "Bilateral pulmonary infection, two infected areas, all left lung and lowerright lung.";
    let ids = tokenizer.encode(note);
    let joined: String = ids.iter().map(|&id| tokenizer.token_str(id)).collect();
    assert_eq!(joined, tokenizer.clean(note).replace(' ', ""));
    assert_eq!(
        tokenizer.decode(&ids),
        "bilateral pulmonary infection , two infected areas , all left lung and lowerright lung . "
    );

    // Multi-byte characters split across tokens come back whole from `decode`.
    let ids = tokenizer.encode("肺部感染 lung");
    assert_eq!(
        ids,
        [
            164, 224, 118, 165, 225, 101, 162, 226, 253, 162, 253, 497, 16271
        ]
    );
    assert_eq!(tokenizer.token_str(164), "\u{fffd}");
    assert_eq!(tokenizer.decode(&ids), "肺部感染 lung ");

    assert_eq!(tokenizer.token_str(SOT), "<|startoftext|>");
    assert_eq!(tokenizer.token_str(EOT), "<|endoftext|>");
    assert_eq!(tokenizer.token_str(0), "!");
    assert_eq!(tokenizer.token_str(256), "!");
    assert_eq!(tokenizer.token_str(-1), "<unk>");
    assert_eq!(tokenizer.token_str(49408), "<unk>");
    assert_eq!(tokenizer.vocab_size(), 49408);
}

#[test]
fn pad_note_counts_python_whitespace_words() {
    assert_eq!(pad_note("Lung."), format!("Lung.{}", " EOF XXX".repeat(8)));
    assert_eq!(
        pad_note("a\tb\u{a0}c\u{1c}d"),
        format!("a\tb\u{a0}c\u{1c}d{}", " EOF XXX".repeat(5))
    );
    let nine = "one two three four five six seven eight nine";
    assert_eq!(pad_note(nine), nine);
}

/// Expected values from CLIP's Python pipeline with ftfy 6.3.1 (`html`, `regex`).
const FTFY_CASES: &[(&str, &str, &[i64])] = &[
    // ftfy stops unescaping at the first line with a `<`; CLIP's own unescape never does.
    (
        "&NOT; x\n<b> &NOT;",
        "\u{ac} x <b> &not;",
        &[126, 361, 343, 283, 321, 285, 261, 783, 282],
    ),
    (
        "<b>\n&NOT; &eacute;",
        "<b> &not; \u{e9}",
        &[283, 321, 285, 261, 783, 282, 4166],
    ),
    (
        "P&EACUTE;REZ &NTILDE; &nTILDE; BUNDESSTRA&SZLIG;E",
        "p\u{e9}rez \u{f1} &ntilde; bundesstrasse",
        &[
            43167, 15192, 127, 365, 261, 77, 6124, 654, 282, 2591, 6797, 1894, 8938,
        ],
    ),
    (
        "&amp;lt;b&amp;gt; and &amp;amp;amp;",
        "<b> and &",
        &[283, 321, 285, 537, 261],
    ),
    ("a < b &amp;amp; c", "a < b & c", &[320, 283, 321, 261, 322]),
    (
        "&notin; &not &notit; &copy2020 &#x41;&#66;&#59; &#0; &#128; &#xD800; &#99999999999; &#1;x",
        "\u{2209} \u{ac} \u{ac}it; \u{a9}2020 ab; \u{fffd} \u{20ac} \u{fffd} \u{fffd} x",
        &[
            17788, 487, 126, 361, 126, 361, 585, 282, 5811, 273, 271, 273, 271, 3937, 282, 39802,
            6309, 39802, 39802, 343,
        ],
    ),
    (
        "the patient\u{2019}s \u{201c}left\u{201d} lung",
        "the patient's \"left\" lung",
        &[518, 6262, 568, 257, 1823, 257, 16271],
    ),
    (
        "\u{fb01}brosis and \u{fb02}uid",
        "fibrosis and fluid",
        &[36307, 537, 16717],
    ),
    (
        "\u{ff23}\u{ff34}\u{ff1a} \u{ff13} \u{ff4c}\u{ff45}\u{ff53}\u{ff49}\u{ff4f}\u{ff4e}\u{ff53}\u{ff0c}\u{3000}left",
        "ct: 3 lesions, left",
        &[1122, 281, 274, 534, 4060, 267, 1823],
    ),
    (
        "cafe\u{301} nai\u{308}ve",
        "caf\u{e9} na\u{ef}ve",
        &[15304, 1097, 35689, 563],
    ),
    (
        "\u{93}quoted\u{94} \u{85} end",
        "\"quoted\" \u{2026} end",
        &[257, 27706, 257, 959, 806],
    ),
    (
        "x\u{1c}y\u{1f}z \u{7}bell \u{1b}[31mred\u{1b}[0m",
        "xyz bell red",
        &[20023, 345, 3718, 736],
    ),
    (
        "caf\u{c3}\u{a9} \u{e2}\u{20ac}\u{201c} dash",
        "caf\u{e9} \u{2013} dash",
        &[15304, 1224, 10206],
    ),
    (
        "na\u{ef}ve r\u{e9}sum\u{e9} \u{b0}C 5\u{d7}3",
        "na\u{ef}ve r\u{e9}sum\u{e9} \u{b0}c 5\u{d7}3",
        &[
            1097, 35689, 563, 29106, 7054, 4166, 6858, 322, 276, 16165, 274,
        ],
    ),
    (
        "\u{ffe5}100 \u{ff08}approx\u{ff09}",
        "\u{a5}100 (approx)",
        &[20199, 272, 271, 271, 263, 18266, 264],
    ),
    (
        "ground glass opacity GGO, 3.5 cm x 2 cm; no effusion.",
        "ground glass opacity ggo, 3.5 cm x 2 cm; no effusion.",
        &[
            2461, 3313, 676, 7511, 70, 861, 267, 274, 269, 276, 3741, 343, 273, 3741, 282, 871,
            1490, 9364, 269,
        ],
    ),
    (
        "\u{a0}\u{2003} lots   of\u{2028}space\u{85} here \u{9}",
        "lots of space\u{2026} here",
        &[2958, 539, 2138, 959, 763],
    ),
];

#[test]
fn clean_up_matches_ftfy_and_html_unescape() {
    assert_eq!(HALF_FULL_WIDTH.chars().count(), 0xFFEF - 0xFF5F + 1);
    let tokenizer = Tokenizer::clip();
    for &(text, cleaned, ids) in FTFY_CASES {
        assert_eq!(tokenizer.clean(text), cleaned, "{text:?}");
        assert_eq!(tokenizer.encode(text), ids, "{text:?}");
    }
}
