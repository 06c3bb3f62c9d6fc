//! PostgreSQL only (each test is skipped when `KEYGATE_TEST_DATABASE_URL` is
//! unset): `keygate copy` from SQLite, migrations started at once, and
//! writers in several stores (each with its own connection pool, as separate
//! processes are) sharing one database.
// Helpers outside #[test] functions unwrap too: these are tests.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod server;

use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use keygate_proto::lookup::{ReserveRequest, UsageRecord};
use keygate_store::api::principal::{Principal, Role, Via};
use keygate_store::crypto::Cipher;
use keygate_store::storage::{
    AccessKeyChanges, Audit, Backend, NewAccessKey, NewAlertWebhook, NewApiKey, NewConfig, NewPrice, NewProvider,
    NewProviderKey, Options, PageRequest, PgTarget, ProviderChanges, SqliteStore, Store, UsageFilter,
};
use serde_json::{json, Value};
use server::testdb::PgDb;
use server::*;

fn pg() -> Option<PgDb> {
    let db = PgDb::create();
    if db.is_none() {
        eprintln!("skipped: {} is not set", server::testdb::ENV);
    }
    db
}

fn cipher() -> Cipher {
    Cipher::new(&[9u8; 32])
}

fn digest_of(token: &str) -> String {
    keygate_proto::token::digest(token)
}

fn spec<T: serde::de::DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).unwrap()
}

fn new_key(name: &str, token: &str, config_id: Option<&str>, budget: Option<Value>) -> NewAccessKey {
    NewAccessKey {
        name: name.into(),
        description: format!("{name} description"),
        metadata: format!("{{\"owner\":\"{name}\"}}"),
        config_id: config_id.map(str::to_string),
        expires_at: Some(4_070_908_800),
        disabled: false,
        digest: digest_of(token),
        redacted: format!("kg-...{}", &token[token.len() - 4..]),
        budget: budget.map(spec),
        max_concurrent_requests: None,
    }
}

fn record(req: &str, key: &str, attempt: u32, rsv: Option<&str>, input: u64) -> UsageRecord {
    spec(json!({"requestId": req, "accessKeyId": key, "provider": "openai", "model": "gpt-4o", "attempt": attempt,
        "finalAttempt": rsv.is_some(), "status": 200, "streaming": attempt.is_multiple_of(2), "inputTokens": input,
        "outputTokens": 7, "cachedTokens": 2, "reasoningTokens": 1, "startedMs": 1_700_000_000_000u64 + u64::from(attempt),
        "endedMs": 1_700_000_001_000u64, "reservationId": rsv}))
}

fn reserve(store: &dyn Store, req: &str, key: &str, input: u64) -> keygate_proto::lookup::ReserveResponse {
    store
        .reserve(&ReserveRequest {
            request_id: req.into(),
            access_key_id: key.into(),
            config_id: None,
            provider: "openai".into(),
            model: Some("gpt-4o".into()),
            input_tokens: input,
            output_tokens: 0,
            fallbacks: Vec::new(),
        })
        .unwrap()
}

/// Everything a store answers, as JSON, for comparing two stores.
fn everything(s: &dyn Store, tokens: &[String]) -> Value {
    let page = PageRequest { limit: 1000, before_id: None };
    let all = UsageFilter::default();
    let lookups: Vec<Value> =
        tokens.iter().map(|t| serde_json::to_value(s.lookup(&digest_of(t)).unwrap()).unwrap()).collect();
    json!({
        "accessKeys": s.list_access_keys(&page, &Default::default()).unwrap(),
        "configs": s.list_configs(&page).unwrap(),
        "providers": s.list_providers().unwrap(),
        "providerKeys": s.list_provider_keys(&page).unwrap(),
        "usage": s.list_usage(&all, &page).unwrap(),
        "byKey": s.usage_summary(&all, keygate_store::storage::GroupBy::Key).unwrap(),
        "byModel": s.usage_summary(&all, keygate_store::storage::GroupBy::Model).unwrap(),
        "byDay": s.usage_summary(&all, keygate_store::storage::GroupBy::Day).unwrap(),
        "prices": s.list_prices().unwrap(),
        "credits": s.get_credits().unwrap(),
        "changes": s.changes(0).unwrap(),
        "changesSince3": s.changes(3).unwrap(),
        "gauges": format!("{:?}", s.gauges().unwrap()),
        "lookups": lookups,
        "apiKeys": s.list_api_keys(&page).unwrap(),
        "auditLog": s.list_audit(&Default::default(), &page).unwrap(),
        "mk": s.api_key_by_digest(&"e".repeat(64)).unwrap().map(|k| format!("{k:?}")),
    })
}

