//! What carries a call's audio: the seam between a wire protocol and the conversation.
//!
//! A call ([`crate::call::run`]) reads the caller through a [`FromCaller`] and speaks through
//! a [`ToCaller`]. Everything else (VAD, turn-taking, barge-in, the turn's stages, metrics) is
//! the same code whatever the transport: Twilio Media Streams today
//! ([`crate::twilio::media_stream`]), a browser tomorrow.
//!
//! The agent's voice is carried as the phone line carries it: 20 ms frames of 8 kHz mu-law
//! ([`crate::pacer::FRAME_BYTES`]), paced in real time by the call, so every transport plays
//! what a phone caller hears and the cached phrases serve them all. A transport with another
//! codec transcodes each frame.

use std::future::Future;

use crate::context::TurnSample;

/// What the caller's side sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    /// Caller audio, appended to the buffer given to [`FromCaller::next`], at
    /// [`FromCaller::sample_rate`].
    Audio,
    /// Playback reached a mark the agent sent ([`ToCaller::mark`]).
    Mark(String),
    /// The caller pressed a key.
    Dtmf(char),
    /// The caller's side ended the call.
    Stop,
}

/// What happened on the call, for a transport that shows it to the person talking (the
/// playground); a phone line has nowhere to show it and takes none
/// ([`ToCaller::wants_notes`]).
#[derive(Debug, Clone)]
pub enum Note {
    /// The caller's words of a turn, as the LLM gets them.
    Caller(String),
    /// A clause of the agent's reply, as it is queued to play.
    Agent(String),
    /// A turn's first audio went out: its latency and where the time went.
    Turn(TurnSample),
    /// The caller interrupted the agent: what was queued is dropped.
    BargeIn,
    /// The agent called a tool: its name (`unknown` for one not offered) and how it went
    /// ([`crate::tools::ToolOutcome::label`]).
    Tool {
        /// The tool.
        tool: String,
        /// The outcome.
        outcome: &'static str,
    },
}

/// Why a transport failed; it ends that call only.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The peer broke the protocol (malformed, oversized or out-of-order messages).
    #[error(transparent)]
    Protocol(Box<dyn std::error::Error + Send + Sync>),
    /// The connection failed.
    #[error("connection: {0}")]
    Connection(String),
}

impl TransportError {
    /// A protocol violation.
    pub fn protocol(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::Protocol(Box::new(e))
    }
}

/// The caller's side of a call.
pub trait FromCaller: Send + 'static {
    /// The rate of the audio [`next`](Self::next) yields.
    fn sample_rate(&self) -> u32;

    /// The next message; `Ok(None)` when the connection closed without a stop. Audio is
    /// appended to `audio`, which the call empties between messages.
    ///
    /// Must be cancel-safe: the call waits on it beside other events and drops the future
    /// when one of those comes first, so a message must not be lost by that.
    fn next(
        &mut self,
        audio: &mut Vec<f32>,
    ) -> impl Future<Output = Result<Option<Received>, TransportError>> + Send;
}

/// The agent's side of a call.
pub trait ToCaller: Send + 'static {
    /// Plays one 20 ms frame of 8 kHz mu-law after what was sent before.
    fn media(&mut self, frame: &[u8]) -> impl Future<Output = Result<(), TransportError>> + Send;

    /// Asks the caller's side to report `name` ([`Received::Mark`]) once everything sent
    /// before it has played.
    fn mark(&mut self, name: &str) -> impl Future<Output = Result<(), TransportError>> + Send;

    /// Drops everything sent but not yet played (barge-in).
    fn clear(&mut self) -> impl Future<Output = Result<(), TransportError>> + Send;

    /// Whether this transport shows [`Note`]s; the call keeps none for one that does not.
    fn wants_notes(&self) -> bool {
        false
    }

    /// Shows what happened on the call. Notes go out between frames, never ahead of audio
    /// already due.
    fn note(&mut self, _note: Note) -> impl Future<Output = Result<(), TransportError>> + Send {
        std::future::ready(Ok(()))
    }
}
