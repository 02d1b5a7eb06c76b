//! Leader election with a `coordination.k8s.io/v1` Lease, the way client-go does it.
//!
//! One replica holds the Lease and renews it every `retry_period`; the others read it as
//! often and take it over once it expires. Leadership is published on a `watch` channel as a
//! [`Leadership`]: controllers (and the autoscaler) write only while
//! [`Leadership::is_leading`] holds.
//!
//! Three rules keep two replicas from writing at once:
//! - A leader publishes [`Leadership::Follower`] once no renew has succeeded within the
//!   *renew deadline* (shorter than the lease duration) of the start of the last successful
//!   one; every request is cut off by a timeout at that deadline, so a stalled request
//!   cannot keep a leader leading. [`run`] then returns an error and the process exits.
//! - The published value carries that deadline, and writers compare it with the monotonic
//!   clock themselves. A process frozen past its deadline (SIGSTOP, a VM pause, a long GC)
//!   finds on waking that it no longer leads before the election task has had a chance to
//!   run, so nothing it had queued is written.
//! - A candidate judges expiry by its own monotonic clock: the lease is expired when the
//!   record (holder, renewTime or resourceVersion) has not changed for a lease duration
//!   since this candidate last saw it change. Comparing the holder's `renewTime` with the
//!   local wall clock would let clock skew between nodes hand the lease over early.
//!
//! The leader's deadline counts from *before* its renew request, and a candidate's lease
//! duration from *after* it saw the renewed record, so the leader always stops first.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// What this replica may do, as the election last said.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Leadership {
    /// Not leading: no writes.
    #[default]
    Follower,
    /// Leading until this instant (the renew deadline of the last successful renew), unless
    /// renewed before then.
    Until(Instant),
    /// No election (a single replica): always leading.
    Always,
}

impl Leadership {
    /// Whether writes are allowed now.
    pub fn is_leading(&self) -> bool {
        match self {
            Self::Follower => false,
            Self::Until(deadline) => Instant::now() < *deadline,
            Self::Always => true,
        }
    }
}

/// Lease settings.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    /// Lease name.
    pub name: String,
    /// Lease namespace.
    pub namespace: String,
    /// This replica's identity (pod name).
    pub identity: String,
    /// How long a lease lasts without renewal, as candidates count it.
    pub lease_duration: Duration,
    /// How long the leader keeps leading without a successful renew; must be shorter than
    /// `lease_duration` (see [`LeaseConfig::deadline`]).
    pub renew_deadline: Duration,
    /// How often the leader renews and candidates retry.
    pub retry_period: Duration,
}

impl LeaseConfig {
    /// client-go's defaults: 15 s lease, 10 s renew deadline, retry every 2 s.
    pub fn new(name: String, namespace: String, identity: String) -> Self {
        Self {
            name,
            namespace,
            identity,
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }

    /// The renew deadline in effect: `renew_deadline`, or two thirds of the lease duration
    /// when it is not shorter than the lease (a configuration that would let the lease
    /// expire while this replica still leads).
    pub fn deadline(&self) -> Duration {
        if !self.renew_deadline.is_zero() && self.renew_deadline < self.lease_duration {
            self.renew_deadline
        } else {
            self.lease_duration * 2 / 3
        }
    }
}

/// Why election stopped.
#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    /// The leader could not renew in time, or another replica took the lease.
    #[error("lost leadership of lease {namespace}/{name}: {why}")]
    Lost {
        /// Lease namespace.
        namespace: String,
        /// Lease name.
        name: String,
        /// What happened.
        why: String,
    },
}

/// What to do with the Lease as read, pure.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// No Lease: create it holding it.
    Create,
    /// We hold it: renew.
    Renew,
    /// Someone else held it and it expired (or was released): take it.
    TakeOver,
    /// Someone else holds a live lease.
    Follow {
        /// The holder.
        holder: String,
    },
}

/// The parts of a Lease whose change shows that its holder is alive.
#[derive(Clone, Debug, PartialEq)]
pub struct LeaseRecord {
    /// `spec.holderIdentity`.
    pub holder: Option<String>,
    /// `spec.renewTime`, compared only for change, never with a local clock.
    pub renew_time: Option<MicroTime>,
    /// `metadata.resourceVersion`.
    pub resource_version: Option<String>,
}

impl LeaseRecord {
    /// The record of a Lease as read.
    pub fn of(lease: &Lease) -> Self {
        let spec = lease.spec.as_ref();
        Self {
            holder: spec.and_then(|s| s.holder_identity.clone()),
            renew_time: spec.and_then(|s| s.renew_time.clone()),
            resource_version: lease.metadata.resource_version.clone(),
        }
    }
}

