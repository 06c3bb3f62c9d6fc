//! The keygate filter's side of one request: read and screen the headers,
//! find the key (cache, or a lookup shared with concurrent requests), admit
//! (`admission`), reserve budget when the key has one, set the upstream
//! headers, then watch the answer go by (credential scrubbing, usage) and
//! file the usage records when the request is done.

use std::rc::Rc;

use std::net::IpAddr;

use keygate_proto::lookup::{
    Access, KeyStatus, LeaseRequest, LeaseResponse, RefusedBy, ReserveRequest, ReserveResponse,
};
use keygate_proto::token;
use log::{debug, info, warn};

use super::shared::{add_grant, cool_down, give_back_slot, rate_key, settle_rate, take_slot, Shared};
use super::{blank_leaks, read_json, reply, Flow, Running, Worker, REQUEST_ID_HEADER};
use crate::admission::{self, Ask, Counted, Counters, Verdict};
use crate::body::Fallbacks;
use crate::cache::Freshness;
use crate::callouts::{LeaseAsk, Purpose};
use crate::decide::{check_client_ip, check_key, ModelField, RequestFacts};
use crate::errors::{Code, Denial, Dialect};
use crate::failover::{self, retry_hint_ms, Attempt};
use crate::handover::{self, Outcome, Plan, Tapped};
use crate::header_edits::Edits;
use crate::host::{Buffer, HeaderMap, Host, Map, SharedError};
use crate::inbound::Inbound;
use crate::key_answer::KeyAnswer;
use crate::metadata;
use crate::metrics::{Counter, Labeled, Metrics};
use crate::ratelimit;
use crate::records::{self, Finished, Served};
use crate::screen::{screen, too_large};
use crate::scrub::StreamScrubber;
use crate::surface::{self, Judge};
use crate::usage::{self, BodyKind, SseScanner, Usage};

/// Output tokens assumed for a request that sets no `max_tokens`.
pub const DEFAULT_OUTPUT_ESTIMATE: u64 = 4_096;
/// How long a worker answers a key's self-check from the store's last
/// account of it, and how many keys' accounts it keeps.
const SELF_CHECK_REUSE_MS: u64 = 1_000;
const MAX_SELF_CHECKS: usize = 1_024;
/// Largest JSON response read for its `usage` (it passes through regardless).
const MAX_JSON_BODY: usize = 4 << 20;

/// Where a request is in its life.
#[derive(Default)]
pub enum Phase {
    /// Headers not read yet.
    #[default]
    New,
    /// Waiting for the store's answer about the key; a cached approval past
    /// its TTL stands in if the store cannot answer.
    LookingUp { stale: Option<KeyAnswer> },
    /// Waiting for a share of the key's rate-limit window (a lease).
    Leasing { lookup: KeyAnswer },
    /// Counted, waiting for the store to reserve budget (filed by this
    /// request, its gate, or the root context).
    Reserving { lookup: KeyAnswer },
    /// A self-check (`GET /keygate/v1/key`), waiting for the store's account
    /// of the key.
    Checking { lookup: KeyAnswer },
    /// Headers set for the upstream: the answer is watched as it passes.
    Forwarded(Box<Forwarded>),
    /// A local reply was sent.
    Refused,
}

/// The forwarding plan (sealed for the upstream filter: `handover`) and
/// what the attempts got.
pub struct Forwarded {
    /// One candidate: the keygate filter set its credential, and the
    /// cluster has no upstream filter.
    pub direct: bool,
    /// Where attempts go, with which credentials, in order.
    pub plan: Plan,
    pub attempts: Vec<Attempt>,
    /// The upstream filter's trail was read into `attempts`.
    trail_read: bool,
    /// A model list to filter: the provider and the key's model allow-list.
    listing: Option<(String, Vec<String>)>,
    /// The stream's usage is asked for, and hidden from the client.
    ask_usage: bool,
    /// The provider's model name to write into the body.
    rewrite_model: Option<String>,
    /// The body's `models` (fallbacks) to take out.
    strip_models: bool,
    answer: Answer,
}

/// What the filter does with the provider's answer.
#[derive(Default)]
struct Answer {
    /// Replaced by keygate's own error (every candidate failed).
    replace: Option<String>,
    /// A model list, read whole and shown as the key may use it.
    listing: Option<(String, Vec<String>)>,
    list: Vec<u8>,
    /// What asking for the stream's usage added, taken out again.
    hidden_usage: Option<crate::hidden_usage::HiddenUsage>,
    /// An error answer passes with the provider credentials scrubbed.
    scrubber: Option<StreamScrubber>,
    /// Usage read as it passes: an event stream or a JSON document.
    read_usage: bool,
    scanner: Option<SseScanner>,
    json: Option<Vec<u8>>,
    /// Reset part-way (`cut_answer`): nothing more of it passes.
    cut: bool,
}

/// What the request is, from its headers and (through the gate) its body.
#[derive(Default)]
struct Facts {
    request_id: String,
    dialect: Dialect,
    /// `:method` and `:path` as the client sent them (screened).
    method: String,
    path: String,
    /// Request headers to remove before the request goes upstream.
    strip: Vec<String>,
    /// The request's headers as this filter read them, while its headers
    /// callback runs: its changes are written over them in one call
    /// (`header_edits`). Not kept across a pause (a request waiting for the
    /// store holds no copy of its headers); forwarded later, it reads them
    /// again.
    headers: Option<HeaderMap>,
    /// Ours replaced the client's `x-request-id` (set again with the rest).
    request_id_replaced: bool,
    anthropic_version: bool,
    has_body: bool,
    /// The body's size is known (`content-length`, which Envoy's buffer
    /// filter sets; none without a body).
    size_known: bool,
    model: Option<ModelField>,
    fallbacks: Fallbacks,
    /// `model` and `max_tokens` came from the gate (no metadata reads).
    body_read: bool,
    max_tokens: Option<u64>,
    choices: u64,
    access_key_in_body: bool,
    /// `"stream": true`, and whether the client chose `stream_options`.
    stream: bool,
    stream_options: bool,
    /// A limit field whose value is not a count.
    unclear_limit: bool,
    /// A form's boundary (the body to rewrite is a form, not JSON).
    form_boundary: Option<String>,
    body_bytes: u64,
    started_ms: u64,
    /// This request's gate, if one runs (see `reserve`).
    gate: Option<u32>,
    /// `GET /keygate/v1/key`, and the key's digest for its store call.
    self_check: bool,
    digest: String,
}

/// What admission counted and who serves.
#[derive(Default)]
struct Admitted {
    /// Limits counted and budget reserved: only forwarding is left.
    done: bool,
    estimate: (u64, u64),
    rate: Option<(String, Counted)>,
    served: Option<Served>,
    reservation: Option<String>,
    /// The key whose concurrency slot this request holds until it ends.
    slot: Option<String>,
}

pub struct Request {
    facts: Facts,
    admitted: Admitted,
    pub phase: Phase,
}

/// How many headers a request keeps a copy of (tests).
#[cfg(test)]
impl Request {
    pub(crate) fn held_headers(&self) -> usize {
        self.facts.headers.as_ref().map_or(0, HeaderMap::len)
    }
}

impl Default for Request {
    fn default() -> Request {
        Request::new()
    }
}

impl Request {
    pub fn new() -> Request {
        Request { facts: Facts { choices: 1, ..Facts::default() }, admitted: Admitted::default(), phase: Phase::New }
    }

    fn estimate(&mut self) -> (u64, u64) {
        let f = &self.facts;
        usage::estimate(f.body_bytes, f.max_tokens, f.choices, DEFAULT_OUTPUT_ESTIMATE)
    }
}

