//! What keygate needs from a request body: the top-level `model` and the
//! output limit, read in one validating pass over the bytes. No tree is built
//! and string contents (the bulk of a prompt) are skipped eight bytes at a time,
//! so the cost stays small as prompts grow; Envoy's `json_to_metadata` builds a
//! full tree and costs about 5 µs per KiB (see the README's benchmark).
//!
//! The body counts as JSON only if all of it is: bad UTF-8, a stray byte after
//! the document or a malformed number is `InvalidJson`, so that nothing a
//! provider would parse differently gets through.

use crate::decide::ModelField;

/// Output-limit fields, in the order their value is taken (first present wins).
const LIMIT_KEYS: [&str; 3] = ["max_tokens", "max_completion_tokens", "max_output_tokens"];
/// Nesting deeper than this is refused (as serde_json does).
const MAX_DEPTH: usize = 128;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BodyFacts {
    pub model: ModelField,
    /// `max_tokens` (or its kin) when it is a non-negative number.
    pub max_tokens: Option<u64>,
}

/// Reads a complete request body.
pub fn read(doc: &[u8]) -> BodyFacts {
    let invalid = BodyFacts { model: ModelField::InvalidJson, max_tokens: None };
    if std::str::from_utf8(doc).is_err() {
        return invalid;
    }
    let mut s = Scanner { doc, i: 0 };
    s.ws();
    let facts = if s.peek() == Some(b'{') { s.top_object() } else { s.value(0).map(|_| None) };
    s.ws();
    match facts {
        Ok(_) if s.i != doc.len() => invalid,
        Ok(Some(facts)) => facts,
        // Valid JSON, but not an object: it names no model.
        Ok(None) => BodyFacts { model: ModelField::Absent, max_tokens: None },
        Err(()) => invalid,
    }
}

struct Scanner<'a> {
    doc: &'a [u8],
    i: usize,
}

type Scan<T> = Result<T, ()>;

