//! Debian's `prometheus` for tests: started on a free 127.0.0.1 port, scraping the given
//! targets every second, with its data in a scratch directory removed on drop. Tests use it to
//! run the autoscaler's PromQL against the real server instead of a stub.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

/// Why the test Prometheus could not start.
#[derive(Debug, thiserror::Error)]
pub enum PrometheusError {
    /// The scratch directory or the config could not be written, or no port was free.
    #[error("preparing prometheus in {dir}: {source}")]
    Prepare {
        /// The scratch directory.
        dir: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The binary could not be started.
    #[error("starting {binary}: {source}")]
    Spawn {
        /// The binary.
        binary: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// It started but `/-/ready` never answered 200.
    #[error("prometheus at {url} was not ready within {limit:?}")]
    NotReady {
        /// Its base URL.
        url: String,
        /// How long it was given.
        limit: Duration,
    },
}

/// The `prometheus` binary: `GROKCAST_PROMETHEUS_BIN`, else the first on PATH.
pub fn binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("GROKCAST_PROMETHEUS_BIN") {
        return Some(PathBuf::from(path));
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|p| p.join("prometheus"))
        .find(|p| p.is_file())
}

/// One scrape target and the labels its series get (as a ServiceMonitor would add).
#[derive(Clone, Copy, Debug)]
pub struct Target<'a> {
    /// `host:port` serving `/metrics`.
    pub addr: SocketAddr,
    /// Extra labels, e.g. `service`.
    pub labels: &'a [(&'a str, &'a str)],
}

/// A running Prometheus; killed and its directory removed on drop.
#[derive(Debug)]
pub struct TestPrometheus {
    child: Child,
    url: String,
    dir: PathBuf,
}

impl TestPrometheus {
    /// Starts `binary` scraping `targets` every second and waits up to `limit` until ready.
    pub async fn start(
        binary: &Path,
        targets: &[Target<'_>],
        limit: Duration,
    ) -> Result<TestPrometheus, PrometheusError> {
        Self::start_every(binary, targets, Duration::from_secs(1), limit).await
    }

    /// [`TestPrometheus::start`], scraping every `interval` (also the scrape timeout): large
    /// targets on a busy machine need longer than a second.
    pub async fn start_every(
        binary: &Path,
        targets: &[Target<'_>],
        interval: Duration,
        limit: Duration,
    ) -> Result<TestPrometheus, PrometheusError> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let dir = std::env::temp_dir().join(format!(
            "grokcast-test-prometheus-{}-{nanos}",
            std::process::id()
        ));
        let prepare = |source| PrometheusError::Prepare {
            dir: dir.clone(),
            source,
        };
        std::fs::create_dir_all(dir.join("data")).map_err(prepare)?;
        std::fs::write(dir.join("prometheus.yml"), config(targets, interval)).map_err(prepare)?;
        // Prometheus takes a fixed port: borrow a free one from the kernel and hand it over.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(prepare)?
            .port();
        let child = Command::new(binary)
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| PrometheusError::Spawn {
                binary: binary.to_path_buf(),
                source,
            })?;
        let server = TestPrometheus {
            child,
            url: format!("http://127.0.0.1:{port}"),
            dir,
        };
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = tokio::time::Instant::now() + limit;
        while !ready(addr).await {
            if tokio::time::Instant::now() >= deadline {
                return Err(PrometheusError::NotReady {
                    url: server.url.clone(),
                    limit,
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(server)
    }

    /// Base URL of the HTTP API, e.g. `http://127.0.0.1:40123`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Kills the server (an outage) and waits until it is gone.
    pub async fn kill(&mut self) -> std::io::Result<()> {
        self.child.kill().await
    }
}

impl Drop for TestPrometheus {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn config(targets: &[Target<'_>], interval: Duration) -> String {
    let every = format!("{}ms", interval.as_millis().max(1));
    let mut out = format!(
        "global:\n  scrape_interval: {every}\n  scrape_timeout: {every}\n  evaluation_interval: {every}\nscrape_configs:\n  - job_name: test\n    static_configs:\n",
    );
    for target in targets {
        let labels: Vec<String> = target
            .labels
            .iter()
            .map(|(k, v)| format!("{k}: {v:?}"))
            .collect();
        out.push_str(&format!(
            "      - targets: ['{}']\n        labels: {{{}}}\n",
            target.addr,
            labels.join(", ")
        ));
    }
    out
}

/// `GET /-/ready` answered 200 (a raw HTTP/1.0 request: this crate has no HTTP client).
async fn ready(addr: SocketAddr) -> bool {
    let attempt = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        stream
            .write_all(b"GET /-/ready HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .await
            .ok()?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await.ok()?;
        let status = answer.split(|b| *b == b'\r').next()?;
        Some(status.ends_with(b" 200 OK"))
    };
    tokio::time::timeout(Duration::from_secs(2), attempt)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_lists_each_target_with_its_labels() {
        let addr = SocketAddr::from(([127, 0, 0, 1], 9100));
        let text = config(
            &[
                Target {
                    addr,
                    labels: &[("service", "llm-pool")],
                },
                Target { addr, labels: &[] },
            ],
            Duration::from_secs(1),
        );
        assert!(text.contains("scrape_interval: 1000ms"), "{text}");
        assert!(
            text.contains(
                "- targets: ['127.0.0.1:9100']\n        labels: {service: \"llm-pool\"}\n"
            ),
            "{text}"
        );
        assert!(text.contains("labels: {}\n"), "{text}");
    }
}
