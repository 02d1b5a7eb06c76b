//! Request failures, rendered as the `metav1.Status` documents the real API
//! server returns, so clients take the same error paths.

use serde_json::{Value, json};

/// A failed API request: the HTTP code, the Status reason and a message.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{code} {reason}: {message}")]
pub struct ApiError {
    /// HTTP status code.
    pub code: u16,
    /// `metav1.StatusReason` (`NotFound`, `Conflict`, `Invalid`, ...).
    pub reason: &'static str,
    /// Human-readable message, worded like the real server's.
    pub message: String,
    /// `details` of the Status (name, group, kind, causes).
    pub details: Option<Value>,
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    /// 400 BadRequest.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    /// 404 NotFound for a named object of `qualified` resource (`deployments.apps`).
    pub fn not_found(qualified: &str, name: &str) -> Self {
        let mut e = Self::new(404, "NotFound", format!("{qualified} \"{name}\" not found"));
        let (resource, group) = qualified.split_once('.').unwrap_or((qualified, ""));
        e.details = Some(json!({"name": name, "group": group, "kind": resource}));
        e
    }

    /// 404 for a URL that names no served resource.
    pub fn no_route(path: &str) -> Self {
        Self::new(
            404,
            "NotFound",
            format!("the server could not find the requested resource ({path})"),
        )
    }

    /// 409 AlreadyExists.
    pub fn already_exists(qualified: &str, name: &str) -> Self {
        Self::new(
            409,
            "AlreadyExists",
            format!("{qualified} \"{name}\" already exists"),
        )
    }

    /// 409 Conflict on a stale resourceVersion or a failed precondition.
    pub fn conflict(qualified: &str, name: &str, why: &str) -> Self {
        Self::new(
            409,
            "Conflict",
            format!("Operation cannot be fulfilled on {qualified} \"{name}\": {why}"),
        )
    }

    /// 409 Conflict from server-side apply, listing each contested field.
    pub fn apply_conflicts(conflicts: &[(String, String)], api_version: &str) -> Self {
        let mut lines = vec![];
        let mut causes = vec![];
        for (manager, field) in conflicts {
            lines.push(format!(
                "- conflict with \"{manager}\" using {api_version}: {field}"
            ));
            causes.push(json!({
                "reason": "FieldManagerConflict",
                "message": format!("conflict with \"{manager}\" using {api_version}"),
                "field": field,
            }));
        }
        let n = conflicts.len();
        let message = if n == 1 {
            let (manager, field) = &conflicts[0];
            format!(
                "Apply failed with 1 conflict: conflict with \"{manager}\" using {api_version}: {field}"
            )
        } else {
            format!("Apply failed with {n} conflicts: {}", lines.join("\n"))
        };
        let mut e = Self::new(409, "Conflict", message);
        e.details = Some(json!({"causes": causes}));
        e
    }

    /// 410 Gone: the requested resourceVersion was compacted away.
    pub fn expired(message: impl Into<String>) -> Self {
        Self::new(410, "Expired", message)
    }

    /// 422 Invalid with one cause per field error, worded as the real server words it.
    pub fn invalid(
        qualified_kind: &str,
        group: &str,
        kind: &str,
        name: &str,
        causes: &[FieldError],
    ) -> Self {
        let list: Vec<String> = causes.iter().map(FieldError::to_string).collect();
        let joined = if list.len() == 1 {
            list[0].clone()
        } else {
            format!("[{}]", list.join(", "))
        };
        let mut e = Self::new(
            422,
            "Invalid",
            format!("{qualified_kind} \"{name}\" is invalid: {joined}"),
        );
        e.details = Some(json!({
            "name": name,
            "group": group,
            "kind": kind,
            "causes": causes.iter().map(|c| json!({
                "reason": c.reason(),
                "message": c.detail(),
                "field": c.field,
            })).collect::<Vec<_>>(),
        }));
        e
    }

    /// 405 MethodNotAllowed.
    pub fn method_not_allowed(message: impl Into<String>) -> Self {
        Self::new(405, "MethodNotAllowed", message)
    }

