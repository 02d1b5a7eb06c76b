//! CSM speech timing: time to first audio and real-time factor, with random weights in the
//! real layout (the timing of a forward pass does not depend on the weights' values).
//!
//! ```text
//! cargo run --release -p grokcast-engines --no-default-features --features csm \
//!     --bin csm-bench -- --shape tiny --runs 20
//! # on a GPU machine, the full CSM-1B shapes (a cuda build):
//! cargo run --release -p grokcast-engines --no-default-features --features cuda \
//!     --bin csm-bench -- --shape csm-1b --runs 20
//! ```
//!
//! `--model-dir` times a model directory instead (the real checkpoint, docs/engines.md).
//! Each run speaks `--text` for `--audio-ms` of audio (random weights never end on their
//! own, so every run makes the same number of frames).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use grokcast_engines::csm::{self, CsmConfig, CsmOptions, CsmVoice, MimiShape, SAMPLE_RATE};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Shape {
    /// The tests' tiny model.
    Tiny,
    /// CSM-1B's shapes (llama-1B backbone, llama-100M decoder, 32 codebooks, Mimi).
    #[value(name = "csm-1b")]
    Csm1b,
}

/// Command line.
#[derive(Debug, Parser)]
#[command(about = "Time CSM speech: time to first audio and real-time factor")]
struct Args {
    /// Shapes of the random model to time.
    #[arg(long, value_enum, default_value = "tiny")]
    shape: Shape,
    /// Time this model directory instead of random weights.
    #[arg(long)]
    model_dir: Option<PathBuf>,
    /// Runs (after one warm-up).
    #[arg(long, default_value_t = 10)]
    runs: usize,
    /// Audio per run, in milliseconds.
    #[arg(long, default_value_t = 2000)]
    audio_ms: u64,
    /// What each run says.
    #[arg(
        long,
        default_value = "Thanks for calling Example Dental, how can I help you today?"
    )]
    text: String,
    /// Stay on the CPU even when a GPU is present.
    #[arg(long)]
    cpu: bool,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn run(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let scratch;
    let dir = match &args.model_dir {
        Some(d) => d.clone(),
        None => {
            scratch =
                std::env::temp_dir().join(format!("grokcast-csm-bench-{}", std::process::id()));
            let (cfg, mimi) = match args.shape {
                Shape::Tiny => (csm::tiny_config(), Some(MimiShape::tiny())),
                Shape::Csm1b => (CsmConfig::csm_1b(), None),
            };
            let started = Instant::now();
            csm::write_random_model(&scratch, &cfg, mimi.as_ref())?;
            println!(
                "wrote random {:?} weights in {:.1} s",
                args.shape,
                started.elapsed().as_secs_f64()
            );
            scratch.clone()
        }
    };
    let started = Instant::now();
    let voice = CsmVoice::load(
        &dir,
        None,
        CsmOptions {
            max_audio: Duration::from_millis(args.audio_ms),
            prefer_gpu: !args.cpu,
            ..CsmOptions::default()
        },
    )?;
    println!(
        "loaded in {:.2} s on {}",
        started.elapsed().as_secs_f64(),
        if voice.on_gpu() { "the GPU" } else { "the CPU" }
    );
    let mut first = Vec::with_capacity(args.runs);
    let mut rtf = Vec::with_capacity(args.runs);
    for i in 0..=args.runs {
        let started = Instant::now();
        let mut to_first = None;
        let mut samples = 0usize;
        voice.synthesize(&args.text, None, &mut |frame| {
            to_first.get_or_insert_with(|| started.elapsed());
            samples += frame.len();
            true
        })?;
        let total = started.elapsed().as_secs_f64();
        let audio = samples as f64 / f64::from(SAMPLE_RATE);
        if i == 0 {
            continue; // warm-up: allocation and kernel selection
        }
        first.push(to_first.map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0));
        rtf.push(total / audio.max(1e-9));
    }
    first.sort_by(f64::total_cmp);
    rtf.sort_by(f64::total_cmp);
    println!(
        "time to first audio: median {:.1} ms, p95 {:.1} ms ({} runs)",
        percentile(&first, 0.5),
        percentile(&first, 0.95),
        first.len()
    );
    println!(
        "real-time factor (generation time / audio time, below 1 is faster than real time): median {:.3}, p95 {:.3} ({} ms of audio a run)",
        percentile(&rtf, 0.5),
        percentile(&rtf, 0.95),
        args.audio_ms
    );
    if args.model_dir.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("csm-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
