//! "Instant" model servers: a test double for the GPU model pools (vLLM for chat, a Whisper
//! server for transcription, CSM or another TTS server for speech). They answer at once over
//! the same OpenAI-compatible HTTP protocol the agent uses in production, so tests and the
//! benchmark measure the agent itself. Failures and delays can be switched on per stage to
//! test what the caller hears when a model server is down or slow.
//!
//! Chat enforces the message order of the model family it stands for ([`ChatRules`], strict
//! Gemma 3 by default, the reference model) and answers a conversation the real server would
//! refuse with the real server's 400, so a test of the agent fails on it. Asked whether the
//! caller's turn is over (one token's logprobs after the caller's open message, as the agent
//! asks vLLM with `endOfTurnModel: llm`), it says not when the words end in one of
//! [`InstantBehaviour::open_endings`] ("...a pizza with"), and yes otherwise.
//!
//! Speech is a voiced synthetic signal (a [`SPEECH_PITCH_HZ`] harmonic series with a
//! syllable envelope), 55 ms per character of text, as 16-bit mono at a settable rate (24 kHz
//! by default, OpenAI's `pcm`): raw PCM or a WAV file as the request's `response_format`
//! asks, with the rate in `x-sample-rate` unless that is switched off.
//!
//! Streaming transcription ([`InstantServers::serve_riva`]) stands for a Riva, NIM or
//! grokcast-serve STT pool: NVIDIA Riva's `StreamingRecognize` over real gRPC. It demands
//! what those servers demand (the configuration first, 16 kHz LINEAR_PCM, audio after it),
//! sends an interim transcript once half a second of audio has come, and the final one when
//! the agent closes its side. It can die mid-utterance or be slow to finish.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use grokcast_engines::llm::{ChatMessage, gemma3_tools_refusal};
use grokcast_engines::riva::asr::streaming_recognize_request::StreamingRequest;
use grokcast_engines::riva::asr::{
    RecognizeRequest, RecognizeResponse, RivaSpeechRecognitionConfigRequest,
    RivaSpeechRecognitionConfigResponse, SpeechRecognitionAlternative, StreamingRecognitionResult,
    StreamingRecognizeRequest, StreamingRecognizeResponse, WordInfo,
};
use grokcast_engines::riva::{AudioEncoding, RivaSpeechRecognition, RivaSpeechRecognitionServer};
use grokcast_engines::server::SAMPLE_RATE_HEADER;
use serde::Deserialize;
use tonic::Status;

/// Sample rate of the speech the double returns unless told otherwise.
pub const SPEECH_RATE: u32 = 24_000;
/// Fundamental frequency of the synthetic voice.
pub const SPEECH_PITCH_HZ: f32 = 140.0;
/// Length of the synthetic voice's speech per character of text.
pub const SPEECH_MS_PER_CHAR: u32 = 55;

/// Which model family's rules for the order of chat messages the double enforces.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ChatRules {
    /// Gemma 3 (`google/gemma-3-*-it` on vLLM): one optional system message, then user and
    /// assistant in turn, starting with the user; anything else is a 400.
    #[default]
    Gemma3,
    /// OpenAI's API: roles in any order.
    OpenAi,
}

impl ChatRules {
    /// Why a server of this family would refuse these messages, or `None` if it takes them.
    /// Gemma 3 is checked as vLLM's Gemma 3 tool template checks it (tool exchanges left out
    /// of the alternation, null content refused; `gemma3_tools_refusal`), which for a
    /// conversation without tools is the plain template's rule.
    pub fn refusal(self, messages: &[serde_json::Value]) -> Option<String> {
        let mut parsed = Vec::with_capacity(messages.len());
        for (i, m) in messages.iter().enumerate() {
            if !m["content"].is_string() {
                return Some(format!("messages[{i}]: Invalid content type"));
            }
            match serde_json::from_value::<ChatMessage>(m.clone()) {
                Ok(message) => parsed.push(message),
                Err(e) => return Some(format!("messages[{i}] is not a chat message: {e}")),
            }
        }
        // vLLM reads every earlier call's arguments as JSON before the template sees them.
        for (i, m) in parsed.iter().enumerate() {
            for call in &m.tool_calls {
                if serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(
                    &call.function.arguments,
                )
                .is_err()
                {
                    return Some(format!(
                        "messages[{i}]: the arguments of {:?} are not a JSON object",
                        call.function.name
                    ));
                }
            }
        }
        match self {
            ChatRules::Gemma3 => gemma3_tools_refusal(&parsed),
            ChatRules::OpenAi => None,
        }
    }
}

