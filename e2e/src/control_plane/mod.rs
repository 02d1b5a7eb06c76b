//! The test control plane: a Kubernetes API server for tests, in-process, on
//! 127.0.0.1 over plain HTTP.
//!
//! ```no_run
//! # async fn demo() -> Result<(), grokcast_e2e::ControlPlaneError> {
//! let cp = grokcast_e2e::TestControlPlane::start().await?;
//! let client = cp.client().await?;
//! // ... run the operator against `client`, or `kubectl --kubeconfig cp.kubeconfig_path()`
//! println!("{} requests", cp.request_count());
//! cp.shutdown().await;
//! # Ok(()) }
//! ```

mod cel;
mod clock;
mod controllers;
mod events;
mod fields;
mod openapi;
mod patch;
mod resources;
mod schema;
mod selector;
mod server;
mod status;
mod store;
mod table;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use controllers::Knobs;
use server::Shared;
use store::Store;

/// Why the control plane could not start or hand out a client.
#[derive(Debug, thiserror::Error)]
pub enum ControlPlaneError {
    /// The listening socket could not be bound.
    #[error("binding {addr}: {source}")]
    Bind {
        /// Address tried.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// The kubeconfig could not be written.
    #[error("writing kubeconfig {path}: {source}")]
    Kubeconfig {
        /// Where.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// kube-rs could not build a client from the kubeconfig.
    #[error("building a kube client from {path}: {message}")]
    Client {
        /// The kubeconfig used.
        path: PathBuf,
        /// Cause.
        message: String,
    },
}

/// Requests served since start (or the last reset), by verb: `get`, `list`,
/// `watch`, `create`, `update`, `patch`, `delete`, `deletecollection`,
/// `discovery`, `health`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestCounts {
    /// Count per verb.
    pub by_verb: BTreeMap<String, u64>,
}

impl RequestCounts {
    /// All requests.
    pub fn total(&self) -> u64 {
        self.by_verb.values().sum()
    }

    /// Requests of one verb.
    pub fn verb(&self, verb: &str) -> u64 {
        self.by_verb.get(verb).copied().unwrap_or(0)
    }

    /// Requests that change objects (create, update, patch, delete, deletecollection).
    pub fn writes(&self) -> u64 {
        ["create", "update", "patch", "delete", "deletecollection"]
            .iter()
            .map(|v| self.verb(v))
            .sum()
    }
}

/// Settings for [`TestControlPlane::start_with`].
#[derive(Debug, Clone)]
pub struct Options {
    /// Address to listen on; port 0 picks a free port.
    pub listen: SocketAddr,
    /// How many events watches can resume from before older ones are compacted.
    pub history_limit: usize,
    /// How long the simulated controllers wait before writing status.
    pub controller_delay: Duration,
    /// Interval of watch bookmarks.
    pub bookmark_interval: Duration,
    /// Where to write the kubeconfig; a fresh temporary directory when `None`.
    pub kubeconfig: Option<PathBuf>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            history_limit: 50_000,
            controller_delay: Duration::from_millis(20),
            bookmark_interval: Duration::from_secs(5),
            kubeconfig: None,
        }
    }
}

struct Running {
    stop_server: oneshot::Sender<()>,
    server: JoinHandle<()>,
    stop_controllers: watch::Sender<bool>,
    controllers: JoinHandle<()>,
}

/// A running test control plane. Dropping it stops serving; prefer
/// [`TestControlPlane::shutdown`] to wait for that.
pub struct TestControlPlane {
    shared: Arc<Shared>,
    knobs: Arc<Knobs>,
    addr: SocketAddr,
    kubeconfig: PathBuf,
    temp_dir: Option<PathBuf>,
    running: Option<Running>,
}

static INSTANCE: AtomicU64 = AtomicU64::new(0);

impl TestControlPlane {
    /// Starts on a free port of 127.0.0.1 with default [`Options`].
    pub async fn start() -> Result<Self, ControlPlaneError> {
        Self::start_with(Options::default()).await
    }

    /// Starts with explicit options.
    pub async fn start_with(opts: Options) -> Result<Self, ControlPlaneError> {
        let store = Arc::new(Store::new(opts.history_limit));
        let (close_watches, _) = watch::channel(0u64);
        let shared = Arc::new(Shared {
            store,
            counts: Mutex::new(BTreeMap::new()),
            close_watches,
            bookmark_interval: opts.bookmark_interval,
        });
        let knobs = Arc::new(Knobs::new(opts.controller_delay));
        let listener = tokio::net::TcpListener::bind(opts.listen)
            .await
            .map_err(|source| ControlPlaneError::Bind {
                addr: opts.listen,
                source,
            })?;
        let addr = listener
            .local_addr()
            .map_err(|source| ControlPlaneError::Bind {
                addr: opts.listen,
                source,
            })?;
        let (kubeconfig, temp_dir) = match opts.kubeconfig {
            Some(p) => (p, None),
            None => {
                let dir = std::env::temp_dir().join(format!(
                    "grokcast-control-plane-{}-{}-{}",
                    std::process::id(),
                    addr.port(),
                    INSTANCE.fetch_add(1, Ordering::Relaxed)
                ));
                (dir.join("kubeconfig"), Some(dir))
            }
        };
        write_kubeconfig(&kubeconfig, addr)?;
        let mut cp = Self {
            shared,
            knobs,
            addr,
            kubeconfig,
            temp_dir,
            running: None,
        };
        cp.serve(listener);
        Ok(cp)
    }

