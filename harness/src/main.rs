//! `grokcast-harness`: `call` places simulated Twilio calls; `demo` runs the local demo;
//! `instant-servers` runs the instant model-server test double. None of it is in the agent
//! that answers real calls (`grokcast-agent serve`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use grokcast_harness::caller::{self, CallerOptions};
use grokcast_harness::instant::{ChatRules, InstantServers};

#[derive(Parser)]
#[command(
    name = "grokcast-harness",
    version,
    about = "GrokCast test harness: simulated Twilio callers, instant model servers, the local demo"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
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
        /// Talk to the agent's browser playground with this token (Opus over its WebSocket,
        /// as the page does) instead of placing Twilio calls.
        #[arg(long, env = "GROKCAST_PLAYGROUND_TOKEN", hide_env_values = true)]
        playground_token: Option<String>,
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
        #[arg(long, default_value_t = grokcast_harness::instant::SPEECH_RATE)]
        speech_rate: u32,
        /// Leave the `x-sample-rate` header off speech responses (as OpenAI does).
        #[arg(long)]
        no_speech_rate_header: bool,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    grokcast_agent::startup::init_tracing();
    match Cli::parse().command {
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
            playground_token,
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
                playground_token,
                ..CallerOptions::default()
            };
            call(options, calls, Duration::from_millis(spread_ms), record).await
        }
        Command::Demo {
            say,
            record,
            batch_stt,
        } => {
            let options = grokcast_harness::demo::DemoOptions {
                say,
                record,
                streaming_stt: !batch_stt,
            };
            eprintln!(
                "Starting an agent on the embedded engines (Silero VAD, Whisper tiny.en and Piper in-process, Gemma 3 270M in grokcast-serve-llm) and calling it..."
            );
            let report = grokcast_harness::demo::run(&options).await?;
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
