//! The glue between Envoy (proxy-wasm ABI) and the pure logic.
//!
//! Every host call goes through `proxy_wasm::hostcalls` and its `Result`: the
//! SDK's trait helpers unwrap host errors, and a panic kills the VM.
//!
//! One VM runs per Envoy worker thread; `VM` below is that worker's state:
//! its cache, the lookups in flight (so concurrent requests for one uncached
//! key cause one store call), and the change-feed position.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use keygate_proto::lookup::{Access, AuthStyle, Changes, Credential, KeyStatus, Lookup, ProviderPlan, UsageRecord};
use keygate_proto::token;
use log::{debug, info, warn};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType};

use crate::body::{self, BodyFacts};
use crate::cache::{Cache, Freshness};
use crate::config::{Config, Role};
use crate::decide::{check_key, decide, ModelField, RequestFacts};
use crate::errors::{Denial, Dialect};
use crate::failover::{self, Attempt};
use crate::inbound::Inbound;
use crate::metrics;
use crate::model_json;
use crate::multipart::MultipartReader;
use crate::screen::{screen, too_large};
use crate::scrub::StreamScrubber;
use crate::surface::{self, BodyKind, Judge};
use crate::upstream::{credential_header, CLIENT_CREDENTIAL_HEADERS};

mod accounting;
mod host;

use accounting::RateState;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::default()) });
}}

const REQUEST_ID_HEADER: &str = "x-keygate-request-id";

#[link(wasm_import_module = "env")]
extern "C" {
    // The SDK's `get_log_level` reads the answer into its `LogLevel` enum,
    // which has no value for spdlog's `off` (6): read it as a number.
    fn proxy_get_log_level(return_level: *mut u32) -> u32;
}

/// Follows Envoy's level for the `wasm` component (checked once a second, so
/// `/logging?wasm=debug` takes effect), so that a disabled log line costs no
/// formatting and no host call.
fn sync_log_level() {
    let mut level: u32 = 0;
    // SAFETY: the host writes one u32 through a pointer to a live local.
    let status = unsafe { proxy_get_log_level(&mut level) };
    if status != 0 {
        return;
    }
    log::set_max_level(match level {
        0 => log::LevelFilter::Trace,
        1 => log::LevelFilter::Debug,
        2 => log::LevelFilter::Info,
        3 => log::LevelFilter::Warn,
        4 => log::LevelFilter::Error,
        _ => log::LevelFilter::Off,
    });
}

/// Per-VM (per-worker) state shared by the root and the request contexts.
struct Vm {
    cache: Cache,
    /// Lookups in flight, by token digest.
    pending: HashMap<String, Pending>,
    /// Lookups whose owning request went away before the answer: the root
    /// context asks again on its next tick for the requests still waiting.
    orphans: Vec<String>,
    feed_version: u64,
    /// Reservation callouts in flight: token -> the request waiting for it.
    reserves: HashMap<u32, Rc<RefCell<RequestState>>>,
    /// Requests whose reservation the root context must file (next tick).
    reserve_queue: Vec<Rc<RefCell<RequestState>>>,
    /// Usage records waiting to be sent to the store (bounded).
    usage: VecDeque<UsageRecord>,
    gateway_token: Rc<String>,
    config: Rc<Config>,
    /// Provider plans and scopes shared by cache entries: keys of one
    /// configuration get equal ones, kept once (by content hash).
    plans: HashMap<u64, Arc<Vec<ProviderPlan>>>,
    scopes: HashMap<u64, Arc<Access>>,
}

/// Most distinct plans / scopes kept for sharing; past it the table starts over.
const MAX_INTERNED: usize = 4_096;

fn intern_one<T: Hash + PartialEq>(table: &mut HashMap<u64, Arc<T>>, value: &mut Arc<T>) {
    let mut h = DefaultHasher::new();
    value.hash(&mut h);
    let slot = h.finish();
    match table.get(&slot) {
        Some(shared) if **shared == **value => *value = shared.clone(),
        _ => {
            if table.len() >= MAX_INTERNED {
                table.clear();
            }
            table.insert(slot, value.clone());
        }
    }
}

/// A fresh store answer, sharing its plan and scope with equal cached ones.
fn intern(mut lookup: Lookup) -> Rc<Lookup> {
    with_vm(|vm| {
        if !lookup.providers.is_empty() {
            intern_one(&mut vm.plans, &mut lookup.providers);
        }
        if let Some(access) = lookup.access.as_mut() {
            intern_one(&mut vm.scopes, access);
        }
    });
    Rc::new(lookup)
}

/// A store lookup in flight and the requests waiting for it.
struct Pending {
    /// The context whose callout this is (0 = the root context).
    owner: u32,
    waiters: Vec<(u32, Rc<RefCell<RequestState>>)>,
    /// Gates of requests still uploading their body with this key: a
    /// refusal is answered through them at once.
    gates: Vec<Rc<GateWatch>>,
}

impl Pending {
    fn new(owner: u32) -> Pending {
        Pending { owner, waiters: Vec::new(), gates: Vec::new() }
    }

    /// Someone still needs the answer.
    fn needed(&self) -> bool {
        !self.waiters.is_empty() || self.gates.iter().any(|g| !g.handed_over.get())
    }
}

/// A gate that waits for a key lookup while its request's body uploads.
struct GateWatch {
    gate: u32,
    dialect: Dialect,
    request_id: String,
    /// The body is complete (the keygate filter has the request and waits
    /// for the answer itself), or the request is gone.
    handed_over: Cell<bool>,
}

/// What the downstream filter decided for one request, handed to the upstream
/// filter (which runs once per attempt, on the same worker, in the same VM).
/// Only its id travels, in filter state; the credentials stay in VM memory.
struct Plan {
    /// One candidate: the downstream filter set the credential itself and
    /// routed to a cluster without the upstream filter (one attempt, no retry).
    direct: bool,
    auth: AuthStyle,
    /// Candidate credentials, in the order attempts use them.
    keys: Vec<Credential>,
    attempts: Vec<Attempt>,
}

thread_local! {
    static VM: RefCell<Option<Vm>> = const { RefCell::new(None) };
    static PLANS: RefCell<HashMap<u64, Rc<RefCell<Plan>>>> = RefCell::new(HashMap::new());
    static NEXT_PLAN: Cell<u64> = const { Cell::new(1) };
    /// What the gate found in the body of the request whose headers reach
    /// the keygate filter next (see `Gate`).
    /// With the findings, the gate's context id: the request's callouts may
    /// be filed under it (it lives exactly as long as the request).
    static TAPPED: RefCell<Option<(u32, BodyFacts)>> = const { RefCell::new(None) };
    /// A gate filter runs in this VM: a request with a body must then come
    /// with the gate's findings (without a gate, as in the Istio setup, the
    /// keygate filter reads `json_to_metadata`'s).
    static GATED: Cell<bool> = const { Cell::new(false) };
}

