//! Sesame CSM on candle (feature `csm`): a tiny model the test writes itself, in CSM's real
//! safetensors layout and config with random weights, through the engine and through
//! grokcast-serve over real HTTP on 127.0.0.1. The real checkpoint cannot be fetched here;
//! `real_weights_speak_and_stop_by_themselves` runs when `GROKCAST_CSM_WEIGHTS` names one.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{TestServer, start};
use futures::StreamExt;
use grokcast_engines::csm::{
    self, CsmConfig, CsmOptions, CsmVoice, FRAME_SAMPLES, MimiShape, SAMPLE_RATE,
};
use grokcast_engines::server::{Engines, ServerConfig};
use grokcast_engines::tts::Speaker;
use reqwest::StatusCode;
use serde_json::json;

/// A fresh directory under the system's temporary directory, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "grokcast-csm-{name}-{}-{:x}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tiny_model(name: &str) -> TempDir {
    let dir = TempDir::new(name);
    csm::write_random_model(&dir.0, &csm::tiny_config(), Some(&MimiShape::tiny())).unwrap();
    dir
}

fn options(max_audio: Duration) -> CsmOptions {
    CsmOptions {
        max_audio,
        prefer_gpu: false,
        ..CsmOptions::default()
    }
}

#[test]
fn a_tiny_model_in_the_real_layout_loads_and_streams_80_ms_frames() {
    let dir = tiny_model("stream");
    for file in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "mimi.safetensors",
    ] {
        assert!(dir.0.join(file).is_file(), "{file}");
    }
    // The config is CSM's, keys and all.
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.0.join("config.json")).unwrap()).unwrap();
    for key in [
        "audio_num_codebooks",
        "audio_vocab_size",
        "backbone_flavor",
        "decoder_flavor",
        "text_vocab_size",
    ] {
        assert!(cfg.get(key).is_some(), "{key} in {cfg}");
    }
    let voice = CsmVoice::load(&dir.0, None, options(Duration::from_millis(800))).unwrap();
    assert_eq!(voice.sample_rate(), SAMPLE_RATE);
    assert_eq!(voice.voices(), vec!["0".to_owned(), "1".to_owned()]);
    let frames = speak_all(&voice, "Hello, thanks for calling.", Some("1"));
    // Random weights never say "stop", so the cap (800 ms = 10 frames) ends it.
    assert_eq!(frames.len(), 10);
    assert!(frames.iter().all(|f| f.len() == FRAME_SAMPLES));
    assert!(frames.iter().flatten().all(|s| s.is_finite()));

    // Each request starts afresh from the same seed: the same words sound the same.
    let again = speak_all(&voice, "Hello, thanks for calling.", Some("1"));
    assert_eq!(frames, again);
}

/// Every frame of one answer.
fn speak_all(voice: &CsmVoice, text: &str, name: Option<&str>) -> Vec<Vec<f32>> {
    let mut frames = Vec::new();
    voice
        .synthesize(text, name, &mut |f| {
            frames.push(f.to_vec());
            true
        })
        .unwrap();
    frames
}

#[test]
fn returning_false_stops_generation_and_bad_requests_are_refused() {
    let dir = tiny_model("cancel");
    let voice = CsmVoice::load(&dir.0, None, options(Duration::from_secs(60))).unwrap();
    let mut calls = 0;
    voice
        .synthesize("A long answer the caller interrupts.", None, &mut |_| {
            calls += 1;
            calls < 2
        })
        .unwrap();
    assert_eq!(
        calls, 2,
        "no frame is generated after the callback says stop"
    );

    let err = voice
        .synthesize("Hi", Some("7"), &mut |_| true)
        .unwrap_err();
    assert!(err.to_string().contains("\"7\""), "{err}");
    // More text than the backbone's context (512 positions in the tiny model).
    let long = "word ".repeat(200);
    let err = voice.synthesize(&long, None, &mut |_| true).unwrap_err();
    assert!(err.to_string().contains("positions"), "{err}");
    // The engine still speaks after refusing.
    let mut n = 0;
    voice
        .synthesize("Still here.", None, &mut |_| {
            n += 1;
            n < 3
        })
        .unwrap();
    assert_eq!(n, 3);
}

