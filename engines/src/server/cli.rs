//! The `grokcast-serve` command line: the embedded engines behind OpenAI-compatible
//! HTTP APIs.
//!
//! It binds first and loads the models in the background (`/readyz` answers 503 until
//! they are loaded), so Kubernetes probes can tell "starting" from "dead". Weights come
//! only from the models directory; nothing is fetched from a hub.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use crate::models::{self, ModelPaths};
use crate::server::{self, AppState, Engines, ServerConfig};
use crate::tts::PiperVoice;
use clap::{Parser, ValueEnum};

/// Which engines this server runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ServeRole {
    /// Chat completions (Gemma on llama.cpp).
    Llm,
    /// Transcriptions (Whisper on whisper.cpp).
    Stt,
    /// Speech (Piper on ONNX Runtime).
    Tts,
    /// All three.
    All,
}

/// Command line.
#[derive(Debug, Parser)]
#[command(about = "Serve GrokCast's embedded engines over OpenAI-compatible HTTP APIs")]
struct Args {
    /// Engines to load.
    #[arg(long, value_enum, default_value = "all", env = "GROKCAST_SERVE_ROLE")]
    role: ServeRole,
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0:8000", env = "GROKCAST_SERVE_ADDR")]
    listen: SocketAddr,
    /// Models directory (default: $GROKCAST_MODELS_DIR, else models/ found upwards).
    #[arg(long)]
    models_dir: Option<PathBuf>,
    /// Requests admitted per engine (running plus waiting) before answering 503.
    #[arg(long, default_value_t = 16)]
    queue_capacity: usize,
    /// Requests running at once per engine.
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// CPU threads per request (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
}

fn load_engines(
    role: ServeRole,
    paths: &ModelPaths,
    threads: Option<usize>,
) -> Result<Engines, String> {
    let wants = |r: ServeRole| role == r || role == ServeRole::All;
    let mut engines = Engines::default();
    if wants(ServeRole::Tts) {
        models::init_onnxruntime(&paths.onnxruntime().map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
        let (onnx, json) = paths.piper_voice().map_err(|e| e.to_string())?;
        engines.tts = Some(Arc::new(
            PiperVoice::load(&onnx, &json).map_err(|e| e.to_string())?,
        ));
    }
    if wants(ServeRole::Stt) {
        #[cfg(feature = "whisper")]
        {
            use crate::stt::{SttOptions, WhisperStt};
            let mut opts = SttOptions::default();
            if let Some(t) = threads {
                opts.threads = t;
            }
            let path = paths.whisper().map_err(|e| e.to_string())?;
            engines.stt = Some(Arc::new(
                WhisperStt::load_with(&path, opts).map_err(|e| e.to_string())?,
            ));
        }
        // `all` means every engine this build has; naming a missing one is an error.
        #[cfg(not(feature = "whisper"))]
        if role == ServeRole::Stt {
            return Err(
                "this build has no Whisper engine: use grokcast-serve built with the default features"
                    .to_owned(),
            );
        }
    }
    if wants(ServeRole::Llm) {
        #[cfg(feature = "llama")]
        {
            use crate::llm::{GemmaLlm, LlmOptions};
            let mut opts = LlmOptions::default();
            if let Some(t) = threads {
                opts.threads = t;
            }
            let path = paths.llm().map_err(|e| e.to_string())?;
            engines.llm = Some(Arc::new(
                GemmaLlm::load(&path, opts).map_err(|e| e.to_string())?,
            ));
        }
        #[cfg(not(feature = "llama"))]
        if role == ServeRole::Llm {
            return Err(
                "this build has no LLM engine: use grokcast-serve-llm (--no-default-features --features llama)"
                    .to_owned(),
            );
        }
    }
    let _ = threads;
    Ok(engines)
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { () = ctrl_c => {}, () = term => {} }
}

/// Runs the command line until shutdown (SIGTERM or Ctrl-C).
pub fn main_entry() -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("grokcast-serve: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async_main())
}

async fn async_main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    let paths = match args
        .models_dir
        .clone()
        .map_or_else(ModelPaths::discover, |d| Ok(ModelPaths::at(d)))
    {
        Ok(p) => p,
        Err(e) => {
            eprintln!("grokcast-serve: {e}");
            return ExitCode::FAILURE;
        }
    };
    let config = ServerConfig {
        queue_capacity: args.queue_capacity,
        workers: args.workers,
        ..ServerConfig::default()
    };
    let state = match AppState::new(config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("grokcast-serve: metrics: {e}");
            return ExitCode::FAILURE;
        }
    };
    let listener = match tokio::net::TcpListener::bind(args.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("grokcast-serve: cannot listen on {}: {e}", args.listen);
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(addr = %args.listen, role = ?args.role, models = %paths.root().display(), "listening; loading models");
    let (failed_tx, mut failed_rx) = tokio::sync::mpsc::channel::<String>(1);
    let load_state = Arc::clone(&state);
    let role = args.role;
    let threads = args.threads;
    tokio::task::spawn_blocking(move || match load_engines(role, &paths, threads) {
        Ok(engines) => {
            load_state.set_engines(engines);
            tracing::info!("models loaded; ready");
        }
        Err(e) => {
            let _ = failed_tx.blocking_send(e);
        }
    });
    let server = server::serve(listener, state, shutdown_signal());
    tokio::select! {
        res = server => match res {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("grokcast-serve: {e}");
                ExitCode::FAILURE
            }
        },
        Some(e) = failed_rx.recv() => {
            // A server that can never become ready should exit so the pod restarts
            // with a visible reason rather than sit unready forever.
            eprintln!("grokcast-serve: cannot load models: {e}");
            ExitCode::FAILURE
        }
    }
}
