//! The web console, served by the store at `/console` on the management
//! listener. Server-rendered HTML (maud: every interpolation escaped), a
//! stylesheet and a small script compiled into the binary, nothing fetched
//! from elsewhere. Every action is a management API call made in process
//! with the signed-in credential ([`client::Api`]), so roles, validation
//! and the audit log are the API's own; the console only shows them.
//!
//! Security, in one place:
//! - the session is a row in the database, found by the digest of the random
//!   token that is the cookie's whole value ([`session`]); it ends after 12
//!   hours, 30 idle minutes, or at sign-out, and its credential is checked
//!   by the API (`GET /whoami`) on every request;
//! - every POST carries the session's CSRF token (a hidden field) and must
//!   come from this origin (`Sec-Fetch-Site`, `Origin`); a refused write is
//!   a 403 that changes nothing;
//! - every response carries a strict CSP (no inline script or style),
//!   `nosniff`, `no-referrer`, and pages are `no-store`;
//! - a token (or a webhook secret) is shown once, on the page right after
//!   it was created or rotated (the session row records that it was shown);
//!   provider-key values are never shown;
//! - sign-ins are limited per actor (10 a minute per store process).

// The console reads the API's JSON answers as `serde_json::Value`, whose
// `value["key"]` answers `Null` for a missing key or a value that is not an
// object: it never panics. No slice or vector is indexed here.
#![allow(clippy::indexing_slicing)]

pub mod client;
mod layout;
mod pages;
pub mod session;

use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::middleware::{from_fn, from_fn_with_state, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde::Deserialize;

use self::client::Api;
use self::session::{Fingerprinter, Sealer, Session};
use crate::api::principal::{Role, SessionCredential};
use crate::api::{run, Stats};
use crate::policy::sessions::{self as rules, SignInThrottle};

/// The session cookie's name.
pub const COOKIE: &str = "kg_console";
/// The cookie that carries a fresh token to the page that shows it once.
pub const ONCE_COOKIE: &str = "kg_console_once";
/// Largest form body (bytes), as the API's body limit.
const FORM_LIMIT: usize = crate::api::BODY_LIMIT;

/// Every console response's Content-Security-Policy: scripts and styles from
/// the console's own files only, nothing inline, no framing.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                       form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// What the console needs besides the management router.
pub struct Config {
    sealer: Sealer,
    fingerprinter: Fingerprinter,
    /// Always mark cookies `Secure` (`KEYGATE_CONSOLE_SECURE_COOKIE=1`: the
    /// console is reached over TLS, through a proxy that may not say so).
    secure_cookie: bool,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config").field("secure_cookie", &self.secure_cookie).finish_non_exhaustive()
    }
}

impl Config {
    /// The keys are derived from the master key (HKDF), so every replica of
    /// a store opens the others' sealed cookies and recognises the admin
    /// token's fingerprint in their sessions.
    pub fn new(master_key: &[u8; 32], secure_cookie: bool) -> Config {
        Config { sealer: Sealer::derive(master_key), fingerprinter: Fingerprinter::derive(master_key), secure_cookie }
    }

    /// The fingerprint a session keeps of the bootstrap admin token.
    pub fn fingerprint(&self, credential: &str) -> String {
        self.fingerprinter.fingerprint(credential)
    }

    /// What a session opened with `credential` keeps of it (see
    /// [`SessionCredential`]): a management key's token digest, else the
    /// fingerprint (whatever is not a management key can only be the admin
    /// token; the API refuses anything else).
    pub fn session_credential(&self, credential: &str) -> SessionCredential {
        if crate::ids::is_management_token(credential) {
            SessionCredential::Key(keygate_proto::token::digest(credential))
        } else {
            SessionCredential::Bootstrap(self.fingerprint(credential))
        }
    }
}

