//! The gateway listener: lookup documents, the changes feed, stats.
// Helpers outside #[test] functions unwrap too: these are tests.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use axum::http::StatusCode;
use common::*;
use keygate_proto::lookup::{Changes, KeyStatus, Lookup};
use keygate_proto::token::digest;
use keygate_store::storage::Options;
use serde_json::{json, Value};

fn doc(v: Value) -> Lookup {
    serde_json::from_value(v).unwrap()
}

fn route_ids(plan: &keygate_proto::lookup::ProviderPlan) -> Vec<(Option<String>, Vec<String>)> {
    plan.routes.iter().map(|r| (r.model.clone(), r.keys.iter().map(|k| k.id.clone()).collect())).collect()
}

async fn pk(h: &H, provider: &str, value: &str, managed: bool) -> String {
    h.ok(
        "POST",
        "/provider-keys",
        Some(json!({"providerId": provider, "name": value, "value": value, "managed": managed})),
    )
    .await["id"]
        .as_str()
        .unwrap()
        .to_string()
}

async fn key(h: &H, body: Value) -> (String, String) {
    let k = h.ok("POST", "/access-keys", Some(body)).await;
    (k["id"].as_str().unwrap().to_string(), k["token"].as_str().unwrap().to_string())
}

#[tokio::test]
async fn unknown_and_malformed_digests() {
    let h = harness();
    let (s, v) = h.gw(&format!("/v1/lookup/{}", "ab".repeat(32))).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v, json!({"schema": 1, "version": 0, "status": "unknown"}));
    for bad in ["abc", &"AB".repeat(32), &"g".repeat(64), &"a".repeat(65)] {
        let (s, v) = h.gw(&format!("/v1/lookup/{bad}")).await;
        assert_error(s, &v, StatusCode::BAD_REQUEST, "invalid_field");
        assert_eq!(v["details"]["field"], "digest");
    }
    // Every call to the lookup route is counted.
    let (_, stats) = send(&h.gw, "GET", "/v1/stats", None, None).await;
    assert_eq!(stats["lookups"], 5);
    h.gw("/v1/changes?since=0").await;
    let (_, stats) = send(&h.gw, "GET", "/v1/stats", Some(GATEWAY), None).await;
    assert_eq!(stats, json!({"lookups": 5, "changes": 1, "reserves": 0, "leases": 0, "usageRecords": 0}));
}

#[tokio::test]
async fn key_without_configuration_uses_managed_keys_everywhere() {
    let h = harness();
    let m1 = pk(&h, "openai", "sk-openai-managed-1111", true).await;
    let _user = pk(&h, "openai", "sk-openai-user-22222222", false).await;
    let m2 = pk(&h, "openai", "sk-openai-managed-3333", true).await;
    let a1 = pk(&h, "anthropic", "sk-ant-managed-44444444", true).await;
    let (id, token) = key(&h, json!({"name": "k"})).await;
    let d = doc(h.lookup_token(&token).await);
    assert_eq!(d.status, KeyStatus::Active);
    assert_eq!(d.version, h.version().await);
    let info = d.key.unwrap();
    assert_eq!(info.id, id);
    assert_eq!(info.config_id, None);
    assert_eq!(info.valid_until, None);
    let access = d.access.unwrap();
    assert_eq!((&access.providers, &access.models), (&None, &None));
    let ids: Vec<&str> = d.providers.iter().map(|p| p.id.as_str()).collect();
    assert_eq!(ids, ["openai", "anthropic", "google", "groq", "deepseek", "mistral", "openrouter", "xai"]);
    let openai = &d.providers[0];
    assert_eq!(openai.base_url, "https://api.openai.com/v1");
    assert_eq!(openai.models[0], "gpt-*");
    assert_eq!(route_ids(openai), [(None, vec![m1.clone(), m2.clone()])]);
    assert_eq!(openai.routes[0].keys[0].value, "sk-openai-managed-1111");
    assert_eq!(route_ids(&d.providers[1]), [(None, vec![a1])]);
    assert_eq!(d.providers[1].auth, keygate_proto::lookup::AuthStyle::XApiKey);
    // Providers without credentials still appear, with no keys.
    assert!(d.providers[2].routes[0].keys.is_empty());
}

