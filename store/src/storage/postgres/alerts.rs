//! Alert webhooks on PostgreSQL (migration 7): the same tables and
//! statements as on SQLite. Statements only; every rule is in
//! `crate::policy::alerts`.
//!
//! Several replicas share the tables. An alert's mark (`alert_fired`) has a
//! primary key over (webhook, subject, unit, period, threshold): of two
//! transactions inserting it at once, the second waits for the first and
//! then inserts nothing (or fails to serialize and is run again, finding the
//! mark), so a delivery is queued once. A delivery is claimed with `FOR
//! UPDATE SKIP LOCKED` and a lease (`lease_until_ms`, `lease_token`): a
//! replica skips the rows another is claiming, and a claimed row is not due
//! again until its lease ends (a replica that died mid-attempt hands it on).

use postgres::Transaction;

use super::error::R;
use super::ledger::PgLedger;
use crate::crypto::Cipher;
use crate::error::StoreError;
use crate::ids::{new_id, now_ms, random_hex};
use crate::model::{AlertDelivery, AlertWebhook};
use crate::policy::alerts::{self, AlertLedger, AlertTarget, ExpiringKey, Fired, NewDelivery, NextState};
use crate::policy::references::{not_found, Resource};
use crate::storage::rows::{self, alert_lists, delivery_state, limit_i64, Cells};
use crate::storage::{AlertWebhookChanges, AttemptRecord, ClaimedDelivery, NewAlertWebhook, PageRequest};

/// Migration 7.
pub(super) const SCHEMA: &str = r#"
CREATE TABLE alert_webhooks (
    id                  TEXT COLLATE "C" PRIMARY KEY,
    url                 TEXT NOT NULL,
    secret              BYTEA NOT NULL,
    config_id           TEXT COLLATE "C" REFERENCES configs(id),
    thresholds_json     TEXT NOT NULL,
    events_json         TEXT NOT NULL,
    expiry_warning_days BIGINT NOT NULL,
    enabled             BOOLEAN NOT NULL,
    created_ms          BIGINT NOT NULL,
    updated_ms          BIGINT NOT NULL
);
CREATE INDEX alert_webhooks_config ON alert_webhooks(config_id);
CREATE TABLE alert_fired (
    webhook_id    TEXT COLLATE "C" NOT NULL,
    subject       TEXT COLLATE "C" NOT NULL,
    unit          TEXT COLLATE "C" NOT NULL,
    period        TEXT COLLATE "C" NOT NULL,
    threshold     BIGINT NOT NULL,
    period_end_ms BIGINT,
    created_ms    BIGINT NOT NULL,
    PRIMARY KEY (webhook_id, subject, unit, period, threshold)
);
CREATE TABLE alert_deliveries (
    id              TEXT COLLATE "C" PRIMARY KEY,
    webhook_id      TEXT COLLATE "C" NOT NULL,
    event           TEXT NOT NULL,
    payload         TEXT NOT NULL,
    status          TEXT COLLATE "C" NOT NULL,
    attempts        BIGINT NOT NULL DEFAULT 0,
    next_attempt_ms BIGINT NOT NULL,
    lease_until_ms  BIGINT NOT NULL DEFAULT 0,
    lease_token     TEXT COLLATE "C",
    last_status     BIGINT,
    last_error      TEXT,
    created_ms      BIGINT NOT NULL,
    delivered_ms    BIGINT
);
CREATE INDEX alert_deliveries_due ON alert_deliveries(status, next_attempt_ms);
CREATE INDEX alert_deliveries_webhook ON alert_deliveries(webhook_id, id);
CREATE TABLE alert_attempts (
    delivery_id TEXT COLLATE "C" NOT NULL,
    attempt     BIGINT NOT NULL,
    started_ms  BIGINT NOT NULL,
    duration_ms BIGINT NOT NULL,
    status      BIGINT,
    error       TEXT,
    PRIMARY KEY (delivery_id, attempt)
);
"#;

