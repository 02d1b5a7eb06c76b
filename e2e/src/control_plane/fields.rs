//! Field ownership: the `managedFields` sets (FieldsV1), how lists are merged
//! (atomic, set, or map keyed by fields), and server-side apply.

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};

use super::resources::ResourceInfo;

/// How a list merges: replaced whole, as a set of scalars, or keyed by fields.
#[derive(Debug, Clone, PartialEq)]
pub enum ListKind {
    /// Replaced as a whole (`x-kubernetes-list-type: atomic`, the default).
    Atomic,
    /// A set of scalars (`x-kubernetes-list-type: set`).
    Set,
    /// Items keyed by these fields (`x-kubernetes-list-type: map`).
    Map(Vec<String>),
}

/// One step of a field path.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum PathElement {
    /// A named field of an object.
    Field(String),
    /// An item of a map-list, by its key fields rendered as sorted JSON.
    Key(String),
    /// An item of a set-list, by its value rendered as JSON.
    Value(String),
}

/// A field path from the object's root.
pub type FieldPath = Vec<PathElement>;

/// A set of owned field paths.
pub type FieldSet = BTreeSet<FieldPath>;

/// Answers how each list of a kind merges: from the CRD schema for custom
/// resources, from the upstream OpenAPI markers for the built-in kinds.
#[derive(Debug, Clone, Copy)]
pub struct ListTypes<'a> {
    schema: Option<&'a Value>,
}

impl<'a> ListTypes<'a> {
    /// List types of `info`'s kind.
    pub fn of(info: &'a ResourceInfo) -> Self {
        Self {
            schema: info.schema.as_deref(),
        }
    }

    /// How the list at `path` (field names; `[]` stands for a list item) merges.
    pub fn list_kind(&self, path: &[&str]) -> ListKind {
        if path.first() == Some(&"metadata") {
            return match path.get(1..) {
                Some(["finalizers"]) => ListKind::Set,
                Some(["ownerReferences"]) => ListKind::Map(vec!["uid".into()]),
                _ => ListKind::Atomic,
            };
        }
        if let Some(schema) = self.schema {
            return schema_list_kind(schema, path);
        }
        builtin_list_kind(path)
    }
}

fn schema_node<'s>(schema: &'s Value, path: &[&str]) -> Option<&'s Value> {
    let mut node = schema;
    for seg in path {
        node = if *seg == "[]" {
            node.get("items")?
        } else if let Some(p) = node.get("properties").and_then(|p| p.get(*seg)) {
            p
        } else {
            node.get("additionalProperties").filter(|a| a.is_object())?
        };
    }
    Some(node)
}

