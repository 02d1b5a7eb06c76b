//! `grokcast-serve-llm`: the embedded engines behind OpenAI-compatible HTTP APIs
//! (see docs/engines.md). Built with `--no-default-features --features llama`.

fn main() -> std::process::ExitCode {
    grokcast_engines::server::cli::main_entry()
}
