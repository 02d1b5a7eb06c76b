//! The `grokcast.io/v1alpha1` custom resources: `VoiceAgent` and `ModelPool`.
