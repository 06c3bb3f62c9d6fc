//! Times the filter's hot path: the worker's callbacks for one request, in
//! the order Envoy makes them, on the recording host (`FakeHost`). It runs
//! natively and, built for wasm32-wasip1 with the `fake-host` feature, as a
//! WASI command under a wasm runtime: the same inputs, so the difference is
//! the runtime's code. `scripts/hotpath` builds and runs both.
//!
//! The figures include FakeHost's own work (HashMaps, copies, the returned
//! `Vec`s) and the harness's (filling header maps and buffers as Envoy
//! would). The `host` column replays only those calls, recorded from one
//! request, against the same host: the rest is the filter's own work.
//!
//! Usage: hotpath [--iters N] [--runs R] [--label NAME] [--json] [--only PATH] [--warmup N]
//!                [--no-replay]
//!
//! `--no-replay` leaves the `host` column at 0: a profiler or an instruction
//! counter then sees only the requests (count two `--iters` and take the
//! difference to leave out the start and the warm-up).

use std::cell::RefCell;
use std::hint::black_box;
use std::rc::Rc;

use keygate_filter::attempt;
use keygate_filter::config::Config;
use keygate_filter::fake_host::FakeHost;
use keygate_filter::handover::SealKey;
use keygate_filter::host::{Buffer, Call, HeaderMap, Host, HostError, Map, MetricKind, SharedError};
use keygate_filter::worker::{Flow, GateState, Worker};
use keygate_proto::token;

#[cfg(all(target_arch = "wasm32", not(feature = "fake-host")))]
compile_error!("build the wasm harness with --features fake-host");

const GATEWAY_TOKEN: &str = "bench-gateway-token";
/// The keygate filter's configuration of envoy/envoy.yaml, defaults filled in.
const KEYGATE_CONFIG: &str = r#"{"storeCluster":"keygate_store","hopCluster":"keygate_hop","calloutTimeoutMs":500,
"maxBodyBytes":8388608,"cacheTtlMs":4000,"pollIntervalMs":200,"staleIfErrorMs":0,"cacheMaxEntries":100000,
"rateLimitWindowMs":60000,"cooldownRateLimitedMs":30000,"cooldownAuthFailureMs":300000}"#;
const MAX_BODY: u64 = 8 << 20;
const ROOT: u32 = 1;
const GATE: u32 = 20;
const REQUEST: u32 = 21;
const ATTEMPT: u32 = 22;
/// Envoy hands a filter the body as it reads it: 16 KiB slices.
const CHUNK: usize = 16 * 1024;
/// The root's tick (20 ms) at ~13k requests/s: one tick per ~256 requests.
const TICK_EVERY: u64 = 256;
/// The mock provider's answer (bench/upstream).
const ANSWER: &str = r#"{"id":"chatcmpl-bench0000000000000000000000","object":"chat.completion","created":1735689600,"model":"gpt-4o-mini-2024-07-18","choices":[{"index":0,"message":{"role":"assistant","content":"This is a fixed answer from the keygate benchmark's mock upstream.","refusal":null},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":212,"completion_tokens":14,"total_tokens":226,"prompt_tokens_details":{"cached_tokens":0},"completion_tokens_details":{"reasoning_tokens":0}},"system_fingerprint":"fp_bench"}"#;
const UNKNOWN: &str = r#"{"schema":1,"version":1,"status":"unknown"}"#;

