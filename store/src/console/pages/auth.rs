//! Signing in (a management key or the bootstrap admin token) and out.

use axum::extract::{RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::Response;
use maud::html;

use super::query;
use crate::console::client::Api;
use crate::console::layout::{self, page, respond, Nav};
use crate::console::session::{Session, PURPOSE_SESSION, SESSION_SECONDS};
use crate::console::{see_other, set_cookie, Console, Posted, Signed, Write, COOKIE};

fn form(message: Option<(&str, bool)>) -> Response {
    let status = match message {
        Some((_, true)) => StatusCode::UNAUTHORIZED,
        _ => StatusCode::OK,
    };
    respond(
        status,
        page(
            None,
            Nav::None,
            "Sign in",
            html! {
                div.narrow {
                    h1 { "Sign in to the keygate console" }
                    @if let Some((m, error)) = message {
                        p.notice.error[error].ok[!error] role="alert" { (m) }
                    }
                    form method="post" action="/console/sign-in" {
                        div.field {
                            label for="f-credential" { "Management key or admin token" }
                            p.hint id="f-credential-hint" {
                                "The credential is checked by the management API and kept only in this browser's \
                                 session cookie (sealed, HttpOnly) for 12 hours."
                            }
                            input #f-credential type="password" name="credential" required autocomplete="current-password"
                                aria-describedby="f-credential-hint" autofocus;
                        }
                        button.primary type="submit" { "Sign in" }
                    }
                }
            },
        ),
    )
}

pub async fn show(q: RawQuery) -> Response {
    let why = query(q).get("why").to_string();
    let msg = match why.as_str() {
        "expired" => Some(("Your session has expired. Please sign in again.", false)),
        "revoked" => Some(("Your credential is no longer accepted (deleted or rotated). Please sign in again.", true)),
        "signed-out" => Some(("You are signed out.", false)),
        _ => None,
    };
    form(msg)
}

pub async fn sign_in(State(c): State<Console>, Posted(form_data, secure): Posted) -> Response {
    let credential = form_data.get("credential").trim().to_string();
    if credential.is_empty() {
        return form(Some(("Enter a management key or the admin token.", true)));
    }
    // The API decides: whatever `GET /whoami` accepts may sign in.
    let api = Api::new(c.api.clone(), &credential);
    if api.get("/whoami").await.is_err() {
        return form(Some(("That credential was not accepted.", true)));
    }
    // Every sign-in is in the audit log (`console.login`); one that cannot
    // be recorded does not happen.
    let recorded = match c.state.authenticate(&credential).await {
        Ok(Some(principal)) => crate::api::audit::record_console_login(&c.state, &principal).await.is_ok(),
        _ => false,
    };
    if !recorded {
        return layout::message_page(None, StatusCode::SERVICE_UNAVAILABLE, "Error", "Could not record the sign-in.");
    }
    let now = crate::ids::now_secs();
    let sealed = Session::new(credential, now).and_then(|s| c.cfg.sealer.seal_json(PURPOSE_SESSION, &s));
    let Some(sealed) = sealed else {
        return layout::message_page(None, StatusCode::INTERNAL_SERVER_ERROR, "Error", "Could not start a session.");
    };
    let mut resp = see_other("/console/access-keys");
    resp.headers_mut()
        .append(header::SET_COOKIE, set_cookie(COOKIE, "/console", Some((&sealed, SESSION_SECONDS)), secure));
    resp
}

pub async fn sign_out(w: Write) -> Response {
    signed_out(&w.s)
}

fn signed_out(s: &Signed) -> Response {
    let mut resp = see_other("/console/sign-in?why=signed-out");
    resp.headers_mut().append(header::SET_COOKIE, set_cookie(COOKIE, "/console", None, s.secure));
    resp
}
