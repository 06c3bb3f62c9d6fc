//! `/providers`: the built-in catalog plus custom providers.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};

use super::extract::{Audited, Caller, Id};
use super::{run, AppState};
use crate::error::ApiError;
use crate::model::{
    check_models, check_name, default_auth, is_provider_id, normalize_base_url, CreateProvider, PatchProvider, Provider,
};
use crate::storage::{NewProvider, ProviderChanges};

/// The audit log's resource type of providers.
const RESOURCE: &str = "provider";

pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    Audited(req, body): Audited<CreateProvider>,
) -> Result<(StatusCode, Json<Provider>), ApiError> {
    if !is_provider_id(&req.provider_id) {
        return Err(ApiError::invalid("providerId", "providerId must match [a-z0-9][a-z0-9._-]{0,62}"));
    }
    check_name("name", &req.name)?;
    let base_url = normalize_base_url(&req.base_url)?;
    check_models("models", &req.models)?;
    let new = NewProvider {
        id: req.provider_id,
        name: req.name,
        base_url,
        format: req.format,
        auth: req.auth.unwrap_or_else(|| default_auth(req.format)),
        models: req.models,
    };
    let audit = caller.audit("provider.create", RESOURCE, Some(new.id.clone()), body);
    let provider = run(&state, move |s| s.create_provider(&new, &audit)).await?;
    Ok((StatusCode::CREATED, Json(provider)))
}

pub async fn list(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let providers = run(&state, |s| s.list_providers()).await?;
    Ok(Json(json!({ "providers": providers, "uri": "/providers", "nextPageUri": null })))
}

pub async fn get(State(state): State<AppState>, Id(id): Id) -> Result<Json<Provider>, ApiError> {
    Ok(Json(run(&state, move |s| s.get_provider(&id)).await?))
}

pub async fn update(
    State(state): State<AppState>,
    caller: Caller,
    Id(id): Id,
    Audited(req, body): Audited<PatchProvider>,
) -> Result<Json<Provider>, ApiError> {
    if let Some(n) = &req.name {
        check_name("name", n)?;
    }
    let base_url = req.base_url.as_deref().map(normalize_base_url).transpose()?;
    if let Some(m) = &req.models {
        check_models("models", m)?;
    }
    let changes = ProviderChanges { name: req.name, base_url, format: req.format, auth: req.auth, models: req.models };
    let audit = caller.audit("provider.update", RESOURCE, Some(id.clone()), body);
    Ok(Json(run(&state, move |s| s.update_provider(&id, &changes, &audit)).await?))
}

pub async fn delete(State(state): State<AppState>, caller: Caller, Id(id): Id) -> Result<StatusCode, ApiError> {
    let audit = caller.audit("provider.delete", RESOURCE, Some(id.clone()), json!({}));
    run(&state, move |s| s.delete_provider(&id, &audit)).await?;
    Ok(StatusCode::NO_CONTENT)
}
