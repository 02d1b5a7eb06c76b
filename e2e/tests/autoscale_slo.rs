//! The latency-SLO autoscaler with real parts: the operator in-process, as the chart's
//! ServiceAccount, against the real test cluster (kube-apiserver, scheduler, kwok nodes),
//! Debian's `prometheus` scraping a real grokcast agent's `/metrics` on
//! 127.0.0.1 every second, and load from the project's Twilio-protocol caller speaking to
//! that agent (real Silero VAD) in real time. The instant model servers stand in for the GPU
//! pools; making the LLM one slow is how a scenario breaches the SLO.
//!
//! The agent exports `namespace=<the test's namespace>, voiceagent="receptionist"`, so the
//! VoiceAgent of that name in the cluster is the one whose turns Prometheus measures. Each
//! scenario's pools ask for a GPU product of their own, on a kwok node made for the
//! scenario, so GPU capacity is exactly what the scenario sets up even while other tests use
//! the cluster. Every wait has a
//! deadline (`grokcast_e2e::eventually`); nothing sleeps and then asserts.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use grokcast_agent::config::AgentConfig;
use grokcast_agent::context::CallContext;
use grokcast_agent::server::{self, AgentState};
use grokcast_agent::startup;
use grokcast_crds::{AUTOSCALER_FIELD_MANAGER, ModelPool, VoiceAgent, condition};
use grokcast_e2e::cluster::NodePool;
use grokcast_e2e::project::Project;
use grokcast_e2e::prometheus::{Target, TestPrometheus};
use grokcast_harness::caller::{self, CallerOptions};
use grokcast_harness::instant::InstantServers;
use grokcast_operator::autoscale::AutoscalerConfig;
use grokcast_operator::autoscale::decide::Behaviour;
use grokcast_operator::autoscale::prometheus::{PrometheusClient, PrometheusConfig};
use grokcast_operator::metrics::Metrics;
use grokcast_operator::run::{CancellationToken, OperatorConfig, RunError};
use grokcast_operator::settings::BuildSettings;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Client;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use tokio::task::JoinHandle;

const AGENT: &str = "receptionist";
const LLM: &str = "gemma-27b";
const STT: &str = "whisper-v3";
const TTS: &str = "csm-1b";
const TWILIO_TOKEN: &str = "test-auth-token";
/// Long enough for the agent, Prometheus and a few turns on a loaded 2-core machine.
const WAIT: Duration = Duration::from_secs(45);
const POLL: Duration = Duration::from_millis(200);

/// Whether the VAD model and the prometheus binary are here; without either the scenario is
/// skipped (printed), unless GROKCAST_REQUIRE_MODELS says they must be.
fn prerequisites() -> Option<PathBuf> {
    let required = std::env::var_os("GROKCAST_REQUIRE_MODELS").is_some();
    let models = grokcast_engines::models::ModelPaths::discover()
        .and_then(|p| p.vad().and(p.onnxruntime()))
        .is_ok();
    if !models {
        assert!(
            !required,
            "models are required (GROKCAST_REQUIRE_MODELS is set): run scripts/install.sh"
        );
        eprintln!("skipped: Silero VAD not installed (run scripts/install.sh)");
        return None;
    }
    let prometheus = grokcast_e2e::prometheus::binary();
    if prometheus.is_none() {
        assert!(
            !required,
            "prometheus is required (GROKCAST_REQUIRE_MODELS is set): apt-get install prometheus"
        );
        eprintln!("skipped: no prometheus binary on PATH (apt-get install prometheus)");
    }
    prometheus
}

async fn eventually<T, F, Fut>(what: &str, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    grokcast_e2e::eventually(what, WAIT, POLL, check).await
}

