//! The LViT folder layout (docs §4.1, §4.2): which image goes with which mask and note.
//!
//! ```text
//! DATA/Train_Folder/{img,labelcol}/   Train_Val_text.xlsx (QaTa) or Train_text.xlsx
//! DATA/Val_Folder/{img,labelcol}/     (QaTa: notes in Train_Folder) or Val_text.xlsx
//! DATA/Test_Folder/{img,labelcol}/    Test_text.xlsx
//! ```
//!
//! Two pairing conventions exist and are detected per split: QaTa enumerates `labelcol` and
//! drops every `mask_` from the mask name to get the image; MosMed enumerates `img` and replaces
//! the image name's last three characters with `png` to get the mask. The note key is the mask
//! name in both. Folder and file names match case-insensitively (an exact match wins).
//!
//! DICOM and NIfTI files pair by stem (`x.nii.gz` has the stem `x`): a MosMed image `x.dcm` takes
//! the mask `x.png`, and a partner named `x.png` that does not exist is found as `x.dcm`,
//! `x.nii` or `x.nii.gz`.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

use super::DataError;
use super::medical::medical_stem;
use super::notes::Notes;

/// Shown with every missing-folder error.
pub const EXPECTED_LAYOUT: &str = "DATA/{Train,Val,Test}_Folder/{img,labelcol}/ with notes in \
     DATA/<Split>_Folder/<Split>_text.{xlsx,csv,jsonl} or, for train and val together, \
     DATA/Train_Folder/Train_Val_text.{xlsx,csv,jsonl}";

const NOTE_EXTENSIONS: [&str; 3] = ["xlsx", "csv", "jsonl"];

/// QaTa's notes file for train and val together, in `Train_Folder`.
const SHARED_NOTES: &str = "Train_Val_text";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Split {
    Train,
    Val,
    Test,
}

impl Split {
    pub const ALL: [Split; 3] = [Split::Train, Split::Val, Split::Test];

    /// `Train`, `Val` or `Test`, as in the folder and notes-file names.
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "Train",
            Split::Val => "Val",
            Split::Test => "Test",
        }
    }

    /// `Train_Folder`, `Val_Folder` or `Test_Folder`.
    pub fn folder(self) -> String {
        format!("{}_Folder", self.name())
    }
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name().to_lowercase())
    }
}

/// How images, masks and note keys are paired (docs §4.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Convention {
    /// Enumerate `labelcol`; image = mask name with every `mask_` removed; key = mask name.
    QaTa,
    /// Enumerate `img`; mask = image name with its last 3 characters → `png`; key = mask name.
    MosMed,
}

#[derive(Clone, Debug, Default)]
pub struct LayoutOptions {
    /// Give items without a note the empty note instead of failing.
    pub allow_missing_notes: bool,
    /// Read the notes from this file instead of looking for them in the layout.
    pub notes: Option<PathBuf>,
}

/// One sample: image file, mask file, note key and note (verbatim from the notes file).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Item {
    pub image: PathBuf,
    pub mask: PathBuf,
    pub key: String,
    pub note: String,
}

/// The items of one split and where they came from.
#[derive(Clone, Debug)]
pub struct SplitItems {
    pub split: Split,
    pub convention: Convention,
    pub notes_file: PathBuf,
    /// Sorted by key, then image path.
    pub items: Vec<Item>,
    /// Keys that got the empty note (only with `allow_missing_notes`).
    pub missing_notes: Vec<String>,
}

/// Lists, pairs and annotates one split of the dataset under `root`; every problem found (see
/// [`survey_split`]) makes it an error, several of them one [`DataError::Problems`].
pub fn scan_split(
    root: &Path,
    split: Split,
    options: &LayoutOptions,
) -> Result<SplitItems, DataError> {
    let (items, problems) = survey_split(root, split, options)?;
    DataError::collect(problems)?;
    Ok(items)
}

