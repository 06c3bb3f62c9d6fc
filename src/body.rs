//! What keygate needs from a request body: the top-level `model` and the
//! output limit, read in one validating pass as the chunks pass by. No tree is
//! built and nothing is kept but the parser's state, so memory does not grow
//! with the body; string contents (the bulk of a prompt) are skipped sixteen
//! bytes at a time (`scan`). Envoy's `json_to_metadata` builds a full tree and costs
//! about 5 µs per KiB (see the README's benchmark).
//!
//! The body counts as JSON only if all of it is: bad UTF-8, a stray byte after
//! the document or a malformed number is `InvalidJson`, so that nothing a
//! provider would parse differently gets through.

use crate::decide::ModelField;

/// Output-limit fields: the estimate takes the largest of those present
/// (compared without regard to case, as some providers' JSON parsers match
/// keys). Beyond OpenAI's and Anthropic's, the names OpenAI-compatible
/// servers also honour (llama.cpp, Ollama, text-generation-inference).
const LIMIT_KEYS: [&str; 7] = [
    "max_tokens",
    "max_completion_tokens",
    "max_output_tokens",
    "max_tokens_to_sample",
    "n_predict",
    "num_predict",
    "max_new_tokens",
];
/// Fields that multiply the output (`n` choices, `best_of` candidates).
const CHOICE_KEYS: [&str; 2] = ["n", "best_of"];
/// Nesting deeper than this is refused (as serde_json does).
const MAX_DEPTH: usize = 128;
/// Most fallback models a request may list (`models`).
pub const MAX_FALLBACKS: usize = 8;

/// The request's fallback models (`"models": [...]`, tried in order after
/// `model`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Fallbacks {
    #[default]
    None,
    List(Vec<String>),
    /// Not an array of at most `MAX_FALLBACKS` model names, or named twice.
    Malformed,
    /// A top-level key that is `models` but for case: a provider matching
    /// keys without regard to case could read it (and it would not be
    /// checked or removed).
    CaseVariant,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BodyFacts {
    pub model: ModelField,
    /// The largest output limit (`max_tokens` or its kin) that is a
    /// non-negative number, or a string holding one (lenient parsers read those).
    pub max_tokens: Option<u64>,
    /// The largest of `n` and `best_of` (1 without them): outputs per request.
    pub choices: u64,
    /// The body contains a well-formed keygate token (found by the body filter).
    pub access_key: bool,
    /// `"stream": true` at the top level.
    pub stream: bool,
    /// A top-level `stream_options` (the client chose its stream's options).
    pub stream_options: bool,
    /// An output-limit or multiplier field whose value is not a count (`-1`,
    /// `null`, a word): some servers read those as "no limit".
    pub unclear_limit: bool,
    pub fallbacks: Fallbacks,
}

impl BodyFacts {
    /// A request without a readable body.
    pub fn of(model: ModelField) -> BodyFacts {
        BodyFacts {
            model,
            max_tokens: None,
            choices: 1,
            access_key: false,
            stream: false,
            stream_options: false,
            unclear_limit: false,
            fallbacks: Fallbacks::None,
        }
    }
}

/// Reads a complete request body (one chunk).
pub fn read(doc: &[u8]) -> BodyFacts {
    let mut r = BodyReader::default();
    r.feed(doc);
    r.finish()
}

/// Reads a body chunk by chunk, keeping only the parser's state and the few
/// bytes it captures (a top-level key, the `model` value, a limit): memory does
/// not grow with the body, and nothing is copied but each chunk into the VM.
#[derive(Default)]
pub struct BodyReader {
    /// Open containers, `{` or `[`.
    stack: Vec<u8>,
    mode: Mode,
    invalid: bool,
    /// The document is an object (only then can it name a model).
    object: bool,
    /// The first bytes of a UTF-8 sequence cut by a chunk boundary.
    utf8: Vec<u8>,
    capture: Capture,
    key: Vec<u8>,
    /// What the value being read is for, and its raw bytes.
    want: Want,
    value: Vec<u8>,
    model: Option<ModelField>,
    /// A top-level key equal to `model` but for case (`MODEL`, `Model`).
    case_variant: bool,
    max_tokens: Option<u64>,
    choices: Option<u64>,
    stream: bool,
    stream_options: bool,
    unclear_limit: bool,
    fallbacks: Fallbacks,
}

