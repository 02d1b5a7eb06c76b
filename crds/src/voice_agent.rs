//! `VoiceAgent`: a fleet of agent pods answering one phone experience.

// `printcolumn(...)` repeats `type_ = ...` by design; clippy reads it as a duplicate.
#![allow(clippy::duplicated_attributes)]

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ResourceRequirements, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::SecretKeyRef;

/// Desired state of a VoiceAgent.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "grokcast.io",
    version = "v1alpha1",
    kind = "VoiceAgent",
    plural = "voiceagents",
    namespaced,
    status = "VoiceAgentStatus",
    shortname = "va",
    category = "grokcast",
    derive = "PartialEq",
    doc = "A fleet of agent pods answering one phone experience: Twilio calls in, speech to \
           text, an LLM and text to speech served by ModelPools, with a per-turn latency SLO.",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(
        name = "READY",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(name = "REPLICAS", type_ = "integer", json_path = ".status.replicas"),
    printcolumn(name = "CALLS", type_ = "integer", json_path = ".status.activeCalls"),
    printcolumn(
        name = "P95",
        type_ = "number",
        json_path = ".status.autoscaling.turnLatencyP95Ms",
        description = "Observed p95 turn latency in milliseconds"
    ),
    printcolumn(
        name = "SLO",
        type_ = "integer",
        json_path = ".spec.slo.turnLatencyP95Ms",
        description = "p95 turn latency objective in milliseconds"
    ),
    printcolumn(
        name = "AGE",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(
    validation = Rule::new("!has(self.scaling) || self.scaling.targetCallsPerPod <= self.telephony.maxConcurrentCallsPerPod")
        .message("scaling.targetCallsPerPod must not exceed telephony.maxConcurrentCallsPerPod"),
    validation = Rule::new("!has(self.tools) || !has(self.tools.transferCall) || !self.tools.transferCall.enabled || has(self.telephony.twilio.apiKeySecretRef)")
        .message("tools.transferCall needs telephony.twilio.apiKeySecretRef: a transfer is a REST update of the call")
)]
#[serde(rename_all = "camelCase")]
pub struct VoiceAgentSpec {
    /// How calls reach the agent.
    pub telephony: TelephonySpec,
    /// The browser playground at `<publicUrl>/playground`, off unless enabled.
    #[serde(default)]
    pub playground: PlaygroundSpec,
    /// What the agent says and how it behaves.
    #[serde(default)]
    pub persona: PersonaSpec,
    /// Speech-to-text stage.
    pub stt: SttSpec,
    /// Language-model stage.
    pub llm: LlmSpec,
    /// Text-to-speech stage.
    pub tts: TtsSpec,
    /// Voice activity detection, end of turn and barge-in.
    #[serde(default)]
    pub turn_taking: TurnTakingSpec,
    /// Per-turn latency objective the autoscaler keeps.
    #[serde(default)]
    pub slo: SloSpec,
    /// OpenTelemetry traces of calls: one trace per call, one span per turn with its stages.
    /// Unset: no traces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracing: Option<TracingSpec>,
    /// Tools the LLM may call to act on the call: hang up, transfer, press keys, or ask an
    /// HTTP endpoint of yours. Each is off unless enabled; the LLM pool must call tools
    /// (vLLM with `--enable-auto-tool-choice` and a tool-call parser).
    #[serde(default, skip_serializing_if = "ToolsSpec::is_empty")]
    pub tools: ToolsSpec,
    /// Bounds for the autoscaler. Unset means fixed `replicas`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scaling: Option<AgentScaling>,
    /// Agent pods while `scaling` is unset. The `/scale` subresource writes it.
    #[serde(default = "default_agent_replicas")]
    #[schemars(range(min = 0))]
    pub replicas: i32,
    /// Agent image. Unset means the operator's default agent image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Longest a pod waits for live calls to end after it is asked to stop, in seconds.
    #[serde(default = "default_drain_seconds")]
    #[schemars(range(min = 0, max = 3600))]
    pub drain_timeout_seconds: i32,
    /// CPU and memory for the agent container. Unset uses 500m/256Mi requests, 1Gi limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Node labels the agent pods must match.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Tolerations for the agent pods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
}

fn default_agent_replicas() -> i32 {
    2
}

fn default_drain_seconds() -> i32 {
    600
}

/// Telephony settings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TelephonySpec {
    /// Twilio Programmable Voice with Media Streams.
    pub twilio: TwilioSpec,
    /// Calls one pod takes before answering busy.
    #[serde(default = "default_max_calls")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_concurrent_calls_per_pod: i32,
}

