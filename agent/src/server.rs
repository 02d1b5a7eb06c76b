//! The agent's HTTP side: the Twilio voice webhook, the Media Streams WebSocket, metrics,
//! health, readiness, and draining on shutdown.

use std::collections::HashMap;
use std::future::IntoFuture as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::ws::{WebSocket, WebSocketUpgrade};
use axum::extract::{Form, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, error, info, info_span, warn};

use crate::call;
use crate::context::CallContext;
use crate::metrics::Outcome;
use crate::playground;
use crate::twilio::media_stream;
use crate::twilio::protocol::MAX_MESSAGE_BYTES;
use crate::twilio::signature::RequestValidator;
use crate::twilio::twiml;

/// The agent's HTTP side: the front door (signature checks, one-time stream tokens, call
/// slots, draining) around the [`CallContext`] every call gets.
pub struct AgentState {
    context: Arc<CallContext>,
    validator: Option<RequestValidator>,
    /// One-time Media Stream tokens; on whenever signatures are checked.
    stream_tokens: Option<crate::twilio::stream_token::StreamTokens>,
    active: AtomicUsize,
    draining: AtomicBool,
}

/// The server's state reads as the calls' context (`state.config`, `state.metrics`): the
/// front door only adds to it.
impl std::ops::Deref for AgentState {
    type Target = CallContext;

    fn deref(&self) -> &CallContext {
        &self.context
    }
}

impl AgentState {
    /// Builds the server around the calls' context. Without an auth token, signature checks
    /// are off, which [`crate::config::AgentConfig::validate`] only allows with the explicit
    /// insecure flag.
    pub fn new(context: CallContext) -> Self {
        let config = &context.config;
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
            context: Arc::new(context),
            validator,
            stream_tokens,
            active: AtomicUsize::new(0),
            draining: AtomicBool::new(false),
        }
    }

    /// The context calls run in.
    pub fn context(&self) -> Arc<CallContext> {
        self.context.clone()
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
        if !self.clips_ready() {
            return Err("warming up: greeting and apology not synthesised yet");
        }
        Ok(())
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

/// The public routes: Twilio's voice webhook and Media Streams WebSocket, and the browser
/// playground (404 unless enabled).
pub fn twilio_router(state: Arc<AgentState>) -> Router {
    Router::new()
        .route("/twilio/voice", post(voice))
        .route("/twilio/stream", get(stream))
        .route("/playground", get(playground_page))
        .route("/playground/socket", get(playground_socket))
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

impl Slot {
    /// Takes one of the pod's `maxCalls` slots, phone call or playground session alike, before
    /// the upgrade, so concurrent upgrades cannot overshoot it; the refusal when none is free.
    // The refusal is the handler's whole answer, built once per refused call: boxing it
    // would only add an allocation.
    #[allow(clippy::result_large_err)]
    fn reserve(state: &Arc<AgentState>) -> Result<Self, Response> {
        if state.draining() {
            state.metrics.call_ended(Outcome::Rejected);
            return Err((StatusCode::SERVICE_UNAVAILABLE, "draining").into_response());
        }
        let previous = state.active.fetch_add(1, Ordering::Relaxed);
        if previous >= state.config.max_calls {
            state.active.fetch_sub(1, Ordering::Relaxed);
            state.metrics.call_ended(Outcome::Rejected);
            return Err((StatusCode::SERVICE_UNAVAILABLE, "busy").into_response());
        }
        state.metrics.active_calls.inc();
        Ok(Slot(state.clone()))
    }
}

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
    let slot = match Slot::reserve(&state) {
        Ok(slot) => slot,
        Err(refusal) => return refusal,
    };
    upgrade
        .max_message_size(MAX_MESSAGE_BYTES * 2)
        .max_frame_size(MAX_MESSAGE_BYTES * 2)
        .on_upgrade(move |socket| async move {
            let state = slot.0.clone();
            let outcome = media_stream_call(&state, socket).await;
            state.metrics.call_ended(outcome);
            drop(slot);
        })
}

/// One Media Streams call: `start`, its one-time token, then the call itself.
async fn media_stream_call(state: &AgentState, socket: WebSocket) -> Outcome {
    let accepted = match media_stream::accept(socket).await {
        Ok(accepted) => accepted,
        Err(media_stream::Refused::Closed) => return Outcome::Disconnected,
        Err(e) => {
            warn!(error = %e, "call refused before start");
            return Outcome::ProtocolError;
        }
    };
    let start = accepted.start;
    let token = start
        .custom_parameters
        .get(crate::twilio::stream_token::PARAMETER)
        .map(String::as_str);
    if let Err(e) = state.redeem_stream_token(token, &start.call_sid) {
        warn!(call_sid = %start.call_sid, error = %e, "stream refused");
        return Outcome::ProtocolError;
    }
    let span = info_span!("call", transport = "twilio", call_sid = %start.call_sid, stream_sid = %start.stream_sid);
    async move {
        info!(parameters = ?start.custom_parameters.keys().collect::<Vec<_>>(), "call started");
        let settings = call::CallSettings {
            call_sid: Some(start.call_sid.clone()),
            ..call::CallSettings::default()
        };
        let outcome = call::run(
            state.context(),
            settings,
            accepted.from_caller,
            accepted.to_caller,
        )
        .await;
        info!(outcome = outcome.label(), "call ended");
        outcome
    }
    .instrument(span)
    .await
}

/// The playground's page: static, holding no secret (404 unless the playground is enabled).
async fn playground_page(State(state): State<Arc<AgentState>>) -> Response {
    if !state.config.playground.enabled {
        return StatusCode::NOT_FOUND.into_response();
    }
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            // The page loads nothing from elsewhere and talks only to this agent.
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src data:",
            ),
            (header::X_FRAME_OPTIONS, "DENY"),
        ],
        playground::PAGE,
    )
        .into_response()
}

