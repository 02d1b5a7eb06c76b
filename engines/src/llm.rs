//! Text generation: the conversation types, the phone-assistant prompt, and (feature
//! `llama`) Gemma 3 270M on llama.cpp.
//!
//! Gemma 3 270M is a base model: it continues text rather than following chat turns.
//! The prompt is therefore a short transcript of example phone calls followed by this
//! call's conversation, ending with `Assistant:`; the model's first line is the answer
//! and the turn ends at the newline (or when it starts writing the caller's line).

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Who said a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Instructions for the assistant (the agent's persona).
    System,
    /// The caller.
    User,
    /// The agent.
    Assistant,
    /// What a tool the agent called answered (OpenAI's `tool` role).
    Tool,
}

/// One message of the conversation, in OpenAI's chat shape: an assistant message may call
/// tools, and a tool message answers one call by its id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// Who said it.
    pub role: Role,
    /// What was said. Always a string, never null: Gemma 3's tool template raises "Invalid
    /// content type" on an assistant message whose content is null.
    #[serde(default)]
    pub content: String,
    /// The tools an assistant message calls (left out when none: the template tells a
    /// message that calls tools by the key being there).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    /// The call a tool message answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
}

impl ChatMessage {
    /// A message from `role`.
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Self {
            role,
            content: content.into(),
            tool_calls: Vec::new(),
            tool_call_id: None,
        }
    }

    /// An assistant message that says `content` (possibly nothing) and calls `calls`.
    pub fn calling(content: impl Into<String>, calls: Vec<ToolCall>) -> Self {
        Self {
            tool_calls: calls,
            ..Self::new(Role::Assistant, content)
        }
    }

    /// A tool's answer to the call `id`.
    pub fn tool_result(id: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            tool_call_id: Some(id.into()),
            ..Self::new(Role::Tool, content)
        }
    }
}

/// A tool call as OpenAI's API carries it: `{"id", "type": "function", "function": {"name",
/// "arguments"}}`, the arguments a JSON object in a string (as the model wrote them, so
/// possibly not JSON at all).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolCall {
    /// The call's id, which its tool message names.
    pub id: String,
    /// Always `function`.
    #[serde(rename = "type", default = "function_kind")]
    pub kind: String,
    /// What is called, and with what.
    pub function: FunctionCall,
}

fn function_kind() -> String {
    "function".into()
}

/// The function of a [`ToolCall`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionCall {
    /// The tool's name.
    pub name: String,
    /// The arguments, as JSON text.
    #[serde(default)]
    pub arguments: String,
}

impl ToolCall {
    /// A call of `name` with `arguments` (JSON text).
    pub fn new(
        id: impl Into<String>,
        name: impl Into<String>,
        arguments: impl Into<String>,
    ) -> Self {
        Self {
            id: id.into(),
            kind: function_kind(),
            function: FunctionCall {
                name: name.into(),
                arguments: arguments.into(),
            },
        }
    }
}

/// What Gemma 3's chat template raises when the roles are out of order; vLLM passes it on
/// in its 400, and the servers that stand in for it say the same.
pub const GEMMA3_ROLE_ORDER_ERROR: &str =
    "Conversation roles must alternate user/assistant/user/assistant/...";

/// Whether Gemma 3's chat template renders this order of roles. The template takes one
/// system message first (folded into the first user turn); every message after it must be
/// the user's at even positions and not the user's at odd ones, so the turns alternate
/// starting with the user. A later system message counts as "not the user", as it does in
/// the template, and a conversation may end on either side (vLLM checks nothing more).
pub fn gemma3_accepts(roles: &[Role]) -> bool {
    let turns = match roles.split_first() {
        Some((Role::System, rest)) => rest,
        _ => roles,
    };
    turns
        .iter()
        .enumerate()
        .all(|(i, role)| (*role == Role::User) == (i % 2 == 0))
}

