//! Operator-wide settings that change what the builders produce: default images per engine,
//! the agent image, and the optional Prometheus Operator integration.

use grokcast_crds::Engine;

/// Default images and switches the builders read. Filled from flags/env by the binary and
/// by hand in tests, so builders stay pure.
#[derive(Clone, Debug, PartialEq)]
pub struct BuildSettings {
    /// Image for engine `vllm`.
    pub vllm_image: String,
    /// Image for engine `whisper` (speaches, an OpenAI-compatible faster-whisper server).
    pub whisper_image: String,
    /// Image for engine `csm` (grokcast-serve with Sesame CSM-1B on CUDA).
    pub csm_image: String,
    /// Image for engine `grokcast` (`grokcast-serve`, the project's CPU model server).
    pub grokcast_serve_image: String,
    /// Image for the model-weight preload Job (needs Python with `huggingface_hub`).
    pub preload_image: String,
    /// Image for VoiceAgent pods.
    pub agent_image: String,
    /// Whether the `monitoring.coreos.com/v1` ServiceMonitor kind exists in the cluster.
    pub service_monitors: bool,
    /// Whether agent pods get a `preStop` `sleep` action, which API servers before 1.30
    /// refuse (see [`crate::server_version`]).
    pub pre_stop_sleep: bool,
}

impl Default for BuildSettings {
    fn default() -> Self {
        Self {
            vllm_image: "vllm/vllm-openai:v0.10.1.1".into(),
            whisper_image: "ghcr.io/speaches-ai/speaches:0.8.3-cuda".into(),
            csm_image: "ghcr.io/grokcast/grokcast-csm:0.1.0".into(),
            grokcast_serve_image: "ghcr.io/grokcast/grokcast-serve:0.1.0".into(),
            preload_image: "vllm/vllm-openai:v0.10.1.1".into(),
            agent_image: "ghcr.io/grokcast/grokcast-agent:0.1.0".into(),
            service_monitors: false,
            pre_stop_sleep: true,
        }
    }
}

impl BuildSettings {
    /// The default image for an engine; `None` for `custom`, which must name its own.
    pub fn engine_image(&self, engine: Engine) -> Option<&str> {
        match engine {
            Engine::Vllm => Some(&self.vllm_image),
            Engine::Whisper => Some(&self.whisper_image),
            Engine::Csm => Some(&self.csm_image),
            Engine::Grokcast => Some(&self.grokcast_serve_image),
            Engine::Custom => None,
        }
    }
}