fn schema_list_kind(schema: &Value, path: &[&str]) -> ListKind {
    let Some(node) = schema_node(schema, path) else {
        return ListKind::Atomic;
    };
    match node.get("x-kubernetes-list-type").and_then(Value::as_str) {
        Some("set") => ListKind::Set,
        Some("map") => ListKind::Map(
            node.get("x-kubernetes-list-map-keys")
                .and_then(Value::as_array)
                .map(|keys| {
                    keys.iter()
                        .filter_map(|k| k.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default(),
        ),
        _ => ListKind::Atomic,
    }
}

/// The list markers of the built-in kinds that clients rely on, from the
/// upstream OpenAPI (`x-kubernetes-list-type`/`patchMergeKey`).
fn builtin_list_kind(path: &[&str]) -> ListKind {
    let Some(last) = path.last() else {
        return ListKind::Atomic;
    };
    let in_container = path
        .iter()
        .any(|s| matches!(*s, "containers" | "initContainers" | "ephemeralContainers"));
    let keys: &[&str] = match *last {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "volumes"
        | "imagePullSecrets" => &["name"],
        "env" if in_container => &["name"],
        "volumeMounts" => &["mountPath"],
        "volumeDevices" => &["devicePath"],
        "ports" if in_container => &["containerPort", "protocol"],
        "ports" if path.first() == Some(&"spec") => &["port", "protocol"],
        "conditions" => &["type"],
        "topologySpreadConstraints" => &["topologyKey", "whenUnsatisfiable"],
        "hostAliases" => &["ip"],
        "resourceClaims" => &["name"],
        _ => return ListKind::Atomic,
    };
    ListKind::Map(keys.iter().map(|k| k.to_string()).collect())
}

/// The key of a map-list item: its key fields as sorted JSON. A missing
/// `protocol` key reads as `TCP`, the value the real server defaults it to.
pub fn item_key(item: &Value, keys: &[String]) -> String {
    let mut m = Map::new();
    for k in keys {
        match item.get(k) {
            Some(v) => {
                m.insert(k.clone(), v.clone());
            }
            None if k == "protocol" => {
                m.insert(k.clone(), json!("TCP"));
            }
            None => {}
        }
    }
    Value::Object(m).to_string()
}

fn names(path: &[PathElement]) -> Vec<&str> {
    path.iter()
        .map(|p| match p {
            PathElement::Field(f) => f.as_str(),
            _ => "[]",
        })
        .collect()
}

/// Every leaf path of `value` (and every map/set item) under `prefix`.
pub fn collect(value: &Value, prefix: &mut FieldPath, lt: ListTypes<'_>, out: &mut FieldSet) {
    match value {
        Value::Object(m) if !m.is_empty() => {
            for (k, v) in m {
                prefix.push(PathElement::Field(k.clone()));
                collect(v, prefix, lt, out);
                prefix.pop();
            }
        }
        Value::Array(items) if !items.is_empty() => match lt.list_kind(&names(prefix)) {
            ListKind::Atomic => {
                out.insert(prefix.clone());
            }
            ListKind::Set => {
                for item in items {
                    let mut p = prefix.clone();
                    p.push(PathElement::Value(item.to_string()));
                    out.insert(p);
                }
            }
            ListKind::Map(keys) => {
                for item in items {
                    prefix.push(PathElement::Key(item_key(item, &keys)));
                    out.insert(prefix.clone());
                    if let Value::Object(m) = item {
                        for (k, v) in m {
                            prefix.push(PathElement::Field(k.clone()));
                            collect(v, prefix, lt, out);
                            prefix.pop();
                        }
                    }
                    prefix.pop();
                }
            }
        },
        _ => {
            out.insert(prefix.clone());
        }
    }
}

/// Fields of an object a writer can own: everything but identity and
/// server-maintained metadata; `status` is owned through `/status` only when the
/// kind has that subresource, and only `status` is owned through it.
pub fn owned_fields(obj: &Value, lt: ListTypes<'_>, scope: Scope) -> FieldSet {
    let mut out = FieldSet::new();
    let Some(m) = obj.as_object() else {
        return out;
    };
    for (k, v) in m {
        let include = match scope {
            Scope::Main => !matches!(k.as_str(), "apiVersion" | "kind" | "status"),
            Scope::MainWithStatus => !matches!(k.as_str(), "apiVersion" | "kind"),
            Scope::Status => k == "status",
        };
        if !include {
            continue;
        }
        if k == "metadata" {
            if let Some(md) = v.as_object() {
                for (mk, mv) in md {
                    if matches!(
                        mk.as_str(),
                        "labels" | "annotations" | "finalizers" | "ownerReferences"
                    ) {
                        let mut p = vec![
                            PathElement::Field("metadata".into()),
                            PathElement::Field(mk.clone()),
                        ];
                        collect(mv, &mut p, lt, &mut out);
                    }
                }
            }
            continue;
        }
        let mut p = vec![PathElement::Field(k.clone())];
        collect(v, &mut p, lt, &mut out);
    }
    out
}

/// Which part of an object a request writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// The main endpoint of a kind with a status subresource: status is not written.
    Main,
    /// The main endpoint of a kind without a status subresource.
    MainWithStatus,
    /// The `/status` subresource.
    Status,
}

/// The value at `path`, if present.
pub fn value_at<'v>(obj: &'v Value, path: &[PathElement], lt: ListTypes<'_>) -> Option<&'v Value> {
    let mut cur = obj;
    for (i, el) in path.iter().enumerate() {
        cur = match el {
            PathElement::Field(f) => cur.get(f)?,
            PathElement::Key(k) => {
                let ListKind::Map(keys) = lt.list_kind(&names(&path[..i])) else {
                    return None;
                };
                cur.as_array()?
                    .iter()
                    .find(|it| item_key(it, &keys) == *k)?
            }
            PathElement::Value(v) => cur.as_array()?.iter().find(|it| it.to_string() == *v)?,
        };
    }
    Some(cur)
}

/// Removes the field or item at `path`; returns whether anything was removed.
pub fn remove_at(obj: &mut Value, path: &[PathElement], lt: ListTypes<'_>) -> bool {
    let Some((last, parent_path)) = path.split_last() else {
        return false;
    };
    let keys = match lt.list_kind(&names(parent_path)) {
        ListKind::Map(keys) => keys,
        _ => vec![],
    };
    let Some(parent) = value_at_mut(obj, parent_path, lt) else {
        return false;
    };
    match last {
        PathElement::Field(f) => parent.as_object_mut().and_then(|m| m.remove(f)).is_some(),
        PathElement::Key(k) => retain_items(parent, |it| item_key(it, &keys) != *k),
        PathElement::Value(v) => {
            let target: Option<Value> = serde_json::from_str(v).ok();
            retain_items(parent, |it| Some(it) != target.as_ref())
        }
    }
}

fn retain_items(list: &mut Value, keep: impl Fn(&Value) -> bool) -> bool {
    let Some(a) = list.as_array_mut() else {
        return false;
    };
    let before = a.len();
    a.retain(|it| keep(it));
    a.len() != before
}

fn value_at_mut<'v>(
    obj: &'v mut Value,
    path: &[PathElement],
    lt: ListTypes<'_>,
) -> Option<&'v mut Value> {
    let mut cur = obj;
    for (i, el) in path.iter().enumerate() {
        cur = match el {
            PathElement::Field(f) => cur.get_mut(f)?,
            PathElement::Key(k) => {
                let ListKind::Map(keys) = lt.list_kind(&names(&path[..i])) else {
                    return None;
                };
                cur.as_array_mut()?
                    .iter_mut()
                    .find(|it| item_key(it, &keys) == *k)?
            }
            PathElement::Value(v) => cur
                .as_array_mut()?
                .iter_mut()
                .find(|it| it.to_string() == *v)?,
        };
    }
    Some(cur)
}

