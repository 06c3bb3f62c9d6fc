//! Rate-limit leases on PostgreSQL: one row per key and window, counting
//! what the fleet was granted, updated in the caller's serializable
//! transaction (every rule is in `crate::policy::leases`).

use keygate_proto::lookup::{LeaseRequest, LeaseResponse};
use postgres::Transaction;

use super::error::R;
use super::rows::Cells;
use crate::model::RateLimitsSpec;
use crate::policy::key_status;
use crate::policy::leases::{self, Granted};

/// Migration 2.
pub(super) const SCHEMA: &str = "
CREATE TABLE rate_leases (
    key_id    TEXT NOT NULL,
    window_ms BIGINT NOT NULL,
    start_ms  BIGINT NOT NULL,
    requests  BIGINT NOT NULL,
    tokens    BIGINT NOT NULL,
    PRIMARY KEY (key_id, window_ms, start_ms)
);
";

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// One lease, on the database's clock (every replica counts windows alike;
/// a retried transaction reads it again).
pub(super) fn lease(tx: &mut Transaction<'_>, req: &LeaseRequest) -> R<LeaseResponse> {
    let now_ms =
        tx.query_one("SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint", &[])?.int(0)?.max(0) as u64;
    let spec: Option<RateLimitsSpec> = tx
        .query_opt(
            "SELECT c.rate_limits_json FROM access_keys k JOIN configs c ON c.id = k.config_id WHERE k.id = $1",
            &[&req.access_key_id],
        )?
        .map(|r| r.json(0))
        .transpose()?
        .flatten();
    let limits = key_status::limits(spec);
    let (start, window_ms) = (to_i64(leases::window(now_ms, req.window_ms).0), to_i64(req.window_ms));
    let granted = tx
        .query_opt(
            "SELECT requests, tokens FROM rate_leases WHERE key_id = $1 AND window_ms = $2 AND start_ms = $3",
            &[&req.access_key_id, &window_ms, &start],
        )?
        .map(|r| -> R<Granted> { Ok(Granted { requests: r.int(0)?.max(0) as u64, tokens: r.int(1)?.max(0) as u64 }) })
        .transpose()?
        .unwrap_or_default();
    let newest = tx
        .query_one(
            "SELECT max(start_ms) FROM rate_leases WHERE key_id = $1 AND window_ms = $2",
            &[&req.access_key_id, &window_ms],
        )?
        .opt_int(0)?
        .map(|n| n.max(0) as u64);
    let (answer, after) = leases::grant(limits.as_ref(), granted, req, now_ms, newest);
    if after != granted {
        tx.execute(
            "INSERT INTO rate_leases(key_id, window_ms, start_ms, requests, tokens) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (key_id, window_ms, start_ms) DO UPDATE SET requests = $4, tokens = $5",
            &[&req.access_key_id, &window_ms, &start, &to_i64(after.requests), &to_i64(after.tokens)],
        )?;
        // Windows of this key and length that are over are of no use any more.
        tx.execute(
            "DELETE FROM rate_leases WHERE key_id = $1 AND window_ms = $2 AND start_ms + window_ms <= $3",
            &[&req.access_key_id, &window_ms, &to_i64(now_ms)],
        )?;
    }
    Ok(answer)
}
