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

/// The speech engine of the `tts` role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum TtsEngine {
    /// Piper on ONNX Runtime (the models directory's voice).
    Piper,
    /// Sesame CSM-1B on candle (a `csm` build; `--csm-model-dir`).
    Csm,
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
    /// Also serve NVIDIA Riva's speech recognition over gRPC (`StreamingRecognize`, with
    /// interim transcripts while the caller speaks) on this address; roles `stt` and `all`.
    #[arg(long, env = "GROKCAST_SERVE_GRPC_ADDR")]
    grpc_listen: Option<SocketAddr>,
    /// Streams decode again after this much new audio, for interim transcripts.
    #[arg(long, default_value_t = 400)]
    stream_step_ms: u64,
    /// Streams decode at once after this much quiet following speech, so the final
    /// transcript is ready when the turn ends.
    #[arg(long, default_value_t = 60)]
    stream_pause_ms: u64,
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
    /// The speech engine for the `tts` role.
    #[arg(
        long,
        value_enum,
        default_value = "piper",
        env = "GROKCAST_SERVE_TTS_ENGINE"
    )]
    engine: TtsEngine,
    /// CSM model directory: config.json, model.safetensors, tokenizer.json and
    /// mimi.safetensors (docs/engines.md).
    #[arg(long, env = "GROKCAST_CSM_MODEL_DIR")]
    csm_model_dir: Option<PathBuf>,
    /// CSM voices: a directory of NAME.json voice files with their reference WAVs (a
    /// ConfigMap mounted there); without it the voices are the speakers `0` and `1`.
    #[arg(long, env = "GROKCAST_CSM_VOICES_DIR")]
    csm_voices_dir: Option<PathBuf>,
    /// Longest speech CSM generates for one request, in seconds.
    #[arg(long, default_value_t = 20)]
    csm_max_audio_seconds: u64,
    /// The model name speech requests may give (besides `tts-1`); default: the engine's
    /// (`piper-en_US-joe-medium`, `sesame/csm-1b`).
    #[arg(long, env = "GROKCAST_SERVE_TTS_MODEL")]
    tts_model: Option<String>,
}

/// What loading the speech engine needs (the CSM fields are read only by `csm` builds).
#[derive(Debug, Clone)]
#[cfg_attr(not(feature = "csm"), allow(dead_code))]
struct SpeechSettings {
    engine: TtsEngine,
    csm_model_dir: Option<PathBuf>,
    csm_voices_dir: Option<PathBuf>,
    csm_max_audio_seconds: u64,
}

fn load_speaker(
    settings: &SpeechSettings,
    paths: &ModelPaths,
) -> Result<Arc<dyn crate::tts::Speaker>, String> {
    match settings.engine {
        TtsEngine::Piper => {
            models::init_onnxruntime(&paths.onnxruntime().map_err(|e| e.to_string())?)
                .map_err(|e| e.to_string())?;
            let (onnx, json) = paths.piper_voice().map_err(|e| e.to_string())?;
            Ok(Arc::new(
                PiperVoice::load(&onnx, &json).map_err(|e| e.to_string())?,
            ))
        }
        #[cfg(feature = "csm")]
        TtsEngine::Csm => {
            let dir = settings
                .csm_model_dir
                .as_deref()
                .ok_or("--engine csm needs --csm-model-dir (GROKCAST_CSM_MODEL_DIR)")?;
            let options = crate::csm::CsmOptions {
                max_audio: std::time::Duration::from_secs(settings.csm_max_audio_seconds),
                ..crate::csm::CsmOptions::default()
            };
            let voice =
                crate::csm::CsmVoice::load(dir, settings.csm_voices_dir.as_deref(), options)
                    .map_err(|e| e.to_string())?;
            tracing::info!(gpu = voice.on_gpu(), voices = ?voice.voices(), "CSM loaded");
            Ok(Arc::new(voice))
        }
        #[cfg(not(feature = "csm"))]
        TtsEngine::Csm => Err(
            "this build has no CSM engine: build grokcast-serve with --features csm (cuda for GPUs)"
                .to_owned(),
        ),
    }
}

