//! "Instant" model servers: a test double for the GPU model pools (vLLM for chat, a Whisper
//! server for transcription, CSM or another TTS server for speech). They answer at once over
//! the same OpenAI-compatible HTTP protocol the agent uses in production, so tests and the
//! benchmark measure the agent itself. Failures and delays can be switched on per stage to
//! test what the caller hears when a model server is down or slow.
//!
//! Speech is a voiced synthetic signal (a 140 Hz harmonic series with a syllable envelope),
//! 24 kHz 16-bit PCM like OpenAI's `pcm` format, 55 ms per character of text.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::Deserialize;

/// Sample rate of the speech the double returns.
pub const SPEECH_RATE: u32 = 24_000;

/// How one stage behaves.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StageBehaviour {
    /// Answer with HTTP 503.
    pub fail: bool,
    /// Wait this long before answering.
    pub delay: Duration,
}

/// Behaviour of all three stages and what they say.
#[derive(Debug, Clone, PartialEq)]
pub struct InstantBehaviour {
    /// What every transcription returns.
    pub transcript: String,
    /// What every chat reply says (streamed word by word).
    pub reply: String,
    /// Transcription.
    pub stt: StageBehaviour,
    /// Chat.
    pub llm: StageBehaviour,
    /// Speech.
    pub tts: StageBehaviour,
}

impl Default for InstantBehaviour {
    fn default() -> Self {
        Self {
            transcript: "What are your opening hours?".into(),
            reply: "We are open from nine to five. Is there anything else?".into(),
            stt: StageBehaviour::default(),
            llm: StageBehaviour::default(),
            tts: StageBehaviour::default(),
        }
    }
}

/// Requests served, by stage.
#[derive(Debug, Default)]
pub struct InstantCounts {
    /// Transcriptions.
    pub stt: AtomicU64,
    /// Chat completions.
    pub llm: AtomicU64,
    /// Speech requests.
    pub tts: AtomicU64,
}

/// Shared handle to a running double.
#[derive(Debug, Clone, Default)]
pub struct InstantServers {
    /// Current behaviour; change it while the server runs.
    pub behaviour: Arc<Mutex<InstantBehaviour>>,
    /// Requests served.
    pub counts: Arc<InstantCounts>,
    /// The `messages` of every chat request, in order (what the agent's history was).
    pub conversations: Arc<Mutex<Vec<Vec<serde_json::Value>>>>,
}

impl InstantServers {
    fn behaviour(&self) -> InstantBehaviour {
        self.behaviour
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Changes the behaviour.
    pub fn set(&self, change: impl FnOnce(&mut InstantBehaviour)) {
        change(&mut self.behaviour.lock().unwrap_or_else(|p| p.into_inner()));
    }

    /// The routes, under `/v1`.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/v1/chat/completions", post(chat))
            .route("/v1/audio/transcriptions", post(transcribe))
            .route("/v1/audio/speech", post(speech))
            .with_state(self.clone())
    }

    /// Serves on `listener` until the task is dropped.
    pub async fn serve(self, listener: tokio::net::TcpListener) -> std::io::Result<()> {
        axum::serve(listener, self.router()).await
    }
}

async fn gate(stage: &StageBehaviour) -> Result<(), Response> {
    if !stage.delay.is_zero() {
        tokio::time::sleep(stage.delay).await;
    }
    if stage.fail {
        return Err((
            StatusCode::SERVICE_UNAVAILABLE,
            r#"{"error":{"message":"model server down (test double)"}}"#,
        )
            .into_response());
    }
    Ok(())
}

async fn transcribe(State(s): State<InstantServers>, body: Bytes) -> Response {
    s.counts.stt.fetch_add(1, Ordering::Relaxed);
    let b = s.behaviour();
    if let Err(r) = gate(&b.stt).await {
        return r;
    }
    // The agent sends multipart with a WAV file part; anything else is a client bug.
    if !body.windows(4).any(|w| w == b"RIFF") {
        return (
            StatusCode::BAD_REQUEST,
            r#"{"error":{"message":"no WAV file part"}}"#,
        )
            .into_response();
    }
    axum::Json(serde_json::json!({ "text": b.transcript })).into_response()
}

#[derive(Deserialize)]
struct ChatRequest {
    messages: Vec<serde_json::Value>,
    #[serde(default)]
    stream: bool,
}

async fn chat(
    State(s): State<InstantServers>,
    axum::Json(request): axum::Json<ChatRequest>,
) -> Response {
    s.counts.llm.fetch_add(1, Ordering::Relaxed);
    let b = s.behaviour();
    if let Err(r) = gate(&b.llm).await {
        return r;
    }
    if request.messages.is_empty() || !request.stream {
        return (
            StatusCode::BAD_REQUEST,
            r#"{"error":{"message":"messages and stream:true required"}}"#,
        )
            .into_response();
    }
    s.conversations
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(request.messages);
    let mut body = String::new();
    for word in b.reply.split_inclusive(' ') {
        let chunk = serde_json::json!({
            "id": "chatcmpl-instant", "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": {"content": word}, "finish_reason": null}],
        });
        body.push_str(&format!("data: {chunk}\n\n"));
    }
    body.push_str("data: [DONE]\n\n");
    ([(header::CONTENT_TYPE, "text/event-stream")], body).into_response()
}

#[derive(Deserialize)]
struct SpeechRequest {
    input: String,
}

/// Voiced test signal for `text`, 16-bit little-endian at [`SPEECH_RATE`].
pub fn synthetic_speech(text: &str) -> Vec<u8> {
    let samples = (text.chars().count() as u64 * 55 * u64::from(SPEECH_RATE) / 1000) as usize;
    let mut out = Vec::with_capacity(samples * 2);
    for i in 0..samples {
        let t = i as f32 / SPEECH_RATE as f32;
        let envelope = (std::f32::consts::PI * t * 4.0).sin().abs();
        let voice: f32 = (1..=6)
            .map(|h| (2.0 * std::f32::consts::PI * 140.0 * h as f32 * t).sin() / h as f32)
            .sum();
        let sample = (voice * envelope * 0.25 * 32767.0) as i16;
        out.extend_from_slice(&sample.to_le_bytes());
    }
    out
}

async fn speech(
    State(s): State<InstantServers>,
    axum::Json(request): axum::Json<SpeechRequest>,
) -> Response {
    s.counts.tts.fetch_add(1, Ordering::Relaxed);
    let b = s.behaviour();
    if let Err(r) = gate(&b.tts).await {
        return r;
    }
    if request.input.trim().is_empty() {
        return (
            StatusCode::BAD_REQUEST,
            r#"{"error":{"message":"input is empty"}}"#,
        )
            .into_response();
    }
    let pcm = synthetic_speech(&request.input);
    // Streamed in 100 ms pieces, as a streaming TTS server would.
    let pieces: Vec<Result<Bytes, std::io::Error>> = pcm
        .chunks(SPEECH_RATE as usize / 10 * 2)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    Response::builder()
        .header(header::CONTENT_TYPE, "audio/pcm")
        .body(Body::from_stream(futures::stream::iter(pieces)))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}
