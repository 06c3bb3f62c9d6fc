//! Extractors whose rejections come back in the API's error shape.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use serde::de::DeserializeOwned;
use serde::Deserialize;

use super::principal::{Principal, Via, ViaConsole};
use crate::error::ApiError;
use crate::model::is_plausible_id;
use crate::storage::{Audit, PageRequest};

/// A JSON body: bad JSON, wrong types, unknown or missing fields, and bodies
/// over the limit all become [`ApiError`]s.
pub struct ApiJson<T>(pub T);

/// Like [`ApiJson`], but an empty body means `T::default()`.
pub struct ApiJsonOrEmpty<T>(pub T);

async fn body_bytes<S: Send + Sync>(req: Request, state: &S) -> Result<Bytes, ApiError> {
    Bytes::from_request(req, state).await.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::BodyTooLarge
        } else {
            ApiError::BadRequest { code: "invalid_body", msg: "could not read the request body".into(), field: None }
        }
    })
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = body_bytes(req, state).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(ApiError::BadRequest {
                code: "invalid_json",
                msg: "the request body is empty; expected a JSON object".into(),
                field: None,
            });
        }
        parse_json(&bytes).map(ApiJson)
    }
}

impl<S: Send + Sync, T: DeserializeOwned + Default> FromRequest<S> for ApiJsonOrEmpty<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = body_bytes(req, state).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(ApiJsonOrEmpty(T::default()));
        }
        parse_json(&bytes).map(ApiJsonOrEmpty)
    }
}

/// Like [`ApiJson`], with the body as the JSON it was too: the fields a
/// change sets, as the audit log records them.
pub struct Audited<T>(pub T, pub serde_json::Value);

/// Like [`ApiJsonOrEmpty`], with the body as JSON too (`{}` when empty).
pub struct AuditedOrEmpty<T>(pub T, pub serde_json::Value);

fn as_value(bytes: &[u8]) -> Result<serde_json::Value, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| ApiError::Internal(format!("re-reading a parsed body: {e}")))
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Audited<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = body_bytes(req, state).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(ApiError::BadRequest {
                code: "invalid_json",
                msg: "the request body is empty; expected a JSON object".into(),
                field: None,
            });
        }
        let parsed = parse_json(&bytes)?;
        Ok(Audited(parsed, as_value(&bytes)?))
    }
}

impl<S: Send + Sync, T: DeserializeOwned + Default> FromRequest<S> for AuditedOrEmpty<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = body_bytes(req, state).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(AuditedOrEmpty(T::default(), serde_json::json!({})));
        }
        let parsed = parse_json(&bytes)?;
        Ok(AuditedOrEmpty(parsed, as_value(&bytes)?))
    }
}

/// Who makes a management call and through what: the [`Principal`] the
/// authentication middleware found, and `console` when the request carries
/// the [`ViaConsole`] extension (`api` otherwise).
#[derive(Debug, Clone)]
pub struct Caller {
    pub principal: Principal,
    pub via: Via,
}

impl Caller {
    /// The audit-log entry of a change this caller makes (see [`Audit::new`]).
    pub fn audit(
        &self,
        action: &str,
        resource_type: &str,
        resource_id: Option<String>,
        changes: serde_json::Value,
    ) -> Audit {
        Audit::new(&self.principal, self.via, action, resource_type, resource_id, changes)
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        let principal = parts.extensions.get::<Principal>().cloned().ok_or(ApiError::Unauthorized)?;
        let via = if parts.extensions.get::<ViaConsole>().is_some() { Via::Console } else { Via::Api };
        Ok(Caller { principal, via })
    }
}

fn join(path: &str, name: &str) -> String {
    if path.is_empty() || path == "." {
        name.to_string()
    } else {
        format!("{path}.{name}")
    }
}

fn backticked(msg: &str) -> Option<&str> {
    let start = msg.find('`')? + 1;
    let len = msg.get(start..)?.find('`')?;
    msg.get(start..start + len)
}

/// Parses a JSON body into `T`, classifying failures.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::BadRequest {
            code: "invalid_json",
            msg: "the request body must be a JSON object".into(),
            field: None,
        });
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value: T = match serde_path_to_error::deserialize(&mut de) {
        Ok(v) => v,
        Err(e) => {
            let path = e.path().to_string();
            let inner = e.into_inner();
            let msg = inner.to_string();
            return Err(match inner.classify() {
                serde_json::error::Category::Data => {
                    if msg.starts_with("unknown field") {
                        // serde_path_to_error's path already ends with the unknown key.
                        let field = if path.is_empty() || path == "." {
                            backticked(&msg).unwrap_or("").to_string()
                        } else {
                            path
                        };
                        ApiError::BadRequest { code: "unknown_field", msg, field: Some(field) }
                    } else if msg.starts_with("missing field") {
                        let field = join(&path, backticked(&msg).unwrap_or(""));
                        ApiError::BadRequest { code: "invalid_field", msg, field: Some(field) }
                    } else if path.is_empty() || path == "." {
                        ApiError::BadRequest {
                            code: "invalid_json",
                            msg: format!("expected a JSON object: {msg}"),
                            field: None,
                        }
                    } else {
                        ApiError::BadRequest { code: "invalid_field", msg, field: Some(path) }
                    }
                }
                _ => ApiError::BadRequest {
                    code: "invalid_json",
                    msg: format!("the request body is not valid JSON: {msg}"),
                    field: None,
                },
            });
        }
    };
    de.end().map_err(|e| ApiError::BadRequest {
        code: "invalid_json",
        msg: format!("the request body is not valid JSON: {e}"),
        field: None,
    })?;
    Ok(value)
}

