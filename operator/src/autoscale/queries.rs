//! The PromQL the autoscaler runs, as templates that operator flags and per-object annotations
//! can override, and the code that turns their answers into decision inputs.
//!
//! Placeholders: `{namespace}`, `{voiceagent}` (VoiceAgent name), `{pool}` (ModelPool name,
//! which is also its Service name), `{window}` (the VoiceAgent's `slo.window`; for pools the
//! autoscaler's pool window) and `{quantile}` (0.5 or 0.95).

use std::collections::BTreeMap;
use std::time::Duration;

use super::decide::{AgentObservation, EngineObservation, HoldReason, Stage};
use super::prometheus::{PrometheusClient, PrometheusError};

/// Annotation prefix for per-object query overrides, e.g.
/// `autoscaling.grokcast.io/turn-latency-query`.
pub const ANNOTATION_PREFIX: &str = "autoscaling.grokcast.io/";

/// Default: turn latency quantile over the SLO window, in seconds.
pub const TURN_LATENCY: &str = "histogram_quantile({quantile}, sum by (le) (rate(grokcast_turn_latency_seconds_bucket{namespace=\"{namespace}\",voiceagent=\"{voiceagent}\"}[{window}])))";
/// Default: per-stage p95 over the SLO window, in seconds, one sample per `stage` label.
pub const STAGE_LATENCY: &str = "histogram_quantile(0.95, sum by (le, stage) (rate(grokcast_stage_latency_seconds_bucket{namespace=\"{namespace}\",voiceagent=\"{voiceagent}\"}[{window}])))";
/// Default: calls in progress over all the agent's pods.
pub const ACTIVE_CALLS: &str =
    "sum(grokcast_active_calls{namespace=\"{namespace}\",voiceagent=\"{voiceagent}\"})";
/// Default: seconds since the newest active-calls sample was scraped.
pub const SAMPLE_AGE: &str = "time() - max(timestamp(grokcast_active_calls{namespace=\"{namespace}\",voiceagent=\"{voiceagent}\"}))";
/// Default for vLLM pools: engine time to first token p95, seconds.
pub const VLLM_FIRST_TOKEN: &str = "histogram_quantile(0.95, sum by (le) (rate(vllm:time_to_first_token_seconds_bucket{namespace=\"{namespace}\",service=\"{pool}\"}[{window}])))";
/// Default for vLLM pools serving Whisper (role stt): whole-request latency p95, seconds. A
/// transcription's worth is its last token, and the pool's `targetLatencyMs` is the time to
/// transcribe one caller turn, so this and not the first token is what it is held to.
pub const VLLM_REQUEST_LATENCY: &str = "histogram_quantile(0.95, sum by (le) (rate(vllm:e2e_request_latency_seconds_bucket{namespace=\"{namespace}\",service=\"{pool}\"}[{window}])))";
/// Default for vLLM pools: requests waiting for a slot.
pub const VLLM_WAITING: &str =
    "sum(vllm:num_requests_waiting{namespace=\"{namespace}\",service=\"{pool}\"})";
/// Default for `grokcast-serve` pools: time to first token or audio p95, seconds.
pub const GROKCAST_FIRST_OUTPUT: &str = "histogram_quantile(0.95, sum by (le) (rate(grokcast_engine_time_to_first_output_seconds_bucket{namespace=\"{namespace}\",service=\"{pool}\"}[{window}])))";
/// Default for `grokcast-serve` pools: requests queued for an engine.
pub const GROKCAST_QUEUE: &str =
    "sum(grokcast_engine_queue_depth{namespace=\"{namespace}\",service=\"{pool}\"})";

/// The query templates for VoiceAgents.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentQueries {
    /// Turn latency quantile (`{quantile}` is filled with 0.5 and 0.95), seconds.
    pub turn_latency: String,
    /// Per-stage p95 by `stage` label, seconds.
    pub stage_latency: String,
    /// Active calls.
    pub active_calls: String,
    /// Age of the newest sample, seconds.
    pub sample_age: String,
}

impl Default for AgentQueries {
    fn default() -> Self {
        AgentQueries {
            turn_latency: TURN_LATENCY.into(),
            stage_latency: STAGE_LATENCY.into(),
            active_calls: ACTIVE_CALLS.into(),
            sample_age: SAMPLE_AGE.into(),
        }
    }
}

impl AgentQueries {
    /// These templates with any `autoscaling.grokcast.io/<name>-query` annotation applied
    /// (`turn-latency`, `stage-latency`, `active-calls`, `sample-age`).
    pub fn with_overrides(&self, annotations: &BTreeMap<String, String>) -> AgentQueries {
        let pick = |name: &str, default: &String| {
            annotation(annotations, name).unwrap_or_else(|| default.clone())
        };
        AgentQueries {
            turn_latency: pick("turn-latency", &self.turn_latency),
            stage_latency: pick("stage-latency", &self.stage_latency),
            active_calls: pick("active-calls", &self.active_calls),
            sample_age: pick("sample-age", &self.sample_age),
        }
    }
}

