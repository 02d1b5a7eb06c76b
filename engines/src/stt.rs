//! Whisper speech to text through whisper.cpp (`whisper-rs`).
//!
//! Decoding is greedy with no temperature fallback: on a phone turn a fallback re-decodes
//! the whole clip at higher temperatures, which costs seconds and rarely helps a short
//! utterance. Timestamps are off and the result is one segment, which is what a turn is.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Once};

use whisper_rs::{
    FullParams, SamplingStrategy, WhisperContext, WhisperContextParameters, WhisperState,
};

/// Why transcription failed.
#[derive(Debug, thiserror::Error)]
pub enum SttError {
    /// whisper.cpp could not load the model.
    #[error("cannot load the Whisper model {path}: {reason}")]
    Load {
        /// The ggml file.
        path: String,
        /// whisper.cpp's message.
        reason: String,
    },
    /// whisper.cpp failed while transcribing.
    #[error("Whisper failed: {0}")]
    Transcribe(String),
    /// The language code is not one Whisper knows, or the model is English-only.
    #[error("unsupported language {0:?} for this Whisper model")]
    Language(String),
    /// The caller cancelled the transcription before it finished.
    #[error("the transcription was cancelled")]
    Cancelled,
}

/// Options for [`WhisperStt`].
#[derive(Debug, Clone)]
pub struct SttOptions {
    /// CPU threads per transcription.
    pub threads: usize,
}

impl Default for SttOptions {
    fn default() -> Self {
        Self {
            threads: std::thread::available_parallelism().map_or(1, usize::from),
        }
    }
}

/// A transcript with how sure Whisper was of each word.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Transcript {
    /// The words as Whisper wrote them, punctuation included.
    pub text: String,
    /// Each word of `text` (split at whitespace) with its confidence, 0..1: the lowest
    /// probability of the tokens that spell it (punctuation aside).
    pub words: Vec<Word>,
}

/// One word of a [`Transcript`].
#[derive(Debug, Clone, PartialEq)]
pub struct Word {
    /// The word as written, with any punctuation attached.
    pub text: String,
    /// The lowest probability of its tokens, punctuation tokens aside (1 for a word of
    /// punctuation only).
    pub confidence: f32,
}

/// Groups Whisper's text tokens into words: a token that starts with a space starts a word,
/// and a token of punctuation alone never lowers a word's confidence (Whisper is often unsure
/// whether a sentence ends with "." or "?", never a reason to doubt the word).
fn words_of(tokens: &[(String, f32)]) -> Vec<Word> {
    let mut words: Vec<Word> = Vec::new();
    for (piece, p) in tokens {
        let spelt = piece.chars().any(char::is_alphanumeric);
        let starts = piece.starts_with(' ') || words.is_empty();
        if starts && !piece.trim().is_empty() {
            words.push(Word {
                text: piece.trim().to_owned(),
                confidence: if spelt { *p } else { 1.0 },
            });
        } else if let Some(word) = words.last_mut() {
            word.text.push_str(piece.trim());
            if spelt {
                word.confidence = word.confidence.min(*p);
            }
        }
    }
    words
}

/// A loaded Whisper model; share it across calls (transcriptions take turns on a small
/// pool of decoder states, created as needed).
pub struct WhisperStt {
    ctx: WhisperContext,
    states: Mutex<Vec<WhisperState>>,
    options: SttOptions,
    multilingual: bool,
}

impl std::fmt::Debug for WhisperStt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WhisperStt")
            .field("options", &self.options)
            .field("multilingual", &self.multilingual)
            .finish_non_exhaustive()
    }
}

static QUIET_LOGS: Once = Once::new();

/// Encoder positions (20 ms each) past the clip's end: enough for clear speech, and the encoder's time shrinks with them (a 3 s turn decodes in about 280 ms
/// instead of 370 ms on two cores).
const MARGIN: usize = 32;