fn default_max_calls() -> i32 {
    50
}

/// Twilio settings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TwilioSpec {
    /// Secret key with the Twilio auth token that signs webhooks; checked on every request.
    pub auth_token_secret_ref: SecretKeyRef,
    /// Public HTTPS base URL Twilio reaches the agents at (through your ingress). The voice
    /// webhook is `<publicUrl>/twilio/voice`; Twilio signs requests against this URL.
    #[schemars(regex(pattern = r"^https://[^/\s]+(/[^\s]*)?$"))]
    pub public_url: String,
    /// A Secret holding a Twilio API key, for the REST updates that hang up (`end_call`)
    /// and transfer (`transfer_call`) live calls. Unset: `end_call` hangs up by closing the
    /// stream, and `transfer_call` cannot be enabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_secret_ref: Option<TwilioApiKeyRef>,
}

/// A Secret with a Twilio API key: the account's SID, the key's SID and its secret, each
/// under its own key. Use an API key, not the auth token: it can be revoked on its own.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TwilioApiKeyRef {
    /// Name of the Secret, in the VoiceAgent's namespace.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key holding the account SID (`AC...`).
    #[serde(default = "default_account_sid_key")]
    #[schemars(length(min = 1, max = 253))]
    pub account_sid_key: String,
    /// Key holding the API key's SID (`SK...`).
    #[serde(default = "default_key_sid_key")]
    #[schemars(length(min = 1, max = 253))]
    pub key_sid_key: String,
    /// Key holding the API key's secret.
    #[serde(default = "default_key_secret_key")]
    #[schemars(length(min = 1, max = 253))]
    pub key_secret_key: String,
}

fn default_account_sid_key() -> String {
    "accountSid".into()
}

fn default_key_sid_key() -> String {
    "apiKeySid".into()
}

fn default_key_secret_key() -> String {
    "apiKeySecret".into()
}

/// Tools the LLM may call on a live call.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ToolsSpec {
    /// `end_call`: the agent says goodbye, and the call ends once the goodbye has played.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_call: Option<ToolSwitch>,
    /// `transfer_call`: the call goes to one of `targets` (by a `<Dial>` REST update).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer_call: Option<TransferCallSpec>,
    /// `send_dtmf`: the agent presses keys (tones in the call's audio), for menus at the far end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub send_dtmf: Option<ToolSwitch>,
    /// Tools answered by your HTTP endpoints.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub http: Vec<HttpToolSpec>,
}

impl ToolsSpec {
    /// Whether nothing is set (left out of the written spec).
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// Whether any tool is offered to the LLM.
    pub fn any(&self) -> bool {
        let on = |t: &Option<ToolSwitch>| t.as_ref().is_some_and(|t| t.enabled);
        on(&self.end_call)
            || on(&self.send_dtmf)
            || self.transfer_call.as_ref().is_some_and(|t| t.enabled)
            || !self.http.is_empty()
    }
}

/// A built-in tool's switch.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ToolSwitch {
    /// Offer the tool to the LLM.
    #[serde(default)]
    pub enabled: bool,
}

/// The `transfer_call` tool.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[x_kube(
    validation = Rule::new("!self.enabled || size(self.targets) > 0 || self.allowCallerNumbers")
        .message("transferCall needs targets (or allowCallerNumbers)")
)]
#[serde(rename_all = "camelCase")]
pub struct TransferCallSpec {
    /// Offer the tool to the LLM.
    #[serde(default)]
    pub enabled: bool,
    /// Where calls may go; the LLM picks one by name.
    #[serde(default)]
    #[schemars(length(max = 32))]
    pub targets: Vec<TransferTargetSpec>,
    /// Also dial a number the LLM passes (one the caller dictated). Off, a caller cannot talk
    /// the agent into dialling anywhere but `targets` (toll fraud).
    #[serde(default)]
    pub allow_caller_numbers: bool,
}

