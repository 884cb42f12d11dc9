//! Every reader of bytes reclmis did not write, fed 1,000 truncated and bit-flipped variants of a
//! real file each: no panic, no hang, and every error names the file. Seeded, so a failure
//! replays (the variant's seed and mutation are in the message).
//!
//! Readers: the authors' `torch.save` archive, OpenAI's TorchScript CLIP, Hugging Face CLIP
//! safetensors, our own checkpoint, xlsx and csv notes, PNG images (colour and grey), DICOM and
//! NIfTI (`.nii`, `.nii.gz`) files made from a real image (from disk and from memory), and the
//! tokenizer on the mutated bytes read as text.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use burn::tensor::Device;
use reclmis::checkpoint::ours::{self, SaveOptions, TrainState};
use reclmis::checkpoint::torch;
use reclmis::data::Notes;
use reclmis::data::image::{ReadOptions, load_image, load_mask, read_bgr_bytes, read_grey};
use reclmis::data::medical::write::{DicomImage, NiftiData, NiftiVolume, gzip};
use reclmis::model::{ModelConfig, RecLMIS};
use reclmis::rng::SplitMix64;
use reclmis::tokenizer::Tokenizer;

const VARIANTS: u64 = 1_000;
/// One read of a small file takes milliseconds; this much means a hang.
const HANG: Duration = Duration::from_secs(20);

fn shared() -> PathBuf {
    std::env::var_os("RECLMIS_SHARED")
        .map(Into::into)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared"))
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("reclmis-mutation-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A variant of `seed`: truncated, bits flipped, a run of bytes set to 0xFF (huge sizes and
/// counts), or a run zeroed, chosen by `n`'s own stream.
fn mutate(seed: &[u8], n: u64) -> (Vec<u8>, String) {
    let mut r = SplitMix64::new(n);
    let mut v = seed.to_vec();
    let len = v.len();
    match r.below(4) {
        0 => {
            let at = r.below(len);
            v.truncate(at);
            (v, format!("truncated to {at} bytes"))
        }
        1 => {
            let flips = 1 + r.below(8);
            for _ in 0..flips {
                let at = r.below(len);
                v[at] ^= 1 << r.below(8);
            }
            (v, format!("{flips} bit flips"))
        }
        k => {
            let at = r.below(len);
            let run = (1 + r.below(8)).min(len - at);
            let byte = if k == 2 { 0xFF } else { 0x00 };
            v[at..at + run].fill(byte);
            (v, format!("{run} bytes at {at} set to {byte:#04x}"))
        }
    }
}

/// Feeds `VARIANTS` variants of `seed` (written as `dir/name`) to `read`, which returns the error
/// message of a refused file or `None` for an accepted one. Panics with the variant on a panic,
/// a hang, or an error that does not name the file.
fn fuzz(name: &str, seed: &[u8], read: impl Fn(&Path) -> Option<String> + Send + Sync + 'static) {
    let dir = scratch(name.trim_start_matches('.'));
    let path = dir.join(name);
    let read = Arc::new(read);
    let current = Arc::new(Mutex::new(String::new()));
    let done = Arc::new(AtomicBool::new(false));
    // A watchdog: a read still running after HANG stops the whole test with the variant.
    let watchdog = {
        let (current, done) = (current.clone(), done.clone());
        std::thread::spawn(move || {
            let mut last = (String::new(), Instant::now());
            while !done.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(200));
                let now = current.lock().unwrap().clone();
                if now != last.0 {
                    last = (now, Instant::now());
                } else if last.1.elapsed() > HANG {
                    eprintln!("hang reading {}", last.0);
                    std::process::abort();
                }
            }
        })
    };
    let (mut refused, mut accepted) = (0, 0);
    for n in 0..VARIANTS {
        let (bytes, how) = mutate(seed, n);
        let what = format!("{name} variant {n} ({how})");
        *current.lock().unwrap() = what.clone();
        std::fs::write(&path, &bytes).unwrap();
        let r = read.clone();
        let p = path.clone();
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || r(&p)));
        match outcome {
            Err(_) => panic!("{what}: the reader panicked"),
            Ok(Some(msg)) => {
                assert!(
                    msg.contains(name),
                    "{what}: the error does not name the file: {msg}"
                );
                refused += 1;
            }
            Ok(None) => accepted += 1,
        }
    }
    done.store(true, Ordering::Relaxed);
    watchdog.join().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    eprintln!("{name}: {refused} variants refused, {accepted} read");
    assert!(refused > 0, "{name}: no variant was refused");
}

fn err<T, E: std::fmt::Display>(r: Result<T, E>) -> Option<String> {
    r.err().map(|e| e.to_string())
}

#[test]
fn the_authors_checkpoint_reader() {
    let seed =
        std::fs::read(shared().join("reference/official-parity/qata/best_model-RecLMIS.pth.tar"))
            .unwrap();
    fuzz("best_model-RecLMIS.pth.tar", &seed, |p| {
        err(torch::read_checkpoint(p))
    });
}

