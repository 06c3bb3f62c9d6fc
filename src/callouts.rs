//! Every store callout a worker has in flight, keyed by the callout token:
//! what it is for, which context Envoy will hand the answer to, and (for key
//! lookups) who waits for it.
//!
//! Envoy hands a callout's answer to the context that made it, and drops it
//! when that context is gone. So each entry knows its owner: when a request
//! ends while others still wait on a lookup it owns, the lookup becomes an
//! orphan and the root context (which lives as long as the VM) asks again.

use std::collections::HashMap;

use keygate_proto::lookup::{Limits, UsageRecord};

use crate::errors::Dialect;

/// What a callout was made for.
#[derive(Debug, Clone, PartialEq)]
pub enum Purpose {
    /// The key lookup of a token digest.
    Lookup(String),
    /// The budget reservation of one request (by its context id).
    Reserve(u32),
    /// What the key of one request (by its context id) may learn about itself.
    SelfCheck(u32),
    /// A share of a key's rate-limit window for this Envoy.
    Lease(LeaseAsk),
    /// The change feed.
    FeedPoll,
    /// A batch of usage records, kept until the store acknowledges it.
    UsageBatch(Vec<UsageRecord>),
}

/// What a lease callout asked for, and what the request that asked needs.
#[derive(Debug, Clone, PartialEq)]
pub struct LeaseAsk {
    pub key_id: String,
    pub limits: Limits,
    /// (requests, tokens) the asking request must find in the pool.
    pub needed: (u64, u64),
    /// When it was sent (the window ends `resetMs` after that, at the latest).
    pub sent_ms: u64,
}

impl LeaseAsk {
    /// Requests waiting on a lease share one slot per key with lookups
    /// (digests are hex: no clash).
    pub fn slot(key_id: &str) -> String {
        format!("lease:{key_id}")
    }
}

/// A gate waiting for a lookup while its request's body uploads: a refusal
/// is answered through it at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GateWaiter {
    pub gate: u32,
    pub dialect: Dialect,
    pub request_id: String,
}

/// Who waits for a key lookup.
#[derive(Debug, Default, PartialEq)]
pub struct Waiting {
    /// Requests (by context id) paused on the answer.
    pub requests: Vec<u32>,
    pub gates: Vec<GateWaiter>,
}

impl Waiting {
    fn needed(&self) -> bool {
        !self.requests.is_empty() || !self.gates.is_empty()
    }
}

/// A callout's answer, matched to what it was for.
#[derive(Debug, PartialEq)]
pub enum Answered {
    Lookup { digest: String, waiting: Waiting },
    Lease { ask: LeaseAsk, waiting: Waiting },
    Reserve(u32),
    SelfCheck(u32),
    FeedPoll,
    UsageBatch(Vec<UsageRecord>),
}

#[derive(Debug)]
struct Entry {
    purpose: Purpose,
    /// The context Envoy hands the answer to.
    owner: u32,
    /// When it was made: past its deadline it counts as unanswered.
    sent_ms: u64,
}

#[derive(Debug, Default)]
pub struct Callouts {
    entries: crate::id_map::IdMap<Entry>,
    /// Callout tokens by owning context, so that a context's end costs
    /// what it owned, not a walk over everything in flight.
    owned: crate::id_map::IdMap<Vec<u32>>,
    lookups: HashMap<String, Waiting>,
    /// The lookup each waiting request or gate waits for.
    waits: crate::id_map::IdMap<String>,
    /// Lookups whose owner went away while others wait: asked again.
    orphans: Vec<String>,
    /// Requests whose reservation the root context files (see `worker::request`).
    reserve_queue: Vec<u32>,
    /// Requests to admit again on the tick: their lease was lost with its
    /// owner, or is for the root context to ask.
    readmit: Vec<u32>,
}

impl Callouts {
    /// Records a callout just made; context `owner` gets its answer.
    pub fn started(&mut self, token: u32, owner: u32, purpose: Purpose, now_ms: u64) {
        match &purpose {
            Purpose::Lookup(digest) => {
                self.lookups.entry(digest.clone()).or_default();
            }
            Purpose::Lease(ask) => {
                self.lookups.entry(LeaseAsk::slot(&ask.key_id)).or_default();
            }
            _ => {}
        }
        self.entries.insert(token, Entry { purpose, owner, sent_ms: now_ms });
        self.owned.entry(owner).or_default().push(token);
    }

