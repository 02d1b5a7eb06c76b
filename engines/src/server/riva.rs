//! NVIDIA Riva's speech recognition over gRPC (`nvidia.riva.asr.RivaSpeechRecognition`) on
//! Whisper: `StreamingRecognize` decodes the utterance while it is spoken
//! ([`crate::stt_stream`]), `Recognize` transcribes a whole recording. It shares the
//! transcription lane (queue and workers) with `/v1/audio/transcriptions`.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use futures::Stream;
use futures::future::BoxFuture;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};

use super::{ApiError, AppState};
use crate::riva::asr::riva_speech_recognition_config_response::Config as ModelConfig;
use crate::riva::asr::streaming_recognize_request::StreamingRequest;
use crate::riva::asr::{
    RecognitionConfig, RecognizeRequest, RecognizeResponse, RivaSpeechRecognitionConfigRequest,
    RivaSpeechRecognitionConfigResponse, SpeechRecognitionAlternative, SpeechRecognitionResult,
    StreamingRecognitionResult, StreamingRecognizeRequest, StreamingRecognizeResponse, WordInfo,
};
use crate::riva::{AudioEncoding, RivaSpeechRecognition, RivaSpeechRecognitionServer};
use crate::stt::{SttError, Transcript, WhisperStt};
use crate::stt_stream::{self, LineEncoding, Policy, Utterance};

/// The route label of streams in the server's metrics.
const STREAM_ROUTE: &str = "/nvidia.riva.asr.RivaSpeechRecognition/StreamingRecognize";
/// How long a new stream may take to send its configuration.
const FIRST_MESSAGE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// The route label of one-shot recognitions.
const RECOGNIZE_ROUTE: &str = "/nvidia.riva.asr.RivaSpeechRecognition/Recognize";

/// The Riva service on this server's Whisper.
#[derive(Debug, Clone)]
pub struct RivaWhisper {
    state: Arc<AppState>,
    policy: Policy,
}

impl RivaWhisper {
    /// The service, deciding when streams decode by `policy`.
    pub fn new(state: Arc<AppState>, policy: Policy) -> Self {
        Self { state, policy }
    }

    /// The tonic service to add to a gRPC server.
    pub fn into_server(self) -> RivaSpeechRecognitionServer<Self> {
        RivaSpeechRecognitionServer::new(self)
    }

    fn whisper(&self) -> Result<Arc<WhisperStt>, Status> {
        self.state
            .engines()
            .map_err(|e| status_of(&e))?
            .stt
            .clone()
            .ok_or_else(|| Status::unimplemented("this server does not transcribe (role)"))
    }

    /// Checks a stream's or request's configuration: the audio it announces and the model
    /// and language it asks for.
    fn check(
        &self,
        config: Option<&RecognitionConfig>,
        whisper: &WhisperStt,
    ) -> Result<(Utterance, Option<String>), Status> {
        let config = config.ok_or_else(|| Status::invalid_argument("the config is missing"))?;
        let encoding = match AudioEncoding::try_from(config.encoding) {
            Ok(AudioEncoding::LinearPcm) => LineEncoding::Linear16,
            Ok(AudioEncoding::Mulaw) => LineEncoding::MuLaw,
            _ => {
                return Err(Status::invalid_argument(format!(
                    "encoding {} is not supported: send LINEAR_PCM or MULAW",
                    config.encoding
                )));
            }
        };
        if config.audio_channel_count > 1 {
            return Err(Status::invalid_argument(format!(
                "audio_channel_count {} is not supported: send mono audio",
                config.audio_channel_count
            )));
        }
        let served = &self.state.config.stt_models;
        if !config.model.is_empty() && !served.contains(&config.model) {
            return Err(Status::invalid_argument(format!(
                "model {:?} is not served here; this server serves {}",
                config.model,
                served.join(", ")
            )));
        }
        // BCP-47 `en-US` names the language Whisper knows as `en`.
        let language = config
            .language_code
            .split(['-', '_'])
            .next()
            .map(str::to_ascii_lowercase)
            .filter(|l| !l.is_empty());
        whisper
            .language(language.as_deref())
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let utterance = Utterance::new(encoding, i64::from(config.sample_rate_hertz))
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        Ok((utterance, language))
    }

    fn count(&self, route: &str, result: &Result<(), Status>, started: Instant) {
        let code = match result {
            Ok(()) => "0".to_owned(),
            Err(status) => (status.code() as i32).to_string(),
        };
        let metrics = self.state.metrics();
        metrics
            .requests_total
            .with_label_values(&[route, &code])
            .inc();
        metrics
            .request_seconds
            .with_label_values(&[route, &code])
            .observe(started.elapsed().as_secs_f64());
    }
}

