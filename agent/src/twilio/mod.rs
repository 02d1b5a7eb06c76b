//! Twilio: the Media Streams WebSocket protocol and transport, request signatures, TwiML, and
//! the REST API's call updates.

pub mod media_stream;
pub mod protocol;
pub mod rest;
pub mod signature;
pub mod stream_token;
pub mod twiml;
