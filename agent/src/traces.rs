//! OpenTelemetry traces: one trace per call, one span per turn, and under each turn a span
//! per stage of the wait the caller heard (endpointing, STT, LLM to first token and to first
//! clause, TTS to first audio) and one for the playout.
//!
//! The call is a `tracing` span (`call`, opened by the transport's handler), bridged to
//! OpenTelemetry by `tracing-opentelemetry`.
//! Turns are built from the instants the call loop already measures for
//! `grokcast_turn_latency_seconds` ([`TurnTimings`]), with those instants as the spans' start
//! and end: the trace of a slow turn shows the same figures as the histogram, laid out as a
//! waterfall from the moment the caller's voice ended. A turn's spans are sent when the turn
//! is over (played out, cut by a barge-in, or replaced by the next), so a turn's stages never
//! have to be held open across the call loop's tasks.
//!
//! Spans carry no phone numbers and no words: the VoiceAgent, namespace, turn number, and
//! whether the turn was cut by a barge-in, was a speculative reply, or met a backend error.
//!
//! Export is OTLP over gRPC through a batch processor on its own thread. A collector that is
//! down or slow costs spans, never calls: every span lost is counted in
//! `grokcast_trace_spans_dropped_total`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use opentelemetry::trace::{Span as _, Status, TraceContextExt as _, Tracer as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracerProvider, SpanData, SpanExporter,
    SpanProcessor,
};
use prometheus::IntCounter;
use tokio::time::Instant;
use tracing::Subscriber;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::Layer;
use tracing_subscriber::registry::LookupSpan;

use crate::config::AgentConfig;
use crate::context::TurnTimings;
use crate::metrics::Metrics;

/// The instrumentation scope (and `service.name`) of the agent's spans.
pub const SERVICE: &str = "grokcast-agent";

/// Spans waiting for the collector, at most; more are dropped and counted.
const QUEUE: usize = 4096;
/// How often the batch goes out: a slow turn shows up in the trace search within seconds.
const EXPORT_EVERY: Duration = Duration::from_secs(1);
/// One export's limit, so a collector that hangs costs one batch, not the queue behind it.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why traces cannot start (the agent does not start either: a VoiceAgent that asks for
/// traces and silently has none would mislead whoever reads them).
#[derive(Debug, thiserror::Error)]
#[error("tracing.endpoint {endpoint:?}: {message}")]
pub struct TracesError {
    endpoint: String,
    message: String,
}

/// The running trace pipeline; [`Traces::shutdown`] sends what is still queued.
pub struct Traces {
    provider: SdkTracerProvider,
}

/// A layer for the process's subscriber, boxed so it stacks with the log layer.
pub type BoxedLayer<S> = Box<dyn Layer<S> + Send + Sync>;

impl Traces {
    /// Starts exporting to `tracing.endpoint`, or returns `None` when it is empty. Returns
    /// the layer that turns the `call` span into each call's trace; add it to the process's
    /// subscriber. Must run inside the Tokio runtime (the gRPC channel lives on it).
    pub fn start<S>(
        config: &AgentConfig,
        metrics: &Metrics,
    ) -> Result<Option<(Self, BoxedLayer<S>)>, TracesError>
    where
        S: Subscriber + for<'a> LookupSpan<'a> + Send + Sync,
    {
        let traces = &config.tracing;
        if traces.endpoint.is_empty() {
            return Ok(None);
        }
        let error = |message: String| TracesError {
            endpoint: traces.endpoint.clone(),
            message,
        };
        use opentelemetry_otlp::{WithExportConfig as _, WithTonicConfig as _};
        let mut builder = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(&traces.endpoint)
            .with_timeout(EXPORT_TIMEOUT);
        if traces.endpoint.starts_with("https://") {
            builder = builder.with_tls_config(
                opentelemetry_otlp::tonic_types::transport::ClientTlsConfig::new()
                    .with_native_roots(),
            );
        }
        let exporter = builder.build().map_err(|e| error(e.to_string()))?;
        let provider = pipeline(exporter, traces.sample_ratio, config, metrics);
        let tracer = opentelemetry::trace::TracerProvider::tracer(&provider, SERVICE);
        opentelemetry::global::set_tracer_provider(provider.clone());
        Ok(Some((Self { provider }, call_layer(tracer))))
    }

    /// Sends the spans still queued (within a few seconds) and stops exporting.
    pub async fn shutdown(self) {
        let provider = self.provider;
        // The processor's thread is joined: off the async threads.
        let done = tokio::task::spawn_blocking(move || provider.shutdown()).await;
        if let Ok(Err(e)) = done {
            tracing::warn!(error = %e, "traces: the last spans may be lost");
        }
    }
}

