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
use kube::api::{Api, DeleteParams, Patch, PatchParams};
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
use crate::leader::Leadership;
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
    /// The API server refused to apply a child; the status says so (`ApplyFailed`) and the
    /// reconcile is retried with backoff.
    #[error("{owner} child {kind} {name}: the API server refused the apply ({code}): {message}")]
    Refused {
        /// Kind of the owning resource.
        owner: &'static str,
        /// Kind of the child.
        kind: &'static str,
        /// Its name.
        name: String,
        /// HTTP status code.
        code: u16,
        /// The server's message.
        message: String,
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
            ReconcileError::Refused { .. } => "apply_refused",
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
    /// Leadership; writes happen only while it says this replica leads.
    pub leader: watch::Receiver<Leadership>,
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
        leader: watch::Receiver<Leadership>,
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
        if self.leader.borrow().is_leading() {
            Ok(())
        } else {
            Err(ReconcileError::NotLeader)
        }
    }
}

fn apply_params() -> PatchParams {
    PatchParams::apply(OPERATOR_FIELD_MANAGER).force()
}

/// Why one child was left unapplied. The status step reports the first one; the other
/// children are still applied, so a preload Job the server refuses does not hold back the
/// Deployment behind it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChildProblem {
    /// The child's name is taken by an object this resource does not control.
    NameConflict {
        /// Kind of the object.
        kind: &'static str,
        /// Its name.
        name: String,
    },
    /// The API server refused the apply (any 4xx or 5xx answer).
    Refused {
        /// Kind of the object.
        kind: &'static str,
        /// Its name.
        name: String,
        /// HTTP status code.
        code: u16,
        /// The server's message.
        message: String,
    },
}

impl ChildProblem {
    /// Condition reason.
    pub fn reason(&self) -> &'static str {
        match self {
            ChildProblem::NameConflict { .. } => reason::NAME_CONFLICT,
            ChildProblem::Refused { .. } => reason::APPLY_FAILED,
        }
    }

    /// Condition message and Event note.
    pub fn message(&self, owner_kind: &str) -> String {
        match self {
            ChildProblem::NameConflict { kind, name } => format!(
                "{kind} {name} already exists and is not controlled by this {owner_kind}; \
                 it is left untouched: delete or rename it, or rename the {owner_kind}"
            ),
            ChildProblem::Refused {
                kind,
                name,
                code,
                message,
            } => format!("the API server refused {kind} {name} ({code}): {message}"),
        }
    }

    fn problem(kind: &'static str, name: &str, e: &kube::Error) -> Option<Self> {
        match e {
            kube::Error::Api(s) => Some(ChildProblem::Refused {
                kind,
                name: name.to_string(),
                code: s.code,
                message: s.message.clone(),
            }),
            _ => None,
        }
    }
}

/// Whether the owner with uid `owner_uid` may apply over an existing object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ownership {
    /// No such object: applying creates it.
    Absent,
    /// It has a controller owner reference to this owner.
    Ours,
    /// It exists and this owner does not control it.
    Foreign,
}

/// The [`Ownership`] of `live` (the object as read, `None` when absent), pure. Only a
/// controller reference with the owner's uid counts: the same name and kind from an earlier
/// incarnation of the resource (another uid) or a mere label is not ours.
pub fn ownership(live: Option<&ObjectMeta>, owner_uid: &str) -> Ownership {
    let Some(live) = live else {
        return Ownership::Absent;
    };
    let ours = live
        .owner_references
        .iter()
        .flatten()
        .any(|r| r.controller == Some(true) && r.uid == owner_uid);
    if ours {
        Ownership::Ours
    } else {
        Ownership::Foreign
    }
}

/// What the apply step did: the Deployment and preload Job among the children (as applied or
/// from the cache), and the children it left alone.
#[derive(Default)]
struct Applied {
    deployment: Option<Arc<Deployment>>,
    job: Option<Arc<Job>>,
    problems: Vec<ChildProblem>,
}

