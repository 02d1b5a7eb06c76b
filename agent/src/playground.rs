//! The browser playground: a second transport beside Twilio's, for the people who tune
//! prompts and voices. The page (`/playground`) talks to the agent over a WebSocket
//! (`/playground/socket`) carrying Opus both ways, and the call runs through the same
//! pipeline as a phone call ([`crate::call::run`]): VAD, turn-taking, barge-in, metrics.
//!
//! # The socket's protocol, `grokcast.playground.v1`
//!
//! The page offers two subprotocols: `grokcast.playground.v1` and `token.` followed by the
//! playground token in unpadded base64url (a browser cannot set headers on a WebSocket; a
//! subprotocol, unlike a query string, stays out of access logs). A missing or wrong token
//! is refused with 401 before the upgrade.
//!
//! - page to agent: first a text `{"type":"start","systemPrompt":…,"voice":…}` (both
//!   optional: this session's own prompt and voice); then each binary message is one Opus
//!   packet of 20 ms of mono 48 kHz microphone audio; a text `{"type":"mark","name":…}` when
//!   playback reaches a mark; `{"type":"stop"}` to hang up.
//! - agent to page: binary messages are Opus packets of 20 ms of the agent's voice (mono,
//!   48 kHz); texts are `mark` and `clear` (as Twilio's), and what the page shows: `caller`
//!   and `agent` (`text`), `turn` (the latency and its stages, in ms), `bargeIn`, and
//!   `error` (`message`) before the agent closes a session the page broke.
//!
//! A packet that is not Opus, or not 20 ms, ends that session only, with the error in the
//! page.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use audiopus::coder::{Decoder, Encoder};
use audiopus::packet::Packet;
use audiopus::{Application, Channels, MutSignals, SampleRate};
use axum::extract::ws::{Message, WebSocket};
use base64::Engine as _;
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use serde::Deserialize;

use crate::call::CallSettings;
use crate::codec;
use crate::transport::{FromCaller, Note, Received, ToCaller, TransportError};

/// The subprotocol the page and the agent speak.
pub const PROTOCOL: &str = "grokcast.playground.v1";

/// The prefix of the subprotocol that carries the token.
pub const TOKEN_PREFIX: &str = "token.";

/// The page, served as it is: it holds no secret (the token is typed in, or comes in the
/// address's fragment, which browsers never send).
pub const PAGE: &str = include_str!("playground.html");

/// Opus at 48 kHz, the rate browsers capture and play at.
pub const RATE: u32 = 48_000;

/// Samples in one 20 ms packet at [`RATE`].
pub const FRAME_SAMPLES: usize = 960;

/// The rate the page's packets are decoded at: the pipeline's own (VAD, STT), so libopus
/// converts inside its decoder and the call loop resamples nothing.
pub const DECODE_RATE: u32 = 16_000;

/// The rate the agent's voice is encoded from: the phone line's 8 kHz, as the call loop makes
/// it. Opus codes it as narrowband (cheaper than upsampling it to 48 kHz first) and the page
/// decodes any Opus packet at 48 kHz.
pub const ENCODE_RATE: u32 = 8_000;

/// 20 ms at `rate`.
const fn frame_at(rate: u32) -> usize {
    rate as usize / 50
}

/// Largest message accepted from the page: an Opus packet is at most 1275 bytes; a start
/// with a long system prompt is the largest text.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// How long the page may take to send its start.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether the subprotocols the page offered carry `token`.
pub fn token_offered(offered: &str, token: &str) -> bool {
    let want = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(token);
    offered
        .split(',')
        .filter_map(|p| p.trim().strip_prefix(TOKEN_PREFIX))
        .any(|given| constant_time_eq(given.as_bytes(), want.as_bytes()))
}

/// Compares without stopping at the first difference, so the time taken does not tell how
/// much of a guessed token was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A text message from the page.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase", deny_unknown_fields)]
enum FromPage {
    Start {
        #[serde(default, rename = "systemPrompt")]
        system_prompt: Option<String>,
        #[serde(default)]
        voice: Option<String>,
    },
    Mark {
        name: String,
    },
    Stop,
}