/// The rows of a table of each database, every column as text, in key order.
fn sqlite_rows(path: &std::path::Path, sql: &str) -> Vec<Vec<Option<String>>> {
    let conn = rusqlite::Connection::open(path).unwrap();
    let mut stmt = conn.prepare(sql).unwrap();
    let n = stmt.column_count();
    let rows = stmt
        .query_map([], |r| {
            (0..n)
                .map(|i| {
                    Ok(match r.get_ref(i)? {
                        rusqlite::types::ValueRef::Null => None,
                        rusqlite::types::ValueRef::Integer(v) => Some(v.to_string()),
                        rusqlite::types::ValueRef::Real(v) => Some(v.to_string()),
                        rusqlite::types::ValueRef::Text(t) => Some(String::from_utf8_lossy(t).into_owned()),
                        rusqlite::types::ValueRef::Blob(b) => Some(format!("\\x{}", hex::encode(b))),
                    })
                })
                .collect::<rusqlite::Result<Vec<_>>>()
        })
        .unwrap();
    rows.collect::<Result<_, _>>().unwrap()
}

#[test]
fn copy_moves_a_sqlite_deployment_with_nothing_lost() {
    let Some(db) = pg() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let path = data.join("keygate.db");
    let src = SqliteStore::open(&path, cipher()).unwrap();

    // A deployment with something of everything.
    src.create_provider(
        &NewProvider {
            id: "acme".into(),
            name: "Acme".into(),
            base_url: "https://acme.example/v1".into(),
            format: spec(json!("openai")),
            auth: spec(json!("x-api-key")),
            models: vec!["acme-1".into(), "acme-2".into()],
        },
        &test_audit(),
    )
    .unwrap();
    src.update_provider(
        "groq",
        &ProviderChanges { base_url: Some("https://groq.example/v1".into()), ..Default::default() },
        &test_audit(),
    )
    .unwrap();
    let pk = |provider: &str, name: &str, value: &str, managed: bool| {
        src.create_provider_key(
            &NewProviderKey {
                provider_id: provider.into(),
                name: name.into(),
                description: "d".into(),
                metadata: "m".into(),
                managed,
                value: value.into(),
            },
            &test_audit(),
        )
        .unwrap()
        .id
    };
    pk("openai", "managed", "sk-managed-0000000000000001", true);
    let user = pk("openai", "user", "sk-user-00000000000000000002", false);
    pk("acme", "acme", "acme-secret-000000000000003", true);
    src.rotate_provider_key(&user, "sk-user-rotated-0000000000004", &test_audit()).unwrap();
    let config = src
        .create_config(
            &NewConfig {
                name: "team".into(),
                description: "the team".into(),
                metadata: "{}".into(),
                access: Some(spec(json!({"providers": {"allow": ["openai", "acme"]}}))),
                router: Some(spec(json!({"rules": [
                    {"provider": "openai", "steps": [{"type": "user", "keys": [{"id": user}]}, {"type": "managed"}]}
                ]}))),
                rate_limits: Some(spec(json!({"requestsPerMinute": 60, "tokensPerMinute": 10000}))),
                request_limits: Some(spec(json!({"maxInputTokens": 1000, "totalTimeoutMs": 30000}))),
                budget: Some(spec(json!({"tokens": 100000, "costUsd": 50.0, "window": "monthly"}))),
            },
            &test_audit(),
        )
        .unwrap();
    let tokens: Vec<String> = (0..4).map(|i| format!("kg-copytest{i:02}{}", "x".repeat(40))).collect();
    // k0 has a concurrency cap of its own, over its configuration's limits.
    let k0 = src
        .create_access_key(
            &NewAccessKey {
                max_concurrent_requests: Some(3),
                ..new_key("k0", &tokens[0], Some(&config.id), Some(json!({"tokens": 5000})))
            },
            &test_audit(),
        )
        .unwrap();
    let k1 = src
        .create_access_key(
            &new_key("k1", &tokens[1], None, Some(json!({"costUsd": 2.5, "window": "daily"}))),
            &test_audit(),
        )
        .unwrap();
    let k2 = src.create_access_key(&new_key("k2", &tokens[2], None, None), &test_audit()).unwrap();
    src.update_access_key(&k2.id, &AccessKeyChanges { disabled: Some(true), ..Default::default() }, &test_audit())
        .unwrap();
    src.update_access_key(
        &k1.id,
        &AccessKeyChanges { max_concurrent_requests: Some(Some(9)), ..Default::default() },
        &test_audit(),
    )
    .unwrap();
    // k1 rotated: its old token works during the grace period.
    let rotated = format!("kg-rotated00{}", "y".repeat(40));
    src.rotate_access_key(&k1.id, &digest_of(&rotated), "kg-...yyyy", 3600, &test_audit()).unwrap();
    let tokens: Vec<String> = tokens.into_iter().chain([rotated]).collect();
    src.put_price("acme", "acme-*", &NewPrice { input: 1_000_000, output: 2_000_000, cached: None }, &test_audit())
        .unwrap();
    src.delete_price("openai", "gpt-4o-mini", &test_audit()).unwrap();
    src.add_credits(25_000_000, &test_audit()).unwrap();
    // A management key, used, and a console sign-in with it.
    let mk = src
        .create_api_key(
            &NewApiKey {
                name: "ops".into(),
                role: Role::Operator,
                digest: "e".repeat(64),
                token_prefix: "kgm_eeeeeeee".into(),
            },
            &test_audit(),
        )
        .unwrap();
    src.touch_api_key(&mk.id, 1_700_000_000_000).unwrap();
    let operator = Principal { actor: mk.id.clone(), name: "ops".into(), role: Role::Operator };
    src.record_audit(&Audit::new(&operator, Via::Console, "console.login", "console", Some(mk.id.clone()), json!({})))
        .unwrap();
    // An alert webhook (its secret sealed) whose 1 % threshold req-1 crosses.
    let hook = src
        .create_alert_webhook(
            &NewAlertWebhook {
                url: "https://hooks.example/keygate".into(),
                secret: "whsec_copied-secret-0000000000000".into(),
                config_id: Some(config.id.clone()),
                thresholds: vec![1],
                events: vec![keygate_store::policy::alerts::AlertEvent::Budget],
                expiry_warning_days: 7,
                enabled: true,
            },
            &test_audit(),
        )
        .unwrap();
    // Usage: a settled request (two attempts), an open reservation, a late record.
    let r = reserve(&src, "req-1", &k0.id, 100);
    assert!(r.ok);
    src.ingest_usage(&[
        record("req-1", &k0.id, 0, None, 80),
        record("req-1", &k0.id, 1, r.reservation_id.as_deref(), 90),
    ])
    .unwrap();
    assert!(reserve(&src, "req-2", &k1.id, 50).ok);
    src.ingest_usage(&[record("req-3", &k1.id, 0, Some("rsv_unknown"), 10)]).unwrap();
    let before = everything(&src, &tokens);
    assert_eq!(
        before["lookups"][0]["requestLimits"],
        json!({"maxInputTokens": 1000, "maxConcurrentRequests": 3, "totalTimeoutMs": 30000})
    );
    assert_eq!(before["lookups"][1]["requestLimits"], json!({"maxConcurrentRequests": 9}));
    let version = src.changes(0).unwrap().version;
    drop(src);

    // keygate copy --from <data dir> --to <url>
    let copy = |extra: &[&str]| {
        let mut c = command(&data);
        c.args(["copy", "--to", &db.url]).args(extra).stdout(Stdio::piped()).stderr(Stdio::piped());
        c.output().unwrap()
    };
    let out = copy(&["--from", data.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["version"], json!(version));
    assert_eq!(report["copied"]["access_keys"], 3);
    assert_eq!(report["copied"]["provider_keys"], 3);
    assert_eq!(report["copied"]["usage"], 3);
    assert_eq!(
        (report["copied"]["alert_webhooks"].clone(), report["copied"]["alert_deliveries"].clone()),
        (json!(1), json!(1))
    );
    assert_eq!(report["copied"]["api_keys"], 1);
    assert_eq!(report["copied"]["audit_log"], json!(before["auditLog"].as_array().unwrap().len()));
    assert!(before["auditLog"].as_array().unwrap().len() >= 18);

    // The copied store answers exactly as the original did.
    let dst = Backend::Postgres(db.url.clone().into()).open(cipher(), Options::default()).unwrap();
    assert_eq!(everything(&*dst, &tokens), before);
    assert_eq!(
        dst.lookup(&digest_of(&tokens[0])).unwrap().providers.len(),
        before["providers"].as_array().unwrap().len()
    );
    // Raw rows too: digests, redacted forms, sealed values byte for byte,
    // reservations, budget rows and the change log.
    for (table, order) in [
        ("provider_keys", "id"),
        ("access_keys", "id"),
        ("reservations", "id"),
        ("budget_state", "scope, win, window_start"),
        ("change_log", "seq"),
        ("usage", "seq"),
        ("providers", "seq"),
        ("prices", "provider, model"),
        ("api_keys", "id"),
        ("audit_log", "id"),
        ("alert_webhooks", "id"),
        ("alert_fired", "webhook_id, subject, unit, period, threshold"),
        ("alert_deliveries", "id"),
        ("alert_attempts", "delivery_id, attempt"),
    ] {
        let cols: Vec<String> = sqlite_rows(&path, &format!("SELECT name FROM pragma_table_info('{table}')"))
            .into_iter()
            .map(|r| r[0].clone().unwrap())
            .collect();
        let sql = format!("SELECT {} FROM {table} ORDER BY {order}", cols.join(", "));
        let pg_rows: Vec<Vec<Option<String>>> = db
            .query(&sql)
            .into_iter()
            .map(|r| {
                r.into_iter()
                    .map(|c| {
                        c.map(|v| {
                            if v == "t" {
                                "1".into()
                            } else if v == "f" {
                                "0".into()
                            } else {
                                v
                            }
                        })
                    })
                    .collect()
            })
            .collect();
        assert_eq!(pg_rows, sqlite_rows(&path, &sql), "{table}");
    }
    assert_eq!(
        db.query("SELECT encode(sealed, 'hex') FROM key_check")[0][0].clone().unwrap(),
        hex::encode(
            rusqlite::Connection::open(&path)
                .unwrap()
                .query_row("SELECT value FROM meta WHERE key = 'key_check'", [], |r| r.get::<_, Vec<u8>>(0))
                .unwrap()
        )
    );

    // The webhook's secret opens with the same master key: its delivery goes out signed.
    let claimed = dst.claim_alert_deliveries(60_000, 10).unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(
        (claimed[0].webhook_id.as_str(), claimed[0].secret.as_str()),
        (hook.id.as_str(), "whsec_copied-secret-0000000000000")
    );

    // It goes on from there: the next change is the next version.
    let k4 = dst
        .create_access_key(&new_key("k4", &format!("kg-after0000{}", "z".repeat(40)), None, None), &test_audit())
        .unwrap();
    let c = dst.changes(version).unwrap();
    assert_eq!((c.version, c.digests.len()), (version + 1, 1));
    assert_eq!(dst.list_usage(&UsageFilter::default(), &PageRequest { limit: 10, before_id: None }).unwrap().len(), 3);
    assert!(dst.get_access_key(&k4.id).is_ok());
    drop(dst);

    // A database that is not empty is refused, and left as it was.
    let out = copy(&[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not empty"), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(db.query("SELECT COUNT(*) FROM access_keys")[0][0].as_deref(), Some("4"));
    // So is a database a store already started on (it has the master key check).
    let served = PgDb::create().unwrap();
    drop(Backend::Postgres(served.url.clone().into()).open(cipher(), Options::default()).unwrap());
    let mut c = command(&data);
    let out = c.args(["copy", "--to", &served.url]).output().unwrap();
    assert!(!out.status.success());
    // A missing source is an error, not an empty copy.
    let empty = PgDb::create().unwrap();
    let out = command(&data).args(["copy", "--from", "/nonexistent/keygate", "--to", &empty.url]).output().unwrap();
    assert!(!out.status.success());
}

#[test]
fn migrations_started_at_once_apply_once() {
    let Some(db) = pg() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let children: Vec<_> = (0..4)
        .map(|_| {
            command(tmp.path())
                .arg("migrate")
                .env("KEYGATE_DATABASE_URL", &db.url)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut applied = Vec::new();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        applied.extend(v["applied"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()));
    }
    applied.sort_unstable();
    assert_eq!(applied, vec![1, 2, 3, 4, 5, 6, 7, 8, 9], "each migration is applied by exactly one of them");
    assert_eq!(
        db.query("SELECT version FROM schema_migrations ORDER BY version"),
        (1..=9).map(|v| vec![Some(v.to_string())]).collect::<Vec<_>>()
    );
    // And again: nothing to do.
    let out = command(tmp.path()).arg("migrate").env("KEYGATE_DATABASE_URL", &db.url).output().unwrap();
    assert_eq!(serde_json::from_slice::<Value>(&out.stdout).unwrap(), json!({"applied": []}));
    // Stores started at once on a fresh database all come up.
    let fresh = PgDb::create().unwrap();
    std::thread::scope(|s| {
        for _ in 0..3 {
            s.spawn(|| drop(Backend::Postgres(fresh.url.clone().into()).open(cipher(), Options::default()).unwrap()));
        }
    });
    assert_eq!(fresh.query("SELECT COUNT(*) FROM providers WHERE built_in")[0][0].as_deref(), Some("8"));
    assert_eq!(fresh.query("SELECT value FROM meta WHERE key = 'version'")[0][0].as_deref(), Some("0"));
}

/// Several stores (each its own pool, as separate processes) writing at once:
/// budgets, settlements, credits and the version counter stay exact.
#[test]
fn writers_in_several_stores_stay_exact() {
    let Some(db) = pg() else { return };
    let stores: Vec<Arc<dyn Store>> =
        (0..2).map(|_| Backend::Postgres(db.url.clone().into()).open(cipher(), Options::default()).unwrap()).collect();
    let key = stores[0]
        .create_access_key(
            &new_key("b", &format!("kg-budget000{}", "b".repeat(40)), None, Some(json!({"tokens": 100}))),
            &test_audit(),
        )
        .unwrap();
    let v0 = stores[0].changes(0).unwrap().version;
    const THREADS: usize = 6;
    const EACH: usize = 25;
    let granted = AtomicUsize::new(0);
    let reservations = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let store = stores[t % stores.len()].clone();
            let (granted, reservations, key) = (&granted, &reservations, &key);
            s.spawn(move || {
                for i in 0..EACH {
                    // Budget: one token each, 150 asked for 100.
                    let r = reserve(&*store, &format!("r-{t}-{i}"), &key.id, 1);
                    if r.ok {
                        granted.fetch_add(1, Ordering::Relaxed);
                        reservations.lock().unwrap().push((format!("r-{t}-{i}"), r.reservation_id.unwrap()));
                    }
                    // The version counter: every new key is one version.
                    let token = format!("kg-v{t:02}{i:04}{}", "v".repeat(40));
                    store.create_access_key(&new_key("v", &token, None, None), &test_audit()).unwrap();
                }
            });
        }
    });
    assert_eq!(granted.load(Ordering::Relaxed), 100);
    let usage = stores[1].get_access_key(&key.id).unwrap().budget_usage.unwrap();
    assert_eq!((usage.tokens, usage.reserved_tokens), (0, 100));
    let c = stores[1].changes(v0).unwrap();
    let n = (THREADS * EACH) as u64;
    // One version per key.
    assert_eq!(c.version, v0 + n);
    assert_eq!(c.digests.len(), THREADS * EACH);
    let mut versions = c.digest_versions.clone();
    versions.sort_unstable();
    versions.dedup();
    assert_eq!(versions.len(), THREADS * EACH, "each key has a version of its own");

    // Settling from both stores at once: every reserved token becomes spent.
    let reservations = reservations.into_inner().unwrap();
    std::thread::scope(|s| {
        for (t, chunk) in reservations.chunks(20).enumerate() {
            let store = stores[t % stores.len()].clone();
            let key = &key.id;
            s.spawn(move || {
                for (req, rsv) in chunk {
                    let mut rec = record(req, key, 0, Some(rsv), 1);
                    (rec.output_tokens, rec.cached_tokens) = (0, 0);
                    assert_eq!(store.ingest_usage(&[rec.clone()]).unwrap(), 1);
                    // A duplicate (a retried report) changes nothing.
                    assert_eq!(store.ingest_usage(&[rec]).unwrap(), 0);
                }
            });
        }
    });
    let usage = stores[0].get_access_key(&key.id).unwrap().budget_usage.unwrap();
    assert_eq!((usage.tokens, usage.reserved_tokens), (100, 0));
    assert!(!reserve(&*stores[1], "one-more", &key.id, 1).ok);

    // Credits: every grant counts, and only the first one (which enables
    // credits) changes lookup answers.
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let store = stores[t % stores.len()].clone();
            s.spawn(move || (0..EACH).for_each(|_| assert!(store.add_credits(1, &test_audit()).unwrap().enabled)));
        }
    });
    let credits = stores[1].get_credits().unwrap();
    assert!(credits.enabled);
    assert_eq!((credits.balance_usd * 1e6).round() as usize, THREADS * EACH);
    assert_eq!(stores[0].changes(0).unwrap().version, v0 + n + 1);
}

