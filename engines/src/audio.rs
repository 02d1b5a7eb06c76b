//! Audio plumbing for the engines: decoding uploaded clips, rate conversion, encoding.

use std::borrow::Cow;
use std::io::Cursor;

/// Why an uploaded clip could not be used.
#[derive(Debug, thiserror::Error)]
pub enum AudioError {
    /// The WAV header or data is broken.
    #[error("cannot read the WAV file: {0}")]
    Wav(String),
    /// Raw PCM must be whole 16-bit samples.
    #[error("raw PCM must be 16-bit little-endian samples; got an odd number of bytes")]
    OddPcm,
    /// Nothing to transcribe.
    #[error("the audio is empty")]
    Empty,
}

/// A mono clip at its own sample rate.
#[derive(Debug, Clone, PartialEq)]
pub struct Clip {
    /// Samples in -1..1.
    pub samples: Vec<f32>,
    /// Samples per second.
    pub sample_rate: u32,
}

/// Decodes a WAV file (any rate, 8/16/24/32-bit integer or float, channels mixed to
/// mono) or, when the bytes do not start with `RIFF`, raw s16le mono PCM at
/// `raw_rate`.
pub fn decode_clip(bytes: &[u8], raw_rate: u32) -> Result<Clip, AudioError> {
    let clip = if bytes.starts_with(b"RIFF") {
        decode_wav(bytes)?
    } else {
        if !bytes.len().is_multiple_of(2) {
            return Err(AudioError::OddPcm);
        }
        Clip {
            samples: bytes
                .chunks_exact(2)
                .map(|b| f32::from(i16::from_le_bytes([b[0], b[1]])) / 32768.0)
                .collect(),
            sample_rate: raw_rate,
        }
    };
    if clip.samples.is_empty() {
        return Err(AudioError::Empty);
    }
    Ok(clip)
}

/// Streamed WAV (espeak-ng --stdout, many TTS servers) declares a huge data chunk
/// because the writer could not seek back; clamp the sizes to what actually arrived.
fn clamp_streamed_sizes(bytes: &[u8]) -> Cow<'_, [u8]> {
    let mut pos = 12;
    while pos + 8 <= bytes.len() {
        let id = &bytes[pos..pos + 4];
        let len = u32::from_le_bytes([
            bytes[pos + 4],
            bytes[pos + 5],
            bytes[pos + 6],
            bytes[pos + 7],
        ]) as usize;
        let body = pos + 8;
        if id == b"data" {
            let available = bytes.len() - body;
            if len <= available {
                return Cow::Borrowed(bytes);
            }
            // Whole samples only (at most 4 bytes per sample per channel is all hound
            // needs to stay aligned for mono/stereo 16-bit; trim to an even length).
            let fixed = u32::try_from(available & !3).unwrap_or(u32::MAX);
            let mut owned = bytes.to_vec();
            owned[pos + 4..pos + 8].copy_from_slice(&fixed.to_le_bytes());
            let riff = u32::try_from(body - 8).unwrap_or(0).saturating_add(fixed);
            owned[4..8].copy_from_slice(&riff.to_le_bytes());
            owned.truncate(body + fixed as usize);
            return Cow::Owned(owned);
        }
        pos = body + len + (len & 1);
    }
    Cow::Borrowed(bytes)
}

fn decode_wav(bytes: &[u8]) -> Result<Clip, AudioError> {
    let wav_err = |e: hound::Error| AudioError::Wav(e.to_string());
    let bytes = clamp_streamed_sizes(bytes);
    let mut reader = hound::WavReader::new(Cursor::new(&bytes[..])).map_err(wav_err)?;
    let spec = reader.spec();
    let channels = usize::from(spec.channels.max(1));
    let interleaved: Vec<f32> = match spec.sample_format {
        hound::SampleFormat::Float => reader
            .samples::<f32>()
            .collect::<Result<_, _>>()
            .map_err(wav_err)?,
        hound::SampleFormat::Int => {
            let scale = 1.0 / (1u64 << (spec.bits_per_sample.clamp(1, 32) - 1)) as f32;
            reader
                .samples::<i32>()
                .map(|s| s.map(|v| v as f32 * scale))
                .collect::<Result<_, _>>()
                .map_err(wav_err)?
        }
    };
    let samples = interleaved
        .chunks(channels)
        .map(|frame| frame.iter().sum::<f32>() / frame.len() as f32)
        .collect();
    Ok(Clip {
        samples,
        sample_rate: spec.sample_rate,
    })
}

