use super::*;

use crate::test_support::shared;

/// A throw-away dataset tree; pairing never opens the image files, so they stay empty.
struct Tree(PathBuf);

impl Tree {
    fn new(name: &str) -> Tree {
        let dir =
            std::env::temp_dir().join(format!("reclmis-layout-{name}-{}", std::process::id()));
        std::fs::remove_dir_all(&dir).ok();
        std::fs::create_dir_all(&dir).expect("temp dir is writable");
        Tree(dir)
    }

    fn file(&self, rel: &str, contents: &str) -> &Tree {
        let path = self.0.join(rel);
        std::fs::create_dir_all(path.parent().expect("has a parent")).expect("mkdir");
        std::fs::write(path, contents).expect("write");
        self
    }

    fn files(&self, dir: &str, names: &[&str]) -> &Tree {
        for name in names {
            self.file(&format!("{dir}/{name}"), "");
        }
        self
    }

    fn scan(&self, split: Split) -> Result<SplitItems, DataError> {
        scan_split(&self.0, split, &LayoutOptions::default())
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.0).ok();
    }
}

fn csv(rows: &[(&str, &str)]) -> String {
    let mut text = String::from("Image,Description\n");
    for (key, note) in rows {
        text += &format!("{key},{note}\n");
    }
    text
}

fn names(items: &SplitItems) -> Vec<(String, String, &str, &str)> {
    let file = |p: &Path| p.file_name().map(|n| n.to_string_lossy().into_owned());
    items
        .items
        .iter()
        .map(|i| {
            (
                file(&i.image).unwrap_or_default(),
                file(&i.mask).unwrap_or_default(),
                i.key.as_str(),
                i.note.as_str(),
            )
        })
        .collect()
}

fn qata_tree(name: &str) -> Tree {
    let tree = Tree::new(name);
    tree.files("Train_Folder/img", &["covid_2.png", "covid_1.png"])
        .files(
            "Train_Folder/labelcol",
            &["mask_covid_2.png", "mask_covid_1.png", ".DS_Store"],
        )
        .files("Val_Folder/img", &["covid_3.png"])
        .files("Val_Folder/labelcol", &["mask_covid_3.png"])
        .files("Test_Folder/img", &["t_1.png"])
        .files("Test_Folder/labelcol", &["mask_t_1.png"])
        .file(
            "Train_Folder/Train_Val_text.csv",
            &csv(&[
                ("mask_covid_1.png", "one"),
                ("mask_covid_2.png", "two"),
                ("mask_covid_3.png", "three"),
            ]),
        )
        .file(
            "Test_Folder/Test_text.jsonl",
            "{\"Image\":\"mask_t_1.png\",\"Description\":\"test\"}\n",
        );
    tree
}

#[test]
fn qata_layout_shares_train_val_notes() {
    let tree = qata_tree("qata");
    let train = tree.scan(Split::Train).expect("train scans");
    assert_eq!(train.convention, Convention::QaTa);
    assert!(
        train
            .notes_file
            .ends_with("Train_Folder/Train_Val_text.csv")
    );
    assert_eq!(
        names(&train),
        [
            (
                "covid_1.png".into(),
                "mask_covid_1.png".into(),
                "mask_covid_1.png",
                "one"
            ),
            (
                "covid_2.png".into(),
                "mask_covid_2.png".into(),
                "mask_covid_2.png",
                "two"
            ),
        ]
    );
    assert!(
        train.items[0]
            .image
            .ends_with("Train_Folder/img/covid_1.png")
    );
    assert!(
        train.items[0]
            .mask
            .ends_with("Train_Folder/labelcol/mask_covid_1.png")
    );
    let val = tree.scan(Split::Val).expect("val scans");
    assert_eq!(
        names(&val),
        [(
            "covid_3.png".into(),
            "mask_covid_3.png".into(),
            "mask_covid_3.png",
            "three"
        )]
    );
    let test = tree.scan(Split::Test).expect("test scans");
    assert!(test.notes_file.ends_with("Test_Folder/Test_text.jsonl"));
    assert_eq!(test.items[0].note, "test");
}