/// Where a request stands after `advance`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Forwarded,
    Refused,
    /// Waiting for the store to reserve budget; its answer advances again.
    Waiting,
}

impl Worker {
    pub fn request_created(&mut self, id: u32) {
        self.requests.insert(id, Request::new());
    }

    pub fn request_headers(&mut self, host: &impl Host, id: u32, end_of_stream: bool) -> Flow {
        let flow = self.judge_headers(host, id, end_of_stream);
        // A paused request keeps no copy of its headers (see `Facts::headers`).
        if let Some(req) = self.requests.get_mut(&id) {
            req.facts.headers = None;
        }
        flow
    }

    /// What this VM's gate handed over for request `id`: the gate its tag
    /// names (one the gate set for a request without a usable
    /// `x-request-id`), else the gate whose context Envoy made just before
    /// this filter's (a request's filters get consecutive context ids; the
    /// buffer filter between them is not a wasm filter). Taken only if that
    /// gate saw this request's `x-request-id`: a tag a client sent, or a
    /// gate of another request, hands nothing over, and the request is then
    /// refused, never judged by another's body. Findings wait here only from
    /// a gate's last body chunk to this filter's headers callback, which
    /// Envoy runs right after it.
    fn claim_findings(&mut self, id: u32, tag: Option<u32>, request_id: &str) -> Option<(u32, super::Found)> {
        let gate = tag.unwrap_or(id.wrapping_sub(1));
        if self.findings.get(&gate).is_some_and(|f| f.request_id == request_id) {
            return self.findings.remove(&gate).map(|found| (gate, found));
        }
        if tag.is_none() && self.findings.values().any(|f| f.request_id == request_id) {
            warn!(
                "keygate: request {request_id}: its gate is not the filter just before the keygate filter; \
                 place no other wasm filter of this VM between them"
            );
        }
        None
    }

    fn judge_headers(&mut self, host: &impl Host, id: u32, end_of_stream: bool) -> Flow {
        self.enter(id);
        // One snapshot of the headers: each host call that returns data
        // costs about 1 µs (see `inbound`).
        let headers = host.headers(Map::RequestHeaders);
        let inbound = Inbound::from_headers(headers.iter());
        #[cfg(feature = "fault-injection")]
        #[allow(clippy::panic)]
        if inbound.test_panic {
            panic!("keygate: fault injection"); // allow-panic: test builds only
        }
        let has_body = !end_of_stream;
        // What the gate read of the body: from this VM's memory (the gate
        // its tag names, else the one that saw this request's id), else
        // from the request's filter state.
        let vm_tag = self.vm_tag;
        let tag = inbound.gate.filter(|(vm, _)| *vm == vm_tag).map(|(_, gate)| gate);
        let found = if has_body { self.claim_findings(id, tag, &inbound.request_id) } else { None };
        let (in_vm, gate_key) = match found {
            Some((gate, found)) => (Some(Tapped { vm: vm_tag, gate, facts: found.facts }), found.key),
            None => (None, None),
        };
        let tapped = match in_vm {
            Some(t) => Some(t),
            None if has_body => host.property(&handover::BODY_STATE).and_then(|b| Tapped::decode(&b)),
            None => None,
        };
        let gate_ran = inbound.gate.is_some();
        let max_body = self.config.max_body_bytes;
        // The gate checked and hashed the same token already (in this VM).
        let screened = screen(&inbound, has_body, max_body, gate_key.as_ref().map(|(t, _)| t.as_str())).map(|s| {
            let digest = match gate_key {
                Some((token, digest)) if token == s.token => digest,
                _ => token::digest(s.token),
            };
            (s.dialect, digest, s.boundary.map(str::to_string), s.surface.judge)
        });
        if screened.is_err() {
            blank_leaks(host, &inbound);
        }
        let gated = self.gated;
        let now = self.now(host);
        // (Envoy creates the context just before; a request never passes unjudged.)
        let req = self.requests.entry(id).or_default();
        let Inbound { method, path, request_id, content_length, anthropic_version, strip, .. } = inbound;
        let (method, path, request_id) = (method.into_owned(), path.into_owned(), request_id.into_owned());
        let f = &mut req.facts;
        f.request_id = request_id;
        f.strip = strip.iter().map(|s| s.to_string()).collect();
        f.anthropic_version = anthropic_version;
        let digest = match screened {
            Ok((dialect, digest, boundary, judge)) => {
                f.dialect = dialect;
                f.form_boundary = boundary;
                if judge == Judge::SelfCheck {
                    f.self_check = true;
                    f.digest = digest.clone();
                }
                digest
            }
            Err((dialect, denial)) => {
                f.dialect = dialect;
                return self.refuse(host, id, &denial);
            }
        };
        f.headers = Some(headers);
        if !usable_request_id(&f.request_id) {
            // The store keys usage and reservations by it, and the plan is
            // bound to it: one of ours replaces a missing or unusable one.
            self.next_request = self.next_request.wrapping_add(1);
            f.request_id = format!("keygate-{:016x}-{:x}", self.id_tag, self.next_request);
            let _ = host.set_header(Map::RequestHeaders, "x-request-id", Some(f.request_id.as_bytes()));
            f.request_id_replaced = true;
        }
        f.method = method;
        f.path = path;
        f.has_body = has_body;
        f.started_ms = now;
        f.body_bytes = content_length.unwrap_or(0);
        f.size_known = content_length.is_some() || !has_body;
        // The gate may file callouts for this request only from this VM.
        f.gate = tapped.as_ref().filter(|t| t.vm == vm_tag).map(|t| t.gate);
        match tapped.map(|t| t.facts) {
            Some(facts) if has_body => {
                f.model = Some(facts.model);
                f.max_tokens = facts.max_tokens;
                f.choices = facts.choices;
                f.access_key_in_body = facts.access_key;
                f.stream = facts.stream;
                f.stream_options = facts.stream_options;
                f.unclear_limit = facts.unclear_limit;
                f.fallbacks = facts.fallbacks;
                f.body_read = true;
            }
            // A gate runs in this VM (or named itself), yet no findings:
            // refuse rather than guess.
            _ if has_body && (gated || gate_ran) => {
                return self.refuse(host, id, &Denial::internal("the request body could not be read"));
            }
            _ => {}
        }

        let stale = match self.cache.get(&digest, now) {
            Some((lookup, Freshness::Fresh)) => {
                self.metrics.count(Counter::CacheHits);
                return flow(self.advance(host, id, &lookup));
            }
            Some((lookup, Freshness::Stale)) => Some(lookup),
            None => None,
        };
        self.metrics.count(Counter::CacheMisses);
        // Miss: join the lookup in flight for this key, or start one.
        if self.ask_lookup(host, &digest).is_err() {
            self.metrics.count(Counter::StoreErrors);
            return match stale {
                Some(lookup) => {
                    self.metrics.count(Counter::CacheStaleServed);
                    flow(self.advance(host, id, &lookup))
                }
                None => self.refuse(host, id, &Denial::store_unavailable()),
            };
        }
        self.callouts.wait_request(&digest, id);
        if let Some(req) = self.requests.get_mut(&id) {
            debug!("keygate: request {} waits for a key lookup", req.facts.request_id);
            req.phase = Phase::LookingUp { stale };
        }
        Flow::Pause
    }

