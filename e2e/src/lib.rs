//! End-to-end harness: a Kubernetes API test control plane and helpers for scenario tests.
