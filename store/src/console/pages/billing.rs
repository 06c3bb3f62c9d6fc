//! Budgets and credits: the gateway-wide credit balance (an admin adds
//! credits or switches them on and off), and the budgets of configurations.
//! A key's own budget is on the key's page.

use axum::extract::RawQuery;
use axum::http::StatusCode;
use axum::response::Response;
use maud::html;
use serde_json::{json, Value};

use super::{number_or_text, query};
use crate::console::client::{next_before_id, seg, with_query};
use crate::console::layout::{csrf, done_notice, failure_page, int, page, respond, usd, when, Nav};
use crate::console::{see_other, Signed, Write};

fn s<'a>(v: &'a Value, k: &str) -> &'a str {
    v[k].as_str().unwrap_or("")
}

pub async fn show(sg: Signed, q: RawQuery) -> Response {
    let q = query(q);
    let before = q.get("before");
    let configs_path = with_query("/access-key-configurations", &[("limit", "100"), ("beforeId", before)]);
    let (credits, configs) = tokio::join!(sg.api.get("/credits"), sg.api.get(&configs_path));
    let credits = match credits {
        Ok(c) => c,
        Err(f) => return failure_page(&sg, &f),
    };
    let configs = match configs {
        Ok(c) => c,
        Err(f) => return failure_page(&sg, &f),
    };
    let with_budget: Vec<&Value> = configs["accessKeyConfigurations"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["budget"].is_object())
        .collect();
    let next = next_before_id(&configs).map(|b| with_query("/console/budgets", &[("before", &b)]));
    let enabled = credits["enabled"].as_bool().unwrap_or(false);
    let error = q.get("error");
    let body = html! {
        h1 { "Budgets & credits" }
        (done_notice(q.has("done").then(|| q.get("done"))))
        @if error == "credits" { p.notice.error role="alert" { "The API refused the credit change: the amount must be a number of USD (it may be negative to remove credits)." } }
        section aria-labelledby="credits-h" {
            h2 #credits-h { "Credits" }
            dl.facts {
                dt { "State" } dd { @if enabled { span.badge.good { "enabled" } " every request reserves against the balance" } @else { span.badge { "disabled" } } }
                dt { "Balance" } dd { (usd(credits["balanceUsd"].as_f64().unwrap_or(0.0))) }
                dt { "Reserved" } dd { (usd(credits["reservedUsd"].as_f64().unwrap_or(0.0))) }
            }
            @if sg.who.admin() {
                div.action-grid {
                    form method="post" action="/console/credits/add" {
                        (csrf(&sg))
                        label for="f-addUsd" { "Add credits (USD)" }
                        input #f-addUsd type="number" name="addUsd" step="any" required inputmode="decimal";
                        button type="submit" { "Add" }
                    }
                    form method="post" action="/console/credits/enabled" {
                        (csrf(&sg))
                        input type="hidden" name="enabled" value=(if enabled { "false" } else { "true" });
                        button type="submit" { @if enabled { "Disable credits" } @else { "Enable credits" } }
                    }
                }
            }
        }
        section aria-labelledby="budgets-h" {
            h2 #budgets-h { "Configuration budgets" }
            p.hint { "A configuration's budget is shared by every key using it. A key's own budget is on the key's page." }
            @if with_budget.is_empty() { p.empty { "No configuration on this page has a budget." } } @else {
                div.table-wrap { table {
                    thead { tr { th scope="col" { "Configuration" } th scope="col" { "Limit" } th scope="col" { "Window" } th.num scope="col" { "Tokens spent" } th.num scope="col" { "Cost spent" } th scope="col" { "Resets" } } }
                    tbody { @for c in &with_budget {
                        @let b = &c["budget"];
                        @let u = &c["budgetUsage"];
                        tr {
                            td { a href={ "/console/configurations/" (seg(s(c, "id"))) } { (s(c, "name")) } }
                            td {
                                @if let Some(t) = b["tokens"].as_i64() { (int(t)) " tokens " }
                                @if let Some(x) = b["costUsd"].as_f64() { (usd(x)) }
                            }
                            td { (s(b, "window")) @if let Some(tz) = b["timeZone"].as_str() { " (" (tz) ")" } }
                            td.num { (int(u["tokens"].as_i64().unwrap_or(0))) }
                            td.num { (usd(u["costUsd"].as_f64().unwrap_or(0.0))) }
                            td { (when(u["resetsAt"].as_str())) }
                        }
                    } }
                } }
            }
            nav.pager aria-label="Pages" {
                @if !before.is_empty() { a href="/console/budgets" { "← First page" } }
                @if let Some(n) = next { a href=(n) rel="next" { "More configurations →" } }
            }
        }
    };
    respond(StatusCode::OK, page(Some(&sg), Nav::Budgets, "Budgets & credits", body))
}

pub async fn add(w: Write) -> Response {
    match w.s.api.post("/credits", &json!({ "addUsd": number_or_text(w.form.get("addUsd")) })).await {
        Ok(_) => see_other("/console/budgets?done=credits"),
        Err(f) if f.status == StatusCode::BAD_REQUEST => see_other("/console/budgets?error=credits"),
        Err(f) => failure_page(&w.s, &f),
    }
}

pub async fn enabled(w: Write) -> Response {
    let on = w.form.get("enabled") == "true";
    match w.s.api.patch("/credits", &json!({ "enabled": on })).await {
        Ok(_) => see_other("/console/budgets?done=credits"),
        Err(f) => failure_page(&w.s, &f),
    }
}