/// A transcript that ends in a decoding loop, cut after the loop's first round: "Okay. Okay.
/// Okay. Okay. Okay." is "Okay.", "Can you say that again? Can you say that again?" is "Can you
/// say that again?". Greedy decoding of a clip cut close to its last word (a streamed
/// utterance, a reduced encoder context) often runs on by repeating what it heard until the
/// token cap; the first round is what was said. A loop runs to the end of the transcript
/// (a partial last round, even a partial last word, included) and repeats a phrase of
/// three words or more twice, two words four times or one word five times: people say
/// "no no no" and "five five five five" (a phone number), not five rounds of one word.
/// `None` when the transcript does not end in a loop.
fn unloop(text: &str) -> Option<String> {
    let said: Vec<&str> = text.split_whitespace().collect();
    let words: Vec<String> = said
        .iter()
        .map(|w| {
            w.trim_matches(|c: char| !c.is_alphanumeric())
                .to_lowercase()
        })
        .collect();
    let n = words.len();
    for start in 0..n {
        for period in 1..=(n - start) / 2 {
            let rounds = (n - start) as f32 / period as f32;
            let enough = match period {
                1 => 5.0,
                2 => 4.0,
                _ => 2.0,
            };
            if rounds < enough {
                continue;
            }
            // The cap may stop the last round inside a word.
            let same = |i: usize| {
                words[i] == words[i - period]
                    || (i == n - 1 && words[i - period].starts_with(words[i].as_str()))
            };
            if (start + period..n).all(same) {
                return Some(said[..start + period].join(" "));
            }
        }
    }
    None
}

/// whisper.cpp's abort callback: whether the `AtomicBool` at `flag` is set.
unsafe extern "C" fn cancel_requested(flag: *mut std::ffi::c_void) -> bool {
    // SAFETY: `transcribe_words` passes the address of an AtomicBool it keeps alive for
    // the whole transcription, the only time whisper.cpp calls this.
    unsafe { (*flag.cast::<AtomicBool>()).load(Ordering::Relaxed) }
}

impl WhisperStt {
    /// Loads a ggml Whisper model with default options.
    pub fn load(path: &Path) -> Result<Self, SttError> {
        Self::load_with(path, SttOptions::default())
    }

    /// Loads a ggml Whisper model.
    pub fn load_with(path: &Path, options: SttOptions) -> Result<Self, SttError> {
        // whisper.cpp prints every model detail to stderr; route it to nowhere.
        QUIET_LOGS.call_once(whisper_rs::install_logging_hooks);
        let load_err = |reason: String| SttError::Load {
            path: path.display().to_string(),
            reason,
        };
        if !path.is_file() {
            return Err(load_err("no such file (run scripts/install.sh)".to_owned()));
        }
        let path_str = path
            .to_str()
            .ok_or_else(|| load_err("path is not UTF-8".to_owned()))?;
        let ctx = WhisperContext::new_with_params(path_str, WhisperContextParameters::default())
            .map_err(|e| load_err(e.to_string()))?;
        let multilingual = ctx.is_multilingual();
        let first = ctx.create_state().map_err(|e| load_err(e.to_string()))?;
        Ok(Self {
            ctx,
            states: Mutex::new(vec![first]),
            options,
            multilingual,
        })
    }

