//! `keygate copy`: moves a SQLite deployment onto PostgreSQL with nothing
//! lost. Every table is copied row for row, column for column (ids, digests,
//! redacted forms, sealed provider-key values and webhook secrets byte for
//! byte, sequence numbers, the version counter and the change log, management
//! keys and the audit log, alert webhooks with their marks and deliveries), in
//! one PostgreSQL transaction, from one SQLite read snapshot; row counts are
//! compared before it commits.
//!
//! The target must be empty (migrated or not, never served): the copy refuses
//! a database that holds any key, configuration, provider, usage, management
//! key, audit-log entry, alert webhook or delivery, or a master key check.
//! Provider-key values and webhook secrets stay sealed, so the PostgreSQL store
//! must be run with the same master key as the SQLite one.

use std::path::{Path, PathBuf};

use postgres::binary_copy::BinaryCopyInWriter;
use postgres::types::{ToSql, Type};
use postgres::IsolationLevel;
use rusqlite::{Connection, OpenFlags};

use super::postgres::PgTarget;
use crate::error::{StoreError, StoreResult};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Text,
    Int,
    Bool,
    Bytes,
}

use Kind::{Bool, Bytes, Int, Text};

/// Every table of the schema (but `meta`, copied by key) with every column, in
/// an order that satisfies the foreign keys. `seq` columns are copied too.
const TABLES: &[(&str, &[(&str, Kind)])] = &[
    (
        "providers",
        &[
            ("seq", Int),
            ("id", Text),
            ("name", Text),
            ("base_url", Text),
            ("format", Text),
            ("auth", Text),
            ("models_json", Text),
            ("built_in", Bool),
            ("created_ms", Int),
            ("updated_ms", Int),
        ],
    ),
    (
        "configs",
        &[
            ("id", Text),
            ("name", Text),
            ("description", Text),
            ("metadata", Text),
            ("access_json", Text),
            ("router_json", Text),
            ("created_ms", Int),
            ("updated_ms", Int),
            ("rate_limits_json", Text),
            ("budget_json", Text),
            ("request_limits_json", Text),
        ],
    ),
    (
        "access_keys",
        &[
            ("id", Text),
            ("name", Text),
            ("description", Text),
            ("metadata", Text),
            ("config_id", Text),
            ("expires_at", Int),
            ("disabled", Bool),
            ("digest", Text),
            ("redacted", Text),
            ("prev_digest", Text),
            ("prev_until", Int),
            ("created_ms", Int),
            ("updated_ms", Int),
            ("budget_json", Text),
            ("last_used_ms", Int),
            ("max_concurrent_requests", Int),
        ],
    ),
    (
        "provider_keys",
        &[
            ("id", Text),
            ("provider_id", Text),
            ("name", Text),
            ("description", Text),
            ("metadata", Text),
            ("managed", Bool),
            ("secret", Bytes),
            ("redacted", Text),
            ("created_ms", Int),
            ("updated_ms", Int),
            ("last_used_ms", Int),
        ],
    ),
    ("change_log", &[("seq", Int), ("version", Int), ("digest", Text)]),
    (
        "budget_state",
        &[
            ("scope", Text),
            ("win", Text),
            ("window_start", Int),
            ("spent_tokens", Int),
            ("spent_micros", Int),
            ("reserved_tokens", Int),
            ("reserved_micros", Int),
        ],
    ),
    (
        "reservations",
        &[
            ("id", Text),
            ("request_id", Text),
            ("access_key_id", Text),
            ("tokens", Int),
            ("micros", Int),
            ("budgets_json", Text),
            ("created_ms", Int),
            ("expires_ms", Int),
            ("released", Bool),
            ("settled_ms", Int),
        ],
    ),
    (
        "usage",
        &[
            ("seq", Int),
            ("id", Text),
            ("request_id", Text),
            ("attempt", Int),
            ("access_key_id", Text),
            ("config_id", Text),
            ("provider", Text),
            ("model", Text),
            ("provider_key_id", Text),
            ("final", Bool),
            ("status", Int),
            ("streaming", Bool),
            ("input_tokens", Int),
            ("output_tokens", Int),
            ("cached_tokens", Int),
            ("reasoning_tokens", Int),
            ("cost_micros", Int),
            ("started_ms", Int),
            ("ended_ms", Int),
            ("reservation_id", Text),
            ("charged", Bool),
            ("estimated", Bool),
        ],
    ),
    (
        "prices",
        &[
            ("provider", Text),
            ("model", Text),
            ("input_micros", Int),
            ("output_micros", Int),
            ("cached_micros", Int),
            ("updated_ms", Int),
        ],
    ),
    (
        "alert_webhooks",
        &[
            ("id", Text),
            ("url", Text),
            ("secret", Bytes),
            ("config_id", Text),
            ("thresholds_json", Text),
            ("events_json", Text),
            ("expiry_warning_days", Int),
            ("enabled", Bool),
            ("created_ms", Int),
            ("updated_ms", Int),
        ],
    ),
    (
        "alert_fired",
        &[
            ("webhook_id", Text),
            ("subject", Text),
            ("unit", Text),
            ("period", Text),
            ("threshold", Int),
            ("period_end_ms", Int),
            ("created_ms", Int),
        ],
    ),
    (
        "alert_deliveries",
        &[
            ("id", Text),
            ("webhook_id", Text),
            ("event", Text),
            ("payload", Text),
            ("status", Text),
            ("attempts", Int),
            ("next_attempt_ms", Int),
            ("lease_until_ms", Int),
            ("lease_token", Text),
            ("last_status", Int),
            ("last_error", Text),
            ("created_ms", Int),
            ("delivered_ms", Int),
        ],
    ),
    (
        "alert_attempts",
        &[
            ("delivery_id", Text),
            ("attempt", Int),
            ("started_ms", Int),
            ("duration_ms", Int),
            ("status", Int),
            ("error", Text),
        ],
    ),
    (
        "api_keys",
        &[
            ("id", Text),
            ("name", Text),
            ("role", Text),
            ("digest", Text),
            ("token_prefix", Text),
            ("created_ms", Int),
            ("updated_ms", Int),
            ("last_used_ms", Int),
        ],
    ),
    (
        "audit_log",
        &[
            ("id", Text),
            ("at_ms", Int),
            ("actor", Text),
            ("via", Text),
            ("action", Text),
            ("resource_type", Text),
            ("resource_id", Text),
            ("changes_json", Text),
        ],
    ),
];

