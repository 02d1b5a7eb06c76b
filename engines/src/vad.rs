//! Silero VAD (v5/v6 ONNX) through ONNX Runtime.
//!
//! One [`SileroVad`] serves every call in the process: the weights are loaded once and
//! ONNX sessions are kept in a small pool, so calls on different threads run in
//! parallel without sharing a session (ONNX Runtime's `run` needs exclusive access).
//! Each call keeps its own [`VadState`]: the model's recurrent state plus the last 64
//! samples of the previous chunk, which Silero v5 and later expect in front of every
//! 512-sample chunk (without them it never detects speech).

use std::path::Path;
use std::sync::Mutex;

use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::{Tensor, TensorRef};

/// Samples per chunk at 16 kHz (32 ms).
pub const CHUNK_SAMPLES: usize = 512;
/// Sample rate the model runs at.
pub const SAMPLE_RATE: u32 = 16_000;
/// Samples of the previous chunk put in front of each chunk.
const CONTEXT_SAMPLES: usize = 64;
/// Size of the recurrent state: `[2, 1, 128]`.
const STATE_LEN: usize = 2 * 128;

/// Why voice activity detection failed.
#[derive(Debug, thiserror::Error)]
pub enum VadError {
    /// The model file could not be read.
    #[error("cannot read the Silero VAD model {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// ONNX Runtime refused the model or a run failed.
    #[error("Silero VAD {context}: {source}")]
    Onnx {
        /// What was being done.
        context: &'static str,
        /// ONNX Runtime's error.
        source: ort::Error,
    },
    /// ONNX Runtime could not be found or loaded.
    #[error(transparent)]
    Runtime(#[from] crate::models::ModelsError),
    /// The chunk was not [`CHUNK_SAMPLES`] long.
    #[error("a VAD chunk must be {CHUNK_SAMPLES} samples at 16 kHz, got {0}")]
    ChunkSize(usize),
    /// The model returned something other than a probability.
    #[error("Silero VAD returned an unexpected output: {0}")]
    Output(String),
}

/// Per-call detector state; create one with [`SileroVad::new_state`] for each call.
#[derive(Debug, Clone)]
pub struct VadState {
    state: Vec<f32>,
    context: [f32; CONTEXT_SAMPLES],
    /// Input buffer reused across chunks: context followed by the chunk.
    input: Vec<f32>,
}

impl VadState {
    /// Forgets everything heard so far (e.g. after the agent's own playback).
    pub fn reset(&mut self) {
        self.state.fill(0.0);
        self.context = [0.0; CONTEXT_SAMPLES];
    }
}

/// The Silero voice activity detector, shareable by every call in the process.
pub struct SileroVad {
    model: Vec<u8>,
    idle: Mutex<Vec<Session>>,
}

impl std::fmt::Debug for SileroVad {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SileroVad")
            .field("model_bytes", &self.model.len())
            .finish_non_exhaustive()
    }
}

impl SileroVad {
    /// Loads the model. ONNX Runtime is the one given to
    /// [`crate::models::init_onnxruntime`], else the one in the models directory.
    pub fn load(path: &Path) -> Result<Self, VadError> {
        let model = std::fs::read(path).map_err(|source| VadError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let vad = Self {
            model,
            idle: Mutex::new(Vec::new()),
        };
        // Build one session now so a bad model fails at load, not on the first call.
        let session = vad.new_session()?;
        vad.give_back(session);
        Ok(vad)
    }

    fn new_session(&self) -> Result<Session, VadError> {
        let onnx = |context| move |source| VadError::Onnx { context, source };
        Session::builder(crate::models::onnx_environment()?)
            .map_err(onnx("session options"))?
            // One thread per run: many calls run in parallel, each chunk is tiny.
            .with_intra_threads(1)
            .map_err(|e| onnx("session options")(e.into()))?
            .with_inter_threads(1)
            .map_err(|e| onnx("session options")(e.into()))?
            .with_optimization_level(GraphOptimizationLevel::Level3)
            .map_err(|e| onnx("session options")(e.into()))?
            .commit_from_memory(&self.model)
            .map_err(onnx("model load"))
    }

    fn take_session(&self) -> Result<Session, VadError> {
        let pooled = self.idle.lock().ok().and_then(|mut idle| idle.pop());
        match pooled {
            Some(s) => Ok(s),
            None => self.new_session(),
        }
    }

    fn give_back(&self, session: Session) {
        if let Ok(mut idle) = self.idle.lock() {
            idle.push(session);
        }
    }

    /// Fresh state for a new call.
    pub fn new_state(&self) -> VadState {
        VadState {
            state: vec![0.0; STATE_LEN],
            context: [0.0; CONTEXT_SAMPLES],
            input: Vec::with_capacity(CONTEXT_SAMPLES + CHUNK_SAMPLES),
        }
    }

    /// Probability (0..1) that `chunk` ([`CHUNK_SAMPLES`] samples of 16 kHz mono audio
    /// in -1..1) holds speech, given what this call's detector heard before.
    pub fn speech_probability(&self, state: &mut VadState, chunk: &[f32]) -> Result<f32, VadError> {
        if chunk.len() != CHUNK_SAMPLES {
            return Err(VadError::ChunkSize(chunk.len()));
        }
        state.input.clear();
        state.input.extend_from_slice(&state.context);
        state.input.extend_from_slice(chunk);
        let mut session = self.take_session()?;
        let result = run_once(&mut session, state);
        self.give_back(session);
        let (probability, next_state) = result?;
        state.state.copy_from_slice(&next_state);
        state
            .context
            .copy_from_slice(&chunk[CHUNK_SAMPLES - CONTEXT_SAMPLES..]);
        Ok(probability)
    }
}

fn run_once(session: &mut Session, state: &VadState) -> Result<(f32, [f32; STATE_LEN]), VadError> {
    let onnx = |context| move |source| VadError::Onnx { context, source };
    let input = TensorRef::from_array_view((
        [1usize, CONTEXT_SAMPLES + CHUNK_SAMPLES],
        state.input.as_slice(),
    ))
    .map_err(onnx("input tensor"))?;
    let rnn = TensorRef::from_array_view(([2usize, 1, 128], state.state.as_slice()))
        .map_err(onnx("state tensor"))?;
    let sr = Tensor::from_array(((), vec![i64::from(SAMPLE_RATE)])).map_err(onnx("rate tensor"))?;
    let outputs = session
        .run(ort::inputs!["input" => input, "state" => rnn, "sr" => sr])
        .map_err(onnx("run"))?;
    let (_, prob) = outputs["output"]
        .try_extract_tensor::<f32>()
        .map_err(onnx("output"))?;
    let (_, next) = outputs["stateN"]
        .try_extract_tensor::<f32>()
        .map_err(onnx("state output"))?;
    let probability = prob
        .first()
        .copied()
        .ok_or_else(|| VadError::Output("empty probability".to_owned()))?;
    if next.len() != STATE_LEN {
        return Err(VadError::Output(format!("state of {} values", next.len())));
    }
    let mut next_state = [0.0; STATE_LEN];
    next_state.copy_from_slice(next);
    Ok((probability, next_state))
}
