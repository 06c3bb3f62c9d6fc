//! Rewriting `model` in place: never panics; for a body the reader accepts,
//! the result is JSON whose `model` is the new name and whose other
//! top-level members are unchanged.
#![no_main]
use keygate_filter::body::read;
use keygate_filter::decide::ModelField;
use keygate_filter::model_json::rewrite_model;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let out = rewrite_model(data, "gpt-4o \"mini\"\\é");
    if let ModelField::Str(_) = read(data).model {
        let out = out.expect("a body with a model can be rewritten");
        let before: serde_json::Value = serde_json::from_slice(data).expect("valid");
        let mut after: serde_json::Value = serde_json::from_slice(&out).expect("the rewrite is JSON");
        assert_eq!(after["model"], "gpt-4o \"mini\"\\é");
        after["model"] = before["model"].clone();
        assert_eq!(after, before);
    }
});