/// A gRPC status for an error the HTTP API would answer with.
fn status_of(error: &ApiError) -> Status {
    match error.status.as_u16() {
        503 => Status::unavailable(error.message.clone()),
        400 => Status::invalid_argument(error.message.clone()),
        413 => Status::resource_exhausted(error.message.clone()),
        _ => Status::internal(error.message.clone()),
    }
}

/// One transcription through the transcription lane, stopped early once `cancel` is set.
fn decode(
    state: Arc<AppState>,
    whisper: Arc<WhisperStt>,
    pcm16k: Vec<f32>,
    language: Option<String>,
    cancel: Arc<AtomicBool>,
) -> BoxFuture<'static, Result<Transcript, Status>> {
    Box::pin(async move {
        let admission = state
            .admit(&state.stt_lane)
            .await
            .map_err(|e| status_of(&e))?;
        tokio::task::spawn_blocking(move || {
            let _admission = admission;
            whisper.transcribe_words(&pcm16k, language.as_deref(), &cancel)
        })
        .await
        .map_err(|e| Status::internal(format!("the transcription task failed: {e}")))?
        .map_err(|e| match e {
            SttError::Language(_) => Status::invalid_argument(e.to_string()),
            SttError::Cancelled => Status::cancelled(e.to_string()),
            other => Status::internal(other.to_string()),
        })
    })
}

/// A stream's decode in progress. Dropping it stops the decode: its audio is stale, or the
/// client is gone.
struct Running {
    /// Samples of the utterance it decodes.
    upto: usize,
    text: BoxFuture<'static, Result<Transcript, Status>>,
    cancel: Arc<AtomicBool>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.cancel.store(true, Ordering::Relaxed);
    }
}

/// The one hypothesis of a result, with each word and Whisper's probability for it. Riva
/// sends words only in final results, and its confidences are roughly log-probabilities;
/// these are probabilities (0..1), in interim results too, where the agent reads them to
/// leave a guessed last word out of its end-of-turn judgement.
fn alternative(transcript: Transcript) -> Vec<SpeechRecognitionAlternative> {
    let words = transcript
        .words
        .into_iter()
        .map(|w| WordInfo {
            word: w.text,
            confidence: w.confidence,
        })
        .collect();
    vec![SpeechRecognitionAlternative {
        transcript: transcript.text,
        confidence: 0.0,
        words,
    }]
}

/// What woke a stream up.
enum Step {
    /// The client's next message, or none when it closed its side.
    Message(Option<StreamingRecognizeRequest>),
    /// The running decode finished.
    Decoded(Result<Transcript, Status>),
}

/// What one stream needs while it runs.
struct StreamTask {
    state: Arc<AppState>,
    whisper: Arc<WhisperStt>,
    policy: Policy,
    language: Option<String>,
    interim: bool,
    utterance: Utterance,
    responses: mpsc::Sender<Result<StreamingRecognizeResponse, Status>>,
}

