//! The autoscaler loop against a cluster: read VoiceAgents, ModelPools and Nodes, query
//! Prometheus, decide with [`Autoscaler`], then write `/scale` and status as the leader.
//!
//! The objects come from reflector caches (watches started when this replica first leads),
//! not from a LIST of everything every period. Writes happen only when something a user
//! can see changes: `/scale` when the replica count does, status when any field the
//! autoscaler owns does, apart from `sampledAt` and `lastTransitionTime` (see
//! [`status_changed`]). `sampledAt` is therefore the time of the sample the written figures
//! come from, refreshed together with them, not the time of the last evaluation.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use grokcast_crds::{
    AUTOSCALER_FIELD_MANAGER, ModelPool, VoiceAgent, condition, condition::reason,
};
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Resource, ResourceExt};
use serde_json::json;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::leader::Leadership;

use super::capacity::{self, GpuInventory};
use super::decide::{
    AgentSpec, Behaviour, Bounds, HoldReason, PoolSpec, Reason, Role, SloState, Stage, StageValues,
};
use super::metrics::AutoscalerMetrics;
use super::plan::{AgentInput, AgentPlan, Autoscaler, PoolInput, PoolPlan, Snapshot};
use super::prometheus::{PrometheusClient, PrometheusConfig, PrometheusError};
use super::queries::{self, AgentQueries, EngineQueries, Vars};

/// Errors that stop the autoscaler. Everything that happens inside a period is logged and
/// retried next period instead.
#[derive(Debug, thiserror::Error)]
pub enum AutoscaleError {
    /// The Prometheus settings cannot work (bad URL, unreadable CA file).
    #[error("autoscaler Prometheus settings: {0}")]
    Prometheus(#[from] PrometheusError),
    /// The autoscaler's metrics could not be registered (a name already taken).
    #[error("registering autoscaler metrics: {0}")]
    Metrics(#[from] ::prometheus::Error),
}

/// Errors within one period (logged, never fatal).
#[derive(Debug, thiserror::Error)]
enum PeriodError {
    #[error("the {kind} cache has not listed yet")]
    NotSynced { kind: &'static str },
    #[error("writing {what} of {kind} {key}: {source}")]
    Write {
        what: &'static str,
        kind: &'static str,
        key: String,
        #[source]
        source: kube::Error,
    },
}

/// How the autoscaler runs.
#[derive(Clone, Debug)]
pub struct AutoscalerConfig {
    /// Where Prometheus is and how to authenticate.
    pub prometheus: PrometheusConfig,
    /// Decision tunables, including the evaluation period.
    pub behaviour: Behaviour,
    /// Namespaces to act in; empty means all.
    pub namespaces: Vec<String>,
    /// Default agent queries (per-object annotations override them).
    pub agent_queries: AgentQueries,
    /// Range window for engine metrics of pools, e.g. `1m`.
    pub pool_window: String,
    /// Queries in flight at once.
    pub concurrency: usize,
    /// Identity in Events (`reportingInstance`), usually the pod name.
    pub instance: Option<String>,
    /// Registry to add the autoscaler's metrics to (the operator's `/metrics`).
    pub metrics_registry: Option<::prometheus::Registry>,
}

impl AutoscalerConfig {
    /// Defaults around a Prometheus URL.
    pub fn new(prometheus_url: impl Into<String>) -> AutoscalerConfig {
        AutoscalerConfig {
            prometheus: PrometheusConfig::new(prometheus_url),
            behaviour: Behaviour::default(),
            namespaces: Vec::new(),
            agent_queries: AgentQueries::default(),
            pool_window: "1m".into(),
            concurrency: 16,
            instance: None,
            metrics_registry: None,
        }
    }
}

/// Runs the autoscaler until `shutdown` is cancelled. It evaluates every
/// `config.behaviour.period` while `leader` is true, and does nothing (not even query) while it
/// is false, so only one replica of the operator ever writes.
pub async fn run(
    client: kube::Client,
    config: AutoscalerConfig,
    mut leader: watch::Receiver<Leadership>,
    shutdown: CancellationToken,
) -> Result<(), AutoscaleError> {
    let prometheus = PrometheusClient::new(&config.prometheus)?;
    let metrics = config
        .metrics_registry
        .as_ref()
        .map(AutoscalerMetrics::register)
        .transpose()?;
    let reporter = Reporter {
        controller: AUTOSCALER_FIELD_MANAGER.into(),
        instance: config.instance.clone(),
    };
    let mut state = LoopState {
        client: client.clone(),
        recorder: Recorder::new(client, reporter),
        prometheus,
        autoscaler: Autoscaler::new(config.behaviour.clone()),
        started: Instant::now(),
        capacity_limited: HashMap::new(),
        metrics,
        config: Arc::new(config),
        caches: None,
        shutdown: shutdown.clone(),
    };
    let mut ticker = tokio::time::interval(state.config.behaviour.period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            _ = ticker.tick() => {}
            changed = leader.changed() => {
                if changed.is_err() {
                    // The lease task is gone: nobody can tell us we lead any more.
                    tracing::warn!("leader election channel closed; autoscaler stops");
                    return Ok(());
                }
                continue;
            }
        }
        if !leader.borrow().is_leading() {
            continue;
        }
        let now = state.started.elapsed();
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            () = state.period(now, &leader) => {}
        }
        if let Some(m) = &state.metrics {
            m.evaluations.inc();
        }
    }
}

struct LoopState {
    client: kube::Client,
    recorder: Recorder,
    prometheus: PrometheusClient,
    autoscaler: Autoscaler,
    started: Instant,
    /// Pools currently CapacityLimited, so the Event is sent once per transition.
    capacity_limited: HashMap<String, u32>,
    metrics: Option<AutoscalerMetrics>,
    config: Arc<AutoscalerConfig>,
    /// Started when this replica first leads: a standby holds no copy of the cluster.
    caches: Option<Caches>,
    shutdown: CancellationToken,
}

/// The autoscaler's copy of the objects it reads each period, kept by watches.
struct Caches {
    agents: Vec<Store<VoiceAgent>>,
    pools: Vec<Store<ModelPool>>,
    nodes: Store<Node>,
    /// Every unfinished pod in the cluster, slimmed to its GPU facts: GPUs held by pods that
    /// are not GrokCast's are not free either.
    pods: Store<Pod>,
}

/// How long a period waits for a cache's first list before it is skipped: deciding on an
/// empty node cache would report every GPU pool CapacityLimited.
const CACHE_SYNC_WAIT: Duration = Duration::from_secs(10);

/// Watch the objects of `api` that `selection` picks into a new store until `shutdown`, with
/// managedFields and whatever `slim` drops left out of the cache.
fn cache<K>(
    api: Api<K>,
    selection: watcher::Config,
    slim: fn(&mut K),
    shutdown: &CancellationToken,
) -> Store<K>
where
    K: Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (store, writer) = reflector::store();
    let stream = watcher(api, selection)
        .default_backoff()
        .modify(move |o: &mut K| {
            o.meta_mut().managed_fields = None;
            slim(o);
        })
        .reflect(writer)
        .for_each(|event| {
            if let Err(error) = event {
                tracing::warn!(%error, kind = K::kind(&()).as_ref(), "autoscaler watch failed; it retries after a backoff");
            }
            futures::future::ready(())
        });
    let stop = shutdown.clone();
    tokio::spawn(async move {
        tokio::select! {
            () = stop.cancelled() => {}
            () = stream => {}
        }
    });
    store
}