/// One place calls may be transferred to.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TransferTargetSpec {
    /// The name the LLM uses, such as `sales`.
    #[schemars(regex(pattern = r"^[A-Za-z0-9_-]{1,64}$"))]
    pub name: String,
    /// An E.164 number (`+15551230000`) or a SIP URI (`sip:desk@pbx.example.com`).
    #[schemars(regex(pattern = r"^(\+[1-9][0-9]{6,14}|sips?:[^@\s\x22'<>]+@[^\s\x22'<>]+)$"))]
    pub to: String,
    /// When to pick it, for the LLM.
    #[serde(default)]
    #[schemars(length(max = 500))]
    pub description: String,
}

/// A tool answered by an HTTP endpoint: the LLM's arguments are POSTed to `url` as a JSON
/// object, and the response body (JSON or text, its first 4 KiB) is the LLM's result.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HttpToolSpec {
    /// The function's name (not `end_call`, `transfer_call` or `send_dtmf`).
    #[schemars(regex(pattern = r"^[A-Za-z0-9_-]{1,64}$"))]
    pub name: String,
    /// What it does and when to call it, for the LLM.
    #[schemars(length(max = 1000))]
    pub description: String,
    /// Where the arguments are POSTed.
    #[schemars(regex(pattern = r"^https?://[^/\s]+(/[^\s]*)?$"))]
    pub url: String,
    /// A JSON Schema (type object) of the arguments. Unset: no arguments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "json_object_schema")]
    pub parameters: Option<serde_json::Value>,
    /// Longest wait for the endpoint, in milliseconds; past it the LLM hears it timed out.
    #[serde(default = "default_tool_timeout")]
    #[schemars(range(min = 100, max = 30000))]
    pub timeout_ms: i32,
}

fn default_tool_timeout() -> i32 {
    3000
}

/// Any JSON object, kept as written (a JSON Schema for the LLM, not checked by Kubernetes).
fn json_object_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
        "description": "A JSON Schema (type object) of the arguments. Unset: no arguments.",
    })
}

/// The browser playground: a page on the agents' public URL where the people who tune prompts
/// and voices talk to the agent from a browser, through the same pipeline as a phone call,
/// with live transcripts and each turn's latency. Sessions take the pods' call slots.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[x_kube(
    validation = Rule::new("!self.enabled || has(self.tokenSecretRef)")
        .message("playground.enabled needs tokenSecretRef")
)]
#[serde(rename_all = "camelCase")]
pub struct PlaygroundSpec {
    /// Serve `<publicUrl>/playground` and its socket; off, both answer 404.
    #[serde(default)]
    pub enabled: bool,
    /// Secret key with the token the page must present to open a session (without it: 401).
    /// Needed when enabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_secret_ref: Option<SecretKeyRef>,
}

/// Where the agents send their call traces, and how many.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TracingSpec {
    /// OTLP/gRPC endpoint of an OpenTelemetry collector (or Tempo, Jaeger), such as
    /// `http://otel-collector.observability:4317`. `https://` checks the server against the
    /// agent image's trust store.
    #[schemars(regex(pattern = r"^https?://[^/\s]+/?$"))]
    pub otlp_endpoint: String,
    /// Share of calls traced, from 0 to 1; a call is traced whole or not at all.
    #[serde(default = "default_sample_ratio")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub sample_ratio: f64,
}

fn default_sample_ratio() -> f64 {
    1.0
}

/// Prompt and greeting.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PersonaSpec {
    /// System prompt sent to the LLM at the start of each conversation.
    #[serde(default)]
    pub system_prompt: String,
    /// Spoken when the call connects. Empty means the agent waits for the caller.
    #[serde(default)]
    pub greeting: String,
}

