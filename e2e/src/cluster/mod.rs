//! A real Kubernetes control plane for tests: etcd, kube-apiserver (RBAC and Node
//! authorization, the default admission plugins with PodSecurity, service-account tokens),
//! kube-controller-manager, kube-scheduler, and kwok running fake CPU and A100 nodes, all
//! on free 127.0.0.1 ports. The binaries come from `e2e/cluster/build.sh` (run by
//! `scripts/install.sh`), pinned in `e2e/cluster/versions.env`.
//!
//! Tests share one cluster per test binary through [`Cluster::shared`] (nextest runs each
//! test in its own process, so the cluster lives in a small daemon, `grokcast-e2e cluster
//! up --exit-when-idle`, that the first test starts and that goes away once no test process
//! has used it for a while) and get a fresh namespace each from [`Cluster::namespace`].
//! People start one with `grokcast-e2e cluster up`, which prints its KUBECONFIG.
//!
//! Nothing here ever dials a pod's address: kwok gives pods addresses from a fake range,
//! and tests reach the servers they start on loopback.

mod audit;
mod binaries;
pub mod kwok;
mod pki;
mod shared;
pub mod volumes;

use std::io::{Read, Seek, SeekFrom};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, Node, ServiceAccount};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;

pub use audit::{AuditEntry, AuditLog, AuditMark};
pub use binaries::{binary, kubernetes_version, pinned};
pub use kwok::NodePool;
pub use shared::{DAEMON_IDLE_EXIT, run_daemon};

/// The GPU product of the harness's main GPU nodes, as NVIDIA's GPU feature discovery labels
/// an A100 80 GB SXM4.
pub const A100_80GB: &str = "NVIDIA-A100-SXM4-80GB";
/// A second product, on its own small pool, so a GPU-shortage scenario has capacity that no
/// other test running at the same time uses.
pub const A100_40GB: &str = "NVIDIA-A100-SXM4-40GB";
/// The label (and the taint key) of the slow node pool, whose pods become Ready only after
/// [`ClusterOptions::slow_ready_delay`]. A workload lands there only with this node selector
/// and a toleration for the taint.
pub const SLOW_POOL_LABEL: &str = "grokcast.test/pool";
/// The value of [`SLOW_POOL_LABEL`] on the slow pool.
pub const SLOW_POOL: &str = "slow";

/// Why the cluster could not start or serve a request.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// A file or directory could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// A certificate or key could not be made.
    #[error("making the {what}: {message}")]
    Pki {
        /// Which one.
        what: &'static str,
        /// Cause.
        message: String,
    },
    /// A binary is not built.
    #[error(
        "{path} is missing: build the cluster parts with scripts/install.sh (e2e/cluster/build.sh)"
    )]
    MissingBinary {
        /// Where it was looked for.
        path: PathBuf,
    },
    /// A component could not be started.
    #[error("starting {name}: {source}")]
    Spawn {
        /// The component.
        name: String,
        /// Cause.
        source: std::io::Error,
    },
    /// A component did not become ready in time, or exited.
    #[error("{what} (log {log}):\n{tail}")]
    Component {
        /// What happened.
        what: String,
        /// The component's log.
        log: PathBuf,
        /// Its last lines.
        tail: String,
    },
    /// The API refused a request, or a client could not be built.
    #[error("{what}: {message}")]
    Api {
        /// What was attempted.
        what: String,
        /// Cause.
        message: String,
    },
    /// The shared cluster's daemon could not be started or reached.
    #[error("shared cluster: {0}")]
    Shared(String),
}

impl ClusterError {
    fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_owned(),
            source,
        }
    }

    fn api(what: impl Into<String>) -> impl FnOnce(kube::Error) -> Self {
        let what = what.into();
        move |e| Self::Api {
            what,
            message: e.to_string(),
        }
    }
}

