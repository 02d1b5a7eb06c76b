//! The agent's settings: `agent.yaml` (mounted from the ConfigMap the operator writes), then
//! environment variables on top, then validation. See docs/agent.md for the full table.

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::backend::openai::ResponseFormat;
use crate::turn::{Backchannels, InterruptionWords, SemanticEndpointing, TurnTaking};

/// Why the configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid YAML for this schema.
    #[error("config file {path} is invalid: {source}")]
    Parse {
        /// The file.
        path: String,
        /// What serde_yaml said.
        source: serde_yaml::Error,
    },
    /// An environment variable has a value of the wrong type.
    #[error("environment variable {var}={value:?}: {reason}")]
    Env {
        /// The variable.
        var: &'static str,
        /// Its value.
        value: String,
        /// What is wrong.
        reason: String,
    },
    /// Settings that do not make sense together or alone.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// Which implementation serves a stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// `openai` when a URL is set, else `embedded`.
    #[default]
    Auto,
    /// An OpenAI-compatible HTTP server (vLLM, Whisper servers, TTS servers, grokcast-serve).
    Openai,
    /// The in-process engines of `grokcast-engines`.
    Embedded,
}

/// One model stage (STT, LLM or TTS).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct StageConfig {
    /// Which implementation.
    pub backend: BackendKind,
    /// OpenAI-compatible base URL, e.g. `http://whisper:8000/v1`.
    pub url: String,
    /// Model name sent to the server.
    pub model: String,
    /// Give up on one request after this long (then the caller hears the apology).
    pub timeout_ms: u64,
}

impl Default for StageConfig {
    fn default() -> Self {
        Self::new("", 5_000)
    }
}

impl StageConfig {
    fn new(model: &str, timeout_ms: u64) -> Self {
        Self {
            backend: BackendKind::Auto,
            url: String::new(),
            model: model.into(),
            timeout_ms,
        }
    }

    /// The backend after resolving `auto`.
    pub fn resolved_backend(&self) -> BackendKind {
        match self.backend {
            BackendKind::Auto if self.url.is_empty() => BackendKind::Embedded,
            BackendKind::Auto => BackendKind::Openai,
            other => other,
        }
    }

    /// The per-request timeout.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
}

/// What the agent says and how.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct Persona {
    /// The LLM's system prompt.
    pub system_prompt: String,
    /// Spoken when the call connects (empty: no greeting).
    pub greeting: String,
    /// Spoken when a model server fails; synthesised once at start.
    pub apology: String,
    /// Spoken to live calls when the pod shuts down.
    pub goodbye: String,
}

impl Default for Persona {
    fn default() -> Self {
        Self {
            system_prompt:
                "You are a friendly phone assistant. Answer in one or two short sentences.".into(),
            greeting: "Hello! How can I help you today?".into(),
            apology: "Sorry, I had trouble with that. Could you say it again?".into(),
            goodbye: "Sorry, I have to end the call now. Goodbye.".into(),
        }
    }
}

/// Turn-taking thresholds, as in the VoiceAgent spec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct TurnTakingConfig {
    /// Silero probability that counts as speech.
    pub vad_threshold: f32,
    /// Silence after speech that ends the caller's turn.
    pub end_of_turn_silence_ms: u64,
    /// Shorter speech is noise.
    pub min_speech_ms: u64,
    /// Whether the caller may interrupt.
    pub barge_in: bool,
    /// Speech over the agent needed to interrupt it.
    pub min_barge_in_ms: u64,
    /// A turn is cut after this long.
    pub max_turn_ms: u64,
    /// The model that judges, at the caller's pauses, whether the utterance is complete;
    /// `none` ends turns on `endOfTurnSilenceMs` of silence alone.
    pub end_of_turn_model: EndOfTurnModel,
    /// With a model: the pause after which it is asked; a complete utterance ends here.
    pub min_end_of_turn_silence_ms: u64,
    /// With a model: the pause that ends the turn whatever the model says.
    pub max_end_of_turn_silence_ms: u64,
    /// Start the reply (STT and LLM) at the first pause that may end the turn: the model's
    /// pause, or `minEndOfTurnSilenceMs` of silence without one. It is used when the turn
    /// ends in that pause, and cancelled (counted as a miss) when the caller goes on.
    pub speculative_replies: bool,
    /// With speculative replies: synthesise the reply's first clause before the turn is
    /// over too (it still plays only once the turn has ended).
    pub preemptive_tts: bool,
    /// When a barge-in's speech turns out to have no words within this many ms (a cough, a
    /// door), the agent resumes the clause it was cut in; 0 never resumes.
    pub false_interruption_resume_ms: u64,
    /// Words and phrases that, said alone over the agent ("uh-huh", "okay"), count as no
    /// words: the agent resumes instead of answering them.
    pub backchannels: Vec<String>,
    /// With streaming STT: words besides backchannels that speech over the agent must say
    /// (in its interim transcripts) before it stops the agent; 0 stops it on
    /// `minBargeInMs` of speech alone, as without streaming STT.
    pub min_interruption_words: u32,
    /// With `minInterruptionWords`: speech over the agent that goes on this many ms past
    /// `minBargeInMs` without the words stops the agent anyway (late or lost transcripts).
    pub max_interruption_wait_ms: u64,
    /// With `endOfTurnModel: llm`: the LLM's probability that the caller's turn ends after
    /// their words at or above which the pause ends it.
    pub llm_end_of_turn_threshold: f32,
}

/// Which end-of-turn model judges the caller's pauses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum EndOfTurnModel {
    /// Silence alone ends a turn.
    #[default]
    None,
    /// Smart Turn v3.2 (`turn/smart-turn-v3.2-cpu.onnx` in the models directory).
    SmartTurn,
    /// The LLM pool reads the caller's words so far (streaming STT's interim transcript, or
    /// a transcription of the utterance) after the conversation and says how likely the chat
    /// template's end-of-turn token comes next.
    Llm,
}

impl std::str::FromStr for EndOfTurnModel {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, String> {
        match value.trim() {
            "" | "none" => Ok(Self::None),
            "smart-turn" => Ok(Self::SmartTurn),
            "llm" => Ok(Self::Llm),
            other => Err(format!("{other:?} is not none, smart-turn or llm")),
        }
    }
}

impl Default for TurnTakingConfig {
    fn default() -> Self {
        Self {
            vad_threshold: 0.5,
            end_of_turn_silence_ms: 300,
            min_speech_ms: 150,
            barge_in: true,
            min_barge_in_ms: 200,
            max_turn_ms: 20_000,
            end_of_turn_model: EndOfTurnModel::None,
            min_end_of_turn_silence_ms: 200,
            max_end_of_turn_silence_ms: 2000,
            speculative_replies: false,
            preemptive_tts: false,
            false_interruption_resume_ms: 1500,
            backchannels: crate::turn::DEFAULT_BACKCHANNELS
                .iter()
                .map(|s| s.to_string())
                .collect(),
            min_interruption_words: 1,
            max_interruption_wait_ms: 1000,
            llm_end_of_turn_threshold: DEFAULT_LLM_END_OF_TURN_THRESHOLD,
        }
    }
}

/// `turnTaking.llmEndOfTurnThreshold` unless set (docs/benchmarks.md, turn-eval).
pub const DEFAULT_LLM_END_OF_TURN_THRESHOLD: f32 = 0.05;

impl TurnTakingConfig {
    /// The endpointer's thresholds.
    pub fn turn_taking(&self) -> TurnTaking {
        TurnTaking {
            vad_threshold: self.vad_threshold,
            end_of_turn_silence: Duration::from_millis(self.end_of_turn_silence_ms),
            min_speech: Duration::from_millis(self.min_speech_ms),
            barge_in: self.barge_in,
            min_barge_in: Duration::from_millis(self.min_barge_in_ms),
            max_turn: Duration::from_millis(self.max_turn_ms),
            semantic: (self.end_of_turn_model != EndOfTurnModel::None).then(|| {
                SemanticEndpointing {
                    min_silence: Duration::from_millis(self.min_end_of_turn_silence_ms),
                    max_silence: Duration::from_millis(self.max_end_of_turn_silence_ms),
                }
            }),
            // With a model, its pause is announced anyway.
            speculate_after: (self.speculative_replies
                && self.end_of_turn_model == EndOfTurnModel::None)
                .then(|| Duration::from_millis(self.min_end_of_turn_silence_ms)),
            // Only where interim transcripts come: the agent drops it without streaming STT.
            interruption_words: (self.min_interruption_words > 0).then(|| InterruptionWords {
                min_words: self.min_interruption_words as usize,
                max_wait: Duration::from_millis(self.max_interruption_wait_ms),
                backchannels: Backchannels::new(&self.backchannels),
            }),
        }
    }
}

