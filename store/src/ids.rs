//! Randomness, identifiers, secrets and time helpers.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Fills `buf` from the operating system's random source.
pub fn fill_random(buf: &mut [u8]) -> std::io::Result<()> {
    getrandom::fill(buf).map_err(|e| std::io::Error::other(format!("OS random source failed: {e}")))
}

/// Random bytes as lowercase hex.
pub fn random_hex(bytes: usize) -> std::io::Result<String> {
    let mut buf = vec![0u8; bytes];
    fill_random(&mut buf)?;
    Ok(hex::encode(buf))
}

/// A new access-key token (`kg-…`), drawn from the OS random source.
pub fn new_access_token() -> std::io::Result<String> {
    let mut random = [0u8; keygate_proto::token::RANDOM_BYTES];
    fill_random(&mut random)?;
    Ok(keygate_proto::token::from_random(&random))
}

/// Every management-key token starts with this (access keys: `kg-`).
pub const MANAGEMENT_TOKEN_PREFIX: &str = "kgm_";
/// Random bytes of a management-key token (192 bits: 48 hex characters).
const MANAGEMENT_TOKEN_BYTES: usize = 24;
/// Hex characters of a management token shown for recognition (`kgm_1a2b3c4d`).
const MANAGEMENT_PREFIX_HEX: usize = 8;

/// A new management-key token: `kgm_` + 48 lowercase hex (192 bits from the
/// OS random source). Neither an access key (`kg-`) nor the gateway token.
pub fn new_management_token() -> std::io::Result<String> {
    Ok(format!("{MANAGEMENT_TOKEN_PREFIX}{}", random_hex(MANAGEMENT_TOKEN_BYTES)?))
}

/// Whether `s` has the form of a management-key token.
pub fn is_management_token(s: &str) -> bool {
    s.strip_prefix(MANAGEMENT_TOKEN_PREFIX).is_some_and(|hex| {
        hex.len() == MANAGEMENT_TOKEN_BYTES * 2 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    })
}

/// Whether `s` contains a management-key token anywhere.
pub fn contains_management_token(s: &str) -> bool {
    let want = MANAGEMENT_TOKEN_PREFIX.len() + MANAGEMENT_TOKEN_BYTES * 2;
    s.match_indices(MANAGEMENT_TOKEN_PREFIX).any(|(i, _)| s.get(i..i + want).is_some_and(is_management_token))
}

/// The part of a management token kept for recognition: `kgm_` and its first
/// 8 hex characters (32 of its 192 bits).
pub fn management_token_prefix(token: &str) -> String {
    token.chars().take(MANAGEMENT_TOKEN_PREFIX.len() + MANAGEMENT_PREFIX_HEX).collect()
}

static LAST_ID_MICROS: AtomicU64 = AtomicU64::new(0);

/// A new id: `prefix` + 14 hex digits of a process-monotonic microsecond clock +
/// 10 random hex digits. Ids of one kind sort by creation time, so lists page
/// newest-first on the id alone (a deleted `beforeId` still pages correctly).
pub fn new_id(prefix: &str) -> std::io::Result<String> {
    let now = now_micros();
    let mut last = LAST_ID_MICROS.load(Ordering::Relaxed);
    let stamp = loop {
        let next = now.max(last.saturating_add(1));
        match LAST_ID_MICROS.compare_exchange_weak(last, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => break next,
            Err(seen) => last = seen,
        }
    };
    Ok(format!("{prefix}{:014x}{}", stamp & 0x00ff_ffff_ffff_ffff, random_hex(5)?))
}

fn now_micros() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX)).unwrap_or(0)
}

/// Current time, unix milliseconds.
pub fn now_ms() -> i64 {
    i64::try_from(now_micros() / 1000).unwrap_or(i64::MAX)
}

/// Current time, unix seconds.
pub fn now_secs() -> i64 {
    now_ms() / 1000
}

/// Unix milliseconds as RFC 3339 UTC (`2025-01-02T03:04:05.678Z`).
pub fn rfc3339_ms(ms: i64) -> String {
    const FMT: &[time::format_description::BorrowedFormatItem<'_>] =
        time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");
    let nanos = i128::from(ms) * 1_000_000;
    OffsetDateTime::from_unix_timestamp_nanos(nanos).ok().and_then(|t| t.format(FMT).ok()).unwrap_or_default()
}

/// Unix seconds as RFC 3339 UTC (`2025-01-02T03:04:05Z`).
pub fn rfc3339_secs(secs: i64) -> String {
    OffsetDateTime::from_unix_timestamp(secs).ok().and_then(|t| t.format(&Rfc3339).ok()).unwrap_or_default()
}

/// Parses RFC 3339 into unix milliseconds (sub-millisecond digits dropped).
pub fn parse_rfc3339_ms(s: &str) -> Option<i64> {
    OffsetDateTime::parse(s, &Rfc3339).ok().and_then(|t| i64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok())
}

/// Parses RFC 3339 into unix seconds.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    OffsetDateTime::parse(s, &Rfc3339).ok().map(|t| t.unix_timestamp())
}

/// Constant-time comparison of a presented secret with the expected one.
pub fn secret_eq(presented: &str, expected: &str) -> bool {
    use sha2::{Digest, Sha256};
    use subtle::ConstantTimeEq;
    // Hash both sides first so neither the length nor the content leaks timing.
    let a = Sha256::digest(presented.as_bytes());
    let b = Sha256::digest(expected.as_bytes());
    bool::from(a.as_slice().ct_eq(b.as_slice())) && !expected.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_sort_by_creation() {
        let ids: Vec<String> = (0..1000).map(|_| new_id("ak_").unwrap()).collect();
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(ids, sorted);
        assert_eq!(ids[0].len(), 3 + 24);
    }

    #[test]
    fn time_round_trip() {
        assert_eq!(rfc3339_secs(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339_ms(1_620_000), "1970-01-01T00:27:00.000Z");
        assert_eq!(rfc3339_ms(1_620_120), "1970-01-01T00:27:00.120Z");
        assert_eq!(parse_rfc3339("1970-01-01T00:01:00Z"), Some(60));
        assert_eq!(parse_rfc3339("2030-01-01T00:00:00+01:00"), Some(1_893_452_400));
        assert_eq!(parse_rfc3339("tomorrow"), None);
    }

    #[test]
    fn management_tokens() {
        let t = new_management_token().unwrap();
        assert_eq!(t.len(), 4 + 48);
        assert!(is_management_token(&t));
        assert!(keygate_proto::token::validate(&t).is_err());
        assert_eq!(management_token_prefix(&t), t[..12]);
        assert!(!is_management_token(&t[..51]));
        assert!(!is_management_token(&t.to_uppercase()));
        assert!(!is_management_token(&format!("{t}0")));
        assert!(contains_management_token(&format!("note: {t}.")));
        assert!(!contains_management_token(&t[..40]));
        assert_eq!(parse_rfc3339_ms("1970-01-01T00:00:01.234Z"), Some(1234));
    }

    #[test]
    fn secret_compare() {
        assert!(secret_eq("abc", "abc"));
        assert!(!secret_eq("abd", "abc"));
        assert!(!secret_eq("", ""));
    }
}
