//! The `model` field of a `multipart/form-data` body (audio transcriptions
//! and translations, image edits and variations), read as the chunks pass,
//! strictly enough that the provider's form parser cannot read another one:
//!
//! - the boundary is the one `content-type` names, and the body starts with
//!   it (no preamble) and ends with it (no epilogue but a final CRLF);
//! - `content-type` has no parameter but `boundary` (a `charset` would make
//!   some parsers decode field names: `+AG0-odel` is `model` in UTF-7);
//! - every part has exactly one `Content-Disposition: form-data` whose `name`
//!   is plain (`[A-Za-z0-9_.[]-]`; no RFC 2231 `name*`/`name*0` pieces, which
//!   some parsers join, no `<…>`, escapes or `%`), no folded header lines, no
//!   `Content-Transfer-Encoding`;
//! - `model` appears at most once, as a plain field (not a file, and with no
//!   header but its `Content-Disposition`), and no other field is named
//!   `model` in another case.
//!
//! Only the parser's state, the current header line and the `model` value
//! are kept: memory does not grow with the body (a file part of megabytes
//! passes through a delimiter match and nothing else).

use crate::decide::ModelField;

/// Longest `model` value kept (a longer one is not a model name).
const MAX_MODEL: usize = 4096;
/// Longest header block of one part.
const MAX_HEADERS: usize = 8 * 1024;
/// RFC 2046: a boundary has 1 to 70 characters.
const MAX_BOUNDARY: usize = 70;

/// The `boundary` parameter of a `multipart/form-data` content type, if it is
/// one, `boundary` is its only parameter, and the boundary is well-formed
/// (RFC 2046 characters, 1-70 long, not ending in a space).
pub fn boundary_of(content_type: &str) -> Option<&str> {
    let mut params = content_type.split(';');
    let media = params.next()?.trim();
    if !media.eq_ignore_ascii_case("multipart/form-data") {
        return None;
    }
    let mut found = None;
    for p in params {
        let (k, v) = p.split_once('=')?;
        // Named twice, `boundary*=`, a `charset`: each is read differently
        // by some parser.
        if !k.trim().eq_ignore_ascii_case("boundary") || found.is_some() {
            return None;
        }
        let v = v.trim();
        found = Some(v.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(v));
    }
    let b = found?;
    let bchar = |c: u8| c.is_ascii_alphanumeric() || b"'()+_,-./:=? ".contains(&c);
    let ok = !b.is_empty() && b.len() <= MAX_BOUNDARY && b.bytes().all(bchar) && !b.ends_with(' ');
    ok.then_some(b)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// The body's first bytes must be `--boundary`.
    Start,
    /// After a boundary: `\r\n` (a part follows) or `--` (the end).
    AfterBoundary,
    /// Header lines of a part, up to the empty line.
    Headers,
    /// A part's content, up to the next delimiter.
    Content,
    /// After the closing `--`: an optional final `\r\n`, then nothing.
    End,
}

/// The fields of the part being read.
#[derive(Debug, Default, Clone)]
struct Part {
    disposition: bool,
    name: Option<String>,
    file: bool,
    /// Headers besides `Content-Disposition` (a `Content-Type`, say).
    other_headers: bool,
}

#[derive(Debug)]
pub struct MultipartReader {
    /// `\r\n--boundary`: what ends a part's content.
    delimiter: Vec<u8>,
    state: State,
    /// Bytes of `delimiter` (or of the `--`/`\r\n` after it) matched so far.
    matched: usize,
    line: Vec<u8>,
    header_bytes: usize,
    part: Part,
    /// The `model` part's content, while it is read.
    value: Option<Vec<u8>>,
    model: Option<ModelField>,
    /// Where the `model` value starts and ends in the body (for the rewrite).
    span: Option<(usize, usize)>,
    /// Bytes of the body before the current chunk.
    offset: usize,
    invalid: bool,
}

impl MultipartReader {
    pub fn new(boundary: &str) -> MultipartReader {
        let mut delimiter = b"\r\n--".to_vec();
        delimiter.extend_from_slice(boundary.as_bytes());
        MultipartReader {
            delimiter,
            state: State::Start,
            // The body's first boundary has no CRLF before it.
            matched: 2,
            line: Vec::new(),
            header_bytes: 0,
            part: Part::default(),
            value: None,
            model: None,
            span: None,
            offset: 0,
            invalid: false,
        }
    }

