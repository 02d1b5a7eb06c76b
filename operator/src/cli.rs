//! The `grokcast-operator` command line: run the controllers, or print CRDs, RBAC and
//! rendered children. A library module so the end-to-end harness can run the very same
//! process entry (`grokcast-e2e operator ...`) as a separate process it can kill or freeze.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use crate::autoscale::AutoscalerConfig;
use crate::autoscale::prometheus::parse_timeout;
use crate::run::OperatorConfig;
use crate::settings::BuildSettings;
use crate::{http, leader, metrics, rbac, render};
use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "grokcast-operator",
    version,
    about = "Reconciles ModelPool and VoiceAgent resources"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controllers (the default).
    Run(Box<RunArgs>),
    /// Print both CRDs as YAML.
    Crd,
    /// Print the children the operator would apply for the ModelPools and VoiceAgents in
    /// FILE or DIR, without a cluster. References resolve only within the input.
    Render {
        /// A YAML file or a directory of them (searched recursively).
        #[arg(short = 'f', long = "filename")]
        path: PathBuf,
        #[command(flatten)]
        images: ImageArgs,
    },
    /// Print the ClusterRole with exactly the permissions the operator uses.
    Rbac {
        /// metadata.name of the ClusterRole.
        #[arg(long, default_value = "grokcast-operator")]
        name: String,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(clap::Args, Clone)]
struct ImageArgs {
    /// Image for engine vllm.
    #[arg(long, env = "GROKCAST_VLLM_IMAGE", default_value_t = BuildSettings::default().vllm_image)]
    vllm_image: String,
    /// Image for engine whisper.
    #[arg(long, env = "GROKCAST_WHISPER_IMAGE", default_value_t = BuildSettings::default().whisper_image)]
    whisper_image: String,
    /// Image for engine csm.
    #[arg(long, env = "GROKCAST_CSM_IMAGE", default_value_t = BuildSettings::default().csm_image)]
    csm_image: String,
    /// Image for engine grokcast (grokcast-serve).
    #[arg(long, env = "GROKCAST_SERVE_IMAGE", default_value_t = BuildSettings::default().grokcast_serve_image)]
    serve_image: String,
    /// Image for the weight preload Job (Python with huggingface_hub).
    #[arg(long, env = "GROKCAST_PRELOAD_IMAGE", default_value_t = BuildSettings::default().preload_image)]
    preload_image: String,
    /// Image for VoiceAgent pods.
    #[arg(long, env = "GROKCAST_AGENT_IMAGE", default_value_t = BuildSettings::default().agent_image)]
    agent_image: String,
}

impl ImageArgs {
    fn settings(&self) -> BuildSettings {
        BuildSettings {
            vllm_image: self.vllm_image.clone(),
            whisper_image: self.whisper_image.clone(),
            csm_image: self.csm_image.clone(),
            grokcast_serve_image: self.serve_image.clone(),
            preload_image: self.preload_image.clone(),
            agent_image: self.agent_image.clone(),
            // Decided from the API server's version when running; render targets current ones.
            ..BuildSettings::default()
        }
    }
}

#[derive(clap::Args, Clone)]
struct RunArgs {
    /// Address for /metrics, /healthz and /readyz.
    #[arg(long, env = "GROKCAST_HTTP_ADDR", default_value = "0.0.0.0:8080")]
    http_addr: SocketAddr,
    /// Namespaces to watch, comma separated; empty watches all.
    #[arg(
        long,
        env = "GROKCAST_WATCH_NAMESPACES",
        value_delimiter = ',',
        default_value = ""
    )]
    watch_namespaces: Vec<String>,
    /// Log format.
    #[arg(long, env = "GROKCAST_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Log filter (tracing EnvFilter syntax).
    #[arg(long, env = "GROKCAST_LOG", default_value = "info")]
    log: String,
    /// Elect a leader through a Lease; set false only when running exactly one replica.
    #[arg(long, env = "GROKCAST_LEADER_ELECT", default_value_t = true, action = clap::ArgAction::Set)]
    leader_elect: bool,
    /// Lease name.
    #[arg(
        long,
        env = "GROKCAST_LEASE_NAME",
        default_value = "grokcast-operator-leader"
    )]
    lease_name: String,
    /// Lease namespace (normally the operator's own).
    #[arg(long, env = "GROKCAST_LEASE_NAMESPACE", default_value = "default")]
    lease_namespace: String,
    /// This replica's identity in the Lease and in Events.
    #[arg(long, env = "GROKCAST_POD_NAME")]
    pod_name: Option<String>,
    /// Prometheus base URL; enables the latency-SLO autoscaler (unset or empty: off).
    #[arg(long, env = "GROKCAST_PROMETHEUS_URL")]
    prometheus_url: Option<String>,
    /// Timeout of one Prometheus query, e.g. 5s or 500ms.
    #[arg(long, env = "GROKCAST_PROMETHEUS_TIMEOUT", default_value = "5s", value_parser = parse_timeout)]
    prometheus_timeout: Duration,
    /// File holding a bearer token for Prometheus, read on every query so rotated tokens work.
    #[arg(long, env = "GROKCAST_PROMETHEUS_BEARER_TOKEN_FILE")]
    prometheus_bearer_token_file: Option<PathBuf>,
    /// PEM file of CAs to trust for an https Prometheus URL, besides the system roots.
    #[arg(long, env = "GROKCAST_PROMETHEUS_CA_FILE")]
    prometheus_ca_file: Option<PathBuf>,
    #[command(flatten)]
    images: ImageArgs,
}

