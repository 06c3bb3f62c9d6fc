//! The API surfaces keygate serves: an explicit table of (method, path) per
//! provider format, and how each is judged. Anything outside the table is
//! refused from the request headers alone, before any body is read:
//!
//! - a path that is not clean (a dot segment, any percent-encoding, a
//!   backslash, an empty segment, a character outside the id alphabet) → 400
//!   `invalid_path`; Envoy normalises paths first (`normalize_path`,
//!   `merge_slashes`, escaped slashes rejected), this is the second wall;
//! - a clean path that is not in the table → 404 `unsupported_path`;
//! - a path in the table with another method → 405 `method_not_allowed`.
//!
//! Variable segments (`{id}`) take `[A-Za-z0-9._:-]`, start with a letter or
//! digit and are at most 256 bytes, so that a matched path can only name a
//! resource *under* the provider's base path (see [`upstream_path`]).

use keygate_proto::lookup::Format;

/// How a surface is judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Judge {
    /// Inference: the body's top-level `model` (JSON, or a multipart form
    /// field) goes through the provider and model allow-lists.
    Model(BodyKind),
    /// The model is the last path segment (`GET /v1/models/{model}`).
    PathModel,
    /// The provider's model list: the provider allow-list only.
    Listing,
    /// Acts on the provider account: refused unless `access.endpoints.allow`
    /// names it (names in `keygate_proto::endpoints`).
    Account(&'static str),
    /// keygate's own `GET /keygate/v1/key`: the key describes itself;
    /// nothing goes upstream.
    SelfCheck,
}

/// keygate's own endpoint (outside every provider's `/v1/`): what the
/// access key that calls it may learn about itself.
pub const SELF_CHECK_PATH: &str = "/keygate/v1/key";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    Json,
    Multipart,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
    Delete,
}

impl Method {
    pub fn parse(s: &str) -> Option<Method> {
        match s {
            "GET" => Some(Method::Get),
            "POST" => Some(Method::Post),
            "DELETE" => Some(Method::Delete),
            _ => None,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Delete => "DELETE",
        }
    }
}

/// One path of the table and what each of its methods does.
struct Entry {
    /// Segments after `/v1/`; `{}` is a variable segment.
    pattern: &'static str,
    methods: &'static [(Method, Judge)],
}

use BodyKind::{Json, Multipart};
use Judge::{Account, Listing, Model, PathModel};
use Method::{Delete, Get, Post};

const fn read_write(read: &'static str, write: &'static str) -> [(Method, Judge); 2] {
    [(Get, Account(read)), (Post, Account(write))]
}

const fn read_delete(read: &'static str, write: &'static str) -> [(Method, Judge); 2] {
    [(Get, Account(read)), (Delete, Account(write))]
}

const fn read_change_delete(read: &'static str, write: &'static str) -> [(Method, Judge); 3] {
    [(Get, Account(read)), (Post, Account(write)), (Delete, Account(write))]
}

macro_rules! table {
    ($($pattern:literal => $methods:expr,)*) => {
        &[$(Entry { pattern: $pattern, methods: &$methods },)*]
    };
}

