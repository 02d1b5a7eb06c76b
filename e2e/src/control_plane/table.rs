//! Server-side printing: the `meta.k8s.io/v1` Table kubectl asks for with
//! `Accept: application/json;as=Table;v=v1;g=meta.k8s.io`. Custom resources get
//! the columns of their CRD version's `additionalPrinterColumns`; the built-in
//! kinds a GrokCast user looks at get the real server's columns; everything
//! else gets the real server's default (Name, Created At).

use serde_json::{Value, json};

use super::clock;
use super::resources::{PrinterColumn, ResourceInfo};

/// `includeObject`: what each row carries besides its cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IncludeObject {
    /// No object.
    None,
    /// The object's metadata as a `PartialObjectMetadata` (the server's default).
    #[default]
    Metadata,
    /// The whole object.
    Object,
}

impl IncludeObject {
    /// Parses the `includeObject` query parameter; `None` means the default.
    pub fn parse(param: Option<&str>) -> Result<Self, String> {
        match param {
            None | Some("") | Some("Metadata") => Ok(Self::Metadata),
            Some("None") => Ok(Self::None),
            Some("Object") => Ok(Self::Object),
            Some(other) => Err(format!(
                "includeObject: Unsupported value: {other:?}: supported values: \"Metadata\", \"None\", \"Object\""
            )),
        }
    }
}

/// How a built-in column computes its cell from an object.
type CellFn = fn(&Value) -> Value;

/// A column of a built-in kind's table.
struct BuiltinColumn {
    name: &'static str,
    type_: &'static str,
    priority: i64,
    cell: CellFn,
}

const fn col(name: &'static str, type_: &'static str, cell: CellFn) -> BuiltinColumn {
    BuiltinColumn {
        name,
        type_,
        priority: 0,
        cell,
    }
}

const fn wide(name: &'static str, type_: &'static str, cell: CellFn) -> BuiltinColumn {
    BuiltinColumn {
        name,
        type_,
        priority: 1,
        cell,
    }
}

fn at<'v>(obj: &'v Value, pointer: &str) -> Option<&'v Value> {
    obj.pointer(pointer).filter(|v| !v.is_null())
}

fn str_or(obj: &Value, pointer: &str, missing: &str) -> Value {
    json!(at(obj, pointer).and_then(Value::as_str).unwrap_or(missing))
}

fn int_at(obj: &Value, pointer: &str) -> i64 {
    at(obj, pointer).and_then(Value::as_i64).unwrap_or(0)
}

fn count_keys(obj: &Value, pointers: &[&str]) -> Value {
    let n: usize = pointers
        .iter()
        .filter_map(|p| at(obj, p).and_then(Value::as_object))
        .map(|m| m.len())
        .sum();
    json!(n)
}

/// Age of a timestamp the way the server renders it ("5s", "3m2s", "4d").
fn age_of(ts: Option<&str>) -> Value {
    json!(match ts.and_then(clock::parse_rfc3339) {
        Some(t) => clock::age(clock::unix_now() - t),
        None => "<unknown>".to_string(),
    })
}

fn age(obj: &Value) -> Value {
    age_of(at(obj, "/metadata/creationTimestamp").and_then(Value::as_str))
}

fn created_at(obj: &Value) -> Value {
    json!(
        at(obj, "/metadata/creationTimestamp")
            .and_then(Value::as_str)
            .unwrap_or_default()
    )
}

fn deployment_ready(obj: &Value) -> Value {
    json!(format!(
        "{}/{}",
        int_at(obj, "/status/readyReplicas"),
        at(obj, "/spec/replicas")
            .and_then(Value::as_i64)
            .unwrap_or(1)
    ))
}

fn service_ports(obj: &Value) -> Value {
    let ports: Vec<String> = at(obj, "/spec/ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|p| {
            format!(
                "{}/{}",
                p.get("port").and_then(Value::as_i64).unwrap_or(0),
                p.get("protocol").and_then(Value::as_str).unwrap_or("TCP")
            )
        })
        .collect();
    json!(if ports.is_empty() {
        "<none>".to_string()
    } else {
        ports.join(",")
    })
}

