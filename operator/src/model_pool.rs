//! ModelPool pipeline, pure steps: validate the spec, then build the children.
//!
//! `build` takes a [`ValidPool`], so it cannot see a spec that broke a rule.

use std::collections::BTreeMap;

use grokcast_crds::{Engine, ModelPool, PreloadStatus, Quantization, Role};
use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::batch::v1::{Job, JobCondition, JobSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource, EnvVar,
    EnvVarSource, HTTPGetAction, PersistentVolumeClaim, PersistentVolumeClaimSpec,
    PersistentVolumeClaimVolumeSource, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
    ResourceRequirements, SeccompProfile, SecretKeySelector, SecurityContext, TCPSocketAction,
    Toleration, Volume, VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::children::{self, Child};
use crate::meta::{self, MAX_NAME_LEN, Owner};
use crate::settings::BuildSettings;

/// Port every preset engine listens on.
pub const PRESET_PORT: i32 = 8000;
/// The GPU extended resource.
pub const GPU_RESOURCE: &str = "nvidia.com/gpu";
/// Node label set by NVIDIA GPU feature discovery.
pub const GPU_PRODUCT_LABEL: &str = "nvidia.com/gpu.product";
/// Where weights live inside model server pods (cache PVC or an emptyDir).
pub const MODELS_DIR: &str = "/models";
/// vLLM's default context would size KV cache for 128K-token prompts; voice turns are short.
pub const DEFAULT_MAX_MODEL_LEN: i32 = 8192;

/// Why a ModelPool spec cannot be built. Mirrors the CRD's CEL rules so that `render` and
/// API servers without CEL give the same answer, plus rules CEL cannot state.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ValidationError {
    /// The object has no namespace (only possible for offline input).
    #[error("ModelPool {name} has no namespace")]
    NoNamespace {
        /// Resource name.
        name: String,
    },
    /// Children names must fit DNS labels.
    #[error("name {name:?} is {len} characters; ModelPool names may have at most {max}")]
    NameTooLong {
        /// Resource name.
        name: String,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Engine custom without image or port.
    #[error("engine custom needs image and port")]
    CustomNeedsImageAndPort,
    /// Voices for an engine that has none.
    #[error("voicesConfigMap is only for engine csm, not {engine}")]
    VoicesNeedCsm {
        /// The engine.
        engine: &'static str,
    },
    /// Engine custom/grokcast without a role.
    #[error("engine {engine} needs role (stt, llm or tts)")]
    RoleRequired {
        /// The engine.
        engine: &'static str,
    },
    /// Engine/role pair that cannot work.
    #[error("engine {engine} cannot serve role {role}")]
    WrongRole {
        /// The engine.
        engine: &'static str,
        /// The requested role.
        role: Role,
    },
    /// Quantization asked of an engine that cannot derive it.
    #[error(
        "quantization is only derived for engine vllm; use a quantized model for engine {engine}"
    )]
    QuantizationUnsupported {
        /// The engine.
        engine: &'static str,
    },
    /// A GPU engine with gpu.count 0.
    #[error("engine {engine} needs at least one GPU (gpu.count > 0)")]
    NeedsGpu {
        /// The engine.
        engine: &'static str,
    },
    /// autoscaling.minReplicas > autoscaling.maxReplicas.
    #[error("autoscaling.minReplicas ({min}) must not exceed autoscaling.maxReplicas ({max})")]
    MinAboveMax {
        /// minReplicas.
        min: i32,
        /// maxReplicas.
        max: i32,
    },
    /// A pool with no image to run.
    #[error("no image for engine {engine}: set spec.image")]
    NoImage {
        /// The engine.
        engine: &'static str,
    },
    /// Protocol riva on a pool that does not serve streaming speech recognition.
    #[error(
        "protocol riva is streaming speech recognition: engine grokcast or custom with role stt, not engine {engine}"
    )]
    RivaNeedsStt {
        /// The engine.
        engine: &'static str,
    },
    /// grpcPort without protocol riva, or on the HTTP port.
    #[error(
        "grpcPort {port} needs protocol riva and a port of its own (the HTTP API is on {http})"
    )]
    GrpcPort {
        /// grpcPort.
        port: i32,
        /// The HTTP port.
        http: i32,
    },
}

/// A ModelPool whose spec passed validation, with everything derived from it resolved.
#[derive(Clone, Debug)]
pub struct ValidPool<'a> {
    /// The resource.
    pub pool: &'a ModelPool,
    /// Owner of the children.
    pub owner: Owner,
    /// Resolved role.
    pub role: Role,
    /// Image to run.
    pub image: String,
    /// Container port.
    pub port: i32,
    /// The Riva gRPC port, with protocol riva.
    pub grpc_port: Option<i32>,
}