/// What one apply returned: the metadata (for the last-applied record) and, for a
/// Deployment or Job, the object, whose status readiness and preload read.
struct ApplyResponse {
    meta: ObjectMeta,
    deployment: Option<Deployment>,
    job: Option<Job>,
}

impl ApplyResponse {
    fn meta(meta: ObjectMeta) -> Self {
        Self {
            meta,
            deployment: None,
            job: None,
        }
    }
}

/// Server-side apply one child.
async fn apply_child(
    client: &Client,
    ns: &str,
    child: &Child,
) -> Result<ApplyResponse, kube::Error> {
    let name = child.name();
    let pp = apply_params();
    match child {
        Child::Deployment(o) => Api::<Deployment>::namespaced(client.clone(), ns)
            .patch(name, &pp, &Patch::Apply(o))
            .await
            .map(|d| ApplyResponse {
                meta: d.metadata.clone(),
                deployment: Some(d),
                job: None,
            }),
        Child::Job(o) => Api::<Job>::namespaced(client.clone(), ns)
            .patch(name, &pp, &Patch::Apply(o))
            .await
            .map(|j| ApplyResponse {
                meta: j.metadata.clone(),
                deployment: None,
                job: Some(j),
            }),
        Child::ConfigMap(o) => Api::<ConfigMap>::namespaced(client.clone(), ns)
            .patch(name, &pp, &Patch::Apply(o))
            .await
            .map(|o| ApplyResponse::meta(o.metadata)),
        Child::Service(o) => Api::<Service>::namespaced(client.clone(), ns)
            .patch(name, &pp, &Patch::Apply(o))
            .await
            .map(|o| ApplyResponse::meta(o.metadata)),
        Child::PodDisruptionBudget(o) => Api::<PodDisruptionBudget>::namespaced(client.clone(), ns)
            .patch(name, &pp, &Patch::Apply(o))
            .await
            .map(|o| ApplyResponse::meta(o.metadata)),
        Child::PersistentVolumeClaim(o) => {
            Api::<PersistentVolumeClaim>::namespaced(client.clone(), ns)
                .patch(name, &pp, &Patch::Apply(o))
                .await
                .map(|o| ApplyResponse::meta(o.metadata))
        }
        Child::ServiceMonitor(o) => Api::<kube::api::DynamicObject>::namespaced_with(
            client.clone(),
            ns,
            &service_monitor_resource(),
        )
        .patch(name, &pp, &Patch::Apply(o))
        .await
        .map(|o| ApplyResponse::meta(o.metadata)),
    }
}

async fn get_meta<K>(api: Api<K>, name: &str) -> Result<Option<ObjectMeta>, kube::Error>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    Ok(api.get_metadata_opt(name).await?.map(|o| o.metadata))
}

/// Read the metadata of the live object `child` would be applied over.
async fn live_child_meta(
    client: &Client,
    ns: &str,
    child: &Child,
) -> Result<Option<ObjectMeta>, kube::Error> {
    let name = child.name();
    let c = client.clone();
    match child {
        Child::Deployment(_) => get_meta(Api::<Deployment>::namespaced(c, ns), name).await,
        Child::Job(_) => get_meta(Api::<Job>::namespaced(c, ns), name).await,
        Child::ConfigMap(_) => get_meta(Api::<ConfigMap>::namespaced(c, ns), name).await,
        Child::Service(_) => get_meta(Api::<Service>::namespaced(c, ns), name).await,
        Child::PodDisruptionBudget(_) => {
            get_meta(Api::<PodDisruptionBudget>::namespaced(c, ns), name).await
        }
        Child::PersistentVolumeClaim(_) => {
            get_meta(Api::<PersistentVolumeClaim>::namespaced(c, ns), name).await
        }
        Child::ServiceMonitor(_) => {
            let api = Api::<kube::api::DynamicObject>::namespaced_with(
                c,
                ns,
                &service_monitor_resource(),
            );
            get_meta(api, name).await
        }
    }
}

