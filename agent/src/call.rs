//! One call: a receive task (caller audio -> VAD -> turn events), a conversation task (turns:
//! STT -> LLM -> clauses -> TTS -> frames) and a send task (paced frames, marks, clear), joined
//! by bounded channels and torn down together by one `select!`. The call reads and speaks
//! through a [`crate::transport`], so the same loop serves every way a caller connects.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use grokcast_engines::smart_turn::{self, SmartTurn};
use grokcast_engines::vad::{CHUNK_SAMPLES, VadState};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::backend::{BackendError, ChatMessage, ReplyPart, StreamingStt, SttStream, ToolCall};
use crate::clause::ClauseSplitter;
use crate::clips::FrameEncoder;
use crate::context::{CallContext, TurnJudge, TurnTimings};
use crate::conversation::Conversation;
use crate::metrics::{HELD_OUTCOMES, Outcome, Stage};
use crate::pacer::{FRAME_BYTES, FrameTiming, Pacer};
use crate::resample::StreamResampler;
use crate::tools::Action;
use crate::traces::TurnTrace;
use crate::transport::{FromCaller, Note, Received, ToCaller, TransportError};
use crate::turn::{
    Chunk, END_OF_TURN_PROBABILITY, Endpointer, QuietMeter, TurnEvent, has_words,
    words_besides_backchannels,
};

/// Longest wait for the goodbye to be played before the socket is closed anyway.
const GOODBYE_TIMEOUT: Duration = Duration::from_secs(10);
/// VAD chunk duration.
const VAD_CHUNK: Duration = Duration::from_millis(32);

/// What the receive task tells the conversation.
#[derive(Debug)]
enum CallEvent {
    EndOfTurn {
        audio: Vec<f32>,
        caller_stopped: Instant,
        endpointing: Duration,
        /// The announced pause the turn ended in, if any.
        pause: Option<u64>,
        /// The utterance's transcription stream, when STT streams.
        stream: Option<SttStream>,
        /// Speech over the agent that ended before its words were known: a turn only if
        /// its transcript has words (see [`TurnEvent::EndOfTurn`]).
        overheard: bool,
    },
    /// The caller paused long enough that the turn may be over: start a speculative reply
    /// on what they said so far.
    Speculate {
        pause: u64,
        audio: Vec<f32>,
    },
    /// The caller spoke again after the pause a speculative reply started in.
    PauseOver,
    /// The caller interrupted the agent; `held` names why speech held for its words did
    /// (a [`HELD_OUTCOMES`] label), `None` for speech alone.
    BargeIn {
        held: Option<&'static str>,
    },
    Dtmf(char),
    Mark(String),
    Stop,
}

/// What the conversation gives the send task, in playback order.
enum Playout {
    Audio {
        generation: u64,
        frames: Bytes,
        timings: Option<TurnTimings>,
        /// The trace of the turn the audio belongs to (none for the fixed phrases).
        trace: Option<Arc<TurnTrace>>,
    },
    Mark {
        generation: u64,
        name: String,
    },
}

/// State the three tasks share.
struct Shared {
    /// Bumped on barge-in; audio of older generations is dropped unsent.
    generation: AtomicU64,
    /// Microseconds since `epoch` until which the caller hears agent audio.
    speaking_until_us: AtomicU64,
    epoch: Instant,
    /// How far the send task is into the clause it is sending.
    progress: Mutex<Progress>,
    /// The conversation as the LLM would get it now, kept by the conversation task for the
    /// end-of-turn judgement that reads the caller's words after it.
    conversation: Mutex<Conversation>,
    /// This call's own settings.
    settings: CallSettings,
    /// Where notes go, when the transport shows them (the send task passes them on).
    notes: Option<mpsc::UnboundedSender<Note>>,
    /// Where a turn hands the conversation a call action (hang up, transfer) to carry out
    /// once the words before it have played.
    actions: mpsc::UnboundedSender<PendingAction>,
    /// A hang-up or transfer is being asked of Twilio, which may stop the stream before it
    /// answers: the call's outcome is then the conversation's to say.
    acting: std::sync::atomic::AtomicBool,
    /// The caller is in the middle of speaking (the receive task's endpointer says so): a
    /// hang-up or transfer waits until they stop.
    caller_speaking: std::sync::atomic::AtomicBool,
}

/// A call action a turn decided on: carried out once the caller's side acknowledges `mark`
/// (everything before it has played), unless the caller speaks first.
#[derive(Debug, Clone)]
struct PendingAction {
    generation: u64,
    mark: String,
    action: Action,
    /// The audio the turn queued before the mark: the mark cannot come back sooner.
    queued: Duration,
}

/// A hang-up or transfer the conversation is waiting to carry out.
struct Waiting {
    pending: PendingAction,
    /// Its words have played (its mark came back, or the wait for it ran out).
    played: bool,
    /// When to look again: the latest the mark is waited for, or, once the words have
    /// played, when to check again whether the caller has stopped speaking.
    check_at: Instant,
}

/// How often a played action checks whether the caller has stopped speaking.
const ACTION_RECHECK: Duration = Duration::from_millis(200);

/// The most rounds of tool calls one turn makes; the round after them offers no tools, so
/// the model must speak.
const MAX_TOOL_ROUNDS: usize = 3;

/// What one call may set for itself, over the VoiceAgent's settings: a phone call takes the
/// VoiceAgent's; a playground session may try another prompt or voice.
#[derive(Debug, Clone, Default)]
pub struct CallSettings {
    /// Replaces `persona.systemPrompt` for this call.
    pub system_prompt: Option<String>,
    /// Asks the TTS pool for this voice instead of `tts.voice` (the fixed phrases keep theirs).
    pub voice: Option<String>,
    /// The phone call's SID, where Twilio's REST API can hang it up or transfer it (`None`
    /// for a playground session).
    pub call_sid: Option<String>,
}

impl CallSettings {
    /// The system prompt this call's LLM gets: its own, else the VoiceAgent's.
    fn system_prompt<'a>(&'a self, state: &'a CallContext) -> &'a str {
        self.system_prompt
            .as_deref()
            .unwrap_or(&state.config.persona.system_prompt)
    }
}

/// Where the send task is: the `segment`-th clause (counted by marks) of `generation`'s
/// audio, `sent` of it sent so far.
#[derive(Debug, Default, Clone, Copy)]
struct Progress {
    generation: u64,
    segment: usize,
    sent: Duration,
}

/// How much of one clause the caller heard when the agent was stopped.
#[derive(Debug, Clone, Copy)]
struct Heard {
    generation: u64,
    segment: usize,
    heard: Duration,
}

impl Shared {
    /// What the caller has heard of the clause being sent: what was sent less what is still
    /// buffered at the caller's side, unplayed.
    fn heard(&self, now: Instant) -> Heard {
        let progress = *self.progress();
        let now_us = now.saturating_duration_since(self.epoch).as_micros() as u64;
        let buffered = Duration::from_micros(
            self.speaking_until_us
                .load(Ordering::Relaxed)
                .saturating_sub(now_us),
        );
        Heard {
            generation: progress.generation,
            segment: progress.segment,
            heard: progress.sent.saturating_sub(buffered),
        }
    }

    fn progress(&self) -> std::sync::MutexGuard<'_, Progress> {
        self.progress.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn conversation(&self) -> std::sync::MutexGuard<'_, Conversation> {
        self.conversation.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Passes a note to the transport, if it shows them.
    fn note(&self, note: Note) {
        if let Some(notes) = &self.notes {
            let _ = notes.send(note);
        }
    }

    fn agent_speaking(&self, now: Instant) -> bool {
        let now_us = now.saturating_duration_since(self.epoch).as_micros() as u64;
        self.speaking_until_us.load(Ordering::Relaxed) > now_us
    }
}

/// Why a call ended badly.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The transport failed or the peer broke its protocol.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// Voice activity detection failed.
    #[error("voice activity detection: {0}")]
    Vad(String),
}

/// Runs one call over a transport whose handshake is done; returns how it ended. The caller
/// of this function names the call in its tracing span.
pub async fn run(
    state: Arc<CallContext>,
    settings: CallSettings,
    from_caller: impl FromCaller,
    to_caller: impl ToCaller,
) -> Outcome {
    let (notes, notes_rx) = match to_caller.wants_notes() {
        true => {
            let (tx, rx) = mpsc::unbounded_channel();
            (Some(tx), Some(rx))
        }
        false => (None, None),
    };
    let (actions, actions_rx) = mpsc::unbounded_channel();
    let shared = Arc::new(Shared {
        generation: AtomicU64::new(0),
        speaking_until_us: AtomicU64::new(0),
        epoch: Instant::now(),
        progress: Mutex::new(Progress::default()),
        conversation: Mutex::new(Conversation::new(settings.system_prompt(&state))),
        settings,
        notes,
        actions,
        acting: std::sync::atomic::AtomicBool::new(false),
        caller_speaking: std::sync::atomic::AtomicBool::new(false),
    });
    let (events_tx, events_rx) = mpsc::channel(64);
    let (playout_tx, playout_rx) = mpsc::channel(64);
    let (clear_tx, clear_rx) = mpsc::channel(4);

    // Receiving and sending run as their own tasks (in parallel on a multi-thread runtime);
    // the conversation runs here. Dropping the guards aborts whichever is still running.
    let mut receiver = TaskGuard(tokio::spawn(
        receive(state.clone(), from_caller, events_tx, shared.clone()).in_current_span(),
    ));
    let mut sender = TaskGuard(tokio::spawn(
        send(
            state.clone(),
            to_caller,
            playout_rx,
            clear_rx,
            notes_rx,
            shared.clone(),
        )
        .in_current_span(),
    ));
    let mut conversation = std::pin::pin!(converse(
        state.clone(),
        events_rx,
        actions_rx,
        playout_tx,
        clear_tx,
        shared.clone(),
    ));
    let mut conversation_over = false;
    let timeout = Duration::from_secs(state.config.session_timeout_seconds);
    crate::traces::describe_call(&state.config);

    let outcome = tokio::select! {
        result = &mut receiver.0 => receive_outcome(result),
        outcome = &mut conversation => {
            conversation_over = true;
            match outcome {
                Some(outcome) => outcome,
                // The receive task ended and closed the event channel: its result says why.
                None => receive_outcome((&mut receiver.0).await),
            }
        },
        result = &mut sender.0 => {
            match result {
                Ok(Err(e)) => warn!(error = %e, "sending to the caller failed"),
                Err(e) => warn!(error = %e, "send task failed"),
                Ok(Ok(())) => {}
            }
            Outcome::Disconnected
        }
        _ = tokio::time::sleep(timeout) => Outcome::Timeout,
    };
    // Twilio stops the stream as soon as a hang-up or transfer is asked of it, often before
    // it answers: the conversation, still carrying the action out, says whether the call
    // ended by the agent's doing or the caller's (a transfer Twilio refused).
    let outcome = match outcome {
        Outcome::Completed | Outcome::Disconnected
            if !conversation_over && shared.acting.load(Ordering::Relaxed) =>
        {
            let wait = crate::context::REST_TIMEOUT + Duration::from_secs(1);
            match tokio::time::timeout(wait, &mut conversation).await {
                Ok(Some(ended)) => ended,
                _ => outcome,
            }
        }
        outcome => outcome,
    };
    crate::traces::call_ended(outcome);
    outcome
}