/// Why vLLM, serving Gemma 3 with its tool-calling template (the pythonic one vLLM ships for
/// Gemma 3, `--tool-call-parser pythonic`), would refuse `messages`; `None` if it renders
/// them. That template checks the order of roles as the plain one does
/// ([`gemma3_accepts`]) but leaves out of the check every `tool` message and every message
/// that calls tools, renders a tool message as a user turn holding `<tool_response>`, and
/// raises on a null content. A tool message must also answer a call of the assistant
/// message before it (OpenAI's API demands it; a model shown a result it never asked for
/// is confused by it).
pub fn gemma3_tools_refusal(messages: &[ChatMessage]) -> Option<String> {
    let checked: Vec<Role> = messages
        .iter()
        .filter(|m| m.role != Role::Tool && m.tool_calls.is_empty())
        .map(|m| m.role)
        .collect();
    // A leading system message that calls tools cannot happen; the first message is the
    // system prompt only if it is one.
    let checked = match (messages.first().map(|m| m.role), checked.split_first()) {
        (Some(Role::System), Some((Role::System, rest))) => rest.to_vec(),
        _ => checked,
    };
    let alternates = checked
        .iter()
        .enumerate()
        .all(|(i, role)| (*role == Role::User) == (i % 2 == 0));
    if !alternates {
        return Some(GEMMA3_ROLE_ORDER_ERROR.into());
    }
    let mut open: Vec<&str> = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        match m.role {
            Role::Tool => {
                let id = m.tool_call_id.as_deref().unwrap_or_default();
                match open.iter().position(|o| *o == id) {
                    Some(at) => {
                        open.remove(at);
                    }
                    None => {
                        return Some(format!(
                            "messages[{i}] is a tool result for {id:?}, which no assistant message before it called"
                        ));
                    }
                }
            }
            _ => open = m.tool_calls.iter().map(|c| c.id.as_str()).collect(),
        }
    }
    None
}

/// What the chat template's end-of-turn token is called in logprobs. Gemma 3's template ends
/// every turn with it, so it is the token a client watches for after a caller's open message
/// (a turn-end judgement); the CPU model's transcript prompt ends a turn with a newline, which
/// this server reports under the same name, as the vLLM pool it stands in for would.
pub const END_OF_TURN_TOKEN: &str = "<end_of_turn>";

/// The most alternatives a token's logprobs may list (OpenAI's and vLLM's default limit).
pub const MAX_TOP_LOGPROBS: usize = 20;

/// Where the prompt leaves the model: the chat template flags of vLLM's chat API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PromptEnd {
    /// A new assistant turn is opened for the reply (`add_generation_prompt`, the default).
    #[default]
    Reply,
    /// The last message is left open for the model to continue (`continue_final_message`):
    /// after a caller's words, the next token's logprobs say how likely their turn is over.
    ContinueLast,
    /// The last turn is closed and nothing is opened (`add_generation_prompt: false`).
    Closed,
}

/// Sampling settings for one reply.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationParams {
    /// Most tokens to generate.
    pub max_tokens: u32,
    /// 0 means greedy (deterministic); higher is more varied.
    pub temperature: f32,
    /// Extra strings that end the reply (not included in it).
    pub stop: Vec<String>,
    /// Where the prompt ends.
    pub prompt_end: PromptEnd,
    /// Report each generated token's log probability with this many alternatives
    /// (at most [`MAX_TOP_LOGPROBS`]); `None` reports none.
    pub top_logprobs: Option<usize>,
}

impl Default for GenerationParams {
    fn default() -> Self {
        Self {
            max_tokens: 64,
            temperature: 0.0,
            stop: Vec::new(),
            prompt_end: PromptEnd::Reply,
            top_logprobs: None,
        }
    }
}

/// One generated token's log probability and the likeliest alternatives at its place.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    /// The token's text ([`END_OF_TURN_TOKEN`] for a token that ends the turn).
    pub token: String,
    /// Its natural-log probability.
    pub logprob: f32,
    /// The likeliest tokens at this place, most likely first, with their logprobs.
    pub top: Vec<(String, f32)>,
}

/// Why generation stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FinishReason {
    /// The assistant's turn ended (newline, a stop string or end of text).
    Stop,
    /// `max_tokens` was reached.
    Length,
    /// The token callback asked to stop (barge-in, client gone).
    Cancelled,
}

/// Figures for one reply.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationStats {
    /// Tokens in the prompt.
    pub prompt_tokens: u32,
    /// Tokens generated (including one that ended the turn).
    pub completion_tokens: u32,
    /// From the call to the first streamed text.
    pub time_to_first_token: Option<Duration>,
    /// From the call to its return.
    pub total: Duration,
    /// Why it stopped.
    pub finish_reason: FinishReason,
    /// Each generated token's logprobs, when [`GenerationParams::top_logprobs`] asked.
    pub logprobs: Vec<TokenLogprob>,
}

