//! `POST /v1/audio/speech`: `pcm` is streamed as s16le mono clause by clause, with the
//! rate in the `x-sample-rate` header; `wav` is one complete file.

use std::sync::Arc;
use std::time::Instant;

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Deserialize;

use super::{ApiError, AppState, check_model, not_served};
use crate::audio;

/// Header that tells the client the PCM sample rate.
pub const SAMPLE_RATE_HEADER: &str = "x-sample-rate";

#[derive(Debug, Deserialize)]
pub(crate) struct SpeechRequest {
    model: Option<String>,
    input: Option<String>,
    voice: Option<String>,
    response_format: Option<String>,
    speed: Option<f32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Pcm,
    Wav,
}

/// The handler.
pub(crate) async fn speech(
    State(state): State<Arc<AppState>>,
    body: Result<Json<SpeechRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let Json(req) = body?;
    let config = &state.config;
    check_model(req.model.as_deref(), &config.tts_models)?;
    let input = req.input.ok_or_else(|| ApiError::missing("input"))?;
    if input.trim().is_empty() {
        return Err(ApiError::invalid("input", "input must not be empty"));
    }
    let chars = input.chars().count();
    if chars > config.max_speech_chars {
        return Err(ApiError::invalid(
            "input",
            format!(
                "input is {chars} characters; at most {} are accepted",
                config.max_speech_chars
            ),
        ));
    }
    let voice_name = req
        .voice
        .as_deref()
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_owned);
    // An engine with voices of its own (CSM's speakers and prompts) names them; otherwise
    // the configured names are accepted, all speaking with the one voice. Before the engine
    // has loaded, the configured names are all there is to check (none for CSM).
    let own_voices = state
        .engines()
        .ok()
        .and_then(|e| e.tts.as_ref())
        .and_then(|t| t.voices());
    let engine_voice = if own_voices.is_some() {
        voice_name.clone()
    } else {
        None
    };
    let known = own_voices.or_else(|| (!config.voices.is_empty()).then(|| config.voices.clone()));
    if let (Some(v), Some(known)) = (&voice_name, &known)
        && !known.iter().any(|k| k == v)
    {
        return Err(ApiError::invalid(
            "voice",
            format!("voice '{v}' is not available; voices: {}", known.join(", ")),
        ));
    }
    let format = match req.response_format.as_deref().map(str::trim) {
        None | Some("") | Some("wav") => Format::Wav,
        Some("pcm") => Format::Pcm,
        Some(other) => {
            return Err(ApiError::invalid(
                "response_format",
                format!("response_format '{other}' is not supported (pcm, wav)"),
            ));
        }
    };
    if req.speed.is_some_and(|s| (s - 1.0).abs() > f32::EPSILON) {
        return Err(ApiError::invalid("speed", "only speed 1.0 is supported"));
    }
    let voice = state
        .engines()?
        .tts
        .clone()
        .ok_or_else(|| not_served("speech"))?;
    let admission = state.admit(&state.tts_lane).await?;
    let rate = voice.sample_rate();
    let route = state.tts_lane.route;

    if format == Format::Wav {
        let task_state = Arc::clone(&state);
        let samples = tokio::task::spawn_blocking(move || {
            let _admission = admission;
            let mut all = Vec::new();
            voice
                .speak(&input, engine_voice.as_deref(), &mut |chunk| {
                    if all.is_empty() {
                        task_state
                            .metrics()
                            .first_output_seconds
                            .with_label_values(&[route])
                            .observe(started.elapsed().as_secs_f64());
                    }
                    all.extend_from_slice(chunk);
                    true
                })
                .map(|()| all)
        })
        .await
        .map_err(|e| ApiError::engine(format!("speech task failed: {e}")))?
        .map_err(ApiError::engine)?;
        return Ok((
            [
                (header::CONTENT_TYPE, "audio/wav".to_owned()),
                (
                    header::HeaderName::from_static(SAMPLE_RATE_HEADER),
                    rate.to_string(),
                ),
            ],
            audio::wav_bytes(&samples, rate),
        )
            .into_response());
    }

    // A few clauses of buffer: synthesis runs ahead of a slow reader only a little,
    // and a reader that is gone cancels the rest.
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
    let task_state = Arc::clone(&state);
    tokio::task::spawn_blocking(move || {
        let _admission = admission;
        let mut first = true;
        let result = voice.speak(&input, engine_voice.as_deref(), &mut |chunk| {
            if first {
                first = false;
                task_state
                    .metrics()
                    .first_output_seconds
                    .with_label_values(&[route])
                    .observe(started.elapsed().as_secs_f64());
            }
            let mut bytes = Vec::with_capacity(chunk.len() * 2);
            audio::push_s16le(&mut bytes, chunk);
            tx.blocking_send(Bytes::from(bytes)).is_ok()
        });
        let code = if result.is_ok() { "200" } else { "500" };
        if let Err(e) = result {
            // Headers are gone already; ending the body early is all that is left.
            tracing::warn!(error = %e, "speech synthesis failed mid-stream");
        }
        task_state
            .metrics()
            .request_seconds
            .with_label_values(&[route, code])
            .observe(started.elapsed().as_secs_f64());
    });
    Ok(super::streamed_response(
        rx,
        [
            (header::CONTENT_TYPE, "audio/pcm".to_owned()),
            (
                header::HeaderName::from_static(SAMPLE_RATE_HEADER),
                rate.to_string(),
            ),
        ],
    ))
}
