//! One Envoy worker's keygate: everything the filter does, against [`Host`].
//!
//! Envoy runs one VM per worker thread; the glue (`filter`) keeps one
//! `Worker` per VM and translates each callback into a call here. The worker
//! owns the key cache, the callouts in flight (`callouts`), the change-feed
//! position, the usage queue, the metric sums and every live request (by
//! context id), so that a callout's answer, a tick or another request's
//! lookup can reach any of them.
//!
//! - `request`: the keygate filter's side of a request, from headers to done;
//! - `gate`: the filter instance before Envoy's buffer filter (body reading,
//!   early refusals);
//! - `shared`: what the workers of one Envoy share (rate windows, cool-downs).
//!
//! The upstream filter (`crate::attempt`) keeps no worker: it meets this one
//! only in the request's filter state (`handover`).
//!
//! Envoy defers a local reply and a resume until the VM call returns, so no
//! host call here re-enters the worker.

mod gate;
mod request;
mod shared;

use std::collections::HashMap;
use std::rc::Rc;

use keygate_proto::lookup::{Changes, Lookup, UsageBatch};
use log::warn;

use crate::cache::Cache;
use crate::callouts::{Answered, Callouts, GateWaiter, Purpose, Waiting};
use crate::config::Config;
use crate::decide::check_key;
use crate::errors::{Denial, Dialect};
use crate::handover::{SealKey, Sealer};
use crate::host::{Buffer, Call, Host, Map};
use crate::inbound::Inbound;
use crate::intern::Interner;
use crate::key_answer::KeyAnswer;
use crate::metrics::{Counter, Gauge, Labeled, Metrics};
use crate::records::UsageQueue;
use crate::screen::leaking_headers;

pub use gate::GateState;
pub use request::Request;

/// Plans are sealed under a key derived from the gateway credential, which
/// the upstream filter has too (a gate's worker has none yet: no plans).
fn sealer(gateway_token: &str) -> Option<Sealer> {
    if gateway_token.is_empty() {
        return None;
    }
    let sealer = Sealer::random(SealKey::derive(gateway_token));
    if sealer.is_none() {
        log::error!("keygate: no randomness for sealing plans: requests with several provider keys are refused");
    }
    sealer
}

/// Whose callback runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Running {
    Root(u32),
    Context(u32),
}

impl Running {
    fn id(self) -> u32 {
        match self {
            Running::Root(id) | Running::Context(id) => id,
        }
    }
}

/// What a callback tells Envoy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Pause,
}

pub const REQUEST_ID_HEADER: &str = "x-keygate-request-id";
/// The root context's tick: it polls the change feed (every
/// `pollIntervalMs`), flushes usage and metrics, purges the cache, and makes
/// the callouts no live request context can own (see `request::reserve`).
pub const TICK_MS: u64 = 20;
const PURGE_INTERVAL_MS: u64 = 1_000;
/// Most lookups remembered as retried once (see `handle`).
const MAX_RETRIED: usize = 4_096;
/// Envoy's router retries a callout from these headers as it would a
/// request. Only failures where the call never reached a replica (a refused
/// connection, a refused stream, a reset before the request went out) are
/// named, so a lease or a reservation is never applied twice; a dead replica
/// then costs a retry inside Envoy instead of a failed lookup. What did reach
/// a replica and failed is the filter's to ask again (`handle`).
const CALLOUT_RETRY: [(&str, &str); 2] =
    [("x-envoy-retry-on", "connect-failure,refused-stream,reset-before-request"), ("x-envoy-max-retries", "2")];