/// A grokcast agent on 127.0.0.1 against instant model servers.
struct Agent {
    url: String,
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

impl Agent {
    async fn start(llm_delay: Duration, ns: &str) -> Agent {
        let servers = InstantServers::default();
        // A short reply keeps each turn short, so the SLO window fills with turns quickly.
        servers.set(|b| {
            b.reply = "Sure, we open at nine.".into();
            b.llm.delay = llm_delay;
        });
        let model_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let models_url = format!("http://{}/v1", model_listener.local_addr().unwrap());
        tokio::spawn(servers.clone().serve(model_listener));

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let url = format!("http://{addr}");
        let mut config = AgentConfig {
            public_url: url.clone(),
            listen_addr: addr.to_string(),
            twilio_auth_token: Some(TWILIO_TOKEN.into()),
            ..AgentConfig::default()
        };
        config.persona.greeting = "Hello.".into();
        for stage in [
            &mut config.stt.stage,
            &mut config.llm.stage,
            &mut config.tts.stage,
        ] {
            stage.url = models_url.clone();
            stage.timeout_ms = 5000;
        }
        config.validate().unwrap();
        let vad = startup::load_vad(&config).unwrap();
        let backends = startup::build_backends(&config).unwrap();
        let metrics = grokcast_agent::metrics::Metrics::new(AGENT, ns).unwrap();
        let state = Arc::new(AgentState::new(CallContext::new(
            config, backends, vad, metrics,
        )));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(server::serve(listener, state, async {
            let _ = stopped.await;
        }));
        let http = reqwest::Client::new();
        eventually("the agent to be ready", || {
            let http = http.clone();
            let url = url.clone();
            async move {
                let r = http.get(format!("{url}/readyz")).send().await.ok()?;
                r.status().is_success().then_some(())
            }
        })
        .await;
        Agent {
            url,
            addr,
            stop: Some(stop),
            task,
        }
    }

    /// `callers` callers that keep calling, each call a few short questions, until aborted.
    fn load(&self, callers: usize) -> Vec<JoinHandle<()>> {
        let question =
            Arc::new(caller::espeak_audio("Hello, what time do you open tomorrow?").unwrap());
        (0..callers)
            .map(|i| {
                let options = CallerOptions {
                    agent_url: self.url.clone(),
                    auth_token: Some(TWILIO_TOKEN.into()),
                    utterances: vec![question.clone(); 6],
                    reply_timeout: Duration::from_secs(10),
                    quiet_before_speaking: Duration::from_millis(400),
                    ..CallerOptions::default()
                };
                tokio::spawn(async move {
                    for n in 0u64.. {
                        let mut o = options.clone();
                        o.call_sid = format!("CA{i:04}{n:028}");
                        if caller::place_call(&o).await.is_err() {
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                    }
                })
            })
            .collect()
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(20), self.task).await;
    }
}

/// Debian's prometheus scraping the agent every second.
async fn prometheus(binary: &Path, agent: SocketAddr) -> TestPrometheus {
    let target = Target {
        addr: agent,
        labels: &[],
    };
    TestPrometheus::start(binary, &[target], WAIT)
        .await
        .expect("prometheus")
}

/// Turn p95 of the agent over `window`, in ms, as Prometheus computes it.
async fn turn_p95_ms(prometheus: &TestPrometheus, ns: &str, window: &str) -> Option<f64> {
    let client = PrometheusClient::new(&PrometheusConfig::new(prometheus.url())).ok()?;
    let q = format!(
        "histogram_quantile(0.95, sum by (le) (rate(grokcast_turn_latency_seconds_bucket{{namespace=\"{ns}\",voiceagent=\"{AGENT}\"}}[{window}])))"
    );
    let v = client.query_value(&q).await.ok()??;
    v.is_finite().then_some(v * 1000.0)
}

/// What a scenario sets up.
struct Setup {
    llm_delay: Duration,
    slo_ms: u32,
    /// `(minReplicas, replicas)` of each pool, or `None` for pools without autoscaling.
    llm: Option<(u32, u32)>,
    llm_budget_ms: u32,
    other_pools: Option<(u32, u32)>,
    /// The VoiceAgent's `scaling` (false: a fixed replica count).
    agent_scaling: bool,
    /// Allocatable A100s on the one GPU node.
    a100s: u32,
    /// `(A100s, held by others)`: the llm pool gets a GPU product and node of its own, with
    /// that many GPUs, and a pod that is not GrokCast's holds some of them before the pools
    /// are applied. `None`: the llm pool shares the one GPU node.
    llm_node: Option<(u32, u32)>,
    callers: usize,
}

impl Default for Setup {
    /// The LLM server answers after 900 ms against a 1000 ms SLO and a 250 ms LLM budget: a
    /// breach blamed on the LLM pool, with GPUs to spare and three callers.
    fn default() -> Setup {
        Setup {
            llm_delay: Duration::from_millis(900),
            slo_ms: 1000,
            llm: Some((1, 1)),
            llm_budget_ms: 250,
            other_pools: Some((1, 1)),
            agent_scaling: true,
            a100s: 8,
            llm_node: None,
            callers: 3,
        }
    }
}

/// Everything a scenario runs: the agent, Prometheus scraping it, the cluster with the
/// operator, and the callers.
struct Scenario {
    agent: Agent,
    prometheus: TestPrometheus,
    cluster: Operated,
    load: Vec<JoinHandle<()>>,
}

impl Scenario {
    /// Starts it all, or `None` (printed) when the models or prometheus are missing.
    async fn start(setup: Setup) -> Option<Scenario> {
        let binary = prerequisites()?;
        let project = project().await;
        let agent = Agent::start(setup.llm_delay, project.ns()).await;
        let prometheus = prometheus(&binary, agent.addr).await;
        // The calls run, and Prometheus has their turns, before the autoscaler's first look:
        // a turn's LLM stage is recorded before its latency (at the first clause, against the
        // first audio), so an autoscaler started with the calls could see the stage over its
        // budget in a window with no turn yet, and grow the pool for that, not for the breach.
        let load = agent.load(setup.callers);
        wait_for_turns(&prometheus, project.ns()).await;
        let cluster = Operated::start(project, &setup, Some(prometheus.url())).await;
        Some(Scenario {
            agent,
            prometheus,
            cluster,
            load,
        })
    }

