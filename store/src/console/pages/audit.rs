//! The audit log (`GET /audit-log`): who changed what, through the API or
//! the console, filtered by actor, resource and time, paged.

use axum::extract::RawQuery;
use axum::http::StatusCode;
use axum::response::Response;
use maud::html;
use serde_json::Value;

use super::query;
use crate::console::client::{next_before_id, seg, with_query};
use crate::console::layout::{failure_page, page, respond, Nav};
use crate::console::Signed;

fn s<'a>(v: &'a Value, k: &str) -> &'a str {
    v[k].as_str().unwrap_or("")
}

/// The console page of a resource the log names.
fn resource_link(kind: &str, id: &str) -> Option<String> {
    let base = match kind {
        "access_key" | "access-key" | "accessKey" => "/console/access-keys",
        "access_key_configuration" | "access-key-configuration" | "accessKeyConfiguration" | "configuration" => {
            "/console/configurations"
        }
        "provider_key" | "provider-key" | "providerKey" => "/console/provider-keys",
        "alert_webhook" => "/console/alerts",
        "provider" => "/console/providers",
        _ => return None,
    };
    Some(format!("{base}/{}", seg(id)))
}

pub async fn show(sg: Signed, q: RawQuery) -> Response {
    let q = query(q);
    let filters = [
        ("actor", q.get("actor")),
        ("resourceId", q.get("resourceId")),
        ("since", q.get("since")),
        ("until", q.get("until")),
    ];
    let mut api_query: Vec<(&str, &str)> = filters.to_vec();
    api_query.push(("limit", "50"));
    api_query.push(("beforeId", q.get("before")));
    let doc = match sg.api.get(&with_query("/audit-log", &api_query)).await {
        Ok(d) => d,
        Err(f) if f.status == StatusCode::NOT_FOUND && f.msg == "no such route" => {
            let body = html! {
                h1 { "Audit log" }
                p.notice role="status" { "This store has no audit log: it comes with management keys and roles (issue 18)." }
            };
            return respond(StatusCode::OK, page(Some(&sg), Nav::Audit, "Audit log", body));
        }
        Err(f) => return failure_page(&sg, &f),
    };
    let entries = doc["auditLog"].as_array().cloned().unwrap_or_default();
    let mut next_query = filters.to_vec();
    let next_before = next_before_id(&doc);
    if let Some(b) = &next_before {
        next_query.push(("before", b));
    }
    let next = next_before.as_ref().map(|_| with_query("/console/audit-log", &next_query));
    let body = html! {
        h1 { "Audit log" }
        form.filters method="get" action="/console/audit-log" {
            div.field { label for="f-actor" { "Actor" } input #f-actor type="text" name="actor" value=(q.get("actor")) placeholder="bootstrap or mk_…"; }
            div.field { label for="f-resourceId" { "Resource id" } input #f-resourceId type="text" name="resourceId" value=(q.get("resourceId")) placeholder="ak_…"; }
            div.field { label for="f-since" { "Since" } input #f-since type="text" name="since" value=(q.get("since")) placeholder="2026-01-31T00:00:00Z"; }
            div.field { label for="f-until" { "Until" } input #f-until type="text" name="until" value=(q.get("until")) placeholder="RFC 3339"; }
            div.actions { button type="submit" { "Filter" } a href="/console/audit-log" { "Clear" } }
        }
        @if entries.is_empty() { p.empty { "No entries." } } @else {
            div.table-wrap { table.audit {
                thead { tr { th scope="col" { "Time" } th scope="col" { "Actor" } th scope="col" { "Via" } th scope="col" { "Action" } th scope="col" { "Resource" } th scope="col" { "Changes" } } }
                tbody { @for e in &entries {
                    @let kind = s(e, "resourceType");
                    @let rid = s(e, "resourceId");
                    tr {
                        td { (e["timeMs"].as_i64().map(crate::ids::rfc3339_ms).map_or(String::new(), |t| crate::console::layout::when(Some(&t)))) }
                        td.mono { (s(e, "actor")) }
                        td { (s(e, "via")) }
                        td { (s(e, "action")) }
                        td { (kind) " " @if let Some(h) = resource_link(kind, rid) { a.mono href=(h) { (rid) } } @else { span.mono { (rid) } } }
                        td { @if !e["changes"].is_null() { pre.changes { (serde_json::to_string_pretty(&e["changes"]).unwrap_or_default()) } } }
                    }
                } }
            } }
        }
        nav.pager aria-label="Pages" {
            @if !q.get("before").is_empty() { a href=(with_query("/console/audit-log", &filters)) { "← Newest" } }
            @if let Some(n) = next { a href=(n) rel="next" { "Older →" } }
        }
    };
    respond(StatusCode::OK, page(Some(&sg), Nav::Audit, "Audit log", body))
}
