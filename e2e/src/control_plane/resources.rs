//! The kinds the control plane serves: the built-in table, CRD registration and
//! the discovery documents built from them.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Value, json};

/// Where the `/scale` subresource reads and writes inside an object.
#[derive(Debug, Clone, PartialEq)]
pub struct ScalePaths {
    /// Dotted path of the desired replica count, e.g. `.spec.replicas`.
    pub spec_replicas: String,
    /// Dotted path of the observed replica count, e.g. `.status.replicas`.
    pub status_replicas: String,
    /// Dotted path of the selector string; `None` for built-ins, whose selector
    /// is derived from `spec.selector` the way the apps API does.
    pub label_selector: Option<String>,
}

/// A column of `kubectl get` output for a CRD (`additionalPrinterColumns`).
#[derive(Debug, Clone, PartialEq)]
pub struct PrinterColumn {
    /// Column header.
    pub name: String,
    /// OpenAPI type of the cell (`string`, `integer`, `date`, ...).
    pub type_: String,
    /// Simple JSONPath such as `.status.replicas`.
    pub json_path: String,
    /// 0 for default output, higher for `-o wide`.
    pub priority: i64,
    /// Column description (kubectl shows it nowhere, but Tables carry it).
    pub description: String,
    /// OpenAPI format of the cell, e.g. `int32`.
    pub format: String,
}

/// One served resource (a group, version and plural).
#[derive(Debug, Clone)]
pub struct ResourceInfo {
    /// API group, empty for the core group.
    pub group: String,
    /// Served version.
    pub version: String,
    /// Plural resource name used in URLs.
    pub plural: String,
    /// Singular name.
    pub singular: String,
    /// Kind of the objects.
    pub kind: String,
    /// Namespaced or cluster-scoped.
    pub namespaced: bool,
    /// Short names for kubectl.
    pub short_names: Vec<String>,
    /// Categories (`kubectl get all`, `kubectl get grokcast`).
    pub categories: Vec<String>,
    /// Whether `/status` is a separate subresource.
    pub status_subresource: bool,
    /// `/scale` mapping, if served.
    pub scale: Option<ScalePaths>,
    /// Whether `metadata.generation` is maintained for this kind.
    pub generation: bool,
    /// The version's `openAPIV3Schema`, for CRDs.
    pub schema: Option<Arc<Value>>,
    /// Extra printer columns, for CRDs.
    pub printer_columns: Vec<PrinterColumn>,
    /// Whether this kind was registered by a CustomResourceDefinition.
    pub custom: bool,
    /// Whether this version is the CRD's storage version (preferred in discovery).
    pub storage: bool,
}

impl ResourceInfo {
    /// `group/version`, or just `version` for the core group.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// The storage key shared by every version of the resource.
    pub fn storage_key(&self) -> String {
        // `events.k8s.io/v1` is another view of the core Events, as on a real
        // server: what the operator records there, `kubectl describe` reads as
        // core/v1 (see `events.rs`).
        if super::events::is_events_v1(self) {
            return "/events".to_string();
        }
        format!("{}/{}", self.group, self.plural)
    }

    /// `plural.group` as used in error messages (`deployments.apps`).
    pub fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.clone()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// `Kind.group` as used in validation messages (`ModelPool.grokcast.io`).
    pub fn qualified_kind(&self) -> String {
        if self.group.is_empty() {
            self.kind.clone()
        } else {
            format!("{}.{}", self.kind, self.group)
        }
    }
}

struct Builtin {
    group: &'static str,
    version: &'static str,
    plural: &'static str,
    kind: &'static str,
    namespaced: bool,
    short: &'static [&'static str],
    status: bool,
    generation: bool,
    scale: bool,
}

const fn b(
    group: &'static str,
    version: &'static str,
    plural: &'static str,
    kind: &'static str,
    namespaced: bool,
    short: &'static [&'static str],
) -> Builtin {
    Builtin {
        group,
        version,
        plural,
        kind,
        namespaced,
        short,
        status: false,
        generation: false,
        scale: false,
    }
}

const fn with_status(mut x: Builtin, generation: bool, scale: bool) -> Builtin {
    x.status = true;
    x.generation = generation;
    x.scale = scale;
    x
}

