//! The `reclmis` binary end to end: `import` of the authors' checkpoint, `predict` reproducing the
//! probabilities their code computed, `inspect`'s numbers (docs §1.11), and bad input
//! ending in exit code 2 with the file named (docs/product.md "Bad input").
//!
//! Longer than the project's ~700-line guide on purpose: every end-to-end test of the binary
//! lives in this one test target, so CI links one more test binary, not one per topic.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use reclmis::data::image::{read_bgr, read_grey};

mod common;
use common::{TempDir, io_floats, io_ints, parity_dir, shared};

fn reclmis<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    Command::new(env!("CARGO_BIN_EXE_reclmis"))
        .args(args)
        .output()
        .expect("the reclmis binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn succeeds(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// Exit code 2, one `error:` line naming `name`, at most one `hint:` line after it.
fn bad_input(out: &Output, name: &str) -> String {
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.starts_with("warning:")).collect();
    assert!(lines[0].starts_with("error: "), "{err}");
    assert!(lines[0].contains(name), "the error names {name}: {err}");
    assert!(
        lines.len() == 1 || (lines.len() == 2 && lines[1].starts_with("hint: ")),
        "{err}"
    );
    err
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("test paths are UTF-8")
}

/// `float32` values of a `.npy` file, after checking its header says `(rows, cols)`.
fn read_npy(path: &Path, rows: usize, cols: usize) -> Vec<f32> {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(&bytes[..8], b"\x93NUMPY\x01\x00");
    let len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let header = std::str::from_utf8(&bytes[10..10 + len]).unwrap();
    assert!(header.contains("'descr': '<f4'"), "{header}");
    assert!(header.contains("'fortran_order': False"), "{header}");
    assert!(
        header.contains(&format!("'shape': ({rows}, {cols})")),
        "{header}"
    );
    let data = &bytes[10 + len..];
    assert_eq!(data.len(), 4 * rows * cols);
    data.chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Checks one prediction folder against image `index` of the parity fixture.
fn check_prediction(dir: &Path, index: usize, note: &str) {
    const S: usize = 224;
    let probs = io_floats("probs");
    let theirs = &probs[index * S * S..(index + 1) * S * S];
    let prob = read_npy(&dir.join("prob.npy"), S, S);
    let err = max_abs_diff(&prob, theirs);
    assert!(err < 1e-4, "image {index}: prob.npy differs by {err:.3e}");

    let mask = read_grey(&dir.join("mask.png")).unwrap();
    assert_eq!((mask.width, mask.height), (S, S));
    assert!(mask.data.iter().all(|&v| v == 0 || v == 255));
    let ours: Vec<bool> = prob.iter().map(|&p| p > 0.5).collect();
    assert_eq!(
        mask.data.iter().map(|&v| v == 255).collect::<Vec<_>>(),
        ours,
        "mask.png is prob > 0.5"
    );
    let disagree = theirs
        .iter()
        .zip(&ours)
        .filter(|(p, o)| (**p > 0.5) != **o && (**p - 0.5).abs() > 1e-4)
        .count();
    assert_eq!(disagree, 0, "mask agrees with the authors' probs > 0.5");

    for name in ["overlay.png", "poi.png"] {
        let img = read_bgr(&dir.join(name)).unwrap();
        assert_eq!((img.width, img.height), (S, S), "{name}");
    }

    // WOI: the words hold every token weight but SOT's and EOT's.
    let woi_json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("woi.json")).unwrap()).unwrap();
    assert_eq!(woi_json["threshold"], 0.5);
    let words = woi_json["words"].as_array().unwrap();
    let sum: f64 = words.iter().map(|w| w["weight"].as_f64().unwrap()).sum();
    let woi = io_floats("woi");
    let ids = io_ints("text_token");
    let row = &ids[index * 18..(index + 1) * 18];
    let eot = row.iter().position(|&i| i == 49407).unwrap();
    let expected: f32 = woi[index * 18 + 1..index * 18 + eot].iter().sum();
    assert!(
        (sum - f64::from(expected)).abs() < 1e-4,
        "image {index}: word weights sum to {sum}, the authors' tokens to {expected}"
    );
    let first_word = note.split_whitespace().next().unwrap().to_lowercase();
    assert_eq!(words[0]["word"], first_word.as_str());
    assert_eq!(woi_json["note"], note);
    // The first word's weight is the sum over its BPE tokens ("unilateral" is two).
    let n = reclmis::tokenizer::Tokenizer::clip()
        .encode(&first_word)
        .len();
    let first: f32 = woi[index * 18 + 1..index * 18 + 1 + n].iter().sum();
    let got = words[0]["weight"].as_f64().unwrap();
    assert!((got - f64::from(first)).abs() < 1e-5, "{got} vs {first}");
}