/// Whether `child` may be applied: ours when the cache or our own last apply says so (no
/// request), else read once. A child missing from the cache is either absent, not yet seen
/// (the cache is still listing after a start), or someone else's object with the same name,
/// which the label-filtered cache never holds.
async fn child_ownership(
    ctx: &Context,
    ns: &str,
    key: &ChildKey,
    child: &Child,
    live: Option<&ObjectMeta>,
) -> Result<Ownership, kube::Error> {
    let uid = child.owner_uid().unwrap_or_default();
    if let Some(live) = live {
        return Ok(ownership(Some(live), uid));
    }
    if !ctx.children.caches(child) && ctx.applied.knows(key) {
        // An uncached kind we applied before: reading it back every reconcile would double
        // its cost. Cached kinds are read instead: a deletion missed while a watch was down
        // leaves a record behind, and someone may have taken the name since.
        return Ok(Ownership::Ours);
    }
    ctx.children.wait_synced(child).await;
    if let Some(live) = ctx.children.live_meta(ns, child) {
        return Ok(ownership(Some(&live), uid));
    }
    let live = live_child_meta(&ctx.client, ns, child).await?;
    Ok(ownership(live.as_ref(), uid))
}

/// The apply step: server-side apply every child whose last apply is not still in place
/// (see [`crate::last_applied`]) and that is not someone else's object. Children already in
/// the cache cost no request when unchanged; one the cache does not hold is read first.
async fn apply_children(
    ctx: &Context,
    ns: &str,
    children: &[Child],
) -> Result<Applied, ReconcileError> {
    let mut out = Applied::default();
    for child in children {
        let key = ChildKey::new(child.kind(), ns, child.name());
        let body = last_applied::body_hash(child);
        let live = ctx.children.live_meta(ns, child);
        if ctx.applied.is_current(&key, body, live.as_ref()) {
            ctx.metrics
                .child_applies
                .with_label_values(&[child.kind(), "skipped"])
                .inc();
            match child {
                Child::Deployment(_) => out.deployment = ctx.children.deployment(ns, child.name()),
                Child::Job(_) => out.job = ctx.children.job(ns, child.name()),
                _ => {}
            }
            continue;
        }
        let owned = match child_ownership(ctx, ns, &key, child, live.as_ref()).await {
            Ok(o) => o,
            Err(e) => match ChildProblem::problem(child.kind(), child.name(), &e) {
                Some(p) => {
                    out.problems.push(p);
                    continue;
                }
                None => return Err(api_err("get", child.kind(), child.name())(e)),
            },
        };
        if owned == Ownership::Foreign {
            ctx.metrics
                .child_applies
                .with_label_values(&[child.kind(), "conflict"])
                .inc();
            out.problems.push(ChildProblem::NameConflict {
                kind: child.kind(),
                name: child.name().to_string(),
            });
            continue;
        }
        ctx.ensure_leader()?;
        let applied = match apply_child(&ctx.client, ns, child).await {
            Ok(a) => a,
            Err(e) => match ChildProblem::problem(child.kind(), child.name(), &e) {
                Some(p) => {
                    tracing::warn!(kind = child.kind(), name = child.name(), error = %e, "apply refused");
                    ctx.metrics
                        .child_applies
                        .with_label_values(&[child.kind(), "refused"])
                        .inc();
                    out.problems.push(p);
                    continue;
                }
                None => return Err(api_err("apply", child.kind(), child.name())(e)),
            },
        };
        ctx.metrics
            .child_applies
            .with_label_values(&[child.kind(), "applied"])
            .inc();
        ctx.applied.record(key, body, &applied.meta);
        if let Some(d) = applied.deployment {
            out.deployment = Some(Arc::new(d));
        }
        if let Some(j) = applied.job {
            out.job = Some(Arc::new(j));
        }
    }
    Ok(out)
}

