//! Rewriting `model` and blanking `models` in place: never panics; for a
//! body the reader accepts, the result is JSON whose `model` is the new name
//! (or that has no `models`, at the same length) and whose other top-level
//! members are unchanged.
#![no_main]
use keygate_filter::body::{read, Fallbacks};
use keygate_filter::decide::ModelField;
use keygate_filter::model_json::{blank_member, rewrite_model};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut blanked = data.to_vec();
    let found = blank_member(&mut blanked, "models");
    if let Fallbacks::List(_) = read(data).fallbacks {
        assert!(found > 0, "a body with `models` has it blanked");
        assert_eq!(blanked.len(), data.len());
        if let Ok(mut before) = serde_json::from_slice::<serde_json::Value>(data) {
            let after: serde_json::Value = serde_json::from_slice(&blanked).expect("the blanked body is JSON");
            before.as_object_mut().expect("an object").remove("models");
            assert_eq!(after, before);
        }
    }
    let out = rewrite_model(data, "gpt-4o \"mini\"\\é");
    if let ModelField::Str(_) = read(data).model {
        let out = out.expect("a body with a model can be rewritten");
        // serde_json is stricter than JSON's grammar in two ways the reader
        // follows the grammar (see the body reader's tests): skip those.
        let Ok(before) = serde_json::from_slice::<serde_json::Value>(data) else {
            let e = serde_json::from_slice::<serde_json::Value>(data).unwrap_err().to_string();
            assert!(serde_is_stricter(data, &e), "{e}");
            return;
        };
        let mut after: serde_json::Value = serde_json::from_slice(&out).expect("the rewrite is JSON");
        assert_eq!(after["model"], "gpt-4o \"mini\"\\é");
        after["model"] = before["model"].clone();
        assert_eq!(after, before);
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
