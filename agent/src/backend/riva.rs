//! Streaming speech to text over gRPC with NVIDIA Riva's `StreamingRecognize`: the caller's
//! audio goes to the STT pool while they speak, interim transcripts come back, and at the end
//! of the turn the final transcript needs only what the server has not decoded yet. Riva and
//! NIM ASR pools and `grokcast-serve --grpc-listen` answer the same client.
//!
//! One HTTP/2 connection per pod carries every call's streams. A stream that fails is the
//! turn's to handle: the call falls back to the batch request for that turn
//! ([`super::Stt`]), so a dead stream costs latency, never the caller's words.

use std::time::Duration;

use futures::StreamExt as _;
use grokcast_engines::audio;
use grokcast_engines::riva::asr::streaming_recognize_request::StreamingRequest;
use grokcast_engines::riva::asr::{
    RecognitionConfig, StreamingRecognitionConfig, StreamingRecognizeRequest,
};
use grokcast_engines::riva::{AudioEncoding, RivaSpeechRecognitionClient};
use tokio::sync::{mpsc, watch};
use tonic::transport::{Channel, Endpoint};

use super::{BackendError, Interim, StageName, StreamingStt, SttStream, sure_text};

/// Audio chunks a stream may hold unsent before it counts as broken (about 8 s of VAD
/// chunks): the server has stopped reading, and the turn will need the batch path.
const QUEUED_CHUNKS: usize = 256;

/// A Riva-protocol STT server.
#[derive(Debug, Clone)]
pub struct RivaStt {
    client: RivaSpeechRecognitionClient<Channel>,
    language: String,
}

impl RivaStt {
    /// A client of the server at `url` (`http://host:port`; connects on the first stream).
    /// `language` is an ISO code such as `en`, sent as the BCP-47 tag Riva selects models
    /// by. No model is named: the server picks its model for the language, which is what a
    /// Riva deployment with one model per language expects.
    pub fn new(url: &str, language: &str) -> Result<Self, String> {
        let endpoint = Endpoint::from_shared(url.to_owned())
            .map_err(|e| format!("stt.streamingUrl {url:?}: {e}"))?
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true)
            // A dead peer is found within seconds of a stream's start, not at the turn's
            // timeout. Only while streams are open: gRPC servers (Riva's among them) take
            // pings on an idle connection for abuse and close it.
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5));
        Ok(Self {
            client: RivaSpeechRecognitionClient::new(endpoint.connect_lazy()),
            language: bcp47(language),
        })
    }

    fn config(&self) -> StreamingRecognizeRequest {
        StreamingRecognizeRequest {
            streaming_request: Some(StreamingRequest::StreamingConfig(
                StreamingRecognitionConfig {
                    config: Some(RecognitionConfig {
                        encoding: AudioEncoding::LinearPcm as i32,
                        sample_rate_hertz: 16_000,
                        language_code: self.language.clone(),
                        max_alternatives: 1,
                        audio_channel_count: 1,
                        model: String::new(),
                    }),
                    interim_results: true,
                },
            )),
        }
    }
}

/// The BCP-47 tag Riva's models are named by for an ISO language code (`en` is `en-US`);
/// a code already carrying a region, or one without a usual region here, goes as it is.
fn bcp47(language: &str) -> String {
    let region = match language {
        "en" | "es" => "US",
        "de" => "DE",
        "fr" => "FR",
        "it" => "IT",
        "pt" => "BR",
        "ja" => "JP",
        "ko" => "KR",
        "zh" => "CN",
        "ru" => "RU",
        "hi" => "IN",
        "ar" => "AR",
        "nl" => "NL",
        _ => return language.to_owned(),
    };
    format!("{language}-{region}")
}

/// A gRPC status as the stage's error.
fn error(status: &tonic::Status) -> BackendError {
    use tonic::Code;
    let message = format!("{:?}: {}", status.code(), status.message());
    match status.code() {
        Code::Unavailable | Code::Cancelled | Code::Unknown | Code::Aborted => {
            BackendError::Transport {
                stage: StageName::Stt,
                message,
            }
        }
        _ => BackendError::Protocol {
            stage: StageName::Stt,
            message,
        },
    }
}

impl StreamingStt for RivaStt {
    fn open(&self) -> SttStream {
        let (audio_tx, audio_rx) = mpsc::channel::<Vec<f32>>(QUEUED_CHUNKS);
        let (interim_tx, interim_rx) = watch::channel(Interim::default());
        let mut client = self.client.clone();
        let first = self.config();
        let task = tokio::spawn(async move {
            let audio = grokcast_engines::receiver_stream(audio_rx).map(|samples| {
                let mut bytes = Vec::with_capacity(samples.len() * 2);
                audio::push_s16le(&mut bytes, &samples);
                StreamingRecognizeRequest {
                    streaming_request: Some(StreamingRequest::AudioContent(bytes)),
                }
            });
            let requests = futures::StreamExt::chain(futures::stream::iter([first]), audio);
            let mut responses = client
                .streaming_recognize(requests)
                .await
                .map_err(|s| error(&s))?
                .into_inner();
            // Riva may end several segments of one stream with final results; the turn's
            // transcript is all of them in order.
            let mut finals: Vec<String> = Vec::new();
            let mut heard = Duration::ZERO;
            while let Some(response) = responses.message().await.map_err(|s| error(&s))? {
                for result in response.results {
                    // Riva counts the audio processed from the stream's start.
                    if result.audio_processed.is_finite() && result.audio_processed > 0.0 {
                        heard = heard.max(Duration::from_secs_f32(result.audio_processed));
                    }
                    let Some(best) = result.alternatives.into_iter().next() else {
                        continue;
                    };
                    let text = best.transcript.trim().to_owned();
                    let (text, sure) = if result.is_final {
                        if !text.is_empty() {
                            finals.push(text);
                        }
                        (finals.join(" "), None)
                    } else {
                        // The latest interim after the finals before it.
                        let with = |latest: String| {
                            let mut so_far = finals.clone();
                            so_far.push(latest);
                            so_far.join(" ").trim().to_owned()
                        };
                        let words: Vec<(String, f32)> = best
                            .words
                            .into_iter()
                            .map(|w| (w.word, w.confidence))
                            .collect();
                        (with(text), sure_text(&words).map(with))
                    };
                    let _ = interim_tx.send(Interim { text, heard, sure });
                }
            }
            Ok(finals.join(" "))
        });
        SttStream::new(audio_tx, interim_rx, task)
    }
}

#[cfg(test)]
mod tests {
    use super::bcp47;

    #[test]
    fn languages_go_as_the_tags_riva_names_models_by() {
        assert_eq!(bcp47("en"), "en-US");
        assert_eq!(bcp47("de"), "de-DE");
        assert_eq!(bcp47("en-GB"), "en-GB");
        assert_eq!(bcp47("sw"), "sw");
    }
}