/// Pod label for model-server pods.
pub const APP: &str = "grokcast-model-server";

/// Check the spec and resolve role, image and port.
pub fn validate<'a>(
    pool: &'a ModelPool,
    settings: &BuildSettings,
) -> Result<ValidPool<'a>, ValidationError> {
    let spec = &pool.spec;
    let name = pool.metadata.name.clone().unwrap_or_default();
    if name.len() > MAX_NAME_LEN {
        return Err(ValidationError::NameTooLong {
            len: name.len(),
            name,
            max: MAX_NAME_LEN,
        });
    }
    let owner = Owner::of(pool, APP, meta::MODEL_POOL_LABEL)
        .ok_or_else(|| ValidationError::NoNamespace { name: name.clone() })?;
    let engine = spec.engine.as_str();
    if spec.engine == Engine::Custom && (spec.image.is_none() || spec.port.is_none()) {
        return Err(ValidationError::CustomNeedsImageAndPort);
    }
    if spec.voices_config_map.is_some() && spec.engine != Engine::Csm {
        return Err(ValidationError::VoicesNeedCsm { engine });
    }
    let role = spec
        .resolved_role()
        .ok_or(ValidationError::RoleRequired { engine })?;
    let role_ok = match spec.engine {
        Engine::Vllm => role != Role::Tts,
        Engine::Whisper => role == Role::Stt,
        Engine::Csm => role == Role::Tts,
        Engine::Grokcast | Engine::Custom => true,
    };
    if !role_ok {
        return Err(ValidationError::WrongRole { engine, role });
    }
    if spec.quantization != Quantization::None && spec.engine != Engine::Vllm {
        return Err(ValidationError::QuantizationUnsupported { engine });
    }
    if spec.gpu.count == 0 && !matches!(spec.engine, Engine::Grokcast | Engine::Custom) {
        return Err(ValidationError::NeedsGpu { engine });
    }
    if let Some(a) = &spec.autoscaling
        && a.min_replicas > a.max_replicas
    {
        return Err(ValidationError::MinAboveMax {
            min: a.min_replicas,
            max: a.max_replicas,
        });
    }
    let image = match (&spec.image, settings.engine_image(spec.engine)) {
        (Some(image), _) if !image.is_empty() => image.clone(),
        (_, Some(default)) => default.to_string(),
        _ => return Err(ValidationError::NoImage { engine }),
    };
    let port = spec.port.unwrap_or(PRESET_PORT);
    let grpc_port = spec.riva_port();
    if grpc_port.is_some()
        && !(matches!(spec.engine, Engine::Grokcast | Engine::Custom) && role == Role::Stt)
    {
        return Err(ValidationError::RivaNeedsStt { engine });
    }
    let clash = match (spec.grpc_port, grpc_port) {
        // grpcPort without protocol riva.
        (Some(p), None) => Some(p),
        // The Riva port on the HTTP port, set or by default.
        (_, Some(g)) if g == port => Some(g),
        _ => None,
    };
    if let Some(p) = clash {
        return Err(ValidationError::GrpcPort {
            port: p,
            http: port,
        });
    }
    Ok(ValidPool {
        pool,
        owner,
        role,
        image,
        port,
        grpc_port,
    })
}

/// The in-cluster base URL of a pool's OpenAI-compatible API.
pub fn endpoint(name: &str, namespace: &str, port: i32) -> String {
    format!("http://{name}.{namespace}.svc:{port}/v1")
}

/// The in-cluster URL of a pool's Riva gRPC service (plain-text HTTP/2).
pub fn streaming_endpoint(name: &str, namespace: &str, port: i32) -> String {
    format!("http://{name}.{namespace}.svc:{port}")
}

/// Pre-quantized checkpoints for models whose publishers ship none. vLLM reads the
/// quantization scheme from the checkpoint, so no `--quantization` flag is needed for these.
const QUANTIZED_VARIANTS: &[(&str, Quantization, &str)] = &[
    // GPTQ W4A16, group size 128, compressed-tensors; about 17 GB, fits one A100 80GB with
    // ample KV cache. Served by vLLM's Marlin kernels on Ampere.
    (
        "google/gemma-3-27b-it",
        Quantization::Int4,
        "ISTA-DASLab/gemma-3-27b-it-GPTQ-4b-128g",
    ),
    (
        "google/gemma-3-27b-it",
        Quantization::Int8,
        "RedHatAI/gemma-3-27b-it-quantized.w8a8",
    ),
    (
        "google/gemma-3-12b-it",
        Quantization::Int4,
        "ISTA-DASLab/gemma-3-12b-it-GPTQ-4b-128g",
    ),
];

