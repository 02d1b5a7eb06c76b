//! Tools the LLM calls to act on the call: OpenAI function calling, offered on every reply
//! when the VoiceAgent enables any (`spec.tools`).
//!
//! - `end_call`: the agent says goodbye and the call ends once the goodbye has played:
//!   through Twilio's REST API (`Status=completed`) when the agent has an API key, else by
//!   closing the Media Stream (the TwiML has nothing after `<Connect>`, so Twilio hangs up).
//! - `transfer_call`: the call is handed to a target the VoiceAgent names, by a REST update
//!   of the call with `<Dial>` TwiML once the agent's words have played. The model picks a
//!   target by name; a number or SIP URI of its own (one the caller dictated) is refused
//!   unless `allowCallerNumbers` is on.
//! - `send_dtmf`: the agent plays the key tones in the call's audio. Twilio's bidirectional
//!   Media Streams carry audio only (no message sends digits, and a `<Play digits>` update
//!   would end the stream), so the tones go in-band, as a phone's keypad sends them: ITU-T
//!   Q.23 pairs of 100 ms with 100 ms gaps, which a G.711 line carries and an IVR decodes.
//! - HTTP tools: the arguments are POSTed as a JSON object to the endpoint the VoiceAgent
//!   names, and the response (up to [`MAX_RESULT_BYTES`]) is the model's result.
//!
//! Nothing the model writes is trusted: an unknown tool, arguments that are not the JSON
//! object the tool takes, a target not in the list, an endpoint that fails or hangs past its
//! timeout each become an error result the model reads (and a counted
//! `grokcast_tool_calls_total{outcome}`), and the call goes on.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use crate::backend::{ToolCall, ToolSpecs};
use crate::config::{HttpTool, ToolsConfig};
use crate::twilio::twiml::DialTarget;

/// The built-in tools' names, which HTTP tools may not take.
pub const BUILT_IN: [&str; 3] = [END_CALL, TRANSFER_CALL, SEND_DTMF];
/// Hangs up after the goodbye.
pub const END_CALL: &str = "end_call";
/// Transfers the call.
pub const TRANSFER_CALL: &str = "transfer_call";
/// Plays key tones.
pub const SEND_DTMF: &str = "send_dtmf";
/// The most of an HTTP tool's response the model gets (the rest is cut, and says so).
pub const MAX_RESULT_BYTES: usize = 4096;
/// The most digits one `send_dtmf` plays.
pub const MAX_DIGITS: usize = 32;

/// Whether `name` may name a function: what OpenAI and vLLM accept.
pub fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// What a tool call asks of the call, beyond its result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Hang up once the agent's words have played.
    EndCall,
    /// Transfer once the agent's words have played.
    Transfer {
        /// The target's name (or the number, when the model gave one).
        name: String,
        /// Where to.
        to: DialTarget,
    },
    /// Play these key tones now.
    Dtmf(String),
}

/// How a tool call went, as counted in `grokcast_tool_calls_total{outcome}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolOutcome {
    /// Done (or, for a call action, accepted and waiting for the words to play).
    Ok,
    /// The model called a tool that is not offered.
    UnknownTool,
    /// The arguments were not what the tool takes.
    BadArguments,
    /// The tool refused (a transfer target not in the list, no phone line to transfer).
    Refused,
    /// The tool failed (the endpoint answered an error or could not be reached; the call
    /// update failed).
    Failed,
    /// The endpoint did not answer in time.
    Timeout,
}

impl ToolOutcome {
    /// Every outcome's label, for the metric.
    pub const LABELS: [&'static str; 6] = [
        "ok",
        "unknown_tool",
        "bad_arguments",
        "refused",
        "failed",
        "timeout",
    ];

    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            ToolOutcome::Ok => Self::LABELS[0],
            ToolOutcome::UnknownTool => Self::LABELS[1],
            ToolOutcome::BadArguments => Self::LABELS[2],
            ToolOutcome::Refused => Self::LABELS[3],
            ToolOutcome::Failed => Self::LABELS[4],
            ToolOutcome::Timeout => Self::LABELS[5],
        }
    }
}

