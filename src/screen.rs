//! Refusals decided from the request headers alone. The gate filter (ahead
//! of Envoy's buffer filter) runs this before any body is read, so a request
//! refused here never has its body buffered; the keygate filter runs it again
//! (it also serves setups without the gate, such as Istio's).
//!
//! Order, so that every refusal is stable and documented: a control
//! character in a header → credentials where they would leak (another header,
//! the URL) → a method override → the path and method (surface table) → the
//! access key → the body's size, presence and media type.

use crate::errors::{Code, Denial, Dialect};
use crate::inbound::Inbound;
use crate::keys::{self, KeyError};
use crate::multipart;
use crate::query;
use crate::surface::{self, BodyKind, Judge, Refusal, Surface};

/// A request that passed the header checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Screened<'a> {
    pub surface: Surface<'a>,
    pub dialect: Dialect,
    /// The access key (well-formed; not yet known to the store).
    pub token: &'a str,
    /// The multipart boundary, for a form the gate reads a `model` from.
    pub boundary: Option<&'a str>,
}

/// A refusal and the dialect to answer it in.
pub type Refused = (Dialect, Denial);

/// The header checks, in order (see the module's comment). `checked`: the
/// token this VM's gate already checked for this request (`keys::extract`).
pub fn screen<'a>(
    inb: &'a Inbound<'_>,
    has_body: bool,
    max_body: u64,
    checked: Option<&str>,
) -> Result<Screened<'a>, Refused> {
    let guess = Dialect::guess(&inb.path, inb.anthropic_version);
    if inb.control_in_header {
        return Err((
            guess,
            Denial::new(400, Code::InvalidHeader, "a request header value carries a control character"),
        ));
    }
    if inb.token_in_header() {
        return Err((guess, Denial::new(
            400,
            Code::AccessKeyInHeader,
            "a request header other than Authorization or x-api-key carries an access key; it would reach the provider",
        )));
    }
    if url_carries_credential(inb) {
        return Err((guess, Denial::new(
            400,
            Code::CredentialInUrl,
            "the URL carries a credential (an access key, or a parameter such as `key=` or `api_key=`); send the access key in a header",
        )));
    }
    if inb.method_override {
        return Err((
            guess,
            Denial::new(
                400,
                Code::MethodOverride,
                "method-override headers (x-http-method-override and kin) are refused: send the real method",
            ),
        ));
    }
    let surface = surface::classify(&inb.method, &inb.path, inb.anthropic_version).map_err(|r| (guess, refusal(r)))?;
    let dialect = Dialect::of(surface.format);
    let token = keys::extract(inb.authorization.as_deref(), inb.x_api_key.as_deref(), checked)
        .map_err(|e| (dialect, key_denial(e)))?;
    if has_body && !surface.takes_body() {
        return Err((dialect, Denial::new(400, Code::UnexpectedBody, "this endpoint takes no request body")));
    }
    if inb.content_length.is_some_and(|n| n > max_body) {
        return Err((dialect, too_large(max_body)));
    }
    let content_type = inb.content_type.as_deref().unwrap_or("");
    let boundary = match surface.judge {
        Judge::Model(BodyKind::Json) if has_body && !is_json(content_type) => {
            return Err((
                dialect,
                Denial::new(
                    415,
                    Code::UnsupportedMediaType,
                    "this endpoint takes a JSON body: send `content-type: application/json`",
                ),
            ));
        }
        Judge::Model(BodyKind::Multipart) => match multipart::boundary_of(content_type) {
            Some(b) => Some(b),
            None => {
                return Err((
                    dialect,
                    Denial::new(
                        415,
                        Code::UnsupportedMediaType,
                        "this endpoint takes a form: send `content-type: multipart/form-data; boundary=...`",
                    ),
                ))
            }
        },
        _ => None,
    };
    Ok(Screened { surface, dialect, token, boundary })
}

