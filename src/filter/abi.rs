//! The [`Host`] over the proxy-wasm ABI.
//!
//! Host calls that cannot panic: every one calls the ABI directly and returns
//! what the host said. (The Rust SDK's wrappers, `proxy_wasm::hostcalls`,
//! panic on any status they do not expect, and its header readers unwrap
//! UTF-8: one request header byte that is not UTF-8, or one odd status (a
//! property another plugin declared read-only), would kill the VM for every
//! request on the worker. The filter does not use the SDK.)

use crate::host::{Buffer, Call, HeaderMap, Host, HostError, Map, MetricKind, SharedError};

use crate::wire;

/// The ABI's header maps.
#[derive(Clone, Copy)]
#[repr(u32)]
enum MapType {
    Request = 0,
    Response = 2,
    ResponseTrailers = 3,
    CallResponse = 6,
}

/// The ABI's buffers.
#[derive(Clone, Copy)]
#[repr(u32)]
enum BufferType {
    HttpRequestBody = 0,
    HttpResponseBody = 1,
    HttpCallResponseBody = 4,
    PluginConfiguration = 7,
}

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_get_header_map_pairs(map_type: MapType, data: *mut *mut u8, size: *mut usize) -> u32;
    fn proxy_get_header_map_value(
        map_type: MapType,
        key: *const u8,
        key_size: usize,
        data: *mut *mut u8,
        size: *mut usize,
    ) -> u32;
    fn proxy_replace_header_map_value(
        map_type: MapType,
        key: *const u8,
        key_size: usize,
        value: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_remove_header_map_value(map_type: MapType, key: *const u8, key_size: usize) -> u32;
    fn proxy_set_header_map_pairs(map_type: MapType, data: *const u8, size: usize) -> u32;
    fn proxy_get_buffer_bytes(
        buffer_type: BufferType,
        start: usize,
        max_size: usize,
        data: *mut *mut u8,
        size: *mut usize,
    ) -> u32;
    fn proxy_set_buffer_bytes(
        buffer_type: BufferType,
        start: usize,
        size: usize,
        data: *const u8,
        data_size: usize,
    ) -> u32;
    fn proxy_send_local_response(
        status_code: u32,
        details: *const u8,
        details_size: usize,
        body: *const u8,
        body_size: usize,
        headers: *const u8,
        headers_size: usize,
        grpc_status: i32,
    ) -> u32;
    fn proxy_set_effective_context(context_id: u32) -> u32;
    fn proxy_get_property(path: *const u8, path_size: usize, data: *mut *mut u8, size: *mut usize) -> u32;
    fn proxy_set_property(path: *const u8, path_size: usize, value: *const u8, value_size: usize) -> u32;
    fn proxy_get_shared_data(
        key: *const u8,
        key_size: usize,
        data: *mut *mut u8,
        size: *mut usize,
        cas: *mut u32,
    ) -> u32;
    fn proxy_set_shared_data(key: *const u8, key_size: usize, value: *const u8, value_size: usize, cas: u32) -> u32;
    fn proxy_continue_stream(stream_type: u32) -> u32;
    fn proxy_close_stream(stream_type: u32) -> u32;
    fn proxy_get_current_time_nanoseconds(return_time: *mut u64) -> u32;
    #[allow(clippy::too_many_arguments)]
    fn proxy_http_call(
        upstream: *const u8,
        upstream_size: usize,
        headers: *const u8,
        headers_size: usize,
        body: *const u8,
        body_size: usize,
        trailers: *const u8,
        trailers_size: usize,
        timeout_ms: u32,
        return_token: *mut u32,
    ) -> u32;
    fn proxy_define_metric(metric_type: u32, name: *const u8, name_size: usize, return_id: *mut u32) -> u32;
    fn proxy_increment_metric(metric_id: u32, offset: i64) -> u32;
    fn proxy_set_tick_period_milliseconds(period: u32) -> u32;
    fn proxy_log(level: u32, message: *const u8, message_size: usize) -> u32;
}

const NOT_FOUND: u32 = 1;
const CAS_MISMATCH: u32 = 8;
/// The ABI's stream types (`proxy_continue_stream`, `proxy_close_stream`).
const HTTP_REQUEST: u32 = 0;
const HTTP_RESPONSE: u32 = 1;

const OK: u32 = 0;

/// The host's answer when it was not OK (`NotFound` = 1, `BadArgument` = 2, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status(pub u32);

fn check(status: u32) -> Result<(), Status> {
    if status == OK {
        Ok(())
    } else {
        Err(Status(status))
    }
}

