//! VoiceAgent pipeline, pure steps: resolve references against what dereference read,
//! validate, then build the children (ConfigMap with `agent.yaml`, Deployment, Service,
//! PodDisruptionBudget, ServiceMonitor).

use std::collections::BTreeMap;

use grokcast_crds::{
    Engine, ModelPool, Role, SecretKeyRef, StageBackend, ToolsSpec, VoiceAgent, VoiceAgentSpec,
    condition, condition::reason,
};
use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource,
    EnvVar, EnvVarSource, HTTPGetAction, Lifecycle, LifecycleHandler, ObjectFieldSelector,
    PodSecurityContext, PodSpec, PodTemplateSpec, Probe, ResourceRequirements, SeccompProfile,
    SecretKeySelector, SecurityContext, SleepAction, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Serialize;

use crate::children::{self, Child};
use crate::meta::{self, MAX_NAME_LEN, Owner};
use crate::model_pool;
use crate::settings::BuildSettings;

/// Pod label for agent pods.
pub const APP: &str = "grokcast-agent";
/// Port the agent serves Twilio's webhooks and Media Streams on (named `http`), the one the
/// internet reaches through the ingress.
pub const AGENT_PORT: i32 = 8080;
/// Port the agent serves `/metrics`, `/healthz` and `/readyz` on (named `admin`), for
/// Prometheus and the kubelet only.
pub const AGENT_ADMIN_PORT: i32 = 9090;
/// Where the ConfigMap is mounted.
pub const CONFIG_DIR: &str = "/etc/grokcast";
/// File name of the agent config inside the ConfigMap.
pub const CONFIG_FILE: &str = "agent.yaml";
/// Env var the agent reads the Twilio auth token from.
pub const TWILIO_TOKEN_ENV: &str = "GROKCAST_TWILIO_AUTH_TOKEN";

/// The environment variable the agent reads the playground token from.
pub const PLAYGROUND_TOKEN_ENV: &str = "GROKCAST_PLAYGROUND_TOKEN";
/// The environment variable the agent reads the Twilio account SID from (API key).
pub const TWILIO_ACCOUNT_SID_ENV: &str = "GROKCAST_TWILIO_ACCOUNT_SID";
/// The environment variable the agent reads the Twilio API key's SID from.
pub const TWILIO_API_KEY_SID_ENV: &str = "GROKCAST_TWILIO_API_KEY_SID";
/// The environment variable the agent reads the Twilio API key's secret from.
pub const TWILIO_API_KEY_SECRET_ENV: &str = "GROKCAST_TWILIO_API_KEY_SECRET";
/// Seconds the preStop hook waits so load balancers stop sending new calls before SIGTERM.
pub const PRE_STOP_SLEEP_SECONDS: i64 = 5;
/// UID/GID of the agent process (the distroless `nonroot` user).
pub const AGENT_UID: i64 = 65532;

/// Name of every agent child (Deployment, Service, ConfigMap, PDB, ServiceMonitor).
/// Suffixed so that a VoiceAgent and a ModelPool may share a name.
pub fn child_name(agent: &str) -> String {
    format!("{agent}-agent")
}

/// What the dereference step read for one `modelPoolRef`.
#[derive(Clone, Debug)]
pub enum PoolLookup<'a> {
    /// The pool exists.
    Found(&'a ModelPool),
    /// No pool of that name in the namespace.
    Missing,
}

/// What the dereference step read for a Secret the spec names (the Twilio token's, the
/// playground token's).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SecretLookup {
    /// Secret exists and has the key.
    Present,
    /// No such Secret.
    Missing,
    /// Secret exists, key absent.
    KeyMissing,
}

/// Why a VoiceAgent cannot be built yet or at all. `reason()` gives the condition reason.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum Problem {
    /// The spec is wrong; it waits for the user to change it.
    #[error("{0}")]
    InvalidSpec(String),
    /// A referenced pool does not exist.
    #[error("{stage} modelPoolRef {pool:?}: ModelPool not found in namespace {namespace}")]
    PoolNotFound {
        /// Stage name.
        stage: &'static str,
        /// Pool name.
        pool: String,
        /// Namespace.
        namespace: String,
    },
    /// A referenced pool serves another role.
    #[error(
        "{stage} modelPoolRef {pool:?}: ModelPool serves role {actual}, {stage} needs {expected}"
    )]
    PoolWrongRole {
        /// Stage name.
        stage: &'static str,
        /// Pool name.
        pool: String,
        /// Role the stage needs.
        expected: Role,
        /// Role the pool serves.
        actual: String,
    },
    /// A Secret the spec names does not exist.
    #[error("{field}: Secret {name:?} not found")]
    SecretNotFound {
        /// The spec field that names it.
        field: &'static str,
        /// Secret name.
        name: String,
    },
    /// A Secret the spec names lacks the key.
    #[error("{field}: Secret {name:?} has no key {key:?}")]
    SecretKeyMissing {
        /// The spec field that names it.
        field: &'static str,
        /// Secret name.
        name: String,
        /// Key.
        key: String,
    },
}