fn load_engines(
    role: ServeRole,
    paths: &ModelPaths,
    threads: Option<usize>,
    speech: &SpeechSettings,
) -> Result<Engines, String> {
    let wants = |r: ServeRole| role == r || role == ServeRole::All;
    let mut engines = Engines::default();
    if wants(ServeRole::Tts) {
        engines.tts = Some(load_speaker(speech, paths)?);
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
                "this build has no LLM engine and no grokcast-serve-llm beside it: build that with --no-default-features --features llama"
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

/// The Riva gRPC server when `--grpc-listen` asks for one, as a future that resolves only
/// if it fails (it stops quietly on shutdown, like the HTTP server); pending without one.
async fn grpc_server(
    args: &Args,
    state: &Arc<AppState>,
) -> Result<futures::future::BoxFuture<'static, String>, String> {
    let Some(addr) = args.grpc_listen else {
        return Ok(Box::pin(std::future::pending()));
    };
    if !matches!(args.role, ServeRole::Stt | ServeRole::All) {
        return Err(format!(
            "--grpc-listen serves speech recognition; role {:?} has none",
            args.role
        ));
    }
    #[cfg(feature = "whisper")]
    {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
        tracing::info!(%addr, "serving Riva speech recognition over gRPC");
        let policy = crate::stt_stream::Policy {
            step: std::time::Duration::from_millis(args.stream_step_ms),
            pause: std::time::Duration::from_millis(args.stream_pause_ms),
        };
        let served = server::riva::serve(listener, Arc::clone(state), policy, shutdown_signal());
        Ok(Box::pin(async move {
            match served.await {
                Ok(()) => std::future::pending().await,
                Err(e) => e.to_string(),
            }
        }))
    }
    #[cfg(not(feature = "whisper"))]
    {
        let _ = (addr, state);
        Err("--grpc-listen needs a build with Whisper (feature `whisper`)".to_owned())
    }
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

/// The LLM lives in a separate binary (whisper.cpp and llama.cpp each link their own ggml), and
/// a ModelPool runs `grokcast-serve --role llm` like every other role: a build without the LLM
/// replaces itself with `grokcast-serve-llm` from its own directory (the image ships both), with
/// the same arguments and environment, so the pod's process, signals and probes stay the same.
/// Returns only when there is nothing to hand over to (then the caller reports the missing
/// engine) or the handover failed.
#[cfg(not(feature = "llama"))]
fn hand_llm_to_sibling(args: &Args) -> Option<String> {
    if args.role != ServeRole::Llm {
        return None;
    }
    let exe = std::env::current_exe().ok()?;
    let sibling = exe.with_file_name("grokcast-serve-llm");
    if !sibling.is_file() {
        return None;
    }
    let mut command = std::process::Command::new(&sibling);
    command.args(std::env::args_os().skip(1));
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt as _;
        // exec returns only on failure.
        let error = command.exec();
        Some(format!("starting {}: {error}", sibling.display()))
    }
    #[cfg(not(unix))]
    {
        let _ = command;
        None
    }
}

async fn async_main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    #[cfg(not(feature = "llama"))]
    if let Some(error) = hand_llm_to_sibling(&args) {
        eprintln!("grokcast-serve: {error}");
        return ExitCode::FAILURE;
    }
    let paths = match args
        .models_dir
        .clone()
        .map_or_else(ModelPaths::discover, |d| Ok(ModelPaths::at(d)))
    {
        Ok(p) => p,
        // CSM alone reads nothing from the models directory: its own directory will do.
        Err(_) if args.role == ServeRole::Tts && args.engine == TtsEngine::Csm => {
            ModelPaths::at(args.csm_model_dir.clone().unwrap_or_default())
        }
        Err(e) => {
            eprintln!("grokcast-serve: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut config = ServerConfig {
        queue_capacity: args.queue_capacity,
        workers: args.workers,
        ..ServerConfig::default()
    };
    let tts_model = args
        .tts_model
        .clone()
        .or_else(|| (args.engine == TtsEngine::Csm).then(|| "sesame/csm-1b".to_owned()));
    if let Some(name) = tts_model {
        config.tts_models = vec![name, "tts-1".to_owned()];
    }
    if args.engine == TtsEngine::Csm {
        // CSM's voices are its speakers and prompts, known once it has loaded.
        config.voices.clear();
    }
    let speech = SpeechSettings {
        engine: args.engine,
        csm_model_dir: args.csm_model_dir.clone(),
        csm_voices_dir: args.csm_voices_dir.clone(),
        csm_max_audio_seconds: args.csm_max_audio_seconds,
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
    tokio::task::spawn_blocking(move || match load_engines(role, &paths, threads, &speech) {
        Ok(engines) => {
            load_state.set_engines(engines);
            tracing::info!("models loaded; ready");
        }
        Err(e) => {
            let _ = failed_tx.blocking_send(e);
        }
    });
    let grpc = match grpc_server(&args, &state).await {
        Ok(g) => g,
        Err(e) => {
            eprintln!("grokcast-serve: {e}");
            return ExitCode::FAILURE;
        }
    };
    let server = server::serve(listener, state, shutdown_signal());
    tokio::select! {
        res = server => match res {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("grokcast-serve: {e}");
                ExitCode::FAILURE
            }
        },
        e = grpc => {
            eprintln!("grokcast-serve: the gRPC server stopped: {e}");
            ExitCode::FAILURE
        },
        Some(e) = failed_rx.recv() => {
            // A server that can never become ready should exit so the pod restarts
            // with a visible reason rather than sit unready forever.
            eprintln!("grokcast-serve: cannot load models: {e}");
            ExitCode::FAILURE
        }
    }
}
