//! `/access-key-configurations`: allow-lists and routers.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde_json::json;

use super::extract::{Audited, Caller, Id, Paging};
use super::{page_response, run, AppState, PageBody};
use crate::error::ApiError;
use crate::model::{
    check_budget, check_config_syntax, check_name, check_rate_limits, check_request_limits, check_text_changes,
    check_texts, AccessKeyConfiguration, CreateConfig, PatchConfig,
};
use crate::storage::{ConfigChanges, NewConfig};

/// The audit log's resource type of access-key configurations.
const RESOURCE: &str = "access_key_configuration";

pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    Audited(req, body): Audited<CreateConfig>,
) -> Result<(StatusCode, Json<AccessKeyConfiguration>), ApiError> {
    check_name("name", &req.name)?;
    let (description, metadata) = check_texts(req.description, req.metadata)?;
    check_config_syntax(req.access.as_ref(), req.router.as_ref())?;
    if let Some(r) = &req.rate_limits {
        check_rate_limits("rateLimits", r)?;
    }
    if let Some(r) = &req.request_limits {
        check_request_limits("requestLimits", r)?;
    }
    if let Some(b) = &req.budget {
        check_budget("budget", b)?;
    }
    let new = NewConfig {
        name: req.name,
        description,
        metadata,
        access: req.access,
        router: req.router,
        rate_limits: req.rate_limits,
        request_limits: req.request_limits,
        budget: req.budget,
    };
    let audit = caller.audit("access_key_configuration.create", RESOURCE, None, body);
    let config = run(&state, move |s| s.create_config(&new, &audit)).await?;
    Ok((StatusCode::CREATED, Json(config)))
}

pub async fn list(
    State(state): State<AppState>,
    Paging(page): Paging,
) -> Result<Json<PageBody<AccessKeyConfiguration>>, ApiError> {
    let p = page.clone();
    let items = run(&state, move |s| s.list_configs(&p)).await?;
    page_response("accessKeyConfigurations", "/access-key-configurations", items, &page, |c| &c.id)
}

pub async fn get(State(state): State<AppState>, Id(id): Id) -> Result<Json<AccessKeyConfiguration>, ApiError> {
    Ok(Json(run(&state, move |s| s.get_config(&id)).await?))
}

pub async fn update(
    State(state): State<AppState>,
    caller: Caller,
    Id(id): Id,
    Audited(req, body): Audited<PatchConfig>,
) -> Result<Json<AccessKeyConfiguration>, ApiError> {
    let (description, metadata) = check_text_changes(req.name.as_deref(), req.description, req.metadata)?;
    check_config_syntax(req.access.as_ref().and_then(Option::as_ref), req.router.as_ref().and_then(Option::as_ref))?;
    if let Some(Some(r)) = &req.rate_limits {
        check_rate_limits("rateLimits", r)?;
    }
    if let Some(Some(r)) = &req.request_limits {
        check_request_limits("requestLimits", r)?;
    }
    if let Some(Some(b)) = &req.budget {
        check_budget("budget", b)?;
    }
    let changes = ConfigChanges {
        name: req.name,
        description,
        metadata,
        access: req.access,
        router: req.router,
        rate_limits: req.rate_limits,
        request_limits: req.request_limits,
        budget: req.budget,
    };
    let audit = caller.audit("access_key_configuration.update", RESOURCE, Some(id.clone()), body);
    Ok(Json(run(&state, move |s| s.update_config(&id, &changes, &audit)).await?))
}

pub async fn delete(State(state): State<AppState>, caller: Caller, Id(id): Id) -> Result<StatusCode, ApiError> {
    let audit = caller.audit("access_key_configuration.delete", RESOURCE, Some(id.clone()), json!({}));
    run(&state, move |s| s.delete_config(&id, &audit)).await?;
    Ok(StatusCode::NO_CONTENT)
}
