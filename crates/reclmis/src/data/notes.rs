//! Notes files: a key (the `Image` column) → a clinical note (the `Description` column), read
//! from an LViT spreadsheet (`.xlsx`, first sheet, as `pandas.read_excel`), a `.csv` with a
//! header row, or a `.jsonl` with one `{"Image": …, "Description": …}` object per line.
//!
//! Notes are kept verbatim; the authors' " EOF XXX" padding belongs to tokenisation
//! (docs §4.3), not to reading.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use calamine::{Data, Reader};

use super::DataError;

const KEY_COLUMN: &str = "Image";
const NOTE_COLUMN: &str = "Description";

/// One row of a notes file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Note {
    /// As written in the file (for QaTa, the mask file name).
    pub key: String,
    pub text: String,
    /// 1-based: the spreadsheet row, the CSV line, or the JSONL line.
    pub row: usize,
}

/// The notes of one file, in file order, looked up by key case-insensitively.
#[derive(Clone, Debug, Default)]
pub struct Notes {
    path: PathBuf,
    entries: Vec<Note>,
    exact: HashMap<String, usize>,
    folded: HashMap<String, usize>,
}

impl Notes {
    /// Reads `path`, choosing the format by its extension (`xlsx`/`xlsm`/`xls`/`ods`, `csv`,
    /// `jsonl`/`ndjson`). Rows with both cells empty are skipped; a duplicate key is accepted
    /// when its note is the same and rejected otherwise.
    pub fn read(path: &Path) -> Result<Notes, DataError> {
        let (notes, problems) = Notes::read_checked(path)?;
        DataError::collect(problems)?;
        Ok(notes)
    }

    /// Reads `path` as [`Notes::read`] does, but past its bad rows: the notes of the good rows
    /// and a problem (file and row) for every bad one. The error is for a file that cannot be
    /// read at all (missing, unknown format, damaged, no `Image`/`Description` column).
    pub fn read_checked(path: &Path) -> Result<(Notes, Vec<DataError>), DataError> {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .unwrap_or_default();
        let rows = match ext.as_str() {
            "xlsx" | "xlsm" | "xls" | "ods" => read_spreadsheet(path)?,
            "csv" => read_csv(path)?,
            "jsonl" | "ndjson" => read_jsonl(path)?,
            _ => {
                return Err(DataError::NotesFile {
                    path: path.to_path_buf(),
                    reason: format!(
                        "unknown notes format `.{ext}` (expected .xlsx, .csv or .jsonl)"
                    ),
                });
            }
        };
        let mut notes = Notes {
            path: path.to_path_buf(),
            ..Notes::default()
        };
        let mut problems = Vec::new();
        for row in rows {
            if let Err(e) = row.and_then(|row| notes.insert(row)) {
                problems.push(e);
            }
        }
        Ok((notes, problems))
    }

    /// The note for `key`: an exact match first, else one that differs only in case.
    pub fn get(&self, key: &str) -> Option<&Note> {
        self.exact
            .get(key)
            .or_else(|| self.folded.get(&fold(key)))
            .map(|&i| &self.entries[i])
    }

