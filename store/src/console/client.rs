//! The console's only way to the data: the management API, called in
//! process (`tower::ServiceExt::oneshot` on the management router) with the
//! session's [`SessionCredential`] and the [`ViaConsole`] extension (request
//! extensions: no client can send either). Authentication, roles,
//! validation and the audit log are the API's own.

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use axum::Router;
use serde_json::Value;
use tower::ServiceExt;

use crate::api::principal::{SessionCredential, ViaConsole};

/// Largest API answer the console reads (a page of 100 keys is far below).
const ANSWER_LIMIT: usize = 16 * 1024 * 1024;

/// An API error answer, as the console shows it.
#[derive(Debug, Clone)]
pub struct Failure {
    pub status: StatusCode,
    pub code: String,
    pub msg: String,
    /// `details.field` of a 400: which field the message is about.
    pub field: Option<String>,
}

impl Failure {
    fn internal(msg: &str) -> Failure {
        Failure {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "internal_error".into(),
            msg: msg.into(),
            field: None,
        }
    }
}

/// The management API as one signed-in session sees it.
#[derive(Clone)]
pub struct Api {
    router: Router,
    credential: SessionCredential,
}

/// Percent-encodes one path segment (everything but RFC 3986's unreserved).
pub fn seg(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `path?k=v&…` with the pairs whose value is not empty, form-encoded.
pub fn with_query(path: &str, pairs: &[(&str, &str)]) -> String {
    let pairs: Vec<(&str, &str)> = pairs.iter().filter(|(_, v)| !v.is_empty()).copied().collect();
    if pairs.is_empty() {
        return path.to_string();
    }
    format!("{path}?{}", serde_urlencoded::to_string(pairs).unwrap_or_default())
}

impl Api {
    pub fn session(router: Router, credential: SessionCredential) -> Api {
        Api { router, credential }
    }

    /// Calls the API; `Ok` is the JSON answer of a 2xx (`Null` for 204).
    pub async fn call(&self, method: Method, path: &str, body: Option<&Value>) -> Result<Value, Failure> {
        let mut req = Request::builder().method(method).uri(path);
        let body = match body {
            Some(v) => {
                req = req.header(header::CONTENT_TYPE, "application/json");
                Body::from(serde_json::to_vec(v).map_err(|_| Failure::internal("could not encode the request"))?)
            }
            None => Body::empty(),
        };
        let mut req = req.body(body).map_err(|_| Failure::internal("could not build the request"))?;
        req.extensions_mut().insert(self.credential.clone());
        req.extensions_mut().insert(ViaConsole);
        let resp = match self.router.clone().oneshot(req).await {
            Ok(r) => r,
            Err(never) => match never {},
        };
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), ANSWER_LIMIT)
            .await
            .map_err(|_| Failure::internal("could not read the API's answer"))?;
        let doc: Value =
            if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap_or(Value::Null) };
        if status.is_success() {
            return Ok(doc);
        }
        Err(Failure {
            status,
            code: doc["errorCode"].as_str().unwrap_or("error").to_string(),
            msg: doc["msg"].as_str().map_or_else(|| format!("the API answered {status}"), str::to_string),
            field: doc["details"]["field"].as_str().map(str::to_string),
        })
    }

    pub async fn get(&self, path: &str) -> Result<Value, Failure> {
        self.call(Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Result<Value, Failure> {
        self.call(Method::POST, path, Some(body)).await
    }

    pub async fn patch(&self, path: &str, body: &Value) -> Result<Value, Failure> {
        self.call(Method::PATCH, path, Some(body)).await
    }

    pub async fn put(&self, path: &str, body: &Value) -> Result<Value, Failure> {
        self.call(Method::PUT, path, Some(body)).await
    }

    pub async fn delete(&self, path: &str) -> Result<Value, Failure> {
        self.call(Method::DELETE, path, None).await
    }
}

/// `beforeId` of a list answer's `nextPageUri`, if there is a next page.
pub fn next_before_id(doc: &Value) -> Option<String> {
    let next = doc["nextPageUri"].as_str()?;
    let (_, query) = next.split_once('?')?;
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query).ok()?;
    pairs.into_iter().find(|(k, _)| k == "beforeId").map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_and_queries_are_encoded() {
        assert_eq!(seg("ak_1"), "ak_1");
        assert_eq!(seg("../x y/%"), "..%2Fx%20y%2F%25");
        assert_eq!(with_query("/a", &[("q", "x&y"), ("b", "")]), "/a?q=x%26y");
        assert_eq!(with_query("/a", &[("b", "")]), "/a");
        let doc = serde_json::json!({"nextPageUri": "/access-keys?limit=2&beforeId=ak_9&q=web"});
        assert_eq!(next_before_id(&doc).as_deref(), Some("ak_9"));
        assert_eq!(next_before_id(&serde_json::json!({"nextPageUri": null})), None);
    }
}
