//! What proves and measures the agent without a phone network or GPUs, kept out of the agent
//! that answers real calls:
//!
//! - [`caller`]: a simulated Twilio caller speaking Media Streams over a real socket, with
//!   signed webhooks, as Twilio's cloud would;
//! - [`instant`]: model servers that answer at once over the real protocols (OpenAI HTTP,
//!   Riva gRPC), standing for GPU model pools;
//! - [`demo`]: an agent on the embedded models answering one simulated call;
//! - [`local`]: an agent on this machine on the instant servers, as the tests start one.

// Tests may unwrap: a panic is how they fail.
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod caller;
pub mod demo;
pub mod instant;
pub mod local;
pub mod playground_caller;
pub mod twilio_rest;

/// Whether the Silero VAD model and ONNX Runtime are installed, for tests that run calls; they
/// skip without them, except where `GROKCAST_REQUIRE_MODELS` is set (as `scripts/test.sh`
/// does), where a missing model fails the test instead.
pub fn models_present() -> bool {
    let found = grokcast_engines::models::ModelPaths::discover()
        .and_then(|p| p.vad().and(p.onnxruntime()))
        .is_ok();
    if !found {
        assert!(
            std::env::var_os("GROKCAST_REQUIRE_MODELS").is_none(),
            "models are required (GROKCAST_REQUIRE_MODELS is set): run scripts/install.sh"
        );
        eprintln!("skipped: Silero VAD not installed (run scripts/install.sh)");
    }
    found
}

/// The models directory, for tests that start the agent's own process; `None` (the test
/// skips) as [`models_present`] says.
pub fn models_dir() -> Option<std::path::PathBuf> {
    models_present()
        .then(|| grokcast_engines::models::ModelPaths::discover().ok())
        .flatten()
        .map(|p| p.root().to_path_buf())
}
