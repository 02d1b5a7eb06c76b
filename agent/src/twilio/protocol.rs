//! The Media Streams protocol as typed messages, and a strict per-call parser.
//!
//! Twilio sends `connected`, `start`, `media`, `mark`, `dtmf` and `stop`; the agent sends
//! `media`, `mark` and `clear`. Sequence numbers, chunk numbers and timestamps arrive as decimal
//! strings. Unknown extra fields are accepted (Twilio adds fields over time) but every field the
//! agent relies on is required and checked.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Serialize};

/// Largest audio payload accepted in one `media` message: one second of 8 kHz mu-law.
/// Twilio sends 20 ms (160 bytes); anything bigger is a broken or hostile peer.
pub const MAX_MEDIA_BYTES: usize = 8000;

/// Largest text message accepted, so one frame cannot make the parser allocate without bound.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024;

/// A message from Twilio to the agent, as it appears on the wire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "lowercase")]
pub enum Inbound {
    /// First message on the socket.
    Connected {
        /// Always "Call".
        protocol: String,
        /// Protocol version, e.g. "1.0.0".
        version: String,
    },
    /// Stream metadata; comes once, before any media.
    Start {
        /// Position of this message in the stream.
        #[serde(rename = "sequenceNumber")]
        sequence_number: String,
        /// The stream's metadata.
        start: StartMetadata,
        /// The stream identifier (MZ...).
        #[serde(rename = "streamSid")]
        stream_sid: String,
    },
    /// A chunk of caller audio.
    Media {
        /// Position of this message in the stream.
        #[serde(rename = "sequenceNumber")]
        sequence_number: String,
        /// The audio.
        media: MediaPayload,
        /// The stream identifier.
        #[serde(rename = "streamSid")]
        stream_sid: String,
    },
    /// Playback reached a mark the agent sent.
    Mark {
        /// Position of this message in the stream.
        #[serde(rename = "sequenceNumber")]
        sequence_number: String,
        /// The mark.
        mark: MarkName,
        /// The stream identifier.
        #[serde(rename = "streamSid")]
        stream_sid: String,
    },
    /// The caller pressed a key.
    Dtmf {
        /// Position of this message in the stream.
        #[serde(rename = "sequenceNumber")]
        sequence_number: String,
        /// The key.
        dtmf: DtmfDigit,
        /// The stream identifier.
        #[serde(rename = "streamSid")]
        stream_sid: String,
    },
    /// The stream ended (the call hung up or the stream was stopped).
    Stop {
        /// Position of this message in the stream.
        #[serde(rename = "sequenceNumber")]
        sequence_number: String,
        /// Which call stopped.
        stop: StopMetadata,
        /// The stream identifier.
        #[serde(rename = "streamSid")]
        stream_sid: String,
    },
}

/// The `start` message's metadata.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StartMetadata {
    /// Account that owns the call (AC...).
    pub account_sid: String,
    /// The stream identifier (MZ...).
    pub stream_sid: String,
    /// The call (CA...).
    pub call_sid: String,
    /// Which tracks are streamed ("inbound", "outbound").
    pub tracks: Vec<String>,
    /// `<Parameter>`s from the TwiML `<Stream>`.
    #[serde(default)]
    pub custom_parameters: BTreeMap<String, String>,
    /// Encoding of the media payloads.
    pub media_format: MediaFormat,
}

/// Encoding of the media payloads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MediaFormat {
    /// Must be "audio/x-mulaw".
    pub encoding: String,
    /// Must be 8000.
    pub sample_rate: u32,
    /// Must be 1.
    pub channels: u32,
}

impl MediaFormat {
    /// The only format Media Streams use: 8 kHz mono mu-law.
    pub fn twilio() -> Self {
        Self {
            encoding: "audio/x-mulaw".into(),
            sample_rate: 8000,
            channels: 1,
        }
    }
}

/// The `media` message's audio.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MediaPayload {
    /// "inbound" (caller) or "outbound".
    #[serde(default = "inbound_track")]
    pub track: String,
    /// Chunk number, from 1, as a decimal string.
    pub chunk: String,
    /// Milliseconds since the stream started, as a decimal string.
    pub timestamp: String,
    /// Base64 mu-law audio.
    pub payload: String,
}