pub struct Worker {
    pub config: Rc<Config>,
    gateway_token: String,
    cache: Cache,
    callouts: Callouts,
    feed_version: u64,
    usage: UsageQueue,
    interner: Interner,
    pub metrics: Metrics,
    requests: crate::id_map::IdMap<Request>,
    /// Seals the attempt plans for the upstream filter (`handover`); `None`
    /// without a gateway credential or randomness: multi-key requests are refused.
    sealer: Option<Sealer>,
    /// This VM's random tag: a gate's findings name it, and the keygate
    /// filter files callouts for the gate only in the same VM.
    vm_tag: u64,
    /// Random too, for the request ids this VM makes up (sent to clients:
    /// not the VM tag, which gates name themselves by).
    id_tag: u64,
    /// A gate runs in this VM: a request with a body must come with its findings.
    gated: bool,
    /// The keygate filter is configured in this VM: a gate here leaves its
    /// findings in `findings` rather than in the request's filter state.
    downstream: bool,
    /// Findings of this VM's gates, by gate context, until the keygate
    /// filter of their request takes them (or the request ends).
    findings: crate::id_map::IdMap<Found>,
    /// Numbers the request ids this VM gives requests without a usable one.
    next_request: u64,
    /// The store's last account of each key that checked itself, and when
    /// (by digest; see `request::self_check`).
    self_checks: HashMap<String, (u64, Rc<[u8]>)>,
    /// Concurrency slots this VM holds, by access key id (`concurrency`).
    slots: HashMap<String, u32>,
    last_vouch_ms: u64,
    /// The context whose callback runs: a callout made now is handed back to it.
    running: Running,
    /// The context host calls act on (`focus`).
    effective: u32,
    /// Lookups asked a second time after a replica failed (once per lookup).
    retried: std::collections::HashSet<String>,
    last_poll_ms: u64,
    last_flush_ms: u64,
    last_purge_ms: u64,
    reported_entries: usize,
    /// The time of the callback that runs, read once (`now`).
    clock: std::cell::Cell<Option<u64>>,
    /// A callback's header changes: one kept for all, so that its buffers
    /// are reused (`header_edits`).
    edits: crate::header_edits::Edits,
    /// A body reader that finished, its buffers kept for the next gate.
    spare_reader: Option<crate::body::BodyReader>,
    /// The last usage batch's JSON (the host copies it): its buffer is reused.
    batch_json: Vec<u8>,
}

/// A gate's findings kept in memory for the keygate filter of its request:
/// what the body holds, and the token the gate read with its digest (the
/// keygate filter reuses the digest when it reads the same token).
pub(crate) struct Found {
    facts: crate::body::BodyFacts,
    key: Option<(String, String)>,
    /// The `x-request-id` its gate saw: the keygate filter takes only
    /// findings of its own request's id (`claim_findings`).
    request_id: String,
}

impl Worker {
    pub fn new(config: Rc<Config>, gateway_token: String) -> Worker {
        let sealer = sealer(&gateway_token);
        Worker {
            cache: Cache::new(config.cache_max_entries, config.cache_ttl_ms, config.stale_if_error_ms),
            config,
            gateway_token,
            callouts: Callouts::default(),
            feed_version: 0,
            usage: UsageQueue::default(),
            interner: Interner::default(),
            metrics: Metrics::default(),
            requests: Default::default(),
            sealer,
            vm_tag: std::hash::BuildHasher::hash_one(&std::collections::hash_map::RandomState::new(), 0u8),
            id_tag: std::hash::BuildHasher::hash_one(&std::collections::hash_map::RandomState::new(), 1u8),
            gated: false,
            downstream: false,
            findings: Default::default(),
            next_request: 0,
            self_checks: HashMap::new(),
            slots: HashMap::new(),
            last_vouch_ms: 0,
            running: Running::Root(0),
            effective: 0,
            retried: std::collections::HashSet::new(),
            last_poll_ms: 0,
            last_flush_ms: 0,
            last_purge_ms: 0,
            reported_entries: 0,
            clock: std::cell::Cell::new(None),
            edits: Default::default(),
            spare_reader: None,
            batch_json: Vec::new(),
        }
    }

    /// A gate filter runs in this VM.
    pub fn set_gated(&mut self) {
        self.gated = true;
    }

    /// The keygate filter runs in this VM (its configuration is this
    /// worker's): a gate of this VM hands its findings over in memory.
    pub fn set_downstream(&mut self) {
        self.downstream = true;
    }

