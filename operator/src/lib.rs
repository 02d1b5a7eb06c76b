//! The GrokCast operator: reconcilers, autoscaler and offline rendering.

pub mod autoscale;
