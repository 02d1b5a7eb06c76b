//! `POST /v1/audio/transcriptions`: multipart upload of a WAV file or raw s16le PCM.

use std::sync::Arc;

use axum::extract::State;
use axum::extract::multipart::{Multipart, MultipartError, MultipartRejection};
use axum::http::StatusCode;
use axum::response::Response;

use super::{ApiError, AppState, check_model};
use crate::audio::{self, AudioError};

/// Output formats this server writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ResponseFormat {
    Json,
    Text,
}

/// A validated upload.
#[derive(Debug)]
#[cfg_attr(not(feature = "whisper"), allow(dead_code))]
pub(crate) struct TranscriptionJob {
    /// 16 kHz mono samples.
    pub(crate) pcm16k: Vec<f32>,
    pub(crate) language: Option<String>,
    pub(crate) format: ResponseFormat,
}

fn multipart_error(e: &MultipartError) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::too_large(e.body_text())
    } else {
        ApiError::invalid(
            "file",
            format!("cannot read the multipart body: {}", e.body_text()),
        )
    }
}

async fn read_form(mut form: Multipart, state: &AppState) -> Result<TranscriptionJob, ApiError> {
    let mut file: Option<axum::body::Bytes> = None;
    let mut model = None;
    let mut language = None;
    let mut format = None;
    let mut raw_rate = None;
    while let Some(field) = form.next_field().await.map_err(|e| multipart_error(&e))? {
        let name = field.name().unwrap_or_default().to_owned();
        if name == "file" {
            file = Some(field.bytes().await.map_err(|e| multipart_error(&e))?);
            continue;
        }
        let value = field.text().await.map_err(|e| multipart_error(&e))?;
        match name.as_str() {
            "model" => model = Some(value),
            "language" => language = Some(value),
            "response_format" => format = Some(value),
            "sample_rate" => raw_rate = Some(value),
            // prompt, temperature, timestamp_granularities: accepted and not used.
            _ => {}
        }
    }
    check_model(model.as_deref(), &state.config.stt_models)?;
    let format = match format.as_deref().map(str::trim) {
        None | Some("") | Some("json") => ResponseFormat::Json,
        Some("text") => ResponseFormat::Text,
        Some(other) => {
            return Err(ApiError::invalid(
                "response_format",
                format!("response_format '{other}' is not supported (json, text)"),
            ));
        }
    };
    let raw_rate = match raw_rate.as_deref().map(str::trim) {
        None | Some("") => 16_000,
        Some(r) => match r.parse::<u32>() {
            Ok(v) if (8_000..=192_000).contains(&v) => v,
            _ => {
                return Err(ApiError::invalid(
                    "sample_rate",
                    format!("sample_rate must be 8000..=192000, got '{r}'"),
                ));
            }
        },
    };
    let file = file.ok_or_else(|| ApiError::missing("file"))?;
    let clip = audio::decode_clip(&file, raw_rate).map_err(|e| match e {
        AudioError::Empty => ApiError::invalid("file", "the audio file is empty"),
        other => ApiError::invalid("file", other.to_string()),
    })?;
    let seconds = clip.samples.len() as f32 / clip.sample_rate.max(1) as f32;
    if seconds > state.config.max_audio_seconds {
        return Err(ApiError::too_large(format!(
            "the audio is {seconds:.1} s long; this server transcribes at most {} s",
            state.config.max_audio_seconds
        )));
    }
    Ok(TranscriptionJob {
        pcm16k: audio::resample(&clip.samples, clip.sample_rate, 16_000),
        language: language
            .map(|l| l.trim().to_owned())
            .filter(|l| !l.is_empty()),
        format,
    })
}

/// The handler.
pub(crate) async fn transcriptions(
    State(state): State<Arc<AppState>>,
    form: Result<Multipart, MultipartRejection>,
) -> Result<Response, ApiError> {
    let form = form.map_err(|e| {
        ApiError::invalid(
            "file",
            format!("expected a multipart/form-data body: {}", e.body_text()),
        )
    })?;
    let job = read_form(form, &state).await?;
    run(state, job).await
}

#[cfg(not(feature = "whisper"))]
async fn run(_state: Arc<AppState>, _job: TranscriptionJob) -> Result<Response, ApiError> {
    Err(super::not_served("transcriptions"))
}

#[cfg(feature = "whisper")]
async fn run(state: Arc<AppState>, job: TranscriptionJob) -> Result<Response, ApiError> {
    use axum::Json;
    use axum::http::header;
    use axum::response::IntoResponse;

    use crate::stt::SttError;

    let stt = state
        .engines()?
        .stt
        .clone()
        .ok_or_else(|| super::not_served("transcriptions"))?;
    let admission = state.admit(&state.stt_lane).await?;
    let language = job.language.clone();
    let text = tokio::task::spawn_blocking(move || {
        let _admission = admission;
        stt.transcribe(&job.pcm16k, language.as_deref())
    })
    .await
    .map_err(|e| ApiError::engine(format!("transcription task failed: {e}")))?
    .map_err(|e| match e {
        SttError::Language(l) => ApiError::invalid(
            "language",
            format!("language '{l}' is not supported by this model"),
        ),
        other => ApiError::engine(other.to_string()),
    })?;
    Ok(match job.format {
        ResponseFormat::Json => Json(serde_json::json!({"text": text})).into_response(),
        ResponseFormat::Text => {
            ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response()
        }
    })
}