#[tokio::test]
async fn key_with_configuration_gets_allow_lists_and_routes() {
    let h = harness();
    let m1 = pk(&h, "openai", "sk-openai-managed-1111", true).await;
    let u1 = pk(&h, "openai", "sk-openai-user-1111111", false).await;
    let u2 = pk(&h, "openai", "sk-openai-user-2222222", false).await;
    let m2 = pk(&h, "openai", "sk-openai-managed-2222", true).await;
    let a1 = pk(&h, "anthropic", "sk-ant-user-111111111", false).await;
    let cfg = h
        .ok(
            "POST",
            "/access-key-configurations",
            Some(json!({
                "name": "team",
                "access": {"providers": {"allow": ["openai", "anthropic", "groq"]}, "models": {"allow": ["openai/gpt-4o", "openai/o3*", "anthropic/claude-*"]}},
                "router": {"rules": [
                    {"provider": "openai", "steps": [{"type": "user", "keys": [{"id": u2}, {"id": u1}]}, {"type": "managed"}]},
                    {"model": "openai/gpt-4o", "steps": [{"type": "user", "keys": [{"id": u1}, {"id": u1}]}, {"type": "managed"}, {"type": "user", "keys": [{"id": m1}]}]},
                    {"provider": "openai", "model": "openai/o3*", "steps": [{"type": "managed"}]},
                    {"provider": "anthropic", "steps": [{"type": "user", "keys": [{"id": a1}]}]}
                ]}
            })),
        )
        .await;
    let cid = cfg["id"].as_str().unwrap().to_string();
    let (_, token) =
        key(&h, json!({"name": "k", "accessKeyConfigurationId": cid, "expiresAt": "2099-01-01T00:00:00Z"})).await;
    let d = doc(h.lookup_token(&token).await);
    assert_eq!(d.status, KeyStatus::Active);
    let info = d.key.unwrap();
    assert_eq!(info.config_id.as_deref(), Some(cid.as_str()));
    assert_eq!(info.valid_until, Some(4_070_908_800));
    let access = d.access.unwrap();
    assert_eq!(access.providers.clone().unwrap(), ["openai", "anthropic", "groq"]);
    assert_eq!(access.models.clone().unwrap(), ["openai/gpt-4o", "openai/o3*", "anthropic/claude-*"]);
    // Every provider is listed; those not allowed carry no routes (no secrets).
    let ids: Vec<&str> = d.providers.iter().map(|p| p.id.as_str()).collect();
    assert_eq!(&ids[..3], ["openai", "anthropic", "google"]);
    let by_id = |id: &str| d.providers.iter().find(|p| p.id == id).unwrap();
    assert!(by_id("google").routes.is_empty() && by_id("xai").routes.is_empty());
    assert_eq!(
        route_ids(&d.providers[0]),
        [
            (Some("gpt-4o".to_string()), vec![u1.clone(), m1.clone(), m2.clone()]),
            (Some("o3*".to_string()), vec![m1.clone(), m2.clone()]),
            (None, vec![u2.clone(), u1.clone(), m1.clone(), m2.clone()]),
        ]
    );
    let values: Vec<&str> = d.providers[0].routes[2].keys.iter().map(|k| k.value.as_str()).collect();
    assert_eq!(
        values,
        ["sk-openai-user-2222222", "sk-openai-user-1111111", "sk-openai-managed-1111", "sk-openai-managed-2222"]
    );
    assert_eq!(route_ids(&d.providers[1]), [(None, vec![a1])]);
    // groq: allowed, no rule, no managed key: present with no keys.
    assert_eq!(route_ids(by_id("groq")), [(None, vec![])]);

    // Empty allow-lists: no providers at all, models deny-all.
    h.ok(
        "PATCH",
        &format!("/access-key-configurations/{cid}"),
        Some(json!({"access": {"providers": {"allow": []}, "models": {"allow": []}}})),
    )
    .await;
    let d = doc(h.lookup_token(&token).await);
    assert_eq!(d.status, KeyStatus::Active);
    let access = d.access.unwrap();
    assert_eq!(access.providers, Some(vec![]));
    assert_eq!(access.models, Some(vec![]));
    assert!(d.providers.iter().all(|p| p.routes.is_empty()), "no credentials when no provider is allowed");
    // Models-only restriction: providers dimension stays None (all providers).
    h.ok(
        "PATCH",
        &format!("/access-key-configurations/{cid}"),
        Some(json!({"access": {"models": {"allow": ["openai/gpt-4o"]}}, "router": null})),
    )
    .await;
    let d = doc(h.lookup_token(&token).await);
    assert_eq!(d.access.as_ref().unwrap().providers, None);
    assert_eq!(d.providers.len(), 8);
    assert_eq!(route_ids(&d.providers[0]), [(None, vec![m1, m2])]);
    assert_eq!(d.access.as_ref().unwrap().client_ips, None, "no list: any address");
    // Client addresses reach the filter as written.
    h.ok(
        "PATCH",
        &format!("/access-key-configurations/{cid}"),
        Some(json!({"access": {"clientIps": {"allow": ["10.0.0.0/8", "2001:db8::/32", "192.0.2.7"]}}})),
    )
    .await;
    let d = doc(h.lookup_token(&token).await);
    let ips = d.access.as_ref().unwrap().client_ips.clone();
    assert_eq!(ips, Some(vec!["10.0.0.0/8".to_string(), "2001:db8::/32".to_string(), "192.0.2.7".to_string()]));
    assert_eq!(d.request_limits, None);
    // Per-request limits too; a PATCH to null removes them.
    let limits = json!({"maxInputTokens": 1000, "maxOutputTokens": 200, "maxConcurrentRequests": 3, "attemptTimeoutMs": 5000, "totalTimeoutMs": 9000});
    let cfg = h.ok("PATCH", &format!("/access-key-configurations/{cid}"), Some(json!({"requestLimits": limits}))).await;
    assert_eq!(cfg["requestLimits"], limits);
    let d = doc(h.lookup_token(&token).await);
    let rl = d.request_limits.expect("request limits in the lookup");
    assert_eq!((rl.max_input_tokens, rl.max_output_tokens), (Some(1000), Some(200)));
    assert_eq!((rl.attempt_timeout_ms, rl.total_timeout_ms), (Some(5000), Some(9000)));
    assert_eq!(rl.max_concurrent_requests, Some(3));
    h.ok("PATCH", &format!("/access-key-configurations/{cid}"), Some(json!({"requestLimits": null}))).await;
    assert_eq!(doc(h.lookup_token(&token).await).request_limits, None);
}

