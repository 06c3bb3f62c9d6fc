//! Usage for every OpenAI stream. A client that streams without
//! `stream_options.include_usage` gets no usage from the provider, and the
//! gateway could only estimate it. So keygate asks for it all the same
//! (`model_json::add_stream_usage`), reads it as the stream passes (`usage`),
//! and takes out of the client's stream what asking added: the last,
//! usage-only chunk (`"choices": []`, which a client indexing `choices[0]`
//! would trip on), and the `"usage":null` every other chunk then carries.
//! The client's stream is then as the provider would have sent it.

/// Longest part of a stream held while waiting for the end of its event; a
/// longer one passes as it is.
const MAX_PENDING: usize = 1 << 20;

#[derive(Debug, Default)]
pub struct HiddenUsage {
    pending: Vec<u8>,
}

impl HiddenUsage {
    /// What of `chunk` goes to the client now (whole events; the rest waits
    /// for the next chunk, or goes at the end).
    pub fn feed(&mut self, chunk: &[u8], end: bool) -> Vec<u8> {
        self.pending.extend_from_slice(chunk);
        let mut out = Vec::with_capacity(self.pending.len());
        while let Some(len) = event_len(&self.pending) {
            let rest = self.pending.split_off(len);
            let event = std::mem::replace(&mut self.pending, rest);
            if !usage_only(&event) {
                out.extend_from_slice(&without_null_usage(&event));
            }
        }
        if end || self.pending.len() > MAX_PENDING {
            out.append(&mut self.pending);
        }
        out
    }

    /// Part of an event is held back, waiting for the rest.
    pub fn holding(&self) -> bool {
        !self.pending.is_empty()
    }
}

/// The length of the first complete event (its blank line included).
fn event_len(buf: &[u8]) -> Option<usize> {
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// A chunk with no choices and a usage object: what `include_usage` adds.
fn usage_only(event: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(event) else { return false };
    let data: String = text
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(|d| d.strip_prefix(' ').unwrap_or(d))
        .collect::<Vec<_>>()
        .join("\n");
    // Typed, not a `serde_json::Value` tree: the module stays smaller.
    #[derive(serde::Deserialize)]
    struct Chunk {
        #[serde(default)]
        choices: Option<Vec<serde::de::IgnoredAny>>,
        #[serde(default)]
        usage: Option<serde::de::IgnoredAny>,
    }
    // From bytes, as every other document the filter reads: one serde_json
    // reader in the module, not two.
    let Ok(chunk) = serde_json::from_slice::<Chunk>(data.as_bytes()) else { return false };
    chunk.choices.is_some_and(|c| c.is_empty()) && chunk.usage.is_some()
}

/// The event without the `"usage":null` member asking added. (Inside a JSON
/// string a quote is escaped, so the pattern only matches a member.)
fn without_null_usage(event: &[u8]) -> Vec<u8> {
    const PATTERNS: [&[u8]; 2] = [b",\"usage\":null", b"\"usage\":null,"];
    let mut out = event.to_vec();
    for p in PATTERNS {
        while let Some(i) = out.windows(p.len()).position(|w| w == p) {
            out.drain(i..i + p.len());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const WITH_USAGE: &str = concat!(
        "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"}}],\"usage\":null}\n\n",
        "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}],\"usage\":null}\n\n",
        "data: {\"id\":\"c\",\"choices\":[],\"usage\":{\"prompt_tokens\":11,\"completion_tokens\":7}}\n\n",
        "data: [DONE]\n\n",
    );
    const WITHOUT: &str = concat!(
        "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"}}]}\n\n",
        "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n",
        "data: [DONE]\n\n",
    );

    #[test]
    fn the_client_gets_the_stream_it_asked_for_whatever_the_chunking() {
        for size in [1, 2, 7, 64, 4096] {
            let mut f = HiddenUsage::default();
            let mut out = Vec::new();
            let chunks: Vec<&[u8]> = WITH_USAGE.as_bytes().chunks(size).collect();
            for (i, c) in chunks.iter().enumerate() {
                out.extend(f.feed(c, i + 1 == chunks.len()));
            }
            assert_eq!(String::from_utf8(out).unwrap(), WITHOUT, "chunks of {size}");
        }
    }

    #[test]
    fn crlf_events_and_content_that_mentions_usage_pass_unchanged() {
        let crlf = "data: {\"choices\":[{\"delta\":{\"content\":\"a \\\"usage\\\":null\"}}]}\r\n\r\n";
        assert_eq!(HiddenUsage::default().feed(crlf.as_bytes(), true), crlf.as_bytes());
        let not_usage = "data: {\"choices\":[],\"usage\":null}\n\n";
        assert_eq!(HiddenUsage::default().feed(not_usage.as_bytes(), true), b"data: {\"choices\":[]}\n\n".to_vec());
    }

    #[test]
    fn a_stream_without_event_ends_is_not_held_forever() {
        let mut f = HiddenUsage::default();
        let big = vec![b'x'; MAX_PENDING + 1];
        assert_eq!(f.feed(&big, false).len(), MAX_PENDING + 1);
        assert_eq!(f.feed(b"tail", true), b"tail");
    }
}
