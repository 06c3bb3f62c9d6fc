//! Per-key rate limits that hold across a fleet of Envoys: requests and
//! tokens per window.
//!
//! The key store counts, per key and window, what it has *leased* to the
//! Envoys, and never leases past the key's limits. Each Envoy keeps its
//! lease in a [`Pool`] in proxy-wasm shared data (every worker of that Envoy
//! takes from it with compare-and-swap) and asks the store for more when it
//! runs dry (`POST /v1/lease`, one callout per lease). So the fleet never
//! admits more than the limit, and what it under-admits in a window is at
//! most what Envoys leased and did not use: each lease is at most a quarter
//! of the limit ([`lease_ask`]), so at most ¼ of the limit per Envoy that
//! holds a lease at the window's end.
//!
//! A lease starts at 1/16 of the limit and doubles with each further lease in
//! the window (a busy key costs a handful of store calls a window, a quiet one
//! leaves little unused). Tokens are leased by estimate and corrected with the
//! real usage inside the Envoy's pool.

use keygate_proto::lookup::{LeaseResponse, Limits};

use crate::errors::{Code, Denial};

/// How long a pool the store could not refill refuses before it asks again.
pub const DRY_RETRY_MS: u64 = 1_000;

/// The tokens a request counts against a token limit: its estimate, at most
/// the whole limit (a client's `max_tokens` must not make a lease, or its
/// refund, larger than the limit itself).
pub fn counted_tokens(limits: &Limits, tokens: u64) -> u64 {
    limits.tokens_per_minute.map_or(tokens, |l| tokens.min(l))
}

/// One Envoy's lease of a key's window, as kept in shared data.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pool {
    /// The window, by the store's clock.
    pub start_ms: u64,
    /// When it ends by this Envoy's clock (its time at the grant + the
    /// store's `resetMs`): clocks need not agree.
    pub end_ms: u64,
    /// Left to admit here.
    pub requests: u64,
    /// Left here; may go below zero when usage exceeded its estimate.
    pub tokens: i64,
    /// Leases taken in this window (the next one asks for more).
    pub leases: u32,
    /// The store had nothing left to grant: refused until then (this
    /// Envoy's clock), when it asks again (another Envoy may have returned
    /// nothing, but the window may also have turned).
    pub dry_until: u64,
    /// What the store had left for the fleet at the last grant.
    pub fleet_requests: u64,
    pub fleet_tokens: u64,
}

impl Pool {
    pub fn parse(bytes: &[u8]) -> Option<Pool> {
        let s = std::str::from_utf8(bytes).ok()?;
        let mut it = s.split(':');
        let mut n = || it.next()?.parse::<u64>().ok();
        let (start_ms, end_ms, requests) = (n()?, n()?, n()?);
        let tokens = it.next()?.parse::<i64>().ok()?;
        let mut n = || it.next()?.parse::<u64>().ok();
        let (leases, dry_until, fleet_requests, fleet_tokens) = (n()?, n()?, n()?, n()?);
        Some(Pool {
            start_ms,
            end_ms,
            requests,
            tokens,
            leases: u32::try_from(leases).ok()?,
            dry_until,
            fleet_requests,
            fleet_tokens,
        })
    }

    pub fn encode(&self) -> String {
        format!(
            "{}:{}:{}:{}:{}:{}:{}:{}",
            self.start_ms,
            self.end_ms,
            self.requests,
            self.tokens,
            self.leases,
            self.dry_until,
            self.fleet_requests,
            self.fleet_tokens
        )
    }

    /// Still the current window at `now_ms` (this Envoy's clock).
    pub fn current(&self, now_ms: u64) -> bool {
        now_ms < self.end_ms
    }

