//! The benchmark's floors, one proxy-wasm module.
//!
//! **Do nothing** (any `root_id` but the two below): every request gets an
//! HTTP context that returns `Continue` from every callback and makes no
//! host call. What Envoy still pays for it is the proxy-wasm machinery
//! itself: the filter instances, the VM calls per request phase and body
//! chunk, the context creation and teardown.
//!
//! **Do keygate's I/O and nothing else** (`root_id` `floor_io_gate` in the
//! gate's place, `floor_io` in the keygate filter's): the host calls a hit
//! makes (`src/worker/host_call_counts.rs`), with no decision between them:
//! - the gate: the clock and the request's header map, then every body chunk;
//! - the keygate filter: the clock, the request's header map, the map
//!   written back in one call with the credential swapped and a routing
//!   header added; the clock, the answer's header map, written back in one
//!   call with the five headers a hit adds (the request id as
//!   `x-floor-io-request-id`); every chunk of the answer's body.
//!
//! What keygate costs above this floor is its own code.
//!
//! **Do the least I/O of this design** (`floor_io_min_gate`, `floor_io_min`):
//! what no filter of keygate's shape can do without to judge a request by
//! its body, swap its key and count its usage: the gate reads the body's
//! chunks; the keygate filter reads one header (`authorization`) and
//! replaces it, one call each, and reads the answer's body. (keygate reads
//! the whole header map instead, to screen every header and route by key;
//! reads it in the gate too, to refuse early and start a lookup while the
//! body uploads; reads and writes the answer's headers, for its status,
//! failover and scrubbing; and reads the clock.)
//!
//! Header maps
//! are read and written through the raw ABI (the SDK would build a `String`
//! per header, which keygate does not).

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType};

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root { role: Role::Nothing }) });
}}

#[derive(Clone, Copy)]
enum Role {
    Nothing,
    Gate { least: bool },
    Filter { least: bool },
}

struct Root {
    role: Role,
}

impl Context for Root {}

impl RootContext for Root {
    // Accepts any configuration without reading it. The role comes from the
    // plugin's root_id: one host call when the plugin is configured, none
    // per request.
    fn on_configure(&mut self, _size: usize) -> bool {
        self.role = match self.get_property(vec!["plugin_root_id"]).as_deref() {
            Some(b"floor_io_gate") => Role::Gate { least: false },
            Some(b"floor_io") => Role::Filter { least: false },
            Some(b"floor_io_min_gate") => Role::Gate { least: true },
            Some(b"floor_io_min") => Role::Filter { least: true },
            _ => Role::Nothing,
        };
        true
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        match self.role {
            Role::Nothing => Some(Box::new(Nothing)),
            Role::Gate { least } => Some(Box::new(Gate { least })),
            Role::Filter { least } => Some(Box::new(Filter { least, request_id: Vec::new() })),
        }
    }
}

/// Every callback is the SDK's default: `Continue`, no host call.
struct Nothing;

impl Context for Nothing {}

impl HttpContext for Nothing {}

/// The gate's I/O on a hit (`least`: the body only).
struct Gate {
    least: bool,
}

impl Context for Gate {}

impl HttpContext for Gate {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        if self.least {
            return Action::Continue;
        }
        let _ = hostcalls::get_current_time();
        drop(map::read(map::REQUEST_HEADERS));
        Action::Continue
    }

    fn on_http_request_body(&mut self, body_size: usize, _: bool) -> Action {
        if body_size > 0 {
            drop(hostcalls::get_buffer(BufferType::HttpRequestBody, 0, body_size));
        }
        Action::Continue
    }
}

/// What the keygate filter puts in place of the client's key.
const CREDENTIAL: &str = "Bearer sk-floor-0123456789abcdefghijklmnopqrstuvwxyz0123456789";

/// The keygate filter's I/O on a hit (`least`: one header read and
/// replaced, no clock, the answer's headers left alone).
struct Filter {
    least: bool,
    request_id: Vec<u8>,
}

impl Context for Filter {}

