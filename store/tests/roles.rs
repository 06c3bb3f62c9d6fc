//! Management API keys and roles: the token format, every route against every
//! role, the bootstrap admin token, and revocation (rotation, deletion, a role
//! change) taking effect on the very next call.
// Helpers outside #[test] functions unwrap too: these are tests.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use axum::http::StatusCode;
use common::*;
use keygate_store::api::principal::Role;
use keygate_store::api::{management_routes, required_role, ROUTE_ROLES};
use serde_json::{json, Value};

/// Creates a management key with `role` (as the bootstrap admin); returns (id, token).
async fn mk(h: &H, name: &str, role: &str) -> (String, String) {
    let (s, v) = h.api("POST", "/api-keys", Some(json!({"name": name, "role": role}))).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    (v["id"].as_str().unwrap().to_string(), v["token"].as_str().unwrap().to_string())
}

async fn call(h: &H, token: &str, method: &str, uri: &str, body: Option<Value>) -> (StatusCode, Value) {
    send(&h.api, method, uri, Some(token), body.map(|b| b.to_string())).await
}

fn assert_forbidden(s: StatusCode, v: &Value, required: &str, role: &str) {
    assert_error(s, v, StatusCode::FORBIDDEN, "insufficient_role");
    assert_eq!(v["details"], json!({"required": required, "role": role}), "{v}");
    assert!(v["msg"].as_str().unwrap().contains(required), "{v}");
}

#[test]
fn every_management_route_has_a_role_rule() {
    let routes = management_routes();
    let protected: Vec<_> = routes.table.iter().filter(|r| !routes.open_table.contains(r)).copied().collect();
    for (m, path) in &protected {
        assert!(
            ROUTE_ROLES.iter().any(|(rm, rp, _)| rm == m && rp == path),
            "{} {path} has no rule in ROUTE_ROLES",
            m.as_str()
        );
    }
    // No rule for a route that is not served (or served without auth), none twice.
    for (i, (m, path, role)) in ROUTE_ROLES.iter().enumerate() {
        assert!(protected.contains(&(*m, *path)), "{} {path} has a rule but is not a protected route", m.as_str());
        assert!(!ROUTE_ROLES[..i].iter().any(|(rm, rp, _)| rm == m && rp == path), "{path} twice");
        // Every GET is a viewer's; every write needs more.
        assert_eq!(*m == keygate_store::api::M::Get, *role == Role::Viewer, "{} {path}", m.as_str());
    }
    // Operators write access keys and configurations only.
    for (m, path, role) in ROUTE_ROLES {
        if *role == Role::Operator {
            assert!(
                path.starts_with("/access-keys") || path.starts_with("/access-key-configurations"),
                "{} {path}",
                m.as_str()
            );
        }
    }
    // A route without a rule needs admin.
    assert_eq!(required_role(keygate_store::api::M::Get, "/some-future-route"), Role::Admin);
    assert_eq!(required_role(keygate_store::api::M::Post, "/access-keys"), Role::Operator);
}

#[test]
fn openapi_names_each_operations_role_as_the_table_does() {
    let doc: Value = serde_json::from_str(keygate_store::api::OPENAPI_JSON).unwrap();
    for (m, path, role) in ROUTE_ROLES {
        let op = &doc["paths"][*path][m.as_str()];
        assert_eq!(op["x-keygate-role"], role.as_str(), "{} {path}", m.as_str());
        assert!(op["responses"]["403"].is_object(), "{} {path} documents no 403", m.as_str());
    }
}

/// A concrete URI of a route template.
fn concrete(path: &str) -> String {
    path.replace("{id}", "zz_0").replace("{provider}", "openai").replace("{model}", "no-such-model")
}

#[tokio::test]
async fn every_route_against_every_role() {
    let h = harness();
    let (_, viewer) = mk(&h, "v", "viewer").await;
    let (_, operator) = mk(&h, "o", "operator").await;
    let (_, admin) = mk(&h, "a", "admin").await;
    for (m, path, required) in ROUTE_ROLES {
        let uri = concrete(path);
        let method = m.as_str().to_uppercase();
        for (token, role) in [
            (viewer.as_str(), Role::Viewer),
            (operator.as_str(), Role::Operator),
            (admin.as_str(), Role::Admin),
            (ADMIN, Role::Admin),
        ] {
            // A body no handler accepts: an allowed call ends in 400 or 404 and
            // changes nothing; a refused one never reaches its handler.
            let body = (*m != keygate_store::api::M::Get).then(|| "{\"zz\": 1}".to_string());
            let (s, v) = send(&h.api, &method, &uri, Some(token), body).await;
            if role < *required {
                assert_forbidden(s, &v, required.as_str(), role.as_str());
            } else {
                assert!(
                    s != StatusCode::FORBIDDEN && s != StatusCode::UNAUTHORIZED,
                    "{method} {uri} as {}: {s} {v}",
                    role.as_str()
                );
            }
        }
    }
    // Nothing was changed by any of it (the four keys above are all there is).
    let log = h.ok("GET", "/audit-log", None).await;
    let actions: Vec<&str> =
        log["auditLog"].as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert_eq!(actions, vec!["api_key.create"; 3]);
}

