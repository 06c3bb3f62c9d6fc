//! What the filter needs from a request's headers, taken from one snapshot of
//! the whole header map.
//!
//! Every host call that returns data re-enters the VM to allocate the answer,
//! which costs about 1 µs on Envoy 1.40 with V8 (measured: ten
//! `get_map_value` calls add ~10 µs a request). One `get_map` and a pass over
//! it here replace six of them.

use std::borrow::Cow;

use keygate_proto::token;

use crate::upstream::{is_stripped_header, CLIENT_CREDENTIAL_HEADERS};

/// The request headers keygate reads, and the ones it must remove, borrowed
/// from the header snapshot (a value that is not UTF-8 is copied, lossily).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Inbound<'a> {
    pub method: Cow<'a, str>,
    pub path: Cow<'a, str>,
    pub request_id: Cow<'a, str>,
    pub authorization: Option<Cow<'a, str>>,
    pub x_api_key: Option<Cow<'a, str>>,
    /// `content-length`, if present and a number.
    pub content_length: Option<u64>,
    pub anthropic_version: bool,
    pub content_type: Option<Cow<'a, str>>,
    /// Headers other than the credential headers (which are removed) whose
    /// value carries a keygate token, `:path` included: it would reach the
    /// provider, or Envoy's access log. Their values are redacted before a
    /// refusal, and an `x-request-id` among them is never logged.
    pub token_in: Vec<&'a str>,
    /// `x-http-method-override` or a kin: some servers act on it instead of
    /// the method keygate judged.
    pub method_override: bool,
    /// A header value carries a control character (Envoy passes a bare CR
    /// or ESC inside a value on; an HTTP/1 upstream could split on it).
    pub control_in_header: bool,
    /// Client credentials, `x-envoy-*` and `x-keygate-*` headers, by name.
    pub strip: Vec<&'a str>,
    /// The gate's tag (`handover::GATE_HEADER`), if the request has one.
    pub gate: Option<(u64, u32)>,
    #[cfg(feature = "fault-injection")]
    pub test_panic: bool,
}

