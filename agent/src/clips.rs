//! Fixed phrases (greeting, apology, goodbye) synthesised once at start and kept as ready
//! 8 kHz mu-law frames, so a failing model server can still be apologised for.

use bytes::Bytes;
use futures::StreamExt;

use crate::backend::{BackendError, Tts};
use crate::codec;
use crate::pacer::FRAME_BYTES;
use crate::resample::{ResampleError, StreamResampler};

/// Why a clip could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ClipError {
    /// The TTS backend failed.
    #[error("synthesising {what}: {source}")]
    Tts {
        /// Which clip.
        what: &'static str,
        /// The failure.
        source: BackendError,
    },
    /// The voice's rate cannot be converted.
    #[error("resampling {what}: {source}")]
    Resample {
        /// Which clip.
        what: &'static str,
        /// The failure.
        source: ResampleError,
    },
}

/// Cached phrases as whole 20 ms mu-law frames.
#[derive(Debug, Clone)]
pub struct Clips {
    /// Spoken when the call connects (may be empty).
    pub greeting: Bytes,
    /// Spoken when a model server fails.
    pub apology: Bytes,
    /// Spoken when the pod shuts down with the call still live.
    pub goodbye: Bytes,
}

/// Converts a stream's worth of samples at `rate` into mu-law 20 ms frames, appending to `out`.
pub struct FrameEncoder {
    resampler: StreamResampler,
    scratch: [u8; FRAME_BYTES],
}

impl FrameEncoder {
    /// An encoder for audio at `rate`.
    pub fn new(rate: u32) -> Result<Self, ResampleError> {
        Ok(Self {
            resampler: StreamResampler::new(rate, 8000)?,
            scratch: [0; FRAME_BYTES],
        })
    }

    /// The input rate.
    pub fn rate(&self) -> u32 {
        self.resampler.input_rate()
    }

    fn emit(scratch: &mut [u8; FRAME_BYTES], out: &mut Vec<u8>, samples: &[f32]) {
        for frame in samples.chunks(FRAME_BYTES) {
            codec::encode_into(frame, &mut scratch[..frame.len()]);
            out.extend_from_slice(&scratch[..frame.len()]);
        }
    }

    /// Adds samples; whole converted frames are appended to `out`.
    pub fn push(&mut self, samples: &[f32], out: &mut Vec<u8>) -> Result<(), ResampleError> {
        let scratch = &mut self.scratch;
        self.resampler
            .push(samples, &mut |s| Self::emit(scratch, out, s))
    }

    /// Ends a segment: flushes the resampler and pads `out` to a whole frame with silence.
    pub fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), ResampleError> {
        let scratch = &mut self.scratch;
        self.resampler.flush(&mut |s| Self::emit(scratch, out, s))?;
        let partial = out.len() % FRAME_BYTES;
        if partial != 0 {
            out.resize(out.len() + FRAME_BYTES - partial, codec::encode_sample(0));
        }
        Ok(())
    }
}

/// Speaks `text` through `tts` into mu-law frames.
pub async fn synthesize(tts: &dyn Tts, what: &'static str, text: &str) -> Result<Bytes, ClipError> {
    if text.trim().is_empty() {
        return Ok(Bytes::new());
    }
    let mut stream = tts
        .synthesize(text.to_string(), None)
        .await
        .map_err(|source| ClipError::Tts { what, source })?;
    let mut encoder = FrameEncoder::new(stream.sample_rate)
        .map_err(|source| ClipError::Resample { what, source })?;
    let mut out = Vec::new();
    while let Some(chunk) = stream.chunks.next().await {
        let chunk = chunk.map_err(|source| ClipError::Tts { what, source })?;
        encoder
            .push(&chunk, &mut out)
            .map_err(|source| ClipError::Resample { what, source })?;
    }
    encoder
        .finish(&mut out)
        .map_err(|source| ClipError::Resample { what, source })?;
    Ok(Bytes::from(out))
}

impl Clips {
    /// Synthesises all three phrases.
    pub async fn synthesize(
        tts: &dyn Tts,
        greeting: &str,
        apology: &str,
        goodbye: &str,
    ) -> Result<Self, ClipError> {
        Ok(Self {
            greeting: synthesize(tts, "the greeting", greeting).await?,
            apology: synthesize(tts, "the apology", apology).await?,
            goodbye: synthesize(tts, "the goodbye", goodbye).await?,
        })
    }
}
