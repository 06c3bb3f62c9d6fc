//! The audit log: an entry for every management change (each write route),
//! with its actor and via, in the change's own transaction; never a secret;
//! filters, paging, console sign-ins, append-only, retention.
// Helpers outside #[test] functions unwrap too: these are tests.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use axum::http::StatusCode;
use common::*;
use keygate_store::api::principal::{Principal, Role};
use keygate_store::api::{AppState, M, ROUTE_ROLES};
use keygate_store::crypto::Cipher;
use keygate_store::policy::audit::{AuditRetention, REDACTED};
use keygate_store::storage::Options;
use serde_json::{json, Value};

/// The harness and an app state over the same store.
fn setup() -> (H, AppState) {
    let dir = tempfile::tempdir().unwrap();
    let (backend, pg) = test_backend(&dir);
    let store = backend.open(Cipher::new(&[7u8; 32]), Options::default()).unwrap();
    let state = AppState::new(store.clone(), ADMIN, GATEWAY);
    (H::over(store, dir, pg), state)
}

async fn mk(h: &H, name: &str, role: &str) -> (String, String) {
    let v = h.ok("POST", "/api-keys", Some(json!({"name": name, "role": role}))).await;
    (v["id"].as_str().unwrap().to_string(), v["token"].as_str().unwrap().to_string())
}

/// The newest entry of the log.
async fn newest(h: &H) -> Value {
    h.ok("GET", "/audit-log?limit=1", None).await["auditLog"][0].clone()
}

/// Every entry, following `nextPageUri` from `uri`.
async fn all_entries(h: &H, uri: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut next = Some(uri.to_string());
    while let Some(u) = next {
        let page = h.ok("GET", &u, None).await;
        out.extend(page["auditLog"].as_array().unwrap().iter().cloned());
        next = page["nextPageUri"].as_str().map(str::to_string);
    }
    out
}

/// The ids created so far, by kind (`pk`, `config`, `ak`, `awh`, `mk`).
type Ids = std::collections::HashMap<&'static str, String>;

/// A step made from the ids created before it.
type Plan = Vec<Box<dyn Fn(&Ids) -> Step>>;

/// One scripted write: the route it exercises, its body, and the entry it must leave.
struct Step {
    m: M,
    template: &'static str,
    uri: String,
    body: Option<Value>,
    action: &'static str,
    resource_type: &'static str,
    /// `None`: the id in the answer (a create).
    resource_id: Option<Option<String>>,
}

fn step(
    m: M,
    template: &'static str,
    uri: &str,
    body: Option<Value>,
    action: &'static str,
    resource_type: &'static str,
    resource_id: Option<Option<&str>>,
) -> Step {
    Step {
        m,
        template,
        uri: uri.to_string(),
        body,
        action,
        resource_type,
        resource_id: resource_id.map(|r| r.map(str::to_string)),
    }
}