    /// The language Whisper is told for `language` (an ISO code such as `en`, or none), or
    /// why this model cannot transcribe it: `None` means English for English-only models and
    /// auto-detection otherwise.
    pub fn language<'a>(&self, language: Option<&'a str>) -> Result<Option<&'a str>, SttError> {
        match language.map(str::trim).filter(|l| !l.is_empty()) {
            None if self.multilingual => Ok(None),
            None => Ok(Some("en")),
            Some(l) if !self.multilingual && l != "en" => Err(SttError::Language(l.to_owned())),
            Some(l) if whisper_rs::get_lang_id(l).is_none() => {
                Err(SttError::Language(l.to_owned()))
            }
            Some(l) => Ok(Some(l)),
        }
    }

    /// Transcribes 16 kHz mono audio in -1..1. `language` is an ISO code such as `en`;
    /// `None` means English for English-only models and auto-detection otherwise.
    pub fn transcribe(&self, pcm16k: &[f32], language: Option<&str>) -> Result<String, SttError> {
        let cancel = Arc::new(AtomicBool::new(false));
        Ok(self.transcribe_words(pcm16k, language, &cancel)?.text)
    }

    /// [`WhisperStt::transcribe`] with each word's confidence, stopped early with
    /// [`SttError::Cancelled`] once `cancel` is set (whisper.cpp checks it between compute
    /// steps): a stream whose caller paused drops the decode of older audio to start on all
    /// of it at once.
    pub fn transcribe_words(
        &self,
        pcm16k: &[f32],
        language: Option<&str>,
        cancel: &Arc<AtomicBool>,
    ) -> Result<Transcript, SttError> {
        let language = self.language(language)?;
        let Transcript { text, mut words } = self.decode(pcm16k, language, cancel, MARGIN)?;
        // Whisper's reference decoder retries a transcript that compresses too well (a
        // loop) at a higher temperature. Retrying costs a whole decode on the turn's
        // critical path, and on streamed clips the retries loop as well (with a wider
        // encoder margin or timestamps, measured on turn-eval's set); the loop's first
        // round is the words, so keep that.
        if words.len() != text.split_whitespace().count() {
            // Tokens that do not split as the text does (a word glued to the next): keep
            // the text, without confidences rather than with misplaced ones.
            words.clear();
        }
        let text = unloop(&text).unwrap_or(text);
        words.truncate(text.split_whitespace().count());
        Ok(Transcript { text, words })
    }

    /// One greedy decode with `margin` encoder positions after the clip.
    fn decode(
        &self,
        pcm16k: &[f32],
        language: Option<&str>,
        cancel: &Arc<AtomicBool>,
        margin: usize,
    ) -> Result<Transcript, SttError> {
        // whisper.cpp needs at least one second; pad short clips with silence.
        let min_len = 16_000 + 1_600;
        let padded;
        let audio = if pcm16k.len() < min_len {
            let mut v = pcm16k.to_vec();
            v.resize(min_len, 0.0);
            padded = v;
            &padded[..]
        } else {
            pcm16k
        };

        let mut params = FullParams::new(SamplingStrategy::Greedy { best_of: 1 });
        params.set_n_threads(i32::try_from(self.options.threads).unwrap_or(1));
        params.set_language(language);
        params.set_translate(false);
        params.set_no_timestamps(true);
        params.set_single_segment(true);
        params.set_no_context(true);
        params.set_temperature_inc(0.0);
        params.set_suppress_nst(true);
        // Whisper's encoder always runs over 30 s (1500 positions) of audio; a phone
        // turn is a few seconds, so encode only the positions the clip fills (50 per
        // second) plus a margin. This cuts encoder time roughly in proportion.
        let positions = audio.len() / 320 + margin;
        params.set_audio_ctx(i32::try_from(positions.min(1500)).unwrap_or(1500));
        // A small model fed a long quiet tail can loop on its last sentence; no one speaks
        // more than about six tokens a second, so cap the transcript at ten per second.
        let max_tokens = pcm16k.len() / 1_600 + 16;
        params.set_max_tokens(i32::try_from(max_tokens).unwrap_or(i32::MAX));
        params.set_print_progress(false);
        params.set_print_realtime(false);
        params.set_print_special(false);
        params.set_print_timestamps(false);
        if cancel.load(Ordering::Relaxed) {
            return Err(SttError::Cancelled);
        }
        // whisper-rs 0.16's closure form of this callback reads its closure through the
        // wrong pointer type (it aborts every run), so hand whisper.cpp the flag itself.
        // SAFETY: the callback only reads an AtomicBool; `cancel` keeps it alive past `full`,
        // the only call that uses it, and `params` is consumed by that call.
        unsafe {
            params.set_abort_callback(Some(cancel_requested));
            params.set_abort_callback_user_data(Arc::as_ptr(cancel).cast_mut().cast());
        }

        let mut state = match self.states.lock().ok().and_then(|mut s| s.pop()) {
            Some(s) => s,
            None => self
                .ctx
                .create_state()
                .map_err(|e| SttError::Transcribe(e.to_string()))?,
        };
        let result = state
            .full(params, audio)
            .map_err(|e| {
                if cancel.load(Ordering::Relaxed) {
                    SttError::Cancelled
                } else {
                    SttError::Transcribe(e.to_string())
                }
            })
            .map(|()| {
                let mut text = String::new();
                let mut tokens = Vec::new();
                let eot = self.ctx.token_eot();
                for segment in state.as_iter() {
                    if let Ok(s) = segment.to_str_lossy() {
                        text.push_str(&s);
                    }
                    // Text tokens only: the special ones (timestamps, end of text) come after
                    // the end-of-text token in Whisper's vocabulary.
                    for i in 0..segment.n_tokens() {
                        if let Some(token) = segment.get_token(i)
                            && token.token_id() < eot
                            && let Ok(piece) = token.to_str_lossy()
                        {
                            tokens.push((piece.into_owned(), token.token_probability()));
                        }
                    }
                }
                Transcript {
                    text: text.trim().to_owned(),
                    words: words_of(&tokens),
                }
            });
        // whisper.cpp resets a state at the start of each transcription, so one stopped
        // halfway is as good as any: keeping it spares the next decode (often the one that
        // replaced it, on the turn's critical path) from allocating a new one.
        if let Ok(mut states) = self.states.lock() {
            states.push(state);
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::{Word, unloop, words_of};

    #[test]
    fn tokens_make_words_whose_confidence_is_their_least_sure_spelt_token() {
        let tokens: Vec<(String, f32)> = [
            (" Can", 0.7),
            (" I", 0.99),
            (" bo", 0.9),
            ("ok", 0.6),
            (" it", 0.47),
            ("?", 0.2),
        ]
        .iter()
        .map(|(t, p)| (t.to_string(), *p))
        .collect();
        let word = |text: &str, confidence: f32| Word {
            text: text.into(),
            confidence,
        };
        assert_eq!(
            words_of(&tokens),
            vec![
                word("Can", 0.7),
                word("I", 0.99),
                word("book", 0.6),
                word("it?", 0.47)
            ]
        );
        assert!(words_of(&[]).is_empty());
    }

    #[test]
    fn a_loop_is_cut_after_its_first_round_and_speech_that_repeats_itself_is_kept() {
        for (looped, said) in [
            (
                "call connected, call connected, call connected, call connected, call",
                "call connected,",
            ),
            ("Okay. Okay. Okay. Okay. Okay.", "Okay."),
            (
                "Can you say that again? Can you say that again?",
                "Can you say that again?",
            ),
            (
                "No, I said Tuesday. No, I said Tuesday. No, I said",
                "No, I said Tuesday.",
            ),
            (
                "of massive massive massive massive massive massive",
                "of massive",
            ),
            ("Hm, Hm, Hm, Hm, Hm, Hm, H", "Hm,"),
        ] {
            let expected = (looped != said).then(|| said.to_owned());
            assert_eq!(unloop(looped), expected, "{looped:?}");
        }
        for speech in [
            "Thanks for calling. We are open from 9 to 5 on weekdays.",
            "no no no",
            "my number is five five five five",
            "thank you, thank you",
            "one two three four, one two three four, and five six seven eight nine ten",
            "",
        ] {
            assert_eq!(unloop(speech), None, "{speech:?}");
        }
    }
}
