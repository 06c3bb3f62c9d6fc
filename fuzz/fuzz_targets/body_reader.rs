//! The request body reader: never panics; the answer does not depend on how
//! the body is cut into chunks; a model it reads is the one a JSON parser
//! (serde_json) reads at the top level, and a body serde_json reads is JSON
//! to it too.
#![no_main]
use keygate_filter::body::{read, BodyReader};
use keygate_filter::decide::ModelField;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let whole = read(data);
    let size = data.first().map_or(1, |b| usize::from(*b % 32) + 1);
    let mut r = BodyReader::default();
    for chunk in data.chunks(size) {
        r.feed(chunk);
    }
    assert_eq!(r.finish(), whole, "chunks of {size}");
    if let ModelField::Str(m) = &whole.model {
        match serde_json::from_slice::<serde_json::Value>(data) {
            Ok(v) => assert_eq!(v.get("model").and_then(|m| m.as_str()), Some(m.as_str())),
            // serde_json is stricter than JSON's grammar in two ways: it
            // refuses numbers beyond f64 (`8e818`) and lone surrogate escapes
            // (`"\ud800"`) in strings. The reader follows the grammar there
            // (a `model` holding a lone surrogate is refused); nothing else
            // may differ.
            Err(e) => {
                let e = e.to_string();
                assert!(serde_is_stricter(data, &e), "{e}");
            }
        }
    }
    if serde_json::from_slice::<serde_json::Value>(data).is_ok() {
        assert!(!matches!(whole.model, ModelField::InvalidJson), "we refuse what serde_json reads");
    }
});

/// serde_json refuses two things JSON's grammar allows: numbers beyond f64,
/// and surrogate escapes that do not pair (`"\ud900x"`).
fn serde_is_stricter(data: &[u8], error: &str) -> bool {
    let surrogate_escape = data.windows(4).any(|w| {
        w[0] == b'\\' && w[1] == b'u' && matches!(w[2], b'd' | b'D') && matches!(w[3], b'8'..=b'9' | b'a'..=b'f' | b'A'..=b'F')
    });
    error.contains("out of range") || (surrogate_escape && (error.contains("surrogate") || error.contains("hex escape")))
}