/// Why generation failed.
#[derive(Debug, thiserror::Error)]
pub enum LlmError {
    /// The model could not be loaded.
    #[error("cannot load the LLM {path}: {reason}")]
    Load {
        /// The GGUF file.
        path: String,
        /// llama.cpp's message.
        reason: String,
    },
    /// The conversation has no caller message to answer.
    #[error("the conversation has no user message to answer")]
    NoUserMessage,
    /// The prompt does not fit in the context window.
    #[error("the prompt is {tokens} tokens; the context holds {context}")]
    PromptTooLong {
        /// Prompt tokens.
        tokens: usize,
        /// Context size.
        context: u32,
    },
    /// llama.cpp failed while generating.
    #[error("llama.cpp failed: {0}")]
    Inference(String),
}

/// Example calls that teach the base model the shape of an answer: short, spoken,
/// helpful, one line.
const FEW_SHOT: &str = "\
Caller: Hi, are you open on Saturdays?
Assistant: Yes, we're open on Saturdays from nine in the morning until one in the afternoon.
Caller: Great. Do I need an appointment?
Assistant: It's best to book one, but we do take walk-ins when we have time.
Caller: What's the weather like today?
Assistant: I'm sorry, I can't check the weather, but I'm happy to help with anything about your visit.
Caller: Can you spell your street name?
Assistant: Sure, it's Main Street, M A I N.
";

/// Builds the few-shot prompt for the conversation: system prompt, examples, this
/// call's history, and an open `Assistant:` line. Errors when no caller message exists.
pub fn build_prompt(messages: &[ChatMessage]) -> Result<String, LlmError> {
    build_prompt_ending(messages, PromptEnd::Reply)
}

/// [`build_prompt`], ending where `end` says: after an open `Assistant:` line, inside the
/// last message (no newline: the model's next token continues it or ends the turn), or
/// after the last message's line.
pub fn build_prompt_ending(messages: &[ChatMessage], end: PromptEnd) -> Result<String, LlmError> {
    if !messages.iter().any(|m| m.role == Role::User) {
        return Err(LlmError::NoUserMessage);
    }
    let system: Vec<&str> = messages
        .iter()
        .filter(|m| m.role == Role::System)
        .map(|m| m.content.trim())
        .filter(|s| !s.is_empty())
        .collect();
    let mut prompt = String::from(
        "Below are transcripts of phone calls answered by a friendly, helpful assistant. \
         The assistant answers in one or two short spoken sentences.\n",
    );
    if !system.is_empty() {
        prompt.push_str("Instructions for the assistant: ");
        prompt.push_str(&system.join(" "));
        prompt.push('\n');
    }
    prompt.push_str("\n### Call 1\n");
    prompt.push_str(FEW_SHOT);
    prompt.push_str("\n### Call 2\n");
    let last = messages.iter().rposition(|m| m.role != Role::System);
    for (i, m) in messages.iter().enumerate() {
        let speaker = match m.role {
            Role::System => continue,
            Role::User => "Caller",
            Role::Assistant => "Assistant",
            // Tools need a server that can call them (vLLM); this transcript has no place
            // for their results, so they read as the caller's side, which asked for them.
            Role::Tool => "Caller",
        };
        // One line per turn: the newline is what ends a turn in this transcript.
        let text = m.content.split_whitespace().collect::<Vec<_>>().join(" ");
        prompt.push_str(speaker);
        prompt.push_str(": ");
        prompt.push_str(&text);
        if end == PromptEnd::ContinueLast && Some(i) == last {
            return Ok(prompt);
        }
        prompt.push('\n');
    }
    if end == PromptEnd::Reply {
        prompt.push_str("Assistant:");
    }
    Ok(prompt)
}

/// One place's distribution, as logprobs report it.
#[cfg_attr(not(feature = "llama"), allow(dead_code))]
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Place {
    /// Log of the softmax's denominator: a token's logprob is its logit less this.
    pub(crate) log_total: f32,
    /// The logprob of ending the turn: every token the caller marked, together.
    pub(crate) end: Option<f32>,
    /// The likeliest other tokens and their logprobs, most likely first.
    pub(crate) top: Vec<(usize, f32)>,
}

