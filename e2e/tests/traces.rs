//! Call traces reach a real OpenTelemetry Collector: the real `grokcast-agent serve` process,
//! configured as the operator configures it (`spec.tracing` becomes `tracing:` in
//! `agent.yaml`), answers calls from the Twilio-protocol caller on the instant model servers
//! and sends its spans over OTLP/gRPC to the collector built from Go modules
//! (`e2e/cluster/otelcol`: the OTLP receiver and the file exporter), which writes them as OTLP
//! JSON that the test reads back as span trees.
//!
//! With the collector down, calls go on and every lost span is counted.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use grokcast_e2e::free_port;
use grokcast_harness::caller::{self, CallReport, CallerOptions};
use grokcast_harness::instant::InstantServers;
use serde_json::Value;

const TOKEN: &str = "traces-token";
const REPLY: &str = "We open at nine in the morning and close at six in the evening on weekdays, \
                     and on Saturdays we open at ten and close at four in the afternoon.";
const QUESTION: &str = "Hello, what time do you open tomorrow?";
const AGAIN: &str = "And on Saturday?";

/// A binary of this workspace's build (beside the harness's own binary).
fn workspace_binary(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_grokcast-e2e")).with_file_name(name)
}

/// A child process killed with the test.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The collector, receiving OTLP/gRPC on `port` and writing each batch as a line of JSON.
fn start_collector(dir: &Path, port: u16) -> (Process, PathBuf) {
    let binary = grokcast_e2e::cluster::binary("otelcol").unwrap();
    let out = dir.join("spans.jsonl");
    let config = dir.join("otelcol.yaml");
    std::fs::write(
        &config,
        format!(
            "receivers:\n  otlp:\n    protocols:\n      grpc:\n        endpoint: 127.0.0.1:{port}\n\
             exporters:\n  file:\n    path: {}\n    flush_interval: 100ms\n\
             service:\n  telemetry:\n    metrics:\n      level: none\n  pipelines:\n    traces:\n      receivers: [otlp]\n      exporters: [file]\n",
            out.display()
        ),
    )
    .unwrap();
    let child = Command::new(binary)
        .arg("--config")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("otelcol.log")).unwrap())
        .spawn()
        .unwrap();
    (Process(child), out)
}

async fn wait_listening(port: u16) {
    for _ in 0..400 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("nothing listens on port {port}");
}

/// The agent process, sending traces to `endpoint` (with every call sampled).
struct Agent {
    process: Option<Process>,
    url: String,
    admin: String,
}

impl Agent {
    async fn start(models: &Path, models_url: &str, config: &Path, endpoint: &str) -> Self {
        let (port, admin_port) = (free_port(), free_port());
        let url = format!("http://127.0.0.1:{port}");
        let child = Command::new(workspace_binary("grokcast-agent"))
            .args(["serve", "--config"])
            .arg(config)
            .env("GROKCAST_LISTEN_ADDR", format!("127.0.0.1:{port}"))
            .env(
                "GROKCAST_ADMIN_LISTEN_ADDR",
                format!("127.0.0.1:{admin_port}"),
            )
            .env("GROKCAST_PUBLIC_URL", &url)
            .env("GROKCAST_TWILIO_AUTH_TOKEN", TOKEN)
            .env("GROKCAST_STT_URL", models_url)
            .env("GROKCAST_LLM_URL", models_url)
            .env("GROKCAST_TTS_URL", models_url)
            .env("GROKCAST_MODELS_DIR", models)
            // Short, so the caller's first words come after it.
            .env("GROKCAST_GREETING", "Hello.")
            // Only the address changes from what the operator wrote (a Service's, there).
            .env("GROKCAST_TRACING_ENDPOINT", endpoint)
            .spawn()
            .unwrap();
        let agent = Self {
            process: Some(Process(child)),
            url,
            admin: format!("http://127.0.0.1:{admin_port}"),
        };
        let client = reqwest::Client::new();
        for _ in 0..400 {
            if client
                .get(format!("{}/readyz", agent.admin))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                return agent;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the agent never became ready");
    }

    async fn call(&self, call_sid: &str, utterances: &[&str], interrupt: bool) -> CallReport {
        let options = CallerOptions {
            agent_url: self.url.clone(),
            auth_token: Some(TOKEN.into()),
            utterances: utterances
                .iter()
                .map(|u| Arc::new(caller::espeak_audio(u).unwrap()))
                .collect(),
            // Each utterance 3.5 s into the agent's audio: after the greeting, and in the
            // middle of the answer (several seconds long).
            interrupt_after: interrupt.then_some(Duration::from_millis(3500)),
            call_sid: call_sid.into(),
            ..CallerOptions::default()
        };
        caller::place_call(&options).await.unwrap()
    }

    /// One sample of a counter on `/metrics`.
    async fn counter(&self, series: &str) -> f64 {
        let text = reqwest::get(format!("{}/metrics", self.admin))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find(|l| l.starts_with(series))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| {
                let name = series.split('{').next().unwrap_or(series);
                let lines: Vec<&str> = text.lines().filter(|l| l.contains(name)).collect();
                panic!("{series} not on /metrics: {lines:#?}")
            })
    }