/// Merges an applied configuration into a live object: maps recursively,
/// map-lists by key, set-lists by union, everything else replaced.
pub fn merge_applied(live: &mut Value, applied: &Value, path: &mut Vec<String>, lt: ListTypes<'_>) {
    match (live, applied) {
        (Value::Object(l), Value::Object(a)) => {
            for (k, av) in a {
                path.push(k.clone());
                match l.get_mut(k) {
                    Some(lv) if !av.is_null() => merge_applied(lv, av, path, lt),
                    _ => {
                        l.insert(k.clone(), av.clone());
                    }
                }
                path.pop();
            }
        }
        (Value::Array(l), Value::Array(a)) => {
            let refs: Vec<&str> = path.iter().map(String::as_str).collect();
            match lt.list_kind(&refs) {
                ListKind::Atomic => *l = a.clone(),
                ListKind::Set => {
                    for item in a {
                        if !l.contains(item) {
                            l.push(item.clone());
                        }
                    }
                }
                ListKind::Map(keys) => {
                    for item in a {
                        let key = item_key(item, &keys);
                        path.push("[]".into());
                        match l.iter_mut().find(|x| item_key(x, &keys) == key) {
                            Some(existing) => merge_applied(existing, item, path, lt),
                            None => l.push(item.clone()),
                        }
                        path.pop();
                    }
                }
            }
        }
        (l, a) => *l = a.clone(),
    }
}

/// Renders a field set as FieldsV1 JSON (`{"f:spec":{"f:replicas":{}}}`).
pub fn to_fields_v1(set: &FieldSet) -> Value {
    let mut root = Map::new();
    for path in set {
        let mut node = &mut root;
        for (i, el) in path.iter().enumerate() {
            let key = match el {
                PathElement::Field(f) => format!("f:{f}"),
                PathElement::Key(k) => format!("k:{k}"),
                PathElement::Value(v) => format!("v:{v}"),
            };
            let entry = node.entry(key).or_insert_with(|| json!({}));
            let is_last = i + 1 == path.len();
            let Some(m) = entry.as_object_mut() else {
                break;
            };
            if is_last && !matches!(el, PathElement::Field(_)) && !m.is_empty() {
                m.insert(".".into(), json!({}));
            }
            node = m;
        }
    }
    // A list item that is a member and also has children is marked with ".".
    fn mark(set: &FieldSet, prefix: &mut FieldPath, node: &mut Map<String, Value>) {
        for (k, v) in node.iter_mut() {
            let el = if let Some(f) = k.strip_prefix("f:") {
                PathElement::Field(f.to_string())
            } else if let Some(x) = k.strip_prefix("k:") {
                PathElement::Key(x.to_string())
            } else if let Some(x) = k.strip_prefix("v:") {
                PathElement::Value(x.to_string())
            } else {
                continue;
            };
            prefix.push(el);
            if let Some(m) = v.as_object_mut() {
                if !m.is_empty() && set.contains(prefix) {
                    m.insert(".".into(), json!({}));
                }
                mark(set, prefix, m);
            }
            prefix.pop();
        }
    }
    mark(set, &mut vec![], &mut root);
    Value::Object(root)
}

