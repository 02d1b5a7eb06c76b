//! Events live once and are served through two APIs, as on a real server:
//! `core/v1` Events (what `kubectl describe` and `kubectl get events` read) and
//! `events.k8s.io/v1` Events (what kube-rs's `Recorder`, and so the operator,
//! writes). The store keeps the core/v1 form; the `events.k8s.io/v1` view is
//! converted on the way in and out with the real server's field mapping.

use serde_json::{Map, Value, json};

use super::resources::ResourceInfo;

/// Field renames between the two forms: (core/v1, events.k8s.io/v1).
/// Everything else (`metadata`, `eventTime`, `series`, `action`, `reason`,
/// `type`, `related`, `reportingInstance`) has the same name in both.
const RENAMES: &[(&str, &str)] = &[
    ("involvedObject", "regarding"),
    ("message", "note"),
    ("reportingComponent", "reportingController"),
    ("source", "deprecatedSource"),
    ("firstTimestamp", "deprecatedFirstTimestamp"),
    ("lastTimestamp", "deprecatedLastTimestamp"),
    ("count", "deprecatedCount"),
];

/// Whether `info` is the `events.k8s.io/v1` view of the shared Event storage.
pub fn is_events_v1(info: &ResourceInfo) -> bool {
    info.group == "events.k8s.io" && info.plural == "events"
}

fn rename(obj: &Value, api_version: &str, to_v1: bool) -> Value {
    let Some(map) = obj.as_object() else {
        return obj.clone();
    };
    let mut out = Map::new();
    for (k, v) in map {
        let renamed = RENAMES.iter().find_map(|(core, v1)| {
            if to_v1 {
                (k == core).then_some(*v1)
            } else {
                (k == v1).then_some(*core)
            }
        });
        out.insert(renamed.unwrap_or(k).to_string(), v.clone());
    }
    out.insert("apiVersion".into(), json!(api_version));
    out.insert("kind".into(), json!("Event"));
    Value::Object(out)
}

/// An `events.k8s.io/v1` Event in the stored core/v1 form.
pub fn to_core(obj: &Value) -> Value {
    rename(obj, "v1", false)
}

/// A stored core/v1 Event as `events.k8s.io/v1` presents it.
pub fn to_events_v1(obj: &Value) -> Value {
    rename(obj, "events.k8s.io/v1", true)
}

/// A field-selector field of the `events.k8s.io/v1` API in stored (core/v1)
/// terms, so selectors such as `regarding.name=x` match stored Events.
pub fn core_field(field: &str) -> String {
    for (core, v1) in RENAMES {
        if field == *v1 {
            return core.to_string();
        }
        if let Some(rest) = field.strip_prefix(v1).and_then(|r| r.strip_prefix('.')) {
            return format!("{core}.{rest}");
        }
    }
    field.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_between_the_two_apis() {
        let v1 = json!({
            "apiVersion": "events.k8s.io/v1", "kind": "Event",
            "metadata": {"name": "receptionist.1", "namespace": "voice"},
            "eventTime": "2025-01-01T00:00:00.000000Z",
            "regarding": {"kind": "VoiceAgent", "name": "receptionist", "uid": "u"},
            "note": "pool gemma-27b not found", "reason": "ModelPoolNotFound", "type": "Warning",
            "action": "Reconcile", "reportingController": "grokcast-operator", "reportingInstance": "pod-1",
            "deprecatedCount": 2
        });
        let core = to_core(&v1);
        assert_eq!(core["apiVersion"], "v1");
        assert_eq!(core["involvedObject"]["name"], "receptionist");
        assert_eq!(core["message"], "pool gemma-27b not found");
        assert_eq!(core["reportingComponent"], "grokcast-operator");
        assert_eq!(core["count"], 2);
        assert!(core.get("regarding").is_none() && core.get("note").is_none());
        assert_eq!(to_events_v1(&core), v1);
    }

    #[test]
    fn selector_fields_map_to_the_stored_form() {
        assert_eq!(core_field("regarding.name"), "involvedObject.name");
        assert_eq!(core_field("involvedObject.uid"), "involvedObject.uid");
        assert_eq!(core_field("reportingController"), "reportingComponent");
        assert_eq!(core_field("reason"), "reason");
        assert_eq!(core_field("metadata.name"), "metadata.name");
    }
}