/// OpenAI's API (and every OpenAI-compatible provider's).
const OPENAI: &[Entry] = table! {
    "chat/completions" => [(Post, Model(Json)), (Get, Account("chat_completions.read"))],
    "chat/completions/{}" => read_change_delete("chat_completions.read", "chat_completions.write"),
    "chat/completions/{}/messages" => [(Get, Account("chat_completions.read"))],
    "completions" => [(Post, Model(Json))],
    "responses" => [(Post, Model(Json))],
    "responses/input_tokens" => [(Post, Model(Json))],
    "responses/{}" => read_delete("responses.read", "responses.write"),
    "responses/{}/input_items" => [(Get, Account("responses.read"))],
    "responses/{}/cancel" => [(Post, Account("responses.write"))],
    "embeddings" => [(Post, Model(Json))],
    "moderations" => [(Post, Model(Json))],
    "audio/speech" => [(Post, Model(Json))],
    "audio/transcriptions" => [(Post, Model(Multipart))],
    "audio/translations" => [(Post, Model(Multipart))],
    "images/generations" => [(Post, Model(Json))],
    "images/edits" => [(Post, Model(Multipart))],
    "images/variations" => [(Post, Model(Multipart))],
    "models" => [(Get, Listing)],
    "models/{}" => [(Get, PathModel), (Delete, Account("models.delete"))],
    "files" => read_write("files.read", "files.write"),
    "files/{}" => read_delete("files.read", "files.write"),
    "files/{}/content" => [(Get, Account("files.read"))],
    "uploads" => [(Post, Account("uploads.write"))],
    "uploads/{}/parts" => [(Post, Account("uploads.write"))],
    "uploads/{}/complete" => [(Post, Account("uploads.write"))],
    "uploads/{}/cancel" => [(Post, Account("uploads.write"))],
    "batches" => read_write("batches.read", "batches.write"),
    "batches/{}" => [(Get, Account("batches.read"))],
    "batches/{}/cancel" => [(Post, Account("batches.write"))],
    "fine_tuning/jobs" => read_write("fine_tuning.read", "fine_tuning.write"),
    "fine_tuning/jobs/{}" => [(Get, Account("fine_tuning.read"))],
    "fine_tuning/jobs/{}/events" => [(Get, Account("fine_tuning.read"))],
    "fine_tuning/jobs/{}/checkpoints" => [(Get, Account("fine_tuning.read"))],
    "fine_tuning/jobs/{}/cancel" => [(Post, Account("fine_tuning.write"))],
    "fine_tuning/jobs/{}/pause" => [(Post, Account("fine_tuning.write"))],
    "fine_tuning/jobs/{}/resume" => [(Post, Account("fine_tuning.write"))],
    "assistants" => read_write("assistants.read", "assistants.write"),
    "assistants/{}" => read_change_delete("assistants.read", "assistants.write"),
    "threads" => [(Post, Account("assistants.write"))],
    "threads/runs" => [(Post, Account("assistants.write"))],
    "threads/{}" => read_change_delete("assistants.read", "assistants.write"),
    "threads/{}/messages" => read_write("assistants.read", "assistants.write"),
    "threads/{}/messages/{}" => read_change_delete("assistants.read", "assistants.write"),
    "threads/{}/runs" => read_write("assistants.read", "assistants.write"),
    "threads/{}/runs/{}" => read_write("assistants.read", "assistants.write"),
    "threads/{}/runs/{}/cancel" => [(Post, Account("assistants.write"))],
    "threads/{}/runs/{}/submit_tool_outputs" => [(Post, Account("assistants.write"))],
    "threads/{}/runs/{}/steps" => [(Get, Account("assistants.read"))],
    "threads/{}/runs/{}/steps/{}" => [(Get, Account("assistants.read"))],
    "vector_stores" => read_write("vector_stores.read", "vector_stores.write"),
    "vector_stores/{}" => read_change_delete("vector_stores.read", "vector_stores.write"),
    "vector_stores/{}/search" => [(Post, Account("vector_stores.read"))],
    "vector_stores/{}/files" => read_write("vector_stores.read", "vector_stores.write"),
    "vector_stores/{}/files/{}" => read_change_delete("vector_stores.read", "vector_stores.write"),
    "vector_stores/{}/files/{}/content" => [(Get, Account("vector_stores.read"))],
    "vector_stores/{}/file_batches" => [(Post, Account("vector_stores.write"))],
    "vector_stores/{}/file_batches/{}" => [(Get, Account("vector_stores.read"))],
    "vector_stores/{}/file_batches/{}/cancel" => [(Post, Account("vector_stores.write"))],
    "vector_stores/{}/file_batches/{}/files" => [(Get, Account("vector_stores.read"))],
    "conversations" => [(Post, Account("conversations.write"))],
    "conversations/{}" => read_change_delete("conversations.read", "conversations.write"),
    "conversations/{}/items" => read_write("conversations.read", "conversations.write"),
    "conversations/{}/items/{}" => read_delete("conversations.read", "conversations.write"),
};