    /// The lookup this request waited for is answered (`None`: no usable
    /// answer); the request's context is effective.
    pub(super) fn lookup_done(&mut self, host: &impl Host, id: u32, answer: Option<KeyAnswer>) {
        let Some(req) = self.requests.get_mut(&id) else { return };
        let stale = match &mut req.phase {
            Phase::LookingUp { stale } => stale.take(),
            _ => return,
        };
        if answer.is_none() && stale.is_some() {
            self.metrics.count(Counter::CacheStaleServed);
        }
        let resume = match answer.or(stale) {
            Some(lookup) => self.advance(host, id, &lookup) == Step::Forwarded,
            None => {
                self.refuse(host, id, &Denial::store_unavailable());
                false
            }
        };
        if resume && host.resume_request().is_err() {
            warn!("keygate: could not resume a request");
        }
    }

    /// Decides for request `id` (its context effective) and acts: refuses,
    /// reserves, or sets the upstream headers.
    fn advance(&mut self, host: &impl Host, id: u32, lookup: &KeyAnswer) -> Step {
        let config = self.config.clone();
        let now = self.now(host);
        let Some(req) = self.requests.get_mut(&id) else { return Step::Refused };
        let f = &mut req.facts;
        // Without the gate, the body's fields come from `json_to_metadata`'s
        // metadata: read only for a key that may pass (2-3 µs a property).
        if f.model.is_none() {
            let readable = f.has_body && lookup.status == KeyStatus::Active;
            f.model = Some(if readable { read_model(host, &config.metadata_namespace) } else { ModelField::Absent });
        }
        if !req.admitted.done {
            // Only limits and budgets need the estimate before the request goes out.
            if f.has_body
                && !f.body_read
                && (lookup.limits.is_some() || lookup.budgeted || lookup.request_limits.is_some())
            {
                f.max_tokens = read_max_tokens(host, &config.metadata_namespace);
                f.choices = read_choices(host, &config.metadata_namespace).unwrap_or(1);
            }
            req.admitted.estimate = req.estimate();
        }
        // The client's address, for a key limited to some (Envoy resolves
        // it: `use_remote_address` and the trusted proxy hops).
        let restricted = lookup.access.as_ref().is_some_and(|a| a.client_ips.is_some());
        let client_ip = if restricted {
            host.property(&["source", "address"])
                .and_then(|b| String::from_utf8(b).ok())
                .and_then(|s| keygate_proto::cidr::parse_socket_address(&s))
        } else {
            None
        };
        if !req.facts.self_check {
            if let Err(step) = self.take_slot(host, id, lookup, now, client_ip) {
                return step;
            }
        }
        let Some(req) = self.requests.get(&id) else { return Step::Refused };
        let f = &req.facts;
        let absent = ModelField::Absent;
        let model = f.model.as_ref().unwrap_or(&absent);
        // The headers were screened: the surface is in the table.
        let Ok(surface) = surface::classify(&f.method, &f.path, f.anthropic_version) else {
            return self.refuse_step(host, id, &Denial::internal("the gateway could not classify the request"));
        };
        if surface.judge == Judge::SelfCheck {
            return self.self_check(host, id, lookup, client_ip);
        }
        let listing = surface.judge == Judge::Listing;
        // An OpenAI stream that did not ask for its usage is asked for it
        // (`hidden_usage`), when the gate read the body.
        let ask_usage = f.stream
            && !f.stream_options
            && surface.format == keygate_proto::lookup::Format::Openai
            && matches!(surface.rest, "chat/completions" | "completions");
        let blank_unread =
            f.has_body && !f.body_read && f.form_boundary.is_none() && matches!(surface.judge, Judge::Model(_));
        let ask = Ask {
            facts: RequestFacts {
                surface,
                model,
                fallbacks: &f.fallbacks,
                access_key_in_body: f.access_key_in_body,
                client_ip,
            },
            estimate: req.admitted.estimate,
            output_stated: f.max_tokens.is_some() && !f.unclear_limit,
            size_known: f.size_known,
            anthropic_version: f.anthropic_version,
            admitted: req.admitted.done,
            now_ms: now,
        };
        // Counting is a compare-and-swap on the key's window: on a race with
        // another worker, admit again on the new count.
        let mut verdict = None;
        for _ in 0..16 {
            let counters = Shared::new(host);
            let v = admission::admit(ask, lookup, &counters, &config);
            let counted = match &v {
                Verdict::Reserve { counted: Some(c), served } | Verdict::Forward { counted: Some(c), served, .. } => {
                    Some((c, served))
                }
                _ => None,
            };
            if let Some((c, served)) = counted {
                match host.set_shared_data(&rate_key(&served.key_id), c.pool.encode().as_bytes(), counters.cas()) {
                    Ok(()) => {}
                    Err(SharedError::CasMismatch) => continue,
                    Err(SharedError::Failed) => break,
                }
            }
            verdict = Some(v);
            break;
        }
        let Some(verdict) = verdict else {
            return self.refuse_step(host, id, &Denial::internal("the rate limiter is unavailable"));
        };
        let (counted, served, forwarding) = match verdict {
            Verdict::Refuse(denial) => {
                if denial.code == Code::RateLimitExceeded {
                    self.metrics.count(Counter::RatelimitRefused);
                }
                return self.refuse_step(host, id, &denial);
            }
            Verdict::Lease { key_id, requests, tokens } => {
                let limits = lookup.limits.clone().unwrap_or_default();
                let needed = (1, ratelimit::counted_tokens(&limits, req_estimate(self.requests.get(&id))));
                let ask = LeaseAsk { key_id, limits, needed, sent_ms: self.now(host) };
                return self.lease(host, id, lookup, ask, (requests, tokens));
            }
            Verdict::Reserve { counted, served } => (counted, served, None),
            Verdict::Forward { counted, served, forwarding } => (counted, served, Some(forwarding)),
        };
        let Some(req) = self.requests.get_mut(&id) else { return Step::Refused };
        if let Some(c) = counted {
            req.admitted.rate = Some((served.key_id.clone(), c));
        }
        if !req.admitted.done {
            req.admitted.served = Some(served);
        }
        let Some(fw) = forwarding else {
            req.phase = Phase::Reserving { lookup: lookup.clone() };
            return self.reserve(host, id);
        };
        req.admitted.done = true;
        // Every change in one host call (`header_edits`). Any change of the
        // request's headers makes Envoy pick the route again: with ABI 0.2.1
        // (the filter's) Envoy clears the route cache itself.
        let edits = &mut self.edits;
        edits.clear();
        for name in &req.facts.strip {
            edits.remove(name);
        }
        for (name, value) in &fw.headers {
            if value.is_empty() {
                edits.remove(name);
            } else {
                edits.set(name, value.as_bytes());
            }
        }
        if ask_usage {
            edits.remove("content-length");
        }
        if req.facts.request_id_replaced {
            edits.set("x-request-id", req.facts.request_id.as_bytes());
        }
        let snapshot = match req.facts.headers.take() {
            Some(snapshot) => snapshot,
            None => host.headers(Map::RequestHeaders),
        };
        if edits.write(host, Map::RequestHeaders, &snapshot).is_err() {
            warn!("keygate: request {}: could not set its upstream headers", req.facts.request_id);
            return self.refuse_step(host, id, &Denial::internal("the gateway could not prepare the request"));
        }
        // The upstream filter puts each attempt's credential on; direct
        // clusters have none (the headers above carry the one credential).
        if !fw.direct {
            let sealed = self.sealer.as_mut().and_then(|s| s.seal(&req.facts.request_id, &fw.plan));
            if sealed.is_none_or(|plan| host.set_property(&[handover::PLAN], &plan).is_err()) {
                warn!("keygate: request {}: could not hand the plan to the upstream filter", req.facts.request_id);
                return self.refuse_step(host, id, &Denial::internal("the gateway could not prepare the request"));
            }
        }
        self.metrics.count(Counter::RequestsAllowed);
        self.metrics.count_labeled(Labeled::RequestsProvider, &fw.provider);
        let Some(req) = self.requests.get_mut(&id) else { return Step::Refused };
        debug!(
            "keygate: request {} provider={} credential={}",
            req.facts.request_id,
            fw.provider,
            fw.plan.attempt(0).map_or("-", |(_, _, k)| k.id.as_str())
        );
        // A model list is shown as the key may use it (`models`).
        let listing = listing.then(|| lookup.access.as_ref().and_then(|a| a.models.clone())).flatten();
        req.phase = Phase::Forwarded(Box::new(Forwarded {
            direct: fw.direct,
            plan: fw.plan,
            attempts: Vec::new(),
            trail_read: false,
            listing: listing.map(|allow| (fw.provider.clone(), allow)),
            ask_usage,
            rewrite_model: fw.rewrite_model,
            // Without a gate nobody read the body: a `models` in it is
            // blanked unread (no fallbacks, and nothing unchecked upstream).
            strip_models: fw.strip_models || blank_unread,
            answer: Answer::default(),
        }));
        Step::Forwarded
    }