    /// SIGTERM, as Kubernetes stops a pod; the agent sends its queued spans and exits.
    async fn stop(&mut self) {
        let mut process = self.process.take().unwrap();
        let pid = process.0.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
        for _ in 0..200 {
            if let Some(status) = process.0.try_wait().unwrap() {
                assert!(status.success(), "the agent exited with {status}");
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the agent did not exit after SIGTERM");
    }
}

/// `agent.yaml` as the operator writes it for a VoiceAgent with `spec.tracing`.
fn operator_agent_yaml(dir: &Path) -> PathBuf {
    use grokcast_operator::children::Child;
    use grokcast_operator::settings::BuildSettings;
    use grokcast_operator::voice_agent::{self, PoolLookup, SecretLookup};
    let sample = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../config/samples/receptionist.yaml"),
    )
    .unwrap();
    let traced = sample.replacen(
        "spec:\n",
        "spec:\n  tracing:\n    otlpEndpoint: http://otel-collector.observability:4317\n    sampleRatio: 1\n",
        1,
    );
    let mut agent: grokcast_crds::VoiceAgent = serde_yaml::from_str(&traced).unwrap();
    agent.metadata.namespace = Some("tests".into());
    agent.metadata.uid = Some("5f1c3a5e-0000-4000-8000-000000000001".into());
    let samples = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../config/samples");
    let pools: Vec<grokcast_crds::ModelPool> = ["gemma-27b.yaml", "whisper.yaml", "csm.yaml"]
        .iter()
        .map(|f| serde_yaml::from_str(&std::fs::read_to_string(samples.join(f)).unwrap()).unwrap())
        .collect();
    let lookup = |name: &str| {
        pools
            .iter()
            .find(|p| p.metadata.name.as_deref() == Some(name))
            .map_or(PoolLookup::Missing, PoolLookup::Found)
    };
    let valid = voice_agent::validate(&agent, lookup, |_| SecretLookup::Present).unwrap();
    let yaml = voice_agent::build(&valid, &BuildSettings::default())
        .into_iter()
        .find_map(|c| match c {
            Child::ConfigMap(cm) => cm.data?.get("agent.yaml").cloned(),
            _ => None,
        })
        .unwrap();
    let config: serde_yaml::Value = serde_yaml::from_str(&yaml).unwrap();
    assert_eq!(
        config["tracing"]["endpoint"].as_str(),
        Some("http://otel-collector.observability:4317")
    );
    // The sample streams STT over gRPC and judges pauses with Smart Turn; this test keeps to
    // the instant servers' HTTP and silence.
    let mut config = config;
    config["stt"]["streamingUrl"] = "".into();
    config["turnTaking"]["endOfTurnModel"] = "none".into();
    config["turnTaking"]["speculativeReplies"] = false.into();
    config["turnTaking"]["minInterruptionWords"] = 0.into();
    // The model may hang up (no API key here: the agent closes the stream).
    config["tools"] = serde_yaml::from_str("endCall: {enabled: true}").unwrap();
    let path = dir.join("agent.yaml");
    std::fs::write(&path, serde_yaml::to_string(&config).unwrap()).unwrap();
    path
}

/// A span as the collector wrote it.
#[derive(Debug, Clone)]
struct Span {
    trace: String,
    id: String,
    parent: String,
    name: String,
    start: u128,
    end: u128,
    attributes: BTreeMap<String, Value>,
    status: Value,
    resource: BTreeMap<String, Value>,
}

impl Span {
    fn attr(&self, key: &str) -> Option<&Value> {
        self.attributes.get(key)
    }

