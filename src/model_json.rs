//! Rewriting the top-level `"model"` of a JSON request body in place, leaving
//! every other byte as the client sent it (no re-serialisation, no reordering).

/// Byte range of the value of the top-level key `key` (including quotes for a
/// string), or `None` when absent or the document is not a JSON object.
pub fn find_top_level_value(doc: &[u8], key: &str) -> Option<(usize, usize)> {
    find_member(doc, key).map(|(_, start, end)| (start, end))
}

/// Where the top-level member `key` is: its key's start, and its value's
/// start and end.
fn find_member(doc: &[u8], key: &str) -> Option<(usize, usize, usize)> {
    let mut i = skip_ws(doc, 0);
    if doc.get(i) != Some(&b'{') {
        return None;
    }
    i += 1;
    loop {
        i = skip_ws(doc, i);
        match doc.get(i)? {
            b'}' => return None,
            b',' => {
                i += 1;
                continue;
            }
            b'"' => {}
            _ => return None,
        }
        let i_key = i;
        let key_end = skip_string(doc, i)?;
        let this_key = doc.get(i + 1..key_end - 1)?;
        i = skip_ws(doc, key_end);
        if doc.get(i) != Some(&b':') {
            return None;
        }
        let start = skip_ws(doc, i + 1);
        let end = skip_value(doc, start)?;
        let raw_key = doc.get(i_key..key_end)?;
        if this_key == key.as_bytes() || crate::body::unescape(raw_key).is_ok_and(|k| k == key) {
            return Some((i_key, start, end));
        }
        i = end;
    }
}

/// Replaces the top-level `"model"` value with `new_model` (a JSON string).
pub fn rewrite_model(doc: &[u8], new_model: &str) -> Option<Vec<u8>> {
    let (start, end) = find_top_level_value(doc, "model")?;
    let literal = crate::errors::json_string(new_model);
    let mut out = Vec::with_capacity(doc.len() + literal.len());
    out.extend_from_slice(doc.get(..start)?);
    out.extend_from_slice(literal.as_bytes());
    out.extend_from_slice(doc.get(end..)?);
    Some(out)
}

/// Blanks every top-level member whose key is `key` as any provider could
/// read it (escapes decoded; ASCII case and the folds Go's `encoding/json`
/// makes ignored: `Models`, `mod\u0065ls`, `modelſ`), and the comma that
/// joined each to its neighbour: spaces in their place keep the document
/// valid JSON of the same length, so its `content-length` stands. One pass
/// (a body of many repeated members costs no more than one). Returns how
/// many were blanked (0: there is no such member). Behind a gate there is at
/// most one (the gate refuses a repeated or case-variant `models`); without
/// one (Istio) every copy must go, not just the first a parser would see.
pub fn blank_member(doc: &mut [u8], key: &str) -> usize {
    let mut blanked = 0;
    let mut i = skip_ws(doc, 0);
    if doc.get(i) != Some(&b'{') {
        return 0;
    }
    i += 1;
    loop {
        i = skip_ws(doc, i);
        match doc.get(i) {
            Some(b',') => {
                i += 1;
                continue;
            }
            Some(b'"') => {}
            _ => return blanked,
        }
        let key_start = i;
        let Some(key_end) = skip_string(doc, i) else { return blanked };
        i = skip_ws(doc, key_end);
        if doc.get(i) != Some(&b':') {
            return blanked;
        }
        let Some(end) = skip_value(doc, skip_ws(doc, i + 1)) else { return blanked };
        i = end;
        let matches = doc.get(key_start..key_end).and_then(|raw| crate::body::unescape(raw).ok()).is_some_and(|k| {
            if k.is_ascii() {
                return k.eq_ignore_ascii_case(key);
            }
            let folded = k.replace('\u{212A}', "k").replace('\u{17F}', "s").replace(['\u{131}', '\u{130}'], "i");
            folded.eq_ignore_ascii_case(key)
        });
        if !matches {
            continue;
        }
        let after = skip_ws(doc, end);
        let (cut_start, cut_end) = if doc.get(after) == Some(&b',') {
            i = after + 1;
            (key_start, after + 1)
        } else {
            // The last member: the comma before it goes (if any; members
            // blanked before it are spaces by now).
            let before = doc.get(..key_start).and_then(|d| d.iter().rposition(|b| !b.is_ascii_whitespace()));
            match before {
                Some(c) if doc.get(c) == Some(&b',') => (c, end),
                _ => (key_start, end),
            }
        };
        if let Some(span) = doc.get_mut(cut_start..cut_end) {
            span.fill(b' ');
            blanked += 1;
        }
    }
}