/// The console's router state.
#[derive(Clone)]
pub struct Console {
    cfg: Arc<Config>,
    /// The management API router, called in process.
    api: Router,
    /// The API's state: a sign-in is recorded in the audit log, and the
    /// sessions are rows of its store.
    state: crate::api::AppState,
    /// Successful sign-ins per actor (this process's).
    throttle: Arc<Mutex<SignInThrottle>>,
}

/// The management listener's app: the console's routes, everything else to
/// the API.
pub fn app(cfg: Arc<Config>, api: Router, state: crate::api::AppState) -> Router {
    let stats: Arc<Stats> = state.stats.clone();
    let console = Console { cfg, api: api.clone(), state, throttle: Arc::default() };
    pages::routes()
        .route("/console/static/console.css", get(css))
        .route("/console/static/console.js", get(js))
        .route("/console/{*rest}", get(not_found))
        .route_layer(from_fn(crate::api::tag_route))
        .layer(from_fn(security_headers))
        .layer(from_fn_with_state((stats, "management"), crate::api::log_requests))
        .with_state(console)
        .fallback_service(api)
}

const CSS: &str = include_str!("assets/console.css");
const JS: &str = include_str!("assets/console.js");

async fn css() -> Response {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8"), (header::CACHE_CONTROL, "no-cache")], CSS).into_response()
}

async fn js() -> Response {
    ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8"), (header::CACHE_CONTROL, "no-cache")], JS)
        .into_response()
}

async fn not_found(s: Result<Signed, Response>) -> Response {
    layout::message_page(s.ok().as_ref(), StatusCode::NOT_FOUND, "Not found", "There is no such page in the console.")
}

/// The headers of every console response.
async fn security_headers(req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(HeaderName::from_static("cross-origin-opener-policy"), HeaderValue::from_static("same-origin"));
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    resp
}

// ------------------------------------------------------------ sessions

/// Whether cookies get `Secure`: always with `KEYGATE_CONSOLE_SECURE_COOKIE`,
/// and whenever a TLS proxy in front says the request came over HTTPS.
fn secure(cfg: &Config, headers: &HeaderMap) -> bool {
    cfg.secure_cookie
        || headers
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .is_some_and(|p| p.trim().eq_ignore_ascii_case("https"))
}

/// A cookie's value from the request's `Cookie` headers.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// `Set-Cookie` for `name` (HttpOnly, SameSite=Strict); `None` deletes it.
fn set_cookie(name: &str, path: &str, value: Option<(&str, i64)>, secure: bool) -> HeaderValue {
    let (v, max_age) = value.unwrap_or(("", 0));
    let s = format!(
        "{name}={v}; Path={path}; Max-Age={max_age}; HttpOnly; SameSite=Strict{}",
        if secure { "; Secure" } else { "" }
    );
    HeaderValue::from_str(&s).unwrap_or_else(|_| HeaderValue::from_static("kg_console_invalid=; Max-Age=0"))
}

impl Console {
    /// The open session the request's cookie names, if any; its use is
    /// recorded (at most once a minute). `Err`: the database did not answer.
    async fn session(&self, headers: &HeaderMap) -> Result<Option<Session>, Response> {
        let Some(id) = cookie(headers, COOKIE).and_then(session::id_of) else { return Ok(None) };
        let lookup = id.clone();
        let row = match run(&self.state, move |s| s.console_session(&lookup)).await {
            Ok(row) => row,
            Err(e) => {
                tracing::warn!(error = ?e, "could not read a console session");
                return Err(unavailable());
            }
        };
        let now = crate::ids::now_ms();
        let Some(row) = row.filter(|r| r.live(now)) else { return Ok(None) };
        if row.needs_touch(now) {
            let before = rules::touch_before(now);
            if let Err(e) = run(&self.state, move |s| s.touch_console_session(&id, now, before)).await {
                tracing::warn!(error = ?e, "could not record a console session's use");
            }
        }
        Ok(Some(Session::of_row(&row)))
    }

