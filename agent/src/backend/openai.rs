//! OpenAI-compatible HTTP backends: `/chat/completions` with SSE, `/audio/transcriptions`
//! (multipart WAV) and `/audio/speech` (streamed raw PCM or WAV). vLLM, faster-whisper servers,
//! OpenAI-compatible TTS servers and `grokcast-serve` all speak these.

use std::time::Duration;

use bytes::{Buf, BytesMut};
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use serde::Deserialize;

use grokcast_engines::server::SAMPLE_RATE_HEADER;

use super::speech_audio::{SpeechAudioError, SpeechDecoder};
use super::{
    AudioStream, BackendError, ChatMessage, Llm, ReplyPart, StageName, Stt, TokenStream, ToolCall,
    ToolSpecs, Tts, turn_end_from_logprobs,
};

/// An HTTP client for one stage.
#[derive(Clone)]
struct Endpoint {
    client: reqwest::Client,
    base: String,
    model: String,
    timeout: Duration,
    stage: StageName,
}

impl Endpoint {
    fn new(base: &str, model: &str, timeout: Duration, stage: StageName) -> Self {
        Self {
            client: reqwest::Client::new(),
            base: base.trim_end_matches('/').to_string(),
            model: model.to_string(),
            timeout,
            stage,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}/{path}", self.base)
    }

    fn transport(&self, e: reqwest::Error) -> BackendError {
        if e.is_timeout() {
            return BackendError::Timeout {
                stage: self.stage,
                after: self.timeout,
            };
        }
        BackendError::Transport {
            stage: self.stage,
            message: e.to_string(),
        }
    }

    /// Sends a request; the timeout covers everything up to the response headers.
    async fn send(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, BackendError> {
        let response = tokio::time::timeout(self.timeout, request.send())
            .await
            .map_err(|_| BackendError::Timeout {
                stage: self.stage,
                after: self.timeout,
            })?
            .map_err(|e| self.transport(e))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let body = response.text().await.unwrap_or_default();
        Err(BackendError::Status {
            stage: self.stage,
            status: status.as_u16(),
            body: body.chars().take(300).collect(),
        })
    }

    /// The body as a stream of byte chunks, each awaited with the stage timeout.
    fn body(
        &self,
        response: reqwest::Response,
    ) -> impl futures::Stream<Item = Result<bytes::Bytes, BackendError>> + Send + 'static {
        let this = self.clone();
        let mut body = response.bytes_stream();
        async_stream(move |tx| async move {
            loop {
                let next = tokio::time::timeout(this.timeout, body.next()).await;
                let item = match next {
                    Err(_) => Some(Err(BackendError::Timeout {
                        stage: this.stage,
                        after: this.timeout,
                    })),
                    Ok(None) => None,
                    Ok(Some(chunk)) => Some(chunk.map_err(|e| this.transport(e))),
                };
                let Some(item) = item else { break };
                let failed = item.is_err();
                if tx.send(item).await.is_err() || failed {
                    break;
                }
            }
        })
    }
}

/// A stream fed by a producer future through a small bounded channel; dropping the stream
/// ends the producer at its next send.
fn async_stream<T, F, Fut>(produce: F) -> impl futures::Stream<Item = T> + Send + 'static
where
    T: Send + 'static,
    F: FnOnce(tokio::sync::mpsc::Sender<T>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let producer = produce(tx);
    let task = tokio::spawn(producer);
    let abort = AbortOnDrop(task);
    futures::stream::unfold((rx, abort), |(mut rx, abort)| async move {
        rx.recv().await.map(|item| (item, (rx, abort)))
    })
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// `/audio/transcriptions`.
pub struct OpenAiStt {
    endpoint: Endpoint,
    language: String,
}

impl OpenAiStt {
    /// A client for `base` (e.g. `http://whisper:8000/v1`).
    pub fn new(base: &str, model: &str, language: &str, timeout: Duration) -> Self {
        Self {
            endpoint: Endpoint::new(base, model, timeout, StageName::Stt),
            language: language.into(),
        }
    }
}

/// 16-bit mono WAV bytes of 16 kHz audio.
pub fn wav_16k(audio: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(44 + audio.len() * 2);
    let data_len = (audio.len() * 2) as u32;
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + data_len).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&16_000u32.to_le_bytes());
    out.extend_from_slice(&32_000u32.to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&16u16.to_le_bytes());
    out.extend_from_slice(b"data");
    out.extend_from_slice(&data_len.to_le_bytes());
    for s in audio {
        out.extend_from_slice(&((s.clamp(-1.0, 1.0) * 32767.0) as i16).to_le_bytes());
    }
    out
}