    /// Waits for a share of the key's rate window: joins this worker's lease
    /// in flight for the key, or asks the store for `amount` (requests, tokens).
    fn lease(&mut self, host: &impl Host, id: u32, lookup: &KeyAnswer, ask: LeaseAsk, amount: (u64, u64)) -> Step {
        let slot = LeaseAsk::slot(&ask.key_id);
        if let Some(req) = self.requests.get_mut(&id) {
            req.phase = Phase::Leasing { lookup: lookup.clone() };
        }
        if !self.callouts.lookup_in_flight(&slot) {
            // The answer goes to the context that asks: one that may end
            // first (another request's) would lose the grant, so only this
            // request, its gate or the root context asks (as for reservations).
            if !self.may_file_for(id) {
                self.callouts.readmit_later(id);
                return Step::Waiting;
            }
            let body = LeaseRequest {
                access_key_id: ask.key_id.clone(),
                window_ms: self.config.rate_limit_window_ms,
                requests: amount.0,
                tokens: amount.1,
            };
            let sent = match serde_json::to_vec(&body) {
                Ok(json) => self.store_call(host, "POST", "/v1/lease", Some(&json), Purpose::Lease(ask)).is_ok(),
                Err(_) => false,
            };
            if !sent {
                return self.refuse_step(host, id, &Denial::store_unavailable());
            }
            self.metrics.count(Counter::RatelimitLeases);
        }
        self.callouts.wait_request(&slot, id);
        Step::Waiting
    }

    /// Whether a callout for request `id` may be made in the running
    /// callback: its own, its gate's, or the root context's (which outlive
    /// it); another request's may end before the answer comes.
    fn may_file_for(&self, id: u32) -> bool {
        match self.running {
            Running::Root(_) => true,
            Running::Context(running) => {
                running == id || self.requests.get(&id).is_some_and(|r| r.facts.gate == Some(running))
            }
        }
    }

    /// The store answered a lease (`None`: no usable answer): the grant goes
    /// into this Envoy's pool and every request that waited is admitted again.
    pub(super) fn on_leased(&mut self, host: &impl Host, ask: &LeaseAsk, waiting: Vec<u32>, body_size: usize) {
        let granted = read_json::<LeaseResponse>(host, body_size).is_some_and(|grant| add_grant(host, ask, &grant));
        for id in waiting {
            if !self.focus(host, id) {
                continue;
            }
            if granted {
                self.readmit(host, id);
            } else {
                self.refuse(host, id, &Denial::store_unavailable());
            }
        }
    }

    /// Admits request `id` (its context effective) again after a lease.
    pub(super) fn readmit(&mut self, host: &impl Host, id: u32) {
        let Some(req) = self.requests.get_mut(&id) else { return };
        let (Phase::Leasing { lookup } | Phase::Checking { lookup }) = &req.phase else { return };
        let lookup = lookup.clone();
        if self.advance(host, id, &lookup) == Step::Forwarded && host.resume_request().is_err() {
            warn!("keygate: could not resume a request");
        }
    }

    /// A slot of the key's concurrency cap, taken before anything is counted
    /// and held until the request ends (`request_done`): `Err` refuses.
    fn take_slot(
        &mut self,
        host: &impl Host,
        id: u32,
        lookup: &KeyAnswer,
        now: u64,
        client_ip: Option<IpAddr>,
    ) -> Result<(), Step> {
        let cap = lookup.request_limits.as_ref().and_then(|r| r.max_concurrent_requests);
        let (Some(max), Some(key)) = (cap, &lookup.key) else { return Ok(()) };
        let holds = self.requests.get(&id).is_none_or(|r| r.admitted.slot.is_some());
        // A key that will be refused anyway takes none (nor does a leaked
        // key used from outside its addresses crowd out its owner).
        let allow_all = Access::default();
        let refused = check_key(lookup, (now / 1000) as i64).is_err()
            || check_client_ip(lookup.access.as_deref().unwrap_or(&allow_all), client_ip).is_err();
        if holds || refused {
            return Ok(());
        }
        match take_slot(host, &key.id, self.vm_tag, max) {
            Ok(true) => {
                *self.slots.entry(key.id.to_string()).or_default() += 1;
                if let Some(req) = self.requests.get_mut(&id) {
                    req.admitted.slot = Some(key.id.to_string());
                }
                Ok(())
            }
            Ok(false) => {
                self.metrics.count(Counter::ConcurrencyRefused);
                let mut denial = Denial::new(
                    429,
                    Code::ConcurrencyLimitExceeded,
                    format!("this access key may have at most {max} requests in flight at once (per gateway)"),
                );
                denial.retry_after = Some(1);
                Err(self.refuse_step(host, id, &denial))
            }
            Err(()) => Err(self.refuse_step(host, id, &Denial::internal("the concurrency limiter is unavailable"))),
        }
    }

    /// `GET /keygate/v1/key`: a usable key, used from an allowed address,
    /// asks the store what it may learn about itself (`on_self_check`).
    /// Filed as reservations are (see `reserve`).
    fn self_check(&mut self, host: &impl Host, id: u32, lookup: &KeyAnswer, client_ip: Option<IpAddr>) -> Step {
        let allow_all = Access::default();
        let usable = check_key(lookup, (self.now(host) / 1000) as i64)
            .and_then(|_| check_client_ip(lookup.access.as_deref().unwrap_or(&allow_all), client_ip));
        if let Err(denial) = usable {
            return self.refuse_step(host, id, &denial);
        }
        let now = self.now(host);
        let Some(req) = self.requests.get_mut(&id) else { return Step::Refused };
        // The store's account of a key, at most once a second per worker:
        // a key asking about itself in a loop does not load the store.
        let recent =
            self.self_checks.get(&req.facts.digest).filter(|(at, _)| now.saturating_sub(*at) < SELF_CHECK_REUSE_MS);
        if let Some((_, doc)) = recent {
            let doc = doc.clone();
            self.answer_self_check(host, id, &doc, lookup);
            return Step::Refused;
        }
        req.phase = Phase::Checking { lookup: lookup.clone() };
        let path = format!("/v1/self/{}", req.facts.digest);
        if !self.may_file_for(id) {
            self.callouts.readmit_later(id);
            return Step::Waiting;
        }
        match self.store_call(host, "GET", &path, None, Purpose::SelfCheck(id)) {
            Ok(_) => Step::Waiting,
            Err(_) => self.refuse_step(host, id, &Denial::store_unavailable()),
        }
    }

