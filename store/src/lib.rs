//! keygate key store: access keys, provider keys, access-key configurations
//! and providers; a management API, a gateway lookup API for the Envoy filter,
//! and a CLI. See `store/README.md`.

pub mod api;
pub mod catalog;
pub mod cli;
pub mod console;
pub mod crypto;
pub mod error;
pub mod ids;
pub mod model;
pub mod plan;
pub mod policy;
pub mod pricing;
pub mod serve;
pub mod storage;
pub mod webhooks;