/// CPU time of this thread, in ns: the machine is shared, and wall time
/// counts whatever else runs.
#[cfg(not(target_arch = "wasm32"))]
fn cpu_ns() -> u64 {
    #[repr(C)]
    struct Timespec {
        sec: i64,
        nsec: i64,
    }
    extern "C" {
        fn clock_gettime(clock: i32, out: *mut Timespec) -> i32;
    }
    const CLOCK_THREAD_CPUTIME_ID: i32 = 3;
    let mut ts = Timespec { sec: 0, nsec: 0 };
    // SAFETY: the C library writes one timespec through a pointer to a live local.
    let status = unsafe { clock_gettime(CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if status != 0 {
        return 0;
    }
    (ts.sec as u64).saturating_mul(1_000_000_000).saturating_add(ts.nsec as u64)
}

/// WASI has no CPU clock that runtimes implement: the runner provides one
/// (scripts/hotpath-wasm.py, hotpath-node.mjs).
#[cfg(target_arch = "wasm32")]
fn cpu_ns() -> u64 {
    #[link(wasm_import_module = "hotpath")]
    extern "C" {
        fn cpu_ns() -> u64;
    }
    // SAFETY: an import without arguments that returns a number.
    unsafe { cpu_ns() }
}

/// What Envoy does around the filter's callbacks (the harness's side): a
/// trait so that the recorder sees it too.
trait Env: Host {
    /// Envoy runs a callback of context `id`.
    fn run(&self, id: u32);
    fn put_headers(&self, id: u32, map: Map, headers: &[(&str, &str)]);
    fn put_buffer(&self, id: u32, buffer: Buffer, bytes: &[u8]);
    /// An upstream request starts from the downstream request's headers.
    fn copy_request_headers(&self, from: u32, to: u32, extra: &[(&str, &str)]);
}

impl Env for FakeHost {
    fn run(&self, id: u32) {
        self.enter(id);
    }

    fn put_headers(&self, id: u32, map: Map, headers: &[(&str, &str)]) {
        self.set_headers(id, map, headers);
    }

    fn put_buffer(&self, id: u32, buffer: Buffer, bytes: &[u8]) {
        self.set_buffer_of(id, buffer, bytes);
    }

    fn copy_request_headers(&self, from: u32, to: u32, extra: &[(&str, &str)]) {
        let owned = self.headers_of(from, Map::RequestHeaders);
        let mut all: Vec<(&str, &str)> = owned.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
        all.extend_from_slice(extra);
        self.set_headers(to, Map::RequestHeaders, &all);
    }
}

/// A host call or harness step, with owned arguments, for the replay.
enum Op {
    Run(u32),
    PutHeaders(u32, Map, Vec<(String, String)>),
    PutBuffer(u32, Buffer, Vec<u8>),
    CopyHeaders(u32, u32, Vec<(String, String)>),
    NowMs,
    Headers(Map),
    Header(Map, String),
    SetHeader(Map, String, Option<Vec<u8>>),
    SetHeaders(Map, Vec<u8>),
    Buffer(Buffer, usize, usize),
    SetBuffer(Buffer, usize, usize, Vec<u8>),
    Property(Vec<String>),
    SetProperty(Vec<String>, Vec<u8>),
    SharedData(String),
    SetSharedData(String, Vec<u8>, Option<u32>),
    HttpCall(String, Vec<(String, String)>, Option<Vec<u8>>, u64),
    SendResponse(u16, Vec<(String, Vec<u8>)>, Vec<u8>),
    SetEffective(u32),
    Resume,
    Reset,
    DefineMetric(MetricKind, String),
    IncrementMetric(u32, i64),
}

fn owned_pairs(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect()
}

fn borrowed_pairs(pairs: &[(String, String)]) -> Vec<(&str, &str)> {
    pairs.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect()
}

fn owned_path(path: &[&str]) -> Vec<String> {
    path.iter().map(|s| s.to_string()).collect()
}

/// FakeHost, with every call and harness step written down.
struct Recorder<'a> {
    host: &'a FakeHost,
    ops: RefCell<Vec<Op>>,
}

impl Recorder<'_> {
    fn log(&self, op: Op) {
        self.ops.borrow_mut().push(op);
    }
}

impl Env for Recorder<'_> {
    fn run(&self, id: u32) {
        self.log(Op::Run(id));
        self.host.run(id);
    }

    fn put_headers(&self, id: u32, map: Map, headers: &[(&str, &str)]) {
        self.log(Op::PutHeaders(id, map, owned_pairs(headers)));
        self.host.put_headers(id, map, headers);
    }

    fn put_buffer(&self, id: u32, buffer: Buffer, bytes: &[u8]) {
        self.log(Op::PutBuffer(id, buffer, bytes.to_vec()));
        self.host.put_buffer(id, buffer, bytes);
    }

    fn copy_request_headers(&self, from: u32, to: u32, extra: &[(&str, &str)]) {
        self.log(Op::CopyHeaders(from, to, owned_pairs(extra)));
        self.host.copy_request_headers(from, to, extra);
    }
}

