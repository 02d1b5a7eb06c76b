//! `grokcast-agent serve` answers Twilio calls. The simulated caller, the instant model servers
//! and the demo are `grokcast-harness`'s.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use grokcast_agent::config::AgentConfig;
use grokcast_agent::context::CallContext;
use grokcast_agent::metrics::Metrics;
use grokcast_agent::server::{self, AgentState};
use grokcast_agent::startup;
use grokcast_agent::traces::Traces;

#[derive(Parser)]
#[command(name = "grokcast-agent", version, about = "GrokCast voice agent")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Answer Twilio Media Streams calls.
    Serve {
        /// agent.yaml (the operator mounts it from a ConfigMap); environment variables override it.
        #[arg(long, env = "GROKCAST_CONFIG")]
        config: Option<PathBuf>,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Serve { config } => serve(config).await,
    }
}

async fn serve(config_path: Option<PathBuf>) -> anyhow::Result<()> {
    // The log starts once the configuration says where traces go (a configuration error is
    // printed by main's error return).
    let config = AgentConfig::load(config_path.as_deref(), &|k| std::env::var(k).ok())?;
    let metrics = Metrics::new(&config.voice_agent, &config.namespace)?;
    let (traces, layer) = Traces::start(&config, &metrics)?.unzip();
    startup::init_tracing_with(layer);
    if traces.is_some() {
        tracing::info!(endpoint = %config.tracing.endpoint, sample_ratio = config.tracing.sample_ratio, "sending call traces over OTLP");
    }
    let vad = startup::load_vad(&config)?;
    let turn_model = startup::load_turn_model(&config)?;
    let backends = startup::build_backends(&config)?;
    metrics.set_turn_slo(config.slo.turn_latency_p95());
    let listener = tokio::net::TcpListener::bind(&config.listen_addr)
        .await
        .with_context(|| format!("binding {}", config.listen_addr))?;
    let admin = tokio::net::TcpListener::bind(&config.admin_listen_addr)
        .await
        .with_context(|| format!("binding {}", config.admin_listen_addr))?;
    tracing::info!(listen = %config.listen_addr, admin = %config.admin_listen_addr, public_url = %config.public_url, max_calls = config.max_calls, "agent listening");
    let state = Arc::new(AgentState::new(
        CallContext::new(config, backends, vad, metrics).with_turn_model(turn_model),
    ));
    let served = server::serve_apart(listener, admin, state, shutdown_signal()).await;
    // The turns of the last calls are still queued: send them before the process goes.
    if let Some(traces) = traces {
        traces.shutdown().await;
    }
    served?;
    Ok(())
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the agent");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM"),
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted"),
    }
}
