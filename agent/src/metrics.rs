//! Prometheus metrics, named as in DESIGN "Metric names", every series labelled with the
//! VoiceAgent and its namespace so the operator can attribute latency per agent.

use std::time::Duration;

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    Opts, Registry, TextEncoder,
};

/// The VoiceAgent default `slo.turnLatencyP95Ms`, in seconds: the SLO a pod counts slow turns
/// against until its configuration names another.
pub const DEFAULT_TURN_SLO_SECONDS: f64 = 0.8;

/// Buckets for a 0.1-2 s per-turn budget: fine around the 0.5 s target, up to 5 s for outliers.
pub const TURN_BUCKETS: &[f64] = &[
    0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.75, 0.8, 0.9, 1.0, 1.25, 1.5, 2.0, 3.0, 5.0,
];

/// Buckets for one stage; the agent's own overhead is in milliseconds, so they start low.
pub const STAGE_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0,
    5.0,
];

/// Stage label values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Silence waited for after the caller stopped.
    Endpointing,
    /// Speech to text.
    Stt,
    /// Request to the first LLM token.
    LlmFirstToken,
    /// First clause to its first audio.
    TtsFirstAudio,
    /// Everything else: the agent's own overhead.
    Agent,
}

impl Stage {
    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            Stage::Endpointing => "endpointing",
            Stage::Stt => "stt",
            Stage::LlmFirstToken => "llm_first_token",
            Stage::TtsFirstAudio => "tts_first_audio",
            Stage::Agent => "agent",
        }
    }
}

/// How a call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The caller hung up or the stream stopped.
    Completed,
    /// Refused: the pod was full or draining.
    Rejected,
    /// A protocol error ended it.
    ProtocolError,
    /// It ran past the session timeout.
    Timeout,
    /// The pod shut down and said goodbye.
    Drained,
    /// The agent hung up (its `end_call` tool).
    EndedByAgent,
    /// The agent transferred the call (its `transfer_call` tool).
    Transferred,
    /// The socket failed.
    Disconnected,
}

impl Outcome {
    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Completed => "completed",
            Outcome::Rejected => "rejected",
            Outcome::ProtocolError => "protocol_error",
            Outcome::Timeout => "timeout",
            Outcome::Drained => "drained",
            Outcome::EndedByAgent => "ended_by_agent",
            Outcome::Transferred => "transferred",
            Outcome::Disconnected => "disconnected",
        }
    }
}

/// The agent's metrics.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Caller stops speaking -> first agent audio frame sent.
    pub turn_latency: Histogram,
    /// This agent's turn-latency SLO (`slo.turnLatencyP95Ms`) in seconds. Exported so the
    /// burn-rate alerts can say which threshold an agent is breaching.
    pub turn_latency_slo: Gauge,
    /// Turns slower than [`Self::turn_latency_slo`]. Counted here, against each agent's own
    /// SLO, so one set of burn-rate rules serves agents whose SLOs differ (a histogram
    /// bucket would fix one threshold for all).
    pub turns_over_slo: IntCounter,
    /// Per-stage latency.
    pub stage_latency: HistogramVec,
    /// Calls in progress.
    pub active_calls: IntGauge,
    /// Calls by outcome.
    pub calls: IntCounterVec,
    /// Barge-ins.
    pub barge_ins: IntCounter,
    /// Frames sent after Twilio's buffer ran dry mid-utterance.
    pub underruns: IntCounter,
    /// Model-server failures by stage.
    pub backend_errors: IntCounterVec,
    /// End-of-turn model verdicts at the caller's pauses: `complete`, `incomplete`, or
    /// `error` (the turn then ends as if the model had said complete).
    pub end_of_turn_predictions: IntCounterVec,
    /// Time the end-of-turn model took for one pause.
    pub end_of_turn_prediction_seconds: Histogram,
    /// Speculative replies by outcome (`hit`, `miss`).
    pub speculative_replies: IntCounterVec,
    /// Barge-ins whose sound had no words, after which the agent resumed what it was saying.
    pub false_interruptions: IntCounter,
    /// Turns whose transcription stream failed and that were transcribed in one request.
    pub stt_stream_fallbacks: IntCounter,
    /// Speech over the agent held for its words (`minInterruptionWords`), by how it ended:
    /// `words` (its interim transcript had them: barge-in), `waited` (it went on past
    /// `maxInterruptionWaitMs` without them: barge-in), `turn` (it ended first and its
    /// transcript had them: answered), `ignored` (backchannels or no words: the agent
    /// talked on).
    pub held_interruptions: IntCounterVec,
    /// Trace spans the collector accepted.
    pub trace_spans_exported: IntCounter,
    /// Trace spans lost on the way to the collector, by why: `export_failed` (the collector
    /// was down, refused them, or timed out) or `queue_full` (more waited than the queue
    /// holds). Calls go on either way.
    pub trace_spans_dropped: IntCounterVec,
    /// Tool calls the LLM made, by tool (`unknown` for a name not offered) and outcome
    /// ([`crate::tools::ToolOutcome::LABELS`]); the call actions (`end_call`,
    /// `transfer_call`) count again as `failed` when the REST update of the call fails.
    pub tool_calls: IntCounterVec,
}

