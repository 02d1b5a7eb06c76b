//! Where the model files are, and loading ONNX Runtime once per process.
//!
//! `scripts/install.sh` installs every model into one directory (`models/` at the
//! repository root unless `GROKCAST_MODELS_DIR` says otherwise):
//!
//! ```text
//! vad/silero_vad.onnx
//! onnxruntime/libonnxruntime.so.1.31.1
//! whisper/ggml-tiny.en.bin
//! piper/en_US-joe-medium.onnx
//! piper/en_US-joe-medium.onnx.json
//! llm/gemma-3-270m-q4_k_m.gguf
//! ```

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Environment variable naming the models directory.
pub const MODELS_DIR_ENV: &str = "GROKCAST_MODELS_DIR";
/// Environment variable that overrides the ONNX Runtime library file.
pub const ORT_DYLIB_ENV: &str = "ORT_DYLIB_PATH";

/// Why a model could not be found or loaded.
#[derive(Debug, thiserror::Error)]
pub enum ModelsError {
    /// No models directory was found.
    #[error(
        "no models directory: set {MODELS_DIR_ENV} or run scripts/install.sh from the repository (looked for models/ in {searched} and its parents)"
    )]
    NoModelsDir {
        /// Where the search started.
        searched: String,
    },
    /// A model file is missing.
    #[error("{what} is missing at {path}: run scripts/install.sh to install the models")]
    Missing {
        /// Which model.
        what: &'static str,
        /// Where it was expected.
        path: PathBuf,
    },
    /// ONNX Runtime could not be loaded.
    #[error("cannot load ONNX Runtime from {path}: {reason}")]
    OnnxRuntime {
        /// The library file.
        path: PathBuf,
        /// The loader's message.
        reason: String,
    },
}

/// The model files of one models directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelPaths {
    root: PathBuf,
}

impl ModelPaths {
    /// `$GROKCAST_MODELS_DIR`, else the first `models/` directory found walking up from
    /// the working directory (so tests and binaries run from anywhere in the repository).
    pub fn discover() -> Result<Self, ModelsError> {
        if let Some(dir) = std::env::var_os(MODELS_DIR_ENV).filter(|d| !d.is_empty()) {
            return Ok(Self::at(dir));
        }
        let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
        let exe_dir = std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf));
        let starts = std::iter::once(cwd.clone()).chain(exe_dir);
        for start in starts {
            for dir in start.ancestors() {
                let candidate = dir.join("models");
                if candidate.is_dir() {
                    return Ok(Self::at(candidate));
                }
            }
        }
        Err(ModelsError::NoModelsDir {
            searched: cwd.display().to_string(),
        })
    }

    /// A given models directory (not checked until a file is asked for).
    pub fn at(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The models directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn file(&self, what: &'static str, rel: &str) -> Result<PathBuf, ModelsError> {
        let path = self.root.join(rel);
        if path.is_file() {
            Ok(path)
        } else {
            Err(ModelsError::Missing { what, path })
        }
    }

    /// Silero VAD ONNX model.
    pub fn vad(&self) -> Result<PathBuf, ModelsError> {
        self.file("the Silero VAD model", "vad/silero_vad.onnx")
    }

    /// ONNX Runtime shared library (`ORT_DYLIB_PATH` overrides it).
    pub fn onnxruntime(&self) -> Result<PathBuf, ModelsError> {
        if let Some(p) = std::env::var_os(ORT_DYLIB_ENV).filter(|p| !p.is_empty()) {
            let path = PathBuf::from(p);
            return if path.is_file() {
                Ok(path)
            } else {
                Err(ModelsError::Missing {
                    what: "the ONNX Runtime library named by ORT_DYLIB_PATH",
                    path,
                })
            };
        }
        self.file(
            "the ONNX Runtime library",
            "onnxruntime/libonnxruntime.so.1.31.1",
        )
    }

    /// Whisper tiny.en in ggml format.
    pub fn whisper(&self) -> Result<PathBuf, ModelsError> {
        self.file("the Whisper model", "whisper/ggml-tiny.en.bin")
    }

    /// The Piper voice: its ONNX model and its JSON config.
    pub fn piper_voice(&self) -> Result<(PathBuf, PathBuf), ModelsError> {
        Ok((
            self.file("the Piper voice", "piper/en_US-joe-medium.onnx")?,
            self.file("the Piper voice config", "piper/en_US-joe-medium.onnx.json")?,
        ))
    }

    /// Smart Turn v3.2, the end-of-turn model (from Pipecat's wheel).
    pub fn smart_turn(&self) -> Result<PathBuf, ModelsError> {
        self.file("the Smart Turn model", "turn/smart-turn-v3.2-cpu.onnx")
    }

    /// Gemma 3 270M GGUF.
    pub fn llm(&self) -> Result<PathBuf, ModelsError> {
        self.file("the Gemma GGUF model", "llm/gemma-3-270m-q4_k_m.gguf")
    }

    /// Gemma 3's chat template (what vLLM applies to `google/gemma-3-*-it`), for tests that
    /// check conversations against it: the installed GGUF is the base model and has none.
    pub fn gemma3_chat_template(&self) -> Result<PathBuf, ModelsError> {
        self.file(
            "the Gemma 3 chat template",
            "llm/gemma-3-chat-template.jinja",
        )
    }

    /// Gemma 3's tool-calling chat template (vLLM's pythonic one for Gemma 3, as a Gemma 3
    /// fine-tune ships it), for tests that render tool exchanges.
    pub fn gemma3_tool_chat_template(&self) -> Result<PathBuf, ModelsError> {
        self.file(
            "the Gemma 3 tool chat template",
            "llm/gemma-3-tool-chat-template.jinja",
        )
    }
}

