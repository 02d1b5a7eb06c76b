//! An agent on this machine, on the instant model servers: what the harness's tests start.

use std::sync::Arc;
use std::time::Duration;

use grokcast_agent::config::AgentConfig;
use grokcast_agent::context::CallContext;
use grokcast_agent::metrics::Metrics;
use grokcast_agent::server::{self, AgentState};
use grokcast_agent::startup;
use tokio::sync::oneshot;

use crate::instant::InstantServers;

/// Serves `servers` on a free local port; returns their `/v1` base URL.
pub async fn serve_models(servers: &InstantServers) -> anyhow::Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/v1", listener.local_addr()?);
    tokio::spawn(servers.clone().serve(listener));
    Ok(url)
}

/// Points every model stage of `config` at the model servers at `models_url` (the instant
/// doubles, in tests), with a stage timeout short enough for a test to see it fire.
pub fn use_models_at(config: &mut AgentConfig, models_url: &str) {
    for stage in [
        &mut config.stt.stage,
        &mut config.llm.stage,
        &mut config.tts.stage,
    ] {
        stage.url = models_url.to_string();
        stage.timeout_ms = 2000;
    }
}

/// What a call needs, built from `config` as the agent builds it at start-up (validated, the
/// VAD, the backends, the end-of-turn model the configuration names).
pub fn call_context(config: AgentConfig) -> anyhow::Result<CallContext> {
    config.validate()?;
    let vad = startup::load_vad(&config)?;
    let turn_model = startup::load_turn_model(&config)?;
    let backends = startup::build_backends(&config)?;
    let metrics = Metrics::new("receptionist", "voice")?;
    Ok(CallContext::new(config, backends, vad, metrics).with_turn_model(turn_model))
}

/// An agent serving every route on a local port, on the model servers it was started with.
pub struct LocalAgent {
    /// Its base URL (also its `publicUrl`).
    pub url: String,
    /// Its state.
    pub state: Arc<AgentState>,
    /// Sending on it starts the drain that stops the server.
    pub stop: Option<oneshot::Sender<()>>,
    /// The server, until it has drained.
    pub task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl LocalAgent {
    /// Starts an agent on `servers` (served here first), with a Twilio token and the
    /// configuration `adjust` leaves; returns once it is ready (its phrases synthesised), or
    /// after 10 s if it never is.
    pub async fn start(
        servers: &InstantServers,
        adjust: impl FnOnce(&mut AgentConfig),
    ) -> anyhow::Result<Self> {
        let models_url = serve_models(servers).await?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let url = format!("http://{address}");
        let mut config = AgentConfig {
            public_url: url.clone(),
            listen_addr: address.to_string(),
            twilio_auth_token: Some("test-twilio-token".into()),
            ..AgentConfig::default()
        };
        use_models_at(&mut config, &models_url);
        adjust(&mut config);
        let state = Arc::new(AgentState::new(call_context(config)?));
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server::serve(listener, state.clone(), async {
            let _ = stopped.await;
        }));
        let http = reqwest::Client::new();
        for _ in 0..200 {
            let ready = http.get(format!("{url}/readyz")).send().await;
            if ready.is_ok_and(|r| r.status().is_success()) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(Self {
            url,
            state,
            stop: Some(stop),
            task,
        })
    }

    /// [`idle_metrics`] of this agent.
    pub async fn idle_metrics(&self) -> anyhow::Result<String> {
        idle_metrics(&self.url).await
    }
}

/// The `/metrics` of the agent at `url` once no call is active. A caller returns when it
/// hangs up; the agent counts the call's outcome a moment later, as it releases the call
/// slot, so reading at once would race with that. After 10 s it answers whatever it reads.
pub async fn idle_metrics(url: &str) -> anyhow::Result<String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = reqwest::get(format!("{url}/metrics")).await?.text().await?;
        let active = crate::metric(&text, "grokcast_active_calls", &[]);
        if active == Some(0.0) || tokio::time::Instant::now() >= deadline {
            return Ok(text);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
