//! The audit log: what an entry of a management change holds, what it never
//! holds, and how long it is kept (`KEYGATE_AUDIT_RETENTION_DAYS`).
//!
//! An [`Audit`] is made only by [`Audit::new`], which scrubs the changed
//! fields: a field named as a secret ([`SECRET_FIELDS`], at any depth) has
//! its value replaced by [`REDACTED`], and so has any string that holds an
//! access-key token (`kg-…`) or a management-key token (`kgm_…`); and an
//! alert webhook's `url`, often its receiver's only credential, is recorded
//! redacted with its fingerprint ([`redact_webhook_changes`]): any role reads
//! the audit log. A backend writes the entry in the transaction of the change
//! it describes, so there is no change without its entry and no entry of a
//! change that failed.

use serde_json::Value;

use crate::api::principal::{Principal, Via};
use crate::model::{redact_webhook_url, webhook_url_fingerprint};

/// What a secret's value becomes in an entry.
pub const REDACTED: &str = "[redacted]";

/// Fields whose values are secrets wherever they appear in a change (a
/// provider key's `value`; an alert webhook's signing `secret`; a `token`,
/// which no request carries today).
pub const SECRET_FIELDS: &[&str] = &["value", "secret", "token"];

/// The audit log's resource type of alert webhooks, whose `url` is redacted.
pub const ALERT_WEBHOOK: &str = "alert_webhook";

/// Default of `KEYGATE_AUDIT_RETENTION_DAYS`.
pub const DEFAULT_RETENTION_DAYS: u32 = 365;

const DAY_MS: i64 = 24 * 3600 * 1000;

/// One audit-log entry to record with a change (in its transaction).
#[derive(Debug, Clone, PartialEq)]
pub struct Audit {
    actor: String,
    via: Via,
    action: String,
    resource_type: String,
    resource_id: Option<String>,
    changes: Value,
}

impl Audit {
    /// An entry of `action` (`access_key.create`, ...) on a resource by
    /// `principal`. `resource_id` `None`: the id the change gives the
    /// resource it creates (filled in by the backend), or none at all
    /// (credits). `changes` (the changed fields with their new values, a JSON
    /// object; anything else counts as `{}`) is scrubbed of secrets.
    pub fn new(
        principal: &Principal,
        via: Via,
        action: &str,
        resource_type: &str,
        resource_id: Option<String>,
        changes: Value,
    ) -> Self {
        let mut changes = match scrub(changes) {
            v @ Value::Object(_) => v,
            _ => Value::Object(serde_json::Map::new()),
        };
        if resource_type == ALERT_WEBHOOK {
            redact_webhook_changes(&mut changes);
        }
        Audit {
            actor: principal.actor.clone(),
            via,
            action: action.into(),
            resource_type: resource_type.into(),
            resource_id,
            changes,
        }
    }

    pub fn actor(&self) -> &str {
        &self.actor
    }

    pub fn via(&self) -> Via {
        self.via
    }

    pub fn action(&self) -> &str {
        &self.action
    }

    pub fn resource_type(&self) -> &str {
        &self.resource_type
    }

    /// The resource's id: the one given, else `created` (the id of what the
    /// change created).
    pub fn resource_id<'a>(&'a self, created: Option<&'a str>) -> Option<&'a str> {
        self.resource_id.as_deref().or(created)
    }

    /// The scrubbed changes as stored (JSON text).
    pub fn changes_json(&self) -> String {
        self.changes.to_string()
    }
}

/// Whether a string holds a token of either kind.
fn holds_token(s: &str) -> bool {
    keygate_proto::token::contains_token(s.as_bytes()) || crate::ids::contains_management_token(s)
}

/// `v` with every secret replaced by [`REDACTED`].
pub fn scrub(v: Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.into_iter()
                .map(|(k, v)| {
                    let v = if SECRET_FIELDS.contains(&k.as_str()) && !v.is_null() {
                        Value::String(REDACTED.into())
                    } else {
                        scrub(v)
                    };
                    (k, v)
                })
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.into_iter().map(scrub).collect()),
        Value::String(s) if holds_token(&s) => Value::String(REDACTED.into()),
        other => other,
    }
}

/// An alert webhook's changes with their `url` (a string) redacted as a
/// viewer is shown it ([`redact_webhook_url`]) and `urlFingerprint` (of the
/// whole URL) beside it. Entries are recorded so; the audit-log API applies
/// it again to what it reads ([`redact_recorded_webhook_changes`]) for the
/// entries recorded before URLs were redacted.
pub fn redact_webhook_changes(changes: &mut Value) {
    if let Some(m) = changes.as_object_mut() {
        if let Some(Value::String(url)) = m.get("url") {
            let fingerprint = webhook_url_fingerprint(url);
            let shown = redact_webhook_url(url);
            m.insert("url".into(), Value::String(shown));
            m.insert("urlFingerprint".into(), Value::String(fingerprint));
        }
    }
}

