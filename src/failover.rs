//! Failover across provider keys: which credential each attempt uses, how long
//! a failing key cools down, and what the client hears when every key failed.
//! Envoy's retry policy carries out the attempts; this only decides.

use crate::errors::Denial;

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
    let mut all: Vec<usize> = (0..cool_until.len()).collect();
    all.sort_by_key(|&i| cool_until.get(i).copied().unwrap_or(0));
    all
}

/// How long a key that just answered `status` sits out, in ms (None: it does
/// not). A 429 honours `retry-after-ms` / `retry-after` (seconds) up to an hour.
pub fn cooldown_ms(
    status: u16,
    retry_after_ms: Option<&str>,
    retry_after: Option<&str>,
    rate_limited_default: u64,
    auth_failure: u64,
) -> Option<u64> {
    match status {
        429 => {
            let hinted = retry_after_ms
                .and_then(|v| v.trim().parse::<f64>().ok())
                .or_else(|| retry_after.and_then(|v| v.trim().parse::<f64>().ok()).map(|s| s * 1000.0))
                .filter(|ms| ms.is_finite() && *ms >= 0.0)
                .map(|ms| (ms as u64).min(3_600_000));
            Some(hinted.unwrap_or(rate_limited_default))
        }
        401 | 403 => Some(auth_failure),
        _ => None,
    }
}

/// One upstream attempt: the provider key id and what came back (`None`: no
/// response, e.g. connection failure or per-attempt timeout).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    pub key_id: String,
    pub status: Option<u16>,
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
        "all_provider_keys_failed",
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

    #[test]
    fn cooldowns() {
        assert_eq!(cooldown_ms(429, None, Some("2"), 30_000, 300_000), Some(2_000));
        assert_eq!(cooldown_ms(429, Some("1500"), Some("9"), 30_000, 300_000), Some(1_500));
        assert_eq!(cooldown_ms(429, None, Some("Wed, 21 Oct 2026 07:28:00 GMT"), 30_000, 300_000), Some(30_000));
        assert_eq!(cooldown_ms(429, None, Some("99999999"), 1, 1), Some(3_600_000));
        assert_eq!(cooldown_ms(429, None, Some("-5"), 7, 1), Some(7));
        assert_eq!(cooldown_ms(401, None, None, 1, 300_000), Some(300_000));
        assert_eq!(cooldown_ms(403, None, None, 1, 9), Some(9));
        assert_eq!(cooldown_ms(500, None, Some("3"), 1, 1), None);
    }

    #[test]
    fn exhaustion_lists_ids_and_statuses() {
        let attempts = vec![
            Attempt { key_id: "pk_a".into(), status: Some(429) },
            Attempt { key_id: "pk_b".into(), status: Some(401) },
            Attempt { key_id: "pk_c".into(), status: None },
        ];
        let d = exhausted(&attempts, 503);
        assert_eq!((d.status, d.code), (503, "all_provider_keys_failed"));
        assert_eq!(d.message, "every provider key failed (3 attempts: pk_a: 429, pk_b: 401, pk_c: no response)");
        assert_eq!(exhausted(&attempts, 0).status, 503);
    }
}
