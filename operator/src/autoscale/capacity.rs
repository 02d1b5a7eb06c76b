//! GPU capacity: how many GPUs of each product the cluster can still give a pool.
//!
//! Counting is pure (nodes, pods and pools in, grants out). It counts what the scheduler
//! counts: a node's free GPUs are its allocatable `nvidia.com/gpu` less the requests of every
//! pod bound to it, GrokCast's or not, and a pool's replicas that are not bound yet still
//! need GPUs. [`gpu_nodes`] and [`GpuPod::from_pod`] read them from the autoscaler's node and
//! pod caches (slimmed by [`slim_node`] and [`slim_pod`]).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Container, Node, NodeSpec, NodeStatus, Pod, PodSpec, PodStatus, ResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::meta::{MANAGED_BY, MANAGED_BY_LABEL, MODEL_POOL_LABEL, NAME_LABEL};

/// The node label GPU feature discovery sets to the GPU model, e.g. `NVIDIA-A100-SXM4-80GB`.
pub const GPU_PRODUCT_LABEL: &str = "nvidia.com/gpu.product";
/// The extended resource the NVIDIA device plugin advertises.
pub const GPU_RESOURCE: &str = "nvidia.com/gpu";

/// One node's GPUs, as the capacity count sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GpuNode {
    /// The node's name (pods name it in `spec.nodeName`).
    pub name: String,
    /// The `nvidia.com/gpu.product` label, if the node has one.
    pub product: Option<String>,
    /// Allocatable `nvidia.com/gpu`.
    pub allocatable: u32,
    /// GPUs requested by the pods bound to the node.
    pub requested: u32,
    /// False for cordoned nodes: nothing new is scheduled there.
    pub schedulable: bool,
}

impl GpuNode {
    /// Reads the GPU facts of a Node object (nothing requested yet).
    pub fn from_node(node: &Node) -> GpuNode {
        let allocatable = allocatable_gpus(node).map_or(0, gpu_count);
        GpuNode {
            name: node.metadata.name.clone().unwrap_or_default(),
            product: product_label(node).cloned(),
            allocatable,
            requested: 0,
            schedulable: !unschedulable(node).unwrap_or(false),
        }
    }
}

fn gpu_count(q: &Quantity) -> u32 {
    q.0.trim().parse::<u32>().unwrap_or(0)
}

fn product_label(node: &Node) -> Option<&String> {
    node.metadata.labels.as_ref()?.get(GPU_PRODUCT_LABEL)
}

fn allocatable_gpus(node: &Node) -> Option<&Quantity> {
    node.status
        .as_ref()?
        .allocatable
        .as_ref()?
        .get(GPU_RESOURCE)
}

fn unschedulable(node: &Node) -> Option<bool> {
    node.spec.as_ref()?.unschedulable
}

/// A Node cut down to what [`GpuNode::from_node`] reads (name, resourceVersion, the product
/// label, allocatable GPUs, cordon), for the autoscaler's node cache: a full Node carries
/// its image list and conditions, most of its size.
pub fn slim_node(node: &mut Node) {
    let product = product_label(node).cloned();
    let gpus = allocatable_gpus(node).cloned();
    let unschedulable = unschedulable(node);
    *node = Node {
        metadata: ObjectMeta {
            name: node.metadata.name.take(),
            uid: node.metadata.uid.take(),
            resource_version: node.metadata.resource_version.take(),
            labels: product.map(|p| BTreeMap::from([(GPU_PRODUCT_LABEL.to_string(), p)])),
            ..ObjectMeta::default()
        },
        spec: Some(NodeSpec {
            unschedulable,
            ..NodeSpec::default()
        }),
        status: Some(NodeStatus {
            allocatable: gpus.map(|q| BTreeMap::from([(GPU_RESOURCE.to_string(), q)])),
            ..NodeStatus::default()
        }),
    };
}

/// One pod that holds or wants GPUs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GpuPod {
    /// `spec.nodeName`: `None` while the scheduler has not bound it.
    pub node: Option<String>,
    /// GPUs it requests (what the scheduler reserves on its node).
    pub gpus: u32,
    /// `namespace/name` of the ModelPool whose model server it is, for GrokCast's own
    /// model-server pods; `None` for anything else.
    pub pool: Option<String>,
    /// Being deleted: it still holds its GPUs, but is no longer one of its pool's replicas.
    pub terminating: bool,
}

