//! The multipart form reader: never panics, and chunking never changes its
//! answer. The first byte picks the boundary length.
#![no_main]
use keygate_filter::multipart::{boundary_of, read, MultipartReader};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else { return };
    if let Ok(s) = std::str::from_utf8(rest) {
        let _ = boundary_of(s);
    }
    let boundary = ["b", "----kgBoundary", "x y", "abc'()+_,-./:=?"][usize::from(first % 4)];
    let whole = read(boundary, rest);
    let size = usize::from(first / 4 % 31) + 1;
    let mut r = MultipartReader::new(boundary);
    for chunk in rest.chunks(size) {
        r.feed(chunk);
    }
    assert_eq!(r.finish(), whole, "chunks of {size}");
});
