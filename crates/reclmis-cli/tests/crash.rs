//! Crash safety: `reclmis train` killed with SIGKILL at seeded moments (during steps, during
//! checkpoint writes), then `--resume`d, ends with the same weights as an uninterrupted run, bit
//! for bit; and every checkpoint on disk after each kill loads.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use burn::tensor::Device;
use reclmis::checkpoint::ours;
use reclmis::model::weights::named_tensors;
use reclmis::rng::SplitMix64;

mod common;
use common::TempDir;

fn reclmis() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_reclmis"));
    c.stdout(Stdio::null()).stderr(Stdio::piped());
    c
}

const EPOCHS: &str = "6";

/// `train` on the tiny set into `out`, resuming when asked.
fn train(data: &Path, config: &Path, out: &Path, resume: bool) -> Command {
    let mut c = reclmis();
    c.args(["train", "--data"])
        .arg(data)
        .arg("--config")
        .arg(config)
        .args([
            "--image-size",
            "32",
            "--base-channels",
            "8",
            "--batch-size",
            "8",
            "--epochs",
            EPOCHS,
            "--seed",
            "5",
            "--out",
        ])
        .arg(out);
    if resume {
        c.arg("--resume");
    }
    c
}

/// Every checkpoint in the run folder loads (nothing half-written is ever visible).
fn all_checkpoints_load(run: &Path) {
    for e in std::fs::read_dir(run).unwrap().flatten() {
        let p = e.path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if name.ends_with(".safetensors")
            && name != "text_tower.safetensors"
            && let Err(e) = ours::load(&p, &Device::flex())
        {
            panic!("{} does not load after a kill: {e}", p.display());
        }
    }
}

/// Epochs recorded in the run's `metrics.jsonl` (complete lines only).
fn epochs_done(run: &Path) -> usize {
    std::fs::read(run.join("metrics.jsonl"))
        .map_or(0, |b| b.iter().filter(|&&c| c == b'\n').count())
}

fn weights(path: &Path) -> Vec<(String, Vec<f32>)> {
    let l = ours::load(path, &Device::flex()).unwrap();
    named_tensors(&l.model)
        .into_iter()
        .map(|(k, t)| (k, t.data))
        .collect()
}

