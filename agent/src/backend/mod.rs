//! Model backends behind three small traits, so a call never knows whether its STT, LLM or
//! TTS runs on a GPU pool over HTTP or in this process. Every operation is cancellable by
//! dropping what it returned (barge-in), and every failure is a [`BackendError`] naming the
//! stage, so the call can apologise and go on.

use std::pin::Pin;
use std::time::Duration;

use futures::FutureExt;
use futures::Stream;
use futures::future::BoxFuture;

pub use grokcast_engines::llm::{ChatMessage, FunctionCall, Role, ToolCall};

pub mod embedded;
pub mod openai;
pub mod pythonic;
pub mod riva;
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

    /// What went wrong without anything the server said: a server's error body may quote
    /// the request, and with it the caller's words, so traces carry only this.
    pub fn summary(&self) -> String {
        match self {
            BackendError::Timeout { stage, after } => format!("{stage} timed out after {after:?}"),
            BackendError::Status { stage, status, .. } => {
                format!("{stage} server answered {status}")
            }
            BackendError::Transport { stage, .. } => format!("{stage} server unreachable"),
            BackendError::Protocol { stage, .. } => {
                format!("{stage} server sent something unexpected")
            }
            BackendError::Engine { stage, .. } => format!("{stage} engine failed"),
        }
    }
}

/// What a streamed reply brings: text to speak as it comes, or a tool call, whole (a call
/// is acted on only once its arguments are complete).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplyPart {
    /// Words of the reply.
    Text(String),
    /// A tool the model calls.
    Call(ToolCall),
}

/// A streamed LLM reply.
pub type TokenStream = Pin<Box<dyn Stream<Item = Result<ReplyPart, BackendError>> + Send>>;

/// The tools a request offers the model: OpenAI's `tools` array, built once per agent.
pub type ToolSpecs = std::sync::Arc<serde_json::Value>;

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

/// Speech to text that listens while the caller speaks.
pub trait StreamingStt: Send + Sync {
    /// Opens a stream for one utterance; its audio goes in with [`SttStream::push`].
    fn open(&self) -> SttStream;
}

/// One utterance being transcribed while it is spoken. Dropping it cancels the stream.
pub struct SttStream {
    /// Where audio goes; `None` once the stream is closed or broken.
    audio: Option<tokio::sync::mpsc::Sender<Vec<f32>>>,
    /// Audio was lost (the stream fell behind or died): its transcript would miss words.
    lost: bool,
    interim: tokio::sync::watch::Receiver<Interim>,
    task: tokio::task::JoinHandle<Result<String, BackendError>>,
}

/// What a stream has recognised so far.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Interim {
    /// The final results, then the latest interim one.
    pub text: String,
    /// How much of the stream's audio, from its start, the recognition has heard
    /// (Riva's `audio_processed`).
    pub heard: Duration,
    /// `text` without the trailing words the recogniser was unsure of ([`sure_text`]), when
    /// it said how sure it was of each word of the latest result; `None` otherwise.
    pub sure: Option<String>,
}

/// A trailing word the recogniser gives less than this probability is left out of what the
/// end-of-turn judgement reads ([`sure_text`]).
pub const UNSURE_WORD: f32 = 0.5;

/// The words up to the last one the recogniser was sure of (at least [`UNSURE_WORD`]), given
/// each word and its probability; `None` when no word is that sure, or unless every
/// confidence is a probability (0, 1] (Riva leaves interim words out, and its final
/// confidences are log-probabilities).
///
/// Why: a recogniser that hears a sentence cut at a pause tends to finish it with a word it is
/// unsure of ("Can I book a table for it?" for "Can I book a table for…", "it" at 0.47), and
/// that guessed word is what makes the unfinished sentence read as finished.
pub fn sure_text(words: &[(String, f32)]) -> Option<String> {
    if words.is_empty() || !words.iter().all(|(_, p)| *p > 0.0 && *p <= 1.0) {
        return None;
    }
    // Not one word sure: judging nothing would take the caller for silent, so the words
    // stand as heard.
    let sure = words.iter().rposition(|(_, p)| *p >= UNSURE_WORD)? + 1;
    Some(
        words[..sure]
            .iter()
            .map(|(w, _)| w.as_str())
            .collect::<Vec<_>>()
            .join(" "),
    )
}

impl SttStream {
    /// A stream fed through `audio`, whose `task` publishes interim transcripts on
    /// `interim` and returns the final one once `audio` closes.
    pub fn new(
        audio: tokio::sync::mpsc::Sender<Vec<f32>>,
        interim: tokio::sync::watch::Receiver<Interim>,
        task: tokio::task::JoinHandle<Result<String, BackendError>>,
    ) -> Self {
        Self {
            audio: Some(audio),
            lost: false,
            interim,
            task,
        }
    }

    /// Sends 16 kHz audio without waiting. Audio the stream cannot take (the server stopped
    /// reading, or the stream died) breaks it: [`SttStream::finish`] then fails, and the
    /// turn is transcribed in one request instead.
    pub fn push(&mut self, samples: &[f32]) {
        if samples.is_empty() {
            return;
        }
        if let Some(audio) = &self.audio
            && audio.try_send(samples.to_vec()).is_err()
        {
            self.audio = None;
            self.lost = true;
        }
    }

    /// The transcript so far (final results, then the latest interim one).
    pub fn interim(&self) -> String {
        self.interim.borrow().text.clone()
    }

    /// Follows the transcript as it grows, apart from the stream: its sender closes when the
    /// stream ends or dies.
    pub fn follow(&self) -> tokio::sync::watch::Receiver<Interim> {
        self.interim.clone()
    }