fn receive_outcome(result: Result<Result<(), CallError>, tokio::task::JoinError>) -> Outcome {
    match result {
        Ok(Ok(())) => Outcome::Completed,
        Ok(Err(CallError::Transport(e @ TransportError::Protocol(_)))) => {
            warn!(error = %e, "call ended by a protocol error");
            Outcome::ProtocolError
        }
        Ok(Err(e)) => {
            warn!(error = %e, "call failed");
            Outcome::Disconnected
        }
        Err(e) => {
            warn!(error = %e, "receive task failed");
            Outcome::Disconnected
        }
    }
}

/// Aborts a call's task when the call ends, however it ends.
struct TaskGuard<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for TaskGuard<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The length of `n` samples at 16 kHz.
fn samples_16k(n: usize) -> Duration {
    grokcast_engines::audio::duration(n, 16_000)
}

/// Reads the caller's side: audio through the resampler and VAD into turn events.
async fn receive(
    state: Arc<CallContext>,
    mut from_caller: impl FromCaller,
    events: mpsc::Sender<CallEvent>,
    shared: Arc<Shared>,
) -> Result<(), CallError> {
    let resample_err = |e: crate::resample::ResampleError| CallError::Vad(e.to_string());
    let mut upsampler =
        StreamResampler::new(from_caller.sample_rate(), 16_000).map_err(resample_err)?;
    // Samples the upsampler holds back: the newest chunk ends this much before the audio
    // that has arrived.
    let upsampler_delay = upsampler.output_delay();
    // One message's audio at the transport's rate, reused.
    let mut decoded: Vec<f32> = Vec::with_capacity(1024);
    // The end-of-turn model's answers; the detector keeps the sender, so this never closes.
    let (verdicts, mut verdicts_rx) = mpsc::channel(4);
    let mut detector = Detector {
        vad_state: state.vad_batch.vad().new_state(),
        endpointer: Endpointer::new(state.turn_taking()),
        meter: QuietMeter::new(),
        heard_until: Instant::now(),
        incoming: Vec::with_capacity(4 * CHUNK_SAMPLES),
        chunk: vec![0.0; CHUNK_SAMPLES],
        previous: vec![0.0; CHUNK_SAMPLES],
        utterance: Vec::new(),
        pending: Vec::with_capacity(4),
        judge: state.turn_judge(),
        state: state.clone(),
        shared: shared.clone(),
        judgements: state.turn_judgements(),
        judging: tokio::task::JoinSet::new(),
        plain_silence: state.turn_taking().end_of_turn_silence,
        speculative: state.config.turn_taking.speculative_replies,
        speculating: None,
        verdicts,
        stt: state.backends.stt_stream.clone(),
        stream: None,
        streamed: 0,
    };
    loop {
        decoded.clear();
        let received = tokio::select! {
            received = from_caller.next(&mut decoded) => match received? {
                Some(received) => received,
                None => break,
            },
            Some(verdict) = verdicts_rx.recv() => {
                detector.judged(&state, verdict, Instant::now());
                for event in detector.pending.drain(..) {
                    if events.send(event).await.is_err() {
                        return Ok(());
                    }
                }
                continue;
            }
        };
        match received {
            Received::Audio => {
                let now = Instant::now();
                let speaking = shared.agent_speaking(now);
                upsampler
                    .push(&decoded, &mut |samples| {
                        detector.incoming.extend_from_slice(samples)
                    })
                    .map_err(resample_err)?;
                while detector.next_chunk() {
                    // The chunk ends before what has arrived by what is still queued behind it
                    // and what the upsampler holds back.
                    let behind = samples_16k(detector.incoming.len() + upsampler_delay);
                    let heard_until = now.checked_sub(behind).unwrap_or(now);
                    // Batched with the other calls' chunks (vad_batch): one ONNX run for all.
                    let probability = state
                        .vad_batch
                        .speech_probability(&mut detector.vad_state, &mut detector.chunk)
                        .await
                        .map_err(CallError::Vad)?;
                    detector.decide(probability, speaking, heard_until, now);
                }
                shared
                    .caller_speaking
                    .store(detector.endpointer.in_speech(), Ordering::Relaxed);
                for event in detector.pending.drain(..) {
                    if events.send(event).await.is_err() {
                        return Ok(());
                    }
                }
            }
            Received::Mark(name) => {
                if events.send(CallEvent::Mark(name)).await.is_err() {
                    return Ok(());
                }
            }
            Received::Dtmf(digit) => {
                if events.send(CallEvent::Dtmf(digit)).await.is_err() {
                    return Ok(());
                }
            }
            Received::Stop => {
                let _ = events.send(CallEvent::Stop).await;
                return Ok(());
            }
        }
    }
    Ok(())
}

/// The end-of-turn model's answer about one of the caller's pauses.
struct Verdict {
    pause: u64,
    judgement: Judgement,
    took: Duration,
}

/// What became of one question to the end-of-turn model.
enum Judgement {
    /// The model's probability that the utterance is complete.
    Probability(f32),
    /// The model failed.
    Failed(String),
    /// Every permit stayed taken until the plain end-of-turn silence would have ended the
    /// turn: the pause is judged by silence alone.
    Busy,
}

/// VAD, endpointing and the caller's utterance for one call.
struct Detector {
    vad_state: VadState,
    endpointer: Endpointer,
    /// Finds where the voice really ended inside the chunks the VAD still calls speech.
    meter: QuietMeter,
    /// When the audio of the last chunk decided ended (arrival time, less what was queued).
    heard_until: Instant,
    /// 16 kHz samples not yet in a chunk.
    incoming: Vec<f32>,
    chunk: Vec<f32>,
    previous: Vec<f32>,
    utterance: Vec<f32>,
    pending: Vec<CallEvent>,
    /// Judges pauses when the endpointer asks ([`TurnEvent::Judge`], [`TurnEvent::Pause`]).
    judge: Option<TurnJudge>,
    /// For a judgement of the caller's words: the backends, and the conversation so far.
    state: Arc<CallContext>,
    shared: Arc<Shared>,
    /// The process's permits for judgements, shared by every call.
    judgements: Arc<tokio::sync::Semaphore>,
    /// Judgements under way, aborted with the call.
    judging: tokio::task::JoinSet<()>,
    /// The plain end-of-turn silence: a question waits for a permit only until the pause
    /// reaches it, so an overloaded pod degrades to silence-only turn-taking instead of
    /// making callers wait for the maximum silence.
    plain_silence: Duration,
    /// Whether announced pauses start speculative replies.
    speculative: bool,
    /// The announced pause a speculative reply was started in, while it lasts.
    speculating: Option<u64>,
    verdicts: mpsc::Sender<Verdict>,
    /// Streaming STT, if the agent has it: each utterance streams while it is spoken.
    stt: Option<Arc<dyn StreamingStt>>,
    /// The utterance's stream, and how much of the utterance it has been sent.
    stream: Option<SttStream>,
    streamed: usize,
}

impl Detector {
    /// Moves the next whole chunk from `incoming` into `chunk`, if there is one.
    fn next_chunk(&mut self) -> bool {
        if self.incoming.len() < CHUNK_SAMPLES {
            return false;
        }
        self.chunk.clear();
        self.chunk
            .extend_from_slice(&self.incoming[..CHUNK_SAMPLES]);
        self.incoming.drain(..CHUNK_SAMPLES);
        true
    }

    /// Endpointing on the VAD's verdict for `chunk`, whose audio ended at `heard_until`:
    /// starts, ends or drops the utterance, or asks the end-of-turn model about a pause.
    fn decide(
        &mut self,
        probability: f32,
        agent_speaking: bool,
        heard_until: Instant,
        now: Instant,
    ) {
        let quiet = self.meter.quiet_tail(&self.chunk, probability);
        let chunk = Chunk {
            probability,
            length: VAD_CHUNK,
            quiet_tail: samples_16k(quiet),
        };
        self.heard_until = heard_until;
        let was_holding = self.endpointer.holding();
        let event = self.endpointer.push(chunk, agent_speaking);
        let (mut ask, mut announced) = (None, None);
        match event {
            Some(TurnEvent::SpeechStarted) => {
                self.utterance.clear();
                // Keep the chunk before the onset: word starts are quiet.
                self.utterance.extend_from_slice(&self.previous);
                self.stream = self.stt.as_ref().map(|stt| stt.open());
                self.streamed = 0;
            }
            Some(TurnEvent::BargeIn) => self.pending.push(CallEvent::BargeIn {
                held: was_holding.then_some(HELD_OUTCOMES[1]),
            }),
            Some(TurnEvent::EndOfTurn {
                silence,
                pause,
                overheard,
                ..
            }) => {
                self.utterance.extend_from_slice(&self.chunk);
                self.end_turn(silence, pause, overheard, now);
            }
            Some(TurnEvent::Judge(pause)) => ask = Some(pause),
            Some(TurnEvent::Pause { pause, ask: now }) => {
                ask = now.then_some(pause);
                announced = Some(pause);
            }
            Some(TurnEvent::Discarded) => {
                self.utterance.clear();
                self.utterance.shrink_to(16_000);
                // Too short to be a turn: its stream is cancelled unheard.
                self.stream = None;
                self.streamed = 0;
            }
            None => {}
        }
        if self.endpointer.in_speech() {
            self.utterance.extend_from_slice(&self.chunk);
        }
        self.feed_stream();
        // Speech over the agent held for its words interrupts once the stream has them.
        if self.endpointer.holding()
            && let Some(stream) = &self.stream
            && let Some(TurnEvent::BargeIn) = self.endpointer.words(&stream.interim())
        {
            self.pending.push(CallEvent::BargeIn {
                held: Some(HELD_OUTCOMES[0]),
            });
        }
        if let Some(pause) = ask {
            match self.judge.clone() {
                Some(TurnJudge::Audio(model)) => self.ask(pause, model),
                Some(TurnJudge::Words { .. }) => self.ask_words(pause),
                None => {}
            }
        }
        if let Some(pause) = announced {
            if self.speculative {
                self.speculating = Some(pause);
                self.pending.push(CallEvent::Speculate {
                    pause,
                    audio: self.utterance.clone(),
                });
            }
        } else if let Some(pause) = self.speculating
            && self.endpointer.pause_id() != pause
        {
            // The pause is over. A turn that ended in it takes the speculative reply (the
            // conversation decides); speech that went on makes it stale.
            self.speculating = None;
            if !matches!(event, Some(TurnEvent::EndOfTurn { pause: Some(p), .. }) if p == pause) {
                self.pending.push(CallEvent::PauseOver);
            }
        }
        std::mem::swap(&mut self.previous, &mut self.chunk);
    }

