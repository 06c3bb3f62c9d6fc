//! The console's session: a row of `console_sessions` (shared by every
//! replica through the database; the rules are in
//! [`crate::policy::sessions`]), found by the SHA-256 digest of a random
//! 256-bit token that is the whole value of the browser's cookie. The row
//! names the principal by a digest of its credential, never the credential
//! itself; it holds the session's CSRF secret, its absolute (12 h) and idle
//! (30 min) expiry, and whether a token waits to be shown once. The cookie
//! is only ever sent back to `/console` (`Path`), never to another site
//! (`SameSite=Strict`), and never to scripts (`HttpOnly`); signing out
//! deletes the row, so a copy of the cookie opens nothing afterwards.
//!
//! The [`Sealer`] (XChaCha20-Poly1305 under a key derived from the master
//! key) still seals the short-lived cookie that carries a fresh token to the
//! page that shows it ([`Once`]); the session row makes that page show it
//! once only.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hkdf::Hkdf;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::api::principal::SessionCredential;
use crate::policy::sessions::{self, SessionRow};

/// How long the browser keeps the session cookie (the session's absolute
/// expiry; the server ends it earlier when idle or signed out).
pub const SESSION_SECONDS: i64 = crate::policy::sessions::ABSOLUTE_MS / 1000;
/// How long a freshly created token waits for the page that shows it.
pub const ONCE_SECONDS: i64 = 120;

const NONCE_LEN: usize = 24;
/// Sealed values carry their purpose as associated data: a value sealed as
/// one kind never opens as another.
pub const PURPOSE_ONCE: &str = "keygate console token once v1";
/// A webhook secret on its way to the one page that shows it (sealed apart
/// from access-key tokens: one never opens as the other).
pub const PURPOSE_SECRET_ONCE: &str = "keygate console webhook secret once v1";

/// Seals and opens cookie values. No `Debug` of the key.
#[derive(Clone)]
pub struct Sealer {
    aead: XChaCha20Poly1305,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(<redacted>)")
    }
}

impl Sealer {
    /// The cookie key: HKDF-SHA256 of the master key, with a salt and info
    /// of its own (the master key itself never seals a cookie).
    pub fn derive(master_key: &[u8; 32]) -> Self {
        let hk = Hkdf::<Sha256>::new(Some(b"keygate console"), master_key);
        let mut key = [0u8; 32];
        // 32 bytes are always a valid HKDF-SHA256 output length.
        let _ = hk.expand(b"session cookie key v1", &mut key);
        Sealer { aead: XChaCha20Poly1305::new(&key.into()) }
    }

