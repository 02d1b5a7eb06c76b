//! grokcast-serve over real HTTP on 127.0.0.1: well-formed and malformed requests for
//! every API. Validation tests need no models; the rest use the installed models.

// Some helpers serve only the Whisper or only the llama build.
#![allow(clippy::unwrap_used, unused_imports, dead_code)]

mod common;

use std::sync::Arc;

use common::{TestServer, assert_has_words, espeak_16k, models, start};
use grokcast_engines::audio;
use grokcast_engines::server::{self, AppState, Engines, ServerConfig};
use grokcast_engines::tts::PiperVoice;
use reqwest::StatusCode;
use reqwest::multipart::{Form, Part};
use serde_json::{Value, json};

/// A server that has not loaded its models: validation still runs first.
async fn unloaded() -> TestServer {
    start(ServerConfig::default(), None).await
}

fn load_all(paths: &grokcast_engines::models::ModelPaths) -> Engines {
    let (onnx, json) = paths.piper_voice().unwrap();
    Engines {
        #[cfg(feature = "llama")]
        llm: Some(Arc::new(
            grokcast_engines::llm::GemmaLlm::load(&paths.llm().unwrap(), Default::default())
                .unwrap(),
        )),
        #[cfg(feature = "whisper")]
        stt: Some(Arc::new(
            grokcast_engines::stt::WhisperStt::load(&paths.whisper().unwrap()).unwrap(),
        )),
        tts: Some(Arc::new(PiperVoice::load(&onnx, &json).unwrap())),
    }
}