/// Parses FieldsV1 JSON back into a field set.
pub fn from_fields_v1(v: &Value) -> FieldSet {
    fn walk(node: &Map<String, Value>, prefix: &mut FieldPath, out: &mut FieldSet) {
        for (k, child) in node {
            let el = if let Some(f) = k.strip_prefix("f:") {
                PathElement::Field(f.to_string())
            } else if let Some(x) = k.strip_prefix("k:") {
                PathElement::Key(normalize_key(x))
            } else if let Some(x) = k.strip_prefix("v:") {
                PathElement::Value(x.to_string())
            } else {
                continue;
            };
            prefix.push(el);
            match child.as_object() {
                Some(m) if m.keys().any(|k| k != ".") => {
                    if m.contains_key(".") {
                        out.insert(prefix.clone());
                    }
                    walk(m, prefix, out);
                }
                _ => {
                    out.insert(prefix.clone());
                }
            }
            prefix.pop();
        }
    }
    let mut out = FieldSet::new();
    if let Some(m) = v.as_object() {
        walk(m, &mut vec![], &mut out);
    }
    out
}

/// Keys written by other tools may order fields differently; re-serialise sorted.
fn normalize_key(k: &str) -> String {
    serde_json::from_str::<Value>(k)
        .map(|v| v.to_string())
        .unwrap_or_else(|_| k.to_string())
}

/// Renders a path the way conflict messages do (`.spec.containers[name="a"].image`).
pub fn display_path(path: &[PathElement]) -> String {
    let mut s = String::new();
    for el in path {
        match el {
            PathElement::Field(f) => {
                s.push('.');
                s.push_str(f);
            }
            PathElement::Key(k) => {
                let parts: Vec<String> = serde_json::from_str::<Map<String, Value>>(k)
                    .map(|m| m.iter().map(|(k, v)| format!("{k}={v}")).collect())
                    .unwrap_or_default();
                s.push_str(&format!("[{}]", parts.join(",")));
            }
            PathElement::Value(v) => s.push_str(&format!("[={v}]")),
        }
    }
    s
}

/// One `managedFields` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct ManagedEntry {
    /// Field manager name.
    pub manager: String,
    /// `Apply` or `Update`.
    pub operation: String,
    /// apiVersion the manager wrote with.
    pub api_version: String,
    /// When the entry last changed (RFC 3339).
    pub time: String,
    /// `""` for the main resource, `status` for the subresource.
    pub subresource: String,
    /// Owned fields.
    pub fields: FieldSet,
}

