//! Upstream path building. Property: whatever the client's path, a request
//! the surface table accepts goes to a path under the provider's base path
//! that no server can resolve elsewhere: it starts with the base and `/`, and
//! holds no dot segment, empty segment, `%` or `\`.
#![no_main]
use keygate_filter::surface::{classify, upstream_path};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else { return };
    let Ok(path) = std::str::from_utf8(rest) else { return };
    let method = ["GET", "POST", "DELETE", "PUT"][usize::from(first % 4)];
    let base = ["", "/v1", "/openai/deployments/cheap", "/api/v1beta/openai"][usize::from(first / 4 % 4)];
    let Ok(surface) = classify(method, path, first & 0x80 != 0) else { return };
    let out = upstream_path(base, surface.rest, surface.query);
    let (p, _query) = out.split_once('?').unwrap_or((&out, ""));
    assert!(p.starts_with(&format!("{base}/")), "{out:?} leaves {base:?}");
    let under = &p[base.len() + 1..];
    assert!(!under.contains(['%', '\\']), "{out:?}");
    for seg in under.split('/') {
        assert!(!matches!(seg, "" | "." | ".."), "{out:?} has segment {seg:?}");
    }
});