fn write_voice(dir: &Path, name: &str, spec: serde_json::Value, seconds: f32) {
    std::fs::write(dir.join(format!("{name}.json")), spec.to_string()).unwrap();
    let rate = 16_000;
    let samples: Vec<f32> = (0..(seconds * rate as f32) as usize)
        .map(|i| 0.3 * (i as f32 * 220.0 * std::f32::consts::TAU / rate as f32).sin())
        .collect();
    std::fs::write(
        dir.join(format!("{name}.wav")),
        grokcast_engines::audio::wav_bytes(&samples, rate),
    )
    .unwrap();
}

#[test]
fn voices_from_a_directory_prompt_the_model_and_broken_ones_are_named() {
    let model = tiny_model("voices");
    let voices = TempDir::new("voices-dir");
    write_voice(
        &voices.0,
        "receptionist",
        json!({"speaker": 1, "text": "Good morning, Example Dental.", "audio": "receptionist.wav"}),
        1.0,
    );
    // A ConfigMap mount's own entries are not voices.
    std::fs::create_dir_all(voices.0.join("..2026_12_05")).unwrap();
    let voice = CsmVoice::load(
        &model.0,
        Some(&voices.0),
        options(Duration::from_millis(240)),
    )
    .unwrap();
    assert_eq!(voice.voices(), vec!["receptionist".to_owned()]);
    assert_eq!(
        speak_all(&voice, "How can I help?", Some("receptionist")).len(),
        3
    );

    // Text without audio, a missing WAV, an unknown key: each a clear load error.
    for (spec, want) in [
        (json!({"speaker": 0, "text": "hi"}), "both text and audio"),
        (
            json!({"speaker": 0, "text": "hi", "audio": "missing.wav"}),
            "missing.wav",
        ),
        (json!({"speaker": 0, "pitch": 3}), "pitch"),
    ] {
        let bad = TempDir::new("bad-voice");
        std::fs::write(bad.0.join("v.json"), spec.to_string()).unwrap();
        let err = CsmVoice::load(&model.0, Some(&bad.0), options(Duration::from_secs(1)))
            .unwrap_err()
            .to_string();
        assert!(err.contains(want), "{err} should name {want}");
    }
}

#[test]
fn a_model_directory_missing_a_file_names_it() {
    let dir = tiny_model("missing");
    std::fs::remove_file(dir.0.join("mimi.safetensors")).unwrap();
    let err = CsmVoice::load(&dir.0, None, options(Duration::from_secs(1)))
        .unwrap_err()
        .to_string();
    assert!(err.contains("mimi.safetensors"), "{err}");
    let dir = tiny_model("flavor");
    let config = dir.0.join("config.json");
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "\"backbone_flavor\": \"tiny-backbone\"",
        "\"backbone_flavor\": \"llama-7B\"",
    );
    assert!(text.contains("llama-7B"));
    std::fs::write(&config, text).unwrap();
    let err = CsmVoice::load(&dir.0, None, options(Duration::from_secs(1)))
        .unwrap_err()
        .to_string();
    assert!(err.contains("llama-7B"), "{err}");
}

/// CSM behind a counter of the frames it hands on, so a test can tell that generation
/// stopped when the client went away.
#[derive(Debug)]
struct Counting {
    inner: CsmVoice,
    frames: Arc<AtomicUsize>,
}

impl Speaker for Counting {
    fn sample_rate(&self) -> u32 {
        self.inner.sample_rate()
    }
    fn voices(&self) -> Option<Vec<String>> {
        Some(self.inner.voices())
    }
    fn speak(
        &self,
        text: &str,
        voice: Option<&str>,
        on_audio: &mut dyn FnMut(&[f32]) -> bool,
    ) -> Result<(), String> {
        self.inner
            .synthesize(text, voice, &mut |f| {
                self.frames.fetch_add(1, Ordering::SeqCst);
                on_audio(f)
            })
            .map_err(|e| e.to_string())
    }
}

