//! Refusals, rendered in the dialect of the API the client called, so that
//! the OpenAI and Anthropic SDKs raise their proper exception classes.

use keygate_proto::lookup::Format;

/// Which API family the client speaks, from the request path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    OpenAi,
    Anthropic,
}

impl Dialect {
    /// The dialect of a surface the table serves.
    pub fn of(format: Format) -> Dialect {
        match format {
            Format::Anthropic => Dialect::Anthropic,
            Format::Openai => Dialect::OpenAi,
        }
    }

    /// For a request outside the table: Anthropic's when the client is the
    /// Anthropic SDK (it always sends `anthropic-version`) or the path is
    /// under Anthropic's own `/v1/messages`; OpenAI's otherwise.
    pub fn guess(path: &str, anthropic_client: bool) -> Dialect {
        let path = path.split('?').next().unwrap_or(path);
        if anthropic_client || path == "/v1/messages" || path.starts_with("/v1/messages/") {
            Dialect::Anthropic
        } else {
            Dialect::OpenAi
        }
    }
}

/// Client input quoted in an error message: at most its first 64
/// characters, in backquotes, so that an error never echoes a huge or
/// hostile value whole.
pub fn quote(s: &str) -> String {
    const MAX: usize = 64;
    match s.char_indices().nth(MAX) {
        Some((end, _)) => format!("`{}…`", s.get(..end).unwrap_or_default()),
        None => format!("`{s}`"),
    }
}

/// A local reply: nothing goes upstream. `code` is stable and documented;
/// `message` never contains a token or a provider key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
    /// Seconds, for 429/503 answers that should be retried later.
    pub retry_after: Option<u64>,
    /// Further response headers (e.g. `x-ratelimit-*`).
    pub headers: Vec<(&'static str, String)>,
}

impl Denial {
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> Denial {
        Denial { status, code, message: message.into(), retry_after: None, headers: Vec::new() }
    }

    pub fn body(&self, dialect: Dialect) -> String {
        let message = json_string(&self.message);
        match dialect {
            Dialect::OpenAi => format!(
                r#"{{"error":{{"message":{message},"type":"{}","param":null,"code":"{}"}}}}"#,
                openai_type(self.status),
                self.code
            ),
            Dialect::Anthropic => format!(
                r#"{{"type":"error","error":{{"type":"{}","message":{message},"code":"{}"}}}}"#,
                anthropic_type(self.status),
                self.code
            ),
        }
    }
}

fn openai_type(status: u16) -> &'static str {
    match status {
        401 => "authentication_error",
        402 => "insufficient_quota",
        403 => "permission_error",
        429 => "rate_limit_error",
        500..=599 => "server_error",
        _ => "invalid_request_error",
    }
}

fn anthropic_type(status: u16) -> &'static str {
    match status {
        401 => "authentication_error",
        402 => "billing_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        500..=599 => "api_error",
        _ => "invalid_request_error",
    }
}

/// JSON string literal, without pulling serde into this hot path.
pub fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dialect_outside_the_table_follows_the_client_and_the_path() {
        assert_eq!(Dialect::guess("/v1/messages", false), Dialect::Anthropic);
        assert_eq!(Dialect::guess("/v1/messages?beta=true", false), Dialect::Anthropic);
        assert_eq!(Dialect::guess("/v1/messages/nope", false), Dialect::Anthropic);
        assert_eq!(Dialect::guess("/v1/chat/completions", false), Dialect::OpenAi);
        assert_eq!(Dialect::guess("/v1/messagesx", false), Dialect::OpenAi);
        assert_eq!(Dialect::guess("/v1/anything", true), Dialect::Anthropic);
    }

    #[test]
    fn quotes_are_short() {
        assert_eq!(quote("gpt-4o"), "`gpt-4o`");
        let long = "é".repeat(1_000_000);
        let q = quote(&long);
        assert!(q.chars().count() <= 67 && q.ends_with("…`"), "{q}");
    }

    #[test]
    fn openai_shape() {
        let d = Denial::new(403, "model_not_allowed", "model \"x\" is not allowed");
        let v: serde_json::Value = serde_json::from_str(&d.body(Dialect::OpenAi)).unwrap();
        assert_eq!(v["error"]["code"], "model_not_allowed");
        assert_eq!(v["error"]["type"], "permission_error");
        assert_eq!(v["error"]["message"], "model \"x\" is not allowed");
    }

    #[test]
    fn anthropic_shape() {
        let d = Denial::new(401, "invalid_access_key", "unknown key\n");
        let v: serde_json::Value = serde_json::from_str(&d.body(Dialect::Anthropic)).unwrap();
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["type"], "authentication_error");
        assert_eq!(v["error"]["message"], "unknown key\n");
    }

    #[test]
    fn control_characters_are_escaped() {
        let s = json_string("a\u{1}b");
        assert_eq!(serde_json::from_str::<String>(&s).unwrap(), "a\u{1}b");
    }
}