fn containers_field(obj: &Value, field: &str) -> Value {
    let names: Vec<&str> = at(obj, "/spec/template/spec/containers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| c.get(field).and_then(Value::as_str))
        .collect();
    json!(names.join(","))
}

/// A label map as `k=v,k2=v2`, `<none>` when empty or absent (Selector columns).
fn label_map(obj: &Value, pointer: &str) -> Value {
    let labels: Vec<String> = at(obj, pointer)
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
        .collect();
    json!(if labels.is_empty() {
        "<none>".to_string()
    } else {
        labels.join(",")
    })
}

fn job_status(obj: &Value) -> Value {
    let has = |t: &str| {
        at(obj, "/status/conditions")
            .and_then(Value::as_array)
            .is_some_and(|cs| {
                cs.iter().any(|c| {
                    c.get("type").and_then(Value::as_str) == Some(t)
                        && c.get("status").and_then(Value::as_str) == Some("True")
                })
            })
    };
    json!(if has("Complete") {
        "Complete"
    } else if has("Failed") {
        "Failed"
    } else {
        "Running"
    })
}

fn job_completions(obj: &Value) -> Value {
    json!(format!(
        "{}/{}",
        int_at(obj, "/status/succeeded"),
        at(obj, "/spec/completions")
            .and_then(Value::as_i64)
            .unwrap_or(1)
    ))
}

fn pdb_bound(obj: &Value, field: &str) -> Value {
    match at(obj, &format!("/spec/{field}")) {
        Some(Value::String(s)) => json!(s),
        Some(Value::Number(n)) => json!(n.to_string()),
        _ => json!("N/A"),
    }
}

/// The object an Event is about, read from either API's field names: stored
/// Events are core/v1, `events.k8s.io/v1` presents `regarding` instead.
fn event_regarding(obj: &Value) -> Option<&Value> {
    at(obj, "/involvedObject").or_else(|| at(obj, "/regarding"))
}

fn event_last_seen(obj: &Value) -> Value {
    let ts = [
        "/series/lastObservedTime",
        "/lastTimestamp",
        "/deprecatedLastTimestamp",
        "/eventTime",
        "/metadata/creationTimestamp",
    ]
    .iter()
    .find_map(|p| at(obj, p).and_then(Value::as_str));
    age_of(ts)
}

fn event_object(obj: &Value) -> Value {
    let r = event_regarding(obj);
    let field = |f: &str| {
        r.and_then(|r| r.get(f))
            .and_then(Value::as_str)
            .unwrap_or_default()
    };
    json!(format!(
        "{}/{}",
        field("kind").to_ascii_lowercase(),
        field("name")
    ))
}

fn event_message(obj: &Value) -> Value {
    json!(
        at(obj, "/message")
            .or_else(|| at(obj, "/note"))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .trim()
    )
}

/// The columns the real server prints for a built-in kind, or `None` for the
/// generic Name/Created At table. The name column comes first unless the list
/// has a column named Name (Events).
fn builtin_columns(info: &ResourceInfo) -> Option<Vec<BuiltinColumn>> {
    Some(match (info.group.as_str(), info.plural.as_str()) {
        ("", "namespaces") => vec![
            col("Status", "string", |o| str_or(o, "/status/phase", "")),
            col("Age", "string", age),
        ],
        ("", "configmaps") => vec![
            col("Data", "integer", |o| {
                count_keys(o, &["/data", "/binaryData"])
            }),
            col("Age", "string", age),
        ],
        ("", "secrets") => vec![
            col("Type", "string", |o| str_or(o, "/type", "Opaque")),
            col("Data", "integer", |o| {
                count_keys(o, &["/data", "/stringData"])
            }),
            col("Age", "string", age),
        ],
        ("", "services") => vec![
            col("Type", "string", |o| str_or(o, "/spec/type", "ClusterIP")),
            col("Cluster-IP", "string", |o| {
                str_or(o, "/spec/clusterIP", "<none>")
            }),
            col("External-IP", "string", |_| json!("<none>")),
            col("Port(s)", "string", service_ports),
            col("Age", "string", age),
            wide("Selector", "string", |o| label_map(o, "/spec/selector")),
        ],
        ("", "events") | ("events.k8s.io", "events") => vec![
            col("Last Seen", "string", event_last_seen),
            col("Type", "string", |o| str_or(o, "/type", "")),
            col("Reason", "string", |o| str_or(o, "/reason", "")),
            col("Object", "string", event_object),
            col("Message", "string", event_message),
            // The real server puts an Event's name last, shown only with `-o wide`.
            wide("Name", "string", |o| {
                json!(o.pointer("/metadata/name").cloned().unwrap_or(json!("")))
            }),
        ],
        ("", "persistentvolumeclaims") => vec![
            col("Status", "string", |o| {
                str_or(o, "/status/phase", "Pending")
            }),
            col("Volume", "string", |o| str_or(o, "/spec/volumeName", "")),
            col("Capacity", "string", |o| {
                str_or(o, "/status/capacity/storage", "")
            }),
            col("Access Modes", "string", |o| {
                let modes: Vec<&str> = at(o, "/status/accessModes")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .map(|m| match m {
                        "ReadWriteOnce" => "RWO",
                        "ReadOnlyMany" => "ROX",
                        "ReadWriteMany" => "RWX",
                        "ReadWriteOncePod" => "RWOP",
                        other => other,
                    })
                    .collect();
                json!(modes.join(","))
            }),
            col("StorageClass", "string", |o| {
                str_or(o, "/spec/storageClassName", "<unset>")
            }),
            col("VolumeAttributesClass", "string", |o| {
                str_or(o, "/spec/volumeAttributesClassName", "<unset>")
            }),
            col("Age", "string", age),
        ],
        ("apps", "deployments") => vec![
            col("Ready", "string", deployment_ready),
            col("Up-to-date", "integer", |o| {
                json!(int_at(o, "/status/updatedReplicas"))
            }),
            col("Available", "integer", |o| {
                json!(int_at(o, "/status/availableReplicas"))
            }),
            col("Age", "string", age),
            wide("Containers", "string", |o| containers_field(o, "name")),
            wide("Images", "string", |o| containers_field(o, "image")),
            wide("Selector", "string", |o| {
                label_map(o, "/spec/selector/matchLabels")
            }),
        ],
        ("apps", "statefulsets") => vec![
            col("Ready", "string", deployment_ready),
            col("Age", "string", age),
        ],
        ("batch", "jobs") => vec![
            col("Status", "string", job_status),
            col("Completions", "string", job_completions),
            col("Age", "string", age),
        ],
        ("policy", "poddisruptionbudgets") => vec![
            col("Min Available", "string", |o| pdb_bound(o, "minAvailable")),
            col("Max Unavailable", "string", |o| {
                pdb_bound(o, "maxUnavailable")
            }),
            col("Allowed Disruptions", "integer", |o| {
                json!(int_at(o, "/status/disruptionsAllowed"))
            }),
            col("Age", "string", age),
        ],
        _ => return None,
    })
}

/// Evaluates the JSONPath subset printer columns use: `.a.b`, `.a[0].b` and
/// `.a[?(@.type=="Ready")].status`. `None` when nothing matches.
pub fn json_path(obj: &Value, path: &str) -> Option<Value> {
    let mut cur = obj.clone();
    let mut rest = path
        .trim()
        .trim_start_matches('{')
        .trim_end_matches('}')
        .trim_start_matches('.');
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('[') {
            let end = r.find(']')?;
            let inner = &r[..end];
            rest = r[end + 1..].trim_start_matches('.');
            if let Ok(i) = inner.parse::<usize>() {
                cur = cur.get(i)?.clone();
            } else if let Some(f) = inner.strip_prefix("?(@.").and_then(|x| x.strip_suffix(')')) {
                let (field, want) = f.split_once("==")?;
                let want = want.trim().trim_matches('"').trim_matches('\'');
                cur = cur
                    .as_array()?
                    .iter()
                    .find(|it| it.get(field.trim()).and_then(Value::as_str) == Some(want))?
                    .clone();
            } else {
                return None;
            }
            continue;
        }
        let end = rest.find(['.', '[']).unwrap_or(rest.len());
        cur = cur.get(&rest[..end])?.clone();
        rest = rest[end..].trim_start_matches('.');
    }
    Some(cur).filter(|v| !v.is_null())
}

