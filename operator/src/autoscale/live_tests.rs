//! The Prometheus half of the autoscaler against a real Prometheus server (Debian's
//! `prometheus` package) scraping a real `/metrics` endpoint on 127.0.0.1 every second.
//!
//! The endpoint stands in for an agent pod and a `grokcast-serve` pool: it is served by this
//! test with the `prometheus` crate, under the agent's metric names, labels and bucket layout
//! (see `agent/src/metrics.rs`), so the PromQL the operator runs in production is what runs
//! here. The test drives "turns" into it with a slow LLM stage, so the SLO breaches.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ::prometheus::{Histogram, HistogramOpts, HistogramVec, IntGauge, Registry};
use grokcast_e2e::prometheus::{Target, TestPrometheus};

use super::decide::{
    AgentSpec, Behaviour, Bounds, HoldReason, PoolSpec, Reason, Role, StageValues,
};
use super::plan::{AgentInput, Autoscaler, PoolInput, Snapshot};
use super::prometheus::{PrometheusClient, PrometheusConfig};
use super::queries::{self, AgentQueries, EngineQueries, Vars};

const TURN_BUCKETS: &[f64] = &[
    0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.75, 0.8, 0.9, 1.0, 1.25, 1.5, 2.0, 3.0, 5.0,
];
const STAGE_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0,
    5.0,
];

/// The prometheus binary, or `None` (printed) when it is absent and not required.
fn prometheus_or_skip() -> Option<PathBuf> {
    let binary = grokcast_e2e::prometheus::binary();
    if binary.is_none() {
        let required = std::env::var_os("GROKCAST_REQUIRE_PROMETHEUS").is_some()
            || std::env::var_os("GROKCAST_REQUIRE_MODELS").is_some();
        assert!(
            !required,
            "prometheus binary not found (apt-get install prometheus, or set GROKCAST_PROMETHEUS_BIN)"
        );
        eprintln!("SKIPPED: no prometheus binary on PATH (apt-get install prometheus)");
    }
    binary
}

/// The exporter standing in for one agent pod and one grokcast-serve replica.
struct Exporter {
    registry: Registry,
    turn: Histogram,
    stage: HistogramVec,
    calls: IntGauge,
    engine_first_output: Histogram,
}

impl Exporter {
    fn new() -> Exporter {
        let labels = [("voiceagent", "receptionist"), ("namespace", "voice")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let registry = Registry::new_custom(None, Some(labels)).unwrap();
        let turn = Histogram::with_opts(
            HistogramOpts::new("grokcast_turn_latency_seconds", "turn")
                .buckets(TURN_BUCKETS.to_vec()),
        )
        .unwrap();
        let stage = HistogramVec::new(
            HistogramOpts::new("grokcast_stage_latency_seconds", "stage")
                .buckets(STAGE_BUCKETS.to_vec()),
            &["stage"],
        )
        .unwrap();
        let calls = IntGauge::new("grokcast_active_calls", "calls").unwrap();
        // grokcast-serve's metric; `service` comes from the scrape config, as with a
        // ServiceMonitor.
        let engine_first_output = Histogram::with_opts(
            HistogramOpts::new("grokcast_engine_time_to_first_output_seconds", "ttft")
                .buckets(TURN_BUCKETS.to_vec()),
        )
        .unwrap();
        registry.register(Box::new(turn.clone())).unwrap();
        registry.register(Box::new(stage.clone())).unwrap();
        registry.register(Box::new(calls.clone())).unwrap();
        registry
            .register(Box::new(engine_first_output.clone()))
            .unwrap();
        Exporter {
            registry,
            turn,
            stage,
            calls,
            engine_first_output,
        }
    }

    /// One turn: endpointing, stt, llm, tts, agent seconds.
    fn turn(&self, stages: [f64; 5]) {
        for (label, value) in [
            "endpointing",
            "stt",
            "llm_first_token",
            "tts_first_audio",
            "agent",
        ]
        .into_iter()
        .zip(stages)
        {
            self.stage.with_label_values(&[label]).observe(value);
        }
        self.engine_first_output.observe(stages[2]);
        self.turn.observe(stages.iter().sum());
    }

    async fn serve(self: std::sync::Arc<Self>) -> (SocketAddr, tokio::task::JoinHandle<()>) {
        serve_registry(self.registry.clone()).await
    }
}

/// Serves `registry` in the text exposition format at `/metrics` on a free loopback port.
async fn serve_registry(registry: Registry) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let registry = registry.clone();
            async move {
                let mut out = Vec::new();
                ::prometheus::Encoder::encode(
                    &::prometheus::TextEncoder::new(),
                    &registry.gather(),
                    &mut out,
                )
                .unwrap();
                String::from_utf8(out).unwrap()
            }
        }),
    );
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (addr, task)
}