/// `requestLimits` of a key's lookup and of its self-check.
async fn limits_of(h: &H, token: &str) -> (Value, Value) {
    let d = h.lookup_token(token).await;
    let (s, me) = h.gw(&format!("/v1/self/{}", digest(token))).await;
    assert_eq!(s, StatusCode::OK, "{me}");
    (d["requestLimits"].clone(), me["requestLimits"].clone())
}

#[tokio::test]
async fn a_keys_own_concurrency_cap_replaces_its_configurations() {
    let h = harness();
    let limits = json!({"maxInputTokens": 1000, "maxConcurrentRequests": 5, "totalTimeoutMs": 9000});
    let cfg = h.ok("POST", "/access-key-configurations", Some(json!({"name": "c", "requestLimits": limits}))).await;
    let cid = cfg["id"].as_str().unwrap().to_string();
    let bare = h.ok("POST", "/access-key-configurations", Some(json!({"name": "bare"}))).await;
    let bare_id = bare["id"].as_str().unwrap().to_string();
    let with_cap = |cap: u64| json!({"maxInputTokens": 1000, "maxConcurrentRequests": cap, "totalTimeoutMs": 9000});

    // Without a cap of its own, a key has its configuration's limits.
    let (inherits, t_inherits) = key(&h, json!({"name": "inherits", "accessKeyConfigurationId": cid})).await;
    assert_eq!(limits_of(&h, &t_inherits).await, (limits.clone(), limits.clone()));
    // Its own cap replaces the configuration's, tighter or looser; the
    // configuration's other limits stay; the self-check says the same.
    let (tight, t_tight) =
        key(&h, json!({"name": "tight", "accessKeyConfigurationId": cid, "maxConcurrentRequests": 1})).await;
    assert_eq!(limits_of(&h, &t_tight).await, (with_cap(1), with_cap(1)));
    let v = h.version().await;
    h.ok("PATCH", &format!("/access-keys/{inherits}"), Some(json!({"maxConcurrentRequests": 50}))).await;
    assert_eq!(limits_of(&h, &t_inherits).await, (with_cap(50), with_cap(50)));
    // Each change of a key's cap reaches the Envoys' caches through the change feed.
    let c = changes(&h, v).await;
    assert_eq!((c.version, c.all, c.digests), (v + 1, false, vec![digest(&t_inherits)]));
    // null: the configuration's again.
    h.ok("PATCH", &format!("/access-keys/{inherits}"), Some(json!({"maxConcurrentRequests": null}))).await;
    assert_eq!(changes(&h, v + 1).await.digests, [digest(&t_inherits)]);
    assert_eq!(limits_of(&h, &t_inherits).await, (limits.clone(), limits.clone()));
    // A configuration's later change keeps the key's own cap over it.
    h.ok(
        "PATCH",
        &format!("/access-key-configurations/{cid}"),
        Some(json!({"requestLimits": {"maxConcurrentRequests": 7}})),
    )
    .await;
    assert_eq!(limits_of(&h, &t_tight).await.0, json!({"maxConcurrentRequests": 1}));
    assert_eq!(limits_of(&h, &t_inherits).await.0, json!({"maxConcurrentRequests": 7}));

    // A configuration without request limits, and no configuration: the
    // key's cap makes request limits of their own.
    h.ok("PATCH", &format!("/access-keys/{tight}"), Some(json!({"accessKeyConfigurationId": bare_id}))).await;
    assert_eq!(
        limits_of(&h, &t_tight).await,
        (json!({"maxConcurrentRequests": 1}), json!({"maxConcurrentRequests": 1}))
    );
    let (_, t_alone) = key(&h, json!({"name": "alone", "maxConcurrentRequests": 3})).await;
    assert_eq!(limits_of(&h, &t_alone).await.0, json!({"maxConcurrentRequests": 3}));
    let (_, t_none) = key(&h, json!({"name": "none", "accessKeyConfigurationId": bare_id})).await;
    assert_eq!(limits_of(&h, &t_none).await, (Value::Null, Value::Null), "no limits at all");
    // The cap is the key's, not the configuration's: the configuration's
    // answer does not change.
    let cfg = h.ok("GET", &format!("/access-key-configurations/{cid}"), None).await;
    assert_eq!(cfg["requestLimits"], json!({"maxConcurrentRequests": 7}));
}