impl std::str::FromStr for ChatRules {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "gemma3" => Ok(ChatRules::Gemma3),
            "openai" => Ok(ChatRules::OpenAi),
            other => Err(format!("{other:?} is not gemma3 or openai")),
        }
    }
}

/// vLLM's body for a request it refuses (`ErrorResponse`), with HTTP 400.
fn vllm_bad_request(message: &str) -> Response {
    let body = serde_json::json!({
        "object": "error", "message": message, "type": "BadRequestError", "param": null, "code": 400,
    });
    (StatusCode::BAD_REQUEST, axum::Json(body)).into_response()
}

/// How one stage behaves.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StageBehaviour {
    /// Answer with HTTP 503.
    pub fail: bool,
    /// Wait this long before answering.
    pub delay: Duration,
}

/// Behaviour of all three stages and what they say.
#[derive(Debug, Clone, PartialEq)]
pub struct InstantBehaviour {
    /// What every transcription returns.
    pub transcript: String,
    /// What every chat reply says (streamed word by word).
    pub reply: String,
    /// The chat server's rules for the order of messages.
    pub chat_rules: ChatRules,
    /// Sample rate of the speech.
    pub speech_rate: u32,
    /// Whether speech responses give their rate in `x-sample-rate` (grokcast-serve does;
    /// OpenAI does not).
    pub speech_rate_header: bool,
    /// Transcription.
    pub stt: StageBehaviour,
    /// Chat.
    pub llm: StageBehaviour,
    /// Speech.
    pub tts: StageBehaviour,
    /// Streaming transcription.
    pub stream: StreamBehaviour,
    /// Words after which the chat double judges that the caller has not finished, when
    /// asked whether a turn is over (logprobs after the caller's open message): matched
    /// against the last word, case and punctuation aside. The turn's end then gets
    /// probability 0.02, else 0.9.
    pub open_endings: Vec<String>,
    /// Tool calls the chat double makes, when a request offers tools and the caller's last
    /// words hold a call's `when_said`.
    pub tool_calls: Vec<ScriptedCall>,
    /// What the chat double says after tool results (the last message a tool's); empty says
    /// nothing.
    pub after_tools: String,
}

/// A tool call the chat double makes, streamed as vLLM streams one.
#[derive(Debug, Clone, PartialEq)]
pub struct ScriptedCall {
    /// Made when the caller's last message holds this (case aside).
    pub when_said: String,
    /// The function called.
    pub name: String,
    /// Its arguments, as the model would write them (malformed ones too).
    pub arguments: String,
    /// Words streamed before the call, in the same reply (empty: none).
    pub saying: String,
    /// Stream the call as words, `[name(key=value)]` after `saying`, as vLLM's pythonic
    /// parser hands back a reply that does not start with the call (Gemma 3, Llama 3.2+).
    pub written: bool,
}

impl ScriptedCall {
    /// `name(arguments)` when the caller says `when_said`.
    pub fn new(when_said: &str, name: &str, arguments: &str) -> Self {
        Self {
            when_said: when_said.into(),
            name: name.into(),
            arguments: arguments.into(),
            saying: String::new(),
            written: false,
        }
    }

    /// The same call, written as words (see [`ScriptedCall::written`]).
    pub fn written_as_words(mut self) -> Self {
        self.written = true;
        self
    }

    /// The same call, after saying `words` in the same reply.
    pub fn saying(mut self, words: &str) -> Self {
        self.saying = words.into();
        self
    }
}

/// How the streaming transcription double behaves.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StreamBehaviour {
    /// Reset every stream (UNAVAILABLE) once a quarter second of audio has come.
    pub die_mid_utterance: bool,
    /// Wait this long after the agent closes its side before the final transcript.
    pub final_delay: Duration,
    /// Answer every audio message with an interim result of these words and how sure the
    /// recogniser is of each (as `grokcast-serve` sends them), having heard all the audio so
    /// far, instead of one interim result of half the transcript that says nothing of how
    /// much it heard.
    pub heard_words: Option<Vec<(String, f32)>>,
}

