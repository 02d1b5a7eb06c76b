//! A stand-in for Twilio's REST API (Twilio's cloud cannot run here): the call resource a
//! live call is updated through, `POST /2010-04-01/Accounts/{AccountSid}/Calls/{CallSid}.json`,
//! over real HTTP. It answers as Twilio does, checked against Twilio's own Python library
//! (`harness/tests/twilio_rest.rs`):
//!
//! - HTTP Basic with an API key's SID and secret (or the account's SID and auth token), else
//!   401 with Twilio's error body (`code` 20003);
//! - an account other than the one it serves, or a call it does not know: 404 (`code` 20404);
//! - `Status=completed` (or `canceled`) ends the call; `Twiml=...` replaces its instructions
//!   (a `<Dial>` transfers it); neither, or another status: 400 (`code` 20001);
//! - the answer is the call resource as JSON (`sid`, `account_sid`, `status`, ...).
//!
//! Every update is recorded, so a test sees what the agent asked of the call.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Form, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine as _;

/// One update the stand-in accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update {
    /// The call.
    pub call_sid: String,
    /// `Status`, if given.
    pub status: Option<String>,
    /// `Twiml`, if given.
    pub twiml: Option<String>,
}

#[derive(Debug, Default)]
struct Calls {
    /// Known calls and their status.
    status: HashMap<String, String>,
    updates: Vec<Update>,
}

/// The stand-in: one account, the credentials it accepts, the calls it knows.
#[derive(Clone)]
pub struct TwilioRest {
    account_sid: String,
    /// (username, password) pairs that authenticate: API keys, or the account and its token.
    credentials: Arc<Vec<(String, String)>>,
    calls: Arc<Mutex<Calls>>,
    /// Held before answering, to test a client's deadline.
    delay: Arc<Mutex<Duration>>,
    /// Counts accepted updates, so a simulated call learns its own was changed.
    changes: Arc<tokio::sync::watch::Sender<u64>>,
}

impl std::fmt::Debug for TwilioRest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TwilioRest")
            .field("account_sid", &self.account_sid)
            .finish_non_exhaustive()
    }
}

impl TwilioRest {
    /// Serves `account_sid`, accepting `key_sid`:`key_secret`.
    pub fn new(account_sid: &str, key_sid: &str, key_secret: &str) -> Self {
        Self {
            account_sid: account_sid.to_owned(),
            credentials: Arc::new(vec![(key_sid.to_owned(), key_secret.to_owned())]),
            calls: Arc::default(),
            delay: Arc::default(),
            changes: Arc::new(tokio::sync::watch::Sender::new(0)),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Calls> {
        self.calls.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes `call_sid` a call in progress (as Twilio knows a call once it is answered).
    pub fn add_call(&self, call_sid: &str) {
        self.lock()
            .status
            .insert(call_sid.to_owned(), "in-progress".into());
    }

    /// The status of `call_sid`, if known.
    pub fn status(&self, call_sid: &str) -> Option<String> {
        self.lock().status.get(call_sid).cloned()
    }

    /// Every update accepted so far.
    pub fn updates(&self) -> Vec<Update> {
        self.lock().updates.clone()
    }

    /// The last update accepted for `call_sid`: what Twilio did to the call (hung it up, or
    /// replaced its TwiML), which ends its Media Stream.
    pub fn update_of(&self, call_sid: &str) -> Option<Update> {
        self.lock()
            .updates
            .iter()
            .rev()
            .find(|u| u.call_sid == call_sid)
            .cloned()
    }

    /// Changes whenever an update is accepted.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Answers every request this late.
    pub fn set_delay(&self, delay: Duration) {
        *self.delay.lock().unwrap_or_else(|p| p.into_inner()) = delay;
    }

    /// The REST routes.
    pub fn router(&self) -> Router {
        Router::new()
            .route(
                "/2010-04-01/Accounts/{account}/Calls/{call}",
                post(update_call),
            )
            .with_state(self.clone())
    }

    /// Serves on `listener` until the task is dropped.
    pub async fn serve(self, listener: tokio::net::TcpListener) -> std::io::Result<()> {
        axum::serve(listener, self.router()).await
    }

    fn authenticated(&self, headers: &HeaderMap) -> bool {
        let Some(encoded) = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Basic "))
        else {
            return false;
        };
        let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded.trim()) else {
            return false;
        };
        let decoded = String::from_utf8_lossy(&decoded);
        let Some((user, password)) = decoded.split_once(':') else {
            return false;
        };
        self.credentials
            .iter()
            .any(|(u, p)| u == user && p == password)
    }
}

/// Twilio's error body.
fn error(status: StatusCode, code: u64, message: &str) -> Response {
    let body = serde_json::json!({
        "code": code,
        "message": message,
        "more_info": format!("https://www.twilio.com/docs/errors/{code}"),
        "status": status.as_u16(),
    });
    (status, axum::Json(body)).into_response()
}

async fn update_call(
    State(rest): State<TwilioRest>,
    Path((account, call)): Path<(String, String)>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let delay = *rest.delay.lock().unwrap_or_else(|p| p.into_inner());
    tokio::time::sleep(delay).await;
    if !rest.authenticated(&headers) {
        return error(StatusCode::UNAUTHORIZED, 20003, "Authenticate");
    }
    let Some(call_sid) = call.strip_suffix(".json") else {
        return error(
            StatusCode::NOT_FOUND,
            20404,
            "The requested resource was not found",
        );
    };
    let mut calls = rest.lock();
    if account != rest.account_sid || !calls.status.contains_key(call_sid) {
        return error(
            StatusCode::NOT_FOUND,
            20404,
            &format!(
                "The requested resource /2010-04-01/Accounts/{account}/Calls/{call} was not found"
            ),
        );
    }
    let status = form.get("Status").cloned();
    let twiml = form.get("Twiml").cloned();
    match (&status, &twiml) {
        (None, None) => {
            return error(
                StatusCode::BAD_REQUEST,
                20001,
                "Either Url, Twiml or Status is required",
            );
        }
        (Some(s), _) if s != "completed" && s != "canceled" => {
            return error(
                StatusCode::BAD_REQUEST,
                20001,
                &format!("Status {s} is not valid: completed or canceled"),
            );
        }
        _ => {}
    }
    if let Some(s) = &status {
        calls.status.insert(call_sid.to_owned(), s.clone());
    }
    calls.updates.push(Update {
        call_sid: call_sid.to_owned(),
        status,
        twiml,
    });
    rest.changes.send_modify(|n| *n += 1);
    let now = "Sun, 06 Dec 2026 00:00:00 +0000";
    let body = serde_json::json!({
        "sid": call_sid,
        "account_sid": account,
        "api_version": "2010-04-01",
        "status": calls.status[call_sid],
        "direction": "inbound",
        "date_created": now,
        "date_updated": now,
        "uri": format!("/2010-04-01/Accounts/{account}/Calls/{call_sid}.json"),
    });
    (StatusCode::OK, axum::Json(body)).into_response()
}