/// Speech-to-text stage: a ModelPool in the namespace or an external endpoint.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(
    validation = Rule::new("has(self.modelPoolRef) != has(self.endpoint)")
        .message("stt needs exactly one of modelPoolRef and endpoint"),
    validation = Rule::new("!has(self.streamingEndpoint) || has(self.endpoint)")
        .message("stt.streamingEndpoint goes with stt.endpoint; a ModelPool's comes from the pool"),
    validation = Rule::new("!has(self.endpoint) || !has(self.protocol) || self.protocol != 'riva' || has(self.streamingEndpoint)")
        .message("stt.protocol riva with an external endpoint needs stt.streamingEndpoint")
)]
#[serde(rename_all = "camelCase")]
pub struct SttSpec {
    /// Name of a ModelPool with role stt in this namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_pool_ref: Option<String>,
    /// Base URL of an external OpenAI-compatible server, e.g. `http://stt.example:8000/v1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^https?://"))]
    pub endpoint: Option<String>,
    /// Model name to request. Unset means the pool's `model` (required with `endpoint`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// ISO-639-1 language of the callers, e.g. `en`.
    #[serde(default = "default_language")]
    #[schemars(regex(pattern = r"^[a-z]{2,3}$"))]
    pub language: String,
    /// How the agent transcribes. `riva`: the caller's audio streams over gRPC (NVIDIA
    /// Riva's `StreamingRecognize`) while they speak, and the transcript is ready as the turn
    /// ends; a turn whose stream fails is sent in one OpenAI request instead. `openai`: each
    /// finished utterance in one request. Unset: `riva` when the pool serves it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<SttProtocol>,
    /// gRPC URL of an external Riva-protocol server (`http://host:50051`, plain-text gRPC),
    /// with `endpoint` for the fallback requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^http://[^/]+$"))]
    pub streaming_endpoint: Option<String>,
}

/// How the agent sends callers' speech to STT.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum SttProtocol {
    /// One OpenAI transcription request per finished utterance.
    Openai,
    /// Streaming over gRPC with NVIDIA Riva's `StreamingRecognize`, falling back to OpenAI
    /// requests for turns whose stream fails.
    Riva,
}

fn default_language() -> String {
    "en".into()
}

/// Language-model stage.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(
    validation = Rule::new("has(self.modelPoolRef) != has(self.endpoint)")
        .message("llm needs exactly one of modelPoolRef and endpoint")
)]
#[serde(rename_all = "camelCase")]
pub struct LlmSpec {
    /// Name of a ModelPool with role llm in this namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_pool_ref: Option<String>,
    /// Base URL of an external OpenAI-compatible server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^https?://"))]
    pub endpoint: Option<String>,
    /// Model name to request. Unset means the pool's `model` (required with `endpoint`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Sampling temperature.
    #[serde(default = "default_temperature")]
    #[schemars(range(min = 0.0, max = 2.0))]
    pub temperature: f64,
    /// Most tokens per reply; short replies keep turns fast.
    #[serde(default = "default_max_tokens")]
    #[schemars(range(min = 1, max = 8192))]
    pub max_tokens: i32,
}

fn default_temperature() -> f64 {
    0.6
}

fn default_max_tokens() -> i32 {
    200
}

/// Text-to-speech stage.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(
    validation = Rule::new("has(self.modelPoolRef) != has(self.endpoint)")
        .message("tts needs exactly one of modelPoolRef and endpoint")
)]
#[serde(rename_all = "camelCase")]
pub struct TtsSpec {
    /// Name of a ModelPool with role tts in this namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_pool_ref: Option<String>,
    /// Base URL of an external OpenAI-compatible server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^https?://"))]
    pub endpoint: Option<String>,
    /// Model name to request. Unset means the pool's `model` (required with `endpoint`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Voice name passed to the speech API. Empty means the server's default voice.
    #[serde(default)]
    pub voice: String,
}