/// The shape of a cluster: its node pools and how slow the slow pool is.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Node pools kwok manages.
    pub pools: Vec<NodePool>,
    /// How long pods on the slow pool wait before they are Ready.
    pub slow_ready_delay: Duration,
    /// How long the whole start may take.
    pub start_limit: Duration,
    /// API QPS of kube-controller-manager and kube-scheduler (raised for the benchmark).
    pub controller_qps: u32,
}

impl Default for ClusterOptions {
    /// Three 32-core CPU nodes, two A100 80 GB nodes with 8 GPUs each, one A100 40 GB node with
    /// 2 GPUs, and one slow CPU node (tainted, pods Ready after 4 s).
    fn default() -> Self {
        let pool = |prefix, count, cpus, gpus, product: &str| NodePool {
            prefix,
            count,
            cpus,
            gpus,
            gpu_product: product.to_owned(),
            labels: Vec::new(),
            taints: Vec::new(),
        };
        let mut slow = pool("kwok-slow", 1, 32, 0, "");
        slow.labels
            .push((SLOW_POOL_LABEL.to_owned(), SLOW_POOL.to_owned()));
        slow.taints.push(SLOW_POOL_LABEL.to_owned());
        Self {
            pools: vec![
                pool("kwok-cpu", 3, 32, 0, ""),
                pool("kwok-a100-80gb", 2, 96, 8, A100_80GB),
                pool("kwok-a100-40gb", 1, 96, 2, A100_40GB),
                slow,
            ],
            slow_ready_delay: Duration::from_secs(4),
            start_limit: Duration::from_secs(180),
            controller_qps: 50,
        }
    }
}

/// One running component process; killed when dropped.
struct Component {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Drop for Component {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The processes of a cluster this process started, stopped in reverse start order.
#[derive(Default)]
struct Components(Vec<Component>);

impl Drop for Components {
    fn drop(&mut self) {
        while let Some(c) = self.0.pop() {
            drop(c);
        }
    }
}

/// The last `lines` lines of a log, for error messages.
fn tail(path: &Path, lines: usize) -> String {
    let mut text = String::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        let _ = f.seek(SeekFrom::Start(len.saturating_sub(16 * 1024)));
        let _ = f.read_to_string(&mut text);
    }
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn free_port() -> Result<u16, ClusterError> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| ClusterError::Spawn {
        name: "a free port".into(),
        source: e,
    })?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| ClusterError::Spawn {
            name: "a free port".into(),
            source: e,
        })
}

/// A kubeconfig for `server` trusting `ca_pem`, authenticating with a client certificate or
/// a bearer token.
pub fn kubeconfig(server: &str, ca_pem: &str, user: &KubeconfigUser<'_>) -> String {
    use base64::Engine as _;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let user = match user {
        KubeconfigUser::Certificate { cert_pem, key_pem } => json!({
            "client-certificate-data": b64(cert_pem),
            "client-key-data": b64(key_pem),
        }),
        KubeconfigUser::Token(t) => json!({ "token": t }),
    };
    let doc = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "grokcast-e2e", "cluster": {
            "server": server,
            "certificate-authority-data": b64(ca_pem),
        }}],
        "users": [{"name": "user", "user": user}],
        "contexts": [{"name": "grokcast-e2e", "context": {"cluster": "grokcast-e2e", "user": "user"}}],
        "current-context": "grokcast-e2e",
    });
    serde_yaml::to_string(&doc).unwrap_or_default()
}

/// How a kubeconfig authenticates.
pub enum KubeconfigUser<'a> {
    /// A client certificate and key (PEM).
    Certificate {
        /// Certificate PEM.
        cert_pem: &'a str,
        /// Key PEM.
        key_pem: &'a str,
    },
    /// A bearer token (a service account's).
    Token(&'a str),
}