    /// Sends the stream what the utterance gained since it was last fed.
    fn feed_stream(&mut self) {
        if let Some(stream) = self.stream.as_mut() {
            stream.push(&self.utterance[self.streamed.min(self.utterance.len())..]);
        }
        self.streamed = self.utterance.len();
    }

    /// Hands the utterance so far, cut where the voice ended and followed by the same pause
    /// every time ([`smart_turn::heard_at_pause`]), to the end-of-turn model on a blocking
    /// thread; the answer comes back through `verdicts` while the call goes on listening. A
    /// model that cannot answer, or cannot get a permit in time, ends the turn as if it said
    /// complete.
    fn ask(&mut self, pause: u64, model: Arc<SmartTurn>) {
        // Asked as the pause is noticed or announced: the utterance already holds the silent
        // chunks since the voice ended.
        let audio = smart_turn::heard_at_pause(&self.utterance, self.endpointer.silence());
        let permits = self.judgements.clone();
        // Until the plain silence would end the turn, counted from this pause's silence so far
        // (the question is asked as the pause is noticed, usually short of the minimum).
        let permit_wait = self.plain_silence.saturating_sub(self.endpointer.silence());
        // No timeout of its own: the maximum silence ends the turn whatever the model does,
        // and a late answer about a finished pause is ignored. Waiting for a permit counts in
        // the judgement's time: it is time the caller waits too.
        let judging = async move {
            match tokio::time::timeout(permit_wait, permits.acquire_owned()).await {
                Err(_) => Judgement::Busy,
                Ok(Err(_)) => Judgement::Failed("the end-of-turn permits are closed".into()),
                Ok(Ok(permit)) => {
                    let judged = tokio::task::spawn_blocking(move || {
                        let _permit = permit;
                        model.completion_probability(&audio)
                    });
                    match judged.await {
                        Ok(Ok(p)) => Judgement::Probability(p),
                        Ok(Err(e)) => Judgement::Failed(e.to_string()),
                        Err(e) => Judgement::Failed(format!("the end-of-turn task failed: {e}")),
                    }
                }
            }
        };
        self.spawn_judgement(pause, judging);
    }

    /// Runs a judgement owned by the call: dropping the detector (the call ended) aborts it,
    /// so no model request outlives the call.
    fn spawn_judgement(
        &mut self,
        pause: u64,
        judging: impl std::future::Future<Output = Judgement> + Send + 'static,
    ) {
        while self.judging.try_join_next().is_some() {}
        self.judging
            .spawn(deliver(self.verdicts.clone(), pause, judging).in_current_span());
    }

    /// Asks the LLM pool whether the caller's words so far end their turn, after the
    /// conversation: the words are the streaming transcript once it has heard the voice up to
    /// the pause (or, without a stream or when it dies, a transcription of the utterance). The
    /// answer comes back through `verdicts`; the maximum silence ends the turn meanwhile
    /// whatever it says, and a model that cannot answer ends it as if it said complete.
    fn ask_words(&mut self, pause: u64) {
        let Some(semantic) = self.endpointer.semantic() else {
            return;
        };
        // Asked as the pause is noticed or announced: the voice ended that long ago.
        let silence = self.endpointer.silence();
        let voice_end = samples_16k(self.utterance.len()).saturating_sub(silence);
        let transcript = self.stream.as_ref().map(SttStream::follow);
        let audio = self.utterance.clone();
        let (state, shared) = (self.state.clone(), self.shared.clone());
        let patience = semantic.max_silence.saturating_sub(silence);
        let judging = async move {
            let judging = judge_words(&state, &shared, transcript, voice_end, audio);
            // Past the maximum silence the turn is over whatever the answer: stop asking.
            tokio::time::timeout(patience, judging)
                .await
                .unwrap_or(Judgement::Busy)
        };
        self.spawn_judgement(pause, judging);
    }

    /// The model's answer: a complete utterance ends the turn now; an incomplete one waits.
    fn judged(&mut self, state: &CallContext, verdict: Verdict, now: Instant) {
        let metrics = &state.metrics;
        let complete = match verdict.judgement {
            Judgement::Probability(p) => {
                metrics
                    .end_of_turn_prediction_seconds
                    .observe(verdict.took.as_secs_f64());
                let threshold = match &self.judge {
                    Some(TurnJudge::Words { threshold }) => *threshold,
                    _ => END_OF_TURN_PROBABILITY,
                };
                let complete = p >= threshold;
                let label = if complete { "complete" } else { "incomplete" };
                metrics
                    .end_of_turn_predictions
                    .with_label_values(&[label])
                    .inc();
                debug!(probability = p, complete, "end-of-turn model");
                complete
            }
            Judgement::Failed(error) => {
                metrics
                    .end_of_turn_predictions
                    .with_label_values(&["error"])
                    .inc();
                warn!(%error, "end-of-turn model failed; the pause ends the turn");
                true
            }
            Judgement::Busy => {
                metrics
                    .end_of_turn_predictions
                    .with_label_values(&["busy"])
                    .inc();
                debug!("end-of-turn model busy; the pause ends the turn on silence alone");
                true
            }
        };
        if let Some(TurnEvent::EndOfTurn {
            silence,
            pause,
            overheard,
            ..
        }) = self.endpointer.verdict(verdict.pause, complete)
        {
            self.speculating = None;
            self.end_turn(silence, pause, overheard, now);
        }
    }

    /// Hands the utterance to the conversation, decided at `now`: the caller's voice ended
    /// `silence` before the end of the last chunk heard, in announced pause `pause`;
    /// `overheard` when it was speech over the agent still held for its words.
    fn end_turn(&mut self, silence: Duration, pause: Option<u64>, overheard: bool, now: Instant) {
        let caller_stopped = self
            .heard_until
            .checked_sub(silence)
            .unwrap_or(self.heard_until);
        self.feed_stream();
        self.streamed = 0;
        self.pending.push(CallEvent::EndOfTurn {
            audio: std::mem::take(&mut self.utterance),
            caller_stopped,
            endpointing: now.saturating_duration_since(caller_stopped),
            pause,
            stream: self.stream.take(),
            overheard,
        });
    }
}

/// Hands the call `judging`'s answer about `pause`, timed from now.
async fn deliver(
    verdicts: mpsc::Sender<Verdict>,
    pause: u64,
    judging: impl std::future::Future<Output = Judgement>,
) {
    let started = std::time::Instant::now();
    let judgement = judging.await;
    // A closed channel means the call ended: nobody is waiting for the answer.
    let _ = verdicts
        .send(Verdict {
            pause,
            judgement,
            took: started.elapsed(),
        })
        .await;
}

/// How far short of the voice's end (as the agent heard it) a streaming transcript may stop
/// and still count as having heard it: the STT server finds the end of the voice by its own
/// measure, in frames of its own (20 ms in `grokcast-serve`'s). No more: the model is asked
/// as soon as a pause is noticed, when the latest interim is often one decoded while the
/// last word was still being said ("I'd like a pizza" for "I'd like a pizza with"), and
/// judging that would end the turn on words the caller went past.
pub const HEARD_SLACK: Duration = Duration::from_millis(20);

/// The LLM pool's judgement of the caller's words so far (see [`Detector::ask_words`]).
async fn judge_words(
    state: &CallContext,
    shared: &Shared,
    transcript: Option<tokio::sync::watch::Receiver<crate::backend::Interim>>,
    voice_end: Duration,
    audio: Vec<f32>,
) -> Judgement {
    // The words as heard, and without a last word the recogniser was unsure of.
    let mut words: Option<(String, Option<String>)> = None;
    if let Some(mut interim) = transcript {
        // The interim that heard the voice up to the pause. A stream that ends or dies first,
        // or a server that does not say how much it heard (results without
        // `audio_processed`), leaves the words to a transcription of the utterance.
        words = loop {
            {
                let now = interim.borrow_and_update();
                if now.heard + HEARD_SLACK >= voice_end {
                    break Some((now.text.clone(), now.sure.clone()));
                }
                if now.heard.is_zero() && !now.text.is_empty() {
                    break None;
                }
            }
            if interim.changed().await.is_err() {
                break None;
            }
        };
    }
    let (words, sure) = match words {
        Some(words) => words,
        None => match state.backends.stt.transcribe(audio).await {
            Ok(words) => (words, None),
            Err(error) => return Judgement::Failed(error.to_string()),
        },
    };
    let judge = |words: String| async move {
        // No words (a noise) leave nothing to wait for; the turn's transcript decides the rest.
        let Some(messages) = shared.conversation().judging(&words) else {
            return Ok(1.0);
        };
        state.backends.llm.turn_end_probability(messages).await
    };
    // A recogniser that hears a sentence cut at a pause tends to finish it with a word it
    // guesses ("Can I book a table for it?"), while a short last word may be real and unsure
    // ("...my appointment to"): the words end the turn only if they do both with and without
    // it, so neither a guess nor a dropped word makes an unfinished sentence look finished.
    let judged = match sure.filter(|sure| *sure != words) {
        Some(sure) => {
            let (all, sure) = futures::future::join(judge(words), judge(sure)).await;
            all.and_then(|all| sure.map(|sure| all.min(sure)))
        }
        None => judge(words).await,
    };
    match judged {
        Ok(p) => Judgement::Probability(p),
        Err(error) => Judgement::Failed(error.to_string()),
    }
}

