//! The glue between Envoy (proxy-wasm ABI) and the [`Worker`]: each callback
//! becomes one call on this VM's worker, with [`Abi`] as its host. Nothing
//! here decides anything.
//!
//! One VM runs per Envoy worker thread and `vm_config`. Filter instances
//! that share a VM (the gate and the keygate filter of `envoy/envoy.yaml`)
//! share its worker, which saves lookups; nothing depends on it: they hand
//! each other what a request needs through its filter state (`handover`).
//! The upstream filter needs no worker at all (`attempt`).
//!
//! The module exports the ABI's callbacks itself (`proxy_on_*`, as the Rust
//! SDK's dispatcher would, for the callbacks keygate uses): each context is
//! one [`Ctx`] in a map keyed by its id, and a callout's answer goes to the
//! context whose callback made it. Envoy skips the callbacks a module does
//! not export (its defaults: continue, done).

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use log::info;

use crate::attempt;
use crate::config::{Config, Role};
use crate::errors::{Denial, Dialect};
use crate::handover::SealKey;
use crate::host::{Buffer, Host};
use crate::id_map::IdMap;
use crate::worker::{Flow, GateState, Worker, TICK_MS};

mod abi;

use abi::Abi;

#[cfg(target_os = "wasi")]
extern "C" {
    fn __wasm_call_ctors();
}

/// The reactor's start: Envoy calls it once, before any other export.
#[no_mangle]
pub extern "C" fn _initialize() {
    // SAFETY: the linker's constructors, run once as a WASI reactor must.
    #[cfg(target_os = "wasi")]
    unsafe {
        __wasm_call_ctors();
    }
    static LOGGER: abi::Logger = abi::Logger;
    if log::set_logger(&LOGGER).is_ok() {
        // A panic (none is meant to happen) is logged before the VM aborts.
        std::panic::set_hook(Box::new(|panic_info| abi::log(abi::LOG_CRITICAL, &panic_info.to_string())));
    }
    log::set_max_level(log::LevelFilter::Info);
}

/// The ABI version the callbacks follow.
#[no_mangle]
pub extern "C" fn proxy_abi_version_0_2_1() {}

thread_local! {
    static WORKER: RefCell<Option<Worker>> = const { RefCell::new(None) };
    /// A gate filter is configured in this VM (it may be configured before
    /// the keygate filter creates the worker).
    static GATED: Cell<bool> = const { Cell::new(false) };
    /// Every context of this VM: roots and the contexts of requests.
    static CONTEXTS: RefCell<IdMap<Ctx>> = RefCell::new(IdMap::default());
    /// Each callout in flight: the context whose callback made it. Keyed by
    /// Envoy's token alone: Envoy numbers callouts per VM (`nextHttpCallId`
    /// of the VM's `Wasm`), not per root, so the gate's root and the keygate
    /// filter's, which share a VM, never hand out the same token at once
    /// (tests/e2e/test_callout_tokens.py keeps both busy at once).
    static CALLOUTS: RefCell<IdMap<u32>> = RefCell::new(IdMap::default());
    /// The context whose callback runs.
    static ACTIVE: Cell<u32> = const { Cell::new(0) };
}

/// A callout was made: its answer goes to the context whose callback runs.
fn callout_dispatched(token: u32) {
    let active = ACTIVE.with(Cell::get);
    CALLOUTS.with(|c| c.borrow_mut().insert(token, active));
}

/// Runs `f` on this VM's worker; `None` if there is none (no keygate filter
/// configured in this VM).
fn with_worker<R>(f: impl FnOnce(&mut Worker) -> R) -> Option<R> {
    WORKER.with(|w| {
        let mut w = w.try_borrow_mut().map_err(|_| log::error!("keygate: worker re-entered")).ok()?;
        w.as_mut().map(f)
    })
}

/// Runs a callback of request (or gate) context `id` on the worker: a
/// callout made in it is answered to that context.
fn on<R>(id: u32, f: impl FnOnce(&mut Worker) -> R) -> Option<R> {
    with_worker(|w| {
        w.enter(id);
        f(w)
    })
}