/// Anthropic's API.
const ANTHROPIC: &[Entry] = table! {
    "messages" => [(Post, Model(Json))],
    "messages/count_tokens" => [(Post, Model(Json))],
    "complete" => [(Post, Model(Json))],
    "models" => [(Get, Listing)],
    "models/{}" => [(Get, PathModel)],
    "messages/batches" => read_write("batches.read", "batches.write"),
    "messages/batches/{}" => read_delete("batches.read", "batches.write"),
    "messages/batches/{}/results" => [(Get, Account("batches.read"))],
    "messages/batches/{}/cancel" => [(Post, Account("batches.write"))],
    "files" => read_write("files.read", "files.write"),
    "files/{}" => read_delete("files.read", "files.write"),
    "files/{}/content" => [(Get, Account("files.read"))],
};

/// Longest variable segment (an id or a model name).
const MAX_SEGMENT: usize = 256;

/// A request the table serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Surface<'a> {
    pub format: Format,
    pub method: Method,
    pub judge: Judge,
    /// The path after `/v1/` (clean, in the table), without the query.
    pub rest: &'a str,
    /// The query string after `?`, if any (checked by [`crate::query`]).
    pub query: Option<&'a str>,
}

impl Surface<'_> {
    /// A surface that generates text, whose output a request limits
    /// (`max_tokens` and its kin): what `maxOutputTokens` judges.
    pub fn generates_text(&self) -> bool {
        self.method == Method::Post
            && matches!(self.rest, "chat/completions" | "completions" | "responses" | "messages" | "complete")
    }

    /// The model a `PathModel` surface names (its last segment).
    pub fn path_model(&self) -> Option<&str> {
        match self.judge {
            Judge::PathModel => self.rest.rsplit('/').next(),
            _ => None,
        }
    }

    /// GET and DELETE take no body.
    pub fn takes_body(&self) -> bool {
        self.method == Method::Post
    }
}

/// Why a request is outside the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// A dot segment, percent-encoding, backslash, empty segment or a
    /// character outside the alphabet.
    InvalidPath,
    /// Not a path keygate serves.
    UnknownPath,
    /// The path is served, not with this method: `allow` lists its methods.
    Method { allow: String },
}

/// Matches `:method` and `:path` against the table. The Anthropic table is
/// tried first when the client sent `anthropic-version` (the Anthropic SDK
/// always does), so paths both APIs have (`/v1/models`, `/v1/files`) reach the
/// API the client speaks; a path only one API has reaches that one.
pub fn classify<'a>(method: &str, path: &'a str, anthropic_client: bool) -> Result<Surface<'a>, Refusal> {
    let (path, query) = match path.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path, None),
    };
    check_clean(path)?;
    if path == SELF_CHECK_PATH {
        let format = if anthropic_client { Format::Anthropic } else { Format::Openai };
        return match Method::parse(method) {
            Some(Method::Get) => {
                Ok(Surface { format, method: Method::Get, judge: Judge::SelfCheck, rest: path, query })
            }
            _ => Err(Refusal::Method { allow: "GET".into() }),
        };
    }
    let rest = match path.strip_prefix("/v1/") {
        Some(rest) => rest,
        None => return Err(Refusal::UnknownPath),
    };
    let tables = if anthropic_client {
        [(Format::Anthropic, ANTHROPIC), (Format::Openai, OPENAI)]
    } else {
        [(Format::Openai, OPENAI), (Format::Anthropic, ANTHROPIC)]
    };
    let found = tables
        .iter()
        .find_map(|(format, table)| table.iter().find(|e| matches_pattern(e.pattern, rest)).map(|e| (*format, e)));
    let Some((format, entry)) = found else { return Err(Refusal::UnknownPath) };
    let wanted = Method::parse(method);
    match entry.methods.iter().find(|(m, _)| Some(*m) == wanted) {
        Some((m, judge)) => Ok(Surface { format, method: *m, judge: *judge, rest, query }),
        None => {
            let allow: Vec<&str> = entry.methods.iter().map(|(m, _)| m.as_str()).collect();
            Err(Refusal::Method { allow: allow.join(", ") })
        }
    }
}

