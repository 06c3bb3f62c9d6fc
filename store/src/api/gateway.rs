//! The gateway listener: `/v1/lookup/{digest}`, `/v1/changes`, `/v1/stats`,
//! `/v1/reserve` and `/v1/usage`.

use std::sync::atomic::Ordering;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::Uri;
use axum::Json;
use keygate_proto::lookup::{
    Changes, LeaseRequest, LeaseResponse, Lookup, RefusedBy, ReserveRequest, ReserveResponse, UsageBatch,
};
use serde::Deserialize;
use serde_json::{json, Value};

use super::extract::ApiJson;
use super::{run, AppState};
use crate::error::ApiError;
use crate::policy::leases;

fn is_digest(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

pub async fn lookup(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<Lookup>, ApiError> {
    state.stats.lookups.fetch_add(1, Ordering::Relaxed);
    let digest = match path {
        Ok(Path(d)) if is_digest(&d) => d,
        _ => return Err(ApiError::invalid("digest", "the digest must be 64 lowercase hex characters")),
    };
    Ok(Json(run(&state, move |s| s.lookup(&digest)).await?))
}

/// `GET /v1/self/{digest}`: what an active access key may learn about
/// itself (`policy::self_check`), for the gateway's `GET /keygate/v1/key`.
pub async fn self_check(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let digest = match path {
        Ok(Path(d)) if is_digest(&d) => d,
        _ => return Err(ApiError::invalid("digest", "the digest must be 64 lowercase hex characters")),
    };
    let answer = run(&state, move |s| {
        let lookup = s.lookup(&digest)?;
        let Some(id) = lookup.key.as_ref().map(|k| k.id.clone()) else { return Ok(None) };
        let key = s.get_access_key(&id)?;
        let config = match &key.access_key_configuration {
            Some(c) => Some(s.get_config(&c.id)?),
            None => None,
        };
        Ok(crate::policy::self_check::describe(&lookup, &key, config.as_ref()))
    })
    .await?;
    answer.map(Json).ok_or_else(|| ApiError::NotFound("no active access key has this digest".into()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChangesQuery {
    since: Option<String>,
}

pub async fn changes(State(state): State<AppState>, uri: Uri) -> Result<Json<Changes>, ApiError> {
    state.stats.changes.fetch_add(1, Ordering::Relaxed);
    let q: ChangesQuery = serde_urlencoded::from_str(uri.query().unwrap_or("")).map_err(|e| ApiError::BadRequest {
        code: "invalid_query",
        msg: format!("bad query string: {e}"),
        field: None,
    })?;
    let since = match q.since {
        None => 0,
        Some(s) => s.parse::<u64>().map_err(|_| ApiError::invalid("since", "since must be a non-negative integer"))?,
    };
    Ok(Json(run(&state, move |s| s.changes(since)).await?))
}

pub async fn stats(State(state): State<AppState>) -> Json<Value> {
    Json(json!({
        "lookups": state.stats.lookups.load(Ordering::Relaxed),
        "changes": state.stats.changes.load(Ordering::Relaxed),
        "reserves": state.stats.reserves.load(Ordering::Relaxed),
        "leases": state.stats.leases.load(Ordering::Relaxed),
        "usageRecords": state.stats.usage_records.load(Ordering::Relaxed),
    }))
}

/// Longest id-like string accepted from the gateway (request ids, key ids, models).
const MAX_FIELD: usize = 512;

fn check_field(field: &str, v: &str, required: bool) -> Result<(), ApiError> {
    if required && v.is_empty() {
        return Err(ApiError::invalid(field, format!("{field} must not be empty")));
    }
    if v.len() > MAX_FIELD || v.chars().any(char::is_control) {
        return Err(ApiError::invalid(
            field,
            format!("{field} must be at most {MAX_FIELD} bytes, no control characters"),
        ));
    }
    Ok(())
}

pub async fn reserve(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<ReserveRequest>,
) -> Result<Json<ReserveResponse>, ApiError> {
    state.stats.reserves.fetch_add(1, Ordering::Relaxed);
    let checked = (|| {
        check_field("requestId", &req.request_id, true)?;
        check_field("accessKeyId", &req.access_key_id, true)?;
        check_field("provider", &req.provider, true)?;
        check_field("model", req.model.as_deref().unwrap_or(""), false)
    })();
    if let Err(e) = checked {
        state.stats.count_reserve("error");
        return Err(e);
    }
    match run(&state, move |s| s.reserve(&req)).await {
        Ok(resp) => {
            state.stats.count_reserve(match (resp.ok, resp.refused_by) {
                (true, _) => "ok",
                (false, Some(RefusedBy::Key)) => "refused_key",
                (false, Some(RefusedBy::Configuration)) => "refused_configuration",
                (false, _) => "refused_credits",
            });
            Ok(Json(resp))
        }
        Err(e) => {
            state.stats.count_reserve("error");
            Err(e)
        }
    }
}

/// `POST /v1/lease`: a share of an access key's rate-limit window for the
/// Envoy that asks (`policy::leases`).
pub async fn lease(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<LeaseRequest>,
) -> Result<Json<LeaseResponse>, ApiError> {
    check_field("accessKeyId", &req.access_key_id, true)?;
    if !(leases::MIN_WINDOW_MS..=leases::MAX_WINDOW_MS).contains(&req.window_ms) {
        return Err(ApiError::invalid(
            "windowMs",
            format!("windowMs must be between {} and {}", leases::MIN_WINDOW_MS, leases::MAX_WINDOW_MS),
        ));
    }
    state.stats.leases.fetch_add(1, Ordering::Relaxed);
    Ok(Json(run(&state, move |s| s.lease(&req)).await?))
}

/// Most records in one `POST /v1/usage`.
pub const MAX_USAGE_RECORDS: usize = 1000;

pub async fn usage(
    State(state): State<AppState>,
    ApiJson(batch): ApiJson<UsageBatch>,
) -> Result<Json<Value>, ApiError> {
    if batch.records.len() > MAX_USAGE_RECORDS {
        return Err(ApiError::invalid("records", format!("at most {MAX_USAGE_RECORDS} records per batch")));
    }
    for (i, r) in batch.records.iter().enumerate() {
        check_field(&format!("records[{i}].requestId"), &r.request_id, true)?;
        check_field(&format!("records[{i}].accessKeyId"), &r.access_key_id, true)?;
        check_field(&format!("records[{i}].provider"), &r.provider, true)?;
        for (name, v) in [
            ("configId", &r.config_id),
            ("model", &r.model),
            ("providerKeyId", &r.provider_key_id),
            ("reservationId", &r.reservation_id),
        ] {
            check_field(&format!("records[{i}].{name}"), v.as_deref().unwrap_or(""), false)?;
        }
    }
    let accepted = batch.records.len();
    let inserted = run(&state, move |s| s.ingest_usage(&batch.records)).await?;
    // Settling may have queued alert deliveries: the worker looks now.
    state.alerts.notify_one();
    state.stats.usage_records.fetch_add(u64::try_from(inserted).unwrap_or(0), Ordering::Relaxed);
    Ok(Json(json!({ "accepted": accepted, "inserted": inserted })))
}
