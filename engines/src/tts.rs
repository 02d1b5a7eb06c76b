//! Piper text to speech (VITS ONNX voices) through ONNX Runtime.
//!
//! Text is split into clauses at punctuation; each clause is phonemized by libespeak-ng,
//! its punctuation is kept (Piper voices learned pauses and intonation from it), and the
//! clause is synthesised and handed to the caller before the next one starts, so the
//! first audio is ready after one clause instead of the whole reply.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::TensorRef;
use serde::Deserialize;

use crate::espeak::{self, EspeakError};

/// Why synthesis failed.
#[derive(Debug, thiserror::Error)]
pub enum TtsError {
    /// The voice config could not be read or parsed.
    #[error("voice config {path}: {reason}")]
    Config {
        /// The JSON file.
        path: String,
        /// What was wrong.
        reason: String,
    },
    /// ONNX Runtime refused the voice or a run failed.
    #[error("Piper voice {context}: {source}")]
    Onnx {
        /// What was being done.
        context: &'static str,
        /// ONNX Runtime's error.
        source: ort::Error,
    },
    /// ONNX Runtime could not be found or loaded.
    #[error(transparent)]
    Runtime(#[from] crate::models::ModelsError),
    /// Phonemization failed.
    #[error(transparent)]
    Phonemes(#[from] EspeakError),
}

#[derive(Deserialize)]
struct VoiceConfig {
    audio: AudioConfig,
    espeak: EspeakConfig,
    inference: InferenceConfig,
    phoneme_id_map: HashMap<String, Vec<i64>>,
    #[serde(default)]
    num_speakers: u32,
}

#[derive(Deserialize)]
struct AudioConfig {
    sample_rate: u32,
}

#[derive(Deserialize)]
struct EspeakConfig {
    voice: String,
}

#[derive(Deserialize)]
struct InferenceConfig {
    noise_scale: f32,
    length_scale: f32,
    noise_w: f32,
}

/// Marks of Piper's phoneme alphabet.
const PAD: char = '_';
const BOS: char = '^';
const EOS: char = '$';

/// A loaded Piper voice.
pub struct PiperVoice {
    session: Mutex<Session>,
    sample_rate: u32,
    espeak_voice: String,
    scales: [f32; 3],
    ids: HashMap<char, i64>,
    multi_speaker: bool,
}

impl std::fmt::Debug for PiperVoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PiperVoice")
            .field("sample_rate", &self.sample_rate)
            .field("espeak_voice", &self.espeak_voice)
            .finish_non_exhaustive()
    }
}

impl PiperVoice {
    /// Loads a voice from its ONNX model and JSON config. ONNX Runtime is the one given
    /// to [`crate::models::init_onnxruntime`], else the one in the models directory.
    pub fn load(onnx: &Path, config: &Path) -> Result<Self, TtsError> {
        let config_err = |reason: String| TtsError::Config {
            path: config.display().to_string(),
            reason,
        };
        let text = std::fs::read_to_string(config).map_err(|e| config_err(e.to_string()))?;
        let cfg: VoiceConfig =
            serde_json::from_str(&text).map_err(|e| config_err(e.to_string()))?;
        let mut ids = HashMap::with_capacity(cfg.phoneme_id_map.len());
        for (phoneme, id) in &cfg.phoneme_id_map {
            let mut chars = phoneme.chars();
            if let (Some(c), None, Some(&id)) = (chars.next(), chars.next(), id.first()) {
                ids.insert(c, id);
            }
        }
        for mark in [PAD, BOS, EOS] {
            if !ids.contains_key(&mark) {
                return Err(config_err(format!("phoneme_id_map has no {mark:?}")));
            }
        }
        let onnx_err = |context| move |source| TtsError::Onnx { context, source };
        let threads = std::thread::available_parallelism().map_or(1, usize::from);
        let session = Session::builder(crate::models::onnx_environment()?)
            .map_err(onnx_err("session options"))?
            .with_intra_threads(threads)
            .map_err(|e| onnx_err("session options")(e.into()))?
            .with_optimization_level(GraphOptimizationLevel::Level3)
            .map_err(|e| onnx_err("session options")(e.into()))?
            .commit_from_file(onnx)
            .map_err(onnx_err("model load"))?;
        Ok(Self {
            session: Mutex::new(session),
            sample_rate: cfg.audio.sample_rate,
            espeak_voice: cfg.espeak.voice,
            scales: [
                cfg.inference.noise_scale,
                cfg.inference.length_scale,
                cfg.inference.noise_w,
            ],
            ids,
            multi_speaker: cfg.num_speakers > 1,
        })
    }

