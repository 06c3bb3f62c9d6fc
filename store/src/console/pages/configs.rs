//! Access-key configurations: a paged list and an editor. The editor has a
//! field per part of a configuration (its name and texts, and a JSON text
//! area for each of `access`, `router`, `rateLimits`, `requestLimits` and
//! `budget`), so that the API's validation error (`details.field`, e.g.
//! `rateLimits.requestsPerMinute`) is shown next to the part it is about.

use axum::extract::{Path, RawQuery};
use axum::http::StatusCode;
use axum::response::Response;
use maud::{html, Markup};
use serde_json::{Map, Value};

use super::{query, text};
use crate::console::client::{next_before_id, seg, with_query};
use crate::console::layout::{csrf, done_notice, failure_page, field, page, respond, when, Control, Errors, Nav};
use crate::console::{see_other, Form, Signed, Write};

/// The JSON parts of a configuration, with their hints and examples.
const PARTS: [(&str, &str, &str); 5] = [
    (
        "access",
        "Access (allow-lists)",
        r#"{"providers": {"allow": ["openai"]}, "models": {"allow": ["openai/gpt-4o*"]}}"#,
    ),
    ("router", "Router", r#"{"rules": [{"provider": "openai", "steps": [{"type": "managed"}]}]}"#),
    ("rateLimits", "Rate limits", r#"{"requestsPerMinute": 600, "tokensPerMinute": 100000}"#),
    ("requestLimits", "Request limits", r#"{"maxOutputTokens": 4096, "maxConcurrentRequests": 10}"#),
    (
        "budget",
        "Budget (shared by every key using it)",
        r#"{"costUsd": 100, "window": "monthly", "timeZone": "Europe/Berlin"}"#,
    ),
];

const FIELDS: [&str; 8] =
    ["name", "description", "metadata", "access", "router", "rateLimits", "requestLimits", "budget"];

fn s<'a>(v: &'a Value, k: &str) -> &'a str {
    v[k].as_str().unwrap_or("")
}

pub async fn list(sg: Signed, q: RawQuery) -> Response {
    let q = query(q);
    let before = q.get("before");
    let doc =
        match sg.api.get(&with_query("/access-key-configurations", &[("limit", "50"), ("beforeId", before)])).await {
            Ok(d) => d,
            Err(f) => return failure_page(&sg, &f),
        };
    let items = doc["accessKeyConfigurations"].as_array().cloned().unwrap_or_default();
    let next = next_before_id(&doc).map(|b| with_query("/console/configurations", &[("before", &b)]));
    let body = html! {
        div.titlebar {
            h1 { "Access-key configurations" }
            @if sg.who.operates() { a.button.primary href="/console/configurations/new" { "New configuration" } }
        }
        (done_notice(q.has("done").then(|| q.get("done"))))
        @if items.is_empty() { p.empty { "No configurations yet." } } @else {
            div.table-wrap { table.cards {
                thead { tr { th scope="col" { "Name" } th scope="col" { "Id" } th scope="col" { "Limits" } th scope="col" { "Budget" } th scope="col" { "Updated" } } }
                tbody { @for c in &items { tr {
                    td data-label="Name" { a href={ "/console/configurations/" (seg(s(c, "id"))) } { (s(c, "name")) } }
                    td.mono data-label="Id" { (s(c, "id")) }
                    td data-label="Limits" { @if let Some(r) = c["rateLimits"]["requestsPerMinute"].as_u64() { (r) " req/min" } @else { "—" } }
                    td data-label="Budget" { @if c["budget"].is_object() { (s(&c["budget"], "window")) } @else { "—" } }
                    td data-label="Updated" { (when(c["updatedAt"].as_str())) }
                } } }
            } }
        }
        nav.pager aria-label="Pages" {
            @if !before.is_empty() { a href="/console/configurations" { "← First page" } }
            @if let Some(n) = next { a href=(n) rel="next" { "Next page →" } }
        }
    };
    respond(StatusCode::OK, page(Some(&sg), Nav::Configs, "Configurations", body))
}

/// The editor's values: text as shown (JSON pretty-printed).
struct Values(Vec<(&'static str, String)>);

impl Values {
    fn of_config(c: &Value) -> Values {
        let mut v = vec![
            ("name", text(&c["name"])),
            ("description", text(&c["description"])),
            ("metadata", text(&c["metadata"])),
        ];
        for (k, _, _) in PARTS {
            let part = &c[k];
            v.push((
                k,
                if part.is_null() { String::new() } else { serde_json::to_string_pretty(part).unwrap_or_default() },
            ));
        }
        Values(v)
    }

    fn of_form(f: &Form) -> Values {
        Values(FIELDS.iter().map(|k| (*k, f.get(k).to_string())).collect())
    }

    fn get(&self, k: &str) -> &str {
        self.0.iter().find(|(n, _)| *n == k).map_or("", |(_, v)| v.as_str())
    }

    /// The API body, or the parts that are not JSON. Creating, empty parts
    /// are left out; editing, an empty part removes it (`null`).
    fn body(&self, editing: bool) -> Result<Value, Errors> {
        let mut b = Map::new();
        let mut e = Errors::default();
        b.insert("name".into(), Value::String(self.get("name").to_string()));
        for k in ["description", "metadata"] {
            if editing || !self.get(k).is_empty() {
                b.insert(k.into(), Value::String(self.get(k).to_string()));
            }
        }
        for (k, _, _) in PARTS {
            let t = self.get(k).trim();
            if t.is_empty() {
                if editing {
                    b.insert(k.into(), Value::Null);
                }
                continue;
            }
            match serde_json::from_str::<Value>(t) {
                Ok(v) => {
                    b.insert(k.into(), v);
                }
                Err(err) => e.field(k, format!("not valid JSON: {err}")),
            }
        }
        if e.is_empty() {
            Ok(Value::Object(b))
        } else {
            Err(e)
        }
    }
}

fn editor(sg: &Signed, id: Option<&str>, v: &Values, e: &Errors) -> Markup {
    let writable = sg.who.operates();
    let action = id.map_or("/console/configurations".to_string(), |id| format!("/console/configurations/{}", seg(id)));
    let area = |k: &str, label: &str, example: &str| -> Markup {
        let hint = format!("JSON; empty: none. Example: {example}");
        let value = v.get(k);
        let rows = u32::try_from(value.lines().count().clamp(3, 24)).unwrap_or(6);
        if writable {
            field(k, label, Some(&hint), Control::TextArea { value, rows, placeholder: "" }, e)
        } else {
            html! {
                div.field {
                    label for={ "f-" (k) } { (label) }
                    textarea id={ "f-" (k) } name=(k) rows=(rows) readonly { (value) }
                }
            }
        }
    };
    html! {
        (e.summary())
        form.editor method="post" action=(action) novalidate {
            (csrf(sg))
            @if writable {
                (field("name", "Name", Some("Unique among configurations."), Control::Text { value: v.get("name"), required: true, placeholder: "" }, e))
                (field("description", "Description", None, Control::Text { value: v.get("description"), required: false, placeholder: "" }, e))
                (field("metadata", "Metadata", Some("Free text, up to 4096 characters."), Control::Text { value: v.get("metadata"), required: false, placeholder: "" }, e))
            } @else {
                dl.facts {
                    dt { "Name" } dd { (v.get("name")) }
                    dt { "Description" } dd { (v.get("description")) }
                    dt { "Metadata" } dd { (v.get("metadata")) }
                }
            }
            @for (k, label, example) in PARTS { (area(k, label, example)) }
            @if writable {
                div.actions {
                    button.primary type="submit" { @if id.is_some() { "Save" } @else { "Create configuration" } }
                    a href="/console/configurations" { "Cancel" }
                    @if let Some(id) = id { a.danger-link href={ "/console/configurations/" (seg(id)) "/delete" } { "Delete…" } }
                }
            }
        }
    }
}

pub async fn new(sg: Signed) -> Response {
    let v = Values(vec![("name", String::new())]);
    let body = html! { h1 { "New configuration" } (editor(&sg, None, &v, &Errors::default())) };
    respond(StatusCode::OK, page(Some(&sg), Nav::Configs, "New configuration", body))
}

pub async fn create(w: Write) -> Response {
    let v = Values::of_form(&w.form);
    let result = match v.body(false) {
        Ok(body) => {
            w.s.api
                .post("/access-key-configurations", &body)
                .await
                .map_err(|f| (f.status, Errors::from_failure(&f, &FIELDS)))
        }
        Err(e) => Err((StatusCode::BAD_REQUEST, e)),
    };
    match result {
        Ok(c) => see_other(&format!("/console/configurations/{}?done=created", seg(s(&c, "id")))),
        Err((status, e)) => {
            let body = html! { h1 { "New configuration" } (editor(&w.s, None, &v, &e)) };
            respond(status, page(Some(&w.s), Nav::Configs, "New configuration", body))
        }
    }
}

pub async fn edit(sg: Signed, Path(id): Path<String>, q: RawQuery) -> Response {
    let q = query(q);
    let c = match sg.api.get(&format!("/access-key-configurations/{}", seg(&id))).await {
        Ok(c) => c,
        Err(f) => return failure_page(&sg, &f),
    };
    let title = s(&c, "name").to_string();
    let body = html! {
        h1 { (title) }
        (done_notice(q.has("done").then(|| q.get("done"))))
        p.hint { "Id " span.mono { (id) } " · updated " (when(c["updatedAt"].as_str())) }
        (editor(&sg, Some(&id), &Values::of_config(&c), &Errors::default()))
    };
    respond(StatusCode::OK, page(Some(&sg), Nav::Configs, &title, body))
}

pub async fn update(Path(id): Path<String>, w: Write) -> Response {
    let v = Values::of_form(&w.form);
    let result = match v.body(true) {
        Ok(body) => {
            w.s.api
                .patch(&format!("/access-key-configurations/{}", seg(&id)), &body)
                .await
                .map_err(|f| (f.status, Errors::from_failure(&f, &FIELDS)))
        }
        Err(e) => Err((StatusCode::BAD_REQUEST, e)),
    };
    match result {
        Ok(_) => see_other(&format!("/console/configurations/{}?done=saved", seg(&id))),
        Err((status, e)) => {
            let title = format!("Edit {}", v.get("name"));
            let body = html! { h1 { (title) } (editor(&w.s, Some(&id), &v, &e)) };
            respond(status, page(Some(&w.s), Nav::Configs, &title, body))
        }
    }
}

pub async fn confirm_delete(sg: Signed, Path(id): Path<String>) -> Response {
    let c = match sg.api.get(&format!("/access-key-configurations/{}", seg(&id))).await {
        Ok(c) => c,
        Err(f) => return failure_page(&sg, &f),
    };
    let base = format!("/console/configurations/{}", seg(&id));
    let body = html! {
        h1 { "Delete configuration “" (s(&c, "name")) "”?" }
        p { "The API refuses while access keys use it. This cannot be undone." }
        form method="post" action={ (base) "/delete" } {
            (csrf(&sg))
            div.actions { button.danger type="submit" { "Delete the configuration" } a href=(base) { "Cancel" } }
        }
    };
    respond(StatusCode::OK, page(Some(&sg), Nav::Configs, "Delete configuration", body))
}

pub async fn delete(Path(id): Path<String>, w: Write) -> Response {
    match w.s.api.delete(&format!("/access-key-configurations/{}", seg(&id))).await {
        Ok(_) => see_other("/console/configurations?done=deleted"),
        Err(f) => failure_page(&w.s, &f),
    }
}
