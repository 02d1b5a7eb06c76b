//! A small Prometheus HTTP API client: instant queries over `/api/v1/query`, with a timeout,
//! an optional bearer token file (re-read on every request, because projected service-account
//! tokens rotate) and an optional CA bundle for in-cluster TLS.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::Url;
use serde::Deserialize;

/// Errors talking to Prometheus.
#[derive(Debug, thiserror::Error)]
pub enum PrometheusError {
    /// The configured URL cannot be used.
    #[error("Prometheus URL {url:?} is not a valid http(s) URL")]
    BadUrl {
        /// The URL as given.
        url: String,
    },
    /// The CA file could not be read or holds no PEM certificate.
    #[error("reading Prometheus CA bundle {path:?}: {message}")]
    CaFile {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The bearer token file could not be read.
    #[error("reading Prometheus bearer token file {path:?}: {source}")]
    TokenFile {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Building the HTTP client failed.
    #[error("building the Prometheus HTTP client: {0}")]
    Client(#[source] reqwest::Error),
    /// The request failed before an answer came back (connection refused, timeout, TLS).
    #[error("querying Prometheus at {url}: {source}")]
    Unreachable {
        /// The endpoint.
        url: String,
        /// The transport error.
        #[source]
        source: reqwest::Error,
    },
    /// Prometheus answered with an error for this query (bad PromQL, timeout on its side).
    #[error("Prometheus rejected query {query:?} ({error_type}): {message}")]
    Rejected {
        /// The PromQL.
        query: String,
        /// Prometheus' `errorType`, or the HTTP status.
        error_type: String,
        /// Prometheus' `error`.
        message: String,
    },
    /// The answer was not the API's JSON.
    #[error("Prometheus answered {query:?} with something that is not its API JSON: {message}")]
    BadResponse {
        /// The PromQL.
        query: String,
        /// What did not parse.
        message: String,
    },
}

impl PrometheusError {
    /// True when Prometheus itself could not be reached or did not answer properly, as opposed
    /// to rejecting one query.
    pub fn is_unavailable(&self) -> bool {
        !matches!(self, PrometheusError::Rejected { .. })
    }
}

/// How to reach Prometheus.
#[derive(Clone, Debug, PartialEq)]
pub struct PrometheusConfig {
    /// Base URL, e.g. `http://prometheus-operated.monitoring.svc:9090`.
    pub url: String,
    /// Per-request timeout; also sent to Prometheus as its query `timeout`.
    pub timeout: Duration,
    /// File holding a bearer token (for example a projected service-account token).
    pub bearer_token_file: Option<PathBuf>,
    /// PEM bundle of CAs to trust in addition to the system roots.
    pub ca_file: Option<PathBuf>,
}

impl PrometheusConfig {
    /// A config for `url` with a 5 s timeout and no auth.
    pub fn new(url: impl Into<String>) -> PrometheusConfig {
        PrometheusConfig {
            url: url.into(),
            timeout: Duration::from_secs(5),
            bearer_token_file: None,
            ca_file: None,
        }
    }
}

/// One element of an instant vector.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Its value (`NaN` and infinities are kept: `histogram_quantile` over no data gives NaN).
    pub value: f64,
    /// Evaluation timestamp, seconds since the Unix epoch.
    pub timestamp: f64,
}

/// A Prometheus HTTP API client.
#[derive(Clone, Debug)]
pub struct PrometheusClient {
    http: reqwest::Client,
    query_url: Url,
    timeout: Duration,
    bearer_token_file: Option<PathBuf>,
}

#[derive(Deserialize)]
struct ApiResponse {
    status: String,
    #[serde(default)]
    data: Option<ApiData>,
    #[serde(default, rename = "errorType")]
    error_type: Option<String>,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ApiData {
    result_type: String,
    result: serde_json::Value,
}

#[derive(Deserialize)]
struct VectorElement {
    #[serde(default)]
    metric: BTreeMap<String, String>,
    value: (f64, String),
}

impl PrometheusClient {
    /// Builds a client; reads the CA file now so a bad path fails at start, not per query.
    pub fn new(config: &PrometheusConfig) -> Result<PrometheusClient, PrometheusError> {
        let bad_url = || PrometheusError::BadUrl {
            url: config.url.clone(),
        };
        let mut base = Url::parse(config.url.trim_end_matches('/')).map_err(|_| bad_url())?;
        if !matches!(base.scheme(), "http" | "https") || base.cannot_be_a_base() {
            return Err(bad_url());
        }
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        let query_url = base.join("api/v1/query").map_err(|_| bad_url())?;
        let mut builder = reqwest::Client::builder().timeout(config.timeout);
        if let Some(path) = &config.ca_file {
            let ca_error = |message: String| PrometheusError::CaFile {
                path: path.clone(),
                message,
            };
            let pem = std::fs::read(path).map_err(|e| ca_error(e.to_string()))?;
            let certs =
                reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| ca_error(e.to_string()))?;
            if certs.is_empty() {
                return Err(ca_error("no PEM certificate in the file".into()));
            }
            builder = builder.tls_certs_merge(certs);
        }
        let http = builder.build().map_err(PrometheusError::Client)?;
        Ok(PrometheusClient {
            http,
            query_url,
            timeout: config.timeout,
            bearer_token_file: config.bearer_token_file.clone(),
        })
    }

    /// Runs an instant query and returns its vector (a scalar result becomes one sample).
    pub async fn query(&self, promql: &str) -> Result<Vec<Sample>, PrometheusError> {
        let mut url = self.query_url.clone();
        url.query_pairs_mut()
            .append_pair("query", promql)
            .append_pair("timeout", &format!("{}ms", self.timeout.as_millis()));
        let mut request = self.http.get(url);
        if let Some(path) = &self.bearer_token_file {
            // Read per request: projected service-account tokens are rotated in place.
            let token = read_token(path).await?;
            // reqwest marks the header sensitive, so it stays out of its debug output too.
            request = request.bearer_auth(token);
        }
        let unreachable = |source| PrometheusError::Unreachable {
            url: self.query_url.to_string(),
            source,
        };
        let response = request.send().await.map_err(unreachable)?;
        let status = response.status();
        let body = response.bytes().await.map_err(unreachable)?;
        parse_response(promql, status, &body)
    }

    /// Runs a query expected to give at most one sample and returns its value.
    pub async fn query_value(&self, promql: &str) -> Result<Option<f64>, PrometheusError> {
        Ok(self.query(promql).await?.first().map(|s| s.value))
    }
}

/// Reads a bearer token file; an empty one is an error rather than an empty `Bearer` header.
async fn read_token(path: &Path) -> Result<String, PrometheusError> {
    let token_error = |source| PrometheusError::TokenFile {
        path: path.to_path_buf(),
        source,
    };
    let raw = tokio::fs::read_to_string(path).await.map_err(token_error)?;
    let token = raw.trim();
    if token.is_empty() {
        return Err(token_error(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "the file is empty",
        )));
    }
    Ok(token.to_owned())
}

/// Parses a timeout as the chart writes it: `5s`, `500ms`, `1m`, `1.5s`, or bare seconds.
pub fn parse_timeout(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration such as 5s, 500ms or 1m"))?;
    let seconds = match unit.trim() {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "m" => value * 60.0,
        other => {
            return Err(format!(
                "unknown unit {other:?} in {text:?} (use ms, s or m)"
            ));
        }
    };
    if !(seconds.is_finite() && seconds > 0.0 && seconds <= 3600.0) {
        return Err(format!("{text:?} must be more than 0 and at most 1h"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

fn parse_response(
    promql: &str,
    status: reqwest::StatusCode,
    body: &[u8],
) -> Result<Vec<Sample>, PrometheusError> {
    let bad = |message: String| PrometheusError::BadResponse {
        query: promql.to_owned(),
        message,
    };
    let parsed: ApiResponse = match serde_json::from_slice(body) {
        Ok(parsed) => parsed,
        Err(e) => {
            let snippet: String = String::from_utf8_lossy(body).chars().take(200).collect();
            return Err(bad(format!("HTTP {status}, {e}: {snippet:?}")));
        }
    };
    if parsed.status != "success" {
        return Err(PrometheusError::Rejected {
            query: promql.to_owned(),
            error_type: parsed
                .error_type
                .unwrap_or_else(|| format!("HTTP {}", status.as_u16())),
            message: parsed.error.unwrap_or_default(),
        });
    }
    let data = parsed
        .data
        .ok_or_else(|| bad("success without data".into()))?;
    let parse_value = |raw: &str| {
        raw.parse::<f64>()
            .map_err(|_| bad(format!("value {raw:?}")))
    };
    match data.result_type.as_str() {
        "vector" => {
            let elements: Vec<VectorElement> =
                serde_json::from_value(data.result).map_err(|e| bad(e.to_string()))?;
            elements
                .into_iter()
                .map(|e| {
                    Ok(Sample {
                        labels: e.metric,
                        value: parse_value(&e.value.1)?,
                        timestamp: e.value.0,
                    })
                })
                .collect()
        }
        "scalar" => {
            let (timestamp, raw): (f64, String) =
                serde_json::from_value(data.result).map_err(|e| bad(e.to_string()))?;
            Ok(vec![Sample {
                labels: BTreeMap::new(),
                value: parse_value(&raw)?,
                timestamp,
            }])
        }
        other => Err(bad(format!(
            "result type {other} (queries must give an instant vector)"
        ))),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use reqwest::StatusCode;

    #[test]
    fn parses_vectors_scalars_and_special_values() {
        let body = br#"{"status":"success","data":{"resultType":"vector","result":[
            {"metric":{"stage":"stt"},"value":[1700000000.5,"0.25"]},
            {"metric":{"stage":"agent"},"value":[1700000000.5,"NaN"]},
            {"metric":{},"value":[1700000000.5,"+Inf"]}]}}"#;
        let samples = parse_response("q", StatusCode::OK, body).unwrap();
        assert_eq!(samples.len(), 3);
        assert_eq!(samples[0].labels["stage"], "stt");
        assert_eq!(samples[0].value, 0.25);
        assert_eq!(samples[0].timestamp, 1_700_000_000.5);
        assert!(samples[1].value.is_nan());
        assert_eq!(samples[2].value, f64::INFINITY);
        let scalar = br#"{"status":"success","data":{"resultType":"scalar","result":[1,"42"]}}"#;
        assert_eq!(
            parse_response("q", StatusCode::OK, scalar).unwrap()[0].value,
            42.0
        );
    }

    #[test]
    fn bad_answers_are_clear_errors() {
        let rejected =
            br#"{"status":"error","errorType":"bad_data","error":"parse error at char 5"}"#;
        let err = parse_response("sum(", StatusCode::BAD_REQUEST, rejected).unwrap_err();
        assert!(!err.is_unavailable());
        assert!(
            err.to_string().contains("bad_data") && err.to_string().contains("sum("),
            "{err}"
        );

        let html = b"<html>502 Bad Gateway</html>";
        let err = parse_response("up", StatusCode::BAD_GATEWAY, html).unwrap_err();
        assert!(err.is_unavailable());
        assert!(err.to_string().contains("502"), "{err}");

        let matrix = br#"{"status":"success","data":{"resultType":"matrix","result":[]}}"#;
        let err = parse_response("up[5m]", StatusCode::OK, matrix).unwrap_err();
        assert!(err.to_string().contains("matrix"), "{err}");

        let bad_value = br#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,"abc"]}]}}"#;
        assert!(parse_response("up", StatusCode::OK, bad_value).is_err());
    }

    #[test]
    fn config_errors_are_caught_at_start() {
        for url in ["not a url", "ftp://prom:9090", "mailto:x@y"] {
            let err = PrometheusClient::new(&PrometheusConfig::new(url)).unwrap_err();
            assert!(
                matches!(err, PrometheusError::BadUrl { .. }),
                "{url}: {err}"
            );
        }
        let mut config = PrometheusConfig::new("http://127.0.0.1:9090/prom");
        let client = PrometheusClient::new(&config).unwrap();
        assert_eq!(
            client.query_url.as_str(),
            "http://127.0.0.1:9090/prom/api/v1/query"
        );
        config.ca_file = Some(PathBuf::from("/nonexistent/ca.pem"));
        let err = PrometheusClient::new(&config).unwrap_err();
        assert!(err.to_string().contains("ca.pem"), "{err}");
    }
}