    pub fn feed(&mut self, chunk: &[u8]) {
        if !self.invalid && self.scan(chunk).is_err() {
            self.invalid = true;
        }
        self.offset += chunk.len();
    }

    /// The body ended: its `model` (or `InvalidMultipart`).
    pub fn finish(self) -> ModelField {
        // Complete only after the closing boundary (and at most its CRLF).
        let complete = self.state == State::End && matches!(self.matched, 0 | 2);
        if self.invalid || !complete {
            return ModelField::InvalidMultipart;
        }
        self.model.unwrap_or(ModelField::Absent)
    }

    fn scan(&mut self, c: &[u8]) -> Result<(), ()> {
        let mut i = 0;
        while i < c.len() {
            match self.state {
                State::Start => {
                    let want = self.delimiter.get(self.matched).copied();
                    if c.get(i).copied() != want {
                        return Err(()); // a preamble, or another boundary
                    }
                    self.matched += 1;
                    i += 1;
                    if self.matched == self.delimiter.len() {
                        self.enter(State::AfterBoundary);
                    }
                }
                State::AfterBoundary => {
                    let b = c.get(i).copied().ok_or(())?;
                    i += 1;
                    self.matched += 1;
                    match (self.matched, b, self.line.first()) {
                        (1, b'\r' | b'-', _) => self.line.push(b),
                        (2, b'\n', Some(b'\r')) => {
                            self.part = Part::default();
                            self.header_bytes = 0;
                            self.enter(State::Headers);
                        }
                        (2, b'-', Some(b'-')) => self.enter(State::End),
                        _ => return Err(()), // transport padding or junk after a boundary
                    }
                }
                State::Headers => {
                    let b = c.get(i).copied().ok_or(())?;
                    i += 1;
                    self.header_bytes += 1;
                    if self.header_bytes > MAX_HEADERS {
                        return Err(());
                    }
                    if b == b'\n' {
                        if self.line.last() != Some(&b'\r') {
                            return Err(()); // a bare LF
                        }
                        self.line.pop();
                        let line = std::mem::take(&mut self.line);
                        if line.is_empty() {
                            self.start_content(self.offset + i)?;
                        } else {
                            self.header(&line)?;
                        }
                    } else {
                        self.line.push(b);
                    }
                }
                State::Content => i = self.content(c, i),
                State::End => {
                    let b = c.get(i).copied().ok_or(())?;
                    i += 1;
                    self.matched += 1;
                    match (self.matched, b) {
                        (1, b'\r') | (2, b'\n') => {}
                        _ => return Err(()), // an epilogue
                    }
                }
            }
        }
        Ok(())
    }

    fn enter(&mut self, state: State) {
        self.state = state;
        self.matched = 0;
        self.line.clear();
    }

    /// One header line of a part.
    fn header(&mut self, line: &[u8]) -> Result<(), ()> {
        if matches!(line.first(), Some(b' ' | b'\t')) {
            return Err(()); // folded (obsolete) header line
        }
        let line = std::str::from_utf8(line).map_err(|_| ())?;
        if line.chars().any(|c| c.is_control() && c != '\t') {
            return Err(());
        }
        let (name, value) = line.split_once(':').ok_or(())?;
        let name = name.trim();
        if name.eq_ignore_ascii_case("content-disposition") {
            if self.part.disposition {
                return Err(());
            }
            self.part.disposition = true;
            self.disposition(value)
        } else if name.eq_ignore_ascii_case("content-transfer-encoding") {
            Err(()) // would let a value be encoded where we read it raw
        } else {
            self.part.other_headers = true;
            Ok(())
        }
    }

