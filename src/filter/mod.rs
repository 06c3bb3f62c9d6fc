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
use crate::decide::{decide, ModelField, RequestFacts};
use crate::errors::{Denial, Dialect};
use crate::failover::{self, Attempt};
use crate::inbound::Inbound;
use crate::keys::{self, KeyError};
use crate::metrics;
use crate::model_json;
use crate::upstream::{credential_header, CLIENT_CREDENTIAL_HEADERS};

mod accounting;

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
    /// What the body reader found in the request whose headers reach the
    /// keygate filter next (see `BodyTap`).
    static TAPPED: RefCell<Option<BodyFacts>> = const { RefCell::new(None) };
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
                let ok = hostcalls::get_map_value(MapType::HttpCallResponseHeaders, ":status").ok().flatten();
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
        let bytes = match hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX) {
            Ok(Some(b)) => b,
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
            info!("keygate: configured ({})", if config.role == Role::Body { "body" } else { "upstream" });
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
            Role::Body => return Some(Box::new(BodyTap::new(&config))),
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
    let status = hostcalls::get_map_value(MapType::HttpCallResponseHeaders, ":status").ok().flatten();
    if status.as_deref() != Some("200") {
        warn!("keygate: key store answered {}", status.as_deref().unwrap_or("nothing (timeout or connection failure)"));
        return None;
    }
    let body = hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, body_size).ok().flatten()?;
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
    path: String,
    /// Request headers to remove before the request goes upstream.
    strip: Vec<String>,
    /// The client sent `anthropic-version` itself.
    anthropic_version: bool,
    has_body: bool,
    model: Option<ModelField>,
    /// `model` and `max_tokens` came from the body reader (no metadata reads).
    body_read: bool,
    /// A cached approval past its TTL, usable if the store cannot be reached.
    stale: Option<Rc<Lookup>>,
    /// The provider's model name to write into the body, once decided.
    rewrite_model: Option<String>,
    /// The forwarding plan, once decided.
    plan: Option<(u64, Rc<RefCell<Plan>>)>,
    /// The upstream answer is replaced by keygate's own error (every key failed).
    replace_response: Option<String>,
    context_id: u32,
    started_ms: u64,
    /// `content-length` of the request, and `max_tokens` (or its kin) from the body.
    body_bytes: u64,
    max_tokens: Option<u64>,
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
            let id = self.id;
            with_vm(|vm| {
                if let Some(p) = vm.pending.get_mut(&digest) {
                    p.waiters.retain(|(w, _)| *w != id);
                    if p.waiters.is_empty() {
                        vm.pending.remove(&digest);
                    } else if p.owner == id {
                        vm.orphans.push(digest);
                    }
                }
            });
        }
        true
    }
}

impl HttpContext for Request {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        accounting::running(self.id);
        // One snapshot of the headers: each host call that returns data costs
        // about 1 µs (see `inbound`).
        let headers = hostcalls::get_map(MapType::HttpRequestHeaders).unwrap_or_default();
        let inbound = Inbound::from_headers(&headers);
        drop(headers);
        #[cfg(feature = "fault-injection")]
        #[allow(clippy::panic)]
        if inbound.test_panic {
            panic!("keygate: fault injection"); // allow-panic: test builds only
        }
        let Inbound { path, request_id, authorization, x_api_key, content_length, anthropic_version, strip, .. } =
            inbound;
        // Always taken, so that it can never be read for another request.
        let tapped = TAPPED.with(|t| t.borrow_mut().take());
        let dialect = Dialect::from_path(&path);
        {
            let mut st = self.state.borrow_mut();
            st.request_id = request_id;
            st.dialect = Some(dialect);
            st.strip = strip;
            st.anthropic_version = anthropic_version;
        }

        let token = match keys::extract(authorization.as_deref(), x_api_key.as_deref()) {
            Ok(t) => t,
            Err(e) => return self.deny(key_denial(e)),
        };
        let digest = token::digest(token);