/// The second wall behind Envoy's normalisation: nothing in the path may be
/// read differently by the provider than by keygate.
fn check_clean(path: &str) -> Result<(), Refusal> {
    if !path.starts_with('/') {
        return Err(Refusal::InvalidPath);
    }
    let clean_byte = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'.' | b'_' | b'-' | b':');
    if !path.bytes().all(clean_byte) {
        return Err(Refusal::InvalidPath); // `%`, `\`, `;`, spaces, controls, non-ASCII
    }
    if path == "/" {
        return Ok(());
    }
    // Skip the leading `/`; a trailing `/` leaves an empty last segment.
    let mut segments = path.get(1..).unwrap_or_default().split('/');
    if segments.any(|s| s.is_empty() || s == "." || s == "..") {
        return Err(Refusal::InvalidPath);
    }
    Ok(())
}

fn matches_pattern(pattern: &str, rest: &str) -> bool {
    let mut want = pattern.split('/');
    let mut got = rest.split('/');
    loop {
        match (want.next(), got.next()) {
            (None, None) => return true,
            (Some("{}"), Some(seg)) if is_variable_segment(seg) => {}
            (Some(w), Some(seg)) if w == seg => {}
            _ => return false,
        }
    }
}

/// An id or model name: starts with a letter or digit (so never `.` or `..`).
fn is_variable_segment(seg: &str) -> bool {
    seg.len() <= MAX_SEGMENT && seg.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
}

