//! `engines-bench`: CPU figures of every engine on the installed models.
//!
//! `cargo run -p grokcast-engines --bin engines-bench -- --runs 10` (the dev profile
//! already optimises dependencies, and the engines are C++ built with optimisation)
//! prints medians and p95 of: STT latency and real-time factor for a 3 s utterance,
//! TTS time to first audio and real-time factor, LLM time to first token and decode
//! tokens/s, VAD time per 32 ms chunk, and the time Smart Turn takes to judge a pause.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use grokcast_engines::audio;
use grokcast_engines::models::{self, ModelPaths};
use grokcast_engines::tts::PiperVoice;
use grokcast_engines::vad::{CHUNK_SAMPLES, SileroVad};

/// Command line.
#[derive(Debug, Parser)]
#[command(about = "Benchmark GrokCast's embedded engines on this CPU")]
struct Args {
    /// Timed runs per engine (after one warm-up run).
    #[arg(long, default_value_t = 10)]
    runs: usize,
    /// VAD chunks to time.
    #[arg(long, default_value_t = 2000)]
    vad_chunks: usize,
    /// CPU threads for STT and LLM (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// The end-of-turn silence a streamed utterance is followed by before the agent closes
    /// its stream (the agent's `endOfTurnSilenceMs`).
    #[arg(long, default_value_t = 300)]
    end_silence_ms: u64,
}

/// Median and 95th percentile.
fn summary(mut v: Vec<f64>) -> (f64, f64) {
    if v.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    v.sort_by(f64::total_cmp);
    let pick = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    (pick(0.5), pick(0.95))
}

fn row(name: &str, unit: &str, values: Vec<f64>) {
    let (median, p95) = summary(values);
    println!("{name:<34} {median:>10.3} {p95:>10.3}  {unit}");
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// CPU seconds this process has used (user and system), from /proc.
#[cfg(feature = "whisper")]
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return f64::NAN;
    };
    // Fields after the command name (which may hold spaces, inside parentheses).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name; Linux
    // counts them in USER_HZ, which is 100.
    (ticks(11) + ticks(12)) / 100.0
}

/// Streamed STT through grokcast-serve's Riva gRPC service on a local port: the utterance
/// at the line's pace in 20 ms messages, then `end_silence_ms` of silence (the agent's
/// end-of-turn wait), then the client closes its side. Prints the time from that close to
/// the final transcript (what a turn waits for STT), and the CPU per streamed utterance.
#[cfg(feature = "whisper")]
fn streamed_stt(
    stt: std::sync::Arc<grokcast_engines::stt::WhisperStt>,
    pcm: &[f32],
    runs: usize,
    end_silence_ms: u64,
) -> Result<(), Box<dyn std::error::Error>> {
    use grokcast_engines::riva::asr::streaming_recognize_request::StreamingRequest;
    use grokcast_engines::riva::asr::{
        RecognitionConfig, StreamingRecognitionConfig, StreamingRecognizeRequest,
    };
    use grokcast_engines::riva::{AudioEncoding, RivaSpeechRecognitionClient};
    use grokcast_engines::server::{AppState, Engines, ServerConfig, riva};

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let state = AppState::new(ServerConfig::default())?;
        state.set_engines(Engines {
            stt: Some(stt),
            ..Engines::default()
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        tokio::spawn(riva::serve(
            listener,
            state,
            grokcast_engines::stt_stream::Policy::default(),
            std::future::pending(),
        ));
        let mut client = RivaSpeechRecognitionClient::connect(url).await?;
        let mut audio = pcm.to_vec();
        audio.resize(pcm.len() + end_silence_ms as usize * 16, 0.0);
        let mut after_close = Vec::new();
        let mut cpu = Vec::new();
        let mut text = String::new();
        for i in 0..=runs {
            let config = StreamingRecognizeRequest {
                streaming_request: Some(StreamingRequest::StreamingConfig(
                    StreamingRecognitionConfig {
                        config: Some(RecognitionConfig {
                            encoding: AudioEncoding::LinearPcm as i32,
                            sample_rate_hertz: 16_000,
                            language_code: "en-US".into(),
                            ..RecognitionConfig::default()
                        }),
                        interim_results: true,
                    },
                )),
            };
            let (tx, rx) = tokio::sync::mpsc::channel(8);
            tx.send(config).await?;
            let requests = grokcast_engines::receiver_stream(rx);
            let mut responses = client.streaming_recognize(requests).await?.into_inner();
            let reader = tokio::spawn(async move {
                let mut last = (String::new(), Instant::now());
                while let Ok(Some(r)) = responses.message().await {
                    if let Some(result) = r.results.first().filter(|r| r.is_final) {
                        let words = result.alternatives.first().map(|a| a.transcript.clone());
                        last = (words.unwrap_or_default(), Instant::now());
                    }
                }
                last
            });
            let cpu_before = cpu_seconds();
            let started = Instant::now();
            for (n, chunk) in audio.chunks(320).enumerate() {
                let mut bytes = Vec::with_capacity(chunk.len() * 2);
                audio::push_s16le(&mut bytes, chunk);
                tx.send(StreamingRecognizeRequest {
                    streaming_request: Some(StreamingRequest::AudioContent(bytes)),
                })
                .await?;
                // At the line's pace: message n leaves 20 ms after message n - 1.
                let due = started + Duration::from_millis(20 * (n as u64 + 1));
                tokio::time::sleep_until(due.into()).await;
            }
            drop(tx);
            let closed = Instant::now();
            let (final_text, at) = reader.await?;
            if i > 0 {
                after_close.push(ms(at.saturating_duration_since(closed)));
                cpu.push(cpu_seconds() - cpu_before);
            }
            text = final_text;
        }
        row("STT streamed: final after end of turn", "ms", after_close);
        row("STT streamed: CPU per 3 s utterance", "CPU-s", cpu);
        println!("  (streamed transcript: {text:?})");
        Ok::<(), Box<dyn std::error::Error>>(())
    })
}