        if content_length.is_some_and(|n| n > self.config.max_body_bytes) {
            return self.deny(too_large(self.config.max_body_bytes));
        }
        {
            let mut st = self.state.borrow_mut();
            st.path = path;
            st.has_body = !end_of_stream;
            st.started_ms = now_ms();
            if let Some(facts) = tapped.filter(|_| !end_of_stream) {
                st.model = Some(facts.model);
                st.max_tokens = facts.max_tokens;
                st.body_read = true;
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
                        vm.pending
                            .insert(digest.clone(), Pending { owner: id, waiters: vec![(id, self.state.clone())] })
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
        let body = hostcalls::get_buffer(BufferType::HttpRequestBody, 0, body_size).ok().flatten().unwrap_or_default();
        match model_json::rewrite_model(&body, &model) {
            Some(new_body) => {
                if hostcalls::set_buffer(BufferType::HttpRequestBody, 0, body_size, &new_body).is_err() {
                    warn!("keygate: could not rewrite the request body");
                }
            }
            None => warn!("keygate: request body has no top-level model to rewrite"),
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let mut st = self.state.borrow_mut();
        let set = |name: &str, value: &str| {
            let _ = hostcalls::set_map_value(MapType::HttpResponseHeaders, name, Some(value));
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
        let status = response_status();
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
            let _ = hostcalls::set_map_value(MapType::HttpResponseHeaders, "content-length", None);
            set("content-type", "application/json");
            set("x-keygate-error", denial.code);
            st.replace_response = Some(body);
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if self.state.borrow().replace_response.is_none() {
            accounting::observe_body(&mut self.state.borrow_mut(), body_size);
            return Action::Continue;
        }
        if !end_of_stream {
            return Action::Pause;
        }
        if let Some(body) = self.state.borrow_mut().replace_response.take() {
            let _ = hostcalls::set_buffer(BufferType::HttpResponseBody, 0, body_size, body.as_bytes());
        }
        Action::Continue
    }
}

/// The body reader: a filter instance placed *before* Envoy's buffer filter,
/// with the keygate filter after it. It sees each chunk as it passes, and at
/// the end of the body leaves what it found in `TAPPED`. The buffer filter
/// then hands the headers to the keygate filter in the same call, so that the
/// keygate filter decides in its headers phase with the whole body read. This
/// replaces `json_to_metadata`, whose tree parse costs ~5 µs per KiB of body.
struct BodyTap {
    max: u64,
    seen: u64,
    reader: Option<body::BodyReader>,
}

impl BodyTap {
    fn new(config: &Config) -> BodyTap {
        BodyTap { max: config.max_body_bytes, seen: 0, reader: Some(body::BodyReader::default()) }
    }

    /// Past `maxBodyBytes` (the buffer filter answers 413), or after a chunk
    /// that could not be read, nothing is published: keygate finds no model.
    fn publish(&mut self) {
        let facts = self.reader.take().map(body::BodyReader::finish);
        TAPPED.with(|t| *t.borrow_mut() = facts);
    }
}

impl Context for BodyTap {}

impl HttpContext for BodyTap {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        // Whatever an earlier request left is cleared here, before this
        // request's headers can reach the keygate filter.
        let none = BodyFacts { model: ModelField::Absent, max_tokens: None };
        TAPPED.with(|t| *t.borrow_mut() = end_of_stream.then_some(none));
        Action::Continue
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if body_size > 0 {
            self.seen = self.seen.saturating_add(body_size as u64);
            let chunk = match hostcalls::get_buffer(BufferType::HttpRequestBody, 0, body_size) {
                Ok(Some(chunk)) if self.seen <= self.max => Some(chunk),
                _ => None,
            };
            match (chunk, self.reader.as_mut()) {
                (Some(chunk), Some(reader)) => reader.feed(&chunk),
                _ => self.reader = None,
            }
        }
        if end_of_stream {
            self.publish();
        }
        Action::Continue
    }

    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        self.publish();
        Action::Continue
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
        let attempt = hostcalls::get_map_value(MapType::HttpRequestHeaders, "x-envoy-attempt-count")
            .ok()
            .flatten()
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(1);
        // A retry reuses the header map: the previous attempt's credential goes
        // first. (On the first attempt the downstream filter already removed
        // every client credential.)
        if attempt > 1 {
            for name in CLIENT_CREDENTIAL_HEADERS {
                let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, name, None);
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
            if hostcalls::set_map_value(MapType::HttpRequestHeaders, name, Some(&value)).is_err() {
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
    hostcalls::get_map_value(MapType::HttpResponseHeaders, ":status")
        .ok()
        .flatten()
        .and_then(|s| s.parse::<u16>().ok())
        .unwrap_or(0)
}

/// Records what the provider answered to one attempt (response headers of
/// the effective context) and cools the key down after a 429 or 401/403.
fn note_answer(attempt: &mut Attempt, status: u16, config: &Config) {
    let header = |name: &str| hostcalls::get_map_value(MapType::HttpResponseHeaders, name).ok().flatten();
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

fn too_large(limit: u64) -> Denial {
    Denial::new(413, "request_too_large", format!("the request body exceeds the limit of {limit} bytes"))
}

fn key_denial(e: KeyError) -> Denial {
    match e {
        KeyError::Missing => Denial::new(
            401,
            "missing_access_key",
            "no access key: send it as `Authorization: Bearer <key>` or `x-api-key: <key>`",
        ),
        KeyError::Ambiguous => {
            Denial::new(401, "ambiguous_access_key", "`Authorization` and `x-api-key` carry different keys; send one")
        }
        KeyError::NotBearer => {
            Denial::new(401, "malformed_access_key", "the `Authorization` header must be `Bearer <key>`")
        }
        KeyError::Malformed(t) => {
            Denial::new(401, "malformed_access_key", format!("malformed access key: {}", t.as_str()))
        }
    }
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
    // Without the body reader, `model` comes from `json_to_metadata`'s metadata:
    // read only for a key that may pass (a refused key is answered without the
    // 2-3 µs read).
    if st.model.is_none() {
        let readable = st.has_body && lookup.status == KeyStatus::Active;
        st.model = Some(if readable { read_model(&config.metadata_namespace) } else { ModelField::Absent });
    }
    let model = st.model.clone().unwrap_or(ModelField::Absent);
    let facts = RequestFacts {
        path: &st.path,
        dialect: st.dialect.unwrap_or(Dialect::OpenAi),
        has_body: st.has_body,
        model: &model,
    };
    let forward = match decide(facts, lookup, (now / 1000) as i64) {
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
        st.estimate = crate::usage::estimate(st.body_bytes, st.max_tokens, accounting::DEFAULT_OUTPUT_ESTIMATE);
        st.served = Some(accounting::Served {
            key_id: forward.key_id.to_string(),
            config_id: lookup.key.as_ref().and_then(|k| k.config_id.clone()),
            provider: forward.provider.id.clone(),
            model: forward.model.clone(),
        });
        if let Some(limits) = &lookup.limits {
            let tokens = st.estimate.0 + st.estimate.1;
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
        let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, name, None);
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
        if hostcalls::set_map_value(MapType::HttpRequestHeaders, name, value).is_err() {
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
    metrics::count("requests.denied");
    metrics::count_labeled("denied", denial.code);
    let dialect = st.dialect.unwrap_or(Dialect::OpenAi);
    let body = denial.body(dialect);
    let retry_after = denial.retry_after.map(|s| s.to_string());
    let mut headers = vec![("content-type", "application/json"), ("x-keygate-error", denial.code)];
    if !st.request_id.is_empty() {
        headers.push((REQUEST_ID_HEADER, st.request_id.as_str()));
    }
    if let Some(r) = retry_after.as_deref() {
        headers.push(("retry-after", r));
    }
    headers.extend(denial.headers.iter().map(|(k, v)| (*k, v.as_str())));
    if hostcalls::send_http_response(u32::from(denial.status), headers, Some(body.as_bytes())).is_err() {
        warn!("keygate: could not send a local reply");
    }
}

/// A lookup finished (answer `None`: the store could not be reached or gave no
/// usable answer). Caches it and completes every request waiting for it.
fn complete_lookup(digest: &str, answer: Option<Rc<Lookup>>, config: Option<&Config>) {
    let now = now_ms();
    let waiters = with_vm(|vm| {
        if let Some(a) = &answer {
            vm.cache.insert(digest, a.clone(), now);
        }
        vm.pending.remove(digest).map(|p| p.waiters).unwrap_or_default()
    })
    .unwrap_or_default();
    let Some(config) = config else { return };
    for (context_id, state) in waiters {
        if hostcalls::set_effective_context(context_id).is_err() {
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
}
