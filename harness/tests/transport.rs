//! A call over a transport other than Twilio's: the same pipeline hears a caller whose audio
//! comes at 48 kHz (a browser's rate) through an in-memory transport, answers with the
//! session's own prompt and voice, reports what happened as notes, and ends when the caller's
//! side stops, or with a protocol error when the transport reports one.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use grokcast_agent::call::{self, CallSettings};
use grokcast_agent::codec;
use grokcast_agent::config::AgentConfig;
use grokcast_agent::context::CallContext;
use grokcast_agent::metrics::Outcome;
use grokcast_agent::resample::StreamResampler;
use grokcast_agent::transport::{FromCaller, Note, Received, ToCaller, TransportError};
use grokcast_harness::caller;
use grokcast_harness::instant::InstantServers;
use grokcast_harness::local;
use tokio::sync::mpsc;

const RATE: u32 = 48_000;
/// 20 ms at [`RATE`].
const FRAME: usize = 960;

/// What the test's caller sends: an event, and for audio the samples.
type Sent = Result<(Received, Vec<f32>), TransportError>;

struct MemoryFromCaller(mpsc::Receiver<Sent>);

impl FromCaller for MemoryFromCaller {
    fn sample_rate(&self) -> u32 {
        RATE
    }

    async fn next(&mut self, audio: &mut Vec<f32>) -> Result<Option<Received>, TransportError> {
        // `recv` is cancel-safe: a message is either still queued or returned.
        match self.0.recv().await {
            None => Ok(None),
            Some(sent) => {
                let (received, samples) = sent?;
                audio.extend_from_slice(&samples);
                Ok(Some(received))
            }
        }
    }
}

/// What the agent sent.
#[derive(Debug)]
enum Played {
    Media(usize),
    Mark(String),
    Clear,
    Note(Note),
}

struct MemoryToCaller(mpsc::UnboundedSender<Played>);

impl MemoryToCaller {
    fn put(&self, played: Played) -> Result<(), TransportError> {
        self.0
            .send(played)
            .map_err(|_| TransportError::Connection("the caller hung up".into()))
    }
}

impl ToCaller for MemoryToCaller {
    async fn media(&mut self, frame: &[u8]) -> Result<(), TransportError> {
        self.put(Played::Media(frame.len()))
    }

    async fn mark(&mut self, name: &str) -> Result<(), TransportError> {
        self.put(Played::Mark(name.to_string()))
    }

    async fn clear(&mut self) -> Result<(), TransportError> {
        self.put(Played::Clear)
    }

    fn wants_notes(&self) -> bool {
        true
    }

    async fn note(&mut self, note: Note) -> Result<(), TransportError> {
        self.put(Played::Note(note))
    }
}

/// The call context of an agent on the instant model servers, its phrases synthesised; `None`
/// when the VAD model is not installed (never in CI).
async fn context(servers: &InstantServers) -> Option<Arc<CallContext>> {
    if !grokcast_harness::models_present() {
        return None;
    }
    let url = local::serve_models(servers).await.unwrap();
    // No Twilio here: the front door's settings only have to be valid.
    let mut config = AgentConfig {
        public_url: "http://127.0.0.1:8080".into(),
        insecure_skip_signature: true,
        ..AgentConfig::default()
    };
    local::use_models_at(&mut config, &url);
    let context = local::call_context(config).unwrap();
    context.prepare_clips().await;
    Some(Arc::new(context))
}

