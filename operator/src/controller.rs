//! The two controllers around the pure steps: dereference (reads the cluster) -> validate ->
//! build -> apply (server-side apply, one field manager, owner references) -> status.
//!
//! Watches ([`crate::watches`]): the custom resources (a reconcile per new generation, not per
//! status write), their children (each controller its own, by label, into slim caches), and
//! ModelPools for VoiceAgents (a pool's spec or readiness change re-reconciles the agents that
//! reference it). The apply step skips children whose last apply is still in place
//! ([`crate::last_applied`]) and the status step skips writes that change nothing, so a
//! reconcile with nothing to do costs only its Secret read, and a converged object waits for
//! a change: steady state costs no requests.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use grokcast_crds::condition::{self, reason};
use grokcast_crds::{ModelPool, OPERATOR_FIELD_MANAGER, SecretKeyRef, VoiceAgent};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::Config as ControllerConfig;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use tokio::sync::{Mutex, watch};
use tokio_util::sync::CancellationToken;

use crate::children::{Child, service_monitor_resource};
use crate::last_applied::{self, ChildKey, LastApplied};
use crate::meta;
use crate::metrics::Metrics;
use crate::settings::BuildSettings;
use crate::status::{self, Desired, Transition};
use crate::voice_agent::{PoolLookup, Problem, SecretLookup};
use crate::watches::{self, ChildCaches};
use crate::{model_pool, voice_agent};

/// Why a reconcile failed; `label()` is the metric label.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// An API call failed.
    #[error("{action} {kind} {name}: {source}")]
    Api {
        /// What was attempted (apply, get, status).
        action: &'static str,
        /// Kind of the object.
        kind: &'static str,
        /// Its name.
        name: String,
        /// The client error.
        #[source]
        source: kube::Error,
    },
    /// This replica is not the leader; nothing was written.
    #[error("not the leader; skipped writes")]
    NotLeader,
}

impl ReconcileError {
    /// Static metric label.
    pub fn label(&self) -> &'static str {
        match self {
            ReconcileError::Api {
                action: "apply", ..
            } => "apply_failed",
            ReconcileError::Api {
                action: "status", ..
            } => "status_failed",
            ReconcileError::Api { .. } => "read_failed",
            ReconcileError::NotLeader => "not_leader",
        }
    }
}

fn api_err(
    action: &'static str,
    kind: &'static str,
    name: &str,
) -> impl FnOnce(kube::Error) -> ReconcileError {
    let name = name.to_string();
    move |source| ReconcileError::Api {
        action,
        kind,
        name,
        source,
    }
}

/// Shared state of both controllers.
pub struct Context {
    /// API client.
    pub client: Client,
    /// Images and defaults.
    pub settings: BuildSettings,
    /// Whether ServiceMonitors exist in the cluster (refreshed in the background).
    pub service_monitors: Arc<AtomicBool>,
    /// Event recorder.
    pub recorder: Recorder,
    /// Metrics.
    pub metrics: Metrics,
    /// Cache of every ModelPool, for VoiceAgent dereference without API reads; for the agent
    /// controller, filled by the same watch whose pool changes trigger it.
    pub pools: Store<ModelPool>,
    /// Leadership; writes happen only while it is `true`.
    pub leader: watch::Receiver<bool>,
    /// Caches of this controller's children, for skipping unchanged ones.
    pub children: ChildCaches,
    /// What this controller last applied to each child.
    pub applied: Arc<LastApplied>,
    /// Consecutive failures per object, for exponential backoff.
    failures: Mutex<HashMap<String, u32>>,
}