    /// `form-data; name="model"; filename="a.wav"`.
    fn disposition(&mut self, value: &str) -> Result<(), ()> {
        let mut rest = value.trim_start();
        let kind_end = rest.find(';').unwrap_or(rest.len());
        if !rest.get(..kind_end).unwrap_or_default().trim().eq_ignore_ascii_case("form-data") {
            return Err(());
        }
        rest = rest.get(kind_end..).unwrap_or_default();
        let mut seen: Vec<String> = Vec::new();
        while let Some(after) = rest.strip_prefix(';') {
            let after = after.trim_start();
            let eq = after.find('=').ok_or(())?;
            let key = after.get(..eq).unwrap_or_default().trim().to_ascii_lowercase();
            let after = after.get(eq + 1..).unwrap_or_default().trim_start();
            let (val, tail) = match after.strip_prefix('"') {
                Some(q) => {
                    let end = q.find('"').ok_or(())?;
                    let v = q.get(..end).unwrap_or_default();
                    if v.contains('\\') {
                        return Err(()); // escapes are read differently by different parsers
                    }
                    (v, q.get(end + 1..).unwrap_or_default())
                }
                None => {
                    let end = after.find(';').unwrap_or(after.len());
                    (after.get(..end).unwrap_or_default().trim_end(), after.get(end..).unwrap_or_default())
                }
            };
            if key.contains('*') || seen.contains(&key) {
                return Err(()); // RFC 2231/5987 pieces and repeats: ambiguous
            }
            match key.as_str() {
                "name" if !is_plain_name(val) => return Err(()),
                "name" => self.part.name = Some(val.to_string()),
                "filename" => self.part.file = true,
                _ => {}
            }
            seen.push(key);
            rest = tail.trim_start();
        }
        if !rest.is_empty() {
            return Err(());
        }
        Ok(())
    }

    /// The part's content starts at body offset `at`.
    fn start_content(&mut self, at: usize) -> Result<(), ()> {
        let name = self.part.name.as_deref().ok_or(())?;
        if name == "model" {
            if self.model.is_some() {
                self.model = Some(ModelField::Repeated);
            } else if self.part.file || self.part.other_headers {
                self.model = Some(ModelField::NotString);
            } else {
                self.value = Some(Vec::new());
                self.span = Some((at, at));
            }
        } else if name.eq_ignore_ascii_case("model") {
            self.model = Some(ModelField::CaseVariant);
        }
        self.enter(State::Content);
        Ok(())
    }

    /// Content bytes from `i`, up to and through the delimiter if it is in
    /// this chunk. Returns where the scan stopped.
    fn content(&mut self, c: &[u8], mut i: usize) -> usize {
        while let Some(&b) = c.get(i) {
            if self.matched == 0 {
                // Fast path: nothing can start a delimiter before the next CR.
                let run = c.get(i..).unwrap_or_default();
                let end = run.iter().position(|&x| x == b'\r').map_or(c.len(), |p| i + p);
                self.capture(c.get(i..end).unwrap_or_default());
                i = end;
                if i < c.len() {
                    self.matched = 1;
                    i += 1;
                }
                continue;
            }
            if self.delimiter.get(self.matched) == Some(&b) {
                self.matched += 1;
                i += 1;
                if self.matched == self.delimiter.len() {
                    self.end_part(self.offset + i - self.delimiter.len());
                    return i;
                }
                continue;
            }
            // Not a delimiter after all: what matched was content. (The
            // boundary has no CR, so a new match can only start at this byte.)
            let partial = self.delimiter.get(..self.matched).unwrap_or_default().to_vec();
            self.capture(&partial);
            self.matched = 0;
        }
        i
    }

    fn capture(&mut self, bytes: &[u8]) {
        if let Some(v) = self.value.as_mut() {
            let room = (MAX_MODEL + 1).saturating_sub(v.len()).min(bytes.len());
            v.extend_from_slice(bytes.get(..room).unwrap_or_default());
        }
    }

    /// The part's content ended at body offset `at`.
    fn end_part(&mut self, at: usize) {
        if let Some(v) = self.value.take() {
            self.span = self.span.map(|(start, _)| (start, at));
            self.model = Some(match String::from_utf8(v) {
                Ok(s) if s.len() <= MAX_MODEL && !s.chars().any(char::is_control) => ModelField::Str(s),
                _ => ModelField::NotString,
            });
        }
        self.enter(State::AfterBoundary);
    }
}

/// A field name every form parser reads alike (`file`, `image[]`, `model`).
fn is_plain_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.[]-".contains(&b))
}

/// Reads a complete body (one chunk).
pub fn read(boundary: &str, body: &[u8]) -> ModelField {
    let mut r = MultipartReader::new(boundary);
    r.feed(body);
    r.finish()
}

