//! In-process tests of the management API (every endpoint, every error class).
// Helpers outside #[test] functions unwrap too: these are tests.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use axum::http::StatusCode;
use common::*;
use serde_json::{json, Value};

#[tokio::test]
async fn health_and_openapi_need_no_auth() {
    let h = harness();
    for r in [&h.api, &h.gw] {
        let (s, v) = send(r, "GET", "/healthz", None, None).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(v, json!({"status": "ok"}));
    }
    let (s, v) = send(&h.api, "GET", "/openapi.json", None, None).await;
    assert_eq!(s, StatusCode::OK);
    assert!(v["openapi"].as_str().unwrap().starts_with("3."));
}

#[test]
fn openapi_lists_every_route_served() {
    let doc: Value = serde_json::from_str(keygate_store::api::OPENAPI_JSON).unwrap();
    let on_file: Value = serde_json::from_str(include_str!("../openapi.json")).unwrap();
    assert_eq!(doc, on_file);
    let paths = doc["paths"].as_object().unwrap();
    let mut served = Vec::new();
    for routes in [keygate_store::api::management_routes(), keygate_store::api::gateway_routes()] {
        for (m, path) in &routes.table {
            let op = &paths.get(*path).unwrap_or_else(|| panic!("{path} missing from openapi.json"))[m.as_str()];
            assert!(op.is_object(), "{} {path} missing from openapi.json", m.as_str());
            assert!(op["responses"].is_object(), "{} {path} has no responses", m.as_str());
            served.push((m.as_str().to_string(), path.to_string()));
        }
    }
    // And nothing documented that is not served.
    for (path, item) in paths {
        for method in item.as_object().unwrap().keys() {
            if ["get", "post", "patch", "delete", "put"].contains(&method.as_str()) {
                assert!(served.contains(&(method.clone(), path.clone())), "{method} {path} documented but not served");
            }
        }
    }
}

#[tokio::test]
async fn openapi_describes_every_access_key_field_served() {
    let doc: Value = serde_json::from_str(keygate_store::api::OPENAPI_JSON).unwrap();
    let props = |name: &str| {
        let mut keys: Vec<String> =
            doc["components"]["schemas"][name]["properties"].as_object().unwrap().keys().cloned().collect();
        keys.sort();
        keys
    };
    let h = harness();
    let k = h.ok("POST", "/access-keys", Some(json!({"name": "k", "maxConcurrentRequests": 2}))).await;
    let got = h.ok("GET", &format!("/access-keys/{}", k["id"].as_str().unwrap()), None).await;
    let mut served: Vec<String> = got.as_object().unwrap().keys().cloned().collect();
    served.sort();
    assert_eq!(served, props("AccessKey"));
    for body in ["CreateAccessKey", "PatchAccessKey"] {
        let cap = &doc["components"]["schemas"][body]["properties"]["maxConcurrentRequests"];
        assert_eq!((cap["minimum"].clone(), cap["maximum"].clone()), (json!(1), json!(1_000_000)), "{body}");
    }
}