    /// All notes in file order.
    pub fn iter(&self) -> impl Iterator<Item = &Note> {
        self.entries.iter()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The file these notes came from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn insert(&mut self, row: RawRow) -> Result<(), DataError> {
        let bad_row = |reason: String| DataError::BadRow {
            path: self.path.clone(),
            row: row.row,
            reason,
        };
        let key = match row.key {
            Cell::Text(k) if !k.trim().is_empty() => k,
            Cell::Empty if matches!(row.note, Cell::Empty) => return Ok(()),
            Cell::Text(_) | Cell::Empty => {
                return Err(bad_row(format!("empty `{KEY_COLUMN}` cell")));
            }
            Cell::Other(v) => {
                return Err(bad_row(format!("non-text `{KEY_COLUMN}` cell: {v}")));
            }
        };
        let text = match row.note {
            Cell::Text(t) if !t.trim().is_empty() => t,
            Cell::Text(_) | Cell::Empty => {
                return Err(bad_row(format!("empty note for `{key}`")));
            }
            Cell::Other(v) => {
                return Err(bad_row(format!("non-text note for `{key}`: {v}")));
            }
        };
        let folded = fold(&key);
        if let Some(&i) = self.exact.get(&key).or_else(|| self.folded.get(&folded)) {
            let first = &self.entries[i];
            if first.text == text {
                return Ok(());
            }
            return Err(DataError::DuplicateKey {
                path: self.path.clone(),
                row: row.row,
                first_row: first.row,
                key,
            });
        }
        let index = self.entries.len();
        self.exact.insert(key.clone(), index);
        self.folded.insert(folded, index);
        self.entries.push(Note {
            key,
            text,
            row: row.row,
        });
        Ok(())
    }
}

fn fold(key: &str) -> String {
    key.to_lowercase()
}

enum Cell {
    Text(String),
    Empty,
    /// Anything else, described for the error message.
    Other(String),
}

struct RawRow {
    row: usize,
    key: Cell,
    note: Cell,
}

/// Column positions of `Image` and `Description` in a header (trimmed, any case).
fn find_columns(
    path: &Path,
    sheet: Option<&str>,
    header: &[String],
) -> Result<(usize, usize), DataError> {
    let find = |name: &'static str| {
        header
            .iter()
            .position(|h| h.trim().eq_ignore_ascii_case(name))
            .ok_or_else(|| DataError::MissingColumn {
                path: path.to_path_buf(),
                sheet: sheet.map(str::to_string),
                column: name,
                found: header.iter().filter(|h| !h.is_empty()).cloned().collect(),
            })
    };
    Ok((find(KEY_COLUMN)?, find(NOTE_COLUMN)?))
}

/// The rows of a notes file: a row that cannot be read is its own error, the others go on.
type Rows = Vec<Result<RawRow, DataError>>;

fn read_spreadsheet(path: &Path) -> Result<Rows, DataError> {
    let unreadable = |reason: String| DataError::NotesFile {
        path: path.to_path_buf(),
        reason,
    };
    // The spreadsheet parser is a dependency reading untrusted bytes; a damaged file that makes
    // it panic (an arithmetic overflow on a corrupt dimension, say) is reported as unreadable
    // instead of taking the whole run down.
    let read = || {
        let mut book = calamine::open_workbook_auto(path).map_err(|e| unreadable(e.to_string()))?;
        // paper-parity: §4.2 — `pd.read_excel(file)` reads the first sheet, header in its first
        // row.
        let sheet = book
            .sheet_names()
            .into_iter()
            .next()
            .ok_or_else(|| unreadable("the workbook has no sheet".into()))?;
        let range = book
            .worksheet_range(&sheet)
            .map_err(|e| unreadable(format!("sheet `{sheet}`: {e}")))?;
        Ok((sheet, range))
    };
    let (sheet, range) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(read))
        .map_err(|_| unreadable("the spreadsheet is damaged (its reader failed on it)".into()))??;
    let first_row = range.start().map_or(0, |(row, _)| row as usize);
    let mut rows = range.rows();
    let header: Vec<String> = rows
        .next()
        .map(|cells| cells.iter().map(|c| c.to_string()).collect())
        .unwrap_or_default();
    let (key_col, note_col) = find_columns(path, Some(&sheet), &header)?;
    let cell = |cells: &[Data], col: usize| match cells.get(col).unwrap_or(&Data::Empty) {
        Data::String(s) => Cell::Text(s.clone()),
        Data::Empty => Cell::Empty,
        other => Cell::Other(format!("{other:?}")),
    };
    Ok(rows
        .enumerate()
        .map(|(i, cells)| {
            Ok(RawRow {
                // The header is spreadsheet row `first_row + 1`; data start one below it.
                row: first_row + i + 2,
                key: cell(cells, key_col),
                note: cell(cells, note_col),
            })
        })
        .collect())
}

