//! OpenAI CLIP's byte-level BPE tokenizer, as `clip.tokenize` applies it to the notes (docs §1.4,
//! §4.3).
//!
//! The merges file ships inside the binary. Text goes through the same clean-up as CLIP's
//! `SimpleTokenizer` (ftfy, HTML unescape twice, whitespace collapse, lower case), then the CLIP
//! pre-tokenisation regex, then BPE.
//!
//! ftfy is a Python library; [`Tokenizer::clean`] re-implements the parts of `ftfy.fix_text` that
//! can change a note's tokens. Known gaps, none of which occurs in the QaTa or MosMed notes:
//! - mojibake repair only re-reads a whole line that is UTF-8 decoded as Latin-1 or Windows-1252
//!   (`cafÃ©` → `café`). ftfy also repairs garbled runs inside otherwise sound text and other code
//!   pages, and it first scores how "bad" a line looks, so it leaves alone a rare legitimate pair
//!   such as `×°` that is re-read (as `װ`) here. A fuzz run of 5 000 hostile strings against
//!   Python CLIP + ftfy 6.3.1 differed in 45, all of them from this repair;
//! - Unicode NFC is applied only to an ASCII letter followed by one of the common combining accents;
//!   other decomposed sequences stay decomposed;
//! - named HTML entities cover HTML 4 (the 253 names plus `&apos;`), not all 2 231 of HTML 5.

mod clean;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::io::Read;
use std::sync::OnceLock;

use regex::Regex;

use clean::TextCleaner;

/// `<|startoftext|>`.
pub const SOT: i64 = 49406;
/// `<|endoftext|>`; also what the last kept position becomes when a note is truncated.
pub const EOT: i64 = 49407;
/// The context length the authors tokenize notes to (docs §1.4).
pub const CONTEXT_PAPER: usize = 18;

const VOCAB_GZ: &[u8] = include_bytes!("../../assets/bpe_simple_vocab_16e6.txt.gz");
/// Merge lines used by CLIP: `49152 - 256 - 2` after the header line.
const N_MERGES: usize = 48_894;
const VOCAB_SIZE: usize = 512 + N_MERGES + 2;
const END_OF_WORD: &str = "</w>";
const PIECES: &str =
    r"(?i)<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|\p{L}+|\p{N}|[^\s\p{L}\p{N}]+";

/// One tokenized note: `context` ids, its mask, and whether words were cut off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tokens {
    /// `[SOT] + ids + [EOT]`, truncated or zero padded to the context.
    pub ids: Vec<i64>,
    /// `ids != 0` as 0/1 (the authors' `text_mask`).
    pub mask: Vec<i64>,
    /// The note did not fit: it was cut and its last kept position overwritten with EOT.
    pub truncated: bool,
}

/// CLIP's tokenizer over the embedded `bpe_simple_vocab_16e6` vocabulary.
pub struct Tokenizer {
    /// Id → byte-level unicode string (with `</w>` on word-final entries).
    vocab: Vec<String>,
    /// Adjacent pair of ids → (merge rank, id of the merged symbol).
    merges: HashMap<(u32, u32), (u32, u32)>,
    /// Byte → id of its symbol, inside a piece and at its end (`</w>`).
    byte_id: [u32; 256],
    byte_end_id: [u32; 256],
    /// GPT-2 byte-to-unicode table, inverted.
    byte_of_char: HashMap<char, u8>,
    pieces: Regex,
    cleaner: TextCleaner,
}

