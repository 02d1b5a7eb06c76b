//! The GrokCast voice agent: Twilio Media Streams, audio, turn-taking and model clients.