    /// The configuration changed (Envoy keeps the VM and configures a new
    /// root context): requests in flight, callouts and queued usage
    /// stay; the cache starts over if its shape changed.
    pub fn reconfigure(&mut self, config: Rc<Config>, gateway_token: String) {
        let c = &config;
        if (c.cache_max_entries, c.cache_ttl_ms, c.stale_if_error_ms)
            != (self.config.cache_max_entries, self.config.cache_ttl_ms, self.config.stale_if_error_ms)
        {
            // The old table goes first: two would be in memory at once.
            self.cache = Cache::new(1, 0, 0);
            self.cache = Cache::new(c.cache_max_entries, c.cache_ttl_ms, c.stale_if_error_ms);
        }
        self.config = config;
        if gateway_token != self.gateway_token {
            self.sealer = sealer(&gateway_token);
            self.gateway_token = gateway_token;
        }
    }

    /// Envoy runs a callback of request (or gate) context `id`.
    pub fn enter(&mut self, id: u32) {
        self.running = Running::Context(id);
        self.effective = id;
        self.clock.set(None);
    }

    /// Envoy runs a callback of root context `id`.
    pub fn enter_root(&mut self, id: u32) {
        self.running = Running::Root(id);
        self.effective = id;
        self.clock.set(None);
    }

    /// Now (ms), read from the host once per callback: a callback takes
    /// microseconds, and each read is a host call.
    fn now(&self, host: &impl Host) -> u64 {
        match self.clock.get() {
            Some(now) => now,
            None => {
                let now = host.now_ms();
                self.clock.set(Some(now));
                now
            }
        }
    }

    /// Makes context `id` the one host calls act on; false if it is gone.
    fn focus(&mut self, host: &impl Host, id: u32) -> bool {
        if id == self.effective {
            return true;
        }
        let ok = host.set_effective_context(id).is_ok();
        if ok {
            self.effective = id;
        }
        ok
    }

    /// Root context `id` is gone (a reconfiguration replaced it): what it
    /// owned is handed on, as for any context.
    pub fn root_done(&mut self, id: u32) {
        self.left(id);
    }

    /// The root context's tick.
    pub fn tick(&mut self, host: &impl Host, root: u32) {
        self.enter_root(root);
        let now = self.now(host);
        // Envoy answers every callout by its timeout: one that did not come
        // was lost (its owner went away) and counts as unanswered.
        let deadline = self.config.callout_timeout_ms.saturating_mul(2).saturating_add(TICK_MS);
        for late in self.callouts.expired(now, deadline) {
            warn!("keygate: a store callout was never answered");
            self.unanswered(host, late);
        }
        self.reserve_queued(host);
        for id in self.callouts.take_readmit() {
            if self.focus(host, id) {
                self.readmit(host, id);
            }
        }
        if now.saturating_sub(self.last_purge_ms) >= PURGE_INTERVAL_MS {
            self.last_purge_ms = now;
            self.cache.purge_expired(now);
        }
        if now.saturating_sub(self.last_vouch_ms) >= crate::concurrency::VOUCH_MS {
            self.last_vouch_ms = now;
            self.vouch(host);
        }
        if !self.callouts.any(|p| *p == Purpose::FeedPoll)
            && now.saturating_sub(self.last_poll_ms) >= self.config.poll_interval_ms
        {
            self.last_poll_ms = now;
            let path = format!("/v1/changes?since={}", self.feed_version);
            let _ = self.store_call(host, "GET", &path, None, Purpose::FeedPoll);
        }
        let batch_out = self.callouts.any(|p| matches!(p, Purpose::UsageBatch(_)));
        if !batch_out && self.usage.due(now.saturating_sub(self.last_flush_ms)) {
            self.last_flush_ms = now;
            self.flush_usage(host);
        }
        for digest in self.callouts.take_orphans() {
            let path = format!("/v1/lookup/{digest}");
            if self.store_call(host, "GET", &path, None, Purpose::Lookup(digest.clone())).is_err() {
                let waiting = self.callouts.abandon(&digest);
                self.complete_lookup(host, &digest, None, waiting);
            }
        }
        let entries = self.cache.len();
        self.metrics.gauge_add(Gauge::CacheEntries, entries as i64 - self.reported_entries as i64);
        self.reported_entries = entries;
        self.metrics.flush(host);
    }

