//! `grokcast-agent`: `serve` answers Twilio calls; `call` places simulated Twilio calls;
//! `instant-servers` runs the instant model-server test double.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use grokcast_agent::caller::{self, CallerOptions};
use grokcast_agent::config::AgentConfig;
use grokcast_agent::instant::{ChatRules, InstantServers};
use grokcast_agent::metrics::Metrics;
use grokcast_agent::server::{self, AgentState};
use grokcast_agent::startup;

#[derive(Parser)]
#[command(name = "grokcast-agent", version, about = "GrokCast voice agent")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Answer Twilio Media Streams calls.
    Serve {
        /// agent.yaml (the operator mounts it from a ConfigMap); environment variables override it.
        #[arg(long, env = "GROKCAST_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Place simulated Twilio calls to an agent and time each turn.
    Call {
        /// The agent's base URL (its publicUrl), e.g. http://127.0.0.1:8080.
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        agent_url: String,
        /// Auth token to sign requests with, as Twilio does.
        #[arg(long, env = "GROKCAST_TWILIO_AUTH_TOKEN", hide_env_values = true)]
        auth_token: Option<String>,
        /// Say this (spoken by espeak-ng); repeat for several turns.
        #[arg(long)]
        say: Vec<String>,
        /// Play this WAV file as a turn; repeat for several turns (after any --say).
        #[arg(long)]
        wav: Vec<PathBuf>,
        /// Interrupt the agent this many ms after its reply starts, instead of waiting.
        #[arg(long)]
        interrupt_after_ms: Option<u64>,
        /// Record what the (first) caller heard to this WAV file.
        #[arg(long)]
        record: Option<PathBuf>,
        /// Concurrent calls.
        #[arg(long, default_value_t = 1)]
        calls: usize,
        /// Dial the calls at evenly spaced moments over this many ms, as independent
        /// callers would, instead of all at once (when every turn of every call coincides).
        #[arg(long, default_value_t = 0)]
        spread_ms: u64,
        /// Longest wait for a reply, in seconds.
        #[arg(long, default_value_t = 20)]
        reply_timeout_s: u64,
        /// PEM file of CA certificates to trust for an https:// agent, on top of the
        /// system's roots (an ingress certificate from a private CA).
        #[arg(long)]
        ca_file: Option<PathBuf>,
    },
    /// Local demo: an agent on the embedded engines answers one simulated call.
    Demo {
        /// What the caller asks (spoken by the Piper voice); repeat for several turns.
        #[arg(long, default_value = "Hi, what are your opening hours today?")]
        say: Vec<String>,
        /// Where to write the call (stereo WAV: caller left, agent right).
        #[arg(long, default_value = "demo-call.wav")]
        record: PathBuf,
        /// Transcribe each turn in one request after it ends instead of streaming the
        /// caller's audio while they speak (to compare the two).
        #[arg(long)]
        batch_stt: bool,
    },
    /// Run the instant OpenAI-compatible model servers (a test double for GPU model pools).
    InstantServers {
        /// Address to listen on; the API is under /v1.
        #[arg(long, default_value = "127.0.0.1:8000")]
        listen: String,
        /// What every transcription returns.
        #[arg(long)]
        transcript: Option<String>,
        /// What every chat reply says.
        #[arg(long)]
        reply: Option<String>,
        /// Whose rules for the order of chat messages to enforce: `gemma3` (default, as vLLM
        /// serving Gemma 3 does) or `openai` (any order).
        #[arg(long, default_value = "gemma3")]
        chat_rules: ChatRules,
        /// Sample rate of the synthetic speech, in Hz.
        #[arg(long, default_value_t = grokcast_agent::instant::SPEECH_RATE)]
        speech_rate: u32,
        /// Leave the `x-sample-rate` header off speech responses (as OpenAI does).
        #[arg(long)]
        no_speech_rate_header: bool,
    },
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("GROKCAST_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if std::env::var("GROKCAST_LOG_FORMAT").is_ok_and(|f| f == "json") {
        builder.json().init();
    } else {
        builder.init();
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_tracing();
    match Cli::parse().command {
        Command::Serve { config } => serve(config).await,
        Command::Call {
            agent_url,
            auth_token,
            say,
            wav,
            interrupt_after_ms,
            record,
            calls,
            spread_ms,
            reply_timeout_s,
            ca_file,
        } => {
            let mut utterances = Vec::new();
            for text in &say {
                utterances.push(Arc::new(caller::espeak_audio(text)?));
            }
            for path in &wav {
                utterances.push(Arc::new(caller::wav_audio(path)?));
            }
            let options = CallerOptions {
                agent_url,
                auth_token,
                utterances,
                interrupt_after: interrupt_after_ms.map(Duration::from_millis),
                reply_timeout: Duration::from_secs(reply_timeout_s),
                ca_file,
                ..CallerOptions::default()
            };
            call(options, calls, Duration::from_millis(spread_ms), record).await
        }
        Command::Demo {
            say,
            record,
            batch_stt,
        } => {
            let options = grokcast_agent::demo::DemoOptions {
                say,
                record,
                streaming_stt: !batch_stt,
            };
            eprintln!(
                "Starting an agent on the embedded engines (Silero VAD, Whisper tiny.en and Piper in-process, Gemma 3 270M in grokcast-serve-llm) and calling it..."
            );
            let report = grokcast_agent::demo::run(&options).await?;
            println!("{}", report.render(&options));
            if report.turns.is_empty() {
                anyhow::bail!("the agent did not answer the call");
            }
            Ok(())
        }
        Command::InstantServers {
            listen,
            transcript,
            reply,
            chat_rules,
            speech_rate,
            no_speech_rate_header,
        } => {
            let servers = InstantServers::default();
            servers.set(|b| {
                b.chat_rules = chat_rules;
                b.speech_rate = speech_rate;
                b.speech_rate_header = !no_speech_rate_header;
                if let Some(t) = transcript {
                    b.transcript = t;
                }
                if let Some(r) = reply {
                    b.reply = r;
                }
            });
            let listener = tokio::net::TcpListener::bind(&listen)
                .await
                .with_context(|| format!("binding {listen}"))?;
            eprintln!(
                "instant model servers on http://{listen}/v1 (test double for GPU model pools)"
            );
            servers.serve(listener).await?;
            Ok(())
        }
    }
}

async fn serve(config_path: Option<PathBuf>) -> anyhow::Result<()> {
    let config = AgentConfig::load(config_path.as_deref(), &|k| std::env::var(k).ok())?;
    let vad = startup::load_vad(&config)?;
    let turn_model = startup::load_turn_model(&config)?;
    let backends = startup::build_backends(&config)?;
    let metrics = Metrics::new(&config.voice_agent, &config.namespace)?;
    metrics.set_turn_slo(config.slo.turn_latency_p95());
    let listener = tokio::net::TcpListener::bind(&config.listen_addr)
        .await
        .with_context(|| format!("binding {}", config.listen_addr))?;
    let admin = tokio::net::TcpListener::bind(&config.admin_listen_addr)
        .await
        .with_context(|| format!("binding {}", config.admin_listen_addr))?;
    tracing::info!(listen = %config.listen_addr, admin = %config.admin_listen_addr, public_url = %config.public_url, max_calls = config.max_calls, "agent listening");
    let state =
        Arc::new(AgentState::new(config, backends, vad, metrics).with_turn_model(turn_model));
    server::serve_apart(listener, admin, state, shutdown_signal()).await?;
    Ok(())
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the agent");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM"),
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted"),
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn call(
    options: CallerOptions,
    calls: usize,
    spread: Duration,
    record: Option<PathBuf>,
) -> anyhow::Result<()> {
    let reports = caller::place_calls(&options, calls, spread).await;
    let mut latencies = Vec::new();
    let mut failures = 0;
    for (i, report) in reports.iter().enumerate() {
        match report {
            Err(e) => {
                failures += 1;
                println!("call {}: failed: {e}", i + 1);
            }
            Ok(r) if r.rejected.is_some() => {
                failures += 1;
                println!(
                    "call {}: rejected ({})",
                    i + 1,
                    r.rejected.as_deref().unwrap_or("")
                );
            }
            Ok(r) => {
                println!(
                    "call {} ({}): greeting {} ms of audio, {} clear(s), {} late frame(s)",
                    i + 1,
                    r.call_sid,
                    r.greeting_frames * 20,
                    r.clears,
                    r.late_frames
                );
                for (n, turn) in r.turns.iter().enumerate() {
                    match turn.latency {
                        Some(l) => {
                            latencies.push(l);
                            println!(
                                "  turn {}: latency {} ms, reply {} ms of audio",
                                n + 1,
                                l.as_millis(),
                                turn.agent_frames * 20
                            );
                        }
                        None => println!("  turn {}: no reply", n + 1),
                    }
                    if let Some(c) = turn.clear_after_speech_start {
                        println!(
                            "  turn {}: agent cleared its audio {} ms after the caller started talking",
                            n + 1,
                            c.as_millis()
                        );
                    }
                }
            }
        }
    }
    latencies.sort();
    if !latencies.is_empty() {
        println!(
            "turn latency over {} turns: p50 {} ms, p95 {} ms",
            latencies.len(),
            percentile(&latencies, 0.5).as_millis(),
            percentile(&latencies, 0.95).as_millis()
        );
    }
    if let (Some(path), Some(Ok(first))) = (record, reports.first()) {
        caller::write_wav(&path, &[&first.heard])?;
        println!("recorded what the caller heard to {}", path.display());
    }
    if failures > 0 {
        anyhow::bail!("{failures} of {calls} calls failed");
    }
    Ok(())
}
