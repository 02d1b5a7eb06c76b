//! Model backends behind three small traits, so a call never knows whether its STT, LLM or
//! TTS runs on a GPU pool over HTTP or in this process. Every operation is cancellable by
//! dropping what it returned (barge-in), and every failure is a [`BackendError`] naming the
//! stage, so the call can apologise and go on.

use std::pin::Pin;
use std::time::Duration;

use futures::Stream;
use futures::future::BoxFuture;

pub use grokcast_engines::llm::{ChatMessage, Role};

pub mod embedded;
pub mod openai;
pub mod speech_audio;

/// A model stage, for errors and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StageName {
    /// Speech to text.
    Stt,
    /// Language model.
    Llm,
    /// Text to speech.
    Tts,
}

impl StageName {
    /// Label value.
    pub fn label(self) -> &'static str {
        match self {
            StageName::Stt => "stt",
            StageName::Llm => "llm",
            StageName::Tts => "tts",
        }
    }
}

impl std::fmt::Display for StageName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}

/// A model backend failed.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// No answer within the stage's timeout.
    #[error("{stage} timed out after {after:?}")]
    Timeout {
        /// Which stage.
        stage: StageName,
        /// The timeout.
        after: Duration,
    },
    /// The server answered with an error status.
    #[error("{stage} server answered {status}: {body}")]
    Status {
        /// Which stage.
        stage: StageName,
        /// HTTP status.
        status: u16,
        /// Start of the body.
        body: String,
    },
    /// The connection failed.
    #[error("{stage} server unreachable: {message}")]
    Transport {
        /// Which stage.
        stage: StageName,
        /// What failed.
        message: String,
    },
    /// The server's answer did not follow the protocol.
    #[error("{stage} server sent something unexpected: {message}")]
    Protocol {
        /// Which stage.
        stage: StageName,
        /// What was wrong.
        message: String,
    },
    /// An embedded engine failed.
    #[error("{stage} engine failed: {message}")]
    Engine {
        /// Which stage.
        stage: StageName,
        /// What it said.
        message: String,
    },
}

impl BackendError {
    /// The stage that failed.
    pub fn stage(&self) -> StageName {
        match self {
            BackendError::Timeout { stage, .. }
            | BackendError::Status { stage, .. }
            | BackendError::Transport { stage, .. }
            | BackendError::Protocol { stage, .. }
            | BackendError::Engine { stage, .. } => *stage,
        }
    }
}

/// Streamed LLM text.
pub type TokenStream = Pin<Box<dyn Stream<Item = Result<String, BackendError>> + Send>>;

/// Streamed TTS audio: mono f32 chunks at `sample_rate`.
pub struct AudioStream {
    /// Rate of every chunk.
    pub sample_rate: u32,
    /// The chunks.
    pub chunks: Pin<Box<dyn Stream<Item = Result<Vec<f32>, BackendError>> + Send>>,
}

/// Speech to text.
pub trait Stt: Send + Sync {
    /// Transcribes 16 kHz mono audio.
    fn transcribe(&self, audio: Vec<f32>) -> BoxFuture<'_, Result<String, BackendError>>;
}

/// A language model that streams its reply.
pub trait Llm: Send + Sync {
    /// Starts a reply to the conversation; drop the stream to cancel.
    fn reply(&self, messages: Vec<ChatMessage>)
    -> BoxFuture<'_, Result<TokenStream, BackendError>>;
}

/// Text to speech that streams audio.
pub trait Tts: Send + Sync {
    /// Starts speaking `text`; drop the stream to cancel.
    fn synthesize(&self, text: String) -> BoxFuture<'_, Result<AudioStream, BackendError>>;
}

/// The three backends a call uses.
#[derive(Clone)]
pub struct Backends {
    /// Speech to text.
    pub stt: std::sync::Arc<dyn Stt>,
    /// Language model.
    pub llm: std::sync::Arc<dyn Llm>,
    /// Text to speech.
    pub tts: std::sync::Arc<dyn Tts>,
}