/// [`redact_webhook_changes`] for an entry as read: an entry that has a
/// `urlFingerprint` was redacted when it was recorded, and is left as it is.
pub fn redact_recorded_webhook_changes(resource_type: &str, changes: &mut Value) {
    if resource_type == ALERT_WEBHOOK && changes.get("urlFingerprint").is_none() {
        redact_webhook_changes(changes);
    }
}

/// An audit retention in force: entries older than `days` go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditRetention {
    days: u32,
}

impl AuditRetention {
    /// `KEYGATE_AUDIT_RETENTION_DAYS`: `None` for 0 (keep forever).
    pub fn from_days(days: u32) -> Option<Self> {
        (days > 0).then_some(AuditRetention { days })
    }

    pub fn days(self) -> u32 {
        self.days
    }

    /// Entries recorded before this instant (unix ms) are past retention.
    pub fn cutoff_ms(self, now_ms: i64) -> i64 {
        now_ms.saturating_sub(i64::from(self.days).saturating_mul(DAY_MS))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn secrets_are_scrubbed_at_any_depth() {
        let access = keygate_proto::token::from_random(&[7u8; 20]);
        let mgmt = format!("kgm_{}", "ab".repeat(24));
        let a = Audit::new(
            &Principal::bootstrap(),
            Via::Api,
            "provider_key.create",
            "provider_key",
            None,
            json!({"value": "sk-secret", "name": "n", "nested": [{"token": "t"}, {"x": format!("see {access}")}],
                   "note": format!("{mgmt} here"), "description": null, "value2": "kept",
                   "secret": "whsec_0123"}),
        );
        let got: Value = serde_json::from_str(&a.changes_json()).unwrap();
        assert_eq!(
            got,
            json!({"value": REDACTED, "name": "n", "nested": [{"token": REDACTED}, {"x": REDACTED}],
                   "note": REDACTED, "description": null, "value2": "kept", "secret": REDACTED})
        );
        assert_eq!(a.actor(), "bootstrap");
        assert_eq!(a.resource_id(Some("pk_1")), Some("pk_1"));
        let not_object = Audit::new(&Principal::bootstrap(), Via::Console, "x.y", "x", Some("i".into()), json!(5));
        assert_eq!(not_object.changes_json(), "{}");
        assert_eq!(not_object.resource_id(Some("other")), Some("i"));
    }

    #[test]
    fn an_alert_webhooks_url_is_recorded_redacted_with_its_fingerprint() {
        let url = "https://hooks.slack.com/services/T000/B000/XXXXXXXXXXXXXXXXXXXXXXXX";
        let a = Audit::new(
            &Principal::bootstrap(),
            Via::Api,
            "alert_webhook.create",
            ALERT_WEBHOOK,
            None,
            json!({"url": url, "secret": "whsec_0123", "thresholds": [80]}),
        );
        assert!(!a.changes_json().contains("XXXX"), "{}", a.changes_json());
        let got: Value = serde_json::from_str(&a.changes_json()).unwrap();
        assert_eq!(
            got,
            json!({"url": "https://hooks.slack.com/…", "urlFingerprint": webhook_url_fingerprint(url),
                   "secret": REDACTED, "thresholds": [80]})
        );
        // Other resources' `url`-named fields are not webhook URLs; a change without a url has none.
        let other = Audit::new(&Principal::bootstrap(), Via::Api, "x.update", "provider", None, json!({"url": url}));
        assert_eq!(other.changes_json(), json!({"url": url}).to_string());
        let none = Audit::new(&Principal::bootstrap(), Via::Api, "x", ALERT_WEBHOOK, None, json!({"enabled": false}));
        assert_eq!(none.changes_json(), r#"{"enabled":false}"#);
        // As read: an entry recorded before redaction is redacted; a redacted one is left alone.
        let mut old = json!({"url": url, "enabled": true});
        redact_recorded_webhook_changes(ALERT_WEBHOOK, &mut old);
        assert_eq!(
            old,
            json!({"url": "https://hooks.slack.com/…", "urlFingerprint": webhook_url_fingerprint(url),
                               "enabled": true})
        );
        let again = old.clone();
        redact_recorded_webhook_changes(ALERT_WEBHOOK, &mut old);
        assert_eq!(old, again);
        let mut elsewhere = json!({"url": url});
        redact_recorded_webhook_changes("provider", &mut elsewhere);
        assert_eq!(elsewhere, json!({"url": url}));
    }

    #[test]
    fn retention() {
        assert_eq!(AuditRetention::from_days(0), None);
        let r = AuditRetention::from_days(DEFAULT_RETENTION_DAYS).unwrap();
        assert_eq!(r.cutoff_ms(400 * DAY_MS), 35 * DAY_MS);
        assert_eq!(AuditRetention::from_days(u32::MAX).unwrap().cutoff_ms(i64::MIN), i64::MIN);
    }
}