#[derive(Default, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// A value (document start, after `:`, after `,` in an array).
    #[default]
    Value,
    /// After `[`: a value or `]`.
    FirstElement,
    /// After `{`: a key or `}`.
    FirstKey,
    /// After `,` in an object.
    Key,
    Colon,
    /// After a value: `,`, or the end of its container.
    AfterValue,
    Str {
        key: bool,
        esc: Esc,
    },
    Num(Num),
    Lit {
        word: &'static [u8],
        at: usize,
    },
    /// The document is complete: only whitespace may follow.
    Done,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Esc {
    No,
    Backslash,
    Hex(u8),
}

/// Where a number is in `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Num {
    Minus,
    Zero,
    Int,
    Dot,
    Frac,
    Exp,
    ExpSign,
    ExpDigits,
}

impl Num {
    fn next(self, b: u8) -> Option<Num> {
        use Num::*;
        match (self, b) {
            (Minus, b'0') => Some(Zero),
            (Minus, b'1'..=b'9') | (Int, b'0'..=b'9') => Some(Int),
            (Zero | Int, b'.') => Some(Dot),
            (Dot | Frac, b'0'..=b'9') => Some(Frac),
            (Zero | Int | Frac, b'e' | b'E') => Some(Exp),
            (Exp, b'+' | b'-') => Some(ExpSign),
            (Exp | ExpSign | ExpDigits, b'0'..=b'9') => Some(ExpDigits),
            _ => None,
        }
    }

    fn complete(self) -> bool {
        matches!(self, Num::Zero | Num::Int | Num::Frac | Num::ExpDigits)
    }
}

#[derive(Default, Clone, Copy, PartialEq, Eq)]
enum Capture {
    #[default]
    None,
    Key,
    Value,
}

#[derive(Default, Clone, Copy, PartialEq, Eq)]
enum Want {
    #[default]
    None,
    Model,
    Limit,
    Choices,
    Stream,
    Models,
}

/// Longest raw key kept: an escaped `max_completion_tokens` fits many times.
const MAX_KEY: usize = 256;
/// Longest raw `model` value kept; a longer one is not a model name.
const MAX_MODEL: usize = 4096;
const MAX_LIMIT: usize = 64;
/// Longest raw `models` value kept (its names, without whitespace).
const MAX_MODELS: usize = MAX_FALLBACKS * (crate::decide::MAX_MODEL_NAME + 8);

impl BodyReader {
    pub fn feed(&mut self, chunk: &[u8]) {
        if self.invalid || !self.utf8_ok(chunk) {
            self.invalid = true;
            return;
        }
        if self.scan(chunk).is_err() {
            self.invalid = true;
        }
    }

    /// The body ended. The reader is then as new, with its buffers kept
    /// for another body (the worker keeps one: `Worker::spare_reader`).
    pub fn finish(&mut self) -> BodyFacts {
        let facts = self.facts();
        let keep = |v: &mut Vec<u8>| {
            let mut v = std::mem::take(v);
            v.clear();
            v
        };
        let (stack, utf8, key, value) =
            (keep(&mut self.stack), keep(&mut self.utf8), keep(&mut self.key), keep(&mut self.value));
        *self = BodyReader { stack, utf8, key, value, ..BodyReader::default() };
        facts
    }

    fn facts(&mut self) -> BodyFacts {
        if let Mode::Num(n) = self.mode {
            if n.complete() {
                self.value_done(); // a number at the very end of the document
            }
        }
        if self.invalid || !self.utf8.is_empty() || self.mode != Mode::Done {
            return BodyFacts::of(ModelField::InvalidJson);
        }
        if !self.object {
            // Valid JSON, but not an object: it names no model.
            return BodyFacts::of(ModelField::Absent);
        }
        let model = match self.model.take() {
            Some(ModelField::Repeated) => ModelField::Repeated,
            _ if self.case_variant => ModelField::CaseVariant,
            m => m.unwrap_or(ModelField::Absent),
        };
        BodyFacts {
            model,
            max_tokens: self.max_tokens,
            choices: self.choices.unwrap_or(1).max(1),
            access_key: false,
            stream: self.stream,
            stream_options: self.stream_options,
            unclear_limit: self.unclear_limit,
            fallbacks: std::mem::take(&mut self.fallbacks),
        }
    }