// The wrappers below that the worker calls from many places are kept out of
// line (`#[inline(never)]`): one copy each instead of one per call site,
// for the cost of a call next to a host call's.

/// Takes ownership of memory the host allocated in this VM (through
/// `proxy_on_memory_allocate`, which allocates a `Vec<u8>`).
///
/// SAFETY: `data` is null or points to `size` bytes the host just allocated.
unsafe fn owned(data: *mut u8, size: usize) -> Vec<u8> {
    if data.is_null() {
        Vec::new()
    } else {
        Vec::from_raw_parts(data, size, size)
    }
}

/// Every header of `map`, values as bytes. Empty when unavailable.
#[inline(never)]
fn headers(map: MapType) -> HeaderMap {
    let (mut data, mut size) = (std::ptr::null_mut(), 0usize);
    // SAFETY: the host writes an allocation of ours and its size through two live locals.
    let status = unsafe { proxy_get_header_map_pairs(map, &mut data, &mut size) };
    // SAFETY: as `owned` requires; taken even on error so nothing leaks.
    let raw = unsafe { owned(data, size) };
    if status != OK {
        return HeaderMap::default();
    }
    HeaderMap::parse(raw)
}

/// One header's value (the first, if repeated), as bytes.
#[inline(never)]
fn header(map: MapType, name: &str) -> Option<Vec<u8>> {
    let (mut data, mut size) = (std::ptr::null_mut(), 0usize);
    // SAFETY: as in `headers`.
    let status = unsafe { proxy_get_header_map_value(map, name.as_ptr(), name.len(), &mut data, &mut size) };
    // SAFETY: as `owned` requires.
    let raw = unsafe { owned(data, size) };
    (status == OK).then_some(raw)
}

/// Sets (replaces) a header, or removes it with `None`.
#[inline(never)]
fn set_header(map: MapType, name: &str, value: Option<&[u8]>) -> Result<(), Status> {
    // SAFETY: pointers and lengths of live slices; the host copies them.
    let status = unsafe {
        match value {
            Some(v) => proxy_replace_header_map_value(map, name.as_ptr(), name.len(), v.as_ptr(), v.len()),
            None => proxy_remove_header_map_value(map, name.as_ptr(), name.len()),
        }
    };
    check(status)
}

/// Replaces the whole map with a serialized one (see `header_edits`).
fn set_headers(map: MapType, serialized: &[u8]) -> Result<(), Status> {
    // SAFETY: a live slice; the host copies it.
    check(unsafe { proxy_set_header_map_pairs(map, serialized.as_ptr(), serialized.len()) })
}

#[inline(never)]
fn buffer(buffer_type: BufferType, start: usize, max_size: usize) -> Result<Vec<u8>, Status> {
    let (mut data, mut size) = (std::ptr::null_mut(), 0usize);
    // SAFETY: as in `headers`.
    let status = unsafe { proxy_get_buffer_bytes(buffer_type, start, max_size, &mut data, &mut size) };
    // SAFETY: as `owned` requires.
    let raw = unsafe { owned(data, size) };
    check(status).map(|()| raw)
}

fn set_buffer(buffer_type: BufferType, start: usize, size: usize, value: &[u8]) -> Result<(), Status> {
    // SAFETY: a live slice; the host copies it.
    check(unsafe { proxy_set_buffer_bytes(buffer_type, start, size, value.as_ptr(), value.len()) })
}

#[inline(never)]
fn send_response(status: u32, headers: &[(&str, &[u8])], body: &[u8]) -> Result<(), Status> {
    let map = wire::serialize_pairs(headers);
    // SAFETY: live slices; the host copies them.
    check(unsafe {
        proxy_send_local_response(status, std::ptr::null(), 0, body.as_ptr(), body.len(), map.as_ptr(), map.len(), -1)
    })
}

fn set_effective_context(context_id: u32) -> Result<(), Status> {
    // SAFETY: no pointers.
    check(unsafe { proxy_set_effective_context(context_id) })
}

#[inline(never)]
fn property(path: &[&str]) -> Option<Vec<u8>> {
    let path = wire::property_path(path);
    let (mut data, mut size) = (std::ptr::null_mut(), 0usize);
    // SAFETY: as in `headers`.
    let status = unsafe { proxy_get_property(path.as_ptr(), path.len(), &mut data, &mut size) };
    let present = !data.is_null();
    // SAFETY: as `owned` requires.
    let raw = unsafe { owned(data, size) };
    (status == OK && present).then_some(raw)
}

