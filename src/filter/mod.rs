//! The glue between Envoy (proxy-wasm ABI) and the [`Worker`]: each callback
//! becomes one call on this VM's worker, with [`Abi`] as its host. Nothing
//! here decides anything.
//!
//! One VM runs per Envoy worker thread and `vm_config`. Filter instances
//! that share a VM (the gate and the keygate filter of `envoy/envoy.yaml`)
//! share its worker, which saves lookups; nothing depends on it: they hand
//! each other what a request needs through its filter state (`handover`).
//! The upstream filter needs no worker at all (`attempt`).

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

use log::info;
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

use crate::attempt;
use crate::config::{Config, Role};
use crate::errors::{Denial, Dialect};
use crate::handover::SealKey;
use crate::host::{Buffer, Host};
use crate::worker::{Flow, GateState, Worker, TICK_MS};

mod abi;

use abi::Abi;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|id| -> Box<dyn RootContext> { Box::new(Root { id, config: None, seal: None, last_log_sync_ms: 0 }) });
}}

thread_local! {
    static WORKER: RefCell<Option<Worker>> = const { RefCell::new(None) };
    /// A gate filter is configured in this VM (it may be configured before
    /// the keygate filter creates the worker).
    static GATED: Cell<bool> = const { Cell::new(false) };
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

impl Context for Root {
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
}

impl RootContext for Root {
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
                if hostcalls::set_tick_period(Duration::from_millis(TICK_MS.min(config.poll_interval_ms))).is_err() {
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

    /// Never `None` (the SDK panics on it): a root without a usable
    /// configuration gets contexts that refuse.
    fn create_http_context(&self, id: u32) -> Option<Box<dyn HttpContext>> {
        let Some(config) = self.config.as_ref() else { return Some(Box::new(Unconfigured)) };
        Some(match config.role {
            Role::Upstream => match self.seal.clone() {
                Some(seal) => Box::new(UpstreamAttempt { seal, config: config.clone(), sent: None }),
                None => Box::new(Unconfigured),
            },
            Role::Gate => Box::new(Gate { state: GateState::new(id, config.max_body_bytes) }),
            Role::Downstream => {
                on(id, |w| w.request_created(id));
                Box::new(Request { id })
            }
        })
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// The keygate filter's context of one request.
struct Request {
    id: u32,
}

impl Context for Request {
    fn on_http_call_response(&mut self, token: u32, _headers: usize, body_size: usize, _trailers: usize) {
        on(self.id, |w| w.on_callout(&Abi, token, body_size));
    }

    fn on_done(&mut self) -> bool {
        on(self.id, |w| w.request_done(&Abi, self.id));
        true
    }
}

impl HttpContext for Request {
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
}

/// The gate's context of one request (see `worker::gate`).
struct Gate {
    state: GateState,
}

impl Context for Gate {
    fn on_http_call_response(&mut self, token: u32, _headers: usize, body_size: usize, _trailers: usize) {
        on(self.state.id(), |w| w.on_callout(&Abi, token, body_size));
    }

    fn on_done(&mut self) -> bool {
        on(self.state.id(), |w| w.gate_done(&mut self.state));
        true
    }
}

impl HttpContext for Gate {
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

impl Context for UpstreamAttempt {}

impl HttpContext for UpstreamAttempt {
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

/// A context of a root that has no usable configuration (Envoy does not
/// create one today): its request is refused, never passed on.
struct Unconfigured;

impl Context for Unconfigured {}

impl HttpContext for Unconfigured {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        fail_closed()
    }
}