async fn expect_error(resp: reqwest::Response, status: StatusCode, param: Option<&str>) -> Value {
    assert_eq!(resp.status(), status);
    let body: Value = resp.json().await.expect("errors are JSON");
    let err = &body["error"];
    assert!(
        err["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert!(err["type"].is_string(), "{body}");
    if let Some(p) = param {
        assert_eq!(err["param"], p, "{body}");
    }
    body
}

fn chat_body() -> Value {
    json!({"model": "gemma-3-270m", "messages": [
        {"role": "system", "content": "You are the receptionist of Sunny Dental."},
        {"role": "user", "content": "Hi, are you open on Monday?"}
    ], "max_tokens": 32})
}

#[tokio::test]
async fn health_readiness_and_unknown_routes() {
    let s = unloaded().await;
    let c = reqwest::Client::new();
    let r = c.get(format!("{}/healthz", s.base)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = c.get(format!("{}/readyz", s.base)).send().await.unwrap();
    expect_error(r, StatusCode::SERVICE_UNAVAILABLE, None).await;
    let r = c
        .post(format!("{}/v1/audio/speech", s.base))
        .json(&json!({"model": "tts-1", "input": "Hello."}))
        .send()
        .await
        .unwrap();
    let body = expect_error(r, StatusCode::SERVICE_UNAVAILABLE, None).await;
    assert_eq!(body["error"]["code"], "model_loading");
    // A build without the LLM says so rather than pretending to load it.
    #[cfg(not(feature = "llama"))]
    {
        let r = c
            .post(format!("{}/v1/chat/completions", s.base))
            .json(&chat_body())
            .send()
            .await
            .unwrap();
        let body = expect_error(r, StatusCode::NOT_FOUND, None).await;
        assert_eq!(body["error"]["code"], "engine_not_served");
    }
    let r = c
        .get(format!("{}/v1/nothing", s.base))
        .send()
        .await
        .unwrap();
    expect_error(r, StatusCode::NOT_FOUND, None).await;
    let r = c
        .get(format!("{}/v1/chat/completions", s.base))
        .send()
        .await
        .unwrap();
    expect_error(r, StatusCode::METHOD_NOT_ALLOWED, None).await;
    let models: Value = c
        .get(format!("{}/v1/models", s.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(models["object"], "list");
    let metrics = c
        .get(format!("{}/metrics", s.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("grokcast_engine_requests_total"),
        "{metrics}"
    );
    assert!(metrics.contains("code=\"404\""), "{metrics}");
}

#[tokio::test]
async fn malformed_chat_requests_get_openai_errors() {
    let s = unloaded().await;
    let c = reqwest::Client::new();
    let url = format!("{}/v1/chat/completions", s.base);
    let send = |body: Value| c.post(&url).json(&body).send();

    let r = c
        .post(&url)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    expect_error(r, StatusCode::BAD_REQUEST, None).await;
    let r = c.post(&url).body("{}").send().await.unwrap();
    expect_error(r, StatusCode::BAD_REQUEST, None).await;
    let r = send(json!({"model": "gemma-3-270m", "messages": "hello"}))
        .await
        .unwrap();
    expect_error(r, StatusCode::UNPROCESSABLE_ENTITY, None).await;

    let mut b = chat_body();
    b.as_object_mut().unwrap().remove("model");
    expect_error(
        send(b).await.unwrap(),
        StatusCode::BAD_REQUEST,
        Some("model"),
    )
    .await;
    let mut b = chat_body();
    b["model"] = json!("gpt-9");
    let body = expect_error(send(b).await.unwrap(), StatusCode::NOT_FOUND, Some("model")).await;
    assert_eq!(body["error"]["code"], "model_not_found");
    let mut b = chat_body();
    b["messages"] = json!([]);
    expect_error(
        send(b).await.unwrap(),
        StatusCode::BAD_REQUEST,
        Some("messages"),
    )
    .await;
    let mut b = chat_body();
    b["messages"] = json!([{"role": "tool", "content": "x"}, {"role": "user", "content": "hi"}]);
    expect_error(
        send(b).await.unwrap(),
        StatusCode::BAD_REQUEST,
        Some("messages"),
    )
    .await;
    // Roles out of the order Gemma 3's chat template takes get vLLM's message for them.
    for bad in [
        json!([{"role": "system", "content": "s"}, {"role": "assistant", "content": "Hello!"},
               {"role": "user", "content": "hi"}]),
        json!([{"role": "user", "content": "hi"}, {"role": "user", "content": "again"}]),
    ] {
        let mut b = chat_body();
        b["messages"] = bad;
        let body = expect_error(
            send(b).await.unwrap(),
            StatusCode::BAD_REQUEST,
            Some("messages"),
        )
        .await;
        assert_eq!(
            body["error"]["message"],
            grokcast_engines::llm::GEMMA3_ROLE_ORDER_ERROR
        );
    }
    let mut b = chat_body();
    b["messages"] = json!([{"role": "system", "content": "only instructions"}]);
    expect_error(
        send(b).await.unwrap(),
        StatusCode::BAD_REQUEST,
        Some("messages"),
    )
    .await;
    for bad in [json!(0), json!(-5), json!(100_000)] {
        let mut b = chat_body();
        b["max_tokens"] = bad;
        expect_error(
            send(b).await.unwrap(),
            StatusCode::BAD_REQUEST,
            Some("max_tokens"),
        )
        .await;
    }
    let mut b = chat_body();
    b["temperature"] = json!(7.5);
    expect_error(
        send(b).await.unwrap(),
        StatusCode::BAD_REQUEST,
        Some("temperature"),
    )
    .await;
    let mut b = chat_body();
    b["n"] = json!(3);
    expect_error(send(b).await.unwrap(), StatusCode::BAD_REQUEST, Some("n")).await;

    // Logprobs and the chat-template flags, refused as vLLM refuses them.
    for (fields, param) in [
        (json!({"top_logprobs": 5}), "top_logprobs"),
        (
            json!({"logprobs": true, "top_logprobs": 21}),
            "top_logprobs",
        ),
        (
            json!({"logprobs": true, "top_logprobs": -1}),
            "top_logprobs",
        ),
        (json!({"logprobs": true, "stream": true}), "logprobs"),
        (
            json!({"continue_final_message": true, "add_generation_prompt": true}),
            "continue_final_message",
        ),
    ] {
        let mut b = chat_body();
        for (k, v) in fields.as_object().unwrap() {
            b[k] = v.clone();
        }
        expect_error(send(b).await.unwrap(), StatusCode::BAD_REQUEST, Some(param)).await;
    }
}

#[tokio::test]
async fn malformed_transcription_requests_get_openai_errors() {
    let s = start(
        ServerConfig {
            max_body_bytes: 64 * 1024,
            ..ServerConfig::default()
        },
        None,
    )
    .await;
    let c = reqwest::Client::new();
    let url = format!("{}/v1/audio/transcriptions", s.base);
    let wav = audio::wav_bytes(&[0.0; 1600], 16_000);
    let form = |model: &str, file: Option<Vec<u8>>| {
        let mut f = Form::new().text("model", model.to_owned());
        if let Some(bytes) = file {
            f = f.part("file", Part::bytes(bytes).file_name("a.wav"));
        }
        f
    };

    let r = c
        .post(&url)
        .json(&json!({"model": "whisper-1"}))
        .send()
        .await
        .unwrap();
    expect_error(r, StatusCode::BAD_REQUEST, None).await;
    let r = c
        .post(&url)
        .multipart(form("whisper-1", None))
        .send()
        .await
        .unwrap();
    expect_error(r, StatusCode::BAD_REQUEST, Some("file")).await;
    let r = c
        .post(&url)
        .multipart(form("nope", Some(wav.clone())))
        .send()
        .await
        .unwrap();
    expect_error(r, StatusCode::NOT_FOUND, Some("model")).await;
    let r = c
        .post(&url)
        .multipart(Form::new().part("file", Part::bytes(wav.clone()).file_name("a.wav")))
        .send()
        .await
        .unwrap();
    expect_error(r, StatusCode::BAD_REQUEST, Some("model")).await;
    let r = c
        .post(&url)
        .multipart(form(
            "whisper-1",
            Some(b"RIFF\x04\x00\x00\x00WAVE".to_vec()),
        ))
        .send()
        .await
        .unwrap();
    expect_error(r, StatusCode::BAD_REQUEST, Some("file")).await;
    let r = c
        .post(&url)
        .multipart(form("whisper-1", Some(vec![1, 2, 3])))
        .send()
        .await
        .unwrap();
    expect_error(r, StatusCode::BAD_REQUEST, Some("file")).await;
    let r = c
        .post(&url)
        .multipart(form("whisper-1", Some(Vec::new())))
        .send()
        .await
        .unwrap();
    expect_error(r, StatusCode::BAD_REQUEST, Some("file")).await;
    let r = c
        .post(&url)
        .multipart(form("whisper-1", Some(wav.clone())).text("response_format", "srt"))
        .send()
        .await
        .unwrap();
    expect_error(r, StatusCode::BAD_REQUEST, Some("response_format")).await;
    let r = c
        .post(&url)
        .multipart(form("whisper-1", Some(vec![0; 100])).text("sample_rate", "12"))
        .send()
        .await
        .unwrap();
    expect_error(r, StatusCode::BAD_REQUEST, Some("sample_rate")).await;
    let big = audio::wav_bytes(&vec![0.1; 64 * 1024], 16_000);
    let r = c
        .post(&url)
        .multipart(form("whisper-1", Some(big)))
        .send()
        .await
        .unwrap();
    expect_error(r, StatusCode::PAYLOAD_TOO_LARGE, None).await;
}

#[tokio::test]
async fn malformed_speech_requests_get_openai_errors() {
    let s = unloaded().await;
    let c = reqwest::Client::new();
    let url = format!("{}/v1/audio/speech", s.base);
    let ok = json!({"model": "tts-1", "input": "Hello there.", "voice": "joe", "response_format": "pcm"});
    let with = |k: &str, v: Value| {
        let mut b = ok.clone();
        b[k] = v;
        b
    };
    for (body, status, param) in [
        (
            with("input", json!("")),
            StatusCode::BAD_REQUEST,
            Some("input"),
        ),
        (
            with("input", json!("a".repeat(5000))),
            StatusCode::BAD_REQUEST,
            Some("input"),
        ),
        (
            with("voice", json!("alloy-unknown")),
            StatusCode::BAD_REQUEST,
            Some("voice"),
        ),
        (
            with("response_format", json!("mp3")),
            StatusCode::BAD_REQUEST,
            Some("response_format"),
        ),
        (
            with("speed", json!(2.0)),
            StatusCode::BAD_REQUEST,
            Some("speed"),
        ),
        (
            with("model", json!("csm-unknown")),
            StatusCode::NOT_FOUND,
            Some("model"),
        ),
        (
            with("input", json!(42)),
            StatusCode::UNPROCESSABLE_ENTITY,
            None,
        ),
    ] {
        let r = c.post(&url).json(&body).send().await.unwrap();
        expect_error(r, status, param).await;
    }
    let mut b = ok.clone();
    b.as_object_mut().unwrap().remove("input");
    let r = c.post(&url).json(&b).send().await.unwrap();
    expect_error(r, StatusCode::BAD_REQUEST, Some("input")).await;
    // Well-formed, but the models are not loaded yet.
    let r = c.post(&url).json(&ok).send().await.unwrap();
    expect_error(r, StatusCode::SERVICE_UNAVAILABLE, None).await;
}

#[tokio::test]
async fn speech_streams_pcm_and_whole_wav_that_whisper_understands() {
    let Some(paths) = models() else { return };
    let s = start(ServerConfig::default(), Some(load_all(&paths))).await;
    let c = reqwest::Client::new();
    let r = c
        .post(format!("{}/v1/audio/speech", s.base))
        .json(&json!({"model": "tts-1", "input": "Your table is booked, see you on Friday.", "voice": "joe", "response_format": "pcm"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["x-sample-rate"], "22050");
    let pcm = r.bytes().await.unwrap();
    assert!(
        pcm.len() > 22_050,
        "at least half a second of audio, got {} bytes",
        pcm.len()
    );
    assert_eq!(pcm.len() % 2, 0);

    let r = c
        .post(format!("{}/v1/audio/speech", s.base))
        .json(&json!({"model": "tts-1", "input": "Your table is booked, see you on Friday.", "response_format": "wav"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let wav = r.bytes().await.unwrap().to_vec();
    let clip = audio::decode_clip(&wav, 0).unwrap();
    assert_eq!(clip.sample_rate, 22_050);

    #[cfg(feature = "whisper")]
    {
        // The WAV goes straight back in as an upload.
        let form = Form::new()
            .text("model", "whisper-1")
            .text("response_format", "text")
            .part("file", Part::bytes(wav).file_name("reply.wav"));
        let r = c
            .post(format!("{}/v1/audio/transcriptions", s.base))
            .multipart(form)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert!(
            r.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/plain")
        );
        // Whisper base hears Piper's "table" as "cable" on some CPUs (the
        // decoder's float paths differ by instruction set), so the check
        // rests on the two words it has always heard.
        assert_has_words(&r.text().await.unwrap(), &["booked", "friday"]);
    }
}

#[cfg(feature = "whisper")]
#[tokio::test]
async fn transcriptions_of_wav_and_raw_pcm() {
    let Some(paths) = models() else { return };
    let s = start(ServerConfig::default(), Some(load_all(&paths))).await;
    let c = reqwest::Client::new();
    let speech = espeak_16k("Please call me back tomorrow afternoon.");
    let wav = audio::wav_bytes(&speech, 16_000);
    let form = Form::new()
        .text("model", "whisper-tiny.en")
        .part("file", Part::bytes(wav).file_name("q.wav"));
    let r = c
        .post(format!("{}/v1/audio/transcriptions", s.base))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    assert_has_words(
        body["text"].as_str().unwrap(),
        &["call", "back", "tomorrow", "afternoon"],
    );

    // Raw s16le at 8 kHz, as a phone line carries it.
    let mut raw = Vec::new();
    audio::push_s16le(&mut raw, &audio::resample(&speech, 16_000, 8_000));
    let form = Form::new()
        .text("model", "whisper-1")
        .text("sample_rate", "8000")
        .text("language", "en")
        .part("file", Part::bytes(raw).file_name("q.pcm"));
    let r = c
        .post(format!("{}/v1/audio/transcriptions", s.base))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    assert_has_words(body["text"].as_str().unwrap(), &["tomorrow", "afternoon"]);

    let form = Form::new()
        .text("model", "whisper-1")
        .text("language", "de")
        .part(
            "file",
            Part::bytes(audio::wav_bytes(&speech, 16_000)).file_name("q.wav"),
        );
    let r = c
        .post(format!("{}/v1/audio/transcriptions", s.base))
        .multipart(form)
        .send()
        .await
        .unwrap();
    expect_error(r, StatusCode::BAD_REQUEST, Some("language")).await;
}

/// A server with every engine loaded, a client, and its chat URL; `None` without models.
#[cfg(feature = "llama")]
async fn chat_server() -> Option<(TestServer, reqwest::Client, String)> {
    let paths = models()?;
    let s = start(ServerConfig::default(), Some(load_all(&paths))).await;
    let url = format!("{}/v1/chat/completions", s.base);
    Some((s, reqwest::Client::new(), url))
}

#[cfg(feature = "llama")]
#[tokio::test]
async fn chat_completions_whole_and_streamed() {
    let Some((s, c, url)) = chat_server().await else {
        return;
    };

    let r = c.post(&url).json(&chat_body()).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["object"], "chat.completion");
    let content = body["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(!content.trim().is_empty(), "{body}");
    assert!(body["usage"]["completion_tokens"].as_u64().unwrap() <= 32);

    let mut b = chat_body();
    b["stream"] = json!(true);
    let r = c.post(&url).json(&b).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let text = r.text().await.unwrap();
    let events: Vec<&str> = text
        .split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| {
            e.strip_prefix("data: ")
                .expect("every event is a data line")
        })
        .collect();
    assert_eq!(events.last(), Some(&"[DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let streamed: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert!(!streamed.trim().is_empty());
    assert!(chunks.last().unwrap()["choices"][0]["finish_reason"].is_string());

    let models: Value = c
        .get(format!("{}/v1/models", s.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["id"].as_str())
        .collect();
    assert!(
        ids.contains(&"gemma-3-270m") && ids.contains(&"tts-1"),
        "{ids:?}"
    );
    // This build has no Whisper, so it does not claim to serve it.
    assert!(!ids.contains(&"whisper-1"), "{ids:?}");
}

/// The turn-end judgement a client makes with vLLM's chat API: the caller's words left open
/// (`continue_final_message`), one token, and the chat template's end-of-turn token among
/// the top logprobs.
#[cfg(feature = "llama")]
async fn turn_end_logprob(c: &reqwest::Client, url: &str, said: &str) -> f64 {
    let body = json!({"model": "gemma-3-270m", "messages": [
        {"role": "system", "content": "You are the receptionist of Sunny Dental."},
        {"role": "user", "content": "Hi, I'd like to book a cleaning."},
        {"role": "assistant", "content": "Sure. Can I have your name and phone number?"},
        {"role": "user", "content": said}
    ], "max_tokens": 1, "temperature": 0, "logprobs": true, "top_logprobs": 20,
       "add_generation_prompt": false, "continue_final_message": true});
    let r = c.post(url).json(&body).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    let content = body["choices"][0]["logprobs"]["content"]
        .as_array()
        .unwrap();
    assert_eq!(content.len(), 1, "{body}");
    let top = content[0]["top_logprobs"].as_array().unwrap();
    assert_eq!(top.len(), 20, "{body}");
    let lps: Vec<f64> = top.iter().map(|t| t["logprob"].as_f64().unwrap()).collect();
    assert!(
        lps.windows(2).all(|w| w[0] >= w[1]),
        "most likely first: {lps:?}"
    );
    assert!(lps.iter().all(|lp| *lp <= 0.0), "{lps:?}");
    top.iter()
        .find(|t| t["token"] == grokcast_engines::llm::END_OF_TURN_TOKEN)
        .and_then(|t| t["logprob"].as_f64())
        .unwrap_or(-30.0)
}

#[cfg(feature = "llama")]
#[tokio::test]
async fn logprobs_say_whether_the_callers_words_end_their_turn() {
    let Some((_server, c, url)) = chat_server().await else {
        return;
    };

    // A finished answer ends the turn far more likely than words that stop on "my" or
    // "and"; the turn's end is the one token named END_OF_TURN_TOKEN.
    let finished = turn_end_logprob(&c, &url, "My name is John Smith.").await;
    for unfinished in ["My name is John and my", "My phone number is"] {
        let open = turn_end_logprob(&c, &url, unfinished).await;
        assert!(
            finished > open + 1.0,
            "finished {finished:.2} vs '{unfinished}' {open:.2}"
        );
    }

    // Without logprobs the response says null, as OpenAI's does; a reply carries them per
    // token when asked, each with its own alternatives.
    let r: Value = c
        .post(&url)
        .json(&chat_body())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(r["choices"][0]["logprobs"].is_null(), "{r}");
    let mut b = chat_body();
    b["logprobs"] = json!(true);
    b["max_tokens"] = json!(4);
    let r: Value = c
        .post(&url)
        .json(&b)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let content = r["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert!(!content.is_empty() && content.len() <= 4, "{r}");
    assert!(
        content
            .iter()
            .all(|t| t["top_logprobs"].as_array().unwrap().is_empty())
    );
    let text: String = content
        .iter()
        .map(|t| t["token"].as_str().unwrap())
        .filter(|t| *t != grokcast_engines::llm::END_OF_TURN_TOKEN)
        .collect();
    assert_eq!(
        text.trim(),
        r["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .trim(),
        "the tokens spell the reply"
    );
}

#[cfg(feature = "llama")]
#[tokio::test]
async fn a_full_queue_answers_503_and_the_server_keeps_serving() {
    let Some(paths) = models() else { return };
    let s = start(
        ServerConfig {
            queue_capacity: 1,
            ..ServerConfig::default()
        },
        Some(load_all(&paths)),
    )
    .await;
    let c = reqwest::Client::new();
    let url = format!("{}/v1/chat/completions", s.base);
    // Four requests at once against a lane of one: reading the prompt alone takes far
    // longer than sending them, so the others find the lane full.
    let sends = (0..4).map(|_| c.post(&url).json(&chat_body()).send());
    let results = futures::future::join_all(sends).await;
    let mut ok = 0;
    let mut full = 0;
    for r in results {
        let r = r.unwrap();
        match r.status() {
            StatusCode::OK => ok += 1,
            StatusCode::SERVICE_UNAVAILABLE => {
                let body = expect_error(r, StatusCode::SERVICE_UNAVAILABLE, None).await;
                assert_eq!(body["error"]["code"], "queue_full");
                full += 1;
            }
            other => panic!("unexpected status {other}"),
        }
    }
    assert!(ok >= 1 && full >= 1, "ok {ok}, full {full}");
    // Once the lane drains, requests are served again.
    let r = c.post(&url).json(&chat_body()).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

/// `grokcast-serve --role llm` as a ModelPool with `engine: grokcast, role: llm` runs it: this
/// build has no LLM, so the process becomes `grokcast-serve-llm` from its own directory and
/// serves chat completions on the same address. Where that binary is missing, it says what
/// to build instead of serving nothing.
#[cfg(all(feature = "whisper", not(feature = "llama")))]
#[tokio::test]
async fn the_llm_role_hands_over_to_grokcast_serve_llm_beside_it() {
    use std::process::{Command, Stdio};

    let serve = std::path::PathBuf::from(env!("CARGO_BIN_EXE_grokcast-serve"));
    // Alone in a directory of its own, the server has no LLM to hand over to.
    let solo_dir = serve
        .parent()
        .unwrap()
        .join(format!("solo-serve-{}", std::process::id()));
    std::fs::create_dir_all(&solo_dir).unwrap();
    let solo = solo_dir.join("grokcast-serve");
    let _ = std::fs::remove_file(&solo);
    std::fs::hard_link(&serve, &solo)
        .or_else(|_| std::fs::copy(&serve, &solo).map(|_| ()))
        .unwrap();
    let out = Command::new(&solo)
        .args(["--role", "llm", "--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&solo_dir);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("grokcast-serve-llm"), "{stderr}");

    let Some(_) = models() else { return };
    if !serve.with_file_name("grokcast-serve-llm").is_file() {
        assert!(
            std::env::var_os("GROKCAST_REQUIRE_MODELS").is_none(),
            "grokcast-serve-llm is not built (scripts/test.sh builds it first)"
        );
        eprintln!("SKIPPED: grokcast-serve-llm is not built");
        return;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(&serve)
        .args(["--role", "llm", "--listen", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let c = reqwest::Client::new();
    let mut ready = false;
    for _ in 0..1200 {
        if let Ok(r) = c.get(format!("{base}/readyz")).send().await
            && r.status().is_success()
        {
            ready = true;
            break;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("grokcast-serve --role llm exited: {status}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let answer = async {
        assert!(ready, "not ready within 120 s");
        let r = c
            .post(format!("{base}/v1/chat/completions"))
            .json(&chat_body())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let body: Value = r.json().await.unwrap();
        let content = body["choices"][0]["message"]["content"].as_str().unwrap();
        assert!(!content.trim().is_empty(), "{body}");
    };
    let result = futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(answer)).await;
    // The handover keeps the process: stopping the child stops the LLM server.
    let _ = child.kill();
    let _ = child.wait();
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}
