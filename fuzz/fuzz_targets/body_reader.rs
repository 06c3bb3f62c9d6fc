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
        let v: serde_json::Value = serde_json::from_slice(data).expect("a body we read a model from is JSON");
        assert_eq!(v.get("model").and_then(|m| m.as_str()), Some(m.as_str()));
    }
    // (The other direction does not hold, and need not: serde_json refuses
    // numbers beyond f64, such as `8e818`, which the grammar allows.)
    if serde_json::from_slice::<serde_json::Value>(data).is_ok() {
        assert!(!matches!(whole.model, ModelField::InvalidJson), "we refuse what serde_json reads");
    }
});