/// The question, spoken by espeak-ng, at [`RATE`].
fn question() -> Vec<f32> {
    let mulaw = caller::espeak_audio("What time do you open on Saturday?").unwrap();
    let mut pcm = vec![0f32; mulaw.len()];
    codec::decode_into(&mulaw, &mut pcm);
    let mut up = StreamResampler::new(8000, RATE).unwrap();
    let mut out = Vec::new();
    up.push(&pcm, &mut |s| out.extend_from_slice(s)).unwrap();
    up.flush(&mut |s| out.extend_from_slice(s)).unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_at_48_khz_on_another_transport_is_heard_and_answered() {
    let servers = InstantServers::default();
    let Some(context) = context(&servers).await else {
        return;
    };
    let (to_agent, from_caller) = mpsc::channel::<Sent>(64);
    let (to_caller, mut played) = mpsc::unbounded_channel();
    let settings = CallSettings {
        system_prompt: Some("You are a pirate. Answer like one.".into()),
        voice: Some("shimmer".into()),
        call_sid: None,
    };
    let call = tokio::spawn(call::run(
        context.clone(),
        settings,
        MemoryFromCaller(from_caller),
        MemoryToCaller(to_caller),
    ));

    // Silence while the greeting plays, the question, then silence until the answer plays,
    // in real time; marks are acknowledged as they come (played at once).
    let mut audio = vec![0f32; 5 * RATE as usize / 2];
    audio.extend(question());
    audio.extend(vec![0f32; 8 * RATE as usize]);
    let question_ends = (audio.len() - 8 * RATE as usize) / FRAME;
    let mut frames_after_question = 0;
    let mut notes = Vec::new();
    let mut ticker = tokio::time::interval(Duration::from_millis(20));
    for (i, frame) in audio.chunks(FRAME).enumerate() {
        ticker.tick().await;
        to_agent
            .send(Ok((Received::Audio, frame.to_vec())))
            .await
            .unwrap();
        while let Ok(p) = played.try_recv() {
            match p {
                Played::Media(bytes) => {
                    assert_eq!(bytes, 160, "20 ms of 8 kHz mu-law");
                    if i > question_ends {
                        frames_after_question += 1;
                    }
                }
                Played::Mark(name) => to_agent
                    .send(Ok((Received::Mark(name), Vec::new())))
                    .await
                    .unwrap(),
                Played::Clear => {}
                Played::Note(note) => notes.push(note),
            }
        }
        if frames_after_question >= 10 {
            break;
        }
    }
    assert!(
        frames_after_question >= 10,
        "the agent never answered the question"
    );
    let transcribed = servers
        .counts
        .stt
        .load(std::sync::atomic::Ordering::Relaxed)
        + servers
            .counts
            .stt_streams
            .load(std::sync::atomic::Ordering::Relaxed);
    assert!(transcribed >= 1, "the question was never transcribed");

    // The session's prompt and voice, not the VoiceAgent's.
    let conversations = servers.conversations.lock().unwrap().clone();
    let system = &conversations.last().expect("no chat request")[0];
    assert_eq!(system["content"], "You are a pirate. Answer like one.");
    let voices = servers.voices.lock().unwrap().clone();
    assert_eq!(voices.last(), Some(&Some("shimmer".to_string())));
    assert!(
        voices.first() != Some(&Some("shimmer".to_string())),
        "the fixed phrases keep the VoiceAgent's voice: {voices:?}"
    );

    // What the page shows: the greeting, the caller's words, the reply and the turn's figures,
    // in that order.
    let greeting = &context.config.persona.greeting;
    let heard = servers.behaviour.lock().unwrap().transcript.clone();
    let position = |want: &dyn Fn(&Note) -> bool| notes.iter().position(want);
    let greeted = position(&|n| matches!(n, Note::Agent(t) if t == greeting));
    let asked = position(&|n| matches!(n, Note::Caller(t) if *t == heard));
    let answered = notes
        .iter()
        .enumerate()
        .skip(asked.map_or(0, |a| a + 1))
        .find(|(_, n)| matches!(n, Note::Agent(_)))
        .map(|(i, _)| i);
    let timed = notes.iter().find_map(|n| match n {
        Note::Turn(sample) => Some(*sample),
        _ => None,
    });
    assert!(
        greeted.is_some() && asked.is_some() && answered.is_some(),
        "{notes:?}"
    );
    assert!(greeted < asked && asked < answered, "{notes:?}");
    // The caller spoke after the greeting and never over the agent.
    assert!(
        !notes.iter().any(|n| matches!(n, Note::BargeIn)),
        "a barge-in nobody made: {notes:?}"
    );
    let timed = timed.expect("no turn figures");
    assert!(timed.latency >= timed.timings.endpointing, "{timed:?}");

    to_agent
        .send(Ok((Received::Stop, Vec::new())))
        .await
        .unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(5), call)
        .await
        .expect("the call did not end on stop")
        .unwrap();
    assert_eq!(outcome, Outcome::Completed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transport_protocol_error_ends_its_call_as_a_protocol_error() {
    let servers = InstantServers::default();
    let Some(context) = context(&servers).await else {
        return;
    };
    let (to_agent, from_caller) = mpsc::channel::<Sent>(4);
    let (to_caller, _played) = mpsc::unbounded_channel();
    let call = tokio::spawn(call::run(
        context,
        CallSettings::default(),
        MemoryFromCaller(from_caller),
        MemoryToCaller(to_caller),
    ));
    to_agent
        .send(Ok((Received::Audio, vec![0.0; FRAME])))
        .await
        .unwrap();
    to_agent
        .send(Err(TransportError::protocol(std::io::Error::other(
            "a packet of 7 bytes is not a frame",
        ))))
        .await
        .unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(5), call)
        .await
        .expect("the call did not end on the error")
        .unwrap();
    assert_eq!(outcome, Outcome::ProtocolError);
}
