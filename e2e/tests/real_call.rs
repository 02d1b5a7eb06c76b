//! One call across the real parts, on CPU, from what the operator wrote.
//!
//! The quickstart's CPU pools and VoiceAgent (docs/quickstart.md, `engine: grokcast`) are
//! applied to the test cluster, where the operator reconciles them. kwok's nodes run no
//! containers, so the test then runs on this machine what the operator asked for: each pool
//! Deployment's command line (`grokcast-serve`, the image's entrypoint) and the agent
//! Deployment's, with the environment the kubelet would give it (the Secret's token, the pod
//! name) and the ConfigMap's `agent.yaml` as written, the Services' addresses mapped to
//! loopback. The Twilio-protocol caller (standing in for Twilio's cloud) asks a question; then
//! Whisper, apart from the agent, hears the question and an answer on the recording, and the
//! greeting plays at the speed the voice spoke it.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use grokcast_agent::codec;
use grokcast_agent::config::AgentConfig;
use grokcast_agent::resample::StreamResampler;
use grokcast_e2e::free_port;
use grokcast_e2e::project::{Project, apply_file_in};
use grokcast_engines::models::ModelPaths;
use grokcast_harness::caller::{self, CallerOptions};
use grokcast_harness::demo;
use grokcast_operator::metrics::Metrics;
use grokcast_operator::run::{CancellationToken, OperatorConfig};
use grokcast_operator::settings::BuildSettings;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Container, Secret};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, ListParams};

const WAIT: Duration = Duration::from_secs(60);
const QUESTION: &str = "What are your opening hours today?";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A binary of this workspace's build (beside the harness's own binary).
fn workspace_binary(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_grokcast-e2e")).with_file_name(name)
}

/// The models and binaries the call needs, or `None` (with the reason) where they are not
/// installed or built and `GROKCAST_REQUIRE_MODELS` is unset; CI sets it.
fn prerequisites() -> Option<ModelPaths> {
    let found = ModelPaths::discover()
        .map_err(|e| format!("models: {e}; run scripts/install.sh"))
        .and_then(|p| {
            let unbuilt = ["grokcast-agent", "grokcast-serve", "grokcast-serve-llm"]
                .into_iter()
                .find(|b| !workspace_binary(b).is_file());
            if let Some(b) = unbuilt {
                return Err(format!(
                    "{b} is not built (cargo build --workspace --bins, and grokcast-serve-llm \
                     with -p grokcast-engines --no-default-features --features llama)"
                ));
            }
            if p.vad().is_err() || p.whisper().is_err() || p.piper_voice().is_err() {
                return Err("models: run scripts/install.sh".to_owned());
            }
            Ok(p)
        });
    match found {
        Ok(p) => Some(p),
        Err(why) => {
            assert!(
                std::env::var_os("GROKCAST_REQUIRE_MODELS").is_none(),
                "GROKCAST_REQUIRE_MODELS is set: {why}"
            );
            eprintln!("SKIPPED: {why}");
            None
        }
    }
}

/// The YAML blocks of docs/quickstart.md whose first line is `# file: NAME`.
fn quickstart_file(name: &str) -> String {
    let text = std::fs::read_to_string(repo().join("docs/quickstart.md")).unwrap();
    let marker = format!("```yaml\n# file: {name}\n");
    let start = text.find(&marker).expect("the quickstart's file block") + "```yaml\n".len();
    let rest = &text[start..];
    rest[..rest.find("```").unwrap()].to_owned()
}

