//! Glue for what a request costs: per-key rate limits (shared data, CAS),
//! budget reservations (a store callout before the request goes upstream),
//! and usage records (read from the response as it passes, sent in batches).

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use keygate_proto::lookup::{Limits, RefusedBy, ReserveRequest, ReserveResponse, UsageBatch, UsageRecord};
use log::{info, warn};
use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, Status};

use super::host;
use super::{advance, now_ms, read_json, send_denial, store_call, store_unavailable, with_vm, RequestState, Step};
use crate::config::Config;
use crate::errors::Denial;
use crate::metrics;
use crate::ratelimit::{self, Admission, Remaining, Window};
use crate::usage::{BodyKind, Usage};

/// Each worker sends its usage records at least this often, and sooner
/// (next tick) once a full batch is waiting.
pub const FLUSH_INTERVAL_MS: u64 = 1_000;
/// Output tokens assumed for a request that sets no `max_tokens`.
pub const DEFAULT_OUTPUT_ESTIMATE: u64 = 4_096;
/// Records kept while the store is unreachable; the oldest go first.
const MAX_QUEUED: usize = 20_000;
const BATCH: usize = 500;
/// Largest JSON response read for its `usage` (it passes through regardless).
const MAX_JSON_BODY: usize = 4 << 20;
const RATE_PREFIX: &str = "keygate.rate.";

thread_local! {
    /// The context whose callback is running: the SDK files a callout under it.
    static RUNNING: Cell<u32> = const { Cell::new(0) };
}

pub fn running(context_id: u32) {
    RUNNING.with(|r| r.set(context_id));
}

/// Who served a request, for its usage records.
#[derive(Debug, Clone)]
pub struct Served {
    pub key_id: String,
    pub config_id: Option<String>,
    pub provider: String,
    pub model: Option<String>,
}

/// A request admitted under a rate limit.
#[derive(Debug, Clone)]
pub struct RateState {
    key: String,
    window_start: u64,
    estimated: u64,
    limits: Limits,
    remaining: Remaining,
}

impl RateState {
    /// The headers OpenAI's own API uses.
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        limit_headers(&self.limits, &self.remaining)
    }
}

fn limit_headers(limits: &Limits, remaining: &Remaining) -> Vec<(&'static str, String)> {
    let reset = format!("{}ms", remaining.reset_ms);
    let mut out = Vec::new();
    if let (Some(l), Some(r)) = (limits.requests_per_minute, remaining.requests) {
        out.push(("x-ratelimit-limit-requests", l.to_string()));
        out.push(("x-ratelimit-remaining-requests", r.to_string()));
        out.push(("x-ratelimit-reset-requests", reset.clone()));
    }
    if let (Some(l), Some(r)) = (limits.tokens_per_minute, remaining.tokens) {
        out.push(("x-ratelimit-limit-tokens", l.to_string()));
        out.push(("x-ratelimit-remaining-tokens", r.to_string()));
        out.push(("x-ratelimit-reset-tokens", reset));
    }
    out
}

/// Read-modify-write of one shared-data entry with compare-and-swap, so that
/// every worker of this Envoy counts against the same number.
fn update_shared<T>(key: &str, mut f: impl FnMut(Option<Window>) -> (Option<Window>, T)) -> Option<T> {
    for _ in 0..16 {
        let (value, cas) = hostcalls::get_shared_data(key).ok()?;
        let (next, out) = f(value.as_deref().and_then(Window::parse));
        let Some(next) = next else { return Some(out) };
        match hostcalls::set_shared_data(key, Some(next.encode().as_bytes()), cas) {
            Ok(()) => return Some(out),
            Err(Status::CasMismatch) => continue,
            Err(_) => return None,
        }
    }
    None
}

pub fn admit_rate(config: &Config, key_id: &str, limits: &Limits, tokens: u64, now: u64) -> Result<RateState, Denial> {
    let key = format!("{RATE_PREFIX}{key_id}");
    let window_ms = config.rate_limit_window_ms;
    let admission = update_shared(&key, |current| match ratelimit::admit(current, now, window_ms, limits, tokens) {
        a @ Admission::Admit { window, .. } => (Some(window), a),
        r @ Admission::Refuse { .. } => (None, r),
    });
    match admission {
        Some(Admission::Admit { window, remaining }) => {
            Ok(RateState { key, window_start: window.start_ms, estimated: tokens, limits: limits.clone(), remaining })
        }
        Some(Admission::Refuse { requests, retry_after_s, remaining }) => {
            metrics::count("ratelimit.refused");
            let what = if requests { "requests" } else { "tokens" };
            let mut d = Denial::new(
                429,
                "rate_limit_exceeded",
                format!("this access key is over its {what} per minute limit; retry after {retry_after_s} s"),
            );
            d.retry_after = Some(retry_after_s);
            d.headers = limit_headers(limits, &remaining);
            Err(d)
        }
        None => Err(Denial::new(500, "internal_error", "the rate limiter is unavailable")),
    }
}

