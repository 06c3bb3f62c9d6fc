//! In-process tests of the web console: its headers, sessions, CSRF and
//! origin checks, the token (and a webhook's secret) shown once, the API's
//! errors in its forms, alert webhooks and their deliveries, providers and
//! prices, a viewer's pages.
//! (The browser tests are in tests/e2e/test_console.py.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::collections::HashMap;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use common::*;
use http_body_util::BodyExt;
use keygate_proto::token::digest;
use keygate_store::api::{management_app, AppState};
use keygate_store::console::{Config, CSP};
use keygate_store::crypto::Cipher;
use keygate_store::storage::{Options, SessionRow};
use serde_json::json;
use tower::ServiceExt;

const MASTER: [u8; 32] = [7u8; 32];

struct Console {
    _dir: tempfile::TempDir,
    _pg: Option<testdb::PgDb>,
    app: Router,
    store: std::sync::Arc<dyn keygate_store::storage::Store>,
}

fn console() -> Console {
    let dir = tempfile::tempdir().unwrap();
    let (backend, pg) = test_backend(&dir);
    let store = backend.open(Cipher::new(&MASTER), Options::default()).unwrap();
    let state = AppState::new(store.clone(), ADMIN, GATEWAY).with_console(Config::new(&MASTER, false));
    Console { app: management_app(state), store, _dir: dir, _pg: pg }
}

impl Console {
    /// The session row of `token` (the store called off the async thread,
    /// as the HTTP layer calls it: PostgreSQL's client blocks).
    async fn session(&self, token: &str) -> Option<SessionRow> {
        let (store, id) = (self.store.clone(), digest(token));
        tokio::task::spawn_blocking(move || store.console_session(&id).unwrap()).await.unwrap()
    }

    /// Puts the session row of `token` back with other times.
    async fn reset_session(&self, token: &str, created_ms: i64, seen_ms: i64) {
        let (store, id) = (self.store.clone(), digest(token));
        tokio::task::spawn_blocking(move || {
            let row = store.console_session(&id).unwrap().unwrap();
            store.delete_console_session(&id).unwrap();
            let row = SessionRow { created_ms, expires_ms: created_ms + 12 * HOUR_MS, seen_ms, ..row };
            store.create_console_session(&row).unwrap();
        })
        .await
        .unwrap();
    }
}

struct Resp {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: String,
}

impl Resp {
    fn location(&self) -> &str {
        self.headers.get("location").map_or("", |v| v.to_str().unwrap())
    }

    fn set_cookies(&self) -> Vec<String> {
        self.headers.get_all("set-cookie").iter().map(|v| v.to_str().unwrap().to_string()).collect()
    }

