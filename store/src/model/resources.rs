//! API resources: what the management API answers (and the configuration
//! specs it stores). `AccessKey` carries a token in two answers only and
//! implements no `Debug`.

use keygate_proto::lookup::{AuthStyle, Format};
use serde::{Deserialize, Serialize};

use crate::api::principal::{Role, Via};
pub use crate::policy::alerts::AlertEvent;
use crate::pricing::Window;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfigRef {
    pub id: String,
    pub name: String,
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AccessKey {
    pub id: String,
    pub name: String,
    pub description: String,
    pub metadata: String,
    pub created_at: String,
    pub updated_at: String,
    pub last_used: Option<String>,
    pub key_redacted: String,
    pub access_key_configuration: Option<ConfigRef>,
    pub expires_at: Option<String>,
    pub disabled: bool,
    pub budget: Option<BudgetSpec>,
    /// The current window of `budget` (null without a budget).
    pub budget_usage: Option<BudgetUsage>,
    /// This key's own concurrency cap (per Envoy): when set, it replaces its
    /// configuration's `requestLimits.maxConcurrentRequests` (null: the
    /// configuration's, if any).
    #[serde(default)]
    pub max_concurrent_requests: Option<u64>,
    /// Only in the create and rotate responses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

/// A management API key (`mk_…`): a named credential of the management API
/// with a role. Carries its token in the create and rotate answers only.
#[derive(Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiKey {
    pub id: String,
    pub name: String,
    pub role: Role,
    /// `kgm_` and the token's first 8 hex characters, to recognise it.
    pub token_prefix: String,
    pub created_at: String,
    pub updated_at: String,
    /// Last authenticated call, to the minute (null: never used).
    pub last_used_at: Option<String>,
    /// Only in the create and rotate responses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

/// One audit-log entry: a management change, who made it and through what.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditEntry {
    pub id: String,
    /// RFC 3339 UTC, milliseconds.
    pub time: String,
    /// The same instant, unix milliseconds.
    pub time_ms: i64,
    /// `bootstrap` or the management key's id (`mk_…`).
    pub actor: String,
    pub via: Via,
    /// `<resource type>.<verb>`: `access_key.create`, `api_key.role_change`, ...
    pub action: String,
    pub resource_type: String,
    pub resource_id: Option<String>,
    /// The changed fields with their new values; secrets are `[redacted]`.
    pub changes: serde_json::Value,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProviderKey {
    pub id: String,
    pub provider_id: String,
    pub name: String,
    pub description: String,
    pub metadata: String,
    pub managed: bool,
    pub key_redacted: String,
    pub created_at: String,
    pub updated_at: String,
    pub last_used: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Provider {
    pub id: String,
    pub name: String,
    pub base_url: String,
    pub format: Format,
    pub auth: AuthStyle,
    pub models: Vec<String>,
    pub built_in: bool,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AccessKeyConfiguration {
    pub id: String,
    pub name: String,
    pub description: String,
    pub metadata: String,
    pub access: Option<AccessSpec>,
    pub router: Option<RouterSpec>,
    pub rate_limits: Option<RateLimitsSpec>,
    /// What one request may ask for and how long it may take.
    #[serde(default)]
    pub request_limits: Option<RequestLimitsSpec>,
    /// One budget shared by every access key using this configuration.
    pub budget: Option<BudgetSpec>,
    pub budget_usage: Option<BudgetUsage>,
    pub created_at: String,
    pub updated_at: String,
}

/// Per-key rate limits of a configuration (enforced by the Envoy filter).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RateLimitsSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_minute: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_minute: Option<u64>,
}

/// Per-request limits of a configuration (enforced by the Envoy filter).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RequestLimitsSpec {
    /// Most input tokens a request may carry, estimated from its body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_input_tokens: Option<u64>,
    /// Most output tokens a request may ask for (`max_tokens` and its kin,
    /// times `n`); a generating request must state a limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_output_tokens: Option<u64>,
    /// Most of a key's requests one Envoy carries at once (streams included).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent_requests: Option<u64>,
    /// Longest wait for one provider key's answer (Envoy's per-try timeout).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt_timeout_ms: Option<u64>,
    /// Longest time for the whole request, every attempt and the streamed
    /// answer included (Envoy's route timeout).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_timeout_ms: Option<u64>,
}

/// A spending limit: tokens and/or USD per window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BudgetSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_usd: Option<f64>,
    #[serde(default)]
    pub window: Window,
    /// IANA time zone the windows start in (local midnight); absent = UTC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
}

/// What the current window of a budget has used and holds in reservations.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BudgetUsage {
    pub tokens: i64,
    pub cost_usd: f64,
    pub reserved_tokens: i64,
    pub reserved_cost_usd: f64,
    /// Start of the current window; null for window `none`.
    pub window_start: Option<String>,
    /// Start of the next window (when this one's usage stops counting); null
    /// for window `none`.
    pub resets_at: Option<String>,
}