/// Sends paced frames, marks and clears to the caller.
async fn send(
    state: Arc<CallContext>,
    mut to_caller: impl ToCaller,
    mut playout: mpsc::Receiver<Playout>,
    mut clears: mpsc::Receiver<()>,
    mut notes: Option<mpsc::UnboundedReceiver<Note>>,
    shared: Arc<Shared>,
) -> Result<(), TransportError> {
    let mut pacer = Pacer::new(Duration::from_millis(state.config.playback_lead_ms));
    let mut current: Option<Sending> = None;
    loop {
        let next_at = pacer.next_send_at(Instant::now());
        tokio::select! {
            biased;
            clear = clears.recv() => {
                if clear.is_none() { return Ok(()); }
                current = None;
                pacer.clear();
                shared.speaking_until_us.store(0, Ordering::Relaxed);
                to_caller.clear().await?;
            }
            _ = tokio::time::sleep_until(next_at), if current.is_some() => {
                let Some(Sending { generation, frames, offset, timings, trace }) = current.as_mut() else { continue };
                let generation = *generation;
                if generation < shared.generation.load(Ordering::Relaxed) {
                    current = None;
                    continue;
                }
                let end = (*offset + FRAME_BYTES).min(frames.len());
                to_caller.media(&frames[*offset..end]).await?;
                {
                    let mut progress = shared.progress();
                    if progress.generation != generation {
                        *progress = Progress { generation, ..Progress::default() };
                    }
                    // 8 kHz mu-law: one byte a sample.
                    progress.sent += grokcast_engines::audio::duration(end - *offset, 8_000);
                }
                let now = Instant::now();
                if pacer.frame_sent(now) == FrameTiming::Late {
                    state.metrics.underruns.inc();
                }
                let playing_until = pacer.playing_until(now);
                if let Some(until) = playing_until {
                    let us = until.saturating_duration_since(shared.epoch).as_micros() as u64;
                    shared.speaking_until_us.store(us, Ordering::Relaxed);
                }
                if let Some(t) = timings.take() {
                    let sample = state.observe_turn(t, now);
                    if let Some(trace) = trace {
                        trace.first_audio(sample.timings);
                    }
                    shared.note(Note::Turn(sample));
                }
                if let Some(trace) = trace {
                    trace.playing(now, playing_until);
                }
                *offset = end;
                if *offset >= frames.len() {
                    current = None;
                }
            }
            item = playout.recv(), if current.is_none() => match item {
                None => return Ok(()),
                Some(Playout::Audio { generation, frames, timings, trace }) => {
                    if generation >= shared.generation.load(Ordering::Relaxed) && !frames.is_empty() {
                        current = Some(Sending { generation, frames, offset: 0, timings, trace });
                    }
                }
                Some(Playout::Mark { generation, name }) => {
                    if generation >= shared.generation.load(Ordering::Relaxed) {
                        pacer.end_segment();
                        {
                            let mut progress = shared.progress();
                            let segment = if progress.generation == generation { progress.segment + 1 } else { 1 };
                            *progress = Progress { generation, segment, sent: Duration::ZERO };
                        }
                        to_caller.mark(&name).await?;
                    }
                }
            },
            // Last: a note waits for audio that is due, never the other way round.
            Some(note) = async {
                match notes.as_mut() {
                    Some(notes) => notes.recv().await,
                    None => std::future::pending().await,
                }
            } => {
                to_caller.note(note).await?;
            }
        }
    }
}

/// Audio the send task is part way through.
struct Sending {
    generation: u64,
    frames: Bytes,
    /// Bytes of `frames` already sent.
    offset: usize,
    /// The timings of its turn's first frame, taken when that frame goes out.
    timings: Option<TurnTimings>,
    trace: Option<Arc<TurnTrace>>,
}

/// What one turn has queued for playback, shared with the conversation so a barge-in can
/// work out what the caller heard.
#[derive(Debug, Default)]
struct TurnRecord {
    user: Option<String>,
    /// The playback generation its clauses were queued in.
    generation: u64,
    /// (mark name, clause text, its audio's length) in playback order; key tones have no
    /// text.
    segments: Vec<(String, String, Duration)>,
    /// Tool calls made, each after the segments queued before it.
    exchanges: Vec<Exchange>,
}

/// Tool calls a turn made and their results.
#[derive(Debug, Clone)]
struct Exchange {
    /// How many of the turn's segments were queued before the calls.
    after: usize,
    calls: Vec<ToolCall>,
    results: Vec<ChatMessage>,
}

/// The conversation: history, turns, barge-in, DTMF, goodbye.
async fn converse(
    state: Arc<CallContext>,
    mut events: mpsc::Receiver<CallEvent>,
    mut actions: mpsc::UnboundedReceiver<PendingAction>,
    playout: mpsc::Sender<Playout>,
    clears: mpsc::Sender<()>,
    shared: Arc<Shared>,
) -> Option<Outcome> {
    let mut history = Conversation::new(shared.settings.system_prompt(&state));
    let mut acked: HashSet<String> = HashSet::new();
    let mut turn_number = 0u64;
    // The turn at work. Its guard aborts it when the call ends however it ends (this future
    // dropped by the session's select), so no LLM or TTS request outlives the call.
    let mut running: Option<RunningTurn> = None;
    // A reply begun in a pause that may end the turn, waiting for the turn to end there.
    let mut speculation: Option<Speculation> = None;
    // The reply the last barge-in cut, in case the interruption had no words.
    let mut interrupted: Option<Resume> = None;
    let resume_window =
        Duration::from_millis(state.config.turn_taking.false_interruption_resume_ms);
    // Speech over the agent that ended before its words were known is transcribed while the
    // agent talks on; the transcript comes back here and decides whether it was a turn.
    let (overheard_tx, mut overheard_rx) = mpsc::channel::<Overheard>(1);
    // Held only to abort the task when it is replaced, moot, or the call ends.
    let mut _listening: Option<TaskGuard<()>> = None;
    // A hang-up or transfer waiting for its words to play and for the caller to be quiet.
    let mut pending: Option<Waiting> = None;

    let clips = state.clips();
    if let Some(clips) = clips.as_ref().filter(|c| !c.greeting.is_empty()) {
        let _ = playout
            .send(Playout::Audio {
                generation: 0,
                frames: clips.greeting.clone(),
                timings: None,
                trace: None,
            })
            .await;
        let _ = playout
            .send(Playout::Mark {
                generation: 0,
                name: "greeting".into(),
            })
            .await;
        history.agent(&state.config.persona.greeting);
        state.said("agent", &state.config.persona.greeting);
        shared.note(Note::Agent(state.config.persona.greeting.clone()));
    }

    let goodbye = state.goodbye.clone();
    let judged_by_words = matches!(state.turn_judge(), Some(TurnJudge::Words { .. }));
    loop {
        // What the LLM's end-of-turn judgement reads the caller's next words after: the
        // history with whatever of the current reply the caller has heard whole. Only that
        // judgement reads it, so agents without it skip the copy on every event.
        if judged_by_words {
            let mut preview = history.clone();
            preview_turn(&running, &mut preview, &acked, None);
            *shared.conversation() = preview;
        }
        tokio::select! {
            event = events.recv() => {
                // Closed: the receive task ended, and its result says why.
                let event = event?;
                match event {
                    CallEvent::Mark(name) => {
                        if let Some(w) = pending.as_mut().filter(|w| w.pending.mark == name) {
                            w.played = true;
                            w.check_at = Instant::now();
                        }
                        acked.insert(name);
                    }
                    CallEvent::Stop => {
                        finish_turn(&mut running, &mut history, &acked, None);
                        return Some(Outcome::Completed);
                    }
                    CallEvent::BargeIn { held } => {
                        state.metrics.barge_ins.inc();
                        shared.note(Note::BargeIn);
                        if let Some(outcome) = held {
                            state.metrics.held_interruptions.with_label_values(&[outcome]).inc();
                        }
                        // A hang-up or transfer the caller talked over waits with what they
                        // cut: it is carried out if they had nothing to say after all.
                        let action = pending.take().map(|w| w.pending.action);
                        interrupted = resumable(&running, &acked, resume_window, action);
                        if let Some(turn) = &running {
                            turn.trace.ended(true);
                        }
                        let heard = shared.heard(Instant::now());
                        interrupt(&shared, &clears).await;
                        finish_turn(&mut running, &mut history, &acked, Some(heard));
                        debug!("barge-in");
                    }
                    CallEvent::Speculate { pause, audio } => {
                        missed(&state, speculation.take());
                        // What the history will be if the turn ends in this pause, while the
                        // current turn (if any) goes on playing.
                        let mut preview = history.clone();
                        preview_turn(&running, &mut preview, &acked, Some(shared.heard(Instant::now())));
                        let (commit, committed) = tokio::sync::oneshot::channel();
                        let input = TurnInput::Speech {
                            audio,
                            stream: None,
                            caller_stopped: Instant::now(),
                            endpointing: Duration::ZERO,
                            commit: Some(committed),
                            resume: interrupted.clone(),
                        };
                        let turn = start_turn(&state, &shared, &playout, &preview, input, turn_number + 1);
                        speculation = Some(Speculation { pause, turn, commit, history: preview });
                    }
                    CallEvent::PauseOver => missed(&state, speculation.take()),
                    CallEvent::EndOfTurn { audio, caller_stopped, endpointing, stream, overheard: true, .. } => {
                        // The agent talks on while the words are found.
                        let (state, overheard) = (state.clone(), overheard_tx.clone());
                        let task = async move {
                            let started = Instant::now();
                            let transcript = transcribe(&state, audio, stream).await;
                            let _ = overheard.send(Overheard { transcript, caller_stopped, endpointing, stt: started.elapsed() }).await;
                        };
                        _listening = Some(TaskGuard(tokio::spawn(task.instrument(tracing::Span::current()))));
                    }
                    CallEvent::EndOfTurn { audio, caller_stopped, endpointing, pause, stream, overheard: false } => {
                        _listening = None;
                        // The caller moved on: whatever the agent still had queued is stale.
                        let heard = shared.heard(Instant::now());
                        interrupt(&shared, &clears).await;
                        pending = None;
                        finish_turn(&mut running, &mut history, &acked, Some(heard));
                        turn_number += 1;
                        let generation = shared.generation.load(Ordering::Relaxed);
                        match speculation.take() {
                            // Ended in the pause the reply began in, on the same history: the
                            // reply heard every word, so it is the turn's.
                            Some(s) if pause == Some(s.pause) && s.history == history => {
                                state.metrics.speculative_replies.with_label_values(&["hit"]).inc();
                                // The speculative reply carries its own copy of what to resume.
                                interrupted = None;
                                s.turn.trace.taken(caller_stopped, endpointing);
                                let _ = s.commit.send(Commit { generation, caller_stopped, endpointing, at: Instant::now() });
                                running = Some(s.turn);
                            }
                            stale => {
                                missed(&state, stale);
                                let input = TurnInput::Speech { audio, stream, caller_stopped, endpointing, commit: None, resume: interrupted.take() };
                                running = Some(start_turn(&state, &shared, &playout, &history, input, turn_number));
                            }
                        }
                    }
                    CallEvent::Dtmf(digit) => {
                        _listening = None;
                        missed(&state, speculation.take());
                        interrupted = None;
                        let heard = shared.heard(Instant::now());
                        interrupt(&shared, &clears).await;
                        pending = None;
                        finish_turn(&mut running, &mut history, &acked, Some(heard));
                        turn_number += 1;
                        let input = TurnInput::Text { text: format!("[caller pressed {digit}]"), at: Instant::now() };
                        running = Some(start_turn(&state, &shared, &playout, &history, input, turn_number));
                    }
                }
            }
            Some(o) = overheard_rx.recv() => {
                _listening = None;
                let now = Instant::now();
                let turn_taking = &state.config.turn_taking;
                let text = o.transcript.unwrap_or_else(|error| {
                    state.metrics.backend_errors.with_label_values(&[error.stage().label()]).inc();
                    warn!(%error, "could not transcribe the speech over the agent; the agent talks on");
                    String::new()
                });
                let words = words_besides_backchannels(&text, &turn_taking.backchannels);
                let said = has_words(&text);
                // While the agent talks, a backchannel is listening; once it has finished,
                // even "yeah" answers it.
                let talking = shared.agent_speaking(now)
                    || running.as_ref().is_some_and(|turn| !turn.task.0.is_finished());
                if !said || (talking && words < turn_taking.min_interruption_words as usize) {
                    state.metrics.held_interruptions.with_label_values(&[HELD_OUTCOMES[3]]).inc();
                    debug!(words, "speech over the agent without words to interrupt; talking on");
                } else {
                    state.metrics.held_interruptions.with_label_values(&[HELD_OUTCOMES[2]]).inc();
                    missed(&state, speculation.take());
                    interrupted = None;
                    let heard = shared.heard(now);
                    interrupt(&shared, &clears).await;
                    pending = None;
                    finish_turn(&mut running, &mut history, &acked, Some(heard));
                    turn_number += 1;
                    let input = TurnInput::Heard { text, caller_stopped: o.caller_stopped, endpointing: o.endpointing, stt: o.stt };
                    running = Some(start_turn(&state, &shared, &playout, &history, input, turn_number));
                }
            }
            Some(p) = actions.recv() => {
                // Only if the caller has not moved on since the turn decided it. Its mark
                // may be back already (nothing was queued before it).
                if p.generation == shared.generation.load(Ordering::Relaxed) {
                    let played = acked.contains(&p.mark);
                    let check_at = match played {
                        true => Instant::now(),
                        false => Instant::now() + p.queued + GOODBYE_TIMEOUT,
                    };
                    pending = Some(Waiting { pending: p, played, check_at });
                }
            }
            _ = async {
                match &pending {
                    Some(w) => tokio::time::sleep_until(w.check_at).await,
                    None => std::future::pending().await,
                }
            } => {
                // Played (or its mark never came back: act anyway), but never over the
                // caller: speech still going, or being transcribed, may be "wait!".
                let busy = shared.caller_speaking.load(Ordering::Relaxed) || _listening.is_some();
                match pending.as_mut() {
                    Some(w) if busy => {
                        w.played = true;
                        w.check_at = Instant::now() + ACTION_RECHECK;
                    }
                    Some(_) => {
                        if let Some(w) = pending.take() {
                            finish_turn(&mut running, &mut history, &acked, None);
                            if let Some(outcome) = carry_out(&state, &shared, w.pending.action, &mut history, &playout).await {
                                return Some(outcome);
                            }
                        }
                    }
                    None => {}
                }
            }
            _ = goodbye.cancelled() => {
                interrupt(&shared, &clears).await;
                finish_turn(&mut running, &mut history, &acked, None);
                let generation = shared.generation.load(Ordering::Relaxed);
                if let Some(clips) = &clips {
                    let _ = playout.send(Playout::Audio { generation, frames: clips.goodbye.clone(), timings: None, trace: None }).await;
                    let _ = playout.send(Playout::Mark { generation, name: "goodbye".into() }).await;
                    let heard = async {
                        while let Some(event) = events.recv().await {
                            if matches!(&event, CallEvent::Mark(n) if n == "goodbye") || matches!(event, CallEvent::Stop) {
                                return;
                            }
                        }
                    };
                    let _ = tokio::time::timeout(GOODBYE_TIMEOUT, heard).await;
                }
                return Some(Outcome::Drained);
            }
        }
    }
}