#[derive(Deserialize)]
struct Transcription {
    text: String,
}

impl Stt for OpenAiStt {
    fn transcribe(&self, audio: Vec<f32>) -> BoxFuture<'_, Result<String, BackendError>> {
        async move {
            let e = &self.endpoint;
            let part = reqwest::multipart::Part::bytes(wav_16k(&audio))
                .file_name("audio.wav")
                .mime_str("audio/wav")
                .map_err(|err| BackendError::Protocol {
                    stage: e.stage,
                    message: err.to_string(),
                })?;
            let form = reqwest::multipart::Form::new()
                .part("file", part)
                .text("model", e.model.clone())
                .text("language", self.language.clone())
                .text("response_format", "json");
            let response = e
                .send(e.client.post(e.url("audio/transcriptions")).multipart(form))
                .await?;
            let body = tokio::time::timeout(e.timeout, response.bytes())
                .await
                .map_err(|_| BackendError::Timeout {
                    stage: e.stage,
                    after: e.timeout,
                })?
                .map_err(|err| e.transport(err))?;
            let parsed: Transcription =
                serde_json::from_slice(&body).map_err(|err| BackendError::Protocol {
                    stage: e.stage,
                    message: format!("transcription JSON: {err}"),
                })?;
            Ok(parsed.text.trim().to_string())
        }
        .boxed()
    }
}

/// `/chat/completions` with `stream: true`.
pub struct OpenAiLlm {
    endpoint: Endpoint,
    temperature: f32,
    max_tokens: u32,
}

impl OpenAiLlm {
    /// A client for `base` (e.g. `http://vllm:8000/v1`).
    pub fn new(
        base: &str,
        model: &str,
        temperature: f32,
        max_tokens: u32,
        timeout: Duration,
    ) -> Self {
        Self {
            endpoint: Endpoint::new(base, model, timeout, StageName::Llm),
            temperature,
            max_tokens,
        }
    }
}

#[derive(Deserialize)]
struct ChatChunk {
    choices: Vec<ChatChoice>,
}

#[derive(Deserialize)]
struct ChatChoice {
    #[serde(default)]
    delta: ChatDelta,
}

#[derive(Deserialize, Default)]
struct ChatDelta {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    tool_calls: Option<Vec<ToolCallDelta>>,
}

/// A piece of a streamed tool call: the first names the call (`id`, `function.name`), the
/// rest add to its `arguments`; `index` says which call of the reply it belongs to.
#[derive(Deserialize)]
struct ToolCallDelta {
    #[serde(default)]
    index: usize,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    function: Option<FunctionDelta>,
}

#[derive(Deserialize)]
struct FunctionDelta {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    arguments: Option<String>,
}

/// Tool calls put together from their streamed pieces, in the order of their index.
#[derive(Default)]
struct ToolCallAssembler {
    calls: std::collections::BTreeMap<usize, (String, String, String)>,
}

impl ToolCallAssembler {
    fn push(&mut self, delta: ToolCallDelta) {
        let (id, name, arguments) = self.calls.entry(delta.index).or_default();
        if let Some(more) = delta.id.filter(|i| !i.is_empty()) {
            *id = more;
        }
        if let Some(function) = delta.function {
            // Servers send the name whole in one piece (vLLM) or, rarely, in several.
            if let Some(more) = function.name {
                name.push_str(&more);
            }
            if let Some(more) = function.arguments {
                arguments.push_str(&more);
            }
        }
    }

    /// The calls, whole; one the server gave no id gets one from its place.
    fn finish(self) -> Vec<ToolCall> {
        self.calls
            .into_iter()
            .map(|(index, (id, name, arguments))| {
                let id = if id.is_empty() {
                    format!("call-{index}")
                } else {
                    id
                };
                ToolCall::new(id, name, arguments)
            })
            .collect()
    }
}

/// Splits an SSE byte stream into `data:` payloads.
#[derive(Default)]
pub struct SseDecoder {
    buffer: BytesMut,
}

