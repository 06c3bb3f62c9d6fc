//! Rate-limit leases: the fleet-wide count of a key's window.
//!
//! Every Envoy leases a share of an access key's window allowance
//! (`POST /v1/lease`) and admits from its share; the store counts what it has
//! granted per key and window and never grants past the key's limits, so the
//! fleet never admits more than the limit (see the filter's `ratelimit`).
//! Windows are aligned to the store's clock; every replica on one database
//! counts in the same row, inside a transaction.

use keygate_proto::lookup::{LeaseRequest, LeaseResponse, Limits};

/// Shortest and longest window the gateway may ask for.
pub const MIN_WINDOW_MS: u64 = 1_000;
pub const MAX_WINDOW_MS: u64 = 86_400_000;

/// The window `now_ms` falls in: (start, milliseconds left).
pub fn window(now_ms: u64, window_ms: u64) -> (u64, u64) {
    let window_ms = window_ms.clamp(MIN_WINDOW_MS, MAX_WINDOW_MS);
    let start = now_ms - now_ms % window_ms;
    (start, start + window_ms - now_ms)
}

/// What was already granted in a key's window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Granted {
    pub requests: u64,
    pub tokens: u64,
}

/// Grants what is asked, up to what the limits leave; a dimension without a
/// limit is granted as asked. (The filter never asks for more tokens than
/// the limit.) `limits` is `None` for a key that is gone or has no limits,
/// and `newest_start` the latest window the store has counted for the key:
/// a clock behind it (a replica's, or a retried transaction's) gets
/// nothing, so that a window that is over is never counted again.
pub fn grant(
    limits: Option<&Limits>,
    granted: Granted,
    req: &LeaseRequest,
    now_ms: u64,
    newest_start: Option<u64>,
) -> (LeaseResponse, Granted) {
    let (start, reset_ms) = window(now_ms, req.window_ms);
    let behind = newest_start.is_some_and(|n| n > start);
    let Some(limits) = limits.filter(|_| !behind) else {
        let none = LeaseResponse { window_start_ms: start, reset_ms, ..LeaseResponse::default() };
        return (none, granted);
    };
    let requests = match limits.requests_per_minute {
        Some(l) => req.requests.min(l.saturating_sub(granted.requests)),
        None => req.requests,
    };
    let tokens = match limits.tokens_per_minute {
        Some(l) => req.tokens.min(l.saturating_sub(granted.tokens)),
        None => req.tokens,
    };
    let after =
        Granted { requests: granted.requests.saturating_add(requests), tokens: granted.tokens.saturating_add(tokens) };
    let left = |limit: Option<u64>, used: u64| limit.map_or(u64::MAX, |l| l.saturating_sub(used));
    let answer = LeaseResponse {
        window_start_ms: start,
        reset_ms,
        requests,
        tokens,
        remaining_requests: left(limits.requests_per_minute, after.requests),
        remaining_tokens: left(limits.tokens_per_minute, after.tokens),
    };
    (answer, after)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ask(requests: u64, tokens: u64) -> LeaseRequest {
        LeaseRequest { access_key_id: "ak_1".into(), window_ms: 60_000, requests, tokens }
    }

    const LIMITS: Limits = Limits { requests_per_minute: Some(30), tokens_per_minute: Some(1_000) };

    #[test]
    fn grants_stop_at_the_limit_whoever_asks() {
        let mut granted = Granted::default();
        let mut total = 0;
        for _ in 0..10 {
            let (answer, after) = grant(Some(&LIMITS), granted, &ask(8, 0), 61_000, Some(60_000));
            total += answer.requests;
            granted = after;
        }
        assert_eq!(total, 30);
        let (answer, _) = grant(Some(&LIMITS), granted, &ask(8, 0), 61_000, Some(60_000));
        assert_eq!((answer.requests, answer.remaining_requests), (0, 0));
    }

    #[test]
    fn windows_are_aligned_to_the_store_clock() {
        let (answer, _) = grant(Some(&LIMITS), Granted::default(), &ask(1, 0), 61_500, None);
        assert_eq!((answer.window_start_ms, answer.reset_ms), (60_000, 58_500));
        assert_eq!(window(5, 1), (0, 995), "windows are at least a second");
    }

    #[test]
    fn no_ask_gets_more_tokens_than_the_limit_leaves() {
        let (answer, after) = grant(Some(&LIMITS), Granted::default(), &ask(1, 5_000), 0, None);
        assert_eq!(answer.tokens, 1_000);
        let (answer, _) = grant(Some(&LIMITS), after, &ask(1, 5_000), 0, Some(0));
        assert_eq!(answer.tokens, 0);
    }

    #[test]
    fn a_clock_behind_the_newest_window_counts_nothing() {
        let (answer, after) = grant(Some(&LIMITS), Granted::default(), &ask(5, 5), 61_000, Some(120_000));
        assert_eq!((answer.requests, answer.tokens, after), (0, 0, Granted::default()));
    }

    #[test]
    fn a_key_without_limits_gets_nothing() {
        let (answer, after) = grant(None, Granted::default(), &ask(5, 5), 0, None);
        assert_eq!((answer.requests, answer.tokens, after), (0, 0, Granted::default()));
    }
}