impl GpuPod {
    /// The GPU facts of a pod; `None` when it requests no GPU or has finished (a finished
    /// pod's GPUs are free again).
    pub fn from_pod(pod: &Pod) -> Option<GpuPod> {
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        if matches!(phase, Some("Succeeded" | "Failed")) {
            return None;
        }
        let spec = pod.spec.as_ref()?;
        let gpus = pod_gpus(spec);
        if gpus == 0 {
            return None;
        }
        let labels = pod.metadata.labels.as_ref();
        let label = |k: &str| labels.and_then(|l| l.get(k)).map(String::as_str);
        let pool = (label(MANAGED_BY_LABEL) == Some(MANAGED_BY)
            && label(NAME_LABEL) == Some(crate::model_pool::APP))
        .then(|| label(MODEL_POOL_LABEL))
        .flatten()
        .map(|name| {
            format!(
                "{}/{name}",
                pod.metadata.namespace.as_deref().unwrap_or_default()
            )
        });
        Some(GpuPod {
            node: spec.node_name.clone().filter(|n| !n.is_empty()),
            gpus,
            pool,
            terminating: pod.metadata.deletion_timestamp.is_some(),
        })
    }
}

/// GPUs one container asks for: its request, or its limit when it gives only a limit (an
/// extended resource's request defaults to its limit).
fn container_gpus(c: &Container) -> u32 {
    let Some(resources) = &c.resources else {
        return 0;
    };
    resources
        .requests
        .as_ref()
        .and_then(|r| r.get(GPU_RESOURCE))
        .or_else(|| resources.limits.as_ref().and_then(|l| l.get(GPU_RESOURCE)))
        .map_or(0, gpu_count)
}

/// The scheduler's effective request: the larger of the containers' sum and the largest
/// init container (init containers run one at a time, before the others).
fn pod_gpus(spec: &PodSpec) -> u32 {
    let running: u32 = spec.containers.iter().map(container_gpus).sum();
    let init = spec
        .init_containers
        .iter()
        .flatten()
        .map(container_gpus)
        .max()
        .unwrap_or(0);
    running.max(init)
}

/// A pod cut down to what [`GpuPod::from_pod`] reads, for the autoscaler's pod cache (it
/// watches every pod in the cluster, so most of each one is dropped): pods without GPUs
/// keep only their identity.
pub fn slim_pod(pod: &mut Pod) {
    let Some(spec) = pod.spec.as_ref() else {
        return;
    };
    let gpu_only = |c: &Container| Container {
        name: c.name.clone(),
        resources: Some(ResourceRequirements {
            requests: Some(BTreeMap::from([(
                GPU_RESOURCE.to_string(),
                Quantity(container_gpus(c).to_string()),
            )])),
            ..ResourceRequirements::default()
        }),
        ..Container::default()
    };
    let gpus = pod_gpus(spec);
    let slim_spec = (gpus > 0).then(|| PodSpec {
        node_name: spec.node_name.clone(),
        containers: spec.containers.iter().map(gpu_only).collect(),
        init_containers: spec
            .init_containers
            .as_ref()
            .map(|cs| cs.iter().map(gpu_only).collect()),
        ..PodSpec::default()
    });
    let labels = pod.metadata.labels.take().map(|l| {
        l.into_iter()
            .filter(|(k, _)| [MANAGED_BY_LABEL, NAME_LABEL, MODEL_POOL_LABEL].contains(&k.as_str()))
            .collect::<BTreeMap<_, _>>()
    });
    let phase = pod.status.as_ref().and_then(|s| s.phase.clone());
    *pod = Pod {
        metadata: ObjectMeta {
            name: pod.metadata.name.take(),
            namespace: pod.metadata.namespace.take(),
            uid: pod.metadata.uid.take(),
            resource_version: pod.metadata.resource_version.take(),
            deletion_timestamp: pod.metadata.deletion_timestamp.take(),
            labels: labels.filter(|_| gpus > 0),
            ..ObjectMeta::default()
        },
        spec: slim_spec,
        status: Some(PodStatus {
            phase,
            ..PodStatus::default()
        }),
    };
}