/// The last lease record this replica saw and when (monotonic) it saw it change.
#[derive(Clone, Debug, Default)]
pub struct Observer {
    last: Option<(LeaseRecord, Instant)>,
}

impl Observer {
    /// Note the record read at `now`; returns when it last changed as far as this replica
    /// knows: `now` for a record never seen before.
    pub fn observe(&mut self, record: LeaseRecord, now: Instant) -> Instant {
        match &self.last {
            Some((seen, at)) if *seen == record => *at,
            _ => {
                self.last = Some((record, now));
                now
            }
        }
    }
}

/// Decide from the Lease spec (if any), our identity, when the record last changed
/// (`changed_at`, from [`Observer::observe`]) and the local monotonic time `now`.
/// `default_duration` is used when the lease does not say how long it lasts.
pub fn decide(
    spec: Option<&LeaseSpec>,
    me: &str,
    changed_at: Instant,
    now: Instant,
    default_duration: Duration,
) -> Decision {
    let Some(spec) = spec else {
        return Decision::Create;
    };
    let holder = spec.holder_identity.as_deref().unwrap_or_default();
    if holder == me {
        return Decision::Renew;
    }
    if holder.is_empty() {
        return Decision::TakeOver;
    }
    let duration = spec
        .lease_duration_seconds
        .and_then(|s| u64::try_from(s).ok())
        .map_or(default_duration, Duration::from_secs);
    if now.saturating_duration_since(changed_at) > duration {
        Decision::TakeOver
    } else {
        Decision::Follow {
            holder: holder.to_string(),
        }
    }
}

/// Whether a leader whose last successful renew started at `last_renew` must stop leading
/// at `now`: the renew deadline has passed.
pub fn must_step_down(last_renew: Instant, now: Instant, deadline: Duration) -> bool {
    now.saturating_duration_since(last_renew) >= deadline
}

/// How long one round of requests started at `now` may take: a leader's until its renew
/// deadline, a candidate's one deadline (a hung read must not stall it for ever either).
pub fn request_timeout(last_renew: Option<Instant>, now: Instant, deadline: Duration) -> Duration {
    match last_renew {
        Some(t) => deadline.saturating_sub(now.saturating_duration_since(t)),
        None => deadline,
    }
}

fn lease_secs(cfg: &LeaseConfig) -> i32 {
    i32::try_from(cfg.lease_duration.as_secs()).unwrap_or(15)
}

/// One round: read the Lease and create, renew, take over or follow. Returns whether we
/// hold the lease afterwards. Writes use the read resourceVersion, so two candidates racing
/// for an expired lease cannot both win.
pub async fn try_acquire(
    api: &Api<Lease>,
    cfg: &LeaseConfig,
    observer: &mut Observer,
) -> Result<bool, kube::Error> {
    let current = api.get_opt(&cfg.name).await?;
    let seen = Instant::now();
    let changed_at = current
        .as_ref()
        .map_or(seen, |l| observer.observe(LeaseRecord::of(l), seen));
    // Written for people and other tools to read; no replica compares it with its clock.
    let now = Timestamp::now();
    match decide(
        current.as_ref().and_then(|l| l.spec.as_ref()),
        &cfg.identity,
        changed_at,
        seen,
        cfg.lease_duration,
    ) {
        Decision::Create => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(cfg.name.clone()),
                    namespace: Some(cfg.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(cfg.identity.clone()),
                    lease_duration_seconds: Some(lease_secs(cfg)),
                    acquire_time: Some(MicroTime(now)),
                    renew_time: Some(MicroTime(now)),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            match api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                // Another candidate created it first.
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            }
        }
        Decision::Renew | Decision::TakeOver => {
            let Some(mut lease) = current else {
                return Ok(false);
            };
            let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
            if spec.holder_identity.as_deref() != Some(cfg.identity.as_str()) {
                spec.holder_identity = Some(cfg.identity.clone());
                spec.acquire_time = Some(MicroTime(now));
                spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
            }
            spec.renew_time = Some(MicroTime(now));
            spec.lease_duration_seconds = Some(lease_secs(cfg));
            match api.replace(&cfg.name, &PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            }
        }
        Decision::Follow { .. } => Ok(false),
    }
}