/// Delete this pool's preload Jobs other than `keep` (older templates), found in the cache,
/// with background propagation so their pods go too. Best effort: a failure is logged and
/// retried on the next reconcile, and never blocks the rest.
async fn delete_stale_preload_jobs(ctx: &Context, ns: &str, pool: &str, keep: Option<&str>) {
    let names = ctx.children.pool_jobs(ns, pool);
    let stale = model_pool::stale_preload_jobs(pool, keep, names.iter().map(String::as_str));
    if stale.is_empty() || ctx.ensure_leader().is_err() {
        return;
    }
    let api: Api<Job> = Api::namespaced(ctx.client.clone(), ns);
    for name in stale {
        match api.delete(&name, &DeleteParams::background()).await {
            Ok(_) => tracing::info!(job = %name, "deleted preload Job of an older template"),
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(error) => tracing::warn!(job = %name, %error, "could not delete old preload Job"),
        }
    }
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

/// How often a resource whose child name is taken looks again: the foreign object carries
/// none of our labels, so no watch says when it is gone.
const NAME_CONFLICT_RECHECK: Duration = Duration::from_secs(60);

/// What to do after the apply step left `problems`: a refused apply fails the reconcile (so
/// it backs off and retries) once its status is written; a name conflict looks again later.
fn after_problems(
    problems: &[ChildProblem],
    owner_kind: &'static str,
) -> Result<Action, ReconcileError> {
    if let Some(ChildProblem::Refused {
        kind,
        name,
        code,
        message,
    }) = problems
        .iter()
        .find(|p| matches!(p, ChildProblem::Refused { .. }))
    {
        return Err(ReconcileError::Refused {
            owner: owner_kind,
            kind,
            name: name.clone(),
            code: *code,
            message: message.clone(),
        });
    }
    if problems.is_empty() {
        Ok(Action::await_change())
    } else {
        Ok(Action::requeue(NAME_CONFLICT_RECHECK))
    }
}

/// Replica counts from a Deployment, when there is one to read; otherwise the status keeps
/// what it said (the Deployment may be someone else's, or not yet in the cache).
fn readiness_fields(d: Option<&Deployment>) -> Option<(i32, i32)> {
    d.map(|d| {
        let (ready, replicas, _) = deployment_readiness(Some(d));
        (ready, replicas)
    })
}

/// The ModelPool conditions, pure: readiness, then what the preload is doing, then the
/// first child problem, which overrides both.
pub fn pool_conditions(
    readiness: (i32, i32, bool),
    desired_replicas: i32,
    preload: &model_pool::PreloadState,
    problem: Option<(&'static str, String)>,
) -> Vec<Desired> {
    let (ready, _, rolled_out) = readiness;
    let mut desired = readiness_conditions(ready, desired_replicas, rolled_out, None);
    for d in &mut desired {
        match (d.type_, preload) {
            (condition::PROGRESSING, model_pool::PreloadState::Running { job, checkpoint }) => {
                *d = Desired::yes(
                    condition::PROGRESSING,
                    reason::PRELOADING,
                    format!("preload Job {job} is downloading {checkpoint} into the cache volume"),
                );
            }
            (condition::DEGRADED, model_pool::PreloadState::Failed { job, message }) => {
                *d = Desired::yes(
                    condition::DEGRADED,
                    reason::PRELOAD_FAILED,
                    format!("preload Job {job} failed: {message}"),
                );
            }
            _ => {}
        }
    }
    match problem {
        Some((reason, message)) => status::with_problem(desired, reason, &message),
        None => desired,
    }
}

async fn reconcile_pool_inner(pool: &ModelPool, ctx: &Context) -> Result<Action, ReconcileError> {
    let ns = pool.namespace().unwrap_or_default();
    let name = pool.name_any();
    let no_status = Default::default();
    let current = pool.status.as_ref().unwrap_or(&no_status);
    let settings = ctx.settings();
    // Every status write starts from what the status says, so a problem path keeps the
    // fields that are still true (selector for /scale, endpoint for agents).
    let mut fields = status::PoolFields::from_status(current);
    if let Some((ready, replicas)) =
        readiness_fields(ctx.children.deployment(&ns, &name).as_deref())
    {
        (fields.ready_replicas, fields.replicas) = (Some(ready), Some(replicas));
    }

    // validate (pure)
    let valid = match model_pool::validate(pool, &settings) {
        Ok(v) => v,
        Err(e) => {
            let desired = problem_conditions(reason::INVALID_SPEC, &e.to_string());
            write_pool_status(ctx, pool, current, &desired, &fields).await?;
            // Only a spec change can fix it; the watch brings that.
            return Ok(Action::await_change());
        }
    };
    fields.selector = Some(valid.owner.selector_string());
    fields.role = Some(valid.role);
    fields.endpoint = Some(model_pool::endpoint(&valid.owner.name, &ns, valid.port));
    fields.streaming_endpoint = valid
        .grpc_port
        .map(|port| model_pool::streaming_endpoint(&valid.owner.name, &ns, port));
    fields.gpus_requested = Some(pool.spec.replicas * pool.spec.gpu.count);

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
            write_pool_status(ctx, pool, current, &desired, &fields).await?;
            // Secrets are watched: creating or fixing it triggers this pool.
            return Ok(Action::await_change());
        }
    }

    // build (pure) + apply
    let wanted = model_pool::preload_for(&valid, &settings);
    let children = model_pool::build(&valid, &settings);
    let applied = apply_children(ctx, &ns, &children).await?;
    delete_stale_preload_jobs(
        ctx,
        &ns,
        &name,
        wanted.as_ref().map(|p| p.job_name.as_str()),
    )
    .await;

    // status
    let live_job = applied.job.clone().or_else(|| {
        wanted
            .as_ref()
            .and_then(|w| ctx.children.job(&ns, &w.job_name))
    });
    let preload = model_pool::preload_state(
        wanted.as_ref(),
        live_job.as_deref(),
        current.preload.as_ref(),
    );
    if let model_pool::PreloadState::Completed(done) = &preload {
        fields.preload = Some(done.clone());
    }
    let deployment = applied
        .deployment
        .clone()
        .or_else(|| ctx.children.deployment(&ns, &name));
    if let Some((ready, replicas)) = readiness_fields(deployment.as_deref()) {
        (fields.ready_replicas, fields.replicas) = (Some(ready), Some(replicas));
    }
    let problem = applied
        .problems
        .first()
        .map(|p| (p.reason(), p.message("ModelPool")));
    let desired = pool_conditions(
        deployment_readiness(deployment.as_deref()),
        pool.spec.replicas,
        &preload,
        problem,
    );
    write_pool_status(ctx, pool, current, &desired, &fields).await?;
    after_problems(&applied.problems, "ModelPool")
}

