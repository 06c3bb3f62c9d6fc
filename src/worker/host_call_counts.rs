//! Host calls per request, by path, counted on the recording host with the
//! callbacks Envoy makes for one request through `envoy/envoy.yaml` (the
//! gate, the keygate filter, one upstream attempt, the response).
//!
//! Each host call costs about a microsecond of Envoy CPU. These tests pin
//! each path's count: a change that adds calls to a path fails here and has
//! to raise the bound on purpose. `cargo test host_calls -- --nocapture`
//! prints the breakdown (the README's table comes from it). The benchmark's
//! `floor-io` (`bench/floor`) makes a hit's calls, kind by kind, with no
//! code between them: a change to the hit's calls has to be made there too.

use std::rc::Rc;

use keygate_proto::token;

use super::*;
use crate::fake_host::FakeHost;
use crate::handover::SealKey;
use crate::host::{Buffer, Map};
use crate::host_calls::{Counting, Kind};

type Host = Counting<FakeHost>;

const GATEWAY_TOKEN: &str = "gw-token";

fn worker() -> Worker {
    let json = br#"{"storeCluster":"store","pollIntervalMs":500}"#;
    let mut w = Worker::new(Rc::new(Config::parse(json).unwrap()), GATEWAY_TOKEN.into());
    // As in envoy/envoy.yaml: the gate and the keygate filter share the VM.
    w.set_gated();
    w.set_downstream();
    w
}

fn answer(keys: &[&str]) -> String {
    let creds: Vec<String> = keys.iter().map(|k| format!(r#"{{"id":"{k}","value":"sk-secret-{k}"}}"#)).collect();
    format!(
        r#"{{"schema":1,"version":1,"status":"active","key":{{"id":"ak_1"}},
        "providers":[{{"id":"openai","format":"openai","auth":"bearer","baseUrl":"https://api.openai.com/v1",
        "models":["gpt-*"],"routes":[{{"keys":[{}]}}]}}]}}"#,
        creds.join(",")
    )
}

/// The bench's request: a 1 KiB chat completion.
fn body() -> String {
    let head = r#"{"model":"gpt-4o-mini","max_tokens":64,"temperature":0.2,"messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":""#;
    let tail = r#""}]}"#;
    let fill = "benchmark the gateway with a realistic prompt ".repeat(40);
    let room = 1024 - head.len() - tail.len();
    format!("{head}{}{tail}", &fill[..room])
}

const RESPONSE: &str = r#"{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":9,"completion_tokens":1,"total_tokens":10}}"#;

/// Ids of one request's contexts: its gate, its keygate filter, its attempt.
struct Ids {
    gate: u32,
    request: u32,
    attempt: u32,
}

fn ids(n: u32) -> Ids {
    Ids { gate: n * 10, request: n * 10 + 1, attempt: n * 10 + 2 }
}

/// Through the gate and the keygate filter's headers phase, as Envoy calls
/// them (the buffer filter holds the headers until the body has passed).
fn admit(host: &Host, w: &mut Worker, at: &Ids, token: &str, method: &str, path: &str, body: &str) -> Flow {
    let fake = host.inner();
    let mut state = GateState::new(at.gate, 1 << 20);
    // Envoy's callbacks, each through the glue (`filter::on`), which
    // enters the worker.
    fake.enter(at.gate);
    w.enter(at.gate);
    let auth = format!("Bearer {token}");
    let len = body.len().to_string();
    let rid = format!("req-{}", at.request);
    let mut headers = vec![
        (":method", method),
        (":path", path),
        (":authority", "127.0.0.1:10000"),
        (":scheme", "http"),
        ("user-agent", "wrk"),
        ("authorization", auth.as_str()),
        ("x-forwarded-proto", "http"),
        ("x-request-id", rid.as_str()),
    ];
    if !body.is_empty() {
        headers.push(("content-type", "application/json"));
        headers.push(("content-length", len.as_str()));
    }
    fake.set_headers(at.gate, Map::RequestHeaders, &headers);
    fake.join_stream(at.request, at.gate);
    fake.join_stream(at.attempt, at.gate);
    if w.gate_headers(host, &mut state, body.is_empty()) == Flow::Pause && !fake.replies_to(at.gate).is_empty() {
        return Flow::Pause;
    }
    if !body.is_empty() {
        fake.set_buffer_of(at.gate, Buffer::RequestBody, body.as_bytes());
        w.enter(at.gate);
        w.gate_body(host, &mut state, body.len(), true);
        if !fake.replies_to(at.gate).is_empty() {
            return Flow::Pause;
        }
    }
    let named = fake.headers_of(at.gate, Map::RequestHeaders);
    let named: Vec<(&str, &str)> = named.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
    fake.set_headers(at.request, Map::RequestHeaders, &named);
    fake.enter(at.request);
    w.request_created(at.request);
    w.request_headers(host, at.request, body.is_empty())
}

