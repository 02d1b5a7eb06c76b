//! Types shared by both custom resources: secret references, condition types and reasons.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The API group of every GrokCast custom resource.
pub const GROUP: &str = "grokcast.io";
/// The served and stored version of every GrokCast custom resource.
pub const VERSION: &str = "v1alpha1";

/// Field manager the operator uses for every server-side apply, children and status alike.
pub const OPERATOR_FIELD_MANAGER: &str = "grokcast-operator";
/// Field manager the autoscaler uses for `/scale`, its conditions and `status.autoscaling`.
pub const AUTOSCALER_FIELD_MANAGER: &str = "grokcast-autoscaler";

/// A key inside a Secret in the same namespace as the resource that names it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret, in the same namespace as this resource.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key inside the Secret's data that holds the value.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// What a model server does for a voice pipeline; decides which agent stage may use it.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Speech to text, OpenAI `/v1/audio/transcriptions`.
    Stt,
    /// Chat completions, OpenAI `/v1/chat/completions` with SSE streaming.
    Llm,
    /// Text to speech, OpenAI `/v1/audio/speech` with streamed PCM.
    Tts,
}

impl Role {
    /// The lowercase name used in the CRD and in messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Stt => "stt",
            Role::Llm => "llm",
            Role::Tts => "tts",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Condition types and reasons. Types and reasons are fixed strings so that alerts and
/// `kubectl wait --for=condition=...` can rely on them.
pub mod condition {
    /// The resource's children exist and enough of them are ready to serve.
    pub const READY: &str = "Ready";
    /// Every model pool a VoiceAgent references exists, has the right role and is Ready.
    pub const MODELS_READY: &str = "ModelsReady";
    /// A rollout or scale change is under way.
    pub const PROGRESSING: &str = "Progressing";
    /// Something is wrong that the operator cannot fix by itself.
    pub const DEGRADED: &str = "Degraded";
    /// Written by the autoscaler: the observed p95 turn latency is within the SLO.
    pub const SLO_MET: &str = "SLOMet";
    /// Written by the autoscaler: the cluster lacks the GPUs the pool needs to meet its budget.
    pub const CAPACITY_LIMITED: &str = "CapacityLimited";

    /// Condition types the operator owns (field manager `grokcast-operator`).
    pub const OPERATOR_OWNED: [&str; 4] = [READY, MODELS_READY, PROGRESSING, DEGRADED];
    /// Condition types the autoscaler owns (field manager `grokcast-autoscaler`).
    pub const AUTOSCALER_OWNED: [&str; 2] = [SLO_MET, CAPACITY_LIMITED];

    /// Condition reasons. CamelCase as the Kubernetes API conventions require.
    pub mod reason {
        /// Every child is ready.
        pub const AVAILABLE: &str = "Available";
        /// Children were applied; pods are starting or loading models.
        pub const WAITING_FOR_PODS: &str = "WaitingForPods";
        /// The Deployment has fewer ready replicas than desired.
        pub const ROLLING_OUT: &str = "RollingOut";
        /// Rollout finished.
        pub const ROLLOUT_COMPLETE: &str = "RolloutComplete";
        /// Nothing is wrong.
        pub const HEALTHY: &str = "Healthy";
        /// The spec breaks a rule the CRD schema cannot express; the message says which.
        pub const INVALID_SPEC: &str = "InvalidSpec";
        /// A `modelPoolRef` names a ModelPool that does not exist in the namespace.
        pub const MODEL_POOL_NOT_FOUND: &str = "ModelPoolNotFound";
        /// A `modelPoolRef` names a ModelPool whose role does not match the stage.
        pub const MODEL_POOL_WRONG_ROLE: &str = "ModelPoolWrongRole";
        /// A referenced ModelPool exists but is not Ready yet.
        pub const MODEL_POOL_NOT_READY: &str = "ModelPoolNotReady";
        /// Every referenced pool is Ready (or the stage uses an external endpoint).
        pub const MODELS_AVAILABLE: &str = "ModelsAvailable";
        /// A referenced Secret does not exist.
        pub const SECRET_NOT_FOUND: &str = "SecretNotFound";
        /// A referenced Secret exists but lacks the referenced key.
        pub const SECRET_KEY_MISSING: &str = "SecretKeyMissing";
        /// The Kubernetes API refused or failed a write; the operator retries with backoff.
        pub const APPLY_FAILED: &str = "ApplyFailed";
        /// A child's name is taken by an object this resource does not control (no controller
        /// owner reference to it); the operator leaves that object alone.
        pub const NAME_CONFLICT: &str = "NameConflict";
        /// The weight preload Job is downloading the checkpoint into the cache volume.
        pub const PRELOADING: &str = "Preloading";
        /// The weight preload Job failed (its backoff limit was reached).
        pub const PRELOAD_FAILED: &str = "PreloadFailed";
        /// Written by the autoscaler: p95 within budget.
        pub const WITHIN_SLO: &str = "WithinSLO";
        /// Written by the autoscaler: p95 over budget.
        pub const SLO_BREACHED: &str = "SLOBreached";
        /// Written by the autoscaler: Prometheus is unreachable or returned no samples.
        pub const METRICS_UNAVAILABLE: &str = "MetricsUnavailable";
        /// Written by the autoscaler: the operator runs without a Prometheus URL, so nothing
        /// measures the SLO and replicas follow `spec.replicas`.
        pub const AUTOSCALER_DISABLED: &str = "AutoscalerDisabled";
        /// Written by the autoscaler: not enough GPUs of the requested product.
        pub const INSUFFICIENT_GPUS: &str = "InsufficientGPUs";
        /// Written by the autoscaler: enough GPUs.
        pub const GPUS_AVAILABLE: &str = "GPUsAvailable";
    }
}

/// Schema for a `metav1.Condition` list merged by `type`, so that the operator and the
/// autoscaler can each own their conditions under their own field manager.
pub(crate) fn conditions_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let mut schema =
        <Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>>::json_schema(generator);
    schema.insert("x-kubernetes-list-type".into(), "map".into());
    schema.insert(
        "x-kubernetes-list-map-keys".into(),
        serde_json::json!(["type"]),
    );
    schema.insert(
        "description".into(),
        "Standard conditions keyed by type. The operator owns Ready, ModelsReady, Progressing \
         and Degraded; the autoscaler owns SLOMet and CapacityLimited."
            .into(),
    );
    schema
}
