//! Label and field selectors as the list and watch endpoints accept them.

use std::collections::BTreeSet;

use serde_json::Value;

/// A selector string that does not parse.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SelectorError {
    /// A label requirement that does not parse.
    #[error("unable to parse requirement: {0:?}")]
    Label(String),
    /// A field selector on a field the kind does not index.
    #[error("field label not supported: {0}")]
    UnsupportedField(String),
    /// A field requirement with no operator.
    #[error("invalid selector: '{0}'; can't understand '{0}'")]
    Field(String),
}

#[derive(Debug, Clone, PartialEq)]
enum LabelReq {
    Eq(String, String),
    NotEq(String, String),
    In(String, BTreeSet<String>),
    NotIn(String, BTreeSet<String>),
    Exists(String),
    NotExists(String),
}

/// A parsed `labelSelector`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LabelSelector(Vec<LabelReq>);

fn split_top_level(s: &str) -> Vec<&str> {
    let mut out = vec![];
    let mut depth = 0usize;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

fn valid_key(k: &str) -> bool {
    !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
}

fn parse_set(s: &str, whole: &str) -> Result<BTreeSet<String>, SelectorError> {
    let s = s.trim();
    let inner = s
        .strip_prefix('(')
        .and_then(|x| x.strip_suffix(')'))
        .ok_or_else(|| SelectorError::Label(whole.to_string()))?;
    Ok(inner
        .split(',')
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .collect())
}

impl LabelSelector {
    /// Parses `a=b,c!=d,e in (f,g),h notin (i),j,!k`.
    pub fn parse(s: &str) -> Result<Self, SelectorError> {
        let mut reqs = vec![];
        if s.trim().is_empty() {
            return Ok(Self(reqs));
        }
        for part in split_top_level(s) {
            let p = part.trim();
            let bad = || SelectorError::Label(p.to_string());
            if let Some(k) = p.strip_prefix('!') {
                let k = k.trim();
                if !valid_key(k) {
                    return Err(bad());
                }
                reqs.push(LabelReq::NotExists(k.to_string()));
            } else if let Some(i) = p.find(" notin ").or_else(|| p.find(" notin(")) {
                let k = p[..i].trim();
                if !valid_key(k) {
                    return Err(bad());
                }
                reqs.push(LabelReq::NotIn(k.to_string(), parse_set(&p[i + 6..], p)?));
            } else if let Some(i) = p.find(" in ").or_else(|| p.find(" in(")) {
                let k = p[..i].trim();
                if !valid_key(k) {
                    return Err(bad());
                }
                reqs.push(LabelReq::In(k.to_string(), parse_set(&p[i + 3..], p)?));
            } else if let Some((k, v)) = p.split_once("!=") {
                let k = k.trim();
                if !valid_key(k) {
                    return Err(bad());
                }
                reqs.push(LabelReq::NotEq(k.to_string(), v.trim().to_string()));
            } else if let Some((k, v)) = p.split_once("==").or_else(|| p.split_once('=')) {
                let k = k.trim();
                if !valid_key(k) || v.contains('=') {
                    return Err(bad());
                }
                reqs.push(LabelReq::Eq(k.to_string(), v.trim().to_string()));
            } else if valid_key(p) {
                reqs.push(LabelReq::Exists(p.to_string()));
            } else {
                return Err(bad());
            }
        }
        Ok(Self(reqs))
    }

    /// Whether an object with these labels is selected.
    pub fn matches(&self, labels: Option<&serde_json::Map<String, Value>>) -> bool {
        let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        self.0.iter().all(|r| match r {
            LabelReq::Eq(k, v) => get(k) == Some(v.as_str()),
            LabelReq::NotEq(k, v) => get(k) != Some(v.as_str()),
            LabelReq::In(k, vs) => get(k).is_some_and(|x| vs.contains(x)),
            LabelReq::NotIn(k, vs) => !get(k).is_some_and(|x| vs.contains(x)),
            LabelReq::Exists(k) => get(k).is_some(),
            LabelReq::NotExists(k) => get(k).is_none(),
        })
    }
}

/// A parsed `fieldSelector` (`=`, `==`, `!=` on supported fields).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FieldSelector(Vec<(String, bool, String)>);

/// Fields every kind can be selected by, plus a few per-kind ones clients use.
fn supported(kind: &str, field: &str) -> bool {
    matches!(field, "metadata.name" | "metadata.namespace")
        || match kind {
            "Event" => {
                field.starts_with("involvedObject.")
                    || field.starts_with("regarding.")
                    || matches!(
                        field,
                        "reason" | "type" | "source" | "reportingComponent" | "reportingController"
                    )
            }
            "Pod" => matches!(
                field,
                "spec.nodeName" | "status.phase" | "spec.serviceAccountName"
            ),
            "Secret" => field == "type",
            "Namespace" => field == "status.phase",
            _ => false,
        }
}

impl FieldSelector {
    /// Parses a selector for objects of `kind`.
    pub fn parse(s: &str, kind: &str) -> Result<Self, SelectorError> {
        let mut reqs = vec![];
        if s.trim().is_empty() {
            return Ok(Self(reqs));
        }
        for part in s.split(',') {
            let p = part.trim();
            let (f, eq, v) = if let Some((f, v)) = p.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = p.split_once("==").or_else(|| p.split_once('=')) {
                (f, true, v)
            } else {
                return Err(SelectorError::Field(p.to_string()));
            };
            let f = f.trim();
            if !supported(kind, f) {
                return Err(SelectorError::UnsupportedField(f.to_string()));
            }
            // Events are stored in the core/v1 form; `events.k8s.io/v1` names
            // (`regarding.name`) select the same fields.
            let f = if kind == "Event" {
                super::events::core_field(f)
            } else {
                f.to_string()
            };
            reqs.push((f, eq, v.trim().to_string()));
        }
        Ok(Self(reqs))
    }

    /// Whether `obj` is selected; a missing field reads as the empty string.
    pub fn matches(&self, obj: &Value) -> bool {
        self.0.iter().all(|(f, eq, v)| {
            let mut cur = obj;
            for seg in f.split('.') {
                cur = cur.get(seg).unwrap_or(&Value::Null);
            }
            let actual = match cur {
                Value::String(s) => s.clone(),
                Value::Null => String::new(),
                other => other.to_string(),
            };
            (actual == *v) == *eq
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn labels(v: Value) -> serde_json::Map<String, Value> {
        v.as_object().cloned().expect("object")
    }

    #[test]
    fn every_label_operator_selects_what_kubernetes_selects() {
        let l = labels(json!({"app": "web", "tier": "front", "canary": "true"}));
        let yes = [
            "app=web",
            "app==web",
            "app!=db",
            "tier in (front, back)",
            "tier notin (back)",
            "canary",
            "!missing",
            "app=web,tier in (front),!gone",
            "missing!=x",
        ];
        for s in yes {
            assert!(
                LabelSelector::parse(s).expect(s).matches(Some(&l)),
                "{s} should match"
            );
        }
        let no = [
            "app=db",
            "app!=web",
            "tier in (back)",
            "tier notin (front,x)",
            "missing",
            "!canary",
            "app=web,tier=back",
        ];
        for s in no {
            assert!(
                !LabelSelector::parse(s).expect(s).matches(Some(&l)),
                "{s} should not match"
            );
        }
    }

    #[test]
    fn malformed_label_selectors_are_refused() {
        for s in ["app in front", "=x", "a b", "a=b=c"] {
            assert!(LabelSelector::parse(s).is_err(), "{s} should fail");
        }
    }

    #[test]
    fn field_selectors_on_name_and_namespace() {
        let obj = json!({"metadata": {"name": "a", "namespace": "ns"}});
        assert!(
            FieldSelector::parse("metadata.name=a", "ConfigMap")
                .expect("ok")
                .matches(&obj)
        );
        assert!(
            !FieldSelector::parse("metadata.name!=a", "ConfigMap")
                .expect("ok")
                .matches(&obj)
        );
        assert!(
            FieldSelector::parse("metadata.namespace==ns,metadata.name=a", "ConfigMap")
                .expect("ok")
                .matches(&obj)
        );
        let err = FieldSelector::parse("spec.replicas=1", "Deployment").expect_err("unsupported");
        assert_eq!(err.to_string(), "field label not supported: spec.replicas");
    }
}