#[test]
fn mosmed_layout_and_case_insensitive_names() {
    let tree = Tree::new("mosmed");
    tree.files("train_folder/IMG", &["b.jpg", "a.png", "C.png"])
        .files("train_folder/LabelCol", &["b.png", "a.png", "c.PNG"])
        .file(
            "train_folder/train_TEXT.csv",
            &csv(&[
                ("a.png", "note a"),
                ("B.png", "note b"),
                ("c.png", "note c"),
            ]),
        );
    let train = tree.scan(Split::Train).expect("train scans");
    assert_eq!(train.convention, Convention::MosMed);
    assert_eq!(
        names(&train),
        [
            ("a.png".into(), "a.png".into(), "a.png", "note a"),
            // Image `b.jpg` → mask `b.png` (last three characters → `png`).
            ("b.jpg".into(), "b.png".into(), "b.png", "note b"),
            // `C.png` pairs with `c.PNG` case-insensitively; the key is the mask name.
            ("C.png".into(), "c.PNG".into(), "c.PNG", "note c"),
        ]
    );
    assert_eq!(mosmed_mask_name("x.jpeg"), "x.jpng");
    assert_eq!(mosmed_mask_name("ab"), "png");
}

#[test]
fn unmatched_files_and_notes_are_listed() {
    let tree = qata_tree("unmatched");
    tree.files("Train_Folder/img", &["stray.png"]);
    let err = tree.scan(Split::Train).expect_err("image without mask");
    let msg = err.to_string();
    assert!(
        msg.starts_with("1 images without a mask: stray.png ("),
        "{msg}"
    );
    assert!(msg.contains("Train_Folder/img"), "{msg}");

    let tree = qata_tree("unmatched-masks");
    let masks: Vec<String> = (0..7).map(|i| format!("mask_gone_{i}.png")).collect();
    let masks: Vec<&str> = masks.iter().map(String::as_str).collect();
    tree.files("Val_Folder/labelcol", &masks);
    match tree.scan(Split::Val).expect_err("masks without image") {
        DataError::Unmatched {
            what, count, names, ..
        } => {
            assert_eq!((what, count, names.len()), ("masks without an image", 7, 7));
            assert_eq!(names[0], "mask_gone_0.png");
        }
        other => panic!("{other:?}"),
    }
    let err = tree.scan(Split::Val).expect_err("masks without image");
    assert!(err.to_string().contains("mask_gone_4.png, …"), "{err}");

    // Image without a note, then note without an image (the shared file counts val too).
    let tree = qata_tree("notes");
    tree.files("Train_Folder/img", &["covid_9.png"])
        .files("Train_Folder/labelcol", &["mask_covid_9.png"]);
    match tree.scan(Split::Train).expect_err("no note") {
        DataError::Unmatched { what, names, .. } => {
            assert_eq!(
                (what, names),
                (
                    "images without a note",
                    vec!["mask_covid_9.png".to_string()]
                )
            );
        }
        other => panic!("{other:?}"),
    }
    let lenient = LayoutOptions {
        allow_missing_notes: true,
        ..LayoutOptions::default()
    };
    let train = scan_split(&tree.0, Split::Train, &lenient).expect("allowed");
    assert_eq!(train.missing_notes, ["mask_covid_9.png"]);
    assert_eq!(train.items.last().map(|i| i.note.as_str()), Some(""));

    let tree = qata_tree("orphans");
    tree.file("Test_Folder/Test_text.jsonl", "{\"Image\":\"mask_t_1.png\",\"Description\":\"a\"}\n{\"Image\":\"mask_t_2.png\",\"Description\":\"b\"}\n");
    let err = tree.scan(Split::Test).expect_err("note without image");
    assert!(
        err.to_string()
            .starts_with("1 notes without an image: mask_t_2.png ("),
        "{err}"
    );
    assert!(
        err.hint()
            .is_some_and(|h| h.contains("--allow-missing-notes"))
    );
}

