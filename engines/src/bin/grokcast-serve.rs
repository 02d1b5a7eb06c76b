//! `grokcast-serve`: the embedded engines behind OpenAI-compatible HTTP APIs
//! (see docs/engines.md).

fn main() -> std::process::ExitCode {
    grokcast_engines::server::cli::main_entry()
}