#[tokio::test]
async fn management_api_requires_the_admin_token() {
    let h = harness();
    let created = h.ok("POST", "/access-keys", Some(json!({"name": "k"}))).await;
    let access_token = created["token"].as_str().unwrap().to_string();
    for token in [None, Some("wrong"), Some(GATEWAY), Some(access_token.as_str()), Some("")] {
        for (m, uri) in
            [("GET", "/access-keys"), ("POST", "/access-keys"), ("GET", "/providers"), ("DELETE", "/access-keys/ak_1")]
        {
            let (s, v) = send(&h.api, m, uri, token, Some("{\"name\":\"x\"}".into())).await;
            assert_error(s, &v, StatusCode::UNAUTHORIZED, "unauthorized");
        }
    }
    // Basic scheme or a raw token are refused too.
    let req = axum::http::Request::builder()
        .uri("/access-keys")
        .header("authorization", ADMIN)
        .body(axum::body::Body::empty())
        .unwrap();
    let resp = tower::ServiceExt::oneshot(h.api.clone(), req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    // Lookup listener: the admin token does not work there.
    let digest = "0".repeat(64);
    for token in [None, Some(ADMIN), Some("nope"), Some(access_token.as_str())] {
        let (s, v) = send(&h.gw, "GET", &format!("/v1/lookup/{digest}"), token, None).await;
        assert_error(s, &v, StatusCode::UNAUTHORIZED, "unauthorized");
        let (s, _) = send(&h.gw, "GET", "/v1/changes?since=0", token, None).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
    }
    // The management API is not served on the lookup listener and vice versa.
    let (s, v) = send(&h.gw, "GET", "/access-keys", Some(GATEWAY), None).await;
    assert_error(s, &v, StatusCode::NOT_FOUND, "not_found");
    let (s, v) = send(&h.api, "GET", &format!("/v1/lookup/{digest}"), Some(ADMIN), None).await;
    assert_error(s, &v, StatusCode::NOT_FOUND, "not_found");
}

#[tokio::test]
async fn access_key_lifecycle_and_token_shown_once() {
    let h = harness();
    let (s, created) = h
        .api("POST", "/access-keys", Some(json!({"name": "ci", "description": "d", "metadata": "{\"team\":1}"})))
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let id = created["id"].as_str().unwrap().to_string();
    let token = created["token"].as_str().unwrap().to_string();
    assert!(id.starts_with("ak_"));
    assert_eq!(keygate_proto::token::validate(&token), Ok(()));
    assert_eq!(created["keyRedacted"], keygate_proto::token::redact(&token));
    assert_eq!(created["accessKeyConfiguration"], Value::Null);
    assert_eq!(created["lastUsed"], Value::Null);
    assert_eq!(created["expiresAt"], Value::Null);
    assert_eq!(created["disabled"], false);
    assert_eq!(created["metadata"], "{\"team\":1}");
    for k in ["createdAt", "updatedAt"] {
        assert!(keygate_store::ids::parse_rfc3339(created[k].as_str().unwrap()).is_some());
    }

    let got = h.ok("GET", &format!("/access-keys/{id}"), None).await;
    assert!(got.get("token").is_none());
    assert!(!got.to_string().contains(&token));
    let list = h.ok("GET", "/access-keys", None).await;
    assert!(!list.to_string().contains(&token));
    assert_eq!(list["uri"], "/access-keys");
    assert_eq!(list["nextPageUri"], Value::Null);
    assert_eq!(list["accessKeys"][0]["id"], id.as_str());

    let patched = h
        .ok(
            "PATCH",
            &format!("/access-keys/{id}"),
            Some(json!({"name": "ci2", "disabled": true, "expiresAt": "2099-01-01T00:00:00Z", "description": null})),
        )
        .await;
    assert_eq!(patched["name"], "ci2");
    assert_eq!(patched["disabled"], true);
    assert_eq!(patched["description"], "");
    assert_eq!(patched["metadata"], "{\"team\":1}");
    assert_eq!(patched["expiresAt"], "2099-01-01T00:00:00Z");
    assert!(patched.get("token").is_none());
    let patched = h.ok("PATCH", &format!("/access-keys/{id}"), Some(json!({"expiresAt": null}))).await;
    assert_eq!(patched["expiresAt"], Value::Null);
    assert_eq!(patched["name"], "ci2");

    let (s, v) = h.api("DELETE", &format!("/access-keys/{id}"), None).await;
    assert_eq!((s, v), (StatusCode::NO_CONTENT, Value::Null));
    for (m, body) in [("GET", None), ("PATCH", Some(json!({"name": "x"}))), ("DELETE", None), ("POST", None)] {
        let uri = if m == "POST" { format!("/access-keys/{id}/rotate") } else { format!("/access-keys/{id}") };
        let (s, v) = h.api(m, &uri, body).await;
        assert_error(s, &v, StatusCode::NOT_FOUND, "not_found");
    }
    assert_eq!(h.lookup_token(&token).await["status"], "unknown");
}

#[tokio::test]
async fn an_access_key_has_a_concurrency_cap_of_its_own_that_null_clears() {
    let h = harness();
    let plain = h.ok("POST", "/access-keys", Some(json!({"name": "plain"}))).await;
    assert_eq!(plain["maxConcurrentRequests"], Value::Null, "none unless given");
    let (s, created) = h.api("POST", "/access-keys", Some(json!({"name": "capped", "maxConcurrentRequests": 2}))).await;
    assert_eq!(s, StatusCode::CREATED, "{created}");
    assert_eq!(created["maxConcurrentRequests"], 2);
    let id = created["id"].as_str().unwrap().to_string();
    assert_eq!(h.ok("GET", &format!("/access-keys/{id}"), None).await["maxConcurrentRequests"], 2);
    let list = h.ok("GET", "/access-keys", None).await;
    let listed: Vec<(Value, Value)> = list["accessKeys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| (k["name"].clone(), k["maxConcurrentRequests"].clone()))
        .collect();
    assert_eq!(listed, [(json!("capped"), json!(2)), (json!("plain"), Value::Null)]);
    // A PATCH without it leaves it; a value replaces it (the largest
    // accepted too); null clears it.
    let patched = h.ok("PATCH", &format!("/access-keys/{id}"), Some(json!({"name": "renamed"}))).await;
    assert_eq!(patched["maxConcurrentRequests"], 2);
    let patched = h.ok("PATCH", &format!("/access-keys/{id}"), Some(json!({"maxConcurrentRequests": 1_000_000}))).await;
    assert_eq!(patched["maxConcurrentRequests"], 1_000_000);
    let patched = h.ok("PATCH", &format!("/access-keys/{id}"), Some(json!({"maxConcurrentRequests": null}))).await;
    assert_eq!(patched["maxConcurrentRequests"], Value::Null);
    assert_eq!(h.ok("GET", &format!("/access-keys/{id}"), None).await["maxConcurrentRequests"], Value::Null);
    // null on create is no cap; a rotation keeps the cap.
    let k = h.ok("POST", "/access-keys", Some(json!({"name": "n", "maxConcurrentRequests": null}))).await;
    assert_eq!(k["maxConcurrentRequests"], Value::Null);
    h.ok("PATCH", &format!("/access-keys/{id}"), Some(json!({"maxConcurrentRequests": 1}))).await;
    let rotated = h.ok("POST", &format!("/access-keys/{id}/rotate"), None).await;
    assert_eq!(rotated["maxConcurrentRequests"], 1);
}

#[tokio::test]
async fn bad_input_is_a_400_in_the_error_shape_and_changes_nothing() {
    let h = harness();
    let key = h.ok("POST", "/access-keys", Some(json!({"name": "k"}))).await;
    let id = key["id"].as_str().unwrap();
    let version = h.version().await;

    let cases: Vec<(&str, String, String, &str, Option<&str>)> = vec![
        ("POST", "/access-keys".into(), "{\"name\":".into(), "invalid_json", None),
        ("POST", "/access-keys".into(), "".into(), "invalid_json", None),
        ("POST", "/access-keys".into(), "[1,2]".into(), "invalid_json", None),
        ("POST", "/access-keys".into(), "{\"name\":\"a\"} trailing".into(), "invalid_json", None),
        ("POST", "/access-keys".into(), json!({"name": 7}).to_string(), "invalid_field", Some("name")),
        ("POST", "/access-keys".into(), json!({}).to_string(), "invalid_field", Some("name")),
        ("POST", "/access-keys".into(), json!({"name": "a", "disabled": "yes"}).to_string(), "invalid_field", Some("disabled")),
        ("POST", "/access-keys".into(), json!({"name": "a", "scope": "x"}).to_string(), "unknown_field", Some("scope")),
        ("POST", "/access-keys".into(), json!({"name": "  "}).to_string(), "invalid_field", Some("name")),
        ("POST", "/access-keys".into(), json!({"name": "n".repeat(256)}).to_string(), "invalid_field", Some("name")),
        ("POST", "/access-keys".into(), json!({"name": "a", "description": "d".repeat(256)}).to_string(), "invalid_field", Some("description")),
        ("POST", "/access-keys".into(), json!({"name": "a", "metadata": "m".repeat(4097)}).to_string(), "invalid_field", Some("metadata")),
        ("POST", "/access-keys".into(), json!({"name": "a", "metadata": {"a": 1}}).to_string(), "invalid_field", Some("metadata")),
        ("POST", "/access-keys".into(), json!({"name": "a", "expiresAt": "2001-01-01T00:00:00Z"}).to_string(), "invalid_field", Some("expiresAt")),
        ("POST", "/access-keys".into(), json!({"name": "a", "expiresAt": "soon"}).to_string(), "invalid_field", Some("expiresAt")),
        ("POST", "/access-keys".into(), json!({"name": "a", "accessKeyConfigurationId": "akc_nope"}).to_string(), "invalid_field", Some("accessKeyConfigurationId")),
        ("POST", "/access-keys".into(), json!({"name": "a", "maxConcurrentRequests": 0}).to_string(), "invalid_field", Some("maxConcurrentRequests")),
        ("POST", "/access-keys".into(), json!({"name": "a", "maxConcurrentRequests": 1_000_001}).to_string(), "invalid_field", Some("maxConcurrentRequests")),
        ("POST", "/access-keys".into(), json!({"name": "a", "maxConcurrentRequests": 1.5}).to_string(), "invalid_field", Some("maxConcurrentRequests")),
        ("POST", "/access-keys".into(), json!({"name": "a", "maxConcurrentRequests": -1}).to_string(), "invalid_field", Some("maxConcurrentRequests")),
        ("POST", "/access-keys".into(), json!({"name": "a", "maxConcurrentRequests": "2"}).to_string(), "invalid_field", Some("maxConcurrentRequests")),
        ("PATCH", format!("/access-keys/{id}"), json!({"maxConcurrentRequests": 0}).to_string(), "invalid_field", Some("maxConcurrentRequests")),
        ("PATCH", format!("/access-keys/{id}"), json!({"maxConcurrentRequests": 9_999_999_999u64}).to_string(), "invalid_field", Some("maxConcurrentRequests")),
        ("PATCH", format!("/access-keys/{id}"), json!({"maxConcurrentRequests": 2.0}).to_string(), "invalid_field", Some("maxConcurrentRequests")),
        ("PATCH", format!("/access-keys/{id}"), json!({"maxConcurrentRequests": true}).to_string(), "invalid_field", Some("maxConcurrentRequests")),
        ("PATCH", format!("/access-keys/{id}"), json!({"name": null}).to_string(), "invalid_field", Some("name")),
        ("PATCH", format!("/access-keys/{id}"), json!({"description": "d".repeat(300)}).to_string(), "invalid_field", Some("description")),
        ("PATCH", format!("/access-keys/{id}"), json!({"token": "x"}).to_string(), "unknown_field", Some("token")),
        ("PATCH", format!("/access-keys/{id}"), json!({"accessKeyConfigurationId": "akc_missing"}).to_string(), "invalid_field", Some("accessKeyConfigurationId")),
        ("POST", format!("/access-keys/{id}/rotate"), json!({"gracePeriodSeconds": -1}).to_string(), "invalid_field", Some("gracePeriodSeconds")),
        ("POST", format!("/access-keys/{id}/rotate"), json!({"gracePeriodSeconds": 99999999}).to_string(), "invalid_field", Some("gracePeriodSeconds")),
        ("POST", "/provider-keys".into(), json!({"providerId": "openai", "name": "a"}).to_string(), "invalid_field", Some("value")),
        ("POST", "/provider-keys".into(), json!({"providerId": "nope", "name": "a", "value": "sk-1"}).to_string(), "invalid_field", Some("providerId")),
        ("POST", "/provider-keys".into(), json!({"providerId": "openai", "name": "a", "value": ""}).to_string(), "invalid_field", Some("value")),
        ("POST", "/provider-keys".into(), json!({"providerId": "openai", "name": "a", "value": "v".repeat(8193)}).to_string(), "invalid_field", Some("value")),
        ("POST", "/provider-keys".into(), json!({"providerId": "openai", "name": "a", "value": "sk-1\n"}).to_string(), "invalid_field", Some("value")),
        ("POST", "/access-key-configurations".into(), json!({"name": "c", "access": {"models": {"allow": ["openai/g*t"]}}}).to_string(), "invalid_field", Some("access.models.allow[0]")),
        ("POST", "/access-key-configurations".into(), json!({"name": "c", "access": {"models": {"allow": ["gpt-4o"]}}}).to_string(), "invalid_field", Some("access.models.allow[0]")),
        ("POST", "/access-key-configurations".into(), json!({"name": "c", "access": {"providers": {"allow": ["nope"]}}}).to_string(), "invalid_field", Some("access.providers.allow[0]")),
        ("POST", "/access-key-configurations".into(), json!({"name": "c", "access": {"providers": {"deny": []}}}).to_string(), "unknown_field", Some("access.providers.deny")),
        ("POST", "/access-key-configurations".into(), json!({"name": "c", "access": {"clientIps": {"allow": ["10.0.0.1/8"]}}}).to_string(), "invalid_field", Some("access.clientIps.allow[0]")),
        ("POST", "/access-key-configurations".into(), json!({"name": "c", "requestLimits": {"maxInputTokens": 0}}).to_string(), "invalid_field", Some("requestLimits.maxInputTokens")),
        ("POST", "/access-key-configurations".into(), json!({"name": "c", "requestLimits": {"maxConcurrentRequests": 0}}).to_string(), "invalid_field", Some("requestLimits.maxConcurrentRequests")),
        ("POST", "/access-key-configurations".into(), json!({"name": "c", "requestLimits": {"totalTimeoutMs": 3600001}}).to_string(), "invalid_field", Some("requestLimits.totalTimeoutMs")),
        ("POST", "/access-key-configurations".into(), json!({"name": "c", "requestLimits": {"maxOutput": 5}}).to_string(), "unknown_field", Some("requestLimits.maxOutput")),
        ("POST", "/access-key-configurations".into(), json!({"name": "c", "access": {"clientIps": {"allow": ["10.0.0.0/8", "example.com"]}}}).to_string(), "invalid_field", Some("access.clientIps.allow[1]")),
        ("POST", "/access-key-configurations".into(), json!({"name": "c", "access": {"clientIps": {"allow": ["2001:db8::/129"]}}}).to_string(), "invalid_field", Some("access.clientIps.allow[0]")),
        ("POST", "/access-key-configurations".into(), json!({"name": "c", "router": {"rules": [{"steps": [{"type": "managed"}]}]}}).to_string(), "invalid_field", Some("router.rules[0]")),
        ("POST", "/access-key-configurations".into(), json!({"name": "c", "router": {"rules": [{"provider": "openai", "steps": []}]}}).to_string(), "invalid_field", Some("router.rules[0].steps")),
        ("POST", "/access-key-configurations".into(), json!({"name": "c", "router": {"rules": [{"provider": "openai", "model": "anthropic/claude-*", "steps": [{"type": "managed"}]}]}}).to_string(), "invalid_field", Some("router.rules[0].model")),
        ("POST", "/access-key-configurations".into(), json!({"name": "c", "router": {"rules": [{"provider": "openai", "steps": [{"type": "user", "keys": []}]}]}}).to_string(), "invalid_field", Some("router.rules[0].steps[0].keys")),
        ("POST", "/access-key-configurations".into(), json!({"name": "c", "router": {"rules": [{"provider": "openai", "steps": [{"type": "user", "keys": [{"id": "pk_missing"}]}]}]}}).to_string(), "invalid_field", Some("router.rules[0].steps[0].keys[0].id")),
        ("POST", "/access-key-configurations".into(), json!({"name": "c", "router": {"rules": [{"provider": "openai", "steps": [{"type": "robot"}]}]}}).to_string(), "invalid_field", None),
        ("POST", "/providers".into(), json!({"providerId": "Bad Id", "name": "x", "baseUrl": "http://x", "format": "openai"}).to_string(), "invalid_field", Some("providerId")),
        ("POST", "/providers".into(), json!({"providerId": "vllm", "name": "x", "baseUrl": "http://x?y=1", "format": "openai"}).to_string(), "invalid_field", Some("baseUrl")),
        ("POST", "/providers".into(), json!({"providerId": "vllm", "name": "x", "baseUrl": "http://x", "format": "grpc"}).to_string(), "invalid_field", Some("format")),
        ("POST", "/providers".into(), json!({"providerId": "vllm", "name": "x", "baseUrl": "http://x", "format": "openai", "auth": "basic"}).to_string(), "invalid_field", Some("auth")),
        ("POST", "/providers".into(), json!({"providerId": "vllm", "name": "x", "baseUrl": "http://x", "format": "openai", "models": ["a*b"]}).to_string(), "invalid_field", Some("models[0]")),
        ("PATCH", "/providers/openai".into(), json!({"baseUrl": "ftp://x"}).to_string(), "invalid_field", Some("baseUrl")),
        ("PATCH", "/providers/openai".into(), json!({"format": "anthropic"}).to_string(), "invalid_field", Some("format")),
        ("PATCH", "/providers/openai".into(), json!({"builtIn": false}).to_string(), "unknown_field", Some("builtIn")),
    ];
    for (method, uri, body, code, field) in cases {
        let (s, v) = h.api_raw(method, &uri, &body).await;
        assert_error(s, &v, StatusCode::BAD_REQUEST, code);
        if let Some(f) = field {
            assert_eq!(v["details"]["field"], f, "{method} {uri} {body}: {v}");
        }
    }
    assert_eq!(h.version().await, version, "bad input changed the store");
    let after = h.ok("GET", &format!("/access-keys/{id}"), None).await;
    assert_eq!(after["name"], "k");
    assert_eq!(h.ok("GET", "/access-keys", None).await["accessKeys"].as_array().unwrap().len(), 1);
    assert_eq!(h.ok("GET", "/provider-keys", None).await["providerKeys"].as_array().unwrap().len(), 0);
    assert_eq!(
        h.ok("GET", "/access-key-configurations", None).await["accessKeyConfigurations"].as_array().unwrap().len(),
        0
    );
    assert_eq!(h.ok("GET", "/providers/openai", None).await["baseUrl"], "https://api.openai.com/v1");
}

#[tokio::test]
async fn unicode_lengths_count_characters() {
    let h = harness();
    let (s, _) = h.api("POST", "/access-keys", Some(json!({"name": "é".repeat(255)}))).await;
    assert_eq!(s, StatusCode::CREATED);
}

#[tokio::test]
async fn unknown_routes_methods_and_ids() {
    let h = harness();
    let (s, v) = h.api("GET", "/nope", None).await;
    assert_error(s, &v, StatusCode::NOT_FOUND, "not_found");
    let (s, v) = send(&h.api, "GET", "/nope", None, None).await;
    assert_error(s, &v, StatusCode::NOT_FOUND, "not_found");
    let (s, v) = h.api("PUT", "/access-keys", Some(json!({}))).await;
    assert_error(s, &v, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
    let (s, v) = h.api("DELETE", "/providers", None).await;
    assert_error(s, &v, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
    for uri in [
        "/access-keys/ak_missing",
        "/provider-keys/pk_missing",
        "/access-key-configurations/akc_missing",
        "/providers/missing",
        "/access-keys/%00bad",
        "/access-keys/AK_UPPER",
    ] {
        let (s, v) = h.api("GET", uri, None).await;
        assert_error(s, &v, StatusCode::NOT_FOUND, "not_found");
        let (s, v) = h.api("DELETE", uri, None).await;
        assert_error(s, &v, StatusCode::NOT_FOUND, "not_found");
    }
    let (s, v) = h.api("PATCH", "/provider-keys/pk_missing", Some(json!({"name": "x"}))).await;
    assert_error(s, &v, StatusCode::NOT_FOUND, "not_found");
    let (s, v) = h.api("POST", "/provider-keys/pk_missing/rotate", Some(json!({"value": "sk-new"}))).await;
    assert_error(s, &v, StatusCode::NOT_FOUND, "not_found");
    let (s, v) = h.api("PATCH", "/access-key-configurations/akc_missing", Some(json!({"name": "x"}))).await;
    assert_error(s, &v, StatusCode::NOT_FOUND, "not_found");
    let (s, v) = h.api("PATCH", "/providers/missing", Some(json!({"name": "x"}))).await;
    assert_error(s, &v, StatusCode::NOT_FOUND, "not_found");
}

#[tokio::test]
async fn oversized_bodies_are_413() {
    let h = harness();
    let huge = json!({"name": "a", "metadata": "x".repeat(70 * 1024)}).to_string();
    for uri in ["/access-keys", "/provider-keys", "/access-key-configurations", "/providers"] {
        let (s, v) = h.api_raw("POST", uri, &huge).await;
        assert_error(s, &v, StatusCode::PAYLOAD_TOO_LARGE, "body_too_large");
    }
    assert_eq!(h.ok("GET", "/access-keys", None).await["accessKeys"].as_array().unwrap().len(), 0);
}

#[tokio::test]
async fn access_keys_are_searched_by_name_prefix() {
    let h = harness();
    let mut ids = std::collections::HashMap::new();
    for name in ["Web-App", "web-api", "webhook", "worker", "db", "we", "Wéb", "web-zz"] {
        let id = h.ok("POST", "/access-keys", Some(json!({"name": name}))).await["id"].as_str().unwrap().to_string();
        ids.insert(name, id);
    }
    let names = |page: &Value| -> Vec<String> {
        page["accessKeys"].as_array().unwrap().iter().map(|k| k["name"].as_str().unwrap().to_string()).collect()
    };
    // Newest first, ASCII letters without regard to case, the prefix only.
    let page = h.ok("GET", "/access-keys?q=WEB", None).await;
    assert_eq!(names(&page), ["web-zz", "webhook", "web-api", "Web-App"]);
    assert_eq!(names(&h.ok("GET", "/access-keys?q=web-", None).await), ["web-zz", "web-api", "Web-App"]);
    assert_eq!(names(&h.ok("GET", "/access-keys?q=w%C3%A9", None).await), ["Wéb"]);
    assert_eq!(names(&h.ok("GET", "/access-keys?q=W%C3%89", None).await), Vec::<String>::new());
    assert_eq!(names(&h.ok("GET", "/access-keys?q=app", None).await), Vec::<String>::new());
    assert_eq!(names(&h.ok("GET", "/access-keys?q=", None).await).len(), 8, "empty q: no filter");
    // The next page keeps the filter.
    let page = h.ok("GET", "/access-keys?q=web&limit=2", None).await;
    assert_eq!(names(&page), ["web-zz", "webhook"]);
    let next = page["nextPageUri"].as_str().unwrap();
    assert_eq!(next, format!("/access-keys?limit=2&beforeId={}&q=web", ids["webhook"]));
    let page = h.ok("GET", next, None).await;
    assert_eq!(names(&page), ["web-api", "Web-App"]);
    assert_eq!(page["nextPageUri"], Value::Null);
    let (s, v) = h.api("GET", &format!("/access-keys?q={}", "a".repeat(256)), None).await;
    assert_error(s, &v, StatusCode::BAD_REQUEST, "invalid_field");
    assert_eq!(v["details"]["field"], "q");
}

#[tokio::test]
async fn pagination_newest_first_with_next_page_uri() {
    let h = harness();
    let mut ids = Vec::new();
    for i in 0..7 {
        ids.push(
            h.ok("POST", "/access-keys", Some(json!({"name": format!("k{i}")}))).await["id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    ids.reverse();
    let mut seen = Vec::new();
    let mut uri = "/access-keys?limit=3".to_string();
    let mut pages = 0;
    loop {
        let page = h.ok("GET", &uri, None).await;
        pages += 1;
        assert_eq!(page["uri"], "/access-keys");
        for k in page["accessKeys"].as_array().unwrap() {
            seen.push(k["id"].as_str().unwrap().to_string());
        }
        match page["nextPageUri"].as_str() {
            Some(next) => {
                assert!(next.starts_with("/access-keys?limit=3&beforeId=ak_"), "{next}");
                uri = next.to_string();
            }
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, ids);
    // Exactly a page: no next page.
    let page = h.ok("GET", "/access-keys?limit=7", None).await;
    assert_eq!(page["nextPageUri"], Value::Null);
    // A deleted beforeId still pages correctly.
    h.ok("DELETE", &format!("/access-keys/{}", ids[2]), None).await;
    let page = h.ok("GET", &format!("/access-keys?limit=2&beforeId={}", ids[2]), None).await;
    let got: Vec<&str> = page["accessKeys"].as_array().unwrap().iter().map(|k| k["id"].as_str().unwrap()).collect();
    assert_eq!(got, [ids[3].as_str(), ids[4].as_str()]);
    for bad in ["limit=0", "limit=101", "limit=abc", "limit=-1", "beforeId=%20x", "foo=1"] {
        let (s, v) = h.api("GET", &format!("/access-keys?{bad}"), None).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}: {v}");
        assert!(v["errorCode"].is_string());
    }
    let (s, v) = h.api("GET", "/access-keys?limit=0", None).await;
    assert_error(s, &v, StatusCode::BAD_REQUEST, "invalid_field");
    assert_eq!(v["details"]["field"], "limit");
    // Other lists page the same way.
    for i in 0..3 {
        h.ok(
            "POST",
            "/provider-keys",
            Some(json!({"providerId": "openai", "name": format!("p{i}"), "value": format!("sk-value-{i}")})),
        )
        .await;
        h.ok("POST", "/access-key-configurations", Some(json!({"name": format!("c{i}")}))).await;
    }
    for (uri, key) in [("/provider-keys", "providerKeys"), ("/access-key-configurations", "accessKeyConfigurations")] {
        let page = h.ok("GET", &format!("{uri}?limit=2"), None).await;
        assert_eq!(page[key].as_array().unwrap().len(), 2);
        let next = page["nextPageUri"].as_str().unwrap();
        assert!(next.starts_with(&format!("{uri}?limit=2&beforeId=")));
        let page2 = h.ok("GET", next, None).await;
        assert_eq!(page2[key].as_array().unwrap().len(), 1);
        assert_eq!(page2["nextPageUri"], Value::Null);
    }
}

#[tokio::test]
async fn provider_keys_value_is_write_only() {
    let h = harness();
    let value = "sk-proj-SECRET-abcdefghijklmnop-9876";
    let (s, pk) = h
        .api(
            "POST",
            "/provider-keys",
            Some(json!({"providerId": "openai", "name": "main", "value": value, "managed": true, "description": "d"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let id = pk["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("pk_"));
    assert_eq!(pk["keyRedacted"], "sk-...9876");
    assert_eq!(pk["providerId"], "openai");
    assert_eq!(pk["managed"], true);
    assert_eq!(pk["lastUsed"], Value::Null);
    assert!(pk.get("value").is_none());
    let short =
        h.ok("POST", "/provider-keys", Some(json!({"providerId": "openai", "name": "s", "value": "short"}))).await;
    assert_eq!(short["keyRedacted"], "...");
    assert_eq!(short["managed"], false);

    for resp in [
        h.ok("GET", &format!("/provider-keys/{id}"), None).await,
        h.ok("GET", "/provider-keys", None).await,
        h.ok(
            "PATCH",
            &format!("/provider-keys/{id}"),
            Some(json!({"name": "renamed", "managed": false, "metadata": "m"})),
        )
        .await,
    ] {
        assert!(!resp.to_string().contains("SECRET"), "{resp}");
    }
    let (s, v) = h.api("PATCH", &format!("/provider-keys/{id}"), Some(json!({"value": "sk-new"}))).await;
    assert_error(s, &v, StatusCode::BAD_REQUEST, "invalid_field");
    assert_eq!(v["details"]["field"], "value");
    let got = h.ok("GET", &format!("/provider-keys/{id}"), None).await;
    assert_eq!(got["name"], "renamed");
    assert_eq!(got["managed"], false);
    assert_eq!(got["metadata"], "m");

    let rotated = h
        .ok("POST", &format!("/provider-keys/{id}/rotate"), Some(json!({"value": "sk-rotated-value-000011112222"})))
        .await;
    assert_eq!(rotated["id"], id.as_str());
    assert_eq!(rotated["keyRedacted"], "sk-...2222");
    let (s, v) = h.api("POST", &format!("/provider-keys/{id}/rotate"), Some(json!({}))).await;
    assert_error(s, &v, StatusCode::BAD_REQUEST, "invalid_field");
    assert_eq!(v["details"]["field"], "value");

    let (s, _) = h.api("DELETE", &format!("/provider-keys/{}", short["id"].as_str().unwrap()), None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn configurations_crud_and_conflicts() {
    let h = harness();
    let pk = h
        .ok(
            "POST",
            "/provider-keys",
            Some(json!({"providerId": "openai", "name": "o", "value": "sk-openai-0000000000001"})),
        )
        .await;
    let pk_id = pk["id"].as_str().unwrap().to_string();
    let anth = h
        .ok(
            "POST",
            "/provider-keys",
            Some(json!({"providerId": "anthropic", "name": "a", "value": "sk-ant-000000000000001"})),
        )
        .await;
    let body = json!({
        "name": "team-a",
        "description": "team A",
        "access": {"providers": {"allow": ["openai", "anthropic"]}, "models": {"allow": ["openai/gpt-4o", "anthropic/claude-*"]}},
        "router": {"rules": [{"provider": "openai", "steps": [{"type": "user", "keys": [{"id": pk_id}]}, {"type": "managed"}]}]}
    });
    let (s, cfg) = h.api("POST", "/access-key-configurations", Some(body.clone())).await;
    assert_eq!(s, StatusCode::CREATED, "{cfg}");
    let cid = cfg["id"].as_str().unwrap().to_string();
    assert!(cid.starts_with("akc_"));
    assert_eq!(cfg["access"], body["access"]);
    assert_eq!(cfg["router"]["rules"][0]["steps"][0]["keySelectionStrategy"], "ordered");
    assert_eq!(cfg["router"]["rules"][0]["steps"][1], json!({"type": "managed"}));

    // Duplicate name.
    let (s, v) = h.api("POST", "/access-key-configurations", Some(json!({"name": "team-a"}))).await;
    assert_error(s, &v, StatusCode::CONFLICT, "conflict");
    let other = h.ok("POST", "/access-key-configurations", Some(json!({"name": "team-b"}))).await;
    assert_eq!(other["access"], Value::Null);
    assert_eq!(other["router"], Value::Null);
    let (s, v) = h
        .api(
            "PATCH",
            &format!("/access-key-configurations/{}", other["id"].as_str().unwrap()),
            Some(json!({"name": "team-a"})),
        )
        .await;
    assert_error(s, &v, StatusCode::CONFLICT, "conflict");

    // A key of another provider in a user step.
    let wrong = json!({"name": "w", "router": {"rules": [{"provider": "openai", "steps": [{"type": "user", "keys": [{"id": anth["id"]}]}]}]}});
    let (s, v) = h.api("POST", "/access-key-configurations", Some(wrong)).await;
    assert_error(s, &v, StatusCode::BAD_REQUEST, "invalid_field");
    assert_eq!(v["details"]["field"], "router.rules[0].steps[0].keys[0].id");

    // Referenced provider key cannot be deleted; provider with keys cannot be deleted.
    let (s, v) = h.api("DELETE", &format!("/provider-keys/{pk_id}"), None).await;
    assert_error(s, &v, StatusCode::CONFLICT, "conflict");

    // In use by an access key.
    let key = h.ok("POST", "/access-keys", Some(json!({"name": "k", "accessKeyConfigurationId": cid}))).await;
    assert_eq!(key["accessKeyConfiguration"], json!({"id": cid, "name": "team-a"}));
    let (s, v) = h.api("DELETE", &format!("/access-key-configurations/{cid}"), None).await;
    assert_error(s, &v, StatusCode::CONFLICT, "conflict");

    // PATCH replaces the given top-level fields only.
    let patched = h
        .ok("PATCH", &format!("/access-key-configurations/{cid}"), Some(json!({"router": null, "name": "team-a2"})))
        .await;
    assert_eq!(patched["router"], Value::Null);
    assert_eq!(patched["access"], body["access"]);
    assert_eq!(patched["description"], "team A");
    let key_now = h.ok("GET", &format!("/access-keys/{}", key["id"].as_str().unwrap()), None).await;
    assert_eq!(key_now["accessKeyConfiguration"]["name"], "team-a2");
    let patched = h
        .ok("PATCH", &format!("/access-key-configurations/{cid}"), Some(json!({"access": {"models": {"allow": []}}})))
        .await;
    assert_eq!(patched["access"], json!({"models": {"allow": []}}));

    // Now the provider key is free.
    let (s, _) = h.api("DELETE", &format!("/provider-keys/{pk_id}"), None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);

    // Detach and delete.
    let detached = h
        .ok(
            "PATCH",
            &format!("/access-keys/{}", key["id"].as_str().unwrap()),
            Some(json!({"accessKeyConfigurationId": null})),
        )
        .await;
    assert_eq!(detached["accessKeyConfiguration"], Value::Null);
    let (s, _) = h.api("DELETE", &format!("/access-key-configurations/{cid}"), None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, v) = h.api("GET", &format!("/access-key-configurations/{cid}"), None).await;
    assert_error(s, &v, StatusCode::NOT_FOUND, "not_found");
    let listed = h.ok("GET", "/access-key-configurations", None).await;
    assert_eq!(listed["accessKeyConfigurations"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn providers_catalog_custom_and_overrides() {
    let h = harness();
    let list = h.ok("GET", "/providers", None).await;
    let ids: Vec<&str> = list["providers"].as_array().unwrap().iter().map(|p| p["id"].as_str().unwrap()).collect();
    for want in ["openai", "anthropic", "google", "groq", "deepseek", "mistral", "openrouter", "xai"] {
        assert!(ids.contains(&want), "{want}");
    }
    let anthropic = h.ok("GET", "/providers/anthropic", None).await;
    assert_eq!(anthropic["format"], "anthropic");
    assert_eq!(anthropic["auth"], "x-api-key");
    assert_eq!(anthropic["builtIn"], true);
    assert_eq!(anthropic["models"], json!(["claude-*"]));

    let (s, p) = h
        .api("POST", "/providers", Some(json!({"providerId": "vllm", "name": "vLLM", "baseUrl": "http://127.0.0.1:8000/v1/", "format": "openai", "models": ["llama-*"]})))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{p}");
    assert_eq!(p["id"], "vllm");
    assert_eq!(p["baseUrl"], "http://127.0.0.1:8000/v1");
    assert_eq!(p["auth"], "bearer");
    assert_eq!(p["builtIn"], false);
    let claude = h
        .ok("POST", "/providers", Some(json!({"providerId": "claude-proxy", "name": "c", "baseUrl": "https://proxy.example/anthropic", "format": "anthropic"})))
        .await;
    assert_eq!(claude["auth"], "x-api-key");
    assert_eq!(claude["models"], json!([]));
    let (s, v) = h
        .api(
            "POST",
            "/providers",
            Some(json!({"providerId": "openai", "name": "dup", "baseUrl": "http://x", "format": "openai"})),
        )
        .await;
    assert_error(s, &v, StatusCode::CONFLICT, "conflict");

    // Override a built-in (e.g. corporate egress).
    let o = h
        .ok(
            "PATCH",
            "/providers/openai",
            Some(json!({"baseUrl": "http://egress.internal:3128/openai/v1", "auth": "api-key"})),
        )
        .await;
    assert_eq!(o["baseUrl"], "http://egress.internal:3128/openai/v1");
    assert_eq!(o["auth"], "api-key");
    assert_eq!(o["builtIn"], true);
    assert_eq!(o["name"], "OpenAI");
    let (s, v) = h.api("DELETE", "/providers/openai", None).await;
    assert_error(s, &v, StatusCode::CONFLICT, "conflict");

    // In use by a provider key, then by a configuration.
    let pk = h
        .ok(
            "POST",
            "/provider-keys",
            Some(json!({"providerId": "vllm", "name": "v", "value": "token-vllm-0000000001"})),
        )
        .await;
    let (s, v) = h.api("DELETE", "/providers/vllm", None).await;
    assert_error(s, &v, StatusCode::CONFLICT, "conflict");
    h.ok("DELETE", &format!("/provider-keys/{}", pk["id"].as_str().unwrap()), None).await;
    let cfg = h
        .ok(
            "POST",
            "/access-key-configurations",
            Some(json!({"name": "uses-vllm", "access": {"models": {"allow": ["vllm/llama-3"]}}})),
        )
        .await;
    let (s, v) = h.api("DELETE", "/providers/vllm", None).await;
    assert_error(s, &v, StatusCode::CONFLICT, "conflict");
    h.ok("DELETE", &format!("/access-key-configurations/{}", cfg["id"].as_str().unwrap()), None).await;
    let (s, _) = h.api("DELETE", "/providers/vllm", None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, v) = h.api("GET", "/providers/vllm", None).await;
    assert_error(s, &v, StatusCode::NOT_FOUND, "not_found");
}

#[tokio::test]
async fn secrets_never_reach_the_disk_in_clear() {
    let h = harness();
    let mut secrets = Vec::new();
    for i in 0..20 {
        let k = h.ok("POST", "/access-keys", Some(json!({"name": format!("k{i}")}))).await;
        secrets.push(k["token"].as_str().unwrap().to_string());
        let r = h
            .ok(
                "POST",
                &format!("/access-keys/{}/rotate", k["id"].as_str().unwrap()),
                Some(json!({"gracePeriodSeconds": 60})),
            )
            .await;
        secrets.push(r["token"].as_str().unwrap().to_string());
        let value = format!("sk-live-provider-secret-{i:04}-ZZZZ");
        let pk = h
            .ok(
                "POST",
                "/provider-keys",
                Some(json!({"providerId": "openai", "name": "p", "value": value, "managed": true})),
            )
            .await;
        secrets.push(value);
        let rotated = format!("sk-rotated-provider-secret-{i:04}-YYYY");
        h.ok("POST", &format!("/provider-keys/{}/rotate", pk["id"].as_str().unwrap()), Some(json!({"value": rotated})))
            .await;
        secrets.push(rotated);
    }
    // The lookup path decrypts, proving the values are there (encrypted).
    let doc = h.lookup_token(&secrets[1]).await;
    assert_eq!(doc["status"], "active");
    let mut scanned = 0;
    for entry in std::fs::read_dir(h.dir.path()).unwrap() {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        scanned += bytes.len();
        for s in &secrets {
            assert!(!bytes.windows(s.len()).any(|w| w == s.as_bytes()), "{s} in clear in {}", path.display());
        }
    }
    if h.pg.is_none() {
        assert!(scanned > 0);
        assert!(h.dir.path().join("keygate.db-wal").exists());
    }
}

#[tokio::test]
async fn internal_errors_are_500_without_details() {
    let h = harness();
    h.ok(
        "POST",
        "/provider-keys",
        Some(json!({"providerId": "openai", "name": "p", "value": "sk-aaaaaaaaaaaaaaaaaaaa", "managed": true})),
    )
    .await;
    let k = h.ok("POST", "/access-keys", Some(json!({"name": "k"}))).await;
    h.sql(&format!(
        "UPDATE provider_keys SET secret = {}",
        h.blob_literal("00112233445566778899aabbccddeeff00112233445566778899")
    ));
    let digest = keygate_proto::token::digest(k["token"].as_str().unwrap());
    let (s, v) = h.gw(&format!("/v1/lookup/{digest}")).await;
    assert_error(s, &v, StatusCode::INTERNAL_SERVER_ERROR, "internal_error");
    assert_eq!(v["details"], json!({}));
    assert_eq!(v["msg"], "internal error");
}

#[tokio::test]
async fn whoami_names_the_bootstrap_admin() {
    let h = harness();
    assert_eq!(
        h.ok("GET", "/whoami", None).await,
        json!({"actor": "bootstrap", "name": "bootstrap admin token", "role": "admin"})
    );
    let (s, v) = send(&h.api, "GET", "/whoami", Some(GATEWAY), None).await;
    assert_error(s, &v, StatusCode::UNAUTHORIZED, "unauthorized");
}