impl SseDecoder {
    /// Adds bytes; returns complete `data:` payloads.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        self.buffer.extend_from_slice(bytes);
        let mut out = Vec::new();
        while let Some(at) = self.buffer.iter().position(|b| *b == b'\n') {
            let line = self.buffer.split_to(at + 1);
            let line = String::from_utf8_lossy(&line);
            let line = line.trim_end_matches(['\n', '\r']);
            if let Some(data) = line.strip_prefix("data:") {
                out.push(data.trim_start().to_string());
            }
        }
        out
    }
}

impl Llm for OpenAiLlm {
    fn reply(
        &self,
        messages: Vec<ChatMessage>,
        tools: Option<ToolSpecs>,
    ) -> BoxFuture<'_, Result<TokenStream, BackendError>> {
        async move {
            let e = self.endpoint.clone();
            let mut body = serde_json::json!({
                "model": e.model,
                "messages": messages,
                "stream": true,
                "temperature": self.temperature,
                "max_tokens": self.max_tokens,
            });
            let offered = tools.is_some();
            if let Some(tools) = tools {
                // vLLM needs `--enable-auto-tool-choice` and a tool-call parser for "auto".
                body["tools"] = (*tools).clone();
                body["tool_choice"] = "auto".into();
            }
            let response = e
                .send(e.client.post(e.url("chat/completions")).json(&body))
                .await?;
            let mut bytes = Box::pin(e.body(response));
            let stage = e.stage;
            let tokens = async_stream(move |tx| async move {
                let mut sse = SseDecoder::default();
                // Tool calls are handed on whole, once the reply is over.
                let mut calls = ToolCallAssembler::default();
                // Calls the model wrote as words are never spoken (see `pythonic`).
                let mut guard = super::pythonic::CallGuard::new(offered);
                let mut done = false;
                'read: while let Some(chunk) = bytes.next().await {
                    let chunk = match chunk {
                        Ok(c) => c,
                        Err(err) => {
                            let _ = tx.send(Err(err)).await;
                            return;
                        }
                    };
                    for data in sse.push(chunk.chunk()) {
                        if data == "[DONE]" {
                            done = true;
                            break 'read;
                        }
                        let delta = match serde_json::from_str::<ChatChunk>(&data) {
                            Ok(c) => c.choices.into_iter().next().map(|c| c.delta),
                            Err(err) => {
                                let _ = tx
                                    .send(Err(BackendError::Protocol {
                                        stage,
                                        message: format!("SSE chunk: {err}"),
                                    }))
                                    .await;
                                return;
                            }
                        };
                        let Some(delta) = delta else { continue };
                        for piece in delta.tool_calls.into_iter().flatten() {
                            calls.push(piece);
                        }
                        let speak = delta.content.map(|t| guard.push(&t)).unwrap_or_default();
                        if !speak.is_empty() && tx.send(Ok(ReplyPart::Text(speak))).await.is_err() {
                            return;
                        }
                    }
                }
                let (rest, written) = guard.finish();
                if !rest.is_empty() && tx.send(Ok(ReplyPart::Text(rest))).await.is_err() {
                    return;
                }
                let mut calls = calls.finish();
                calls.extend(written);
                if !done && !calls.is_empty() {
                    // Cut off: the last call's arguments may be cut too. Acting on half a
                    // call is worse than not acting.
                    let _ = tx
                        .send(Err(BackendError::Protocol {
                            stage,
                            message: "the reply ended before [DONE]; its tool calls are not run"
                                .into(),
                        }))
                        .await;
                    return;
                }
                for call in calls {
                    if tx.send(Ok(ReplyPart::Call(call))).await.is_err() {
                        return;
                    }
                }
            });
            Ok(Box::pin(tokens) as TokenStream)
        }
        .boxed()
    }

    fn turn_end_probability(
        &self,
        messages: Vec<ChatMessage>,
    ) -> BoxFuture<'_, Result<f32, BackendError>> {
        self.judge(messages).boxed()
    }
}

/// A non-streamed chat completion, for its logprobs.
#[derive(Deserialize)]
struct JudgedCompletion {
    choices: Vec<JudgedChoice>,
}

#[derive(Deserialize)]
struct JudgedChoice {
    #[serde(default)]
    logprobs: Option<ChoiceLogprobs>,
}

#[derive(Deserialize)]
struct ChoiceLogprobs {
    #[serde(default)]
    content: Vec<TokenLogprobs>,
}

#[derive(Deserialize)]
struct TokenLogprobs {
    token: String,
    logprob: f32,
    #[serde(default)]
    top_logprobs: Vec<TopLogprob>,
}