/// The whole agent configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct AgentConfig {
    /// VoiceAgent name (the `voiceagent` label on every metric).
    pub voice_agent: String,
    /// Its namespace (the `namespace` label).
    pub namespace: String,
    /// Address of the Twilio-facing listener (webhooks and Media Streams).
    pub listen_addr: String,
    /// Address of the admin listener: `/metrics`, `/healthz` and `/readyz`, kept off the
    /// port the internet reaches.
    pub admin_listen_addr: String,
    /// Public https URL Twilio reaches this agent at; signatures are computed over it.
    pub public_url: String,
    /// Calls this pod takes at once; more are rejected as busy.
    pub max_calls: usize,
    /// Seconds live calls get to finish after SIGTERM.
    pub drain_timeout_seconds: u64,
    /// Longest call.
    pub session_timeout_seconds: u64,
    /// Audio kept buffered at Twilio ahead of playback.
    pub playback_lead_ms: u64,
    /// Log what callers and the agent say (off: transcripts are personal data).
    pub log_transcripts: bool,
    /// Persona.
    pub persona: Persona,
    /// Speech to text.
    pub stt: SttConfig,
    /// Language model.
    pub llm: LlmConfig,
    /// Text to speech.
    pub tts: TtsConfig,
    /// Turn-taking.
    pub turn_taking: TurnTakingConfig,
    /// The VoiceAgent's latency objective, which slow turns are counted against.
    pub slo: SloConfig,
    /// Silero VAD model file; empty means the models directory's.
    pub vad_model: String,
    /// Models directory for embedded engines; empty means `GROKCAST_MODELS_DIR` or `models/`.
    pub models_dir: String,
    /// The browser playground (`/playground`).
    pub playground: PlaygroundConfig,
    /// OpenTelemetry traces of calls and turns.
    pub tracing: TracingConfig,
    /// Tools the LLM may call to act on the call (hang up, transfer, send digits, ask an
    /// HTTP endpoint).
    pub tools: ToolsConfig,
    /// Twilio's REST API, where live calls are hung up and transferred; tests point it at
    /// the stand-in.
    pub twilio_api_url: String,
    /// The Twilio account the API key belongs to (`AC...`). Only from the environment.
    #[serde(skip)]
    pub twilio_account_sid: Option<String>,
    /// The API key's SID (`SK...`). Only from the environment.
    #[serde(skip)]
    pub twilio_api_key_sid: Option<String>,
    /// The API key's secret. Only from the environment (a Secret), never from the file.
    #[serde(skip)]
    pub twilio_api_key_secret: Option<Secret>,
    /// The token that opens the playground. Only from the environment (a Secret).
    #[serde(skip)]
    pub playground_token: Option<Secret>,
    /// Twilio auth token. Only from the environment (a Secret), never from the file.
    #[serde(skip)]
    pub twilio_auth_token: Option<Secret>,
    /// Turns signature checks off. Only from the environment, and logged loudly.
    #[serde(skip)]
    pub insecure_skip_signature: bool,
}

/// The browser playground: a page at `/playground` where the people who tune prompts and
/// voices talk to the agent through the same pipeline as a phone call.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct PlaygroundConfig {
    /// Serve the page and its socket (off: both answer 404). Needs a token
    /// (`GROKCAST_PLAYGROUND_TOKEN`).
    pub enabled: bool,
}

/// OpenTelemetry traces (VoiceAgent `spec.tracing`): one trace per call, one span per turn
/// with its stages, sent over OTLP/gRPC to a collector (see `crate::traces`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct TracingConfig {
    /// The collector's OTLP/gRPC endpoint (`http://otel-collector:4317`; `https://` checks
    /// the server against the system's trust store). Empty: no traces, and no cost.
    pub endpoint: String,
    /// The share of calls traced, from 0 to 1. A call is traced whole or not at all.
    pub sample_ratio: f64,
}

impl Default for TracingConfig {
    fn default() -> Self {
        Self {
            endpoint: String::new(),
            sample_ratio: 1.0,
        }
    }
}

/// Tools the LLM may call on a live call (VoiceAgent `spec.tools`), each off unless enabled.
/// See `crate::tools` for what each does.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct ToolsConfig {
    /// `end_call`: the agent says goodbye and hangs up.
    pub end_call: EndCallTool,
    /// `transfer_call`: the call is handed to a number or SIP URI of `targets`.
    pub transfer_call: TransferCallTool,
    /// `send_dtmf`: the agent plays key tones (an IVR menu at the other end).
    pub send_dtmf: SendDtmfTool,
    /// Tools answered by HTTP endpoints of the user's own.
    pub http: Vec<HttpTool>,
}

impl ToolsConfig {
    /// Whether any tool is offered to the LLM.
    pub fn any(&self) -> bool {
        self.end_call.enabled
            || self.transfer_call.enabled
            || self.send_dtmf.enabled
            || !self.http.is_empty()
    }
}

/// The `end_call` tool.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct EndCallTool {
    /// Offer it.
    pub enabled: bool,
}

/// The `transfer_call` tool.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct TransferCallTool {
    /// Offer it (needs Twilio API key credentials).
    pub enabled: bool,
    /// Where calls may go, by name; the model picks a name, never a number of its own.
    pub targets: Vec<TransferTarget>,
    /// Also dial a number or SIP URI the model passes (one the caller dictated). Off: only
    /// `targets`, so a caller cannot talk the agent into calling anywhere (toll fraud).
    pub allow_caller_numbers: bool,
}

/// One place a call may be transferred to.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct TransferTarget {
    /// The name the model uses (`sales`).
    pub name: String,
    /// An E.164 number (`+15551230000`) or a SIP URI (`sip:desk@pbx.example.com`).
    pub to: String,
    /// When to choose it, for the model.
    pub description: String,
}

/// The `send_dtmf` tool.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct SendDtmfTool {
    /// Offer it.
    pub enabled: bool,
}

/// A tool answered by an HTTP endpoint: the model's arguments are POSTed to `url` as a JSON
/// object, and the response body (JSON or text) goes back to the model as the result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct HttpTool {
    /// The function's name (letters, digits, `_` and `-`, at most 64).
    pub name: String,
    /// What it does and when to call it, for the model.
    pub description: String,
    /// Where the arguments are POSTed (http or https).
    pub url: String,
    /// A JSON Schema of the arguments (an object schema); empty: no arguments.
    pub parameters: serde_json::Value,
    /// The longest wait for the endpoint; past it the model hears the tool timed out.
    pub timeout_ms: u64,
}

impl Default for HttpTool {
    fn default() -> Self {
        Self {
            name: String::new(),
            description: String::new(),
            url: String::new(),
            parameters: serde_json::Value::Null,
            timeout_ms: 3_000,
        }
    }
}

/// A secret value (the Twilio auth token): `Debug` prints `[redacted]`, so printing a
/// configuration, in a log line or a panic, never shows it. [`Secret::expose`] is the one way
/// to read it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The secret itself, for the one place that needs it (signature checks).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Self(value.to_owned())
    }
}

/// The latency objective (VoiceAgent `spec.slo`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct SloConfig {
    /// 95% of turns should reach the caller within this many milliseconds; the agent
    /// counts turns above it in `grokcast_turns_over_slo_total` for the burn-rate alerts.
    pub turn_latency_p95_ms: u64,
}

impl Default for SloConfig {
    fn default() -> Self {
        Self {
            turn_latency_p95_ms: 800,
        }
    }
}

