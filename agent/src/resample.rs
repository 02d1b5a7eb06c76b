//! Streaming sample-rate conversion with rubato, built once per call and allocation-free per frame.
//!
//! Twilio carries 8 kHz audio; Silero VAD and Whisper want 16 kHz; TTS voices speak at their own
//! rate (Piper 22050 Hz, OpenAI-style PCM 24 kHz). A [`StreamResampler`] takes audio in pieces of
//! any length, runs rubato's synchronous FFT resampler on fixed chunks from a preallocated buffer,
//! and hands each converted chunk to a callback as a slice of another preallocated buffer.

use rubato::audioadapter_buffers::direct::SequentialSlice;
use rubato::{Fft, FixedSync, Indexing, Resampler};

/// Errors from building or running a resampler.
#[derive(Debug, thiserror::Error)]
pub enum ResampleError {
    /// rubato refused the rate pair.
    #[error("cannot resample {from} Hz to {to} Hz: {source}")]
    Construction {
        /// Input rate.
        from: u32,
        /// Output rate.
        to: u32,
        /// What rubato said.
        source: rubato::ResamplerConstructionError,
    },
    /// A buffer did not fit rubato's expectations (a bug in this module).
    #[error("resampling {from} Hz to {to} Hz: buffer: {message}")]
    Buffer {
        /// Input rate.
        from: u32,
        /// Output rate.
        to: u32,
        /// What was wrong.
        message: String,
    },
    /// rubato failed while processing (a buffer-size bug in this module).
    #[error("resampling {from} Hz to {to} Hz failed: {source}")]
    Process {
        /// Input rate.
        from: u32,
        /// Output rate.
        to: u32,
        /// What rubato said.
        source: rubato::ResampleError,
    },
}

/// Mono streaming resampler with fixed-size chunks on both sides; between equal rates it
/// passes samples through untouched, with no delay and no work.
pub struct StreamResampler {
    /// `None` when the rates are equal.
    fft: Option<Fft<f32>>,
    from: u32,
    to: u32,
    pending: Vec<f32>,
    filled: usize,
    output: Vec<f32>,
}

impl StreamResampler {
    /// Builds a resampler from `from` Hz to `to` Hz working on 20 ms input chunks (the Twilio
    /// frame), or the nearest chunk size rubato accepts for the pair.
    pub fn new(from: u32, to: u32) -> Result<Self, ResampleError> {
        if from == to {
            return Ok(Self {
                fft: None,
                from,
                to,
                pending: Vec::new(),
                filled: 0,
                output: Vec::new(),
            });
        }
        let chunk = (from as usize / 50).max(1);
        let fft = Fft::<f32>::new(from as usize, to as usize, chunk, 1, FixedSync::Both)
            .map_err(|source| ResampleError::Construction { from, to, source })?;
        let pending = vec![0.0; fft.input_frames_max()];
        let output = vec![0.0; fft.output_frames_max()];
        Ok(Self {
            fft: Some(fft),
            from,
            to,
            pending,
            filled: 0,
            output,
        })
    }

    /// Input rate in Hz.
    pub fn input_rate(&self) -> u32 {
        self.from
    }

    /// Output rate in Hz.
    pub fn output_rate(&self) -> u32 {
        self.to
    }

    /// Number of output samples the resampler delays its output by (the FFT half block).
    pub fn output_delay(&self) -> usize {
        self.fft.as_ref().map_or(0, |f| f.output_delay())
    }

    /// Feeds samples; calls `sink` with each converted chunk as soon as one is complete.
    pub fn push(
        &mut self,
        mut samples: &[f32],
        sink: &mut dyn FnMut(&[f32]),
    ) -> Result<(), ResampleError> {
        let Some(fft) = &self.fft else {
            if !samples.is_empty() {
                sink(samples);
            }
            return Ok(());
        };
        let need = fft.input_frames_next();
        while !samples.is_empty() {
            let take = (need - self.filled).min(samples.len());
            self.pending[self.filled..self.filled + take].copy_from_slice(&samples[..take]);
            self.filled += take;
            samples = &samples[take..];
            if self.filled == need {
                let produced = self.process(None)?;
                self.filled = 0;
                sink(&self.output[..produced]);
            }
        }
        Ok(())
    }

    /// Pads the last partial chunk with silence, pushes out everything still inside the
    /// resampler (its delay included) and resets it for the next segment.
    pub fn flush(&mut self, sink: &mut dyn FnMut(&[f32])) -> Result<(), ResampleError> {
        if self.fft.is_none() {
            return Ok(());
        }
        let produced = self.process(Some(&Indexing::new().partial_len(self.filled)))?;
        sink(&self.output[..produced]);
        let mut delay = self.output_delay();
        while delay > 0 {
            let produced = self.process(Some(&Indexing::new().partial_len(0)))?;
            let real = produced.min(delay);
            sink(&self.output[..real]);
            delay -= real;
            if produced == 0 {
                break;
            }
        }
        self.reset();
        Ok(())
    }

    /// Drops buffered audio without emitting it (barge-in).
    pub fn reset(&mut self) {
        self.filled = 0;
        if let Some(fft) = &mut self.fft {
            fft.reset();
        }
    }