/// A resource id from the path. Ids that we could never have issued are
/// simply not found.
pub struct Id(pub String);

impl<S: Send + Sync> FromRequestParts<S> for Id {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(id) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::NotFound("not found".into()))?;
        if is_plausible_id(&id) || crate::model::is_provider_id(&id) {
            Ok(Id(id))
        } else {
            Err(ApiError::NotFound(format!("{id:?} not found")))
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ListQuery {
    limit: Option<String>,
    before_id: Option<String>,
}

/// `?limit=1..=100&beforeId=...` of list endpoints.
pub struct Paging(pub PageRequest);

pub const DEFAULT_LIMIT: usize = 100;

impl<S: Send + Sync> FromRequestParts<S> for Paging {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        let q: ListQuery = serde_urlencoded::from_str(parts.uri.query().unwrap_or("")).map_err(|e| {
            ApiError::BadRequest { code: "invalid_query", msg: format!("bad query string: {e}"), field: None }
        })?;
        page_request(q.limit, q.before_id).map(Paging)
    }
}

/// Checks `limit` (1..=100, default 100) and `beforeId` of a list query.
pub fn page_request(limit: Option<String>, before_id: Option<String>) -> Result<PageRequest, ApiError> {
    let limit = match limit {
        None => DEFAULT_LIMIT,
        Some(l) => match l.parse::<usize>() {
            Ok(n) if (1..=100).contains(&n) => n,
            _ => return Err(ApiError::invalid("limit", "limit must be an integer from 1 to 100")),
        },
    };
    if let Some(b) = &before_id {
        if !is_plausible_id(b) {
            return Err(ApiError::invalid("beforeId", "beforeId is not a valid id"));
        }
    }
    Ok(PageRequest { limit, before_id })
}

/// Parses a query string into `T` (unknown parameters refused).
pub fn parse_query<T: DeserializeOwned>(query: Option<&str>) -> Result<T, ApiError> {
    serde_urlencoded::from_str(query.unwrap_or("")).map_err(|e| ApiError::BadRequest {
        code: "invalid_query",
        msg: format!("bad query string: {e}"),
        field: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{CreateAccessKey, CreateConfig};

    fn field(e: ApiError) -> (String, Option<String>) {
        match e {
            ApiError::BadRequest { code, field, .. } => (code.to_string(), field),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn classifies_json_errors() {
        let e = parse_json::<CreateAccessKey>(br#"{"name":"a","bogus":1}"#).err().unwrap();
        assert_eq!(field(e), ("unknown_field".into(), Some("bogus".into())));
        let e = parse_json::<CreateAccessKey>(br#"{"name":5}"#).err().unwrap();
        assert_eq!(field(e), ("invalid_field".into(), Some("name".into())));
        let e = parse_json::<CreateAccessKey>(br#"{}"#).err().unwrap();
        assert_eq!(field(e), ("invalid_field".into(), Some("name".into())));
        let e = parse_json::<CreateAccessKey>(br#"{"name":"#).err().unwrap();
        assert_eq!(field(e), ("invalid_json".into(), None));
        let e = parse_json::<CreateAccessKey>(br#"[]"#).err().unwrap();
        assert_eq!(field(e), ("invalid_json".into(), None));
        let e = parse_json::<CreateAccessKey>(br#"{"name":"a"} x"#).err().unwrap();
        assert_eq!(field(e), ("invalid_json".into(), None));
        let e =
            parse_json::<CreateConfig>(br#"{"name":"a","access":{"models":{"allow":[], "deny":[]}}}"#).err().unwrap();
        assert_eq!(field(e), ("unknown_field".into(), Some("access.models.deny".into())));
        let e = parse_json::<CreateConfig>(
            br#"{"name":"a","router":{"rules":[{"provider":"openai","steps":[{"type":"user","keys":[{"id":1}]}]}]}}"#,
        )
        .err()
        .unwrap();
        let (code, f) = field(e);
        assert_eq!(code, "invalid_field");
        assert!(f.unwrap().starts_with("router.rules[0].steps[0]"));
    }
}