#[tokio::test]
async fn disabled_and_expired_keys() {
    let h = harness();
    let (id, token) = key(&h, json!({"name": "k", "disabled": true})).await;
    let v = h.lookup_token(&token).await;
    assert_eq!(v["status"], "disabled");
    assert_eq!(v["key"]["id"], id.as_str());
    assert!(v.get("access").is_none() && v.get("providers").is_none(), "{v}");
    h.ok("PATCH", &format!("/access-keys/{id}"), Some(json!({"disabled": false}))).await;
    assert_eq!(h.lookup_token(&token).await["status"], "active");

    let (id2, token2) = key(&h, json!({"name": "e", "expiresAt": "2099-01-01T00:00:00Z"})).await;
    h.sql(&format!("UPDATE access_keys SET expires_at = 1000 WHERE id = '{id2}'"));
    let v = h.lookup_token(&token2).await;
    assert_eq!(v["status"], "expired");
    assert_eq!(v["key"]["validUntil"], 1000);
    assert!(v.get("providers").is_none());
    // Clearing the expiry revives it.
    h.ok("PATCH", &format!("/access-keys/{id2}"), Some(json!({"expiresAt": null}))).await;
    assert_eq!(h.lookup_token(&token2).await["status"], "active");
}

#[tokio::test]
async fn rotation_with_grace_period() {
    let h = harness();
    let (id, t1) = key(&h, json!({"name": "k"})).await;
    let before = keygate_store::ids::now_secs();
    let r = h.ok("POST", &format!("/access-keys/{id}/rotate"), Some(json!({"gracePeriodSeconds": 3600}))).await;
    let t2 = r["token"].as_str().unwrap().to_string();
    assert_eq!(r["id"], id.as_str());
    assert_ne!(t1, t2);
    assert_eq!(r["keyRedacted"], keygate_proto::token::redact(&t2));
    assert!(h.ok("GET", &format!("/access-keys/{id}"), None).await.get("token").is_none());
    let old = doc(h.lookup_token(&t1).await);
    assert_eq!(old.status, KeyStatus::Active);
    let until = old.key.unwrap().valid_until.unwrap();
    assert!(until >= before + 3600 && until <= before + 3602, "{until}");
    let new = doc(h.lookup_token(&t2).await);
    assert_eq!(new.status, KeyStatus::Active);
    assert_eq!(new.key.unwrap().valid_until, None);

    // After the grace period the old token is expired; the new one works.
    h.sql(&format!("UPDATE access_keys SET prev_until = 1000 WHERE id = '{id}'"));
    let v = h.lookup_token(&t1).await;
    assert_eq!(v["status"], "expired");
    assert_eq!(v["key"]["id"], id.as_str());
    assert_eq!(h.lookup_token(&t2).await["status"], "active");

    // A second rotation replaces the earlier grace token.
    let r = h.ok("POST", &format!("/access-keys/{id}/rotate"), None).await;
    let t3 = r["token"].as_str().unwrap().to_string();
    assert_eq!(h.lookup_token(&t1).await["status"], "unknown");
    assert_eq!(h.lookup_token(&t2).await["status"], "expired", "grace 0: the old token stops at once");
    assert_eq!(h.lookup_token(&t3).await["status"], "active");

    // Expiry caps the grace deadline; disabled wins during grace.
    h.ok("POST", &format!("/access-keys/{id}/rotate"), Some(json!({"gracePeriodSeconds": 7200}))).await;
    h.ok("PATCH", &format!("/access-keys/{id}"), Some(json!({"expiresAt": "2099-01-01T00:00:00Z"}))).await;
    h.sql(&format!("UPDATE access_keys SET expires_at = {} WHERE id = '{id}'", before + 60));
    assert_eq!(doc(h.lookup_token(&t3).await).key.unwrap().valid_until, Some(before + 60));
    h.ok("PATCH", &format!("/access-keys/{id}"), Some(json!({"disabled": true}))).await;
    assert_eq!(h.lookup_token(&t3).await["status"], "disabled");

    // Deleting revokes both tokens for good.
    h.ok("DELETE", &format!("/access-keys/{id}"), None).await;
    for t in [&t1, &t2, &t3] {
        assert_eq!(h.lookup_token(t).await["status"], "unknown");
    }
}

