//! Access keys: a paged list with a name search, create (the token shown
//! once), a key's page with its usage, edit, rotate, disable/enable, delete.

use axum::extract::{Path, RawQuery};
use axum::http::{header, StatusCode};
use axum::response::Response;
use maud::{html, Markup};
use serde_json::{json, Map, Value};

use super::{charts, number_or_text, query, text};
use crate::console::client::{next_before_id, seg, with_query, Failure};
use crate::console::layout::{
    csrf, done_notice, failure_page, field, int, page, respond, usd, when, Control, Errors, Nav,
};
use crate::console::session::{Once, ONCE_SECONDS, PURPOSE_ONCE};
use crate::console::{cookie, see_other, set_cookie, Signed, Write, ONCE_COOKIE};

/// Keys per page of the list.
const PAGE: &str = "50";

const GRACE: [(&str, &str); 5] = [
    ("0", "none: the old token stops now"),
    ("3600", "1 hour"),
    ("86400", "1 day"),
    ("604800", "7 days"),
    ("2592000", "30 days"),
];

fn status(k: &Value) -> (&'static str, &'static str) {
    if k["disabled"].as_bool().unwrap_or(false) {
        return ("disabled", "bad");
    }
    if let Some(exp) = k["expiresAt"].as_str().and_then(crate::ids::parse_rfc3339) {
        if exp <= crate::ids::now_secs() {
            return ("expired", "bad");
        }
    }
    ("active", "good")
}

fn s<'a>(v: &'a Value, k: &str) -> &'a str {
    v[k].as_str().unwrap_or("")
}

pub async fn list(sg: Signed, q: RawQuery) -> Response {
    let q = query(q);
    let (search, before) = (q.get("q"), q.get("before"));
    let path = with_query("/access-keys", &[("limit", PAGE), ("q", search), ("beforeId", before)]);
    let doc = match sg.api.get(&path).await {
        Ok(d) => d,
        Err(f) => return failure_page(&sg, &f),
    };
    let keys = doc["accessKeys"].as_array().cloned().unwrap_or_default();
    let next = next_before_id(&doc).map(|b| with_query("/console/access-keys", &[("q", search), ("before", &b)]));
    let body = html! {
        div.titlebar {
            h1 { "Access keys" }
            @if sg.who.operates() {
                a.button.primary href="/console/access-keys/new" { "New access key" }
            }
        }
        (done_notice(q.has("done").then(|| q.get("done"))))
        form.search role="search" method="get" action="/console/access-keys" {
            label for="f-q" { "Search by name" }
            input #f-q type="search" name="q" value=(search) placeholder="name starts with…" maxlength="255";
            button type="submit" { "Search" }
            @if !search.is_empty() { a href="/console/access-keys" { "Clear" } }
        }
        @if keys.is_empty() {
            p.empty { @if search.is_empty() { "No access keys yet." } @else { "No key's name starts with “" (search) "”." } }
        } @else {
            div.table-wrap {
                table.cards {
                    caption.visually-hidden { "Access keys, newest first" }
                    thead { tr { th scope="col" { "Name" } th scope="col" { "Token" } th scope="col" { "Configuration" } th scope="col" { "Status" } th scope="col" { "Last used" } th scope="col" { "Created" } } }
                    tbody {
                        @for k in &keys {
                            @let (st, class) = status(k);
                            tr {
                                td data-label="Name" { a href={ "/console/access-keys/" (seg(s(k, "id"))) } { (s(k, "name")) } }
                                td.mono data-label="Token" { (s(k, "keyRedacted")) }
                                td data-label="Configuration" { (k["accessKeyConfiguration"]["name"].as_str().unwrap_or("—")) }
                                td data-label="Status" { span.badge.(class) { (st) } }
                                td data-label="Last used" { (when(k["lastUsed"].as_str())) }
                                td data-label="Created" { (when(k["createdAt"].as_str())) }
                            }
                        }
                    }
                }
            }
        }
        nav.pager aria-label="Pages" {
            @if !before.is_empty() { a href=(with_query("/console/access-keys", &[("q", search)])) { "← First page" } }
            @if let Some(n) = next { a href=(n) rel="next" { "Next page →" } }
        }
    };
    respond(StatusCode::OK, page(Some(&sg), Nav::Keys, "Access keys", body))
}

