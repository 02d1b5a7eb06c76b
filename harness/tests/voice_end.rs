//! Where the agent places the end of the caller's voice, with the real Silero VAD on the real
//! phone-line chain (mu-law, 8 -> 16 kHz): the silence it says it waited must be the silence
//! that followed the voice, not the shorter silence after Silero's late drop. Sample counts
//! stand in for clocks, so a loaded machine cannot change the outcome.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use grokcast_agent::turn::{Chunk, Endpointer, QuietMeter, TurnEvent, TurnTaking};
use grokcast_agent::{codec, resample::StreamResampler};
use grokcast_engines::models::{ModelPaths, init_onnxruntime};
use grokcast_engines::vad::{CHUNK_SAMPLES, SileroVad};
use grokcast_harness::caller;

const CHUNK: Duration = Duration::from_millis(32);

fn samples_16k(n: usize) -> Duration {
    grokcast_engines::audio::duration(n, 16_000)
}

fn vad() -> Option<SileroVad> {
    let paths = ModelPaths::discover().ok()?;
    let (Ok(ort), Ok(model)) = (paths.onnxruntime(), paths.vad()) else {
        assert!(
            std::env::var_os("GROKCAST_REQUIRE_MODELS").is_none(),
            "models are required (GROKCAST_REQUIRE_MODELS is set): run scripts/install.sh"
        );
        eprintln!("skipped: Silero VAD not installed (run scripts/install.sh)");
        return None;
    };
    init_onnxruntime(&ort).unwrap();
    Some(SileroVad::load(&model).unwrap())
}

/// The silence the endpointer reports at the end of `text` spoken over the line, and the
/// silence that really followed the voice when it decided; `meter` off leaves Silero alone.
fn silences(vad: &SileroVad, text: &str, meter: bool) -> (Duration, Duration) {
    // espeak's audio is trimmed to the voice: it ends at its last loud sample.
    let line = caller::espeak_audio(text).unwrap();
    let mut pcm = vec![0f32; line.len()];
    codec::decode_into(&line, &mut pcm);
    pcm.extend(std::iter::repeat_n(0.0, 8000));
    let mut upsampler = StreamResampler::new(8000, 16_000).unwrap();
    let voice_end = line.len() * 2 + upsampler.output_delay();
    let mut wide = Vec::new();
    upsampler
        .push(&pcm, &mut |s| wide.extend_from_slice(s))
        .unwrap();
    let mut state = vad.new_state();
    let mut quiet = QuietMeter::new();
    let mut endpointer = Endpointer::new(TurnTaking::default());
    for (i, chunk) in wide.chunks_exact(CHUNK_SAMPLES).enumerate() {
        let probability = vad.speech_probability(&mut state, chunk).unwrap();
        let tail = quiet.quiet_tail(chunk, probability);
        let chunk = Chunk {
            probability,
            length: CHUNK,
            quiet_tail: if meter {
                samples_16k(tail)
            } else {
                Duration::ZERO
            },
        };
        if let Some(TurnEvent::EndOfTurn { silence, .. }) = endpointer.push(chunk, false) {
            let real = samples_16k((i + 1) * CHUNK_SAMPLES - voice_end);
            return (silence, real);
        }
    }
    panic!("{text:?} never ended a turn");
}

#[test]
fn the_silence_waited_is_counted_from_the_voices_end_not_from_silero_s_drop() {
    let Some(vad) = vad() else { return };
    for text in [
        "Hello, what time do you open tomorrow?",
        "And are you open on Saturday?",
        "Great, thank you very much.",
        "Yes.",
    ] {
        let (said, real) = silences(&vad, text, true);
        let (_, late) = silences(&vad, text, false);
        eprintln!("{text}: {said:?} found of {real:?} real; Silero alone ends {late:?} after");
        // The voice's fading last phoneme may stand a few ms above the meter's floor (and
        // durations round to the microsecond).
        assert!(
            said <= real + Duration::from_millis(1)
                && real.saturating_sub(said) <= Duration::from_millis(16),
            "{text}: {said:?} counted, {real:?} real"
        );
        // The configured 300 ms, give or take the one chunk the decision waits for.
        assert!(
            real < Duration::from_millis(300) + CHUNK,
            "{text}: the turn ended {real:?} after the voice"
        );
        // Silero alone drops two chunks or more late, and the turn ends that much later:
        // the lag this removes.
        assert!(
            late >= real + 2 * CHUNK,
            "{text}: the turn ends {real:?} after the voice, {late:?} with Silero alone"
        );
    }
}
