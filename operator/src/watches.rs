//! The watches behind the controllers, each a stream that triggers reconciles and most of
//! them feeding a cache:
//! - the custom resources themselves, triggering only on a new generation: the operator's
//!   own status writes (several per object while it converges) and the autoscaler's are no
//!   reason to reconcile again;
//! - the children each controller owns, whose caches let the apply step skip children that
//!   have not changed (see [`crate::last_applied`]) and read a Deployment's readiness without
//!   a request;
//! - ModelPools for VoiceAgents, triggering only when what an agent reads of a pool changes;
//! - Secrets, metadata only and uncached, triggering the resources that reference one.
//!
//! Memory is what matters here (the operator watches every child in the cluster): children
//! are watched metadata-only, except Deployments and Jobs, whose status is needed; every cached
//! object loses its managedFields, and Deployments and Jobs also lose their pod template,
//! which is most of their size and which the operator never reads back.

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::Arc;

use futures::{Stream, StreamExt, future};
use grokcast_crds::ModelPool;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Secret, Service};
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

/// A Job cut down to what the preload step reads: metadata and status (Complete, Failed).
pub fn slim_job(j: &mut Job) {
    strip_metadata(&mut j.metadata);
    if let Some(spec) = j.spec.as_mut() {
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
    /// Jobs: status (preload completion), slimmed.
    pub jobs: Option<Store<Job>>,
}

/// How long the apply step waits for a child cache's first list before deciding, by a read,
/// whether a child it does not see is ours. Only the first reconciles after a start wait.
const CACHE_SYNC_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

async fn wait_synced<K>(store: Option<&Store<K>>)
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    if let Some(store) = store {
        // A watch that cannot list (RBAC, API down) must not stall reconciles for ever: after
        // the wait the caller falls back to a read.
        let _ = tokio::time::timeout(CACHE_SYNC_WAIT, store.wait_until_ready()).await;
    }
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

    /// Whether children of `child`'s kind are cached at all.
    pub fn caches(&self, child: &Child) -> bool {
        match child {
            Child::Deployment(_) => self.deployments.is_some(),
            Child::ConfigMap(_) => self.config_maps.is_some(),
            Child::Service(_) => self.services.is_some(),
            Child::PodDisruptionBudget(_) => self.pod_disruption_budgets.is_some(),
            Child::PersistentVolumeClaim(_) => self.persistent_volume_claims.is_some(),
            Child::Job(_) => self.jobs.is_some(),
            Child::ServiceMonitor(_) => false,
        }
    }

    /// Wait (bounded) until the cache of `child`'s kind has listed once, so that a child
    /// missing from it is really not there or not ours, rather than not yet seen.
    pub async fn wait_synced(&self, child: &Child) {
        match child {
            Child::Deployment(_) => wait_synced(self.deployments.as_ref()).await,
            Child::ConfigMap(_) => wait_synced(self.config_maps.as_ref()).await,
            Child::Service(_) => wait_synced(self.services.as_ref()).await,
            Child::PodDisruptionBudget(_) => {
                wait_synced(self.pod_disruption_budgets.as_ref()).await
            }
            Child::PersistentVolumeClaim(_) => {
                wait_synced(self.persistent_volume_claims.as_ref()).await;
            }
            Child::Job(_) => wait_synced(self.jobs.as_ref()).await,
            Child::ServiceMonitor(_) => {}
        }
    }

    /// The cached Job `name` in `ns`.
    pub fn job(&self, ns: &str, name: &str) -> Option<Arc<Job>> {
        self.jobs.as_ref()?.get(&ObjectRef::new(name).within(ns))
    }

    /// Names of the cached Jobs in `ns` labelled as children of ModelPool `pool`.
    pub fn pool_jobs(&self, ns: &str, pool: &str) -> Vec<String> {
        let Some(store) = self.jobs.as_ref() else {
            return Vec::new();
        };
        store
            .state()
            .iter()
            .filter(|j| j.metadata.namespace.as_deref() == Some(ns))
            .filter(|j| {
                j.metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(crate::meta::MODEL_POOL_LABEL))
                    .is_some_and(|p| p == pool)
            })
            .filter_map(|j| j.metadata.name.clone())
            .collect()
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
    owned::<PartialObjectMeta<K>>(api, config, applied, K::KIND, |o| {
        strip_metadata(&mut o.metadata);
    })
}

/// A watch of owned children of kind `K` kept whole but for what `slim` drops
/// ([`slim_deployment`], [`slim_job`]): fills a cache and yields every touched child to
/// trigger its owner.
pub fn owned_objects<K>(
    api: Api<K>,
    config: watcher::Config,
    applied: Arc<LastApplied>,
    slim: fn(&mut K),
) -> (
    Store<K>,
    impl Stream<Item = Result<K, watcher::Error>> + Send + 'static,
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
    owned(api, config, applied, K::KIND, slim)
}

/// The watch behind [`owned_metadata`] and [`owned_objects`]: `slim` each object, cache it,
/// forget the last-applied record of deleted ones, yield every touched one.
fn owned<K>(
    api: Api<K>,
    config: watcher::Config,
    applied: Arc<LastApplied>,
    kind: &'static str,
    slim: fn(&mut K),
) -> (
    Store<K>,
    impl Stream<Item = Result<K, watcher::Error>> + Send + 'static,
)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let (store, writer) = reflector::store();
    let stream = watcher(api, config)
        .default_backoff()
        .modify(slim)
        .reflect(writer)
        .inspect(forget_deleted(applied, kind))
        .touched_objects();
    (store, without_errors(kind, stream))
}

/// A metadata-only watch of the Secrets in one scope, yielding a Secret when it is created,
/// changed or deleted after the first list, so that a resource waiting for a missing Secret
/// is reconciled within seconds of it appearing. Nothing is cached and no value is ever
/// received: the server sends metadata only. The first list is not yielded: every resource
/// is reconciled at start anyway.
pub fn secrets(
    api: Api<PartialObjectMeta<Secret>>,
) -> impl Stream<Item = Result<PartialObjectMeta<Secret>, watcher::Error>> + Send + 'static {
    // `Api<PartialObjectMeta<_>>` makes the list and watch requests metadata-only (kube's
    // replacement for the deprecated `metadata_watcher`).
    let stream = watcher(api, watcher::Config::default())
        .default_backoff()
        .filter_map(|event| {
            future::ready(match event {
                Ok(watcher::Event::Apply(s) | watcher::Event::Delete(s)) => Some(Ok(s)),
                Ok(_) => None,
                Err(e) => Some(Err(e)),
            })
        });
    without_errors("Secret", stream)
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