/// One tool call, handled: what the model is told, and what the call must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    /// The tool's name as a metric label: the name when it is offered, else `unknown` (a
    /// model's invented names must not make new series).
    pub tool: String,
    /// The result the model reads (a JSON object as text).
    pub result: String,
    /// What the call must do.
    pub action: Option<Action>,
    /// How it went.
    pub outcome: ToolOutcome,
}

impl Invocation {
    fn ok(tool: &str, result: Value, action: Option<Action>) -> Self {
        Self {
            tool: tool.into(),
            result: result.to_string(),
            action,
            outcome: ToolOutcome::Ok,
        }
    }

    fn error(tool: &str, outcome: ToolOutcome, message: impl Into<String>) -> Self {
        Self {
            tool: tool.into(),
            result: json!({ "error": message.into() }).to_string(),
            action: None,
            outcome,
        }
    }
}

/// The tools one VoiceAgent offers, built once.
pub struct Tools {
    config: ToolsConfig,
    specs: ToolSpecs,
    http: reqwest::Client,
}

impl std::fmt::Debug for Tools {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tools")
            .field("offered", &self.names())
            .finish()
    }
}

impl Tools {
    /// The tools `config` enables; `None` when it enables none (requests then offer none).
    pub fn new(config: &ToolsConfig) -> Option<Self> {
        if !config.any() {
            return None;
        }
        // An endpoint's redirect could send the model's arguments somewhere the VoiceAgent
        // never named: follow none.
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default();
        Some(Self {
            specs: Arc::new(specs(config)),
            config: config.clone(),
            http,
        })
    }

    /// OpenAI's `tools` array for requests.
    pub fn specs(&self) -> ToolSpecs {
        self.specs.clone()
    }

    /// The names offered.
    pub fn names(&self) -> Vec<&str> {
        let c = &self.config;
        [
            (c.end_call.enabled, END_CALL),
            (c.transfer_call.enabled, TRANSFER_CALL),
            (c.send_dtmf.enabled, SEND_DTMF),
        ]
        .into_iter()
        .filter_map(|(on, name)| on.then_some(name))
        .chain(c.http.iter().map(|t| t.name.as_str()))
        .collect()
    }

    /// Handles one call the model made. `can_transfer`: the call is on a phone line this
    /// agent can update (a playground session is not).
    pub async fn invoke(&self, call: &ToolCall, can_transfer: bool) -> Invocation {
        let name = call.function.name.as_str();
        let names = self.names();
        if !names.contains(&name) {
            return Invocation::error(
                "unknown",
                ToolOutcome::UnknownTool,
                format!(
                    "there is no tool called {:?}; the tools are: {}",
                    truncate(name, 64),
                    names.join(", ")
                ),
            );
        }
        let arguments = match arguments(&call.function.arguments) {
            Ok(a) => a,
            Err(why) => return Invocation::error(name, ToolOutcome::BadArguments, why),
        };
        match name {
            END_CALL => Invocation::ok(
                name,
                json!({"ok": true, "note": "the call ends once what you say now has played; say goodbye"}),
                Some(Action::EndCall),
            ),
            TRANSFER_CALL => self.transfer(&arguments, can_transfer),
            SEND_DTMF => match arguments.get("digits").and_then(Value::as_str) {
                Some(digits) if valid_digits(digits) => Invocation::ok(
                    name,
                    json!({"ok": true, "sent": digits}),
                    Some(Action::Dtmf(digits.to_owned())),
                ),
                _ => Invocation::error(
                    name,
                    ToolOutcome::BadArguments,
                    format!(
                        "digits must be 1 to {MAX_DIGITS} of 0-9, *, #, A-D, or w for a half-second pause"
                    ),
                ),
            },
            _ => match self.config.http.iter().find(|t| t.name == name) {
                Some(tool) => self.call_http(tool, &arguments).await,
                None => Invocation::error("unknown", ToolOutcome::UnknownTool, "no such tool"),
            },
        }
    }

