//! Status bookkeeping, pure: merge desired conditions into the current list so that
//! `lastTransitionTime` moves only when a status flips, find the transitions that deserve an
//! Event, and carry the other operator-owned fields from one write to the next.
//!
//! Status is written by server-side apply, so a field left out of a write is removed. The
//! field sets ([`PoolFields`], [`AgentFields`]) therefore start from what the status already
//! says and each path overwrites only what it knows: a missing Secret or a dangling
//! reference does not blank the selector `/scale` reads or the endpoint agents use.

use grokcast_crds::{ModelPoolStatus, PreloadStatus, Role, VoiceAgentStatus, condition};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use serde::Serialize;

/// The operator-owned fields of a ModelPool's status besides conditions and
/// observedGeneration.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PoolFields {
    /// Pods of the server Deployment.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    /// Ready pods.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ready_replicas: Option<i32>,
    /// Pod selector, for `/scale`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// Resolved role.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    /// In-cluster URL.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// In-cluster URL of the Riva gRPC service.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub streaming_endpoint: Option<String>,
    /// GPUs the desired replicas request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpus_requested: Option<i32>,
    /// The completed preload.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub preload: Option<PreloadStatus>,
}

impl PoolFields {
    /// The fields as the status has them now.
    pub fn from_status(s: &ModelPoolStatus) -> Self {
        Self {
            replicas: s.replicas,
            ready_replicas: s.ready_replicas,
            selector: s.selector.clone(),
            role: s.role,
            endpoint: s.endpoint.clone(),
            streaming_endpoint: s.streaming_endpoint.clone(),
            gpus_requested: s.gpus_requested,
            preload: s.preload.clone(),
        }
    }
}

/// The operator-owned fields of a VoiceAgent's status besides conditions and
/// observedGeneration.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentFields {
    /// Agent pods.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    /// Ready agent pods.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ready_replicas: Option<i32>,
    /// Pod selector, for `/scale`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// In-cluster URL of the agent Service.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// The Twilio voice webhook.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook_url: Option<String>,
}

impl AgentFields {
    /// The fields as the status has them now.
    pub fn from_status(s: &VoiceAgentStatus) -> Self {
        Self {
            replicas: s.replicas,
            ready_replicas: s.ready_replicas,
            selector: s.selector.clone(),
            endpoint: s.endpoint.clone(),
            webhook_url: s.webhook_url.clone(),
        }
    }
}

/// A field set as the JSON object to merge into a status write.
pub fn fields_json<T: Serialize>(fields: &T) -> serde_json::Value {
    // Plain structs of strings and numbers: serialising cannot fail.
    serde_json::to_value(fields).unwrap_or_else(|_| serde_json::json!({}))
}

/// A condition the operator wants to set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Desired {
    /// Condition type (one of [`condition::OPERATOR_OWNED`]).
    pub type_: &'static str,
    /// True or false.
    pub status: bool,
    /// Reason constant.
    pub reason: &'static str,
    /// Human-readable detail.
    pub message: String,
}

impl Desired {
    /// A condition with status True.
    pub fn yes(type_: &'static str, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            type_,
            status: true,
            reason,
            message: message.into(),
        }
    }

    /// A condition with status False.
    pub fn no(type_: &'static str, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            type_,
            status: false,
            reason,
            message: message.into(),
        }
    }
}

fn status_str(b: bool) -> &'static str {
    if b { "True" } else { "False" }
}

/// The operator-owned conditions to write: each desired condition, keeping the current
/// `lastTransitionTime` when its status did not change. Conditions of other owners (the
/// autoscaler's) are not returned, so a server-side apply of the result leaves them alone.
pub fn merge(
    current: &[Condition],
    desired: &[Desired],
    generation: i64,
    now: &Time,
) -> Vec<Condition> {
    desired
        .iter()
        .map(|d| {
            let status = status_str(d.status);
            let last_transition_time = current
                .iter()
                .find(|c| c.type_ == d.type_ && c.status == status)
                .map_or_else(|| now.clone(), |c| c.last_transition_time.clone());
            Condition {
                type_: d.type_.into(),
                status: status.into(),
                reason: d.reason.into(),
                message: d.message.clone(),
                observed_generation: Some(generation),
                last_transition_time,
            }
        })
        .collect()
}