const BUILTINS: &[Builtin] = &[
    with_status(
        b("", "v1", "namespaces", "Namespace", false, &["ns"]),
        false,
        false,
    ),
    b("", "v1", "configmaps", "ConfigMap", true, &["cm"]),
    b("", "v1", "secrets", "Secret", true, &[]),
    with_status(
        b("", "v1", "services", "Service", true, &["svc"]),
        false,
        false,
    ),
    b("", "v1", "serviceaccounts", "ServiceAccount", true, &["sa"]),
    b("", "v1", "events", "Event", true, &["ev"]),
    b("", "v1", "endpoints", "Endpoints", true, &["ep"]),
    with_status(b("", "v1", "nodes", "Node", false, &["no"]), false, false),
    with_status(b("", "v1", "pods", "Pod", true, &["po"]), false, false),
    with_status(
        b(
            "",
            "v1",
            "persistentvolumeclaims",
            "PersistentVolumeClaim",
            true,
            &["pvc"],
        ),
        false,
        false,
    ),
    with_status(
        b("apps", "v1", "deployments", "Deployment", true, &["deploy"]),
        true,
        true,
    ),
    with_status(
        b("apps", "v1", "statefulsets", "StatefulSet", true, &["sts"]),
        true,
        true,
    ),
    with_status(b("batch", "v1", "jobs", "Job", true, &[]), true, false),
    with_status(
        b(
            "policy",
            "v1",
            "poddisruptionbudgets",
            "PodDisruptionBudget",
            true,
            &["pdb"],
        ),
        true,
        false,
    ),
    b("coordination.k8s.io", "v1", "leases", "Lease", true, &[]),
    b("events.k8s.io", "v1", "events", "Event", true, &["ev"]),
    b(
        "rbac.authorization.k8s.io",
        "v1",
        "roles",
        "Role",
        true,
        &[],
    ),
    b(
        "rbac.authorization.k8s.io",
        "v1",
        "rolebindings",
        "RoleBinding",
        true,
        &[],
    ),
    b(
        "rbac.authorization.k8s.io",
        "v1",
        "clusterroles",
        "ClusterRole",
        false,
        &[],
    ),
    b(
        "rbac.authorization.k8s.io",
        "v1",
        "clusterrolebindings",
        "ClusterRoleBinding",
        false,
        &[],
    ),
    with_status(
        b(
            "apiextensions.k8s.io",
            "v1",
            "customresourcedefinitions",
            "CustomResourceDefinition",
            false,
            &["crd", "crds"],
        ),
        true,
        false,
    ),
];

/// Every served resource, by group, version and plural.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    by_path: BTreeMap<(String, String, String), Arc<ResourceInfo>>,
    /// Resources registered by each CRD name, to unregister on deletion.
    by_crd: BTreeMap<String, Vec<(String, String, String)>>,
}

fn singular_of(kind: &str) -> String {
    kind.to_ascii_lowercase()
}

impl Registry {
    /// The registry with every built-in kind.
    pub fn with_builtins() -> Self {
        let mut r = Registry::default();
        for x in BUILTINS {
            let scale = x.scale.then(|| ScalePaths {
                spec_replicas: ".spec.replicas".into(),
                status_replicas: ".status.replicas".into(),
                label_selector: None,
            });
            let categories = if matches!(
                x.plural,
                "deployments" | "services" | "pods" | "jobs" | "statefulsets"
            ) {
                vec!["all".to_string()]
            } else {
                vec![]
            };
            r.insert(ResourceInfo {
                group: x.group.into(),
                version: x.version.into(),
                plural: x.plural.into(),
                singular: singular_of(x.kind),
                kind: x.kind.into(),
                namespaced: x.namespaced,
                short_names: x.short.iter().map(|s| s.to_string()).collect(),
                categories,
                status_subresource: x.status,
                scale,
                generation: x.generation,
                schema: None,
                printer_columns: vec![],
                custom: false,
                storage: true,
            });
        }
        r
    }

    fn insert(&mut self, info: ResourceInfo) {
        self.by_path.insert(
            (
                info.group.clone(),
                info.version.clone(),
                info.plural.clone(),
            ),
            Arc::new(info),
        );
    }

    /// Looks a resource up by its URL parts.
    pub fn get(&self, group: &str, version: &str, plural: &str) -> Option<Arc<ResourceInfo>> {
        self.by_path
            .get(&(group.to_string(), version.to_string(), plural.to_string()))
            .cloned()
    }

    /// Any one version of a resource by its storage key.
    pub fn by_storage_key(&self, key: &str) -> Option<Arc<ResourceInfo>> {
        self.by_path
            .values()
            .find(|r| r.storage_key() == key)
            .cloned()
    }