fn keep<K>(_: &mut K) {}

impl Caches {
    fn start(client: &kube::Client, namespaces: &[String], shutdown: &CancellationToken) -> Self {
        let scoped = |ns: Option<&String>| -> (Api<VoiceAgent>, Api<ModelPool>) {
            match ns {
                Some(ns) => (
                    Api::namespaced(client.clone(), ns),
                    Api::namespaced(client.clone(), ns),
                ),
                None => (Api::all(client.clone()), Api::all(client.clone())),
            }
        };
        let scopes: Vec<Option<&String>> = if namespaces.is_empty() {
            vec![None]
        } else {
            namespaces.iter().map(Some).collect()
        };
        let mut caches = Caches {
            agents: Vec::new(),
            pools: Vec::new(),
            nodes: cache(
                Api::all(client.clone()),
                watcher::Config::default(),
                capacity::slim_node,
                shutdown,
            ),
            // Finished pods hold no GPUs, and are most of the pods a busy cluster keeps.
            pods: cache(
                Api::all(client.clone()),
                watcher::Config::default().fields("status.phase!=Succeeded,status.phase!=Failed"),
                capacity::slim_pod,
                shutdown,
            ),
        };
        for ns in scopes {
            let (agents, pools) = scoped(ns);
            caches
                .agents
                .push(cache(agents, watcher::Config::default(), keep, shutdown));
            caches
                .pools
                .push(cache(pools, watcher::Config::default(), keep, shutdown));
        }
        caches
    }
}

async fn synced<K>(store: &Store<K>, kind: &'static str) -> Result<(), PeriodError>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    match tokio::time::timeout(CACHE_SYNC_WAIT, store.wait_until_ready()).await {
        Ok(Ok(())) => Ok(()),
        _ => Err(PeriodError::NotSynced { kind }),
    }
}

async fn cached<K>(stores: &[Store<K>], kind: &'static str) -> Result<Vec<K>, PeriodError>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    let mut items = Vec::new();
    for store in stores {
        synced(store, kind).await?;
        items.extend(store.state().iter().map(|o| o.as_ref().clone()));
    }
    Ok(items)
}

/// What the writer needs beyond the plan: the objects as read.
struct Observed {
    agents: BTreeMap<String, (VoiceAgent, Option<queries::ObserveFailure>)>,
    pools: BTreeMap<String, ModelPool>,
    sampled_at: Time,
}