/// The length of `samples` samples at `rate` Hz.
pub fn duration(samples: usize, rate: u32) -> std::time::Duration {
    std::time::Duration::from_micros(samples as u64 * 1_000_000 / u64::from(rate.max(1)))
}

/// The number of samples at `rate` Hz that last `length` (rounded down).
pub fn samples(length: std::time::Duration, rate: u32) -> usize {
    (length.as_micros() * u128::from(rate) / 1_000_000) as usize
}

/// Converts the clip's rate by linear interpolation. Good enough for speech going into
/// Whisper, whose front end keeps only 0-8 kHz.
pub fn resample(samples: &[f32], from: u32, to: u32) -> Vec<f32> {
    if from == to || samples.is_empty() || from == 0 {
        return samples.to_vec();
    }
    let ratio = f64::from(from) / f64::from(to);
    let out_len = ((samples.len() as f64) / ratio).floor() as usize;
    (0..out_len)
        .map(|i| {
            let pos = i as f64 * ratio;
            let idx = pos.floor() as usize;
            let frac = (pos - idx as f64) as f32;
            let a = samples[idx.min(samples.len() - 1)];
            let b = samples[(idx + 1).min(samples.len() - 1)];
            a + (b - a) * frac
        })
        .collect()
}

/// Appends samples as signed 16-bit little-endian PCM.
pub fn push_s16le(out: &mut Vec<u8>, samples: &[f32]) {
    out.reserve(samples.len() * 2);
    for s in samples {
        let v = (s.clamp(-1.0, 1.0) * 32767.0).round() as i16;
        out.extend_from_slice(&v.to_le_bytes());
    }
}

/// A complete mono 16-bit WAV file.
pub fn wav_bytes(samples: &[f32], sample_rate: u32) -> Vec<u8> {
    let data_len = u32::try_from(samples.len() * 2).unwrap_or(u32::MAX);
    let mut out = Vec::with_capacity(44 + samples.len() * 2);
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36u32.saturating_add(data_len)).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes()); // PCM
    out.extend_from_slice(&1u16.to_le_bytes()); // mono
    out.extend_from_slice(&sample_rate.to_le_bytes());
    out.extend_from_slice(&(sample_rate * 2).to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&16u16.to_le_bytes());
    out.extend_from_slice(b"data");
    out.extend_from_slice(&data_len.to_le_bytes());
    push_s16le(&mut out, samples);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wav_round_trips_through_the_decoder() {
        let tone: Vec<f32> = (0..800).map(|i| (i as f32 * 0.05).sin() * 0.5).collect();
        let clip = decode_clip(&wav_bytes(&tone, 8000), 16_000).unwrap();
        assert_eq!(clip.sample_rate, 8000);
        assert_eq!(clip.samples.len(), tone.len());
        assert!(
            clip.samples
                .iter()
                .zip(&tone)
                .all(|(a, b)| (a - b).abs() < 1e-3)
        );
    }

    #[test]
    fn raw_pcm_uses_the_given_rate_and_odd_lengths_are_refused() {
        let mut raw = Vec::new();
        push_s16le(&mut raw, &[0.25, -0.25]);
        let clip = decode_clip(&raw, 16_000).unwrap();
        assert_eq!(clip.sample_rate, 16_000);
        assert!((clip.samples[0] - 0.25).abs() < 1e-3);
        assert!(matches!(
            decode_clip(&raw[..3], 16_000),
            Err(AudioError::OddPcm)
        ));
        assert!(matches!(decode_clip(&[], 16_000), Err(AudioError::Empty)));
    }

    #[test]
    fn a_streamed_wav_with_an_unknown_length_is_read_to_its_end() {
        let mut wav = wav_bytes(&[0.5; 100], 16_000);
        wav[40..44].copy_from_slice(&0x7fff_f000u32.to_le_bytes());
        wav[4..8].copy_from_slice(&0x7fff_f024u32.to_le_bytes());
        let clip = decode_clip(&wav, 16_000).unwrap();
        assert_eq!(clip.samples.len(), 100);
    }

    #[test]
    fn a_broken_wav_is_an_error() {
        assert!(matches!(
            decode_clip(b"RIFF\x10\x00\x00\x00WAVEjunk", 16_000),
            Err(AudioError::Wav(_))
        ));
    }

    #[test]
    fn resampling_keeps_duration() {
        let s = vec![0.1; 22_050];
        assert_eq!(resample(&s, 22_050, 16_000).len(), 16_000);
        assert_eq!(resample(&s, 16_000, 16_000).len(), 22_050);
    }
}
