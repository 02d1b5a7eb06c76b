//! `grokcast-e2e cluster up`: a real Kubernetes control plane on this machine, for people
//! and for the tests' shared cluster (see `grokcast_e2e::cluster`).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use grokcast_e2e::cluster::{ClusterOptions, run_daemon};

/// GrokCast's end-to-end harness.
#[derive(Debug, Parser)]
#[command(name = "grokcast-e2e", version)]
struct Args {
    #[command(subcommand)]
    command: Top,
}

#[derive(Debug, Subcommand)]
enum Top {
    /// The test cluster: etcd, kube-apiserver, kube-controller-manager, kube-scheduler and
    /// kwok with fake CPU and A100 nodes, on 127.0.0.1.
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
    /// The operator, exactly as the `grokcast-operator` binary runs it (same arguments and
    /// environment), built with this harness so a test always runs the current code.
    Operator {
        /// Arguments for `grokcast-operator`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<std::ffi::OsString>,
    },
}

#[derive(Debug, Subcommand)]
enum ClusterCommand {
    /// Start a cluster, print its KUBECONFIG, and run until Ctrl-C.
    Up {
        /// Directory for the cluster's certificates, etcd data, kubeconfigs and logs;
        /// emptied first.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Tear down once no test process has held the directory's users.lock for this many
        /// seconds (the tests' shared cluster).
        #[arg(long)]
        exit_when_idle: Option<u64>,
        /// Seconds before pods on the slow node pool become Ready.
        #[arg(long, default_value_t = 4)]
        slow_ready_delay: u64,
    },
}

fn main() -> std::process::ExitCode {
    match Args::parse().command {
        Top::Operator { args } => grokcast_operator::cli::main_from(
            std::iter::once(std::ffi::OsString::from("grokcast-operator")).chain(args),
        ),
        Top::Cluster {
            command:
                ClusterCommand::Up {
                    dir,
                    exit_when_idle,
                    slow_ready_delay,
                },
        } => cluster_up(dir, exit_when_idle, slow_ready_delay),
    }
}

fn cluster_up(
    dir: Option<PathBuf>,
    exit_when_idle: Option<u64>,
    slow_ready_delay: u64,
) -> std::process::ExitCode {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .try_init();
    let dir = dir.unwrap_or_else(|| std::env::temp_dir().join("grokcast-cluster"));
    let opts = ClusterOptions {
        slow_ready_delay: Duration::from_secs(slow_ready_delay),
        ..ClusterOptions::default()
    };
    // One thread: the components die with the thread that started them (PR_SET_PDEATHSIG),
    // so that thread must live as long as the cluster.
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(run_daemon(
        &dir,
        exit_when_idle.map(Duration::from_secs),
        &opts,
    )) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
