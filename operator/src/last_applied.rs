//! What the operator last applied to each child, so that a reconcile with nothing to change
//! costs no write. Most reconciles are triggered by a child's own events (its creation, a
//! Deployment's status) or a referenced pool's readiness; re-sending identical server-side
//! applies for those made up most of the operator's API traffic.
//!
//! An apply is skipped only when both hold:
//! - the body we would send hashes the same as the body of our last successful apply, and
//! - the child in the watch cache is the very object that apply returned: same uid, same
//!   generation (resourceVersion for kinds without one), same labels and owner references.
//!
//! A deleted child is missing from the cache and a drifted one (someone edited its spec,
//! labels or owners) has moved on, so both are applied again. Nothing here reads the API.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Mutex;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Serialize;

/// A child's identity: kind, namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ChildKey {
    /// Kind, e.g. `Deployment`.
    pub kind: &'static str,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl ChildKey {
    /// The key of a child of `kind` called `name` in `namespace`.
    pub fn new(kind: &'static str, namespace: &str, name: &str) -> Self {
        Self {
            kind,
            namespace: namespace.to_string(),
            name: name.to_string(),
        }
    }
}

/// Our last successful apply of one child: two hashes, so the record stays small whatever
/// the size of the object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Record {
    /// Hash of the body we sent.
    body: u64,
    /// [`fingerprint`] of the object the server returned.
    live: u64,
}

/// Hash of what we would send: serialised, so every field counts.
pub fn body_hash<T: Serialize>(body: &T) -> u64 {
    let mut hasher = DefaultHasher::new();
    // Serialising our own built objects cannot fail (no maps with non-string keys); an
    // empty hash on failure only means "never equal to a recorded one", so we apply.
    serde_json::to_vec(body)
        .unwrap_or_default()
        .hash(&mut hasher);
    hasher.finish()
}

/// What identifies one version of a live child as far as our apply is concerned. The
/// generation moves with every spec change but not with status writes (a Deployment's
/// status changes often), so it is preferred; kinds without one (ConfigMap, Service) fall
/// back to the resourceVersion. Labels and owner references are metadata that the
/// generation does not track, and we own them.
pub fn fingerprint(meta: &ObjectMeta) -> u64 {
    let mut hasher = DefaultHasher::new();
    meta.uid.hash(&mut hasher);
    match meta.generation {
        Some(g) => g.hash(&mut hasher),
        None => meta.resource_version.hash(&mut hasher),
    }
    meta.labels.hash(&mut hasher);
    for r in meta.owner_references.iter().flatten() {
        (&r.api_version, &r.kind, &r.name, &r.uid, r.controller).hash(&mut hasher);
    }
    hasher.finish()
}

/// The last applied body of every child, shared by a controller's reconciles.
#[derive(Debug, Default)]
pub struct LastApplied {
    records: Mutex<HashMap<ChildKey, Record>>,
}

impl LastApplied {
    /// An empty record: after a restart every child is applied once.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether applying `body_hash` to the child would change nothing: our last apply sent
    /// the same body and `live` (the child's metadata in the watch cache, `None` when it is
    /// not there) is still what that apply returned.
    pub fn is_current(&self, key: &ChildKey, body_hash: u64, live: Option<&ObjectMeta>) -> bool {
        let Some(live) = live else { return false };
        let records = self
            .records
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        records
            .get(key)
            .is_some_and(|r| r.body == body_hash && r.live == fingerprint(live))
    }

    /// Note a successful apply of `body_hash` that returned an object with `applied`
    /// metadata.
    pub fn record(&self, key: ChildKey, body_hash: u64, applied: &ObjectMeta) {
        let record = Record {
            body: body_hash,
            live: fingerprint(applied),
        };
        self.records
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(key, record);
    }

