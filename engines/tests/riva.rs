//! grokcast-serve's Riva speech recognition over real gRPC on 127.0.0.1, with the installed
//! Whisper: interim transcripts while audio streams, a final transcript from what was already
//! decoded, phone-line mu-law, one-shot `Recognize`, and every malformed stream refused with
//! a clear status while other streams go on.

#![cfg(feature = "whisper")]
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{assert_has_words, espeak_16k, models};
use grokcast_engines::audio;
use grokcast_engines::riva::asr::streaming_recognize_request::StreamingRequest;
use grokcast_engines::riva::asr::{
    RecognitionConfig, RecognizeRequest, StreamingRecognitionConfig, StreamingRecognizeRequest,
    StreamingRecognizeResponse,
};
use grokcast_engines::riva::{AudioEncoding, RivaSpeechRecognitionClient};
use grokcast_engines::server::{AppState, Engines, ServerConfig, riva};
use grokcast_engines::stt::WhisperStt;
use grokcast_engines::stt_stream::Policy;
use prost::Message as _;
use tokio::sync::mpsc;
use tonic::Code;
use tonic::transport::Channel;

/// The gRPC server on a free port, with Whisper loaded; dropping it shuts it down.
struct Server {
    url: String,
    _shutdown: tokio::sync::oneshot::Sender<()>,
}

