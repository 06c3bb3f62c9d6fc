//! Property tests (stable toolchain, part of `make test`) for the rules the
//! hostile-input tier and the fuzz targets attack: the path rule (an accepted
//! request goes under the provider's base path) and the body rules (the model
//! judged is the model a provider reads, whatever the chunking).

// Test code: a failed expectation is a failed test.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use keygate_filter::body::{read, BodyReader};
use keygate_filter::decide::ModelField;
use keygate_filter::model_json::rewrite_model;
use keygate_filter::multipart::{self, MultipartReader};
use keygate_filter::surface::{classify, upstream_path};
use keygate_proto::token;
use proptest::prelude::*;
use serde_json::{json, Map, Value};

/// Path pieces an attacker would combine.
fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("v1".to_string()),
        Just("chat".to_string()),
        Just("completions".to_string()),
        Just("files".to_string()),
        Just("models".to_string()),
        Just("messages".to_string()),
        Just("batches".to_string()),
        Just("content".to_string()),
        Just("..".to_string()),
        Just(".".to_string()),
        Just("".to_string()),
        Just("%2e%2e".to_string()),
        Just("..%2f".to_string()),
        Just("a\\b".to_string()),
        Just(".hidden".to_string()),
        "[a-z0-9._:-]{1,12}",
        "[ -~]{1,6}",
    ]
}

fn path() -> impl Strategy<Value = String> {
    (prop::collection::vec(segment(), 0..7), prop::option::of("[a-z=&%.0-9-]{0,20}")).prop_map(|(segs, q)| {
        let mut p = format!("/{}", segs.join("/"));
        if let Some(q) = q {
            p.push('?');
            p.push_str(&q);
        }
        p
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    #[test]
    fn an_accepted_path_stays_under_the_base(
        p in path(),
        method in prop::sample::select(vec!["GET", "POST", "DELETE"]),
        base in prop::sample::select(vec!["", "/v1", "/openai/deployments/cheap"]),
        anthropic in any::<bool>(),
    ) {
        if let Ok(s) = classify(method, &p, anthropic) {
            let out = upstream_path(base, s.rest, s.query);
            let (path_part, _) = out.split_once('?').unwrap_or((&out, ""));
            let under = path_part.strip_prefix(&format!("{base}/")).expect("under the base");
            prop_assert!(!under.contains(['%', '\\']));
            prop_assert!(under.split('/').all(|seg| !matches!(seg, "" | "." | "..")), "{out}");
        }
    }
}

/// JSON values of modest size, strings with escapes and Unicode.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        "[ -~é😀\"\\\\\n\t]{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{1,8}", inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// A request body: a `model` among other top-level members (none of them a
/// `model` in another case), serialized compactly or pretty.
fn body() -> impl Strategy<Value = (String, Vec<u8>)> {
    (
        "[a-zA-Z0-9./:_-]{1,40}",
        prop::collection::btree_map("[a-z_]{1,10}", json_value(), 0..6),
        0usize..7,
        any::<bool>(),
    )
        .prop_map(|(model, others, at, pretty)| {
            let mut map = Map::new();
            let mut others: Vec<(String, Value)> =
                others.into_iter().filter(|(k, _)| !k.eq_ignore_ascii_case("model")).collect();
            others.insert(at.min(others.len()), ("model".to_string(), Value::String(model.clone())));
            for (k, v) in others {
                map.insert(k, v);
            }
            let doc = Value::Object(map);
            let bytes = if pretty { serde_json::to_vec_pretty(&doc) } else { serde_json::to_vec(&doc) };
            (model, bytes.expect("serializable"))
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn the_model_read_is_the_model_written_whatever_the_chunks((model, doc) in body(), size in 1usize..64) {
        prop_assert_eq!(read(&doc).model, ModelField::Str(model));
        let mut r = BodyReader::default();
        for chunk in doc.chunks(size) {
            r.feed(chunk);
        }
        prop_assert_eq!(r.finish(), read(&doc));
    }

    #[test]
    fn a_second_model_in_any_case_is_refused((_, doc) in body(), variant in "[mM][oO][dD][eE][lL]") {
        // Insert `"<variant>": "x",` right after the opening brace.
        let mut evil = b"{".to_vec();
        evil.extend_from_slice(format!("\"{variant}\":\"x\",").as_bytes());
        evil.extend_from_slice(&doc[1..]);
        let want = if variant == "model" { ModelField::Repeated } else { ModelField::CaseVariant };
        prop_assert_eq!(read(&evil).model, want);
    }

    #[test]
    fn rewriting_changes_the_model_and_nothing_else((_, doc) in body(), new in "[a-z0-9é\"\\\\-]{1,20}") {
        let out = rewrite_model(&doc, &new).expect("a model to rewrite");
        let mut after: Value = serde_json::from_slice(&out).expect("still JSON");
        let before: Value = serde_json::from_slice(&doc).expect("JSON");
        prop_assert_eq!(&after["model"], &Value::String(new));
        after["model"] = before["model"].clone();
        prop_assert_eq!(after, before);
    }

    #[test]
    fn a_form_model_is_read_whatever_the_chunks(
        fields in prop::collection::vec(("[a-z_]{1,8}", "[ -~]{0,30}"), 0..5),
        model in "[a-zA-Z0-9._-]{1,30}",
        at in 0usize..6,
        size in 1usize..40,
    ) {
        let boundary = "kgBoundary42";
        let mut parts: Vec<(String, String)> =
            fields.into_iter().filter(|(n, _)| !n.eq_ignore_ascii_case("model")).collect();
        parts.insert(at.min(parts.len()), ("model".into(), model.clone()));
        let mut doc = String::new();
        for (name, value) in &parts {
            doc.push_str(&format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"));
        }
        doc.push_str(&format!("--{boundary}--\r\n"));
        prop_assert_eq!(multipart::read(boundary, doc.as_bytes()), ModelField::Str(model));
        let mut r = MultipartReader::new(boundary);
        for chunk in doc.as_bytes().chunks(size) {
            r.feed(chunk);
        }
        prop_assert_eq!(r.finish(), multipart::read(boundary, doc.as_bytes()));
    }

    #[test]
    fn a_token_anywhere_in_a_body_is_found(
        before in "[ -~]{0,200}",
        after in "[ -~]{0,200}",
        seed in any::<[u8; 20]>(),
        size in 1usize..80,
    ) {
        let t = token::from_random(&seed);
        let doc = format!("{before}{t}{after}");
        prop_assert!(token::contains_token(doc.as_bytes()));
        let mut s = token::TokenScanner::default();
        for chunk in doc.as_bytes().chunks(size) {
            s.feed(chunk);
        }
        prop_assert!(s.found());
    }
}