/// Asks an OpenAI stream for its usage: `"stream_options":{"include_usage":true}`
/// as the first member of the top-level object (the caller checked that the
/// body has no `stream_options` of its own).
pub fn add_stream_usage(doc: &[u8]) -> Option<Vec<u8>> {
    let open = skip_ws(doc, 0);
    if doc.get(open) != Some(&b'{') {
        return None;
    }
    let empty = doc.get(skip_ws(doc, open + 1)) == Some(&b'}');
    let member: &[u8] = if empty {
        br#""stream_options":{"include_usage":true}"#
    } else {
        br#""stream_options":{"include_usage":true},"#
    };
    let mut out = Vec::with_capacity(doc.len() + member.len());
    out.extend_from_slice(doc.get(..=open)?);
    out.extend_from_slice(member);
    out.extend_from_slice(doc.get(open + 1..)?);
    Some(out)
}

pub(crate) fn skip_ws(doc: &[u8], mut i: usize) -> usize {
    while matches!(doc.get(i), Some(b' ' | b'\n' | b'\r' | b'\t')) {
        i += 1;
    }
    i
}

/// `i` at an opening quote; returns the index after the closing quote.
fn skip_string(doc: &[u8], mut i: usize) -> Option<usize> {
    i += 1;
    loop {
        // Plain contents (an answer's completion is most of it) a block at
        // a time; a control character is passed over here like any byte.
        i = crate::scan::plain_end(doc, i);
        match doc.get(i)? {
            b'"' => return Some(i + 1),
            b'\\' => i += 2,
            _ => i += 1,
        }
    }
}