fn url_carries_credential(inb: &Inbound) -> bool {
    inb.token_in.contains(&":path") || inb.path.split_once('?').is_some_and(|(_, q)| query::has_credential(q))
}

/// The headers to blank before a refusal is sent: those that carry a
/// credential would otherwise reach Envoy's access log (it prints the path
/// and the request id) in clear.
pub fn leaking_headers<'a>(inb: &'a Inbound<'_>) -> impl Iterator<Item = &'a str> {
    let path = url_carries_credential(inb).then_some(":path");
    inb.token_in.iter().copied().filter(|n| *n != ":path").chain(path)
}

fn is_json(content_type: &str) -> bool {
    let media = content_type.split(';').next().unwrap_or("").trim();
    media.eq_ignore_ascii_case("application/json")
}

fn refusal(r: Refusal) -> Denial {
    match r {
        Refusal::InvalidPath => Denial::new(
            400,
            Code::InvalidPath,
            "the path has a dot segment, an empty segment, percent-encoding, a backslash or a character keygate does not serve",
        ),
        Refusal::UnknownPath => Denial::new(404, Code::UnsupportedPath, "keygate does not serve this path"),
        Refusal::Method { allow } => {
            let mut d = Denial::new(405, Code::MethodNotAllowed, format!("this path takes {allow}"));
            d.headers.push(("allow", allow));
            d
        }
    }
}

pub fn too_large(limit: u64) -> Denial {
    Denial::new(413, Code::RequestTooLarge, format!("the request body exceeds the limit of {limit} bytes"))
}