impl Tokenizer {
    /// The shared tokenizer, built on first use (decompressing and indexing the vocabulary takes
    /// about 0.1 s, encoding a note about 15 µs).
    pub fn clip() -> &'static Tokenizer {
        static CLIP: OnceLock<Tokenizer> = OnceLock::new();
        CLIP.get_or_init(Tokenizer::build)
    }

    fn build() -> Tokenizer {
        let mut text = String::new();
        flate2::read::GzDecoder::new(VOCAB_GZ)
            .read_to_string(&mut text)
            .expect("the embedded CLIP vocabulary is gzip-compressed UTF-8");
        let merge_lines: Vec<(&str, &str)> = text
            .split('\n')
            .skip(1)
            .take(N_MERGES)
            .map(|line| {
                line.split_once(' ')
                    .expect("every CLIP merge line is two symbols")
            })
            .collect();
        assert_eq!(
            merge_lines.len(),
            N_MERGES,
            "the CLIP vocabulary has 48 894 merges"
        );

        let byte_chars = bytes_to_unicode();
        let mut vocab: Vec<String> = Vec::with_capacity(VOCAB_SIZE);
        vocab.extend(byte_chars.iter().map(|&(_, c)| c.to_string()));
        vocab.extend(byte_chars.iter().map(|&(_, c)| format!("{c}{END_OF_WORD}")));
        vocab.extend(merge_lines.iter().map(|(a, b)| format!("{a}{b}")));
        vocab.push("<|startoftext|>".to_owned());
        vocab.push("<|endoftext|>".to_owned());

        let mut merges = HashMap::with_capacity(N_MERGES);
        {
            // Later entries win, as in CLIP's `dict(zip(vocab, range(len(vocab))))`.
            let ids: HashMap<&str, u32> = vocab
                .iter()
                .enumerate()
                .map(|(i, s)| (s.as_str(), to_u32(i)))
                .collect();
            let id = |s: &str| {
                *ids.get(s)
                    .expect("every CLIP merge part is in the vocabulary")
            };
            for (rank, (a, b)) in merge_lines.iter().enumerate() {
                let merged = id(&vocab[512 + rank]);
                merges.insert((id(a), id(b)), (to_u32(rank), merged));
            }
        }

        let mut byte_id = [0; 256];
        let mut byte_end_id = [0; 256];
        for (i, &(b, _)) in byte_chars.iter().enumerate() {
            byte_id[usize::from(b)] = to_u32(i);
            byte_end_id[usize::from(b)] = to_u32(i + 256);
        }
        Tokenizer {
            vocab,
            merges,
            byte_id,
            byte_end_id,
            byte_of_char: byte_chars.iter().map(|&(b, c)| (c, b)).collect(),
            pieces: Regex::new(PIECES).expect("CLIP's pre-tokenisation regex compiles"),
            cleaner: TextCleaner::new(),
        }
    }

    /// 49 408: byte symbols, byte symbols with `</w>`, merges, SOT, EOT.
    pub fn vocab_size(&self) -> usize {
        self.vocab.len()
    }

    /// The text CLIP actually tokenizes: ftfy-style repair, HTML unescape (twice), whitespace
    /// collapsed, lower case.
    pub fn clean(&self, text: &str) -> String {
        self.cleaner.clean(text)
    }

    /// BPE ids of the cleaned text, without SOT/EOT.
    pub fn encode(&self, text: &str) -> Vec<i64> {
        let cleaned = self.clean(text);
        let mut ids = Vec::new();
        for piece in self.pieces.find_iter(&cleaned) {
            self.bpe(piece.as_str(), &mut ids);
        }
        ids
    }

    /// `clip.tokenize([text], context, truncate=True)[0]` plus the mask.
    pub fn tokenize(&self, text: &str, context: usize) -> Tokens {
        let mut ids = vec![SOT];
        ids.extend(self.encode(text));
        ids.push(EOT);
        let truncated = ids.len() > context;
        if truncated {
            ids.truncate(context);
            // paper-parity: §1.4 — the last kept position becomes EOT, dropping one more word.
            if let Some(last) = ids.last_mut() {
                *last = EOT;
            }
        }
        ids.resize(context, 0);
        let mask = ids.iter().map(|&id| i64::from(id != 0)).collect();
        Tokens {
            ids,
            mask,
            truncated,
        }
    }

    /// Readable text of one token, for showing per-word weights: the bytes it stands for as
    /// UTF-8 (a token holding part of a multi-byte character shows `�`), without `</w>`.
    /// SOT and EOT read `<|startoftext|>` / `<|endoftext|>`; an id outside the vocabulary `<unk>`.
    pub fn token_str(&self, id: i64) -> String {
        let Some(entry) = usize::try_from(id).ok().and_then(|i| self.vocab.get(i)) else {
            return "<unk>".to_owned();
        };
        if id == SOT || id == EOT {
            return entry.clone();
        }
        let symbols = entry.strip_suffix(END_OF_WORD).unwrap_or(entry);
        String::from_utf8_lossy(&self.symbol_bytes(symbols)).into_owned()
    }

    /// CLIP's `SimpleTokenizer.decode`: the bytes of all ids as UTF-8, each `</w>` read as a space.
    pub fn decode(&self, ids: &[i64]) -> String {
        let mut bytes = Vec::new();
        for &id in ids {
            match usize::try_from(id).ok().and_then(|i| self.vocab.get(i)) {
                Some(entry) if id == SOT || id == EOT => bytes.extend_from_slice(entry.as_bytes()),
                Some(entry) => {
                    let word_end = entry.ends_with(END_OF_WORD);
                    let symbols = entry.strip_suffix(END_OF_WORD).unwrap_or(entry);
                    bytes.extend(self.symbol_bytes(symbols));
                    if word_end {
                        bytes.push(b' ');
                    }
                }
                None => bytes.extend_from_slice(b"<unk>"),
            }
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }

    fn symbol_bytes(&self, symbols: &str) -> Vec<u8> {
        symbols
            .chars()
            .filter_map(|c| self.byte_of_char.get(&c).copied())
            .collect()
    }

    /// BPE of one pre-tokenised piece: start from its bytes (the last one word-final) and keep
    /// merging every occurrence, left to right, of the adjacent pair with the lowest merge rank.
    fn bpe(&self, piece: &str, out: &mut Vec<i64>) {
        match piece {
            "<|startoftext|>" => return out.push(SOT),
            "<|endoftext|>" => return out.push(EOT),
            _ => {}
        }
        let Some((&last, head)) = piece.as_bytes().split_last() else {
            return;
        };
        let mut word: Vec<u32> = head.iter().map(|&b| self.byte_id[usize::from(b)]).collect();
        word.push(self.byte_end_id[usize::from(last)]);

        while word.len() > 1 {
            let best = word
                .windows(2)
                .filter_map(|w| {
                    self.merges
                        .get(&(w[0], w[1]))
                        .map(|&(rank, merged)| (rank, w[0], w[1], merged))
                })
                .min_by_key(|&(rank, ..)| rank);
            let Some((_, first, second, merged)) = best else {
                break;
            };
            let mut next = Vec::with_capacity(word.len());
            let mut i = 0;
            while i < word.len() {
                if word[i] == first && word.get(i + 1) == Some(&second) {
                    next.push(merged);
                    i += 2;
                } else {
                    next.push(word[i]);
                    i += 1;
                }
            }
            word = next;
        }
        out.extend(word.into_iter().map(i64::from));
    }
}