impl Problem {
    /// The condition reason constant for this problem.
    pub fn reason(&self) -> &'static str {
        match self {
            Problem::InvalidSpec(_) => reason::INVALID_SPEC,
            Problem::PoolNotFound { .. } => reason::MODEL_POOL_NOT_FOUND,
            Problem::PoolWrongRole { .. } => reason::MODEL_POOL_WRONG_ROLE,
            Problem::SecretNotFound { .. } => reason::SECRET_NOT_FOUND,
            Problem::SecretKeyMissing { .. } => reason::SECRET_KEY_MISSING,
        }
    }
}

/// One stage's backend, resolved to a URL and a model name. Serialized as the agent's
/// stage settings (`backend`, `url`, `model`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ResolvedStage {
    /// Wire protocol; the agent's `backend` setting (`openai`).
    pub backend: &'static str,
    /// OpenAI-compatible base URL, ending in `/v1`.
    pub url: String,
    /// Model name to send in requests.
    pub model: String,
    /// The ModelPool behind it, if any.
    #[serde(skip)]
    pub model_pool: Option<String>,
    /// That pool's engine (none for an external endpoint).
    #[serde(skip)]
    pub engine: Option<Engine>,
    /// Whether that pool reports Ready (always true for external endpoints).
    #[serde(skip)]
    pub ready: bool,
}

/// A VoiceAgent that passed validation with its references resolved.
#[derive(Clone, Debug)]
pub struct ValidAgent<'a> {
    /// The resource.
    pub agent: &'a VoiceAgent,
    /// Owner of the children.
    pub owner: Owner,
    /// STT backend.
    pub stt: ResolvedStage,
    /// Where the agent streams callers' audio (Riva gRPC), if it streams.
    pub stt_streaming: Option<String>,
    /// LLM backend.
    pub llm: ResolvedStage,
    /// TTS backend.
    pub tts: ResolvedStage,
}

impl ValidAgent<'_> {
    /// Pools that are referenced but not Ready yet, by name.
    pub fn pools_not_ready(&self) -> Vec<&str> {
        [&self.stt, &self.llm, &self.tts]
            .into_iter()
            .filter(|s| !s.ready)
            .filter_map(|s| s.model_pool.as_deref())
            .collect()
    }
}

/// Whether a pool's status says Ready=True.
pub fn pool_is_ready(pool: &ModelPool) -> bool {
    pool.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == condition::READY && c.status == "True")
    })
}

fn resolve_stage<'a>(
    stage: &'static str,
    role: Role,
    backend: StageBackend<'_>,
    namespace: &str,
    lookup: &impl Fn(&str) -> PoolLookup<'a>,
) -> Result<ResolvedStage, Problem> {
    match (backend.model_pool_ref, backend.endpoint) {
        (Some(pool_name), None) => {
            let pool = match lookup(pool_name) {
                PoolLookup::Found(p) => p,
                PoolLookup::Missing => {
                    return Err(Problem::PoolNotFound {
                        stage,
                        pool: pool_name.into(),
                        namespace: namespace.into(),
                    });
                }
            };
            let actual = pool.spec.resolved_role();
            if actual != Some(role) {
                return Err(Problem::PoolWrongRole {
                    stage,
                    pool: pool_name.into(),
                    expected: role,
                    actual: actual.map_or("none".into(), |r| r.to_string()),
                });
            }
            let port = pool.spec.port.unwrap_or(model_pool::PRESET_PORT);
            Ok(ResolvedStage {
                url: model_pool::endpoint(pool_name, namespace, port),
                model: backend
                    .model
                    .map_or_else(|| pool.spec.model.clone(), str::to_string),
                backend: "openai",
                model_pool: Some(pool_name.into()),
                engine: Some(pool.spec.engine),
                ready: pool_is_ready(pool),
            })
        }
        (None, Some(url)) => {
            let model = backend.model.ok_or_else(|| {
                Problem::InvalidSpec(format!("{stage}.model is required with {stage}.endpoint"))
            })?;
            Ok(ResolvedStage {
                url: url.trim_end_matches('/').into(),
                model: model.into(),
                backend: "openai",
                model_pool: None,
                engine: None,
                ready: true,
            })
        }
        _ => Err(Problem::InvalidSpec(format!(
            "{stage} needs exactly one of modelPoolRef and endpoint"
        ))),
    }
}