/// Whether `new` differs from `current` in anything but time, for the conditions in `new`.
pub fn changed(current: &[Condition], new: &[Condition]) -> bool {
    new.iter().any(|n| {
        !current.iter().any(|c| {
            c.type_ == n.type_
                && c.status == n.status
                && c.reason == n.reason
                && c.message == n.message
                && c.observed_generation == n.observed_generation
        })
    })
}

/// What to announce with an Event after a change of the Ready condition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Transition {
    /// Ready became True.
    BecameReady,
    /// Ready became False, or stayed False for a new reason: a Warning with that reason.
    NotReady {
        /// Reason constant.
        reason: String,
        /// Detail.
        message: String,
    },
}

/// Replace the Ready, Progressing and Degraded conditions in `desired` with the ones for a
/// problem (`reason`, `message`), keeping the others (ModelsReady), so every write still
/// carries every condition type and none is left stale.
pub fn with_problem(desired: Vec<Desired>, reason: &'static str, message: &str) -> Vec<Desired> {
    desired
        .into_iter()
        .map(|d| match d.type_ {
            condition::READY => Desired::no(condition::READY, reason, message),
            condition::PROGRESSING => Desired::no(
                condition::PROGRESSING,
                reason,
                "waiting for the problem to be fixed",
            ),
            condition::DEGRADED => Desired::yes(condition::DEGRADED, reason, message),
            _ => d,
        })
        .collect()
}

/// Reasons for which Ready=False is normal progress, not something to warn about.
const PROGRESS_REASONS: [&str; 3] = [
    condition::reason::WAITING_FOR_PODS,
    condition::reason::MODEL_POOL_NOT_READY,
    condition::reason::ROLLING_OUT,
];