/// The form with its `model` field's value replaced (a provider-qualified
/// name by the provider's own), every other byte as the client sent it.
/// `None` unless the form is valid with one plain `model` field.
pub fn rewrite_model(body: &[u8], boundary: &str, new_model: &str) -> Option<Vec<u8>> {
    let mut r = MultipartReader::new(boundary);
    r.feed(body);
    let (start, end) = r.span?;
    if !matches!(r.finish(), ModelField::Str(_)) {
        return None;
    }
    let mut out = Vec::with_capacity(body.len() + new_model.len());
    out.extend_from_slice(body.get(..start)?);
    out.extend_from_slice(new_model.as_bytes());
    out.extend_from_slice(body.get(end..)?);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: &str = "----kgBoundary7MA4YWxk";

    fn form(parts: &[(&str, &str)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (headers, content) in parts {
            out.extend_from_slice(format!("--{B}\r\n{headers}\r\n\r\n{content}\r\n").as_bytes());
        }
        out.extend_from_slice(format!("--{B}--\r\n").as_bytes());
        out
    }

    fn field(name: &str) -> String {
        format!("Content-Disposition: form-data; name=\"{name}\"")
    }

    #[test]
    fn boundaries_from_content_type() {
        assert_eq!(boundary_of("multipart/form-data; boundary=abc"), Some("abc"));
        assert_eq!(boundary_of("Multipart/Form-Data;boundary=\"a b:c\""), Some("a b:c"));
        assert_eq!(boundary_of("multipart/form-data; charset=utf-7; boundary=x"), None);
        assert_eq!(boundary_of("multipart/form-data; boundary=x; charset=utf-8"), None);
        assert_eq!(boundary_of("multipart/form-data; boundary*=utf-8''x"), None);
        assert_eq!(boundary_of("multipart/form-data"), None);
        assert_eq!(boundary_of("multipart/form-data; boundary="), None);
        assert_eq!(boundary_of("multipart/form-data; boundary=a; boundary=b"), None);
        assert_eq!(boundary_of("multipart/mixed; boundary=a"), None);
        assert_eq!(boundary_of("application/json"), None);
        assert_eq!(boundary_of(&format!("multipart/form-data; boundary={}", "a".repeat(71))), None);
        assert_eq!(boundary_of("multipart/form-data; boundary=a\r\nb"), None);
    }

    #[test]
    fn reads_the_model_field_beside_a_file() {
        let wav = "RIFF\r\n--not-the-boundary\r\n\u{1}\u{2}binary\r";
        let doc = form(&[
            ("Content-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\nContent-Type: audio/wav", wav),
            (&field("model"), "whisper-1"),
            (&field("language"), "en"),
        ]);
        assert_eq!(read(B, &doc), ModelField::Str("whisper-1".into()));
        assert_eq!(read(B, &form(&[(&field("prompt"), "hi")])), ModelField::Absent);
        let unquoted = form(&[("content-disposition: FORM-DATA; name=model", "gpt-image-1")]);
        assert_eq!(read(B, &unquoted), ModelField::Str("gpt-image-1".into()));
    }

    #[test]
    fn ambiguous_model_fields_are_refused() {
        let twice = form(&[(&field("model"), "a"), (&field("model"), "b")]);
        assert_eq!(read(B, &twice), ModelField::Repeated);
        assert_eq!(read(B, &form(&[(&field("model"), "a"), (&field("MODEL"), "b")])), ModelField::CaseVariant);
        let file = form(&[("Content-Disposition: form-data; name=\"model\"; filename=\"m.txt\"", "x")]);
        assert_eq!(read(B, &file), ModelField::NotString);
        assert_eq!(read(B, &form(&[(&field("model"), "a\u{1}b")])), ModelField::NotString);
        let typed = format!("{}\r\nContent-Type: text/plain; charset=utf-7", field("model"));
        assert_eq!(read(B, &form(&[(&typed, "gpt+AC0-4o")])), ModelField::NotString);
        assert_eq!(read(B, &form(&[(&field("model"), &"m".repeat(5000))])), ModelField::NotString);
    }

    #[test]
    fn anything_a_parser_could_read_differently_is_invalid() {
        let ok = form(&[(&field("model"), "a")]);
        let s = String::from_utf8(ok.clone()).unwrap();
        let cases: Vec<Vec<u8>> = vec![
            format!("preamble\r\n{s}").into_bytes(),
            format!("{s}epilogue").into_bytes(),
            s.replace(&format!("--{B}--"), &format!("--{B}")).into_bytes(),
            s.replace("form-data; name=\"model\"", "form-data; name*=utf-8''model").into_bytes(),
            s.replace("name=\"model\"", "name=\"mo\\\"del\"").into_bytes(),
            s.replace("name=\"model\"", "name=\"mod%65l\"").into_bytes(),
            s.replace("name=\"model\"", "name=\"x\"; name*0=\"model\"").into_bytes(),
            s.replace("name=\"model\"", "name=\"<model>\"").into_bytes(),
            s.replace("name=\"model\"", "name=\"+AG0-odel\"").into_bytes(),
            s.replace("name=\"model\"", "name=\"\"").into_bytes(),
            s.replace("name=\"model\"", "name=\"model\"; name=\"x\"").into_bytes(),
            s.replace("\r\n\r\na", "\r\n folded\r\n\r\na").into_bytes(),
            s.replace("\r\n\r\na", "\r\nContent-Transfer-Encoding: base64\r\n\r\na").into_bytes(),
            s.replace("\r\n\r\na", &format!("\r\n{}\r\n\r\na", field("x"))).into_bytes(),
            s.replace("Content-Disposition: form-data; ", "Content-Disposition: attachment; ").into_bytes(),
            s.replace("Content-Disposition", "Content-Type: text/plain\r\nX-Other").into_bytes(),
            s.replace(&format!("--{B}\r\n"), &format!("--{B}  \r\n")).into_bytes(),
            s.replace("\r\n\r\n", "\n\n").into_bytes(),
            s.replace(&format!("--{B}\r\n"), &format!("--{B}X\r\n")).into_bytes(),
            Vec::new(),
            b"{\"model\":\"a\"}".to_vec(),
        ];
        for doc in cases {
            assert_eq!(read(B, &doc), ModelField::InvalidMultipart, "{:?}", String::from_utf8_lossy(&doc));
        }
        assert_eq!(read(B, &ok), ModelField::Str("a".into()));
        // A final CRLF is optional.
        assert_eq!(read(B, &ok[..ok.len() - 2]), ModelField::Str("a".into()));
        assert_eq!(read("other", &ok), ModelField::InvalidMultipart);
    }

    #[test]
    fn the_model_value_is_rewritten_in_place() {
        let doc = form(&[
            ("Content-Disposition: form-data; name=\"file\"; filename=\"a\"", "x\r\n--"),
            (&field("model"), "openai/whisper-1"),
            (&field("language"), "en"),
        ]);
        let out = rewrite_model(&doc, B, "whisper-1").unwrap();
        assert_eq!(read(B, &out), ModelField::Str("whisper-1".into()));
        let expected = String::from_utf8(doc.clone()).unwrap().replace("openai/whisper-1", "whisper-1");
        assert_eq!(String::from_utf8(out).unwrap(), expected);
        assert_eq!(rewrite_model(&form(&[(&field("prompt"), "x")]), B, "m"), None);
        assert_eq!(rewrite_model(&form(&[(&field("model"), "a"), (&field("model"), "b")]), B, "m"), None);
    }

    #[test]
    fn chunking_never_changes_the_answer() {
        let docs = [
            form(&[
                ("Content-Disposition: form-data; name=\"file\"; filename=\"a\"", "x\r\n--\r\n-\r\r\n--kg"),
                (&field("model"), "whisper-1"),
            ]),
            form(&[(&field("model"), "a"), (&field("model"), "b")]),
            form(&[(&field("prompt"), &"p".repeat(300))]),
            b"--x\r\n".to_vec(),
        ];
        for doc in &docs {
            let whole = read(B, doc);
            for size in 1..=17 {
                let mut r = MultipartReader::new(B);
                for chunk in doc.chunks(size) {
                    r.feed(chunk);
                }
                assert_eq!(r.finish(), whole, "chunks of {size}: {:?}", String::from_utf8_lossy(doc));
            }
        }
        assert_eq!(read(B, &docs[0]), ModelField::Str("whisper-1".into()));
    }
}