/// The checkpoint vLLM loads for `model` at `quantization`: a known quantized variant, or
/// the model itself (then it must already be quantized, or fp8 is applied at load time).
pub fn vllm_checkpoint(model: &str, quantization: Quantization) -> &str {
    QUANTIZED_VARIANTS
        .iter()
        .find(|(base, q, _)| *base == model && *q == quantization)
        .map(|(_, _, repo)| *repo)
        .unwrap_or(model)
}

/// How to run one engine: command, args, env and the endpoints the probes hit.
#[derive(Clone, Debug, PartialEq)]
pub struct EngineRun {
    /// Container command; empty keeps the image's entrypoint.
    pub command: Vec<String>,
    /// Arguments, the spec's `args` last.
    pub args: Vec<String>,
    /// Extra environment.
    pub env: Vec<EnvVar>,
    /// HTTP path for the liveness probe; `None` probes the TCP port.
    pub health_path: Option<&'static str>,
    /// HTTP path for startup and readiness probes (model loaded); `None` probes the TCP port.
    pub ready_path: Option<&'static str>,
    /// The checkpoint the preload Job downloads.
    pub checkpoint: String,
    /// A Python script the preload Job runs instead of downloading the checkpoint into the
    /// Hugging Face cache, for engines that read a directory of their own.
    pub preload_script: Option<&'static str>,
}

/// Where the `csm` preset's server reads its model directory, in the cache volume.
pub const CSM_MODEL_DIR: &str = "/models/csm";

/// Where a `csm` pool's `voicesConfigMap` is mounted.
pub const CSM_VOICES_DIR: &str = "/etc/grokcast/voices";

/// The `csm` preload: CSM's config and weights (`MODEL_REPO`), the Llama 3.2 tokenizer CSM
/// reads text with, and the Mimi codec, assembled into [`CSM_MODEL_DIR`] as grokcast-serve
/// reads it (docs/engines.md).
const CSM_PRELOAD: &str = "import os, shutil\n\
from huggingface_hub import hf_hub_download\n\
d = '/models/csm'\n\
os.makedirs(d, exist_ok=True)\n\
for f in ('config.json', 'model.safetensors'): hf_hub_download(os.environ['MODEL_REPO'], f, local_dir=d)\n\
hf_hub_download('meta-llama/Llama-3.2-1B', 'tokenizer.json', local_dir=d)\n\
shutil.copyfile(hf_hub_download('kyutai/mimi', 'model.safetensors'), os.path.join(d, 'mimi.safetensors'))\n";

fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..EnvVar::default()
    }
}