/// The rest of a forwarded request: one upstream attempt, a 200 with usage,
/// done.
fn serve(host: &Host, w: &mut Worker, at: &Ids, body: &str) {
    let fake = host.inner();
    fake.enter(at.attempt);
    let sent_headers = fake.headers_of(at.request, Map::RequestHeaders);
    let sent_headers: Vec<(&str, &str)> = sent_headers.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
    fake.set_headers(at.attempt, Map::RequestHeaders, &sent_headers);
    let len = RESPONSE.len().to_string();
    let response = [(":status", "200"), ("content-type", "application/json"), ("content-length", len.as_str())];
    // A request with one credential goes to a direct cluster, which has no
    // upstream filter; with a plan, the cluster's upstream filter runs.
    if fake.property_of(at.attempt, &crate::handover::PLAN_STATE).is_some() {
        let upstream = Config::parse(br#"{"role":"upstream"}"#).unwrap();
        let sent = crate::attempt::attempt_headers(host, &SealKey::derive(GATEWAY_TOKEN), &upstream)
            .expect("the attempt goes out");
        if !body.is_empty() {
            fake.set_buffer_of(at.attempt, Buffer::RequestBody, body.as_bytes());
            assert!(crate::attempt::attempt_body(host, &sent, body.len(), true));
        }
        fake.set_headers(at.attempt, Map::ResponseHeaders, &response);
        crate::attempt::attempt_response(host, sent);
    }
    fake.enter(at.request);
    fake.set_headers(at.request, Map::ResponseHeaders, &response);
    w.enter(at.request);
    w.response_headers(host, at.request);
    fake.set_buffer_of(at.request, Buffer::ResponseBody, RESPONSE.as_bytes());
    w.enter(at.request);
    w.response_body(host, at.request, RESPONSE.len(), true);
    w.enter(at.request);
    w.request_done(host, at.request);
}

/// A key the worker has cached, and the calls of caching it.
fn cached_key(host: &Host, w: &mut Worker, keys: &[&str]) -> String {
    let k = token::from_random(&[7; token::RANDOM_BYTES]);
    let at = ids(1);
    assert_eq!(admit(host, w, &at, &k, "POST", "/v1/chat/completions", &body()), Flow::Pause);
    let call = host.inner().last_call().unwrap();
    let fake = host.inner();
    fake.enter(call.context);
    let doc = answer(keys);
    fake.answer(Some(200), &doc);
    w.enter(call.context);
    w.on_callout(host, call.token, doc.len());
    serve(host, w, &at, &body());
    host.take();
    k
}

fn report(path: &str, counts: &[(Kind, u64)]) -> u64 {
    let total: u64 = counts.iter().map(|(_, n)| n).sum();
    let parts: Vec<String> = counts.iter().map(|(k, n)| format!("{} {n}", k.name())).collect();
    println!("host calls, {path}: {total} ({})", parts.join(", "));
    total
}

#[test]
fn host_calls_of_a_cached_key() {
    let (host, mut w) = (Counting::new(FakeHost::new()), worker());
    let k = cached_key(&host, &mut w, &["pk_a"]);
    let at = ids(2);
    assert_eq!(admit(&host, &mut w, &at, &k, "POST", "/v1/chat/completions", &body()), Flow::Continue);
    serve(&host, &mut w, &at, &body());
    let total = report("hit", &host.take());
    assert!(total <= 10, "a hit makes {total} host calls");
}

#[test]
fn host_calls_of_a_cached_key_with_two_provider_keys() {
    let (host, mut w) = (Counting::new(FakeHost::new()), worker());
    let k = cached_key(&host, &mut w, &["pk_a", "pk_b"]);
    let at = ids(2);
    assert_eq!(admit(&host, &mut w, &at, &k, "POST", "/v1/chat/completions", &body()), Flow::Continue);
    serve(&host, &mut w, &at, &body());
    let total = report("hit, two provider keys", &host.take());
    assert!(total <= 21, "{total}");
}

#[test]
fn host_calls_of_a_cached_key_without_a_body() {
    let (host, mut w) = (Counting::new(FakeHost::new()), worker());
    let k = cached_key(&host, &mut w, &["pk_a"]);
    let at = ids(2);
    assert_eq!(admit(&host, &mut w, &at, &k, "GET", "/v1/models", ""), Flow::Continue);
    serve(&host, &mut w, &at, "");
    let total = report("hit, GET /v1/models", &host.take());
    assert!(total <= 9, "{total}");
}

#[test]
fn host_calls_of_a_new_key() {
    let (host, mut w) = (Counting::new(FakeHost::new()), worker());
    let k = token::from_random(&[9; token::RANDOM_BYTES]);
    let at = ids(2);
    assert_eq!(admit(&host, &mut w, &at, &k, "POST", "/v1/chat/completions", &body()), Flow::Pause);
    let call = host.inner().last_call().unwrap();
    let fake = host.inner();
    fake.enter(call.context);
    let doc = answer(&["pk_a"]);
    fake.answer(Some(200), &doc);
    w.enter(call.context);
    w.on_callout(&host, call.token, doc.len());
    serve(&host, &mut w, &at, &body());
    let total = report("miss", &host.take());
    assert!(total <= 17, "{total}");
}

#[test]
fn host_calls_of_refusals() {
    let (host, mut w) = (Counting::new(FakeHost::new()), worker());
    let at = ids(2);
    assert_eq!(admit(&host, &mut w, &at, "kg-nope", "POST", "/v1/chat/completions", &body()), Flow::Pause);
    assert_eq!(host.inner().replies_to(at.gate).len(), 1);
    let malformed = report("refusal, malformed key", &host.take());
    assert!(malformed <= 2, "{malformed}");

    // An unknown key, once its refusal is cached.
    let unknown = token::from_random(&[3; token::RANDOM_BYTES]);
    admit(&host, &mut w, &ids(3), &unknown, "POST", "/v1/chat/completions", &body());
    let call = host.inner().last_call().unwrap();
    let fake = host.inner();
    fake.enter(call.context);
    let doc = r#"{"schema":1,"version":1,"status":"unknown"}"#;
    fake.answer(Some(200), doc);
    w.enter(call.context);
    w.on_callout(&host, call.token, doc.len());
    host.take();
    let at = ids(4);
    assert_eq!(admit(&host, &mut w, &at, &unknown, "POST", "/v1/chat/completions", &body()), Flow::Pause);
    let replies = [host.inner().replies_to(at.gate), host.inner().replies_to(at.request)].concat();
    assert_eq!(replies.len(), 1, "refused once");
    let total = report("refusal, unknown key (cached)", &host.take());
    assert!(total <= 3, "{total}");
}
