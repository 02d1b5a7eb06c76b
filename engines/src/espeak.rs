//! Text to IPA phonemes through libespeak-ng, the phonemizer Piper voices were trained on.
//!
//! libespeak-ng keeps global state (the selected voice, a static output buffer), so every
//! use goes through one process-wide lock.

use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::sync::Mutex;

const AUDIO_OUTPUT_SYNCHRONOUS: c_int = 2;
const ESPEAK_INITIALIZE_DONT_EXIT: c_int = 0x8000;
const ESPEAK_CHARS_UTF8: c_int = 1;
const ESPEAK_PHONEMES_IPA: c_int = 0x02;
const EE_OK: c_int = 0;

#[link(name = "espeak-ng")]
unsafe extern "C" {
    fn espeak_Initialize(
        output: c_int,
        buflength: c_int,
        path: *const c_char,
        options: c_int,
    ) -> c_int;
    fn espeak_SetVoiceByName(name: *const c_char) -> c_int;
    fn espeak_TextToPhonemes(
        textptr: *mut *const c_void,
        textmode: c_int,
        phonememode: c_int,
    ) -> *const c_char;
}

/// Why phonemization failed.
#[derive(Debug, thiserror::Error)]
pub enum EspeakError {
    /// libespeak-ng could not start (usually: espeak-ng-data is not installed).
    #[error(
        "libespeak-ng failed to initialise (install the espeak-ng package: scripts/install.sh)"
    )]
    Initialize,
    /// The voice's language is not known to espeak-ng.
    #[error("espeak-ng has no voice {0:?}")]
    Voice(String),
    /// Text with a NUL byte cannot be passed to C.
    #[error("text contains a NUL byte")]
    Nul,
}

/// Process-wide espeak-ng state: whether it is initialised and which voice is selected.
struct Espeak {
    voice: Option<String>,
}

static ESPEAK: Mutex<Option<Espeak>> = Mutex::new(None);

/// IPA phonemes of `text` in language `voice` (espeak-ng voice name such as `en-us`).
/// espeak-ng drops punctuation; callers split clauses themselves and keep it.
pub fn phonemize(voice: &str, text: &str) -> Result<String, EspeakError> {
    let c_text = CString::new(text).map_err(|_| EspeakError::Nul)?;
    // A poisoned lock only means another thread panicked mid-call; espeak's state is
    // still usable because every call below re-selects the voice when needed.
    let mut guard = ESPEAK.lock().unwrap_or_else(|p| p.into_inner());
    if guard.is_none() {
        // SAFETY: called with the global lock held; a null path selects the default
        // espeak-ng-data directory.
        let rate = unsafe {
            espeak_Initialize(
                AUDIO_OUTPUT_SYNCHRONOUS,
                0,
                std::ptr::null(),
                ESPEAK_INITIALIZE_DONT_EXIT,
            )
        };
        if rate <= 0 {
            return Err(EspeakError::Initialize);
        }
        *guard = Some(Espeak { voice: None });
    }
    let state = guard.as_mut().ok_or(EspeakError::Initialize)?;
    if state.voice.as_deref() != Some(voice) {
        let c_voice = CString::new(voice).map_err(|_| EspeakError::Nul)?;
        // SAFETY: lock held; the string outlives the call.
        if unsafe { espeak_SetVoiceByName(c_voice.as_ptr()) } != EE_OK {
            state.voice = None;
            return Err(EspeakError::Voice(voice.to_owned()));
        }
        state.voice = Some(voice.to_owned());
    }
    let mut out = String::new();
    let mut ptr: *const c_void = c_text.as_ptr().cast();
    // espeak_TextToPhonemes handles one clause per call and advances `ptr`, setting it
    // to null at the end of the text.
    while !ptr.is_null() {
        // SAFETY: lock held; `ptr` points into `c_text`, which is NUL-terminated and
        // alive; the returned buffer is copied before the next call.
        let phonemes =
            unsafe { espeak_TextToPhonemes(&mut ptr, ESPEAK_CHARS_UTF8, ESPEAK_PHONEMES_IPA) };
        if phonemes.is_null() {
            break;
        }
        // SAFETY: espeak returns a NUL-terminated string in its own static buffer.
        let chunk = unsafe { CStr::from_ptr(phonemes) }.to_string_lossy();
        let chunk = chunk.trim();
        if !chunk.is_empty() {
            if !out.is_empty() {
                out.push(' ');
            }
            out.push_str(chunk);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn english_words_become_ipa() {
        let p = phonemize("en-us", "hello world").unwrap();
        assert!(p.contains('h') && p.contains('w'), "{p}");
        assert!(p.contains('ˈ'), "stress marks expected: {p}");
    }

    #[test]
    fn an_unknown_voice_is_an_error_and_the_next_call_still_works() {
        assert!(matches!(
            phonemize("xx-no-such-voice", "hi"),
            Err(EspeakError::Voice(_))
        ));
        assert!(!phonemize("en-us", "yes").unwrap().is_empty());
    }

    #[test]
    fn text_with_nul_is_refused() {
        assert!(matches!(phonemize("en-us", "a\0b"), Err(EspeakError::Nul)));
    }
}