    /// Deletes a session (sign-out, or its credential was refused).
    async fn end(&self, id: &str) -> Result<(), Response> {
        let id = id.to_string();
        run(&self.state, move |s| s.delete_console_session(&id)).await.map(|_| ()).map_err(|e| {
            tracing::warn!(error = ?e, "could not delete a console session");
            unavailable()
        })
    }
}

fn unavailable() -> Response {
    layout::message_page(
        None,
        StatusCode::SERVICE_UNAVAILABLE,
        "Unavailable",
        "The store's database did not answer. Try again in a moment.",
    )
}

/// Who is signed in, as `GET /whoami` says.
#[derive(Debug, Clone, Deserialize)]
pub struct Who {
    pub actor: String,
    pub name: Option<String>,
    pub role: Role,
}

impl Who {
    /// May change access keys and configurations.
    pub fn operates(&self) -> bool {
        self.role >= Role::Operator
    }

    /// May change provider keys, providers, credits and alert webhooks.
    pub fn admin(&self) -> bool {
        self.role >= Role::Admin
    }
}

/// A signed-in request: the session, whose credential the API has just
/// accepted again, and the API as that credential sees it.
#[derive(Clone)]
pub struct Signed {
    pub session: Session,
    pub who: Who,
    pub api: Api,
    pub secure: bool,
    pub sealer: Sealer,
    state: crate::api::AppState,
}

impl Signed {
    /// Makes a fresh nonce this session's pending reveal (replacing any
    /// earlier one) and returns it; `None` if it could not be recorded.
    pub async fn pend_reveal(&self) -> Option<String> {
        let nonce = crate::ids::random_hex(16).ok()?;
        let (id, n) = (self.session.id.clone(), nonce.clone());
        match run(&self.state, move |s| s.set_console_reveal(&id, &n)).await {
            Ok(true) => Some(nonce),
            Ok(false) => None,
            Err(e) => {
                tracing::warn!(error = ?e, "could not record a pending reveal");
                None
            }
        }
    }

    /// Takes the session's pending reveal `nonce`: `true` the first time only.
    pub async fn take_reveal(&self, nonce: &str) -> bool {
        let (id, n) = (self.session.id.clone(), nonce.to_string());
        run(&self.state, move |s| s.take_console_reveal(&id, &n)).await.unwrap_or_else(|e| {
            tracing::warn!(error = ?e, "could not take a pending reveal");
            false
        })
    }

    /// Ends this session (sign-out): its row is deleted, so no copy of the
    /// cookie opens it again, on any replica.
    pub async fn end(&self, c: &Console) -> Result<(), Response> {
        c.end(&self.session.id).await
    }
}

/// To the sign-in page (303), the session cookie deleted.
fn to_sign_in(secure: bool, why: &str) -> Response {
    let mut resp = see_other(&client::with_query("/console/sign-in", &[("why", why)]));
    resp.headers_mut().append(header::SET_COOKIE, set_cookie(COOKIE, "/console", None, secure));
    resp
}

pub fn see_other(location: &str) -> Response {
    let mut resp = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

impl FromRequestParts<Console> for Signed {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, c: &Console) -> Result<Self, Response> {
        let secure = secure(&c.cfg, &parts.headers);
        let Some(session) = c.session(&parts.headers).await? else {
            let why = if cookie(&parts.headers, COOKIE).is_some() { "expired" } else { "" };
            return Err(to_sign_in(secure, why));
        };
        c.signed(session, secure).await
    }
}