/// Another filter may have declared the name read-only (the host then
/// answers `BadArgument`): an error to handle, not a panic.
#[inline(never)]
fn set_property(path: &[&str], value: &[u8]) -> Result<(), Status> {
    let path = wire::property_path(path);
    // SAFETY: live slices; the host copies them.
    check(unsafe { proxy_set_property(path.as_ptr(), path.len(), value.as_ptr(), value.len()) })
}

#[inline(never)]
fn shared_data(key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), Status> {
    let (mut data, mut size, mut cas) = (std::ptr::null_mut(), 0usize, 0u32);
    // SAFETY: as in `headers`, and a live local for the CAS token.
    let status = unsafe { proxy_get_shared_data(key.as_ptr(), key.len(), &mut data, &mut size, &mut cas) };
    let present = !data.is_null();
    // SAFETY: as `owned` requires.
    let raw = unsafe { owned(data, size) };
    // As the SDK reads it: no data is `None`, CAS token 0 is none.
    match status {
        OK => Ok((present.then_some(raw), (cas != 0).then_some(cas))),
        NOT_FOUND => Ok((None, None)),
        other => Err(Status(other)),
    }
}

#[inline(never)]
fn set_shared_data(key: &str, value: &[u8], cas: Option<u32>) -> Result<(), SharedError> {
    // SAFETY: live slices; the host copies them.
    let status =
        unsafe { proxy_set_shared_data(key.as_ptr(), key.len(), value.as_ptr(), value.len(), cas.unwrap_or(0)) };
    match status {
        OK => Ok(()),
        CAS_MISMATCH => Err(SharedError::CasMismatch),
        _ => Err(SharedError::Failed),
    }
}

fn now_ms() -> Option<u64> {
    let mut nanos = 0u64;
    // SAFETY: the host writes one u64 through a pointer to a live local.
    check(unsafe { proxy_get_current_time_nanoseconds(&mut nanos) }).ok()?;
    Some(nanos / 1_000_000)
}

/// A callout; its token, which [`super::callout_dispatched`] records for the
/// context whose callback made it (the answer goes to that context).
fn http_call(call: &Call<'_>) -> Result<u32, Status> {
    let headers: Vec<(&str, &[u8])> = call.headers.iter().map(|&(n, v)| (n, v.as_bytes())).collect();
    let headers = wire::serialize_pairs(&headers);
    let trailers = wire::serialize_pairs::<&str>(&[]);
    let (body, body_size) = call.body.map_or((std::ptr::null(), 0), |b| (b.as_ptr(), b.len()));
    let mut token = 0u32;
    // SAFETY: live slices (or null and 0 for no body); the host copies them
    // and writes the token through a pointer to a live local.
    check(unsafe {
        proxy_http_call(
            call.cluster.as_ptr(),
            call.cluster.len(),
            headers.as_ptr(),
            headers.len(),
            body,
            body_size,
            trailers.as_ptr(),
            trailers.len(),
            call.timeout_ms as u32,
            &mut token,
        )
    })?;
    super::callout_dispatched(token);
    Ok(token)
}

fn define_metric(kind: MetricKind, name: &str) -> Result<u32, Status> {
    let kind = match kind {
        MetricKind::Counter => 0,
        MetricKind::Gauge => 1,
    };
    let mut id = 0u32;
    // SAFETY: a live slice; the host copies it and writes the id through a pointer to a live local.
    check(unsafe { proxy_define_metric(kind, name.as_ptr(), name.len(), &mut id) }).map(|()| id)
}

fn increment_metric(id: u32, delta: i64) -> Result<(), Status> {
    // SAFETY: no pointers.
    check(unsafe { proxy_increment_metric(id, delta) })
}

/// The root's tick period.
pub fn set_tick_period_ms(period_ms: u64) -> Result<(), Status> {
    // SAFETY: no pointers.
    check(unsafe { proxy_set_tick_period_milliseconds(period_ms as u32) })
}

/// The ABI's log levels (`proxy_log`).
pub const LOG_CRITICAL: u32 = 5;

/// One line in Envoy's log (the `wasm` component).
pub fn log(level: u32, message: &str) {
    // SAFETY: a live slice; the host copies it.
    let _ = unsafe { proxy_log(level, message.as_ptr(), message.len()) };
}

/// The `log` crate's lines go to Envoy's log.
pub struct Logger;

impl log::Log for Logger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let level = match record.level() {
            log::Level::Trace => 0,
            log::Level::Debug => 1,
            log::Level::Info => 2,
            log::Level::Warn => 3,
            log::Level::Error => 4,
        };
        log(level, &record.args().to_string());
    }

    fn flush(&self) {}
}

