//! Budget and credit alerts: the `/alert-webhooks` API, thresholds crossed
//! by settled usage (once per threshold and window), credits, key expiry,
//! signed deliveries to a local receiver, retries with backoff, and two
//! stores on one database firing and claiming once. SQLite, or PostgreSQL
//! with `KEYGATE_TEST_DATABASE_URL`.
// Helpers outside #[test] functions unwrap too: these are tests.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Barrier, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::IntoResponse;
use common::*;
use hmac::{Hmac, Mac};
use keygate_proto::lookup::UsageRecord;
use keygate_store::crypto::Cipher;
use keygate_store::ids::{now_ms, now_secs, rfc3339_secs};
use keygate_store::policy::alerts::RetryPolicy;
use keygate_store::storage::{Backend, Options, Store};
use keygate_store::webhooks::{self, AlertSettings};
use serde_json::{json, Value};
use sha2::Sha256;

const SECRET: &str = "whsec_test-secret-0123456789abcdef";

fn settings(base_ms: u64, max_attempts: u32) -> AlertSettings {
    AlertSettings { retry: RetryPolicy { base_ms, max_attempts }, timeout_ms: 2_000 }
}

// ------------------------------------------------------------ a receiver

/// A webhook receiver on 127.0.0.1: records every request and answers the
/// scripted statuses in turn (then 200); 302 redirects to `/elsewhere`.
struct Receiver {
    base: String,
    seen: Arc<Mutex<Vec<(String, HeaderMap, Bytes)>>>,
    script: Arc<Mutex<VecDeque<u16>>>,
}

impl Receiver {
    async fn start() -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let seen: Arc<Mutex<Vec<(String, HeaderMap, Bytes)>>> = Arc::default();
        let script: Arc<Mutex<VecDeque<u16>>> = Arc::default();
        let (s, sc) = (seen.clone(), script.clone());
        let app = axum::Router::new().fallback(move |uri: Uri, headers: HeaderMap, body: Bytes| {
            let (s, sc) = (s.clone(), sc.clone());
            async move {
                s.lock().unwrap().push((uri.path().to_string(), headers, body));
                match sc.lock().unwrap().pop_front().unwrap_or(200) {
                    302 => (StatusCode::FOUND, [("location", "/elsewhere")]).into_response(),
                    n => StatusCode::from_u16(n).unwrap().into_response(),
                }
            }
        });
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Receiver { base, seen, script }
    }

    fn url(&self) -> String {
        format!("{}/hook", self.base)
    }

    fn answer(&self, statuses: &[u16]) {
        self.script.lock().unwrap().extend(statuses);
    }

    fn seen(&self) -> Vec<(String, HeaderMap, Bytes)> {
        self.seen.lock().unwrap().clone()
    }
}

/// Verifies `x-keygate-signature` as a receiver would (independently of the
/// store's code): HMAC-SHA256 of "<t>.<body>", `t` within 5 minutes.
fn verify(secret: &str, headers: &HeaderMap, body: &[u8]) -> Result<(), String> {
    let header = headers.get("x-keygate-signature").ok_or("no signature")?.to_str().map_err(|e| e.to_string())?;
    let (mut t, mut v1) = (None, None);
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", v)) => t = v.parse::<i64>().ok(),
            Some(("v1", v)) => v1 = hex::decode(v).ok(),
            _ => {}
        }
    }
    let (t, v1) = (t.ok_or("no t")?, v1.ok_or("no v1")?);
    if (now_secs() - t).abs() > 300 {
        return Err(format!("timestamp {t} too far from now"));
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{t}.").as_bytes());
    mac.update(body);
    mac.verify_slice(&v1).map_err(|_| "bad signature".to_string())
}

// ------------------------------------------------------------ helpers

async fn webhook(h: &H, body: Value) -> Value {
    let (s, v) = h.api("POST", "/alert-webhooks", Some(body)).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    v
}

async fn key(h: &H, body: Value) -> String {
    h.ok("POST", "/access-keys", Some(body)).await["id"].as_str().unwrap().to_string()
}

/// Reserves a small estimate and settles it with `input`/`output` tokens of
/// `model` (openai), as the gateway does.
async fn spend(h: &H, key: &str, model: &str, input: u64, output: u64) {
    let req = format!("req-{}", keygate_store::ids::random_hex(6).unwrap());
    let (s, v) = send(
        &h.gw,
        "POST",
        "/v1/reserve",
        Some(GATEWAY),
        Some(
            json!({"requestId": req, "accessKeyId": key, "provider": "openai", "model": model,
                   "inputTokens": 1, "outputTokens": 1})
            .to_string(),
        ),
    )
    .await;
    assert!(s == StatusCode::OK && v["ok"] == true, "{v}");
    let now = now_ms();
    let rec = json!({"requestId": req, "accessKeyId": key, "provider": "openai", "model": model, "attempt": 1,
                     "finalAttempt": true, "status": 200, "streaming": false, "inputTokens": input,
                     "outputTokens": output, "startedMs": now, "endedMs": now, "reservationId": v["reservationId"]});
    let (s, v) = send(&h.gw, "POST", "/v1/usage", Some(GATEWAY), Some(json!({"records": [rec]}).to_string())).await;
    assert_eq!(s, StatusCode::OK, "{v}");
}

async fn deliveries(h: &H, webhook: &str) -> Vec<Value> {
    h.ok("GET", &format!("/alert-webhooks/{webhook}/deliveries"), None).await["deliveries"].as_array().unwrap().clone()
}

