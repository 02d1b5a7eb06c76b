//! Agent benchmark: how many calls one core carries, and what the agent itself adds to a turn.
//!
//! The agent runs in this process on ONE async thread (a current-thread tokio runtime) and the
//! agent's VAD batch thread (Silero VAD on every 32 ms chunk of every call, batched across calls). The model servers are the instant test double
//! (`grokcast-harness instant-servers`) and the callers are `grokcast-harness call --calls N`, each
//! in its own process so their CPU and memory are not counted. For each concurrency level it
//! prints the agent overhead per turn (turn latency minus endpointing minus model time)
//! p50/p95, the turn latency as the agent measures it and as the callers heard
//! it (their last speech frame sent to the first answer frame received, from their own
//! clocks), CPU per call-minute, RSS per call and late frames.
//!
//! `cargo run --release -p grokcast-harness --bin agent-bench -- --levels 1,10,50,100,200`
//! (add `--otlp-endpoint http://127.0.0.1:4317` to trace every call to a collector there, and
//! `--playground` for callers on the browser playground's Opus socket instead of Twilio's)
//! (docs/benchmarks.md has the figures and how to read them).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Parser;
use grokcast_agent::config::{AgentConfig, EndOfTurnModel};
use grokcast_agent::context::CallContext;
use grokcast_agent::metrics::Metrics;
use grokcast_agent::server::{self, AgentState};
use grokcast_agent::startup;
use grokcast_agent::traces::Traces;
use tracing_subscriber::prelude::*;

/// The playground's token for `--playground` runs.
const PLAYGROUND_TOKEN: &str = "bench-playground-token";

#[derive(Parser)]
#[command(about = "Agent overhead, CPU and memory per call under concurrent simulated calls")]
struct Args {
    /// Concurrent calls per run.
    #[arg(long, value_delimiter = ',', default_value = "1,10,50,100,200")]
    levels: Vec<usize>,
    /// Caller turns per call.
    #[arg(long, default_value_t = 3)]
    turns: usize,
    /// Dial each level's calls over this many ms, as independent callers would; 0 dials
    /// them all at once, so every call's turns end on the same VAD chunk (a worst case).
    #[arg(long, default_value_t = 4000)]
    spread_ms: u64,
    /// End-of-turn silence in ms (the agent's `endOfTurnSilenceMs`; 300 by default).
    #[arg(long)]
    silence_ms: Option<u64>,
    /// Judge pauses with Smart Turn (`endOfTurnModel: smart-turn`), asked after
    /// `--silence-ms` (then the minimum silence; the maximum stays 2 s).
    #[arg(long)]
    smart_turn: bool,
    /// Trace every call (`spec.tracing`, sample ratio 1) to the OpenTelemetry collector at
    /// this OTLP/gRPC endpoint; the run without it is the baseline.
    #[arg(long)]
    otlp_endpoint: Option<String>,
    /// Callers talk to the browser playground (Opus at 48 kHz over its WebSocket) instead of
    /// placing Twilio calls (8 kHz mu-law over Media Streams).
    #[arg(long)]
    playground: bool,
}