/// The host's allocations in this VM (the buffers it hands over, which
/// `owned` takes back as a `Vec<u8>`).
#[no_mangle]
pub extern "C" fn proxy_on_memory_allocate(size: usize) -> *mut u8 {
    let mut vec: Vec<std::mem::MaybeUninit<u8>> = Vec::with_capacity(size);
    // SAFETY: `MaybeUninit` needs no initialization; the capacity is `size`.
    unsafe { vec.set_len(size) };
    Box::into_raw(vec.into_boxed_slice()) as *mut u8
}

fn resume_request() -> Result<(), Status> {
    // SAFETY: no pointers.
    check(unsafe { proxy_continue_stream(HTTP_REQUEST) })
}

/// Envoy resets the stream once the current callback returns (its
/// `closeStream` defers `resetStream` until the VM call is over).
fn reset_answer() -> Result<(), Status> {
    // SAFETY: no pointers.
    check(unsafe { proxy_close_stream(HTTP_RESPONSE) })
}

/// The host this VM runs in.
pub struct Abi;

fn map_type(map: Map) -> MapType {
    match map {
        Map::RequestHeaders => MapType::Request,
        Map::ResponseHeaders => MapType::Response,
        Map::ResponseTrailers => MapType::ResponseTrailers,
        Map::CalloutHeaders => MapType::CallResponse,
    }
}

fn buffer_type(buffer: Buffer) -> BufferType {
    match buffer {
        Buffer::RequestBody => BufferType::HttpRequestBody,
        Buffer::ResponseBody => BufferType::HttpResponseBody,
        Buffer::CalloutBody => BufferType::HttpCallResponseBody,
        Buffer::PluginConfiguration => BufferType::PluginConfiguration,
    }
}

fn host_error(s: Status) -> HostError {
    HostError(s.0)
}

impl Host for Abi {
    fn now_ms(&self) -> u64 {
        now_ms().unwrap_or(0)
    }

    fn headers(&self, map: Map) -> HeaderMap {
        headers(map_type(map))
    }

    fn header(&self, map: Map, name: &str) -> Option<Vec<u8>> {
        header(map_type(map), name)
    }

    fn set_header(&self, map: Map, name: &str, value: Option<&[u8]>) -> Result<(), HostError> {
        set_header(map_type(map), name, value).map_err(host_error)
    }

    fn set_headers(&self, map: Map, serialized: &[u8]) -> Result<(), HostError> {
        set_headers(map_type(map), serialized).map_err(host_error)
    }

    fn buffer(&self, buffer: Buffer, start: usize, max_size: usize) -> Result<Vec<u8>, HostError> {
        self::buffer(buffer_type(buffer), start, max_size).map_err(host_error)
    }

    fn set_buffer(&self, buffer: Buffer, start: usize, size: usize, value: &[u8]) -> Result<(), HostError> {
        self::set_buffer(buffer_type(buffer), start, size, value).map_err(host_error)
    }

    fn property(&self, path: &[&str]) -> Option<Vec<u8>> {
        self::property(path)
    }

    fn set_property(&self, path: &[&str], value: &[u8]) -> Result<(), HostError> {
        self::set_property(path, value).map_err(host_error)
    }

    fn shared_data(&self, key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), HostError> {
        self::shared_data(key).map_err(host_error)
    }

    fn set_shared_data(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), SharedError> {
        self::set_shared_data(key, value, cas)
    }

    fn http_call(&self, call: &Call<'_>) -> Result<u32, HostError> {
        http_call(call).map_err(host_error)
    }

    fn send_response(&self, status: u16, headers: &[(&str, &[u8])], body: &[u8]) -> Result<(), HostError> {
        send_response(u32::from(status), headers, body).map_err(host_error)
    }

    fn set_effective_context(&self, context_id: u32) -> Result<(), HostError> {
        set_effective_context(context_id).map_err(host_error)
    }

    fn resume_request(&self) -> Result<(), HostError> {
        resume_request().map_err(host_error)
    }

    fn reset_answer(&self) -> Result<(), HostError> {
        reset_answer().map_err(host_error)
    }

    fn define_metric(&self, kind: MetricKind, name: &str) -> Result<u32, HostError> {
        self::define_metric(kind, name).map_err(host_error)
    }

    fn increment_metric(&self, id: u32, delta: i64) -> Result<(), HostError> {
        self::increment_metric(id, delta).map_err(host_error)
    }
}
