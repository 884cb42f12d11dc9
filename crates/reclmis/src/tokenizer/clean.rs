//! CLIP's text clean-up before BPE: the parts of ftfy's `fix_text` that can change a note's
//! tokens, HTML unescaping and whitespace collapse (see the gaps listed in [`super`]).

use regex::{Captures, Regex};

use super::is_py_space;

/// CLIP's `basic_clean` + `whitespace_clean` + `lower`, with the parts of `ftfy.fix_text` that
/// can matter for a note.
pub(super) struct TextCleaner {
    /// What Python's `html.unescape` replaces.
    charref: Regex,
    /// What ftfy's `unescape_html` replaces (semicolon-terminated only).
    ftfy_entity: Regex,
    /// ANSI terminal escapes, which ftfy removes.
    ansi: Regex,
}

impl TextCleaner {
    pub(super) fn new() -> TextCleaner {
        let re = |pattern| Regex::new(pattern).expect("text clean-up regexes compile");
        TextCleaner {
            charref: re(r"&(#[0-9]+;?|#[xX][0-9a-fA-F]+;?|[^\t\n\x0C <&#;]{1,32};?)"),
            ftfy_entity: re(r"&#?[0-9A-Za-z]{1,24};"),
            ansi: re(r"\x1B\[[0-9;]*[a-zA-Z]"),
        }
    }

    pub(super) fn clean(&self, text: &str) -> String {
        let fixed = self.fix_text(text);
        let unescaped = self.html_unescape(&self.html_unescape(&fixed));
        let collapsed: Vec<&str> = unescaped
            .split(is_py_space)
            .filter(|w| !w.is_empty())
            .collect();
        collapsed.join(" ").to_lowercase()
    }

    /// `ftfy.fix_text` with its default settings, as far as implemented: line by line, the fixes
    /// run in ftfy's order and repeat until nothing changes. Line-break and surrogate fixes are
    /// left out: the whitespace collapse that follows erases the first, Rust strings cannot hold
    /// the second.
    fn fix_text(&self, text: &str) -> String {
        let mut fixed = String::with_capacity(text.len());
        // ftfy stops unescaping HTML for good at the first line that contains a `<`.
        let mut unescape = true;
        for line in text.split_inclusive('\n') {
            unescape &= !line.contains('<');
            fixed.push_str(&self.fix_line(line, unescape));
        }
        fixed
    }

    fn fix_line(&self, line: &str, unescape: bool) -> String {
        let mut text = line.to_owned();
        for _ in 0..16 {
            let before = text.clone();
            if unescape {
                text = self.ftfy_unescape(&text);
            }
            text = fix_mojibake(&text);
            text = translate(&text, |c, out| out.push(fix_c1_control(c)));
            text = translate(&text, fix_latin_ligature);
            text = translate(&text, fix_character_width);
            text = translate(&text, |c, out| out.push(uncurl_quote(c)));
            text = self.ansi.replace_all(&text, "").into_owned();
            text.retain(|c| !is_ftfy_control(c));
            text = compose_latin(&text);
            if text == before {
                break;
            }
        }
        text
    }

    /// ftfy's `unescape_html`: only `&name;` / `&#…;` forms, plus all-caps names of lower-case
    /// entities (`&EACUTE;` → `É`).
    fn ftfy_unescape(&self, text: &str) -> String {
        self.ftfy_entity
            .replace_all(text, |caps: &Captures| {
                let entity = &caps[0];
                let name = &entity[1..entity.len() - 1];
                if let Some(c) = html_entity(name) {
                    return c.to_string();
                }
                if entity.starts_with("&#") {
                    let unescaped = self.html_unescape(entity);
                    return if unescaped.contains(';') {
                        entity.to_owned()
                    } else {
                        unescaped
                    };
                }
                let lower = name.to_lowercase();
                match html_entity(&lower) {
                    Some(c)
                        if lower.to_uppercase() == name && self.html_unescape(entity) == entity =>
                    {
                        c.to_uppercase().collect()
                    }
                    _ => entity.to_owned(),
                }
            })
            .into_owned()
    }