    /// A callout's answer, in whichever context Envoy hands it to (the one
    /// that made it).
    pub fn on_callout(&mut self, host: &impl Host, token: u32, body_size: usize) {
        match self.callouts.answered(token) {
            None => {}
            Some(answered) => self.handle(host, answered, body_size),
        }
    }

    /// A callout that will never be answered: as a failed answer.
    fn unanswered(&mut self, host: &impl Host, answered: Answered) {
        match answered {
            Answered::Lookup { digest, waiting } => {
                self.metrics.count(Counter::StoreErrors);
                self.retried.remove(&digest);
                self.complete_lookup(host, &digest, None, waiting);
            }
            Answered::Lease { waiting, .. } => {
                for id in waiting.requests {
                    if self.focus(host, id) {
                        self.refuse(host, id, &Denial::store_unavailable());
                    }
                }
            }
            Answered::Reserve(request) | Answered::SelfCheck(request) => {
                if self.focus(host, request) {
                    self.refuse(host, request, &Denial::store_unavailable());
                }
            }
            Answered::FeedPoll => self.metrics.count(Counter::StorePollErrors),
            Answered::UsageBatch(batch) => self.usage.requeue(batch),
        }
    }

    fn handle(&mut self, host: &impl Host, answered: Answered, body_size: usize) {
        match answered {
            Answered::Lookup { digest, waiting } => {
                let answer = read_json::<Lookup>(host, body_size).map(|l| self.interner.answer(l));
                if answer.is_none() {
                    self.metrics.count(Counter::StoreErrors);
                    // A replica that failed (no answer, or a 5xx): once more,
                    // which Envoy's load balancer sends to another replica.
                    let status = host.header_str(Map::CalloutHeaders, ":status");
                    let replica_failed = status.as_deref().is_none_or(|s| s.starts_with('5'));
                    if self.retried.len() >= MAX_RETRIED {
                        self.retried.clear(); // lookups whose waiters all left never come back
                    }
                    if replica_failed && self.retried.insert(digest.clone()) {
                        let path = format!("/v1/lookup/{digest}");
                        if self.store_call(host, "GET", &path, None, Purpose::Lookup(digest.clone())).is_ok() {
                            self.metrics.count(Counter::StoreRetries);
                            self.callouts.restore(&digest, waiting);
                            return;
                        }
                    }
                }
                self.retried.remove(&digest);
                self.complete_lookup(host, &digest, answer, waiting);
            }
            Answered::Lease { ask, waiting } => self.on_leased(host, &ask, waiting.requests, body_size),
            Answered::Reserve(request) => self.on_reserved(host, request, body_size),
            Answered::SelfCheck(request) => self.on_self_check(host, request, body_size),
            Answered::FeedPoll => match read_json::<Changes>(host, body_size) {
                Some(changes) => self.apply_changes(&changes),
                None => self.metrics.count(Counter::StorePollErrors),
            },
            Answered::UsageBatch(batch) => {
                let status = host.header_str(Map::CalloutHeaders, ":status");
                match status.as_deref() {
                    Some("200") => {}
                    // Refused as malformed: sent again it would be refused
                    // again, and hold back every record behind it.
                    Some("400") => {
                        log::error!(
                            "keygate: usage batch refused by the store as invalid: {} records dropped",
                            batch.len()
                        );
                        self.metrics.add(Counter::UsageDropped, batch.len() as u64);
                    }
                    other => {
                        warn!(
                            "keygate: usage batch not accepted ({}): kept for the next flush",
                            other.unwrap_or("no answer")
                        );
                        self.usage.requeue(batch);
                    }
                }
            }
        }
    }