/// Configurations for a select: `("", "(none)")` and the first 100.
async fn config_options(sg: &Signed, current: Option<(&str, &str)>) -> Vec<(String, String)> {
    let mut out = vec![(String::new(), "(none)".to_string())];
    if let Ok(doc) = sg.api.get("/access-key-configurations?limit=100").await {
        for c in doc["accessKeyConfigurations"].as_array().into_iter().flatten() {
            out.push((s(c, "id").to_string(), format!("{} ({})", s(c, "name"), s(c, "id"))));
        }
    }
    if let Some((id, name)) = current {
        if !id.is_empty() && !out.iter().any(|(v, _)| v == id) {
            out.push((id.to_string(), format!("{name} ({id})")));
        }
    }
    out
}

const KEY_FIELDS: [&str; 6] =
    ["name", "accessKeyConfigurationId", "description", "expiresAt", "maxConcurrentRequests", "budget"];

/// The values a key form shows: from the key (edit) or as submitted.
#[derive(Default)]
struct KeyForm {
    name: String,
    config: String,
    description: String,
    expires_at: String,
    max_concurrent: String,
    budget_tokens: String,
    budget_usd: String,
    budget_window: String,
    budget_tz: String,
}

impl KeyForm {
    fn of_key(k: &Value) -> KeyForm {
        let b = &k["budget"];
        KeyForm {
            name: text(&k["name"]),
            config: text(&k["accessKeyConfiguration"]["id"]),
            description: text(&k["description"]),
            expires_at: text(&k["expiresAt"]),
            max_concurrent: text(&k["maxConcurrentRequests"]),
            budget_tokens: text(&b["tokens"]),
            budget_usd: text(&b["costUsd"]),
            budget_window: text(&b["window"]),
            budget_tz: text(&b["timeZone"]),
        }
    }

    fn of_form(f: &crate::console::Form) -> KeyForm {
        KeyForm {
            name: f.get("name").into(),
            config: f.get("accessKeyConfigurationId").into(),
            description: f.get("description").into(),
            expires_at: f.get("expiresAt").into(),
            max_concurrent: f.get("maxConcurrentRequests").into(),
            budget_tokens: f.get("budgetTokens").into(),
            budget_usd: f.get("budgetUsd").into(),
            budget_window: f.get("budgetWindow").into(),
            budget_tz: f.get("budgetTimeZone").into(),
        }
    }

    /// The API body. Creating, empty fields are left out; editing, they
    /// clear the value (`null`).
    fn body(&self, editing: bool) -> Value {
        let mut b = Map::new();
        b.insert("name".into(), Value::String(self.name.clone()));
        let mut opt = |k: &str, v: &str, val: Value| {
            if !v.trim().is_empty() {
                b.insert(k.into(), val);
            } else if editing {
                b.insert(k.into(), Value::Null);
            }
        };
        opt("accessKeyConfigurationId", &self.config, Value::String(self.config.clone()));
        opt("expiresAt", &self.expires_at, Value::String(self.expires_at.trim().to_string()));
        opt("maxConcurrentRequests", &self.max_concurrent, number_or_text(&self.max_concurrent));
        if editing || !self.description.is_empty() {
            b.insert("description".into(), Value::String(self.description.clone()));
        }
        let has_budget = !self.budget_tokens.trim().is_empty() || !self.budget_usd.trim().is_empty();
        if has_budget {
            let mut budget = Map::new();
            if !self.budget_tokens.trim().is_empty() {
                budget.insert("tokens".into(), number_or_text(&self.budget_tokens));
            }
            if !self.budget_usd.trim().is_empty() {
                budget.insert("costUsd".into(), number_or_text(&self.budget_usd));
            }
            if !self.budget_window.is_empty() {
                budget.insert("window".into(), Value::String(self.budget_window.clone()));
            }
            if !self.budget_tz.trim().is_empty() {
                budget.insert("timeZone".into(), Value::String(self.budget_tz.trim().to_string()));
            }
            b.insert("budget".into(), Value::Object(budget));
        } else if editing {
            b.insert("budget".into(), Value::Null);
        }
        Value::Object(b)
    }
}