    /// Python's `html.unescape`.
    fn html_unescape(&self, text: &str) -> String {
        if !text.contains('&') {
            return text.to_owned();
        }
        self.charref
            .replace_all(text, |caps: &Captures| replace_charref(&caps[1]))
            .into_owned()
    }
}

pub(super) fn translate(text: &str, map: impl Fn(char, &mut String)) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        map(c, &mut out);
    }
    out
}

/// One `html.unescape` match (without its `&`).
pub(super) fn replace_charref(s: &str) -> String {
    if let Some(number) = s.strip_prefix('#') {
        let number = number.strip_suffix(';').unwrap_or(number);
        // Too many digits for u32 is also past U+10FFFF.
        let code = match number.strip_prefix(['x', 'X']) {
            Some(hex) => u32::from_str_radix(hex, 16).ok(),
            None => number.parse::<u32>().ok(),
        };
        return match code {
            Some(0) => "\u{FFFD}".to_owned(),
            Some(0x0D) => "\r".to_owned(),
            Some(code @ 0x80..=0x9F) => cp1252_char(code).to_string(),
            Some(code) if is_html_invalid_codepoint(code) => String::new(),
            Some(code) => char::from_u32(code).map_or_else(|| "\u{FFFD}".to_owned(), String::from),
            None => "\u{FFFD}".to_owned(),
        };
    }
    if let Some(name) = s.strip_suffix(';')
        && let Some(c) = html_entity(name)
    {
        return c.to_string();
    }
    // Legacy entities also count without `;`, and as the longest prefix of a longer name.
    let bounds: Vec<usize> = s.char_indices().map(|(i, _)| i).chain([s.len()]).collect();
    for &end in bounds.iter().skip(2).rev() {
        if let Some(c) = legacy_html_entity(&s[..end]) {
            return format!("{c}{}", &s[end..]);
        }
    }
    format!("&{s}")
}

pub(super) fn is_html_invalid_codepoint(code: u32) -> bool {
    matches!(code, 0x01..=0x08 | 0x0B | 0x0E..=0x1F | 0x7F..=0x9F | 0xFDD0..=0xFDEF)
        || (code & 0xFFFF >= 0xFFFE && code <= 0x10FFFF)
}

pub(super) fn html_entity(name: &str) -> Option<char> {
    HTML_ENTITIES
        .iter()
        .find(|&&(n, _)| n == name)
        .map(|&(_, c)| c)
}

/// The HTML 5 names that also work without a semicolon: the Latin-1 ones and a few capitalised
/// aliases.
pub(super) fn legacy_html_entity(name: &str) -> Option<char> {
    let c = html_entity(name)?;
    let legacy = ('\u{A0}'..='\u{FF}').contains(&c)
        || matches!(
            name,
            "amp" | "lt" | "gt" | "quot" | "AMP" | "LT" | "GT" | "QUOT" | "COPY" | "REG"
        );
    legacy.then_some(c)
}

/// Windows-1252 bytes 0x80..=0x9F; the five undefined ones stay C1 controls (ftfy's "sloppy"
/// codec, and Python's `html.unescape` table).
pub(super) const CP1252_80: [char; 32] = [
    '€', '\u{81}', '‚', 'ƒ', '„', '…', '†', '‡', 'ˆ', '‰', 'Š', '‹', 'Œ', '\u{8D}', 'Ž', '\u{8F}',
    '\u{90}', '‘', '’', '“', '”', '•', '–', '—', '˜', '™', 'š', '›', 'œ', '\u{9D}', 'ž', 'Ÿ',
];

pub(super) fn cp1252_char(code: u32) -> char {
    let index = usize::try_from(code - 0x80).expect("callers pass 0x80..=0x9F");
    CP1252_80[index]
}

/// ftfy's `fix_c1_controls`: a C1 control is almost always a Windows-1252 byte read as Latin-1.
pub(super) fn fix_c1_control(c: char) -> char {
    match c {
        '\u{80}'..='\u{9F}' => cp1252_char(u32::from(c)),
        _ => c,
    }
}

