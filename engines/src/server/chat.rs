//! `POST /v1/chat/completions`, streamed (SSE) or whole.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::response::Response;
use serde::Deserialize;

use super::{ApiError, AppState, check_model};
use crate::llm::{
    ChatMessage, GEMMA3_ROLE_ORDER_ERROR, GenerationParams, MAX_TOP_LOGPROBS, PromptEnd, Role,
    gemma3_accepts,
};

/// The request body; fields the engine does not use are ignored, as OpenAI servers do.
#[derive(Debug, Deserialize)]
pub(crate) struct ChatRequest {
    model: Option<String>,
    messages: Option<Vec<WireMessage>>,
    max_tokens: Option<i64>,
    max_completion_tokens: Option<i64>,
    temperature: Option<f32>,
    stop: Option<StopField>,
    #[serde(default)]
    stream: bool,
    n: Option<u32>,
    /// Whether to return each generated token's logprob (non-streamed responses only).
    logprobs: Option<bool>,
    /// Alternatives per token with `logprobs` (0 to 20).
    top_logprobs: Option<i64>,
    /// vLLM's chat-template flag: open an assistant turn after the messages (default true).
    add_generation_prompt: Option<bool>,
    /// vLLM's chat-template flag: leave the last message open for the model to continue.
    #[serde(default)]
    continue_final_message: bool,
}

#[derive(Debug, Deserialize)]
struct WireMessage {
    role: String,
    #[serde(default)]
    content: Option<Content>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Debug, Deserialize)]