fn budget_fieldset(v: &KeyForm, e: &Errors) -> Markup {
    let windows: Vec<(String, String)> =
        ["daily", "weekly", "monthly", "none"].iter().map(|w| (w.to_string(), w.to_string())).collect();
    let window = if v.budget_window.is_empty() { "monthly" } else { v.budget_window.as_str() };
    html! {
        fieldset.field.has-error[e.of("budget").is_some()] {
            legend { "Budget (optional)" }
            p.hint id="f-budget-hint" { "Tokens and/or USD per window; leave both empty for no budget of its own." }
            @if let Some(m) = e.of("budget") { p.error id="f-budget-error" { (m) } }
            div.row {
                (field("budgetTokens", "Tokens", None, Control::Number { value: &v.budget_tokens, step: "1" }, e))
                (field("budgetUsd", "Cost (USD)", None, Control::Number { value: &v.budget_usd, step: "any" }, e))
                (field("budgetWindow", "Window", None, Control::Select { value: window, options: &windows }, e))
                (field("budgetTimeZone", "Time zone", None, Control::Text { value: &v.budget_tz, required: false, placeholder: "UTC" }, e))
            }
        }
    }
}

async fn key_form(sg: &Signed, editing: Option<(&str, &str)>, v: &KeyForm, e: &Errors) -> Markup {
    let configs = config_options(sg, Some((&v.config, &v.config))).await;
    let action = match editing {
        Some((id, _)) => format!("/console/access-keys/{}/edit", seg(id)),
        None => "/console/access-keys".into(),
    };
    html! {
        (e.summary())
        form.editor method="post" action=(action) novalidate {
            (csrf(sg))
            (field("name", "Name", None, Control::Text { value: &v.name, required: true, placeholder: "" }, e))
            (field("accessKeyConfigurationId", "Configuration", Some("What the key may reach, its limits and shared budget."),
                Control::Select { value: &v.config, options: &configs }, e))
            (field("description", "Description", None, Control::Text { value: &v.description, required: false, placeholder: "" }, e))
            (field("expiresAt", "Expires at", Some("RFC 3339, e.g. 2027-01-31T00:00:00Z; empty: never."),
                Control::Text { value: &v.expires_at, required: false, placeholder: "" }, e))
            (field("maxConcurrentRequests", "Concurrent requests (per Envoy)", Some("Empty: the configuration's cap, if any."),
                Control::Number { value: &v.max_concurrent, step: "1" }, e))
            (budget_fieldset(v, e))
            div.actions {
                button.primary type="submit" { @if editing.is_some() { "Save" } @else { "Create key" } }
                a href=(match editing { Some((id, _)) => format!("/console/access-keys/{}", seg(id)), None => "/console/access-keys".into() }) { "Cancel" }
            }
        }
    }
}

pub async fn new(sg: Signed) -> Response {
    if !sg.who.operates() {
        return not_allowed(&sg);
    }
    let v = KeyForm { budget_window: "monthly".into(), ..KeyForm::default() };
    let form = key_form(&sg, None, &v, &Errors::default()).await;
    respond(StatusCode::OK, page(Some(&sg), Nav::Keys, "New access key", html! { h1 { "New access key" } (form) }))
}

fn not_allowed(sg: &Signed) -> Response {
    failure_page(
        sg,
        &Failure {
            status: StatusCode::FORBIDDEN,
            code: "insufficient_role".into(),
            msg: "this needs another role".into(),
            field: None,
        },
    )
}

/// Hands a fresh token to the page that shows it once: a sealed cookie for
/// that page's path only, bound to the key and this session, and a nonce
/// the session row holds until that page takes it (once).
async fn hand_over(sg: &Signed, key: &Value, rotated: Option<u64>) -> Response {
    let id = s(key, "id");
    let path = format!("/console/access-keys/{}/token", seg(id));
    let mut resp = see_other(&path);
    let Some(nonce) = sg.pend_reveal().await else { return resp };
    let once = Once {
        key_id: id.to_string(),
        token: s(key, "token").to_string(),
        session_csrf: sg.session.csrf.clone(),
        expires: crate::ids::now_secs() + ONCE_SECONDS,
        rotated,
        nonce,
    };
    if let Some(sealed) = sg.sealer.seal_json(PURPOSE_ONCE, &once) {
        resp.headers_mut()
            .append(header::SET_COOKIE, set_cookie(ONCE_COOKIE, &path, Some((&sealed, ONCE_SECONDS)), sg.secure));
    }
    resp
}