impl StreamTask {
    /// Reads audio and decodes it until the client closes its side, then sends the final
    /// result. An error ends this stream only.
    async fn run(
        mut self,
        mut requests: Streaming<StreamingRecognizeRequest>,
    ) -> Result<(), Status> {
        let max = self.state.config.max_audio_seconds;
        let mut running: Option<Running> = None;
        // Samples the last decode started took, whether or not it finished: a decode the
        // lane refused is not retried until more audio or a pause calls for one.
        let mut attempted = 0usize;
        // The latest finished decode: samples it took, its transcript.
        let mut latest: Option<(usize, Transcript)> = None;
        let mut input_open = true;
        let mut closed_at = None;
        loop {
            let step = tokio::select! {
                message = requests.message(), if input_open => Step::Message(message?),
                text = async {
                    match running.as_mut() {
                        Some(r) => (&mut r.text).await,
                        None => std::future::pending().await,
                    }
                }, if running.is_some() => Step::Decoded(text),
            };
            match step {
                Step::Message(Some(StreamingRecognizeRequest {
                    streaming_request: Some(StreamingRequest::AudioContent(bytes)),
                })) => {
                    self.utterance.push(&bytes);
                    if self.utterance.duration().as_secs_f32() > max {
                        return Err(Status::out_of_range(format!(
                            "the stream's audio passed {max} s, the most this server transcribes"
                        )));
                    }
                }
                Step::Message(Some(StreamingRecognizeRequest {
                    streaming_request: Some(StreamingRequest::StreamingConfig(_)),
                })) => {
                    return Err(Status::invalid_argument(
                        "streaming_config may only be the first message",
                    ));
                }
                Step::Message(Some(StreamingRecognizeRequest {
                    streaming_request: None,
                })) => {
                    return Err(Status::invalid_argument(
                        "a message carries neither streaming_config nor audio_content",
                    ));
                }
                Step::Message(None) => {
                    input_open = false;
                    closed_at = Some(Instant::now());
                }
                Step::Decoded(text) => {
                    let Some(took) = running.take().map(|r| r.upto) else {
                        continue;
                    };
                    let text = match text {
                        Ok(text) => text,
                        // A full lane refuses an interim decode: the stream goes on without
                        // that interim result (it decodes again after more audio or a pause,
                        // and at the end); only the final's refusal ends the stream.
                        Err(status) if input_open && status.code() == tonic::Code::Unavailable => {
                            continue;
                        }
                        Err(status) => return Err(status),
                    };
                    if self.interim && input_open && !text.text.is_empty() {
                        let previous = latest.as_ref().map_or("", |(_, t)| t.text.as_str());
                        let result = StreamingRecognitionResult {
                            stability: stt_stream::stability(previous, &text.text),
                            alternatives: alternative(text.clone()),
                            is_final: false,
                            channel_tag: 1,
                            audio_processed: self.utterance.duration_of(took).as_secs_f32(),
                        };
                        self.send(result).await?;
                    }
                    latest = Some((took, text));
                }
            }
            let decoded = latest.as_ref().map_or(0, |(took, _)| *took);
            if input_open {
                match &running {
                    // The caller paused after voice the running decode does not have: that
                    // decode is stale, and the pause may end the turn, so start over now.
                    Some(r) if self.policy.should_preempt(&self.utterance, r.upto) => {
                        running = Some(self.start(&mut attempted));
                    }
                    Some(_) => {}
                    None if self.policy.should_decode(&self.utterance, attempted) => {
                        running = Some(self.start(&mut attempted));
                    }
                    None => {}
                }
                continue;
            }
            // The client is done: the latest decode is final if it heard every voiced frame;
            // otherwise wait for one running that will have, or decode everything now. Audio
            // never decoded is decoded, even if no frame of it seemed voiced.
            let heard = latest.is_some() || self.utterance.is_empty();
            if heard && stt_stream::heard_all(&self.utterance, decoded) {
                // A decode still running (of silence, or a step) is not needed: stop it.
                drop(running.take());
                let text = latest.map(|(_, t)| t).unwrap_or_default();
                let result = StreamingRecognitionResult {
                    alternatives: alternative(text),
                    is_final: true,
                    stability: 1.0,
                    channel_tag: 1,
                    audio_processed: self.utterance.duration().as_secs_f32(),
                };
                self.send(result).await?;
                if let Some(closed) = closed_at {
                    self.state
                        .metrics()
                        .first_output_seconds
                        .with_label_values(&[STREAM_ROUTE])
                        .observe(closed.elapsed().as_secs_f64());
                }
                return Ok(());
            }
            if !running
                .as_ref()
                .is_some_and(|r| stt_stream::heard_all(&self.utterance, r.upto))
            {
                running = Some(self.start(&mut attempted));
            }
        }
    }

    /// Starts decoding everything heard so far, noting how much in `attempted`.
    fn start(&self, attempted: &mut usize) -> Running {
        let upto = self.utterance.decode_end();
        *attempted = upto;
        let cancel = Arc::new(AtomicBool::new(false));
        let text = decode(
            Arc::clone(&self.state),
            Arc::clone(&self.whisper),
            self.utterance.pcm16k(upto),
            self.language.clone(),
            Arc::clone(&cancel),
        );
        Running { upto, text, cancel }
    }

    async fn send(&self, result: StreamingRecognitionResult) -> Result<(), Status> {
        self.responses
            .send(Ok(StreamingRecognizeResponse {
                results: vec![result],
            }))
            .await
            .map_err(|_| Status::cancelled("the client went away"))
    }
}

