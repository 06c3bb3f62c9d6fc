//! keygate's Envoy filter.
//!
//! Everything but `filter` is plain Rust with no proxy-wasm dependency and
//! is unit-tested natively: the request's life (`worker`) is written against
//! the `host::Host` trait, which `filter` implements over the proxy-wasm ABI
//! and `fake_host` for tests.

pub mod access;
pub mod admission;
pub mod attempt;
pub mod body;
pub mod cache;
pub mod callouts;
pub mod concurrency;
pub mod config;
pub mod decide;
pub mod errors;
pub mod failover;
#[cfg(any(not(target_arch = "wasm32"), feature = "fake-host"))]
pub mod fake_host;
pub mod handover;
pub mod header_edits;
pub mod hidden_usage;
pub mod host;
pub mod host_calls;
pub mod id_map;
pub mod inbound;
pub mod intern;
pub mod key_answer;
pub mod keys;
pub mod metadata;
pub mod metrics;
pub mod model_json;
pub mod models;
pub mod multipart;
pub mod query;
pub mod ratelimit;
pub mod records;
pub mod scan;
pub mod screen;
pub mod scrub;
pub mod surface;
pub mod upstream;
pub mod usage;
pub mod wire;
pub mod worker;

// A build with the recording host (the hot-path harness) is never a filter.
#[cfg(all(target_arch = "wasm32", not(feature = "fake-host")))]
mod filter;
