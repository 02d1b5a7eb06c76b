//! The browser playground's socket, spoken as the page speaks it (Opus packets of 20 ms at
//! 48 kHz, JSON text): the token guards it, a session is heard and answered with its own
//! prompt and voice and sees both sides' words and the turn's figures, it shares the pod's
//! call slots, and a packet that is not Opus, or not 20 ms, ends that session only.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use audiopus::coder::{Decoder, Encoder};
use audiopus::packet::Packet;
use audiopus::{Application, Channels, MutSignals, SampleRate};
use futures::{SinkExt, StreamExt};
use grokcast_agent::config::AgentConfig;
use grokcast_harness::caller;
use grokcast_harness::instant::InstantServers;
use grokcast_harness::local::LocalAgent;
use grokcast_harness::playground_caller::{frames_48k, protocols};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const TOKEN: &str = "playground-token/+=";
const RATE: usize = 48_000;
const FRAME: usize = 960;

struct Agent {
    url: String,
    servers: InstantServers,
    /// Held so the agent keeps serving until the test ends.
    _agent: LocalAgent,
}

/// An agent on the instant model servers with the playground as `adjust` leaves it
/// (enabled, with [`TOKEN`], by default); `None` without the VAD model (never in CI).
async fn agent(adjust: impl FnOnce(&mut AgentConfig)) -> Option<Agent> {
    if !grokcast_harness::models_present() {
        return None;
    }
    let servers = InstantServers::default();
    let agent = LocalAgent::start(&servers, |c| {
        c.playground.enabled = true;
        c.playground_token = Some(TOKEN.into());
        adjust(c);
    })
    .await
    .unwrap();
    Some(Agent {
        url: agent.url.clone(),
        servers,
        _agent: agent,
    })
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens the socket offering `protocols`, as the page's `new WebSocket(url, protocols)`.
async fn open(agent: &Agent, protocols: Option<String>) -> Result<Socket, u16> {
    let url = format!(
        "{}/playground/socket",
        agent.url.replacen("http://", "ws://", 1)
    );
    let mut request = url.into_client_request().unwrap();
    if let Some(protocols) = protocols {
        request
            .headers_mut()
            .insert("Sec-WebSocket-Protocol", protocols.parse().unwrap());
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok((socket, _)) => Ok(socket),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            Err(response.status().as_u16())
        }
        Err(e) => panic!("connecting: {e}"),
    }
}

async fn start(agent: &Agent, start: serde_json::Value) -> Socket {
    let mut socket = open(agent, Some(protocols(TOKEN))).await.unwrap();
    socket.send(Message::text(start.to_string())).await.unwrap();
    socket
}

/// The question, spoken by espeak-ng, at 48 kHz, between silences, in 20 ms frames.
fn question_frames() -> Vec<Vec<f32>> {
    let mulaw = caller::espeak_audio("What time do you open on Saturday?").unwrap();
    let silence = |frames: usize| vec![vec![0f32; FRAME]; frames];
    let mut frames = silence(RATE / 2 / FRAME);
    frames.extend(frames_48k(&mulaw).unwrap());
    frames.extend(silence(6 * RATE / FRAME));
    frames
}

/// What the page saw of a session.
#[derive(Default, Debug)]
struct Seen {
    /// Agent audio: 20 ms packets decoded, counted after the question ended.
    packets_after_question: usize,
    texts: Vec<serde_json::Value>,
    closed: bool,
}

/// Plays `frames` into the session in real time as Opus, acknowledging marks, until the
/// agent has answered with `enough` packets after the question (or the frames run out).
async fn talk(socket: &mut Socket, frames: &[Vec<f32>], enough: usize) -> Seen {
    let encoder = Encoder::new(SampleRate::Hz48000, Channels::Mono, Application::Voip).unwrap();
    let mut decoder = Decoder::new(SampleRate::Hz48000, Channels::Mono).unwrap();
    let question_ends = frames.len() - 6 * RATE / FRAME;
    let mut seen = Seen::default();
    let mut packet = vec![0u8; 1500];
    let mut decoded = vec![0f32; 6 * FRAME];
    let mut ticker = tokio::time::interval(Duration::from_millis(20));
    for (i, frame) in frames.iter().enumerate() {
        ticker.tick().await;
        let bytes = encoder.encode_float(frame, &mut packet).unwrap();
        if socket
            .send(Message::binary(packet[..bytes].to_vec()))
            .await
            .is_err()
        {
            seen.closed = true;
            break;
        }
        while let Ok(Some(message)) =
            tokio::time::timeout(Duration::from_millis(1), socket.next()).await
        {
            match message {
                Ok(Message::Binary(bytes)) => {
                    let samples = decoder
                        .decode_float(
                            Some(Packet::try_from(&bytes[..]).unwrap()),
                            MutSignals::try_from(&mut decoded[..]).unwrap(),
                            false,
                        )
                        .unwrap();
                    assert_eq!(samples, FRAME, "the agent sends 20 ms packets");
                    if i > question_ends {
                        seen.packets_after_question += 1;
                    }
                }
                Ok(Message::Text(text)) => {
                    let value: serde_json::Value = serde_json::from_str(text.as_str()).unwrap();
                    if value["type"] == "mark" {
                        let ack = serde_json::json!({"type": "mark", "name": value["name"]});
                        socket.send(Message::text(ack.to_string())).await.unwrap();
                    }
                    seen.texts.push(value);
                }
                Ok(Message::Close(_)) | Err(_) => {
                    seen.closed = true;
                    return seen;
                }
                Ok(_) => {}
            }
        }
        if seen.packets_after_question >= enough {
            break;
        }
    }
    seen
}