#[tokio::test]
async fn every_write_route_leaves_its_entry_and_no_secret() {
    let (h, _) = setup();
    let (admin_id, admin) = mk(&h, "automation", "admin").await;
    let mut secrets = vec![admin.clone(), ADMIN.to_string(), GATEWAY.to_string()];
    let value1 = "sk-audit-provider-secret-0001-AAAAAAAA".to_string();
    let value2 = "sk-audit-provider-secret-0002-BBBBBBBB".to_string();
    let hook1 = "whsec_audit-webhook-secret-0001-CCCCCCCC".to_string();
    let hook2 = "whsec_audit-webhook-secret-0002-DDDDDDDD".to_string();
    secrets.extend([value1.clone(), value2.clone(), hook1.clone(), hook2.clone()]);
    let mut covered = Vec::new();
    let mut webhook_urls: Vec<String> = Vec::new();

    // Runs a step as the admin management key and checks the entry it left.
    let mut ids: Ids = Default::default();
    let plan: Plan = vec![
        Box::new(|_| {
            step(
                M::Post,
                "/providers",
                "/providers",
                Some(
                    json!({"providerId": "acme", "name": "Acme", "baseUrl": "https://acme.example/v1", "format": "openai"}),
                ),
                "provider.create",
                "provider",
                Some(Some("acme")),
            )
        }),
        Box::new(|_| {
            step(
                M::Patch,
                "/providers/{id}",
                "/providers/acme",
                Some(json!({"name": "Acme 2"})),
                "provider.update",
                "provider",
                Some(Some("acme")),
            )
        }),
        Box::new(|_| {
            step(
                M::Post,
                "/provider-keys",
                "/provider-keys",
                Some(
                    json!({"providerId": "acme", "name": "main", "value": "sk-audit-provider-secret-0001-AAAAAAAA", "managed": true}),
                ),
                "provider_key.create",
                "provider_key",
                None,
            )
        }),
        Box::new(|ids| {
            let pk = &ids["pk"];
            step(
                M::Patch,
                "/provider-keys/{id}",
                &format!("/provider-keys/{pk}"),
                Some(json!({"name": "renamed"})),
                "provider_key.update",
                "provider_key",
                Some(Some(pk)),
            )
        }),
        Box::new(|ids| {
            let pk = &ids["pk"];
            step(
                M::Post,
                "/provider-keys/{id}/rotate",
                &format!("/provider-keys/{pk}/rotate"),
                Some(json!({"value": "sk-audit-provider-secret-0002-BBBBBBBB"})),
                "provider_key.rotate",
                "provider_key",
                Some(Some(pk)),
            )
        }),
        Box::new(|_| {
            step(
                M::Post,
                "/access-key-configurations",
                "/access-key-configurations",
                Some(
                    json!({"name": "team", "budget": {"tokens": 1000, "window": "daily"}, "access": {"providers": {"allow": ["acme"]}}}),
                ),
                "access_key_configuration.create",
                "access_key_configuration",
                None,
            )
        }),
        Box::new(|ids| {
            let c = &ids["config"];
            step(
                M::Patch,
                "/access-key-configurations/{id}",
                &format!("/access-key-configurations/{c}"),
                Some(json!({"description": "the team", "rateLimits": {"requestsPerMinute": 5}})),
                "access_key_configuration.update",
                "access_key_configuration",
                Some(Some(c)),
            )
        }),
        Box::new(|ids| {
            step(
                M::Post,
                "/access-keys",
                "/access-keys",
                Some(json!({"name": "k", "accessKeyConfigurationId": ids["config"]})),
                "access_key.create",
                "access_key",
                None,
            )
        }),
        Box::new(|ids| {
            let k = &ids["ak"];
            step(
                M::Patch,
                "/access-keys/{id}",
                &format!("/access-keys/{k}"),
                Some(json!({"name": "k2", "metadata": null})),
                "access_key.update",
                "access_key",
                Some(Some(k)),
            )
        }),
        Box::new(|ids| {
            let k = &ids["ak"];
            step(
                M::Patch,
                "/access-keys/{id}",
                &format!("/access-keys/{k}"),
                Some(json!({"disabled": true})),
                "access_key.disable",
                "access_key",
                Some(Some(k)),
            )
        }),
        Box::new(|ids| {
            let k = &ids["ak"];
            step(
                M::Patch,
                "/access-keys/{id}",
                &format!("/access-keys/{k}"),
                Some(json!({"disabled": false})),
                "access_key.enable",
                "access_key",
                Some(Some(k)),
            )
        }),
        Box::new(|ids| {
            let k = &ids["ak"];
            step(
                M::Post,
                "/access-keys/{id}/rotate",
                &format!("/access-keys/{k}/rotate"),
                Some(json!({"gracePeriodSeconds": 60})),
                "access_key.rotate",
                "access_key",
                Some(Some(k)),
            )
        }),
        Box::new(|ids| {
            let k = &ids["ak"];
            step(
                M::Delete,
                "/access-keys/{id}",
                &format!("/access-keys/{k}"),
                None,
                "access_key.delete",
                "access_key",
                Some(Some(k)),
            )
        }),
        Box::new(|ids| {
            let c = &ids["config"];
            step(
                M::Delete,
                "/access-key-configurations/{id}",
                &format!("/access-key-configurations/{c}"),
                None,
                "access_key_configuration.delete",
                "access_key_configuration",
                Some(Some(c)),
            )
        }),
        Box::new(|ids| {
            let pk = &ids["pk"];
            step(
                M::Delete,
                "/provider-keys/{id}",
                &format!("/provider-keys/{pk}"),
                None,
                "provider_key.delete",
                "provider_key",
                Some(Some(pk)),
            )
        }),
        Box::new(|_| {
            step(
                M::Delete,
                "/providers/{id}",
                "/providers/acme",
                None,
                "provider.delete",
                "provider",
                Some(Some("acme")),
            )
        }),
        Box::new(|_| {
            step(M::Post, "/credits", "/credits", Some(json!({"addUsd": 5.5})), "credits.add", "credits", Some(None))
        }),
        Box::new(|_| {
            step(
                M::Patch,
                "/credits",
                "/credits",
                Some(json!({"enabled": false})),
                "credits.disable",
                "credits",
                Some(None),
            )
        }),
        Box::new(|_| {
            step(
                M::Patch,
                "/credits",
                "/credits",
                Some(json!({"enabled": true})),
                "credits.enable",
                "credits",
                Some(None),
            )
        }),
        Box::new(|_| {
            step(
                M::Put,
                "/prices/{provider}/{model}",
                "/prices/openai/gpt-audit-*",
                Some(json!({"inputPerMillionUsd": 1.5, "outputPerMillionUsd": 3})),
                "price.set",
                "price",
                Some(Some("openai/gpt-audit-*")),
            )
        }),
        Box::new(|_| {
            step(
                M::Delete,
                "/prices/{provider}/{model}",
                "/prices/openai/gpt-audit-*",
                None,
                "price.delete",
                "price",
                Some(Some("openai/gpt-audit-*")),
            )
        }),
        Box::new(|_| {
            step(
                M::Post,
                "/alert-webhooks",
                "/alert-webhooks",
                Some(
                    json!({"url": "https://hooks.example/audit", "secret": "whsec_audit-webhook-secret-0001-CCCCCCCC",
                            "thresholds": [80, 100], "events": ["budget"]}),
                ),
                "alert_webhook.create",
                "alert_webhook",
                None,
            )
        }),
        Box::new(|ids| {
            let w = &ids["awh"];
            step(
                M::Patch,
                "/alert-webhooks/{id}",
                &format!("/alert-webhooks/{w}"),
                Some(json!({"url": "https://hooks.example/audit-2", "enabled": false})),
                "alert_webhook.update",
                "alert_webhook",
                Some(Some(w)),
            )
        }),
        Box::new(|ids| {
            let w = &ids["awh"];
            step(
                M::Patch,
                "/alert-webhooks/{id}",
                &format!("/alert-webhooks/{w}"),
                Some(json!({"secret": "whsec_audit-webhook-secret-0002-DDDDDDDD"})),
                "alert_webhook.update",
                "alert_webhook",
                Some(Some(w)),
            )
        }),
        Box::new(|ids| {
            let w = &ids["awh"];
            step(
                M::Delete,
                "/alert-webhooks/{id}",
                &format!("/alert-webhooks/{w}"),
                None,
                "alert_webhook.delete",
                "alert_webhook",
                Some(Some(w)),
            )
        }),
        Box::new(|_| {
            step(
                M::Post,
                "/api-keys",
                "/api-keys",
                Some(json!({"name": "viewer", "role": "viewer"})),
                "api_key.create",
                "api_key",
                None,
            )
        }),
        Box::new(|ids| {
            let k = &ids["mk"];
            step(
                M::Patch,
                "/api-keys/{id}",
                &format!("/api-keys/{k}"),
                Some(json!({"name": "viewer 2"})),
                "api_key.update",
                "api_key",
                Some(Some(k)),
            )
        }),
        Box::new(|ids| {
            let k = &ids["mk"];
            step(
                M::Patch,
                "/api-keys/{id}",
                &format!("/api-keys/{k}"),
                Some(json!({"role": "operator"})),
                "api_key.role_change",
                "api_key",
                Some(Some(k)),
            )
        }),
        Box::new(|ids| {
            let k = &ids["mk"];
            step(
                M::Post,
                "/api-keys/{id}/rotate",
                &format!("/api-keys/{k}/rotate"),
                None,
                "api_key.rotate",
                "api_key",
                Some(Some(k)),
            )
        }),
        Box::new(|ids| {
            let k = &ids["mk"];
            step(
                M::Delete,
                "/api-keys/{id}",
                &format!("/api-keys/{k}"),
                None,
                "api_key.delete",
                "api_key",
                Some(Some(k)),
            )
        }),
    ];
    let mut entries = 0;
    for make in &plan {
        let st = make(&ids);
        let method = st.m.as_str().to_uppercase();
        let (s, answer) = send(&h.api, &method, &st.uri, Some(&admin), st.body.as_ref().map(Value::to_string)).await;
        assert!(s.is_success(), "{method} {}: {s} {answer}", st.uri);
        entries += 1;
        covered.push((st.m, st.template));
        for field in ["token", "secret"] {
            if let Some(t) = answer.get(field).and_then(Value::as_str) {
                secrets.push(t.to_string());
            }
        }
        let created = answer.get("id").and_then(Value::as_str).map(str::to_string);
        if st.resource_id.is_none() {
            let key = match st.resource_type {
                "provider_key" => "pk",
                "access_key_configuration" => "config",
                "access_key" => "ak",
                "alert_webhook" => "awh",
                _ => "mk",
            };
            ids.insert(key, created.clone().unwrap());
        }
        let e = newest(&h).await;
        assert_eq!(e["action"], st.action, "{e}");
        assert_eq!(e["resourceType"], st.resource_type, "{e}");
        let want_id = st.resource_id.clone().unwrap_or(created);
        assert_eq!(e["resourceId"], json!(want_id), "{e}");
        assert_eq!(e["actor"], admin_id.as_str(), "{e}");
        assert_eq!(e["via"], "api", "{e}");
        assert!(e["id"].as_str().unwrap().starts_with("al_"));
        let time_ms = e["timeMs"].as_i64().unwrap();
        assert!((keygate_store::ids::now_ms() - time_ms).abs() < 60_000);
        assert_eq!(e["time"], keygate_store::ids::rfc3339_ms(time_ms));
        // The changed fields with their new values; a provider key's value and
        // a webhook's secret redacted, a webhook's URL too, with its fingerprint.
        let mut want = st.body.clone().unwrap_or(json!({}));
        for field in ["value", "secret"] {
            if let Some(v) = want.get_mut(field) {
                *v = json!(REDACTED);
            }
        }
        if st.resource_type == "alert_webhook" {
            if let Some(url) = want.get("url").and_then(Value::as_str).map(str::to_string) {
                webhook_urls.push(url.clone());
                want["url"] = json!("https://hooks.example/…");
                want["urlFingerprint"] = json!(fingerprint(&url));
            }
        }
        assert_eq!(e["changes"], want, "{}", st.action);
    }

    // Every write route of the API was exercised.
    let mut writes: Vec<(M, &str)> =
        ROUTE_ROLES.iter().filter(|(m, _, _)| *m != M::Get).map(|(m, p, _)| (*m, *p)).collect();
    writes.sort_by_key(|(m, p)| (m.as_str(), *p));
    covered.sort_by_key(|(m, p)| (m.as_str(), *p));
    covered.dedup();
    assert_eq!(covered, writes);

    // Nothing secret in any entry: not through the API, not in the table.
    let log = all_entries(&h, "/audit-log?limit=7").await;
    assert_eq!(log.len(), entries + 1, "each change once (and the admin key's creation)");
    let text = serde_json::to_string(&log).unwrap();
    let raw = match &h.pg {
        Some(db) => format!("{:?}", db.query("SELECT * FROM audit_log")),
        None => {
            let conn = rusqlite::Connection::open(h.db_path()).unwrap();
            let mut stmt = conn.prepare("SELECT changes_json, actor, resource_id FROM audit_log").unwrap();
            let rows: Vec<String> = stmt
                .query_map([], |r| {
                    Ok(format!(
                        "{:?} {:?} {:?}",
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, Option<String>>(2)?
                    ))
                })
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            rows.join("\n")
        }
    };
    assert!(secrets.len() >= 11, "{secrets:?}");
    for s in &secrets {
        assert!(!text.contains(s.as_str()), "{s} in the audit log");
        assert!(!raw.contains(s.as_str()), "{s} in the audit_log table");
    }
    assert_eq!(webhook_urls.len(), 2, "a create and an update set a webhook URL");
    for url in &webhook_urls {
        assert!(!text.contains(url.as_str()), "{url} in the audit log");
        assert!(!raw.contains(url.as_str()), "{url} in the audit_log table");
    }
    assert_eq!(text.matches(REDACTED).count(), 4, "the two provider-key values and the two webhook secrets");
    // The served fields are the documented ones.
    let doc: Value = serde_json::from_str(keygate_store::api::OPENAPI_JSON).unwrap();
    let schema = &doc["components"]["schemas"]["AuditEntry"];
    let mut documented: Vec<&str> = schema["properties"].as_object().unwrap().keys().map(String::as_str).collect();
    documented.sort_unstable();
    let mut served: Vec<&str> = log[0].as_object().unwrap().keys().map(String::as_str).collect();
    served.sort_unstable();
    assert_eq!(served, documented);
    for e in &log {
        let action = e["action"].as_str().unwrap();
        assert!(schema["properties"]["action"]["description"]
            .as_str()
            .unwrap()
            .contains(action.split('.').next().unwrap()));
        assert!(schema["properties"]["resourceType"]["enum"].as_array().unwrap().contains(&e["resourceType"]), "{e}");
    }
    // Newest first.
    let ids_desc: Vec<&str> = log.iter().map(|e| e["id"].as_str().unwrap()).collect();
    let mut sorted = ids_desc.clone();
    sorted.sort_unstable_by(|a, b| b.cmp(a));
    assert_eq!(ids_desc, sorted);
}