impl Host for Recorder<'_> {
    fn now_ms(&self) -> u64 {
        self.log(Op::NowMs);
        self.host.now_ms()
    }

    fn headers(&self, map: Map) -> HeaderMap {
        self.log(Op::Headers(map));
        self.host.headers(map)
    }

    fn header(&self, map: Map, name: &str) -> Option<Vec<u8>> {
        self.log(Op::Header(map, name.to_string()));
        self.host.header(map, name)
    }

    fn set_header(&self, map: Map, name: &str, value: Option<&[u8]>) -> Result<(), HostError> {
        self.log(Op::SetHeader(map, name.to_string(), value.map(<[u8]>::to_vec)));
        self.host.set_header(map, name, value)
    }

    fn set_headers(&self, map: Map, serialized: &[u8]) -> Result<(), HostError> {
        self.log(Op::SetHeaders(map, serialized.to_vec()));
        Host::set_headers(self.host, map, serialized)
    }

    fn buffer(&self, buffer: Buffer, start: usize, max_size: usize) -> Result<Vec<u8>, HostError> {
        self.log(Op::Buffer(buffer, start, max_size));
        self.host.buffer(buffer, start, max_size)
    }

    fn set_buffer(&self, buffer: Buffer, start: usize, size: usize, value: &[u8]) -> Result<(), HostError> {
        self.log(Op::SetBuffer(buffer, start, size, value.to_vec()));
        self.host.set_buffer(buffer, start, size, value)
    }

    fn property(&self, path: &[&str]) -> Option<Vec<u8>> {
        self.log(Op::Property(owned_path(path)));
        self.host.property(path)
    }

    fn set_property(&self, path: &[&str], value: &[u8]) -> Result<(), HostError> {
        self.log(Op::SetProperty(owned_path(path), value.to_vec()));
        self.host.set_property(path, value)
    }

    fn shared_data(&self, key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), HostError> {
        self.log(Op::SharedData(key.to_string()));
        self.host.shared_data(key)
    }

    fn set_shared_data(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), SharedError> {
        self.log(Op::SetSharedData(key.to_string(), value.to_vec(), cas));
        self.host.set_shared_data(key, value, cas)
    }

    fn http_call(&self, call: &Call<'_>) -> Result<u32, HostError> {
        self.log(Op::HttpCall(
            call.cluster.to_string(),
            owned_pairs(&call.headers),
            call.body.map(<[u8]>::to_vec),
            call.timeout_ms,
        ));
        self.host.http_call(call)
    }

    fn send_response(&self, status: u16, headers: &[(&str, &[u8])], body: &[u8]) -> Result<(), HostError> {
        let owned = headers.iter().map(|(n, v)| (n.to_string(), v.to_vec())).collect();
        self.log(Op::SendResponse(status, owned, body.to_vec()));
        self.host.send_response(status, headers, body)
    }

    fn set_effective_context(&self, context_id: u32) -> Result<(), HostError> {
        self.log(Op::SetEffective(context_id));
        self.host.set_effective_context(context_id)
    }

    fn resume_request(&self) -> Result<(), HostError> {
        self.log(Op::Resume);
        self.host.resume_request()
    }

    fn reset_answer(&self) -> Result<(), HostError> {
        self.log(Op::Reset);
        self.host.reset_answer()
    }

    fn define_metric(&self, kind: MetricKind, name: &str) -> Result<u32, HostError> {
        self.log(Op::DefineMetric(kind, name.to_string()));
        self.host.define_metric(kind, name)
    }

    fn increment_metric(&self, id: u32, delta: i64) -> Result<(), HostError> {
        self.log(Op::IncrementMetric(id, delta));
        self.host.increment_metric(id, delta)
    }
}

