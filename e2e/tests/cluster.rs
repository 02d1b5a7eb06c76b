//! The test cluster itself: what the operator scenarios rely on from the real control plane
//! and kwok. Each test gets a fresh namespace on this binary's shared cluster.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use grokcast_e2e::cluster::{A100_40GB, Cluster, SLOW_POOL, SLOW_POOL_LABEL, TestNamespace};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Namespace, PersistentVolumeClaim, Pod, ServiceAccount};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(30);

fn cluster() -> &'static Cluster {
    Cluster::shared(env!("CARGO_BIN_EXE_grokcast-e2e").as_ref()).expect("test cluster")
}

async fn ns(prefix: &str) -> TestNamespace {
    cluster().namespace(prefix).await.expect("namespace")
}

async fn eventually<T, F, Fut>(what: &str, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    grokcast_e2e::eventually(what, WAIT, Duration::from_millis(100), check).await
}

fn deployment(name: &str, replicas: i32, pod_spec: serde_json::Value) -> Deployment {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": pod_spec},
        }
    }))
    .unwrap()
}

fn container() -> serde_json::Value {
    json!({"name": "main", "image": "registry.invalid/none:1"})
}

fn ready(d: &Deployment) -> i32 {
    d.status
        .as_ref()
        .and_then(|s| s.ready_replicas)
        .unwrap_or(0)
}

#[tokio::test]
async fn a_deployment_is_scheduled_onto_kwok_nodes_and_becomes_ready() {
    let ns = ns("deploy").await;
    let api: Api<Deployment> = Api::namespaced(ns.client().clone(), ns.name());
    api.create(
        &PostParams::default(),
        &deployment("web", 3, json!({"containers": [container()]})),
    )
    .await
    .unwrap();
    eventually("3 ready replicas", || async {
        (ready(&api.get("web").await.ok()?) == 3).then_some(())
    })
    .await;
    let pods: Api<Pod> = Api::namespaced(ns.client().clone(), ns.name());
    for p in pods.list(&ListParams::default()).await.unwrap().items {
        let node = p.spec.unwrap().node_name.unwrap();
        assert!(node.starts_with("kwok-"), "{node}");
        assert!(!node.starts_with("kwok-slow"), "the slow pool is tainted");
    }
}

#[tokio::test]
async fn gpu_pods_beyond_the_nodes_capacity_stay_pending_as_unschedulable() {
    let ns = ns("gpu").await;
    let api: Api<Deployment> = Api::namespaced(ns.client().clone(), ns.name());
    let mut c = container();
    c["resources"] = json!({"limits": {"nvidia.com/gpu": 1}});
    api.create(
        &PostParams::default(),
        &deployment(
            "gpu",
            3,
            json!({
                "containers": [c],
                "nodeSelector": {"nvidia.com/gpu.product": A100_40GB},
            }),
        ),
    )
    .await
    .unwrap();
    let pods: Api<Pod> = Api::namespaced(ns.client().clone(), ns.name());
    eventually("2 running and 1 unschedulable", || async {
        let list = pods.list(&ListParams::default()).await.ok()?.items;
        let running = list
            .iter()
            .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
            .count();
        let unschedulable = list
            .iter()
            .filter(|p| {
                p.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|cs| {
                        cs.iter().any(|c| {
                            c.type_ == "PodScheduled"
                                && c.status == "False"
                                && c.reason.as_deref() == Some("Unschedulable")
                        })
                    })
            })
            .count();
        (running == 2 && unschedulable == 1).then_some(())
    })
    .await;
}

