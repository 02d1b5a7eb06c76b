//! Where `e2e/cluster/build.sh` (run by `scripts/install.sh`) put the real cluster parts:
//! `${XDG_CACHE_HOME:-~/.cache}/grokcast/k8s/<tool>-<version>/bin`, with the versions read
//! from the one file that pins them, `e2e/cluster/versions.env`.

use std::path::PathBuf;

use super::ClusterError;

const VERSIONS: &str = include_str!("../../cluster/versions.env");

/// A pinned version from `versions.env`, e.g. `pinned("KUBERNETES_VERSION")`.
pub fn pinned(key: &str) -> Option<&'static str> {
    VERSIONS.lines().find_map(|l| {
        let (k, v) = l.trim().split_once('=')?;
        (k == key).then_some(v.trim())
    })
}

/// The Kubernetes version the harness runs (`KUBERNETES_VERSION`, e.g. `v1.37.2`).
pub fn kubernetes_version() -> &'static str {
    pinned("KUBERNETES_VERSION").unwrap_or("unknown")
}

fn cache_root() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir)
        .join("grokcast/k8s")
}

/// The path of one binary: `kube-apiserver`, `kube-controller-manager`, `kube-scheduler`,
/// `kubectl`, `etcd`, `kwok`, `helm` or `otelcol`. A missing one is an error that says how to build it:
/// tests that need a cluster fail, never skip.
pub fn binary(name: &str) -> Result<PathBuf, ClusterError> {
    let (tool, key) = match name {
        "kube-apiserver" | "kube-controller-manager" | "kube-scheduler" | "kubectl" => {
            ("kubernetes", "KUBERNETES_VERSION")
        }
        "etcd" => ("etcd", "ETCD_VERSION"),
        "kwok" => ("kwok", "KWOK_VERSION"),
        "helm" => ("helm", "HELM_VERSION"),
        "otelcol" => ("otelcol", "OTELCOL_VERSION"),
        _ => ("unknown", "unknown"),
    };
    let version = pinned(key).unwrap_or("unknown");
    let path = cache_root()
        .join(format!("{tool}-{version}"))
        .join("bin")
        .join(name);
    if path.is_file() {
        Ok(path)
    } else {
        Err(ClusterError::MissingBinary { path })
    }
}
