//! What the filter asks of Envoy, behind one trait.
//!
//! The logic (`worker`) is written against [`Host`]; `filter::abi` implements
//! it over the proxy-wasm ABI, and `fake_host::FakeHost` records every call
//! for native tests. The host's status comes back as a `Result`, and the
//! caller decides. (`filter::abi` calls the ABI itself; the Rust SDK's
//! wrappers panic on statuses and bytes they do not expect.)

pub use crate::wire::HeaderMap;

/// A header map of the request whose callback runs (or of a callout's answer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Map {
    RequestHeaders,
    ResponseHeaders,
    ResponseTrailers,
    /// The headers of the callout answer being handled.
    CalloutHeaders,
}

/// A byte buffer the host holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Buffer {
    RequestBody,
    ResponseBody,
    /// The body of the callout answer being handled.
    CalloutBody,
    PluginConfiguration,
}

/// The host's status when it was not OK (`NotFound` = 1, `BadArgument` = 2, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostError(pub u32);

/// Why a shared-data write did not happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SharedError {
    /// Another worker wrote since it was read: read again and retry.
    CasMismatch,
    Failed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    Counter,
    Gauge,
}

/// An HTTP callout (to the key store). No `Debug`: it carries the gateway's
/// credential.
#[derive(Clone)]
pub struct Call<'a> {
    pub cluster: &'a str,
    pub headers: Vec<(&'a str, &'a str)>,
    pub body: Option<&'a [u8]>,
    pub timeout_ms: u64,
}

pub trait Host {
    /// Wall-clock milliseconds since the Unix epoch (0 if unavailable).
    fn now_ms(&self) -> u64;

    /// Every header of `map`, values as bytes (a value need not be UTF-8).
    fn headers(&self, map: Map) -> HeaderMap;
    /// One header's value (the first, if repeated).
    fn header(&self, map: Map, name: &str) -> Option<Vec<u8>>;
    /// Sets (replaces) a header, or removes it with `None`.
    fn set_header(&self, map: Map, name: &str, value: Option<&[u8]>) -> Result<(), HostError>;
    /// Replaces the whole map with `serialized` (a map as
    /// `wire::serialize_pairs` writes it), in one call (Envoy removes every
    /// header, then adds these in order). See `header_edits`, which
    /// serializes into a buffer it reuses.
    fn set_headers(&self, map: Map, serialized: &[u8]) -> Result<(), HostError>;

    fn buffer(&self, buffer: Buffer, start: usize, max_size: usize) -> Result<Vec<u8>, HostError>;
    fn set_buffer(&self, buffer: Buffer, start: usize, size: usize, value: &[u8]) -> Result<(), HostError>;

    /// A property (`metadata`, `filter_state`, ...), if present.
    fn property(&self, path: &[&str]) -> Option<Vec<u8>>;
    fn set_property(&self, path: &[&str], value: &[u8]) -> Result<(), HostError>;

    /// A process-wide shared-data entry and its compare-and-swap token.
    fn shared_data(&self, key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), HostError>;
    /// Writes an entry; with `cas`, only if nobody wrote since that read.
    fn set_shared_data(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), SharedError>;

    /// Starts a callout; its answer comes to `on_http_call_response` with
    /// the returned token.
    fn http_call(&self, call: &Call<'_>) -> Result<u32, HostError>;
    /// A local reply to the effective context's request.
    fn send_response(&self, status: u16, headers: &[(&str, &[u8])], body: &[u8]) -> Result<(), HostError>;
    /// Makes another context's request the one later calls act on.
    fn set_effective_context(&self, context_id: u32) -> Result<(), HostError>;
    /// Resumes the effective context's paused request.
    fn resume_request(&self) -> Result<(), HostError>;
    /// Resets the effective context's stream from its answer's side
    /// (`proxy_close_stream`): the client gets nothing more of the answer,
    /// and sees it end in a reset rather than whole. For an answer keygate
    /// can no longer pass on as it promised (scrubbed, filtered, replaced).
    fn reset_answer(&self) -> Result<(), HostError>;

    fn define_metric(&self, kind: MetricKind, name: &str) -> Result<u32, HostError>;
    fn increment_metric(&self, id: u32, delta: i64) -> Result<(), HostError>;

    /// One header's value as text (`None` if absent or not UTF-8).
    fn header_str(&self, map: Map, name: &str) -> Option<String> {
        self.header(map, name).and_then(|v| String::from_utf8(v).ok())
    }
}
