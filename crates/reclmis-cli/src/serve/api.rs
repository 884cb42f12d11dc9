//! The JSON API: `POST /api/segment`, `GET /api/model`, `GET /api/example`.
//!
//! Every refusal is JSON `{"error": "...", "status": N}` with a 4xx status naming what was wrong
//! with the upload (5xx only for a failure of the server itself), so a bad request never stops the
//! server.

use std::io::Cursor;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use axum::Json;
use axum::extract::{Multipart, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use reclmis::data::ImageU8;
use reclmis::data::image::{ReadOptions, read_bgr_bytes};
use reclmis::data::synth::{self, SynthConfig};
use reclmis::inspect::table;
use reclmis::model::RecLMIS;
use reclmis::model::weights::named_shapes;
use reclmis::predict::{Prediction, predict_image};
use reclmis::report::{encode_png, to_rgb};
use serde::Deserialize;
use serde_json::json;

use super::AppState;

/// A refusal: status and reason.
pub(crate) struct ApiError(StatusCode, String);

impl ApiError {
    fn bad(reason: impl Into<String>) -> ApiError {
        ApiError(StatusCode::BAD_REQUEST, reason.into())
    }

    fn unprocessable(reason: impl Into<String>) -> ApiError {
        ApiError(StatusCode::UNPROCESSABLE_ENTITY, reason.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let ApiError(status, error) = self;
        let body = Json(json!({ "error": error, "status": status.as_u16() }));
        if status == StatusCode::SERVICE_UNAVAILABLE {
            return (status, [(header::RETRY_AFTER, "1")], body).into_response();
        }
        (status, body).into_response()
    }
}

/// `GET /api/model`: the config, the parameter counts per block and where the model came from.
pub(crate) fn model_info(model: &RecLMIS, path: &Path) -> serde_json::Value {
    let ins = table(
        model.cfg(),
        &named_shapes(model),
        path.display().to_string(),
    );
    json!({
        "source": ins.source,
        "image_size": model.cfg().image_size,
        "grid": model.cfg().grid(),
        "text_encoder": ins.text_encoder,
        "config": ins.config,
        "parameters": ins.totals,
        "blocks": ins.blocks,
    })
}

pub(crate) async fn model(State(state): State<Arc<AppState>>) -> Json<serde_json::Value> {
    Json(state.model_info.clone())
}

#[derive(Deserialize)]
pub(crate) struct ExampleQuery {
    #[serde(default)]
    index: u64,
}

/// First index of the examples: far past any index the demo trains on (it draws fresh phantoms
/// from 0 upwards every epoch), so an example is an image the demo model has never seen.
const EXAMPLE_BASE: u64 = 1 << 40;

/// `GET /api/example?index=N`: a procedural phantom at the model's size (PNG, as a data URL), its
/// note, and a second note naming other zones (its distractors, or the mirrored side), to try
/// language guidance without a file of one's own.
pub(crate) async fn example(
    State(state): State<Arc<AppState>>,
    Query(q): Query<ExampleQuery>,
) -> Json<serde_json::Value> {
    let cfg = SynthConfig {
        size: state.model.cfg().image_size,
        ..SynthConfig::default()
    };
    // The first phantom from `index` on with a distractor, so the two notes pick different opacities.
    let (index, sample) = (0..64)
        .map(|k| EXAMPLE_BASE + q.index + k)
        .map(|i| (i, synth::sample(&cfg, i)))
        .find(|(_, s)| !s.distractor_zones.is_empty())
        .unwrap_or_else(|| {
            let i = EXAMPLE_BASE + q.index;
            (i, synth::sample(&cfg, i))
        });
    let other = if sample.distractor_zones.is_empty() {
        synth::flip_note_lr(&sample.note)
    } else {
        synth::note_for(&sample.distractor_zones)
    };
    let png = encode_png(cfg.size, cfg.size, 1, &sample.image);
    Json(json!({
        "index": index - EXAMPLE_BASE,
        "image": data_url(&png),
        "name": format!("phantom-{}.png", index - EXAMPLE_BASE),
        "note": sample.note,
        "other_note": other,
    }))
}

/// The form `POST /api/segment` reads.
struct SegmentForm {
    image: Vec<u8>,
    filename: String,
    note: String,
    threshold: f32,
    slice: Option<usize>,
}

/// `POST /api/segment`, multipart form: `image` (the file), `note` (text), optionally
/// `threshold` (0–1, default 0.5) and `slice` (NIfTI slice / DICOM frame).
pub(crate) async fn segment(
    State(state): State<Arc<AppState>>,
    multipart: Multipart,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Some(_ticket) = state.gate.admit() else {
        return Err(ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "busy: {} requests are running or waiting; retry shortly",
                state.gate.capacity()
            ),
        ));
    };
    let form = read_form(multipart).await?;
    check_dimensions(&form, state.max_side)?;
    let _slot = state.gate.run_slot().await;
    let model = Arc::clone(&state.model);
    let started = Instant::now();
    let job = tokio::task::spawn_blocking(move || -> Result<_, ApiError> {
        let opts = ReadOptions { slice: form.slice };
        let image = read_bgr_bytes(&form.filename, &form.image, &opts)
            .map_err(|e| ApiError::unprocessable(e.to_string()))?;
        let s = model.cfg().image_size;
        let image = image.resized(s, s);
        let pred = predict_image(&model, &image, &form.note);
        Ok(response(&pred, &image, form.threshold))
    });
    let mut body = match job.await {
        Ok(result) => result?,
        Err(e) => {
            return Err(ApiError(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("the inference failed: {e}"),
            ));
        }
    };
    body["ms"] = json!(started.elapsed().as_secs_f64() * 1e3);
    Ok(Json(body))
}

