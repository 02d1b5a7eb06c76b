//! Operator benchmark on a real cluster (the e2e harness's kube-apiserver, etcd,
//! controller-manager, scheduler and kwok nodes, started by this bench): from cold, N
//! VoiceAgents and M ModelPools (default 1,000 and 200) until every one is Ready, which needs
//! their Deployments' pods scheduled and made Ready by kwok; prints time to converge,
//! reconcile p50/p95, API requests per object, steady-state requests per minute and
//! operator RSS. Requests are counted from the API server's audit log, for the operator's
//! ServiceAccount only (it runs with the chart's RBAC and a token from the API server).
//!
//! The operator runs as its own process (the real `grokcast-operator` binary) so the RSS
//! reported is the operator's alone. Build the operator first; the bench looks for it next
//! to itself:
//!
//! ```text
//! cargo build --release -p grokcast-operator --bin grokcast-operator
//! cargo run --release -p grokcast-e2e --bin operator-bench -- [--agents 1000] [--pools 200]
//! ```
//!
//! With `--autoscale` every VoiceAgent has `scaling`, and the operator runs the latency-SLO
//! autoscaler against Debian's Prometheus, which scrapes a synthetic exporter standing in for
//! the agents' pods (1,000 agent processes do not fit this machine): each agent's turn and
//! stage latency histograms and active calls, under the agent's metric names and labels, with
//! one turn per second per agent at a fixed latency inside the SLO. That is a fleet in steady
//! state, so the steady-state figure is the autoscaler's write budget: the target is zero.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use clap::Parser;
use grokcast_crds::{ModelPool, VoiceAgent, condition};
use grokcast_e2e::cluster::{AuditEntry, Cluster, ClusterOptions, NodePool};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::Client;
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Parser)]
#[command(about = "Time the operator converging N VoiceAgents and M ModelPools from cold")]
struct Args {
    /// VoiceAgents to create.
    #[arg(long, default_value_t = 1000)]
    agents: usize,
    /// ModelPools to create (split evenly across stt, llm and tts).
    #[arg(long, default_value_t = 200)]
    pools: usize,
    /// How long to wait after every object reports Ready before measuring steady state:
    /// the last readiness flips still owe each owner one reconcile, which is convergence
    /// work, not steady-state work.
    #[arg(long, default_value_t = 30)]
    settle_seconds: u64,
    /// How long to watch request counts once settled.
    #[arg(long, default_value_t = 60)]
    steady_seconds: u64,
    /// Give up converging after this many seconds.
    #[arg(long, default_value_t = 300)]
    timeout_seconds: u64,
    /// The operator's log filter (its stderr is passed through).
    #[arg(long, default_value = "warn")]
    operator_log: String,
    /// The operator binary (default: grokcast-operator next to this one).
    #[arg(long, env = "GROKCAST_OPERATOR_BIN")]
    operator_bin: Option<PathBuf>,
    /// Fake CPU nodes (256 cores, 250 pods each) for the agents' and pools' pods.
    #[arg(long, default_value_t = 10)]
    nodes: u32,
    /// Where the cluster keeps its files (default: a fresh temporary directory).
    #[arg(long)]
    cluster_dir: Option<PathBuf>,
    /// Autoscale every VoiceAgent from Prometheus (see the module docs).
    #[arg(long)]
    autoscale: bool,
}

/// Requests by verb, from audit entries.
fn by_verb(entries: &[AuditEntry]) -> std::collections::BTreeMap<String, usize> {
    let mut m = std::collections::BTreeMap::new();
    for e in entries {
        *m.entry(e.verb.clone()).or_insert(0) += 1;
    }
    m
}

const NS: &str = "bench";

fn ready(conds: Option<&[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition]>) -> bool {
    conds.is_some_and(|c| {
        c.iter()
            .any(|c| c.type_ == condition::READY && c.status == "True")
    })
}

fn pool_obj(i: usize) -> ModelPool {
    let role = ["stt", "llm", "tts"][i % 3];
    serde_json::from_value(json!({
        "apiVersion": "grokcast.io/v1alpha1", "kind": "ModelPool",
        "metadata": {"name": format!("pool-{i}"), "namespace": NS},
        "spec": {"engine": "grokcast", "role": role, "model": format!("model-{role}"), "gpu": {"count": 0}, "replicas": 1}
    }))
    .expect("pool")
}