/// Carries out a hang-up or transfer whose words have played; `Some` ends the call with
/// that outcome. A hang-up goes through Twilio's REST API when the agent has a key and the
/// call a SID, and ends the call anyway when that fails (closing a `<Connect><Stream>` hangs
/// up too). A transfer that fails is counted, told to the model as a caller-side note, and
/// apologised for; the call goes on.
async fn carry_out(
    state: &CallContext,
    shared: &Shared,
    action: Action,
    history: &mut Conversation,
    playout: &mpsc::Sender<Playout>,
) -> Option<Outcome> {
    use crate::twilio::rest::CallUpdate;
    let line = state
        .twilio_rest
        .as_ref()
        .zip(shared.settings.call_sid.as_deref());
    let failed = |tool: &str| {
        state
            .metrics
            .tool_calls
            .with_label_values(&[tool, crate::tools::ToolOutcome::Failed.label()])
            .inc();
    };
    let acting = |on: bool| shared.acting.store(on, Ordering::Relaxed);
    match action {
        Action::EndCall => {
            acting(true);
            if let Some((rest, call_sid)) = line
                && let Err(error) = rest.update_call(call_sid, &CallUpdate::Complete).await
            {
                failed(crate::tools::END_CALL);
                warn!(
                    error = error.kind(),
                    "Twilio's REST API did not hang up; closing the stream ends the call"
                );
            }
            info!("the agent ended the call");
            Some(Outcome::EndedByAgent)
        }
        Action::Transfer { to, .. } => {
            acting(true);
            let result = match line {
                Some((rest, call_sid)) => {
                    let dial = crate::twilio::twiml::dial(&to);
                    rest.update_call(call_sid, &CallUpdate::Twiml(dial))
                        .await
                        .map_err(|e| e.kind())
                }
                None => Err("no phone line to transfer".to_owned()),
            };
            match result {
                Ok(_) => {
                    info!("the agent transferred the call");
                    Some(Outcome::Transferred)
                }
                Err(error) => {
                    acting(false);
                    failed(crate::tools::TRANSFER_CALL);
                    warn!(%error, "the transfer failed; the call goes on");
                    history.caller("[the transfer failed]");
                    if let Some(clips) = state.clips() {
                        let generation = shared.generation.load(Ordering::Relaxed);
                        let _ = playout
                            .send(Playout::Audio {
                                generation,
                                frames: clips.apology.clone(),
                                timings: None,
                                trace: None,
                            })
                            .await;
                    }
                    None
                }
            }
        }
        Action::Dtmf(_) => None,
    }
}

/// Stops everything queued or playing: a newer generation (older audio is dropped unsent)
/// and `clear` to the caller's side. Each turn converts its own audio, so there is no shared resampler
/// to reset.
async fn interrupt(shared: &Shared, clears: &mpsc::Sender<()>) {
    shared.generation.fetch_add(1, Ordering::Relaxed);
    shared.speaking_until_us.store(0, Ordering::Relaxed);
    let _ = clears.send(()).await;
}

/// Ends the running turn (aborting it if still at work) and writes it into the history with
/// what the caller actually heard: the clauses whose marks the caller's side acknowledged, then, when
/// the agent was stopped mid-clause (`heard`), the words of that clause the caller heard.
fn finish_turn(
    running: &mut Option<RunningTurn>,
    history: &mut Conversation,
    acked: &HashSet<String>,
    heard: Option<Heard>,
) {
    let Some(RunningTurn {
        task,
        record,
        trace,
    }) = running.take()
    else {
        return;
    };
    drop(task);
    trace.ended(false);
    let record = std::mem::take(&mut *record.lock().unwrap_or_else(|p| p.into_inner()));
    record_turn(&record, history, acked, heard);
}

/// What [`finish_turn`] would write if the running turn ended now, leaving it running.
fn preview_turn(
    running: &Option<RunningTurn>,
    history: &mut Conversation,
    acked: &HashSet<String>,
    heard: Option<Heard>,
) {
    if let Some(RunningTurn { record, .. }) = running {
        let record = record.lock().unwrap_or_else(|p| p.into_inner());
        record_turn(&record, history, acked, heard);
    }
}

fn record_turn(
    record: &TurnRecord,
    history: &mut Conversation,
    acked: &HashSet<String>,
    heard: Option<Heard>,
) {
    if let Some(user) = &record.user {
        history.caller(user);
    }
    let whole = record
        .segments
        .iter()
        .take_while(|(mark, _, _)| acked.contains(mark))
        .count();
    // What the caller heard of each segment: the whole clause, part of the one playing (in
    // proportion to the audio heard), nothing of the rest.
    let part = heard
        .filter(|h| h.generation == record.generation && h.segment == whole)
        .and_then(|h| {
            let (_, text, length) = record.segments.get(whole)?;
            heard_words(text, h.heard, *length)
        });
    let mut said: Vec<String> = Vec::new();
    for at in 0..=record.segments.len() {
        // Tool calls ran whether or not the caller heard the words before them.
        for exchange in record.exchanges.iter().filter(|e| e.after == at) {
            history.tools(
                &said.join(" "),
                exchange.calls.clone(),
                exchange.results.clone(),
            );
            said.clear();
        }
        let Some((_, text, _)) = record.segments.get(at) else {
            break;
        };
        let text = match at.cmp(&whole) {
            std::cmp::Ordering::Less => Some(text.clone()),
            std::cmp::Ordering::Equal => part.clone(),
            std::cmp::Ordering::Greater => None,
        };
        said.extend(text.filter(|t| !t.is_empty()));
    }
    history.agent(&said.join(" "));
}

/// The words of `text` (spoken in `length`) a caller heard in its first `heard`, taking the
/// words as evenly spaced; a clause cut short ends with an ellipsis, so the model knows it
/// was interrupted there.
fn heard_words(text: &str, heard: Duration, length: Duration) -> Option<String> {
    let words: Vec<&str> = text.split_whitespace().collect();
    if words.is_empty() || length.is_zero() {
        return None;
    }
    if heard >= length {
        return Some(words.join(" "));
    }
    let n = (words.len() as f64 * heard.as_secs_f64() / length.as_secs_f64()).floor() as usize;
    (n > 0).then(|| format!("{}…", words[..n].join(" ")))
}

/// A reply the caller interrupted: the clause they cut and those queued after it, spoken
/// again if the interruption turns out to have no words (or only backchannels) within
/// `window` of its end.
#[derive(Debug, Clone)]
struct Resume {
    clauses: Vec<String>,
    window: Duration,
    /// The hang-up or transfer that was waiting for those clauses, handed over again once
    /// they have been said.
    action: Option<Action>,
}

/// What the running turn would resume from if the caller has just cut it: the first clause
/// they had not heard to its end, and every clause queued after it.
fn resumable(
    running: &Option<RunningTurn>,
    acked: &HashSet<String>,
    window: Duration,
    action: Option<Action>,
) -> Option<Resume> {
    let clauses: Vec<String> = match running {
        Some(turn) => {
            let record = turn.record.lock().unwrap_or_else(|p| p.into_inner());
            record
                .segments
                .iter()
                .skip_while(|(mark, _, _)| acked.contains(mark))
                // Key tones are not said again.
                .filter(|(_, text, _)| !text.is_empty())
                .map(|(_, text, _)| text.clone())
                .collect()
        }
        None => Vec::new(),
    };
    (!window.is_zero() && (!clauses.is_empty() || action.is_some())).then_some(Resume {
        clauses,
        window,
        action,
    })
}

/// A reply started in an announced pause, before the turn was over: it transcribes and asks
/// the LLM, and plays nothing until `commit` says the turn ended in that pause.
struct Speculation {
    pause: u64,
    turn: RunningTurn,
    commit: tokio::sync::oneshot::Sender<Commit>,
    /// The history it was asked with; the turn must end on the same.
    history: Conversation,
}

/// The end of the turn a speculative reply was waiting for.
#[derive(Debug, Clone, Copy)]
struct Commit {
    /// The playback generation after the turn's end (older audio is dropped).
    generation: u64,
    caller_stopped: Instant,
    endpointing: Duration,
    /// When the turn ended: the caller waits only for what is left after this.
    at: Instant,
}

