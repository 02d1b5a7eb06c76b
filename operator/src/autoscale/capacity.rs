//! GPU capacity: how many GPUs of each product the cluster can still give a pool.
//!
//! Counting is pure (nodes and pools in, grants out); [`gpu_nodes`] turns the cluster's Nodes
//! (the autoscaler's node cache, slimmed by [`slim_node`]) into [`GpuNode`]s.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Node, NodeSpec, NodeStatus};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

/// The node label GPU feature discovery sets to the GPU model, e.g. `NVIDIA-A100-SXM4-80GB`.
pub const GPU_PRODUCT_LABEL: &str = "nvidia.com/gpu.product";
/// The extended resource the NVIDIA device plugin advertises.
pub const GPU_RESOURCE: &str = "nvidia.com/gpu";

/// One node's GPUs, as the capacity count sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GpuNode {
    /// The `nvidia.com/gpu.product` label, if the node has one.
    pub product: Option<String>,
    /// Allocatable `nvidia.com/gpu`.
    pub allocatable: u32,
    /// False for cordoned nodes: nothing new is scheduled there.
    pub schedulable: bool,
}

impl GpuNode {
    /// Reads the GPU facts of a Node object.
    pub fn from_node(node: &Node) -> GpuNode {
        let allocatable = allocatable_gpus(node)
            .and_then(|q| q.0.trim().parse::<u32>().ok())
            .unwrap_or(0);
        GpuNode {
            product: product_label(node).cloned(),
            allocatable,
            schedulable: !unschedulable(node).unwrap_or(false),
        }
    }
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

/// The nodes that have GPUs.
pub fn gpu_nodes<'a>(nodes: impl IntoIterator<Item = &'a Node>) -> Vec<GpuNode> {
    nodes
        .into_iter()
        .map(GpuNode::from_node)
        .filter(|n| n.allocatable > 0)
        .collect()
}

/// Allocatable GPUs by product on schedulable nodes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GpuInventory {
    by_product: BTreeMap<String, u32>,
    total: u32,
}

impl GpuInventory {
    /// Sums the schedulable nodes' allocatable GPUs by product.
    pub fn from_nodes<'a>(nodes: impl IntoIterator<Item = &'a GpuNode>) -> GpuInventory {
        let mut inventory = GpuInventory::default();
        for node in nodes.into_iter().filter(|n| n.schedulable) {
            inventory.total = inventory.total.saturating_add(node.allocatable);
            if let Some(product) = &node.product {
                let slot = inventory.by_product.entry(product.clone()).or_default();
                *slot = slot.saturating_add(node.allocatable);
            }
        }
        inventory
    }

    /// Allocatable GPUs of a product (`None`: any product).
    pub fn allocatable(&self, product: Option<&str>) -> u32 {
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
    /// Replicas running now.
    pub current: u32,
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
    /// GPUs missing for the rest of what it wanted (0: not limited).
    pub gpus_missing: u32,
}

