//! Voice activity detection for every call of the process, batched.
//!
//! Each call hands its next 32 ms chunk (and its detector state) to one batcher thread and
//! waits for the answer (the run blocks, so it stays off the async threads). The batcher takes whatever requests have queued by the time it
//! runs and detects speech for all of them in one ONNX Runtime run. Nothing waits to fill a
//! batch: with one call a batch is one chunk, exactly as before; with a hundred calls the
//! chunks that arrived during the previous run go together, and each call's chunk costs
//! about half of what a run of its own would (engines-bench, "VAD per call's chunk").

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use grokcast_engines::vad::{CHUNK_SAMPLES, SileroVad, VadError, VadState};
use tokio::sync::{mpsc, oneshot};

/// Most chunks in one run: bounds the time one batch takes.
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

/// Hands chunks to the batcher thread, started on first use.
#[derive(Debug)]
pub struct VadBatcher {
    vad: Arc<SileroVad>,
    queue: OnceLock<mpsc::UnboundedSender<Request>>,
    /// Cleared when the batcher thread ends (a panic included): `/healthz` reports it, so
    /// the kubelet restarts a pod that can no longer hear its callers.
    alive: Arc<AtomicBool>,
}

impl VadBatcher {
    /// A batcher over `vad`.
    pub fn new(vad: Arc<SileroVad>) -> Self {
        Self {
            vad,
            queue: OnceLock::new(),
            alive: Arc::new(AtomicBool::new(true)),
        }
    }

    /// The model, for fresh per-call state.
    pub fn vad(&self) -> &SileroVad {
        &self.vad
    }

    /// False once the batcher thread has ended; true before it is first needed.
    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Relaxed)
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
        let queue = self.queue.get_or_init(|| self.start());
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

    /// Starts the batcher on a thread of its own: ONNX Runtime blocks for the length of a
    /// run, which must not hold up the async threads that carry the calls' audio.
    fn start(&self) -> mpsc::UnboundedSender<Request> {
        let (tx, rx) = mpsc::unbounded_channel();
        let vad = self.vad.clone();
        let alive = self.alive.clone();
        let spawned = std::thread::Builder::new()
            .name("grokcast-vad".into())
            .spawn(move || {
                // Cleared however the thread ends, a panic in a run included.
                let _alive = ClearOnDrop(alive);
                run(rx, |rows, probabilities| {
                    vad.speech_probabilities(rows, probabilities)
                });
            });
        if spawned.is_err() {
            // No thread: the receiver is gone, so every call gets "stopped", and health says so.
            self.alive.store(false, Ordering::Relaxed);
        }
        tx
    }
}

struct ClearOnDrop(Arc<AtomicBool>);

impl Drop for ClearOnDrop {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Relaxed);
    }
}

/// The batcher loop: one run per wake-up over everything queued, answers in request order.
/// When a batch fails, each of its chunks is run alone, so only the calls whose own chunk
/// fails get an error; the others get their answers as if nothing had happened.
fn run<F>(mut queue: mpsc::UnboundedReceiver<Request>, mut detect: F)
where
    F: FnMut(&mut [(&mut VadState, &[f32])], &mut [f32]) -> Result<(), VadError>,
{
    let mut batch: Vec<Request> = Vec::with_capacity(MAX_BATCH);
    let mut probabilities = vec![0.0; MAX_BATCH];
    while let Some(first) = queue.blocking_recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(request) => batch.push(request),
                Err(_) => break,
            }
        }
        let n = batch.len();
        let batched = {
            let mut rows: Vec<(&mut VadState, &[f32])> = batch
                .iter_mut()
                .map(|r| (&mut r.state, r.chunk.as_slice()))
                .collect();
            detect(&mut rows, &mut probabilities[..n])
        };
        for (i, mut request) in batch.drain(..).enumerate() {
            let probability = match &batched {
                Ok(()) => Ok(probabilities[i]),
                // A failed run changes no state: this chunk alone, from where it was.
                Err(_) => {
                    let mut one = [0.0];
                    detect(&mut [(&mut request.state, &request.chunk)], &mut one)
                        .map(|()| one[0])
                        .map_err(|e| e.to_string())
                }
            };
            // A call that hung up meanwhile no longer listens; nothing to do.
            let _ = request.reply.send(Answer {
                state: request.state,
                chunk: request.chunk,
                probability,
            });
        }
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

    /// Sends `chunks` (each call's first sample marks it) before the loop starts, so they
    /// form one batch, and returns each call's answer.
    fn batch_of(
        chunks: &[f32],
        detect: impl FnMut(&mut [(&mut VadState, &[f32])], &mut [f32]) -> Result<(), VadError>
        + Send
        + 'static,
    ) -> Vec<Result<f32, String>> {
        let (tx, rx) = mpsc::unbounded_channel();
        let answers: Vec<_> = chunks
            .iter()
            .map(|first| {
                let (reply, answer) = oneshot::channel();
                let mut chunk = vec![0.0; CHUNK_SAMPLES];
                chunk[0] = *first;
                tx.send(Request {
                    state: VadState::default(),
                    chunk,
                    reply,
                })
                .unwrap();
                answer
            })
            .collect();
        drop(tx);
        std::thread::spawn(move || run(rx, detect)).join().unwrap();
        answers
            .into_iter()
            .map(|a| {
                a.blocking_recv()
                    .map_or(Err("dropped".into()), |a| a.probability)
            })
            .collect()
    }

    #[test]
    fn a_failed_batch_fails_only_the_calls_whose_chunks_fail() {
        let runs = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = runs.clone();
        // A model that fails any run holding the poisoned chunk (first sample 9).
        let answers = batch_of(&[0.1, 9.0, 0.3], move |rows, probabilities| {
            seen.lock().unwrap().push(rows.len());
            if rows.iter().any(|(_, c)| c[0] == 9.0) {
                return Err(VadError::Output("poisoned".into()));
            }
            for (p, (_, c)) in probabilities.iter_mut().zip(rows.iter()) {
                *p = c[0];
            }
            Ok(())
        });
        assert_eq!(answers[0], Ok(0.1));
        assert!(answers[1].as_ref().unwrap_err().contains("poisoned"));
        assert_eq!(answers[2], Ok(0.3));
        // One batch of three, then each chunk alone.
        assert_eq!(*runs.lock().unwrap(), vec![3, 1, 1, 1]);
    }

    #[test]
    fn a_batcher_that_dies_says_so() {
        let alive = Arc::new(AtomicBool::new(true));
        let flag = alive.clone();
        let (tx, rx) = mpsc::unbounded_channel();
        let (reply, answer) = oneshot::channel();
        tx.send(Request {
            state: VadState::default(),
            chunk: vec![0.0; CHUNK_SAMPLES],
            reply,
        })
        .unwrap();
        let thread = std::thread::spawn(move || {
            let _alive = ClearOnDrop(flag);
            run(rx, |_, _| panic!("a run that crashes"));
        });
        assert!(thread.join().is_err(), "the batcher panicked");
        assert!(!alive.load(Ordering::Relaxed), "and is reported dead");
        assert!(
            answer.blocking_recv().is_err(),
            "the waiting call hears of it"
        );
        assert!(
            tx.send(Request {
                state: VadState::default(),
                chunk: vec![0.0; CHUNK_SAMPLES],
                reply: oneshot::channel().0,
            })
            .is_err(),
            "and later calls are refused, not queued forever"
        );
    }
}