#[tokio::test]
async fn pods_on_the_slow_pool_become_ready_only_after_the_delay() {
    let ns = ns("slow").await;
    let api: Api<Deployment> = Api::namespaced(ns.client().clone(), ns.name());
    let started = std::time::Instant::now();
    api.create(
        &PostParams::default(),
        &deployment(
            "slow",
            1,
            json!({
                "containers": [container()],
                "nodeSelector": {SLOW_POOL_LABEL: SLOW_POOL},
                "tolerations": [{"key": SLOW_POOL_LABEL, "operator": "Exists", "effect": "NoSchedule"}],
            }),
        ),
    )
    .await
    .unwrap();
    eventually("1 ready replica", || async {
        (ready(&api.get("slow").await.ok()?) == 1).then_some(())
    })
    .await;
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "ready after {:?}, before the slow pool's delay",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_service_account_can_do_only_what_rbac_grants() {
    let ns = ns("rbac").await;
    let client = ns.client().clone();
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), ns.name());
    sas.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "reader"}})).unwrap(),
    )
    .await
    .unwrap();
    let (sa_client, _) = cluster()
        .service_account_client(ns.name(), "reader")
        .await
        .unwrap();
    let pods: Api<Pod> = Api::namespaced(sa_client.clone(), ns.name());
    match pods.list(&ListParams::default()).await {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 403, "{s:?}"),
        other => panic!("listing pods without a Role: {other:?}"),
    }
    let rbac = format!(
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {{name: pods, namespace: {n}}}\nrules:\n- apiGroups: ['']\n  resources: [pods]\n  verbs: [list]\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {{name: pods, namespace: {n}}}\nroleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: pods}}\nsubjects:\n- {{kind: ServiceAccount, name: reader, namespace: {n}}}\n",
        n = ns.name()
    );
    let audit = cluster().audit();
    let mark = audit.mark();
    cluster().apply_yaml(&rbac, "test").await.unwrap();
    eventually("the Role takes effect", || async {
        pods.list(&ListParams::default()).await.ok()
    })
    .await;
    let user = format!("system:serviceaccount:{}:reader", ns.name());
    let seen = eventually("the audit log records the service account", || async {
        let lists: Vec<_> = audit
            .by_user(mark, &user)
            .into_iter()
            .filter(|e| e.verb == "list" && e.resource == "pods")
            .collect();
        (!lists.is_empty()).then_some(lists)
    })
    .await;
    assert!(seen.iter().any(|e| e.code == 200), "{seen:?}");
}

#[tokio::test]
async fn a_restricted_namespace_refuses_a_privileged_pod() {
    let ns = ns("psa").await;
    let namespaces: Api<Namespace> = Api::all(ns.client().clone());
    namespaces
        .patch(
            ns.name(),
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {
                "pod-security.kubernetes.io/enforce": "restricted"
            }}})),
        )
        .await
        .unwrap();
    let pods: Api<Pod> = Api::namespaced(ns.client().clone(), ns.name());
    let mut c = container();
    c["securityContext"] = json!({"privileged": true});
    let pod: Pod =
        serde_json::from_value(json!({"metadata": {"name": "p"}, "spec": {"containers": [c]}}))
            .unwrap();
    match pods.create(&PostParams::default(), &pod).await {
        Err(kube::Error::Api(s)) => {
            assert_eq!(s.code, 403, "{}", s.message);
            assert!(s.message.contains("violates PodSecurity"), "{}", s.message);
        }
        other => panic!("a privileged pod in a restricted namespace: {other:?}"),
    }
}

#[tokio::test]
async fn a_claim_of_the_default_class_is_bound() {
    let ns = ns("pvc").await;
    let api: Api<PersistentVolumeClaim> = Api::namespaced(ns.client().clone(), ns.name());
    let pvc: PersistentVolumeClaim = serde_json::from_value(json!({
        "metadata": {"name": "cache"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "20Gi"}}},
    }))
    .unwrap();
    api.create(&PostParams::default(), &pvc).await.unwrap();
    eventually("the claim is Bound", || async {
        let p = api.get("cache").await.ok()?;
        (p.status?.phase.as_deref() == Some("Bound")).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_finished_job_is_removed_by_the_ttl_controller() {
    let ns = ns("ttl").await;
    let jobs: Api<Job> = Api::namespaced(ns.client().clone(), ns.name());
    let job: Job = serde_json::from_value(json!({
        "metadata": {"name": "once"},
        "spec": {
            "ttlSecondsAfterFinished": 1,
            "template": {"spec": {"restartPolicy": "Never", "containers": [container()]}},
        },
    }))
    .unwrap();
    let created = jobs.create(&PostParams::default(), &job).await.unwrap();
    // A watch from the created version sees every change, so a Job that completes and is
    // removed between two polls (one second apart at most, on a loaded machine) is not missed.
    let version = created.metadata.resource_version.clone().unwrap();
    let params = WatchParams::default().fields("metadata.name=once");
    let seen = tokio::time::timeout(Duration::from_secs(90), async {
        let mut succeeded = false;
        let mut version = version;
        loop {
            let mut stream = jobs.watch(&params, &version).await.unwrap().boxed();
            while let Some(event) = stream.try_next().await.unwrap() {
                match event {
                    WatchEvent::Added(j) | WatchEvent::Modified(j) => {
                        succeeded |= j.status.as_ref().and_then(|s| s.succeeded) == Some(1);
                        version = j.metadata.resource_version.unwrap_or(version);
                    }
                    WatchEvent::Deleted(_) => return succeeded,
                    WatchEvent::Bookmark(b) => version = b.metadata.resource_version,
                    WatchEvent::Error(e) => panic!("watching the Job: {e:?}"),
                }
            }
        }
    })
    .await
    .expect("the TTL controller deletes the finished Job within 90 s");
    assert!(seen, "the Job was deleted without having succeeded");
}
