//! Budgets, reservations, usage records, credits, prices and metrics.
// Helpers outside #[test] functions unwrap too: these are tests.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use axum::http::StatusCode;
use common::*;
use keygate_proto::token::digest;
use serde_json::{json, Value};

async fn post_gw(h: &H, uri: &str, body: Value) -> (StatusCode, Value) {
    send(&h.gw, "POST", uri, Some(GATEWAY), Some(body.to_string())).await
}

async fn key(h: &H, body: Value) -> (String, String) {
    let k = h.ok("POST", "/access-keys", Some(body)).await;
    (k["id"].as_str().unwrap().to_string(), k["token"].as_str().unwrap().to_string())
}

async fn reserve(h: &H, req: &str, key: &str, model: Option<&str>, input: u64, output: u64) -> Value {
    let (s, v) = post_gw(
        h,
        "/v1/reserve",
        json!({"requestId": req, "accessKeyId": key, "provider": "openai", "model": model,
               "inputTokens": input, "outputTokens": output}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v
}

fn rec(req: &str, key: &str, attempt: u32, model: Option<&str>, input: u64, output: u64, rsv: Option<&str>) -> Value {
    json!({"requestId": req, "accessKeyId": key, "provider": "openai", "model": model, "attempt": attempt,
           "finalAttempt": rsv.is_some(), "status": 200, "streaming": false, "inputTokens": input,
           "outputTokens": output, "startedMs": 1_700_000_000_000u64, "endedMs": 1_700_000_001_000u64,
           "reservationId": rsv})
}

async fn usage(h: &H, records: Vec<Value>) -> Value {
    let (s, v) = post_gw(h, "/v1/usage", json!({ "records": records })).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v
}

async fn key_usage(h: &H, id: &str) -> Value {
    h.ok("GET", &format!("/access-keys/{id}"), None).await["budgetUsage"].clone()
}

fn approx(v: &Value, want: f64) -> bool {
    (v.as_f64().unwrap() - want).abs() < 1e-9
}

#[tokio::test]
async fn key_budget_refuses_what_it_cannot_cover_and_a_refusal_holds_nothing() {
    let h = harness();
    let (id, _) = key(&h, json!({"name": "k", "budget": {"tokens": 1000}})).await;
    let k = h.ok("GET", &format!("/access-keys/{id}"), None).await;
    assert_eq!(k["budget"], json!({"tokens": 1000, "window": "none"}));
    assert_eq!(k["budgetUsage"]["windowStart"], Value::Null);

    let ok = reserve(&h, "r1", &id, Some("gpt-4o"), 300, 200).await;
    assert_eq!(ok["ok"], true, "{ok}");
    assert!(ok["reservationId"].as_str().unwrap().starts_with("rsv_"));
    assert_eq!(key_usage(&h, &id).await["reservedTokens"], 500);

    let no = reserve(&h, "r2", &id, Some("gpt-4o"), 400, 200).await;
    assert_eq!((no["ok"].clone(), no["refusedBy"].clone()), (json!(false), json!("key")), "{no}");
    assert!(no["message"].as_str().unwrap().contains("token budget"));
    assert_eq!(no["reservationId"], Value::Null);
    let u = key_usage(&h, &id).await;
    assert_eq!((u["reservedTokens"].clone(), u["tokens"].clone()), (json!(500), json!(0)));

    // Exactly the rest still fits.
    assert_eq!(reserve(&h, "r3", &id, None, 250, 250).await["ok"], true);
    // Unknown key.
    let v = reserve(&h, "r4", "ak_doesnotexist", None, 1, 1).await;
    assert_eq!((v["ok"].clone(), v["refusedBy"].clone()), (json!(false), json!("key")));
    let (_, stats) = send(&h.gw, "GET", "/v1/stats", None, None).await;
    assert_eq!(stats["reserves"], 4);

    // PATCH null removes the budget.
    let k = h.ok("PATCH", &format!("/access-keys/{id}"), Some(json!({"budget": null}))).await;
    assert_eq!((k["budget"].clone(), k["budgetUsage"].clone()), (Value::Null, Value::Null));
    assert_eq!(reserve(&h, "r5", &id, None, 5000, 5000).await["ok"], true);
}

#[tokio::test]
async fn configuration_budget_is_shared_by_its_keys() {
    let h = harness();
    let c = h.ok("POST", "/access-key-configurations", Some(json!({"name": "c", "budget": {"costUsd": 0.01}}))).await;
    let cid = c["id"].as_str().unwrap();
    assert_eq!(c["budget"], json!({"costUsd": 0.01, "window": "none"}));
    let (k1, _) = key(&h, json!({"name": "a", "accessKeyConfigurationId": cid})).await;
    let (k2, _) = key(&h, json!({"name": "b", "accessKeyConfigurationId": cid})).await;
    // gpt-4o: 1000 in at $2.5/M + 500 out at $10/M = $0.0075.
    assert_eq!(reserve(&h, "r1", &k1, Some("gpt-4o"), 1000, 500).await["ok"], true);
    let no = reserve(&h, "r2", &k2, Some("gpt-4o"), 1000, 500).await;
    assert_eq!(no["refusedBy"], "configuration", "{no}");
    let c = h.ok("GET", &format!("/access-key-configurations/{cid}"), None).await;
    assert!(approx(&c["budgetUsage"]["reservedCostUsd"], 0.0075), "{c}");
    // A small one still fits.
    assert_eq!(reserve(&h, "r3", &k2, Some("gpt-4o-mini"), 1000, 500).await["ok"], true);
}

#[tokio::test]
async fn credits_disabled_enabled_and_exhausted() {
    let h = harness();
    let (id, token) = key(&h, json!({"name": "k"})).await;
    assert_eq!(h.ok("GET", "/credits", None).await, json!({"enabled": false, "balanceUsd": 0.0, "reservedUsd": 0.0}));
    assert!(h.lookup_token(&token).await.get("budgeted").is_none());
    assert_eq!(reserve(&h, "r0", &id, Some("gpt-4o"), 1000, 500).await["ok"], true);

    let v0 = h.version().await;
    let c = h.ok("POST", "/credits", Some(json!({"addUsd": 0.01}))).await;
    assert_eq!(c["enabled"], true);
    assert!(approx(&c["balanceUsd"], 0.01));
    let ch = h.gw(&format!("/v1/changes?since={v0}")).await.1;
    assert_eq!(ch["all"], true, "{ch}");
    assert_eq!(h.lookup_token(&token).await["budgeted"], true);

    let ok = reserve(&h, "r1", &id, Some("gpt-4o"), 1000, 500).await;
    assert_eq!(ok["ok"], true);
    let no = reserve(&h, "r2", &id, Some("gpt-4o"), 1000, 500).await;
    assert_eq!(no["refusedBy"], "credits", "{no}");
    assert!(approx(&h.ok("GET", "/credits", None).await["reservedUsd"], 0.0075));

    // Settling spends the actual cost: 1000 in + 1000 out = $0.0125 > balance → negative.
    let rsv = ok["reservationId"].as_str().unwrap();
    usage(&h, vec![rec("r1", &id, 1, Some("gpt-4o"), 1000, 1000, Some(rsv))]).await;
    let c = h.ok("GET", "/credits", None).await;
    assert!(approx(&c["balanceUsd"], -0.0025), "{c}");
    assert!(approx(&c["reservedUsd"], 0.0));
    // At or below zero nothing passes, however small.
    assert_eq!(reserve(&h, "r3", &id, Some("gpt-4o-mini"), 1, 0).await["refusedBy"], "credits");
    // A grant fixes it; a negative grant corrects.
    h.ok("POST", "/credits", Some(json!({"addUsd": 1.0}))).await;
    let c = h.ok("POST", "/credits", Some(json!({"addUsd": -0.5}))).await;
    assert!(approx(&c["balanceUsd"], 0.4975), "{c}");
    assert_eq!(reserve(&h, "r4", &id, Some("gpt-4o-mini"), 1, 0).await["ok"], true);

    // Disabling: no longer enforced, and every cached lookup is stale.
    h.ok("POST", "/credits", Some(json!({"addUsd": -10.0}))).await;
    let v1 = h.version().await;
    let c = h.ok("PATCH", "/credits", Some(json!({"enabled": false}))).await;
    assert_eq!(c["enabled"], false);
    assert_eq!(h.gw(&format!("/v1/changes?since={v1}")).await.1["all"], true);
    assert_eq!(reserve(&h, "r5", &id, Some("gpt-4o"), 1000, 500).await["ok"], true);
    assert!(h.lookup_token(&token).await.get("budgeted").is_none());
    // A later grant does not re-enable what the admin switched off.
    assert_eq!(h.ok("POST", "/credits", Some(json!({"addUsd": 1}))).await["enabled"], false);
    for bad in [json!({}), json!({"addUsd": "1"}), json!({"addUsd": 1e12}), json!({"addUsd": 1, "x": 1})] {
        let (s, v) = h.api("POST", "/credits", Some(bad)).await;
        assert_error(s, &v, StatusCode::BAD_REQUEST, v["errorCode"].as_str().unwrap());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn concurrent_reserves_never_exceed_the_budget() {
    let h = harness();
    let (id, _) = key(&h, json!({"name": "k", "budget": {"tokens": 1000, "costUsd": 1}})).await;
    let mut tasks = Vec::new();
    for i in 0..50 {
        let gw = h.gw.clone();
        let id = id.clone();
        tasks.push(tokio::spawn(async move {
            let body = json!({"requestId": format!("r{i}"), "accessKeyId": id, "provider": "openai",
                              "model": "gpt-4o", "inputTokens": 60, "outputTokens": 40});
            send(&gw, "POST", "/v1/reserve", Some(GATEWAY), Some(body.to_string())).await.1
        }));
    }
    let mut ok = 0;
    for t in tasks {
        let v = t.await.unwrap();
        if v["ok"] == true {
            ok += 1;
        } else {
            assert_eq!(v["refusedBy"], "key", "{v}");
        }
    }
    assert_eq!(ok, 10);
    assert_eq!(key_usage(&h, &id).await["reservedTokens"], 1000);
}

#[tokio::test]
async fn usage_is_stored_once_and_settles_once() {
    let h = harness();
    let pk = h
        .ok(
            "POST",
            "/provider-keys",
            Some(json!({"providerId": "openai", "name": "p", "value": "sk-aaaaaaaaaaaaaaaaaaaa"})),
        )
        .await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (id, _) = key(&h, json!({"name": "k", "budget": {"tokens": 10000, "costUsd": 10}})).await;
    assert_eq!(h.ok("GET", &format!("/access-keys/{id}"), None).await["lastUsed"], Value::Null);
    let rsv =
        reserve(&h, "req-1", &id, Some("gpt-4o"), 1000, 1000).await["reservationId"].as_str().unwrap().to_string();
    assert_eq!(key_usage(&h, &id).await["reservedTokens"], 2000);

    let mut first = rec("req-1", &id, 1, Some("gpt-4o"), 100, 0, None);
    first["status"] = json!(502);
    first["providerKeyId"] = json!(pk);
    first["endedMs"] = json!(1_700_000_005_000u64);
    let mut last = rec("req-1", &id, 2, Some("gpt-4o"), 100, 50, Some(&rsv));
    last["cachedTokens"] = json!(1000);
    let batch = vec![first, last];
    assert_eq!(usage(&h, batch.clone()).await, json!({"accepted": 2, "inserted": 2}));
    // gpt-4o: attempt 1 = 100 in = 250 µ$; attempt 2 = 250 + 50 out 500 + 1000 cached at 1.25 = 1250 → 2000 µ$.
    let u = key_usage(&h, &id).await;
    assert_eq!(u["reservedTokens"], 0, "{u}");
    assert_eq!(u["tokens"], 100 + 150 + 1000);
    assert!(approx(&u["costUsd"], 0.00225), "{u}");
    assert!(approx(&u["reservedCostUsd"], 0.0));

    // Resending the batch (or settling again) changes nothing.
    assert_eq!(usage(&h, batch).await, json!({"accepted": 2, "inserted": 0}));
    assert_eq!(key_usage(&h, &id).await, u);
    let mut again = rec("req-1", &id, 3, Some("gpt-4o"), 0, 0, Some(&rsv));
    again["finalAttempt"] = json!(false);
    usage(&h, vec![again]).await;
    assert_eq!(key_usage(&h, &id).await, u);

    let list = h.ok("GET", "/usage", None).await;
    let items = list["usage"].as_array().unwrap();
    assert_eq!(items.len(), 3);
    let a2 = items.iter().find(|r| r["attempt"] == 2).unwrap();
    assert_eq!(a2["final"], true);
    assert_eq!(a2["requestId"], "req-1");
    assert_eq!(a2["cachedTokens"], 1000);
    assert!(approx(&a2["costUsd"], 0.002));
    assert_eq!(a2["startedAt"], "2023-11-14T22:13:20.000Z");
    assert_eq!(a2["estimated"], false, "the provider's figures");
    // lastUsed: the latest end of the key's records; the provider key's of its own.
    let k = h.ok("GET", &format!("/access-keys/{id}"), None).await;
    assert_eq!(k["lastUsed"], "2023-11-14T22:13:25.000Z");
    assert_eq!(h.ok("GET", &format!("/provider-keys/{pk}"), None).await["lastUsed"], "2023-11-14T22:13:25.000Z");
    let (_, stats) = send(&h.gw, "GET", "/v1/stats", None, None).await;
    assert_eq!(stats["usageRecords"], 3);
}

#[tokio::test]
async fn cost_comes_from_the_catalog_exact_wildcard_and_catch_all() {
    let h = harness();
    let (id, _) = key(&h, json!({"name": "k"})).await;
    let mut recs = vec![
        rec("a", &id, 1, Some("gpt-4o"), 1_000_000, 0, None),
        rec("b", &id, 1, Some("claude-sonnet-4-20250514"), 1_000_000, 1_000_000, None),
        rec("c", &id, 1, Some("no-such-model"), 1_000_000, 0, None),
        rec("d", &id, 1, None, 0, 1_000_000, None),
    ];
    recs[1]["provider"] = json!("anthropic");
    usage(&h, recs).await;
    let list = h.ok("GET", "/usage", None).await;
    let cost = |req: &str| {
        list["usage"].as_array().unwrap().iter().find(|r| r["requestId"] == req).unwrap()["costUsd"].clone()
    };
    assert!(approx(&cost("a"), 2.5));
    assert!(approx(&cost("b"), 18.0));
    assert!(approx(&cost("c"), 15.0));
    assert!(approx(&cost("d"), 75.0));
    // A new, more specific wildcard wins over the catch-all.
    h.ok("PUT", "/prices/openai/no-such*", Some(json!({"inputPerMillionUsd": 1, "outputPerMillionUsd": 2}))).await;
    usage(&h, vec![rec("e", &id, 1, Some("no-such-model"), 1_000_000, 1_000_000, None)]).await;
    let list = h.ok("GET", "/usage?limit=1", None).await;
    assert!(approx(&list["usage"][0]["costUsd"], 3.0));
}

#[tokio::test]
async fn daily_window_starts_over_and_expired_reservations_are_released() {
    let h = harness();
    let (id, _) = key(&h, json!({"name": "k", "budget": {"tokens": 1000, "window": "daily"}})).await;
    let u = key_usage(&h, &id).await;
    let start = keygate_store::ids::parse_rfc3339(u["windowStart"].as_str().unwrap()).unwrap();
    assert_eq!(start % 86400, 0);
    let rsv = reserve(&h, "r1", &id, None, 400, 400).await["reservationId"].as_str().unwrap().to_string();
    usage(&h, vec![rec("r1", &id, 1, None, 400, 400, Some(&rsv))]).await;
    assert_eq!(key_usage(&h, &id).await["tokens"], 800);
    assert_eq!(reserve(&h, "r2", &id, None, 400, 0).await["refusedBy"], "key");
    // Make that usage yesterday's.
    h.sql("UPDATE budget_state SET window_start = window_start - 86400000 WHERE scope LIKE 'key:%'");
    assert_eq!(key_usage(&h, &id).await["tokens"], 0);
    let r3 = reserve(&h, "r3", &id, None, 400, 400).await;
    assert_eq!(r3["ok"], true);

    // A reservation never settled is released after its expiry (by the next reserve).
    assert_eq!(reserve(&h, "r4", &id, None, 400, 0).await["refusedBy"], "key");
    h.sql("UPDATE reservations SET expires_ms = 0");
    assert_eq!(reserve(&h, "r5", &id, None, 400, 400).await["ok"], true);
    assert_eq!(key_usage(&h, &id).await["reservedTokens"], 800);
    // Its late usage still counts, once, without releasing twice.
    let rsv3 = r3["reservationId"].as_str().unwrap();
    usage(&h, vec![rec("r3", &id, 1, None, 10, 10, Some(rsv3))]).await;
    let u = key_usage(&h, &id).await;
    assert_eq!((u["tokens"].clone(), u["reservedTokens"].clone()), (json!(20), json!(800)));
}

#[tokio::test]
async fn usage_filters_paging_and_summary() {
    let h = harness();
    let (k1, _) = key(&h, json!({"name": "a"})).await;
    let (k2, _) = key(&h, json!({"name": "b"})).await;
    let day = 86_400_000u64;
    let t0 = 1_700_006_400_000u64; // 2023-11-15T00:00:00Z
    let mut recs = Vec::new();
    for i in 0..5u64 {
        let mut r = rec(&format!("q{i}"), if i < 3 { &k1 } else { &k2 }, 1, Some("gpt-4o-mini"), 10, 5, None);
        r["finalAttempt"] = json!(true);
        r["startedMs"] = json!(t0 + i * day / 2);
        r["endedMs"] = json!(t0 + i * day / 2 + 1000);
        if i == 4 {
            r["provider"] = json!("anthropic");
            r["model"] = json!("claude-haiku-4-5");
        }
        recs.push(r);
    }
    let mut retry = rec("q0", &k1, 2, Some("gpt-4o-mini"), 10, 5, None);
    retry["startedMs"] = json!(t0);
    recs.push(retry);
    usage(&h, recs).await;

    let p1 = h.ok("GET", &format!("/usage?limit=2&accessKeyId={k1}"), None).await;
    assert_eq!(p1["usage"].as_array().unwrap().len(), 2);
    assert_eq!(p1["uri"], "/usage");
    let next = p1["nextPageUri"].as_str().unwrap();
    assert!(next.contains(&format!("accessKeyId={k1}")), "{next}");
    let p2 = h.ok("GET", next, None).await;
    assert_eq!(p2["usage"].as_array().unwrap().len(), 2);
    assert_eq!(p2["nextPageUri"], Value::Null);
    assert!(p1["usage"][1]["id"].as_str().unwrap() > p2["usage"][0]["id"].as_str().unwrap());

    let from = h.ok("GET", "/usage?from=2023-11-16T00:00:00Z", None).await;
    assert_eq!(from["usage"].as_array().unwrap().len(), 3);
    let window = h.ok("GET", "/usage?from=2023-11-15T00:00:00Z&to=2023-11-16T00:00:00Z&provider=openai", None).await;
    assert_eq!(window["usage"].as_array().unwrap().len(), 3);
    let m = h.ok("GET", "/usage?model=claude-haiku-4-5", None).await;
    assert_eq!(m["usage"][0]["accessKeyId"], k2.as_str());
    for bad in ["/usage?from=yesterday", "/usage?limit=0", "/usage?bogus=1", "/usage/summary?groupBy=week"] {
        let (s, v) = h.api("GET", bad, None).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}: {v}");
    }

    let s = h.ok("GET", "/usage/summary?groupBy=key", None).await;
    assert_eq!(s["groupBy"], "key");
    let row = |s: &Value, g: &str| s["rows"].as_array().unwrap().iter().find(|r| r["group"] == g).unwrap().clone();
    let r1 = row(&s, &k1);
    assert_eq!(
        (r1["requests"].clone(), r1["attempts"].clone(), r1["inputTokens"].clone()),
        (json!(3), json!(4), json!(40))
    );
    let s = h.ok("GET", "/usage/summary?groupBy=provider", None).await;
    assert_eq!(row(&s, "anthropic")["requests"], 1);
    assert_eq!(row(&s, "openai")["attempts"], 5);
    let s = h.ok("GET", "/usage/summary?groupBy=model", None).await;
    assert_eq!(row(&s, "openai/gpt-4o-mini")["outputTokens"], 25);
    let s = h.ok("GET", "/usage/summary?groupBy=day", None).await;
    let days: Vec<&str> = s["rows"].as_array().unwrap().iter().map(|r| r["group"].as_str().unwrap()).collect();
    assert_eq!(days, ["2023-11-15", "2023-11-16", "2023-11-17"]);
    assert_eq!(row(&s, "2023-11-15")["attempts"], 3);
    let s = h.ok("GET", &format!("/usage/summary?groupBy=day&accessKeyId={k2}"), None).await;
    assert_eq!(s["rows"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn usage_batches_are_bounded() {
    let h = harness();
    let (id, _) = key(&h, json!({"name": "k"})).await;
    let many: Vec<Value> = (0..1001).map(|i| rec(&format!("r{i}"), &id, 1, None, 1, 1, None)).collect();
    let (s, v) = post_gw(&h, "/v1/usage", json!({ "records": many })).await;
    assert_error(s, &v, StatusCode::BAD_REQUEST, "invalid_field");
    // Larger than the management API's 64 KiB is fine here.
    let big: Vec<Value> = (0..1000).map(|i| rec(&format!("r{i}"), &id, 1, None, 1, 1, None)).collect();
    let body = json!({ "records": big }).to_string();
    assert!(body.len() > 64 * 1024);
    let (s, v) = send(&h.gw, "POST", "/v1/usage", Some(GATEWAY), Some(body)).await;
    assert_eq!((s, v["inserted"].clone()), (StatusCode::OK, json!(1000)));
    let (s, _) = send(&h.gw, "POST", "/v1/usage", None, Some("{\"records\":[]}".into())).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _) = send(&h.api, "POST", "/v1/usage", Some(ADMIN), Some("{\"records\":[]}".into())).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn price_catalog_crud() {
    let h = harness();
    let list = h.ok("GET", "/prices", None).await;
    let prices = list["prices"].as_array().unwrap();
    let find = |p: &str, m: &str| prices.iter().find(|e| e["provider"] == p && e["model"] == m).cloned();
    let gpt4o = find("openai", "gpt-4o").unwrap();
    assert!(approx(&gpt4o["inputPerMillionUsd"], 2.5) && approx(&gpt4o["outputPerMillionUsd"], 10.0));
    assert!(find("anthropic", "claude-opus-4*").is_some());
    assert!(approx(&find("*", "*").unwrap()["outputPerMillionUsd"], 75.0));
    assert_eq!(prices.last().unwrap()["provider"], "*");

    let p = h
        .ok(
            "PUT",
            "/prices/openai/gpt-9*",
            Some(json!({"inputPerMillionUsd": 1.5, "outputPerMillionUsd": 6, "cachedInputPerMillionUsd": 0.1})),
        )
        .await;
    assert_eq!((p["provider"].clone(), p["model"].clone()), (json!("openai"), json!("gpt-9*")));
    assert!(approx(&p["cachedInputPerMillionUsd"], 0.1));
    let p =
        h.ok("PUT", "/prices/openai/gpt-9*", Some(json!({"inputPerMillionUsd": 2, "outputPerMillionUsd": 6}))).await;
    assert_eq!(p["cachedInputPerMillionUsd"], Value::Null);
    // A model with a slash, percent-encoded.
    h.ok("PUT", "/prices/openrouter/openai%2Fgpt-4o", Some(json!({"inputPerMillionUsd": 3, "outputPerMillionUsd": 9})))
        .await;
    let list = h.ok("GET", "/prices", None).await;
    assert!(list["prices"].as_array().unwrap().iter().any(|e| e["model"] == "openai/gpt-4o"));
    let (s, _) = h.api("DELETE", "/prices/openai/gpt-9*", None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, v) = h.api("DELETE", "/prices/openai/gpt-9*", None).await;
    assert_error(s, &v, StatusCode::NOT_FOUND, "not_found");
    let (s, v) = h.api("DELETE", "/prices/*/*", None).await;
    assert_error(s, &v, StatusCode::CONFLICT, "conflict");
    h.ok("PUT", "/prices/*/*", Some(json!({"inputPerMillionUsd": 20, "outputPerMillionUsd": 80}))).await;
    let good = json!({"inputPerMillionUsd": 1, "outputPerMillionUsd": 1});
    for (uri, body) in [
        ("/prices/Open%20AI/x", good.clone()),
        ("/prices/openai/g*t", good.clone()),
        ("/prices/*/gpt-4o", good.clone()),
        ("/prices/openai/x", json!({"inputPerMillionUsd": -1, "outputPerMillionUsd": 1})),
        ("/prices/openai/x", json!({"inputPerMillionUsd": 1})),
        ("/prices/openai/x", json!({"inputPerMillionUsd": 1, "outputPerMillionUsd": 1, "extra": 1})),
    ] {
        let (s, v) = h.api("PUT", uri, Some(body)).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{uri}: {v}");
    }
}

#[tokio::test]
async fn rate_limits_and_budgeted_in_the_lookup_and_the_change_feed() {
    let h = harness();
    let c = h
        .ok(
            "POST",
            "/access-key-configurations",
            Some(json!({"name": "c", "rateLimits": {"requestsPerMinute": 60, "tokensPerMinute": 100000}})),
        )
        .await;
    let cid = c["id"].as_str().unwrap().to_string();
    assert_eq!(c["rateLimits"], json!({"requestsPerMinute": 60, "tokensPerMinute": 100000}));
    assert_eq!(c["budget"], Value::Null);
    let (kid, token) = key(&h, json!({"name": "k", "accessKeyConfigurationId": cid})).await;
    let (_, other_token) = key(&h, json!({"name": "other"})).await;
    let d = h.lookup_token(&token).await;
    assert_eq!(d["limits"], json!({"requestsPerMinute": 60, "tokensPerMinute": 100000}));
    assert!(d.get("budgeted").is_none());
    assert!(h.lookup_token(&other_token).await.get("limits").is_none());

    // Key budget → that key's digest in the feed, and budgeted.
    let v0 = h.version().await;
    h.ok("PATCH", &format!("/access-keys/{kid}"), Some(json!({"budget": {"costUsd": 5, "window": "monthly"}}))).await;
    let ch = h.gw(&format!("/v1/changes?since={v0}")).await.1;
    assert_eq!(ch["digests"], json!([digest(&token)]));
    assert_eq!(ch["all"], false);
    assert_eq!(h.lookup_token(&token).await["budgeted"], true);
    h.ok("PATCH", &format!("/access-keys/{kid}"), Some(json!({"budget": null}))).await;
    assert!(h.lookup_token(&token).await.get("budgeted").is_none());

    // Config budget and rate limits → digests of its keys.
    let v1 = h.version().await;
    let c = h
        .ok(
            "PATCH",
            &format!("/access-key-configurations/{cid}"),
            Some(json!({"rateLimits": {"requestsPerMinute": 5}, "budget": {"tokens": 10, "window": "daily"}})),
        )
        .await;
    assert_eq!(c["budgetUsage"]["tokens"], 0);
    assert!(c["budgetUsage"]["windowStart"].as_str().unwrap().ends_with("T00:00:00.000Z"));
    let ch = h.gw(&format!("/v1/changes?since={v1}")).await.1;
    assert_eq!(ch["digests"], json!([digest(&token)]));
    let d = h.lookup_token(&token).await;
    assert_eq!((d["limits"].clone(), d["budgeted"].clone()), (json!({"requestsPerMinute": 5}), json!(true)));
    let c = h.ok("PATCH", &format!("/access-key-configurations/{cid}"), Some(json!({"rateLimits": null}))).await;
    assert_eq!(c["rateLimits"], Value::Null);
    assert_eq!(c["budget"]["tokens"], 10);
    assert!(h.lookup_token(&token).await.get("limits").is_none());

    for body in [
        json!({"rateLimits": {"requestsPerMinute": 0}}),
        json!({"rateLimits": {"requestsPerMinute": 1_000_000_001u64}}),
        json!({"rateLimits": {"rpm": 1}}),
        json!({"budget": {}}),
        json!({"budget": {"window": "daily"}}),
        json!({"budget": {"tokens": 1, "window": "hourly"}}),
        json!({"budget": {"tokens": 1, "window": "daily", "timeZone": "Europe/Berln"}}),
        json!({"budget": {"costUsd": -1}}),
    ] {
        let (s, v) = h.api("PATCH", &format!("/access-key-configurations/{cid}"), Some(body.clone())).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}: {v}");
        if body.get("budget").is_some() {
            let (s, _) = h.api("PATCH", &format!("/access-keys/{kid}"), Some(body.clone())).await;
            assert_eq!(s, StatusCode::BAD_REQUEST, "{body}");
        }
    }
}

#[tokio::test]
async fn metrics_are_prometheus_text_without_secrets() {
    let h = harness();
    let (id, token) = key(&h, json!({"name": "k"})).await;
    h.lookup_token(&token).await;
    reserve(&h, "r1", &id, None, 1, 1).await;
    reserve(&h, "r2", "ak_nope", None, 1, 1).await;
    usage(&h, vec![rec("r1", &id, 1, None, 1, 1, None)]).await;
    let req = axum::http::Request::builder().uri("/metrics").body(axum::body::Body::empty()).unwrap();
    let resp = tower::ServiceExt::oneshot(h.api.clone(), req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("text/plain"));
    let body = http_body_util::BodyExt::collect(resp.into_body()).await.unwrap().to_bytes();
    let text = String::from_utf8(body.to_vec()).unwrap();
    let mut samples = std::collections::HashMap::new();
    for line in text.lines().filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line}"));
        value.parse::<f64>().unwrap_or_else(|_| panic!("{line}"));
        let name_end = series.find('{').unwrap_or(series.len());
        let name = &series[..name_end];
        assert!(name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'), "{line}");
        if name_end < series.len() {
            let labels = series[name_end..].strip_prefix('{').and_then(|l| l.strip_suffix('}')).unwrap();
            for pair in labels.split("\",") {
                let (k, v) = pair.split_once("=\"").unwrap_or_else(|| panic!("{line}"));
                assert!(k.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'), "{line}");
                assert!(!v.contains(' '), "{line}");
            }
        }
        samples.insert(series.to_string(), value.to_string());
    }
    assert_eq!(samples["keygate_store_lookups_total"], "1");
    assert_eq!(samples["keygate_store_reserves_total{outcome=\"ok\"}"], "1");
    assert_eq!(samples["keygate_store_reserves_total{outcome=\"refused_key\"}"], "1");
    assert_eq!(samples["keygate_store_usage_records_total"], "1");
    assert_eq!(samples["keygate_store_access_keys"], "1");
    assert_eq!(samples["keygate_store_version"], h.version().await.to_string());
    assert_eq!(
        samples["keygate_store_http_requests_total{listener=\"gateway\",route=\"/v1/lookup/{digest}\",status=\"200\"}"],
        "1"
    );
    assert!(samples.contains_key(
        "keygate_store_http_requests_total{listener=\"management\",route=\"/access-keys\",status=\"201\"}"
    ));
    for secret in [token.as_str(), &digest(&token), ADMIN, GATEWAY] {
        assert!(!text.contains(secret));
    }
}

/// A database of the first schema, from before budgets and before versioned
/// migrations (SQLite only: the PostgreSQL schema starts versioned).
#[tokio::test]
async fn a_database_from_before_budgets_is_migrated() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keygate.db");
    let cipher = || keygate_store::crypto::Cipher::new(&[7u8; 32]);
    {
        use keygate_store::storage::Store;
        let store = keygate_store::storage::SqliteStore::open(&path, cipher()).unwrap();
        store.ping().unwrap();
    }
    // Back to the first schema: no billing tables, no new columns, no seeded
    // prices, no record of migrations.
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch(
        "DROP TABLE budget_state; DROP TABLE reservations; DROP TABLE usage; DROP TABLE prices;
         ALTER TABLE configs DROP COLUMN rate_limits_json; ALTER TABLE configs DROP COLUMN budget_json;
         ALTER TABLE configs DROP COLUMN request_limits_json;
         ALTER TABLE access_keys DROP COLUMN budget_json; ALTER TABLE access_keys DROP COLUMN last_used_ms;
         ALTER TABLE access_keys DROP COLUMN max_concurrent_requests;
         ALTER TABLE provider_keys DROP COLUMN last_used_ms;
         DROP TABLE api_keys; DROP TABLE audit_log;
         DROP TABLE alert_attempts; DROP TABLE alert_deliveries; DROP TABLE alert_fired; DROP TABLE alert_webhooks;
         DROP TABLE console_sessions;
         DROP TABLE schema_migrations;
         DELETE FROM meta WHERE key LIKE 'credits%' OR key = 'prices_seeded';",
    )
    .unwrap();
    drop(conn);
    let store = keygate_store::storage::SqliteStore::open(&path, cipher()).unwrap();
    let h = H::over(std::sync::Arc::new(store), dir, None);
    let (id, _) = key(&h, json!({"name": "k", "budget": {"tokens": 10}})).await;
    assert_eq!(reserve(&h, "r", &id, Some("gpt-4o"), 1, 1).await["ok"], true);
    assert!(h.ok("GET", "/prices", None).await["prices"].as_array().unwrap().len() > 10);
    // It is marked as schema version 1 (and takes the later ones), and
    // nothing is left to apply.
    let conn = rusqlite::Connection::open(h.db_path()).unwrap();
    let versions: Vec<i64> = conn
        .prepare("SELECT version FROM schema_migrations")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(versions, vec![1, 2, 3, 4, 5, 6, 7, 8, 9]);
    assert!(keygate_store::storage::Backend::Sqlite(h.db_path()).migrate().unwrap().is_empty());
}

// ------------------------------------------------- budget windows in time zones

const HOUR: i64 = 3_600_000;
const DAY: i64 = 24 * HOUR;

/// `windowStart` and `resetsAt` of a budget usage, unix ms.
fn window_of(u: &Value) -> (i64, i64) {
    let ms = |f: &str| {
        keygate_store::ids::parse_rfc3339(u[f].as_str().unwrap_or_else(|| panic!("{f}: {u}"))).unwrap() * 1000
    };
    (ms("windowStart"), ms("resetsAt"))
}

/// Day of the week of a unix ms in UTC, 0 = Sunday.
fn utc_weekday(ms: i64) -> i64 {
    (ms.div_euclid(DAY) + 4).rem_euclid(7)
}

#[tokio::test]
async fn a_weekly_budget_in_berlin_starts_on_monday_at_local_midnight_and_says_when_it_resets() {
    let h = harness();
    let budget = json!({"tokens": 100, "window": "weekly", "timeZone": "Europe/Berlin"});
    let (id, _) = key(&h, json!({"name": "k", "budget": budget})).await;
    let k = h.ok("GET", &format!("/access-keys/{id}"), None).await;
    assert_eq!(k["budget"], budget);
    let now = keygate_store::ids::now_ms();
    let (start, resets) = window_of(&k["budgetUsage"]);
    // Monday 00:00 in Berlin is Sunday 23:00 (CET) or 22:00 (CEST) in UTC.
    assert_eq!(utc_weekday(start), 0, "{k}");
    assert!([22 * HOUR, 23 * HOUR].contains(&start.rem_euclid(DAY)), "{k}");
    assert!([7 * DAY - HOUR, 7 * DAY, 7 * DAY + HOUR].contains(&(resets - start)), "{k}");
    assert!(start <= now && now < resets, "{k}");

    // Reservations count in the same row the API shows.
    let rsv = reserve(&h, "r1", &id, None, 60, 0).await;
    assert_eq!(rsv["ok"], true);
    assert_eq!(key_usage(&h, &id).await["reservedTokens"], 60);
    let refused = reserve(&h, "r2", &id, None, 41, 0).await;
    assert_eq!(refused["refusedBy"], "key", "{refused}");
    assert!(refused["message"].as_str().unwrap().starts_with("the weekly token budget"), "{refused}");
    assert_eq!(reserve(&h, "r3", &id, None, 40, 0).await["ok"], true, "exactly at the bound");
    usage(&h, vec![rec("r1", &id, 1, None, 50, 0, rsv["reservationId"].as_str())]).await;
    let u = key_usage(&h, &id).await;
    assert_eq!((u["tokens"].clone(), u["reservedTokens"].clone()), (json!(50), json!(40)));
    assert_eq!(window_of(&u), (start, resets));
    // That row is last week's once its start moves back a week.
    h.sql(&format!("UPDATE budget_state SET window_start = window_start - {} WHERE scope LIKE 'key:%'", 7 * DAY));
    let u = key_usage(&h, &id).await;
    assert_eq!((u["tokens"].clone(), u["reservedTokens"].clone()), (json!(0), json!(0)));
}

#[tokio::test]
async fn configuration_budgets_take_a_time_zone_too() {
    let h = harness();
    let c = h
        .ok(
            "POST",
            "/access-key-configurations",
            Some(json!({"name": "c", "budget": {"costUsd": 1, "window": "daily", "timeZone": "America/New_York"}})),
        )
        .await;
    let (start, resets) = window_of(&c["budgetUsage"]);
    // 00:00 in New York is 05:00 (EST) or 04:00 (EDT) UTC; a day lasts 23 to 25 hours.
    assert!([4 * HOUR, 5 * HOUR].contains(&start.rem_euclid(DAY)), "{c}");
    assert!((23 * HOUR..=25 * HOUR).contains(&(resets - start)), "{c}");
    assert_eq!(c["budget"]["timeZone"], "America/New_York");

    // Monthly in a zone half an hour off UTC and without DST.
    let cid = c["id"].as_str().unwrap();
    let c = h
        .ok(
            "PATCH",
            &format!("/access-key-configurations/{cid}"),
            Some(json!({"budget": {"tokens": 5, "window": "monthly", "timeZone": "Asia/Kolkata"}})),
        )
        .await;
    let (start, resets) = window_of(&c["budgetUsage"]);
    assert_eq!(start.rem_euclid(DAY), 18 * HOUR + 30 * 60_000, "{c}");
    assert_eq!(resets.rem_euclid(DAY), 18 * HOUR + 30 * 60_000, "{c}");
    for instant in [start, resets] {
        let local_day = keygate_store::ids::rfc3339_ms(instant + 6 * HOUR);
        assert_eq!(&local_day[8..10], "01", "{c}");
    }
    assert!((28 * DAY..=31 * DAY).contains(&(resets - start)), "{c}");
    // The same configuration's budget back in UTC, with no time zone.
    let c = h
        .ok(
            "PATCH",
            &format!("/access-key-configurations/{cid}"),
            Some(json!({"budget": {"tokens": 5, "window": "monthly"}})),
        )
        .await;
    assert!(c["budget"].get("timeZone").is_none(), "{c}");
    let (start, resets) = window_of(&c["budgetUsage"]);
    assert_eq!((start.rem_euclid(DAY), resets.rem_euclid(DAY)), (0, 0), "{c}");
}

#[tokio::test]
async fn a_budget_stored_without_a_time_zone_reads_as_utc() {
    let h = harness();
    let (id, _) =
        key(&h, json!({"name": "k", "budget": {"tokens": 10, "window": "weekly", "timeZone": "Asia/Tokyo"}})).await;
    // As written before budgets had a time zone.
    h.sql(&format!("UPDATE access_keys SET budget_json = '{{\"tokens\":10,\"window\":\"daily\"}}' WHERE id = '{id}'"));
    let k = h.ok("GET", &format!("/access-keys/{id}"), None).await;
    assert_eq!(k["budget"], json!({"tokens": 10, "window": "daily"}));
    let (start, resets) = window_of(&k["budgetUsage"]);
    assert_eq!((start.rem_euclid(DAY), resets - start), (0, DAY), "{k}");
    assert_eq!(reserve(&h, "r", &id, None, 10, 0).await["ok"], true);
    assert_eq!(key_usage(&h, &id).await["reservedTokens"], 10);
    // A window that never resets has neither.
    let k =
        h.ok("PATCH", &format!("/access-keys/{id}"), Some(json!({"budget": {"tokens": 10, "timeZone": "UTC"}}))).await;
    assert_eq!(
        (k["budgetUsage"]["windowStart"].clone(), k["budgetUsage"]["resetsAt"].clone()),
        (Value::Null, Value::Null)
    );
}

#[tokio::test]
async fn a_time_zone_outside_the_tz_database_is_refused_naming_the_field() {
    let h = harness();
    let (kid, _) = key(&h, json!({"name": "k"})).await;
    let cid = h.ok("POST", "/access-key-configurations", Some(json!({"name": "c"}))).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    for tz in [json!("Europe/Berln"), json!("europe/berlin"), json!("+01:00"), json!(""), json!(7)] {
        let budget = json!({"tokens": 1, "window": "daily", "timeZone": tz});
        for (method, uri, body) in [
            ("POST", "/access-keys".to_string(), json!({"name": "x", "budget": budget})),
            ("PATCH", format!("/access-keys/{kid}"), json!({"budget": budget})),
            ("POST", "/access-key-configurations".to_string(), json!({"name": "x", "budget": budget})),
            ("PATCH", format!("/access-key-configurations/{cid}"), json!({"budget": budget})),
        ] {
            let (s, v) = h.api(method, &uri, Some(body)).await;
            assert_error(s, &v, StatusCode::BAD_REQUEST, "invalid_field");
            assert_eq!(v["details"]["field"], "budget.timeZone", "{method} {uri} {tz}: {v}");
            if tz.is_string() {
                assert!(v["msg"].as_str().unwrap().contains("budget.timeZone"), "{v}");
            }
        }
    }
    let (_, v) = h
        .api(
            "PATCH",
            &format!("/access-keys/{kid}"),
            Some(json!({"budget": {"tokens": 1, "timeZone": "Europe/Berln"}})),
        )
        .await;
    assert_eq!(
        v["msg"],
        "budget.timeZone must be an IANA time zone name such as \"Europe/Berlin\" or \"UTC\", not \"Europe/Berln\""
    );
    let (_, v) = h
        .api(
            "PATCH",
            &format!("/access-keys/{kid}"),
            Some(json!({"budget": {"tokens": 1, "timeZone": "europe/berlin"}})),
        )
        .await;
    assert_eq!(
        v["msg"],
        "budget.timeZone must be spelled as in the tz database: \"Europe/Berlin\", not \"europe/berlin\""
    );
    // Nothing was stored.
    assert_eq!(h.ok("GET", &format!("/access-keys/{kid}"), None).await["budget"], Value::Null);
    assert_eq!(h.ok("GET", "/access-keys", None).await["accessKeys"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn openapi_describes_the_budget_fields_served() {
    let doc: Value = serde_json::from_str(keygate_store::api::OPENAPI_JSON).unwrap();
    let schema = |name: &str| doc["components"]["schemas"][name]["properties"].as_object().unwrap().clone();
    let h = harness();
    let budget = json!({"tokens": 1, "costUsd": 2, "window": "weekly", "timeZone": "Europe/Berlin"});
    let (id, _) = key(&h, json!({"name": "k", "budget": budget})).await;
    let k = h.ok("GET", &format!("/access-keys/{id}"), None).await;
    let mut served: Vec<_> = k["budget"].as_object().unwrap().keys().cloned().collect();
    let mut documented: Vec<_> = schema("Budget").keys().cloned().collect();
    served.sort();
    documented.sort();
    assert_eq!(served, documented);
    let mut served: Vec<_> = k["budgetUsage"].as_object().unwrap().keys().cloned().collect();
    let mut documented: Vec<_> = schema("BudgetUsage").keys().cloned().collect();
    served.sort();
    documented.sort();
    assert_eq!(served, documented);
    let windows = schema("Budget")["window"]["enum"].clone();
    assert_eq!(windows, json!(["daily", "weekly", "monthly", "none"]));
    for w in windows.as_array().unwrap() {
        h.ok("PATCH", &format!("/access-keys/{id}"), Some(json!({"budget": {"tokens": 1, "window": w}}))).await;
    }
}

#[tokio::test]
async fn an_estimated_record_says_so() {
    let h = harness();
    let (id, _) = key(&h, json!({"name": "k"})).await;
    let mut r = rec("req-est", &id, 1, Some("gpt-4o"), 100, 4096, None);
    r["finalAttempt"] = json!(true);
    r["estimated"] = json!(true);
    usage(&h, vec![r]).await;
    let list = h.ok("GET", &format!("/usage?accessKeyId={id}"), None).await;
    let item = &list["usage"][0];
    assert_eq!((item["estimated"].clone(), item["outputTokens"].clone()), (json!(true), json!(4096)));
}
