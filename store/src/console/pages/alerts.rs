//! Alert webhooks (`/alert-webhooks`): a paged list; for admins a create
//! form, an editor, a secret replaced, delete behind a confirmation; and a
//! webhook's deliveries (`GET /alert-webhooks/{id}/deliveries`), newest
//! first. The secret is write-only: the API answers it only when creating,
//! and the console shows it once, on the page right after it was generated
//! (a sealed cookie for that page, as an access key's token), never again.
//! The URL is shown as the API answers it: whole to an admin, to any other
//! role redacted to its scheme and host (the path is often the receiver's
//! credential), with its fingerprint for every role.

use std::collections::HashMap;

use axum::extract::{Path, RawQuery};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::Response;
use maud::{html, Markup};
use serde_json::{json, Map, Value};

use super::{number_or_text, query, text};
use crate::console::client::{next_before_id, seg, with_query, Failure};
use crate::console::layout::{csrf, done_notice, failure_page, field, int, page, respond, when, Control, Errors, Nav};
use crate::console::session::{Once, ONCE_SECONDS, PURPOSE_SECRET_ONCE};
use crate::console::{cookie, see_other, set_cookie, Form, Signed, Write, ONCE_COOKIE};

/// Webhooks, and deliveries, per page.
const PAGE: &str = "50";

/// The events a webhook may hear, as the API names them, with labels.
const EVENTS: [(&str, &str); 3] = [
    ("budget", "Budgets: a key's or a configuration's budget crosses a threshold"),
    ("credits", "Credits: the credit balance crosses a threshold (store-wide webhooks only)"),
    ("key_expiry", "Key expiry: a key expires within the warning days"),
];

/// The form's fields, named as the API names them (its `details.field`).
const FIELDS: [&str; 6] = ["url", "configurationId", "thresholds", "events", "expiryWarningDays", "enabled"];

fn s<'a>(v: &'a Value, k: &str) -> &'a str {
    v[k].as_str().unwrap_or("")
}

/// The fingerprint of a webhook's whole URL, as the API answers it.
fn fingerprint(h: &Value) -> Markup {
    html! {
        span.hint.mono title="URL fingerprint: the first 12 hex digits of the SHA-256 of the whole URL" { (s(h, "urlFingerprint")) }
    }
}

fn base(id: &str) -> String {
    format!("/console/alerts/{}", seg(id))
}

fn not_allowed(sg: &Signed) -> Response {
    failure_page(
        sg,
        &Failure {
            status: StatusCode::FORBIDDEN,
            code: "insufficient_role".into(),
            msg: "alert webhooks are changed by the admin role".into(),
            field: None,
        },
    )
}

/// `[50, 80, 100]` → `50%, 80%, 100%`.
fn thresholds_text(h: &Value) -> String {
    h["thresholds"].as_array().into_iter().flatten().map(|t| format!("{}%", text(t))).collect::<Vec<_>>().join(", ")
}

fn events_text(h: &Value) -> String {
    h["events"].as_array().into_iter().flatten().map(|e| text(e).replace('_', " ")).collect::<Vec<_>>().join(", ")
}

/// The names of the configurations that scope `hooks` (a page of them):
/// the first 100 configurations, then any other one by its id.
async fn config_names(sg: &Signed, hooks: &[&Value]) -> HashMap<String, String> {
    let mut names = HashMap::new();
    let wanted: Vec<&str> = hooks.iter().filter_map(|h| h["configurationId"].as_str()).collect();
    if wanted.is_empty() {
        return names;
    }
    if let Ok(doc) = sg.api.get("/access-key-configurations?limit=100").await {
        for c in doc["accessKeyConfigurations"].as_array().into_iter().flatten() {
            names.insert(s(c, "id").to_string(), s(c, "name").to_string());
        }
    }
    for id in wanted {
        if !names.contains_key(id) {
            if let Ok(c) = sg.api.get(&format!("/access-key-configurations/{}", seg(id))).await {
                names.insert(id.to_string(), s(&c, "name").to_string());
            }
        }
    }
    names
}

