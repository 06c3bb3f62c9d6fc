//! Host calls that cannot panic. The SDK's wrappers (`proxy_wasm::hostcalls`)
//! return a `Result` but panic on any status they do not expect, and its
//! header readers unwrap UTF-8: one request header byte that is not UTF-8, or
//! one odd status, would kill the VM for every request on the worker. These
//! call the ABI directly and return what the host said.

use proxy_wasm::types::{BufferType, MapType};

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
}

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
pub fn headers(map: MapType) -> Vec<(String, Vec<u8>)> {
    let (mut data, mut size) = (std::ptr::null_mut(), 0usize);
    // SAFETY: the host writes an allocation of ours and its size through two live locals.
    let status = unsafe { proxy_get_header_map_pairs(map, &mut data, &mut size) };
    // SAFETY: as `owned` requires; taken even on error so nothing leaks.
    let raw = unsafe { owned(data, size) };
    if status != OK {
        return Vec::new();
    }
    wire::parse_pairs(&raw)
        .unwrap_or_default()
        .into_iter()
        .map(|(n, v)| (String::from_utf8_lossy(n).into_owned(), v.to_vec()))
        .collect()
}

/// One header's value (the first, if repeated), as bytes.
pub fn header(map: MapType, name: &str) -> Option<Vec<u8>> {
    let (mut data, mut size) = (std::ptr::null_mut(), 0usize);
    // SAFETY: as in `headers`.
    let status = unsafe { proxy_get_header_map_value(map, name.as_ptr(), name.len(), &mut data, &mut size) };
    // SAFETY: as `owned` requires.
    let raw = unsafe { owned(data, size) };
    (status == OK).then_some(raw)
}

/// One header's value as text (`None` if absent or not UTF-8).
pub fn header_str(map: MapType, name: &str) -> Option<String> {
    header(map, name).and_then(|v| String::from_utf8(v).ok())
}

/// Sets (replaces) a header, or removes it with `None`.
pub fn set_header(map: MapType, name: &str, value: Option<&[u8]>) -> Result<(), Status> {
    // SAFETY: pointers and lengths of live slices; the host copies them.
    let status = unsafe {
        match value {
            Some(v) => proxy_replace_header_map_value(map, name.as_ptr(), name.len(), v.as_ptr(), v.len()),
            None => proxy_remove_header_map_value(map, name.as_ptr(), name.len()),
        }
    };
    check(status)
}

pub fn buffer(buffer_type: BufferType, start: usize, max_size: usize) -> Result<Vec<u8>, Status> {
    let (mut data, mut size) = (std::ptr::null_mut(), 0usize);
    // SAFETY: as in `headers`.
    let status = unsafe { proxy_get_buffer_bytes(buffer_type, start, max_size, &mut data, &mut size) };
    // SAFETY: as `owned` requires.
    let raw = unsafe { owned(data, size) };
    check(status).map(|()| raw)
}

pub fn set_buffer(buffer_type: BufferType, start: usize, size: usize, value: &[u8]) -> Result<(), Status> {
    // SAFETY: a live slice; the host copies it.
    check(unsafe { proxy_set_buffer_bytes(buffer_type, start, size, value.as_ptr(), value.len()) })
}

pub fn send_response(status: u32, headers: &[(&str, &[u8])], body: &[u8]) -> Result<(), Status> {
    let map = wire::serialize_pairs(headers);
    // SAFETY: live slices; the host copies them.
    check(unsafe {
        proxy_send_local_response(status, std::ptr::null(), 0, body.as_ptr(), body.len(), map.as_ptr(), map.len(), -1)
    })
}

pub fn set_effective_context(context_id: u32) -> Result<(), Status> {
    // SAFETY: no pointers.
    check(unsafe { proxy_set_effective_context(context_id) })
}
