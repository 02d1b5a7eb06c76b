//! `X-Twilio-Signature`: HMAC-SHA1 keyed with the account's auth token, over the full URL
//! followed by every POST parameter as name+value in name order, base64-encoded.
//!
//! The Media Streams WebSocket upgrade carries the same header computed over the `wss://` URL
//! with no parameters. Like Twilio's own validators, a URL is also accepted with its default
//! port added or its port removed, because proxies rewrite the Host header either way.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use sha1::Sha1;

type HmacSha1 = Hmac<Sha1>;

/// Why a signature was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SignatureError {
    /// The request had no `X-Twilio-Signature` header.
    #[error("request to {url} has no X-Twilio-Signature header")]
    Missing {
        /// The URL the request was for.
        url: String,
    },
    /// The header did not match.
    #[error("X-Twilio-Signature does not match the request to {url}")]
    Mismatch {
        /// The URL the request was for.
        url: String,
    },
}

/// Signs and checks requests with one auth token.
#[derive(Clone)]
pub struct RequestValidator {
    token: Vec<u8>,
}

impl std::fmt::Debug for RequestValidator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the token.
        f.write_str("RequestValidator { token: <redacted> }")
    }
}

impl RequestValidator {
    /// A validator for an auth token.
    pub fn new(auth_token: &str) -> Self {
        Self {
            token: auth_token.as_bytes().to_vec(),
        }
    }

    fn mac(&self, url: &str, params: &[(String, String)]) -> HmacSha1 {
        // HMAC accepts keys of any length, so this cannot fail.
        let mut mac = match HmacSha1::new_from_slice(&self.token) {
            Ok(mac) => mac,
            Err(_) => unreachable!("HMAC takes keys of any length"),
        };
        mac.update(url.as_bytes());
        let mut sorted: Vec<&(String, String)> = params.iter().collect();
        sorted.sort();
        for (name, value) in sorted {
            mac.update(name.as_bytes());
            mac.update(value.as_bytes());
        }
        mac
    }

    /// The signature Twilio would send for this request.
    pub fn sign(&self, url: &str, params: &[(String, String)]) -> String {
        BASE64.encode(self.mac(url, params).finalize().into_bytes())
    }

    /// Checks a signature header (constant-time), trying the URL with and without its default port.
    pub fn validate(
        &self,
        url: &str,
        params: &[(String, String)],
        signature: Option<&str>,
    ) -> Result<(), SignatureError> {
        let Some(signature) = signature else {
            return Err(SignatureError::Missing { url: url.into() });
        };
        let mismatch = || SignatureError::Mismatch { url: url.into() };
        let expected = BASE64.decode(signature.trim()).map_err(|_| mismatch())?;
        let candidates = [Some(url.to_string()), with_port(url), without_port(url)];
        for candidate in candidates.iter().flatten() {
            if self.mac(candidate, params).verify_slice(&expected).is_ok() {
                return Ok(());
            }
        }
        Err(mismatch())
    }
}

/// Splits `scheme://authority/rest` into its three parts.
fn split_url(url: &str) -> Option<(&str, &str, &str)> {
    let (scheme, rest) = url.split_once("://")?;
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    Some((scheme, &rest[..end], &rest[end..]))
}

fn default_port(scheme: &str) -> u16 {
    match scheme {
        "https" | "wss" => 443,
        _ => 80,
    }
}

fn has_port(authority: &str) -> bool {
    // An IPv6 literal has colons inside brackets; a port comes after the last bracket.
    let host_end = authority.rfind(']').unwrap_or(0);
    authority[host_end..].contains(':')
}

fn with_port(url: &str) -> Option<String> {
    let (scheme, authority, rest) = split_url(url)?;
    (!has_port(authority)).then(|| format!("{scheme}://{authority}:{}{rest}", default_port(scheme)))
}