    /// The CSRF token of the page's first form.
    fn csrf(&self) -> String {
        let at = self.body.find(r#"name="_csrf" value=""#).expect("a form with a CSRF token") + 20;
        self.body[at..].split('"').next().unwrap().to_string()
    }
}

/// A browser: a cookie jar (paths ignored but for the token's cookie) and
/// the headers a same-origin page sends.
#[derive(Default)]
struct Browser {
    jar: HashMap<String, String>,
}

impl Browser {
    async fn send(
        &mut self,
        app: &Router,
        method: &str,
        uri: &str,
        form: Option<&str>,
        extra: &[(&str, &str)],
    ) -> Resp {
        let mut req = Request::builder().method(method).uri(uri).header("host", "console.test");
        if !self.jar.is_empty() {
            let c: Vec<String> = self.jar.iter().map(|(k, v)| format!("{k}={v}")).collect();
            req = req.header("cookie", c.join("; "));
        }
        if form.is_some() {
            req = req
                .header("content-type", "application/x-www-form-urlencoded")
                .header("origin", "null")
                .header("sec-fetch-site", "same-origin");
        }
        for (k, v) in extra {
            req = req.header(*k, *v);
        }
        let resp = app.clone().oneshot(req.body(Body::from(form.unwrap_or("").to_string())).unwrap()).await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = String::from_utf8(resp.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
        let r = Resp { status, headers, body };
        for c in r.set_cookies() {
            let (kv, attrs) = c.split_once(';').unwrap();
            let (k, v) = kv.split_once('=').unwrap();
            if attrs.contains("Max-Age=0") {
                self.jar.remove(k);
            } else {
                self.jar.insert(k.to_string(), v.to_string());
            }
        }
        r
    }

    async fn get(&mut self, app: &Router, uri: &str) -> Resp {
        self.send(app, "GET", uri, None, &[]).await
    }

    async fn post(&mut self, app: &Router, uri: &str, form: &str) -> Resp {
        self.send(app, "POST", uri, Some(form), &[]).await
    }

    async fn sign_in(&mut self, app: &Router) {
        self.sign_in_with(app, ADMIN).await;
    }

    async fn sign_in_with(&mut self, app: &Router, credential: &str) {
        let r = self.post(app, "/console/sign-in", &format!("credential={}", enc(credential))).await;
        assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    }
}

fn enc(s: &str) -> String {
    serde_urlencoded::to_string([("v", s)]).unwrap()[2..].to_string()
}

#[tokio::test]
async fn every_console_response_has_the_security_headers() {
    let c = console();
    let mut b = Browser::default();
    for uri in ["/console/sign-in", "/console", "/console/access-keys", "/console/static/console.css", "/console/nope"]
    {
        let r = b.get(&c.app, uri).await;
        assert_eq!(r.headers["content-security-policy"], CSP, "{uri}");
        assert_eq!(r.headers["x-content-type-options"], "nosniff", "{uri}");
        assert_eq!(r.headers["referrer-policy"], "no-referrer", "{uri}");
        assert!(r.headers.contains_key("cache-control"), "{uri}");
    }
    assert_eq!(b.get(&c.app, "/console/sign-in").await.headers["cache-control"], "no-store");
    // Signed out, pages lead to the sign-in page.
    let r = b.get(&c.app, "/console/access-keys").await;
    assert_eq!((r.status, r.location()), (StatusCode::SEE_OTHER, "/console/sign-in"));
    // No inline script or style anywhere.
    b.sign_in(&c.app).await;
    for uri in [
        "/console/access-keys",
        "/console/access-keys/new",
        "/console/configurations/new",
        "/console/usage",
        "/console/budgets",
        "/console/alerts",
        "/console/providers",
        "/console/providers/openai",
        "/console/prices",
        "/console/prices/delete?provider=openai&model=gpt-4o",
    ] {
        let r = b.get(&c.app, uri).await;
        assert_eq!(r.status, StatusCode::OK, "{uri}");
        assert_eq!(r.headers["cache-control"], "no-store", "{uri}");
        assert!(!r.body.contains("<script>") && !r.body.contains("style=") && !r.body.contains("<style"), "{uri}");
    }
    // The API is still served beside the console, and unchanged.
    let (s, v) = send(&c.app, "GET", "/whoami", Some(ADMIN), None).await;
    assert_eq!((s, v["role"].as_str()), (StatusCode::OK, Some("admin")));
    let (s, _) = send(&c.app, "GET", "/access-keys", None, None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    // Each request is counted once, under its route template: the API's and
    // the console's (whose own API calls count as API requests).
    let (_, m) = send(&c.app, "GET", "/metrics", None, None).await;
    let m = m.as_str().unwrap();
    assert!(m.contains(r#"{listener="management",route="/access-keys",status="401"} 1"#), "{m}");
    assert!(m.contains(r#"{listener="management",route="/console/sign-in",status="200"} 2"#), "{m}");
    assert!(m.contains(r#"{listener="management",route="/console/{*rest}",status="404"} 1"#), "{m}");
}

#[tokio::test]
async fn sign_in_takes_what_the_api_accepts_and_sign_out_ends_it() {
    let c = console();
    let mut b = Browser::default();
    for bad in [GATEWAY, "", "nope", "kg-0123"] {
        let r = b.post(&c.app, "/console/sign-in", &format!("credential={}", enc(bad))).await;
        assert!(r.status == StatusCode::UNAUTHORIZED, "{bad}: {}", r.status);
        assert!(r.set_cookies().is_empty());
    }
    let r = b.post(&c.app, "/console/sign-in", &format!("credential={ADMIN}")).await;
    assert_eq!((r.status, r.location()), (StatusCode::SEE_OTHER, "/console/access-keys"));
    let cookie = r.set_cookies().pop().unwrap();
    assert!(cookie.starts_with("kg_console="), "{cookie}");
    assert!(cookie.ends_with("; Path=/console; Max-Age=43200; HttpOnly; SameSite=Strict"), "{cookie}");
    // The cookie is a random token and nothing else; the server keeps its
    // session under the token's digest, with no credential in it.
    let token = b.jar["kg_console"].clone();
    assert!(token.len() == 64 && token.bytes().all(|b| b.is_ascii_hexdigit()), "{token}");
    let row = c.session(&token).await.expect("a session row");
    assert_eq!(row.actor, "bootstrap");
    assert!(row.credential_digest != ADMIN && row.credential_digest != digest(ADMIN), "a keyed fingerprint");
    assert!(row.id != token && row.csrf != token);
    let r = b.get(&c.app, "/console/access-keys").await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body.contains("admin token") && r.body.contains(r#"data-role="admin""#));
    // Sign out: the session ends on the server, the cookie is deleted...
    let csrf = r.csrf();
    let r = b.post(&c.app, "/console/sign-out", &format!("_csrf={csrf}")).await;
    assert_eq!((r.status, r.location()), (StatusCode::SEE_OTHER, "/console/sign-in?why=signed-out"));
    assert!(b.jar.is_empty());
    assert!(c.session(&token).await.is_none());
    // ...and a copy of the cookie taken before (by another service on this
    // host, say) opens nothing.
    let mut thief = Browser::default();
    thief.jar.insert("kg_console".into(), token.clone());
    let r = thief.get(&c.app, "/console/access-keys").await;
    assert_eq!(r.location(), "/console/sign-in?why=expired");
    let r = thief.post(&c.app, "/console/access-keys", &format!("name=x&_csrf={csrf}")).await;
    assert_eq!(r.location(), "/console/sign-in?why=expired");
    assert_eq!(key_count(&c).await, 0);
    // Behind a TLS proxy, the cookie is Secure.
    let r = b
        .send(
            &c.app,
            "POST",
            "/console/sign-in",
            Some(&format!("credential={ADMIN}")),
            &[("x-forwarded-proto", "https")],
        )
        .await;
    assert!(r.set_cookies()[0].ends_with("; Secure"));
}

#[tokio::test]
async fn a_session_opens_on_every_replica_and_ends_on_all() {
    let c = console();
    let mut b = Browser::default();
    b.sign_in(&c.app).await;
    let token = b.jar["kg_console"].clone();
    // Another store process over the same database and master key (a replica).
    let replica =
        management_app(AppState::new(c.store.clone(), ADMIN, GATEWAY).with_console(Config::new(&MASTER, false)));
    let r = b.get(&replica, "/console/access-keys").await;
    assert_eq!(r.status, StatusCode::OK);
    // Signed out on the replica: ended on the first store too.
    let r = b.post(&replica, "/console/sign-out", &format!("_csrf={}", r.csrf())).await;
    assert_eq!(r.location(), "/console/sign-in?why=signed-out");
    b.jar.insert("kg_console".into(), token);
    assert_eq!(b.get(&c.app, "/console/access-keys").await.location(), "/console/sign-in?why=expired");
    // A store with another database knows nothing of it; a changed cookie
    // is no session.
    b.jar.clear();
    b.sign_in(&c.app).await;
    let token = b.jar["kg_console"].clone();
    let elsewhere = console();
    assert_eq!(b.get(&elsewhere.app, "/console/access-keys").await.location(), "/console/sign-in?why=expired");
    let flipped = format!("{}{}", &token[..63], if token.ends_with('0') { '1' } else { '0' });
    for changed in [flipped, token.to_uppercase(), digest(&token), String::new()] {
        b.jar.insert("kg_console".into(), changed.clone());
        assert_eq!(b.get(&c.app, "/console/access-keys").await.location(), "/console/sign-in?why=expired", "{changed}");
    }
    // A credential the API no longer accepts (a replica started with another
    // admin token) ends the session at once, everywhere.
    b.jar.insert("kg_console".into(), token.clone());
    let rotated = management_app(
        AppState::new(c.store.clone(), "another-admin-token", GATEWAY).with_console(Config::new(&MASTER, false)),
    );
    let r = b.get(&rotated, "/console/access-keys").await;
    assert_eq!(r.location(), "/console/sign-in?why=revoked");
    assert!(b.jar.is_empty(), "the cookie is deleted");
    assert!(c.session(&token).await.is_none(), "the session is deleted");
    b.jar.insert("kg_console".into(), token);
    assert_eq!(b.get(&c.app, "/console/access-keys").await.location(), "/console/sign-in?why=expired");
}

#[tokio::test]
async fn a_management_key_session_follows_the_key() {
    let c = console();
    let (_, key) =
        send(&c.app, "POST", "/api-keys", Some(ADMIN), Some(json!({"name": "ops", "role": "operator"}).to_string()))
            .await;
    let id = key["id"].as_str().unwrap().to_string();
    let mut b = Browser::default();
    b.sign_in_with(&c.app, key["token"].as_str().unwrap()).await;
    let row = c.session(&b.jar["kg_console"]).await.unwrap();
    assert_eq!(
        (row.actor.as_str(), row.credential_digest.clone()),
        (id.as_str(), digest(key["token"].as_str().unwrap()))
    );
    assert!(b.get(&c.app, "/console/access-keys").await.body.contains(r#"data-role="operator""#));
    // Its role is read on every request.
    send(&c.app, "PATCH", &format!("/api-keys/{id}"), Some(ADMIN), Some(json!({"role": "viewer"}).to_string())).await;
    assert!(b.get(&c.app, "/console/access-keys").await.body.contains(r#"data-role="viewer""#));
    // Rotated: the session of the old token ends at its next request.
    let (_, rotated) = send(&c.app, "POST", &format!("/api-keys/{id}/rotate"), Some(ADMIN), None).await;
    assert_eq!(b.get(&c.app, "/console/access-keys").await.location(), "/console/sign-in?why=revoked");
    // Deleted: so does the session of the new one.
    let mut b = Browser::default();
    b.sign_in_with(&c.app, rotated["token"].as_str().unwrap()).await;
    assert_eq!(b.get(&c.app, "/console/access-keys").await.status, StatusCode::OK);
    send(&c.app, "DELETE", &format!("/api-keys/{id}"), Some(ADMIN), None).await;
    assert_eq!(b.get(&c.app, "/console/access-keys").await.location(), "/console/sign-in?why=revoked");
}

const MINUTE_MS: i64 = 60_000;
const HOUR_MS: i64 = 60 * MINUTE_MS;

#[tokio::test]
async fn sessions_end_after_30_idle_minutes_or_12_hours_and_are_swept() {
    let c = console();
    let now = keygate_store::ids::now_ms();
    let mut b = Browser::default();
    b.sign_in(&c.app).await;
    let token = b.jar["kg_console"].clone();
    // Used 2 minutes ago: open, and its use is recorded.
    c.reset_session(&token, now - HOUR_MS, now - 2 * MINUTE_MS).await;
    assert_eq!(b.get(&c.app, "/console/access-keys").await.status, StatusCode::OK);
    let seen = c.session(&token).await.unwrap().seen_ms;
    assert!(seen >= now, "touched");
    // Used 10 seconds ago: open, and not written again.
    c.reset_session(&token, now - HOUR_MS, now - 10_000).await;
    assert_eq!(b.get(&c.app, "/console/access-keys").await.status, StatusCode::OK);
    assert_eq!(c.session(&token).await.unwrap().seen_ms, now - 10_000);
    // 29 idle minutes: open; 31: over.
    c.reset_session(&token, now - HOUR_MS, now - 29 * MINUTE_MS).await;
    assert_eq!(b.get(&c.app, "/console/access-keys").await.status, StatusCode::OK);
    c.reset_session(&token, now - HOUR_MS, now - 31 * MINUTE_MS).await;
    assert_eq!(b.get(&c.app, "/console/access-keys").await.location(), "/console/sign-in?why=expired");
    // Used all along, but signed in more than 12 hours ago: over.
    b.jar.insert("kg_console".into(), token.clone());
    c.reset_session(&token, now - 12 * HOUR_MS - MINUTE_MS, now - MINUTE_MS).await;
    assert_eq!(b.get(&c.app, "/console/access-keys").await.location(), "/console/sign-in?why=expired");
    // The sweep deletes both kinds, and keeps open sessions.
    let mut others = Vec::new();
    for _ in 0..3 {
        let mut o = Browser::default();
        o.sign_in(&c.app).await;
        others.push(o.jar["kg_console"].clone());
    }
    c.reset_session(&others[0], now - HOUR_MS, now - 31 * MINUTE_MS).await;
    c.reset_session(&others[1], now - 13 * HOUR_MS, now - MINUTE_MS).await;
    let state = AppState::new(c.store.clone(), ADMIN, GATEWAY);
    let n = keygate_store::serve::purge_console_sessions(&state, keygate_store::ids::now_ms()).await.unwrap();
    assert_eq!(n, 3, "the two above and the first one, 12 hours old");
    assert!(c.session(&others[2]).await.is_some());
    for t in [&token, &others[0], &others[1]] {
        assert!(c.session(t).await.is_none());
    }
}

#[tokio::test]
async fn sign_ins_are_limited_per_credential() {
    let c = console();
    for i in 0..10 {
        let mut b = Browser::default();
        let r = b.post(&c.app, "/console/sign-in", &format!("credential={ADMIN}")).await;
        assert_eq!(r.status, StatusCode::SEE_OTHER, "sign-in {i}");
    }
    let mut b = Browser::default();
    let r = b.post(&c.app, "/console/sign-in", &format!("credential={ADMIN}")).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(r.body.contains("Too many sign-ins") && r.body.contains("Try again in"), "{}", r.body);
    let wait: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&wait), "{wait}");
    assert!(b.jar.is_empty(), "no session");
    // Ten entries in the audit log, not eleven.
    let (_, log) = send(&c.app, "GET", "/audit-log?actor=bootstrap&limit=100", Some(ADMIN), None).await;
    let logins = log["auditLog"].as_array().unwrap().iter().filter(|e| e["action"] == "console.login").count();
    assert_eq!(logins, 10);
    // Another credential is not held back; a wrong one is refused as before.
    let (_, key) =
        send(&c.app, "POST", "/api-keys", Some(ADMIN), Some(json!({"name": "v", "role": "viewer"}).to_string())).await;
    let r = b.post(&c.app, "/console/sign-in", &format!("credential={}", key["token"].as_str().unwrap())).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    let r = Browser::default().post(&c.app, "/console/sign-in", "credential=nope").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}

async fn key_count(c: &Console) -> usize {
    let (_, v) = send(&c.app, "GET", "/access-keys", Some(ADMIN), None).await;
    v["accessKeys"].as_array().unwrap().len()
}

#[tokio::test]
async fn writes_need_the_session_csrf_token_and_this_origin() {
    let c = console();
    let mut b = Browser::default();
    b.sign_in(&c.app).await;
    let csrf = b.get(&c.app, "/console/access-keys/new").await.csrf();
    let form = "name=web-app";
    for (what, body, extra) in [
        ("no token", form.to_string(), vec![]),
        ("a wrong token", format!("{form}&_csrf={}", "0".repeat(64)), vec![]),
        ("an empty token", format!("{form}&_csrf="), vec![]),
        ("another site", format!("{form}&_csrf={csrf}"), vec![("sec-fetch-site", "cross-site")]),
        ("another origin", format!("{form}&_csrf={csrf}"), vec![("origin", "https://evil.example")]),
    ] {
        let mut req = Request::builder()
            .method("POST")
            .uri("/console/access-keys")
            .header("host", "console.test")
            .header("content-type", "application/x-www-form-urlencoded")
            .header("cookie", format!("kg_console={}", b.jar["kg_console"]));
        let mut has_site = false;
        for (k, v) in &extra {
            has_site |= *k == "sec-fetch-site";
            req = req.header(*k, *v);
        }
        if !has_site {
            req = req.header("sec-fetch-site", "same-origin");
        }
        let resp = c.app.clone().oneshot(req.body(Body::from(body)).unwrap()).await.unwrap();
        assert_eq!(resp.status(), StatusCode::FORBIDDEN, "{what}");
        assert_eq!(key_count(&c).await, 0, "{what}: nothing was created");
    }
    // Without a session at all: to the sign-in page, nothing changed.
    let mut stranger = Browser::default();
    let r = stranger.post(&c.app, "/console/access-keys", &format!("{form}&_csrf={csrf}")).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert_eq!(key_count(&c).await, 0);
    // The right token from this origin.
    let r = b.post(&c.app, "/console/access-keys", &format!("{form}&_csrf={csrf}")).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    assert_eq!(key_count(&c).await, 1);
}

#[tokio::test]
async fn a_token_is_shown_once_then_never() {
    let c = console();
    let mut b = Browser::default();
    b.sign_in(&c.app).await;
    let csrf = b.get(&c.app, "/console/access-keys/new").await.csrf();
    let r = b.post(&c.app, "/console/access-keys", &format!("name=web-app&_csrf={csrf}")).await;
    let token_page = r.location().to_string();
    assert!(token_page.starts_with("/console/access-keys/ak_") && token_page.ends_with("/token"), "{token_page}");
    let once = r.set_cookies().into_iter().find(|c| c.starts_with("kg_console_once=")).unwrap();
    assert!(
        once.contains(&format!("Path={token_page};")) && once.contains("Max-Age=120; HttpOnly; SameSite=Strict"),
        "{once}"
    );
    let once_value = b.jar["kg_console_once"].clone();
    let r = b.get(&c.app, &token_page).await;
    assert_eq!(r.headers["cache-control"], "no-store");
    let at = r.body.find("value=\"kg-").unwrap() + 7;
    let token = r.body[at..].split('"').next().unwrap().to_string();
    // It is the key's token: the gateway lookup knows it.
    let gw = keygate_store::api::gateway_app(AppState::new(c.store.clone(), ADMIN, GATEWAY));
    let (s, _) =
        send(&gw, "GET", &format!("/v1/lookup/{}", keygate_proto::token::digest(&token)), Some(GATEWAY), None).await;
    assert_eq!(s, StatusCode::OK);
    assert!(r.set_cookies().iter().any(|c| c.starts_with("kg_console_once=;") && c.contains("Max-Age=0")));
    // Again: gone. And a copy of the cookie taken before is refused too
    // (within its two minutes): the session says it was shown.
    let r = b.get(&c.app, &token_page).await;
    assert!(!r.body.contains(&token) && r.body.contains("Token no longer shown"));
    b.jar.insert("kg_console_once".into(), once_value);
    let r = b.get(&c.app, &token_page).await;
    assert!(!r.body.contains(&token) && r.body.contains("Token no longer shown"), "replayed");
    // Nowhere else either.
    let id = token_page.split('/').nth(3).unwrap();
    for uri in [
        "/console/access-keys".to_string(),
        format!("/console/access-keys/{id}"),
        format!("/console/access-keys/{id}/edit"),
    ] {
        assert!(!b.get(&c.app, &uri).await.body.contains(&token), "{uri}");
    }
    // The cookie of another session does not open.
    let once_value = {
        let r = b
            .post(&c.app, &format!("/console/access-keys/{id}/rotate"), &format!("gracePeriodSeconds=0&_csrf={csrf}"))
            .await;
        let c = r.set_cookies().into_iter().find(|c| c.starts_with("kg_console_once=")).unwrap();
        c.split(';').next().unwrap().to_string()
    };
    let mut other = Browser::default();
    other.sign_in(&c.app).await;
    other.jar.insert("kg_console_once".into(), once_value["kg_console_once=".len()..].to_string());
    assert!(other.get(&c.app, &token_page).await.body.contains("Token no longer shown"));
}

#[tokio::test]
async fn api_errors_are_shown_next_to_their_field_and_values_escaped() {
    let c = console();
    let mut b = Browser::default();
    b.sign_in(&c.app).await;
    let csrf = b.get(&c.app, "/console/configurations/new").await.csrf();
    let form = format!("_csrf={csrf}&name=c1&rateLimits={}", enc(r#"{"requestsPerMinute": 0}"#));
    let r = b.post(&c.app, "/console/configurations", &form).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let at = r.body.find(r#"id="f-rateLimits-error""#).expect("an error next to rateLimits");
    assert!(
        r.body[at..].starts_with(r#"id="f-rateLimits-error">rateLimits.requestsPerMinute: "#),
        "{}",
        &r.body[at..at + 200]
    );
    assert!(r.body.contains(r#"aria-invalid="true""#));
    // Not JSON at all: said next to the field, nothing sent.
    let form = format!("_csrf={csrf}&name=c1&access={}", enc("{nope"));
    let r = b.post(&c.app, "/console/configurations", &form).await;
    assert!(r.body.contains(r#"id="f-access-error">not valid JSON"#));
    // An unknown field inside a part.
    let form = format!("_csrf={csrf}&name=c1&budget={}", enc(r#"{"costUsd": 1, "bogus": 1}"#));
    let r = b.post(&c.app, "/console/configurations", &form).await;
    assert!(r.body.contains(r#"id="f-budget-error">budget.bogus: "#), "{}", r.body);
    // Names are escaped wherever they are shown.
    send(
        &c.app,
        "POST",
        "/access-keys",
        Some(ADMIN),
        Some(json!({"name": "<img src=x onerror=alert(1)>"}).to_string()),
    )
    .await;
    let r = b.get(&c.app, "/console/access-keys").await;
    assert!(r.body.contains("&lt;img src=x onerror=alert(1)&gt;") && !r.body.contains("<img"));
}

#[tokio::test]
async fn the_key_list_pages_and_searches_through_the_api() {
    let c = console();
    for i in 0..120 {
        let name = if i % 2 == 0 { format!("even-{i:03}") } else { format!("odd-{i:03}") };
        send(&c.app, "POST", "/access-keys", Some(ADMIN), Some(json!({"name": name}).to_string())).await;
    }
    let mut b = Browser::default();
    b.sign_in(&c.app).await;
    let r = b.get(&c.app, "/console/access-keys").await;
    assert_eq!(r.body.matches("<tr>").count(), 51, "a header and 50 keys");
    assert!(r.body.contains("even-118") && !r.body.contains("even-000"));
    let at = r.body.find(r#"rel="next""#).unwrap();
    let href = r.body[..at].rsplit("href=\"").next().unwrap().split('"').next().unwrap().replace("&amp;", "&");
    assert!(href.starts_with("/console/access-keys?before=ak_"), "{href}");
    let r = b.get(&c.app, "/console/access-keys?q=EVEN-00").await;
    let rows = r.body.matches("<tr>").count() - 1;
    assert_eq!(rows, 5, "even-000 … even-008");
}

#[tokio::test]
async fn provider_key_values_are_never_sent_back() {
    let c = console();
    let mut b = Browser::default();
    b.sign_in(&c.app).await;
    let page = b.get(&c.app, "/console/provider-keys").await;
    let csrf = page.csrf();
    // Refused (a control character): the form comes back without the value.
    let secret = "sk-console-secret-0123456789";
    let r = b
        .post(
            &c.app,
            "/console/provider-keys",
            &format!("_csrf={csrf}&providerId=openai&name=p1&value={}", enc(&format!("{secret}\t"))),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.body.contains(r#"id="f-value-error""#), "{}", r.body);
    assert!(!r.body.contains(secret));
    let r = b
        .post(
            &c.app,
            "/console/provider-keys",
            &format!("_csrf={csrf}&providerId=openai&name=p1&value={secret}&managed=on"),
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    let shown = b.get(&c.app, r.location()).await;
    assert!(shown.body.contains("sk-...6789") && !shown.body.contains(secret));
    // Rotated: the new value is not shown either.
    let rotate = format!("{}/rotate", r.location().split('?').next().unwrap());
    let r = b.post(&c.app, &rotate, &format!("_csrf={csrf}&value=sk-console-rotated-0123456789")).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    let shown = b.get(&c.app, r.location()).await;
    assert!(shown.body.contains("The value was replaced.") && !shown.body.contains("sk-console-rotated-0123456789"));
    assert!(!b.get(&c.app, "/console/provider-keys").await.body.contains("sk-console-"));
}

#[tokio::test]
async fn a_key_is_edited_through_the_api_and_its_errors_land_by_their_fields() {
    let c = console();
    let mut b = Browser::default();
    b.sign_in(&c.app).await;
    let (_, key) = send(&c.app, "POST", "/access-keys", Some(ADMIN), Some(json!({"name": "k1"}).to_string())).await;
    let id = key["id"].as_str().unwrap();
    let edit = format!("/console/access-keys/{id}/edit");
    let csrf = b.get(&c.app, &edit).await.csrf();
    let form = |extra: &str| format!("_csrf={csrf}&name=k2&description=d&budgetWindow=monthly{extra}");
    let r = b.post(&c.app, &edit, &form("&budgetTokens=1000&budgetTimeZone=Mars%2FOlympus")).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.body.contains(r#"id="f-budget-error">budget.timeZone: "#), "{}", r.body);
    let r = b.post(&c.app, &edit, &form("&maxConcurrentRequests=lots")).await;
    assert!(r.body.contains(r#"id="f-maxConcurrentRequests-error""#), "{}", r.body);
    let r =
        b.post(&c.app, &edit, &form("&budgetTokens=1000&budgetTimeZone=Europe%2FBerlin&maxConcurrentRequests=3")).await;
    assert_eq!(
        (r.status, r.location()),
        (StatusCode::SEE_OTHER, format!("/console/access-keys/{id}?done=saved").as_str())
    );
    let (_, k) = send(&c.app, "GET", &format!("/access-keys/{id}"), Some(ADMIN), None).await;
    assert_eq!(
        (k["name"].as_str(), k["description"].as_str(), k["maxConcurrentRequests"].as_u64()),
        (Some("k2"), Some("d"), Some(3))
    );
    assert_eq!(k["budget"], json!({"tokens": 1000, "window": "monthly", "timeZone": "Europe/Berlin"}));
    // Emptied fields clear their values.
    let r = b.post(&c.app, &edit, &form("")).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    let (_, k) = send(&c.app, "GET", &format!("/access-keys/{id}"), Some(ADMIN), None).await;
    assert_eq!((k["budget"].is_null(), k["maxConcurrentRequests"].is_null()), (true, true));
    // Credits: an admin's form, through the API.
    let csrf = b.get(&c.app, "/console/budgets").await.csrf();
    let r = b.post(&c.app, "/console/credits/add", &format!("_csrf={csrf}&addUsd=12.5")).await;
    assert_eq!(r.location(), "/console/budgets?done=credits");
    let (_, credits) = send(&c.app, "GET", "/credits", Some(ADMIN), None).await;
    assert_eq!((credits["enabled"].as_bool(), credits["balanceUsd"].as_f64()), (Some(true), Some(12.5)));
    assert!(b.get(&c.app, "/console/budgets").await.body.contains("$12.50"));
}

// ------------------------------------------------------------ alerts

/// A webhook receiver on 127.0.0.1 that records what it is sent (200).
async fn receiver() -> (String, std::sync::Arc<std::sync::Mutex<Vec<(axum::http::HeaderMap, axum::body::Bytes)>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let seen: std::sync::Arc<std::sync::Mutex<Vec<(axum::http::HeaderMap, axum::body::Bytes)>>> = Default::default();
    let s = seen.clone();
    let app = Router::new().fallback(move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
        let s = s.clone();
        async move {
            s.lock().unwrap().push((headers, body));
            StatusCode::OK
        }
    });
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, seen)
}

/// Whether `secret` signed this delivery: `x-keygate-signature: t=…,v1=hex(
/// HMAC-SHA256(secret, "<t>.<body>"))`, as a receiver checks it.
fn signed_with(secret: &str, headers: &axum::http::HeaderMap, body: &[u8]) -> bool {
    use hmac::{Hmac, Mac};
    let sig = headers["x-keygate-signature"].to_str().unwrap();
    let fields: HashMap<&str, &str> = sig.split(',').filter_map(|p| p.split_once('=')).collect();
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{}.", fields["t"]).as_bytes());
    mac.update(body);
    mac.verify_slice(&hex::decode(fields["v1"]).unwrap()).is_ok()
}

/// Settles `tokens` of usage on `key` as the gateway does (reserve, then
/// usage), then runs the delivery worker once.
async fn spend_and_deliver(c: &Console, key: &str, tokens: u64) -> usize {
    let state = AppState::new(c.store.clone(), ADMIN, GATEWAY);
    let gw = keygate_store::api::gateway_app(state.clone());
    let req = format!("req-{}", keygate_store::ids::random_hex(6).unwrap());
    let body = json!({"requestId": req, "accessKeyId": key, "provider": "openai", "model": "gpt-4o",
                      "inputTokens": 1, "outputTokens": 1});
    let (s, v) = send(&gw, "POST", "/v1/reserve", Some(GATEWAY), Some(body.to_string())).await;
    assert!(s == StatusCode::OK && v["ok"] == true, "{v}");
    let now = keygate_store::ids::now_ms();
    let rec = json!({"requestId": req, "accessKeyId": key, "provider": "openai", "model": "gpt-4o", "attempt": 1,
                     "finalAttempt": true, "status": 200, "streaming": false, "inputTokens": tokens,
                     "outputTokens": 0, "startedMs": now, "endedMs": now, "reservationId": v["reservationId"]});
    let (s, v) = send(&gw, "POST", "/v1/usage", Some(GATEWAY), Some(json!({"records": [rec]}).to_string())).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let settings = keygate_store::webhooks::AlertSettings::default();
    keygate_store::webhooks::deliver_due(&state, &keygate_store::webhooks::agent(&settings), &settings).await
}

/// The `value` of the page's `#secret` field.
fn shown_secret(r: &Resp) -> Option<String> {
    let at = r.body.find(r#"id="secret""#)?;
    let v = r.body[at..].find("value=\"")? + at + 7;
    Some(r.body[v..].split('"').next().unwrap().to_string())
}

#[tokio::test]
async fn a_webhook_secret_is_shown_once_signs_the_deliveries_the_console_lists_and_is_never_rendered_again() {
    let c = console();
    let (url, seen) = receiver().await;
    let (_, cfg) =
        send(&c.app, "POST", "/access-key-configurations", Some(ADMIN), Some(json!({"name": "team-a"}).to_string()))
            .await;
    let cfg = cfg["id"].as_str().unwrap().to_string();
    let mut b = Browser::default();
    b.sign_in(&c.app).await;
    let list = b.get(&c.app, "/console/alerts").await;
    assert_eq!(list.status, StatusCode::OK);
    assert!(list.body.contains("No alert webhooks yet.") && list.body.contains(r#"action="/console/alerts""#));
    assert!(list.body.contains(&format!(r#"<option value="{cfg}">team-a ({cfg})</option>"#)), "{}", list.body);
    let csrf = list.csrf();

    // Created through the form: to the page that shows the secret, once.
    let form = format!(
        "_csrf={csrf}&url={}&configurationId={cfg}&thresholds={}&events=budget&expiryWarningDays=3",
        enc(&url),
        enc("90, 50")
    );
    let r = b.post(&c.app, "/console/alerts", &form).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    let secret_page = r.location().to_string();
    assert!(secret_page.starts_with("/console/alerts/awh_") && secret_page.ends_with("/secret"), "{secret_page}");
    let id = secret_page.split('/').nth(3).unwrap().to_string();
    let once = r.set_cookies().into_iter().find(|c| c.starts_with("kg_console_once=")).unwrap();
    assert!(once.contains(&format!("Path={secret_page};")) && once.contains("Max-Age=120; HttpOnly"), "{once}");
    let (_, hook) = send(&c.app, "GET", &format!("/alert-webhooks/{id}"), Some(ADMIN), None).await;
    assert_eq!(
        (&hook["url"], &hook["configurationId"], &hook["thresholds"], &hook["events"], &hook["expiryWarningDays"]),
        (&json!(url), &json!(cfg), &json!([50, 90]), &json!(["budget"]), &json!(3))
    );
    let once_value = b.jar["kg_console_once"].clone();
    let r = b.get(&c.app, &secret_page).await;
    assert_eq!(r.headers["cache-control"], "no-store");
    assert!(r.body.contains("Alert webhook created"), "{}", r.body);
    let secret = shown_secret(&r).unwrap();
    assert!(secret.starts_with("whsec_") && secret.len() == 70, "{secret}");
    assert!(r.set_cookies().iter().any(|c| c.starts_with("kg_console_once=;") && c.contains("Max-Age=0")));
    let r = b.get(&c.app, &secret_page).await;
    assert!(r.body.contains("Secret no longer shown") && !r.body.contains(&secret));
    // A copy of the cookie, replayed within its two minutes: not again.
    b.jar.insert("kg_console_once".into(), once_value);
    let r = b.get(&c.app, &secret_page).await;
    assert!(r.body.contains("Secret no longer shown") && !r.body.contains(&secret), "replayed");
    let base = format!("/console/alerts/{id}");
    let pages = [
        "/console/alerts".to_string(),
        base.clone(),
        format!("{base}/deliveries"),
        format!("{base}/delete"),
        format!("/console/audit-log?resourceId={id}"),
    ];
    for uri in &pages {
        let r = b.get(&c.app, uri).await;
        assert_eq!(r.status, StatusCode::OK, "{uri}");
        assert!(!r.body.contains(&secret) && !r.body.contains("whsec_"), "{uri}");
    }
    let r = b.get(&c.app, "/console/alerts").await;
    assert!(r.body.contains(">team-a</a>") && r.body.contains("50%, 90%"), "{}", r.body);
    assert!(b.get(&c.app, &format!("{base}/deliveries")).await.body.contains("No deliveries yet."));

    // Traffic past 50 % of a key's budget: one delivery, signed with the secret shown.
    let (_, key) = send(
        &c.app,
        "POST",
        "/access-keys",
        Some(ADMIN),
        Some(json!({"name": "ci", "accessKeyConfigurationId": cfg, "budget": {"tokens": 100}}).to_string()),
    )
    .await;
    let key = key["id"].as_str().unwrap().to_string();
    assert_eq!(spend_and_deliver(&c, &key, 60).await, 1);
    {
        let got = seen.lock().unwrap();
        assert_eq!(got.len(), 1);
        assert!(signed_with(&secret, &got[0].0, &got[0].1));
    }
    let r = b.get(&c.app, &format!("{base}/deliveries")).await;
    let row = r.body.split("<tbody>").nth(1).unwrap();
    assert!(row.contains(r#"<span class="event">budget.threshold</span>"#), "{row}");
    assert!(row.contains(r#"<span class="hint about">50% · access key ci</span>"#), "{row}");
    assert!(row.contains(r#"<span class="badge good">delivered</span>"#), "{row}");
    assert!(row.contains(r#"data-label="Attempts">1<"#) && row.contains(r#"data-label="Last status">200<"#), "{row}");
    assert!(!r.body.contains(&secret));

    // Replaced: a new secret, shown once, signs the next delivery.
    let r = b.post(&c.app, &format!("{base}/rotate"), &format!("_csrf={csrf}")).await;
    assert_eq!((r.status, r.location()), (StatusCode::SEE_OTHER, secret_page.as_str()));
    let r = b.get(&c.app, &secret_page).await;
    assert!(r.body.contains("Webhook secret replaced"));
    let replaced = shown_secret(&r).unwrap();
    assert!(replaced != secret && replaced.starts_with("whsec_"));
    assert!(b.get(&c.app, &secret_page).await.body.contains("Secret no longer shown"));
    assert_eq!(spend_and_deliver(&c, &key, 35).await, 1, "90 % crossed");
    {
        let got = seen.lock().unwrap();
        assert!(signed_with(&replaced, &got[1].0, &got[1].1) && !signed_with(&secret, &got[1].0, &got[1].1));
    }
    let (_, audit) = send(&c.app, "GET", &format!("/audit-log?resourceId={id}"), Some(ADMIN), None).await;
    let entries = audit["auditLog"].as_array().unwrap();
    assert_eq!(entries.len(), 2, "{audit}");
    assert!(entries.iter().all(|e| e["via"] == "console"), "{audit}");
    assert!(!audit.to_string().contains(&secret) && !audit.to_string().contains(&replaced));
    for uri in &pages {
        assert!(!b.get(&c.app, uri).await.body.contains("whsec_"), "{uri}");
    }
}

#[tokio::test]
async fn a_webhook_is_edited_with_its_errors_by_their_fields_and_deleted_after_a_confirmation() {
    let c = console();
    let (_, hook) = send(
        &c.app,
        "POST",
        "/alert-webhooks",
        Some(ADMIN),
        Some(json!({"url": "https://hooks.example/k"}).to_string()),
    )
    .await;
    let id = hook["id"].as_str().unwrap();
    let base = format!("/console/alerts/{id}");
    let mut b = Browser::default();
    b.sign_in(&c.app).await;
    let r = b.get(&c.app, &base).await;
    assert!(
        r.body.contains(r#"value="50, 80, 100""#)
            && r.body.contains(r#"id="f-enabled" name="enabled" value="on" checked"#)
    );
    let csrf = r.csrf();
    let form = |extra: &str| format!("_csrf={csrf}&url={}&expiryWarningDays=7{extra}", enc("https://hooks.example/k2"));
    for (extra, field) in [
        ("&thresholds=50%2C+0&events=budget&enabled=on", "thresholds"),
        ("&thresholds=50&enabled=on", "events"),
        ("&thresholds=&events=budget", "thresholds"),
    ] {
        let r = b.post(&c.app, &base, &form(extra)).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{extra}");
        assert!(r.body.contains(&format!(r#"id="f-{field}-error""#)), "{extra}: {}", r.body);
        assert!(r.body.contains(r#"value="https://hooks.example/k2""#), "what was typed is kept");
    }
    let r = b.post(&c.app, &base, &format!("_csrf={csrf}&url=ftp%3A%2F%2Fx%2Fh&thresholds=50&events=budget")).await;
    assert!(r.body.contains(r#"id="f-url-error""#));
    // Creating: the same, on the list page.
    let r = b.post(&c.app, "/console/alerts", &format!("_csrf={csrf}&url=ftp%3A%2F%2Fx%2Fh&events=budget")).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.body.contains(r#"id="f-url-error""#) && r.body.contains("https://hooks.example/k"), "{}", r.body);
    // Saved: every field, and unchecked "enabled" disables it.
    let r = b.post(&c.app, &base, &form("&thresholds=30+90&events=budget&events=credits")).await;
    assert_eq!((r.status, r.location()), (StatusCode::SEE_OTHER, format!("{base}?done=saved").as_str()));
    let (_, h) = send(&c.app, "GET", &format!("/alert-webhooks/{id}"), Some(ADMIN), None).await;
    assert_eq!(
        (&h["url"], &h["thresholds"], &h["events"], &h["enabled"]),
        (&json!("https://hooks.example/k2"), &json!([30, 90]), &json!(["budget", "credits"]), &json!(false))
    );
    let r = b.get(&c.app, &format!("{base}?done=saved")).await;
    assert!(r.body.contains("Saved.") && r.body.contains(r#"<span class="badge bad">disabled</span>"#));
    // Delete: a confirmation page, then the POST.
    let r = b.get(&c.app, &format!("{base}/delete")).await;
    assert!(r.body.contains("Delete the alert webhook?") && r.body.contains(&format!(r#"action="{base}/delete""#)));
    let (s, _) = send(&c.app, "GET", &format!("/alert-webhooks/{id}"), Some(ADMIN), None).await;
    assert_eq!(s, StatusCode::OK, "not deleted by the confirmation page");
    let r = b.post(&c.app, &format!("{base}/delete"), &format!("_csrf={csrf}")).await;
    assert_eq!(r.location(), "/console/alerts?done=deleted");
    let (s, _) = send(&c.app, "GET", &format!("/alert-webhooks/{id}"), Some(ADMIN), None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(b.get(&c.app, &base).await.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_viewer_sees_webhooks_and_deliveries_without_a_write_control_and_cannot_write() {
    let c = console();
    let (_, hook) = send(
        &c.app,
        "POST",
        "/alert-webhooks",
        Some(ADMIN),
        Some(json!({"url": "https://hooks.example/k"}).to_string()),
    )
    .await;
    let id = hook["id"].as_str().unwrap();
    for role in ["viewer", "operator"] {
        let (s, key) =
            send(&c.app, "POST", "/api-keys", Some(ADMIN), Some(json!({"name": role, "role": role}).to_string())).await;
        assert_eq!(s, StatusCode::CREATED, "{key}");
        let mut b = Browser::default();
        let r = b.post(&c.app, "/console/sign-in", &format!("credential={}", key["token"].as_str().unwrap())).await;
        assert_eq!(r.status, StatusCode::SEE_OTHER);
        for uri in
            ["/console/alerts".to_string(), format!("/console/alerts/{id}"), format!("/console/alerts/{id}/deliveries")]
        {
            let r = b.get(&c.app, &uri).await;
            assert_eq!(r.status, StatusCode::OK, "{role} {uri}");
            // The URL as the API shows it to this role: its path redacted.
            assert!(r.body.contains("https://hooks.example/…"), "{role} {uri}");
            assert!(!r.body.contains("https://hooks.example/k"), "{role} {uri}");
            // The sign-out form is the page's only form.
            assert_eq!(r.body.matches("<form").count(), 1, "{role} {uri}");
            assert!(!r.body.contains("name=\"url\"") && !r.body.contains("/rotate") && !r.body.contains("Delete…"));
        }
        assert_eq!(b.get(&c.app, &format!("/console/alerts/{id}/delete")).await.status, StatusCode::FORBIDDEN);
        // Forged writes with the session's own token: the API refuses them.
        let csrf = b.get(&c.app, "/console/alerts").await.csrf();
        let r = b
            .post(&c.app, "/console/alerts", &format!("_csrf={csrf}&url={}&events=budget", enc("https://x.example/h")))
            .await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{role}");
        assert!(r.body.contains("Not allowed") && !r.body.contains("name=\"url\""), "{role}: no form back");
        for path in [format!("/console/alerts/{id}/rotate"), format!("/console/alerts/{id}/delete")] {
            let r = b.post(&c.app, &path, &format!("_csrf={csrf}")).await;
            assert_eq!(r.status, StatusCode::FORBIDDEN, "{role} {path}");
        }
        let r = b
            .post(
                &c.app,
                &format!("/console/alerts/{id}"),
                &format!("_csrf={csrf}&url=https%3A%2F%2Fy%2Fh&thresholds=5&events=budget"),
            )
            .await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{role}");
        assert!(!r.body.contains("name=\"url\""), "no editor for a refused role");
    }
    let (_, list) = send(&c.app, "GET", "/alert-webhooks", Some(ADMIN), None).await;
    assert_eq!(list["alertWebhooks"].as_array().unwrap().len(), 1);
    assert_eq!(list["alertWebhooks"][0]["url"], "https://hooks.example/k");
}

#[tokio::test]
async fn a_viewers_pages_never_hold_a_webhooks_whole_url_and_an_admins_editor_does() {
    let c = console();
    // A Slack-like URL: its path is the receiver's only credential.
    let url = "https://hooks.slack.com/services/T0CONSOLE/B0CONSOLE/Zq3console1secret2path";
    let secret_path = "Zq3console1secret2path";
    let (s, hook) = send(&c.app, "POST", "/alert-webhooks", Some(ADMIN), Some(json!({"url": url}).to_string())).await;
    assert_eq!(s, StatusCode::CREATED, "{hook}");
    let id = hook["id"].as_str().unwrap();
    let fingerprint = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(url.as_bytes()))[..12].to_string()
    };
    // Changed once through the console too, so the audit log has a console entry.
    let mut admin = Browser::default();
    admin.sign_in(&c.app).await;
    let r = admin.get(&c.app, &format!("/console/alerts/{id}")).await;
    // The admin's editor holds the whole URL (a save sends it back as it is).
    assert!(r.body.contains(&format!(r#"value="{url}""#)), "{}", r.body);
    let form =
        format!("_csrf={}&url={}&thresholds=50&events=budget&expiryWarningDays=7&enabled=on", r.csrf(), enc(url));
    let r = admin.post(&c.app, &format!("/console/alerts/{id}"), &form).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    let (_, h) = send(&c.app, "GET", &format!("/alert-webhooks/{id}"), Some(ADMIN), None).await;
    assert_eq!((&h["url"], &h["thresholds"]), (&json!(url), &json!([50])), "the admin's save kept the URL");

    for role in ["viewer", "operator"] {
        let (_, key) =
            send(&c.app, "POST", "/api-keys", Some(ADMIN), Some(json!({"name": role, "role": role}).to_string())).await;
        let mut b = Browser::default();
        let r = b.post(&c.app, "/console/sign-in", &format!("credential={}", key["token"].as_str().unwrap())).await;
        assert_eq!(r.status, StatusCode::SEE_OTHER);
        for uri in [
            "/console/alerts".to_string(),
            format!("/console/alerts/{id}"),
            format!("/console/alerts/{id}/deliveries"),
            "/console/audit-log".to_string(),
            format!("/console/audit-log?resourceId={id}"),
        ] {
            let r = b.get(&c.app, &uri).await;
            assert_eq!(r.status, StatusCode::OK, "{role} {uri}");
            assert!(!r.body.contains(secret_path) && !r.body.contains("T0CONSOLE"), "{role} {uri}: {}", r.body);
        }
        for uri in ["/console/alerts".to_string(), format!("/console/alerts/{id}")] {
            let r = b.get(&c.app, &uri).await;
            assert!(r.body.contains("https://hooks.slack.com/…") && r.body.contains(&fingerprint), "{role} {uri}");
        }
    }
    // The admin sees the fingerprint beside the whole URL.
    let r = admin.get(&c.app, &format!("/console/alerts/{id}")).await;
    assert!(r.body.contains(&fingerprint) && r.body.contains(url));
}

#[tokio::test]
async fn an_admin_creates_edits_and_deletes_a_provider_and_sets_and_deletes_a_price() {
    let c = console();
    let mut b = Browser::default();
    b.sign_in(&c.app).await;
    let r = b.get(&c.app, "/console/providers").await;
    assert!(r.body.contains(r#"action="/console/providers""#) && r.body.contains(r#"name="baseUrl""#));
    let csrf = r.csrf();

    // A bad base URL: the API's message next to the field, what was typed kept.
    let form =
        |url: &str| format!("_csrf={csrf}&providerId=my-llm&name={}&baseUrl={}&format=openai", enc("My LLM"), enc(url));
    let r = b.post(&c.app, "/console/providers", &form("ftp://llm.example/v1")).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    assert!(r.body.contains(r#"id="f-baseUrl-error""#), "{}", r.body);
    assert!(r.body.contains(r#"value="ftp://llm.example/v1""#) && r.body.contains(r#"value="My LLM""#));
    let (s, _) = send(&c.app, "GET", "/providers/my-llm", Some(ADMIN), None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // Created.
    let r = b.post(&c.app, "/console/providers", &form("https://llm.example/v1")).await;
    assert_eq!((r.status, r.location()), (StatusCode::SEE_OTHER, "/console/providers/my-llm?done=created"));
    let (s, p) = send(&c.app, "GET", "/providers/my-llm", Some(ADMIN), None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        (&p["name"], &p["baseUrl"], &p["format"]),
        (&json!("My LLM"), &json!("https://llm.example/v1"), &json!("openai"))
    );
    let r = b.get(&c.app, "/console/providers/my-llm?done=created").await;
    assert!(r.body.contains("Created.") && r.body.contains("/console/providers/my-llm/delete"));

    // Edited; a bad URL in the editor is refused by its field.
    let edit = |name: &str, url: &str| format!("_csrf={csrf}&name={}&baseUrl={}", enc(name), enc(url));
    let r = b.post(&c.app, "/console/providers/my-llm", &edit("Mine", "https://x.example/v1?q=1")).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.body.contains(r#"id="f-baseUrl-error""#) && r.body.contains(r#"value="Mine""#), "{}", r.body);
    let r = b.post(&c.app, "/console/providers/my-llm", &edit("Mine", "https://llm2.example/v1")).await;
    assert_eq!((r.status, r.location()), (StatusCode::SEE_OTHER, "/console/providers/my-llm?done=saved"));
    let (_, p) = send(&c.app, "GET", "/providers/my-llm", Some(ADMIN), None).await;
    assert_eq!((&p["name"], &p["baseUrl"]), (&json!("Mine"), &json!("https://llm2.example/v1")));
    // A built-in's base URL too; a built-in has no delete link.
    let (_, openai) = send(&c.app, "GET", "/providers/openai", Some(ADMIN), None).await;
    let r = b.get(&c.app, "/console/providers/openai").await;
    assert!(!r.body.contains("/console/providers/openai/delete"));
    let r = b
        .post(&c.app, "/console/providers/openai", &edit(openai["name"].as_str().unwrap(), "https://proxy.example/v1"))
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    let (_, p) = send(&c.app, "GET", "/providers/openai", Some(ADMIN), None).await;
    assert_eq!(p["baseUrl"], "https://proxy.example/v1");

    // Deleted after a confirmation page.
    let r = b.get(&c.app, "/console/providers/my-llm/delete").await;
    assert!(r.body.contains("Delete provider") && r.body.contains(r#"action="/console/providers/my-llm/delete""#));
    let (s, _) = send(&c.app, "GET", "/providers/my-llm", Some(ADMIN), None).await;
    assert_eq!(s, StatusCode::OK, "not deleted by the confirmation page");
    let r = b.post(&c.app, "/console/providers/my-llm/delete", &format!("_csrf={csrf}")).await;
    assert_eq!(r.location(), "/console/providers?done=deleted");
    let (s, _) = send(&c.app, "GET", "/providers/my-llm", Some(ADMIN), None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // Prices: set (a / in a model is fine), shown, refused by field, deleted.
    let r = b.get(&c.app, "/console/prices").await;
    assert!(r.body.contains(r#"action="/console/prices""#) && r.body.contains("/console/prices/delete?provider="));
    let price = |model: &str, input: &str| {
        format!(
            "_csrf={csrf}&provider=openai&model={}&inputPerMillionUsd={input}&outputPerMillionUsd=4&cachedInputPerMillionUsd=",
            enc(model)
        )
    };
    let r = b.post(&c.app, "/console/prices", &price("ft/test-model*", "-1")).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    assert!(r.body.contains(r#"id="f-inputPerMillionUsd-error""#), "{}", r.body);
    assert!(r.body.contains(r#"value="ft/test-model*""#), "what was typed is kept");
    let r = b.post(&c.app, "/console/prices", &price("ft/test-model*", "1.5")).await;
    assert_eq!((r.status, r.location()), (StatusCode::SEE_OTHER, "/console/prices?done=saved"), "{}", r.body);
    let (_, list) = send(&c.app, "GET", "/prices", Some(ADMIN), None).await;
    let entry = list["prices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["provider"] == "openai" && p["model"] == "ft/test-model*")
        .cloned()
        .expect("the price set");
    assert_eq!((&entry["inputPerMillionUsd"], &entry["outputPerMillionUsd"]), (&json!(1.5), &json!(4.0)));
    let r = b.get(&c.app, "/console/prices?provider=openai&model=ft%2Ftest-model*").await;
    assert!(r.body.contains(r#"value="1.5""#), "the edit link prefills the form");
    let confirm = "/console/prices/delete?provider=openai&model=ft%2Ftest-model*";
    let r = b.get(&c.app, confirm).await;
    assert!(r.body.contains("Delete the price") && r.body.contains(r#"value="ft/test-model*""#));
    let r = b
        .post(
            &c.app,
            "/console/prices/delete",
            &format!("_csrf={csrf}&provider=openai&model={}", enc("ft/test-model*")),
        )
        .await;
    assert_eq!(r.location(), "/console/prices?done=deleted");
    let (_, list) = send(&c.app, "GET", "/prices", Some(ADMIN), None).await;
    assert!(!list.to_string().contains("ft/test-model*"));
    // The catch-all cannot be deleted: the API's message is shown.
    let r = b.post(&c.app, "/console/prices/delete", &format!("_csrf={csrf}&provider=*&model=*")).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.body);
    assert!(r.body.contains(r#"class="notice error""#), "{}", r.body);
    let (_, list) = send(&c.app, "GET", "/prices", Some(ADMIN), None).await;
    assert!(list["prices"].as_array().unwrap().iter().any(|p| p["provider"] == "*" && p["model"] == "*"));

    // The audit log lists every change, made via the console.
    let (_, log) = send(&c.app, "GET", "/audit-log?limit=100", Some(ADMIN), None).await;
    let entries: Vec<(String, String)> = log["auditLog"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["via"] == "console")
        .map(|e| (e["action"].as_str().unwrap().to_string(), e["resourceId"].as_str().unwrap_or("").to_string()))
        .collect();
    for want in [
        ("provider.create", "my-llm"),
        ("provider.update", "my-llm"),
        ("provider.update", "openai"),
        ("provider.delete", "my-llm"),
        ("price.set", "openai/ft/test-model*"),
        ("price.delete", "openai/ft/test-model*"),
    ] {
        assert!(entries.iter().any(|(a, id)| a == want.0 && id == want.1), "{want:?} in {entries:?}");
    }
    let r = b.get(&c.app, "/console/audit-log").await;
    assert!(r.body.contains("provider.create") && r.body.contains("price.set"));
}

#[tokio::test]
async fn a_viewer_or_operator_sees_providers_and_prices_without_a_form_and_cannot_change_them() {
    let c = console();
    let (s, _) = send(
        &c.app,
        "POST",
        "/providers",
        Some(ADMIN),
        Some(
            json!({"providerId": "mine", "name": "Mine", "baseUrl": "https://llm.example/v1", "format": "openai"})
                .to_string(),
        ),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED);
    let (_, before) = send(&c.app, "GET", "/prices", Some(ADMIN), None).await;
    for role in ["viewer", "operator"] {
        let (_, key) =
            send(&c.app, "POST", "/api-keys", Some(ADMIN), Some(json!({"name": role, "role": role}).to_string())).await;
        let mut b = Browser::default();
        b.sign_in_with(&c.app, key["token"].as_str().unwrap()).await;
        for uri in ["/console/providers", "/console/providers/mine", "/console/providers/openai", "/console/prices"] {
            let r = b.get(&c.app, uri).await;
            assert_eq!(r.status, StatusCode::OK, "{role} {uri}");
            // The sign-out form is the page's only form.
            assert_eq!(r.body.matches("<form").count(), 1, "{role} {uri}");
            assert!(!r.body.contains("Delete…") && !r.body.contains(r#"name="baseUrl""#), "{role} {uri}");
        }
        assert!(b.get(&c.app, "/console/providers").await.body.contains("https://llm.example/v1"));
        for uri in ["/console/providers/mine/delete", "/console/prices/delete?provider=openai&model=gpt-4o"] {
            assert_eq!(b.get(&c.app, uri).await.status, StatusCode::FORBIDDEN, "{role} {uri}");
        }
        // Forged writes with the session's own token: the API refuses them.
        let csrf = b.get(&c.app, "/console/providers").await.csrf();
        for (path, form) in [
            ("/console/providers", "providerId=x&name=X&baseUrl=https%3A%2F%2Fx.example&format=openai"),
            ("/console/providers/mine", "name=Changed&baseUrl=https%3A%2F%2Fx.example"),
            ("/console/providers/mine/delete", ""),
            ("/console/prices", "provider=openai&model=x&inputPerMillionUsd=1&outputPerMillionUsd=1"),
            ("/console/prices/delete", "provider=*&model=*"),
        ] {
            let r = b.post(&c.app, path, &format!("_csrf={csrf}&{form}")).await;
            assert_eq!(r.status, StatusCode::FORBIDDEN, "{role} {path}: {}", r.body);
            assert!(r.body.contains("Not allowed") && !r.body.contains(r#"name="baseUrl""#), "{role} {path}");
        }
    }
    let (_, p) = send(&c.app, "GET", "/providers/mine", Some(ADMIN), None).await;
    assert_eq!((&p["name"], &p["baseUrl"]), (&json!("Mine"), &json!("https://llm.example/v1")));
    let (s, _) = send(&c.app, "GET", "/providers/x", Some(ADMIN), None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (_, after) = send(&c.app, "GET", "/prices", Some(ADMIN), None).await;
    assert_eq!(before, after);
}