    pub fn lookup_in_flight(&self, digest: &str) -> bool {
        self.lookups.contains_key(digest)
    }

    /// Waits for the lookup of `digest` (which must be in flight).
    pub fn wait_request(&mut self, digest: &str, request: u32) -> bool {
        let Some(w) = self.lookups.get_mut(digest) else { return false };
        w.requests.push(request);
        self.waits.insert(request, digest.to_string());
        true
    }

    pub fn wait_gate(&mut self, digest: &str, gate: GateWaiter) -> bool {
        let Some(w) = self.lookups.get_mut(digest) else { return false };
        self.waits.insert(gate.gate, digest.to_string());
        w.gates.push(gate);
        true
    }

    /// Context `id` no longer waits (a gate that handed its request over,
    /// or any context that ended).
    pub fn stop_waiting(&mut self, id: u32) {
        let Some(digest) = self.waits.remove(&id) else { return };
        if let Some(w) = self.lookups.get_mut(&digest) {
            w.requests.retain(|r| *r != id);
            w.gates.retain(|g| g.gate != id);
        }
    }

    /// Whether a callout for `pred`'s purpose is in flight (feed, usage).
    pub fn any(&self, pred: impl Fn(&Purpose) -> bool) -> bool {
        self.entries.values().any(|e| pred(&e.purpose))
    }

    /// The answer to `token` arrived: what it was for, and who waited.
    pub fn answered(&mut self, token: u32) -> Option<Answered> {
        let entry = self.entries.remove(&token)?;
        if let Some(tokens) = self.owned.get_mut(&entry.owner) {
            tokens.retain(|t| *t != token);
            if tokens.is_empty() {
                self.owned.remove(&entry.owner);
            }
        }
        Some(self.resolve(entry.purpose))
    }

    fn resolve(&mut self, purpose: Purpose) -> Answered {
        match purpose {
            Purpose::Lookup(digest) => {
                let waiting = self.lookups.remove(&digest).unwrap_or_default();
                for id in waiting.requests.iter().copied().chain(waiting.gates.iter().map(|g| g.gate)) {
                    self.waits.remove(&id);
                }
                Answered::Lookup { digest, waiting }
            }
            Purpose::Lease(ask) => {
                let waiting = self.lookups.remove(&LeaseAsk::slot(&ask.key_id)).unwrap_or_default();
                for id in &waiting.requests {
                    self.waits.remove(id);
                }
                Answered::Lease { ask, waiting }
            }
            Purpose::Reserve(request) => Answered::Reserve(request),
            Purpose::SelfCheck(request) => Answered::SelfCheck(request),
            Purpose::FeedPoll => Answered::FeedPoll,
            Purpose::UsageBatch(batch) => Answered::UsageBatch(batch),
        }
    }

    /// Context `id` is gone: it waits for nothing, and the answers it owns
    /// will never come. Lookups others still wait for become orphans; a usage
    /// batch it owned is returned, to be queued again.
    pub fn left(&mut self, id: u32) -> Vec<UsageRecord> {
        self.stop_waiting(id);
        let mut batch = Vec::new();
        for token in self.owned.remove(&id).unwrap_or_default() {
            let Some(entry) = self.entries.remove(&token) else { continue };
            match entry.purpose {
                Purpose::Lookup(digest) => {
                    if self.lookups.get(&digest).is_some_and(Waiting::needed) {
                        self.orphans.push(digest);
                    } else {
                        // Nobody waits: forgotten (the cache fills on the next miss).
                        self.lookups.remove(&digest);
                    }
                }
                Purpose::Lease(ask) => {
                    if let Answered::Lease { waiting, .. } = self.resolve(Purpose::Lease(ask)) {
                        self.readmit.extend(waiting.requests);
                    }
                }
                Purpose::UsageBatch(records) => batch.extend(records),
                // A request's call owned by a context that went (a root
                // replaced by a reconfiguration): made again on the next tick
                // (a request that is gone itself is skipped there).
                Purpose::Reserve(request) => self.reserve_queue.push(request),
                Purpose::SelfCheck(request) => self.readmit.push(request),
                Purpose::FeedPoll => {}
            }
        }
        batch
    }

