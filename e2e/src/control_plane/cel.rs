//! `x-kubernetes-validations`: CEL rules on schema nodes, evaluated with the
//! `cel` crate. `self` is the node's value, `oldSelf` its previous value on
//! updates (rules that use `oldSelf` are transition rules and are skipped on create).

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use serde_json::Value;

use super::status::{FieldError, FieldErrorKind};

thread_local! {
    // Rules repeat across objects of a kind; parse each once per thread.
    static PROGRAMS: RefCell<HashMap<String, Rc<Result<cel::Program, String>>>> = RefCell::new(HashMap::new());
}

fn program(rule: &str) -> Rc<Result<cel::Program, String>> {
    PROGRAMS.with(|p| {
        p.borrow_mut()
            .entry(rule.to_string())
            .or_insert_with(|| Rc::new(cel::Program::compile(rule).map_err(|e| e.to_string())))
            .clone()
    })
}

/// JSON to CEL: integers stay `int` (Kubernetes' CEL has no JSON `uint`).
fn to_cel(v: &Value) -> cel::Value {
    match v {
        Value::Null => cel::Value::Null,
        Value::Bool(b) => cel::Value::Bool(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => cel::Value::Int(i),
            None => cel::Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => cel::Value::String(Arc::new(s.clone())),
        Value::Array(a) => cel::Value::List(Arc::new(a.iter().map(to_cel).collect())),
        Value::Object(m) => {
            let map: HashMap<cel::objects::Key, cel::Value> = m
                .iter()
                .map(|(k, v)| (cel::objects::Key::from(k.clone()), to_cel(v)))
                .collect();
            cel::Value::Map(cel::objects::Map { map: Arc::new(map) })
        }
    }
}

fn short(v: &Value) -> String {
    match v {
        Value::Object(_) => "\"object\"".into(),
        Value::Array(_) => "\"array\"".into(),
        other => other.to_string(),
    }
}

fn join_field(path: &str, field_path: &str) -> String {
    let f = field_path.trim_start_matches('.');
    match (path.is_empty(), f.is_empty()) {
        (_, true) => path.to_string(),
        (true, false) => f.to_string(),
        (false, false) => format!("{path}.{f}"),
    }
}

/// Evaluates the CEL rules of `schema` against `v` (and `old` for transition rules).
pub fn check_rules(
    v: &Value,
    schema: &Value,
    path: &str,
    old: Option<&Value>,
    errors: &mut Vec<FieldError>,
) {
    let Some(rules) = schema
        .get("x-kubernetes-validations")
        .and_then(Value::as_array)
    else {
        return;
    };
    for r in rules {
        let Some(rule) = r.get("rule").and_then(Value::as_str) else {
            continue;
        };
        let field = join_field(
            path,
            r.get("fieldPath")
                .and_then(Value::as_str)
                .unwrap_or_default(),
        );
        let reason = match r.get("reason").and_then(Value::as_str) {
            Some("FieldValueRequired") => FieldErrorKind::Required,
            Some("FieldValueForbidden") => FieldErrorKind::Forbidden,
            _ => FieldErrorKind::Invalid(short(v)),
        };
        let prog = program(rule);
        let prog = match prog.as_ref() {
            Ok(p) => p,
            Err(e) => {
                errors.push(FieldError {
                    field: field.clone(),
                    kind: FieldErrorKind::Invalid(short(v)),
                    message: format!("compilation failed: {e}"),
                });
                continue;
            }
        };
        let transition = prog.references().has_variable("oldSelf");
        if transition && old.is_none() {
            continue;
        }
        let mut ctx = cel::Context::default();
        ctx.add_variable_from_value("self", to_cel(v));
        if let Some(o) = old {
            ctx.add_variable_from_value("oldSelf", to_cel(o));
        }
        let message = match prog.execute(&ctx) {
            Ok(cel::Value::Bool(true)) => continue,
            Ok(cel::Value::Bool(false)) => {
                let from_expr = r
                    .get("messageExpression")
                    .and_then(Value::as_str)
                    .and_then(|m| match cel::Program::compile(m).ok()?.execute(&ctx) {
                        Ok(cel::Value::String(s)) if !s.is_empty() => Some(s.to_string()),
                        _ => None,
                    });
                from_expr
                    .or_else(|| r.get("message").and_then(Value::as_str).map(str::to_string))
                    .unwrap_or_else(|| format!("failed rule: {rule}"))
            }
            Ok(other) => {
                format!("rule did not evaluate to a bool ({other:?}) evaluating rule: {rule}")
            }
            Err(e) => format!("{e} evaluating rule: {rule}"),
        };
        errors.push(FieldError {
            field,
            kind: match &reason {
                FieldErrorKind::Invalid(_) => FieldErrorKind::Invalid(short(v)),
                other => other.clone(),
            },
            message,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(v: Value, rules: Value, old: Option<Value>) -> Vec<String> {
        let mut errors = vec![];
        check_rules(
            &v,
            &json!({"x-kubernetes-validations": rules}),
            "spec",
            old.as_ref(),
            &mut errors,
        );
        errors.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn failing_rules_report_their_message_or_the_rule() {
        let rules = json!([
            {"rule": "self.minReplicas <= self.maxReplicas", "message": "minReplicas must not exceed maxReplicas"},
            {"rule": "has(self.a) != has(self.b)"},
            {"rule": "self.size > 0", "fieldPath": ".size", "messageExpression": "'size was ' + string(self.size)"}
        ]);
        assert!(
            run(
                json!({"minReplicas": 1, "maxReplicas": 2, "a": 1, "size": 1}),
                rules.clone(),
                None
            )
            .is_empty()
        );
        let got = run(
            json!({"minReplicas": 3, "maxReplicas": 2, "a": 1, "b": 2, "size": 0}),
            rules,
            None,
        );
        assert_eq!(
            got,
            vec![
                "spec: Invalid value: \"object\": minReplicas must not exceed maxReplicas"
                    .to_string(),
                "spec: Invalid value: \"object\": failed rule: has(self.a) != has(self.b)"
                    .to_string(),
                "spec.size: Invalid value: \"object\": size was 0".to_string(),
            ]
        );
    }

    #[test]
    fn transition_rules_run_only_on_update() {
        let rules = json!([{"rule": "self == oldSelf", "message": "is immutable"}]);
        assert!(run(json!("a"), rules.clone(), None).is_empty());
        assert!(run(json!("a"), rules.clone(), Some(json!("a"))).is_empty());
        assert_eq!(
            run(json!("b"), rules, Some(json!("a"))),
            vec!["spec: Invalid value: \"b\": is immutable".to_string()]
        );
    }

    #[test]
    fn a_rule_that_does_not_parse_is_reported() {
        let got = run(json!({}), json!([{"rule": "self.("}]), None);
        assert_eq!(got.len(), 1);
        assert!(got[0].contains("compilation failed"), "{got:?}");
    }
}