fn without_port(url: &str) -> Option<String> {
    let (scheme, authority, rest) = split_url(url)?;
    if !has_port(authority) {
        return None;
    }
    let (host, _) = authority.rsplit_once(':')?;
    Some(format!("{scheme}://{host}{rest}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    // Vectors printed by twilio==9.10.1 (the Python library Twilio publishes):
    // `RequestValidator("12345").compute_signature(url, params)`.
    const TOKEN: &str = "12345";
    const URL: &str = "https://mycompany.com/myapp.php?foo=1&bar=2";

    fn voice_params() -> Vec<(String, String)> {
        params(&[
            ("CallSid", "CA1234567890ABCDE"),
            ("Caller", "+12349013030"),
            ("Digits", "1234"),
            ("From", "+12349013030"),
            ("To", "+18005551212"),
        ])
    }

    #[test]
    fn matches_twilio_python_for_a_voice_webhook() {
        let v = RequestValidator::new(TOKEN);
        assert_eq!(v.sign(URL, &voice_params()), "0/KCTR6DLpKmkAf8muzZqo1nDgQ=");
        let sig = v.sign(URL, &voice_params());
        assert_eq!(v.validate(URL, &voice_params(), Some(&sig)), Ok(()));
    }

    #[test]
    fn matches_twilio_python_for_a_stream_upgrade() {
        let v = RequestValidator::new(TOKEN);
        let url = "wss://voice.example.com/twilio/stream";
        assert_eq!(v.sign(url, &[]), "t/8qbLNvETeS9S8Jhtt2tU1aQPg=");
    }

    #[test]
    fn parameter_order_does_not_matter_but_values_do() {
        let v = RequestValidator::new(TOKEN);
        let sig = v.sign(URL, &voice_params());
        let mut shuffled = voice_params();
        shuffled.reverse();
        assert_eq!(v.validate(URL, &shuffled, Some(&sig)), Ok(()));
        let mut tampered = voice_params();
        tampered[2].1 = "9999".into();
        assert_eq!(
            v.validate(URL, &tampered, Some(&sig)),
            Err(SignatureError::Mismatch { url: URL.into() })
        );
    }

    #[test]
    fn wrong_token_missing_header_and_garbage_are_refused() {
        let sig = RequestValidator::new("other").sign(URL, &voice_params());
        let v = RequestValidator::new(TOKEN);
        assert!(v.validate(URL, &voice_params(), Some(&sig)).is_err());
        assert_eq!(
            v.validate(URL, &voice_params(), None),
            Err(SignatureError::Missing { url: URL.into() })
        );
        assert!(
            v.validate(URL, &voice_params(), Some("not base64 !!"))
                .is_err()
        );
        assert!(v.validate(URL, &voice_params(), Some("")).is_err());
    }

    #[test]
    fn default_port_is_accepted_either_way() {
        let v = RequestValidator::new(TOKEN);
        let sig = v.sign("https://mycompany.com:443/voice", &[]);
        assert_eq!(
            v.validate("https://mycompany.com/voice", &[], Some(&sig)),
            Ok(())
        );
        let sig = v.sign("https://mycompany.com/voice", &[]);
        assert_eq!(
            v.validate("https://mycompany.com:443/voice", &[], Some(&sig)),
            Ok(())
        );
        assert!(
            v.validate("https://othercompany.com/voice", &[], Some(&sig))
                .is_err()
        );
        assert!(
            v.validate("https://mycompany.com/voice2", &[], Some(&sig))
                .is_err()
        );
    }

    #[test]
    fn debug_output_hides_the_token() {
        assert!(!format!("{:?}", RequestValidator::new("s3cret")).contains("s3cret"));
    }

    /// Cross-checks random inputs against the Python library when it is installed
    /// (scripts/python-requirements.txt); CI installs it.
    #[test]
    fn agrees_with_twilio_python_on_generated_requests() {
        let script = "import sys,json; from twilio.request_validator import RequestValidator as V\n\
            for line in sys.stdin:\n    c=json.loads(line); print(V(c['t']).compute_signature(c['u'], dict(c['p'])))";
        type Case = (String, String, Vec<(String, String)>);
        let cases: Vec<Case> = (0..20)
            .map(|i| {
                let token = format!("tok{i}x{}", i * 7919);
                let url = format!("https://agent-{i}.example.com/twilio/voice?x={i}");
                let p = (0..i % 5)
                    .map(|j| {
                        (
                            format!("K{}{j}", (b'a' + (i * j % 26) as u8) as char),
                            format!("v é {i}{j}&="),
                        )
                    })
                    .collect();
                (token, url, p)
            })
            .collect();
        let input: String = cases
            .iter()
            .map(|(t, u, p)| serde_json::json!({"t": t, "u": u, "p": p}).to_string() + "\n")
            .collect();
        let child = std::process::Command::new("python3")
            .args(["-c", script])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn();
        let Ok(mut child) = child else {
            assert!(
                std::env::var_os("GROKCAST_REQUIRE_MODELS").is_none(),
                "python3 is required"
            );
            eprintln!("skipped: python3 not found");
            return;
        };
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                std::env::var_os("GROKCAST_REQUIRE_MODELS").is_none(),
                "twilio python library failed: {err}"
            );
            eprintln!("skipped: pip install -r scripts/python-requirements.txt ({err})");
            return;
        }
        let python: Vec<&str> = std::str::from_utf8(&out.stdout).unwrap().lines().collect();
        assert_eq!(python.len(), cases.len());
        for ((token, url, p), expected) in cases.iter().zip(python) {
            assert_eq!(
                RequestValidator::new(token).sign(url, p),
                expected,
                "{url} {p:?}"
            );
        }
    }
}