impl Console {
    /// The session's credential checked again by the API (`GET /whoami`).
    async fn signed(&self, session: Session, secure: bool) -> Result<Signed, Response> {
        let api = Api::session(self.api.clone(), session.credential.clone());
        match api.get("/whoami").await {
            Ok(doc) => match serde_json::from_value::<Who>(doc) {
                // The credential is the one signed in with (a key's digest is
                // unique to it, so this holds unless the row was tampered with).
                Ok(who) if who.actor == session.actor => {
                    Ok(Signed { session, who, api, secure, sealer: self.cfg.sealer.clone(), state: self.state.clone() })
                }
                Ok(_) => {
                    self.end(&session.id).await?;
                    Err(to_sign_in(secure, "revoked"))
                }
                Err(_) => Err(layout::message_page(
                    None,
                    StatusCode::BAD_GATEWAY,
                    "Unexpected answer",
                    "GET /whoami answered something the console does not understand.",
                )),
            },
            // The credential was deleted or rotated: the session ends now.
            Err(f) if f.status == StatusCode::UNAUTHORIZED => {
                self.end(&session.id).await?;
                Err(to_sign_in(secure, "revoked"))
            }
            Err(f) => Err(layout::message_page(None, f.status, "The API refused", &f.msg)),
        }
    }
}

/// A submitted form (`application/x-www-form-urlencoded`).
#[derive(Debug, Default, Clone)]
pub struct Form(Vec<(String, String)>);

impl Form {
    fn parse(bytes: &[u8]) -> Option<Form> {
        serde_urlencoded::from_bytes(bytes).ok().map(Form)
    }

    /// The first value of `name` ("" when absent).
    pub fn get(&self, name: &str) -> &str {
        self.0.iter().find(|(k, _)| k == name).map_or("", |(_, v)| v.as_str())
    }