/// Counts and drops a speculative reply that the turn did not take (the task is aborted).
fn missed(state: &CallContext, speculation: Option<Speculation>) {
    if speculation.is_some() {
        state
            .metrics
            .speculative_replies
            .with_label_values(&["miss"])
            .inc();
    }
}

/// The transcript of speech over the agent that ended while held for its words.
struct Overheard {
    transcript: Result<String, BackendError>,
    caller_stopped: Instant,
    endpointing: Duration,
    /// How long transcribing it took after it ended.
    stt: Duration,
}

enum TurnInput {
    Speech {
        audio: Vec<f32>,
        /// Its transcription stream, when STT streams; `audio` is the batch fallback.
        stream: Option<SttStream>,
        caller_stopped: Instant,
        endpointing: Duration,
        /// For a speculative reply: when (and whether) the turn is its to play.
        commit: Option<tokio::sync::oneshot::Receiver<Commit>>,
        /// The reply this utterance interrupted, to resume if it has no words.
        resume: Option<Resume>,
    },
    /// Speech whose transcript is already known (overheard speech that had words).
    Heard {
        text: String,
        caller_stopped: Instant,
        endpointing: Duration,
        stt: Duration,
    },
    Text {
        text: String,
        at: Instant,
    },
}

impl TurnInput {
    /// Whether it is a reply started before the turn ended.
    fn speculative(&self) -> bool {
        matches!(
            self,
            TurnInput::Speech {
                commit: Some(_),
                ..
            }
        )
    }

    /// Where the caller's voice ended and the endpointing after it, when already known (a
    /// speculative reply learns them when the turn takes it).
    fn began(&self) -> Option<(Instant, Duration)> {
        match self {
            TurnInput::Speech {
                commit: Some(_), ..
            } => None,
            TurnInput::Speech {
                caller_stopped,
                endpointing,
                ..
            }
            | TurnInput::Heard {
                caller_stopped,
                endpointing,
                ..
            } => Some((*caller_stopped, *endpointing)),
            TurnInput::Text { at, .. } => Some((*at, Duration::ZERO)),
        }
    }
}

/// The utterance's transcript, within the stage timeout: the stream's final transcript
/// when there is a stream, and the batch request when there is none or it failed (it
/// died, fell behind, or refused the audio), so a broken stream costs time, not words.
async fn transcribe(
    state: &CallContext,
    audio: Vec<f32>,
    stream: Option<SttStream>,
) -> Result<String, BackendError> {
    let timeout = state.config.stt.stage.timeout();
    let deadline = tokio::time::Instant::now() + timeout;
    let timed_out = || BackendError::Timeout {
        stage: crate::backend::StageName::Stt,
        after: timeout,
    };
    if let Some(stream) = stream {
        match tokio::time::timeout_at(deadline, stream.finish()).await {
            Err(_) => return Err(timed_out()),
            Ok(Ok(text)) => return Ok(text),
            Ok(Err(error)) => {
                state.metrics.stt_stream_fallbacks.inc();
                warn!(%error, "the transcription stream failed; transcribing the turn in one request");
            }
        }
    }
    let stt = &state.backends.stt;
    tokio::time::timeout_at(deadline, stt.transcribe(audio))
        .await
        .unwrap_or_else(|_| Err(timed_out()))
}

/// A turn at work.
struct RunningTurn {
    /// Its task (aborted when this is dropped).
    task: TaskGuard<()>,
    /// What it has queued for playback.
    record: Arc<Mutex<TurnRecord>>,
    /// Its trace, sent once the turn is over.
    trace: Arc<TurnTrace>,
}

fn start_turn(
    state: &Arc<CallContext>,
    shared: &Arc<Shared>,
    playout: &mpsc::Sender<Playout>,
    history: &Conversation,
    input: TurnInput,
    number: u64,
) -> RunningTurn {
    let record = Arc::new(Mutex::new(TurnRecord::default()));
    let trace = TurnTrace::new(&state.config, number, input.speculative());
    if let Some((caller_stopped, endpointing)) = input.began() {
        trace.began(caller_stopped, endpointing);
    }
    let turn = Turn {
        state: state.clone(),
        shared: shared.clone(),
        generation: AtomicU64::new(shared.generation.load(Ordering::Relaxed)),
        playout: playout.clone(),
        encoder: tokio::sync::Mutex::new(None),
        record: record.clone(),
        number,
        commit: tokio::sync::Mutex::new(Ownership::Owned),
        committed: Mutex::new(None),
        started: Mutex::new(StageStarts::default()),
        trace: trace.clone(),
    };
    let history = history.clone();
    let span = info_span!("turn", turn = number);
    let done = trace.clone();
    let handle = tokio::spawn(
        async move {
            turn.run(input, history).await;
            done.work_done();
        }
        .instrument(span),
    );
    RunningTurn {
        task: TaskGuard(handle),
        record,
        trace,
    }
}

struct Turn {
    state: Arc<CallContext>,
    /// The call's shared state: its settings and where notes go.
    shared: Arc<Shared>,
    /// The playback generation its audio belongs to (a speculative reply's is set when the
    /// turn becomes its own).
    generation: AtomicU64,
    playout: mpsc::Sender<Playout>,
    /// This turn's own rate converter: clauses of one reply flow through it without a seam,
    /// and an interrupted turn, aborted mid-clause, cannot leave samples in the next one's.
    encoder: tokio::sync::Mutex<Option<FrameEncoder>>,
    record: Arc<Mutex<TurnRecord>>,
    number: u64,
    /// Whether the reply is the turn's to play; a speculative reply waits for the end of the
    /// turn in [`Turn::own`].
    commit: tokio::sync::Mutex<Ownership>,
    /// The end of the turn a speculative reply got.
    committed: Mutex<Option<Commit>>,
    /// When STT and the LLM started, to count only their time after a commit.
    started: Mutex<StageStarts>,
    /// Its trace, filled in as it goes.
    trace: Arc<TurnTrace>,
}

/// What one LLM request of a turn did.
#[derive(Default)]
struct Round {
    first_token: Option<Instant>,
    /// The clauses spoken, in order.
    spoken: Vec<String>,
    /// The tools it called.
    calls: Vec<ToolCall>,
    error: Option<BackendError>,
}

/// Whether a reply is the turn's to play.
enum Ownership {
    /// An ordinary turn's reply, or a speculative one the turn took.
    Owned,
    /// A speculative reply waiting for the end of the turn.
    Waiting(tokio::sync::oneshot::Receiver<Commit>),
    /// A speculative reply the turn did not take: nothing of it plays.
    Dropped,
}

/// When a turn's stages started.
#[derive(Debug, Default, Clone, Copy)]
struct StageStarts {
    stt: Option<Instant>,
    llm: Option<Instant>,
}

impl Turn {
    /// Waits until the turn is this reply's to play: at once for an ordinary turn, at the
    /// end of the turn for a speculative reply. False when the speculation was dropped.
    /// The answer sticks: a dropped speculation stays dropped for every later question (its
    /// task is aborted, but a clause already past its last await must not reach the caller).
    async fn own(&self) -> bool {
        // Held across the wait, so every question gets the one answer.
        let mut ownership = self.commit.lock().await;
        match std::mem::replace(&mut *ownership, Ownership::Dropped) {
            Ownership::Dropped => false,
            Ownership::Owned => {
                *ownership = Ownership::Owned;
                true
            }
            Ownership::Waiting(waiting) => {
                let Ok(commit) = waiting.await else {
                    return false;
                };
                *ownership = Ownership::Owned;
                self.generation.store(commit.generation, Ordering::Relaxed);
                *self.committed.lock().unwrap_or_else(|p| p.into_inner()) = Some(commit);
                if let Some(user) = &self.lock_record().user {
                    self.state.said("caller", user);
                    self.shared.note(Note::Caller(user.clone()));
                }
                true
            }
        }
    }

    /// The timings of the first audio, as the caller waited for them: for a speculative
    /// reply, each stage counts only what it still took after the turn ended, so the stages
    /// add up to the turn's latency.
    fn as_waited(&self, mut t: TurnTimings, tts_started: Instant) -> TurnTimings {
        let Some(c) = *self.committed.lock().unwrap_or_else(|p| p.into_inner()) else {
            return t;
        };
        let starts = *self.started.lock().unwrap_or_else(|p| p.into_inner());
        let waited = |start: Option<Instant>, took: Duration| {
            start.map_or(took, |s| (s + took).saturating_duration_since(s.max(c.at)))
        };
        t.stt = waited(starts.stt, t.stt);
        t.llm_first_token = waited(starts.llm, t.llm_first_token);
        t.llm_first_clause = waited(starts.llm, t.llm_first_clause);
        t.tts_first_audio = waited(Some(tts_started), t.tts_first_audio);
        t.caller_stopped = c.caller_stopped;
        t.endpointing = c.endpointing;
        t
    }

