//! Providers (`/providers`) and the price catalog (`/prices`). Every role
//! sees them; an admin creates a custom provider, edits a provider's name
//! and base URL (a built-in's too), deletes a custom one, and sets or
//! deletes a price, each a management API call the API itself authorizes.

use axum::extract::{Path, RawQuery};
use axum::http::StatusCode;
use axum::response::Response;
use maud::{html, Markup};
use serde_json::{json, Map, Value};

use super::{number_or_text, query, text};
use crate::console::client::{seg, with_query, Failure};
use crate::console::layout::{csrf, done_notice, failure_page, field, page, respond, when, Control, Errors, Nav};
use crate::console::{see_other, Form, Signed, Write};

fn s<'a>(v: &'a Value, k: &str) -> &'a str {
    v[k].as_str().unwrap_or("")
}

fn not_allowed(sg: &Signed, what: &str) -> Response {
    failure_page(
        sg,
        &Failure {
            status: StatusCode::FORBIDDEN,
            code: "insufficient_role".into(),
            msg: format!("{what} are changed by the admin role"),
            field: None,
        },
    )
}

// ------------------------------------------------------------ providers

/// The create form's fields, named as the API names them.
const CREATE_FIELDS: [&str; 4] = ["providerId", "name", "baseUrl", "format"];
/// The editor's fields.
const EDIT_FIELDS: [&str; 2] = ["name", "baseUrl"];

fn formats() -> Vec<(String, String)> {
    vec![
        ("openai".into(), "OpenAI-compatible (/v1/chat/completions…)".into()),
        ("anthropic".into(), "Anthropic-compatible (/v1/messages)".into()),
    ]
}

fn provider_base(id: &str) -> String {
    format!("/console/providers/{}", seg(id))
}

fn create_form(sg: &Signed, f: &Form, e: &Errors) -> Markup {
    let format = if f.get("format").is_empty() { "openai" } else { f.get("format") };
    let formats = formats();
    html! {
        section aria-labelledby="add-h" {
            h2 #add-h { "Add a custom provider" }
            (e.summary())
            form.editor method="post" action="/console/providers" novalidate {
                (csrf(sg))
                div.row {
                    (field("providerId", "Id", Some("Lowercase letters, digits, '.', '_', '-'; used in model names (id/model)."), Control::Text { value: f.get("providerId"), required: true, placeholder: "my-llm" }, e))
                    (field("name", "Name", None, Control::Text { value: f.get("name"), required: true, placeholder: "" }, e))
                }
                (field("baseUrl", "Base URL", Some("http(s)://host[:port][/path], no query or fragment."), Control::Text { value: f.get("baseUrl"), required: true, placeholder: "https://llm.example.com/v1" }, e))
                (field("format", "Format", None, Control::Select { value: format, options: &formats }, e))
                div.actions { button.primary type="submit" { "Add provider" } }
            }
        }
    }
}

async fn list_page(sg: &Signed, q: &Form, form: Option<Markup>, status: StatusCode) -> Response {
    let doc = match sg.api.get("/providers").await {
        Ok(d) => d,
        Err(f) => return failure_page(sg, &f),
    };
    let items = doc["providers"].as_array().cloned().unwrap_or_default();
    let form = match form {
        Some(f) => Some(f),
        None if sg.who.admin() => Some(create_form(sg, &Form::default(), &Errors::default())),
        None => None,
    };
    let body = html! {
        h1 { "Providers" }
        (done_notice(q.has("done").then(|| q.get("done"))))
        p.hint { "Where requests go. Prices are on the " a href="/console/prices" { "Prices" } " page." }
        div.table-wrap { table {
            thead { tr { th scope="col" { "Id" } th scope="col" { "Name" } th scope="col" { "Base URL" } th scope="col" { "Format" } th scope="col" { "Models" } th scope="col" { "Kind" } } }
            tbody { @for p in &items { tr {
                td.mono { a href=(provider_base(s(p, "id"))) { (s(p, "id")) } }
                td { (s(p, "name")) }
                td.mono.wrap { (s(p, "baseUrl")) }
                td { (s(p, "format")) }
                td { (p["models"].as_array().map_or(0, Vec::len)) }
                td { @if p["builtIn"].as_bool().unwrap_or(false) { "built-in" } @else { "custom" } }
            } } }
        } }
        @if let Some(f) = form { (f) }
    };
    respond(status, page(Some(sg), Nav::Providers, "Providers", body))
}