/// The nodes that have GPUs, each with the GPUs its bound pods request.
pub fn gpu_nodes<'a>(nodes: impl IntoIterator<Item = &'a Node>, pods: &[GpuPod]) -> Vec<GpuNode> {
    let mut requested: BTreeMap<&str, u32> = BTreeMap::new();
    for pod in pods {
        if let Some(node) = pod.node.as_deref() {
            let slot = requested.entry(node).or_default();
            *slot = slot.saturating_add(pod.gpus);
        }
    }
    nodes
        .into_iter()
        .map(GpuNode::from_node)
        .filter(|n| n.allocatable > 0)
        .map(|mut n| {
            n.requested = requested.get(n.name.as_str()).copied().unwrap_or(0);
            n
        })
        .collect()
}

/// Replicas of each pool that the scheduler has bound to a node, by `namespace/name`.
pub fn scheduled_replicas(pods: &[GpuPod]) -> BTreeMap<String, u32> {
    let mut scheduled = BTreeMap::new();
    for pod in pods.iter().filter(|p| p.node.is_some() && !p.terminating) {
        if let Some(pool) = &pod.pool {
            *scheduled.entry(pool.clone()).or_default() += 1;
        }
    }
    scheduled
}

/// Free GPUs by product on schedulable nodes: allocatable less what bound pods request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GpuInventory {
    by_product: BTreeMap<String, u32>,
    total: u32,
}

impl GpuInventory {
    /// Sums the schedulable nodes' free GPUs by product.
    pub fn from_nodes<'a>(nodes: impl IntoIterator<Item = &'a GpuNode>) -> GpuInventory {
        let mut inventory = GpuInventory::default();
        for node in nodes.into_iter().filter(|n| n.schedulable) {
            let free = node.allocatable.saturating_sub(node.requested);
            inventory.total = inventory.total.saturating_add(free);
            if let Some(product) = &node.product {
                let slot = inventory.by_product.entry(product.clone()).or_default();
                *slot = slot.saturating_add(free);
            }
        }
        inventory
    }

    /// The inventory once `gpus` more of `product` (`None`: of no particular product) are
    /// taken, for simulations and tests that have pools but no pods.
    pub fn less(mut self, product: Option<&str>, gpus: u32) -> GpuInventory {
        self.total = self.total.saturating_sub(gpus);
        if let Some(slot) = product.and_then(|p| self.by_product.get_mut(p)) {
            *slot = slot.saturating_sub(gpus);
        }
        self
    }

    /// Free GPUs of a product (`None`: any product).
    pub fn free(&self, product: Option<&str>) -> u32 {
        match product {
            Some(p) => self.by_product.get(p).copied().unwrap_or(0),
            None => self.total,
        }
    }
}

/// One pool's GPU use and what it wants.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolGpus {
    /// `spec.gpu.product` (`None`: schedules on any GPU node).
    pub product: Option<String>,
    /// `spec.gpu.count`.
    pub per_replica: u32,
    /// Replicas it has now (`spec.replicas`).
    pub current: u32,
    /// Of those, replicas the scheduler has bound to a node: their GPUs are already off the
    /// inventory. The rest (pending, or not created yet) still need GPUs.
    pub scheduled: u32,
    /// Replicas the decision wants.
    pub desired: u32,
    /// Grants go to pools with a higher priority first (an attributed SLO breach).
    pub priority: u32,
}

/// What a pool may have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grant {
    /// Replicas it may run (between current and desired).
    pub replicas: u32,
    /// GPUs missing for what it has and wants: for replicas that cannot be scheduled now and
    /// for the growth that does not fit (0: not limited). What the scheduler would report as
    /// unschedulable, in GPUs, once the pool had the replicas it wants.
    pub gpus_missing: u32,
}