/// A kube client from a kubeconfig file.
pub async fn client_from(path: &Path) -> Result<kube::Client, ClusterError> {
    // With more than one rustls provider compiled into a test binary, rustls cannot pick one
    // itself; kube is built with ring, so choose it.
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
    let err = |e: &dyn std::fmt::Display| ClusterError::Api {
        what: format!("a client from {}", path.display()),
        message: e.to_string(),
    };
    let kc = kube::config::Kubeconfig::read_from(path).map_err(|e| err(&e))?;
    let cfg = kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
        .await
        .map_err(|e| err(&e))?;
    kube::Client::try_from(cfg).map_err(|e| err(&e))
}

/// What `cluster.json` in a cluster's directory says: how to reach it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ClusterInfo {
    /// The API server's URL.
    pub server: String,
    /// The admin kubeconfig (system:masters).
    pub kubeconfig: PathBuf,
    /// The CA certificate PEM.
    pub ca_pem: String,
    /// The API server's audit log (one JSON event a line).
    pub audit_log: PathBuf,
    /// The components' logs.
    pub logs: PathBuf,
    /// The process that owns the components.
    pub pid: u32,
}

/// A running test cluster: one this process started ([`Cluster::start`]) or the shared one
/// of this test binary ([`Cluster::shared`]).
pub struct Cluster {
    info: ClusterInfo,
    dir: PathBuf,
    /// Present when this process started the components; they stop when it is dropped.
    _components: Option<Components>,
    /// The volume provisioner, when this process started the components.
    provisioner: Option<tokio::task::JoinHandle<()>>,
    /// Present when attached to the shared daemon: a shared lock that tells it this process
    /// still uses the cluster.
    _user: Option<std::fs::File>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("server", &self.info.server)
            .field("dir", &self.dir)
            .finish()
    }
}

struct Spawner<'a> {
    logs: &'a Path,
    components: Components,
}

impl Spawner<'_> {
    fn spawn(&mut self, name: &'static str, args: &[String]) -> Result<(), ClusterError> {
        let bin = binary(name)?;
        let log = self.logs.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).map_err(|e| ClusterError::io(&log, e))?;
        let err_file = file.try_clone().map_err(|e| ClusterError::io(&log, e))?;
        let mut cmd = Command::new(&bin);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(err_file);
        die_with_parent(&mut cmd);
        let child = cmd.spawn().map_err(|e| ClusterError::Spawn {
            name: name.into(),
            source: e,
        })?;
        self.components.0.push(Component { name, child, log });
        Ok(())
    }

    /// Fails when a component has exited: a port taken, a bad flag.
    fn check_alive(&mut self) -> Result<(), ClusterError> {
        for c in &mut self.components.0 {
            if let Ok(Some(status)) = c.child.try_wait() {
                return Err(ClusterError::Component {
                    what: format!("{} exited ({status})", c.name),
                    log: c.log.clone(),
                    tail: tail(&c.log, 30),
                });
            }
        }
        Ok(())
    }
}

/// Components get SIGKILL when the thread that started them ends, so a killed test or
/// daemon never leaves an API server behind.
fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt as _;
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent; it is the only
    // call made between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// The API server's audit policy: one Metadata-level event per request of the clients under
/// test (the operator, tests, kubectl, helm), none for the control plane's own components,
/// so request counts per user and per field manager come from the real server.
const AUDIT_POLICY: &str = r#"apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: None
  users: [system:kube-controller-manager, system:kube-scheduler, system:apiserver, grokcast-e2e-kwok]
- level: None
  userGroups: [system:nodes, "system:serviceaccounts:kube-system"]
- level: None
  nonResourceURLs: ["/readyz*", "/livez*", "/healthz*", "/version"]
- level: Metadata
"#;