async fn server() -> Option<Server> {
    let paths = models()?;
    let whisper = WhisperStt::load(&paths.whisper().unwrap()).unwrap();
    let state = AppState::new(ServerConfig::default()).unwrap();
    state.set_engines(Engines {
        stt: Some(Arc::new(whisper)),
        ..Engines::default()
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(riva::serve(listener, state, Policy::default(), async {
        let _ = rx.await;
    }));
    Some(Server { url, _shutdown: tx })
}

async fn client(server: &Server) -> RivaSpeechRecognitionClient<Channel> {
    RivaSpeechRecognitionClient::connect(server.url.clone())
        .await
        .unwrap()
}

fn config(encoding: AudioEncoding, rate: i32, interim: bool) -> StreamingRecognizeRequest {
    StreamingRecognizeRequest {
        streaming_request: Some(StreamingRequest::StreamingConfig(
            StreamingRecognitionConfig {
                config: Some(RecognitionConfig {
                    encoding: encoding as i32,
                    sample_rate_hertz: rate,
                    language_code: "en-US".into(),
                    max_alternatives: 1,
                    audio_channel_count: 1,
                    model: String::new(),
                }),
                interim_results: interim,
            },
        )),
    }
}

fn audio_message(bytes: Vec<u8>) -> StreamingRecognizeRequest {
    StreamingRecognizeRequest {
        streaming_request: Some(StreamingRequest::AudioContent(bytes)),
    }
}

fn s16(samples: &[f32]) -> Vec<u8> {
    let mut out = Vec::new();
    audio::push_s16le(&mut out, samples);
    out
}

fn transcript(response: &StreamingRecognizeResponse) -> (&str, bool) {
    let result = &response.results[0];
    (result.alternatives[0].transcript.as_str(), result.is_final)
}

/// Collects every response of a stream until it ends, or its error.
async fn drain(
    mut responses: tonic::Streaming<StreamingRecognizeResponse>,
) -> Result<Vec<StreamingRecognizeResponse>, tonic::Status> {
    let mut all = Vec::new();
    while let Some(r) = responses.message().await? {
        all.push(r);
    }
    Ok(all)
}

#[tokio::test]
async fn interim_transcripts_while_speaking_then_the_final_from_what_was_decoded() {
    let Some(server) = server().await else { return };
    let mut client = client(&server).await;
    let speech = espeak_16k("Please call me back tomorrow afternoon.");
    let (tx, rx) = mpsc::channel(64);
    tx.send(config(AudioEncoding::LinearPcm, 16_000, true))
        .await
        .unwrap();
    let requests = grokcast_engines::receiver_stream(rx);
    let mut responses = client
        .streaming_recognize(requests)
        .await
        .unwrap()
        .into_inner();
    // The voice at the line's pace, in 100 ms messages (split mid-sample, as a client may).
    let bytes = s16(&speech);
    for chunk in bytes.chunks(3_201) {
        tx.send(audio_message(chunk.to_vec())).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Then silence, as the caller waits for an answer, until an interim result comes (the
    // server decodes at once in a pause; a loaded machine may take a while).
    let silence = s16(&vec![0.0; 1_600]);
    let mut interims = Vec::new();
    let mut quiet_since = None;
    for _ in 0..600 {
        tx.send(audio_message(silence.clone())).await.unwrap();
        match tokio::time::timeout(Duration::from_millis(100), responses.message()).await {
            Ok(message) => {
                let r = message.unwrap().expect("an interim result, not the end");
                let (text, is_final) = transcript(&r);
                assert!(!is_final, "nothing is final before the client closes");
                assert!((0.0..=1.0).contains(&r.results[0].stability));
                // Each word with Whisper's probability for it: what the agent reads to leave
                // a guessed last word out of its end-of-turn judgement.
                let words = &r.results[0].alternatives[0].words;
                let spelt: Vec<&str> = words.iter().map(|w| w.word.as_str()).collect();
                assert_eq!(spelt.join(" "), text, "the words spell the transcript");
                assert!(
                    words
                        .iter()
                        .all(|w| w.confidence > 0.0 && w.confidence <= 1.0),
                    "{words:?}"
                );
                interims.push(text.to_owned());
            }
            // Done once the whole sentence was heard and the server has had a second to
            // decode anything else it wanted to.
            Err(_)
                if quiet_since
                    .is_some_and(|t: std::time::Instant| t.elapsed() > Duration::from_secs(1)) =>
            {
                break;
            }
            Err(_) => {}
        }
        if quiet_since.is_none() && interims.last().is_some_and(|t| t.contains("afternoon")) {
            quiet_since = Some(std::time::Instant::now());
        }
    }
    let last = interims.last().expect("interim results arrive").clone();
    drop(tx);
    let rest = drain(responses).await.unwrap();
    let finals: Vec<_> = rest.iter().filter(|r| transcript(r).1).collect();
    assert_eq!(finals.len(), 1, "one final result: {rest:?}");
    let (text, _) = transcript(finals[0]);
    assert_has_words(text, &["call", "back", "tomorrow", "afternoon"]);
    assert_eq!(
        text, last,
        "silence after the last decode adds nothing: the final is that decode"
    );
    assert!(
        (finals[0].results[0].audio_processed - (bytes.len() / 2) as f32 / 16_000.0) > 0.0,
        "the final covers the silence sent too"
    );
}

#[tokio::test]
async fn phone_line_mulaw_and_one_shot_recognize() {
    let Some(server) = server().await else { return };
    let mut client = client(&server).await;
    let speech = espeak_16k("My number is five five five, one two three four.");
    let line = audio::resample(&speech, 16_000, 8_000);
    let mut mulaw = vec![0u8; line.len()];
    grokcast_engines::mulaw::encode_into(&line, &mut mulaw);
    // Without interim results: only the final comes back.
    let mut messages = vec![config(AudioEncoding::Mulaw, 8_000, false)];
    messages.extend(mulaw.chunks(160).map(|c| audio_message(c.to_vec())));
    let responses = client
        .streaming_recognize(futures::stream::iter(messages))
        .await
        .unwrap()
        .into_inner();
    let all = drain(responses).await.unwrap();
    assert_eq!(all.len(), 1, "{all:?}");
    let (text, is_final) = transcript(&all[0]);
    assert!(is_final);
    assert_has_words(text, &["number"]);

    let StreamingRequest::StreamingConfig(streaming) =
        config(AudioEncoding::LinearPcm, 16_000, false)
            .streaming_request
            .unwrap()
    else {
        unreachable!()
    };
    let response = client
        .recognize(RecognizeRequest {
            config: streaming.config,
            audio: s16(&speech),
        })
        .await
        .unwrap()
        .into_inner();
    assert_has_words(
        &response.results[0].alternatives[0].transcript,
        &["my", "number"],
    );
}

/// Sends `messages` as one stream and returns the status it ends with.
async fn refused(
    client: &mut RivaSpeechRecognitionClient<Channel>,
    messages: Vec<StreamingRecognizeRequest>,
) -> tonic::Status {
    match client
        .streaming_recognize(futures::stream::iter(messages))
        .await
    {
        Err(status) => status,
        Ok(responses) => drain(responses.into_inner())
            .await
            .expect_err("the stream is refused"),
    }
}

#[tokio::test]
async fn malformed_streams_end_with_a_clear_status_and_other_streams_go_on() {
    let Some(server) = server().await else { return };
    let mut client = client(&server).await;

    // A stream that is fine, running all along.
    let speech = espeak_16k("Good morning, I would like to book a table.");
    let (tx, rx) = mpsc::channel(512);
    tx.send(config(AudioEncoding::LinearPcm, 16_000, false))
        .await
        .unwrap();
    let good = client
        .clone()
        .streaming_recognize(grokcast_engines::receiver_stream(rx))
        .await
        .unwrap()
        .into_inner();
    let bytes = s16(&speech);
    let half = (bytes.len() / 2) & !1;
    tx.send(audio_message(bytes[..half].to_vec()))
        .await
        .unwrap();

    let audio = audio_message(s16(&[0.0; 1_600]));
    let cases: Vec<(&str, Vec<StreamingRecognizeRequest>, &str)> = vec![
        (
            "audio before the config",
            vec![audio.clone()],
            "first message",
        ),
        (
            "the config twice",
            vec![
                config(AudioEncoding::LinearPcm, 16_000, true),
                audio.clone(),
                config(AudioEncoding::LinearPcm, 16_000, true),
            ],
            "only be the first",
        ),
        (
            "an encoding it does not read",
            vec![config(AudioEncoding::Flac, 16_000, true), audio.clone()],
            "LINEAR_PCM or MULAW",
        ),
        (
            "a rate below 8 kHz",
            vec![config(AudioEncoding::LinearPcm, 4_000, true)],
            "sample_rate_hertz 4000",
        ),
        (
            "mu-law at 16 kHz",
            vec![config(AudioEncoding::Mulaw, 16_000, true)],
            "8000 Hz",
        ),
        (
            "an empty message",
            vec![
                config(AudioEncoding::LinearPcm, 16_000, true),
                StreamingRecognizeRequest {
                    streaming_request: None,
                },
            ],
            "neither",
        ),
        ("no messages", vec![], "before its config"),
    ];
    for (what, messages, says) in cases {
        let status = refused(&mut client, messages).await;
        assert_eq!(status.code(), Code::InvalidArgument, "{what}: {status:?}");
        assert!(status.message().contains(says), "{what}: {status:?}");
    }
    let mut unknown = config(AudioEncoding::LinearPcm, 16_000, true);
    if let Some(StreamingRequest::StreamingConfig(c)) = unknown.streaming_request.as_mut() {
        c.config.as_mut().unwrap().model = "whisper-large".into();
    }
    let status = refused(&mut client, vec![unknown]).await;
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("whisper-tiny.en"), "{status:?}");
    let mut german = config(AudioEncoding::LinearPcm, 16_000, true);
    if let Some(StreamingRequest::StreamingConfig(c)) = german.streaming_request.as_mut() {
        c.config.as_mut().unwrap().language_code = "de-DE".into();
    }
    let status = refused(&mut client, vec![german]).await;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");

    // Bytes that are not a protobuf message at all.
    let status = raw_stream(
        &server,
        vec![
            config(AudioEncoding::LinearPcm, 16_000, true).encode_to_vec(),
            vec![0xFF; 7],
        ],
    )
    .await;
    assert_ne!(status.code(), Code::Ok, "{status:?}");

    // The good stream finishes as if nothing happened.
    tx.send(audio_message(bytes[half..].to_vec()))
        .await
        .unwrap();
    drop(tx);
    let all = drain(good).await.unwrap();
    let (text, is_final) = transcript(all.last().unwrap());
    assert!(is_final);
    assert_has_words(text, &["book", "table"]);
}

/// A codec that sends bytes as they are, for messages no protobuf encoder would write.
#[derive(Debug, Clone, Default)]
struct Raw;

impl tonic::codec::Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl tonic::codec::Encoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        use bytes::BufMut as _;
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        use bytes::Buf as _;
        Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
    }
}

/// Sends `messages` byte for byte as one StreamingRecognize stream; the status it ends with.
async fn raw_stream(server: &Server, messages: Vec<Vec<u8>>) -> tonic::Status {
    let channel = Channel::from_shared(server.url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let path = http::uri::PathAndQuery::from_static(
        "/nvidia.riva.asr.RivaSpeechRecognition/StreamingRecognize",
    );
    let result = grpc
        .streaming(
            tonic::Request::new(futures::stream::iter(messages)),
            path,
            Raw,
        )
        .await;
    match result {
        Err(status) => status,
        Ok(response) => {
            let mut stream = response.into_inner();
            loop {
                match stream.message().await {
                    Ok(Some(_)) => continue,
                    Ok(None) => return tonic::Status::ok("the stream ended cleanly"),
                    Err(status) => return status,
                }
            }
        }
    }
}