#[tokio::test]
async fn a_read_an_operator_write_and_an_admin_write_per_role() {
    let h = harness();
    let (_, viewer) = mk(&h, "v", "viewer").await;
    let (_, operator) = mk(&h, "o", "operator").await;
    let (_, admin) = mk(&h, "a", "admin").await;
    let pk = json!({"providerId": "openai", "name": "p", "value": "sk-role-test-0123456789abcdef", "managed": true});
    for (token, role) in
        [(&viewer, "viewer"), (&operator, "operator"), (&admin, "admin"), (&ADMIN.to_string(), "admin")]
    {
        // A read: everyone.
        let (s, v) = call(&h, token, "GET", "/access-keys", None).await;
        assert_eq!(s, StatusCode::OK, "{role}: {v}");
        let (s, _) = call(&h, token, "GET", "/provider-keys", None).await;
        assert_eq!(s, StatusCode::OK);
        // An operator write: operators and admins.
        let (s, v) = call(&h, token, "POST", "/access-keys", Some(json!({"name": format!("by-{role}")}))).await;
        if role == "viewer" {
            assert_forbidden(s, &v, "operator", "viewer");
        } else {
            assert_eq!(s, StatusCode::CREATED, "{v}");
            let id = v["id"].as_str().unwrap();
            let (s, _) = call(&h, token, "PATCH", &format!("/access-keys/{id}"), Some(json!({"disabled": true}))).await;
            assert_eq!(s, StatusCode::OK);
            let (s, _) = call(&h, token, "POST", &format!("/access-keys/{id}/rotate"), None).await;
            assert_eq!(s, StatusCode::OK);
            let (s, _) = call(&h, token, "DELETE", &format!("/access-keys/{id}"), None).await;
            assert_eq!(s, StatusCode::NO_CONTENT);
            let (s, v) = call(&h, token, "POST", "/access-key-configurations", Some(json!({"name": role}))).await;
            assert_eq!(s, StatusCode::CREATED, "{v}");
            let (s, _) =
                call(&h, token, "DELETE", &format!("/access-key-configurations/{}", v["id"].as_str().unwrap()), None)
                    .await;
            assert_eq!(s, StatusCode::NO_CONTENT);
        }
        // Admin-only writes: admins.
        for (m, uri, body) in [
            ("POST", "/provider-keys", Some(pk.clone())),
            ("PUT", "/prices/openai/role-test", Some(json!({"inputPerMillionUsd": 1, "outputPerMillionUsd": 2}))),
            ("POST", "/credits", Some(json!({"addUsd": 1}))),
            ("POST", "/api-keys", Some(json!({"name": "n", "role": "viewer"}))),
        ] {
            let (s, v) = call(&h, token, m, uri, body).await;
            if role == "admin" {
                assert!(s.is_success(), "{m} {uri}: {s} {v}");
            } else {
                assert_forbidden(s, &v, "admin", role);
            }
        }
    }
}

#[tokio::test]
async fn whoami_names_the_caller_and_bootstrap_is_admin() {
    let h = harness();
    assert_eq!(
        h.ok("GET", "/whoami", None).await,
        json!({"actor": "bootstrap", "name": "bootstrap admin token", "role": "admin"})
    );
    let (id, token) = mk(&h, "ci deploys", "operator").await;
    let (s, v) = call(&h, &token, "GET", "/whoami", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v, json!({"actor": id, "name": "ci deploys", "role": "operator"}));
    // The bootstrap token keeps full power beside management keys.
    h.ok("DELETE", &format!("/api-keys/{id}"), None).await;
    h.ok("PUT", "/prices/openai/x-*", Some(json!({"inputPerMillionUsd": 1, "outputPerMillionUsd": 1}))).await;
}