fn proc_field(path: &str, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    let line = text.lines().find(|l| l.starts_with(key))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Resident memory of this process in KiB.
fn rss_kib() -> u64 {
    proc_field("/proc/self/status", "VmRSS:").unwrap_or(0)
}

/// CPU time (user + system) of this process.
fn cpu_time() -> Duration {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return Duration::ZERO;
    };
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields
        .get(11..13)
        .map_or(0, |f| f.iter().filter_map(|v| v.parse::<u64>().ok()).sum());
    // Linux reports in USER_HZ, 100 per second on every mainstream platform.
    Duration::from_millis(ticks * 10)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[(((sorted.len() - 1) as f64) * p).round() as usize]
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let exe = std::env::current_exe()?;
    let harness_bin: PathBuf = exe.with_file_name("grokcast-harness");
    if !harness_bin.exists() {
        bail!(
            "{} not found: build it first (cargo build --release -p grokcast-harness --bins)",
            harness_bin.display()
        );
    }
    let model_port = free_port()?;
    let mut models = std::process::Command::new(&harness_bin)
        .args([
            "instant-servers",
            "--listen",
            &format!("127.0.0.1:{model_port}"),
        ])
        .stderr(std::process::Stdio::null())
        .spawn()
        .context("starting the instant model servers")?;
    let result = run(&args, &harness_bin, model_port);
    let _ = models.kill();
    result
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn run(args: &Args, harness_bin: &std::path::Path, model_port: u16) -> anyhow::Result<()> {
    let port = free_port()?;
    let url = format!("http://127.0.0.1:{port}");
    let models_url = format!("http://127.0.0.1:{model_port}/v1");
    let mut config = AgentConfig {
        public_url: url.clone(),
        listen_addr: format!("127.0.0.1:{port}"),
        twilio_auth_token: Some("bench-token".into()),
        max_calls: 10_000,
        ..AgentConfig::default()
    };
    for stage in [
        &mut config.stt.stage,
        &mut config.llm.stage,
        &mut config.tts.stage,
    ] {
        stage.url = models_url.clone();
    }
    if let Some(ms) = args.silence_ms {
        config.turn_taking.end_of_turn_silence_ms = ms;
        config.turn_taking.min_end_of_turn_silence_ms = ms;
    }
    if args.smart_turn {
        config.turn_taking.end_of_turn_model = EndOfTurnModel::SmartTurn;
    }
    if args.playground {
        config.playground.enabled = true;
        config.playground_token = Some(PLAYGROUND_TOKEN.into());
    }
    if let Some(endpoint) = &args.otlp_endpoint {
        config.tracing.endpoint = endpoint.clone();
    }
    config.validate()?;
    let vad = startup::load_vad(&config)?;
    let turn_model = startup::load_turn_model(&config)?;
    let backends = startup::build_backends(&config)?;
    let metrics = Metrics::new("bench", "bench")?;
    let state = Arc::new(AgentState::new(
        CallContext::new(config, backends, vad, metrics)
            .with_turn_model(turn_model)
            .record_turns(),
    ));

    // The agent: one thread, one core.
    let agent_state = state.clone();
    std::thread::Builder::new()
        .name("agent".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            let Ok(runtime) = runtime else { return };
            runtime.block_on(async move {
                // The exporter's gRPC channel lives on the agent's own thread, as in a pod.
                let traces = match Traces::start(&agent_state.config, &agent_state.metrics) {
                    Ok(Some((traces, layer))) => {
                        tracing_subscriber::registry().with(layer).init();
                        Some(traces)
                    }
                    Ok(None) => None,
                    Err(e) => {
                        eprintln!("{e}");
                        return;
                    }
                };
                let _keep = traces;
                let Ok(listener) = tokio::net::TcpListener::bind(("127.0.0.1", port)).await else {
                    return;
                };
                let _ = server::serve(listener, agent_state, std::future::pending()).await;
            });
        })?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while state.clips().is_none() {
        if Instant::now() > deadline {
            bail!("the agent never synthesised its greeting (are the instant servers up?)");
        }
        std::thread::sleep(Duration::from_millis(50));
    }

    println!(
        "| calls | turns | overhead p50 | overhead p95 | turn latency p50 / p95 (agent) | at the caller p50 / p95 | CPU s per call-minute | calls per core | RSS per call | late frames |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let phrases = [
        "Hello, what time do you open tomorrow?",
        "And are you open on Saturday?",
        "Great, thank you very much.",
    ];
    for &calls in &args.levels {
        let _ = state.take_turn_samples();
        let underruns_before = state.metrics.underruns.get();
        let rss_before = rss_kib();
        let cpu_before = cpu_time();
        let started = Instant::now();
        let mut caller = std::process::Command::new(harness_bin);
        caller.args([
            "call",
            "--agent-url",
            &url,
            "--auth-token",
            "bench-token",
            "--calls",
            &calls.to_string(),
            "--spread-ms",
            &args.spread_ms.to_string(),
        ]);
        for p in phrases.iter().cycle().take(args.turns) {
            caller.args(["--say", p]);
        }
        if args.playground {
            caller.args(["--playground-token", PLAYGROUND_TOKEN]);
        }
        let mut child = caller
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()?;
        let mut rss_peak = rss_before;
        // Call-seconds are integrated from the agent's live-call count, so the callers'
        // start-up (espeak-ng, dialling) and hang-up do not dilute the CPU per call-minute.
        let mut call_seconds = 0.0;
        let mut last = Instant::now();
        while child.try_wait()?.is_none() {
            rss_peak = rss_peak.max(rss_kib());
            std::thread::sleep(Duration::from_millis(100));
            let now = Instant::now();
            call_seconds += state.active_calls() as f64 * (now - last).as_secs_f64();
            last = now;
        }
        let output = child.wait_with_output()?;
        let wall = started.elapsed();
        let cpu = cpu_time().saturating_sub(cpu_before);
        let stdout = String::from_utf8_lossy(&output.stdout);
        if !output.status.success() {
            eprintln!("caller at {calls} calls reported failures:\n{stdout}");
        }
        let call_minutes = call_seconds.max(f64::EPSILON) / 60.0;
        eprintln!(
            "{calls} calls: {:.1} s wall, {:.1} call-minutes, {:.2} CPU-s",
            wall.as_secs_f64(),
            call_minutes,
            cpu.as_secs_f64()
        );
        let samples = state.take_turn_samples();
        let mut overhead: Vec<Duration> = samples.iter().map(|s| s.agent).collect();
        overhead.sort();
        let mut latency: Vec<Duration> = samples.iter().map(|s| s.latency).collect();
        latency.sort();
        // What callers waited, from their own clocks: last frame of their speech sent to
        // first frame of the answer received (the caller prints one line per turn).
        let mut heard: Vec<Duration> = stdout
            .lines()
            .filter_map(|l| {
                l.split_once(": latency ")?
                    .1
                    .split_once(" ms")?
                    .0
                    .parse()
                    .ok()
            })
            .map(Duration::from_millis)
            .collect();
        heard.sort();
        let cpu_per_call_minute = cpu.as_secs_f64() / call_minutes;
        println!(
            "| {calls} | {} | {:.2} ms | {:.2} ms | {} / {} ms | {} / {} ms | {:.3} | {:.0} | {:.2} MiB | {} |",
            samples.len(),
            percentile(&overhead, 0.5).as_secs_f64() * 1000.0,
            percentile(&overhead, 0.95).as_secs_f64() * 1000.0,
            percentile(&latency, 0.5).as_millis(),
            percentile(&latency, 0.95).as_millis(),
            percentile(&heard, 0.5).as_millis(),
            percentile(&heard, 0.95).as_millis(),
            cpu_per_call_minute,
            60.0 / cpu_per_call_minute,
            rss_peak.saturating_sub(rss_before) as f64 / 1024.0 / calls as f64,
            state.metrics.underruns.get() - underruns_before,
        );
    }
    if args.otlp_endpoint.is_some() {
        let dropped: u64 = grokcast_agent::metrics::TRACE_DROP_REASONS
            .iter()
            .map(|r| {
                state
                    .metrics
                    .trace_spans_dropped
                    .with_label_values(&[r])
                    .get()
            })
            .sum();
        println!(
            "\ntrace spans: {} exported, {dropped} dropped",
            state.metrics.trace_spans_exported.get()
        );
    }
    Ok(())
}