impl RunArgs {
    /// The autoscaler's settings, or `None` when no Prometheus URL is given: the chart leaves
    /// the variable unset for an empty value, but an empty one must not start a client that
    /// fails every query.
    fn autoscaler(&self) -> Option<AutoscalerConfig> {
        let url = self
            .prometheus_url
            .as_deref()
            .map(str::trim)
            .filter(|u| !u.is_empty())?;
        let mut config = AutoscalerConfig::new(url);
        config.prometheus.timeout = self.prometheus_timeout;
        config.prometheus.bearer_token_file = self.prometheus_bearer_token_file.clone();
        config.prometheus.ca_file = self.prometheus_ca_file.clone();
        Some(config)
    }
}

fn init_logging(format: LogFormat, filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn shutdown_signal(token: CancellationToken) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
                () = token.cancelled() => return,
            }
            tracing::info!("shutting down");
            token.cancel();
            return;
        }
    }
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = token.cancelled() => return,
    }
    token.cancel();
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    init_logging(args.log_format, &args.log);
    crate::run::install_crypto_provider();
    if let Some(path) = &args.prometheus_bearer_token_file {
        // Checked once here for an early hint; queries read it again each time (rotation),
        // and only the path is ever logged, never the token.
        if let Err(error) = std::fs::metadata(path) {
            tracing::warn!(path = %path.display(), %error, "Prometheus bearer token file is not readable yet");
        }
    }
    let identity = args
        .pod_name
        .clone()
        .unwrap_or_else(|| format!("grokcast-operator-{}", std::process::id()));
    let mut kube_config = kube::Config::infer().await.context(
        "connecting to the Kubernetes API: reading its config (kubeconfig or in-cluster)",
    )?;
    // The API server's audit log then tells which replica made each request.
    kube_config
        .headers
        .push((::http::header::USER_AGENT, user_agent(&identity)));
    let client = kube::Client::try_from(kube_config)
        .context("connecting to the Kubernetes API (kubeconfig or in-cluster config)")?;
    let metrics = metrics::Metrics::new().context("registering metrics")?;
    let shutdown = CancellationToken::new();
    tokio::spawn(shutdown_signal(shutdown.clone()));

    let ready = Arc::new(AtomicBool::new(true));
    let http_task = tokio::spawn(http::serve(
        args.http_addr,
        metrics.clone(),
        ready,
        shutdown.clone(),
    ));
    let namespaces: Vec<String> = args
        .watch_namespaces
        .iter()
        .filter(|n| !n.is_empty())
        .cloned()
        .collect();
    let config = OperatorConfig {
        settings: args.images.settings(),
        namespaces,
        lease: args.leader_elect.then(|| {
            leader::LeaseConfig::new(
                args.lease_name.clone(),
                args.lease_namespace.clone(),
                identity.clone(),
            )
        }),
        identity,
        autoscaler: args.autoscaler(),
    };
    let result = crate::run::run(client, config, metrics, shutdown.clone()).await;
    shutdown.cancel();
    match http_task.await {
        Ok(Err(e)) => tracing::error!(error = %e, "metrics server failed"),
        Err(e) => tracing::error!(error = %e, "metrics server task failed"),
        Ok(Ok(())) => {}
    }
    result.context("operator stopped")
}

/// `grokcast-operator/<version> (<identity>)`; an identity that is not a valid header value
/// (it comes from the pod name, so it should be) is left out rather than failing the start.
fn user_agent(identity: &str) -> ::http::HeaderValue {
    let product = concat!("grokcast-operator/", env!("CARGO_PKG_VERSION"));
    ::http::HeaderValue::from_str(&format!("{product} ({identity})"))
        .unwrap_or_else(|_| ::http::HeaderValue::from_static(product))
}

fn print_crds() -> anyhow::Result<()> {
    for crd in grokcast_crds::crds() {
        print!("---\n{}", grokcast_crds::crd_yaml(&crd)?);
    }
    Ok(())
}

/// Parses `args` (the first is the program name) and runs the command they name, as the
/// `grokcast-operator` binary does.
pub fn main_from<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let cli = Cli::parse_from(args);
    let result = match cli.command {
        Some(Command::Crd) => print_crds(),
        Some(Command::Rbac { name }) => serde_yaml::to_string(&rbac::cluster_role(&name))
            .map(|y| print!("{y}"))
            .map_err(Into::into),
        Some(Command::Render { path, images }) => (|| {
            let input = render::read_input(&path)?;
            let out = render::render(&input, &images.settings())?;
            print!("{}", out.yaml);
            if !out.problems.is_empty() {
                for p in &out.problems {
                    eprintln!("grokcast-operator render: {p}");
                }
                anyhow::bail!("{} resource(s) could not be rendered", out.problems.len());
            }
            Ok(())
        })(),
        Some(Command::Run(args)) => tokio_main(*args),
        None => tokio_main(cli.run),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("grokcast-operator: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn tokio_main(args: RunArgs) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(run(args))
}