impl AlertLedger for PgLedger<'_, '_> {
    fn alert_targets(&mut self) -> R<Vec<AlertTarget>> {
        self.0.query(&format!("SELECT {}", rows::ALERT_TARGET_COLS), &[])?.iter().map(rows::alert_target).collect()
    }

    fn key_name(&mut self, id: &str) -> R<Option<String>> {
        self.0.query_opt("SELECT name FROM access_keys WHERE id = $1", &[&id])?.map(|r| r.text(0)).transpose()
    }

    fn config_name(&mut self, id: &str) -> R<Option<String>> {
        self.0.query_opt("SELECT name FROM configs WHERE id = $1", &[&id])?.map(|r| r.text(0)).transpose()
    }

    fn expiring_keys(&mut self, after_secs: i64, until_secs: i64) -> R<Vec<ExpiringKey>> {
        let sql = format!(
            "SELECT {} WHERE NOT disabled AND expires_at > $1 AND expires_at <= $2 ORDER BY id",
            rows::EXPIRING_KEY_COLS
        );
        self.0.query(&sql, &[&after_secs, &until_secs])?.iter().map(rows::expiring_key).collect()
    }

    fn insert_fired(&mut self, f: &Fired) -> R<bool> {
        let n = self.0.execute(
            "INSERT INTO alert_fired(webhook_id, subject, unit, period, threshold, period_end_ms, created_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
            &[&f.webhook_id, &f.subject, &f.unit, &f.period, &f.threshold, &f.period_end_ms, &f.created_ms],
        )?;
        Ok(n > 0)
    }

    fn insert_delivery(&mut self, d: &NewDelivery) -> R<()> {
        self.0.execute(
            "INSERT INTO alert_deliveries(id, webhook_id, event, payload, status, attempts, next_attempt_ms,
               lease_until_ms, created_ms)
             VALUES ($1, $2, $3, $4, 'pending', 0, $5, 0, $5)",
            &[&d.id, &d.webhook_id, &d.event, &d.payload, &d.created_ms],
        )?;
        Ok(())
    }

    fn forget_alerts(&mut self, ended_before_ms: i64, finished_before_ms: i64) -> R<()> {
        self.0.execute(
            "DELETE FROM alert_fired WHERE period_end_ms IS NOT NULL AND period_end_ms < $1",
            &[&ended_before_ms],
        )?;
        self.0.execute(
            "DELETE FROM alert_attempts WHERE delivery_id IN
               (SELECT id FROM alert_deliveries WHERE status <> 'pending' AND created_ms < $1)",
            &[&finished_before_ms],
        )?;
        self.0.execute(
            "DELETE FROM alert_deliveries WHERE status <> 'pending' AND created_ms < $1",
            &[&finished_before_ms],
        )?;
        Ok(())
    }
}

pub(super) fn get_webhook(tx: &mut Transaction<'_>, id: &str) -> R<AlertWebhook> {
    let sql = format!("SELECT {} WHERE id = $1", rows::ALERT_WEBHOOK_COLS);
    tx.query_opt(&sql, &[&id])?
        .as_ref()
        .map(rows::alert_webhook)
        .transpose()?
        .ok_or_else(|| not_found(Resource::AlertWebhook, id).into())
}

fn check_config(tx: &mut Transaction<'_>, id: Option<&str>) -> R<()> {
    if let Some(id) = id {
        let exists = tx.query_opt("SELECT 1 FROM configs WHERE id = $1", &[&id])?.is_some();
        alerts::require_config(id, exists)?;
    }
    Ok(())
}

/// How many webhooks are scoped to a configuration (its deletion waits for none).
pub(super) fn webhooks_of_config(tx: &mut Transaction<'_>, config_id: &str) -> R<i64> {
    tx.query_one("SELECT COUNT(*) FROM alert_webhooks WHERE config_id = $1", &[&config_id])?.int(0)
}

fn days(d: u32) -> i64 {
    i64::from(d)
}