/// Returns the index after the value starting at `i`.
pub(crate) fn skip_value(doc: &[u8], i: usize) -> Option<usize> {
    match doc.get(i)? {
        b'"' => skip_string(doc, i),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut j = i;
            loop {
                match doc.get(j)? {
                    b'"' => {
                        j = skip_string(doc, j)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(j + 1);
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
        }
        _ => {
            let mut j = i;
            while let Some(b) = doc.get(j) {
                if matches!(b, b',' | b'}' | b']' | b' ' | b'\n' | b'\r' | b'\t') {
                    break;
                }
                j += 1;
            }
            (j > i).then_some(j)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `skip_string` as it was, a byte at a time: the reference.
    fn skip_string_bytewise(doc: &[u8], mut i: usize) -> Option<usize> {
        i += 1;
        loop {
            match doc.get(i)? {
                b'"' => return Some(i + 1),
                b'\\' => i += 2,
                _ => i += 1,
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn skip_string_matches_a_byte_loop(
            doc in proptest::collection::vec(proptest::prop_oneof![
                proptest::strategy::Just(b'"'), proptest::strategy::Just(b'\\'), proptest::strategy::Just(0x01u8),
                proptest::strategy::Just(0xc3u8), b'a'..=b'z'], 0..70),
            start in 0usize..72,
        ) {
            proptest::prop_assert_eq!(skip_string(&doc, start), skip_string_bytewise(&doc, start));
        }
    }

    fn rewrite(doc: &str, m: &str) -> Option<String> {
        rewrite_model(doc.as_bytes(), m).map(|b| String::from_utf8(b).unwrap())
    }

    #[test]
    fn blanks_a_top_level_member_and_its_comma() {
        let blank = |doc: &str| {
            let mut bytes = doc.as_bytes().to_vec();
            (blank_member(&mut bytes, "models") > 0).then(|| String::from_utf8(bytes).unwrap())
        };
        assert_eq!(blank(r#"{"models":["a"],"model":"m"}"#).unwrap(), r#"{               "model":"m"}"#);
        let out = blank(r#"{"model":"m", "models" : ["a"] }"#).unwrap();
        assert_eq!((out.len(), out.replace(' ', "")), (32, r#"{"model":"m"}"#.to_string()));
        assert_eq!(blank(r#"{"models":[]}"#).unwrap(), r#"{           }"#);
        assert!(
            blank(r#"{"mod\u0065ls":["x"],"model":"m"}"#).unwrap().starts_with(r#"{                    "model""#),
            "as a provider reads the key"
        );
        assert_eq!(blank(r#"{"model":"m","messages":[{"models":["x"]}]}"#), None, "only the top level");
        for doc in
            [r#"{"models":["a"],"model":"m"}"#, r#"{"a":1,"models":["a"]}"#, r#"{"a":1,"models":{"b":[1,"]"]},"b":2}"#]
        {
            let out = blank(doc).unwrap();
            assert_eq!(out.len(), doc.len(), "{doc}");
            let v: serde_json::Value = serde_json::from_str(&out).unwrap();
            assert!(v.get("models").is_none(), "{doc}");
        }
    }

    #[test]
    fn blanks_every_copy_a_provider_could_read() {
        for doc in [
            r#"{"model":"m","models":[],"models":["x"]}"#,
            r#"{"model":"m","models":["a"],"mod\u0065ls":["x"]}"#,
            r#"{"model":"m","Models":["x"]}"#,
            r#"{"MODELS":["x"],"model":"m","models":[]}"#,
            r#"{"model":"m","model\u017F":["x"]}"#,
            r#"{"models":1,"models":2}"#,
            r#"{"a":1,"models":1,"b":2,"models":2}"#,
            r#"{"a":1,"models":1,"models":2}"#,
            r#"{"a":1 , "models":1 ,"Models" : 2 }"#,
        ] {
            let mut b = doc.as_bytes().to_vec();
            assert!(blank_member(&mut b, "models") > 0, "{doc}");
            let out = String::from_utf8(b).unwrap();
            assert_eq!(out.len(), doc.len());
            let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{doc} -> {out}: {e}"));
            assert!(
                v.as_object().unwrap().keys().all(|k| !k.to_lowercase().starts_with("model") || k == "model"),
                "{out}"
            );
        }
    }

    #[test]
    fn rewrites_only_the_top_level_model() {
        let doc = r#"{"messages":[{"role":"user","content":"say \"model\": x","model":"inner"}],"model" : "openai/gpt-4o","stream":true}"#;
        let out = rewrite(doc, "gpt-4o").unwrap();
        assert_eq!(out, doc.replace(r#""openai/gpt-4o""#, r#""gpt-4o""#));
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["messages"][0]["model"], "inner");
    }

    #[test]
    fn escapes_and_nesting() {
        let doc = "{\"a\":{\"b\":[1,{\"model\":2}],\"c\":\"}\\\"\"},\n \"model\":\"x\\\"y\"}";
        assert_eq!(rewrite(doc, "z").unwrap(), "{\"a\":{\"b\":[1,{\"model\":2}],\"c\":\"}\\\"\"},\n \"model\":\"z\"}");
    }

    #[test]
    fn an_escaped_key_is_the_model() {
        assert_eq!(rewrite(r#"{"mod\u0065l":"openai/x"}"#, "x").unwrap(), r#"{"mod\u0065l":"x"}"#);
        assert_eq!(rewrite(r#"{"mo\"del":"a"}"#, "x"), None);
    }

    #[test]
    fn absent_or_not_an_object() {
        assert_eq!(rewrite(r#"{"messages":[]}"#, "x"), None);
        assert_eq!(rewrite(r#"["model"]"#, "x"), None);
        assert_eq!(rewrite("", "x"), None);
        assert_eq!(rewrite(r#"{"model":"#, "x"), None);
        assert_eq!(rewrite(r#"{"model":"unterminated}"#, "x"), None);
    }

    #[test]
    fn never_panics_on_junk() {
        for junk in ["{", "{\"", "{\"a\"", "{\"a\":", "{\"a\":[", "{\"a\":\"\\", "}}}}", "{\"a\":]]]", "{,,,}"] {
            let _ = rewrite(junk, "x");
        }
    }
}
