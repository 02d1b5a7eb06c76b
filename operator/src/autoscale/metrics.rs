//! The autoscaler's own metrics: what it decided, what it held, and GPUs per pool. The Grafana
//! dashboard draws replicas and GPUs from these, so it needs no kube-state-metrics.

use ::prometheus::{GaugeVec, IntCounter, IntCounterVec, Opts, Registry};

use super::decide::HoldReason;
use super::plan::{Plan, Snapshot};

/// Registered autoscaler metrics.
#[derive(Clone, Debug)]
pub struct AutoscalerMetrics {
    /// `grokcast_autoscaler_replicas{kind,namespace,name,state=current|desired}`.
    pub replicas: GaugeVec,
    /// `grokcast_autoscaler_slo_seconds{namespace,voiceagent}`.
    pub slo_seconds: GaugeVec,
    /// `grokcast_autoscaler_gpus{namespace,pool,product}`: GPUs the pool's replicas request.
    pub gpus: GaugeVec,
    /// `grokcast_autoscaler_gpus_missing{namespace,pool,product}`.
    pub gpus_missing: GaugeVec,
    /// `grokcast_autoscaler_scale_events_total{kind,namespace,direction,reason}`.
    pub scale_events: IntCounterVec,
    /// `grokcast_autoscaler_holds_total{reason}`: objects held for unusable metrics.
    pub holds: IntCounterVec,
    /// `grokcast_autoscaler_evaluations_total`: periods this replica ran as leader. Status
    /// is written only when something visible changes, so this, not a timestamp, shows the
    /// loop is alive.
    pub evaluations: IntCounter,
}

impl AutoscalerMetrics {
    /// Creates the metrics and registers them.
    pub fn register(registry: &Registry) -> Result<AutoscalerMetrics, ::prometheus::Error> {
        let gauge =
            |name: &str, help: &str, labels: &[&str]| GaugeVec::new(Opts::new(name, help), labels);
        let metrics = AutoscalerMetrics {
            replicas: gauge(
                "grokcast_autoscaler_replicas",
                "Replicas of autoscaled objects: current spec.replicas and the desired count",
                &["kind", "namespace", "name", "state"],
            )?,
            slo_seconds: gauge(
                "grokcast_autoscaler_slo_seconds",
                "The VoiceAgent's turn latency p95 objective",
                &["namespace", "voiceagent"],
            )?,
            gpus: gauge(
                "grokcast_autoscaler_gpus",
                "GPUs requested by an autoscaled ModelPool's replicas",
                &["namespace", "pool", "product"],
            )?,
            gpus_missing: gauge(
                "grokcast_autoscaler_gpus_missing",
                "GPUs a ModelPool lacks to reach the replicas it wants",
                &["namespace", "pool", "product"],
            )?,
            scale_events: IntCounterVec::new(
                Opts::new(
                    "grokcast_autoscaler_scale_events_total",
                    "Replica changes written",
                ),
                &["kind", "namespace", "direction", "reason"],
            )?,
            holds: IntCounterVec::new(
                Opts::new(
                    "grokcast_autoscaler_holds_total",
                    "Objects whose replicas were held",
                ),
                &["reason"],
            )?,
            evaluations: IntCounter::new(
                "grokcast_autoscaler_evaluations_total",
                "Autoscaler periods run by the leader",
            )?,
        };
        registry.register(Box::new(metrics.replicas.clone()))?;
        registry.register(Box::new(metrics.slo_seconds.clone()))?;
        registry.register(Box::new(metrics.gpus.clone()))?;
        registry.register(Box::new(metrics.gpus_missing.clone()))?;
        registry.register(Box::new(metrics.scale_events.clone()))?;
        registry.register(Box::new(metrics.holds.clone()))?;
        registry.register(Box::new(metrics.evaluations.clone()))?;
        for hold in [
            HoldReason::PrometheusUnavailable,
            HoldReason::MetricsMissing,
            HoldReason::MetricsStale,
        ] {
            metrics.holds.with_label_values(&[hold.as_str()]);
        }
        Ok(metrics)
    }

    /// Records one period's plan.
    pub fn observe(&self, snapshot: &Snapshot, plan: &Plan) {
        // Gauges are rebuilt each period so deleted objects disappear.
        self.replicas.reset();
        self.slo_seconds.reset();
        self.gpus.reset();
        self.gpus_missing.reset();
        for (agent, input) in plan.agents.iter().zip(&snapshot.agents) {
            let (namespace, name) = split(&agent.key);
            self.replicas
                .with_label_values(&["VoiceAgent", namespace, name, "current"])
                .set(f64::from(agent.current));
            self.replicas
                .with_label_values(&["VoiceAgent", namespace, name, "desired"])
                .set(f64::from(agent.decision.desired));
            self.slo_seconds
                .with_label_values(&[namespace, name])
                .set(input.spec.slo_p95_ms / 1000.0);
            self.count(("VoiceAgent", namespace), agent.current, agent.decision);
        }
        for pool in &plan.pools {
            let (namespace, name) = split(&pool.key);
            let product = pool.product.as_deref().unwrap_or("");
            let per = snapshot
                .pools
                .iter()
                .find(|p| p.key == pool.key)
                .map_or(0, |p| p.gpus_per_replica);
            self.replicas
                .with_label_values(&["ModelPool", namespace, name, "current"])
                .set(f64::from(pool.current));
            self.replicas
                .with_label_values(&["ModelPool", namespace, name, "desired"])
                .set(f64::from(pool.decision.desired));
            self.gpus
                .with_label_values(&[namespace, name, product])
                .set(f64::from(pool.decision.desired.saturating_mul(per)));
            self.gpus_missing
                .with_label_values(&[namespace, name, product])
                .set(f64::from(pool.gpus_missing));
            self.count(("ModelPool", namespace), pool.current, pool.decision);
        }
    }

    fn count(
        &self,
        (kind, namespace): (&str, &str),
        current: u32,
        decision: super::decide::Decision,
    ) {
        if let Some(hold) = decision.held {
            self.holds.with_label_values(&[hold.as_str()]).inc();
        }
        let direction = match decision.desired.cmp(&current) {
            std::cmp::Ordering::Greater => "up",
            std::cmp::Ordering::Less => "down",
            std::cmp::Ordering::Equal => return,
        };
        self.scale_events
            .with_label_values(&[kind, namespace, direction, decision.reason.as_str()])
            .inc();
    }
}

fn split(key: &str) -> (&str, &str) {
    key.split_once('/').unwrap_or(("", key))
}
