//! The page frame, forms' pieces and formatting. Everything is rendered by
//! maud, which escapes every interpolated value; nothing here emits raw HTML
//! from data (`PreEscaped` is not used).

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use maud::{html, Markup, DOCTYPE};

use super::client::Failure;
use super::Signed;

/// The sections of the console, in the navigation's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nav {
    Keys,
    Configs,
    ProviderKeys,
    Providers,
    Prices,
    Usage,
    Budgets,
    Alerts,
    Audit,
    None,
}

const NAV: [(Nav, &str, &str); 9] = [
    (Nav::Keys, "/console/access-keys", "Access keys"),
    (Nav::Configs, "/console/configurations", "Configurations"),
    (Nav::ProviderKeys, "/console/provider-keys", "Provider keys"),
    (Nav::Providers, "/console/providers", "Providers"),
    (Nav::Prices, "/console/prices", "Prices"),
    (Nav::Usage, "/console/usage", "Usage"),
    (Nav::Budgets, "/console/budgets", "Budgets & credits"),
    (Nav::Alerts, "/console/alerts", "Alerts"),
    (Nav::Audit, "/console/audit-log", "Audit log"),
];

/// An HTML response (`no-store`: pages may hold what only this session
/// should see, and a token page must never be kept).
pub fn respond(status: StatusCode, page: Markup) -> Response {
    let mut resp = (status, page.into_string()).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// A whole page: the frame (navigation, who is signed in, sign out) around
/// `body`. Without `s` (signed out), no navigation.
pub fn page(s: Option<&Signed>, nav: Nav, title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="referrer" content="no-referrer";
                title { (title) " · keygate console" }
                link rel="icon" href="data:,";
                link rel="stylesheet" href="/console/static/console.css";
                script src="/console/static/console.js" defer {}
            }
            body {
                a.skip href="#main" { "Skip to content" }
                header.top {
                    a.brand href="/console/access-keys" { "keygate" }
                    @if let Some(s) = s {
                        nav aria-label="Console sections" {
                            ul {
                                @for (n, href, label) in NAV {
                                    li {
                                        @if n == nav {
                                            a href=(href) aria-current="page" { (label) }
                                        } @else {
                                            a href=(href) { (label) }
                                        }
                                    }
                                }
                            }
                        }
                        div.who {
                            span.who-name {
                                (s.who.name.as_deref().unwrap_or(if s.who.actor == "bootstrap" { "admin token" } else { s.who.actor.as_str() }))
                            }
                            " "
                            span.role data-role=(s.who.role.as_str()) { (s.who.role.as_str()) }
                            form.inline method="post" action="/console/sign-out" {
                                (csrf(s))
                                button.link type="submit" { "Sign out" }
                            }
                        }
                    }
                }
                main #main tabindex="-1" {
                    (body)
                }
            }
        }
    }
}

/// A page with a heading and one message (errors, refusals, not found).
pub fn message_page(s: Option<&Signed>, status: StatusCode, title: &str, msg: &str) -> Response {
    respond(
        status,
        page(
            s,
            Nav::None,
            title,
            html! {
                h1 { (title) }
                p.notice.error role="alert" { (msg) }
                p { a href="/console/access-keys" { "Back to the console" } }
            },
        ),
    )
}

/// The page for an API failure on a read (a write shows it in its form).
pub fn failure_page(s: &Signed, f: &Failure) -> Response {
    let title = match f.status {
        StatusCode::FORBIDDEN => "Not allowed",
        StatusCode::NOT_FOUND => "Not found",
        _ => "The API refused",
    };
    let msg = if f.status == StatusCode::FORBIDDEN {
        format!("Your role ({}) cannot do this: {}", s.who.role.as_str(), f.msg)
    } else {
        f.msg.clone()
    };
    message_page(Some(s), f.status, title, &msg)
}

/// The hidden CSRF field of every form.
pub fn csrf(s: &Signed) -> Markup {
    html! { input type="hidden" name="_csrf" value=(s.session.csrf); }
}

/// Field errors of a form: the API's `details.field`, mapped to the form's
/// field by its first path segment (`budget.tokens` → `budget`).
#[derive(Debug, Default, Clone)]
pub struct Errors {
    pub fields: Vec<(String, String)>,
    /// Messages no field of the form shows.
    pub general: Vec<String>,
}

/// The form field an API field path belongs to.
pub fn field_root(path: &str) -> &str {
    path.split(['.', '[']).next().unwrap_or(path)
}

impl Errors {
    /// Places an API failure: next to its field when the form has one.
    pub fn from_failure(f: &Failure, form_fields: &[&str]) -> Errors {
        let mut e = Errors::default();
        match f.field.as_deref() {
            Some(path) if form_fields.contains(&field_root(path)) => {
                let msg = if path == field_root(path) { f.msg.clone() } else { format!("{path}: {}", f.msg) };
                e.fields.push((field_root(path).to_string(), msg));
            }
            _ => e.general.push(match f.status {
                StatusCode::FORBIDDEN => format!("Your role cannot do this: {}", f.msg),
                _ => f.msg.clone(),
            }),
        }
        e
    }

    pub fn field(&mut self, name: &str, msg: impl Into<String>) {
        self.fields.push((name.to_string(), msg.into()));
    }

    pub fn is_empty(&self) -> bool {
        self.fields.is_empty() && self.general.is_empty()
    }

    pub fn of(&self, name: &str) -> Option<&str> {
        self.fields.iter().find(|(f, _)| f == name).map(|(_, m)| m.as_str())
    }