async fn write_pool_status(
    ctx: &Context,
    pool: &ModelPool,
    current: &grokcast_crds::ModelPoolStatus,
    desired: &[Desired],
    fields: &status::PoolFields,
) -> Result<(), ReconcileError> {
    let changed = *fields != status::PoolFields::from_status(current)
        || current.observed_generation != pool.metadata.generation;
    write_status(
        ctx,
        "ModelPool",
        pool,
        &current.conditions,
        desired,
        status::fields_json(fields),
        changed,
    )
    .await
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
    let child = voice_agent::child_name(&agent.name_any());
    // What stays true whatever the spec's problems: the names follow from the resource's
    // name, the webhook from the spec, the counts from the Deployment if there is one.
    let mut fields = status::AgentFields::from_status(current);
    if let Some(owner) = meta::Owner::of(agent, voice_agent::APP, meta::VOICE_AGENT_LABEL) {
        fields.selector = Some(owner.selector_string());
    }
    fields.endpoint = Some(format!(
        "http://{child}.{ns}.svc:{}",
        voice_agent::AGENT_PORT
    ));
    fields.webhook_url = Some(voice_agent::webhook_url(
        &agent.spec.telephony.twilio.public_url,
    ));
    if let Some((ready, replicas)) =
        readiness_fields(ctx.children.deployment(&ns, &child).as_deref())
    {
        (fields.ready_replicas, fields.replicas) = (Some(ready), Some(replicas));
    }

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
    let mut secrets = Vec::new();
    for r in voice_agent::secret_refs(&agent.spec) {
        let found = lookup_secret(&ctx.client, &ns, &r).await?;
        secrets.push((r, found));
    }
    let secret = |r: &SecretKeyRef| {
        secrets
            .iter()
            .find(|(known, _)| known == r)
            .map_or(SecretLookup::Missing, |(_, found)| *found)
    };
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
            write_agent_status(ctx, agent, current, &desired, &fields).await?;
            // Pools and Secrets are watched: creating or fixing one triggers this agent, and
            // an invalid spec waits for its own change.
            return Ok(Action::await_change());
        }
    };

    // build (pure) + apply
    let children = voice_agent::build(&valid, &settings);
    let applied = apply_children(ctx, &ns, &children).await?;

    // status
    let deployment = applied
        .deployment
        .clone()
        .or_else(|| ctx.children.deployment(&ns, &child));
    if let Some((ready, replicas)) = readiness_fields(deployment.as_deref()) {
        (fields.ready_replicas, fields.replicas) = (Some(ready), Some(replicas));
    }
    let (ready, _, rolled_out) = deployment_readiness(deployment.as_deref());
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
    if let Some(p) = applied.problems.first() {
        desired = status::with_problem(desired, p.reason(), &p.message("VoiceAgent"));
    }
    write_agent_status(ctx, agent, current, &desired, &fields).await?;
    after_problems(&applied.problems, "VoiceAgent")
}