/// What a callback answers Envoy: continue (0) or pause (1).
#[derive(Clone, Copy)]
#[repr(u32)]
enum Action {
    Continue = 0,
    Pause = 1,
}

fn action(flow: Flow) -> Action {
    match flow {
        Flow::Continue => Action::Continue,
        Flow::Pause => Action::Pause,
    }
}

/// A request no worker can judge is refused, never passed on.
fn fail_closed() -> Action {
    let denial = Denial::internal("the gateway is not configured");
    let body = denial.body(Dialect::OpenAi);
    let headers: [(&str, &[u8]); 2] =
        [("content-type", b"application/json"), ("x-keygate-error", denial.code.as_str().as_bytes())];
    let _ = Abi.send_response(denial.status, &headers, body.as_bytes());
    Action::Pause
}

#[link(wasm_import_module = "env")]
extern "C" {
    // A number: spdlog's `off` (6) is none of the ABI's levels.
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

struct Root {
    id: u32,
    config: Option<Rc<Config>>,
    /// The upstream filter's key to the plans (`handover`).
    seal: Option<Rc<SealKey>>,
    last_log_sync_ms: u64,
}

/// The gateway credential, from the VM's environment (not Envoy's config).
fn gateway_token(config: &Config) -> Option<String> {
    match std::env::var(&config.gateway_token_env) {
        Ok(t) if !t.trim().is_empty() => Some(t.trim().to_string()),
        _ => {
            log::error!(
                "keygate: plugin configuration: gatewayTokenEnv: environment variable {} is not set for the VM (vm_config.environment_variables)",
                config.gateway_token_env
            );
            None
        }
    }
}

impl Root {
    fn on_http_call_response(&mut self, token: u32, _headers: usize, body_size: usize, _trailers: usize) {
        with_worker(|w| {
            w.enter_root(self.id);
            w.on_callout(&Abi, token, body_size)
        });
    }

    fn on_done(&mut self) -> bool {
        with_worker(|w| w.root_done(self.id));
        true
    }

    fn on_configure(&mut self, _size: usize) -> bool {
        sync_log_level();
        let bytes = match Abi.buffer(Buffer::PluginConfiguration, 0, usize::MAX) {
            Ok(b) if !b.is_empty() => b,
            _ => {
                log::error!("keygate: no plugin configuration");
                return false;
            }
        };
        let config = match Config::parse(&bytes) {
            Ok(c) => Rc::new(c),
            Err(e) => {
                log::error!("keygate: {e}");
                return false;
            }
        };
        match config.role {
            Role::Gate => {
                GATED.with(|g| g.set(true));
                // Envoy configures each filter's root on first use: in a fresh
                // (or reloaded) VM the gate may come first. It then starts a
                // worker on its own configuration (no store calls) that the
                // keygate filter's configuration takes over.
                if with_worker(Worker::set_gated).is_none() {
                    let mut worker = Worker::new(config.clone(), String::new());
                    worker.set_gated();
                    WORKER.with(|w| *w.borrow_mut() = Some(worker));
                }
            }
            Role::Upstream => {
                let Some(token) = gateway_token(&config) else { return false };
                self.seal = Some(Rc::new(SealKey::derive(&token)));
            }
            Role::Downstream => {
                let Some(token) = gateway_token(&config) else { return false };
                if abi::set_tick_period_ms(TICK_MS.min(config.poll_interval_ms)).is_err() {
                    log::error!("keygate: cannot set the tick period");
                    return false;
                }
                // A new configuration of a running VM keeps the worker (and
                // the requests in flight).
                let reconfigured = with_worker(|w| {
                    w.reconfigure(config.clone(), token.clone());
                    w.set_downstream();
                });
                if reconfigured.is_none() {
                    let mut worker = Worker::new(config.clone(), token);
                    if GATED.with(Cell::get) {
                        worker.set_gated();
                    }
                    worker.set_downstream();
                    WORKER.with(|w| *w.borrow_mut() = Some(worker));
                }
            }
        }
        info!("keygate: configured ({})", config.role.name());
        self.config = Some(config);
        true
    }

    fn on_tick(&mut self) {
        let now = Abi.now_ms();
        if now.saturating_sub(self.last_log_sync_ms) >= 1_000 {
            self.last_log_sync_ms = now;
            sync_log_level();
        }
        with_worker(|w| w.tick(&Abi, self.id));
    }

    /// A root without a usable configuration gets contexts that refuse.
    fn create_http_context(&self, id: u32) -> Ctx {
        let Some(config) = self.config.as_ref() else { return Ctx::Unconfigured };
        match config.role {
            Role::Upstream => match self.seal.clone() {
                Some(seal) => Ctx::Upstream(UpstreamAttempt { seal, config: config.clone(), sent: None }),
                None => Ctx::Unconfigured,
            },
            Role::Gate => Ctx::Gate(Box::new(Gate { state: GateState::new(id, config.max_body_bytes) })),
            Role::Downstream => {
                on(id, |w| w.request_created(id));
                Ctx::Request(Request { id })
            }
        }
    }
}

/// The keygate filter's context of one request.
struct Request {
    id: u32,
}

impl Request {
    fn on_http_call_response(&mut self, token: u32, _headers: usize, body_size: usize, _trailers: usize) {
        on(self.id, |w| w.on_callout(&Abi, token, body_size));
    }

    fn on_done(&mut self) -> bool {
        on(self.id, |w| w.request_done(&Abi, self.id));
        true
    }

    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        on(self.id, |w| w.request_headers(&Abi, self.id, end_of_stream)).map_or_else(fail_closed, action)
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        on(self.id, |w| w.request_body(&Abi, self.id, body_size, end_of_stream)).map_or_else(fail_closed, action)
    }

    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        on(self.id, |w| w.request_trailers(&Abi, self.id)).map_or_else(fail_closed, action)
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        action(on(self.id, |w| w.response_headers(&Abi, self.id)).unwrap_or(Flow::Continue))
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        action(on(self.id, |w| w.response_body(&Abi, self.id, body_size, end_of_stream)).unwrap_or(Flow::Continue))
    }

    fn on_http_response_trailers(&mut self) -> Action {
        action(on(self.id, |w| w.response_trailers(&Abi, self.id)).unwrap_or(Flow::Continue))
    }
}