impl SloConfig {
    /// The objective as a duration.
    pub fn turn_latency_p95(&self) -> Duration {
        Duration::from_millis(self.turn_latency_p95_ms)
    }
}

/// Speech-to-text settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct SttConfig {
    /// Backend, URL, model, timeout.
    #[serde(flatten)]
    pub stage: StageConfig,
    /// ISO language code.
    pub language: String,
    /// A server speaking NVIDIA Riva's `StreamingRecognize` over gRPC (`http://host:50051`):
    /// the caller's audio streams there while they speak, and a turn whose stream fails is
    /// transcribed through `backend`/`url` instead. Empty: every turn in one request.
    pub streaming_url: String,
}

/// LLM settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct LlmConfig {
    /// Backend, URL, model, timeout.
    #[serde(flatten)]
    pub stage: StageConfig,
    /// Sampling temperature.
    pub temperature: f32,
    /// Most tokens per reply.
    pub max_tokens: u32,
}

/// TTS settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct TtsConfig {
    /// Backend, URL, model, timeout.
    #[serde(flatten)]
    pub stage: StageConfig,
    /// Voice name sent to the server.
    pub voice: String,
    /// The `response_format` asked for: `pcm` (raw, streamed) or `wav`.
    pub response_format: ResponseFormat,
    /// Rate assumed for raw PCM whose response gives none (no `x-sample-rate` header, no
    /// WAV header); OpenAI's `pcm` is 24 kHz. What a response says about itself wins, so
    /// this is only a fallback.
    pub sample_rate: u32,
}

impl Default for SttConfig {
    fn default() -> Self {
        Self {
            stage: StageConfig::new("whisper-1", 5_000),
            language: "en".into(),
            streaming_url: String::new(),
        }
    }
}

impl Default for LlmConfig {
    fn default() -> Self {
        Self {
            stage: StageConfig::new("gemma", 10_000),
            temperature: 0.6,
            max_tokens: 200,
        }
    }
}

impl Default for TtsConfig {
    fn default() -> Self {
        Self {
            stage: StageConfig::new("tts-1", 5_000),
            voice: "alloy".into(),
            response_format: ResponseFormat::Pcm,
            sample_rate: 24_000,
        }
    }
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            voice_agent: "local".into(),
            namespace: "default".into(),
            listen_addr: "0.0.0.0:8080".into(),
            admin_listen_addr: "0.0.0.0:9090".into(),
            public_url: String::new(),
            max_calls: 50,
            drain_timeout_seconds: 300,
            session_timeout_seconds: 3600,
            playback_lead_ms: 80,
            log_transcripts: false,
            persona: Persona::default(),
            stt: SttConfig::default(),
            llm: LlmConfig::default(),
            tts: TtsConfig::default(),
            turn_taking: TurnTakingConfig::default(),
            slo: SloConfig::default(),
            vad_model: String::new(),
            models_dir: String::new(),
            playground: PlaygroundConfig::default(),
            tracing: TracingConfig::default(),
            tools: ToolsConfig::default(),
            twilio_api_url: crate::twilio::rest::API_BASE.into(),
            twilio_account_sid: None,
            twilio_api_key_sid: None,
            twilio_api_key_secret: None,
            playground_token: None,
            twilio_auth_token: None,
            insecure_skip_signature: false,
        }
    }
}

type Setter = fn(&mut AgentConfig, &str) -> Result<(), String>;

fn parse<T: std::str::FromStr>(value: &str) -> Result<T, String>
where
    T::Err: std::fmt::Display,
{
    value.trim().parse().map_err(|e: T::Err| e.to_string())
}

fn parse_bool(value: &str) -> Result<bool, String> {
    match value.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" | "" => Ok(false),
        _ => Err("expected true or false".into()),
    }
}

fn parse_backend(value: &str) -> Result<BackendKind, String> {
    match value.trim() {
        "" | "auto" => Ok(BackendKind::Auto),
        "openai" => Ok(BackendKind::Openai),
        "embedded" => Ok(BackendKind::Embedded),
        other => Err(format!("{other:?} is not auto, openai or embedded")),
    }
}

