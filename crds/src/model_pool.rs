//! `ModelPool`: a horizontally scaled model server (GPU or CPU) that voice agents call.

// `printcolumn(...)` repeats `type_ = ...` by design; clippy reads it as a duplicate.
#![allow(clippy::duplicated_attributes)]

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ResourceRequirements, Toleration};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{Role, SecretKeyRef};

/// Desired state of a ModelPool.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "grokcast.io",
    version = "v1alpha1",
    kind = "ModelPool",
    plural = "modelpools",
    namespaced,
    status = "ModelPoolStatus",
    shortname = "mp",
    category = "grokcast",
    derive = "PartialEq",
    doc = "A horizontally scaled model server (speech to text, LLM or text to speech) that \
           VoiceAgents in the same namespace reference by name.",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(name = "ENGINE", type_ = "string", json_path = ".spec.engine"),
    printcolumn(name = "MODEL", type_ = "string", json_path = ".spec.model"),
    printcolumn(
        name = "READY",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(name = "REPLICAS", type_ = "integer", json_path = ".status.replicas"),
    printcolumn(name = "GPUS", type_ = "integer", json_path = ".status.gpusRequested"),
    printcolumn(
        name = "AGE",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(
    validation = Rule::new("self.engine != 'custom' || (has(self.image) && has(self.port))")
        .message("engine custom needs image and port"),
    validation = Rule::new("!(self.engine in ['custom', 'grokcast']) || has(self.role)")
        .message("engines custom and grokcast need role (stt, llm or tts)"),
    validation = Rule::new("self.engine != 'whisper' || !has(self.role) || self.role == 'stt'")
        .message("engine whisper only serves role stt"),
    validation = Rule::new("self.engine != 'csm' || !has(self.role) || self.role == 'tts'")
        .message("engine csm only serves role tts"),
    validation = Rule::new("self.engine != 'vllm' || !has(self.role) || self.role != 'tts'")
        .message("engine vllm serves role llm or stt, not tts"),
    validation = Rule::new("self.quantization == 'none' || self.engine == 'vllm'")
        .message("quantization is only derived for engine vllm; use a quantized model for other engines"),
    validation = Rule::new("self.gpu.count > 0 || self.engine in ['grokcast', 'custom']")
        .message("engines vllm, whisper and csm need at least one GPU (gpu.count > 0)"),
    validation = Rule::new("self.protocol != 'riva' || (self.engine in ['grokcast', 'custom'] && has(self.role) && self.role == 'stt')")
        .message("protocol riva is streaming speech recognition: engine grokcast or custom with role stt"),
    validation = Rule::new("!has(self.grpcPort) || self.protocol == 'riva'")
        .message("grpcPort is the Riva port; set protocol riva"),
    validation = Rule::new("self.protocol != 'riva' || (has(self.grpcPort) ? self.grpcPort : 50051) != (has(self.port) ? self.port : 8000)")
        .message("the Riva port (grpcPort, 50051 by default) must differ from port (8000 by default)")
)]
#[serde(rename_all = "camelCase")]
pub struct ModelPoolSpec {
    /// Model server engine. It decides the role (llm, stt or tts), default image, arguments,
    /// port, probes and metrics. `grokcast` is the project's own CPU server `grokcast-serve`.
    pub engine: Engine,
    /// What this pool serves. Derived from the engine (vllm: llm, whisper: stt, csm: tts);
    /// required for engines `custom` and `grokcast`; set `stt` to serve Whisper with vLLM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    /// Model to serve, usually a Hugging Face repository id such as `google/gemma-3-27b-it`.
    /// Agents request it under this name whatever quantized variant is loaded.
    #[schemars(length(min = 1, max = 253))]
    pub model: String,
    /// Weight quantization. For vLLM a known pre-quantized variant of the model is loaded
    /// (int4: GPTQ W4A16) or on-the-fly FP8 is enabled; other engines need `none`.
    #[serde(default)]
    pub quantization: Quantization,
    /// Container image. Empty means the operator's default for the engine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Extra arguments appended after the engine's own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Port the server listens on. Only for engine `custom`; presets use 8000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<i32>,
    /// Protocol the server speaks. `openai`: the OpenAI-compatible HTTP API on `port`.
    /// `riva` (speech to text only): also NVIDIA Riva's speech recognition over gRPC on
    /// `grpcPort`, so agents stream callers' audio while they speak and get the transcript
    /// as the turn ends (grokcast-serve `--grpc-listen`; a Riva or NIM ASR server as engine
    /// `custom`). Agents fall back to the HTTP API for a turn whose stream fails.
    #[serde(default)]
    pub protocol: Protocol,
    /// Port of the Riva gRPC service, with protocol `riva`. Unset: 50051, Riva's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub grpc_port: Option<i32>,
    /// Longest context (prompt plus reply) in tokens. vLLM only; voice turns are short, so the
    /// default of 8192 leaves most GPU memory for concurrent calls' KV cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 256))]
    pub max_model_len: Option<i32>,
    /// GPUs per replica and which product to schedule on.
    #[serde(default)]
    pub gpu: GpuSpec,
    /// Replica count used while `autoscaling` is unset. The `/scale` subresource writes it.
    #[serde(default = "default_pool_replicas")]
    #[schemars(range(min = 0))]
    pub replicas: i32,
    /// Latency-SLO autoscaling bounds and this stage's p95 budget. Unset means fixed replicas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<PoolAutoscaling>,
    /// Persistent volume for weights, shared by restarts, and a Job that downloads them first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<CacheSpec>,
    /// Secret key holding a Hugging Face token, for gated models such as Gemma.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hugging_face_token_secret_ref: Option<SecretKeyRef>,
    /// Engine `csm` only: a ConfigMap in this namespace holding voices (`NAME.json` voice
    /// files, their reference WAVs under `binaryData`), mounted for the server; a
    /// VoiceAgent's `tts.voice` names one. Unset: the speakers `0` and `1`. The server reads
    /// the voices at start, so restart the pool after changing them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub voices_config_map: Option<String>,
    /// Extra node labels the pods must match, merged with the GPU product selector.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Extra tolerations, added to the `nvidia.com/gpu` toleration the operator always sets.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// CPU and memory for the server container. GPU requests come from `gpu.count`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// PriorityClass for the pods, so model servers can preempt batch work.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,
}

fn default_pool_replicas() -> i32 {
    1
}

/// Model server engines with a preset.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    /// vLLM's OpenAI-compatible server (chat completions, or transcriptions for Whisper models).
    Vllm,
    /// A Whisper speech-to-text server with the OpenAI transcription API.
    Whisper,
    /// Sesame CSM-1B text to speech with the OpenAI speech API, streaming PCM.
    Csm,
    /// GrokCast's own CPU model server `grokcast-serve`; the role picks STT, LLM or TTS.
    Grokcast,
    /// Any server speaking one of the supported protocols; image, port and role from the spec.
    Custom,
}

