//! Incremental transcription of a growing utterance: what `grokcast-serve` decodes while a
//! caller is still speaking, so that the final transcript is ready when the turn ends.
//!
//! Whisper has no streaming decoder; it transcribes a clip. So the server transcribes the
//! whole utterance again as it grows (each decode takes the audio so far), one decode at a
//! time per stream:
//!
//! - every [`Policy::step`] of new audio, for interim transcripts;
//! - at once when the voice pauses ([`Policy::pause`] of quiet after speech that the last
//!   decode did not hear): the pause may be the end of the turn, and a decode started here
//!   finishes while the client is still waiting out its end-of-turn silence.
//!
//! When the client closes its side (the turn ended), the final transcript is the latest
//! decode if it heard all the voiced audio; only when the caller spoke after it does the
//! server decode again. Words that two decodes in a row agree on are stable
//! ([`stable_words`]), the local-agreement policy of streaming Whisper systems; the share
//! of stable words is the interim result's `stability`.

use std::time::Duration;

use crate::{audio, mulaw};

/// How a stream's audio bytes are encoded (the Riva encodings grokcast-serve reads).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineEncoding {
    /// Signed 16-bit little-endian samples.
    Linear16,
    /// G.711 mu-law bytes.
    MuLaw,
}

/// Why a stream's audio cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamAudioError {
    /// A sample rate this server does not read.
    #[error("sample_rate_hertz {0} is not supported: send 8000 to 48000 Hz")]
    Rate(i64),
    /// Mu-law at a rate other than the phone's 8 kHz.
    #[error("MULAW audio must be 8000 Hz, not {0}")]
    MuLawRate(u32),
}

/// Frames of 20 ms: the unit of the voice tracker.
const FRAMES_PER_SECOND: u32 = 50;
/// A frame is voiced above this RMS (-40 dBFS): phone speech sits well above it, a quiet
/// line well below. Erring low is safe: noise taken for voice costs one more decode at the
/// end, while voice taken for quiet could end a transcript early.
const LOUD_RMS: f32 = 0.01;
/// A quieter frame is voiced too when it stands [`NOISE_MARGIN`] times above the quietest
/// frame heard (a quiet caller on a clean line), down to this RMS (-50 dBFS).
const QUIET_VOICE_RMS: f32 = 0.003;
/// How far above the line's quietest frame a quiet voice stands.
const NOISE_MARGIN: f32 = 4.0;

/// Quiet after the voice that a decode keeps: word ends fade below the voiced threshold.
const QUIET_KEPT: Duration = Duration::from_millis(200);

/// The audio of one stream: samples at the stream's rate, and where the voice last was.
#[derive(Debug)]
pub struct Utterance {
    encoding: LineEncoding,
    rate: u32,
    /// A byte of a 16-bit sample whose other byte has not arrived (messages may split
    /// samples anywhere).
    carry: Option<u8>,
    samples: Vec<f32>,
    frame: usize,
    /// Samples already measured in whole frames.
    measured: usize,
    /// End of the last voiced frame, in samples.
    voiced_end: usize,
    /// RMS of the quietest frame so far.
    noise_floor: f32,
}

impl Utterance {
    /// An empty utterance of audio in `encoding` at `rate` Hz.
    pub fn new(encoding: LineEncoding, rate: i64) -> Result<Self, StreamAudioError> {
        let rate = u32::try_from(rate)
            .ok()
            .filter(|r| (8_000..=48_000).contains(r))
            .ok_or(StreamAudioError::Rate(rate))?;
        if encoding == LineEncoding::MuLaw && rate != 8_000 {
            return Err(StreamAudioError::MuLawRate(rate));
        }
        Ok(Self {
            encoding,
            rate,
            carry: None,
            samples: Vec::new(),
            frame: (rate / FRAMES_PER_SECOND) as usize,
            measured: 0,
            voiced_end: 0,
            noise_floor: f32::MAX,
        })
    }

    /// Appends the bytes of one message.
    pub fn push(&mut self, bytes: &[u8]) {
        match self.encoding {
            LineEncoding::MuLaw => self.samples.extend(
                bytes
                    .iter()
                    .map(|b| f32::from(mulaw::decode_sample(*b)) / 32768.0),
            ),
            LineEncoding::Linear16 => {
                let mut rest = bytes;
                if let (Some(low), Some((&high, tail))) = (self.carry, rest.split_first()) {
                    self.samples
                        .push(f32::from(i16::from_le_bytes([low, high])) / 32768.0);
                    self.carry = None;
                    rest = tail;
                }
                let pairs = rest.chunks_exact(2);
                if let [odd] = pairs.remainder() {
                    self.carry = Some(*odd);
                }
                self.samples
                    .extend(pairs.map(|p| f32::from(i16::from_le_bytes([p[0], p[1]])) / 32768.0));
            }
        }
        self.measure();
    }

