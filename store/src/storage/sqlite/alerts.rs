//! Alert webhooks on SQLite (migration 7): the webhooks, the marks of alerts
//! sent (`alert_fired`, unique per webhook, subject, unit, period and
//! threshold), the queued deliveries and their attempts. Statements only;
//! every rule is in `crate::policy::alerts`.
//!
//! A delivery is claimed by writing a lease (`lease_until_ms`, `lease_token`)
//! in a write transaction (`BEGIN IMMEDIATE`: one writer at a time, so two
//! workers never claim the same row); the attempt is recorded only by the
//! holder of the lease.

use rusqlite::{params, OptionalExtension, Transaction};

use super::error::R;
use super::ledger::SqlLedger;
use super::{all, first};
use crate::crypto::Cipher;
use crate::error::StoreError;
use crate::ids::{new_id, now_ms, random_hex};
use crate::model::{AlertDelivery, AlertWebhook};
use crate::policy::alerts::{self, AlertLedger, AlertTarget, ExpiringKey, Fired, NewDelivery, NextState};
use crate::policy::references::{not_found, Resource};
use crate::storage::rows::{self, alert_lists, delivery_state, limit_i64};
use crate::storage::{AlertWebhookChanges, AttemptRecord, ClaimedDelivery, NewAlertWebhook, PageRequest};