fn agent_obj(i: usize, pools: usize) -> VoiceAgent {
    // Pool k serves role k % 3; pick one of each role.
    let pick = |role: usize| {
        let per_role = pools.div_ceil(3).max(1);
        let k = (i % per_role) * 3 + role;
        format!("pool-{}", if k < pools { k } else { role })
    };
    serde_json::from_value(json!({
        "apiVersion": "grokcast.io/v1alpha1", "kind": "VoiceAgent",
        "metadata": {"name": format!("agent-{i}"), "namespace": NS},
        "spec": {
            "telephony": {"twilio": {"authTokenSecretRef": {"name": "twilio", "key": "authToken"}, "publicUrl": format!("https://a{i}.example.com")}},
            "stt": {"modelPoolRef": pick(0)}, "llm": {"modelPoolRef": pick(1)}, "tts": {"modelPoolRef": pick(2)},
            "replicas": 1
        }
    }))
    .expect("agent")
}

/// [`agent_obj`] with `scaling`: the exporter's 30 calls per agent want exactly one pod.
fn autoscaled_agent_obj(i: usize, pools: usize) -> VoiceAgent {
    let mut agent = agent_obj(i, pools);
    agent.spec.scaling = Some(
        serde_json::from_value(
            json!({"minReplicas": 1, "maxReplicas": 4, "targetCallsPerPod": 40}),
        )
        .expect("scaling"),
    );
    agent
}

/// The synthetic agents' metrics (see the module docs): one exposition per target, each for
/// a slice of the agents so no single scrape is large.
mod fleet {
    use std::net::SocketAddr;
    use std::time::Instant;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Seconds per stage of every turn: endpointing, STT, LLM first token, TTS first audio,
    /// the agent's own; 0.725 s in all, inside the default 800 ms SLO.
    const STAGES: [(&str, f64); 5] = [
        ("endpointing", 0.32),
        ("stt", 0.1),
        ("llm_first_token", 0.2),
        ("tts_first_audio", 0.1),
        ("agent", 0.005),
    ];
    /// Fewer buckets than the agent exports, to keep 1,000 agents' series light: a quantile
    /// needs only the buckets around it.
    const TURN_BUCKETS: [f64; 4] = [0.25, 0.5, 0.75, 1.0];
    const STAGE_BUCKETS: [f64; 4] = [0.01, 0.15, 0.25, 0.5];
    /// Active calls per agent.
    const CALLS: u32 = 30;

    /// Renders agents `agents` as Prometheus text, `elapsed_s` seconds into the run.
    pub fn exposition(namespace: &str, agents: std::ops::Range<usize>, elapsed_s: u64) -> String {
        let mut out = String::new();
        let histogram = |out: &mut String,
                         name: &str,
                         labels: &str,
                         buckets: &[f64],
                         value: f64| {
            for le in buckets {
                let n = if value <= *le { elapsed_s } else { 0 };
                out.push_str(&format!("{name}_bucket{{{labels},le=\"{le}\"}} {n}\n"));
            }
            out.push_str(&format!(
                    "{name}_bucket{{{labels},le=\"+Inf\"}} {elapsed_s}\n{name}_sum{{{labels}}} {}\n{name}_count{{{labels}}} {elapsed_s}\n",
                    value * elapsed_s as f64
                ));
        };
        out.push_str("# TYPE grokcast_turn_latency_seconds histogram\n");
        let total: f64 = STAGES.iter().map(|(_, s)| s).sum();
        for i in agents.clone() {
            let labels = format!("namespace=\"{namespace}\",voiceagent=\"agent-{i}\"");
            histogram(
                &mut out,
                "grokcast_turn_latency_seconds",
                &labels,
                &TURN_BUCKETS,
                total,
            );
        }
        out.push_str("# TYPE grokcast_stage_latency_seconds histogram\n");
        for i in agents.clone() {
            for (stage, seconds) in STAGES {
                let labels =
                    format!("namespace=\"{namespace}\",voiceagent=\"agent-{i}\",stage=\"{stage}\"");
                histogram(
                    &mut out,
                    "grokcast_stage_latency_seconds",
                    &labels,
                    &STAGE_BUCKETS,
                    seconds,
                );
            }
        }
        out.push_str("# TYPE grokcast_active_calls gauge\n");
        for i in agents {
            out.push_str(&format!(
                "grokcast_active_calls{{namespace=\"{namespace}\",voiceagent=\"agent-{i}\"}} {CALLS}\n"
            ));
        }
        out
    }

