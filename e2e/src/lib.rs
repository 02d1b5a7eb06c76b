//! End-to-end harness for GrokCast.
//!
//! The main piece is [`TestControlPlane`]: an in-process server that speaks the
//! Kubernetes HTTP API on 127.0.0.1, so the operator and `kubectl` can be tested
//! against real HTTP, real watches and real server-side apply without a cluster.
//! See `e2e/README.md` for what it implements and, as importantly, what it does not.

pub mod control_plane;
pub mod project;
pub mod prometheus;
pub mod wait;

pub use control_plane::{ControlPlaneError, Options, RequestCounts, TestControlPlane};
pub use wait::eventually;
