//! Provider answers: the event-stream scanner and the JSON usage reader never
//! panic, and the scanner's answer does not depend on chunking.
#![no_main]
use keygate_filter::usage::{body_kind, SseScanner, Usage};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = body_kind(data);
    let _ = Usage::from_json(data);
    let mut whole = SseScanner::default();
    whole.feed(data);
    let size = data.first().map_or(1, |b| usize::from(*b % 32) + 1);
    let mut chunked = SseScanner::default();
    for chunk in data.chunks(size) {
        chunked.feed(chunk);
    }
    assert_eq!(chunked.usage, whole.usage, "chunks of {size}");
});