/// Makes the recorded calls again, and only them.
fn replay(host: &FakeHost, ops: &[Op]) {
    for op in ops {
        match op {
            Op::Run(id) => host.run(*id),
            Op::PutHeaders(id, map, headers) => host.put_headers(*id, *map, &borrowed_pairs(headers)),
            Op::PutBuffer(id, buffer, bytes) => host.put_buffer(*id, *buffer, bytes),
            Op::CopyHeaders(from, to, extra) => host.copy_request_headers(*from, *to, &borrowed_pairs(extra)),
            Op::NowMs => {
                black_box(host.now_ms());
            }
            Op::Headers(map) => {
                black_box(host.headers(*map));
            }
            Op::Header(map, name) => {
                black_box(host.header(*map, name));
            }
            Op::SetHeader(map, name, value) => {
                black_box(host.set_header(*map, name, value.as_deref()).is_ok());
            }
            Op::SetHeaders(map, serialized) => {
                black_box(Host::set_headers(host, *map, serialized).is_ok());
            }
            Op::Buffer(buffer, start, size) => {
                black_box(host.buffer(*buffer, *start, *size).ok());
            }
            Op::SetBuffer(buffer, start, size, value) => {
                black_box(host.set_buffer(*buffer, *start, *size, value).is_ok());
            }
            Op::Property(path) => {
                let path: Vec<&str> = path.iter().map(String::as_str).collect();
                black_box(host.property(&path));
            }
            Op::SetProperty(path, value) => {
                let path: Vec<&str> = path.iter().map(String::as_str).collect();
                black_box(host.set_property(&path, value).is_ok());
            }
            Op::SharedData(key) => {
                black_box(host.shared_data(key).ok());
            }
            Op::SetSharedData(key, value, cas) => {
                black_box(host.set_shared_data(key, value, *cas).is_ok());
            }
            Op::HttpCall(cluster, headers, body, timeout_ms) => {
                let call =
                    Call { cluster, headers: borrowed_pairs(headers), body: body.as_deref(), timeout_ms: *timeout_ms };
                black_box(host.http_call(&call).ok());
            }
            Op::SendResponse(status, headers, body) => {
                let headers: Vec<(&str, &[u8])> = headers.iter().map(|(n, v)| (n.as_str(), v.as_slice())).collect();
                black_box(host.send_response(*status, &headers, body).is_ok());
            }
            Op::SetEffective(id) => {
                black_box(host.set_effective_context(*id).is_ok());
            }
            Op::Resume => {
                black_box(host.resume_request().is_ok());
            }
            Op::Reset => {
                black_box(host.reset_answer().is_ok());
            }
            Op::DefineMetric(kind, name) => {
                black_box(host.define_metric(*kind, name).ok());
            }
            Op::IncrementMetric(id, delta) => {
                black_box(host.increment_metric(*id, *delta).is_ok());
            }
        }
    }
}

/// The store's answer for a key with these provider keys (as in the worker's tests).
fn lookup_answer(keys: &[&str]) -> String {
    let creds: Vec<String> =
        keys.iter().map(|k| format!(r#"{{"id":"{k}","value":"sk-bench-provider-{k}"}}"#)).collect();
    format!(
        r#"{{"schema":1,"version":1,"status":"active","key":{{"id":"ak_bench"}},
        "providers":[{{"id":"openai","format":"openai","auth":"bearer","baseUrl":"http://127.0.0.1:8080/v1",
        "models":["gpt-*"],"routes":[{{"keys":[{}]}}]}}]}}"#,
        creds.join(",")
    )
}

/// The benchmark's 1 KiB chat request (bench.py `chat_body`), grown to
/// about `kib` KiB by a longer user message (`sized_body`).
fn chat_body(kib: usize) -> Result<Vec<u8>, String> {
    let doc = |content: &str, extra: Option<&str>| {
        let mut messages = vec![
            serde_json::json!({"role": "system", "content": "You are a helpful assistant."}),
            serde_json::json!({"role": "user", "content": content}),
        ];
        if let Some(more) = extra {
            messages.push(serde_json::json!({"role": "user", "content": more}));
        }
        serde_json::json!({"model": "gpt-4o-mini", "max_tokens": 64, "temperature": 0.2, "messages": messages})
    };
    let base = serde_json::to_vec(&doc("", None)).map_err(|e| e.to_string())?.len();
    let words: String = "benchmark the gateway with a realistic prompt ".repeat(40).chars().take(1024 - base).collect();
    let extra: Option<String> =
        (kib > 1).then(|| "a longer prompt, ".repeat(kib * 64).chars().take((kib - 1) * 1024).collect());
    serde_json::to_vec(&doc(&words, extra.as_deref())).map_err(|e| e.to_string())
}

