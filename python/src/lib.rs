//! Python bindings of reclmis: `reclmis.load`, `Model.segment`, `reclmis.train`,
//! `reclmis.evaluate`. A thin layer over the library's application layer (`reclmis::app`): it
//! converts arrays and dicts, releases the GIL while the model computes, and turns the library's
//! errors into Python exceptions with the same messages as the command line.

use std::path::PathBuf;

use burn::tensor::Device;
use numpy::{PyArray1, PyArrayMethods, PyReadonlyArrayDyn, PyUntypedArrayMethods};
use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use reclmis::app::{self, TrainProgress};
use reclmis::data::image::{Pixels, image_from_pixels};
use reclmis::data::layout::Split;
use reclmis::eval::TextMode;
use reclmis::model::{Preset, RecLMIS};
use reclmis::predict::{Prediction, predict_image};
use reclmis::train::{Event, TrainConfig};

create_exception!(
    _reclmis,
    ReclmisError,
    PyException,
    "A failure of reclmis; the message names the file (and row) where the input is at fault."
);
create_exception!(
    _reclmis,
    BadInputError,
    ReclmisError,
    "Bad usage or bad input: what the command line reports with exit code 2."
);

/// The library's error as a Python exception: bad input (exit code 2 on the command line) as
/// `BadInputError`, anything else as `ReclmisError`; the hint, if any, on a second line.
fn py_err(e: reclmis::Error) -> PyErr {
    let msg = match e.hint() {
        Some(h) => format!("{e}\nhint: {h}"),
        None => e.to_string(),
    };
    if e.exit_code() == reclmis::error::EXIT_BAD_INPUT {
        BadInputError::new_err(msg)
    } else {
        ReclmisError::new_err(msg)
    }
}

fn json_to_py<'py>(py: Python<'py>, v: &serde_json::Value) -> PyResult<Bound<'py, PyAny>> {
    let json = py.import("json")?;
    json.call_method1("loads", (v.to_string(),))
}

fn py_to_json(obj: &Bound<'_, PyAny>) -> PyResult<serde_json::Value> {
    let json = obj.py().import("json")?;
    let text: String = json.call_method1("dumps", (obj,))?.extract()?;
    serde_json::from_str(&text).map_err(|e| PyValueError::new_err(e.to_string()))
}

/// A loaded model, ready to segment.
#[pyclass(module = "reclmis._reclmis", frozen)]
struct Model {
    inner: RecLMIS,
}

#[pymethods]
impl Model {
    /// The model's config as a dict (the `model` table of a run's `config.toml`).
    #[getter]
    fn config<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let v = serde_json::to_value(&self.inner.cfg).expect("a config serialises");
        json_to_py(py, &v)
    }

    /// The side the model works at: images are resized to `image_size × image_size`.
    #[getter]
    fn image_size(&self) -> usize {
        self.inner.cfg.image_size
    }

    /// Segments one image with its note. `image`: a numpy array `H×W` (grey) or `H×W×3` (RGB),
    /// of `uint8`, `uint16` or `float32` in [0, 1], any size. Returns a dict of `mask` (uint8
    /// 0/1) and `prob` (float32), both `image_size × image_size`, `poi` (float32, one weight per
    /// 16-pixel patch), `woi` (a list of `(word, weight)` of the note), `model_text` (what the
    /// text encoder read) and `truncated` (words the context cut).
    fn segment<'py>(
        &self,
        py: Python<'py>,
        image: &Bound<'py, PyAny>,
        note: &str,
    ) -> PyResult<Bound<'py, PyDict>> {
        let img = to_image(image)?;
        let model = &self.inner;
        let note = note.to_owned();
        let pred = py.detach(move || predict_image(model, &img, &note));
        prediction_dict(py, &pred)
    }

    /// `segment` over lists of images and notes of the same length.
    fn segment_batch<'py>(
        &self,
        py: Python<'py>,
        images: Vec<Bound<'py, PyAny>>,
        notes: Vec<String>,
    ) -> PyResult<Bound<'py, PyList>> {
        if images.len() != notes.len() {
            return Err(PyValueError::new_err(format!(
                "{} images but {} notes",
                images.len(),
                notes.len()
            )));
        }
        let imgs = images.iter().map(to_image).collect::<PyResult<Vec<_>>>()?;
        let model = &self.inner;
        let preds: Vec<Prediction> = py.detach(move || {
            imgs.iter()
                .zip(&notes)
                .map(|(img, note)| predict_image(model, img, note))
                .collect()
        });
        let out = PyList::empty(py);
        for p in &preds {
            out.append(prediction_dict(py, p)?)?;
        }
        Ok(out)
    }

    fn __repr__(&self) -> String {
        let c = &self.inner.cfg;
        format!(
            "Model(preset={}, image_size={}, base_channels={}, text_encoder={}, notes={})",
            c.preset,
            c.image_size,
            c.base_channels,
            if c.text_free {
                "none"
            } else {
                c.text_encoder.kind()
            },
            if c.notes.canonical {
                "canonical"
            } else {
                "raw"
            }
        )
    }
}

