//! The `grokcast.io/v1alpha1` custom resources: `VoiceAgent` and `ModelPool`.
//!
//! The CRD YAML in `crds/yaml/` is generated from these types; regenerate it with
//! `GROKCAST_BLESS=1 cargo test -p grokcast-crds` (a test fails whenever it drifts).

mod common;
pub mod model_pool;
pub mod reference;
pub mod voice_agent;

pub use common::{
    AUTOSCALER_FIELD_MANAGER, GROUP, OPERATOR_FIELD_MANAGER, Role, SecretKeyRef, VERSION, condition,
};
pub use model_pool::{
    CacheAccessMode, CacheSpec, Engine, GpuSpec, ModelPool, ModelPoolSpec, ModelPoolStatus,
    PoolAutoscaling, PoolAutoscalingStatus, PreloadStatus, Protocol, Quantization, RIVA_PORT,
};
pub use voice_agent::{
    AgentAutoscalingStatus, AgentScaling, EndOfTurnModel, HttpToolSpec, LlmSpec, PersonaSpec,
    PlaygroundSpec, SloSpec, StageBackend, StageLatency, SttProtocol, SttSpec, TelephonySpec,
    ToolSwitch, ToolsSpec, TransferCallSpec, TransferTargetSpec, TtsSpec, TurnTakingSpec,
    TwilioApiKeyRef, TwilioSpec, VoiceAgent, VoiceAgentSpec, VoiceAgentStatus,
};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

/// Both CRDs, ModelPool first (VoiceAgents reference pools).
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![ModelPool::crd(), VoiceAgent::crd()]
}

/// A CRD as the YAML committed under `crds/yaml/`.
pub fn crd_yaml(crd: &CustomResourceDefinition) -> Result<String, serde_yaml::Error> {
    serde_yaml::to_string(crd)
}