async fn changes(h: &H, since: u64) -> Changes {
    let (s, v) = h.gw(&format!("/v1/changes?since={since}")).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    serde_json::from_value(v).unwrap()
}

#[tokio::test]
async fn changes_feed() {
    let h = harness();
    let c0 = changes(&h, 0).await;
    assert_eq!(c0, Changes { version: 0, all: false, all_at: 0, digests: vec![], digest_versions: vec![] });
    let (id1, t1) = key(&h, json!({"name": "a"})).await;
    let (_, t2) = key(&h, json!({"name": "b"})).await;
    let c = changes(&h, 0).await;
    assert_eq!(c.version, 2);
    assert!(!c.all);
    assert_eq!(c.digests, [digest(&t1), digest(&t2)]);
    assert_eq!(c.digest_versions, [1, 2], "each digest carries the version of its change");
    let v2 = c.version;
    assert_eq!(changes(&h, v2).await.digests, Vec::<String>::new());
    assert_eq!(
        changes(&h, v2 + 100).await,
        Changes { version: v2, all: false, all_at: 0, digests: vec![], digest_versions: vec![] }
    );

    // Update and rotate list the old and new digests.
    h.ok("PATCH", &format!("/access-keys/{id1}"), Some(json!({"disabled": true}))).await;
    assert_eq!(changes(&h, v2).await.digests, [digest(&t1)]);
    let v3 = v2 + 1;
    let r = h.ok("POST", &format!("/access-keys/{id1}/rotate"), Some(json!({"gracePeriodSeconds": 10}))).await;
    let t1b = r["token"].as_str().unwrap().to_string();
    let c = changes(&h, v3).await;
    assert_eq!(c.digests, [digest(&t1), digest(&t1b)]);
    let v4 = c.version;
    h.ok("DELETE", &format!("/access-keys/{id1}"), None).await;
    assert_eq!(changes(&h, v4).await.digests, [digest(&t1b), digest(&t1)]);

    // A configuration change lists the keys that use it.
    let cfg = h.ok("POST", "/access-key-configurations", Some(json!({"name": "c"}))).await;
    let cid = cfg["id"].as_str().unwrap().to_string();
    let (_, t3) = key(&h, json!({"name": "c", "accessKeyConfigurationId": cid})).await;
    let v5 = changes(&h, 0).await.version;
    h.ok(
        "PATCH",
        &format!("/access-key-configurations/{cid}"),
        Some(json!({"access": {"providers": {"allow": ["openai"]}}})),
    )
    .await;
    let c = changes(&h, v5).await;
    assert_eq!((c.all, c.digests), (false, vec![digest(&t3)]));

    // Providers and provider keys change everything.
    let v6 = c.version;
    h.ok("PATCH", "/providers/groq", Some(json!({"baseUrl": "http://127.0.0.1:9/v1"}))).await;
    let c = changes(&h, v6).await;
    assert!(c.all);
    assert_eq!(c.version, v6 + 1);
    assert_eq!(c.all_at, v6 + 1, "an all-wide change is reported by its version");
    // Per-key changes after it are still listed one by one.
    let (_, t9) = key(&h, json!({"name": "after"})).await;
    let c = changes(&h, v6).await;
    assert!(c.all && c.all_at == v6 + 1);
    assert_eq!(c.digests, vec![digest(&t9)]);
    let c = changes(&h, c.version).await;
    assert!(!c.all && c.digests.is_empty());
    let v7 = c.version;
    let pk_id = pk(&h, "openai", "sk-openai-xxxxxxxxxxx", true).await;
    assert!(changes(&h, v7).await.all);
    let v8 = v7 + 1;
    h.ok("PATCH", &format!("/provider-keys/{pk_id}"), Some(json!({"managed": false}))).await;
    assert!(changes(&h, v8).await.all);
    // Every mutation bumps the version, reads do not.
    let v = changes(&h, 0).await.version;
    h.ok("GET", "/access-keys", None).await;
    h.lookup_token(&t2).await;
    assert_eq!(changes(&h, 0).await.version, v);
    let (s, e) = h.gw("/v1/changes?since=-1").await;
    assert_error(s, &e, StatusCode::BAD_REQUEST, "invalid_field");
    assert_eq!(e["details"]["field"], "since");
    let (s, _) = h.gw("/v1/changes?since=abc").await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn trimmed_change_log_answers_all() {
    let h = harness_with(Options { change_log_limit: 5 });
    let mut tokens = Vec::new();
    for i in 0..4 {
        tokens.push(key(&h, json!({"name": format!("k{i}")})).await.1);
    }
    let c = changes(&h, 0).await;
    assert_eq!((c.version, c.all, c.digests.len()), (4, false, 4));
    for i in 4..10 {
        tokens.push(key(&h, json!({"name": format!("k{i}")})).await.1);
    }
    // Entries of versions 1..=5 are gone: older `since` answers all.
    let c = changes(&h, 0).await;
    assert_eq!(c.version, 10);
    assert!(c.all);
    assert!(changes(&h, 4).await.all);
    let c = changes(&h, 5).await;
    assert!(!c.all);
    let want: Vec<String> = tokens[5..].iter().map(|t| digest(t)).collect();
    assert_eq!(c.digests, want);
}

/// Not async: the store is called directly, as the HTTP layer does from
/// `spawn_blocking`.
#[test]
fn version_and_data_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (backend, _db) = test_backend(&dir);
    let cipher = keygate_store::crypto::Cipher::new(&[1u8; 32]);
    use keygate_store::storage::NewAccessKey;
    let store = backend.open(cipher.clone(), Options::default()).unwrap();
    store
        .update_provider(
            "openai",
            &keygate_store::storage::ProviderChanges {
                base_url: Some("http://127.0.0.1:1/v1".into()),
                ..Default::default()
            },
            &test_audit(),
        )
        .unwrap();
    let k = store
        .create_access_key(
            &NewAccessKey {
                name: "n".into(),
                description: String::new(),
                metadata: String::new(),
                config_id: None,
                expires_at: None,
                disabled: false,
                digest: "d".repeat(64),
                redacted: "kg-...".into(),
                budget: None,
                max_concurrent_requests: Some(4),
            },
            &test_audit(),
        )
        .unwrap();
    drop(store);
    let store = backend.open(cipher, Options::default()).unwrap();
    assert_eq!(store.changes(0).unwrap().version, 2);
    assert_eq!(store.get_provider("openai").unwrap().base_url, "http://127.0.0.1:1/v1");
    let d = store.lookup(&"d".repeat(64)).unwrap();
    assert_eq!(d.key.unwrap().id, k.id);
    assert_eq!(d.providers[0].base_url, "http://127.0.0.1:1/v1");
    assert_eq!(d.request_limits.and_then(|r| r.max_concurrent_requests), Some(4));
    assert_eq!(store.get_access_key(&k.id).unwrap().max_concurrent_requests, Some(4));
    drop(store);
    // The wrong master key is refused.
    assert!(backend.open(keygate_store::crypto::Cipher::new(&[2u8; 32]), Options::default()).is_err());
}