/// Turn-taking settings.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(
    validation = Rule::new("self.minEndOfTurnSilenceMs < self.maxEndOfTurnSilenceMs")
        .message("turnTaking.minEndOfTurnSilenceMs must be below maxEndOfTurnSilenceMs"),
    validation = Rule::new("!self.preemptiveTts || self.speculativeReplies")
        .message("turnTaking.preemptiveTts needs speculativeReplies"),
    validation = Rule::new(
        "!self.speculativeReplies || self.endOfTurnModel != 'none' || self.minEndOfTurnSilenceMs < self.endOfTurnSilenceMs"
    )
    .message("turnTaking.speculativeReplies without a model starts replies at minEndOfTurnSilenceMs, which must be below endOfTurnSilenceMs"),
)]
#[serde(rename_all = "camelCase")]
pub struct TurnTakingSpec {
    /// Silero VAD speech probability above which a frame counts as speech.
    #[serde(default = "default_vad_threshold")]
    #[schemars(range(min = 0.05, max = 0.95))]
    pub vad_threshold: f64,
    /// Silence after speech that ends the caller's turn, in milliseconds.
    #[serde(default = "default_end_of_turn")]
    #[schemars(range(min = 100, max = 3000))]
    pub end_of_turn_silence_ms: i32,
    /// Let the caller interrupt the agent.
    #[serde(default = "default_true")]
    pub barge_in: bool,
    /// Caller speech needed to interrupt, in milliseconds; shorter noises do not interrupt.
    #[serde(default = "default_min_barge_in")]
    #[schemars(range(min = 0, max = 2000))]
    pub min_barge_in_ms: i32,
    /// A model that judges, at each pause of the caller, whether the utterance is complete:
    /// it ends a complete one after `minEndOfTurnSilenceMs` and lets an unfinished one ("my
    /// number is... 555...") go on for up to `maxEndOfTurnSilenceMs`. `smart-turn` (Smart
    /// Turn v3.2, on the agent pod's CPU) hears the audio; `llm` has the agent's LLM pool
    /// read the caller's words so far after the conversation (best with `stt.protocol:
    /// riva`, whose interim transcripts are ready at the pause). `none` ends every turn
    /// after `endOfTurnSilenceMs` of silence.
    #[serde(default)]
    pub end_of_turn_model: EndOfTurnModel,
    /// With a model: the shortest pause, in milliseconds, that ends a complete utterance
    /// (the model is asked as soon as the pause begins, so its answer is usually in by then).
    #[serde(default = "default_min_end_of_turn")]
    #[schemars(range(min = 50, max = 2000))]
    pub min_end_of_turn_silence_ms: i32,
    /// With a model: the pause, in milliseconds, that ends the turn whatever the model says.
    #[serde(default = "default_max_end_of_turn")]
    #[schemars(range(min = 300, max = 5000))]
    pub max_end_of_turn_silence_ms: i32,
    /// With `endOfTurnModel: llm`: the probability, from the LLM's next-token logprobs, that
    /// the caller's turn ends after their words, at or above which a pause ends it. Lower
    /// answers sooner and cuts off more.
    #[serde(default = "default_llm_end_of_turn_threshold")]
    #[schemars(range(min = 0.01, max = 0.99))]
    pub llm_end_of_turn_threshold: f64,
    /// Start the reply (STT and the LLM) at the first pause that may end the turn: the
    /// model's pause, or `minEndOfTurnSilenceMs` of silence without a model. When the turn
    /// ends in that pause the reply is used, so the model time overlaps the rest of the
    /// silence; when the caller goes on it is cancelled. Costs an extra STT and LLM request
    /// per cancelled pause.
    #[serde(default)]
    pub speculative_replies: bool,
    /// With `speculativeReplies`: synthesise the reply's first clause before the turn is
    /// over too (it plays only once the turn has ended). Costs a TTS request per cancelled
    /// pause.
    #[serde(default)]
    pub preemptive_tts: bool,
    /// When the caller's sound stops the agent but STT finds no words in it within this
    /// many milliseconds of its end (a cough, a door), the agent speaks again the clause it
    /// was cut in and the rest it had queued. 0 never resumes.
    #[serde(default = "default_false_interruption_resume")]
    #[schemars(range(min = 0, max = 10000))]
    pub false_interruption_resume_ms: i32,
    /// Words and phrases that, said alone over the agent, only show the caller is listening
    /// ("uh-huh", "okay"): like a sound with no words, the agent resumes what it was saying
    /// instead of answering them. Matched whole, case and punctuation aside.
    #[serde(default = "default_backchannels")]
    pub backchannels: Vec<String>,
    /// With streaming transcription (`stt.protocol: riva`): the words, besides
    /// backchannels, that the caller's speech over the agent must say (in its interim
    /// transcripts) before it stops the agent; "uh-huh" and a cough then never do. Speech
    /// held this way that ends first is answered only if its transcript has the words (or
    /// the agent has finished talking). 0 stops the agent on `minBargeInMs` of speech
    /// alone, as without streaming transcription.
    #[serde(default = "default_min_interruption_words")]
    #[schemars(range(min = 0, max = 10))]
    pub min_interruption_words: i32,
    /// With `minInterruptionWords`: speech over the agent that goes on this many
    /// milliseconds past `minBargeInMs` without the words stops the agent anyway (the
    /// transcripts are late or the stream died; a caller who talks on means it).
    #[serde(default = "default_max_interruption_wait")]
    #[schemars(range(min = 100, max = 10000))]
    pub max_interruption_wait_ms: i32,
}