async fn serve(speaker: Arc<dyn Speaker>) -> TestServer {
    let config = ServerConfig {
        tts_models: vec!["sesame/csm-1b".into(), "tts-1".into()],
        queue_capacity: 1,
        workers: 1,
        ..ServerConfig::default()
    };
    // Struct update: builds with Whisper or llama have more engines, all left out here.
    #[allow(clippy::needless_update)]
    let engines = Engines {
        tts: Some(speaker),
        ..Engines::default()
    };
    start(config, Some(engines)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_streams_pcm_refuses_overload_and_stops_when_the_client_leaves() {
    let dir = tiny_model("server");
    // Ten minutes of speech at most: far more than the test ever lets it make.
    let max_frames = 10 * 60 * 1000 / 80;
    let frames = Arc::new(AtomicUsize::new(0));
    let speaker = Counting {
        inner: CsmVoice::load(&dir.0, None, options(Duration::from_secs(600))).unwrap(),
        frames: frames.clone(),
    };
    let server = serve(Arc::new(speaker)).await;
    let url = format!("{}/v1/audio/speech", server.base);
    let c = reqwest::Client::new();
    let body = |voice: &str| {
        json!({"model": "sesame/csm-1b", "input": "Thanks for calling, how can I help?",
               "voice": voice, "response_format": "pcm"})
    };

    // A voice the model does not have.
    let r = c.post(&url).json(&body("alloy")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let err: serde_json::Value = r.json().await.unwrap();
    assert_eq!(err["error"]["param"], "voice", "{err}");

    // A stream: raw PCM at the rate the header declares, in whole 80 ms frames.
    let first = c.post(&url).json(&body("0")).send().await.unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(first.headers()["x-sample-rate"], "24000");
    let mut stream = first.bytes_stream();
    let mut got = Vec::new();
    while got.len() < 3 * FRAME_SAMPLES * 2 {
        got.extend_from_slice(&stream.next().await.unwrap().unwrap());
    }
    assert_eq!(got.len() % (FRAME_SAMPLES * 2), 0, "whole frames of s16le");

    // The one place is taken: the next request is refused at once, not queued.
    let r = c.post(&url).json(&body("1")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    let err: serde_json::Value = r.json().await.unwrap();
    assert_eq!(err["error"]["code"], "queue_full", "{err}");

    // The caller hangs up (or barges in): the server stops generating and frees the place.
    drop(stream);
    let admitted = tokio::time::timeout(Duration::from_secs(120), async {
        loop {
            let r = c.post(&url).json(&body("1")).send().await.unwrap();
            if r.status() == StatusCode::OK {
                return r;
            }
            assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the abandoned stream kept its place");
    let made = frames.load(Ordering::SeqCst);
    assert!(
        made < max_frames / 10,
        "{made} frames made for a stream whose client left after 3"
    );
    drop(admitted);
}

/// The real checkpoint, where one is at hand: a directory with `sesame/csm-1b`'s
/// config.json and model.safetensors, Llama 3.2's tokenizer.json and `kyutai/mimi`'s
/// model.safetensors as mimi.safetensors.
#[test]
fn real_weights_speak_and_stop_by_themselves() {
    let Some(dir) = std::env::var_os("GROKCAST_CSM_WEIGHTS") else {
        eprintln!("SKIPPED: GROKCAST_CSM_WEIGHTS does not name a sesame/csm-1b checkout");
        return;
    };
    let voice = CsmVoice::load(
        Path::new(&dir),
        None,
        CsmOptions {
            max_audio: Duration::from_secs(15),
            ..CsmOptions::default()
        },
    )
    .unwrap();
    let cfg: CsmConfig = serde_json::from_str(
        &std::fs::read_to_string(Path::new(&dir).join("config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(cfg, CsmConfig::csm_1b());
    let mut samples = 0;
    voice
        .synthesize("Thanks for calling Example Dental.", Some("0"), &mut |f| {
            samples += f.len();
            true
        })
        .unwrap();
    let seconds = samples as f32 / SAMPLE_RATE as f32;
    // About two seconds of speech, ended by the model's own end frame, not the cap.
    assert!((0.8..14.0).contains(&seconds), "{seconds} s");
}