/// The headers Envoy hands the gate for a chat request (wrk's, plus what
/// the connection manager adds).
fn request_headers(auth: &str, length: &str) -> Vec<(String, String)> {
    owned_pairs(&[
        (":authority", "bench"),
        (":path", "/v1/chat/completions"),
        (":method", "POST"),
        (":scheme", "http"),
        ("content-type", "application/json"),
        ("content-length", length),
        ("authorization", auth),
        ("x-forwarded-proto", "http"),
        ("x-request-id", "0f4a6c1e-8a52-4c3e-9a57-2b1d3c4e5f60"),
    ])
}

/// One path: a request Envoy sends through the filters, over and over.
struct Path {
    name: &'static str,
    what: &'static str,
    body: Vec<u8>,
    /// Header lists to cycle through (one per access key used).
    headers: Vec<Vec<(String, String)>>,
    kind: Kind,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Forwarded: the provider answers 200 and the request ends.
    Hit { upstream_attempt: bool },
    /// Refused by the gate at the end of the body.
    Refused,
}

struct Bench {
    worker: Worker,
    seal: SealKey,
    upstream: Config,
    response_headers: Vec<(String, String)>,
    done: u64,
    tick_ns: u64,
}

impl Bench {
    fn new(host: &FakeHost) -> Result<Bench, String> {
        let config = Rc::new(Config::parse(KEYGATE_CONFIG.as_bytes())?);
        let mut worker = Worker::new(config, GATEWAY_TOKEN.into());
        worker.set_gated();
        // As in envoy/envoy.yaml: the keygate filter shares the gate's VM.
        worker.set_downstream();
        // The keygate filter and each attempt belong to the gate's request.
        host.join_stream(REQUEST, GATE);
        host.join_stream(ATTEMPT, GATE);
        let length = ANSWER.len().to_string();
        let response_headers = owned_pairs(&[
            (":status", "200"),
            ("content-type", "application/json"),
            ("content-length", &length),
            ("x-request-id", "bench"),
            ("x-envoy-upstream-service-time", "1"),
        ]);
        Ok(Bench {
            worker,
            seal: SealKey::derive(GATEWAY_TOKEN),
            upstream: Config::parse(br#"{"role":"upstream"}"#)?,
            response_headers,
            done: 0,
            tick_ns: 0,
        })
    }

    /// One request of `path` (its `i`th header list), on host `h`.
    fn request<H: Env>(&mut self, h: &H, path: &Path, i: usize) -> Result<(), String> {
        let headers = path.headers.get(i % path.headers.len().max(1)).ok_or("no headers")?;
        let headers = borrowed_pairs(headers);
        let w = &mut self.worker;
        // The gate: headers, then the body as Envoy reads it.
        let mut gate = GateState::new(GATE, MAX_BODY);
        h.run(GATE);
        h.put_headers(GATE, Map::RequestHeaders, &headers);
        if w.gate_headers(h, &mut gate, false) != Flow::Continue {
            return Err(format!("{}: the gate stopped the headers", path.name));
        }
        let chunks = path.body.len().div_ceil(CHUNK);
        let mut last = Flow::Continue;
        for (n, chunk) in path.body.chunks(CHUNK).enumerate() {
            h.put_buffer(GATE, Buffer::RequestBody, chunk);
            last = w.gate_body(h, &mut gate, chunk.len(), n + 1 == chunks);
        }
        // The keygate filter's context exists for every request.
        w.request_created(REQUEST);
        if path.kind == Kind::Refused {
            if last != Flow::Pause {
                return Err(format!("{}: not refused", path.name));
            }
            // The local reply passes the keygate filter on its way out.
            h.run(REQUEST);
            w.enter(REQUEST);
            h.put_headers(REQUEST, Map::ResponseHeaders, &[(":status", "401"), ("content-type", "application/json")]);
            w.response_headers(h, REQUEST);
            w.request_done(h, REQUEST);
            w.gate_done(&mut gate);
            return Ok(());
        }
        // The buffer filter hands the same headers (as the gate left
        // them), then the whole body, on.
        h.run(REQUEST);
        h.copy_request_headers(GATE, REQUEST, &[]);
        if w.request_headers(h, REQUEST, false) != Flow::Continue {
            return Err(format!("{}: not forwarded at once (is the key cached?)", path.name));
        }
        h.put_buffer(REQUEST, Buffer::RequestBody, &path.body);
        w.enter(REQUEST);
        w.request_body(h, REQUEST, path.body.len(), true);
        if path.kind == (Kind::Hit { upstream_attempt: true }) {
            // The cluster's upstream filter, in its own context.
            h.run(ATTEMPT);
            h.copy_request_headers(REQUEST, ATTEMPT, &[("x-envoy-attempt-count", "1")]);
            let sent = attempt::attempt_headers(h, &self.seal, &self.upstream)
                .ok_or(format!("{}: the upstream attempt was refused", path.name))?;
            h.put_buffer(ATTEMPT, Buffer::RequestBody, &path.body);
            if !attempt::attempt_body(h, &sent, path.body.len(), true) {
                return Err(format!("{}: the upstream attempt stopped the body", path.name));
            }
            h.put_headers(ATTEMPT, Map::ResponseHeaders, &borrowed_pairs(&self.response_headers));
            attempt::attempt_response(h, sent);
        }
        // The provider's answer, then the end of the request.
        h.run(REQUEST);
        w.enter(REQUEST);
        h.put_headers(REQUEST, Map::ResponseHeaders, &borrowed_pairs(&self.response_headers));
        w.response_headers(h, REQUEST);
        h.put_buffer(REQUEST, Buffer::ResponseBody, ANSWER.as_bytes());
        w.enter(REQUEST);
        w.response_body(h, REQUEST, ANSWER.len(), true);
        w.request_done(h, REQUEST);
        w.gate_done(&mut gate);
        Ok(())
    }

    /// Answers every callout the filter made with a 200 and `body`.
    fn answer_calls(&mut self, host: &FakeHost, body: impl Fn(&str) -> String) {
        let calls: Vec<_> = host.calls.borrow_mut().drain(..).collect();
        for call in calls {
            let text = body(&call.path);
            host.enter(call.context);
            host.answer(Some(200), &text);
            if call.context == ROOT {
                self.worker.enter_root(ROOT);
            } else {
                self.worker.enter(call.context);
            }
            self.worker.on_callout(host, call.token, text.len());
        }
    }

    /// The root's tick (usage flush, feed poll, metrics), answered at once.
    fn tick(&mut self, host: &FakeHost) {
        let start = cpu_ns();
        host.enter(ROOT);
        self.worker.tick(host, ROOT);
        self.answer_calls(host, |path| {
            if path.starts_with("/v1/changes") {
                r#"{"version":1,"digests":[]}"#.to_string()
            } else {
                r#"{"ok":true}"#.to_string()
            }
        });
        host.replies.borrow_mut().clear();
        self.tick_ns += cpu_ns().saturating_sub(start);
    }

    /// The key of each of `path`'s header lists looked up once, answered `answer`.
    fn prime(&mut self, host: &FakeHost, path: &Path, answer: &str) {
        for headers in &path.headers {
            let mut gate = GateState::new(GATE, MAX_BODY);
            host.enter(GATE);
            host.set_headers(GATE, Map::RequestHeaders, &borrowed_pairs(headers));
            self.worker.gate_headers(host, &mut gate, false);
            self.answer_calls(host, |_| answer.to_string());
            self.worker.gate_done(&mut gate);
        }
        host.replies.borrow_mut().clear();
    }

    /// `iters` requests of `path`, with the root's tick as often as Envoy's.
    fn requests(&mut self, host: &FakeHost, path: &Path, iters: u64) -> Result<(), String> {
        for i in 0..iters {
            self.request(host, path, i as usize)?;
            self.done += 1;
            if self.done.is_multiple_of(TICK_EVERY) {
                self.tick(host);
            }
        }
        Ok(())
    }
}

fn median(xs: &mut [f64]) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs.get(xs.len() / 2).copied().unwrap_or(f64::NAN)
}

