//! Turns a validated [`AgentConfig`] into running parts: ONNX Runtime, the VAD, and the three
//! backends (HTTP clients or embedded engines).

use std::path::PathBuf;
use std::sync::Arc;

use grokcast_engines::models::{ModelPaths, init_onnxruntime};
use grokcast_engines::vad::SileroVad;

use crate::backend::openai::{OpenAiLlm, OpenAiStt, OpenAiTts};
use crate::backend::{Backends, Llm, Stt, Tts};
use crate::config::{AgentConfig, BackendKind, EndOfTurnModel};
use tracing_subscriber::Registry;
use tracing_subscriber::prelude::*;

/// Why the agent cannot start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// A model file or library is missing.
    #[error("{0} (install models with scripts/install.sh, or set GROKCAST_MODELS_DIR)")]
    Models(#[from] grokcast_engines::models::ModelsError),
    /// The VAD model failed to load.
    #[error("{0}")]
    Vad(#[from] grokcast_engines::vad::VadError),
    /// The end-of-turn model failed to load.
    #[error("{0}")]
    TurnModel(#[from] grokcast_engines::smart_turn::SmartTurnError),
    /// An embedded engine failed to load.
    #[error("{stage} engine: {message}")]
    Engine {
        /// Which stage.
        stage: &'static str,
        /// What failed.
        message: String,
    },
    /// `embedded` was asked for but this build has no embedded engines.
    #[error(
        "{0} backend is embedded but this build has no embedded engines (build with --features embedded, or set GROKCAST_{1}_URL)"
    )]
    NotBuilt(&'static str, &'static str),
}

fn models(config: &AgentConfig) -> Result<ModelPaths, StartupError> {
    if config.models_dir.is_empty() {
        Ok(ModelPaths::discover()?)
    } else {
        Ok(ModelPaths::at(&config.models_dir))
    }
}

/// Loads ONNX Runtime and Silero VAD.
pub fn load_vad(config: &AgentConfig) -> Result<Arc<SileroVad>, StartupError> {
    let paths = models(config)?;
    init_onnxruntime(&paths.onnxruntime()?)?;
    let path = if config.vad_model.is_empty() {
        paths.vad()?
    } else {
        PathBuf::from(&config.vad_model)
    };
    Ok(Arc::new(SileroVad::load(&path)?))
}

/// Loads the end-of-turn model `turnTaking.endOfTurnModel` names, if any (after
/// [`load_vad`], which loads ONNX Runtime). A missing or broken model stops the agent from
/// starting rather than silently ending turns on silence alone.
pub fn load_turn_model(
    config: &AgentConfig,
) -> Result<Option<Arc<grokcast_engines::smart_turn::SmartTurn>>, StartupError> {
    match config.turn_taking.end_of_turn_model {
        // The LLM pool judges words over HTTP: nothing to load here.
        EndOfTurnModel::None | EndOfTurnModel::Llm => Ok(None),
        EndOfTurnModel::SmartTurn => {
            let paths = models(config)?;
            init_onnxruntime(&paths.onnxruntime()?)?;
            let model = grokcast_engines::smart_turn::SmartTurn::load(&paths.smart_turn()?)?;
            Ok(Some(Arc::new(model)))
        }
    }
}