fn texts_of<'a>(seen: &'a Seen, kind: &str) -> Vec<&'a serde_json::Value> {
    seen.texts.iter().filter(|t| t["type"] == kind).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_playground_is_off_unless_enabled_and_needs_its_token() {
    let Some(off) = agent(|c| c.playground.enabled = false).await else {
        return;
    };
    let page = reqwest::get(format!("{}/playground", off.url))
        .await
        .unwrap();
    assert_eq!(page.status(), 404);
    assert_eq!(open(&off, Some(protocols(TOKEN))).await.err(), Some(404));

    let on = agent(|_| {}).await.unwrap();
    let page = reqwest::get(format!("{}/playground", on.url))
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    assert!(
        page.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let html = page.text().await.unwrap();
    assert!(html.contains("grokcast.playground.v1"));
    assert!(!html.contains(TOKEN), "the page carries no secret");
    assert_eq!(open(&on, None).await.err(), Some(401));
    assert_eq!(
        open(&on, Some("grokcast.playground.v1".into())).await.err(),
        Some(401)
    );
    assert_eq!(
        open(&on, Some(protocols("not-the-token"))).await.err(),
        Some(401)
    );
    // The raw token, not base64url, is not the protocol either.
    assert_eq!(
        open(&on, Some(format!("grokcast.playground.v1, token.{TOKEN}")))
            .await
            .err(),
        Some(401)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_is_heard_and_answered_with_its_own_prompt_and_voice() {
    let Some(agent) = agent(|_| {}).await else {
        return;
    };
    let mut socket = start(
        &agent,
        serde_json::json!({"type": "start", "systemPrompt": "Answer like a pirate.", "voice": "echo"}),
    )
    .await;
    let seen = talk(&mut socket, &question_frames(), 25).await;
    assert!(
        seen.packets_after_question >= 25,
        "no answer was heard: {seen:?}"
    );
    let heard = agent.servers.behaviour.lock().unwrap().transcript.clone();
    let callers = texts_of(&seen, "caller");
    assert!(
        callers.iter().any(|t| t["text"] == heard.as_str()),
        "{seen:?}"
    );
    assert!(!texts_of(&seen, "agent").is_empty(), "{seen:?}");
    let turn = texts_of(&seen, "turn");
    let turn = turn.first().expect("no turn figures");
    for key in [
        "latencyMs",
        "endpointingMs",
        "sttMs",
        "llmFirstTokenMs",
        "ttsFirstAudioMs",
    ] {
        assert!(turn[key].is_u64(), "{key} in {turn}");
    }
    let conversations = agent.servers.conversations.lock().unwrap().clone();
    assert_eq!(
        conversations.last().unwrap()[0]["content"],
        "Answer like a pirate."
    );
    let voices = agent.servers.voices.lock().unwrap().clone();
    assert_eq!(voices.last(), Some(&Some("echo".to_string())));

    socket
        .send(Message::text(r#"{"type":"stop"}"#))
        .await
        .unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(Ok(message)) = socket.next().await {
            if let Message::Close(_) = message {
                return true;
            }
        }
        true
    })
    .await;
    assert_eq!(closed, Ok(true), "the session did not end on stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_packets_end_their_session_only_with_the_reason_in_the_page() {
    let Some(agent) = agent(|_| {}).await else {
        return;
    };
    let start_message = serde_json::json!({"type": "start"});
    let mut healthy = start(&agent, start_message.clone()).await;

    // Not Opus at all.
    let mut garbage = start(&agent, start_message.clone()).await;
    garbage.send(Message::binary(vec![0xff; 3])).await.unwrap();
    let error = error_of(&mut garbage).await;
    assert!(error.contains("not Opus"), "{error}");

    // Opus, but 40 ms in one packet.
    let mut long = start(&agent, start_message.clone()).await;
    let encoder = Encoder::new(SampleRate::Hz48000, Channels::Mono, Application::Voip).unwrap();
    let mut packet = vec![0u8; 1500];
    let bytes = encoder
        .encode_float(&vec![0.0f32; 2 * FRAME], &mut packet)
        .unwrap();
    long.send(Message::binary(packet[..bytes].to_vec()))
        .await
        .unwrap();
    let error = error_of(&mut long).await;
    assert!(error.contains("20 ms"), "{error}");

    // A message that is not the protocol's.
    let mut odd = start(&agent, start_message).await;
    odd.send(Message::text(r#"{"type":"dial","to":"+15550100"}"#))
        .await
        .unwrap();
    let error = error_of(&mut odd).await;
    assert!(error.contains("malformed"), "{error}");

    // The session beside them is still heard and answered.
    let seen = talk(&mut healthy, &question_frames(), 25).await;
    assert!(
        seen.packets_after_question >= 25 && !seen.closed,
        "the healthy session suffered: {seen:?}"
    );
}

/// The error message the agent sends before it closes a session the page broke.
async fn error_of(socket: &mut Socket) -> String {
    tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(Ok(message)) = socket.next().await {
            if let Message::Text(text) = message {
                let value: serde_json::Value = serde_json::from_str(text.as_str()).unwrap();
                if value["type"] == "error" {
                    return value["message"].as_str().unwrap().to_string();
                }
            }
        }
        panic!("closed without an error message")
    })
    .await
    .expect("no error message within 5 s")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn playground_sessions_take_the_pods_call_slots() {
    let Some(agent) = agent(|c| c.max_calls = 1).await else {
        return;
    };
    let _first = start(&agent, serde_json::json!({"type": "start"})).await;
    // The slot is taken at the upgrade: the second waits for none.
    assert_eq!(open(&agent, Some(protocols(TOKEN))).await.err(), Some(503));
}

/// The benchmark's playground caller (`grokcast-harness call --playground-token`) holds a
/// conversation as the page does: two questions, two answers timed from the end of each,
/// every mark acknowledged; with a wrong token it gets no session, and on a full pod it is
/// told busy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_benchmark_caller_converses_through_the_playground() {
    let Some(agent) = agent(|c| c.max_calls = 1).await else {
        return;
    };
    let say = |text: &str| std::sync::Arc::new(caller::espeak_audio(text).unwrap());
    let options = caller::CallerOptions {
        agent_url: agent.url.clone(),
        utterances: vec![say("What time do you open?"), say("And on Sunday?")],
        playground_token: Some(TOKEN.into()),
        ..caller::CallerOptions::default()
    };
    let report = caller::place_call(&options).await.unwrap();
    assert_eq!(report.turns.len(), 2, "{:?}", report.turns);
    for turn in &report.turns {
        assert!(
            turn.latency.is_some() && turn.agent_frames > 10,
            "every question answered: {:?}",
            report.turns
        );
    }
    assert!(report.greeting_frames > 0, "the greeting played first");
    assert!(
        report.marks.iter().any(|m| m == "t2-s0"),
        "{:?}",
        report.marks
    );
    assert_eq!(
        agent
            .servers
            .counts
            .llm
            .load(std::sync::atomic::Ordering::Relaxed),
        2
    );

    let wrong = caller::CallerOptions {
        playground_token: Some("not the token".into()),
        ..options.clone()
    };
    let err = caller::place_call(&wrong).await.unwrap_err().to_string();
    assert!(err.contains("401"), "{err}");

    let _taken = start(&agent, serde_json::json!({"type": "start"})).await;
    let busy = caller::place_call(&options).await.unwrap();
    assert_eq!(busy.rejected.as_deref(), Some("busy"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_sees_the_agents_tool_calls_and_end_call_ends_the_session() {
    let Some(agent) = agent(|c| c.tools.end_call.enabled = true).await else {
        return;
    };
    agent.servers.set(|b| {
        b.tool_calls = vec![grokcast_harness::instant::ScriptedCall::new(
            "", "end_call", "{}",
        )];
        b.after_tools = "Goodbye!".into();
    });
    let mut socket = start(&agent, serde_json::json!({"type": "start"})).await;
    // Never enough packets: talk until the agent closes the session.
    let seen = talk(&mut socket, &question_frames(), usize::MAX).await;
    let tools = texts_of(&seen, "tool");
    assert_eq!(
        tools.first().map(|t| (&t["tool"], &t["outcome"])),
        Some((&"end_call".into(), &"ok".into())),
        "{seen:?}"
    );
    assert!(
        texts_of(&seen, "agent")
            .iter()
            .any(|t| t["text"] == "Goodbye!"),
        "{seen:?}"
    );
    assert!(seen.closed, "the agent hung up: {seen:?}");
}