/// Where the agent streams callers' audio: the pool's Riva service (when it serves one and
/// `stt.protocol` is not `openai`) or `stt.streamingEndpoint`; none for batch only.
fn resolve_streaming<'a>(
    stt: &grokcast_crds::SttSpec,
    namespace: &str,
    lookup: &impl Fn(&str) -> PoolLookup<'a>,
) -> Result<Option<String>, Problem> {
    use grokcast_crds::SttProtocol;
    if stt.protocol == Some(SttProtocol::Openai) {
        return Ok(None);
    }
    if let Some(url) = &stt.streaming_endpoint {
        return Ok(Some(url.trim_end_matches('/').to_owned()));
    }
    let served = stt
        .model_pool_ref
        .as_deref()
        .and_then(|name| match lookup(name) {
            PoolLookup::Found(pool) => pool
                .spec
                .riva_port()
                .map(|port| model_pool::streaming_endpoint(name, namespace, port)),
            PoolLookup::Missing => None,
        });
    match (served, stt.protocol) {
        (None, Some(SttProtocol::Riva)) => Err(Problem::InvalidSpec(format!(
            "stt.protocol is riva, but {} serves no streaming recognition (set the ModelPool's protocol to riva, or stt.streamingEndpoint)",
            stt.model_pool_ref
                .as_deref()
                .map_or_else(|| "the endpoint".to_owned(), |p| format!("ModelPool {p:?}"))
        ))),
        (served, _) => Ok(served),
    }
}

