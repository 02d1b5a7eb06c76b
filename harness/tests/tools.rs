//! Tools on the call, end to end over real sockets: the simulated Twilio caller against an
//! agent on real Silero VAD, a chat double that streams tool calls as vLLM does (and refuses
//! what vLLM's Gemma 3 tool template refuses), the Twilio REST stand-in that ends or
//! redirects the caller's stream as Twilio would, and HTTP tool endpoints served here.

#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use grokcast_agent::config::{AgentConfig, HttpTool, TransferTarget};
use grokcast_harness::caller::{self, CallReport, CallerOptions};
use grokcast_harness::instant::{InstantServers, ScriptedCall};
use grokcast_harness::local::LocalAgent;
use grokcast_harness::twilio_rest::TwilioRest;
use grokcast_harness::{metric, models_present};

const ACCOUNT: &str = "AC0123456789abcdef0123456789abcdef";
const KEY: &str = "SK0123456789abcdef0123456789abcdef";
const SECRET: &str = "api-key-secret";
const TOKEN: &str = "test-auth-token";
const CALL_SID: &str = "CA0123456789abcdef0123456789abcdef";

struct Setup {
    agent: LocalAgent,
    servers: InstantServers,
    rest: TwilioRest,
}

/// An agent whose LLM is `servers`, with a Twilio API key for the REST stand-in, and the
/// tools `adjust` enables.
async fn start(servers: InstantServers, adjust: impl FnOnce(&mut AgentConfig)) -> Setup {
    let rest = TwilioRest::new(ACCOUNT, KEY, SECRET);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let rest_url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(rest.clone().serve(listener));
    let agent = LocalAgent::start(&servers, |c| {
        c.twilio_auth_token = Some(TOKEN.into());
        c.twilio_api_url = rest_url;
        c.twilio_account_sid = Some(ACCOUNT.into());
        c.twilio_api_key_sid = Some(KEY.into());
        c.twilio_api_key_secret = Some(SECRET.into());
        adjust(c);
    })
    .await
    .unwrap();
    Setup {
        agent,
        servers,
        rest,
    }
}

impl Setup {
    fn caller(&self, utterances: usize) -> CallerOptions {
        let said = Arc::new(caller::espeak_audio("Hello, I have a question for you.").unwrap());
        CallerOptions {
            agent_url: self.agent.url.clone(),
            auth_token: Some(TOKEN.into()),
            utterances: vec![said; utterances],
            reply_timeout: Duration::from_secs(8),
            call_sid: CALL_SID.into(),
            twilio: Some(self.rest.clone()),
            ..CallerOptions::default()
        }
    }

    /// The agent's metrics once no call is active.
    async fn metrics(&self) -> String {
        self.agent.idle_metrics().await.unwrap()
    }

    /// Every chat request answered; each was one vLLM's Gemma 3 tool template renders (the
    /// double refuses the rest, and those are not kept: the counts then differ).
    fn conversations(&self) -> Vec<Vec<serde_json::Value>> {
        let kept = self.servers.conversations.lock().unwrap().clone();
        let served = self
            .servers
            .counts
            .llm
            .load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(
            kept.len() as u64,
            served,
            "a request was refused: {kept:#?}"
        );
        kept
    }
}

fn tool_calls(metrics: &str, tool: &str, outcome: &str) -> f64 {
    metric(
        metrics,
        "grokcast_tool_calls_total",
        &[("tool", tool), ("outcome", outcome)],
    )
    .unwrap_or(0.0)
}

fn calls(metrics: &str, outcome: &str) -> f64 {
    metric(metrics, "grokcast_calls_total", &[("outcome", outcome)]).unwrap_or(0.0)
}

/// The tool result the model was given last, and the call it answered.
fn last_result(conversations: &[Vec<serde_json::Value>]) -> (serde_json::Value, serde_json::Value) {
    let request = conversations
        .iter()
        .rev()
        .find(|c| c.last().is_some_and(|m| m["role"] == "tool"))
        .expect("a request that goes on from a tool result");
    let result = request.last().unwrap().clone();
    let call = request[request.len() - 2].clone();
    (call, result)
}

