//! One cluster per test binary, shared by its tests although nextest runs each test in a
//! process of its own.
//!
//! The cluster lives in a daemon (`grokcast-e2e cluster up --dir D --exit-when-idle S`) that
//! the first test process starts. Its directory `D` is keyed by the test binary and the
//! nextest run, and holds two lock files that outlive every cluster:
//! - `start.lock`: held exclusively while a test process checks for, or starts, the daemon,
//!   so concurrent tests start one cluster, not several;
//! - `users.lock`: every test process holds a shared lock on it for as long as it lives (the
//!   kernel drops the lock when the process ends, however it ends). The daemon tries an
//!   exclusive lock every half second; once it has got it for [`DAEMON_IDLE_EXIT`] in a
//!   row, no test has used the cluster for that long, and it tears the cluster down.
//!
//! The daemon writes `cluster.json` ([`super::ClusterInfo`]) once the cluster is ready and
//! removes it before tearing down, so its presence means "ready".

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::{Cluster, ClusterError, ClusterInfo, ClusterOptions};

/// How long the shared cluster outlives its last user. Long enough to bridge the gap
/// between one test process and the next, short enough not to linger after the run.
pub const DAEMON_IDLE_EXIT: Duration = Duration::from_secs(20);

fn open(path: &Path) -> Result<File, ClusterError> {
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| ClusterError::io(path, e))
}

fn read_info(dir: &Path) -> Option<ClusterInfo> {
    let text = std::fs::read_to_string(dir.join("cluster.json")).ok()?;
    let info: ClusterInfo = serde_json::from_str(&text).ok()?;
    // A daemon killed without tearing down leaves its file behind: check it still runs.
    Path::new(&format!("/proc/{}", info.pid))
        .exists()
        .then_some(info)
}

/// The directory of this test binary's shared cluster in this test run.
fn shared_dir() -> PathBuf {
    use std::hash::{Hash, Hasher};
    let exe = std::env::current_exe().unwrap_or_default();
    let run = std::env::var("NEXTEST_RUN_ID").unwrap_or_else(|_| std::process::id().to_string());
    let mut h = std::collections::hash_map::DefaultHasher::new();
    exe.hash(&mut h);
    run.hash(&mut h);
    std::env::temp_dir().join(format!("grokcast-e2e-cluster-{:016x}", h.finish()))
}

static SHARED: OnceLock<Result<Cluster, String>> = OnceLock::new();

impl Cluster {
    /// This test binary's shared cluster (with [`ClusterOptions::default`]), started by the
    /// first test that asks, through the daemon binary `daemon` (integration tests pass
    /// `env!("CARGO_BIN_EXE_grokcast-e2e")`). Blocks until it is ready; call it before the
    /// test's own deadlines start.
    pub fn shared(daemon: &Path) -> Result<&'static Cluster, ClusterError> {
        SHARED
            .get_or_init(|| attach(daemon).map_err(|e| e.to_string()))
            .as_ref()
            .map_err(|e| ClusterError::Shared(e.clone()))
    }
}

fn attach(daemon: &Path) -> Result<Cluster, ClusterError> {
    let dir = shared_dir();
    std::fs::create_dir_all(&dir).map_err(|e| ClusterError::io(&dir, e))?;
    let start = open(&dir.join("start.lock"))?;
    start
        .lock()
        .map_err(|e| ClusterError::io(&dir.join("start.lock"), e))?;
    // Tell any daemon that this process uses the cluster before looking for it, so a daemon
    // counting idle time cannot tear down the cluster this process is about to use. A daemon
    // already tearing down holds the exclusive lock: this waits until it is done.
    let users = open(&dir.join("users.lock"))?;
    users
        .lock_shared()
        .map_err(|e| ClusterError::io(&dir.join("users.lock"), e))?;
    let info = match read_info(&dir) {
        Some(info) => info,
        None => start_daemon(daemon, &dir)?,
    };
    drop(start);
    Ok(Cluster {
        info,
        dir,
        _components: None,
        provisioner: None,
        _user: Some(users),
    })
}