/// Why the page broke the protocol.
#[derive(Debug, thiserror::Error)]
pub enum PlaygroundError {
    /// A binary message that Opus could not decode.
    #[error("audio packet of {bytes} bytes is not Opus: {message}")]
    NotOpus {
        /// The packet's size.
        bytes: usize,
        /// What libopus said.
        message: String,
    },
    /// An Opus packet of another length than 20 ms.
    #[error(
        "audio packet of {ms} ms; the playground sends 20 ms ({FRAME_SAMPLES} samples at 48 kHz)"
    )]
    WrongFrameSize {
        /// Its length.
        ms: f64,
    },
    /// A text message that is not one of the protocol's.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// A message over [`MAX_MESSAGE_BYTES`].
    #[error("message of {0} bytes is over the {MAX_MESSAGE_BYTES}-byte limit")]
    Oversized(usize),
    /// Something other than `start` first, or a second `start`.
    #[error("{0}")]
    OutOfOrder(&'static str),
    /// No `start` within [`START_TIMEOUT`].
    #[error("no start message within {0:?}")]
    NoStart(Duration),
    /// The socket closed before `start`.
    #[error("the socket closed before start")]
    Closed,
    /// The socket failed.
    #[error("websocket: {0}")]
    Socket(String),
    /// libopus could not be set up.
    #[error("opus: {0}")]
    Codec(String),
}

/// The last protocol error of a session, kept so the page can be told before the close.
pub type LastError = Arc<Mutex<Option<String>>>;

/// The socket's sending half, shared by the agent's side and whoever closes the session.
type Sink = Arc<tokio::sync::Mutex<SplitSink<WebSocket, Message>>>;

/// A session past its `start`.
pub struct Session {
    /// The session's own prompt and voice.
    pub settings: CallSettings,
    /// The page's side.
    pub from_caller: PageFromCaller,
    /// The agent's side.
    pub to_caller: PageToCaller,
    /// Closes the session once the call is over, saying why if the page broke it.
    pub closer: Closer,
}

/// Ends a session: the call's tasks are gone by then, so the socket is free to say why.
pub struct Closer {
    sink: Sink,
    last_error: LastError,
}

impl Closer {
    /// Tells the page the error that ended its session, if one did, and closes the socket.
    pub async fn close(self) {
        let error = self
            .last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let mut sink = self.sink.lock().await;
        if let Some(message) = error {
            let text = serde_json::json!({"type": "error", "message": message}).to_string();
            let _ = sink.send(Message::Text(text.into())).await;
        }
        let _ = sink.close().await;
    }
}

/// Waits for the page's `start` on an upgraded socket.
pub async fn accept(socket: WebSocket) -> Result<Session, PlaygroundError> {
    let (sink, mut stream) = socket.split();
    let settings = tokio::time::timeout(START_TIMEOUT, async {
        loop {
            let message = stream
                .next()
                .await
                .ok_or(PlaygroundError::Closed)?
                .map_err(|e| PlaygroundError::Socket(e.to_string()))?;
            match message {
                Message::Text(text) => match parse(text.as_str())? {
                    FromPage::Start {
                        system_prompt,
                        voice,
                    } => {
                        let keep = |s: Option<String>| s.filter(|s| !s.trim().is_empty());
                        return Ok(CallSettings {
                            system_prompt: keep(system_prompt),
                            voice: keep(voice),
                            call_sid: None,
                        });
                    }
                    _ => return Err(PlaygroundError::OutOfOrder("a message before start")),
                },
                Message::Binary(_) => {
                    return Err(PlaygroundError::OutOfOrder("audio before start"));
                }
                Message::Close(_) => return Err(PlaygroundError::Closed),
                _ => continue,
            }
        }
    })
    .await
    .map_err(|_| PlaygroundError::NoStart(START_TIMEOUT))??;
    let codec = |e: audiopus::Error| PlaygroundError::Codec(e.to_string());
    let decoder = Decoder::new(SampleRate::Hz16000, Channels::Mono).map_err(codec)?;
    let encoder =
        Encoder::new(SampleRate::Hz8000, Channels::Mono, Application::Voip).map_err(codec)?;
    let last_error = LastError::default();
    let sink: Sink = Arc::new(tokio::sync::Mutex::new(sink));
    Ok(Session {
        settings,
        from_caller: PageFromCaller {
            stream,
            decoder,
            decoded: vec![0.0; 6 * frame_at(DECODE_RATE)],
            last_error: last_error.clone(),
        },
        to_caller: PageToCaller {
            sink: sink.clone(),
            encoder,
            pcm: vec![0.0; crate::pacer::FRAME_BYTES],
            pending: Vec::with_capacity(2 * frame_at(ENCODE_RATE)),
            packet: vec![0; 1500],
        },
        closer: Closer { sink, last_error },
    })
}