/// Responses of one stream.
type ResponseStream =
    Pin<Box<dyn Stream<Item = Result<StreamingRecognizeResponse, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl RivaSpeechRecognition for RivaWhisper {
    async fn recognize(
        &self,
        request: Request<RecognizeRequest>,
    ) -> Result<Response<RecognizeResponse>, Status> {
        let started = Instant::now();
        let result = async {
            let request = request.into_inner();
            let whisper = self.whisper()?;
            let (mut utterance, language) = self.check(request.config.as_ref(), &whisper)?;
            utterance.push(&request.audio);
            if utterance.duration().as_secs_f32() > self.state.config.max_audio_seconds {
                return Err(Status::out_of_range(format!(
                    "the audio is {:.1} s long; this server transcribes at most {} s",
                    utterance.duration().as_secs_f32(),
                    self.state.config.max_audio_seconds
                )));
            }
            let seconds = utterance.duration().as_secs_f32();
            let text = decode(
                Arc::clone(&self.state),
                whisper,
                utterance.pcm16k(utterance.len()),
                language,
                Arc::new(AtomicBool::new(false)),
            )
            .await?;
            Ok(RecognizeResponse {
                results: vec![SpeechRecognitionResult {
                    alternatives: alternative(text),
                    channel_tag: 1,
                    audio_processed: seconds,
                }],
            })
        }
        .await;
        self.count(
            RECOGNIZE_ROUTE,
            &result.as_ref().map(|_| ()).map_err(Clone::clone),
            started,
        );
        result.map(Response::new)
    }

    type StreamingRecognizeStream = ResponseStream;

    async fn streaming_recognize(
        &self,
        request: Request<Streaming<StreamingRecognizeRequest>>,
    ) -> Result<Response<Self::StreamingRecognizeStream>, Status> {
        let started = Instant::now();
        let mut requests = request.into_inner();
        let first = match tokio::time::timeout(FIRST_MESSAGE_WAIT, requests.message()).await {
            Ok(first) => first,
            Err(_) => Err(Status::deadline_exceeded(format!(
                "no streaming_config within {} s of opening the stream",
                FIRST_MESSAGE_WAIT.as_secs()
            ))),
        };
        let first = match first {
            Ok(first) => first,
            Err(status) => {
                self.count(STREAM_ROUTE, &Err(status.clone()), started);
                return Err(status);
            }
        };
        let config = match first {
            Some(StreamingRecognizeRequest {
                streaming_request: Some(StreamingRequest::StreamingConfig(config)),
            }) => config,
            Some(_) => {
                let status = Status::invalid_argument(
                    "the first message must carry streaming_config, not audio",
                );
                self.count(STREAM_ROUTE, &Err(status.clone()), started);
                return Err(status);
            }
            None => {
                let status = Status::invalid_argument("the stream ended before its config");
                self.count(STREAM_ROUTE, &Err(status.clone()), started);
                return Err(status);
            }
        };
        let checked = self
            .whisper()
            .and_then(|w| self.check(config.config.as_ref(), &w).map(|c| (w, c)));
        let (whisper, (utterance, language)) = match checked {
            Ok(c) => c,
            Err(status) => {
                self.count(STREAM_ROUTE, &Err(status.clone()), started);
                return Err(status);
            }
        };
        let (responses, rx) = mpsc::channel(8);
        let task = StreamTask {
            state: Arc::clone(&self.state),
            whisper,
            policy: self.policy,
            language,
            interim: config.interim_results,
            utterance,
            responses: responses.clone(),
        };
        let service = self.clone();
        tokio::spawn(async move {
            let result = task.run(requests).await;
            service.count(STREAM_ROUTE, &result, started);
            if let Err(status) = result {
                tracing::debug!(code = ?status.code(), message = status.message(), "stream ended with an error");
                // The client may be gone already; then nobody needs to hear why.
                let _ = responses.send(Err(status)).await;
            }
        });
        Ok(Response::new(Box::pin(crate::receiver_stream(rx))))
    }

    async fn get_riva_speech_recognition_config(
        &self,
        request: Request<RivaSpeechRecognitionConfigRequest>,
    ) -> Result<Response<RivaSpeechRecognitionConfigResponse>, Status> {
        let wanted = request.into_inner().model_name;
        let model_config = self
            .state
            .config
            .stt_models
            .iter()
            .filter(|m| wanted.is_empty() || **m == wanted)
            .map(|m| ModelConfig {
                model_name: m.clone(),
                parameters: HashMap::from([
                    ("type".to_owned(), "online".to_owned()),
                    ("sample_rate".to_owned(), "16000".to_owned()),
                    ("engine".to_owned(), "whisper.cpp".to_owned()),
                ]),
            })
            .collect();
        Ok(Response::new(RivaSpeechRecognitionConfigResponse {
            model_config,
        }))
    }
}

/// Serves the Riva service on `listener` (HTTP/2 without TLS, as in-cluster gRPC is) until
/// `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    policy: Policy,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    tonic::transport::Server::builder()
        .add_service(RivaWhisper::new(state, policy).into_server())
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}