    /// Every value of `name` (checkboxes of one name), in order.
    pub fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0.iter().filter(move |(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    pub fn has(&self, name: &str) -> bool {
        self.0.iter().any(|(k, _)| k == name)
    }
}

/// Whether a write came from a page of this console: a browser says where a
/// request comes from (`Sec-Fetch-Site`, `Origin`); when it says, it must be
/// this origin (the `Host`, or the `X-Forwarded-Host` a proxy in front
/// set). Non-browser clients send neither; the CSRF token still binds them.
///
/// The console's pages are `Referrer-Policy: no-referrer`, so a browser
/// sends their forms with `Origin: null`; that is accepted only beside
/// `Sec-Fetch-Site: same-origin` (every current browser sends it), never
/// alone (a sandboxed frame elsewhere sends `null` too).
pub fn same_origin(headers: &HeaderMap) -> bool {
    let site = headers.get("sec-fetch-site");
    if let Some(site) = site {
        if site.as_bytes() != b"same-origin" {
            return false;
        }
    }
    let Some(origin) = headers.get(header::ORIGIN) else { return true };
    if origin.as_bytes() == b"null" {
        return site.is_some();
    }
    let Some(authority) = origin.to_str().ok().and_then(|o| o.split_once("://")).map(|(_, a)| a) else {
        return false;
    };
    [headers.get(header::HOST), headers.get("x-forwarded-host")]
        .into_iter()
        .flatten()
        .filter_map(|h| h.to_str().ok())
        .filter_map(|h| h.split(',').next())
        .any(|h| h.trim().eq_ignore_ascii_case(authority))
}

/// A refused write: nothing was changed.
fn refused(s: Option<&Signed>) -> Response {
    layout::message_page(
        s,
        StatusCode::FORBIDDEN,
        "Refused",
        "This form was not sent from a console page of this session (a missing or wrong CSRF token, or another \
         origin). Nothing was changed. Go back, reload the page, and try again.",
    )
}

/// A signed-in write: the origin checked, the form read, its CSRF token
/// checked against the session's, then the credential checked with the API.
pub struct Write {
    pub s: Signed,
    pub form: Form,
}

impl FromRequest<Console> for Write {
    type Rejection = Response;

    async fn from_request(req: Request<Body>, c: &Console) -> Result<Self, Response> {
        let (parts, body) = req.into_parts();
        if !same_origin(&parts.headers) {
            return Err(refused(None));
        }
        let Ok(bytes) = axum::body::to_bytes(body, FORM_LIMIT).await else {
            return Err(layout::message_page(
                None,
                StatusCode::PAYLOAD_TOO_LARGE,
                "Too large",
                "The form is larger than the console accepts.",
            ));
        };
        let Some(form) = Form::parse(&bytes) else { return Err(refused(None)) };
        let secure = secure(&c.cfg, &parts.headers);
        let Some(session) = c.session(&parts.headers).await? else {
            return Err(to_sign_in(secure, "expired"));
        };
        if !session.csrf_matches(form.get("_csrf")) {
            return Err(refused(None));
        }
        let s = c.signed(session, secure).await?;
        Ok(Write { s, form })
    }
}

/// A form without a session (sign-in): the origin checked, the form read;
/// with whether cookies get `Secure`, and the request's headers.
pub struct Posted(pub Form, pub bool, pub HeaderMap);

impl FromRequest<Console> for Posted {
    type Rejection = Response;

    async fn from_request(req: Request<Body>, c: &Console) -> Result<Self, Response> {
        let secure = secure(&c.cfg, req.headers());
        if !same_origin(req.headers()) {
            return Err(refused(None));
        }
        let (parts, body) = req.into_parts();
        let Ok(bytes) = axum::body::to_bytes(body, FORM_LIMIT).await else {
            return Err(refused(None));
        };
        Form::parse(&bytes).map(|f| Posted(f, secure, parts.headers)).ok_or_else(|| refused(None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn writes_must_come_from_this_origin() {
        assert!(same_origin(&headers(&[("host", "127.0.0.1:8081")])));
        assert!(same_origin(&headers(&[
            ("host", "127.0.0.1:8081"),
            ("origin", "http://127.0.0.1:8081"),
            ("sec-fetch-site", "same-origin")
        ])));
        assert!(!same_origin(&headers(&[("host", "127.0.0.1:8081"), ("origin", "http://evil.example")])));
        assert!(!same_origin(&headers(&[("host", "127.0.0.1:8081"), ("sec-fetch-site", "cross-site")])));
        assert!(!same_origin(&headers(&[("host", "127.0.0.1:8081"), ("sec-fetch-site", "same-site")])));
        assert!(!same_origin(&headers(&[("host", "127.0.0.1:8081"), ("origin", "null")])));
        // A no-referrer page's form: `Origin: null`, from the same origin.
        assert!(same_origin(&headers(&[
            ("host", "127.0.0.1:8081"),
            ("origin", "null"),
            ("sec-fetch-site", "same-origin")
        ])));
        assert!(!same_origin(&headers(&[
            ("host", "127.0.0.1:8081"),
            ("origin", "null"),
            ("sec-fetch-site", "cross-site")
        ])));
        assert!(!same_origin(&headers(&[("host", "127.0.0.1:8081"), ("origin", "http://127.0.0.1:9999")])));
        // Behind a proxy that rewrote Host.
        assert!(same_origin(&headers(&[
            ("host", "127.0.0.1:8081"),
            ("x-forwarded-host", "keygate.example.com"),
            ("origin", "https://keygate.example.com")
        ])));
    }

    #[test]
    fn cookies_are_read_and_written_strictly() {
        let h = headers(&[("cookie", "a=1; kg_console=abc"), ("cookie", "b=2")]);
        assert_eq!(cookie(&h, COOKIE), Some("abc"));
        assert_eq!(cookie(&h, "b"), Some("2"));
        assert_eq!(cookie(&h, "kg"), None);
        let c = set_cookie(COOKIE, "/console", Some(("v", 60)), true);
        assert_eq!(c, "kg_console=v; Path=/console; Max-Age=60; HttpOnly; SameSite=Strict; Secure");
        let c = set_cookie(COOKIE, "/console", None, false);
        assert_eq!(c, "kg_console=; Path=/console; Max-Age=0; HttpOnly; SameSite=Strict");
        let cfg = Config::new(&[0u8; 32], false);
        assert!(!secure(&cfg, &headers(&[])));
        assert!(secure(&cfg, &headers(&[("x-forwarded-proto", "https")])));
        assert!(secure(&Config::new(&[0u8; 32], true), &headers(&[])));
    }
}
