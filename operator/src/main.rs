//! `grokcast-operator`: run the controllers, or print CRDs, RBAC and rendered children
//! (the command line lives in [`grokcast_operator::cli`]).

fn main() -> std::process::ExitCode {
    grokcast_operator::cli::main_from(std::env::args_os())
}