    async fn stop(self) {
        for task in self.load {
            task.abort();
        }
        self.cluster.stop().await;
        self.agent.stop().await;
    }
}

const WINDOW: &str = "15s";

/// The test cluster's shared instance, with the CRDs, a fresh namespace, the sample Secrets
/// and the operator's chart-made identity.
async fn project() -> Project {
    Project::shared(env!("CARGO_BIN_EXE_grokcast-e2e"), "autoscale", WAIT).await
}

/// The scenario's namespace with a GPU node, the three pools and the agent, and the operator
/// running with a one-second autoscaler against `prometheus`.
struct Operated {
    p: Project,
    client: Client,
    ns: String,
    /// The GPU product of this scenario's node (`nvidia.com/gpu.product`).
    product: String,
    metrics: Metrics,
    stop: CancellationToken,
    task: JoinHandle<Result<(), RunError>>,
}

fn pool(file: &str, product: &str, autoscaling: Option<(u32, u32)>, budget_ms: u32) -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../config/samples")
        .join(file);
    let mut pool: Value = serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    // The Api the test applies through names the scenario's namespace.
    pool["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("namespace");
    let spec = pool["spec"].as_object_mut().unwrap();
    spec.insert("gpu".into(), json!({"count": 1, "product": product}));
    match autoscaling {
        Some((min, replicas)) => {
            spec.insert("replicas".into(), json!(replicas));
            spec.insert(
                "autoscaling".into(),
                json!({"minReplicas": min, "maxReplicas": 4, "targetLatencyMs": budget_ms}),
            );
        }
        None => {
            spec.insert("replicas".into(), json!(1));
            spec.remove("autoscaling");
        }
    }
    pool
}

fn agent(setup: &Setup) -> Value {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../config/samples/receptionist.yaml");
    let mut agent: Value = serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    agent["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("namespace");
    let spec = agent["spec"].as_object_mut().unwrap();
    spec.insert(
        "slo".into(),
        json!({"turnLatencyP95Ms": setup.slo_ms, "window": WINDOW}),
    );
    spec.insert("replicas".into(), json!(2));
    if setup.agent_scaling {
        spec.insert(
            "scaling".into(),
            json!({"minReplicas": 2, "maxReplicas": 6, "targetCallsPerPod": 40}),
        );
    } else {
        spec.remove("scaling");
    }
    agent
}

/// A kwok node `name` with `gpus` GPUs labelled `product`.
async fn gpu_node(client: &Client, name: &str, product: &str, gpus: u32) {
    let gpu_pool = NodePool {
        prefix: "kwok-gpu",
        count: 1,
        cpus: 64,
        gpus,
        gpu_product: product.to_owned(),
        labels: Vec::new(),
        taints: Vec::new(),
    };
    let nodes: Api<Node> = Api::all(client.clone());
    for mut node in gpu_pool.nodes() {
        node["metadata"]["name"] = json!(name);
        let node: Node = serde_json::from_value(node).unwrap();
        nodes.create(&PostParams::default(), &node).await.unwrap();
    }
}

/// A pod that is not GrokCast's (a training job, say) holding `gpus` GPUs of `product`,
/// once the scheduler has bound it.
async fn foreign_gpu_pod(client: &Client, ns: &str, product: &str, gpus: u32) {
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "training", "labels": {"app": "training"}},
        "spec": {
            "nodeSelector": {"nvidia.com/gpu.product": product},
            "automountServiceAccountToken": false,
            "containers": [{
                "name": "train",
                "image": "registry.k8s.io/pause:3.10",
                "resources": {"limits": {"nvidia.com/gpu": gpus.to_string()}}
            }]
        }
    }))
    .unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    pods.create(&PostParams::default(), &pod).await.unwrap();
    eventually("the training pod is bound", || async {
        pods.get("training").await.ok()?.spec?.node_name.map(|_| ())
    })
    .await;
}

