//! SIGTERM with live calls: the real `grokcast-agent serve` process stops taking calls,
//! lets live calls run until the drain deadline, then says goodbye, closes them and exits.
//! Its metrics and probes answer on the admin port only, through the drain.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use grokcast_harness::caller::{self, CallerOptions};
use grokcast_harness::instant::InstantServers;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_live_calls_with_a_goodbye() {
    let Some(models) = grokcast_harness::models_dir() else {
        return;
    };
    let servers = InstantServers::default();
    let model_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let models_url = format!("http://{}/v1", model_listener.local_addr().unwrap());
    tokio::spawn(servers.clone().serve(model_listener));

    let free_port = || {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let (port, admin_port) = (free_port(), free_port());
    let url = format!("http://127.0.0.1:{port}");
    let admin = format!("http://127.0.0.1:{admin_port}");
    let mut agent = tokio::process::Command::new(env!("CARGO_BIN_EXE_grokcast-agent"))
        .arg("serve")
        .env("GROKCAST_LISTEN_ADDR", format!("127.0.0.1:{port}"))
        .env(
            "GROKCAST_ADMIN_LISTEN_ADDR",
            format!("127.0.0.1:{admin_port}"),
        )
        .env("GROKCAST_PUBLIC_URL", &url)
        .env("GROKCAST_TWILIO_AUTH_TOKEN", "drain-token")
        .env("GROKCAST_STT_URL", &models_url)
        .env("GROKCAST_LLM_URL", &models_url)
        .env("GROKCAST_TTS_URL", &models_url)
        .env("GROKCAST_MODELS_DIR", &models)
        .env("GROKCAST_DRAIN_TIMEOUT_SECONDS", "2")
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let client = reqwest::Client::new();
    let mut ready = false;
    for _ in 0..200 {
        if client
            .get(format!("{admin}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ready, "agent never became ready");
    // The internet reaches the Twilio port: it serves neither metrics nor probes, and the
    // admin port takes no calls.
    for path in ["/metrics", "/healthz", "/readyz"] {
        let r = client.get(format!("{url}{path}")).send().await.unwrap();
        assert_eq!(r.status(), 404, "{path} on the Twilio port");
    }
    let r = client
        .post(format!("{admin}/twilio/voice"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "the voice webhook on the admin port");

    let q = Arc::new(caller::espeak_audio("Hello what time do you open tomorrow?").unwrap());
    let options = CallerOptions {
        agent_url: url.clone(),
        auth_token: Some("drain-token".into()),
        utterances: vec![q.clone()],
        // Stay on the line far longer than the drain deadline.
        linger: Some(Duration::from_secs(30)),
        ..CallerOptions::default()
    };
    servers.set(|b| b.reply = "We open at nine.".into());
    let live = tokio::spawn(async move { caller::place_call(&options).await });
    // SIGTERM once the call is in the middle of its conversation (its first turn answered).
    let mut answered = false;
    for _ in 0..400 {
        let metrics = client
            .get(format!("{admin}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if metrics
            .lines()
            .any(|l| l.starts_with("grokcast_turn_latency_seconds_count") && !l.ends_with(" 0"))
        {
            answered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(answered, "the live call never got an answer");

    let pid = agent.id().unwrap().to_string();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(status.success());
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Draining: not ready, and new calls are turned away.
    let ready = client.get(format!("{admin}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    let turned_away = caller::place_call(&CallerOptions {
        agent_url: url.clone(),
        auth_token: Some("drain-token".into()),
        utterances: vec![q],
        call_sid: "CA0000000000000000000000000000LATE".into(),
        ..CallerOptions::default()
    })
    .await
    .unwrap();
    assert_eq!(turned_away.rejected.as_deref(), Some("busy"));

    let report = tokio::time::timeout(Duration::from_secs(25), live)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        report.turns.first().is_some_and(|t| t.latency.is_some()),
        "the live call kept working: {:?}",
        report.turns
    );
    assert!(
        report.closed_by_agent,
        "the agent did not close the drained call"
    );
    // The caller acknowledges a mark only once the audio before it has played.
    assert!(
        report.marks.iter().any(|m| m == "goodbye"),
        "no goodbye was played: {:?}",
        report.marks
    );
    let exit = tokio::time::timeout(Duration::from_secs(10), agent.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success(), "agent exited with {exit}");
}
