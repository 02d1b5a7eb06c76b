//! Runs the test control plane as a standalone process, for manual use with
//! kubectl or for driving an operator binary from scripts.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use grokcast_e2e::{Options, TestControlPlane};

/// Serve the Kubernetes API for tests on 127.0.0.1 (plain HTTP).
#[derive(Debug, Parser)]
#[command(name = "grokcast-test-apiserver", version)]
struct Args {
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Where to write a kubeconfig that points at the server.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Milliseconds before simulated controllers (Deployments, Jobs, PVCs) write status.
    #[arg(long, default_value_t = 20)]
    controller_delay_ms: u64,
    /// Events kept for watches to resume from.
    #[arg(long, default_value_t = 50_000)]
    history_limit: usize,
    /// Keep Deployments not ready (to exercise operators' waiting paths).
    #[arg(long)]
    deployments_not_ready: bool,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let cp = TestControlPlane::start_with(Options {
        listen: args.listen,
        history_limit: args.history_limit,
        controller_delay: Duration::from_millis(args.controller_delay_ms),
        kubeconfig: args.kubeconfig,
        ..Options::default()
    })
    .await?;
    if args.deployments_not_ready {
        cp.set_deployments_ready(false);
    }
    println!(
        "serving {} kubeconfig {}",
        cp.url(),
        cp.kubeconfig_path().display()
    );
    tokio::signal::ctrl_c().await?;
    cp.shutdown().await;
    Ok(())
}