/// Migration 7 (idempotent, as migration 1 is: a database whose record of
/// migrations was lost gets only what it lacks).
pub(super) const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS alert_webhooks (
    id                  TEXT PRIMARY KEY,
    url                 TEXT NOT NULL,
    secret              BLOB NOT NULL,
    config_id           TEXT REFERENCES configs(id),
    thresholds_json     TEXT NOT NULL,
    events_json         TEXT NOT NULL,
    expiry_warning_days INTEGER NOT NULL,
    enabled             INTEGER NOT NULL,
    created_ms          INTEGER NOT NULL,
    updated_ms          INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS alert_webhooks_config ON alert_webhooks(config_id);
CREATE TABLE IF NOT EXISTS alert_fired (
    webhook_id    TEXT NOT NULL,
    subject       TEXT NOT NULL,
    unit          TEXT NOT NULL,
    period        TEXT NOT NULL,
    threshold     INTEGER NOT NULL,
    period_end_ms INTEGER,
    created_ms    INTEGER NOT NULL,
    PRIMARY KEY (webhook_id, subject, unit, period, threshold)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS alert_deliveries (
    id              TEXT PRIMARY KEY,
    webhook_id      TEXT NOT NULL,
    event           TEXT NOT NULL,
    payload         TEXT NOT NULL,
    status          TEXT NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_ms INTEGER NOT NULL,
    lease_until_ms  INTEGER NOT NULL DEFAULT 0,
    lease_token     TEXT,
    last_status     INTEGER,
    last_error      TEXT,
    created_ms      INTEGER NOT NULL,
    delivered_ms    INTEGER
);
CREATE INDEX IF NOT EXISTS alert_deliveries_due ON alert_deliveries(status, next_attempt_ms);
CREATE INDEX IF NOT EXISTS alert_deliveries_webhook ON alert_deliveries(webhook_id, id);
CREATE TABLE IF NOT EXISTS alert_attempts (
    delivery_id TEXT NOT NULL,
    attempt     INTEGER NOT NULL,
    started_ms  INTEGER NOT NULL,
    duration_ms INTEGER NOT NULL,
    status      INTEGER,
    error       TEXT,
    PRIMARY KEY (delivery_id, attempt)
) WITHOUT ROWID;
"#;

impl AlertLedger for SqlLedger<'_, '_> {
    fn alert_targets(&mut self) -> R<Vec<AlertTarget>> {
        all(self.0, &format!("SELECT {}", rows::ALERT_TARGET_COLS), [], |r| rows::alert_target(r))
    }

    fn key_name(&mut self, id: &str) -> R<Option<String>> {
        Ok(self
            .0
            .prepare_cached("SELECT name FROM access_keys WHERE id = ?1")?
            .query_row(params![id], |r| r.get(0))
            .optional()?)
    }

    fn config_name(&mut self, id: &str) -> R<Option<String>> {
        Ok(self
            .0
            .prepare_cached("SELECT name FROM configs WHERE id = ?1")?
            .query_row(params![id], |r| r.get(0))
            .optional()?)
    }

    fn expiring_keys(&mut self, after_secs: i64, until_secs: i64) -> R<Vec<ExpiringKey>> {
        let sql = format!(
            "SELECT {} WHERE disabled = 0 AND expires_at > ?1 AND expires_at <= ?2 ORDER BY id",
            rows::EXPIRING_KEY_COLS
        );
        all(self.0, &sql, params![after_secs, until_secs], |r| rows::expiring_key(r))
    }

    fn insert_fired(&mut self, f: &Fired) -> R<bool> {
        let n = self
            .0
            .prepare_cached(
                "INSERT INTO alert_fired(webhook_id, subject, unit, period, threshold, period_end_ms, created_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT DO NOTHING",
            )?
            .execute(params![f.webhook_id, f.subject, f.unit, f.period, f.threshold, f.period_end_ms, f.created_ms])?;
        Ok(n > 0)
    }

    fn insert_delivery(&mut self, d: &NewDelivery) -> R<()> {
        self.0
            .prepare_cached(
                "INSERT INTO alert_deliveries(id, webhook_id, event, payload, status, attempts, next_attempt_ms,
                   lease_until_ms, created_ms)
                 VALUES (?1, ?2, ?3, ?4, 'pending', 0, ?5, 0, ?5)",
            )?
            .execute(params![d.id, d.webhook_id, d.event, d.payload, d.created_ms])?;
        Ok(())
    }

    fn forget_alerts(&mut self, ended_before_ms: i64, finished_before_ms: i64) -> R<()> {
        let tx = self.0;
        tx.prepare_cached("DELETE FROM alert_fired WHERE period_end_ms IS NOT NULL AND period_end_ms < ?1")?
            .execute(params![ended_before_ms])?;
        tx.prepare_cached(
            "DELETE FROM alert_attempts WHERE delivery_id IN
               (SELECT id FROM alert_deliveries WHERE status <> 'pending' AND created_ms < ?1)",
        )?
        .execute(params![finished_before_ms])?;
        tx.prepare_cached("DELETE FROM alert_deliveries WHERE status <> 'pending' AND created_ms < ?1")?
            .execute(params![finished_before_ms])?;
        Ok(())
    }
}

pub(super) fn get_webhook(tx: &Transaction<'_>, id: &str) -> R<AlertWebhook> {
    let sql = format!("SELECT {} WHERE id = ?1", rows::ALERT_WEBHOOK_COLS);
    Ok(first(tx, &sql, params![id], |r| rows::alert_webhook(r))?
        .ok_or_else(|| not_found(Resource::AlertWebhook, id))?)
}

fn check_config(tx: &Transaction<'_>, id: Option<&str>) -> R<()> {
    if let Some(id) = id {
        let exists =
            tx.prepare_cached("SELECT 1 FROM configs WHERE id = ?1")?.query_row(params![id], |_| Ok(())).optional()?;
        alerts::require_config(id, exists.is_some())?;
    }
    Ok(())
}

/// How many webhooks are scoped to a configuration (its deletion waits for none).
pub(super) fn webhooks_of_config(tx: &Transaction<'_>, config_id: &str) -> R<i64> {
    Ok(tx.query_row("SELECT COUNT(*) FROM alert_webhooks WHERE config_id = ?1", params![config_id], |r| r.get(0))?)
}

pub(super) fn create_webhook(tx: &Transaction<'_>, cipher: &Cipher, new: &NewAlertWebhook) -> R<AlertWebhook> {
    check_config(tx, new.config_id.as_deref())?;
    let id = new_id("awh_")?;
    let sealed = cipher.encrypt(&id, new.secret.as_bytes())?;
    let (thresholds, events) = alert_lists(&new.thresholds, &new.events)?;
    tx.execute(
        "INSERT INTO alert_webhooks(id, url, secret, config_id, thresholds_json, events_json, expiry_warning_days,
           enabled, created_ms, updated_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?9)",
        params![id, new.url, sealed, new.config_id, thresholds, events, new.expiry_warning_days, new.enabled, now_ms()],
    )?;
    get_webhook(tx, &id)
}