/// The engine preset for a validated pool.
pub fn engine_run(v: &ValidPool<'_>) -> EngineRun {
    let spec = &v.pool.spec;
    let port = v.port.to_string();
    let mut run = match spec.engine {
        Engine::Vllm => {
            let checkpoint = vllm_checkpoint(&spec.model, spec.quantization).to_string();
            let mut args = vec![
                checkpoint.clone(),
                // Agents ask for the model by the name in the spec, whichever variant loads.
                "--served-model-name".into(),
                spec.model.clone(),
                "--host".into(),
                "0.0.0.0".into(),
                "--port".into(),
                port,
                // Gemma 3 is trained in bfloat16; float16 overflows in its activations.
                // Whisper (role stt) runs in the float16 its checkpoints are published in.
                "--dtype".into(),
                if v.role == Role::Stt {
                    "auto".into()
                } else {
                    "bfloat16".into()
                },
                "--gpu-memory-utilization".into(),
                format!("{}", spec.gpu.memory_utilization),
                "--download-dir".into(),
                format!("{MODELS_DIR}/hf/hub"),
            ];
            // Whisper's decoder holds 448 positions and vLLM refuses a longer context than
            // the model's, so an stt pool takes the model's own unless the spec names one.
            match (spec.max_model_len, v.role) {
                (Some(len), _) => args.extend(["--max-model-len".into(), len.to_string()]),
                (None, Role::Stt) => {}
                (None, _) => {
                    args.extend(["--max-model-len".into(), DEFAULT_MAX_MODEL_LEN.to_string()])
                }
            }
            if spec.gpu.count > 1 {
                args.extend(["--tensor-parallel-size".into(), spec.gpu.count.to_string()]);
            }
            if spec.quantization == Quantization::Fp8 && checkpoint == spec.model {
                args.extend(["--quantization".into(), "fp8".into()]);
            }
            if v.role == Role::Llm && spec.model.starts_with("google/gemma-3-") {
                // Voice turns are text only: skip the vision encoder's memory and warm-up.
                args.extend(["--limit-mm-per-prompt".into(), r#"{"image":0}"#.into()]);
            }
            EngineRun {
                command: vec!["vllm".into(), "serve".into()],
                args,
                env: Vec::new(),
                health_path: Some("/health"),
                ready_path: Some("/health"),
                checkpoint,
                preload_script: None,
            }
        }
        // speaches (formerly faster-whisper-server) loads models on request. PRELOAD_MODELS
        // only downloads the model, and its default STT_MODEL_TTL (300 s) unloads an idle one,
        // so the first turn after a quiet spell would pay a load: -1 keeps it loaded.
        Engine::Whisper => EngineRun {
            command: Vec::new(),
            args: Vec::new(),
            env: vec![
                env("PRELOAD_MODELS", format!("[\"{}\"]", spec.model)),
                env("STT_MODEL_TTL", "-1"),
                env("WHISPER__INFERENCE_DEVICE", "cuda"),
                env("UVICORN_HOST", "0.0.0.0"),
                env("UVICORN_PORT", port),
            ],
            health_path: Some("/health"),
            ready_path: Some("/health"),
            checkpoint: spec.model.clone(),
            preload_script: None,
        },
        // grokcast-serve with CSM on CUDA (docker/csm.Dockerfile), reading the directory the
        // preload assembles; requests name the pool's model.
        Engine::Csm => EngineRun {
            command: Vec::new(),
            args: vec![
                "--role".into(),
                "tts".into(),
                "--engine".into(),
                "csm".into(),
                "--listen".into(),
                format!("0.0.0.0:{port}"),
                "--csm-model-dir".into(),
                CSM_MODEL_DIR.into(),
                "--tts-model".into(),
                spec.model.clone(),
            ],
            env: Vec::new(),
            health_path: Some("/healthz"),
            ready_path: Some("/readyz"),
            checkpoint: spec.model.clone(),
            preload_script: Some(CSM_PRELOAD),
        },
        // grokcast-serve ships its models in the image; the role picks which engine loads.
        Engine::Grokcast => EngineRun {
            command: Vec::new(),
            args: vec![
                "--role".into(),
                v.role.as_str().into(),
                "--listen".into(),
                format!("0.0.0.0:{port}"),
            ],
            env: Vec::new(),
            health_path: Some("/healthz"),
            ready_path: Some("/readyz"),
            checkpoint: spec.model.clone(),
            preload_script: None,
        },
        Engine::Custom => EngineRun {
            command: Vec::new(),
            args: Vec::new(),
            env: Vec::new(),
            health_path: None,
            ready_path: None,
            checkpoint: spec.model.clone(),
            preload_script: None,
        },
    };
    if let (Engine::Grokcast, Some(grpc)) = (spec.engine, v.grpc_port) {
        run.args
            .extend(["--grpc-listen".into(), format!("0.0.0.0:{grpc}")]);
    }
    if spec.engine == Engine::Csm && spec.voices_config_map.is_some() {
        // Where `build` mounts the pool's voices ConfigMap.
        run.args
            .extend(["--csm-voices-dir".into(), CSM_VOICES_DIR.into()]);
    }
    run.args.extend(spec.args.iter().cloned());
    run.env.push(env("HF_HOME", format!("{MODELS_DIR}/hf")));
    if let Some(secret) = &spec.hugging_face_token_secret_ref {
        run.env.push(EnvVar {
            name: "HF_TOKEN".into(),
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: secret.name.clone(),
                    key: secret.key.clone(),
                    optional: Some(false),
                }),
                ..EnvVarSource::default()
            }),
            ..EnvVar::default()
        });
    }
    run
}

fn probe(health_path: Option<&str>, period: i32, failure_threshold: i32, timeout: i32) -> Probe {
    let (http_get, tcp_socket) = match health_path {
        Some(path) => (
            Some(HTTPGetAction {
                path: Some(path.into()),
                port: IntOrString::String("http".into()),
                ..HTTPGetAction::default()
            }),
            None,
        ),
        None => (
            None,
            Some(TCPSocketAction {
                port: IntOrString::String("http".into()),
                ..TCPSocketAction::default()
            }),
        ),
    };
    Probe {
        http_get,
        tcp_socket,
        period_seconds: Some(period),
        failure_threshold: Some(failure_threshold),
        timeout_seconds: Some(timeout),
        ..Probe::default()
    }
}