/// Asks the store to hold this request's estimate against its budgets.
///
/// The SDK files a callout under the context whose callback is running. When
/// that is another request's (one whose lookup this request joined), that
/// request may end before the answer comes, and the answer would be lost: so
/// the root context, which lives as long as the VM, files it on its next tick.
/// This request's own gate lives as long as the request: it may file it.
pub fn reserve(state: &Rc<RefCell<RequestState>>) -> Step {
    let running = RUNNING.with(Cell::get);
    let (own, gate) = {
        let st = state.borrow();
        (st.context_id, st.gate_id)
    };
    if running != 0 && running != own && Some(running) != gate {
        with_vm(|vm| vm.reserve_queue.push(state.clone()));
        return Step::Waiting;
    }
    // Envoy files a callout under the effective context's root context, the
    // SDK under the context whose callback runs: filed under the gate, both
    // must be the gate, or the answer is unreadable where it arrives.
    let under_gate = running != 0 && running != own;
    if under_gate {
        let _ = host::set_effective_context(running);
    }
    let step = dispatch_reserve(state);
    if under_gate {
        let _ = host::set_effective_context(own);
    }
    step
}

fn dispatch_reserve(state: &Rc<RefCell<RequestState>>) -> Step {
    let st = state.borrow();
    let Some(served) = st.served.clone() else { return Step::Denied };
    let body = ReserveRequest {
        request_id: st.request_id.clone(),
        access_key_id: served.key_id,
        config_id: served.config_id,
        provider: served.provider,
        model: served.model,
        input_tokens: st.estimate.0,
        output_tokens: st.estimate.1,
    };
    let Ok(json) = serde_json::to_vec(&body) else { return Step::Denied };
    let dispatched = with_vm(|vm| {
        let token = store_call(&vm.config, &vm.gateway_token, "POST", "/v1/reserve", Some(&json)).ok()?;
        vm.reserves.insert(token, state.clone());
        Some(token)
    })
    .flatten();
    match dispatched {
        Some(_) => {
            metrics::count("budget.reserves");
            Step::Waiting
        }
        None => {
            send_denial(&st, &store_unavailable());
            Step::Denied
        }
    }
}

/// Files the queued reservations (root context, on its tick).
pub fn reserve_queued() {
    let queued = with_vm(|vm| std::mem::take(&mut vm.reserve_queue)).unwrap_or_default();
    for state in queued {
        let target = state.borrow().context_id;
        if host::set_effective_context(target).is_ok() {
            reserve(&state);
        }
    }
}

/// Handles a reservation answer; false when `token` is not a reservation.
pub fn on_reserve_response(token: u32, body_size: usize) -> bool {
    let Some(state) = with_vm(|vm| vm.reserves.remove(&token)).flatten() else { return false };
    let answer = read_json::<ReserveResponse>(body_size);
    let target = state.borrow().context_id;
    if host::set_effective_context(target).is_err() {
        return true; // the request is gone; its reservation expires in the store
    }
    let Some(config) = with_vm(|vm| vm.config.clone()) else { return true };
    let resume = match answer {
        None => {
            send_denial(&state.borrow(), &store_unavailable());
            false
        }
        Some(r) if r.ok => {
            let lookup = {
                let mut st = state.borrow_mut();
                st.reservation = r.reservation_id;
                st.admitted = true;
                st.lookup.clone()
            };
            match lookup {
                Some(l) => advance(&config, &state, &l) == Step::Forwarded,
                None => false,
            }
        }
        Some(r) => {
            let by = r.refused_by.unwrap_or(RefusedBy::Other);
            let message = match by {
                RefusedBy::Key => "this access key has used up its budget",
                RefusedBy::Configuration => "the budget of this access key's configuration is used up",
                RefusedBy::Credits => "the gateway's credit balance is used up",
                RefusedBy::Other => "a budget that applies to this access key is used up",
            };
            info!("keygate: request {} refused: insufficient_credits ({})", state.borrow().request_id, by.as_str());
            send_denial(&state.borrow(), &Denial::new(402, "insufficient_credits", message));
            false
        }
    };
    if resume && hostcalls::resume_http_request().is_err() {
        warn!("keygate: could not resume a request");
    }
    true
}

/// Reads a response chunk for usage as it passes (never holds it back).
pub fn observe_body(st: &mut RequestState, body_size: usize) {
    if !st.read_usage || body_size == 0 {
        return;
    }
    let Ok(chunk) = host::buffer(BufferType::HttpResponseBody, 0, body_size) else { return };
    if st.scanner.is_none() && st.json_body.is_none() {
        match crate::usage::body_kind(&chunk) {
            Some(BodyKind::Json) => st.json_body = Some(Vec::new()),
            Some(BodyKind::EventStream) => st.scanner = Some(crate::usage::SseScanner::default()),
            None => return, // only whitespace so far
        }
    }
    if let Some(scanner) = st.scanner.as_mut() {
        scanner.feed(&chunk);
    } else if let Some(json) = st.json_body.as_mut() {
        if json.len() + chunk.len() <= MAX_JSON_BODY {
            json.extend_from_slice(&chunk);
        } else {
            st.json_body = None;
            st.read_usage = false;
        }
    }
}