impl Context {
    /// Build a context for one controller, with the caches of the children it owns and
    /// the last-applied record those caches' deletions prune.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        client: Client,
        settings: BuildSettings,
        service_monitors: Arc<AtomicBool>,
        metrics: Metrics,
        pools: Store<ModelPool>,
        leader: watch::Receiver<bool>,
        instance: Option<String>,
        children: ChildCaches,
        applied: Arc<LastApplied>,
    ) -> Self {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: OPERATOR_FIELD_MANAGER.into(),
                instance,
            },
        );
        Self {
            client,
            settings,
            service_monitors,
            recorder,
            metrics,
            pools,
            leader,
            children,
            applied,
            failures: Mutex::new(HashMap::new()),
        }
    }

    fn settings(&self) -> BuildSettings {
        let mut s = self.settings.clone();
        s.service_monitors = self.service_monitors.load(Ordering::Relaxed);
        s
    }

    fn ensure_leader(&self) -> Result<(), ReconcileError> {
        if *self.leader.borrow() {
            Ok(())
        } else {
            Err(ReconcileError::NotLeader)
        }
    }
}

fn apply_params() -> PatchParams {
    PatchParams::apply(OPERATOR_FIELD_MANAGER).force()
}

/// Server-side apply one child. Returns the metadata the server answered with (for the
/// last-applied record) and, for a Deployment, the applied object, whose status says how
/// many pods are ready, so readiness needs no extra read.
async fn apply_child(
    client: &Client,
    ns: &str,
    child: &Child,
) -> Result<(ObjectMeta, Option<Deployment>), ReconcileError> {
    let name = child.name();
    let err = api_err("apply", child.kind(), name);
    let pp = apply_params();
    match child {
        Child::Deployment(o) => {
            let api: Api<Deployment> = Api::namespaced(client.clone(), ns);
            return api
                .patch(name, &pp, &Patch::Apply(o))
                .await
                .map(|d| (d.metadata.clone(), Some(d)))
                .map_err(err);
        }
        Child::ConfigMap(o) => Api::<ConfigMap>::namespaced(client.clone(), ns)
            .patch(name, &pp, &Patch::Apply(o))
            .await
            .map(|o| o.metadata),
        Child::Service(o) => Api::<Service>::namespaced(client.clone(), ns)
            .patch(name, &pp, &Patch::Apply(o))
            .await
            .map(|o| o.metadata),
        Child::PodDisruptionBudget(o) => Api::<PodDisruptionBudget>::namespaced(client.clone(), ns)
            .patch(name, &pp, &Patch::Apply(o))
            .await
            .map(|o| o.metadata),
        Child::PersistentVolumeClaim(o) => {
            Api::<PersistentVolumeClaim>::namespaced(client.clone(), ns)
                .patch(name, &pp, &Patch::Apply(o))
                .await
                .map(|o| o.metadata)
        }
        Child::Job(o) => Api::<Job>::namespaced(client.clone(), ns)
            .patch(name, &pp, &Patch::Apply(o))
            .await
            .map(|o| o.metadata),
        Child::ServiceMonitor(o) => Api::<kube::api::DynamicObject>::namespaced_with(
            client.clone(),
            ns,
            &service_monitor_resource(),
        )
        .patch(name, &pp, &Patch::Apply(o))
        .await
        .map(|o| o.metadata),
    }
    .map(|meta| (meta, None))
    .map_err(err)
}

/// The apply step: server-side apply every child whose last apply is not still in place
/// (see [`crate::last_applied`]). Returns the Deployment among them, as applied or, when
/// unchanged, from the cache, for readiness.
async fn apply_children(
    ctx: &Context,
    ns: &str,
    children: &[Child],
) -> Result<Option<Arc<Deployment>>, ReconcileError> {
    let mut deployment = None;
    for child in children {
        let key = ChildKey::new(child.kind(), ns, child.name());
        let body = last_applied::body_hash(child);
        let live = ctx.children.live_meta(ns, child);
        if ctx.applied.is_current(&key, body, live.as_ref()) {
            ctx.metrics
                .child_applies
                .with_label_values(&[child.kind(), "skipped"])
                .inc();
            if matches!(child, Child::Deployment(_)) {
                deployment = ctx.children.deployment(ns, child.name());
            }
            continue;
        }
        ctx.ensure_leader()?;
        let (meta, applied) = apply_child(&ctx.client, ns, child).await?;
        ctx.metrics
            .child_applies
            .with_label_values(&[child.kind(), "applied"])
            .inc();
        ctx.applied.record(key, body, &meta);
        if let Some(d) = applied {
            deployment = Some(Arc::new(d));
        }
    }
    Ok(deployment)
}

