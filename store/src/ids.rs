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
    fn secret_compare() {
        assert!(secret_eq("abc", "abc"));
        assert!(!secret_eq("abd", "abc"));
        assert!(!secret_eq("", ""));
    }
}
