//! Condition bookkeeping, pure: merge desired conditions into the current list so that
//! `lastTransitionTime` moves only when a status flips, and find the transitions that
//! deserve an Event.

use grokcast_crds::condition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

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
}
