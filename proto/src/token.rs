//! Access-key token format.
//!
//! ```text
//! kg-<40 hex: 160 random bits><8 hex: checksum>
//! ```
//! The checksum is the first 4 bytes of SHA-256 over `kg-<random hex>`. It lets
//! the filter reject a mistyped or junk token without asking the store (it is
//! not a secret: it guards against typos and noise, not forgery). The store
//! keeps only [`digest`] of a token.

use sha2::{Digest, Sha256};

/// Every access-key token starts with this.
pub const PREFIX: &str = "kg-";
/// Random bytes in a token (160 bits).
pub const RANDOM_BYTES: usize = 20;
const RANDOM_HEX: usize = RANDOM_BYTES * 2;
const CHECKSUM_HEX: usize = 8;
/// Total length of a well-formed token.
pub const TOKEN_LEN: usize = PREFIX.len() + RANDOM_HEX + CHECKSUM_HEX;

/// Why a string is not a well-formed token. Carries no part of the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenError {
    Prefix,
    Length,
    Charset,
    Checksum,
}

impl TokenError {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenError::Prefix => "the key does not start with kg-",
            TokenError::Length => "the key has the wrong length",
            TokenError::Charset => "the key contains characters that are not lowercase hex",
            TokenError::Checksum => "the key's checksum does not match (mistyped or truncated key)",
        }
    }
}

/// The checksum as lowercase hex, on the stack (a token is checked on every
/// request: no allocation).
fn checksum(prefix_and_random: &str) -> [u8; CHECKSUM_HEX] {
    let sum = Sha256::digest(prefix_and_random.as_bytes());
    let mut out = [0u8; CHECKSUM_HEX];
    // Cannot fail: the output is exactly twice the input.
    let _ = hex::encode_to_slice(sum.get(..CHECKSUM_HEX / 2).unwrap_or_default(), &mut out);
    out
}

/// Builds a token from random bytes (the caller draws them from the OS source).
pub fn from_random(random: &[u8; RANDOM_BYTES]) -> String {
    let mut token = String::with_capacity(TOKEN_LEN);
    token.push_str(PREFIX);
    token.push_str(&hex::encode(random));
    let sum = checksum(&token);
    token.push_str(std::str::from_utf8(&sum).unwrap_or_default());
    token
}

/// Checks prefix, length, charset and checksum. Cheap; no allocation on the
/// early-reject paths.
pub fn validate(token: &str) -> Result<(), TokenError> {
    let Some(rest) = token.strip_prefix(PREFIX) else {
        return Err(TokenError::Prefix);
    };
    if token.len() != TOKEN_LEN {
        return Err(TokenError::Length);
    }
    if !rest.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(TokenError::Charset);
    }
    let (body, sum) = token.split_at(TOKEN_LEN - CHECKSUM_HEX);
    if checksum(body) != sum.as_bytes() {
        return Err(TokenError::Checksum);
    }
    Ok(())
}

/// SHA-256 of the token, lowercase hex: the only form the store keeps and the
/// key of every lookup.
pub fn digest(token: &str) -> String {
    // Into a buffer, not `hex::encode` (a `char` at a time: every request
    // of the filter takes one digest).
    let mut out = [0u8; 64];
    // Cannot fail: 32 bytes fill 64 hex digits exactly.
    let _ = hex::encode_to_slice(Sha256::digest(token.as_bytes()), &mut out);
    String::from_utf8(out.to_vec()).unwrap_or_default()
}

const HEX_RUN: usize = RANDOM_HEX + CHECKSUM_HEX;

fn is_token_hex(b: u8) -> bool {
    matches!(b, b'0'..=b'9' | b'a'..=b'f')
}

/// True if `hay` contains a well-formed token (checksum included) anywhere:
/// in a header value, a query string, a body. A token's 48 hex characters
/// follow `-`, which is not hex, so they start a maximal run of hex bytes;
/// every run of 48 covers one byte at a multiple-of-48 stride, so the scan
/// looks at one byte in 48 until it meets hex, and checks only the runs that
/// are long enough (prose has short ones: `face`, `2024`).
pub fn contains_token(hay: &[u8]) -> bool {
    let mut i = HEX_RUN - 1;
    while let Some(&b) = hay.get(i) {
        if !is_token_hex(b) {
            i += HEX_RUN;
            continue;
        }
        let mut start = i;
        while start > 0 && hay.get(start - 1).copied().is_some_and(is_token_hex) {
            start -= 1;
        }
        let mut end = i + 1;
        while hay.get(end).copied().is_some_and(is_token_hex) {
            end += 1;
        }
        if end - start >= HEX_RUN && start >= PREFIX.len() {
            let candidate = hay.get(start - PREFIX.len()..start + HEX_RUN).unwrap_or_default();
            if std::str::from_utf8(candidate).is_ok_and(|t| validate(t).is_ok()) {
                return true;
            }
        }
        // The next run that could hold a token starts after this one.
        i = (end + 1).max(i + HEX_RUN);
    }
    false
}

/// [`contains_token`] over a stream of chunks: a token cut by a chunk
/// boundary is found from the last bytes of one chunk and the first of the
/// next. Keeps at most one token's length of bytes, in place (no
/// allocation: a gate scans every request's body).
#[derive(Debug, Clone)]
pub struct TokenScanner {
    /// The last bytes seen (`len` of them), then the next chunk's first.
    tail: [u8; 2 * (TOKEN_LEN - 1)],
    len: usize,
    found: bool,
}