/// A numpy array as the model's image, with dtype and shape checked.
fn to_image(obj: &Bound<'_, PyAny>) -> PyResult<reclmis::data::ImageU8> {
    let (shape, img) = if let Ok(a) = obj.extract::<PyReadonlyArrayDyn<u8>>() {
        let v = a
            .as_slice()
            .map(<[u8]>::to_vec)
            .unwrap_or_else(|_| a.as_array().iter().copied().collect());
        (a.shape().to_vec(), Owned::U8(v))
    } else if let Ok(a) = obj.extract::<PyReadonlyArrayDyn<u16>>() {
        let v = a.as_array().iter().copied().collect();
        (a.shape().to_vec(), Owned::U16(v))
    } else if let Ok(a) = obj.extract::<PyReadonlyArrayDyn<f32>>() {
        let v = a.as_array().iter().copied().collect();
        (a.shape().to_vec(), Owned::F32(v))
    } else {
        let what = match obj.getattr("dtype") {
            Ok(d) => format!("a numpy array of dtype {d}"),
            Err(_) => format!("a {}", obj.get_type().name()?),
        };
        return Err(PyTypeError::new_err(format!(
            "an image is a numpy array of uint8, uint16 or float32; got {what}"
        )));
    };
    let (h, w, c) = match shape.as_slice() {
        [h, w] => (*h, *w, 1),
        [h, w, c] => (*h, *w, *c),
        _ => {
            return Err(PyValueError::new_err(format!(
                "an image is H×W or H×W×3; got shape {shape:?}"
            )));
        }
    };
    let pixels = match &img {
        Owned::U8(v) => Pixels::U8(v),
        Owned::U16(v) => Pixels::U16(v),
        Owned::F32(v) => Pixels::F32(v),
    };
    image_from_pixels(pixels, h, w, c).map_err(PyValueError::new_err)
}

enum Owned {
    U8(Vec<u8>),
    U16(Vec<u16>),
    F32(Vec<f32>),
}

fn prediction_dict<'py>(py: Python<'py>, p: &Prediction) -> PyResult<Bound<'py, PyDict>> {
    let s = p.size;
    let d = PyDict::new(py);
    d.set_item("mask", PyArray1::from_slice(py, &p.mask).reshape([s, s])?)?;
    d.set_item("prob", PyArray1::from_slice(py, &p.prob).reshape([s, s])?)?;
    d.set_item(
        "poi",
        PyArray1::from_slice(py, &p.poi).reshape([p.grid, p.grid])?,
    )?;
    let woi: Vec<(String, f32)> = p
        .woi
        .iter()
        .filter(|w| !w.padding)
        .map(|w| (w.word.clone(), w.weight))
        .collect();
    d.set_item("woi", woi)?;
    d.set_item("note", &p.note)?;
    d.set_item("model_text", &p.model_text)?;
    d.set_item("truncated", &p.truncated_words)?;
    Ok(d)
}

