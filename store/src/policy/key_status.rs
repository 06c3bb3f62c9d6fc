//! What the gateway lookup answers about an access key: its status (active,
//! in its rotation grace, disabled, expired), until when it stays valid, and
//! the rate limits the filter enforces.

use keygate_proto::lookup::{KeyStatus, Limits};

use crate::model::RateLimitsSpec;

/// The stored facts of the key a digest matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyFacts {
    /// Unix seconds.
    pub expires_at: Option<i64>,
    pub disabled: bool,
    /// `Some(end of grace, unix seconds)` when the digest is the key's previous
    /// token (after a rotation), `None` when it is the current one.
    pub grace_until: Option<i64>,
}

impl KeyFacts {
    /// The status at `now` (unix seconds). A previous token past its grace is
    /// expired whatever else holds; then a disabled key is disabled; then an
    /// expiry in the past expires it.
    pub fn status(&self, now: i64) -> KeyStatus {
        if self.grace_until.is_some_and(|g| g <= now) {
            KeyStatus::Expired
        } else if self.disabled {
            KeyStatus::Disabled
        } else if self.expires_at.is_some_and(|e| e <= now) {
            KeyStatus::Expired
        } else {
            KeyStatus::Active
        }
    }

    /// Until when the token works (unix seconds): the earlier of the key's
    /// expiry and the end of the grace; `None` = no end.
    pub fn valid_until(&self) -> Option<i64> {
        match (self.expires_at, self.grace_until) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// The end (unix seconds) of the grace the previous token of a key rotated at
/// `now` gets; a negative grace is none.
pub fn grace_end(now: i64, grace_seconds: i64) -> i64 {
    now.saturating_add(grace_seconds.max(0))
}

/// The rate limits sent to the filter: none when the configuration sets none.
pub fn limits(spec: Option<RateLimitsSpec>) -> Option<Limits> {
    spec.filter(|l| l.requests_per_minute.is_some() || l.tokens_per_minute.is_some())
        .map(|l| Limits { requests_per_minute: l.requests_per_minute, tokens_per_minute: l.tokens_per_minute })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_000;

    fn key(expires_at: Option<i64>, disabled: bool, grace_until: Option<i64>) -> KeyFacts {
        KeyFacts { expires_at, disabled, grace_until }
    }

    #[test]
    fn a_current_token_without_expiry_is_active_forever() {
        let k = key(None, false, None);
        assert_eq!(k.status(NOW), KeyStatus::Active);
        assert_eq!(k.valid_until(), None);
    }

    #[test]
    fn a_key_expires_at_its_expiry_second() {
        assert_eq!(key(Some(NOW + 1), false, None).status(NOW), KeyStatus::Active);
        assert_eq!(key(Some(NOW), false, None).status(NOW), KeyStatus::Expired);
    }

    #[test]
    fn a_disabled_key_reads_disabled_even_when_also_expired() {
        assert_eq!(key(Some(NOW - 1), true, None).status(NOW), KeyStatus::Disabled);
    }

    #[test]
    fn a_previous_token_works_during_its_grace_and_expires_after() {
        assert_eq!(key(None, false, Some(NOW + 5)).status(NOW), KeyStatus::Active);
        assert_eq!(key(None, false, Some(NOW)).status(NOW), KeyStatus::Expired);
    }

    #[test]
    fn a_previous_token_past_its_grace_is_expired_even_when_disabled() {
        assert_eq!(key(None, true, Some(NOW - 1)).status(NOW), KeyStatus::Expired);
    }

    #[test]
    fn validity_ends_at_the_earlier_of_expiry_and_grace() {
        assert_eq!(key(Some(50), false, Some(40)).valid_until(), Some(40));
        assert_eq!(key(Some(30), false, Some(40)).valid_until(), Some(30));
        assert_eq!(key(None, false, Some(40)).valid_until(), Some(40));
        assert_eq!(key(Some(50), false, None).valid_until(), Some(50));
    }

    #[test]
    fn a_negative_grace_ends_now() {
        assert_eq!(grace_end(NOW, 30), NOW + 30);
        assert_eq!(grace_end(NOW, -30), NOW);
    }

    #[test]
    fn rate_limits_without_any_limit_send_none() {
        assert_eq!(limits(None), None);
        assert_eq!(limits(Some(RateLimitsSpec::default())), None);
        let l = limits(Some(RateLimitsSpec { requests_per_minute: Some(5), tokens_per_minute: None }));
        assert_eq!(l, Some(Limits { requests_per_minute: Some(5), tokens_per_minute: None }));
    }
}
