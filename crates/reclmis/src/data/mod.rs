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
    scan_split_with_notes,
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
}

impl DataError {
    /// A second line for people: what to do about it. `None` where the message says it all.
    pub fn hint(&self) -> Option<String> {
        match self {
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
