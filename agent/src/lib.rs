//! The GrokCast voice agent: Twilio Media Streams, audio, turn-taking and model clients.
//!
//! [`call`] runs one call's pipeline over a [`transport`] with a [`context`]; [`server`] is
//! the HTTP side that accepts calls and owns the front door.

// Tests may unwrap: a panic is how they fail.
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod backend;
pub mod call;
pub mod clause;
pub mod clips;
/// G.711 mu-law, shared with the engines (grokcast-serve reads mu-law streams too).
pub use grokcast_engines::mulaw as codec;
pub mod config;
pub mod context;
pub mod conversation;
pub mod metrics;
pub mod pacer;
pub mod playground;
pub mod resample;
pub mod server;
pub mod startup;
pub mod tools;
pub mod traces;
pub mod transport;
pub mod turn;
pub mod twilio;
pub mod vad_batch;
