//! Structural-schema handling of custom resources: defaults, pruning of unknown
//! fields, OpenAPI v3 value validation and `x-kubernetes-validations` (CEL),
//! with the messages the real server returns.

use serde_json::{Map, Value};

use super::cel;
use super::fields::Scope;
use super::resources::ResourceInfo;
use super::status::{FieldError, FieldErrorKind};
use super::store::FieldValidation;

/// The outcome of checking one object.
#[derive(Debug, Default)]
pub struct Checked {
    /// Field errors (422 Invalid).
    pub errors: Vec<FieldError>,
    /// Unknown fields that were pruned (400 under strict field validation).
    pub unknown: Vec<String>,
}

/// Defaults, prunes and validates `obj` against the kind's schema. Kinds without
/// a schema (the built-ins) pass unchanged.
pub fn validate(
    info: &ResourceInfo,
    obj: &mut Value,
    old: Option<&Value>,
    _mode: FieldValidation,
    scope: Scope,
) -> Checked {
    let mut out = Checked::default();
    let Some(schema) = info.schema.as_deref() else {
        return out;
    };
    let Some(root) = obj.as_object_mut() else {
        return out;
    };
    let props = schema.get("properties").and_then(Value::as_object);
    let preserve = schema
        .get("x-kubernetes-preserve-unknown-fields")
        .and_then(Value::as_bool)
        == Some(true);
    let keys: Vec<String> = root.keys().cloned().collect();
    for k in keys {
        if matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
            continue;
        }
        let Some(sub) = props.and_then(|p| p.get(&k)) else {
            if !preserve {
                root.remove(&k);
                out.unknown.push(k);
            }
            continue;
        };
        if let Some(v) = root.get_mut(&k) {
            default_and_prune(v, sub, &k, &mut out.unknown);
        }
    }
    if let Some(p) = props {
        for (k, sub) in p {
            if matches!(k.as_str(), "apiVersion" | "kind" | "metadata") || root.contains_key(k) {
                continue;
            }
            if let Some(d) = sub.get("default") {
                root.insert(k.clone(), d.clone());
            }
        }
    }
    let obj_ref: &Value = obj;
    let mut errors = vec![];
    if let Some(p) = props {
        for (k, sub) in p {
            if matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
                continue;
            }
            // Status is validated only when status is written, spec only when not.
            if (scope == Scope::Status) != (k == "status") && scope != Scope::MainWithStatus {
                continue;
            }
            if let Some(v) = obj_ref.get(k) {
                check(v, sub, k, old.and_then(|o| o.get(k)), &mut errors);
            }
        }
        for r in schema
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(r) = r.as_str()
                && obj_ref.get(r).is_none()
                && !matches!(r, "apiVersion" | "kind" | "metadata")
            {
                errors.push(required(r));
            }
        }
    }
    out.errors = errors;
    out
}

fn required(path: &str) -> FieldError {
    FieldError {
        field: path.to_string(),
        kind: FieldErrorKind::Required,
        message: String::new(),
    }
}

fn child(path: &str, k: &str) -> String {
    if path.is_empty() {
        k.to_string()
    } else {
        format!("{path}.{k}")
    }
}