/// The query templates for one pool's engine metrics; `None` where the engine exports none.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EngineQueries {
    /// The engine's own latency p95 that the pool's `targetLatencyMs` is held to, seconds:
    /// time to first token or audio, or the whole transcription for vLLM serving Whisper.
    pub first_token: Option<String>,
    /// Requests waiting.
    pub waiting: Option<String>,
}

impl EngineQueries {
    /// The defaults for a pool's engine and role (`None` where the spec leaves the role to the
    /// engine).
    pub fn for_pool(
        engine: grokcast_crds::Engine,
        role: Option<grokcast_crds::Role>,
    ) -> EngineQueries {
        match (engine, role) {
            (grokcast_crds::Engine::Vllm, Some(grokcast_crds::Role::Stt)) => EngineQueries {
                first_token: Some(VLLM_REQUEST_LATENCY.into()),
                waiting: Some(VLLM_WAITING.into()),
            },
            _ => EngineQueries::for_engine(engine),
        }
    }

    /// The defaults for an engine in its natural role.
    pub fn for_engine(engine: grokcast_crds::Engine) -> EngineQueries {
        use grokcast_crds::Engine;
        match engine {
            Engine::Vllm => EngineQueries {
                first_token: Some(VLLM_FIRST_TOKEN.into()),
                waiting: Some(VLLM_WAITING.into()),
            },
            Engine::Grokcast | Engine::Csm => EngineQueries {
                first_token: Some(GROKCAST_FIRST_OUTPUT.into()),
                waiting: Some(GROKCAST_QUEUE.into()),
            },
            // speaches exports no latency metrics of its own, and a custom server's are
            // unknown; the agent's stage histograms still measure them.
            Engine::Whisper | Engine::Custom => EngineQueries::default(),
        }
    }

    /// These templates with `autoscaling.grokcast.io/first-token-query` and
    /// `.../waiting-requests-query` applied; an empty annotation switches a query off.
    pub fn with_overrides(&self, annotations: &BTreeMap<String, String>) -> EngineQueries {
        let pick = |name: &str, default: &Option<String>| match annotation(annotations, name) {
            Some(q) if q.trim().is_empty() => None,
            Some(q) => Some(q),
            None => default.clone(),
        };
        EngineQueries {
            first_token: pick("first-token", &self.first_token),
            waiting: pick("waiting-requests", &self.waiting),
        }
    }
}

fn annotation(annotations: &BTreeMap<String, String>, name: &str) -> Option<String> {
    annotations
        .get(&format!("{ANNOTATION_PREFIX}{name}-query"))
        .cloned()
}

/// Values substituted into a template.
#[derive(Clone, Copy, Debug)]
pub struct Vars<'a> {
    /// Namespace of the object.
    pub namespace: &'a str,
    /// VoiceAgent name (empty for pools).
    pub voiceagent: &'a str,
    /// ModelPool name (empty for agents).
    pub pool: &'a str,
    /// Range window such as `5m`.
    pub window: &'a str,
}

/// Fills a template's placeholders.
pub fn render(template: &str, vars: Vars<'_>, quantile: &str) -> String {
    template
        .replace("{namespace}", vars.namespace)
        .replace("{voiceagent}", vars.voiceagent)
        .replace("{pool}", vars.pool)
        .replace("{window}", vars.window)
        .replace("{quantile}", quantile)
}

/// What went wrong reading an object's metrics: why replicas are held and the error to log.
#[derive(Debug)]
pub struct ObserveFailure {
    /// The hold to apply.
    pub hold: HoldReason,
    /// The error behind it.
    pub error: PrometheusError,
}

fn failure(error: PrometheusError) -> ObserveFailure {
    // A rejected query is the user's override (or a Prometheus too old for it): the metrics
    // are as good as missing, and the message says which query.
    let hold = if error.is_unavailable() {
        HoldReason::PrometheusUnavailable
    } else {
        HoldReason::MetricsMissing
    };
    ObserveFailure { hold, error }
}

fn seconds_to_ms(value: Option<f64>) -> Option<f64> {
    value.filter(|v| v.is_finite()).map(|v| v * 1000.0)
}

