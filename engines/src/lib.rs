//! Embedded engines on small real models, all on CPU: Silero VAD and Piper TTS through
//! ONNX Runtime, Whisper STT through whisper.cpp (feature `whisper`), and Gemma 3 270M
//! through llama.cpp (feature `llama`), Sesame CSM-1B on candle (feature `csm`), the Smart Turn
//! end-of-turn model through ONNX Runtime; plus `grokcast-serve`, which puts them behind the
//! OpenAI-compatible APIs the agent uses for GPU model pools.
//!
//! Models come from `scripts/install.sh`; [`models::ModelPaths`] finds them.

#![cfg_attr(test, allow(clippy::unwrap_used))]

// whisper.cpp and llama.cpp each carry their own, different ggml; linked together the
// symbols clash (and mixing versions would corrupt compute graphs), so say so up front.
#[cfg(all(feature = "whisper", feature = "llama"))]
compile_error!(
    "grokcast-engines: features `whisper` and `llama` cannot be linked into one binary \
     (each bundles a different ggml); build the LLM with `--no-default-features --features llama`"
);

pub mod audio;
#[cfg(feature = "csm")]
pub mod csm;
pub mod espeak;
pub mod llm;
pub mod models;
pub mod mulaw;
pub mod riva;
pub mod server;
pub mod smart_turn;
#[cfg(feature = "whisper")]
pub mod stt;
pub mod stt_stream;
pub mod tts;
pub mod vad;
pub mod whisper_convert;

/// The items sent on `rx`, as a stream that ends when every sender is gone: how a task
/// producing messages feeds a streaming response or request body.
pub fn receiver_stream<T: Send + 'static>(
    rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> + Send + 'static {
    futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    })
}