    /// The store's account of a key for its self-check (a JSON object):
    /// sent as the answer, with the rate limits as this Envoy enforces them.
    pub(super) fn on_self_check(&mut self, host: &impl Host, id: u32, body_size: usize) {
        let ok = host.header_str(Map::CalloutHeaders, ":status").as_deref() == Some("200");
        let body = if ok { host.buffer(Buffer::CalloutBody, 0, body_size).ok() } else { None };
        let doc = body.map(|b| b.trim_ascii().to_vec()).filter(|b| b.starts_with(b"{") && b.ends_with(b"}"));
        if !self.focus(host, id) {
            return;
        }
        let Some(req) = self.requests.get_mut(&id) else { return };
        let (Some(doc), Phase::Checking { lookup }) = (doc, std::mem::take(&mut req.phase)) else {
            self.refuse(host, id, &Denial::store_unavailable());
            return;
        };
        let doc: Rc<[u8]> = doc.into();
        if self.self_checks.len() >= MAX_SELF_CHECKS {
            self.self_checks.clear();
        }
        self.self_checks.insert(req.facts.digest.clone(), (self.now(host), doc.clone()));
        self.answer_self_check(host, id, &doc, &lookup);
    }

    /// Sends a self-check's answer: the store's account of the key (a JSON
    /// object) with `rateLimits` as this Envoy counts them now, added as its
    /// last member (no JSON tree is built: the module stays smaller).
    fn answer_self_check(&mut self, host: &impl Host, id: u32, doc: &[u8], lookup: &KeyAnswer) {
        let window_ms = self.config.rate_limit_window_ms;
        let now = self.now(host);
        let Some(req) = self.requests.get_mut(&id) else { return };
        req.phase = Phase::Refused;
        let rate = match (&lookup.limits, &lookup.key) {
            (Some(limits), Some(key)) => {
                let pool = Shared::new(host).rate_pool(&key.id).ok().flatten();
                let left = ratelimit::remaining(pool, now, limits);
                let n = |v: Option<u64>| v.map_or_else(|| "null".to_string(), |v| v.to_string());
                format!(
                    r#"{{"requestsPerWindow":{},"tokensPerWindow":{},"windowMs":{window_ms},"remainingRequests":{},"remainingTokens":{},"resetMs":{}}}"#,
                    n(limits.requests_per_minute),
                    n(limits.tokens_per_minute),
                    n(left.and_then(|r| r.requests)),
                    n(left.and_then(|r| r.tokens)),
                    n(left.map(|r| r.reset_ms)),
                )
            }
            _ => "null".to_string(),
        };
        let inner = doc.get(1..doc.len().saturating_sub(1)).unwrap_or_default();
        let sep = if inner.trim_ascii().is_empty() { "" } else { "," };
        let body = [b"{".as_slice(), inner, sep.as_bytes(), br#""rateLimits":"#, rate.as_bytes(), b"}"].concat();
        let mut headers: Vec<(&str, &[u8])> =
            vec![("content-type", b"application/json"), ("cache-control", b"no-store")];
        if !req.facts.request_id.is_empty() {
            headers.push((REQUEST_ID_HEADER, req.facts.request_id.as_bytes()));
        }
        if host.send_response(200, &headers, &body).is_err() {
            warn!("keygate: could not answer a self-check");
        }
    }

    /// Asks the store to hold this request's estimate against its budgets.
    ///
    /// Envoy hands a callout's answer to the context that made it (the one
    /// whose callback runs). When that is another request's (one whose
    /// lookup this request joined), it may end before the answer comes, and
    /// the answer would be lost: so the root context, which lives as long as
    /// the VM, files it on its next tick. This request's own gate lives as
    /// long as the request: it may file it.
    fn reserve(&mut self, host: &impl Host, id: u32) -> Step {
        let Some(req) = self.requests.get(&id) else { return Step::Refused };
        let Some(served) = req.admitted.served.clone() else {
            return self.refuse_step(host, id, &Denial::internal("nothing to reserve for"));
        };
        if !self.may_file_for(id) {
            self.callouts.queue_reserve(id);
            return Step::Waiting;
        }
        let body = ReserveRequest {
            request_id: req.facts.request_id.clone(),
            access_key_id: served.key_id,
            config_id: served.config_id,
            provider: served.provider,
            model: served.model,
            input_tokens: req.admitted.estimate.0,
            output_tokens: req.admitted.estimate.1,
            fallbacks: served.fallbacks,
        };
        let dispatched = match serde_json::to_vec(&body) {
            Ok(json) => self.store_call(host, "POST", "/v1/reserve", Some(&json), Purpose::Reserve(id)),
            Err(_) => Err(Purpose::Reserve(id)),
        };
        match dispatched {
            Ok(_) => {
                self.metrics.count(Counter::BudgetReserves);
                Step::Waiting
            }
            Err(_) => self.refuse_step(host, id, &Denial::store_unavailable()),
        }
    }

    /// Files the reservations queued for the root context (on its tick).
    pub(super) fn reserve_queued(&mut self, host: &impl Host) {
        for id in self.callouts.take_reserve_queue() {
            if self.requests.contains_key(&id) && self.focus(host, id) {
                self.reserve(host, id);
            }
        }
    }

    /// The store answered a reservation.
    pub(super) fn on_reserved(&mut self, host: &impl Host, id: u32, body_size: usize) {
        let answer = read_json::<ReserveResponse>(host, body_size);
        if !self.focus(host, id) {
            return; // the request is gone; its reservation expires in the store
        }
        let Some(req) = self.requests.get_mut(&id) else { return };
        let Phase::Reserving { lookup } = &req.phase else { return };
        let lookup = lookup.clone();
        let resume = match answer {
            None => {
                self.refuse(host, id, &Denial::store_unavailable());
                false
            }
            Some(r) if r.ok => {
                req.admitted.reservation = r.reservation_id;
                req.admitted.done = true;
                self.advance(host, id, &lookup) == Step::Forwarded
            }
            Some(r) => {
                let by = r.refused_by.unwrap_or(RefusedBy::Other);
                info!("keygate: request {} refused: insufficient_credits ({})", req.facts.request_id, by.as_str());
                self.refuse(host, id, &admission::budget_refusal(by));
                false
            }
        };
        if resume && host.resume_request().is_err() {
            warn!("keygate: could not resume a request");
        }
    }

    pub fn request_body(&mut self, host: &impl Host, id: u32, body_size: usize, end_of_stream: bool) -> Flow {
        let max = self.config.max_body_bytes;
        let Some(req) = self.requests.get_mut(&id) else { return Flow::Continue };
        let Phase::Forwarded(fw) = &mut req.phase else { return Flow::Continue };
        if fw.rewrite_model.is_none() && !fw.ask_usage && !fw.strip_models {
            return Flow::Continue;
        }
        if body_size as u64 > max {
            // Cannot happen behind Envoy's buffer limit; refuse rather than forward.
            return self.refuse(host, id, &too_large(max));
        }
        if !end_of_stream {
            return Flow::Pause; // buffer until the whole body is here
        }
        let mut body = host.buffer(Buffer::RequestBody, 0, body_size).unwrap_or_default();
        let mut changed = false;
        if std::mem::take(&mut fw.strip_models) {
            changed = crate::model_json::blank_member(&mut body, "models") > 0;
            if !changed && req.facts.body_read {
                // The gate read `models` in this body: it is there.
                return self.refuse(host, id, &Denial::internal("the gateway could not prepare the request"));
            }
        }
        if let Some(model) = fw.rewrite_model.take() {
            let rewritten = match req.facts.form_boundary.as_deref() {
                Some(boundary) => crate::multipart::rewrite_model(&body, boundary, &model),
                None => crate::model_json::rewrite_model(&body, &model),
            };
            match rewritten {
                Some(new_body) => {
                    body = new_body;
                    changed = true;
                }
                None => warn!("keygate: request body has no top-level model to rewrite"),
            }
        }
        if fw.ask_usage {
            match crate::model_json::add_stream_usage(&body) {
                Some(new_body) => {
                    body = new_body;
                    changed = true;
                }
                // Not asked after all: the client's stream is left as it is.
                None => fw.ask_usage = false,
            }
        }
        if !changed {
            return Flow::Continue;
        }
        if host.set_buffer(Buffer::RequestBody, 0, body_size, &body).is_err() {
            warn!("keygate: could not rewrite the request body");
            // The body as sent may hold an unchecked `models`: fail closed.
            return self.refuse(host, id, &Denial::internal("the gateway could not prepare the request"));
        }
        Flow::Continue
    }

    pub fn request_trailers(&mut self, host: &impl Host, id: u32) -> Flow {
        // (Behind a gate, trailers are refused before they get here.)
        let rewriting = self
            .requests
            .get(&id)
            .is_some_and(|r| matches!(&r.phase, Phase::Forwarded(fw) if fw.rewrite_model.is_some() || fw.ask_usage || fw.strip_models));
        if rewriting {
            return self.refuse(host, id, &Denial::unexpected_trailers());
        }
        Flow::Continue
    }

    pub fn response_headers(&mut self, host: &impl Host, id: u32) -> Flow {
        let config = self.config.clone();
        let Some(req) = self.requests.get_mut(&id) else { return Flow::Continue };
        let edits = &mut self.edits;
        edits.clear();
        if !req.facts.request_id.is_empty() {
            edits.set(REQUEST_ID_HEADER, req.facts.request_id.as_bytes());
        }
        if let Some((_, rate)) = &req.admitted.rate {
            for (name, value) in rate.headers() {
                edits.set(name, value);
            }
        }
        let Phase::Forwarded(fw) = &mut req.phase else {
            // A reply of ours: no snapshot to read, a call per header.
            edits.write_each(host, Map::ResponseHeaders);
            return Flow::Continue;
        };
        // One snapshot of the answer's headers, and every change written in
        // one call (`header_edits`).
        let snapshot = host.headers(Map::ResponseHeaders);
        answer_headers(host, &mut self.metrics, &config, &req.facts, fw, &snapshot, edits);
        if edits.write(host, Map::ResponseHeaders, &snapshot).is_err() {
            // One by one then: a scrubbed credential must not pass.
            warn!("keygate: request {}: could not set the answer's headers at once", req.facts.request_id);
            edits.write_each(host, Map::ResponseHeaders);
        }
        Flow::Continue
    }

    /// The answer's trailers (HTTP/2 answers may have them): scrubbed as its
    /// headers are, so that an echoed credential cannot pass there either.
    pub fn response_trailers(&mut self, host: &impl Host, id: u32) -> Flow {
        let Some(req) = self.requests.get_mut(&id) else { return Flow::Continue };
        let Phase::Forwarded(fw) = &mut req.phase else { return Flow::Continue };
        let answer = &mut fw.answer;
        if answer.cut {
            return Flow::Pause;
        }
        if let Some(body) = answer.replace.take() {
            // The provider's answer held for replacing (`response_body`):
            // trailers end its stream, so no body chunk said it was the
            // last, and Envoy passes what it holds on after this call.
            let held = host.buffer(Buffer::ResponseBody, 0, usize::MAX).map(|b| b.len());
            let replaced = held.and_then(|held| host.set_buffer(Buffer::ResponseBody, 0, held, body.as_bytes()));
            if replaced.is_err() {
                return cut_answer(
                    host,
                    &mut self.metrics,
                    &req.facts.request_id,
                    answer,
                    "the held answer could not be replaced",
                );
            }
        }
        // What the body's last chunk would have carried has no chunk left
        // to go in: a filter cannot add body once trailers come (Envoy
        // passed every chunk on already).
        let unwritten = if answer.listing.is_some() {
            Some("the model list ended in trailers")
        } else if answer.hidden_usage.as_ref().is_some_and(|h| h.holding())
            || answer.scrubber.as_ref().is_some_and(|s| s.holding())
        {
            Some("trailers came while part of the answer was held back")
        } else {
            None
        };
        if let Some(why) = unwritten {
            return cut_answer(host, &mut self.metrics, &req.facts.request_id, answer, why);
        }
        let fw = &*fw;
        let snapshot = host.headers(Map::ResponseTrailers);
        let edits = &mut self.edits;
        edits.clear();
        let secrets = || fw.plan.candidates().map(|(_, _, k)| k.value.as_str());
        if scrub_echoes(&mut self.metrics, &req.facts.request_id, &snapshot, secrets, edits, "trailer") == 0 {
            return Flow::Continue;
        }
        if edits.write(host, Map::ResponseTrailers, &snapshot).is_err() {
            warn!("keygate: request {}: could not set the answer's trailers at once", req.facts.request_id);
            edits.write_each(host, Map::ResponseTrailers);
        }
        Flow::Continue
    }

    pub fn response_body(&mut self, host: &impl Host, id: u32, body_size: usize, end_of_stream: bool) -> Flow {
        let Some(req) = self.requests.get_mut(&id) else { return Flow::Continue };
        let Phase::Forwarded(fw) = &mut req.phase else { return Flow::Continue };
        let answer = &mut fw.answer;
        if answer.cut {
            return Flow::Pause;
        }
        let request_id = &req.facts.request_id;
        if answer.listing.is_some() {
            // The whole list, then filtered: collected here chunk by chunk
            // (each passed on empty), so that Envoy's buffer limit (64 KiB a
            // connection) does not bound it; past `MAX_LIST_BYTES` it is
            // shown empty.
            let Ok(chunk) = host.buffer(Buffer::ResponseBody, 0, body_size) else {
                return cut_answer(host, &mut self.metrics, request_id, answer, "the model list could not be read");
            };
            if answer.list.len() <= crate::models::MAX_LIST_BYTES {
                answer.list.extend_from_slice(&chunk);
            }
            let out = match (end_of_stream, answer.listing.take()) {
                (true, Some((provider, allow))) => crate::models::filter_listing(&answer.list, &provider, &allow),
                (false, listing) => {
                    answer.listing = listing;
                    Vec::new()
                }
                (true, None) => Vec::new(),
            };
            if host.set_buffer(Buffer::ResponseBody, 0, body_size, &out).is_err() {
                return cut_answer(host, &mut self.metrics, request_id, answer, "the model list could not be written");
            }
            return Flow::Continue;
        }
        if answer.replace.is_none() {
            // What rewrites the answer sees every chunk (a usage hider that
            // held bytes back and then saw none would pass the rest ahead
            // of them); reading usage alone may stop (past `MAX_JSON_BODY`).
            let rewrites = answer.hidden_usage.is_some() || answer.scrubber.is_some();
            if !rewrites && (!answer.read_usage || body_size == 0) {
                return Flow::Continue;
            }
            let chunk = match host.buffer(Buffer::ResponseBody, 0, body_size) {
                Ok(chunk) => chunk,
                // Only its usage unread: the answer itself passes whole
                // (and is counted at its estimate).
                Err(_) if !rewrites => return Flow::Continue,
                Err(_) => return cut_answer(host, &mut self.metrics, request_id, answer, "a chunk could not be read"),
            };
            if !chunk.is_empty() {
                observe(answer, &chunk);
            }
            let out = match (answer.hidden_usage.as_mut(), answer.scrubber.as_mut()) {
                (Some(hidden), _) => hidden.feed(&chunk, end_of_stream),
                (None, Some(scrubber)) => {
                    let out = scrubber.feed(&chunk, end_of_stream);
                    if end_of_stream && scrubber.scrubbed {
                        warn!(
                            "keygate: request {request_id}: the provider echoed its credential in the body: scrubbed"
                        );
                        self.metrics.count(Counter::ScrubbedBodies);
                    }
                    out
                }
                (None, None) => return Flow::Continue,
            };
            if out != chunk && host.set_buffer(Buffer::ResponseBody, 0, body_size, &out).is_err() {
                return cut_answer(host, &mut self.metrics, request_id, answer, "a chunk could not be rewritten");
            }
            return Flow::Continue;
        }
        if !end_of_stream {
            return Flow::Pause;
        }
        if let Some(body) = answer.replace.take() {
            if host.set_buffer(Buffer::ResponseBody, 0, body_size, body.as_bytes()).is_err() {
                return cut_answer(host, &mut self.metrics, request_id, answer, "the answer could not be replaced");
            }
        }
        Flow::Continue
    }

    /// The request is over: its usage is queued, its rate count corrected,
    /// and whatever it waited for is handed on.
    pub fn request_done(&mut self, host: &impl Host, id: u32) {
        self.left(id);
        let Some(mut req) = self.requests.remove(&id) else { return };
        if let Some(key_id) = req.admitted.slot.take() {
            give_back_slot(host, &key_id, self.vm_tag);
            if let Some(count) = self.slots.get_mut(&key_id) {
                *count = count.saturating_sub(1);
            }
        }
        let (attempts, answer) = match std::mem::take(&mut req.phase) {
            Phase::Forwarded(mut fw) => {
                // Ended before its answer's headers (the client left): the
                // attempts that went out are still recorded.
                if !fw.direct {
                    let config = self.config.clone();
                    read_trail(host, &mut self.metrics, &config, &mut fw);
                }
                (fw.attempts, fw.answer)
            }
            _ => (Vec::new(), Answer::default()),
        };
        let Some(served) = req.admitted.served.take() else { return };
        let usage = match (&answer.scanner, &answer.json) {
            (Some(s), _) => s.usage,
            (None, Some(body)) => Usage::from_json(body),
            _ => Usage::default(),
        };
        // No usage reported for an answer that was served: count the
        // estimate, read now if admission did not need it.
        if !usage.seen
            && records::served_ok(&attempts)
            && req.facts.max_tokens.is_none()
            && req.facts.has_body
            && !req.facts.body_read
        {
            req.facts.max_tokens = read_max_tokens(host, &self.config.metadata_namespace);
            req.admitted.estimate = req.estimate();
        }
        let (input, output) = records::tokens(&usage, records::served_ok(&attempts), req.admitted.estimate);
        let finished = Finished {
            request_id: std::mem::take(&mut req.facts.request_id),
            served,
            attempts,
            usage,
            estimate: req.admitted.estimate,
            streaming: answer.scanner.is_some(),
            started_ms: req.facts.started_ms,
            ended_ms: self.now(host),
            reservation: req.admitted.reservation.take(),
        };
        let recs = records::records(finished);
        if recs.is_empty() {
            return; // refused or abandoned before anything went upstream
        }
        self.metrics.add(Counter::TokensInput, input);
        self.metrics.add(Counter::TokensOutput, output);
        if let Some((key_id, rate)) = req.admitted.rate.take() {
            settle_rate(host, &key_id, &rate, input.saturating_add(output));
        }
        let dropped = self.usage.push(recs);
        self.metrics.add(Counter::UsageDropped, dropped);
    }

    /// Refuses request `id` (its context effective) with a local reply.
    pub(super) fn refuse(&mut self, host: &impl Host, id: u32, denial: &Denial) -> Flow {
        if let Some(req) = self.requests.get_mut(&id) {
            info!("keygate: request {} refused: {}", req.facts.request_id, denial.code);
            // Refused after it was forwarded (its body), a request keeps its
            // plan: attempts may have gone out, and are recorded when it ends.
            if !matches!(req.phase, Phase::Forwarded(_)) {
                req.phase = Phase::Refused;
            }
            reply(host, &mut self.metrics, req.facts.dialect, &req.facts.request_id, denial);
        }
        Flow::Pause
    }

    fn refuse_step(&mut self, host: &impl Host, id: u32, denial: &Denial) -> Step {
        self.refuse(host, id, denial);
        Step::Refused
    }
}

/// What the attempts got, from the trail the upstream filter left in the
/// request's filter state (once): each becomes an attempt of the usage
/// records, and a key that answered 429 or 401/403 cools down for every worker.
fn read_trail(host: &impl Host, metrics: &mut Metrics, config: &crate::config::Config, fw: &mut Forwarded) {
    if std::mem::replace(&mut fw.trail_read, true) {
        return;
    }
    let trail = host.property(&handover::TRAIL_STATE).map(|b| handover::parse_trail(&b)).unwrap_or_default();
    metrics.add(Counter::FailoverRetries, trail.len().saturating_sub(1) as u64);
    for (outcome, (leg, _, key)) in trail.into_iter().zip(fw.plan.candidates()) {
        cool_down(host, metrics, &key.id, outcome, config);
        fw.attempts.push(Attempt { key_id: key.id.clone(), status: outcome.status, leg });
    }
}

/// The store takes request ids of 1 to 512 bytes without control
/// characters (Envoy generates UUIDs; a client's may be anything).
pub(super) fn usable_request_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 512 && !id.chars().any(char::is_control)
}