    /// Whether this controller has applied the child and not seen it deleted since. Kinds
    /// without a cache (ServiceMonitor) rely on this to know a child is theirs without a read.
    pub fn knows(&self, key: &ChildKey) -> bool {
        self.records
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains_key(key)
    }

    /// Drop the record of a deleted child, so the map does not grow with churn. A child
    /// missing from the cache is applied regardless (after an ownership read for cached kinds).
    pub fn forget(&self, key: &ChildKey) {
        self.records
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(key);
    }

    /// How many children have a record.
    pub fn len(&self) -> usize {
        self.records
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len()
    }

    /// Whether no child has a record.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
    use serde_json::json;

    fn meta(uid: &str, generation: Option<i64>, rv: &str) -> ObjectMeta {
        ObjectMeta {
            name: Some("receptionist-agent".into()),
            namespace: Some("voice".into()),
            uid: Some(uid.into()),
            generation,
            resource_version: Some(rv.into()),
            labels: Some(
                [(
                    "app.kubernetes.io/name".to_string(),
                    "grokcast-agent".to_string(),
                )]
                .into(),
            ),
            owner_references: Some(vec![OwnerReference {
                api_version: "grokcast.io/v1alpha1".into(),
                kind: "VoiceAgent".into(),
                name: "receptionist".into(),
                uid: "owner-uid".into(),
                controller: Some(true),
                ..OwnerReference::default()
            }]),
            ..ObjectMeta::default()
        }
    }

    fn key() -> ChildKey {
        ChildKey::new("Deployment", "voice", "receptionist-agent")
    }

    #[test]
    fn unchanged_body_and_child_skip_the_apply() {
        let applied = LastApplied::new();
        let body = body_hash(&json!({"spec": {"replicas": 2}}));
        let live = meta("u1", Some(1), "10");
        assert!(
            !applied.is_current(&key(), body, Some(&live)),
            "never applied"
        );
        applied.record(key(), body, &live);
        assert!(applied.is_current(&key(), body, Some(&live)));
        // A status write moves the resourceVersion but not the generation.
        let status_written = meta("u1", Some(1), "11");
        assert!(applied.is_current(&key(), body, Some(&status_written)));
    }

    #[test]
    fn new_body_deleted_or_drifted_child_is_applied_again() {
        let applied = LastApplied::new();
        let body = body_hash(&json!({"spec": {"replicas": 2}}));
        let live = meta("u1", Some(1), "10");
        applied.record(key(), body, &live);
        let other = body_hash(&json!({"spec": {"replicas": 3}}));
        assert!(!applied.is_current(&key(), other, Some(&live)), "new body");
        assert!(!applied.is_current(&key(), body, None), "deleted");
        let recreated = meta("u2", Some(1), "20");
        assert!(
            !applied.is_current(&key(), body, Some(&recreated)),
            "recreated by someone else"
        );
        let edited = meta("u1", Some(2), "12");
        assert!(
            !applied.is_current(&key(), body, Some(&edited)),
            "spec edited"
        );
        let mut relabelled = live.clone();
        relabelled.labels = None;
        assert!(
            !applied.is_current(&key(), body, Some(&relabelled)),
            "labels removed"
        );
        let mut orphaned = live.clone();
        orphaned.owner_references = None;
        assert!(
            !applied.is_current(&key(), body, Some(&orphaned)),
            "owner removed"
        );
    }

    #[test]
    fn kinds_without_generation_compare_resource_versions() {
        let applied = LastApplied::new();
        let k = ChildKey::new("ConfigMap", "voice", "receptionist-agent");
        let body = body_hash(&json!({"data": {"agent.yaml": "x"}}));
        applied.record(k.clone(), body, &meta("u1", None, "10"));
        assert!(applied.is_current(&k, body, Some(&meta("u1", None, "10"))));
        assert!(
            !applied.is_current(&k, body, Some(&meta("u1", None, "11"))),
            "edited"
        );
        applied.forget(&k);
        assert!(applied.is_empty());
    }
}