/// Store-wide, or a link to the configuration that scopes the webhook.
fn scope(h: &Value, names: &HashMap<String, String>) -> Markup {
    match h["configurationId"].as_str() {
        None => html! { "store-wide" },
        Some(id) => html! {
            a href={ "/console/configurations/" (seg(id)) } { (names.get(id).map_or(id, String::as_str)) }
        },
    }
}

fn enabled_badge(h: &Value) -> Markup {
    if h["enabled"].as_bool().unwrap_or(false) {
        html! { span.badge.good { "enabled" } }
    } else {
        html! { span.badge.bad { "disabled" } }
    }
}

/// Configurations for the scope select: store-wide, then the first 100.
async fn config_options(sg: &Signed, current: &str) -> Vec<(String, String)> {
    let mut out = vec![(String::new(), "(store-wide)".to_string())];
    if let Ok(doc) = sg.api.get("/access-key-configurations?limit=100").await {
        for c in doc["accessKeyConfigurations"].as_array().into_iter().flatten() {
            out.push((s(c, "id").to_string(), format!("{} ({})", s(c, "name"), s(c, "id"))));
        }
    }
    if !current.is_empty() && !out.iter().any(|(v, _)| v == current) {
        out.push((current.to_string(), current.to_string()));
    }
    out
}

// ------------------------------------------------------------ the form

/// What a webhook form shows: from the webhook (edit), as submitted, or the
/// API's defaults (create).
struct HookForm {
    url: String,
    config: String,
    thresholds: String,
    events: Vec<String>,
    expiry_days: String,
    enabled: bool,
}

impl HookForm {
    fn defaults() -> HookForm {
        HookForm {
            url: String::new(),
            config: String::new(),
            thresholds: String::new(),
            events: EVENTS.iter().map(|(e, _)| e.to_string()).collect(),
            expiry_days: String::new(),
            enabled: true,
        }
    }

    fn of_hook(h: &Value) -> HookForm {
        HookForm {
            url: text(&h["url"]),
            config: text(&h["configurationId"]),
            thresholds: h["thresholds"].as_array().into_iter().flatten().map(text).collect::<Vec<_>>().join(", "),
            events: h["events"].as_array().into_iter().flatten().map(text).collect(),
            expiry_days: text(&h["expiryWarningDays"]),
            enabled: h["enabled"].as_bool().unwrap_or(false),
        }
    }

    fn of_form(f: &Form) -> HookForm {
        HookForm {
            url: f.get("url").into(),
            config: f.get("configurationId").into(),
            thresholds: f.get("thresholds").into(),
            events: f.all("events").map(str::to_string).collect(),
            expiry_days: f.get("expiryWarningDays").into(),
            enabled: f.get("enabled") == "on",
        }
    }

    /// The API body. Creating, empty fields are left out (the API's
    /// defaults); editing, every field is sent but an empty warning period.
    fn body(&self, editing: bool) -> Value {
        let mut b = Map::new();
        b.insert("url".into(), Value::String(self.url.trim().to_string()));
        if !self.config.is_empty() {
            b.insert("configurationId".into(), Value::String(self.config.clone()));
        } else if editing {
            b.insert("configurationId".into(), Value::Null);
        }
        // "50, 80 100": each a number when it is one (else the API names it).
        let thresholds: Vec<Value> =
            self.thresholds.split([',', ' ', ';']).filter(|t| !t.trim().is_empty()).map(number_or_text).collect();
        if editing || !thresholds.is_empty() {
            b.insert("thresholds".into(), Value::Array(thresholds));
        }
        b.insert("events".into(), self.events.iter().map(|e| Value::String(e.clone())).collect());
        if !self.expiry_days.trim().is_empty() {
            b.insert("expiryWarningDays".into(), number_or_text(&self.expiry_days));
        }
        if editing {
            b.insert("enabled".into(), Value::Bool(self.enabled));
        }
        Value::Object(b)
    }
}

