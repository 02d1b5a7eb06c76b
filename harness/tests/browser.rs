//! The playground in a real browser: Debian's Chromium, headless, driven by playwright-core
//! (harness/browser/playground.cjs), its microphone a WAV file in which the Piper voice asks
//! a question and later talks over the answer. The page must show the agent's answer, play
//! its voice, and show the barge-in; a screenshot is left for the docs.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use grokcast_agent::resample::StreamResampler;
use grokcast_harness::instant::InstantServers;
use grokcast_harness::local::LocalAgent;

const TOKEN: &str = "browser-test-token";
const RATE: u32 = 48_000;

/// Whether Chromium and node are here, or why the test cannot run (playwright-core's absence
/// is the script's error).
fn browser_parts() -> Result<(), String> {
    let chromium =
        std::env::var("GROKCAST_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    if !Path::new(&chromium).exists() {
        return Err(format!("{chromium} is not installed"));
    }
    let node = std::process::Command::new("node").arg("--version").output();
    if !node.is_ok_and(|o| o.status.success()) {
        return Err("node is not installed".into());
    }
    Ok(())
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The Piper voice saying `text`, at [`RATE`].
fn piper(text: &str) -> Vec<f32> {
    let paths = grokcast_engines::models::ModelPaths::discover().unwrap();
    let (onnx, json) = paths.piper_voice().unwrap();
    let voice = grokcast_engines::tts::PiperVoice::load(&onnx, &json)
        .unwrap()
        .without_noise();
    let mut pcm = Vec::new();
    voice
        .synthesize(text, &mut |clause| {
            pcm.extend_from_slice(clause);
            true
        })
        .unwrap();
    let mut up = StreamResampler::new(voice.sample_rate(), RATE).unwrap();
    let mut out = Vec::new();
    up.push(&pcm, &mut |s| out.extend_from_slice(s)).unwrap();
    up.flush(&mut |s| out.extend_from_slice(s)).unwrap();
    out
}

/// The microphone: silence while the greeting plays, the question, silence while the
/// answer starts, the interruption over the answer, then silence.
fn write_microphone(path: &Path) {
    let silence = |seconds: f32| vec![0f32; (seconds * RATE as f32) as usize];
    let mut audio = silence(3.0);
    audio.extend(piper("What time do you open on Saturday?"));
    audio.extend(silence(2.5));
    audio.extend(piper("Wait, stop, I have another question."));
    audio.extend(silence(6.0));
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: RATE,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut wav = hound::WavWriter::create(path, spec).unwrap();
    for s in audio {
        wav.write_sample((s.clamp(-1.0, 1.0) * 32767.0) as i16)
            .unwrap();
    }
    wav.finalize().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_in_chromium_hears_the_answer_and_shows_the_barge_in() {
    if !grokcast_harness::models_present() {
        return;
    }
    if let Err(why) = browser_parts() {
        assert!(
            std::env::var_os("GROKCAST_REQUIRE_MODELS").is_none(),
            "the browser test needs what scripts/install.sh installs: {why}"
        );
        eprintln!("skipped: {why} (run scripts/install.sh)");
        return;
    }
    let servers = InstantServers::default();
    // A long answer (synthetic speech: 55 ms a character), so there is time to talk over it.
    servers.set(|b| {
        b.reply = "We open at nine on Saturday, and we stay open until five in the afternoon, \
                   so there is plenty of time to come by, and the parking is free all day."
            .into();
    });
    let agent = LocalAgent::start(&servers, |c| {
        c.playground.enabled = true;
        c.playground_token = Some(TOKEN.into());
    })
    .await
    .unwrap();
    let url = agent.url.clone();

    let dir = std::env::temp_dir().join(format!("grokcast-browser-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let wav = dir.join("microphone.wav");
    write_microphone(&wav);
    let screenshot = std::env::var_os("GROKCAST_PLAYGROUND_SCREENSHOT")
        .map_or_else(|| dir.join("playground.png"), PathBuf::from);
    let script = repo_root().join("harness/browser/playground.cjs");
    let run = tokio::process::Command::new("node")
        .arg(&script)
        .args(["--url", &url, "--token", TOKEN, "--timeout-ms", "45000"])
        .arg("--wav")
        .arg(&wav)
        .arg("--screenshot")
        .arg(&screenshot)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("the browser did not finish within 2 minutes")
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "the browser run failed: {stderr}");
    let seen: serde_json::Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&output.stdout)));
    let _ = std::fs::remove_dir_all(&dir);

    let context = format!("{seen:#}");
    assert_eq!(seen["errors"], serde_json::json!([]), "{context}");
    let heard = servers.behaviour.lock().unwrap().transcript.clone();
    let callers: Vec<&str> = seen["caller"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t.as_str())
        .collect();
    assert!(callers.contains(&heard.as_str()), "{context}");
    let agent = seen["agent"].as_array().unwrap();
    assert!(
        agent.iter().any(|t| t
            .as_str()
            .is_some_and(|t| t.starts_with("We open at nine on Saturday"))),
        "the answer's words never appeared: {context}"
    );
    assert!(
        seen["played"].as_u64().unwrap_or(0) >= 1000,
        "the agent's voice did not play: {context}"
    );
    assert!(
        seen["bargeIns"].as_u64().unwrap_or(0) >= 1,
        "talking over the answer did not interrupt it: {context}"
    );
    assert!(
        !seen["turns"].as_array().unwrap().is_empty(),
        "no turn figures: {context}"
    );
}