    fn measure(&mut self) {
        while self.measured + self.frame <= self.samples.len() {
            let frame = &self.samples[self.measured..self.measured + self.frame];
            let rms = (frame.iter().map(|s| s * s).sum::<f32>() / frame.len() as f32).sqrt();
            self.measured += self.frame;
            self.noise_floor = self.noise_floor.min(rms);
            let quiet_voice = rms > QUIET_VOICE_RMS && rms > NOISE_MARGIN * self.noise_floor;
            if rms > LOUD_RMS || quiet_voice {
                self.voiced_end = self.measured;
            }
        }
    }

    /// Samples so far (at the stream's rate).
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// Whether no audio has arrived.
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// The length of `samples` samples of this stream.
    pub fn duration_of(&self, samples: usize) -> Duration {
        audio::duration(samples, self.rate)
    }

    /// The audio's length.
    pub fn duration(&self) -> Duration {
        self.duration_of(self.samples.len())
    }

    /// Where the last voiced frame ended, in samples.
    pub fn voiced_end(&self) -> usize {
        self.voiced_end
    }

    /// Where a decode of everything heard so far should stop: the voice and [`QUIET_KEPT`]
    /// of the quiet after it. Whisper gains nothing from more silence, and a small model may
    /// loop on its last words over a long one.
    pub fn decode_end(&self) -> usize {
        if self.voiced_end == 0 {
            // No frame seemed voiced: take it all rather than guess where the voice is.
            return self.samples.len();
        }
        let kept = self.rate as usize * QUIET_KEPT.as_millis() as usize / 1_000;
        (self.voiced_end + kept).min(self.samples.len())
    }

    /// The first `upto` samples at 16 kHz, for Whisper.
    pub fn pcm16k(&self, upto: usize) -> Vec<f32> {
        let upto = upto.min(self.samples.len());
        audio::resample(&self.samples[..upto], self.rate, 16_000)
    }
}

/// When a stream decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// New audio that calls for a new interim decode.
    pub step: Duration,
    /// Quiet after voice that calls for a decode at once (the pause may end the turn).
    pub pause: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            step: Duration::from_millis(400),
            pause: Duration::from_millis(60),
        }
    }
}

impl Policy {
    /// Whether to start a decode of everything heard, when the last decode started took
    /// the first `decoded` samples and none is running.
    pub fn should_decode(&self, utterance: &Utterance, decoded: usize) -> bool {
        let voiced = utterance.voiced_end();
        if voiced <= decoded {
            // Nothing voiced since: decoding silence again changes nothing.
            return false;
        }
        let new = utterance.duration_of(utterance.len().saturating_sub(decoded));
        let quiet = utterance.duration_of(utterance.len() - voiced);
        new >= self.step || quiet >= self.pause
    }
}

impl Policy {
    /// Whether to drop a running decode of the first `running` samples and start on all
    /// of it: the caller has paused after voice that decode does not have.
    pub fn should_preempt(&self, utterance: &Utterance, running: usize) -> bool {
        let voiced = utterance.voiced_end();
        voiced > running && utterance.duration_of(utterance.len() - voiced) >= self.pause
    }
}

/// Whether a decode of the first `decoded` samples heard all the voice: then it is the final
/// transcript.
pub fn heard_all(utterance: &Utterance, decoded: usize) -> bool {
    decoded >= utterance.voiced_end()
}

/// How many leading words two hypotheses share, ignoring case and punctuation: the words
/// two decodes in a row agree on.
pub fn stable_words(previous: &str, current: &str) -> usize {
    fn words(text: &str) -> impl Iterator<Item = String> + '_ {
        text.split_whitespace().map(|w| {
            w.chars()
                .filter(|c| c.is_alphanumeric())
                .flat_map(char::to_lowercase)
                .collect()
        })
    }
    words(previous)
        .zip(words(current))
        .take_while(|(a, b)| a == b)
        .count()
}