fn events_fieldset(v: &HookForm, e: &Errors) -> Markup {
    let err = e.of("events");
    html! {
        fieldset.field.has-error[err.is_some()] aria-describedby=[err.map(|_| "f-events-error")] {
            legend { "Events" }
            @if let Some(m) = err { p.error id="f-events-error" { (m) } }
            @for (name, label) in EVENTS {
                @let id = format!("f-events-{name}");
                div.field.check {
                    input type="checkbox" id=(id) name="events" value=(name) checked[v.events.iter().any(|x| x == name)];
                    label for=(id) { (label) }
                }
            }
        }
    }
}

async fn hook_form(sg: &Signed, editing: Option<&str>, v: &HookForm, e: &Errors) -> Markup {
    let configs = config_options(sg, &v.config).await;
    let action = editing.map_or_else(|| "/console/alerts".to_string(), base);
    let (thresholds_hint, days_hint) = if editing.is_some() {
        ("1 to 100, separated by commas.", "How long before a key's expiry it is announced, 1 to 365.")
    } else {
        (
            "1 to 100, separated by commas; empty: 50, 80, 100.",
            "How long before a key's expiry it is announced, 1 to 365; empty: 7.",
        )
    };
    html! {
        (e.summary())
        form.editor method="post" action=(action) novalidate {
            (csrf(sg))
            (field("url", "URL", Some("http or https. The store POSTs each alert here, signed with the webhook's secret (x-keygate-signature)."),
                Control::Text { value: &v.url, required: true, placeholder: "https://hooks.example/keygate" }, e))
            (field("configurationId", "Configuration", Some("Store-wide: every budget, the credits and every key. A configuration: its budget, and its keys' budgets and expiries."),
                Control::Select { value: &v.config, options: &configs }, e))
            (field("thresholds", "Thresholds (percent)", Some(thresholds_hint),
                Control::Text { value: &v.thresholds, required: false, placeholder: "50, 80, 100" }, e))
            (events_fieldset(v, e))
            (field("expiryWarningDays", "Expiry warning (days)", Some(days_hint),
                Control::Number { value: &v.expiry_days, step: "1" }, e))
            @if editing.is_some() {
                (field("enabled", "Enabled (a disabled webhook queues nothing; its pending deliveries wait)", None, Control::Check { checked: v.enabled }, e))
            }
            div.actions {
                button.primary type="submit" { @if editing.is_some() { "Save" } @else { "Create webhook" } }
                @if let Some(id) = editing {
                    a href=(base(id)) { "Cancel" }
                }
            }
        }
    }
}

// ------------------------------------------------------------ the list

async fn list_page(sg: &Signed, q: &Form, form: Option<Markup>, status: StatusCode) -> Response {
    let before = q.get("before");
    let doc = match sg.api.get(&with_query("/alert-webhooks", &[("limit", PAGE), ("beforeId", before)])).await {
        Ok(d) => d,
        Err(f) => return failure_page(sg, &f),
    };
    let hooks = doc["alertWebhooks"].as_array().cloned().unwrap_or_default();
    let names = config_names(sg, &hooks.iter().collect::<Vec<_>>()).await;
    let next = next_before_id(&doc).map(|b| with_query("/console/alerts", &[("before", &b)]));
    let form = match form {
        Some(f) => Some(f),
        None if sg.who.admin() => Some(hook_form(sg, None, &HookForm::defaults(), &Errors::default()).await),
        None => None,
    };
    let body = html! {
        h1 { "Alerts" }
        (done_notice(q.has("done").then(|| q.get("done"))))
        p.hint {
            "Webhooks that hear when a budget or the credits cross a threshold, or a key nears its expiry. "
            "Each delivery is recorded: status, attempts, the last error."
        }
        @if hooks.is_empty() { p.empty { "No alert webhooks yet." } } @else {
            div.table-wrap { table.cards {
                caption.visually-hidden { "Alert webhooks, newest first" }
                thead { tr {
                    th scope="col" { "URL" } th scope="col" { "Scope" } th scope="col" { "Thresholds" }
                    th scope="col" { "Events" } th scope="col" { "State" } th scope="col" { "Deliveries" }
                } }
                tbody { @for h in &hooks {
                    @let id = s(h, "id");
                    tr {
                        td.wrap data-label="URL" { a href=(base(id)) { (s(h, "url")) } br; (fingerprint(h)) }
                        td data-label="Scope" { (scope(h, &names)) }
                        td data-label="Thresholds" { (thresholds_text(h)) }
                        td data-label="Events" { (events_text(h)) }
                        td data-label="State" { (enabled_badge(h)) }
                        td data-label="Deliveries" { a href={ (base(id)) "/deliveries" } { "Deliveries" } }
                    }
                } }
            } }
        }
        nav.pager aria-label="Pages" {
            @if !before.is_empty() { a href="/console/alerts" { "← First page" } }
            @if let Some(n) = next { a href=(n) rel="next" { "Next page →" } }
        }
        @if let Some(f) = form {
            section aria-labelledby="add-h" {
                h2 #add-h { "Add a webhook" }
                (f)
            }
        }
    };
    respond(status, page(Some(sg), Nav::Alerts, "Alerts", body))
}

