//! Data: LViT folder layout, notes files, image loading as the authors' loader does, metrics and
//! the embedded procedural dataset.

pub mod audit;
pub mod dataset;
pub mod image;
pub mod layout;
pub mod medical;
pub mod metrics;
pub mod notes;
pub mod paraphrase;
pub mod side_focus;
pub mod synth;

use std::fmt;
use std::path::{Path, PathBuf};

pub use image::{
    Batch, ImageU8, ReadOptions, load_batch, load_image, load_mask, read_bgr_bytes,
    resize_linear_u8,
};
pub use layout::{
    Convention, Item, LayoutOptions, Split, SplitItems, replace_notes, scan_split,
    scan_split_with_notes, survey_split,
};
pub use notes::{Note, Notes};

/// Every way reading a dataset can fail. Each variant names the file (and the row for notes), so
/// the CLI can print `error: <what> (<file>[:row])` and exit with code 2.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("cannot read {what} ({})", .path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("unreadable image: {reason} ({})", .path.display())]
    Image { path: PathBuf, reason: String },
    #[error("{what} not found ({})", .path.display())]
    MissingPath { what: String, path: PathBuf },
    #[error("unreadable notes file: {reason} ({})", .path.display())]
    NotesFile { path: PathBuf, reason: String },
    #[error(
        "notes file has no `{column}` column{}; columns found: {} ({})",
        sheet_suffix(.sheet), list_or_none(.found), .path.display()
    )]
    MissingColumn {
        path: PathBuf,
        sheet: Option<String>,
        column: &'static str,
        found: Vec<String>,
    },
    #[error("{reason} ({}:{row})", .path.display())]
    BadRow {
        path: PathBuf,
        row: usize,
        reason: String,
    },
    #[error(
        "duplicate key `{key}` with a different note (first at row {first_row}) ({}:{row})",
        .path.display()
    )]
    DuplicateKey {
        path: PathBuf,
        row: usize,
        first_row: usize,
        key: String,
    },
    #[error(
        "no row for image `{key}`{} ({})",
        more_images(.count), .path.display()
    )]
    MissingNote {
        path: PathBuf,
        key: String,
        /// Images without a row, this one included.
        count: usize,
    },
    #[error("{count} {what}: {} ({})", Preview(.names), .dir.display())]
    Unmatched {
        what: &'static str,
        dir: PathBuf,
        count: usize,
        names: Vec<String>,
    },
    /// Every problem one pass over a dataset found (two or more; one is reported as itself), in
    /// the order found, so a user fixes them all before the next try.
    #[error("{} problems with the data:{}", .0.len(), ProblemList(.0))]
    Problems(Vec<DataError>),
}

/// How many problems an error message lists; the rest are counted.
pub const LISTED_PROBLEMS: usize = 20;

impl DataError {
    /// `Ok` without problems, the problem itself when there is one, all of them when there are
    /// more: nested lists flattened, and a problem found twice (a notes file two splits share)
    /// listed once.
    pub fn collect(problems: Vec<DataError>) -> Result<(), DataError> {
        let mut flat: Vec<DataError> = Vec::with_capacity(problems.len());
        let mut seen = std::collections::HashSet::new();
        for p in problems {
            let inner = match p {
                DataError::Problems(inner) => inner,
                p => vec![p],
            };
            for p in inner {
                if seen.insert(p.to_string()) {
                    flat.push(p);
                }
            }
        }
        match flat.len() {
            0 => Ok(()),
            1 => Err(flat.remove(0)),
            _ => Err(DataError::Problems(flat)),
        }
    }

    /// The problems this error stands for: the list of [`DataError::Problems`], else itself.
    pub fn problems(&self) -> &[DataError] {
        match self {
            DataError::Problems(all) => all,
            one => std::slice::from_ref(one),
        }
    }