/// The token estimate of request `req` (both directions).
fn req_estimate(req: Option<&Request>) -> u64 {
    req.map_or(0, |r| r.admitted.estimate.0.saturating_add(r.admitted.estimate.1))
}

fn flow(step: Step) -> Flow {
    if step == Step::Forwarded {
        Flow::Continue
    } else {
        Flow::Pause
    }
}

/// Reads a response chunk for usage as it passes (never holds it back).
fn observe(answer: &mut Answer, chunk: &[u8]) {
    if !answer.read_usage {
        return;
    }
    if answer.scanner.is_none() && answer.json.is_none() {
        match usage::body_kind(chunk) {
            Some(BodyKind::Json) => answer.json = Some(Vec::new()),
            Some(BodyKind::EventStream) => answer.scanner = Some(SseScanner::default()),
            None => return, // only whitespace so far
        }
    }
    if let Some(scanner) = answer.scanner.as_mut() {
        scanner.feed(chunk);
    } else if let Some(json) = answer.json.as_mut() {
        if json.len() + chunk.len() <= MAX_JSON_BODY {
            json.extend_from_slice(chunk);
        } else {
            answer.json = None;
            answer.read_usage = false;
        }
    }
}

/// The body's `model` from `json_to_metadata`'s metadata. Each property
/// read costs 2-3 µs: `body_error` is read only when there is no model,
/// which a valid body has.
fn read_model(host: &impl Host, namespace: &str) -> ModelField {
    let prop = |key: &str| host.property(&["metadata", "filter_metadata", namespace, key]);
    metadata::model(prop("model"), || prop("body_error").is_some())
}