/// Tables whose `seq` is an identity column: its sequence continues after the copy.
const IDENTITY_TABLES: &[&str] = &["providers", "usage"];

/// Tables of the source that hold nothing the store needs.
/// Not copied: migration bookkeeping, the rate-limit leases of windows
/// that end within minutes (the new database starts its windows afresh), and
/// the web console's sessions (the copied store starts with everyone signed
/// out: a session lasts 12 hours at most anyway).
const NOT_COPIED: &[&str] = &["schema_migrations", "sqlite_sequence", "rate_leases", "console_sessions"];

/// One cell on its way.
#[derive(Debug)]
enum Cell {
    Text(Option<String>),
    Int(Option<i64>),
    Bool(Option<bool>),
    Bytes(Option<Vec<u8>>),
}

impl Cell {
    fn read(row: &rusqlite::Row<'_>, i: usize, kind: Kind) -> rusqlite::Result<Cell> {
        Ok(match kind {
            Text => Cell::Text(row.get(i)?),
            Int => Cell::Int(row.get(i)?),
            Bool => Cell::Bool(row.get(i)?),
            Bytes => Cell::Bytes(row.get(i)?),
        })
    }

    fn param(&self) -> &(dyn ToSql + Sync) {
        match self {
            Cell::Text(v) => v,
            Cell::Int(v) => v,
            Cell::Bool(v) => v,
            Cell::Bytes(v) => v,
        }
    }
}

