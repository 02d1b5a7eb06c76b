//! The operator process minus CLI and HTTP: leader election, ServiceMonitor discovery, the
//! controllers and the autoscaler, until shutdown or lost leadership. Tests run it in-process.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use tokio::sync::watch;
pub use tokio_util::sync::CancellationToken;

use crate::autoscale;
use crate::controller::{self, RunConfig};
use crate::leader::{self, Leadership, LeaseConfig};
use crate::metrics::Metrics;
use crate::server_version;
use crate::settings::BuildSettings;

/// Choose rustls' ring provider for the whole process. Both ring (kube) and aws-lc-rs
/// (reqwest, for Prometheus) are linked, and rustls refuses to guess; call this before
/// building any client. Calling it again is harmless.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Everything `run` needs besides the client.
#[derive(Clone, Debug)]
pub struct OperatorConfig {
    /// Images and defaults for the builders.
    pub settings: BuildSettings,
    /// Namespaces to watch; empty means all.
    pub namespaces: Vec<String>,
    /// This replica's identity (Lease holder, Event reporting instance).
    pub identity: String,
    /// Lease to elect a leader with; `None` runs as the only replica.
    pub lease: Option<LeaseConfig>,
    /// The latency-SLO autoscaler (Prometheus URL, auth, decision tunables); `None` leaves
    /// replicas to the specs and says so on autoscaled VoiceAgents. Its `namespaces` and
    /// `instance` are replaced by this config's, so both loops act on the same objects.
    pub autoscaler: Option<autoscale::AutoscalerConfig>,
}

/// Why the operator stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Leadership was lost; the process must exit rather than write unlocked.
    #[error(transparent)]
    Leader(#[from] leader::LeaderError),
    /// The leader election task panicked or was aborted.
    #[error("leader election task failed: {0}")]
    LeaderTask(String),
}

/// Read the API server's version, log an error when it is older than the operator supports,
/// and switch off what it would refuse (see [`server_version`]).
async fn settings_for_server(client: &kube::Client, mut settings: BuildSettings) -> BuildSettings {
    let version = match client.apiserver_version().await {
        Ok(info) => {
            let version = server_version::parse(&info);
            if version.is_none() {
                tracing::warn!(git_version = %info.git_version, "cannot parse the API server version; assuming a current one");
            }
            version
        }
        Err(error) => {
            tracing::warn!(%error, "cannot read the API server version; assuming a current one");
            None
        }
    };
    let features = server_version::features(version);
    if let Some(v) = version {
        if features.supported {
            tracing::info!(version = %v, "Kubernetes API server");
        } else {
            tracing::error!(
                version = %v,
                minimum = %server_version::MINIMUM_SUPPORTED,
                "Kubernetes {v} is older than the minimum the operator supports ({}); \
                 running with features it lacks switched off (agent pods get no preStop sleep)",
                server_version::MINIMUM_SUPPORTED
            );
        }
    }
    settings.pre_stop_sleep = settings.pre_stop_sleep && features.pre_stop_sleep;
    settings
}

