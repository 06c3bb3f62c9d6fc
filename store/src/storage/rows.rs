//! Row mapping shared by the backends. Both select the same columns in the
//! same order (the `*_COLS` lists) and read them through [`Cells`], which
//! each backend implements for its row type; JSON columns are parsed here.

use keygate_proto::lookup::{AuthStyle, Format};

use crate::error::StoreError;
use crate::ids::{rfc3339_ms, rfc3339_secs};
use crate::model::{
    AccessKey, AccessKeyConfiguration, AlertAttempt, AlertDelivery, AlertWebhook, ApiKey, AuditEntry, BudgetSpec,
    ConfigRef, PriceEntry, Provider, ProviderKey, SummaryRow, UsageItem,
};
use crate::policy::alerts::{AlertEvent, AlertTarget, ExpiringKey, NextState};
use crate::policy::budget::{self, config_scope, key_scope, BudgetRow};
use crate::policy::credits::CreditState;
use crate::policy::ledger::{Ledger, Reservation, Uncharged};
use crate::pricing::{micros_to_usd, Price};
use crate::storage::ApiKeyAuth;
use crate::storage::PageRequest;

/// The cells of one result row, read by column index.
pub(crate) trait Cells {
    type Error: From<StoreError> + From<serde_json::Error>;
    fn text(&self, i: usize) -> Result<String, Self::Error>;
    fn opt_text(&self, i: usize) -> Result<Option<String>, Self::Error>;
    fn int(&self, i: usize) -> Result<i64, Self::Error>;
    fn opt_int(&self, i: usize) -> Result<Option<i64>, Self::Error>;
    fn flag(&self, i: usize) -> Result<bool, Self::Error>;

    /// A JSON column (`NULL` = `None`).
    fn json<T: serde::de::DeserializeOwned>(&self, i: usize) -> Result<Option<T>, Self::Error> {
        Ok(self.opt_text(i)?.map(|s| serde_json::from_str(&s)).transpose()?)
    }

    /// An integer column that must fit `T`.
    fn num<T: TryFrom<i64>>(&self, i: usize) -> Result<T, Self::Error> {
        let v = self.int(i)?;
        T::try_from(v).map_err(|_| StoreError::Internal(format!("stored number {v} out of range")).into())
    }
}

pub(crate) fn format_str(f: Format) -> &'static str {
    match f {
        Format::Openai => "openai",
        Format::Anthropic => "anthropic",
    }
}

pub(crate) fn auth_str(a: AuthStyle) -> &'static str {
    match a {
        AuthStyle::Bearer => "bearer",
        AuthStyle::XApiKey => "x-api-key",
        AuthStyle::XGoogApiKey => "x-goog-api-key",
        AuthStyle::ApiKey => "api-key",
    }
}

/// A stored enum (`format`, `auth`) by its wire name.
pub(crate) fn parse_enum<T: serde::de::DeserializeOwned>(s: String) -> Result<T, StoreError> {
    Ok(serde_json::from_value(serde_json::Value::String(s))?)
}

pub(crate) fn json_opt<T: serde::de::DeserializeOwned>(s: Option<String>) -> Result<Option<T>, StoreError> {
    Ok(s.map(|s| serde_json::from_str(&s)).transpose()?)
}

pub(crate) fn to_json_opt<T: serde::Serialize>(v: Option<&T>) -> Result<Option<String>, StoreError> {
    Ok(v.map(serde_json::to_string).transpose()?)
}

/// A PATCH of a JSON column: absent stays, `null` clears, a value is stored as JSON.
pub(crate) fn json_change<T: serde::Serialize>(
    change: &Option<Option<T>>,
) -> Result<Option<Option<String>>, StoreError> {
    change.as_ref().map(|v| to_json_opt(v.as_ref())).transpose()
}

/// The SQL `LIMIT` of a page: one more than asked, to tell whether a next page exists.
pub(crate) fn limit_i64(page: &PageRequest) -> i64 {
    i64::try_from(page.limit).unwrap_or(100).saturating_add(1)
}

/// The credit state, from the `meta` rows that hold it (`meta(key)`).
pub(crate) fn credit_state<E>(mut meta: impl FnMut(&str) -> Result<i64, E>) -> Result<CreditState, E> {
    Ok(CreditState {
        enabled: meta("credits_enabled")? != 0,
        granted: meta("credits_granted")?,
        touched: meta("credits_touched")? != 0,
    })
}