pub(super) fn create_webhook(
    tx: &mut Transaction<'_>,
    cipher: &Cipher,
    id: &str,
    new: &NewAlertWebhook,
) -> R<AlertWebhook> {
    check_config(tx, new.config_id.as_deref())?;
    let sealed = cipher.encrypt(id, new.secret.as_bytes())?;
    let (thresholds, events) = alert_lists(&new.thresholds, &new.events)?;
    tx.execute(
        "INSERT INTO alert_webhooks(id, url, secret, config_id, thresholds_json, events_json, expiry_warning_days,
           enabled, created_ms, updated_ms)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9)",
        &[
            &id,
            &new.url,
            &sealed,
            &new.config_id,
            &thresholds,
            &events,
            &days(new.expiry_warning_days),
            &new.enabled,
            &now_ms(),
        ],
    )?;
    get_webhook(tx, id)
}

pub(super) fn list_webhooks(tx: &mut Transaction<'_>, page: &PageRequest) -> R<Vec<AlertWebhook>> {
    let sql =
        format!("SELECT {} WHERE ($1::TEXT IS NULL OR id < $1) ORDER BY id DESC LIMIT $2", rows::ALERT_WEBHOOK_COLS);
    tx.query(&sql, &[&page.before_id, &limit_i64(page)])?.iter().map(rows::alert_webhook).collect()
}

pub(super) fn update_webhook(
    tx: &mut Transaction<'_>,
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
        "UPDATE alert_webhooks SET url = $2, config_id = $3, thresholds_json = $4, events_json = $5,
           expiry_warning_days = $6, enabled = $7, updated_ms = $8 WHERE id = $1",
        &[
            &id,
            ch.url.as_ref().unwrap_or(&current.url),
            &config_id,
            &thresholds,
            &events,
            &days(ch.expiry_warning_days.unwrap_or(current.expiry_warning_days)),
            &ch.enabled.unwrap_or(current.enabled),
            &now_ms(),
        ],
    )?;
    if let Some(secret) = &ch.secret {
        let sealed = cipher.encrypt(id, secret.as_bytes())?;
        tx.execute("UPDATE alert_webhooks SET secret = $2 WHERE id = $1", &[&id, &sealed])?;
    }
    get_webhook(tx, id)
}

pub(super) fn delete_webhook(tx: &mut Transaction<'_>, id: &str) -> R<()> {
    get_webhook(tx, id)?;
    tx.execute(
        "DELETE FROM alert_attempts WHERE delivery_id IN (SELECT id FROM alert_deliveries WHERE webhook_id = $1)",
        &[&id],
    )?;
    tx.execute("DELETE FROM alert_deliveries WHERE webhook_id = $1", &[&id])?;
    tx.execute("DELETE FROM alert_fired WHERE webhook_id = $1", &[&id])?;
    tx.execute("DELETE FROM alert_webhooks WHERE id = $1", &[&id])?;
    Ok(())
}

pub(super) fn list_deliveries(tx: &mut Transaction<'_>, webhook_id: &str, page: &PageRequest) -> R<Vec<AlertDelivery>> {
    get_webhook(tx, webhook_id)?;
    let sql = format!(
        "SELECT {} WHERE webhook_id = $1 AND ($2::TEXT IS NULL OR id < $2) ORDER BY id DESC LIMIT $3",
        rows::ALERT_DELIVERY_COLS
    );
    let mut out: Vec<AlertDelivery> = tx
        .query(&sql, &[&webhook_id, &page.before_id, &limit_i64(page)])?
        .iter()
        .map(rows::alert_delivery)
        .collect::<R<_>>()?;
    let sql = format!("SELECT {} WHERE delivery_id = $1 ORDER BY attempt", rows::ALERT_ATTEMPT_COLS);
    for d in &mut out {
        d.attempt_log = tx.query(&sql, &[&d.id])?.iter().map(rows::alert_attempt).collect::<R<_>>()?;
    }
    Ok(out)
}