const PLAN_PROPERTY: &str = "keygate_plan";
/// Where Envoy keeps what the wasm filter set as `PLAN_PROPERTY`.
const PLAN_FILTER_STATE: &str = "wasm.keygate_plan";
/// The root context's tick: it polls the change feed (every `pollIntervalMs`),
/// flushes usage, purges the cache, and makes the callouts that no live
/// request context can own (see `accounting::reserve`).
const TICK_MS: u64 = 20;
const PURGE_INTERVAL_MS: u64 = 1_000;
const HEALTH_PREFIX: &str = "keygate.cooldown.";

fn with_vm<R>(f: impl FnOnce(&mut Vm) -> R) -> Option<R> {
    VM.with(|vm| {
        let mut vm = vm.borrow_mut();
        let vm = vm.as_mut()?;
        let before = vm.cache.len();
        let out = f(vm);
        metrics::gauge_add("cache.entries", vm.cache.len() as i64 - before as i64);
        Some(out)
    })
}

fn now_ms() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[derive(Default)]
struct Root {
    config: Option<Rc<Config>>,
    gateway_token: Rc<String>,
    poll_token: Option<u32>,
    /// Orphaned lookups the root re-asked, by callout token.
    root_lookups: HashMap<u32, String>,
    /// A usage batch in flight, kept until the store acknowledges it.
    flush: Option<(u32, Vec<UsageRecord>)>,
    last_flush_ms: u64,
    last_poll_ms: u64,
    last_purge_ms: u64,
}

impl Context for Root {
    fn on_http_call_response(&mut self, token_id: u32, _headers: usize, body_size: usize, _trailers: usize) {
        accounting::running(0);
        if accounting::on_reserve_response(token_id, body_size) {
            return;
        }
        if let Some((token, batch)) = self.flush.take() {
            if token == token_id {
                let ok = host::header_str(MapType::HttpCallResponseHeaders, ":status");
                if ok.as_deref() != Some("200") {
                    warn!(
                        "keygate: usage batch not accepted ({}): kept for the next flush",
                        ok.as_deref().unwrap_or("no answer")
                    );
                    accounting::requeue(batch);
                }
                return;
            }
            self.flush = Some((token, batch));
        }
        if self.poll_token == Some(token_id) {
            self.poll_token = None;
            match read_json::<Changes>(body_size) {
                Some(changes) => apply_changes(&changes),
                None => metrics::count("store.poll_errors"),
            }
        } else if let Some(digest) = self.root_lookups.remove(&token_id) {
            let answer = read_json::<Lookup>(body_size);
            complete_lookup(&digest, answer.map(intern), self.config.as_deref());
        }
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        sync_log_level();
        let bytes = match host::buffer(BufferType::PluginConfiguration, 0, usize::MAX) {
            Ok(b) if !b.is_empty() => b,
            _ => {
                log::error!("keygate: no plugin configuration");
                return false;
            }
        };
        let config = match Config::parse(&bytes) {
            Ok(c) => c,
            Err(e) => {
                log::error!("keygate: {e}");
                return false;
            }
        };
        let token = match std::env::var(&config.gateway_token_env) {
            Ok(t) if !t.trim().is_empty() => t.trim().to_string(),
            _ if config.role != Role::Downstream => String::new(),
            _ => {
                log::error!(
                    "keygate: plugin configuration: gatewayTokenEnv: environment variable {} is not set for the VM (vm_config.environment_variables)",
                    config.gateway_token_env
                );
                return false;
            }
        };
        if config.role != Role::Downstream {
            if config.role == Role::Gate {
                GATED.with(|g| g.set(true));
            }
            info!("keygate: configured ({})", if config.role == Role::Gate { "gate" } else { "upstream" });
            self.config = Some(Rc::new(config));
            return true;
        }
        let config = Rc::new(config);
        let token = Rc::new(token);
        VM.with(|vm| {
            *vm.borrow_mut() = Some(Vm {
                cache: Cache::new(config.cache_max_entries, config.cache_ttl_ms, config.stale_if_error_ms),
                pending: HashMap::new(),
                orphans: Vec::new(),
                feed_version: 0,
                reserves: HashMap::new(),
                reserve_queue: Vec::new(),
                usage: VecDeque::new(),
                gateway_token: token.clone(),
                config: config.clone(),
                plans: HashMap::new(),
                scopes: HashMap::new(),
            })
        });
        if hostcalls::set_tick_period(Duration::from_millis(TICK_MS.min(config.poll_interval_ms))).is_err() {
            log::error!("keygate: cannot set the tick period");
            return false;
        }
        self.gateway_token = token;
        self.config = Some(config);
        info!("keygate: configured");
        true
    }

