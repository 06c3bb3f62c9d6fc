//! What an access key may learn about itself (`GET /keygate/v1/key` at the
//! gateway, answered from the store's `GET /v1/self/{digest}`): its name,
//! redacted token, configuration, what it may reach, its limits and what its
//! budgets have left. Nothing secret, nothing about other keys: provider keys
//! appear only as the providers they serve, budgets only as this key's own
//! and its configuration's.

use keygate_proto::lookup::{KeyStatus, Lookup};
use serde_json::{json, Value};

use crate::ids::rfc3339_secs;
use crate::model::{AccessKey, AccessKeyConfiguration, BudgetSpec, BudgetUsage};

/// The answer for an active key (`None` for any other status: the gateway
/// refuses such a key before it asks).
pub fn describe(lookup: &Lookup, key: &AccessKey, config: Option<&AccessKeyConfiguration>) -> Option<Value> {
    if lookup.status != KeyStatus::Active {
        return None;
    }
    let access = lookup.access.as_deref();
    // Providers it can reach: allowed and with a credential to send.
    let providers: Vec<&str> = lookup
        .providers
        .iter()
        .filter(|p| p.routes.iter().any(|r| !r.keys.is_empty()))
        .map(|p| p.id.as_str())
        .collect();
    let mut budgets = Vec::new();
    if let Some(spec) = &key.budget {
        budgets.push(budget("accessKey", spec, key.budget_usage.as_ref()));
    }
    if let Some(c) = config {
        if let Some(spec) = &c.budget {
            budgets.push(budget("configuration", spec, c.budget_usage.as_ref()));
        }
    }
    Some(json!({
        "object": "keygate.access_key",
        "id": key.id,
        "name": key.name,
        "keyRedacted": key.key_redacted,
        "expiresAt": key.expires_at,
        // Key expiry or the end of a rotation grace period, whichever is first.
        "validUntil": lookup.key.as_ref().and_then(|k| k.valid_until).map(rfc3339_secs),
        "configuration": config.map(|c| json!({"id": c.id, "name": c.name})),
        "allowed": {
            "providers": providers,
            // null: any model of those providers.
            "models": access.and_then(|a| a.models.clone()),
            // Account endpoints (files, batches, ...): none unless listed.
            "endpoints": access.and_then(|a| a.endpoints.clone()).unwrap_or_default(),
            // null: from any address.
            "clientIps": access.and_then(|a| a.client_ips.clone()),
        },
        // `rateLimits` is the gateway's to add: as its Envoy counts them.
        "requestLimits": lookup.request_limits,
        "budgets": budgets,
    }))
}

/// A budget, its current window's usage, and what is left of it.
fn budget(scope: &str, spec: &BudgetSpec, usage: Option<&BudgetUsage>) -> Value {
    let left = |limit: Option<f64>, used: f64| limit.map(|l| (l - used).max(0.0));
    let used_tokens = usage.map_or(0, |u| u.tokens.saturating_add(u.reserved_tokens));
    let used_usd = usage.map_or(0.0, |u| u.cost_usd + u.reserved_cost_usd);
    json!({
        "scope": scope,
        "limit": spec,
        "usage": usage,
        "remainingTokens": spec.tokens.map(|t| t.saturating_sub(u64::try_from(used_tokens).unwrap_or(0))),
        "remainingCostUsd": left(spec.cost_usd, used_usd),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(status: &str) -> Lookup {
        serde_json::from_value(json!({
            "schema": 1, "version": 1, "status": status,
            "key": {"id": "ak_1", "configId": "akc_1", "validUntil": 1_900_000_000},
            "access": {"models": ["openai/gpt-4o"], "clientIps": ["10.0.0.0/8"]},
            "providers": [
                {"id": "openai", "format": "openai", "auth": "bearer", "baseUrl": "https://api.openai.com/v1",
                 "models": ["gpt-*"], "routes": [{"keys": [{"id": "pk_1", "value": "sk-secret-value"}]}]},
                {"id": "anthropic", "format": "anthropic", "auth": "x-api-key", "baseUrl": "https://api.anthropic.com/v1",
                 "models": ["claude-*"], "routes": []}
            ],
            "limits": {"requestsPerMinute": 60},
        }))
        .unwrap()
    }

    fn key(budget: Option<BudgetSpec>, usage: Option<BudgetUsage>) -> AccessKey {
        serde_json::from_value(json!({
            "id": "ak_1", "name": "ci", "description": "", "metadata": "", "createdAt": "x", "updatedAt": "x",
            "lastUsed": null, "keyRedacted": "kg-1a2b...9f8e", "accessKeyConfiguration": null, "expiresAt": null,
            "disabled": false, "budget": budget, "budgetUsage": usage,
        }))
        .unwrap()
    }

    #[test]
    fn an_active_key_describes_itself_and_nothing_secret() {
        let spec: BudgetSpec =
            serde_json::from_value(json!({"tokens": 1000, "costUsd": 5.0, "window": "daily"})).unwrap();
        let usage: BudgetUsage = serde_json::from_value(json!({"tokens": 300, "costUsd": 1.5, "reservedTokens": 100,
            "reservedCostUsd": 0.5, "windowStart": "2026-12-01T00:00:00Z"}))
        .unwrap();
        let v = describe(&lookup("active"), &key(Some(spec), Some(usage)), None).unwrap();
        assert_eq!(v["name"], "ci");
        assert_eq!(v["keyRedacted"], "kg-1a2b...9f8e");
        assert_eq!(v["allowed"]["providers"], json!(["openai"]), "only providers it can reach");
        assert_eq!(v["allowed"]["models"], json!(["openai/gpt-4o"]));
        assert_eq!(v["allowed"]["endpoints"], json!([]));
        assert_eq!(v["allowed"]["clientIps"], json!(["10.0.0.0/8"]));
        assert!(v.get("rateLimits").is_none(), "the gateway adds them, as its Envoy counts them");
        assert_eq!(v["budgets"][0]["remainingTokens"], 600);
        assert_eq!(v["budgets"][0]["remainingCostUsd"], 3.0);
        assert_eq!(v["validUntil"], "2030-03-17T17:46:40Z");
        let text = v.to_string();
        assert!(!text.contains("sk-secret") && !text.contains("pk_1"), "no provider key: {text}");
    }

    #[test]
    fn only_active_keys_are_described() {
        for status in ["disabled", "expired", "unknown"] {
            assert!(describe(&lookup(status), &key(None, None), None).is_none(), "{status}");
        }
    }
}
