//! `reclmis serve`: a local web viewer and a JSON API over one loaded model.
//!
//! The page (`page.html`, `page.css`, `page.js`, embedded in the binary) uploads the image and the
//! note to `POST /api/segment` and draws what comes back; the API is the same one a script uses.
//! Inference runs on blocking threads, at most `--workers` at a time; `--queue` more may wait, and
//! a request beyond that gets 503 at once instead of piling up. Uploads are bounded in bytes
//! (`--max-upload-mb`) and in pixels (`--max-side`) before anything is decoded.

mod api;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{Context, Result};
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::header;
use axum::response::{Html, IntoResponse};
use axum::routing::{get, post};
use clap::Args;
use reclmis::Error;
use reclmis::model::RecLMIS;
use tokio::sync::Semaphore;
use tower_http::limit::RequestBodyLimitLayer;

const PAGE: &str = include_str!("page.html");
const PAGE_CSS: &str = include_str!("page.css");
const PAGE_JS: &str = include_str!("page.js");

/// Where `reclmis demo` leaves its trained run by default; `serve` without `--checkpoint` loads it.
const DEMO_RUN: &str = "reclmis-demo/run";

#[derive(Args)]
pub struct ServeArgs {
    /// Our checkpoint (a file or a run folder) or the authors' .pth.tar (default: the model
    /// `reclmis demo` trained, `reclmis-demo/run`)
    #[arg(long, value_name = "FILE")]
    pub checkpoint: Option<PathBuf>,
    /// Address to listen on (loopback by default; port 0 picks a free one)
    #[arg(long, value_name = "IP:PORT", default_value = "127.0.0.1:8080")]
    pub addr: SocketAddr,
    /// Inferences run at the same time
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    pub workers: u16,
    /// Requests that may wait for a worker; more get 503 (busy)
    #[arg(long, value_name = "N", default_value_t = 16)]
    pub queue: u16,
    /// Largest upload in MB (a request over it gets 413)
    #[arg(long, value_name = "MB", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub max_upload_mb: u32,
    /// Largest image side in pixels an upload may claim (a larger one gets 413, before decoding)
    #[arg(long, value_name = "PX", default_value_t = 8192, value_parser = clap::value_parser!(u32).range(16..=65535))]
    pub max_side: u32,
}

/// What every request shares.
pub(crate) struct AppState {
    pub model: Arc<RecLMIS>,
    /// `GET /api/model`, computed once.
    pub model_info: serde_json::Value,
    pub gate: Gate,
    pub max_side: u32,
}

/// Bounds the inferences: `workers` run, up to `queue` more wait, the rest are turned away.
pub(crate) struct Gate {
    running: Semaphore,
    admitted: AtomicUsize,
    capacity: usize,
}

/// One admitted request; leaving its slot when dropped, however the request ends.
pub(crate) struct Ticket<'a>(&'a Gate);

impl Gate {
    fn new(workers: usize, queue: usize) -> Gate {
        Gate {
            running: Semaphore::new(workers),
            admitted: AtomicUsize::new(0),
            capacity: workers + queue,
        }
    }

    /// A slot, or `None` when `workers + queue` requests are already in.
    pub(crate) fn admit(&self) -> Option<Ticket<'_>> {
        let before = self.admitted.fetch_add(1, Ordering::SeqCst);
        if before >= self.capacity {
            self.admitted.fetch_sub(1, Ordering::SeqCst);
            return None;
        }
        Some(Ticket(self))
    }

    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    /// Waits for a free worker.
    pub(crate) async fn run_slot(&self) -> tokio::sync::SemaphorePermit<'_> {
        self.running
            .acquire()
            .await
            .expect("the semaphore is never closed")
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        self.0.admitted.fetch_sub(1, Ordering::SeqCst);
    }
}

pub fn run_serve(args: ServeArgs) -> Result<()> {
    let path = match &args.checkpoint {
        Some(p) => p.clone(),
        None => default_checkpoint()?,
    };
    let device = crate::device()?;
    let model = reclmis::app::load_model(&path, &device)?;
    let model_info = api::model_info(&model, &path);
    let summary = format!(
        "{} px, {}",
        model.cfg().image_size,
        model_info["text_encoder"]
            .as_str()
            .unwrap_or("text encoder unknown")
    );
    let state = Arc::new(AppState {
        model: Arc::new(model),
        model_info,
        gate: Gate::new(usize::from(args.workers), usize::from(args.queue)),
        max_side: args.max_side,
    });
    let limit = args.max_upload_mb as usize * 1024 * 1024;
    let app = Router::new()
        .route("/", get(|| async { Html(PAGE) }))
        .route(
            "/page.css",
            get(|| asset("text/css; charset=utf-8", PAGE_CSS)),
        )
        .route(
            "/page.js",
            get(|| asset("text/javascript; charset=utf-8", PAGE_JS)),
        )
        .route("/api/model", get(api::model))
        .route("/api/example", get(api::example))
        .route("/api/segment", post(api::segment))
        .layer(DefaultBodyLimit::max(limit))
        .layer(RequestBodyLimitLayer::new(limit))
        .with_state(state);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(args.addr)
            .await
            .map_err(|source| Error::Usage(format!("cannot listen on {}: {source}", args.addr)))?;
        let addr = listener.local_addr()?;
        println!(
            "serving {} ({summary}) at http://{addr}/ (Ctrl-C stops)",
            path.display()
        );
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await
            .context("the server stopped")?;
        Ok(())
    })
}

/// The demo's model, or what to run to get one.
fn default_checkpoint() -> Result<PathBuf> {
    let run = Path::new(DEMO_RUN);
    if run.join("best.safetensors").is_file() {
        return Ok(run.to_path_buf());
    }
    Err(Error::Usage(format!(
        "no --checkpoint given and no demo model in {DEMO_RUN}; run `reclmis demo` (or `cargo run \
         --release -- demo`) first, or pass --checkpoint FILE"
    ))
    .into())
}

async fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, content_type)], body)
}
