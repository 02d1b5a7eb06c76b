//! Smart Turn v3.2: is the caller done talking? A small Whisper-encoder classifier (Pipecat's
//! open model, BSD-2, 8.7 MB ONNX) that hears the last 8 seconds of a turn and gives the
//! probability that the utterance is complete. The agent asks it at a pause, so a caller who
//! stops mid-sentence ("my number is... 555...") is not cut off, while a finished one is
//! answered after a short silence.
//!
//! The model reads Whisper's input: an 80-band log-mel spectrogram of 16 kHz audio, 25 ms
//! windows every 10 ms, over exactly 8 s (the audio's end, zero-padded in front when
//! shorter), with the waveform first normalised to zero mean and unit variance. This module
//! computes those features itself (Slaney mel scale and area normalisation, periodic Hann
//! window, reflect-padded centred frames, log10 with an 8-decade floor below the peak), so
//! the agent needs no Python.

use std::path::Path;
use std::sync::Arc;

use ort::session::Session;
use ort::value::TensorRef;

use crate::models::{SessionError, SessionPool};
use realfft::{RealFftPlanner, RealToComplex};

/// Sample rate the model hears.
pub const SAMPLE_RATE: u32 = 16_000;
/// Audio the model hears: the last 8 seconds of the turn.
pub const WINDOW_SAMPLES: usize = 8 * SAMPLE_RATE as usize;
/// FFT size: 25 ms.
const N_FFT: usize = 400;
/// Hop between frames: 10 ms.
const HOP: usize = 160;
/// Mel bands.
const N_MELS: usize = 80;
/// Frames the model reads (the spectrogram's last frame is dropped, as Whisper does).
const FRAMES: usize = WINDOW_SAMPLES / HOP;
/// Frequency bins of one frame.
const BINS: usize = N_FFT / 2 + 1;

/// Why a prediction failed.
#[derive(Debug, thiserror::Error)]
pub enum SmartTurnError {
    /// The model file could not be read.
    #[error("cannot read the Smart Turn model {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// ONNX Runtime refused the model or a run failed.
    #[error("Smart Turn {context}: {source}")]
    Onnx {
        /// What was being done.
        context: &'static str,
        /// ONNX Runtime's error.
        source: ort::Error,
    },
    /// ONNX Runtime could not be found or loaded.
    #[error(transparent)]
    Runtime(#[from] crate::models::ModelsError),
    /// The model gave something other than one probability, or nothing usable.
    #[error("Smart Turn returned an unexpected output: {0}")]
    Output(String),
}

/// The mel filterbank, stored sparsely: each band's first bin and its weights.
struct MelBank {
    bands: Vec<(usize, Vec<f64>)>,
}

impl MelBank {
    fn slaney() -> Self {
        // The Slaney scale: linear to 1 kHz (3 mels per 200 Hz), logarithmic above it.
        let to_mel = |hz: f64| {
            if hz < 1000.0 {
                3.0 * hz / 200.0
            } else {
                15.0 + (hz / 1000.0).ln() * 27.0 / 6.4f64.ln()
            }
        };
        let to_hz = |mel: f64| {
            if mel < 15.0 {
                200.0 * mel / 3.0
            } else {
                1000.0 * ((mel - 15.0) * 6.4f64.ln() / 27.0).exp()
            }
        };
        let nyquist = f64::from(SAMPLE_RATE) / 2.0;
        let (lo, hi) = (to_mel(0.0), to_mel(nyquist));
        // N_MELS triangles need N_MELS + 2 edges, evenly spaced in mels.
        let edges: Vec<f64> = (0..N_MELS + 2)
            .map(|i| to_hz(lo + (hi - lo) * i as f64 / (N_MELS + 1) as f64))
            .collect();
        let bin_hz = |k: usize| nyquist * k as f64 / (BINS - 1) as f64;
        let bands = (0..N_MELS)
            .map(|m| {
                let (left, centre, right) = (edges[m], edges[m + 1], edges[m + 2]);
                // Area normalisation: every band carries the same energy.
                let norm = 2.0 / (right - left);
                let weights: Vec<(usize, f64)> = (0..BINS)
                    .filter_map(|k| {
                        let f = bin_hz(k);
                        let w = ((f - left) / (centre - left)).min((right - f) / (right - centre));
                        (w > 0.0).then_some((k, w * norm))
                    })
                    .collect();
                let first = weights.first().map_or(0, |(k, _)| *k);
                (first, weights.into_iter().map(|(_, w)| w).collect())
            })
            .collect();
        Self { bands }
    }
}

/// The 80 x 800 log-mel features of the model's 8-second window (row-major, band first).
struct Features {
    fft: Arc<dyn RealToComplex<f64>>,
    window: Vec<f64>,
    mel: MelBank,
}

impl Features {
    fn new() -> Self {
        // Periodic Hann: the window of a length-N_FFT frame repeated every N_FFT samples.
        let window = (0..N_FFT)
            .map(|n| 0.5 - 0.5 * (2.0 * std::f64::consts::PI * n as f64 / N_FFT as f64).cos())
            .collect();
        Self {
            fft: RealFftPlanner::<f64>::new().plan_fft_forward(N_FFT),
            window,
            mel: MelBank::slaney(),
        }
    }