/// The tracer provider over `exporter`: sampled per call, batched, every loss counted.
fn pipeline(
    exporter: impl SpanExporter + 'static,
    sample_ratio: f64,
    config: &AgentConfig,
    metrics: &Metrics,
) -> SdkTracerProvider {
    let pending = Arc::new(AtomicUsize::new(0));
    let dropped = |reason| metrics.trace_spans_dropped.with_label_values(&[reason]);
    let exporter = Counting {
        inner: exporter,
        pending: pending.clone(),
        exported: metrics.trace_spans_exported.clone(),
        failed: dropped("export_failed"),
    };
    let batches = BatchSpanProcessor::builder(exporter)
        .with_batch_config(
            BatchConfigBuilder::default()
                .with_max_queue_size(QUEUE)
                .with_scheduled_delay(EXPORT_EVERY)
                .build(),
        )
        .build();
    let processor = Bounded {
        inner: batches,
        pending,
        full: dropped("queue_full"),
    };
    // OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME still apply (the builder reads them).
    let resource = Resource::builder()
        .with_service_name(SERVICE)
        .with_attributes([
            KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
            KeyValue::new("k8s.namespace.name", config.namespace.clone()),
            KeyValue::new("grokcast.voice_agent", config.voice_agent.clone()),
        ])
        .with_attributes(
            std::env::var("HOSTNAME")
                .ok()
                .map(|pod| KeyValue::new("k8s.pod.name", pod)),
        )
        .build();
    SdkTracerProvider::builder()
        // The call's span decides for its whole trace: turns follow their call.
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            sample_ratio,
        ))))
        .with_span_processor(processor)
        .with_resource(resource)
        .build()
}

/// The `tracing` layer that makes each `call` span a trace. Nothing else is traced: not the
/// HTTP and gRPC libraries' spans, and no log events (an error line may quote what a model
/// server answered, and with it the caller's words; a turn's failure reaches its span as a
/// summary instead).
fn call_layer<S>(tracer: opentelemetry_sdk::trace::SdkTracer) -> BoxedLayer<S>
where
    S: Subscriber + for<'a> LookupSpan<'a> + Send + Sync,
{
    tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_location(false)
        .with_threads(false)
        .with_tracked_inactivity(false)
        .with_filter(tracing_subscriber::filter::filter_fn(|meta| {
            meta.is_span() && meta.name() == "call" && meta.target().starts_with("grokcast")
        }))
        .boxed()
}

/// Forwards batches to the real exporter and counts what became of each span.
#[derive(Debug)]
struct Counting<E> {
    inner: E,
    /// Spans handed to the batch processor whose export has not finished.
    pending: Arc<AtomicUsize>,
    exported: IntCounter,
    failed: IntCounter,
}

/// Settles one batch's count however its export ends: sent, failed, or abandoned.
struct Settle<'a> {
    spans: usize,
    pending: &'a AtomicUsize,
    failed: &'a IntCounter,
    done: bool,
}

impl Drop for Settle<'_> {
    fn drop(&mut self) {
        self.pending.fetch_sub(self.spans, Ordering::AcqRel);
        if !self.done {
            self.failed.inc_by(self.spans as u64);
        }
    }
}

