//! The console's pages. Each handler reads through the API and renders, or
//! writes through the API and redirects (303) to a page that shows the
//! result; a refused write renders its form again with the API's errors.

mod alerts;
mod audit;
mod auth;
mod billing;
mod charts;
mod configs;
mod keys;
mod provider_keys;
mod providers;
mod usage;

use axum::extract::RawQuery;
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use serde_json::Value;

use super::{see_other, Console, Form};

pub fn routes() -> Router<Console> {
    Router::new()
        .route("/console", get(home))
        .route("/console/", get(home))
        .route("/console/sign-in", get(auth::show).post(auth::sign_in))
        .route("/console/sign-out", post(auth::sign_out))
        .route("/console/access-keys", get(keys::list).post(keys::create))
        .route("/console/access-keys/new", get(keys::new))
        .route("/console/access-keys/{id}", get(keys::show))
        .route("/console/access-keys/{id}/edit", get(keys::edit).post(keys::update))
        .route("/console/access-keys/{id}/token", get(keys::token))
        .route("/console/access-keys/{id}/rotate", post(keys::rotate))
        .route("/console/access-keys/{id}/disable", post(keys::disable))
        .route("/console/access-keys/{id}/enable", post(keys::enable))
        .route("/console/access-keys/{id}/delete", get(keys::confirm_delete).post(keys::delete))
        .route("/console/configurations", get(configs::list).post(configs::create))
        .route("/console/configurations/new", get(configs::new))
        .route("/console/configurations/{id}", get(configs::edit).post(configs::update))
        .route("/console/configurations/{id}/delete", get(configs::confirm_delete).post(configs::delete))
        .route("/console/provider-keys", get(provider_keys::list).post(provider_keys::create))
        .route("/console/provider-keys/{id}", get(provider_keys::show))
        .route("/console/provider-keys/{id}/rotate", post(provider_keys::rotate))
        .route("/console/provider-keys/{id}/delete", get(provider_keys::confirm_delete).post(provider_keys::delete))
        .route("/console/providers", get(providers::list).post(providers::create))
        .route("/console/providers/{id}", get(providers::show).post(providers::update))
        .route("/console/providers/{id}/delete", get(providers::confirm_delete).post(providers::delete))
        .route("/console/prices", get(providers::prices).post(providers::set_price))
        .route("/console/prices/delete", get(providers::confirm_delete_price).post(providers::delete_price))
        .route("/console/usage", get(usage::show))
        .route("/console/budgets", get(billing::show))
        .route("/console/credits/add", post(billing::add))
        .route("/console/credits/enabled", post(billing::enabled))
        .route("/console/alerts", get(alerts::list).post(alerts::create))
        .route("/console/alerts/{id}", get(alerts::show).post(alerts::update))
        .route("/console/alerts/{id}/secret", get(alerts::secret))
        .route("/console/alerts/{id}/rotate", post(alerts::rotate))
        .route("/console/alerts/{id}/deliveries", get(alerts::deliveries))
        .route("/console/alerts/{id}/delete", get(alerts::confirm_delete).post(alerts::delete))
        .route("/console/audit-log", get(audit::show))
}

async fn home() -> Response {
    see_other("/console/access-keys")
}

/// A page's query string, leniently (unknown or malformed pairs ignored).
fn query(q: RawQuery) -> Form {
    q.0.and_then(|q| Form::parse(q.as_bytes())).unwrap_or_default()
}

/// A number for the API when the text is one, else the text itself: the
/// API's own validation then names the field and says what it wants.
fn number_or_text(s: &str) -> Value {
    let t = s.trim();
    if let Ok(n) = t.parse::<u64>() {
        return Value::from(n);
    }
    if let Ok(n) = t.parse::<i64>() {
        return Value::from(n);
    }
    match t.parse::<f64>() {
        Ok(x) if x.is_finite() => Value::from(x),
        _ => Value::String(s.to_string()),
    }
}

/// Text of a JSON value that may be a string, a number or absent.
fn text(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_go_as_numbers_and_anything_else_as_text() {
        assert_eq!(number_or_text("12"), Value::from(12u64));
        assert_eq!(number_or_text(" 1.5 "), Value::from(1.5));
        assert_eq!(number_or_text("-3"), Value::from(-3i64));
        assert_eq!(number_or_text("twelve"), Value::from("twelve"));
        assert_eq!(number_or_text("NaN"), Value::from("NaN"));
        assert_eq!(text(&Value::from(3)), "3");
        assert_eq!(text(&Value::Null), "");
    }
}
