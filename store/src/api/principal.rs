//! Who makes a management call, and through what. (Issue 18's contract: the
//! management-key, audit-log and console work all build on these names.)

use serde::{Deserialize, Serialize};

/// What a management credential may do.
/// - `admin`: everything (provider keys, providers, prices, credits,
///   management keys, alert webhooks included);
/// - `operator`: access keys and access-key configurations, and reading;
/// - `viewer`: reading only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Viewer,
    Operator,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

/// A request extension (never a header, so a client cannot claim it) that
/// the console sets on the management calls it makes for a signed-in user:
/// the audit log records them as made through the console.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ViaConsole;

/// A request extension the console sets, in place of an `Authorization`
/// header, on the management calls of a signed-in session: the credential
/// the session was opened with, by a digest that identifies it without
/// being it (the database keeps this digest, never the credential). The
/// API authenticates it afresh on every call, as it would the token itself
/// ([`crate::api::AppState::authenticate_session`]): a management key by its
/// token's digest (deleted or rotated: refused), the bootstrap admin token
/// by its keyed fingerprint (another admin token: refused). An extension,
/// never a header: only code in this process can attach one. No `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub enum SessionCredential {
    /// The bootstrap admin token, by its fingerprint (HMAC-SHA256 under a key
    /// derived from the master key: see `crate::console::Config`).
    Bootstrap(String),
    /// A management key, by its token's SHA-256 digest (`api_keys.digest`).
    Key(String),
}

impl SessionCredential {
    /// The stored form: the session row's actor says which kind it is.
    pub fn from_row(actor: &str, digest: &str) -> SessionCredential {
        if actor == BOOTSTRAP {
            SessionCredential::Bootstrap(digest.to_string())
        } else {
            SessionCredential::Key(digest.to_string())
        }
    }

    /// The digest kept in the session row.
    pub fn digest(&self) -> &str {
        match self {
            SessionCredential::Bootstrap(d) | SessionCredential::Key(d) => d,
        }
    }
}

impl Role {
    /// A role by its wire name.
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "viewer" => Some(Role::Viewer),
            "operator" => Some(Role::Operator),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

/// The actor of the bootstrap admin token (`KEYGATE_ADMIN_TOKEN`).
pub const BOOTSTRAP: &str = "bootstrap";

/// Who makes a management call: the bootstrap admin token, or a management
/// key (`mk_…`) with its role as it is at the time of the call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Principal {
    /// `bootstrap`, or the management key's id (`mk_…`).
    pub actor: String,
    /// The management key's name (`bootstrap admin token` for the bootstrap token).
    pub name: String,
    pub role: Role,
}

impl Principal {
    /// The bootstrap admin token's principal: role admin.
    pub fn bootstrap() -> Self {
        Principal { actor: BOOTSTRAP.into(), name: "bootstrap admin token".into(), role: Role::Admin }
    }

    /// Whether this principal's role covers `required`.
    pub fn may(&self, required: Role) -> bool {
        self.role >= required
    }
}

/// Through what a management call came: the HTTP API, or the console (a
/// request carrying the [`ViaConsole`] extension).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Via {
    Api,
    Console,
}

impl Via {
    pub fn as_str(self) -> &'static str {
        match self {
            Via::Api => "api",
            Via::Console => "console",
        }
    }

    pub fn parse(s: &str) -> Option<Via> {
        match s {
            "api" => Some(Via::Api),
            "console" => Some(Via::Console),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_ordered_and_named() {
        assert!(Role::Viewer < Role::Operator && Role::Operator < Role::Admin);
        for r in [Role::Viewer, Role::Operator, Role::Admin] {
            assert_eq!(Role::parse(r.as_str()), Some(r));
            assert_eq!(serde_json::to_value(r).unwrap(), serde_json::json!(r.as_str()));
        }
        assert_eq!(Role::parse("Admin"), None);
        let p = Principal::bootstrap();
        assert!(p.may(Role::Admin) && p.may(Role::Viewer));
        let v = Principal { actor: "mk_1".into(), name: "v".into(), role: Role::Viewer };
        assert!(v.may(Role::Viewer) && !v.may(Role::Operator));
    }
}