/// The gate's context of one request (see `worker::gate`).
struct Gate {
    state: GateState,
}

impl Gate {
    fn on_http_call_response(&mut self, token: u32, _headers: usize, body_size: usize, _trailers: usize) {
        on(self.state.id(), |w| w.on_callout(&Abi, token, body_size));
    }

    fn on_done(&mut self) -> bool {
        on(self.state.id(), |w| w.gate_done(&mut self.state));
        true
    }

    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        on(self.state.id(), |w| w.gate_headers(&Abi, &mut self.state, end_of_stream)).map_or_else(fail_closed, action)
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        on(self.state.id(), |w| w.gate_body(&Abi, &mut self.state, body_size, end_of_stream))
            .map_or_else(fail_closed, action)
    }

    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        on(self.state.id(), |w| w.gate_trailers(&Abi, &mut self.state)).map_or_else(fail_closed, action)
    }
}

/// The upstream filter's context of one attempt (see `attempt`).
struct UpstreamAttempt {
    seal: Rc<SealKey>,
    config: Rc<Config>,
    /// Its entry in the request's trail, once its credential is on.
    sent: Option<attempt::Sent>,
}

impl UpstreamAttempt {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        self.sent = attempt::attempt_headers(&Abi, &self.seal, &self.config);
        // Refused: a local reply was sent, nothing goes to the provider.
        if self.sent.is_some() {
            Action::Continue
        } else {
            Action::Pause
        }
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        match &self.sent {
            Some(sent) if !attempt::attempt_body(&Abi, sent, body_size, end_of_stream) => Action::Pause,
            _ => Action::Continue,
        }
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if let Some(sent) = self.sent.take() {
            attempt::attempt_response(&Abi, sent);
        }
        Action::Continue
    }
}