/// Name of the cache PVC.
pub fn cache_name(pool: &str) -> String {
    format!("{pool}-cache")
}

/// Name of a preload Job: `<pool>-preload-<template hash>`. A Job's pod template is
/// immutable, so anything that changes it (checkpoint, image, env, node selector,
/// tolerations) must yield a new Job rather than an update the API server refuses with 422.
pub fn preload_job_name(pool: &str, template_hash: &str) -> String {
    format!("{pool}-preload-{template_hash}")
}

/// Content hash of a preload Job: its whole pod template plus the checkpoint, 8 hex digits.
pub fn preload_template_hash(template: &PodTemplateSpec, checkpoint: &str) -> String {
    // Serialising a PodTemplateSpec cannot fail (string-keyed maps only); an empty body would
    // only make every template hash alike, which the checkpoint still separates.
    let mut data = serde_json::to_vec(template).unwrap_or_default();
    data.extend_from_slice(checkpoint.as_bytes());
    meta::short_hash(&data, 8)
}

/// The preload Job a pool wants, with what `status.preload` records about it.
#[derive(Clone, Debug, PartialEq)]
pub struct Preload {
    /// The Job to apply.
    pub job: Job,
    /// Its name.
    pub job_name: String,
    /// [`preload_template_hash`] of its template.
    pub template_hash: String,
    /// The checkpoint it downloads.
    pub checkpoint: String,
}

impl Preload {
    /// Whether `status.preload` says this very preload (same template hash) already completed.
    pub fn completed(&self, status: Option<&PreloadStatus>) -> bool {
        status.is_some_and(|s| s.template_hash == self.template_hash)
    }
}

/// What the preload of a pool is doing, from the wanted [`Preload`] and the live Job.
#[derive(Clone, Debug, PartialEq)]
pub enum PreloadState {
    /// No preload wanted (no cache, or `cache.preload: false`).
    None,
    /// `status.preload` already records this preload: no Job is applied.
    Done,
    /// The Job just completed: record it in `status.preload`.
    Completed(PreloadStatus),
    /// The Job is running or about to start.
    Running {
        /// Job name.
        job: String,
        /// Checkpoint being downloaded.
        checkpoint: String,
    },
    /// The Job reached its backoff limit.
    Failed {
        /// Job name.
        job: String,
        /// The Job's Failed condition message.
        message: String,
    },
}

fn job_condition<'a>(job: &'a Job, type_: &str) -> Option<&'a JobCondition> {
    job.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_ && c.status == "True")
}

/// The preload state of a pool, pure: `wanted` from [`preload`], `live` the Job of that name
/// as last seen (cache or apply response), `recorded` the pool's `status.preload`.
pub fn preload_state(
    wanted: Option<&Preload>,
    live: Option<&Job>,
    recorded: Option<&PreloadStatus>,
) -> PreloadState {
    let Some(wanted) = wanted else {
        return PreloadState::None;
    };
    if wanted.completed(recorded) {
        return PreloadState::Done;
    }
    let live = live.filter(|j| j.metadata.name.as_deref() == Some(wanted.job_name.as_str()));
    if let Some(job) = live {
        if let Some(done) = job_condition(job, "Complete") {
            return PreloadState::Completed(PreloadStatus {
                job_name: wanted.job_name.clone(),
                template_hash: wanted.template_hash.clone(),
                checkpoint: wanted.checkpoint.clone(),
                completed_at: job
                    .status
                    .as_ref()
                    .and_then(|s| s.completion_time.clone())
                    .or_else(|| done.last_transition_time.clone()),
            });
        }
        if let Some(failed) = job_condition(job, "Failed") {
            return PreloadState::Failed {
                job: wanted.job_name.clone(),
                message: failed.message.clone().unwrap_or_default(),
            };
        }
    }
    PreloadState::Running {
        job: wanted.job_name.clone(),
        checkpoint: wanted.checkpoint.clone(),
    }
}

