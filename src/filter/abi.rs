//! The [`Host`] over the proxy-wasm ABI.
//!
//! Host calls that cannot panic. The SDK's wrappers (`proxy_wasm::hostcalls`)
//! return a `Result` but panic on any status they do not expect, and its
//! header readers unwrap UTF-8: one request header byte that is not UTF-8, or
//! one odd status (a property another plugin declared read-only), would kill
//! the VM for every request on the worker. Headers, buffers, properties,
//! shared data, local replies, resume and the effective context call the ABI
//! directly and return what the host said; the SDK is left the calls whose
//! statuses it handles (callouts, metrics, time).

use std::time::{Duration, UNIX_EPOCH};

use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, MapType, MetricType};

use crate::host::{Buffer, Call, HeaderMap, Host, HostError, Map, MetricKind, SharedError};

use crate::wire;

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
}

const NOT_FOUND: u32 = 1;
const CAS_MISMATCH: u32 = 8;
/// `proxy_continue_stream`'s stream type for the request.
const HTTP_REQUEST: u32 = 0;

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

/// Takes ownership of memory the host allocated in this VM (through the
/// SDK's `proxy_on_memory_allocate`, which allocates a `Vec<u8>`).
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
fn header(map: MapType, name: &str) -> Option<Vec<u8>> {
    let (mut data, mut size) = (std::ptr::null_mut(), 0usize);
    // SAFETY: as in `headers`.
    let status = unsafe { proxy_get_header_map_value(map, name.as_ptr(), name.len(), &mut data, &mut size) };
    // SAFETY: as `owned` requires.
    let raw = unsafe { owned(data, size) };
    (status == OK).then_some(raw)
}

/// Sets (replaces) a header, or removes it with `None`.
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
fn set_property(path: &[&str], value: &[u8]) -> Result<(), Status> {
    let path = wire::property_path(path);
    // SAFETY: live slices; the host copies them.
    check(unsafe { proxy_set_property(path.as_ptr(), path.len(), value.as_ptr(), value.len()) })
}

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

fn resume_request() -> Result<(), Status> {
    // SAFETY: no pointers.
    check(unsafe { proxy_continue_stream(HTTP_REQUEST) })
}

/// The host this VM runs in.
pub struct Abi;

fn map_type(map: Map) -> MapType {
    match map {
        Map::RequestHeaders => MapType::HttpRequestHeaders,
        Map::ResponseHeaders => MapType::HttpResponseHeaders,
        Map::CalloutHeaders => MapType::HttpCallResponseHeaders,
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

fn sdk_error(s: proxy_wasm::types::Status) -> HostError {
    HostError(s as u32)
}

impl Host for Abi {
    fn now_ms(&self) -> u64 {
        hostcalls::get_current_time()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
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
        hostcalls::dispatch_http_call(
            call.cluster,
            call.headers.clone(),
            call.body,
            vec![],
            Duration::from_millis(call.timeout_ms),
        )
        .map_err(sdk_error)
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

    fn define_metric(&self, kind: MetricKind, name: &str) -> Result<u32, HostError> {
        let kind = match kind {
            MetricKind::Counter => MetricType::Counter,
            MetricKind::Gauge => MetricType::Gauge,
        };
        hostcalls::define_metric(kind, name).map_err(sdk_error)
    }

    fn increment_metric(&self, id: u32, delta: i64) -> Result<(), HostError> {
        hostcalls::increment_metric(id, delta).map_err(sdk_error)
    }
}