/// Reads one VoiceAgent's latencies, calls and sample age.
pub async fn observe_agent(
    prometheus: &PrometheusClient,
    queries: &AgentQueries,
    vars: Vars<'_>,
) -> Result<AgentObservation, ObserveFailure> {
    let q = |template: &str, quantile: &str| render(template, vars, quantile);
    let turn_p50 = prometheus
        .query_value(&q(&queries.turn_latency, "0.5"))
        .await
        .map_err(failure)?;
    let turn_p95 = prometheus
        .query_value(&q(&queries.turn_latency, "0.95"))
        .await
        .map_err(failure)?;
    let stages = prometheus
        .query(&q(&queries.stage_latency, "0.95"))
        .await
        .map_err(failure)?;
    let calls = prometheus
        .query_value(&q(&queries.active_calls, ""))
        .await
        .map_err(failure)?;
    let age = prometheus
        .query_value(&q(&queries.sample_age, ""))
        .await
        .map_err(failure)?;
    let mut observation = AgentObservation {
        turn_p50_ms: seconds_to_ms(turn_p50),
        turn_p95_ms: seconds_to_ms(turn_p95),
        active_calls: calls.filter(|c| c.is_finite()),
        sample_age: age
            .filter(|a| a.is_finite() && *a >= 0.0)
            .map(Duration::from_secs_f64),
        ..AgentObservation::default()
    };
    for sample in stages {
        let Some(label) = sample.labels.get("stage") else {
            continue;
        };
        if let Some(stage) = Stage::ALL.into_iter().find(|s| s.label() == label) {
            observation
                .stage_p95_ms
                .set(stage, seconds_to_ms(Some(sample.value)));
        }
    }
    Ok(observation)
}

/// Reads one pool's engine metrics; `Ok(None)` when the engine has no queries.
pub async fn observe_engine(
    prometheus: &PrometheusClient,
    queries: &EngineQueries,
    vars: Vars<'_>,
) -> Result<Option<EngineObservation>, ObserveFailure> {
    if queries.first_token.is_none() && queries.waiting.is_none() {
        return Ok(None);
    }
    let mut engine = EngineObservation::default();
    if let Some(template) = &queries.first_token {
        let value = prometheus
            .query_value(&render(template, vars, "0.95"))
            .await
            .map_err(failure)?;
        engine.first_token_p95_ms = seconds_to_ms(value);
    }
    if let Some(template) = &queries.waiting {
        let value = prometheus
            .query_value(&render(template, vars, ""))
            .await
            .map_err(failure)?;
        engine.waiting_requests = value.filter(|v| v.is_finite());
    }
    Ok(Some(engine))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn templates_render_for_an_agent() {
        let vars = Vars {
            namespace: "voice",
            voiceagent: "receptionist",
            pool: "",
            window: "5m",
        };
        assert_eq!(
            render(TURN_LATENCY, vars, "0.95"),
            "histogram_quantile(0.95, sum by (le) (rate(grokcast_turn_latency_seconds_bucket{namespace=\"voice\",voiceagent=\"receptionist\"}[5m])))"
        );
        let vars = Vars {
            namespace: "voice",
            voiceagent: "",
            pool: "gemma-27b",
            window: "1m",
        };
        assert_eq!(
            render(VLLM_WAITING, vars, ""),
            "sum(vllm:num_requests_waiting{namespace=\"voice\",service=\"gemma-27b\"})"
        );
    }

    #[test]
    fn annotations_override_one_query_each() {
        let annotations: BTreeMap<String, String> = [
            (
                format!("{ANNOTATION_PREFIX}active-calls-query"),
                "sum(my_calls)".to_owned(),
            ),
            (
                format!("{ANNOTATION_PREFIX}waiting-requests-query"),
                " ".to_owned(),
            ),
            ("unrelated".to_owned(), "x".to_owned()),
        ]
        .into();
        let agent = AgentQueries::default().with_overrides(&annotations);
        assert_eq!(agent.active_calls, "sum(my_calls)");
        assert_eq!(agent.turn_latency, TURN_LATENCY);
        let engine =
            EngineQueries::for_engine(grokcast_crds::Engine::Vllm).with_overrides(&annotations);
        assert_eq!(engine.first_token.as_deref(), Some(VLLM_FIRST_TOKEN));
        assert_eq!(
            engine.waiting, None,
            "an empty annotation switches the query off"
        );
        // The CSM image is grokcast-serve: its own first-output and queue metrics.
        assert_eq!(
            EngineQueries::for_engine(grokcast_crds::Engine::Csm),
            EngineQueries::for_engine(grokcast_crds::Engine::Grokcast)
        );
        assert_eq!(
            EngineQueries::for_engine(grokcast_crds::Engine::Whisper),
            EngineQueries::default()
        );
        // vLLM serving Whisper is held to whole transcriptions; as an LLM, to first tokens.
        let stt =
            EngineQueries::for_pool(grokcast_crds::Engine::Vllm, Some(grokcast_crds::Role::Stt));
        assert_eq!(stt.first_token.as_deref(), Some(VLLM_REQUEST_LATENCY));
        assert_eq!(stt.waiting.as_deref(), Some(VLLM_WAITING));
        assert_eq!(
            EngineQueries::for_pool(grokcast_crds::Engine::Vllm, Some(grokcast_crds::Role::Llm)),
            EngineQueries::for_engine(grokcast_crds::Engine::Vllm)
        );
    }
}
