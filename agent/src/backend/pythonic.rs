//! Tool calls a model wrote as words. vLLM's pythonic tool parser (the one for Gemma 3 and
//! Llama 3.2+) turns a reply into tool calls only when the whole reply is a Python list of
//! calls, `[end_call()]`; a model that says something first, `Goodbye! [end_call()]`, gets
//! its call back as text. Spoken, that would read code to the caller and never hang up.
//!
//! [`CallGuard`] watches the streamed text for a `[` that opens a call, `[name(`: text
//! before it passes on at once, and from it on the text is held to the end of the reply,
//! then read as a Python list of calls (keyword arguments whose values are Python literals,
//! as the template teaches). Read, it becomes tool calls (one the agent did not offer is then
//! refused like any invented call); unreadable, it is dropped, never spoken. A `[` that
//! turns out not to open a call (`[laughs]`, `[1]`) passes on.

use serde_json::{Map, Number, Value};

use super::ToolCall;

/// Separates tool calls written as words from the words of a streamed reply.
#[derive(Debug)]
pub struct CallGuard {
    /// Tools were offered (without them the model has no calls to write).
    active: bool,
    /// Text from a `[` that may open a call.
    held: String,
    /// The held text opens a call of an offered tool: hold it all to the end.
    calling: bool,
    /// Calls found so far, numbered for their ids.
    found: usize,
}

impl CallGuard {
    /// A guard for a reply that was offered tools; inactive, it passes everything.
    pub fn new(active: bool) -> Self {
        Self {
            active,
            held: String::new(),
            calling: false,
            found: 0,
        }
    }

    /// Takes the next piece of the reply; returns the text that may be spoken now.
    pub fn push(&mut self, text: &str) -> String {
        if !self.active {
            return text.to_owned();
        }
        let mut out = String::new();
        for c in text.chars() {
            if self.calling {
                self.held.push(c);
                continue;
            }
            if self.held.is_empty() {
                if c == '[' {
                    self.held.push(c);
                } else {
                    out.push(c);
                }
                continue;
            }
            self.held.push(c);
            match self.opens_call() {
                Some(true) => self.calling = true,
                Some(false) => out.push_str(&std::mem::take(&mut self.held)),
                None => {}
            }
        }
        out
    }

    /// Whether the held text opens a call, `[name(`: `None` while it cannot yet be told
    /// (`[end_c`).
    fn opens_call(&self) -> Option<bool> {
        let after = self.held[1..].trim_start();
        let name: String = after
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
            .collect();
        if name.starts_with(|c: char| c.is_ascii_digit()) {
            return Some(false);
        }
        let rest = &after[name.len()..];
        if rest.trim_start().is_empty() {
            return (after.len() > 64).then_some(false);
        }
        Some(!name.is_empty() && rest.trim_start().starts_with('('))
    }

    /// The reply is over: the text still held that is not a call, and the calls read.
    pub fn finish(&mut self) -> (String, Vec<ToolCall>) {
        let held = std::mem::take(&mut self.held);
        if !self.calling {
            return (held, Vec::new());
        }
        self.calling = false;
        match parse_calls(&held) {
            Some(calls) => {
                let calls = calls
                    .into_iter()
                    .map(|(name, args)| {
                        self.found += 1;
                        let id = format!("call-text-{}", self.found);
                        ToolCall::new(id, name, Value::Object(args).to_string())
                    })
                    .collect();
                (String::new(), calls)
            }
            // Code the caller must not hear, and no call to make of it.
            None => (String::new(), Vec::new()),
        }
    }
}

/// Reads `[name(key=literal, ...), ...]`, allowing text after the closing bracket to be
/// nothing but spaces.
pub fn parse_calls(text: &str) -> Option<Vec<(String, Map<String, Value>)>> {
    let mut p = Parser {
        s: text.trim().as_bytes(),
        at: 0,
    };
    p.expect(b'[')?;
    let mut calls = Vec::new();
    loop {
        p.space();
        if p.eat(b']') {
            break;
        }
        if !calls.is_empty() {
            p.expect(b',')?;
            p.space();
        }
        let name = p.ident()?;
        p.space();
        p.expect(b'(')?;
        let mut args = Map::new();
        p.items(b')', |p| {
            let key = p.ident()?;
            p.space();
            p.expect(b'=')?;
            p.space();
            args.insert(key, p.literal(0)?);
            Some(())
        })?;
        calls.push((name, args));
    }
    p.space();
    (p.at == p.s.len() && !calls.is_empty()).then_some(calls)
}

