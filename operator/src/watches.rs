//! The watches behind the controllers, each a stream that triggers reconciles and most of
//! them feeding a cache:
//! - the custom resources themselves, triggering only on a new generation: the operator's
//!   own status writes (several per object while it converges) and the autoscaler's are no
//!   reason to reconcile again;
//! - the children each controller owns, whose caches let the apply step skip children that
//!   have not changed (see [`crate::last_applied`]) and read a Deployment's readiness without
//!   a request;
//! - ModelPools for VoiceAgents, triggering only when what an agent reads of a pool changes.
//!
//! Memory is what matters here (the operator watches every child in the cluster): children
//! are watched metadata-only, except Deployments, whose status is needed; every cached object
//! loses its managedFields, and Deployments also lose their pod template, which is most of
//! their size and which the operator never reads back.

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::Arc;

use futures::{Stream, StreamExt, future};
use grokcast_crds::ModelPool;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;
use kube::api::{Api, PartialObjectMeta};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{PredicateConfig, WatchStreamExt, predicates, watcher};
use serde::de::DeserializeOwned;

use crate::children::Child;
use crate::last_applied::{ChildKey, LastApplied};
use crate::voice_agent;

/// Drop what no cache reader needs and every object carries: managedFields is often the
/// largest part of an object, and the last-applied annotation a client may have left.
pub fn strip_metadata(meta: &mut ObjectMeta) {
    meta.managed_fields = None;
    if let Some(a) = meta.annotations.as_mut() {
        a.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
}

/// A Deployment cut down to what readiness and the skip check read: metadata (uid,
/// generation, labels, owners), `spec.replicas` and status.
pub fn slim_deployment(d: &mut Deployment) {
    strip_metadata(&mut d.metadata);
    if let Some(spec) = d.spec.as_mut() {
        spec.template = Default::default();
    }
}

/// Caches of one controller's children, by kind. A kind the controller does not own stays
/// `None`, and its children are always applied.
#[derive(Clone, Default)]
pub struct ChildCaches {
    /// Deployments: full status, slimmed.
    pub deployments: Option<Store<Deployment>>,
    /// ConfigMaps, metadata only.
    pub config_maps: Option<Store<PartialObjectMeta<ConfigMap>>>,
    /// Services, metadata only.
    pub services: Option<Store<PartialObjectMeta<Service>>>,
    /// PodDisruptionBudgets, metadata only.
    pub pod_disruption_budgets: Option<Store<PartialObjectMeta<PodDisruptionBudget>>>,
    /// PersistentVolumeClaims, metadata only.
    pub persistent_volume_claims: Option<Store<PartialObjectMeta<PersistentVolumeClaim>>>,
    /// Jobs, metadata only.
    pub jobs: Option<Store<PartialObjectMeta<Job>>>,
}

fn cached_meta<K>(store: Option<&Store<K>>, ns: &str, name: &str) -> Option<ObjectMeta>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    store?
        .get(&ObjectRef::new(name).within(ns))
        .map(|o| o.meta().clone())
}

impl ChildCaches {
    /// The cached metadata of the live `child` in `ns`; `None` when it is not in the cache
    /// (deleted, not yet seen, or a kind without a cache).
    pub fn live_meta(&self, ns: &str, child: &Child) -> Option<ObjectMeta> {
        let name = child.name();
        match child {
            Child::Deployment(_) => cached_meta(self.deployments.as_ref(), ns, name),
            Child::ConfigMap(_) => cached_meta(self.config_maps.as_ref(), ns, name),
            Child::Service(_) => cached_meta(self.services.as_ref(), ns, name),
            Child::PodDisruptionBudget(_) => {
                cached_meta(self.pod_disruption_budgets.as_ref(), ns, name)
            }
            Child::PersistentVolumeClaim(_) => {
                cached_meta(self.persistent_volume_claims.as_ref(), ns, name)
            }
            Child::Job(_) => cached_meta(self.jobs.as_ref(), ns, name),
            // Not watched: the CRD may not exist, and it is one object per agent.
            Child::ServiceMonitor(_) => None,
        }
    }

    /// The cached Deployment `name` in `ns`.
    pub fn deployment(&self, ns: &str, name: &str) -> Option<Arc<Deployment>> {
        self.deployments
            .as_ref()?
            .get(&ObjectRef::new(name).within(ns))
    }
}

/// Forget the last-applied record of `kind` children the watch reports deleted.
fn forget_deleted<O: Resource>(
    applied: Arc<LastApplied>,
    kind: &'static str,
) -> impl FnMut(&Result<watcher::Event<O>, watcher::Error>) {
    move |event| {
        if let Ok(watcher::Event::Delete(obj)) = event {
            applied.forget(&ChildKey::new(
                kind,
                obj.meta().namespace.as_deref().unwrap_or_default(),
                obj.meta().name.as_deref().unwrap_or_default(),
            ));
        }
    }
}