fn key(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

fn to_u32(value: i32) -> u32 {
    u32::try_from(value).unwrap_or(0)
}

fn to_i32(value: u32) -> i32 {
    i32::try_from(value).unwrap_or(i32::MAX)
}

fn role(role: grokcast_crds::Role) -> Role {
    match role {
        grokcast_crds::Role::Stt => Role::Stt,
        grokcast_crds::Role::Llm => Role::Llm,
        grokcast_crds::Role::Tts => Role::Tts,
    }
}

impl LoopState {
    async fn period(&mut self, now: Duration, leader: &watch::Receiver<Leadership>) {
        let (snapshot, observed) = match self.read().await {
            Ok(read) => read,
            Err(error) => {
                tracing::warn!(%error, "autoscaler period skipped");
                return;
            }
        };
        let plan = self.autoscaler.evaluate(now, &snapshot);
        if let Some(metrics) = &self.metrics {
            metrics.observe(&snapshot, &plan);
        }
        // Leadership can be lost while Prometheus answered; check right before writing.
        if !leader.borrow().is_leading() {
            return;
        }
        for (agent, input) in plan.agents.iter().zip(&snapshot.agents) {
            if let Err(error) = self.write_agent(agent, input, &plan.pools, &observed).await {
                tracing::warn!(%error, "autoscaler write failed");
            }
        }
        for pool in &plan.pools {
            if let Err(error) = self.write_pool(pool, &snapshot, &observed).await {
                tracing::warn!(%error, "autoscaler write failed");
            }
        }
    }

    async fn read(&mut self) -> Result<(Snapshot, Observed), PeriodError> {
        let caches = self.caches.get_or_insert_with(|| {
            Caches::start(&self.client, &self.config.namespaces, &self.shutdown)
        });
        let agents: Vec<VoiceAgent> = cached(&caches.agents, "VoiceAgent").await?;
        let pools: Vec<ModelPool> = cached(&caches.pools, "ModelPool").await?;
        let synced_both = match synced(&caches.nodes, "Node").await {
            Ok(()) => synced(&caches.pods, "Pod").await,
            Err(e) => Err(e),
        };
        let (inventory, scheduled) = match synced_both {
            Ok(()) => {
                let pods: Vec<capacity::GpuPod> = caches
                    .pods
                    .state()
                    .iter()
                    .filter_map(|p| capacity::GpuPod::from_pod(p))
                    .collect();
                let nodes = caches.nodes.state();
                let inventory = GpuInventory::from_nodes(&capacity::gpu_nodes(
                    nodes.iter().map(|n| n.as_ref()),
                    &pods,
                ));
                (Some(inventory), capacity::scheduled_replicas(&pods))
            }
            Err(error) => {
                tracing::warn!(%error, "GPU capacity unknown; pool growth is not capped this period");
                (None, BTreeMap::new())
            }
        };
        let pools: BTreeMap<String, ModelPool> = pools
            .into_iter()
            .map(|p| (key(&p.namespace().unwrap_or_default(), &p.name_any()), p))
            .collect();
        let prometheus = &self.prometheus;
        let config = &*self.config;
        let width = config.concurrency.max(1);
        let autoscaled: Vec<VoiceAgent> = agents
            .into_iter()
            .filter(|a| a.spec.scaling.is_some())
            .collect();
        let mut agent_inputs = Vec::with_capacity(autoscaled.len());
        for chunk in autoscaled.chunks(width) {
            let observed = futures::future::join_all(
                chunk
                    .iter()
                    .map(|agent| observe_agent(prometheus, &config.agent_queries, agent)),
            )
            .await;
            for (agent, observed) in chunk.iter().zip(observed) {
                let input = agent_input(agent, &pools, observed.as_ref().map_err(|f| f.hold));
                agent_inputs.push((input, agent.clone(), observed.err()));
            }
        }
        let all_pools: Vec<(&String, &ModelPool)> = pools.iter().collect();
        let mut pool_inputs = Vec::with_capacity(all_pools.len());
        for chunk in all_pools.chunks(width) {
            let engines = futures::future::join_all(
                chunk
                    .iter()
                    .map(|(_, pool)| observe_pool(prometheus, &config.pool_window, pool)),
            )
            .await;
            for ((pool_key, pool), engine) in chunk.iter().zip(engines) {
                let scheduled = scheduled.get(pool_key.as_str()).copied().unwrap_or(0);
                pool_inputs.push(pool_input(pool_key, pool, scheduled, engine));
            }
        }
        let mut snapshot = Snapshot {
            agents: Vec::new(),
            pools: pool_inputs,
            inventory,
        };
        let mut observed = Observed {
            agents: BTreeMap::new(),
            pools,
            sampled_at: Time(Timestamp::now()),
        };
        for (input, agent, failure) in agent_inputs {
            if let Some(failure) = &failure {
                tracing::warn!(voiceagent = %input.key, error = %failure.error, "agent metrics unavailable; holding replicas");
            }
            observed.agents.insert(input.key.clone(), (agent, failure));
            snapshot.agents.push(input);
        }
        Ok((snapshot, observed))
    }

    async fn write_agent(
        &mut self,
        plan: &AgentPlan,
        input: &AgentInput,
        pools: &[PoolPlan],
        observed: &Observed,
    ) -> Result<(), PeriodError> {
        let Some((agent, failure)) = observed.agents.get(&plan.key) else {
            return Ok(());
        };
        let namespace = agent.namespace().unwrap_or_default();
        let name = agent.name_any();
        let api: Api<VoiceAgent> = Api::namespaced(self.client.clone(), &namespace);
        let write_error = |what, source| PeriodError::Write {
            what,
            kind: "VoiceAgent",
            key: plan.key.clone(),
            source,
        };
        let previous = agent
            .status
            .as_ref()
            .and_then(|s| s.autoscaling.clone())
            .unwrap_or_default();
        let change = ScaleWrite {
            key: &plan.key,
            name: &name,
            current: plan.current,
            decision: plan.decision,
        };
        let (last_scale_time, last_scale_reason) = scale_if_changed(
            &api,
            change,
            (previous.last_scale_time, previous.last_scale_reason),
            || agent_reason_text(plan, input),
            &observed.sampled_at,
        )
        .await
        .map_err(|e| write_error("/scale", e))?;
        let obs = input.observation.as_ref().ok();
        let stage = |s: Stage| obs.and_then(|o| o.stage_p95_ms.get(s)).map(round_ms);
        let bottleneck = plan.attributed.iter().find_map(|s| {
            let r = s.role()?;
            input
                .pools
                .iter()
                .find(|(pr, _)| *pr == r)
                .map(|(_, k)| pool_name(k))
        });
        let gpus_missing: u32 = pools
            .iter()
            .filter(|p| plan.capacity_limited_pools.contains(&p.key))
            .map(|p| p.gpus_missing)
            .sum();
        let status = json!({
            "apiVersion": VoiceAgent::api_version(&()),
            "kind": VoiceAgent::kind(&()),
            "status": {
                "activeCalls": obs.and_then(|o| o.active_calls).map(|c| c.round() as i64),
                "autoscaling": {
                    "turnLatencyP50Ms": obs.and_then(|o| o.turn_p50_ms).map(round_ms),
                    "turnLatencyP95Ms": obs.and_then(|o| o.turn_p95_ms).map(round_ms),
                    "stageLatency": obs.map(|_| json!({
                        "endpointingMs": stage(Stage::Endpointing),
                        "sttMs": stage(Stage::Stt),
                        "llmFirstTokenMs": stage(Stage::LlmFirstToken),
                        "ttsFirstAudioMs": stage(Stage::TtsFirstAudio),
                        "agentMs": stage(Stage::Agent),
                    })),
                    "sampledAt": obs.map(|_| observed.sampled_at.clone()),
                    "desiredReplicas": to_i32(plan.decision.desired),
                    "lastScaleTime": last_scale_time,
                    "lastScaleReason": last_scale_reason,
                    "bottleneckPool": bottleneck,
                    "gpusMissing": (gpus_missing > 0).then_some(gpus_missing),
                },
                "conditions": [slo_condition(plan, input, failure.as_ref(), agent, observed)],
            }
        });
        write_status_if_changed(&api, &name, agent.status.as_ref(), strip_nulls(status))
            .await
            .map_err(|e| write_error("status", e))
    }

    async fn write_pool(
        &mut self,
        plan: &PoolPlan,
        snapshot: &Snapshot,
        observed: &Observed,
    ) -> Result<(), PeriodError> {
        let Some(pool) = observed.pools.get(&plan.key) else {
            return Ok(());
        };
        if pool.spec.autoscaling.is_none() {
            return Ok(());
        }
        let namespace = pool.namespace().unwrap_or_default();
        let name = pool.name_any();
        let api: Api<ModelPool> = Api::namespaced(self.client.clone(), &namespace);
        let write_error = |what, source| PeriodError::Write {
            what,
            kind: "ModelPool",
            key: plan.key.clone(),
            source,
        };
        let previous = pool
            .status
            .as_ref()
            .and_then(|s| s.autoscaling.clone())
            .unwrap_or_default();
        let change = ScaleWrite {
            key: &plan.key,
            name: &name,
            current: plan.current,
            decision: plan.decision,
        };
        let (last_scale_time, last_scale_reason) = scale_if_changed(
            &api,
            change,
            (previous.last_scale_time, previous.last_scale_reason),
            || {
                format!(
                    "{} -> {} replicas: {}",
                    plan.current,
                    plan.decision.desired,
                    reason_text(plan.decision.reason)
                )
            },
            &observed.sampled_at,
        )
        .await
        .map_err(|e| write_error("/scale", e))?;
        let was_limited = self.capacity_limited.contains_key(&plan.key);
        let product = plan.product.as_deref().unwrap_or("any product");
        let limited = plan.gpus_missing > 0;
        if limited {
            self.capacity_limited
                .insert(plan.key.clone(), plan.gpus_missing);
        } else {
            self.capacity_limited.remove(&plan.key);
        }
        let message = if limited {
            format!(
                "needs {} more GPUs ({product}) to run the {} replicas wanted; replicas stay at {} until GPUs free up",
                plan.gpus_missing, plan.wanted, plan.decision.desired
            )
        } else {
            format!("GPUs of {product} available for the replicas wanted")
        };
        if limited && !was_limited {
            let event = Event {
                type_: EventType::Warning,
                reason: condition::CAPACITY_LIMITED.into(),
                note: Some(message.clone()),
                action: "Scale".into(),
                secondary: None,
            };
            if let Err(error) = self.recorder.publish(&event, &pool.object_ref(&())).await {
                tracing::warn!(modelpool = %plan.key, %error, "publishing CapacityLimited event");
            }
        }
        let input = snapshot.pools.iter().find(|p| p.key == plan.key);
        let stage_p95 = stage_p95_for_pool(snapshot, &plan.key);
        let status_word = if limited { "True" } else { "False" };
        let reason_word = if limited {
            reason::INSUFFICIENT_GPUS
        } else {
            reason::GPUS_AVAILABLE
        };
        let status = json!({
            "apiVersion": ModelPool::api_version(&()),
            "kind": ModelPool::kind(&()),
            "status": {
                "autoscaling": {
                    "latencyP95Ms": stage_p95.map(round_ms),
                    "waitingRequests": input.and_then(|i| i.engine).and_then(|e| e.waiting_requests),
                    "sampledAt": observed.sampled_at,
                    "desiredReplicas": to_i32(plan.wanted),
                    "lastScaleTime": last_scale_time,
                    "lastScaleReason": last_scale_reason,
                    "gpusMissing": limited.then_some(to_i32(plan.gpus_missing)),
                },
                "conditions": [build_condition(
                    condition::CAPACITY_LIMITED,
                    status_word,
                    reason_word,
                    &message,
                    pool.meta().generation,
                    pool.status.as_ref().map(|s| s.conditions.as_slice()).unwrap_or(&[]),
                    &observed.sampled_at,
                )],
            }
        });
        write_status_if_changed(&api, &name, pool.status.as_ref(), strip_nulls(status))
            .await
            .map_err(|e| write_error("status", e))
    }
}

async fn observe_agent(
    prometheus: &PrometheusClient,
    defaults: &AgentQueries,
    agent: &VoiceAgent,
) -> Result<super::decide::AgentObservation, queries::ObserveFailure> {
    let namespace = agent.namespace().unwrap_or_default();
    let name = agent.name_any();
    let queries = defaults.with_overrides(agent.annotations());
    let vars = Vars {
        namespace: &namespace,
        voiceagent: &name,
        pool: "",
        window: &agent.spec.slo.window,
    };
    queries::observe_agent(prometheus, &queries, vars).await
}

/// The engine's own metrics for an autoscaled pool; `None` for pools with autoscaling off,
/// engines without metrics, or when they cannot be read (the agents' view still decides).
async fn observe_pool(
    prometheus: &PrometheusClient,
    window: &str,
    pool: &ModelPool,
) -> Option<super::decide::EngineObservation> {
    pool.spec.autoscaling.as_ref()?;
    let namespace = pool.namespace().unwrap_or_default();
    let name = pool.name_any();
    let queries = EngineQueries::for_pool(pool.spec.engine, pool.spec.resolved_role())
        .with_overrides(pool.annotations());
    let vars = Vars {
        namespace: &namespace,
        voiceagent: "",
        pool: &name,
        window,
    };
    match queries::observe_engine(prometheus, &queries, vars).await {
        Ok(engine) => engine,
        Err(failure) => {
            tracing::warn!(modelpool = %key(&namespace, &name), error = %failure.error, "engine metrics unavailable");
            None
        }
    }
}

fn pool_input(
    pool_key: &str,
    pool: &ModelPool,
    scheduled: u32,
    engine: Option<super::decide::EngineObservation>,
) -> PoolInput {
    let spec = pool.spec.autoscaling.as_ref().map(|a| PoolSpec {
        bounds: Bounds {
            min: to_u32(a.min_replicas),
            max: to_u32(a.max_replicas),
        },
        target_latency_ms: f64::from(a.target_latency_ms),
    });
    PoolInput {
        key: pool_key.to_owned(),
        spec,
        current: to_u32(pool.spec.replicas),
        scheduled,
        ready: pool
            .status
            .as_ref()
            .and_then(|s| s.ready_replicas)
            .map(to_u32),
        gpus_per_replica: to_u32(pool.spec.gpu.count),
        product: pool.spec.gpu.product.clone().filter(|p| !p.is_empty()),
        engine,
    }
}

fn agent_input(
    agent: &VoiceAgent,
    pools: &BTreeMap<String, ModelPool>,
    observation: Result<&super::decide::AgentObservation, HoldReason>,
) -> AgentInput {
    let namespace = agent.namespace().unwrap_or_default();
    let scaling = agent
        .spec
        .scaling
        .clone()
        .unwrap_or(grokcast_crds::AgentScaling {
            min_replicas: agent.spec.replicas,
            max_replicas: agent.spec.replicas,
            target_calls_per_pod: agent.spec.telephony.max_concurrent_calls_per_pod,
        });
    let mut budgets = StageValues::default();
    let mut refs = Vec::new();
    let stages = [
        (grokcast_crds::Role::Stt, agent.spec.stt.backend()),
        (grokcast_crds::Role::Llm, agent.spec.llm.backend()),
        (grokcast_crds::Role::Tts, agent.spec.tts.backend()),
    ];
    for (wanted, backend) in stages {
        let Some(pool_name) = backend.model_pool_ref else {
            continue;
        };
        let pool_key = key(&namespace, pool_name);
        let Some(pool) = pools.get(&pool_key) else {
            continue;
        };
        // A pool of the wrong role is the operator's Ready=False; scaling it would not help.
        if pool.spec.resolved_role() != Some(wanted) {
            continue;
        }
        let Some(autoscaling) = &pool.spec.autoscaling else {
            continue;
        };
        let r = role(wanted);
        budgets.set(r.stage(), Some(f64::from(autoscaling.target_latency_ms)));
        refs.push((r, pool_key));
    }
    AgentInput {
        key: key(&namespace, &agent.name_any()),
        spec: AgentSpec {
            slo_p95_ms: f64::from(agent.spec.slo.turn_latency_p95_ms),
            bounds: Bounds {
                min: to_u32(scaling.min_replicas),
                max: to_u32(scaling.max_replicas),
            },
            target_calls_per_pod: to_u32(scaling.target_calls_per_pod),
            max_calls_per_pod: to_u32(agent.spec.telephony.max_concurrent_calls_per_pod),
            budgets_ms: budgets,
        },
        current: to_u32(agent.spec.replicas),
        pools: refs,
        observation: observation.cloned(),
    }
}

fn pool_name(key: &str) -> String {
    key.rsplit('/').next().unwrap_or(key).to_owned()
}

fn round_ms(ms: f64) -> f64 {
    (ms * 10.0).round() / 10.0
}

/// The worst agent-side p95 of the pool's stage among the agents using it.
fn stage_p95_for_pool(snapshot: &Snapshot, pool_key: &str) -> Option<f64> {
    snapshot
        .agents
        .iter()
        .flat_map(|a| {
            let obs = a.observation.as_ref().ok();
            a.pools
                .iter()
                .filter(move |(_, k)| k == pool_key)
                .filter_map(move |(r, _)| obs.and_then(|o| o.stage_p95_ms.get(r.stage())))
        })
        .filter(|v| v.is_finite())
        .fold(None, |acc: Option<f64>, v| {
            Some(acc.map_or(v, |a| a.max(v)))
        })
}

/// The reason in words, for `lastScaleReason` and condition messages.
pub fn reason_text(reason: Reason) -> &'static str {
    match reason {
        Reason::CallLoad => "sized for live calls plus headroom",
        Reason::AgentStageOverBudget => {
            "the agent's own stage is over its budget during an SLO breach"
        }
        Reason::SloBreachAttributed => {
            "turn p95 breaches the SLO and this stage is over its budget"
        }
        Reason::SloBreachLargestStage => {
            "turn p95 breaches the SLO and this stage uses the most of its budget"
        }
        Reason::StageOverBudget => "stage p95 is over its budget",
        Reason::EngineQueueing => "requests are waiting in the engine's queue",
        Reason::UnderBudget => {
            "stage p95 has been well under its budget for the stabilisation window"
        }
        Reason::Idle => "no calls",
        Reason::Steady => "steady",
        Reason::StabilisingScaleDown => "waiting for the stabilisation window before scaling down",
        Reason::MinReplicas => "raised to minReplicas",
        Reason::MaxReplicas => "capped at maxReplicas",
        Reason::LiveCalls => "live calls still need these pods",
        Reason::CapacityLimited => "limited by the GPUs the cluster has",
        Reason::Held => "metrics unavailable; holding replicas",
        Reason::WaitingForNewReplicas => {
            "waiting for the replicas added last to be ready and measured"
        }
        Reason::NearBreachLoad => {
            "one replica fewer would carry nearly the load of the last breach"
        }
    }
}

