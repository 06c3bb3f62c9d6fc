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

fn checksum_hex(prefix_and_random: &str) -> String {
    let sum = Sha256::digest(prefix_and_random.as_bytes());
    hex::encode(sum.get(..CHECKSUM_HEX / 2).unwrap_or_default())
}

/// Builds a token from random bytes (the caller draws them from the OS source).
pub fn from_random(random: &[u8; RANDOM_BYTES]) -> String {
    let mut token = String::with_capacity(TOKEN_LEN);
    token.push_str(PREFIX);
    token.push_str(&hex::encode(random));
    let sum = checksum_hex(&token);
    token.push_str(&sum);
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
    if checksum_hex(body) != sum {
        return Err(TokenError::Checksum);
    }
    Ok(())
}

/// SHA-256 of the token, lowercase hex: the only form the store keeps and the
/// key of every lookup.
pub fn digest(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
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
    fn redaction_hides_the_middle() {
        let t = sample();
        let r = redact(&t);
        assert!(r.starts_with("kg-0707...") && r.len() < 20, "{r}");
        assert_eq!(redact("kg-ab"), "kg-...");
    }
}