    /// Serves `/metrics` for `agents` on a free port until the runtime ends.
    pub async fn serve(
        namespace: &'static str,
        agents: std::ops::Range<usize>,
        started: Instant,
    ) -> std::io::Result<SocketAddr> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let agents = agents.clone();
                tokio::spawn(async move {
                    // One request per connection: read its head, answer, close.
                    let mut head = [0u8; 4096];
                    if stream.read(&mut head).await.is_err() {
                        return;
                    }
                    let body = exposition(namespace, agents, started.elapsed().as_secs());
                    let response = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = stream.write_all(response.as_bytes()).await;
                });
            }
        });
        Ok(addr)
    }
}

async fn http_get(addr: &str, path: &str) -> std::io::Result<String> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await?;
    let mut body = String::new();
    s.read_to_string(&mut body).await?;
    Ok(body
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default())
}

/// Quantile from Prometheus histogram buckets (both controllers summed), interpolated
/// linearly inside the bucket as `histogram_quantile` does.
fn quantile(metrics: &str, q: f64) -> Option<f64> {
    let mut buckets: Vec<(f64, f64)> = Vec::new();
    for line in metrics.lines() {
        let Some(rest) = line.strip_prefix("grokcast_operator_reconcile_duration_seconds_bucket{")
        else {
            continue;
        };
        let (labels, value) = rest.split_once("} ")?;
        let le = labels
            .split(',')
            .find_map(|kv| kv.strip_prefix("le=\""))?
            .trim_end_matches('"');
        let le = if le == "+Inf" {
            f64::INFINITY
        } else {
            le.parse().ok()?
        };
        let count: f64 = value.trim().parse().ok()?;
        match buckets.iter_mut().find(|(b, _)| *b == le) {
            Some(b) => b.1 += count,
            None => buckets.push((le, count)),
        }
    }
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = buckets.last()?.1;
    if total == 0.0 {
        return None;
    }
    let rank = q * total;
    let mut prev = (0.0, 0.0);
    for &(le, count) in &buckets {
        if count >= rank {
            if le.is_infinite() {
                return Some(prev.0);
            }
            let width = count - prev.1;
            let frac = if width > 0.0 {
                (rank - prev.1) / width
            } else {
                0.0
            };
            return Some(prev.0 + (le - prev.0) * frac);
        }
        prev = (le, count);
    }
    None
}

/// Sum of one counter over every label set whose labels contain `filter`.
fn counter_sum(metrics: &str, name: &str, filter: &str) -> f64 {
    metrics
        .lines()
        .filter_map(|l| l.strip_prefix(name)?.strip_prefix('{'))
        .filter(|rest| rest.contains(filter))
        .filter_map(|rest| rest.split_once("} ")?.1.trim().parse::<f64>().ok())
        .sum()
}

/// The 1, 5 and 15 minute load averages, to say how busy the machine was.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

async fn setup(client: &Client, args: &Args) -> anyhow_free::Result<()> {
    grokcast_e2e::project::install_crds(client, Duration::from_secs(60)).await?;
    let nss: Api<Namespace> = Api::all(client.clone());
    nss.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": NS}}))?,
    )
    .await?;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NS);
    secrets
        .create(
            &PostParams::default(),
            &serde_json::from_value(
                json!({"metadata": {"name": "twilio"}, "stringData": {"authToken": "x"}}),
            )?,
        )
        .await?;
    let pools: Api<ModelPool> = Api::namespaced(client.clone(), NS);
    for i in 0..args.pools {
        pools.create(&PostParams::default(), &pool_obj(i)).await?;
    }
    let agents: Api<VoiceAgent> = Api::namespaced(client.clone(), NS);
    for i in 0..args.agents {
        let agent = if args.autoscale {
            autoscaled_agent_obj(i, args.pools)
        } else {
            agent_obj(i, args.pools)
        };
        agents.create(&PostParams::default(), &agent).await?;
    }
    Ok(())
}

/// Tiny error alias so the bench needs no extra dependency.
mod anyhow_free {
    pub type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;
}