struct Parser<'a> {
    s: &'a [u8],
    at: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.at).copied()
    }

    fn eat(&mut self, b: u8) -> bool {
        let hit = self.peek() == Some(b);
        self.at += usize::from(hit);
        hit
    }

    fn expect(&mut self, b: u8) -> Option<()> {
        self.eat(b).then_some(())
    }

    fn space(&mut self) {
        while self.peek().is_some_and(|b| b.is_ascii_whitespace()) {
            self.at += 1;
        }
    }

    /// Comma-separated items up to and including `close`, a trailing comma allowed (as in
    /// Python's calls, lists and dicts); `item` reads one.
    fn items(&mut self, close: u8, mut item: impl FnMut(&mut Self) -> Option<()>) -> Option<()> {
        let mut first = true;
        loop {
            self.space();
            if self.eat(close) {
                return Some(());
            }
            if !first {
                self.expect(b',')?;
                self.space();
                if self.eat(close) {
                    return Some(());
                }
            }
            item(self)?;
            first = false;
        }
    }

    fn ident(&mut self) -> Option<String> {
        let start = self.at;
        while self
            .peek()
            .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            self.at += 1;
        }
        (self.at > start && !self.s[start].is_ascii_digit())
            .then(|| String::from_utf8_lossy(&self.s[start..self.at]).into_owned())
    }

    /// A Python literal: a string, a number, True/False/None, or a list or dict of them.
    fn literal(&mut self, depth: usize) -> Option<Value> {
        if depth > 16 {
            return None;
        }
        match self.peek()? {
            b'"' | b'\'' => self.string().map(Value::String),
            b'[' => {
                self.at += 1;
                let mut items = Vec::new();
                self.items(b']', |p| {
                    items.push(p.literal(depth + 1)?);
                    Some(())
                })?;
                Some(Value::Array(items))
            }
            b'{' => {
                self.at += 1;
                let mut map = Map::new();
                self.items(b'}', |p| {
                    let key = p.string()?;
                    p.space();
                    p.expect(b':')?;
                    p.space();
                    map.insert(key, p.literal(depth + 1)?);
                    Some(())
                })?;
                Some(Value::Object(map))
            }
            _ => {
                let start = self.at;
                while self
                    .peek()
                    .is_some_and(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'+'))
                {
                    self.at += 1;
                }
                let word = std::str::from_utf8(&self.s[start..self.at]).ok()?;
                match word {
                    "True" => Some(Value::Bool(true)),
                    "False" => Some(Value::Bool(false)),
                    "None" => Some(Value::Null),
                    _ => {
                        if let Ok(i) = word.parse::<i64>() {
                            return Some(Value::Number(i.into()));
                        }
                        word.parse::<f64>()
                            .ok()
                            .and_then(Number::from_f64)
                            .map(Value::Number)
                    }
                }
            }
        }
    }

    /// A quoted string, with the escapes a model writes (`\"`, `\'`, `\\`, `\n`, `\t`).
    fn string(&mut self) -> Option<String> {
        let quote = self.peek().filter(|q| *q == b'"' || *q == b'\'')?;
        self.at += 1;
        let mut bytes = Vec::new();
        loop {
            let b = self.peek()?;
            self.at += 1;
            match b {
                b'\\' => {
                    let escaped = self.peek()?;
                    self.at += 1;
                    bytes.push(match escaped {
                        b'n' => b'\n',
                        b't' => b'\t',
                        other => other,
                    });
                }
                b if b == quote => return String::from_utf8(bytes).ok(),
                b => bytes.push(b),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard() -> CallGuard {
        CallGuard::new(true)
    }

    /// Feeds `pieces` and returns (spoken text, calls as (name, arguments)).
    fn run(pieces: &[&str]) -> (String, Vec<(String, String)>) {
        let mut g = guard();
        let mut spoken: String = pieces.iter().map(|p| g.push(p)).collect();
        let (rest, calls) = g.finish();
        spoken.push_str(&rest);
        let calls = calls
            .into_iter()
            .map(|c| (c.function.name, c.function.arguments))
            .collect();
        (spoken, calls)
    }

    #[test]
    fn a_call_after_words_is_a_call_and_never_spoken() {
        let (spoken, calls) = run(&["Goodbye", "! [end", "_call()", "]"]);
        assert_eq!(spoken, "Goodbye! ");
        assert_eq!(calls, [("end_call".to_owned(), "{}".to_owned())]);
        let (spoken, calls) =
            run(&["One moment. [transfer_call(target=\"sales\", urgent=True, n=2)]"]);
        assert_eq!(spoken, "One moment. ");
        assert_eq!(
            calls,
            [(
                "transfer_call".to_owned(),
                r#"{"n":2,"target":"sales","urgent":true}"#.to_owned()
            )]
        );
    }

    #[test]
    fn brackets_that_open_no_call_are_spoken() {
        for said in [
            "Sure [laughs] no problem.",
            "Press [1] for sales.",
            "See [end_callers] list.",
            "[ sic ] as written.",
        ] {
            assert_eq!(run(&[said]), (said.to_owned(), Vec::new()), "{said}");
        }
        // A call of a tool nobody offered is a call all the same (refused as invented).
        let (spoken, calls) = run(&["Sure. [launch_rocket(when='now')]"]);
        assert_eq!(spoken, "Sure. ");
        assert_eq!(calls[0].0, "launch_rocket");
        // A reply that ends inside a possible call says what it held.
        assert_eq!(run(&["Hmm [end"]).0, "Hmm [end");
    }

    #[test]
    fn an_unreadable_call_is_dropped_not_spoken() {
        let (spoken, calls) = run(&["Bye. [end_call(reason=]"]);
        assert_eq!((spoken.as_str(), calls.len()), ("Bye. ", 0));
        let (spoken, calls) = run(&["[end_call()] and then some words"]);
        assert_eq!((spoken.as_str(), calls.len()), ("", 0));
    }

    #[test]
    fn python_literals_read_as_json() {
        let calls = parse_calls(
            "[transfer_call(target='it\\'s', xs=[1, 2.5, None], m={'a': False},), end_call()]",
        )
        .unwrap();
        assert_eq!(calls.len(), 2);
        assert_eq!(
            Value::Object(calls[0].1.clone()),
            serde_json::json!({"target": "it's", "xs": [1, 2.5, null], "m": {"a": false}})
        );
        for bad in [
            "",
            "[]",
            "[1()]",
            "[f(x)]",
            "[f(x=)]",
            "[f(x=1)",
            "[f(x=1)] tail",
            "[f(x=[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]])]",
        ] {
            assert!(parse_calls(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn without_tools_everything_is_spoken() {
        let mut g = CallGuard::new(false);
        assert_eq!(g.push("[end_call()]"), "[end_call()]");
        assert_eq!(g.finish(), (String::new(), Vec::new()));
    }
}