pub async fn list(sg: Signed, q: RawQuery) -> Response {
    list_page(&sg, &query(q), None, StatusCode::OK).await
}

/// Hands a fresh secret to the page that shows it once: a sealed cookie for
/// that page's path only, bound to the webhook and this session, and a nonce
/// the session row holds until that page takes it (once).
async fn hand_over(sg: &Signed, id: &str, secret: &str, replaced: bool) -> Response {
    let path = format!("{}/secret", base(id));
    let mut resp = see_other(&path);
    let Some(nonce) = sg.pend_reveal().await else { return resp };
    let once = Once {
        key_id: id.to_string(),
        token: secret.to_string(),
        session_csrf: sg.session.csrf.clone(),
        expires: crate::ids::now_secs() + ONCE_SECONDS,
        rotated: replaced.then_some(0),
        nonce,
    };
    if let Some(sealed) = sg.sealer.seal_json(PURPOSE_SECRET_ONCE, &once) {
        resp.headers_mut()
            .append(header::SET_COOKIE, set_cookie(ONCE_COOKIE, &path, Some((&sealed, ONCE_SECONDS)), sg.secure));
    }
    resp
}

pub async fn create(w: Write) -> Response {
    let v = HookForm::of_form(&w.form);
    match w.s.api.post("/alert-webhooks", &v.body(false)).await {
        Ok(h) => hand_over(&w.s, s(&h, "id"), s(&h, "secret"), false).await,
        // A role that may not create one gets no form back either.
        Err(f) if f.status == StatusCode::FORBIDDEN => failure_page(&w.s, &f),
        Err(f) => {
            let e = Errors::from_failure(&f, &FIELDS);
            let form = hook_form(&w.s, None, &v, &e).await;
            list_page(&w.s, &Form::default(), Some(form), f.status).await
        }
    }
}

/// The secret, once: the page right after create or replace.
pub async fn secret(sg: Signed, Path(id): Path<String>, headers: HeaderMap) -> Response {
    let path = format!("{}/secret", base(&id));
    let once: Option<Once> = cookie(&headers, ONCE_COOKIE)
        .and_then(|c| sg.sealer.open_json::<Once>(PURPOSE_SECRET_ONCE, c))
        .filter(|o| o.key_id == id && sg.session.csrf_matches(&o.session_csrf) && o.expires > crate::ids::now_secs());
    // Shown once: only if this session still holds the cookie's nonce (taken now).
    let once = match once {
        Some(o) if sg.take_reveal(&o.nonce).await => Some(o),
        _ => None,
    };
    let body = match &once {
        Some(o) => html! {
            h1 { @if o.rotated.is_some() { "Webhook secret replaced" } @else { "Alert webhook created" } }
            p.notice.warn role="status" {
                strong { "Copy the secret now." }
                " It is shown this once: the store keeps it sealed, and neither this console nor the API shows it again."
            }
            div.token {
                label for="secret" { "Signing secret" }
                div.copy-row {
                    input #secret.mono type="text" readonly value=(o.token) aria-describedby="secret-hint";
                    button type="button" data-copy="secret" hidden { "Copy" }
                }
                p.hint id="secret-hint" {
                    "The receiver checks " code { "x-keygate-signature: t=…,v1=…" } ": the hex HMAC-SHA256 of "
                    code { "<t>.<raw body>" } " under this secret."
                }
            }
            @if o.rotated.is_some() { p { "Deliveries are signed with the new secret from now on." } }
            p { a.button href=(base(&id)) { "Continue to the webhook" } }
        },
        None => html! {
            h1 { "Secret no longer shown" }
            p { "A webhook's secret is shown once, right after the webhook is created or its secret replaced, and never again. To get a new one, replace it." }
            p { a.button href=(base(&id)) { "Back to the webhook" } }
        },
    };
    let mut resp = respond(StatusCode::OK, page(Some(&sg), Nav::Alerts, "Webhook secret", body));
    // Whatever happened, the secret's cookie is gone after this page.
    resp.headers_mut().append(header::SET_COOKIE, set_cookie(ONCE_COOKIE, &path, None, sg.secure));
    resp
}

