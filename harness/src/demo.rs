//! The local demo: an agent on the embedded engines (Silero VAD, Whisper and Piper in-process,
//! Gemma in `grokcast-serve-llm` over the OpenAI chat API, the caller's audio streamed to
//! grokcast-serve's Riva speech recognition on a local port while they speak) and one
//! simulated Twilio call to it
//! over real sockets, with both sides' words, each turn's latency
//! and its stage breakdown, and the call written to a WAV (caller left, agent right).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::caller::{self, CallReport, CallerOptions};
use grokcast_agent::config::AgentConfig;
use grokcast_agent::context::{CallContext, TurnSample};
use grokcast_agent::metrics::Metrics;
use grokcast_agent::server::{self, AgentState};
use grokcast_agent::startup;

/// Why the demo failed.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The agent could not start.
    #[error("starting the agent: {0}")]
    Startup(#[from] startup::StartupError),
    /// The call failed.
    #[error("the call: {0}")]
    Call(#[from] caller::CallerError),
    /// Anything else (sockets, metrics, config).
    #[error("{0}")]
    Other(String),
}

/// What to say and where to write the call.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// The caller's questions, spoken by espeak-ng.
    pub say: Vec<String>,
    /// WAV file for the whole call.
    pub record: PathBuf,
    /// Stream the caller's audio to STT while they speak (Riva's gRPC protocol, served on a
    /// local port as an STT pool would serve it); otherwise each turn is transcribed in one
    /// request after it ends.
    pub streaming_stt: bool,
}

/// What happened.
#[derive(Debug)]
pub struct DemoReport {
    /// The caller's view of the call.
    pub call: CallReport,
    /// (speaker, words) as the agent understood and spoke them.
    pub transcript: Vec<(String, String)>,
    /// Each answered turn's figures.
    pub turns: Vec<TurnSample>,
}

/// `grokcast-serve-llm` (Gemma on llama.cpp) as a child process: llama.cpp and whisper.cpp
/// cannot share one binary, so the demo's LLM speaks the same OpenAI chat API a vLLM pool does.
struct LlmServer {
    child: std::process::Child,
    url: String,
}

impl Drop for LlmServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl LlmServer {
    async fn start() -> Result<Self, DemoError> {
        let binary = serve_llm_binary();
        if !binary.exists() {
            return Err(DemoError::Other(format!(
                "{} not found; build it with: cargo build -p grokcast-engines --no-default-features --features llama --bin grokcast-serve-llm",
                binary.display()
            )));
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| DemoError::Other(e.to_string()))?
            .port();
        let child = std::process::Command::new(&binary)
            .args(["--role", "llm", "--listen", &format!("127.0.0.1:{port}")])
            .stdout(std::process::Stdio::null())
            .spawn()
            .map_err(|e| DemoError::Other(format!("starting {}: {e}", binary.display())))?;
        let server = Self {
            child,
            url: format!("http://127.0.0.1:{port}/v1"),
        };
        let ready = format!("http://127.0.0.1:{port}/readyz");
        for _ in 0..1200 {
            if reqwest::get(&ready)
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                return Ok(server);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(DemoError::Other(
            "grokcast-serve-llm did not become ready within 120 s".into(),
        ))
    }
}

/// Where `grokcast-serve-llm` is: next to this binary (or its parent, for test binaries that
/// live in `target/*/deps`).
pub fn serve_llm_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    let beside = exe.with_file_name("grokcast-serve-llm");
    match exe.parent().and_then(|d| d.parent()) {
        Some(up) if !beside.exists() => up.join("grokcast-serve-llm"),
        _ => beside,
    }
}