/// The log-softmax of `logits` at one place, with the tokens `ends_turn` marks counted as one
/// (the turn's end, however the tokenizer spells it) and the `n` likeliest others.
#[cfg_attr(not(feature = "llama"), allow(dead_code))]
pub(crate) fn top_logprobs(logits: &[f32], ends_turn: &[bool], n: usize) -> Place {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut total = 0f64;
    let mut ending = 0f64;
    let mut top: Vec<(usize, f32)> = Vec::with_capacity(n + 1);
    for (id, &logit) in logits.iter().enumerate() {
        let weight = f64::from(logit - max).exp();
        total += weight;
        if ends_turn.get(id).copied().unwrap_or(false) {
            ending += weight;
        } else if n > 0 && (top.len() < n || logit > top[top.len() - 1].1) {
            let at = top.partition_point(|&(_, l)| l >= logit);
            top.insert(at, (id, logit));
            top.truncate(n);
        }
    }
    let log_total = max + total.ln() as f32;
    let end = (ending > 0.0).then(|| max + ending.ln() as f32 - log_total);
    for entry in &mut top {
        entry.1 -= log_total;
    }
    Place {
        log_total,
        end,
        top,
    }
}

/// Streams text while holding back anything that could be the start of a stop string,
/// so a stop string never reaches the listener.
#[derive(Debug)]
#[cfg_attr(not(feature = "llama"), allow(dead_code))]
pub(crate) struct StopFilter {
    stops: Vec<String>,
    pending: String,
    /// Bytes of a UTF-8 character split across tokens.
    partial: Vec<u8>,
    emitted_any: bool,
}

#[cfg_attr(not(feature = "llama"), allow(dead_code))]
impl StopFilter {
    pub(crate) fn new(extra: &[String]) -> Self {
        let mut stops = vec!["\n".to_owned(), "Caller:".to_owned()];
        stops.extend(extra.iter().filter(|s| !s.is_empty()).cloned());
        Self {
            stops,
            pending: String::new(),
            partial: Vec::new(),
            emitted_any: false,
        }
    }

    /// Adds token bytes; calls `emit` with text that is safe to show. Returns true when
    /// a stop string was reached (the turn is over).
    pub(crate) fn push(
        &mut self,
        bytes: &[u8],
        emit: &mut dyn FnMut(&str) -> bool,
    ) -> (bool, bool) {
        self.partial.extend_from_slice(bytes);
        let valid = match std::str::from_utf8(&self.partial) {
            Ok(s) => s.len(),
            Err(e) if e.error_len().is_none() => e.valid_up_to(),
            // Invalid bytes: drop them rather than stall.
            Err(e) => e.valid_up_to() + e.error_len().unwrap_or(0),
        };
        let text = String::from_utf8_lossy(&self.partial[..valid]).into_owned();
        self.partial.drain(..valid);
        self.pending.push_str(&text);
        // The reply starts after "Assistant:"; its leading space is not part of it.
        if !self.emitted_any {
            let trimmed = self.pending.trim_start_matches(' ').to_owned();
            self.pending = trimmed;
        }
        let stop_at = self
            .stops
            .iter()
            .filter_map(|s| self.pending.find(s.as_str()))
            .min();
        if let Some(at) = stop_at {
            let keep = self.pending[..at].trim_end().to_owned();
            let go_on = keep.is_empty() || emit(&keep);
            self.emitted_any |= !keep.is_empty();
            self.pending.clear();
            return (true, go_on);
        }
        // Keep the longest tail that is a prefix of some stop string.
        let mut hold = 0;
        for s in &self.stops {
            for (i, _) in self.pending.char_indices() {
                let tail = &self.pending[i..];
                if s.starts_with(tail) {
                    hold = hold.max(tail.len());
                    break;
                }
            }
        }
        // Trailing spaces wait for the next word: the reply may end right there.
        let cut = self.pending[..self.pending.len() - hold].trim_end().len();
        if cut > 0 && !self.emitted_any && self.pending[..cut].trim().is_empty() {
            return (false, true);
        }
        if cut > 0 {
            let out: String = self.pending.drain(..cut).collect();
            self.emitted_any = true;
            return (false, emit(&out));
        }
        (false, true)
    }

    /// Text still held back when generation ends for another reason.
    pub(crate) fn finish(&mut self, emit: &mut dyn FnMut(&str) -> bool) {
        let rest = std::mem::take(&mut self.pending);
        let rest = rest.trim_end();
        if !rest.is_empty() {
            emit(rest);
        }
    }
}

#[cfg(feature = "llama")]
pub use engine::{GemmaLlm, LlmOptions};