    /// UTF-8 across chunks: a sequence cut by a boundary is completed from the
    /// next chunk before the rest of it is checked.
    fn utf8_ok(&mut self, mut chunk: &[u8]) -> bool {
        if let Some(&lead) = self.utf8.first() {
            let len = match lead {
                0xc0..=0xdf => 2,
                0xe0..=0xef => 3,
                _ => 4,
            };
            let take = (len - self.utf8.len()).min(chunk.len());
            self.utf8.extend_from_slice(chunk.get(..take).unwrap_or_default());
            chunk = chunk.get(take..).unwrap_or_default();
            if self.utf8.len() < len {
                return true; // still cut
            }
            if std::str::from_utf8(&self.utf8).is_err() {
                return false;
            }
            self.utf8.clear();
        }
        // An ASCII run is UTF-8 as it is: only the rest is checked.
        let rest = chunk.get(crate::scan::ascii_head(chunk)..).unwrap_or_default();
        match std::str::from_utf8(rest) {
            Ok(_) => true,
            // Cut at the end of the chunk: kept for the next one.
            Err(e) if e.error_len().is_none() => {
                self.utf8.extend_from_slice(rest.get(e.valid_up_to()..).unwrap_or_default());
                true
            }
            Err(_) => false,
        }
    }

    #[inline]
    fn cap(&mut self, bytes: &[u8]) {
        if self.capture == Capture::None {
            return;
        }
        let (buf, max) = match (self.capture, self.want) {
            (Capture::Key, _) => (&mut self.key, MAX_KEY),
            (Capture::Value, Want::Model) => (&mut self.value, MAX_MODEL),
            (Capture::Value, Want::Models) => (&mut self.value, MAX_MODELS),
            (Capture::Value, _) => (&mut self.value, MAX_LIMIT),
            (Capture::None, _) => return,
        };
        // Past its bound a capture keeps its first bytes, which tell a model
        // that is not a string; a longer string is not a model name either.
        let room = (max + 1).saturating_sub(buf.len()).min(bytes.len());
        buf.extend_from_slice(bytes.get(..room).unwrap_or_default());
    }

    fn push(&mut self, open: u8) -> Scan<()> {
        if self.stack.len() >= MAX_DEPTH {
            return Err(());
        }
        if self.stack.is_empty() && open == b'{' {
            self.object = true;
        }
        self.stack.push(open);
        Ok(())
    }

    fn close(&mut self, close: u8) -> Scan<()> {
        match (self.stack.pop(), close) {
            (Some(b'{'), b'}') | (Some(b'['), b']') => {
                self.value_done();
                Ok(())
            }
            _ => Err(()),
        }
    }

    /// A value is complete: a member of the top-level object may be done.
    fn value_done(&mut self) {
        if self.capture == Capture::Value && self.stack.len() == 1 {
            // Taken, then given back empty: its capacity serves the next value.
            let mut raw = std::mem::take(&mut self.value);
            match self.want {
                Want::Model => {
                    // A second `model` could be read differently upstream: refuse it.
                    let m = if raw.len() > MAX_MODEL { ModelField::NotString } else { model_value(&raw) };
                    self.model = Some(if self.model.is_some() { ModelField::Repeated } else { m });
                }
                Want::Limit => {
                    let n = if raw.len() > MAX_LIMIT { None } else { count(&raw) };
                    self.unclear_limit |= n.is_none();
                    self.max_tokens = self.max_tokens.max(n);
                }
                Want::Choices => {
                    let n = if raw.len() > MAX_LIMIT { None } else { count(&raw) };
                    self.unclear_limit |= n.is_none();
                    self.choices = self.choices.max(n);
                }
                // Providers read JSON keys exactly: only `true` streams.
                Want::Stream => self.stream = raw == b"true",
                Want::Models => {
                    self.fallbacks = match self.fallbacks {
                        Fallbacks::None if raw.len() <= MAX_MODELS => fallback_list(&raw),
                        Fallbacks::CaseVariant => Fallbacks::CaseVariant,
                        _ => Fallbacks::Malformed,
                    }
                }
                Want::None => {}
            }
            raw.clear();
            self.value = raw;
            self.capture = Capture::None;
            self.want = Want::None;
        }
        self.mode = if self.stack.is_empty() { Mode::Done } else { Mode::AfterValue };
    }