// ------------------------------------------------------------ one webhook

async fn hook_page(
    sg: &Signed,
    id: &str,
    h: &Value,
    q: &Form,
    edited: Option<(&HookForm, &Errors)>,
    status: StatusCode,
) -> Response {
    let names = config_names(sg, &[h]).await;
    let editor = match (sg.who.admin(), edited) {
        (false, _) => None,
        (true, Some((v, e))) => Some(hook_form(sg, Some(id), v, e).await),
        (true, None) => Some(hook_form(sg, Some(id), &HookForm::of_hook(h), &Errors::default()).await),
    };
    let b = base(id);
    let body = html! {
        div.titlebar {
            h1 { "Alert webhook " (enabled_badge(h)) }
            a.button href={ (b) "/deliveries" } { "Deliveries" }
        }
        (done_notice(q.has("done").then(|| q.get("done"))))
        dl.facts {
            dt { "Id" } dd.mono { (s(h, "id")) }
            dt { "URL" } dd {
                span.mono { (s(h, "url")) }
                @if !sg.who.admin() { br; span.hint { "Only an admin is shown the path: it is often the receiver's credential." } }
            }
            dt { "URL fingerprint" } dd.mono { (s(h, "urlFingerprint")) }
            dt { "Scope" } dd { (scope(h, &names)) }
            dt { "Thresholds" } dd { (thresholds_text(h)) }
            dt { "Events" } dd { (events_text(h)) }
            dt { "Expiry warning" } dd { (text(&h["expiryWarningDays"])) " days" }
            dt { "Secret" } dd { "write-only: shown once, when the webhook was created or its secret replaced" }
            dt { "Created" } dd { (when(h["createdAt"].as_str())) }
            dt { "Updated" } dd { (when(h["updatedAt"].as_str())) }
        }
        @if let Some(form) = editor {
            section aria-labelledby="edit-h" {
                h2 #edit-h { "Edit" }
                (form)
            }
            section aria-labelledby="secret-h" {
                h2 #secret-h { "Secret" }
                form method="post" action={ (b) "/rotate" }
                    data-confirm="Replace the secret? Deliveries are signed with the new one at once: give it to the receiver." {
                    (csrf(sg))
                    p.hint { "A new secret is generated and shown once; the old one stops signing at once." }
                    div.actions {
                        button type="submit" { "Replace the secret" }
                        a.danger-link href={ (b) "/delete" } { "Delete…" }
                    }
                }
            }
        }
    };
    respond(status, page(Some(sg), Nav::Alerts, "Alert webhook", body))
}

pub async fn show(sg: Signed, Path(id): Path<String>, q: RawQuery) -> Response {
    match sg.api.get(&format!("/alert-webhooks/{}", seg(&id))).await {
        Ok(h) => hook_page(&sg, &id, &h, &query(q), None, StatusCode::OK).await,
        Err(f) => failure_page(&sg, &f),
    }
}

