//! Twilio's REST call updates: the agent's client against the stand-in, and the stand-in
//! against Twilio's own Python library (`twilio` on PyPI), so both speak the protocol Twilio's
//! cloud speaks: the path, Basic auth with an API key, the form fields, the JSON answers and
//! the error codes.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use grokcast_agent::config::Secret;
use grokcast_agent::twilio::rest::{CallUpdate, RestClient, RestError};
use grokcast_agent::twilio::twiml::{DialTarget, dial};
use grokcast_harness::twilio_rest::{TwilioRest, Update};

const ACCOUNT: &str = "AC0123456789abcdef0123456789abcdef";
const KEY: &str = "SK0123456789abcdef0123456789abcdef";
const SECRET: &str = "key-secret/+=";
const CALL: &str = "CAaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const OTHER: &str = "CAbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

async fn stand_in() -> (TwilioRest, String) {
    let rest = TwilioRest::new(ACCOUNT, KEY, SECRET);
    rest.add_call(CALL);
    rest.add_call(OTHER);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(rest.clone().serve(listener));
    (rest, base)
}

fn client(base: &str, secret: &str) -> RestClient {
    RestClient::new(
        base,
        ACCOUNT,
        KEY,
        Secret::from(secret),
        Duration::from_secs(2),
    )
}

#[tokio::test]
async fn the_agent_hangs_up_and_transfers_through_the_rest_api() {
    let (rest, base) = stand_in().await;
    let twilio = client(&base, SECRET);

    let status = twilio
        .update_call(CALL, &CallUpdate::Complete)
        .await
        .unwrap();
    assert_eq!(status, "completed");
    assert_eq!(rest.status(CALL).as_deref(), Some("completed"));

    let transfer = dial(&DialTarget::parse("sip:desk@pbx.example.com").unwrap());
    twilio
        .update_call(OTHER, &CallUpdate::Twiml(transfer.clone()))
        .await
        .unwrap();
    assert_eq!(rest.status(OTHER).as_deref(), Some("in-progress"));
    assert_eq!(
        rest.updates(),
        [
            Update {
                call_sid: CALL.into(),
                status: Some("completed".into()),
                twiml: None
            },
            Update {
                call_sid: OTHER.into(),
                status: None,
                twiml: Some(transfer)
            },
        ]
    );
}

#[tokio::test]
async fn refusals_say_why_and_change_nothing() {
    let (rest, base) = stand_in().await;

    let wrong_key = client(&base, "not-the-secret")
        .update_call(CALL, &CallUpdate::Complete)
        .await
        .unwrap_err();
    assert!(
        matches!(
            wrong_key,
            RestError::Refused {
                status: 401,
                code: 20003,
                ..
            }
        ),
        "{wrong_key}"
    );

    let unknown = client(&base, SECRET)
        .update_call("CAcccccccccccccccccccccccccccccccc", &CallUpdate::Complete)
        .await
        .unwrap_err();
    assert!(
        matches!(
            unknown,
            RestError::Refused {
                status: 404,
                code: 20404,
                ..
            }
        ),
        "{unknown}"
    );

    // Not a call SID: nothing is sent (it would go into the request's path).
    let injected = client(&base, SECRET)
        .update_call("CA../../Accounts/AC1/Calls/CA2", &CallUpdate::Complete)
        .await
        .unwrap_err();
    assert!(matches!(injected, RestError::NotACallSid(_)), "{injected}");

    // A slow API costs the deadline, not the call.
    rest.set_delay(Duration::from_secs(5));
    let slow = RestClient::new(
        &base,
        ACCOUNT,
        KEY,
        Secret::from(SECRET),
        Duration::from_millis(200),
    )
    .update_call(CALL, &CallUpdate::Complete)
    .await
    .unwrap_err();
    assert!(matches!(slow, RestError::Timeout(_)), "{slow}");

    // Unreachable.
    let gone = client("http://127.0.0.1:9", SECRET)
        .update_call(CALL, &CallUpdate::Complete)
        .await
        .unwrap_err();
    assert!(matches!(gone, RestError::Transport(_)), "{gone}");

    assert!(rest.updates().is_empty());
    assert_eq!(rest.status(CALL).as_deref(), Some("in-progress"));
}

/// Twilio's Python library, pointed at the stand-in, updates calls through it and reads its
/// answers and errors as it reads Twilio's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twilios_own_library_talks_to_the_stand_in() {
    let (rest, base) = stand_in().await;
    let script = r#"
import sys
from twilio.rest import Client
from twilio.base.exceptions import TwilioRestException
from twilio.http.http_client import TwilioHttpClient
base, key, secret, account, call, other = sys.argv[1:7]

class Local(TwilioHttpClient):
    def request(self, method, url, *args, **kwargs):
        return super().request(method, url.replace("https://api.twilio.com", base), *args, **kwargs)

client = Client(key, secret, account_sid=account, http_client=Local())
print(client.calls(call).update(status="completed").status)
print(client.calls(other).update(twiml="<Response><Dial><Number>+14155550100</Number></Dial></Response>").sid)
try:
    client.calls("CA" + "c" * 32).update(status="completed")
except TwilioRestException as e:
    print(e.status, e.code)
try:
    Client(key, "wrong", account_sid=account, http_client=Local()).calls(call).update(status="completed")
except TwilioRestException as e:
    print(e.status, e.code)
"#;
    let output = tokio::process::Command::new("python3")
        .args(["-c", script, &base, KEY, SECRET, ACCOUNT, CALL, OTHER])
        .output()
        .await;
    let output = match output {
        Ok(o) => o,
        Err(e) => {
            assert!(
                std::env::var_os("GROKCAST_REQUIRE_MODELS").is_none(),
                "python3 is required: {e}"
            );
            return;
        }
    };
    let stderr = String::from_utf8_lossy(&output.stderr);
    if stderr.contains("No module named 'twilio'") {
        assert!(
            std::env::var_os("GROKCAST_REQUIRE_MODELS").is_none(),
            "the twilio package is required (scripts/install.sh)"
        );
        eprintln!("SKIPPED: the twilio package is not installed");
        return;
    }
    assert!(output.status.success(), "{stderr}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines,
        ["completed", OTHER, "404 20404", "401 20003"],
        "{stderr}"
    );
    assert_eq!(rest.status(CALL).as_deref(), Some("completed"));
    assert_eq!(
        rest.updates()[1].twiml.as_deref(),
        Some("<Response><Dial><Number>+14155550100</Number></Dial></Response>")
    );
}