pub async fn list(sg: Signed, q: RawQuery) -> Response {
    list_page(&sg, &query(q), None, StatusCode::OK).await
}

pub async fn create(w: Write) -> Response {
    let f = &w.form;
    let body = json!({
        "providerId": f.get("providerId"),
        "name": f.get("name"),
        "baseUrl": f.get("baseUrl"),
        "format": f.get("format"),
    });
    match w.s.api.post("/providers", &body).await {
        Ok(p) => see_other(&format!("{}?done=created", provider_base(s(&p, "id")))),
        Err(fail) if fail.status == StatusCode::FORBIDDEN => failure_page(&w.s, &fail),
        Err(fail) => {
            let form = create_form(&w.s, f, &Errors::from_failure(&fail, &CREATE_FIELDS));
            list_page(&w.s, &Form::default(), Some(form), fail.status).await
        }
    }
}

fn show_page(
    sg: &Signed,
    id: &str,
    p: &Value,
    typed: Option<&Form>,
    q: &Form,
    e: &Errors,
    status: StatusCode,
) -> Response {
    let base = provider_base(id);
    let built_in = p["builtIn"].as_bool().unwrap_or(false);
    let name = typed.map_or(s(p, "name"), |f| f.get("name"));
    let base_url = typed.map_or(s(p, "baseUrl"), |f| f.get("baseUrl"));
    let models: Vec<String> = p["models"].as_array().into_iter().flatten().map(text).collect();
    let body = html! {
        h1 { (s(p, "name")) }
        (done_notice(q.has("done").then(|| q.get("done"))))
        dl.facts {
            dt { "Id" } dd.mono { (s(p, "id")) }
            dt { "Kind" } dd { @if built_in { "built-in" } @else { "custom" } }
            dt { "Base URL" } dd.mono.wrap { (s(p, "baseUrl")) }
            dt { "Format" } dd { (s(p, "format")) }
            dt { "Auth" } dd { (s(p, "auth")) }
            dt { "Models" } dd.mono { @if models.is_empty() { "any" } @else { (models.join(", ")) } }
            dt { "Updated" } dd { (when(p["updatedAt"].as_str())) }
        }
        @if sg.who.admin() {
            section aria-labelledby="edit-h" {
                h2 #edit-h { "Edit" }
                (e.summary())
                form.editor method="post" action=(base) novalidate {
                    (csrf(sg))
                    (field("name", "Name", None, Control::Text { value: name, required: true, placeholder: "" }, e))
                    (field("baseUrl", "Base URL", Some("http(s)://host[:port][/path], no query or fragment."), Control::Text { value: base_url, required: true, placeholder: "" }, e))
                    div.actions {
                        button.primary type="submit" { "Save" }
                        a href="/console/providers" { "Cancel" }
                        @if !built_in { a.danger-link href={ (base) "/delete" } { "Delete…" } }
                    }
                }
            }
        }
    };
    respond(status, page(Some(sg), Nav::Providers, s(p, "name"), body))
}

pub async fn show(sg: Signed, Path(id): Path<String>, q: RawQuery) -> Response {
    match sg.api.get(&format!("/providers/{}", seg(&id))).await {
        Ok(p) => show_page(&sg, &id, &p, None, &query(q), &Errors::default(), StatusCode::OK),
        Err(f) => failure_page(&sg, &f),
    }
}

pub async fn update(Path(id): Path<String>, w: Write) -> Response {
    let path = format!("/providers/{}", seg(&id));
    let body = json!({ "name": w.form.get("name"), "baseUrl": w.form.get("baseUrl") });
    match w.s.api.patch(&path, &body).await {
        Ok(_) => see_other(&format!("{}?done=saved", provider_base(&id))),
        Err(f) if f.status == StatusCode::FORBIDDEN => failure_page(&w.s, &f),
        Err(f) => match w.s.api.get(&path).await {
            Ok(p) => show_page(
                &w.s,
                &id,
                &p,
                Some(&w.form),
                &Form::default(),
                &Errors::from_failure(&f, &EDIT_FIELDS),
                f.status,
            ),
            Err(_) => failure_page(&w.s, &f),
        },
    }
}