/// `max_tokens` (or `max_completion_tokens` / `max_output_tokens`) from the metadata.
/// The largest output limit `json_to_metadata` found (no gate: Istio).
fn read_max_tokens(host: &impl Host, namespace: &str) -> Option<u64> {
    read_largest(host, namespace, &["max_tokens", "max_completion_tokens", "max_output_tokens", "max_tokens_to_sample"])
}

/// The largest of `n` and `best_of` that `json_to_metadata` found.
fn read_choices(host: &impl Host, namespace: &str) -> Option<u64> {
    read_largest(host, namespace, &["n", "best_of"])
}

fn read_largest(host: &impl Host, namespace: &str, keys: &[&str]) -> Option<u64> {
    keys.iter()
        .filter_map(|key| metadata::count(&host.property(&["metadata", "filter_metadata", namespace, key])?))
        .max()
}

/// Finds the fields of `snapshot` (the answer's headers or trailers) that
/// echo a credential of `secrets` and puts them into `edits` scrubbed: every
/// copy of such a name written again, in order, each scrubbed (a change of
/// a name replaces all its copies, and the copies that echo nothing are
/// kept). Returns how many fields echoed one.
fn scrub_echoes<'s, S: Iterator<Item = &'s str>>(
    metrics: &mut Metrics,
    request_id: &str,
    snapshot: &HeaderMap,
    secrets: impl Fn() -> S,
    edits: &mut Edits,
    what: &str,
) -> usize {
    // The names of fields that echo a credential (none, but rarely).
    let mut echoed: Vec<&[u8]> = Vec::new();
    let mut count = 0;
    for (raw_name, value) in snapshot.raw_iter() {
        if raw_name.starts_with(b":") || crate::scrub::scrub_each(value, secrets()).is_none() {
            continue;
        }
        let name = String::from_utf8_lossy(raw_name);
        warn!("keygate: request {request_id}: the provider echoed its credential in the {what} `{name}`: scrubbed");
        metrics.count(Counter::ScrubbedHeaders);
        count += 1;
        if !echoed.contains(&raw_name) {
            echoed.push(raw_name);
        }
    }
    let mut written: Vec<&[u8]> = Vec::new();
    for (raw_name, value) in snapshot.raw_iter().filter(|(n, _)| echoed.contains(n)) {
        let clean = crate::scrub::scrub_each(value, secrets());
        let value = clean.as_deref().unwrap_or(value);
        // A name that is not UTF-8 (Envoy 1.40 refuses those) goes.
        match std::str::from_utf8(raw_name) {
            Ok(name) if written.contains(&raw_name) => edits.append(name, value),
            Ok(name) => {
                edits.set(name, value);
                written.push(raw_name);
            }
            Err(_) => edits.remove_raw(raw_name),
        }
    }
    count
}

