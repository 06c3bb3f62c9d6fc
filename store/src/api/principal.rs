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
