//! Latency-SLO autoscaling: reads Prometheus, decides replicas, writes `/scale` subresources.
//!
//! The decision ([`decide`], [`plan`], the counting half of [`capacity`]) has no Kubernetes or
//! Prometheus client in it; the loop around it lives in [`run`](fn@run).

pub mod capacity;
pub mod decide;
pub mod metrics;
pub mod plan;
pub mod prometheus;
pub mod queries;

mod cluster;
mod disabled;

pub use cluster::{AutoscaleError, AutoscalerConfig, reason_text, run};
pub use disabled::{DISABLED_MESSAGE, report_disabled};

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod client_tests;
#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod config_tests;
#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod live_tests;
