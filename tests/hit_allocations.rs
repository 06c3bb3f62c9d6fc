//! Heap allocations the guest makes per request, by path: a cached key
//! (a hit) and a new key (a miss), driven through the worker as Envoy calls
//! it (the gate, the keygate filter, the answer, the end), with a counting
//! global allocator. Its own test binary, for the allocator.
//!
//! Allocation was about a quarter of a hit's wasm time (issue 19): each
//! costs dlmalloc's work in the VM, and its free. These tests pin the counts,
//! so that a change that adds allocations to a path fails here and has to
//! raise the bound on purpose. `cargo test --test hit_allocations --
//! --nocapture` prints them by callback.
//!
//! The host is `FakeHost`, whose own allocations are not counted. What the
//! ABI glue (`filter::abi`) allocates in the VM is counted as if it ran:
//! the buffer the host fills for each call that returns data (Envoy
//! allocates it in the VM), and the glue's own (a property's path, a
//! serialized header map).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};

use keygate_filter::config::Config;
use keygate_filter::fake_host::FakeHost;
use keygate_filter::host::{Buffer, Call, HeaderMap, Host, HostError, Map, MetricKind, SharedError};
use keygate_filter::wire;
use keygate_filter::worker::{Flow, GateState, Worker};
use keygate_proto::token;

struct Counting;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

/// `KEYGATE_ALLOC_TRACE=1`: where each counted allocation is made (the
/// keygate frames of its backtrace).
static TRACE: AtomicBool = AtomicBool::new(false);

fn note() {
    // `try_with`: a thread's locals may be gone while it exits.
    let counted = COUNTING.try_with(|on| on.get()).unwrap_or(false);
    if !counted {
        return;
    }
    let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
    if TRACE.load(Ordering::Relaxed) {
        uncounted(|| {
            let trace = std::backtrace::Backtrace::force_capture().to_string();
            let frames: Vec<&str> = trace
                .lines()
                .filter(|l| l.contains("keygate") && !l.contains("at ") && !l.contains("hit_allocations"))
                .map(|l| l.trim().trim_start_matches(|c: char| c.is_ascii_digit() || c == ':').trim())
                .take(4)
                .collect();
            println!("  alloc: {}", frames.join(" < "));
        });
    }
}

// SAFETY: forwards to the system allocator; only counts (allocations and
// reallocations: each is a call into the VM's allocator).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note();
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note();
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note();
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Allocations `f` makes on this thread (outside `uncounted`).
fn count<R>(f: impl FnOnce() -> R) -> (R, u64) {
    let before = ALLOCATIONS.with(Cell::get);
    COUNTING.with(|c| c.set(true));
    let out = f();
    COUNTING.with(|c| c.set(false));
    (out, ALLOCATIONS.with(Cell::get) - before)
}

/// Runs `f` without counting (the host's own work).
fn uncounted<R>(f: impl FnOnce() -> R) -> R {
    let was = COUNTING.with(|c| c.replace(false));
    let out = f();
    COUNTING.with(|c| c.set(was));
    out
}

/// `FakeHost` as the guest sees Envoy: only what the ABI makes the VM
/// allocate is counted (see the module's comment).
struct Envoy<'a>(&'a FakeHost);

impl Envoy<'_> {
    /// The VM's copy of data the host returns (`proxy_on_memory_allocate`).
    fn returned(data: Vec<u8>) -> Vec<u8> {
        data.as_slice().to_vec()
    }
}