    fn serve(&mut self, listener: tokio::net::TcpListener) {
        let router = axum::Router::new()
            .fallback(server::handle)
            .with_state(self.shared.clone());
        let (stop_server, rx) = oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            let shutdown = async {
                let _ = rx.await;
            };
            if let Err(e) = axum::serve(listener, router)
                .with_graceful_shutdown(shutdown)
                .await
            {
                tracing::warn!(error = %e, "test control plane server stopped");
            }
        });
        let (stop_controllers, stop_rx) = watch::channel(false);
        let controllers = tokio::spawn(controllers::run(
            self.shared.store.clone(),
            self.knobs.clone(),
            stop_rx,
        ));
        self.running = Some(Running {
            stop_server,
            server,
            stop_controllers,
            controllers,
        });
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A kubeconfig for kubectl or kube-rs pointing at this server.
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// A kube-rs client built from the kubeconfig, like a user's would be.
    pub async fn client(&self) -> Result<kube::Client, ControlPlaneError> {
        let err = |e: &dyn std::fmt::Display| ControlPlaneError::Client {
            path: self.kubeconfig.clone(),
            message: e.to_string(),
        };
        // With more than one rustls provider compiled into a test binary, rustls
        // cannot pick one itself; kube is built with ring, so choose it.
        if rustls::crypto::CryptoProvider::get_default().is_none() {
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let kc = kube::config::Kubeconfig::read_from(&self.kubeconfig).map_err(|e| err(&e))?;
        let cfg =
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|e| err(&e))?;
        kube::Client::try_from(cfg).map_err(|e| err(&e))
    }

    /// All requests served since start or the last [`Self::reset_request_counts`].
    pub fn request_count(&self) -> u64 {
        self.request_counts().total()
    }

    /// Requests served, by verb.
    pub fn request_counts(&self) -> RequestCounts {
        let c = self.shared.counts.lock().unwrap_or_else(|e| e.into_inner());
        RequestCounts { by_verb: c.clone() }
    }

    /// Zeroes the request counters.
    pub fn reset_request_counts(&self) {
        self.shared
            .counts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// Whether Deployments become ready (default true). Applies to every
    /// Deployment without a per-object setting, existing ones included.
    pub fn set_deployments_ready(&self, ready: bool) {
        self.knobs.deployments_ready.store(ready, Ordering::Relaxed);
        self.knobs.changed.notify_one();
    }

    /// Whether one Deployment becomes ready, overriding the global switch.
    pub fn set_deployment_ready(&self, namespace: &str, name: &str, ready: bool) {
        {
            let mut o = self
                .knobs
                .overrides
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            o.retain(|((n, m), _)| !(n == namespace && m == name));
            o.push(((namespace.to_string(), name.to_string()), ready));
        }
        self.knobs.changed.notify_one();
    }

    /// Whether Jobs complete (default true).
    pub fn set_jobs_complete(&self, complete: bool) {
        self.knobs.jobs_complete.store(complete, Ordering::Relaxed);
        self.knobs.changed.notify_one();
    }

    /// How long the simulated controllers wait before writing status.
    pub fn set_controller_delay(&self, delay: Duration) {
        self.knobs
            .delay_ms
            .store(delay.as_millis() as u64, Ordering::Relaxed);
    }

    /// Forgets the event history: watches and paginated lists from versions
    /// before now get 410 Gone (reason Expired), as after an etcd compaction.
    pub fn compact(&self) {
        self.shared.store.compact();
    }

    /// Ends every open watch, as an API server does when a watch times out or
    /// the server restarts; clients re-watch from their last resourceVersion.
    pub fn close_watches(&self) {
        self.shared.close_watches.send_modify(|g| *g += 1);
    }

    /// The current (latest) resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.shared.store.current_rv()
    }

    /// Number of stored objects of every kind.
    pub fn object_count(&self) -> usize {
        self.shared.store.object_count()
    }

    /// Stops serving (connections are refused) and stops the simulated
    /// controllers; the data stays. See [`Self::restart`].
    pub async fn stop(&mut self) {
        let Some(r) = self.running.take() else { return };
        self.close_watches();
        let _ = r.stop_server.send(());
        let _ = r.stop_controllers.send(true);
        let mut server = r.server;
        if tokio::time::timeout(Duration::from_secs(5), &mut server)
            .await
            .is_err()
        {
            server.abort();
        }
        let _ = r.controllers.await;
    }

    /// Serves again on the same port with the same data.
    pub async fn restart(&mut self) -> Result<(), ControlPlaneError> {
        self.stop().await;
        let listener = tokio::net::TcpListener::bind(self.addr)
            .await
            .map_err(|source| ControlPlaneError::Bind {
                addr: self.addr,
                source,
            })?;
        self.serve(listener);
        Ok(())
    }

    /// Stops serving and removes the temporary kubeconfig.
    pub async fn shutdown(mut self) {
        self.stop().await;
    }
}

impl Drop for TestControlPlane {
    fn drop(&mut self) {
        if let Some(r) = self.running.take() {
            self.shared.close_watches.send_modify(|g| *g += 1);
            let _ = r.stop_server.send(());
            let _ = r.stop_controllers.send(true);
            r.server.abort();
            r.controllers.abort();
        }
        if let Some(dir) = &self.temp_dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn write_kubeconfig(path: &Path, addr: SocketAddr) -> Result<(), ControlPlaneError> {
    let err = |source| ControlPlaneError::Kubeconfig {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: grokcast-test\n  cluster:\n    server: http://{addr}\nusers:\n- name: grokcast-test\n  user: {{}}\ncontexts:\n- name: grokcast-test\n  context:\n    cluster: grokcast-test\n    user: grokcast-test\n    namespace: default\ncurrent-context: grokcast-test\n"
    );
    std::fs::write(path, text).map_err(err)
}
