//! End-to-end harness for GrokCast.
//!
//! The main piece is [`cluster`]: a real Kubernetes control plane (etcd, kube-apiserver,
//! kube-controller-manager, kube-scheduler) with kwok's fake CPU and A100 nodes, built from
//! pinned Go modules and started on 127.0.0.1, shared by the tests of one test binary.
//! [`project`] installs GrokCast into it as a user would (CRDs, Secrets, the chart's RBAC),
//! [`prometheus`] runs Debian's Prometheus, [`proxy`] cuts one client off the API server,
//! and [`wait`] polls with deadlines.
//! See `e2e/README.md`.

pub mod cluster;
pub mod project;
pub mod prometheus;
pub mod proxy;
pub mod wait;

pub use wait::eventually;