    /// The same voice speaking each text the same way every time. Piper draws random noise
    /// for every synthesis (scaled by `noise_scale` for the sound, `noise_w` for the
    /// phonemes' lengths), so a test or a benchmark that speaks with it would hear a
    /// slightly different utterance on each run; without the noise the voice is a little
    /// flatter and always the same.
    pub fn without_noise(mut self) -> Self {
        self.scales[0] = 0.0;
        self.scales[2] = 0.0;
        self
    }

    /// Sample rate of the audio this voice produces (mono f32).
    pub fn sample_rate(&self) -> u32 {
        self.sample_rate
    }

    /// Speaks `text`, handing each clause's audio (mono f32 at [`Self::sample_rate`]) to
    /// `on_audio` as soon as it is ready. `on_audio` returns `false` to cancel (barge-in):
    /// no further clause is synthesised and the call returns `Ok(())`.
    pub fn synthesize(
        &self,
        text: &str,
        on_audio: &mut dyn FnMut(&[f32]) -> bool,
    ) -> Result<(), TtsError> {
        for clause in split_clauses(text) {
            let ids = self.phoneme_ids(&clause)?;
            if ids.len() <= 3 {
                continue;
            }
            let audio = self.infer(&ids)?;
            if !audio.is_empty() && !on_audio(&audio) {
                break;
            }
        }
        Ok(())
    }

    /// Piper's id sequence for one clause: `^ _ p _ p _ … $`.
    fn phoneme_ids(&self, clause: &Clause) -> Result<Vec<i64>, TtsError> {
        let mut phonemes = espeak::phonemize(&self.espeak_voice, &clause.text)?;
        if let Some(p) = clause.punctuation {
            phonemes.push(p);
        }
        let pad = self.ids[&PAD];
        let mut ids = Vec::with_capacity(2 * phonemes.len() + 3);
        ids.push(self.ids[&BOS]);
        ids.push(pad);
        for c in phonemes.chars() {
            // Characters outside the voice's alphabet (rare espeak marks) are skipped,
            // as Piper itself does.
            if let Some(&id) = self.ids.get(&c) {
                ids.push(id);
                ids.push(pad);
            }
        }
        ids.push(self.ids[&EOS]);
        Ok(ids)
    }

    fn infer(&self, ids: &[i64]) -> Result<Vec<f32>, TtsError> {
        let onnx_err = |context| move |source| TtsError::Onnx { context, source };
        let len = [i64::try_from(ids.len()).unwrap_or(i64::MAX)];
        let input =
            TensorRef::from_array_view(([1usize, ids.len()], ids)).map_err(onnx_err("input"))?;
        let lengths =
            TensorRef::from_array_view(([1usize], &len[..])).map_err(onnx_err("input"))?;
        let scales =
            TensorRef::from_array_view(([3usize], &self.scales[..])).map_err(onnx_err("input"))?;
        let sid = [0i64];
        let mut session = self.session.lock().unwrap_or_else(|p| p.into_inner());
        let outputs = if self.multi_speaker {
            let sid =
                TensorRef::from_array_view(([1usize], &sid[..])).map_err(onnx_err("input"))?;
            session.run(ort::inputs![
                "input" => input, "input_lengths" => lengths, "scales" => scales, "sid" => sid
            ])
        } else {
            session.run(ort::inputs![
                "input" => input, "input_lengths" => lengths, "scales" => scales
            ])
        }
        .map_err(onnx_err("run"))?;
        let (_, audio) = outputs[0]
            .try_extract_tensor::<f32>()
            .map_err(onnx_err("output"))?;
        Ok(audio.iter().map(|s| s.clamp(-1.0, 1.0)).collect())
    }
}