/// Grants growth to pools while GPUs of their product remain. Pools shrinking or holding keep
/// what they have; GPUs freed by a shrink are not counted until the replicas are gone.
pub fn grant(inventory: &GpuInventory, pools: &[PoolGpus]) -> Vec<Grant> {
    let mut used_by_product: BTreeMap<&str, u32> = BTreeMap::new();
    let mut used_total = 0u32;
    for pool in pools {
        let gpus = pool.current.saturating_mul(pool.per_replica);
        used_total = used_total.saturating_add(gpus);
        if let Some(product) = pool.product.as_deref() {
            let slot = used_by_product.entry(product).or_default();
            *slot = slot.saturating_add(gpus);
        }
    }
    let mut free_total = inventory.allocatable(None).saturating_sub(used_total);
    let mut free_by_product: BTreeMap<&str, u32> = used_by_product
        .iter()
        .map(|(p, used)| (*p, inventory.allocatable(Some(p)).saturating_sub(*used)))
        .collect();
    let mut grants: Vec<Grant> = pools
        .iter()
        .map(|p| Grant {
            replicas: p.desired.min(p.current),
            gpus_missing: 0,
        })
        .collect();
    let mut order: Vec<usize> = (0..pools.len())
        .filter(|i| pools[*i].desired > pools[*i].current)
        .collect();
    order.sort_by_key(|i| std::cmp::Reverse(pools[*i].priority));
    for i in order {
        let pool = &pools[i];
        let wanted = pool.desired - pool.current;
        if pool.per_replica == 0 {
            grants[i].replicas = pool.desired;
            continue;
        }
        let free = match pool.product.as_deref() {
            Some(p) => free_by_product.get(p).copied().unwrap_or(0).min(free_total),
            None => free_total,
        };
        let fits = (free / pool.per_replica).min(wanted);
        let taken = fits * pool.per_replica;
        free_total -= taken;
        if let Some(slot) = pool
            .product
            .as_deref()
            .and_then(|p| free_by_product.get_mut(p))
        {
            *slot = slot.saturating_sub(taken);
        }
        grants[i] = Grant {
            replicas: pool.current + fits,
            gpus_missing: (wanted - fits).saturating_mul(pool.per_replica),
        };
    }
    grants
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn node(product: Option<&str>, gpus: u32) -> GpuNode {
        GpuNode {
            product: product.map(str::to_owned),
            allocatable: gpus,
            schedulable: true,
        }
    }

    fn pool(product: Option<&str>, per: u32, current: u32, desired: u32) -> PoolGpus {
        PoolGpus {
            product: product.map(str::to_owned),
            per_replica: per,
            current,
            desired,
            priority: 0,
        }
    }

    const A100: Option<&str> = Some("NVIDIA-A100-SXM4-80GB");
    const L4: Option<&str> = Some("NVIDIA-L4");

    #[test]
    fn inventory_counts_products_and_skips_cordoned_nodes() {
        let mut cordoned = node(A100, 8);
        cordoned.schedulable = false;
        let nodes = [
            node(A100, 8),
            node(A100, 4),
            node(L4, 2),
            node(None, 1),
            cordoned,
        ];
        let inv = GpuInventory::from_nodes(&nodes);
        assert_eq!(inv.allocatable(A100), 12);
        assert_eq!(inv.allocatable(L4), 2);
        assert_eq!(inv.allocatable(Some("H100")), 0);
        assert_eq!(inv.allocatable(None), 15);
    }

    #[test]
    fn grant_table() {
        let inv = GpuInventory::from_nodes(&[node(A100, 4), node(L4, 2)]);
        struct Case {
            name: &'static str,
            pools: Vec<PoolGpus>,
            want: Vec<(u32, u32)>,
        }
        let cases = [
            Case {
                name: "fits",
                pools: vec![pool(A100, 1, 1, 3)],
                want: vec![(3, 0)],
            },
            Case {
                name: "other pool uses the product",
                pools: vec![pool(A100, 1, 1, 3), pool(A100, 2, 1, 1)],
                want: vec![(2, 1), (1, 0)],
            },
            Case {
                name: "two GPUs per replica, one GPU left",
                pools: vec![pool(A100, 2, 1, 3), pool(A100, 1, 1, 1)],
                want: vec![(1, 4), (1, 0)],
            },
            Case {
                name: "missing product",
                pools: vec![pool(Some("H100"), 1, 0, 2)],
                want: vec![(0, 2)],
            },
            Case {
                name: "scale-down untouched",
                pools: vec![pool(A100, 1, 3, 1)],
                want: vec![(1, 0)],
            },
            Case {
                name: "any-product pool uses the remainder of all nodes",
                pools: vec![pool(A100, 1, 3, 3), pool(None, 1, 0, 5)],
                want: vec![(3, 0), (3, 2)],
            },
            Case {
                name: "products do not borrow from each other",
                pools: vec![pool(L4, 1, 0, 3), pool(A100, 1, 0, 4)],
                want: vec![(2, 1), (4, 0)],
            },
            Case {
                name: "cpu pool",
                pools: vec![pool(None, 0, 1, 9)],
                want: vec![(9, 0)],
            },
        ];
        for case in cases {
            let got: Vec<(u32, u32)> = grant(&inv, &case.pools)
                .iter()
                .map(|g| (g.replicas, g.gpus_missing))
                .collect();
            assert_eq!(got, case.want, "{}", case.name);
        }
    }

    #[test]
    fn higher_priority_pool_gets_the_last_gpus() {
        let inv = GpuInventory::from_nodes(&[node(A100, 3)]);
        let mut pools = vec![pool(A100, 1, 1, 2), pool(A100, 1, 1, 2)];
        pools[1].priority = 1;
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
                product: A100.map(str::to_owned),
                allocatable: 8,
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
        assert_eq!(gpu_nodes([&node]).len(), 1);
    }
}
