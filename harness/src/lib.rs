//! What proves and measures the agent without a phone network or GPUs, kept out of the agent
//! that answers real calls:
//!
//! - [`caller`]: a simulated Twilio caller speaking Media Streams over a real socket, with
//!   signed webhooks, as Twilio's cloud would;
//! - [`instant`]: model servers that answer at once over the real protocols (OpenAI HTTP,
//!   Riva gRPC), standing for GPU model pools;
//! - [`demo`]: an agent on the embedded models answering one simulated call;
//! - [`local`]: an agent on this machine on the instant servers, as the tests start one;
//! - [`twilio_rest`]: Twilio's REST API for live calls (hang-ups and transfers);
//! - [`dtmf`]: a keypad-tone receiver for what a caller heard.

// Tests may unwrap: a panic is how they fail.
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod caller;
pub mod demo;
pub mod dtmf;
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

/// The value of the Prometheus series `name` carrying all `labels` (in any order) in the
/// text exposition `text`; `None` when there is no such series.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with('{'))
        .find(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}