pub async fn confirm_delete(sg: Signed, Path(id): Path<String>) -> Response {
    if !sg.who.admin() {
        return not_allowed(&sg, "providers");
    }
    let p = match sg.api.get(&format!("/providers/{}", seg(&id))).await {
        Ok(p) => p,
        Err(f) => return failure_page(&sg, &f),
    };
    let base = provider_base(&id);
    let body = html! {
        h1 { "Delete provider “" (s(&p, "name")) "”?" }
        p { "The API refuses while provider keys or configurations use it. This cannot be undone." }
        form method="post" action={ (base) "/delete" } {
            (csrf(&sg))
            div.actions { button.danger type="submit" { "Delete the provider" } a href=(base) { "Cancel" } }
        }
    };
    respond(StatusCode::OK, page(Some(&sg), Nav::Providers, "Delete provider", body))
}

pub async fn delete(Path(id): Path<String>, w: Write) -> Response {
    match w.s.api.delete(&format!("/providers/{}", seg(&id))).await {
        Ok(_) => see_other("/console/providers?done=deleted"),
        Err(f) => failure_page(&w.s, &f),
    }
}

// ------------------------------------------------------------ prices

/// The price form's fields, named as the API names them (`provider` and
/// `model` are the path's).
const PRICE_FIELDS: [&str; 5] =
    ["provider", "model", "inputPerMillionUsd", "outputPerMillionUsd", "cachedInputPerMillionUsd"];

/// The API path of a price (a `/` inside a model is encoded, as the API wants).
fn price_path(provider: &str, model: &str) -> String {
    format!("/prices/{}/{}", seg(provider), seg(model))
}

fn usd_text(v: &Value) -> String {
    v.as_f64().map_or_else(String::new, |x| x.to_string())
}

fn price_form(sg: &Signed, f: &Form, e: &Errors) -> Markup {
    html! {
        section aria-labelledby="set-h" {
            h2 #set-h { "Set a price" }
            p.hint { "Creates the price, or replaces the one of this provider and model. The model may end with * (a prefix); */* is the catch-all." }
            (e.summary())
            form.editor method="post" action="/console/prices" novalidate {
                (csrf(sg))
                div.row {
                    (field("provider", "Provider", None, Control::Text { value: f.get("provider"), required: true, placeholder: "openai" }, e))
                    (field("model", "Model", None, Control::Text { value: f.get("model"), required: true, placeholder: "gpt-4o or gpt-4o*" }, e))
                }
                div.row {
                    (field("inputPerMillionUsd", "Input, USD per million tokens", None, Control::Number { value: f.get("inputPerMillionUsd"), step: "any" }, e))
                    (field("outputPerMillionUsd", "Output, USD per million tokens", None, Control::Number { value: f.get("outputPerMillionUsd"), step: "any" }, e))
                    (field("cachedInputPerMillionUsd", "Cached input, USD per million tokens", Some("Optional: the input price when empty."), Control::Number { value: f.get("cachedInputPerMillionUsd"), step: "any" }, e))
                }
                div.actions { button.primary type="submit" { "Set price" } }
            }
        }
    }
}

async fn prices_page(
    sg: &Signed,
    q: &Form,
    form: Option<Markup>,
    notice: Option<&str>,
    status: StatusCode,
) -> Response {
    let doc = match sg.api.get("/prices").await {
        Ok(d) => d,
        Err(f) => return failure_page(sg, &f),
    };
    let items = doc["prices"].as_array().cloned().unwrap_or_default();
    let form = match form {
        Some(f) => Some(f),
        None if sg.who.admin() => {
            // "Edit" links prefill the form with the price's values.
            let mut prefill = Form::default();
            if let Some(p) =
                items.iter().find(|p| s(p, "provider") == q.get("provider") && s(p, "model") == q.get("model"))
            {
                prefill = Form(vec![
                    ("provider".into(), s(p, "provider").into()),
                    ("model".into(), s(p, "model").into()),
                    ("inputPerMillionUsd".into(), usd_text(&p["inputPerMillionUsd"])),
                    ("outputPerMillionUsd".into(), usd_text(&p["outputPerMillionUsd"])),
                    ("cachedInputPerMillionUsd".into(), usd_text(&p["cachedInputPerMillionUsd"])),
                ]);
            }
            Some(price_form(sg, &prefill, &Errors::default()))
        }
        None => None,
    };
    let body = html! {
        h1 { "Prices" }
        (done_notice(q.has("done").then(|| q.get("done"))))
        @if let Some(n) = notice { p.notice.error role="alert" { (n) } }
        p.hint { "USD per million tokens. A request's price: its exact provider/model, else the longest provider/prefix*, else */*." }
        @if items.is_empty() { p.empty { "No prices." } } @else {
            div.table-wrap { table.cards {
                thead { tr {
                    th scope="col" { "Provider" } th scope="col" { "Model" } th scope="col" { "Input" } th scope="col" { "Output" } th scope="col" { "Cached input" } th scope="col" { "Updated" }
                    @if sg.who.admin() { th scope="col" { span.visually-hidden { "Actions" } } }
                } }
                tbody { @for p in &items {
                    @let (prov, model) = (s(p, "provider"), s(p, "model"));
                    tr {
                        td.mono data-label="Provider" { (prov) }
                        td.mono data-label="Model" { (model) }
                        td data-label="Input" { (usd_text(&p["inputPerMillionUsd"])) }
                        td data-label="Output" { (usd_text(&p["outputPerMillionUsd"])) }
                        td data-label="Cached input" { @if p["cachedInputPerMillionUsd"].is_null() { "as input" } @else { (usd_text(&p["cachedInputPerMillionUsd"])) } }
                        td data-label="Updated" { (when(p["updatedAt"].as_str())) }
                        @if sg.who.admin() { td {
                            a href={ (with_query("/console/prices", &[("provider", prov), ("model", model)])) "#set-h" } { "Edit" }
                            " "
                            a.danger-link href=(with_query("/console/prices/delete", &[("provider", prov), ("model", model)])) { "Delete…" }
                        } }
                    }
                } }
            } }
        }
        @if let Some(f) = form { (f) }
    };
    respond(status, page(Some(sg), Nav::Prices, "Prices", body))
}