impl Operated {
    async fn start(p: Project, setup: &Setup, prometheus_url: Option<&str>) -> Operated {
        let client = p.admin.clone();
        let ns = p.ns().to_owned();
        // A product no other test asks for: this scenario's node is all the capacity it has.
        let product = format!("NVIDIA-A100-{ns}");
        if setup.a100s > 0 {
            gpu_node(&client, &format!("kwok-gpu-{ns}"), &product, setup.a100s).await;
        }
        let llm_product = match setup.llm_node {
            Some((gpus, held)) => {
                let llm_product = format!("{product}-llm");
                gpu_node(&client, &format!("kwok-gpu-{ns}-llm"), &llm_product, gpus).await;
                if held > 0 {
                    foreign_gpu_pod(&client, &ns, &llm_product, held).await;
                }
                llm_product
            }
            None => product.clone(),
        };
        let apply = PatchParams::apply("kubectl").force();
        let pools: Api<ModelPool> = Api::namespaced(client.clone(), &ns);
        for (file, name, autoscaling, budget, product) in [
            (
                "gemma-27b.yaml",
                LLM,
                setup.llm,
                setup.llm_budget_ms,
                &llm_product,
            ),
            ("whisper.yaml", STT, setup.other_pools, 300, &product),
            ("csm.yaml", TTS, setup.other_pools, 300, &product),
        ] {
            pools
                .patch(
                    name,
                    &apply,
                    &Patch::Apply(pool(file, product, autoscaling, budget)),
                )
                .await
                .unwrap();
        }
        let agents: Api<VoiceAgent> = Api::namespaced(client.clone(), &ns);
        agents
            .patch(AGENT, &apply, &Patch::Apply(agent(setup)))
            .await
            .unwrap();

        let autoscaler = prometheus_url.map(|url| {
            let mut config = AutoscalerConfig::new(url);
            config.behaviour = Behaviour {
                period: Duration::from_secs(1),
                // The agent's own stage (VAD, resampling) is slow on a loaded 2-core machine;
                // these scenarios are about the model pools.
                agent_stage_budget_ms: 1000.0,
                ..Behaviour::default()
            };
            config.pool_window = WINDOW.into();
            config
        });
        let metrics = Metrics::new().unwrap();
        let stop = CancellationToken::new();
        let config = OperatorConfig {
            settings: BuildSettings::default(),
            namespaces: vec![ns.clone()],
            identity: "autoscale-e2e".into(),
            lease: None,
            autoscaler,
        };
        let task = tokio::spawn(grokcast_operator::run::run(
            p.operator.client.clone(),
            config,
            metrics.clone(),
            stop.clone(),
        ));
        Operated {
            p,
            client,
            ns,
            product,
            metrics,
            stop,
            task,
        }
    }

    async fn stop(self) {
        self.stop.cancel();
        let _ = tokio::time::timeout(WAIT, self.task).await;
        let nodes: Api<Node> = Api::all(self.client.clone());
        for name in [
            format!("kwok-gpu-{}", self.ns),
            format!("kwok-gpu-{}-llm", self.ns),
        ] {
            let _ = nodes.delete(&name, &Default::default()).await;
        }
        drop(self.p);
    }

    fn pools(&self) -> Api<ModelPool> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    fn agents(&self) -> Api<VoiceAgent> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    async fn pool(&self, name: &str) -> ModelPool {
        self.pools().get(name).await.unwrap()
    }