fn read_csv(path: &Path) -> Result<Rows, DataError> {
    let bytes = std::fs::read(path).map_err(|source| DataError::Io {
        what: "notes file",
        path: path.to_path_buf(),
        source,
    })?;
    let unreadable = |e: csv::Error| DataError::NotesFile {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .from_reader(bytes.as_slice());
    // Byte records, so that a cell in another encoding is its row's problem, not the file's.
    let header: Vec<String> = reader
        .byte_headers()
        .map_err(unreadable)?
        .iter()
        .map(|h| {
            String::from_utf8_lossy(h)
                .trim_start_matches('\u{feff}')
                .to_string()
        })
        .collect();
    let (key_col, note_col) = find_columns(path, None, &header)?;
    let mut rows = Vec::new();
    for record in reader.byte_records() {
        let record = record.map_err(unreadable)?;
        // The reader's line count and offset include the blank lines it skips before a record;
        // step over them and count the newlines before the record itself.
        let mut start = record.position().map_or(0, |p| p.byte() as usize);
        while matches!(bytes.get(start), Some(b'\r' | b'\n')) {
            start += 1;
        }
        let row = 1 + bytes[..start.min(bytes.len())]
            .iter()
            .filter(|&&b| b == b'\n')
            .count();
        let cell = |col: usize, name: &str| match record.get(col) {
            Some(b) if !b.is_empty() => std::str::from_utf8(b)
                .map(|s| Cell::Text(s.to_string()))
                .map_err(|_| DataError::BadRow {
                    path: path.to_path_buf(),
                    row,
                    reason: format!(
                        "the `{name}` cell is not UTF-8 text (save the notes file as UTF-8)"
                    ),
                }),
            _ => Ok(Cell::Empty),
        };
        rows.push(
            cell(key_col, KEY_COLUMN)
                .and_then(|key| Ok((key, cell(note_col, NOTE_COLUMN)?)))
                .map(|(key, note)| RawRow { row, key, note }),
        );
    }
    Ok(rows)
}

fn read_jsonl(path: &Path) -> Result<Rows, DataError> {
    let bytes = std::fs::read(path).map_err(|source| DataError::Io {
        what: "notes file",
        path: path.to_path_buf(),
        source,
    })?;
    let mut rows = Vec::new();
    for (i, line) in bytes.split(|&b| b == b'\n').enumerate() {
        let row = i + 1;
        let bad_row = |reason: String| DataError::BadRow {
            path: path.to_path_buf(),
            row,
            reason,
        };
        let parse = || -> Result<Option<RawRow>, DataError> {
            let line = std::str::from_utf8(line).map_err(|_| {
                bad_row("the line is not UTF-8 text (save the notes file as UTF-8)".into())
            })?;
            let line = line.trim_start_matches('\u{feff}');
            if line.trim().is_empty() {
                return Ok(None);
            }
            let value: serde_json::Value =
                serde_json::from_str(line).map_err(|e| bad_row(format!("invalid JSON: {e}")))?;
            let object = value
                .as_object()
                .ok_or_else(|| bad_row("expected a JSON object per line".into()))?;
            let fields: Vec<String> = object.keys().cloned().collect();
            let (key_col, note_col) = find_columns(path, None, &fields).map_err(|e| match e {
                DataError::MissingColumn { column, found, .. } => bad_row(format!(
                    "no `{column}` field; fields found: {}",
                    if found.is_empty() {
                        "none".into()
                    } else {
                        found.join(", ")
                    }
                )),
                other => other,
            })?;
            let cell = |name: &str| match &object[name] {
                serde_json::Value::String(s) if !s.is_empty() => Cell::Text(s.clone()),
                serde_json::Value::String(_) | serde_json::Value::Null => Cell::Empty,
                other => Cell::Other(other.to_string()),
            };
            Ok(Some(RawRow {
                row,
                key: cell(&fields[key_col]),
                note: cell(&fields[note_col]),
            }))
        };
        match parse() {
            Ok(Some(r)) => rows.push(Ok(r)),
            Ok(None) => {}
            Err(e) => rows.push(Err(e)),
        }
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::test_support::shared;

    fn scratch_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("reclmis-notes-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir is writable");
        dir
    }

    /// LViT's `read_text` padding (the real one lives in the tokenizer).
    fn pad(note: &str) -> String {
        let words = note.split_whitespace().count();
        let mut padded = note.to_string();
        for _ in words..9 {
            padded.push_str(" EOF XXX");
        }
        padded
    }

    fn write_xlsx(path: &Path, rows: &[(&str, XlsxCell)]) {
        let mut book = rust_xlsxwriter::Workbook::new();
        let sheet = book.add_worksheet();
        sheet.write_string(0, 0, "Image").expect("cell");
        sheet.write_string(0, 1, "Description").expect("cell");
        for (i, (key, note)) in rows.iter().enumerate() {
            let r = i as u32 + 1;
            sheet.write_string(r, 0, *key).expect("cell");
            match note {
                XlsxCell::Text(t) => sheet.write_string(r, 1, *t).map(|_| ()),
                XlsxCell::Number(v) => sheet.write_number(r, 1, *v).map(|_| ()),
                XlsxCell::Blank => Ok(()),
            }
            .expect("cell");
        }
        book.save(path).expect("xlsx saves");
    }

    enum XlsxCell {
        Text(&'static str),
        Number(f64),
        Blank,
    }

    #[test]
    fn official_notes_parity() {
        // The manifest's `note` is what the authors' `read_text` made of inputs/notes.xlsx.
        for preset in ["qata", "mosmed"] {
            let root = shared().join("reference/official-parity").join(preset);
            let manifest: serde_json::Value = serde_json::from_slice(
                &std::fs::read(root.join("manifest.json")).expect("manifest.json"),
            )
            .expect("manifest is JSON");
            let notes = Notes::read(&root.join("inputs/notes.xlsx")).expect("notes.xlsx");
            assert_eq!(notes.len(), 4, "{preset}");
            for input in manifest["inputs"].as_array().expect("inputs") {
                let image = input["image"].as_str().expect("image");
                let key = if preset == "qata" {
                    format!("mask_{image}")
                } else {
                    image.to_string()
                };
                let note = notes.get(&key).expect("every input has a note");
                assert_eq!(
                    pad(&note.text),
                    input["note"].as_str().expect("note"),
                    "{key}"
                );
            }
        }
        // The MosMed fixture has a 7-word note: padding appends " EOF XXX" twice.
        let mosmed = shared().join("reference/official-parity/mosmed/inputs/notes.xlsx");
        let notes = Notes::read(&mosmed).expect("notes.xlsx");
        let short: Vec<&Note> = notes
            .iter()
            .filter(|n| n.text.split_whitespace().count() < 9)
            .collect();
        assert_eq!(short.len(), 1);
        assert!(pad(&short[0].text).ends_with("lung. EOF XXX EOF XXX"));
    }

    #[test]
    fn real_qata_notes() {
        let root = shared().join("data/qata-cov19");
        let test = Notes::read(&root.join("Test_Folder/Test_text.xlsx")).expect("Test_text.xlsx");
        assert_eq!(test.len(), 600);
        let first = test.iter().next().expect("non-empty");
        assert_eq!(
            first.key,
            "mask_sub-S08047_ses-E16837_run-1_bp-chest_cr.png"
        );
        assert_eq!(first.row, 2);
        assert_eq!(
            first.text,
            "Bilateral pulmonary infection, two infected areas, all left lung and all right lung."
        );
        let cleaned =
            Notes::read(&root.join("Test_Folder/Test_text_cleaned.csv")).expect("cleaned csv");
        assert_eq!(cleaned.len(), 600);
        let same_key = cleaned.get(&first.key).expect("same keys in both files");
        assert!(
            same_key
                .text
                .starts_with("bilateral pulmonary infection, six infected areas")
        );
        let train_val =
            Notes::read(&root.join("Train_Folder/Train_Val_text.xlsx")).expect("Train_Val");
        assert_eq!(train_val.len(), 1250);
    }

    #[test]
    fn csv_jsonl_and_case_insensitive_keys() {
        let dir = scratch_dir("formats");
        let csv = dir.join("notes.csv");
        std::fs::write(
            &csv,
            "\u{feff}Description,Image\n\"Left lung, upper.\",mask_A.png\n\nRight lung.,mask_b.png\n\
             Right lung.,mask_B.png\n",
        )
        .expect("write");
        let notes = Notes::read(&csv).expect("csv reads");
        // The duplicate (same note, other case) is accepted once.
        assert_eq!(notes.len(), 2);
        assert_eq!(
            notes.get("mask_a.png").map(|n| n.text.as_str()),
            Some("Left lung, upper.")
        );
        assert_eq!(
            notes.get("MASK_B.PNG").map(|n| (n.key.as_str(), n.row)),
            Some(("mask_b.png", 4))
        );
        assert!(notes.get("mask_c.png").is_none());

        let jsonl = dir.join("notes.JSONL");
        std::fs::write(
            &jsonl,
            "{\"Image\": \"x.png\", \"Description\": \"Upper left lung.\"}\n\n\
             {\"image\": \"y.png\", \"description\": \"Lower right lung.\", \"extra\": 1}\n",
        )
        .expect("write");
        let notes = Notes::read(&jsonl).expect("jsonl reads");
        let all: Vec<(&str, &str, usize)> = notes
            .iter()
            .map(|n| (n.key.as_str(), n.text.as_str(), n.row))
            .collect();
        assert_eq!(
            all,
            [
                ("x.png", "Upper left lung.", 1),
                ("y.png", "Lower right lung.", 3)
            ]
        );
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn bad_notes_name_file_row_and_columns() {
        let dir = scratch_dir("bad");
        let row_of = |e: DataError| match e {
            DataError::BadRow { row, reason, .. } => (row, reason),
            other => panic!("expected a row error, got {other:?}"),
        };

        // Missing column: the message lists what was found.
        let csv = dir.join("cols.csv");
        std::fs::write(&csv, "Image,Text\na.png,note\n").expect("write");
        let err = Notes::read(&csv).expect_err("no Description");
        let msg = err.to_string();
        assert!(matches!(
            err,
            DataError::MissingColumn {
                column: "Description",
                ..
            }
        ));
        assert!(
            msg.contains("`Image`, `Text`") && msg.contains("cols.csv"),
            "{msg}"
        );

        // Empty and non-text notes, with their spreadsheet rows.
        let xlsx = dir.join("cells.xlsx");
        write_xlsx(
            &xlsx,
            &[
                ("a.png", XlsxCell::Text("Left lung.")),
                ("b.png", XlsxCell::Blank),
            ],
        );
        let (row, reason) = row_of(Notes::read(&xlsx).expect_err("blank note"));
        assert_eq!(row, 3);
        assert!(reason.contains("empty note for `b.png`"), "{reason}");
        write_xlsx(
            &xlsx,
            &[
                ("a.png", XlsxCell::Number(3.0)),
                ("b.png", XlsxCell::Text("x")),
            ],
        );
        let err = Notes::read(&xlsx).expect_err("numeric note");
        assert!(err.to_string().contains("cells.xlsx:2"), "{err}");
        assert!(err.to_string().contains("non-text note"), "{err}");
        write_xlsx(&xlsx, &[("a.png", XlsxCell::Text("   "))]);
        assert_eq!(
            row_of(Notes::read(&xlsx).expect_err("whitespace note")).0,
            2
        );

        // Duplicate keys: same note is fine, a different one is not.
        write_xlsx(
            &xlsx,
            &[
                ("a.png", XlsxCell::Text("Left lung.")),
                ("b.png", XlsxCell::Text("Right lung.")),
                ("A.PNG", XlsxCell::Text("Left lung.")),
                ("b.png", XlsxCell::Text("Both lungs.")),
            ],
        );
        match Notes::read(&xlsx).expect_err("conflicting duplicate") {
            DataError::DuplicateKey {
                row,
                first_row,
                key,
                ..
            } => {
                assert_eq!((row, first_row, key.as_str()), (5, 3, "b.png"));
            }
            other => panic!("expected a duplicate-key error, got {other:?}"),
        }

        // JSONL: bad JSON, a missing field and a non-text note, each with its line.
        let jsonl = dir.join("bad.jsonl");
        std::fs::write(
            &jsonl,
            "{\"Image\": \"a\", \"Description\": \"ok\"}\n{oops\n",
        )
        .expect("write");
        assert_eq!(row_of(Notes::read(&jsonl).expect_err("bad json")).0, 2);
        std::fs::write(&jsonl, "{\"Image\": \"a\", \"Note\": \"x\"}\n").expect("write");
        let (row, reason) = row_of(Notes::read(&jsonl).expect_err("missing field"));
        assert_eq!(row, 1);
        assert!(
            reason.contains("Description") && reason.contains("Image, Note"),
            "{reason}"
        );
        std::fs::write(&jsonl, "{\"Image\": \"a\", \"Description\": 7}\n").expect("write");
        assert!(
            row_of(Notes::read(&jsonl).expect_err("number"))
                .1
                .contains("non-text")
        );

        // Unreadable files and unknown formats name the file.
        let fake = dir.join("fake.xlsx");
        std::fs::write(&fake, b"not a zip").expect("write");
        let err = Notes::read(&fake).expect_err("not a workbook");
        assert!(
            matches!(err, DataError::NotesFile { .. }) && err.to_string().contains("fake.xlsx")
        );
        let err = Notes::read(&dir.join("absent.csv")).expect_err("missing");
        assert!(err.to_string().contains("absent.csv"), "{err}");
        let err = Notes::read(&dir.join("notes.txt")).expect_err("unknown format");
        assert!(err.to_string().contains(".txt"), "{err}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
