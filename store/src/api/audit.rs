//! `/audit-log`: every management change, newest first; and
//! [`record_console_login`], the console's way to record a sign-in.

use axum::extract::State;
use axum::http::Uri;
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use super::extract::{page_request, parse_query};
use super::principal::{Principal, Via};
use super::{page_response, run, AppState, PageBody};
use crate::error::ApiError;
use crate::ids::parse_rfc3339_ms;
use crate::model::AuditEntry;
use crate::policy::audit::redact_recorded_webhook_changes;
use crate::storage::{Audit, AuditFilter};

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct AuditQuery {
    limit: Option<String>,
    before_id: Option<String>,
    since: Option<String>,
    until: Option<String>,
    actor: Option<String>,
    resource_id: Option<String>,
}

/// Longest `actor` / `resourceId` filter accepted.
const FILTER_MAX: usize = 256;

fn time_ms(field: &str, v: Option<&str>) -> Result<Option<i64>, ApiError> {
    v.map(|s| {
        parse_rfc3339_ms(s).ok_or_else(|| {
            ApiError::invalid(field, format!("{field} must be an RFC 3339 timestamp (e.g. 2025-01-02T03:04:05Z)"))
        })
    })
    .transpose()
}

fn text_filter(field: &str, v: Option<String>) -> Result<Option<String>, ApiError> {
    match v {
        Some(s) if s.is_empty() || s.chars().count() > FILTER_MAX || s.chars().any(char::is_control) => {
            Err(ApiError::invalid(field, format!("{field} must be 1 to {FILTER_MAX} characters")))
        }
        v => Ok(v),
    }
}

/// `GET /audit-log?since=&until=&actor=&resourceId=&limit=&beforeId=`:
/// entries newest first. `since` (inclusive) and `until` (exclusive) are
/// RFC 3339; `actor` is `bootstrap` or a management key id; `resourceId`
/// the changed resource's id (`ak_…`, `openai`, `openai/gpt-4o`, ...). An
/// alert webhook's `url` is served redacted, whenever it was recorded.
pub async fn list(State(state): State<AppState>, uri: Uri) -> Result<Json<PageBody<AuditEntry>>, ApiError> {
    let q: AuditQuery = parse_query(uri.query())?;
    let page = page_request(q.limit, q.before_id)?;
    let extra = {
        let pairs: Vec<(&str, &str)> =
            [("since", &q.since), ("until", &q.until), ("actor", &q.actor), ("resourceId", &q.resource_id)]
                .into_iter()
                .filter_map(|(k, v)| v.as_deref().map(|v| (k, v)))
                .collect();
        serde_urlencoded::to_string(pairs).unwrap_or_default()
    };
    let filter = AuditFilter {
        since_ms: time_ms("since", q.since.as_deref())?,
        until_ms: time_ms("until", q.until.as_deref())?,
        actor: text_filter("actor", q.actor)?,
        resource_id: text_filter("resourceId", q.resource_id)?,
    };
    let p = page.clone();
    let mut items = run(&state, move |s| s.list_audit(&filter, &p)).await?;
    // Entries recorded before webhook URLs were redacted: redacted as served.
    for e in &mut items {
        redact_recorded_webhook_changes(&e.resource_type, &mut e.changes);
    }
    let Json(body) = page_response("auditLog", "/audit-log", items, &page, |e| &e.id)?;
    Ok(Json(body.with_query(&extra)))
}

/// Records a console sign-in of `principal` (action `console.login`, via
/// `console`, resource type `console`, resource id the principal's actor,
/// changes `{"role": …}`: the role it signed in with).
/// The console calls it once it has authenticated the user's token with
/// [`AppState::authenticate`]:
///
/// ```ignore
/// let Some(principal) = state.authenticate(&token).await? else { /* 401 */ };
/// keygate_store::api::audit::record_console_login(&state, &principal).await?;
/// ```
pub async fn record_console_login(state: &AppState, principal: &Principal) -> Result<(), ApiError> {
    let audit = Audit::new(
        principal,
        Via::Console,
        "console.login",
        "console",
        Some(principal.actor.clone()),
        json!({ "role": principal.role }),
    );
    run(state, move |s| s.record_audit(&audit)).await
}