/// Debian's Prometheus scraping the exporter every second, labelled as a ServiceMonitor
/// would label the LLM pool's Service.
async fn prometheus(binary: &Path, target: SocketAddr) -> TestPrometheus {
    let targets = [Target {
        addr: target,
        labels: &[("service", "llm-pool")],
    }];
    TestPrometheus::start(binary, &targets, Duration::from_secs(10))
        .await
        .expect("start prometheus")
}

fn spec() -> AgentSpec {
    let budgets = StageValues {
        stt: Some(150.0),
        llm_first_token: Some(250.0),
        tts_first_audio: Some(150.0),
        ..StageValues::default()
    };
    AgentSpec {
        slo_p95_ms: 800.0,
        bounds: Bounds { min: 1, max: 10 },
        target_calls_per_pod: 40,
        max_calls_per_pod: 50,
        budgets_ms: budgets,
    }
}

fn snapshot(
    observation: Result<super::decide::AgentObservation, HoldReason>,
    engine: Option<super::decide::EngineObservation>,
) -> Snapshot {
    let pool = |name: &str, budget: f64| PoolInput {
        key: format!("voice/{name}"),
        spec: Some(PoolSpec {
            bounds: Bounds { min: 1, max: 4 },
            target_latency_ms: budget,
        }),
        current: 1,
        scheduled: 1,
        ready: None,
        gpus_per_replica: 1,
        product: None,
        engine: None,
    };
    let mut llm = pool("llm-pool", 250.0);
    llm.engine = engine;
    Snapshot {
        agents: vec![AgentInput {
            key: "voice/receptionist".into(),
            spec: spec(),
            current: 2,
            pools: vec![
                (Role::Stt, "voice/stt-pool".into()),
                (Role::Llm, "voice/llm-pool".into()),
                (Role::Tts, "voice/tts-pool".into()),
            ],
            observation,
        }],
        pools: vec![pool("stt-pool", 150.0), llm, pool("tts-pool", 150.0)],
        inventory: None,
    }
}