async fn deliver(h: &H, s: &AlertSettings) -> usize {
    webhooks::deliver_due(&h.state, &webhooks::agent(s), s).await
}

/// Waits (at most 10 s) until `f` holds of the webhook's deliveries.
async fn wait_deliveries(h: &H, webhook: &str, f: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    for _ in 0..500 {
        let d = deliveries(h, webhook).await;
        if f(&d) {
            return d;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("deliveries never got there: {:?}", deliveries(h, webhook).await);
}

/// The store's key-expiry sweep (off the async runtime: the PostgreSQL
/// client blocks).
fn sweep(h: &H) -> usize {
    let store = h.state.store.clone();
    testdb::off_runtime(move || store.sweep_alerts().unwrap())
}

fn next_due(h: &H) -> Option<i64> {
    let store = h.state.store.clone();
    testdb::off_runtime(move || store.next_alert_due().unwrap())
}

/// The UTC midnight of today, unix ms.
fn today_ms() -> i64 {
    let now = now_ms();
    now - now.rem_euclid(86_400_000)
}

// ------------------------------------------------------------ the API

#[tokio::test]
async fn webhooks_are_validated_and_their_secret_is_shown_once_and_stored_sealed() {
    let h = harness();
    let created = webhook(&h, json!({"url": "https://hooks.example/keygate/"})).await;
    let id = created["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("awh_"), "{created}");
    let secret = created["secret"].as_str().unwrap().to_string();
    assert!(secret.starts_with("whsec_") && secret.len() == 6 + 64, "{secret}");
    assert_eq!(created["url"], "https://hooks.example/keygate/");
    assert_eq!(created["thresholds"], json!([50, 80, 100]));
    assert_eq!(created["events"], json!(["budget", "credits", "key_expiry"]));
    assert_eq!((created["expiryWarningDays"].clone(), created["enabled"].clone()), (json!(7), json!(true)));
    assert_eq!(created["configurationId"], Value::Null);

    // Never again: not in a get, a list or a PATCH answer.
    let got = h.ok("GET", &format!("/alert-webhooks/{id}"), None).await;
    assert!(got.get("secret").is_none(), "{got}");
    let mut without = created.clone();
    without.as_object_mut().unwrap().remove("secret");
    assert_eq!(got, without);
    let list = h.ok("GET", "/alert-webhooks", None).await;
    assert_eq!(list["alertWebhooks"][0]["id"], json!(id));
    assert_eq!((list["uri"].clone(), list["nextPageUri"].clone()), (json!("/alert-webhooks"), Value::Null));
    assert!(!list.to_string().contains(&secret));
    let patched =
        h.ok("PATCH", &format!("/alert-webhooks/{id}"), Some(json!({"secret": SECRET, "enabled": false}))).await;
    assert!(!patched.to_string().contains(SECRET) && !patched.to_string().contains(&secret), "{patched}");
    assert_eq!(patched["enabled"], false);

    // Sealed at rest: neither secret appears in the database.
    if let Some(db) = &h.pg {
        let rows = db.query(&format!("SELECT encode(secret, 'escape'), url FROM alert_webhooks WHERE id = '{id}'"));
        assert_eq!(rows.len(), 1);
        assert!(!format!("{rows:?}").contains(SECRET));
    } else {
        let bytes = std::fs::read(h.db_path()).unwrap();
        let wal = std::fs::read(h.dir.path().join("keygate.db-wal")).unwrap_or_default();
        for s in [SECRET, secret.as_str()] {
            let found = |b: &[u8]| b.windows(s.len()).any(|w| w == s.as_bytes());
            assert!(!found(&bytes) && !found(&wal), "the secret is stored in clear");
        }
    }

    // Given values: thresholds sorted and deduplicated, a configuration's scope.
    let cfg = h.ok("POST", "/access-key-configurations", Some(json!({"name": "team"}))).await["id"].clone();
    let scoped = webhook(
        &h,
        json!({"url": "http://127.0.0.1:9/h", "secret": SECRET, "configurationId": cfg, "thresholds": [100, 50, 50],
               "events": ["budget", "budget"], "expiryWarningDays": 30, "enabled": true}),
    )
    .await;
    assert_eq!(scoped["secret"], SECRET, "shown once when given too");
    assert_eq!((scoped["thresholds"].clone(), scoped["events"].clone()), (json!([50, 100]), json!(["budget"])));
    assert_eq!((scoped["configurationId"].clone(), scoped["expiryWarningDays"].clone()), (cfg.clone(), json!(30)));

    // What is refused, and which field is at fault.
    let bad = [
        (json!({"url": "https://user:pw@hooks.example/h"}), "url"),
        (json!({"url": "https://hooks.example/h?token=1"}), "url"),
        (json!({"url": "ftp://hooks.example/h"}), "url"),
        (json!({"url": "https://hooks.example/a/../b"}), "url"),
        (json!({"url": "https://hooks.example/%2e"}), "url"),
        (json!({"url": "https://hooks.example/h#x"}), "url"),
        (json!({"url": "https://hooks.example/h", "thresholds": []}), "thresholds"),
        (json!({"url": "https://hooks.example/h", "thresholds": [0]}), "thresholds[0]"),
        (json!({"url": "https://hooks.example/h", "thresholds": [50, 101]}), "thresholds[1]"),
        (json!({"url": "https://hooks.example/h", "thresholds": [50.5]}), "thresholds[0]"),
        (json!({"url": "https://hooks.example/h", "events": []}), "events"),
        (json!({"url": "https://hooks.example/h", "events": ["budgets"]}), "events[0]"),
        (json!({"url": "https://hooks.example/h", "expiryWarningDays": 0}), "expiryWarningDays"),
        (json!({"url": "https://hooks.example/h", "expiryWarningDays": 366}), "expiryWarningDays"),
        (json!({"url": "https://hooks.example/h", "secret": "short"}), "secret"),
        (json!({"url": "https://hooks.example/h", "secret": "has spaces in it, sixteen+"}), "secret"),
        (json!({"url": "https://hooks.example/h", "configurationId": "akc_nope"}), "configurationId"),
        (json!({"url": "https://hooks.example/h", "configurationId": "../x"}), "configurationId"),
        (json!({"url": "https://hooks.example/h", "enabled": "yes"}), "enabled"),
    ];
    for (body, field) in bad {
        let (s, v) = h.api("POST", "/alert-webhooks", Some(body.clone())).await;
        assert_error(s, &v, StatusCode::BAD_REQUEST, "invalid_field");
        assert_eq!(v["details"]["field"], field, "{body} -> {v}");
        assert!(!v.to_string().contains(SECRET));
    }
    let (s, v) = h.api("POST", "/alert-webhooks", Some(json!({"url": "https://x/h", "name": "n"}))).await;
    assert_error(s, &v, StatusCode::BAD_REQUEST, "unknown_field");
    let (s, v) = h.api("PATCH", &format!("/alert-webhooks/{id}"), Some(json!({"url": "https://a@b/h"}))).await;
    assert_error(s, &v, StatusCode::BAD_REQUEST, "invalid_field");
    let (s, v) = h.api("PATCH", &format!("/alert-webhooks/{id}"), Some(json!({"thresholds": null}))).await;
    assert_error(s, &v, StatusCode::BAD_REQUEST, "invalid_field");

    // A configuration that scopes a webhook stays until the webhook lets go.
    let sid = scoped["id"].as_str().unwrap();
    let (s, v) = h.api("DELETE", &format!("/access-key-configurations/{}", cfg.as_str().unwrap()), None).await;
    assert_error(s, &v, StatusCode::CONFLICT, "conflict");
    assert!(v["msg"].as_str().unwrap().contains("alert webhook"), "{v}");
    let p = h.ok("PATCH", &format!("/alert-webhooks/{sid}"), Some(json!({"configurationId": null}))).await;
    assert_eq!(p["configurationId"], Value::Null);
    h.ok("DELETE", &format!("/access-key-configurations/{}", cfg.as_str().unwrap()), None).await;

    // Paging, newest first.
    let page = h.ok("GET", "/alert-webhooks?limit=1", None).await;
    assert_eq!(page["alertWebhooks"][0]["id"], json!(sid));
    assert_eq!(page["nextPageUri"], json!(format!("/alert-webhooks?limit=1&beforeId={sid}")));

    // Delete: gone, with its deliveries.
    let (s, _) = h.api("DELETE", &format!("/alert-webhooks/{id}"), None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    for uri in [format!("/alert-webhooks/{id}"), format!("/alert-webhooks/{id}/deliveries")] {
        let (s, v) = h.api("GET", &uri, None).await;
        assert_error(s, &v, StatusCode::NOT_FOUND, "not_found");
    }
    let (s, v) = h.api("DELETE", &format!("/alert-webhooks/{id}"), None).await;
    assert_error(s, &v, StatusCode::NOT_FOUND, "not_found");
    let (s, v) = send(&h.api, "GET", "/alert-webhooks", None, None).await;
    assert_error(s, &v, StatusCode::UNAUTHORIZED, "unauthorized");
}

/// The first 12 hex digits of the SHA-256 of `url`, computed here apart
/// from the store's code.
fn fingerprint(url: &str) -> String {
    use sha2::Digest;
    hex::encode(Sha256::digest(url.as_bytes()))[..12].to_string()
}

#[tokio::test]
async fn a_webhook_url_is_shown_whole_to_admins_only_and_fingerprinted_for_every_role() {
    let h = harness();
    let rx = Receiver::start().await;
    // A Slack-like URL: its path is the receiver's only credential.
    const PATH_SECRET: &str = "Zq3url1secret2path3XYZ";
    let url = format!("{}/services/T0000000/B0000000/{PATH_SECRET}", rx.base);
    let redacted = format!("{}/…", rx.base);
    let mut tokens = vec![("bootstrap", ADMIN.to_string())];
    for role in ["viewer", "operator", "admin"] {
        let k = h.ok("POST", "/api-keys", Some(json!({"name": role, "role": role}))).await;
        tokens.push((role, k["token"].as_str().unwrap().to_string()));
    }
    let (_, admin) = &tokens[3];
    let (s, created) = send(
        &h.api,
        "POST",
        "/alert-webhooks",
        Some(admin),
        Some(json!({"url": url, "thresholds": [50], "events": ["budget"]}).to_string()),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    assert_eq!((&created["url"], &created["urlFingerprint"]), (&json!(url), &json!(fingerprint(&url))));
    // A store-wide second webhook, told apart by its fingerprint alone.
    let other = format!("{}/services/T0000000/B0000001/AnotherSecretPath", rx.base);
    let other_id = webhook(&h, json!({"url": other, "events": ["credits"]})).await["id"].as_str().unwrap().to_string();
    let patched = h.ok("PATCH", &format!("/alert-webhooks/{id}"), Some(json!({"enabled": true}))).await;
    assert_eq!((&patched["url"], &patched["urlFingerprint"]), (&json!(url), &json!(fingerprint(&url))));

    // A delivery, so that the deliveries are read too.
    let k = key(&h, json!({"name": "k", "budget": {"tokens": 100}})).await;
    spend(&h, &k, "gpt-4o", 60, 0).await;
    assert_eq!(deliver(&h, &settings(50, 3)).await, 1);
    assert_eq!(rx.seen()[0].0, format!("/services/T0000000/B0000000/{PATH_SECRET}"), "delivered to the whole URL");

    for (role, token) in &tokens {
        let whole = *role == "admin" || *role == "bootstrap";
        let (want, want_other) =
            if whole { (url.clone(), other.clone()) } else { (redacted.clone(), redacted.clone()) };
        let (s, list) = send(&h.api, "GET", "/alert-webhooks", Some(token), None).await;
        assert_eq!(s, StatusCode::OK, "{role}: {list}");
        let hooks = list["alertWebhooks"].as_array().unwrap();
        let by_id = |i: &str| hooks.iter().find(|w| w["id"] == i).unwrap().clone();
        let (mine, theirs) = (by_id(&id), by_id(&other_id));
        assert_eq!((&mine["url"], &mine["urlFingerprint"]), (&json!(want), &json!(fingerprint(&url))), "{role}");
        assert_eq!(
            (&theirs["url"], &theirs["urlFingerprint"]),
            (&json!(want_other), &json!(fingerprint(&other))),
            "{role}"
        );
        let (s, got) = send(&h.api, "GET", &format!("/alert-webhooks/{id}"), Some(token), None).await;
        assert_eq!(s, StatusCode::OK, "{role}: {got}");
        assert_eq!((&got["url"], &got["urlFingerprint"]), (&json!(want), &json!(fingerprint(&url))), "{role}");
        let (s, d) = send(&h.api, "GET", &format!("/alert-webhooks/{id}/deliveries"), Some(token), None).await;
        assert_eq!((s, d["deliveries"].as_array().unwrap().len()), (StatusCode::OK, 1), "{role}: {d}");
        let (s, log) = send(&h.api, "GET", "/audit-log", Some(token), None).await;
        assert_eq!(s, StatusCode::OK, "{role}: {log}");
        // Below admin, the secret path is nowhere; deliveries and the audit log never hold it.
        for (what, v) in [("list", &list), ("get", &got), ("deliveries", &d), ("audit log", &log)] {
            let text = v.to_string();
            let holds = text.contains(PATH_SECRET) || text.contains("AnotherSecretPath");
            assert_eq!(holds, whole && (what == "list" || what == "get"), "{role} {what}: {text}");
        }
    }
    // The openapi document describes it.
    let doc: Value = serde_json::from_str(keygate_store::api::OPENAPI_JSON).unwrap();
    let schema = &doc["components"]["schemas"]["AlertWebhook"];
    assert!(schema["required"].as_array().unwrap().contains(&json!("urlFingerprint")));
    assert!(schema["properties"]["url"]["description"].as_str().unwrap().contains("admin"));
}

// ------------------------------------------------------------ budgets

#[tokio::test]
async fn a_budget_threshold_fires_once_per_window_signed_and_a_new_window_fires_again() {
    let h = harness();
    let rx = Receiver::start().await;
    let s = settings(50, 3);
    let hook =
        webhook(&h, json!({"url": rx.url(), "secret": SECRET, "thresholds": [50, 80], "events": ["budget"]})).await;
    let hook = hook["id"].as_str().unwrap().to_string();
    let k = key(&h, json!({"name": "alerted", "budget": {"tokens": 100, "window": "daily"}})).await;

    spend(&h, &k, "gpt-4o", 20, 10).await; // 30 %
    assert_eq!(deliver(&h, &s).await, 0);
    spend(&h, &k, "gpt-4o", 20, 5).await; // 55 %: 50 crossed
    assert_eq!(deliver(&h, &s).await, 1);
    spend(&h, &k, "gpt-4o", 5, 0).await; // 60 %: nothing new
    assert_eq!(deliver(&h, &s).await, 0);
    spend(&h, &k, "gpt-4o", 25, 0).await; // 85 %: 80 crossed
    assert_eq!(deliver(&h, &s).await, 1);
    spend(&h, &k, "gpt-4o", 30, 0).await; // 115 %: both long sent
    assert_eq!(deliver(&h, &s).await, 0);

    let seen = rx.seen();
    assert_eq!(seen.len(), 2);
    let (path, headers, body) = &seen[0];
    assert_eq!(path, "/hook");
    verify(SECRET, headers, body).unwrap();
    assert!(verify("whsec_another-secret-0000000000", headers, body).is_err());
    let p: Value = serde_json::from_slice(body).unwrap();
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(headers["x-keygate-event"], "budget.threshold");
    assert_eq!(headers["x-keygate-delivery"].to_str().unwrap(), p["id"].as_str().unwrap());
    assert_eq!(p["event"], "budget.threshold");
    assert_eq!(p["threshold"], 50);
    assert_eq!(p["subject"], json!({"type": "access_key", "id": k, "name": "alerted"}));
    assert_eq!((p["used"].clone(), p["limit"].clone(), p["unit"].clone()), (json!(55), json!(100), json!("tokens")));
    assert_eq!(p["usedPercent"], 55.0);
    assert_eq!(p["window"]["kind"], "daily");
    assert_eq!(p["window"]["start"], keygate_store::ids::rfc3339_ms(today_ms()));
    assert_eq!(p["window"]["end"], keygate_store::ids::rfc3339_ms(today_ms() + 86_400_000));
    assert_eq!(p["webhookId"], json!(hook));
    let second: Value = serde_json::from_slice(&seen[1].2).unwrap();
    assert_eq!((second["threshold"].clone(), second["used"].clone()), (json!(80), json!(85)));
    for (_, headers, body) in &seen {
        assert!(!String::from_utf8_lossy(body).contains(SECRET));
        assert!(headers.values().all(|v| !v.to_str().unwrap_or("").contains(SECRET)));
    }

    // The record: newest first, delivered at the first attempt; no secret.
    let d = deliveries(&h, &hook).await;
    assert_eq!(d.len(), 2);
    assert_eq!(d[0]["payload"], second);
    assert_eq!(d[1]["payload"], p);
    for x in &d {
        assert_eq!(
            (x["status"].clone(), x["attempts"].clone(), x["lastStatus"].clone()),
            (json!("delivered"), json!(1), json!(200))
        );
        assert_eq!((x["lastError"].clone(), x["nextAttemptAt"].clone()), (Value::Null, Value::Null));
        assert!(x["deliveredAt"].is_string());
        assert_eq!(x["attemptLog"].as_array().unwrap().len(), 1);
        assert_eq!(x["attemptLog"][0]["status"], 200);
        assert_eq!(x["event"], "budget.threshold");
    }
    assert!(!json!(d).to_string().contains(SECRET));
    let page = h.ok("GET", &format!("/alert-webhooks/{hook}/deliveries?limit=1"), None).await;
    assert_eq!(page["uri"], json!(format!("/alert-webhooks/{hook}/deliveries")));
    assert_eq!(
        page["nextPageUri"],
        json!(format!("/alert-webhooks/{hook}/deliveries?limit=1&beforeId={}", d[0]["id"].as_str().unwrap()))
    );

    // The next day (the day's rows moved back one day): a new window, whose
    // 50 % fires again.
    let (today, yesterday) = (today_ms(), today_ms() - 86_400_000);
    h.sql(&format!(
        "UPDATE budget_state SET window_start = {yesterday} WHERE scope = 'key:{k}' AND window_start = {today};
         UPDATE alert_fired SET period = 'daily:{yesterday}' WHERE period = 'daily:{today}';"
    ));
    spend(&h, &k, "gpt-4o", 50, 0).await;
    assert_eq!(deliver(&h, &s).await, 1);
    let p: Value = serde_json::from_slice(&rx.seen()[2].2).unwrap();
    assert_eq!((p["threshold"].clone(), p["used"].clone()), (json!(50), json!(50)));
}

#[tokio::test]
async fn configuration_budgets_and_scoped_webhooks() {
    let h = harness();
    let rx = Receiver::start().await;
    let s = settings(50, 3);
    let cfg =
        h.ok("POST", "/access-key-configurations", Some(json!({"name": "team", "budget": {"costUsd": 1.0}}))).await;
    let cfg = cfg["id"].as_str().unwrap().to_string();
    let other = h.ok("POST", "/access-key-configurations", Some(json!({"name": "other"}))).await["id"].clone();
    let mine = webhook(&h, json!({"url": rx.url(), "configurationId": cfg, "thresholds": [50]})).await;
    let theirs = webhook(&h, json!({"url": rx.url(), "configurationId": other, "thresholds": [50]})).await;
    let k = key(&h, json!({"name": "member", "accessKeyConfigurationId": cfg})).await;
    // gpt-4o: $10 per million output tokens: 60 000 tokens = $0.60.
    spend(&h, &k, "gpt-4o", 0, 60_000).await;
    assert_eq!(deliver(&h, &s).await, 1);
    let p: Value = serde_json::from_slice(&rx.seen()[0].2).unwrap();
    assert_eq!(p["subject"], json!({"type": "configuration", "id": cfg, "name": "team"}));
    assert_eq!((p["unit"].clone(), p["used"].clone(), p["limit"].clone()), (json!("usd"), json!(0.6), json!(1.0)));
    assert_eq!(p["window"], json!({"kind": "none", "timeZone": "UTC", "start": null, "end": null}));
    assert_eq!(deliveries(&h, mine["id"].as_str().unwrap()).await.len(), 1);
    assert!(deliveries(&h, theirs["id"].as_str().unwrap()).await.is_empty());

    // A disabled webhook queues nothing.
    let k2 = key(&h, json!({"name": "solo", "budget": {"tokens": 10}})).await;
    let off = webhook(&h, json!({"url": rx.url(), "enabled": false})).await;
    spend(&h, &k2, "gpt-4o", 10, 0).await;
    assert!(deliveries(&h, off["id"].as_str().unwrap()).await.is_empty());
}

#[tokio::test]
async fn credit_thresholds_fire_on_spend_and_a_top_up_rearms_them() {
    let h = harness();
    let rx = Receiver::start().await;
    let s = settings(50, 3);
    let hook = webhook(&h, json!({"url": rx.url(), "thresholds": [50], "events": ["credits"]})).await;
    let scoped_cfg = h.ok("POST", "/access-key-configurations", Some(json!({"name": "c"}))).await["id"].clone();
    let scoped = webhook(&h, json!({"url": rx.url(), "configurationId": scoped_cfg, "events": ["credits"]})).await;
    h.ok("POST", "/credits", Some(json!({"addUsd": 1.0}))).await;
    let k = key(&h, json!({"name": "k"})).await;
    spend(&h, &k, "gpt-4o", 0, 40_000).await; // $0.40 of $1
    assert_eq!(deliver(&h, &s).await, 0);
    spend(&h, &k, "gpt-4o", 0, 15_000).await; // $0.55
    assert_eq!(deliver(&h, &s).await, 1);
    let p: Value = serde_json::from_slice(&rx.seen()[0].2).unwrap();
    assert_eq!(p["event"], "credits.threshold");
    assert_eq!(rx.seen()[0].1["x-keygate-event"], "credits.threshold");
    assert_eq!(p["subject"]["type"], "credits");
    assert_eq!((p["used"].clone(), p["limit"].clone(), p["unit"].clone()), (json!(0.55), json!(1.0), json!("usd")));
    assert!((p["balanceUsd"].as_f64().unwrap() - 0.45).abs() < 1e-9, "{p}");
    spend(&h, &k, "gpt-4o", 0, 1_000).await;
    assert_eq!(deliver(&h, &s).await, 0, "once per grant level");
    // $1 more: $0.56 of $2 is 28 %; then past 50 % of $2 it fires again.
    h.ok("POST", "/credits", Some(json!({"addUsd": 1.0}))).await;
    spend(&h, &k, "gpt-4o", 0, 1_000).await;
    assert_eq!(deliver(&h, &s).await, 0);
    spend(&h, &k, "gpt-4o", 0, 45_000).await; // $1.02 of $2
    assert_eq!(deliver(&h, &s).await, 1);
    let p: Value = serde_json::from_slice(&rx.seen()[1].2).unwrap();
    assert_eq!((p["threshold"].clone(), p["limit"].clone()), (json!(50), json!(2.0)));
    assert_eq!(deliveries(&h, hook["id"].as_str().unwrap()).await.len(), 2);
    assert!(deliveries(&h, scoped["id"].as_str().unwrap()).await.is_empty(), "credits are store-wide");
}

// ------------------------------------------------------------ key expiry

#[tokio::test]
async fn a_key_nearing_expiry_is_announced_once_per_key_and_expiry() {
    let h = harness();
    let rx = Receiver::start().await;
    let s = settings(50, 3);
    let hook = webhook(&h, json!({"url": rx.url(), "events": ["key_expiry"], "expiryWarningDays": 2})).await;
    let hook = hook["id"].as_str().unwrap().to_string();
    let cfg = h.ok("POST", "/access-key-configurations", Some(json!({"name": "c"}))).await["id"].clone();
    let scoped = webhook(&h, json!({"url": rx.url(), "events": ["key_expiry"], "configurationId": cfg})).await;
    // One clock reading: the payload is compared with the expiry sent, not a recomputed one.
    let now = now_secs();
    let in_days = |d: i64| rfc3339_secs(now + d * 86_400);
    let soon = key(&h, json!({"name": "soon", "expiresAt": in_days(1)})).await;
    key(&h, json!({"name": "later", "expiresAt": in_days(5)})).await;
    key(&h, json!({"name": "off", "expiresAt": in_days(1), "disabled": true})).await;
    key(&h, json!({"name": "never"})).await;
    let member = key(&h, json!({"name": "member", "accessKeyConfigurationId": cfg, "expiresAt": in_days(6)})).await;

    assert_eq!(sweep(&h), 2, "soon (store-wide, 2 days) and member (scoped, 7 days)");
    assert_eq!(sweep(&h), 0, "once per key and expiry");
    assert_eq!(deliver(&h, &s).await, 2);
    let d = deliveries(&h, &hook).await;
    assert_eq!(d.len(), 1);
    let p = &d[0]["payload"];
    assert_eq!(p["event"], "key.expiry");
    assert_eq!(p["subject"], json!({"type": "access_key", "id": soon, "name": "soon"}));
    assert_eq!(p["expiresAt"], json!(in_days(1)));
    assert_eq!((p["threshold"].clone(), p["window"].clone()), (Value::Null, Value::Null));
    assert_eq!(p["expiryWarningDays"], 2);
    let d = deliveries(&h, scoped["id"].as_str().unwrap()).await;
    assert_eq!(d[0]["payload"]["subject"]["id"], json!(member));
    let (_, headers, body) = &rx.seen()[0];
    assert_eq!(headers["x-keygate-event"], "key.expiry");
    assert!(body.len() > 10);

    // A new expiry is a new announcement.
    h.ok(
        "PATCH",
        &format!("/access-keys/{soon}"),
        Some(json!({"expiresAt": rfc3339_secs(now_secs() + 86_400 + 3600)})),
    )
    .await;
    assert_eq!(sweep(&h), 1);
}

// ------------------------------------------------------------ delivery

#[tokio::test]
async fn failed_attempts_are_retried_with_backoff_recorded_then_delivered_or_failed() {
    let h = harness();
    let rx = Receiver::start().await;
    let s = settings(100, 3);
    let worker = tokio::spawn(webhooks::worker(h.state.clone(), s));

    // 500, 503, then 200: delivered at the third attempt.
    let hook = webhook(&h, json!({"url": rx.url(), "secret": SECRET, "thresholds": [100], "events": ["budget"]})).await;
    let hook = hook["id"].as_str().unwrap().to_string();
    rx.answer(&[500, 503]);
    let k = key(&h, json!({"name": "a", "budget": {"tokens": 10}})).await;
    spend(&h, &k, "gpt-4o", 10, 0).await;
    let d = wait_deliveries(&h, &hook, |d| d.len() == 1 && d[0]["status"] != "pending").await;
    let x = &d[0];
    assert_eq!(
        (x["status"].clone(), x["attempts"].clone(), x["lastStatus"].clone()),
        (json!("delivered"), json!(3), json!(200))
    );
    assert_eq!(x["lastError"], Value::Null);
    let log = x["attemptLog"].as_array().unwrap();
    let statuses: Vec<Value> = log.iter().map(|a| a["status"].clone()).collect();
    assert_eq!(statuses, vec![json!(500), json!(503), json!(200)]);
    assert_eq!((log[0]["error"].clone(), log[1]["error"].clone()), (json!("HTTP 500"), json!("HTTP 503")));
    let at = |i: usize| keygate_store::ids::parse_rfc3339(log[i]["at"].as_str().unwrap()).unwrap();
    let ms = |i: usize| {
        let t = log[i]["at"].as_str().unwrap();
        at(i) * 1000 + t[20..23].parse::<i64>().unwrap()
    };
    assert!(ms(1) - ms(0) >= 100, "the first retry waits the base: {log:?}");
    assert!(ms(2) - ms(1) >= 200, "the second twice that: {log:?}");
    let seen = rx.seen();
    assert_eq!(seen.len(), 3);
    let ids: HashSet<String> = seen.iter().map(|(_, h, _)| h["x-keygate-delivery"].to_str().unwrap().into()).collect();
    assert_eq!(ids.len(), 1, "every attempt is the same delivery");
    assert!(
        seen.iter().all(|(_, h, b)| verify(SECRET, h, b).is_ok() && b == &seen[0].2),
        "same bytes, signed each time"
    );

    // Always 500: failed after the last attempt, nothing pending.
    rx.answer(&[500, 500, 500]);
    let k = key(&h, json!({"name": "b", "budget": {"tokens": 10}})).await;
    spend(&h, &k, "gpt-4o", 10, 0).await;
    let d = wait_deliveries(&h, &hook, |d| d.len() == 2 && d[0]["status"] != "pending").await;
    assert_eq!((d[0]["status"].clone(), d[0]["attempts"].clone()), (json!("failed"), json!(3)));
    assert_eq!((d[0]["lastStatus"].clone(), d[0]["lastError"].clone()), (json!(500), json!("HTTP 500")));
    assert_eq!((d[0]["nextAttemptAt"].clone(), d[0]["deliveredAt"].clone()), (Value::Null, Value::Null));

    // A redirect is not followed: the attempt fails, the target never hears.
    rx.answer(&[302, 302, 302]);
    let k = key(&h, json!({"name": "c", "budget": {"tokens": 10}})).await;
    spend(&h, &k, "gpt-4o", 10, 0).await;
    let d = wait_deliveries(&h, &hook, |d| d.len() == 3 && d[0]["status"] != "pending").await;
    assert_eq!((d[0]["status"].clone(), d[0]["lastStatus"].clone()), (json!("failed"), json!(302)));
    assert!(d[0]["lastError"].as_str().unwrap().contains("redirects are not followed"), "{}", d[0]);
    assert!(rx.seen().iter().all(|(p, _, _)| p == "/hook"), "never /elsewhere");

    // Nobody listening: the error says so, no status; no secret anywhere.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let dead = webhook(&h, json!({"url": format!("http://{closed}/h"), "secret": SECRET, "thresholds": [100]})).await;
    let dead = dead["id"].as_str().unwrap().to_string();
    let k = key(&h, json!({"name": "d", "budget": {"tokens": 10}})).await;
    spend(&h, &k, "gpt-4o", 10, 0).await;
    let d = wait_deliveries(&h, &dead, |d| d.len() == 1 && d[0]["status"] != "pending").await;
    assert_eq!((d[0]["status"].clone(), d[0]["lastStatus"].clone()), (json!("failed"), Value::Null));
    assert!(!d[0]["lastError"].as_str().unwrap().is_empty());
    assert!(!json!(d).to_string().contains(SECRET));
    worker.abort();
}

#[tokio::test]
async fn a_disabled_webhook_holds_its_pending_deliveries_until_enabled() {
    let h = harness();
    let rx = Receiver::start().await;
    let s = settings(50, 3);
    let hook = webhook(&h, json!({"url": rx.url(), "thresholds": [100]})).await;
    let hook = hook["id"].as_str().unwrap().to_string();
    let k = key(&h, json!({"name": "a", "budget": {"tokens": 10}})).await;
    spend(&h, &k, "gpt-4o", 10, 0).await;
    h.ok("PATCH", &format!("/alert-webhooks/{hook}"), Some(json!({"enabled": false}))).await;
    assert_eq!(next_due(&h), None);
    assert_eq!(deliver(&h, &s).await, 0);
    h.ok("PATCH", &format!("/alert-webhooks/{hook}"), Some(json!({"enabled": true}))).await;
    assert!(next_due(&h).is_some());
    assert_eq!(deliver(&h, &s).await, 1);
    assert_eq!(deliveries(&h, &hook).await[0]["status"], "delivered");
}

// ------------------------------------------------------------ two stores

/// A second store on the test's database (a replica).
fn replica(h: &H) -> Arc<dyn Store> {
    let backend = match &h.pg {
        Some(db) => Backend::Postgres(db.url.clone().into()),
        None => Backend::Sqlite(h.db_path()),
    };
    testdb::off_runtime(|| backend.open(Cipher::new(&[7u8; 32]), Options::default()).unwrap())
}

fn record(req: &str, key: &str, rsv: &str, input: u64) -> UsageRecord {
    serde_json::from_value(json!({"requestId": req, "accessKeyId": key, "provider": "openai", "model": "gpt-4o",
        "attempt": 1, "finalAttempt": true, "status": 200, "streaming": false, "inputTokens": input,
        "outputTokens": 0, "startedMs": now_ms(), "endedMs": now_ms(), "reservationId": rsv}))
    .unwrap()
}

/// Runs `f` on both stores at once (plain threads, released together).
fn at_once<T: Send>(stores: [&Arc<dyn Store>; 2], f: impl Fn(usize, &dyn Store) -> T + Sync) -> Vec<T> {
    let barrier = Barrier::new(2);
    std::thread::scope(|sc| {
        let handles: Vec<_> = stores
            .iter()
            .enumerate()
            .map(|(i, st)| {
                let (barrier, f) = (&barrier, &f);
                sc.spawn(move || {
                    barrier.wait();
                    f(i, st.as_ref())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

#[tokio::test]
async fn two_stores_settling_past_a_threshold_at_once_fire_once() {
    let h = harness();
    let other = replica(&h);
    let mine = h.state.store.clone();
    let hook = webhook(&h, json!({"url": "http://127.0.0.1:9/h", "thresholds": [50], "events": ["budget"]})).await;
    let hook = hook["id"].as_str().unwrap().to_string();
    for round in 0..5 {
        // Each settlement alone crosses 50 %: both see it, one may send it.
        let k = key(&h, json!({"name": format!("k{round}"), "budget": {"tokens": 100}})).await;
        let mut rsv = Vec::new();
        for r in 0..2 {
            let (_, v) = send(
                &h.gw,
                "POST",
                "/v1/reserve",
                Some(GATEWAY),
                Some(
                    json!({"requestId": format!("r{round}-{r}"), "accessKeyId": k, "provider": "openai",
                            "inputTokens": 1, "outputTokens": 1})
                    .to_string(),
                ),
            )
            .await;
            rsv.push(v["reservationId"].as_str().unwrap().to_string());
        }
        let stored = at_once([&mine, &other], |i, st| {
            st.ingest_usage(&[record(&format!("r{round}-{i}"), &k, &rsv[i], 60)]).unwrap()
        });
        assert_eq!(stored, vec![1, 1]);
        let used = h.ok("GET", &format!("/access-keys/{k}"), None).await["budgetUsage"]["tokens"].clone();
        assert_eq!(used, 120, "both settled");
    }
    assert_eq!(deliveries(&h, &hook).await.len(), 5, "one alert per key, never two");
    testdb::off_runtime(move || drop(other));
}

#[tokio::test]
async fn two_stores_sweeping_at_once_announce_each_expiry_once_and_claim_each_delivery_once() {
    let h = harness();
    let other = replica(&h);
    let mine = h.state.store.clone();
    let hook = webhook(&h, json!({"url": "http://127.0.0.1:9/h", "events": ["key_expiry"]})).await;
    let hook = hook["id"].as_str().unwrap().to_string();
    let mut total = 0;
    for round in 0..4 {
        for i in 0..5 {
            key(&h, json!({"name": format!("k{round}-{i}"), "expiresAt": rfc3339_secs(now_secs() + 3600)})).await;
        }
        let queued = at_once([&mine, &other], |_, st| st.sweep_alerts().unwrap());
        assert_eq!(queued.iter().sum::<usize>(), 5, "{queued:?}");
        total += 5;
    }
    assert_eq!(deliveries(&h, &hook).await.len(), total);

    // Both claim until nothing is left: every delivery once, by one of them.
    let claimed = at_once([&mine, &other], |_, st| {
        let mut ids = Vec::new();
        loop {
            let batch = st.claim_alert_deliveries(60_000, 3).unwrap();
            if batch.is_empty() {
                break;
            }
            ids.extend(batch.into_iter().map(|d| d.id));
        }
        ids
    });
    let all: Vec<&String> = claimed.iter().flatten().collect();
    let unique: HashSet<&String> = all.iter().copied().collect();
    assert_eq!((all.len(), unique.len()), (total, total), "{claimed:?}");
    // Claimed: not due again until the lease ends.
    assert!(testdb::off_runtime(|| mine.claim_alert_deliveries(60_000, 100).unwrap()).is_empty());
    assert!(next_due(&h).unwrap() > now_ms() + 50_000);
    testdb::off_runtime(move || drop(other));
}

#[tokio::test]
async fn openapi_describes_every_alert_field_served() {
    let doc: Value = serde_json::from_str(keygate_store::api::OPENAPI_JSON).unwrap();
    let props = |name: &str| {
        let mut keys: Vec<String> =
            doc["components"]["schemas"][name]["properties"].as_object().unwrap().keys().cloned().collect();
        keys.sort();
        keys
    };
    let keys = |v: &Value| {
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    let h = harness();
    let rx = Receiver::start().await;
    let hook = webhook(&h, json!({"url": rx.url(), "thresholds": [100]})).await;
    let id = hook["id"].as_str().unwrap();
    assert_eq!(keys(&h.ok("GET", &format!("/alert-webhooks/{id}"), None).await), props("AlertWebhook"));
    let k = key(&h, json!({"name": "k", "budget": {"tokens": 10}})).await;
    spend(&h, &k, "gpt-4o", 10, 0).await;
    assert_eq!(deliver(&h, &settings(50, 3)).await, 1);
    let d = &deliveries(&h, id).await[0];
    assert_eq!(keys(d), props("AlertDelivery"));
    assert_eq!(keys(&d["attemptLog"][0]), props("AlertAttempt"));
    // The payload: every field it carries is described.
    let described = props("AlertPayload");
    assert!(keys(&d["payload"]).iter().all(|k| described.contains(k)), "{}", d["payload"]);
    for body in ["CreateAlertWebhook", "PatchAlertWebhook"] {
        let t = &doc["components"]["schemas"][body]["properties"]["thresholds"]["items"];
        assert_eq!((t["minimum"].clone(), t["maximum"].clone()), (json!(1), json!(100)), "{body}");
    }
}
