//! In-process harness: both routers over a store in a temp dir: SQLite, or
//! PostgreSQL when `KEYGATE_TEST_DATABASE_URL` is set (see `testdb`).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

#[path = "../testdb/mod.rs"]
pub mod testdb;
#[allow(unused_imports)]
pub use testdb::test_audit;

use std::path::PathBuf;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use keygate_store::api::{gateway_app, management_app, AppState};
use keygate_store::crypto::Cipher;
use keygate_store::storage::{Backend, Options, Store};
use serde_json::Value;
use tempfile::TempDir;
use tower::ServiceExt;

pub const ADMIN: &str = "test-admin-token-0123456789abcdef";
pub const GATEWAY: &str = "test-gateway-token-0123456789abcdef";

pub struct H {
    pub dir: TempDir,
    pub api: Router,
    pub gw: Router,
    /// The state both routers share (its store, the alert worker's wake-up).
    pub state: AppState,
    /// The PostgreSQL database of a PostgreSQL run (dropped last).
    pub pg: Option<testdb::PgDb>,
}

pub fn harness() -> H {
    harness_with(Options::default())
}

/// The database of a test: a fresh PostgreSQL database when
/// `KEYGATE_TEST_DATABASE_URL` is set, else `keygate.db` in `dir`.
pub fn test_backend(dir: &TempDir) -> (Backend, Option<testdb::PgDb>) {
    match testdb::PgDb::create() {
        Some(db) => (Backend::Postgres(db.url.clone().into()), Some(db)),
        None => (Backend::Sqlite(dir.path().join("keygate.db")), None),
    }
}

pub fn harness_with(opts: Options) -> H {
    let dir = tempfile::tempdir().unwrap();
    let (backend, pg) = test_backend(&dir);
    let store = backend.open(Cipher::new(&[7u8; 32]), opts).unwrap();
    H::over(store, dir, pg)
}

impl H {
    /// Both routers over `store`.
    pub fn over(store: Arc<dyn Store>, dir: TempDir, pg: Option<testdb::PgDb>) -> H {
        let state = AppState::new(store, ADMIN, GATEWAY);
        H { api: management_app(state.clone()), gw: gateway_app(state.clone()), state, dir, pg }
    }
}

pub async fn send(
    router: &Router,
    method: &str,
    uri: &str,
    token: Option<&str>,
    body: Option<String>,
) -> (StatusCode, Value) {
    send_via(router, method, uri, token, body, false).await
}

/// [`send`], as the console sends it when `console` (the request carries
/// the `ViaConsole` extension).
pub async fn send_via(
    router: &Router,
    method: &str,
    uri: &str,
    token: Option<&str>,
    body: Option<String>,
    console: bool,
) -> (StatusCode, Value) {
    let mut req = Request::builder().method(method).uri(uri);
    if console {
        req = req.extension(keygate_store::api::principal::ViaConsole);
    }
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let req = match body {
        Some(b) => req.header("content-type", "application/json").body(Body::from(b)).unwrap(),
        None => req.body(Body::empty()).unwrap(),
    };
    let resp = router.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let value = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into()))
    };
    (status, value)
}

impl H {
    pub fn db_path(&self) -> PathBuf {
        self.dir.path().join("keygate.db")
    }

    /// Direct SQL on the database (to move time-based fields into the past).
    pub fn sql(&self, sql: &str) {
        if let Some(db) = &self.pg {
            return db.sql(sql);
        }
        let conn = rusqlite::Connection::open(self.db_path()).unwrap();
        conn.busy_timeout(std::time::Duration::from_secs(5)).unwrap();
        conn.execute_batch(sql).unwrap();
    }

    /// Direct SQL on the database that may fail (the error as text).
    pub fn try_sql(&self, sql: &str) -> Result<(), String> {
        if let Some(db) = &self.pg {
            let url = db.url.clone();
            return testdb::off_runtime(|| {
                let mut c = postgres::Client::connect(&url, postgres::NoTls).map_err(|e| e.to_string())?;
                c.batch_execute(sql).map_err(|e| format!("{e:?}"))
            });
        }
        let conn = rusqlite::Connection::open(self.db_path()).unwrap();
        conn.busy_timeout(std::time::Duration::from_secs(5)).unwrap();
        conn.execute_batch(sql).map_err(|e| e.to_string())
    }

    /// A byte-string literal of the backend's SQL.
    pub fn blob_literal(&self, hex: &str) -> String {
        match self.pg {
            Some(_) => format!("'\\x{hex}'::BYTEA"),
            None => format!("x'{hex}'"),
        }
    }

    pub async fn api(&self, method: &str, uri: &str, body: Option<Value>) -> (StatusCode, Value) {
        send(&self.api, method, uri, Some(ADMIN), body.map(|b| b.to_string())).await
    }

    pub async fn api_raw(&self, method: &str, uri: &str, body: &str) -> (StatusCode, Value) {
        send(&self.api, method, uri, Some(ADMIN), Some(body.to_string())).await
    }

    pub async fn gw(&self, uri: &str) -> (StatusCode, Value) {
        send(&self.gw, "GET", uri, Some(GATEWAY), None).await
    }

    pub async fn lookup_token(&self, token: &str) -> Value {
        let (s, v) = self.gw(&format!("/v1/lookup/{}", keygate_proto::token::digest(token))).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        v
    }

    pub async fn ok(&self, method: &str, uri: &str, body: Option<Value>) -> Value {
        let (s, v) = self.api(method, uri, body).await;
        assert!(s.is_success(), "{method} {uri}: {s} {v}");
        v
    }

    pub async fn version(&self) -> u64 {
        self.gw("/v1/changes?since=0").await.1["version"].as_u64().unwrap()
    }
}

/// Asserts the standard error shape and returns it.
pub fn assert_error(status: StatusCode, v: &Value, want: StatusCode, code: &str) {
    assert_eq!(status, want, "{v}");
    assert_eq!(v["errorCode"], code, "{v}");
    assert_eq!(v["statusCode"], want.as_u16(), "{v}");
    assert!(v["msg"].is_string(), "{v}");
    assert!(v["details"].is_object(), "{v}");
}