/// A metadata-only watch of owned children of kind `K` (an `Api<PartialObjectMeta<K>>`
/// asks the server for metadata only): fills a cache and yields every touched child (deleted
/// ones included) to trigger its owner.
pub fn owned_metadata<K>(
    api: Api<PartialObjectMeta<K>>,
    config: watcher::Config,
    applied: Arc<LastApplied>,
) -> (
    Store<PartialObjectMeta<K>>,
    impl Stream<Item = Result<PartialObjectMeta<K>, watcher::Error>> + Send + 'static,
)
where
    K: Resource<DynamicType = ()>
        + k8s_openapi::Resource
        + Clone
        + DeserializeOwned
        + Debug
        + Send
        + Sync
        + 'static,
{
    let (store, writer) = reflector::store();
    let kind = <K as k8s_openapi::Resource>::KIND;
    let stream = watcher(api, config)
        .default_backoff()
        .modify(|o: &mut PartialObjectMeta<K>| strip_metadata(&mut o.metadata))
        .reflect(writer)
        .inspect(forget_deleted(applied, kind))
        .touched_objects();
    (store, without_errors(kind, stream))
}

/// A watch of owned Deployments, slimmed by [`slim_deployment`], that fills a cache and
/// yields every touched Deployment to trigger its owner.
pub fn owned_deployments(
    api: Api<Deployment>,
    config: watcher::Config,
    applied: Arc<LastApplied>,
) -> (
    Store<Deployment>,
    impl Stream<Item = Result<Deployment, watcher::Error>> + Send + 'static,
) {
    let (store, writer) = reflector::store();
    let stream = watcher(api, config)
        .default_backoff()
        .modify(slim_deployment)
        .reflect(writer)
        .inspect(forget_deleted(applied, "Deployment"))
        .touched_objects();
    (store, without_errors("Deployment", stream))
}

/// A watch of the custom resources of kind `K` (managedFields stripped) that fills the
/// controller's cache with every change but yields an object only when its generation is
/// new: creation and spec changes. Status-only changes need no reconcile: the operator's own
/// status writes would otherwise each cost one more reconcile per object.
pub fn owners<K>(
    api: Api<K>,
) -> (
    Store<K>,
    impl Stream<Item = Result<K, watcher::Error>> + Send + 'static,
)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let (store, writer) = reflector::store();
    let stream = watcher(api, watcher::Config::default())
        .default_backoff()
        .modify(|o: &mut K| strip_metadata(o.meta_mut()))
        .reflect(writer)
        .applied_objects()
        .predicate_filter(predicates::generation, PredicateConfig::default());
    (store, without_errors(std::any::type_name::<K>(), stream))
}

/// What a VoiceAgent reads of a ModelPool: its spec (role, port, model; tracked by the
/// generation) and whether it is Ready.
fn seen_by_agents(pool: &ModelPool) -> (Option<i64>, bool) {
    (pool.metadata.generation, voice_agent::pool_is_ready(pool))
}

/// A watch of ModelPools for the VoiceAgent controller: fills the cache that agent
/// reconciles read pools from, and yields a pool when it appears, disappears, or changes in
/// what agents read of it. Without the filter every status write of a pool (replica counts
/// while it scales, the autoscaler's latency samples) would reconcile every agent that uses
/// it. The cache must be this stream's own: with a cache filled by another watch, an agent
/// could be triggered by a pool turning Ready before its cache says so, find it not Ready,
/// and never be triggered again.
pub fn pools_for_agents(
    api: Api<ModelPool>,
) -> (
    Store<ModelPool>,
    impl Stream<Item = Result<ModelPool, watcher::Error>> + Send + 'static,
) {
    let (store, writer) = reflector::store();
    let mut seen: HashMap<ObjectRef<ModelPool>, (Option<i64>, bool)> = HashMap::new();
    let stream = watcher(api, watcher::Config::default())
        .default_backoff()
        .modify(|p: &mut ModelPool| strip_metadata(&mut p.metadata))
        .reflect(writer)
        .filter(move |event| {
            let pass = match event {
                Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) => {
                    let now = seen_by_agents(p);
                    seen.insert(ObjectRef::from_obj(p), now) != Some(now)
                }
                Ok(watcher::Event::Delete(p)) => {
                    seen.remove(&ObjectRef::from_obj(p));
                    true
                }
                // Init markers and errors: touched_objects and without_errors handle them.
                _ => true,
            };
            future::ready(pass)
        })
        .touched_objects();
    (store, without_errors("ModelPool", stream))
}

/// Logs a watch's errors and keeps them out of the controller. Each watch backs off on its
/// own (`default_backoff` above); kube-runtime's controller would otherwise back off the
/// merged stream of all its watches on any one error, so when every watch fails at once (an
/// API server restart answers each with 410 Gone) that one backoff grows with every watch's
/// error and the operator stops seeing changes for about a minute.
fn without_errors<K: Send + 'static>(
    watch: &'static str,
    stream: impl Stream<Item = Result<K, watcher::Error>> + Send + 'static,
) -> impl Stream<Item = Result<K, watcher::Error>> + Send + 'static {
    stream.filter(move |item| {
        if let Err(error) = item {
            tracing::warn!(watch, %error, "watch failed; it restarts after its own backoff");
        }
        future::ready(item.is_ok())
    })
}