/// The share of `current`'s words that `previous` agreed on, 0..1 (0 for no words).
pub fn stability(previous: &str, current: &str) -> f32 {
    let total = current.split_whitespace().count();
    if total == 0 {
        return 0.0;
    }
    stable_words(previous, current) as f32 / total as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(seconds: f32, amplitude: f32, rate: u32) -> Vec<f32> {
        (0..(seconds * rate as f32) as usize)
            .map(|i| amplitude * (i as f32 * 0.05).sin())
            .collect()
    }

    fn s16(samples: &[f32]) -> Vec<u8> {
        let mut out = Vec::new();
        audio::push_s16le(&mut out, samples);
        out
    }

    #[test]
    fn samples_split_across_messages_are_joined() {
        let mut u = Utterance::new(LineEncoding::Linear16, 16_000).unwrap();
        let bytes = s16(&[0.5, -0.25, 0.125]);
        u.push(&bytes[..3]);
        assert_eq!(u.len(), 1, "the odd byte waits for its pair");
        u.push(&bytes[3..]);
        assert_eq!(u.len(), 3);
        assert!((u.pcm16k(3)[1] + 0.25).abs() < 1e-3);
    }

    #[test]
    fn mulaw_is_read_at_8k_only_and_rates_are_bounded() {
        assert_eq!(
            Utterance::new(LineEncoding::MuLaw, 16_000).unwrap_err(),
            StreamAudioError::MuLawRate(16_000)
        );
        assert_eq!(
            Utterance::new(LineEncoding::Linear16, 4_000).unwrap_err(),
            StreamAudioError::Rate(4_000)
        );
        assert!(Utterance::new(LineEncoding::Linear16, 0).is_err());
        let mut u = Utterance::new(LineEncoding::MuLaw, 8_000).unwrap();
        u.push(&[0xFF; 800]);
        assert_eq!(u.duration(), Duration::from_millis(100));
        assert_eq!(
            u.pcm16k(u.len()).len(),
            1_600,
            "8 kHz mu-law becomes 16 kHz"
        );
    }

    #[test]
    fn the_voice_ends_where_the_loud_frames_stop() {
        let mut u = Utterance::new(LineEncoding::Linear16, 16_000).unwrap();
        u.push(&s16(&tone(0.2, 0.001, 16_000)));
        u.push(&s16(&tone(1.0, 0.3, 16_000)));
        u.push(&s16(&tone(0.3, 0.001, 16_000)));
        let end = u.duration_of(u.voiced_end());
        assert_eq!(end, Duration::from_millis(1_200));
    }

    #[test]
    fn a_quiet_voice_on_a_clean_line_is_voice_and_unvoiced_audio_is_decoded_whole() {
        let mut u = Utterance::new(LineEncoding::Linear16, 16_000).unwrap();
        u.push(&s16(&tone(0.2, 0.0005, 16_000)));
        assert_eq!(u.voiced_end(), 0);
        assert_eq!(u.decode_end(), u.len(), "nothing voiced yet: all of it");
        // -45 dBFS: under the absolute threshold, far above this line's noise.
        u.push(&s16(&tone(0.5, 0.008, 16_000)));
        u.push(&s16(&tone(0.3, 0.0005, 16_000)));
        assert_eq!(u.duration_of(u.voiced_end()), Duration::from_millis(700));
    }

    #[test]
    fn decodes_come_every_step_and_at_once_in_a_pause_but_not_on_silence() {
        let policy = Policy::default();
        let mut u = Utterance::new(LineEncoding::Linear16, 16_000).unwrap();
        u.push(&s16(&tone(0.2, 0.3, 16_000)));
        assert!(
            !policy.should_decode(&u, 0),
            "200 ms of voice: not a step yet"
        );
        u.push(&s16(&tone(0.25, 0.3, 16_000)));
        assert!(policy.should_decode(&u, 0), "450 ms of voice is a step");
        let decoded = u.len();
        u.push(&s16(&tone(0.06, 0.3, 16_000)));
        assert!(!policy.should_decode(&u, decoded));
        u.push(&s16(&tone(0.12, 0.001, 16_000)));
        assert!(
            policy.should_decode(&u, decoded),
            "100 ms of quiet after new voice: decode now"
        );
        assert!(!heard_all(&u, decoded));
        assert!(
            policy.should_preempt(&u, decoded),
            "a decode still running on older audio is dropped in the pause"
        );
        let decoded = u.decode_end();
        assert!(!policy.should_preempt(&u, decoded));
        assert!(heard_all(&u, decoded));
        u.push(&s16(&tone(1.0, 0.001, 16_000)));
        assert_eq!(
            u.duration_of(u.decode_end() - u.voiced_end()),
            Duration::from_millis(200),
            "a decode keeps 200 ms of the quiet"
        );
        assert!(
            !policy.should_decode(&u, decoded),
            "silence is not decoded again"
        );
        assert!(
            heard_all(&u, decoded),
            "the decode before the silence is final"
        );
    }

    #[test]
    fn stable_words_are_the_shared_start_whatever_the_case_and_punctuation() {
        assert_eq!(stable_words("My number is", "my number is five,"), 3);
        assert_eq!(stable_words("I'd like a", "I'd love a pizza."), 1);
        assert_eq!(stable_words("", "hello"), 0);
        assert_eq!(stability("my number", "my number is five"), 0.5);
        assert_eq!(stability("anything", ""), 0.0);
    }
}