struct Figures {
    median: f64,
    min: f64,
    max: f64,
}

fn figures(mut runs: Vec<f64>) -> Figures {
    let min = runs.iter().copied().fold(f64::INFINITY, f64::min);
    let max = runs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    Figures { median: median(&mut runs), min, max }
}

struct Args {
    iters: u64,
    runs: usize,
    label: String,
    json: bool,
    /// Only this path (for a profiler).
    only: Option<String>,
    /// Requests before the timed runs (default: a quarter of `iters`); 0
    /// with short runs shows a runtime warming up (`runs_ns` in the JSON).
    warmup: Option<u64>,
    /// Skips the host calls' replay (`--no-replay`).
    no_replay: bool,
}

fn args() -> Result<Args, String> {
    let mut out = Args {
        iters: 20_000,
        runs: 7,
        label: default_label(),
        json: false,
        only: None,
        warmup: None,
        no_replay: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--iters" => out.iters = it.next().and_then(|v| v.parse().ok()).ok_or("--iters N")?,
            "--runs" => out.runs = it.next().and_then(|v| v.parse().ok()).ok_or("--runs N")?,
            "--label" => out.label = it.next().ok_or("--label NAME")?,
            "--json" => out.json = true,
            "--only" => out.only = Some(it.next().ok_or("--only PATH")?),
            "--warmup" => out.warmup = Some(it.next().and_then(|v| v.parse().ok()).ok_or("--warmup N")?),
            "--no-replay" => out.no_replay = true,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(out)
}

fn default_label() -> String {
    if cfg!(target_arch = "wasm32") {
        "wasm32".into()
    } else {
        "native".into()
    }
}

fn paths() -> Result<Vec<Path>, String> {
    let key = |n: u8| token::from_random(&[n; token::RANDOM_BYTES]);
    let one = |body: &[u8], token: &str| vec![request_headers(&format!("Bearer {token}"), &body.len().to_string())];
    let (b1, b16, b64) = (chat_body(1)?, chat_body(16)?, chat_body(64)?);
    let hex = |n: usize, seed: u8| -> String { (0..n).map(|i| format!("{:x}", (i as u8 ^ seed) & 15)).collect() };
    // bench.py `malformed_token`: four kinds, cycled.
    let malformed = [
        format!("kg-{}", hex(48, 3)),
        format!("kg-{}", hex(10, 5)),
        format!("sk-{}", hex(48, 7)),
        "not a key 3".into(),
    ];
    let unknown: Vec<String> = (100..200).map(key).collect();
    let many = |body: &[u8], tokens: &[String]| -> Vec<Vec<(String, String)>> {
        tokens.iter().map(|t| request_headers(&format!("Bearer {t}"), &body.len().to_string())).collect()
    };
    Ok(vec![
        Path {
            name: "hit",
            what: "cached key, 1 provider key (direct cluster), 1 KiB body",
            headers: one(&b1, &key(1)),
            body: b1.clone(),
            kind: Kind::Hit { upstream_attempt: false },
        },
        Path {
            name: "hit-2keys",
            what: "cached key, 2 provider keys: + the upstream filter's attempt",
            headers: one(&b1, &key(2)),
            body: b1.clone(),
            kind: Kind::Hit { upstream_attempt: true },
        },
        Path {
            name: "hit-16k",
            what: "as hit, 16 KiB body",
            headers: one(&b16, &key(1)),
            body: b16,
            kind: Kind::Hit { upstream_attempt: false },
        },
        Path {
            name: "hit-64k",
            what: "as hit, 64 KiB body (4 chunks)",
            headers: one(&b64, &key(1)),
            body: b64,
            kind: Kind::Hit { upstream_attempt: false },
        },
        Path {
            name: "refused-malformed",
            what: "malformed token (4 kinds), refused at the end of the body",
            headers: many(&b1, &malformed),
            body: b1.clone(),
            kind: Kind::Refused,
        },
        Path {
            name: "refused-unknown",
            what: "well-formed unknown token, cached negative (100 cycled)",
            headers: many(&b1, &unknown),
            body: b1,
            kind: Kind::Refused,
        },
    ])
}

fn main() -> Result<(), String> {
    let args = args()?;
    let paths = paths()?;
    let host = FakeHost::new();
    let mut bench = Bench::new(&host)?;
    let unknown = paths.iter().find(|p| p.name == "refused-unknown").ok_or("no refused-unknown path")?;
    bench.prime(&host, unknown, UNKNOWN);
    for (name, keys) in [("hit", &["pk_a"][..]), ("hit-2keys", &["pk_a", "pk_b"][..])] {
        let path = paths.iter().find(|p| p.name == name).ok_or("no such path")?;
        bench.prime(&host, path, &lookup_answer(keys));
    }
    let mut rows = Vec::new();
    for path in paths.iter().filter(|p| args.only.as_deref().is_none_or(|only| only == p.name)) {
        // Warm-up (caches, allocator), then the timed runs.
        bench.requests(&host, path, args.warmup.unwrap_or((args.iters / 4).max(1)))?;
        let mut runs = Vec::new();
        let mut tick_share = Vec::new();
        for _ in 0..args.runs {
            bench.tick_ns = 0;
            let start = cpu_ns();
            bench.requests(&host, path, args.iters)?;
            let ns = cpu_ns().saturating_sub(start) as f64;
            runs.push(ns / args.iters as f64);
            tick_share.push(bench.tick_ns as f64 / args.iters as f64);
        }
        // One request recorded, then its host calls and harness steps replayed.
        let recorder = Recorder { host: &host, ops: RefCell::new(Vec::new()) };
        bench.request(&recorder, path, 0)?;
        let ops = recorder.ops.into_inner();
        let host_calls = ops
            .iter()
            .filter(|op| !matches!(op, Op::Run(_) | Op::PutHeaders(..) | Op::PutBuffer(..) | Op::CopyHeaders(..)))
            .count();
        let mut replays = Vec::new();
        for _ in 0..args.runs {
            if args.no_replay {
                replays.push(0.0);
                continue;
            }
            let start = cpu_ns();
            for _ in 0..args.iters {
                replay(&host, &ops);
                host.replies.borrow_mut().clear();
            }
            replays.push(cpu_ns().saturating_sub(start) as f64 / args.iters as f64);
        }
        rows.push((path, runs.clone(), figures(runs), median(&mut tick_share), figures(replays), host_calls));
    }
    if args.json {
        let doc: Vec<serde_json::Value> = rows
            .iter()
            .map(|(path, each, f, tick, r, calls)| {
                serde_json::json!({"path": path.name, "what": path.what, "median_ns": f.median, "min_ns": f.min,
                    "max_ns": f.max, "tick_ns": tick, "host_ns": r.median, "host_calls": calls, "runs_ns": each})
            })
            .collect();
        let out = serde_json::json!({"label": args.label, "iters": args.iters, "runs": args.runs, "paths": doc});
        println!("{out}");
        return Ok(());
    }
    println!(
        "keygate hot path, {} ({} requests x {} runs; ns per request: median [min-max] of the runs)",
        args.label, args.iters, args.runs
    );
    println!("FakeHost's own work (HashMaps, copies) is included; `host` = replay of just the host calls and");
    println!("harness steps of one request; `tick` = the root's tick amortized (every {TICK_EVERY} requests).");
    println!(
        "{:<18} {:>9} {:>19} {:>7} {:>9} {:>9} {:>6}",
        "path", "ns/req", "[min-max]", "tick", "host", "filter", "calls"
    );
    for (path, _, f, tick, r, calls) in &rows {
        println!(
            "{:<18} {:>9.0} {:>19} {:>7.0} {:>9.0} {:>9.0} {:>6}",
            path.name,
            f.median,
            format!("[{:.0}-{:.0}]", f.min, f.max),
            tick,
            r.median,
            f.median - tick - r.median,
            calls
        );
    }
    Ok(())
}
