//! Usage retention: the store's sweep deletes usage records past
//! `KEYGATE_USAGE_RETENTION_DAYS` in batches, keeps those a reservation could
//! still charge, and never changes a budget.
// Helpers outside #[test] functions unwrap too: these are tests.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use axum::http::StatusCode;
use common::*;
use keygate_store::api::AppState;
use keygate_store::crypto::Cipher;
use keygate_store::policy::retention::Retention;
use keygate_store::serve::purge_usage;
use keygate_store::storage::Options;
use serde_json::{json, Value};

const DAY: i64 = 24 * 3_600_000;

/// The harness and an app state over the same store (to run the sweep).
fn setup() -> (H, AppState) {
    let dir = tempfile::tempdir().unwrap();
    let (backend, pg) = test_backend(&dir);
    let store = backend.open(Cipher::new(&[7u8; 32]), Options::default()).unwrap();
    let state = AppState::new(store.clone(), ADMIN, GATEWAY);
    (H::over(store, dir, pg), state)
}

async fn post_gw(h: &H, uri: &str, body: Value) -> Value {
    let (s, v) = send(&h.gw, "POST", uri, Some(GATEWAY), Some(body.to_string())).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v
}

fn rec(req: &str, key: &str, started_ms: i64, rsv: Option<&str>) -> Value {
    json!({"requestId": req, "accessKeyId": key, "provider": "openai", "model": "gpt-4o", "attempt": 1,
           "finalAttempt": true, "status": 200, "streaming": false, "inputTokens": 100, "outputTokens": 10,
           "startedMs": started_ms, "endedMs": started_ms + 1000, "reservationId": rsv})
}

/// The request ids of the stored records, sorted.
async fn stored(h: &H) -> Vec<String> {
    let v = h.ok("GET", "/usage?limit=100", None).await;
    let mut ids: Vec<String> =
        v["usage"].as_array().unwrap().iter().map(|u| u["requestId"].as_str().unwrap().to_string()).collect();
    ids.sort();
    ids
}

async fn purge(state: &AppState, now: i64, batch: usize, max_batches: usize) -> usize {
    let retention = Retention::from_days(32).unwrap().unwrap();
    purge_usage(state, retention, now, batch, max_batches).await.unwrap()
}

#[tokio::test]
async fn usage_past_retention_is_deleted_in_batches_and_budgets_do_not_change() {
    let (h, state) = setup();
    let k = h
        .ok(
            "POST",
            "/access-keys",
            Some(
                json!({"name": "k", "budget": {"tokens": 1_000_000, "window": "monthly", "timeZone": "Europe/Berlin"}}),
            ),
        )
        .await;
    let key = k["id"].as_str().unwrap().to_string();
    let now = keygate_store::ids::now_ms();

    // Two settled requests whose records carry an old start (an Envoy whose
    // clock is far behind): their reservations are fresh.
    let mut records = Vec::new();
    for req in ["skewed1", "skewed2"] {
        let r = post_gw(
            &h,
            "/v1/reserve",
            json!({"requestId": req, "accessKeyId": key, "provider": "openai", "model": "gpt-4o",
                   "inputTokens": 100, "outputTokens": 10}),
        )
        .await;
        records.push(rec(req, &key, now - 40 * DAY, r["reservationId"].as_str()));
    }
    // Records without reservations, from 50 days ago to now.
    for (req, age) in [("a50", 50), ("b45", 45), ("c40", 40), ("d33", 33), ("e31", 31), ("f1", 1), ("g0", 0)] {
        records.push(rec(req, &key, now - age * DAY, None));
    }
    assert_eq!(post_gw(&h, "/v1/usage", json!({ "records": records })).await["inserted"], 9);
    let budget = h.ok("GET", &format!("/access-keys/{key}"), None).await["budgetUsage"].clone();
    assert_eq!(budget["tokens"], 220, "{budget}");

    // One batch of two: the two oldest go, and nothing else.
    assert_eq!(purge(&state, now, 2, 1).await, 2);
    assert_eq!(stored(&h).await, ["c40", "d33", "e31", "f1", "g0", "skewed1", "skewed2"]);
    // Batches until one comes back short: what started more than 32 days ago,
    // except records a kept reservation could still charge.
    assert_eq!(purge(&state, now, 1, 100).await, 2);
    assert_eq!(stored(&h).await, ["e31", "f1", "g0", "skewed1", "skewed2"]);
    assert_eq!(purge(&state, now, 1, 100).await, 0);

    // Once the reservations are forgotten (7 days after they were made), those go too.
    h.sql(&format!("UPDATE reservations SET created_ms = created_ms - {}", 8 * DAY));
    keygate_store::api::run(&state, |s| s.sweep_reservations()).await.unwrap();
    assert_eq!(purge(&state, now, 5000, 200).await, 2);
    assert_eq!(stored(&h).await, ["e31", "f1", "g0"]);

    // A deleted record sent again is stored again, and charged nothing.
    let resent = post_gw(&h, "/v1/usage", json!({ "records": [rec("skewed1", &key, now - 40 * DAY, None)] })).await;
    assert_eq!(resent["inserted"], 1);
    let after = h.ok("GET", &format!("/access-keys/{key}"), None).await["budgetUsage"].clone();
    assert_eq!(after, budget, "deleting usage records never changes a budget");
    // Reports cover what is left.
    let summary = h.ok("GET", "/usage/summary?groupBy=key", None).await;
    assert_eq!(summary["rows"][0]["requests"], 4, "{summary}");
}

#[tokio::test]
async fn a_large_backlog_goes_in_bounded_batches() {
    let (h, state) = setup();
    let key = h.ok("POST", "/access-keys", Some(json!({"name": "k"}))).await["id"].as_str().unwrap().to_string();
    let now = keygate_store::ids::now_ms();
    let records: Vec<Value> = (0..25).map(|i| rec(&format!("r{i:02}"), &key, now - 100 * DAY + i, None)).collect();
    post_gw(&h, "/v1/usage", json!({ "records": records })).await;
    // At most 3 batches of 4 per sweep: 12, then 12, then the last one.
    assert_eq!(purge(&state, now, 4, 3).await, 12);
    assert_eq!(stored(&h).await.first().map(String::as_str), Some("r12"), "oldest first");
    assert_eq!(purge(&state, now, 4, 3).await, 12);
    assert_eq!(purge(&state, now, 4, 3).await, 1);
    assert!(stored(&h).await.is_empty());
}