const AGENT: Vars<'static> = Vars {
    namespace: "voice",
    voiceagent: "receptionist",
    pool: "",
    window: "20s",
};
const POOL: Vars<'static> = Vars {
    namespace: "voice",
    voiceagent: "",
    pool: "llm-pool",
    window: "20s",
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_llm_grows_the_llm_pool_and_an_outage_holds() {
    let Some(binary) = prometheus_or_skip() else {
        return;
    };
    let exporter = std::sync::Arc::new(Exporter::new());
    let (target, exporter_task) = exporter.clone().serve().await;
    let mut server = prometheus(&binary, target).await;
    let client = PrometheusClient::new(&PrometheusConfig::new(server.url())).unwrap();

    // 120 live calls; every turn's LLM stage takes ~600 ms against a 250 ms budget.
    exporter.calls.set(120);
    let load = {
        let exporter = exporter.clone();
        tokio::spawn(async move {
            let mut i = 0u32;
            loop {
                let jitter = f64::from(i % 7) * 0.01;
                exporter.turn([0.32, 0.05 + jitter, 0.6 + jitter, 0.05 + jitter, 0.004]);
                i += 1;
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        })
    };

    // Wait until the window holds enough scrapes for rate() and the quantiles.
    let queries = AgentQueries::default();
    let mut observation = None;
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let obs = queries::observe_agent(&client, &queries, AGENT)
            .await
            .unwrap();
        if obs.turn_p95_ms.is_some() && obs.stage_p95_ms.llm_first_token.is_some() {
            observation = Some(obs);
            break;
        }
    }
    let obs = observation.expect("Prometheus never returned turn latency");
    assert_eq!(obs.active_calls, Some(120.0));
    assert!(
        obs.sample_age.is_some_and(|a| a < Duration::from_secs(10)),
        "{:?}",
        obs.sample_age
    );
    let turn_p95 = obs.turn_p95_ms.unwrap();
    assert!(turn_p95 > 800.0 && turn_p95 < 1500.0, "turn p95 {turn_p95}");
    let llm = obs.stage_p95_ms.llm_first_token.unwrap();
    assert!((500.0..=750.0).contains(&llm), "llm p95 {llm}");
    let stt = obs.stage_p95_ms.stt.unwrap();
    assert!(stt < 150.0, "stt p95 {stt}");
    let engine_queries = EngineQueries::for_engine(grokcast_crds::Engine::Grokcast);
    let engine = queries::observe_engine(&client, &engine_queries, POOL)
        .await
        .unwrap();
    let engine_ttft = engine.and_then(|e| e.first_token_p95_ms);
    assert!(
        engine_ttft.is_some_and(|t| t > 500.0),
        "engine ttft {engine_ttft:?}"
    );

    let behaviour = Behaviour {
        scale_down_stabilisation: Duration::from_secs(30),
        ..Behaviour::default()
    };
    let mut autoscaler = Autoscaler::new(behaviour);
    let plan = autoscaler.evaluate(Duration::ZERO, &snapshot(Ok(obs.clone()), engine));
    let llm_plan = plan
        .pools
        .iter()
        .find(|p| p.key == "voice/llm-pool")
        .unwrap();
    assert!(llm_plan.decision.desired > 1, "{llm_plan:?}");
    assert_eq!(llm_plan.decision.reason, Reason::SloBreachAttributed);
    for other in plan.pools.iter().filter(|p| p.key != "voice/llm-pool") {
        assert_eq!(other.decision.desired, 1, "{other:?}");
    }
    assert_eq!(
        plan.agents[0].attributed,
        vec![super::decide::Stage::LlmFirstToken]
    );
    // 120 calls at 40 per pod plus 25% headroom.
    assert_eq!(plan.agents[0].decision.desired, 4);

    // The scrape target disappears: Prometheus answers, but the series are gone (stale).
    exporter_task.abort();
    let mut missing = None;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let obs = queries::observe_agent(&client, &queries, AGENT)
            .await
            .unwrap();
        if obs.active_calls.is_none() {
            missing = Some(obs);
            break;
        }
    }
    let missing = missing.expect("active calls never went stale after the target vanished");
    let plan = autoscaler.evaluate(Duration::from_secs(15), &snapshot(Ok(missing), None));
    assert_eq!(
        plan.agents[0].decision.desired, 2,
        "missing metrics hold agent pods"
    );
    assert_eq!(
        plan.agents[0].decision.held,
        Some(HoldReason::MetricsMissing)
    );

    // Prometheus itself goes down: every replica count holds.
    server.kill().await.unwrap();
    let failure = queries::observe_agent(&client, &queries, AGENT)
        .await
        .unwrap_err();
    assert_eq!(failure.hold, HoldReason::PrometheusUnavailable);
    assert!(
        failure.error.to_string().contains("127.0.0.1"),
        "{}",
        failure.error
    );
    let plan = autoscaler.evaluate(Duration::from_secs(30), &snapshot(Err(failure.hold), None));
    assert_eq!(plan.agents[0].decision.desired, 2);
    assert_eq!(
        plan.agents[0].decision.held,
        Some(HoldReason::PrometheusUnavailable)
    );
    for pool in &plan.pools {
        assert_eq!(pool.decision.desired, 1, "{pool:?}");
        assert_eq!(pool.decision.held, Some(HoldReason::PrometheusUnavailable));
    }
    load.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steady_load_does_not_oscillate() {
    let Some(binary) = prometheus_or_skip() else {
        return;
    };
    let exporter = std::sync::Arc::new(Exporter::new());
    let (target, _exporter_task) = exporter.clone().serve().await;
    let server = prometheus(&binary, target).await;
    let client = PrometheusClient::new(&PrometheusConfig::new(server.url())).unwrap();
    // A healthy steady load: every stage inside its budget but not idle.
    exporter.calls.set(100);
    let load = {
        let exporter = exporter.clone();
        tokio::spawn(async move {
            let mut i = 0u32;
            loop {
                let jitter = f64::from(i % 5) * 0.005;
                exporter.turn([0.32, 0.1 + jitter, 0.12 + jitter, 0.1 + jitter, 0.004]);
                i += 1;
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        })
    };
    let queries = AgentQueries::default();
    let behaviour = Behaviour {
        scale_down_stabilisation: Duration::from_secs(4),
        ..Behaviour::default()
    };
    let mut autoscaler = Autoscaler::new(behaviour);
    let mut decisions: Vec<Vec<u32>> = Vec::new();
    let mut t = Duration::ZERO;
    while decisions.len() < 12 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        let obs = queries::observe_agent(&client, &queries, AGENT)
            .await
            .unwrap();
        if obs.turn_p95_ms.is_none() {
            continue;
        }
        let mut snap = snapshot(Ok(obs), None);
        // Carry the decided counts forward, as the cluster would.
        if let Some(last) = decisions.last() {
            snap.agents[0].current = last[0];
            for (p, n) in snap.pools.iter_mut().zip(&last[1..]) {
                p.current = *n;
            }
        }
        let plan = autoscaler.evaluate(t, &snap);
        let mut row = vec![plan.agents[0].decision.desired];
        row.extend(plan.pools.iter().map(|p| p.decision.desired));
        decisions.push(row);
        t += Duration::from_secs(1);
    }
    load.abort();
    // 100 calls * 1.25 / 40 = 3.125 -> 4 pods, and pools in budget stay where they are.
    for row in &decisions {
        assert_eq!(row, &vec![4, 1, 1, 1], "decisions {decisions:?}");
    }
}

