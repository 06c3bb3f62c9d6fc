//! `/access-keys`: tokens are generated here, shown once, and only their
//! digest reaches the store.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use keygate_proto::token;
use serde_json::json;

use super::extract::{Audited, AuditedOrEmpty, Caller, Id, Paging};
use super::{page_response, run, AppState, PageBody};
use crate::error::ApiError;
use crate::ids::{new_access_token, now_secs, parse_rfc3339};
use crate::model::{
    check_budget, check_key_concurrency, check_name, check_text_changes, check_texts, is_plausible_id, AccessKey,
    CreateAccessKey, PatchAccessKey, RotateAccessKey, MAX_GRACE_SECONDS,
};
use crate::storage::{AccessKeyChanges, NewAccessKey};

fn parse_expiry(s: &str) -> Result<i64, ApiError> {
    let t =
        parse_rfc3339(s).ok_or_else(|| ApiError::invalid("expiresAt", "expiresAt must be an RFC 3339 timestamp"))?;
    if t <= now_secs() {
        return Err(ApiError::invalid("expiresAt", "expiresAt must be in the future"));
    }
    Ok(t)
}

fn check_config_id(id: &str) -> Result<(), ApiError> {
    if is_plausible_id(id) {
        Ok(())
    } else {
        Err(ApiError::invalid("accessKeyConfigurationId", "not a configuration id"))
    }
}

/// The audit log's resource type of access keys.
const RESOURCE: &str = "access_key";

pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    Audited(req, body): Audited<CreateAccessKey>,
) -> Result<(StatusCode, Json<AccessKey>), ApiError> {
    check_name("name", &req.name)?;
    let (description, metadata) = check_texts(req.description, req.metadata)?;
    if let Some(c) = &req.access_key_configuration_id {
        check_config_id(c)?;
    }
    let expires_at = req.expires_at.as_deref().map(parse_expiry).transpose()?;
    if let Some(b) = &req.budget {
        check_budget("budget", b)?;
    }
    if let Some(n) = req.max_concurrent_requests {
        check_key_concurrency(n)?;
    }
    let tok = new_access_token().map_err(|e| ApiError::Internal(e.to_string()))?;
    let new = NewAccessKey {
        name: req.name,
        description,
        metadata,
        config_id: req.access_key_configuration_id,
        expires_at,
        disabled: req.disabled,
        digest: token::digest(&tok),
        redacted: token::redact(&tok),
        budget: req.budget,
        max_concurrent_requests: req.max_concurrent_requests,
    };
    let audit = caller.audit("access_key.create", RESOURCE, None, body);
    let mut key = run(&state, move |s| s.create_access_key(&new, &audit)).await?;
    key.token = Some(tok);
    Ok((StatusCode::CREATED, Json(key)))
}

pub async fn list(State(state): State<AppState>, Paging(page): Paging) -> Result<Json<PageBody<AccessKey>>, ApiError> {
    let p = page.clone();
    let items = run(&state, move |s| s.list_access_keys(&p)).await?;
    page_response("accessKeys", "/access-keys", items, &page, |k| &k.id)
}

pub async fn get(State(state): State<AppState>, Id(id): Id) -> Result<Json<AccessKey>, ApiError> {
    Ok(Json(run(&state, move |s| s.get_access_key(&id)).await?))
}

/// PATCH; recorded as `access_key.disable` / `access_key.enable` when it
/// sets `disabled`, else `access_key.update`.
pub async fn update(
    State(state): State<AppState>,
    caller: Caller,
    Id(id): Id,
    Audited(req, body): Audited<PatchAccessKey>,
) -> Result<Json<AccessKey>, ApiError> {
    let (description, metadata) = check_text_changes(req.name.as_deref(), req.description, req.metadata)?;
    if let Some(Some(c)) = &req.access_key_configuration_id {
        check_config_id(c)?;
    }
    let expires_at = match req.expires_at {
        None => None,
        Some(None) => Some(None),
        Some(Some(s)) => Some(Some(parse_expiry(&s)?)),
    };
    if let Some(Some(b)) = &req.budget {
        check_budget("budget", b)?;
    }
    if let Some(Some(n)) = req.max_concurrent_requests {
        check_key_concurrency(n)?;
    }
    let action = match req.disabled {
        Some(true) => "access_key.disable",
        Some(false) => "access_key.enable",
        None => "access_key.update",
    };
    let audit = caller.audit(action, RESOURCE, Some(id.clone()), body);
    let changes = AccessKeyChanges {
        name: req.name,
        description,
        metadata,
        config_id: req.access_key_configuration_id,
        expires_at,
        disabled: req.disabled,
        budget: req.budget,
        max_concurrent_requests: req.max_concurrent_requests,
    };
    Ok(Json(run(&state, move |s| s.update_access_key(&id, &changes, &audit)).await?))
}

pub async fn delete(State(state): State<AppState>, caller: Caller, Id(id): Id) -> Result<StatusCode, ApiError> {
    let audit = caller.audit("access_key.delete", RESOURCE, Some(id.clone()), json!({}));
    run(&state, move |s| s.delete_access_key(&id, &audit)).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn rotate(
    State(state): State<AppState>,
    caller: Caller,
    Id(id): Id,
    AuditedOrEmpty(req, _): AuditedOrEmpty<RotateAccessKey>,
) -> Result<Json<AccessKey>, ApiError> {
    let grace = req.grace_period_seconds.unwrap_or(0);
    if grace > MAX_GRACE_SECONDS {
        return Err(ApiError::invalid(
            "gracePeriodSeconds",
            format!("gracePeriodSeconds must be at most {MAX_GRACE_SECONDS} (30 days)"),
        ));
    }
    let grace = i64::try_from(grace).unwrap_or(0);
    let audit = caller.audit("access_key.rotate", RESOURCE, Some(id.clone()), json!({ "gracePeriodSeconds": grace }));
    let tok = new_access_token().map_err(|e| ApiError::Internal(e.to_string()))?;
    let (digest, redacted) = (token::digest(&tok), token::redact(&tok));
    let mut key = run(&state, move |s| s.rotate_access_key(&id, &digest, &redacted, grace, &audit)).await?;
    key.token = Some(tok);
    Ok(Json(key))
}