    /// 415 UnsupportedMediaType.
    pub fn unsupported_media_type(content_type: &str) -> Self {
        Self::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml, application/apply-patch+yaml, application/merge-patch+json, application/strategic-merge-patch+json, application/json-patch+json (got {content_type:?})"
            ),
        )
    }

    /// 500 InternalError.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, "InternalError", message)
    }

    /// The `metav1.Status` body.
    pub fn to_status(&self) -> Value {
        let mut s = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(d) = &self.details {
            s["details"] = d.clone();
        }
        s
    }
}

/// How a field failed validation.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldErrorKind {
    /// A required field is missing.
    Required,
    /// A value breaks a rule; carries the offending value rendered as JSON.
    Invalid(String),
    /// A value outside an enum; carries the value and the allowed values.
    NotSupported(String, Vec<String>),
    /// A field the schema does not know (strict field validation).
    Unknown,
    /// A change that is not allowed (e.g. a new finalizer on a deleting object).
    Forbidden,
    /// A wrong type; carries the value and the expected type.
    Type(String, String),
}

/// One field-level validation failure.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldError {
    /// Dotted path of the field (`spec.replicas`).
    pub field: String,
    /// What is wrong.
    pub kind: FieldErrorKind,
    /// Explanation appended to the message.
    pub message: String,
}

impl FieldError {
    fn reason(&self) -> &'static str {
        match self.kind {
            FieldErrorKind::Required => "FieldValueRequired",
            FieldErrorKind::Invalid(_) => "FieldValueInvalid",
            FieldErrorKind::NotSupported(..) => "FieldValueNotSupported",
            FieldErrorKind::Unknown => "FieldValueInvalid",
            FieldErrorKind::Forbidden => "FieldValueForbidden",
            FieldErrorKind::Type(..) => "FieldValueTypeInvalid",
        }
    }

    fn detail(&self) -> String {
        match &self.kind {
            FieldErrorKind::Required => {
                if self.message.is_empty() {
                    "Required value".into()
                } else {
                    format!("Required value: {}", self.message)
                }
            }
            FieldErrorKind::Invalid(v) => format!("Invalid value: {v}: {}", self.message),
            FieldErrorKind::NotSupported(v, allowed) => format!(
                "Unsupported value: {v}: supported values: {}",
                allowed.join(", ")
            ),
            FieldErrorKind::Unknown => "field not declared in schema".into(),
            FieldErrorKind::Forbidden => format!("Forbidden: {}", self.message),
            FieldErrorKind::Type(v, t) => format!(
                "Invalid value: {v}: {}",
                if self.message.is_empty() {
                    format!("must be of type {t}")
                } else {
                    self.message.clone()
                }
            ),
        }
    }
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.kind == FieldErrorKind::Unknown {
            return write!(f, "unknown field \"{}\"", self.field);
        }
        write!(f, "{}: {}", self.field, self.detail())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_status_names_the_field_and_rule() {
        let e = ApiError::invalid(
            "ModelPool.grokcast.io",
            "grokcast.io",
            "ModelPool",
            "pool",
            &[FieldError {
                field: "spec.replicas".into(),
                kind: FieldErrorKind::Invalid("-1".into()),
                message: "spec.replicas in body should be greater than or equal to 0".into(),
            }],
        );
        let s = e.to_status();
        assert_eq!(s["code"], 422);
        assert_eq!(s["reason"], "Invalid");
        assert_eq!(
            s["message"],
            "ModelPool.grokcast.io \"pool\" is invalid: spec.replicas: Invalid value: -1: spec.replicas in body should be greater than or equal to 0"
        );
        assert_eq!(s["details"]["causes"][0]["field"], "spec.replicas");
    }

    #[test]
    fn single_apply_conflict_reads_like_the_real_server() {
        let e =
            ApiError::apply_conflicts(&[("kubectl".into(), ".spec.replicas".into())], "apps/v1");
        assert_eq!(e.code, 409);
        assert_eq!(
            e.message,
            "Apply failed with 1 conflict: conflict with \"kubectl\" using apps/v1: .spec.replicas"
        );
    }
}