/// ftfy's encoding repair for the common case: the whole note is UTF-8 that was decoded as
/// Latin-1 or as Windows-1252 (`cafÃ©` → `café`).
pub(super) fn fix_mojibake(text: &str) -> String {
    if text.is_ascii() {
        return text.to_owned();
    }
    let latin1 = |c: char| u8::try_from(u32::from(c)).ok();
    let sloppy_1252 = |c: char| match c {
        '\u{1A}' => None,
        '\u{0}'..='\u{7F}'
        | '\u{A0}'..='\u{FF}'
        | '\u{81}'
        | '\u{8D}'
        | '\u{8F}'
        | '\u{90}'
        | '\u{9D}' => latin1(c),
        _ => CP1252_80
            .iter()
            .position(|&x| x == c)
            .and_then(|i| u8::try_from(0x80 + i).ok()),
    };
    for encode in [&latin1 as &dyn Fn(char) -> Option<u8>, &sloppy_1252] {
        if let Some(bytes) = text.chars().map(encode).collect::<Option<Vec<u8>>>()
            && let Ok(fixed) = String::from_utf8(bytes)
        {
            return fixed;
        }
    }
    text.to_owned()
}

/// ftfy's `fix_latin_ligatures`.
pub(super) fn fix_latin_ligature(c: char, out: &mut String) {
    out.push_str(match c {
        'Ĳ' => "IJ",
        'ĳ' => "ij",
        'ŉ' => "ʼn",
        'Ǳ' => "DZ",
        'ǲ' => "Dz",
        'ǳ' => "dz",
        'Ǆ' => "DŽ",
        'ǅ' => "Dž",
        'ǆ' => "dž",
        'Ǉ' => "LJ",
        'ǈ' => "Lj",
        'ǉ' => "lj",
        'Ǌ' => "NJ",
        'ǋ' => "Nj",
        'ǌ' => "nj",
        'ﬀ' => "ff",
        'ﬁ' => "fi",
        'ﬂ' => "fl",
        'ﬃ' => "ffi",
        'ﬄ' => "ffl",
        'ﬅ' => "ſt",
        'ﬆ' => "st",
        _ => return out.push(c),
    });
}

/// NFKC of U+FF5F..=U+FFEF (halfwidth and fullwidth forms), `\0` where unchanged or special.
pub(super) const HALF_FULL_WIDTH: &str = "⦅⦆。「」、・ヲァィゥェォャュョッーアイウエオカキクケコサシスセソタチツテトナニヌネノハヒフヘホマミムメモヤユヨラリルレロワン\
    \u{3099}\u{309a}\u{1160}\u{1100}\u{1101}\u{11aa}\u{1102}\u{11ac}\u{11ad}\u{1103}\u{1104}\u{1105}\
    \u{11b0}\u{11b1}\u{11b2}\u{11b3}\u{11b4}\u{11b5}\u{111a}\u{1106}\u{1107}\u{1108}\u{1121}\u{1109}\
    \u{110a}\u{110b}\u{110c}\u{110d}\u{110e}\u{110f}\u{1110}\u{1111}\u{1112}\0\0\0\u{1161}\u{1162}\
    \u{1163}\u{1164}\u{1165}\u{1166}\0\0\u{1167}\u{1168}\u{1169}\u{116a}\u{116b}\u{116c}\0\0\u{116d}\
    \u{116e}\u{116f}\u{1170}\u{1171}\u{1172}\0\0\u{1173}\u{1174}\u{1175}\0\0\0¢£¬\0¦¥₩\0│←↑→↓■○\0";

/// ftfy's `fix_character_width`: fullwidth ASCII (common in notes typed with a CJK input method)
/// and halfwidth forms to their usual width.
pub(super) fn fix_character_width(c: char, out: &mut String) {
    let code = u32::from(c);
    match code {
        0x3000 => out.push(' '),
        0xFF01..=0xFF5E => out.push(char::from_u32(code - 0xFEE0).unwrap_or(c)),
        0xFFE3 => out.push_str(" \u{304}"),
        0xFF5F..=0xFFEF => {
            let index = usize::try_from(code - 0xFF5F).unwrap_or(usize::MAX);
            match HALF_FULL_WIDTH.chars().nth(index) {
                Some(wide) if wide != '\0' => out.push(wide),
                _ => out.push(c),
            }
        }
        _ => out.push(c),
    }
}

