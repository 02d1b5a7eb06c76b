//! OpenAPI v3 documents: the `/openapi/v3` index and one document per served
//! group-version, with the schemas of the kinds CRDs register, so that
//! `kubectl explain` and kubectl's field-validation check work as against a
//! real API server.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use serde_json::{Map, Value, json};

use super::resources::{Registry, ResourceInfo};

/// The schema-name prefix of the apimachinery meta types, as the real server names them.
const META: &str = "io.k8s.apimachinery.pkg.apis.meta.v1";

/// The path of a group-version in the index: `api/v1` or `apis/G/V`.
fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// The name the real server gives a kind's schema: the group's DNS labels
/// reversed, then version and kind (`grokcast.io`, `v1alpha1`, `VoiceAgent` gives
/// `io.grokcast.v1alpha1.VoiceAgent`). Built-in kinds are named after their Go
/// packages there; a stable, readable name is all clients need.
pub fn schema_name(group: &str, version: &str, kind: &str) -> String {
    if group.is_empty() {
        return format!("io.k8s.api.core.{version}.{kind}");
    }
    let reversed: Vec<&str> = group.split('.').rev().collect();
    format!("{}.{version}.{kind}", reversed.join("."))
}

/// A short content hash the index puts into each `serverRelativeURL`, so that
/// kubectl's disk cache (keyed by URL) refetches a document once a CRD changes it.
fn content_hash(doc: &Value) -> String {
    // `DefaultHasher::new` uses fixed keys: the same document always hashes the same.
    let mut h = std::collections::hash_map::DefaultHasher::new();
    doc.to_string().hash(&mut h);
    format!("{:016X}", h.finish())
}

/// `GET /openapi/v3`: every served group-version with the URL of its document.
pub fn index(registry: &Registry) -> Value {
    let mut paths = Map::new();
    for (group, version) in registry.group_versions() {
        let Some(doc) = group_version(registry, &group, &version) else {
            continue;
        };
        let path = gv_path(&group, &version);
        let url = format!("/openapi/v3/{path}?hash={}", content_hash(&doc));
        paths.insert(path, json!({ "serverRelativeURL": url }));
    }
    json!({ "paths": paths })
}

/// `GET /openapi/v3/api/v1` or `/openapi/v3/apis/G/V`, or `None` when the
/// group-version is not served.
///
/// Each kind has its operations (with the `fieldValidation`, `fieldManager` and
/// `dryRun` parameters kubectl looks for before it sends server-side validation
/// requests) and, for kinds a CRD registers, its schema under components, built
/// from the CRD version's `openAPIV3Schema` like the real server builds it.
/// Built-in kinds get no schema here (the control plane does not carry them), so
/// `kubectl explain` on them reports the kind as missing.
pub fn group_version(registry: &Registry, group: &str, version: &str) -> Option<Value> {
    let resources: Vec<Arc<ResourceInfo>> = registry
        .all()
        .filter(|r| r.group == group && r.version == version)
        .collect();
    if resources.is_empty() {
        return None;
    }
    let mut paths = Map::new();
    let mut schemas = BTreeMap::new();
    for r in &resources {
        let name = schema_name(group, version, &r.kind);
        let with_schema = r.schema.is_some();
        add_paths(&mut paths, r, with_schema.then_some(name.as_str()));
        if let Some(schema) = &r.schema {
            schemas.insert(name.clone(), kind_schema(r, schema));
            schemas.insert(format!("{name}List"), list_schema(r, &name));
        }
    }
    if !schemas.is_empty() {
        schemas.extend(meta_schemas());
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.33.0"},
        "paths": paths,
        "components": {"schemas": schemas},
    }))
}

fn gvk(r: &ResourceInfo) -> Value {
    json!({"group": r.group, "version": r.version, "kind": r.kind})
}