/// `POST /v1/lease`: what every Envoy leases of a key's window is counted
/// for the fleet, and never passes the key's limit.
#[tokio::test]
async fn leases_never_pass_the_keys_limit() {
    let h = harness();
    let cfg = h
        .ok("POST", "/access-key-configurations", Some(json!({"name": "rl", "rateLimits": {"requestsPerMinute": 30}})))
        .await;
    let key = h.ok("POST", "/access-keys", Some(json!({"name": "k", "accessKeyConfigurationId": cfg["id"]}))).await;
    let ask = json!({"accessKeyId": key["id"], "windowMs": 60000, "requests": 8, "tokens": 0});
    let mut granted = 0;
    for _ in 0..6 {
        let (s, v) = send(&h.gw, "POST", "/v1/lease", Some(GATEWAY), Some(ask.to_string())).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        granted += v["requests"].as_u64().unwrap();
        assert!(v["resetMs"].as_u64().unwrap() <= 60_000);
    }
    assert_eq!(granted, 30);
    let (_, v) = send(&h.gw, "POST", "/v1/lease", Some(GATEWAY), Some(ask.to_string())).await;
    assert_eq!((v["requests"].as_u64(), v["remainingRequests"].as_u64()), (Some(0), Some(0)));
    // A window outside what the gateway may ask is refused; so is a missing token.
    let bad = json!({"accessKeyId": key["id"], "windowMs": 10, "requests": 1, "tokens": 0});
    let (s, v) = send(&h.gw, "POST", "/v1/lease", Some(GATEWAY), Some(bad.to_string())).await;
    assert_error(s, &v, StatusCode::BAD_REQUEST, "invalid_field");
    let (s, _) = send(&h.gw, "POST", "/v1/lease", None, Some("{}".to_string())).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
}
