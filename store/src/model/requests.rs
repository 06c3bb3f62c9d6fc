//! Request bodies of the management API (`Create*`, `Patch*`, `Rotate*`, ...).
//! They reject unknown fields; PATCH bodies tell an absent field from `null`.
//! Bodies that carry a secret (a provider-key value) implement no `Debug`.

use keygate_proto::lookup::{AuthStyle, Format};
use serde::{Deserialize, Deserializer};

use crate::api::principal::Role;

use super::resources::{AccessSpec, AlertEvent, BudgetSpec, RateLimitsSpec, RequestLimitsSpec, RouterSpec};

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
    /// The key's own concurrency cap (absent or null: its configuration's).
    #[serde(default)]
    pub max_concurrent_requests: Option<u64>,
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
    /// `null` clears the key's own cap (its configuration's applies again).
    #[serde(default, deserialize_with = "double_option")]
    pub max_concurrent_requests: Option<Option<u64>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RotateAccessKey {
    #[serde(default)]
    pub grace_period_seconds: Option<u64>,
}

/// A role by its name: a string naming no role (or not a string: `null`,
/// a number) is an `invalid_field` error on `role`.
fn role<'de, D: Deserializer<'de>>(d: D) -> Result<Role, D::Error> {
    let name = String::deserialize(d)?;
    Role::parse(&name).ok_or_else(|| serde::de::Error::custom("role must be one of admin, operator, viewer"))
}

fn some_role<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Role>, D::Error> {
    role(d).map(Some)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CreateApiKey {
    pub name: String,
    #[serde(deserialize_with = "role")]
    pub role: Role,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PatchApiKey {
    #[serde(default, deserialize_with = "non_null")]
    pub name: Option<String>,
    #[serde(default, deserialize_with = "some_role")]
    pub role: Option<Role>,
}

/// `POST /api-keys/{id}/rotate` takes no fields (an empty body or `{}`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RotateApiKey {}

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
    pub request_limits: Option<RequestLimitsSpec>,
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
    pub request_limits: Option<Option<RequestLimitsSpec>>,
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

/// `POST /alert-webhooks`. Carries a secret: no `Debug`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CreateAlertWebhook {
    pub url: String,
    /// Generated when absent (and then shown once).
    #[serde(default)]
    pub secret: Option<String>,
    #[serde(default)]
    pub configuration_id: Option<String>,
    /// Percent (1 to 100); default 50, 80, 100.
    #[serde(default)]
    pub thresholds: Option<Vec<i64>>,
    /// Default: every event.
    #[serde(default)]
    pub events: Option<Vec<AlertEvent>>,
    #[serde(default)]
    pub expiry_warning_days: Option<i64>,
    #[serde(default)]
    pub enabled: Option<bool>,
}

/// `PATCH /alert-webhooks/{id}`. Carries a secret: no `Debug`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PatchAlertWebhook {
    #[serde(default, deserialize_with = "non_null")]
    pub url: Option<String>,
    /// Replaces the secret (not shown back).
    #[serde(default, deserialize_with = "non_null")]
    pub secret: Option<String>,
    /// `null`: store-wide.
    #[serde(default, deserialize_with = "double_option")]
    pub configuration_id: Option<Option<String>>,
    #[serde(default, deserialize_with = "non_null")]
    pub thresholds: Option<Vec<i64>>,
    #[serde(default, deserialize_with = "non_null")]
    pub events: Option<Vec<AlertEvent>>,
    #[serde(default, deserialize_with = "non_null")]
    pub expiry_warning_days: Option<i64>,
    #[serde(default, deserialize_with = "non_null")]
    pub enabled: Option<bool>,
}

/// The default credential style of a wire format.
pub fn default_auth(format: Format) -> AuthStyle {
    match format {
        Format::Openai => AuthStyle::Bearer,
        Format::Anthropic => AuthStyle::XApiKey,
    }
}