/// Every environment variable the agent reads, the setting it overrides, and how.
pub const ENV_VARS: &[(&str, &str, Setter)] = &[
    ("GROKCAST_VOICEAGENT", "voiceAgent", |c, v| {
        c.voice_agent = v.into();
        Ok(())
    }),
    ("GROKCAST_NAMESPACE", "namespace", |c, v| {
        c.namespace = v.into();
        Ok(())
    }),
    ("GROKCAST_LISTEN_ADDR", "listenAddr", |c, v| {
        c.listen_addr = v.into();
        Ok(())
    }),
    ("GROKCAST_ADMIN_LISTEN_ADDR", "adminListenAddr", |c, v| {
        c.admin_listen_addr = v.into();
        Ok(())
    }),
    ("GROKCAST_PUBLIC_URL", "publicUrl", |c, v| {
        c.public_url = v.into();
        Ok(())
    }),
    (
        "GROKCAST_TWILIO_AUTH_TOKEN",
        "(environment only)",
        |c, v| {
            c.twilio_auth_token = Some(v).filter(|t| !t.is_empty()).map(Secret::from);
            Ok(())
        },
    ),
    ("GROKCAST_TWILIO_API_URL", "twilioApiUrl", |c, v| {
        c.twilio_api_url = v.trim().into();
        Ok(())
    }),
    (
        "GROKCAST_TWILIO_ACCOUNT_SID",
        "(environment only)",
        |c, v| {
            c.twilio_account_sid = Some(v.trim().to_owned()).filter(|t| !t.is_empty());
            Ok(())
        },
    ),
    (
        "GROKCAST_TWILIO_API_KEY_SID",
        "(environment only)",
        |c, v| {
            c.twilio_api_key_sid = Some(v.trim().to_owned()).filter(|t| !t.is_empty());
            Ok(())
        },
    ),
    (
        "GROKCAST_TWILIO_API_KEY_SECRET",
        "(environment only)",
        |c, v| {
            c.twilio_api_key_secret = Some(v).filter(|t| !t.is_empty()).map(Secret::from);
            Ok(())
        },
    ),
    (
        "GROKCAST_PLAYGROUND_ENABLED",
        "playground.enabled",
        |c, v| {
            c.playground.enabled = parse_bool(v)?;
            Ok(())
        },
    ),
    ("GROKCAST_TRACING_ENDPOINT", "tracing.endpoint", |c, v| {
        c.tracing.endpoint = v.trim().into();
        Ok(())
    }),
    (
        "GROKCAST_TRACING_SAMPLE_RATIO",
        "tracing.sampleRatio",
        |c, v| {
            c.tracing.sample_ratio = parse(v)?;
            Ok(())
        },
    ),
    ("GROKCAST_PLAYGROUND_TOKEN", "(environment only)", |c, v| {
        c.playground_token = Some(v).filter(|t| !t.is_empty()).map(Secret::from);
        Ok(())
    }),
    (
        "GROKCAST_INSECURE_SKIP_SIGNATURE",
        "(environment only)",
        |c, v| {
            c.insecure_skip_signature = parse_bool(v)?;
            Ok(())
        },
    ),
    ("GROKCAST_MAX_CALLS", "maxCalls", |c, v| {
        c.max_calls = parse(v)?;
        Ok(())
    }),
    (
        "GROKCAST_DRAIN_TIMEOUT_SECONDS",
        "drainTimeoutSeconds",
        |c, v| {
            c.drain_timeout_seconds = parse(v)?;
            Ok(())
        },
    ),
    (
        "GROKCAST_SESSION_TIMEOUT_SECONDS",
        "sessionTimeoutSeconds",
        |c, v| {
            c.session_timeout_seconds = parse(v)?;
            Ok(())
        },
    ),
    ("GROKCAST_PLAYBACK_LEAD_MS", "playbackLeadMs", |c, v| {
        c.playback_lead_ms = parse(v)?;
        Ok(())
    }),
    ("GROKCAST_LOG_TRANSCRIPTS", "logTranscripts", |c, v| {
        c.log_transcripts = parse_bool(v)?;
        Ok(())
    }),
    (
        "GROKCAST_SLO_TURN_LATENCY_P95_MS",
        "slo.turnLatencyP95Ms",
        |c, v| {
            c.slo.turn_latency_p95_ms = parse(v)?;
            Ok(())
        },
    ),
    ("GROKCAST_SYSTEM_PROMPT", "persona.systemPrompt", |c, v| {
        c.persona.system_prompt = v.into();
        Ok(())
    }),
    ("GROKCAST_GREETING", "persona.greeting", |c, v| {
        c.persona.greeting = v.into();
        Ok(())
    }),
    ("GROKCAST_APOLOGY", "persona.apology", |c, v| {
        c.persona.apology = v.into();
        Ok(())
    }),
    ("GROKCAST_GOODBYE", "persona.goodbye", |c, v| {
        c.persona.goodbye = v.into();
        Ok(())
    }),
    ("GROKCAST_STT_BACKEND", "stt.backend", |c, v| {
        c.stt.stage.backend = parse_backend(v)?;
        Ok(())
    }),
    ("GROKCAST_STT_URL", "stt.url", |c, v| {
        c.stt.stage.url = v.into();
        Ok(())
    }),
    ("GROKCAST_STT_MODEL", "stt.model", |c, v| {
        c.stt.stage.model = v.into();
        Ok(())
    }),
    ("GROKCAST_STT_LANGUAGE", "stt.language", |c, v| {
        c.stt.language = v.into();
        Ok(())
    }),
    ("GROKCAST_STT_STREAMING_URL", "stt.streamingUrl", |c, v| {
        c.stt.streaming_url = v.into();
        Ok(())
    }),
    ("GROKCAST_STT_TIMEOUT_MS", "stt.timeoutMs", |c, v| {
        c.stt.stage.timeout_ms = parse(v)?;
        Ok(())
    }),
    ("GROKCAST_LLM_BACKEND", "llm.backend", |c, v| {
        c.llm.stage.backend = parse_backend(v)?;
        Ok(())
    }),
    ("GROKCAST_LLM_URL", "llm.url", |c, v| {
        c.llm.stage.url = v.into();
        Ok(())
    }),
    ("GROKCAST_LLM_MODEL", "llm.model", |c, v| {
        c.llm.stage.model = v.into();
        Ok(())
    }),
    ("GROKCAST_LLM_TEMPERATURE", "llm.temperature", |c, v| {
        c.llm.temperature = parse(v)?;
        Ok(())
    }),
    ("GROKCAST_LLM_MAX_TOKENS", "llm.maxTokens", |c, v| {
        c.llm.max_tokens = parse(v)?;
        Ok(())
    }),
    ("GROKCAST_LLM_TIMEOUT_MS", "llm.timeoutMs", |c, v| {
        c.llm.stage.timeout_ms = parse(v)?;
        Ok(())
    }),
    ("GROKCAST_TTS_BACKEND", "tts.backend", |c, v| {
        c.tts.stage.backend = parse_backend(v)?;
        Ok(())
    }),
    ("GROKCAST_TTS_URL", "tts.url", |c, v| {
        c.tts.stage.url = v.into();
        Ok(())
    }),
    ("GROKCAST_TTS_MODEL", "tts.model", |c, v| {
        c.tts.stage.model = v.into();
        Ok(())
    }),
    ("GROKCAST_TTS_VOICE", "tts.voice", |c, v| {
        c.tts.voice = v.into();
        Ok(())
    }),
    (
        "GROKCAST_TTS_RESPONSE_FORMAT",
        "tts.responseFormat",
        |c, v| {
            c.tts.response_format = v.parse()?;
            Ok(())
        },
    ),
    ("GROKCAST_TTS_SAMPLE_RATE", "tts.sampleRate", |c, v| {
        c.tts.sample_rate = parse(v)?;
        Ok(())
    }),
    ("GROKCAST_TTS_TIMEOUT_MS", "tts.timeoutMs", |c, v| {
        c.tts.stage.timeout_ms = parse(v)?;
        Ok(())
    }),
    (
        "GROKCAST_VAD_THRESHOLD",
        "turnTaking.vadThreshold",
        |c, v| {
            c.turn_taking.vad_threshold = parse(v)?;
            Ok(())
        },
    ),
    (
        "GROKCAST_END_OF_TURN_SILENCE_MS",
        "turnTaking.endOfTurnSilenceMs",
        |c, v| {
            c.turn_taking.end_of_turn_silence_ms = parse(v)?;
            Ok(())
        },
    ),
    (
        "GROKCAST_MIN_SPEECH_MS",
        "turnTaking.minSpeechMs",
        |c, v| {
            c.turn_taking.min_speech_ms = parse(v)?;
            Ok(())
        },
    ),
    (
        "GROKCAST_SPECULATIVE_REPLIES",
        "turnTaking.speculativeReplies",
        |c, v| {
            c.turn_taking.speculative_replies = parse_bool(v)?;
            Ok(())
        },
    ),
    (
        "GROKCAST_PREEMPTIVE_TTS",
        "turnTaking.preemptiveTts",
        |c, v| {
            c.turn_taking.preemptive_tts = parse_bool(v)?;
            Ok(())
        },
    ),
    (
        "GROKCAST_BACKCHANNELS",
        "turnTaking.backchannels",
        |c, v| {
            c.turn_taking.backchannels = v
                .split(',')
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect();
            Ok(())
        },
    ),
    (
        "GROKCAST_MIN_INTERRUPTION_WORDS",
        "turnTaking.minInterruptionWords",
        |c, v| {
            c.turn_taking.min_interruption_words = parse(v)?;
            Ok(())
        },
    ),
    (
        "GROKCAST_MAX_INTERRUPTION_WAIT_MS",
        "turnTaking.maxInterruptionWaitMs",
        |c, v| {
            c.turn_taking.max_interruption_wait_ms = parse(v)?;
            Ok(())
        },
    ),
    (
        "GROKCAST_FALSE_INTERRUPTION_RESUME_MS",
        "turnTaking.falseInterruptionResumeMs",
        |c, v| {
            c.turn_taking.false_interruption_resume_ms = parse(v)?;
            Ok(())
        },
    ),
    ("GROKCAST_BARGE_IN", "turnTaking.bargeIn", |c, v| {
        c.turn_taking.barge_in = parse_bool(v)?;
        Ok(())
    }),
    (
        "GROKCAST_MIN_BARGE_IN_MS",
        "turnTaking.minBargeInMs",
        |c, v| {
            c.turn_taking.min_barge_in_ms = parse(v)?;
            Ok(())
        },
    ),
    (
        "GROKCAST_END_OF_TURN_MODEL",
        "turnTaking.endOfTurnModel",
        |c, v| {
            c.turn_taking.end_of_turn_model = parse(v)?;
            Ok(())
        },
    ),
    (
        "GROKCAST_LLM_END_OF_TURN_THRESHOLD",
        "turnTaking.llmEndOfTurnThreshold",
        |c, v| {
            c.turn_taking.llm_end_of_turn_threshold = parse(v)?;
            Ok(())
        },
    ),
    (
        "GROKCAST_MIN_END_OF_TURN_SILENCE_MS",
        "turnTaking.minEndOfTurnSilenceMs",
        |c, v| {
            c.turn_taking.min_end_of_turn_silence_ms = parse(v)?;
            Ok(())
        },
    ),
    (
        "GROKCAST_MAX_END_OF_TURN_SILENCE_MS",
        "turnTaking.maxEndOfTurnSilenceMs",
        |c, v| {
            c.turn_taking.max_end_of_turn_silence_ms = parse(v)?;
            Ok(())
        },
    ),
    ("GROKCAST_VAD_MODEL", "vadModel", |c, v| {
        c.vad_model = v.into();
        Ok(())
    }),
    ("GROKCAST_MODELS_DIR", "modelsDir", |c, v| {
        c.models_dir = v.into();
        Ok(())
    }),
];