fn parse(text: &str) -> Result<FromPage, PlaygroundError> {
    if text.len() > MAX_MESSAGE_BYTES {
        return Err(PlaygroundError::Oversized(text.len()));
    }
    serde_json::from_str(text).map_err(|e| PlaygroundError::Malformed(e.to_string()))
}

/// The page's messages after `start`: microphone packets, marks, stop.
pub struct PageFromCaller {
    stream: SplitStream<WebSocket>,
    decoder: Decoder,
    /// Room for the longest Opus packet (120 ms), so an over-long one is caught, not cut.
    decoded: Vec<f32>,
    last_error: LastError,
}

impl PageFromCaller {
    fn fail(&self, error: PlaygroundError) -> TransportError {
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(error.to_string());
        TransportError::protocol(error)
    }

    fn decode(&mut self, packet: &[u8], audio: &mut Vec<f32>) -> Result<(), PlaygroundError> {
        if packet.len() > MAX_MESSAGE_BYTES {
            return Err(PlaygroundError::Oversized(packet.len()));
        }
        let not_opus = |e: audiopus::Error| PlaygroundError::NotOpus {
            bytes: packet.len(),
            message: e.to_string(),
        };
        let input = Packet::try_from(packet).map_err(not_opus)?;
        let output = MutSignals::try_from(&mut self.decoded[..]).map_err(not_opus)?;
        let samples = self
            .decoder
            .decode_float(Some(input), output, false)
            .map_err(not_opus)?;
        if samples != frame_at(DECODE_RATE) {
            return Err(PlaygroundError::WrongFrameSize {
                ms: samples as f64 * 1000.0 / DECODE_RATE as f64,
            });
        }
        audio.extend_from_slice(&self.decoded[..samples]);
        Ok(())
    }
}

impl FromCaller for PageFromCaller {
    fn sample_rate(&self) -> u32 {
        DECODE_RATE
    }

    async fn next(&mut self, audio: &mut Vec<f32>) -> Result<Option<Received>, TransportError> {
        loop {
            // The only await: a message is either still in the socket or handled below.
            let Some(message) = self.stream.next().await else {
                return Ok(None);
            };
            let message = message.map_err(|e| TransportError::Connection(e.to_string()))?;
            return match message {
                Message::Binary(packet) => match self.decode(&packet, audio) {
                    Ok(()) => Ok(Some(Received::Audio)),
                    Err(e) => Err(self.fail(e)),
                },
                Message::Text(text) => match parse(text.as_str()) {
                    Ok(FromPage::Mark { name }) => Ok(Some(Received::Mark(name))),
                    Ok(FromPage::Stop) => Ok(Some(Received::Stop)),
                    Ok(FromPage::Start { .. }) => {
                        Err(self.fail(PlaygroundError::OutOfOrder("a second start")))
                    }
                    Err(e) => Err(self.fail(e)),
                },
                Message::Close(_) => Ok(None),
                _ => continue,
            };
        }
    }
}

/// The agent's voice and notes to the page.
pub struct PageToCaller {
    sink: Sink,
    /// Opus from the line's 8 kHz ([`ENCODE_RATE`]).
    encoder: Encoder,
    /// One frame of the line decoded from mu-law.
    pcm: Vec<f32>,
    /// Line audio not yet a whole 20 ms packet (a clause's last frame may be short).
    pending: Vec<f32>,
    packet: Vec<u8>,
}

impl PageToCaller {
    async fn send(&mut self, message: Message) -> Result<(), TransportError> {
        self.sink
            .lock()
            .await
            .send(message)
            .await
            .map_err(|e| TransportError::Connection(e.to_string()))
    }

