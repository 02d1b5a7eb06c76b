//! The audio in a speech response, decoded as it streams in: raw 16-bit PCM or a WAV file, at
//! the rate the response itself gives.
//!
//! Servers disagree about rates: OpenAI's `pcm` is 24 kHz, grokcast-serve's Piper voice is
//! 22,050 Hz (and says so in `x-sample-rate`), other voices are 16 or 44.1 kHz. Audio taken at
//! the wrong rate plays fast and high or slow and low, so the rate of every response is read
//! from the response: its `x-sample-rate` header first, else the WAV header at the start of the
//! body, else the rate the agent is configured to assume for raw PCM (`tts.sampleRate`, by
//! default 24 kHz, the documented rate of OpenAI's `pcm`).

/// Rates a speech response may have; the agent resamples any of them to the 8 kHz line.
pub const RATES: std::ops::RangeInclusive<u32> = 8_000..=48_000;

/// The most header bytes held while looking for a WAV file's samples; a header longer than
/// this is not a speech server's.
const MAX_WAV_HEAD: usize = 64 * 1024;

/// Why a speech body cannot be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SpeechAudioError(String);

/// Decodes one speech response body, chunk by chunk, into mono samples in -1..1.
#[derive(Debug)]
pub struct SpeechDecoder {
    /// The rate the response's headers gave, if any.
    header_rate: Option<u32>,
    /// The rate assumed for raw PCM when the headers give none.
    pcm_rate: u32,
    state: State,
}

#[derive(Debug)]
enum State {
    /// Too few bytes yet to tell raw PCM from WAV, or a WAV header not read to its data.
    Head(Vec<u8>),
    /// Samples at `rate`, `channels` interleaved; `partial` holds the bytes of a frame that
    /// a network chunk split.
    Samples {
        rate: u32,
        channels: usize,
        partial: Vec<u8>,
    },
}

impl SpeechDecoder {
    /// A decoder for a response whose headers gave `header_rate` (`x-sample-rate`), assuming
    /// `pcm_rate` for raw PCM that says nothing.
    pub fn new(header_rate: Option<u32>, pcm_rate: u32) -> Self {
        Self {
            header_rate,
            pcm_rate,
            state: State::Head(Vec::new()),
        }
    }

    /// The rate of the samples, once the start of the body has told raw PCM from WAV.
    pub fn sample_rate(&self) -> Option<u32> {
        match self.state {
            State::Head(_) => None,
            State::Samples { rate, .. } => Some(rate),
        }
    }

    /// Decodes the next bytes of the body, appending whole samples to `out`.
    pub fn push(&mut self, bytes: &[u8], out: &mut Vec<f32>) -> Result<(), SpeechAudioError> {
        match &mut self.state {
            State::Samples {
                channels, partial, ..
            } => {
                decode(partial, *channels, bytes, out);
                Ok(())
            }
            State::Head(head) => {
                head.extend_from_slice(bytes);
                let head = std::mem::take(head);
                self.start(head, false, out)
            }
        }
    }

    /// The body ended: decodes what was held back (a body shorter than a WAV magic is raw
    /// PCM) and fails on a WAV header that never reached its samples.
    pub fn finish(&mut self, out: &mut Vec<f32>) -> Result<(), SpeechAudioError> {
        if let State::Head(head) = &mut self.state {
            let head = std::mem::take(head);
            self.start(head, true, out)?;
        }
        Ok(())
    }

    /// Decides the body's format from `head`, its first bytes, once they are enough to.
    fn start(
        &mut self,
        head: Vec<u8>,
        ended: bool,
        out: &mut Vec<f32>,
    ) -> Result<(), SpeechAudioError> {
        let magic = &b"RIFF"[..head.len().min(4)];
        if !head.starts_with(magic) || (ended && head.len() < 4) {
            let rate = self.header_rate.unwrap_or(self.pcm_rate);
            return self.begin_samples(rate, 1, &head, out);
        }
        if head.len() < 4 {
            self.state = State::Head(head);
            return Ok(());
        }
        match wav_format(&head)? {
            Some(WavFormat {
                rate,
                channels,
                data,
            }) => {
                let rate = self.header_rate.unwrap_or(rate);
                self.begin_samples(rate, channels, &head[data..], out)
            }
            None if ended => Err(SpeechAudioError(
                "the WAV file ended before its samples".into(),
            )),
            None if head.len() > MAX_WAV_HEAD => Err(SpeechAudioError(format!(
                "no WAV data chunk in the first {MAX_WAV_HEAD} bytes"
            ))),
            None => {
                self.state = State::Head(head);
                Ok(())
            }
        }
    }