    /// Registers (or re-registers) the versions a CRD object serves.
    pub fn register_crd(&mut self, crd: &Value) -> Result<(), String> {
        let name = crd
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        self.unregister_crd(&name);
        let spec = crd.get("spec").ok_or("spec: Required value")?;
        let group = str_at(spec, "/group").ok_or("spec.group: Required value")?;
        let plural = str_at(spec, "/names/plural").ok_or("spec.names.plural: Required value")?;
        let kind = str_at(spec, "/names/kind").ok_or("spec.names.kind: Required value")?;
        let singular = str_at(spec, "/names/singular")
            .map(str::to_string)
            .unwrap_or_else(|| singular_of(kind));
        let scope = str_at(spec, "/scope").unwrap_or("Namespaced");
        let list = |p: &str| -> Vec<String> {
            spec.pointer(p)
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default()
        };
        let short_names = list("/names/shortNames");
        let categories = list("/names/categories");
        let versions = spec
            .get("versions")
            .and_then(Value::as_array)
            .ok_or("spec.versions: Required value")?;
        let mut keys = vec![];
        for v in versions {
            if v.get("served").and_then(Value::as_bool) == Some(false) {
                continue;
            }
            let Some(version) = str_at(v, "/name") else {
                continue;
            };
            let sub = v.get("subresources");
            let status_subresource = sub.and_then(|s| s.get("status")).is_some();
            let scale = sub.and_then(|s| s.get("scale")).map(|s| ScalePaths {
                spec_replicas: str_at(s, "/specReplicasPath")
                    .unwrap_or(".spec.replicas")
                    .into(),
                status_replicas: str_at(s, "/statusReplicasPath")
                    .unwrap_or(".status.replicas")
                    .into(),
                label_selector: str_at(s, "/labelSelectorPath").map(str::to_string),
            });
            let printer_columns = v
                .get("additionalPrinterColumns")
                .and_then(Value::as_array)
                .map(|cols| {
                    cols.iter()
                        .filter_map(|c| {
                            Some(PrinterColumn {
                                name: str_at(c, "/name")?.to_string(),
                                type_: str_at(c, "/type").unwrap_or("string").to_string(),
                                json_path: str_at(c, "/jsonPath")?.to_string(),
                                priority: c.get("priority").and_then(Value::as_i64).unwrap_or(0),
                                description: str_at(c, "/description")
                                    .unwrap_or_default()
                                    .to_string(),
                                format: str_at(c, "/format").unwrap_or_default().to_string(),
                            })
                        })
                        .collect()
                })
                .unwrap_or_default();
            let schema = v.pointer("/schema/openAPIV3Schema").cloned().map(Arc::new);
            let info = ResourceInfo {
                group: group.into(),
                version: version.into(),
                plural: plural.into(),
                singular: singular.clone(),
                kind: kind.into(),
                namespaced: scope == "Namespaced",
                short_names: short_names.clone(),
                categories: categories.clone(),
                status_subresource,
                scale,
                generation: true,
                schema,
                printer_columns,
                custom: true,
                storage: v.get("storage").and_then(Value::as_bool).unwrap_or(false),
            };
            keys.push((group.to_string(), version.to_string(), plural.to_string()));
            self.insert(info);
        }
        self.by_crd.insert(name, keys);
        Ok(())
    }

    /// Stops serving the resources a CRD registered.
    pub fn unregister_crd(&mut self, name: &str) {
        if let Some(keys) = self.by_crd.remove(name) {
            for k in keys {
                self.by_path.remove(&k);
            }
        }
    }