fn pg_type(kind: Kind) -> Type {
    match kind {
        Text => Type::TEXT,
        Int => Type::INT8,
        Bool => Type::BOOL,
        Bytes => Type::BYTEA,
    }
}

/// What was copied: rows per table, and the store version.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Copied {
    pub tables: Vec<(String, u64)>,
    pub version: i64,
}

#[derive(Debug, thiserror::Error)]
enum CopyError {
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("postgres: {}", super::postgres::error::full(.0))]
    Postgres(#[from] postgres::Error),
    #[error("{0}")]
    Store(#[from] StoreError),
}

impl From<CopyError> for StoreError {
    fn from(e: CopyError) -> Self {
        match e {
            CopyError::Store(e) => e,
            other => StoreError::Internal(other.to_string()),
        }
    }
}

fn refuse(msg: impl Into<String>) -> CopyError {
    CopyError::Store(StoreError::Conflict(msg.into()))
}

/// The SQLite database of `from`: a data directory (its `keygate.db`), a
/// database file, or a `sqlite://` URL of either.
pub fn sqlite_source(from: &str) -> PathBuf {
    let p = Path::new(from.strip_prefix("sqlite://").unwrap_or(from));
    if p.is_dir() {
        p.join("keygate.db")
    } else {
        p.to_path_buf()
    }
}

/// Copies the SQLite database at `from` into the empty PostgreSQL database at `to`.
pub fn sqlite_to_postgres(from: &Path, to: &PgTarget) -> StoreResult<Copied> {
    if !from.is_file() {
        return Err(StoreError::NotFound(format!("no SQLite database at {}", from.display())));
    }
    // The source gets the schema `keygate serve` would give it; the target gets
    // the PostgreSQL schema (and is checked to be empty below).
    super::sqlite::migrate(from)?;
    super::postgres::migrate(to)?;
    let run = || -> Result<Copied, CopyError> {
        let mut src = Connection::open_with_flags(from, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        src.busy_timeout(std::time::Duration::from_secs(10))?;
        let (cfg, tls) = to.parts()?;
        let mut dst = cfg.connect(tls)?;
        copy(&mut src, &mut dst)
    };
    // The blocking client must not run on a thread that drives async tasks.
    Ok(std::thread::scope(|s| s.spawn(run).join()).map_err(|_| StoreError::Internal("the copy panicked".into()))??)
}

fn copy(src: &mut Connection, dst: &mut postgres::Client) -> Result<Copied, CopyError> {
    let src = src.transaction()?;
    check_source_columns(&src)?;
    let mut tx = dst.build_transaction().isolation_level(IsolationLevel::Serializable).start()?;
    // Concurrent copies (and stores starting) wait for this one.
    tx.execute("LOCK TABLE meta, key_check, providers IN EXCLUSIVE MODE", &[])?;
    let version = tx.query_one("SELECT value FROM meta WHERE key = 'version'", &[])?.try_get::<_, i64>(0)?;
    let mut held = Vec::new();
    for table in [
        "key_check",
        "providers",
        "configs",
        "access_keys",
        "provider_keys",
        "usage",
        "reservations",
        "api_keys",
        "audit_log",
        "alert_webhooks",
        "alert_deliveries",
    ] {
        let n: i64 = tx.query_one(&format!("SELECT COUNT(*) FROM {table}"), &[])?.try_get(0)?;
        if n > 0 {
            held.push(format!("{table} ({n})"));
        }
    }
    if version != 0 || !held.is_empty() {
        return Err(refuse(format!(
            "the target database is not empty (version {version}{}{}); copy only into a new database",
            if held.is_empty() { "" } else { ", rows in " },
            held.join(", ")
        )));
    }
    // The target's own defaults give way to the source's rows.
    tx.batch_execute("DELETE FROM prices; DELETE FROM change_log; DELETE FROM budget_state;")?;

    // meta: the counters by key, and the master key check.
    {
        let mut stmt = src.prepare("SELECT key, value FROM meta")?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            let key: String = row.get(0)?;
            match row.get_ref(1)? {
                rusqlite::types::ValueRef::Integer(v) => {
                    tx.execute(
                        "INSERT INTO meta(key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                        &[&key, &v],
                    )?;
                }
                rusqlite::types::ValueRef::Blob(b) if key == "key_check" => {
                    tx.execute("INSERT INTO key_check(sealed) VALUES ($1)", &[&b])?;
                }
                _ => return Err(refuse(format!("meta `{key}` has a value the copy does not know"))),
            }
        }
    }

    let mut copied = Vec::new();
    for (table, cols) in TABLES {
        let names: Vec<&str> = cols.iter().map(|(c, _)| *c).collect();
        let types: Vec<Type> = cols.iter().map(|(_, k)| pg_type(*k)).collect();
        let sink = tx.copy_in(&format!("COPY {table} ({}) FROM STDIN BINARY", names.join(", ")))?;
        let mut writer = BinaryCopyInWriter::new(sink, &types);
        let mut stmt = src.prepare(&format!("SELECT {} FROM {table}", names.join(", ")))?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            let cells =
                cols.iter().enumerate().map(|(i, (_, k))| Cell::read(row, i, *k)).collect::<Result<Vec<_>, _>>()?;
            let params: Vec<&(dyn ToSql + Sync)> = cells.iter().map(Cell::param).collect();
            writer.write(&params)?;
        }
        let written = writer.finish()?;
        let had: i64 = src.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))?;
        let has: i64 = tx.query_one(&format!("SELECT COUNT(*) FROM {table}"), &[])?.try_get(0)?;
        if u64::try_from(had).ok() != Some(written) || had != has {
            return Err(CopyError::Store(StoreError::Internal(format!(
                "{table}: {had} rows in the source, {written} copied, {has} in the target"
            ))));
        }
        copied.push((table.to_string(), written));
    }
    for table in IDENTITY_TABLES {
        tx.execute(
            &format!(
                "SELECT setval(pg_get_serial_sequence('{table}', 'seq'), GREATEST((SELECT MAX(seq) FROM {table}), 1),
                   (SELECT MAX(seq) FROM {table}) IS NOT NULL)"
            ),
            &[],
        )?;
    }
    let version = tx.query_one("SELECT value FROM meta WHERE key = 'version'", &[])?.try_get::<_, i64>(0)?;
    tx.commit()?;
    src.finish()?;
    Ok(Copied { tables: copied, version })
}

