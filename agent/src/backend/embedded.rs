//! In-process backends on `grokcast-engines`: Piper TTS always; Whisper STT with the `embedded`
//! feature; Gemma with `embedded-llm` (never both: their ggml builds clash). Engines block, so each request runs on tokio's blocking pool and
//! streams back through a small bounded channel; when the call drops the stream (barge-in),
//! the engine's callback sees the closed channel and stops.

use std::sync::Arc;

use futures::FutureExt;
use futures::future::BoxFuture;
use grokcast_engines::tts::PiperVoice;

use super::{AudioStream, BackendError, StageName, Tts};

/// Piper through ONNX Runtime.
pub struct EmbeddedTts {
    voice: Arc<PiperVoice>,
}

impl EmbeddedTts {
    /// Wraps a loaded voice.
    pub fn new(voice: Arc<PiperVoice>) -> Self {
        Self { voice }
    }
}

impl Tts for EmbeddedTts {
    /// One Piper model is one voice: another voice's name is not an error, the model speaks
    /// in its own (the local demo and tests have one voice installed).
    fn synthesize(
        &self,
        text: String,
        _voice: Option<String>,
    ) -> BoxFuture<'_, Result<AudioStream, BackendError>> {
        let voice = self.voice.clone();
        async move {
            let sample_rate = voice.sample_rate();
            let (tx, rx) = tokio::sync::mpsc::channel(4);
            tokio::task::spawn_blocking(move || {
                let result = voice.synthesize(&text, &mut |audio| {
                    tx.blocking_send(Ok(audio.to_vec())).is_ok()
                });
                if let Err(e) = result {
                    let _ = tx.blocking_send(Err(BackendError::Engine {
                        stage: StageName::Tts,
                        message: e.to_string(),
                    }));
                }
            });
            Ok(AudioStream {
                sample_rate,
                chunks: Box::pin(grokcast_engines::receiver_stream(rx)),
            })
        }
        .boxed()
    }
}

#[cfg(feature = "embedded")]
pub use whisper::EmbeddedStt;

#[cfg(feature = "embedded")]
mod whisper {
    use std::sync::Arc;

    use futures::FutureExt;
    use futures::future::BoxFuture;
    use grokcast_engines::stt::WhisperStt;

    use crate::backend::{BackendError, StageName, Stt};

    /// Whisper through whisper.cpp.
    pub struct EmbeddedStt {
        engine: Arc<WhisperStt>,
        language: String,
    }

    impl EmbeddedStt {
        /// Wraps a loaded model.
        pub fn new(engine: Arc<WhisperStt>, language: &str) -> Self {
            Self {
                engine,
                language: language.into(),
            }
        }
    }

    impl Stt for EmbeddedStt {
        fn transcribe(&self, audio: Vec<f32>) -> BoxFuture<'_, Result<String, BackendError>> {
            let engine = self.engine.clone();
            let language = self.language.clone();
            async move {
                tokio::task::spawn_blocking(move || engine.transcribe(&audio, Some(&language)))
                    .await
                    .map_err(|e| BackendError::Engine {
                        stage: StageName::Stt,
                        message: e.to_string(),
                    })?
                    .map(|text| text.trim().to_string())
                    .map_err(|e| BackendError::Engine {
                        stage: StageName::Stt,
                        message: e.to_string(),
                    })
            }
            .boxed()
        }
    }
}

#[cfg(feature = "embedded-llm")]
pub use gemma::EmbeddedLlm;

#[cfg(feature = "embedded-llm")]
mod gemma {
    use std::sync::Arc;

    use futures::FutureExt;
    use futures::future::BoxFuture;
    use grokcast_engines::llm::{GemmaLlm, GenerationParams, MAX_TOP_LOGPROBS, PromptEnd};

    use crate::backend::{
        BackendError, ChatMessage, Llm, ReplyPart, StageName, TokenStream, ToolSpecs,
    };
    use grokcast_engines::receiver_stream;

    /// Gemma through llama.cpp.
    pub struct EmbeddedLlm {
        engine: Arc<GemmaLlm>,
        params: GenerationParams,
    }

    impl EmbeddedLlm {
        /// Wraps a loaded model.
        pub fn new(engine: Arc<GemmaLlm>, temperature: f32, max_tokens: u32) -> Self {
            Self {
                engine,
                params: GenerationParams {
                    max_tokens,
                    temperature,
                    ..GenerationParams::default()
                },
            }
        }
    }

    impl Llm for EmbeddedLlm {
        /// The base model cannot call tools, so `tools` is not offered (the configuration
        /// refuses tools with an embedded LLM; see `config`).
        fn reply(
            &self,
            messages: Vec<ChatMessage>,
            _tools: Option<ToolSpecs>,
        ) -> BoxFuture<'_, Result<TokenStream, BackendError>> {
            let engine = self.engine.clone();
            let params = self.params.clone();
            async move {
                let (tx, rx) = tokio::sync::mpsc::channel(32);
                tokio::task::spawn_blocking(move || {
                    let result = engine.generate(&messages, &params, &mut |token| {
                        tx.blocking_send(Ok(ReplyPart::Text(token.to_string())))
                            .is_ok()
                    });
                    if let Err(e) = result {
                        let _ = tx.blocking_send(Err(BackendError::Engine {
                            stage: StageName::Llm,
                            message: e.to_string(),
                        }));
                    }
                });
                Ok(Box::pin(receiver_stream(rx)) as TokenStream)
            }
            .boxed()
        }

        fn turn_end_probability(
            &self,
            messages: Vec<ChatMessage>,
        ) -> BoxFuture<'_, Result<f32, BackendError>> {
            let engine = self.engine.clone();
            let params = GenerationParams {
                max_tokens: 1,
                temperature: 0.0,
                prompt_end: PromptEnd::ContinueLast,
                top_logprobs: Some(MAX_TOP_LOGPROBS),
                ..GenerationParams::default()
            };
            async move {
                let judged = tokio::task::spawn_blocking(move || {
                    engine.generate(&messages, &params, &mut |_| true)
                })
                .await;
                let engine_error = |message: String| BackendError::Engine {
                    stage: StageName::Llm,
                    message,
                };
                let stats = judged
                    .map_err(|e| engine_error(format!("the judgement task failed: {e}")))?
                    .map_err(|e| engine_error(e.to_string()))?;
                let place = stats
                    .logprobs
                    .first()
                    .ok_or_else(|| engine_error("no token was generated".into()))?;
                Ok(crate::backend::turn_end_from_logprobs(
                    place.top.iter().map(|(t, lp)| (t.as_str(), *lp)),
                ))
            }
            .boxed()
        }
    }
}
