//! Silero VAD (v5/v6 ONNX) through ONNX Runtime.
//!
//! One [`SileroVad`] serves every call in the process: the weights are loaded once and
//! ONNX sessions are kept in a small pool, so calls on different threads run in
//! parallel without sharing a session (ONNX Runtime's `run` needs exclusive access).
//! Each call keeps its own [`VadState`]: the model's recurrent state plus the last 64
//! samples of the previous chunk, which Silero v5 and later expect in front of every
//! 512-sample chunk (without them it never detects speech).

use std::path::Path;

use ort::session::Session;
use ort::value::{Tensor, TensorRef};

use crate::models::{SessionError, SessionPool};

/// Samples per chunk at 16 kHz (32 ms).
pub const CHUNK_SAMPLES: usize = 512;
/// Sample rate the model runs at.
pub const SAMPLE_RATE: u32 = 16_000;
/// Samples of the previous chunk put in front of each chunk.
const CONTEXT_SAMPLES: usize = 64;
/// Width of each of the two recurrent state layers.
const HIDDEN: usize = 128;
/// Size of one call's recurrent state: `[2, 1, 128]`.
const STATE_LEN: usize = 2 * HIDDEN;

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
/// Plain arrays, so a state moves between a call and a batch without allocating.
#[derive(Debug, Clone)]
pub struct VadState {
    state: [f32; STATE_LEN],
    context: [f32; CONTEXT_SAMPLES],
}

impl Default for VadState {
    /// The state of a call that has heard nothing yet.
    fn default() -> Self {
        Self {
            state: [0.0; STATE_LEN],
            context: [0.0; CONTEXT_SAMPLES],
        }
    }
}

impl VadState {
    /// Forgets everything heard so far (e.g. after the agent's own playback).
    pub fn reset(&mut self) {
        self.state.fill(0.0);
        self.context = [0.0; CONTEXT_SAMPLES];
    }
}

/// The Silero voice activity detector, shareable by every call in the process.
#[derive(Debug)]
pub struct SileroVad {
    sessions: SessionPool,
}

impl From<SessionError> for VadError {
    fn from(e: SessionError) -> Self {
        match e {
            SessionError::Runtime(e) => VadError::Runtime(e),
            SessionError::Onnx { context, source } => VadError::Onnx { context, source },
        }
    }
}

impl SileroVad {
    /// Loads the model. ONNX Runtime is the one given to
    /// [`crate::models::init_onnxruntime`], else the one in the models directory.
    pub fn load(path: &Path) -> Result<Self, VadError> {
        let sessions = SessionPool::load(path).map_err(|e| match e {
            Ok(e) => e.into(),
            Err(source) => VadError::Read {
                path: path.display().to_string(),
                source,
            },
        })?;
        Ok(Self { sessions })
    }

    /// Fresh state for a new call.
    pub fn new_state(&self) -> VadState {
        VadState::default()
    }

    /// Probability (0..1) that `chunk` ([`CHUNK_SAMPLES`] samples of 16 kHz mono audio
    /// in -1..1) holds speech, given what this call's detector heard before.
    pub fn speech_probability(&self, state: &mut VadState, chunk: &[f32]) -> Result<f32, VadError> {
        let mut probability = [0.0];
        self.speech_probabilities(&mut [(state, chunk)], &mut probability)?;
        Ok(probability[0])
    }

    /// [`Self::speech_probability`] for many calls in one ONNX Runtime run: `batch` pairs
    /// each call's state with its next chunk, and `probabilities[i]` receives the answer for
    /// `batch[i]`. One run of a model this small costs little more than its fixed overhead,
    /// so an agent carrying many calls detects speech for all of them at a fraction of the
    /// CPU that one run per call would take. Nothing is changed when it fails.
    pub fn speech_probabilities(
        &self,
        batch: &mut [(&mut VadState, &[f32])],
        probabilities: &mut [f32],
    ) -> Result<(), VadError> {
        let n = batch.len();
        if n == 0 {
            return Ok(());
        }
        if probabilities.len() != n {
            return Err(VadError::Output(format!(
                "{n} chunks but room for {} probabilities",
                probabilities.len()
            )));
        }
        if let Some((_, chunk)) = batch.iter().find(|(_, c)| c.len() != CHUNK_SAMPLES) {
            return Err(VadError::ChunkSize(chunk.len()));
        }
        // Rows of [context, chunk]; the recurrent state is [2 layers, batch, 128].
        let mut input = Vec::with_capacity(n * (CONTEXT_SAMPLES + CHUNK_SAMPLES));
        let mut rnn = vec![0.0; STATE_LEN * n];
        for (i, (state, chunk)) in batch.iter().enumerate() {
            input.extend_from_slice(&state.context);
            input.extend_from_slice(chunk);
            for layer in 0..2 {
                let from = &state.state[layer * HIDDEN..(layer + 1) * HIDDEN];
                let at = (layer * n + i) * HIDDEN;
                rnn[at..at + HIDDEN].copy_from_slice(from);
            }
        }
        let mut session = self.sessions.take()?;
        let result = run_batch(&mut session, n, &input, &rnn, probabilities);
        self.sessions.give_back(session);
        let next = result?;
        for (i, (state, chunk)) in batch.iter_mut().enumerate() {
            for layer in 0..2 {
                let at = (layer * n + i) * HIDDEN;
                state.state[layer * HIDDEN..(layer + 1) * HIDDEN]
                    .copy_from_slice(&next[at..at + HIDDEN]);
            }
            state
                .context
                .copy_from_slice(&chunk[CHUNK_SAMPLES - CONTEXT_SAMPLES..]);
        }
        Ok(())
    }
}

/// One run over `n` rows; fills `probabilities` and returns the next state, `[2, n, 128]`.
fn run_batch(
    session: &mut Session,
    n: usize,
    input: &[f32],
    rnn: &[f32],
    probabilities: &mut [f32],
) -> Result<Vec<f32>, VadError> {
    let onnx = |context| move |source| VadError::Onnx { context, source };
    let input = TensorRef::from_array_view(([n, CONTEXT_SAMPLES + CHUNK_SAMPLES], input))
        .map_err(onnx("input tensor"))?;
    let rnn =
        TensorRef::from_array_view(([2usize, n, HIDDEN], rnn)).map_err(onnx("state tensor"))?;
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
    if prob.len() != n {
        return Err(VadError::Output(format!(
            "{} probabilities for {n} chunks",
            prob.len()
        )));
    }
    if next.len() != STATE_LEN * n {
        return Err(VadError::Output(format!(
            "state of {} values for {n} chunks",
            next.len()
        )));
    }
    probabilities.copy_from_slice(prob);
    Ok(next.to_vec())
}