/// A custom column's cell, typed by the column like the real server does: a
/// value of another type than the column's is left empty (`null`, which kubectl
/// prints as an empty cell), and a date becomes an age.
pub fn cell(v: Option<Value>, type_: &str) -> Value {
    let Some(v) = v else { return Value::Null };
    match type_ {
        "integer" => match &v {
            Value::Number(n) => n
                .as_i64()
                .or_else(|| n.as_f64().map(|f| f as i64))
                .map_or(Value::Null, |i| json!(i)),
            _ => Value::Null,
        },
        "number" => v.as_f64().map_or(Value::Null, |f| json!(f)),
        "boolean" => v.as_bool().map_or(Value::Null, |b| json!(b)),
        "string" => v.as_str().map_or(Value::Null, |s| json!(s)),
        "date" => match v.as_str() {
            Some(s) => match clock::parse_rfc3339(s) {
                Some(t) => json!(clock::age(clock::unix_now() - t)),
                None => json!("<invalid>"),
            },
            None => Value::Null,
        },
        _ => Value::Null,
    }
}

/// The columns of a CRD version: its `additionalPrinterColumns`, or Age when it
/// declares none (the real server's default for custom resources).
fn crd_columns(info: &ResourceInfo) -> Vec<PrinterColumn> {
    if !info.printer_columns.is_empty() {
        return info.printer_columns.clone();
    }
    vec![PrinterColumn {
        name: "Age".into(),
        type_: "date".into(),
        json_path: ".metadata.creationTimestamp".into(),
        priority: 0,
        description: String::new(),
        format: String::new(),
    }]
}