/// Hands the free GPUs of each product to the pools that need them, higher priority first:
/// first to every pool's replicas that are not scheduled yet, then to growth, so that a pool
/// growing for a breach never takes the GPUs another pool's existing replicas are waiting
/// for (after an operator restart or a fresh install, none is bound yet). Pools shrinking
/// keep what they have; GPUs freed by a shrink are counted once its pods are gone.
pub fn grant(inventory: &GpuInventory, pools: &[PoolGpus]) -> Vec<Grant> {
    let mut free_total = inventory.free(None);
    let mut free_by_product: BTreeMap<&str, u32> = pools
        .iter()
        .filter_map(|p| p.product.as_deref())
        .map(|p| (p, inventory.free(Some(p))))
        .collect();
    let pending = |p: &PoolGpus| p.desired.min(p.current).saturating_sub(p.scheduled);
    let growth = |p: &PoolGpus| p.desired.saturating_sub(p.current);
    // A replica that exists but cannot be placed is still one of the pool's replicas (it is
    // counted missing GPUs): the count never drops for want of GPUs, only growth is capped.
    let mut grants: Vec<Grant> = pools
        .iter()
        .map(|p| Grant {
            replicas: p.desired.min(p.current),
            gpus_missing: 0,
        })
        .collect();
    let mut order: Vec<usize> = (0..pools.len()).collect();
    order.sort_by_key(|i| std::cmp::Reverse(pools[*i].priority));
    for growing in [false, true] {
        for &i in &order {
            let pool = &pools[i];
            let want = if growing { growth(pool) } else { pending(pool) };
            if want == 0 {
                continue;
            }
            if pool.per_replica == 0 {
                grants[i].replicas += if growing { want } else { 0 };
                continue;
            }
            let free = match pool.product.as_deref() {
                Some(p) => free_by_product.get(p).copied().unwrap_or(0).min(free_total),
                None => free_total,
            };
            let fits = (free / pool.per_replica).min(want);
            let taken = fits * pool.per_replica;
            free_total -= taken;
            if let Some(slot) = pool
                .product
                .as_deref()
                .and_then(|p| free_by_product.get_mut(p))
            {
                *slot = slot.saturating_sub(taken);
            }
            if growing {
                grants[i].replicas += fits;
            }
            grants[i].gpus_missing += (want - fits).saturating_mul(pool.per_replica);
        }
    }
    grants
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn node(product: Option<&str>, gpus: u32) -> GpuNode {
        GpuNode {
            name: format!("{}-{gpus}", product.unwrap_or("any")),
            product: product.map(str::to_owned),
            allocatable: gpus,
            requested: 0,
            schedulable: true,
        }
    }

    /// A pool whose `current` replicas are all scheduled.
    fn pool(product: Option<&str>, per: u32, current: u32, desired: u32) -> PoolGpus {
        PoolGpus {
            product: product.map(str::to_owned),
            per_replica: per,
            current,
            scheduled: current,
            desired,
            priority: 0,
        }
    }

    /// The inventory once every pool's scheduled replicas sit on the first node of their
    /// product (any node for an any-product pool), and `foreign` GPUs are held by pods that
    /// are not GrokCast's on the first node.
    fn bound(mut nodes: Vec<GpuNode>, pools: &[PoolGpus], foreign: u32) -> GpuInventory {
        nodes[0].requested += foreign;
        for p in pools {
            let i = nodes
                .iter()
                .position(|n| p.product.is_none() || n.product == p.product)
                .unwrap_or(0);
            nodes[i].requested += p.scheduled * p.per_replica;
        }
        GpuInventory::from_nodes(&nodes)
    }

    const A100: Option<&str> = Some("NVIDIA-A100-SXM4-80GB");
    const L4: Option<&str> = Some("NVIDIA-L4");

    #[test]
    fn inventory_counts_free_gpus_by_product_and_skips_cordoned_nodes() {
        let mut cordoned = node(A100, 8);
        cordoned.schedulable = false;
        let mut busy = node(A100, 4);
        busy.requested = 3;
        let mut overcommitted = node(L4, 2);
        overcommitted.requested = 5;
        let nodes = [node(A100, 8), busy, overcommitted, node(None, 1), cordoned];
        let inv = GpuInventory::from_nodes(&nodes);
        assert_eq!(inv.free(A100), 9);
        assert_eq!(inv.free(L4), 0, "never below zero");
        assert_eq!(inv.free(Some("H100")), 0);
        assert_eq!(inv.free(None), 10);
    }

    #[test]
    fn grant_table() {
        let nodes = || vec![node(A100, 4), node(L4, 2)];
        struct Case {
            name: &'static str,
            pools: Vec<PoolGpus>,
            foreign: u32,
            want: Vec<(u32, u32)>,
        }
        let pending = |mut p: PoolGpus, unscheduled: u32| {
            p.scheduled -= unscheduled;
            p
        };
        let cases = [
            Case {
                name: "fits",
                pools: vec![pool(A100, 1, 1, 3)],
                foreign: 0,
                want: vec![(3, 0)],
            },
            Case {
                name: "other pool uses the product",
                pools: vec![pool(A100, 1, 1, 3), pool(A100, 2, 1, 1)],
                foreign: 0,
                want: vec![(2, 1), (1, 0)],
            },
            Case {
                name: "two GPUs per replica, one GPU left",
                pools: vec![pool(A100, 2, 1, 3), pool(A100, 1, 1, 1)],
                foreign: 0,
                want: vec![(1, 4), (1, 0)],
            },
            Case {
                name: "missing product",
                pools: vec![pool(Some("H100"), 1, 0, 2)],
                foreign: 0,
                want: vec![(0, 2)],
            },
            Case {
                name: "scale-down untouched",
                pools: vec![pool(A100, 1, 3, 1)],
                foreign: 0,
                want: vec![(1, 0)],
            },
            Case {
                name: "any-product pool uses the remainder of all nodes",
                pools: vec![pool(A100, 1, 3, 3), pool(None, 1, 0, 5)],
                foreign: 0,
                want: vec![(3, 0), (3, 2)],
            },
            Case {
                name: "products do not borrow from each other",
                pools: vec![pool(L4, 1, 0, 3), pool(A100, 1, 0, 4)],
                foreign: 0,
                want: vec![(2, 1), (4, 0)],
            },
            Case {
                name: "cpu pool",
                pools: vec![pool(None, 0, 1, 9)],
                foreign: 0,
                want: vec![(9, 0)],
            },
            Case {
                name: "GPUs held by pods that are not GrokCast's are not free",
                pools: vec![pool(A100, 1, 1, 4)],
                foreign: 2,
                want: vec![(2, 2)],
            },
            Case {
                name: "a replica the scheduler could not place is missing GPUs, holding or not",
                pools: vec![pending(pool(A100, 1, 2, 2), 1), pool(A100, 1, 1, 1)],
                foreign: 2,
                want: vec![(2, 1), (1, 0)],
            },
            Case {
                name: "unscheduled replicas are served before growth",
                pools: vec![pending(pool(A100, 1, 2, 4), 1)],
                foreign: 1,
                // 4 - 1 foreign - 1 bound = 2 free: the pending replica takes one, growth one.
                want: vec![(3, 1)],
            },
            Case {
                name: "a replica just added and not yet bound fits in what is free",
                pools: vec![pending(pool(A100, 1, 3, 3), 1)],
                foreign: 0,
                want: vec![(3, 0)],
            },
        ];
        for case in cases {
            let inv = bound(nodes(), &case.pools, case.foreign);
            let got: Vec<(u32, u32)> = grant(&inv, &case.pools)
                .iter()
                .map(|g| (g.replicas, g.gpus_missing))
                .collect();
            assert_eq!(got, case.want, "{}", case.name);
        }
    }

    #[test]
    fn growth_waits_for_every_pools_unscheduled_replicas() {
        // A fresh install: the pools' Deployments have no pods bound yet, and the llm pool,
        // blamed for a breach, wants 4 where it has 2. The 4 A100s go to the 4 replicas that
        // exist (llm 2, stt 1, tts 1); the growth lacks 2.
        let mut pools = vec![
            pool(A100, 1, 2, 4),
            pool(A100, 1, 1, 1),
            pool(A100, 1, 1, 1),
        ];
        for p in &mut pools {
            p.scheduled = 0;
        }
        pools[0].priority = 1;
        let inv = bound(vec![node(A100, 4)], &pools, 0);
        let got: Vec<(u32, u32)> = grant(&inv, &pools)
            .iter()
            .map(|g| (g.replicas, g.gpus_missing))
            .collect();
        assert_eq!(got, vec![(2, 2), (1, 0), (1, 0)]);
    }

    #[test]
    fn higher_priority_pool_gets_the_last_gpus() {
        let mut pools = vec![pool(A100, 1, 1, 2), pool(A100, 1, 1, 2)];
        pools[1].priority = 1;
        let inv = bound(vec![node(A100, 3)], &pools, 0);
        let got = grant(&inv, &pools);
        assert_eq!(
            got[0],
            Grant {
                replicas: 1,
                gpus_missing: 1
            }
        );
        assert_eq!(
            got[1],
            Grant {
                replicas: 2,
                gpus_missing: 0
            }
        );
    }

    fn gpu_pod(json: serde_json::Value) -> Pod {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn pods_count_as_the_scheduler_counts_them() {
        let model_server = gpu_pod(serde_json::json!({
            "metadata": {"name": "llm-1", "namespace": "voice", "labels": {
                MANAGED_BY_LABEL: MANAGED_BY, NAME_LABEL: crate::model_pool::APP,
                MODEL_POOL_LABEL: "gemma", "pod-template-hash": "abc"}},
            "spec": {"nodeName": "gpu-1", "containers": [
                {"name": "vllm", "image": "vllm", "resources": {"limits": {GPU_RESOURCE: "2"}}},
                {"name": "sidecar", "image": "x", "resources": {"requests": {"cpu": "1"}}}
            ]},
            "status": {"phase": "Running"}
        }));
        let got = GpuPod::from_pod(&model_server).unwrap();
        assert_eq!(
            got,
            GpuPod {
                node: Some("gpu-1".into()),
                gpus: 2,
                pool: Some("voice/gemma".into()),
                terminating: false
            },
            "a limit alone is the request"
        );
        let foreign = gpu_pod(serde_json::json!({
            "metadata": {"name": "train", "namespace": "ml", "labels": {MODEL_POOL_LABEL: "gemma"}},
            "spec": {"initContainers": [
                {"name": "warm", "image": "x", "resources": {"requests": {GPU_RESOURCE: "4"}}}],
                "containers": [
                {"name": "a", "image": "x", "resources": {"requests": {GPU_RESOURCE: "1"}}},
                {"name": "b", "image": "x", "resources": {"requests": {GPU_RESOURCE: "1"}}}]},
            "status": {"phase": "Pending"}
        }));
        let got = GpuPod::from_pod(&foreign).unwrap();
        assert_eq!((got.gpus, got.node, got.pool), (4, None, None));
        let done = gpu_pod(serde_json::json!({
            "metadata": {"name": "job", "namespace": "ml"},
            "spec": {"nodeName": "gpu-1", "containers": [
                {"name": "a", "image": "x", "resources": {"requests": {GPU_RESOURCE: "1"}}}]},
            "status": {"phase": "Succeeded"}
        }));
        assert_eq!(
            GpuPod::from_pod(&done),
            None,
            "a finished pod holds nothing"
        );
        let cpu = gpu_pod(serde_json::json!({
            "metadata": {"name": "web", "namespace": "web"},
            "spec": {"nodeName": "cpu-1", "containers": [{"name": "a", "image": "x"}]}
        }));
        assert_eq!(GpuPod::from_pod(&cpu), None);

        let pods = [
            GpuPod::from_pod(&model_server).unwrap(),
            GpuPod::from_pod(&foreign).unwrap(),
        ];
        let nodes: Vec<Node> = ["gpu-1", "gpu-2"]
            .map(|name| {
                serde_json::from_value(serde_json::json!({
                    "metadata": {"name": name, "labels": {GPU_PRODUCT_LABEL: "NVIDIA-A100-SXM4-80GB"}},
                    "status": {"allocatable": {GPU_RESOURCE: "8"}}
                }))
                .unwrap()
            })
            .into();
        let gpu = gpu_nodes(&nodes, &pods);
        assert_eq!(
            gpu.iter().map(|n| n.requested).collect::<Vec<_>>(),
            [2, 0],
            "an unbound pod holds no node's GPUs"
        );
        assert_eq!(GpuInventory::from_nodes(&gpu).free(A100), 14);
        assert_eq!(
            scheduled_replicas(&pods),
            BTreeMap::from([("voice/gemma".to_string(), 1)])
        );
    }

    #[test]
    fn slim_pods_keep_exactly_the_gpu_facts() {
        let mut pod = gpu_pod(serde_json::json!({
            "metadata": {"name": "llm-1", "namespace": "voice", "resourceVersion": "9",
                "labels": {MANAGED_BY_LABEL: MANAGED_BY, NAME_LABEL: crate::model_pool::APP,
                           MODEL_POOL_LABEL: "gemma", "other": "x"},
                "annotations": {"big": "y"}},
            "spec": {"nodeName": "gpu-1", "containers": [
                {"name": "vllm", "image": "vllm", "args": ["--a"], "env": [{"name": "A", "value": "b"}],
                 "resources": {"requests": {GPU_RESOURCE: "1", "cpu": "8"}}}]},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}
        }));
        let before = GpuPod::from_pod(&pod);
        slim_pod(&mut pod);
        assert_eq!(GpuPod::from_pod(&pod), before);
        assert_eq!(pod.metadata.resource_version.as_deref(), Some("9"));
        assert!(pod.metadata.annotations.is_none());
        assert_eq!(pod.metadata.labels.as_ref().unwrap().len(), 3);
        let c = &pod.spec.as_ref().unwrap().containers[0];
        assert!(c.image.is_none() && c.env.is_none() && c.args.is_none());
        let mut cpu = gpu_pod(serde_json::json!({
            "metadata": {"name": "web", "namespace": "web", "labels": {"a": "b"}},
            "spec": {"nodeName": "cpu-1", "containers": [{"name": "a", "image": "x"}]}
        }));
        slim_pod(&mut cpu);
        assert!(cpu.spec.is_none() && cpu.metadata.labels.is_none());
        assert_eq!(cpu.metadata.name.as_deref(), Some("web"));
    }

    #[test]
    fn node_facts_come_from_labels_and_allocatable() {
        let node: Node = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "gpu-1", "labels": {GPU_PRODUCT_LABEL: "NVIDIA-A100-SXM4-80GB"}},
            "spec": {"unschedulable": true},
            "status": {"allocatable": {GPU_RESOURCE: "8", "cpu": "96"}}
        }))
        .unwrap();
        let gpu = GpuNode::from_node(&node);
        assert_eq!(
            gpu,
            GpuNode {
                name: "gpu-1".into(),
                product: A100.map(str::to_owned),
                allocatable: 8,
                requested: 0,
                schedulable: false
            }
        );
        let bare: Node =
            serde_json::from_value(serde_json::json!({"metadata": {"name": "cpu"}})).unwrap();
        assert_eq!(GpuNode::from_node(&bare).allocatable, 0);
    }

    #[test]
    fn slim_nodes_keep_exactly_the_gpu_facts() {
        let mut node: Node = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "gpu-1", "resourceVersion": "7",
                         "labels": {GPU_PRODUCT_LABEL: "NVIDIA-A100-SXM4-80GB", "zone": "a"}},
            "spec": {"unschedulable": true, "podCIDR": "10.0.0.0/24"},
            "status": {"allocatable": {GPU_RESOURCE: "8", "cpu": "96"},
                       "images": [{"names": ["big"], "sizeBytes": 1}]}
        }))
        .unwrap();
        let before = GpuNode::from_node(&node);
        slim_node(&mut node);
        assert_eq!(GpuNode::from_node(&node), before);
        assert_eq!(node.metadata.resource_version.as_deref(), Some("7"));
        let status = node.status.as_ref().unwrap();
        assert!(status.images.is_none());
        assert_eq!(status.allocatable.as_ref().unwrap().len(), 1);
        assert_eq!(node.metadata.labels.as_ref().unwrap().len(), 1);
        assert_eq!(gpu_nodes([&node], &[]).len(), 1);
    }
}