fn main() -> ExitCode {
    match run(&Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("engines-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let paths = ModelPaths::discover()?;
    models::init_onnxruntime(&paths.onnxruntime()?)?;
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from));
    let runs = args.runs.max(1);
    println!(
        "engines-bench: {runs} runs, {threads} threads, {} CPUs",
        std::thread::available_parallelism().map_or(1, usize::from)
    );
    println!("{:<34} {:>10} {:>10}", "figure", "median", "p95");

    // TTS: one short phone reply of two clauses.
    let (onnx, json) = paths.piper_voice()?;
    let voice = PiperVoice::load(&onnx, &json)?;
    let reply = "Thanks for calling, we are open from nine to five on weekdays.";
    let mut ttfa = Vec::new();
    let mut tts_rtf = Vec::new();
    let mut utterance = Vec::new();
    for i in 0..=runs {
        let start = Instant::now();
        let mut first = None;
        let mut samples = Vec::new();
        voice.synthesize(reply, &mut |c| {
            first.get_or_insert_with(|| start.elapsed());
            samples.extend_from_slice(c);
            true
        })?;
        let total = start.elapsed();
        if i > 0 {
            ttfa.push(ms(first.unwrap_or(total)));
            tts_rtf.push(
                total.as_secs_f64() / (samples.len() as f64 / f64::from(voice.sample_rate())),
            );
        }
        utterance = samples;
    }
    row("TTS time to first audio", "ms", ttfa);
    row("TTS real-time factor", "x (lower is faster)", tts_rtf);

    // STT: the reply above, cut or padded to exactly 3 s at 16 kHz.
    let mut pcm = audio::resample(&utterance, voice.sample_rate(), 16_000);
    pcm.resize(48_000, 0.0);
    #[cfg(feature = "whisper")]
    {
        use grokcast_engines::stt::{SttOptions, WhisperStt};
        let stt = WhisperStt::load_with(&paths.whisper()?, SttOptions { threads })?;
        let mut latency = Vec::new();
        let mut text = String::new();
        for i in 0..=runs {
            let start = Instant::now();
            text = stt.transcribe(&pcm, Some("en"))?;
            if i > 0 {
                latency.push(ms(start.elapsed()));
            }
        }
        let rtf = latency.iter().map(|l| l / 3000.0).collect();
        row("STT latency, 3 s utterance", "ms", latency);
        row("STT real-time factor", "x (lower is faster)", rtf);
        println!("  (transcript: {text:?})");
        streamed_stt(std::sync::Arc::new(stt), &pcm, runs, args.end_silence_ms)?;
    }

    #[cfg(feature = "llama")]
    {
        use grokcast_engines::llm::{ChatMessage, GemmaLlm, GenerationParams, LlmOptions, Role};
        let llm = GemmaLlm::load(
            &paths.llm()?,
            LlmOptions {
                threads,
                ..LlmOptions::default()
            },
        )?;
        let messages = [
            ChatMessage::new(Role::System, "You are the receptionist of Sunny Dental."),
            ChatMessage::new(Role::User, "Hi, can I book a cleaning for next week?"),
        ];
        // A stop string that never occurs and a high token cap would measure decoding
        // of junk; a real reply is what the phone path sees, so measure that.
        let params = GenerationParams {
            max_tokens: 48,
            ..GenerationParams::default()
        };
        let mut ttft = Vec::new();
        let mut tps = Vec::new();
        let mut answer = String::new();
        for i in 0..=runs {
            answer.clear();
            let stats = llm.generate(&messages, &params, &mut |t| {
                answer.push_str(t);
                true
            })?;
            if i > 0 {
                let first = stats.time_to_first_token.unwrap_or(stats.total);
                ttft.push(ms(first));
                let decode = (stats.total - first).as_secs_f64();
                if stats.completion_tokens > 1 && decode > 0.0 {
                    tps.push(f64::from(stats.completion_tokens - 1) / decode);
                }
            }
        }
        row("LLM time to first token", "ms", ttft);
        row("LLM decode rate", "tokens/s", tps);
        println!("  (answer: {answer:?})");
    }

    // VAD: chunks of the utterance, one call's state, one thread.
    let vad = SileroVad::load(&paths.vad()?)?;
    let mut state = vad.new_state();
    let chunks: Vec<&[f32]> = pcm.chunks_exact(CHUNK_SAMPLES).collect();
    let mut per_chunk = Vec::with_capacity(args.vad_chunks);
    for i in 0..args.vad_chunks + 50 {
        let chunk = chunks[i % chunks.len()];
        let start = Instant::now();
        vad.speech_probability(&mut state, chunk)?;
        if i >= 50 {
            per_chunk.push(start.elapsed().as_secs_f64() * 1e6);
        }
    }
    row("VAD time per 32 ms chunk", "us", per_chunk);

    // VAD for many calls in one run, as an agent carrying that many calls batches them:
    // time per call's chunk, so it compares with the row above.
    for calls in [8usize, 32, 100] {
        let mut states: Vec<_> = (0..calls).map(|_| vad.new_state()).collect();
        let mut probabilities = vec![0.0; calls];
        let mut per_call_chunk = Vec::with_capacity(args.vad_chunks / calls + 1);
        let runs = (args.vad_chunks / calls).max(20);
        for i in 0..runs + 5 {
            let mut batch: Vec<_> = states
                .iter_mut()
                .enumerate()
                .map(|(c, s)| (s, chunks[(i + c) % chunks.len()]))
                .collect();
            let start = Instant::now();
            vad.speech_probabilities(&mut batch, &mut probabilities)?;
            if i >= 5 {
                per_call_chunk.push(start.elapsed().as_secs_f64() * 1e6 / calls as f64);
            }
        }
        row(
            &format!("VAD per call's chunk, {calls} calls batched"),
            "us",
            per_call_chunk,
        );
    }

    // Smart Turn: one judgement of a pause, the 3 s utterance plus 200 ms of silence (the
    // model always hears 8 s, so the length does not change its cost); one thread, as in the
    // agent, where each call's pauses are judged on a blocking thread of their own.
    let turn = grokcast_engines::smart_turn::SmartTurn::load(&paths.smart_turn()?)?;
    let mut paused = pcm.clone();
    paused.resize(pcm.len() + 3200, 0.0);
    let mut judge = Vec::new();
    for i in 0..=runs {
        let start = Instant::now();
        turn.completion_probability(&paused)?;
        if i > 0 {
            judge.push(ms(start.elapsed()));
        }
    }
    row("Smart Turn judgement of a pause", "ms", judge);
    Ok(())
}