    /// A grant from the store, asked for at `sent_ms` and added at `now_ms`,
    /// added to this pool (or starting a new one when the window changed).
    /// The window ends `resetMs` after the ask was *sent* (by this Envoy's
    /// clock), never later than the store's. `needed` is what the request
    /// that asked must find: if the grant leaves it short and the store has
    /// nothing more, the pool is dry for a while ([`DRY_RETRY_MS`]).
    pub fn with_grant(
        self,
        grant: &LeaseResponse,
        sent_ms: u64,
        now_ms: u64,
        needed: (u64, u64),
        limits: &Limits,
    ) -> Pool {
        let current = self.current(now_ms);
        if current && grant.window_start_ms < self.start_ms {
            return self; // a late grant of a window that is over
        }
        let mut pool = if current && self.start_ms == grant.window_start_ms {
            self
        } else {
            Pool { start_ms: grant.window_start_ms, end_ms: sent_ms.saturating_add(grant.reset_ms), ..Pool::default() }
        };
        pool.requests = pool.requests.saturating_add(grant.requests);
        pool.tokens = pool.tokens.saturating_add(i64::try_from(grant.tokens).unwrap_or(i64::MAX));
        pool.leases = pool.leases.saturating_add(1);
        pool.fleet_requests = grant.remaining_requests;
        pool.fleet_tokens = grant.remaining_tokens;
        let short_requests = limits.requests_per_minute.is_some() && pool.requests < needed.0;
        let short_tokens =
            limits.tokens_per_minute.is_some() && pool.tokens < i64::try_from(needed.1).unwrap_or(i64::MAX);
        let fleet_dry = (short_requests && grant.remaining_requests == 0)
            || (short_tokens && grant.remaining_tokens == 0)
            || (grant.requests == 0 && grant.tokens == 0);
        pool.dry_until = if (short_requests || short_tokens) && fleet_dry {
            now_ms.saturating_add(DRY_RETRY_MS).min(pool.end_ms)
        } else {
            0
        };
        pool
    }
}

/// What is left, for the `x-ratelimit-*` headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Remaining {
    pub requests: Option<u64>,
    pub tokens: Option<u64>,
    pub reset_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Take {
    /// Admitted: write `pool` back (compare-and-swap).
    Admit { pool: Pool, remaining: Remaining },
    /// The pool cannot cover the request: lease this much first.
    Lease { requests: u64, tokens: u64 },
    /// The fleet's window is used up.
    Refuse { requests: bool, retry_after_s: u64, remaining: Remaining },
}

/// What this Envoy's pool says is left of the key's window (`None`: it holds
/// no lease of the current window, and so knows nothing).
pub fn remaining(pool: Option<Pool>, now_ms: u64, limits: &Limits) -> Option<Remaining> {
    let p = pool.filter(|p| p.current(now_ms))?;
    Some(Remaining {
        requests: limits.requests_per_minute.map(|_| p.requests.saturating_add(p.fleet_requests)),
        tokens: limits
            .tokens_per_minute
            .map(|_| u64::try_from(p.tokens.max(0)).unwrap_or(0).saturating_add(p.fleet_tokens)),
        reset_ms: p.end_ms.saturating_sub(now_ms),
    })
}

