//! Names, labels and owner references shared by every child the operator builds.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use kube::Resource;

/// Label every child carries; the operator's watches select on it.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Value of [`MANAGED_BY_LABEL`].
pub const MANAGED_BY: &str = "grokcast-operator";
/// Label holding the owning custom resource's name.
pub const INSTANCE_LABEL: &str = "app.kubernetes.io/instance";
/// Label saying what the pods are (`grokcast-model-server` or `grokcast-agent`).
pub const NAME_LABEL: &str = "app.kubernetes.io/name";
/// Label with the owning ModelPool's name on pool children.
pub const MODEL_POOL_LABEL: &str = "grokcast.io/modelpool";
/// Label with the owning VoiceAgent's name on agent children.
pub const VOICE_AGENT_LABEL: &str = "grokcast.io/voiceagent";
/// Pod-template annotation with a hash of the agent's config, so a config change rolls pods.
pub const CONFIG_HASH_ANNOTATION: &str = "grokcast.io/config-hash";

/// Label selector string for everything the operator manages.
pub fn managed_selector() -> String {
    format!("{MANAGED_BY_LABEL}={MANAGED_BY}")
}

/// Longest custom resource name the operator accepts: the longest child name suffix
/// (`-agent`, `-cache`, `-preload-12345678`) must still fit a 63-character DNS label.
pub const MAX_NAME_LEN: usize = 45;

/// Identity of the custom resource that owns a set of children.
#[derive(Clone, Debug, PartialEq)]
pub struct Owner {
    /// Resource name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// Controller owner reference to put on every child.
    pub reference: OwnerReference,
    /// The pods' `app.kubernetes.io/name`.
    pub app: &'static str,
    /// `grokcast.io/modelpool` or `grokcast.io/voiceagent`.
    pub owner_label: &'static str,
}

impl Owner {
    /// The owner of children of `obj`. `None` when the object lacks a name, namespace or uid,
    /// which only happens for objects not read from the API (render fills in a placeholder uid).
    pub fn of<K: Resource<DynamicType = ()>>(
        obj: &K,
        app: &'static str,
        owner_label: &'static str,
    ) -> Option<Self> {
        Some(Self {
            name: obj.meta().name.clone()?,
            namespace: obj.meta().namespace.clone()?,
            reference: obj.controller_owner_ref(&())?,
            app,
            owner_label,
        })
    }

    /// Labels that select this owner's pods; stable for the life of the resource, since a
    /// Deployment's selector is immutable.
    pub fn selector_labels(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            (NAME_LABEL.to_string(), self.app.to_string()),
            (INSTANCE_LABEL.to_string(), self.name.clone()),
        ])
    }

    /// The selector as `key=value,...`, for `status.selector` and the `/scale` subresource.
    pub fn selector_string(&self) -> String {
        self.selector_labels()
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Selector labels plus the managed-by and owner labels.
    pub fn labels(&self) -> BTreeMap<String, String> {
        let mut labels = self.selector_labels();
        labels.insert(MANAGED_BY_LABEL.into(), MANAGED_BY.into());
        labels.insert(self.owner_label.into(), self.name.clone());
        labels
    }

    /// Metadata for a child called `name`.
    pub fn child_meta(&self, name: String) -> ObjectMeta {
        ObjectMeta {
            name: Some(name),
            namespace: Some(self.namespace.clone()),
            labels: Some(self.labels()),
            owner_references: Some(vec![self.reference.clone()]),
            ..ObjectMeta::default()
        }
    }

    /// A `LabelSelector` matching this owner's pods.
    pub fn label_selector(&self) -> LabelSelector {
        LabelSelector {
            match_labels: Some(self.selector_labels()),
            ..LabelSelector::default()
        }
    }
}

/// Hex SHA-256 prefix of `data`, for config hashes and content-addressed names.
pub fn short_hash(data: &[u8], len: usize) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(data);
    let mut s = hex::encode(digest);
    s.truncate(len);
    s
}
