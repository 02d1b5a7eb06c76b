//! The Prometheus client's authentication against a server on 127.0.0.1: the bearer token is
//! read from its file on every request (so a rotated token is used at once), a missing or
//! empty file is a clear error naming the file, and HTTPS is trusted through the CA file.
//!
//! The server is a few lines of HTTP/1.1 over a raw socket (and over rustls for HTTPS, with a
//! CA and certificate made by rcgen for this run), standing in for Prometheus behind an
//! authenticating proxy such as kube-rbac-proxy: 401 unless the expected token is presented.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;

use super::prometheus::{PrometheusClient, PrometheusConfig, PrometheusError, parse_timeout};

const VECTOR: &str = r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1700000000,"1"]}]}}"#;

/// What the fake Prometheus accepts and what it was sent.
#[derive(Default)]
struct Gate {
    accepted: Mutex<String>,
    seen: Mutex<Vec<Option<String>>>,
}

impl Gate {
    fn accept(&self, token: &str) {
        *self.accepted.lock().unwrap() = format!("Bearer {token}");
    }

    fn seen(&self) -> Vec<Option<String>> {
        self.seen.lock().unwrap().clone()
    }
}

/// Answers one request: the vector when the Authorization header matches, else 401.
async fn answer<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, gate: &Gate) {
    let mut request = Vec::new();
    let mut buf = [0u8; 4096];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 64 * 1024 {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&request);
    let authorization = text.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("authorization")
            .then(|| value.trim().to_owned())
    });
    let ok = authorization.as_deref() == Some(gate.accepted.lock().unwrap().as_str());
    gate.seen.lock().unwrap().push(authorization);
    let (status, body) = if ok {
        ("200 OK", VECTOR)
    } else {
        ("401 Unauthorized", "Unauthorized\n")
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

async fn serve_http(gate: Arc<Gate>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let gate = gate.clone();
            tokio::spawn(async move { answer(stream, &gate).await });
        }
    });
    url
}

/// A CA, and a certificate it signed for 127.0.0.1, made fresh for this run.
struct Pki {
    ca_pem: String,
    server_cert: CertificateDer<'static>,
    server_key: Vec<u8>,
}

fn pki() -> Pki {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "grokcast test CA");
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    let server_key = rcgen::KeyPair::generate().unwrap();
    let server = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&server_key, &*ca)
        .unwrap();
    Pki {
        ca_pem: ca.pem(),
        server_cert: server.der().clone(),
        server_key: server_key.serialize_der(),
    }
}

async fn serve_https(gate: Arc<Gate>, pki: &Pki) -> String {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![pki.server_cert.clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pki.server_key.clone())),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let gate = gate.clone();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                // A client that does not trust the CA aborts the handshake: nothing to answer.
                if let Ok(tls) = acceptor.accept(stream).await {
                    answer(tls, &gate).await;
                }
            });
        }
    });
    url
}

/// A directory removed when the test ends.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let dir =
            std::env::temp_dir().join(format!("grokcast-{name}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn file(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn config(url: &str, token: Option<&Path>, ca: Option<&Path>) -> PrometheusConfig {
    let mut config = PrometheusConfig::new(url);
    config.bearer_token_file = token.map(Path::to_path_buf);
    config.ca_file = ca.map(Path::to_path_buf);
    config
}

#[tokio::test]
async fn https_with_a_rotating_bearer_token() {
    crate::run::install_crypto_provider();
    let scratch = Scratch::new("prom-auth");
    let pki = pki();
    let ca = scratch.file("ca.pem", &pki.ca_pem);
    let token = scratch.file("token", "first-secret\n");
    let gate = Arc::new(Gate::default());
    gate.accept("first-secret");
    let url = serve_https(gate.clone(), &pki).await;

    let client = PrometheusClient::new(&config(&url, Some(&token), Some(&ca))).unwrap();
    let samples = client.query("up").await.unwrap();
    assert_eq!(samples.len(), 1);
    assert_eq!(gate.seen(), vec![Some("Bearer first-secret".to_owned())]);

    // The token is rotated in place (as the kubelet does for projected tokens): the next
    // request carries the new one without a restart.
    std::fs::write(&token, "second-secret").unwrap();
    gate.accept("second-secret");
    assert_eq!(client.query_value("up").await.unwrap(), Some(1.0));
    assert_eq!(
        gate.seen().last().cloned().flatten().as_deref(),
        Some("Bearer second-secret")
    );

    // A token the server no longer accepts: unavailable, and the token is not in the error.
    gate.accept("third-secret");
    let err = client.query("up").await.unwrap_err();
    assert!(err.is_unavailable(), "{err}");
    let text = format!("{err} {err:?}");
    assert!(text.contains("401"), "{text}");
    assert!(!text.contains("second-secret"), "token leaked: {text}");

    // Without the CA the server's certificate is not trusted.
    let seen = gate.seen().len();
    let untrusting = PrometheusClient::new(&config(&url, Some(&token), None)).unwrap();
    let err = untrusting.query("up").await.unwrap_err();
    assert!(matches!(err, PrometheusError::Unreachable { .. }), "{err}");
    assert_eq!(gate.seen().len(), seen, "no request got past the handshake");
}

#[tokio::test]
async fn a_missing_or_empty_token_file_is_a_clear_error() {
    crate::run::install_crypto_provider();
    let scratch = Scratch::new("prom-token");
    let gate = Arc::new(Gate::default());
    gate.accept("secret");
    let url = serve_http(gate.clone()).await;

    let missing = scratch.0.join("no-such-token");
    let client = PrometheusClient::new(&config(&url, Some(&missing), None)).unwrap();
    let err = client.query("up").await.unwrap_err();
    assert!(matches!(err, PrometheusError::TokenFile { .. }), "{err}");
    assert!(
        err.is_unavailable(),
        "replicas hold rather than act on no data"
    );
    let text = err.to_string();
    assert!(
        text.contains("bearer token file") && text.contains("no-such-token"),
        "{text}"
    );

    let empty = scratch.file("empty", " \n");
    let client = PrometheusClient::new(&config(&url, Some(&empty), None)).unwrap();
    let err = client.query("up").await.unwrap_err();
    assert!(err.to_string().contains("empty"), "{err}");
    assert!(gate.seen().is_empty(), "no request without a token");

    // Once the file appears the same client authenticates.
    std::fs::write(&missing, "secret").unwrap();
    let client = PrometheusClient::new(&config(&url, Some(&missing), None)).unwrap();
    assert_eq!(client.query_value("up").await.unwrap(), Some(1.0));
    assert_eq!(gate.seen(), vec![Some("Bearer secret".to_owned())]);

    // Without a token file no Authorization header is sent at all.
    let anonymous = PrometheusClient::new(&config(&url, None, None)).unwrap();
    assert!(anonymous.query("up").await.is_err());
    assert_eq!(gate.seen().last().cloned(), Some(None));
}

#[test]
fn timeouts_parse_as_the_chart_writes_them() {
    use std::time::Duration;
    assert_eq!(parse_timeout("5s"), Ok(Duration::from_secs(5)));
    assert_eq!(parse_timeout("500ms"), Ok(Duration::from_millis(500)));
    assert_eq!(parse_timeout("1m"), Ok(Duration::from_secs(60)));
    assert_eq!(parse_timeout("2.5s"), Ok(Duration::from_millis(2500)));
    assert_eq!(parse_timeout("10"), Ok(Duration::from_secs(10)));
    for bad in ["", "s", "5h", "-1s", "0s", "fast", "2h"] {
        assert!(parse_timeout(bad).is_err(), "{bad:?}");
    }
}
