//! kwok's side of the test cluster: the fake nodes it manages and the Stages that move their
//! pods through a lifecycle, in place of kubelets.
//!
//! Node lifecycle (initialise, heartbeat with a Lease) is kwok's default. Pod stages are the
//! harness's own, so that readiness can be delayed on some nodes to make partial rollouts
//! visible:
//! - `pod-ready`: a scheduled pod becomes Running and Ready (every container ready), at once
//!   on most nodes and after [`super::ClusterOptions::slow_ready_delay`] on the slow pool;
//! - `pod-complete`: a running pod owned by a Job succeeds, as a finished preload would;
//! - `pod-delete`: a pod being deleted loses its finalizers and goes.

use std::fmt::Write as _;
use std::time::Duration;

use serde_json::{Value, json};

/// The annotation kwok's `--manage-nodes-with-annotation-selector` looks for.
pub const MANAGED_ANNOTATION: &str = "kwok.x-k8s.io/node";

/// A pool of identical fake nodes.
#[derive(Debug, Clone)]
pub struct NodePool {
    /// Node names are `<prefix>-<index>`.
    pub prefix: &'static str,
    /// How many.
    pub count: u32,
    /// CPU cores each reports.
    pub cpus: u32,
    /// GPUs (`nvidia.com/gpu`) each reports, with the product label; 0 for CPU nodes.
    pub gpus: u32,
    /// The `nvidia.com/gpu.product` label of GPU nodes.
    pub gpu_product: String,
    /// Extra labels, e.g. the slow pool's `grokcast.test/pool: slow`.
    pub labels: Vec<(String, String)>,
    /// Keys of `NoSchedule` taints (value `true`): only pods that tolerate them land here.
    pub taints: Vec<String>,
}

impl NodePool {
    /// The names of this pool's nodes.
    pub fn names(&self) -> Vec<String> {
        (0..self.count)
            .map(|i| format!("{}-{i}", self.prefix))
            .collect()
    }

    /// The Node objects, with capacity and allocatable in their status as a kubelet would
    /// register them.
    pub fn nodes(&self) -> Vec<Value> {
        self.names()
            .into_iter()
            .map(|name| {
                let mut labels = json!({
                    "kubernetes.io/hostname": name,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                    "type": "kwok",
                });
                let mut resources = json!({
                    "cpu": self.cpus.to_string(),
                    "memory": format!("{}Gi", self.cpus * 8),
                    "pods": "250",
                    "ephemeral-storage": "500Gi",
                });
                if self.gpus > 0 {
                    labels["nvidia.com/gpu.product"] = json!(self.gpu_product);
                    labels["nvidia.com/gpu.count"] = json!(self.gpus.to_string());
                    resources["nvidia.com/gpu"] = json!(self.gpus.to_string());
                }
                for (k, v) in &self.labels {
                    labels[k] = json!(v);
                }
                let taints: Vec<Value> = self
                    .taints
                    .iter()
                    .map(|k| json!({"key": k, "value": "true", "effect": "NoSchedule"}))
                    .collect();
                json!({
                    "apiVersion": "v1",
                    "kind": "Node",
                    "metadata": {
                        "name": name,
                        "labels": labels,
                        "annotations": {MANAGED_ANNOTATION: "fake"},
                    },
                    "spec": {"taints": taints},
                    "status": {
                        "capacity": resources,
                        "allocatable": resources,
                        "nodeInfo": {
                            "architecture": "amd64",
                            "operatingSystem": "linux",
                            "kubeletVersion": "fake",
                            "kubeProxyVersion": "fake",
                        },
                    },
                })
            })
            .collect()
    }
}