pub async fn update(Path(id): Path<String>, w: Write) -> Response {
    let v = HookForm::of_form(&w.form);
    let path = format!("/alert-webhooks/{}", seg(&id));
    match w.s.api.patch(&path, &v.body(true)).await {
        Ok(_) => see_other(&format!("{}?done=saved", base(&id))),
        Err(f) => match w.s.api.get(&path).await {
            Ok(h) => {
                let e = Errors::from_failure(&f, &FIELDS);
                hook_page(&w.s, &id, &h, &Form::default(), Some((&v, &e)), f.status).await
            }
            Err(_) => failure_page(&w.s, &f),
        },
    }
}

/// A new secret, generated here (as the API generates one), set by PATCH
/// and shown once.
pub async fn rotate(Path(id): Path<String>, w: Write) -> Response {
    let Ok(secret) = crate::api::alerts::generate_secret() else {
        return crate::console::layout::message_page(
            Some(&w.s),
            StatusCode::INTERNAL_SERVER_ERROR,
            "No secret",
            "The store could not generate a secret. Nothing was changed.",
        );
    };
    match w.s.api.patch(&format!("/alert-webhooks/{}", seg(&id)), &json!({ "secret": secret })).await {
        Ok(h) => hand_over(&w.s, s(&h, "id"), &secret, true).await,
        Err(f) => failure_page(&w.s, &f),
    }
}

pub async fn confirm_delete(sg: Signed, Path(id): Path<String>) -> Response {
    if !sg.who.admin() {
        return not_allowed(&sg);
    }
    let h = match sg.api.get(&format!("/alert-webhooks/{}", seg(&id))).await {
        Ok(h) => h,
        Err(f) => return failure_page(&sg, &f),
    };
    let b = base(&id);
    let body = html! {
        h1 { "Delete the alert webhook?" }
        p { span.mono { (s(&h, "url")) } " hears of no alert from then on; its deliveries, pending ones too, are deleted with it. This cannot be undone." }
        form method="post" action={ (b) "/delete" } {
            (csrf(&sg))
            div.actions { button.danger type="submit" { "Delete the webhook" } a href=(b) { "Cancel" } }
        }
    };
    respond(StatusCode::OK, page(Some(&sg), Nav::Alerts, "Delete alert webhook", body))
}

pub async fn delete(Path(id): Path<String>, w: Write) -> Response {
    match w.s.api.delete(&format!("/alert-webhooks/{}", seg(&id))).await {
        Ok(_) => see_other("/console/alerts?done=deleted"),
        Err(f) => failure_page(&w.s, &f),
    }
}

// ------------------------------------------------------------ deliveries

fn status_badge(d: &Value) -> Markup {
    let st = s(d, "status");
    match st {
        "delivered" => html! { span.badge.good { (st) } },
        "failed" => html! { span.badge.bad { (st) } },
        _ => html! { span.badge { (st) } },
    }
}

/// A time with its exact value in `datetime` ("—" when absent); the date
/// and the time of day each kept on one line.
fn at(v: &Value) -> Markup {
    match v.as_str() {
        Some(t) => {
            let shown = when(Some(t));
            let (date, hm) = shown.split_once(' ').unwrap_or((shown.as_str(), ""));
            html! { time datetime=(t) { span.nowrap { (date) } " " span.nowrap { (hm) } } }
        }
        None => html! { "—" },
    }
}

/// What the alert was about: its threshold and subject, from the payload.
fn about(p: &Value) -> String {
    let subject = &p["subject"];
    let who = match s(subject, "type") {
        "credits" => "credits".to_string(),
        kind => format!("{} {}", kind.replace('_', " "), subject["name"].as_str().unwrap_or(s(subject, "id"))),
    };
    match p["threshold"].as_u64() {
        Some(t) => format!("{t}% · {who}"),
        None => who,
    }
}