    fn on_tick(&mut self) {
        accounting::running(0);
        let Some(config) = self.config.clone() else { return };
        let now = now_ms();
        metrics::flush();
        accounting::reserve_queued();
        if now.saturating_sub(self.last_purge_ms) >= PURGE_INTERVAL_MS {
            self.last_purge_ms = now;
            with_vm(|vm| vm.cache.purge_expired(now));
            sync_log_level();
        }
        if self.poll_token.is_none() && now.saturating_sub(self.last_poll_ms) >= config.poll_interval_ms {
            self.last_poll_ms = now;
            let since = with_vm(|vm| vm.feed_version).unwrap_or(0);
            let path = format!("/v1/changes?since={since}");
            self.poll_token = store_call(&config, &self.gateway_token, "GET", &path, None).ok();
        }
        if self.flush.is_none() && accounting::flush_due(now.saturating_sub(self.last_flush_ms)) {
            self.last_flush_ms = now;
            self.flush = accounting::flush(&config, &self.gateway_token);
        }
        for digest in with_vm(|vm| std::mem::take(&mut vm.orphans)).unwrap_or_default() {
            let path = format!("/v1/lookup/{digest}");
            match store_call(&config, &self.gateway_token, "GET", &path, None) {
                Ok(token) => {
                    with_vm(|vm| {
                        if let Some(p) = vm.pending.get_mut(&digest) {
                            p.owner = 0;
                        }
                    });
                    self.root_lookups.insert(token, digest);
                }
                Err(()) => complete_lookup(&digest, None, Some(&config)),
            }
        }
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        let config = self.config.clone()?;
        match config.role {
            Role::Upstream => return Some(Box::new(UpstreamAttempt { config, plan: None })),
            Role::Gate => return Some(Box::new(Gate::new(context_id, &config))),
            Role::Downstream => {}
        }
        let state = RequestState { context_id, ..RequestState::default() };
        Some(Box::new(Request {
            id: context_id,
            config,
            gateway_token: self.gateway_token.clone(),
            state: Rc::new(RefCell::new(state)),
            digest: None,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

fn store_call(config: &Config, gateway_token: &str, method: &str, path: &str, body: Option<&[u8]>) -> Result<u32, ()> {
    let auth = format!("Bearer {gateway_token}");
    let mut headers = vec![
        (":method", method),
        (":path", path),
        (":authority", config.store_authority.as_str()),
        ("authorization", auth.as_str()),
    ];
    if body.is_some() {
        headers.push(("content-type", "application/json"));
    }
    hostcalls::dispatch_http_call(
        &config.store_cluster,
        headers,
        body,
        vec![],
        Duration::from_millis(config.callout_timeout_ms),
    )
    .map_err(|e| warn!("keygate: store callout could not be dispatched: {e:?}"))
}

/// The body of a store answer, if it is a 200 with a document we understand.
fn read_json<T: serde::de::DeserializeOwned>(body_size: usize) -> Option<T> {
    let status = host::header_str(MapType::HttpCallResponseHeaders, ":status");
    if status.as_deref() != Some("200") {
        warn!("keygate: key store answered {}", status.as_deref().unwrap_or("nothing (timeout or connection failure)"));
        return None;
    }
    let body = host::buffer(BufferType::HttpCallResponseBody, 0, body_size).ok()?;
    serde_json::from_slice(&body).map_err(|e| warn!("keygate: unreadable key store answer: {e}")).ok()
}

fn apply_changes(changes: &Changes) {
    with_vm(|vm| {
        if changes.all {
            vm.cache.invalidate_all(if changes.all_at > 0 { changes.all_at } else { changes.version });
        }
        // Older stores send no per-digest versions: then the feed's version.
        let version_of = |i: usize| changes.digest_versions.get(i).copied().unwrap_or(changes.version);
        vm.cache.invalidate(changes.digests.iter().enumerate().map(|(i, d)| (d, version_of(i))));
        vm.feed_version = vm.feed_version.max(changes.version);
    });
}

/// What a request context knows about its request while it waits.
#[derive(Default)]
struct RequestState {
    request_id: String,
    dialect: Option<Dialect>,
    /// `:method` and `:path` as the client sent them (screened): the surface
    /// is read from them (and `anthropic_version`) again for the decision.
    method: String,
    path: String,
    /// Request headers to remove before the request goes upstream.
    strip: Vec<String>,
    /// The client sent `anthropic-version` itself.
    anthropic_version: bool,
    has_body: bool,
    model: Option<ModelField>,
    /// `model` and `max_tokens` came from the gate (no metadata reads).
    body_read: bool,
    /// A cached approval past its TTL, usable if the store cannot be reached.
    stale: Option<Rc<Lookup>>,
    /// The provider's model name to write into the body, once decided.
    rewrite_model: Option<String>,
    /// A form's boundary (the body to rewrite is a form, not JSON).
    form_boundary: Option<String>,
    /// The forwarding plan, once decided.
    plan: Option<(u64, Rc<RefCell<Plan>>)>,
    /// The upstream answer is replaced by keygate's own error (every key failed).
    replace_response: Option<String>,
    /// An error answer is passed on with the provider credentials scrubbed.
    scrubber: Option<StreamScrubber>,
    /// The body carries a well-formed keygate token (from the gate).
    access_key_in_body: bool,
    /// This request's gate context, if a gate runs (see `accounting::reserve`).
    gate_id: Option<u32>,
    context_id: u32,
    started_ms: u64,
    /// `content-length` of the request, `max_tokens` (or its kin) and the
    /// outputs per request (`n`, `best_of`; 0 read as 1) from the body.
    body_bytes: u64,
    max_tokens: Option<u64>,
    choices: u64,
    /// The store answer the decision was made on (kept while a reservation is out).
    lookup: Option<Rc<Lookup>>,
    /// Rate limits and reservation are done: only forwarding is left.
    admitted: bool,
    /// Token estimate (input, output) reserved / counted for this request.
    estimate: (u64, u64),
    reservation: Option<String>,
    rate: Option<RateState>,
    /// Who served: key, configuration, provider, model (for usage records).
    served: Option<accounting::Served>,
    /// Usage read from the response as it passes: whether to, and how (an
    /// event stream has a scanner).
    read_usage: bool,
    scanner: Option<crate::usage::SseScanner>,
    json_body: Option<Vec<u8>>,
}

struct Request {
    id: u32,
    config: Rc<Config>,
    gateway_token: Rc<String>,
    state: Rc<RefCell<RequestState>>,
    /// Set while this request waits on a lookup.
    digest: Option<String>,
}

impl Context for Request {
    fn on_http_call_response(&mut self, token_id: u32, _headers: usize, body_size: usize, _trailers: usize) {
        accounting::running(self.id);
        if accounting::on_reserve_response(token_id, body_size) {
            return;
        }
        let Some(digest) = self.digest.take() else { return };
        let answer = read_json::<Lookup>(body_size);
        if answer.is_none() {
            metrics::count("store.errors");
        }
        complete_lookup(&digest, answer.map(intern), Some(&self.config));
    }

    fn on_done(&mut self) -> bool {
        accounting::record(&self.state);
        if let Some((plan_id, _)) = self.state.borrow_mut().plan.take() {
            PLANS.with(|p| p.borrow_mut().remove(&plan_id));
        }
        if let Some(digest) = self.digest.take() {
            leave_lookup(self.id, digest);
        }
        true
    }
}

/// A context that waits for, or owns, the lookup of `digest` is done: it
/// stops waiting, and a lookup it owns that others still wait for is asked
/// again by the root context (its answer would go to this gone context).
fn leave_lookup(id: u32, digest: String) {
    with_vm(|vm| {
        if let Some(p) = vm.pending.get_mut(&digest) {
            p.waiters.retain(|(w, _)| *w != id);
            if !p.needed() {
                vm.pending.remove(&digest);
            } else if p.owner == id {
                vm.orphans.push(digest);
            }
        }
    });
}

impl HttpContext for Request {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        accounting::running(self.id);
        // One snapshot of the headers: each host call that returns data costs
        // about 1 µs (see `inbound`).
        let headers = host::headers(MapType::HttpRequestHeaders);
        let inbound = Inbound::from_headers(&headers);
        drop(headers);
        #[cfg(feature = "fault-injection")]
        #[allow(clippy::panic)]
        if inbound.test_panic {
            panic!("keygate: fault injection"); // allow-panic: test builds only
        }
        // Always taken, so that it can never be read for another request.
        let tapped = TAPPED.with(|t| t.borrow_mut().take());
        let has_body = !end_of_stream;
        let screened = screen(&inbound, has_body, self.config.max_body_bytes)
            .map(|s| (s.dialect, token::digest(s.token), s.boundary.map(str::to_string)));
        if screened.is_err() {
            blank_leaks(&inbound);
        }
        let Inbound { method, path, request_id, content_length, anthropic_version, strip, .. } = inbound;
        {
            let mut st = self.state.borrow_mut();
            st.request_id = request_id;
            st.strip = strip;
            st.anthropic_version = anthropic_version;
        }
        let digest = match screened {
            Ok((dialect, digest, boundary)) => {
                let mut st = self.state.borrow_mut();
                st.dialect = Some(dialect);
                st.form_boundary = boundary;
                digest
            }
            Err((dialect, denial)) => {
                self.state.borrow_mut().dialect = Some(dialect);
                return self.deny(denial);
            }
        };
        {
            let mut st = self.state.borrow_mut();
            st.method = method;
            st.path = path;
            st.has_body = has_body;
            st.started_ms = now_ms();
            st.gate_id = tapped.as_ref().map(|(id, _)| *id);
            match tapped.map(|(_, facts)| facts) {
                Some(facts) if has_body => {
                    st.model = Some(facts.model);
                    st.max_tokens = facts.max_tokens;
                    st.choices = facts.choices;
                    st.access_key_in_body = facts.access_key;
                    st.body_read = true;
                }
                // A gate runs in this VM, yet no findings: refuse rather than guess.
                _ if has_body && GATED.with(Cell::get) => {
                    drop(st);
                    return self.deny(Denial::new(500, "internal_error", "the request body could not be read"));
                }
                _ => {}
            }
            st.body_bytes = content_length.unwrap_or(0);
        }

        let now = now_ms();
        let cached = with_vm(|vm| vm.cache.get(&digest, now)).flatten();
        match cached {
            Some((lookup, Freshness::Fresh)) => {
                metrics::count("cache.hits");
                return if advance(&self.config, &self.state, &lookup) == Step::Forwarded {
                    Action::Continue
                } else {
                    Action::Pause
                };
            }
            Some((lookup, Freshness::Stale)) => self.state.borrow_mut().stale = Some(lookup),
            None => {}
        }
        metrics::count("cache.misses");

        // Miss: join a lookup in flight for this key, or start one.
        let id = self.id;
        let joined = with_vm(|vm| match vm.pending.get_mut(&digest) {
            Some(p) => {
                p.waiters.push((id, self.state.clone()));
                metrics::count("store.coalesced");
                true
            }
            None => false,
        })
        .unwrap_or(false);
        if !joined {
            metrics::count("store.lookups");
            match store_call(&self.config, &self.gateway_token, "GET", &format!("/v1/lookup/{digest}"), None) {
                Ok(_) => {
                    with_vm(|vm| {
                        let mut pending = Pending::new(id);
                        pending.waiters.push((id, self.state.clone()));
                        vm.pending.insert(digest.clone(), pending)
                    });
                }
                Err(()) => {
                    metrics::count("store.errors");
                    let stale = self.state.borrow().stale.clone();
                    return match stale {
                        Some(lookup) => {
                            metrics::count("cache.stale_served");
                            if advance(&self.config, &self.state, &lookup) == Step::Forwarded {
                                Action::Continue
                            } else {
                                Action::Pause
                            }
                        }
                        None => self.store_unavailable(),
                    };
                }
            }
        }
        debug!("keygate: request {} waits for a key lookup", self.state.borrow().request_id);
        self.digest = Some(digest);
        Action::Pause
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if self.state.borrow().rewrite_model.is_none() {
            return Action::Continue;
        }
        if body_size as u64 > self.config.max_body_bytes {
            // Cannot happen behind Envoy's buffer limit; refuse rather than forward.
            return self.deny(too_large(self.config.max_body_bytes));
        }
        if !end_of_stream {
            return Action::Pause; // buffer until the whole body is here
        }
        let Some(model) = self.state.borrow_mut().rewrite_model.take() else { return Action::Continue };
        let body = host::buffer(BufferType::HttpRequestBody, 0, body_size).unwrap_or_default();
        let rewritten = match self.state.borrow().form_boundary.as_deref() {
            Some(boundary) => crate::multipart::rewrite_model(&body, boundary, &model),
            None => model_json::rewrite_model(&body, &model),
        };
        match rewritten {
            Some(new_body) => {
                if host::set_buffer(BufferType::HttpRequestBody, 0, body_size, &new_body).is_err() {
                    warn!("keygate: could not rewrite the request body");
                }
            }
            None => warn!("keygate: request body has no top-level model to rewrite"),
        }
        Action::Continue
    }

    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        // (Behind a gate, trailers are refused before they get here.)
        if self.state.borrow().rewrite_model.is_some() {
            return self.deny(unexpected_trailers());
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let mut st = self.state.borrow_mut();
        let set = |name: &str, value: &str| {
            let _ = host::set_header(MapType::HttpResponseHeaders, name, Some(value.as_bytes()));
        };
        if !st.request_id.is_empty() {
            set(REQUEST_ID_HEADER, &st.request_id);
        }
        if let Some(rate) = &st.rate {
            for (name, value) in rate.headers() {
                set(name, &value);
            }
        }
        let Some((_, plan)) = st.plan.clone() else { return Action::Continue };
        // One snapshot: the status, and any header that echoes a credential.
        let headers = host::headers(MapType::HttpResponseHeaders);
        let secrets: Vec<String> = plan.borrow().keys.iter().map(|k| k.value.clone()).collect();
        let mut status = 0;
        for (name, value) in &headers {
            if name == ":status" {
                status = std::str::from_utf8(value).ok().and_then(|s| s.parse().ok()).unwrap_or(0);
            } else if let Some(clean) = crate::scrub::scrub(value, &secrets) {
                warn!("keygate: request {}: the provider echoed its credential in `{name}`: scrubbed", st.request_id);
                metrics::count("scrubbed.headers");
                let _ = host::set_header(MapType::HttpResponseHeaders, name, Some(&clean));
            }
        }
        drop(headers);
        {
            let mut p = plan.borrow_mut();
            if p.direct && p.attempts.is_empty() {
                let key_id = p.keys.first().map(|k| k.id.clone()).unwrap_or_default();
                let mut attempt = Attempt { key_id, status: None };
                note_answer(&mut attempt, status, &self.config);
                p.attempts.push(attempt);
            }
        }
        // Whether the answer is a JSON document or an event stream is read
        // from its first byte (`accounting::observe_body`), which saves a
        // header read.
        st.read_usage = true;
        let plan = plan.borrow();
        set("x-keygate-attempts", &plan.attempts.len().to_string());
        if let Some(last) = plan.attempts.last() {
            set("x-keygate-provider-key", &last.key_id);
        }
        if failover::is_failover_status(status) {
            // Every candidate was tried (Envoy stops retrying only then, or on
            // the total timeout): answer in the client's dialect, by key id.
            let denial = failover::exhausted(&plan.attempts, status);
            info!("keygate: request {} failed: {}", st.request_id, denial.message);
            metrics::count("failover.exhausted");
            let body = denial.body(st.dialect.unwrap_or(Dialect::OpenAi));
            let _ = host::set_header(MapType::HttpResponseHeaders, "content-length", None);
            set("content-type", "application/json");
            set("x-keygate-error", denial.code);
            st.replace_response = Some(body);
        } else if !(200..300).contains(&status) {
            // Error bodies are where providers echo a rejected credential.
            let _ = host::set_header(MapType::HttpResponseHeaders, "content-length", None);
            st.scrubber = Some(StreamScrubber::new(secrets));
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let mut st = self.state.borrow_mut();
        if st.replace_response.is_none() {
            accounting::observe_body(&mut st, body_size);
            if let Some(scrubber) = st.scrubber.as_mut() {
                let chunk = host::buffer(BufferType::HttpResponseBody, 0, body_size).unwrap_or_default();
                let out = scrubber.feed(&chunk, end_of_stream);
                if out != chunk {
                    let _ = host::set_buffer(BufferType::HttpResponseBody, 0, body_size, &out);
                }
                if end_of_stream && scrubber.scrubbed {
                    warn!(
                        "keygate: request {}: the provider echoed its credential in the body: scrubbed",
                        st.request_id
                    );
                    metrics::count("scrubbed.bodies");
                }
            }
            return Action::Continue;
        }
        if !end_of_stream {
            return Action::Pause;
        }
        if let Some(body) = st.replace_response.take() {
            let _ = host::set_buffer(BufferType::HttpResponseBody, 0, body_size, body.as_bytes());
        }
        Action::Continue
    }
}

/// The gate: a filter instance placed *before* Envoy's buffer filter, with the
/// keygate filter after it. In its headers phase it refuses what the headers
/// alone condemn (`screen`, and a key the cache knows to be refused) and
/// starts the store lookup of a key not yet cached, so that the lookup
/// overlaps the body upload and a refused key is answered without waiting for
/// the body. Then it reads each body chunk as it passes (`model` and the
/// output limit, or the form's `model`; any keygate token) and at the end
/// leaves what it found in `TAPPED`. The buffer filter then hands the headers
/// to the keygate filter in the same call, so that the keygate filter decides
/// in its headers phase with the whole body read.
struct Gate {
    id: u32,
    max: u64,
    seen: u64,
    json: Option<body::BodyReader>,
    form: Option<MultipartReader>,
    tokens: token::TokenScanner,
    /// The store lookup this gate started, while it is in flight.
    digest: Option<String>,
    /// Set while this gate waits for a lookup (its own or another's).
    watch: Option<Rc<GateWatch>>,
    /// A refusal held until the end of a small body (see `DEFER_UP_TO`).
    deferred: Option<Denial>,
    dialect: Dialect,
    request_id: String,
}

/// A refusal of a request whose body is announced at most this long waits
/// for the end of the body: refused before its body is read, a request
/// leaves its connection unusable (Envoy closes it), and a client would
/// reconnect for every refusal. A body this small costs what a connection's
/// read buffer may hold anyway (`per_connection_buffer_limit_bytes`).
const DEFER_UP_TO: u64 = 64 * 1024;

impl Gate {
    fn new(id: u32, config: &Config) -> Gate {
        Gate {
            id,
            max: config.max_body_bytes,
            seen: 0,
            json: None,
            form: None,
            tokens: token::TokenScanner::default(),
            digest: None,
            watch: None,
            deferred: None,
            dialect: Dialect::OpenAi,
            request_id: String::new(),
        }
    }

    /// Refuses now, or at the end of a small body (nothing of it is read).
    fn refuse(&mut self, denial: Denial, content_length: Option<u64>, end_of_stream: bool) -> Action {
        info!("keygate: request {} refused from its headers: {}", self.request_id, denial.code);
        if !end_of_stream && content_length.is_some_and(|n| n <= DEFER_UP_TO) {
            self.deferred = Some(denial);
            return Action::Continue;
        }
        self.deny(&denial)
    }

    fn deny(&self, denial: &Denial) -> Action {
        self.hand_over();
        reply(self.dialect, &self.request_id, denial);
        Action::Pause
    }

    /// Waits for the store's answer about a key not cached yet: joins the
    /// lookup in flight, or starts it. The answer fills the cache, completes
    /// the requests that joined it, and refuses through every gate still
    /// uploading (`complete_lookup`).
    fn watch(&mut self, digest: String) {
        let watch = Rc::new(GateWatch {
            gate: self.id,
            dialect: self.dialect,
            request_id: self.request_id.clone(),
            handed_over: Cell::new(false),
        });
        let joined = with_vm(|vm| vm.pending.get_mut(&digest).map(|p| p.gates.push(watch.clone())).is_some());
        let Some(joined) = joined else { return };
        if !joined {
            let Some((config, gateway_token)) = with_vm(|vm| (vm.config.clone(), vm.gateway_token.clone())) else {
                return;
            };
            metrics::count("store.lookups");
            if store_call(&config, &gateway_token, "GET", &format!("/v1/lookup/{digest}"), None).is_err() {
                return; // the keygate filter tries again
            }
            with_vm(|vm| {
                let mut pending = Pending::new(self.id);
                pending.gates.push(watch.clone());
                vm.pending.insert(digest.clone(), pending)
            });
            self.digest = Some(digest);
        }
        self.watch = Some(watch);
    }

    /// From here on the keygate filter (or nobody) answers this request.
    fn hand_over(&self) {
        if let Some(w) = &self.watch {
            w.handed_over.set(true);
        }
    }

    /// The body ended: the keygate filter gets the headers next, in this call.
    fn publish(&mut self) {
        let mut facts = match (self.json.take(), self.form.take()) {
            (Some(json), _) => json.finish(),
            (None, Some(form)) => BodyFacts::of(form.finish()),
            (None, None) => BodyFacts::of(ModelField::Absent),
        };
        facts.access_key = self.tokens.found();
        self.hand_over();
        TAPPED.with(|t| *t.borrow_mut() = Some((self.id, facts)));
    }
}

impl Context for Gate {
    fn on_http_call_response(&mut self, token_id: u32, _headers: usize, body_size: usize, _trailers: usize) {
        accounting::running(self.id);
        // The keygate filter of this request may file its reservation here.
        if accounting::on_reserve_response(token_id, body_size) {
            return;
        }
        let Some(digest) = self.digest.take() else { return };
        let answer = read_json::<Lookup>(body_size).map(intern);
        if answer.is_none() {
            metrics::count("store.errors");
        }
        let config = with_vm(|vm| vm.config.clone());
        complete_lookup(&digest, answer, config.as_deref());
    }

    fn on_done(&mut self) -> bool {
        self.hand_over();
        if let Some(digest) = self.digest.take() {
            leave_lookup(self.id, digest);
        }
        true
    }
}

impl HttpContext for Gate {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        accounting::running(self.id);
        // Whatever an earlier request left is cleared here, before this
        // request's headers can reach the keygate filter.
        TAPPED.with(|t| *t.borrow_mut() = None);
        let headers = host::headers(MapType::HttpRequestHeaders);
        let inbound = Inbound::from_headers(&headers);
        drop(headers);
        self.request_id = inbound.request_id.clone();
        let screened = match screen(&inbound, !end_of_stream, self.max) {
            Ok(s) => s,
            Err((dialect, denial)) => {
                self.dialect = dialect;
                // Headers can change only now, whenever the refusal is sent.
                blank_leaks(&inbound);
                return self.refuse(denial, inbound.content_length, end_of_stream);
            }
        };
        self.dialect = screened.dialect;
        match (screened.surface.judge, screened.boundary) {
            (Judge::Model(BodyKind::Json), _) => self.json = Some(body::BodyReader::default()),
            (Judge::Model(BodyKind::Multipart), Some(b)) => self.form = Some(MultipartReader::new(b)),
            _ => {}
        }
        let digest = token::digest(screened.token);
        let now = now_ms();
        match with_vm(|vm| vm.cache.get(&digest, now)).flatten() {
            Some((lookup, Freshness::Fresh)) => {
                if let Err(denial) = check_key(&lookup, (now / 1000) as i64) {
                    return self.refuse(denial, inbound.content_length, end_of_stream);
                }
            }
            // Without a body the keygate filter runs next, in this call: it
            // looks the key up itself.
            _ if end_of_stream => {}
            _ => self.watch(digest),
        }
        if end_of_stream {
            self.publish();
        }
        Action::Continue
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if let Some(denial) = self.deferred.take() {
            if end_of_stream {
                return self.deny(&denial);
            }
            self.deferred = Some(denial);
            return Action::Continue;
        }
        if body_size > 0 {
            self.seen = self.seen.saturating_add(body_size as u64);
            if self.seen > self.max {
                // Envoy's buffer filter answers 413; nothing is read past the limit.
                return Action::Continue;
            }
            let Ok(chunk) = host::buffer(BufferType::HttpRequestBody, 0, body_size) else {
                return self.deny(&Denial::new(500, "internal_error", "the request body could not be read"));
            };
            self.tokens.feed(&chunk);
            if let Some(json) = self.json.as_mut() {
                json.feed(&chunk);
            }
            if let Some(form) = self.form.as_mut() {
                form.feed(&chunk);
            }
        }
        if end_of_stream {
            self.publish();
        }
        Action::Continue
    }

    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        // No API keygate serves takes them, and the body could not be
        // rewritten after them.
        let denial = self.deferred.take().unwrap_or_else(unexpected_trailers);
        self.deny(&denial)
    }
}

fn unexpected_trailers() -> Denial {
    Denial::new(400, "unexpected_trailers", "request trailers are not accepted")
}

/// Blanks the request headers that carry a credential before a refusal, so
/// that Envoy's access log (which prints the path and the request id) never
/// holds one.
fn blank_leaks(inbound: &Inbound) {
    for name in crate::screen::leaking_headers(inbound) {
        let blank: &[u8] = if name == ":path" { b"/redacted" } else { b"redacted" };
        let _ = host::set_header(MapType::HttpRequestHeaders, name, Some(blank));
    }
}

/// The upstream (cluster) filter: runs once per attempt and puts that
/// attempt's credential, and only that one, on the request.
struct UpstreamAttempt {
    config: Rc<Config>,
    plan: Option<Rc<RefCell<Plan>>>,
}

impl Context for UpstreamAttempt {}

impl HttpContext for UpstreamAttempt {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let attempt = host::header_str(MapType::HttpRequestHeaders, "x-envoy-attempt-count")
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(1);
        // A retry reuses the header map: the previous attempt's credential goes
        // first. (On the first attempt the downstream filter already removed
        // every client credential.)
        if attempt > 1 {
            for name in CLIENT_CREDENTIAL_HEADERS {
                let _ = host::set_header(MapType::HttpRequestHeaders, name, None);
            }
        }
        let plan = hostcalls::get_property(vec!["filter_state", PLAN_FILTER_STATE])
            .ok()
            .flatten()
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|s| s.parse::<u64>().ok())
            .and_then(|id| PLANS.with(|p| p.borrow().get(&id).cloned()));
        let Some(plan) = plan else {
            warn!("keygate: upstream attempt without a plan: sent without credentials");
            return Action::Continue;
        };
        {
            let mut p = plan.borrow_mut();
            let Some(key) = p.keys.get(attempt.saturating_sub(1)).cloned() else {
                warn!("keygate: attempt {attempt} has no credential left");
                return Action::Continue;
            };
            let (name, value) = credential_header(p.auth, &key.value);
            if host::set_header(MapType::HttpRequestHeaders, name, Some(value.as_bytes())).is_err() {
                warn!("keygate: could not set the credential of attempt {attempt}");
            }
            if attempt > 1 {
                metrics::count("failover.retries");
            }
            p.attempts.push(Attempt { key_id: key.id, status: None });
        }
        self.plan = Some(plan);
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(plan) = &self.plan else { return Action::Continue };
        if let Some(attempt) = plan.borrow_mut().attempts.last_mut() {
            note_answer(attempt, response_status(), &self.config);
        }
        Action::Continue
    }
}

/// The `:status` of the response being handled (0 if unreadable).
fn response_status() -> u16 {
    host::header_str(MapType::HttpResponseHeaders, ":status").and_then(|s| s.parse::<u16>().ok()).unwrap_or(0)
}

/// Records what the provider answered to one attempt (response headers of
/// the effective context) and cools the key down after a 429 or 401/403.
fn note_answer(attempt: &mut Attempt, status: u16, config: &Config) {
    // A provider's header may hold any bytes: read, never trusted to be UTF-8.
    let header = |name: &str| host::header_str(MapType::HttpResponseHeaders, name);
    attempt.status = Some(status);
    let (retry_after_ms, retry_after) =
        if status == 429 { (header("retry-after-ms"), header("retry-after")) } else { (None, None) };
    let cooldown = failover::cooldown_ms(
        status,
        retry_after_ms.as_deref(),
        retry_after.as_deref(),
        config.cooldown_rate_limited_ms,
        config.cooldown_auth_failure_ms,
    );
    if let Some(ms) = cooldown.filter(|ms| *ms > 0) {
        // Process-wide: every worker skips this key until then.
        let until = (now_ms() + ms).to_string();
        let _ = hostcalls::set_shared_data(&format!("{HEALTH_PREFIX}{}", attempt.key_id), Some(until.as_bytes()), None);
        info!("keygate: provider key {} answered {status}: skipped for {ms} ms", attempt.key_id);
        metrics::count("failover.cooldowns");
    }
}

fn cooldown_until(key_id: &str) -> u64 {
    hostcalls::get_shared_data(&format!("{HEALTH_PREFIX}{key_id}"))
        .ok()
        .and_then(|(v, _)| v)
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

impl Request {
    fn deny(&self, denial: Denial) -> Action {
        send_denial(&self.state.borrow(), &denial);
        Action::Pause
    }

    fn store_unavailable(&self) -> Action {
        self.deny(store_unavailable())
    }
}

fn store_unavailable() -> Denial {
    let mut d = Denial::new(503, "key_store_unavailable", "the key store is unavailable; try again shortly");
    d.retry_after = Some(1);
    d
}

/// `model` as `json_to_metadata` put it in dynamic metadata. Envoy hands a
/// string value over as its raw bytes and anything else in a binary form, and
/// `json_to_metadata` records `model_error` when the body is not JSON.
fn read_model(namespace: &str) -> ModelField {
    // Each property read costs 2-3 µs (Envoy walks the path with CEL): read
    // `body_error` only when there is no model, which a valid body has.
    let prop = |key: &str| hostcalls::get_property(vec!["metadata", "filter_metadata", namespace, key]).ok().flatten();
    let Some(raw) = prop("model") else {
        return if prop("body_error").is_some() { ModelField::InvalidJson } else { ModelField::Absent };
    };
    match String::from_utf8(raw) {
        Ok(s) if !s.chars().any(char::is_control) => ModelField::Str(s),
        _ => ModelField::NotString,
    }
}

/// Where a request stands after `advance`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Headers set for the upstream: resume (or continue).
    Forwarded,
    /// A local reply was sent.
    Denied,
    /// Waiting for the store to reserve budget; its answer advances again.
    Waiting,
}

/// `max_tokens` (or `max_completion_tokens` / `max_output_tokens`) from the
/// body, which `json_to_metadata` hands over as a number (8 bytes, f64).
fn read_max_tokens(namespace: &str) -> Option<u64> {
    ["max_tokens", "max_completion_tokens", "max_output_tokens"].iter().find_map(|key| {
        let raw = hostcalls::get_property(vec!["metadata", "filter_metadata", namespace, key]).ok().flatten()?;
        let bytes: [u8; 8] = raw.as_slice().try_into().ok()?;
        let n = f64::from_le_bytes(bytes);
        (n.is_finite() && n >= 0.0).then_some(n as u64)
    })
}

/// Decides for the request whose context is effective now and acts: refuses,
/// admits (rate limits, budget reservation), or forwards.
fn advance(config: &Config, state: &Rc<RefCell<RequestState>>, lookup: &Rc<Lookup>) -> Step {
    let now = now_ms();
    let mut st = state.borrow_mut();
    // Without the gate, `model` comes from `json_to_metadata`'s metadata:
    // read only for a key that may pass (a refused key is answered without the
    // 2-3 µs read).
    if st.model.is_none() {
        let readable = st.has_body && lookup.status == KeyStatus::Active;
        st.model = Some(if readable { read_model(&config.metadata_namespace) } else { ModelField::Absent });
    }
    let model = st.model.clone().unwrap_or(ModelField::Absent);
    // The headers were screened: the surface is in the table.
    let decision = match surface::classify(&st.method, &st.path, st.anthropic_version) {
        Ok(surface) => {
            let facts = RequestFacts { surface, model: &model, access_key_in_body: st.access_key_in_body };
            decide(facts, lookup, (now / 1000) as i64)
        }
        Err(_) => Err(Denial::new(500, "internal_error", "the gateway could not classify the request")),
    };
    let forward = match decision {
        Ok(f) => f,
        Err(denial) => {
            info!("keygate: request {} refused: {}", st.request_id, denial.code);
            send_denial(&st, &denial);
            return Step::Denied;
        }
    };
    if !st.admitted {
        // Only limits and budgets need the estimate before the request goes out.
        if st.has_body && !st.body_read && (lookup.limits.is_some() || lookup.budgeted) {
            st.max_tokens = read_max_tokens(&config.metadata_namespace);
        }
        st.estimate =
            crate::usage::estimate(st.body_bytes, st.max_tokens, st.choices, accounting::DEFAULT_OUTPUT_ESTIMATE);
        st.served = Some(accounting::Served {
            key_id: forward.key_id.to_string(),
            config_id: lookup.key.as_ref().and_then(|k| k.config_id.clone()),
            provider: forward.provider.id.clone(),
            model: forward.model.clone(),
        });
        if let Some(limits) = &lookup.limits {
            let tokens = st.estimate.0.saturating_add(st.estimate.1);
            match accounting::admit_rate(config, forward.key_id, limits, tokens, now) {
                Ok(rate) => st.rate = Some(rate),
                Err(denial) => {
                    info!("keygate: request {} refused: {}", st.request_id, denial.code);
                    send_denial(&st, &denial);
                    return Step::Denied;
                }
            }
        }
        if lookup.budgeted && st.reservation.is_none() {
            st.lookup = Some(lookup.clone());
            drop(st);
            return accounting::reserve(state);
        }
        st.admitted = true;
    }
    let cool: Vec<u64> = forward.credentials.iter().map(|c| cooldown_until(&c.id)).collect();
    let keys: Vec<Credential> =
        failover::order(&cool, now).into_iter().filter_map(|i| forward.credentials.get(i).cloned()).collect();
    let Some(first) = keys.first() else {
        send_denial(&st, &Denial::new(500, "internal_error", "no credential"));
        return Step::Denied;
    };
    let first_id = first.id.clone();

    for name in &st.strip {
        let _ = host::set_header(MapType::HttpRequestHeaders, name, None);
    }
    // A single candidate needs no per-attempt credential: the downstream filter
    // sets it and routes to a cluster without the upstream filter (cheaper).
    // The credential then reaches exactly that provider, with no retry.
    let direct = keys.len() == 1;
    let cluster = match (direct, forward.endpoint.tls) {
        (true, true) => &config.direct_cluster_https,
        (true, false) => &config.direct_cluster_http,
        (false, true) => &config.upstream_cluster_https,
        (false, false) => &config.upstream_cluster_http,
    };
    let mut sets: Vec<(&str, String)> = vec![
        (":authority", forward.endpoint.authority.clone()),
        (":path", forward.upstream_path.clone()),
        (config.cluster_header.as_str(), cluster.clone()),
    ];
    // The credential itself is set per attempt by the upstream filter; here
    // only what is not secret.
    if forward.provider.auth == AuthStyle::XApiKey && !st.anthropic_version {
        sets.push(("anthropic-version", config.anthropic_version.clone()));
    }
    sets.push(("x-envoy-max-retries", keys.len().saturating_sub(1).to_string()));
    if direct {
        let (name, value) = credential_header(forward.provider.auth, &first.value);
        sets.push((name, value));
    }
    if forward.rewrite_model {
        sets.push(("content-length", String::new()));
        st.rewrite_model = forward.model.clone();
    }
    for (name, value) in &sets {
        let value = (!value.is_empty()).then_some(value.as_str());
        if host::set_header(MapType::HttpRequestHeaders, name, value.map(str::as_bytes)).is_err() {
            warn!("keygate: request {}: could not set header {name}", st.request_id);
            send_denial(&st, &Denial::new(500, "internal_error", "the gateway could not prepare the request"));
            return Step::Denied;
        }
    }
    let plan_id = NEXT_PLAN.with(|n| {
        let id = n.get();
        n.set(id.wrapping_add(1));
        id
    });
    // Only the upstream filter reads the plan id, and direct clusters have none.
    if !direct && hostcalls::set_property(vec![PLAN_PROPERTY], Some(plan_id.to_string().as_bytes())).is_err() {
        send_denial(&st, &Denial::new(500, "internal_error", "the gateway could not prepare the request"));
        return Step::Denied;
    }
    let plan = Rc::new(RefCell::new(Plan { direct, auth: forward.provider.auth, keys, attempts: Vec::new() }));
    if !direct {
        PLANS.with(|p| p.borrow_mut().insert(plan_id, plan.clone()));
    }
    st.plan = Some((plan_id, plan));
    st.lookup = None;
    if hostcalls::call_foreign_function("clear_route_cache", None).is_err() {
        warn!("keygate: clear_route_cache is not available");
    }
    metrics::count("requests.allowed");
    metrics::count_labeled("requests.provider", &forward.provider.id);
    debug!(
        "keygate: request {} key={} provider={} model={} credential={}",
        st.request_id,
        forward.key_id,
        forward.provider.id,
        forward.model.as_deref().unwrap_or("-"),
        first_id
    );
    Step::Forwarded
}

fn send_denial(st: &RequestState, denial: &Denial) {
    reply(st.dialect.unwrap_or(Dialect::OpenAi), &st.request_id, denial);
}

/// A local reply in the client's dialect; nothing goes upstream.
fn reply(dialect: Dialect, request_id: &str, denial: &Denial) {
    metrics::count("requests.denied");
    metrics::count_labeled("denied", denial.code);
    let body = denial.body(dialect);
    let retry_after = denial.retry_after.map(|s| s.to_string());
    let mut headers = vec![("content-type", "application/json"), ("x-keygate-error", denial.code)];
    if !request_id.is_empty() {
        headers.push((REQUEST_ID_HEADER, request_id));
    }
    if let Some(r) = retry_after.as_deref() {
        headers.push(("retry-after", r));
    }
    headers.extend(denial.headers.iter().map(|(k, v)| (*k, v.as_str())));
    let headers: Vec<(&str, &[u8])> = headers.iter().map(|(k, v)| (*k, v.as_bytes())).collect();
    if host::send_response(u32::from(denial.status), &headers, body.as_bytes()).is_err() {
        warn!("keygate: could not send a local reply");
    }
}

/// A lookup finished (answer `None`: the store could not be reached or gave no
/// usable answer). Caches it and completes every request waiting for it.
fn complete_lookup(digest: &str, answer: Option<Rc<Lookup>>, config: Option<&Config>) {
    let now = now_ms();
    let (waiters, gates, stale_approval) = with_vm(|vm| {
        if let Some(a) = &answer {
            vm.cache.insert(digest, a.clone(), now);
        }
        let stale_approval = answer.is_none() && vm.cache.get(digest, now).is_some();
        let pending = vm.pending.remove(digest);
        let (waiters, gates) = pending.map(|p| (p.waiters, p.gates)).unwrap_or_default();
        (waiters, gates, stale_approval)
    })
    .unwrap_or_default();
    let Some(config) = config else { return };
    for (context_id, state) in waiters {
        if host::set_effective_context(context_id).is_err() {
            continue; // that request is gone
        }
        let stale = state.borrow().stale.clone();
        if answer.is_none() && stale.is_some() {
            metrics::count("cache.stale_served");
        }
        let lookup = answer.clone().or(stale);
        let resume = match lookup {
            Some(l) => advance(config, &state, &l) == Step::Forwarded,
            None => {
                send_denial(&state.borrow(), &store_unavailable());
                false
            }
        };
        if resume && hostcalls::resume_http_request().is_err() {
            warn!("keygate: could not resume a request");
        }
    }
    // Requests still uploading: a refused key (or a store that cannot say,
    // with nothing stale to serve) is answered now, not after the body.
    let refusal = match &answer {
        Some(lookup) => check_key(lookup, (now / 1000) as i64).err(),
        None if stale_approval => None,
        None => Some(store_unavailable()),
    };
    let Some(denial) = refusal else { return };
    for watch in gates.iter().filter(|g| !g.handed_over.replace(true)) {
        if host::set_effective_context(watch.gate).is_ok() {
            info!("keygate: request {} refused before its body: {}", watch.request_id, denial.code);
            metrics::count("gate.early_refusals");
            reply(watch.dialect, &watch.request_id, &denial);
        }
    }
}