    async fn run(mut self, input: TurnInput, history: Conversation) {
        let mut resume = None;
        let (user, mut timings) = match input {
            TurnInput::Speech {
                audio,
                stream,
                caller_stopped,
                endpointing,
                commit,
                resume: cut,
            } => {
                *self.commit.get_mut() = commit.map_or(Ownership::Owned, Ownership::Waiting);
                resume = cut;
                let started = Instant::now();
                self.started.lock().unwrap_or_else(|p| p.into_inner()).stt = Some(started);
                let text = match transcribe(&self.state, audio, stream).await {
                    Ok(text) => text,
                    Err(e) => return self.apologise(e).await,
                };
                let timings = TurnTimings {
                    caller_stopped,
                    endpointing,
                    stt: started.elapsed(),
                    llm_first_token: Duration::ZERO,
                    llm_first_clause: Duration::ZERO,
                    tts_first_audio: Duration::ZERO,
                };
                (text, timings)
            }
            TurnInput::Heard {
                text,
                caller_stopped,
                endpointing,
                stt,
            } => (
                text,
                TurnTimings {
                    caller_stopped,
                    endpointing,
                    stt,
                    llm_first_token: Duration::ZERO,
                    llm_first_clause: Duration::ZERO,
                    tts_first_audio: Duration::ZERO,
                },
            ),
            TurnInput::Text { text, at } => (
                text,
                TurnTimings {
                    caller_stopped: at,
                    endpointing: Duration::ZERO,
                    stt: Duration::ZERO,
                    llm_first_token: Duration::ZERO,
                    llm_first_clause: Duration::ZERO,
                    tts_first_audio: Duration::ZERO,
                },
            ),
        };
        // A reply the caller cut, still to be resumed: words are due within the window from
        // the end of the caller's sound.
        let stopped = timings.caller_stopped;
        let resume = resume.filter(|r| Instant::now() <= stopped + r.window);
        // "Uh-huh" over the agent is listening, not taking the turn: like no words at all.
        let backchannel = resume.is_some()
            && crate::turn::only_backchannels(&user, &self.state.config.turn_taking.backchannels);
        // The only place a call builds what it sends the LLM (see `conversation`).
        let messages = if backchannel {
            None
        } else {
            history.request(&user)
        };
        let Some(messages) = messages else {
            match resume {
                // The caller's sound stopped the agent but said nothing (a cough, a door) or
                // only that they are listening: go back to what they cut.
                Some(resume) => self.resume(resume, &mut timings).await,
                None => debug!("empty transcript; no reply"),
            }
            return;
        };
        if matches!(self.commit.get_mut(), Ownership::Owned) {
            self.state.said("caller", &user);
            self.shared.note(Note::Caller(user.clone()));
        }
        self.lock_record().user = Some(user.clone());

        let llm_started = Instant::now();
        self.started.lock().unwrap_or_else(|p| p.into_inner()).llm = Some(llm_started);
        // What the follow-up requests after tool calls go on from: the turn's own copy of the
        // call, with the caller's words and each round's words and tool exchanges.
        let mut convo = history;
        convo.caller(&user);
        let mut messages = messages;
        let mut next_index = 0usize;
        let mut tools_failed = false;
        let mut action: Option<Action> = None;
        for round in 0..=MAX_TOOL_ROUNDS {
            let offer = self
                .state
                .tools
                .as_ref()
                .filter(|_| round < MAX_TOOL_ROUNDS)
                .map(|t| t.specs());
            let spoken_before = next_index;
            let reply = self
                .reply_round(messages, offer, llm_started, &mut timings, &mut next_index)
                .await;
            // A reply with nothing to say still waits for its turn, so its words are logged then.
            if reply.error.is_none() && !self.own().await {
                return;
            }
            if round == 0
                && let Some(first) = reply.first_token
            {
                let seconds = first.saturating_duration_since(llm_started).as_secs_f64();
                self.state.metrics.stage(Stage::LlmFirstToken, seconds);
            }
            if !reply.spoken.is_empty() {
                self.state.said("agent", &reply.spoken.join(" "));
            }
            if let Some(e) = reply.error {
                match action {
                    // The model had already hung up or transferred: carry that out (with
                    // the persona's goodbye if nothing was said) rather than apologise and
                    // leave the caller waiting for an ending that never comes.
                    Some(action) => {
                        self.count_backend_error(&e);
                        self.hand_over(action, next_index).await;
                    }
                    None => self.apologise(e).await,
                }
                return;
            }
            let said_nothing = next_index == spoken_before;
            if reply.calls.is_empty() || round == MAX_TOOL_ROUNDS {
                // A tool that failed gets words: the model's, or else the apology.
                if tools_failed && said_nothing {
                    self.play_apology().await;
                }
                break;
            }
            // Only a reply that is the turn's own acts (checked above): a speculative one
            // that was dropped never reaches here.
            let (results, decided, failed) = self
                .act(&reply.calls, action.is_some(), &mut next_index)
                .await;
            tools_failed = failed;
            if action.is_none() {
                action = decided;
            }
            // vLLM parses every earlier call's arguments as JSON: text that is not an object
            // (what the model wrote when it got them wrong) would fail every later request
            // of the call, so history keeps `{}` and the result says what was wrong.
            let calls: Vec<ToolCall> = reply
                .calls
                .into_iter()
                .map(crate::tools::with_object_arguments)
                .collect();
            self.lock_record().exchanges.push(Exchange {
                after: spoken_before + reply.spoken.len(),
                calls: calls.clone(),
                results: results.clone(),
            });
            convo.tools(&reply.spoken.join(" "), calls, results);
            messages = convo.messages();
        }
        if let Some(action) = action {
            self.hand_over(action, next_index).await;
        }
    }

    /// One LLM request of the turn, its words spoken clause by clause as they come; tool
    /// calls come back whole at the end. Clause marks are numbered on from `next_index`.
    async fn reply_round(
        &self,
        messages: Vec<ChatMessage>,
        tools: Option<crate::backend::ToolSpecs>,
        llm_started: Instant,
        timings: &mut TurnTimings,
        next_index: &mut usize,
    ) -> Round {
        let llm_timeout = self.state.config.llm.stage.timeout();
        let tokens =
            tokio::time::timeout(llm_timeout, self.state.backends.llm.reply(messages, tools))
                .await
                .unwrap_or(Err(BackendError::Timeout {
                    stage: crate::backend::StageName::Llm,
                    after: llm_timeout,
                }));
        let mut tokens = match tokens {
            Ok(t) => t,
            Err(e) => {
                return Round {
                    error: Some(e),
                    ..Round::default()
                };
            }
        };

        // Clauses flow from the LLM reader to the speaker through a small queue, so the model
        // keeps writing while earlier clauses are synthesised and played.
        let (clause_tx, mut clause_rx) =
            mpsc::channel::<Result<(String, Instant, Instant), BackendError>>(8);
        let reader = async move {
            let mut splitter = ClauseSplitter::new();
            let mut first = None;
            let mut calls = Vec::new();
            loop {
                let next = tokio::time::timeout(llm_timeout, tokens.next()).await;
                let token = match next {
                    Err(_) => Some(Err(BackendError::Timeout {
                        stage: crate::backend::StageName::Llm,
                        after: llm_timeout,
                    })),
                    Ok(t) => t,
                };
                match token {
                    Some(Ok(ReplyPart::Text(token))) => {
                        let first_at = *first.get_or_insert_with(Instant::now);
                        for clause in splitter.push(&token) {
                            if clause_tx
                                .send(Ok((clause, Instant::now(), first_at)))
                                .await
                                .is_err()
                            {
                                return (first, calls);
                            }
                        }
                    }
                    Some(Ok(ReplyPart::Call(call))) => {
                        first.get_or_insert_with(Instant::now);
                        calls.push(call);
                    }
                    Some(Err(e)) => {
                        let _ = clause_tx.send(Err(e)).await;
                        return (first, calls);
                    }
                    None => break,
                }
            }
            if let Some(rest) = splitter.finish() {
                let now = Instant::now();
                let _ = clause_tx.send(Ok((rest, now, first.unwrap_or(now)))).await;
            }
            (first, calls)
        };
        let speaker = async {
            let mut spoken = Vec::new();
            while let Some(clause) = clause_rx.recv().await {
                let (text, ready_at, first_token_at) = match clause {
                    Ok(c) => c,
                    Err(e) => return (spoken, Some(e)),
                };
                if *next_index == 0 {
                    timings.llm_first_clause = ready_at.saturating_duration_since(llm_started);
                    timings.llm_first_token = first_token_at.saturating_duration_since(llm_started);
                }
                if let Err(e) = self.speak(&text, *next_index, timings).await {
                    return (spoken, Some(e));
                }
                spoken.push(text);
                *next_index += 1;
            }
            (spoken, None)
        };
        let ((first_token, calls), (spoken, error)) = tokio::join!(reader, speaker);
        Round {
            first_token,
            spoken,
            // A reply that failed part way does not act on what it called.
            calls: if error.is_some() { Vec::new() } else { calls },
            error,
        }
    }