impl<'a> Scanner<'a> {
    fn peek(&self) -> Option<u8> {
        self.doc.get(self.i).copied()
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\n' | b'\r' | b'\t')) {
            self.i += 1;
        }
    }

    fn eat(&mut self, b: u8) -> Scan<()> {
        if self.peek() == Some(b) {
            self.i += 1;
            Ok(())
        } else {
            Err(())
        }
    }

    /// The top-level object: every member is validated, the ones we read are kept.
    fn top_object(&mut self) -> Scan<Option<BodyFacts>> {
        self.eat(b'{')?;
        let mut model: Option<ModelField> = None;
        let mut limits: [Option<Option<u64>>; 3] = [None; 3];
        self.ws();
        if self.peek() == Some(b'}') {
            self.i += 1;
            return Ok(Some(BodyFacts { model: ModelField::Absent, max_tokens: None }));
        }
        loop {
            self.ws();
            let key = self.string()?;
            self.ws();
            self.eat(b':')?;
            self.ws();
            let start = self.i;
            self.value(1)?;
            let raw = self.doc.get(start..self.i).ok_or(())?;
            let key = unescape(key)?;
            if key == "model" {
                // A second `model` could be read differently upstream: refuse it.
                model = Some(if model.is_some() { ModelField::Repeated } else { model_value(raw) });
            } else if let Some(slot) = LIMIT_KEYS.iter().position(|k| *k == key).and_then(|n| limits.get_mut(n)) {
                *slot = Some(count(raw));
            }
            self.ws();
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b'}') => {
                    self.i += 1;
                    break;
                }
                _ => return Err(()),
            }
        }
        Ok(Some(BodyFacts {
            model: model.unwrap_or(ModelField::Absent),
            max_tokens: limits.iter().flatten().next().copied().flatten(),
        }))
    }

    fn value(&mut self, depth: usize) -> Scan<()> {
        if depth > MAX_DEPTH {
            return Err(());
        }
        match self.peek().ok_or(())? {
            b'"' => self.string().map(|_| ()),
            b'{' => {
                self.i += 1;
                self.ws();
                if self.peek() == Some(b'}') {
                    self.i += 1;
                    return Ok(());
                }
                loop {
                    self.ws();
                    self.string()?;
                    self.ws();
                    self.eat(b':')?;
                    self.ws();
                    self.value(depth + 1)?;
                    self.ws();
                    match self.peek() {
                        Some(b',') => self.i += 1,
                        Some(b'}') => {
                            self.i += 1;
                            return Ok(());
                        }
                        _ => return Err(()),
                    }
                }
            }
            b'[' => {
                self.i += 1;
                self.ws();
                if self.peek() == Some(b']') {
                    self.i += 1;
                    return Ok(());
                }
                loop {
                    self.ws();
                    self.value(depth + 1)?;
                    self.ws();
                    match self.peek() {
                        Some(b',') => self.i += 1,
                        Some(b']') => {
                            self.i += 1;
                            return Ok(());
                        }
                        _ => return Err(()),
                    }
                }
            }
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            _ => self.number(),
        }
    }

    fn literal(&mut self, word: &[u8]) -> Scan<()> {
        if self.doc.get(self.i..self.i + word.len()) == Some(word) {
            self.i += word.len();
            Ok(())
        } else {
            Err(())
        }
    }

    /// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`
    fn number(&mut self) -> Scan<()> {
        let _ = self.eat(b'-');
        match self.peek() {
            Some(b'0') => self.i += 1,
            Some(b'1'..=b'9') => self.digits(),
            _ => return Err(()),
        }
        if self.eat(b'.').is_ok() {
            self.need_digits()?;
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.i += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.i += 1;
            }
            self.need_digits()?;
        }
        Ok(())
    }

    fn digits(&mut self) {
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.i += 1;
        }
    }

    fn need_digits(&mut self) -> Scan<()> {
        let start = self.i;
        self.digits();
        if self.i == start {
            Err(())
        } else {
            Ok(())
        }
    }

    /// A string at `i`; returns its raw bytes, quotes included.
    fn string(&mut self) -> Scan<&'a [u8]> {
        let start = self.i;
        self.eat(b'"')?;
        loop {
            self.skip_plain();
            match self.peek().ok_or(())? {
                b'"' => {
                    self.i += 1;
                    return self.doc.get(start..self.i).ok_or(());
                }
                b'\\' => {
                    self.i += 1;
                    match self.peek().ok_or(())? {
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => self.i += 1,
                        b'u' => {
                            let hex = self.doc.get(self.i + 1..self.i + 5).ok_or(())?;
                            if !hex.iter().all(u8::is_ascii_hexdigit) {
                                return Err(());
                            }
                            self.i += 5;
                        }
                        _ => return Err(()),
                    }
                }
                _ => return Err(()), // a control character
            }
        }
    }

    /// Skips string content up to the next quote, backslash or control
    /// character, eight bytes at a time where it can.
    fn skip_plain(&mut self) {
        const ONES: u64 = 0x0101_0101_0101_0101;
        const HIGH: u64 = 0x8080_8080_8080_8080;
        // Bytes < 0x20, == '"', == '\\' set their high bit in `hit` (exact for
        // ASCII; a byte >= 0x80 only ever stops the word early, never passes).
        let special = |w: u64| {
            let lt = w.wrapping_sub(ONES * 0x20);
            let q = (w ^ (ONES * u64::from(b'"'))).wrapping_sub(ONES);
            let b = (w ^ (ONES * u64::from(b'\\'))).wrapping_sub(ONES);
            (lt | q | b) & !w & HIGH
        };
        while let Some(chunk) = self.doc.get(self.i..self.i + 8) {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            let w = u64::from_le_bytes(word);
            if special(w) != 0 || w & HIGH != 0 {
                break;
            }
            self.i += 8;
        }
        while let Some(b) = self.peek() {
            if b == b'"' || b == b'\\' || b < 0x20 {
                return;
            }
            self.i += 1;
        }
    }
}

/// A key (raw, with quotes) as text: escapes are decoded, so that a key written
/// as `"mod\u0065l"` is `model`, as a provider would read it.
fn unescape(raw: &[u8]) -> Scan<std::borrow::Cow<'_, str>> {
    let inner = raw.get(1..raw.len().saturating_sub(1)).ok_or(())?;
    if !inner.contains(&b'\\') {
        return std::str::from_utf8(inner).map(std::borrow::Cow::Borrowed).map_err(|_| ());
    }
    serde_json::from_slice::<String>(raw).map(std::borrow::Cow::Owned).map_err(|_| ())
}

fn model_value(raw: &[u8]) -> ModelField {
    if raw.first() != Some(&b'"') {
        return ModelField::NotString;
    }
    match unescape(raw) {
        Ok(s) if !s.chars().any(char::is_control) => ModelField::Str(s.into_owned()),
        _ => ModelField::NotString,
    }
}