    /// Ends the audio and waits for the final transcript.
    pub async fn finish(mut self) -> Result<String, BackendError> {
        self.audio = None;
        let result = (&mut self.task).await.map_err(|e| BackendError::Engine {
            stage: StageName::Stt,
            message: format!("the transcription stream's task failed: {e}"),
        })?;
        match result {
            Ok(_) if self.lost => Err(BackendError::Transport {
                stage: StageName::Stt,
                message: "the stream fell behind and lost audio".into(),
            }),
            other => other,
        }
    }
}

impl Drop for SttStream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl std::fmt::Debug for SttStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SttStream")
            .field("open", &self.audio.is_some())
            .field("lost", &self.lost)
            .finish_non_exhaustive()
    }
}

/// A language model that streams its reply.
pub trait Llm: Send + Sync {
    /// Starts a reply to the conversation, offering the model `tools` when given; drop the
    /// stream to cancel.
    fn reply(
        &self,
        messages: Vec<ChatMessage>,
        tools: Option<ToolSpecs>,
    ) -> BoxFuture<'_, Result<TokenStream, BackendError>>;

    /// How likely the caller has finished, after `messages`, whose last is the caller's words
    /// so far: the model's probability that its next token ends the caller's sentence or turn
    /// ([`turn_end_from_logprobs`]). A backend that cannot say answers an error, and the pause
    /// is judged by silence.
    fn turn_end_probability(
        &self,
        messages: Vec<ChatMessage>,
    ) -> BoxFuture<'_, Result<f32, BackendError>> {
        drop(messages);
        futures::future::ready(Err(BackendError::Protocol {
            stage: StageName::Llm,
            message: "this LLM backend cannot judge whether a turn is over".into(),
        }))
        .boxed()
    }
}

/// How chat templates spell the end of a turn, as a server reports the token in logprobs:
/// Gemma, Llama 3, ChatML (Qwen), Phi, and the end-of-sequence tokens of older templates.
pub const TURN_END_TOKENS: &[&str] = &[
    "<end_of_turn>",
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "</s>",
    "<eos>",
    "<|endoftext|>",
];

/// Tokens that end the caller's sentence: the words are left open without STT's closing
/// period ([`crate::turn::open_words`]), so a finished sentence goes on with one of these
/// before the turn's end, and an unfinished one with more words.
pub const SENTENCE_END_TOKENS: &[&str] = &[".", "?", "!"];

/// The probability that the caller has finished, from one place's top logprobs (token,
/// logprob): the sum over the turn-ending and sentence-ending tokens. One outside the list
/// is less likely than its last entry; counting it as 0 errs toward waiting, which the
/// maximum silence bounds.
pub fn turn_end_from_logprobs<'a>(top: impl IntoIterator<Item = (&'a str, f32)>) -> f32 {
    top.into_iter()
        .filter(|(token, _)| {
            let token = token.trim();
            TURN_END_TOKENS.contains(&token) || SENTENCE_END_TOKENS.contains(&token)
        })
        .map(|(_, logprob)| logprob.exp())
        // Summing from 0.0, not the -0.0 an empty f32 sum gives.
        .fold(0.0f32, |sum, p| sum + p)
        .clamp(0.0, 1.0)
}

/// Text to speech that streams audio.
pub trait Tts: Send + Sync {
    /// Starts speaking `text`, in `voice` where given (else the configured one); drop the
    /// stream to cancel.
    fn synthesize(
        &self,
        text: String,
        voice: Option<String>,
    ) -> BoxFuture<'_, Result<AudioStream, BackendError>>;
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
    /// Streaming speech to text, when `stt.streamingUrl` names a server; turns whose stream
    /// fails use `stt`.
    pub stt_stream: Option<std::sync::Arc<dyn StreamingStt>>,
}

#[cfg(test)]
mod tests {
    use super::sure_text;

    fn words(list: &[(&str, f32)]) -> Vec<(String, f32)> {
        list.iter().map(|(w, p)| (w.to_string(), *p)).collect()
    }

    #[test]
    fn a_guessed_last_word_is_left_out_and_nothing_else() {
        let cut = words(&[
            ("Can", 0.7),
            ("I", 0.99),
            ("book", 0.99),
            ("a", 0.99),
            ("table", 0.98),
            ("for", 0.98),
            ("it?", 0.47),
        ]);
        assert_eq!(sure_text(&cut).as_deref(), Some("Can I book a table for"));
        // An unsure word inside the sentence stays: only the end is in question.
        let inside = words(&[("My", 0.2), ("email", 0.95), ("is", 0.98), ("gone.", 0.29)]);
        assert_eq!(sure_text(&inside).as_deref(), Some("My email is"));
        let sure = words(&[("No", 0.9), ("thanks.", 0.97)]);
        assert_eq!(sure_text(&sure).as_deref(), Some("No thanks."));
    }

    #[test]
    fn without_usable_confidences_the_words_stand_as_heard() {
        assert_eq!(
            sure_text(&[]),
            None,
            "no words given (Riva's interim results)"
        );
        // Not one word sure: judging nothing would take the caller for silent.
        assert_eq!(sure_text(&words(&[("nature,", 0.05)])), None);
        // Riva's final confidences are log-probabilities, and 0 means not set.
        assert_eq!(sure_text(&words(&[("yes", -0.2)])), None);
        assert_eq!(sure_text(&words(&[("yes", 0.9), ("please", 0.0)])), None);
    }
}
