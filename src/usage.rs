//! Token counts from provider responses: OpenAI and Anthropic `usage`, in
//! plain JSON bodies and in event streams. Streams are scanned as they pass,
//! never buffered: only a partial line is carried between chunks.

use serde::de::{Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub input: u64,
    pub output: u64,
    pub cached: u64,
    pub reasoning: u64,
    /// The provider reported usage at all.
    pub seen: bool,
}

/// A `usage` object of either dialect, as far as we read it. Typed (rather
/// than `serde_json::Value`): no tree is built, and the module is smaller.
#[derive(Deserialize, Default)]
struct UsageObject {
    #[serde(default, deserialize_with = "count")]
    prompt_tokens: Option<u64>,
    #[serde(default, deserialize_with = "count")]
    completion_tokens: Option<u64>,
    #[serde(default, deserialize_with = "count")]
    input_tokens: Option<u64>,
    #[serde(default, deserialize_with = "count")]
    output_tokens: Option<u64>,
    #[serde(default, deserialize_with = "count")]
    cache_read_input_tokens: Option<u64>,
    #[serde(default)]
    prompt_tokens_details: Option<Details>,
    #[serde(default)]
    completion_tokens_details: Option<Details>,
}

#[derive(Deserialize, Default)]
struct Details {
    #[serde(default, deserialize_with = "count")]
    cached_tokens: Option<u64>,
    #[serde(default, deserialize_with = "count")]
    reasoning_tokens: Option<u64>,
}

/// An event of a stream: OpenAI's last chunk and Anthropic's `message_delta`
/// carry `usage`, Anthropic's `message_start` carries `message.usage`.
#[derive(Deserialize)]
struct Event {
    #[serde(default)]
    usage: Option<UsageObject>,
    #[serde(default)]
    message: Option<EventMessage>,
}

#[derive(Deserialize)]
struct EventMessage {
    #[serde(default)]
    usage: Option<UsageObject>,
}

/// A token count: a non-negative integer. Anything else (null, a float, a
/// string, an object) reads as absent instead of failing the whole object.
fn count<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    struct Count;
    impl<'de> Visitor<'de> for Count {
        type Value = Option<u64>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a token count")
        }
        // A provider's count is clamped: its sums must not overflow.
        fn visit_u64<E>(self, v: u64) -> Result<Option<u64>, E> {
            Ok(Some(v.min(MAX_COUNT)))
        }
        fn visit_i64<E>(self, v: i64) -> Result<Option<u64>, E> {
            Ok(u64::try_from(v).ok().map(|v| v.min(MAX_COUNT)))
        }
        fn visit_f64<E>(self, _: f64) -> Result<Option<u64>, E> {
            Ok(None)
        }
        fn visit_bool<E>(self, _: bool) -> Result<Option<u64>, E> {
            Ok(None)
        }
        fn visit_str<E>(self, _: &str) -> Result<Option<u64>, E> {
            Ok(None)
        }
        fn visit_unit<E>(self) -> Result<Option<u64>, E> {
            Ok(None)
        }
        fn visit_none<E>(self) -> Result<Option<u64>, E> {
            Ok(None)
        }
        fn visit_some<D2: Deserializer<'de>>(self, d: D2) -> Result<Option<u64>, D2::Error> {
            d.deserialize_any(Count)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Option<u64>, A::Error> {
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            Ok(None)
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Option<u64>, A::Error> {
            while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
            Ok(None)
        }
    }
    d.deserialize_any(Count)
}

impl Usage {
    /// Merges a `usage` object of either dialect (later values win, as in
    /// Anthropic's cumulative `message_delta`).
    fn absorb(&mut self, u: &UsageObject) {
        self.seen = true;
        // Input excludes cached tokens in both dialects (OpenAI's prompt_tokens
        // includes them, Anthropic's input_tokens does not): they are priced apart.
        let openai_cached = u.prompt_tokens_details.as_ref().and_then(|d| d.cached_tokens);
        if let Some(n) = u.prompt_tokens {
            self.input = n.saturating_sub(openai_cached.unwrap_or(0));
        } else if let Some(n) = u.input_tokens {
            self.input = n;
        }
        if let Some(n) = u.completion_tokens.or(u.output_tokens) {
            self.output = n;
        }
        if let Some(n) = openai_cached.or(u.cache_read_input_tokens) {
            self.cached = n;
        }
        if let Some(n) = u.completion_tokens_details.as_ref().and_then(|d| d.reasoning_tokens) {
            self.reasoning = n;
        }
    }