/// Scans one split as [`scan_split`] does, but past its problems: the items it could pair (an
/// item without a note has the empty note) and every problem, in the order found — files
/// without a partner (both ways), a notes file that cannot be read, its bad rows, images
/// without a note and notes without an image — so that a caller can check the images too and
/// report everything at once. The error is for a split that cannot be listed at all (a missing
/// folder).
pub fn survey_split(
    root: &Path,
    split: Split,
    options: &LayoutOptions,
) -> Result<(SplitItems, Vec<DataError>), DataError> {
    let (convention, pairs, mut problems) = split_pairs(root, split)?;

    let notes_path = match &options.notes {
        Some(path) => Ok(path.clone()),
        None => find_notes_file(root, split),
    };
    let notes = notes_path.and_then(|path| Ok((Notes::read_checked(&path)?, path)));
    let (notes, notes_path) = match notes {
        Ok(((notes, rows), path)) => {
            problems.extend(rows);
            (Some(notes), path)
        }
        Err(e) => {
            let path = e.path().to_path_buf();
            problems.push(e);
            (None, path)
        }
    };
    let shared = split != Split::Test
        && notes_path
            .file_stem()
            .is_some_and(|s| s.to_string_lossy().eq_ignore_ascii_case(SHARED_NOTES));

    let mut items = Vec::with_capacity(pairs.len());
    let mut missing_notes = Vec::new();
    for (image, mask, key) in pairs {
        let note = match notes.as_ref().and_then(|n| n.get(&key)) {
            Some(note) => note.text.clone(),
            None => {
                if notes.is_some() {
                    missing_notes.push(key.clone());
                }
                String::new()
            }
        };
        items.push(Item {
            image,
            mask,
            key,
            note,
        });
    }
    if !missing_notes.is_empty() && !options.allow_missing_notes {
        problems.push(DataError::Unmatched {
            what: "images without a note",
            dir: notes_path.clone(),
            count: missing_notes.len(),
            names: missing_notes.clone(),
        });
    }

    // A shared Train_Val file also annotates the other split; only notes that match no item
    // of either split are orphans.
    let mut keys: Vec<String> = items.iter().map(|i| i.key.clone()).collect();
    if shared {
        let other = if split == Split::Train {
            Split::Val
        } else {
            Split::Train
        };
        if let Ok(other) = SplitFolder::open(root, other) {
            let (pairs, unpaired) = other.pairs(other.convention());
            keys.extend(pairs.into_iter().map(|p| p.2));
            // That split's own scan reports its pairing problems; here its names suffice.
            if !unpaired.is_empty() {
                keys.extend(other.masks);
            }
        }
    }
    let folded: BTreeSet<String> = keys.iter().map(|k| k.to_lowercase()).collect();
    let orphans: Vec<String> = notes
        .iter()
        .flat_map(Notes::iter)
        .filter(|n| !folded.contains(&n.key.to_lowercase()))
        .map(|n| format!("{} (row {})", n.key, n.row))
        .collect();
    if !orphans.is_empty() && !options.allow_missing_notes {
        problems.push(DataError::Unmatched {
            what: "notes without an image",
            dir: notes_path.clone(),
            count: orphans.len(),
            names: orphans,
        });
    }

    items.sort_by(|a, b| a.key.cmp(&b.key).then_with(|| a.image.cmp(&b.image)));
    let scanned = SplitItems {
        split,
        convention,
        notes_file: notes_path,
        items,
        missing_notes,
    };
    Ok((scanned, problems))
}

/// Lists and pairs the files of one split: its convention, `(image, mask, key)` per pair, and
/// the files without a partner as problems.
fn split_pairs(
    root: &Path,
    split: Split,
) -> Result<(Convention, Vec<Pair>, Vec<DataError>), DataError> {
    if !root.is_dir() {
        return Err(DataError::MissingPath {
            what: "data folder".into(),
            path: root.to_path_buf(),
        });
    }
    let folder = SplitFolder::open(root, split)?;
    let convention = folder.convention();
    let (pairs, problems) = folder.pairs(convention);
    Ok((convention, pairs, problems))
}

/// Lists and pairs one split as [`scan_split`] does, but annotates it with `notes_file` instead
/// of the layout's own notes, strictly (see [`replace_notes`]); the layout's notes file is not
/// needed. For scoring the same images with other wordings of their notes.
pub fn scan_split_with_notes(
    root: &Path,
    split: Split,
    notes_file: &Path,
) -> Result<SplitItems, DataError> {
    let (convention, pairs, mut problems) = split_pairs(root, split)?;
    let (notes, notes_clean) = match Notes::read_checked(notes_file) {
        Ok((notes, rows)) => {
            let clean = rows.is_empty();
            problems.extend(rows);
            (notes, clean)
        }
        Err(e) => {
            problems.push(e);
            (Notes::default(), false)
        }
    };
    let mut items: Vec<Item> = pairs
        .into_iter()
        .map(|(image, mask, key)| Item {
            image,
            mask,
            key,
            note: String::new(),
        })
        .collect();
    match replace_notes(&mut items, &notes, split) {
        Ok(()) => {}
        // The bad rows are missing from `notes`; "no row for image" would repeat them.
        Err(DataError::MissingNote { .. }) if !notes_clean => {}
        Err(e) => problems.push(e),
    }
    DataError::collect(problems)?;
    items.sort_by(|a, b| a.key.cmp(&b.key).then_with(|| a.image.cmp(&b.image)));
    Ok(SplitItems {
        split,
        convention,
        notes_file: notes_file.to_path_buf(),
        items,
        missing_notes: Vec::new(),
    })
}