/// A child process killed with the test.
struct Process {
    child: Child,
    what: String,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Process {
    /// Polls `url` until it answers 2xx; fails if the process exits first.
    async fn wait_ready(&mut self, url: &str, limit: Duration) {
        let client = reqwest::Client::new();
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Ok(r) = client.get(url).send().await
                && r.status().is_success()
            {
                return;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("{} exited before it was ready: {status}", self.what);
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} not ready at {url} within {limit:?}",
                self.what
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The only container of the Deployment the operator made for `selector` (the label it puts
/// on a pool's or an agent's children), once the Deployment exists.
async fn container(deployments: &Api<Deployment>, selector: &str) -> Container {
    let list = grokcast_e2e::eventually(
        "the operator creates the Deployment",
        WAIT,
        Duration::from_millis(200),
        || async {
            let items = deployments
                .list(&ListParams::default().labels(selector))
                .await
                .ok()?
                .items;
            (!items.is_empty()).then_some(items)
        },
    )
    .await;
    assert_eq!(list.len(), 1, "one Deployment for {selector}");
    let spec = list[0].spec.clone().unwrap().template.spec.unwrap();
    spec.containers.into_iter().next().unwrap()
}

/// The container's environment as the kubelet would set it: literal values, Secret keys, and
/// the pod's name.
async fn kubelet_env(c: &Container, secrets: &Api<Secret>, pod: &str) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    for var in c.env.iter().flatten() {
        let value = if let Some(v) = &var.value {
            v.clone()
        } else {
            let from = var.value_from.as_ref().unwrap();
            if let Some(key) = &from.secret_key_ref {
                let secret = secrets.get(&key.name).await.unwrap();
                let bytes = secret.data.unwrap()[&key.key].0.clone();
                String::from_utf8(bytes).unwrap()
            } else if from.field_ref.as_ref().map(|f| f.field_path.as_str())
                == Some("metadata.name")
            {
                pod.to_owned()
            } else {
                panic!("an environment source the test does not map: {var:?}")
            }
        };
        env.insert(var.name.clone(), value);
    }
    env
}

/// Starts a pool's server as its Deployment says, listening on `port` instead.
/// Runs a pool's container command on `port` (and `grpc_port` for its Riva service, if its
/// command line asks for one).
fn start_pool(c: &Container, models: &Path, port: u16, grpc_port: u16) -> Process {
    // The image's entrypoint is grokcast-serve (docker/serve.Dockerfile).
    assert!(c.command.is_none(), "{:?}", c.command);
    let mut args = c.args.clone().unwrap_or_default();
    let listen = args.iter().position(|a| a == "--listen").unwrap() + 1;
    args[listen] = format!("127.0.0.1:{port}");
    if let Some(grpc) = args.iter().position(|a| a == "--grpc-listen") {
        args[grpc + 1] = format!("127.0.0.1:{grpc_port}");
    }
    let child = Command::new(workspace_binary("grokcast-serve"))
        .args(&args)
        .envs(
            c.env
                .iter()
                .flatten()
                .filter_map(|e| Some((e.name.clone(), e.value.clone()?))),
        )
        // The image sets this to the models baked into it.
        .env("GROKCAST_MODELS_DIR", models)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    Process {
        child,
        what: format!("grokcast-serve {}", args.join(" ")),
    }
}

/// `http://SERVICE.NAMESPACE.svc:PORT/v1` with the host replaced by `127.0.0.1:local`.
fn to_loopback(url: &str, ports: &BTreeMap<String, u16>) -> String {
    let (scheme, rest) = url.split_once("://").unwrap();
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let service = host.split('.').next().unwrap();
    let port = ports
        .get(service)
        .unwrap_or_else(|| panic!("{url}: no pool named {service}"));
    format!("{scheme}://127.0.0.1:{port}/{path}")
}

/// Whisper's words for 8 kHz mu-law, upsampled to the 16 kHz it hears.
fn transcribe(whisper: &grokcast_engines::stt::WhisperStt, mulaw: &[u8]) -> String {
    let mut pcm8k = vec![0f32; mulaw.len()];
    codec::decode_into(mulaw, &mut pcm8k);
    let mut up = StreamResampler::new(8000, 16_000).unwrap();
    let mut pcm16k = Vec::new();
    up.push(&pcm8k, &mut |s| pcm16k.extend_from_slice(s))
        .unwrap();
    up.flush(&mut |s| pcm16k.extend_from_slice(s)).unwrap();
    whisper
        .transcribe(&pcm16k, Some("en"))
        .unwrap()
        .to_lowercase()
}

fn decode(mulaw: &[u8]) -> Vec<f32> {
    let mut pcm = vec![0f32; mulaw.len()];
    codec::decode_into(mulaw, &mut pcm);
    pcm
}

/// Seconds from the first to the last sample louder than a quiet room, at 8 kHz.
fn voice_span(pcm: &[f32]) -> f64 {
    let loud = |s: &f32| s.abs() > 0.02;
    match (pcm.iter().position(loud), pcm.iter().rposition(loud)) {
        (Some(first), Some(last)) => (last - first) as f64 / 8000.0,
        _ => 0.0,
    }
}

/// The voice's median pitch in Hz, at 8 kHz: the autocorrelation peak between 70 and 400 Hz
/// of each voiced 40 ms window. Played at a wrongly assumed rate, pitch moves with speed.
fn median_pitch(pcm: &[f32]) -> f64 {
    const N: usize = 320;
    let mut pitches = Vec::new();
    for window in pcm.windows(N).step_by(N / 2) {
        let mean = window.iter().sum::<f32>() / N as f32;
        let w: Vec<f32> = window.iter().map(|s| s - mean).collect();
        let energy: f32 = w.iter().map(|s| s * s).sum();
        if (energy / N as f32).sqrt() < 0.03 {
            continue;
        }
        let ac =
            |lag: usize| -> f32 { w[..N - lag].iter().zip(&w[lag..]).map(|(a, b)| a * b).sum() };
        let (lag, peak) = (8000 / 400..8000 / 70)
            .map(|lag| (lag, ac(lag)))
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .unwrap();
        if peak > 0.3 * energy {
            pitches.push(8000.0 / lag as f64);
        }
    }
    assert!(pitches.len() >= 10, "too little voice to find its pitch");
    pitches.sort_by(f64::total_cmp);
    pitches[pitches.len() / 2]
}

/// The greeting's length and pitch over the median of the references'.
fn greeting_ratios(heard: &[f32], references: &[Vec<f32>]) -> (f64, f64) {
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let span = median(references.iter().map(|r| voice_span(r)).collect());
    let pitch = median(references.iter().map(|r| median_pitch(r)).collect());
    (voice_span(heard) / span, median_pitch(heard) / pitch)
}

fn words(text: &str) -> Vec<String> {
    text.to_lowercase()
        .split(|c: char| !c.is_alphanumeric() && c != '\'')
        .filter(|w| w.len() > 3)
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_through_what_the_operator_wrote_is_heard_by_whisper() {
    let Some(paths) = prerequisites() else { return };
    let p = Project::shared(env!("CARGO_BIN_EXE_grokcast-e2e"), "call", WAIT).await;
    let ns = p.ns().to_owned();

    let stop = CancellationToken::new();
    let operator = tokio::spawn(grokcast_operator::run::run(
        p.operator.client.clone(),
        OperatorConfig {
            settings: BuildSettings::default(),
            namespaces: vec![ns.clone()],
            identity: "real-call".into(),
            lease: None,
            autoscaler: None,
        },
        Metrics::new().unwrap(),
        stop.clone(),
    ));

    let dir = p.cluster.dir().join(format!("real-call-{ns}"));
    std::fs::create_dir_all(&dir).unwrap();
    for file in ["quickstart-pools.yaml", "quickstart-agent.yaml"] {
        let path = dir.join(file);
        std::fs::write(&path, quickstart_file(file)).unwrap();
        apply_file_in(&p.admin, &path, &ns, "kubectl")
            .await
            .unwrap();
    }

    // What the operator wrote for the agent.
    let config_maps: Api<ConfigMap> = Api::namespaced(p.admin.clone(), &ns);
    let agent_yaml = grokcast_e2e::eventually(
        "the operator writes the agent's ConfigMap",
        WAIT,
        Duration::from_millis(200),
        || async {
            let cm = config_maps.get_opt("receptionist-agent").await.unwrap()?;
            cm.data?.get("agent.yaml").cloned()
        },
    )
    .await;
    let config_path = dir.join("agent.yaml");
    std::fs::write(&config_path, &agent_yaml).unwrap();

    // The pools' servers, as their Deployments run them.
    let deployments: Api<Deployment> = Api::namespaced(p.admin.clone(), &ns);
    let mut ports = BTreeMap::new();
    let mut grpc_ports = BTreeMap::new();
    let mut pools = Vec::new();
    for pool in ["whisper-cpu", "gemma-cpu", "piper-cpu"] {
        let c = container(&deployments, &format!("grokcast.io/modelpool={pool}")).await;
        let (port, grpc_port) = (free_port(), free_port());
        ports.insert(pool.to_owned(), port);
        grpc_ports.insert(pool.to_owned(), grpc_port);
        pools.push((start_pool(&c, paths.root(), port, grpc_port), port));
    }
    for (server, port) in &mut pools {
        server
            .wait_ready(
                &format!("http://127.0.0.1:{port}/readyz"),
                Duration::from_secs(180),
            )
            .await;
    }

    // The agent, as its Deployment runs it, on the ConfigMap's file.
    let secrets: Api<Secret> = Api::namespaced(p.admin.clone(), &ns);
    let c = container(&deployments, "grokcast.io/voiceagent=receptionist").await;
    let mut env = kubelet_env(&c, &secrets, "receptionist-agent-0").await;
    let mut args = c.args.clone().unwrap_or_default();
    let mounted = env["GROKCAST_CONFIG"].clone();
    for a in &mut args {
        if *a == mounted {
            *a = config_path.display().to_string();
        }
    }
    env.insert("GROKCAST_CONFIG".into(), config_path.display().to_string());
    let token = env["GROKCAST_TWILIO_AUTH_TOKEN"].clone();
    let config = AgentConfig::load(Some(&config_path), &|k| env.get(k).cloned()).unwrap();
    let (agent_port, admin_port) = (free_port(), free_port());
    let agent_url = format!("http://127.0.0.1:{agent_port}");
    // Only addresses change: the Services and the public URL are this machine's ports. The
    // stage timeouts grow for a loaded 2-core CI machine running every model on its CPU.
    let overrides = [
        ("GROKCAST_LISTEN_ADDR", format!("127.0.0.1:{agent_port}")),
        (
            "GROKCAST_ADMIN_LISTEN_ADDR",
            format!("127.0.0.1:{admin_port}"),
        ),
        ("GROKCAST_PUBLIC_URL", agent_url.clone()),
        (
            "GROKCAST_STT_URL",
            to_loopback(&config.stt.stage.url, &ports),
        ),
        (
            "GROKCAST_LLM_URL",
            to_loopback(&config.llm.stage.url, &ports),
        ),
        (
            "GROKCAST_TTS_URL",
            to_loopback(&config.tts.stage.url, &ports),
        ),
        // The quickstart's STT pool speaks Riva: the agent streams callers' audio to it.
        (
            "GROKCAST_STT_STREAMING_URL",
            to_loopback(&config.stt.streaming_url, &grpc_ports),
        ),
        ("GROKCAST_MODELS_DIR", paths.root().display().to_string()),
        ("GROKCAST_STT_TIMEOUT_MS", "60000".into()),
        ("GROKCAST_LLM_TIMEOUT_MS", "60000".into()),
        ("GROKCAST_TTS_TIMEOUT_MS", "60000".into()),
    ];
    let agent_child = Command::new(workspace_binary("grokcast-agent"))
        .args(&args)
        .envs(&env)
        .envs(overrides)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut agent = Process {
        child: agent_child,
        what: "grokcast-agent".into(),
    };
    // Ready as the kubelet asks: the probe's path on the port it names, which the agent
    // config must listen on.
    let probe = c
        .readiness_probe
        .as_ref()
        .and_then(|p| p.http_get.as_ref())
        .unwrap();
    let probed = c
        .ports
        .iter()
        .flatten()
        .find(|p| IntOrString::String(p.name.clone().unwrap_or_default()) == probe.port)
        .unwrap();
    assert!(
        config
            .admin_listen_addr
            .ends_with(&format!(":{}", probed.container_port)),
        "the probe's port {} is not the agent's admin port {}",
        probed.container_port,
        config.admin_listen_addr
    );
    let probe_path = probe.path.clone().unwrap();
    agent
        .wait_ready(
            &format!("http://127.0.0.1:{admin_port}{probe_path}"),
            Duration::from_secs(120),
        )
        .await;

    let report = caller::place_call(&CallerOptions {
        agent_url,
        auth_token: Some(token),
        utterances: demo::caller_voice(&[QUESTION.to_owned()]).unwrap(),
        reply_timeout: Duration::from_secs(90),
        ..CallerOptions::default()
    })
    .await
    .unwrap();
    drop(agent);
    // The question was transcribed by the stream, not by a fallback request.
    let stt_metrics = reqwest::get(format!("http://127.0.0.1:{}/metrics", ports["whisper-cpu"]))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let streams = stt_metrics
        .lines()
        .find(|l| {
            l.starts_with("grokcast_engine_requests_total")
                && l.contains("StreamingRecognize")
                && l.contains("code=\"0\"")
        })
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok());
    assert!(
        streams.is_some_and(|n| n >= 1.0),
        "no finished transcription stream on the STT pool:\n{stt_metrics}"
    );
    // The greeting as the TTS pool speaks it, in WAV, whose header gives the rate: what the
    // caller should have heard, to compare with what it did.
    let mut references = Vec::new();
    for i in 0..5 {
        let wav = reqwest::Client::new()
            .post(format!(
                "http://127.0.0.1:{}/v1/audio/speech",
                ports["piper-cpu"]
            ))
            .json(&serde_json::json!({
                "model": config.tts.stage.model,
                "input": config.persona.greeting,
                "response_format": "wav",
            }))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        let path = dir.join(format!("greeting-{i}.wav"));
        std::fs::write(&path, &wav).unwrap();
        references.push(decode(&caller::wav_audio(&path).unwrap()));
    }
    drop(pools);
    stop.cancel();
    let _ = tokio::time::timeout(WAIT, operator).await;
    let recording = dir.join("call.wav");
    caller::write_wav(&recording, &[&report.said, &report.heard]).unwrap();
    eprintln!(
        "the call, caller left and agent right: {}",
        recording.display()
    );

    assert!(report.rejected.is_none(), "{:?}", report.rejected);
    assert!(report.greeting_frames > 0, "no greeting");
    let turn = report.turns.first().expect("the caller spoke");
    assert!(
        turn.latency.is_some() && turn.agent_frames > 0,
        "no spoken answer: {:?}",
        report.turns
    );

    let whisper = grokcast_engines::stt::WhisperStt::load(&paths.whisper().unwrap()).unwrap();
    let loud = |b: &u8| codec::decode_sample(*b).unsigned_abs() > 500;
    let said_start = report.said.iter().position(loud).unwrap();
    let said_end = report.said.iter().rposition(loud).unwrap();

    // The question, as the agent received it.
    let question = transcribe(&whisper, &report.said[said_start..=said_end]);
    assert!(
        question.contains("opening") && question.contains("hour"),
        "Whisper heard the caller say {question:?}"
    );

    // An answer, and not the apology a failed stage plays.
    let answer_audio = &report.heard[said_end.min(report.heard.len())..];
    let answer = transcribe(&whisper, answer_audio);
    eprintln!("Whisper heard the agent answer {answer:?}");
    let answer_words = words(&answer);
    assert!(
        answer.chars().any(char::is_alphabetic),
        "no answer on the recording: {answer:?}"
    );
    let apology = words(&config.persona.apology);
    let apologised = apology.iter().filter(|w| answer_words.contains(w)).count();
    assert!(
        apologised * 2 < apology.len(),
        "the caller heard the apology: {answer:?}"
    );

    let greeting = decode(&report.heard[..said_start.min(report.heard.len())]);
    let (span_ratio, pitch_ratio) = greeting_ratios(&greeting, &references);
    eprintln!(
        "greeting as heard / as the TTS pool speaks it: length {span_ratio:.3}, pitch {pitch_ratio:.3}"
    );
    // Speed moves length and pitch in opposite directions: a wrongly assumed rate (24 kHz
    // for Piper's 22,050 Hz) plays 8% short and 9% high, a ratio of 1.18 between them (0.85
    // the other way). Piper varies each one by up to about 5% from one synthesis to the next,
    // on its own, in opposite directions too: a clean run has measured 1.10 (length 0.941,
    // pitch 1.037). The bounds sit halfway between.
    let speed = pitch_ratio / span_ratio;
    assert!(
        (0.89..=1.13).contains(&speed),
        "the greeting played at the wrong speed: {span_ratio:.3} times its length, \
         {pitch_ratio:.3} times its pitch"
    );
}