async fn wait_until<F, Fut>(
    what: &str,
    limit: Duration,
    spawner: &mut Spawner<'_>,
    log: &Path,
    mut check: F,
) -> Result<(), ClusterError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        spawner.check_alive()?;
        if check().await {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(ClusterError::Component {
                what: format!("{what} within {limit:?}"),
                log: log.to_owned(),
                tail: tail(log, 30),
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

impl Cluster {
    /// Starts a cluster whose files (certificates, etcd's data, kubeconfigs, logs) live in
    /// `dir`. The components stop when the returned value is dropped, or when the thread
    /// that called this ends.
    pub async fn start(dir: &Path, opts: &ClusterOptions) -> Result<Self, ClusterError> {
        let started = Instant::now();
        let deadline = started + opts.start_limit;
        let left = || deadline.saturating_duration_since(Instant::now());
        for sub in ["pki", "logs", "etcd", "kubeconfigs"] {
            let p = dir.join(sub);
            std::fs::create_dir_all(&p).map_err(|e| ClusterError::io(&p, e))?;
        }
        let logs = dir.join("logs");
        let ca = pki::Authority::new()?;
        let pki = ca.write(&dir.join("pki"))?;
        let ca_pem = ca.cert_pem();
        let write = |name: &str, text: &str| -> Result<PathBuf, ClusterError> {
            let p = dir.join(name);
            std::fs::write(&p, text).map_err(|e| ClusterError::io(&p, e))?;
            Ok(p)
        };
        let mut spawner = Spawner {
            logs: &logs,
            components: Components::default(),
        };
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes()).map_err(
                |e| ClusterError::Pki {
                    what: "CA for the readiness client",
                    message: e.to_string(),
                },
            )?)
            .build()
            .map_err(|e| ClusterError::Pki {
                what: "readiness client",
                message: e.to_string(),
            })?;

        // etcd: data on disk without fsync, which a test cluster does not need.
        let (etcd_port, peer_port) = (free_port()?, free_port()?);
        let etcd_url = format!("http://127.0.0.1:{etcd_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        spawner.spawn(
            "etcd",
            &[
                format!("--data-dir={}", dir.join("etcd").display()),
                format!("--listen-client-urls={etcd_url}"),
                format!("--advertise-client-urls={etcd_url}"),
                format!("--listen-peer-urls={peer_url}"),
                format!("--initial-advertise-peer-urls={peer_url}"),
                format!("--initial-cluster=default={peer_url}"),
                "--unsafe-no-fsync".into(),
                "--log-level=warn".into(),
                "--quota-backend-bytes=4294967296".into(),
            ],
        )?;
        let etcd_log = logs.join("etcd.log");
        wait_until("etcd healthy", left(), &mut spawner, &etcd_log, || {
            let http = http.clone();
            let url = format!("{etcd_url}/health");
            async move {
                match http.get(url).send().await {
                    Ok(r) => r.text().await.is_ok_and(|t| t.contains("true")),
                    Err(_) => false,
                }
            }
        })
        .await?;

        // kube-apiserver.
        let api_port = free_port()?;
        let server = format!("https://127.0.0.1:{api_port}");
        let audit_policy = write("audit-policy.yaml", AUDIT_POLICY)?;
        let audit_log = logs.join("audit.log");
        spawner.spawn(
            "kube-apiserver",
            &[
                format!("--etcd-servers={etcd_url}"),
                "--bind-address=127.0.0.1".into(),
                "--advertise-address=127.0.0.1".into(),
                format!("--secure-port={api_port}"),
                format!("--tls-cert-file={}", pki.server_cert.display()),
                format!("--tls-private-key-file={}", pki.server_key.display()),
                format!("--client-ca-file={}", pki.ca_cert.display()),
                "--authorization-mode=Node,RBAC".into(),
                "--enable-admission-plugins=NodeRestriction".into(),
                // As kubeadm and managed clusters run it: Pod Security admission, not this
                // flag, is what keeps privileged pods out of a namespace.
                "--allow-privileged=true".into(),
                format!(
                    "--service-account-key-file={}",
                    pki.service_account_pub.display()
                ),
                format!(
                    "--service-account-signing-key-file={}",
                    pki.service_account_key.display()
                ),
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
                "--service-cluster-ip-range=10.96.0.0/16".into(),
                // The `kubernetes` Service's endpoints may not be loopback, and nothing in
                // the test cluster reaches the API server through the Service.
                "--endpoint-reconciler-type=none".into(),
                format!("--audit-policy-file={}", audit_policy.display()),
                format!("--audit-log-path={}", audit_log.display()),
                "--audit-log-maxbackup=0".into(),
                "--profiling=false".into(),
                "--v=0".into(),
            ],
        )?;
        let api_log = logs.join("kube-apiserver.log");
        wait_until(
            "kube-apiserver ready",
            left(),
            &mut spawner,
            &api_log,
            || {
                let http = http.clone();
                let url = format!("{server}/readyz");
                async move {
                    match http.get(url).send().await {
                        Ok(r) => r.status().is_success(),
                        Err(_) => false,
                    }
                }
            },
        )
        .await?;

        // Kubeconfigs: an administrator for tests and people, one identity per component.
        let kubeconfig_for = |file: &str, user: &str, groups: &[&str]| {
            let cert = ca.client(user, groups)?;
            write(
                &format!("kubeconfigs/{file}"),
                &kubeconfig(
                    &server,
                    &ca_pem,
                    &KubeconfigUser::Certificate {
                        cert_pem: &cert.cert_pem,
                        key_pem: &cert.key_pem,
                    },
                ),
            )
        };
        let admin = kubeconfig_for(
            "admin.kubeconfig",
            "grokcast-e2e-admin",
            &["system:masters"],
        )?;
        let kcm = kubeconfig_for("kcm.kubeconfig", "system:kube-controller-manager", &[])?;
        let sched = kubeconfig_for("scheduler.kubeconfig", "system:kube-scheduler", &[])?;
        // kwok stands in for every node's kubelet, so it writes any node's and pod's status.
        let kwok_kc = kubeconfig_for("kwok.kubeconfig", "grokcast-e2e-kwok", &["system:masters"])?;
        let qps = opts.controller_qps;
        spawner.spawn(
            "kube-controller-manager",
            &[
                format!("--kubeconfig={}", kcm.display()),
                format!("--authentication-kubeconfig={}", kcm.display()),
                format!("--authorization-kubeconfig={}", kcm.display()),
                "--bind-address=127.0.0.1".into(),
                "--secure-port=0".into(),
                "--leader-elect=false".into(),
                "--use-service-account-credentials=true".into(),
                format!(
                    "--service-account-private-key-file={}",
                    pki.service_account_key.display()
                ),
                format!("--root-ca-file={}", pki.ca_cert.display()),
                "--controllers=*".into(),
                format!("--kube-api-qps={qps}"),
                format!("--kube-api-burst={}", qps * 2),
                "--concurrent-deployment-syncs=10".into(),
                "--concurrent-replicaset-syncs=10".into(),
                "--profiling=false".into(),
            ],
        )?;
        spawner.spawn(
            "kube-scheduler",
            &[
                format!("--kubeconfig={}", sched.display()),
                format!("--authentication-kubeconfig={}", sched.display()),
                format!("--authorization-kubeconfig={}", sched.display()),
                "--bind-address=127.0.0.1".into(),
                "--secure-port=0".into(),
                "--leader-elect=false".into(),
                format!("--kube-api-qps={}", qps * 2),
                format!("--kube-api-burst={}", qps * 4),
                "--profiling=false".into(),
            ],
        )?;
        let slow_nodes: Vec<String> = opts
            .pools
            .iter()
            .filter(|p| {
                p.labels
                    .iter()
                    .any(|(k, v)| k == SLOW_POOL_LABEL && v == SLOW_POOL)
            })
            .flat_map(|p| p.names())
            .collect();
        let kwok_config = write(
            "kwok.yaml",
            &kwok::config(&slow_nodes, opts.slow_ready_delay),
        )?;
        spawner.spawn(
            "kwok",
            &[
                format!("--kubeconfig={}", kwok_kc.display()),
                format!("--config={}", kwok_config.display()),
                format!(
                    "--manage-nodes-with-annotation-selector={}=fake",
                    kwok::MANAGED_ANNOTATION
                ),
                // Room for the benchmark's thousands of pods; these addresses are never dialled.
                "--cidr=10.128.0.1/12".into(),
                "--node-ip=10.127.0.1".into(),
                "--node-lease-duration-seconds=40".into(),
                "--v=WARN".into(),
            ],
        )?;

        let client = client_from(&admin).await?;
        let provisioner = tokio::spawn(volumes::run(client.clone()));
        let nodes: Api<Node> = Api::all(client.clone());
        for pool in &opts.pools {
            for node in pool.nodes() {
                let name = node["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                let node: Node = serde_json::from_value(node).map_err(|e| ClusterError::Api {
                    what: format!("node {name}"),
                    message: e.to_string(),
                })?;
                nodes
                    .create(&PostParams::default(), &node)
                    .await
                    .map_err(ClusterError::api(format!("creating node {name}")))?;
            }
        }
        let node_count = opts.pools.iter().map(|p| p.count as usize).sum::<usize>();
        let kwok_log = logs.join("kwok.log");
        wait_until("every node Ready", left(), &mut spawner, &kwok_log, || {
            let nodes = nodes.clone();
            async move {
                let Ok(list) = nodes.list(&Default::default()).await else {
                    return false;
                };
                list.items
                    .iter()
                    .filter(|n| {
                        n.status
                            .as_ref()
                            .and_then(|s| s.conditions.as_ref())
                            .is_some_and(|cs| {
                                cs.iter().any(|c| c.type_ == "Ready" && c.status == "True")
                            })
                    })
                    .count()
                    >= node_count
            }
        })
        .await?;
        // The default ServiceAccount appears in every namespace once the controller runs;
        // pods cannot be created before, so wait for the first one.
        let kcm_log = logs.join("kube-controller-manager.log");
        let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), "default");
        wait_until(
            "the default ServiceAccount",
            left(),
            &mut spawner,
            &kcm_log,
            || {
                let sas = sas.clone();
                async move { matches!(sas.get_opt("default").await, Ok(Some(_))) }
            },
        )
        .await?;
        tracing::info!(
            server,
            seconds = started.elapsed().as_secs_f64(),
            "test cluster ready"
        );
        Ok(Self {
            info: ClusterInfo {
                server,
                kubeconfig: admin,
                ca_pem,
                audit_log,
                logs: logs.clone(),
                pid: std::process::id(),
            },
            dir: dir.to_owned(),
            _components: Some(spawner.components),
            provisioner: Some(provisioner),
            _user: None,
        })
    }

    /// How to reach this cluster.
    pub fn info(&self) -> &ClusterInfo {
        &self.info
    }

    /// The administrator's kubeconfig (`system:masters`), for kubectl and helm.
    pub fn kubeconfig_path(&self) -> &Path {
        &self.info.kubeconfig
    }

    /// The API server's URL.
    pub fn server(&self) -> &str {
        &self.info.server
    }

    /// The directory holding the cluster's files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// An administrator client.
    pub async fn client(&self) -> Result<kube::Client, ClusterError> {
        client_from(&self.info.kubeconfig).await
    }

    /// The API server's audit log, to count requests per user, verb and field manager.
    pub fn audit(&self) -> AuditLog {
        AuditLog::new(self.info.audit_log.clone())
    }

    /// A `kubectl` command for this cluster as administrator.
    pub fn kubectl(&self) -> Result<Command, ClusterError> {
        let mut cmd = Command::new(binary("kubectl")?);
        cmd.arg("--kubeconfig").arg(&self.info.kubeconfig);
        Ok(cmd)
    }

    /// A `helm` command for this cluster as administrator, with its caches and config in
    /// the cluster's directory so tests never touch the user's.
    pub fn helm(&self) -> Result<Command, ClusterError> {
        let mut cmd = Command::new(binary("helm")?);
        let home = self.dir.join("helm");
        cmd.arg("--kubeconfig")
            .arg(&self.info.kubeconfig)
            .env("HELM_CACHE_HOME", home.join("cache"))
            .env("HELM_CONFIG_HOME", home.join("config"))
            .env("HELM_DATA_HOME", home.join("data"));
        Ok(cmd)
    }
}

