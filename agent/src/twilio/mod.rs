//! Twilio: the Media Streams WebSocket protocol and transport, request signatures and TwiML.

pub mod media_stream;
pub mod protocol;
pub mod signature;
pub mod stream_token;
pub mod twiml;