    fn begin_samples(
        &mut self,
        rate: u32,
        channels: usize,
        bytes: &[u8],
        out: &mut Vec<f32>,
    ) -> Result<(), SpeechAudioError> {
        if !RATES.contains(&rate) {
            return Err(SpeechAudioError(format!(
                "the speech is at {rate} Hz; the agent takes {} to {} Hz",
                RATES.start(),
                RATES.end()
            )));
        }
        let mut partial = Vec::with_capacity(2 * channels);
        decode(&mut partial, channels, bytes, out);
        self.state = State::Samples {
            rate,
            channels,
            partial,
        };
        Ok(())
    }
}

/// Decodes 16-bit little-endian frames of `channels` samples, mixed to mono, carrying a split
/// frame over in `partial`.
fn decode(partial: &mut Vec<u8>, channels: usize, mut bytes: &[u8], out: &mut Vec<f32>) {
    let frame = 2 * channels;
    if !partial.is_empty() {
        let take = (frame - partial.len()).min(bytes.len());
        partial.extend_from_slice(&bytes[..take]);
        bytes = &bytes[take..];
        if partial.len() < frame {
            return;
        }
        out.push(mono(partial));
        partial.clear();
    }
    let whole = bytes.len() / frame * frame;
    out.extend(bytes[..whole].chunks_exact(frame).map(mono));
    partial.extend_from_slice(&bytes[whole..]);
}

fn mono(frame: &[u8]) -> f32 {
    let channels = frame.len() / 2;
    let sum: f32 = frame
        .chunks_exact(2)
        .map(|b| f32::from(i16::from_le_bytes([b[0], b[1]])))
        .sum();
    sum / (32768.0 * channels as f32)
}