    /// A key of the top-level object is complete: is it one we read?
    fn key_done(&mut self) {
        // Taken, then given back empty: its capacity serves the next key.
        let mut raw = std::mem::take(&mut self.key);
        self.capture = Capture::None;
        let key = if raw.len() <= MAX_KEY { unescape(&raw).ok() } else { None };
        // Go's encoding/json matches keys by `ToUpper(ToLower(r))`: the Kelvin
        // sign folds to `k`, the long s to `s`, and the dotless and dotted
        // capital I (U+0131, U+0130) to `i`: so does this comparison.
        let folded = key.as_deref().map(|k| {
            if k.is_ascii() {
                std::borrow::Cow::Borrowed(k)
            } else {
                std::borrow::Cow::Owned(
                    k.replace('\u{212A}', "k").replace('\u{17F}', "s").replace(['\u{131}', '\u{130}'], "i"),
                )
            }
        });
        let is = |names: &[&str]| folded.as_deref().is_some_and(|k| names.iter().any(|n| n.eq_ignore_ascii_case(k)));
        self.want = if key.as_deref() == Some("model") {
            Want::Model
        } else if is(&["model"]) {
            self.case_variant = true;
            Want::None
        } else if is(&LIMIT_KEYS) {
            Want::Limit
        } else if is(&CHOICE_KEYS) {
            Want::Choices
        } else if key.as_deref() == Some("stream") {
            Want::Stream
        } else if key.as_deref() == Some("models") {
            Want::Models
        } else if is(&["models"]) {
            self.fallbacks = Fallbacks::CaseVariant;
            Want::None
        } else {
            if key.as_deref() == Some("stream_options") {
                self.stream_options = true;
            }
            Want::None
        };
        raw.clear();
        self.key = raw;
    }