fn agent_reason_text(plan: &AgentPlan, input: &AgentInput) -> String {
    let calls = input
        .observation
        .as_ref()
        .ok()
        .and_then(|o| o.active_calls)
        .map(|c| {
            format!(
                " ({c:.0} live calls, target {} per pod)",
                input.spec.target_calls_per_pod
            )
        })
        .unwrap_or_default();
    format!(
        "{} -> {} pods: {}{calls}",
        plan.current,
        plan.decision.desired,
        reason_text(plan.decision.reason)
    )
}

fn slo_condition(
    plan: &AgentPlan,
    input: &AgentInput,
    failure: Option<&queries::ObserveFailure>,
    agent: &VoiceAgent,
    observed: &Observed,
) -> Condition {
    let slo = input.spec.slo_p95_ms;
    // Messages quote the figures as status shows them (rounded to 0.1 ms): formatting the raw
    // quantile instead flips "737" and "738" from one period to the next on float noise alone
    // (737.4999... against 737.5000...), a status write each time for nothing a user asked.
    let p95 = input
        .observation
        .as_ref()
        .ok()
        .and_then(|o| o.turn_p95_ms)
        .map(round_ms);
    let risk = if plan.capacity_limited_pools.is_empty() {
        String::new()
    } else {
        let names: Vec<String> = plan
            .capacity_limited_pools
            .iter()
            .map(|k| pool_name(k))
            .collect();
        format!(
            "; SLO at risk: pool {} cannot grow for lack of GPUs",
            names.join(", ")
        )
    };
    let (status, reason_word, message) = match plan.slo {
        SloState::Met => (
            "True",
            reason::WITHIN_SLO,
            format!(
                "turn p95 {:.0} ms within the {slo:.0} ms SLO{risk}",
                p95.unwrap_or(0.0)
            ),
        ),
        SloState::NoTurns => (
            "True",
            reason::WITHIN_SLO,
            format!("no turns in the SLO window{risk}"),
        ),
        SloState::Breached => {
            let obs = input.observation.as_ref().ok();
            let stages: Vec<String> = plan
                .attributed
                .iter()
                .map(|s| {
                    let value = round_ms(obs.and_then(|o| o.stage_p95_ms.get(*s)).unwrap_or(0.0));
                    let budget = input.spec.budgets_ms.get(*s).map_or_else(
                        || " (agent pods)".to_owned(),
                        |b| format!(" over its {b:.0} ms budget"),
                    );
                    format!("{} p95 {value:.0} ms{budget}", s.label())
                })
                .collect();
            let blame = if stages.is_empty() {
                "; no scalable stage to blame".to_owned()
            } else {
                format!("; attributed to {}", stages.join(", "))
            };
            (
                "False",
                reason::SLO_BREACHED,
                format!(
                    "turn p95 {:.0} ms exceeds the {slo:.0} ms SLO{blame}{risk}",
                    p95.unwrap_or(0.0)
                ),
            )
        }
        SloState::Unknown(hold) => {
            let detail = failure
                .map(|f| f.error.to_string())
                .unwrap_or_else(|| match hold {
                    HoldReason::MetricsStale => "the newest agent sample is too old".into(),
                    _ => "the agent exports no grokcast_active_calls series".into(),
                });
            (
                "Unknown",
                reason::METRICS_UNAVAILABLE,
                format!(
                    "{}: {detail}; replicas held at {}",
                    hold.as_str(),
                    plan.decision.desired
                ),
            )
        }
    };
    build_condition(
        condition::SLO_MET,
        status,
        reason_word,
        &message,
        agent.meta().generation,
        agent
            .status
            .as_ref()
            .map(|s| s.conditions.as_slice())
            .unwrap_or(&[]),
        &observed.sampled_at,
    )
}

