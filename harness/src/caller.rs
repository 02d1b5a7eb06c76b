//! A caller that speaks Twilio's side of the protocol: it signs and posts the voice webhook
//! like Twilio, opens the Media Stream the TwiML names, streams caller audio in real time
//! (20 ms frames by an absolute clock, silence between utterances), plays the agent's audio
//! on a simulated phone (a playback queue that acknowledges marks when played and drops
//! audio on `clear`), records what the caller heard, and times every turn.
//!
//! Users point it at their VoiceAgents; the tests and the benchmark use it as the phone.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use futures::{SinkExt, StreamExt};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_tungstenite::Connector;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use grokcast_agent::codec;
use grokcast_agent::pacer::{FRAME, FRAME_BYTES};
use grokcast_agent::resample::StreamResampler;
use grokcast_agent::twilio::protocol::{MediaFormat, Outbound, StartMetadata};
use grokcast_agent::twilio::signature::RequestValidator;
use grokcast_agent::twilio::twiml::{self, Answer};

/// Why a call could not be placed or went wrong.
#[derive(Debug, thiserror::Error)]
pub enum CallerError {
    /// The webhook request failed.
    #[error("voice webhook {url}: {message}")]
    Webhook {
        /// The URL.
        url: String,
        /// What failed.
        message: String,
    },
    /// The WebSocket failed.
    #[error("media stream {url}: {message}")]
    Stream {
        /// The URL.
        url: String,
        /// What failed.
        message: String,
    },
    /// Caller audio could not be prepared.
    #[error("caller audio: {0}")]
    Audio(String),
    /// TLS trust for an `https://` agent could not be set up.
    #[error("TLS: {0}")]
    Tls(String),
}

/// How the simulated caller behaves.
#[derive(Debug, Clone)]
pub struct CallerOptions {
    /// The agent's base URL, e.g. `http://127.0.0.1:8080`; the webhook is `/twilio/voice`.
    pub agent_url: String,
    /// Auth token to sign requests with, as Twilio would; `None` sends no signature.
    pub auth_token: Option<String>,
    /// What the caller says, in order: 8 kHz mu-law.
    pub utterances: Vec<Arc<Vec<u8>>>,
    /// Speak each utterance this long after the agent's audio for the turn starts
    /// (an intentional barge-in) instead of waiting for the agent to finish.
    pub interrupt_after: Option<Duration>,
    /// Agent silence that means it finished talking.
    pub quiet_before_speaking: Duration,
    /// Longest wait for the agent to start or finish talking.
    pub reply_timeout: Duration,
    /// Send a malformed message this long after the stream starts.
    pub malformed_after: Option<Duration>,
    /// After the last reply, keep the line open (streaming silence) this long, or until the
    /// agent closes it, instead of hanging up.
    pub linger: Option<Duration>,
    /// Press this key this long after the stream starts.
    pub dtmf: Option<(Duration, char)>,
    /// Press this key when the script is done, as the caller starts to linger (so it needs
    /// `linger`): after the last utterance, while the agent answers it.
    pub dtmf_after_script: Option<char>,
    /// Call SID to use.
    pub call_sid: String,
    /// A PEM file of extra CA certificates to trust for an `https://` agent (and its
    /// `wss://` stream), on top of the system's roots: an agent behind an ingress whose
    /// certificate a private CA issued.
    pub ca_file: Option<PathBuf>,
    /// Twilio's REST API as this call sees it: the call is made known to the stand-in when
    /// its stream starts, and an update of it (a hang-up, or new TwiML such as a `<Dial>`)
    /// ends the stream at once, as Twilio does, and is reported in [`CallReport::update`].
    pub twilio: Option<crate::twilio_rest::TwilioRest>,
    /// Talk to the browser playground's socket with this token (Opus at 48 kHz, as the page
    /// does; [`crate::playground_caller`]) instead of placing a Twilio call.
    pub playground_token: Option<String>,
}