/// The model that judges whether the caller has finished.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum EndOfTurnModel {
    /// Silence alone ends a turn (`endOfTurnSilenceMs`).
    #[default]
    None,
    /// Smart Turn v3.2 (Pipecat's open end-of-turn model, BSD-2), baked into the agent image.
    SmartTurn,
    /// The LLM pool reads the caller's words (vLLM's chat API with logprobs).
    Llm,
}

impl EndOfTurnModel {
    /// The name used in the CRD and in `agent.yaml`.
    pub fn as_str(self) -> &'static str {
        match self {
            EndOfTurnModel::None => "none",
            EndOfTurnModel::SmartTurn => "smart-turn",
            EndOfTurnModel::Llm => "llm",
        }
    }
}

impl Default for TurnTakingSpec {
    fn default() -> Self {
        Self {
            vad_threshold: default_vad_threshold(),
            end_of_turn_silence_ms: default_end_of_turn(),
            barge_in: true,
            min_barge_in_ms: default_min_barge_in(),
            end_of_turn_model: EndOfTurnModel::None,
            min_end_of_turn_silence_ms: default_min_end_of_turn(),
            max_end_of_turn_silence_ms: default_max_end_of_turn(),
            llm_end_of_turn_threshold: default_llm_end_of_turn_threshold(),
            speculative_replies: false,
            preemptive_tts: false,
            false_interruption_resume_ms: default_false_interruption_resume(),
            backchannels: default_backchannels(),
            min_interruption_words: default_min_interruption_words(),
            max_interruption_wait_ms: default_max_interruption_wait(),
        }
    }
}

fn default_llm_end_of_turn_threshold() -> f64 {
    0.05
}

fn default_backchannels() -> Vec<String> {
    [
        "uh-huh",
        "uh huh",
        "mm-hm",
        "mm-hmm",
        "mhm",
        "mm",
        "hmm",
        "hm",
        "okay",
        "ok",
        "right",
        "yeah",
        "yep",
        "sure",
        "got it",
        "i see",
        "alright",
        "all right",
        "uh",
        "um",
        "oh",
        "ah",
        "mmm",
    ]
    .map(String::from)
    .to_vec()
}

fn default_false_interruption_resume() -> i32 {
    1500
}

fn default_min_interruption_words() -> i32 {
    1
}

fn default_max_interruption_wait() -> i32 {
    1000
}

fn default_min_end_of_turn() -> i32 {
    200
}

fn default_max_end_of_turn() -> i32 {
    2000
}

fn default_vad_threshold() -> f64 {
    0.5
}

fn default_end_of_turn() -> i32 {
    300
}

fn default_min_barge_in() -> i32 {
    200
}

fn default_true() -> bool {
    true
}

/// Latency objective.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SloSpec {
    /// p95 of turn latency (caller stops speaking -> first agent audio sent), in milliseconds.
    #[serde(default = "default_slo_ms")]
    #[schemars(range(min = 1, max = 60000))]
    pub turn_latency_p95_ms: i32,
    /// Window the p95 is computed over, as a Prometheus duration such as `5m`.
    #[serde(default = "default_window")]
    #[schemars(regex(pattern = r"^[0-9]+(s|m|h)$"))]
    pub window: String,
}

impl Default for SloSpec {
    fn default() -> Self {
        Self {
            turn_latency_p95_ms: default_slo_ms(),
            window: default_window(),
        }
    }
}