impl Default for InstantBehaviour {
    fn default() -> Self {
        Self {
            transcript: "What are your opening hours?".into(),
            reply: "We are open from nine to five. Is there anything else?".into(),
            chat_rules: ChatRules::default(),
            speech_rate: SPEECH_RATE,
            speech_rate_header: true,
            stt: StageBehaviour::default(),
            llm: StageBehaviour::default(),
            tts: StageBehaviour::default(),
            stream: StreamBehaviour::default(),
            open_endings: ["with", "for", "to", "and", "if", "is", "my", "the", "a"]
                .map(String::from)
                .to_vec(),
            tool_calls: Vec::new(),
            after_tools: "Done.".into(),
        }
    }
}

/// Requests served, by stage.
#[derive(Debug, Default)]
pub struct InstantCounts {
    /// Transcriptions.
    pub stt: AtomicU64,
    /// Chat completions.
    pub llm: AtomicU64,
    /// Speech requests.
    pub tts: AtomicU64,
    /// Transcription streams opened.
    pub stt_streams: AtomicU64,
    /// Transcription streams that reached their final transcript.
    pub stt_streams_finished: AtomicU64,
    /// Chat requests that asked whether the caller's turn is over (and what they judged).
    pub llm_judgements: AtomicU64,
}

/// Shared handle to a running double.
#[derive(Debug, Clone, Default)]
pub struct InstantServers {
    /// Current behaviour; change it while the server runs.
    pub behaviour: Arc<Mutex<InstantBehaviour>>,
    /// Requests served.
    pub counts: Arc<InstantCounts>,
    /// The `messages` of every chat request answered, in order (what the agent's history
    /// was); refused ones are counted in `counts.llm` but not kept.
    pub conversations: Arc<Mutex<Vec<Vec<serde_json::Value>>>>,
    /// The `voice` of every speech request, in order (`None`: the request named none).
    pub voices: Arc<Mutex<Vec<Option<String>>>>,
    /// The `tools` of every chat request answered, in order (null: it offered none).
    pub offered_tools: Arc<Mutex<Vec<serde_json::Value>>>,
    /// The `input` of every speech request, in order: what the agent said.
    pub spoken: Arc<Mutex<Vec<String>>>,
}

impl InstantServers {
    fn behaviour(&self) -> InstantBehaviour {
        self.behaviour
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Changes the behaviour.
    pub fn set(&self, change: impl FnOnce(&mut InstantBehaviour)) {
        change(&mut self.behaviour.lock().unwrap_or_else(|p| p.into_inner()));
    }

    /// The routes, under `/v1`.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/v1/chat/completions", post(chat))
            .route("/v1/audio/transcriptions", post(transcribe))
            .route("/v1/audio/speech", post(speech))
            .with_state(self.clone())
    }

    /// Serves on `listener` until the task is dropped.
    pub async fn serve(self, listener: tokio::net::TcpListener) -> std::io::Result<()> {
        axum::serve(listener, self.router()).await
    }

    /// Serves streaming transcription (Riva's gRPC protocol) on `listener` until the task is
    /// dropped.
    pub async fn serve_riva(
        self,
        listener: tokio::net::TcpListener,
    ) -> Result<(), tonic::transport::Error> {
        tonic::transport::Server::builder()
            .add_service(RivaSpeechRecognitionServer::new(InstantRiva(self)))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
            .await
    }
}

/// The streaming transcription double.
struct InstantRiva(InstantServers);

type Responses = std::pin::Pin<
    Box<dyn futures::Stream<Item = Result<StreamingRecognizeResponse, Status>> + Send>,
>;

fn result(transcript: String, is_final: bool) -> StreamingRecognizeResponse {
    // Like Riva: no words in interim results, so the agent judges them whole.
    heard(transcript, Vec::new(), is_final, 0.0)
}