/// ftfy's `uncurl_quotes`.
pub(super) fn uncurl_quote(c: char) -> char {
    match c {
        '\u{2BC}' | '\u{2018}'..='\u{201B}' => '\'',
        '\u{201C}'..='\u{201F}' => '"',
        _ => c,
    }
}

/// ftfy's `remove_control_chars`.
pub(super) fn is_ftfy_control(c: char) -> bool {
    matches!(
        c,
        '\u{0}'..='\u{8}'
            | '\u{B}'
            | '\u{E}'..='\u{1F}'
            | '\u{7F}'
            | '\u{206A}'..='\u{206F}'
            | '\u{FEFF}'
            | '\u{FFF9}'..='\u{FFFC}'
    )
}

/// Canonical compositions of an ASCII letter with one combining accent: the part of NFC that
/// decomposed Latin text (e.g. `cafe\u{301}`) needs.
pub(super) const LATIN_COMPOSITIONS: [(char, &str, &str); 13] = [
    ('\u{300}', "aeinouwyAEINOUWY", "àèìǹòùẁỳÀÈÌǸÒÙẀỲ"), // grave
    (
        '\u{301}',
        "acegiklmnoprsuwyzACEGIKLMNOPRSUWYZ",
        "áćéǵíḱĺḿńóṕŕśúẃýźÁĆÉǴÍḰĹḾŃÓṔŔŚÚẂÝŹ",
    ), // acute
    (
        '\u{302}',
        "aceghijosuwyzACEGHIJOSUWYZ",
        "âĉêĝĥîĵôŝûŵŷẑÂĈÊĜĤÎĴÔŜÛŴŶẐ",
    ), // circumflex
    ('\u{303}', "aeinouvyAEINOUVY", "ãẽĩñõũṽỹÃẼĨÑÕŨṼỸ"), // tilde
    ('\u{304}', "aegiouyAEGIOUY", "āēḡīōūȳĀĒḠĪŌŪȲ"),     // macron
    ('\u{306}', "aegiouAEGIOU", "ăĕğĭŏŭĂĔĞĬŎŬ"),         // breve
    (
        '\u{307}',
        "abcdefghmnoprstwxyzABCDEFGHIMNOPRSTWXYZ",
        "ȧḃċḋėḟġḣṁṅȯṗṙṡṫẇẋẏżȦḂĊḊĖḞĠḢİṀṄȮṖṘṠṪẆẊẎŻ",
    ), // dot above
    ('\u{308}', "aehiotuwxyAEHIOUWXY", "äëḧïöẗüẅẍÿÄËḦÏÖÜẄẌŸ"), // diaeresis
    ('\u{30a}', "auwyAU", "åůẘẙÅŮ"),                     // ring
    ('\u{30b}', "ouOU", "őűŐŰ"),                         // double acute
    (
        '\u{30c}',
        "acdeghijklnorstuzACDEGHIKLNORSTUZ",
        "ǎčďěǧȟǐǰǩľňǒřšťǔžǍČĎĚǦȞǏǨĽŇǑŘŠŤǓŽ",
    ), // caron
    (
        '\u{327}',
        "cdeghklnrstCDEGHKLNRST",
        "çḑȩģḩķļņŗşţÇḐȨĢḨĶĻŅŖŞŢ",
    ), // cedilla
    ('\u{328}', "aeiouAEIOU", "ąęįǫųĄĘĮǪŲ"),             // ogonek
];

pub(super) fn compose_latin(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        let composed = out
            .chars()
            .last()
            .filter(char::is_ascii_alphabetic)
            .and_then(|base| {
                let (_, bases, composed) =
                    LATIN_COMPOSITIONS.iter().find(|&&(mark, ..)| mark == c)?;
                let index = bases.find(base)?;
                composed.chars().nth(index)
            });
        match composed {
            Some(composed) => {
                out.pop();
                out.push(composed);
            }
            None => out.push(c),
        }
    }
    out
}