#[test]
fn sigkill_at_any_moment_then_resume_gives_the_uninterrupted_weights() {
    let tmp = TempDir::new("sigkill");
    let data = tmp.0.join("data");
    let out = reclmis()
        .args(["synth", "--n", "60", "--size", "32", "--seed", "2", "--out"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A small model: one reconstructor layer, a one-layer text encoder, no dropout.
    let config = tmp.0.join("small.toml");
    std::fs::write(
        &config,
        "[model]\nrec_layers = 1\ndropout = 0.0\nhead_dropout = 0.0\n\
         [model.text_encoder]\nkind = \"builtin\"\nwidth = 64\nlayers = 1\nheads = 2\n",
    )
    .unwrap();

    let reference = tmp.0.join("reference");
    let t0 = Instant::now();
    let out = train(&data, &config, &reference, false).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let full = t0.elapsed();

    // Kill at seeded moments, resuming each time, until the run finishes. Each attempt waits for
    // one more finished epoch (so every attempt makes progress, however slow the machine), then
    // kills at a seeded moment within the next half epoch of the reference's pace: during a step,
    // a validation or a checkpoint write. About one epoch per attempt: ~5 kills in 6 epochs.
    let run = tmp.0.join("killed");
    let epoch = full.div_f64(EPOCHS.parse::<f64>().unwrap());
    let mut rng = SplitMix64::new(11);
    let mut kills = 0;
    let mut started = false;
    for attempt in 0..40 {
        let resume = started && run.join("last.safetensors").exists();
        let before = epochs_done(&run);
        let mut child = train(&data, &config, &run, resume).spawn().unwrap();
        started = true;
        let extra = epoch.mul_f64(0.5 * rng.unit_f64());
        let mut deadline = None;
        let mut finished = None;
        while deadline.is_none_or(|d| Instant::now() < d) {
            if let Some(status) = child.try_wait().unwrap() {
                finished = Some(status);
                break;
            }
            if deadline.is_none() && epochs_done(&run) > before {
                deadline = Some(Instant::now() + extra);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        match finished {
            Some(status) => {
                let mut err = String::new();
                use std::io::Read;
                child
                    .stderr
                    .take()
                    .unwrap()
                    .read_to_string(&mut err)
                    .unwrap();
                assert!(status.success(), "attempt {attempt}: {err}");
                break;
            }
            None => {
                child.kill().unwrap(); // SIGKILL
                child.wait().unwrap();
                kills += 1;
                all_checkpoints_load(&run);
            }
        }
    }
    eprintln!("{kills} kills before the run finished");
    assert!(
        kills >= 3,
        "only {kills} kills landed before the run finished"
    );
    assert_eq!(
        weights(&run.join("last.safetensors")),
        weights(&reference.join("last.safetensors")),
        "after {kills} kills the weights differ from the uninterrupted run"
    );
    // Temporary files of writes a kill interrupted are cleared when the run starts again.
    for e in std::fs::read_dir(&run).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        assert!(!name.contains(".tmp-"), "a temporary file was left: {name}");
    }
    let lines = |p: &Path| {
        std::fs::read_to_string(p.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .count()
    };
    assert_eq!(lines(&run), EPOCHS.parse::<usize>().unwrap());
    assert_eq!(lines(&reference), lines(&run));
}

/// A write that fails for lack of space (injected with the library's test hook
/// `RECLMIS_FAIL_WRITE_AFTER_BYTES`, as a full disk would fail it) stops `train` with the file
/// named and exit code 2; the checkpoints of the epochs before are untouched and load, nothing
/// temporary is left, and `--resume` continues once there is room again.
#[test]
fn a_full_disk_names_the_file_and_keeps_the_last_good_checkpoints() {
    let tmp = TempDir::new("full-disk");
    let data = tmp.0.join("data");
    let out = reclmis()
        .args(["synth", "--n", "20", "--size", "32", "--seed", "3", "--out"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(out.status.success());
    let config = tmp.0.join("small.toml");
    std::fs::write(
        &config,
        "[model]\nrec_layers = 1\n[model.text_encoder]\nkind = \"builtin\"\nwidth = 64\n\
         layers = 1\nheads = 2\n",
    )
    .unwrap();
    let run = tmp.0.join("run");
    let train = |epochs: &str, resume: bool, fail_after: Option<u64>| {
        let mut c = reclmis();
        c.args(["--threads", "2", "train", "--data"])
            .arg(&data)
            .arg("--config")
            .arg(&config)
            .args(["--image-size", "32", "--base-channels", "8"])
            .args([
                "--batch-size",
                "8",
                "--seed",
                "5",
                "--epochs",
                epochs,
                "--out",
            ])
            .arg(&run);
        if resume {
            c.arg("--resume");
        }
        if let Some(n) = fail_after {
            c.env(reclmis::files::FAIL_WRITE_AFTER_BYTES, n.to_string());
        }
        c.output().unwrap()
    };
    let stderr = |o: &std::process::Output| String::from_utf8_lossy(&o.stderr).into_owned();

    let first = train("2", false, None);
    assert!(first.status.success(), "{}", stderr(&first));
    let kept = ["best.safetensors", "last.safetensors"];
    let before: Vec<Vec<u8>> = kept
        .iter()
        .map(|f| std::fs::read(run.join(f)).unwrap())
        .collect();

    let size = |name: &str| std::fs::metadata(run.join(name)).unwrap().len();
    let intact = |err: &str| {
        for (name, bytes) in kept.iter().zip(&before) {
            let now = std::fs::read(run.join(name)).unwrap();
            assert!(&now == bytes, "{name} changed: {err}");
        }
        // The metrics of epochs 1 and 2 are kept (a third line may precede the failed `last`;
        // resuming reads as many lines as `last` has epochs).
        let epochs: Vec<u64> = std::fs::read_to_string(run.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["epoch"]
                    .as_u64()
                    .unwrap()
            })
            .collect();
        assert_eq!(epochs[..2], [1, 2], "{err}");
        let last = ours::load(&run.join("last.safetensors"), &Device::flex()).unwrap();
        assert_eq!(last.state.epoch, 2);
        assert!(ours::load(&run.join("best.safetensors"), &Device::flex()).is_ok());
        assert!(run.join("optimizer-00002.bin").exists(), "{err}");
        for e in std::fs::read_dir(&run).unwrap().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            assert!(!name.contains(".tmp-"), "a temporary file was left: {name}");
        }
    };
    let full_disk = |fail_after: u64, file: &str| {
        let out = train("3", true, Some(fail_after));
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{err}");
        let line = |start: &str| {
            err.lines()
                .find(|l| l.starts_with(start))
                .unwrap_or_default()
        };
        assert_eq!(
            line("error: "),
            format!(
                "error: cannot write {}: No space left on device",
                run.join(file).display()
            ),
            "{err}"
        );
        assert!(line("hint: ").contains("free some disk space"), "{err}");
        intact(&err);
    };

    // An epoch writes best (when it is the best; epoch 3 of this run is not), Adam's state,
    // metrics, then last. 1000 bytes are less than any of them: Adam's state fails.
    full_disk(1000, "optimizer-00003.bin");
    // Room for Adam's state and the metrics but half of the checkpoint: last fails.
    let room =
        size("optimizer-00002.bin") + 2 * size("metrics.jsonl") + size("last.safetensors") / 2;
    full_disk(room, "last.safetensors");

    // With room again, the run resumes from epoch 2 and finishes.
    let resumed = train("3", true, None);
    assert!(resumed.status.success(), "{}", stderr(&resumed));
    let last = ours::load(&run.join("last.safetensors"), &Device::flex()).unwrap();
    assert_eq!(last.state.epoch, 3);
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let third: serde_json::Value = serde_json::from_str(metrics.lines().nth(2).unwrap()).unwrap();
    assert_eq!(
        third["best"], false,
        "the failures above assume epoch 3 is not the best"
    );
}