/// A vLLM replica as Prometheus sees it: vLLM's own metric names and `model_name` label, and
/// the `namespace` and `service` labels the pool's ServiceMonitor adds (the operator creates
/// one for every `vllm` pool). No vLLM runs here (it needs a GPU); the names and layout are
/// vLLM's documented ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vllm_metric_names_reach_the_llm_pool_decision() {
    let Some(binary) = prometheus_or_skip() else {
        return;
    };
    let labels = [("model_name", "google/gemma-3-27b-it")]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let registry = Registry::new_custom(None, Some(labels)).unwrap();
    let ttft = Histogram::with_opts(
        HistogramOpts::new("vllm:time_to_first_token_seconds", "TTFT")
            .buckets(vec![0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5]),
    )
    .unwrap();
    let waiting = ::prometheus::Gauge::new("vllm:num_requests_waiting", "waiting").unwrap();
    registry.register(Box::new(ttft.clone())).unwrap();
    registry.register(Box::new(waiting.clone())).unwrap();
    waiting.set(9.0);
    let (target, server_task) = serve_registry(registry).await;
    let load = {
        let ttft = ttft.clone();
        tokio::spawn(async move {
            loop {
                ttft.observe(0.6);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let targets = [Target {
        addr: target,
        labels: &[("service", "llm-pool"), ("namespace", "voice")],
    }];
    let server = TestPrometheus::start(&binary, &targets, Duration::from_secs(10))
        .await
        .expect("start prometheus");
    let client = PrometheusClient::new(&PrometheusConfig::new(server.url())).unwrap();
    let engine_queries = EngineQueries::for_engine(grokcast_crds::Engine::Vllm);
    let mut engine = None;
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let obs = queries::observe_engine(&client, &engine_queries, POOL)
            .await
            .unwrap();
        if obs
            .as_ref()
            .is_some_and(|o| o.first_token_p95_ms.is_some() && o.waiting_requests.is_some())
        {
            engine = obs;
            break;
        }
    }
    let engine = engine.expect("Prometheus never returned vLLM's TTFT and queue");
    let first_token = engine.first_token_p95_ms.unwrap();
    assert!(
        (500.0..=750.0).contains(&first_token),
        "vLLM TTFT p95 {first_token}"
    );
    assert_eq!(engine.waiting_requests, Some(9.0));

    // The agents' own metrics are missing: the engine's signals alone still size the pool.
    let mut autoscaler = Autoscaler::new(Behaviour::default());
    let plan = autoscaler.evaluate(
        Duration::ZERO,
        &snapshot(Err(HoldReason::MetricsMissing), Some(engine)),
    );
    let llm = plan
        .pools
        .iter()
        .find(|p| p.key == "voice/llm-pool")
        .unwrap();
    assert!(llm.decision.desired > 1, "{llm:?}");
    assert_eq!(llm.decision.reason, Reason::StageOverBudget);
    load.abort();
    server_task.abort();
}