/// The `meta` rows (key, value) that hold a credit state.
pub(crate) fn credit_meta(s: &CreditState) -> [(&'static str, i64); 3] {
    [
        ("credits_enabled", i64::from(s.enabled)),
        ("credits_granted", s.granted),
        ("credits_touched", i64::from(s.touched)),
    ]
}

pub(crate) const ACCESS_KEY_COLS: &str =
    "a.id, a.name, a.description, a.metadata, a.created_ms, a.updated_ms, a.redacted,
     a.config_id, c.name, a.expires_at, a.disabled, a.budget_json, a.last_used_ms, a.max_concurrent_requests
     FROM access_keys a LEFT JOIN configs c ON c.id = a.config_id";

pub(crate) fn access_key<C: Cells>(r: &C) -> Result<AccessKey, C::Error> {
    let config_id = r.opt_text(7)?;
    let config_name = r.opt_text(8)?;
    Ok(AccessKey {
        id: r.text(0)?,
        name: r.text(1)?,
        description: r.text(2)?,
        metadata: r.text(3)?,
        created_at: rfc3339_ms(r.int(4)?),
        updated_at: rfc3339_ms(r.int(5)?),
        last_used: r.opt_int(12)?.map(rfc3339_ms),
        key_redacted: r.text(6)?,
        access_key_configuration: config_id.map(|id| ConfigRef { id, name: config_name.unwrap_or_default() }),
        expires_at: r.opt_int(9)?.map(rfc3339_secs),
        disabled: r.flag(10)?,
        budget: r.json(11)?,
        budget_usage: None,
        max_concurrent_requests: count_opt(r.opt_int(13)?)?,
        token: None,
    })
}

/// A stored count (a concurrency cap) as the API's unsigned integer.
pub(crate) fn count_opt(v: Option<i64>) -> Result<Option<u64>, StoreError> {
    v.map(|v| u64::try_from(v).map_err(|_| StoreError::Internal(format!("stored count {v} out of range")))).transpose()
}

/// A count (a concurrency cap) as stored: validated counts always fit.
pub(crate) fn count_cell(v: Option<u64>) -> Result<Option<i64>, StoreError> {
    v.map(|v| i64::try_from(v).map_err(|_| StoreError::invalid("maxConcurrentRequests", "too large"))).transpose()
}

/// A PATCH of a count column: absent stays, `null` clears.
pub(crate) fn count_change(change: Option<Option<u64>>) -> Result<Option<Option<i64>>, StoreError> {
    change.map(count_cell).transpose()
}

/// Fills `budgetUsage` of an access key read from the database.
pub(crate) fn with_key_usage<L: Ledger>(l: &mut L, mut key: AccessKey, now_ms: i64) -> Result<AccessKey, L::Error> {
    if let Some(b) = &key.budget {
        key.budget_usage = Some(budget::usage(l, &key_scope(&key.id), b, now_ms)?);
    }
    Ok(key)
}

pub(crate) const PROVIDER_KEY_COLS: &str =
    "id, provider_id, name, description, metadata, managed, redacted, created_ms, updated_ms, last_used_ms FROM provider_keys";

pub(crate) fn provider_key<C: Cells>(r: &C) -> Result<ProviderKey, C::Error> {
    Ok(ProviderKey {
        id: r.text(0)?,
        provider_id: r.text(1)?,
        name: r.text(2)?,
        description: r.text(3)?,
        metadata: r.text(4)?,
        managed: r.flag(5)?,
        key_redacted: r.text(6)?,
        created_at: rfc3339_ms(r.int(7)?),
        updated_at: rfc3339_ms(r.int(8)?),
        last_used: r.opt_int(9)?.map(rfc3339_ms),
    })
}

pub(crate) const CONFIG_COLS: &str =
    "id, name, description, metadata, access_json, router_json, created_ms, updated_ms,
     rate_limits_json, budget_json, request_limits_json FROM configs";

/// A configuration without its budget usage (see [`with_config_usage`]).
pub(crate) fn config<C: Cells>(r: &C) -> Result<AccessKeyConfiguration, C::Error> {
    Ok(AccessKeyConfiguration {
        id: r.text(0)?,
        name: r.text(1)?,
        description: r.text(2)?,
        metadata: r.text(3)?,
        access: r.json(4)?,
        router: r.json(5)?,
        rate_limits: r.json(8)?,
        request_limits: r.json(10)?,
        budget: r.json::<BudgetSpec>(9)?,
        budget_usage: None,
        created_at: rfc3339_ms(r.int(6)?),
        updated_at: rfc3339_ms(r.int(7)?),
    })
}

/// Fills `budgetUsage` of a configuration read from the database.
pub(crate) fn with_config_usage<L: Ledger>(
    l: &mut L,
    mut c: AccessKeyConfiguration,
    now_ms: i64,
) -> Result<AccessKeyConfiguration, L::Error> {
    if let Some(b) = &c.budget {
        c.budget_usage = Some(budget::usage(l, &config_scope(&c.id), b, now_ms)?);
    }
    Ok(c)
}

pub(crate) const PROVIDER_COLS: &str =
    "id, name, base_url, format, auth, models_json, built_in, created_ms, updated_ms FROM providers";

pub(crate) fn provider<C: Cells>(r: &C) -> Result<Provider, C::Error> {
    Ok(Provider {
        id: r.text(0)?,
        name: r.text(1)?,
        base_url: r.text(2)?,
        format: parse_enum(r.text(3)?)?,
        auth: parse_enum(r.text(4)?)?,
        models: serde_json::from_str(&r.text(5)?)?,
        built_in: r.flag(6)?,
        created_at: rfc3339_ms(r.int(7)?),
        updated_at: rfc3339_ms(r.int(8)?),
    })
}

pub(crate) const BUDGET_ROW_COLS: &str =
    "spent_tokens, spent_micros, reserved_tokens, reserved_micros FROM budget_state";

pub(crate) fn budget_row<C: Cells>(r: &C) -> Result<BudgetRow, C::Error> {
    Ok(BudgetRow {
        spent_tokens: r.int(0)?,
        spent_micros: r.int(1)?,
        reserved_tokens: r.int(2)?,
        reserved_micros: r.int(3)?,
    })
}

pub(crate) const RESERVATION_COLS: &str =
    "id, request_id, access_key_id, tokens, micros, budgets_json, created_ms, expires_ms, released, settled_ms
     FROM reservations";

pub(crate) fn reservation<C: Cells>(r: &C) -> Result<Reservation, C::Error> {
    Ok(Reservation {
        id: r.text(0)?,
        request_id: r.text(1)?,
        access_key_id: r.text(2)?,
        tokens: r.int(3)?,
        micros: r.int(4)?,
        holds: serde_json::from_str(&r.text(5)?)?,
        created_ms: r.int(6)?,
        expires_ms: r.int(7)?,
        released: r.flag(8)?,
        settled_ms: r.opt_int(9)?,
    })
}

pub(crate) const PRICE_COLS: &str =
    "provider, model, input_micros, output_micros, cached_micros, updated_ms FROM prices";

/// A catalog entry: (provider, model pattern, price).
pub(crate) fn catalog_entry<C: Cells>(r: &C) -> Result<(String, String, Price), C::Error> {
    Ok((r.text(0)?, r.text(1)?, Price { input: r.int(2)?, output: r.int(3)?, cached: r.opt_int(4)? }))
}

pub(crate) fn price_entry<C: Cells>(r: &C) -> Result<PriceEntry, C::Error> {
    Ok(PriceEntry {
        provider: r.text(0)?,
        model: r.text(1)?,
        input_per_million_usd: micros_to_usd(r.int(2)?),
        output_per_million_usd: micros_to_usd(r.int(3)?),
        cached_input_per_million_usd: r.opt_int(4)?.map(micros_to_usd),
        updated_at: rfc3339_ms(r.int(5)?),
    })
}

pub(crate) const UNCHARGED_COLS: &str = "input_tokens, output_tokens, cached_tokens, cost_micros FROM usage";

pub(crate) fn uncharged<C: Cells>(r: &C) -> Result<Uncharged, C::Error> {
    Ok(Uncharged {
        input_tokens: r.int(0)?,
        output_tokens: r.int(1)?,
        cached_tokens: r.int(2)?,
        cost_micros: r.int(3)?,
    })
}

pub(crate) const USAGE_COLS: &str =
    "id, request_id, access_key_id, config_id, provider, model, provider_key_id, attempt,
     final, status, streaming, input_tokens, output_tokens, cached_tokens, reasoning_tokens, cost_micros, started_ms,
     ended_ms, estimated FROM usage";

pub(crate) fn usage_item<C: Cells>(r: &C) -> Result<UsageItem, C::Error> {
    Ok(UsageItem {
        id: r.text(0)?,
        request_id: r.text(1)?,
        access_key_id: r.text(2)?,
        access_key_configuration_id: r.opt_text(3)?,
        provider: r.text(4)?,
        model: r.opt_text(5)?,
        provider_key_id: r.opt_text(6)?,
        attempt: r.num(7)?,
        final_attempt: r.flag(8)?,
        status: r.num(9)?,
        streaming: r.flag(10)?,
        input_tokens: r.int(11)?,
        output_tokens: r.int(12)?,
        cached_tokens: r.int(13)?,
        reasoning_tokens: r.int(14)?,
        cost_usd: micros_to_usd(r.int(15)?),
        started_at: rfc3339_ms(r.int(16)?),
        ended_at: rfc3339_ms(r.int(17)?),
        estimated: r.flag(18)?,
    })
}

/// A `/usage/summary` row: group, requests, attempts, input, output, cost.
pub(crate) fn summary_row<C: Cells>(r: &C) -> Result<SummaryRow, C::Error> {
    Ok(SummaryRow {
        group: r.opt_text(0)?.unwrap_or_default(),
        requests: r.int(1)?,
        attempts: r.int(2)?,
        input_tokens: r.int(3)?,
        output_tokens: r.int(4)?,
        cost_usd: micros_to_usd(r.int(5)?),
    })
}

// ------------------------------------------------------------ alerts

/// The columns of an alert webhook (never its sealed secret).
pub(crate) const ALERT_WEBHOOK_COLS: &str =
    "id, url, config_id, thresholds_json, events_json, expiry_warning_days, enabled, created_ms, updated_ms
     FROM alert_webhooks";

pub(crate) fn alert_webhook<C: Cells>(r: &C) -> Result<AlertWebhook, C::Error> {
    let url = r.text(1)?;
    Ok(AlertWebhook {
        id: r.text(0)?,
        url_fingerprint: crate::model::webhook_url_fingerprint(&url),
        url,
        configuration_id: r.opt_text(2)?,
        thresholds: r.json(3)?.unwrap_or_default(),
        events: r.json(4)?.unwrap_or_default(),
        expiry_warning_days: r.num(5)?,
        enabled: r.flag(6)?,
        created_at: rfc3339_ms(r.int(7)?),
        updated_at: rfc3339_ms(r.int(8)?),
        secret: None,
    })
}

/// The enabled webhooks, as the alert evaluation sees them.
pub(crate) const ALERT_TARGET_COLS: &str =
    "id, config_id, thresholds_json, events_json, expiry_warning_days FROM alert_webhooks WHERE enabled ORDER BY id";

pub(crate) fn alert_target<C: Cells>(r: &C) -> Result<AlertTarget, C::Error> {
    Ok(AlertTarget {
        id: r.text(0)?,
        config_id: r.opt_text(1)?,
        thresholds: r.json(2)?.unwrap_or_default(),
        events: r.json(3)?.unwrap_or_default(),
        expiry_warning_days: r.num(4)?,
    })
}

/// Keys about to expire (`?1`/`$1` < expires_at ≤ `?2`/`$2`), not disabled.
pub(crate) const EXPIRING_KEY_COLS: &str = "id, name, config_id, expires_at FROM access_keys";

pub(crate) fn expiring_key<C: Cells>(r: &C) -> Result<ExpiringKey, C::Error> {
    Ok(ExpiringKey { id: r.text(0)?, name: r.text(1)?, config_id: r.opt_text(2)?, expires_at: r.int(3)? })
}

pub(crate) const ALERT_DELIVERY_COLS: &str =
    "id, webhook_id, event, status, attempts, last_status, last_error, created_ms, delivered_ms, next_attempt_ms,
     payload FROM alert_deliveries";

/// A delivery as listed (its attempts are read apart).
pub(crate) fn alert_delivery<C: Cells>(r: &C) -> Result<AlertDelivery, C::Error> {
    let status = r.text(3)?;
    let next = r.int(9)?;
    Ok(AlertDelivery {
        id: r.text(0)?,
        webhook_id: r.text(1)?,
        event: r.text(2)?,
        attempts: r.num(4)?,
        last_status: r
            .opt_int(5)?
            .map(u16::try_from)
            .transpose()
            .map_err(|_| StoreError::Internal("stored status out of range".into()))?,
        last_error: r.opt_text(6)?,
        created_at: rfc3339_ms(r.int(7)?),
        delivered_at: r.opt_int(8)?.map(rfc3339_ms),
        next_attempt_at: (status == "pending").then(|| rfc3339_ms(next)),
        payload: serde_json::from_str(&r.text(10)?)?,
        attempt_log: Vec::new(),
        status,
    })
}

pub(crate) const ALERT_ATTEMPT_COLS: &str = "attempt, started_ms, duration_ms, status, error FROM alert_attempts";

pub(crate) fn alert_attempt<C: Cells>(r: &C) -> Result<AlertAttempt, C::Error> {
    Ok(AlertAttempt {
        attempt: r.num(0)?,
        at: rfc3339_ms(r.int(1)?),
        duration_ms: r.num(2)?,
        status: r
            .opt_int(3)?
            .map(u16::try_from)
            .transpose()
            .map_err(|_| StoreError::Internal("stored status out of range".into()))?,
        error: r.opt_text(4)?,
    })
}

/// The stored `status` of a delivery after an attempt, its next attempt
/// (unix ms; 0 once it is done) and when it was delivered.
pub(crate) fn delivery_state(next: NextState, now_ms: i64) -> (&'static str, i64, Option<i64>) {
    match next {
        NextState::Delivered => ("delivered", 0, Some(now_ms)),
        NextState::Retry(at) => ("pending", at, None),
        NextState::Failed => ("failed", 0, None),
    }
}

/// A webhook's thresholds and events as stored (JSON arrays).
pub(crate) fn alert_lists(thresholds: &[u8], events: &[AlertEvent]) -> Result<(String, String), StoreError> {
    Ok((serde_json::to_string(thresholds)?, serde_json::to_string(events)?))
}

// ------------------------------------------------------------ management keys and the audit log

pub(crate) const API_KEY_COLS: &str =
    "id, name, role, token_prefix, created_ms, updated_ms, last_used_ms FROM api_keys";

pub(crate) fn api_key<C: Cells>(r: &C) -> Result<ApiKey, C::Error> {
    Ok(ApiKey {
        id: r.text(0)?,
        name: r.text(1)?,
        role: parse_enum(r.text(2)?)?,
        token_prefix: r.text(3)?,
        created_at: rfc3339_ms(r.int(4)?),
        updated_at: rfc3339_ms(r.int(5)?),
        last_used_at: r.opt_int(6)?.map(rfc3339_ms),
        token: None,
    })
}

pub(crate) const API_KEY_AUTH_COLS: &str = "id, name, role, last_used_ms FROM api_keys";

pub(crate) fn api_key_auth<C: Cells>(r: &C) -> Result<ApiKeyAuth, C::Error> {
    Ok(ApiKeyAuth { id: r.text(0)?, name: r.text(1)?, role: parse_enum(r.text(2)?)?, last_used_ms: r.opt_int(3)? })
}

pub(crate) const AUDIT_COLS: &str =
    "id, at_ms, actor, via, action, resource_type, resource_id, changes_json FROM audit_log";

pub(crate) fn audit_entry<C: Cells>(r: &C) -> Result<AuditEntry, C::Error> {
    let at_ms = r.int(1)?;
    Ok(AuditEntry {
        id: r.text(0)?,
        time: rfc3339_ms(at_ms),
        time_ms: at_ms,
        actor: r.text(2)?,
        via: parse_enum(r.text(3)?)?,
        action: r.text(4)?,
        resource_type: r.text(5)?,
        resource_id: r.opt_text(6)?,
        changes: serde_json::from_str(&r.text(7)?)?,
    })
}

pub(crate) const SESSION_COLS: &str =
    "id, actor, credential_digest, csrf, created_ms, expires_ms, seen_ms FROM console_sessions";

pub(crate) fn session<C: Cells>(r: &C) -> Result<crate::policy::sessions::SessionRow, C::Error> {
    Ok(crate::policy::sessions::SessionRow {
        id: r.text(0)?,
        actor: r.text(1)?,
        credential_digest: r.text(2)?,
        csrf: r.text(3)?,
        created_ms: r.int(4)?,
        expires_ms: r.int(5)?,
        seen_ms: r.int(6)?,
    })
}