async fn write_agent_status(
    ctx: &Context,
    agent: &VoiceAgent,
    current: &grokcast_crds::VoiceAgentStatus,
    desired: &[Desired],
    fields: &status::AgentFields,
) -> Result<(), ReconcileError> {
    let changed = *fields != status::AgentFields::from_status(current)
        || current.observed_generation != agent.metadata.generation;
    write_status(
        ctx,
        "VoiceAgent",
        agent,
        &current.conditions,
        desired,
        status::fields_json(fields),
        changed,
    )
    .await
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

/// Pools in `pools` whose `huggingFaceTokenSecretRef` names the Secret `secret` in its
/// namespace.
pub fn pools_referencing_secret(
    pools: &[Arc<ModelPool>],
    secret: &ObjectMeta,
) -> Vec<ObjectRef<ModelPool>> {
    pools
        .iter()
        .filter(|p| p.metadata.namespace == secret.namespace)
        .filter(|p| {
            p.spec
                .hugging_face_token_secret_ref
                .as_ref()
                .is_some_and(|r| Some(&r.name) == secret.name.as_ref())
        })
        .map(|p| ObjectRef::from_obj(p.as_ref()))
        .collect()
}

/// Agents in `agents` that read `secret` (the Twilio token's or the playground token's), in
/// its namespace.
pub fn agents_referencing_secret(
    agents: &[Arc<VoiceAgent>],
    secret: &ObjectMeta,
) -> Vec<ObjectRef<VoiceAgent>> {
    agents
        .iter()
        .filter(|a| a.metadata.namespace == secret.namespace)
        .filter(|a| {
            voice_agent::secret_refs(&a.spec)
                .iter()
                .any(|r| Some(&r.name) == secret.name.as_ref())
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
    leader: watch::Receiver<Leadership>,
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
        let (deployments, deployment_triggers) = watches::owned_objects(
            scoped(&client, ns),
            pool_children.clone(),
            applied.clone(),
            watches::slim_deployment,
        );
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
        let (jobs, job_triggers) = watches::owned_objects::<Job>(
            scoped(&client, ns),
            pool_children.clone(),
            applied.clone(),
            watches::slim_job,
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
        let referencing = pools.clone();
        let pool_ctrl = Controller::for_stream(pool_triggers, pools.clone())
            .with_config(controller_config.clone())
            .owns_stream(deployment_triggers)
            .owns_stream(service_triggers)
            .owns_stream(pdb_triggers)
            .owns_stream(pvc_triggers)
            .owns_stream(job_triggers)
            .watches_stream(watches::secrets(scoped(&client, ns)), move |secret| {
                pools_referencing_secret(&referencing.state(), &secret.metadata)
            });
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
        let (deployments, deployment_triggers) = watches::owned_objects(
            scoped(&client, ns),
            agent_children.clone(),
            applied.clone(),
            watches::slim_deployment,
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
        let referencing_secret = agents.clone();
        let agent_ctrl = Controller::for_stream(agent_triggers, agents)
            .with_config(controller_config.clone())
            .owns_stream(deployment_triggers)
            .owns_stream(service_triggers)
            .owns_stream(pdb_triggers)
            .owns_stream(config_map_triggers)
            .watches_stream(pool_triggers, move |pool| {
                agents_referencing(&referencing.state(), &pool)
            })
            .watches_stream(watches::secrets(scoped(&client, ns)), move |secret| {
                agents_referencing_secret(&referencing_secret.state(), &secret.metadata)
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

    fn owned_by(uid: &str, controller: bool) -> ObjectMeta {
        ObjectMeta {
            name: Some("whisper".into()),
            owner_references: Some(vec![
                k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
                    api_version: "grokcast.io/v1alpha1".into(),
                    kind: "ModelPool".into(),
                    name: "whisper".into(),
                    uid: uid.into(),
                    controller: Some(controller),
                    ..Default::default()
                },
            ]),
            ..ObjectMeta::default()
        }
    }

    #[test]
    fn only_a_controller_reference_to_this_uid_makes_a_child_ours() {
        assert_eq!(ownership(None, "u1"), Ownership::Absent);
        assert_eq!(
            ownership(Some(&owned_by("u1", true)), "u1"),
            Ownership::Ours
        );
        let users = ObjectMeta {
            name: Some("whisper".into()),
            ..ObjectMeta::default()
        };
        assert_eq!(
            ownership(Some(&users), "u1"),
            Ownership::Foreign,
            "a user's object"
        );
        assert_eq!(
            ownership(Some(&owned_by("u0", true)), "u1"),
            Ownership::Foreign,
            "an earlier pool of the same name"
        );
        assert_eq!(
            ownership(Some(&owned_by("u1", false)), "u1"),
            Ownership::Foreign,
            "a non-controller reference does not make it ours"
        );
    }

    fn refused(code: u16, message: &str) -> kube::Error {
        kube::Error::Api(Box::new(kube::core::Status {
            code,
            message: message.into(),
            ..kube::core::Status::default()
        }))
    }

    #[test]
    fn server_refusals_become_apply_failed_with_the_server_message() {
        let msg = "Deployment.apps \"r-agent\" is invalid: lifecycle.preStop.sleep: field not declared in schema";
        let p = ChildProblem::problem("Deployment", "r-agent", &refused(500, msg)).unwrap();
        assert_eq!(p.reason(), reason::APPLY_FAILED);
        assert!(p.message("VoiceAgent").contains(msg));
        assert!(p.message("VoiceAgent").contains("Deployment r-agent (500)"));
        let conflict = ChildProblem::NameConflict {
            kind: "Service",
            name: "whisper".into(),
        };
        assert_eq!(conflict.reason(), reason::NAME_CONFLICT);
        assert!(
            conflict
                .message("ModelPool")
                .starts_with("Service whisper already exists")
        );
        // A refusal fails the reconcile (backoff); a conflict looks again later; none waits.
        assert!(matches!(
            after_problems(&[conflict.clone(), p], "VoiceAgent"),
            Err(ReconcileError::Refused { code: 500, .. })
        ));
        assert_eq!(
            after_problems(&[conflict], "ModelPool").unwrap(),
            Action::requeue(NAME_CONFLICT_RECHECK)
        );
        assert_eq!(
            after_problems(&[], "ModelPool").unwrap(),
            Action::await_change()
        );
    }

    fn reason_of<'a>(desired: &'a [Desired], type_: &str) -> (&'a str, bool) {
        let d = desired.iter().find(|d| d.type_ == type_).unwrap();
        (d.reason, d.status)
    }

    #[test]
    fn pool_conditions_say_preloading_failed_and_problems() {
        use model_pool::PreloadState;
        let running = PreloadState::Running {
            job: "p-preload-0123abcd".into(),
            checkpoint: "org/model".into(),
        };
        let d = pool_conditions((1, 1, true), 1, &running, None);
        assert_eq!(reason_of(&d, condition::READY), (reason::AVAILABLE, true));
        assert_eq!(
            reason_of(&d, condition::PROGRESSING),
            (reason::PRELOADING, true)
        );
        let failed = PreloadState::Failed {
            job: "p-preload-0123abcd".into(),
            message: "BackoffLimitExceeded".into(),
        };
        let d = pool_conditions((0, 0, false), 1, &failed, None);
        assert_eq!(
            reason_of(&d, condition::DEGRADED),
            (reason::PRELOAD_FAILED, true)
        );
        let d = pool_conditions(
            (1, 1, true),
            1,
            &PreloadState::Done,
            Some((reason::APPLY_FAILED, "refused".into())),
        );
        assert_eq!(
            reason_of(&d, condition::READY),
            (reason::APPLY_FAILED, false)
        );
        assert_eq!(
            reason_of(&d, condition::DEGRADED),
            (reason::APPLY_FAILED, true)
        );
        let d = pool_conditions((1, 1, true), 1, &PreloadState::Done, None);
        assert_eq!(
            reason_of(&d, condition::PROGRESSING),
            (reason::ROLLOUT_COMPLETE, false)
        );
        assert_eq!(reason_of(&d, condition::DEGRADED), (reason::HEALTHY, false));
    }

    #[test]
    fn a_secret_maps_to_the_resources_that_reference_it() {
        let pool: ModelPool = serde_json::from_value(json!({
            "apiVersion": "grokcast.io/v1alpha1", "kind": "ModelPool",
            "metadata": {"name": "gemma", "namespace": "voice"},
            "spec": {"engine": "vllm", "model": "google/gemma-3-27b-it",
                     "huggingFaceTokenSecretRef": {"name": "hf", "key": "token"}}
        }))
        .unwrap();
        let mut elsewhere = pool.clone();
        elsewhere.metadata.namespace = Some("other".into());
        let pools = vec![Arc::new(pool), Arc::new(elsewhere)];
        let secret = |name: &str| ObjectMeta {
            name: Some(name.into()),
            namespace: Some("voice".into()),
            ..ObjectMeta::default()
        };
        let hits = pools_referencing_secret(&pools, &secret("hf"));
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].namespace.as_deref(), Some("voice"));
        assert!(pools_referencing_secret(&pools, &secret("twilio")).is_empty());

        let agent: VoiceAgent = serde_json::from_value(json!({
            "apiVersion": "grokcast.io/v1alpha1", "kind": "VoiceAgent",
            "metadata": {"name": "r", "namespace": "voice"},
            "spec": {
                "telephony": {"twilio": {"authTokenSecretRef": {"name": "twilio", "key": "authToken"},
                                         "publicUrl": "https://voice.example.com"}},
                "persona": {"systemPrompt": "x"},
                "stt": {"modelPoolRef": "w"}, "llm": {"modelPoolRef": "g"}, "tts": {"modelPoolRef": "c"}
            }
        }))
        .unwrap();
        let agents = vec![Arc::new(agent)];
        assert_eq!(
            agents_referencing_secret(&agents, &secret("twilio")).len(),
            1
        );
        assert!(agents_referencing_secret(&agents, &secret("hf")).is_empty());
    }

    #[test]
    fn readiness_fields_keep_the_status_without_a_deployment() {
        assert_eq!(readiness_fields(None), None);
        let d: Deployment = serde_json::from_value(json!({
            "metadata": {"name": "x", "generation": 2},
            "spec": {"replicas": 3, "selector": {}, "template": {}},
            "status": {"observedGeneration": 2, "replicas": 3, "readyReplicas": 2, "updatedReplicas": 3}
        }))
        .unwrap();
        assert_eq!(readiness_fields(Some(&d)), Some((2, 3)));
    }
}