pub async fn create(w: Write) -> Response {
    let v = KeyForm::of_form(&w.form);
    match w.s.api.post("/access-keys", &v.body(false)).await {
        Ok(key) => hand_over(&w.s, &key, None).await,
        Err(f) => {
            let e = Errors::from_failure(&f, &KEY_FIELDS);
            let form = key_form(&w.s, None, &v, &e).await;
            respond(f.status, page(Some(&w.s), Nav::Keys, "New access key", html! { h1 { "New access key" } (form) }))
        }
    }
}

/// The token, once: the page right after create or rotate.
pub async fn token(sg: Signed, Path(id): Path<String>, headers: axum::http::HeaderMap) -> Response {
    let path = format!("/console/access-keys/{}/token", seg(&id));
    let once: Option<Once> = cookie(&headers, ONCE_COOKIE)
        .and_then(|c| sg.sealer.open_json::<Once>(PURPOSE_ONCE, c))
        .filter(|o| o.key_id == id && sg.session.csrf_matches(&o.session_csrf) && o.expires > crate::ids::now_secs());
    // Shown once: only if this session still holds the cookie's nonce (taken now).
    let once = match once {
        Some(o) if sg.take_reveal(&o.nonce).await => Some(o),
        _ => None,
    };
    let key_link = format!("/console/access-keys/{}", seg(&id));
    let body = match &once {
        Some(o) => html! {
            h1 { @if o.rotated.is_some() { "Access key rotated" } @else { "Access key created" } }
            p.notice.warn role="status" {
                strong { "Copy the token now." }
                " It is shown this once: the store keeps only its digest, and this page will not show it again."
            }
            div.token {
                label for="token" { "Token" }
                div.copy-row {
                    input #token.mono type="text" readonly value=(o.token) aria-describedby="token-hint";
                    button type="button" data-copy="token" hidden { "Copy" }
                }
                p.hint id="token-hint" { "Clients send it as " code { "Authorization: Bearer …" } " or " code { "x-api-key" } "." }
            }
            @match o.rotated {
                Some(0) => p { "The previous token stopped working." },
                Some(g) => p { "The previous token keeps working for " (int(i64::try_from(g).unwrap_or(i64::MAX))) " seconds." },
                None => {},
            }
            p { a.button href=(key_link) { "Continue to the key" } }
        },
        None => html! {
            h1 { "Token no longer shown" }
            p { "A token is shown once, right after its key is created or rotated, and never again. To get a new token, rotate the key." }
            p { a.button href=(key_link) { "Back to the key" } }
        },
    };
    let mut resp = respond(StatusCode::OK, page(Some(&sg), Nav::Keys, "Access key token", body));
    // Whatever happened, the token's cookie is gone after this page.
    resp.headers_mut().append(header::SET_COOKIE, set_cookie(ONCE_COOKIE, &path, None, sg.secure));
    resp
}

fn budget_view(b: &Value, u: &Value) -> Markup {
    html! {
        @if b.is_object() {
            p {
                @if let Some(t) = b["tokens"].as_i64() { (int(t)) " tokens" }
                @if b["tokens"].is_number() && b["costUsd"].is_number() { " and " }
                @if let Some(c) = b["costUsd"].as_f64() { (usd(c)) }
                " per " (s(b, "window")) " window"
                @if let Some(tz) = b["timeZone"].as_str() { " (" (tz) ")" }
            }
            @if u.is_object() {
                p.hint {
                    "This window: " (int(u["tokens"].as_i64().unwrap_or(0))) " tokens, " (usd(u["costUsd"].as_f64().unwrap_or(0.0)))
                    " spent; " (int(u["reservedTokens"].as_i64().unwrap_or(0))) " tokens reserved"
                    @if let Some(r) = u["resetsAt"].as_str() { "; resets " (when(Some(r))) }
                    "."
                }
            }
        } @else {
            p { "None of its own." }
        }
    }
}

