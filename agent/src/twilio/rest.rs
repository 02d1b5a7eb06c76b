//! Twilio's REST API, the part a live call needs: updating the call in progress
//! (`POST /2010-04-01/Accounts/{AccountSid}/Calls/{CallSid}.json`), to hang it up
//! (`Status=completed`) or to replace its TwiML (a `<Dial>` that transfers it).
//!
//! Requests authenticate with an API key (HTTP Basic, the key's SID and secret), never the
//! account's auth token, so the key can be revoked on its own; the secret comes from a Secret
//! and is never logged. Each request has a deadline, and Twilio's error answers (`code`,
//! `message`) come back as they are, so a refused request says why.

use std::time::Duration;

use crate::config::Secret;

/// Twilio's API host; tests point the client at the REST stand-in instead.
pub const API_BASE: &str = "https://api.twilio.com";

/// What to do to a live call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallUpdate {
    /// Hang up (`Status=completed`).
    Complete,
    /// Replace the call's TwiML, for a `<Dial>` that transfers it (`Twiml=...`).
    Twiml(String),
}

/// Why an update did not happen.
#[derive(Debug, thiserror::Error)]
pub enum RestError {
    /// The call SID is not one (`CA` and 32 hex digits): nothing was sent.
    #[error("{0:?} is not a Twilio call SID")]
    NotACallSid(String),
    /// Twilio answered with an error.
    #[error("Twilio refused the call update ({status}, code {code}): {message}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// Twilio's error code (20003: authentication, 20404: no such call).
        code: u64,
        /// Twilio's message.
        message: String,
    },
    /// No answer within the deadline.
    #[error("Twilio did not answer the call update within {0:?}")]
    Timeout(Duration),
    /// The request failed on the way.
    #[error("Twilio's API could not be reached: {0}")]
    Transport(String),
}

impl RestError {
    /// What went wrong without Twilio's message, which may quote the call's numbers: for
    /// logs.
    pub fn kind(&self) -> String {
        match self {
            RestError::NotACallSid(_) => "not a call SID".into(),
            RestError::Refused { status, code, .. } => {
                format!("Twilio refused the call update ({status}, code {code})")
            }
            RestError::Timeout(after) => format!("Twilio did not answer within {after:?}"),
            RestError::Transport(_) => "Twilio's API could not be reached".into(),
        }
    }
}

/// A client for one account, with one API key.
#[derive(Clone)]
pub struct RestClient {
    http: reqwest::Client,
    base: String,
    account_sid: String,
    key_sid: String,
    key_secret: Secret,
    timeout: Duration,
}

impl std::fmt::Debug for RestClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RestClient")
            .field("base", &self.base)
            .field("account_sid", &self.account_sid)
            .field("key_sid", &self.key_sid)
            .field("key_secret", &self.key_secret)
            .finish()
    }
}

/// Whether `sid` is a call SID: `CA` and 32 lowercase hex digits. It goes into the request's
/// path, so nothing else may.
pub fn is_call_sid(sid: &str) -> bool {
    sid.len() == 34
        && sid.starts_with("CA")
        && sid[2..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl RestClient {
    /// A client for `account_sid` at `base` ([`API_BASE`] in production).
    pub fn new(
        base: &str,
        account_sid: &str,
        key_sid: &str,
        key_secret: Secret,
        timeout: Duration,
    ) -> Self {
        Self {
            http: reqwest::Client::new(),
            base: base.trim_end_matches('/').to_owned(),
            account_sid: account_sid.to_owned(),
            key_sid: key_sid.to_owned(),
            key_secret,
            timeout,
        }
    }

    /// Updates the live call `call_sid`; returns the call's status as Twilio reports it.
    pub async fn update_call(
        &self,
        call_sid: &str,
        update: &CallUpdate,
    ) -> Result<String, RestError> {
        if !is_call_sid(call_sid) {
            return Err(RestError::NotACallSid(call_sid.to_owned()));
        }
        let url = format!(
            "{}/2010-04-01/Accounts/{}/Calls/{call_sid}.json",
            self.base, self.account_sid
        );
        let form: [(&str, &str); 1] = match update {
            CallUpdate::Complete => [("Status", "completed")],
            CallUpdate::Twiml(twiml) => [("Twiml", twiml.as_str())],
        };
        let request = self
            .http
            .post(&url)
            .basic_auth(&self.key_sid, Some(self.key_secret.expose()))
            .form(&form)
            .send();
        let response = tokio::time::timeout(self.timeout, request)
            .await
            .map_err(|_| RestError::Timeout(self.timeout))?
            .map_err(|e| RestError::Transport(e.without_url().to_string()))?;
        let status = response.status();
        let body = tokio::time::timeout(self.timeout, response.json::<serde_json::Value>())
            .await
            .map_err(|_| RestError::Timeout(self.timeout))?
            .unwrap_or_default();
        if !status.is_success() {
            return Err(RestError::Refused {
                status: status.as_u16(),
                code: body["code"].as_u64().unwrap_or(0),
                message: body["message"].as_str().unwrap_or_default().to_owned(),
            });
        }
        Ok(body["status"].as_str().unwrap_or_default().to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_call_sids_reach_the_path() {
        assert!(is_call_sid("CA0123456789abcdef0123456789abcdef"));
        for bad in [
            "",
            "CA0123456789abcdef0123456789abcde",
            "CA0123456789ABCDEF0123456789ABCDEF",
            "SM0123456789abcdef0123456789abcdef",
            "CA0123456789abcdef0123456789abcde/",
            "CA../../Accounts/AC0000000000000000",
        ] {
            assert!(!is_call_sid(bad), "{bad:?}");
        }
    }

    #[test]
    fn debug_output_hides_the_key_secret() {
        let client = RestClient::new(
            API_BASE,
            "AC0123456789abcdef0123456789abcdef",
            "SK0123456789abcdef0123456789abcdef",
            Secret::from("very-secret"),
            Duration::from_secs(5),
        );
        let printed = format!("{client:?}");
        assert!(!printed.contains("very-secret"), "{printed}");
        assert!(printed.contains("SK0123456789abcdef0123456789abcdef"));
    }
}
