//! Each worker's cache of store answers, positive and negative.
//!
//! Freshness: an entry is used for at most `ttl` after it was fetched (the hard
//! bound on revocation latency); the change feed invalidates entries sooner.
//! With `stale_if_error`, an *approval* may be used up to that much longer
//! while the store is unreachable; a refusal is never extended, and an entry
//! the change feed invalidated is gone, so a revoked key is never served stale.
//! Size: at most `max_entries`. When it is full, the oldest-fetched eighth goes
//! in one pass (no insertion-order queue: it cost more memory than the map).
//! Memory: an entry holds the key's own facts inline and one reference to the
//! answer its configuration's keys share (`intern`): no allocation of its own.

use std::collections::HashMap;
use std::rc::Rc;

use keygate_proto::lookup::{KeyStatus, Lookup};
use sha2::Digest;

use crate::key_answer::{KeyAnswer, KeyFacts, KeyId, PACKED_LEN};

/// Stand-ins in an entry's `valid_until`: the key has no expiry; the key's
/// facts are its shared answer's (a whole answer, see `inline`).
const NO_EXPIRY: i64 = i64::MIN;
const WHOLE: i64 = i64::MIN + 1;

/// A key's facts as an entry keeps them, `None` when they do not fit (an id
/// the store does not make, or an expiry 292 billion years ago): the key's
/// answer is then kept whole.
pub(crate) fn inline(key: &KeyFacts) -> Option<(i64, [u8; PACKED_LEN])> {
    let valid_until = match key.valid_until {
        None => NO_EXPIRY,
        Some(t) if t > WHOLE => t,
        Some(_) => return None,
    };
    Some((valid_until, key.id.packed()?))
}

/// Whether `shared` is the whole answer of the key with facts `key`.
fn carries(shared: &Lookup, key: &KeyFacts) -> bool {
    shared.key.as_ref().is_some_and(|s| *s.id == *key.id && s.valid_until == key.valid_until)
}

/// 56 bytes in wasm32 with its key (64 natively): the key's facts inline,
/// the rest in the answer its configuration's keys share.
pub struct Entry {
    /// Blank where the fields below stand in, unless `valid_until` is `WHOLE`.
    shared: Rc<Lookup>,
    fetched_ms: u64,
    version: u64,
    valid_until: i64,
    id: [u8; PACKED_LEN],
}

impl Entry {
    /// `None` when the key's facts neither fit nor are its shared answer's.
    fn new(answer: &KeyAnswer, fetched_ms: u64) -> Option<Entry> {
        let (valid_until, id) = match &answer.key {
            None => (NO_EXPIRY, [0; PACKED_LEN]),
            Some(k) => match inline(k) {
                Some(inline) => inline,
                None if carries(answer.shared(), k) => (WHOLE, [0; PACKED_LEN]),
                None => return None,
            },
        };
        Some(Entry { shared: answer.shared().clone(), fetched_ms, version: answer.version, valid_until, id })
    }