fn heard(
    transcript: String,
    words: Vec<WordInfo>,
    is_final: bool,
    audio_processed: f32,
) -> StreamingRecognizeResponse {
    StreamingRecognizeResponse {
        results: vec![StreamingRecognitionResult {
            alternatives: vec![SpeechRecognitionAlternative {
                transcript,
                confidence: 0.0,
                words,
            }],
            is_final,
            stability: if is_final { 1.0 } else { 0.5 },
            channel_tag: 1,
            audio_processed,
        }],
    }
}

#[tonic::async_trait]
impl RivaSpeechRecognition for InstantRiva {
    async fn recognize(
        &self,
        _request: tonic::Request<RecognizeRequest>,
    ) -> Result<tonic::Response<RecognizeResponse>, Status> {
        Err(Status::unimplemented("the instant double only streams"))
    }

    type StreamingRecognizeStream = Responses;

    async fn streaming_recognize(
        &self,
        request: tonic::Request<tonic::Streaming<StreamingRecognizeRequest>>,
    ) -> Result<tonic::Response<Responses>, Status> {
        let servers = self.0.clone();
        servers.counts.stt_streams.fetch_add(1, Ordering::Relaxed);
        let mut requests = request.into_inner();
        let config = match requests.message().await?.and_then(|m| m.streaming_request) {
            Some(StreamingRequest::StreamingConfig(c)) => c.config.unwrap_or_default(),
            _ => {
                return Err(Status::invalid_argument(
                    "the first message must be the config",
                ));
            }
        };
        if config.encoding != AudioEncoding::LinearPcm as i32 || config.sample_rate_hertz != 16_000
        {
            return Err(Status::invalid_argument(
                "the double reads 16 kHz LINEAR_PCM, as the agent sends",
            ));
        }
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        tokio::spawn(async move {
            let b = servers.behaviour();
            let mut bytes = 0usize;
            let mut interim_sent = false;
            loop {
                let message = match requests.message().await {
                    Ok(m) => m,
                    Err(status) => {
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                };
                match message.and_then(|m| m.streaming_request) {
                    Some(StreamingRequest::AudioContent(audio)) => bytes += audio.len(),
                    Some(StreamingRequest::StreamingConfig(_)) => {
                        let _ = tx.send(Err(Status::invalid_argument("config twice"))).await;
                        return;
                    }
                    None => break,
                }
                // 16 kHz, 2 bytes a sample: 8000 bytes is a quarter second.
                if b.stream.die_mid_utterance && bytes >= 8_000 {
                    let _ = tx
                        .send(Err(Status::unavailable("stream reset (test double)")))
                        .await;
                    return;
                }
                if let Some(words) = &b.stream.heard_words {
                    let spelt: Vec<&str> = words.iter().map(|(w, _)| w.as_str()).collect();
                    let infos = words
                        .iter()
                        .map(|(word, confidence)| WordInfo {
                            word: word.clone(),
                            confidence: *confidence,
                        })
                        .collect();
                    let seconds = bytes as f32 / 32_000.0;
                    let _ = tx
                        .send(Ok(heard(spelt.join(" "), infos, false, seconds)))
                        .await;
                } else if !interim_sent && bytes >= 16_000 {
                    interim_sent = true;
                    let words: Vec<&str> = b.transcript.split_whitespace().collect();
                    let half = words[..words.len() / 2].join(" ");
                    let _ = tx.send(Ok(result(half, false))).await;
                }
            }
            tokio::time::sleep(b.stream.final_delay).await;
            servers
                .counts
                .stt_streams_finished
                .fetch_add(1, Ordering::Relaxed);
            let _ = tx.send(Ok(result(b.transcript.clone(), true))).await;
        });
        Ok(tonic::Response::new(Box::pin(
            grokcast_engines::receiver_stream(rx),
        )))
    }

    async fn get_riva_speech_recognition_config(
        &self,
        _request: tonic::Request<RivaSpeechRecognitionConfigRequest>,
    ) -> Result<tonic::Response<RivaSpeechRecognitionConfigResponse>, Status> {
        Err(Status::unimplemented("the instant double only streams"))
    }
}

async fn gate(stage: &StageBehaviour) -> Result<(), Response> {
    if !stage.delay.is_zero() {
        tokio::time::sleep(stage.delay).await;
    }
    if stage.fail {
        return Err((
            StatusCode::SERVICE_UNAVAILABLE,
            r#"{"error":{"message":"model server down (test double)"}}"#,
        )
            .into_response());
    }
    Ok(())
}

async fn transcribe(State(s): State<InstantServers>, body: Bytes) -> Response {
    s.counts.stt.fetch_add(1, Ordering::Relaxed);
    let b = s.behaviour();
    if let Err(r) = gate(&b.stt).await {
        return r;
    }
    // The agent sends multipart with a WAV file part; anything else is a client bug.
    if !body.windows(4).any(|w| w == b"RIFF") {
        return (
            StatusCode::BAD_REQUEST,
            r#"{"error":{"message":"no WAV file part"}}"#,
        )
            .into_response();
    }
    axum::Json(serde_json::json!({ "text": b.transcript })).into_response()
}

#[derive(Deserialize)]
struct ChatRequest {
    messages: Vec<serde_json::Value>,
    #[serde(default)]
    tools: serde_json::Value,
    #[serde(default)]
    stream: bool,
    #[serde(default)]
    logprobs: bool,
    #[serde(default)]
    continue_final_message: bool,
}

/// A turn-end judgement, as vLLM answers one: a single token after the caller's open message,
/// with the chat template's end-of-turn token among the top logprobs.
fn judge_turn_end(b: &InstantBehaviour, messages: &[serde_json::Value]) -> Response {
    let said = messages
        .last()
        .and_then(|m| m["content"].as_str())
        .unwrap_or_default();
    let last = said
        .split_whitespace()
        .next_back()
        .map(|w| {
            w.chars()
                .filter(|c| c.is_alphanumeric())
                .flat_map(char::to_lowercase)
                .collect::<String>()
        })
        .unwrap_or_default();
    let open = b.open_endings.iter().any(|w| w.eq_ignore_ascii_case(&last));
    let end: f32 = if open { 0.02 } else { 0.9 };
    let go_on = 1.0 - end;
    let (first, second) = if open {
        (("more", go_on), ("<end_of_turn>", end))
    } else {
        (("<end_of_turn>", end), ("more", go_on))
    };
    let top = |(token, p): (&str, f32)| serde_json::json!({"token": token, "logprob": p.ln(), "bytes": token.as_bytes()});
    let body = serde_json::json!({
        "id": "chatcmpl-instant", "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": ""},
                     "logprobs": {"content": [{"token": first.0, "logprob": first.1.ln(),
                                               "bytes": first.0.as_bytes(),
                                               "top_logprobs": [top(first), top(second)]}]},
                     "finish_reason": "length"}],
    });
    axum::Json(body).into_response()
}