#[test]
fn other_notes_replace_the_layouts_strictly() {
    let tree = qata_tree("replace");
    // The layout's own notes are not needed; keys match ignoring case.
    std::fs::remove_file(tree.0.join("Test_Folder/Test_text.jsonl")).expect("rm");
    let other = tree.0.join("other.csv");
    std::fs::write(&other, csv(&[("MASK_T_1.PNG", "reworded")])).expect("write");
    let test = scan_split_with_notes(&tree.0, Split::Test, &other).expect("scans");
    assert_eq!(test.notes_file, other);
    assert_eq!(
        names(&test),
        [(
            "t_1.png".into(),
            "mask_t_1.png".into(),
            "mask_t_1.png",
            "reworded"
        )]
    );

    // A row for an image of another split: file, row and key.
    let train_val = tree.0.join("Train_Folder/Train_Val_text.csv");
    let err = scan_split_with_notes(&tree.0, Split::Train, &train_val).expect_err("val row");
    assert_eq!(
        err.to_string(),
        format!(
            "`mask_covid_3.png` is not an image of the train split ({}:4)",
            train_val.display()
        )
    );
    std::fs::write(
        &other,
        csv(&[
            ("mask_t_1.png", "a"),
            ("mask_t_8.png", "b"),
            ("t_9.png", "c"),
        ]),
    )
    .expect("write");
    let err = scan_split_with_notes(&tree.0, Split::Test, &other).expect_err("strays");
    assert!(
        err.to_string()
            .starts_with("`mask_t_8.png` is not an image of the test split (1 more rows"),
        "{err}"
    );
    assert!(err.to_string().ends_with("other.csv:3)"), "{err}");

    // An image without a row: file and key; the image name alone is not its key.
    tree.files("Test_Folder/img", &["t_2.png"])
        .files("Test_Folder/labelcol", &["mask_t_2.png"]);
    std::fs::write(&other, csv(&[("mask_t_1.png", "a")])).expect("write");
    let err = scan_split_with_notes(&tree.0, Split::Test, &other).expect_err("no row");
    assert_eq!(
        err.to_string(),
        format!("no row for image `mask_t_2.png` ({})", other.display())
    );
    assert!(err.hint().is_some_and(|h| h.contains("mask_<image>.png")));
    std::fs::write(&other, "Image,Description\n").expect("write");
    let err = scan_split_with_notes(&tree.0, Split::Test, &other).expect_err("no rows");
    assert!(
        err.to_string()
            .starts_with("no row for image `mask_t_1.png` (1 more images without a row)"),
        "{err}"
    );

    // An empty note cell is the reader's row error.
    std::fs::write(&other, "Image,Description\nmask_t_1.png,a\nmask_t_2.png,\n").expect("write");
    let err = scan_split_with_notes(&tree.0, Split::Test, &other).expect_err("empty cell");
    assert!(matches!(err, DataError::BadRow { row: 3, .. }), "{err:?}");
}

#[test]
fn missing_folders_name_the_path_and_layout() {
    let tree = qata_tree("missing");
    let err = scan_split(
        &tree.0.join("nope"),
        Split::Train,
        &LayoutOptions::default(),
    )
    .expect_err("no data folder");
    assert!(
        err.to_string().starts_with("data folder not found ("),
        "{err}"
    );
    assert!(err.hint().is_some_and(|h| h.contains("{img,labelcol}")));

    std::fs::remove_dir_all(tree.0.join("Val_Folder/labelcol")).expect("rm");
    let err = tree.scan(Split::Val).expect_err("no labelcol");
    assert!(
        err.to_string().contains("val `labelcol` folder not found"),
        "{err}"
    );
    assert!(err.path().ends_with("Val_Folder/labelcol"));

    std::fs::remove_dir_all(tree.0.join("Test_Folder")).expect("rm");
    let err = tree.scan(Split::Test).expect_err("no split");
    assert!(err.path().ends_with("Test_Folder"), "{err}");

    std::fs::remove_file(tree.0.join("Train_Folder/Train_Val_text.csv")).expect("rm");
    let err = tree.scan(Split::Train).expect_err("no notes");
    assert!(err.to_string().contains("train notes file"), "{err}");
}