    /// Vouches for the concurrency slots this VM holds (so that they keep
    /// counting), and lets go of the keys it holds none of any more.
    fn vouch(&mut self, host: &impl Host) {
        for (key_id, count) in &self.slots {
            shared::vouch_slots(host, key_id, self.vm_tag, *count);
        }
        self.slots.retain(|_, count| *count > 0);
    }

    /// A context is destroyed: whatever it waited for or owned is handed on.
    fn left(&mut self, id: u32) {
        let batch = self.callouts.left(id);
        if !batch.is_empty() {
            self.usage.requeue(batch);
        }
    }

    fn store_call(
        &mut self,
        host: &impl Host,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
        purpose: Purpose,
    ) -> Result<u32, Purpose> {
        let auth = format!("Bearer {}", self.gateway_token);
        // One allocation, sized for every header a callout may carry.
        let mut headers = Vec::with_capacity(5 + CALLOUT_RETRY.len());
        headers.extend_from_slice(&[
            (":method", method),
            (":path", path),
            (":authority", self.config.store_authority.as_str()),
            ("authorization", auth.as_str()),
        ]);
        headers.extend(CALLOUT_RETRY);
        if body.is_some() {
            headers.push(("content-type", "application/json"));
        }
        let call =
            Call { cluster: &self.config.store_cluster, headers, body, timeout_ms: self.config.callout_timeout_ms };
        // Envoy keeps a callout's answer on the context effective when it was
        // made, `filter` hands it to the context whose callback runs: the two
        // must be one, or the answer is unreadable where it arrives.
        let back = self.effective;
        let owner = self.running.id();
        let switched = back != owner && host.set_effective_context(owner).is_ok();
        let sent = host.http_call(&call);
        if switched {
            let _ = host.set_effective_context(back);
        }
        match sent {
            Ok(token) => {
                self.callouts.started(token, self.running.id(), purpose, self.now(host));
                Ok(token)
            }
            Err(e) => {
                warn!("keygate: store callout could not be dispatched: {e:?}");
                Err(purpose)
            }
        }
    }

    /// Starts the lookup of `digest` unless one is in flight.
    fn ask_lookup(&mut self, host: &impl Host, digest: &str) -> Result<(), Purpose> {
        if self.callouts.lookup_in_flight(digest) {
            if matches!(self.running, Running::Context(id) if self.requests.contains_key(&id)) {
                self.metrics.count(Counter::StoreCoalesced);
            }
            return Ok(());
        }
        self.metrics.count(Counter::StoreLookups);
        let path = format!("/v1/lookup/{digest}");
        self.store_call(host, "GET", &path, None, Purpose::Lookup(digest.to_string())).map(|_| ())
    }

    /// A lookup finished (`None`: the store could not be reached or gave no
    /// usable answer). Caches it, completes every request waiting for it, and
    /// refuses through every gate still uploading when the key is refused.
    fn complete_lookup(&mut self, host: &impl Host, digest: &str, answer: Option<KeyAnswer>, waiting: Waiting) {
        let now = self.now(host);
        if let Some(a) = &answer {
            self.cache.insert(digest, a, now);
        }
        let stale_approval = answer.is_none() && self.cache.get(digest, now).is_some();
        for id in waiting.requests {
            if !self.focus(host, id) {
                continue; // that request is gone
            }
            self.lookup_done(host, id, answer.clone());
        }
        // Requests still uploading: a refused key (or a store that cannot
        // say, with nothing stale to serve) is answered now, not after the body.
        let refusal = match &answer {
            Some(lookup) => check_key(lookup, (now / 1000) as i64).err(),
            None if stale_approval => None,
            None => Some(Denial::store_unavailable()),
        };
        let Some(denial) = refusal else { return };
        for GateWaiter { gate, dialect, request_id } in waiting.gates {
            if self.focus(host, gate) {
                log::info!("keygate: request {request_id} refused before its body: {}", denial.code);
                self.metrics.count(Counter::GateEarlyRefusals);
                reply(host, &mut self.metrics, dialect, &request_id, &denial);
            }
        }
    }