fn inbound_track() -> String {
    "inbound".into()
}

/// A mark's name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MarkName {
    /// The name the agent gave it.
    pub name: String,
}

/// A key press.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DtmfDigit {
    /// "inbound_track".
    #[serde(default)]
    pub track: String,
    /// One of 0-9, *, #, A-D.
    pub digit: String,
}

/// The `stop` message's metadata.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StopMetadata {
    /// Account that owns the call.
    pub account_sid: String,
    /// The call.
    pub call_sid: String,
}

/// A message from the agent to Twilio.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "lowercase")]
pub enum Outbound {
    /// Audio to play (base64 8 kHz mu-law).
    Media {
        /// The stream.
        #[serde(rename = "streamSid")]
        stream_sid: String,
        /// The audio.
        media: OutboundMedia,
    },
    /// Asks Twilio to echo this name back when playback reaches it.
    Mark {
        /// The stream.
        #[serde(rename = "streamSid")]
        stream_sid: String,
        /// The mark.
        mark: MarkName,
    },
    /// Drops all audio buffered at Twilio (barge-in).
    Clear {
        /// The stream.
        #[serde(rename = "streamSid")]
        stream_sid: String,
    },
}

/// Outbound audio.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutboundMedia {
    /// Base64 8 kHz mu-law.
    pub payload: String,
}

/// What was wrong with a message, without the call it belongs to.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ProtocolErrorKind {
    /// Not JSON, or JSON without the fields a known event needs.
    #[error("malformed message: {0}")]
    BadJson(String),
    /// Bigger than [`MAX_MESSAGE_BYTES`].
    #[error("message of {0} bytes is over the {MAX_MESSAGE_BYTES}-byte limit")]
    OversizedMessage(usize),
    /// Media payload is not base64.
    #[error("media payload is not valid base64: {0}")]
    BadBase64(String),
    /// Media payload decodes to more than [`MAX_MEDIA_BYTES`].
    #[error("media payload of {0} bytes is over the {MAX_MEDIA_BYTES}-byte limit")]
    OversizedFrame(usize),
    /// `start` announced something other than 8 kHz mono mu-law.
    #[error("unsupported media format {encoding} at {sample_rate} Hz with {channels} channels")]
    WrongMediaFormat {
        /// Announced encoding.
        encoding: String,
        /// Announced rate.
        sample_rate: u32,
        /// Announced channel count.
        channels: u32,
    },
    /// A message that needs `start` came before it.
    #[error("{0} before start")]
    MissingStart(&'static str),
    /// A second `start`.
    #[error("second start message")]
    DuplicateStart,
    /// A sequence or chunk number is not the next one.
    #[error("{what} {got} out of order (expected {expected})")]
    OutOfOrder {
        /// "sequence number" or "chunk".
        what: &'static str,
        /// Expected value.
        expected: u64,
        /// Received value.
        got: u64,
    },
    /// A number field is not a decimal number.
    #[error("{field} {value:?} is not a number")]
    BadNumber {
        /// Field name.
        field: &'static str,
        /// What was there.
        value: String,
    },
    /// The message names another stream.
    #[error("streamSid {got} does not match the call's stream {expected}")]
    WrongStream {
        /// The call's stream.
        expected: String,
        /// What the message said.
        got: String,
    },
    /// A DTMF message with something other than one key.
    #[error("dtmf digit {0:?} is not a key")]
    BadDigit(String),
    /// A binary WebSocket frame (Media Streams are text only).
    #[error("binary frame of {0} bytes; Media Streams send text")]
    BinaryFrame(usize),
}

/// A protocol error with the call it happened on.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("call {call}: {kind}")]
pub struct ProtocolError {
    /// The call SID, or "unknown call" before `start`.
    pub call: String,
    /// What was wrong.
    pub kind: ProtocolErrorKind,
}

