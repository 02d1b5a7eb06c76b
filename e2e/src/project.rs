//! What every operator scenario starts from on the test cluster: both GrokCast CRDs
//! established, a fresh namespace with the Secrets `config/samples` refer to, and the
//! operator's identity as the Helm chart makes it (its ServiceAccount and RBAC, rendered by
//! the real `helm template`), with a token from the API server, so a permission the chart
//! lacks fails the test as it would fail in a cluster.

use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

use crate::cluster::{Cluster, ClusterError, TestNamespace, apply_documents};

/// The Secrets (name, key) the samples reference: the Hugging Face token of gated models and
/// the Twilio auth token of VoiceAgents.
pub const SAMPLE_SECRETS: [(&str, &str); 2] = [("hf", "token"), ("twilio", "authToken")];

/// Why the project could not be installed.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// The cluster refused a request or could not be reached.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    /// The API refused a create.
    #[error("creating {what}: {source}")]
    Create {
        /// What was created.
        what: String,
        /// Cause.
        source: kube::Error,
    },
    /// A CRD did not report Established in time.
    #[error("CRD {name} not established within {limit:?}")]
    NotEstablished {
        /// The CRD.
        name: String,
        /// How long it was given.
        limit: Duration,
    },
    /// `helm template` failed.
    #[error("helm template: {0}")]
    Helm(String),
}

/// The repository's root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Server-side applies both CRDs (safe to repeat, and from tests running at once) and waits
/// up to `limit` for each to be established.
pub async fn install_crds(client: &kube::Client, limit: Duration) -> Result<(), InstallError> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in grokcast_crds::crds() {
        let name = crd.metadata.name.clone().unwrap_or_default();
        crds.patch(
            &name,
            &PatchParams::apply("grokcast-e2e").force(),
            &Patch::Apply(&crd),
        )
        .await
        .map_err(|source| InstallError::Create {
            what: format!("CRD {name}"),
            source,
        })?;
        let established = kube::runtime::wait::await_condition(
            crds.clone(),
            &name,
            kube::runtime::conditions::is_crd_established(),
        );
        match tokio::time::timeout(limit, established).await {
            Ok(Ok(_)) => {}
            _ => return Err(InstallError::NotEstablished { name, limit }),
        }
    }
    Ok(())
}

/// Creates the [`SAMPLE_SECRETS`] in `namespace` with a placeholder value.
pub async fn install_secrets(client: &kube::Client, namespace: &str) -> Result<(), InstallError> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    for (name, key) in SAMPLE_SECRETS {
        let secret: Secret = serde_json::from_value(json!({
            "metadata": {"name": name}, "stringData": {key: "test-value"}
        }))
        .unwrap_or_default();
        secrets
            .create(&PostParams::default(), &secret)
            .await
            .map_err(|source| InstallError::Create {
                what: format!("Secret {namespace}/{name}"),
                source,
            })?;
    }
    Ok(())
}

/// The operator's identity in a test namespace, made by the chart.
pub struct OperatorIdentity {
    /// A client authenticated with the ServiceAccount's token.
    pub client: kube::Client,
    /// The same identity as a kubeconfig file, for an operator process or kubectl.
    pub kubeconfig: PathBuf,
    /// The user the API server sees (`system:serviceaccount:<ns>:<name>`), for counting
    /// its requests in the audit log.
    pub user: String,
}

/// Renders the chart's ServiceAccount and RBAC with `helm template` for a release in
/// `namespace` that watches `namespace` only (plus `values`, `--set` syntax), applies them,
/// and returns the ServiceAccount's identity.
pub async fn operator_identity(
    cluster: &Cluster,
    namespace: &str,
    values: &[&str],
) -> Result<OperatorIdentity, InstallError> {
    let mut cmd = cluster.helm()?;
    cmd.arg("template")
        .arg(format!("grokcast-{namespace}"))
        .arg(repo_root().join("charts/grokcast"))
        .args(["--namespace", namespace])
        // helm template renders offline, for Kubernetes 1.20 unless told: render for the
        // cluster the tests run.
        .args(["--kube-version", crate::cluster::kubernetes_version()])
        .arg("--set")
        .arg(format!("operator.watchNamespaces={{{namespace}}}"));
    for v in values {
        cmd.args(["--set", v]);
    }
    let out = cmd
        .output()
        .map_err(|e| InstallError::Helm(e.to_string()))?;
    if !out.status.success() {
        return Err(InstallError::Helm(
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ));
    }
    let rendered = String::from_utf8_lossy(&out.stdout);
    let mut keep = String::new();
    let mut sa_name = None;
    for doc in rendered.split("\n---") {
        let Ok(v) = serde_yaml::from_str::<serde_json::Value>(doc) else {
            continue;
        };
        let kind = v["kind"].as_str().unwrap_or("");
        if matches!(
            kind,
            "ServiceAccount" | "ClusterRole" | "ClusterRoleBinding" | "Role" | "RoleBinding"
        ) {
            if kind == "ServiceAccount" {
                sa_name = v["metadata"]["name"].as_str().map(str::to_owned);
            }
            keep.push_str(doc);
            keep.push_str("\n---\n");
        }
    }
    let sa = sa_name.ok_or_else(|| InstallError::Helm("no ServiceAccount rendered".into()))?;
    cluster.apply_yaml(&keep, "helm").await?;
    let (client, kubeconfig) = cluster.service_account_client(namespace, &sa).await?;
    Ok(OperatorIdentity {
        client,
        kubeconfig,
        user: format!("system:serviceaccount:{namespace}:{sa}"),
    })
}

