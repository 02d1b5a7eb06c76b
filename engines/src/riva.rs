//! NVIDIA Riva's speech-recognition API (`nvidia.riva.asr`), generated from the subset in
//! `engines/proto`: the agent streams callers' audio with its client, `grokcast-serve`
//! answers with its server, and a Riva or NIM ASR pool answers the same client unchanged.

/// The generated packages, nested as protobuf nests them (`nvidia.riva.asr` refers to
/// `nvidia.riva` as its parent).
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod nvidia {
    /// Riva's audio encodings (`nvidia.riva`).
    pub mod riva {
        tonic::include_proto!("nvidia.riva");

        /// Riva's speech recognition service and messages (`nvidia.riva.asr`).
        pub mod asr {
            tonic::include_proto!("nvidia.riva.asr");
        }
    }
}

pub use nvidia::riva::AudioEncoding;
pub use nvidia::riva::asr;
pub use nvidia::riva::asr::riva_speech_recognition_client::RivaSpeechRecognitionClient;
pub use nvidia::riva::asr::riva_speech_recognition_server::{
    RivaSpeechRecognition, RivaSpeechRecognitionServer,
};
