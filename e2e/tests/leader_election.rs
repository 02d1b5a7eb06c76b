//! Leader election between operator processes on the real test cluster: replicas that are
//! killed, frozen with SIGSTOP, and cut off the API server mid-lease. Each replica is its own
//! process (`grokcast-e2e operator`, the operator's command line), talks to the API server
//! through its own [`StallProxy`], and authenticates as the chart's ServiceAccount; the
//! API server's audit log, where each replica's User-Agent names it, says who wrote what.
//!
//! What must hold: exactly one writer at a time; a standby takes over within the lease
//! duration plus one retry; a leader that cannot renew stops writing (and exits) before its
//! lease expires; a replica frozen past its deadline writes nothing when it wakes.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use grokcast_crds::{ModelPool, VoiceAgent, condition};
use grokcast_e2e::cluster::{AuditEntry, AuditMark};
use grokcast_e2e::project::Project;
use grokcast_e2e::proxy::StallProxy;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use tokio::process::{Child, Command};

const LEASE: &str = "grokcast-operator-leader";
/// The operator's defaults (client-go's): 15 s lease, 10 s renew deadline, 2 s retry.
const LEASE_DURATION: Duration = Duration::from_secs(15);
const RENEW_DEADLINE: Duration = Duration::from_secs(10);
const RETRY: Duration = Duration::from_secs(2);
/// What a loaded 2-core machine adds to a takeover: polling, process scheduling, a slow
/// API round trip. The bound checked is the protocol's, not a performance figure.
const SLACK: Duration = Duration::from_secs(8);
const WAIT: Duration = Duration::from_secs(60);

fn samples() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../config/samples")
}

const POLL: Duration = Duration::from_millis(100);

/// One operator process and the proxy between it and the API server.
struct Replica {
    identity: String,
    child: Child,
    proxy: StallProxy,
}

impl Replica {
    fn pid(&self) -> libc::pid_t {
        libc::pid_t::try_from(self.child.id().expect("running")).expect("pid fits")
    }

    fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill(2) on our own child's pid; no memory is shared.
        let rc = unsafe { libc::kill(self.pid(), signal) };
        assert_eq!(rc, 0, "signal {signal} to {}", self.identity);
    }

    /// Waits for the process to exit; its status.
    async fn exited(&mut self, limit: Duration) -> std::process::ExitStatus {
        tokio::time::timeout(limit, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("{} exits within {limit:?}", self.identity))
            .expect("wait")
    }
}

struct Scenario {
    p: Project,
    dir: PathBuf,
}

impl Scenario {
    async fn start() -> Self {
        let p = Project::shared(env!("CARGO_BIN_EXE_grokcast-e2e"), "lease", WAIT).await;
        let dir = std::env::temp_dir()
            .join("grokcast-e2e-logs")
            .join(p.ns())
            .join("replicas");
        std::fs::create_dir_all(&dir).unwrap();
        Self { p, dir }
    }

    fn ns(&self) -> &str {
        self.p.ns()
    }

    fn admin(&self) -> Client {
        self.p.admin.clone()
    }

    /// Starts replica `identity` as the chart's ServiceAccount, through a fresh proxy.
    async fn replica(&self, identity: &str) -> Replica {
        let server = self.p.cluster.server();
        let upstream = server
            .trim_start_matches("https://")
            .parse()
            .expect("the API server listens on ip:port");
        let proxy = StallProxy::start(upstream).await.expect("proxy");
        let kubeconfig = std::fs::read_to_string(&self.p.operator.kubeconfig)
            .unwrap()
            .replace(server, &proxy.url());
        let path = self.dir.join(format!("{identity}.kubeconfig"));
        std::fs::write(&path, kubeconfig).unwrap();
        let log = std::fs::File::create(self.dir.join(format!("{identity}.log"))).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_grokcast-e2e"))
            .arg("operator")
            .args(["--pod-name", identity])
            .args(["--lease-name", LEASE, "--lease-namespace", self.ns()])
            .args(["--watch-namespaces", self.ns()])
            .args(["--http-addr", "127.0.0.1:0", "--log", "info"])
            .env("KUBECONFIG", &path)
            .env_remove("GROKCAST_PROMETHEUS_URL")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("start the operator");
        Replica {
            identity: identity.to_owned(),
            child,
            proxy,
        }
    }

