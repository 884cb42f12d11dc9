//! How the note grammar reads a whole notes file: which notes it understood fully, which only
//! in part (unknown words, zones without a side) and which not at all, and, given a second file
//! with the same keys, where the two files' findings differ. `reclmis notes` prints it;
//! `evaluate` and `predict` report the same counts for the notes they score.

use serde::Serialize;

use super::notes::Notes;
use crate::finding::{ParseStatus, Reading, parse};

/// One note as the grammar read it.
#[derive(Clone, Debug, Serialize)]
pub struct NoteAudit {
    pub key: String,
    pub row: usize,
    pub text: String,
    pub status: ParseStatus,
    /// The canonical sentence, or the raw text it falls back to.
    pub model_text: String,
    pub finding: String,
    pub unknown: Vec<String>,
    pub corrections: Vec<(String, String)>,
    /// With a reference file: whether this note's zones equal the reference note's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agrees: Option<bool>,
}

/// Counts over a notes file.
#[derive(Clone, Debug, Default, Serialize)]
pub struct NotesAudit {
    pub n: usize,
    pub full: usize,
    pub partial: usize,
    pub unparsed: usize,
    /// With a reference file: notes whose zones equal the reference's, and the keys the
    /// reference lacks.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agree: Option<usize>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub missing_in_reference: Vec<String>,
    pub notes: Vec<NoteAudit>,
}

impl NotesAudit {
    /// Reads every note of `notes`; with `reference`, compares each finding with the note of
    /// the same key there.
    pub fn of(notes: &Notes, reference: Option<&Notes>) -> NotesAudit {
        let mut audit = NotesAudit::default();
        for note in notes.iter() {
            let r = parse(&note.text);
            let agrees = reference.and_then(|refs| match refs.get(&note.key) {
                Some(other) => {
                    Some(parse(&other.text).finding.structure() == r.finding.structure())
                }
                None => {
                    audit.missing_in_reference.push(note.key.clone());
                    None
                }
            });
            audit.add(&note.key, note.row, &note.text, &r, agrees);
        }
        if reference.is_some() {
            audit.agree = Some(
                audit
                    .notes
                    .iter()
                    .filter(|n| n.agrees == Some(true))
                    .count(),
            );
        }
        audit
    }

    /// Audits notes that are not in a file (an evaluation's notes in data order).
    pub fn of_texts<'a>(notes: impl IntoIterator<Item = (&'a str, &'a str)>) -> NotesAudit {
        let mut audit = NotesAudit::default();
        for (i, (key, text)) in notes.into_iter().enumerate() {
            audit.add(key, i + 1, text, &parse(text), None);
        }
        audit
    }

    fn add(&mut self, key: &str, row: usize, text: &str, r: &Reading, agrees: Option<bool>) {
        self.n += 1;
        match r.status {
            ParseStatus::Full => self.full += 1,
            ParseStatus::Partial => self.partial += 1,
            ParseStatus::Unparsed => self.unparsed += 1,
        }
        self.notes.push(NoteAudit {
            key: key.to_owned(),
            row,
            text: text.to_owned(),
            status: r.status,
            model_text: r.canonical().unwrap_or_else(|| text.to_owned()),
            finding: r.finding.to_string(),
            unknown: r.unknown.clone(),
            corrections: r.corrections.clone(),
            agrees,
        });
    }

    /// The words the grammar did not know, most frequent first, with their counts.
    pub fn unknown_words(&self) -> Vec<(String, usize)> {
        let mut counts = std::collections::BTreeMap::<&str, usize>::new();
        for n in &self.notes {
            for w in &n.unknown {
                *counts.entry(w).or_default() += 1;
            }
        }
        let mut v: Vec<(String, usize)> =
            counts.into_iter().map(|(w, c)| (w.to_owned(), c)).collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        v
    }

    /// One line for people: `600 notes: 590 read fully, 8 in part, 2 not (raw text)`.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "{} notes: {} read fully, {} in part, {} not understood (the model reads their raw text)",
            self.n, self.full, self.partial, self.unparsed
        );
        if let Some(a) = self.agree {
            s.push_str(&format!(
                "; {a} of {} name the same zones as the reference",
                self.n
            ));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_statuses_and_unknown_words() {
        let a = NotesAudit::of_texts([
            ("a", "lower left lung"),
            ("b", "lower left lung zzz"),
            ("c", "pneumothorax zzz"),
        ]);
        assert_eq!((a.n, a.full, a.partial, a.unparsed), (3, 1, 1, 1));
        assert_eq!(
            a.unknown_words(),
            vec![("zzz".to_owned(), 2), ("pneumothorax".to_owned(), 1)]
        );
        assert_eq!(a.notes[2].model_text, "pneumothorax zzz");
        assert_eq!(
            a.notes[0].model_text,
            "unilateral pulmonary infection, one infected area, lower left lung."
        );
    }
}
