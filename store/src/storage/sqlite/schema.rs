//! The SQLite schema as versioned migrations, recorded in
//! `schema_migrations`. Migration 1 is the schema as it was before migrations
//! were versioned: tables of the first version, the columns and tables added
//! since, and the seeded prices. It is idempotent, so a database from before
//! versioned migrations (it has `meta` but no `schema_migrations`) gets
//! whatever it lacks and is then marked as version 1.
//!
//! Migrating takes SQLite's write lock (`BEGIN IMMEDIATE`): two processes
//! opening one database migrate one after the other.

use rusqlite::{params, Connection, OptionalExtension, Transaction, TransactionBehavior};

use super::error::R;
use crate::pricing::{usd_to_micros, DEFAULT_PRICES};
use crate::storage::migrations::{self, Migration};

pub(super) const MIGRATIONS: &[Migration] = &[
    Migration { version: 1, name: "initial schema" },
    Migration { version: 2, name: "rate-limit leases" },
    Migration { version: 3, name: "per-request limits" },
    Migration { version: 4, name: "estimated usage" },
    Migration { version: 5, name: "access keys' own concurrency caps" },
    Migration { version: 6, name: "management API keys and the audit log" },
    Migration { version: 7, name: "alert webhooks and their deliveries" },
    Migration { version: 8, name: "access-key name search" },
    Migration { version: 9, name: "web console sessions" },
];

