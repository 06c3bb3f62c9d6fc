//! The web console's sessions (`console_sessions`, migration 9): how long a
//! session lasts, when its idle clock is refreshed, when the sweep deletes
//! it, and how often one actor may sign in.
//!
//! A session is a row keyed by the SHA-256 digest of a random 256-bit token;
//! the browser's cookie holds the token and nothing else. The row names the
//! principal (its actor and the digest of the credential signed in with),
//! never the credential itself, so the database holds nothing that opens
//! the API, and a session's every request is authenticated afresh from that
//! digest: a deleted or rotated credential ends it at once.

use std::collections::HashMap;

/// A session ends this long after sign-in, whatever its use (absolute expiry).
pub const ABSOLUTE_MS: i64 = 12 * 3600 * 1000;
/// A session not used for this long ends (idle expiry).
pub const IDLE_MS: i64 = 30 * 60 * 1000;
/// A session's last use is written at most once per this many ms (so a busy
/// console does not write on every click); its idle expiry is therefore
/// between `IDLE_MS - TOUCH_MS` and `IDLE_MS` after its last use.
pub const TOUCH_MS: i64 = 60_000;

/// Successful sign-ins one actor may make per [`SIGN_IN_WINDOW_MS`], per
/// store process: each writes a `console.login` audit entry, and a script
/// signing in in a loop must not flood the audit log.
pub const SIGN_INS_PER_WINDOW: usize = 10;
/// The sliding window of [`SIGN_INS_PER_WINDOW`].
pub const SIGN_IN_WINDOW_MS: i64 = 60_000;

/// A console session as stored. No `Debug`: `csrf` is a secret of the
/// session (it holds no credential, but a form's token must not be logged).
#[derive(Clone, PartialEq, Eq)]
pub struct SessionRow {
    /// Hex SHA-256 of the session token (the cookie's value).
    pub id: String,
    /// `bootstrap`, or the management key's id (`mk_…`).
    pub actor: String,
    /// What identifies the credential signed in with, without being it: a
    /// management key's token digest (as in `api_keys.digest`), or for the
    /// bootstrap admin token a keyed fingerprint (HMAC-SHA256 under a key
    /// derived from the master key, so a weak operator-chosen admin token
    /// cannot be guessed from the database).
    pub credential_digest: String,
    /// The session's CSRF secret (hex), put in every form.
    pub csrf: String,
    pub created_ms: i64,
    /// Absolute expiry: `created_ms + ABSOLUTE_MS`.
    pub expires_ms: i64,
    /// Last recorded use (idle expiry: `seen_ms + IDLE_MS`).
    pub seen_ms: i64,
}

impl SessionRow {
    /// Whether the session is still open at `now_ms`.
    pub fn live(&self, now_ms: i64) -> bool {
        now_ms < self.expires_ms && now_ms < self.seen_ms.saturating_add(IDLE_MS)
    }

    /// Whether a use at `now_ms` should be written (at most once a minute).
    pub fn needs_touch(&self, now_ms: i64) -> bool {
        now_ms.saturating_sub(self.seen_ms) >= TOUCH_MS
    }
}

/// What the sweep deletes: sessions past their absolute expiry
/// (`expires_ms <= now_ms`) or idle since `seen_ms <= idle_before_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expired {
    pub now_ms: i64,
    pub idle_before_ms: i64,
}

impl Expired {
    pub fn at(now_ms: i64) -> Self {
        Expired { now_ms, idle_before_ms: now_ms.saturating_sub(IDLE_MS) }
    }
}

/// The cutoff of a conditional touch: a session whose `seen_ms` is at or
/// before this is written (and only if it is not idle-expired already).
pub fn touch_before(now_ms: i64) -> i64 {
    now_ms.saturating_sub(TOUCH_MS)
}

/// Counts successful sign-ins per actor over a sliding window, in memory
/// (per store process: with N replicas an actor may sign in N times as
/// often). Failed sign-ins are not counted: they write no audit entry.
#[derive(Debug, Default)]
pub struct SignInThrottle {
    recent: HashMap<String, Vec<i64>>,
}

impl SignInThrottle {
    /// Records a sign-in of `actor` at `now_ms` if the window has room;
    /// `Err(ms)`: refused, room again in that many ms.
    pub fn admit(&mut self, actor: &str, now_ms: i64) -> Result<(), i64> {
        let since = now_ms.saturating_sub(SIGN_IN_WINDOW_MS);
        // Forget what left the window (everyone's, so the map stays small).
        self.recent.retain(|_, times| {
            times.retain(|t| *t > since);
            !times.is_empty()
        });
        let times = self.recent.entry(actor.to_string()).or_default();
        if times.len() >= SIGN_INS_PER_WINDOW {
            let oldest = times.iter().min().copied().unwrap_or(now_ms);
            return Err(oldest.saturating_add(SIGN_IN_WINDOW_MS).saturating_sub(now_ms).max(1));
        }
        times.push(now_ms);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(created: i64, seen: i64) -> SessionRow {
        SessionRow {
            id: "d".into(),
            actor: "bootstrap".into(),
            credential_digest: "f".into(),
            csrf: "c".into(),
            created_ms: created,
            expires_ms: created + ABSOLUTE_MS,
            seen_ms: seen,
        }
    }

    #[test]
    fn a_session_ends_when_idle_or_old() {
        let s = row(0, 0);
        assert!(s.live(1));
        assert!(s.live(IDLE_MS - 1));
        assert!(!s.live(IDLE_MS));
        // Used a minute before: still open; touched, it lasts longer.
        let s = row(0, ABSOLUTE_MS - 60_000);
        assert!(s.live(ABSOLUTE_MS - 1));
        assert!(!s.live(ABSOLUTE_MS), "12 hours whatever the use");
        assert!(!row(0, 0).needs_touch(TOUCH_MS - 1));
        assert!(row(0, 0).needs_touch(TOUCH_MS));
        assert_eq!(touch_before(100_000), 40_000);
        assert_eq!(Expired::at(IDLE_MS + 5), Expired { now_ms: IDLE_MS + 5, idle_before_ms: 5 });
    }

    #[test]
    fn sign_ins_are_limited_per_actor_and_window() {
        let mut t = SignInThrottle::default();
        for i in 0..SIGN_INS_PER_WINDOW {
            assert_eq!(t.admit("mk_1", 1_000 + i64::try_from(i).unwrap()), Ok(()));
        }
        assert_eq!(t.admit("mk_1", 2_000), Err(SIGN_IN_WINDOW_MS - 1_000));
        // Another actor is not held back by the first.
        assert_eq!(t.admit("bootstrap", 2_000), Ok(()));
        // Once the oldest leaves the window, one more.
        assert_eq!(t.admit("mk_1", 1_000 + SIGN_IN_WINDOW_MS), Ok(()));
        assert!(t.admit("mk_1", 1_000 + SIGN_IN_WINDOW_MS).is_err());
        // Forgotten actors leave the map.
        assert_eq!(t.admit("x", 10 * SIGN_IN_WINDOW_MS), Ok(()));
        assert_eq!(t.recent.len(), 1);
    }
}