async fn read_form(mut multipart: Multipart) -> Result<SegmentForm, ApiError> {
    let mut image = None;
    let mut note = None;
    let mut threshold = reclmis::predict::THRESHOLD;
    let mut slice = None;
    let field_error =
        |e: axum::extract::multipart::MultipartError| ApiError(e.status(), e.body_text());
    while let Some(field) = multipart.next_field().await.map_err(field_error)? {
        let name = field.name().unwrap_or_default().to_owned();
        match name.as_str() {
            "image" => {
                let filename = field.file_name().unwrap_or("upload").to_owned();
                let bytes = field.bytes().await.map_err(field_error)?;
                image = Some((bytes.to_vec(), filename));
            }
            "note" => note = Some(field.text().await.map_err(field_error)?),
            "threshold" => {
                let text = field.text().await.map_err(field_error)?;
                threshold = text
                    .trim()
                    .parse::<f32>()
                    .ok()
                    .filter(|t| (0.0..=1.0).contains(t))
                    .ok_or_else(|| {
                        ApiError::bad(format!("threshold must be a number in 0–1, not {text:?}"))
                    })?;
            }
            "slice" => {
                let text = field.text().await.map_err(field_error)?;
                let n = text.trim().parse::<usize>().map_err(|_| {
                    ApiError::bad(format!("slice must be a whole number, not {text:?}"))
                })?;
                slice = Some(n);
            }
            other => {
                return Err(ApiError::bad(format!(
                    "unknown form field {other:?}; the fields are image, note, threshold, slice"
                )));
            }
        }
    }
    let (image, filename) =
        image.ok_or_else(|| ApiError::bad("the form has no `image` field (the file)"))?;
    if image.is_empty() {
        return Err(ApiError::unprocessable(format!(
            "{filename}: the file is empty"
        )));
    }
    let note = note.ok_or_else(|| {
        ApiError::bad("the form has no `note` field (send an empty one for no note)")
    })?;
    Ok(SegmentForm {
        image,
        filename,
        note,
        threshold,
        slice,
    })
}

/// Refuses an image whose header claims more than `max_side` pixels a side, before decoding.
/// Formats the `image` crate does not know (DICOM, NIfTI) are bounded by their reader.
fn check_dimensions(form: &SegmentForm, max_side: u32) -> Result<(), ApiError> {
    let reader = image::ImageReader::new(Cursor::new(&form.image))
        .with_guessed_format()
        .map_err(|e| ApiError::unprocessable(format!("{}: {e}", form.filename)))?;
    if reader.format().is_none() {
        return Ok(());
    }
    let (w, h) = reader
        .into_dimensions()
        .map_err(|e| ApiError::unprocessable(format!("{}: {e}", form.filename)))?;
    if w == 0 || h == 0 {
        return Err(ApiError::unprocessable(format!(
            "{}: the image is {w}×{h}, it has no pixels",
            form.filename
        )));
    }
    if w > max_side || h > max_side {
        return Err(ApiError(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "{}: the image is {w}×{h} px; this server takes at most {max_side} px a side \
                 (--max-side)",
                form.filename
            ),
        ));
    }
    Ok(())
}

/// The answer: rows of the mask (at `threshold`), the probabilities and POI, the words with WOI,
/// the image the model saw, and how the note was read.
fn response(pred: &Prediction, image: &ImageU8, threshold: f32) -> serde_json::Value {
    let s = pred.size;
    let g = pred.grid;
    let mask: Vec<u8> = pred.prob.iter().map(|&p| u8::from(p > threshold)).collect();
    let fraction = mask.iter().filter(|&&m| m != 0).count() as f64 / mask.len().max(1) as f64;
    let png = encode_png(s, s, 3, &to_rgb(image));
    json!({
        "size": s,
        "grid": g,
        "threshold": threshold,
        "mask": rows(&mask, s),
        "mask_fraction": fraction,
        "prob": rows(&pred.prob, s),
        "poi": rows(&pred.poi, g),
        "woi": pred.woi,
        "truncated_words": pred.truncated_words,
        "note": pred.note,
        "model_text": pred.model_text,
        "reading": pred.reading,
        "image": data_url(&png),
    })
}

fn rows<T: Copy + serde::Serialize>(values: &[T], width: usize) -> Vec<&[T]> {
    values.chunks(width).collect()
}

fn data_url(png: &[u8]) -> String {
    format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(png)
    )
}