/// Read a Secret and say whether it has `key`. The value is never logged or kept.
async fn lookup_secret(
    client: &Client,
    ns: &str,
    r: &SecretKeyRef,
) -> Result<SecretLookup, ReconcileError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    let secret = api
        .get_opt(&r.name)
        .await
        .map_err(api_err("get", "Secret", &r.name))?;
    Ok(match secret {
        None => SecretLookup::Missing,
        Some(s) => {
            let has = s.data.as_ref().is_some_and(|d| d.contains_key(&r.key))
                || s.string_data
                    .as_ref()
                    .is_some_and(|d| d.contains_key(&r.key));
            if has {
                SecretLookup::Present
            } else {
                SecretLookup::KeyMissing
            }
        }
    })
}

/// Pods ready and desired in an applied Deployment.
fn deployment_readiness(d: Option<&Deployment>) -> (i32, i32, bool) {
    let Some(d) = d else { return (0, 0, false) };
    let desired = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let Some(st) = d.status.as_ref() else {
        return (0, 0, false);
    };
    let current_gen = st.observed_generation.unwrap_or(0) >= d.metadata.generation.unwrap_or(0);
    let updated = st.updated_replicas.unwrap_or(0);
    let rolled_out = current_gen && updated >= desired && st.replicas.unwrap_or(0) <= desired;
    (
        st.ready_replicas.unwrap_or(0),
        st.replicas.unwrap_or(0),
        rolled_out,
    )
}

/// Conditions from Deployment readiness when nothing is wrong.
fn readiness_conditions(
    ready: i32,
    desired: i32,
    rolled_out: bool,
    extra_not_ready: Option<Desired>,
) -> Vec<Desired> {
    let serving = ready >= 1 || desired == 0;
    let mut out = Vec::new();
    match (&extra_not_ready, serving) {
        (Some(d), _) => out.push(Desired::no(condition::READY, d.reason, d.message.clone())),
        (None, true) if desired == 0 => out.push(Desired::no(
            condition::READY,
            reason::WAITING_FOR_PODS,
            "scaled to zero replicas",
        )),
        (None, true) => out.push(Desired::yes(
            condition::READY,
            reason::AVAILABLE,
            format!("{ready}/{desired} replicas ready"),
        )),
        (None, false) => out.push(Desired::no(
            condition::READY,
            reason::WAITING_FOR_PODS,
            format!("{ready}/{desired} replicas ready"),
        )),
    }
    if rolled_out && ready >= desired {
        out.push(Desired::no(
            condition::PROGRESSING,
            reason::ROLLOUT_COMPLETE,
            "rollout complete",
        ));
    } else {
        out.push(Desired::yes(
            condition::PROGRESSING,
            reason::ROLLING_OUT,
            format!("{ready}/{desired} replicas ready"),
        ));
    }
    out.push(Desired::no(
        condition::DEGRADED,
        reason::HEALTHY,
        "no problems",
    ));
    out
}

/// Conditions for a problem that blocks building children.
fn problem_conditions(reason: &'static str, message: &str) -> Vec<Desired> {
    vec![
        Desired::no(condition::READY, reason, message),
        Desired::no(
            condition::PROGRESSING,
            reason,
            "waiting for the problem to be fixed",
        ),
        Desired::yes(condition::DEGRADED, reason, message),
    ]
}

/// Publish an Event for a Ready transition. Failures are logged, never fatal: Events are
/// best effort in Kubernetes too.
async fn announce<K: Resource<DynamicType = ()>>(ctx: &Context, obj: &K, t: Transition) {
    let (type_, reason, note) = match t {
        Transition::BecameReady => (
            EventType::Normal,
            reason::AVAILABLE.to_string(),
            "Ready".to_string(),
        ),
        Transition::NotReady { reason, message } => (EventType::Warning, reason, message),
    };
    let ev = Event {
        type_,
        reason,
        note: Some(note),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&ev, &obj.object_ref(&())).await {
        tracing::warn!(error = %e, "could not publish event");
    }
}

