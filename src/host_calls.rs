//! Host calls counted by kind: a [`Host`] that passes every call on and
//! counts it. Each call crosses the wasm boundary and costs about as much as
//! a native Envoy filter's whole header pass, so the count per request is
//! the first thing to know about a path's cost.
//!
//! Native tests wrap `FakeHost` in it to pin each path's count
//! (`worker::tests::host_calls`); the bench build (feature `host-call-stats`)
//! wraps the ABI and logs the totals (`make bench` reads them).

use std::sync::atomic::{AtomicU64, Ordering};

use crate::host::{Buffer, Call, HeaderMap, Host, HostError, Map, MetricKind, SharedError};

/// One kind of host call (one ABI function, or one use of it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Time,
    HeaderPairs,
    HeaderGet,
    HeaderSet,
    HeaderRemove,
    HeaderPairsSet,
    BufferGet,
    BufferSet,
    PropertyGet,
    PropertySet,
    SharedGet,
    SharedSet,
    HttpCall,
    LocalReply,
    EffectiveContext,
    Resume,
    Reset,
    MetricDefine,
    MetricIncrement,
}

impl Kind {
    pub const ALL: [Kind; 19] = [
        Kind::Time,
        Kind::HeaderPairs,
        Kind::HeaderGet,
        Kind::HeaderSet,
        Kind::HeaderRemove,
        Kind::HeaderPairsSet,
        Kind::BufferGet,
        Kind::BufferSet,
        Kind::PropertyGet,
        Kind::PropertySet,
        Kind::SharedGet,
        Kind::SharedSet,
        Kind::HttpCall,
        Kind::LocalReply,
        Kind::EffectiveContext,
        Kind::Resume,
        Kind::Reset,
        Kind::MetricDefine,
        Kind::MetricIncrement,
    ];

    /// The ABI function behind it.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Time => "get_current_time",
            Kind::HeaderPairs => "get_header_map_pairs",
            Kind::HeaderGet => "get_header_map_value",
            Kind::HeaderSet => "replace_header_map_value",
            Kind::HeaderRemove => "remove_header_map_value",
            Kind::HeaderPairsSet => "set_header_map_pairs",
            Kind::BufferGet => "get_buffer_bytes",
            Kind::BufferSet => "set_buffer_bytes",
            Kind::PropertyGet => "get_property",
            Kind::PropertySet => "set_property",
            Kind::SharedGet => "get_shared_data",
            Kind::SharedSet => "set_shared_data",
            Kind::HttpCall => "http_call",
            Kind::LocalReply => "send_local_response",
            Kind::EffectiveContext => "set_effective_context",
            Kind::Resume => "continue_stream",
            Kind::Reset => "close_stream",
            Kind::MetricDefine => "define_metric",
            Kind::MetricIncrement => "increment_metric",
        }
    }
}

/// Counts per [`Kind`] (atomics so that the wasm build can keep one in a
/// `static`; wasm32 without threads compiles them to plain loads and stores).
pub struct Counting<H> {
    inner: H,
    counts: [AtomicU64; Kind::ALL.len()],
}

impl<H> Counting<H> {
    pub const fn new(inner: H) -> Counting<H> {
        #[allow(clippy::declare_interior_mutable_const)]
        const ZERO: AtomicU64 = AtomicU64::new(0);
        Counting { inner, counts: [ZERO; Kind::ALL.len()] }
    }

    pub fn inner(&self) -> &H {
        &self.inner
    }

    fn count(&self, kind: Kind) {
        if let Some(c) = self.counts.get(kind as usize) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn get(&self, kind: Kind) -> u64 {
        self.counts.get(kind as usize).map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// The calls since the last `take`, by kind (kinds not called left out),
    /// and zeroes the counts.
    pub fn take(&self) -> Vec<(Kind, u64)> {
        Kind::ALL
            .iter()
            .filter_map(|&k| {
                let n = self.counts.get(k as usize)?.swap(0, Ordering::Relaxed);
                (n > 0).then_some((k, n))
            })
            .collect()
    }

    pub fn total(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }
}

impl<H: Host> Host for Counting<H> {
    fn now_ms(&self) -> u64 {
        self.count(Kind::Time);
        self.inner.now_ms()
    }

    fn headers(&self, map: Map) -> HeaderMap {
        self.count(Kind::HeaderPairs);
        self.inner.headers(map)
    }

    fn header(&self, map: Map, name: &str) -> Option<Vec<u8>> {
        self.count(Kind::HeaderGet);
        self.inner.header(map, name)
    }

    fn set_header(&self, map: Map, name: &str, value: Option<&[u8]>) -> Result<(), HostError> {
        self.count(if value.is_some() { Kind::HeaderSet } else { Kind::HeaderRemove });
        self.inner.set_header(map, name, value)
    }

    fn set_headers(&self, map: Map, serialized: &[u8]) -> Result<(), HostError> {
        self.count(Kind::HeaderPairsSet);
        self.inner.set_headers(map, serialized)
    }

    fn buffer(&self, buffer: Buffer, start: usize, max_size: usize) -> Result<Vec<u8>, HostError> {
        self.count(Kind::BufferGet);
        self.inner.buffer(buffer, start, max_size)
    }

    fn set_buffer(&self, buffer: Buffer, start: usize, size: usize, value: &[u8]) -> Result<(), HostError> {
        self.count(Kind::BufferSet);
        self.inner.set_buffer(buffer, start, size, value)
    }

    fn property(&self, path: &[&str]) -> Option<Vec<u8>> {
        self.count(Kind::PropertyGet);
        self.inner.property(path)
    }

    fn set_property(&self, path: &[&str], value: &[u8]) -> Result<(), HostError> {
        self.count(Kind::PropertySet);
        self.inner.set_property(path, value)
    }

    fn shared_data(&self, key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), HostError> {
        self.count(Kind::SharedGet);
        self.inner.shared_data(key)
    }

    fn set_shared_data(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), SharedError> {
        self.count(Kind::SharedSet);
        self.inner.set_shared_data(key, value, cas)
    }

    fn http_call(&self, call: &Call<'_>) -> Result<u32, HostError> {
        self.count(Kind::HttpCall);
        self.inner.http_call(call)
    }

    fn send_response(&self, status: u16, headers: &[(&str, &[u8])], body: &[u8]) -> Result<(), HostError> {
        self.count(Kind::LocalReply);
        self.inner.send_response(status, headers, body)
    }

    fn set_effective_context(&self, context_id: u32) -> Result<(), HostError> {
        self.count(Kind::EffectiveContext);
        self.inner.set_effective_context(context_id)
    }

    fn resume_request(&self) -> Result<(), HostError> {
        self.count(Kind::Resume);
        self.inner.resume_request()
    }

    fn reset_answer(&self) -> Result<(), HostError> {
        self.count(Kind::Reset);
        self.inner.reset_answer()
    }

    fn define_metric(&self, kind: MetricKind, name: &str) -> Result<u32, HostError> {
        self.count(Kind::MetricDefine);
        self.inner.define_metric(kind, name)
    }

    fn increment_metric(&self, id: u32, delta: i64) -> Result<(), HostError> {
        self.count(Kind::MetricIncrement);
        self.inner.increment_metric(id, delta)
    }
}