/// One context of this VM. `Unconfigured`: a context of a root that has no
/// usable configuration (Envoy does not create one today): its request is
/// refused, never passed on.
enum Ctx {
    Root(Root),
    Request(Request),
    Gate(Box<Gate>),
    Upstream(UpstreamAttempt),
    Unconfigured,
}

/// Runs a callback of context `id` (nothing if there is no such context).
fn with_context<R>(id: u32, f: impl FnOnce(&mut Ctx) -> R) -> Option<R> {
    CONTEXTS.with(|contexts| {
        let mut contexts = contexts.try_borrow_mut().map_err(|_| log::error!("keygate: context re-entered")).ok()?;
        let ctx = contexts.get_mut(&id)?;
        ACTIVE.with(|a| a.set(id));
        Some(f(ctx))
    })
}

/// A request callback's answer. A request whose context is unknown (none
/// is meant to be) is refused, never passed on.
fn request(id: u32, f: impl FnOnce(&mut Ctx) -> Action) -> u32 {
    with_context(id, f).unwrap_or_else(fail_closed) as u32
}

/// A response callback's answer (an unknown context's response passes).
fn response(id: u32, f: impl FnOnce(&mut Ctx) -> Action) -> u32 {
    with_context(id, f).unwrap_or(Action::Continue) as u32
}

#[no_mangle]
pub extern "C" fn proxy_on_context_create(context_id: u32, root_context_id: u32) {
    let ctx = if root_context_id == 0 {
        Ctx::Root(Root { id: context_id, config: None, seal: None, last_log_sync_ms: 0 })
    } else {
        let created = CONTEXTS.with(|contexts| match contexts.try_borrow().ok()?.get(&root_context_id) {
            Some(Ctx::Root(root)) => Some(root.create_http_context(context_id)),
            _ => None,
        });
        created.unwrap_or(Ctx::Unconfigured)
    };
    CONTEXTS.with(|contexts| {
        if let Ok(mut contexts) = contexts.try_borrow_mut() {
            contexts.insert(context_id, ctx);
        }
    });
}

#[no_mangle]
pub extern "C" fn proxy_on_vm_start(_context_id: u32, _vm_configuration_size: usize) -> bool {
    true
}

#[no_mangle]
pub extern "C" fn proxy_on_configure(context_id: u32, plugin_configuration_size: usize) -> bool {
    with_context(context_id, |ctx| match ctx {
        Ctx::Root(root) => root.on_configure(plugin_configuration_size),
        _ => false,
    })
    .unwrap_or(false)
}

#[no_mangle]
pub extern "C" fn proxy_on_tick(context_id: u32) {
    with_context(context_id, |ctx| {
        if let Ctx::Root(root) = ctx {
            root.on_tick();
        }
    });
}

#[no_mangle]
pub extern "C" fn proxy_on_done(context_id: u32) -> bool {
    with_context(context_id, |ctx| match ctx {
        Ctx::Root(root) => root.on_done(),
        Ctx::Request(request) => request.on_done(),
        Ctx::Gate(gate) => gate.on_done(),
        Ctx::Upstream(_) | Ctx::Unconfigured => true,
    })
    .unwrap_or(true)
}

#[no_mangle]
pub extern "C" fn proxy_on_delete(context_id: u32) {
    let gone = CONTEXTS.with(|contexts| contexts.try_borrow_mut().ok().and_then(|mut c| c.remove(&context_id)));
    // Dropped outside the borrow.
    drop(gone);
}