fn start_daemon(daemon: &Path, dir: &Path) -> Result<ClusterInfo, ClusterError> {
    use std::os::unix::process::CommandExt as _;
    let _ = std::fs::remove_file(dir.join("cluster.json"));
    let log = dir.join("daemon.log");
    let out = File::create(&log).map_err(|e| ClusterError::io(&log, e))?;
    let err = out.try_clone().map_err(|e| ClusterError::io(&log, e))?;
    // Its own process group and no inherited pipes: the test runner neither kills it with the
    // test's group nor waits for it as a leaked child holding the test's output open.
    let mut child = Command::new(daemon)
        .args(["cluster", "up", "--exit-when-idle"])
        .arg(DAEMON_IDLE_EXIT.as_secs().to_string())
        .arg("--dir")
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .spawn()
        .map_err(|e| ClusterError::Spawn {
            name: daemon.display().to_string(),
            source: e,
        })?;
    let limit = ClusterOptions::default().start_limit + Duration::from_secs(10);
    let deadline = Instant::now() + limit;
    loop {
        if let Some(info) = read_info(dir) {
            // Reaped by nobody else: leave it running, detached.
            std::mem::forget(child);
            return Ok(info);
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(ClusterError::Component {
                what: format!("the cluster daemon exited ({status})"),
                log: log.clone(),
                tail: super::tail(&log, 40),
            });
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            return Err(ClusterError::Component {
                what: format!("the cluster daemon was not ready within {limit:?}"),
                log: log.clone(),
                tail: super::tail(&log, 40),
            });
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The body of `grokcast-e2e cluster up`: starts a cluster in `dir`, writes
/// `cluster.json`, prints how to use it, and runs until interrupted (Ctrl-C, SIGTERM) or,
/// with `idle_exit`, until no test process has held `users.lock` for that long. Tears the
/// cluster down before returning.
pub async fn run_daemon(
    dir: &Path,
    idle_exit: Option<Duration>,
    opts: &ClusterOptions,
) -> Result<(), ClusterError> {
    std::fs::create_dir_all(dir).map_err(|e| ClusterError::io(dir, e))?;
    // Every `up` is a fresh cluster: no etcd data or certificates from an earlier one.
    remove_state(dir);
    let cluster = Cluster::start(dir, opts).await?;
    let info = cluster.info().clone();
    let json = serde_json::to_string_pretty(&info).unwrap_or_default();
    let tmp = dir.join("cluster.json.tmp");
    std::fs::write(&tmp, json).map_err(|e| ClusterError::io(&tmp, e))?;
    std::fs::rename(&tmp, dir.join("cluster.json"))
        .map_err(|e| ClusterError::io(&dir.join("cluster.json"), e))?;
    println!("cluster ready: {}", info.server);
    println!("export KUBECONFIG={}", info.kubeconfig.display());
    println!("logs: {}", info.logs.display());

    let users = open(&dir.join("users.lock"))?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| ClusterError::io(dir, e))?;
    let mut idle_since: Option<Instant> = None;
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            _ = tick.tick() => {}
        }
        let Some(limit) = idle_exit else { continue };
        match users.try_lock() {
            Ok(()) => {
                let since = *idle_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= limit {
                    // Keep the exclusive lock while tearing down: a test that arrives now
                    // waits, then finds no cluster.json and starts a new daemon.
                    let _ = std::fs::remove_file(dir.join("cluster.json"));
                    drop(cluster);
                    remove_state(dir);
                    return Ok(());
                }
                let _ = users.unlock();
            }
            Err(_) => idle_since = None,
        }
    }
    let _ = std::fs::remove_file(dir.join("cluster.json"));
    drop(cluster);
    if idle_exit.is_some() {
        remove_state(dir);
    }
    Ok(())
}

/// Removes what a torn-down cluster leaves in `dir`, except the lock files, which waiting
/// test processes may hold.
fn remove_state(dir: &Path) {
    for sub in ["etcd", "pki", "kubeconfigs", "logs", "helm"] {
        let _ = std::fs::remove_dir_all(dir.join(sub));
    }
    for f in ["audit-policy.yaml", "kwok.yaml"] {
        let _ = std::fs::remove_file(dir.join(f));
    }
}