struct Part {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum StopField {
    One(String),
    Many(Vec<String>),
}

/// A validated request.
#[derive(Debug)]
#[cfg_attr(not(feature = "llama"), allow(dead_code))]
pub(crate) struct ChatJob {
    pub(crate) model: String,
    pub(crate) messages: Vec<ChatMessage>,
    pub(crate) params: GenerationParams,
    pub(crate) stream: bool,
}

pub(crate) fn validate(req: ChatRequest, state: &AppState) -> Result<ChatJob, ApiError> {
    let config = &state.config;
    check_model(req.model.as_deref(), &config.llm_models)?;
    let wire = req.messages.ok_or_else(|| ApiError::missing("messages"))?;
    if wire.is_empty() {
        return Err(ApiError::invalid("messages", "messages must not be empty"));
    }
    let mut messages = Vec::with_capacity(wire.len());
    for (i, m) in wire.into_iter().enumerate() {
        let role = match m.role.as_str() {
            "system" | "developer" => Role::System,
            "user" => Role::User,
            "assistant" => Role::Assistant,
            other => {
                return Err(ApiError::invalid(
                    "messages",
                    format!(
                        "messages[{i}].role '{other}' is not supported (system, developer, user, assistant)"
                    ),
                ));
            }
        };
        let content = match m.content {
            None => String::new(),
            Some(Content::Text(t)) => t,
            Some(Content::Parts(parts)) => {
                let mut text = String::new();
                for p in parts {
                    if p.kind != "text" {
                        return Err(ApiError::invalid(
                            "messages",
                            format!(
                                "messages[{i}] has a '{}' part; only text is supported",
                                p.kind
                            ),
                        ));
                    }
                    text.push_str(p.text.as_deref().unwrap_or(""));
                }
                text
            }
        };
        messages.push(ChatMessage::new(role, content));
    }
    // This server stands in for a vLLM pool serving Gemma 3, whose chat template refuses
    // roles out of order: refusing them here too means a client that works against the CPU
    // pool works against the GPU one, although the few-shot prompt could take any order.
    let roles: Vec<Role> = messages.iter().map(|m| m.role).collect();
    if !gemma3_accepts(&roles) {
        return Err(ApiError::invalid("messages", GEMMA3_ROLE_ORDER_ERROR));
    }
    if !messages
        .iter()
        .any(|m| m.role == Role::User && !m.content.trim().is_empty())
    {
        return Err(ApiError::invalid(
            "messages",
            "messages must include a non-empty user message",
        ));
    }
    let max_tokens = match req.max_completion_tokens.or(req.max_tokens) {
        None => config.default_max_tokens,
        Some(n) if n >= 1 && n <= i64::from(config.max_tokens_limit) => {
            u32::try_from(n).unwrap_or(config.default_max_tokens)
        }
        Some(n) => {
            return Err(ApiError::invalid(
                "max_tokens",
                format!(
                    "max_tokens must be between 1 and {}, got {n}",
                    config.max_tokens_limit
                ),
            ));
        }
    };
    let temperature = req.temperature.unwrap_or(0.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::invalid(
            "temperature",
            format!("temperature must be between 0 and 2, got {temperature}"),
        ));
    }
    if req.n.is_some_and(|n| n != 1) {
        return Err(ApiError::invalid("n", "only n = 1 is supported"));
    }
    let prompt_end = match (req.add_generation_prompt, req.continue_final_message) {
        (Some(true), true) => {
            return Err(ApiError::invalid(
                "continue_final_message",
                "continue_final_message and add_generation_prompt cannot both be true",
            ));
        }
        (_, true) => PromptEnd::ContinueLast,
        (Some(false), false) => PromptEnd::Closed,
        (None | Some(true), false) => PromptEnd::Reply,
    };
    let top_logprobs = match (req.logprobs.unwrap_or(false), req.top_logprobs) {
        (false, None) => None,
        (false, Some(_)) => {
            return Err(ApiError::invalid(
                "top_logprobs",
                "top_logprobs needs logprobs set to true",
            ));
        }
        (true, _) if req.stream => {
            return Err(ApiError::invalid(
                "logprobs",
                "logprobs are served with non-streamed responses only (stream: false)",
            ));
        }
        (true, None) => Some(0),
        (true, Some(n)) if (0..=MAX_TOP_LOGPROBS as i64).contains(&n) => usize::try_from(n).ok(),
        (true, Some(n)) => {
            return Err(ApiError::invalid(
                "top_logprobs",
                format!("top_logprobs must be between 0 and {MAX_TOP_LOGPROBS}, got {n}"),
            ));
        }
    };
    let stop = match req.stop {
        None => Vec::new(),
        Some(StopField::One(s)) => vec![s],
        Some(StopField::Many(v)) if v.len() <= 4 => v,
        Some(StopField::Many(_)) => {
            return Err(ApiError::invalid("stop", "at most 4 stop sequences"));
        }
    };
    Ok(ChatJob {
        model: req.model.unwrap_or_default().trim().to_owned(),
        messages,
        params: GenerationParams {
            max_tokens,
            temperature,
            stop,
            prompt_end,
            top_logprobs,
        },
        stream: req.stream,
    })
}

/// The handler.
pub(crate) async fn completions(
    State(state): State<Arc<AppState>>,
    body: Result<Json<ChatRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(req) = body?;
    let job = validate(req, &state)?;
    run(state, job).await
}

#[cfg(not(feature = "llama"))]
async fn run(_state: Arc<AppState>, _job: ChatJob) -> Result<Response, ApiError> {
    Err(super::not_served("chat completions"))
}