#[test]
fn import_then_predict_matches_the_authors_code() {
    let tmp = TempDir::new("parity");
    let dir = parity_dir();
    let authors = dir.join("best_model-RecLMIS.pth.tar");
    let ckpt = tmp.join("qata.safetensors");

    let out = succeeds(&reclmis([
        "import",
        path_str(&authors),
        "--out",
        path_str(&ckpt),
    ]));
    assert!(out.contains("preset qata"), "{out}");
    assert!(out.contains("132,868,352 parameters"), "{out}");

    let json = succeeds(&reclmis([
        "inspect",
        "--checkpoint",
        path_str(&ckpt),
        "--json",
    ]));
    let ins: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(ins["totals"]["inference_path"], 81_871_101);
    assert_eq!(ins["config"]["preset"], "qata");
    assert!(
        ins["state"]["origin"]
            .as_str()
            .unwrap()
            .starts_with("import:")
    );

    // One image and its note, as the manifest gives them.
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    let first = &manifest["inputs"][0];
    let image = dir
        .join("inputs/img")
        .join(first["image"].as_str().unwrap());
    let note = first["note"].as_str().unwrap();
    let pred = tmp.join("one");
    let stdout = succeeds(&reclmis([
        "--threads",
        "2",
        "predict",
        "--checkpoint",
        path_str(&ckpt),
        "--image",
        path_str(&image),
        "--text",
        note,
        "--out",
        path_str(&pred),
    ]));
    assert!(stdout.contains("mask:"), "{stdout}");
    check_prediction(&pred, 0, note);

    // The whole input folder with its notes file (keyed by mask name, as QaTa does).
    let folder = tmp.join("folder");
    succeeds(&reclmis([
        "predict",
        "--checkpoint",
        path_str(&ckpt),
        "--images",
        path_str(&dir.join("inputs/img")),
        "--notes",
        path_str(&dir.join("inputs/notes.xlsx")),
        "--out",
        path_str(&folder),
    ]));
    for (i, input) in manifest["inputs"].as_array().unwrap().iter().enumerate() {
        let name = input["image"].as_str().unwrap();
        let stem = name.trim_end_matches(".png");
        check_prediction(&folder.join(stem), i, input["note"].as_str().unwrap());
    }

    // Bad input that needs a valid checkpoint beside it.
    let missing = tmp.join("no-such-image.png");
    let out = reclmis([
        "predict",
        "--checkpoint",
        path_str(&ckpt),
        "--image",
        path_str(&missing),
        "--text",
        note,
        "--out",
        path_str(&tmp.join("x")),
    ]);
    bad_input(&out, "no-such-image.png");

    let empty = tmp.join("empty.png");
    std::fs::write(&empty, b"").unwrap();
    let out = reclmis([
        "predict",
        "--checkpoint",
        path_str(&ckpt),
        "--image",
        path_str(&empty),
        "--text",
        note,
        "--out",
        path_str(&tmp.join("x")),
    ]);
    bad_input(&out, "empty.png");

    // A checkpoint cut short: its header promises more bytes than there are.
    let bytes = std::fs::read(&ckpt).unwrap();
    let truncated = tmp.join("truncated.safetensors");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let out_dir = tmp.join("after-truncated");
    let out = reclmis([
        "predict",
        "--checkpoint",
        path_str(&truncated),
        "--image",
        path_str(&image),
        "--text",
        note,
        "--out",
        path_str(&out_dir),
    ]);
    bad_input(&out, "truncated.safetensors");
    assert!(
        !out_dir.join("mask.png").exists(),
        "nothing is written after a failed load"
    );
}