/// Pending deliveries of enabled webhooks: when the first may be claimed.
pub(super) const NEXT_DUE: &str = "SELECT MIN(GREATEST(d.next_attempt_ms, d.lease_until_ms))
     FROM alert_deliveries d JOIN alert_webhooks w ON w.id = d.webhook_id
     WHERE d.status = 'pending' AND w.enabled";

pub(super) fn claim(tx: &mut Transaction<'_>, cipher: &Cipher, lease_ms: i64, limit: usize) -> R<Vec<ClaimedDelivery>> {
    let now = now_ms();
    let token = random_hex(16)?;
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let claimed = tx.query(
        "WITH due AS (
           SELECT d.id FROM alert_deliveries d JOIN alert_webhooks w ON w.id = d.webhook_id
           WHERE d.status = 'pending' AND d.next_attempt_ms <= $3 AND d.lease_until_ms <= $3 AND w.enabled
           ORDER BY d.next_attempt_ms, d.id LIMIT $4
           FOR UPDATE OF d SKIP LOCKED)
         UPDATE alert_deliveries a SET lease_until_ms = $1, lease_token = $2
         FROM due, alert_webhooks w
         WHERE a.id = due.id AND w.id = a.webhook_id
         RETURNING a.id, a.webhook_id, a.event, w.url, w.secret, a.payload, a.attempts, a.next_attempt_ms",
        &[&now.saturating_add(lease_ms), &token, &now, &limit],
    )?;
    let mut out = Vec::with_capacity(claimed.len());
    for r in &claimed {
        let webhook_id = r.text(1)?;
        let sealed: Vec<u8> = r.try_get(4)?;
        let secret = String::from_utf8(cipher.decrypt(&webhook_id, &sealed)?)
            .map_err(|_| StoreError::Internal("a webhook secret is not UTF-8".into()))?;
        let attempts = u32::try_from(r.int(6)?).map_err(|_| StoreError::Internal("attempts out of range".into()))?;
        let d = ClaimedDelivery {
            id: r.text(0)?,
            webhook_id,
            event: r.text(2)?,
            url: r.text(3)?,
            secret,
            payload: r.text(5)?,
            attempts,
            lease: token.clone(),
        };
        out.push((r.int(7)?, d));
    }
    // Oldest due first, as SQLite hands them out.
    out.sort_by(|(a, x), (b, y)| (a, &x.id).cmp(&(b, &y.id)));
    Ok(out.into_iter().map(|(_, d)| d).collect())
}

pub(super) fn finish(tx: &mut Transaction<'_>, d: &ClaimedDelivery, a: &AttemptRecord, next: NextState) -> R<bool> {
    let held = tx
        .query_opt(
            "SELECT 1 FROM alert_deliveries WHERE id = $1 AND lease_token = $2 AND status = 'pending' FOR UPDATE",
            &[&d.id, &d.lease],
        )?
        .is_some();
    if !held {
        return Ok(false);
    }
    let now = now_ms();
    let attempt = i64::from(a.attempt);
    let status = a.status.map(i64::from);
    tx.execute(
        "INSERT INTO alert_attempts(delivery_id, attempt, started_ms, duration_ms, status, error)
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
        &[&d.id, &attempt, &a.started_ms, &a.duration_ms, &status, &a.error],
    )?;
    let (state, next_ms, delivered) = delivery_state(next, now);
    tx.execute(
        "UPDATE alert_deliveries SET status = $2, attempts = $3, next_attempt_ms = $4, delivered_ms = $5,
           last_status = $6, last_error = $7, lease_until_ms = 0, lease_token = NULL WHERE id = $1",
        &[&d.id, &state, &attempt, &next_ms, &delivered, &status, &a.error],
    )?;
    Ok(true)
}

/// A new webhook id (drawn before the transaction: a retried transaction
/// inserts the same webhook).
pub(super) fn new_webhook_id() -> R<String> {
    Ok(new_id("awh_")?)
}