fn column_def(name: &str, type_: &str, format: &str, description: &str, priority: i64) -> Value {
    json!({"name": name, "type": type_, "format": format, "description": description, "priority": priority})
}

/// Builds the Table for a list response (a single object is a one-item list).
pub fn table(info: &ResourceInfo, list: &Value, include: IncludeObject) -> Value {
    let builtin = (!info.custom).then(|| builtin_columns(info)).flatten();
    let name_first = !builtin
        .as_ref()
        .is_some_and(|b| b.iter().any(|c| c.name == "Name"));
    let mut cols = vec![];
    if name_first {
        cols.push(column_def(
            "Name",
            "string",
            "name",
            "Name must be unique within a namespace; it identifies the object in URLs.",
            0,
        ));
    }
    type RowFn<'a> = Box<dyn Fn(&Value) -> Vec<Value> + 'a>;
    let cells: RowFn = if info.custom {
        let custom = crd_columns(info);
        for c in &custom {
            cols.push(column_def(
                &c.name,
                &c.type_,
                &c.format,
                &c.description,
                c.priority,
            ));
        }
        Box::new(move |obj| {
            custom
                .iter()
                .map(|c| cell(json_path(obj, &c.json_path), &c.type_))
                .collect()
        })
    } else if let Some(builtin) = builtin {
        for c in &builtin {
            cols.push(column_def(c.name, c.type_, "", "", c.priority));
        }
        Box::new(move |obj| builtin.iter().map(|c| (c.cell)(obj)).collect())
    } else {
        cols.push(column_def(
            "Created At",
            "date",
            "",
            "When the object was created.",
            0,
        ));
        Box::new(|obj| vec![created_at(obj)])
    };
    let rows: Vec<Value> = list
        .get("items")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|obj| {
            let mut row_cells = vec![];
            if name_first {
                row_cells.push(obj.pointer("/metadata/name").cloned().unwrap_or(json!("")));
            }
            row_cells.extend(cells(obj));
            let mut row = json!({ "cells": row_cells });
            match include {
                IncludeObject::None => {}
                IncludeObject::Metadata => {
                    row["object"] = json!({
                        "kind": "PartialObjectMetadata",
                        "apiVersion": "meta.k8s.io/v1",
                        "metadata": obj.get("metadata").cloned().unwrap_or(json!({})),
                    });
                }
                IncludeObject::Object => row["object"] = obj.clone(),
            }
            row
        })
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": list.get("metadata").cloned().unwrap_or(json!({})),
        "columnDefinitions": cols,
        "rows": rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control_plane::resources::Registry;

    #[test]
    fn printer_column_paths() {
        let obj = json!({"status": {"replicas": 2, "conditions": [{"type": "Ready", "status": "True"}, {"type": "X", "status": "False"}]}, "spec": {"l": [{"a": 1}]}});
        assert_eq!(json_path(&obj, ".status.replicas"), Some(json!(2)));
        assert_eq!(
            json_path(&obj, ".status.conditions[?(@.type==\"Ready\")].status"),
            Some(json!("True"))
        );
        assert_eq!(json_path(&obj, ".spec.l[0].a"), Some(json!(1)));
        assert_eq!(json_path(&obj, ".status.missing"), None);
    }

    /// A timestamp whose age reads the same for hours, so assertions cannot race the clock.
    fn three_days_ago() -> String {
        clock::rfc3339(clock::unix_now() - 3 * 86_400 - 600)
    }

    #[test]
    fn cells_follow_the_column_type() {
        assert_eq!(cell(Some(json!(3)), "integer"), json!(3));
        assert_eq!(cell(Some(json!(3.0)), "integer"), json!(3));
        assert_eq!(cell(Some(json!(412.5)), "number"), json!(412.5));
        assert_eq!(cell(Some(json!("x")), "integer"), Value::Null);
        assert_eq!(cell(Some(json!(1)), "string"), Value::Null);
        assert_eq!(cell(None, "string"), Value::Null);
        assert_eq!(cell(Some(json!("nope")), "date"), json!("<invalid>"));
        assert_eq!(cell(Some(json!(three_days_ago())), "date"), json!("3d"));
    }

    fn widget_registry(columns: Value) -> Registry {
        let mut r = Registry::with_builtins();
        r.register_crd(&json!({
            "metadata": {"name": "widgets.example.com"},
            "spec": {
                "group": "example.com",
                "names": {"plural": "widgets", "kind": "Widget"},
                "scope": "Namespaced",
                "versions": [{"name": "v1", "served": true, "storage": true, "additionalPrinterColumns": columns}]
            }
        }))
        .expect("valid CRD");
        r
    }

    fn widget_list() -> Value {
        json!({"metadata": {"resourceVersion": "7"}, "items": [{
            "metadata": {"name": "w1", "namespace": "demo", "uid": "u1", "creationTimestamp": three_days_ago()},
            "spec": {"slo": {"ms": 800}},
            "status": {"conditions": [{"type": "Ready", "status": "True"}], "p95": 412.5}
        }]})
    }

    #[test]
    fn crd_table_has_name_then_printer_columns_and_metadata_rows() {
        let r = widget_registry(json!([
            {"name": "READY", "type": "string", "jsonPath": ".status.conditions[?(@.type==\"Ready\")].status"},
            {"name": "P95", "type": "number", "jsonPath": ".status.p95", "description": "observed"},
            {"name": "SLO", "type": "integer", "jsonPath": ".spec.slo.ms"},
            {"name": "CALLS", "type": "integer", "jsonPath": ".status.activeCalls", "priority": 1},
            {"name": "AGE", "type": "date", "jsonPath": ".metadata.creationTimestamp"}
        ]));
        let info = r.get("example.com", "v1", "widgets").expect("served");
        let t = table(&info, &widget_list(), IncludeObject::Metadata);
        let names: Vec<&str> = t["columnDefinitions"]
            .as_array()
            .expect("columns")
            .iter()
            .filter_map(|c| c["name"].as_str())
            .collect();
        assert_eq!(names, ["Name", "READY", "P95", "SLO", "CALLS", "AGE"]);
        assert_eq!(t["columnDefinitions"][2]["description"], "observed");
        assert_eq!(t["columnDefinitions"][4]["priority"], 1);
        assert_eq!(
            t["rows"][0]["cells"],
            json!(["w1", "True", 412.5, 800, null, "3d"])
        );
        assert_eq!(t["rows"][0]["object"]["kind"], "PartialObjectMetadata");
        assert_eq!(t["rows"][0]["object"]["metadata"]["uid"], "u1");
        assert!(t["rows"][0]["object"].get("spec").is_none());
        assert_eq!(t["metadata"]["resourceVersion"], "7");

        let bare = table(&info, &widget_list(), IncludeObject::None);
        assert!(bare["rows"][0].get("object").is_none());
        let full = table(&info, &widget_list(), IncludeObject::Object);
        assert_eq!(full["rows"][0]["object"]["spec"]["slo"]["ms"], 800);
    }

    #[test]
    fn crd_without_columns_gets_age() {
        let r = widget_registry(json!([]));
        let info = r.get("example.com", "v1", "widgets").expect("served");
        let t = table(&info, &widget_list(), IncludeObject::default());
        assert_eq!(t["columnDefinitions"][1]["name"], "Age");
        assert_eq!(t["rows"][0]["cells"], json!(["w1", "3d"]));
    }

    #[test]
    fn builtin_kinds_get_the_real_servers_columns() {
        let r = Registry::with_builtins();
        let deploy = r.get("apps", "v1", "deployments").expect("deployments");
        let list = json!({"items": [{"metadata": {"name": "d"}, "spec": {"replicas": 2}, "status": {"readyReplicas": 1, "updatedReplicas": 2, "availableReplicas": 1}}]});
        let t = table(&deploy, &list, IncludeObject::None);
        assert_eq!(
            t["rows"][0]["cells"],
            json!(["d", "1/2", 2, 1, "<unknown>", "", "", "<none>"])
        );

        let events = r.get("", "v1", "events").expect("events");
        let ev = json!({"items": [{"metadata": {"name": "e"}, "type": "Warning", "reason": "ModelPoolNotFound",
            "involvedObject": {"kind": "VoiceAgent", "name": "receptionist"}, "message": " no pool \n",
            "eventTime": three_days_ago()}]});
        let t = table(&events, &ev, IncludeObject::None);
        assert_eq!(
            t["rows"][0]["cells"],
            json!([
                "3d",
                "Warning",
                "ModelPoolNotFound",
                "voiceagent/receptionist",
                "no pool",
                "e"
            ])
        );

        let roles = r
            .get("rbac.authorization.k8s.io", "v1", "roles")
            .expect("roles");
        let t = table(
            &roles,
            &json!({"items": [{"metadata": {"name": "r", "creationTimestamp": "2025-01-01T00:00:00Z"}}]}),
            IncludeObject::None,
        );
        assert_eq!(t["columnDefinitions"][1]["name"], "Created At");
        assert_eq!(t["rows"][0]["cells"], json!(["r", "2025-01-01T00:00:00Z"]));
    }

    #[test]
    fn include_object_parameter() {
        assert_eq!(IncludeObject::parse(None), Ok(IncludeObject::Metadata));
        assert_eq!(IncludeObject::parse(Some("None")), Ok(IncludeObject::None));
        assert_eq!(
            IncludeObject::parse(Some("Object")),
            Ok(IncludeObject::Object)
        );
        assert!(IncludeObject::parse(Some("All")).is_err());
    }
}