impl Default for CallerOptions {
    fn default() -> Self {
        Self {
            agent_url: "http://127.0.0.1:8080".into(),
            auth_token: None,
            utterances: Vec::new(),
            interrupt_after: None,
            quiet_before_speaking: Duration::from_millis(700),
            reply_timeout: Duration::from_secs(20),
            malformed_after: None,
            linger: None,
            dtmf: None,
            dtmf_after_script: None,
            call_sid: "CA00000000000000000000000000000001".into(),
            ca_file: None,
            twilio: None,
            playground_token: None,
        }
    }
}

/// One caller turn, as the caller experienced it.
#[derive(Debug, Clone, Default)]
pub struct TurnReport {
    /// Caller's last speech frame sent -> first agent frame received.
    pub latency: Option<Duration>,
    /// Agent frames received in reply.
    pub agent_frames: usize,
    /// Caller's speech start -> `clear` received (when the caller interrupted).
    pub clear_after_speech_start: Option<Duration>,
    /// Agent frames received after that `clear` while the caller was still speaking.
    pub frames_after_clear: usize,
}

/// What happened on the call.
#[derive(Debug, Clone, Default)]
pub struct CallReport {
    /// The call SID.
    pub call_sid: String,
    /// Set when the agent rejected the call (TwiML `<Reject reason>`).
    pub rejected: Option<String>,
    /// Agent frames before the caller first spoke (the greeting).
    pub greeting_frames: usize,
    /// One report per utterance.
    pub turns: Vec<TurnReport>,
    /// `clear` messages received.
    pub clears: usize,
    /// Marks the caller acknowledged.
    pub marks: Vec<String>,
    /// Agent frames that arrived after the playback buffer had run dry mid-segment.
    pub late_frames: usize,
    /// The agent closed the socket (rather than the caller hanging up).
    pub closed_by_agent: bool,
    /// Agent frames received after the caller's script ended (e.g. a goodbye).
    pub frames_after_script: usize,
    /// What the caller heard: 8 kHz mu-law, silence where nothing played.
    pub heard: Vec<u8>,
    /// What the caller sent: 8 kHz mu-law on the same clock.
    pub said: Vec<u8>,
    /// The REST update that ended the call's stream (with [`CallerOptions::twilio`]): the
    /// call hung up (`status`) or sent elsewhere (`twiml`).
    pub update: Option<crate::twilio_rest::Update>,
}

/// Reads a WAV file (any rate, mono or stereo) as caller audio.
pub fn wav_audio(path: &Path) -> Result<Vec<u8>, CallerError> {
    let bytes =
        std::fs::read(path).map_err(|e| CallerError::Audio(format!("{}: {e}", path.display())))?;
    wav_bytes_audio(&bytes)
}