    /// Features of the turn's audio (16 kHz); only its last [`WINDOW_SAMPLES`] count.
    fn compute(&self, audio: &[f32]) -> Vec<f32> {
        // The end of the turn, right-aligned in the window; silence in front.
        let tail = &audio[audio.len().saturating_sub(WINDOW_SAMPLES)..];
        let mut x = vec![0f32; WINDOW_SAMPLES];
        x[WINDOW_SAMPLES - tail.len()..].copy_from_slice(tail);
        // Zero mean, unit variance over the whole window (sums in f64: 128,000 f32 additions
        // in a row would drift).
        let n = x.len() as f64;
        let mean = x.iter().map(|s| f64::from(*s)).sum::<f64>() / n;
        let var = x
            .iter()
            .map(|s| (f64::from(*s) - mean).powi(2))
            .sum::<f64>()
            / n;
        let (mean, scale) = (mean as f32, (1.0 / (var + 1e-7).sqrt()) as f32);
        // Centred frames: reflect the signal by half a frame at both ends (no edge repeat).
        let pad = N_FFT / 2;
        let at = |i: isize| -> f64 {
            let len = x.len() as isize;
            let j = if i < 0 {
                -i
            } else if i >= len {
                2 * (len - 1) - i
            } else {
                i
            };
            f64::from((x[j as usize] - mean) * scale)
        };
        let mut frame = self.fft.make_input_vec();
        let mut spectrum = self.fft.make_output_vec();
        let mut scratch = self.fft.make_scratch_vec();
        let mut power = vec![0f64; BINS];
        let mut log_mel = vec![0f64; N_MELS * FRAMES];
        for t in 0..FRAMES {
            let start = (t * HOP) as isize - pad as isize;
            for (n, v) in frame.iter_mut().enumerate() {
                *v = at(start + n as isize) * self.window[n];
            }
            // Sizes come from the plan itself, so the transform cannot refuse them.
            if self
                .fft
                .process_with_scratch(&mut frame, &mut spectrum, &mut scratch)
                .is_err()
            {
                spectrum.iter_mut().for_each(|c| *c = Default::default());
            }
            for (p, c) in power.iter_mut().zip(&spectrum) {
                *p = c.norm_sqr();
            }
            for (m, (first, weights)) in self.mel.bands.iter().enumerate() {
                let energy: f64 = weights
                    .iter()
                    .zip(&power[*first..])
                    .map(|(w, p)| w * p)
                    .sum();
                log_mel[m * FRAMES + t] = energy.max(1e-10).log10();
            }
        }
        // Nothing more than 8 decades below the loudest band counts, then Whisper's scaling.
        let peak = log_mel.iter().copied().fold(f64::MIN, f64::max);
        log_mel
            .into_iter()
            .map(|v| ((v.max(peak - 8.0) + 4.0) / 4.0) as f32)
            .collect()
    }
}

/// The Smart Turn model, shareable by every call in the process (sessions are pooled, so
/// calls on different threads predict in parallel).
pub struct SmartTurn {
    sessions: SessionPool,
    features: Features,
}

impl std::fmt::Debug for SmartTurn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmartTurn")
            .field("sessions", &self.sessions)
            .finish_non_exhaustive()
    }
}