/// What the keygate filter does with a forwarded request's answer headers:
/// reads the status and the attempts, scrubs echoed credentials, names who
/// served, and decides what the body needs. Its header changes go into
/// `edits`.
fn answer_headers(
    host: &impl Host,
    metrics: &mut Metrics,
    config: &crate::config::Config,
    facts: &Facts,
    fw: &mut Forwarded,
    snapshot: &HeaderMap,
    edits: &mut Edits,
) {
    // One snapshot: the status, and any header that echoes a credential.
    let mut status = 0;
    let mut refused_upstream = false;
    let mut retry_after = (None, None);
    let secrets = || fw.plan.candidates().map(|(_, _, k)| k.value.as_str());
    for (raw_name, value) in snapshot.raw_iter() {
        let name = std::str::from_utf8(raw_name).unwrap_or("");
        let text = || String::from_utf8(value.to_vec()).ok();
        match name {
            ":status" => status = std::str::from_utf8(value).ok().and_then(|s| s.parse().ok()).unwrap_or(0),
            crate::attempt::REFUSED_HEADER => refused_upstream = true,
            "retry-after-ms" => retry_after.0 = text(),
            "retry-after" => retry_after.1 = text(),
            _ => {}
        }
    }
    scrub_echoes(metrics, &facts.request_id, snapshot, secrets, edits, "header");
    if fw.direct && fw.attempts.is_empty() {
        let key_id = fw.plan.attempt(0).map(|(_, _, k)| k.id.clone()).unwrap_or_default();
        let retry_hint_ms =
            if status == 429 { retry_hint_ms(retry_after.0.as_deref(), retry_after.1.as_deref()) } else { None };
        cool_down(host, metrics, &key_id, Outcome { status: Some(status), retry_hint_ms }, config);
        fw.attempts.push(Attempt { key_id, status: Some(status), leg: 0 });
    } else if !fw.direct {
        read_trail(host, metrics, config, fw);
        if refused_upstream {
            edits.remove(crate::attempt::REFUSED_HEADER);
        }
        if fw.attempts.is_empty() && refused_upstream {
            // The upstream filter refused to send it (it could not open
            // the plan): nothing reached a provider.
            let denial = Denial::internal("the gateway could not hand the request to its upstream half");
            warn!("keygate: request {} refused by the upstream filter", facts.request_id);
            edits.remove("content-length");
            edits.set("content-type", "application/json");
            fw.answer.replace = Some(denial.body(facts.dialect));
            return;
        }
    }
    // Whether the answer is a JSON document or an event stream is read
    // from its first byte (`observe_body`), which saves a header read.
    fw.answer.read_usage = true;
    edits.set_number("x-keygate-attempts", fw.attempts.len() as u64);
    if let Some(last) = fw.attempts.last() {
        edits.set("x-keygate-provider-key", last.key_id.as_bytes());
        // Which model and provider served (with fallbacks, not always
        // the first).
        if let Some(leg) = fw.plan.legs.get(last.leg) {
            edits.set("x-keygate-provider", leg.provider.as_bytes());
            if let Some(model) = &leg.model {
                edits.set("x-keygate-model", model.as_bytes());
            }
        }
    }
    if failover::is_failover_status(status) {
        // Every candidate was tried (Envoy stops retrying only then, or on
        // the total timeout): answer in the client's dialect, by key id.
        let denial = failover::exhausted(&fw.attempts, status);
        info!("keygate: request {} failed: {}", facts.request_id, denial.message);
        metrics.count(Counter::FailoverExhausted);
        edits.remove("content-length");
        edits.set("content-type", "application/json");
        edits.set("x-keygate-error", denial.code.as_str());
        fw.answer.replace = Some(denial.body(facts.dialect));
    } else if (200..300).contains(&status) && fw.ask_usage {
        edits.remove("content-length");
        fw.answer.hidden_usage = Some(crate::hidden_usage::HiddenUsage::default());
    } else if (200..300).contains(&status) && fw.listing.is_some() {
        edits.remove("content-length");
        fw.answer.listing = fw.listing.take();
    } else if !(200..300).contains(&status) {
        // Error bodies are where providers echo a rejected credential.
        edits.remove("content-length");
        let secrets = fw.plan.candidates().map(|(_, _, k)| k.value.clone()).collect();
        fw.answer.scrubber = Some(StreamScrubber::new(secrets));
    }
}

/// The answer cannot go on as keygate promised (a chunk it must rewrite could
/// not be read or written; what the last chunk would carry has no chunk to
/// go in): the stream is reset, so a client never takes a partial,
/// unfiltered or unscrubbed answer for the whole one. What Envoy holds of it
/// stays held (`Flow::Pause`) until the reset drops it, and later chunks
/// are held too.
fn cut_answer(host: &impl Host, metrics: &mut Metrics, request_id: &str, answer: &mut Answer, why: &str) -> Flow {
    warn!("keygate: request {request_id}: the answer is reset: {why}");
    metrics.count(Counter::AnswersCut);
    answer.cut = true;
    if host.reset_answer().is_err() {
        warn!("keygate: request {request_id}: the answer could not be reset: it is held instead");
    }
    Flow::Pause
}