    fn process(&mut self, indexing: Option<&Indexing>) -> Result<usize, ResampleError> {
        let (from, to) = (self.from, self.to);
        let Some(fft) = &mut self.fft else {
            return Ok(0);
        };
        let buffer = |e: &dyn std::fmt::Display| ResampleError::Buffer {
            from,
            to,
            message: e.to_string(),
        };
        let frames_in = self.pending.len();
        let frames_out = self.output.len();
        let input =
            SequentialSlice::new(&self.pending[..], 1, frames_in).map_err(|e| buffer(&e))?;
        let mut output = SequentialSlice::new_mut(&mut self.output[..], 1, frames_out)
            .map_err(|e| buffer(&e))?;
        let (_, produced) = fft
            .process_into_buffer(&input, &mut output, indexing)
            .map_err(|source| ResampleError::Process { from, to, source })?;
        Ok(produced)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(rate: u32, hz: f32, seconds: f32) -> Vec<f32> {
        let n = (rate as f32 * seconds) as usize;
        (0..n)
            .map(|i| (2.0 * std::f32::consts::PI * hz * i as f32 / rate as f32).sin() * 0.5)
            .collect()
    }

    /// Goertzel power of one frequency, normalised by length.
    fn power(samples: &[f32], rate: u32, hz: f32) -> f32 {
        let w = 2.0 * std::f32::consts::PI * hz / rate as f32;
        let (mut s1, mut s2) = (0.0f32, 0.0f32);
        for x in samples {
            let s0 = x + 2.0 * w.cos() * s1 - s2;
            s2 = s1;
            s1 = s0;
        }
        (s1 * s1 + s2 * s2 - 2.0 * w.cos() * s1 * s2) / (samples.len() as f32).powi(2)
    }

    fn run(from: u32, to: u32, input: &[f32], piece: usize) -> Vec<f32> {
        let mut r = StreamResampler::new(from, to).unwrap();
        let mut out = Vec::new();
        for chunk in input.chunks(piece) {
            r.push(chunk, &mut |s| out.extend_from_slice(s)).unwrap();
        }
        r.flush(&mut |s| out.extend_from_slice(s)).unwrap();
        out
    }

    #[test]
    fn twilio_frames_upsample_to_twice_the_samples_with_the_tone_kept() {
        let input = tone(8000, 440.0, 1.0);
        let out = run(8000, 16000, &input, 160);
        assert!(out.len() >= 16000, "got {} samples", out.len());
        let steady = &out[2000..14000];
        let kept = power(steady, 16000, 440.0);
        let off = power(steady, 16000, 1000.0);
        assert!(kept > 0.05, "440 Hz power {kept}");
        assert!(off < kept / 1000.0, "leakage {off} vs {kept}");
    }

    #[test]
    fn equal_rates_pass_every_sample_through_at_once() {
        let input = tone(16000, 440.0, 0.1);
        let mut r = StreamResampler::new(16000, 16000).unwrap();
        assert_eq!(r.output_delay(), 0);
        let mut out = Vec::new();
        for chunk in input.chunks(7) {
            let before = out.len();
            r.push(chunk, &mut |s| out.extend_from_slice(s)).unwrap();
            assert_eq!(out.len() - before, chunk.len(), "nothing held back");
        }
        r.flush(&mut |s| out.extend_from_slice(s)).unwrap();
        assert_eq!(out, input);
    }

    #[test]
    fn piper_rate_downsamples_to_8k_and_removes_what_8k_cannot_carry() {
        let mut input = tone(22050, 300.0, 1.0);
        // 6 kHz is above the 4 kHz Nyquist limit of the phone line: it must not alias in.
        for (x, y) in input.iter_mut().zip(tone(22050, 6000.0, 1.0)) {
            *x += y;
        }
        let out = run(22050, 8000, &input, 1000);
        assert!(out.len() >= 8000, "got {} samples", out.len());
        let steady = &out[1000..7000];
        let kept = power(steady, 8000, 300.0);
        // 6 kHz would fold to 2 kHz at 8 kHz.
        let alias = power(steady, 8000, 2000.0);
        assert!(kept > 0.05, "300 Hz power {kept}");
        assert!(alias < kept / 1000.0, "alias {alias} vs {kept}");
    }

    #[test]
    fn piece_size_does_not_change_the_output() {
        let input = tone(24000, 500.0, 0.5);
        let a = run(24000, 8000, &input, 480);
        let b = run(24000, 8000, &input, 37);
        assert_eq!(a, b);
    }

    #[test]
    fn fixed_chunks_come_out_as_whole_twilio_frames() {
        let mut r = StreamResampler::new(22050, 8000).unwrap();
        let mut sizes = Vec::new();
        r.push(&tone(22050, 300.0, 0.2), &mut |s| sizes.push(s.len()))
            .unwrap();
        assert!(!sizes.is_empty());
        assert!(sizes.iter().all(|n| *n == 160), "{sizes:?}");
    }

    #[test]
    fn impossible_rate_is_a_clear_error() {
        let err = StreamResampler::new(0, 8000).err().unwrap();
        assert!(err.to_string().contains("0 Hz to 8000 Hz"), "{err}");
    }
}