impl<E: SpanExporter> SpanExporter for Counting<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let mut settle = Settle {
            spans: batch.len(),
            pending: &self.pending,
            failed: &self.failed,
            done: false,
        };
        let result = self.inner.export(batch).await;
        if result.is_ok() {
            settle.done = true;
            self.exported.inc_by(settle.spans as u64);
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// The batch processor, with its queue's overflow counted: a span is passed on only while
/// fewer than [`QUEUE`] wait, so the processor itself (whose own drops are only logged) never
/// drops one.
#[derive(Debug)]
struct Bounded {
    inner: BatchSpanProcessor,
    pending: Arc<AtomicUsize>,
    full: IntCounter,
}

impl SpanProcessor for Bounded {
    fn on_start(&self, span: &mut opentelemetry_sdk::trace::Span, cx: &Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        if self.pending.fetch_add(1, Ordering::AcqRel) >= QUEUE {
            self.pending.fetch_sub(1, Ordering::AcqRel);
            self.full.inc();
            return;
        }
        self.inner.on_end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// Names the current `call` span's trace after the agent and its outcome (no-ops when
/// traces are off).
pub(crate) fn describe_call(config: &AgentConfig) {
    let span = tracing::Span::current();
    span.set_attribute("grokcast.voice_agent", config.voice_agent.clone());
    span.set_attribute("k8s.namespace.name", config.namespace.clone());
}

/// Records how the current call ended on its span.
pub(crate) fn call_ended(outcome: crate::metrics::Outcome) {
    let span = tracing::Span::current();
    span.set_attribute("grokcast.call.outcome", outcome.label());
    if matches!(
        outcome,
        crate::metrics::Outcome::ProtocolError | crate::metrics::Outcome::Disconnected
    ) {
        span.set_status(Status::error(outcome.label()));
    }
}

/// One turn's trace, filled in by the tasks that see each part of it and sent when the last
/// of them lets go. Costs one allocation a turn when the call is not traced.
pub(crate) struct TurnTrace(Option<Recorded>);

struct Recorded {
    /// The call's span.
    parent: Context,
    number: u64,
    voice_agent: String,
    namespace: String,
    state: Mutex<TurnState>,
}

#[derive(Debug, Default)]
struct TurnState {
    /// False for a speculative reply until the turn takes it (a dropped one is no turn).
    is_turn: bool,
    /// The caller's voice ended; the endpointing after it.
    caller_stopped: Option<Instant>,
    endpointing: Duration,
    /// The stages up to the first audio, as the caller waited for them.
    timings: Option<TurnTimings>,
    /// The turn's first frame went out.
    first_frame: Option<Instant>,
    /// The caller's side plays the turn's audio until then.
    played_until: Option<Instant>,
    /// The turn's task was done (it may still be playing).
    work_done: Option<Instant>,
    /// The call moved past the turn (barge-in, the next turn, the call's end).
    ended: Option<Instant>,
    barge_in: bool,
    speculative_hit: bool,
    resumed: bool,
    /// Stage label and summary ([`crate::backend::BackendError::summary`]) of the backend
    /// error the turn apologised for.
    error: Option<(&'static str, String)>,
    /// The tools the turn called: (tool label, outcome label, started, took).
    tools: Vec<(String, &'static str, Instant, Duration)>,
}

impl TurnTrace {
    /// A trace for turn `number` of the current call (the `call` span must be current);
    /// `speculative` when it is a reply started before the turn ended.
    pub(crate) fn new(config: &AgentConfig, number: u64, speculative: bool) -> Arc<Self> {
        let parent = tracing::Span::current().context();
        if !parent.span().span_context().is_sampled() {
            return Arc::new(Self(None));
        }
        Arc::new(Self(Some(Recorded {
            parent,
            number,
            voice_agent: config.voice_agent.clone(),
            namespace: config.namespace.clone(),
            state: Mutex::new(TurnState {
                is_turn: !speculative,
                ..TurnState::default()
            }),
        })))
    }

    fn with(&self, f: impl FnOnce(&mut TurnState)) {
        if let Some(r) = &self.0 {
            f(&mut r.state.lock().unwrap_or_else(|p| p.into_inner()));
        }
    }

    /// Where the turn began: the end of the caller's voice, and the endpointing after it.
    pub(crate) fn began(&self, caller_stopped: Instant, endpointing: Duration) {
        self.with(|s| {
            s.caller_stopped = Some(caller_stopped);
            s.endpointing = endpointing;
        });
    }

    /// A speculative reply the turn took.
    pub(crate) fn taken(&self, caller_stopped: Instant, endpointing: Duration) {
        self.with(|s| {
            s.is_turn = true;
            s.speculative_hit = true;
            s.caller_stopped = Some(caller_stopped);
            s.endpointing = endpointing;
        });
    }

    /// The turn's first frame is going out, after these stages (the frame itself is
    /// [`TurnTrace::playing`]'s).
    pub(crate) fn first_audio(&self, timings: TurnTimings) {
        self.with(|s| s.timings = Some(timings));
    }

    /// A frame of the turn went out at `sent`; the caller hears it until `until`.
    pub(crate) fn playing(&self, sent: Instant, until: Option<Instant>) {
        self.with(|s| {
            s.first_frame.get_or_insert(sent);
            s.played_until = until.or(s.played_until);
        });
    }

    /// The turn apologised for a failed backend.
    pub(crate) fn failed(&self, stage: &'static str, message: String) {
        self.with(|s| s.error = Some((stage, message)));
    }

    /// The turn called `tool` (its metric label, never the arguments), from `started` for
    /// `took`, with `outcome` ([`crate::tools::ToolOutcome::label`]).
    pub(crate) fn tool(&self, tool: &str, outcome: &'static str, started: Instant, took: Duration) {
        self.with(|s| s.tools.push((tool.to_owned(), outcome, started, took)));
    }

    /// The turn resumed a reply a false interruption cut.
    pub(crate) fn resumed(&self) {
        self.with(|s| s.resumed = true);
    }

    /// The turn's task finished its work.
    pub(crate) fn work_done(&self) {
        self.with(|s| s.work_done = Some(Instant::now()));
    }

    /// The call moved past the turn; `barge_in` when the caller cut it.
    pub(crate) fn ended(&self, barge_in: bool) {
        self.with(|s| {
            s.ended.get_or_insert_with(Instant::now);
            s.barge_in |= barge_in;
        });
    }
}

impl Drop for TurnTrace {
    fn drop(&mut self) {
        if let Some(recorded) = self.0.take() {
            recorded.send();
        }
    }
}

impl Recorded {
    fn send(self) {
        let s = self.state.into_inner().unwrap_or_else(|p| p.into_inner());
        let Some(caller_stopped) = s.timings.map(|t| t.caller_stopped).or(s.caller_stopped) else {
            return;
        };
        if !s.is_turn {
            return;
        }
        let now = Instant::now();
        let wall = Clock::now(now);
        let ended = s.ended.unwrap_or(now).max(caller_stopped);
        // Played out, or cut where the call moved on.
        let playout_end = s.played_until.map(|p| p.min(ended));
        let end = s
            .work_done
            .into_iter()
            .chain(playout_end)
            .chain(s.first_frame)
            .max()
            .map_or(ended, |last| last.min(ended))
            .max(caller_stopped);

        let tracer = opentelemetry::global::tracer(SERVICE);
        let mut attributes = vec![
            KeyValue::new("grokcast.voice_agent", self.voice_agent),
            KeyValue::new("k8s.namespace.name", self.namespace),
            KeyValue::new("grokcast.turn.number", self.number as i64),
            KeyValue::new("grokcast.turn.barge_in", s.barge_in),
            KeyValue::new("grokcast.turn.speculative_hit", s.speculative_hit),
        ];
        if s.resumed {
            attributes.push(KeyValue::new("grokcast.turn.resumed", true));
        }
        if let (Some(t), Some(sent)) = (s.timings, s.first_frame) {
            let latency = sent.saturating_duration_since(t.caller_stopped);
            attributes.push(KeyValue::new(
                "grokcast.turn.latency_ms",
                latency.as_secs_f64() * 1e3,
            ));
        }
        if let Some((stage, _)) = &s.error {
            attributes.push(KeyValue::new("grokcast.turn.backend_error", *stage));
        }
        let mut turn = tracer
            .span_builder("turn")
            .with_start_time(wall.at(caller_stopped))
            .with_attributes(attributes)
            .start_with_context(&tracer, &self.parent);
        if let Some((_, summary)) = s.error {
            turn.set_status(Status::error(summary));
        }
        let cx = self.parent.with_span(turn);
        let stage = |name: &'static str, from: Instant, took: Duration| {
            let mut span = tracer
                .span_builder(name)
                .with_start_time(wall.at(from))
                .start_with_context(&tracer, &cx);
            span.end_with_timestamp(wall.at(from + took));
        };
        match s.timings {
            // The stages one after another, as `grokcast_stage_latency_seconds` counts them.
            Some(t) => {
                stage("endpointing", t.caller_stopped, t.endpointing);
                let stt = t.caller_stopped + t.endpointing;
                stage("stt", stt, t.stt);
                let llm = stt + t.stt;
                stage("llm.first_token", llm, t.llm_first_token);
                stage("llm.first_clause", llm, t.llm_first_clause);
                stage(
                    "tts.first_audio",
                    llm + t.llm_first_clause,
                    t.tts_first_audio,
                );
            }
            None => stage("endpointing", caller_stopped, s.endpointing),
        }
        if let (Some(first), Some(until)) = (s.first_frame, playout_end.or(Some(end))) {
            stage("playout", first, until.saturating_duration_since(first));
        }
        for (tool, outcome, from, took) in s.tools {
            let mut span = tracer
                .span_builder("tool")
                .with_start_time(wall.at(from))
                .with_attributes([
                    KeyValue::new("grokcast.tool.name", tool),
                    KeyValue::new("grokcast.tool.outcome", outcome),
                ])
                .start_with_context(&tracer, &cx);
            if outcome != crate::tools::ToolOutcome::Ok.label() {
                span.set_status(Status::error(outcome));
            }
            span.end_with_timestamp(wall.at(from + took));
        }
        cx.span().end_with_timestamp(wall.at(end));
    }
}

/// This process's monotonic clock against the wall clock the spans carry.
struct Clock {
    instant: Instant,
    wall: SystemTime,
}

impl Clock {
    fn now(instant: Instant) -> Self {
        Self {
            instant,
            wall: SystemTime::now(),
        }
    }

    fn at(&self, t: Instant) -> SystemTime {
        if t >= self.instant {
            self.wall + (t - self.instant)
        } else {
            self.wall - (self.instant - t)
        }
    }
}
