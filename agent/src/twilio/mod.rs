//! Twilio: the Media Streams WebSocket protocol, request signatures and TwiML.

pub mod protocol;
pub mod signature;
pub mod stream_token;
pub mod twiml;
