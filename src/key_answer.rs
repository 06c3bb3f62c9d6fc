//! A store answer about one key as the worker holds it: the part every key of
//! a configuration shares (one `Rc<Lookup>` for them all, see `intern`) and
//! the key's own facts beside it, so that the cache keeps those inline.
//!
//! `KeyAnswer` derefs to the shared `Lookup` for everything but the key's own
//! facts: its `key` and `version` fields shadow the shared answer's, which may
//! be blank (read `answer.key`, never `(*answer).key`).

use std::ops::Deref;
use std::rc::Rc;

use keygate_proto::lookup::Lookup;

#[derive(Debug, Clone, PartialEq)]
pub struct KeyAnswer {
    shared: Rc<Lookup>,
    /// The store's change counter at the time of the answer.
    pub version: u64,
    /// Present when the key exists (whatever its status); its configuration
    /// is the shared answer's (`config_id`).
    pub key: Option<KeyFacts>,
}

/// What the store says about the key itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyFacts {
    pub id: KeyId,
    /// Unix seconds after which this token stops working.
    pub valid_until: Option<i64>,
}

/// An access key id: `ak_` and 24 lowercase hex digits (as the store makes
/// them, `new_id`) kept as text without a heap allocation; any other as is.
#[derive(Clone, PartialEq, Eq)]
pub enum KeyId {
    Made([u8; MADE_LEN]),
    Other(Box<str>),
}

const PREFIX: &[u8] = b"ak_";
/// The 24 hex digits of a made id, as bytes.
pub const PACKED_LEN: usize = 12;
const MADE_LEN: usize = 3 + 2 * PACKED_LEN;

impl KeyId {
    pub fn new(id: &str) -> KeyId {
        match pack(id.as_bytes()) {
            Some(packed) => KeyId::unpack(&packed),
            None => KeyId::Other(id.into()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            // Always ASCII (`unpack`).
            KeyId::Made(text) => std::str::from_utf8(text).unwrap_or_default(),
            KeyId::Other(id) => id,
        }
    }

    /// The 12 bytes a made id packs into (`None`: another id).
    pub fn packed(&self) -> Option<[u8; PACKED_LEN]> {
        match self {
            KeyId::Made(text) => pack(text),
            KeyId::Other(_) => None,
        }
    }

    pub fn unpack(packed: &[u8; PACKED_LEN]) -> KeyId {
        let mut text = [0u8; MADE_LEN];
        let (prefix, digits) = text.split_at_mut(PREFIX.len());
        prefix.copy_from_slice(PREFIX);
        // Cannot fail: the output is exactly twice the input.
        let _ = hex::encode_to_slice(packed, digits);
        KeyId::Made(text)
    }
}

/// A made id's 12 bytes, only if it round-trips exactly (lowercase hex).
fn pack(id: &[u8]) -> Option<[u8; PACKED_LEN]> {
    let digits = id.strip_prefix(PREFIX)?;
    if digits.len() != 2 * PACKED_LEN || !digits.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    let mut packed = [0u8; PACKED_LEN];
    hex::decode_to_slice(digits, &mut packed).ok()?;
    Some(packed)
}

impl Deref for KeyId {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl std::fmt::Debug for KeyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.as_str().fmt(f)
    }
}

impl KeyAnswer {
    /// A store answer kept whole: the shared part is its own.
    pub fn whole(lookup: Lookup) -> KeyAnswer {
        KeyAnswer::of(Rc::new(lookup))
    }

    /// The key's facts read from `shared` itself (a whole answer).
    pub(crate) fn of(shared: Rc<Lookup>) -> KeyAnswer {
        let key = shared.key.as_ref().map(|k| KeyFacts { id: KeyId::new(&k.id), valid_until: k.valid_until });
        KeyAnswer { version: shared.version, key, shared }
    }

    /// `shared` with the key's own facts beside it (`shared` blank there:
    /// `Interner::answer`).
    pub(crate) fn split(shared: Rc<Lookup>, version: u64, key: Option<KeyFacts>) -> KeyAnswer {
        KeyAnswer { shared, version, key }
    }

    /// The answer every key of the configuration shares.
    pub(crate) fn shared(&self) -> &Rc<Lookup> {
        &self.shared
    }

    pub fn config_id(&self) -> Option<&str> {
        self.shared.key.as_ref().and_then(|k| k.config_id.as_deref())
    }
}

impl Deref for KeyAnswer {
    type Target = Lookup;
    fn deref(&self) -> &Lookup {
        &self.shared
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_ids_pack_into_12_bytes_and_back() {
        let id = "ak_0197a3b2c4d5e65f3a9c0e1d";
        let k = KeyId::new(id);
        assert!(matches!(k, KeyId::Made(_)));
        assert_eq!(k.as_str(), id);
        assert_eq!(KeyId::unpack(&k.packed().unwrap()).as_str(), id);
    }

    #[test]
    fn other_ids_are_kept_as_they_are() {
        for id in
            ["ak_1", "ak_0197A3B2C4D5E65F3A9C0E1D", "ak_0197a3b2c4d5e65f3a9c0e1", "xk_0197a3b2c4d5e65f3a9c0e1d", ""]
        {
            let k = KeyId::new(id);
            assert!(matches!(k, KeyId::Other(_)), "{id}");
            assert_eq!((k.as_str(), k.packed()), (id, None));
        }
    }
}