/// Preload Jobs of this pool (by name, as listed from the cache) that are not `keep`: older
/// templates, to delete. Only names with this pool's `-preload-` prefix are candidates, so
/// another pool's Jobs never match even if a label was copied by hand.
pub fn stale_preload_jobs<'a>(
    pool: &str,
    keep: Option<&str>,
    jobs: impl IntoIterator<Item = &'a str>,
) -> Vec<String> {
    let prefix = format!("{pool}-preload-");
    jobs.into_iter()
        .filter(|n| {
            n.strip_prefix(&prefix)
                .is_some_and(|h| h.len() == 8 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        })
        .filter(|n| Some(*n) != keep)
        .map(str::to_string)
        .collect()
}

/// Where model-server and preload pods run: the spec's node selector plus the GPU product
/// label, and the spec's tolerations plus the GPU taint.
fn placement(v: &ValidPool<'_>) -> (BTreeMap<String, String>, Vec<Toleration>) {
    let spec = &v.pool.spec;
    let gpus = spec.gpu.count;
    let mut node_selector = spec.node_selector.clone();
    if let Some(product) = spec.gpu.product.as_ref().filter(|p| !p.is_empty())
        && gpus > 0
    {
        node_selector.insert(GPU_PRODUCT_LABEL.into(), product.clone());
    }
    let mut tolerations = Vec::new();
    if gpus > 0 {
        // GPU nodes are commonly tainted so only GPU workloads land there.
        tolerations.push(Toleration {
            key: Some(GPU_RESOURCE.into()),
            operator: Some("Exists".into()),
            effect: Some("NoSchedule".into()),
            ..Toleration::default()
        });
    }
    tolerations.extend(spec.tolerations.iter().cloned());
    (node_selector, tolerations)
}

/// The user a preset engine's image runs as, when it is known not to be root: then the pods
/// set `runAsNonRoot` (with that numeric uid, which the kubelet needs to verify it).
/// - `vllm`: the official `vllm/vllm-openai` image runs as root (it writes to `/root` and
///   its pip cache), so it gets no `runAsNonRoot`; everything else still applies.
/// - `whisper`: speaches runs as its image's `ubuntu` user, uid 1000; the image names the
///   user, not the uid, so the uid is set here.
/// - `grokcast` and `csm`: `grokcast-serve` runs as 65532 (docker/serve.Dockerfile,
///   docker/csm.Dockerfile).
/// - `custom`: an image the operator cannot vouch for; no `runAsNonRoot`.
pub fn engine_non_root_uid(engine: Engine) -> Option<i64> {
    match engine {
        Engine::Whisper => Some(1000),
        Engine::Grokcast | Engine::Csm => Some(65_532),
        Engine::Vllm | Engine::Custom => None,
    }
}

/// The container security context of model-server and preload pods: no privilege
/// escalation, every capability dropped, the runtime's default seccomp profile, and
/// `runAsNonRoot` with `uid` where the image is known to run as that user.
pub fn restricted_container(uid: Option<i64>) -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            ..Capabilities::default()
        }),
        seccomp_profile: Some(runtime_default_seccomp()),
        run_as_non_root: uid.map(|_| true),
        run_as_user: uid,
        ..SecurityContext::default()
    }
}

/// The pod security context to go with [`restricted_container`]: RuntimeDefault seccomp, and
/// the cache volume group-owned by the image's user so a non-root server can write weights.
pub fn restricted_pod(uid: Option<i64>) -> PodSecurityContext {
    PodSecurityContext {
        seccomp_profile: Some(runtime_default_seccomp()),
        run_as_non_root: uid.map(|_| true),
        run_as_user: uid,
        fs_group: uid,
        ..PodSecurityContext::default()
    }
}

fn runtime_default_seccomp() -> SeccompProfile {
    SeccompProfile {
        type_: "RuntimeDefault".into(),
        ..SeccompProfile::default()
    }
}