/// The playground's socket: 404 unless enabled, 401 without the token, then a call slot like
/// a phone call's.
async fn playground_socket(
    State(state): State<Arc<AgentState>>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    if !state.config.playground.enabled {
        return StatusCode::NOT_FOUND.into_response();
    }
    let offered = headers
        .get(header::SEC_WEBSOCKET_PROTOCOL)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let authorised = state
        .config
        .playground_token
        .as_ref()
        .is_some_and(|token| playground::token_offered(offered, token.expose()));
    if !authorised {
        warn!("refused a playground session without a valid token");
        return (StatusCode::UNAUTHORIZED, "a playground token is needed").into_response();
    }
    let slot = match Slot::reserve(&state) {
        Ok(slot) => slot,
        Err(refusal) => return refusal,
    };
    upgrade
        .protocols([playground::PROTOCOL])
        .max_message_size(playground::MAX_MESSAGE_BYTES)
        .max_frame_size(playground::MAX_MESSAGE_BYTES)
        .on_upgrade(move |socket| async move {
            let state = slot.0.clone();
            let outcome = playground_call(&state, socket).await;
            state.metrics.call_ended(outcome);
            drop(slot);
        })
}

/// One playground session: `start`, then the call, then the close (with the page's error).
async fn playground_call(state: &AgentState, socket: WebSocket) -> Outcome {
    let session = match playground::accept(socket).await {
        Ok(session) => session,
        Err(playground::PlaygroundError::Closed) => return Outcome::Disconnected,
        Err(e) => {
            warn!(error = %e, "playground session refused before start");
            return Outcome::ProtocolError;
        }
    };
    static SESSIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let number = SESSIONS.fetch_add(1, Ordering::Relaxed) + 1;
    let span = info_span!("call", transport = "playground", session = number);
    async move {
        info!(
            own_prompt = session.settings.system_prompt.is_some(),
            own_voice = session.settings.voice.is_some(),
            "playground session started"
        );
        let outcome = call::run(
            state.context(),
            session.settings,
            session.from_caller,
            session.to_caller,
        )
        .await;
        session.closer.close().await;
        info!(outcome = outcome.label(), "playground session ended");
        outcome
    }
    .instrument(span)
    .await
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
