//! The non-apply patch formats: JSON merge patch (RFC 7386), strategic merge
//! patch (map-lists merged by key, `$patch: delete`) and JSON patch (RFC 6902).

use serde_json::{Map, Value};

use super::fields::{ListKind, ListTypes, item_key};

/// A patch that cannot be applied.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PatchError {
    /// The JSON patch document is not a list of operations.
    #[error("invalid JSON patch: {0}")]
    Malformed(String),
    /// A JSON patch operation refers to a path that does not exist.
    #[error("the path {0:?} does not exist")]
    MissingPath(String),
    /// A `test` operation failed.
    #[error("testing value {path:?} failed: expected {expected}")]
    TestFailed {
        /// JSON pointer that was tested.
        path: String,
        /// Value the patch expected.
        expected: String,
    },
}

/// RFC 7386: objects merge, `null` deletes, everything else replaces.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(t) = target {
        for (k, v) in p {
            if v.is_null() {
                t.remove(k);
            } else {
                merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

/// Strategic merge patch: like merge patch, but lists that are keyed in the
/// kind's schema merge by key, `$patch: delete` removes an item, and
/// `finalizers` merge as a set; `$setElementOrder`/`$retainKeys` are accepted and ignored.
pub fn strategic_merge_patch(target: &mut Value, patch: &Value, lt: ListTypes<'_>) {
    smp(target, patch, &mut vec![], lt);
}

fn smp(target: &mut Value, patch: &Value, path: &mut Vec<String>, lt: ListTypes<'_>) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if p.get("$patch").and_then(Value::as_str) == Some("replace") {
        let mut clean = p.clone();
        clean.remove("$patch");
        *target = Value::Object(clean);
        return;
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(t) = target else { return };
    for (k, v) in p {
        if k.starts_with('$') {
            continue;
        }
        path.push(k.clone());
        if v.is_null() {
            t.remove(k);
        } else if let (Some(Value::Array(existing)), Value::Array(items)) = (t.get_mut(k), v) {
            let refs: Vec<&str> = path.iter().map(String::as_str).collect();
            match lt.list_kind(&refs) {
                ListKind::Map(keys) => {
                    path.push("[]".into());
                    for item in items {
                        let key = item_key(item, &keys);
                        let delete = item.get("$patch").and_then(Value::as_str) == Some("delete");
                        let pos = existing.iter().position(|x| item_key(x, &keys) == key);
                        match (pos, delete) {
                            (Some(i), true) => {
                                existing.remove(i);
                            }
                            (None, true) => {}
                            (Some(i), false) => smp(&mut existing[i], item, path, lt),
                            (None, false) => existing.push(strip_directives(item)),
                        }
                    }
                    path.pop();
                }
                ListKind::Set => {
                    for item in items {
                        if !existing.contains(item) {
                            existing.push(item.clone());
                        }
                    }
                }
                ListKind::Atomic => *existing = items.clone(),
            }
        } else {
            let slot = t.entry(k.clone()).or_insert(Value::Null);
            if v.is_object() {
                smp(slot, v, path, lt);
            } else {
                *slot = strip_directives(v);
            }
        }
        path.pop();
    }
}

fn strip_directives(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| !k.starts_with('$'))
                .map(|(k, v)| (k.clone(), strip_directives(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(strip_directives).collect()),
        other => other.clone(),
    }
}

fn unescape(seg: &str) -> String {
    seg.replace("~1", "/").replace("~0", "~")
}

fn split_pointer(ptr: &str) -> Result<(String, String), PatchError> {
    let idx = ptr
        .rfind('/')
        .ok_or_else(|| PatchError::Malformed(format!("bad pointer {ptr:?}")))?;
    Ok((ptr[..idx].to_string(), unescape(&ptr[idx + 1..])))
}

fn add(doc: &mut Value, ptr: &str, value: Value) -> Result<(), PatchError> {
    if ptr.is_empty() {
        *doc = value;
        return Ok(());
    }
    let (parent, last) = split_pointer(ptr)?;
    let target = doc
        .pointer_mut(&parent)
        .ok_or_else(|| PatchError::MissingPath(parent.clone()))?;
    match target {
        Value::Object(m) => {
            m.insert(last, value);
        }
        Value::Array(a) => {
            if last == "-" {
                a.push(value);
            } else {
                let i: usize = last
                    .parse()
                    .map_err(|_| PatchError::MissingPath(ptr.to_string()))?;
                if i > a.len() {
                    return Err(PatchError::MissingPath(ptr.to_string()));
                }
                a.insert(i, value);
            }
        }
        _ => return Err(PatchError::MissingPath(ptr.to_string())),
    }
    Ok(())
}

fn remove(doc: &mut Value, ptr: &str) -> Result<Value, PatchError> {
    let (parent, last) = split_pointer(ptr)?;
    let target = doc
        .pointer_mut(&parent)
        .ok_or_else(|| PatchError::MissingPath(parent.clone()))?;
    match target {
        Value::Object(m) => m
            .remove(&last)
            .ok_or_else(|| PatchError::MissingPath(ptr.to_string())),
        Value::Array(a) => {
            let i: usize = last
                .parse()
                .map_err(|_| PatchError::MissingPath(ptr.to_string()))?;
            if i >= a.len() {
                return Err(PatchError::MissingPath(ptr.to_string()));
            }
            Ok(a.remove(i))
        }
        _ => Err(PatchError::MissingPath(ptr.to_string())),
    }
}

/// RFC 6902 JSON patch (`add`, `remove`, `replace`, `move`, `copy`, `test`).
pub fn json_patch(doc: &mut Value, ops: &Value) -> Result<(), PatchError> {
    let ops = ops
        .as_array()
        .ok_or_else(|| PatchError::Malformed("expected a list of operations".into()))?;
    for op in ops {
        let kind = op.get("op").and_then(Value::as_str).unwrap_or_default();
        let path = op
            .get("path")
            .and_then(Value::as_str)
            .ok_or_else(|| PatchError::Malformed("operation without path".into()))?;
        let value = || {
            op.get("value")
                .cloned()
                .ok_or_else(|| PatchError::Malformed(format!("{kind} without value")))
        };
        let from = || {
            op.get("from")
                .and_then(Value::as_str)
                .ok_or_else(|| PatchError::Malformed(format!("{kind} without from")))
        };
        match kind {
            "add" => add(doc, path, value()?)?,
            "remove" => {
                remove(doc, path)?;
            }
            "replace" => {
                let v = value()?;
                let slot = doc
                    .pointer_mut(path)
                    .ok_or_else(|| PatchError::MissingPath(path.to_string()))?;
                *slot = v;
            }
            "move" => {
                let v = remove(doc, from()?)?;
                add(doc, path, v)?;
            }
            "copy" => {
                let f = from()?;
                let v = doc
                    .pointer(f)
                    .cloned()
                    .ok_or_else(|| PatchError::MissingPath(f.to_string()))?;
                add(doc, path, v)?;
            }
            "test" => {
                let expected = value()?;
                if doc.pointer(path) != Some(&expected) {
                    return Err(PatchError::TestFailed {
                        path: path.to_string(),
                        expected: expected.to_string(),
                    });
                }
            }
            other => return Err(PatchError::Malformed(format!("unknown op {other:?}"))),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control_plane::resources::Registry;
    use serde_json::json;

    #[test]
    fn merge_patch_deletes_nulls_and_replaces_lists() {
        let mut doc = json!({"a": {"b": 1, "c": 2}, "l": [1, 2]});
        merge_patch(&mut doc, &json!({"a": {"b": null, "d": 4}, "l": [3]}));
        assert_eq!(doc, json!({"a": {"c": 2, "d": 4}, "l": [3]}));
    }

    #[test]
    fn strategic_patch_merges_containers_by_name_and_deletes_on_request() {
        let reg = Registry::with_builtins();
        let info = reg.get("apps", "v1", "deployments").expect("builtin");
        let mut doc = json!({"spec": {"template": {"spec": {"containers": [{"name": "a", "image": "1"}, {"name": "b", "image": "1"}]}}}});
        let patch = json!({"spec": {"template": {"spec": {"containers": [{"name": "a", "image": "2"}, {"name": "b", "$patch": "delete"}, {"name": "c", "image": "3"}]}}}});
        strategic_merge_patch(&mut doc, &patch, ListTypes::of(&info));
        assert_eq!(
            doc["spec"]["template"]["spec"]["containers"],
            json!([{"name": "a", "image": "2"}, {"name": "c", "image": "3"}])
        );
    }

    #[test]
    fn json_patch_applies_in_order_and_fails_on_a_failed_test() {
        let mut doc = json!({"metadata": {"finalizers": ["a", "b"]}});
        json_patch(
            &mut doc,
            &json!([
                {"op": "test", "path": "/metadata/finalizers/0", "value": "a"},
                {"op": "remove", "path": "/metadata/finalizers/0"},
                {"op": "add", "path": "/metadata/finalizers/-", "value": "c"}
            ]),
        )
        .expect("applies");
        assert_eq!(doc["metadata"]["finalizers"], json!(["b", "c"]));
        let before = doc.clone();
        let err = json_patch(
            &mut doc,
            &json!([{"op": "test", "path": "/metadata/finalizers/0", "value": "z"}]),
        )
        .expect_err("test fails");
        assert!(err.to_string().contains("testing value"));
        assert_eq!(doc, before);
        assert!(json_patch(&mut doc, &json!([{"op": "remove", "path": "/nope/x"}])).is_err());
    }
}
