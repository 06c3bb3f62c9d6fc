//! Maps keyed by Envoy's context ids and callout tokens: numbers Envoy hands
//! out in sequence, never a client's choice. They need no keyed hash (the
//! standard SipHash guards maps against chosen keys), and a request looks
//! its state up a dozen times in its life: a multiplication does.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// A `HashMap` keyed by a context id or a callout token.
pub type IdMap<V> = HashMap<u32, V, BuildHasherDefault<IdHasher>>;

/// Fibonacci hashing of one `u32`: spreads sequential ids over the table's
/// high bits, which hashbrown uses.
#[derive(Default)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u32` is used by `u32` keys; anything else still hashes.
        for &b in bytes {
            self.0 = (self.0.rotate_left(5) ^ u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    fn write_u32(&mut self, n: u32) {
        self.0 = u64::from(n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequential_ids_spread_and_are_found() {
        let mut map: IdMap<u32> = IdMap::default();
        for id in 0..10_000 {
            map.insert(id, id * 2);
        }
        assert!((0..10_000).all(|id| map.get(&id) == Some(&(id * 2))));
        let top = |id: u32| {
            let mut h = IdHasher::default();
            h.write_u32(id);
            h.finish() >> 57
        };
        let buckets: std::collections::HashSet<u64> = (0..1_000).map(top).collect();
        assert!(buckets.len() > 100, "the high bits differ for neighbouring ids");
    }
}