/// Gives every item of `split` the note `notes` holds for its key, matched as the layout
/// matches (the mask name, e.g. `mask_<image>.png` for QaTa; exact, else ignoring case).
/// Strict in both directions: a row whose key is no item of the split is an error naming its
/// row, and so is an item without a row (naming its key). Items are untouched on error.
pub fn replace_notes(items: &mut [Item], notes: &Notes, split: Split) -> Result<(), DataError> {
    let keys: BTreeSet<String> = items.iter().map(|i| i.key.to_lowercase()).collect();
    let mut strays = notes
        .iter()
        .filter(|n| !keys.contains(&n.key.to_lowercase()));
    if let Some(first) = strays.next() {
        let more = match strays.count() {
            0 => String::new(),
            n => format!(" ({n} more rows like it)"),
        };
        return Err(DataError::BadRow {
            path: notes.path().to_path_buf(),
            row: first.row,
            reason: format!("`{}` is not an image of the {split} split{more}", first.key),
        });
    }
    let missing: Vec<&str> = items
        .iter()
        .filter(|i| notes.get(&i.key).is_none())
        .map(|i| i.key.as_str())
        .collect();
    if let Some(first) = missing.first() {
        return Err(DataError::MissingNote {
            path: notes.path().to_path_buf(),
            key: first.to_string(),
            count: missing.len(),
        });
    }
    for item in items.iter_mut() {
        if let Some(note) = notes.get(&item.key) {
            item.note = note.text.clone();
        }
    }
    Ok(())
}

/// The notes file of `split`: first `<Split>_Folder/<Split>_text.*`, then (train and val)
/// `Train_Folder/Train_Val_text.*`.
fn find_notes_file(root: &Path, split: Split) -> Result<PathBuf, DataError> {
    let split_dir = child(root, &split.folder()).unwrap_or_else(|| root.join(split.folder()));
    let own = format!("{}_text", split.name());
    if let Some(path) = find_with_extensions(&split_dir, &own) {
        return Ok(path);
    }
    if split != Split::Test {
        let train_dir = child(root, &Split::Train.folder());
        if let Some(path) = train_dir.and_then(|d| find_with_extensions(&d, SHARED_NOTES)) {
            return Ok(path);
        }
    }
    Err(DataError::MissingPath {
        what: format!("{split} notes file (`{own}.xlsx`, `.csv` or `.jsonl`)"),
        path: split_dir.join(format!("{own}.xlsx")),
    })
}

fn find_with_extensions(dir: &Path, stem: &str) -> Option<PathBuf> {
    NOTE_EXTENSIONS
        .iter()
        .find_map(|ext| child(dir, &format!("{stem}.{ext}")))
        .filter(|p| p.is_file())
}

/// `dir/name`, matching `name` exactly or else case-insensitively.
fn child(dir: &Path, name: &str) -> Option<PathBuf> {
    let exact = dir.join(name);
    if exact.exists() {
        return Some(exact);
    }
    let entries = std::fs::read_dir(dir).ok()?;
    let mut matches: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().eq_ignore_ascii_case(name))
        .map(|e| e.path())
        .collect();
    matches.sort();
    matches.into_iter().next()
}

/// `(image path, mask path, note key)`.
type Pair = (PathBuf, PathBuf, String);

struct SplitFolder {
    img_dir: PathBuf,
    mask_dir: PathBuf,
    images: Vec<String>,
    masks: Vec<String>,
}

impl SplitFolder {
    fn open(root: &Path, split: Split) -> Result<SplitFolder, DataError> {
        let missing = |what: String, path: PathBuf| DataError::MissingPath { what, path };
        let dir = child(root, &split.folder())
            .filter(|d| d.is_dir())
            .ok_or_else(|| missing(format!("{split} split folder"), root.join(split.folder())))?;
        let sub = |name: &str| {
            child(&dir, name)
                .filter(|d| d.is_dir())
                .ok_or_else(|| missing(format!("{split} `{name}` folder"), dir.join(name)))
        };
        let (img_dir, mask_dir) = (sub("img")?, sub("labelcol")?);
        Ok(SplitFolder {
            images: list_files(&img_dir)?,
            masks: list_files(&mask_dir)?,
            img_dir,
            mask_dir,
        })
    }