pub async fn deliveries(sg: Signed, Path(id): Path<String>, q: RawQuery) -> Response {
    let q = query(q);
    let before = q.get("before");
    let hook_path = format!("/alert-webhooks/{}", seg(&id));
    let list_path = with_query(&format!("{hook_path}/deliveries"), &[("limit", PAGE), ("beforeId", before)]);
    let (hook, doc) = tokio::join!(sg.api.get(&hook_path), sg.api.get(&list_path));
    let (hook, doc) = match (hook, doc) {
        (Ok(h), Ok(d)) => (h, d),
        (Err(f), _) | (_, Err(f)) => return failure_page(&sg, &f),
    };
    let items = doc["deliveries"].as_array().cloned().unwrap_or_default();
    let here = format!("{}/deliveries", base(&id));
    let next = next_before_id(&doc).map(|b| with_query(&here, &[("before", &b)]));
    let body = html! {
        h1 { "Deliveries" }
        p { "To " a.mono href=(base(&id)) { (s(&hook, "url")) } " " (enabled_badge(&hook)) }
        p.hint { "Newest first. A delivery is retried with backoff until it is delivered (any 2xx) or its last attempt failed." }
        @if items.is_empty() { p.empty { "No deliveries yet." } } @else {
            div.table-wrap { table.cards.compact.deliveries {
                caption.visually-hidden { "Deliveries, newest first" }
                thead { tr {
                    th scope="col" { "Id" } th scope="col" { "Event" } th scope="col" { "Status" }
                    th.num scope="col" { "Attempts" } th scope="col" { "Last status" } th scope="col" { "Last error" }
                    th scope="col" { "Created" } th scope="col" { "Delivered" } th scope="col" { "Next attempt" }
                } }
                tbody { @for d in &items { tr {
                    td.mono.wrap data-label="Id" { (s(d, "id")) }
                    td data-label="Event" { div { span.event { (s(d, "event")) } br; span.hint.about { (about(&d["payload"])) } } }
                    td data-label="Status" { (status_badge(d)) }
                    td.num data-label="Attempts" { (int(d["attempts"].as_i64().unwrap_or(0))) }
                    td data-label="Last status" { (d["lastStatus"].as_u64().map_or("—".to_string(), |n| n.to_string())) }
                    td.wrap data-label="Last error" { (d["lastError"].as_str().unwrap_or("—")) }
                    td data-label="Created" { (at(&d["createdAt"])) }
                    td data-label="Delivered" { (at(&d["deliveredAt"])) }
                    td data-label="Next attempt" { (at(&d["nextAttemptAt"])) }
                } } }
            } }
        }
        nav.pager aria-label="Pages" {
            @if !before.is_empty() { a href=(here) { "← Newest" } }
            @if let Some(n) = next { a href=(n) rel="next" { "Older →" } }
        }
    };
    respond(StatusCode::OK, page(Some(&sg), Nav::Alerts, "Deliveries", body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_form_becomes_the_api_body() {
        let f = Form(vec![
            ("url".into(), " https://hooks.example/k ".into()),
            ("thresholds".into(), "80, 30;100  x".into()),
            ("events".into(), "budget".into()),
            ("events".into(), "key_expiry".into()),
        ]);
        let v = HookForm::of_form(&f);
        assert_eq!(
            v.body(false),
            json!({"url": "https://hooks.example/k", "thresholds": [80, 30, 100, "x"], "events": ["budget", "key_expiry"]})
        );
        assert_eq!(
            v.body(true),
            json!({"url": "https://hooks.example/k", "configurationId": null, "thresholds": [80, 30, 100, "x"],
                   "events": ["budget", "key_expiry"], "enabled": false})
        );
        let empty = HookForm::of_form(&Form::default()).body(false);
        assert_eq!(empty, json!({"url": "", "events": []}));
        let hook = json!({"url": "http://a/b", "configurationId": "akc_1", "thresholds": [50, 80], "events": ["credits"],
                          "expiryWarningDays": 3, "enabled": true});
        let v = HookForm::of_hook(&hook);
        assert_eq!((v.thresholds.as_str(), v.expiry_days.as_str(), v.enabled), ("50, 80", "3", true));
        assert_eq!(thresholds_text(&hook), "50%, 80%");
        assert_eq!(
            about(&json!({"threshold": 30, "subject": {"type": "access_key", "id": "ak_1", "name": "ci"}})),
            "30% · access key ci"
        );
        assert_eq!(about(&json!({"threshold": null, "subject": {"type": "credits"}})), "credits");
    }
}
