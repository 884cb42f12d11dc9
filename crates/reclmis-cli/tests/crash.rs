//! Crash safety: `reclmis train` killed with SIGKILL at seeded moments (during steps, during
//! checkpoint writes), then `--resume`d, ends with the same weights as an uninterrupted run, bit
//! for bit; and every checkpoint on disk after each kill loads.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use burn::tensor::Device;
use reclmis::checkpoint::ours;
use reclmis::model::weights::named_tensors;
use reclmis::rng::SplitMix64;

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("reclmis-crash-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

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

    // Kill at seeded moments spread over the run, resuming each time, until it finishes.
    let run = tmp.0.join("killed");
    let mut rng = SplitMix64::new(11);
    let mut kills = 0;
    let mut started = false;
    for attempt in 0..40 {
        let resume = started && run.join("last.safetensors").exists();
        let mut child = train(&data, &config, &run, resume).spawn().unwrap();
        started = true;
        let wait = full.mul_f64(0.05 + 0.3 * rng.unit_f64());
        let deadline = Instant::now() + wait;
        let mut finished = None;
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait().unwrap() {
                finished = Some(status);
                break;
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