    fn scan(&mut self, c: &[u8]) -> Scan<()> {
        let mut i = 0;
        while let Some(&b) = c.get(i) {
            let ws = matches!(b, b' ' | b'\n' | b'\r' | b'\t');
            match self.mode {
                Mode::Done if ws => i += 1,
                Mode::Done => return Err(()),
                Mode::Value | Mode::FirstElement if ws => i += 1,
                Mode::FirstElement if b == b']' => {
                    self.cap(&[b]);
                    self.close(b)?;
                    i += 1;
                }
                Mode::Value | Mode::FirstElement => {
                    if self.want != Want::None && self.stack.len() == 1 {
                        self.capture = Capture::Value;
                    }
                    self.cap(&[b]);
                    self.mode = match b {
                        b'"' => Mode::Str { key: false, esc: Esc::No },
                        b'{' => {
                            self.push(b)?;
                            Mode::FirstKey
                        }
                        b'[' => {
                            self.push(b)?;
                            Mode::FirstElement
                        }
                        b't' => Mode::Lit { word: b"true", at: 1 },
                        b'f' => Mode::Lit { word: b"false", at: 1 },
                        b'n' => Mode::Lit { word: b"null", at: 1 },
                        b'-' => Mode::Num(Num::Minus),
                        b'0' => Mode::Num(Num::Zero),
                        b'1'..=b'9' => Mode::Num(Num::Int),
                        _ => return Err(()),
                    };
                    i += 1;
                }
                Mode::FirstKey | Mode::Key | Mode::Colon | Mode::AfterValue if ws => i += 1,
                Mode::FirstKey if b == b'}' => {
                    self.cap(&[b]);
                    self.close(b)?;
                    i += 1;
                }
                Mode::FirstKey | Mode::Key => {
                    if b != b'"' {
                        return Err(());
                    }
                    if self.stack.len() == 1 {
                        self.capture = Capture::Key;
                    }
                    self.cap(&[b]);
                    self.mode = Mode::Str { key: true, esc: Esc::No };
                    i += 1;
                }
                Mode::Colon => {
                    if b != b':' {
                        return Err(());
                    }
                    self.cap(&[b]);
                    self.mode = Mode::Value;
                    i += 1;
                }
                Mode::AfterValue => {
                    // (Inside a captured container: its commas and closing.)
                    self.cap(&[b]);
                    match (b, self.stack.last()) {
                        (b',', Some(b'{')) => self.mode = Mode::Key,
                        (b',', Some(b'[')) => self.mode = Mode::Value,
                        (b'}' | b']', _) => self.close(b)?,
                        _ => return Err(()),
                    }
                    i += 1;
                }
                Mode::Str { key, esc: Esc::No } => {
                    // Plain runs and two-byte escapes stay in this loop; `\u`,
                    // the closing quote and anything cut by the chunk's end
                    // go through the state machine.
                    let mut end = crate::scan::plain_end(c, i);
                    while c.get(end) == Some(&b'\\')
                        && matches!(c.get(end + 1), Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't'))
                    {
                        end = crate::scan::plain_end(c, end + 2);
                    }
                    if self.capture != Capture::None {
                        self.cap(c.get(i..end).unwrap_or_default());
                    }
                    i = end;
                    let Some(&b) = c.get(i) else { break };
                    self.cap(&[b]);
                    i += 1;
                    match b {
                        b'"' if key => {
                            if self.capture == Capture::Key {
                                self.key_done();
                            }
                            self.mode = Mode::Colon;
                        }
                        b'"' => self.value_done(),
                        b'\\' => self.mode = Mode::Str { key, esc: Esc::Backslash },
                        _ => return Err(()), // a control character
                    }
                }
                Mode::Str { key, esc: Esc::Backslash } => {
                    let esc = match b {
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => Esc::No,
                        b'u' => Esc::Hex(0),
                        _ => return Err(()),
                    };
                    self.cap(&[b]);
                    self.mode = Mode::Str { key, esc };
                    i += 1;
                }
                Mode::Str { key, esc: Esc::Hex(n) } => {
                    if !b.is_ascii_hexdigit() {
                        return Err(());
                    }
                    self.cap(&[b]);
                    self.mode = Mode::Str { key, esc: if n == 3 { Esc::No } else { Esc::Hex(n + 1) } };
                    i += 1;
                }
                Mode::Num(mut n) => {
                    let start = i;
                    while let Some(next) = c.get(i).and_then(|&b| n.next(b)) {
                        n = next;
                        i += 1;
                    }
                    self.cap(c.get(start..i).unwrap_or_default());
                    self.mode = Mode::Num(n);
                    if i < c.len() {
                        // The byte after a number belongs to what follows it.
                        if !n.complete() {
                            return Err(());
                        }
                        self.value_done();
                    }
                }
                Mode::Lit { word, at } => {
                    if word.get(at) != Some(&b) {
                        return Err(());
                    }
                    self.cap(&[b]);
                    i += 1;
                    if at + 1 == word.len() {
                        self.value_done();
                    } else {
                        self.mode = Mode::Lit { word, at: at + 1 };
                    }
                }
            }
        }
        Ok(())
    }
}

type Scan<T> = Result<T, ()>;

/// A key (raw, with quotes) as text: escapes are decoded, so that a key written
/// as `"mod\u0065l"` is `model`, as a provider would read it.
pub(crate) fn unescape(raw: &[u8]) -> Scan<std::borrow::Cow<'_, str>> {
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

/// The `models` value (raw, whitespace left out): an array of at most
/// `MAX_FALLBACKS` strings without control characters.
fn fallback_list(raw: &[u8]) -> Fallbacks {
    match serde_json::from_slice::<Vec<String>>(raw) {
        Ok(list) if list.len() <= MAX_FALLBACKS && !list.iter().any(|m| m.chars().any(char::is_control)) => {
            Fallbacks::List(list)
        }
        _ => Fallbacks::Malformed,
    }
}