/// The authors' `read_text` padding: a note of fewer than 9 whitespace-separated words gets
/// `" EOF XXX"` appended `9 - count` times.
pub fn pad_note(note: &str) -> String {
    // paper-parity: §1.4 "Note padding" — each repeat adds two words, so short notes end up with
    // `18 - count` words and the tokens `e of xxx` fill the context.
    let count = note.split(is_py_space).filter(|w| !w.is_empty()).count();
    let mut padded = note.to_owned();
    for _ in count..9 {
        padded.push_str(" EOF XXX");
    }
    padded
}

fn to_u32(i: usize) -> u32 {
    u32::try_from(i).expect("vocabulary ids fit in u32")
}

/// GPT-2's byte-to-unicode table in CLIP's vocabulary order: printable Latin-1 bytes map to
/// themselves and come first, the other 68 bytes map to U+0100.. and follow.
fn bytes_to_unicode() -> Vec<(u8, char)> {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    let mut table: Vec<(u8, char)> = (0..=255u8)
        .filter(|&b| printable(b))
        .map(|b| (b, char::from(b)))
        .collect();
    let shifted = (0..=255u8).filter(|&b| !printable(b));
    table.extend(shifted.zip(256u32..).map(|(b, code)| {
        (
            b,
            char::from_u32(code).expect("U+0100..U+0143 are characters"),
        )
    }));
    table
}

/// Python's `str.isspace`, which `str.split()` and `re`'s `\s` use: Unicode White_Space plus the
/// four ASCII information separators.
fn is_py_space(c: char) -> bool {
    c.is_whitespace() || matches!(c, '\u{1c}'..='\u{1f}')
}