#[cfg(feature = "llama")]
mod engine {
    use std::num::NonZeroU32;
    use std::path::Path;
    use std::sync::{Mutex, OnceLock};
    use std::time::Instant;

    use llama_cpp_2::context::params::LlamaContextParams;
    use llama_cpp_2::llama_backend::LlamaBackend;
    use llama_cpp_2::llama_batch::LlamaBatch;
    use llama_cpp_2::model::LlamaModel;
    use llama_cpp_2::model::params::LlamaModelParams;
    use llama_cpp_2::sampling::LlamaSampler;
    use llama_cpp_2::token::LlamaToken;

    use super::{
        ChatMessage, END_OF_TURN_TOKEN, FinishReason, GenerationParams, GenerationStats, LlmError,
        MAX_TOP_LOGPROBS, Place, StopFilter, TokenLogprob, build_prompt_ending, top_logprobs,
    };

    /// Options for [`GemmaLlm`].
    #[derive(Debug, Clone)]
    pub struct LlmOptions {
        /// Context window in tokens (prompt plus reply).
        pub context_tokens: u32,
        /// CPU threads per generation.
        pub threads: usize,
        /// Seed for sampling when temperature is above 0.
        pub seed: u32,
    }

    impl Default for LlmOptions {
        fn default() -> Self {
            Self {
                context_tokens: 2048,
                threads: std::thread::available_parallelism().map_or(1, usize::from),
                seed: 42,
            }
        }
    }

    fn token_index(token: LlamaToken) -> usize {
        usize::try_from(token.0).unwrap_or(usize::MAX)
    }

    /// llama.cpp's backend may be initialised once per process.
    static BACKEND: OnceLock<Result<LlamaBackend, String>> = OnceLock::new();