/// A scenario's starting point: the shared cluster, the CRDs, a fresh namespace with the
/// sample Secrets, an administrator client, and the operator's chart-made identity. Also
/// sends logs to the test's output, at the level `RUST_LOG` names (default `warn`).
pub struct Project {
    /// The cluster.
    pub cluster: &'static Cluster,
    /// This test's namespace; deleted when the test ends.
    pub namespace: TestNamespace,
    /// An administrator client (what a platform team's kubectl would be).
    pub admin: kube::Client,
    /// The operator's identity.
    pub operator: OperatorIdentity,
}

impl Project {
    /// Sets everything up on `cluster` in a namespace named after `prefix`.
    pub async fn start(
        cluster: &'static Cluster,
        prefix: &str,
        limit: Duration,
    ) -> Result<Self, InstallError> {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
            .with_test_writer()
            .try_init();
        let admin = cluster.client().await?;
        install_crds(&admin, limit).await?;
        let namespace = cluster.namespace(prefix).await?;
        install_secrets(&admin, namespace.name()).await?;
        let operator = operator_identity(cluster, namespace.name(), &[]).await?;
        Ok(Self {
            cluster,
            namespace,
            admin,
            operator,
        })
    }

    /// Attaches to the test binary's shared cluster (started by `daemon`, the
    /// `grokcast-e2e` binary; blocking, so on a blocking thread and before any deadline) and
    /// sets up [`Project::start`] there.
    ///
    /// # Panics
    /// When the cluster or the setup fails: this is a test harness, and a panic is how a
    /// scenario fails.
    pub async fn shared(daemon: &'static str, prefix: &str, limit: Duration) -> Self {
        let cluster = tokio::task::spawn_blocking(move || Cluster::shared(daemon.as_ref()))
            .await
            .unwrap_or_else(|e| panic!("attaching to the test cluster: {e}"))
            .unwrap_or_else(|e| panic!("test cluster: {e}"));
        Project::start(cluster, prefix, limit)
            .await
            .unwrap_or_else(|e| panic!("CRDs, namespace, secrets and the operator's identity: {e}"))
    }

    /// The namespace's name.
    pub fn ns(&self) -> &str {
        self.namespace.name()
    }
}

/// Applies every document of a manifest file to the cluster as `manager`, into `namespace`
/// whatever the file says (samples name `voice`).
pub async fn apply_file_in(
    client: &kube::Client,
    path: &Path,
    namespace: &str,
    manager: &str,
) -> Result<(), InstallError> {
    let text = std::fs::read_to_string(path).map_err(|e| ClusterError::Io {
        path: path.to_owned(),
        source: e,
    })?;
    let mut docs = String::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let Ok(mut v) = <serde_json::Value as serde::Deserialize>::deserialize(doc) else {
            continue;
        };
        if v.is_null() {
            continue;
        }
        v["metadata"]["namespace"] = json!(namespace);
        docs.push_str(&serde_yaml::to_string(&v).unwrap_or_default());
        docs.push_str("---\n");
    }
    Ok(apply_documents(client, &docs, manager).await?)
}

/// How many `events.k8s.io/v1` Events in `namespace` are about the object `name` with `reason`
/// (what `kubectl describe` lists): scenarios count them to check one Event per transition.
pub async fn events_for(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    reason: &str,
) -> Result<usize, kube::Error> {
    let events: Api<Event> = Api::namespaced(client.clone(), namespace);
    Ok(events
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|e| {
            e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name)
                && e.reason.as_deref() == Some(reason)
        })
        .count())
}