/// Check the spec and resolve every reference. `lookup` answers from the pool cache;
/// `secret` is what dereference read for the Twilio auth token.
pub fn validate<'a>(
    agent: &'a VoiceAgent,
    lookup: impl Fn(&str) -> PoolLookup<'a>,
    secrets: impl Fn(&SecretKeyRef) -> SecretLookup,
) -> Result<ValidAgent<'a>, Problem> {
    let spec = &agent.spec;
    let name = agent.metadata.name.clone().unwrap_or_default();
    if name.len() > MAX_NAME_LEN {
        return Err(Problem::InvalidSpec(format!(
            "name {name:?} is {} characters; VoiceAgent names may have at most {MAX_NAME_LEN}",
            name.len()
        )));
    }
    let owner = Owner::of(agent, APP, meta::VOICE_AGENT_LABEL)
        .ok_or_else(|| Problem::InvalidSpec(format!("VoiceAgent {name} has no namespace")))?;
    if let Some(s) = &spec.scaling {
        if s.min_replicas > s.max_replicas {
            return Err(Problem::InvalidSpec(format!(
                "scaling.minReplicas ({}) must not exceed scaling.maxReplicas ({})",
                s.min_replicas, s.max_replicas
            )));
        }
        if s.target_calls_per_pod > spec.telephony.max_concurrent_calls_per_pod {
            return Err(Problem::InvalidSpec(format!(
                "scaling.targetCallsPerPod ({}) must not exceed telephony.maxConcurrentCallsPerPod ({})",
                s.target_calls_per_pod, spec.telephony.max_concurrent_calls_per_pod
            )));
        }
    }
    if spec.slo.turn_latency_p95_ms <= 0 {
        return Err(Problem::InvalidSpec(
            "slo.turnLatencyP95Ms must be greater than 0".into(),
        ));
    }
    if !spec.telephony.twilio.public_url.starts_with("https://") {
        return Err(Problem::InvalidSpec(
            "telephony.twilio.publicUrl must be an https:// URL (Twilio signs against it)".into(),
        ));
    }
    // The API server's CEL rule says the same; this covers objects admitted before it.
    if spec.playground.enabled && spec.playground.token_secret_ref.is_none() {
        return Err(Problem::InvalidSpec(
            "playground.enabled needs tokenSecretRef".into(),
        ));
    }
    if let Some(t) = &spec.tools.transfer_call
        && t.enabled
        && spec.telephony.twilio.api_key_secret_ref.is_none()
    {
        return Err(Problem::InvalidSpec(
            "tools.transferCall needs telephony.twilio.apiKeySecretRef: a transfer is a REST update of the call".into(),
        ));
    }
    let mut names: Vec<&str> = vec!["end_call", "transfer_call", "send_dtmf"];
    for tool in &spec.tools.http {
        if names.contains(&tool.name.as_str()) {
            return Err(Problem::InvalidSpec(format!(
                "tools.http name {:?} is taken (built-in tools and other HTTP tools)",
                tool.name
            )));
        }
        names.push(&tool.name);
        if tool
            .parameters
            .as_ref()
            .is_some_and(|p| p["type"] != "object")
        {
            return Err(Problem::InvalidSpec(format!(
                "tools.http {:?}: parameters must be a JSON Schema of type object",
                tool.name
            )));
        }
    }
    let ns = owner.namespace.clone();
    let stt = resolve_stage("stt", Role::Stt, spec.stt.backend(), &ns, &lookup)?;
    let stt_streaming = resolve_streaming(&spec.stt, &ns, &lookup)?;
    let llm = resolve_stage("llm", Role::Llm, spec.llm.backend(), &ns, &lookup)?;
    // vLLM answers 400 to every request that offers tools unless it was started to call
    // them: refuse now rather than fail every turn of every call.
    if spec.tools.any()
        && let Some(name) = spec.llm.backend().model_pool_ref
        && let PoolLookup::Found(pool) = lookup(name)
        && pool.spec.engine == Engine::Vllm
        && !["--enable-auto-tool-choice", "--tool-call-parser"]
            .iter()
            .all(|flag| {
                pool.spec
                    .args
                    .iter()
                    .any(|a| a.split('=').next() == Some(*flag))
            })
    {
        return Err(Problem::InvalidSpec(format!(
            "tools need an LLM pool that calls tools: add --enable-auto-tool-choice and a --tool-call-parser (pythonic for Gemma 3, with its tool chat template) to ModelPool {name:?}'s args"
        )));
    }
    let tts = resolve_stage("tts", Role::Tts, spec.tts.backend(), &ns, &lookup)?;
    let check = |field: &'static str, r: &SecretKeyRef| match secrets(r) {
        SecretLookup::Present => Ok(()),
        SecretLookup::Missing => Err(Problem::SecretNotFound {
            field,
            name: r.name.clone(),
        }),
        SecretLookup::KeyMissing => Err(Problem::SecretKeyMissing {
            field,
            name: r.name.clone(),
            key: r.key.clone(),
        }),
    };
    check(
        "telephony.twilio.authTokenSecretRef",
        &spec.telephony.twilio.auth_token_secret_ref,
    )?;
    if let Some(r) = playground_token(spec) {
        check("playground.tokenSecretRef", r)?;
    }
    for (_, r) in api_key(spec) {
        check("telephony.twilio.apiKeySecretRef", &r)?;
    }
    Ok(ValidAgent {
        agent,
        owner,
        stt,
        stt_streaming,
        llm,
        tts,
    })
}

/// The playground token's Secret key, when the playground is on.
pub fn playground_token(spec: &VoiceAgentSpec) -> Option<&SecretKeyRef> {
    spec.playground
        .enabled
        .then_some(spec.playground.token_secret_ref.as_ref())
        .flatten()
}

/// The Twilio API key's Secret keys, when one is named: the account SID's, the key SID's and
/// the key secret's, with the environment variable each arrives in.
pub fn api_key(spec: &VoiceAgentSpec) -> Vec<(&'static str, SecretKeyRef)> {
    let Some(r) = &spec.telephony.twilio.api_key_secret_ref else {
        return Vec::new();
    };
    let key = |key: &str| SecretKeyRef {
        name: r.name.clone(),
        key: key.to_owned(),
    };
    vec![
        (TWILIO_ACCOUNT_SID_ENV, key(&r.account_sid_key)),
        (TWILIO_API_KEY_SID_ENV, key(&r.key_sid_key)),
        (TWILIO_API_KEY_SECRET_ENV, key(&r.key_secret_key)),
    ]
}

