//! A proxy-wasm module that does nothing: the benchmark's floor. It accepts
//! any plugin configuration and any `root_id` (one root context per plugin,
//! whatever its name), and every request gets an HTTP context that returns
//! `Continue` from every callback and makes no host call. What Envoy still
//! pays for it is the proxy-wasm machinery itself: the filter instances, the
//! VM calls per request phase and body chunk, the context creation and
//! teardown.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::ContextType;

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root) });
}}

struct Root;

impl Context for Root {}

impl RootContext for Root {
    // The SDK's defaults accept any configuration without reading it
    // (`on_vm_start`, `on_configure`: true, no host call).
    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Nothing))
    }
}

/// Every callback is the SDK's default: `Continue`, no host call.
struct Nothing;

impl Context for Nothing {}

impl HttpContext for Nothing {}
