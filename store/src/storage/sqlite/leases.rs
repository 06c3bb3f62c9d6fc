//! Rate-limit leases on SQLite: one row per key and window, counting what
//! the fleet was granted (every rule is in `crate::policy::leases`).

use keygate_proto::lookup::{LeaseRequest, LeaseResponse};
use rusqlite::{params, OptionalExtension, Transaction};

use super::error::{DbError, R};
use crate::model::RateLimitsSpec;
use crate::policy::key_status;
use crate::policy::leases::{self, Granted};

/// Migration 2.
pub(super) const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS rate_leases (
    key_id    TEXT NOT NULL,
    window_ms INTEGER NOT NULL,
    start_ms  INTEGER NOT NULL,
    requests  INTEGER NOT NULL,
    tokens    INTEGER NOT NULL,
    PRIMARY KEY (key_id, window_ms, start_ms)
);
"#;

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

pub(super) fn lease(tx: &Transaction<'_>, req: &LeaseRequest, now_ms: u64) -> R<LeaseResponse> {
    let spec: Option<String> = tx
        .prepare_cached(
            "SELECT c.rate_limits_json FROM access_keys k JOIN configs c ON c.id = k.config_id WHERE k.id = ?1",
        )?
        .query_row(params![req.access_key_id], |r| r.get(0))
        .optional()?
        .flatten();
    let spec: Option<RateLimitsSpec> = spec.map(|s| serde_json::from_str(&s)).transpose().map_err(DbError::from)?;
    let limits = key_status::limits(spec);
    let (start, _) = leases::window(now_ms, req.window_ms);
    let window_ms = to_i64(req.window_ms);
    let granted = tx
        .prepare_cached(
            "SELECT requests, tokens FROM rate_leases WHERE key_id = ?1 AND window_ms = ?2 AND start_ms = ?3",
        )?
        .query_row(params![req.access_key_id, window_ms, to_i64(start)], |r| {
            Ok(Granted { requests: r.get::<_, i64>(0)?.max(0) as u64, tokens: r.get::<_, i64>(1)?.max(0) as u64 })
        })
        .optional()?
        .unwrap_or_default();
    let newest: Option<i64> = tx
        .prepare_cached("SELECT max(start_ms) FROM rate_leases WHERE key_id = ?1 AND window_ms = ?2")?
        .query_row(params![req.access_key_id, window_ms], |r| r.get(0))?;
    let newest = newest.map(|n| n.max(0) as u64);
    let (answer, after) = leases::grant(limits.as_ref(), granted, req, now_ms, newest);
    if after != granted {
        tx.prepare_cached(
            "INSERT INTO rate_leases(key_id, window_ms, start_ms, requests, tokens) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT(key_id, window_ms, start_ms) DO UPDATE SET requests = ?4, tokens = ?5",
        )?
        .execute(params![
            req.access_key_id,
            window_ms,
            to_i64(start),
            to_i64(after.requests),
            to_i64(after.tokens)
        ])?;
        // Windows of this key and length that are over are of no use any more.
        tx.prepare_cached(
            "DELETE FROM rate_leases WHERE key_id = ?1 AND window_ms = ?2 AND start_ms + window_ms <= ?3",
        )?
        .execute(params![req.access_key_id, window_ms, to_i64(now_ms)])?;
    }
    Ok(answer)
}