impl<'a> Inbound<'a> {
    /// Header names come lower-cased from Envoy (HTTP/2 and HTTP/1 alike).
    /// A repeated header keeps its first value, as `get_map_value` would.
    /// Values are bytes: Envoy passes bytes that are not UTF-8 on, and such a
    /// value is read lossily (it then fails every check it meets).
    pub fn from_headers(headers: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> Inbound<'a> {
        let mut inb = Inbound::default();
        for (name, value) in headers {
            let text = || String::from_utf8_lossy(value);
            match name {
                ":method" if inb.method.is_empty() => inb.method = text(),
                ":path" if inb.path.is_empty() => inb.path = text(),
                "content-type" if inb.content_type.is_none() => inb.content_type = Some(text()),
                "x-request-id" if inb.request_id.is_empty() => inb.request_id = text(),
                "authorization" if inb.authorization.is_none() => inb.authorization = Some(text()),
                "x-api-key" if inb.x_api_key.is_none() => inb.x_api_key = Some(text()),
                "content-length" if inb.content_length.is_none() => {
                    inb.content_length = std::str::from_utf8(value).ok().and_then(|v| v.trim().parse().ok())
                }
                "anthropic-version" => inb.anthropic_version = true,
                crate::handover::GATE_HEADER if inb.gate.is_none() => {
                    // A value that is not a tag still marks a gate (it refuses).
                    inb.gate = Some(crate::handover::parse_gate_tag(value).unwrap_or((0, 0)))
                }
                "x-http-method-override" | "x-http-method" | "x-method-override" => inb.method_override = true,
                #[cfg(feature = "fault-injection")]
                "x-keygate-test-panic" => inb.test_panic = true,
                _ => {}
            }
            if value.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
                inb.control_in_header = true;
            }
            // Values shorter than a token cost one comparison.
            if !CLIENT_CREDENTIAL_HEADERS.contains(&name) && token::contains_token(value) {
                inb.token_in.push(name);
            }
            if is_stripped_header(name) && !inb.strip.contains(&name) {
                inb.strip.push(name);
            }
        }
        if inb.token_in.contains(&"x-request-id") {
            inb.request_id = Cow::Borrowed("");
        }
        inb
    }

    /// A header other than `:path` carries a token.
    pub fn token_in_header(&self) -> bool {
        self.token_in.iter().any(|n| *n != ":path")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h<'a>(pairs: &'a [(&'a str, &'a str)]) -> Inbound<'a> {
        Inbound::from_headers(pairs.iter().map(|(n, v)| (*n, v.as_bytes())))
    }

    #[test]
    fn reads_the_fields() {
        let inb = h(&[
            (":path", "/v1/chat/completions"),
            ("x-request-id", "r1"),
            ("authorization", "Bearer kg-x"),
            ("content-length", " 1024 "),
            ("anthropic-version", "2023-06-01"),
        ]);
        assert_eq!(inb.path, "/v1/chat/completions");
        assert_eq!(inb.request_id, "r1");
        assert_eq!(inb.authorization.as_deref(), Some("Bearer kg-x"));
        assert_eq!(inb.x_api_key, None);
        assert_eq!(inb.content_length, Some(1024));
        assert!(inb.anthropic_version);
    }

    #[test]
    fn first_value_wins() {
        let inb = h(&[("x-api-key", "a"), ("x-api-key", "b"), ("content-length", "x")]);
        assert_eq!(inb.x_api_key.as_deref(), Some("a"));
        assert_eq!(inb.content_length, None);
        assert!(!h(&[]).anthropic_version);
    }

    #[test]
    fn a_token_in_any_other_header_is_noticed() {
        let t = token::from_random(&[3u8; token::RANDOM_BYTES]);
        let bearer = format!("Bearer {t}");
        assert!(!h(&[("authorization", &bearer), ("x-api-key", &t), ("accept", "*/*")]).token_in_header());
        assert!(h(&[("authorization", &bearer), ("x-debug", &format!("key={t}"))]).token_in_header());
        assert!(h(&[("cookie", &format!("session={t}"))]).token_in_header());
        assert!(h(&[(":authority", &t)]).token_in_header());
        let files = format!("/v1/files/{t}");
        let pairs = [(":path", files.as_str())];
        let in_path = h(&pairs);
        assert!(!in_path.token_in_header() && in_path.token_in == [":path"]);
        let pairs = [("x-request-id", t.as_str())];
        let id = h(&pairs);
        assert!(id.request_id.is_empty(), "a request id carrying a token is never logged");
    }

    #[test]
    fn bytes_that_are_not_utf8_are_read_never_a_panic() {
        let headers: Vec<(&str, &[u8])> = vec![("authorization", b"Bearer kg-\xe9"), ("x-latin", b"caf\xe9")];
        let inb = Inbound::from_headers(headers.iter().copied());
        assert_eq!(inb.authorization.as_deref(), Some("Bearer kg-\u{fffd}"));
        assert!(!inb.control_in_header);
        let cr: Vec<(&str, &[u8])> = vec![("x-a", b"a\rb")];
        assert!(Inbound::from_headers(cr.iter().copied()).control_in_header);
        assert!(!h(&[("x-tab", "a\tb")]).control_in_header);
    }

    #[test]
    fn collects_headers_to_strip_once() {
        let inb = h(&[
            ("authorization", "Bearer a"),
            ("x-envoy-max-retries", "9"),
            ("x-keygate-cluster", "evil"),
            ("api-key", "k"),
            ("x-envoy-max-retries", "8"),
            ("accept", "*/*"),
        ]);
        assert_eq!(inb.strip, ["authorization", "x-envoy-max-retries", "x-keygate-cluster", "api-key"]);
    }
}
