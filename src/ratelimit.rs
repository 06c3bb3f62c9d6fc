//! Per-key rate limits: requests and tokens per fixed window, counted in
//! proxy-wasm shared data so that every worker of one Envoy sees one count.
//! The glue does the compare-and-swap; this decides.

use keygate_proto::lookup::Limits;

use crate::errors::{Code, Denial};

/// The count of one key in the current window, as kept in shared data.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Window {
    pub start_ms: u64,
    pub requests: u64,
    pub tokens: u64,
}

impl Window {
    pub fn parse(bytes: &[u8]) -> Option<Window> {
        let s = std::str::from_utf8(bytes).ok()?;
        let mut it = s.split(':').map(|p| p.parse::<u64>().ok());
        Some(Window { start_ms: it.next()??, requests: it.next()??, tokens: it.next()?? })
    }

    pub fn encode(&self) -> String {
        format!("{}:{}:{}", self.start_ms, self.requests, self.tokens)
    }
}

/// What is left after an admission, for the `x-ratelimit-*` headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Remaining {
    pub requests: Option<u64>,
    pub tokens: Option<u64>,
    pub reset_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Admit { window: Window, remaining: Remaining },
    Refuse { requests: bool, retry_after_s: u64, remaining: Remaining },
}

/// Admits one request estimated at `tokens` tokens, or refuses it.
pub fn admit(current: Option<Window>, now_ms: u64, window_ms: u64, limits: &Limits, tokens: u64) -> Admission {
    let window_ms = window_ms.max(1);
    let start = now_ms - now_ms % window_ms;
    let w = current.filter(|w| w.start_ms == start).unwrap_or(Window { start_ms: start, requests: 0, tokens: 0 });
    let reset_ms = start + window_ms - now_ms;
    let retry_after_s = reset_ms.div_ceil(1000).max(1);
    let left = |limit: Option<u64>, used: u64| limit.map(|l| l.saturating_sub(used));
    // Saturating: a client chooses `tokens` (from its `max_tokens`), and a
    // count that wrapped would reset the window.
    let over_requests = limits.requests_per_minute.is_some_and(|l| w.requests.saturating_add(1) > l);
    let over_tokens =
        limits.tokens_per_minute.is_some_and(|l| w.tokens.saturating_add(tokens) > l && w.tokens > 0 || w.tokens >= l);
    if over_requests || over_tokens {
        let remaining = Remaining {
            requests: left(limits.requests_per_minute, w.requests),
            tokens: left(limits.tokens_per_minute, w.tokens),
            reset_ms,
        };
        return Admission::Refuse { requests: over_requests, retry_after_s, remaining };
    }
    let next =
        Window { start_ms: start, requests: w.requests.saturating_add(1), tokens: w.tokens.saturating_add(tokens) };
    let remaining = Remaining {
        requests: left(limits.requests_per_minute, next.requests),
        tokens: left(limits.tokens_per_minute, next.tokens),
        reset_ms,
    };
    Admission::Admit { window: next, remaining }
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

/// Corrects the token count once the real usage is known (same window only).
pub fn settle(current: Window, admitted_start_ms: u64, estimated: u64, actual: u64) -> Option<Window> {
    (current.start_ms == admitted_start_ms)
        .then(|| Window { tokens: current.tokens.saturating_add(actual).saturating_sub(estimated), ..current })
}

#[cfg(test)]
mod tests {
    use super::*;

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

    fn limits(r: Option<u64>, t: Option<u64>) -> Limits {
        Limits { requests_per_minute: r, tokens_per_minute: t }
    }

    fn run(n: usize, l: &Limits, tokens: u64, now: u64) -> (usize, Option<Window>) {
        let mut w = None;
        let mut admitted = 0;
        for _ in 0..n {
            if let Admission::Admit { window, .. } = admit(w, now, 60_000, l, tokens) {
                w = Some(window);
                admitted += 1;
            }
        }
        (admitted, w)
    }

    /// The overflow an attacker could choose: a `max_tokens` just short of
    /// 2^64 must not wrap the window back to zero.
    #[test]
    fn huge_estimates_saturate_instead_of_wrapping() {
        let l = limits(None, Some(1_000));
        let (_, w) = run(1, &l, 600, 1_000);
        let w = w.unwrap();
        assert!(matches!(admit(Some(w), 1_000, 60_000, &l, u64::MAX - 599), Admission::Refuse { .. }));
        let full = Window { tokens: u64::MAX - 1, ..w };
        assert_eq!(settle(full, w.start_ms, 0, 10).unwrap().tokens, u64::MAX);
    }

    #[test]
    fn requests_per_window() {
        let l = limits(Some(5), None);
        assert_eq!(run(25, &l, 10, 1_000).0, 5);
    }

    #[test]
    fn refusal_says_when_to_retry() {
        let l = limits(Some(1), None);
        let (_, w) = run(1, &l, 0, 59_500);
        match admit(w, 59_500, 60_000, &l, 0) {
            Admission::Refuse { requests, retry_after_s, remaining } => {
                assert!(requests);
                assert_eq!(retry_after_s, 1);
                assert_eq!(remaining.requests, Some(0));
            }
            other => panic!("{other:?}"),
        }
        // The next window admits again.
        assert!(matches!(admit(w, 60_001, 60_000, &l, 0), Admission::Admit { .. }));
    }

    #[test]
    fn tokens_per_window() {
        let l = limits(None, Some(100));
        assert_eq!(run(10, &l, 30, 0).0, 3);
        // A single request larger than the limit is admitted into an empty
        // window (it could never pass otherwise), then nothing more.
        assert_eq!(run(3, &l, 500, 0).0, 1);
    }

    #[test]
    fn settlement_corrects_the_estimate() {
        let w = Window { start_ms: 0, requests: 2, tokens: 100 };
        assert_eq!(settle(w, 0, 60, 20).unwrap().tokens, 60);
        assert_eq!(settle(w, 60_000, 60, 20), None, "another window: nothing to correct");
    }

    #[test]
    fn encoding_round_trips() {
        let w = Window { start_ms: 120_000, requests: 3, tokens: 77 };
        assert_eq!(Window::parse(w.encode().as_bytes()), Some(w));
        assert_eq!(Window::parse(b"junk"), None);
        assert_eq!(Window::parse(b"1:2"), None);
    }
}