/// The Ready transition between `current` and `new`, if it deserves an Event. Same status
/// and reason twice gives `None`, so a loop that keeps failing the same way emits one Event.
pub fn ready_transition(current: &[Condition], new: &[Condition]) -> Option<Transition> {
    let new = new.iter().find(|c| c.type_ == condition::READY)?;
    let old = current.iter().find(|c| c.type_ == condition::READY);
    if old.is_some_and(|o| o.status == new.status && o.reason == new.reason) {
        return None;
    }
    if new.status == "True" {
        // A first Ready after a problem or after creation is worth telling.
        return Some(Transition::BecameReady);
    }
    if PROGRESS_REASONS.contains(&new.reason.as_str()) {
        return None;
    }
    Some(Transition::NotReady {
        reason: new.reason.clone(),
        message: new.message.clone(),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use grokcast_crds::condition::reason;
    use k8s_openapi::jiff::Timestamp;

    fn at(secs: i64) -> Time {
        Time(Timestamp::from_second(secs).unwrap())
    }

    fn ready(status: bool, r: &'static str) -> Desired {
        Desired {
            type_: condition::READY,
            status,
            reason: r,
            message: String::new(),
        }
    }

    #[test]
    fn transition_time_moves_only_when_status_flips() {
        let first = merge(&[], &[ready(false, reason::WAITING_FOR_PODS)], 1, &at(100));
        assert_eq!(first[0].last_transition_time, at(100));
        // Same status, new reason and generation: time kept.
        let second = merge(
            &first,
            &[ready(false, reason::MODEL_POOL_NOT_FOUND)],
            2,
            &at(200),
        );
        assert_eq!(second[0].last_transition_time, at(100));
        assert_eq!(second[0].observed_generation, Some(2));
        assert_eq!(second[0].reason, reason::MODEL_POOL_NOT_FOUND);
        // Flip: time moves.
        let third = merge(&second, &[ready(true, reason::AVAILABLE)], 2, &at(300));
        assert_eq!(third[0].last_transition_time, at(300));
        assert_eq!(third[0].status, "True");
    }

    #[test]
    fn merge_returns_only_desired_types() {
        let mut current = merge(&[], &[ready(true, reason::AVAILABLE)], 1, &at(1));
        current.push(Condition {
            type_: condition::SLO_MET.into(),
            status: "False".into(),
            reason: reason::SLO_BREACHED.into(),
            message: String::new(),
            observed_generation: Some(1),
            last_transition_time: at(1),
        });
        let out = merge(&current, &[ready(true, reason::AVAILABLE)], 1, &at(2));
        assert!(
            out.iter().all(|c| c.type_ != condition::SLO_MET),
            "autoscaler's conditions are not ours to send"
        );
    }

    #[test]
    fn unchanged_conditions_are_not_rewritten() {
        let a = merge(&[], &[ready(true, reason::AVAILABLE)], 1, &at(1));
        let b = merge(&a, &[ready(true, reason::AVAILABLE)], 1, &at(50));
        assert!(!changed(&a, &b));
        let c = merge(&a, &[ready(true, reason::AVAILABLE)], 2, &at(50));
        assert!(changed(&a, &c), "a new generation must be recorded");
    }

    #[test]
    fn one_event_per_transition() {
        let missing = merge(
            &[],
            &[ready(false, reason::MODEL_POOL_NOT_FOUND)],
            1,
            &at(1),
        );
        assert!(matches!(
            ready_transition(&[], &missing),
            Some(Transition::NotReady { reason, .. }) if reason == "ModelPoolNotFound"
        ));
        let again = merge(
            &missing,
            &[ready(false, reason::MODEL_POOL_NOT_FOUND)],
            1,
            &at(2),
        );
        assert_eq!(
            ready_transition(&missing, &again),
            None,
            "same failure twice: no second Event"
        );
        let waiting = merge(&again, &[ready(false, reason::WAITING_FOR_PODS)], 1, &at(3));
        assert_eq!(
            ready_transition(&again, &waiting),
            None,
            "progress is not a warning"
        );
        let ok = merge(&waiting, &[ready(true, reason::AVAILABLE)], 1, &at(4));
        assert_eq!(
            ready_transition(&waiting, &ok),
            Some(Transition::BecameReady)
        );
        assert_eq!(ready_transition(&ok, &ok), None);
    }

    #[test]
    fn problems_replace_readiness_conditions_but_keep_the_others() {
        let desired = vec![
            Desired::yes(condition::READY, reason::AVAILABLE, "1/1"),
            Desired::yes(condition::MODELS_READY, reason::MODELS_AVAILABLE, "ok"),
            Desired::no(condition::PROGRESSING, reason::ROLLOUT_COMPLETE, "done"),
            Desired::no(condition::DEGRADED, reason::HEALTHY, "fine"),
        ];
        let out = with_problem(desired, reason::NAME_CONFLICT, "Service x is not ours");
        let types: Vec<_> = out.iter().map(|d| (d.type_, d.status, d.reason)).collect();
        assert_eq!(
            types,
            vec![
                (condition::READY, false, reason::NAME_CONFLICT),
                (condition::MODELS_READY, true, reason::MODELS_AVAILABLE),
                (condition::PROGRESSING, false, reason::NAME_CONFLICT),
                (condition::DEGRADED, true, reason::NAME_CONFLICT),
            ]
        );
        assert_eq!(out[0].message, "Service x is not ours");
    }

    #[test]
    fn field_sets_start_from_the_status_so_problem_paths_keep_them() {
        let current = grokcast_crds::ModelPoolStatus {
            replicas: Some(2),
            ready_replicas: Some(2),
            selector: Some("app.kubernetes.io/instance=w".into()),
            endpoint: Some("http://w.voice.svc:8000/v1".into()),
            role: Some(Role::Stt),
            gpus_requested: Some(2),
            ..Default::default()
        };
        let fields = PoolFields::from_status(&current);
        let json = fields_json(&fields);
        assert_eq!(json["selector"], "app.kubernetes.io/instance=w");
        assert_eq!(json["endpoint"], "http://w.voice.svc:8000/v1");
        assert_eq!(json["replicas"], 2);
        assert!(json.get("preload").is_none(), "absent fields are left out");
        let agent = grokcast_crds::VoiceAgentStatus {
            selector: Some("s".into()),
            webhook_url: Some("https://x/twilio/voice".into()),
            ..Default::default()
        };
        let json = fields_json(&AgentFields::from_status(&agent));
        assert_eq!(json["selector"], "s");
        assert_eq!(json["webhookUrl"], "https://x/twilio/voice");
    }
}