pub(super) fn list_webhooks(tx: &Transaction<'_>, page: &PageRequest) -> R<Vec<AlertWebhook>> {
    let sql = format!("SELECT {} WHERE (?1 IS NULL OR id < ?1) ORDER BY id DESC LIMIT ?2", rows::ALERT_WEBHOOK_COLS);
    all(tx, &sql, params![page.before_id, limit_i64(page)], |r| rows::alert_webhook(r))
}

pub(super) fn update_webhook(
    tx: &Transaction<'_>,
    cipher: &Cipher,
    id: &str,
    ch: &AlertWebhookChanges,
) -> R<AlertWebhook> {
    let current = get_webhook(tx, id)?;
    if let Some(c) = &ch.config_id {
        check_config(tx, c.as_deref())?;
    }
    let thresholds = ch.thresholds.as_ref().unwrap_or(&current.thresholds);
    let events = ch.events.as_ref().unwrap_or(&current.events);
    let (thresholds, events) = alert_lists(thresholds, events)?;
    let config_id = ch.config_id.clone().unwrap_or(current.configuration_id);
    tx.execute(
        "UPDATE alert_webhooks SET url = ?2, config_id = ?3, thresholds_json = ?4, events_json = ?5,
           expiry_warning_days = ?6, enabled = ?7, updated_ms = ?8 WHERE id = ?1",
        params![
            id,
            ch.url.as_ref().unwrap_or(&current.url),
            config_id,
            thresholds,
            events,
            ch.expiry_warning_days.unwrap_or(current.expiry_warning_days),
            ch.enabled.unwrap_or(current.enabled),
            now_ms()
        ],
    )?;
    if let Some(secret) = &ch.secret {
        let sealed = cipher.encrypt(id, secret.as_bytes())?;
        tx.execute("UPDATE alert_webhooks SET secret = ?2 WHERE id = ?1", params![id, sealed])?;
    }
    get_webhook(tx, id)
}

pub(super) fn delete_webhook(tx: &Transaction<'_>, id: &str) -> R<()> {
    get_webhook(tx, id)?;
    tx.execute(
        "DELETE FROM alert_attempts WHERE delivery_id IN (SELECT id FROM alert_deliveries WHERE webhook_id = ?1)",
        params![id],
    )?;
    tx.execute("DELETE FROM alert_deliveries WHERE webhook_id = ?1", params![id])?;
    tx.execute("DELETE FROM alert_fired WHERE webhook_id = ?1", params![id])?;
    tx.execute("DELETE FROM alert_webhooks WHERE id = ?1", params![id])?;
    Ok(())
}

pub(super) fn list_deliveries(tx: &Transaction<'_>, webhook_id: &str, page: &PageRequest) -> R<Vec<AlertDelivery>> {
    get_webhook(tx, webhook_id)?;
    let sql = format!(
        "SELECT {} WHERE webhook_id = ?1 AND (?2 IS NULL OR id < ?2) ORDER BY id DESC LIMIT ?3",
        rows::ALERT_DELIVERY_COLS
    );
    let mut out = all(tx, &sql, params![webhook_id, page.before_id, limit_i64(page)], |r| rows::alert_delivery(r))?;
    let sql = format!("SELECT {} WHERE delivery_id = ?1 ORDER BY attempt", rows::ALERT_ATTEMPT_COLS);
    for d in &mut out {
        d.attempt_log = all(tx, &sql, params![d.id], |r| rows::alert_attempt(r))?;
    }
    Ok(out)
}

