//! Concurrency caps (`requestLimits.maxConcurrentRequests`): how many of a
//! key's requests one Envoy carries at once.
//!
//! Each key has one shared-data entry per Envoy, written with
//! compare-and-swap by every VM (worker) of that Envoy. It holds each VM's
//! count of the key's requests in flight, and when that VM last vouched for
//! it. A VM vouches on its tick while it holds slots, so the slots of a VM
//! that died (a crash, a reload) stop counting `STALE_MS` later instead of
//! leaking. A request takes a slot before it is admitted and gives it back
//! when it ends, however it ends (the client gone mid-stream included).

/// A VM that has not vouched for its slots for this long is gone.
pub const STALE_MS: u64 = 5_000;
/// How often a VM vouches for the slots it holds.
pub const VOUCH_MS: u64 = 1_000;
/// At most this many VMs in one entry (more would be a bug or an attack on
/// shared data; the oldest go).
const MAX_VMS: usize = 256;

/// One VM's part of a key's entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Share {
    pub vm: u64,
    pub count: u32,
    pub vouched_ms: u64,
}

/// A key's entry: `vm:count:vouched_ms` per VM, `;`-separated (hex VM tag).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Slots {
    pub shares: Vec<Share>,
}

impl Slots {
    /// Unreadable parts are dropped (they count as nobody's).
    pub fn parse(bytes: &[u8]) -> Slots {
        let text = std::str::from_utf8(bytes).unwrap_or("");
        let shares = text
            .split(';')
            .filter_map(|part| {
                let mut it = part.split(':');
                let vm = u64::from_str_radix(it.next()?, 16).ok()?;
                let count = it.next()?.parse().ok()?;
                let vouched_ms = it.next()?.parse().ok()?;
                it.next().is_none().then_some(Share { vm, count, vouched_ms })
            })
            .take(MAX_VMS)
            .collect();
        Slots { shares }
    }

    pub fn encode(&self) -> String {
        let parts: Vec<String> =
            self.shares.iter().map(|s| format!("{:x}:{}:{}", s.vm, s.count, s.vouched_ms)).collect();
        parts.join(";")
    }

    /// Requests in flight on live VMs.
    pub fn in_flight(&self, now_ms: u64) -> u64 {
        self.shares.iter().filter(|s| live(s, now_ms)).map(|s| u64::from(s.count)).sum()
    }

    /// Takes a slot for VM `vm` if fewer than `max` are in flight: the entry
    /// to write (gone VMs dropped), or `None` when the cap is reached.
    pub fn take(&self, vm: u64, max: u64, now_ms: u64) -> Option<Slots> {
        if self.in_flight(now_ms) >= max {
            return None;
        }
        let mut next = self.pruned(now_ms);
        match next.shares.iter_mut().find(|s| s.vm == vm) {
            Some(s) => {
                s.count = s.count.saturating_add(1);
                s.vouched_ms = now_ms;
            }
            None => next.shares.push(Share { vm, count: 1, vouched_ms: now_ms }),
        }
        Some(next)
    }

    /// Gives back one of VM `vm`'s slots.
    pub fn give_back(&self, vm: u64, now_ms: u64) -> Slots {
        self.with_count(vm, now_ms, |c| c.saturating_sub(1))
    }

    /// VM `vm` vouches that it holds `count` slots (0: its share goes).
    pub fn vouch(&self, vm: u64, count: u32, now_ms: u64) -> Slots {
        self.with_count(vm, now_ms, |_| count)
    }

    fn with_count(&self, vm: u64, now_ms: u64, f: impl Fn(u32) -> u32) -> Slots {
        let mut next = self.pruned(now_ms);
        if let Some(s) = next.shares.iter_mut().find(|s| s.vm == vm) {
            s.count = f(s.count);
            s.vouched_ms = now_ms;
        } else if f(0) > 0 {
            next.shares.push(Share { vm, count: f(0), vouched_ms: now_ms });
        }
        next.shares.retain(|s| s.count > 0);
        next
    }

    fn pruned(&self, now_ms: u64) -> Slots {
        Slots { shares: self.shares.iter().copied().filter(|s| live(s, now_ms) && s.count > 0).collect() }
    }
}

fn live(s: &Share, now_ms: u64) -> bool {
    now_ms.saturating_sub(s.vouched_ms) < STALE_MS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_taken_up_to_the_cap_and_given_back() {
        let s = Slots::default();
        let s = s.take(1, 2, 1_000).unwrap();
        let s = s.take(2, 2, 1_000).unwrap();
        assert_eq!(s.in_flight(1_000), 2);
        assert_eq!(s.take(1, 2, 1_000), None, "at the cap");
        let s = s.give_back(2, 1_100);
        assert_eq!(s.in_flight(1_100), 1);
        assert_eq!(s.shares.len(), 1, "an empty share goes");
        assert!(s.take(2, 2, 1_100).is_some());
    }

    #[test]
    fn a_vm_that_stops_vouching_stops_counting() {
        let s = Slots::default().take(7, 1, 0).unwrap();
        assert_eq!(s.take(8, 1, STALE_MS - 1), None, "still vouched for");
        let s = s.take(8, 1, STALE_MS).expect("the gone VM's slot is free");
        assert_eq!(s.shares, [Share { vm: 8, count: 1, vouched_ms: STALE_MS }], "and dropped");
        let s = s.vouch(8, 1, 2 * STALE_MS - 1);
        assert_eq!(s.in_flight(2 * STALE_MS + 100), 1, "vouched again");
    }

    #[test]
    fn entries_round_trip_and_garbage_counts_as_nobody() {
        let s = Slots {
            shares: vec![Share { vm: u64::MAX, count: 3, vouched_ms: 42 }, Share { vm: 1, count: 1, vouched_ms: 7 }],
        };
        assert_eq!(Slots::parse(s.encode().as_bytes()), s);
        assert_eq!(Slots::parse(b"zz:1:2;1:x:3;2:1:3:4;;").shares, []);
        assert_eq!(Slots::parse(&[0xff, 0xfe]).shares, []);
        let many = (0..1_000).map(|i| format!("{i:x}:1:0")).collect::<Vec<_>>().join(";");
        assert_eq!(Slots::parse(many.as_bytes()).shares.len(), MAX_VMS);
    }
}
