//! Each worker's cache of store answers, positive and negative.
//!
//! Freshness: an entry is used for at most `ttl` after it was fetched (the hard
//! bound on revocation latency); the change feed invalidates entries sooner.
//! With `stale_if_error`, an *approval* may be used up to that much longer
//! while the store is unreachable; a refusal is never extended, and an entry
//! the change feed invalidated is gone, so a revoked key is never served stale.
//! Size: at most `max_entries`; the oldest-fetched entry is evicted first.

use std::collections::{HashMap, VecDeque};
use std::rc::Rc;

use keygate_proto::lookup::{KeyStatus, Lookup};
use sha2::Digest;

pub struct Entry {
    pub lookup: Rc<Lookup>,
    fetched_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    Fresh,
    /// Past its TTL but inside the stale-if-error window; usable only while
    /// the store cannot be reached.
    Stale,
}

/// A token digest in binary: half the memory of its hex form.
type Key = [u8; 32];

fn key(digest: &str) -> Key {
    let mut k = [0u8; 32];
    if hex::decode_to_slice(digest, &mut k).is_err() {
        // Not a digest we made; hash it so it still has a stable slot.
        k = sha2::Sha256::digest(digest.as_bytes()).into();
    }
    k
}

pub struct Cache {
    entries: HashMap<Key, Entry>,
    /// Insertion order for eviction; may hold superseded duplicates, compacted
    /// when it grows past twice the bound.
    order: VecDeque<(Key, u64)>,
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
            entries: HashMap::new(),
            order: VecDeque::new(),
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

    pub fn get(&self, digest: &str, now_ms: u64) -> Option<(Rc<Lookup>, Freshness)> {
        let entry = self.entries.get(&key(digest))?;
        let age = now_ms.saturating_sub(entry.fetched_ms);
        if age < self.ttl_ms {
            return Some((entry.lookup.clone(), Freshness::Fresh));
        }
        let approval = entry.lookup.status == KeyStatus::Active;
        (approval && age < self.ttl_ms + self.stale_ms).then(|| (entry.lookup.clone(), Freshness::Stale))
    }

    /// Caches an answer unless the change feed already reported a newer change
    /// of that key (the answer raced a revocation). Returns whether it was kept.
    pub fn insert(&mut self, digest: &str, lookup: Rc<Lookup>, now_ms: u64) -> bool {
        let k = key(digest);
        if self.invalidated.get(&k).is_some_and(|&v| v > lookup.version) {
            return false;
        }
        while self.entries.len() >= self.max_entries && !self.entries.contains_key(&k) {
            if !self.evict_oldest() {
                break;
            }
        }
        self.entries.insert(k, Entry { lookup, fetched_ms: now_ms });
        self.order.push_back((k, now_ms));
        if self.order.len() > 2 * self.max_entries {
            let entries = &self.entries;
            self.order.retain(|(d, t)| entries.get(d).is_some_and(|e| e.fetched_ms == *t));
        }
        true
    }

    fn evict_oldest(&mut self) -> bool {
        while let Some((digest, fetched)) = self.order.pop_front() {
            if self.entries.get(&digest).is_some_and(|e| e.fetched_ms == fetched) {
                self.entries.remove(&digest);
                return true;
            }
        }
        false
    }