/// Applies `default`s of absent properties and removes fields the schema does
/// not declare (unless it preserves unknown fields).
fn default_and_prune(v: &mut Value, schema: &Value, path: &str, unknown: &mut Vec<String>) {
    let preserve = schema
        .get("x-kubernetes-preserve-unknown-fields")
        .and_then(Value::as_bool)
        == Some(true);
    match v {
        Value::Object(m) => {
            let props = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties");
            if let Some(p) = props {
                for (k, sub) in p {
                    if !m.contains_key(k)
                        && let Some(d) = sub.get("default")
                    {
                        m.insert(k.clone(), d.clone());
                    }
                }
            }
            let keys: Vec<String> = m.keys().cloned().collect();
            for k in keys {
                let sub = props
                    .and_then(|p| p.get(&k))
                    .or_else(|| additional.filter(|a| a.is_object()));
                match sub {
                    Some(s) => {
                        if let Some(cv) = m.get_mut(&k) {
                            default_and_prune(cv, s, &child(path, &k), unknown);
                        }
                    }
                    None => {
                        let allowed = preserve || additional.and_then(Value::as_bool) == Some(true);
                        if !allowed
                            && (props.is_some()
                                || additional.is_some()
                                || schema.get("type").and_then(Value::as_str) == Some("object"))
                        {
                            m.remove(&k);
                            unknown.push(child(path, &k));
                        }
                    }
                }
            }
        }
        Value::Array(items) => {
            if let Some(s) = schema.get("items") {
                for (i, it) in items.iter_mut().enumerate() {
                    default_and_prune(it, s, &format!("{path}[{i}]"), unknown);
                }
            }
        }
        _ => {}
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn short(v: &Value) -> String {
    match v {
        Value::Object(_) => "\"object\"".into(),
        Value::Array(_) => "\"array\"".into(),
        other => other.to_string(),
    }
}

fn invalid(path: &str, v: &Value, message: String) -> FieldError {
    FieldError {
        field: path.to_string(),
        kind: FieldErrorKind::Invalid(short(v)),
        message,
    }
}

fn num(v: &Value) -> Option<f64> {
    v.as_f64()
}

fn fmt_num(n: f64) -> String {
    if n.fract() == 0.0 && n.abs() < 1e15 {
        format!("{}", n as i64)
    } else {
        format!("{n}")
    }
}

/// Validates a value (already defaulted and pruned) against its schema node.
pub fn check(
    v: &Value,
    schema: &Value,
    path: &str,
    old: Option<&Value>,
    errors: &mut Vec<FieldError>,
) {
    let before = errors.len();
    check_value(v, schema, path, errors);
    // CEL rules run only on values that passed the structural checks, as upstream does.
    if errors.len() == before {
        cel::check_rules(v, schema, path, old, errors);
    }
    match v {
        Value::Object(m) => {
            let props = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties").filter(|a| a.is_object());
            for (k, cv) in m {
                let sub = props.and_then(|p| p.get(k)).or(additional);
                if let Some(s) = sub {
                    let old_child =
                        if props.is_some_and(|p| p.contains_key(k)) || additional.is_some() {
                            old.and_then(|o| o.get(k))
                        } else {
                            None
                        };
                    check(cv, s, &child(path, k), old_child, errors);
                }
            }
        }
        Value::Array(items) => {
            if let Some(s) = schema.get("items") {
                for (i, it) in items.iter().enumerate() {
                    // Correlating old list items is only defined for map-lists; skip oldSelf there.
                    check(it, s, &format!("{path}[{i}]"), None, errors);
                }
            }
        }
        _ => {}
    }
}

/// The checks of one schema node that do not descend (type, enum, bounds,
/// required, oneOf/anyOf/allOf/not).
fn check_value(v: &Value, schema: &Value, path: &str, errors: &mut Vec<FieldError>) {
    if v.is_null() {
        if schema.get("nullable").and_then(Value::as_bool) != Some(true)
            && schema.get("type").is_some()
        {
            let t = schema
                .get("type")
                .and_then(Value::as_str)
                .unwrap_or("object");
            errors.push(FieldError {
                field: path.to_string(),
                kind: FieldErrorKind::Type("null".into(), t.into()),
                message: format!("{path} in body must be of type {t}: \"null\""),
            });
        }
        return;
    }
    let int_or_string = schema
        .get("x-kubernetes-int-or-string")
        .and_then(Value::as_bool)
        == Some(true);
    if let Some(t) = schema.get("type").and_then(Value::as_str) {
        let actual = type_name(v);
        let ok = actual == t
            || (t == "number" && actual == "integer")
            || (int_or_string && matches!(actual, "integer" | "string"));
        if !ok {
            errors.push(FieldError {
                field: path.to_string(),
                kind: FieldErrorKind::Type(short(v), t.into()),
                message: format!("{path} in body must be of type {t}: \"{actual}\""),
            });
            return;
        }
    } else if int_or_string && !matches!(type_name(v), "integer" | "string") {
        errors.push(FieldError {
            field: path.to_string(),
            kind: FieldErrorKind::Type(short(v), "integer or string".into()),
            message: format!(
                "{path} in body must be of type integer or string: \"{}\"",
                type_name(v)
            ),
        });
        return;
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
        && !allowed.contains(v)
    {
        errors.push(FieldError {
            field: path.to_string(),
            kind: FieldErrorKind::NotSupported(
                v.to_string(),
                allowed.iter().map(Value::to_string).collect(),
            ),
            message: String::new(),
        });
    }
    if let Some(n) = num(v) {
        let excl_min = schema.get("exclusiveMinimum").and_then(Value::as_bool) == Some(true);
        let excl_max = schema.get("exclusiveMaximum").and_then(Value::as_bool) == Some(true);
        if let Some(min) = schema.get("minimum").and_then(Value::as_f64)
            && (n < min || (excl_min && n == min))
        {
            let rel = if excl_min {
                "greater than"
            } else {
                "greater than or equal to"
            };
            errors.push(invalid(
                path,
                v,
                format!("{path} in body should be {rel} {}", fmt_num(min)),
            ));
        }
        if let Some(max) = schema.get("maximum").and_then(Value::as_f64)
            && (n > max || (excl_max && n == max))
        {
            let rel = if excl_max {
                "less than"
            } else {
                "less than or equal to"
            };
            errors.push(invalid(
                path,
                v,
                format!("{path} in body should be {rel} {}", fmt_num(max)),
            ));
        }
        if let Some(m) = schema.get("multipleOf").and_then(Value::as_f64)
            && m > 0.0
            && (n / m).fract() != 0.0
        {
            errors.push(invalid(
                path,
                v,
                format!("{path} in body should be a multiple of {}", fmt_num(m)),
            ));
        }
    }
    if let Some(s) = v.as_str() {
        let len = s.chars().count() as u64;
        if let Some(min) = schema.get("minLength").and_then(Value::as_u64)
            && len < min
        {
            errors.push(invalid(
                path,
                v,
                format!("{path} in body should be at least {min} chars long"),
            ));
        }
        if let Some(max) = schema.get("maxLength").and_then(Value::as_u64)
            && len > max
        {
            errors.push(FieldError {
                field: path.to_string(),
                kind: FieldErrorKind::Invalid(short(v)),
                message: format!("may not be more than {max} bytes"),
            });
        }
        if let Some(p) = schema.get("pattern").and_then(Value::as_str) {
            match regex::Regex::new(p) {
                Ok(re) if !re.is_match(s) => {
                    errors.push(invalid(
                        path,
                        v,
                        format!("{path} in body should match '{p}'"),
                    ));
                }
                Ok(_) => {}
                Err(e) => errors.push(invalid(
                    path,
                    v,
                    format!("the schema pattern {p:?} does not compile: {e}"),
                )),
            }
        }
    }
    if let Some(a) = v.as_array() {
        let n = a.len() as u64;
        if let Some(min) = schema.get("minItems").and_then(Value::as_u64)
            && n < min
        {
            errors.push(invalid(
                path,
                v,
                format!("{path} in body should have at least {min} items"),
            ));
        }
        if let Some(max) = schema.get("maxItems").and_then(Value::as_u64)
            && n > max
        {
            errors.push(FieldError {
                field: path.to_string(),
                kind: FieldErrorKind::Forbidden,
                message: format!("Too many: {n}: must have at most {max} items"),
            });
        }
        if schema.get("x-kubernetes-list-type").and_then(Value::as_str) == Some("set") {
            for (i, it) in a.iter().enumerate() {
                if a[..i].contains(it) {
                    errors.push(FieldError {
                        field: format!("{path}[{i}]"),
                        kind: FieldErrorKind::Invalid(it.to_string()),
                        message: "Duplicate value".into(),
                    });
                }
            }
        }
    }
    if let Some(m) = v.as_object() {
        check_object_bounds(m, schema, path, errors);
    }
    check_combinators(v, schema, path, errors);
}

fn check_object_bounds(
    m: &Map<String, Value>,
    schema: &Value,
    path: &str,
    errors: &mut Vec<FieldError>,
) {
    for r in schema
        .get("required")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(r) = r.as_str()
            && !m.contains_key(r)
        {
            errors.push(required(&child(path, r)));
        }
    }
    let n = m.len() as u64;
    if let Some(min) = schema.get("minProperties").and_then(Value::as_u64)
        && n < min
    {
        errors.push(invalid(
            path,
            &Value::Object(m.clone()),
            format!("{path} in body should have at least {min} properties"),
        ));
    }
    if let Some(max) = schema.get("maxProperties").and_then(Value::as_u64)
        && n > max
    {
        errors.push(invalid(
            path,
            &Value::Object(m.clone()),
            format!("{path} in body should have at most {max} properties"),
        ));
    }
}

fn passes(v: &Value, schema: &Value, path: &str) -> bool {
    let mut e = vec![];
    check_value(v, schema, path, &mut e);
    e.is_empty()
}

fn check_combinators(v: &Value, schema: &Value, path: &str, errors: &mut Vec<FieldError>) {
    if let Some(subs) = schema.get("oneOf").and_then(Value::as_array) {
        let n = subs.iter().filter(|s| passes(v, s, path)).count();
        if n != 1 {
            errors.push(invalid(
                path,
                v,
                format!("{path} in body must match exactly one schema in oneOf"),
            ));
        }
    }
    if let Some(subs) = schema.get("anyOf").and_then(Value::as_array)
        && !subs.iter().any(|s| passes(v, s, path))
    {
        errors.push(invalid(
            path,
            v,
            format!("{path} in body must match at least one schema in anyOf"),
        ));
    }
    if let Some(subs) = schema.get("allOf").and_then(Value::as_array) {
        for s in subs {
            check_value(v, s, path, errors);
        }
    }
    if let Some(s) = schema.get("not")
        && passes(v, s, path)
    {
        errors.push(invalid(
            path,
            v,
            format!("{path} in body must not match the schema in not"),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::sync::Arc;

    use crate::control_plane::resources::Registry;

    fn widget(schema: Value) -> ResourceInfo {
        let mut r = Registry::default();
        r.register_crd(&json!({
            "metadata": {"name": "widgets.example.com"},
            "spec": {"group": "example.com", "names": {"plural": "widgets", "kind": "Widget"}, "scope": "Namespaced",
                "versions": [{"name": "v1", "served": true, "storage": true, "schema": {"openAPIV3Schema": schema}, "subresources": {"status": {}}}]}
        }))
        .expect("crd");
        let info = r.get("example.com", "v1", "widgets").expect("served");
        Arc::unwrap_or_clone(info)
    }

    fn spec_schema() -> Value {
        json!({"type": "object", "properties": {
            "spec": {"type": "object", "required": ["engine"], "properties": {
                "engine": {"type": "string", "enum": ["vllm", "whisper"]},
                "replicas": {"type": "integer", "minimum": 0, "maximum": 10, "default": 1},
                "name": {"type": "string", "pattern": "^[a-z]+$", "maxLength": 5},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                "port": {"x-kubernetes-int-or-string": true}
            }},
            "status": {"type": "object", "properties": {"ready": {"type": "boolean"}}}
        }})
    }

    #[test]
    fn defaults_and_prunes() {
        let info = widget(spec_schema());
        let mut obj = json!({"spec": {"engine": "vllm", "bogus": 1, "free": {"x": {"y": 1}}, "labels": {"a": "b"}}, "other": 2});
        let c = validate(&info, &mut obj, None, FieldValidation::Strict, Scope::Main);
        assert!(c.errors.is_empty(), "{:?}", c.errors);
        assert_eq!(obj["spec"]["replicas"], 1);
        assert_eq!(obj["spec"]["free"]["x"]["y"], 1);
        assert!(obj.get("other").is_none());
        assert!(obj["spec"].get("bogus").is_none());
        assert_eq!(
            c.unknown,
            vec!["other".to_string(), "spec.bogus".to_string()]
        );
    }

    #[test]
    fn each_constraint_reports_the_field_and_rule() {
        let info = widget(spec_schema());
        let cases = [
            (json!({"spec": {}}), "spec.engine: Required value"),
            (
                json!({"spec": {"engine": "tgi"}}),
                "spec.engine: Unsupported value: \"tgi\": supported values: \"vllm\", \"whisper\"",
            ),
            (
                json!({"spec": {"engine": "vllm", "replicas": -1}}),
                "spec.replicas: Invalid value: -1: spec.replicas in body should be greater than or equal to 0",
            ),
            (
                json!({"spec": {"engine": "vllm", "replicas": 11}}),
                "spec.replicas: Invalid value: 11: spec.replicas in body should be less than or equal to 10",
            ),
            (
                json!({"spec": {"engine": "vllm", "replicas": "two"}}),
                "spec.replicas: Invalid value: \"two\": spec.replicas in body must be of type integer: \"string\"",
            ),
            (
                json!({"spec": {"engine": "vllm", "name": "A1"}}),
                "spec.name: Invalid value: \"A1\": spec.name in body should match '^[a-z]+$'",
            ),
            (
                json!({"spec": {"engine": "vllm", "name": "abcdef"}}),
                "spec.name: Invalid value: \"abcdef\": may not be more than 5 bytes",
            ),
            (
                json!({"spec": {"engine": "vllm", "port": true}}),
                "spec.port: Invalid value: true: spec.port in body must be of type integer or string: \"boolean\"",
            ),
        ];
        for (mut obj, want) in cases {
            let c = validate(&info, &mut obj, None, FieldValidation::Strict, Scope::Main);
            let got: Vec<String> = c.errors.iter().map(ToString::to_string).collect();
            assert_eq!(got, vec![want.to_string()], "for {obj}");
        }
    }

    #[test]
    fn status_is_checked_only_through_status() {
        let info = widget(spec_schema());
        let mut obj = json!({"spec": {"engine": "vllm"}, "status": {"ready": "yes"}});
        assert!(
            validate(&info, &mut obj, None, FieldValidation::Strict, Scope::Main)
                .errors
                .is_empty()
        );
        assert_eq!(
            validate(
                &info,
                &mut obj,
                None,
                FieldValidation::Strict,
                Scope::Status
            )
            .errors
            .len(),
            1
        );
    }
}