    /// `GET /api`.
    pub fn core_versions(&self) -> Value {
        json!({
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]
        })
    }

    fn groups(&self) -> BTreeMap<String, Vec<Arc<ResourceInfo>>> {
        let mut groups: BTreeMap<String, Vec<Arc<ResourceInfo>>> = BTreeMap::new();
        for r in self.by_path.values().filter(|r| !r.group.is_empty()) {
            groups.entry(r.group.clone()).or_default().push(r.clone());
        }
        groups
    }

    fn group_json(name: &str, resources: &[Arc<ResourceInfo>]) -> Value {
        let mut versions: Vec<String> = resources.iter().map(|r| r.version.clone()).collect();
        versions.sort();
        versions.dedup();
        // Prefer the storage version, as the real server does for CRDs.
        let preferred = resources
            .iter()
            .find(|r| r.storage)
            .map(|r| r.version.clone())
            .or_else(|| versions.last().cloned())
            .unwrap_or_default();
        let gv = |v: &str| json!({"groupVersion": format!("{name}/{v}"), "version": v});
        json!({
            "name": name,
            "versions": versions.iter().map(|v| gv(v)).collect::<Vec<_>>(),
            "preferredVersion": gv(&preferred),
        })
    }

    /// `GET /apis`.
    pub fn group_list(&self) -> Value {
        let groups: Vec<Value> = self
            .groups()
            .iter()
            .map(|(name, rs)| Self::group_json(name, rs))
            .collect();
        json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
    }

    /// `GET /apis/GROUP`, or `None` when the group is unknown.
    pub fn group(&self, group: &str) -> Option<Value> {
        let groups = self.groups();
        let rs = groups.get(group)?;
        let mut g = Self::group_json(group, rs);
        if let Some(o) = g.as_object_mut() {
            o.insert("kind".into(), "APIGroup".into());
            o.insert("apiVersion".into(), "v1".into());
        }
        Some(g)
    }

    /// `GET /api/v1` or `/apis/GROUP/VERSION`, or `None` when not served.
    pub fn resource_list(&self, group: &str, version: &str) -> Option<Value> {
        let mut resources = vec![];
        for r in self
            .by_path
            .values()
            .filter(|r| r.group == group && r.version == version)
        {
            let verbs = json!([
                "create",
                "delete",
                "deletecollection",
                "get",
                "list",
                "patch",
                "update",
                "watch"
            ]);
            let mut main = json!({
                "name": r.plural,
                "singularName": r.singular,
                "namespaced": r.namespaced,
                "kind": r.kind,
                "verbs": verbs,
            });
            if !r.short_names.is_empty() {
                main["shortNames"] = json!(r.short_names);
            }
            if !r.categories.is_empty() {
                main["categories"] = json!(r.categories);
            }
            resources.push(main);
            if r.status_subresource {
                resources.push(json!({
                    "name": format!("{}/status", r.plural),
                    "singularName": "",
                    "namespaced": r.namespaced,
                    "kind": r.kind,
                    "verbs": ["get", "patch", "update"],
                }));
            }
            if r.scale.is_some() {
                resources.push(json!({
                    "name": format!("{}/scale", r.plural),
                    "singularName": "",
                    "namespaced": r.namespaced,
                    "group": "autoscaling",
                    "version": "v1",
                    "kind": "Scale",
                    "verbs": ["get", "patch", "update"],
                }));
            }
        }
        if resources.is_empty() {
            return None;
        }
        let gv = if group.is_empty() {
            version.to_string()
        } else {
            format!("{group}/{version}")
        };
        Some(json!({
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": gv,
            "resources": resources,
        }))
    }
}

impl Registry {
    /// Every served resource, in (group, version, plural) order.
    pub fn all(&self) -> impl Iterator<Item = Arc<ResourceInfo>> + '_ {
        self.by_path.values().cloned()
    }

    /// Every served (group, version), the core group as `""`.
    pub fn group_versions(&self) -> Vec<(String, String)> {
        let mut gvs: Vec<(String, String)> = self
            .by_path
            .keys()
            .map(|(g, v, _)| (g.clone(), v.clone()))
            .collect();
        gvs.dedup();
        gvs
    }
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> Option<&'a str> {
    v.pointer(pointer).and_then(Value::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crd_registration_serves_each_version_and_unregisters() {
        let mut r = Registry::with_builtins();
        let crd = json!({
            "metadata": {"name": "widgets.example.com"},
            "spec": {
                "group": "example.com",
                "names": {"plural": "widgets", "kind": "Widget", "shortNames": ["wg"]},
                "scope": "Namespaced",
                "versions": [
                    {"name": "v1", "served": true, "storage": true,
                     "subresources": {"status": {}, "scale": {"specReplicasPath": ".spec.size", "statusReplicasPath": ".status.size"}}},
                    {"name": "v0", "served": false, "storage": false}
                ]
            }
        });
        r.register_crd(&crd).expect("valid CRD");
        let w = r.get("example.com", "v1", "widgets").expect("served");
        assert!(w.status_subresource);
        assert_eq!(
            w.scale.as_ref().map(|s| s.spec_replicas.as_str()),
            Some(".spec.size")
        );
        assert!(r.get("example.com", "v0", "widgets").is_none());
        let list = r.resource_list("example.com", "v1").expect("listed");
        let names: Vec<&str> = list["resources"]
            .as_array()
            .expect("array")
            .iter()
            .filter_map(|x| x["name"].as_str())
            .collect();
        assert_eq!(names, ["widgets", "widgets/status", "widgets/scale"]);
        r.unregister_crd("widgets.example.com");
        assert!(r.get("example.com", "v1", "widgets").is_none());
        assert!(r.group("example.com").is_none());
    }

    #[test]
    fn crd_without_versions_is_refused() {
        let mut r = Registry::with_builtins();
        let err = r
            .register_crd(&json!({"metadata": {"name": "a.b"}, "spec": {"group": "b", "names": {"plural": "a", "kind": "A"}}}))
            .expect_err("no versions");
        assert!(err.contains("spec.versions"));
    }
}
