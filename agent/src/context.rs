//! What every call needs from the process it runs in: settings, model backends, the shared
//! VAD batcher, metrics, the cached phrases, the end-of-turn judge and the goodbye signal.
//!
//! The HTTP side ([`crate::server`]) owns the front door (signatures, stream tokens, call
//! slots, draining) and hands calls this context; the call loop ([`crate::call`]) sees nothing
//! else, so it runs the same behind any transport.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use grokcast_engines::vad::SileroVad;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::backend::Backends;
use crate::clips::Clips;
use crate::config::{AgentConfig, EndOfTurnModel};
use crate::metrics::{Metrics, Stage};

/// The longest wait for Twilio's REST API to hang up or transfer a call.
pub(crate) const REST_TIMEOUT: Duration = Duration::from_secs(5);

/// Where a turn's time went; carried with its first audio so the send task can measure the
/// turn's latency at the moment the first frame really goes out.
#[derive(Debug, Clone, Copy)]
pub struct TurnTimings {
    /// When the caller's voice ended: the last loud sample of the turn, on this process's
    /// clock (see `turn`'s module documentation).
    pub caller_stopped: Instant,
    /// The voice's end to the decision that the turn was over (the silence waited for, the
    /// resampler's delay and any end-of-turn model's judgement).
    pub endpointing: Duration,
    /// Speech to text.
    pub stt: Duration,
    /// LLM request to first token.
    pub llm_first_token: Duration,
    /// LLM request to the first complete clause (model time before TTS can start).
    pub llm_first_clause: Duration,
    /// First clause's TTS request to its first audio.
    pub tts_first_audio: Duration,
}

/// One turn's latency figures, as measured when its first frame was sent.
#[derive(Debug, Clone, Copy)]
pub struct TurnSample {
    /// Caller stops -> first agent frame sent.
    pub latency: Duration,
    /// Latency minus endpointing and model time: the agent's own overhead.
    pub agent: Duration,
    /// The parts.
    pub timings: TurnTimings,
}

/// What judges whether the caller has finished, at each pause.
#[derive(Clone)]
pub enum TurnJudge {
    /// Smart Turn v3.2 on the caller's audio, on this pod's CPU.
    Audio(Arc<grokcast_engines::smart_turn::SmartTurn>),
    /// The LLM pool on the caller's words ([`crate::backend::Llm::turn_end_probability`]):
    /// the pause ends the turn when the probability is at least `threshold`.
    Words {
        /// `turnTaking.llmEndOfTurnThreshold`.
        threshold: f32,
    },
}

/// Everything calls share, whatever carries their audio.
pub struct CallContext {
    /// Settings.
    pub config: AgentConfig,
    /// Model backends.
    pub backends: Backends,
    /// The VAD model (state is per call), run over every call's chunks in shared batches.
    pub vad_batch: crate::vad_batch::VadBatcher,
    /// Metrics.
    pub metrics: Metrics,
    /// Cancelled when live calls must say goodbye and end.
    pub goodbye: CancellationToken,
    /// The tools the LLM is offered (`None`: none are enabled).
    pub tools: Option<crate::tools::Tools>,
    /// Twilio's REST API with the agent's API key, where calls are hung up and transferred
    /// (`None`: no key; `end_call` then closes the stream).
    pub twilio_rest: Option<crate::twilio::rest::RestClient>,
    clips: OnceLock<Clips>,
    samples: Option<Mutex<Vec<TurnSample>>>,
    transcript: Option<Mutex<Vec<(String, String)>>>,
    turn_model: Option<Arc<grokcast_engines::smart_turn::SmartTurn>>,
    /// End-of-turn judgements running at once, over every call: one per core, so a burst of
    /// pauses queues instead of taking every core (and a model session each) at once.
    turn_judgements: Arc<tokio::sync::Semaphore>,
}

impl CallContext {
    /// The context for calls on these backends.
    pub fn new(
        config: AgentConfig,
        backends: Backends,
        vad: Arc<SileroVad>,
        metrics: Metrics,
    ) -> Self {
        let tools = crate::tools::Tools::new(&config.tools);
        let twilio_rest = config.twilio_api_key().map(|(account, key, secret)| {
            crate::twilio::rest::RestClient::new(
                &config.twilio_api_url,
                account,
                key,
                secret.clone(),
                REST_TIMEOUT,
            )
        });
        Self {
            config,
            backends,
            vad_batch: crate::vad_batch::VadBatcher::new(vad),
            metrics,
            goodbye: CancellationToken::new(),
            tools,
            twilio_rest,
            clips: OnceLock::new(),
            samples: None,
            transcript: None,
            turn_model: None,
            turn_judgements: Arc::new(tokio::sync::Semaphore::new(
                std::thread::available_parallelism().map_or(1, usize::from),
            )),
        }
    }

    /// Judges the caller's pauses with this end-of-turn model (from
    /// [`crate::startup::load_turn_model`]); without one, silence alone ends turns.
    pub fn with_turn_model(
        mut self,
        model: Option<Arc<grokcast_engines::smart_turn::SmartTurn>>,
    ) -> Self {
        self.turn_model = model;
        self
    }

