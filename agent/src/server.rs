//! The agent's HTTP side: the Twilio voice webhook, the Media Streams WebSocket, metrics,
//! health, readiness, and draining on shutdown.

use std::collections::HashMap;
use std::future::IntoFuture as _;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Form, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use grokcast_engines::vad::SileroVad;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::backend::Backends;
use crate::call::{self, TurnSample, TurnTimings};
use crate::clips::Clips;
use crate::config::{AgentConfig, EndOfTurnModel};
use crate::metrics::{Metrics, Outcome, Stage};
use crate::twilio::protocol::MAX_MESSAGE_BYTES;
use crate::twilio::signature::RequestValidator;
use crate::twilio::twiml;

/// Everything calls share.
pub struct AgentState {
    /// Settings.
    pub config: AgentConfig,
    /// Model backends.
    pub backends: Backends,
    /// The VAD model (state is per call), run over every call's chunks in shared batches.
    pub vad_batch: crate::vad_batch::VadBatcher,
    /// Metrics.
    pub metrics: Metrics,
    /// Cancelled when live calls must say goodbye and end.
    pub goodbye: CancellationToken,
    validator: Option<RequestValidator>,
    /// One-time Media Stream tokens; on whenever signatures are checked.
    stream_tokens: Option<crate::twilio::stream_token::StreamTokens>,
    clips: OnceLock<Clips>,
    active: AtomicUsize,
    draining: AtomicBool,
    samples: Option<Mutex<Vec<TurnSample>>>,
    transcript: Option<Mutex<Vec<(String, String)>>>,
    turn_model: Option<Arc<grokcast_engines::smart_turn::SmartTurn>>,
    /// End-of-turn judgements running at once, over every call: one per core, so a burst of
    /// pauses queues instead of taking every core (and a model session each) at once.
    turn_judgements: Arc<tokio::sync::Semaphore>,
}

/// What judges whether the caller has finished, at each pause.
#[derive(Clone)]
pub enum TurnJudge {
    /// Smart Turn v3.2 on the caller's audio, on this pod's CPU.
    Audio(Arc<grokcast_engines::smart_turn::SmartTurn>),
    /// The LLM pool on the caller's words ([`crate::backend::Llm::turn_end_probability`]):
    /// the pause ends the turn when the probability is at least `threshold`.
    Words {
        /// `turnTaking.llmEndOfTurnThreshold`.
        threshold: f32,
    },
}

impl AgentState {
    /// Builds the shared state. Without an auth token, signature checks are off, which
    /// [`AgentConfig::validate`] only allows with the explicit insecure flag.
    pub fn new(
        config: AgentConfig,
        backends: Backends,
        vad: Arc<SileroVad>,
        metrics: Metrics,
    ) -> Self {
        let validator = config
            .twilio_auth_token
            .as_ref()
            .map(|t| RequestValidator::new(t.expose()));
        let stream_tokens = config.twilio_auth_token.as_ref().map(|t| {
            crate::twilio::stream_token::StreamTokens::new(
                t.expose(),
                &format!("{}/{}", config.namespace, config.voice_agent),
                crate::twilio::stream_token::TOKEN_LIFETIME,
            )
        });
        Self {
            config,
            backends,
            vad_batch: crate::vad_batch::VadBatcher::new(vad),
            metrics,
            goodbye: CancellationToken::new(),
            validator,
            stream_tokens,
            clips: OnceLock::new(),
            active: AtomicUsize::new(0),
            draining: AtomicBool::new(false),
            samples: None,
            transcript: None,
            turn_model: None,
            turn_judgements: Arc::new(tokio::sync::Semaphore::new(
                std::thread::available_parallelism().map_or(1, usize::from),
            )),
        }
    }

    /// Judges the caller's pauses with this end-of-turn model (from
    /// [`crate::startup::load_turn_model`]); without one, silence alone ends turns.
    pub fn with_turn_model(
        mut self,
        model: Option<Arc<grokcast_engines::smart_turn::SmartTurn>>,
    ) -> Self {
        self.turn_model = model;
        self
    }

    /// What judges the caller's pauses (`turnTaking.endOfTurnModel`); `None` when silence
    /// alone ends turns (no model configured, or Smart Turn not loaded).
    pub fn turn_judge(&self) -> Option<TurnJudge> {
        match self.config.turn_taking.end_of_turn_model {
            EndOfTurnModel::None => None,
            EndOfTurnModel::SmartTurn => self.turn_model.clone().map(TurnJudge::Audio),
            EndOfTurnModel::Llm => Some(TurnJudge::Words {
                threshold: self.config.turn_taking.llm_end_of_turn_threshold,
            }),
        }
    }

