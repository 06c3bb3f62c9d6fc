//! Scrubbing provider credentials from answers: the streamed scrubber gives
//! the one-shot result whatever the chunking, and no secret survives.
#![no_main]
use keygate_filter::scrub::{scrub, StreamScrubber};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else { return };
    let secrets = vec!["sk-live-0123456789".to_string(), "aaaaaaaaab".to_string()];
    let whole = scrub(rest, &secrets).unwrap_or_else(|| rest.to_vec());
    let size = usize::from(first % 32) + 1;
    let mut s = StreamScrubber::new(secrets.clone());
    let chunks: Vec<&[u8]> = rest.chunks(size).collect();
    let mut out = Vec::new();
    for (i, c) in chunks.iter().enumerate() {
        out.extend(s.feed(c, i + 1 == chunks.len()));
    }
    assert_eq!(out, whole, "chunks of {size}");
    for secret in &secrets {
        assert!(!whole.windows(secret.len()).any(|w| w == secret.as_bytes()));
    }
});