/// Loads a model: a checkpoint of ours (`.safetensors` or a run folder) or the authors'
/// `best_model-RecLMIS.pth.tar` (read without running pickle code).
#[pyfunction]
fn load(py: Python<'_>, path: PathBuf) -> PyResult<Model> {
    let inner = py
        .detach(|| app::load_model(&path, &Device::flex()))
        .map_err(py_err)?;
    Ok(Model { inner })
}

/// The training config the command line would build: the preset, then `config` (a dict or the
/// path of a TOML file, deep-merged), then `overrides` (flag names, e.g. `epochs`,
/// `image_size`, `canonical_notes`).
fn train_config(
    preset: &str,
    with_clip: bool,
    config: Option<&Bound<'_, PyAny>>,
    overrides: Option<&Bound<'_, PyDict>>,
) -> PyResult<TrainConfig> {
    let preset: Preset = preset
        .parse()
        .map_err(|e: String| BadInputError::new_err(e))?;
    let layer_table;
    let layer = match config {
        None => None,
        Some(c) => match c.extract::<PathBuf>() {
            Ok(p) => {
                layer_table = p;
                Some(app::ConfigLayer::File(&layer_table))
            }
            Err(_) => Some(app::ConfigLayer::Table(py_to_json(c)?)),
        },
    };
    let o: app::TrainOverrides = match overrides {
        Some(d) => {
            let v = py_to_json(d.as_any())?;
            serde_json::from_value(v).map_err(|e| BadInputError::new_err(e.to_string()))?
        }
        None => app::TrainOverrides::default(),
    };
    let cfg = app::train_config(preset, with_clip, layer, &o).map_err(py_err)?;
    Ok(cfg)
}

/// Trains on a dataset in LViT layout into the run folder `out`. `progress`: a callable given
/// a dict per event (`{"event": "step", "epoch": .., "step": .., "steps": .., "loss": ..}`,
/// `"epoch"` with the epoch's metrics, `"loaded"`, ...); without one, a tqdm bar when tqdm is
/// installed. Returns the best validation Dice, its epoch and the per-epoch metrics.
#[pyfunction]
#[pyo3(signature = (data, out, preset="qata", config=None, clip=None, resume=false, allow_missing_notes=false, progress=None, **overrides))]
#[allow(clippy::too_many_arguments)]
fn train<'py>(
    py: Python<'py>,
    data: PathBuf,
    out: PathBuf,
    preset: &str,
    config: Option<&Bound<'py, PyAny>>,
    clip: Option<PathBuf>,
    resume: bool,
    allow_missing_notes: bool,
    progress: Option<Py<PyAny>>,
    overrides: Option<&Bound<'py, PyDict>>,
) -> PyResult<Bound<'py, PyAny>> {
    let cfg = train_config(preset, clip.is_some(), config, overrides)?;
    let req = app::TrainRequest {
        data,
        out,
        cfg,
        clip,
        resume,
        allow_missing_notes,
    };
    let outcome = py.detach(|| {
        let mut epoch = 0usize;
        let mut steps = 0usize;
        let mut failed: Option<PyErr> = None;
        let result = app::train(&req, &mut |p| {
            let Some(cb) = &progress else { return };
            if failed.is_some() {
                return;
            }
            let event = match p {
                TrainProgress::Loading { data, size } => serde_json::json!({
                    "event": "loading", "data": data.display().to_string(), "size": size}),
                TrainProgress::Loaded { train, val, .. } => serde_json::json!({
                    "event": "loaded", "train": train.len(), "val": val.len()}),
                TrainProgress::Train(Event::SideFocus(o)) => serde_json::json!({
                    "event": "side_focus", "left_is_image_left": o.left_is_image_left}),
                TrainProgress::Train(Event::EpochStart {
                    epoch: e, steps: s, ..
                }) => {
                    (epoch, steps) = (e, s);
                    serde_json::json!({"event": "epoch_start", "epoch": e, "steps": s})
                }
                TrainProgress::Train(Event::Step { step, loss, dice }) => serde_json::json!({
                    "event": "step", "epoch": epoch, "step": step, "steps": steps,
                    "loss": loss, "dice": dice}),
                TrainProgress::Train(Event::Validating { epoch }) => {
                    serde_json::json!({"event": "validating", "epoch": epoch})
                }
                TrainProgress::Train(Event::EpochEnd(m)) => {
                    let mut v = serde_json::to_value(m).expect("metrics serialise");
                    v["event"] = "epoch".into();
                    v
                }
                TrainProgress::Train(Event::Resumed { epoch }) => {
                    serde_json::json!({"event": "resumed", "epoch": epoch})
                }
            };
            Python::attach(|py| {
                let r = json_to_py(py, &event).and_then(|e| cb.call1(py, (e,)));
                if let Err(e) = r {
                    failed = Some(e);
                }
            });
        });
        (result, failed)
    });
    let (result, failed) = outcome;
    if let Some(e) = failed {
        return Err(e);
    }
    let o = result.map_err(py_err)?;
    let v = serde_json::json!({
        "best_val_dice": o.best_val_dice,
        "best_epoch": o.best_epoch,
        "out": o.out.display().to_string(),
        "history": o.history,
    });
    json_to_py(py, &v)
}