/// Reads `metadata.managedFields`.
pub fn read_managed(obj: &Value) -> Vec<ManagedEntry> {
    obj.pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|e| {
                    Some(ManagedEntry {
                        manager: e.get("manager")?.as_str()?.to_string(),
                        operation: e
                            .get("operation")
                            .and_then(Value::as_str)
                            .unwrap_or("Update")
                            .to_string(),
                        api_version: e
                            .get("apiVersion")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_string(),
                        time: e
                            .get("time")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_string(),
                        subresource: e
                            .get("subresource")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_string(),
                        fields: e.get("fieldsV1").map(from_fields_v1).unwrap_or_default(),
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Writes `metadata.managedFields`, dropping entries that own nothing.
pub fn write_managed(obj: &mut Value, entries: &[ManagedEntry]) {
    let list: Vec<Value> = entries
        .iter()
        .filter(|e| !e.fields.is_empty())
        .map(|e| {
            let mut v = json!({
                "manager": e.manager,
                "operation": e.operation,
                "apiVersion": e.api_version,
                "time": e.time,
                "fieldsType": "FieldsV1",
                "fieldsV1": to_fields_v1(&e.fields),
            });
            if !e.subresource.is_empty() {
                v["subresource"] = json!(e.subresource);
            }
            v
        })
        .collect();
    if list.is_empty() && obj.get("metadata").is_none() {
        return;
    }
    if !obj.get("metadata").is_some_and(Value::is_object) {
        obj["metadata"] = json!({});
    }
    if let Some(md) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        if list.is_empty() {
            md.remove("managedFields");
        } else {
            md.insert("managedFields".into(), Value::Array(list));
        }
    }
}

/// What a write did to ownership, for one manager.
#[derive(Debug, Clone)]
pub struct Writer<'a> {
    /// Field manager.
    pub manager: &'a str,
    /// apiVersion of the request.
    pub api_version: &'a str,
    /// `""` or `status`.
    pub subresource: &'a str,
    /// Timestamp for the entry.
    pub now: &'a str,
}

fn prefixes(set: &FieldSet) -> FieldSet {
    let mut out = FieldSet::new();
    for p in set {
        for i in 1..=p.len() {
            out.insert(p[..i].to_vec());
        }
    }
    out
}

fn owns_within(set: &FieldSet, p: &FieldPath) -> bool {
    set.range(p.clone()..)
        .take_while(|q| q.starts_with(p))
        .next()
        .is_some()
}

/// Server-side apply of `applied` over `live` (None when creating). Returns the
/// merged object with updated `managedFields`, or the conflicting
/// `(manager, path)` pairs when `force` is false.
pub fn apply(
    live: Option<&Value>,
    applied: &Value,
    writer: &Writer<'_>,
    force: bool,
    scope: Scope,
    lt: ListTypes<'_>,
) -> Result<Value, Vec<(String, String)>> {
    let mut entries = live.map(read_managed).unwrap_or_default();
    let new_set = owned_fields(applied, lt, scope);
    let mut conflicts = vec![];
    let mut forced: Vec<(usize, FieldPath)> = vec![];
    if let Some(live) = live {
        for p in &new_set {
            let Some(av) = value_at(applied, p, lt) else {
                continue;
            };
            let Some(lv) = value_at(live, p, lt) else {
                continue;
            };
            // Item membership is shared freely; only differing leaf values conflict.
            if matches!(p.last(), Some(PathElement::Key(_) | PathElement::Value(_))) || lv == av {
                continue;
            }
            for (i, e) in entries.iter().enumerate() {
                let same = e.manager == writer.manager
                    && e.operation == "Apply"
                    && e.subresource == writer.subresource;
                if !same && e.fields.contains(p) {
                    if force {
                        forced.push((i, p.clone()));
                    } else {
                        conflicts.push((e.manager.clone(), display_path(p)));
                    }
                }
            }
        }
    }
    if !conflicts.is_empty() {
        conflicts.sort();
        conflicts.dedup();
        return Err(conflicts);
    }
    for (i, p) in forced {
        entries[i].fields.remove(&p);
    }
    let mine = entries.iter().position(|e| {
        e.manager == writer.manager && e.operation == "Apply" && e.subresource == writer.subresource
    });
    let old_set = mine.map(|i| entries[i].fields.clone()).unwrap_or_default();
    let mut result = live.cloned().unwrap_or_else(|| json!({}));
    // Remove what this manager applied before and no longer applies, unless
    // another manager owns it or something beneath it.
    let others: FieldSet = entries
        .iter()
        .enumerate()
        .filter(|(i, _)| Some(*i) != mine)
        .flat_map(|(_, e)| e.fields.iter().cloned())
        .collect();
    let others_prefixes = prefixes(&others);
    let new_prefixes = prefixes(&new_set);
    let mut removals: Vec<FieldPath> = vec![];
    for p in old_set.difference(&new_set) {
        // Climb to the highest ancestor the new configuration no longer mentions.
        let mut top = p.clone();
        while top.len() > 1 {
            let parent = top[..top.len() - 1].to_vec();
            if new_prefixes.contains(&parent)
                || others_prefixes.contains(&parent)
                || others.contains(&parent)
            {
                break;
            }
            // Keep a parent that holds fields nobody ever owned.
            let Some(pv) = value_at(&result, &parent, lt) else {
                break;
            };
            let mut under = FieldSet::new();
            let mut pp = parent.clone();
            collect(pv, &mut pp, lt, &mut under);
            if !under.iter().all(|q| {
                old_set.contains(q)
                    || (q.len() > parent.len() && old_set.iter().any(|o| q.starts_with(o)))
            }) {
                break;
            }
            top = parent;
        }
        if others.contains(&top) || owns_within(&others, &top) {
            continue;
        }
        removals.push(top);
    }
    removals.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in &removals {
        remove_at(&mut result, p, lt);
    }
    let mut merge_src = applied.clone();
    if let Some(m) = merge_src.as_object_mut() {
        match scope {
            Scope::Main => {
                m.remove("status");
            }
            Scope::Status => m.retain(|k, _| k == "status"),
            Scope::MainWithStatus => {}
        }
    }
    merge_applied(&mut result, &merge_src, &mut vec![], lt);
    let entry = ManagedEntry {
        manager: writer.manager.to_string(),
        operation: "Apply".into(),
        api_version: writer.api_version.to_string(),
        time: writer.now.to_string(),
        subresource: writer.subresource.to_string(),
        fields: new_set,
    };
    match mine {
        Some(i) => {
            if entries[i].fields == entry.fields {
                entries[i].api_version = entry.api_version;
            } else {
                entries[i] = entry;
            }
        }
        None => entries.push(entry),
    }
    write_managed(&mut result, &entries);
    Ok(result)
}

/// Records an ordinary write (create, update, patch): `writer` takes every field
/// whose value it changed, from whoever owned it; removed fields lose owners.
pub fn record_update(
    old: Option<&Value>,
    new: &mut Value,
    writer: &Writer<'_>,
    scope: Scope,
    lt: ListTypes<'_>,
) {
    let mut entries = old.map(read_managed).unwrap_or_default();
    let new_set = owned_fields(new, lt, scope);
    let old_set = old.map(|o| owned_fields(o, lt, scope)).unwrap_or_default();
    let changed: FieldSet = new_set
        .iter()
        .filter(|p| match old {
            Some(o) => value_at(o, p, lt) != value_at(new, p, lt),
            None => true,
        })
        .cloned()
        .collect();
    let removed: FieldSet = old_set.difference(&new_set).cloned().collect();
    if changed.is_empty() && removed.is_empty() {
        write_managed(new, &entries);
        return;
    }
    for e in entries.iter_mut() {
        e.fields
            .retain(|p| !changed.contains(p) && !removed.contains(p));
    }
    let pos = entries.iter().position(|e| {
        e.manager == writer.manager
            && e.operation == "Update"
            && e.subresource == writer.subresource
    });
    let i = match pos {
        Some(i) => i,
        None => {
            entries.push(ManagedEntry {
                manager: writer.manager.to_string(),
                operation: "Update".into(),
                api_version: writer.api_version.to_string(),
                time: String::new(),
                subresource: writer.subresource.to_string(),
                fields: FieldSet::new(),
            });
            entries.len() - 1
        }
    };
    entries[i].fields.extend(changed);
    entries[i].time = writer.now.to_string();
    entries[i].api_version = writer.api_version.to_string();
    write_managed(new, &entries);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control_plane::resources::Registry;

    fn w(manager: &str) -> Writer<'_> {
        Writer {
            manager,
            api_version: "apps/v1",
            subresource: "",
            now: "2026-01-01T00:00:00Z",
        }
    }

    #[test]
    fn fields_v1_round_trips_with_list_items() {
        let reg = Registry::with_builtins();
        let info = reg.get("apps", "v1", "deployments").expect("builtin");
        let lt = ListTypes::of(&info);
        let obj = json!({"spec": {"replicas": 2, "template": {"spec": {"containers": [{"name": "a", "image": "x", "ports": [{"containerPort": 80}]}]}}}, "metadata": {"labels": {"app": "a"}, "finalizers": ["f"]}});
        let set = owned_fields(&obj, lt, Scope::Main);
        let v1 = to_fields_v1(&set);
        assert_eq!(
            v1["f:spec"]["f:template"]["f:spec"]["f:containers"]["k:{\"name\":\"a\"}"]["."],
            json!({})
        );
        assert!(v1["f:metadata"]["f:finalizers"].get("v:\"f\"").is_some());
        assert_eq!(from_fields_v1(&v1), set);
    }

    #[test]
    fn apply_removes_fields_the_manager_stopped_sending_but_keeps_others() {
        let reg = Registry::with_builtins();
        let info = reg.get("", "v1", "configmaps").expect("builtin");
        let lt = ListTypes::of(&info);
        let first = json!({"metadata": {"name": "c"}, "data": {"a": "1", "b": "2"}});
        let live = apply(None, &first, &w("op"), false, Scope::MainWithStatus, lt).expect("create");
        let other = json!({"metadata": {"name": "c"}, "data": {"c": "3"}});
        let live = apply(
            Some(&live),
            &other,
            &w("human"),
            false,
            Scope::MainWithStatus,
            lt,
        )
        .expect("second manager");
        let second = json!({"metadata": {"name": "c"}, "data": {"a": "1"}});
        let live = apply(
            Some(&live),
            &second,
            &w("op"),
            false,
            Scope::MainWithStatus,
            lt,
        )
        .expect("reapply");
        assert_eq!(live["data"], json!({"a": "1", "c": "3"}));
    }

    #[test]
    fn apply_conflicts_without_force_and_takes_ownership_with_it() {
        let reg = Registry::with_builtins();
        let info = reg.get("apps", "v1", "deployments").expect("builtin");
        let lt = ListTypes::of(&info);
        let live = apply(
            None,
            &json!({"spec": {"replicas": 1}}),
            &w("op"),
            false,
            Scope::Main,
            lt,
        )
        .expect("create");
        let err = apply(
            Some(&live),
            &json!({"spec": {"replicas": 3}}),
            &w("hpa"),
            false,
            Scope::Main,
            lt,
        )
        .expect_err("conflict");
        assert_eq!(err, vec![("op".to_string(), ".spec.replicas".to_string())]);
        let live = apply(
            Some(&live),
            &json!({"spec": {"replicas": 3}}),
            &w("hpa"),
            true,
            Scope::Main,
            lt,
        )
        .expect("forced");
        assert_eq!(live["spec"]["replicas"], 3);
        let managed = read_managed(&live);
        assert_eq!(managed.len(), 1, "op lost its only field: {managed:?}");
        assert_eq!(managed[0].manager, "hpa");
    }

    #[test]
    fn map_lists_merge_by_key_and_drop_items_no_longer_applied() {
        let reg = Registry::with_builtins();
        let info = reg.get("apps", "v1", "deployments").expect("builtin");
        let lt = ListTypes::of(&info);
        let c = |names: &[&str]| json!({"spec": {"template": {"spec": {"containers": names.iter().map(|n| json!({"name": n, "image": "i"})).collect::<Vec<_>>()}}}});
        let live = apply(None, &c(&["a", "b"]), &w("op"), false, Scope::Main, lt).expect("create");
        let live = apply(Some(&live), &json!({"spec": {"template": {"spec": {"containers": [{"name": "a", "env": [{"name": "X", "value": "1"}]}]}}}}), &w("other"), false, Scope::Main, lt).expect("other");
        let live =
            apply(Some(&live), &c(&["a"]), &w("op"), false, Scope::Main, lt).expect("drop b");
        let containers = &live["spec"]["template"]["spec"]["containers"];
        assert_eq!(containers.as_array().map(Vec::len), Some(1));
        assert_eq!(containers[0]["env"][0]["name"], "X");
        assert_eq!(containers[0]["image"], "i");
    }

    #[test]
    fn dropping_a_whole_sub_object_removes_it() {
        let reg = Registry::with_builtins();
        let info = reg.get("apps", "v1", "deployments").expect("builtin");
        let lt = ListTypes::of(&info);
        let first = json!({"spec": {"replicas": 1, "template": {"spec": {"nodeSelector": {"gpu": "a100"}}}}});
        let live = apply(None, &first, &w("op"), false, Scope::Main, lt).expect("create");
        let live = apply(
            Some(&live),
            &json!({"spec": {"replicas": 1}}),
            &w("op"),
            false,
            Scope::Main,
            lt,
        )
        .expect("reapply");
        assert_eq!(live["spec"], json!({"replicas": 1}));
    }

    #[test]
    fn updates_take_ownership_of_changed_fields() {
        let reg = Registry::with_builtins();
        let info = reg.get("", "v1", "configmaps").expect("builtin");
        let lt = ListTypes::of(&info);
        let live = apply(
            None,
            &json!({"data": {"a": "1"}}),
            &w("op"),
            false,
            Scope::MainWithStatus,
            lt,
        )
        .expect("create");
        let mut new = live.clone();
        new["data"]["a"] = json!("2");
        record_update(
            Some(&live),
            &mut new,
            &w("editor"),
            Scope::MainWithStatus,
            lt,
        );
        let m = read_managed(&new);
        assert_eq!(m.len(), 1);
        assert_eq!(
            (m[0].manager.as_str(), m[0].operation.as_str()),
            ("editor", "Update")
        );
    }
}