    /// A complete JSON response body. Only its top-level `usage` object is
    /// parsed (the rest, e.g. a long completion, is skipped over).
    pub fn from_json(body: &[u8]) -> Usage {
        let mut usage = Usage::default();
        let found = crate::model_json::find_top_level_value(body, "usage").and_then(|(a, b)| body.get(a..b));
        if let Some(u) = found.and_then(|raw| serde_json::from_slice::<UsageObject>(raw).ok()) {
            usage.absorb(&u);
        }
        usage
    }
}

/// Reads `data:` lines of a server-sent-event stream as chunks pass by.
#[derive(Debug, Default)]
pub struct SseScanner {
    partial: Vec<u8>,
    pub usage: Usage,
}

/// Longest line carried between chunks; a longer one is skipped (it cannot
/// be a usage event worth buffering for).
const MAX_LINE: usize = 1 << 20;

impl SseScanner {
    pub fn feed(&mut self, chunk: &[u8]) {
        let mut rest = chunk;
        while let Some(i) = rest.iter().position(|&b| b == b'\n') {
            let (line, tail) = rest.split_at(i);
            rest = tail.get(1..).unwrap_or_default();
            if self.partial.is_empty() {
                self.line(line);
            } else {
                let mut whole = std::mem::take(&mut self.partial);
                whole.extend_from_slice(line);
                self.line(&whole);
            }
        }
        if self.partial.len() + rest.len() <= MAX_LINE {
            self.partial.extend_from_slice(rest);
        } else {
            self.partial.clear();
        }
    }

    fn line(&mut self, line: &[u8]) {
        let Some(data) = line.strip_prefix(b"data:") else { return };
        // Cheap pre-check: most chunks carry no usage.
        if !data.windows(7).any(|w| w == b"\"usage\"") {
            return;
        }
        let Ok(event) = serde_json::from_slice::<Event>(data.trim_ascii()) else { return };
        if let Some(u) = &event.usage {
            self.usage.absorb(u); // OpenAI final chunk, Anthropic message_delta
        }
        if let Some(u) = event.message.as_ref().and_then(|m| m.usage.as_ref()) {
            self.usage.absorb(u); // Anthropic message_start
        }
    }
}

/// How a provider's answer carries its usage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// One JSON document (`{...}`), usage at its top level.
    Json,
    /// Server-sent events (`data:`, `event:`, `:` lines), usage in events.
    EventStream,
}

/// Tells the kind from the first bytes of an answer, so that no header needs
/// reading: a JSON document starts with `{` or `[`, anything else is taken
/// for an event stream. `None` while only whitespace has arrived.
pub fn body_kind(first: &[u8]) -> Option<BodyKind> {
    let b = first.iter().find(|b| !b.is_ascii_whitespace())?;
    Some(if matches!(b, b'{' | b'[') { BodyKind::Json } else { BodyKind::EventStream })
}

/// The most tokens one count (an estimate, a provider's report) may stand
/// for: far above any real request, far below where sums of a few overflow
/// (here, or in the store's signed arithmetic).
pub const MAX_COUNT: u64 = 1 << 40;

