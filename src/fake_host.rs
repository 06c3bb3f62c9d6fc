//! A recording [`Host`] for native tests: it answers from what the test put
//! in, and keeps every callout, local reply, resume and header change so
//! that a test can assert on what the filter asked of Envoy.
//!
//! Contexts are explicit: `enter(id)` is Envoy running a callback of context
//! `id`; request and response headers are kept per context, and a reply or
//! resume is filed under the effective context, as Envoy does.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};

use crate::host::{Buffer, Call, HeaderMap, Host, HostError, Map, MetricKind, SharedError};

/// A callout the filter made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedCall {
    pub token: u32,
    /// The context whose callback made it: the answer goes to it (`filter`).
    pub context: u32,
    /// The effective context then (Envoy files the callout under its root).
    pub effective: u32,
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Option<Vec<u8>>,
}

/// A local reply the filter sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub context: u32,
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    /// The `x-keygate-error` code.
    pub fn code(&self) -> &str {
        self.headers.iter().find(|(n, _)| n == "x-keygate-error").map_or("", |(_, v)| v.as_str())
    }
}

type Headers = Vec<(String, Vec<u8>)>;

#[derive(Default)]
pub struct FakeHost {
    now: Cell<u64>,
    running: Cell<u32>,
    effective: Cell<u32>,
    headers: RefCell<HashMap<(u32, Map), Headers>>,
    buffers: RefCell<HashMap<(u32, Buffer), Vec<u8>>>,
    properties: RefCell<HashMap<(u32, String), Vec<u8>>>,
    /// Contexts of one request (a gate, the keygate filter, upstream
    /// attempts): they share its filter state. A context not listed is a
    /// request of its own.
    streams: RefCell<HashMap<u32, u32>>,
    shared: RefCell<HashMap<String, (Vec<u8>, u32)>>,
    next_token: Cell<u32>,
    /// Callouts fail to dispatch while set (no store cluster, say).
    pub refuse_calls: Cell<bool>,
    /// Contexts that are gone: `set_effective_context` fails for them.
    gone: RefCell<HashSet<u32>>,
    pub calls: RefCell<Vec<RecordedCall>>,
    pub replies: RefCell<Vec<Reply>>,
    /// Contexts resumed, in order.
    pub resumed: RefCell<Vec<u32>>,
    /// Contexts whose answer was reset, in order.
    pub reset: RefCell<Vec<u32>>,
    /// `set_buffer` fails while set (Envoy's cannot, for a buffer it holds:
    /// this drives the paths that must fail closed if it ever did).
    pub refuse_buffer_writes: Cell<bool>,
    metric_ids: RefCell<HashMap<String, u32>>,
    pub metrics: RefCell<HashMap<String, i64>>,
}

impl FakeHost {
    pub fn new() -> FakeHost {
        FakeHost { now: Cell::new(1_700_000_000_000), next_token: Cell::new(100), ..FakeHost::default() }
    }

    pub fn set_now(&self, ms: u64) {
        self.now.set(ms);
    }

    pub fn advance(&self, ms: u64) {
        self.now.set(self.now.get() + ms);
    }

    /// Envoy runs a callback of context `id` (it is effective until the
    /// filter makes another one effective).
    pub fn enter(&self, id: u32) {
        self.running.set(id);
        self.effective.set(id);
    }

    /// Context `id` is destroyed.
    pub fn end(&self, id: u32) {
        self.gone.borrow_mut().insert(id);
    }

    pub fn set_headers(&self, id: u32, map: Map, headers: &[(&str, &str)]) {
        let list = headers.iter().map(|(n, v)| (n.to_string(), v.as_bytes().to_vec())).collect();
        self.headers.borrow_mut().insert((id, map), list);
    }

    /// The headers of `map` of context `id` as the filter left them.
    pub fn headers_of(&self, id: u32, map: Map) -> Vec<(String, String)> {
        self.headers
            .borrow()
            .get(&(id, map))
            .map(|h| h.iter().map(|(n, v)| (n.clone(), String::from_utf8_lossy(v).into_owned())).collect())
            .unwrap_or_default()
    }