    /// QaTa when the masks carry the `mask_` prefix, MosMed otherwise.
    fn convention(&self) -> Convention {
        if self
            .masks
            .iter()
            .any(|m| m.to_ascii_lowercase().contains("mask_"))
        {
            Convention::QaTa
        } else {
            Convention::MosMed
        }
    }

    /// `(image path, mask path, key)` for every file with a partner; the files without one, in
    /// either folder, as problems.
    fn pairs(&self, convention: Convention) -> (Vec<Pair>, Vec<DataError>) {
        let (listed, listed_dir, others, other_dir) = match convention {
            Convention::QaTa => (&self.masks, &self.mask_dir, &self.images, &self.img_dir),
            Convention::MosMed => (&self.images, &self.img_dir, &self.masks, &self.mask_dir),
        };
        let lookup = NameLookup::new(others);
        let mut pairs = Vec::with_capacity(listed.len());
        let mut unmatched = Vec::new();
        let mut used = vec![false; others.len()];
        for name in listed {
            let partner_name = match convention {
                // paper-parity: §4.2 / §7 quirk 28 — every `mask_` goes, wherever it is.
                Convention::QaTa => name.replace("mask_", ""),
                Convention::MosMed => match medical_stem(name) {
                    Some(stem) => format!("{stem}.png"),
                    None => mosmed_mask_name(name),
                },
            };
            match lookup.find(&partner_name) {
                Some(i) => {
                    used[i] = true;
                    let (image, mask) = match convention {
                        Convention::QaTa => (&others[i], name),
                        Convention::MosMed => (name, &others[i]),
                    };
                    pairs.push((
                        self.img_dir.join(image),
                        self.mask_dir.join(mask),
                        mask.clone(),
                    ));
                }
                None => unmatched.push(name.clone()),
            }
        }
        let (listed_what, other_what) = match convention {
            Convention::QaTa => ("masks without an image", "images without a mask"),
            Convention::MosMed => ("images without a mask", "masks without an image"),
        };
        let mut problems = Vec::new();
        if !unmatched.is_empty() {
            problems.push(DataError::Unmatched {
                what: listed_what,
                dir: listed_dir.clone(),
                count: unmatched.len(),
                names: unmatched,
            });
        }
        let leftovers: Vec<String> = others
            .iter()
            .zip(&used)
            .filter(|(_, used)| !**used)
            .map(|(name, _)| name.clone())
            .collect();
        if !leftovers.is_empty() {
            problems.push(DataError::Unmatched {
                what: other_what,
                dir: other_dir.clone(),
                count: leftovers.len(),
                names: leftovers,
            });
        }
        (pairs, problems)
    }
}

/// `name[:-3] + "png"`, as the MosMed loader builds a mask name from an image name.
fn mosmed_mask_name(image: &str) -> String {
    let chars: Vec<char> = image.chars().collect();
    let keep = chars.len().saturating_sub(3);
    chars[..keep].iter().collect::<String>() + "png"
}

/// Exact name first, then the same name in another case.
struct NameLookup {
    exact: HashMap<String, usize>,
    folded: HashMap<String, usize>,
    /// DICOM and NIfTI files by lower-case stem.
    medical: HashMap<String, usize>,
}

impl NameLookup {
    fn new(names: &[String]) -> NameLookup {
        let mut lookup = NameLookup {
            exact: HashMap::new(),
            folded: HashMap::new(),
            medical: HashMap::new(),
        };
        for (i, name) in names.iter().enumerate() {
            lookup.exact.insert(name.clone(), i);
            lookup.folded.entry(name.to_lowercase()).or_insert(i);
            if let Some(stem) = medical_stem(name) {
                lookup.medical.entry(stem.to_lowercase()).or_insert(i);
            }
        }
        lookup
    }

    /// `name` exactly, or in another case, or a DICOM/NIfTI file with the same stem.
    fn find(&self, name: &str) -> Option<usize> {
        let stem = medical_stem(name)
            .or_else(|| Path::new(name).file_stem().and_then(|s| s.to_str()))
            .unwrap_or(name);
        self.exact
            .get(name)
            .or_else(|| self.folded.get(&name.to_lowercase()))
            .or_else(|| self.medical.get(&stem.to_lowercase()))
            .copied()
    }
}

/// Sorted names of the regular files in `dir`, without hidden files and OS thumbnails.
fn list_files(dir: &Path) -> Result<Vec<String>, DataError> {
    let io = |source| DataError::Io {
        what: "folder",
        path: dir.to_path_buf(),
        source,
    };
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let junk = name.starts_with('.')
            || name.eq_ignore_ascii_case("Thumbs.db")
            || name.eq_ignore_ascii_case("desktop.ini");
        if !junk && entry.path().is_file() {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

#[cfg(test)]
mod tests;