#[tokio::test]
async fn actor_and_via_bootstrap_keys_and_the_console() {
    let (h, state) = setup();
    let (op_id, operator) = mk(&h, "ops", "operator").await;
    let (_, viewer) = mk(&h, "audit reader", "viewer").await;

    // The bootstrap token through the API.
    let k = h.ok("POST", "/access-keys", Some(json!({"name": "a"}))).await;
    let e = newest(&h).await;
    assert_eq!((e["actor"].as_str(), e["via"].as_str()), (Some("bootstrap"), Some("api")));
    // An operator key through the console (the request carries ViaConsole).
    let uri = format!("/access-keys/{}", k["id"].as_str().unwrap());
    let (s, _) =
        send_via(&h.api, "PATCH", &uri, Some(&operator), Some(json!({"disabled": true}).to_string()), true).await;
    assert_eq!(s, StatusCode::OK);
    let e = newest(&h).await;
    assert_eq!(
        (e["actor"].as_str(), e["via"].as_str(), e["action"].as_str()),
        (Some(op_id.as_str()), Some("console"), Some("access_key.disable"))
    );
    // The bootstrap token through the console.
    let (s, _) = send_via(&h.api, "DELETE", &uri, Some(ADMIN), None, true).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let e = newest(&h).await;
    assert_eq!((e["actor"].as_str(), e["via"].as_str()), (Some("bootstrap"), Some("console")));
    // A header cannot claim the console.
    let before = newest(&h).await["id"].clone();
    let req = axum::http::Request::builder()
        .method("POST")
        .uri("/access-keys")
        .header("authorization", format!("Bearer {operator}"))
        .header("viaconsole", "true")
        .header("x-keygate-via", "console")
        .header("content-type", "application/json")
        .body(axum::body::Body::from(json!({"name": "b"}).to_string()))
        .unwrap();
    assert_eq!(tower::ServiceExt::oneshot(h.api.clone(), req).await.unwrap().status(), StatusCode::CREATED);
    let e = newest(&h).await;
    assert_ne!(e["id"], before);
    assert_eq!(e["via"], "api");

    // Refused and failed calls leave nothing.
    let count = all_entries(&h, "/audit-log").await.len();
    let (s, _) = send(&h.api, "POST", "/access-keys", Some(&viewer), Some(json!({"name": "c"}).to_string())).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = h.api("DELETE", "/access-keys/ak_none", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let c = h.ok("POST", "/access-key-configurations", Some(json!({"name": "used"}))).await;
    h.ok("POST", "/access-keys", Some(json!({"name": "user", "accessKeyConfigurationId": c["id"]}))).await;
    let (s, _) = h.api("DELETE", &format!("/access-key-configurations/{}", c["id"].as_str().unwrap()), None).await;
    assert_eq!(s, StatusCode::CONFLICT);
    let (s, _) = h.api("POST", "/credits", Some(json!({"addUsd": "lots"}))).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(all_entries(&h, "/audit-log").await.len(), count + 2, "the two successful creates only");

    // A console sign-in, recorded by the console through the library.
    let principal = state.authenticate(&viewer).await.unwrap().unwrap();
    assert_eq!(principal.role, Role::Viewer);
    keygate_store::api::audit::record_console_login(&state, &principal).await.unwrap();
    let e = newest(&h).await;
    assert_eq!(e["action"], "console.login");
    assert_eq!(e["via"], "console");
    assert_eq!(e["actor"], principal.actor.as_str());
    assert_eq!(e["resourceType"], "console");
    assert_eq!(e["resourceId"], principal.actor.as_str());
    assert_eq!(e["changes"], json!({"role": "viewer"}));
    keygate_store::api::audit::record_console_login(&state, &Principal::bootstrap()).await.unwrap();
    assert_eq!(newest(&h).await["actor"], "bootstrap");
    assert!(state.authenticate("nobody").await.unwrap().is_none());
    assert!(state.authenticate(GATEWAY).await.unwrap().is_none());
}

#[tokio::test]
async fn a_change_is_not_made_when_its_entry_cannot_be_written() {
    let (h, _) = setup();
    h.ok("POST", "/access-keys", Some(json!({"name": "before"}))).await;
    h.sql("ALTER TABLE audit_log RENAME TO audit_log_away");
    let (s, _) = h.api("POST", "/access-keys", Some(json!({"name": "unrecorded"}))).await;
    assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR);
    let (s, _) = h.api("PATCH", "/credits", Some(json!({"enabled": true}))).await;
    assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR);
    let (s, _) = h.api("POST", "/alert-webhooks", Some(json!({"url": "https://hooks.example/unrecorded"}))).await;
    assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR);
    h.sql("ALTER TABLE audit_log_away RENAME TO audit_log");
    assert_eq!(h.ok("GET", "/alert-webhooks", None).await["alertWebhooks"], json!([]));
    let keys = h.ok("GET", "/access-keys", None).await;
    let names: Vec<&str> = keys["accessKeys"].as_array().unwrap().iter().map(|k| k["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["before"]);
    assert_eq!(h.ok("GET", "/credits", None).await["enabled"], false);
    assert_eq!(all_entries(&h, "/audit-log").await.len(), 1);
}

#[tokio::test]
async fn the_log_is_append_only() {
    let (h, _) = setup();
    h.ok("POST", "/access-keys", Some(json!({"name": "k"}))).await;
    let e = h.try_sql("UPDATE audit_log SET actor = 'someone else'").unwrap_err();
    assert!(e.contains("append-only"), "{e}");
    assert_eq!(newest(&h).await["actor"], "bootstrap");
}

/// The first 12 hex digits of the SHA-256 of `url` (a webhook URL's fingerprint).
fn fingerprint(url: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(url.as_bytes()))[..12].to_string()
}

