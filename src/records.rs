//! Usage records: what a finished request cost, one record per upstream
//! attempt, and the bounded queue that holds them until the store
//! acknowledges a batch.

use std::collections::VecDeque;

use keygate_proto::lookup::{ModelRef, UsageRecord};

use crate::failover::Attempt;
use crate::usage::Usage;

/// Each worker sends its usage records at least this often, and sooner
/// (next tick) once a full batch is waiting.
pub const FLUSH_INTERVAL_MS: u64 = 1_000;
/// Records kept while the store is unreachable; the oldest go first.
pub const MAX_QUEUED: usize = 20_000;
pub const BATCH: usize = 500;

/// Who served a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Served {
    pub key_id: String,
    pub config_id: Option<String>,
    pub provider: String,
    pub model: Option<String>,
    /// Provider and model of each fallback (`models`), in order: an
    /// attempt of leg `i > 0` is the `i - 1`th's.
    pub fallbacks: Vec<ModelRef>,
}

/// A request that went upstream (or holds a reservation) and is over.
#[derive(Debug)]
pub struct Finished {
    pub request_id: String,
    pub served: Served,
    pub attempts: Vec<Attempt>,
    /// What the provider reported.
    pub usage: Usage,
    /// The admission's estimate (input, output), counted when the provider
    /// served but reported nothing.
    pub estimate: (u64, u64),
    pub streaming: bool,
    pub started_ms: u64,
    pub ended_ms: u64,
    pub reservation: Option<String>,
}

/// Whether the final attempt was answered with success (nothing is free:
/// a served answer without usage counts as its estimate).
pub fn served_ok(attempts: &[Attempt]) -> bool {
    attempts.last().and_then(|a| a.status).is_some_and(|s| (200..300).contains(&s))
}

/// The tokens a finished request counts: the reported usage, else the
/// estimate for a served answer, else nothing.
pub fn tokens(usage: &Usage, served_ok: bool, estimate: (u64, u64)) -> (u64, u64) {
    match (usage.seen, served_ok) {
        (true, _) => (usage.input, usage.output),
        (false, true) => estimate,
        (false, false) => (0, 0),
    }
}

/// One record per attempt, tokens on the last; none for a request that
/// neither went upstream nor holds a reservation.
pub fn records(f: Finished) -> Vec<UsageRecord> {
    let (input, output) = tokens(&f.usage, served_ok(&f.attempts), f.estimate);
    let estimated = !f.usage.seen && served_ok(&f.attempts);
    let mut attempts = f.attempts;
    let last_attempt = attempts.pop();
    if last_attempt.is_none() && f.reservation.is_none() {
        return Vec::new();
    }
    let base = UsageRecord {
        request_id: f.request_id,
        access_key_id: f.served.key_id,
        config_id: f.served.config_id,
        provider: f.served.provider,
        model: f.served.model,
        streaming: f.streaming,
        started_ms: f.started_ms,
        ended_ms: f.ended_ms,
        ..UsageRecord::default()
    };
    // A fallback's attempt is its leg's provider and model.
    let fallbacks = f.served.fallbacks;
    let of_attempt = |i: usize, a: Attempt, base: UsageRecord| {
        let (provider, model) = match a.leg.checked_sub(1).and_then(|i| fallbacks.get(i)) {
            Some(m) => (m.provider.clone(), m.model.clone()),
            None => (base.provider.clone(), base.model.clone()),
        };
        UsageRecord {
            provider_key_id: Some(a.key_id),
            attempt: i as u32 + 1,
            status: a.status.unwrap_or(0),
            provider,
            model,
            ..base
        }
    };
    let earlier = attempts.len();
    let mut out: Vec<UsageRecord> = Vec::with_capacity(earlier + 1);
    for (i, a) in attempts.into_iter().enumerate() {
        out.push(of_attempt(i, a, base.clone()));
    }
    // The last attempt (or, for a request that never went out, the record
    // that settles its reservation) carries the usage.
    let mut last = match last_attempt {
        Some(a) => of_attempt(earlier, a, base),
        None => base,
    };
    last.final_attempt = true;
    last.input_tokens = input;
    last.output_tokens = output;
    last.estimated = estimated;
    last.cached_tokens = f.usage.cached;
    last.reasoning_tokens = f.usage.reasoning;
    last.reservation_id = f.reservation;
    out.push(last);
    out
}

/// Records waiting for the store, oldest first, bounded.
#[derive(Debug, Default)]
pub struct UsageQueue {
    records: VecDeque<UsageRecord>,
}

impl UsageQueue {
    /// Queues records; returns how many old ones were dropped to make room.
    pub fn push(&mut self, records: Vec<UsageRecord>) -> u64 {
        self.records.extend(records);
        let mut dropped = 0;
        while self.records.len() > MAX_QUEUED {
            self.records.pop_front();
            dropped += 1;
        }
        dropped
    }