    fn text(&self, key: &str) -> Option<&str> {
        self.attr(key).and_then(Value::as_str)
    }
}

/// OTLP JSON attributes as key -> value (`intValue` is a string in OTLP JSON).
fn attributes(list: &Value) -> BTreeMap<String, Value> {
    list.as_array()
        .into_iter()
        .flatten()
        .map(|kv| {
            let v = &kv["value"];
            let value = if let Some(s) = v.get("stringValue") {
                s.clone()
            } else if let Some(b) = v.get("boolValue") {
                b.clone()
            } else if let Some(i) = v.get("intValue") {
                Value::from(i.as_str().and_then(|i| i.parse::<i64>().ok()).unwrap_or(0))
            } else if let Some(d) = v.get("doubleValue") {
                d.clone()
            } else {
                v.clone()
            };
            (kv["key"].as_str().unwrap_or_default().to_owned(), value)
        })
        .collect()
}

fn read_spans(path: &Path) -> Vec<Span> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    let nanos = |v: &Value| v.as_str().and_then(|s| s.parse().ok()).unwrap_or(0u128);
    let mut spans = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let Ok(batch) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        for rs in batch["resourceSpans"].as_array().into_iter().flatten() {
            let resource = attributes(&rs["resource"]["attributes"]);
            for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
                for s in ss["spans"].as_array().into_iter().flatten() {
                    spans.push(Span {
                        trace: s["traceId"].as_str().unwrap_or_default().into(),
                        id: s["spanId"].as_str().unwrap_or_default().into(),
                        parent: s["parentSpanId"].as_str().unwrap_or_default().into(),
                        name: s["name"].as_str().unwrap_or_default().into(),
                        start: nanos(&s["startTimeUnixNano"]),
                        end: nanos(&s["endTimeUnixNano"]),
                        attributes: attributes(&s["attributes"]),
                        status: s["status"].clone(),
                        resource: resource.clone(),
                    });
                }
            }
        }
    }
    spans
}

/// The spans of the call `call_sid` once its call span and `turns` turns have arrived.
async fn call_trace(path: &Path, call_sid: &str, turns: usize) -> Vec<Span> {
    for _ in 0..300 {
        let spans = read_spans(path);
        if let Some(call) = spans
            .iter()
            .find(|s| s.name == "call" && s.text("call_sid") == Some(call_sid))
        {
            let trace: Vec<Span> = spans
                .iter()
                .filter(|s| s.trace == call.trace)
                .cloned()
                .collect();
            if trace.iter().filter(|s| s.name == "turn").count() >= turns {
                return trace;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "no trace of call {call_sid} with {turns} turns reached the collector: {:#?}",
        read_spans(path)
            .iter()
            .map(|s| (&s.name, &s.trace))
            .collect::<Vec<_>>()
    );
}

fn children<'a>(spans: &'a [Span], parent: &Span) -> Vec<&'a Span> {
    let mut c: Vec<&Span> = spans.iter().filter(|s| s.parent == parent.id).collect();
    c.sort_by_key(|s| (s.start, s.name.clone()));
    c
}

fn named<'a>(spans: &[&'a Span], name: &str) -> &'a Span {
    spans
        .iter()
        .find(|s| s.name == name)
        .copied()
        .unwrap_or_else(|| panic!("no {name} span among {spans:#?}"))
}