/// Write operator-owned status if it changed, and announce the Ready transition.
async fn write_status<K>(
    ctx: &Context,
    kind: &'static str,
    obj: &K,
    current_conditions: &[Condition],
    desired: &[Desired],
    fields: serde_json::Value,
    fields_changed: bool,
) -> Result<(), ReconcileError>
where
    K: Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let generation = obj.meta().generation.unwrap_or(0);
    let now = Time(Timestamp::now());
    let conditions = status::merge(current_conditions, desired, generation, &now);
    let transition = status::ready_transition(current_conditions, &conditions);
    if !fields_changed && !status::changed(current_conditions, &conditions) {
        return Ok(());
    }
    let mut status = fields;
    status["conditions"] = serde_json::to_value(&conditions).unwrap_or_default();
    status["observedGeneration"] = json!(generation);
    let patch = json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    let name = obj.name_any();
    let ns = obj.namespace().unwrap_or_default();
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &ns);
    api.patch_status(&name, &apply_params(), &Patch::Apply(&patch))
        .await
        .map_err(api_err("status", kind, &name))?;
    if let Some(t) = transition {
        announce(ctx, obj, t).await;
    }
    Ok(())
}

fn requeue_for_reference() -> Action {
    // Secrets are not watched (that would need list/watch on every Secret); poll for the fix.
    Action::requeue(Duration::from_secs(30))
}

/// Reconcile one ModelPool.
#[tracing::instrument(skip_all, fields(pool = %pool.name_any(), ns = pool.namespace().unwrap_or_default()))]
pub async fn reconcile_pool(
    pool: Arc<ModelPool>,
    ctx: Arc<Context>,
) -> Result<Action, ReconcileError> {
    ctx.ensure_leader()?;
    measured(
        &ctx,
        "modelpool",
        key(&*pool),
        reconcile_pool_inner(&pool, &ctx),
    )
    .await
}

/// Counts and times one reconcile under its controller's static label, and forgets the
/// object's failure streak once it succeeds, so the next failure backs off from the start.
async fn measured(
    ctx: &Context,
    controller: &'static str,
    object: String,
    reconcile: impl std::future::Future<Output = Result<Action, ReconcileError>>,
) -> Result<Action, ReconcileError> {
    let started = Instant::now();
    ctx.metrics
        .reconciles
        .with_label_values(&[controller])
        .inc();
    let result = reconcile.await;
    ctx.metrics
        .duration
        .with_label_values(&[controller])
        .observe(started.elapsed().as_secs_f64());
    if result.is_ok() {
        ctx.failures.lock().await.remove(&object);
    }
    result
}

async fn reconcile_pool_inner(pool: &ModelPool, ctx: &Context) -> Result<Action, ReconcileError> {
    let ns = pool.namespace().unwrap_or_default();
    let no_status = Default::default();
    let current = pool.status.as_ref().unwrap_or(&no_status);
    let settings = ctx.settings();

    // validate (pure)
    let valid = match model_pool::validate(pool, &settings) {
        Ok(v) => v,
        Err(e) => {
            let desired = problem_conditions(reason::INVALID_SPEC, &e.to_string());
            write_status(
                ctx,
                "ModelPool",
                pool,
                &current.conditions,
                &desired,
                json!({}),
                false,
            )
            .await?;
            // Only a spec change can fix it; the watch brings that.
            return Ok(Action::await_change());
        }
    };
    // dereference
    if let Some(r) = &pool.spec.hugging_face_token_secret_ref {
        let problem = match lookup_secret(&ctx.client, &ns, r).await? {
            SecretLookup::Present => None,
            SecretLookup::Missing => Some((
                reason::SECRET_NOT_FOUND,
                format!("huggingFaceTokenSecretRef: Secret {:?} not found", r.name),
            )),
            SecretLookup::KeyMissing => Some((
                reason::SECRET_KEY_MISSING,
                format!(
                    "huggingFaceTokenSecretRef: Secret {:?} has no key {:?}",
                    r.name, r.key
                ),
            )),
        };
        if let Some((reason, message)) = problem {
            let desired = problem_conditions(reason, &message);
            write_status(
                ctx,
                "ModelPool",
                pool,
                &current.conditions,
                &desired,
                json!({}),
                false,
            )
            .await?;
            return Ok(requeue_for_reference());
        }
    }
    // build (pure) + apply
    let children = model_pool::build(&valid, &settings);
    let deployment = apply_children(ctx, &ns, &children).await?;
    // status
    let (ready, replicas, rolled_out) = deployment_readiness(deployment.as_deref());
    let desired_replicas = pool.spec.replicas;
    let desired = readiness_conditions(ready, desired_replicas, rolled_out, None);
    let fields = json!({
        "replicas": replicas,
        "readyReplicas": ready,
        "selector": valid.owner.selector_string(),
        "role": valid.role,
        "endpoint": model_pool::endpoint(&valid.owner.name, &ns, valid.port),
        "gpusRequested": desired_replicas * pool.spec.gpu.count,
    });
    let fields_changed = current.replicas != Some(replicas)
        || current.ready_replicas != Some(ready)
        || current.selector.as_deref() != fields["selector"].as_str()
        || current.role != Some(valid.role)
        || current.endpoint.as_deref() != fields["endpoint"].as_str()
        || current.gpus_requested != Some(desired_replicas * pool.spec.gpu.count)
        || current.observed_generation != pool.metadata.generation;
    write_status(
        ctx,
        "ModelPool",
        pool,
        &current.conditions,
        &desired,
        fields,
        fields_changed,
    )
    .await?;
    Ok(Action::await_change())
}