/// kwok's configuration file: the pod Stages. `slow_nodes` get their pods ready only after
/// `slow_delay`.
pub fn config(slow_nodes: &[String], slow_delay: Duration) -> String {
    let mut out = String::new();
    let not_deleting = "    - key: '.metadata.deletionTimestamp'\n      operator: 'DoesNotExist'\n";
    let unstarted = "    - key: '.status.podIP'\n      operator: 'DoesNotExist'\n";
    let node_list = |op: &str| {
        let mut s = format!("    - key: '.spec.nodeName'\n      operator: '{op}'\n      values:\n");
        for n in slow_nodes {
            let _ = writeln!(s, "      - '{n}'");
        }
        s
    };
    let ready_status = READY_STATUS;
    if slow_nodes.is_empty() {
        let _ = write!(
            out,
            "{}",
            stage(
                "pod-ready",
                &format!("{not_deleting}{unstarted}"),
                "",
                ready_status
            )
        );
    } else {
        let _ = write!(
            out,
            "{}",
            stage(
                "pod-ready",
                &format!("{not_deleting}{unstarted}{}", node_list("NotIn")),
                "",
                ready_status
            )
        );
        let delay = format!(
            "  delay:\n    durationMilliseconds: {}\n",
            slow_delay.as_millis()
        );
        let _ = write!(
            out,
            "---\n{}",
            stage(
                "pod-ready-slow",
                &format!("{not_deleting}{unstarted}{}", node_list("In")),
                &delay,
                ready_status
            )
        );
    }
    let job_owned = "    - key: '.status.phase'\n      operator: 'In'\n      values:\n      - 'Running'\n    - key: '.metadata.ownerReferences.[].kind'\n      operator: 'In'\n      values:\n      - 'Job'\n";
    let _ = write!(
        out,
        "---\n{}",
        stage(
            "pod-complete",
            &format!("{not_deleting}{job_owned}"),
            "",
            COMPLETE_STATUS
        )
    );
    let _ = write!(
        out,
        "---\napiVersion: kwok.x-k8s.io/v1alpha1\nkind: Stage\nmetadata:\n  name: pod-delete\nspec:\n  resourceRef:\n    apiGroup: v1\n    kind: Pod\n  selector:\n    matchExpressions:\n    - key: '.metadata.deletionTimestamp'\n      operator: 'Exists'\n  next:\n    finalizers:\n      empty: true\n    delete: true\n"
    );
    out
}

fn stage(name: &str, expressions: &str, delay: &str, status: &str) -> String {
    let mut template = String::new();
    for line in status.lines() {
        let _ = writeln!(template, "      {line}");
    }
    format!(
        "apiVersion: kwok.x-k8s.io/v1alpha1\nkind: Stage\nmetadata:\n  name: {name}\nspec:\n  resourceRef:\n    apiGroup: v1\n    kind: Pod\n  selector:\n    matchExpressions:\n{expressions}{delay}  next:\n    statusTemplate: |\n{template}"
    )
}

/// Running and Ready, every container ready and started; the pod gets an address from
/// kwok's range (never dialled: tests reach servers on loopback only).
const READY_STATUS: &str = r#"{{ $now := Now }}
phase: Running
startTime: {{ $now | Quote }}
hostIP: {{ NodeIPWith .spec.nodeName | Quote }}
podIP: {{ PodIPWith .spec.nodeName ( or .spec.hostNetwork false ) ( or .metadata.uid "" ) ( or .metadata.name "" ) ( or .metadata.namespace "" ) | Quote }}
conditions:
- type: Initialized
  status: "True"
  lastTransitionTime: {{ $now | Quote }}
- type: ContainersReady
  status: "True"
  lastTransitionTime: {{ $now | Quote }}
- type: Ready
  status: "True"
  lastTransitionTime: {{ $now | Quote }}
containerStatuses:
{{ range .spec.containers }}
- name: {{ .name | Quote }}
  image: {{ .image | Quote }}
  ready: true
  started: true
  restartCount: 0
  state:
    running:
      startedAt: {{ $now | Quote }}
{{ end }}
initContainerStatuses:
{{ range .spec.initContainers }}
- name: {{ .name | Quote }}
  image: {{ .image | Quote }}
  ready: true
  restartCount: 0
  state:
    terminated:
      exitCode: 0
      reason: Completed
      startedAt: {{ $now | Quote }}
      finishedAt: {{ $now | Quote }}
{{ end }}"#;

/// Every container exited 0: the pod Succeeded.
const COMPLETE_STATUS: &str = r#"{{ $now := Now }}
phase: Succeeded
conditions:
- type: Ready
  status: "False"
  reason: PodCompleted
  lastTransitionTime: {{ $now | Quote }}
- type: ContainersReady
  status: "False"
  reason: PodCompleted
  lastTransitionTime: {{ $now | Quote }}
containerStatuses:
{{ range .spec.containers }}
- name: {{ .name | Quote }}
  image: {{ .image | Quote }}
  ready: false
  started: false
  restartCount: 0
  state:
    terminated:
      exitCode: 0
      reason: Completed
      startedAt: {{ $now | Quote }}
      finishedAt: {{ $now | Quote }}
{{ end }}"#;