/// At the end of a forwarded request: one usage record per upstream attempt
/// (tokens on the final one), queued for the store; the rate-limit count is
/// corrected from the estimate to the real usage.
pub fn record(state: &Rc<RefCell<RequestState>>) {
    let mut st = state.borrow_mut();
    // The request is over: its strings move into the record (no copies).
    let Some(served) = st.served.take() else { return };
    let usage = match (&st.scanner, &st.json_body) {
        (Some(s), _) => s.usage,
        (None, Some(body)) => Usage::from_json(body),
        _ => Usage::default(),
    };
    let mut attempts = st.plan.as_ref().map(|(_, p)| std::mem::take(&mut p.borrow_mut().attempts)).unwrap_or_default();
    let final_ok = attempts.last().and_then(|a| a.status).is_some_and(|s| (200..300).contains(&s));
    // No usage reported for an answer that was served: count the estimate, so
    // that nothing is free (e.g. OpenAI streams without include_usage).
    let (input, output) = match (usage.seen, final_ok) {
        (true, _) => (usage.input, usage.output),
        (false, true) => {
            if st.max_tokens.is_none() && st.has_body && !st.body_read {
                let config = with_vm(|vm| vm.config.clone());
                st.max_tokens = config.and_then(|c| super::read_max_tokens(&c.metadata_namespace));
                st.estimate = crate::usage::estimate(st.body_bytes, st.max_tokens, st.choices, DEFAULT_OUTPUT_ESTIMATE);
            }
            st.estimate
        }
        (false, false) => (0, 0),
    };
    let last_attempt = attempts.pop();
    if last_attempt.is_none() && st.reservation.is_none() {
        return; // refused or abandoned before anything went upstream
    }
    let base = UsageRecord {
        request_id: std::mem::take(&mut st.request_id),
        access_key_id: served.key_id,
        config_id: served.config_id,
        provider: served.provider,
        model: served.model,
        streaming: st.scanner.is_some(),
        started_ms: st.started_ms,
        ended_ms: now_ms(),
        ..UsageRecord::default()
    };
    let of_attempt = |i: usize, a: crate::failover::Attempt, base: UsageRecord| UsageRecord {
        provider_key_id: Some(a.key_id),
        attempt: i as u32 + 1,
        status: a.status.unwrap_or(0),
        ..base
    };
    let mut records: Vec<UsageRecord> = Vec::with_capacity(attempts.len() + 1);
    let earlier = attempts.len();
    for (i, a) in attempts.into_iter().enumerate() {
        records.push(of_attempt(i, a, base.clone()));
    }
    // The last attempt (or, for a request that never went out, the record that
    // settles its reservation) carries the usage.
    let mut last = match last_attempt {
        Some(a) => of_attempt(earlier, a, base),
        None => base,
    };
    last.final_attempt = true;
    last.input_tokens = input;
    last.output_tokens = output;
    last.cached_tokens = usage.cached;
    last.reasoning_tokens = usage.reasoning;
    last.reservation_id = st.reservation.take();
    records.push(last);
    metrics::add("tokens.input", input);
    metrics::add("tokens.output", output);
    if let Some(rate) = st.rate.take() {
        let actual = input.saturating_add(output);
        update_shared(&rate.key, |current| {
            (current.and_then(|w| ratelimit::settle(w, rate.window_start, rate.estimated, actual)), ())
        });
    }
    drop(st);
    with_vm(|vm| {
        vm.usage.extend(records);
        let mut dropped = 0;
        while vm.usage.len() > MAX_QUEUED {
            vm.usage.pop_front();
            dropped += 1;
        }
        metrics::add("usage.dropped", dropped);
    });
}

/// Whether to send a batch now, `since_ms` after the last one.
pub fn flush_due(since_ms: u64) -> bool {
    with_vm(|vm| !vm.usage.is_empty() && (since_ms >= FLUSH_INTERVAL_MS || vm.usage.len() >= BATCH)).unwrap_or(false)
}

/// Sends the next batch of usage records; the caller keeps it until the store
/// acknowledges (`requeue` on failure).
pub fn flush(config: &Config, gateway_token: &str) -> Option<(u32, Vec<UsageRecord>)> {
    let batch: Vec<UsageRecord> = with_vm(|vm| {
        let n = vm.usage.len().min(BATCH);
        vm.usage.drain(..n).collect()
    })?;
    if batch.is_empty() {
        return None;
    }
    let body = UsageBatch { records: batch };
    let json = serde_json::to_vec(&body).ok()?;
    match store_call(config, gateway_token, "POST", "/v1/usage", Some(&json)) {
        Ok(token) => Some((token, body.records)),
        Err(()) => {
            requeue(body.records);
            None
        }
    }
}

/// Puts an unacknowledged batch back at the front of the queue.
pub fn requeue(batch: Vec<UsageRecord>) {
    with_vm(|vm| {
        for record in batch.into_iter().rev() {
            vm.usage.push_front(record);
        }
    });
}