    fn apply_changes(&mut self, changes: &Changes) {
        if changes.all {
            self.cache.invalidate_all(if changes.all_at > 0 { changes.all_at } else { changes.version });
        }
        // Older stores send no per-digest versions: then the feed's version.
        let version_of = |i: usize| changes.digest_versions.get(i).copied().unwrap_or(changes.version);
        self.cache.invalidate(changes.digests.iter().enumerate().map(|(i, d)| (d, version_of(i))));
        self.feed_version = self.feed_version.max(changes.version);
    }

    /// Sends the next batch of usage records; it comes back to the queue
    /// unless the store acknowledges it.
    fn flush_usage(&mut self, host: &impl Host) {
        let batch = UsageBatch { records: self.usage.take_batch() };
        if batch.records.is_empty() {
            return;
        }
        // Written into the buffer of the last batch: a batch of hundreds of
        // records would otherwise grow a new one a dozen times.
        let mut json = std::mem::take(&mut self.batch_json);
        json.clear();
        if serde_json::to_writer(&mut json, &batch).is_err() {
            self.usage.requeue(batch.records);
            return;
        }
        // The batch travels with its callout, to be queued again if lost.
        if let Err(Purpose::UsageBatch(records)) =
            self.store_call(host, "POST", "/v1/usage", Some(&json), Purpose::UsageBatch(batch.records))
        {
            self.usage.requeue(records);
        }
        self.batch_json = json;
    }
}

/// Blanks the request headers that carry a credential before a refusal, so
/// that Envoy's access log (which prints the path and the request id) never
/// holds one.
fn blank_leaks(host: &impl Host, inbound: &Inbound) {
    for name in leaking_headers(inbound) {
        let blank: &[u8] = if name == ":path" { b"/redacted" } else { b"redacted" };
        let _ = host.set_header(Map::RequestHeaders, name, Some(blank));
    }
}

/// The body of a store answer, if it is a 200 with a document we understand.
fn read_json<T: serde::de::DeserializeOwned>(host: &impl Host, body_size: usize) -> Option<T> {
    let status = host.header_str(Map::CalloutHeaders, ":status");
    if status.as_deref() != Some("200") {
        warn!("keygate: key store answered {}", status.as_deref().unwrap_or("nothing (timeout or connection failure)"));
        return None;
    }
    let body = host.buffer(Buffer::CalloutBody, 0, body_size).ok()?;
    // serde's message may quote a value (a credential): only where it failed.
    serde_json::from_slice(&body)
        .map_err(|e| warn!("keygate: unreadable key store answer ({:?} at {}:{})", e.classify(), e.line(), e.column()))
        .ok()
}

/// A local reply in the client's dialect to the effective context; nothing
/// goes upstream.
fn reply(host: &impl Host, metrics: &mut Metrics, dialect: Dialect, request_id: &str, denial: &Denial) {
    metrics.count(Counter::RequestsDenied);
    metrics.count_labeled(Labeled::Denied, denial.code.as_str());
    let body = denial.body(dialect);
    let retry_after = denial.retry_after.map(|s| s.to_string());
    let mut headers = vec![("content-type", "application/json"), ("x-keygate-error", denial.code.as_str())];
    if !request_id.is_empty() {
        headers.push((REQUEST_ID_HEADER, request_id));
    }
    if let Some(r) = retry_after.as_deref() {
        headers.push(("retry-after", r));
    }
    headers.extend(denial.headers.iter().map(|(k, v)| (*k, v.as_str())));
    let headers: Vec<(&str, &[u8])> = headers.iter().map(|(k, v)| (*k, v.as_bytes())).collect();
    if host.send_response(denial.status, &headers, body.as_bytes()).is_err() {
        warn!("keygate: could not send a local reply");
    }
}

#[cfg(test)]
mod host_call_counts;
#[cfg(test)]
mod tests;