/// Reconcile one VoiceAgent.
#[tracing::instrument(skip_all, fields(agent = %agent.name_any(), ns = agent.namespace().unwrap_or_default()))]
pub async fn reconcile_agent(
    agent: Arc<VoiceAgent>,
    ctx: Arc<Context>,
) -> Result<Action, ReconcileError> {
    ctx.ensure_leader()?;
    measured(
        &ctx,
        "voiceagent",
        key(&*agent),
        reconcile_agent_inner(&agent, &ctx),
    )
    .await
}

async fn reconcile_agent_inner(
    agent: &VoiceAgent,
    ctx: &Context,
) -> Result<Action, ReconcileError> {
    let ns = agent.namespace().unwrap_or_default();
    let no_status = Default::default();
    let current = agent.status.as_ref().unwrap_or(&no_status);
    let settings = ctx.settings();

    // dereference: pools from the cache (a read only when the cache lacks one, so a pool
    // created a moment ago is never reported missing), the Twilio Secret from the API
    let mut pools: HashMap<String, Arc<ModelPool>> = HashMap::new();
    let pool_api: Api<ModelPool> = Api::namespaced(ctx.client.clone(), &ns);
    for name in [
        &agent.spec.stt.model_pool_ref,
        &agent.spec.llm.model_pool_ref,
        &agent.spec.tts.model_pool_ref,
    ]
    .into_iter()
    .flatten()
    {
        if pools.contains_key(name) {
            continue;
        }
        let found = match ctx.pools.get(&ObjectRef::new(name).within(&ns)) {
            Some(p) => Some(p),
            None => pool_api
                .get_opt(name)
                .await
                .map_err(api_err("get", "ModelPool", name))?
                .map(Arc::new),
        };
        if let Some(p) = found {
            pools.insert(name.clone(), p);
        }
    }
    let secret = lookup_secret(
        &ctx.client,
        &ns,
        &agent.spec.telephony.twilio.auth_token_secret_ref,
    )
    .await?;
    let lookup = |name: &str| {
        pools
            .get(name)
            .map_or(PoolLookup::Missing, |p| PoolLookup::Found(p.as_ref()))
    };

    // validate (pure)
    let valid = match voice_agent::validate(agent, lookup, secret) {
        Ok(v) => v,
        Err(problem) => {
            let message = problem.to_string();
            let mut desired = problem_conditions(problem.reason(), &message);
            let models = match &problem {
                Problem::PoolNotFound { .. } | Problem::PoolWrongRole { .. } => {
                    Desired::no(condition::MODELS_READY, problem.reason(), message.clone())
                }
                _ => Desired::no(
                    condition::MODELS_READY,
                    problem.reason(),
                    "not checked until the spec is fixed",
                ),
            };
            desired.insert(1, models);
            write_status(
                ctx,
                "VoiceAgent",
                agent,
                &current.conditions,
                &desired,
                json!({}),
                false,
            )
            .await?;
            return Ok(match problem {
                Problem::InvalidSpec(_) => Action::await_change(),
                // Pools are watched: a new or changed pool triggers us.
                Problem::PoolNotFound { .. } | Problem::PoolWrongRole { .. } => {
                    Action::await_change()
                }
                Problem::SecretNotFound { .. } | Problem::SecretKeyMissing { .. } => {
                    requeue_for_reference()
                }
            });
        }
    };

    // build (pure) + apply
    let children = voice_agent::build(&valid, &settings);
    let deployment = apply_children(ctx, &ns, &children).await?;

    // status
    let (ready, replicas, rolled_out) = deployment_readiness(deployment.as_deref());
    let not_ready_pools = valid.pools_not_ready();
    let models = if not_ready_pools.is_empty() {
        Desired::yes(
            condition::MODELS_READY,
            reason::MODELS_AVAILABLE,
            "every model backend is ready",
        )
    } else {
        Desired::no(
            condition::MODELS_READY,
            reason::MODEL_POOL_NOT_READY,
            format!("ModelPool not ready: {}", not_ready_pools.join(", ")),
        )
    };
    let blocker = (!models.status).then(|| models.clone());
    let mut desired = readiness_conditions(ready, agent.spec.replicas, rolled_out, blocker);
    desired.insert(1, models);
    let child = voice_agent::child_name(&valid.owner.name);
    let endpoint = format!("http://{child}.{ns}.svc:{}", voice_agent::AGENT_PORT);
    let webhook = voice_agent::webhook_url(&agent.spec.telephony.twilio.public_url);
    let fields = json!({
        "replicas": replicas,
        "readyReplicas": ready,
        "selector": valid.owner.selector_string(),
        "endpoint": endpoint,
        "webhookUrl": webhook,
    });
    let fields_changed = current.replicas != Some(replicas)
        || current.ready_replicas != Some(ready)
        || current.selector.as_deref() != fields["selector"].as_str()
        || current.endpoint.as_deref() != Some(endpoint.as_str())
        || current.webhook_url.as_deref() != Some(webhook.as_str())
        || current.observed_generation != agent.metadata.generation;
    write_status(
        ctx,
        "VoiceAgent",
        agent,
        &current.conditions,
        &desired,
        fields,
        fields_changed,
    )
    .await?;
    Ok(Action::await_change())
}