/// Refuses a source with a table or column this copy would leave behind.
fn check_source_columns(src: &rusqlite::Transaction<'_>) -> Result<(), CopyError> {
    let tables: Vec<String> = {
        let mut stmt = src.prepare("SELECT name FROM sqlite_master WHERE type = 'table'")?;
        let rows = stmt.query_map([], |r| r.get(0))?;
        rows.collect::<Result<_, _>>()?
    };
    for table in &tables {
        if table == "meta" || NOT_COPIED.contains(&table.as_str()) {
            continue;
        }
        let Some((_, cols)) = TABLES.iter().find(|(t, _)| t == table) else {
            return Err(refuse(format!("the source has a table `{table}` the copy does not know")));
        };
        let mut stmt = src.prepare("SELECT name FROM pragma_table_info(?1)")?;
        let names = stmt.query_map([table], |r| r.get::<_, String>(0))?.collect::<Result<Vec<_>, _>>()?;
        if let Some(c) = names.iter().find(|n| !cols.iter().any(|(c, _)| c == n)) {
            return Err(refuse(format!("the source has a column `{table}.{c}` the copy does not know")));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_table_but_meta_is_listed_once() {
        let mut names: Vec<&str> = TABLES.iter().map(|(t, _)| *t).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), TABLES.len());
        assert!(IDENTITY_TABLES.iter().all(|t| names.contains(t)));
    }
}
