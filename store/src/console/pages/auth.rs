//! Signing in (a management key or the bootstrap admin token) and out.

use axum::extract::{RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::Response;
use maud::html;

use super::query;
use crate::api::run;
use crate::console::layout::{self, page, respond, Nav};
use crate::console::session::{self, SESSION_SECONDS};
use crate::console::{cookie, see_other, set_cookie, Console, Posted, Signed, Write, COOKIE};
use crate::policy::sessions::SIGN_INS_PER_WINDOW;

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
                                "The credential is checked by the management API and never kept: the session \
                                 lasts 12 hours at most, ends after 30 idle minutes, and at sign-out."
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

pub async fn sign_in(State(c): State<Console>, Posted(form_data, secure, headers): Posted) -> Response {
    let credential = form_data.get("credential").trim().to_string();
    if credential.is_empty() {
        return form(Some(("Enter a management key or the admin token.", true)));
    }
    // The API decides: whoever it authenticates may sign in. The session
    // keeps only what identifies the credential (see `SessionCredential`).
    let kept = c.cfg.session_credential(&credential);
    let principal = match c.state.authenticate_session(&kept).await {
        Ok(Some(p)) => p,
        Ok(None) => return form(Some(("That credential was not accepted.", true))),
        Err(_) => return layout::message_page(None, StatusCode::SERVICE_UNAVAILABLE, "Error", "Could not sign in."),
    };
    // Every sign-in writes an audit entry: a credential may sign in at most
    // SIGN_INS_PER_WINDOW times a minute (per store process).
    let now = crate::ids::now_ms();
    let admitted = c.throttle.lock().map_or(Err(1), |mut t| t.admit(&principal.actor, now));
    if let Err(wait_ms) = admitted {
        let secs = (wait_ms + 999) / 1000;
        let mut resp = respond(
            StatusCode::TOO_MANY_REQUESTS,
            page(
                None,
                Nav::None,
                "Sign in",
                html! {
                    div.narrow {
                        h1 { "Too many sign-ins" }
                        p.notice.error role="alert" {
                            "This credential signed in " (SIGN_INS_PER_WINDOW) " times in the last minute. "
                            "Try again in " (secs) " seconds."
                        }
                        p { a href="/console/sign-in" { "Back to sign-in" } }
                    }
                },
            ),
        );
        if let Ok(v) = axum::http::HeaderValue::from_str(&secs.to_string()) {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return resp;
    }
    // Every sign-in is in the audit log (`console.login`); one that cannot
    // be recorded does not happen.
    if crate::api::audit::record_console_login(&c.state, &principal).await.is_err() {
        return layout::message_page(None, StatusCode::SERVICE_UNAVAILABLE, "Error", "Could not record the sign-in.");
    }
    let Some((token, row)) =
        session::new_token().and_then(|t| session::new_row(&t, &principal.actor, &kept, now).map(|r| (t, r)))
    else {
        return layout::message_page(None, StatusCode::INTERNAL_SERVER_ERROR, "Error", "Could not start a session.");
    };
    // A session this browser held before is over (a new sign-in never
    // inherits an id a page may have planted).
    let previous = cookie(&headers, COOKIE).and_then(session::id_of);
    let created = run(&c.state, move |s| {
        if let Some(old) = previous {
            s.delete_console_session(&old)?;
        }
        s.create_console_session(&row)
    })
    .await;
    if created.is_err() {
        return layout::message_page(None, StatusCode::SERVICE_UNAVAILABLE, "Error", "Could not start a session.");
    }
    let mut resp = see_other("/console/access-keys");
    resp.headers_mut()
        .append(header::SET_COOKIE, set_cookie(COOKIE, "/console", Some((&token, SESSION_SECONDS)), secure));
    resp
}

/// Ends the session: its row is deleted (on every replica at once), then
/// the cookie.
pub async fn sign_out(State(c): State<Console>, w: Write) -> Response {
    if let Err(resp) = w.s.end(&c).await {
        return resp;
    }
    signed_out(&w.s)
}

fn signed_out(s: &Signed) -> Response {
    let mut resp = see_other("/console/sign-in?why=signed-out");
    resp.headers_mut().append(header::SET_COOKIE, set_cookie(COOKIE, "/console", None, s.secure));
    resp
}
