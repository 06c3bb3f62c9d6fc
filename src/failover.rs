//! Failover across provider keys: which credential each attempt uses, how long
//! a failing key cools down, and what the client hears when every key failed.
//! Envoy's retry policy carries out the attempts; this only decides.

use crate::errors::{Code, Denial};

/// Upstream statuses that move on to the next credential (Envoy's
/// `retriable_status_codes` and `5xx` in the route's retry policy).
pub fn is_failover_status(status: u16) -> bool {
    matches!(status, 401 | 403 | 429) || (500..=599).contains(&status)
}

/// Candidate order for a request: keys not cooling down, in configured order;
/// when every key is cooling down, all of them, the first to recover first.
/// `cool_until[i]` is key i's cooldown end (ms), 0 when healthy.
pub fn order(cool_until: &[u64], now_ms: u64) -> Vec<usize> {
    let healthy: Vec<usize> =
        (0..cool_until.len()).filter(|&i| cool_until.get(i).is_none_or(|&t| t <= now_ms)).collect();
    if !healthy.is_empty() {
        return healthy;
    }
    // A stable sort by recovery time. Each key goes in after every key that
    // recovers no later: an insertion sort (a handful of keys, a rare path),
    // not the standard library's sort, which is kilobytes of module.
    let until = |i: usize| cool_until.get(i).copied().unwrap_or(0);
    let mut all: Vec<usize> = Vec::with_capacity(cool_until.len());
    for i in 0..cool_until.len() {
        let at = all.partition_point(|&j| until(j) <= until(i));
        all.insert(at, i);
    }
    all
}

/// What a 429 asks for in `retry-after-ms` / `retry-after` (seconds), in
/// ms, up to an hour (`None`: no usable hint, e.g. an HTTP date).
pub fn retry_hint_ms(retry_after_ms: Option<&str>, retry_after: Option<&str>) -> Option<u64> {
    retry_after_ms
        .and_then(|v| decimal_ms(v, 1))
        .or_else(|| retry_after.and_then(|v| decimal_ms(v, 1_000)))
        .map(|ms| ms.min(MAX_HINT_MS))
}

const MAX_HINT_MS: u64 = 3_600_000;

/// How long a key that just answered `status` sits out, in ms (None: it does
/// not). A 429 honours the provider's hint (`retry_hint_ms`).
pub fn cooldown_ms(status: u16, hint_ms: Option<u64>, rate_limited_default: u64, auth_failure: u64) -> Option<u64> {
    match status {
        429 => Some(hint_ms.map_or(rate_limited_default, |ms| ms.min(MAX_HINT_MS))),
        401 | 403 => Some(auth_failure),
        _ => None,
    }
}

/// A non-negative decimal (`"2"`, `"1.5"`, `".25"`) times `unit`, in whole
/// milliseconds (fractions of a millisecond are dropped). Anything else, e.g.
/// an HTTP date, is `None`. (No float parsing: it would add ~20 KB to the module.)
fn decimal_ms(v: &str, unit: u64) -> Option<u64> {
    let (whole, frac) = v.trim().split_once('.').unwrap_or((v.trim(), ""));
    if whole.is_empty() && frac.is_empty() || !(whole.bytes().chain(frac.bytes())).all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut ms = if whole.is_empty() { 0 } else { whole.parse::<u64>().unwrap_or(u64::MAX) }.saturating_mul(unit);
    let mut scale = unit;
    for d in frac.bytes() {
        scale /= 10;
        if scale == 0 {
            break;
        }
        ms = ms.saturating_add(u64::from(d - b'0') * scale);
    }
    Some(ms)
}

/// One upstream attempt: the provider key id and what came back (`None`: no
/// response, e.g. connection failure or per-attempt timeout).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    pub key_id: String,
    pub status: Option<u16>,
    /// Its leg in the plan: 0 the request's model, then its fallbacks.
    pub leg: usize,
}