/// What a WAV header says, and where its samples start.
#[derive(Debug, PartialEq, Eq)]
struct WavFormat {
    rate: u32,
    channels: usize,
    /// Offset of the first sample byte.
    data: usize,
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Reads the header of a WAV file from its first bytes: `None` until they reach the `data`
/// chunk. Sizes of the RIFF and data chunks are not trusted: a server streaming a WAV file
/// writes them before it knows the length.
fn wav_format(head: &[u8]) -> Result<Option<WavFormat>, SpeechAudioError> {
    let bad = |what: String| Err(SpeechAudioError(format!("unreadable WAV header: {what}")));
    if head.len() < 12 {
        return Ok(None);
    }
    if &head[8..12] != b"WAVE" {
        return bad("RIFF but not WAVE".into());
    }
    let mut format: Option<(u32, usize)> = None;
    let mut at = 12;
    loop {
        if head.len() < at + 8 {
            return Ok(None);
        }
        let id = &head[at..at + 4];
        let size = le32(head, at + 4) as usize;
        let body = at + 8;
        if id == b"data" {
            return match format {
                Some((rate, channels)) => Ok(Some(WavFormat {
                    rate,
                    channels,
                    data: body,
                })),
                None => bad("a data chunk before the fmt chunk".into()),
            };
        }
        // Chunks are padded to an even length.
        let end = body.saturating_add(size).saturating_add(size & 1);
        if id == b"fmt " {
            if size < 16 {
                return bad(format!("a {size}-byte fmt chunk"));
            }
            if head.len() < body + 16 {
                return Ok(None);
            }
            let tag = le16(head, body);
            let channels = le16(head, body + 2);
            let rate = le32(head, body + 4);
            let bits = le16(head, body + 14);
            // 1 is integer PCM; 0xFFFE (extensible) carries its real format further on, and
            // speech servers that use it write PCM.
            if !matches!(tag, 1 | 0xFFFE) || bits != 16 || channels == 0 {
                return bad(format!(
                    "format {tag:#x} with {bits}-bit samples and {channels} channels; \
                     the agent takes 16-bit integer PCM"
                ));
            }
            format = Some((rate, usize::from(channels)));
        }
        at = end;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s16(samples: &[i16]) -> Vec<u8> {
        samples.iter().flat_map(|s| s.to_le_bytes()).collect()
    }

    /// A WAV file: `fmt ` with the given rate and channels, an extra chunk before `data`
    /// (as some writers add), and size fields a streaming server cannot know.
    fn wav(rate: u32, channels: u16, data: &[u8]) -> Vec<u8> {
        let mut out = b"RIFF".to_vec();
        out.extend_from_slice(&u32::MAX.to_le_bytes());
        out.extend_from_slice(b"WAVEfmt ");
        out.extend_from_slice(&16u32.to_le_bytes());
        out.extend_from_slice(&1u16.to_le_bytes());
        out.extend_from_slice(&channels.to_le_bytes());
        out.extend_from_slice(&rate.to_le_bytes());
        out.extend_from_slice(&(rate * 2 * u32::from(channels)).to_le_bytes());
        out.extend_from_slice(&(2 * channels).to_le_bytes());
        out.extend_from_slice(&16u16.to_le_bytes());
        out.extend_from_slice(b"LIST");
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(b"abc\0");
        out.extend_from_slice(b"data");
        out.extend_from_slice(&u32::MAX.to_le_bytes());
        out.extend_from_slice(data);
        out
    }

    /// Decodes `body` split at every possible point into two chunks; all must agree.
    fn decode_split(header_rate: Option<u32>, body: &[u8]) -> (u32, Vec<f32>) {
        let mut whole = None;
        for split in 0..=body.len() {
            let mut d = SpeechDecoder::new(header_rate, 24_000);
            let mut out = Vec::new();
            d.push(&body[..split], &mut out).unwrap();
            d.push(&body[split..], &mut out).unwrap();
            d.finish(&mut out).unwrap();
            let got = (d.sample_rate().unwrap(), out);
            match &whole {
                None => whole = Some(got),
                Some(w) => assert_eq!(w, &got, "split at {split}"),
            }
        }
        whole.unwrap()
    }

    #[test]
    fn raw_pcm_takes_the_header_rate_or_else_the_assumed_one() {
        let body = s16(&[0, 16384, -16384, 32767]);
        let (rate, samples) = decode_split(Some(22_050), &body);
        assert_eq!(rate, 22_050);
        assert_eq!(samples, vec![0.0, 0.5, -0.5, 32767.0 / 32768.0]);
        let (rate, _) = decode_split(None, &body);
        assert_eq!(rate, 24_000, "OpenAI's pcm when nothing says otherwise");
    }

    #[test]
    fn a_wav_body_gives_its_rate_and_only_its_samples() {
        let body = wav(22_050, 1, &s16(&[100, -100, 16384]));
        let (rate, samples) = decode_split(None, &body);
        assert_eq!(rate, 22_050);
        assert_eq!(samples, vec![100.0 / 32768.0, -100.0 / 32768.0, 0.5]);
        // The response's header still comes first.
        let (rate, _) = decode_split(Some(16_000), &body);
        assert_eq!(rate, 16_000);
    }

    #[test]
    fn stereo_wav_is_mixed_to_mono() {
        let body = wav(44_100, 2, &s16(&[16384, 0, -16384, -16384]));
        let (rate, samples) = decode_split(None, &body);
        assert_eq!(rate, 44_100);
        assert_eq!(samples, vec![0.25, -0.5]);
    }

    #[test]
    fn the_rate_is_unknown_until_the_body_says() {
        let body = wav(22_050, 1, &s16(&[1, 2]));
        let mut d = SpeechDecoder::new(None, 24_000);
        let mut out = Vec::new();
        d.push(&body[..30], &mut out).unwrap();
        assert_eq!(d.sample_rate(), None);
        d.push(&body[30..], &mut out).unwrap();
        assert_eq!(d.sample_rate(), Some(22_050));
        assert_eq!(out.len(), 2);
    }

    #[test]
    fn broken_or_unusable_bodies_are_errors() {
        let fail = |header_rate: Option<u32>, body: &[u8]| {
            let mut d = SpeechDecoder::new(header_rate, 24_000);
            let mut out = Vec::new();
            d.push(body, &mut out).and_then(|()| d.finish(&mut out))
        };
        let truncated = wav(22_050, 1, &[]);
        assert!(fail(None, &truncated[..40]).is_err(), "header cut short");
        let mut float = wav(22_050, 1, &[]);
        float[20] = 3; // IEEE float
        assert!(fail(None, &float).is_err());
        assert!(fail(None, b"RIFF\0\0\0\0AVI LIST").is_err());
        assert!(fail(Some(96_000), &s16(&[1])).is_err(), "rate out of range");
        assert!(fail(None, &wav(4_000, 1, &s16(&[1]))).is_err());
        // A short body is raw PCM; an empty one is nothing at all.
        assert!(fail(None, &[1, 0]).is_ok());
        assert!(fail(None, &[]).is_ok());
    }
}