/// One checked event, with audio already decoded into the parser's buffer.
#[derive(Debug, PartialEq)]
pub enum StreamEvent<'a> {
    /// `connected`.
    Connected,
    /// `start`, boxed because it is large and comes once.
    Start(Box<StartMetadata>),
    /// Caller audio: mu-law bytes, and the stream time in ms.
    Media {
        /// 8 kHz mu-law.
        audio: &'a [u8],
        /// Milliseconds since the stream started.
        timestamp_ms: u64,
    },
    /// A mark was played.
    Mark(String),
    /// A key was pressed.
    Dtmf(char),
    /// The call ended.
    Stop,
}

/// Parses one call's messages in order, enforcing the protocol.
pub struct StreamParser {
    call: Option<String>,
    stream_sid: Option<String>,
    next_sequence: Option<u64>,
    next_chunk: u64,
    audio: Vec<u8>,
}

impl Default for StreamParser {
    fn default() -> Self {
        Self::new()
    }
}

impl StreamParser {
    /// A parser for a new socket.
    pub fn new() -> Self {
        Self {
            call: None,
            stream_sid: None,
            next_sequence: None,
            next_chunk: 1,
            // Room for base64's rounding, so an exactly-full frame decodes.
            audio: vec![0; MAX_MEDIA_BYTES + 3],
        }
    }

    /// The call SID once `start` arrived.
    pub fn call_sid(&self) -> Option<&str> {
        self.call.as_deref()
    }

    /// The stream SID once `start` arrived.
    pub fn stream_sid(&self) -> Option<&str> {
        self.stream_sid.as_deref()
    }

    /// An error for this call.
    pub fn error(&self, kind: ProtocolErrorKind) -> ProtocolError {
        ProtocolError {
            call: self.call.clone().unwrap_or_else(|| "unknown call".into()),
            kind,
        }
    }