/// Every Secret key the agent's pods read: the Twilio token's, the playground token's when
/// the playground is on, and the Twilio API key's when one is named.
pub fn secret_refs(spec: &VoiceAgentSpec) -> Vec<SecretKeyRef> {
    let mut refs = vec![spec.telephony.twilio.auth_token_secret_ref.clone()];
    refs.extend(playground_token(spec).cloned());
    refs.extend(api_key(spec).into_iter().map(|(_, r)| r));
    refs
}

/// The file the agent reads, `agent.yaml`, in the agent's own schema (camelCase keys,
/// unknown keys rejected; see docs/operator.md). The Twilio token is never in it: it
/// arrives as `GROKCAST_TWILIO_AUTH_TOKEN` from the Secret.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentConfig {
    /// Which VoiceAgent this pod belongs to; also the `voiceagent` metric label.
    pub voice_agent: String,
    /// Namespace; the `namespace` metric label.
    pub namespace: String,
    /// Address of the Twilio-facing listener.
    pub listen_addr: String,
    /// Address of the metrics and probes listener.
    pub admin_listen_addr: String,
    /// Public base URL Twilio uses; signatures are computed over it.
    pub public_url: String,
    /// Calls per pod before answering busy.
    pub max_calls: i32,
    /// Seconds live calls get to finish after SIGTERM.
    pub drain_timeout_seconds: i32,
    /// Prompt and greeting.
    pub persona: PersonaConfig,
    /// STT backend plus language.
    pub stt: SttConfig,
    /// LLM backend plus sampling.
    pub llm: LlmConfig,
    /// TTS backend plus voice.
    pub tts: TtsConfig,
    /// Turn-taking.
    pub turn_taking: TurnTakingConfig,
    /// The latency objective: the agent counts turns slower than it for the burn-rate alerts.
    pub slo: SloConfig,
    /// The browser playground (its token arrives as `GROKCAST_PLAYGROUND_TOKEN`).
    pub playground: PlaygroundConfig,
    /// Call traces, when `spec.tracing` is set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tracing: Option<TracingConfig>,
    /// Tools the LLM may call: `spec.tools` as written, whose shape the agent's `tools`
    /// section shares (the API key arrives from its Secret as environment variables).
    #[serde(skip_serializing_if = "ToolsSpec::is_empty")]
    pub tools: ToolsSpec,
}

/// Tracing section of `agent.yaml`.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TracingConfig {
    /// `spec.tracing.otlpEndpoint`.
    pub endpoint: String,
    /// `spec.tracing.sampleRatio`.
    pub sample_ratio: f64,
}

/// Playground section of `agent.yaml`.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PlaygroundConfig {
    /// Serve `/playground` and its socket.
    pub enabled: bool,
}

/// SLO section of `agent.yaml`.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SloConfig {
    /// `spec.slo.turnLatencyP95Ms`.
    pub turn_latency_p95_ms: i32,
}

/// Persona section of `agent.yaml`.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PersonaConfig {
    /// System prompt.
    pub system_prompt: String,
    /// Greeting; empty means none.
    pub greeting: String,
}

/// STT section of `agent.yaml`.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SttConfig {
    /// Backend.
    #[serde(flatten)]
    pub backend: ResolvedStage,
    /// Language code.
    pub language: String,
    /// The Riva gRPC URL callers' audio streams to; none: every turn in one request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub streaming_url: Option<String>,
}

/// LLM section of `agent.yaml`.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LlmConfig {
    /// Backend.
    #[serde(flatten)]
    pub backend: ResolvedStage,
    /// Sampling temperature.
    pub temperature: f64,
    /// Reply token limit.
    pub max_tokens: i32,
}

/// TTS section of `agent.yaml`.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TtsConfig {
    /// Backend.
    #[serde(flatten)]
    pub backend: ResolvedStage,
    /// Voice; empty means the server's default.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub voice: String,
    /// The `response_format` the engine streams; unset leaves the agent's default (`pcm`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_format: Option<&'static str>,
    /// Rate of the engine's raw PCM when its responses do not give one; unset leaves the
    /// agent's default (24 kHz, OpenAI's `pcm`). A rate a response gives always wins.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sample_rate: Option<u32>,
}

