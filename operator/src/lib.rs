//! The GrokCast operator: reconcilers, autoscaler and offline rendering.
//!
//! Pure steps (no API client): [`model_pool`], [`voice_agent`], [`status`], [`render`],
//! [`rbac`], [`last_applied`], [`server_version`]. Around them: [`controller`] (dereference, apply, status),
//! [`watches`] (the streams and caches behind it), [`leader`] (Lease election), [`http`] and
//! [`metrics`].

pub mod autoscale;
pub mod children;
pub mod cli;
pub mod controller;
pub mod http;
pub mod last_applied;
pub mod leader;
pub mod meta;
pub mod metrics;
pub mod model_pool;
pub mod rbac;
pub mod render;
pub mod run;
pub mod server_version;
pub mod settings;
pub mod status;
pub mod voice_agent;
pub mod watches;