    /// Runs the model's tool calls: key tones play now, a hang-up or transfer waits for the
    /// words (see [`Turn::hand_over`]). Returns one result per call, the call action
    /// decided (the first; a second is refused), and whether any call failed.
    async fn act(
        &self,
        calls: &[ToolCall],
        decided_before: bool,
        next_index: &mut usize,
    ) -> (Vec<ChatMessage>, Option<Action>, bool) {
        let Some(tools) = self.state.tools.as_ref() else {
            // A server that calls tools nobody offered: every call is unknown.
            let results = calls
                .iter()
                .map(|c| {
                    ChatMessage::tool_result(c.id.clone(), r#"{"error":"no tools are offered"}"#)
                })
                .collect();
            for _ in calls {
                self.count_tool("unknown", crate::tools::ToolOutcome::UnknownTool);
            }
            return (results, None, !calls.is_empty());
        };
        let can_transfer =
            self.state.twilio_rest.is_some() && self.shared.settings.call_sid.is_some();
        let (mut results, mut action, mut failed) = (Vec::new(), None, false);
        for call in calls {
            let started = Instant::now();
            let mut invoked = tools.invoke(call, can_transfer).await;
            let took = started.elapsed();
            match invoked.action.take() {
                Some(Action::Dtmf(digits)) => self.play_tones(&digits, next_index).await,
                Some(decided) if action.is_none() && !decided_before => action = Some(decided),
                Some(_) => {
                    invoked.outcome = crate::tools::ToolOutcome::Refused;
                    invoked.result = serde_json::json!({
                        "error": "the call is already being ended or transferred"
                    })
                    .to_string();
                }
                None => {}
            }
            self.count_tool(&invoked.tool, invoked.outcome);
            self.trace
                .tool(&invoked.tool, invoked.outcome.label(), started, took);
            self.shared.note(Note::Tool {
                tool: invoked.tool.clone(),
                outcome: invoked.outcome.label(),
            });
            if invoked.outcome != crate::tools::ToolOutcome::Ok {
                failed = true;
                warn!(tool = %invoked.tool, outcome = invoked.outcome.label(), "a tool call failed; the model hears why");
            }
            results.push(ChatMessage::tool_result(call.id.clone(), invoked.result));
        }
        (results, action, failed)
    }

    fn count_tool(&self, tool: &str, outcome: crate::tools::ToolOutcome) {
        self.state
            .metrics
            .tool_calls
            .with_label_values(&[tool, outcome.label()])
            .inc();
    }

    /// Plays key tones as the turn's next segment.
    async fn play_tones(&self, digits: &str, next_index: &mut usize) {
        let mut frames = Vec::new();
        let encoded = FrameEncoder::new(8_000).and_then(|mut e| {
            e.push(&crate::tools::dtmf_tones(digits), &mut frames)?;
            e.finish(&mut frames)
        });
        if let Err(e) = encoded {
            warn!(error = %e, "could not encode the key tones");
            return;
        }
        let length = grokcast_engines::audio::duration(frames.len(), 8_000);
        self.queue_segment(Bytes::from(frames), "", length, *next_index)
            .await;
        *next_index += 1;
    }

    /// Queues audio that is not a synthesised clause (tones, a cached phrase) as the turn's
    /// `index`-th segment, with its mark.
    async fn queue_segment(&self, frames: Bytes, text: &str, length: Duration, index: usize) {
        let (generation, mark) = self.record_segment(text, length, index);
        self.queue_with_mark(generation, frames, mark).await;
    }

    /// Queues fixed audio of this turn, then its mark.
    async fn queue_with_mark(&self, generation: u64, frames: Bytes, mark: String) {
        let _ = self
            .playout
            .send(Playout::Audio {
                generation,
                frames,
                timings: None,
                trace: Some(self.trace.clone()),
            })
            .await;
        let _ = self
            .playout
            .send(Playout::Mark {
                generation,
                name: mark,
            })
            .await;
    }

    /// Hands a hang-up or transfer to the conversation, to be carried out once everything
    /// the turn queued has played: a mark after it says when. A model that hangs up without
    /// a word says the persona's goodbye first.
    async fn hand_over(&self, action: Action, next_index: usize) {
        if next_index == 0
            && action == Action::EndCall
            && let Some(clips) = self.state.clips()
        {
            let length = grokcast_engines::audio::duration(clips.goodbye.len(), 8_000);
            let goodbye = self.state.config.persona.goodbye.clone();
            self.queue_segment(clips.goodbye.clone(), &goodbye, length, next_index)
                .await;
        }
        let generation = self.generation.load(Ordering::Relaxed);
        let mark = format!("t{}-action", self.number);
        let queued = self.lock_record().segments.iter().map(|(_, _, d)| *d).sum();
        let _ = self
            .playout
            .send(Playout::Mark {
                generation,
                name: mark.clone(),
            })
            .await;
        let _ = self.shared.actions.send(PendingAction {
            generation,
            mark,
            action,
            queued,
        });
    }

    /// Speaks again the clauses a false interruption cut, from the start of the cut one.
    async fn resume(&self, resume: Resume, timings: &mut TurnTimings) {
        // Counted only once it is the turn's (not for a speculation that is cancelled).
        if !self.own().await {
            return;
        }
        self.state.metrics.false_interruptions.inc();
        self.trace.resumed();
        debug!(
            clauses = resume.clauses.len(),
            "no words in the interruption; resuming"
        );
        let mut spoken = Vec::new();
        for (index, clause) in resume.clauses.iter().enumerate() {
            if let Err(e) = self.speak(clause, index, timings).await {
                self.apologise(e).await;
                break;
            }
            spoken.push(clause.as_str());
        }
        if !spoken.is_empty() {
            self.state.said("agent", &spoken.join(" "));
        }
        if let Some(action) = resume.action {
            self.hand_over(action, spoken.len().max(1)).await;
        }
    }

    fn lock_record(&self) -> std::sync::MutexGuard<'_, TurnRecord> {
        self.record.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Synthesises one clause and queues its frames and its mark.
    async fn speak(
        &self,
        text: &str,
        index: usize,
        timings: &mut TurnTimings,
    ) -> Result<(), BackendError> {
        let tts_timeout = self.state.config.tts.stage.timeout();
        let timeout_err = || BackendError::Timeout {
            stage: crate::backend::StageName::Tts,
            after: tts_timeout,
        };
        // A speculative reply synthesises nothing before the turn is its own, unless
        // preemptive TTS lets it prepare the first clause (which still waits to play).
        let preemptive = self.state.config.turn_taking.preemptive_tts;
        if index == 0 && !preemptive && !self.own().await {
            return Ok(());
        }
        let started = Instant::now();
        let mut audio = tokio::time::timeout(
            tts_timeout,
            self.state
                .backends
                .tts
                .synthesize(text.to_string(), self.shared.settings.voice.clone()),
        )
        .await
        .map_err(|_| timeout_err())??;
        let mut first_audio = index == 0;
        let mut frames = Vec::new();
        // The clause's length as played, for what a caller stopped mid-clause heard of it.
        let mut spoken = Duration::ZERO;
        loop {
            let chunk = tokio::time::timeout(tts_timeout, audio.chunks.next())
                .await
                .map_err(|_| timeout_err())?;
            let last = chunk.is_none();
            {
                let mut guard = self.encoder.lock().await;
                if guard.as_ref().is_none_or(|e| e.rate() != audio.sample_rate) {
                    *guard = Some(FrameEncoder::new(audio.sample_rate).map_err(|e| {
                        BackendError::Protocol {
                            stage: crate::backend::StageName::Tts,
                            message: e.to_string(),
                        }
                    })?);
                }
                let Some(encoder) = guard.as_mut() else {
                    continue;
                };
                let result = match &chunk {
                    Some(Ok(samples)) => encoder.push(samples, &mut frames),
                    Some(Err(_)) => Ok(()),
                    None => encoder.finish(&mut frames),
                };
                result.map_err(|e| BackendError::Protocol {
                    stage: crate::backend::StageName::Tts,
                    message: e.to_string(),
                })?;
            }
            if let Some(Err(e)) = chunk {
                return Err(e);
            }
            if !frames.is_empty() {
                // Nothing of a speculative reply plays before the turn is its own, whichever
                // clause has the first audio (cheap once it is).
                if !self.own().await {
                    return Ok(());
                }
                let timings = if first_audio {
                    first_audio = false;
                    timings.tts_first_audio = started.elapsed();
                    Some(self.as_waited(*timings, started))
                } else {
                    None
                };
                let frames = Bytes::from(std::mem::take(&mut frames));
                // 8 kHz mu-law: one byte a sample.
                spoken += grokcast_engines::audio::duration(frames.len(), 8_000);
                if self
                    .playout
                    .send(Playout::Audio {
                        generation: self.generation.load(Ordering::Relaxed),
                        frames,
                        timings,
                        trace: Some(self.trace.clone()),
                    })
                    .await
                    .is_err()
                {
                    return Ok(());
                }
            }
            if last {
                break;
            }
        }
        // Nor its marks (a clause with no audio still has one).
        if !self.own().await {
            return Ok(());
        }
        let (generation, mark) = self.record_segment(text, spoken, index);
        self.shared.note(Note::Agent(text.to_string()));
        let _ = self
            .playout
            .send(Playout::Mark {
                generation,
                name: mark,
            })
            .await;
        Ok(())
    }

    /// Records the turn's `index`-th segment (`text`, played in `length`) for the history;
    /// returns its playback generation and mark name.
    fn record_segment(&self, text: &str, length: Duration, index: usize) -> (u64, String) {
        let generation = self.generation.load(Ordering::Relaxed);
        let mark = format!("t{}-s{index}", self.number);
        let mut record = self.lock_record();
        record.generation = generation;
        record
            .segments
            .push((mark.clone(), text.to_owned(), length));
        (generation, mark)
    }

    /// Counts the failure and plays the cached apology; the call goes on.
    async fn apologise(&self, error: BackendError) {
        self.count_backend_error(&error);
        self.play_apology().await;
    }

    /// Logs, counts and traces a failed backend.
    fn count_backend_error(&self, error: &BackendError) {
        warn!(error = %error, stage = error.stage().label(), "model backend failed");
        self.state
            .metrics
            .backend_errors
            .with_label_values(&[error.stage().label()])
            .inc();
        self.trace.failed(error.stage().label(), error.summary());
    }

    /// Plays the cached apology (once the turn is its own).
    async fn play_apology(&self) {
        let Some(clips) = self.state.clips() else {
            return;
        };
        // A speculative reply apologises only once the turn is its own.
        if !self.own().await {
            return;
        }
        let generation = self.generation.load(Ordering::Relaxed);
        let mark = format!("t{}-apology", self.number);
        self.queue_with_mark(generation, clips.apology.clone(), mark)
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clause_cut_short_keeps_the_words_heard_and_says_it_was_cut() {
        let clause = "On Monday and Tuesday we open at nine.";
        let length = Duration::from_millis(3200);
        // Eight words over 3.2 s: 1.3 s heard is three whole words.
        assert_eq!(
            heard_words(clause, Duration::from_millis(1300), length).as_deref(),
            Some("On Monday and…")
        );
        assert_eq!(
            heard_words(clause, length, length).as_deref(),
            Some(clause),
            "heard to the end: the whole clause, not flagged"
        );
        assert_eq!(
            heard_words(clause, Duration::from_millis(300), length),
            None
        );
        assert_eq!(heard_words("", length, length), None);
        assert_eq!(heard_words(clause, length, Duration::ZERO), None);
    }

    #[test]
    fn history_has_the_acknowledged_clauses_then_what_was_heard_of_the_one_playing() {
        let record = TurnRecord {
            user: Some("When are you open?".into()),
            generation: 3,
            segments: vec![
                (
                    "t1-s0".into(),
                    "We open at nine.".into(),
                    Duration::from_millis(1000),
                ),
                (
                    "t1-s1".into(),
                    "On Sundays we open at noon.".into(),
                    Duration::from_millis(2400),
                ),
                (
                    "t1-s2".into(),
                    "Anything else?".into(),
                    Duration::from_millis(800),
                ),
            ],
            exchanges: Vec::new(),
        };
        let acked: HashSet<String> = ["t1-s0".to_owned()].into();
        let said = |heard: Option<Heard>| {
            let mut history = Conversation::new("");
            record_turn(&record, &mut history, &acked, heard);
            history.request("Wait.").unwrap()[1].content.clone()
        };
        let playing = |generation, segment, ms| Heard {
            generation,
            segment,
            heard: Duration::from_millis(ms),
        };
        assert_eq!(
            said(Some(playing(3, 1, 1300))),
            "We open at nine. On Sundays we…"
        );
        // Progress of another generation or another clause says nothing of this one.
        assert_eq!(said(Some(playing(4, 1, 1300))), "We open at nine.");
        assert_eq!(said(Some(playing(3, 2, 700))), "We open at nine.");
        assert_eq!(said(None), "We open at nine.");
    }

    #[test]
    fn a_tool_exchange_goes_into_history_where_it_happened_whatever_was_heard() {
        use crate::backend::Role;
        let record = TurnRecord {
            user: Some("Press one for billing.".into()),
            generation: 1,
            segments: vec![
                ("t1-s0".into(), "Sure.".into(), Duration::from_millis(500)),
                // The key tones: no words.
                ("t1-s1".into(), String::new(), Duration::from_millis(200)),
                (
                    "t1-s2".into(),
                    "Done, I pressed one.".into(),
                    Duration::from_millis(900),
                ),
            ],
            exchanges: vec![Exchange {
                after: 1,
                calls: vec![ToolCall::new("c1", "send_dtmf", r#"{"digits":"1"}"#)],
                results: vec![ChatMessage::tool_result("c1", r#"{"ok":true}"#)],
            }],
        };
        let history_after = |acked: &[&str]| {
            let acked: HashSet<String> = acked.iter().map(|m| m.to_string()).collect();
            let mut history = Conversation::new("");
            record_turn(&record, &mut history, &acked, None);
            history.request("Thanks.").unwrap()
        };
        let all = history_after(&["t1-s0", "t1-s1", "t1-s2"]);
        let shape: Vec<(Role, &str, usize)> = all
            .iter()
            .map(|m| (m.role, m.content.as_str(), m.tool_calls.len()))
            .collect();
        assert_eq!(
            shape,
            [
                (Role::User, "Press one for billing.", 0),
                (Role::Assistant, "Sure.", 1),
                (Role::Tool, r#"{"ok":true}"#, 0),
                (Role::Assistant, "Done, I pressed one.", 0),
                (Role::User, "Thanks.", 0),
            ]
        );
        // Cut off before a word was heard: the keys were still pressed, and the caller's
        // next words follow an agent turn that says nothing was heard.
        let cut = history_after(&[]);
        assert_eq!((cut[1].content.as_str(), cut[1].tool_calls.len()), ("", 1));
        assert_eq!(cut[3].content, crate::conversation::SAID_NOTHING);
        assert_eq!(grokcast_engines::llm::gemma3_tools_refusal(&cut), None);
    }
}