#[no_mangle]
pub extern "C" fn proxy_on_request_headers(context_id: u32, num_headers: usize, end_of_stream: u32) -> u32 {
    let end_of_stream = end_of_stream != 0;
    request(context_id, |ctx| match ctx {
        Ctx::Request(request) => request.on_http_request_headers(num_headers, end_of_stream),
        Ctx::Gate(gate) => gate.on_http_request_headers(num_headers, end_of_stream),
        Ctx::Upstream(upstream) => upstream.on_http_request_headers(num_headers, end_of_stream),
        Ctx::Unconfigured => fail_closed(),
        Ctx::Root(_) => Action::Continue,
    })
}

#[no_mangle]
pub extern "C" fn proxy_on_request_body(context_id: u32, body_size: usize, end_of_stream: u32) -> u32 {
    let end_of_stream = end_of_stream != 0;
    request(context_id, |ctx| match ctx {
        Ctx::Request(request) => request.on_http_request_body(body_size, end_of_stream),
        Ctx::Gate(gate) => gate.on_http_request_body(body_size, end_of_stream),
        Ctx::Upstream(upstream) => upstream.on_http_request_body(body_size, end_of_stream),
        Ctx::Root(_) | Ctx::Unconfigured => Action::Continue,
    })
}

#[no_mangle]
pub extern "C" fn proxy_on_request_trailers(context_id: u32, num_trailers: usize) -> u32 {
    request(context_id, |ctx| match ctx {
        Ctx::Request(request) => request.on_http_request_trailers(num_trailers),
        Ctx::Gate(gate) => gate.on_http_request_trailers(num_trailers),
        Ctx::Root(_) | Ctx::Upstream(_) | Ctx::Unconfigured => Action::Continue,
    })
}

#[no_mangle]
pub extern "C" fn proxy_on_response_headers(context_id: u32, num_headers: usize, end_of_stream: u32) -> u32 {
    let end_of_stream = end_of_stream != 0;
    response(context_id, |ctx| match ctx {
        Ctx::Request(request) => request.on_http_response_headers(num_headers, end_of_stream),
        Ctx::Upstream(upstream) => upstream.on_http_response_headers(num_headers, end_of_stream),
        Ctx::Root(_) | Ctx::Gate(_) | Ctx::Unconfigured => Action::Continue,
    })
}

#[no_mangle]
pub extern "C" fn proxy_on_response_body(context_id: u32, body_size: usize, end_of_stream: u32) -> u32 {
    let end_of_stream = end_of_stream != 0;
    response(context_id, |ctx| match ctx {
        Ctx::Request(request) => request.on_http_response_body(body_size, end_of_stream),
        Ctx::Root(_) | Ctx::Gate(_) | Ctx::Upstream(_) | Ctx::Unconfigured => Action::Continue,
    })
}

#[no_mangle]
pub extern "C" fn proxy_on_response_trailers(context_id: u32, _num_trailers: usize) -> u32 {
    response(context_id, |ctx| match ctx {
        Ctx::Request(request) => request.on_http_response_trailers(),
        Ctx::Root(_) | Ctx::Gate(_) | Ctx::Upstream(_) | Ctx::Unconfigured => Action::Continue,
    })
}

/// A callout's answer, to the context whose callback made it (with that
/// context effective, so that what the answer's handling does is its own).
#[no_mangle]
pub extern "C" fn proxy_on_http_call_response(
    _context_id: u32,
    token: u32,
    num_headers: usize,
    body_size: usize,
    num_trailers: usize,
) {
    let Some(context_id) = CALLOUTS.with(|c| c.borrow_mut().remove(&token)) else { return };
    with_context(context_id, |ctx| {
        if Abi.set_effective_context(context_id).is_err() {
            return;
        }
        match ctx {
            Ctx::Root(root) => root.on_http_call_response(token, num_headers, body_size, num_trailers),
            Ctx::Request(request) => request.on_http_call_response(token, num_headers, body_size, num_trailers),
            Ctx::Gate(gate) => gate.on_http_call_response(token, num_headers, body_size, num_trailers),
            Ctx::Upstream(_) | Ctx::Unconfigured => {}
        }
    });
}