    /// Parses and checks one text message.
    pub fn parse(&mut self, text: &str) -> Result<StreamEvent<'_>, ProtocolError> {
        if text.len() > MAX_MESSAGE_BYTES {
            return Err(self.error(ProtocolErrorKind::OversizedMessage(text.len())));
        }
        let message: Inbound = serde_json::from_str(text)
            .map_err(|e| self.error(ProtocolErrorKind::BadJson(e.to_string())))?;
        match message {
            Inbound::Connected { .. } => Ok(StreamEvent::Connected),
            Inbound::Start {
                sequence_number,
                start,
                stream_sid,
            } => {
                if self.call.is_some() {
                    return Err(self.error(ProtocolErrorKind::DuplicateStart));
                }
                let format = &start.media_format;
                if format.encoding != "audio/x-mulaw"
                    || format.sample_rate != 8000
                    || format.channels != 1
                {
                    return Err(self.error(ProtocolErrorKind::WrongMediaFormat {
                        encoding: format.encoding.clone(),
                        sample_rate: format.sample_rate,
                        channels: format.channels,
                    }));
                }
                let sequence = self.number("sequenceNumber", &sequence_number)?;
                self.call = Some(start.call_sid.clone());
                self.next_sequence = Some(sequence + 1);
                self.stream_sid = Some(stream_sid);
                Ok(StreamEvent::Start(Box::new(start)))
            }
            Inbound::Media {
                sequence_number,
                media,
                stream_sid,
            } => {
                self.check("media", &sequence_number, &stream_sid)?;
                let chunk = self.number("chunk", &media.chunk)?;
                if chunk != self.next_chunk {
                    return Err(self.error(ProtocolErrorKind::OutOfOrder {
                        what: "chunk",
                        expected: self.next_chunk,
                        got: chunk,
                    }));
                }
                self.next_chunk += 1;
                let timestamp_ms = self.number("timestamp", &media.timestamp)?;
                // Four base64 characters carry three bytes; check before decoding anything.
                let decoded_len = media.payload.len() / 4 * 3;
                if decoded_len > MAX_MEDIA_BYTES + 2 {
                    return Err(self.error(ProtocolErrorKind::OversizedFrame(decoded_len)));
                }
                let written = match BASE64.decode_slice(media.payload.as_bytes(), &mut self.audio) {
                    Ok(n) => n,
                    Err(base64::DecodeSliceError::OutputSliceTooSmall) => {
                        return Err(self.error(ProtocolErrorKind::OversizedFrame(decoded_len)));
                    }
                    Err(base64::DecodeSliceError::DecodeError(e)) => {
                        return Err(self.error(ProtocolErrorKind::BadBase64(e.to_string())));
                    }
                };
                if written > MAX_MEDIA_BYTES {
                    return Err(self.error(ProtocolErrorKind::OversizedFrame(written)));
                }
                Ok(StreamEvent::Media {
                    audio: &self.audio[..written],
                    timestamp_ms,
                })
            }
            Inbound::Mark {
                sequence_number,
                mark,
                stream_sid,
            } => {
                self.check("mark", &sequence_number, &stream_sid)?;
                Ok(StreamEvent::Mark(mark.name))
            }
            Inbound::Dtmf {
                sequence_number,
                dtmf,
                stream_sid,
            } => {
                self.check("dtmf", &sequence_number, &stream_sid)?;
                let mut chars = dtmf.digit.chars();
                match (chars.next(), chars.next()) {
                    (Some(c), None) if c.is_ascii_digit() || "*#ABCD".contains(c) => {
                        Ok(StreamEvent::Dtmf(c))
                    }
                    _ => Err(self.error(ProtocolErrorKind::BadDigit(dtmf.digit))),
                }
            }
            Inbound::Stop {
                sequence_number,
                stream_sid,
                ..
            } => {
                self.check("stop", &sequence_number, &stream_sid)?;
                Ok(StreamEvent::Stop)
            }
        }
    }

    fn number(&self, field: &'static str, value: &str) -> Result<u64, ProtocolError> {
        value.parse().map_err(|_| {
            self.error(ProtocolErrorKind::BadNumber {
                field,
                value: value.into(),
            })
        })
    }

    /// Requires `start` first, the same stream, and the next sequence number.
    fn check(
        &mut self,
        event: &'static str,
        sequence_number: &str,
        stream_sid: &str,
    ) -> Result<(), ProtocolError> {
        let (Some(expected_sid), Some(expected)) = (&self.stream_sid, self.next_sequence) else {
            return Err(self.error(ProtocolErrorKind::MissingStart(event)));
        };
        if expected_sid != stream_sid {
            return Err(self.error(ProtocolErrorKind::WrongStream {
                expected: expected_sid.clone(),
                got: stream_sid.into(),
            }));
        }
        let got = self.number("sequenceNumber", sequence_number)?;
        if got != expected {
            return Err(self.error(ProtocolErrorKind::OutOfOrder {
                what: "sequence number",
                expected,
                got,
            }));
        }
        self.next_sequence = Some(expected + 1);
        Ok(())
    }
}

/// Encodes outbound messages into a reused text buffer.
pub struct OutboundEncoder {
    stream_sid: String,
    base64: String,
}

impl OutboundEncoder {
    /// An encoder for one stream.
    pub fn new(stream_sid: &str) -> Self {
        Self {
            stream_sid: stream_sid.into(),
            base64: String::with_capacity(256),
        }
    }

    /// `media` with the given mu-law bytes.
    pub fn media(&mut self, audio: &[u8]) -> String {
        self.base64.clear();
        BASE64.encode_string(audio, &mut self.base64);
        // Field order and escaping are fixed: the SID is alphanumeric and base64 needs no escape.
        format!(
            r#"{{"event":"media","streamSid":"{}","media":{{"payload":"{}"}}}}"#,
            self.stream_sid, self.base64
        )
    }

    /// `mark` with a name.
    pub fn mark(&self, name: &str) -> String {
        serde_json::to_string(&Outbound::Mark {
            stream_sid: self.stream_sid.clone(),
            mark: MarkName { name: name.into() },
        })
        .unwrap_or_default()
    }

