//! Provider credentials never go back to the client: a provider that echoes
//! the credential it received (in a header, or in an error body, as some
//! do for a rejected key) has it replaced before the answer leaves Envoy.

/// What a credential is replaced with.
pub const REDACTED: &str = "[redacted]";
/// Shorter values are not scrubbed: a placeholder credential such as vLLM's
/// `EMPTY` would otherwise mangle every error body that contains the word.
pub const MIN_SECRET_LEN: usize = 8;

/// `text` with every occurrence of each secret replaced, or `None` when it
/// contains none.
pub fn scrub<S: AsRef<str>>(text: &[u8], secrets: &[S]) -> Option<Vec<u8>> {
    scrub_each(text, secrets.iter().map(AsRef::as_ref))
}

/// [`scrub`] with the secrets from an iterator (borrowed where they are
/// kept: no list is built for each header).
pub fn scrub_each<'s>(text: &[u8], secrets: impl Iterator<Item = &'s str>) -> Option<Vec<u8>> {
    let mut out: Option<Vec<u8>> = None;
    for secret in secrets.filter(|s| s.len() >= MIN_SECRET_LEN) {
        let current = out.as_deref().unwrap_or(text);
        if let Some(replaced) = replace_all(current, secret.as_bytes()) {
            out = Some(replaced);
        }
    }
    out
}

/// [`scrub`] over a response streamed in chunks: the last bytes of each chunk
/// that could begin a secret are held back and go out with the next chunk (or
/// at the end), so a secret cut by a chunk boundary is still replaced.
#[derive(Debug, Default)]
pub struct StreamScrubber {
    secrets: Vec<String>,
    held: Vec<u8>,
    /// Some secret was replaced.
    pub scrubbed: bool,
}

impl StreamScrubber {
    pub fn new(secrets: Vec<String>) -> StreamScrubber {
        let secrets = secrets.into_iter().filter(|s| s.len() >= MIN_SECRET_LEN).collect();
        StreamScrubber { secrets, held: Vec::new(), scrubbed: false }
    }

    /// The bytes to send for this chunk (`last`: the stream ends with it).
    pub fn feed(&mut self, chunk: &[u8], last: bool) -> Vec<u8> {
        let mut data = std::mem::take(&mut self.held);
        data.extend_from_slice(chunk);
        let mut data = match scrub(&data, &self.secrets) {
            Some(clean) => {
                self.scrubbed = true;
                clean
            }
            None => data,
        };
        if !last {
            // Hold back a tail that is the start of some secret.
            let keep = self.secrets.iter().map(|s| partial_suffix(&data, s.as_bytes())).max().unwrap_or(0);
            self.held = data.split_off(data.len() - keep);
        }
        data
    }

    /// A tail is held back, waiting for the next chunk.
    pub fn holding(&self) -> bool {
        !self.held.is_empty()
    }
}

/// The length of the longest suffix of `data` that is a proper prefix of `secret`.
fn partial_suffix(data: &[u8], secret: &[u8]) -> usize {
    (1..secret.len().min(data.len() + 1)).rev().find(|&n| data.get(data.len() - n..) == secret.get(..n)).unwrap_or(0)
}

fn replace_all(hay: &[u8], needle: &[u8]) -> Option<Vec<u8>> {
    let first = find(hay, needle, 0)?;
    let mut out = Vec::with_capacity(hay.len());
    let mut from = 0;
    let mut at = Some(first);
    while let Some(i) = at {
        out.extend_from_slice(hay.get(from..i).unwrap_or_default());
        out.extend_from_slice(REDACTED.as_bytes());
        from = i + needle.len();
        at = find(hay, needle, from);
    }
    out.extend_from_slice(hay.get(from..).unwrap_or_default());
    Some(out)
}

fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    let first = *needle.first()?;
    let mut i = from;
    while let Some(rest) = hay.get(i..) {
        let p = i + rest.iter().position(|&b| b == first)?;
        if hay.get(p..p + needle.len()) == Some(needle) {
            return Some(p);
        }
        i = p + 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_occurrence_of_every_secret_goes() {
        let body = br#"{"error":{"message":"Incorrect API key provided: sk-live-123456. Key sk-live-123456 is revoked; also sk-other-99999"}}"#;
        let out = scrub(body, &["sk-live-123456", "sk-other-99999"]).unwrap();
        let out = String::from_utf8(out).unwrap();
        assert!(!out.contains("sk-live") && !out.contains("sk-other"), "{out}");
        assert_eq!(out.matches(REDACTED).count(), 3);
        assert!(serde_json::from_str::<serde_json::Value>(&out).is_ok());
    }

    #[test]
    fn nothing_to_scrub() {
        assert_eq!(scrub(b"all fine", &["sk-live-123456"]), None);
        assert_eq!(scrub(b"EMPTY is short", &["EMPTY"]), None);
        assert_eq!(scrub(b"", &["sk-live-123456"]), None);
        assert_eq!(scrub(b"sk-live-12345", &["sk-live-123456"]), None);
    }

    #[test]
    fn secrets_cut_by_chunk_boundaries_are_replaced() {
        let body = br#"{"error":"bad key sk-live-123456 (sk-live-123456) sk-live"}"#;
        for size in 1..body.len() {
            let mut s = StreamScrubber::new(vec!["sk-live-123456".into(), "EMPTY".into()]);
            let mut out = Vec::new();
            let chunks: Vec<&[u8]> = body.chunks(size).collect();
            for (i, chunk) in chunks.iter().enumerate() {
                out.extend(s.feed(chunk, i + 1 == chunks.len()));
            }
            assert_eq!(out, br#"{"error":"bad key [redacted] ([redacted]) sk-live"}"#, "chunks of {size}");
        }
    }

    #[test]
    fn adjacent_and_overlapping_occurrences() {
        let out = scrub(b"secretAAsecretAA", &["secretAA"]).unwrap();
        assert_eq!(out, b"[redacted][redacted]");
        let out = scrub(b"xxsecretAAsecretAAyy", &["secretAAsecretAA", "secretAA"]).unwrap();
        assert_eq!(out, b"xx[redacted]yy");
    }
}