    fn transfer(
        &self,
        arguments: &serde_json::Map<String, Value>,
        can_transfer: bool,
    ) -> Invocation {
        let name = TRANSFER_CALL;
        if !can_transfer {
            return Invocation::error(
                name,
                ToolOutcome::Refused,
                "this call is not on a phone line, so it cannot be transferred",
            );
        }
        let Some(target) = arguments.get("target").and_then(Value::as_str) else {
            return Invocation::error(name, ToolOutcome::BadArguments, "target is required");
        };
        let t = &self.config.transfer_call;
        if let Some(known) = t.targets.iter().find(|k| k.name == target.trim())
            && let Some(to) = DialTarget::parse(&known.to)
        {
            return Invocation::ok(
                name,
                json!({"ok": true, "note": "the call is transferred once what you say now has played"}),
                Some(Action::Transfer {
                    name: known.name.clone(),
                    to,
                }),
            );
        }
        // A number only: a SIP URI the model writes could be any host on the internet.
        match DialTarget::parse(target) {
            Some(to @ DialTarget::Number(_)) if t.allow_caller_numbers => Invocation::ok(
                name,
                json!({"ok": true, "note": "the call is transferred once what you say now has played"}),
                Some(Action::Transfer {
                    name: target.trim().to_owned(),
                    to,
                }),
            ),
            _ => Invocation::error(
                name,
                ToolOutcome::Refused,
                format!(
                    "{:?} is not a transfer target; the targets are: {}",
                    truncate(target, 64),
                    t.targets
                        .iter()
                        .map(|k| k.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ),
        }
    }

    async fn call_http(
        &self,
        tool: &HttpTool,
        arguments: &serde_json::Map<String, Value>,
    ) -> Invocation {
        let timeout = Duration::from_millis(tool.timeout_ms);
        let name = tool.name.as_str();
        let request = self.http.post(&tool.url).json(arguments).send();
        let answer = tokio::time::timeout(timeout, async {
            let response = request.await.map_err(|e| e.without_url().to_string())?;
            let status = response.status();
            let body = response
                .bytes()
                .await
                .map_err(|e| e.without_url().to_string())?;
            Ok::<_, String>((status, body))
        })
        .await;
        match answer {
            Err(_) => Invocation::error(
                name,
                ToolOutcome::Timeout,
                format!("the tool did not answer within {} ms", tool.timeout_ms),
            ),
            Ok(Err(why)) => Invocation::error(
                name,
                ToolOutcome::Failed,
                format!("the tool could not be reached: {why}"),
            ),
            Ok(Ok((status, _))) if !status.is_success() => Invocation::error(
                name,
                ToolOutcome::Failed,
                format!("the tool answered HTTP {}", status.as_u16()),
            ),
            Ok(Ok((_, body))) => {
                let text = String::from_utf8_lossy(&body);
                let cut = truncate(&text, MAX_RESULT_BYTES);
                let result = match serde_json::from_str::<Value>(cut) {
                    Ok(value) if cut.len() == text.len() => value,
                    _ if cut.len() < text.len() => {
                        json!({"result": cut, "truncated": true})
                    }
                    _ => json!({ "result": cut }),
                };
                Invocation {
                    tool: name.into(),
                    result: result.to_string(),
                    action: None,
                    outcome: ToolOutcome::Ok,
                }
            }
        }
    }
}

/// `call` with arguments the model's server will read back: a JSON object, `{}` when what
/// the model wrote is not one (its result says what was wrong).
pub fn with_object_arguments(mut call: ToolCall) -> ToolCall {
    if arguments(&call.function.arguments).is_err() || call.function.arguments.trim().is_empty() {
        call.function.arguments = "{}".into();
    }
    call
}

/// The arguments as a JSON object; empty text is no arguments (what servers send for a
/// function without parameters).
fn arguments(text: &str) -> Result<serde_json::Map<String, Value>, String> {
    if text.trim().is_empty() {
        return Ok(serde_json::Map::new());
    }
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err("the arguments must be a JSON object".into()),
        Err(e) => Err(format!("the arguments are not JSON: {e}")),
    }
}

/// At most `max` bytes of `text`, cut at a character boundary.
fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Whether `digits` is what `send_dtmf` plays: keypad keys and `w` pauses.
pub fn valid_digits(digits: &str) -> bool {
    (1..=MAX_DIGITS).contains(&digits.len())
        && digits
            .chars()
            .all(|c| c.is_ascii_digit() || matches!(c, '*' | '#' | 'A'..='D' | 'w'))
}

/// OpenAI's `tools` array for `config`.
fn specs(config: &ToolsConfig) -> Value {
    let mut tools = Vec::new();
    let function = |name: &str, description: &str, parameters: Value| {
        json!({"type": "function", "function": {
            "name": name, "description": description, "parameters": parameters,
        }})
    };
    let no_parameters = json!({"type": "object", "properties": {}});
    if config.end_call.enabled {
        tools.push(function(
            END_CALL,
            "Hang up the call, when the caller says goodbye or asks to end the call. Call it \
             on its own; once it has answered, say a short goodbye, and the call ends after it.",
            no_parameters.clone(),
        ));
    }
    if config.transfer_call.enabled {
        let t = &config.transfer_call;
        let mut described: Vec<String> = t
            .targets
            .iter()
            .map(|k| match k.description.trim() {
                "" => k.name.clone(),
                d => format!("{} ({d})", k.name),
            })
            .collect();
        let mut target = json!({"type": "string"});
        if t.allow_caller_numbers {
            described.push("or a phone number in E.164 form (+15551230000) the caller gave".into());
        } else {
            target["enum"] = t.targets.iter().map(|k| k.name.clone()).collect();
        }
        target["description"] = format!("Where to: {}", described.join(", ")).into();
        tools.push(function(
            TRANSFER_CALL,
            "Transfer the caller to a person or department. Call it on its own; once it has \
             answered, tell the caller you are transferring them, and the transfer follows.",
            json!({"type": "object", "properties": {"target": target}, "required": ["target"]}),
        ));
    }
    if config.send_dtmf.enabled {
        tools.push(function(
            SEND_DTMF,
            "Press keys on the phone keypad, to choose from an automated menu.",
            json!({"type": "object", "properties": {"digits": {
                "type": "string",
                "description": "Keys to press: 0-9, *, #, and w for a half-second pause",
            }}, "required": ["digits"]}),
        ));
    }
    for tool in &config.http {
        let parameters = if tool.parameters.is_null() {
            no_parameters.clone()
        } else {
            tool.parameters.clone()
        };
        tools.push(function(&tool.name, &tool.description, parameters));
    }
    Value::Array(tools)
}

/// The key tones for `digits` ([`valid_digits`]) as 8 kHz samples: each key's ITU-T Q.23
/// pair for [`TONE`], then [`GAP`] of silence; `w` is [`PAUSE`] of silence. Each tone is at
/// about -9 dBm0 on a mu-law line, the pair peaking below half of full scale.
pub fn dtmf_tones(digits: &str) -> Vec<f32> {
    const RATE: f32 = 8_000.0;
    let samples = |d: Duration| (d.as_secs_f32() * RATE) as usize;
    let mut out = Vec::new();
    for key in digits.chars() {
        let Some((low, high)) = dtmf_pair(key) else {
            out.resize(out.len() + samples(PAUSE), 0.0);
            continue;
        };
        let n = samples(TONE);
        // A 4 ms ramp at each end, so the tone starts and stops without a click.
        let ramp = samples(Duration::from_millis(4)).max(1);
        for i in 0..n {
            let t = i as f32 / RATE;
            let edge = (i.min(n - 1 - i) as f32 / ramp as f32).min(1.0);
            let v = 0.22
                * ((std::f32::consts::TAU * low * t).sin()
                    + (std::f32::consts::TAU * high * t).sin());
            out.push(v * edge);
        }
        out.resize(out.len() + samples(GAP), 0.0);
    }
    out
}

/// How long each key's tone plays.
pub const TONE: Duration = Duration::from_millis(100);
/// The silence after each tone.
pub const GAP: Duration = Duration::from_millis(100);
/// The silence a `w` makes (Twilio's `sendDigits` convention).
pub const PAUSE: Duration = Duration::from_millis(500);

/// A key's (low, high) frequencies in Hz (ITU-T Q.23); `None` for anything else.
pub fn dtmf_pair(key: char) -> Option<(f32, f32)> {
    const LOW: [f32; 4] = [697.0, 770.0, 852.0, 941.0];
    const HIGH: [f32; 4] = [1209.0, 1336.0, 1477.0, 1633.0];
    const KEYS: [[char; 4]; 4] = [
        ['1', '2', '3', 'A'],
        ['4', '5', '6', 'B'],
        ['7', '8', '9', 'C'],
        ['*', '0', '#', 'D'],
    ];
    KEYS.iter().enumerate().find_map(|(row, keys)| {
        keys.iter()
            .position(|k| *k == key)
            .map(|col| (LOW[row], HIGH[col]))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{TransferCallTool, TransferTarget};

    fn tools(allow_caller_numbers: bool) -> Tools {
        let config = ToolsConfig {
            end_call: crate::config::EndCallTool { enabled: true },
            transfer_call: TransferCallTool {
                enabled: true,
                targets: vec![TransferTarget {
                    name: "sales".into(),
                    to: "+15551230000".into(),
                    description: "new orders".into(),
                }],
                allow_caller_numbers,
            },
            send_dtmf: crate::config::SendDtmfTool { enabled: true },
            http: Vec::new(),
        };
        Tools::new(&config).unwrap()
    }

    fn call(name: &str, arguments: &str) -> ToolCall {
        ToolCall::new("c1", name, arguments)
    }

    #[tokio::test]
    async fn a_transfer_goes_to_a_named_target_and_a_dictated_number_only_when_allowed() {
        let strict = tools(false);
        let done = strict
            .invoke(&call(TRANSFER_CALL, r#"{"target":"sales"}"#), true)
            .await;
        assert_eq!(done.outcome, ToolOutcome::Ok);
        assert_eq!(
            done.action,
            Some(Action::Transfer {
                name: "sales".into(),
                to: DialTarget::Number("+15551230000".into())
            })
        );
        let dictated = call(TRANSFER_CALL, r#"{"target":"+15559990000"}"#);
        let refused = strict.invoke(&dictated, true).await;
        assert_eq!(
            (refused.outcome, refused.action),
            (ToolOutcome::Refused, None)
        );
        assert!(refused.result.contains("sales"), "{}", refused.result);
        let open = tools(true).invoke(&dictated, true).await;
        assert_eq!(open.outcome, ToolOutcome::Ok);
        // A SIP URI the model writes could be any host: never, even with numbers allowed.
        let sip = call(
            TRANSFER_CALL,
            r#"{"target":"sip:anyone@elsewhere.example"}"#,
        );
        assert_eq!(
            tools(true).invoke(&sip, true).await.outcome,
            ToolOutcome::Refused
        );
        // A phone line is still needed.
        let no_line = strict
            .invoke(&call(TRANSFER_CALL, r#"{"target":"sales"}"#), false)
            .await;
        assert_eq!(no_line.outcome, ToolOutcome::Refused);
    }

    #[tokio::test]
    async fn invented_tools_and_bad_arguments_are_errors_the_model_reads() {
        let t = tools(false);
        let unknown = t.invoke(&call("launch_rocket", "{}"), true).await;
        assert_eq!(unknown.outcome, ToolOutcome::UnknownTool);
        assert_eq!(unknown.tool, "unknown", "no series per invented name");
        assert!(unknown.result.contains("end_call"), "{}", unknown.result);
        for bad in ["{\"target\":", "[1,2]", "\"sales\""] {
            let invoked = t.invoke(&call(TRANSFER_CALL, bad), true).await;
            assert_eq!(invoked.outcome, ToolOutcome::BadArguments, "{bad}");
            assert!(invoked.action.is_none());
        }
        let digits = t
            .invoke(&call(SEND_DTMF, r#"{"digits":"12;rm"}"#), true)
            .await;
        assert_eq!(digits.outcome, ToolOutcome::BadArguments);
        let ok = t
            .invoke(&call(SEND_DTMF, r#"{"digits":"1w#"}"#), true)
            .await;
        assert_eq!(ok.action, Some(Action::Dtmf("1w#".into())));
        // No arguments at all is an empty object.
        let end = t.invoke(&call(END_CALL, ""), false).await;
        assert_eq!(end.action, Some(Action::EndCall));
    }

    /// An HTTP tool at a local endpoint answering `body` with `status` (and a redirect's
    /// `location`).
    async fn http_tool(status: u16, body: Vec<u8>) -> Tools {
        let app = axum::Router::new().route(
            "/tool",
            axum::routing::post(move || {
                let body = body.clone();
                async move {
                    let status = axum::http::StatusCode::from_u16(status).unwrap();
                    (status, [("location", "http://127.0.0.1:9/elsewhere")], body)
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/tool", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        let config = ToolsConfig {
            http: vec![HttpTool {
                name: "lookup".into(),
                url,
                ..HttpTool::default()
            }],
            ..ToolsConfig::default()
        };
        Tools::new(&config).unwrap()
    }

    #[tokio::test]
    async fn an_endpoints_answer_is_cut_to_what_the_model_takes_and_redirects_are_not_followed() {
        let big = http_tool(200, vec![b'a'; 4 * 1024 * 1024]).await;
        let answer = big.invoke(&call("lookup", "{}"), false).await;
        assert_eq!(answer.outcome, ToolOutcome::Ok);
        assert!(
            answer.result.len() < MAX_RESULT_BYTES + 100,
            "{}",
            answer.result.len()
        );
        let result: Value = serde_json::from_str(&answer.result).unwrap();
        assert_eq!(result["truncated"], true);
        let moved = http_tool(307, Vec::new()).await;
        let answer = moved.invoke(&call("lookup", "{}"), false).await;
        assert_eq!(answer.outcome, ToolOutcome::Failed);
        assert!(answer.result.contains("HTTP 307"), "{}", answer.result);
        let json = http_tool(200, br#"{"open": true}"#.to_vec()).await;
        let answer = json.invoke(&call("lookup", "{}"), false).await;
        assert_eq!(answer.result, r#"{"open":true}"#);
    }

    #[test]
    fn history_keeps_arguments_a_server_can_read_back() {
        let bad = with_object_arguments(call("lookup", r#"{"id": "4"#));
        assert_eq!(bad.function.arguments, "{}");
        let empty = with_object_arguments(call("lookup", ""));
        assert_eq!(empty.function.arguments, "{}");
        let good = with_object_arguments(call("lookup", r#"{"id":"4"}"#));
        assert_eq!(good.function.arguments, r#"{"id":"4"}"#);
    }

    #[test]
    fn the_specs_list_only_named_targets_unless_numbers_are_allowed() {
        let strict = tools(false).specs();
        let transfer = &strict[1]["function"];
        assert_eq!(transfer["name"], TRANSFER_CALL);
        assert_eq!(
            transfer["parameters"]["properties"]["target"]["enum"],
            json!(["sales"])
        );
        let open = tools(true).specs();
        assert!(open[1]["function"]["parameters"]["properties"]["target"]["enum"].is_null());
        assert_eq!(strict.as_array().map(Vec::len), Some(3));
    }

    #[test]
    fn each_key_is_its_pair_of_tones_then_a_gap() {
        let audio = dtmf_tones("5w");
        let tone = (TONE.as_secs_f32() * 8000.0) as usize;
        let gap = (GAP.as_secs_f32() * 8000.0) as usize;
        let pause = (PAUSE.as_secs_f32() * 8000.0) as usize;
        assert_eq!(audio.len(), tone + gap + pause);
        assert!(audio[tone..].iter().all(|s| *s == 0.0));
        assert!(audio.iter().all(|s| s.abs() < 0.5));
        // The energy at 770 Hz and 1336 Hz (key 5) stands far above that at 697 Hz.
        let power = |f: f32| {
            let (mut re, mut im) = (0.0f32, 0.0f32);
            for (i, s) in audio[..tone].iter().enumerate() {
                let w = std::f32::consts::TAU * f * i as f32 / 8000.0;
                re += s * w.cos();
                im += s * w.sin();
            }
            re * re + im * im
        };
        assert!(power(770.0) > 20.0 * power(697.0));
        assert!(power(1336.0) > 20.0 * power(1209.0));
        assert_eq!(dtmf_pair('x'), None);
    }
}
