//! `grokcast-serve`: the embedded engines behind the OpenAI-compatible HTTP APIs the
//! agent uses for GPU model pools (chat completions, audio transcriptions, audio speech).
//!
//! Each engine has a lane: a bounded number of admitted requests (beyond it the server
//! answers 503 at once instead of queueing without limit) and a number of workers that
//! run on blocking threads. Streaming responses are fed through small bounded channels;
//! when the client goes away the engine is told to stop.

mod chat;
pub mod cli;
mod error;
mod metrics;
#[cfg(feature = "whisper")]
pub mod riva;
mod speech;
mod transcribe;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub use error::ApiError;
pub use metrics::ServerMetrics;
pub use speech::SAMPLE_RATE_HEADER;

#[cfg(feature = "llama")]
use crate::llm::GemmaLlm;
#[cfg(feature = "whisper")]
use crate::stt::WhisperStt;
use crate::tts::Speaker;

/// The engines one server runs; a role the server was not started with is `None`.
#[derive(Debug, Default, Clone)]
pub struct Engines {
    /// Chat completions.
    #[cfg(feature = "llama")]
    pub llm: Option<Arc<GemmaLlm>>,
    /// Transcriptions.
    #[cfg(feature = "whisper")]
    pub stt: Option<Arc<WhisperStt>>,
    /// Speech: Piper, or CSM in a `csm` build.
    pub tts: Option<Arc<dyn Speaker>>,
}

/// Server settings.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Model ids accepted for chat completions (the first is listed as the model).
    pub llm_models: Vec<String>,
    /// Model ids accepted for transcriptions.
    pub stt_models: Vec<String>,
    /// Model ids accepted for speech.
    pub tts_models: Vec<String>,
    /// Voice names accepted for speech (an empty or absent voice means the default) by an
    /// engine without voices of its own; empty: whatever the engine names (CSM).
    pub voices: Vec<String>,
    /// Requests admitted per engine (running plus waiting); more get 503.
    pub queue_capacity: usize,
    /// Requests running at once per engine.
    pub workers: usize,
    /// Largest request body, in bytes.
    pub max_body_bytes: usize,
    /// Largest `max_tokens` a chat request may ask for.
    pub max_tokens_limit: u32,
    /// `max_tokens` when the request gives none.
    pub default_max_tokens: u32,
    /// Longest transcription input, in seconds.
    pub max_audio_seconds: f32,
    /// Longest speech input, in characters.
    pub max_speech_chars: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            llm_models: vec!["gemma-3-270m".to_owned()],
            stt_models: vec!["whisper-tiny.en".to_owned(), "whisper-1".to_owned()],
            tts_models: vec!["piper-en_US-joe-medium".to_owned(), "tts-1".to_owned()],
            // OpenAI's voice names are accepted too, so clients configured for OpenAI
            // work unchanged; they all speak with the one installed voice.
            voices: [
                "joe", "alloy", "ash", "ballad", "coral", "echo", "fable", "nova", "onyx", "sage",
                "shimmer", "verse",
            ]
            .map(str::to_owned)
            .to_vec(),
            queue_capacity: 16,
            workers: 1,
            max_body_bytes: 25 * 1024 * 1024,
            max_tokens_limit: 512,
            default_max_tokens: 128,
            max_audio_seconds: 120.0,
            max_speech_chars: 4096,
        }
    }
}

/// Admission and concurrency for one engine.
#[derive(Debug)]
struct Lane {
    route: &'static str,
    capacity: usize,
    admitted: AtomicUsize,
    workers: Arc<Semaphore>,
}

/// A request's place in a lane; dropping it frees the place.
#[derive(Debug)]
pub(crate) struct Admission {
    lane: Arc<Lane>,
    _permit: OwnedSemaphorePermit,
}

/// A request that holds a slot of its lane while it waits for a worker: dropped before a
/// worker is free, it gives the slot back and leaves the queue-depth gauge.
struct Queued {
    lane: Arc<Lane>,
    gauge: prometheus::IntGauge,
    /// Whether the slot is still this request's to give back.
    holds_slot: bool,
}

impl Queued {
    fn new(lane: &Arc<Lane>, metrics: &ServerMetrics) -> Self {
        let gauge = metrics.queue_depth.with_label_values(&[lane.route]);
        gauge.inc();
        Self {
            lane: Arc::clone(lane),
            gauge,
            holds_slot: true,
        }
    }