/// What the agent should ask a TTS engine for, and the rate to assume when its responses do
/// not say: `(response_format, sample_rate)`. The agent takes each response's rate from the
/// response itself (`x-sample-rate`, else a WAV header), so this matters only for engines
/// that give neither.
pub fn tts_format(engine: Option<Engine>) -> (Option<&'static str>, Option<u32>) {
    match engine {
        // grokcast-serve streams `pcm` clause by clause and gives the voice's rate (Piper:
        // 22,050 Hz) in `x-sample-rate`; its `wav` is one file sent only when complete.
        Some(Engine::Grokcast) => (Some("pcm"), None),
        // CSM-1B streams `pcm` at its codec's (Mimi's) 24 kHz.
        Some(Engine::Csm) => (Some("pcm"), Some(24_000)),
        // A custom server or an external endpoint: nothing is known, the agent's defaults.
        Some(Engine::Custom | Engine::Vllm | Engine::Whisper) | None => (None, None),
    }
}

/// Turn-taking section of `agent.yaml`.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TurnTakingConfig {
    /// VAD threshold.
    pub vad_threshold: f64,
    /// End-of-turn silence in ms.
    pub end_of_turn_silence_ms: i32,
    /// Barge-in enabled.
    pub barge_in: bool,
    /// Minimum barge-in speech in ms.
    pub min_barge_in_ms: i32,
    /// The end-of-turn model (`none`, `smart-turn` or `llm`).
    pub end_of_turn_model: &'static str,
    /// With a model: the pause after which it is asked, in ms.
    pub min_end_of_turn_silence_ms: i32,
    /// With a model: the pause that ends the turn anyway, in ms.
    pub max_end_of_turn_silence_ms: i32,
    /// With the `llm` model: the end-of-turn probability that ends a turn at a pause.
    pub llm_end_of_turn_threshold: f64,
    /// Start replies at the first pause that may end the turn.
    pub speculative_replies: bool,
    /// Synthesise a speculative reply's first clause before the turn is over.
    pub preemptive_tts: bool,
    /// Resume a clause cut by a sound with no words within this many ms.
    pub false_interruption_resume_ms: i32,
    /// What counts as a backchannel over the agent.
    pub backchannels: Vec<String>,
    /// Words speech over the agent must say before it interrupts (streaming STT).
    pub min_interruption_words: i32,
    /// Speech held for its words interrupts anyway after this many ms.
    pub max_interruption_wait_ms: i32,
}

/// The resolved pipeline config for a validated agent.
pub fn agent_config(v: &ValidAgent<'_>) -> AgentConfig {
    let spec = &v.agent.spec;
    AgentConfig {
        voice_agent: v.owner.name.clone(),
        namespace: v.owner.namespace.clone(),
        listen_addr: format!("0.0.0.0:{AGENT_PORT}"),
        admin_listen_addr: format!("0.0.0.0:{AGENT_ADMIN_PORT}"),
        public_url: spec
            .telephony
            .twilio
            .public_url
            .trim_end_matches('/')
            .into(),
        max_calls: spec.telephony.max_concurrent_calls_per_pod,
        drain_timeout_seconds: spec.drain_timeout_seconds,
        persona: PersonaConfig {
            system_prompt: spec.persona.system_prompt.clone(),
            greeting: spec.persona.greeting.clone(),
        },
        stt: SttConfig {
            backend: v.stt.clone(),
            language: spec.stt.language.clone(),
            streaming_url: v.stt_streaming.clone(),
        },
        llm: LlmConfig {
            backend: v.llm.clone(),
            temperature: spec.llm.temperature,
            max_tokens: spec.llm.max_tokens,
        },
        tts: {
            let (response_format, sample_rate) = tts_format(v.tts.engine);
            TtsConfig {
                backend: v.tts.clone(),
                // CSM's voices are its speakers and prompts; with none named, speaker 0
                // rather than the agent's OpenAI-style default, which CSM does not have.
                voice: match (spec.tts.voice.as_str(), v.tts.engine) {
                    ("", Some(Engine::Csm)) => "0".into(),
                    (voice, _) => voice.into(),
                },
                response_format,
                sample_rate,
            }
        },
        turn_taking: TurnTakingConfig {
            vad_threshold: spec.turn_taking.vad_threshold,
            end_of_turn_silence_ms: spec.turn_taking.end_of_turn_silence_ms,
            barge_in: spec.turn_taking.barge_in,
            min_barge_in_ms: spec.turn_taking.min_barge_in_ms,
            end_of_turn_model: spec.turn_taking.end_of_turn_model.as_str(),
            min_end_of_turn_silence_ms: spec.turn_taking.min_end_of_turn_silence_ms,
            max_end_of_turn_silence_ms: spec.turn_taking.max_end_of_turn_silence_ms,
            llm_end_of_turn_threshold: spec.turn_taking.llm_end_of_turn_threshold,
            speculative_replies: spec.turn_taking.speculative_replies,
            preemptive_tts: spec.turn_taking.preemptive_tts,
            false_interruption_resume_ms: spec.turn_taking.false_interruption_resume_ms,
            backchannels: spec.turn_taking.backchannels.clone(),
            min_interruption_words: spec.turn_taking.min_interruption_words,
            max_interruption_wait_ms: spec.turn_taking.max_interruption_wait_ms,
        },
        slo: SloConfig {
            turn_latency_p95_ms: spec.slo.turn_latency_p95_ms,
        },
        playground: PlaygroundConfig {
            enabled: spec.playground.enabled,
        },
        tracing: spec.tracing.as_ref().map(|t| TracingConfig {
            endpoint: t.otlp_endpoint.clone(),
            sample_ratio: t.sample_ratio,
        }),
        tools: spec.tools.clone(),
    }
}