/// The path the provider receives: its base path, then the matched rest and
/// the query. `rest` is clean (no dot segment, no `%`, no `\`), so the result
/// stays under `base_path` however the provider resolves it.
pub fn upstream_path(base_path: &str, rest: &str, query: Option<&str>) -> String {
    let mut out = String::with_capacity(base_path.len() + rest.len() + query.map_or(0, |q| q.len() + 1) + 1);
    out.push_str(base_path);
    out.push('/');
    out.push_str(rest);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

/// Every path of the table with its methods, for the README and tests:
/// `(format, "/v1/...", method, judge)`.
pub fn table() -> impl Iterator<Item = (Format, String, &'static str, Judge)> {
    [(Format::Openai, OPENAI), (Format::Anthropic, ANTHROPIC)].into_iter().flat_map(|(format, t)| {
        t.iter().flat_map(move |e| {
            e.methods.iter().map(move |(m, j)| (format, format!("/v1/{}", e.pattern), m.as_str(), *j))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn judge(method: &str, path: &str) -> Result<(Format, Judge), Refusal> {
        classify(method, path, false).map(|s| (s.format, s.judge))
    }

    #[test]
    fn inference_endpoints_are_judged_by_model() {
        assert_eq!(judge("POST", "/v1/chat/completions"), Ok((Format::Openai, Model(Json))));
        assert_eq!(judge("POST", "/v1/embeddings?x=1"), Ok((Format::Openai, Model(Json))));
        assert_eq!(judge("POST", "/v1/audio/transcriptions"), Ok((Format::Openai, Model(Multipart))));
        assert_eq!(judge("POST", "/v1/messages"), Ok((Format::Anthropic, Model(Json))));
        assert_eq!(judge("POST", "/v1/messages/count_tokens"), Ok((Format::Anthropic, Model(Json))));
        assert_eq!(judge("GET", "/v1/models"), Ok((Format::Openai, Listing)));
        let s = classify("GET", "/v1/models/gpt-4o-mini", false).unwrap();
        assert_eq!((s.judge, s.path_model()), (PathModel, Some("gpt-4o-mini")));
        let ft = classify("GET", "/v1/models/ft:gpt-4o-mini:org:custom:abc123", false).unwrap();
        assert_eq!(ft.path_model(), Some("ft:gpt-4o-mini:org:custom:abc123"));
    }

    #[test]
    fn account_endpoints_name_what_they_need() {
        assert_eq!(judge("DELETE", "/v1/files/file-victim"), Ok((Format::Openai, Account("files.write"))));
        assert_eq!(judge("GET", "/v1/files/file-1/content"), Ok((Format::Openai, Account("files.read"))));
        assert_eq!(judge("DELETE", "/v1/models/ft:gpt-4o:org::x"), Ok((Format::Openai, Account("models.delete"))));
        assert_eq!(judge("GET", "/v1/responses/resp_1"), Ok((Format::Openai, Account("responses.read"))));
        assert_eq!(judge("POST", "/v1/batches/batch_1/cancel"), Ok((Format::Openai, Account("batches.write"))));
        assert_eq!(judge("GET", "/v1/messages/batches"), Ok((Format::Anthropic, Account("batches.read"))));
        assert_eq!(judge("GET", "/v1/chat/completions"), Ok((Format::Openai, Account("chat_completions.read"))));
    }

    #[test]
    fn the_anthropic_client_reaches_anthropics_side_of_shared_paths() {
        let s = classify("GET", "/v1/models", true).unwrap();
        assert_eq!(s.format, Format::Anthropic);
        let s = classify("GET", "/v1/files/file_1", true).unwrap();
        assert_eq!((s.format, s.judge), (Format::Anthropic, Account("files.read")));
        // A path only OpenAI has stays OpenAI's whatever the client sends.
        assert_eq!(classify("POST", "/v1/chat/completions", true).unwrap().format, Format::Openai);
        assert_eq!(classify("POST", "/v1/messages", false).unwrap().format, Format::Anthropic);
    }

    #[test]
    fn unknown_paths_and_methods() {
        assert_eq!(judge("POST", "/v1/chat/completion"), Err(Refusal::UnknownPath));
        assert_eq!(judge("POST", "/v2/chat/completions"), Err(Refusal::UnknownPath));
        assert_eq!(judge("GET", "/v1"), Err(Refusal::UnknownPath));
        assert_eq!(judge("GET", "/"), Err(Refusal::UnknownPath));
        assert_eq!(judge("GET", "/admin"), Err(Refusal::UnknownPath));
        assert_eq!(judge("POST", "/v1/files/a/b/c"), Err(Refusal::UnknownPath));
        assert_eq!(judge("TRACE", "/v1/chat/completions"), Err(Refusal::Method { allow: "POST, GET".into() }));
        assert_eq!(judge("PUT", "/v1/files/f1"), Err(Refusal::Method { allow: "GET, DELETE".into() }));
        assert_eq!(judge("get", "/v1/models"), Err(Refusal::Method { allow: "GET".into() }));
        assert_eq!(judge("DELETE", "/v1/batches/b1"), Err(Refusal::Method { allow: "GET".into() }));
    }

    #[test]
    fn the_generating_surfaces() {
        for (path, anthropic) in [
            ("/v1/chat/completions", false),
            ("/v1/completions", false),
            ("/v1/responses", false),
            ("/v1/messages", true),
            ("/v1/complete", true),
        ] {
            assert!(classify("POST", path, anthropic).unwrap().generates_text(), "{path}");
        }
        for path in ["/v1/embeddings", "/v1/moderations", "/v1/models"] {
            let s = classify(if path == "/v1/models" { "GET" } else { "POST" }, path, false).unwrap();
            assert!(!s.generates_text(), "{path}");
        }
    }

    #[test]
    fn keygates_own_self_check() {
        let s = classify("GET", "/keygate/v1/key", false).unwrap();
        assert_eq!((s.format, s.judge), (Format::Openai, Judge::SelfCheck));
        assert_eq!(classify("GET", "/keygate/v1/key", true).unwrap().format, Format::Anthropic, "its dialect");
        assert_eq!(classify("POST", "/keygate/v1/key", false), Err(Refusal::Method { allow: "GET".into() }));
        assert_eq!(classify("GET", "/keygate/v1/keys", false), Err(Refusal::UnknownPath));
        assert_eq!(classify("GET", "/keygate/v1/../v1/key", false), Err(Refusal::InvalidPath));
        assert!(!s.takes_body());
    }

    #[test]
    fn unclean_paths_are_refused_before_matching() {
        for p in [
            "/v1/../expensive/chat/completions",
            "/v1/./chat/completions",
            "/v1/chat/completions/..",
            "/v1/%2e%2e/x",
            "/v1/..%2fx",
            "/v1/chat%2Fcompletions",
            "/v1\\..\\x",
            "/v1//chat/completions",
            "/v1/chat/completions/",
            "/v1/chat/completions;x",
            "/v1/files/a b",
            "/v1/files/é",
            "v1/chat/completions",
            "/v1/files/\u{0}",
            "",
        ] {
            assert_eq!(judge("POST", p), Err(Refusal::InvalidPath), "{p:?}");
        }
        // Ids that start with a dot never match a variable segment.
        assert_eq!(judge("GET", "/v1/files/.hidden"), Err(Refusal::UnknownPath));
        assert_eq!(judge("GET", &format!("/v1/files/{}", "a".repeat(257))), Err(Refusal::UnknownPath));
        assert!(judge("GET", &format!("/v1/files/{}", "a".repeat(256))).is_ok());
    }

    #[test]
    fn upstream_paths_stay_under_the_base() {
        let s = classify("POST", "/v1/chat/completions?api-version=2024-06-01", false).unwrap();
        assert_eq!(
            upstream_path("/openai/deployments/cheap", s.rest, s.query),
            "/openai/deployments/cheap/chat/completions?api-version=2024-06-01"
        );
        assert_eq!(upstream_path("", "messages", None), "/messages");
    }

    /// The README's surface table, rendered from this table.
    fn readme_rows() -> String {
        let mut rows: Vec<(Format, String, Vec<String>)> = Vec::new();
        for (format, path, method, judge) in table() {
            let judged = match judge {
                Model(Json) => "model".to_string(),
                Model(Multipart) => "model (form field)".to_string(),
                PathModel => "model (in the path)".to_string(),
                Listing => "provider".to_string(),
                Account(name) => format!("endpoint `{name}`"),
                Judge::SelfCheck => "keygate's own".to_string(),
            };
            let cell = format!("`{method}` {judged}");
            match rows.last_mut() {
                Some((f, p, cells)) if *f == format && *p == path => cells.push(cell),
                _ => rows.push((format, path, vec![cell])),
            }
        }
        rows.iter()
            .map(|(f, p, cells)| {
                let api = if *f == Format::Openai { "OpenAI" } else { "Anthropic" };
                format!("| {api} | `{p}` | {} |\n", cells.join("; "))
            })
            .collect()
    }

    #[test]
    fn the_readme_shows_this_table() {
        let readme = include_str!("../README.md");
        let start = readme.find("<!-- surface-table").expect("the README has the surface table");
        let block = &readme[start..readme.find("<!-- /surface-table -->").unwrap()];
        let rows: String = block.lines().skip(3).map(|l| format!("{l}\n")).collect();
        assert_eq!(rows, readme_rows(), "update the README's surface table to:\n{}", readme_rows());
        for (name, what) in keygate_proto::endpoints::ENDPOINTS {
            assert!(readme.contains(&format!("| `{name}` | {what} |")), "README: endpoint {name}");
        }
    }

    #[test]
    fn the_table_uses_only_known_endpoint_names() {
        for (_, path, _, judge) in table() {
            if let Account(name) = judge {
                assert!(keygate_proto::endpoints::ENDPOINTS.iter().any(|(n, _)| *n == name), "{path}: {name}");
            }
        }
        // Every name is reachable through the table.
        for (name, _) in keygate_proto::endpoints::ENDPOINTS {
            assert!(table().any(|(.., j)| j == Account(name)), "{name} is used by no path");
        }
    }
}