    async fn holder(&self) -> Option<String> {
        let leases: Api<Lease> = Api::namespaced(self.admin(), self.ns());
        leases.get_opt(LEASE).await.ok()??.spec?.holder_identity
    }

    /// Waits until `identity` holds the lease; when it was seen to.
    async fn wait_holder(&self, identity: &str, limit: Duration) -> Instant {
        grokcast_e2e::eventually(
            &format!("{identity} holds the lease"),
            limit,
            POLL,
            || async { (self.holder().await.as_deref() == Some(identity)).then(Instant::now) },
        )
        .await
    }

    async fn apply_samples(&self) {
        for f in ["gemma-27b.yaml", "whisper.yaml", "csm.yaml"] {
            let mut pool: ModelPool =
                serde_yaml::from_str(&std::fs::read_to_string(samples().join(f)).unwrap()).unwrap();
            pool.metadata.namespace = Some(self.ns().to_owned());
            Api::<ModelPool>::namespaced(self.admin(), self.ns())
                .patch(
                    &pool.name_any(),
                    &PatchParams::apply("kubectl").force(),
                    &Patch::Apply(&pool),
                )
                .await
                .unwrap();
        }
        let mut agent: VoiceAgent = serde_yaml::from_str(
            &std::fs::read_to_string(samples().join("receptionist.yaml")).unwrap(),
        )
        .unwrap();
        agent.metadata.namespace = Some(self.ns().to_owned());
        self.agents()
            .patch(
                "receptionist",
                &PatchParams::apply("kubectl").force(),
                &Patch::Apply(&agent),
            )
            .await
            .unwrap();
    }

    fn agents(&self) -> Api<VoiceAgent> {
        Api::namespaced(self.admin(), self.ns())
    }

    /// Changes the greeting: the leader must write it into the agent's ConfigMap.
    async fn set_greeting(&self, greeting: &str) {
        self.agents()
            .patch(
                "receptionist",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"persona": {"greeting": greeting}}})),
            )
            .await
            .unwrap();
    }

    async fn wait_greeting(&self, greeting: &str, limit: Duration) {
        let maps: Api<ConfigMap> = Api::namespaced(self.admin(), self.ns());
        grokcast_e2e::eventually(
            &format!("the agent ConfigMap says {greeting:?}"),
            limit,
            POLL,
            || async {
                let cm = maps.get_opt("receptionist-agent").await.ok()??;
                cm.data?
                    .values()
                    .any(|v| v.contains(greeting))
                    .then_some(())
            },
        )
        .await;
    }

    async fn wait_ready(&self) {
        grokcast_e2e::eventually("receptionist Ready=True", WAIT, POLL, || async {
            let a = self.agents().get_opt("receptionist").await.ok()??;
            a.status?
                .conditions
                .iter()
                .any(|c| c.type_ == condition::READY && c.status == "True")
                .then_some(())
        })
        .await;
    }

    /// The operator's writes since `mark`, as (replica, entry), in the server's order.
    fn writes(&self, mark: AuditMark) -> Vec<(String, AuditEntry)> {
        self.p
            .cluster
            .audit()
            .by_user(mark, &self.p.operator.user)
            .into_iter()
            .filter(AuditEntry::is_write)
            .map(|e| (replica_of(&e.user_agent), e))
            .collect()
    }
}

/// The replica a User-Agent `grokcast-operator/<version> (<identity>)` names.
fn replica_of(user_agent: &str) -> String {
    user_agent
        .split_once('(')
        .and_then(|(_, rest)| rest.split_once(')'))
        .map(|(identity, _)| identity.to_owned())
        .unwrap_or_else(|| format!("unnamed: {user_agent:?}"))
}

/// Exactly one writer at a time: the writers, in the order their first writes reached the
/// server, each writing in one unbroken run (a replica that lost the lease never writes again).
fn writer_runs(writes: &[(String, AuditEntry)]) -> Vec<String> {
    let mut runs: Vec<String> = Vec::new();
    for (who, e) in writes {
        if runs.last() != Some(who) {
            assert!(
                !runs.contains(who),
                "{who} wrote again ({} {}/{} {}) after {} had taken over; writers so far: {runs:?}",
                e.verb,
                e.resource,
                e.name,
                e.subresource,
                runs.last().map_or("another replica", String::as_str),
            );
            runs.push(who.clone());
        }
    }
    runs
}

