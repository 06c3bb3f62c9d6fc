//! `/credits` (the gateway-wide balance) and `/prices` (the price catalog).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde_json::json;

use super::extract::{Audited, Caller};
use super::{run, AppState};
use crate::error::ApiError;
use crate::model::{check_model_pattern, check_price, check_usd, is_provider_id, AddCredits, Credits, PatchCredits};
use crate::model::{PriceEntry, PutPrice};
use crate::pricing::{usd_to_micros, CATCH_ALL, MAX_USD};
use crate::storage::NewPrice;

pub async fn get_credits(State(state): State<AppState>) -> Result<Json<Credits>, ApiError> {
    Ok(Json(run(&state, |s| s.get_credits()).await?))
}

pub async fn add_credits(
    State(state): State<AppState>,
    caller: Caller,
    Audited(req, body): Audited<AddCredits>,
) -> Result<Json<Credits>, ApiError> {
    check_usd("addUsd", req.add_usd, -MAX_USD, MAX_USD)?;
    let micros = usd_to_micros(req.add_usd);
    let audit = caller.audit("credits.add", "credits", None, body);
    Ok(Json(run(&state, move |s| s.add_credits(micros, &audit)).await?))
}

/// `PATCH /credits`: recorded as `credits.enable` or `credits.disable`.
pub async fn patch_credits(
    State(state): State<AppState>,
    caller: Caller,
    Audited(req, body): Audited<PatchCredits>,
) -> Result<Json<Credits>, ApiError> {
    let action = if req.enabled { "credits.enable" } else { "credits.disable" };
    let audit = caller.audit(action, "credits", None, body);
    Ok(Json(run(&state, move |s| s.set_credits_enabled(req.enabled, &audit)).await?))
}

#[derive(serde::Serialize)]
pub struct PriceList {
    prices: Vec<PriceEntry>,
}

pub async fn list_prices(State(state): State<AppState>) -> Result<Json<PriceList>, ApiError> {
    Ok(Json(PriceList { prices: run(&state, |s| s.list_prices()).await? }))
}

/// `{provider}/{model}` of a price: a provider id and a model pattern
/// (`gpt-4o`, `gpt-4o*`), or `*/*`.
fn price_key(
    path: Result<Path<(String, String)>, axum::extract::rejection::PathRejection>,
) -> Result<(String, String), ApiError> {
    let Ok(Path((provider, model))) = path else {
        return Err(ApiError::NotFound("no such price".into()));
    };
    if (provider.as_str(), model.as_str()) == CATCH_ALL {
        return Ok((provider, model));
    }
    if !is_provider_id(&provider) {
        return Err(ApiError::invalid("provider", "provider must be a provider id (or `*` in `*/*`)"));
    }
    check_model_pattern("model", &model)?;
    Ok((provider, model))
}

/// A price's id in the audit log: `provider/model`.
fn price_id(provider: &str, model: &str) -> Option<String> {
    Some(format!("{provider}/{model}"))
}

pub async fn put_price(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<Path<(String, String)>, axum::extract::rejection::PathRejection>,
    Audited(req, body): Audited<PutPrice>,
) -> Result<Json<PriceEntry>, ApiError> {
    let (provider, model) = price_key(path)?;
    check_price(&req)?;
    let price = NewPrice {
        input: usd_to_micros(req.input_per_million_usd),
        output: usd_to_micros(req.output_per_million_usd),
        cached: req.cached_input_per_million_usd.map(usd_to_micros),
    };
    let audit = caller.audit("price.set", "price", price_id(&provider, &model), body);
    Ok(Json(run(&state, move |s| s.put_price(&provider, &model, &price, &audit)).await?))
}

pub async fn delete_price(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<Path<(String, String)>, axum::extract::rejection::PathRejection>,
) -> Result<StatusCode, ApiError> {
    let (provider, model) = price_key(path)?;
    let audit = caller.audit("price.delete", "price", price_id(&provider, &model), json!({}));
    run(&state, move |s| s.delete_price(&provider, &model, &audit)).await?;
    Ok(StatusCode::NO_CONTENT)
}