    fn answer(&self) -> KeyAnswer {
        if self.valid_until == WHOLE {
            let mut whole = KeyAnswer::of(self.shared.clone());
            whole.version = self.version;
            return whole;
        }
        let key = self.shared.key.is_some().then(|| KeyFacts {
            id: KeyId::unpack(&self.id),
            valid_until: (self.valid_until != NO_EXPIRY).then_some(self.valid_until),
        });
        KeyAnswer::split(self.shared.clone(), self.version, key)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    Fresh,
    /// Past its TTL but inside the stale-if-error window; usable only while
    /// the store cannot be reached.
    Stale,
}

/// The first 128 bits of a token digest. Two tokens share a slot only if
/// their SHA-256 digests share that prefix: finding one for a given token is
/// a 2^128 search, and tokens are random. Half the memory of the full digest.
type Key = [u8; 16];

fn key(digest: &str) -> Key {
    let mut full = [0u8; 32];
    if hex::decode_to_slice(digest, &mut full).is_err() {
        // Not a digest we made; hash it so it still has a stable slot.
        full = sha2::Sha256::digest(digest.as_bytes()).into();
    }
    let mut k = [0u8; 16];
    k.copy_from_slice(&full[..16]);
    k
}

/// The most entries a cache is sized for up front: 131,072 entries take a
/// table of 262,144 slots, ~15 MB of wasm32 memory reserved (resident as
/// keys land). Past it the table grows as keys come.
const PRESIZE_MAX: usize = 1 << 17;

pub struct Cache {
    entries: HashMap<Key, Entry>,
    /// Digests the change feed invalidated, with the store version that did it,
    /// so that an answer fetched before that version is not cached.
    invalidated: HashMap<Key, u64>,
    max_entries: usize,
    ttl_ms: u64,
    stale_ms: u64,
}

impl Cache {
    pub fn new(max_entries: usize, ttl_ms: u64, stale_ms: u64) -> Cache {
        Cache {
            // Sized for the bound at once (up to `PRESIZE_MAX`): a growing
            // table would stop a request for a whole rehash (milliseconds at
            // 100,000 keys), and every table it outgrew stays in the VM's
            // memory, which never shrinks. Only the control bytes are
            // written now; a page of slots becomes resident when a key lands
            // in it.
            entries: HashMap::with_capacity(max_entries.clamp(1, PRESIZE_MAX)),
            invalidated: HashMap::new(),
            max_entries: max_entries.max(1),
            ttl_ms,
            stale_ms,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn get(&self, digest: &str, now_ms: u64) -> Option<(KeyAnswer, Freshness)> {
        let entry = self.entries.get(&key(digest))?;
        let age = now_ms.saturating_sub(entry.fetched_ms);
        if age < self.ttl_ms {
            return Some((entry.answer(), Freshness::Fresh));
        }
        let approval = entry.shared.status == KeyStatus::Active;
        (approval && age < self.ttl_ms + self.stale_ms).then(|| (entry.answer(), Freshness::Stale))
    }

    /// Caches an answer unless the change feed already reported a newer change
    /// of that key (the answer raced a revocation). Returns whether it was kept.
    pub fn insert(&mut self, digest: &str, answer: &KeyAnswer, now_ms: u64) -> bool {
        let k = key(digest);
        if self.invalidated.get(&k).is_some_and(|&v| v > answer.version) {
            return false;
        }
        let Some(entry) = Entry::new(answer, now_ms) else { return false };
        if self.entries.len() >= self.max_entries && !self.entries.contains_key(&k) {
            self.evict_oldest();
        }
        self.entries.insert(k, entry);
        true
    }

    /// Drops the oldest-fetched eighth of the bound (at least one entry): one
    /// pass over the map per `max_entries / 8` inserts while the cache is full.
    fn evict_oldest(&mut self) {
        let n = (self.max_entries / 8).max(1);
        let mut times: Vec<u64> = self.entries.values().map(|e| e.fetched_ms).collect();
        let Some(i) = n.checked_sub(1).filter(|i| *i < times.len()) else {
            self.entries.clear();
            return;
        };
        let (older, cutoff, _) = times.select_nth_unstable(i);
        let cutoff = *cutoff;
        // Everything older than the cutoff goes, and as many entries fetched in
        // the cutoff's own millisecond as the count still needs.
        let mut ties = n - older.iter().filter(|t| **t < cutoff).count();
        self.entries.retain(|_, e| match e.fetched_ms.cmp(&cutoff) {
            std::cmp::Ordering::Less => false,
            std::cmp::Ordering::Equal if ties > 0 => {
                ties -= 1;
                false
            }
            _ => true,
        });
    }

    /// The change feed says digest `d` changed at store version `v`. An
    /// entry fetched at that version or later already shows it.
    pub fn invalidate<'a>(&mut self, changes: impl IntoIterator<Item = (&'a String, u64)>) {
        for (d, version) in changes {
            let k = key(d);
            if self.entries.get(&k).is_some_and(|e| e.version < version) {
                self.entries.remove(&k);
            }
            let known = self.invalidated.entry(k).or_insert(version);
            *known = (*known).max(version);
        }
        // Bounded: an answer older than the TTL is never in flight anyway.
        if self.invalidated.len() > self.max_entries {
            self.invalidated.clear();
        }
    }

