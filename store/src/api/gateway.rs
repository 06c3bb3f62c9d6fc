//! The gateway listener: `/v1/lookup/{digest}`, `/v1/changes`, `/v1/stats`.

use std::sync::atomic::Ordering;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::Uri;
use axum::Json;
use keygate_proto::lookup::{Changes, Lookup};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{run, AppState};
use crate::error::ApiError;

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
    }))
}