/// grokcast-serve's streaming speech recognition (Riva's gRPC protocol on Whisper) on a
/// local port, as an STT pool serves it; stops when dropped.
struct SttStreamServer {
    url: String,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl SttStreamServer {
    async fn start() -> Result<Self, DemoError> {
        use grokcast_engines::server::{AppState, Engines, ServerConfig, riva};
        let other = |e: String| DemoError::Other(format!("the streaming STT server: {e}"));
        let paths =
            grokcast_engines::models::ModelPaths::discover().map_err(|e| other(e.to_string()))?;
        let path = paths.whisper().map_err(|e| other(e.to_string()))?;
        let whisper =
            grokcast_engines::stt::WhisperStt::load(&path).map_err(|e| other(e.to_string()))?;
        let state = AppState::new(ServerConfig::default()).map_err(|e| other(e.to_string()))?;
        state.set_engines(Engines {
            stt: Some(Arc::new(whisper)),
            ..Engines::default()
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| other(e.to_string()))?;
        let url = format!(
            "http://{}",
            listener.local_addr().map_err(|e| other(e.to_string()))?
        );
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(riva::serve(
            listener,
            state,
            grokcast_engines::stt_stream::Policy::default(),
            async {
                let _ = stopped.await;
            },
        ));
        Ok(Self { url, _stop: stop })
    }
}

/// Runs the demo.
pub async fn run(options: &DemoOptions) -> Result<DemoReport, DemoError> {
    let llm = LlmServer::start().await?;
    let stt_stream = match options.streaming_stt {
        true => Some(SttStreamServer::start().await?),
        false => None,
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| DemoError::Other(e.to_string()))?;
    let addr = listener
        .local_addr()
        .map_err(|e| DemoError::Other(e.to_string()))?;
    // A fresh token per run: the caller signs like Twilio and the agent checks it.
    let token = format!("demo-{}", std::process::id());
    let mut config = AgentConfig {
        voice_agent: "demo".into(),
        public_url: format!("http://{addr}"),
        listen_addr: addr.to_string(),
        twilio_auth_token: Some(token.clone().into()),
        ..AgentConfig::default()
    };
    config.llm.stage.url = llm.url.clone();
    config.llm.stage.model = "gemma-3-270m".into();
    // A CPU model is slower than a GPU pool; give it room before apologising.
    config.llm.stage.timeout_ms = 30_000;
    config.stt.stage.timeout_ms = 30_000;
    config.tts.stage.timeout_ms = 30_000;
    if let Some(server) = &stt_stream {
        config.stt.streaming_url = server.url.clone();
    }
    config
        .validate()
        .map_err(|e| DemoError::Other(e.to_string()))?;
    let vad = startup::load_vad(&config)?;
    let backends = startup::build_backends(&config)?;
    let metrics = Metrics::new("demo", "local").map_err(|e| DemoError::Other(e.to_string()))?;
    let state = Arc::new(AgentState::new(
        CallContext::new(config, backends, vad, metrics)
            .record_turns()
            .record_transcript(),
    ));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(server::serve(listener, state.clone(), async {
        let _ = stopped.await;
    }));
    for _ in 0..600 {
        if state.clips().is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let utterances = caller_voice(&options.say)?;
    let call = caller::place_call(&CallerOptions {
        agent_url: format!("http://{addr}"),
        auth_token: Some(token),
        utterances,
        reply_timeout: Duration::from_secs(60),
        ..CallerOptions::default()
    })
    .await?;
    caller::write_wav(&options.record, &[&call.said, &call.heard])?;
    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(20), server).await;
    drop(llm);
    drop(stt_stream);
    Ok(DemoReport {
        call,
        transcript: state.take_transcript(),
        turns: state.take_turn_samples(),
    })
}

/// The caller's questions, spoken by the Piper voice and sent as 8 kHz mu-law (the end-to-end
/// call tests speak with it too). espeak-ng's
/// formant voice, once squeezed through an 8 kHz phone line, is more than Whisper tiny.en can
/// follow (it hears "opening hours" as "oven"), and the demo is there to show the pipeline,
/// not the limits of a robot voice. The call tests keep espeak-ng: they time turns, not words.
pub fn caller_voice(say: &[String]) -> Result<Vec<Arc<Vec<u8>>>, DemoError> {
    let engine = |e: String| DemoError::Other(format!("the caller's voice: {e}"));
    let paths =
        grokcast_engines::models::ModelPaths::discover().map_err(|e| engine(e.to_string()))?;
    let (onnx, json) = paths.piper_voice().map_err(|e| engine(e.to_string()))?;
    // Without Piper's random noise, so a caller says the same thing the same way on every
    // run (tests and turn-eval hear the same audio each time).
    let voice = grokcast_engines::tts::PiperVoice::load(&onnx, &json)
        .map_err(|e| engine(e.to_string()))?
        .without_noise();
    let mut utterances = Vec::with_capacity(say.len());
    for text in say {
        let mut pcm = Vec::new();
        voice
            .synthesize(text, &mut |clause| {
                pcm.extend_from_slice(clause);
                true
            })
            .map_err(|e| engine(e.to_string()))?;
        utterances.push(Arc::new(caller::pcm_audio(pcm, voice.sample_rate())?));
    }
    Ok(utterances)
}

fn ms(d: Duration) -> u128 {
    d.as_millis()
}

impl DemoReport {
    /// Human-readable summary.
    pub fn render(&self, options: &DemoOptions) -> String {
        let mut out = String::new();
        out.push_str("Transcript (as the agent heard and spoke it):\n");
        let mut asked = options.say.iter();
        for (who, text) in &self.transcript {
            if who == "caller" {
                if let Some(said) = asked.next() {
                    out.push_str(&format!("  caller said:      {said}\n"));
                }
                out.push_str(&format!("  agent heard:      {text}\n"));
            } else {
                out.push_str(&format!("  agent:            {text}\n"));
            }
        }
        out.push_str("\nTurns (latency = caller stops speaking -> first agent audio):\n");
        for (i, t) in self.turns.iter().enumerate() {
            let caller_latency = self.call.turns.get(i).and_then(|c| c.latency);
            out.push_str(&format!(
                "  turn {}: {} ms  = endpointing {} + stt {} + llm to first clause {} (first token {}) + tts first audio {} + agent {:.1}\n",
                i + 1,
                ms(t.latency),
                ms(t.timings.endpointing),
                ms(t.timings.stt),
                ms(t.timings.llm_first_clause),
                ms(t.timings.llm_first_token),
                ms(t.timings.tts_first_audio),
                t.agent.as_secs_f64() * 1000.0,
            ));
            if let Some(l) = caller_latency {
                out.push_str(&format!("          caller measured {} ms\n", ms(l)));
            }
        }
        out.push_str(&format!(
            "\nCall recorded to {} (left: caller, right: agent).\n",
            options.record.display()
        ));
        out
    }
}