/// Builds the three backends the configuration names.
pub fn build_backends(config: &AgentConfig) -> Result<Backends, StartupError> {
    let stt: Arc<dyn Stt> = match config.stt.stage.resolved_backend() {
        BackendKind::Embedded => embedded_stt(config)?,
        _ => Arc::new(OpenAiStt::new(
            &config.stt.stage.url,
            &config.stt.stage.model,
            &config.stt.language,
            config.stt.stage.timeout(),
        )),
    };
    let llm: Arc<dyn Llm> = match config.llm.stage.resolved_backend() {
        BackendKind::Embedded => embedded_llm(config)?,
        _ => Arc::new(OpenAiLlm::new(
            &config.llm.stage.url,
            &config.llm.stage.model,
            config.llm.temperature,
            config.llm.max_tokens,
            config.llm.stage.timeout(),
        )),
    };
    let tts: Arc<dyn Tts> = match config.tts.stage.resolved_backend() {
        BackendKind::Embedded => {
            let paths = models(config)?;
            init_onnxruntime(&paths.onnxruntime()?)?;
            let (onnx, json) = paths.piper_voice()?;
            let voice = grokcast_engines::tts::PiperVoice::load(&onnx, &json).map_err(|e| {
                StartupError::Engine {
                    stage: "tts",
                    message: e.to_string(),
                }
            })?;
            Arc::new(crate::backend::embedded::EmbeddedTts::new(Arc::new(voice)))
        }
        _ => Arc::new(OpenAiTts::new(
            &config.tts.stage.url,
            &config.tts.stage.model,
            &config.tts.voice,
            config.tts.response_format,
            config.tts.sample_rate,
            config.tts.stage.timeout(),
        )),
    };
    let stt_stream = if config.stt.streaming_url.is_empty() {
        None
    } else {
        // The batch model's name (`whisper-1`, a Hugging Face id) means nothing to a Riva
        // server: the stream lets the server pick its model for the language.
        let client =
            crate::backend::riva::RivaStt::new(&config.stt.streaming_url, &config.stt.language)
                .map_err(|message| StartupError::Engine {
                    stage: "stt",
                    message,
                })?;
        Some(Arc::new(client) as Arc<dyn crate::backend::StreamingStt>)
    };
    Ok(Backends {
        stt,
        llm,
        tts,
        stt_stream,
    })
}

#[cfg(feature = "embedded")]
fn embedded_stt(config: &AgentConfig) -> Result<Arc<dyn Stt>, StartupError> {
    let path = models(config)?.whisper()?;
    let engine =
        grokcast_engines::stt::WhisperStt::load(&path).map_err(|e| StartupError::Engine {
            stage: "stt",
            message: e.to_string(),
        })?;
    Ok(Arc::new(crate::backend::embedded::EmbeddedStt::new(
        Arc::new(engine),
        &config.stt.language,
    )))
}

#[cfg(not(feature = "embedded"))]
fn embedded_stt(_: &AgentConfig) -> Result<Arc<dyn Stt>, StartupError> {
    Err(StartupError::NotBuilt("stt", "STT"))
}

#[cfg(feature = "embedded-llm")]
fn embedded_llm(config: &AgentConfig) -> Result<Arc<dyn Llm>, StartupError> {
    let path = models(config)?.llm()?;
    let engine =
        grokcast_engines::llm::GemmaLlm::load(&path, grokcast_engines::llm::LlmOptions::default())
            .map_err(|e| StartupError::Engine {
                stage: "llm",
                message: e.to_string(),
            })?;
    Ok(Arc::new(crate::backend::embedded::EmbeddedLlm::new(
        Arc::new(engine),
        config.llm.temperature,
        config.llm.max_tokens,
    )))
}

#[cfg(not(feature = "embedded-llm"))]
fn embedded_llm(_: &AgentConfig) -> Result<Arc<dyn Llm>, StartupError> {
    Err(StartupError::NotBuilt("llm", "LLM"))
}

/// Logs to stderr at `GROKCAST_LOG` (an `EnvFilter`, `info` by default), as JSON lines when
/// `GROKCAST_LOG_FORMAT=json` (what log collectors in a cluster parse).
pub fn init_tracing() {
    init_tracing_with(None);
}

/// [`init_tracing`], with one more layer beside the log's (the call traces of
/// [`crate::traces::Traces::start`]). The log's filter is the log's own: `GROKCAST_LOG=warn`
/// quiets the log without emptying the traces.
pub fn init_tracing_with(traces: Option<crate::traces::BoxedLayer<Registry>>) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("GROKCAST_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let log = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let log = if std::env::var("GROKCAST_LOG_FORMAT").is_ok_and(|f| f == "json") {
        log.json().with_filter(filter).boxed()
    } else {
        log.with_filter(filter).boxed()
    };
    let layers: Vec<crate::traces::BoxedLayer<Registry>> =
        std::iter::once(log).chain(traces).collect();
    tracing_subscriber::registry().with(layers).init();
}