#[tokio::main]
async fn main() -> anyhow_free::Result<()> {
    let args = Args::parse();
    let operator_bin = match &args.operator_bin {
        Some(p) => p.clone(),
        None => std::env::current_exe()?.with_file_name("grokcast-operator"),
    };
    if !operator_bin.exists() {
        return Err(format!(
            "{} not found; build it with `cargo build --release -p grokcast-operator` or pass --operator-bin",
            operator_bin.display()
        )
        .into());
    }
    let dir = match &args.cluster_dir {
        Some(d) => d.clone(),
        None => {
            std::env::temp_dir().join(format!("grokcast-operator-bench-{}", std::process::id()))
        }
    };
    let cpu = NodePool {
        prefix: "kwok-bench",
        count: args.nodes,
        cpus: 256,
        gpus: 0,
        gpu_product: String::new(),
        labels: Vec::new(),
        taints: Vec::new(),
    };
    let options = ClusterOptions {
        pools: vec![cpu],
        // The controllers create a ReplicaSet and a pod per object: let them go fast.
        controller_qps: 400,
        ..ClusterOptions::default()
    };
    let cluster_started = Instant::now();
    let cluster = Cluster::start(&dir, &options).await?;
    println!(
        "cluster up in {:.1} s ({} nodes, Kubernetes {})",
        cluster_started.elapsed().as_secs_f64(),
        args.nodes,
        grokcast_e2e::cluster::kubernetes_version()
    );
    let client = cluster.client().await?;
    setup(&client, &args).await?;
    let identity = grokcast_e2e::project::operator_identity(&cluster, NS, &[]).await?;
    let audit = cluster.audit();
    println!(
        "created {} ModelPools and {} VoiceAgents; starting the operator",
        args.pools, args.agents
    );

    // The fleet's metrics and Prometheus, before the operator, so its first periods find data.
    let prometheus = if args.autoscale {
        let binary = grokcast_e2e::prometheus::binary()
            .ok_or("--autoscale needs Debian's prometheus (scripts/install.sh installs it)")?;
        let started = Instant::now();
        let mut addrs = Vec::new();
        // 50 agents per target: a scrape stays a few hundred kB, well inside the 1 s timeout.
        for first in (0..args.agents).step_by(50) {
            addrs.push(fleet::serve(NS, first..(first + 50).min(args.agents), started).await?);
        }
        let targets: Vec<grokcast_e2e::prometheus::Target<'_>> = addrs
            .iter()
            .map(|addr| grokcast_e2e::prometheus::Target {
                addr: *addr,
                labels: &[],
            })
            .collect();
        // Every 5 s: at 1 s a scrape that the busy machine delays past its timeout marks
        // 50 agents' series stale, and the autoscaler rightly reports their metrics missing.
        let prometheus = grokcast_e2e::prometheus::TestPrometheus::start_every(
            &binary,
            &targets,
            Duration::from_secs(5),
            Duration::from_secs(30),
        )
        .await?;
        println!(
            "Prometheus at {} scraping {} agents' metrics from {} targets",
            prometheus.url(),
            args.agents,
            addrs.len()
        );
        Some(prometheus)
    } else {
        None
    };
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let metrics_addr = listener.local_addr()?.to_string();
    drop(listener);
    let load_before = load_average();
    let mark = audit.mark();
    let started = Instant::now();
    let mut command = tokio::process::Command::new(&operator_bin);
    command.args([
        "run",
        "--leader-elect",
        "false",
        "--watch-namespaces",
        NS,
        "--http-addr",
        &metrics_addr,
        "--log",
        &args.operator_log,
    ]);
    if let Some(prometheus) = &prometheus {
        command.args(["--prometheus-url", prometheus.url()]);
    }
    let mut child = command
        .env("KUBECONFIG", &identity.kubeconfig)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()?;
    let pid = child.id().unwrap_or(0);

    let pools: Api<ModelPool> = Api::namespaced(client.clone(), NS);
    let agents: Api<VoiceAgent> = Api::namespaced(client.clone(), NS);
    let mut polls = 0u64;
    let converged = loop {
        if started.elapsed() > Duration::from_secs(args.timeout_seconds) {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        polls += 1;
        let p = pools.list(&ListParams::default()).await?;
        let a = agents.list(&ListParams::default()).await?;
        let pools_ready = p
            .items
            .iter()
            .filter(|x| ready(x.status.as_ref().map(|s| s.conditions.as_slice())))
            .count();
        let agents_ready = a
            .items
            .iter()
            .filter(|x| ready(x.status.as_ref().map(|s| s.conditions.as_slice())))
            .count();
        if pools_ready == args.pools && agents_ready == args.agents {
            break Some(started.elapsed());
        }
        // A line every 10 s, so a slow or stuck run shows where it stands.
        if polls.is_multiple_of(40) {
            eprintln!(
                "{:>4.0} s: {pools_ready}/{} ModelPools and {agents_ready}/{} VoiceAgents Ready",
                started.elapsed().as_secs_f64(),
                args.pools,
                args.agents
            );
        }
    };
    let Some(converged) = converged else {
        return Err(format!("did not converge within {} s", args.timeout_seconds).into());
    };
    let (until_ready, mark) = audit.since(mark);
    let until_ready: Vec<AuditEntry> = until_ready
        .into_iter()
        .filter(|e| e.user == identity.user)
        .collect();
    let operator_requests = until_ready.len();
    let objects = (args.agents + args.pools) as f64;
    let metrics = http_get(&metrics_addr, "/metrics")
        .await
        .unwrap_or_default();
    let (rss_converged, _) = rss_kib(pid);
    let load_converged = load_average();

    tokio::time::sleep(Duration::from_secs(args.settle_seconds)).await;
    let settling = audit.by_user(mark, &identity.user);
    let mark = audit.mark();
    tokio::time::sleep(Duration::from_secs(args.steady_seconds)).await;
    let steady = audit.by_user(mark, &identity.user);
    let (rss, hwm) = rss_kib(pid);
    let final_metrics = http_get(&metrics_addr, "/metrics")
        .await
        .unwrap_or_default();
    let _ = child.kill().await;

    println!(
        "objects: {} VoiceAgents + {} ModelPools",
        args.agents, args.pools
    );
    println!(
        "time to all Ready: {:.2} s (target < 60 s)",
        converged.as_secs_f64()
    );
    match (quantile(&metrics, 0.5), quantile(&metrics, 0.95)) {
        (Some(p50), Some(p95)) => println!(
            "reconcile duration: p50 {:.1} ms, p95 {:.1} ms",
            p50 * 1e3,
            p95 * 1e3
        ),
        _ => println!("reconcile duration: no samples"),
    }
    println!(
        "API requests until Ready: {operator_requests} ({:.2} per object); by verb: {:?}",
        operator_requests as f64 / objects,
        by_verb(&until_ready)
    );
    let applies = "grokcast_operator_child_applies_total";
    println!(
        "children until Ready: {} applied, {} skipped as unchanged",
        counter_sum(&metrics, applies, "outcome=\"applied\""),
        counter_sum(&metrics, applies, "outcome=\"skipped\"")
    );
    println!(
        "settling after Ready: {} requests in {} s; by verb: {:?}",
        settling.len(),
        args.settle_seconds,
        by_verb(&settling)
    );
    println!(
        "steady state: {} requests in {} s = {:.1} per minute; by verb: {:?}",
        steady.len(),
        args.steady_seconds,
        steady.len() as f64 * 60.0 / args.steady_seconds as f64,
        by_verb(&steady)
    );
    let writes: Vec<&AuditEntry> = steady.iter().filter(|e| e.is_write()).collect();
    let mut by_manager = std::collections::BTreeMap::new();
    for e in &writes {
        *by_manager
            .entry(format!(
                "{} {}/{}",
                e.field_manager, e.resource, e.subresource
            ))
            .or_insert(0usize) += 1;
    }
    println!(
        "steady-state writes: {} = {:.1} per minute{}; by field manager and resource: {by_manager:?}",
        writes.len(),
        writes.len() as f64 * 60.0 / args.steady_seconds as f64,
        if args.autoscale {
            format!(" with {} autoscaled agents", args.agents)
        } else {
            String::new()
        }
    );
    if args.autoscale {
        let periods = final_metrics
            .lines()
            .find_map(|l| l.strip_prefix("grokcast_autoscaler_evaluations_total "))
            .unwrap_or("unknown");
        println!("autoscaler periods run: {periods}");
        if let Some(prometheus) = &prometheus {
            let window = args.steady_seconds + args.settle_seconds;
            use grokcast_operator::autoscale::prometheus::{PrometheusClient, PrometheusConfig};
            let client = PrometheusClient::new(&PrometheusConfig::new(prometheus.url()))?;
            let query = |q: String| {
                let client = &client;
                async move {
                    match client.query_value(&q).await {
                        Ok(Some(v)) => format!("{v}"),
                        Ok(None) => "0".into(),
                        Err(e) => format!("unknown ({e})"),
                    }
                }
            };
            println!(
                "Prometheus scrapes in the last {window} s: {} of which failed: {}",
                query(format!("sum(count_over_time(up[{window}s]))")).await,
                query(format!("sum(count_over_time((up == 0)[{window}s:]))")).await
            );
        }
    }
    println!(
        "operator RSS: {:.1} MiB at convergence, {:.1} MiB after steady state, peak {:.1} MiB (target < 100 MiB)",
        rss_converged as f64 / 1024.0,
        rss as f64 / 1024.0,
        hwm as f64 / 1024.0
    );
    println!(
        "load average (1, 5, 15 min): {load_before} at start, {load_converged} at convergence, {} at the end",
        load_average()
    );
    drop(cluster);
    if args.cluster_dir.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(())
}