impl From<SessionError> for SmartTurnError {
    fn from(e: SessionError) -> Self {
        match e {
            SessionError::Runtime(e) => SmartTurnError::Runtime(e),
            SessionError::Onnx { context, source } => SmartTurnError::Onnx { context, source },
        }
    }
}

impl SmartTurn {
    /// Loads the model. ONNX Runtime is the one given to
    /// [`crate::models::init_onnxruntime`], else the one in the models directory.
    pub fn load(path: &Path) -> Result<Self, SmartTurnError> {
        let sessions = SessionPool::load(path).map_err(|e| match e {
            Ok(e) => e.into(),
            Err(source) => SmartTurnError::Read {
                path: path.display().to_string(),
                source,
            },
        })?;
        Ok(Self {
            sessions,
            features: Features::new(),
        })
    }

    /// Probability (0..1) that the turn in `audio` (16 kHz mono in -1..1, from the start of
    /// the caller's speech to now, trailing pause included) is a complete utterance. Only
    /// the last 8 seconds are heard. Blocking: tens of milliseconds of one core.
    pub fn completion_probability(&self, audio: &[f32]) -> Result<f32, SmartTurnError> {
        let features = self.features.compute(audio);
        let mut session = self.sessions.take()?;
        let result = run(&mut session, &features);
        self.sessions.give_back(session);
        result
    }
}

/// Silence the model hears after the voice, whenever in the pause it is asked: 200 ms, the
/// minimum end-of-turn silence, and about what Pipecat's 0.2 s VAD stop gives it.
pub const HEARD_PAUSE_SAMPLES: usize = SAMPLE_RATE as usize / 5;

/// What the model hears of a turn at a pause: `utterance` (16 kHz, from the start of the
/// caller's speech to now) without its last `silence` (the pause so far, counted from where
/// the voice stopped, not from where the VAD noticed), then [`HEARD_PAUSE_SAMPLES`] of
/// digital silence, its last 8 seconds.
///
/// Why not the audio as it came: the pause is noticed on a 32 ms VAD chunk, and where the
/// caller's 20 ms frames fall on those chunks moves that point by a few milliseconds from
/// call to call. The model is that sensitive to the pause's length: on "No thanks." its
/// probability ranged 0.14-0.77 over the eight ways the frames can fall. Cut at the voice's
/// end and given a fixed pause, the same words get the same verdict on every call.
pub fn heard_at_pause(utterance: &[f32], silence: std::time::Duration) -> Vec<f32> {
    let voice_end = utterance
        .len()
        .saturating_sub(crate::audio::samples(silence, SAMPLE_RATE));
    let voice = &utterance[..voice_end];
    let keep = (WINDOW_SAMPLES - HEARD_PAUSE_SAMPLES).min(voice.len());
    let mut heard = Vec::with_capacity(keep + HEARD_PAUSE_SAMPLES);
    heard.extend_from_slice(&voice[voice.len() - keep..]);
    heard.resize(keep + HEARD_PAUSE_SAMPLES, 0.0);
    heard
}