/// Every child of a validated pool, in apply order.
pub fn build(v: &ValidPool<'_>, settings: &BuildSettings) -> Vec<Child> {
    let spec = &v.pool.spec;
    let name = v.owner.name.clone();
    let run = engine_run(v);

    let gpus = spec.gpu.count;
    let mut resources = spec.resources.clone().unwrap_or_default();
    if gpus > 0 {
        let gpu = Quantity(gpus.to_string());
        resources
            .limits
            .get_or_insert_with(BTreeMap::new)
            .insert(GPU_RESOURCE.into(), gpu.clone());
        resources
            .requests
            .get_or_insert_with(BTreeMap::new)
            .insert(GPU_RESOURCE.into(), gpu);
    }

    let (node_selector, tolerations) = placement(v);
    let uid = engine_non_root_uid(spec.engine);

    let models_volume = match &spec.cache {
        Some(_) => Volume {
            name: "models".into(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: cache_name(&name),
                read_only: Some(false),
            }),
            ..Volume::default()
        },
        None => Volume {
            name: "models".into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Volume::default()
        },
    };
    let mut volumes = vec![
        models_volume,
        // Engines share tensors between processes through /dev/shm; the container default
        // of 64 MiB makes NCCL and PyTorch workers fail.
        Volume {
            name: "dshm".into(),
            empty_dir: Some(EmptyDirVolumeSource {
                medium: Some("Memory".into()),
                size_limit: Some(Quantity("16Gi".into())),
            }),
            ..Volume::default()
        },
    ];
    let mut mounts = vec![
        VolumeMount {
            name: "models".into(),
            mount_path: MODELS_DIR.into(),
            ..VolumeMount::default()
        },
        VolumeMount {
            name: "dshm".into(),
            mount_path: "/dev/shm".into(),
            ..VolumeMount::default()
        },
    ];
    // CSM's voices (validation allows them for `csm` only). Not optional: a pool whose
    // voices are missing must not start speaking in other voices.
    if let Some(voices) = &spec.voices_config_map {
        volumes.push(Volume {
            name: "voices".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: voices.clone(),
                optional: Some(false),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        });
        mounts.push(VolumeMount {
            name: "voices".into(),
            mount_path: CSM_VOICES_DIR.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        });
    }
    // `grpc` for the Riva service: the name tells meshes and ingresses it is gRPC.
    let mut ports = vec![("http", v.port)];
    ports.extend(v.grpc_port.map(|p| ("grpc", p)));
    let container = Container {
        name: "server".into(),
        image: Some(v.image.clone()),
        command: (!run.command.is_empty()).then(|| run.command.clone()),
        args: (!run.args.is_empty()).then(|| run.args.clone()),
        env: Some(run.env.clone()),
        ports: Some(
            ports
                .iter()
                .map(|(name, port)| ContainerPort {
                    name: Some((*name).into()),
                    container_port: *port,
                    protocol: Some("TCP".into()),
                    ..ContainerPort::default()
                })
                .collect(),
        ),
        resources: Some(resources),
        // Loading a 27B checkpoint takes minutes (longer when it downloads): the startup
        // probe allows 30 minutes so liveness never kills a pod that is still loading.
        startup_probe: Some(probe(run.ready_path, 10, 180, 5)),
        readiness_probe: Some(probe(run.ready_path, 5, 3, 5)),
        liveness_probe: Some(probe(run.health_path, 15, 4, 10)),
        volume_mounts: Some(mounts),
        security_context: Some(restricted_container(uid)),
        ..Container::default()
    };
    let deployment = Deployment {
        metadata: v.owner.child_meta(name.clone()),
        spec: Some(DeploymentSpec {
            replicas: Some(spec.replicas),
            selector: v.owner.label_selector(),
            // Surge one pod and keep all serving ones: no dropped capacity when a spare GPU
            // exists; without one the rollout waits (Progressing) instead of cutting capacity.
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(IntOrString::Int(1)),
                    max_unavailable: Some(IntOrString::Int(0)),
                }),
            }),
            template: PodTemplateSpec {
                metadata: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                    labels: Some(v.owner.labels()),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    volumes: Some(volumes),
                    node_selector: (!node_selector.is_empty()).then_some(node_selector.clone()),
                    tolerations: (!tolerations.is_empty()).then_some(tolerations.clone()),
                    priority_class_name: spec.priority_class_name.clone(),
                    termination_grace_period_seconds: Some(60),
                    // Model servers never call the Kubernetes API.
                    automount_service_account_token: Some(false),
                    security_context: Some(restricted_pod(uid)),
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    };

    let mut out = Vec::new();
    if let Some(cache) = &spec.cache {
        out.push(Child::PersistentVolumeClaim(PersistentVolumeClaim {
            metadata: v.owner.child_meta(cache_name(&name)),
            spec: Some(PersistentVolumeClaimSpec {
                access_modes: Some(vec![cache.access_mode.as_str().into()]),
                storage_class_name: cache.storage_class_name.clone(),
                resources: Some(VolumeResourceRequirements {
                    requests: Some(BTreeMap::from([("storage".into(), cache.size.clone())])),
                    ..VolumeResourceRequirements::default()
                }),
                ..PersistentVolumeClaimSpec::default()
            }),
            ..PersistentVolumeClaim::default()
        }));
        if let Some(preload) = preload(v, &run, settings, node_selector, tolerations)
            && !preload.completed(v.pool.status.as_ref().and_then(|s| s.preload.as_ref()))
        {
            out.push(Child::Job(Box::new(preload.job)));
        }
    }
    out.push(Child::Deployment(Box::new(deployment)));
    out.push(Child::Service(children::service(
        &v.owner,
        name.clone(),
        &ports,
    )));
    out.push(Child::PodDisruptionBudget(children::pod_disruption_budget(
        &v.owner,
        name.clone(),
    )));
    // The autoscaler's engine queries select `service="<pool>"`, the label a ServiceMonitor
    // on the pool's Service gives every series, so without one the engine signals are empty.
    if settings.service_monitors && serves_prometheus_metrics(spec.engine) {
        out.push(Child::ServiceMonitor(children::service_monitor(
            &v.owner, name, "http", "15s",
        )));
    }
    out
}

