//! The local demo path on real models: Silero VAD, Whisper, Gemma and Piper in-process,
//! called over real sockets by the Twilio-protocol caller. The answer's audio, as the caller
//! heard it, is transcribed again by Whisper.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use grokcast_agent::codec;
use grokcast_agent::resample::StreamResampler;
use grokcast_engines::models::ModelPaths;
use grokcast_harness::demo::{self, DemoOptions};

fn models() -> Option<ModelPaths> {
    let paths = ModelPaths::discover().ok().filter(|p| {
        p.vad().is_ok() && p.whisper().is_ok() && p.llm().is_ok() && p.piper_voice().is_ok()
    });
    if paths.is_none() {
        assert!(
            std::env::var_os("GROKCAST_REQUIRE_MODELS").is_none(),
            "models are required (GROKCAST_REQUIRE_MODELS is set): run scripts/install.sh"
        );
        eprintln!("skipped: models not installed (run scripts/install.sh)");
    }
    paths
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spoken_question_gets_a_spoken_answer_whisper_can_transcribe() {
    let Some(paths) = models() else { return };
    if !demo::serve_llm_binary().exists() {
        eprintln!(
            "skipped: grokcast-serve-llm is not built (cargo build -p grokcast-engines --no-default-features --features llama --bin grokcast-serve-llm)"
        );
        return;
    }
    let record = std::env::temp_dir().join(format!("grokcast-embedded-{}.wav", std::process::id()));
    let options = DemoOptions {
        say: vec!["What are your opening hours today?".into()],
        record: record.clone(),
        streaming_stt: true,
    };
    let report = tokio::time::timeout(Duration::from_secs(240), demo::run(&options))
        .await
        .unwrap()
        .unwrap();
    let _ = std::fs::remove_file(&record);
    assert!(report.call.greeting_frames > 0, "no greeting");
    let turn = report.call.turns.first().expect("the caller spoke");
    assert!(
        turn.latency.is_some() && turn.agent_frames > 0,
        "no spoken answer: {:?}",
        report.call.turns
    );
    assert!(
        report
            .transcript
            .iter()
            .any(|(who, text)| who == "caller" && text.to_lowercase().contains("opening hours")),
        "{:?}",
        report.transcript
    );

    // The answer is what the caller heard after it stopped speaking.
    let said_end = report
        .call
        .said
        .iter()
        .rposition(|b| codec::decode_sample(*b).unsigned_abs() > 500)
        .unwrap();
    let answer = &report.call.heard[said_end.min(report.call.heard.len())..];
    let mut pcm8k = vec![0f32; answer.len()];
    codec::decode_into(answer, &mut pcm8k);
    let mut up = StreamResampler::new(8000, 16_000).unwrap();
    let mut pcm16k = Vec::new();
    up.push(&pcm8k, &mut |s| pcm16k.extend_from_slice(s))
        .unwrap();
    up.flush(&mut |s| pcm16k.extend_from_slice(s)).unwrap();
    let whisper = grokcast_engines::stt::WhisperStt::load(&paths.whisper().unwrap()).unwrap();
    let text = whisper.transcribe(&pcm16k, Some("en")).unwrap();
    assert!(
        text.chars().any(char::is_alphabetic),
        "Whisper heard nothing in the answer: {text:?}"
    );
}