    async fn text(&mut self, value: serde_json::Value) -> Result<(), TransportError> {
        self.send(Message::Text(value.to_string().into())).await
    }
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

impl ToCaller for PageToCaller {
    async fn media(&mut self, frame: &[u8]) -> Result<(), TransportError> {
        let n = frame.len().min(self.pcm.len());
        codec::decode_into(&frame[..n], &mut self.pcm[..n]);
        self.pending.extend_from_slice(&self.pcm[..n]);
        let whole = frame_at(ENCODE_RATE);
        while self.pending.len() >= whole {
            let bytes = self
                .encoder
                .encode_float(&self.pending[..whole], &mut self.packet)
                .map_err(|e| TransportError::Connection(format!("opus: {e}")))?;
            self.pending.drain(..whole);
            let packet = self.packet[..bytes].to_vec();
            self.send(Message::Binary(packet.into())).await?;
        }
        Ok(())
    }

    async fn mark(&mut self, name: &str) -> Result<(), TransportError> {
        self.text(serde_json::json!({"type": "mark", "name": name}))
            .await
    }

    async fn clear(&mut self) -> Result<(), TransportError> {
        // Nothing of the stopped reply may leak into the next one.
        self.pending.clear();
        self.text(serde_json::json!({"type": "clear"})).await
    }

    fn wants_notes(&self) -> bool {
        true
    }

    async fn note(&mut self, note: Note) -> Result<(), TransportError> {
        let value = match note {
            Note::Caller(text) => serde_json::json!({"type": "caller", "text": text}),
            Note::Agent(text) => serde_json::json!({"type": "agent", "text": text}),
            Note::BargeIn => serde_json::json!({"type": "bargeIn"}),
            Note::Tool { tool, outcome } => {
                serde_json::json!({"type": "tool", "tool": tool, "outcome": outcome})
            }
            Note::Turn(sample) => {
                let t = sample.timings;
                serde_json::json!({
                    "type": "turn",
                    "latencyMs": ms(sample.latency),
                    "endpointingMs": ms(t.endpointing),
                    "sttMs": ms(t.stt),
                    "llmFirstTokenMs": ms(t.llm_first_token),
                    "llmFirstClauseMs": ms(t.llm_first_clause),
                    "ttsFirstAudioMs": ms(t.tts_first_audio),
                    "agentMs": ms(sample.agent),
                })
            }
        };
        self.text(value).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_is_read_from_its_subprotocol_and_nothing_else() {
        let token = "s3cret/with+odd=chars";
        let encoded = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(token);
        assert!(token_offered(
            &format!("{PROTOCOL}, {TOKEN_PREFIX}{encoded}"),
            token
        ));
        assert!(!token_offered(PROTOCOL, token));
        assert!(!token_offered(&format!("{TOKEN_PREFIX}{token}"), token));
        assert!(!token_offered(
            &format!("{PROTOCOL}, {TOKEN_PREFIX}{encoded}x"),
            token
        ));
        assert!(!token_offered(&format!("{PROTOCOL}, {encoded}"), token));
    }

    #[test]
    fn page_messages_are_checked() {
        assert!(matches!(
            parse(r#"{"type":"start","systemPrompt":"Be brief.","voice":"alloy"}"#),
            Ok(FromPage::Start { system_prompt: Some(p), voice: Some(v) }) if p == "Be brief." && v == "alloy"
        ));
        assert!(matches!(
            parse(r#"{"type":"start"}"#),
            Ok(FromPage::Start { .. })
        ));
        assert!(matches!(
            parse(r#"{"type":"mark","name":"t1-s0"}"#),
            Ok(FromPage::Mark { name }) if name == "t1-s0"
        ));
        assert!(matches!(
            parse(r#"{"type":"mark"}"#),
            Err(PlaygroundError::Malformed(_))
        ));
        assert!(matches!(
            parse(r#"{"type":"dial","to":"+15550100"}"#),
            Err(PlaygroundError::Malformed(_))
        ));
        assert!(matches!(
            parse("not json"),
            Err(PlaygroundError::Malformed(_))
        ));
        let long = format!(
            r#"{{"type":"start","systemPrompt":"{}"}}"#,
            "a".repeat(MAX_MESSAGE_BYTES)
        );
        assert!(matches!(parse(&long), Err(PlaygroundError::Oversized(_))));
    }
}