/// Stops the volume provisioner; the components stop as their fields drop.
impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(p) = self.provisioner.take() {
            p.abort();
        }
    }
}

impl Cluster {
    /// A fresh namespace named `<prefix>-<random>`, deleted when the returned guard drops;
    /// when the test is failing then, the components' logs are kept (the path is printed).
    pub async fn namespace(&self, prefix: &str) -> Result<TestNamespace, ClusterError> {
        let client = self.client().await?;
        let name = format!("{prefix}-{:08x}", rand_u32());
        let ns: Namespace =
            serde_json::from_value(json!({"metadata": {"name": name}})).map_err(|e| {
                ClusterError::Api {
                    what: "namespace".into(),
                    message: e.to_string(),
                }
            })?;
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .map_err(ClusterError::api(format!("creating namespace {name}")))?;
        // Admission refuses pods until the serviceaccount controller has made the namespace's
        // `default` ServiceAccount, and the Job controller then backs off for seconds to a
        // minute; on a loaded machine that outlived a test's wait. Tests start once it exists.
        let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), &name);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(_)) = sas.get_opt("default").await {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ClusterError::Api {
                    what: format!("namespace {name}"),
                    message: "its default ServiceAccount did not appear within 60 s".into(),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(TestNamespace {
            name,
            client,
            kubectl: binary("kubectl")?,
            kubeconfig: self.info.kubeconfig.clone(),
            logs: self.info.logs.clone(),
        })
    }

    /// A client that authenticates as ServiceAccount `namespace/name` with a token the API
    /// server issues (TokenRequest, one hour), so RBAC applies to it as to a pod. Its
    /// kubeconfig is written to the returned path too, for kubectl `--kubeconfig`.
    pub async fn service_account_client(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<(kube::Client, PathBuf), ClusterError> {
        let admin = self.client().await?;
        let sas: Api<ServiceAccount> = Api::namespaced(admin, namespace);
        let req = TokenRequest {
            spec: TokenRequestSpec {
                audiences: Vec::new(),
                expiration_seconds: Some(3600),
                ..Default::default()
            },
            ..Default::default()
        };
        let issued: TokenRequest = sas
            .create_subresource("token", name, &PostParams::default(), &req)
            .await
            .map_err(ClusterError::api(format!(
                "a token for ServiceAccount {namespace}/{name}"
            )))?;
        let token = issued.status.map(|s| s.token).unwrap_or_default();
        let path = self
            .dir
            .join("kubeconfigs")
            .join(format!("sa-{namespace}-{name}.kubeconfig"));
        std::fs::write(
            &path,
            kubeconfig(
                &self.info.server,
                &self.info.ca_pem,
                &KubeconfigUser::Token(&token),
            ),
        )
        .map_err(|e| ClusterError::io(&path, e))?;
        Ok((client_from(&path).await?, path))
    }

    /// Server-side applies each object of a multi-document YAML stream as administrator,
    /// under field manager `manager`. Documents that are empty (a template that rendered
    /// nothing) are skipped.
    pub async fn apply_yaml(&self, yaml: &str, manager: &str) -> Result<(), ClusterError> {
        let client = self.client().await?;
        apply_documents(&client, yaml, manager).await
    }
}

/// Server-side applies every document in `yaml` through `client`'s discovery.
pub async fn apply_documents(
    client: &kube::Client,
    yaml: &str,
    manager: &str,
) -> Result<(), ClusterError> {
    use kube::discovery::{Discovery, Scope};
    let discovery = Discovery::new(client.clone())
        .run()
        .await
        .map_err(ClusterError::api("API discovery"))?;
    for doc in serde_yaml::Deserializer::from_str(yaml) {
        let value: serde_json::Value = match serde::Deserialize::deserialize(doc) {
            Ok(v) => v,
            Err(e) => {
                return Err(ClusterError::Api {
                    what: "parsing YAML".into(),
                    message: e.to_string(),
                });
            }
        };
        if value.is_null() {
            continue;
        }
        let obj: kube::api::DynamicObject =
            serde_json::from_value(value).map_err(|e| ClusterError::Api {
                what: "reading an object".into(),
                message: e.to_string(),
            })?;
        let Some(types) = obj.types.as_ref() else {
            continue;
        };
        let gvk = kube::api::GroupVersionKind::try_from(types).map_err(|e| ClusterError::Api {
            what: "object type".into(),
            message: e.to_string(),
        })?;
        let name = obj.metadata.name.clone().unwrap_or_default();
        let (ar, caps) = discovery
            .resolve_gvk(&gvk)
            .ok_or_else(|| ClusterError::Api {
                what: format!("{} {name}", gvk.kind),
                message: "kind not served".into(),
            })?;
        let api: Api<kube::api::DynamicObject> = match caps.scope {
            Scope::Namespaced => Api::namespaced_with(
                client.clone(),
                obj.metadata.namespace.as_deref().unwrap_or("default"),
                &ar,
            ),
            Scope::Cluster => Api::all_with(client.clone(), &ar),
        };
        api.patch(
            &name,
            &PatchParams::apply(manager).force(),
            &Patch::Apply(&obj),
        )
        .await
        .map_err(ClusterError::api(format!("applying {} {name}", gvk.kind)))?;
    }
    Ok(())
}

fn rand_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.write_u32(std::process::id());
    h.finish() as u32
}