/// The gateway-wide credit balance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Credits {
    pub enabled: bool,
    pub balance_usd: f64,
    pub reserved_usd: f64,
}

/// One entry of the price catalog (USD per million tokens).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PriceEntry {
    pub provider: String,
    pub model: String,
    pub input_per_million_usd: f64,
    pub output_per_million_usd: f64,
    pub cached_input_per_million_usd: Option<f64>,
    pub updated_at: String,
}

/// One stored usage record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UsageItem {
    pub id: String,
    pub request_id: String,
    pub access_key_id: String,
    pub access_key_configuration_id: Option<String>,
    pub provider: String,
    pub model: Option<String>,
    pub provider_key_id: Option<String>,
    pub attempt: u32,
    #[serde(rename = "final")]
    pub final_attempt: bool,
    pub status: u16,
    pub streaming: bool,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cached_tokens: i64,
    pub reasoning_tokens: i64,
    pub cost_usd: f64,
    pub started_at: String,
    pub ended_at: String,
    /// The tokens are the gateway's estimate, not the provider's figures.
    pub estimated: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SummaryRow {
    pub group: String,
    /// Final records (requests answered).
    pub requests: i64,
    /// Upstream attempts (records with attempt > 0).
    pub attempts: i64,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cost_usd: f64,
}

/// A webhook that hears of budget, credit and key-expiry alerts. Its secret
/// is write-only: shown once, in the create answer (no `Debug`). Its URL is
/// often the receiver's only credential (Slack's `/services/T…/B…/<secret>`,
/// Discord's `/api/webhooks/{id}/{token}`): only an admin is shown it whole
/// ([`AlertWebhook::shown_to`]).
#[derive(Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AlertWebhook {
    pub id: String,
    /// Whole for an admin; else [`redact_webhook_url`]'s form.
    pub url: String,
    /// [`webhook_url_fingerprint`] of the whole URL, for every role: tells
    /// webhooks apart without showing their URLs.
    pub url_fingerprint: String,
    /// Null: store-wide; else only that configuration's budget and its keys.
    pub configuration_id: Option<String>,
    /// Percent of a limit, ascending.
    pub thresholds: Vec<u8>,
    pub events: Vec<AlertEvent>,
    pub expiry_warning_days: u32,
    pub enabled: bool,
    pub created_at: String,
    pub updated_at: String,
    /// Only in the create answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

impl AlertWebhook {
    /// The webhook as `role` is shown it: an admin whole, any other role
    /// with its URL redacted ([`redact_webhook_url`]). The fingerprint stays.
    pub fn shown_to(mut self, role: Role) -> Self {
        if role < Role::Admin {
            self.url = redact_webhook_url(&self.url);
        }
        self
    }
}

/// A webhook URL as a role below admin (and the audit log) shows it: the
/// scheme and the authority (host and port; user info never), then `/…`
/// in place of any path or query — the part that holds a receiver's
/// credential. `https://hooks.slack.com/services/T0/B0/xyz` →
/// `https://hooks.slack.com/…`; `https://hooks.example` and
/// `https://hooks.example/` stay as they are (nothing follows the host).
pub fn redact_webhook_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "…".to_string();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if tail.is_empty() || tail == "/" {
        format!("{scheme}://{host}{tail}")
    } else {
        format!("{scheme}://{host}/…")
    }
}

/// A webhook URL's fingerprint: the first 12 hex digits of the SHA-256 of
/// the whole URL — the same URL, the same fingerprint, whoever asks.
pub fn webhook_url_fingerprint(url: &str) -> String {
    use sha2::{Digest, Sha256};
    let mut hex = hex::encode(Sha256::digest(url.as_bytes()));
    hex.truncate(12);
    hex
}

/// One alert sent (or being sent) to a webhook, with its attempts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AlertDelivery {
    pub id: String,
    pub webhook_id: String,
    /// `budget.threshold`, `credits.threshold` or `key.expiry`.
    pub event: String,
    /// `pending`, `delivered` or `failed`.
    pub status: String,
    pub attempts: u32,
    /// The HTTP status of the last attempt (null: none answered).
    pub last_status: Option<u16>,
    /// Why the last attempt failed (never a secret).
    pub last_error: Option<String>,
    pub created_at: String,
    pub delivered_at: Option<String>,
    /// When a pending delivery is tried next.
    pub next_attempt_at: Option<String>,
    /// The JSON body sent (the same on every attempt).
    pub payload: serde_json::Value,
    pub attempt_log: Vec<AlertAttempt>,
}