fn add_paths(paths: &mut Map<String, Value>, r: &ResourceInfo, schema: Option<&str>) {
    let prefix = format!("/{}", gv_path(&r.group, &r.version));
    let params = json!([
        {"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
        {"name": "fieldManager", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
        {"name": "dryRun", "in": "query", "schema": {"type": "string", "uniqueItems": true}}
    ]);
    let content = |name: &str| json!({"application/json": {"schema": {"$ref": format!("#/components/schemas/{name}")}}});
    let op = |action: &str, with_params: bool, list: bool| {
        let mut o = json!({
            "operationId": format!("{action}{}{}", r.kind, if list { "List" } else { "" }),
            "responses": {"200": {"description": "OK"}},
            "x-kubernetes-action": action,
            "x-kubernetes-group-version-kind": gvk(r),
        });
        if with_params {
            o["parameters"] = params.clone();
        }
        if let Some(name) = schema {
            let target = if list {
                format!("{name}List")
            } else {
                name.to_string()
            };
            o["responses"]["200"]["content"] = content(&target);
        }
        o
    };
    let (collection, item) = if r.namespaced {
        (
            format!("{prefix}/namespaces/{{namespace}}/{}", r.plural),
            format!("{prefix}/namespaces/{{namespace}}/{}/{{name}}", r.plural),
        )
    } else {
        (
            format!("{prefix}/{}", r.plural),
            format!("{prefix}/{}/{{name}}", r.plural),
        )
    };
    paths.insert(
        collection,
        json!({"get": op("list", false, true), "post": op("post", true, false)}),
    );
    paths.insert(
        item,
        json!({"get": op("get", false, false), "put": op("put", true, false), "patch": op("patch", true, false)}),
    );
}

/// A CRD version's schema as published: the CRD's own `openAPIV3Schema`, with
/// `apiVersion`, `kind` and `metadata` described the way every kind has them
/// (metadata refers to the shared ObjectMeta schema) and the kind it describes.
fn kind_schema(r: &ResourceInfo, schema: &Value) -> Value {
    let mut s = schema.clone();
    if !s.is_object() {
        s = json!({"type": "object"});
    }
    s["type"] = json!("object");
    if !s.get("properties").is_some_and(Value::is_object) {
        s["properties"] = json!({});
    }
    let props = &mut s["properties"];
    props["apiVersion"] = json!({
        "type": "string",
        "description": "APIVersion is the versioned schema of this object: the group and version the server should interpret it as.",
    });
    props["kind"] = json!({
        "type": "string",
        "description": "Kind is the REST resource type of this object, in CamelCase.",
    });
    props["metadata"] = json!({
        "allOf": [{"$ref": format!("#/components/schemas/{META}.ObjectMeta")}],
        "default": {},
        "description": "Standard object metadata: name, namespace, labels, annotations, owners and the fields the server maintains.",
    });
    s["x-kubernetes-group-version-kind"] = json!([gvk(r)]);
    s
}

fn list_schema(r: &ResourceInfo, item: &str) -> Value {
    json!({
        "type": "object",
        "description": format!("A list of {}.", r.kind),
        "required": ["items"],
        "properties": {
            "apiVersion": {"type": "string", "description": "APIVersion of the list."},
            "kind": {"type": "string", "description": "Kind of the list."},
            "items": {
                "type": "array",
                "description": format!("The {} objects.", r.plural),
                "items": {"allOf": [{"$ref": format!("#/components/schemas/{item}")}], "default": {}},
            },
            "metadata": {
                "allOf": [{"$ref": format!("#/components/schemas/{META}.ListMeta")}],
                "default": {},
                "description": "List metadata: resourceVersion and the continue token of paginated lists.",
            },
        },
        "x-kubernetes-group-version-kind": [{"group": r.group, "version": r.version, "kind": format!("{}List", r.kind)}],
    })
}

/// The meta types CRD schemas refer to, described in our own words; enough for
/// `kubectl explain KIND.metadata` to list the fields a user writes.
fn meta_schemas() -> BTreeMap<String, Value> {
    let str_field = |d: &str| json!({"type": "string", "default": "", "description": d});
    let time = json!({"allOf": [{"$ref": format!("#/components/schemas/{META}.Time")}], "description": "A timestamp set by the server (RFC 3339)."});
    let map = |d: &str| json!({"type": "object", "additionalProperties": {"type": "string", "default": ""}, "description": d});
    let mut out = BTreeMap::new();
    out.insert(
        format!("{META}.ObjectMeta"),
        json!({
            "type": "object",
            "description": "Metadata every persisted object has.",
            "properties": {
                "name": str_field("Unique name of the object within its namespace (or the cluster, for cluster-scoped kinds)."),
                "generateName": str_field("Prefix the server completes with a random suffix when name is empty."),
                "namespace": str_field("Namespace the object lives in; empty for cluster-scoped kinds."),
                "uid": str_field("Server-assigned unique identity of this incarnation of the object."),
                "resourceVersion": str_field("Opaque version of the object, used for optimistic concurrency and watches."),
                "generation": {"type": "integer", "format": "int64", "description": "Sequence number of changes to the desired state (spec)."},
                "creationTimestamp": time.clone(),
                "deletionTimestamp": time,
                "labels": map("Identifying key/value pairs that selectors match."),
                "annotations": map("Non-identifying key/value data for tools and controllers."),
                "finalizers": {"type": "array", "items": {"type": "string", "default": ""}, "description": "Keys that must be removed before the object is deleted from storage.", "x-kubernetes-list-type": "set"},
                "ownerReferences": {"type": "array", "items": {"allOf": [{"$ref": format!("#/components/schemas/{META}.OwnerReference")}], "default": {}}, "description": "Objects this one depends on; the garbage collector deletes it after they are gone.", "x-kubernetes-list-map-keys": ["uid"], "x-kubernetes-list-type": "map"},
                "managedFields": {"type": "array", "items": {"allOf": [{"$ref": format!("#/components/schemas/{META}.ManagedFieldsEntry")}], "default": {}}, "description": "Which field manager owns which fields (server-side apply)."},
            },
        }),
    );
    out.insert(
        format!("{META}.ListMeta"),
        json!({
            "type": "object",
            "description": "Metadata of a list response.",
            "properties": {
                "resourceVersion": str_field("Version of the list, to watch from."),
                "continue": str_field("Token for the next page of a paginated list."),
                "remainingItemCount": {"type": "integer", "format": "int64", "description": "How many items the following pages hold."},
            },
        }),
    );
    out.insert(
        format!("{META}.OwnerReference"),
        json!({
            "type": "object",
            "description": "A reference to an owning object.",
            "required": ["apiVersion", "kind", "name", "uid"],
            "properties": {
                "apiVersion": str_field("API version of the owner."),
                "kind": str_field("Kind of the owner."),
                "name": str_field("Name of the owner."),
                "uid": str_field("UID of the owner."),
                "controller": {"type": "boolean", "description": "Whether the owner is the managing controller."},
                "blockOwnerDeletion": {"type": "boolean", "description": "Whether foreground deletion of the owner waits for this object."},
            },
            "x-kubernetes-map-type": "atomic",
        }),
    );
    out.insert(
        format!("{META}.ManagedFieldsEntry"),
        json!({
            "type": "object",
            "description": "The fields one manager owns through one operation.",
            "properties": {
                "manager": str_field("Name of the field manager."),
                "operation": str_field("Apply or Update."),
                "apiVersion": str_field("API version the field set is expressed in."),
                "time": {"allOf": [{"$ref": format!("#/components/schemas/{META}.Time")}], "description": "When the entry last changed."},
                "fieldsType": str_field("Format of fieldsV1; always FieldsV1."),
                "fieldsV1": {"type": "object", "description": "The owned fields as a tree."},
                "subresource": str_field("Subresource the write went through, if any."),
            },
        }),
    );
    out.insert(
        format!("{META}.Time"),
        json!({"type": "string", "format": "date-time", "description": "A timestamp in RFC 3339 form, to the second."}),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry() -> Registry {
        let mut r = Registry::with_builtins();
        r.register_crd(&json!({
            "metadata": {"name": "voiceagents.grokcast.io"},
            "spec": {
                "group": "grokcast.io",
                "names": {"plural": "voiceagents", "kind": "VoiceAgent"},
                "scope": "Namespaced",
                "versions": [{"name": "v1alpha1", "served": true, "storage": true, "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "description": "A voice agent.",
                    "properties": {"spec": {"type": "object", "properties": {"slo": {
                        "type": "object", "description": "The latency objective.",
                        "properties": {"turnLatencyP95Ms": {"type": "integer", "description": "p95 target."}}
                    }}}}
                }}}]
            }
        }))
        .expect("valid CRD");
        r
    }

    #[test]
    fn schema_names_reverse_the_group() {
        assert_eq!(
            schema_name("grokcast.io", "v1alpha1", "VoiceAgent"),
            "io.grokcast.v1alpha1.VoiceAgent"
        );
        assert_eq!(
            schema_name("apiextensions.k8s.io", "v1", "CustomResourceDefinition"),
            "io.k8s.apiextensions.v1.CustomResourceDefinition"
        );
    }

    #[test]
    fn crd_document_carries_the_schema_and_its_kind() {
        let doc = group_version(&registry(), "grokcast.io", "v1alpha1").expect("served");
        let s = &doc["components"]["schemas"]["io.grokcast.v1alpha1.VoiceAgent"];
        assert_eq!(
            s["x-kubernetes-group-version-kind"],
            json!([{"group": "grokcast.io", "version": "v1alpha1", "kind": "VoiceAgent"}])
        );
        assert_eq!(
            s.pointer("/properties/spec/properties/slo/description"),
            Some(&json!("The latency objective."))
        );
        assert_eq!(
            s.pointer("/properties/metadata/allOf/0/$ref"),
            Some(&json!(
                "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
            ))
        );
        // Every reference resolves inside the document.
        let text = doc.to_string();
        for part in text.split("#/components/schemas/").skip(1) {
            let name = part.split('"').next().expect("quoted");
            assert!(
                doc["components"]["schemas"].get(name).is_some(),
                "dangling reference {name}"
            );
        }
        let patch = doc.pointer(
            "/paths/~1apis~1grokcast.io~1v1alpha1~1namespaces~1{namespace}~1voiceagents~1{name}/patch/parameters",
        );
        assert!(
            patch.is_some_and(|p| p.to_string().contains("fieldValidation")),
            "{doc}"
        );
    }

    #[test]
    fn index_lists_every_group_version_with_a_hash_that_follows_content() {
        let mut r = registry();
        let idx = index(&r);
        let url = idx["paths"]["apis/grokcast.io/v1alpha1"]["serverRelativeURL"]
            .as_str()
            .expect("listed")
            .to_string();
        assert!(
            url.starts_with("/openapi/v3/apis/grokcast.io/v1alpha1?hash="),
            "{url}"
        );
        assert!(idx["paths"].get("api/v1").is_some());
        // A changed schema is a new URL, so kubectl's cache refetches it.
        r.register_crd(&json!({
            "metadata": {"name": "voiceagents.grokcast.io"},
            "spec": {"group": "grokcast.io", "names": {"plural": "voiceagents", "kind": "VoiceAgent"},
                "versions": [{"name": "v1alpha1", "served": true, "storage": true,
                    "schema": {"openAPIV3Schema": {"type": "object", "description": "Changed."}}}]}
        }))
        .expect("valid CRD");
        let changed = index(&r)["paths"]["apis/grokcast.io/v1alpha1"]["serverRelativeURL"].clone();
        assert_ne!(changed, json!(url));
        // Builtins have operations but no schemas.
        let core = group_version(&r, "", "v1").expect("core");
        assert_eq!(core["components"]["schemas"], json!({}));
        r.unregister_crd("voiceagents.grokcast.io");
        assert!(
            index(&r)["paths"]
                .get("apis/grokcast.io/v1alpha1")
                .is_none()
        );
        assert!(group_version(&r, "grokcast.io", "v1alpha1").is_none());
    }
}
