//! Refusals, rendered in the dialect of the API the client called, so that
//! the OpenAI and Anthropic SDKs raise their proper exception classes.

use keygate_proto::lookup::Format;

/// Which API family the client speaks, from the request path.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Dialect {
    #[default]
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

/// Every error code keygate's filter can answer with (`x-keygate-error`
/// and the body's `code`). Stable: clients and dashboards match on them, and
/// a test keeps the README's table equal to this list.
macro_rules! codes {
    ($($variant:ident => $name:literal,)*) => {
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Code { $($variant,)* }

        impl Code {
            pub const ALL: &'static [Code] = &[$(Code::$variant,)*];

            pub fn as_str(self) -> &'static str {
                match self { $(Code::$variant => $name,)* }
            }
        }
    };
}

codes! {
    InvalidHeader => "invalid_header",
    AccessKeyInHeader => "access_key_in_header",
    CredentialInUrl => "credential_in_url",
    MethodOverride => "method_override",
    InvalidPath => "invalid_path",
    UnsupportedPath => "unsupported_path",
    MethodNotAllowed => "method_not_allowed",
    MissingAccessKey => "missing_access_key",
    MalformedAccessKey => "malformed_access_key",
    AmbiguousAccessKey => "ambiguous_access_key",
    InvalidAccessKey => "invalid_access_key",
    AccessKeyDisabled => "access_key_disabled",
    AccessKeyExpired => "access_key_expired",
    UnexpectedBody => "unexpected_body",
    UnexpectedTrailers => "unexpected_trailers",
    UnsupportedMediaType => "unsupported_media_type",
    AccessKeyInBody => "access_key_in_body",
    InvalidJson => "invalid_json",
    InvalidMultipart => "invalid_multipart",
    MissingModel => "missing_model",
    InvalidModel => "invalid_model",
    UnknownModel => "unknown_model",
    UnsupportedApi => "unsupported_api",
    FallbackUnavailable => "fallback_unavailable",
    NoProviderCredentials => "no_provider_credentials",
    InsufficientCredits => "insufficient_credits",
    ProviderNotAllowed => "provider_not_allowed",
    ModelNotAllowed => "model_not_allowed",
    EndpointNotAllowed => "endpoint_not_allowed",
    IpNotAllowed => "ip_not_allowed",
    RequestTooLarge => "request_too_large",
    InputTokensExceeded => "input_tokens_exceeded",
    OutputTokensExceeded => "output_tokens_exceeded",
    RateLimitExceeded => "rate_limit_exceeded",
    ConcurrencyLimitExceeded => "concurrency_limit_exceeded",
    AllProviderKeysFailed => "all_provider_keys_failed",
    KeyStoreUnavailable => "key_store_unavailable",
    BadProviderEndpoint => "bad_provider_endpoint",
    InternalError => "internal_error",
}

impl std::fmt::Display for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Tests compare codes with their documented names.
impl PartialEq<&str> for Code {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// A local reply: nothing goes upstream. `code` is stable and documented;
/// `message` never contains a token or a provider key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    pub status: u16,
    pub code: Code,
    pub message: String,
    /// Seconds, for 429/503 answers that should be retried later.
    pub retry_after: Option<u64>,
    /// Further response headers (e.g. `x-ratelimit-*`).
    pub headers: Vec<(&'static str, String)>,
}

// The refusals the worker raises from many places are built out of line
// (`#[cold]`, `#[inline(never)]`): one copy in the module, off the path of a
// request that is let through.
impl Denial {
    pub fn new(status: u16, code: Code, message: impl Into<String>) -> Denial {
        Denial { status, code, message: message.into(), retry_after: None, headers: Vec::new() }
    }

    /// The gateway could not do its part (never the client's fault).
    #[cold]
    #[inline(never)]
    pub fn internal(message: impl Into<String>) -> Denial {
        Denial::new(500, Code::InternalError, message)
    }

    /// The key store did not answer usably, and nothing stale may stand in.
    #[cold]
    #[inline(never)]
    pub fn store_unavailable() -> Denial {
        let mut d = Denial::new(503, Code::KeyStoreUnavailable, "the key store is unavailable; try again shortly");
        d.retry_after = Some(1);
        d
    }

    /// No API keygate serves takes request trailers, and a body could not be
    /// rewritten after them.
    #[cold]
    #[inline(never)]
    pub fn unexpected_trailers() -> Denial {
        Denial::new(400, Code::UnexpectedTrailers, "request trailers are not accepted")
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

    /// The README's error table lists exactly the codes the filter answers
    /// with, and `gateway_refused`, which Envoy's own replies carry.
    #[test]
    fn the_readme_lists_every_error_code_and_no_other() {
        let readme = include_str!("../README.md");
        let start = readme.find("## Error codes").expect("the README has an error table");
        let section = &readme[start..];
        let end = section[3..].find("\n## ").map_or(section.len(), |i| i + 3);
        let mut listed: Vec<&str> = section[..end]
            .lines()
            .filter(|l| l.starts_with("| ") && !l.starts_with("| status"))
            .filter_map(|l| l.split('|').nth(2))
            .flat_map(|cell| cell.split('/'))
            .map(|c| c.trim().trim_matches('`'))
            .filter(|c| !c.is_empty())
            .collect();
        listed.sort_unstable();
        let mut codes: Vec<&str> = Code::ALL.iter().map(|c| c.as_str()).collect();
        codes.push("gateway_refused");
        codes.sort_unstable();
        assert_eq!(listed, codes);
        assert!(include_str!("../envoy/envoy.yaml").contains("gateway_refused"));
    }

    #[test]
    fn openai_shape() {
        let d = Denial::new(403, Code::ModelNotAllowed, "model \"x\" is not allowed");
        let v: serde_json::Value = serde_json::from_str(&d.body(Dialect::OpenAi)).unwrap();
        assert_eq!(v["error"]["code"], "model_not_allowed");
        assert_eq!(v["error"]["type"], "permission_error");
        assert_eq!(v["error"]["message"], "model \"x\" is not allowed");
    }

    #[test]
    fn anthropic_shape() {
        let d = Denial::new(401, Code::InvalidAccessKey, "unknown key\n");
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