impl Engine {
    /// The lowercase name used in the CRD and in labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Engine::Vllm => "vllm",
            Engine::Whisper => "whisper",
            Engine::Csm => "csm",
            Engine::Grokcast => "grokcast",
            Engine::Custom => "custom",
        }
    }
}

/// Weight quantization for vLLM.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Quantization {
    /// Weights as published (bfloat16 for Gemma).
    #[default]
    None,
    /// 4-bit weights, 16-bit activations (GPTQ/AWQ/compressed-tensors W4A16).
    Int4,
    /// 8-bit weights and activations (compressed-tensors W8A8).
    Int8,
    /// FP8 weights quantized by vLLM at load time.
    Fp8,
}

/// Riva's gRPC port, the default `grpcPort`.
pub const RIVA_PORT: i32 = 50051;

impl ModelPoolSpec {
    /// The Riva gRPC port when the pool speaks protocol `riva`.
    pub fn riva_port(&self) -> Option<i32> {
        (self.protocol == Protocol::Riva).then(|| self.grpc_port.unwrap_or(RIVA_PORT))
    }
}

/// Wire protocol between the agent and a model server.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// OpenAI-compatible HTTP: `/v1/chat/completions`, `/v1/audio/transcriptions`, `/v1/audio/speech`.
    #[default]
    Openai,
    /// The OpenAI-compatible HTTP API, plus NVIDIA Riva's `nvidia.riva.asr` gRPC service
    /// (`StreamingRecognize`) for streaming speech to text.
    Riva,
}

/// GPUs per replica.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GpuSpec {
    /// `nvidia.com/gpu` per replica; also the vLLM tensor-parallel size. 0 runs on CPU.
    #[serde(default = "default_gpu_count")]
    #[schemars(range(min = 0, max = 16))]
    pub count: i32,
    /// GPU product label value (`nvidia.com/gpu.product`, from GPU feature discovery), for
    /// example `NVIDIA-A100-SXM4-80GB`. Empty schedules on any GPU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub product: Option<String>,
    /// Share of GPU memory the engine may take (vLLM `--gpu-memory-utilization`).
    #[serde(default = "default_memory_utilization")]
    #[schemars(range(min = 0.1, max = 0.99))]
    pub memory_utilization: f64,
}

impl Default for GpuSpec {
    fn default() -> Self {
        Self {
            count: default_gpu_count(),
            product: None,
            memory_utilization: default_memory_utilization(),
        }
    }
}

fn default_gpu_count() -> i32 {
    1
}

fn default_memory_utilization() -> f64 {
    0.85
}

/// Latency-SLO autoscaling for one pool.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(
    validation = Rule::new("self.minReplicas <= self.maxReplicas")
        .message("autoscaling.minReplicas must not exceed autoscaling.maxReplicas")
)]
#[serde(rename_all = "camelCase")]
pub struct PoolAutoscaling {
    /// Fewest replicas the autoscaler keeps.
    #[serde(default = "default_pool_min")]
    #[schemars(range(min = 0))]
    pub min_replicas: i32,
    /// Most replicas the autoscaler asks for; GPUs the cluster lacks are reported, not requested.
    #[serde(default = "default_pool_max")]
    #[schemars(range(min = 1))]
    pub max_replicas: i32,
    /// This stage's share of the turn latency budget, as a p95 in milliseconds.
    #[serde(default = "default_target_latency")]
    #[schemars(range(min = 1))]
    pub target_latency_ms: i32,
}