fn key<K: Resource<DynamicType = ()>>(obj: &K) -> String {
    format!(
        "{}/{}/{}",
        K::kind(&()),
        obj.meta().namespace.as_deref().unwrap_or_default(),
        obj.meta().name.as_deref().unwrap_or_default()
    )
}

fn backoff(failures: u32) -> Duration {
    // 1 s, 2 s, 4 s ... capped at 5 minutes.
    Duration::from_secs(1u64 << failures.min(8)).min(Duration::from_secs(300))
}

fn error_policy<K: Resource<DynamicType = ()>>(
    controller: &'static str,
) -> impl Fn(Arc<K>, &ReconcileError, Arc<Context>) -> Action {
    move |obj, err, ctx| {
        ctx.metrics
            .failures
            .with_label_values(&[controller, err.label()])
            .inc();
        if matches!(err, ReconcileError::NotLeader) {
            return Action::requeue(Duration::from_secs(5));
        }
        tracing::warn!(controller, object = %key(&*obj), error = %err, "reconcile failed");
        let n = {
            // try_lock: error_policy is sync; contention means another update is in flight.
            match ctx.failures.try_lock() {
                Ok(mut map) => {
                    let n = map.entry(key(&*obj)).or_insert(0);
                    *n += 1;
                    *n
                }
                Err(_) => 1,
            }
        };
        Action::requeue(backoff(n))
    }
}