/// Whether a preset engine serves Prometheus metrics at `/metrics` on its API port: vLLM
/// (`vllm:*`) and grokcast-serve (`grokcast_engine_*`, also in the CSM image) do. speaches
/// serves none, and a custom image is the user's to scrape: a ServiceMonitor for them would
/// only add a target that is always down.
pub fn serves_prometheus_metrics(engine: Engine) -> bool {
    matches!(engine, Engine::Vllm | Engine::Grokcast | Engine::Csm)
}

/// The preload a validated pool wants, if any (`cache.preload`); the Job is included whether
/// or not `status.preload` already records it (see [`Preload::completed`]).
pub fn preload_for(v: &ValidPool<'_>, settings: &BuildSettings) -> Option<Preload> {
    let (node_selector, tolerations) = placement(v);
    preload(v, &engine_run(v), settings, node_selector, tolerations)
}

/// Downloads the checkpoint into the cache volume with `huggingface_hub`, which the vLLM
/// image ships; runs on the same nodes as the servers so a ReadWriteOnce volume works.
fn preload(
    v: &ValidPool<'_>,
    run: &EngineRun,
    settings: &BuildSettings,
    node_selector: BTreeMap<String, String>,
    tolerations: Vec<Toleration>,
) -> Option<Preload> {
    if !v.pool.spec.cache.as_ref().is_some_and(|c| c.preload) {
        return None;
    }
    let name = &v.owner.name;
    let mut env = vec![env("MODEL_REPO", run.checkpoint.clone())];
    env.extend(
        run.env
            .iter()
            .filter(|e| e.name.starts_with("HF_"))
            .cloned(),
    );
    let template = PodTemplateSpec {
        metadata: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            labels: Some(BTreeMap::from([
                (meta::MANAGED_BY_LABEL.into(), meta::MANAGED_BY.into()),
                (meta::MODEL_POOL_LABEL.into(), name.clone()),
            ])),
            ..Default::default()
        }),
        spec: Some(PodSpec {
            restart_policy: Some("OnFailure".into()),
            containers: vec![Container {
                name: "preload".into(),
                image: Some(settings.preload_image.clone()),
                command: Some(vec![
                    "python3".into(),
                    "-c".into(),
                    run.preload_script
                        .unwrap_or(
                            "import os; from huggingface_hub import snapshot_download; \
                             snapshot_download(os.environ['MODEL_REPO'])",
                        )
                        .into(),
                ]),
                env: Some(env),
                resources: Some(ResourceRequirements {
                    requests: Some(BTreeMap::from([
                        ("cpu".into(), Quantity("500m".into())),
                        ("memory".into(), Quantity("1Gi".into())),
                    ])),
                    ..ResourceRequirements::default()
                }),
                volume_mounts: Some(vec![VolumeMount {
                    name: "models".into(),
                    mount_path: MODELS_DIR.into(),
                    ..VolumeMount::default()
                }]),
                // The default preload image is vLLM's, which runs as root.
                security_context: Some(restricted_container(None)),
                ..Container::default()
            }],
            volumes: Some(vec![Volume {
                name: "models".into(),
                persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                    claim_name: cache_name(name),
                    read_only: Some(false),
                }),
                ..Volume::default()
            }]),
            node_selector: (!node_selector.is_empty()).then_some(node_selector),
            tolerations: (!tolerations.is_empty()).then_some(tolerations),
            automount_service_account_token: Some(false),
            security_context: Some(restricted_pod(None)),
            ..PodSpec::default()
        }),
    };
    let template_hash = preload_template_hash(&template, &run.checkpoint);
    let job_name = preload_job_name(name, &template_hash);
    let job = Job {
        metadata: v.owner.child_meta(job_name.clone()),
        spec: Some(JobSpec {
            backoff_limit: Some(6),
            // The TTL keeps finished Jobs from piling up; `status.preload` remembers the
            // completion, so the deletion does not start the download again.
            ttl_seconds_after_finished: Some(86_400),
            template,
            ..JobSpec::default()
        }),
        ..Job::default()
    };
    Some(Preload {
        job,
        job_name,
        template_hash,
        checkpoint: run.checkpoint.clone(),
    })
}
