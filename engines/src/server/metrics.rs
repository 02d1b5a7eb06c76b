//! Prometheus metrics of the model server, by route.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Buckets for a phone turn's stages: 10 ms to 10 s, dense around 0.1-2 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0,
];

/// The server's metrics.
#[derive(Debug, Clone)]
pub struct ServerMetrics {
    registry: Registry,
    /// Whole-request latency, by route and status code.
    pub request_seconds: HistogramVec,
    /// Time to the first token (chat) or first audio bytes (speech), by route.
    pub first_output_seconds: HistogramVec,
    /// Requests admitted but not yet running, by route.
    pub queue_depth: IntGaugeVec,
    /// Requests, by route and status code.
    pub requests_total: IntCounterVec,
}

impl ServerMetrics {
    /// Creates and registers the metrics.
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let request_seconds = HistogramVec::new(
            HistogramOpts::new(
                "grokcast_engine_request_duration_seconds",
                "Time to serve a model request, to the last byte.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["route", "code"],
        )?;
        let first_output_seconds = HistogramVec::new(
            HistogramOpts::new(
                "grokcast_engine_time_to_first_output_seconds",
                "Time from request to the first streamed token or audio.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["route"],
        )?;
        let queue_depth = IntGaugeVec::new(
            Opts::new(
                "grokcast_engine_queue_depth",
                "Requests waiting for an engine.",
            ),
            &["route"],
        )?;
        let requests_total = IntCounterVec::new(
            Opts::new("grokcast_engine_requests_total", "Requests served."),
            &["route", "code"],
        )?;
        registry.register(Box::new(request_seconds.clone()))?;
        registry.register(Box::new(first_output_seconds.clone()))?;
        registry.register(Box::new(queue_depth.clone()))?;
        registry.register(Box::new(requests_total.clone()))?;
        Ok(Self {
            registry,
            request_seconds,
            first_output_seconds,
            queue_depth,
            requests_total,
        })
    }

    /// Text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding into a Vec cannot fail for the text format.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}
