//! `GET /whoami`: who the bearer token of the call is, and its role. The
//! console asks it on every page to know what to show.
//!
//! Only the bootstrap admin token exists here (the auth middleware lets
//! nothing else through), so the answer is always the bootstrap admin's; the
//! management keys (issue 18) answer with the key's id, name and role.

use axum::Json;
use serde::Serialize;

use super::principal::Role;

#[derive(Debug, Serialize)]
pub struct WhoAmI {
    /// `bootstrap`, or a management key's id (`mk_…`).
    pub actor: &'static str,
    /// The management key's name (null for the bootstrap token).
    pub name: Option<String>,
    pub role: Role,
}

pub async fn whoami() -> Json<WhoAmI> {
    Json(WhoAmI { actor: "bootstrap", name: None, role: Role::Admin })
}