fn answered(report: &CallReport, turn: usize) -> bool {
    report
        .turns
        .get(turn)
        .is_some_and(|t| t.latency.is_some() && t.agent_frames > 10)
}

/// A chat double whose caller says goodbye: the model hangs up, saying `goodbye`.
fn saying_goodbye(goodbye: &str) -> InstantServers {
    let servers = InstantServers::default();
    servers.set(|b| {
        b.transcript = "Thanks, that's all. Goodbye!".into();
        b.tool_calls = vec![ScriptedCall::new("goodbye", "end_call", "{}")];
        b.after_tools = goodbye.into();
    });
    servers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_call_says_goodbye_then_hangs_up_through_twilios_rest_api() {
    if !models_present() {
        return;
    }
    let s = start(saying_goodbye("Goodbye, and have a lovely day."), |c| {
        c.tools.end_call.enabled = true
    })
    .await;
    let mut options = s.caller(1);
    options.linger = Some(Duration::from_secs(8));
    let report = caller::place_call(&options).await.unwrap();

    // The stream ended because Twilio hung up, after the goodbye played to its end.
    let update = report.update.clone().expect("the call was updated");
    assert_eq!(update.status.as_deref(), Some("completed"));
    assert_eq!(s.rest.status(CALL_SID).as_deref(), Some("completed"));
    assert!(
        answered(&report, 0),
        "the goodbye was heard: {:?}",
        report.turns
    );
    assert!(
        report.marks.iter().any(|m| m == "t1-action"),
        "the hang-up waited for the goodbye's mark: {:?}",
        report.marks
    );
    // The model was offered the tool, called it, and was given its result in the shape
    // Gemma 3's tool template renders.
    let offered = s.servers.offered_tools.lock().unwrap().clone();
    assert_eq!(offered[0][0]["function"]["name"], "end_call");
    let (call, result) = last_result(&s.conversations());
    assert_eq!(call["tool_calls"][0]["function"]["name"], "end_call");
    assert_eq!(call["content"], "");
    assert_eq!(result["tool_call_id"], call["tool_calls"][0]["id"]);
    let metrics = s.metrics().await;
    assert_eq!(calls(&metrics, "ended_by_agent"), 1.0, "{metrics}");
    assert_eq!(tool_calls(&metrics, "end_call", "ok"), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_who_talks_over_the_goodbye_is_not_hung_up_on() {
    if !models_present() {
        return;
    }
    let goodbye = saying_goodbye("Goodbye, and thank you so much for calling us today.");
    let s = start(goodbye, |c| c.tools.end_call.enabled = true).await;
    // Each utterance starts half a second into the agent's audio: the first cuts the
    // greeting, the second the first goodbye ("wait, one more thing").
    let mut options = s.caller(2);
    options.interrupt_after = Some(Duration::from_millis(500));
    options.linger = Some(Duration::from_secs(10));
    let report = caller::place_call(&options).await.unwrap();
    // The first goodbye was cut, so the first hang-up never happened: the second question
    // was answered, and the call ended after the second goodbye.
    assert!(answered(&report, 1), "{:?}", report.turns);
    assert_eq!(s.rest.updates().len(), 1, "{:?}", s.rest.updates());
    assert!(
        report.marks.iter().any(|m| m == "t2-action"),
        "{:?}",
        report.marks
    );
    let metrics = s.metrics().await;
    assert_eq!(tool_calls(&metrics, "end_call", "ok"), 2.0, "{metrics}");
    assert_eq!(calls(&metrics, "ended_by_agent"), 1.0, "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cough_over_the_goodbye_does_not_cancel_the_hang_up() {
    if !models_present() {
        return;
    }
    let goodbye = saying_goodbye("Goodbye, and thank you so much for calling us today.");
    let s = start(goodbye, |c| c.tools.end_call.enabled = true).await;
    // The second utterance, over the goodbye, is a sound without words: once the first
    // question has been answered, transcripts come back empty.
    let servers = s.servers.clone();
    tokio::spawn(async move {
        while servers
            .counts
            .llm
            .load(std::sync::atomic::Ordering::Relaxed)
            < 1
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        servers.set(|b| b.transcript = String::new());
    });
    let mut options = s.caller(2);
    options.interrupt_after = Some(Duration::from_millis(500));
    options.linger = Some(Duration::from_secs(10));
    let report = caller::place_call(&options).await.unwrap();
    // The agent went back to the goodbye it was cut in, and hung up after it.
    let update = report.update.clone().expect("the call was hung up");
    assert_eq!(update.status.as_deref(), Some("completed"));
    let metrics = s.metrics().await;
    assert_eq!(
        metric(&metrics, "grokcast_false_interruptions_total", &[]),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(calls(&metrics, "ended_by_agent"), 1.0, "{metrics}");
    assert_eq!(tool_calls(&metrics, "end_call", "ok"), 1.0, "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_the_model_writes_as_words_is_made_and_never_spoken() {
    if !models_present() {
        return;
    }
    let servers = InstantServers::default();
    servers.set(|b| {
        b.transcript = "Thanks, that's all. Goodbye!".into();
        // What vLLM's pythonic parser passes on when the reply does not start with the call.
        b.tool_calls = vec![
            ScriptedCall::new("goodbye", "end_call", "{}")
                .saying("Goodbye then!")
                .written_as_words(),
        ];
        b.after_tools = "Take care.".into();
    });
    let s = start(servers, |c| c.tools.end_call.enabled = true).await;
    let mut options = s.caller(1);
    options.linger = Some(Duration::from_secs(8));
    let report = caller::place_call(&options).await.unwrap();
    assert_eq!(
        report.update.and_then(|u| u.status).as_deref(),
        Some("completed")
    );
    let spoken = s.servers.spoken.lock().unwrap().clone();
    assert!(
        spoken.iter().any(|t| t.contains("Goodbye then!")),
        "{spoken:?}"
    );
    assert!(
        !spoken
            .iter()
            .any(|t| t.contains('[') || t.contains("end_call")),
        "{spoken:?}"
    );
    // The call the model wrote is in the history as a call, with the words it said.
    let (call, _) = last_result(&s.conversations());
    assert_eq!(call["tool_calls"][0]["function"]["name"], "end_call");
    assert_eq!(call["content"], "Goodbye then!");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_dials_a_named_target_and_never_a_number_the_caller_dictates() {
    if !models_present() {
        return;
    }
    let servers = InstantServers::default();
    servers.set(|b| {
        b.transcript = "Put me through to sales please.".into();
        b.tool_calls = vec![
            ScriptedCall::new("sales", "transfer_call", r#"{"target": "sales"}"#)
                .saying("Let me put you through."),
            ScriptedCall::new("call", "transfer_call", r#"{"target": "+15559990000"}"#)
                .saying("Let me see."),
        ];
        b.after_tools = "Of course, one moment.".into();
    });
    let s = start(servers, |c| {
        c.tools.transfer_call.enabled = true;
        c.tools.transfer_call.targets = vec![TransferTarget {
            name: "sales".into(),
            to: "+15551230000".into(),
            description: "new orders".into(),
        }];
    })
    .await;
    let mut options = s.caller(1);
    options.linger = Some(Duration::from_secs(8));
    let report = caller::place_call(&options).await.unwrap();
    let twiml = report
        .update
        .clone()
        .and_then(|u| u.twiml)
        .expect("the call was redirected");
    assert!(
        twiml.contains("<Dial><Number>+15551230000</Number></Dial>"),
        "{twiml}"
    );
    assert!(answered(&report, 0), "the agent spoke before the transfer");
    // The words said with the call are the content of the message that calls.
    let (call, _) = last_result(&s.conversations());
    assert_eq!(call["content"], "Let me put you through.");
    let metrics = s.metrics().await;
    assert_eq!(calls(&metrics, "transferred"), 1.0, "{metrics}");

    // A number the caller dictates is refused: the model hears why, the call goes on.
    s.servers.set(|b| {
        b.transcript = "Call +1 555 999 0000 for me.".into();
        b.after_tools = "Sorry, I can only transfer you to our sales team.".into();
    });
    let mut options = s.caller(2);
    options.call_sid = "CA0123456789abcdef0123456789abcdee".into();
    let report = caller::place_call(&options).await.unwrap();
    assert!(report.update.is_none(), "no transfer: {:?}", report.update);
    assert!(
        answered(&report, 0) && answered(&report, 1),
        "{:?}",
        report.turns
    );
    let (_, result) = last_result(&s.conversations());
    assert!(
        result["content"]
            .as_str()
            .unwrap()
            .contains("not a transfer target"),
        "{result}"
    );
    let metrics = s.metrics().await;
    assert_eq!(
        tool_calls(&metrics, "transfer_call", "refused"),
        2.0,
        "{metrics}"
    );
    assert_eq!(calls(&metrics, "completed"), 1.0, "{metrics}");

    // Twilio refuses the update (a call it does not know: 404): the caller hears the
    // apology after the agent's words, and the call goes on.
    s.servers
        .set(|b| b.transcript = "Put me through to sales please.".into());
    let mut options = s.caller(2);
    options.call_sid = "CA0123456789abcdef0123456789abcded".into();
    options.twilio = None;
    let report = caller::place_call(&options).await.unwrap();
    assert!(
        answered(&report, 0) && answered(&report, 1),
        "{:?}",
        report.turns
    );
    let metrics = s.metrics().await;
    assert_eq!(
        tool_calls(&metrics, "transfer_call", "failed"),
        2.0,
        "{metrics}"
    );
    assert_eq!(calls(&metrics, "completed"), 2.0, "{metrics}");
    // The model hears of the failure as a note on the caller's side.
    let last = s.conversations().last().unwrap().clone();
    assert!(
        last.iter().any(|m| m["role"] == "user"
            && m["content"]
                .as_str()
                .unwrap()
                .contains("[the transfer failed]")),
        "{last:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_dtmf_plays_the_keys_in_the_call_audio() {
    if !models_present() {
        return;
    }
    let servers = InstantServers::default();
    servers.set(|b| {
        b.transcript = "Press one then pound to reach billing.".into();
        b.tool_calls = vec![ScriptedCall::new(
            "press",
            "send_dtmf",
            r#"{"digits":"1w#"}"#,
        )];
        // The model presses and waits for the menu, saying nothing.
        b.after_tools = String::new();
    });
    let s = start(servers, |c| c.tools.send_dtmf.enabled = true).await;
    let mut options = s.caller(1);
    options.linger = Some(Duration::from_secs(3));
    let report = caller::place_call(&options).await.unwrap();
    // Only what played after the caller spoke: the greeting holds no tones either way.
    let keys = grokcast_harness::dtmf::decode(&report.heard);
    assert_eq!(keys, "1#", "the keys reached the line");
    let metrics = s.metrics().await;
    assert_eq!(tool_calls(&metrics, "send_dtmf", "ok"), 1.0, "{metrics}");
    assert_eq!(calls(&metrics, "completed"), 1.0);
}

/// An HTTP tool endpoint: records the bodies it gets, answers `answer` after `delay`.
async fn endpoint(answer: &'static str, delay: Duration) -> (String, Arc<Mutex<Vec<String>>>) {
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let record = seen.clone();
    let app = axum::Router::new().route(
        "/tool",
        axum::routing::post(move |body: String| {
            let record = record.clone();
            async move {
                record.lock().unwrap().push(body);
                tokio::time::sleep(delay).await;
                ([("content-type", "application/json")], answer)
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/tool", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, seen)
}

fn order_tool(url: &str, timeout_ms: u64) -> HttpTool {
    HttpTool {
        name: "order_status".into(),
        description: "Looks up an order".into(),
        url: url.into(),
        parameters: serde_json::json!({"type": "object", "properties": {
            "order_id": {"type": "string"}}, "required": ["order_id"]}),
        timeout_ms,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_tool_gets_the_arguments_and_its_answer_goes_back_to_the_model() {
    if !models_present() {
        return;
    }
    let (url, seen) = endpoint(r#"{"status":"shipped","eta":"Tuesday"}"#, Duration::ZERO).await;
    let servers = InstantServers::default();
    servers.set(|b| {
        b.transcript = "Where is my order 42?".into();
        b.tool_calls = vec![ScriptedCall::new(
            "order",
            "order_status",
            r#"{"order_id": "42"}"#,
        )];
        b.after_tools = "It shipped and arrives on Tuesday.".into();
    });
    let s = start(servers, |c| c.tools.http = vec![order_tool(&url, 2_000)]).await;
    let report = caller::place_call(&s.caller(1)).await.unwrap();
    assert!(answered(&report, 0), "{:?}", report.turns);
    let bodies = seen.lock().unwrap().clone();
    assert_eq!(bodies.len(), 1);
    let body: serde_json::Value = serde_json::from_str(&bodies[0]).unwrap();
    assert_eq!(body, serde_json::json!({"order_id": "42"}));
    let (_, result) = last_result(&s.conversations());
    let content: serde_json::Value =
        serde_json::from_str(result["content"].as_str().unwrap()).unwrap();
    assert_eq!(content["status"], "shipped");
    let metrics = s.metrics().await;
    assert_eq!(tool_calls(&metrics, "order_status", "ok"), 1.0, "{metrics}");
}

/// A bad tool call on each of two turns: the caller hears words after each (the model's, or
/// the apology), each failure is counted, and the second question is answered all the same.
async fn bad_call(s: &Setup, call: ScriptedCall, after: &str, tool: &str, outcome: &str) {
    let before = tool_calls(&s.metrics().await, tool, outcome);
    s.servers.set(|b| {
        b.transcript = "Can you check that for me?".into();
        b.tool_calls = vec![call];
        b.after_tools = after.into();
    });
    let report = caller::place_call(&s.caller(2)).await.unwrap();
    assert!(
        answered(&report, 0),
        "a spoken fallback: {:?}",
        report.turns
    );
    assert!(answered(&report, 1), "the call went on: {:?}", report.turns);
    assert!(report.update.is_none());
    let (_, result) = last_result(&s.conversations());
    assert!(
        result["content"].as_str().unwrap().contains("error"),
        "the model heard what went wrong: {result}"
    );
    let metrics = s.metrics().await;
    assert_eq!(
        tool_calls(&metrics, tool, outcome),
        before + 2.0,
        "{tool} {outcome}: {metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invented_tools_malformed_arguments_and_hanging_endpoints_get_a_spoken_fallback() {
    if !models_present() {
        return;
    }
    let (url, seen) = endpoint(r#"{"status":"late"}"#, Duration::from_secs(30)).await;
    let s = start(InstantServers::default(), |c| {
        c.tools.end_call.enabled = true;
        c.tools.http = vec![order_tool(&url, 300)];
    })
    .await;
    // The model says nothing after the error: the agent apologises on its own.
    let rocket = ScriptedCall::new("check", "launch_rocket", "{}");
    bad_call(&s, rocket, "", "unknown", "unknown_tool").await;
    let malformed = ScriptedCall::new("check", "order_status", r#"{"order_id": "4"#);
    bad_call(
        &s,
        malformed,
        "Sorry, something went wrong.",
        "order_status",
        "bad_arguments",
    )
    .await;
    assert!(
        seen.lock().unwrap().is_empty(),
        "nothing malformed was sent"
    );
    let slow = ScriptedCall::new("check", "order_status", r#"{"order_id": "7"}"#);
    bad_call(
        &s,
        slow,
        "That is taking too long, sorry.",
        "order_status",
        "timeout",
    )
    .await;
    let metrics = s.metrics().await;
    assert_eq!(calls(&metrics, "completed"), 3.0, "{metrics}");
}
