//! `/provider-keys`: upstream credentials. The value is write-only.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde_json::json;

use super::extract::{Audited, Caller, Id, Paging};
use super::{page_response, run, AppState, PageBody};
use crate::error::ApiError;
use crate::model::{
    check_name, check_text_changes, check_texts, is_provider_id, CreateProviderKey, PatchProviderKey, ProviderKey,
    RotateProviderKey, PROVIDER_KEY_VALUE_MAX,
};
use crate::storage::{NewProviderKey, ProviderKeyChanges};

fn check_value(v: &str) -> Result<(), ApiError> {
    if v.trim().is_empty() {
        return Err(ApiError::invalid("value", "value must not be empty"));
    }
    if v.chars().count() > PROVIDER_KEY_VALUE_MAX {
        return Err(ApiError::invalid("value", format!("value is longer than {PROVIDER_KEY_VALUE_MAX} characters")));
    }
    if v.chars().any(char::is_control) {
        return Err(ApiError::invalid("value", "value must not contain control characters (newlines, tabs)"));
    }
    Ok(())
}

/// The audit log's resource type of provider keys (whose `value` it
/// records as `[redacted]`).
const RESOURCE: &str = "provider_key";

pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    Audited(req, body): Audited<CreateProviderKey>,
) -> Result<(StatusCode, Json<ProviderKey>), ApiError> {
    if !is_provider_id(&req.provider_id) {
        return Err(ApiError::invalid("providerId", "not a provider id"));
    }
    check_name("name", &req.name)?;
    check_value(&req.value)?;
    let (description, metadata) = check_texts(req.description, req.metadata)?;
    let new = NewProviderKey {
        provider_id: req.provider_id,
        name: req.name,
        description,
        metadata,
        managed: req.managed,
        value: req.value,
    };
    let audit = caller.audit("provider_key.create", RESOURCE, None, body);
    let key = run(&state, move |s| s.create_provider_key(&new, &audit)).await?;
    Ok((StatusCode::CREATED, Json(key)))
}

pub async fn list(
    State(state): State<AppState>,
    Paging(page): Paging,
) -> Result<Json<PageBody<ProviderKey>>, ApiError> {
    let p = page.clone();
    let items = run(&state, move |s| s.list_provider_keys(&p)).await?;
    page_response("providerKeys", "/provider-keys", items, &page, |k| &k.id)
}

pub async fn get(State(state): State<AppState>, Id(id): Id) -> Result<Json<ProviderKey>, ApiError> {
    Ok(Json(run(&state, move |s| s.get_provider_key(&id)).await?))
}

pub async fn update(
    State(state): State<AppState>,
    caller: Caller,
    Id(id): Id,
    Audited(req, body): Audited<PatchProviderKey>,
) -> Result<Json<ProviderKey>, ApiError> {
    if req.value.is_some() {
        return Err(ApiError::invalid(
            "value",
            "the value of a provider key cannot be changed by PATCH; use POST /provider-keys/{id}/rotate",
        ));
    }
    let (description, metadata) = check_text_changes(req.name.as_deref(), req.description, req.metadata)?;
    let changes = ProviderKeyChanges { name: req.name, description, metadata, managed: req.managed };
    let audit = caller.audit("provider_key.update", RESOURCE, Some(id.clone()), body);
    Ok(Json(run(&state, move |s| s.update_provider_key(&id, &changes, &audit)).await?))
}

pub async fn delete(State(state): State<AppState>, caller: Caller, Id(id): Id) -> Result<StatusCode, ApiError> {
    let audit = caller.audit("provider_key.delete", RESOURCE, Some(id.clone()), json!({}));
    run(&state, move |s| s.delete_provider_key(&id, &audit)).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn rotate(
    State(state): State<AppState>,
    caller: Caller,
    Id(id): Id,
    Audited(req, body): Audited<RotateProviderKey>,
) -> Result<Json<ProviderKey>, ApiError> {
    check_value(&req.value)?;
    let value = req.value;
    let audit = caller.audit("provider_key.rotate", RESOURCE, Some(id.clone()), body);
    Ok(Json(run(&state, move |s| s.rotate_provider_key(&id, &value, &audit)).await?))
}