/// Upper estimates before the request goes out: prompt tokens from the body
/// size (at most one token per two bytes for text in JSON), output tokens from
/// the request's limit (or `default_output`) times its outputs per request
/// (`n`, `best_of`). Each at most [`MAX_COUNT`].
pub fn estimate(body_bytes: u64, max_tokens: Option<u64>, choices: u64, default_output: u64) -> (u64, u64) {
    let output = max_tokens.unwrap_or(default_output).saturating_mul(choices.max(1));
    (body_bytes.div_ceil(2).min(MAX_COUNT), output.min(MAX_COUNT))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_providers_counts_are_clamped() {
        let u = Usage::from_json(br#"{"usage":{"prompt_tokens":18446744073709551615,"completion_tokens":1}}"#);
        assert_eq!((u.input, u.output), (MAX_COUNT, 1));
    }

    #[test]
    fn body_kind_from_first_bytes() {
        assert_eq!(body_kind(b"{\"id\":1}"), Some(BodyKind::Json));
        assert_eq!(body_kind(b"\n  [1]"), Some(BodyKind::Json));
        assert_eq!(body_kind(b"data: {\"x\":1}\n\n"), Some(BodyKind::EventStream));
        assert_eq!(body_kind(b"event: message_start\n"), Some(BodyKind::EventStream));
        assert_eq!(body_kind(b": keep-alive\n"), Some(BodyKind::EventStream));
        assert_eq!(body_kind(b" \r\n"), None);
        assert_eq!(body_kind(b""), None);
    }

    #[test]
    fn openai_json() {
        let body = br#"{"id":"x","choices":[],"usage":{"prompt_tokens":11,"completion_tokens":7,"total_tokens":18,
            "prompt_tokens_details":{"cached_tokens":3},"completion_tokens_details":{"reasoning_tokens":2}}}"#;
        assert_eq!(Usage::from_json(body), Usage { input: 8, output: 7, cached: 3, reasoning: 2, seen: true });
    }

    #[test]
    fn anthropic_json() {
        let body = br#"{"type":"message","usage":{"input_tokens":12,"output_tokens":5,"cache_read_input_tokens":4}}"#;
        assert_eq!(Usage::from_json(body), Usage { input: 12, output: 5, cached: 4, reasoning: 0, seen: true });
        assert!(!Usage::from_json(b"not json").seen);
    }

    #[test]
    fn openai_stream_in_odd_chunks() {
        let stream = "data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\n\
                      data: {\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":4}}\n\n\
                      data: [DONE]\n\n";
        for size in [1, 2, 7, 64, 4096] {
            let mut s = SseScanner::default();
            for chunk in stream.as_bytes().chunks(size) {
                s.feed(chunk);
            }
            assert_eq!((s.usage.input, s.usage.output, s.usage.seen), (9, 4, true), "chunk size {size}");
        }
    }

    #[test]
    fn anthropic_stream() {
        let stream = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":12,\"output_tokens\":1,\"cache_read_input_tokens\":2}}}\n\n\
                      event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"delta\":{\"text\":\"usage\"}}\n\n\
                      event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":5}}\n\n";
        let mut s = SseScanner::default();
        s.feed(stream.as_bytes());
        assert_eq!(s.usage, Usage { input: 12, output: 5, cached: 2, reasoning: 0, seen: true });
    }

    #[test]
    fn odd_values_read_as_absent() {
        let body = br#"{"usage":{"prompt_tokens":10,"completion_tokens":2.5,"total_tokens":"x",
            "prompt_tokens_details":null,"completion_tokens_details":{"reasoning_tokens":[1]},"extra":{"a":[{}]}}}"#;
        assert_eq!(Usage::from_json(body), Usage { input: 10, output: 0, cached: 0, reasoning: 0, seen: true });
        assert!(!Usage::from_json(br#"{"usage":null}"#).seen);
        assert!(!Usage::from_json(br#"{"usage":5}"#).seen);
        let mut s = SseScanner::default();
        s.feed(b"data: {\"usage\":{\"input_tokens\":-3,\"output_tokens\":4}}\n");
        assert_eq!((s.usage.input, s.usage.output, s.usage.seen), (0, 4, true));
    }

    #[test]
    fn stream_without_usage() {
        let mut s = SseScanner::default();
        s.feed(b"data: {\"choices\":[{\"delta\":{\"content\":\"x\"}}]}\n\ndata: [DONE]\n\n");
        assert!(!s.usage.seen);
    }

    #[test]
    fn estimates() {
        assert_eq!(estimate(1001, Some(16), 1, 4096), (501, 16));
        assert_eq!(estimate(0, None, 0, 4096), (0, 4096));
        assert_eq!(estimate(0, Some(10), 5, 4096), (0, 50));
        assert_eq!(estimate(0, None, 2, 4096), (0, 8192));
        assert_eq!(estimate(0, Some(u64::MAX), 3, 4096), (0, MAX_COUNT));
    }
}