    /// The change feed says digest `d` changed at store version `v`. An
    /// entry fetched at that version or later already shows it.
    pub fn invalidate<'a>(&mut self, changes: impl IntoIterator<Item = (&'a String, u64)>) {
        for (d, version) in changes {
            let k = key(d);
            if self.entries.get(&k).is_some_and(|e| e.lookup.version < version) {
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
        self.entries.retain(|_, e| e.lookup.version >= version);
        if self.entries.is_empty() {
            self.order.clear();
        }
    }

    /// Drops entries that can no longer be used at all.
    pub fn purge_expired(&mut self, now_ms: u64) {
        let limit = self.ttl_ms + self.stale_ms;
        self.entries.retain(|_, e| now_ms.saturating_sub(e.fetched_ms) < limit);
        if self.entries.is_empty() {
            self.order.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(status: KeyStatus, version: u64) -> Rc<Lookup> {
        Rc::new(Lookup {
            schema: 1,
            version,
            status,
            key: None,
            access: None,
            providers: Default::default(),
            limits: None,
            budgeted: false,
        })
    }

    #[test]
    fn ttl_is_a_hard_bound_in_strict_mode() {
        let mut c = Cache::new(10, 1_000, 0);
        c.insert("a", doc(KeyStatus::Active, 1), 0);
        assert_eq!(c.get("a", 999).map(|x| x.1), Some(Freshness::Fresh));
        assert!(c.get("a", 1_000).is_none());
    }

    #[test]
    fn stale_if_error_extends_approvals_only() {
        let mut c = Cache::new(10, 1_000, 5_000);
        c.insert("ok", doc(KeyStatus::Active, 1), 0);
        c.insert("no", doc(KeyStatus::Unknown, 1), 0);
        assert_eq!(c.get("ok", 3_000).map(|x| x.1), Some(Freshness::Stale));
        assert!(c.get("ok", 6_000).is_none());
        assert!(c.get("no", 3_000).is_none());
    }

    #[test]
    fn invalidation_removes_and_blocks_older_answers() {
        let mut c = Cache::new(10, 1_000, 5_000);
        c.insert("a", doc(KeyStatus::Active, 1), 0);
        c.invalidate([(&"a".to_string(), 5)]);
        assert!(c.get("a", 1).is_none());
        // An answer fetched before the change (version 4) raced it: not cached.
        assert!(!c.insert("a", doc(KeyStatus::Active, 4), 2));
        assert!(c.get("a", 3).is_none());
        assert!(c.insert("a", doc(KeyStatus::Disabled, 5), 4));
        assert!(c.get("a", 5).is_some());
        // A change the entry already reflects does not drop it.
        c.invalidate([(&"a".to_string(), 5)]);
        assert!(c.get("a", 5).is_some());
    }

    #[test]
    fn invalidate_all_keeps_answers_newer_than_the_change() {
        let mut c = Cache::new(10, 1_000, 0);
        c.insert("old", doc(KeyStatus::Active, 3), 0);
        c.insert("new", doc(KeyStatus::Active, 9), 0);
        c.invalidate_all(9);
        assert!(c.get("old", 1).is_none());
        assert!(c.get("new", 1).is_some());
    }

    #[test]
    fn size_is_bounded_and_oldest_goes_first() {
        let mut c = Cache::new(3, 10_000, 0);
        for (i, d) in ["a", "b", "c", "d"].iter().enumerate() {
            c.insert(d, doc(KeyStatus::Unknown, 1), i as u64);
        }
        assert_eq!(c.len(), 3);
        assert!(c.get("a", 5).is_none());
        assert!(c.get("d", 5).is_some());
        for i in 0..10_000u64 {
            c.insert(&format!("k{i}"), doc(KeyStatus::Unknown, 1), 10 + i);
        }
        assert_eq!(c.len(), 3);
        assert!(c.order.len() <= 6);
    }

    #[test]
    fn reinserting_refreshes_without_growing() {
        let mut c = Cache::new(2, 10_000, 0);
        for t in 0..100 {
            c.insert("a", doc(KeyStatus::Active, 1), t);
        }
        c.insert("b", doc(KeyStatus::Active, 1), 200);
        assert_eq!(c.len(), 2);
        assert!(c.get("a", 201).is_some());
    }

    #[test]
    fn clear_and_purge() {
        let mut c = Cache::new(10, 1_000, 0);
        c.insert("a", doc(KeyStatus::Active, 1), 0);
        c.insert("b", doc(KeyStatus::Active, 1), 900);
        c.purge_expired(1_500);
        assert_eq!(c.len(), 1);
        c.invalidate_all(2);
        assert!(c.is_empty());
    }
}