#[derive(Deserialize)]
struct TopLogprob {
    token: String,
    logprob: f32,
}

impl OpenAiLlm {
    /// The turn-end judgement as vLLM's chat API asks for it: the template renders the
    /// conversation with the caller's last message left open (`continue_final_message`),
    /// and one token's top 20 logprobs say how likely the template's end-of-turn token
    /// comes next. Special tokens are kept in the logprobs' text so the token is named.
    async fn judge(&self, messages: Vec<ChatMessage>) -> Result<f32, BackendError> {
        let e = &self.endpoint;
        let body = serde_json::json!({
            "model": e.model,
            "messages": messages,
            "max_tokens": 1,
            "temperature": 0,
            "logprobs": true,
            "top_logprobs": 20,
            "add_generation_prompt": false,
            "continue_final_message": true,
            "skip_special_tokens": false,
        });
        let response = e
            .send(e.client.post(e.url("chat/completions")).json(&body))
            .await?;
        let parsed: JudgedCompletion = tokio::time::timeout(e.timeout, response.json())
            .await
            .map_err(|_| BackendError::Timeout {
                stage: e.stage,
                after: e.timeout,
            })?
            .map_err(|err| BackendError::Protocol {
                stage: e.stage,
                message: format!("chat completion with logprobs: {err}"),
            })?;
        let place = parsed
            .choices
            .into_iter()
            .next()
            .and_then(|c| c.logprobs)
            .and_then(|l| l.content.into_iter().next())
            .ok_or_else(|| BackendError::Protocol {
                stage: e.stage,
                message: "the LLM server returned no logprobs (a vLLM-compatible server returns \
                          them for logprobs: true)"
                    .into(),
            })?;
        let top = place
            .top_logprobs
            .iter()
            .map(|t| (t.token.as_str(), t.logprob));
        // The chosen token is among the top ones when the server lists any; otherwise it is
        // the only evidence.
        Ok(if place.top_logprobs.is_empty() {
            turn_end_from_logprobs([(place.token.as_str(), place.logprob)])
        } else {
            turn_end_from_logprobs(top)
        })
    }
}

/// The `response_format` the agent asks speech servers for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResponseFormat {
    /// Raw 16-bit little-endian mono, streamed (OpenAI's `pcm`: 24 kHz unless the server
    /// says otherwise in `x-sample-rate`).
    #[default]
    Pcm,
    /// A WAV file, whose header gives the rate (for servers that stream only WAV).
    Wav,
}

impl ResponseFormat {
    /// The value sent as `response_format`.
    pub fn as_str(self) -> &'static str {
        match self {
            ResponseFormat::Pcm => "pcm",
            ResponseFormat::Wav => "wav",
        }
    }
}

impl std::str::FromStr for ResponseFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "pcm" => Ok(ResponseFormat::Pcm),
            "wav" => Ok(ResponseFormat::Wav),
            other => Err(format!("{other:?} is not pcm or wav")),
        }
    }
}

/// `/audio/speech`, streamed; each response's audio is taken at the rate the response gives
/// (see [`super::speech_audio`]).
pub struct OpenAiTts {
    endpoint: Endpoint,
    voice: String,
    format: ResponseFormat,
    pcm_rate: u32,
}

impl OpenAiTts {
    /// A client for `base` asking for `format`; `pcm_rate` is assumed for raw PCM whose
    /// response gives no rate.
    pub fn new(
        base: &str,
        model: &str,
        voice: &str,
        format: ResponseFormat,
        pcm_rate: u32,
        timeout: Duration,
    ) -> Self {
        Self {
            endpoint: Endpoint::new(base, model, timeout, StageName::Tts),
            voice: voice.into(),
            format,
            pcm_rate,
        }
    }
}

/// The rate a speech response's `x-sample-rate` header gives, if it has one.
fn header_rate(
    response: &reqwest::Response,
    stage: StageName,
) -> Result<Option<u32>, BackendError> {
    let Some(value) = response.headers().get(SAMPLE_RATE_HEADER) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse::<u32>().ok())
        .map(Some)
        .ok_or_else(|| BackendError::Protocol {
            stage,
            message: format!("{SAMPLE_RATE_HEADER} {value:?} is not a rate in Hz"),
        })
}

