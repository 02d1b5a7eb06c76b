//! Twilio Media Streams as a call transport: the `start` handshake, then caller audio, marks,
//! keys and `stop` in ([`TwilioFromCaller`]), paced frames, marks and `clear` out
//! ([`TwilioToCaller`]).

use std::time::Duration;

use axum::extract::ws::{Message, WebSocket};
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};

use super::protocol::{
    OutboundEncoder, ProtocolError, ProtocolErrorKind, StartMetadata, StreamEvent, StreamParser,
};
use crate::codec;
use crate::transport::{FromCaller, Received, ToCaller, TransportError};

/// How long a socket may stay silent before `start`.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a stream was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    /// The socket closed before `start`.
    #[error("the socket closed before start")]
    Closed,
    /// A protocol violation before `start`.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    /// The socket failed before `start`.
    #[error("websocket before start: {0}")]
    Socket(String),
    /// No `start` within [`START_TIMEOUT`].
    #[error("no start message within {0:?}")]
    NoStart(Duration),
}

/// A stream past its `start`: the metadata and the two halves of the transport.
pub struct Accepted {
    /// What `start` said (call, stream, custom parameters).
    pub start: Box<StartMetadata>,
    /// The caller's side.
    pub from_caller: TwilioFromCaller,
    /// The agent's side.
    pub to_caller: TwilioToCaller,
}

/// Waits for `start` on an upgraded Media Streams socket.
pub async fn accept(socket: WebSocket) -> Result<Accepted, Refused> {
    let (sink, mut stream) = socket.split();
    let mut parser = StreamParser::new();
    let start = tokio::time::timeout(START_TIMEOUT, async {
        while let Some(message) = stream.next().await {
            match message {
                Ok(Message::Text(text)) => match parser.parse(text.as_str())? {
                    StreamEvent::Start(meta) => return Ok(meta),
                    // `parse` refuses every other event before `start`.
                    _ => continue,
                },
                Ok(Message::Binary(b)) => {
                    return Err(parser.error(ProtocolErrorKind::BinaryFrame(b.len())).into());
                }
                Ok(Message::Close(_)) => return Err(Refused::Closed),
                Ok(_) => continue,
                Err(e) => return Err(Refused::Socket(e.to_string())),
            }
        }
        Err(Refused::Closed)
    })
    .await
    .map_err(|_| Refused::NoStart(START_TIMEOUT))??;
    let encoder = OutboundEncoder::new(&start.stream_sid);
    Ok(Accepted {
        start,
        from_caller: TwilioFromCaller { stream, parser },
        to_caller: TwilioToCaller { sink, encoder },
    })
}

/// Twilio's messages after `start`, checked by the stream's parser.
pub struct TwilioFromCaller {
    stream: SplitStream<WebSocket>,
    parser: StreamParser,
}

impl FromCaller for TwilioFromCaller {
    fn sample_rate(&self) -> u32 {
        8000
    }

    async fn next(&mut self, audio: &mut Vec<f32>) -> Result<Option<Received>, TransportError> {
        loop {
            // The only await: a message is either still in the socket or handled below.
            let Some(message) = self.stream.next().await else {
                return Ok(None);
            };
            let text = match message.map_err(|e| TransportError::Connection(e.to_string()))? {
                Message::Text(text) => text,
                Message::Binary(b) => {
                    return Err(TransportError::protocol(
                        self.parser.error(ProtocolErrorKind::BinaryFrame(b.len())),
                    ));
                }
                Message::Close(_) => return Ok(None),
                _ => continue,
            };
            let event = self
                .parser
                .parse(text.as_str())
                .map_err(TransportError::protocol)?;
            return Ok(Some(match event {
                StreamEvent::Media { audio: bytes, .. } => {
                    let start = audio.len();
                    audio.resize(start + bytes.len(), 0.0);
                    codec::decode_into(bytes, &mut audio[start..]);
                    Received::Audio
                }
                StreamEvent::Mark(name) => Received::Mark(name),
                StreamEvent::Dtmf(digit) => Received::Dtmf(digit),
                StreamEvent::Stop => Received::Stop,
                StreamEvent::Connected | StreamEvent::Start(_) => continue,
            }));
        }
    }
}

/// The agent's messages to Twilio.
pub struct TwilioToCaller {
    sink: SplitSink<WebSocket, Message>,
    encoder: OutboundEncoder,
}

impl TwilioToCaller {
    async fn send(&mut self, text: String) -> Result<(), TransportError> {
        self.sink
            .send(Message::Text(text.into()))
            .await
            .map_err(|e| TransportError::Connection(e.to_string()))
    }
}

impl ToCaller for TwilioToCaller {
    async fn media(&mut self, frame: &[u8]) -> Result<(), TransportError> {
        let text = self.encoder.media(frame);
        self.send(text).await
    }

    async fn mark(&mut self, name: &str) -> Result<(), TransportError> {
        let text = self.encoder.mark(name);
        self.send(text).await
    }

    async fn clear(&mut self) -> Result<(), TransportError> {
        let text = self.encoder.clear();
        self.send(text).await
    }
}