pub async fn show(sg: Signed, Path(id): Path<String>, q: RawQuery) -> Response {
    let q = query(q);
    let key = match sg.api.get(&format!("/access-keys/{}", seg(&id))).await {
        Ok(k) => k,
        Err(f) => return failure_page(&sg, &f),
    };
    let from = crate::ids::rfc3339_secs(crate::ids::now_secs() - 30 * 86400);
    let by = |g: &'static str| with_query("/usage/summary", &[("groupBy", g), ("accessKeyId", &id), ("from", &from)]);
    let (days_path, models_path) = (by("day"), by("model"));
    let recent_path = with_query("/usage", &[("accessKeyId", &id), ("limit", "20")]);
    let (days, models, recent) =
        tokio::join!(sg.api.get(&days_path), sg.api.get(&models_path), sg.api.get(&recent_path));
    let (st, class) = status(&key);
    let disabled = key["disabled"].as_bool().unwrap_or(false);
    let base = format!("/console/access-keys/{}", seg(&id));
    let config = &key["accessKeyConfiguration"];
    let body = html! {
        div.titlebar {
            h1 { (s(&key, "name")) " " span.badge.(class) { (st) } }
        }
        (done_notice(q.has("done").then(|| q.get("done"))))
        dl.facts {
            dt { "Id" } dd.mono { (s(&key, "id")) }
            dt { "Token" } dd.mono { (s(&key, "keyRedacted")) }
            dt { "Configuration" } dd {
                @if config.is_object() { a href={ "/console/configurations/" (seg(s(config, "id"))) } { (s(config, "name")) } } @else { "—" }
            }
            dt { "Expires" } dd { (key["expiresAt"].as_str().map_or("never".to_string(), |t| when(Some(t)))) }
            dt { "Last used" } dd { (when(key["lastUsed"].as_str())) }
            dt { "Created" } dd { (when(key["createdAt"].as_str())) }
            dt { "Description" } dd { (s(&key, "description")) }
            dt { "Concurrent requests" } dd { (key["maxConcurrentRequests"].as_u64().map_or("the configuration's".to_string(), |n| n.to_string())) }
            dt { "Budget" } dd { (budget_view(&key["budget"], &key["budgetUsage"])) }
        }
        @if sg.who.operates() {
            section.actions-panel aria-labelledby="actions-h" {
                h2 #actions-h { "Actions" }
                div.action-grid {
                    div {
                        a.button href={ (base) "/edit" } { "Edit" }
                    }
                    form method="post" action={ (base) "/rotate" } data-confirm="Rotate this key? A new token is issued."{
                        (csrf(&sg))
                        label for="f-grace" { "Old token keeps working" }
                        select #f-grace name="gracePeriodSeconds" {
                            @for (v, l) in GRACE { option value=(v) { (l) } }
                        }
                        button type="submit" { "Rotate" }
                    }
                    @if disabled {
                        form method="post" action={ (base) "/enable" } {
                            (csrf(&sg))
                            button type="submit" { "Enable" }
                        }
                    } @else {
                        form method="post" action={ (base) "/disable" } data-confirm="Disable this key? The gateway refuses it from now on."{
                            (csrf(&sg))
                            button type="submit" { "Disable" }
                        }
                    }
                    div {
                        a.button.danger href={ (base) "/delete" } { "Delete…" }
                    }
                }
            }
        }
        section aria-labelledby="usage-h" {
            h2 #usage-h { "Usage, last 30 days" }
            (charts::from_summary(&days, "Per day", |g| g.to_string()))
            (charts::from_summary(&models, "Per model", |g| g.to_string()))
            h3 { "Recent requests" }
            @match &recent {
                Ok(doc) => {
                    @let rows = doc["usage"].as_array().cloned().unwrap_or_default();
                    @if rows.is_empty() { p.empty { "No requests recorded." } } @else {
                        div.table-wrap { table {
                            thead { tr { th scope="col" { "Ended" } th scope="col" { "Provider" } th scope="col" { "Model" } th scope="col" { "Status" } th.num scope="col" { "Input" } th.num scope="col" { "Output" } th.num scope="col" { "Cost" } } }
                            tbody { @for u in &rows { tr {
                                td { (when(u["endedAt"].as_str())) }
                                td { (s(u, "provider")) }
                                td { (u["model"].as_str().unwrap_or("—")) }
                                td { (u["status"].as_u64().unwrap_or(0)) }
                                td.num { (int(u["inputTokens"].as_i64().unwrap_or(0))) }
                                td.num { (int(u["outputTokens"].as_i64().unwrap_or(0))) }
                                td.num { (usd(u["costUsd"].as_f64().unwrap_or(0.0))) }
                            } } }
                        } }
                    }
                }
                Err(f) => p.notice.error { (f.msg) },
            }
        }
    };
    respond(StatusCode::OK, page(Some(&sg), Nav::Keys, s(&key, "name"), body))
}