#[tokio::test]
async fn a_webhook_url_is_never_in_the_log_for_any_role_even_from_before_it_was_redacted() {
    let (h, _) = setup();
    let (_, viewer) = mk(&h, "viewer", "viewer").await;
    let url = "https://hooks.slack.com/services/T0AUDIT0/B0AUDIT0/Zq3audit1secret2path3XYZ";
    let hook = h.ok("POST", "/alert-webhooks", Some(json!({"url": url}))).await;
    let id = hook["id"].as_str().unwrap();
    let url2 = "https://discord.com/api/webhooks/1234567890/audit-discord-token_abc";
    h.ok("PATCH", &format!("/alert-webhooks/{id}"), Some(json!({"url": url2}))).await;
    // An entry as a store before this change recorded it: the URL whole.
    let old = "https://hooks.slack.com/services/T0OLD000/B0OLD000/old1secret2path3";
    h.sql(&format!(
        "INSERT INTO audit_log(id, at_ms, actor, via, action, resource_type, resource_id, changes_json)
         VALUES ('al_0000000000000100000000000c', 1577836800000, 'bootstrap', 'api', 'alert_webhook.update',
                 'alert_webhook', '{id}', '{{\"url\": \"{old}\", \"enabled\": true}}')"
    ));
    for token in [viewer.as_str(), ADMIN] {
        let (s, log) = send(&h.api, "GET", &format!("/audit-log?resourceId={id}"), Some(token), None).await;
        assert_eq!(s, StatusCode::OK, "{log}");
        let text = log.to_string();
        for u in [url, url2, old] {
            assert!(!text.contains(u), "{u} in {text}");
        }
        let changes: Vec<&Value> = log["auditLog"].as_array().unwrap().iter().map(|e| &e["changes"]).collect();
        assert_eq!(changes.len(), 3, "{log}");
        // Newest first: the update, the create, and the old entry, redacted as it is served.
        let shown = |c: &Value| (c["url"].clone(), c["urlFingerprint"].clone());
        assert_eq!(shown(changes[0]), (json!("https://discord.com/…"), json!(fingerprint(url2))));
        assert_eq!(shown(changes[1]), (json!("https://hooks.slack.com/…"), json!(fingerprint(url))));
        assert_eq!(shown(changes[2]), (json!("https://hooks.slack.com/…"), json!(fingerprint(old))));
        assert_eq!(changes[2]["enabled"], true);
    }
}