    pub fn header_of(&self, id: u32, map: Map, name: &str) -> Option<String> {
        self.headers_of(id, map).into_iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }

    pub fn set_buffer_of(&self, id: u32, buffer: Buffer, bytes: &[u8]) {
        self.buffers.borrow_mut().insert((id, buffer), bytes.to_vec());
    }

    pub fn buffer_of(&self, id: u32, buffer: Buffer) -> Vec<u8> {
        self.buffers.borrow().get(&(id, buffer)).cloned().unwrap_or_default()
    }

    pub fn set_property_of(&self, id: u32, path: &[&str], value: &[u8]) {
        self.properties.borrow_mut().insert((self.owner(id, path), path.join("/")), value.to_vec());
    }

    pub fn property_of(&self, id: u32, path: &[&str]) -> Option<Vec<u8>> {
        self.properties.borrow().get(&(self.owner(id, path), path.join("/"))).cloned()
    }

    /// Context `id` belongs to the request of context `stream`.
    pub fn join_stream(&self, id: u32, stream: u32) {
        self.streams.borrow_mut().insert(id, stream);
    }

    /// Filter state belongs to the request, other properties to the context.
    fn owner(&self, id: u32, path: &[&str]) -> u32 {
        let filter_state = path.first() == Some(&"filter_state");
        if filter_state {
            self.streams.borrow().get(&id).copied().unwrap_or(id)
        } else {
            id
        }
    }

    /// The answer to a callout: what `on_http_call_response` reads next
    /// (no status: a timeout or a connection failure).
    pub fn answer(&self, status: Option<u16>, body: &str) {
        let status = status.map(|s| s.to_string());
        let headers: Vec<(&str, &str)> = status.as_deref().map(|s| vec![(":status", s)]).unwrap_or_default();
        let id = self.effective.get();
        self.set_headers(id, Map::CalloutHeaders, &headers);
        self.set_buffer_of(id, Buffer::CalloutBody, body.as_bytes());
    }

    pub fn shared(&self, key: &str) -> Option<String> {
        self.shared.borrow().get(key).map(|(v, _)| String::from_utf8_lossy(v).into_owned())
    }

    pub fn metric(&self, name: &str) -> i64 {
        self.metrics.borrow().get(name).copied().unwrap_or(0)
    }

    pub fn last_call(&self) -> Option<RecordedCall> {
        self.calls.borrow().last().cloned()
    }

    pub fn replies_to(&self, id: u32) -> Vec<Reply> {
        self.replies.borrow().iter().filter(|r| r.context == id).cloned().collect()
    }
}

impl Host for FakeHost {
    fn now_ms(&self) -> u64 {
        self.now.get()
    }

    fn headers(&self, map: Map) -> HeaderMap {
        HeaderMap::from_pairs(self.headers.borrow().get(&(self.effective.get(), map)).map_or(&[][..], |h| h))
    }

    fn header(&self, map: Map, name: &str) -> Option<Vec<u8>> {
        self.headers(map).get(name).map(<[u8]>::to_vec)
    }

    fn set_header(&self, map: Map, name: &str, value: Option<&[u8]>) -> Result<(), HostError> {
        let mut all = self.headers.borrow_mut();
        let list = all.entry((self.effective.get(), map)).or_default();
        list.retain(|(n, _)| n != name);
        if let Some(v) = value {
            list.push((name.to_string(), v.to_vec()));
        }
        Ok(())
    }

    fn set_headers(&self, map: Map, serialized: &[u8]) -> Result<(), HostError> {
        // As Envoy: a map it cannot read is refused.
        let pairs = crate::wire::parse_pairs(serialized).ok_or(HostError(2))?;
        let list = pairs.iter().map(|(n, v)| (String::from_utf8_lossy(n).into_owned(), v.to_vec())).collect();
        self.headers.borrow_mut().insert((self.effective.get(), map), list);
        Ok(())
    }

    fn buffer(&self, buffer: Buffer, start: usize, max_size: usize) -> Result<Vec<u8>, HostError> {
        let all = self.buffers.borrow();
        let bytes = all.get(&(self.effective.get(), buffer)).ok_or(HostError(1))?;
        let end = start.saturating_add(max_size).min(bytes.len());
        Ok(bytes.get(start.min(end)..end).unwrap_or_default().to_vec())
    }