/// A count (token limit, choices) as a provider would read it: a
/// non-negative JSON number (`1e4` and `64.0` included, the integer part,
/// saturating), or a string holding one (lenient parsers such as Pydantic's
/// read `"5000"` as 5000). `None` for anything else.
fn count(raw: &[u8]) -> Option<u64> {
    let raw = match raw.strip_prefix(b"\"").and_then(|r| r.strip_suffix(b"\"")) {
        Some(inner) => inner,
        None => raw,
    };
    let text = std::str::from_utf8(raw).ok()?.trim();
    if text.bytes().all(|b| b.is_ascii_digit()) && !text.is_empty() {
        return Some(text.parse::<u64>().unwrap_or(u64::MAX));
    }
    let n: f64 = text.parse().ok()?;
    // `as` saturates: 1e30 reads as u64::MAX.
    (n.is_finite() && n >= 0.0).then_some(n as u64)
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
        assert_eq!((f.model, f.max_tokens, f.choices), (ModelField::Str("gpt-4o".into()), Some(64), 1));
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
        let f = read(doc.as_bytes());
        assert_eq!((f.model, f.max_tokens), (ModelField::Str("m".into()), Some(12)));
    }

    /// Found by the `body_reader` fuzz target: serde_json refuses a number
    /// beyond f64 (`8e818`) that JSON's grammar allows. The reader follows
    /// the grammar (a provider's parser may read it as infinity); what it
    /// must agree with serde_json on is `model`.
    #[test]
    fn numbers_beyond_f64_are_valid_json() {
        assert_eq!(model("8e818"), ModelField::Absent);
        assert_eq!(model(r#"{"t":8e818,"model":"m"}"#), ModelField::Str("m".into()));
        assert_eq!(read(br#"{"max_tokens":8e818}"#).max_tokens, None);
    }

    /// Found by the `model_rewrite` fuzz target: a lone surrogate escape is
    /// grammatical JSON that serde_json refuses (Python reads it, Go replaces
    /// it). In content the reader accepts it; a `model` holding one is not a
    /// model name any provider has.
    #[test]
    fn lone_surrogates_are_content_not_models() {
        assert_eq!(model(r#"{"content":"\ud83d","model":"m"}"#), ModelField::Str("m".into()));
        assert_eq!(model(r#"{"model":"gpt\ud800"}"#), ModelField::NotString);
        assert_eq!(model(r#"{"mod\ud800el":"x","model":"m"}"#), ModelField::Str("m".into()));
    }

    #[test]
    fn limits_take_the_largest_field_present() {
        assert_eq!(read(br#"{"max_output_tokens":5,"max_tokens":7}"#).max_tokens, Some(7));
        assert_eq!(read(br#"{"max_output_tokens":5}"#).max_tokens, Some(5));
        // The repro: max_tokens 10 beside max_completion_tokens 5000.
        assert_eq!(read(br#"{"max_tokens":10,"max_completion_tokens":5000}"#).max_tokens, Some(5000));
        assert_eq!(read(br#"{"max_tokens":10,"MAX_TOKENS":900}"#).max_tokens, Some(900));
        assert_eq!(read(br#"{"max_tokens":-5,"max_output_tokens":5}"#).max_tokens, Some(5));
        assert_eq!(read(br#"{"max_tokens":"5000"}"#).max_tokens, Some(5000));
        assert_eq!(read(br#"{"max_tokens":"lots"}"#).max_tokens, None);
        assert_eq!(read(br#"{"max_tokens":1e3}"#).max_tokens, Some(1000));
        assert_eq!(read(br#"{"max_tokens":2.5E1}"#).max_tokens, Some(25));
        assert_eq!(read(br#"{"max_tokens":1e400}"#).max_tokens, None);
        assert_eq!(read(br#"{"max_tokens":99999999999999999999999}"#).max_tokens, Some(u64::MAX));
        assert_eq!(read(br#"{"max_tokens":true}"#).max_tokens, None);
    }

    #[test]
    fn choices_multiply_the_output() {
        assert_eq!(read(br#"{"model":"m"}"#).choices, 1);
        assert_eq!(read(br#"{"n":4,"max_tokens":10}"#).choices, 4);
        assert_eq!(read(br#"{"n":2,"best_of":5}"#).choices, 5);
        assert_eq!(read(br#"{"n":0}"#).choices, 1);
        assert_eq!(read(br#"{"N":"3"}"#).choices, 3);
        assert_eq!(read(br#"{"x":{"n":9}}"#).choices, 1);
    }

    #[test]
    fn a_key_that_is_model_but_for_case_is_refused() {
        assert_eq!(model(r#"{"model":"allowed","MODEL":"forbidden"}"#), ModelField::CaseVariant);
        assert_eq!(model(r#"{"Model":"x"}"#), ModelField::CaseVariant);
        assert_eq!(model(r#"{"mod\u0045l":"x","model":"y"}"#), ModelField::CaseVariant);
        assert_eq!(model(r#"{"model":"a","model":"b","MODEL":"c"}"#), ModelField::Repeated);
        assert_eq!(model(r#"{"x":{"MODEL":"nested"},"model":"m"}"#), ModelField::Str("m".into()));
        assert_eq!(model(r#"{"models":["a"],"model":"m"}"#), ModelField::Str("m".into()));
    }

    /// Every document of these tests, valid or not, read in chunks of every
    /// size: the answer is the one-chunk answer (UTF-8 sequences, escapes,
    /// numbers and literals cut anywhere).
    #[test]
    fn chunking_never_changes_the_answer() {
        let docs: Vec<Vec<u8>> = [
            r#"{"messages":[{"role":"user","content":"hi \"model\": \"x\""}],"model":"gpt-4o","max_tokens":64}"#,
            r#"{"tools":[{"parameters":{"model":"evil"}}],"model":"m"}"#,
            r#"{"mod\u0065l":"gpt\u002d4o","max_completion_tokens":12.5e0}"#,
            r#"{"a":[1,-2,3.5,-0.5e-3,1E+9,true,false,null,{},[],"\"\\\/\b\f\n\r\t\u00e9"],"model":"m","é":"ünïcödé 😀"}"#,
            r#"{"model":"a","model":"b"}"#,
            r#"{"model":{"a":[1,2]},"max_tokens":3}"#,
            r#"{"model":"a","n":01}"#,
            r#"{"model":"a"} x"#,
            r#"{"model":"unterminated}"#,
            "[1, 2] ",
            " 42 ",
            "-",
            "",
            "{\"model\":\"\u{1F600}x\"}",
        ]
        .iter()
        .map(|d| d.as_bytes().to_vec())
        .chain([b"{\"model\":\"\xf0\x9f\x98\x80\",\"x\":\"\xe2\x82\"}".to_vec()])
        .collect();
        let first = docs.first().map(|d| read(d)).unwrap();
        assert_eq!((first.model, first.max_tokens), (ModelField::Str("gpt-4o".into()), Some(64)));
        assert_eq!(docs.last().map(|d| read(d).model).unwrap(), ModelField::InvalidJson, "a cut UTF-8 sequence");
        assert_eq!(read("{\"model\":\"\u{1F600}x\"}".as_bytes()).model, ModelField::Str("\u{1F600}x".into()));
        for doc in &docs {
            let whole = read(doc);
            for size in (1..=9).chain([64]) {
                let mut r = BodyReader::default();
                for chunk in doc.chunks(size) {
                    r.feed(chunk);
                }
                assert_eq!(r.finish(), whole, "{:?} in chunks of {size}", String::from_utf8_lossy(doc));
            }
        }
        // One reader for every document in turn (the worker reuses one):
        // each reads as with a new reader, whatever came before, cut or not.
        let mut reused = BodyReader::default();
        for doc in docs.iter().chain(docs.iter().rev()) {
            for chunk in doc.chunks(5) {
                reused.feed(chunk);
            }
            assert_eq!(reused.finish(), read(doc), "{:?} after others", String::from_utf8_lossy(doc));
        }
    }

    #[test]
    fn long_strings_are_skipped_word_by_word_without_missing_a_quote() {
        for pad in 0..20 {
            let filler = "x".repeat(pad);
            let doc = format!(r#"{{"p":"{filler}\"{filler}é{filler}","model":"m{filler}"}}"#);
            assert_eq!(model(&doc), ModelField::Str(format!("m{filler}")), "pad {pad}");
        }
    }

    #[test]
    fn fallback_models_are_read_as_a_list_of_names() {
        let list = |v: &[&str]| Fallbacks::List(v.iter().map(|s| s.to_string()).collect());
        assert_eq!(read(br#"{"model":"a"}"#).fallbacks, Fallbacks::None);
        assert_eq!(read(br#"{"model":"a","models":["b", "openai/c" ]}"#).fallbacks, list(&["b", "openai/c"]));
        assert_eq!(read(br#"{"models" : [ ] ,"model":"a"}"#).fallbacks, list(&[]));
        assert_eq!(
            read(br#"{"mod\u0065ls":["b\u0041"]}"#).fallbacks,
            list(&["bA"]),
            "escapes read as a provider would"
        );
        assert_eq!(read(br#"{"messages":[{"models":["x"]}]}"#).fallbacks, Fallbacks::None, "nested is not top-level");
        for bad in [
            &br#"{"models":"b"}"#[..],
            br#"{"models":["b",1]}"#,
            br#"{"models":[["b"]]}"#,
            br#"{"models":[{"b":"c"}]}"#,
            br#"{"models":null}"#,
            br#"{"models":["a"],"models":["b"]}"#,
            br#"{"models":["a\u0000"]}"#,
            br#"{"models":["1","2","3","4","5","6","7","8","9"]}"#,
        ] {
            assert_eq!(read(bad).fallbacks, Fallbacks::Malformed, "{}", String::from_utf8_lossy(bad));
        }
        let long = format!(r#"{{"models":["{}"]}}"#, "m".repeat(MAX_MODELS));
        assert_eq!(read(long.as_bytes()).fallbacks, Fallbacks::Malformed);
        assert_eq!(read(br#"{"MODELS":["b"]}"#).fallbacks, Fallbacks::CaseVariant);
        assert_eq!(read(br#"{"models":["a"],"Models":["b"]}"#).fallbacks, Fallbacks::CaseVariant);
        // Chunk boundaries anywhere read the same.
        let doc = br#"{"model":"a","models":["b","c\"d"],"max_tokens":5}"#;
        for cut in 0..doc.len() {
            let mut r = BodyReader::default();
            r.feed(&doc[..cut]);
            r.feed(&doc[cut..]);
            assert_eq!(r.finish().fallbacks, list(&["b", "c\"d"]), "cut at {cut}");
        }
    }

    #[test]
    fn stream_and_its_options_at_the_top_level() {
        let f = read(br#"{"model":"m","stream":true,"messages":[{"stream":false}]}"#);
        assert!(f.stream && !f.stream_options);
        assert!(!read(br#"{"model":"m","stream":"true"}"#).stream, "only the literal true streams");
        assert!(!read(br#"{"model":"m","Stream":true}"#).stream, "providers read keys exactly");
        assert!(!read(br#"{"model":"m","messages":[{"stream":true}]}"#).stream, "nested is not top-level");
        let f = read(br#"{"model":"m","stream":true,"stream_options":{"include_usage":false}}"#);
        assert!(f.stream && f.stream_options);
        assert!(read(br#"{"stream_options":null,"stream":true}"#).stream_options);
    }

    #[test]
    fn limits_a_server_reads_differently_are_noticed() {
        // Go folds the Kelvin sign to `k` and the long s to `s`.
        let f = read(br#"{"max_tokens":10,"max_to\u212Aens":1000000,"be\u017Ft_of":3}"#);
        assert_eq!((f.max_tokens, f.choices), (Some(1_000_000), 3));
        let f = read(br#"{"max_tokens":10,"n_predict":-1}"#);
        assert!(f.unclear_limit, "-1 is `no limit` to llama.cpp");
        assert_eq!(read(br#"{"num_predict":40}"#).max_tokens, Some(40));
        assert!(read(br#"{"max_tokens":null}"#).unclear_limit);
        assert!(read(br#"{"n":"all"}"#).unclear_limit);
        assert!(!read(br#"{"max_tokens":10,"n":2}"#).unclear_limit);
        assert_eq!(read(br#"{"max_tokens_to_sample":300}"#).max_tokens, Some(300));
        let f = read(br#"{"max_tokens":10,"max_complet\u0131on_tokens":100000,"n_pred\u0130ct":7}"#);
        assert_eq!(f.max_tokens, Some(100_000), "Go folds U+0131 and U+0130 to `I`");
    }
}