fn default_slo_ms() -> i32 {
    800
}

fn default_window() -> String {
    "5m".into()
}

/// Autoscaling bounds for agent pods.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(
    validation = Rule::new("self.minReplicas <= self.maxReplicas")
        .message("scaling.minReplicas must not exceed scaling.maxReplicas")
)]
#[serde(rename_all = "camelCase")]
pub struct AgentScaling {
    /// Fewest agent pods.
    #[serde(default = "default_agent_min")]
    #[schemars(range(min = 0))]
    pub min_replicas: i32,
    /// Most agent pods.
    #[serde(default = "default_agent_max")]
    #[schemars(range(min = 1))]
    pub max_replicas: i32,
    /// Concurrent calls per pod the autoscaler aims for, leaving headroom below the maximum.
    #[serde(default = "default_target_calls")]
    #[schemars(range(min = 1))]
    pub target_calls_per_pod: i32,
}

fn default_agent_min() -> i32 {
    2
}

fn default_agent_max() -> i32 {
    20
}

fn default_target_calls() -> i32 {
    40
}

/// Observed state of a VoiceAgent.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VoiceAgentStatus {
    /// Standard conditions; see `conditions_schema`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "crate::common::conditions_schema")]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` the operator last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Agent pods of the Deployment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    /// Agent pods ready to take calls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_replicas: Option<i32>,
    /// Label selector of the pods, for the `/scale` subresource and HPA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// In-cluster URL of the agent Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// URL to configure as the Twilio voice webhook.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_url: Option<String>,
    /// Calls in progress across all pods. Written by the autoscaler from Prometheus.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_calls: Option<i64>,
    /// Written only by the autoscaler (field manager `grokcast-autoscaler`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<AgentAutoscalingStatus>,
}

/// What the autoscaler observed and decided for an agent. Only the autoscaler writes it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentAutoscalingStatus {
    /// p50 turn latency over the SLO window, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub turn_latency_p50_ms: Option<f64>,
    /// p95 turn latency over the SLO window, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub turn_latency_p95_ms: Option<f64>,
    /// p95 per stage, in milliseconds, to see where a breach comes from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage_latency: Option<StageLatency>,
    /// When the figures above were read from Prometheus. The autoscaler writes status only
    /// when something shown here changes, so this is the time of the sample the current
    /// figures came from, not of the last evaluation (which runs every period).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampled_at: Option<Time>,
    /// Agent replicas the autoscaler wants.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_replicas: Option<i32>,
    /// When the autoscaler last changed `spec.replicas`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_time: Option<Time>,
    /// Why it last changed `spec.replicas`, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_reason: Option<String>,
    /// Name of the ModelPool the autoscaler blames for the latest breach, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bottleneck_pool: Option<String>,
    /// GPUs missing across the referenced pools to meet the SLO.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpus_missing: Option<i32>,
}

/// p95 latency per pipeline stage, in milliseconds.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StageLatency {
    /// End-of-turn detection (includes the configured silence).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpointing_ms: Option<f64>,
    /// Speech to text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stt_ms: Option<f64>,
    /// LLM time to first token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub llm_first_token_ms: Option<f64>,
    /// Text to speech time to first audio.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tts_first_audio_ms: Option<f64>,
    /// The agent's own work.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_ms: Option<f64>,
}

/// A pipeline stage's backend as written in the spec.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StageBackend<'a> {
    /// `modelPoolRef`, if set.
    pub model_pool_ref: Option<&'a str>,
    /// `endpoint`, if set.
    pub endpoint: Option<&'a str>,
    /// `model`, if set.
    pub model: Option<&'a str>,
}

macro_rules! stage_backend {
    ($ty:ty) => {
        impl $ty {
            /// The backend fields of this stage.
            pub fn backend(&self) -> StageBackend<'_> {
                StageBackend {
                    model_pool_ref: self.model_pool_ref.as_deref(),
                    endpoint: self.endpoint.as_deref(),
                    model: self.model.as_deref(),
                }
            }
        }
    };
}

stage_backend!(SttSpec);
stage_backend!(LlmSpec);
stage_backend!(TtsSpec);