#[test]
fn the_torchscript_reader() {
    let seed = std::fs::read(shared().join("reference/clip-formats/ViT-tiny.pt")).unwrap();
    fuzz("ViT-tiny.pt", &seed, |p| err(torch::read_torchscript(p)));
}

#[test]
fn the_hugging_face_clip_reader() {
    let seed = std::fs::read(shared().join("reference/clip-formats/hf/model.safetensors")).unwrap();
    fuzz("model.safetensors", &seed, |p| err(torch::read_hf_clip(p)));
}

#[test]
fn our_checkpoint_reader() {
    let mut cfg = ModelConfig::qata();
    cfg.image_size = 32;
    cfg.base_channels = 8;
    cfg.rec_layers = 1;
    let cfg = cfg.with_builtin_text(1);
    let dir = scratch("ours-seed");
    let path = dir.join("seed.safetensors");
    let model = RecLMIS::new(&cfg, 1, &Device::flex());
    let opts = SaveOptions {
        dtype: ours::StoreDtype::F16,
        ..SaveOptions::default()
    };
    ours::save(&path, &model, &TrainState::default(), opts).unwrap();
    let seed = std::fs::read(&path).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    fuzz("ckpt.safetensors", &seed, |p| {
        err(ours::load(p, &Device::flex()))
    });
}

#[test]
fn the_notes_readers() {
    let test = shared().join("data/qata-cov19/Test_Folder");
    let xlsx = std::fs::read(test.join("Test_text.xlsx")).unwrap();
    fuzz("Test_text.xlsx", &xlsx, |p| err(Notes::read(p)));
    let csv = std::fs::read(test.join("Test_text_cleaned.csv")).unwrap();
    fuzz("Test_text_cleaned.csv", &csv, |p| {
        let r = err(Notes::read(p));
        // Whatever the bytes, the tokenizer takes them as text without failing.
        let text = String::from_utf8_lossy(&std::fs::read(p).unwrap()).into_owned();
        let ids = Tokenizer::clip().tokenize(&text, 77).ids;
        assert_eq!(ids.len(), 77);
        r
    });
}

/// The first PNG (by name) of the QaTa test subset.
fn first_test_png() -> PathBuf {
    let img = shared().join("data/qata-cov19/Test_Folder/img");
    std::fs::read_dir(&img)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "png"))
        .min()
        .unwrap()
}

#[test]
fn the_image_readers() {
    let first = first_test_png();
    let seed = std::fs::read(&first).unwrap();
    fuzz("image.png", &seed, |p| {
        let a = err(load_image(p, 32));
        let b = err(load_mask(p, 32));
        assert_eq!(a.is_some(), b.is_some(), "image and mask readers disagree");
        a
    });
}

/// The first QaTa test image as 8-bit grey, `(width, height, values)`.
fn real_grey() -> (u16, u16, Vec<u8>) {
    let first = first_test_png();
    let grey = read_grey(&first).unwrap();
    (grey.width as u16, grey.height as u16, grey.data)
}

/// A medical reader fed the variants: from disk as an image and as a mask, and from memory.
fn medical_reader(name: &'static str) -> impl Fn(&Path) -> Option<String> + Send + Sync {
    move |p| {
        let a = err(load_image(p, 32));
        let b = err(load_mask(p, 32));
        assert_eq!(a.is_some(), b.is_some(), "image and mask readers disagree");
        let bytes = std::fs::read(p).unwrap();
        let c = err(read_bgr_bytes(name, &bytes, &ReadOptions::default()));
        assert_eq!(a.is_some(), c.is_some(), "file and memory readers disagree");
        if let Some(msg) = &c {
            assert!(
                msg.contains(name),
                "the memory reader names the file: {msg}"
            );
        }
        a
    }
}

#[test]
fn the_dicom_reader() {
    // Two frames of CT-like values: stored = grey · 4 + 24, HU = stored − 1024, a window.
    let (w, h, grey) = real_grey();
    let frame: Vec<u16> = grey.iter().map(|&g| u16::from(g) * 4 + 24).collect();
    let mut img = DicomImage::grey(h, w, [frame.clone(), frame].concat());
    img.modality = "CT".into();
    img.rescale = Some((1.0, -1024.0));
    img.window = Some((-600.0, 1500.0));
    let seed = img.to_bytes().unwrap();
    fuzz("image.dcm", &seed, medical_reader("image.dcm"));
}

#[test]
fn the_nifti_readers() {
    // Three slices, int16 with scaling.
    let (w, h, grey) = real_grey();
    let slice: Vec<i16> = grey.iter().map(|&g| i16::from(g) * 3).collect();
    let volume = NiftiVolume {
        dims: vec![w, h, 3],
        data: NiftiData::I16([slice.clone(), slice.clone(), slice].concat()),
        scaling: (2.0, -1000.0),
    };
    let nii = volume.to_bytes();
    fuzz("image.nii", &nii, medical_reader("image.nii"));
    fuzz("image.nii.gz", &gzip(&nii), medical_reader("image.nii.gz"));
}