async fn chat(
    State(s): State<InstantServers>,
    axum::Json(request): axum::Json<ChatRequest>,
) -> Response {
    s.counts.llm.fetch_add(1, Ordering::Relaxed);
    let b = s.behaviour();
    if let Err(r) = gate(&b.llm).await {
        return r;
    }
    if request.logprobs && request.continue_final_message && !request.messages.is_empty() {
        if let Some(refusal) = b.chat_rules.refusal(&request.messages) {
            return vllm_bad_request(&refusal);
        }
        s.counts.llm_judgements.fetch_add(1, Ordering::Relaxed);
        return judge_turn_end(&b, &request.messages);
    }
    if request.messages.is_empty() || !request.stream {
        return (
            StatusCode::BAD_REQUEST,
            r#"{"error":{"message":"messages and stream:true required"}}"#,
        )
            .into_response();
    }
    if let Some(refusal) = b.chat_rules.refusal(&request.messages) {
        return vllm_bad_request(&refusal);
    }
    let last = request.messages.last().cloned().unwrap_or_default();
    s.offered_tools
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(request.tools.clone());
    s.conversations
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(request.messages);
    let said = last["content"].as_str().unwrap_or_default().to_lowercase();
    let scripted = b.tool_calls.iter().find(|c| {
        last["role"] == "user"
            && request.tools.is_array()
            && said.contains(&c.when_said.to_lowercase())
    });
    if let Some(call) = scripted {
        return tool_call_stream(call);
    }
    let reply = if last["role"] == "tool" {
        b.after_tools.clone()
    } else {
        b.reply.clone()
    };
    let body: String = reply
        .split_inclusive(' ')
        .map(|word| sse_chunk(serde_json::json!({ "content": word }), None))
        .collect();
    sse_response(body)
}