/// Which namespaces to watch: `None` is all.
fn scoped<K>(client: &Client, ns: Option<&str>) -> Api<K>
where
    K: Resource<Scope = kube::core::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match ns {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Agents in `agents` that reference `pool` by name in its namespace.
pub fn agents_referencing(
    agents: &[Arc<VoiceAgent>],
    pool: &ModelPool,
) -> Vec<ObjectRef<VoiceAgent>> {
    let name = pool.name_any();
    let ns = pool.namespace();
    agents
        .iter()
        .filter(|a| a.namespace() == ns)
        .filter(|a| {
            [
                &a.spec.stt.model_pool_ref,
                &a.spec.llm.model_pool_ref,
                &a.spec.tts.model_pool_ref,
            ]
            .into_iter()
            .flatten()
            .any(|r| *r == name)
        })
        .map(|a| ObjectRef::from_obj(a.as_ref()))
        .collect()
}

/// Inputs to [`run_controllers`].
pub struct RunConfig {
    /// Images and defaults.
    pub settings: BuildSettings,
    /// Namespaces to watch; empty means all.
    pub namespaces: Vec<String>,
    /// Event reporting instance (pod name).
    pub instance: Option<String>,
}

/// How many reconciles of one controller run at once. Unbounded, a cold start with
/// thousands of objects opens thousands of concurrent requests: the API server queues them
/// anyway, and every one in flight holds buffers in the operator.
const CONCURRENT_RECONCILES: u16 = 16;

/// Run both controllers for every watched namespace until `shutdown`.
pub async fn run_controllers(
    client: Client,
    config: RunConfig,
    metrics: Metrics,
    service_monitors: Arc<AtomicBool>,
    leader: watch::Receiver<bool>,
    shutdown: CancellationToken,
) {
    let scopes: Vec<Option<String>> = if config.namespaces.is_empty() {
        vec![None]
    } else {
        config.namespaces.iter().cloned().map(Some).collect()
    };
    // Each controller watches only its own children, so no child is cached twice.
    let pool_children = watcher::Config::default().labels(&format!(
        "{},{}",
        meta::managed_selector(),
        meta::MODEL_POOL_LABEL
    ));
    let agent_children = watcher::Config::default().labels(&format!(
        "{},{}",
        meta::managed_selector(),
        meta::VOICE_AGENT_LABEL
    ));
    let controller_config = ControllerConfig::default().concurrency(CONCURRENT_RECONCILES);
    let mut tasks = Vec::new();
    for scope in scopes {
        let ns = scope.as_deref();
        let context = |pools: Store<ModelPool>, children, applied| {
            Arc::new(Context::new(
                client.clone(),
                config.settings.clone(),
                service_monitors.clone(),
                metrics.clone(),
                pools,
                leader.clone(),
                config.instance.clone(),
                children,
                applied,
            ))
        };

        let (pools, pool_triggers) = watches::owners(scoped::<ModelPool>(&client, ns));
        let applied = Arc::new(LastApplied::new());
        let (deployments, deployment_triggers) =
            watches::owned_deployments(scoped(&client, ns), pool_children.clone(), applied.clone());
        let (services, service_triggers) = watches::owned_metadata::<Service>(
            scoped(&client, ns),
            pool_children.clone(),
            applied.clone(),
        );
        let (pdbs, pdb_triggers) = watches::owned_metadata::<PodDisruptionBudget>(
            scoped(&client, ns),
            pool_children.clone(),
            applied.clone(),
        );
        let (pvcs, pvc_triggers) = watches::owned_metadata::<PersistentVolumeClaim>(
            scoped(&client, ns),
            pool_children.clone(),
            applied.clone(),
        );
        let (jobs, job_triggers) = watches::owned_metadata::<Job>(
            scoped(&client, ns),
            pool_children.clone(),
            applied.clone(),
        );
        let pool_ctx = context(
            pools.clone(),
            ChildCaches {
                deployments: Some(deployments),
                services: Some(services),
                pod_disruption_budgets: Some(pdbs),
                persistent_volume_claims: Some(pvcs),
                jobs: Some(jobs),
                ..ChildCaches::default()
            },
            applied,
        );
        let pool_ctrl = Controller::for_stream(pool_triggers, pools.clone())
            .with_config(controller_config.clone())
            .owns_stream(deployment_triggers)
            .owns_stream(service_triggers)
            .owns_stream(pdb_triggers)
            .owns_stream(pvc_triggers)
            .owns_stream(job_triggers);
        let stop = shutdown.clone();
        tasks.push(tokio::spawn(async move {
            pool_ctrl
                .graceful_shutdown_on(async move { stop.cancelled().await })
                .run(
                    reconcile_pool,
                    error_policy::<ModelPool>("modelpool"),
                    pool_ctx,
                )
                .for_each(|r| async move {
                    if let Err(e) = r {
                        tracing::debug!(error = %e, "modelpool controller event");
                    }
                })
                .await;
        }));

        let (agents, agent_triggers) = watches::owners(scoped::<VoiceAgent>(&client, ns));
        let applied = Arc::new(LastApplied::new());
        let (deployments, deployment_triggers) = watches::owned_deployments(
            scoped(&client, ns),
            agent_children.clone(),
            applied.clone(),
        );
        let (services, service_triggers) = watches::owned_metadata::<Service>(
            scoped(&client, ns),
            agent_children.clone(),
            applied.clone(),
        );
        let (pdbs, pdb_triggers) = watches::owned_metadata::<PodDisruptionBudget>(
            scoped(&client, ns),
            agent_children.clone(),
            applied.clone(),
        );
        let (config_maps, config_map_triggers) = watches::owned_metadata::<ConfigMap>(
            scoped(&client, ns),
            agent_children.clone(),
            applied.clone(),
        );
        let (pools_seen_by_agents, pool_triggers) =
            watches::pools_for_agents(scoped::<ModelPool>(&client, ns));
        let agent_ctx = context(
            pools_seen_by_agents,
            ChildCaches {
                deployments: Some(deployments),
                services: Some(services),
                pod_disruption_budgets: Some(pdbs),
                config_maps: Some(config_maps),
                ..ChildCaches::default()
            },
            applied,
        );
        let referencing = agents.clone();
        let agent_ctrl = Controller::for_stream(agent_triggers, agents)
            .with_config(controller_config.clone())
            .owns_stream(deployment_triggers)
            .owns_stream(service_triggers)
            .owns_stream(pdb_triggers)
            .owns_stream(config_map_triggers)
            .watches_stream(pool_triggers, move |pool| {
                agents_referencing(&referencing.state(), &pool)
            });
        let stop = shutdown.clone();
        tasks.push(tokio::spawn(async move {
            agent_ctrl
                .graceful_shutdown_on(async move { stop.cancelled().await })
                .run(
                    reconcile_agent,
                    error_policy::<VoiceAgent>("voiceagent"),
                    agent_ctx,
                )
                .for_each(|r| async move {
                    if let Err(e) = r {
                        tracing::debug!(error = %e, "voiceagent controller event");
                    }
                })
                .await;
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

/// Whether the cluster serves `monitoring.coreos.com/v1` ServiceMonitors.
pub async fn has_service_monitors(client: &Client) -> bool {
    match client
        .list_api_group_resources("monitoring.coreos.com/v1")
        .await
    {
        Ok(list) => list.resources.iter().any(|r| r.name == "servicemonitors"),
        Err(_) => false,
    }
}

/// Re-check for the ServiceMonitor CRD every few minutes, so installing the Prometheus
/// Operator later is picked up without a restart.
pub async fn watch_service_monitor_support(
    client: Client,
    flag: Arc<AtomicBool>,
    shutdown: CancellationToken,
) {
    loop {
        let found = has_service_monitors(&client).await;
        if flag.swap(found, Ordering::Relaxed) != found {
            tracing::info!(found, "ServiceMonitor support changed");
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(300)) => {}
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_caps() {
        assert_eq!(backoff(1), Duration::from_secs(2));
        assert_eq!(backoff(3), Duration::from_secs(8));
        assert_eq!(backoff(30), Duration::from_secs(256));
    }

    #[test]
    fn error_labels_are_static_names() {
        let e = ReconcileError::NotLeader;
        assert_eq!(e.label(), "not_leader");
    }
}