/// A condition whose `lastTransitionTime` only moves when its status flips.
fn build_condition(
    type_: &str,
    status: &str,
    reason_word: &str,
    message: &str,
    generation: Option<i64>,
    existing: &[Condition],
    now: &Time,
) -> Condition {
    let last_transition_time = existing
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| now.clone());
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason_word.into(),
        message: message.into(),
        observed_generation: generation,
        last_transition_time,
    }
}

/// One object's replica change.
struct ScaleWrite<'a> {
    key: &'a str,
    name: &'a str,
    current: u32,
    decision: super::decide::Decision,
}

/// Writes `/scale` only when the count changes; returns the last scale time and reason to show.
async fn scale_if_changed<K>(
    api: &Api<K>,
    change: ScaleWrite<'_>,
    previous: (Option<Time>, Option<String>),
    why: impl FnOnce() -> String,
    now: &Time,
) -> Result<(Option<Time>, Option<String>), kube::Error>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    if change.decision.desired == change.current {
        return Ok(previous);
    }
    write_scale(api, change.name, change.decision.desired).await?;
    tracing::info!(
        object = %change.key,
        from = change.current,
        to = change.decision.desired,
        reason = change.decision.reason.as_str(),
        "scaled"
    );
    Ok((Some(now.clone()), Some(why())))
}