    /// `hex(nonce || ciphertext+tag)`; `None` only if the OS has no randomness.
    pub fn seal(&self, purpose: &str, plaintext: &[u8]) -> Option<String> {
        let mut nonce = [0u8; NONCE_LEN];
        crate::ids::fill_random(&mut nonce).ok()?;
        let ct =
            self.aead.encrypt(XNonce::from_slice(&nonce), Payload { msg: plaintext, aad: purpose.as_bytes() }).ok()?;
        let mut out = Vec::with_capacity(NONCE_LEN + ct.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        Some(hex::encode(out))
    }

    pub fn open(&self, purpose: &str, sealed: &str) -> Option<Vec<u8>> {
        if sealed.len() > 8192 {
            return None;
        }
        let bytes = hex::decode(sealed).ok()?;
        if bytes.len() < NONCE_LEN {
            return None;
        }
        let (nonce, ct) = bytes.split_at(NONCE_LEN);
        self.aead.decrypt(XNonce::from_slice(nonce), Payload { msg: ct, aad: purpose.as_bytes() }).ok()
    }

    pub fn seal_json<T: Serialize>(&self, purpose: &str, value: &T) -> Option<String> {
        self.seal(purpose, &serde_json::to_vec(value).ok()?)
    }

    pub fn open_json<T: for<'de> Deserialize<'de>>(&self, purpose: &str, sealed: &str) -> Option<T> {
        serde_json::from_slice(&self.open(purpose, sealed)?).ok()
    }
}

/// The session cookie's token: 256 random bits, hex.
pub fn new_token() -> Option<String> {
    crate::ids::random_hex(32).ok()
}

/// The session's id (its row's key) for the cookie's token: `None` when the
/// cookie cannot be a token at all.
pub fn id_of(token: &str) -> Option<String> {
    (token.len() == 64 && token.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
        .then(|| keygate_proto::token::digest(token))
}

/// An open session, as a request sees it. No `Debug`.
#[derive(Clone)]
pub struct Session {
    /// The row's id: the SHA-256 digest of the cookie's token.
    pub id: String,
    /// `bootstrap`, or the management key's id, as signed in.
    pub actor: String,
    /// What every API call of the session authenticates with.
    pub credential: SessionCredential,
    /// The session's CSRF secret (hex), put in every form.
    pub csrf: String,
}

impl Session {
    pub fn of_row(row: &SessionRow) -> Session {
        Session {
            id: row.id.clone(),
            actor: row.actor.clone(),
            credential: SessionCredential::from_row(&row.actor, &row.credential_digest),
            csrf: row.csrf.clone(),
        }
    }

    /// Whether a form's token is this session's (constant time).
    pub fn csrf_matches(&self, presented: &str) -> bool {
        !presented.is_empty() && bool::from(presented.as_bytes().ct_eq(self.csrf.as_bytes()))
    }
}

/// A new session's row for `token`, opened at `now_ms`.
pub fn new_row(token: &str, actor: &str, credential: &SessionCredential, now_ms: i64) -> Option<SessionRow> {
    Some(SessionRow {
        id: id_of(token)?,
        actor: actor.to_string(),
        credential_digest: credential.digest().to_string(),
        csrf: crate::ids::random_hex(32).ok()?,
        created_ms: now_ms,
        expires_ms: now_ms.saturating_add(sessions::ABSOLUTE_MS),
        seen_ms: now_ms,
    })
}

/// The fingerprint of the bootstrap admin token a session keeps: HMAC-SHA256
/// under a key derived (HKDF-SHA256, its own info) from the master key. A
/// plain digest would let whoever reads the database test guesses of a weak
/// operator-chosen admin token; this one needs the master key too.
#[derive(Clone)]
pub struct Fingerprinter {
    key: [u8; 32],
}

impl std::fmt::Debug for Fingerprinter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Fingerprinter(<redacted>)")
    }
}

impl Fingerprinter {
    pub fn derive(master_key: &[u8; 32]) -> Self {
        let hk = Hkdf::<Sha256>::new(Some(b"keygate console"), master_key);
        let mut key = [0u8; 32];
        // 32 bytes are always a valid HKDF-SHA256 output length.
        let _ = hk.expand(b"session credential fingerprint v1", &mut key);
        Fingerprinter { key }
    }