fn takeover_bound() -> Duration {
    LEASE_DURATION + RETRY + SLACK
}

#[tokio::test]
async fn one_writer_through_kill_freeze_and_a_stalled_renew() {
    let s = Scenario::start().await;
    let start = s.p.cluster.audit().mark();

    // Two replicas; whichever wins leads, and only it writes.
    let mut a = s.replica("replica-a").await;
    s.wait_holder("replica-a", WAIT).await;
    let mut b = s.replica("replica-b").await;
    s.apply_samples().await;
    s.wait_ready().await;
    s.set_greeting("Hello from the first leader.").await;
    s.wait_greeting("Hello from the first leader.", WAIT).await;
    assert_eq!(
        writer_runs(&s.writes(start)),
        ["replica-a"],
        "only the leader writes"
    );

    // Kill the leader: the standby takes over within a lease duration plus one retry.
    let killed = Instant::now();
    a.signal(libc::SIGKILL);
    assert!(!a.exited(WAIT).await.success());
    let took = s.wait_holder("replica-b", takeover_bound()).await - killed;
    eprintln!("takeover after SIGKILL: {took:?}");
    s.set_greeting("Hello after the kill.").await;
    s.wait_greeting("Hello after the kill.", WAIT).await;

    // A new standby; then freeze the leader with SIGSTOP.
    let mut c = s.replica("replica-c").await;
    // Let the new process start and read the lease, so the bound counts from the freeze
    // and not from the standby's start.
    tokio::time::sleep(RETRY * 2).await;
    let frozen = Instant::now();
    b.signal(libc::SIGSTOP);
    let took = s.wait_holder("replica-c", takeover_bound()).await - frozen;
    eprintln!("takeover after SIGSTOP: {took:?}");
    s.set_greeting("Hello while the old leader sleeps.").await;
    s.wait_greeting("Hello while the old leader sleeps.", WAIT)
        .await;
    // Wake the frozen one: it finds its deadline long past, writes nothing, and exits.
    let woken = s.p.cluster.audit().mark();
    b.signal(libc::SIGCONT);
    let status = b.exited(WAIT).await;
    assert!(!status.success(), "a replica that lost the lease exits");
    let late: Vec<_> = s
        .writes(woken)
        .into_iter()
        .filter(|(who, _)| who == "replica-b")
        .collect();
    assert!(
        late.is_empty(),
        "the woken replica wrote after its lease was gone: {late:?}"
    );

    // A new standby; then cut the leader off the API server mid-lease. It must stop
    // writing (and exit) before the lease can expire and the standby take over.
    let d = s.replica("replica-d").await;
    tokio::time::sleep(RETRY * 2).await;
    let cut = Instant::now();
    c.proxy.stall();
    let status = c.exited(LEASE_DURATION + SLACK).await;
    let stopped = cut.elapsed();
    assert!(!status.success());
    let took = s.wait_holder("replica-d", takeover_bound()).await - cut;
    eprintln!("cut-off leader exited after {stopped:?}; takeover after {took:?}");
    assert!(
        stopped < took,
        "the cut-off leader must stop before the standby may lead ({stopped:?} vs {took:?})"
    );
    assert!(
        stopped <= RENEW_DEADLINE + SLACK,
        "it stops at its renew deadline ({RENEW_DEADLINE:?}), not later: {stopped:?}"
    );
    s.set_greeting("Hello from the last leader.").await;
    s.wait_greeting("Hello from the last leader.", WAIT).await;

    assert_eq!(
        writer_runs(&s.writes(start)),
        ["replica-a", "replica-b", "replica-c", "replica-d"],
        "one writer at a time, each in one run"
    );
    drop(d);
}

#[test]
fn user_agents_name_the_replica() {
    assert_eq!(
        replica_of("grokcast-operator/0.1.0 (replica-a)"),
        "replica-a"
    );
    assert!(replica_of("kubectl/v1.37.2").starts_with("unnamed"));
}