/// A token limit: the integer part of a non-negative number (`None` for other
/// values, and for exponent forms, which leave the default estimate).
fn count(raw: &[u8]) -> Option<u64> {
    let whole = raw.split(|b| *b == b'.').next()?;
    if whole.is_empty() || !whole.iter().all(u8::is_ascii_digit) {
        return None;
    }
    if raw.iter().any(|b| matches!(b, b'e' | b'E')) {
        return None;
    }
    Some(std::str::from_utf8(whole).ok()?.parse::<u64>().unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(doc: &str) -> ModelField {
        read(doc.as_bytes()).model
    }

    #[test]
    fn reads_the_top_level_model_and_limit() {
        let f =
            read(br#"{"messages":[{"role":"user","content":"hi \"model\": \"x\""}],"model":"gpt-4o","max_tokens":64}"#);
        assert_eq!(f, BodyFacts { model: ModelField::Str("gpt-4o".into()), max_tokens: Some(64) });
        // A nested `model` (e.g. in a tool's schema) is not the request's.
        let f = read(br#"{"tools":[{"parameters":{"model":"evil"}}],"model":"m"}"#);
        assert_eq!(f.model, ModelField::Str("m".into()));
        assert_eq!(model(r#"{"messages":[]}"#), ModelField::Absent);
        assert_eq!(model(r#" {} "#), ModelField::Absent);
        assert_eq!(model("[1, 2]"), ModelField::Absent);
    }

    #[test]
    fn escapes_are_read_as_a_provider_reads_them() {
        assert_eq!(model(r#"{"mod\u0065l":"gpt\u002d4o"}"#), ModelField::Str("gpt-4o".into()));
        assert_eq!(model(r#"{"model":"a\u0001b"}"#), ModelField::NotString);
        assert_eq!(model(r#"{"model":"openai\/gpt-4o"}"#), ModelField::Str("openai/gpt-4o".into()));
    }

    #[test]
    fn non_strings_and_repeats_are_not_a_model() {
        for doc in
            [r#"{"model":42}"#, r#"{"model":true}"#, r#"{"model":null}"#, r#"{"model":{"a":1}}"#, r#"{"model":["x"]}"#]
        {
            assert_eq!(model(doc), ModelField::NotString, "{doc}");
        }
        assert_eq!(model(r#"{"model":"a","model":"b"}"#), ModelField::Repeated);
        assert_eq!(model(r#"{"model":"a","mod\u0065l":"b"}"#), ModelField::Repeated);
    }

    #[test]
    fn anything_that_is_not_json_is_invalid() {
        for doc in [
            "",
            "   ",
            "{not json",
            "[1,",
            r#"{"model":"a"} x"#,
            r#"{"model":"a",}"#,
            r#"{"model":"a" "x":1}"#,
            r#"{"model":"a","n":01}"#,
            r#"{"model":"a","n":1.}"#,
            r#"{"model":"a","n":-}"#,
            r#"{"model":"a","n":tru}"#,
            r#"{"model":"a","s":"\x"}"#,
            r#"{"model":"a","s":"\u12"}"#,
            "{\"model\":\"a\",\"s\":\"tab\there\"}",
            r#"{"model":"unterminated}"#,
        ] {
            assert_eq!(model(doc), ModelField::InvalidJson, "{doc:?}");
        }
        assert_eq!(read(b"{\"model\":\"\xff\"}").model, ModelField::InvalidJson);
        let deep = format!("{{\"a\":{}{}}}", "[".repeat(200), "]".repeat(200));
        assert_eq!(model(&deep), ModelField::InvalidJson);
        let ok = format!("{{\"a\":{}{},\"model\":\"m\"}}", "[".repeat(100), "]".repeat(100));
        assert_eq!(model(&ok), ModelField::Str("m".into()));
    }

    #[test]
    fn valid_documents_of_every_shape_pass() {
        let doc = r#"{"a":[1,-2,3.5,-0.5e-3,1E+9,true,false,null,{},[],"\"\\\/\b\f\n\r\t\u00e9",{"b":{"c":[]}}],
            "model" : "m" , "max_completion_tokens": 12.9, "é": "ünïcödé 😀"}"#;
        assert_eq!(read(doc.as_bytes()), BodyFacts { model: ModelField::Str("m".into()), max_tokens: Some(12) });
    }

    #[test]
    fn limits_take_the_first_kind_present() {
        assert_eq!(read(br#"{"max_output_tokens":5,"max_tokens":7}"#).max_tokens, Some(7));
        assert_eq!(read(br#"{"max_output_tokens":5}"#).max_tokens, Some(5));
        assert_eq!(read(br#"{"max_tokens":-5,"max_output_tokens":5}"#).max_tokens, None);
        assert_eq!(read(br#"{"max_tokens":"5"}"#).max_tokens, None);
        assert_eq!(read(br#"{"max_tokens":1e3}"#).max_tokens, None);
    }

    #[test]
    fn long_strings_are_skipped_word_by_word_without_missing_a_quote() {
        for pad in 0..20 {
            let filler = "x".repeat(pad);
            let doc = format!(r#"{{"p":"{filler}\"{filler}é{filler}","model":"m{filler}"}}"#);
            assert_eq!(model(&doc), ModelField::Str(format!("m{filler}")), "pad {pad}");
        }
    }
}