/// The answer when every candidate failed: the last upstream status (503 when
/// there was none), listing attempts by key id and status, never by value.
pub fn exhausted(attempts: &[Attempt], final_status: u16) -> Denial {
    let list: Vec<String> = attempts
        .iter()
        .map(|a| match a.status {
            Some(s) => format!("{}: {s}", a.key_id),
            None => format!("{}: no response", a.key_id),
        })
        .collect();
    let status = if final_status >= 400 { final_status } else { 503 };
    Denial::new(
        status,
        Code::AllProviderKeysFailed,
        format!("every provider key failed ({} attempts: {})", attempts.len(), list.join(", ")),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failover_statuses() {
        for s in [401, 403, 429, 500, 502, 503, 529] {
            assert!(is_failover_status(s), "{s}");
        }
        for s in [200, 400, 404, 413, 422] {
            assert!(!is_failover_status(s), "{s}");
        }
    }

    #[test]
    fn cooling_keys_are_skipped_unless_all_are_cooling() {
        assert_eq!(order(&[0, 0, 0], 10), vec![0, 1, 2]);
        assert_eq!(order(&[50, 0, 0], 10), vec![1, 2]);
        assert_eq!(order(&[5, 0], 10), vec![0, 1], "cooldown over");
        assert_eq!(order(&[90, 30, 60], 10), vec![1, 2, 0], "all cooling: soonest first");
        assert!(order(&[], 10).is_empty());
    }

    proptest::proptest! {
        /// Every key cooling: the standard library's stable sort's order (ties keep configured order).
        #[test]
        fn all_cooling_is_a_stable_sort_by_recovery(cool in proptest::collection::vec(11u64..16, 0..40)) {
            let mut want: Vec<usize> = (0..cool.len()).collect();
            want.sort_by_key(|&i| cool.get(i).copied());
            proptest::prop_assert_eq!(order(&cool, 10), want);
        }
    }

    #[test]
    fn cooldowns() {
        let cool = |status, ms: Option<&str>, after: Option<&str>, default, auth| {
            cooldown_ms(status, retry_hint_ms(ms, after), default, auth)
        };
        assert_eq!(cool(429, None, Some("2"), 30_000, 300_000), Some(2_000));
        assert_eq!(cool(429, Some("1500"), Some("9"), 30_000, 300_000), Some(1_500));
        assert_eq!(cool(429, None, Some("Wed, 21 Oct 2026 07:28:00 GMT"), 30_000, 300_000), Some(30_000));
        assert_eq!(cool(429, None, Some("99999999"), 1, 1), Some(3_600_000));
        assert_eq!(cool(429, None, Some("-5"), 7, 1), Some(7));
        assert_eq!(cool(429, None, Some("1.25"), 7, 1), Some(1_250));
        assert_eq!(cool(429, None, Some(".5"), 7, 1), Some(500));
        assert_eq!(cool(429, Some("12.9"), None, 7, 1), Some(12));
        assert_eq!(cool(429, None, Some("0.0001"), 7, 1), Some(0));
        assert_eq!(cool(429, None, Some("1e3"), 7, 1), Some(7));
        assert_eq!(cool(429, None, Some("."), 7, 1), Some(7));
        assert_eq!(cool(429, None, Some(" 3 "), 7, 1), Some(3_000));
        assert_eq!(cool(401, None, None, 1, 300_000), Some(300_000));
        assert_eq!(cool(403, None, None, 1, 9), Some(9));
        assert_eq!(cool(500, None, Some("3"), 1, 1), None);
        assert_eq!(cooldown_ms(429, Some(u64::MAX), 1, 1), Some(3_600_000), "a hint from the trail is capped too");
    }

    #[test]
    fn exhaustion_lists_ids_and_statuses() {
        let attempts = vec![
            Attempt { key_id: "pk_a".into(), status: Some(429), leg: 0 },
            Attempt { key_id: "pk_b".into(), status: Some(401), leg: 0 },
            Attempt { key_id: "pk_c".into(), status: None, leg: 1 },
        ];
        let d = exhausted(&attempts, 503);
        assert_eq!((d.status, d.code.as_str()), (503, "all_provider_keys_failed"));
        assert_eq!(d.message, "every provider key failed (3 attempts: pk_a: 429, pk_b: 401, pk_c: no response)");
        assert_eq!(exhausted(&attempts, 0).status, 503);
    }
}