/// A namespace for one test. Dropping it deletes the namespace (and so everything in it);
/// if the test is panicking at that point, the cluster components' logs and the namespace's
/// objects are first copied to `${GROKCAST_E2E_LOGS:-$TMPDIR/grokcast-e2e-logs}/<namespace>`.
pub struct TestNamespace {
    name: String,
    client: kube::Client,
    kubectl: PathBuf,
    kubeconfig: PathBuf,
    logs: PathBuf,
}

impl TestNamespace {
    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The administrator client the namespace was made with.
    pub fn client(&self) -> &kube::Client {
        &self.client
    }

    fn keep_logs(&self) {
        let dest = std::env::var_os("GROKCAST_E2E_LOGS")
            .map(PathBuf::from)
            .unwrap_or_else(|| std::env::temp_dir().join("grokcast-e2e-logs"))
            .join(&self.name);
        if std::fs::create_dir_all(&dest).is_err() {
            return;
        }
        if let Ok(entries) = std::fs::read_dir(&self.logs) {
            for e in entries.flatten() {
                let _ = std::fs::copy(e.path(), dest.join(e.file_name()));
            }
        }
        if let Ok(out) = Command::new(&self.kubectl)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args([
                "get",
                "all,events,voiceagents,modelpools,jobs,pvc",
                "-o",
                "yaml",
                "-n",
            ])
            .arg(&self.name)
            .output()
        {
            let _ = std::fs::write(dest.join("objects.yaml"), out.stdout);
        }
        eprintln!(
            "test failed: cluster logs and namespace objects kept in {}",
            dest.display()
        );
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.keep_logs();
        }
        // A synchronous kubectl: Drop cannot await, and the test's runtime may be ending.
        let _ = Command::new(&self.kubectl)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(["delete", "namespace", "--wait=false", "--ignore-not-found"])
            .arg(&self.name)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Deletes a namespace and waits until it is gone.
pub async fn delete_namespace(client: &kube::Client, name: &str) -> Result<(), ClusterError> {
    let api: Api<Namespace> = Api::all(client.clone());
    let _ = api.delete(name, &DeleteParams::background()).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if matches!(api.get_opt(name).await, Ok(None)) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(ClusterError::Api {
        what: format!("deleting namespace {name}"),
        message: "still there after 60 s".into(),
    })
}