async fn write_scale<K>(api: &Api<K>, name: &str, replicas: u32) -> Result<(), kube::Error>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let patch = json!({"spec": {"replicas": to_i32(replicas)}});
    api.patch_scale(name, &scale_params(), &Patch::Merge(&patch))
        .await
        .map(|_| ())
}

/// `/scale` writes carry the autoscaler's own field manager, so `managedFields` shows who
/// set `spec.replicas` and a GitOps tool can tell the autoscaler's writes from a user's.
fn scale_params() -> PatchParams {
    PatchParams {
        field_manager: Some(AUTOSCALER_FIELD_MANAGER.into()),
        ..PatchParams::default()
    }
}

/// The fields of `status` the autoscaler owns, as a user sees them: `sampledAt` and the
/// conditions' `lastTransitionTime` left out, conditions only of the autoscaler's types.
fn visible(status: &serde_json::Value) -> serde_json::Value {
    let mut out = serde_json::Map::new();
    for key in ["activeCalls", "autoscaling"] {
        if let Some(v) = status.get(key) {
            let mut v = v.clone();
            if let Some(a) = v.as_object_mut() {
                a.remove("sampledAt");
            }
            out.insert(key.into(), v);
        }
    }
    let conditions: Vec<serde_json::Value> = status
        .get("conditions")
        .and_then(|c| c.as_array())
        .into_iter()
        .flatten()
        .filter(|c| {
            c.get("type")
                .and_then(|t| t.as_str())
                .is_some_and(|t| condition::AUTOSCALER_OWNED.contains(&t))
        })
        .map(|c| {
            let mut c = c.clone();
            if let Some(o) = c.as_object_mut() {
                o.remove("lastTransitionTime");
            }
            c
        })
        .collect();
    out.insert("conditions".into(), conditions.into());
    serde_json::Value::Object(out)
}