pub fn key_denial(e: KeyError) -> Denial {
    match e {
        KeyError::Missing => Denial::new(
            401,
            Code::MissingAccessKey,
            "no access key: send it as `Authorization: Bearer <key>` or `x-api-key: <key>`",
        ),
        KeyError::Ambiguous => {
            Denial::new(401, Code::AmbiguousAccessKey, "`Authorization` and `x-api-key` carry different keys; send one")
        }
        KeyError::NotBearer => {
            Denial::new(401, Code::MalformedAccessKey, "the `Authorization` header must be `Bearer <key>`")
        }
        KeyError::Malformed(t) => {
            Denial::new(401, Code::MalformedAccessKey, format!("malformed access key: {}", t.as_str()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keygate_proto::token;

    fn tok() -> String {
        token::from_random(&[5u8; token::RANDOM_BYTES])
    }

    /// (Leaks its headers: an `Inbound` borrows them.)
    fn inbound(method: &str, path: &str, extra: &[(&str, &str)]) -> Inbound<'static> {
        let auth = format!("Bearer {}", tok());
        let mut headers = vec![(":method", method), (":path", path), ("authorization", auth.as_str())];
        headers.extend_from_slice(extra);
        let owned: Vec<(String, String)> = headers.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect();
        let leaked: &'static [(String, String)] = Box::leak(owned.into_boxed_slice());
        Inbound::from_headers(leaked.iter().map(|(n, v)| (n.as_str(), v.as_bytes())))
    }

    fn code(inb: &Inbound, has_body: bool) -> &'static str {
        match screen(inb, has_body, 1000, None) {
            Ok(_) => "ok",
            Err((_, d)) => d.code.as_str(),
        }
    }

    const JSON: (&str, &str) = ("content-type", "application/json");

    #[test]
    fn the_order_of_refusals() {
        let t = tok();
        let leaky = inbound("TRACE", &format!("/v1/x?key={t}"), &[("x-user", &t)]);
        assert_eq!(code(&leaky, false), "access_key_in_header");
        assert_eq!(code(&inbound("TRACE", &format!("/v1/x?key={t}"), &[]), false), "credential_in_url");
        let overridden = inbound("GET", "/v1/models", &[("x-http-method-override", "DELETE")]);
        assert_eq!(code(&overridden, false), "method_override");
        assert_eq!(code(&inbound("TRACE", "/v1/../x", &[]), false), "invalid_path");
        assert_eq!(code(&inbound("TRACE", "/v1/x", &[]), false), "unsupported_path");
        assert_eq!(code(&inbound("TRACE", "/v1/chat/completions", &[]), false), "method_not_allowed");
        let keyless = Inbound::from_headers([(":method", &b"POST"[..]), (":path", &b"/v1/chat/completions"[..])]);
        assert_eq!(code(&keyless, true), "missing_access_key");
        assert_eq!(code(&inbound("GET", "/v1/models", &[]), true), "unexpected_body");
        assert_eq!(
            code(&inbound("POST", "/v1/chat/completions", &[JSON, ("content-length", "1001")]), true),
            "request_too_large"
        );
        assert_eq!(code(&inbound("POST", "/v1/chat/completions", &[]), true), "unsupported_media_type");
        assert_eq!(
            code(&inbound("POST", "/v1/chat/completions", &[("content-type", "text/plain")]), true),
            "unsupported_media_type"
        );
        assert_eq!(code(&inbound("POST", "/v1/audio/transcriptions", &[JSON]), true), "unsupported_media_type");
        assert_eq!(code(&inbound("POST", "/v1/chat/completions", &[JSON]), true), "ok");
        assert_eq!(
            code(
                &inbound("POST", "/v1/chat/completions", &[("content-type", "Application/JSON; charset=utf-8")]),
                true
            ),
            "ok"
        );
        // No body: the decision reports the missing model.
        assert_eq!(code(&inbound("POST", "/v1/chat/completions", &[]), false), "ok");
    }

    #[test]
    fn credentials_anywhere_in_the_url_are_refused_and_blanked() {
        let t = tok();
        for path in [format!("/v1/files/{t}"), format!("/v1/models/openai:{t}"), format!("/v1/models?x={t}")] {
            let inb = inbound("GET", &path, &[]);
            assert_eq!(code(&inb, false), "credential_in_url", "{path}");
            assert_eq!(leaking_headers(&inb).collect::<Vec<_>>(), [":path"]);
        }
        let inb = inbound("GET", "/v1/models?api_key=sk-provider-secret", &[("x-request-id", &t), ("x-other", "1")]);
        assert_eq!(leaking_headers(&inb).collect::<Vec<_>>(), ["x-request-id", ":path"]);
        assert_eq!(leaking_headers(&inbound("GET", "/v1/models", &[])).count(), 0);
    }

    #[test]
    fn method_refusals_name_the_allowed_methods() {
        let (_, d) = screen(&inbound("TRACE", "/v1/files/f1", &[]), false, 10, None).unwrap_err();
        assert_eq!((d.status, d.headers.clone()), (405, vec![("allow", "GET, DELETE".to_string())]));
    }

    #[test]
    fn refusals_speak_the_clients_dialect() {
        let (dialect, _) = screen(&inbound("PUT", "/v1/messages", &[]), false, 10, None).unwrap_err();
        assert_eq!(dialect, Dialect::Anthropic);
        let (dialect, _) =
            screen(&inbound("GET", "/v1/nope", &[("anthropic-version", "2023-06-01")]), false, 10, None).unwrap_err();
        assert_eq!(dialect, Dialect::Anthropic);
        let (dialect, _) = screen(&inbound("GET", "/v1/nope", &[]), false, 10, None).unwrap_err();
        assert_eq!(dialect, Dialect::OpenAi);
    }

    #[test]
    fn forms_carry_their_boundary() {
        let ct = ("content-type", "multipart/form-data; boundary=xyz");
        let edits = inbound("POST", "/v1/images/edits", &[ct]);
        assert_eq!(screen(&edits, true, 10, None).unwrap().boundary, Some("xyz"));
        let upload = inbound("POST", "/v1/files", &[ct]);
        assert_eq!(screen(&upload, true, 10, None).unwrap().boundary, None, "account uploads are not read for a model");
    }
}