    pub fn fingerprint(&self, credential: &str) -> String {
        use hmac::{Hmac, Mac};
        // HMAC takes a key of any length.
        let Ok(mut mac) = <Hmac<Sha256> as Mac>::new_from_slice(&self.key) else { return String::new() };
        mac.update(credential.as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }
}

/// A token just created or rotated (or an alert webhook's secret just
/// generated or replaced), on its way to the one page that shows it: sealed,
/// bound to the key (webhook) and to the session (its CSRF secret), and
/// short-lived. Its nonce is the session's pending reveal: the page shows it
/// only if it takes that nonce from the session row (once), and deletes the
/// cookie whatever happened.
#[derive(Serialize, Deserialize)]
pub struct Once {
    /// The access key's id (or the webhook's).
    #[serde(rename = "k")]
    pub key_id: String,
    #[serde(rename = "t")]
    pub token: String,
    #[serde(rename = "s")]
    pub session_csrf: String,
    #[serde(rename = "e")]
    pub expires: i64,
    /// Created or rotated (with the old token's grace period, seconds; a
    /// webhook's replaced secret: `Some(0)`).
    #[serde(rename = "r")]
    pub rotated: Option<u64>,
    /// The session's pending reveal ([`crate::storage::Store::take_console_reveal`]).
    #[serde(rename = "n")]
    pub nonce: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_with_their_key_and_purpose() {
        let a = Sealer::derive(&[1u8; 32]);
        let s = a.seal(PURPOSE_ONCE, b"hello").unwrap();
        assert_ne!(s, a.seal(PURPOSE_ONCE, b"hello").unwrap(), "fresh nonce each time");
        assert_eq!(a.open(PURPOSE_ONCE, &s).unwrap(), b"hello");
        assert!(a.open(PURPOSE_SECRET_ONCE, &s).is_none());
        let once = a.seal(PURPOSE_ONCE, b"token").unwrap();
        assert!(a.open(PURPOSE_SECRET_ONCE, &once).is_none());
        assert!(Sealer::derive(&[2u8; 32]).open(PURPOSE_ONCE, &s).is_none());
        // Any changed character breaks it.
        let mut t = s.clone().into_bytes();
        t[30] = if t[30] == b'0' { b'1' } else { b'0' };
        assert!(a.open(PURPOSE_ONCE, std::str::from_utf8(&t).unwrap()).is_none());
        assert!(a.open(PURPOSE_ONCE, "zz").is_none());
        assert!(a.open(PURPOSE_ONCE, "").is_none());
        // The cookie key is not the master key.
        let raw = chacha20poly1305::XChaCha20Poly1305::new(&[1u8; 32].into());
        let bytes = hex::decode(&s).unwrap();
        let (n, ct) = bytes.split_at(NONCE_LEN);
        assert!(raw.decrypt(XNonce::from_slice(n), Payload { msg: ct, aad: PURPOSE_ONCE.as_bytes() }).is_err());
    }

    #[test]
    fn a_session_is_its_token_digest_and_csrf_tokens_compare_whole() {
        let token = new_token().unwrap();
        assert_eq!(token.len(), 64);
        assert_ne!(token, new_token().unwrap());
        let row = new_row(&token, "mk_1", &SessionCredential::Key("d".into()), 5).unwrap();
        assert_eq!(row.id, keygate_proto::token::digest(&token));
        assert_ne!(row.id, token, "the row does not hold the token");
        assert_eq!((row.created_ms, row.seen_ms, row.expires_ms), (5, 5, 5 + 12 * 3_600_000));
        for bad in ["", "zz", &token[..63], &token.to_uppercase(), &format!("{token}0")] {
            assert!(id_of(bad).is_none(), "{bad}");
        }
        let s = Session::of_row(&row);
        assert!(s.credential == SessionCredential::Key("d".into()));
        assert_eq!(s.csrf.len(), 64);
        assert!(s.csrf_matches(&s.csrf.clone()));
        assert!(!s.csrf_matches(""));
        assert!(!s.csrf_matches(&s.csrf[..63]));
        let boot = Session::of_row(&SessionRow { actor: "bootstrap".into(), ..row });
        assert!(boot.credential == SessionCredential::Bootstrap("d".into()));
    }

    #[test]
    fn the_admin_token_fingerprint_needs_the_master_key() {
        let f = Fingerprinter::derive(&[1u8; 32]);
        let a = f.fingerprint("admin");
        assert_eq!(a.len(), 64);
        assert_eq!(a, f.fingerprint("admin"));
        assert_ne!(a, f.fingerprint("admin2"));
        assert_ne!(a, Fingerprinter::derive(&[2u8; 32]).fingerprint("admin"));
        assert_ne!(a, keygate_proto::token::digest("admin"), "not a plain digest");
    }
}
