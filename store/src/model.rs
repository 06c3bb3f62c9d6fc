//! API resources, request bodies and their validation.
//!
//! Request bodies reject unknown fields. Types that carry secrets (a token, a
//! provider-key value) do not implement `Debug`.

use keygate_proto::lookup::{AuthStyle, Format};
use serde::{Deserialize, Deserializer, Serialize};

use crate::error::StoreError;
use crate::pricing::{Window, MAX_PRICE_USD, MAX_USD};

pub const NAME_MAX: usize = 255;
pub const DESCRIPTION_MAX: usize = 255;
pub const METADATA_MAX: usize = 4096;
pub const PROVIDER_KEY_VALUE_MAX: usize = 8192;
pub const MAX_GRACE_SECONDS: u64 = 30 * 24 * 3600;
const LIST_MAX: usize = 1000;

/// `Option<Option<T>>` for PATCH: absent = `None`, `null` = `Some(None)`.
pub fn double_option<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// For PATCH fields that may be absent but not `null`.
pub fn non_null<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(d).map(Some)
}

// ---------------------------------------------------------------- resources

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
    /// Only in the create and rotate responses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
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

// ---------------------------------------------------------------- requests

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CreateAccessKey {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub metadata: Option<String>,
    #[serde(default)]
    pub access_key_configuration_id: Option<String>,
    #[serde(default)]
    pub expires_at: Option<String>,
    #[serde(default)]
    pub disabled: bool,
    #[serde(default)]
    pub budget: Option<BudgetSpec>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PatchAccessKey {
    #[serde(default, deserialize_with = "non_null")]
    pub name: Option<String>,
    #[serde(default, deserialize_with = "double_option")]
    pub description: Option<Option<String>>,
    #[serde(default, deserialize_with = "double_option")]
    pub metadata: Option<Option<String>>,
    #[serde(default, deserialize_with = "double_option")]
    pub access_key_configuration_id: Option<Option<String>>,
    #[serde(default, deserialize_with = "double_option")]
    pub expires_at: Option<Option<String>>,
    #[serde(default, deserialize_with = "non_null")]
    pub disabled: Option<bool>,
    #[serde(default, deserialize_with = "double_option")]
    pub budget: Option<Option<BudgetSpec>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RotateAccessKey {
    #[serde(default)]
    pub grace_period_seconds: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CreateProviderKey {
    pub provider_id: String,
    pub name: String,
    pub value: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub metadata: Option<String>,
    #[serde(default)]
    pub managed: bool,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PatchProviderKey {
    #[serde(default, deserialize_with = "non_null")]
    pub name: Option<String>,
    #[serde(default, deserialize_with = "double_option")]
    pub description: Option<Option<String>>,
    #[serde(default, deserialize_with = "double_option")]
    pub metadata: Option<Option<String>>,
    #[serde(default, deserialize_with = "non_null")]
    pub managed: Option<bool>,
    /// Refused: the value changes only through `rotate`.
    #[serde(default)]
    pub value: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RotateProviderKey {
    pub value: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CreateConfig {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub metadata: Option<String>,
    #[serde(default)]
    pub access: Option<AccessSpec>,
    #[serde(default)]
    pub router: Option<RouterSpec>,
    #[serde(default)]
    pub rate_limits: Option<RateLimitsSpec>,
    #[serde(default)]
    pub budget: Option<BudgetSpec>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PatchConfig {
    #[serde(default, deserialize_with = "non_null")]
    pub name: Option<String>,
    #[serde(default, deserialize_with = "double_option")]
    pub description: Option<Option<String>>,
    #[serde(default, deserialize_with = "double_option")]
    pub metadata: Option<Option<String>>,
    #[serde(default, deserialize_with = "double_option")]
    pub access: Option<Option<AccessSpec>>,
    #[serde(default, deserialize_with = "double_option")]
    pub router: Option<Option<RouterSpec>>,
    #[serde(default, deserialize_with = "double_option")]
    pub rate_limits: Option<Option<RateLimitsSpec>>,
    #[serde(default, deserialize_with = "double_option")]
    pub budget: Option<Option<BudgetSpec>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PutPrice {
    pub input_per_million_usd: f64,
    pub output_per_million_usd: f64,
    #[serde(default)]
    pub cached_input_per_million_usd: Option<f64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AddCredits {
    pub add_usd: f64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PatchCredits {
    pub enabled: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CreateProvider {
    pub provider_id: String,
    pub name: String,
    pub base_url: String,
    pub format: Format,
    #[serde(default)]
    pub auth: Option<AuthStyle>,
    #[serde(default)]
    pub models: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PatchProvider {
    #[serde(default, deserialize_with = "non_null")]
    pub name: Option<String>,
    #[serde(default, deserialize_with = "non_null")]
    pub base_url: Option<String>,
    #[serde(default, deserialize_with = "non_null")]
    pub format: Option<Format>,
    #[serde(default, deserialize_with = "non_null")]
    pub auth: Option<AuthStyle>,
    #[serde(default, deserialize_with = "non_null")]
    pub models: Option<Vec<String>>,
}

// ---------------------------------------------------------------- validation

type V<T> = Result<T, StoreError>;

/// Client input quoted in an error message: at most its first 64 characters,
/// so that an error never echoes a huge or hostile value whole.
pub fn short(s: &str) -> String {
    const MAX: usize = 64;
    match s.char_indices().nth(MAX) {
        Some((end, _)) => format!("{}…", s.get(..end).unwrap_or_default()),
        None => s.to_string(),
    }
}

fn chars(s: &str) -> usize {
    s.chars().count()
}

/// A required, non-blank name of at most [`NAME_MAX`] characters.
pub fn check_name(field: &str, s: &str) -> V<()> {
    if s.trim().is_empty() {
        return Err(StoreError::invalid(field, format!("{field} must not be empty")));
    }
    check_len(field, s, NAME_MAX)
}

pub fn check_len(field: &str, s: &str, max: usize) -> V<()> {
    if chars(s) > max {
        return Err(StoreError::invalid(field, format!("{field} is longer than {max} characters")));
    }
    Ok(())
}

pub fn check_description(s: &str) -> V<()> {
    check_len("description", s, DESCRIPTION_MAX)
}

pub fn check_metadata(s: &str) -> V<()> {
    check_len("metadata", s, METADATA_MAX)
}

/// Largest rate limit accepted (per minute).
pub const MAX_RATE: u64 = 1_000_000_000;
/// Largest token budget accepted.
pub const MAX_BUDGET_TOKENS: u64 = 1_000_000_000_000_000;

pub fn check_rate_limits(field: &str, r: &RateLimitsSpec) -> V<()> {
    for (name, v) in [("requestsPerMinute", r.requests_per_minute), ("tokensPerMinute", r.tokens_per_minute)] {
        if let Some(v) = v {
            if v == 0 || v > MAX_RATE {
                return Err(StoreError::invalid(
                    format!("{field}.{name}"),
                    format!("{field}.{name} must be an integer from 1 to {MAX_RATE}"),
                ));
            }
        }
    }
    Ok(())
}

/// A USD amount: finite, within `[min, max]`.
pub fn check_usd(field: &str, v: f64, min: f64, max: f64) -> V<()> {
    if !v.is_finite() || v < min || v > max {
        return Err(StoreError::invalid(field, format!("{field} must be a number from {min} to {max}")));
    }
    Ok(())
}

pub fn check_budget(field: &str, b: &BudgetSpec) -> V<()> {
    if b.tokens.is_none() && b.cost_usd.is_none() {
        return Err(StoreError::invalid(field, format!("{field} needs tokens and/or costUsd")));
    }
    if let Some(t) = b.tokens {
        if t > MAX_BUDGET_TOKENS {
            return Err(StoreError::invalid(
                format!("{field}.tokens"),
                format!("{field}.tokens must be at most {MAX_BUDGET_TOKENS}"),
            ));
        }
    }
    if let Some(c) = b.cost_usd {
        check_usd(&format!("{field}.costUsd"), c, 0.0, MAX_USD)?;
    }
    Ok(())
}

pub fn check_price(p: &PutPrice) -> V<()> {
    check_usd("inputPerMillionUsd", p.input_per_million_usd, 0.0, MAX_PRICE_USD)?;
    check_usd("outputPerMillionUsd", p.output_per_million_usd, 0.0, MAX_PRICE_USD)?;
    if let Some(c) = p.cached_input_per_million_usd {
        check_usd("cachedInputPerMillionUsd", c, 0.0, MAX_PRICE_USD)?;
    }
    Ok(())
}

/// Provider ids: `[a-z0-9][a-z0-9._-]{0,62}`.
pub fn is_provider_id(s: &str) -> bool {
    let b = s.as_bytes();
    matches!(b.first(), Some(c) if c.is_ascii_lowercase() || c.is_ascii_digit())
        && b.len() <= 63
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'.' | b'_' | b'-'))
}

/// Resource ids as we issue them (`ak_…`, `pk_…`, `akc_…`): short, `[a-z0-9_]`.
pub fn is_plausible_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_')
}

/// A model pattern: non-empty, no whitespace, `*` only as the last character.
pub fn check_model_pattern(field: &str, s: &str) -> V<()> {
    if s.is_empty() {
        return Err(StoreError::invalid(field, format!("{field}: empty model name")));
    }
    check_len(field, s, NAME_MAX)?;
    if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(StoreError::invalid(field, format!("{field}: model names contain no whitespace")));
    }
    if let Some(pos) = s.find('*') {
        if pos + 1 != s.len() {
            return Err(StoreError::invalid(
                field,
                format!("{field}: `*` is allowed only at the end of a model pattern"),
            ));
        }
    }
    Ok(())
}

/// A provider-qualified model (`openai/gpt-4o`, `anthropic/claude-*`):
/// returns `(provider, provider-local model)`.
pub fn split_qualified_model<'a>(field: &str, s: &'a str) -> V<(&'a str, &'a str)> {
    let Some((provider, model)) = s.split_once('/') else {
        return Err(StoreError::invalid(field, format!("{field}: models are provider-qualified, e.g. openai/gpt-4o")));
    };
    if !is_provider_id(provider) {
        return Err(StoreError::invalid(field, format!("{field}: `{}` is not a valid provider id", short(provider))));
    }
    check_model_pattern(field, model)?;
    check_len(field, s, NAME_MAX)?;
    Ok((provider, model))
}

pub fn check_models(field: &str, models: &[String]) -> V<()> {
    if models.len() > LIST_MAX {
        return Err(StoreError::invalid(field, format!("{field}: at most {LIST_MAX} entries")));
    }
    for (i, m) in models.iter().enumerate() {
        check_model_pattern(&format!("{field}[{i}]"), m)?;
    }
    Ok(())
}

/// Normalizes a provider base URL: `http(s)://host[:port][/path]`, no query,
/// fragment or user info; trailing slashes removed.
pub fn normalize_base_url(s: &str) -> V<String> {
    let field = "baseUrl";
    let bad = |why: &str| StoreError::invalid(field, format!("baseUrl {why}"));
    if chars(s) > 2048 {
        return Err(bad("is too long"));
    }
    let rest = if let Some(r) = s.strip_prefix("https://") {
        r
    } else if let Some(r) = s.strip_prefix("http://") {
        r
    } else {
        return Err(bad("must start with http:// or https://"));
    };
    if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad("must not contain whitespace"));
    }
    if s.contains('?') || s.contains('#') {
        return Err(bad("must not have a query or fragment"));
    }
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    // The path is the API root every request path is appended to: it must
    // mean the same to every server (no dot segment, escape or backslash).
    let path = path.trim_end_matches('/');
    let clean_segment = |seg: &str| {
        !matches!(seg, "" | "." | "..") && seg.bytes().all(|b| b.is_ascii_alphanumeric() || b"._:-~".contains(&b))
    };
    if !path.is_empty() && !path.get(1..).unwrap_or_default().split('/').all(clean_segment) {
        return Err(bad("path may hold only letters, digits and . _ : - ~, with no empty, `.` or `..` segment"));
    }
    if authority.contains('@') {
        return Err(bad("must not contain user info"));
    }
    let host_ok = if let Some(v6) = authority.strip_prefix('[') {
        match v6.split_once(']') {
            Some((h, port)) => {
                !h.is_empty()
                    && h.chars().all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.')
                    && (port.is_empty() || port.strip_prefix(':').is_some_and(valid_port))
            }
            None => false,
        }
    } else {
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        };
        !host.is_empty()
            && host.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_')
            && port.is_none_or(valid_port)
    };
    if !host_ok {
        return Err(bad("must have a valid host (and optional port)"));
    }
    Ok(s.trim_end_matches('/').to_string())
}

fn valid_port(p: &str) -> bool {
    !p.is_empty() && p.len() <= 5 && p.bytes().all(|c| c.is_ascii_digit()) && p.parse::<u16>().is_ok_and(|n| n > 0)
}

/// The default credential style of a wire format.
pub fn default_auth(format: Format) -> AuthStyle {
    match format {
        Format::Openai => AuthStyle::Bearer,
        Format::Anthropic => AuthStyle::XApiKey,
    }
}

/// Redacted form of a provider-key value: first 3 + `...` + last 4 characters
/// when the value is long enough (≥ 16 characters), else `...`.
pub fn redact_value(value: &str) -> String {
    let n = chars(value);
    if n >= 16 {
        let head: String = value.chars().take(3).collect();
        let tail: String = value.chars().skip(n - 4).collect();
        format!("{head}...{tail}")
    } else {
        "...".to_string()
    }
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

/// Syntax checks of a configuration's `access` and `router` (no lookups).
pub fn check_config_syntax(access: Option<&AccessSpec>, router: Option<&RouterSpec>) -> V<()> {
    if let Some(a) = access {
        if let Some(p) = &a.providers {
            if p.allow.len() > LIST_MAX {
                return Err(StoreError::invalid("access.providers.allow", "too many entries"));
            }
            for (i, id) in p.allow.iter().enumerate() {
                if !is_provider_id(id) {
                    return Err(StoreError::invalid(
                        format!("access.providers.allow[{i}]"),
                        format!("`{}` is not a valid provider id", short(id)),
                    ));
                }
            }
        }
        if let Some(m) = &a.models {
            if m.allow.len() > LIST_MAX {
                return Err(StoreError::invalid("access.models.allow", "too many entries"));
            }
            for (i, model) in m.allow.iter().enumerate() {
                split_qualified_model(&format!("access.models.allow[{i}]"), model)?;
            }
        }
        if let Some(e) = &a.endpoints {
            if e.allow.len() > LIST_MAX {
                return Err(StoreError::invalid("access.endpoints.allow", "too many entries"));
            }
            for (i, name) in e.allow.iter().enumerate() {
                if !keygate_proto::endpoints::is_valid_pattern(name) {
                    return Err(StoreError::invalid(
                        format!("access.endpoints.allow[{i}]"),
                        format!(
                            "`{}` is not an endpoint name (e.g. files.read, batches.*, *; see the README)",
                            short(name)
                        ),
                    ));
                }
            }
        }
    }
    if let Some(r) = router {
        if r.rules.len() > LIST_MAX {
            return Err(StoreError::invalid("router.rules", "too many rules"));
        }
        let mut scopes: Vec<(Option<&str>, Option<&str>)> = Vec::new();
        for (i, rule) in r.rules.iter().enumerate() {
            let f = format!("router.rules[{i}]");
            if let Some(p) = &rule.provider {
                if !is_provider_id(p) {
                    return Err(StoreError::invalid(
                        format!("{f}.provider"),
                        format!("`{}` is not a valid provider id", short(p)),
                    ));
                }
            }
            match (&rule.provider, &rule.model) {
                (None, None) => {
                    return Err(StoreError::invalid(&f, format!("{f} needs a provider and/or a model")));
                }
                (p, Some(m)) => {
                    let (mp, _) = split_qualified_model(&format!("{f}.model"), m)?;
                    if let Some(p) = p {
                        if p != mp {
                            return Err(StoreError::invalid(
                                format!("{f}.model"),
                                format!("{f}: model `{m}` does not belong to provider `{p}`"),
                            ));
                        }
                    }
                }
                (Some(_), None) => {}
            }
            let scope = (rule.provider_id(), rule.model.as_deref());
            if scopes.contains(&scope) {
                return Err(StoreError::invalid(&f, format!("{f} repeats the scope of an earlier rule")));
            }
            scopes.push(scope);
            if rule.steps.is_empty() {
                return Err(StoreError::invalid(format!("{f}.steps"), format!("{f} needs at least one step")));
            }
            for (j, step) in rule.steps.iter().enumerate() {
                if let StepSpec::User { keys, .. } = step {
                    if keys.is_empty() {
                        return Err(StoreError::invalid(
                            format!("{f}.steps[{j}].keys"),
                            "a user step needs at least one key",
                        ));
                    }
                    for (k, key) in keys.iter().enumerate() {
                        if !is_plausible_id(&key.id) {
                            return Err(StoreError::invalid(
                                format!("{f}.steps[{j}].keys[{k}].id"),
                                "not a provider key id",
                            ));
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

/// Reference checks of a configuration: every provider exists, every user-step
/// key exists and belongs to its rule's provider.
pub fn check_config_refs(
    access: Option<&AccessSpec>,
    router: Option<&RouterSpec>,
    mut provider_exists: impl FnMut(&str) -> V<bool>,
    mut key_provider: impl FnMut(&str) -> V<Option<String>>,
) -> V<()> {
    if let Some(a) = access {
        if let Some(p) = &a.providers {
            for (i, id) in p.allow.iter().enumerate() {
                if !provider_exists(id)? {
                    return Err(StoreError::invalid(
                        format!("access.providers.allow[{i}]"),
                        format!("unknown provider `{id}`"),
                    ));
                }
            }
        }
        if let Some(m) = &a.models {
            for (i, model) in m.allow.iter().enumerate() {
                let f = format!("access.models.allow[{i}]");
                let (p, _) = split_qualified_model(&f, model)?;
                if !provider_exists(p)? {
                    return Err(StoreError::invalid(f, format!("unknown provider `{p}` in `{model}`")));
                }
            }
        }
    }
    if let Some(r) = router {
        for (i, rule) in r.rules.iter().enumerate() {
            let f = format!("router.rules[{i}]");
            let Some(p) = rule.provider_id() else { continue };
            if !provider_exists(p)? {
                return Err(StoreError::invalid(
                    if rule.provider.is_some() { format!("{f}.provider") } else { format!("{f}.model") },
                    format!("unknown provider `{p}`"),
                ));
            }
            for (j, step) in rule.steps.iter().enumerate() {
                let StepSpec::User { keys, .. } = step else { continue };
                for (k, key) in keys.iter().enumerate() {
                    let kf = format!("{f}.steps[{j}].keys[{k}].id");
                    match key_provider(&key.id)? {
                        None => {
                            return Err(StoreError::invalid(kf, format!("unknown provider key `{}`", key.id)));
                        }
                        Some(kp) if kp != p => {
                            return Err(StoreError::invalid(
                                kf,
                                format!("provider key `{}` belongs to `{kp}`, not `{p}`", key.id),
                            ));
                        }
                        Some(_) => {}
                    }
                }
            }
        }
    }
    Ok(())
}

/// Whether a configuration mentions a provider anywhere.
pub fn config_mentions_provider(access: Option<&AccessSpec>, router: Option<&RouterSpec>, id: &str) -> bool {
    let in_access = access.is_some_and(|a| {
        a.providers.as_ref().is_some_and(|p| p.allow.iter().any(|x| x == id))
            || a.models
                .as_ref()
                .is_some_and(|m| m.allow.iter().any(|x| x.split_once('/').is_some_and(|(p, _)| p == id)))
    });
    in_access || router.is_some_and(|r| r.rules.iter().any(|rule| rule.provider_id() == Some(id)))
}

/// Whether a configuration's router uses a provider key.
pub fn config_mentions_key(router: Option<&RouterSpec>, key_id: &str) -> bool {
    router.is_some_and(|r| {
        r.rules.iter().flat_map(|rule| rule.steps.iter()).any(|s| match s {
            StepSpec::User { keys, .. } => keys.iter().any(|k| k.id == key_id),
            StepSpec::Managed {} => false,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls() {
        assert_eq!(normalize_base_url("https://api.openai.com/v1/").unwrap(), "https://api.openai.com/v1");
        assert_eq!(normalize_base_url("http://127.0.0.1:9999").unwrap(), "http://127.0.0.1:9999");
        assert_eq!(normalize_base_url("http://[::1]:80/x").unwrap(), "http://[::1]:80/x");
        for bad in [
            "ftp://x",
            "https://",
            "https:///v1",
            "https://a b",
            "https://x/v1?q=1",
            "https://x#f",
            "https://u:p@x",
            "https://x:99999",
            "https://x:",
            "api.openai.com",
            "http://h/v1/../admin",
            "http://h/./v1",
            "http://h/v1//x",
            "http://h/v1/%2e%2e",
            "http://h/v1\\x",
            "http://h/a;b",
        ] {
            assert!(normalize_base_url(bad).is_err(), "{bad}");
        }
        let azure = "https://az.example/openai/deployments/gpt-4o.v2";
        assert_eq!(normalize_base_url(azure).unwrap(), azure);
    }

    #[test]
    fn model_patterns() {
        assert!(check_model_pattern("m", "gpt-*").is_ok());
        assert!(check_model_pattern("m", "*").is_ok());
        assert!(check_model_pattern("m", "g*t").is_err());
        assert!(check_model_pattern("m", "").is_err());
        assert_eq!(split_qualified_model("m", "openai/gpt-4o").unwrap(), ("openai", "gpt-4o"));
        assert_eq!(split_qualified_model("m", "openrouter/openai/gpt-4o").unwrap(), ("openrouter", "openai/gpt-4o"));
        assert!(split_qualified_model("m", "gpt-4o").is_err());
        assert!(split_qualified_model("m", "open*/gpt").is_err());
        assert!(split_qualified_model("m", "openai/").is_err());
    }

    #[test]
    fn provider_ids() {
        assert!(is_provider_id("openai"));
        assert!(is_provider_id("my-vllm.local_1"));
        assert!(!is_provider_id("-x"));
        assert!(!is_provider_id("OpenAI"));
        assert!(!is_provider_id(""));
        assert!(!is_provider_id(&"a".repeat(64)));
    }

    #[test]
    fn redaction() {
        assert_eq!(redact_value("sk-proj-abcdefghijklmnop1234"), "sk-...1234");
        assert_eq!(redact_value("short"), "...");
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

    #[test]
    fn config_syntax() {
        let rule = |p: Option<&str>, m: Option<&str>| RuleSpec {
            provider: p.map(String::from),
            model: m.map(String::from),
            steps: vec![StepSpec::Managed {}],
        };
        let ok = RouterSpec { rules: vec![rule(Some("openai"), None), rule(None, Some("openai/gpt-4o"))] };
        assert!(check_config_syntax(None, Some(&ok)).is_ok());
        let mismatch = RouterSpec { rules: vec![rule(Some("openai"), Some("anthropic/claude-*"))] };
        assert!(check_config_syntax(None, Some(&mismatch)).is_err());
        let neither = RouterSpec { rules: vec![rule(None, None)] };
        assert!(check_config_syntax(None, Some(&neither)).is_err());
        let dup = RouterSpec { rules: vec![rule(Some("openai"), None), rule(Some("openai"), None)] };
        assert!(check_config_syntax(None, Some(&dup)).is_err());
        let access =
            AccessSpec { models: Some(AllowList { allow: vec!["openai/g*4".into()] }), ..AccessSpec::default() };
        let err = check_config_syntax(Some(&access), None).unwrap_err();
        assert!(matches!(err, StoreError::Invalid { field, .. } if field == "access.models.allow[0]"));
    }
}
