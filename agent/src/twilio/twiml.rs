//! The TwiML the agent answers `POST /twilio/voice` with, and a reader for it (the caller).

/// Escapes text for an XML attribute.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

fn unescape(text: &str) -> String {
    text.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

/// `<Connect><Stream url=...>` with `<Parameter>`s: Twilio opens the Media Stream to `url`.
pub fn connect_stream(url: &str, parameters: &[(&str, &str)]) -> String {
    let mut xml = String::from(r#"<?xml version="1.0" encoding="UTF-8"?><Response><Connect>"#);
    xml.push_str(&format!(r#"<Stream url="{}">"#, escape(url)));
    for (name, value) in parameters {
        xml.push_str(&format!(
            r#"<Parameter name="{}" value="{}"/>"#,
            escape(name),
            escape(value)
        ));
    }
    xml.push_str("</Stream></Connect></Response>");
    xml
}

/// Where a transfer may go: a phone number (E.164) or a SIP URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DialTarget {
    /// `+` and 7 to 15 digits.
    Number(String),
    /// `sip:` or `sips:` and an address, no spaces or quotes.
    Sip(String),
}

impl DialTarget {
    /// Reads a number or SIP URI; `None` for anything else.
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.trim();
        if let Some(digits) = text.strip_prefix('+') {
            let ok = (7..=15).contains(&digits.len())
                && digits.bytes().all(|b| b.is_ascii_digit())
                && !digits.starts_with('0');
            return ok.then(|| Self::Number(text.to_owned()));
        }
        let address = text
            .strip_prefix("sip:")
            .or_else(|| text.strip_prefix("sips:"))?;
        let ok = address.contains('@')
            && !address.starts_with('@')
            && !address
                .chars()
                .any(|c| c.is_whitespace() || matches!(c, '"' | '\'' | '<' | '>'));
        ok.then(|| Self::Sip(text.to_owned()))
    }
}

/// `<Dial>` to `target`: the TwiML a live call is updated with to transfer it.
pub fn dial(target: &DialTarget) -> String {
    let noun = match target {
        DialTarget::Number(n) => format!("<Number>{}</Number>", escape(n)),
        DialTarget::Sip(uri) => format!("<Sip>{}</Sip>", escape(uri)),
    };
    format!(r#"<?xml version="1.0" encoding="UTF-8"?><Response><Dial>{noun}</Dial></Response>"#)
}

/// `<Reject reason="busy"/>`: Twilio plays a busy signal; nothing is billed.
pub fn reject_busy() -> String {
    r#"<?xml version="1.0" encoding="UTF-8"?><Response><Reject reason="busy"/></Response>"#.into()
}

/// What a TwiML answer asks Twilio to do, as far as the caller needs to know.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// Open a Media Stream to `url` with these custom parameters.
    Stream {
        /// The wss URL.
        url: String,
        /// `<Parameter>` name/value pairs.
        parameters: Vec<(String, String)>,
    },
    /// The call was rejected with this reason.
    Reject(String),
}

/// Why TwiML could not be read.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("TwiML has neither <Connect><Stream url> nor <Reject>: {0}")]
pub struct TwimlError(pub String);

fn attribute(tag: &str, name: &str) -> Option<String> {
    let key = format!(r#"{name}=""#);
    let start = tag.find(&key)? + key.len();
    let end = tag[start..].find('"')? + start;
    Some(unescape(&tag[start..end]))
}

/// Reads the answer the agent gave (only the elements the agent emits).
pub fn read_answer(xml: &str) -> Result<Answer, TwimlError> {
    if let Some(at) = xml.find("<Reject") {
        let tag = &xml[at..xml[at..].find('>').map_or(xml.len(), |e| at + e)];
        return Ok(Answer::Reject(
            attribute(tag, "reason").unwrap_or_else(|| "rejected".into()),
        ));
    }
    let at = xml.find("<Stream").ok_or_else(|| TwimlError(xml.into()))?;
    let tag_end = xml[at..].find('>').ok_or_else(|| TwimlError(xml.into()))? + at;
    let url = attribute(&xml[at..tag_end], "url").ok_or_else(|| TwimlError(xml.into()))?;
    let mut parameters = Vec::new();
    let mut rest = &xml[tag_end..];
    while let Some(p) = rest.find("<Parameter") {
        let end = rest[p..].find('>').map_or(rest.len(), |e| p + e);
        let tag = &rest[p..end];
        if let (Some(n), Some(v)) = (attribute(tag, "name"), attribute(tag, "value")) {
            parameters.push((n, v));
        }
        rest = &rest[end..];
    }
    Ok(Answer::Stream { url, parameters })
}

#[cfg(test)]
mod tests {

    #[test]
    fn transfers_go_to_numbers_and_sip_uris_only() {
        assert_eq!(
            DialTarget::parse(" +14155550100 "),
            Some(DialTarget::Number("+14155550100".into()))
        );
        assert_eq!(
            DialTarget::parse("sip:desk@pbx.example.com"),
            Some(DialTarget::Sip("sip:desk@pbx.example.com".into()))
        );
        for bad in [
            "14155550100",
            "+0123456",
            "+1415555010012345",
            "+1 415 555 0100",
            "sip:",
            "sip:@pbx",
            "sip:a@b\"><Hangup/>",
            "tel:+14155550100",
            "",
        ] {
            assert_eq!(DialTarget::parse(bad), None, "{bad:?}");
        }
        assert_eq!(
            dial(&DialTarget::Number("+14155550100".into())),
            r#"<?xml version="1.0" encoding="UTF-8"?><Response><Dial><Number>+14155550100</Number></Dial></Response>"#
        );
        assert!(
            dial(&DialTarget::Sip("sip:a&b@pbx".into())).contains("<Sip>sip:a&amp;b@pbx</Sip>")
        );
    }

    use super::*;

    #[test]
    fn stream_answer_round_trips_with_escaping() {
        let xml = connect_stream(
            "wss://voice.example.com/twilio/stream?a=1&b=2",
            &[("voiceagent", "receptionist"), ("from", "\"Bob\" <+1555>")],
        );
        assert!(xml.contains("&amp;b=2"), "{xml}");
        assert_eq!(
            read_answer(&xml),
            Ok(Answer::Stream {
                url: "wss://voice.example.com/twilio/stream?a=1&b=2".into(),
                parameters: vec![
                    ("voiceagent".into(), "receptionist".into()),
                    ("from".into(), "\"Bob\" <+1555>".into())
                ],
            })
        );
    }

    #[test]
    fn busy_answer_is_a_reject() {
        assert_eq!(
            read_answer(&reject_busy()),
            Ok(Answer::Reject("busy".into()))
        );
    }

    #[test]
    fn other_twiml_is_an_error() {
        assert!(read_answer("<Response><Say>hi</Say></Response>").is_err());
    }
}