impl HttpContext for Filter {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        if self.least {
            if self.get_http_request_header("authorization").is_some() {
                self.set_http_request_header("authorization", Some(CREDENTIAL));
            }
            return Action::Continue;
        }
        let _ = hostcalls::get_current_time();
        let Some(raw) = map::read(map::REQUEST_HEADERS) else { return Action::Continue };
        let mut out = map::Writer::default();
        for (name, value) in map::pairs(&raw) {
            match name {
                b"authorization" => out.push(name, CREDENTIAL.as_bytes()),
                b"x-request-id" => {
                    self.request_id = value.to_vec();
                    out.push(name, value);
                }
                _ => out.push(name, value),
            }
        }
        out.push(b"x-keygate-cluster", b"keygate_direct_http");
        map::write(map::REQUEST_HEADERS, &out.finish());
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
        if self.least {
            return Action::Continue;
        }
        let _ = hostcalls::get_current_time();
        // Read whole (keygate scrubs every header) and written back whole
        // with the headers a hit adds (`answer_headers` in
        // src/worker/request.rs; more than one change is one map write).
        let Some(raw) = map::read(map::RESPONSE_HEADERS) else { return Action::Continue };
        let mut out = map::Writer::default();
        for (name, value) in map::pairs(&raw) {
            out.push(name, value);
        }
        out.push(b"x-floor-io-request-id", &self.request_id);
        out.push(b"x-keygate-attempts", b"1");
        out.push(b"x-keygate-provider-key", b"pk_a");
        out.push(b"x-keygate-provider", b"openai");
        out.push(b"x-keygate-model", b"gpt-4o-mini");
        map::write(map::RESPONSE_HEADERS, &out.finish());
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, _: bool) -> Action {
        if body_size > 0 {
            drop(hostcalls::get_buffer(BufferType::HttpResponseBody, 0, body_size));
        }
        Action::Continue
    }
}

/// Header maps through the raw ABI, in its serialized form: a pair count,
/// each pair's two lengths, then each name and value followed by a NUL
/// (all counts little-endian u32).
mod map {
    pub const REQUEST_HEADERS: u32 = 0;
    pub const RESPONSE_HEADERS: u32 = 2;

    #[link(wasm_import_module = "env")]
    extern "C" {
        fn proxy_get_header_map_pairs(map: u32, data: *mut *mut u8, size: *mut usize) -> u32;
        fn proxy_set_header_map_pairs(map: u32, data: *const u8, size: usize) -> u32;
    }

    /// The map as the host serialized it (into memory it allocated through
    /// the SDK's `proxy_on_memory_allocate`, a boxed slice).
    pub fn read(map: u32) -> Option<Box<[u8]>> {
        let mut data = std::ptr::null_mut();
        let mut size = 0;
        // SAFETY: the host writes a pointer to `size` bytes it allocated
        // with `proxy_on_memory_allocate` (a `Box<[u8]>` of that length),
        // which this takes ownership of.
        unsafe {
            if proxy_get_header_map_pairs(map, &mut data, &mut size) != 0 || data.is_null() {
                return None;
            }
            Some(Box::from_raw(std::ptr::slice_from_raw_parts_mut(data, size)))
        }
    }

    pub fn write(map: u32, serialized: &[u8]) {
        // SAFETY: the host only reads `serialized` during the call.
        unsafe {
            proxy_set_header_map_pairs(map, serialized.as_ptr(), serialized.len());
        }
    }

    fn u32_at(raw: &[u8], at: usize) -> usize {
        raw.get(at..at + 4).map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    }

    /// The pairs of a serialized map (none past a malformed one).
    pub fn pairs(raw: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
        let n = u32_at(raw, 0);
        let mut at = 4 + 8 * n;
        (0..n).map_while(move |i| {
            let (k, v) = (u32_at(raw, 4 + 8 * i), u32_at(raw, 8 + 8 * i));
            let name = raw.get(at..at + k)?;
            let value = raw.get(at + k + 1..at + k + 1 + v)?;
            at += k + v + 2;
            Some((name, value))
        })
    }

    /// A map serialized for `write`: the lengths and the data apart, joined
    /// at the end.
    #[derive(Default)]
    pub struct Writer {
        lengths: Vec<u8>,
        data: Vec<u8>,
        n: u32,
    }

    impl Writer {
        pub fn push(&mut self, name: &[u8], value: &[u8]) {
            self.n += 1;
            self.lengths.extend_from_slice(&(name.len() as u32).to_le_bytes());
            self.lengths.extend_from_slice(&(value.len() as u32).to_le_bytes());
            for part in [name, value] {
                self.data.extend_from_slice(part);
                self.data.push(0);
            }
        }

        pub fn finish(self) -> Vec<u8> {
            let mut out = Vec::with_capacity(4 + self.lengths.len() + self.data.len());
            out.extend_from_slice(&self.n.to_le_bytes());
            out.extend_from_slice(&self.lengths);
            out.extend_from_slice(&self.data);
            out
        }
    }
}