/// The reasons of [`Metrics::trace_spans_dropped`].
pub const TRACE_DROP_REASONS: [&str; 2] = ["export_failed", "queue_full"];

/// The outcomes of [`Metrics::held_interruptions`].
pub const HELD_OUTCOMES: [&str; 4] = ["words", "waited", "turn", "ignored"];

impl Metrics {
    /// Registers every metric with constant `voiceagent` and `namespace` labels.
    pub fn new(voice_agent: &str, namespace: &str) -> Result<Self, prometheus::Error> {
        let labels = std::collections::HashMap::from([
            ("voiceagent".to_string(), voice_agent.to_string()),
            ("namespace".to_string(), namespace.to_string()),
        ]);
        let registry = Registry::new_custom(None, Some(labels))?;
        let turn_latency = Histogram::with_opts(
            HistogramOpts::new(
                "grokcast_turn_latency_seconds",
                "Caller stops speaking to first agent audio frame sent",
            )
            .buckets(TURN_BUCKETS.to_vec()),
        )?;
        let turn_latency_slo = Gauge::new(
            "grokcast_turn_latency_slo_seconds",
            "The VoiceAgent's turn-latency SLO (slo.turnLatencyP95Ms) in seconds",
        )?;
        turn_latency_slo.set(DEFAULT_TURN_SLO_SECONDS);
        let turns_over_slo = IntCounter::new(
            "grokcast_turns_over_slo_total",
            "Turns whose latency was above the VoiceAgent's turn-latency SLO",
        )?;
        let stage_latency = HistogramVec::new(
            HistogramOpts::new(
                "grokcast_stage_latency_seconds",
                "Latency of one stage of a turn",
            )
            .buckets(STAGE_BUCKETS.to_vec()),
            &["stage"],
        )?;
        let active_calls = IntGauge::new("grokcast_active_calls", "Calls in progress")?;
        let calls = IntCounterVec::new(
            Opts::new("grokcast_calls_total", "Calls by outcome"),
            &["outcome"],
        )?;
        let barge_ins = IntCounter::new(
            "grokcast_barge_ins_total",
            "Times the caller interrupted the agent",
        )?;
        let underruns = IntCounter::new(
            "grokcast_audio_underruns_total",
            "Audio frames sent after the caller's playback buffer ran dry",
        )?;
        let backend_errors = IntCounterVec::new(
            Opts::new(
                "grokcast_backend_errors_total",
                "Model-server failures by stage",
            ),
            &["stage"],
        )?;
        let end_of_turn_predictions = IntCounterVec::new(
            Opts::new(
                "grokcast_end_of_turn_predictions_total",
                "End-of-turn model verdicts at the caller's pauses (busy: no CPU free in time, judged by silence alone)",
            ),
            &["verdict"],
        )?;
        let false_interruptions = IntCounter::new(
            "grokcast_false_interruptions_total",
            "Barge-ins whose sound had no words, after which the agent resumed the clause it was cut in",
        )?;
        let stt_stream_fallbacks = IntCounter::new(
            "grokcast_stt_stream_fallbacks_total",
            "Turns whose transcription stream failed (died, fell behind, or was refused), transcribed in one batch request instead",
        )?;
        let held_interruptions = IntCounterVec::new(
            Opts::new(
                "grokcast_held_interruptions_total",
                "Speech over the agent held for its words: words or waited (it interrupted), turn (answered after it ended), ignored (backchannels or no words; the agent talked on)",
            ),
            &["outcome"],
        )?;
        let speculative_replies = IntCounterVec::new(
            Opts::new(
                "grokcast_speculative_replies_total",
                "Replies started in a pause that may end the turn: hit (the turn ended there and took it) or miss (cancelled)",
            ),
            &["outcome"],
        )?;
        let trace_spans_exported = IntCounter::new(
            "grokcast_trace_spans_exported_total",
            "Trace spans the OpenTelemetry collector accepted",
        )?;
        let trace_spans_dropped = IntCounterVec::new(
            Opts::new(
                "grokcast_trace_spans_dropped_total",
                "Trace spans lost before the collector: export_failed (collector down, refusing or too slow) or queue_full",
            ),
            &["reason"],
        )?;
        let tool_calls = IntCounterVec::new(
            Opts::new(
                "grokcast_tool_calls_total",
                "Tool calls the LLM made, by tool (unknown: a name not offered) and outcome (ok, unknown_tool, bad_arguments, refused, failed, timeout)",
            ),
            &["tool", "outcome"],
        )?;
        let end_of_turn_prediction_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "grokcast_end_of_turn_prediction_seconds",
                "Time the end-of-turn model took to judge one pause",
            )
            .buckets(STAGE_BUCKETS.to_vec()),
        )?;
        registry.register(Box::new(turn_latency.clone()))?;
        registry.register(Box::new(turn_latency_slo.clone()))?;
        registry.register(Box::new(turns_over_slo.clone()))?;
        registry.register(Box::new(stage_latency.clone()))?;
        registry.register(Box::new(active_calls.clone()))?;
        registry.register(Box::new(calls.clone()))?;
        registry.register(Box::new(barge_ins.clone()))?;
        registry.register(Box::new(underruns.clone()))?;
        registry.register(Box::new(backend_errors.clone()))?;
        registry.register(Box::new(end_of_turn_predictions.clone()))?;
        registry.register(Box::new(end_of_turn_prediction_seconds.clone()))?;
        registry.register(Box::new(speculative_replies.clone()))?;
        registry.register(Box::new(false_interruptions.clone()))?;
        registry.register(Box::new(stt_stream_fallbacks.clone()))?;
        registry.register(Box::new(held_interruptions.clone()))?;
        registry.register(Box::new(trace_spans_exported.clone()))?;
        registry.register(Box::new(trace_spans_dropped.clone()))?;
        registry.register(Box::new(tool_calls.clone()))?;
        // Pre-create label values so dashboards see zeros instead of missing series.
        for stage in [
            Stage::Endpointing,
            Stage::Stt,
            Stage::LlmFirstToken,
            Stage::TtsFirstAudio,
            Stage::Agent,
        ] {
            stage_latency.with_label_values(&[stage.label()]);
        }
        for stage in ["stt", "llm", "tts"] {
            backend_errors.with_label_values(&[stage]);
        }
        for verdict in ["complete", "incomplete", "error", "busy"] {
            end_of_turn_predictions.with_label_values(&[verdict]);
        }
        for outcome in ["hit", "miss"] {
            speculative_replies.with_label_values(&[outcome]);
        }
        for outcome in HELD_OUTCOMES {
            held_interruptions.with_label_values(&[outcome]);
        }
        for reason in TRACE_DROP_REASONS {
            trace_spans_dropped.with_label_values(&[reason]);
        }
        Ok(Self {
            registry,
            turn_latency,
            turn_latency_slo,
            turns_over_slo,
            stage_latency,
            active_calls,
            calls,
            barge_ins,
            underruns,
            backend_errors,
            end_of_turn_predictions,
            end_of_turn_prediction_seconds,
            speculative_replies,
            false_interruptions,
            stt_stream_fallbacks,
            held_interruptions,
            trace_spans_exported,
            trace_spans_dropped,
            tool_calls,
        })
    }

    /// Sets the turn-latency SLO slow turns are counted against.
    pub fn set_turn_slo(&self, slo: Duration) {
        self.turn_latency_slo.set(slo.as_secs_f64());
    }

    /// Observes one turn's latency, and counts it as slow when it is above the SLO.
    pub fn observe_turn(&self, latency: Duration) {
        let seconds = latency.as_secs_f64();
        self.turn_latency.observe(seconds);
        if seconds > self.turn_latency_slo.get() {
            self.turns_over_slo.inc();
        }
    }

    /// Observes one stage.
    pub fn stage(&self, stage: Stage, seconds: f64) {
        self.stage_latency
            .with_label_values(&[stage.label()])
            .observe(seconds);
    }

    /// Counts a finished call.
    pub fn call_ended(&self, outcome: Outcome) {
        self.calls.with_label_values(&[outcome.label()]).inc();
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        if TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .is_err()
        {
            return String::new();
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn turns_are_counted_slow_against_this_agents_own_slo() {
        let m = Metrics::new("receptionist", "voice").unwrap();
        // The default SLO is 800 ms until the configuration names one.
        m.observe_turn(Duration::from_millis(700));
        assert_eq!(m.turns_over_slo.get(), 0);
        m.set_turn_slo(Duration::from_millis(500));
        m.observe_turn(Duration::from_millis(700));
        m.observe_turn(Duration::from_millis(500));
        m.observe_turn(Duration::from_millis(501));
        assert_eq!(
            m.turns_over_slo.get(),
            2,
            "only the turns above 500 ms are slow"
        );
        assert_eq!(m.turn_latency.get_sample_count(), 4);
        let text = m.render();
        assert!(
            text.lines().any(|l| l.starts_with("grokcast_turn_latency_slo_seconds{")
                && l.ends_with(" 0.5")),
            "the SLO is exported in seconds:\n{text}"
        );
    }

    #[test]
    fn every_series_carries_the_agent_labels() {
        let m = Metrics::new("receptionist", "voice").unwrap();
        m.turn_latency.observe(0.42);
        m.stage(Stage::Stt, 0.1);
        m.call_ended(Outcome::Completed);
        m.barge_ins.inc();
        let text = m.render();
        for name in [
            "grokcast_turn_latency_seconds_bucket",
            "grokcast_stage_latency_seconds_bucket",
            "grokcast_active_calls",
            "grokcast_calls_total",
            "grokcast_barge_ins_total",
            "grokcast_audio_underruns_total",
            "grokcast_turn_latency_slo_seconds",
            "grokcast_turns_over_slo_total",
        ] {
            let lines: Vec<&str> = text.lines().filter(|l| l.starts_with(name)).collect();
            assert!(!lines.is_empty(), "{name} missing:\n{text}");
            for line in lines {
                assert!(line.contains(r#"voiceagent="receptionist""#), "{line}");
                assert!(line.contains(r#"namespace="voice""#), "{line}");
            }
        }
        assert!(text.contains(r#"stage="llm_first_token""#));
        assert!(text.contains(r#"le="0.5""#));
    }
}