/// Pending deliveries of enabled webhooks: when the first may be claimed.
pub(super) const NEXT_DUE: &str = "SELECT MIN(MAX(d.next_attempt_ms, d.lease_until_ms))
     FROM alert_deliveries d JOIN alert_webhooks w ON w.id = d.webhook_id
     WHERE d.status = 'pending' AND w.enabled";

pub(super) fn claim(tx: &Transaction<'_>, cipher: &Cipher, lease_ms: i64, limit: usize) -> R<Vec<ClaimedDelivery>> {
    let now = now_ms();
    let token = random_hex(16)?;
    let n = tx
        .prepare_cached(
            "UPDATE alert_deliveries SET lease_until_ms = ?1, lease_token = ?2 WHERE id IN (
               SELECT d.id FROM alert_deliveries d JOIN alert_webhooks w ON w.id = d.webhook_id
               WHERE d.status = 'pending' AND d.next_attempt_ms <= ?3 AND d.lease_until_ms <= ?3 AND w.enabled
               ORDER BY d.next_attempt_ms, d.id LIMIT ?4)",
        )?
        .execute(params![now.saturating_add(lease_ms), token, now, i64::try_from(limit).unwrap_or(i64::MAX)])?;
    if n == 0 {
        return Ok(Vec::new());
    }
    let claimed = all(
        tx,
        "SELECT d.id, d.webhook_id, d.event, w.url, w.secret, d.payload, d.attempts
         FROM alert_deliveries d JOIN alert_webhooks w ON w.id = d.webhook_id
         WHERE d.lease_token = ?1 ORDER BY d.next_attempt_ms, d.id",
        params![token],
        |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, Vec<u8>>(4)?,
                r.get::<_, String>(5)?,
                r.get::<_, i64>(6)?,
            ))
        },
    )?;
    claimed
        .into_iter()
        .map(|(id, webhook_id, event, url, sealed, payload, attempts)| {
            let secret = String::from_utf8(cipher.decrypt(&webhook_id, &sealed)?)
                .map_err(|_| StoreError::Internal("a webhook secret is not UTF-8".into()))?;
            let attempts = u32::try_from(attempts).map_err(|_| StoreError::Internal("attempts out of range".into()))?;
            Ok(ClaimedDelivery { id, webhook_id, event, url, secret, payload, attempts, lease: token.clone() })
        })
        .collect()
}

pub(super) fn finish(tx: &Transaction<'_>, d: &ClaimedDelivery, a: &AttemptRecord, next: NextState) -> R<bool> {
    let held = tx
        .prepare_cached("SELECT 1 FROM alert_deliveries WHERE id = ?1 AND lease_token = ?2 AND status = 'pending'")?
        .query_row(params![d.id, d.lease], |_| Ok(()))
        .optional()?;
    if held.is_none() {
        return Ok(false);
    }
    let now = now_ms();
    tx.prepare_cached(
        "INSERT INTO alert_attempts(delivery_id, attempt, started_ms, duration_ms, status, error)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT DO NOTHING",
    )?
    .execute(params![d.id, a.attempt, a.started_ms, a.duration_ms, a.status, a.error])?;
    let (status, next_ms, delivered) = delivery_state(next, now);
    tx.prepare_cached(
        "UPDATE alert_deliveries SET status = ?2, attempts = ?3, next_attempt_ms = ?4, delivered_ms = ?5,
           last_status = ?6, last_error = ?7, lease_until_ms = 0, lease_token = NULL WHERE id = ?1",
    )?
    .execute(params![d.id, status, a.attempt, next_ms, delivered, a.status, a.error])?;
    Ok(true)
}