/// Run until `shutdown` is cancelled or leadership is lost. Only the leader starts the
/// controllers; the autoscaler receives the leadership channel and writes only while it
/// reads `true`.
pub async fn run(
    client: kube::Client,
    config: OperatorConfig,
    metrics: Metrics,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    let (leader_tx, leader_rx) = watch::channel(Leadership::Follower);
    let mut leader_task = match config.lease.clone() {
        Some(cfg) => {
            let stop = shutdown.clone();
            let client = client.clone();
            tokio::spawn(async move {
                let result = leader::run(client, cfg, leader_tx, stop.clone()).await;
                // Without the lease nobody may write: stop everything.
                stop.cancel();
                result
            })
        }
        None => {
            let _ = leader_tx.send(Leadership::Always);
            let stop = shutdown.clone();
            tokio::spawn(async move {
                // Hold the sender so receivers never see a closed channel before shutdown.
                stop.cancelled().await;
                let _ = leader_tx.send(Leadership::Follower);
                Ok(())
            })
        }
    };
    {
        let gauge = metrics.leader.clone();
        let mut rx = leader_rx.clone();
        tokio::spawn(async move {
            loop {
                gauge.set(i64::from(rx.borrow_and_update().is_leading()));
                if rx.changed().await.is_err() {
                    return;
                }
            }
        });
    }

    let service_monitors = Arc::new(AtomicBool::new(false));
    tokio::spawn(controller::watch_service_monitor_support(
        client.clone(),
        service_monitors.clone(),
        shutdown.clone(),
    ));

    let autoscaler = match config.autoscaler.clone() {
        Some(mut cfg) => {
            tracing::info!(
                prometheus = %cfg.prometheus.url,
                period_s = cfg.behaviour.period.as_secs_f64(),
                "latency-SLO autoscaling is on"
            );
            cfg.namespaces = config.namespaces.clone();
            cfg.instance = Some(config.identity.clone());
            if cfg.metrics_registry.is_none() {
                cfg.metrics_registry = Some(metrics.registry().clone());
            }
            let run = autoscale::run(client.clone(), cfg, leader_rx.clone(), shutdown.clone());
            Some(tokio::spawn(async move {
                // Logged when it happens (a bad CA file stops it at start), not at shutdown;
                // the controllers keep running without it.
                if let Err(error) = run.await {
                    tracing::error!(%error, "autoscaler stopped; replicas follow the specs until restart");
                }
            }))
        }
        None => {
            tracing::info!(
                "latency-SLO autoscaling is off: no Prometheus URL (--prometheus-url / GROKCAST_PROMETHEUS_URL); replicas follow spec.replicas, and autoscaled VoiceAgents get SLOMet=Unknown (AutoscalerDisabled)"
            );
            tokio::spawn(autoscale::report_disabled(
                client.clone(),
                config.namespaces.clone(),
                leader_rx.clone(),
                shutdown.clone(),
            ));
            None
        }
    };

    let work = async {
        let settings = settings_for_server(&client, config.settings.clone()).await;
        let mut wait_leader = leader_rx.clone();
        let is_leader = tokio::select! {
            r = wait_leader.wait_for(Leadership::is_leading) => r.is_ok(),
            () = shutdown.cancelled() => false,
        };
        if is_leader && !shutdown.is_cancelled() {
            tracing::info!(identity = %config.identity, "leading: starting controllers");
            let run_config = RunConfig {
                settings,
                namespaces: config.namespaces.clone(),
                instance: Some(config.identity.clone()),
            };
            controller::run_controllers(
                client,
                run_config,
                metrics,
                service_monitors,
                leader_rx,
                shutdown.clone(),
            )
            .await;
        }
    };
    tokio::pin!(work);
    let election = tokio::select! {
        () = &mut work => None,
        done = &mut leader_task => Some(done),
    };
    let election = match election {
        // Lost leadership: return at once rather than wait for the controllers to drain.
        // A request stuck on a stalled connection would hold the process (and whatever it
        // still had to write) past the moment a standby may lead; returning drops them all,
        // and the process exits, closing its connections, as client-go's OnStoppedLeading.
        Some(Ok(Err(lost))) => {
            shutdown.cancel();
            return Err(RunError::from(lost));
        }
        Some(done) => {
            // Shutdown (SIGTERM): let the controllers finish what they were writing.
            work.await;
            done
        }
        None => {
            shutdown.cancel();
            leader_task.await
        }
    };
    shutdown.cancel();
    if let Some(task) = autoscaler
        && let Err(e) = task.await
    {
        tracing::error!(error = %e, "autoscaler task failed");
    }
    match election {
        Ok(result) => result.map_err(RunError::from),
        Err(e) => Err(RunError::LeaderTask(e.to_string())),
    }
}