/// Whether applying `desired` (the autoscaler's status body, nulls stripped) would change
/// anything a user can see in `current` (the object's status as cached), pure. Without this
/// every period wrote every object (a fresh `sampledAt` each time), about 67 writes a second
/// at 1,000 agents on a 15 s period.
pub fn status_changed<S: serde::Serialize>(
    current: Option<&S>,
    desired: &serde_json::Value,
) -> bool {
    let current = current
        .and_then(|s| serde_json::to_value(s).ok())
        .unwrap_or_else(|| json!({}));
    let want = visible(&desired["status"]);
    let mut have = visible(&current);
    // Only the condition types this write carries: CapacityLimited on a pool, SLOMet on an agent.
    let types: Vec<serde_json::Value> = want["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c.get("type").cloned())
        .collect();
    if let Some(c) = have["conditions"].as_array_mut() {
        c.retain(|c| c.get("type").is_some_and(|t| types.contains(t)));
    }
    have != want
}

/// Apply `status` unless it changes nothing a user can see in `current`.
async fn write_status_if_changed<K, S>(
    api: &Api<K>,
    name: &str,
    current: Option<&S>,
    status: serde_json::Value,
) -> Result<(), kube::Error>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    S: serde::Serialize,
{
    if !status_changed(current, &status) {
        return Ok(());
    }
    apply_status(api, name, status).await
}

async fn apply_status<K>(
    api: &Api<K>,
    name: &str,
    status: serde_json::Value,
) -> Result<(), kube::Error>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    // Forced: these fields belong to the autoscaler alone, whatever wrote them before.
    let params = PatchParams::apply(AUTOSCALER_FIELD_MANAGER).force();
    api.patch_status(name, &params, &Patch::Apply(&status))
        .await
        .map(|_| ())
}