    fn backend() -> Result<&'static LlamaBackend, String> {
        BACKEND
            .get_or_init(|| {
                let mut b = LlamaBackend::init().map_err(|e| e.to_string())?;
                // llama.cpp logs every tensor at load; keep stderr for our own logs.
                b.void_logs();
                Ok(b)
            })
            .as_ref()
            .map_err(Clone::clone)
    }

    /// Gemma 3 270M (or any GGUF base model) answering as a phone assistant.
    pub struct GemmaLlm {
        model: LlamaModel,
        options: LlmOptions,
        /// By token id: whether the token ends the turn (an end-of-generation token, or one
        /// that starts a new line, which ends a turn in the transcript prompt).
        ends_turn: Vec<bool>,
        /// Creating contexts from one model concurrently is unsound in llama.cpp.
        context_lock: Mutex<()>,
    }

    impl std::fmt::Debug for GemmaLlm {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("GemmaLlm")
                .field("options", &self.options)
                .finish_non_exhaustive()
        }
    }

    impl GemmaLlm {
        /// Loads a GGUF model.
        pub fn load(path: &Path, options: LlmOptions) -> Result<Self, LlmError> {
            let load_err = |reason: String| LlmError::Load {
                path: path.display().to_string(),
                reason,
            };
            if !path.is_file() {
                return Err(load_err("no such file (run scripts/install.sh)".to_owned()));
            }
            let backend = backend().map_err(load_err)?;
            let model = LlamaModel::load_from_file(backend, path, &LlamaModelParams::default())
                .map_err(|e| load_err(e.to_string()))?;
            let vocab = model.vocab();
            let mut piece = Vec::with_capacity(16);
            let ends_turn = (0..vocab.n_tokens())
                .map(|id| {
                    let token = LlamaToken::new(id);
                    piece.clear();
                    vocab.token_to_piece_into(token, &mut piece, false, None);
                    vocab.is_eog(token) || piece.first() == Some(&b'\n')
                })
                .collect();
            Ok(Self {
                model,
                options,
                ends_turn,
                context_lock: Mutex::new(()),
            })
        }

        /// Generates the assistant's next turn for `messages`, streaming text to
        /// `on_token` (which returns `false` to cancel).
        pub fn generate(
            &self,
            messages: &[ChatMessage],
            params: &GenerationParams,
            on_token: &mut dyn FnMut(&str) -> bool,
        ) -> Result<GenerationStats, LlmError> {
            let started = Instant::now();
            let prompt = build_prompt_ending(messages, params.prompt_end)?;
            let backend = backend().map_err(LlmError::Inference)?;
            let vocab = self.model.vocab();
            let tokens = vocab.tokenize(prompt.as_bytes(), true, false);
            let n_ctx = self.options.context_tokens;
            let budget = params.max_tokens.max(1) as usize;
            if tokens.len() + budget > n_ctx as usize {
                return Err(LlmError::PromptTooLong {
                    tokens: tokens.len() + budget,
                    context: n_ctx,
                });
            }
            let threads = i32::try_from(self.options.threads).unwrap_or(1);
            let ctx_params = LlamaContextParams::default()
                .with_n_ctx(NonZeroU32::new(n_ctx))
                .with_n_batch(n_ctx)
                .with_n_threads(threads)
                .with_n_threads_batch(threads);
            let mut ctx = {
                let _guard = self.context_lock.lock().unwrap_or_else(|p| p.into_inner());
                self.model
                    .new_context(backend, ctx_params)
                    .map_err(|e| LlmError::Inference(e.to_string()))?
            };

            let mut batch = LlamaBatch::new(tokens.len().max(1), 1);
            let last = tokens.len().saturating_sub(1);
            for (i, t) in tokens.iter().enumerate() {
                batch
                    .add(*t, i32::try_from(i).unwrap_or(i32::MAX), &[0], i == last)
                    .map_err(|e| LlmError::Inference(e.to_string()))?;
            }
            ctx.decode(&mut batch)
                .map_err(|e| LlmError::Inference(e.to_string()))?;

            let mut sampler = if params.temperature <= 0.0 {
                LlamaSampler::greedy()
            } else {
                LlamaSampler::chain_simple([
                    LlamaSampler::top_k(40),
                    LlamaSampler::top_p(0.95, 1),
                    LlamaSampler::temp(params.temperature),
                    LlamaSampler::dist(self.options.seed),
                ])
            };

            let mut filter = StopFilter::new(&params.stop);
            let mut first_token_at = None;
            let mut emit = |text: &str| {
                if first_token_at.is_none() {
                    first_token_at = Some(started.elapsed());
                }
                on_token(text)
            };
            let mut pos = i32::try_from(tokens.len()).unwrap_or(i32::MAX);
            let mut generated = 0u32;
            let mut finish = FinishReason::Length;
            let mut piece = Vec::with_capacity(16);
            let mut logprobs = Vec::new();
            let top_n = params.top_logprobs.map(|n| n.min(MAX_TOP_LOGPROBS));
            while (generated as usize) < budget {
                let at = batch.n_tokens() - 1;
                // Read before sampling: the distribution the token is drawn from.
                let place = top_n.map(|n| top_logprobs(ctx.get_logits_ith(at), &self.ends_turn, n));
                let token = sampler.sample(&ctx, at);
                generated += 1;
                if let Some(place) = place {
                    let logit = ctx.get_logits_ith(at).get(token_index(token)).copied();
                    logprobs.push(self.token_logprob(token, logit, &place));
                }
                if vocab.is_eog(token) {
                    finish = FinishReason::Stop;
                    break;
                }
                piece.clear();
                vocab.token_to_piece_into(token, &mut piece, false, None);
                let (stopped, go_on) = filter.push(&piece, &mut emit);
                if !go_on {
                    finish = FinishReason::Cancelled;
                    break;
                }
                if stopped {
                    finish = FinishReason::Stop;
                    break;
                }
                batch.clear();
                batch
                    .add(token, pos, &[0], true)
                    .map_err(|e| LlmError::Inference(e.to_string()))?;
                pos += 1;
                ctx.decode(&mut batch)
                    .map_err(|e| LlmError::Inference(e.to_string()))?;
            }
            if finish != FinishReason::Cancelled {
                filter.finish(&mut emit);
            }
            Ok(GenerationStats {
                prompt_tokens: u32::try_from(tokens.len()).unwrap_or(u32::MAX),
                completion_tokens: generated,
                time_to_first_token: first_token_at,
                total: started.elapsed(),
                finish_reason: finish,
                logprobs,
            })
        }

        /// The logprobs entry for `token` (whose logit was `logit`), drawn at `place`.
        fn token_logprob(
            &self,
            token: LlamaToken,
            logit: Option<f32>,
            place: &Place,
        ) -> TokenLogprob {
            let vocab = self.model.vocab();
            let text = |id: LlamaToken| {
                let mut bytes = Vec::with_capacity(16);
                vocab.token_to_piece_into(id, &mut bytes, true, None);
                String::from_utf8_lossy(&bytes).into_owned()
            };
            let mut top: Vec<(String, f32)> = place
                .top
                .iter()
                .map(|&(id, lp)| (text(LlamaToken::new(i32::try_from(id).unwrap_or(0))), lp))
                .collect();
            if let Some(end) = place.end {
                let at = top.partition_point(|&(_, lp)| lp >= end);
                top.insert(at, (END_OF_TURN_TOKEN.to_owned(), end));
                top.truncate(place.top.len());
            }
            let ends = self
                .ends_turn
                .get(token_index(token))
                .copied()
                .unwrap_or(false);
            let (token, logprob) = if ends {
                (END_OF_TURN_TOKEN.to_owned(), place.end)
            } else {
                (text(token), logit.map(|l| l - place.log_total))
            };
            TokenLogprob {
                token,
                logprob: logprob.unwrap_or(f32::NEG_INFINITY),
                top,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(filter: &mut StopFilter, pieces: &[&str]) -> (String, bool) {
        let mut out = String::new();
        let mut stopped = false;
        for p in pieces {
            let (s, _) = filter.push(p.as_bytes(), &mut |t| {
                out.push_str(t);
                true
            });
            if s {
                stopped = true;
                break;
            }
        }
        if !stopped {
            filter.finish(&mut |t| {
                out.push_str(t);
                true
            });
        }
        (out, stopped)
    }

    #[test]
    fn the_turn_ends_at_the_newline_and_the_caller_line_never_leaks() {
        let mut f = StopFilter::new(&[]);
        let (out, stopped) = run(
            &mut f,
            &[" Sure", ", we", " open at nine.", "\nCaller", ": thanks"],
        );
        assert_eq!(out, "Sure, we open at nine.");
        assert!(stopped);
        let mut f = StopFilter::new(&[]);
        let (out, _) = run(&mut f, &[" Yes.", " Call", "er: bye"]);
        assert_eq!(out, "Yes.");
    }

    #[test]
    fn custom_stop_strings_and_split_utf8_are_handled() {
        let mut f = StopFilter::new(&["END".to_owned()]);
        let cafe = "café".as_bytes();
        let mut out = String::new();
        for chunk in [
            &b" "[..],
            &cafe[..4],
            &cafe[4..],
            &b" EN"[..],
            &b"D more"[..],
        ] {
            let (stop, _) = f.push(chunk, &mut |t| {
                out.push_str(t);
                true
            });
            if stop {
                break;
            }
        }
        assert_eq!(out, "café");
    }

    #[test]
    fn the_prompt_carries_persona_history_and_ends_open() {
        let p = build_prompt(&[
            ChatMessage::new(Role::System, "You work for Acme Dental."),
            ChatMessage::new(Role::Assistant, "Thanks for calling Acme."),
            ChatMessage::new(Role::User, "Are you\nopen today?"),
        ])
        .unwrap();
        assert!(p.contains("Acme Dental"));
        assert!(p.contains(
            "Assistant: Thanks for calling Acme.\nCaller: Are you open today?\nAssistant:"
        ));
        assert!(p.ends_with("Assistant:"));
    }

    #[test]
    fn logprobs_count_every_turn_ending_token_as_one_and_list_the_rest_by_likelihood() {
        // Tokens 1 and 3 end the turn (a newline, the end of text): together e^2 + e^1.
        let logits = [0.0f32, 2.0, 3.0, 1.0, -1.0];
        let ends = [false, true, false, true, false];
        let place = top_logprobs(&logits, &ends, 2);
        let total: f32 = logits.iter().map(|l| l.exp()).sum();
        let end = place.end.unwrap();
        assert!((end.exp() - (2f32.exp() + 1f32.exp()) / total).abs() < 1e-5);
        let ids: Vec<usize> = place.top.iter().map(|&(id, _)| id).collect();
        assert_eq!(ids, [2, 0], "the likeliest others, most likely first");
        assert!((place.top[0].1.exp() - 3f32.exp() / total).abs() < 1e-5);
        // log_total normalises: the turn's end and the other tokens sum to one.
        let others: f32 = [0usize, 2, 4]
            .iter()
            .map(|&i| (logits[i] - place.log_total).exp())
            .sum();
        assert!((end.exp() + others - 1.0).abs() < 1e-5);
        // Nothing ends the turn: no entry for it; no alternatives asked: none listed.
        let place = top_logprobs(&logits, &[false; 5], 0);
        assert_eq!(place.end, None);
        assert!(place.top.is_empty());
    }

    #[test]
    fn a_continued_message_is_left_open_and_a_closed_one_opens_nothing() {
        let messages = [
            ChatMessage::new(Role::System, "You work for Acme Dental."),
            ChatMessage::new(Role::User, "My number is five five five"),
        ];
        let open = build_prompt_ending(&messages, PromptEnd::ContinueLast).unwrap();
        assert!(
            open.ends_with("Caller: My number is five five five"),
            "{open:?}"
        );
        let closed = build_prompt_ending(&messages, PromptEnd::Closed).unwrap();
        assert!(
            closed.ends_with("Caller: My number is five five five\n"),
            "{closed:?}"
        );
        assert!(
            build_prompt(&messages)
                .unwrap()
                .ends_with("five\nAssistant:")
        );
    }

    #[test]
    fn a_conversation_without_a_caller_message_is_refused() {
        assert!(matches!(
            build_prompt(&[ChatMessage::new(Role::System, "x")]),
            Err(LlmError::NoUserMessage)
        ));
    }

    #[test]
    fn gemma3_takes_one_system_message_then_turns_from_the_user() {
        use Role::{Assistant as A, System as S, User as U};
        for good in [&[U][..], &[S, U], &[S, U, A, U], &[U, A], &[S]] {
            assert!(gemma3_accepts(good), "{good:?} is refused");
        }
        for bad in [&[A][..], &[S, A, U], &[S, U, U], &[S, U, A, A], &[S, S, U]] {
            assert!(!gemma3_accepts(bad), "{bad:?} is accepted");
        }
    }

    #[test]
    fn gemma3s_tool_template_skips_tool_exchanges_in_the_order_and_ties_results_to_calls() {
        let call = |id: &str| ToolCall::new(id, "end_call", "{}");
        let u = |t: &str| ChatMessage::new(Role::User, t);
        let a = |t: &str| ChatMessage::new(Role::Assistant, t);
        let system = ChatMessage::new(Role::System, "Be brief.");
        // The caller asks, the model calls, the tool answers, the model speaks, the caller
        // goes on: the order checked is system, user, assistant, user.
        let good = vec![
            system.clone(),
            u("Bye."),
            ChatMessage::calling("", vec![call("c1"), call("c2")]),
            ChatMessage::tool_result("c1", "ok"),
            ChatMessage::tool_result("c2", "ok"),
            a("Goodbye!"),
            u("Wait."),
        ];
        assert_eq!(gemma3_tools_refusal(&good), None);
        // A request that ends on the results (asking the model to go on) is rendered too.
        assert_eq!(gemma3_tools_refusal(&good[..5]), None);
        // The caller speaking straight after a tool exchange breaks the order.
        let mut bad = good.clone();
        bad.remove(5);
        assert_eq!(
            gemma3_tools_refusal(&bad).as_deref(),
            Some(GEMMA3_ROLE_ORDER_ERROR)
        );
        // A result for a call nobody made, or one answered twice.
        let mut stray = good.clone();
        stray[3] = ChatMessage::tool_result("c9", "ok");
        assert!(gemma3_tools_refusal(&stray).unwrap().contains("c9"));
        let mut twice = good.clone();
        twice[4] = ChatMessage::tool_result("c1", "ok");
        assert!(gemma3_tools_refusal(&twice).unwrap().contains("c1"));
        // Without tools it is the plain rule.
        assert_eq!(gemma3_tools_refusal(&[system.clone(), u("Hi")]), None);
        assert!(gemma3_tools_refusal(&[system, a("Hi")]).is_some());
    }

    #[test]
    fn a_tool_call_message_has_openais_shape_and_plain_messages_stay_plain() {
        let m = ChatMessage::calling(
            "",
            vec![ToolCall::new("c1", "send_dtmf", r#"{"digits":"12"}"#)],
        );
        let json = serde_json::to_value(&m).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"role": "assistant", "content": "", "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "send_dtmf", "arguments": "{\"digits\":\"12\"}"}}
            ]})
        );
        let plain = serde_json::to_value(ChatMessage::new(Role::User, "Hi")).unwrap();
        assert_eq!(plain, serde_json::json!({"role": "user", "content": "Hi"}));
        let result = serde_json::to_value(ChatMessage::tool_result("c1", "sent")).unwrap();
        assert_eq!(
            result,
            serde_json::json!({"role": "tool", "content": "sent", "tool_call_id": "c1"})
        );
    }
}