fn default_pool_min() -> i32 {
    1
}

fn default_pool_max() -> i32 {
    4
}

fn default_target_latency() -> i32 {
    250
}

/// Persistent weight cache.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CacheSpec {
    /// Volume size; must hold the weights (a 27B INT4 checkpoint is about 17 GB).
    pub size: Quantity,
    /// StorageClass for the PVC. Unset uses the cluster default. Replicas share the volume,
    /// so pick a ReadWriteMany class when running more than one node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
    /// Access mode of the PVC. Replicas on several nodes need `ReadWriteMany`.
    #[serde(default)]
    pub access_mode: CacheAccessMode,
    /// Run a Job that downloads the weights into the volume before servers start.
    #[serde(default = "default_true")]
    pub preload: bool,
}

/// PVC access modes that make sense for a weight cache.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum CacheAccessMode {
    /// One node mounts the volume; every replica must land on it. Works with any StorageClass.
    #[default]
    ReadWriteOnce,
    /// Many nodes mount it; needs a StorageClass that supports it (NFS, CephFS, Filestore...).
    ReadWriteMany,
}

impl CacheAccessMode {
    /// The Kubernetes spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            CacheAccessMode::ReadWriteOnce => "ReadWriteOnce",
            CacheAccessMode::ReadWriteMany => "ReadWriteMany",
        }
    }
}

fn default_true() -> bool {
    true
}

/// Observed state of a ModelPool.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelPoolStatus {
    /// Standard conditions; see `conditions_schema`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "crate::common::conditions_schema")]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` the operator last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Pods of the server Deployment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    /// Pods that passed their readiness probe (model loaded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_replicas: Option<i32>,
    /// Label selector of the pods, for the `/scale` subresource and HPA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// The role this pool serves, resolved from engine and spec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    /// In-cluster base URL of the OpenAI-compatible API, e.g. `http://gemma-27b.voice.svc:8000/v1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// In-cluster URL of the Riva streaming speech recognition service (protocol `riva`),
    /// e.g. `http://whisper.voice.svc:50051`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub streaming_endpoint: Option<String>,
    /// GPUs requested by the desired replicas (`replicas` x `gpu.count`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpus_requested: Option<i32>,
    /// The weight preload that last completed. The operator never runs a preload Job again
    /// for a `templateHash` recorded here, so the Job's TTL deletion does not start the
    /// download again; a new checkpoint or a changed Job template (new hash) does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preload: Option<PreloadStatus>,
    /// Written only by the autoscaler (field manager `grokcast-autoscaler`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<PoolAutoscalingStatus>,
}

/// A completed weight preload, as recorded in `status.preload`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PreloadStatus {
    /// Name of the Job that downloaded the weights (`<pool>-preload-<templateHash>`); the Job
    /// itself may since have been deleted by its TTL.
    pub job_name: String,
    /// Hash of the Job's pod template and checkpoint; the part of `jobName` after `-preload-`.
    pub template_hash: String,
    /// The checkpoint (Hugging Face repository) that was downloaded.
    pub checkpoint: String,
    /// When the Job completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<Time>,
}

/// What the autoscaler observed and decided for a pool. Only the autoscaler writes it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PoolAutoscalingStatus {
    /// p95 of this stage's latency as seen by the agents, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_p95_ms: Option<f64>,
    /// Requests waiting in the engine's queue (vLLM `num_requests_waiting`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_requests: Option<f64>,
    /// When the figures above were read from Prometheus. The autoscaler writes status only
    /// when something shown here changes, so this is the time of the sample the current
    /// figures came from, not of the last evaluation (which runs every period).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampled_at: Option<Time>,
    /// Replicas the autoscaler wants, before the GPU capacity cap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_replicas: Option<i32>,
    /// When the autoscaler last changed `spec.replicas`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_time: Option<Time>,
    /// Why it last changed `spec.replicas`, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_reason: Option<String>,
    /// GPUs of `gpu.product` the cluster would need beyond what it has, to reach `desiredReplicas`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpus_missing: Option<i32>,
}

impl ModelPoolSpec {
    /// The role this pool serves: the explicit `role`, else the engine's natural one.
    /// `None` only for `custom`/`grokcast` without a role, which the CRD rejects.
    pub fn resolved_role(&self) -> Option<Role> {
        self.role.or(match self.engine {
            Engine::Vllm => Some(Role::Llm),
            Engine::Whisper => Some(Role::Stt),
            Engine::Csm => Some(Role::Tts),
            Engine::Grokcast | Engine::Custom => None,
        })
    }
}
