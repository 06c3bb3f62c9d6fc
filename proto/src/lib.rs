//! What the keygate filter (wasm) and the key store share.
//!
//! Both sides compile this crate, so the token format and the lookup document
//! cannot drift apart. No I/O, no allocation-heavy dependencies: it must stay
//! cheap inside a wasm VM.

pub mod cidr;
pub mod endpoints;
pub mod lookup;
pub mod token;