impl Tts for OpenAiTts {
    fn synthesize(
        &self,
        text: String,
        voice: Option<String>,
    ) -> BoxFuture<'_, Result<AudioStream, BackendError>> {
        async move {
            let e = self.endpoint.clone();
            let voice = voice.as_deref().unwrap_or(&self.voice);
            let body = serde_json::json!({
                "model": e.model, "input": text, "voice": voice,
                "response_format": self.format.as_str(),
            });
            let response = e
                .send(e.client.post(e.url("audio/speech")).json(&body))
                .await?;
            let stage = e.stage;
            let protocol = move |err: SpeechAudioError| BackendError::Protocol {
                stage,
                message: err.to_string(),
            };
            let mut decoder = SpeechDecoder::new(header_rate(&response, stage)?, self.pcm_rate);
            let mut bytes = Box::pin(e.body(response).fuse());
            // A WAV body gives its rate in its first bytes: read until the rate is known, so
            // the stream can say it (the caller waits for this audio anyway).
            let mut first = Vec::new();
            let mut ended = false;
            while decoder.sample_rate().is_none() {
                match bytes.next().await {
                    Some(chunk) => decoder.push(&chunk?, &mut first).map_err(protocol)?,
                    None => {
                        decoder.finish(&mut first).map_err(protocol)?;
                        ended = true;
                    }
                }
            }
            let sample_rate = decoder.sample_rate().unwrap_or(self.pcm_rate);
            let chunks = async_stream(move |tx| async move {
                if !first.is_empty() && tx.send(Ok(first)).await.is_err() {
                    return;
                }
                if ended {
                    return;
                }
                while let Some(chunk) = bytes.next().await {
                    let mut samples = Vec::new();
                    let decoded =
                        chunk.and_then(|c| decoder.push(&c, &mut samples).map_err(protocol));
                    match decoded {
                        Ok(()) if samples.is_empty() => {}
                        Ok(()) => {
                            if tx.send(Ok(samples)).await.is_err() {
                                return;
                            }
                        }
                        Err(err) => {
                            let _ = tx.send(Err(err)).await;
                            return;
                        }
                    }
                }
                let mut tail = Vec::new();
                match decoder.finish(&mut tail) {
                    Ok(()) if tail.is_empty() => {}
                    Ok(()) => {
                        let _ = tx.send(Ok(tail)).await;
                    }
                    Err(err) => {
                        let _ = tx.send(Err(protocol(err))).await;
                    }
                }
            });
            Ok(AudioStream {
                sample_rate,
                chunks: Box::pin(chunks),
            })
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_payloads_survive_arbitrary_splits() {
        let stream = b"data: {\"a\":1}\n\n: comment\ndata:{\"b\":2}\r\n\ndata: [DONE]\n\n";
        for split in 1..stream.len() {
            let mut d = SseDecoder::default();
            let mut out = d.push(&stream[..split]);
            out.extend(d.push(&stream[split..]));
            assert_eq!(
                out,
                vec!["{\"a\":1}", "{\"b\":2}", "[DONE]"],
                "split at {split}"
            );
        }
    }

    #[test]
    fn the_turn_ends_with_any_template_end_token_or_a_sentence_end_and_nothing_else() {
        let p = turn_end_from_logprobs([
            ("<end_of_turn>", 0.3f32.ln()),
            (" and", 0.4f32.ln()),
            (".", 0.1f32.ln()),
            (" <|im_end|>", 0.05f32.ln()),
            (",", 0.05f32.ln()),
        ]);
        assert!((p - 0.45).abs() < 1e-5, "{p}");
        // Nothing that ends it among the top: as unlikely as can be said.
        assert_eq!(turn_end_from_logprobs([(" with", -0.1), (" a", -2.0)]), 0.0);
        // A server whose logprobs sum past 1 (rounding) still gives a probability.
        assert_eq!(turn_end_from_logprobs([("<eos>", 0.0), (".", 0.0)]), 1.0);
    }

    #[test]
    fn wav_header_describes_16k_mono_pcm() {
        let wav = wav_16k(&[0.0, 0.5, -0.5]);
        let reader = hound::WavReader::new(std::io::Cursor::new(wav)).unwrap();
        let spec = reader.spec();
        assert_eq!(
            (spec.sample_rate, spec.channels, spec.bits_per_sample),
            (16000, 1, 16)
        );
        let samples: Vec<i16> = reader.into_samples::<i16>().map(Result::unwrap).collect();
        assert_eq!(samples, vec![0, 16383, -16383]);
    }
}