/// Inserts an entry as the store would have written it at `at_ms`.
fn insert(h: &H, id: &str, at_ms: i64, actor: &str, resource: &str) {
    h.sql(&format!(
        "INSERT INTO audit_log(id, at_ms, actor, via, action, resource_type, resource_id, changes_json)
         VALUES ('{id}', {at_ms}, '{actor}', 'api', 'access_key.update', 'access_key', '{resource}', '{{}}')"
    ));
}

#[tokio::test]
async fn filters_and_paging() {
    let (h, _) = setup();
    let (op_id, operator) = mk(&h, "ops", "operator").await;
    let mut made = Vec::new();
    for i in 0..5 {
        let token = if i % 2 == 0 { ADMIN } else { operator.as_str() };
        let (s, k) =
            send(&h.api, "POST", "/access-keys", Some(token), Some(json!({"name": format!("k{i}")}).to_string())).await;
        assert_eq!(s, StatusCode::CREATED);
        made.push(k["id"].as_str().unwrap().to_string());
    }
    let target = made[1].clone();
    h.ok("PATCH", &format!("/access-keys/{target}"), Some(json!({"name": "renamed"}))).await;
    // Two old entries (2020-01-01, 2020-06-01).
    insert(&h, "al_0000000000000100000000000a", 1_577_836_800_000, "bootstrap", "ak_old");
    insert(&h, "al_0000000000000200000000000b", 1_590_969_600_000, "mk_gone", "ak_old");

    let by = |v: &[Value], f: &str| v.iter().map(|e| e[f].as_str().unwrap_or("").to_string()).collect::<Vec<_>>();
    let everything = all_entries(&h, "/audit-log").await;
    assert_eq!(everything.len(), 1 + 5 + 1 + 2);

    let mine = all_entries(&h, &format!("/audit-log?actor={op_id}&limit=1")).await;
    assert_eq!(mine.len(), 2);
    assert!(by(&mine, "actor").iter().all(|a| *a == op_id));
    let boot = all_entries(&h, "/audit-log?actor=bootstrap&limit=2").await;
    assert_eq!(boot.len(), 1 + 3 + 1 + 1, "the key's creation, three keys, the rename, an old one");
    let one = all_entries(&h, &format!("/audit-log?resourceId={target}")).await;
    assert_eq!(by(&one, "action"), ["access_key.update", "access_key.create"]);
    // Time: since inclusive, until exclusive, RFC 3339 with or without fractions.
    let old = all_entries(&h, "/audit-log?until=2021-01-01T00:00:00Z").await;
    assert_eq!(by(&old, "resourceId"), ["ak_old", "ak_old"]);
    let mid = all_entries(&h, "/audit-log?since=2020-06-01T00:00:00.000Z&until=2021-01-01T00:00:00%2B01:00").await;
    assert_eq!(by(&mid, "actor"), ["mk_gone"]);
    let recent = all_entries(&h, "/audit-log?since=2021-01-01T00:00:00Z&limit=3").await;
    assert_eq!(recent.len(), everything.len() - 2);
    let none = all_entries(&h, "/audit-log?since=2020-06-01T00:00:00.001Z&until=2021-01-01T00:00:00Z").await;
    assert!(none.is_empty());
    // Filters combine, and the next page keeps them.
    let page = h.ok("GET", "/audit-log?actor=bootstrap&resourceId=ak_old&limit=1", None).await;
    assert_eq!(page["auditLog"].as_array().unwrap().len(), 1);
    assert_eq!(page["nextPageUri"], Value::Null, "one old entry is the bootstrap's");
    let page = h.ok("GET", "/audit-log?resourceId=ak_old&since=2019-01-01T00:00:00Z&limit=1", None).await;
    let next = page["nextPageUri"].as_str().unwrap();
    assert!(next.starts_with("/audit-log?limit=1&beforeId=al_"), "{next}");
    assert!(next.contains("since=2019-01-01T00%3A00%3A00Z") && next.contains("resourceId=ak_old"), "{next}");
    let second = h.ok("GET", next, None).await;
    assert_eq!(second["auditLog"][0]["id"], "al_0000000000000100000000000a");
    assert_eq!(second["nextPageUri"], Value::Null);

    // Bad filters.
    for (uri, field) in [
        ("/audit-log?since=yesterday", Some("since")),
        ("/audit-log?until=1700000000000", Some("until")),
        ("/audit-log?actor=", Some("actor")),
        ("/audit-log?limit=101", Some("limit")),
        ("/audit-log?beforeId=..%2F", Some("beforeId")),
        ("/audit-log?resource=ak_1", None),
    ] {
        let (s, v) = h.api("GET", uri, None).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{uri}: {v}");
        assert_eq!(v["details"]["field"].as_str(), field, "{uri}: {v}");
    }
}