    /// A worker is free: the slot passes to the running request.
    fn admitted(mut self, permit: OwnedSemaphorePermit) -> Admission {
        self.holds_slot = false;
        Admission {
            lane: Arc::clone(&self.lane),
            _permit: permit,
        }
    }
}

impl Drop for Queued {
    fn drop(&mut self) {
        self.gauge.dec();
        if self.holds_slot {
            self.lane.admitted.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.lane.admitted.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Shared server state.
#[derive(Debug)]
pub struct AppState {
    engines: OnceLock<Engines>,
    config: ServerConfig,
    metrics: ServerMetrics,
    #[cfg_attr(not(feature = "llama"), allow(dead_code))]
    chat_lane: Arc<Lane>,
    #[cfg_attr(not(feature = "whisper"), allow(dead_code))]
    stt_lane: Arc<Lane>,
    tts_lane: Arc<Lane>,
    #[cfg_attr(not(feature = "llama"), allow(dead_code))]
    next_id: AtomicU64,
}

impl AppState {
    /// State with no engines yet: the server answers `/readyz` and model routes with 503
    /// until [`AppState::set_engines`] is called.
    pub fn new(config: ServerConfig) -> Result<Arc<Self>, prometheus::Error> {
        let lane = |route| {
            Arc::new(Lane {
                route,
                capacity: config.queue_capacity.max(1),
                admitted: AtomicUsize::new(0),
                workers: Arc::new(Semaphore::new(config.workers.max(1))),
            })
        };
        Ok(Arc::new(Self {
            engines: OnceLock::new(),
            metrics: ServerMetrics::new()?,
            chat_lane: lane("/v1/chat/completions"),
            stt_lane: lane("/v1/audio/transcriptions"),
            tts_lane: lane("/v1/audio/speech"),
            config,
            next_id: AtomicU64::new(1),
        }))
    }

    /// Installs the loaded engines (once); the server is ready afterwards.
    pub fn set_engines(&self, engines: Engines) -> bool {
        self.engines.set(engines).is_ok()
    }

    /// The server's metrics.
    pub fn metrics(&self) -> &ServerMetrics {
        &self.metrics
    }

    pub(crate) fn engines(&self) -> Result<&Engines, ApiError> {
        self.engines
            .get()
            .ok_or_else(|| ApiError::unavailable("the models are still loading", "model_loading"))
    }

    #[cfg_attr(not(feature = "llama"), allow(dead_code))]
    pub(crate) fn request_id(&self, prefix: &str) -> String {
        format!("{prefix}-{}", self.next_id.fetch_add(1, Ordering::Relaxed))
    }

    /// Takes a place in the lane (503 when it is full), then waits for a worker.
    async fn admit(&self, lane: &Arc<Lane>) -> Result<Admission, ApiError> {
        let before = lane.admitted.fetch_add(1, Ordering::AcqRel);
        if before >= lane.capacity {
            lane.admitted.fetch_sub(1, Ordering::AcqRel);
            return Err(ApiError::unavailable(
                format!(
                    "the server is busy: {} requests for {} are already queued or running",
                    lane.capacity, lane.route
                ),
                "queue_full",
            ));
        }
        // From here the slot is the caller's; a caller that stops waiting (a client gone, a
        // stream's stale decode dropped) gives it back through the guard's drop.
        let queued = Queued::new(lane, &self.metrics);
        let permit = Arc::clone(&lane.workers).acquire_owned().await;
        match permit {
            Ok(permit) => Ok(queued.admitted(permit)),
            Err(_) => Err(ApiError::unavailable(
                "the server is shutting down",
                "shutting_down",
            )),
        }
    }
}

pub(crate) fn unix_time() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Marks a streamed response: its duration is recorded when the stream ends.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Streamed;

/// A response whose body is whatever the engine thread sends on `rx`, marked
/// [`Streamed`]; the body ends when the sender is dropped.
pub(crate) fn streamed_response(
    rx: tokio::sync::mpsc::Receiver<bytes::Bytes>,
    headers: [(header::HeaderName, String); 2],
) -> Response {
    let stream = futures::StreamExt::map(crate::receiver_stream(rx), |b| {
        Ok::<_, std::convert::Infallible>(b)
    });
    let mut response = (headers, axum::body::Body::from_stream(stream)).into_response();
    response.extensions_mut().insert(Streamed);
    response
}

/// The HTTP routes.
pub fn router(state: Arc<AppState>) -> Router {
    let body_limit = state.config.max_body_bytes;
    Router::new()
        .route("/v1/chat/completions", post(chat::completions))
        .route("/v1/audio/transcriptions", post(transcribe::transcriptions))
        .route("/v1/audio/speech", post(speech::speech))
        .route("/v1/models", get(models))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .fallback(|uri: Uri| async move { ApiError::not_found(uri.path()) })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(middleware::from_fn_with_state(Arc::clone(&state), observe))
        .with_state(state)
}

/// Serves until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

async fn observe(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let started = Instant::now();
    let response = next.run(req).await;
    let code = response.status().as_u16().to_string();
    let m = state.metrics();
    m.requests_total.with_label_values(&[&route, &code]).inc();
    if response.extensions().get::<Streamed>().is_none() {
        m.request_seconds
            .with_label_values(&[&route, &code])
            .observe(started.elapsed().as_secs_f64());
    }
    response
}

async fn models(State(state): State<Arc<AppState>>) -> Response {
    let created = unix_time();
    let Ok(engines) = state.engines() else {
        return axum::Json(json!({"object": "list", "data": []})).into_response();
    };
    let mut data = Vec::new();
    let mut add = |ids: &[String]| {
        for id in ids {
            data.push(
                json!({"id": id, "object": "model", "created": created, "owned_by": "grokcast"}),
            );
        }
    };
    #[cfg(feature = "llama")]
    if engines.llm.is_some() {
        add(&state.config.llm_models);
    }
    #[cfg(feature = "whisper")]
    if engines.stt.is_some() {
        add(&state.config.stt_models);
    }
    if engines.tts.is_some() {
        add(&state.config.tts_models);
    }
    axum::Json(json!({"object": "list", "data": data})).into_response()
}

async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    match state.engines() {
        Ok(_) => (StatusCode::OK, "ready").into_response(),
        Err(e) => e.into_response(),
    }
}

async fn metrics_text(State(state): State<Arc<AppState>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics().render(),
    )
        .into_response()
}

/// Checks the requested model against the ids a route serves.
pub(crate) fn check_model(model: Option<&str>, served: &[String]) -> Result<(), ApiError> {
    match model.map(str::trim) {
        None | Some("") => Err(ApiError::missing("model")),
        Some(m) if served.iter().any(|s| s == m) => Ok(()),
        Some(m) => Err(ApiError::unknown_model(m, served)),
    }
}

/// A route whose engine this server was not started with.
pub(crate) fn not_served(what: &str) -> ApiError {
    let mut e = ApiError::not_found(what);
    e.message = format!("this server does not run {what} (see grokcast-serve --role)");
    e.code = Some("engine_not_served");
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_request_that_stops_waiting_gives_its_slot_back() {
        let state = AppState::new(ServerConfig {
            queue_capacity: 2,
            workers: 1,
            ..ServerConfig::default()
        })
        .unwrap();
        let lane = Arc::clone(&state.stt_lane);
        let running = state.admit(&lane).await.unwrap();
        // The second waits for the worker; its caller gives up (a stale decode dropped).
        let waiting =
            tokio::time::timeout(std::time::Duration::from_millis(20), state.admit(&lane));
        assert!(waiting.await.is_err(), "no worker is free");
        assert_eq!(lane.admitted.load(Ordering::Acquire), 1);
        let depth = state
            .metrics()
            .queue_depth
            .with_label_values(&[lane.route])
            .get();
        assert_eq!(depth, 0, "nobody is waiting any more");
        drop(running);
        // Both slots are free again: two requests fit, a third is refused.
        let first = state.admit(&lane).await.unwrap();
        let (waiter, waiter_lane) = (Arc::clone(&state), Arc::clone(&lane));
        let second = tokio::spawn(async move { waiter.admit(&waiter_lane).await.map(|_| ()) });
        while lane.admitted.load(Ordering::Acquire) < 2 {
            tokio::task::yield_now().await;
        }
        assert!(state.admit(&lane).await.is_err(), "the lane holds two");
        drop(first);
        second.await.unwrap().unwrap();
    }
}
