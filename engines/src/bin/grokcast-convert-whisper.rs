//! Converts a CTranslate2 Whisper model directory to a whisper.cpp ggml file.
//!
//! `grokcast-convert-whisper --input DIR --output FILE`; `scripts/install.sh` runs it.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// Command line.
#[derive(Parser)]
#[command(about = "Convert CTranslate2 Whisper weights to whisper.cpp's ggml format")]
struct Args {
    /// Directory holding CTranslate2's model.bin and vocabulary.txt.
    #[arg(long)]
    input: PathBuf,
    /// The ggml file to write.
    #[arg(long)]
    output: PathBuf,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match grokcast_engines::whisper_convert::convert(&args.input, &args.output) {
        Ok(s) => {
            println!(
                "wrote {} ({} tensors, {} tokens, {} encoder and {} decoder layers)",
                args.output.display(),
                s.tensors,
                s.tokens,
                s.hparams.n_audio_layer,
                s.hparams.n_text_layer
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("grokcast-convert-whisper: {e}");
            ExitCode::FAILURE
        }
    }
}
