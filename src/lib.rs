//! keygate's Envoy filter.
//!
//! The pure logic (everything but `filter`) has no proxy-wasm dependency and
//! is unit-tested natively; `filter` is the thin glue to the host.

pub mod access;
pub mod body;
pub mod cache;
pub mod config;
pub mod decide;
pub mod errors;
pub mod failover;
pub mod inbound;
pub mod keys;
pub mod model_json;
pub mod multipart;
pub mod query;
pub mod ratelimit;
pub mod screen;
pub mod scrub;
pub mod surface;
pub mod upstream;
pub mod usage;
pub mod wire;

#[cfg(target_arch = "wasm32")]
mod filter;
#[cfg(target_arch = "wasm32")]
mod metrics;
