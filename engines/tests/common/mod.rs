//! Shared test setup: finding the models (or skipping when they are absent and not
//! required), loading engines, and making speech with espeak-ng.

#![allow(dead_code, clippy::unwrap_used)]

use std::process::Command;

use grokcast_engines::audio;
use grokcast_engines::models::{self, ModelPaths};
use grokcast_engines::server::{self, AppState, Engines, ServerConfig};

/// The models, or `None` (with a printed reason) when they are not installed and
/// `GROKCAST_REQUIRE_MODELS` is unset. CI sets it, so there a missing model fails.
pub fn models() -> Option<ModelPaths> {
    let required = std::env::var_os("GROKCAST_REQUIRE_MODELS").is_some_and(|v| !v.is_empty());
    let found = ModelPaths::discover().and_then(|p| {
        p.vad()?;
        p.onnxruntime()?;
        p.whisper()?;
        p.piper_voice()?;
        p.llm()?;
        p.smart_turn()?;
        Ok(p)
    });
    match found {
        Ok(p) => {
            models::init_onnxruntime(&p.onnxruntime().unwrap()).unwrap();
            Some(p)
        }
        Err(e) if required => panic!("GROKCAST_REQUIRE_MODELS is set but models are missing: {e}"),
        Err(e) => {
            eprintln!("SKIPPED: models not installed ({e}); run scripts/install.sh");
            None
        }
    }
}

/// 16 kHz mono speech of `text` from the espeak-ng command.
pub fn espeak_16k(text: &str) -> Vec<f32> {
    let out = Command::new("espeak-ng")
        .args(["-v", "en-us", "-s", "150", "--stdout", text])
        .output()
        .expect("espeak-ng runs (scripts/install.sh installs it)");
    assert!(out.status.success(), "espeak-ng failed: {:?}", out.status);
    let clip = audio::decode_clip(&out.stdout, 22_050).expect("espeak-ng writes WAV");
    audio::resample(&clip.samples, clip.sample_rate, 16_000)
}

/// Lower-case words without punctuation.
pub fn words(text: &str) -> Vec<String> {
    text.to_lowercase()
        .split(|c: char| !c.is_alphanumeric() && c != '\'')
        .filter(|w| !w.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Asserts every key word appears in the transcript.
pub fn assert_has_words(transcript: &str, expected: &[&str]) {
    let got = words(transcript);
    for w in expected {
        assert!(
            got.iter().any(|g| g == w),
            "expected {w:?} in transcript {transcript:?}"
        );
    }
}

/// grokcast-serve on a free 127.0.0.1 port; dropping it shuts the server down.
pub struct TestServer {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    _shutdown: tokio::sync::oneshot::Sender<()>,
}

/// Starts a server with `config`, and with `engines` as if they had loaded.
pub async fn start(config: ServerConfig, engines: Option<Engines>) -> TestServer {
    let state = AppState::new(config).unwrap();
    if let Some(e) = engines {
        state.set_engines(e);
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server::serve(listener, state, async {
        let _ = rx.await;
    }));
    TestServer {
        base: format!("http://{addr}"),
        _shutdown: tx,
    }
}