/// A piece of text spoken in one breath, with the punctuation that ended it.
#[derive(Debug, PartialEq, Eq)]
struct Clause {
    text: String,
    punctuation: Option<char>,
}

/// Splits at clause punctuation followed by whitespace or the end of the text, so that
/// "3.5" or "e.g" stay whole.
fn split_clauses(text: &str) -> Vec<Clause> {
    let mut clauses = Vec::new();
    let mut current = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        let ends_clause = matches!(c, '.' | ',' | ';' | ':' | '!' | '?')
            && chars.peek().is_none_or(|n| n.is_whitespace());
        if ends_clause {
            let text = current.trim().to_owned();
            if text.chars().any(char::is_alphanumeric) {
                clauses.push(Clause {
                    text,
                    punctuation: Some(c),
                });
            }
            current.clear();
        } else {
            current.push(c);
        }
    }
    let rest = current.trim();
    if rest.chars().any(char::is_alphanumeric) {
        clauses.push(Clause {
            text: rest.to_owned(),
            punctuation: None,
        });
    }
    clauses
}

/// A speech engine behind `grokcast-serve`'s `/v1/audio/speech`: Piper, or CSM with the
/// `csm` feature.
pub trait Speaker: Send + Sync + std::fmt::Debug {
    /// The rate of the audio it produces (mono f32).
    fn sample_rate(&self) -> u32;

    /// The voices requests may name, when the engine has its own; `None` accepts the
    /// server's configured names (all of them speak with the one voice).
    fn voices(&self) -> Option<Vec<String>>;

    /// Speaks `text` in `voice`, handing audio to `on_audio` as it is ready; `on_audio`
    /// returns `false` to cancel, and the call then returns `Ok(())` at once.
    fn speak(
        &self,
        text: &str,
        voice: Option<&str>,
        on_audio: &mut dyn FnMut(&[f32]) -> bool,
    ) -> Result<(), String>;
}

impl Speaker for PiperVoice {
    fn sample_rate(&self) -> u32 {
        PiperVoice::sample_rate(self)
    }

    fn voices(&self) -> Option<Vec<String>> {
        None
    }

    fn speak(
        &self,
        text: &str,
        _voice: Option<&str>,
        on_audio: &mut dyn FnMut(&[f32]) -> bool,
    ) -> Result<(), String> {
        self.synthesize(text, on_audio).map_err(|e| e.to_string())
    }
}

#[cfg(feature = "csm")]
impl Speaker for crate::csm::CsmVoice {
    fn sample_rate(&self) -> u32 {
        crate::csm::CsmVoice::sample_rate(self)
    }

    fn voices(&self) -> Option<Vec<String>> {
        Some(crate::csm::CsmVoice::voices(self))
    }

    fn speak(
        &self,
        text: &str,
        voice: Option<&str>,
        on_audio: &mut dyn FnMut(&[f32]) -> bool,
    ) -> Result<(), String> {
        self.synthesize(text, voice, on_audio)
            .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clauses_keep_their_punctuation_and_numbers_stay_whole() {
        let c = split_clauses("Hello there, it costs 3.5 dollars. Okay?  bye");
        let texts: Vec<_> = c.iter().map(|c| (c.text.as_str(), c.punctuation)).collect();
        assert_eq!(
            texts,
            vec![
                ("Hello there", Some(',')),
                ("it costs 3.5 dollars", Some('.')),
                ("Okay", Some('?')),
                ("bye", None)
            ]
        );
    }

    #[test]
    fn empty_and_punctuation_only_text_has_no_clauses() {
        assert!(split_clauses("").is_empty());
        assert!(split_clauses(" ... , ! ").is_empty());
    }
}