/// One `chat.completion.chunk` as an SSE event.
fn sse_chunk(delta: serde_json::Value, finish: Option<&str>) -> String {
    let chunk = serde_json::json!({
        "id": "chatcmpl-instant", "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    });
    format!("data: {chunk}\n\n")
}

/// A streamed chat answer: `events`, then `[DONE]`.
fn sse_response(mut events: String) -> Response {
    events.push_str("data: [DONE]\n\n");
    ([(header::CONTENT_TYPE, "text/event-stream")], events).into_response()
}

/// `text` in pieces of `n` characters, as a server streams it.
fn pieces(text: &str, n: usize) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    chars.chunks(n).map(|p| p.iter().collect()).collect()
}

/// One tool call streamed as vLLM's tool parsers stream it: the role, then the call's id,
/// type and name with empty arguments, then the arguments in pieces, then
/// `finish_reason: tool_calls`.
fn tool_call_stream(call: &ScriptedCall) -> Response {
    if call.written {
        return written_call_stream(call);
    }
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let id = format!(
        "chatcmpl-tool-{:08x}",
        CALLS.fetch_add(1, Ordering::Relaxed)
    );
    let mut body = sse_chunk(
        serde_json::json!({"role": "assistant", "content": ""}),
        None,
    );
    for word in call.saying.split_inclusive(' ') {
        body.push_str(&sse_chunk(serde_json::json!({ "content": word }), None));
    }
    body.push_str(&sse_chunk(
        serde_json::json!({"tool_calls": [{"index": 0, "id": id, "type": "function",
            "function": {"name": call.name, "arguments": ""}}]}),
        None,
    ));
    for piece in pieces(&call.arguments, 7) {
        body.push_str(&sse_chunk(
            serde_json::json!({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}),
            None,
        ));
    }
    body.push_str(&sse_chunk(serde_json::json!({}), Some("tool_calls")));
    sse_response(body)
}

/// A call written as words after `saying`, streamed as content in pieces: what a vLLM
/// pythonic parser passes on when the reply does not start with `[`.
fn written_call_stream(call: &ScriptedCall) -> Response {
    let arguments: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(&call.arguments).unwrap_or_default();
    let python: Vec<String> = arguments
        .iter()
        .map(|(k, v)| {
            let literal = match v {
                serde_json::Value::Bool(true) => "True".to_owned(),
                serde_json::Value::Bool(false) => "False".to_owned(),
                serde_json::Value::Null => "None".to_owned(),
                other => other.to_string(),
            };
            format!("{k}={literal}")
        })
        .collect();
    let text = format!("{} [{}({})]", call.saying, call.name, python.join(", "));
    let body: String = pieces(&text, 5)
        .into_iter()
        .map(|piece| sse_chunk(serde_json::json!({ "content": piece }), None))
        .collect();
    sse_response(body)
}

#[derive(Deserialize)]
struct SpeechRequest {
    input: String,
    #[serde(default)]
    voice: Option<String>,
    #[serde(default)]
    response_format: Option<String>,
}

/// Voiced test signal for `text` at `rate`, in -1..1.
pub fn synthetic_speech(text: &str, rate: u32) -> Vec<f32> {
    let samples =
        text.chars().count() as u64 * u64::from(SPEECH_MS_PER_CHAR) * u64::from(rate) / 1000;
    (0..samples)
        .map(|i| {
            let t = i as f32 / rate as f32;
            let envelope = (std::f32::consts::PI * t * 4.0).sin().abs();
            let voice: f32 = (1..=6)
                .map(|h| {
                    (2.0 * std::f32::consts::PI * SPEECH_PITCH_HZ * h as f32 * t).sin() / h as f32
                })
                .sum();
            voice * envelope * 0.25
        })
        .collect()
}

async fn speech(
    State(s): State<InstantServers>,
    axum::Json(request): axum::Json<SpeechRequest>,
) -> Response {
    s.counts.tts.fetch_add(1, Ordering::Relaxed);
    s.voices
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(request.voice.clone());
    s.spoken
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(request.input.clone());
    let b = s.behaviour();
    if let Err(r) = gate(&b.tts).await {
        return r;
    }
    if request.input.trim().is_empty() {
        return (
            StatusCode::BAD_REQUEST,
            r#"{"error":{"message":"input is empty"}}"#,
        )
            .into_response();
    }
    let samples = synthetic_speech(&request.input, b.speech_rate);
    let (content_type, body) = match request.response_format.as_deref() {
        None | Some("pcm") => {
            let mut pcm = Vec::with_capacity(samples.len() * 2);
            grokcast_engines::audio::push_s16le(&mut pcm, &samples);
            ("audio/pcm", pcm)
        }
        Some("wav") => (
            "audio/wav",
            grokcast_engines::audio::wav_bytes(&samples, b.speech_rate),
        ),
        Some(other) => {
            let message = format!("response_format {other:?} is not pcm or wav");
            let body = serde_json::json!({ "error": { "message": message } });
            return (StatusCode::BAD_REQUEST, axum::Json(body)).into_response();
        }
    };
    // Streamed in 100 ms pieces, as a streaming TTS server would (a WAV header arrives in
    // the first).
    let pieces: Vec<Result<Bytes, std::io::Error>> = body
        .chunks(b.speech_rate as usize / 10 * 2)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    let mut response = Response::builder().header(header::CONTENT_TYPE, content_type);
    if b.speech_rate_header {
        response = response.header(SAMPLE_RATE_HEADER, b.speech_rate);
    }
    response
        .body(Body::from_stream(futures::stream::iter(pieces)))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn chat_status(rules: ChatRules, roles: &[&str]) -> (u16, serde_json::Value) {
        let servers = InstantServers::default();
        servers.set(|b| b.chat_rules = rules);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "http://{}/v1/chat/completions",
            listener.local_addr().unwrap()
        );
        tokio::spawn(servers.serve(listener));
        let messages: Vec<_> = roles
            .iter()
            .map(|r| serde_json::json!({"role": r, "content": "x"}))
            .collect();
        let response = reqwest::Client::new()
            .post(url)
            .json(&serde_json::json!({"model": "m", "messages": messages, "stream": true}))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or_default())
    }

    use grokcast_engines::llm::GEMMA3_ROLE_ORDER_ERROR;

    #[tokio::test]
    async fn gemma3_rules_refuse_a_greeting_first_as_vllm_does() {
        let (status, body) = chat_status(ChatRules::Gemma3, &["system", "assistant", "user"]).await;
        assert_eq!(status, 400);
        assert_eq!(
            body,
            serde_json::json!({"object": "error", "message": GEMMA3_ROLE_ORDER_ERROR,
                               "type": "BadRequestError", "param": null, "code": 400})
        );
        let (status, _) = chat_status(ChatRules::Gemma3, &["system", "user", "user"]).await;
        assert_eq!(status, 400);
        let (status, _) =
            chat_status(ChatRules::Gemma3, &["system", "user", "assistant", "user"]).await;
        assert_eq!(status, 200);
    }

    #[tokio::test]
    async fn openai_rules_take_any_order() {
        let (status, _) = chat_status(ChatRules::OpenAi, &["system", "assistant", "user"]).await;
        assert_eq!(status, 200);
        let (status, _) = chat_status(ChatRules::OpenAi, &["user", "narrator"]).await;
        assert_eq!(status, 400, "an unknown role is refused by every family");
    }

    #[test]
    fn gemma3_rules_take_tool_exchanges_outside_the_order_and_refuse_null_content() {
        let call = serde_json::json!({"role": "assistant", "content": "", "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "end_call", "arguments": "{}"}}]});
        let result = serde_json::json!({"role": "tool", "content": "{}", "tool_call_id": "c1"});
        let user = serde_json::json!({"role": "user", "content": "Bye"});
        let rules = ChatRules::Gemma3;
        assert_eq!(
            rules.refusal(&[user.clone(), call.clone(), result.clone()]),
            None
        );
        let mut null = call.clone();
        null["content"] = serde_json::Value::Null;
        assert!(
            rules
                .refusal(&[user.clone(), null, result.clone()])
                .unwrap()
                .contains("Invalid content type")
        );
        assert!(rules.refusal(&[user.clone(), call, result, user]).is_some());
    }
}