impl AgentConfig {
    /// Twilio API key credentials, when all three are set.
    pub fn twilio_api_key(&self) -> Option<(&str, &str, &Secret)> {
        Some((
            self.twilio_account_sid.as_deref()?,
            self.twilio_api_key_sid.as_deref()?,
            self.twilio_api_key_secret.as_ref()?,
        ))
    }

    fn validate_tools(&self, problems: &mut Vec<String>) {
        let t = &self.tools;
        let key_parts = [
            self.twilio_account_sid.is_some(),
            self.twilio_api_key_sid.is_some(),
            self.twilio_api_key_secret.is_some(),
        ];
        if key_parts.iter().any(|p| *p) && !key_parts.iter().all(|p| *p) {
            problems.push(
                "a Twilio API key needs GROKCAST_TWILIO_ACCOUNT_SID, GROKCAST_TWILIO_API_KEY_SID and GROKCAST_TWILIO_API_KEY_SECRET together".into(),
            );
        }
        if !(self.twilio_api_url.starts_with("https://")
            || self.twilio_api_url.starts_with("http://"))
        {
            problems.push(format!(
                "twilioApiUrl {:?} must be an http(s) URL (Twilio's is {})",
                self.twilio_api_url,
                crate::twilio::rest::API_BASE
            ));
        }
        if t.any() && self.llm.stage.resolved_backend() != BackendKind::Openai {
            problems.push(
                "tools need an LLM server that calls tools (llm.backend openai, such as vLLM with --enable-auto-tool-choice); the embedded model cannot".into(),
            );
        }
        if t.transfer_call.enabled {
            if self.twilio_api_key().is_none() {
                problems.push(
                    "tools.transferCall needs a Twilio API key (GROKCAST_TWILIO_ACCOUNT_SID, GROKCAST_TWILIO_API_KEY_SID, GROKCAST_TWILIO_API_KEY_SECRET): a transfer is a REST update of the call".into(),
                );
            }
            if t.transfer_call.targets.is_empty() && !t.transfer_call.allow_caller_numbers {
                problems.push("tools.transferCall needs targets (or allowCallerNumbers)".into());
            }
        }
        let mut names: Vec<&str> = crate::tools::BUILT_IN.to_vec();
        for target in &t.transfer_call.targets {
            if !crate::tools::valid_name(&target.name) {
                problems.push(format!(
                    "tools.transferCall.targets name {:?} must be 1 to 64 letters, digits, '_' or '-'",
                    target.name
                ));
            }
            if crate::twilio::twiml::DialTarget::parse(&target.to).is_none() {
                problems.push(format!(
                    "tools.transferCall.targets {:?}: to {:?} must be an E.164 number (+15551230000) or a SIP URI (sip:desk@pbx.example.com)",
                    target.name, target.to
                ));
            }
        }
        for tool in &t.http {
            if !crate::tools::valid_name(&tool.name) {
                problems.push(format!(
                    "tools.http name {:?} must be 1 to 64 letters, digits, '_' or '-'",
                    tool.name
                ));
            } else if names.contains(&tool.name.as_str()) {
                problems.push(format!(
                    "tools.http name {:?} is taken (built-in tools and other HTTP tools)",
                    tool.name
                ));
            }
            names.push(&tool.name);
            if !(tool.url.starts_with("http://") || tool.url.starts_with("https://")) {
                problems.push(format!(
                    "tools.http {:?}: url {:?} must be http(s)",
                    tool.name, tool.url
                ));
            }
            if !(tool.parameters.is_null() || tool.parameters["type"] == "object") {
                problems.push(format!(
                    "tools.http {:?}: parameters must be a JSON Schema of type object",
                    tool.name
                ));
            }
            if !(100..=30_000).contains(&tool.timeout_ms) {
                problems.push(format!(
                    "tools.http {:?}: timeoutMs {} must be within 100..30000",
                    tool.name, tool.timeout_ms
                ));
            }
        }
    }

