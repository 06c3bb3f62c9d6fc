//! `/usage` (records, newest first) and `/usage/summary` (grouped totals).

use axum::extract::State;
use axum::http::Uri;
use axum::Json;
use serde::{Deserialize, Serialize};

use super::extract::{page_request, parse_query};
use super::{page_response, run, AppState, PageBody};
use crate::error::ApiError;
use crate::ids::parse_rfc3339;
use crate::model::{SummaryRow, UsageItem};
use crate::storage::{GroupBy, UsageFilter};

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ListQuery {
    limit: Option<String>,
    before_id: Option<String>,
    from: Option<String>,
    to: Option<String>,
    access_key_id: Option<String>,
    provider: Option<String>,
    model: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct SummaryQuery {
    group_by: Option<String>,
    from: Option<String>,
    to: Option<String>,
    access_key_id: Option<String>,
    provider: Option<String>,
    model: Option<String>,
}

fn time_ms(field: &str, v: Option<String>) -> Result<Option<i64>, ApiError> {
    v.map(|s| {
        parse_rfc3339(&s)
            .map(|t| t.saturating_mul(1000))
            .ok_or_else(|| ApiError::invalid(field, format!("{field} must be an RFC 3339 timestamp")))
    })
    .transpose()
}

fn filter(
    from: Option<String>,
    to: Option<String>,
    access_key_id: Option<String>,
    provider: Option<String>,
    model: Option<String>,
) -> Result<UsageFilter, ApiError> {
    Ok(UsageFilter { from_ms: time_ms("from", from)?, to_ms: time_ms("to", to)?, access_key_id, provider, model })
}

/// The filters again, encoded, for the next-page link.
fn filter_query(q: &[(&str, &Option<String>)]) -> String {
    let pairs: Vec<(&str, &str)> = q.iter().filter_map(|(k, v)| v.as_deref().map(|v| (*k, v))).collect();
    serde_urlencoded::to_string(pairs).unwrap_or_default()
}

pub async fn list(State(state): State<AppState>, uri: Uri) -> Result<Json<PageBody<UsageItem>>, ApiError> {
    let q: ListQuery = parse_query(uri.query())?;
    let page = page_request(q.limit, q.before_id)?;
    let extra = filter_query(&[
        ("from", &q.from),
        ("to", &q.to),
        ("accessKeyId", &q.access_key_id),
        ("provider", &q.provider),
        ("model", &q.model),
    ]);
    let f = filter(q.from, q.to, q.access_key_id, q.provider, q.model)?;
    let p = page.clone();
    let items = run(&state, move |s| s.list_usage(&f, &p)).await?;
    let Json(body) = page_response("usage", "/usage", items, &page, |u| &u.id)?;
    Ok(Json(body.with_query(&extra)))
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    group_by: &'static str,
    rows: Vec<SummaryRow>,
}

pub async fn summary(State(state): State<AppState>, uri: Uri) -> Result<Json<Summary>, ApiError> {
    let q: SummaryQuery = parse_query(uri.query())?;
    let group_by = match q.group_by.as_deref() {
        None => GroupBy::Key,
        Some(g) => GroupBy::parse(g)
            .ok_or_else(|| ApiError::invalid("groupBy", "groupBy must be one of key, provider, model, day"))?,
    };
    let f = filter(q.from, q.to, q.access_key_id, q.provider, q.model)?;
    let rows = run(&state, move |s| s.usage_summary(&f, group_by)).await?;
    Ok(Json(Summary { group_by: group_by.as_str(), rows }))
}
