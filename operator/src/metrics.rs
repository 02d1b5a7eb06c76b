//! Prometheus metrics of the operator itself. Labels are static strings (controller names,
//! error variant names), never formatted values, so cardinality stays fixed.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};

/// The operator's metrics and the registry that serves them.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Reconciles started, by controller.
    pub reconciles: IntCounterVec,
    /// Reconciles that failed, by controller and static error reason.
    pub failures: IntCounterVec,
    /// Reconcile duration, by controller.
    pub duration: HistogramVec,
    /// Children server-side applied or skipped as unchanged, by kind and outcome
    /// (`applied`, `skipped`).
    pub child_applies: IntCounterVec,
    /// 1 while this replica holds the leader lease.
    pub leader: IntGauge,
}

impl Metrics {
    /// Create and register every metric.
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let reconciles = IntCounterVec::new(
            Opts::new("grokcast_operator_reconciles_total", "Reconciles started"),
            &["controller"],
        )?;
        let failures = IntCounterVec::new(
            Opts::new(
                "grokcast_operator_reconcile_errors_total",
                "Reconciles that failed, by error reason",
            ),
            &["controller", "reason"],
        )?;
        // Most reconciles are a handful of API round trips: 1 ms to a few seconds.
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "grokcast_operator_reconcile_duration_seconds",
                "Time to reconcile one object",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
            &["controller"],
        )?;
        let child_applies = IntCounterVec::new(
            Opts::new(
                "grokcast_operator_child_applies_total",
                "Children server-side applied, or skipped because the last apply is still in place",
            ),
            &["kind", "outcome"],
        )?;
        let leader = IntGauge::new(
            "grokcast_operator_leader",
            "1 while this replica holds the leader lease",
        )?;
        registry.register(Box::new(reconciles.clone()))?;
        registry.register(Box::new(failures.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(child_applies.clone()))?;
        registry.register(Box::new(leader.clone()))?;
        Ok(Self {
            registry,
            reconciles,
            failures,
            duration,
            child_applies,
            leader,
        })
    }

    /// The registry, so other modules (the autoscaler) can add their metrics.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Text exposition format.
    pub fn encode(&self) -> String {
        let mut buf = Vec::new();
        // Encoding our own well-formed families into a Vec cannot fail.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}