    /// A second line for people: what to do about it. `None` where the message says it all.
    pub fn hint(&self) -> Option<String> {
        match self {
            DataError::Problems(all) => {
                let mut hints: Vec<String> = Vec::new();
                for h in all.iter().filter_map(DataError::hint) {
                    if !hints.contains(&h) {
                        hints.push(h);
                    }
                }
                (!hints.is_empty()).then(|| hints.join("; "))
            }
            DataError::MissingPath { .. } => Some(format!(
                "expected the LViT layout: {}",
                layout::EXPECTED_LAYOUT
            )),
            DataError::MissingColumn { .. } => Some(
                "the first sheet (or the CSV header, or each JSONL object) needs the columns \
                 `Image` (key) and `Description` (note)"
                    .into(),
            ),
            DataError::Unmatched { what, .. } if what.contains("note") => Some(
                "add the missing notes, or pass --allow-missing-notes to use the empty note".into(),
            ),
            DataError::MissingNote { .. } => Some(
                "every image of the split needs a row; the `Image` column holds the mask name \
                 (QaTa: mask_<image>.png), in any case"
                    .into(),
            ),
            DataError::Unmatched { .. } => Some(
                "QaTa pairs `labelcol/mask_X.png` with `img/X.png`; MosMed pairs `img/X.ext` \
                 with `labelcol/X.png`"
                    .into(),
            ),
            _ => None,
        }
    }

    /// The file or folder the error is about.
    pub fn path(&self) -> &Path {
        match self {
            DataError::Io { path, .. }
            | DataError::Image { path, .. }
            | DataError::MissingPath { path, .. }
            | DataError::NotesFile { path, .. }
            | DataError::MissingColumn { path, .. }
            | DataError::BadRow { path, .. }
            | DataError::DuplicateKey { path, .. }
            | DataError::MissingNote { path, .. } => path,
            DataError::Unmatched { dir, .. } => dir,
            DataError::Problems(all) => all.first().map_or(Path::new(""), DataError::path),
        }
    }
}

fn sheet_suffix(sheet: &Option<String>) -> String {
    sheet
        .as_ref()
        .map(|s| format!(" in sheet `{s}`"))
        .unwrap_or_default()
}

fn more_images(count: &usize) -> String {
    match *count {
        0 | 1 => String::new(),
        n => format!(" ({} more images without a row)", n - 1),
    }
}

fn list_or_none(found: &[String]) -> String {
    if found.is_empty() {
        "none".into()
    } else {
        found
            .iter()
            .map(|c| format!("`{c}`"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The first [`LISTED_PROBLEMS`] problems, one per line, and how many more there are.
struct ProblemList<'a>(&'a [DataError]);

impl fmt::Display for ProblemList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for p in self.0.iter().take(LISTED_PROBLEMS) {
            write!(f, "\n  {p}")?;
        }
        if self.0.len() > LISTED_PROBLEMS {
            write!(f, "\n  … and {} more", self.0.len() - LISTED_PROBLEMS)?;
        }
        Ok(())
    }
}

/// The first few names of a list that can be thousands long.
struct Preview<'a>(&'a [String]);

const PREVIEW_NAMES: usize = 5;

impl fmt::Display for Preview<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown = self.0.iter().take(PREVIEW_NAMES);
        for (i, name) in shown.enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            f.write_str(name)?;
        }
        if self.0.len() > PREVIEW_NAMES {
            write!(f, ", …")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bad_row(row: usize) -> DataError {
        DataError::BadRow {
            path: "notes.csv".into(),
            row,
            reason: "empty note".into(),
        }
    }

    #[test]
    fn problems_are_flattened_deduplicated_and_listed_up_to_the_cap() {
        assert!(DataError::collect(Vec::new()).is_ok());
        let one = DataError::collect(vec![bad_row(2), bad_row(2)]).unwrap_err();
        assert_eq!(one.to_string(), "empty note (notes.csv:2)");

        let nested = DataError::Problems((2..5).map(bad_row).collect());
        let all = DataError::collect(vec![bad_row(2), nested, bad_row(9)]).unwrap_err();
        let rows: Vec<String> = all.problems().iter().map(|p| p.to_string()).collect();
        assert_eq!(
            rows,
            ["2", "3", "4", "9"].map(|r| format!("empty note (notes.csv:{r})"))
        );
        assert_eq!(all.path(), Path::new("notes.csv"));

        let many = DataError::collect((2..2 + 25).map(bad_row).collect()).unwrap_err();
        let text = many.to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "25 problems with the data:");
        assert_eq!(lines.len(), 1 + LISTED_PROBLEMS + 1, "{text}");
        assert_eq!(lines[1], "  empty note (notes.csv:2)");
        assert_eq!(lines[LISTED_PROBLEMS], "  empty note (notes.csv:21)");
        assert_eq!(lines[LISTED_PROBLEMS + 1], "  … and 5 more");
    }
}