/// Speaks `text` with espeak-ng (installed by scripts/install.sh) as caller audio.
pub fn espeak_audio(text: &str) -> Result<Vec<u8>, CallerError> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    // espeak-ng's --stdout WAV has no length in its header; a file gets a complete one.
    let path = std::env::temp_dir().join(format!(
        "grokcast-caller-{}-{}.wav",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let out = std::process::Command::new("espeak-ng")
        .args(["-s", "165", "-w"])
        .arg(&path)
        .args(["--", text])
        .output()
        .map_err(|e| {
            CallerError::Audio(format!(
                "cannot run espeak-ng (apt-get install espeak-ng): {e}"
            ))
        })?;
    let audio = if out.status.success() {
        wav_audio(&path)
    } else {
        Err(CallerError::Audio(format!(
            "espeak-ng failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )))
    };
    let _ = std::fs::remove_file(&path);
    audio
}

fn wav_bytes_audio(bytes: &[u8]) -> Result<Vec<u8>, CallerError> {
    let bad = |e: hound::Error| CallerError::Audio(format!("not a PCM WAV: {e}"));
    let reader = hound::WavReader::new(std::io::Cursor::new(bytes)).map_err(bad)?;
    let spec = reader.spec();
    let channels = usize::from(spec.channels.max(1));
    let samples: Vec<f32> = match spec.sample_format {
        hound::SampleFormat::Float => reader
            .into_samples::<f32>()
            .collect::<Result<_, _>>()
            .map_err(bad)?,
        hound::SampleFormat::Int => {
            let scale = (1i64 << (spec.bits_per_sample.max(1) - 1)) as f32;
            reader
                .into_samples::<i32>()
                .map(|s| s.map(|v| v as f32 / scale))
                .collect::<Result<_, _>>()
                .map_err(bad)?
        }
    };
    let mono: Vec<f32> = samples
        .chunks(channels)
        .map(|c| c.iter().sum::<f32>() / channels as f32)
        .collect();
    pcm_audio(mono, spec.sample_rate)
}

/// Mono samples in -1..1 at `rate` (a recording, or a TTS voice's output) as caller audio:
/// 8 kHz mu-law with leading and trailing silence trimmed.
pub fn pcm_audio(mono: Vec<f32>, rate: u32) -> Result<Vec<u8>, CallerError> {
    let pcm8k = if rate == 8000 {
        mono
    } else {
        let mut r =
            StreamResampler::new(rate, 8000).map_err(|e| CallerError::Audio(e.to_string()))?;
        let mut out = Vec::with_capacity(mono.len() * 8000 / rate.max(1) as usize + 400);
        r.push(&mono, &mut |s| out.extend_from_slice(s))
            .map_err(|e| CallerError::Audio(e.to_string()))?;
        r.flush(&mut |s| out.extend_from_slice(s))
            .map_err(|e| CallerError::Audio(e.to_string()))?;
        out
    };
    // Trim leading and trailing silence so "speech start/stop" means the voice itself.
    let loud = |s: &f32| s.abs() > 0.02;
    let first = pcm8k.iter().position(loud).unwrap_or(0);
    let last = pcm8k.iter().rposition(loud).map_or(first, |i| i + 1);
    let mut mulaw = vec![0u8; last - first];
    codec::encode_into(&pcm8k[first..last], &mut mulaw);
    Ok(mulaw)
}

/// Writes 8 kHz mu-law tracks as a 16-bit WAV, one channel per track (shorter ones padded).
pub fn write_wav(path: &Path, tracks: &[&[u8]]) -> Result<(), CallerError> {
    let channels = tracks.len().max(1) as u16;
    let spec = hound::WavSpec {
        channels,
        sample_rate: 8000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let err = |e: hound::Error| CallerError::Audio(format!("{}: {e}", path.display()));
    let mut w = hound::WavWriter::create(path, spec).map_err(err)?;
    let len = tracks.iter().map(|t| t.len()).max().unwrap_or(0);
    for i in 0..len {
        for track in tracks {
            w.write_sample(track.get(i).map_or(0, |b| codec::decode_sample(*b)))
                .map_err(err)?;
        }
    }
    w.finalize().map_err(err)
}

/// An error with its causes, outermost first: reqwest's own message ("error sending
/// request") hides the reason, such as an untrusted certificate, in its sources.
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// The certificates in `ca_file` (PEM), or none without one.
fn extra_roots(
    ca_file: Option<&Path>,
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, CallerError> {
    use rustls::pki_types::pem::PemObject as _;
    let Some(path) = ca_file else {
        return Ok(Vec::new());
    };
    let tls = |e: String| CallerError::Tls(format!("CA file {}: {e}", path.display()));
    let certs = rustls::pki_types::CertificateDer::pem_file_iter(path)
        .map_err(|e| tls(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls(e.to_string()))?;
    if certs.is_empty() {
        return Err(tls("no PEM certificate in it".into()));
    }
    Ok(certs)
}

/// The rustls client configuration for a `wss://` stream: the system's roots plus
/// `ca_file`. The provider is named rather than taken from the process default, because a
/// build that links both of rustls' providers (as this workspace's does) has no default.
fn tls_config(ca_file: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, CallerError> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(native.certs);
    for cert in extra_roots(ca_file)? {
        roots
            .add(cert)
            .map_err(|e| CallerError::Tls(format!("CA certificate: {e}")))?;
    }
    if roots.is_empty() {
        return Err(CallerError::Tls(
            "no trusted CA certificates: the system has none and no CA file was given".into(),
        ));
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| CallerError::Tls(e.to_string()))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Posts the voice webhook like Twilio and returns the TwiML answer.
pub async fn answer(options: &CallerOptions) -> Result<Answer, CallerError> {
    let url = format!("{}/twilio/voice", options.agent_url.trim_end_matches('/'));
    let params: Vec<(String, String)> = [
        ("AccountSid", "AC00000000000000000000000000000000"),
        ("ApiVersion", "2010-04-01"),
        ("CallSid", options.call_sid.as_str()),
        ("CallStatus", "ringing"),
        ("Direction", "inbound"),
        ("From", "+15005550006"),
        ("To", "+15005550001"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let mut client = reqwest::Client::builder();
    for der in extra_roots(options.ca_file.as_deref())? {
        let cert = reqwest::Certificate::from_der(der.as_ref())
            .map_err(|e| CallerError::Tls(e.to_string()))?;
        client = client.add_root_certificate(cert);
    }
    let client = client
        .build()
        .map_err(|e| CallerError::Tls(e.to_string()))?;
    let mut request = client.post(&url).form(&params);
    if let Some(token) = &options.auth_token {
        request = request.header(
            "X-Twilio-Signature",
            RequestValidator::new(token).sign(&url, &params),
        );
    }
    let webhook = |message: String| CallerError::Webhook {
        url: url.clone(),
        message,
    };
    let response = request.send().await.map_err(|e| webhook(with_causes(&e)))?;
    let status = response.status();
    let body = response.text().await.map_err(|e| webhook(e.to_string()))?;
    if !status.is_success() {
        return Err(webhook(format!("HTTP {status}: {body}")));
    }
    twiml::read_answer(&body).map_err(|e| webhook(e.to_string()))
}

/// A frame of the agent's audio waiting to be "played" by the simulated phone.
enum Queued {
    Audio([u8; FRAME_BYTES]),
    Mark(String),
}

enum Phase {
    /// Waiting for the agent to talk and then be quiet (or, interrupting, to start talking).
    Listening { since: Instant },
    /// Sending utterance `index` from byte `at`.
    Speaking {
        index: usize,
        at: usize,
        started: Instant,
    },
    /// Script done; lingering until the agent closes.
    Lingering { until: Instant },
}

/// Places one call and runs the script.
pub async fn place_call(options: &CallerOptions) -> Result<CallReport, CallerError> {
    if let Some(token) = &options.playground_token {
        return crate::playground_caller::place_session(options, token).await;
    }
    match answer(options).await? {
        Answer::Reject(reason) => Ok(CallReport {
            call_sid: options.call_sid.clone(),
            rejected: Some(reason),
            ..CallReport::default()
        }),
        Answer::Stream { url, parameters } => stream_call(options, url, parameters).await,
    }
}

/// The Media Stream half of [`place_call`]: opens the stream at `url` as Twilio would after
/// the webhook's TwiML, with its `<Parameter>`s in `start` (tests replay or alter them).
pub async fn stream_call(
    options: &CallerOptions,
    url: String,
    parameters: Vec<(String, String)>,
) -> Result<CallReport, CallerError> {
    let mut report = CallReport {
        call_sid: options.call_sid.clone(),
        ..CallReport::default()
    };
    let stream_err = |message: String| CallerError::Stream {
        url: url.clone(),
        message,
    };
    let mut request = url
        .as_str()
        .into_client_request()
        .map_err(|e| stream_err(e.to_string()))?;
    if let Some(token) = &options.auth_token {
        let signature = RequestValidator::new(token).sign(&url, &[]);
        let value = signature
            .parse()
            .map_err(|e: http::header::InvalidHeaderValue| stream_err(e.to_string()))?;
        request.headers_mut().insert("X-Twilio-Signature", value);
    }
    let connector = if url.starts_with("wss://") {
        Some(Connector::Rustls(tls_config(options.ca_file.as_deref())?))
    } else {
        None
    };
    let (socket, _) =
        tokio_tungstenite::connect_async_tls_with_config(request, None, false, connector)
            .await
            .map_err(|e| stream_err(e.to_string()))?;
    let (mut tx, mut rx) = socket.split();

    let stream_sid = format!("MZ{}", &options.call_sid.trim_start_matches("CA"));
    let mut sequence = 1u64;
    let send_err = |e: tokio_tungstenite::tungstenite::Error| stream_err(e.to_string());
    tx.send(Message::text(
        r#"{"event":"connected","protocol":"Call","version":"1.0.0"}"#,
    ))
    .await
    .map_err(send_err)?;
    let start = StartMetadata {
        account_sid: "AC00000000000000000000000000000000".into(),
        stream_sid: stream_sid.clone(),
        call_sid: options.call_sid.clone(),
        tracks: vec!["inbound".into()],
        custom_parameters: parameters.into_iter().collect(),
        media_format: MediaFormat::twilio(),
    };
    let start = serde_json::json!({"event": "start", "sequenceNumber": sequence.to_string(), "start": start, "streamSid": stream_sid});
    tx.send(Message::text(start.to_string()))
        .await
        .map_err(send_err)?;

    if let Some(rest) = &options.twilio {
        rest.add_call(&options.call_sid);
    }
    let mut updates = options.twilio.as_ref().map(|r| r.subscribe());
    let began = Instant::now();
    let mut ticks = tokio::time::interval_at(began, FRAME);
    // Twilio streams in real time: after a stall, catch up rather than lose caller audio.
    ticks.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let mut chunk = 0u64;
    let mut queue: VecDeque<(Instant, Queued)> = VecDeque::new();
    let mut play_end = began;
    let mut in_segment = false;
    let mut last_agent_frame: Option<Instant> = None;
    let mut turn_first_frame: Option<Instant> = None;
    let mut stopped_speaking: Option<Instant> = None;
    let mut phase = Phase::Listening { since: began };
    let mut malformed_sent = false;
    let mut dtmf_sent = false;
    let silence = [codec::encode_sample(0); FRAME_BYTES];
    let mut frame = [0u8; FRAME_BYTES];

    loop {
        tokio::select! {
            _ = ticks.tick() => {
                let now = Instant::now();
                // Play whatever is due: record audio, acknowledge marks.
                while queue.front().is_some_and(|(at, _)| *at <= now) {
                    let Some((_, item)) = queue.pop_front() else { break };
                    match item {
                        Queued::Audio(f) => report.heard.extend_from_slice(&f),
                        Queued::Mark(name) => {
                            sequence += 1;
                            let m = serde_json::json!({"event":"mark","sequenceNumber":sequence.to_string(),"streamSid":stream_sid,"mark":{"name":name}});
                            tx.send(Message::text(m.to_string())).await.map_err(send_err)?;
                            report.marks.push(name);
                        }
                    }
                }
                if queue.is_empty() {
                    // Keep the recording on the wall clock: silence while nothing plays.
                    let elapsed_frames = (now.saturating_duration_since(began).as_millis() / 20) as usize;
                    if report.heard.len() < elapsed_frames * FRAME_BYTES {
                        report.heard.resize(elapsed_frames * FRAME_BYTES, silence[0]);
                    }
                }
                if let Some(after) = options.malformed_after
                    && !malformed_sent
                    && now >= began + after
                {
                    {
                        malformed_sent = true;
                        tx.send(Message::text("{\"event\":\"media\",\"this is\": not json")).await.map_err(send_err)?;
                    }
                }
                if let Some((after, digit)) = options.dtmf
                    && !dtmf_sent
                    && now >= began + after
                {
                    {
                        dtmf_sent = true;
                        sequence += 1;
                        tx.send(Message::text(dtmf_message(sequence, &stream_sid, digit))).await.map_err(send_err)?;
                    }
                }
                // Decide what the caller says in this frame.
                let agent_quiet = queue.is_empty()
                    && last_agent_frame.is_none_or(|t| now.saturating_duration_since(t) >= options.quiet_before_speaking);
                frame.copy_from_slice(&silence);
                match &mut phase {
                    Phase::Listening { since } => {
                        let heard_reply = report.turns.last().map_or(report.greeting_frames > 0, |t| t.agent_frames > 0);
                        let next = report.turns.len();
                        let timed_out = now.saturating_duration_since(*since) >= options.reply_timeout;
                        let go = match options.interrupt_after {
                            Some(after) => turn_first_frame.is_some_and(|t| now.saturating_duration_since(t) >= after),
                            None => heard_reply && agent_quiet,
                        } || timed_out;
                        if go {
                            if next < options.utterances.len() {
                                phase = Phase::Speaking { index: next, at: 0, started: now };
                                report.turns.push(TurnReport::default());
                                turn_first_frame = None;
                            } else {
                                match options.linger {
                                    Some(linger) => phase = Phase::Lingering { until: now + linger },
                                    None => break,
                                }
                            }
                        }
                    }
                    Phase::Speaking { .. } | Phase::Lingering { .. } => {}
                }
                if let Phase::Speaking { index, at, .. } = &mut phase {
                    let utterance = &options.utterances[*index];
                    let end = (*at + FRAME_BYTES).min(utterance.len());
                    frame[..end - *at].copy_from_slice(&utterance[*at..end]);
                    *at = end;
                    if *at >= utterance.len() {
                        stopped_speaking = Some(now + FRAME);
                        phase = Phase::Listening { since: now };
                    }
                }
                if let Some(digit) = options.dtmf_after_script
                    && !dtmf_sent
                    && matches!(phase, Phase::Lingering { .. })
                {
                    dtmf_sent = true;
                    sequence += 1;
                    tx.send(Message::text(dtmf_message(sequence, &stream_sid, digit))).await.map_err(send_err)?;
                }
                if let Phase::Lingering { until } = phase
                    && now >= until
                {
                    break;
                }
                report.said.extend_from_slice(&frame);
                sequence += 1;
                chunk += 1;
                let media = serde_json::json!({
                    "event": "media", "sequenceNumber": sequence.to_string(), "streamSid": stream_sid,
                    "media": {"track": "inbound", "chunk": chunk.to_string(),
                              "timestamp": (now.saturating_duration_since(began).as_millis()).to_string(),
                              "payload": BASE64.encode(frame)}
                });
                tx.send(Message::text(media.to_string())).await.map_err(send_err)?;
            }
            Ok(()) = async {
                match updates.as_mut() {
                    Some(u) => u.changed().await,
                    None => std::future::pending().await,
                }
            } => {
                // Twilio ends the stream as soon as the call is updated: whatever was still
                // queued is never played.
                if let Some(update) = options.twilio.as_ref().and_then(|r| r.update_of(&options.call_sid)) {
                    report.update = Some(update);
                    break;
                }
            }
            message = rx.next() => {
                let now = Instant::now();
                let text = match message {
                    None | Some(Ok(Message::Close(_))) | Some(Err(_)) => { report.closed_by_agent = true; break; }
                    Some(Ok(Message::Text(text))) => text,
                    Some(Ok(_)) => continue,
                };
                let parsed: Outbound = serde_json::from_str(text.as_str()).map_err(|e| stream_err(format!("agent sent {}: {e}", text.as_str())))?;
                match parsed {
                    Outbound::Media { media, .. } => {
                        let bytes = BASE64.decode(media.payload).map_err(|e| stream_err(e.to_string()))?;
                        let mut f = silence;
                        let n = bytes.len().min(FRAME_BYTES);
                        f[..n].copy_from_slice(&bytes[..n]);
                        if in_segment && play_end < now {
                            report.late_frames += 1;
                        }
                        in_segment = true;
                        let start = play_end.max(now);
                        play_end = start + FRAME;
                        queue.push_back((start, Queued::Audio(f)));
                        last_agent_frame = Some(now);
                        // The reply to what the caller said: audio still coming from the reply
                        // an utterance cuts is not the next turn's.
                        if matches!(phase, Phase::Listening { .. }) {
                            turn_first_frame.get_or_insert(now);
                        }
                        match (&phase, report.turns.last_mut()) {
                            (Phase::Lingering { .. }, _) => report.frames_after_script += 1,
                            (_, None) => report.greeting_frames += 1,
                            (Phase::Speaking { .. }, Some(turn)) => {
                                if turn.clear_after_speech_start.is_some() { turn.frames_after_clear += 1; }
                            }
                            (Phase::Listening { .. }, Some(turn)) => {
                                turn.agent_frames += 1;
                                if turn.latency.is_none() {
                                    turn.latency = stopped_speaking.map(|s| now.saturating_duration_since(s));
                                }
                            }
                        }
                    }
                    Outbound::Mark { mark, .. } => {
                        in_segment = false;
                        queue.push_back((play_end, Queued::Mark(mark.name)));
                    }
                    Outbound::Clear { .. } => {
                        report.clears += 1;
                        in_segment = false;
                        play_end = now;
                        // Twilio drops buffered audio and returns the marks still queued.
                        let marks: Vec<String> = queue.drain(..).filter_map(|(_, q)| match q { Queued::Mark(m) => Some(m), Queued::Audio(_) => None }).collect();
                        for name in marks {
                            sequence += 1;
                            let m = serde_json::json!({"event":"mark","sequenceNumber":sequence.to_string(),"streamSid":stream_sid,"mark":{"name":name}});
                            tx.send(Message::text(m.to_string())).await.map_err(send_err)?;
                        }
                        if let (Phase::Speaking { started, .. }, Some(turn)) = (&phase, report.turns.last_mut()) {
                            turn.clear_after_speech_start.get_or_insert(now.saturating_duration_since(*started));
                        }
                    }
                }
            }
        }
    }
    // The agent may close its side before the update is noticed here.
    if report.update.is_none()
        && let Some(rest) = &options.twilio
    {
        report.update = rest.update_of(&options.call_sid);
    }
    if !report.closed_by_agent {
        sequence += 1;
        let stop = serde_json::json!({"event":"stop","sequenceNumber":sequence.to_string(),"streamSid":stream_sid,
            "stop":{"accountSid":"AC00000000000000000000000000000000","callSid":options.call_sid}});
        let _ = tx.send(Message::text(stop.to_string())).await;
        let _ = tx.close().await;
    }
    Ok(report)
}

/// Twilio's `dtmf` message for a key press on the inbound track.
fn dtmf_message(sequence: u64, stream_sid: &str, digit: char) -> String {
    serde_json::json!({"event": "dtmf", "sequenceNumber": sequence.to_string(), "streamSid": stream_sid,
        "dtmf": {"track": "inbound_track", "digit": digit.to_string()}})
    .to_string()
}

/// Places `n` concurrent calls (call SIDs numbered), dialled over `spread`, and returns
/// every report.
pub async fn place_calls(
    options: &CallerOptions,
    n: usize,
    spread: Duration,
) -> Vec<Result<CallReport, CallerError>> {
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let mut o = options.clone();
            o.call_sid = format!("CA{:032}", i + 1);
            // Calls dialled at evenly spaced moments over `spread`, as independent callers
            // would; zero dials them all at once, so every turn of every call coincides.
            let delay = spread.mul_f64(i as f64 / n.max(1) as f64);
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                place_call(&o).await
            })
        })
        .collect();
    let mut out = Vec::with_capacity(n);
    for t in tasks {
        out.push(t.await.unwrap_or_else(|e| {
            Err(CallerError::Stream {
                url: String::new(),
                message: e.to_string(),
            })
        }));
    }
    out
}