/// The Twilio voice webhook URL for an agent.
pub fn webhook_url(public_url: &str) -> String {
    format!("{}/twilio/voice", public_url.trim_end_matches('/'))
}

/// An environment variable read from a Secret's key; the pod does not start without it.
fn secret_env(name: &str, r: &SecretKeyRef) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: r.name.clone(),
                key: r.key.clone(),
                optional: Some(false),
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..EnvVar::default()
    }
}

fn http_probe(path: &str, period: i32, failure_threshold: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("admin".into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failure_threshold),
        timeout_seconds: Some(2),
        ..Probe::default()
    }
}

/// Every child of a validated agent, in apply order (ConfigMap before the pods that mount it).
pub fn build(v: &ValidAgent<'_>, settings: &BuildSettings) -> Vec<Child> {
    let spec = &v.agent.spec;
    let name = child_name(&v.owner.name);
    let config = agent_config(v);
    // serde_yaml cannot fail on this plain struct of strings and numbers; fall back to JSON
    // (also valid YAML) rather than panic if it ever did.
    let config_yaml = serde_yaml::to_string(&config)
        .unwrap_or_else(|_| serde_json::to_string(&config).unwrap_or_default());
    let config_hash = meta::short_hash(config_yaml.as_bytes(), 16);

    let config_map = ConfigMap {
        metadata: v.owner.child_meta(name.clone()),
        data: Some(BTreeMap::from([(CONFIG_FILE.into(), config_yaml)])),
        ..ConfigMap::default()
    };

    let twilio = &spec.telephony.twilio.auth_token_secret_ref;
    let container = Container {
        name: "agent".into(),
        image: Some(
            spec.image
                .clone()
                .unwrap_or_else(|| settings.agent_image.clone()),
        ),
        args: Some(vec![
            "serve".into(),
            "--config".into(),
            format!("{CONFIG_DIR}/{CONFIG_FILE}"),
        ]),
        env: Some(
            [
                Some(env(
                    "GROKCAST_CONFIG",
                    format!("{CONFIG_DIR}/{CONFIG_FILE}"),
                )),
                Some(secret_env(TWILIO_TOKEN_ENV, twilio)),
                playground_token(spec).map(|r| secret_env(PLAYGROUND_TOKEN_ENV, r)),
            ]
            .into_iter()
            .flatten()
            .chain(api_key(spec).iter().map(|(var, r)| secret_env(var, r)))
            .chain([EnvVar {
                name: "GROKCAST_POD_NAME".into(),
                value_from: Some(EnvVarSource {
                    field_ref: Some(ObjectFieldSelector {
                        field_path: "metadata.name".into(),
                        ..ObjectFieldSelector::default()
                    }),
                    ..EnvVarSource::default()
                }),
                ..EnvVar::default()
            }])
            .collect(),
        ),
        ports: Some(vec![
            ContainerPort {
                name: Some("http".into()),
                container_port: AGENT_PORT,
                protocol: Some("TCP".into()),
                ..ContainerPort::default()
            },
            ContainerPort {
                name: Some("admin".into()),
                container_port: AGENT_ADMIN_PORT,
                protocol: Some("TCP".into()),
                ..ContainerPort::default()
            },
        ]),
        resources: Some(
            spec.resources
                .clone()
                .unwrap_or_else(|| ResourceRequirements {
                    requests: Some(BTreeMap::from([
                        ("cpu".into(), Quantity("500m".into())),
                        ("memory".into(), Quantity("256Mi".into())),
                    ])),
                    limits: Some(BTreeMap::from([("memory".into(), Quantity("1Gi".into()))])),
                    ..ResourceRequirements::default()
                }),
        ),
        // Not ready while draining or full, so Services stop sending it new calls.
        readiness_probe: Some(http_probe("/readyz", 5, 2)),
        liveness_probe: Some(http_probe("/healthz", 10, 3)),
        // Endpoints removal races SIGTERM; a short sleep lets load balancers stop routing
        // new calls here before the agent starts draining live ones on SIGTERM. API servers
        // before 1.30 refuse the sleep action; there the pod goes without the hook: the
        // agent still drains on SIGTERM (readiness fails, live calls finish), only calls
        // routed in the moment before endpoints update may be refused.
        lifecycle: settings.pre_stop_sleep.then(|| Lifecycle {
            pre_stop: Some(LifecycleHandler {
                sleep: Some(SleepAction {
                    seconds: PRE_STOP_SLEEP_SECONDS,
                }),
                ..LifecycleHandler::default()
            }),
            ..Lifecycle::default()
        }),
        security_context: Some(SecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(AGENT_UID),
            run_as_group: Some(AGENT_UID),
            read_only_root_filesystem: Some(true),
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Capabilities::default()
            }),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                ..SeccompProfile::default()
            }),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(vec![
            VolumeMount {
                name: "config".into(),
                mount_path: CONFIG_DIR.into(),
                read_only: Some(true),
                ..VolumeMount::default()
            },
            VolumeMount {
                name: "tmp".into(),
                mount_path: "/tmp".into(),
                ..VolumeMount::default()
            },
        ]),
        ..Container::default()
    };

    let mut pod_labels = v.owner.labels();
    pod_labels.insert(meta::VOICE_AGENT_LABEL.into(), v.owner.name.clone());
    let deployment = Deployment {
        metadata: v.owner.child_meta(name.clone()),
        spec: Some(DeploymentSpec {
            replicas: Some(spec.replicas),
            selector: v.owner.label_selector(),
            // Never drop below the serving replicas during a rollout: calls in progress drain
            // on old pods while new ones take new calls.
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(IntOrString::String("25%".into())),
                    max_unavailable: Some(IntOrString::Int(0)),
                }),
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: Some(BTreeMap::from([(
                        meta::CONFIG_HASH_ANNOTATION.into(),
                        config_hash,
                    )])),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    // The agent talks to nothing in the Kubernetes API.
                    automount_service_account_token: Some(false),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        run_as_user: Some(AGENT_UID),
                        run_as_group: Some(AGENT_UID),
                        fs_group: Some(AGENT_UID),
                        seccomp_profile: Some(SeccompProfile {
                            type_: "RuntimeDefault".into(),
                            ..SeccompProfile::default()
                        }),
                        ..PodSecurityContext::default()
                    }),
                    termination_grace_period_seconds: Some(
                        i64::from(spec.drain_timeout_seconds) + PRE_STOP_SLEEP_SECONDS + 15,
                    ),
                    node_selector: (!spec.node_selector.is_empty())
                        .then(|| spec.node_selector.clone()),
                    tolerations: (!spec.tolerations.is_empty()).then(|| spec.tolerations.clone()),
                    volumes: Some(vec![
                        Volume {
                            name: "config".into(),
                            config_map: Some(ConfigMapVolumeSource {
                                name: name.clone(),
                                ..ConfigMapVolumeSource::default()
                            }),
                            ..Volume::default()
                        },
                        Volume {
                            name: "tmp".into(),
                            empty_dir: Some(EmptyDirVolumeSource {
                                size_limit: Some(Quantity("64Mi".into())),
                                ..EmptyDirVolumeSource::default()
                            }),
                            ..Volume::default()
                        },
                    ]),
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    };

    let mut out = vec![
        Child::ConfigMap(config_map),
        Child::Deployment(Box::new(deployment)),
        // Both ports, so a ServiceMonitor can scrape `admin`; an Ingress or Gateway route
        // names `http` only.
        Child::Service(children::service(
            &v.owner,
            name.clone(),
            &[("http", AGENT_PORT), ("admin", AGENT_ADMIN_PORT)],
        )),
        Child::PodDisruptionBudget(children::pod_disruption_budget(&v.owner, name.clone())),
    ];
    if settings.service_monitors {
        out.push(Child::ServiceMonitor(children::service_monitor(
            &v.owner, name, "admin", "15s",
        )));
    }
    out
}