impl Host for Envoy<'_> {
    fn now_ms(&self) -> u64 {
        uncounted(|| self.0.now_ms())
    }

    fn headers(&self, map: Map) -> HeaderMap {
        let raw = uncounted(|| {
            let map = self.0.headers(map);
            let pairs: Vec<(&[u8], &[u8])> = map.raw_iter().collect();
            wire::serialize_pairs(&pairs)
        });
        HeaderMap::parse(Self::returned(raw))
    }

    fn header(&self, map: Map, name: &str) -> Option<Vec<u8>> {
        uncounted(|| self.0.header(map, name)).map(Self::returned)
    }

    fn set_header(&self, map: Map, name: &str, value: Option<&[u8]>) -> Result<(), HostError> {
        uncounted(|| self.0.set_header(map, name, value))
    }

    fn set_headers(&self, map: Map, serialized: &[u8]) -> Result<(), HostError> {
        uncounted(|| Host::set_headers(self.0, map, serialized))
    }

    fn buffer(&self, buffer: Buffer, start: usize, max_size: usize) -> Result<Vec<u8>, HostError> {
        uncounted(|| self.0.buffer(buffer, start, max_size)).map(Self::returned)
    }

    fn set_buffer(&self, buffer: Buffer, start: usize, size: usize, value: &[u8]) -> Result<(), HostError> {
        uncounted(|| self.0.set_buffer(buffer, start, size, value))
    }

    fn property(&self, path: &[&str]) -> Option<Vec<u8>> {
        drop(wire::property_path(path));
        uncounted(|| self.0.property(path)).map(Self::returned)
    }

    fn set_property(&self, path: &[&str], value: &[u8]) -> Result<(), HostError> {
        drop(wire::property_path(path));
        uncounted(|| self.0.set_property(path, value))
    }

    fn shared_data(&self, key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), HostError> {
        uncounted(|| self.0.shared_data(key)).map(|(v, cas)| (v.map(Self::returned), cas))
    }

    fn set_shared_data(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), SharedError> {
        uncounted(|| self.0.set_shared_data(key, value, cas))
    }

    /// The SDK copies the headers and serializes them.
    fn http_call(&self, call: &Call<'_>) -> Result<u32, HostError> {
        let headers = call.headers.clone();
        let pairs: Vec<(&str, &[u8])> = headers.iter().map(|(n, v)| (*n, v.as_bytes())).collect();
        drop(wire::serialize_pairs(&pairs));
        uncounted(|| self.0.http_call(call))
    }

    fn send_response(&self, status: u16, headers: &[(&str, &[u8])], body: &[u8]) -> Result<(), HostError> {
        drop(wire::serialize_pairs(headers));
        uncounted(|| self.0.send_response(status, headers, body))
    }

    fn set_effective_context(&self, context_id: u32) -> Result<(), HostError> {
        uncounted(|| self.0.set_effective_context(context_id))
    }

    fn resume_request(&self) -> Result<(), HostError> {
        uncounted(|| self.0.resume_request())
    }

    fn reset_answer(&self) -> Result<(), HostError> {
        uncounted(|| self.0.reset_answer())
    }

    fn define_metric(&self, kind: MetricKind, name: &str) -> Result<u32, HostError> {
        uncounted(|| self.0.define_metric(kind, name))
    }

    fn increment_metric(&self, id: u32, delta: i64) -> Result<(), HostError> {
        uncounted(|| self.0.increment_metric(id, delta))
    }
}

const GATEWAY_TOKEN: &str = "gw-token";
const ROOT: u32 = 1;

/// The store's answer for a key with one provider key; its id is one the
/// store makes (`ak_` and 24 hex digits).
const ANSWER: &str = r#"{"schema":1,"version":1,"status":"active","key":{"id":"ak_0197a3b2c4d5e65f3a9c0e1d","configId":"akc_1"},
"providers":[{"id":"openai","format":"openai","auth":"bearer","baseUrl":"http://127.0.0.1:8080/v1",
"models":["gpt-*"],"routes":[{"keys":[{"id":"pk_0197a3b2c4d5e6f708a1b3","value":"sk-bench-provider-key"}]}]}]}"#;

/// The mock provider's answer (bench/upstream).
const RESPONSE: &str = r#"{"id":"chatcmpl-bench0000000000000000000000","object":"chat.completion","created":1735689600,"model":"gpt-4o-mini-2024-07-18","choices":[{"index":0,"message":{"role":"assistant","content":"This is a fixed answer from the keygate benchmark's mock upstream.","refusal":null},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":212,"completion_tokens":14,"total_tokens":226,"prompt_tokens_details":{"cached_tokens":0},"completion_tokens_details":{"reasoning_tokens":0}},"system_fingerprint":"fp_bench"}"#;