    fn set_buffer(&self, buffer: Buffer, start: usize, size: usize, value: &[u8]) -> Result<(), HostError> {
        if self.refuse_buffer_writes.get() {
            return Err(HostError(2));
        }
        let mut all = self.buffers.borrow_mut();
        let bytes = all.entry((self.effective.get(), buffer)).or_default();
        let end = start.saturating_add(size).min(bytes.len());
        bytes.splice(start.min(end)..end, value.iter().copied());
        Ok(())
    }

    fn property(&self, path: &[&str]) -> Option<Vec<u8>> {
        self.property_of(self.effective.get(), path)
    }

    /// As Envoy does, a property a filter sets is filter state `wasm.<name>`.
    fn set_property(&self, path: &[&str], value: &[u8]) -> Result<(), HostError> {
        let name = format!("wasm.{}", path.join("."));
        self.set_property_of(self.effective.get(), &["filter_state", &name], value);
        Ok(())
    }

    fn shared_data(&self, key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), HostError> {
        Ok(match self.shared.borrow().get(key) {
            Some((v, cas)) => (Some(v.clone()), Some(*cas)),
            None => (None, None),
        })
    }

    fn set_shared_data(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), SharedError> {
        let mut all = self.shared.borrow_mut();
        let current = all.get(key).map(|(_, c)| *c);
        // As Envoy: the token is checked only against an entry that exists.
        if let (Some(cas), Some(current)) = (cas, current) {
            if cas != current {
                return Err(SharedError::CasMismatch);
            }
        }
        all.insert(key.to_string(), (value.to_vec(), current.unwrap_or(0) + 1));
        Ok(())
    }

    fn http_call(&self, call: &Call<'_>) -> Result<u32, HostError> {
        if self.refuse_calls.get() {
            return Err(HostError(2));
        }
        let token = self.next_token.get();
        self.next_token.set(token + 1);
        let header = |name: &str| call.headers.iter().find(|(n, _)| *n == name).map(|(_, v)| v.to_string());
        self.calls.borrow_mut().push(RecordedCall {
            token,
            context: self.running.get(),
            effective: self.effective.get(),
            method: header(":method").unwrap_or_default(),
            path: header(":path").unwrap_or_default(),
            headers: call.headers.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect(),
            body: call.body.map(<[u8]>::to_vec),
        });
        Ok(token)
    }

    fn send_response(&self, status: u16, headers: &[(&str, &[u8])], body: &[u8]) -> Result<(), HostError> {
        self.replies.borrow_mut().push(Reply {
            context: self.effective.get(),
            status,
            headers: headers.iter().map(|(n, v)| (n.to_string(), String::from_utf8_lossy(v).into_owned())).collect(),
            body: String::from_utf8_lossy(body).into_owned(),
        });
        Ok(())
    }

    fn set_effective_context(&self, context_id: u32) -> Result<(), HostError> {
        if self.gone.borrow().contains(&context_id) {
            return Err(HostError(2));
        }
        self.effective.set(context_id);
        Ok(())
    }

    fn resume_request(&self) -> Result<(), HostError> {
        self.resumed.borrow_mut().push(self.effective.get());
        Ok(())
    }

    fn reset_answer(&self) -> Result<(), HostError> {
        self.reset.borrow_mut().push(self.effective.get());
        Ok(())
    }

    fn define_metric(&self, _kind: MetricKind, name: &str) -> Result<u32, HostError> {
        let mut ids = self.metric_ids.borrow_mut();
        let next = ids.len() as u32 + 1;
        Ok(*ids.entry(name.to_string()).or_insert(next))
    }

    fn increment_metric(&self, id: u32, delta: i64) -> Result<(), HostError> {
        let name = self.metric_ids.borrow().iter().find(|(_, v)| **v == id).map(|(k, _)| k.clone());
        let name = name.ok_or(HostError(1))?;
        *self.metrics.borrow_mut().entry(name).or_default() += delta;
        Ok(())
    }
}