/// HTML 4 named character references (values as HTML 5 defines them), plus `apos` and the
/// capitalised aliases HTML 5 keeps for legacy pages.
#[rustfmt::skip]
pub(super) const HTML_ENTITIES: &[(&str, char)] = &[
    ("Aacute", 'Á'), ("aacute", 'á'), ("Acirc", 'Â'), ("acirc", 'â'), ("acute", '´'),
    ("AElig", 'Æ'), ("aelig", 'æ'), ("Agrave", 'À'), ("agrave", 'à'), ("alefsym", 'ℵ'),
    ("Alpha", 'Α'), ("alpha", 'α'), ("amp", '&'), ("and", '∧'), ("ang", '∠'), ("apos", '\''),
    ("Aring", 'Å'), ("aring", 'å'), ("asymp", '≈'), ("Atilde", 'Ã'), ("atilde", 'ã'), ("Auml", 'Ä'),
    ("auml", 'ä'), ("bdquo", '„'), ("Beta", 'Β'), ("beta", 'β'), ("brvbar", '¦'), ("bull", '•'),
    ("cap", '∩'), ("Ccedil", 'Ç'), ("ccedil", 'ç'), ("cedil", '¸'), ("cent", '¢'), ("Chi", 'Χ'),
    ("chi", 'χ'), ("circ", 'ˆ'), ("clubs", '♣'), ("cong", '≅'), ("copy", '©'), ("crarr", '↵'),
    ("cup", '∪'), ("curren", '¤'), ("Dagger", '‡'), ("dagger", '†'), ("dArr", '⇓'), ("darr", '↓'),
    ("deg", '°'), ("Delta", 'Δ'), ("delta", 'δ'), ("diams", '♦'), ("divide", '÷'), ("Eacute", 'É'),
    ("eacute", 'é'), ("Ecirc", 'Ê'), ("ecirc", 'ê'), ("Egrave", 'È'), ("egrave", 'è'),
    ("empty", '∅'), ("emsp", '\u{2003}'), ("ensp", '\u{2002}'), ("Epsilon", 'Ε'), ("epsilon", 'ε'),
    ("equiv", '≡'), ("Eta", 'Η'), ("eta", 'η'), ("ETH", 'Ð'), ("eth", 'ð'), ("Euml", 'Ë'),
    ("euml", 'ë'), ("euro", '€'), ("exist", '∃'), ("fnof", 'ƒ'), ("forall", '∀'), ("frac12", '½'),
    ("frac14", '¼'), ("frac34", '¾'), ("frasl", '⁄'), ("Gamma", 'Γ'), ("gamma", 'γ'), ("ge", '≥'),
    ("gt", '>'), ("hArr", '⇔'), ("harr", '↔'), ("hearts", '♥'), ("hellip", '…'), ("Iacute", 'Í'),
    ("iacute", 'í'), ("Icirc", 'Î'), ("icirc", 'î'), ("iexcl", '¡'), ("Igrave", 'Ì'),
    ("igrave", 'ì'), ("image", 'ℑ'), ("infin", '∞'), ("int", '∫'), ("Iota", 'Ι'), ("iota", 'ι'),
    ("iquest", '¿'), ("isin", '∈'), ("Iuml", 'Ï'), ("iuml", 'ï'), ("Kappa", 'Κ'), ("kappa", 'κ'),
    ("Lambda", 'Λ'), ("lambda", 'λ'), ("lang", '⟨'), ("laquo", '«'), ("lArr", '⇐'), ("larr", '←'),
    ("lceil", '⌈'), ("ldquo", '“'), ("le", '≤'), ("lfloor", '⌊'), ("lowast", '∗'), ("loz", '◊'),
    ("lrm", '\u{200e}'), ("lsaquo", '‹'), ("lsquo", '‘'), ("lt", '<'), ("macr", '¯'),
    ("mdash", '—'), ("micro", 'µ'), ("middot", '·'), ("minus", '−'), ("Mu", 'Μ'), ("mu", 'μ'),
    ("nabla", '∇'), ("nbsp", '\u{a0}'), ("ndash", '–'), ("ne", '≠'), ("ni", '∋'), ("not", '¬'),
    ("notin", '∉'), ("nsub", '⊄'), ("Ntilde", 'Ñ'), ("ntilde", 'ñ'), ("Nu", 'Ν'), ("nu", 'ν'),
    ("Oacute", 'Ó'), ("oacute", 'ó'), ("Ocirc", 'Ô'), ("ocirc", 'ô'), ("OElig", 'Œ'),
    ("oelig", 'œ'), ("Ograve", 'Ò'), ("ograve", 'ò'), ("oline", '‾'), ("Omega", 'Ω'),
    ("omega", 'ω'), ("Omicron", 'Ο'), ("omicron", 'ο'), ("oplus", '⊕'), ("or", '∨'), ("ordf", 'ª'),
    ("ordm", 'º'), ("Oslash", 'Ø'), ("oslash", 'ø'), ("Otilde", 'Õ'), ("otilde", 'õ'),
    ("otimes", '⊗'), ("Ouml", 'Ö'), ("ouml", 'ö'), ("para", '¶'), ("part", '∂'), ("permil", '‰'),
    ("perp", '⊥'), ("Phi", 'Φ'), ("phi", 'φ'), ("Pi", 'Π'), ("pi", 'π'), ("piv", 'ϖ'),
    ("plusmn", '±'), ("pound", '£'), ("Prime", '″'), ("prime", '′'), ("prod", '∏'), ("prop", '∝'),
    ("Psi", 'Ψ'), ("psi", 'ψ'), ("quot", '"'), ("radic", '√'), ("rang", '⟩'), ("raquo", '»'),
    ("rArr", '⇒'), ("rarr", '→'), ("rceil", '⌉'), ("rdquo", '”'), ("real", 'ℜ'), ("reg", '®'),
    ("rfloor", '⌋'), ("Rho", 'Ρ'), ("rho", 'ρ'), ("rlm", '\u{200f}'), ("rsaquo", '›'),
    ("rsquo", '’'), ("sbquo", '‚'), ("Scaron", 'Š'), ("scaron", 'š'), ("sdot", '⋅'), ("sect", '§'),
    ("shy", '\u{ad}'), ("Sigma", 'Σ'), ("sigma", 'σ'), ("sigmaf", 'ς'), ("sim", '∼'),
    ("spades", '♠'), ("sub", '⊂'), ("sube", '⊆'), ("sum", '∑'), ("sup", '⊃'), ("sup1", '¹'),
    ("sup2", '²'), ("sup3", '³'), ("supe", '⊇'), ("szlig", 'ß'), ("Tau", 'Τ'), ("tau", 'τ'),
    ("there4", '∴'), ("Theta", 'Θ'), ("theta", 'θ'), ("thetasym", 'ϑ'), ("thinsp", '\u{2009}'),
    ("THORN", 'Þ'), ("thorn", 'þ'), ("tilde", '˜'), ("times", '×'), ("trade", '™'), ("Uacute", 'Ú'),
    ("uacute", 'ú'), ("uArr", '⇑'), ("uarr", '↑'), ("Ucirc", 'Û'), ("ucirc", 'û'), ("Ugrave", 'Ù'),
    ("ugrave", 'ù'), ("uml", '¨'), ("upsih", 'ϒ'), ("Upsilon", 'Υ'), ("upsilon", 'υ'),
    ("Uuml", 'Ü'), ("uuml", 'ü'), ("weierp", '℘'), ("Xi", 'Ξ'), ("xi", 'ξ'), ("Yacute", 'Ý'),
    ("yacute", 'ý'), ("yen", '¥'), ("Yuml", 'Ÿ'), ("yuml", 'ÿ'), ("Zeta", 'Ζ'), ("zeta", 'ζ'),
    ("zwj", '\u{200d}'), ("zwnj", '\u{200c}'), ("AMP", '&'), ("COPY", '©'), ("GT", '>'),
    ("LT", '<'), ("QUOT", '"'), ("REG", '®'),
];