// ---------------------------------------------------------------------------
// TLS (sslmode, KEYGATE_DATABASE_CA). These run in a PostgreSQL run too; the
// TLS server is a cluster of their own (`scripts/pg-cluster start --tls`:
// TLS connections only, a certificate for localhost and 127.0.0.1 signed by
// a throwaway CA).

const PG_CLUSTER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/pg-cluster");

/// A TLS cluster, stopped and removed when dropped.
struct TlsCluster {
    dir: String,
    /// `postgres://keygate:…@127.0.0.1:PORT/postgres`, no query.
    url: String,
    ca: std::path::PathBuf,
}

impl TlsCluster {
    fn start() -> TlsCluster {
        let out = std::process::Command::new(PG_CLUSTER).args(["start", "--tls"]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let line = String::from_utf8(out.stdout).unwrap();
        let f: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(f.len(), 3, "{line}");
        TlsCluster { dir: f[0].into(), url: f[1].into(), ca: f[2].into() }
    }

    fn url(&self, sslmode: &str) -> String {
        format!("{}?sslmode={sslmode}", self.url)
    }
}

impl Drop for TlsCluster {
    fn drop(&mut self) {
        let _ = std::process::Command::new(PG_CLUSTER).args(["stop", &self.dir]).status();
    }
}

/// Whether the server sees the connection the store makes as TLS.
fn encrypted(target: &PgTarget) -> Result<bool, String> {
    let mut c = target.connect().map_err(|e| e.to_string())?;
    Ok(c.query_one("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[]).unwrap().get(0))
}

fn target(url: &str, ca: Option<&std::path::Path>) -> PgTarget {
    PgTarget::new(url, ca.map(std::path::Path::to_path_buf))
}

/// `keygate migrate` on `url` (and the CA bundle `ca`): its exit and stderr.
fn migrate_with(url: &str, ca: Option<&std::path::Path>) -> (bool, String) {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = command(tmp.path());
    c.arg("migrate").env("KEYGATE_DATABASE_URL", url);
    if let Some(ca) = ca {
        c.env("KEYGATE_DATABASE_CA", ca);
    }
    let out = c.output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// `keygate serve` on `url` (and `ca`), which must exit, failing, within 30 s
/// without having become ready; returns its stderr.
fn serve_refuses(url: &str, ca: Option<&std::path::Path>) -> String {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = command(tmp.path());
    c.arg("serve")
        .env("KEYGATE_API_PORT", "0")
        .env("KEYGATE_LOOKUP_PORT", "0")
        .env("KEYGATE_DATABASE_URL", url)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .stdin(Stdio::null());
    if let Some(ca) = ca {
        c.env("KEYGATE_DATABASE_CA", ca);
    }
    let mut child = c.spawn().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("keygate serve did not exit on {url}");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!stdout.contains("ready"), "{stdout}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A throwaway CA that signed nothing the server holds.
fn other_ca(dir: &std::path::Path) -> std::path::PathBuf {
    let ca = dir.join("other-ca.pem");
    let key = dir.join("other-ca.key");
    let out = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "1"])
        .args(["-subj", "/CN=another CA", "-addext", "basicConstraints=critical,CA:TRUE", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&ca)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    ca
}

#[test]
fn tls_with_the_ca_serves_and_fails_closed_without_it() {
    if std::env::var(server::testdb::ENV).is_err() {
        eprintln!("skipped: {} is not set", server::testdb::ENV);
        return;
    }
    let t = std::time::Instant::now();
    let cluster = TlsCluster::start();
    let ca = Some(cluster.ca.as_path());

    // Verified TLS, in every mode that uses it: the server sees TLS.
    for mode in ["require", "verify-ca", "verify-full", "prefer"] {
        assert_eq!(encrypted(&target(&cluster.url(mode), ca)), Ok(true), "sslmode={mode}");
    }
    // The certificate's DNS name works as well as its IP address.
    let by_name = cluster.url("verify-full").replace("@127.0.0.1:", "@localhost:");
    assert_eq!(encrypted(&target(&by_name, ca)), Ok(true));

    // The real binary: serves with KEYGATE_DATABASE_URL + KEYGATE_DATABASE_CA.
    let tmp = tempfile::tempdir().unwrap();
    let master = hex::encode([9u8; 32]);
    let url = cluster.url("verify-full");
    let ca_path = cluster.ca.display().to_string();
    let server = Server::start(
        tmp.path(),
        &[("KEYGATE_DATABASE_URL", &url), ("KEYGATE_DATABASE_CA", &ca_path), ("KEYGATE_MASTER_KEY", &master)],
    );
    let res = agent().get(format!("{}/healthz", server.lookup)).call().unwrap();
    assert_eq!(res.status(), 200);
    let log = server.stop();
    assert!(log.contains("connected to PostgreSQL over TLS"), "{log}");
    // The library too: the store opens and answers.
    let store = Backend::Postgres(target(&cluster.url("require"), ca)).open(cipher(), Options::default()).unwrap();
    assert_eq!(store.changes(0).unwrap().version, 0);
    drop(store);

    // Without the CA (Mozilla's roots only), or with another CA: no connection,
    // whatever the mode (prefer too: TLS was offered, so it is verified).
    let other = other_ca(tmp.path());
    for ca in [None, Some(other.as_path())] {
        for mode in ["require", "verify-full", "prefer"] {
            let err = encrypted(&target(&cluster.url(mode), ca)).unwrap_err();
            assert!(err.contains("certificate") && err.contains("UnknownIssuer"), "sslmode={mode}: {err}");
        }
        let (ok, stderr) = migrate_with(&cluster.url("require"), ca);
        assert!(!ok && stderr.contains("UnknownIssuer"), "{stderr}");
        let stderr = serve_refuses(&cluster.url("verify-full"), ca);
        assert!(stderr.contains("UnknownIssuer"), "{stderr}");
        assert!(Backend::Postgres(target(&cluster.url("require"), ca)).open(cipher(), Options::default()).is_err());
    }
    // The right CA but another host name: refused (verify-full, as every mode here).
    let misnamed =
        format!("{}&hostaddr=127.0.0.1", cluster.url("require").replace("@127.0.0.1:", "@db.keygate.invalid:"));
    let err = encrypted(&target(&misnamed, ca)).unwrap_err();
    assert!(err.contains("not valid for name"), "{err}");
    // An unreadable or empty CA bundle stops the store, whatever the mode.
    let empty = tmp.path().join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    for path in [empty.as_path(), std::path::Path::new("/nonexistent/ca.pem")] {
        let (ok, stderr) = migrate_with(&cluster.url("disable"), Some(path));
        assert!(!ok && stderr.contains("KEYGATE_DATABASE_CA"), "{stderr}");
    }
    // sslmode=disable sends no TLS: this server (TLS connections only) refuses it.
    let err = encrypted(&target(&cluster.url("disable"), ca)).unwrap_err();
    assert!(err.contains("no encryption"), "{err}");
    eprintln!("tls_with_the_ca_serves_and_fails_closed_without_it: {:?}", t.elapsed());
}

#[test]
fn tls_required_of_a_plain_server_fails_closed() {
    let Some(db) = pg() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let ca = other_ca(tmp.path());
    let url = |mode: &str| format!("{}?sslmode={mode}", db.url);
    for mode in ["require", "verify-ca", "verify-full"] {
        for ca in [None, Some(ca.as_path())] {
            let err = encrypted(&target(&url(mode), ca)).unwrap_err();
            assert!(err.contains("server does not support TLS"), "sslmode={mode}: {err}");
        }
        let (ok, stderr) = migrate_with(&url(mode), None);
        assert!(!ok && stderr.contains("server does not support TLS"), "{stderr}");
    }
    let stderr = serve_refuses(&url("require"), None);
    assert!(stderr.contains("server does not support TLS"), "{stderr}");
    assert!(Backend::Postgres(target(&url("require"), None)).open(cipher(), Options::default()).is_err());
    assert_eq!(db.query("SELECT COUNT(*) FROM pg_tables WHERE tablename = 'meta'")[0][0].as_deref(), Some("0"));

    // disable, and prefer (the default) of a server without TLS: plain text.
    assert_eq!(encrypted(&target(&url("disable"), None)), Ok(false));
    assert_eq!(encrypted(&target(&url("prefer"), None)), Ok(false));
    assert_eq!(encrypted(&target(&db.url, None)), Ok(false));
    let store = Backend::Postgres(target(&url("disable"), None)).open(cipher(), Options::default()).unwrap();
    assert_eq!(store.changes(0).unwrap().version, 0);
}