#[test]
fn real_qata_subset() {
    let root = shared().join("data/qata-cov19");
    let mut counts = Vec::new();
    for split in Split::ALL {
        let scanned = scan_split(&root, split, &LayoutOptions::default()).expect("scans");
        assert_eq!(scanned.convention, Convention::QaTa);
        assert!(
            scanned.items.windows(2).all(|w| w[0].key < w[1].key),
            "sorted"
        );
        assert!(scanned.items.iter().all(|i| !i.note.is_empty()));
        counts.push(scanned.items.len());
        if split == Split::Test {
            let first = &scanned.items[0];
            assert_eq!(
                first.key,
                "mask_sub-S08047_ses-E16837_run-1_bp-chest_cr.png"
            );
            assert!(
                first
                    .image
                    .ends_with("Test_Folder/img/sub-S08047_ses-E16837_run-1_bp-chest_cr.png")
            );
            assert!(
                first
                    .note
                    .starts_with("Bilateral pulmonary infection, two infected areas")
            );
            let batch = super::super::image::load_batch(&scanned.items[..3], 224).expect("loads");
            assert_eq!(
                (batch.images.len(), batch.masks.len()),
                (3 * 3 * 224 * 224, 3 * 224 * 224)
            );
            assert!(
                batch
                    .source_sizes
                    .iter()
                    .all(|s| *s == [(224, 224), (224, 224)])
            );
            // Grey X-rays: B = G = R; masks 0/1 with 5–30 % foreground.
            let plane = 224 * 224;
            for b in 0..3 {
                let img = &batch.images[b * 3 * plane..(b + 1) * 3 * plane];
                assert_eq!(img[..plane], img[plane..2 * plane]);
                assert_eq!(img[..plane], img[2 * plane..]);
                let mask = &batch.masks[b * plane..(b + 1) * plane];
                let fg = mask.iter().filter(|&&v| v == 1).count() as f64 / plane as f64;
                assert!(
                    mask.iter().all(|&v| v <= 1) && (0.01..0.5).contains(&fg),
                    "{fg}"
                );
            }
        }
    }
    assert_eq!(counts, [1000, 250, 600]);

    // Another notes file for the same images: the cleaned captions.
    let cleaned = LayoutOptions {
        notes: Some(root.join("Test_Folder/Test_text_cleaned.csv")),
        ..LayoutOptions::default()
    };
    let test = scan_split(&root, Split::Test, &cleaned).expect("scans");
    assert_eq!(test.items.len(), 600);
    assert!(
        test.items[0]
            .note
            .starts_with("bilateral pulmonary infection, six infected")
    );
}

#[test]
fn dicom_and_nifti_images_pair_by_stem() {
    let tree = Tree::new("medical");
    // MosMed: images enumerated, `x.nii.gz` → `x.png` (not `x.nii.png`); a NIfTI mask pairs too.
    tree.files("Test_Folder/img", &["a.dcm", "b.nii.gz", "c.NII", "d.png"])
        .files(
            "Test_Folder/labelcol",
            &["a.png", "b.png", "c.png", "d.nii.gz"],
        )
        .file(
            "Test_Folder/Test_text.csv",
            &csv(&[
                ("a.png", "1"),
                ("b.png", "2"),
                ("c.png", "3"),
                ("d.nii.gz", "4"),
            ]),
        );
    let test = tree.scan(Split::Test).expect("test scans");
    assert_eq!(test.convention, Convention::MosMed);
    let pairs: Vec<_> = names(&test).into_iter().map(|n| (n.0, n.1)).collect();
    let want = [
        ("a.dcm", "a.png"),
        ("b.nii.gz", "b.png"),
        ("c.NII", "c.png"),
        ("d.png", "d.nii.gz"),
    ];
    assert_eq!(pairs, want.map(|(i, m)| (i.to_string(), m.to_string())));

    // QaTa: masks enumerated, `mask_x.png` → `x.png`, found as `x.dcm` / `x.nii.gz`.
    tree.files("Val_Folder/img", &["x.dcm", "y.nii.gz"])
        .files("Val_Folder/labelcol", &["mask_x.png", "mask_y.png"])
        .file(
            "Val_Folder/Val_text.csv",
            &csv(&[("mask_x.png", "x"), ("mask_y.png", "y")]),
        );
    let val = tree.scan(Split::Val).expect("val scans");
    assert_eq!(val.convention, Convention::QaTa);
    let pairs: Vec<_> = names(&val).into_iter().map(|n| (n.0, n.1)).collect();
    let want = [("x.dcm", "mask_x.png"), ("y.nii.gz", "mask_y.png")];
    assert_eq!(pairs, want.map(|(i, m)| (i.to_string(), m.to_string())));
}