#[tokio::test]
async fn entries_past_retention_are_swept_in_batches() {
    let (h, state) = setup();
    let now = keygate_store::ids::now_ms();
    const DAY: i64 = 24 * 3_600_000;
    for (i, age) in [400, 380, 366, 364, 10].iter().enumerate() {
        insert(&h, &format!("al_00000000000000{i}0000000000"), now - age * DAY, "bootstrap", "ak_x");
    }
    h.ok("POST", "/access-keys", Some(json!({"name": "recent"}))).await;
    let retention = AuditRetention::from_days(365).unwrap();
    let deleted = keygate_store::serve::purge_audit(&state, retention, now, 2, 1).await.unwrap();
    assert_eq!(deleted, 2, "one batch of two, the oldest first");
    let left = all_entries(&h, "/audit-log").await;
    assert_eq!(left.len(), 4);
    assert!(left
        .iter()
        .all(|e| e["id"] != "al_00000000000000000000000000" && e["id"] != "al_00000000000000100000000000"));
    let deleted = keygate_store::serve::purge_audit(&state, retention, now, 2, 10).await.unwrap();
    assert_eq!(deleted, 1);
    let left = all_entries(&h, "/audit-log").await;
    assert_eq!(left.len(), 3, "364 and 10 days old, and the new one");
    assert_eq!(keygate_store::serve::purge_audit(&state, retention, now, 2, 10).await.unwrap(), 0);
    // 0 keeps the log forever: there is no retention to sweep with.
    assert_eq!(AuditRetention::from_days(0), None);
}