    async fn agent(&self) -> VoiceAgent {
        self.agents().get(AGENT).await.unwrap()
    }

    /// spec.replicas of the agent and the llm, stt and tts pools.
    async fn replicas(&self) -> [i32; 4] {
        [
            self.agent().await.spec.replicas,
            self.pool(LLM).await.spec.replicas,
            self.pool(STT).await.spec.replicas,
            self.pool(TTS).await.spec.replicas,
        ]
    }

    /// Waits until the autoscaler has run `periods` more times (its evaluation counter:
    /// status is written only on a visible change, so no timestamp moves every period).
    async fn wait_periods(&self, _pool: &str, periods: usize) {
        let evaluations = || self.metric("grokcast_autoscaler_evaluations_total", "");
        let start = evaluations();
        let limit = WAIT + Duration::from_secs(3 * u64::try_from(periods).unwrap());
        grokcast_e2e::eventually(
            &format!("{periods} more autoscaler periods"),
            limit,
            POLL,
            || async { (evaluations() >= start + periods as f64).then_some(()) },
        )
        .await;
    }

    async fn condition(
        &self,
        kind_pool: Option<&str>,
        type_: &str,
    ) -> Option<(String, String, String)> {
        let conditions = match kind_pool {
            Some(name) => self.pools().get_opt(name).await.ok()??.status?.conditions,
            None => self.agents().get_opt(AGENT).await.ok()??.status?.conditions,
        };
        let c = conditions.into_iter().find(|c| c.type_ == type_)?;
        Some((c.status, c.reason, c.message))
    }

    async fn events(&self, name: &str, reason: &str) -> usize {
        grokcast_e2e::project::events_for(&self.client, &self.ns, name, reason)
            .await
            .expect("events")
    }