/// Takes one request estimated at `tokens` tokens from this Envoy's pool.
pub fn take(pool: Option<Pool>, now_ms: u64, limits: &Limits, tokens: u64) -> Take {
    let tokens = counted_tokens(limits, tokens);
    let pool = pool.filter(|p| p.current(now_ms));
    let leases = pool.map_or(0, |p| p.leases);
    let lease = Take::Lease {
        requests: limits.requests_per_minute.map_or(0, |l| lease_ask(l, leases, 1)),
        tokens: limits.tokens_per_minute.map_or(0, |l| lease_ask(l, leases, tokens)),
    };
    let Some(p) = pool else { return lease };
    let reset_ms = p.end_ms.saturating_sub(now_ms);
    let remaining = |p: &Pool| Remaining {
        requests: limits.requests_per_minute.map(|_| p.requests.saturating_add(p.fleet_requests)),
        tokens: limits
            .tokens_per_minute
            .map(|_| u64::try_from(p.tokens.max(0)).unwrap_or(0).saturating_add(p.fleet_tokens)),
        reset_ms,
    };
    let short_requests = limits.requests_per_minute.is_some() && p.requests == 0;
    let short_tokens = limits.tokens_per_minute.is_some() && p.tokens < i64::try_from(tokens).unwrap_or(i64::MAX);
    if short_requests || short_tokens {
        if now_ms < p.dry_until {
            let retry_after_s = reset_ms.div_ceil(1000).max(1);
            return Take::Refuse { requests: short_requests, retry_after_s, remaining: remaining(&p) };
        }
        return lease;
    }
    let mut next = p;
    if limits.requests_per_minute.is_some() {
        next.requests -= 1;
    }
    if limits.tokens_per_minute.is_some() {
        next.tokens = next.tokens.saturating_sub(i64::try_from(tokens).unwrap_or(i64::MAX));
    }
    Take::Admit { pool: next, remaining: remaining(&next) }
}

/// How much to ask for in a window's `leases`+1-th lease: 1/16 of `limit`,
/// doubling with each lease, at most ¼ of it, and never less than one
/// request needs (`at_least`).
pub fn lease_ask(limit: u64, leases: u32, at_least: u64) -> u64 {
    let first = limit.div_ceil(16).max(1);
    let cap = limit.div_ceil(4).max(1);
    let factor = 1u64.checked_shl(leases).unwrap_or(u64::MAX);
    first.saturating_mul(factor).min(cap).max(at_least)
}

/// Corrects the pool's tokens once the real usage is known (same window only).
pub fn settle(pool: Pool, start_ms: u64, estimated: u64, actual: u64) -> Option<Pool> {
    let delta = i64::try_from(estimated).unwrap_or(i64::MAX).saturating_sub(i64::try_from(actual).unwrap_or(i64::MAX));
    (pool.start_ms == start_ms && delta != 0).then(|| Pool { tokens: pool.tokens.saturating_add(delta), ..pool })
}

/// The `x-ratelimit-*` headers OpenAI's own API sends.
pub fn headers(limits: &Limits, remaining: &Remaining) -> Vec<(&'static str, String)> {
    let reset = format!("{}ms", remaining.reset_ms);
    let mut out = Vec::new();
    if let (Some(l), Some(r)) = (limits.requests_per_minute, remaining.requests) {
        out.push(("x-ratelimit-limit-requests", l.to_string()));
        out.push(("x-ratelimit-remaining-requests", r.to_string()));
        out.push(("x-ratelimit-reset-requests", reset.clone()));
    }
    if let (Some(l), Some(r)) = (limits.tokens_per_minute, remaining.tokens) {
        out.push(("x-ratelimit-limit-tokens", l.to_string()));
        out.push(("x-ratelimit-remaining-tokens", r.to_string()));
        out.push(("x-ratelimit-reset-tokens", reset));
    }
    out
}