#[test]
fn bad_checkpoints_and_sources_exit_2_naming_the_file() {
    let tmp = TempDir::new("bad");
    let dir = parity_dir();
    let image = std::fs::read_dir(dir.join("inputs/img"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let predict_with = |ckpt: &Path| {
        reclmis([
            "predict",
            "--checkpoint",
            path_str(ckpt),
            "--image",
            path_str(&image),
            "--text",
            "Unilateral pulmonary infection, one infected area, upper left lung.",
            "--out",
            path_str(&tmp.join("out")),
        ])
    };

    // A safetensors file that is not ours (HF CLIP weights).
    let hf = shared().join("reference/clip-formats/hf/model.safetensors");
    let err = bad_input(&predict_with(&hf), "model.safetensors");
    assert!(err.contains("reclmis import"), "{err}");

    // Missing checkpoint.
    bad_input(
        &predict_with(&tmp.join("absent.safetensors")),
        "absent.safetensors",
    );

    // Not a checkpoint at all.
    let junk = tmp.join("junk.safetensors");
    std::fs::write(&junk, b"this is not a checkpoint").unwrap();
    bad_input(&predict_with(&junk), "junk.safetensors");

    // The authors' checkpoint cut in half: the zip directory at its end is gone.
    let authors = std::fs::read(dir.join("best_model-RecLMIS.pth.tar")).unwrap();
    let cut = tmp.join("cut.pth.tar");
    std::fs::write(&cut, &authors[..authors.len() / 2]).unwrap();
    let out = reclmis([
        "import",
        path_str(&cut),
        "--out",
        path_str(&tmp.join("cut.safetensors")),
    ]);
    bad_input(&out, "cut.pth.tar");
    assert!(!tmp.join("cut.safetensors").exists());

    // CLIP weights whose width (64) cannot drive the paper preset (512).
    let tiny = shared().join("reference/clip-formats/ViT-tiny.pt");
    let out = reclmis([
        "import",
        path_str(&tiny),
        "--out",
        path_str(&tmp.join("tiny.safetensors")),
        "--preset",
        "qata",
    ]);
    bad_input(&out, "ViT-tiny.pt");

    // Images without a note: named, with the notes file.
    let images = tmp.join("img");
    std::fs::create_dir_all(&images).unwrap();
    std::fs::copy(&image, images.join(image.file_name().unwrap())).unwrap();
    std::fs::copy(&image, images.join("Unlisted.png")).unwrap();
    let out = reclmis([
        "predict",
        "--checkpoint",
        path_str(&tmp.join("absent.safetensors")),
        "--images",
        path_str(&images),
        "--notes",
        path_str(&dir.join("inputs/notes.xlsx")),
        "--out",
        path_str(&tmp.join("out")),
    ]);
    let err = bad_input(&out, "Unlisted.png");
    assert!(
        err.contains("notes.xlsx") && err.contains("1 images without a note"),
        "{err}"
    );
    // With --allow-missing-notes the folder passes (with a warning) and the run goes on to the
    // checkpoint, which is absent here.
    let out = reclmis([
        "predict",
        "--checkpoint",
        path_str(&tmp.join("absent.safetensors")),
        "--images",
        path_str(&images),
        "--notes",
        path_str(&dir.join("inputs/notes.xlsx")),
        "--allow-missing-notes",
        "--out",
        path_str(&tmp.join("out")),
    ]);
    let err = bad_input(&out, "absent.safetensors");
    assert!(err.contains("warning: 1 images have no note"), "{err}");
}

#[test]
fn inspect_reports_the_parameter_table() {
    for (preset, trainable) in [("qata", 69_440_255), ("mosmed", 56_822_527)] {
        let json = succeeds(&reclmis(["inspect", "--preset", preset, "--json"]));
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        let block = |name: &str| {
            v["blocks"]
                .as_array()
                .unwrap()
                .iter()
                .find(|b| b["name"] == name)
                .unwrap_or_else(|| panic!("no block {name}"))
                .clone()
        };
        assert_eq!(block("encoder")["parameters"], 9_373_824);
        assert_eq!(block("decoder")["parameters"], 5_030_013);
        assert_eq!(block("interactor")["parameters"], 3_252_224);
        assert_eq!(block("clip_text")["parameters"], 63_428_096);
        assert_eq!(block("clip_text")["trainable"], false);
        assert_eq!(block("poi_head")["inference_path"], false);
        let rec = if preset == "qata" {
            25_235_456
        } else {
            18_926_592
        };
        assert_eq!(block("reconstructor_img")["parameters"], rec);
        assert_eq!(v["totals"]["inference_path"], 81_871_101);
        assert_eq!(v["totals"]["explain_heads"], 526_338);
        assert_eq!(v["totals"]["inference_path_without_text_tower"], 18_443_005);
        assert_eq!(v["totals"]["trainable"], trainable);
        assert_eq!(v["not_built"][0]["parameters"], 87_849_216);
        assert_eq!(
            v["text_encoder"].as_str().unwrap().split(' ').next(),
            Some("clip")
        );
    }
    let table = succeeds(&reclmis(["inspect", "--preset", "qata"]));
    assert!(table.contains("81,871,101"), "{table}");
    assert!(table.contains("not built: clip_visual"), "{table}");
}

#[test]
fn usage_errors_exit_2() {
    // --image without --text, neither input, an unknown preset, zero threads.
    for args in [
        &[
            "predict",
            "--checkpoint",
            "c",
            "--image",
            "i.png",
            "--out",
            "o",
        ][..],
        &["predict", "--checkpoint", "c", "--out", "o"],
        &["inspect", "--preset", "lidc"],
        &["inspect"],
        &["--threads", "0", "inspect", "--preset", "qata"],
    ] {
        let out = reclmis(args);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
    // A JSON caller still gets JSON on stdout when the command fails.
    let out = reclmis([
        "inspect",
        "--checkpoint",
        "/nonexistent/c.safetensors",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["error"].as_str().unwrap().contains("c.safetensors"));
    assert_eq!(v["exit_code"], 2);
}

/// A tiny LViT dataset (`reclmis synth`: 32 px, 7 / 1 / 2 images) and a run folder holding an
/// untrained small model; returns both and the test split's note keys (mask names), sorted.
fn tiny_data_and_run(tmp: &TempDir) -> (PathBuf, PathBuf, Vec<String>) {
    use reclmis::checkpoint::ours::{self, SaveOptions, TrainState};
    use reclmis::model::{ModelConfig, RecLMIS};

    let data = tmp.join("data");
    succeeds(&reclmis([
        "synth",
        "--out",
        path_str(&data),
        "--n",
        "10",
        "--size",
        "32",
    ]));
    let mut keys: Vec<String> = std::fs::read_dir(data.join("Test_Folder/labelcol"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    keys.sort();
    assert_eq!(keys.len(), 2);

    let mut cfg = ModelConfig::qata();
    cfg.image_size = 32;
    cfg.base_channels = 8;
    cfg.rec_layers = 1;
    let cfg = cfg.with_builtin_text(1);
    let model = RecLMIS::new(&cfg, 1, &burn::tensor::Device::flex());
    let run = tmp.join("run");
    std::fs::create_dir_all(&run).unwrap();
    ours::save(
        &run.join("best.safetensors"),
        &model,
        &TrainState::default(),
        SaveOptions::default(),
    )
    .unwrap();
    (data, run, keys)
}

fn notes_csv(rows: &[(&str, &str)]) -> String {
    let mut text = String::from("Image,Description\n");
    for (key, note) in rows {
        text += &format!("{key},\"{note}\"\n");
    }
    text
}

#[test]
fn evaluate_scores_with_another_notes_file() {
    let tmp = TempDir::new("notes");
    let (data, run, keys) = tiny_data_and_run(&tmp);
    let evaluate = |extra: &[&str], csv: &Path| {
        let mut args = vec![
            "--threads",
            "2",
            "evaluate",
            "--checkpoint",
            path_str(&run),
            "--data",
            path_str(&data),
            "--csv",
            path_str(csv),
        ];
        args.extend_from_slice(extra);
        reclmis(args)
    };

    // The split's own notes: named in the JSON, both protocols reported.
    let own: serde_json::Value =
        serde_json::from_str(&succeeds(&evaluate(&["--json"], &tmp.join("own.csv")))).unwrap();
    assert!(
        own["notes"].as_str().unwrap().ends_with("Test_text.xlsx"),
        "{own}"
    );

    // Another wording, keys in another case.
    let good = tmp.join("good.csv");
    let upper: Vec<String> = keys.iter().map(|k| k.to_uppercase()).collect();
    std::fs::write(
        &good,
        notes_csv(&[
            (upper[0].as_str(), "lesion in the upper left lung."),
            (upper[1].as_str(), "lesion in the lower right lung."),
        ]),
    )
    .unwrap();
    let csv = tmp.join("good-eval.csv");
    let json = succeeds(&evaluate(&["--notes", path_str(&good), "--json"], &csv));
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["n"], 2);
    assert_eq!(v["notes"], path_str(&good));
    for field in ["dice", "miou", "dice_pooled", "iou_pooled"] {
        let x = v[field].as_f64().unwrap_or(-1.0);
        assert!((0.0..=1.0).contains(&x), "{field}: {json}");
    }
    assert!(v["protocols"].as_str().unwrap().contains("LViT"), "{json}");
    let rows = std::fs::read_to_string(&csv).unwrap();
    assert!(
        rows.contains(&format!("{},lesion in the upper left lung.", keys[0])),
        "{rows}"
    );
    // --text empty still applies on top; the text output names both protocols.
    let out = succeeds(&evaluate(
        &["--notes", path_str(&good), "--text", "empty"],
        &tmp.join("empty-eval.csv"),
    ));
    assert!(
        out.contains("per-image mean (LViT)") && out.contains("pooled over pixels"),
        "{out}"
    );
    assert!(out.contains("empty notes ("), "{out}");

    // An image without a row: the file and the image's key; nothing written.
    let missing = tmp.join("missing.csv");
    std::fs::write(&missing, notes_csv(&[(keys[0].as_str(), "left lung.")])).unwrap();
    let csv = tmp.join("missing-eval.csv");
    let err = bad_input(
        &evaluate(&["--notes", path_str(&missing)], &csv),
        "missing.csv",
    );
    assert!(
        err.contains(&format!("no row for image `{}`", keys[1])),
        "{err}"
    );
    assert!(!csv.exists(), "nothing is written on failure");

    // An empty note cell: the file and its row.
    let empty = tmp.join("empty.csv");
    std::fs::write(
        &empty,
        format!("Image,Description\n{},left lung.\n{},\n", keys[0], keys[1]),
    )
    .unwrap();
    let csv = tmp.join("empty-cell-eval.csv");
    let err = bad_input(
        &evaluate(&["--notes", path_str(&empty), "--json"], &csv),
        "empty.csv:3",
    );
    assert!(err.contains("empty note"), "{err}");
    assert!(!csv.exists());

    // A row for an image the split does not have: file, row and key.
    let stray = tmp.join("stray.csv");
    std::fs::write(
        &stray,
        notes_csv(&[
            (keys[0].as_str(), "a."),
            (keys[1].as_str(), "b."),
            ("mask_synth_000000.png", "c."),
        ]),
    )
    .unwrap();
    let err = bad_input(
        &evaluate(&["--notes", path_str(&stray)], &tmp.join("stray-eval.csv")),
        "stray.csv:4",
    );
    assert!(
        err.contains("`mask_synth_000000.png` is not an image of the test split"),
        "{err}"
    );

    // --notes is strict: it does not go with --allow-missing-notes.
    let out = evaluate(
        &["--notes", path_str(&good), "--allow-missing-notes"],
        &tmp.join("x.csv"),
    );
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn export_writes_a_float16_inference_only_copy_that_evaluates() {
    let tmp = TempDir::new("export");
    let (data, run, _) = tiny_data_and_run(&tmp);
    let lean = tmp.join("out/lean-fp16.safetensors");
    let out = succeeds(&reclmis([
        "export",
        "--checkpoint",
        path_str(&run),
        "--out",
        path_str(&lean),
        "--fp16",
        "--inference-only",
    ]));
    assert!(
        out.contains("float16") && out.contains("training-only tensors left out"),
        "{out}"
    );
    let full = std::fs::metadata(run.join("best.safetensors"))
        .unwrap()
        .len();
    let small = std::fs::metadata(&lean).unwrap().len();
    assert!(small < full / 2, "{small} vs {full}");

    let dice = |ckpt: &Path| {
        let json = succeeds(&reclmis([
            "evaluate",
            "--checkpoint",
            path_str(ckpt),
            "--data",
            path_str(&data),
            "--csv",
            path_str(&tmp.join("eval.csv")),
            "--json",
        ]));
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        v["dice"].as_f64().unwrap()
    };
    let (a, b) = (dice(&run), dice(&lean));
    assert!((a - b).abs() < 2e-3, "fp32 {a}, fp16 inference-only {b}");

    // A source that is not a checkpoint: exit 2, nothing written.
    let junk = tmp.join("junk.safetensors");
    std::fs::write(&junk, b"not a checkpoint").unwrap();
    let target = tmp.join("never.safetensors");
    let out = reclmis([
        "export",
        "--checkpoint",
        path_str(&junk),
        "--out",
        path_str(&target),
    ]);
    bad_input(&out, "junk.safetensors");
    assert!(!target.exists());
}

#[test]
fn notes_reports_the_grammar_reading_against_a_reference() {
    let tmp = TempDir::new("notes");
    let notes = tmp.join("reworded.csv");
    std::fs::write(
        &notes,
        notes_csv(&[
            ("mask_a.png", "Bibasal opacities; apices clear."),
            ("mask_b.png", "RLL consolidation, left lung unremarkable"),
            ("mask_c.png", "Zzyzx pneumothorax"),
        ]),
    )
    .unwrap();
    let reference = tmp.join("cleaned.csv");
    std::fs::write(
        &reference,
        notes_csv(&[
            (
                "mask_a.png",
                "bilateral pulmonary infection, two infected areas, lower left lung and lower right lung.",
            ),
            (
                "mask_b.png",
                "unilateral pulmonary infection, one infected area, lower left lung.",
            ),
            (
                "mask_c.png",
                "unilateral pulmonary infection, one infected area, upper left lung.",
            ),
        ]),
    )
    .unwrap();
    let paraphrased = tmp.join("paraphrased.csv");
    let out = succeeds(&reclmis([
        "notes",
        path_str(&notes),
        "--reference",
        path_str(&reference),
        "--paraphrase-to",
        path_str(&paraphrased),
    ]));
    // a agrees; b names the right lung where the reference names the left; c is not read.
    assert!(
        out.contains("3 notes: 2 read fully, 0 in part, 1 not understood"),
        "{out}"
    );
    assert!(
        out.contains("1 of 3 name the same zones as the reference"),
        "{out}"
    );
    assert!(out.contains("zzyzx ×1"), "{out}");
    let rows = std::fs::read_to_string(&paraphrased).unwrap();
    assert_eq!(rows.lines().count(), 4, "{rows}");
    assert!(
        rows.contains("Zzyzx pneumothorax"),
        "an unread note is kept as written: {rows}"
    );
    // A missing notes file is bad input.
    bad_input(
        &reclmis(["notes", path_str(&tmp.join("nope.csv"))]),
        "nope.csv",
    );
}

#[test]
fn a_checkpoint_whose_weights_changed_on_disk_is_refused() {
    let tmp = TempDir::new("flip");
    let (data, run, _) = tiny_data_and_run(&tmp);
    let ckpt = run.join("best.safetensors");
    let evaluate = || {
        reclmis([
            "evaluate",
            "--checkpoint",
            path_str(&ckpt),
            "--data",
            path_str(&data),
            "--json",
            "--csv",
            path_str(&tmp.join("eval.csv")),
        ])
    };
    succeeds(&evaluate());
    let mut bytes = std::fs::read(&ckpt).unwrap();
    let middle = bytes.len() - bytes.len() / 3;
    bytes[middle] ^= 0x01;
    std::fs::write(&ckpt, &bytes).unwrap();
    std::fs::remove_file(tmp.join("eval.csv")).unwrap();
    let err = bad_input(&evaluate(), "best.safetensors");
    assert!(err.contains("SHA-256"), "{err}");
    assert!(!tmp.join("eval.csv").exists(), "nothing is written");
}

/// `reclmis synth` at 32 px into `tmp/data` (7 train, 1 val and 2 test images for `n` 10), with
/// the train and val notes moved from the xlsx file to a CSV file written from `rows`.
fn tiny_data_with_notes(tmp: &TempDir, n: usize, rows: &[Vec<u8>]) -> PathBuf {
    let data = tmp.join("data");
    succeeds(&reclmis([
        "synth",
        "--out",
        path_str(&data),
        "--n",
        &n.to_string(),
        "--size",
        "32",
    ]));
    std::fs::remove_file(data.join("Train_Folder/Train_Val_text.xlsx")).unwrap();
    let mut csv = b"Image,Description\n".to_vec();
    for row in rows {
        csv.extend_from_slice(row);
        csv.push(b'\n');
    }
    std::fs::write(data.join("Train_Folder/Train_Val_text.csv"), csv).unwrap();
    data
}

fn note_row(index: usize, note: &str) -> Vec<u8> {
    format!("mask_synth_{index:06}.png,{note}").into_bytes()
}

/// `train` on `data` into `out` with a tiny model for `epochs` epochs, and `extra` flags.
fn tiny_train(data: &Path, out: &Path, epochs: &str, extra: &[&str]) -> Output {
    let mut args = vec![
        "--threads",
        "2",
        "train",
        "--data",
        path_str(data),
        "--out",
        path_str(out),
        "--image-size",
        "32",
        "--base-channels",
        "8",
        "--batch-size",
        "4",
        "--epochs",
        epochs,
    ];
    args.extend_from_slice(extra);
    reclmis(args)
}

#[test]
fn train_spreads_each_step_over_the_devices_given() {
    let tmp = TempDir::new("devices");
    let (data, _, _) = tiny_data_and_run(&tmp);
    let out = tmp.join("two");
    let run = |extra: &[&str]| tiny_train(&data, &out, "1", extra);
    let o = run(&["--devices", "cpu,cpu"]);
    succeeds(&o);
    assert!(
        text(&o.stderr).contains("each step in 2 shards over 2 device(s): cpu, cpu"),
        "{}",
        text(&o.stderr)
    );
    let cfg = std::fs::read_to_string(out.join("config.toml")).unwrap();
    assert!(cfg.contains("micro_batches = 2"), "{cfg}");
    assert!(out.join("last.safetensors").exists());

    for (args, says) in [
        (&["--devices", "0,x"][..], "unknown device 'x'"),
        (
            &["--micro-batches", "0"][..],
            "--micro-batches must be at least 1",
        ),
    ] {
        let o = run(args);
        let err = text(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
    let o = reclmis([
        "--device",
        "gpu",
        "train",
        "--data",
        "d",
        "--devices",
        "cpu",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o.stderr).contains("either --device or --devices"));
    #[cfg(not(feature = "gpu"))]
    {
        let err = bad_input(&run(&["--devices", "cpu,gpu:0"]), "--device gpu:0");
        assert!(err.contains("`gpu` cargo feature"), "{err}");
    }
}

#[test]
fn data_faults_are_listed_together_before_training() {
    let tmp = TempDir::new("faults");
    // Train: images 0..7, val: 7. Row 4 is not UTF-8 (Latin-1 "é"), row 9 gives image 2 a
    // second, different note, row 10 names no image; image 1 loses its mask and its row, image
    // 4 is cut short and val's mask is not an image at all.
    let mut rows: Vec<Vec<u8>> = [0, 2, 3, 4, 5, 6, 7]
        .iter()
        .map(|&i| note_row(i, "Lesion in the left lung."))
        .collect();
    rows[2] = b"mask_synth_000003.png,L\xe9sion in the left lung.".to_vec();
    rows.push(note_row(2, "Lesion in the right lung."));
    rows.push(b"mask_ghost.png,Lesion in the left lung.".to_vec());
    let data = tiny_data_with_notes(&tmp, 10, &rows);
    let train = data.join("Train_Folder");
    std::fs::remove_file(train.join("labelcol/mask_synth_000001.png")).unwrap();
    let cut = train.join("img/synth_000004.png");
    let bytes = std::fs::read(&cut).unwrap();
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    std::fs::write(
        data.join("Val_Folder/labelcol/mask_synth_000007.png"),
        b"not a picture",
    )
    .unwrap();

    let run = tmp.join("run");
    let out = tiny_train(&data, &run, "1", &[]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    // After the "loading …" line, nothing but the error.
    let lines: Vec<&str> = err
        .lines()
        .skip_while(|l| l.starts_with("loading "))
        .collect();
    assert_eq!(lines[0], "error: 7 problems with the data:", "{err}");
    let csv = train.join("Train_Val_text.csv");
    let csv = path_str(&csv);
    let expected = [
        format!(
            "1 images without a mask: synth_000001.png ({})",
            path_str(&train.join("img"))
        ),
        format!(
            "the `Description` cell is not UTF-8 text (save the notes file as UTF-8) ({csv}:4)"
        ),
        format!(
            "duplicate key `mask_synth_000002.png` with a different note (first at row 3) \
             ({csv}:9)"
        ),
        format!("1 images without a note: mask_synth_000003.png ({csv})"),
        format!("1 notes without an image: mask_ghost.png (row 10) ({csv})"),
    ];
    for (i, line) in expected.iter().enumerate() {
        assert_eq!(lines[1 + i], format!("  {line}"), "{err}");
    }
    // The two unreadable files, each named, in the order their splits were read.
    assert!(
        lines[6].starts_with("  unreadable image: ") && lines[6].ends_with("synth_000004.png)"),
        "{err}"
    );
    assert!(
        lines[7].starts_with("  unreadable image: ")
            && lines[7].ends_with("Val_Folder/labelcol/mask_synth_000007.png)"),
        "{err}"
    );
    assert!(lines[8].starts_with("hint: "), "{err}");
    assert_eq!(lines.len(), 9, "{err}");
    assert!(!run.exists(), "nothing is written before the data is good");

    // Many problems: the first 20 are listed, the rest counted.
    let tmp = TempDir::new("many-faults");
    let rows: Vec<Vec<u8>> = (0..32).map(|i| note_row(i, "Left lung.")).collect();
    let data = tiny_data_with_notes(&tmp, 40, &rows);
    for i in 0..25 {
        let img = data.join(format!("Train_Folder/img/synth_{i:06}.png"));
        std::fs::write(&img, b"").unwrap();
    }
    let run = tmp.join("run");
    let out = tiny_train(&data, &run, "1", &[]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    let lines: Vec<&str> = err
        .lines()
        .skip_while(|l| l.starts_with("loading "))
        .collect();
    assert_eq!(lines[0], "error: 25 problems with the data:", "{err}");
    assert!(lines[1].ends_with("synth_000000.png)"), "{err}");
    assert!(lines[20].ends_with("synth_000019.png)"), "{err}");
    assert_eq!(lines[21], "  … and 5 more", "{err}");
    assert!(!run.exists());
}

#[test]
fn sixteen_bit_rgba_and_other_size_masks_load_as_imread_does() {
    use image::{ImageBuffer, Luma, Rgba};
    use reclmis::data::Split;

    let tmp = TempDir::new("pixels");
    let rows: Vec<Vec<u8>> = (0..8).map(|i| note_row(i, "Left lung.")).collect();
    let data = tiny_data_with_notes(&tmp, 10, &rows);
    let train = data.join("Train_Folder");
    // 16-bit grey: OpenCV keeps the high byte, replicated to B, G and R.
    let grey16 = |x: u32, y: u32| (x * 2048 + y * 37) as u16;
    ImageBuffer::from_fn(32, 32, |x, y| Luma([grey16(x, y)]))
        .save(train.join("img/synth_000000.png"))
        .unwrap();
    // RGBA: alpha dropped (not composited), channels in B, G, R order.
    let rgba = |x: u32, y: u32| [(x * 8) as u8, (y * 8) as u8, 200, (x * y) as u8];
    ImageBuffer::from_fn(32, 32, |x, y| Rgba(rgba(x, y)))
        .save(train.join("img/synth_000001.png"))
        .unwrap();
    // A 64 px mask for a 32 px image: resized to the model size like the image.
    ImageBuffer::from_fn(64, 64, |x, _| Luma([if x < 32 { 255u8 } else { 0 }]))
        .save(train.join("labelcol/mask_synth_000002.png"))
        .unwrap();

    let set = reclmis::app::load_split(&data, Split::Train, 32, false, None).unwrap();
    assert_eq!(set.len(), 7);
    assert_eq!(set.size_mismatches, 1);
    let sample = |key: &str| set.samples.iter().find(|s| s.key == key).unwrap();
    let plane = |img: &[u8], c: usize, x: u32, y: u32| img[c * 1024 + y as usize * 32 + x as usize];
    let s16 = sample("mask_synth_000000.png");
    let s4 = sample("mask_synth_000001.png");
    for (x, y) in [(0, 0), (5, 3), (31, 31), (17, 30)] {
        let v = (grey16(x, y) >> 8) as u8;
        assert_eq!([0, 1, 2].map(|c| plane(&s16.image, c, x, y)), [v; 3]);
        let [r, g, b, _] = rgba(x, y);
        assert_eq!([0, 1, 2].map(|c| plane(&s4.image, c, x, y)), [b, g, r]);
    }
    assert_eq!(s16.image[1024 + 32 + 5], 40); // (5, 1): (5·2048 + 37) >> 8
    let mask = &sample("mask_synth_000002.png").mask;
    for y in 0..32 {
        let row = &mask[y * 32..(y + 1) * 32];
        assert_eq!(row, [[1u8; 16], [0; 16]].concat().as_slice(), "row {y}");
    }

    // The same folder trains, with one warning for the mask of another size.
    let out = tiny_train(&data, &tmp.join("run"), "1", &[]);
    succeeds(&out);
    let err = text(&out.stderr);
    assert!(
        err.contains("warning: 1 Train image(s) have a mask of another size"),
        "{err}"
    );
    assert!(tmp.join("run/best.safetensors").exists());
}

/// The grey PNG at `png` as a DICOM whose window (center 127.5, width 255) gives its values
/// back exactly.
fn png_as_dicom(png: &Path) -> Vec<u8> {
    use reclmis::data::medical::write::DicomImage;
    let grey = read_grey(png).unwrap();
    let values = grey.data.iter().map(|&g| u16::from(g)).collect();
    let mut img = DicomImage::grey(grey.height as u16, grey.width as u16, values);
    img.window = Some((127.5, 255.0));
    img.to_bytes().unwrap()
}

/// The grey PNG at `png` as the middle slice of a 3-slice NIfTI volume (rows stored bottom up,
/// so the reader's flip gives them back top down); the other slices are 0. Its values come back
/// exactly where the image holds both 0 and 255 (the min–max window).
fn png_as_nifti(png: &Path, out: &Path) {
    use reclmis::data::medical::write::{NiftiData, NiftiVolume};
    let grey = read_grey(png).unwrap();
    let (w, h) = (grey.width, grey.height);
    let mut values = vec![0u8; 3 * w * h];
    for (row, line) in grey.data.chunks_exact(w).enumerate() {
        let y = h - 1 - row;
        values[w * h + y * w..w * h + (y + 1) * w].copy_from_slice(line);
    }
    let volume = NiftiVolume {
        dims: vec![w as u16, h as u16, 3],
        data: NiftiData::U8(values),
        scaling: (0.0, 0.0),
    };
    volume.write(out).unwrap();
}

#[test]
fn predict_and_evaluate_read_dicom_and_nifti() {
    let tmp = TempDir::new("medical");
    let (data, run, keys) = tiny_data_and_run(&tmp);
    let ckpt = run.join("best.safetensors");
    let img_dir = data.join("Test_Folder/img");
    let image = |key: &str| img_dir.join(key.replace("mask_", ""));
    let evaluate = |extra: &[&str]| {
        let csv = tmp.join("eval.csv");
        let mut args = vec!["--threads", "2", "evaluate", "--checkpoint"];
        args.extend([
            path_str(&run),
            "--data",
            path_str(&data),
            "--csv",
            path_str(&csv),
        ]);
        args.extend_from_slice(extra);
        reclmis(args)
    };
    let dice = |out: &Output| -> f64 {
        let v: serde_json::Value = serde_json::from_str(&succeeds(out)).unwrap();
        assert_eq!(v["n"], 2, "{v}");
        v["dice"].as_f64().unwrap()
    };
    // Each test image gets a black and a white pixel, so NIfTI's min–max window is the identity.
    for key in &keys {
        let mut grey = read_grey(&image(key)).unwrap();
        grey.data[0] = 0;
        grey.data[1] = 255;
        reclmis::report::write_png(&image(key), grey.width, grey.height, 1, &grey.data).unwrap();
    }
    let png_dice = dice(&evaluate(&["--json"]));

    // predict on a DICOM equal to the PNG: the same probabilities, mask.png at model size.
    let png = image(&keys[0]);
    let dcm = tmp.join("one.dcm");
    std::fs::write(&dcm, png_as_dicom(&png)).unwrap();
    let predict = |img: &Path, out: &Path, extra: &[&str]| {
        let mut args = vec!["predict", "--checkpoint", path_str(&ckpt), "--image"];
        args.extend([
            path_str(img),
            "--text",
            "left lung.",
            "--out",
            path_str(out),
        ]);
        args.extend_from_slice(extra);
        reclmis(args)
    };
    let (from_png, from_dcm) = (tmp.join("p-png"), tmp.join("p-dcm"));
    succeeds(&predict(&png, &from_png, &[]));
    succeeds(&predict(&dcm, &from_dcm, &[]));
    let mask = read_grey(&from_dcm.join("mask.png")).unwrap();
    assert_eq!((mask.width, mask.height), (32, 32));
    let png_prob = read_npy(&from_png.join("prob.npy"), 32, 32);
    assert!(read_npy(&from_dcm.join("prob.npy"), 32, 32) == png_prob);

    // predict on a NIfTI volume: the middle slice by default, another with --slice.
    let nii = tmp.join("one.nii.gz");
    png_as_nifti(&png, &nii);
    let (mid, first) = (tmp.join("p-nii"), tmp.join("p-nii-0"));
    succeeds(&predict(&nii, &mid, &[]));
    succeeds(&predict(&nii, &first, &["--slice", "0"]));
    assert!(read_npy(&mid.join("prob.npy"), 32, 32) == png_prob);
    assert!(read_grey(&first.join("mask.png")).is_ok());
    let err = bad_input(
        &predict(&nii, &tmp.join("p-bad"), &["--slice", "3"]),
        "one.nii.gz",
    );
    assert!(
        err.contains("slice 3 is out of range: the file has 3 (0..=2)"),
        "{err}"
    );

    // evaluate on the split with its images as DICOM: the PNG's Dice exactly.
    for key in &keys {
        let png = image(key);
        std::fs::write(png.with_extension("dcm"), png_as_dicom(&png)).unwrap();
    }
    let pngs: Vec<Vec<u8>> = keys
        .iter()
        .map(|k| std::fs::read(image(k)).unwrap())
        .collect();
    for key in &keys {
        std::fs::remove_file(image(key)).unwrap();
    }
    assert_eq!(dice(&evaluate(&["--json"])), png_dice);

    // ... and as NIfTI (.nii.gz): the same again; the text output prints the Dice.
    for (key, bytes) in keys.iter().zip(&pngs) {
        let png = image(key);
        std::fs::remove_file(png.with_extension("dcm")).unwrap();
        std::fs::write(&png, bytes).unwrap();
        png_as_nifti(&png, &png.with_extension("nii.gz"));
        std::fs::remove_file(&png).unwrap();
    }
    assert_eq!(dice(&evaluate(&["--json", "--slice", "1"])), png_dice);
    let out = succeeds(&evaluate(&[]));
    assert!(
        out.contains("Dice") && out.contains("per-image mean (LViT)"),
        "{out}"
    );
    // Every image is checked before the model runs, and each bad one is listed.
    let out = evaluate(&["--slice", "7"]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.starts_with("error: 2 problems with the data:"), "{err}");
    for key in &keys {
        let file = format!(
            "{}.nii.gz",
            key.trim_start_matches("mask_").trim_end_matches(".png")
        );
        let line = err
            .lines()
            .find(|l| l.contains(&file))
            .unwrap_or_else(|| panic!("{file}: {err}"));
        assert!(
            line.contains("slice 7 is out of range: the file has 3 (0..=2)"),
            "{line}"
        );
    }
}