const SCHEMA_SQL: &str = r#"
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value ANY NOT NULL
) STRICT, WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS providers (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    id          TEXT NOT NULL UNIQUE,
    name        TEXT NOT NULL,
    base_url    TEXT NOT NULL,
    format      TEXT NOT NULL,
    auth        TEXT NOT NULL,
    models_json TEXT NOT NULL,
    built_in    INTEGER NOT NULL,
    created_ms  INTEGER NOT NULL,
    updated_ms  INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS provider_keys (
    id          TEXT PRIMARY KEY,
    provider_id TEXT NOT NULL REFERENCES providers(id),
    name        TEXT NOT NULL,
    description TEXT NOT NULL,
    metadata    TEXT NOT NULL,
    managed     INTEGER NOT NULL,
    secret      BLOB NOT NULL,
    redacted    TEXT NOT NULL,
    created_ms  INTEGER NOT NULL,
    updated_ms  INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS provider_keys_provider ON provider_keys(provider_id, managed);
CREATE TABLE IF NOT EXISTS configs (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    description TEXT NOT NULL,
    metadata    TEXT NOT NULL,
    access_json TEXT,
    router_json TEXT,
    created_ms  INTEGER NOT NULL,
    updated_ms  INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS access_keys (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    description TEXT NOT NULL,
    metadata    TEXT NOT NULL,
    config_id   TEXT REFERENCES configs(id),
    expires_at  INTEGER,
    disabled    INTEGER NOT NULL,
    digest      TEXT NOT NULL UNIQUE,
    redacted    TEXT NOT NULL,
    prev_digest TEXT UNIQUE,
    prev_until  INTEGER,
    created_ms  INTEGER NOT NULL,
    updated_ms  INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS access_keys_config ON access_keys(config_id);
CREATE TABLE IF NOT EXISTS change_log (
    seq     INTEGER PRIMARY KEY AUTOINCREMENT,
    version INTEGER NOT NULL,
    digest  TEXT
);
CREATE INDEX IF NOT EXISTS change_log_version ON change_log(version);
INSERT OR IGNORE INTO meta(key, value) VALUES ('version', 0), ('trimmed_through', 0);
"#;

const BILLING_SQL: &str = r#"
CREATE TABLE IF NOT EXISTS budget_state (
    scope           TEXT NOT NULL,
    win             TEXT NOT NULL,
    window_start    INTEGER NOT NULL,
    spent_tokens    INTEGER NOT NULL DEFAULT 0,
    spent_micros    INTEGER NOT NULL DEFAULT 0,
    reserved_tokens INTEGER NOT NULL DEFAULT 0,
    reserved_micros INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (scope, win, window_start)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS reservations (
    id            TEXT PRIMARY KEY,
    request_id    TEXT NOT NULL,
    access_key_id TEXT NOT NULL,
    tokens        INTEGER NOT NULL,
    micros        INTEGER NOT NULL,
    budgets_json  TEXT NOT NULL,
    created_ms    INTEGER NOT NULL,
    expires_ms    INTEGER NOT NULL,
    released      INTEGER NOT NULL DEFAULT 0,
    settled_ms    INTEGER
);
CREATE INDEX IF NOT EXISTS reservations_open ON reservations(released, expires_ms);
CREATE INDEX IF NOT EXISTS reservations_request ON reservations(request_id);
CREATE TABLE IF NOT EXISTS usage (
    seq              INTEGER PRIMARY KEY AUTOINCREMENT,
    id               TEXT NOT NULL UNIQUE,
    request_id       TEXT NOT NULL,
    attempt          INTEGER NOT NULL,
    access_key_id    TEXT NOT NULL,
    config_id        TEXT,
    provider         TEXT NOT NULL,
    model            TEXT,
    provider_key_id  TEXT,
    final            INTEGER NOT NULL,
    status           INTEGER NOT NULL,
    streaming        INTEGER NOT NULL,
    input_tokens     INTEGER NOT NULL,
    output_tokens    INTEGER NOT NULL,
    cached_tokens    INTEGER NOT NULL,
    reasoning_tokens INTEGER NOT NULL,
    cost_micros      INTEGER NOT NULL,
    started_ms       INTEGER NOT NULL,
    ended_ms         INTEGER NOT NULL,
    reservation_id   TEXT,
    charged          INTEGER NOT NULL DEFAULT 0,
    UNIQUE (request_id, attempt)
);
CREATE INDEX IF NOT EXISTS usage_started ON usage(started_ms);
CREATE INDEX IF NOT EXISTS usage_key ON usage(access_key_id, id);
CREATE TABLE IF NOT EXISTS prices (
    provider      TEXT NOT NULL,
    model         TEXT NOT NULL,
    input_micros  INTEGER NOT NULL,
    output_micros INTEGER NOT NULL,
    cached_micros INTEGER,
    updated_ms    INTEGER NOT NULL,
    PRIMARY KEY (provider, model)
);
INSERT OR IGNORE INTO meta(key, value) VALUES ('credits_enabled', 0), ('credits_granted', 0), ('credits_touched', 0);
"#;

/// Migration 3: a configuration's per-request limits.
pub(crate) const REQUEST_LIMITS_SQL: &str = "ALTER TABLE configs ADD COLUMN request_limits_json TEXT;";

/// Migration 6: management API keys (token digests only) and the audit log,
/// which nothing may update (the retention sweep deletes old entries).
pub(crate) const API_KEYS_AND_AUDIT_SQL: &str = r#"
CREATE TABLE api_keys (
    id           TEXT PRIMARY KEY,
    name         TEXT NOT NULL,
    role         TEXT NOT NULL CHECK (role IN ('admin', 'operator', 'viewer')),
    digest       TEXT NOT NULL UNIQUE,
    token_prefix TEXT NOT NULL,
    created_ms   INTEGER NOT NULL,
    updated_ms   INTEGER NOT NULL,
    last_used_ms INTEGER
);
CREATE TABLE audit_log (
    id            TEXT PRIMARY KEY,
    at_ms         INTEGER NOT NULL,
    actor         TEXT NOT NULL,
    via           TEXT NOT NULL,
    action        TEXT NOT NULL,
    resource_type TEXT NOT NULL,
    resource_id   TEXT,
    changes_json  TEXT NOT NULL
);
CREATE INDEX audit_log_at ON audit_log(at_ms);
CREATE INDEX audit_log_actor ON audit_log(actor, id);
CREATE INDEX audit_log_resource ON audit_log(resource_id, id);
CREATE TRIGGER audit_log_append_only BEFORE UPDATE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'the audit log is append-only');
END;
"#;
/// Migration 8: `GET /access-keys?q=` (a name prefix, ASCII letters folded)
/// reads a range of this index. SQLite's `lower()` folds ASCII letters only.
pub(crate) const NAME_SEARCH_SQL: &str =
    "CREATE INDEX IF NOT EXISTS access_keys_name_search ON access_keys(lower(name), id);";

/// Columns added to tables of the first schema (databases created before
/// budgets existed get them on open).
const ADDED_COLUMNS: &[(&str, &str, &str)] = &[
    ("configs", "rate_limits_json", "TEXT"),
    ("configs", "budget_json", "TEXT"),
    ("access_keys", "budget_json", "TEXT"),
    ("access_keys", "last_used_ms", "INTEGER"),
    ("provider_keys", "last_used_ms", "INTEGER"),
];

fn table_exists(tx: &Transaction<'_>, name: &str) -> R<bool> {
    Ok(tx
        .query_row("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1", params![name], |_| Ok(()))
        .optional()?
        .is_some())
}

/// Applies the pending migrations in one write transaction; returns them.
pub(super) fn migrate(conn: &mut Connection) -> R<Vec<Migration>> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let before_versions = !table_exists(&tx, "schema_migrations")? && table_exists(&tx, "meta")?;
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_ms INTEGER NOT NULL) STRICT",
    )?;
    let applied = {
        let mut stmt = tx.prepare("SELECT version FROM schema_migrations")?;
        let rows = stmt.query_map([], |r| r.get::<_, i64>(0))?;
        rows.collect::<Result<Vec<_>, _>>()?
    };
    let pending = migrations::pending(MIGRATIONS, &applied)?;
    for m in &pending {
        if m.version == 1 {
            initial_schema(&tx)?;
        }
        if m.version == 2 {
            tx.execute_batch(super::leases::SCHEMA)?;
        }
        if m.version == 3 {
            tx.execute_batch(REQUEST_LIMITS_SQL)?;
        }
        if m.version == 4 {
            tx.execute_batch("ALTER TABLE usage ADD COLUMN estimated INTEGER NOT NULL DEFAULT 0;")?;
        }
        if m.version == 5 {
            tx.execute_batch("ALTER TABLE access_keys ADD COLUMN max_concurrent_requests INTEGER;")?;
        }
        if m.version == 6 {
            tx.execute_batch(API_KEYS_AND_AUDIT_SQL)?;
        }
        if m.version == 7 {
            tx.execute_batch(super::alerts::SCHEMA)?;
        }
        if m.version == 8 {
            tx.execute_batch(NAME_SEARCH_SQL)?;
        }
        if m.version == 9 {
            tx.execute_batch(super::sessions::SCHEMA)?;
        }
        tx.execute(
            "INSERT INTO schema_migrations(version, applied_ms) VALUES (?1, ?2)",
            params![m.version, crate::ids::now_ms()],
        )?;
        tracing::info!(version = m.version, name = m.name, "applied schema migration");
    }
    if before_versions {
        tracing::info!("a database from before versioned migrations is now marked as schema version 1");
    }
    tx.commit()?;
    Ok(pending)
}

/// Migration 1: creates or upgrades the schema and seeds the default prices once.
fn initial_schema(tx: &Transaction<'_>) -> R<()> {
    tx.execute_batch(SCHEMA_SQL)?;
    for (table, column, decl) in ADDED_COLUMNS {
        let present = tx
            .prepare(&format!("SELECT 1 FROM pragma_table_info('{table}') WHERE name = ?1"))?
            .query_row(params![column], |_| Ok(()))
            .optional()?
            .is_some();
        if !present {
            tx.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {decl}"))?;
        }
    }
    tx.execute_batch(BILLING_SQL)?;
    let seeded = tx.query_row("SELECT 1 FROM meta WHERE key = 'prices_seeded'", [], |_| Ok(())).optional()?.is_some();
    if !seeded {
        let now = crate::ids::now_ms();
        for (provider, model, input, output, cached) in DEFAULT_PRICES {
            tx.execute(
                "INSERT OR IGNORE INTO prices(provider, model, input_micros, output_micros, cached_micros, updated_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![provider, model, usd_to_micros(*input), usd_to_micros(*output), cached.map(usd_to_micros), now],
            )?;
        }
        tx.execute("INSERT INTO meta(key, value) VALUES ('prices_seeded', 1)", [])?;
    }
    Ok(())
}