    /// `clear`.
    pub fn clear(&self) -> String {
        serde_json::to_string(&Outbound::Clear {
            stream_sid: self.stream_sid.clone(),
        })
        .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SID: &str = "MZ00000000000000000000000000000001";

    fn start(seq: u64) -> String {
        serde_json::json!({
            "event": "start", "sequenceNumber": seq.to_string(), "streamSid": SID,
            "start": {
                "accountSid": "AC1", "streamSid": SID, "callSid": "CA42",
                "tracks": ["inbound"], "customParameters": {"voiceagent": "receptionist"},
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}
            }
        })
        .to_string()
    }

    fn media(seq: u64, chunk: u64, payload: &str) -> String {
        serde_json::json!({
            "event": "media", "sequenceNumber": seq.to_string(), "streamSid": SID,
            "media": {"track": "inbound", "chunk": chunk.to_string(),
                      "timestamp": (chunk * 20).to_string(), "payload": payload}
        })
        .to_string()
    }

    fn started() -> StreamParser {
        let mut p = StreamParser::new();
        assert_eq!(
            p.parse(r#"{"event":"connected","protocol":"Call","version":"1.0.0"}"#),
            Ok(StreamEvent::Connected)
        );
        assert!(matches!(p.parse(&start(1)), Ok(StreamEvent::Start(_))));
        p
    }

    #[test]
    fn a_whole_call_parses() {
        let mut p = started();
        assert_eq!(p.call_sid(), Some("CA42"));
        let audio = BASE64.encode([0xFFu8; 160]);
        match p.parse(&media(2, 1, &audio)).unwrap() {
            StreamEvent::Media {
                audio,
                timestamp_ms,
            } => {
                assert_eq!(audio, &[0xFF; 160][..]);
                assert_eq!(timestamp_ms, 20);
            }
            other => panic!("{other:?}"),
        }
        let mark = serde_json::json!({"event":"mark","sequenceNumber":"3","streamSid":SID,"mark":{"name":"t1-s0"}});
        assert_eq!(
            p.parse(&mark.to_string()),
            Ok(StreamEvent::Mark("t1-s0".into()))
        );
        let dtmf = serde_json::json!({"event":"dtmf","sequenceNumber":"4","streamSid":SID,"dtmf":{"track":"inbound_track","digit":"5"}});
        assert_eq!(p.parse(&dtmf.to_string()), Ok(StreamEvent::Dtmf('5')));
        let stop = serde_json::json!({"event":"stop","sequenceNumber":"5","streamSid":SID,"stop":{"accountSid":"AC1","callSid":"CA42"}});
        assert_eq!(p.parse(&stop.to_string()), Ok(StreamEvent::Stop));
    }

    #[test]
    fn start_carries_custom_parameters_and_format() {
        let mut p = StreamParser::new();
        let StreamEvent::Start(meta) = p.parse(&start(1)).unwrap() else {
            panic!()
        };
        assert_eq!(meta.custom_parameters["voiceagent"], "receptionist");
        assert_eq!(meta.media_format, MediaFormat::twilio());
        assert_eq!(meta.tracks, vec!["inbound".to_string()]);
    }

    fn kind(p: &mut StreamParser, text: &str) -> ProtocolErrorKind {
        p.parse(text).unwrap_err().kind
    }

    #[test]
    fn bad_json_names_the_call() {
        let mut p = started();
        let err = p.parse("{not json").unwrap_err();
        assert_eq!(err.call, "CA42");
        assert!(
            err.to_string().starts_with("call CA42: malformed message"),
            "{err}"
        );
        assert!(matches!(
            kind(&mut p, r#"{"event":"media"}"#),
            ProtocolErrorKind::BadJson(_)
        ));
        assert!(matches!(
            kind(&mut p, r#"{"event":"dance"}"#),
            ProtocolErrorKind::BadJson(_)
        ));
    }

    #[test]
    fn bad_base64_is_refused() {
        let mut p = started();
        assert!(matches!(
            kind(&mut p, &media(2, 1, "@@@@")),
            ProtocolErrorKind::BadBase64(_)
        ));
    }

    #[test]
    fn wrong_media_format_is_refused() {
        let mut p = StreamParser::new();
        let text = start(1).replace("audio/x-mulaw", "audio/l16");
        let ProtocolErrorKind::WrongMediaFormat { encoding, .. } = kind(&mut p, &text) else {
            panic!()
        };
        assert_eq!(encoding, "audio/l16");
        let text = start(1).replace("8000", "16000");
        assert!(matches!(
            kind(&mut p, &text),
            ProtocolErrorKind::WrongMediaFormat {
                sample_rate: 16000,
                ..
            }
        ));
    }

    #[test]
    fn media_before_start_is_refused() {
        let mut p = StreamParser::new();
        let err = p.parse(&media(2, 1, "//8=")).unwrap_err();
        assert_eq!(err.kind, ProtocolErrorKind::MissingStart("media"));
        assert_eq!(err.to_string(), "call unknown call: media before start");
    }

    #[test]
    fn out_of_order_sequence_and_chunk_are_refused() {
        let mut p = started();
        assert_eq!(
            kind(&mut p, &media(3, 1, "//8=")),
            ProtocolErrorKind::OutOfOrder {
                what: "sequence number",
                expected: 2,
                got: 3
            }
        );
        let mut p = started();
        assert_eq!(
            kind(&mut p, &media(2, 2, "//8=")),
            ProtocolErrorKind::OutOfOrder {
                what: "chunk",
                expected: 1,
                got: 2
            }
        );
        let mut p = started();
        assert!(matches!(
            kind(&mut p, &media(2, 1, "//8=").replace("\"2\"", "\"two\"")),
            ProtocolErrorKind::BadNumber {
                field: "sequenceNumber",
                ..
            }
        ));
    }

    #[test]
    fn oversized_frames_are_refused_before_decoding() {
        let mut p = started();
        let big = BASE64.encode(vec![0u8; MAX_MEDIA_BYTES + 3]);
        assert!(matches!(
            kind(&mut p, &media(2, 1, &big)),
            ProtocolErrorKind::OversizedFrame(_)
        ));
        let huge = media(2, 1, &"A".repeat(MAX_MESSAGE_BYTES));
        assert!(matches!(
            kind(&mut p, &huge),
            ProtocolErrorKind::OversizedMessage(_)
        ));
    }

    #[test]
    fn a_frame_of_exactly_the_limit_is_accepted() {
        let mut p = started();
        let full = BASE64.encode(vec![0x7Fu8; MAX_MEDIA_BYTES]);
        let StreamEvent::Media { audio, .. } = p.parse(&media(2, 1, &full)).unwrap() else {
            panic!()
        };
        assert_eq!(audio.len(), MAX_MEDIA_BYTES);
    }

    #[test]
    fn other_stream_dup_start_and_bad_digit_are_refused() {
        let mut p = started();
        let other = media(2, 1, "//8=").replace(SID, "MZother");
        assert!(matches!(
            kind(&mut p, &other),
            ProtocolErrorKind::WrongStream { .. }
        ));
        assert_eq!(kind(&mut p, &start(2)), ProtocolErrorKind::DuplicateStart);
        let dtmf = serde_json::json!({"event":"dtmf","sequenceNumber":"2","streamSid":SID,"dtmf":{"track":"inbound_track","digit":"55"}});
        assert_eq!(
            kind(&mut p, &dtmf.to_string()),
            ProtocolErrorKind::BadDigit("55".into())
        );
    }

    #[test]
    fn outbound_messages_are_what_twilio_expects() {
        let mut e = OutboundEncoder::new(SID);
        let media: Outbound = serde_json::from_str(&e.media(&[0xFF, 0x7F, 0x00])).unwrap();
        assert_eq!(
            media,
            Outbound::Media {
                stream_sid: SID.into(),
                media: OutboundMedia {
                    payload: "/38A".into()
                }
            }
        );
        let mark: serde_json::Value = serde_json::from_str(&e.mark("t3-s1")).unwrap();
        assert_eq!(
            mark,
            serde_json::json!({"event":"mark","streamSid":SID,"mark":{"name":"t3-s1"}})
        );
        let clear: serde_json::Value = serde_json::from_str(&e.clear()).unwrap();
        assert_eq!(clear, serde_json::json!({"event":"clear","streamSid":SID}));
    }
}