/// The bench's request: a 1 KiB chat completion.
fn body() -> String {
    let head = r#"{"model":"gpt-4o-mini","max_tokens":64,"temperature":0.2,"messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":""#;
    let tail = r#""}]}"#;
    let fill = "benchmark the gateway with a realistic prompt ".repeat(40);
    let room = 1024 - head.len() - tail.len();
    format!("{head}{}{tail}", &fill[..room])
}

struct Bench {
    fake: FakeHost,
    worker: Worker,
    body: String,
    /// Request number: each request's contexts get fresh ids, as in Envoy.
    n: u32,
}

/// Allocations of one request, by callback.
#[derive(Debug, Default)]
struct Counts(Vec<(&'static str, u64)>);

impl Counts {
    fn total(&self) -> u64 {
        self.0.iter().map(|(_, n)| n).sum()
    }

    fn print(&self, path: &str) {
        let parts: Vec<String> = self.0.iter().map(|(k, n)| format!("{k} {n}")).collect();
        println!("allocations, {path}: {} ({})", self.total(), parts.join(", "));
    }
}

impl Bench {
    fn new() -> Bench {
        TRACE.store(std::env::var_os("KEYGATE_ALLOC_TRACE").is_some(), Ordering::Relaxed);
        let config = Rc::new(Config::parse(br#"{"storeCluster":"store","pollIntervalMs":500}"#).unwrap());
        let mut worker = Worker::new(config, GATEWAY_TOKEN.into());
        // As in envoy/envoy.yaml: the gate and the keygate filter share the VM.
        worker.set_gated();
        worker.set_downstream();
        Bench { fake: FakeHost::new(), worker, body: body(), n: 1 }
    }

    /// One request with access key `token`, as Envoy calls the callbacks;
    /// the store answers a lookup at once.
    fn request(&mut self, token: &str) -> Counts {
        self.n += 1;
        let (gate_id, request_id) = (self.n * 10, self.n * 10 + 1);
        let (fake, w) = (&self.fake, &mut self.worker);
        let host = Envoy(fake);
        let mut counts = Counts::default();
        let auth = format!("Bearer {token}");
        let len = self.body.len().to_string();
        let rid = format!("req-{request_id}");
        let headers = [
            (":method", "POST"),
            (":path", "/v1/chat/completions"),
            (":authority", "127.0.0.1:10000"),
            (":scheme", "http"),
            ("user-agent", "wrk"),
            ("authorization", auth.as_str()),
            ("x-forwarded-proto", "http"),
            ("x-request-id", rid.as_str()),
            ("content-type", "application/json"),
            ("content-length", len.as_str()),
        ];
        fake.set_headers(gate_id, Map::RequestHeaders, &headers);
        fake.join_stream(request_id, gate_id);
        fake.enter(gate_id);

        // The gate: headers, then the body.
        let mut gate = GateState::new(gate_id, 1 << 20);
        let (flow, n) = count(|| {
            w.enter(gate_id);
            w.gate_headers(&host, &mut gate, false)
        });
        assert_eq!(flow, Flow::Continue);
        counts.0.push(("gate_headers", n));
        let lookup = fake.calls.borrow_mut().pop();
        if let Some(call) = lookup {
            // A lookup: answered while the body uploads.
            fake.enter(call.context);
            fake.answer(Some(200), ANSWER);
            let ((), n) = count(|| {
                w.enter(call.context);
                w.on_callout(&host, call.token, ANSWER.len());
            });
            counts.0.push(("lookup answer", n));
        }
        fake.enter(gate_id);
        fake.set_buffer_of(gate_id, Buffer::RequestBody, self.body.as_bytes());
        let (flow, n) = count(|| {
            w.enter(gate_id);
            w.gate_body(&host, &mut gate, self.body.len(), true)
        });
        assert_eq!(flow, Flow::Continue);
        counts.0.push(("gate_body", n));

        // The keygate filter (after the buffer filter): headers, body.
        let named = fake.headers_of(gate_id, Map::RequestHeaders);
        let named: Vec<(&str, &str)> = named.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
        fake.set_headers(request_id, Map::RequestHeaders, &named);
        fake.set_buffer_of(request_id, Buffer::RequestBody, self.body.as_bytes());
        fake.enter(request_id);
        let (flow, n) = count(|| {
            w.enter(request_id);
            w.request_created(request_id);
            w.request_headers(&host, request_id, false)
        });
        assert_eq!(flow, Flow::Continue, "a cached key is forwarded at once");
        counts.0.push(("request_headers", n));
        let (_, n) = count(|| {
            w.enter(request_id);
            w.request_body(&host, request_id, self.body.len(), true)
        });
        counts.0.push(("request_body", n));

        // The provider's answer, then the end.
        let length = RESPONSE.len().to_string();
        let response = [(":status", "200"), ("content-type", "application/json"), ("content-length", length.as_str())];
        fake.set_headers(request_id, Map::ResponseHeaders, &response);
        fake.set_buffer_of(request_id, Buffer::ResponseBody, RESPONSE.as_bytes());
        let (_, n) = count(|| {
            w.enter(request_id);
            w.response_headers(&host, request_id)
        });
        counts.0.push(("response_headers", n));
        let (_, n) = count(|| {
            w.enter(request_id);
            w.response_body(&host, request_id, RESPONSE.len(), true)
        });
        counts.0.push(("response_body", n));
        let ((), n) = count(|| {
            w.enter(request_id);
            w.request_done(&host, request_id);
            w.enter(gate_id);
            w.gate_done(&mut gate);
        });
        counts.0.push(("done", n));
        assert!(fake.replies.borrow().is_empty(), "refused: {:?}", fake.replies.borrow());
        counts
    }

    /// The root's tick: the usage batch goes out, and the store takes it.
    fn tick(&mut self, advance_ms: u64) -> u64 {
        self.fake.advance(advance_ms);
        let (fake, w) = (&self.fake, &mut self.worker);
        let host = Envoy(fake);
        fake.enter(ROOT);
        let ((), mut n) = count(|| w.tick(&host, ROOT));
        let calls: Vec<_> = fake.calls.borrow_mut().drain(..).collect();
        for call in calls {
            fake.enter(call.context);
            fake.answer(Some(200), r#"{"version":1,"digests":[]}"#);
            let ((), more) = count(|| {
                w.enter_root(call.context);
                w.on_callout(&host, call.token, 26);
            });
            n += more;
        }
        n
    }
}

fn key(n: u8) -> String {
    token::from_random(&[n; token::RANDOM_BYTES])
}

/// Most allocations a hit may make (1 KiB chat completion, one provider
/// key, a JSON answer with usage), a miss, and a tick that sends 100
/// hits' usage records.
const HIT_BOUND: u64 = 47;
const TICK_BOUND: u64 = 33;
const MISS_BOUND: u64 = 76;

#[test]
fn allocations_of_a_hit() {
    let mut b = Bench::new();
    let k = key(7);
    // Warm: the key cached, the worker's maps and queues at their size.
    for _ in 0..8 {
        b.request(&k);
    }
    b.tick(1_000);
    let hit = b.request(&k);
    hit.print("hit");
    // The same again: a hit in the steady state allocates the same.
    assert_eq!(b.request(&k).total(), hit.total());
    assert!(hit.total() <= HIT_BOUND, "a hit makes {} allocations", hit.total());

    // The usage records of 100 hits go out on one tick (the second such
    // tick: the steady state).
    let mut tick = 0;
    for _ in 0..2 {
        b.tick(1_000);
        for _ in 0..100 {
            b.request(&k);
        }
        tick = b.tick(1_000);
    }
    println!("allocations, tick with 100 usage records: {tick}");
    assert!(tick <= TICK_BOUND, "the tick makes {tick} allocations");
}

#[test]
fn allocations_of_a_miss() {
    let mut b = Bench::new();
    // Warm, with other keys.
    for n in 0..8 {
        b.request(&key(100 + n));
    }
    b.tick(1_000);
    let miss = b.request(&key(9));
    miss.print("miss");
    assert!(miss.total() <= MISS_BOUND, "a miss makes {} allocations", miss.total());
}
