//! The console's session: a stateless cookie, sealed with XChaCha20-Poly1305
//! under a key derived (HKDF-SHA256) from the master key. Every replica of a
//! store shares the master key, so a session opens on any of them; nothing is
//! kept server-side. The cookie holds the signed-in credential (a management
//! key or the bootstrap admin token), the expiry and the session's CSRF
//! secret. It is only ever sent back to `/console` (`Path`), never to another
//! site (`SameSite=Strict`), and never to scripts (`HttpOnly`).

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hkdf::Hkdf;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// How long a session lasts after signing in.
pub const SESSION_SECONDS: i64 = 12 * 3600;
/// How long a freshly created token waits for the page that shows it.
pub const ONCE_SECONDS: i64 = 120;

const NONCE_LEN: usize = 24;
/// Sealed values carry their purpose as associated data: a value sealed as
/// one kind never opens as another.
pub const PURPOSE_SESSION: &str = "keygate console session v1";
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

/// What the session cookie holds. No `Debug`: it holds the credential.
#[derive(Clone, Serialize, Deserialize)]
pub struct Session {
    /// The credential signed in with; every console request presents it to
    /// the management API, so a deleted or rotated credential ends its
    /// sessions at once.
    #[serde(rename = "c")]
    pub credential: String,
    /// Unix seconds after which the cookie is refused.
    #[serde(rename = "e")]
    pub expires: i64,
    /// The session's CSRF secret (hex), put in every form.
    #[serde(rename = "x")]
    pub csrf: String,
}

impl Session {
    pub fn new(credential: String, now: i64) -> Option<Session> {
        Some(Session { credential, expires: now + SESSION_SECONDS, csrf: crate::ids::random_hex(32).ok()? })
    }

    /// Whether a form's token is this session's (constant time).
    pub fn csrf_matches(&self, presented: &str) -> bool {
        !presented.is_empty() && bool::from(presented.as_bytes().ct_eq(self.csrf.as_bytes()))
    }
}

/// A token just created or rotated (or an alert webhook's secret just
/// generated or replaced), on its way to the one page that shows it: sealed,
/// bound to the key (webhook) and to the session (its CSRF secret), and
/// short-lived. The page that shows it deletes the cookie.
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_with_their_key_and_purpose() {
        let a = Sealer::derive(&[1u8; 32]);
        let s = a.seal(PURPOSE_SESSION, b"hello").unwrap();
        assert_ne!(s, a.seal(PURPOSE_SESSION, b"hello").unwrap(), "fresh nonce each time");
        assert_eq!(a.open(PURPOSE_SESSION, &s).unwrap(), b"hello");
        assert!(a.open(PURPOSE_ONCE, &s).is_none());
        let once = a.seal(PURPOSE_ONCE, b"token").unwrap();
        assert!(a.open(PURPOSE_SECRET_ONCE, &once).is_none());
        assert!(Sealer::derive(&[2u8; 32]).open(PURPOSE_SESSION, &s).is_none());
        // Any changed character breaks it.
        let mut t = s.clone().into_bytes();
        t[30] = if t[30] == b'0' { b'1' } else { b'0' };
        assert!(a.open(PURPOSE_SESSION, std::str::from_utf8(&t).unwrap()).is_none());
        assert!(a.open(PURPOSE_SESSION, "zz").is_none());
        assert!(a.open(PURPOSE_SESSION, "").is_none());
        // The cookie key is not the master key.
        let raw = chacha20poly1305::XChaCha20Poly1305::new(&[1u8; 32].into());
        let bytes = hex::decode(&s).unwrap();
        let (n, ct) = bytes.split_at(NONCE_LEN);
        assert!(raw.decrypt(XNonce::from_slice(n), Payload { msg: ct, aad: PURPOSE_SESSION.as_bytes() }).is_err());
    }

    #[test]
    fn csrf_tokens_compare_whole() {
        let s = Session::new("tok".into(), 0).unwrap();
        assert_eq!(s.csrf.len(), 64);
        assert!(s.csrf_matches(&s.csrf.clone()));
        assert!(!s.csrf_matches(""));
        assert!(!s.csrf_matches(&s.csrf[..63]));
        assert_eq!(s.expires, SESSION_SECONDS);
    }
}