#[tokio::test]
async fn management_keys_token_shown_once_listed_redacted_and_paged() {
    let h = harness();
    let (s, created) = h.api("POST", "/api-keys", Some(json!({"name": "ops", "role": "operator"}))).await;
    assert_eq!(s, StatusCode::CREATED);
    let id = created["id"].as_str().unwrap();
    let token = created["token"].as_str().unwrap();
    assert!(id.starts_with("mk_"));
    assert!(keygate_store::ids::is_management_token(token), "{token}");
    assert_eq!(token.len(), 4 + 48);
    assert!(keygate_proto::token::validate(token).is_err(), "never an access key");
    assert_eq!(created["tokenPrefix"], token[..12]);
    assert_eq!(created["role"], "operator");
    assert_eq!(created["lastUsedAt"], Value::Null);
    let mut fields: Vec<&str> = created.as_object().unwrap().keys().map(String::as_str).collect();
    fields.sort_unstable();
    assert_eq!(fields, ["createdAt", "id", "lastUsedAt", "name", "role", "token", "tokenPrefix", "updatedAt"]);
    // The served fields are the documented ones.
    let doc: Value = serde_json::from_str(keygate_store::api::OPENAPI_JSON).unwrap();
    let mut documented: Vec<&str> =
        doc["components"]["schemas"]["ApiKey"]["properties"].as_object().unwrap().keys().map(String::as_str).collect();
    documented.sort_unstable();
    assert_eq!(documented, fields.iter().filter(|f| **f != "token").copied().collect::<Vec<_>>());

    let got = h.ok("GET", &format!("/api-keys/{id}"), None).await;
    assert!(got.get("token").is_none());
    assert!(!got.to_string().contains(token));
    for i in 0..4 {
        mk(&h, &format!("k{i}"), "viewer").await;
    }
    let page = h.ok("GET", "/api-keys?limit=2", None).await;
    assert_eq!(page["uri"], "/api-keys");
    assert_eq!(page["apiKeys"].as_array().unwrap().len(), 2);
    assert_eq!(page["apiKeys"][0]["name"], "k3");
    let mut seen = 2;
    let mut next = page["nextPageUri"].as_str().map(str::to_string);
    while let Some(uri) = next {
        let p = h.ok("GET", &uri, None).await;
        assert!(!p.to_string().contains(token));
        seen += p["apiKeys"].as_array().unwrap().len();
        next = p["nextPageUri"].as_str().map(str::to_string);
    }
    assert_eq!(seen, 5);

    // Bad input.
    for body in [
        json!({"name": "x", "role": "root"}),
        json!({"name": "x"}),
        json!({"name": "", "role": "viewer"}),
        json!({"name": "x", "role": "viewer", "token": "mine"}),
    ] {
        let (s, v) = h.api("POST", "/api-keys", Some(body.clone())).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}: {v}");
    }
    for role in [json!(null), json!("Admin"), json!(3)] {
        let (s, v) = h.api("PATCH", &format!("/api-keys/{id}"), Some(json!({ "role": role }))).await;
        assert_error(s, &v, StatusCode::BAD_REQUEST, "invalid_field");
        assert_eq!(v["details"]["field"], "role", "{v}");
    }
    let (s, v) = h.api("POST", &format!("/api-keys/{id}/rotate"), Some(json!({"gracePeriodSeconds": 5}))).await;
    assert_error(s, &v, StatusCode::BAD_REQUEST, "unknown_field");
    for (m, uri) in [("GET", "/api-keys/mk_none"), ("PATCH", "/api-keys/mk_none"), ("DELETE", "/api-keys/mk_none")] {
        let (s, v) = h.api(m, uri, (m == "PATCH").then(|| json!({"name": "n"}))).await;
        assert_error(s, &v, StatusCode::NOT_FOUND, "not_found");
    }
    let (s, v) = h.api("POST", "/api-keys/mk_none/rotate", None).await;
    assert_error(s, &v, StatusCode::NOT_FOUND, "not_found");
    // PATCH name and role.
    let p = h.ok("PATCH", &format!("/api-keys/{id}"), Some(json!({"name": "ops2", "role": "admin"}))).await;
    assert_eq!((p["name"].as_str(), p["role"].as_str()), (Some("ops2"), Some("admin")));
}

