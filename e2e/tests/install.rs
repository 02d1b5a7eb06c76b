//! Installing GrokCast as a platform team does, on the real test cluster: `helm install` of
//! `charts/grokcast`, the samples reconciled by an operator running as the ServiceAccount
//! the chart made, `helm upgrade` rolling the operator, `helm uninstall` keeping the CRDs and
//! the custom resources; and the same objects through `kubectl apply --server-side -k
//! config/default`. Then Pod Security: the agent's pods are admitted in a namespace that
//! enforces `restricted`.

#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::time::Duration;

use grokcast_crds::{ModelPool, VoiceAgent, condition};
use grokcast_e2e::cluster::Cluster;
use grokcast_e2e::project::{self, Project};
use grokcast_operator::run::{CancellationToken, OperatorConfig};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(60);

async fn cluster() -> &'static Cluster {
    tokio::task::spawn_blocking(|| Cluster::shared(env!("CARGO_BIN_EXE_grokcast-e2e").as_ref()))
        .await
        .unwrap()
        .expect("test cluster")
}

async fn eventually<T, F, Fut>(what: &str, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    grokcast_e2e::eventually(what, WAIT, Duration::from_millis(250), check).await
}

fn run(mut cmd: Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn chart() -> String {
    project::repo_root()
        .join("charts/grokcast")
        .to_string_lossy()
        .into_owned()
}

/// Runs the operator in-process with `client`, watching `namespace`, until the token is
/// cancelled.
fn operator(
    client: kube::Client,
    namespace: &str,
) -> (
    CancellationToken,
    tokio::task::JoinHandle<Result<(), grokcast_operator::run::RunError>>,
) {
    let stop = CancellationToken::new();
    let task = tokio::spawn(grokcast_operator::run::run(
        client,
        OperatorConfig {
            settings: Default::default(),
            namespaces: vec![namespace.to_owned()],
            identity: "install-e2e".into(),
            lease: None,
            autoscaler: None,
        },
        grokcast_operator::metrics::Metrics::new().unwrap(),
        stop.clone(),
    ));
    (stop, task)
}

async fn apply_samples(admin: &kube::Client, ns: &str) {
    for f in [
        "gemma-27b.yaml",
        "whisper.yaml",
        "csm.yaml",
        "receptionist.yaml",
    ] {
        project::apply_file_in(
            admin,
            &project::repo_root().join("config/samples").join(f),
            ns,
            "kubectl",
        )
        .await
        .unwrap();
    }
}

async fn agent_ready(admin: &kube::Client, ns: &str) -> Option<()> {
    let a: Api<VoiceAgent> = Api::namespaced(admin.clone(), ns);
    let a = a.get_opt("receptionist").await.ok()??;
    a.status?
        .conditions
        .iter()
        .any(|c| c.type_ == condition::READY && c.status == "True")
        .then_some(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_install_upgrade_and_uninstall() {
    let cluster = cluster().await;
    let admin = cluster.client().await.unwrap();
    // The operator's namespace (the release's) and the one its VoiceAgents live in.
    let system = cluster.namespace("grokcast-system").await.unwrap();
    let voice = cluster.namespace("voice").await.unwrap();
    project::install_secrets(&admin, voice.name())
        .await
        .unwrap();
    let release = format!("grokcast-{}", &system.name()[system.name().len() - 8..]);
    let mut install = cluster.helm().unwrap();
    install
        .args(["install", &release, &chart(), "--namespace", system.name()])
        .args(["--set", "prometheus.url="])
        .arg("--set")
        .arg(format!("operator.watchNamespaces={{{}}}", voice.name()));
    run(install);

    let crds: Api<CustomResourceDefinition> = Api::all(admin.clone());
    for name in ["voiceagents.grokcast.io", "modelpools.grokcast.io"] {
        assert!(crds.get_opt(name).await.unwrap().is_some(), "{name}");
    }
    let deployments: Api<Deployment> = Api::namespaced(admin.clone(), system.name());
    let operator_deployment = eventually("the operator Deployment available", || async {
        let list = deployments.list(&ListParams::default()).await.ok()?.items;
        let d = list.into_iter().next()?;
        (d.status.as_ref()?.available_replicas? >= 1).then_some(d)
    })
    .await;
    let generation = operator_deployment.metadata.generation.unwrap();
    let sa = operator_deployment
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|s| s.service_account_name.clone())
        .expect("the operator pod's ServiceAccount");

    // The samples, reconciled by an operator with the token of the ServiceAccount the chart
    // made and bound: a permission the chart lacks fails here.
    let (client, _) = cluster
        .service_account_client(system.name(), &sa)
        .await
        .unwrap();
    let (stop, task) = operator(client, voice.name());
    apply_samples(&admin, voice.name()).await;
    eventually("the sample VoiceAgent Ready", || {
        agent_ready(&admin, voice.name())
    })
    .await;
    stop.cancel();
    let _ = tokio::time::timeout(WAIT, task).await;

    // An upgrade that changes a value rolls the operator: a new generation and ReplicaSet.
    let rs: Api<ReplicaSet> = Api::namespaced(admin.clone(), system.name());
    let before = rs.list(&ListParams::default()).await.unwrap().items.len();
    let mut upgrade = cluster.helm().unwrap();
    upgrade
        .args(["upgrade", &release, &chart(), "--namespace", system.name()])
        .args([
            "--set",
            "prometheus.url=",
            "--set",
            "operator.logLevel=debug",
        ])
        .arg("--set")
        .arg(format!("operator.watchNamespaces={{{}}}", voice.name()));
    run(upgrade);
    let name = operator_deployment.metadata.name.clone().unwrap();
    eventually("the upgraded operator rolled out", || async {
        let d = deployments.get(&name).await.ok()?;
        let st = d.status.as_ref()?;
        let rolled = d.metadata.generation? > generation
            && st.observed_generation? >= d.metadata.generation?
            && st.updated_replicas? >= 1
            && st.available_replicas? >= 1;
        let sets = rs.list(&ListParams::default()).await.ok()?.items.len();
        (rolled && sets > before).then_some(())
    })
    .await;

    // Uninstall keeps the CRDs (Helm never deletes crds/) and leaves the resources alone.
    let mut uninstall = cluster.helm().unwrap();
    uninstall.args(["uninstall", &release, "--namespace", system.name()]);
    run(uninstall);
    eventually("the operator Deployment gone", || async {
        deployments
            .get_opt(&name)
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;
    for name in ["voiceagents.grokcast.io", "modelpools.grokcast.io"] {
        assert!(crds.get_opt(name).await.unwrap().is_some(), "{name} kept");
    }
    let agents: Api<VoiceAgent> = Api::namespaced(admin.clone(), voice.name());
    let pools: Api<ModelPool> = Api::namespaced(admin.clone(), voice.name());
    assert!(agents.get_opt("receptionist").await.unwrap().is_some());
    assert_eq!(
        pools
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .len(),
        3
    );
    assert!(
        agent_ready(&admin, voice.name()).await.is_some(),
        "status untouched"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kustomize_installs_the_same_objects() {
    let cluster = cluster().await;
    let admin = cluster.client().await.unwrap();
    let mut apply = cluster.kubectl().unwrap();
    apply
        .args(["apply", "--server-side", "--force-conflicts", "-k"])
        .arg(project::repo_root().join("config/default"));
    let out = run(apply);
    assert!(out.contains("serverside-applied"), "{out}");
    let deployments: Api<Deployment> = Api::namespaced(admin.clone(), "grokcast-system");
    eventually("the operator Deployment available", || async {
        let d = deployments.get_opt("grokcast").await.ok()??;
        (d.status?.available_replicas? >= 1).then_some(())
    })
    .await;
    let pods: Api<Pod> = Api::namespaced(admin.clone(), "grokcast-system");
    let pod = pods
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .next()
        .unwrap();
    let spec = pod.spec.unwrap();
    assert_eq!(spec.service_account_name.as_deref(), Some("grokcast"));
    let c = &spec.containers[0];
    let sc = c.security_context.as_ref().unwrap();
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_pods_are_admitted_where_pod_security_is_restricted() {
    let cluster = cluster().await;
    let p = Project::start(cluster, "restricted", WAIT).await.unwrap();
    let namespaces: Api<Namespace> = Api::all(p.admin.clone());
    namespaces
        .patch(
            p.ns(),
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {
                "pod-security.kubernetes.io/enforce": "restricted",
                "pod-security.kubernetes.io/enforce-version": "latest",
            }}})),
        )
        .await
        .unwrap();
    let (stop, task) = operator(p.operator.client.clone(), p.ns());
    apply_samples(&p.admin, p.ns()).await;
    let pods: Api<Pod> = Api::namespaced(p.admin.clone(), p.ns());
    eventually("both agent pods admitted and Running", || async {
        let running = pods
            .list(&ListParams::default().labels("grokcast.io/voiceagent=receptionist"))
            .await
            .ok()?
            .items
            .iter()
            .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
            .count();
        (running == 2).then_some(())
    })
    .await;
    stop.cancel();
    let _ = tokio::time::timeout(WAIT, task).await;
}