    /// The change feed said "anything may have changed up to `version`" (e.g.
    /// a provider changed): drops every entry fetched before it.
    pub fn invalidate_all(&mut self, version: u64) {
        self.entries.retain(|_, e| e.version >= version);
    }

    /// Drops entries that can no longer be used at all.
    pub fn purge_expired(&mut self, now_ms: u64) {
        let limit = self.ttl_ms + self.stale_ms;
        self.entries.retain(|_, e| now_ms.saturating_sub(e.fetched_ms) < limit);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(status: KeyStatus, version: u64) -> KeyAnswer {
        KeyAnswer::whole(Lookup {
            schema: 1,
            version,
            status,
            key: None,
            access: None,
            providers: Default::default(),
            limits: None,
            request_limits: None,
            budgeted: false,
        })
    }

    #[test]
    fn ttl_is_a_hard_bound_in_strict_mode() {
        let mut c = Cache::new(10, 1_000, 0);
        c.insert("a", &doc(KeyStatus::Active, 1), 0);
        assert_eq!(c.get("a", 999).map(|x| x.1), Some(Freshness::Fresh));
        assert!(c.get("a", 1_000).is_none());
    }

    #[test]
    fn stale_if_error_extends_approvals_only() {
        let mut c = Cache::new(10, 1_000, 5_000);
        c.insert("ok", &doc(KeyStatus::Active, 1), 0);
        c.insert("no", &doc(KeyStatus::Unknown, 1), 0);
        assert_eq!(c.get("ok", 3_000).map(|x| x.1), Some(Freshness::Stale));
        assert!(c.get("ok", 6_000).is_none());
        assert!(c.get("no", 3_000).is_none());
    }

    #[test]
    fn invalidation_removes_and_blocks_older_answers() {
        let mut c = Cache::new(10, 1_000, 5_000);
        c.insert("a", &doc(KeyStatus::Active, 1), 0);
        c.invalidate([(&"a".to_string(), 5)]);
        assert!(c.get("a", 1).is_none());
        // An answer fetched before the change (version 4) raced it: not cached.
        assert!(!c.insert("a", &doc(KeyStatus::Active, 4), 2));
        assert!(c.get("a", 3).is_none());
        assert!(c.insert("a", &doc(KeyStatus::Disabled, 5), 4));
        assert!(c.get("a", 5).is_some());
        // A change the entry already reflects does not drop it.
        c.invalidate([(&"a".to_string(), 5)]);
        assert!(c.get("a", 5).is_some());
    }

    #[test]
    fn invalidate_all_keeps_answers_newer_than_the_change() {
        let mut c = Cache::new(10, 1_000, 0);
        c.insert("old", &doc(KeyStatus::Active, 3), 0);
        c.insert("new", &doc(KeyStatus::Active, 9), 0);
        c.invalidate_all(9);
        assert!(c.get("old", 1).is_none());
        assert!(c.get("new", 1).is_some());
    }

    #[test]
    fn size_is_bounded_and_oldest_goes_first() {
        let mut c = Cache::new(3, 10_000, 0);
        for (i, d) in ["a", "b", "c", "d"].iter().enumerate() {
            c.insert(d, &doc(KeyStatus::Unknown, 1), i as u64);
        }
        assert_eq!(c.len(), 3);
        assert!(c.get("a", 5).is_none());
        assert!(c.get("d", 5).is_some());
        for i in 0..10_000u64 {
            c.insert(&format!("k{i}"), &doc(KeyStatus::Unknown, 1), 10 + i);
        }
        assert_eq!(c.len(), 3);
        assert!(c.get("k9999", 20_000).is_some());
    }

    #[test]
    fn a_full_cache_drops_its_oldest_eighth_at_once() {
        let mut c = Cache::new(16, 1_000_000, 0);
        // Fetched in pairs: entries 0 and 1 at t=0, 2 and 3 at t=1, ...
        for i in 0..16u64 {
            c.insert(&format!("k{i}"), &doc(KeyStatus::Active, 1), i / 2);
        }
        assert_eq!(c.len(), 16);
        // Full: the oldest two (t=0) go, the newcomer stays.
        c.insert("new", &doc(KeyStatus::Active, 1), 100);
        assert_eq!(c.len(), 15);
        assert!(c.get("k0", 100).is_none() && c.get("k1", 100).is_none());
        assert!((2..16).all(|i| c.get(&format!("k{i}"), 100).is_some()));
        assert!(c.get("new", 100).is_some());
        // Ties at the cutoff: only as many as the count needs.
        let mut c = Cache::new(16, 1_000_000, 0);
        for i in 0..16u64 {
            c.insert(&format!("k{i}"), &doc(KeyStatus::Active, 1), 7);
        }
        c.insert("new", &doc(KeyStatus::Active, 1), 8);
        assert_eq!(c.len(), 15);
    }

    #[test]
    fn reinserting_refreshes_without_growing() {
        let mut c = Cache::new(2, 10_000, 0);
        for t in 0..100 {
            c.insert("a", &doc(KeyStatus::Active, 1), t);
        }
        c.insert("b", &doc(KeyStatus::Active, 1), 200);
        assert_eq!(c.len(), 2);
        assert!(c.get("a", 201).is_some());
    }

    #[test]
    fn a_keys_own_facts_come_back_from_its_entry() {
        let mut i = crate::intern::Interner::default();
        let made = "ak_0197a3b2c4d5e65f3a9c0e1d";
        let cases = [
            (made, "null"),
            (made, "1800000000"),
            (made, "-9223372036854775808"),
            (made, "-9223372036854775807"),
            (made, "-9223372036854775806"),
            ("ak_1", "1800000000"),
        ];
        for (n, (id, until)) in cases.into_iter().enumerate() {
            let json = format!(
                r#"{{"schema":1,"version":{n},"status":"active","key":{{"id":"{id}","configId":"akc_1","validUntil":{until}}}}}"#
            );
            let lookup: Lookup = serde_json::from_str(&json).unwrap();
            let answer = i.answer(lookup.clone());
            let mut c = Cache::new(10, 1_000, 0);
            c.insert("d", &answer, 0);
            let (got, _) = c.get("d", 1).unwrap();
            assert_eq!(got, answer, "{id} {until}");
            let k = got.key.as_ref().unwrap();
            let want = lookup.key.as_ref().unwrap();
            assert_eq!((k.id.as_str(), k.valid_until, got.version), (want.id.as_str(), want.valid_until, n as u64));
            assert_eq!(got.config_id(), Some("akc_1"));
        }
    }

    #[test]
    fn facts_that_fit_nowhere_are_not_cached() {
        let mut blank = doc(KeyStatus::Active, 1).shared().as_ref().clone();
        blank.key = Some(keygate_proto::lookup::KeyInfo { id: String::new(), config_id: None, valid_until: None });
        let odd = KeyFacts { id: KeyId::new("ak_1"), valid_until: None };
        let mut c = Cache::new(10, 1_000, 0);
        assert!(!c.insert("a", &KeyAnswer::split(Rc::new(blank), 1, Some(odd)), 0));
        assert!(c.get("a", 1).is_none());
    }

    #[test]
    fn an_entry_holds_no_more_than_its_facts_and_one_reference() {
        // With its 16-byte digest: 56 bytes in wasm32 (4-byte `Rc`).
        let bound = if cfg!(target_pointer_width = "32") { 56 } else { 64 };
        assert!(std::mem::size_of::<(Key, Entry)>() <= bound, "{}", std::mem::size_of::<(Key, Entry)>());
    }

    #[test]
    fn clear_and_purge() {
        let mut c = Cache::new(10, 1_000, 0);
        c.insert("a", &doc(KeyStatus::Active, 1), 0);
        c.insert("b", &doc(KeyStatus::Active, 1), 900);
        c.purge_expired(1_500);
        assert_eq!(c.len(), 1);
        c.invalidate_all(2);
        assert!(c.is_empty());
    }
}
