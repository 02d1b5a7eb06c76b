//! The GrokCast voice agent: Twilio Media Streams, audio, turn-taking and model clients.

// Tests may unwrap: a panic is how they fail.
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod backend;
pub mod call;
pub mod caller;
pub mod clause;
pub mod clips;
/// G.711 mu-law, shared with the engines (grokcast-serve reads mu-law streams too).
pub use grokcast_engines::mulaw as codec;
pub mod config;
pub mod conversation;
pub mod demo;
pub mod instant;
pub mod metrics;
pub mod pacer;
pub mod resample;
pub mod server;
pub mod startup;
pub mod turn;
pub mod twilio;
pub mod vad_batch;