/// The environment lives as long as the process: sessions created from it may outlive
/// any one engine.
static ORT_INIT: OnceLock<Result<ort::environment::Environment, String>> = OnceLock::new();

/// Loads ONNX Runtime from `library` the first time it is called in this process; later
/// calls return the first outcome (the library cannot be swapped once loaded).
pub fn init_onnxruntime(library: &Path) -> Result<(), ModelsError> {
    let outcome = ORT_INIT.get_or_init(|| {
        let builder = ort::init_from(library).map_err(|e| e.to_string())?;
        builder
            .with_name("grokcast")
            .build()
            .map_err(|e| e.to_string())
    });
    match outcome {
        Ok(_) => Ok(()),
        Err(reason) => Err(ModelsError::OnnxRuntime {
            path: library.to_path_buf(),
            reason: reason.clone(),
        }),
    }
}

/// The process's ONNX Runtime environment. When [`init_onnxruntime`] was not called, the
/// library is loaded from the discovered models directory (or `ORT_DYLIB_PATH`).
pub fn onnx_environment() -> Result<&'static ort::environment::Environment, ModelsError> {
    if ORT_INIT.get().is_none() {
        let library = ModelPaths::discover()?.onnxruntime()?;
        init_onnxruntime(&library)?;
    }
    match ORT_INIT.get() {
        Some(Ok(env)) => Ok(env),
        Some(Err(reason)) => Err(ModelsError::OnnxRuntime {
            path: PathBuf::from("(first load)"),
            reason: reason.clone(),
        }),
        None => Err(ModelsError::OnnxRuntime {
            path: PathBuf::new(),
            reason: "not initialised".to_owned(),
        }),
    }
}

/// Why a session over a small ONNX model could not be made.
#[derive(Debug)]
pub(crate) enum SessionError {
    /// ONNX Runtime could not be found or loaded.
    Runtime(ModelsError),
    /// ONNX Runtime refused the options or the model.
    Onnx {
        /// What was being done.
        context: &'static str,
        /// ONNX Runtime's error.
        source: ort::Error,
    },
}

/// A small ONNX model held in memory, with a pool of single-threaded sessions over it: the
/// model serves every call in the process, a call takes an idle session (or makes one) and
/// gives it back, so calls on different threads run side by side without sharing a session
/// (a run needs exclusive access). For Silero VAD and Smart Turn.
pub(crate) struct SessionPool {
    model: Vec<u8>,
    idle: std::sync::Mutex<Vec<ort::session::Session>>,
}

impl std::fmt::Debug for SessionPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionPool")
            .field("model_bytes", &self.model.len())
            .finish_non_exhaustive()
    }
}

impl SessionPool {
    /// Reads the model and makes one session, so a bad file fails here and not on first use:
    /// `Err(Err(_))` when the file cannot be read (the caller names the path), `Err(Ok(_))`
    /// when ONNX Runtime refuses it.
    pub(crate) fn load(path: &Path) -> Result<Self, Result<SessionError, std::io::Error>> {
        let model = std::fs::read(path).map_err(Err)?;
        let pool = Self {
            model,
            idle: std::sync::Mutex::new(Vec::new()),
        };
        let session = pool.new_session().map_err(Ok)?;
        pool.give_back(session);
        Ok(pool)
    }

    fn new_session(&self) -> Result<ort::session::Session, SessionError> {
        use ort::session::builder::GraphOptimizationLevel;
        let options = |source: ort::Error| SessionError::Onnx {
            context: "session options",
            source,
        };
        ort::session::Session::builder(onnx_environment().map_err(SessionError::Runtime)?)
            .map_err(options)?
            // One thread per run: many calls run in parallel, and each run is small.
            .with_intra_threads(1)
            .map_err(|e| options(e.into()))?
            .with_inter_threads(1)
            .map_err(|e| options(e.into()))?
            .with_optimization_level(GraphOptimizationLevel::Level3)
            .map_err(|e| options(e.into()))?
            .commit_from_memory(&self.model)
            .map_err(|source| SessionError::Onnx {
                context: "model load",
                source,
            })
    }

    /// An idle session, or a new one.
    pub(crate) fn take(&self) -> Result<ort::session::Session, SessionError> {
        let pooled = self.idle.lock().ok().and_then(|mut idle| idle.pop());
        match pooled {
            Some(s) => Ok(s),
            None => self.new_session(),
        }
    }

    /// Returns a session to the pool.
    pub(crate) fn give_back(&self, session: ort::session::Session) {
        if let Ok(mut idle) = self.idle.lock() {
            idle.push(session);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_model_names_the_file_and_the_install_script() {
        let paths = ModelPaths::at("/nonexistent-grokcast-models");
        let err = paths.whisper().unwrap_err().to_string();
        assert!(err.contains("whisper/ggml-tiny.en.bin"), "{err}");
        assert!(err.contains("scripts/install.sh"), "{err}");
        assert!(paths.piper_voice().is_err());
        assert!(paths.llm().is_err());
        assert!(paths.vad().is_err());
    }
}