/// Drops `null`s: with server-side apply an absent field is released, a `null` one is an error
/// on some servers.
fn strip_nulls(value: serde_json::Value) -> serde_json::Value {
    match value {
        serde_json::Value::Object(map) => serde_json::Value::Object(
            map.into_iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k, strip_nulls(v)))
                .collect(),
        ),
        serde_json::Value::Array(items) => {
            serde_json::Value::Array(items.into_iter().map(strip_nulls).collect())
        }
        other => other,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// The operator spawns `run` on the multi-threaded runtime: its future must be Send.
    #[allow(dead_code)]
    fn run_is_send(
        client: kube::Client,
        config: AutoscalerConfig,
        leader: watch::Receiver<Leadership>,
        shutdown: CancellationToken,
    ) {
        fn send<T: Send>(_: &T) {}
        send(&run(client, config, leader, shutdown));
    }

    #[test]
    fn condition_transition_time_moves_only_on_flip() {
        let t0 = Time(Timestamp::from_second(1_000).unwrap());
        let t1 = Time(Timestamp::from_second(2_000).unwrap());
        let first = build_condition("SLOMet", "True", "WithinSLO", "ok", Some(3), &[], &t0);
        assert_eq!(first.last_transition_time, t0);
        let same = build_condition(
            "SLOMet",
            "True",
            "WithinSLO",
            "still ok",
            Some(4),
            std::slice::from_ref(&first),
            &t1,
        );
        assert_eq!(same.last_transition_time, t0);
        assert_eq!(same.observed_generation, Some(4));
        let flipped = build_condition(
            "SLOMet",
            "False",
            "SLOBreached",
            "bad",
            Some(4),
            &[first],
            &t1,
        );
        assert_eq!(flipped.last_transition_time, t1);
    }

    fn agent_status(p95: f64, sampled: i64, transition: i64, message: &str) -> serde_json::Value {
        let at = |s| Time(Timestamp::from_second(s).unwrap());
        strip_nulls(json!({
            "apiVersion": "grokcast.io/v1alpha1",
            "kind": "VoiceAgent",
            "status": {
                "activeCalls": 12,
                "autoscaling": {
                    "turnLatencyP95Ms": p95,
                    "sampledAt": at(sampled),
                    "desiredReplicas": 3,
                    "gpusMissing": null,
                },
                "conditions": [{
                    "type": "SLOMet", "status": "True", "reason": "WithinSLO",
                    "message": message, "observedGeneration": 2,
                    "lastTransitionTime": at(transition),
                }],
            }
        }))
    }

    fn as_current(body: &serde_json::Value) -> grokcast_crds::VoiceAgentStatus {
        let mut status: grokcast_crds::VoiceAgentStatus =
            serde_json::from_value(body["status"].clone()).unwrap();
        // Fields of the operator's that the autoscaler never writes.
        status.replicas = Some(3);
        status.conditions.push(Condition {
            type_: "Ready".into(),
            status: "True".into(),
            reason: "Available".into(),
            message: "3/3".into(),
            observed_generation: Some(2),
            last_transition_time: Time(Timestamp::from_second(5).unwrap()),
        });
        status
    }

    #[test]
    fn status_is_written_only_when_a_user_visible_field_changes() {
        let written = agent_status(412.3, 100, 50, "ok");
        let current = as_current(&written);
        assert!(status_changed(
            None::<&grokcast_crds::VoiceAgentStatus>,
            &written
        ));
        assert!(
            !status_changed(Some(&current), &agent_status(412.3, 115, 50, "ok")),
            "only sampledAt moved"
        );
        assert!(
            !status_changed(Some(&current), &agent_status(412.3, 115, 60, "ok")),
            "only lastTransitionTime differs"
        );
        assert!(status_changed(
            Some(&current),
            &agent_status(420.0, 115, 50, "ok")
        ));
        assert!(status_changed(
            Some(&current),
            &agent_status(412.3, 115, 50, "other")
        ));
        let mut dropped = agent_status(412.3, 115, 50, "ok");
        dropped["status"]
            .as_object_mut()
            .unwrap()
            .remove("activeCalls");
        assert!(
            status_changed(Some(&current), &dropped),
            "a field the apply would remove is a change"
        );
    }

    #[test]
    fn scale_writes_carry_the_autoscaler_field_manager() {
        assert_eq!(
            scale_params().field_manager.as_deref(),
            Some(AUTOSCALER_FIELD_MANAGER)
        );
    }

    #[test]
    fn nulls_are_dropped_so_apply_releases_fields() {
        let v = strip_nulls(json!({"a": null, "b": {"c": null, "d": 1}, "e": [{"f": null}]}));
        assert_eq!(v, json!({"b": {"d": 1}, "e": [{}]}));
    }
}
