//! Provider keys (write-only values: set on create, replaced by rotate,
//! never shown; the API answers only their redacted form).

use axum::extract::{Path, RawQuery};
use axum::http::StatusCode;
use axum::response::Response;
use maud::{html, Markup};
use serde_json::{json, Value};

use super::query;
use crate::console::client::{next_before_id, seg, with_query};
use crate::console::layout::{csrf, done_notice, failure_page, field, page, respond, when, Control, Errors, Nav};
use crate::console::{see_other, Signed, Write};

fn s<'a>(v: &'a Value, k: &str) -> &'a str {
    v[k].as_str().unwrap_or("")
}

async fn provider_options(sg: &Signed) -> Vec<(String, String)> {
    let doc = sg.api.get("/providers").await.unwrap_or(Value::Null);
    doc["providers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| (s(p, "id").to_string(), format!("{} ({})", s(p, "name"), s(p, "id"))))
        .collect()
}

const FIELDS: [&str; 4] = ["providerId", "name", "value", "managed"];

async fn create_form(sg: &Signed, provider: &str, name: &str, managed: bool, e: &Errors) -> Markup {
    let providers = provider_options(sg).await;
    html! {
        section aria-labelledby="add-h" {
            h2 #add-h { "Add a provider key" }
            (e.summary())
            form.editor method="post" action="/console/provider-keys" novalidate {
                (csrf(sg))
                div.row {
                    (field("providerId", "Provider", None, Control::Select { value: provider, options: &providers }, e))
                    (field("name", "Name", None, Control::Text { value: name, required: true, placeholder: "" }, e))
                }
                (field("value", "Value", Some("The provider's API key. Write-only: it is encrypted at rest and never shown again, here or by the API."), Control::Password, e))
                (field("managed", "Managed: used by default for its provider", None, Control::Check { checked: managed }, e))
                div.actions { button.primary type="submit" { "Add provider key" } }
            }
        }
    }
}

async fn list_page(sg: &Signed, q: &crate::console::Form, form: Option<Markup>, status: StatusCode) -> Response {
    let before = q.get("before");
    let doc = match sg.api.get(&with_query("/provider-keys", &[("limit", "50"), ("beforeId", before)])).await {
        Ok(d) => d,
        Err(f) => return failure_page(sg, &f),
    };
    let items = doc["providerKeys"].as_array().cloned().unwrap_or_default();
    let next = next_before_id(&doc).map(|b| with_query("/console/provider-keys", &[("before", &b)]));
    let form = match form {
        Some(f) => Some(f),
        None if sg.who.admin() => Some(create_form(sg, "openai", "", false, &Errors::default()).await),
        None => None,
    };
    let body = html! {
        h1 { "Provider keys" }
        (done_notice(q.has("done").then(|| q.get("done"))))
        p.hint { "Upstream credentials. Their values are write-only: set on creation, replaced by rotation, never shown." }
        @if items.is_empty() { p.empty { "No provider keys yet." } } @else {
            div.table-wrap { table.cards {
                thead { tr { th scope="col" { "Name" } th scope="col" { "Provider" } th scope="col" { "Value" } th scope="col" { "Managed" } th scope="col" { "Last used" } } }
                tbody { @for k in &items { tr {
                    td data-label="Name" { a href={ "/console/provider-keys/" (seg(s(k, "id"))) } { (s(k, "name")) } }
                    td data-label="Provider" { (s(k, "providerId")) }
                    td.mono data-label="Value" { (s(k, "keyRedacted")) }
                    td data-label="Managed" { @if k["managed"].as_bool().unwrap_or(false) { "yes" } @else { "no" } }
                    td data-label="Last used" { (when(k["lastUsed"].as_str())) }
                } } }
            } }
        }
        nav.pager aria-label="Pages" {
            @if !before.is_empty() { a href="/console/provider-keys" { "← First page" } }
            @if let Some(n) = next { a href=(n) rel="next" { "Next page →" } }
        }
        @if let Some(f) = form { (f) }
    };
    crate::console::layout::respond(status, page(Some(sg), Nav::ProviderKeys, "Provider keys", body))
}

pub async fn list(sg: Signed, q: RawQuery) -> Response {
    list_page(&sg, &query(q), None, StatusCode::OK).await
}

pub async fn create(w: Write) -> Response {
    let f = &w.form;
    let managed = f.get("managed") == "on";
    let body = json!({
        "providerId": f.get("providerId"),
        "name": f.get("name"),
        "value": f.get("value"),
        "managed": managed,
    });
    match w.s.api.post("/provider-keys", &body).await {
        Ok(k) => see_other(&format!("/console/provider-keys/{}?done=created", seg(s(&k, "id")))),
        Err(fail) => {
            // The value is not sent back to the browser, even refused.
            let e = Errors::from_failure(&fail, &FIELDS);
            let form = create_form(&w.s, f.get("providerId"), f.get("name"), managed, &e).await;
            list_page(&w.s, &crate::console::Form::default(), Some(form), fail.status).await
        }
    }
}

pub async fn show(sg: Signed, Path(id): Path<String>, q: RawQuery) -> Response {
    let q = query(q);
    let k = match sg.api.get(&format!("/provider-keys/{}", seg(&id))).await {
        Ok(k) => k,
        Err(f) => return failure_page(&sg, &f),
    };
    rotate_page(&sg, &id, &k, &q, &Errors::default(), StatusCode::OK)
}

fn rotate_page(sg: &Signed, id: &str, k: &Value, q: &crate::console::Form, e: &Errors, status: StatusCode) -> Response {
    let base = format!("/console/provider-keys/{}", seg(id));
    let body = html! {
        h1 { (s(k, "name")) }
        (done_notice(q.has("done").then(|| q.get("done"))))
        dl.facts {
            dt { "Id" } dd.mono { (s(k, "id")) }
            dt { "Provider" } dd { (s(k, "providerId")) }
            dt { "Value" } dd.mono { (s(k, "keyRedacted")) " " span.hint { "(write-only)" } }
            dt { "Managed" } dd { @if k["managed"].as_bool().unwrap_or(false) { "yes: used by default for its provider" } @else { "no: used where a router names it" } }
            dt { "Last used" } dd { (when(k["lastUsed"].as_str())) }
            dt { "Updated" } dd { (when(k["updatedAt"].as_str())) }
        }
        @if sg.who.admin() {
            section aria-labelledby="rotate-h" {
                h2 #rotate-h { "Rotate the value" }
                (e.summary())
                form.editor method="post" action={ (base) "/rotate" } novalidate {
                    (csrf(sg))
                    (field("value", "New value", Some("Replaces the stored value at once; never shown again."), Control::Password, e))
                    div.actions {
                        button.primary type="submit" { "Replace the value" }
                        a.danger-link href={ (base) "/delete" } { "Delete…" }
                    }
                }
            }
        }
    };
    respond(status, page(Some(sg), Nav::ProviderKeys, s(k, "name"), body))
}

pub async fn rotate(Path(id): Path<String>, w: Write) -> Response {
    let path = format!("/provider-keys/{}", seg(&id));
    match w.s.api.post(&format!("{path}/rotate"), &json!({ "value": w.form.get("value") })).await {
        Ok(_) => see_other(&format!("/console/provider-keys/{}?done=rotated", seg(&id))),
        Err(f) => match w.s.api.get(&path).await {
            Ok(k) => rotate_page(
                &w.s,
                &id,
                &k,
                &crate::console::Form::default(),
                &Errors::from_failure(&f, &["value"]),
                f.status,
            ),
            Err(_) => failure_page(&w.s, &f),
        },
    }
}

pub async fn confirm_delete(sg: Signed, Path(id): Path<String>) -> Response {
    let k = match sg.api.get(&format!("/provider-keys/{}", seg(&id))).await {
        Ok(k) => k,
        Err(f) => return failure_page(&sg, &f),
    };
    let base = format!("/console/provider-keys/{}", seg(&id));
    let body = html! {
        h1 { "Delete provider key “" (s(&k, "name")) "”?" }
        p { "Requests that would use it use the provider's other keys, or fail. This cannot be undone." }
        form method="post" action={ (base) "/delete" } {
            (csrf(&sg))
            div.actions { button.danger type="submit" { "Delete the provider key" } a href=(base) { "Cancel" } }
        }
    };
    respond(StatusCode::OK, page(Some(&sg), Nav::ProviderKeys, "Delete provider key", body))
}

pub async fn delete(Path(id): Path<String>, w: Write) -> Response {
    match w.s.api.delete(&format!("/provider-keys/{}", seg(&id))).await {
        Ok(_) => see_other("/console/provider-keys?done=deleted"),
        Err(f) => failure_page(&w.s, &f),
    }
}