    /// What judges the caller's pauses (`turnTaking.endOfTurnModel`); `None` when silence
    /// alone ends turns (no model configured, or Smart Turn not loaded).
    pub fn turn_judge(&self) -> Option<TurnJudge> {
        match self.config.turn_taking.end_of_turn_model {
            EndOfTurnModel::None => None,
            EndOfTurnModel::SmartTurn => self.turn_model.clone().map(TurnJudge::Audio),
            EndOfTurnModel::Llm => Some(TurnJudge::Words {
                threshold: self.config.turn_taking.llm_end_of_turn_threshold,
            }),
        }
    }

    /// Permits for end-of-turn judgements (one per core).
    pub fn turn_judgements(&self) -> Arc<tokio::sync::Semaphore> {
        self.turn_judgements.clone()
    }

    /// Each call's turn-taking thresholds: the configuration's, with pauses judged by the
    /// model only where one is loaded, and interruptions held for their words only where
    /// STT streams (nothing else gives words while the caller speaks).
    pub fn turn_taking(&self) -> crate::turn::TurnTaking {
        let mut t = self.config.turn_taking.turn_taking();
        if self.turn_judge().is_none() {
            t.semantic = None;
        }
        if self.backends.stt_stream.is_none() {
            t.interruption_words = None;
        }
        t
    }

    /// Keeps every turn's latency figures in memory (the benchmark reads them).
    pub fn record_turns(mut self) -> Self {
        self.samples = Some(Mutex::new(Vec::new()));
        self
    }

    /// Keeps who said what in memory (the local demo prints it).
    pub fn record_transcript(mut self) -> Self {
        self.transcript = Some(Mutex::new(Vec::new()));
        self
    }

    /// (speaker, text) pairs recorded so far, if recording.
    pub fn take_transcript(&self) -> Vec<(String, String)> {
        self.transcript
            .as_ref()
            .map(|s| std::mem::take(&mut *s.lock().unwrap_or_else(|p| p.into_inner())))
            .unwrap_or_default()
    }

    /// Notes what someone said: logged only when `logTranscripts` is on, kept only when
    /// recording.
    pub(crate) fn said(&self, who: &str, text: &str) {
        if self.config.log_transcripts {
            info!(speaker = who, text, "transcript");
        }
        if let Some(t) = &self.transcript {
            t.lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((who.to_string(), text.to_string()));
        }
    }

    /// Turn figures recorded so far, if recording.
    pub fn take_turn_samples(&self) -> Vec<TurnSample> {
        self.samples
            .as_ref()
            .map(|s| std::mem::take(&mut *s.lock().unwrap_or_else(|p| p.into_inner())))
            .unwrap_or_default()
    }

    /// The cached phrases, once synthesised.
    pub fn clips(&self) -> Option<Clips> {
        self.clips.get().cloned()
    }

    /// Whether the cached phrases are ready (a pod takes no calls before).
    pub fn clips_ready(&self) -> bool {
        self.clips.get().is_some()
    }

    /// Synthesises the fixed phrases, retrying until the TTS backend answers.
    pub async fn prepare_clips(&self) {
        let persona = &self.config.persona;
        let mut wait = Duration::from_millis(200);
        loop {
            match Clips::synthesize(
                &*self.backends.tts,
                &persona.greeting,
                &persona.apology,
                &persona.goodbye,
            )
            .await
            {
                Ok(clips) => {
                    let _ = self.clips.set(clips);
                    info!("greeting, apology and goodbye synthesised");
                    return;
                }
                Err(e) => {
                    warn!(error = %e, retry_in = ?wait, "cannot synthesise the fixed phrases yet");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// Records a turn whose first frame was just sent; returns its figures.
    pub(crate) fn observe_turn(&self, t: TurnTimings, sent: Instant) -> TurnSample {
        let latency = sent.saturating_duration_since(t.caller_stopped);
        let model = t.endpointing + t.stt + t.llm_first_clause + t.tts_first_audio;
        let agent = latency.saturating_sub(model);
        self.metrics.observe_turn(latency);
        self.metrics
            .stage(Stage::Endpointing, t.endpointing.as_secs_f64());
        self.metrics.stage(Stage::Stt, t.stt.as_secs_f64());
        self.metrics
            .stage(Stage::TtsFirstAudio, t.tts_first_audio.as_secs_f64());
        self.metrics.stage(Stage::Agent, agent.as_secs_f64());
        info!(
            latency_ms = latency.as_millis() as u64,
            endpointing_ms = t.endpointing.as_millis() as u64,
            stt_ms = t.stt.as_millis() as u64,
            llm_first_token_ms = t.llm_first_token.as_millis() as u64,
            llm_first_clause_ms = t.llm_first_clause.as_millis() as u64,
            tts_first_audio_ms = t.tts_first_audio.as_millis() as u64,
            agent_ms = agent.as_secs_f64() * 1000.0,
            "first audio of the turn sent"
        );
        let sample = TurnSample {
            latency,
            agent,
            timings: t,
        };
        if let Some(samples) = &self.samples {
            samples
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(sample);
        }
        sample
    }
}