    /// The messages no field shows, at the top of the form.
    pub fn summary(&self) -> Markup {
        html! {
            @if !self.is_empty() {
                div.notice.error role="alert" {
                    @if self.general.is_empty() {
                        p { "Please correct the fields marked below." }
                    }
                    @for m in &self.general { p { (m) } }
                }
            }
        }
    }
}

/// What kind of control a field is.
pub enum Control<'a> {
    Text { value: &'a str, required: bool, placeholder: &'a str },
    Password,
    Number { value: &'a str, step: &'a str },
    TextArea { value: &'a str, rows: u32, placeholder: &'a str },
    Select { value: &'a str, options: &'a [(String, String)] },
    Check { checked: bool },
}

/// A labelled field with its hint and its error (linked by
/// `aria-describedby`, flagged `aria-invalid`). Ids: `f-<name>` and
/// `f-<name>-error`.
pub fn field(name: &str, label: &str, hint: Option<&str>, control: Control<'_>, errors: &Errors) -> Markup {
    let id = format!("f-{name}");
    let err = errors.of(name);
    let err_id = format!("{id}-error");
    let hint_id = format!("{id}-hint");
    let described = match (err.is_some(), hint.is_some()) {
        (true, true) => Some(format!("{err_id} {hint_id}")),
        (true, false) => Some(err_id.clone()),
        (false, true) => Some(hint_id.clone()),
        (false, false) => None,
    };
    let invalid = err.map(|_| "true");
    html! {
        div.field.has-error[err.is_some()].check[matches!(control, Control::Check { .. })] {
            @match control {
                Control::Check { checked } => {
                    input type="checkbox" id=(id) name=(name) value="on" checked[checked] aria-describedby=[described.as_deref()];
                    label for=(id) { (label) }
                }
                _ => { label for=(id) { (label) } }
            }
            @if let Some(h) = hint { p.hint id=(hint_id) { (h) } }
            @if let Some(e) = err { p.error id=(err_id) { (e) } }
            @match control {
                Control::Text { value, required, placeholder } => {
                    input type="text" id=(id) name=(name) value=(value) required[required]
                        placeholder=[(!placeholder.is_empty()).then_some(placeholder)]
                        aria-invalid=[invalid] aria-describedby=[described.as_deref()] autocomplete="off";
                }
                Control::Password => {
                    input type="password" id=(id) name=(name) value="" required autocomplete="off"
                        aria-invalid=[invalid] aria-describedby=[described.as_deref()];
                }
                Control::Number { value, step } => {
                    input type="number" id=(id) name=(name) value=(value) step=(step) min="0" inputmode="decimal"
                        aria-invalid=[invalid] aria-describedby=[described.as_deref()];
                }
                Control::TextArea { value, rows, placeholder } => {
                    textarea id=(id) name=(name) rows=(rows) spellcheck="false"
                        placeholder=[(!placeholder.is_empty()).then_some(placeholder)]
                        aria-invalid=[invalid] aria-describedby=[described.as_deref()] { (value) }
                }
                Control::Select { value, options } => {
                    select id=(id) name=(name) aria-invalid=[invalid] aria-describedby=[described.as_deref()] {
                        @for (v, l) in options {
                            option value=(v) selected[v == value] { (l) }
                        }
                    }
                }
                Control::Check { .. } => {}
            }
        }
    }
}

/// A notice at the top of a page after a write (`?done=…`; fixed texts,
/// nothing from the URL is shown).
pub fn done_notice(done: Option<&str>) -> Markup {
    let msg = match done.unwrap_or("") {
        "created" => "Created.",
        "saved" => "Saved.",
        "deleted" => "Deleted.",
        "disabled" => "The key is disabled: the gateway refuses it from now on.",
        "enabled" => "The key is enabled again.",
        "rotated" => "The value was replaced.",
        "credits" => "Credits updated.",
        _ => return html! {},
    };
    html! { p.notice.ok role="status" { (msg) } }
}

// ------------------------------------------------------------ formatting

/// `2026-05-01T12:00:00.000Z` → `2026-05-01 12:00 UTC`.
pub fn when(s: Option<&str>) -> String {
    match s {
        None => "never".into(),
        Some(t) if t.len() >= 16 => format!("{} {} UTC", t.get(..10).unwrap_or(t), t.get(11..16).unwrap_or("")),
        Some(t) => t.to_string(),
    }
}

/// 1234567 → `1,234,567`.
pub fn int(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

/// USD with enough places for per-request costs.
pub fn usd(x: f64) -> String {
    if x != 0.0 && x.abs() < 0.01 {
        format!("${x:.6}")
    } else {
        format!("${x:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(int(0), "0");
        assert_eq!(int(999), "999");
        assert_eq!(int(1000), "1,000");
        assert_eq!(int(-1234567), "-1,234,567");
        assert_eq!(usd(0.0), "$0.00");
        assert_eq!(usd(0.000123), "$0.000123");
        assert_eq!(usd(12.5), "$12.50");
        assert_eq!(when(Some("2026-05-01T12:34:56.789Z")), "2026-05-01 12:34 UTC");
        assert_eq!(when(None), "never");
        assert_eq!(field_root("budget.tokens"), "budget");
        assert_eq!(field_root("access.models.allow[0]"), "access");
        assert_eq!(field_root("router.rules[0].steps"), "router");
        assert_eq!(field_root("name"), "name");
    }

    #[test]
    fn values_are_escaped() {
        let errors = Errors::default();
        let m = field(
            "name",
            "Name",
            None,
            Control::Text { value: "\"><script>alert(1)</script>", required: true, placeholder: "" },
            &errors,
        );
        let s = m.into_string();
        assert!(!s.contains("<script>"), "{s}");
        assert!(s.contains("&quot;&gt;&lt;script&gt;"), "{s}");
    }
}