impl Default for TokenScanner {
    fn default() -> TokenScanner {
        TokenScanner { tail: [0; 2 * (TOKEN_LEN - 1)], len: 0, found: false }
    }
}

impl TokenScanner {
    pub fn feed(&mut self, chunk: &[u8]) {
        if self.found {
            return;
        }
        // A token across the boundary lies within TOKEN_LEN - 1 bytes on each side.
        let head = chunk.get(..chunk.len().min(TOKEN_LEN - 1)).unwrap_or_default();
        // `len` <= TOKEN_LEN - 1 between calls, so head fits after it.
        let end = (self.len + head.len()).min(self.tail.len());
        if let Some(room) = self.tail.get_mut(self.len..end) {
            room.copy_from_slice(head);
        }
        let tail = self.tail.get(..end).unwrap_or_default();
        if contains_token(tail) || contains_token(chunk) {
            self.found = true;
            return;
        }
        // Kept for the next chunk: the last TOKEN_LEN - 1 bytes seen.
        if chunk.len() >= TOKEN_LEN - 1 {
            let last = chunk.get(chunk.len() - (TOKEN_LEN - 1)..).unwrap_or_default();
            if let Some(to) = self.tail.get_mut(..last.len()) {
                to.copy_from_slice(last);
            }
            self.len = last.len();
        } else {
            let start = end.saturating_sub(TOKEN_LEN - 1);
            self.tail.copy_within(start..end, 0);
            self.len = end - start;
        }
    }

    pub fn found(&self) -> bool {
        self.found
    }
}

/// A form safe to show: `kg-1a2b...9f8e`.
pub fn redact(token: &str) -> String {
    let rest = token.strip_prefix(PREFIX).unwrap_or(token);
    match (rest.get(..4), rest.get(rest.len().saturating_sub(4)..)) {
        (Some(head), Some(tail)) if rest.len() >= 12 => format!("{PREFIX}{head}...{tail}"),
        _ => format!("{PREFIX}..."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> String {
        from_random(&[7u8; RANDOM_BYTES])
    }

    #[test]
    fn generated_tokens_validate() {
        let t = sample();
        assert_eq!(t.len(), TOKEN_LEN);
        assert!(t.starts_with("kg-"));
        assert_eq!(validate(&t), Ok(()));
    }

    #[test]
    fn every_single_character_typo_is_caught() {
        let t = sample();
        for i in PREFIX.len()..t.len() {
            let mut bytes = t.clone().into_bytes();
            bytes[i] = if bytes[i] == b'0' { b'1' } else { b'0' };
            let typo = String::from_utf8(bytes).unwrap();
            assert_eq!(validate(&typo), Err(TokenError::Checksum), "position {i}");
        }
    }

    #[test]
    fn rejects_by_shape() {
        let t = sample();
        assert_eq!(validate(""), Err(TokenError::Prefix));
        assert_eq!(validate("sk-abc"), Err(TokenError::Prefix));
        assert_eq!(validate(&t[..t.len() - 1]), Err(TokenError::Length));
        assert_eq!(validate(&format!("{t}0")), Err(TokenError::Length));
        assert_eq!(validate(&t.to_uppercase().replacen("KG-", "kg-", 1)), Err(TokenError::Charset));
        let non_ascii = format!("kg-{}é", "a".repeat(RANDOM_HEX + CHECKSUM_HEX - 2));
        assert_eq!(validate(&non_ascii), Err(TokenError::Charset));
    }

    #[test]
    fn digest_is_sha256_hex() {
        assert_eq!(digest("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }

    #[test]
    fn tokens_are_found_anywhere_in_bytes() {
        let t = sample();
        for pad in 0..100 {
            let before = "x".repeat(pad);
            for (l, r) in [("", ""), ("\"", "\""), ("abc", "def0"), ("{\"user\":\"", "\"}"), ("=", "&a=1")] {
                let doc = format!("{before}{l}{t}{r}{before}");
                assert!(contains_token(doc.as_bytes()), "pad {pad} {l:?}");
            }
        }
        // Hex all around it (the run is longer than a token): still found.
        assert!(contains_token(format!("ffff{t}ffff").as_bytes()));
        assert!(!contains_token(b""));
        assert!(!contains_token(&t.as_bytes()[..t.len() - 1]));
        let typo = t.replacen("kg-", "kx-", 1);
        assert!(!contains_token(typo.as_bytes()));
        let wrong_sum = format!("{}0000000", &t[..t.len() - 7]);
        assert!(!contains_token(wrong_sum.as_bytes()) || wrong_sum == t);
        assert!(!contains_token("a".repeat(10_000).as_bytes()));
        assert!(!contains_token(format!("kg-{}", "a".repeat(500)).as_bytes()));
    }

    #[test]
    fn a_token_cut_by_chunk_boundaries_is_found() {
        let t = sample();
        let doc = format!("{{\"messages\":[{{\"content\":\"my key is {t} ok\"}}]}}").into_bytes();
        for size in 1..=doc.len() {
            let mut s = TokenScanner::default();
            for chunk in doc.chunks(size) {
                s.feed(chunk);
            }
            assert!(s.found(), "chunks of {size}");
        }
        let mut s = TokenScanner::default();
        for chunk in b"nothing to see here, just text and 0123456789abcdef".chunks(7) {
            s.feed(chunk);
        }
        assert!(!s.found());
    }

    #[test]
    fn redaction_hides_the_middle() {
        let t = sample();
        let r = redact(&t);
        assert!(r.starts_with("kg-0707...") && r.len() < 20, "{r}");
        assert_eq!(redact("kg-ab"), "kg-...");
    }
}