fn run(session: &mut Session, features: &[f32]) -> Result<f32, SmartTurnError> {
    let onnx = |context| move |source| SmartTurnError::Onnx { context, source };
    let input = TensorRef::from_array_view(([1usize, N_MELS, FRAMES], features))
        .map_err(onnx("input tensor"))?;
    let outputs = session
        .run(ort::inputs!["input_features" => input])
        .map_err(onnx("run"))?;
    // The graph's output is named `logits` but ends in a sigmoid: it is the probability.
    let (_, out) = outputs[0]
        .try_extract_tensor::<f32>()
        .map_err(onnx("output"))?;
    match out {
        [p] if (0.0..=1.0).contains(p) => Ok(*p),
        other => Err(SmartTurnError::Output(format!("{other:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filterbank_covers_the_spectrum_with_one_triangle_per_band() {
        let bank = MelBank::slaney();
        assert_eq!(bank.bands.len(), N_MELS);
        let mut last_first = 0;
        for (first, weights) in &bank.bands {
            assert!(!weights.is_empty(), "every band has bins");
            assert!(*first >= last_first, "bands rise in frequency");
            assert!(first + weights.len() <= BINS);
            last_first = *first;
        }
        // The top band reaches the last bins below Nyquist.
        let (first, weights) = bank.bands.last().unwrap();
        assert!(first + weights.len() >= BINS - 2);
    }

    #[test]
    fn the_model_hears_the_voice_then_the_same_pause_however_late_it_is_asked() {
        let ms = std::time::Duration::from_millis;
        // 1 s of "voice" (ones) followed by 150 ms of line noise the VAD had not yet called
        // silence: cut at the voice's end, then 200 ms of silence.
        let mut utterance = vec![1.0f32; 16_000];
        utterance.extend(std::iter::repeat_n(0.01, 2_400));
        let heard = heard_at_pause(&utterance, ms(150));
        assert_eq!(heard.len(), 16_000 + HEARD_PAUSE_SAMPLES);
        assert!(heard[..16_000].iter().all(|&s| s == 1.0));
        assert!(heard[16_000..].iter().all(|&s| s == 0.0));
        // Asked later in the same pause, it hears the same.
        utterance.extend(std::iter::repeat_n(0.01, 1_600));
        assert_eq!(heard_at_pause(&utterance, ms(250)), heard);
        // No pause yet keeps all there is; a pause longer than the audio kept leaves only
        // the pause.
        assert_eq!(
            heard_at_pause(&utterance[..8_000], ms(0)).len(),
            8_000 + 3_200
        );
        assert_eq!(
            heard_at_pause(&utterance[..8_000], ms(1_000)),
            vec![0.0; 3_200]
        );
        // A long turn keeps its last 8 s, the pause included.
        let long: Vec<f32> = (0..10 * 16_000).map(|i| i as f32).collect();
        let heard = heard_at_pause(&long, ms(0));
        assert_eq!(heard.len(), WINDOW_SAMPLES);
        let voice = WINDOW_SAMPLES - HEARD_PAUSE_SAMPLES;
        assert_eq!(heard[voice - 1], (long.len() - 1) as f32);
        assert_eq!(heard[0], (long.len() - voice) as f32);
    }

    #[test]
    fn features_have_whispers_shape_and_range() {
        let f = Features::new();
        // 1 s of a 440 Hz tone: right-aligned, silence in front.
        let tone: Vec<f32> = (0..16_000)
            .map(|i| 0.3 * (2.0 * std::f32::consts::PI * 440.0 * i as f32 / 16_000.0).sin())
            .collect();
        let x = f.compute(&tone);
        assert_eq!(x.len(), N_MELS * FRAMES);
        let max = x.iter().copied().fold(f32::MIN, f32::max);
        let min = x.iter().copied().fold(f32::MAX, f32::min);
        // log10 clamped to 8 decades under the peak, then (v + 4) / 4: a 2-wide range.
        assert!(max - min <= 2.0 + 1e-4, "{min}..{max}");
        // The tone is in the last second, and in the band holding 440 Hz (band 8 or so),
        // not in the silence before it nor far above it.
        let band = |m: usize, t: usize| x[m * FRAMES + t];
        let loudest = (0..N_MELS)
            .max_by(|a, b| band(*a, 750).total_cmp(&band(*b, 750)))
            .unwrap();
        assert!((5..=12).contains(&loudest), "band {loudest}");
        assert!(band(loudest, 750) > band(loudest, 100) + 1.0);
    }

    #[test]
    fn longer_audio_is_heard_by_its_last_eight_seconds() {
        let f = Features::new();
        let mut long = vec![0.2f32; 20 * 16_000];
        for (i, s) in long.iter_mut().enumerate() {
            *s = 0.2 * (i as f32 * 0.05).sin();
        }
        let tail = long[long.len() - WINDOW_SAMPLES..].to_vec();
        assert_eq!(f.compute(&long), f.compute(&tail));
    }
}
