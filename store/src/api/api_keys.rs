//! `/api-keys`: management API keys (`mk_…`), named credentials of this API
//! with a role. Tokens (`kgm_…`) are generated here, shown once, and only
//! their digest reaches the store. `/whoami`: the caller's own principal.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use keygate_proto::token;
use serde_json::json;

use super::extract::{Audited, AuditedOrEmpty, Caller, Id, Paging};
use super::principal::Principal;
use super::{page_response, run, AppState, PageBody};
use crate::error::ApiError;
use crate::ids::{management_token_prefix, new_management_token};
use crate::model::{check_name, ApiKey, CreateApiKey, PatchApiKey, RotateApiKey};
use crate::storage::{ApiKeyChanges, NewApiKey};

/// The audit log's resource type of management keys.
const RESOURCE: &str = "api_key";

fn new_token() -> Result<(String, String, String), ApiError> {
    let tok = new_management_token().map_err(|e| ApiError::Internal(e.to_string()))?;
    let (digest, prefix) = (token::digest(&tok), management_token_prefix(&tok));
    Ok((tok, digest, prefix))
}

/// `GET /whoami`: `{"actor", "name", "role"}` of the caller's credential.
pub async fn whoami(caller: Caller) -> Json<Principal> {
    Json(caller.principal)
}

pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    Audited(req, body): Audited<CreateApiKey>,
) -> Result<(StatusCode, Json<ApiKey>), ApiError> {
    check_name("name", &req.name)?;
    let (tok, digest, token_prefix) = new_token()?;
    let new = NewApiKey { name: req.name, role: req.role, digest, token_prefix };
    let audit = caller.audit("api_key.create", RESOURCE, None, body);
    let mut key = run(&state, move |s| s.create_api_key(&new, &audit)).await?;
    key.token = Some(tok);
    Ok((StatusCode::CREATED, Json(key)))
}

pub async fn list(State(state): State<AppState>, Paging(page): Paging) -> Result<Json<PageBody<ApiKey>>, ApiError> {
    let p = page.clone();
    let items = run(&state, move |s| s.list_api_keys(&p)).await?;
    page_response("apiKeys", "/api-keys", items, &page, |k| &k.id)
}

pub async fn get(State(state): State<AppState>, Id(id): Id) -> Result<Json<ApiKey>, ApiError> {
    Ok(Json(run(&state, move |s| s.get_api_key(&id)).await?))
}

/// PATCH `name` and/or `role`; a change that sets `role` is recorded as
/// `api_key.role_change`.
pub async fn update(
    State(state): State<AppState>,
    caller: Caller,
    Id(id): Id,
    Audited(req, body): Audited<PatchApiKey>,
) -> Result<Json<ApiKey>, ApiError> {
    if let Some(n) = &req.name {
        check_name("name", n)?;
    }
    let action = if req.role.is_some() { "api_key.role_change" } else { "api_key.update" };
    let audit = caller.audit(action, RESOURCE, Some(id.clone()), body);
    let changes = ApiKeyChanges { name: req.name, role: req.role };
    Ok(Json(run(&state, move |s| s.update_api_key(&id, &changes, &audit)).await?))
}

pub async fn delete(State(state): State<AppState>, caller: Caller, Id(id): Id) -> Result<StatusCode, ApiError> {
    let audit = caller.audit("api_key.delete", RESOURCE, Some(id.clone()), json!({}));
    run(&state, move |s| s.delete_api_key(&id, &audit)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A new token for the same id; the old one stops working when this answers.
pub async fn rotate(
    State(state): State<AppState>,
    caller: Caller,
    Id(id): Id,
    AuditedOrEmpty(RotateApiKey {}, _): AuditedOrEmpty<RotateApiKey>,
) -> Result<Json<ApiKey>, ApiError> {
    let (tok, digest, prefix) = new_token()?;
    let audit = caller.audit("api_key.rotate", RESOURCE, Some(id.clone()), json!({}));
    let mut key = run(&state, move |s| s.rotate_api_key(&id, &digest, &prefix, &audit)).await?;
    key.token = Some(tok);
    Ok(Json(key))
}
