//! `/alert-webhooks`: where budget, credit and key-expiry alerts are sent, and
//! what was sent. The secret is write-only: generated when absent and shown
//! once, in the create answer. Writes need the admin role (a webhook holds a
//! secret and a URL the store will call); each is recorded in the audit log,
//! its secret redacted and its URL too ([`crate::policy::audit`]). The URL is
//! often the receiver's only credential: every answer that holds a webhook
//! shows it whole to an admin only ([`AlertWebhook::shown_to`]); any role
//! gets its `urlFingerprint`. Deliveries hold no URL.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;

use super::extract::{Audited, Caller, Id, Paging};
use super::{page_response, run, AppState, PageBody};
use crate::error::ApiError;
use crate::ids::random_hex;
use crate::model::{
    check_events, check_expiry_warning_days, check_thresholds, check_webhook_secret, check_webhook_url,
    is_plausible_id, AlertDelivery, AlertWebhook, CreateAlertWebhook, PatchAlertWebhook,
};
use crate::policy::alerts::{AlertEvent, DEFAULT_EXPIRY_WARNING_DAYS, DEFAULT_THRESHOLDS};
use crate::storage::{AlertWebhookChanges, NewAlertWebhook};

/// The audit log's resource type of alert webhooks.
const RESOURCE: &str = crate::policy::audit::ALERT_WEBHOOK;

/// A new secret: `whsec_` and 32 random bytes in hex. (The console makes
/// one when it replaces a webhook's secret.)
pub fn generate_secret() -> Result<String, ApiError> {
    Ok(format!("whsec_{}", random_hex(32).map_err(|e| ApiError::Internal(e.to_string()))?))
}

fn check_config_id(id: Option<&str>) -> Result<(), ApiError> {
    match id {
        Some(c) if !is_plausible_id(c) => {
            Err(ApiError::invalid("configurationId", "not an access key configuration id"))
        }
        _ => Ok(()),
    }
}

pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    Audited(req, body): Audited<CreateAlertWebhook>,
) -> Result<(StatusCode, Json<AlertWebhook>), ApiError> {
    let url = check_webhook_url(&req.url)?;
    let secret = match req.secret {
        Some(s) => {
            check_webhook_secret(&s)?;
            s
        }
        None => generate_secret()?,
    };
    check_config_id(req.configuration_id.as_deref())?;
    let thresholds = match &req.thresholds {
        Some(t) => check_thresholds(t)?,
        None => DEFAULT_THRESHOLDS.to_vec(),
    };
    let events = match &req.events {
        Some(e) => check_events(e)?,
        None => AlertEvent::ALL.to_vec(),
    };
    let expiry_warning_days = match req.expiry_warning_days {
        Some(d) => check_expiry_warning_days(d)?,
        None => DEFAULT_EXPIRY_WARNING_DAYS,
    };
    let new = NewAlertWebhook {
        url,
        secret: secret.clone(),
        config_id: req.configuration_id,
        thresholds,
        events,
        expiry_warning_days,
        enabled: req.enabled.unwrap_or(true),
    };
    let audit = caller.audit("alert_webhook.create", RESOURCE, None, body);
    let mut hook = run(&state, move |s| s.create_alert_webhook(&new, &audit)).await?.shown_to(caller.principal.role);
    hook.secret = Some(secret);
    Ok((StatusCode::CREATED, Json(hook)))
}

pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Paging(page): Paging,
) -> Result<Json<PageBody<AlertWebhook>>, ApiError> {
    let p = page.clone();
    let role = caller.principal.role;
    let items = run(&state, move |s| s.list_alert_webhooks(&p)).await?;
    let items = items.into_iter().map(|w| w.shown_to(role)).collect();
    page_response("alertWebhooks", "/alert-webhooks", items, &page, |w| &w.id)
}

pub async fn get(State(state): State<AppState>, caller: Caller, Id(id): Id) -> Result<Json<AlertWebhook>, ApiError> {
    Ok(Json(run(&state, move |s| s.get_alert_webhook(&id)).await?.shown_to(caller.principal.role)))
}

pub async fn update(
    State(state): State<AppState>,
    caller: Caller,
    Id(id): Id,
    Audited(req, body): Audited<PatchAlertWebhook>,
) -> Result<Json<AlertWebhook>, ApiError> {
    let url = req.url.as_deref().map(check_webhook_url).transpose()?;
    if let Some(s) = &req.secret {
        check_webhook_secret(s)?;
    }
    if let Some(c) = &req.configuration_id {
        check_config_id(c.as_deref())?;
    }
    let changes = AlertWebhookChanges {
        url,
        secret: req.secret,
        config_id: req.configuration_id,
        thresholds: req.thresholds.as_deref().map(check_thresholds).transpose()?,
        events: req.events.as_deref().map(check_events).transpose()?,
        expiry_warning_days: req.expiry_warning_days.map(check_expiry_warning_days).transpose()?,
        enabled: req.enabled,
    };
    let audit = caller.audit("alert_webhook.update", RESOURCE, Some(id.clone()), body);
    let role = caller.principal.role;
    Ok(Json(run(&state, move |s| s.update_alert_webhook(&id, &changes, &audit)).await?.shown_to(role)))
}

pub async fn delete(State(state): State<AppState>, caller: Caller, Id(id): Id) -> Result<StatusCode, ApiError> {
    let audit = caller.audit("alert_webhook.delete", RESOURCE, Some(id.clone()), serde_json::json!({}));
    run(&state, move |s| s.delete_alert_webhook(&id, &audit)).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn deliveries(
    State(state): State<AppState>,
    Id(id): Id,
    Paging(page): Paging,
) -> Result<Json<PageBody<AlertDelivery>>, ApiError> {
    let (p, webhook) = (page.clone(), id.clone());
    let items = run(&state, move |s| s.list_alert_deliveries(&webhook, &p)).await?;
    page_response("deliveries", format!("/alert-webhooks/{id}/deliveries"), items, &page, |d| &d.id)
}