#[cfg(feature = "llama")]
async fn run(state: Arc<AppState>, job: ChatJob) -> Result<Response, ApiError> {
    use std::time::Instant;

    use axum::http::header;
    use axum::response::IntoResponse;
    use bytes::Bytes;
    use serde_json::json;

    use super::{not_served, unix_time};
    use crate::llm::FinishReason;

    let started = Instant::now();
    let llm = state
        .engines()?
        .llm
        .clone()
        .ok_or_else(|| not_served("chat completions"))?;
    let admission = state.admit(&state.chat_lane).await?;
    let id = state.request_id("chatcmpl");
    let created = unix_time();
    let route = state.chat_lane.route;
    let finish_name = |f: FinishReason| match f {
        FinishReason::Length => "length",
        FinishReason::Stop | FinishReason::Cancelled => "stop",
    };

    if !job.stream {
        let wants_logprobs = job.params.top_logprobs.is_some();
        let task_state = Arc::clone(&state);
        let result = tokio::task::spawn_blocking(move || {
            let _admission = admission;
            let mut text = String::new();
            let stats = llm.generate(&job.messages, &job.params, &mut |t| {
                text.push_str(t);
                true
            });
            if let Ok(s) = &stats
                && let Some(ttft) = s.time_to_first_token
            {
                task_state
                    .metrics()
                    .first_output_seconds
                    .with_label_values(&[route])
                    .observe(ttft.as_secs_f64());
            }
            stats.map(|s| (text, s))
        })
        .await
        .map_err(|e| ApiError::engine(format!("generation task failed: {e}")))?;
        let (text, stats) = result.map_err(|e| ApiError::engine(e.to_string()))?;
        let logprobs = wants_logprobs.then(
            || json!({"content": stats.logprobs.iter().map(logprob_json).collect::<Vec<_>>()}),
        );
        let body = json!({
            "id": id, "object": "chat.completion", "created": created, "model": job.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "logprobs": logprobs,
                         "finish_reason": finish_name(stats.finish_reason)}],
            "usage": {"prompt_tokens": stats.prompt_tokens, "completion_tokens": stats.completion_tokens,
                      "total_tokens": stats.prompt_tokens + stats.completion_tokens},
        });
        return Ok(Json(body).into_response());
    }

    // Small buffer: tokens are produced far slower than a client reads them, and a
    // client that stops reading should stall (then cancel) generation, not grow memory.
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(32);
    let chunk = move |delta: serde_json::Value, finish: Option<&str>, model: &str, id: &str| {
        let v = json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model,
                       "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
        Bytes::from(format!("data: {v}\n\n"))
    };
    let task_state = Arc::clone(&state);
    tokio::task::spawn_blocking(move || {
        let _admission = admission;
        let model = job.model.clone();
        if tx
            .blocking_send(chunk(
                json!({"role": "assistant", "content": ""}),
                None,
                &model,
                &id,
            ))
            .is_err()
        {
            return;
        }
        let mut first = true;
        let result = llm.generate(&job.messages, &job.params, &mut |t| {
            if first {
                first = false;
                task_state
                    .metrics()
                    .first_output_seconds
                    .with_label_values(&[route])
                    .observe(started.elapsed().as_secs_f64());
            }
            tx.blocking_send(chunk(json!({"content": t}), None, &model, &id))
                .is_ok()
        });
        let code = match result {
            Ok(stats) => {
                let _ = tx.blocking_send(chunk(
                    json!({}),
                    Some(finish_name(stats.finish_reason)),
                    &model,
                    &id,
                ));
                "200"
            }
            Err(e) => {
                let err = ApiError::engine(e.to_string()).body();
                let _ = tx.blocking_send(Bytes::from(format!("data: {err}\n\n")));
                "500"
            }
        };
        let _ = tx.blocking_send(Bytes::from_static(b"data: [DONE]\n\n"));
        task_state
            .metrics()
            .request_seconds
            .with_label_values(&[route, code])
            .observe(started.elapsed().as_secs_f64());
    });
    Ok(super::streamed_response(
        rx,
        [
            (header::CONTENT_TYPE, "text/event-stream".to_owned()),
            (header::CACHE_CONTROL, "no-cache".to_owned()),
        ],
    ))
}

/// One token's entry in a chat completion's `logprobs.content`, as OpenAI and vLLM write it.
#[cfg(feature = "llama")]
fn logprob_json(entry: &crate::llm::TokenLogprob) -> serde_json::Value {
    // JSON has no -infinity: a token the model gave no chance gets OpenAI's floor.
    let finite = |lp: f32| if lp.is_finite() { lp } else { -9999.0 };
    let top: Vec<serde_json::Value> = entry
        .top
        .iter()
        .map(|(token, lp)| {
            serde_json::json!({"token": token, "logprob": finite(*lp), "bytes": token.as_bytes()})
        })
        .collect();
    serde_json::json!({
        "token": entry.token,
        "logprob": finite(entry.logprob),
        "bytes": entry.token.as_bytes(),
        "top_logprobs": top,
    })
}
