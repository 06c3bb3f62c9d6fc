//! The benchmark's floors, one proxy-wasm module on the Rust SDK, which
//! picks each plugin's role by its `root_id` (read once, at configure time).
//!
//! **Do nothing** (any other `root_id`): every request gets an HTTP context
//! that returns `Continue` from every callback and makes no host call. What
//! Envoy still pays for it is the proxy-wasm machinery itself: the filter
//! instances, the VM calls per request phase and body chunk, the context
//! creation and teardown. (The SDK exports `proxy_on_log`, which keygate
//! does not: a floor's filter takes one VM call a request that keygate's
//! does not, a bias in keygate's favour.)
//!
//! **Do a hit's I/O and nothing else** (`floor_io_gate` in the gate's
//! place, `floor_io` in the keygate filter's): the host calls a keygate hit
//! makes (`src/worker/host_call_counts.rs`: clock 3, header map read 3,
//! header map written 2, body read 2), in the callbacks keygate makes them,
//! with no decision between them:
//! - the gate: the clock and the request's header map, then every body chunk;
//! - the keygate filter: the clock and the request's header map, written
//!   back in one call with what a direct hit changes (the credential,
//!   `:authority`, `:path`, a routing header, the retry count); the
//!   answer's header map, written back in one call with the five headers a
//!   hit adds (the request id as `x-floor-io-request-id`, which the bench
//!   checks); every chunk of the answer's body; the clock when the request
//!   is done.
//!
//! What keygate costs above this floor is everything but that I/O: its
//! code, its tick's share (usage batches, cache refreshes), and whatever
//! Envoy does differently because of what it writes.
//!
//! **Do one minimal set of I/O** (`floor_io_min_gate`, `floor_io_min`): the
//! gate reads the body's chunks; the keygate filter reads one header
//! (`authorization`) and replaces it, one call each, and reads the answer's
//! body: a filter of this shape judging a request by its body, swapping
//! its key and counting its usage, and nothing more. It reads no clock (no
//! cache lifetimes), no answer status, no other header (no screening, no
//! routing among providers).
//!
//! Header maps are read and written through the raw ABI, as keygate's are
//! (the SDK would build a `String` per header). A failed map call aborts
//! the VM, so that a floor cannot silently skip its I/O.

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
        // No root id read: refused, so that a floor doing I/O cannot pass
        // for one doing nothing.
        let Some(root_id) = self.get_property(vec!["plugin_root_id"]) else { return false };
        self.role = match root_id.as_slice() {
            b"floor_io_gate" => Role::Gate { least: false },
            b"floor_io" => Role::Filter { least: false },
            b"floor_io_min_gate" => Role::Gate { least: true },
            b"floor_io_min" => Role::Filter { least: true },
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

impl Context for Filter {
    fn on_done(&mut self) -> bool {
        if !self.least {
            let _ = hostcalls::get_current_time();
        }
        true
    }
}

impl HttpContext for Filter {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        if self.least {
            if self.get_http_request_header_bytes("authorization").is_some() {
                self.set_http_request_header_bytes("authorization", Some(CREDENTIAL.as_bytes()));
            }
            return Action::Continue;
        }
        let _ = hostcalls::get_current_time();
        let Some(raw) = map::read(map::REQUEST_HEADERS) else { return Action::Continue };
        // Written back whole with what a direct hit changes (`admission`):
        // the credential, `:authority` and `:path` (the same values here:
        // the route's dynamic forward proxy config points at the mock),
        // the routing header and the retry count.
        const ADDED: [(&[u8], &[u8]); 2] =
            [(b"x-keygate-cluster", b"keygate_direct_http"), (b"x-envoy-max-retries", b"0")];
        let mut out = map::Writer::new(map::count(&raw) + ADDED.len(), raw.len() + 128);
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
        for (name, value) in ADDED {
            out.push(name, value);
        }
        map::write(map::REQUEST_HEADERS, &out.finish());
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
        if self.least {
            return Action::Continue;
        }
        // Read whole (keygate scrubs every header) and written back whole
        // with the headers a hit adds (`answer_headers` in
        // src/worker/request.rs; more than one change is one map write).
        // No clock here: keygate's third read is when the request is done.
        let Some(raw) = map::read(map::RESPONSE_HEADERS) else { return Action::Continue };
        let added: [(&[u8], &[u8]); 5] = [
            (b"x-floor-io-request-id", &self.request_id),
            (b"x-keygate-attempts", b"1"),
            (b"x-keygate-provider-key", b"pk_a"),
            (b"x-keygate-provider", b"openai"),
            (b"x-keygate-model", b"gpt-4o-mini"),
        ];
        let mut out = map::Writer::new(map::count(&raw) + added.len(), raw.len() + 128);
        for (name, value) in map::pairs(&raw).chain(added) {
            out.push(name, value);
        }
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
    /// the SDK's `proxy_on_memory_allocate`, a boxed slice). A failed call
    /// aborts the VM: a floor that skipped its I/O would measure nothing,
    /// and the bench's sanity requests see the failure.
    pub fn read(map: u32) -> Option<Box<[u8]>> {
        let mut data = std::ptr::null_mut();
        let mut size = 0;
        // SAFETY: the host writes a pointer to `size` bytes it allocated
        // with `proxy_on_memory_allocate` (a `Box<[u8]>` of that length),
        // which this takes ownership of.
        unsafe {
            let status = proxy_get_header_map_pairs(map, &mut data, &mut size);
            assert_eq!(status, 0, "proxy_get_header_map_pairs failed");
            if data.is_null() {
                return None;
            }
            Some(Box::from_raw(std::ptr::slice_from_raw_parts_mut(data, size)))
        }
    }

    pub fn write(map: u32, serialized: &[u8]) {
        // SAFETY: the host only reads `serialized` during the call.
        let status = unsafe { proxy_set_header_map_pairs(map, serialized.as_ptr(), serialized.len()) };
        assert_eq!(status, 0, "proxy_set_header_map_pairs failed");
    }

    fn u32_at(raw: &[u8], at: usize) -> usize {
        raw.get(at..at + 4).map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    }

    /// How many pairs a serialized map says it holds (at most as many as
    /// its size allows).
    pub fn count(raw: &[u8]) -> usize {
        u32_at(raw, 0).min(raw.len() / 8)
    }

    /// The pairs of a serialized map (none past a malformed one).
    pub fn pairs(raw: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
        let n = count(raw);
        let mut at = 4 + 8 * n;
        (0..n).map_while(move |i| {
            let (k, v) = (u32_at(raw, 4 + 8 * i), u32_at(raw, 8 + 8 * i));
            let name = raw.get(at..at + k)?;
            let value = raw.get(at + k + 1..at + k + 1 + v)?;
            at += k + v + 2;
            Some((name, value))
        })
    }

    /// A map serialized for `write` into one buffer sized up front: room
    /// for `pairs` pairs' lengths, then the data appended.
    pub struct Writer {
        out: Vec<u8>,
        n: usize,
        pairs: usize,
    }

    impl Writer {
        pub fn new(pairs: usize, data: usize) -> Writer {
            let mut out = Vec::with_capacity(4 + 8 * pairs + data);
            out.resize(4 + 8 * pairs, 0);
            Writer { out, n: 0, pairs }
        }

        /// Past the `pairs` it was made for, a pair is dropped.
        pub fn push(&mut self, name: &[u8], value: &[u8]) {
            if self.n == self.pairs {
                return;
            }
            let at = 4 + 8 * self.n;
            self.out[at..at + 4].copy_from_slice(&(name.len() as u32).to_le_bytes());
            self.out[at + 4..at + 8].copy_from_slice(&(value.len() as u32).to_le_bytes());
            for part in [name, value] {
                self.out.extend_from_slice(part);
                self.out.push(0);
            }
            self.n += 1;
        }

        pub fn finish(mut self) -> Vec<u8> {
            // Slots never filled (a malformed map had fewer pairs) go.
            let unused = 8 * (self.pairs - self.n);
            self.out.drain(4 + 8 * self.n..4 + 8 * self.n + unused);
            self.out[..4].copy_from_slice(&(self.n as u32).to_le_bytes());
            self.out
        }
    }
}
