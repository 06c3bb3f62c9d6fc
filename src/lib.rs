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
pub mod config;
pub mod decide;
pub mod errors;
pub mod failover;
#[cfg(not(target_arch = "wasm32"))]
pub mod fake_host;
pub mod handover;
pub mod host;
pub mod inbound;
pub mod intern;
pub mod keys;
pub mod metadata;
pub mod metrics;
pub mod model_json;
pub mod multipart;
pub mod query;
pub mod ratelimit;
pub mod records;
pub mod screen;
pub mod scrub;
pub mod surface;
pub mod upstream;
pub mod usage;
pub mod wire;
pub mod worker;

#[cfg(target_arch = "wasm32")]
mod filter;