/// One attempt of a delivery.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AlertAttempt {
    pub attempt: u32,
    pub at: String,
    pub duration_ms: u64,
    pub status: Option<u16>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AccessSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub providers: Option<AllowList>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub models: Option<AllowList>,
    /// Provider-account endpoints (`files.read`, `batches.*`, ...): refused
    /// unless listed here (absent = none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoints: Option<AllowList>,
    /// Client addresses (IPv4/IPv6 addresses and CIDR blocks) the key may be
    /// used from, as Envoy resolves the client (absent = any).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ips: Option<AllowList>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AllowList {
    pub allow: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RouterSpec {
    pub rules: Vec<RuleSpec>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RuleSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    pub steps: Vec<StepSpec>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum StepSpec {
    #[serde(rename_all = "camelCase")]
    User {
        #[serde(default)]
        key_selection_strategy: KeySelectionStrategy,
        keys: Vec<KeyRef>,
    },
    Managed {},
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeySelectionStrategy {
    #[default]
    Ordered,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct KeyRef {
    pub id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Page<T> {
    #[serde(flatten)]
    pub items: T,
    pub uri: String,
    pub next_page_uri: Option<String>,
}

impl RuleSpec {
    /// The provider this rule is about (from `provider` or the model's prefix).
    pub fn provider_id(&self) -> Option<&str> {
        self.provider.as_deref().or_else(|| self.model.as_deref().and_then(|m| m.split_once('/').map(|(p, _)| p)))
    }

    /// The provider-local model (pattern) of a model rule.
    pub fn local_model(&self) -> Option<&str> {
        self.model.as_deref().and_then(|m| m.split_once('/').map(|(_, l)| l))
    }
}

/// Redacted form of a provider-key value: first 3 + `...` + last 4 characters
/// when the value is long enough (≥ 16 characters), else `...`.
pub fn redact_value(value: &str) -> String {
    let n = value.chars().count();
    if n >= 16 {
        let head: String = value.chars().take(3).collect();
        let tail: String = value.chars().skip(n - 4).collect();
        format!("{head}...{tail}")
    } else {
        "...".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction() {
        assert_eq!(redact_value("sk-proj-abcdefghijklmnop1234"), "sk-...1234");
        assert_eq!(redact_value("short"), "...");
    }

    #[test]
    fn webhook_urls_are_redacted_to_their_scheme_and_authority() {
        for (url, shown) in [
            ("https://hooks.slack.com/services/T000/B000/XXXXXXXXXXXXXXXXXXXXXXXX", "https://hooks.slack.com/…"),
            ("https://discord.com/api/webhooks/123/tok-en_", "https://discord.com/…"),
            ("http://127.0.0.1:9000/h", "http://127.0.0.1:9000/…"),
            ("http://[::1]:8080/a/b", "http://[::1]:8080/…"),
            ("https://hooks.example/h?token=1", "https://hooks.example/…"),
            ("https://hooks.example?token=1", "https://hooks.example/…"),
            ("https://user:pw@hooks.example/h", "https://hooks.example/…"),
            ("https://hooks.example", "https://hooks.example"),
            ("https://hooks.example/", "https://hooks.example/"),
            ("not a url", "…"),
        ] {
            assert_eq!(redact_webhook_url(url), shown, "{url}");
        }
        let fp = webhook_url_fingerprint("https://hooks.example/k");
        // sha256("https://hooks.example/k"), as `printf %s … | sha256sum` gives it.
        assert_eq!(fp, "ae5e59b1012c");
        assert_ne!(webhook_url_fingerprint("https://hooks.example/k2"), fp);
    }

    #[test]
    fn step_parsing() {
        let r: RouterSpec = serde_json::from_str(
            r#"{"rules":[{"provider":"openai","steps":[{"type":"user","keys":[{"id":"pk_1"}]},{"type":"managed"}]}]}"#,
        )
        .unwrap();
        assert_eq!(
            r.rules[0].steps[0],
            StepSpec::User {
                key_selection_strategy: KeySelectionStrategy::Ordered,
                keys: vec![KeyRef { id: "pk_1".into() }]
            }
        );
        assert!(serde_json::from_str::<StepSpec>(r#"{"type":"managed","keys":[]}"#).is_err());
        assert!(serde_json::from_str::<StepSpec>(r#"{"type":"user","keys":[],"x":1}"#).is_err());
        assert!(
            serde_json::from_str::<StepSpec>(r#"{"type":"user","keySelectionStrategy":"random","keys":[]}"#).is_err()
        );
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["rules"][0]["steps"][0]["keySelectionStrategy"], "ordered");
        assert_eq!(json["rules"][0]["steps"][1], serde_json::json!({"type":"managed"}));
    }
}