    /// Accepts a stream's one-time token for its call (always, when signatures are off).
    pub fn redeem_stream_token(
        &self,
        token: Option<&str>,
        call_sid: &str,
    ) -> Result<(), crate::twilio::stream_token::TokenError> {
        match &self.stream_tokens {
            Some(tokens) => tokens.redeem(token, call_sid, std::time::SystemTime::now()),
            None => Ok(()),
        }
    }

    /// Permits for end-of-turn judgements (one per core).
    pub fn turn_judgements(&self) -> Arc<tokio::sync::Semaphore> {
        self.turn_judgements.clone()
    }

    /// Each call's turn-taking thresholds: the configuration's, with pauses judged by the
    /// model only where one is loaded, and interruptions held for their words only where
    /// STT streams (nothing else gives words while the caller speaks).
    pub fn turn_taking(&self) -> crate::turn::TurnTaking {
        let mut t = self.config.turn_taking.turn_taking();
        if self.turn_judge().is_none() {
            t.semantic = None;
        }
        if self.backends.stt_stream.is_none() {
            t.interruption_words = None;
        }
        t
    }

    /// Keeps every turn's latency figures in memory (the benchmark reads them).
    pub fn record_turns(mut self) -> Self {
        self.samples = Some(Mutex::new(Vec::new()));
        self
    }

    /// Keeps who said what in memory (the local demo prints it).
    pub fn record_transcript(mut self) -> Self {
        self.transcript = Some(Mutex::new(Vec::new()));
        self
    }

    /// (speaker, text) pairs recorded so far, if recording.
    pub fn take_transcript(&self) -> Vec<(String, String)> {
        self.transcript
            .as_ref()
            .map(|s| std::mem::take(&mut *s.lock().unwrap_or_else(|p| p.into_inner())))
            .unwrap_or_default()
    }

    /// Notes what someone said: logged only when `logTranscripts` is on, kept only when
    /// recording.
    pub(crate) fn said(&self, who: &str, text: &str) {
        if self.config.log_transcripts {
            info!(speaker = who, text, "transcript");
        }
        if let Some(t) = &self.transcript {
            t.lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((who.to_string(), text.to_string()));
        }
    }

    /// Turn figures recorded so far, if recording.
    pub fn take_turn_samples(&self) -> Vec<TurnSample> {
        self.samples
            .as_ref()
            .map(|s| std::mem::take(&mut *s.lock().unwrap_or_else(|p| p.into_inner())))
            .unwrap_or_default()
    }

    /// The cached phrases, once synthesised.
    pub fn clips(&self) -> Option<Clips> {
        self.clips.get().cloned()
    }

    /// Calls in progress.
    pub fn active_calls(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// Whether the pod stopped taking calls.
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Stops taking calls (SIGTERM).
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    fn ready(&self) -> Result<(), &'static str> {
        if self.draining() {
            return Err("draining");
        }
        if self.active_calls() >= self.config.max_calls {
            return Err("full");
        }
        if self.clips.get().is_none() {
            return Err("warming up: greeting and apology not synthesised yet");
        }
        Ok(())
    }

