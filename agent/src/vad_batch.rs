//! Voice activity detection for every call of the process, batched.
//!
//! Each call hands its next 32 ms chunk (and its detector state) to one batcher task and
//! waits for the answer. The batcher takes whatever requests have queued by the time it
//! runs and detects speech for all of them in one ONNX Runtime run. Nothing waits to fill a
//! batch: with one call a batch is one chunk, exactly as before; with a hundred calls the
//! chunks that arrived during the previous run go together, and each call's chunk costs
//! about half of what a run of its own would (engines-bench, "VAD per call's chunk").

use std::sync::{Arc, OnceLock};

use grokcast_engines::vad::{CHUNK_SAMPLES, SileroVad, VadState};
use tokio::sync::{mpsc, oneshot};

/// Most chunks in one run: bounds the time the batcher holds its thread.
const MAX_BATCH: usize = 128;

/// One call's chunk, its state, and where the answer goes.
struct Request {
    state: VadState,
    chunk: Vec<f32>,
    reply: oneshot::Sender<Answer>,
}

/// The state and buffer come back with the probability so a call allocates nothing per chunk.
struct Answer {
    state: VadState,
    chunk: Vec<f32>,
    probability: Result<f32, String>,
}

/// Hands chunks to the batcher task, started on first use in the caller's runtime.
#[derive(Debug)]
pub struct VadBatcher {
    vad: Arc<SileroVad>,
    queue: OnceLock<mpsc::UnboundedSender<Request>>,
}

impl VadBatcher {
    /// A batcher over `vad`.
    pub fn new(vad: Arc<SileroVad>) -> Self {
        Self {
            vad,
            queue: OnceLock::new(),
        }
    }

    /// The model, for fresh per-call state.
    pub fn vad(&self) -> &SileroVad {
        &self.vad
    }

    /// Speech probability of `chunk` ([`CHUNK_SAMPLES`] samples at 16 kHz) for the call
    /// whose detector is `state`. `state` and `chunk` are lent to the batcher and restored
    /// before this returns, whatever the outcome.
    pub async fn speech_probability(
        &self,
        state: &mut VadState,
        chunk: &mut Vec<f32>,
    ) -> Result<f32, String> {
        if chunk.len() != CHUNK_SAMPLES {
            return Err(format!(
                "a VAD chunk must be {CHUNK_SAMPLES} samples, got {}",
                chunk.len()
            ));
        }
        let (reply, answer) = oneshot::channel();
        let request = Request {
            state: std::mem::take(state),
            chunk: std::mem::take(chunk),
            reply,
        };
        let queue = self.queue.get_or_init(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(run(self.vad.clone(), rx));
            tx
        });
        if let Err(refused) = queue.send(request) {
            let request = refused.0;
            *state = request.state;
            *chunk = request.chunk;
            return Err("the VAD batcher has stopped".into());
        }
        match answer.await {
            Ok(answer) => {
                *state = answer.state;
                *chunk = answer.chunk;
                answer.probability
            }
            Err(_) => Err("the VAD batcher dropped the chunk".into()),
        }
    }
}

/// The batcher: one run per wake-up over everything queued, answers in request order.
async fn run(vad: Arc<SileroVad>, mut queue: mpsc::UnboundedReceiver<Request>) {
    let mut batch: Vec<Request> = Vec::with_capacity(MAX_BATCH);
    let mut probabilities = vec![0.0; MAX_BATCH];
    while let Some(first) = queue.recv().await {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(request) => batch.push(request),
                Err(_) => break,
            }
        }
        let n = batch.len();
        let result = {
            let mut rows: Vec<(&mut VadState, &[f32])> = batch
                .iter_mut()
                .map(|r| (&mut r.state, r.chunk.as_slice()))
                .collect();
            vad.speech_probabilities(&mut rows, &mut probabilities[..n])
        };
        for (i, request) in batch.drain(..).enumerate() {
            let probability = match &result {
                Ok(()) => Ok(probabilities[i]),
                Err(e) => Err(e.to_string()),
            };
            // A call that hung up meanwhile no longer listens; nothing to do.
            let _ = request.reply.send(Answer {
                state: request.state,
                chunk: request.chunk,
                probability,
            });
        }
        // Let the calls that were answered run before the next batch is taken.
        tokio::task::yield_now().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vad() -> Option<Arc<SileroVad>> {
        let paths = grokcast_engines::models::ModelPaths::discover().ok()?;
        grokcast_engines::models::init_onnxruntime(&paths.onnxruntime().ok()?).ok()?;
        Some(Arc::new(SileroVad::load(&paths.vad().ok()?).ok()?))
    }

    /// Batched answers equal one-at-a-time answers, call by call, and a bad chunk is
    /// refused without touching the call's state or the other calls.
    #[tokio::test(flavor = "current_thread")]
    async fn batched_calls_get_the_answers_they_would_get_alone() {
        let Some(vad) = vad() else {
            assert!(
                std::env::var_os("GROKCAST_REQUIRE_MODELS").is_none(),
                "models are required: run scripts/install.sh"
            );
            return;
        };
        let batcher = Arc::new(VadBatcher::new(vad.clone()));
        // Three calls: a tone, noise and silence, so their states differ.
        let signal = |call: usize, i: usize| -> Vec<f32> {
            (0..CHUNK_SAMPLES)
                .map(|k| {
                    let t = (i * CHUNK_SAMPLES + k) as f32 / 16_000.0;
                    match call {
                        0 => 0.5 * (2.0 * std::f32::consts::PI * 220.0 * t).sin(),
                        1 => (((k * 7919 + i * 104_729) % 1000) as f32 / 1000.0 - 0.5) * 0.3,
                        _ => 0.0,
                    }
                })
                .collect()
        };
        let mut alone = Vec::new();
        for call in 0..3 {
            let mut state = vad.new_state();
            let mut answers = Vec::new();
            for i in 0..10 {
                answers.push(
                    vad.speech_probability(&mut state, &signal(call, i))
                        .unwrap(),
                );
            }
            alone.push(answers);
        }
        let tasks: Vec<_> = (0..3)
            .map(|call| {
                let batcher = batcher.clone();
                tokio::spawn(async move {
                    let mut state = batcher.vad().new_state();
                    let mut answers = Vec::new();
                    for i in 0..10 {
                        let mut chunk = signal(call, i);
                        answers.push(
                            batcher
                                .speech_probability(&mut state, &mut chunk)
                                .await
                                .unwrap(),
                        );
                    }
                    answers
                })
            })
            .collect();
        for (call, task) in tasks.into_iter().enumerate() {
            let batched = task.await.unwrap();
            for (a, b) in alone[call].iter().zip(&batched) {
                assert!((a - b).abs() < 1e-4, "call {call}: alone {a}, batched {b}");
            }
        }

        let mut state = vad.new_state();
        let mut short = vec![0.0; 100];
        let err = batcher
            .speech_probability(&mut state, &mut short)
            .await
            .unwrap_err();
        assert!(err.contains("512"), "{err}");
        assert_eq!(short.len(), 100, "the caller's buffer came back");
    }
}