    /// Callouts past their deadline (Envoy answers every callout by its
    /// timeout; one that did not come was lost with its owner): each comes
    /// back as an unanswered callout.
    pub fn expired(&mut self, now_ms: u64, deadline_ms: u64) -> Vec<Answered> {
        let late: Vec<u32> = self
            .entries
            .iter()
            .filter(|(_, e)| now_ms.saturating_sub(e.sent_ms) > deadline_ms)
            .map(|(t, _)| *t)
            .collect();
        late.into_iter().filter_map(|t| self.answered(t)).collect()
    }

    /// Puts the waiters of an answered lookup back on its next callout (a
    /// retry on another store replica).
    pub fn restore(&mut self, digest: &str, waiting: Waiting) {
        for id in waiting.requests.iter().copied().chain(waiting.gates.iter().map(|g| g.gate)) {
            self.waits.insert(id, digest.to_string());
        }
        let w = self.lookups.entry(digest.to_string()).or_default();
        w.requests.extend(waiting.requests);
        w.gates.extend(waiting.gates);
    }

    /// Orphaned lookups to ask again, each still waited for.
    pub fn take_orphans(&mut self) -> Vec<String> {
        let mut orphans = std::mem::take(&mut self.orphans);
        orphans.retain(|d| self.lookups.get(d).is_some_and(Waiting::needed));
        orphans.dedup();
        orphans
    }

    /// A lookup could not be asked again: its waiters, to be answered now.
    pub fn abandon(&mut self, digest: &str) -> Waiting {
        let Answered::Lookup { waiting, .. } = self.resolve(Purpose::Lookup(digest.to_string())) else {
            return Waiting::default();
        };
        waiting
    }

    pub fn queue_reserve(&mut self, request: u32) {
        self.reserve_queue.push(request);
    }

    pub fn take_reserve_queue(&mut self) -> Vec<u32> {
        std::mem::take(&mut self.reserve_queue)
    }

    /// A request to admit again on the root context's tick.
    pub fn readmit_later(&mut self, request: u32) {
        self.readmit.push(request);
    }

    /// Requests whose lease was lost (or is for the root to ask), to admit again.
    pub fn take_readmit(&mut self) -> Vec<u32> {
        std::mem::take(&mut self.readmit)
    }