#[tokio::test]
async fn rotation_deletion_and_role_changes_take_effect_on_the_next_call() {
    let h = harness();
    let (id, token) = mk(&h, "ops", "operator").await;
    let (s, _) = call(&h, &token, "POST", "/access-keys", Some(json!({"name": "a"}))).await;
    assert_eq!(s, StatusCode::CREATED);

    // A role change: the next call is judged by the new role.
    h.ok("PATCH", &format!("/api-keys/{id}"), Some(json!({"role": "viewer"}))).await;
    let (s, v) = call(&h, &token, "POST", "/access-keys", Some(json!({"name": "b"}))).await;
    assert_forbidden(s, &v, "operator", "viewer");
    assert_eq!(call(&h, &token, "GET", "/whoami", None).await.1["role"], "viewer");

    // Rotation: the old token stops at once, the new one works.
    let rotated = h.ok("POST", &format!("/api-keys/{id}/rotate"), None).await;
    let new_token = rotated["token"].as_str().unwrap().to_string();
    assert_ne!(new_token, token);
    assert_eq!(rotated["id"], id.as_str());
    assert_eq!(rotated["tokenPrefix"], new_token[..12]);
    let (s, v) = call(&h, &token, "GET", "/whoami", None).await;
    assert_error(s, &v, StatusCode::UNAUTHORIZED, "unauthorized");
    let (s, _) = call(&h, &new_token, "GET", "/whoami", None).await;
    assert_eq!(s, StatusCode::OK);
    // `{}` as the body is accepted too.
    let again = h.ok("POST", &format!("/api-keys/{id}/rotate"), Some(json!({}))).await;
    let (s, _) = call(&h, &new_token, "GET", "/access-keys", None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let newest = again["token"].as_str().unwrap().to_string();

    // Deletion: the token stops at once.
    let (s, _) = h.api("DELETE", &format!("/api-keys/{id}"), None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    for token in [&token, &new_token, &newest] {
        let (s, v) = call(&h, token, "GET", "/access-keys", None).await;
        assert_error(s, &v, StatusCode::UNAUTHORIZED, "unauthorized");
    }
    // A management key can revoke itself (an admin key), and is gone after.
    let (self_id, self_token) = mk(&h, "self", "admin").await;
    let (s, _) = call(&h, &self_token, "DELETE", &format!("/api-keys/{self_id}"), None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert_eq!(call(&h, &self_token, "GET", "/whoami", None).await.0, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn management_keys_work_on_the_management_listener_only() {
    let h = harness();
    let (_, token) = mk(&h, "a", "admin").await;
    let digest = "0".repeat(64);
    for uri in [format!("/v1/lookup/{digest}"), "/v1/changes?since=0".to_string()] {
        let (s, v) = send(&h.gw, "GET", &uri, Some(&token), None).await;
        assert_error(s, &v, StatusCode::UNAUTHORIZED, "unauthorized");
    }
    // Anything shaped like a management key but unknown, or malformed, is a 401.
    let unknown = format!("kgm_{}", "0".repeat(48));
    let upper = token.to_uppercase();
    for t in [unknown.as_str(), &token[..40], upper.as_str(), GATEWAY] {
        let (s, v) = call(&h, t, "GET", "/whoami", None).await;
        assert_error(s, &v, StatusCode::UNAUTHORIZED, "unauthorized");
    }
    // An access key is no management credential, whatever its age.
    let ak = h.ok("POST", "/access-keys", Some(json!({"name": "k"}))).await;
    let (s, _) = call(&h, ak["token"].as_str().unwrap(), "GET", "/whoami", None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn last_use_is_recorded_at_most_once_a_minute() {
    let h = harness();
    let (id, token) = mk(&h, "v", "viewer").await;
    call(&h, &token, "GET", "/whoami", None).await;
    let first = h.ok("GET", &format!("/api-keys/{id}"), None).await["lastUsedAt"].clone();
    assert!(first.is_string(), "{first}");
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    for _ in 0..5 {
        call(&h, &token, "GET", "/whoami", None).await;
    }
    assert_eq!(h.ok("GET", &format!("/api-keys/{id}"), None).await["lastUsedAt"], first, "no write per request");
    // A minute later (moved back in the database), the next use is written.
    h.sql(&format!("UPDATE api_keys SET last_used_ms = last_used_ms - 61000 WHERE id = '{id}'"));
    let moved = h.ok("GET", &format!("/api-keys/{id}"), None).await["lastUsedAt"].clone();
    call(&h, &token, "GET", "/whoami", None).await;
    let later = h.ok("GET", &format!("/api-keys/{id}"), None).await["lastUsedAt"].clone();
    assert_ne!(later, moved);
    assert!(later.as_str().unwrap() >= first.as_str().unwrap());
}

#[tokio::test]
async fn management_tokens_never_reach_the_disk_in_clear() {
    let h = harness();
    let mut tokens = Vec::new();
    for i in 0..10 {
        let (id, t) = mk(&h, &format!("k{i}"), "viewer").await;
        tokens.push(t);
        tokens.push(h.ok("POST", &format!("/api-keys/{id}/rotate"), None).await["token"].as_str().unwrap().to_string());
    }
    if let Some(db) = &h.pg {
        let dump = format!("{:?}", db.query("SELECT * FROM api_keys"));
        let log = format!("{:?}", db.query("SELECT * FROM audit_log"));
        for t in &tokens {
            assert!(!dump.contains(t.as_str()) && !log.contains(t.as_str()));
        }
    } else {
        for entry in std::fs::read_dir(h.dir.path()).unwrap() {
            let path = entry.unwrap().path();
            let bytes = std::fs::read(&path).unwrap();
            for t in &tokens {
                assert!(!bytes.windows(t.len()).any(|w| w == t.as_bytes()), "{t} in clear in {}", path.display());
            }
        }
    }
}
