//! Usage: tokens and cost per key, provider, model and day over a period,
//! from `GET /usage/summary`, as bar charts.

use axum::extract::RawQuery;
use axum::http::StatusCode;
use axum::response::Response;
use maud::html;

use super::charts::{bars_of, chart, from_summary};
use super::query;
use crate::console::client::{seg, with_query};
use crate::console::layout::{page, respond, Nav};
use crate::console::Signed;

const PERIODS: [(&str, &str); 4] = [("1", "24 hours"), ("7", "7 days"), ("30", "30 days"), ("90", "90 days")];
/// Keys named in the per-key chart (the largest).
const TOP_KEYS: usize = 15;

pub async fn show(sg: Signed, q: RawQuery) -> Response {
    let q = query(q);
    let days = PERIODS.iter().find(|(d, _)| *d == q.get("days")).map_or("7", |(d, _)| d);
    let n: i64 = days.parse().unwrap_or(7);
    let from = crate::ids::rfc3339_secs(crate::ids::now_secs() - n * 86400);
    let by = |g: &'static str| with_query("/usage/summary", &[("groupBy", g), ("from", &from)]);
    let paths = [by("key"), by("provider"), by("model"), by("day")];
    let [k, p, m, d] = &paths;
    let (keys, providers, models, per_day) = tokio::join!(sg.api.get(k), sg.api.get(p), sg.api.get(m), sg.api.get(d));
    // The largest keys, by name (a key deleted since shows its id).
    let key_chart = match &keys {
        Ok(doc) => {
            let mut bars = bars_of(doc, str::to_string);
            bars.sort_by(|a, b| b.tokens.cmp(&a.tokens).then(b.cost.total_cmp(&a.cost)));
            let more = bars.len().saturating_sub(TOP_KEYS);
            bars.truncate(TOP_KEYS);
            let names = key_names(&sg, &bars.iter().map(|b| b.label.clone()).collect::<Vec<_>>()).await;
            for (b, name) in bars.iter_mut().zip(names) {
                b.href = Some(format!("/console/access-keys/{}", seg(&b.label)));
                if let Some(n) = name {
                    b.label = n;
                }
            }
            html! {
                (chart("Per access key", &bars))
                @if more > 0 { p.hint { (more) " more keys with less usage are not shown." } }
            }
        }
        Err(f) => html! { p.notice.error { (f.msg) } },
    };
    let body = html! {
        h1 { "Usage" }
        nav.periods aria-label="Period" {
            @for (d, label) in PERIODS {
                @if d == days {
                    a href={ "/console/usage?days=" (d) } aria-current="page" { (label) }
                } @else {
                    a href={ "/console/usage?days=" (d) } { (label) }
                }
            }
        }
        p.hint { "Tokens (input + output) and cost of the requests that started in the last " (PERIODS.iter().find(|(d, _)| *d == days).map_or("", |(_, l)| l)) "." }
        div.charts {
            (key_chart)
            (from_summary(&providers, "Per provider", str::to_string))
            (from_summary(&models, "Per model", |g| if g.is_empty() { "(no model)".into() } else { g.to_string() }))
            (from_summary(&per_day, "Per day (UTC)", str::to_string))
        }
    };
    respond(StatusCode::OK, page(Some(&sg), Nav::Usage, "Usage", body))
}

/// The names of access keys by id (`None` for a key that is gone).
async fn key_names(sg: &Signed, ids: &[String]) -> Vec<Option<String>> {
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        let doc = sg.api.get(&format!("/access-keys/{}", seg(id))).await.ok();
        out.push(doc.and_then(|d| d["name"].as_str().map(str::to_string)));
    }
    out
}