pub async fn edit(sg: Signed, Path(id): Path<String>) -> Response {
    if !sg.who.operates() {
        return not_allowed(&sg);
    }
    let key = match sg.api.get(&format!("/access-keys/{}", seg(&id))).await {
        Ok(k) => k,
        Err(f) => return failure_page(&sg, &f),
    };
    let v = KeyForm::of_key(&key);
    let form = key_form(&sg, Some((&id, s(&key, "name"))), &v, &Errors::default()).await;
    let title = format!("Edit {}", s(&key, "name"));
    respond(StatusCode::OK, page(Some(&sg), Nav::Keys, &title, html! { h1 { (title) } (form) }))
}

pub async fn update(Path(id): Path<String>, w: Write) -> Response {
    let v = KeyForm::of_form(&w.form);
    match w.s.api.patch(&format!("/access-keys/{}", seg(&id)), &v.body(true)).await {
        Ok(_) => see_other(&format!("/console/access-keys/{}?done=saved", seg(&id))),
        Err(f) => {
            let e = Errors::from_failure(&f, &KEY_FIELDS);
            let form = key_form(&w.s, Some((&id, &v.name)), &v, &e).await;
            respond(f.status, page(Some(&w.s), Nav::Keys, "Edit access key", html! { h1 { "Edit access key" } (form) }))
        }
    }
}

pub async fn rotate(Path(id): Path<String>, w: Write) -> Response {
    let grace = w.form.get("gracePeriodSeconds").parse::<u64>().unwrap_or(0);
    match w.s.api.post(&format!("/access-keys/{}/rotate", seg(&id)), &json!({ "gracePeriodSeconds": grace })).await {
        Ok(key) => hand_over(&w.s, &key, Some(grace)).await,
        Err(f) => failure_page(&w.s, &f),
    }
}

async fn set_disabled(id: &str, w: &Write, disabled: bool) -> Response {
    match w.s.api.patch(&format!("/access-keys/{}", seg(id)), &json!({ "disabled": disabled })).await {
        Ok(_) => see_other(&format!(
            "/console/access-keys/{}?done={}",
            seg(id),
            if disabled { "disabled" } else { "enabled" }
        )),
        Err(f) => failure_page(&w.s, &f),
    }
}

pub async fn disable(Path(id): Path<String>, w: Write) -> Response {
    set_disabled(&id, &w, true).await
}

pub async fn enable(Path(id): Path<String>, w: Write) -> Response {
    set_disabled(&id, &w, false).await
}

pub async fn confirm_delete(sg: Signed, Path(id): Path<String>) -> Response {
    if !sg.who.operates() {
        return not_allowed(&sg);
    }
    let key = match sg.api.get(&format!("/access-keys/{}", seg(&id))).await {
        Ok(k) => k,
        Err(f) => return failure_page(&sg, &f),
    };
    let base = format!("/console/access-keys/{}", seg(&id));
    let body = html! {
        h1 { "Delete access key “" (s(&key, "name")) "”?" }
        p { "Clients using its token (" span.mono { (s(&key, "keyRedacted")) } ") are refused from then on. Its usage records stay. This cannot be undone." }
        form method="post" action={ (base) "/delete" } {
            (csrf(&sg))
            div.actions {
                button.danger type="submit" { "Delete the key" }
                a href=(base) { "Cancel" }
            }
        }
    };
    respond(StatusCode::OK, page(Some(&sg), Nav::Keys, "Delete access key", body))
}

pub async fn delete(Path(id): Path<String>, w: Write) -> Response {
    match w.s.api.delete(&format!("/access-keys/{}", seg(&id))).await {
        Ok(_) => see_other("/console/access-keys?done=deleted"),
        Err(f) => failure_page(&w.s, &f),
    }
}
