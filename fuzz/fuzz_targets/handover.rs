//! Filter state another filter instance left (`handover`): a plan that does
//! not open, a damaged trail or damaged findings never panic, and a trail
//! reads back as it was written.
#![no_main]
use keygate_filter::handover::{encode_trail, open, parse_trail, SealKey, Tapped};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = open(&SealKey::derive("fuzz"), "request", data);
    let _ = Tapped::decode(data);
    let trail = parse_trail(data);
    assert_eq!(parse_trail(encode_trail(&trail).as_bytes()), trail);
});