    /// Reads `path` (if given), applies the environment through `env`, and validates.
    pub fn load(
        path: Option<&Path>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let mut config = match path {
            Some(path) => {
                let display = path.display().to_string();
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: display.clone(),
                    source,
                })?;
                if text.trim().is_empty() {
                    Self::default()
                } else {
                    serde_yaml::from_str(&text).map_err(|source| ConfigError::Parse {
                        path: display,
                        source,
                    })?
                }
            }
            None => Self::default(),
        };
        for (var, _, set) in ENV_VARS {
            if let Some(value) = env(var) {
                set(&mut config, &value).map_err(|reason| ConfigError::Env {
                    var,
                    value,
                    reason,
                })?;
            }
        }
        config.validate()?;
        Ok(config)
    }

    /// Checks every setting; the error lists all problems at once.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        let listen = self.listen_addr.parse::<std::net::SocketAddr>();
        if listen.is_err() {
            problems.push(format!(
                "listenAddr {:?} is not host:port",
                self.listen_addr
            ));
        }
        match self.admin_listen_addr.parse::<std::net::SocketAddr>() {
            Err(_) => problems.push(format!(
                "adminListenAddr {:?} is not host:port",
                self.admin_listen_addr
            )),
            Ok(admin) if listen.as_ref().is_ok_and(|l| l.port() == admin.port() && admin.port() != 0) => {
                problems.push(format!(
                    "adminListenAddr {:?} must use another port than listenAddr {:?}: metrics and health stay off the Twilio-facing port",
                    self.admin_listen_addr, self.listen_addr
                ))
            }
            Ok(_) => {}
        }
        if !(self.public_url.starts_with("https://") || self.public_url.starts_with("http://")) {
            problems.push(format!(
                "publicUrl {:?} must be the http(s) URL Twilio reaches this agent at (GROKCAST_PUBLIC_URL)",
                self.public_url
            ));
        }
        if self.twilio_auth_token.is_none() && !self.insecure_skip_signature {
            problems.push(
                "no Twilio auth token: set GROKCAST_TWILIO_AUTH_TOKEN (or, for local tests only, GROKCAST_INSECURE_SKIP_SIGNATURE=true)"
                    .into(),
            );
        }
        if self.playground.enabled && self.playground_token.is_none() {
            problems.push(
                "playground.enabled needs a token: set GROKCAST_PLAYGROUND_TOKEN (from a Secret)"
                    .into(),
            );
        }
        let traces = &self.tracing;
        if !traces.endpoint.is_empty() {
            let host = traces
                .endpoint
                .strip_prefix("http://")
                .or_else(|| traces.endpoint.strip_prefix("https://"));
            if host.is_none_or(|h| h.is_empty() || h.contains(char::is_whitespace)) {
                problems.push(format!(
                    "tracing.endpoint {:?} must be an OTLP/gRPC URL such as http://otel-collector:4317",
                    traces.endpoint
                ));
            }
        }
        if !(0.0..=1.0).contains(&traces.sample_ratio) {
            problems.push(format!(
                "tracing.sampleRatio {} must be within 0..1",
                traces.sample_ratio
            ));
        }
        self.validate_tools(&mut problems);
        if self.max_calls == 0 {
            problems.push("maxCalls must be at least 1".into());
        }
        if self.slo.turn_latency_p95_ms == 0 {
            problems.push("slo.turnLatencyP95Ms must be at least 1".into());
        }
        let t = &self.turn_taking;
        if !(0.05..=0.95).contains(&t.vad_threshold) {
            problems.push(format!(
                "turnTaking.vadThreshold {} must be within 0.05..0.95",
                t.vad_threshold
            ));
        }
        if !(50..=5000).contains(&t.end_of_turn_silence_ms) {
            problems.push(format!(
                "turnTaking.endOfTurnSilenceMs {} must be within 50..5000",
                t.end_of_turn_silence_ms
            ));
        }
        if t.min_barge_in_ms > 5000 || t.min_speech_ms > 5000 {
            problems.push("turnTaking.minBargeInMs and minSpeechMs must be at most 5000".into());
        }
        if t.end_of_turn_model != EndOfTurnModel::None
            && !(50 <= t.min_end_of_turn_silence_ms
                && t.min_end_of_turn_silence_ms < t.max_end_of_turn_silence_ms
                && t.max_end_of_turn_silence_ms <= 5000)
        {
            problems.push(format!(
                "turnTaking.minEndOfTurnSilenceMs {} and maxEndOfTurnSilenceMs {} must satisfy 50 <= min < max <= 5000",
                t.min_end_of_turn_silence_ms, t.max_end_of_turn_silence_ms
            ));
        }
        if t.speculative_replies
            && t.end_of_turn_model == EndOfTurnModel::None
            && !(50 <= t.min_end_of_turn_silence_ms
                && t.min_end_of_turn_silence_ms < t.end_of_turn_silence_ms)
        {
            problems.push(format!(
                "turnTaking.speculativeReplies without a model starts replies at minEndOfTurnSilenceMs ({} ms), which must be at least 50 and below endOfTurnSilenceMs ({} ms)",
                t.min_end_of_turn_silence_ms, t.end_of_turn_silence_ms
            ));
        }
        if !(t.llm_end_of_turn_threshold > 0.0 && t.llm_end_of_turn_threshold < 1.0) {
            problems.push(format!(
                "turnTaking.llmEndOfTurnThreshold {} must be between 0 and 1 (exclusive)",
                t.llm_end_of_turn_threshold
            ));
        }
        if t.false_interruption_resume_ms > 10_000 {
            problems.push(format!(
                "turnTaking.falseInterruptionResumeMs {} must be at most 10000",
                t.false_interruption_resume_ms
            ));
        }
        if t.min_interruption_words > 10 {
            problems.push(format!(
                "turnTaking.minInterruptionWords {} must be at most 10",
                t.min_interruption_words
            ));
        }
        if t.min_interruption_words > 0 && !(100..=10_000).contains(&t.max_interruption_wait_ms) {
            problems.push(format!(
                "turnTaking.maxInterruptionWaitMs {} must be within 100..10000",
                t.max_interruption_wait_ms
            ));
        }
        if t.preemptive_tts && !t.speculative_replies {
            problems.push("turnTaking.preemptiveTts needs speculativeReplies".to_owned());
        }
        if t.max_turn_ms < 1000 || t.max_turn_ms > 60_000 {
            problems.push(format!(
                "turnTaking.maxTurnMs {} must be within 1000..60000",
                t.max_turn_ms
            ));
        }
        for (name, stage) in [
            ("stt", &self.stt.stage),
            ("llm", &self.llm.stage),
            ("tts", &self.tts.stage),
        ] {
            if stage.resolved_backend() == BackendKind::Openai
                && !(stage.url.starts_with("http://") || stage.url.starts_with("https://"))
            {
                problems.push(format!(
                    "{name}.url {:?} must be an http(s) base URL such as http://host:8000/v1",
                    stage.url
                ));
            }
            if stage.timeout_ms == 0 {
                problems.push(format!("{name}.timeoutMs must be above 0"));
            }
        }
        let streaming = &self.stt.streaming_url;
        let plain_grpc = streaming
            .strip_prefix("http://")
            .is_some_and(|host| !host.is_empty());
        if !streaming.is_empty() && !plain_grpc {
            problems.push(format!(
                "stt.streamingUrl {streaming:?} must be a plain-text gRPC URL such as http://stt:50051 (in-cluster gRPC without TLS)"
            ));
        }
        if !crate::backend::speech_audio::RATES.contains(&self.tts.sample_rate) {
            problems.push(format!(
                "tts.sampleRate {} must be within 8000..48000",
                self.tts.sample_rate
            ));
        }
        if !(0.0..=2.0).contains(&self.llm.temperature) {
            problems.push(format!(
                "llm.temperature {} must be within 0..2",
                self.llm.temperature
            ));
        }
        if self.llm.max_tokens == 0 {
            problems.push("llm.maxTokens must be at least 1".into());
        }
        if self.playback_lead_ms > 1000 {
            problems.push("playbackLeadMs must be at most 1000".into());
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(problems.join("; ")))
        }
    }

    /// The wss URL of the Media Streams endpoint, from `publicUrl`.
    pub fn stream_url(&self) -> String {
        let base = self.public_url.trim_end_matches('/');
        let base = base
            .strip_prefix("https://")
            .map(|rest| format!("wss://{rest}"))
            .or_else(|| {
                base.strip_prefix("http://")
                    .map(|rest| format!("ws://{rest}"))
            })
            .unwrap_or_else(|| base.to_string());
        format!("{base}/twilio/stream")
    }

    /// The URL of the voice webhook, from `publicUrl`.
    pub fn voice_url(&self) -> String {
        format!("{}/twilio/voice", self.public_url.trim_end_matches('/'))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    const MINIMAL: &[(&str, &str)] = &[
        ("GROKCAST_PUBLIC_URL", "https://voice.example.com"),
        ("GROKCAST_TWILIO_AUTH_TOKEN", "tok"),
    ];

    fn write(yaml: &str) -> tempfile_path::TempFile {
        tempfile_path::TempFile::new(yaml)
    }

    /// A tiny temp file helper, so the tests need no extra crate.
    mod tempfile_path {
        pub struct TempFile(pub std::path::PathBuf);
        impl TempFile {
            pub fn new(text: &str) -> Self {
                use std::sync::atomic::{AtomicUsize, Ordering};
                static N: AtomicUsize = AtomicUsize::new(0);
                let path = std::env::temp_dir().join(format!(
                    "grokcast-agent-config-{}-{}.yaml",
                    std::process::id(),
                    N.fetch_add(1, Ordering::Relaxed)
                ));
                std::fs::write(&path, text).unwrap();
                Self(path)
            }
        }
        impl Drop for TempFile {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
    }

    #[test]
    fn file_then_environment() {
        let file = write(
            "voiceAgent: receptionist\nnamespace: voice\npublicUrl: https://a.example.com\n\
             persona: {greeting: Hi there}\nllm: {url: 'http://vllm:8000/v1', model: gemma-3-27b, maxTokens: 120}\n\
             turnTaking: {endOfTurnSilenceMs: 400, bargeIn: false}\n",
        );
        let c = AgentConfig::load(
            Some(&file.0),
            &env(&[
                ("GROKCAST_TWILIO_AUTH_TOKEN", "tok"),
                ("GROKCAST_END_OF_TURN_SILENCE_MS", "250"),
                ("GROKCAST_LLM_MODEL", "override"),
            ]),
        )
        .unwrap();
        assert_eq!(c.voice_agent, "receptionist");
        assert_eq!(c.persona.greeting, "Hi there");
        assert_eq!(c.llm.stage.url, "http://vllm:8000/v1");
        assert_eq!(c.llm.stage.model, "override");
        assert_eq!(c.llm.max_tokens, 120);
        assert_eq!(c.llm.stage.resolved_backend(), BackendKind::Openai);
        assert_eq!(c.stt.stage.resolved_backend(), BackendKind::Embedded);
        assert_eq!(c.turn_taking.end_of_turn_silence_ms, 250);
        assert!(!c.turn_taking.barge_in);
        assert_eq!(
            c.twilio_auth_token.as_ref().map(Secret::expose),
            Some("tok")
        );
        let printed = format!("{c:?}");
        assert!(
            !printed.contains("tok\"") && printed.contains("[redacted]"),
            "the token is never printed: {printed}"
        );
    }

    #[test]
    fn every_documented_variable_is_read() {
        // A value every setter accepts (numbers parse, booleans parse, backends parse).
        for (var, _, set) in ENV_VARS {
            let mut c = AgentConfig::default();
            let value = match *var {
                v if v.ends_with("_BACKEND") => "openai",
                "GROKCAST_INSECURE_SKIP_SIGNATURE"
                | "GROKCAST_LOG_TRANSCRIPTS"
                | "GROKCAST_SPECULATIVE_REPLIES"
                | "GROKCAST_PREEMPTIVE_TTS"
                | "GROKCAST_PLAYGROUND_ENABLED" => "true",
                "GROKCAST_BARGE_IN" => "false",
                "GROKCAST_TTS_RESPONSE_FORMAT" => "wav",
                "GROKCAST_END_OF_TURN_MODEL" => "smart-turn",
                "GROKCAST_VAD_THRESHOLD"
                | "GROKCAST_LLM_TEMPERATURE"
                | "GROKCAST_LLM_END_OF_TURN_THRESHOLD"
                | "GROKCAST_TRACING_SAMPLE_RATIO" => "0.3",
                v if v.ends_with("_MS")
                    || v.ends_with("_SECONDS")
                    || v.ends_with("_CALLS")
                    || v.ends_with("_TOKENS")
                    || v.ends_with("_RATE")
                    || v.ends_with("_WORDS") =>
                {
                    "123"
                }
                _ => "value",
            };
            set(&mut c, value).unwrap_or_else(|e| panic!("{var}: {e}"));
            assert_ne!(c, AgentConfig::default(), "{var} changed nothing");
        }
    }

    #[test]
    fn traces_need_an_otlp_url_and_a_ratio_within_0_and_1() {
        let load = |endpoint: &'static str, ratio: &'static str| {
            let mut vars = MINIMAL.to_vec();
            vars.push(("GROKCAST_TRACING_ENDPOINT", endpoint));
            vars.push(("GROKCAST_TRACING_SAMPLE_RATIO", ratio));
            AgentConfig::load(None, &env(&vars))
        };
        let c = load(" http://otel-collector.observability:4317 ", "0.25").unwrap();
        assert_eq!(
            c.tracing.endpoint,
            "http://otel-collector.observability:4317"
        );
        assert_eq!(c.tracing.sample_ratio, 0.25);
        // Off by default, and an empty endpoint turns it off whatever the ratio.
        assert!(
            AgentConfig::load(None, &env(MINIMAL))
                .unwrap()
                .tracing
                .endpoint
                .is_empty()
        );
        load("", "1").unwrap();
        for bad in [
            "otel-collector:4317",
            "grpc://collector:4317",
            "http://",
            "https://a b",
        ] {
            let e = load(bad, "1").unwrap_err().to_string();
            assert!(
                e.contains("tracing.endpoint") && e.contains("OTLP"),
                "{bad}: {e}"
            );
        }
        for bad in ["1.5", "-0.1", "NaN"] {
            let e = load("http://collector:4317", bad).unwrap_err().to_string();
            assert!(e.contains("tracing.sampleRatio"), "{bad}: {e}");
        }
        let e = load("http://collector:4317", "often")
            .unwrap_err()
            .to_string();
        assert!(e.contains("GROKCAST_TRACING_SAMPLE_RATIO"), "{e}");
    }

    #[test]
    fn minimal_environment_is_enough() {
        let c = AgentConfig::load(None, &env(MINIMAL)).unwrap();
        assert_eq!(c.stream_url(), "wss://voice.example.com/twilio/stream");
        assert_eq!(c.voice_url(), "https://voice.example.com/twilio/voice");
    }

    #[test]
    fn missing_token_is_refused_unless_explicitly_insecure() {
        let err = AgentConfig::load(
            None,
            &env(&[("GROKCAST_PUBLIC_URL", "https://x.example.com")]),
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("GROKCAST_TWILIO_AUTH_TOKEN"),
            "{err}"
        );
        let c = AgentConfig::load(
            None,
            &env(&[
                ("GROKCAST_PUBLIC_URL", "https://x.example.com"),
                ("GROKCAST_INSECURE_SKIP_SIGNATURE", "true"),
            ]),
        )
        .unwrap();
        assert!(c.insecure_skip_signature);
    }

    #[test]
    fn the_playground_needs_its_token_and_never_prints_it() {
        let on = [MINIMAL, &[("GROKCAST_PLAYGROUND_ENABLED", "true")]].concat();
        let err = AgentConfig::load(None, &env(&on)).unwrap_err();
        assert!(
            err.to_string().contains("GROKCAST_PLAYGROUND_TOKEN"),
            "{err}"
        );
        let with_token = [&on[..], &[("GROKCAST_PLAYGROUND_TOKEN", "open-sesame")]].concat();
        let c = AgentConfig::load(None, &env(&with_token)).unwrap();
        assert!(c.playground.enabled);
        assert_eq!(
            c.playground_token.as_ref().map(Secret::expose),
            Some("open-sesame")
        );
        assert!(!format!("{c:?}").contains("open-sesame"));
        // Off by default, and a token alone does not turn it on.
        let c = AgentConfig::load(
            None,
            &env(&[MINIMAL, &[("GROKCAST_PLAYGROUND_TOKEN", "t")]].concat()),
        )
        .unwrap();
        assert!(!c.playground.enabled);
    }

    #[test]
    fn a_streaming_stt_url_is_plain_grpc_and_optional() {
        let c = AgentConfig::load(None, &env(MINIMAL)).unwrap();
        assert!(
            c.stt.streaming_url.is_empty(),
            "no streaming unless asked for"
        );
        let mut vars = MINIMAL.to_vec();
        vars.push((
            "GROKCAST_STT_STREAMING_URL",
            "http://whisper.voice.svc:50051",
        ));
        let c = AgentConfig::load(None, &env(&vars)).unwrap();
        assert_eq!(c.stt.streaming_url, "http://whisper.voice.svc:50051");
        for bad in ["https://stt:50051", "stt:50051", "http://"] {
            let mut vars = MINIMAL.to_vec();
            vars.push(("GROKCAST_STT_STREAMING_URL", bad));
            let err = AgentConfig::load(None, &env(&vars))
                .unwrap_err()
                .to_string();
            assert!(err.contains("stt.streamingUrl"), "{bad}: {err}");
        }
    }

    #[test]
    fn bad_values_name_the_variable_or_key() {
        let mut vars = MINIMAL.to_vec();
        vars.push(("GROKCAST_MAX_CALLS", "lots"));
        let err = AgentConfig::load(None, &env(&vars)).unwrap_err();
        assert!(
            err.to_string().contains("GROKCAST_MAX_CALLS=\"lots\""),
            "{err}"
        );

        let mut vars = MINIMAL.to_vec();
        vars.extend([
            ("GROKCAST_END_OF_TURN_SILENCE_MS", "10"),
            ("GROKCAST_STT_BACKEND", "openai"),
        ]);
        let err = AgentConfig::load(None, &env(&vars))
            .unwrap_err()
            .to_string();
        assert!(err.contains("endOfTurnSilenceMs 10"), "{err}");
        assert!(err.contains("stt.url"), "both problems are reported: {err}");

        let file = write("turnTaking: {endOfTurnSilence: 300}\n");
        let err = AgentConfig::load(Some(&file.0), &env(MINIMAL))
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `endOfTurnSilence`"), "{err}");

        let err = AgentConfig::load(Some(Path::new("/nonexistent/agent.yaml")), &env(MINIMAL))
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/agent.yaml"), "{err}");
    }

    #[test]
    fn tools_are_checked_and_the_api_key_comes_whole_from_the_environment() {
        let llm = "llm: {backend: openai, url: 'http://vllm:8000/v1'}\n";
        let tools = "tools:\n  endCall: {enabled: true}\n  transferCall:\n    enabled: true\n    targets: [{name: sales, to: '+15551230000'}]\n  http: [{name: lookup, description: d, url: 'http://x:1/y'}]\n";
        let file = write(&format!("{llm}{tools}"));
        let key = [
            ("GROKCAST_TWILIO_ACCOUNT_SID", "AC0123"),
            ("GROKCAST_TWILIO_API_KEY_SID", "SK0123"),
            ("GROKCAST_TWILIO_API_KEY_SECRET", "key-secret"),
        ];
        let vars = [MINIMAL, &key[..]].concat();
        let c = AgentConfig::load(Some(&file.0), &env(&vars)).unwrap();
        assert!(c.tools.any());
        assert_eq!(c.tools.http[0].timeout_ms, 3000);
        assert!(
            !format!("{c:?}").contains("key-secret"),
            "the key's secret is redacted"
        );
        // A transfer needs the key, all of it.
        let err = AgentConfig::load(Some(&file.0), &env(&[MINIMAL, &key[..2]].concat()))
            .unwrap_err()
            .to_string();
        assert!(err.contains("together"), "{err}");
        assert!(
            err.contains("tools.transferCall needs a Twilio API key"),
            "{err}"
        );
        // Tools with the embedded model, a bad target, a taken name, a bad schema.
        let bad = write(&format!("{tools}  sendDtmf: {{enabled: true}}\n",));
        let err = AgentConfig::load(Some(&bad.0), &env(&vars))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("tools need an LLM server that calls tools"),
            "{err}"
        );
        let bad = write(&format!(
            "{llm}tools:\n  transferCall: {{enabled: true, targets: [{{name: sales, to: '555-1234'}}]}}\n  http:\n  - {{name: end_call, description: d, url: 'http://x:1/y'}}\n  - {{name: ok, description: d, url: 'ftp://x/y', parameters: {{type: string}}, timeoutMs: 10}}\n"
        ));
        let err = AgentConfig::load(Some(&bad.0), &env(&vars))
            .unwrap_err()
            .to_string();
        for says in [
            "to \"555-1234\" must be an E.164 number",
            "\"end_call\" is taken",
            "url \"ftp://x/y\" must be http(s)",
            "parameters must be a JSON Schema of type object",
            "timeoutMs 10 must be within 100..30000",
        ] {
            assert!(err.contains(says), "{says}: {err}");
        }
    }

    #[test]
    fn speculative_replies_start_at_the_short_pause_and_are_checked() {
        let c = AgentConfig::load(None, &env(MINIMAL)).unwrap();
        assert_eq!(
            c.turn_taking.turn_taking().speculate_after,
            None,
            "off by default"
        );
        let file = write("turnTaking: {speculativeReplies: true}\n");
        let c = AgentConfig::load(Some(&file.0), &env(MINIMAL)).unwrap();
        assert_eq!(
            c.turn_taking.turn_taking().speculate_after,
            Some(Duration::from_millis(200))
        );
        // With a model, the model's pause is where the reply starts.
        let file = write("turnTaking: {speculativeReplies: true, endOfTurnModel: smart-turn}\n");
        let c = AgentConfig::load(Some(&file.0), &env(MINIMAL)).unwrap();
        assert_eq!(c.turn_taking.turn_taking().speculate_after, None);
        assert!(c.turn_taking.turn_taking().semantic.is_some());

        let file = write("turnTaking: {speculativeReplies: true, endOfTurnSilenceMs: 200}\n");
        let err = AgentConfig::load(Some(&file.0), &env(MINIMAL))
            .unwrap_err()
            .to_string();
        assert!(err.contains("below endOfTurnSilenceMs (200 ms)"), "{err}");
        let file = write("turnTaking: {preemptiveTts: true}\n");
        let err = AgentConfig::load(Some(&file.0), &env(MINIMAL))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("preemptiveTts needs speculativeReplies"),
            "{err}"
        );
    }

    #[test]
    fn metrics_and_health_listen_on_a_port_of_their_own() {
        let c = AgentConfig::load(None, &env(MINIMAL)).unwrap();
        assert_eq!(
            (c.listen_addr.as_str(), c.admin_listen_addr.as_str()),
            ("0.0.0.0:8080", "0.0.0.0:9090")
        );
        let file = write("adminListenAddr: 127.0.0.1:9191\n");
        let c = AgentConfig::load(Some(&file.0), &env(MINIMAL)).unwrap();
        assert_eq!(c.admin_listen_addr, "127.0.0.1:9191");

        let mut vars = MINIMAL.to_vec();
        vars.push(("GROKCAST_ADMIN_LISTEN_ADDR", "0.0.0.0:8080"));
        let err = AgentConfig::load(None, &env(&vars))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("must use another port than listenAddr"),
            "{err}"
        );
        let mut vars = MINIMAL.to_vec();
        vars.push(("GROKCAST_ADMIN_LISTEN_ADDR", "metrics"));
        let err = AgentConfig::load(None, &env(&vars))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("adminListenAddr \"metrics\" is not host:port"),
            "{err}"
        );
    }

    #[test]
    fn the_end_of_turn_model_is_off_unless_named_and_its_pauses_are_checked() {
        let c = AgentConfig::load(None, &env(MINIMAL)).unwrap();
        assert_eq!(c.turn_taking.end_of_turn_model, EndOfTurnModel::None);
        assert_eq!(
            c.turn_taking.turn_taking().semantic,
            None,
            "today's behaviour"
        );

        let file = write(
            "turnTaking: {endOfTurnModel: smart-turn, minEndOfTurnSilenceMs: 150, maxEndOfTurnSilenceMs: 1500}\n",
        );
        let c = AgentConfig::load(Some(&file.0), &env(MINIMAL)).unwrap();
        assert_eq!(
            c.turn_taking.turn_taking().semantic,
            Some(SemanticEndpointing {
                min_silence: Duration::from_millis(150),
                max_silence: Duration::from_millis(1500),
            })
        );

        let mut vars = MINIMAL.to_vec();
        vars.push(("GROKCAST_END_OF_TURN_MODEL", "smart-turn"));
        vars.push(("GROKCAST_MAX_END_OF_TURN_SILENCE_MS", "100"));
        let err = AgentConfig::load(None, &env(&vars))
            .unwrap_err()
            .to_string();
        assert!(err.contains("maxEndOfTurnSilenceMs 100"), "{err}");

        let mut vars = MINIMAL.to_vec();
        vars.push(("GROKCAST_END_OF_TURN_MODEL", "livekit"));
        let err = AgentConfig::load(None, &env(&vars))
            .unwrap_err()
            .to_string();
        assert!(err.contains("not none, smart-turn or llm"), "{err}");

        let file = write("turnTaking: {endOfTurnModel: llm, llmEndOfTurnThreshold: 0.3}\n");
        let c = AgentConfig::load(Some(&file.0), &env(MINIMAL)).unwrap();
        assert_eq!(c.turn_taking.end_of_turn_model, EndOfTurnModel::Llm);
        assert_eq!(c.turn_taking.llm_end_of_turn_threshold, 0.3);
        assert!(c.turn_taking.turn_taking().semantic.is_some());
        for bad in ["0", "1", "-0.5", "NaN"] {
            let mut vars = MINIMAL.to_vec();
            vars.push(("GROKCAST_LLM_END_OF_TURN_THRESHOLD", bad));
            let err = AgentConfig::load(None, &env(&vars))
                .unwrap_err()
                .to_string();
            assert!(err.contains("llmEndOfTurnThreshold"), "{bad}: {err}");
        }
    }

    #[test]
    fn the_slo_comes_from_the_file_and_zero_is_refused() {
        let c = AgentConfig::load(None, &env(MINIMAL)).unwrap();
        assert_eq!(c.slo.turn_latency_p95(), Duration::from_millis(800));
        let file = write("slo: {turnLatencyP95Ms: 450}\n");
        let c = AgentConfig::load(Some(&file.0), &env(MINIMAL)).unwrap();
        assert_eq!(c.slo.turn_latency_p95(), Duration::from_millis(450));
        let file = write("slo: {turnLatencyP95Ms: 0}\n");
        let err = AgentConfig::load(Some(&file.0), &env(MINIMAL))
            .unwrap_err()
            .to_string();
        assert!(err.contains("slo.turnLatencyP95Ms"), "{err}");
    }

    #[test]
    fn the_speech_format_is_pcm_unless_set() {
        let c = AgentConfig::load(None, &env(MINIMAL)).unwrap();
        assert_eq!(c.tts.response_format, ResponseFormat::Pcm);
        let file = write("tts: {responseFormat: wav, sampleRate: 22050}\n");
        let c = AgentConfig::load(Some(&file.0), &env(MINIMAL)).unwrap();
        assert_eq!(c.tts.response_format, ResponseFormat::Wav);
        assert_eq!(c.tts.sample_rate, 22_050);
        let file = write("tts: {responseFormat: mp3}\n");
        let err = AgentConfig::load(Some(&file.0), &env(MINIMAL))
            .unwrap_err()
            .to_string();
        assert!(err.contains("mp3"), "{err}");
    }

    #[test]
    fn secrets_are_never_read_from_the_file() {
        let file = write("twilioAuthToken: leaked\n");
        assert!(AgentConfig::load(Some(&file.0), &env(MINIMAL)).is_err());
    }
}