/// Give the lease up on shutdown so a standby takes over at once instead of after expiry.
async fn release(api: &Api<Lease>, cfg: &LeaseConfig) {
    if let Ok(Some(mut lease)) = api.get_opt(&cfg.name).await
        && let Some(spec) = lease.spec.as_mut()
        && spec.holder_identity.as_deref() == Some(cfg.identity.as_str())
    {
        spec.holder_identity = None;
        spec.renew_time = None;
        if let Err(e) = api.replace(&cfg.name, &PostParams::default(), &lease).await {
            tracing::warn!(error = %e, "could not release the leader lease");
        }
    }
}

/// Run the election until `shutdown`, publishing leadership on `leader`. Returns an error
/// when leadership is lost, so the caller stops writing and exits.
pub async fn run(
    client: kube::Client,
    cfg: LeaseConfig,
    leader: watch::Sender<Leadership>,
    shutdown: CancellationToken,
) -> Result<(), LeaderError> {
    let api: Api<Lease> = Api::namespaced(client, &cfg.namespace);
    let deadline = cfg.deadline();
    let mut observer = Observer::default();
    // While leading: when the last successful renew *started*.
    let mut last_renew: Option<Instant> = None;
    let lost = |why: String| LeaderError::Lost {
        namespace: cfg.namespace.clone(),
        name: cfg.name.clone(),
        why,
    };
    loop {
        let started = Instant::now();
        let timeout = request_timeout(last_renew, started, deadline);
        let round = tokio::time::timeout(timeout, try_acquire(&api, &cfg, &mut observer)).await;
        let failure = match round {
            Ok(Ok(true)) => {
                let until = Leadership::Until(started + deadline);
                if last_renew.is_none() {
                    tracing::info!(identity = %cfg.identity, lease = %cfg.name, "became leader");
                    let _ = leader.send(until);
                } else {
                    // A renew moves the deadline without waking anyone: receivers wait
                    // for transitions, and read the deadline when they are about to write.
                    leader.send_if_modified(|l| {
                        *l = until;
                        false
                    });
                }
                last_renew = Some(started);
                None
            }
            Ok(Ok(false)) if last_renew.is_some() => {
                let _ = leader.send(Leadership::Follower);
                return Err(lost("another replica holds the lease".into()));
            }
            Ok(Ok(false)) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(_) => Some(format!("no answer within {timeout:?}")),
        };
        if let Some(why) = failure {
            tracing::warn!(error = %why, "leader lease request failed");
            if let Some(t) = last_renew
                && must_step_down(t, Instant::now(), deadline)
            {
                // Before the lease can expire under us: a standby may take it after that.
                let _ = leader.send(Leadership::Follower);
                return Err(lost(format!(
                    "no successful renew within the {deadline:?} renew deadline: {why}"
                )));
            }
        }
        // A leader wakes in time to retry before its deadline, whatever the retry period.
        let pause = match last_renew {
            Some(t) => cfg
                .retry_period
                .min(request_timeout(Some(t), Instant::now(), deadline)),
            None => cfg.retry_period,
        };
        tokio::select! {
            () = shutdown.cancelled() => {
                if leader.borrow().is_leading() {
                    let _ = leader.send(Leadership::Follower);
                    release(&api, &cfg).await;
                }
                return Ok(());
            }
            () = tokio::time::sleep(pause) => {}
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const LEASE: Duration = Duration::from_secs(15);

    fn lease(holder: Option<&str>, renewed: i64, rv: &str) -> Lease {
        Lease {
            metadata: ObjectMeta {
                resource_version: Some(rv.into()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: holder.map(str::to_string),
                lease_duration_seconds: Some(15),
                renew_time: Some(MicroTime(Timestamp::from_second(renewed).unwrap())),
                ..LeaseSpec::default()
            }),
        }
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    /// Decide as `me` about `l`, read at `t0 + at`.
    fn decide_at(obs: &mut Observer, l: &Lease, me: &str, t0: Instant, at: u64) -> Decision {
        let now = t0 + secs(at);
        let changed = obs.observe(LeaseRecord::of(l), now);
        decide(l.spec.as_ref(), me, changed, now, LEASE)
    }

    #[test]
    fn create_renew_and_released() {
        let t0 = Instant::now();
        assert_eq!(decide(None, "a", t0, t0, LEASE), Decision::Create);
        let mut obs = Observer::default();
        assert_eq!(
            decide_at(&mut obs, &lease(Some("a"), 0, "1"), "a", t0, 100),
            Decision::Renew
        );
        assert_eq!(
            decide_at(&mut obs, &lease(None, 0, "2"), "a", t0, 101),
            Decision::TakeOver,
            "released"
        );
    }

    #[test]
    fn expiry_counts_from_when_the_record_last_changed_locally() {
        let t0 = Instant::now();
        let mut obs = Observer::default();
        let b = lease(Some("b"), 1_000, "1");
        assert_eq!(
            decide_at(&mut obs, &b, "a", t0, 0),
            Decision::Follow { holder: "b".into() }
        );
        assert_eq!(
            decide_at(&mut obs, &b, "a", t0, 15),
            Decision::Follow { holder: "b".into() },
            "exactly one lease duration: not yet"
        );
        // b renews at t0+10: the clock starts again.
        let renewed = lease(Some("b"), 1_010, "2");
        assert_eq!(
            decide_at(&mut obs, &renewed, "a", t0, 10),
            Decision::Follow { holder: "b".into() }
        );
        assert_eq!(
            decide_at(&mut obs, &renewed, "a", t0, 24),
            Decision::Follow { holder: "b".into() }
        );
        assert_eq!(
            decide_at(&mut obs, &renewed, "a", t0, 26),
            Decision::TakeOver,
            "unchanged for more than 15 s since it was seen to change"
        );
    }

    #[test]
    fn remote_clock_skew_does_not_decide() {
        let t0 = Instant::now();
        // The holder's clock is an hour behind ours: by wall clocks its renewTime is long
        // expired, but the record was just seen to change, so the lease is live.
        let mut obs = Observer::default();
        let behind = lease(Some("b"), 0, "1");
        assert_eq!(
            decide_at(&mut obs, &behind, "a", t0, 0),
            Decision::Follow { holder: "b".into() }
        );
        assert_eq!(
            decide_at(&mut obs, &lease(Some("b"), 2, "2"), "a", t0, 2),
            Decision::Follow { holder: "b".into() }
        );
        // The holder's clock is an hour ahead and it stopped renewing: its renewTime looks
        // like the future, yet the unchanged record expires on our clock.
        let mut obs = Observer::default();
        let ahead = lease(Some("b"), 4_000_000_000, "7");
        assert_eq!(
            decide_at(&mut obs, &ahead, "a", t0, 0),
            Decision::Follow { holder: "b".into() }
        );
        assert_eq!(decide_at(&mut obs, &ahead, "a", t0, 16), Decision::TakeOver);
        // Only the resourceVersion moved (another field written): still a sign of life.
        let mut obs = Observer::default();
        decide_at(&mut obs, &ahead, "a", t0, 0);
        let touched = lease(Some("b"), 4_000_000_000, "8");
        assert_eq!(
            decide_at(&mut obs, &touched, "a", t0, 14),
            Decision::Follow { holder: "b".into() }
        );
        assert_eq!(
            decide_at(&mut obs, &touched, "a", t0, 20),
            Decision::Follow { holder: "b".into() }
        );
    }

    #[test]
    fn leader_steps_down_at_the_renew_deadline_before_the_lease_expires() {
        let cfg = LeaseConfig::new("l".into(), "ns".into(), "a".into());
        let deadline = cfg.deadline();
        assert_eq!(deadline, secs(10));
        assert!(deadline < cfg.lease_duration);
        let t0 = Instant::now();
        assert!(!must_step_down(t0, t0 + secs(9), deadline));
        assert!(must_step_down(t0, t0 + secs(10), deadline));
        // A request started 7 s after the last renew may take 3 s, not a second more; a
        // stalled one is cut off there and the leader steps down.
        assert_eq!(request_timeout(Some(t0), t0 + secs(7), deadline), secs(3));
        assert_eq!(request_timeout(Some(t0), t0 + secs(12), deadline), secs(0));
        assert_eq!(request_timeout(None, t0, deadline), deadline);
    }

    #[test]
    fn leadership_ends_at_its_deadline_without_anyone_saying_so() {
        let now = Instant::now();
        assert!(Leadership::Until(now + secs(60)).is_leading());
        // What a replica frozen past its renew deadline reads on waking.
        assert!(!Leadership::Until(now - secs(1)).is_leading());
        assert!(!Leadership::Follower.is_leading());
        assert!(Leadership::Always.is_leading());
    }

    #[test]
    fn a_deadline_not_shorter_than_the_lease_is_clamped() {
        let mut cfg = LeaseConfig::new("l".into(), "ns".into(), "a".into());
        cfg.lease_duration = secs(3);
        assert_eq!(cfg.deadline(), Duration::from_secs(2));
        cfg.renew_deadline = secs(1);
        assert_eq!(cfg.deadline(), secs(1));
    }
}