pub async fn prices(sg: Signed, q: RawQuery) -> Response {
    prices_page(&sg, &query(q), None, None, StatusCode::OK).await
}

pub async fn set_price(w: Write) -> Response {
    let f = &w.form;
    let mut body = Map::new();
    body.insert("inputPerMillionUsd".into(), number_or_text(f.get("inputPerMillionUsd")));
    body.insert("outputPerMillionUsd".into(), number_or_text(f.get("outputPerMillionUsd")));
    if !f.get("cachedInputPerMillionUsd").trim().is_empty() {
        body.insert("cachedInputPerMillionUsd".into(), number_or_text(f.get("cachedInputPerMillionUsd")));
    }
    let (provider, model) = (f.get("provider").trim(), f.get("model").trim());
    let mut e = Errors::default();
    for (name, v) in [("provider", provider), ("model", model)] {
        if v.is_empty() {
            e.field(name, format!("{name} is required"));
        }
    }
    let status = if e.is_empty() {
        match w.s.api.put(&price_path(provider, model), &Value::Object(body)).await {
            Ok(_) => return see_other("/console/prices?done=saved"),
            Err(fail) if fail.status == StatusCode::FORBIDDEN => return failure_page(&w.s, &fail),
            Err(fail) => {
                e = Errors::from_failure(&fail, &PRICE_FIELDS);
                fail.status
            }
        }
    } else {
        StatusCode::BAD_REQUEST
    };
    let form = price_form(&w.s, f, &e);
    prices_page(&w.s, &Form::default(), Some(form), None, status).await
}

pub async fn confirm_delete_price(sg: Signed, q: RawQuery) -> Response {
    if !sg.who.admin() {
        return not_allowed(&sg, "prices");
    }
    let q = query(q);
    let (provider, model) = (q.get("provider"), q.get("model"));
    let body = html! {
        h1 { "Delete the price of “" (provider) "/" (model) "”?" }
        p { "Requests for this model are then priced by the next match (a prefix*, or */*). This cannot be undone." }
        form method="post" action="/console/prices/delete" {
            (csrf(&sg))
            input type="hidden" name="provider" value=(provider);
            input type="hidden" name="model" value=(model);
            div.actions { button.danger type="submit" { "Delete the price" } a href="/console/prices" { "Cancel" } }
        }
    };
    respond(StatusCode::OK, page(Some(&sg), Nav::Prices, "Delete price", body))
}

pub async fn delete_price(w: Write) -> Response {
    match w.s.api.delete(&price_path(w.form.get("provider"), w.form.get("model"))).await {
        Ok(_) => see_other("/console/prices?done=deleted"),
        // The catch-all (409) and the like: the list, with the API's message.
        Err(f) if f.status == StatusCode::CONFLICT => {
            prices_page(&w.s, &Form::default(), None, Some(&f.msg), f.status).await
        }
        Err(f) => failure_page(&w.s, &f),
    }
}