    /// A counter or gauge of the operator's `/metrics`, summed over series with `label`.
    fn metric(&self, name: &str, label: &str) -> f64 {
        self.metrics
            .encode()
            .lines()
            .filter(|l| l.starts_with(name) && l.contains(label))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

/// Waits until Prometheus has turns of the agent in the SLO window.
async fn wait_for_turns(prometheus: &TestPrometheus, ns: &str) -> f64 {
    eventually("turn latency in Prometheus", || {
        turn_p95_ms(prometheus, ns, WINDOW)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_llm_breaches_the_slo_and_only_the_llm_pool_grows() {
    let Some(scenario) = Scenario::start(Setup::default()).await else {
        return;
    };
    let cluster = &scenario.cluster;

    // Growth is proportional to the overshoot but at most doubles in one period: 1 -> 2, well
    // inside the 8 GPUs of the node; then it waits for the new replica to be measured.
    // The autoscaler writes /scale, then the pool's status with the reason: wait for both
    // (read between the two, the count has grown and the reason is not there yet).
    let pool = eventually("the llm pool to grow through /scale", || async {
        let pool = cluster.pools().get_opt(LLM).await.ok()??;
        let reason = pool
            .status
            .as_ref()?
            .autoscaling
            .as_ref()?
            .last_scale_reason
            .as_ref();
        (pool.spec.replicas > 1 && reason.is_some()).then_some(pool)
    })
    .await;
    assert_eq!(pool.spec.replicas, 2);
    let scale = cluster.pools().get_scale(LLM).await.unwrap();
    assert_eq!(scale.spec.and_then(|s| s.replicas), Some(2));
    let status = pool.status.unwrap().autoscaling.unwrap();
    let reason = status.last_scale_reason.unwrap_or_default();
    assert!(
        reason.contains("1 -> 2") && reason.contains("turn p95 breaches the SLO"),
        "{reason}"
    );
    assert!(status.last_scale_time.is_some());
    // The operator reconciles the new count into the pool's Deployment.
    let deployments: Api<Deployment> = Api::namespaced(cluster.client.clone(), &cluster.ns);
    eventually("the llm Deployment at 2 replicas", || async {
        let d = deployments.get_opt(LLM).await.ok()??;
        (d.spec?.replicas == Some(2)).then_some(())
    })
    .await;

    let (status, reason, message) = eventually("SLOMet=False on the agent", || async {
        let c = cluster.condition(None, condition::SLO_MET).await?;
        (c.0 == "False").then_some(c)
    })
    .await;
    assert_eq!((status.as_str(), reason.as_str()), ("False", "SLOBreached"));
    assert!(
        message.contains("exceeds the 1000 ms SLO") && message.contains("llm_first_token"),
        "{message}"
    );
    let agent_status = cluster.agent().await.status.unwrap().autoscaling.unwrap();
    assert_eq!(agent_status.bottleneck_pool.as_deref(), Some(LLM));
    assert!(
        agent_status.turn_latency_p95_ms.is_some_and(|p| p > 1000.0),
        "{agent_status:?}"
    );

    // stt and tts are fast: never scaled, however long the breach lasts.
    cluster.wait_periods(LLM, 3).await;
    let [_, llm, stt, tts] = cluster.replicas().await;
    assert_eq!((llm, stt, tts), (2, 1, 1));
    for name in [STT, TTS] {
        let s = cluster
            .pool(name)
            .await
            .status
            .unwrap()
            .autoscaling
            .unwrap();
        assert!(s.last_scale_time.is_none(), "{name}: {s:?}");
    }

    scenario.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steady_load_holds_still_and_a_prometheus_outage_holds_replicas() {
    // The LLM stage lands between 60% and 100% of its 450 ms budget: nothing to add, nothing
    // to take away. The pool starts above its minimum so a flapping decision would show.
    let setup = Setup {
        llm_delay: Duration::from_millis(230),
        slo_ms: 1500,
        llm: Some((1, 2)),
        llm_budget_ms: 450,
        ..Setup::default()
    };
    let Some(mut scenario) = Scenario::start(setup).await else {
        return;
    };
    let cluster = &scenario.cluster;
    eventually("SLOMet=True with a measured p95", || async {
        let (s, r, m) = cluster.condition(None, condition::SLO_MET).await?;
        (s == "True" && r == "WithinSLO" && m.starts_with("turn p95")).then_some(())
    })
    .await;

    let start = cluster.replicas().await;
    assert_eq!(start, [2, 2, 1, 1]);
    for period in 0..6 {
        cluster.wait_periods(LLM, 1).await;
        assert_eq!(
            cluster.replicas().await,
            start,
            "replicas moved under steady load in period {period}"
        );
    }
    let llm = cluster.pool(LLM).await.status.unwrap().autoscaling.unwrap();
    assert!(llm.last_scale_time.is_none(), "{llm:?}");
    assert_eq!(llm.desired_replicas, Some(2));
    assert_eq!(
        cluster.metric("grokcast_autoscaler_scale_events_total", ""),
        0.0
    );

    // Prometheus dies: every object holds, and the agent says why.
    scenario.prometheus.kill().await.unwrap();
    let (_, reason, message) = eventually("SLOMet=Unknown after the outage", || async {
        let c = cluster.condition(None, condition::SLO_MET).await?;
        (c.0 == "Unknown").then_some(c)
    })
    .await;
    assert_eq!(reason, "MetricsUnavailable");
    assert!(
        message.starts_with("PrometheusUnavailable") && message.contains("replicas held at 2"),
        "{message}"
    );
    let holds_before = cluster.metric(
        "grokcast_autoscaler_holds_total",
        "reason=\"PrometheusUnavailable\"",
    );
    for period in 0..3 {
        cluster.wait_periods(LLM, 1).await;
        assert_eq!(
            cluster.replicas().await,
            start,
            "replicas moved during the outage in period {period}"
        );
    }
    let holds = cluster.metric(
        "grokcast_autoscaler_holds_total",
        "reason=\"PrometheusUnavailable\"",
    );
    assert!(holds > holds_before, "holds {holds_before} -> {holds}");

    scenario.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gpu_shortage_is_capacity_limited_with_one_event_and_the_slo_at_risk() {
    // Four A100s, all in use (llm 2, stt 1, tts 1): the llm pool's growth to 4 lacks 2.
    let setup = Setup {
        llm: Some((1, 2)),
        a100s: 4,
        ..Setup::default()
    };
    let Some(scenario) = Scenario::start(setup).await else {
        return;
    };
    let cluster = &scenario.cluster;

    let (_, reason, message) = eventually("CapacityLimited=True on the llm pool", || async {
        let c = cluster
            .condition(Some(LLM), condition::CAPACITY_LIMITED)
            .await?;
        (c.0 == "True").then_some(c)
    })
    .await;
    assert_eq!(reason, "InsufficientGPUs");
    assert!(
        message.contains(&format!("needs 2 more GPUs ({})", cluster.product)),
        "{message}"
    );
    let status = cluster.pool(LLM).await.status.unwrap().autoscaling.unwrap();
    assert_eq!(status.gpus_missing, Some(2));
    assert_eq!(status.desired_replicas, Some(4));

    // The first turns in the window can still meet the SLO (at risk while met); the breach
    // that follows is what the message must carry.
    let (_, reason, message) = eventually("SLOMet=False with the SLO at risk", || async {
        let c = cluster.condition(None, condition::SLO_MET).await?;
        (c.0 == "False" && c.2.contains("SLO at risk")).then_some(c)
    })
    .await;
    assert_eq!(reason, "SLOBreached");
    assert!(
        message.contains(&format!("pool {LLM} cannot grow")),
        "{message}"
    );
    let agent_status = cluster.agent().await.status.unwrap().autoscaling.unwrap();
    assert_eq!(agent_status.gpus_missing, Some(2));

    // Several more periods of the same shortage: still one Event, and nothing grew.
    cluster.wait_periods(LLM, 3).await;
    assert_eq!(cluster.events(LLM, "CapacityLimited").await, 1);
    let [_, llm, stt, tts] = cluster.replicas().await;
    assert_eq!((llm, stt, tts), (2, 1, 1));
    for name in [STT, TTS] {
        let c = cluster
            .condition(Some(name), condition::CAPACITY_LIMITED)
            .await
            .unwrap();
        assert_eq!(c.0, "False", "{name}: {c:?}");
    }

    scenario.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gpus_held_by_others_and_unscheduled_replicas_count_as_the_scheduler_counts() {
    // The llm pool's node has 2 A100s, and a training pod that is not GrokCast's holds one.
    // The pool asks for 2 replicas: the scheduler binds one and leaves one Pending. The SLO
    // breach blames the pool, whose growth waits for the replica that cannot start, and the
    // GPUs missing are what the scheduler reports. (Counting only GrokCast's replicas, the
    // node looked full with nothing missing: no CapacityLimited at all.)
    let setup = Setup {
        llm: Some((1, 2)),
        llm_node: Some((2, 1)),
        ..Setup::default()
    };
    let Some(scenario) = Scenario::start(setup).await else {
        return;
    };
    let cluster = &scenario.cluster;
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), &cluster.ns);
    let llm_pods = || async {
        let list = pods
            // The model-server pods only, not the pool's (finished) preload Job's.
            .list(&ListParams::default().labels(&format!(
                "grokcast.io/modelpool={LLM},app.kubernetes.io/name=grokcast-model-server"
            )))
            .await
            .unwrap()
            .items;
        let (bound, unbound): (Vec<Pod>, Vec<Pod>) = list
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .partition(|p| p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some());
        (bound, unbound)
    };
    let unschedulable = |p: &Pod| {
        p.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .into_iter()
            .flatten()
            .find(|c| c.type_ == "PodScheduled" && c.status == "False")
            .filter(|c| c.reason.as_deref() == Some("Unschedulable"))
            .and_then(|c| c.message.clone())
    };
    // The scheduler's first try may come before the provisioner binds the pool's model
    // PVC ("unbound immediate PersistentVolumeClaims"); the binding requeues the pod, and
    // the reason that counts is the one it gives with the volume in place.
    let last_reason = std::sync::Mutex::new(String::new());
    eventually(
        "the scheduler leaves one llm replica Pending for want of GPUs",
        || async {
            let (bound, unbound) = llm_pods().await;
            if bound.len() != 1 || unbound.len() != 1 {
                return None;
            }
            let message = unschedulable(&unbound[0])?;
            if !message.contains("Insufficient nvidia.com/gpu") {
                let mut last = last_reason.lock().unwrap();
                if *last != message {
                    eprintln!("pending llm replica, not yet for GPUs: {message}");
                    *last = message;
                }
                return None;
            }
            Some(message)
        },
    )
    .await;

    // One read of the pool, so the condition and the numbers are from the same period.
    let (condition, status) = eventually("CapacityLimited=True on the llm pool", || async {
        let status = cluster.pool(LLM).await.status?;
        let c = status
            .conditions
            .iter()
            .find(|c| c.type_ == condition::CAPACITY_LIMITED && c.status == "True")?
            .clone();
        Some((c, status.autoscaling?))
    })
    .await;
    assert_eq!(condition.reason, "InsufficientGPUs");
    let desired = u32::try_from(status.desired_replicas.unwrap()).unwrap();
    let (bound, unbound) = llm_pods().await;
    // What the scheduler says: one replica bound, the rest of what is wanted unplaceable,
    // nothing free on the node (the training pod's GPU is not the pool's to take).
    let scheduler_missing = desired - u32::try_from(bound.len()).unwrap();
    assert_eq!(
        status.gpus_missing,
        Some(i32::try_from(scheduler_missing).unwrap())
    );
    assert!(
        condition
            .message
            .contains(&format!("needs {scheduler_missing} more GPUs")),
        "{}",
        condition.message
    );
    assert_eq!(
        unbound.len(),
        1,
        "no replica was added that cannot be placed"
    );
    assert_eq!(cluster.pool(LLM).await.spec.replicas, 2);

    scenario.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_without_autoscaling_are_never_touched() {
    // A breach the autoscaler would act on, if anything asked it to.
    let setup = Setup {
        llm: None,
        other_pools: None,
        agent_scaling: false,
        ..Setup::default()
    };
    let Some(scenario) = Scenario::start(setup).await else {
        return;
    };
    let cluster = &scenario.cluster;
    // One autoscaled pool nothing uses: its status shows the autoscaler evaluating.
    let spare = {
        let mut p = pool("gemma-27b.yaml", &cluster.product, Some((1, 1)), 250);
        p["metadata"]["name"] = json!("spare-llm");
        p
    };
    cluster
        .pools()
        .patch(
            "spare-llm",
            &PatchParams::apply("kubectl").force(),
            &Patch::Apply(spare),
        )
        .await
        .unwrap();
    let p95 = eventually("a breaching p95 in Prometheus", || async {
        turn_p95_ms(&scenario.prometheus, &scenario.cluster.ns, WINDOW)
            .await
            .filter(|p| *p > 1000.0)
    })
    .await;
    assert!(p95 > 1000.0);

    cluster.wait_periods("spare-llm", 4).await;
    assert_eq!(cluster.replicas().await, [2, 1, 1, 1]);
    let agent_obj = cluster.agent().await;
    let mut objects = vec![(
        AGENT.to_owned(),
        agent_obj.metadata,
        agent_obj
            .status
            .map(|s| (s.conditions, s.autoscaling.is_some())),
    )];
    for name in [LLM, STT, TTS] {
        let p = cluster.pool(name).await;
        objects.push((
            name.to_owned(),
            p.metadata,
            p.status.map(|s| (s.conditions, s.autoscaling.is_some())),
        ));
    }
    for (name, meta, status) in objects {
        let managers: Vec<String> = meta
            .managed_fields
            .unwrap_or_default()
            .into_iter()
            .filter_map(|f| f.manager)
            .collect();
        assert!(
            !managers.iter().any(|m| m == AUTOSCALER_FIELD_MANAGER),
            "{name} managers {managers:?}"
        );
        let (conditions, autoscaling_status) = status.unwrap_or_default();
        assert!(
            !conditions
                .iter()
                .any(|c| condition::AUTOSCALER_OWNED.contains(&c.type_.as_str())),
            "{name} conditions {conditions:?}"
        );
        assert!(!autoscaling_status, "{name} has status.autoscaling");
    }
    assert_eq!(cluster.events(LLM, "CapacityLimited").await, 0);

    scenario.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_prometheus_url_the_agent_status_says_autoscaling_is_off() {
    // No agent, no Prometheus: this one needs neither models nor the prometheus binary.
    let setup = Setup {
        a100s: 0,
        ..Setup::default()
    };
    let cluster = Operated::start(project().await, &setup, None).await;
    let (_, reason, message) = eventually("SLOMet=Unknown (AutoscalerDisabled)", || async {
        let c = cluster.condition(None, condition::SLO_MET).await?;
        (c.0 == "Unknown").then_some(c)
    })
    .await;
    assert_eq!(reason, condition::reason::AUTOSCALER_DISABLED);
    assert_eq!(message, grokcast_operator::autoscale::DISABLED_MESSAGE);
    assert_eq!(cluster.replicas().await, [2, 1, 1, 1]);

    cluster.stop().await;
}
