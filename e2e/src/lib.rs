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

/// A loopback port free at the moment of asking, for a server a test starts.
///
/// # Panics
/// When the machine has no free port: this is a test harness.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}