    /// Synthesises the fixed phrases, retrying until the TTS backend answers.
    pub async fn prepare_clips(&self) {
        let persona = &self.config.persona;
        let mut wait = Duration::from_millis(200);
        loop {
            match Clips::synthesize(
                &*self.backends.tts,
                &persona.greeting,
                &persona.apology,
                &persona.goodbye,
            )
            .await
            {
                Ok(clips) => {
                    let _ = self.clips.set(clips);
                    info!("greeting, apology and goodbye synthesised");
                    return;
                }
                Err(e) => {
                    warn!(error = %e, retry_in = ?wait, "cannot synthesise the fixed phrases yet");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// Records a turn whose first frame was just sent.
    pub(crate) fn observe_turn(&self, t: TurnTimings, sent: Instant) {
        let latency = sent.saturating_duration_since(t.caller_stopped);
        let model = t.endpointing + t.stt + t.llm_first_clause + t.tts_first_audio;
        let agent = latency.saturating_sub(model);
        self.metrics.observe_turn(latency);
        self.metrics
            .stage(Stage::Endpointing, t.endpointing.as_secs_f64());
        self.metrics.stage(Stage::Stt, t.stt.as_secs_f64());
        self.metrics
            .stage(Stage::TtsFirstAudio, t.tts_first_audio.as_secs_f64());
        self.metrics.stage(Stage::Agent, agent.as_secs_f64());
        info!(
            latency_ms = latency.as_millis() as u64,
            endpointing_ms = t.endpointing.as_millis() as u64,
            stt_ms = t.stt.as_millis() as u64,
            llm_first_token_ms = t.llm_first_token.as_millis() as u64,
            llm_first_clause_ms = t.llm_first_clause.as_millis() as u64,
            tts_first_audio_ms = t.tts_first_audio.as_millis() as u64,
            agent_ms = agent.as_secs_f64() * 1000.0,
            "first audio of the turn sent"
        );
        if let Some(samples) = &self.samples {
            samples
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(TurnSample {
                    latency,
                    agent,
                    timings: t,
                });
        }
    }

    /// Checks `X-Twilio-Signature` for a request to `path_and_query` under `base`; the
    /// refusal to answer with when it does not match.
    fn signature_refusal(
        &self,
        base: &str,
        path_and_query: &str,
        params: &[(String, String)],
        headers: &HeaderMap,
    ) -> Option<Response> {
        let validator = self.validator.as_ref()?;
        let url = format!("{}{}", base.trim_end_matches('/'), path_and_query);
        let signature = headers
            .get("x-twilio-signature")
            .and_then(|v| v.to_str().ok());
        validator.validate(&url, params, signature).err().map(|e| {
            warn!(error = %e, "refused a request with a bad Twilio signature");
            (StatusCode::FORBIDDEN, "invalid Twilio signature").into_response()
        })
    }
}

/// The Twilio-facing routes: the voice webhook and the Media Streams WebSocket.
pub fn twilio_router(state: Arc<AgentState>) -> Router {
    Router::new()
        .route("/twilio/voice", post(voice))
        .route("/twilio/stream", get(stream))
        .with_state(state)
}

/// The admin routes: `/metrics`, `/healthz` and `/readyz`, for Prometheus and the kubelet.
pub fn admin_router(state: Arc<AgentState>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(state)
}

/// Every route on one listener, for local runs and tests (`serve`).
pub fn router(state: Arc<AgentState>) -> Router {
    twilio_router(state.clone()).merge(admin_router(state))
}

/// Alive unless the VAD batcher has died: without it no call can be heard, and only a
/// restart brings it back.
async fn healthz(State(state): State<Arc<AgentState>>) -> Response {
    if state.vad_batch.is_alive() {
        "ok".into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "voice activity detection has stopped",
        )
            .into_response()
    }
}

fn twiml_response(xml: String) -> Response {
    ([(header::CONTENT_TYPE, "text/xml")], xml).into_response()
}

async fn voice(
    State(state): State<Arc<AgentState>>,
    uri: Uri,
    headers: HeaderMap,
    Form(params): Form<Vec<(String, String)>>,
) -> Response {
    let path = uri.path_and_query().map_or("/twilio/voice", |p| p.as_str());
    if let Some(response) =
        state.signature_refusal(&state.config.public_url, path, &params, &headers)
    {
        return response;
    }
    if state.ready().is_err() {
        state.metrics.call_ended(Outcome::Rejected);
        return twiml_response(twiml::reject_busy());
    }
    let lookup: HashMap<&str, &str> = params
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let stream_url = state.config.stream_url();
    let call_sid = lookup.get("CallSid").copied().unwrap_or("");
    // The stream's upgrade is signed over a URL every call shares; this call's own token
    // comes back in its `start` and opens one stream, once (twilio::stream_token).
    let token = state
        .stream_tokens
        .as_ref()
        .map(|t| t.mint(call_sid, std::time::SystemTime::now()));
    let mut parameters = vec![
        ("voiceagent", state.config.voice_agent.as_str()),
        ("from", lookup.get("From").copied().unwrap_or("")),
        ("callSid", call_sid),
    ];
    if let Some(token) = &token {
        parameters.push((crate::twilio::stream_token::PARAMETER, token.as_str()));
    }
    let xml = twiml::connect_stream(&stream_url, &parameters);
    twiml_response(xml)
}

/// Releases the call slot however the call task ends.
struct Slot(Arc<AgentState>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
        self.0.metrics.active_calls.dec();
    }
}

async fn stream(
    State(state): State<Arc<AgentState>>,
    uri: Uri,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    let path = uri
        .path_and_query()
        .map_or("/twilio/stream", |p| p.as_str());
    let base = state.config.stream_url();
    let base = base.trim_end_matches("/twilio/stream");
    if let Some(response) = state.signature_refusal(base, path, &[], &headers) {
        return response;
    }
    if state.draining() {
        state.metrics.call_ended(Outcome::Rejected);
        return (StatusCode::SERVICE_UNAVAILABLE, "draining").into_response();
    }
    // Reserve the slot before upgrading so concurrent upgrades cannot overshoot maxCalls.
    let previous = state.active.fetch_add(1, Ordering::Relaxed);
    if previous >= state.config.max_calls {
        state.active.fetch_sub(1, Ordering::Relaxed);
        state.metrics.call_ended(Outcome::Rejected);
        return (StatusCode::SERVICE_UNAVAILABLE, "busy").into_response();
    }
    state.metrics.active_calls.inc();
    let slot = Slot(state.clone());
    upgrade
        .max_message_size(MAX_MESSAGE_BYTES * 2)
        .max_frame_size(MAX_MESSAGE_BYTES * 2)
        .on_upgrade(move |socket| async move {
            let state = slot.0.clone();
            let outcome = call::run(state.clone(), socket).await;
            state.metrics.call_ended(outcome);
            drop(slot);
        })
}

async fn metrics(State(state): State<Arc<AgentState>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

async fn readyz(State(state): State<Arc<AgentState>>) -> Response {
    match state.ready() {
        Ok(()) => "ready".into_response(),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, why).into_response(),
    }
}

/// Serves every route on `listener` (local runs and tests) until `shutdown` resolves, then
/// drains: no new calls, live calls get `drainTimeoutSeconds` to finish, then hear the
/// goodbye and are closed.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<AgentState>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    start(&state);
    let drain_state = state.clone();
    let drained = async move {
        shutdown.await;
        drain(&drain_state).await;
    };
    axum::serve(listener, router(state))
        .with_graceful_shutdown(drained)
        .await
}

/// Like [`serve`], with the Twilio routes on `twilio` and the admin routes on `admin` (as in
/// a pod: only the Twilio port is exposed to the internet). The admin listener outlives the
/// drain, so `/readyz` says 503 and `/metrics` counts until the last call has ended.
pub async fn serve_apart(
    twilio: tokio::net::TcpListener,
    admin: tokio::net::TcpListener,
    state: Arc<AgentState>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    start(&state);
    let admin_done = CancellationToken::new();
    let admin_stop = admin_done.clone();
    let admin_server = tokio::spawn(
        axum::serve(admin, admin_router(state.clone()))
            .with_graceful_shutdown(async move { admin_stop.cancelled().await })
            .into_future(),
    );
    let drain_state = state.clone();
    let drained = async move {
        shutdown.await;
        drain(&drain_state).await;
    };
    let served = axum::serve(twilio, twilio_router(state))
        .with_graceful_shutdown(drained)
        .await;
    admin_done.cancel();
    let admin_served = match admin_server.await {
        Ok(result) => result,
        Err(e) => Err(std::io::Error::other(format!(
            "the admin listener failed: {e}"
        ))),
    };
    served.and(admin_served)
}

/// What both ways of serving do first: warn when signatures are off, and synthesise the
/// fixed phrases in the background.
fn start(state: &Arc<AgentState>) {
    if state.validator.is_none() {
        error!(
            "TWILIO SIGNATURE CHECKS ARE OFF (GROKCAST_INSECURE_SKIP_SIGNATURE=true): anyone can place calls on this agent"
        );
    }
    let state = state.clone();
    tokio::spawn(async move { state.prepare_clips().await });
}

/// Stops taking calls and waits for live ones, saying goodbye after the deadline.
pub async fn drain(state: &AgentState) {
    state.start_draining();
    let deadline = Instant::now() + Duration::from_secs(state.config.drain_timeout_seconds);
    info!(
        live_calls = state.active_calls(),
        deadline_s = state.config.drain_timeout_seconds,
        "draining"
    );
    while state.active_calls() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if state.active_calls() > 0 {
        info!(
            live_calls = state.active_calls(),
            "drain deadline passed; saying goodbye"
        );
        state.goodbye.cancel();
        let hard_stop = Instant::now() + Duration::from_secs(15);
        while state.active_calls() > 0 && Instant::now() < hard_stop {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    info!("drained");
}