/// Checks one answered turn's waterfall: the stages one after another from the end of the
/// caller's voice, the playout after the first audio, all within the turn.
fn assert_waterfall(spans: &[Span], turn: &Span) {
    let stages = children(spans, turn);
    let mut names: Vec<&str> = stages.iter().map(|s| s.name.as_str()).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "endpointing",
            "llm.first_clause",
            "llm.first_token",
            "playout",
            "stt",
            "tts.first_audio"
        ],
        "turn {:?}",
        turn.attr("grokcast.turn.number")
    );
    for s in &stages {
        assert!(
            turn.start <= s.start && s.start <= s.end && s.end <= turn.end,
            "{} outside its turn: {s:?} in {turn:?}",
            s.name
        );
        assert_eq!(s.trace, turn.trace);
    }
    let (endpointing, stt) = (named(&stages, "endpointing"), named(&stages, "stt"));
    let (token, clause) = (
        named(&stages, "llm.first_token"),
        named(&stages, "llm.first_clause"),
    );
    let (tts, playout) = (named(&stages, "tts.first_audio"), named(&stages, "playout"));
    assert_eq!(
        endpointing.start, turn.start,
        "the turn starts as the voice ends"
    );
    // Stage edges are computed from the same instants; allow a microsecond of rounding.
    let near = |a: u128, b: u128| a.abs_diff(b) <= 1_000;
    assert!(near(stt.start, endpointing.end));
    assert!(near(token.start, stt.end) && near(clause.start, stt.end));
    assert!(token.end <= clause.end + 1_000);
    assert!(near(tts.start, clause.end));
    assert!(
        playout.start + 1_000 >= tts.end,
        "audio plays after it is synthesised"
    );
    let latency_ms = turn
        .attr("grokcast.turn.latency_ms")
        .unwrap()
        .as_f64()
        .unwrap();
    let first_audio_ms = (playout.start - turn.start) as f64 / 1e6;
    assert!(
        (latency_ms - first_audio_ms).abs() < 1.0,
        "the turn's latency ({latency_ms} ms) is where its playout starts ({first_audio_ms} ms)"
    );
    assert!(playout.end > playout.start, "the reply played");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_call_is_one_trace_with_a_span_per_turn_and_its_stages() {
    let Some(models) = grokcast_harness::models_dir() else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("grokcast-traces-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let otlp_port = free_port();
    let (_collector, out) = start_collector(&dir, otlp_port);
    wait_listening(otlp_port).await;

    let servers = InstantServers::default();
    servers.set(|b| b.reply = REPLY.into());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let models_url = format!("http://{}/v1", listener.local_addr().unwrap());
    tokio::spawn(servers.clone().serve(listener));

    let config = operator_agent_yaml(&dir);
    let endpoint = format!("http://127.0.0.1:{otlp_port}");
    let mut agent = Agent::start(&models, &models_url, &config, &endpoint).await;

    // A call of two turns; the caller cuts the first answer short.
    let first = "CA000000000000000000000000000TRACE1";
    let report = agent.call(first, &[QUESTION, AGAIN], true).await;
    assert!(
        report.turns.iter().any(|t| t.latency.is_some()),
        "{:?}",
        report.turns
    );
    // A call whose model fails: the caller hears the apology.
    servers.set(|b| b.llm.fail = true);
    let failing = "CA000000000000000000000000000TRACE2";
    let report = agent.call(failing, &[QUESTION], false).await;
    assert!(
        report.turns[0].agent_frames > 0,
        "the apology played: {:?}",
        report.turns
    );
    servers.set(|b| b.llm.fail = false);
    // A call the model hangs up: the tool call is a span of its turn.
    servers.set(|b| {
        b.tool_calls = vec![grokcast_harness::instant::ScriptedCall::new(
            "", "end_call", "{}",
        )];
        b.after_tools = "Goodbye!".into();
    });
    let hung_up = "CA000000000000000000000000000TRACE3";
    let report = agent.call(hung_up, &[QUESTION], false).await;
    assert!(
        report.closed_by_agent,
        "the agent hung up: {:?}",
        report.turns
    );
    servers.set(|b| b.tool_calls.clear());

    let spans = call_trace(&out, first, 2).await;
    let call = spans.iter().find(|s| s.name == "call").unwrap();
    assert!(call.parent.is_empty(), "the call is the trace's root");
    assert_eq!(call.text("transport"), Some("twilio"));
    assert_eq!(call.text("grokcast.voice_agent"), Some("receptionist"));
    assert_eq!(call.text("k8s.namespace.name"), Some("tests"));
    assert_eq!(call.text("grokcast.call.outcome"), Some("completed"));
    assert_eq!(call.resource["service.name"], "grokcast-agent");
    assert_eq!(call.resource["k8s.namespace.name"], "tests");
    assert_eq!(call.resource["grokcast.voice_agent"], "receptionist");

    let mut turns: Vec<&Span> = children(&spans, call)
        .into_iter()
        .filter(|s| s.name == "turn")
        .collect();
    turns.sort_by_key(|t| t.attr("grokcast.turn.number").and_then(Value::as_i64));
    assert_eq!(turns.len(), 2, "{turns:#?}");
    for (n, turn) in turns.iter().enumerate() {
        assert_eq!(
            turn.attr("grokcast.turn.number").and_then(Value::as_i64),
            Some(n as i64 + 1)
        );
        assert_eq!(turn.text("grokcast.voice_agent"), Some("receptionist"));
        assert_eq!(turn.text("k8s.namespace.name"), Some("tests"));
        assert_eq!(
            turn.attr("grokcast.turn.speculative_hit"),
            Some(&Value::Bool(false))
        );
        assert!(turn.attr("grokcast.turn.backend_error").is_none());
        assert_waterfall(&spans, turn);
    }
    assert_eq!(
        turns[0].attr("grokcast.turn.barge_in"),
        Some(&Value::Bool(true)),
        "the caller cut the first answer"
    );
    assert_eq!(
        turns[1].attr("grokcast.turn.barge_in"),
        Some(&Value::Bool(false))
    );
    assert!(
        turns[0].end <= turns[1].start,
        "the first turn ends where the caller cut it, before their next words ended"
    );

    let spans = call_trace(&out, failing, 1).await;
    let call = spans.iter().find(|s| s.name == "call").unwrap();
    assert!(
        !read_spans(&out).iter().any(|s| s.name == "call"
            && s.text("call_sid") == Some(first)
            && s.trace == call.trace),
        "each call is a trace of its own"
    );
    let turn = spans.iter().find(|s| s.name == "turn").unwrap();
    assert_eq!(turn.parent, call.id);
    assert_eq!(turn.text("grokcast.turn.backend_error"), Some("llm"));
    assert_eq!(turn.status["code"], 2, "an error status: {:?}", turn.status);
    // What failed, not what the server said (its body may quote the request).
    assert_eq!(turn.status["message"], "llm server answered 503");
    let stages = children(&spans, turn);
    let names: Vec<&str> = stages.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["endpointing", "playout"], "the apology's turn");

    let spans = call_trace(&out, hung_up, 1).await;
    let call = spans.iter().find(|s| s.name == "call").unwrap();
    assert_eq!(call.text("grokcast.call.outcome"), Some("ended_by_agent"));
    let turn = spans.iter().find(|s| s.name == "turn").unwrap();
    let stages = children(&spans, turn);
    let tool = named(&stages, "tool");
    assert_eq!(tool.text("grokcast.tool.name"), Some("end_call"));
    assert_eq!(tool.text("grokcast.tool.outcome"), Some("ok"));
    assert!(
        turn.start <= tool.start && tool.end <= turn.end,
        "{tool:?} in {turn:?}"
    );

    let exported = agent.counter("grokcast_trace_spans_exported_total").await;
    assert!(exported >= 13.0, "{exported} spans exported");
    assert_eq!(
        agent
            .counter("grokcast_trace_spans_dropped_total{reason=\"export_failed\"")
            .await,
        0.0
    );
    agent.stop().await;

    // Nothing personal in the traces: no phone numbers, no words of either side.
    let written = std::fs::read_to_string(&out).unwrap();
    for private in [
        "+15005550006",
        "+15005550001",
        "Saturday",
        "nine in the morning",
        "what time",
    ] {
        assert!(!written.contains(private), "{private:?} is in the traces");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_collector_down_calls_go_on_and_lost_spans_are_counted() {
    let Some(models) = grokcast_harness::models_dir() else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("grokcast-traces-down-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let servers = InstantServers::default();
    servers.set(|b| b.reply = "We open at nine.".into());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let models_url = format!("http://{}/v1", listener.local_addr().unwrap());
    tokio::spawn(servers.clone().serve(listener));

    let config = operator_agent_yaml(&dir);
    // Nothing listens there.
    let endpoint = format!("http://127.0.0.1:{}", free_port());
    let mut agent = Agent::start(&models, &models_url, &config, &endpoint).await;
    for n in 0..2 {
        let report = agent
            .call(
                &format!("CA00000000000000000000000000000DOWN{n}"),
                &[QUESTION],
                false,
            )
            .await;
        assert!(
            report.turns[0].latency.is_some() && report.turns[0].agent_frames > 0,
            "call {n} was answered: {:?}",
            report.turns
        );
    }
    let lost = "grokcast_trace_spans_dropped_total{reason=\"export_failed\"";
    let mut dropped = 0.0;
    for _ in 0..200 {
        dropped = agent.counter(lost).await;
        // Two calls, each a call span, a turn and its six stages.
        if dropped >= 16.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(dropped >= 16.0, "{dropped} spans counted lost");
    assert_eq!(
        agent.counter("grokcast_trace_spans_exported_total").await,
        0.0
    );
    agent.stop().await;
}
