//! Leader election with a `coordination.k8s.io/v1` Lease.
//!
//! One replica holds the Lease and renews it; the others retry until it expires. Leadership
//! is published on a `watch` channel: controllers (and the autoscaler) write only while it
//! reads `true`. A leader that cannot renew before its lease would expire steps down and
//! [`run`] returns an error, so the process exits instead of writing unlocked.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, PostParams};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Lease settings.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    /// Lease name.
    pub name: String,
    /// Lease namespace.
    pub namespace: String,
    /// This replica's identity (pod name).
    pub identity: String,
    /// How long a lease lasts without renewal.
    pub lease_duration: Duration,
    /// How often the leader renews and candidates retry.
    pub retry_period: Duration,
}

impl LeaseConfig {
    /// Defaults close to Kubernetes' own controllers (15 s lease, renew every 5 s).
    pub fn new(name: String, namespace: String, identity: String) -> Self {
        Self {
            name,
            namespace,
            identity,
            lease_duration: Duration::from_secs(15),
            retry_period: Duration::from_secs(5),
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

/// Decide from the Lease spec (if any), our identity and the time.
pub fn decide(spec: Option<&LeaseSpec>, me: &str, now: Timestamp) -> Decision {
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
    let duration = SignedDuration::from_secs(i64::from(spec.lease_duration_seconds.unwrap_or(15)));
    let expired = spec
        .renew_time
        .as_ref()
        .or(spec.acquire_time.as_ref())
        .is_none_or(|t| t.0 + duration < now);
    if expired {
        Decision::TakeOver
    } else {
        Decision::Follow {
            holder: holder.to_string(),
        }
    }
}

fn lease_secs(cfg: &LeaseConfig) -> i32 {
    i32::try_from(cfg.lease_duration.as_secs()).unwrap_or(15)
}

/// One round: read the Lease and create, renew, take over or follow. Returns whether we
/// hold the lease afterwards. Writes use the read resourceVersion, so two candidates racing
/// for an expired lease cannot both win.
pub async fn try_acquire(api: &Api<Lease>, cfg: &LeaseConfig) -> Result<bool, kube::Error> {
    let now = Timestamp::now();
    let current = api.get_opt(&cfg.name).await?;
    match decide(
        current.as_ref().and_then(|l| l.spec.as_ref()),
        &cfg.identity,
        now,
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
    leader: watch::Sender<bool>,
    shutdown: CancellationToken,
) -> Result<(), LeaderError> {
    let api: Api<Lease> = Api::namespaced(client, &cfg.namespace);
    let mut last_renew = tokio::time::Instant::now();
    loop {
        let leading = *leader.borrow();
        match try_acquire(&api, &cfg).await {
            Ok(true) => {
                last_renew = tokio::time::Instant::now();
                if !leading {
                    tracing::info!(identity = %cfg.identity, lease = %cfg.name, "became leader");
                    let _ = leader.send(true);
                }
            }
            Ok(false) if leading => {
                let _ = leader.send(false);
                return Err(LeaderError::Lost {
                    namespace: cfg.namespace,
                    name: cfg.name,
                    why: "another replica holds the lease".into(),
                });
            }
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(error = %e, "leader lease request failed");
                // Step down before the lease can expire under us: a standby may take it then.
                if leading && last_renew.elapsed() + cfg.retry_period >= cfg.lease_duration {
                    let _ = leader.send(false);
                    return Err(LeaderError::Lost {
                        namespace: cfg.namespace,
                        name: cfg.name,
                        why: format!("could not renew: {e}"),
                    });
                }
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => {
                if *leader.borrow() {
                    let _ = leader.send(false);
                    release(&api, &cfg).await;
                }
                return Ok(());
            }
            () = tokio::time::sleep(cfg.retry_period) => {}
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn spec(holder: Option<&str>, renewed: i64) -> LeaseSpec {
        LeaseSpec {
            holder_identity: holder.map(str::to_string),
            lease_duration_seconds: Some(15),
            renew_time: Some(MicroTime(Timestamp::from_second(renewed).unwrap())),
            ..LeaseSpec::default()
        }
    }

    fn now(secs: i64) -> Timestamp {
        Timestamp::from_second(secs).unwrap()
    }

    #[test]
    fn decisions() {
        assert_eq!(decide(None, "a", now(0)), Decision::Create);
        assert_eq!(
            decide(Some(&spec(Some("a"), 0)), "a", now(100)),
            Decision::Renew
        );
        assert_eq!(
            decide(Some(&spec(Some("b"), 90)), "a", now(100)),
            Decision::Follow { holder: "b".into() },
            "b renewed 10 s ago; its 15 s lease is live"
        );
        assert_eq!(
            decide(Some(&spec(Some("b"), 80)), "a", now(100)),
            Decision::TakeOver
        );
        assert_eq!(
            decide(Some(&spec(None, 99)), "a", now(100)),
            Decision::TakeOver,
            "released"
        );
    }
}
