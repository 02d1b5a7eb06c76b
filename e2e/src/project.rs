//! What every operator scenario starts from on a fresh control plane: both GrokCast CRDs
//! created and established, a namespace, and the Secrets `config/samples` refer to.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Api;
use kube::api::{ListParams, PostParams};
use serde_json::json;

use crate::{ControlPlaneError, TestControlPlane};

/// The Secrets (name, key) the samples reference: the Hugging Face token of gated models and
/// the Twilio auth token of VoiceAgents.
pub const SAMPLE_SECRETS: [(&str, &str); 2] = [("hf", "token"), ("twilio", "authToken")];

/// Why the project could not be installed.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// The control plane did not start or gave no client.
    #[error(transparent)]
    ControlPlane(#[from] ControlPlaneError),
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
}

/// Creates the CRDs (waiting up to `limit` for each to be established), `namespace`, and the
/// [`SAMPLE_SECRETS`] in it with a placeholder value.
pub async fn install(
    client: &kube::Client,
    namespace: &str,
    limit: Duration,
) -> Result<(), InstallError> {
    let create = |what: String| move |source| InstallError::Create { what, source };
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in grokcast_crds::crds() {
        let name = crd.metadata.name.clone().unwrap_or_default();
        crds.create(&PostParams::default(), &crd)
            .await
            .map_err(create(format!("CRD {name}")))?;
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
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns = Namespace {
        metadata: kube::api::ObjectMeta {
            name: Some(namespace.to_owned()),
            ..Default::default()
        },
        ..Default::default()
    };
    namespaces
        .create(&PostParams::default(), &ns)
        .await
        .map_err(create(format!("namespace {namespace}")))?;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    for (name, key) in SAMPLE_SECRETS {
        let secret: Secret = serde_json::from_value(json!({
            "metadata": {"name": name}, "stringData": {key: "test-value"}
        }))
        .unwrap_or_default();
        secrets
            .create(&PostParams::default(), &secret)
            .await
            .map_err(create(format!("Secret {namespace}/{name}")))?;
    }
    Ok(())
}

/// A fresh control plane with the project [`install`]ed in `namespace`, and a client. Also
/// sends logs to the test's output, at the level `RUST_LOG` names (default `warn`).
pub async fn start(
    namespace: &str,
    limit: Duration,
) -> Result<(TestControlPlane, kube::Client), InstallError> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
        .with_test_writer()
        .try_init();
    let cp = TestControlPlane::start().await?;
    let client = cp.client().await?;
    install(&client, namespace, limit).await?;
    Ok((cp, client))
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