/// Evaluates a checkpoint on a split with the LViT test protocol. `text`: "given", "shuffled"
/// or "empty"; `notes`: any notes file to read instead of the split's own; `notes_as`: "raw" or
/// "canonical" to override the checkpoint. Returns the summary (Dice per image and pooled, mIoU,
/// how notes were read) with `per_image` scores.
#[pyfunction]
#[pyo3(signature = (checkpoint, data, split="test", text="given", notes=None, notes_as=None, seed=0, allow_missing_notes=false))]
#[allow(clippy::too_many_arguments)]
fn evaluate<'py>(
    py: Python<'py>,
    checkpoint: PathBuf,
    data: PathBuf,
    split: &str,
    text: &str,
    notes: Option<PathBuf>,
    notes_as: Option<&str>,
    seed: u64,
    allow_missing_notes: bool,
) -> PyResult<Bound<'py, PyAny>> {
    let bad = |m: String| BadInputError::new_err(m);
    let split = match split {
        "train" => Split::Train,
        "val" => Split::Val,
        "test" => Split::Test,
        s => return Err(bad(format!("split is train, val or test, not {s:?}"))),
    };
    let text: TextMode = text.parse().map_err(bad)?;
    let notes_as = match notes_as {
        None => None,
        Some("raw") => Some(app::NotesAs::Raw),
        Some("canonical") => Some(app::NotesAs::Canonical),
        Some(s) => return Err(bad(format!("notes_as is raw or canonical, not {s:?}"))),
    };
    let req = app::EvalRequest {
        checkpoint,
        data,
        split,
        text,
        notes,
        notes_as,
        seed,
        allow_missing_notes,
        read: Default::default(),
    };
    let out = py.detach(|| app::evaluate_split(&req)).map_err(py_err)?;
    let mut v = serde_json::to_value(&out.summary).expect("a summary serialises");
    v["per_image"] = serde_json::to_value(&out.summary.per_image).expect("scores serialise");
    v["checkpoint"] = out.checkpoint.display().to_string().into();
    v["notes_file"] = out.notes_file.display().to_string().into();
    json_to_py(py, &v)
}

#[pymodule]
fn _reclmis(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Model>()?;
    m.add_function(wrap_pyfunction!(load, m)?)?;
    m.add_function(wrap_pyfunction!(train, m)?)?;
    m.add_function(wrap_pyfunction!(evaluate, m)?)?;
    m.add("ReclmisError", m.py().get_type::<ReclmisError>())?;
    m.add("BadInputError", m.py().get_type::<BadInputError>())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