    /// The digests of the lookups someone waits for.
    pub fn lookups_waiting(&self) -> Vec<&str> {
        self.lookups.iter().filter(|(_, w)| w.needed()).map(|(d, _)| d.as_str()).collect()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty() && self.lookups.is_empty() && self.waits.is_empty() && self.owned.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(id: u32) -> GateWaiter {
        GateWaiter { gate: id, dialect: Dialect::OpenAi, request_id: format!("r{id}") }
    }

    #[test]
    fn concurrent_requests_for_one_key_share_one_lookup() {
        let mut c = Callouts::default();
        c.started(7, 1, Purpose::Lookup("d".into()), 0);
        assert!(c.wait_request("d", 1));
        assert!(c.lookup_in_flight("d"));
        assert!(c.wait_request("d", 2));
        assert!(c.wait_gate("d", gate(3)));
        let Some(Answered::Lookup { digest, waiting }) = c.answered(7) else { panic!("not a lookup") };
        assert_eq!((digest.as_str(), waiting.requests, waiting.gates.len()), ("d", vec![1, 2], 1));
        assert!(!c.lookup_in_flight("d") && c.is_empty(), "{c:?}");
    }

    #[test]
    fn a_lookup_whose_owner_left_is_asked_again_for_those_still_waiting() {
        let mut c = Callouts::default();
        c.started(7, 1, Purpose::Lookup("d".into()), 0);
        c.wait_request("d", 1);
        c.wait_request("d", 2);
        c.left(1);
        assert_eq!(c.answered(7), None, "its answer will never come");
        assert_eq!(c.take_orphans(), ["d"]);
        c.started(8, 0, Purpose::Lookup("d".into()), 0);
        let Some(Answered::Lookup { waiting, .. }) = c.answered(8) else { panic!("not a lookup") };
        assert_eq!(waiting.requests, [2]);
    }

    #[test]
    fn a_lookup_nobody_waits_for_is_not_asked_again() {
        let mut c = Callouts::default();
        c.started(7, 1, Purpose::Lookup("d".into()), 0);
        c.wait_request("d", 1);
        c.left(1);
        assert!(c.take_orphans().is_empty());
        assert!(!c.lookup_in_flight("d"));
        assert!(c.is_empty(), "nothing is left behind: {c:?}");
    }

    #[test]
    fn a_callout_past_its_deadline_comes_back_unanswered() {
        let mut c = Callouts::default();
        c.started(1, 0, Purpose::FeedPoll, 1_000);
        c.started(2, 5, Purpose::Lookup("d".into()), 1_500);
        c.wait_request("d", 5);
        assert!(c.expired(3_000, 2_000).is_empty());
        assert_eq!(c.expired(3_001, 2_000), [Answered::FeedPoll]);
        let late = c.expired(10_000, 2_000);
        assert_eq!(
            late,
            [Answered::Lookup { digest: "d".into(), waiting: Waiting { requests: vec![5], gates: vec![] } }]
        );
        assert_eq!(c.answered(2), None, "a late answer is ignored");
        assert!(c.is_empty(), "{c:?}");
    }

    #[test]
    fn a_waiter_that_leaves_is_not_answered() {
        let mut c = Callouts::default();
        c.started(7, 1, Purpose::Lookup("d".into()), 0);
        c.wait_request("d", 1);
        c.wait_request("d", 2);
        c.wait_gate("d", gate(5));
        c.left(2);
        c.stop_waiting(5);
        let Some(Answered::Lookup { waiting, .. }) = c.answered(7) else { panic!("not a lookup") };
        assert_eq!((waiting.requests, waiting.gates), (vec![1], vec![]));
    }

    #[test]
    fn reservations_feed_polls_and_batches_come_back_as_what_they_were() {
        let mut c = Callouts::default();
        c.started(1, 4, Purpose::Reserve(4), 0);
        c.started(2, 0, Purpose::FeedPoll, 0);
        let batch = vec![UsageRecord { request_id: "x".into(), ..UsageRecord::default() }];
        c.started(3, 0, Purpose::UsageBatch(batch.clone()), 0);
        assert!(c.any(|p| *p == Purpose::FeedPoll));
        assert_eq!(c.answered(1), Some(Answered::Reserve(4)));
        assert_eq!(c.answered(2), Some(Answered::FeedPoll));
        assert_eq!(c.answered(3), Some(Answered::UsageBatch(batch)));
        assert_eq!(c.answered(3), None, "an answer is handled once");
        assert!(!c.any(|p| *p == Purpose::FeedPoll));
    }

    #[test]
    fn requests_share_a_lease_and_a_lost_lease_sends_them_back_to_admission() {
        let mut c = Callouts::default();
        let ask = LeaseAsk { key_id: "ak_1".into(), limits: Limits::default(), needed: (1, 0), sent_ms: 0 };
        c.started(9, 3, Purpose::Lease(ask.clone()), 0);
        let slot = LeaseAsk::slot("ak_1");
        assert!(c.lookup_in_flight(&slot));
        c.wait_request(&slot, 3);
        c.wait_request(&slot, 4);
        c.left(3);
        assert_eq!(c.take_readmit(), [4]);
        assert!(c.is_empty(), "{c:?}");
        c.started(10, 0, Purpose::Lease(ask.clone()), 0);
        c.wait_request(&slot, 5);
        assert_eq!(
            c.answered(10),
            Some(Answered::Lease { ask, waiting: Waiting { requests: vec![5], gates: vec![] } })
        );
    }

    #[test]
    fn a_batch_whose_owner_left_is_handed_back() {
        let mut c = Callouts::default();
        let batch = vec![UsageRecord { request_id: "x".into(), ..UsageRecord::default() }];
        c.started(3, 9, Purpose::UsageBatch(batch.clone()), 0);
        assert_eq!(c.left(9), batch);
        assert!(c.is_empty());
    }
}