    /// Whether to send a batch now, `since_ms` after the last one.
    pub fn due(&self, since_ms: u64) -> bool {
        !self.records.is_empty() && (since_ms >= FLUSH_INTERVAL_MS || self.records.len() >= BATCH)
    }

    pub fn take_batch(&mut self) -> Vec<UsageRecord> {
        let n = self.records.len().min(BATCH);
        self.records.drain(..n).collect()
    }

    /// Puts an unacknowledged batch back at the front.
    pub fn requeue(&mut self, batch: Vec<UsageRecord>) {
        for record in batch.into_iter().rev() {
            self.records.push_front(record);
        }
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn served() -> Served {
        Served {
            key_id: "ak_1".into(),
            config_id: Some("cfg_1".into()),
            provider: "openai".into(),
            model: None,
            fallbacks: vec![ModelRef { provider: "other".into(), model: Some("other-model".into()) }],
        }
    }

    fn finished(attempts: Vec<Attempt>, usage: Usage, reservation: Option<&str>) -> Finished {
        Finished {
            request_id: "req".into(),
            served: served(),
            attempts,
            usage,
            estimate: (100, 4096),
            streaming: false,
            started_ms: 1,
            ended_ms: 2,
            reservation: reservation.map(str::to_string),
        }
    }

    fn attempt(key: &str, status: Option<u16>) -> Attempt {
        Attempt { key_id: key.into(), status, leg: 0 }
    }

    #[test]
    fn a_fallback_attempt_is_recorded_under_its_provider_and_model() {
        let mut second = attempt("pk_other", Some(200));
        second.leg = 1;
        let recs = records(finished(vec![attempt("pk_a", Some(503)), second], Usage::default(), None));
        let who: Vec<(&str, Option<&str>, u32)> =
            recs.iter().map(|r| (r.provider.as_str(), r.model.as_deref(), r.attempt)).collect();
        assert_eq!(who, [("openai", None, 1), ("other", Some("other-model"), 2)]);
    }

    #[test]
    fn each_attempt_gets_a_record_and_the_last_carries_the_tokens() {
        let usage = Usage { seen: true, input: 10, output: 20, ..Usage::default() };
        let r = records(finished(vec![attempt("pk_a", Some(429)), attempt("pk_b", Some(200))], usage, Some("res_1")));
        assert_eq!(r.len(), 2);
        assert_eq!((r[0].attempt, r[0].status, r[0].final_attempt, r[0].input_tokens), (1, 429, false, 0));
        assert_eq!(r[0].provider_key_id.as_deref(), Some("pk_a"));
        assert_eq!((r[1].attempt, r[1].final_attempt, r[1].input_tokens, r[1].output_tokens), (2, true, 10, 20));
        assert_eq!(r[1].reservation_id.as_deref(), Some("res_1"));
        assert_eq!(r[0].reservation_id, None);
    }

    #[test]
    fn a_served_answer_without_usage_counts_its_estimate_marked_as_such() {
        let r = records(finished(vec![attempt("pk_a", Some(200))], Usage::default(), None));
        assert_eq!((r[0].input_tokens, r[0].output_tokens, r[0].estimated), (100, 4096, true));
        let failed = records(finished(vec![attempt("pk_a", Some(500))], Usage::default(), None));
        assert_eq!((failed[0].input_tokens, failed[0].output_tokens, failed[0].estimated), (0, 0, false));
        let usage = Usage { seen: true, input: 3, output: 4, ..Usage::default() };
        assert!(!records(finished(vec![attempt("pk_a", Some(200))], usage, None))[0].estimated);
    }

    #[test]
    fn a_reservation_is_settled_even_when_nothing_went_upstream() {
        let r = records(finished(vec![], Usage::default(), Some("res_9")));
        assert_eq!(r.len(), 1);
        assert_eq!((r[0].attempt, r[0].final_attempt, r[0].input_tokens), (0, true, 0));
        assert_eq!(r[0].reservation_id.as_deref(), Some("res_9"));
        assert!(records(finished(vec![], Usage::default(), None)).is_empty());
    }

    #[test]
    fn the_queue_is_bounded_and_a_failed_batch_goes_back_first() {
        let mut q = UsageQueue::default();
        let one = |id: &str| UsageRecord { request_id: id.into(), ..UsageRecord::default() };
        assert_eq!(q.push((0..MAX_QUEUED + 3).map(|i| one(&i.to_string())).collect()), 3);
        assert!(q.due(0), "a full batch is due at once");
        let batch = q.take_batch();
        assert_eq!((batch.len(), batch[0].request_id.as_str()), (BATCH, "3"));
        q.requeue(batch);
        assert_eq!(q.take_batch()[0].request_id, "3");
        let mut small = UsageQueue::default();
        small.push(vec![one("x")]);
        assert!(!small.due(FLUSH_INTERVAL_MS - 1) && small.due(FLUSH_INTERVAL_MS));
    }
}