/// The 429 for a refused admission, with `Retry-After` and the limit headers.
pub fn refusal(limits: &Limits, requests: bool, retry_after_s: u64, remaining: &Remaining) -> Denial {
    let what = if requests { "requests" } else { "tokens" };
    let mut d = Denial::new(
        429,
        Code::RateLimitExceeded,
        format!("this access key is over its {what} per minute limit; retry after {retry_after_s} s"),
    );
    d.retry_after = Some(retry_after_s);
    d.headers = headers(limits, remaining);
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(r: Option<u64>, t: Option<u64>) -> Limits {
        Limits { requests_per_minute: r, tokens_per_minute: t }
    }

    /// A store that leases from one fleet-wide window of `limits`.
    struct Store {
        limits: Limits,
        requests: u64,
        tokens: u64,
        calls: u32,
    }

    impl Store {
        fn lease(&mut self, ask: (u64, u64)) -> LeaseResponse {
            self.calls += 1;
            let left_r = self.limits.requests_per_minute.map_or(u64::MAX, |l| l - self.requests);
            let left_t = self.limits.tokens_per_minute.map_or(u64::MAX, |l| l - self.tokens);
            let (r, t) = (ask.0.min(left_r), ask.1.min(left_t));
            self.requests += r;
            self.tokens += t;
            LeaseResponse {
                window_start_ms: 60_000,
                reset_ms: 30_000,
                requests: r,
                tokens: t,
                remaining_requests: left_r - r,
                remaining_tokens: left_t.saturating_sub(t),
            }
        }
    }

    /// Runs `n` requests through several Envoys' pools on one store.
    fn fleet(envoys: usize, n: usize, l: &Limits, tokens: u64) -> (usize, Store) {
        let mut store = Store { limits: l.clone(), requests: 0, tokens: 0, calls: 0 };
        let mut pools: Vec<Option<Pool>> = vec![None; envoys];
        let mut admitted = 0;
        for i in 0..n {
            let pool = &mut pools[i % envoys];
            loop {
                match take(*pool, 1_000, l, tokens) {
                    Take::Admit { pool: next, .. } => {
                        *pool = Some(next);
                        admitted += 1;
                        break;
                    }
                    Take::Lease { requests, tokens: t } => {
                        let grant = store.lease((requests, t));
                        *pool = Some(pool.unwrap_or_default().with_grant(&grant, 1_000, 1_000, (1, tokens), l));
                    }
                    Take::Refuse { .. } => break,
                }
            }
        }
        (admitted, store)
    }

    #[test]
    fn a_fleet_never_admits_more_than_the_limit() {
        for envoys in [1, 2, 5] {
            let (admitted, _) = fleet(envoys, 200, &limits(Some(30), None), 10);
            assert_eq!(admitted, 30, "{envoys} Envoys");
        }
        // Tokens: under by at most what each Envoy holds and cannot use
        // (less than one request's estimate each).
        let (admitted, store) = fleet(2, 500, &limits(None, Some(1_000)), 10);
        assert!((98..=100).contains(&admitted), "{admitted}");
        assert!(store.tokens <= 1_000);
    }

    #[test]
    fn a_busy_key_costs_a_handful_of_store_calls_a_window() {
        let (admitted, store) = fleet(1, 20_000, &limits(Some(10_000), None), 1);
        assert_eq!(admitted, 10_000);
        assert!(store.calls < 10, "{} calls", store.calls);
    }

    #[test]
    fn a_lease_starts_small_doubles_and_is_at_most_a_quarter() {
        assert_eq!((0..6).map(|n| lease_ask(160, n, 1)).collect::<Vec<_>>(), [10, 20, 40, 40, 40, 40]);
        assert_eq!(lease_ask(3, 0, 1), 1);
        assert_eq!(lease_ask(1_000, 0, 4_096), 4_096, "at least what the request needs");
        assert_eq!(lease_ask(u64::MAX, 40, 1), u64::MAX.div_ceil(4));
    }

    #[test]
    fn a_dry_pool_refuses_for_a_second_without_asking_again() {
        let l = limits(Some(1), None);
        let grant = LeaseResponse { window_start_ms: 0, reset_ms: 2_500, requests: 0, ..LeaseResponse::default() };
        let pool = Pool::default().with_grant(&grant, 1_000, 1_000, (1, 0), &l);
        assert_eq!(pool.dry_until, 2_000);
        let Take::Refuse { requests, retry_after_s, remaining } = take(Some(pool), 1_000, &l, 0) else {
            panic!("not refused")
        };
        assert_eq!((requests, retry_after_s, remaining.requests), (true, 3, Some(0)));
        assert!(matches!(take(Some(pool), 2_000, &l, 0), Take::Lease { .. }), "then it asks again");
        assert!(matches!(take(Some(pool), 3_500, &l, 0), Take::Lease { .. }), "a new window leases again");
    }

    #[test]
    fn a_huge_estimate_counts_as_the_whole_limit_and_its_refund_never_exceeds_it() {
        let l = limits(None, Some(1_000));
        let Take::Lease { tokens, .. } = take(None, 0, &l, 1 << 40) else { panic!("no lease") };
        assert_eq!(tokens, 1_000, "never more than the limit is asked for");
        let grant = LeaseResponse { window_start_ms: 0, reset_ms: 60_000, tokens: 1_000, ..LeaseResponse::default() };
        let pool = Pool::default().with_grant(&grant, 0, 0, (1, 1_000), &l);
        let Take::Admit { pool, .. } = take(Some(pool), 0, &l, 1 << 40) else { panic!("not admitted") };
        assert_eq!(pool.tokens, 0);
        // Refused upstream (0 tokens used): the refund is what was taken, the limit.
        let settled = settle(pool, 0, counted_tokens(&l, 1 << 40), 0).unwrap();
        assert_eq!(settled.tokens, 1_000);
    }

    #[test]
    fn a_late_grant_of_an_old_window_does_not_replace_the_current_pool() {
        let l = limits(Some(100), None);
        let now = LeaseResponse { window_start_ms: 60_000, reset_ms: 60_000, requests: 5, ..LeaseResponse::default() };
        let pool = Pool::default().with_grant(&now, 60_000, 60_000, (1, 0), &l);
        let old = LeaseResponse { window_start_ms: 0, reset_ms: 100, requests: 50, ..LeaseResponse::default() };
        assert_eq!(pool.with_grant(&old, 59_950, 60_100, (1, 0), &l), pool);
    }

    #[test]
    fn a_window_ends_by_the_time_the_ask_was_sent() {
        let l = limits(Some(100), None);
        let grant = LeaseResponse { window_start_ms: 0, reset_ms: 1_000, requests: 5, ..LeaseResponse::default() };
        assert_eq!(Pool::default().with_grant(&grant, 5_000, 5_300, (1, 0), &l).end_ms, 6_000);
    }

    #[test]
    fn settlement_returns_unused_tokens_to_the_pool() {
        let pool = Pool { start_ms: 5, tokens: 100, ..Pool::default() };
        assert_eq!(settle(pool, 5, 300, 50).map(|p| p.tokens), Some(350));
        assert_eq!(settle(pool, 5, 50, 300).map(|p| p.tokens), Some(-150));
        assert_eq!(settle(pool, 6, 300, 50), None, "another window");
    }

    #[test]
    fn pools_round_trip_through_shared_data() {
        let p = Pool {
            start_ms: 1,
            end_ms: 2,
            requests: 3,
            tokens: -4,
            leases: 5,
            dry_until: 8,
            fleet_requests: 6,
            fleet_tokens: 7,
        };
        assert_eq!(Pool::parse(p.encode().as_bytes()), Some(p));
        assert_eq!(Pool::parse(b"1:2:3"), None);
    }

    #[test]
    fn a_refusal_says_which_limit_and_when_to_retry() {
        let limits = Limits { requests_per_minute: Some(2), tokens_per_minute: None };
        let remaining = Remaining { requests: Some(0), tokens: None, reset_ms: 1500 };
        let d = refusal(&limits, true, 2, &remaining);
        assert_eq!((d.status, d.code, d.retry_after), (429, Code::RateLimitExceeded, Some(2)));
        assert!(d.message.contains("requests per minute"), "{}", d.message);
        assert_eq!(
            d.headers,
            [
                ("x-ratelimit-limit-requests", "2".to_string()),
                ("x-ratelimit-remaining-requests", "0".to_string()),
                ("x-ratelimit-reset-requests", "1500ms".to_string()),
            ]
        );
    }
}
