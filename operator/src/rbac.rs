//! The one table of API permissions the operator uses. `grokcast-operator rbac` prints it
//! as a ClusterRole and the Helm chart's test compares against that output, so a new API
//! call without a rule here fails CI instead of failing in a cluster.

use k8s_openapi::api::rbac::v1::{ClusterRole, PolicyRule};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

/// One RBAC rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rule {
    /// API group ("" for core).
    pub api_group: &'static str,
    /// Resources (with `/subresource` where needed).
    pub resources: &'static [&'static str],
    /// Verbs.
    pub verbs: &'static [&'static str],
    /// Why the operator needs it.
    pub why: &'static str,
}

/// Every permission the operator (including the autoscaler) calls.
///
/// Server-side apply creates missing objects through `patch`, and the API server authorizes
/// such a patch as a `create` too (a real kube-apiserver answers 403 without it), so every
/// child kind needs both.
/// `get` on children reads a child the cache does not hold before the first apply, to leave
/// an object of the same name that is not ours alone. Children are deleted by the garbage
/// collector through their owner references; the one exception is preload Jobs of an older
/// template, which the operator deletes itself (their pods would otherwise keep running).
pub const RBAC_RULES: &[Rule] = &[
    Rule {
        api_group: "grokcast.io",
        resources: &["modelpools", "voiceagents"],
        verbs: &["get", "list", "watch"],
        why: "watch the custom resources",
    },
    Rule {
        api_group: "grokcast.io",
        resources: &["modelpools/status", "voiceagents/status"],
        verbs: &["get", "patch"],
        why: "server-side apply of status (conditions, replicas, endpoints, autoscaling)",
    },
    Rule {
        api_group: "grokcast.io",
        resources: &["modelpools/scale", "voiceagents/scale"],
        verbs: &["get", "patch"],
        why: "the autoscaler sets replicas through the scale subresource",
    },
    Rule {
        api_group: "apps",
        resources: &["deployments"],
        verbs: &["get", "list", "watch", "create", "patch"],
        why: "model server and agent Deployments",
    },
    Rule {
        api_group: "",
        resources: &["services", "configmaps", "persistentvolumeclaims"],
        verbs: &["get", "list", "watch", "create", "patch"],
        why: "Services, agent config, weight caches",
    },
    Rule {
        api_group: "policy",
        resources: &["poddisruptionbudgets"],
        verbs: &["get", "list", "watch", "create", "patch"],
        why: "PodDisruptionBudgets",
    },
    Rule {
        api_group: "batch",
        resources: &["jobs"],
        verbs: &["get", "list", "watch", "create", "patch", "delete"],
        why: "weight preload Jobs; older templates' Jobs are deleted",
    },
    Rule {
        api_group: "",
        resources: &["secrets"],
        verbs: &["get", "list", "watch"],
        why: "check that referenced Secrets and keys exist, and notice new ones through a \
              metadata-only watch (values are never logged or kept)",
    },
    Rule {
        api_group: "events.k8s.io",
        resources: &["events"],
        verbs: &["create", "patch"],
        why: "Events on condition transitions",
    },
    Rule {
        api_group: "coordination.k8s.io",
        resources: &["leases"],
        verbs: &["get", "create", "update"],
        why: "leader election",
    },
    Rule {
        api_group: "monitoring.coreos.com",
        resources: &["servicemonitors"],
        verbs: &["get", "create", "patch"],
        why: "ServiceMonitors for agents when the Prometheus Operator is installed",
    },
    Rule {
        api_group: "",
        resources: &["nodes"],
        verbs: &["list", "watch"],
        why: "the autoscaler counts allocatable GPUs per product, from a watch",
    },
    Rule {
        api_group: "",
        resources: &["pods"],
        verbs: &["list", "watch"],
        why: "the autoscaler counts the GPUs that bound pods (anyone's) hold, from a watch",
    },
];

/// The ClusterRole for [`RBAC_RULES`].
pub fn cluster_role(name: &str) -> ClusterRole {
    ClusterRole {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..ObjectMeta::default()
        },
        rules: Some(
            RBAC_RULES
                .iter()
                .map(|r| PolicyRule {
                    api_groups: Some(vec![r.api_group.into()]),
                    resources: Some(r.resources.iter().map(|s| s.to_string()).collect()),
                    verbs: r.verbs.iter().map(|s| s.to_string()).collect(),
                    ..PolicyRule::default()
                })
                .collect(),
        ),
        ..ClusterRole::default()
    }
}

/// Whether the table grants `verb` on `resource` in `api_group`; used by tests to check
/// that every call the controllers make is covered.
pub fn allows(api_group: &str, resource: &str, verb: &str) -> bool {
    RBAC_RULES.iter().any(|r| {
        r.api_group == api_group && r.resources.contains(&resource) && r.verbs.contains(&verb)
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Every kind the controllers apply, watch or read is covered by the table.
    #[test]
    fn every_call_is_granted() {
        for (group, resource) in [
            ("apps", "deployments"),
            ("", "services"),
            ("", "configmaps"),
            ("", "persistentvolumeclaims"),
            ("policy", "poddisruptionbudgets"),
            ("batch", "jobs"),
        ] {
            for verb in ["get", "list", "watch", "create", "patch"] {
                assert!(allows(group, resource, verb), "{group}/{resource} {verb}");
            }
        }
        assert!(allows("monitoring.coreos.com", "servicemonitors", "patch"));
        assert!(allows("monitoring.coreos.com", "servicemonitors", "create"));
        assert!(allows("monitoring.coreos.com", "servicemonitors", "get"));
        assert!(allows("batch", "jobs", "delete"), "older preload Jobs");
        for verb in ["get", "list", "watch"] {
            assert!(allows("", "secrets", verb), "Secret watch: {verb}");
        }
        for verb in ["patch", "update", "create", "delete"] {
            assert!(!allows("", "secrets", verb), "Secrets are never written");
        }
        assert!(allows("", "nodes", "watch"), "the autoscaler's node cache");
        assert!(allows("", "pods", "watch"), "the autoscaler's pod cache");
        for verb in ["get", "create", "patch", "update", "delete"] {
            assert!(
                !allows("", "pods", verb),
                "pods are only read, in bulk: {verb}"
            );
        }
        for verb in ["get", "create", "update"] {
            assert!(allows("coordination.k8s.io", "leases", verb));
        }
        for r in ["modelpools/status", "voiceagents/status"] {
            assert!(allows("grokcast.io", r, "patch"));
        }
    }

    #[test]
    fn no_wildcards_and_no_deletes() {
        for r in RBAC_RULES {
            assert!(!r.verbs.contains(&"*") && !r.resources.contains(&"*"));
            assert!(
                !r.verbs.contains(&"delete") || r.resources == ["jobs"],
                "{:?}: owner references delete children; only old preload Jobs are deleted",
                r.resources
            );
        }
        let role = cluster_role("x");
        assert_eq!(role.rules.unwrap().len(), RBAC_RULES.len());
    }
}
