//! SQLite backend: WAL journal, `synchronous=FULL` (an acknowledged write is on
//! disk), one writer connection and one read connection for the gateway
//! lookups, both behind mutexes (callers use `spawn_blocking`).
//!
//! Statements only: decisions come from [`crate::policy`]. Submodules: the
//! schema, the [`Ledger`] the billing policy drives, usage reports and prices,
//! and the backend's own error type (rusqlite errors never leave it).

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

use keygate_proto::lookup::{
    Changes, LeaseRequest, LeaseResponse, Lookup, ReserveRequest, ReserveResponse, UsageRecord,
};
use rusqlite::{params, Connection, OptionalExtension, Row, Transaction, TransactionBehavior};

mod alerts;
pub(crate) mod error;
mod leases;
mod ledger;
mod management;
mod reports;
mod schema;
mod sessions;

use self::error::{DbError, R};
use self::ledger::{forget_scope, SqlLedger};
use super::lookup::{self as lookup_doc, ConfigHit, KeyHit, LookupSource};
use super::rows::{
    self, auth_str, count_cell, count_change, format_str, json_change, json_opt, limit_i64, to_json_opt, Cells,
};
use super::update::Assignments;
pub use super::Options;
use super::{
    AccessKeyChanges, AccessKeyFilter, AlertWebhookChanges, ApiKeyAuth, ApiKeyChanges, AttemptRecord, Audit,
    AuditFilter, ClaimedDelivery, ConfigChanges, ExpiredSessions, Gauges, GroupBy, NewAccessKey, NewAlertWebhook,
    NewApiKey, NewConfig, NewPrice, NewProvider, NewProviderKey, PageRequest, ProviderChanges, ProviderKeyChanges,
    SessionRow, Store, UsageFilter,
};
use crate::catalog::BUILT_INS;
use crate::crypto::Cipher;
use crate::error::{StoreError, StoreResult};
use crate::ids::{new_id, now_ms, now_secs};
use crate::model::{
    redact_value, AccessKey, AccessKeyConfiguration, AccessSpec, AlertDelivery, AlertWebhook, ApiKey, AuditEntry,
    Credits, PriceEntry, Provider, ProviderKey, RouterSpec, SummaryRow, UsageItem,
};
use crate::plan::{KeyRow, ProviderRow};
use crate::policy::alerts::NextState;
use crate::policy::budget::{config_scope, key_scope};
use crate::policy::key_status;
use crate::policy::ledger::Ledger;
use crate::policy::references::{self as refs, not_found, ConfigSpecs, Resource};
use crate::policy::{changes, credits, reservation};

const KEY_CHECK_AAD: &str = "keygate-master-key-check";

/// One batch of usage records past retention whose request has no
/// reservation left (`policy::retention`), oldest first.
const PURGE_USAGE: &str = "DELETE FROM usage WHERE seq IN (
    SELECT u.seq FROM usage u
    WHERE u.started_ms < ?1 AND NOT EXISTS (SELECT 1 FROM reservations r WHERE r.request_id = u.request_id)
    ORDER BY u.started_ms LIMIT ?2)";

/// Read connections for the gateway listener (lookups run in parallel with
/// each other and with management writes: WAL readers do not block).
const READERS: usize = 4;

pub struct SqliteStore {
    writer: Mutex<Connection>,
    readers: Vec<Mutex<Connection>>,
    next_reader: AtomicUsize,
    cipher: Cipher,
    opts: Options,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").finish_non_exhaustive()
    }
}

fn lock(m: &Mutex<Connection>) -> StoreResult<MutexGuard<'_, Connection>> {
    m.lock().map_err(|_| StoreError::Internal("database mutex poisoned".into()))
}

fn configure(conn: &Connection) -> R<()> {
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    let mode: String = conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Internal(format!("could not enable WAL (journal_mode={mode})")).into());
    }
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(())
}

/// Runs the update of row `id` of `table`; returns the rows changed.
fn execute(a: Assignments<rusqlite::types::Value>, tx: &Transaction<'_>, table: &'static str, id: &str) -> R<usize> {
    let (sql, values) = a.statement(table, id.to_string(), |n| format!("?{n}"));
    Ok(tx.prepare_cached(&sql)?.execute(rusqlite::params_from_iter(values))?)
}

/// Applies the pending schema migrations of the database file at `path`.
pub fn migrate(path: &Path) -> StoreResult<Vec<i64>> {
    let run = || -> R<Vec<i64>> {
        let mut conn = Connection::open(path)?;
        configure(&conn)?;
        Ok(schema::migrate(&mut conn)?.iter().map(|m| m.version).collect())
    };
    Ok(run()?)
}

impl SqliteStore {
    pub fn open(path: &Path, cipher: Cipher) -> StoreResult<Self> {
        Self::open_with(path, cipher, Options::default())
    }

    pub fn open_with(path: &Path, cipher: Cipher, opts: Options) -> StoreResult<Self> {
        Ok(Self::try_open(path, cipher, opts)?)
    }

    fn try_open(path: &Path, cipher: Cipher, opts: Options) -> R<Self> {
        let mut writer = Connection::open(path)?;
        configure(&writer)?;
        schema::migrate(&mut writer)?;
        {
            let tx = writer.transaction_with_behavior(TransactionBehavior::Immediate)?;
            // The master key must be the one the data was written with.
            let check: Option<Vec<u8>> =
                tx.query_row("SELECT value FROM meta WHERE key = 'key_check'", [], |r| r.get(0)).optional()?;
            match check {
                Some(sealed) => {
                    cipher.decrypt(KEY_CHECK_AAD, &sealed).map_err(|_| {
                        StoreError::Internal(
                            "the master key does not match the one this database was written with".into(),
                        )
                    })?;
                }
                None => {
                    let sealed = cipher.encrypt(KEY_CHECK_AAD, b"ok")?;
                    tx.execute("INSERT INTO meta(key, value) VALUES ('key_check', ?1)", params![sealed])?;
                }
            }
            let now = now_ms();
            let mut added = 0;
            for b in BUILT_INS {
                let models = serde_json::to_string(b.models)?;
                added += tx.execute(
                    "INSERT OR IGNORE INTO providers(id, name, base_url, format, auth, models_json, built_in, created_ms, updated_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, 1, ?7, ?7)",
                    params![b.id, b.name, b.base_url, format_str(b.format), auth_str(b.auth), models, now],
                )?;
            }
            if added > 0 && current_version(&tx)? > 0 {
                bump(&tx, &[None], opts.change_log_limit)?;
            }
            tx.commit()?;
        }
        let mut readers = Vec::with_capacity(READERS);
        for _ in 0..READERS {
            let reader = Connection::open(path)?;
            configure(&reader)?;
            reader.pragma_update(None, "query_only", "ON")?;
            readers.push(Mutex::new(reader));
        }
        Ok(SqliteStore { writer: Mutex::new(writer), readers, next_reader: AtomicUsize::new(0), cipher, opts })
    }

    /// Runs `f` in a write transaction (committed when `f` succeeds).
    fn write<T>(&self, f: impl FnOnce(&Transaction<'_>) -> R<T>) -> StoreResult<T> {
        let run = || -> R<T> {
            let mut conn = lock(&self.writer)?;
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let out = f(&tx)?;
            tx.commit()?;
            Ok(out)
        };
        Ok(run()?)
    }

    fn read<T>(&self, f: impl FnOnce(&Transaction<'_>) -> R<T>) -> StoreResult<T> {
        Ok(in_read_tx(lock(&self.writer)?, f)?)
    }

    fn read_gateway<T>(&self, f: impl FnOnce(&Transaction<'_>) -> R<T>) -> StoreResult<T> {
        let n = self.next_reader.fetch_add(1, Ordering::Relaxed) % self.readers.len().max(1);
        let reader = self.readers.get(n).ok_or_else(|| StoreError::Internal("no read connection".into()))?;
        Ok(in_read_tx(lock(reader)?, f)?)
    }

    fn bump(&self, tx: &Transaction<'_>, digests: &[Option<String>]) -> R<i64> {
        bump(tx, digests, self.opts.change_log_limit)
    }
}

fn in_read_tx<T>(mut conn: MutexGuard<'_, Connection>, f: impl FnOnce(&Transaction<'_>) -> R<T>) -> R<T> {
    let tx = conn.transaction()?;
    f(&tx)
}

fn current_version(tx: &Transaction<'_>) -> R<i64> {
    Ok(tx.prepare_cached("SELECT value FROM meta WHERE key = 'version'")?.query_row([], |r| r.get(0))?)
}

/// Bumps the version and logs the digests whose answers change (`None` = all).
fn bump(tx: &Transaction<'_>, digests: &[Option<String>], limit: i64) -> R<i64> {
    let version: i64 = tx
        .prepare_cached("UPDATE meta SET value = value + 1 WHERE key = 'version' RETURNING value")?
        .query_row([], |r| r.get(0))?;
    {
        let mut ins = tx.prepare_cached("INSERT INTO change_log(version, digest) VALUES (?1, ?2)")?;
        for d in digests {
            ins.execute(params![version, d])?;
        }
    }
    let (min, max): (Option<i64>, Option<i64>) =
        tx.query_row("SELECT MIN(seq), MAX(seq) FROM change_log", [], |r| Ok((r.get(0)?, r.get(1)?)))?;
    if let Some(cut) = changes::trim_through(min, max, limit) {
        let trimmed: Option<i64> =
            tx.query_row("SELECT MAX(version) FROM change_log WHERE seq <= ?1", params![cut], |r| r.get(0))?;
        tx.execute("DELETE FROM change_log WHERE seq <= ?1", params![cut])?;
        if let Some(t) = trimmed {
            tx.execute("UPDATE meta SET value = MAX(value, ?1) WHERE key = 'trimmed_through'", params![t])?;
        }
    }
    Ok(version)
}

// ------------------------------------------------------------ rows

impl Cells for Row<'_> {
    type Error = DbError;
    fn text(&self, i: usize) -> R<String> {
        Ok(self.get(i)?)
    }
    fn opt_text(&self, i: usize) -> R<Option<String>> {
        Ok(self.get(i)?)
    }
    fn int(&self, i: usize) -> R<i64> {
        Ok(self.get(i)?)
    }
    fn opt_int(&self, i: usize) -> R<Option<i64>> {
        Ok(self.get(i)?)
    }
    fn flag(&self, i: usize) -> R<bool> {
        Ok(self.get(i)?)
    }
}

/// The rows of a cached statement, each mapped by `map`.
fn all<T>(tx: &Transaction<'_>, sql: &str, params: impl rusqlite::Params, map: impl Fn(&Row<'_>) -> R<T>) -> R<Vec<T>> {
    let mut stmt = tx.prepare_cached(sql)?;
    let mut rows = stmt.query(params)?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        out.push(map(r)?);
    }
    Ok(out)
}

/// The first row of a cached statement, if there is one, mapped by `map`.
fn first<T>(
    tx: &Transaction<'_>,
    sql: &str,
    params: impl rusqlite::Params,
    map: impl Fn(&Row<'_>) -> R<T>,
) -> R<Option<T>> {
    let mut stmt = tx.prepare_cached(sql)?;
    let mut rows = stmt.query(params)?;
    rows.next()?.map(map).transpose()
}

fn get_access_key(tx: &Transaction<'_>, id: &str) -> R<AccessKey> {
    let sql = format!("SELECT {} WHERE a.id = ?1", rows::ACCESS_KEY_COLS);
    let key =
        first(tx, &sql, params![id], |r| rows::access_key(r))?.ok_or_else(|| not_found(Resource::AccessKey, id))?;
    rows::with_key_usage(&mut SqlLedger(tx), key, now_ms())
}

fn get_provider_key(tx: &Transaction<'_>, id: &str) -> R<ProviderKey> {
    let sql = format!("SELECT {} WHERE id = ?1", rows::PROVIDER_KEY_COLS);
    Ok(first(tx, &sql, params![id], |r| rows::provider_key(r))?.ok_or_else(|| not_found(Resource::ProviderKey, id))?)
}

fn get_config(tx: &Transaction<'_>, id: &str) -> R<AccessKeyConfiguration> {
    let sql = format!("SELECT {} WHERE id = ?1", rows::CONFIG_COLS);
    let c = first(tx, &sql, params![id], |r| rows::config(r))?.ok_or_else(|| not_found(Resource::Config, id))?;
    rows::with_config_usage(&mut SqlLedger(tx), c, now_ms())
}

fn get_provider(tx: &Transaction<'_>, id: &str) -> R<Provider> {
    let sql = format!("SELECT {} WHERE id = ?1", rows::PROVIDER_COLS);
    Ok(first(tx, &sql, params![id], |r| rows::provider(r))?.ok_or_else(|| not_found(Resource::Provider, id))?)
}

fn exists(tx: &Transaction<'_>, sql: &str, id: &str) -> R<bool> {
    Ok(tx.prepare_cached(sql)?.query_row(params![id], |_| Ok(())).optional()?.is_some())
}

fn provider_exists(tx: &Transaction<'_>, id: &str) -> R<bool> {
    exists(tx, "SELECT 1 FROM providers WHERE id = ?1", id)
}

fn key_provider(tx: &Transaction<'_>, id: &str) -> R<Option<String>> {
    Ok(tx
        .prepare_cached("SELECT provider_id FROM provider_keys WHERE id = ?1")?
        .query_row(params![id], |r| r.get(0))
        .optional()?)
}

fn check_refs(tx: &Transaction<'_>, access: Option<&AccessSpec>, router: Option<&RouterSpec>) -> R<()> {
    Ok(refs::check_config_refs(access, router, |p| Ok(provider_exists(tx, p)?), |k| Ok(key_provider(tx, k)?))?)
}

/// Current and grace digests of an access key.
fn digests_of_key(tx: &Transaction<'_>, id: &str) -> R<Vec<Option<String>>> {
    let (d, p): (String, Option<String>) = tx
        .prepare_cached("SELECT digest, prev_digest FROM access_keys WHERE id = ?1")?
        .query_row(params![id], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?
        .ok_or_else(|| not_found(Resource::AccessKey, id))?;
    Ok([Some(d), p].into_iter().flatten().map(Some).collect())
}

/// Digests of every access key using a configuration.
fn digests_of_config(tx: &Transaction<'_>, config_id: &str) -> R<Vec<Option<String>>> {
    let mut stmt = tx.prepare_cached("SELECT digest, prev_digest FROM access_keys WHERE config_id = ?1")?;
    let rows = stmt.query_map(params![config_id], |r| Ok((r.get::<_, String>(0)?, r.get::<_, Option<String>>(1)?)))?;
    let mut out = Vec::new();
    for row in rows {
        let (d, p) = row?;
        out.push(Some(d));
        if let Some(p) = p {
            out.push(Some(p));
        }
    }
    Ok(out)
}

/// What every configuration refers to (in storage order).
fn config_specs(tx: &Transaction<'_>) -> R<Vec<ConfigSpecs>> {
    let mut stmt = tx.prepare_cached("SELECT id, access_json, router_json FROM configs")?;
    let rows = stmt
        .query_map([], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, Option<String>>(1)?, r.get::<_, Option<String>>(2)?))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    rows.into_iter().map(|(id, a, r)| Ok(ConfigSpecs { id, access: json_opt(a)?, router: json_opt(r)? })).collect()
}

fn name_conflict(tx: &Transaction<'_>, name: &str, except: Option<&str>) -> R<()> {
    let holder: Option<String> = tx
        .prepare_cached("SELECT id FROM configs WHERE name = ?1")?
        .query_row(params![name], |r| r.get(0))
        .optional()?;
    Ok(refs::require_free_config_name(name, holder.as_deref(), except)?)
}

fn check_config_id(tx: &Transaction<'_>, id: &str) -> R<()> {
    Ok(refs::require_config(id, exists(tx, "SELECT 1 FROM configs WHERE id = ?1", id)?)?)
}

/// The rows of a lookup, read in one transaction.
struct SqlLookup<'a, 'c>(&'a Transaction<'c>);

impl LookupSource for SqlLookup<'_, '_> {
    type Error = DbError;

    fn version(&mut self) -> R<i64> {
        current_version(self.0)
    }

    fn key(&mut self, digest: &str, grace: bool) -> R<Option<KeyHit>> {
        let column = if grace { "prev_digest" } else { "digest" };
        let sql = format!("SELECT {} WHERE {column} = ?1", lookup_doc::KEY_HIT_COLS);
        first(self.0, &sql, params![digest], |r| lookup_doc::key_hit(r))
    }

    fn config(&mut self, id: &str) -> R<ConfigHit> {
        let sql = format!("SELECT {} WHERE id = ?1", lookup_doc::CONFIG_HIT_COLS);
        Ok(first(self.0, &sql, params![id], |r| lookup_doc::config_hit(r))?.unwrap_or_default())
    }

    fn credits_enabled(&mut self) -> R<bool> {
        Ok(SqlLedger(self.0).credit_state()?.enabled)
    }

    fn providers(&mut self) -> R<Vec<ProviderRow>> {
        all(self.0, lookup_doc::PROVIDER_ROWS_SQL, [], |r| lookup_doc::provider_row(r))
    }

    fn provider_keys(&mut self) -> R<Vec<KeyRow>> {
        all(self.0, lookup_doc::KEY_ROWS_SQL, [], |r| lookup_doc::key_row(r))
    }

    fn secret(&mut self, key_id: &str) -> R<Option<Vec<u8>>> {
        Ok(self
            .0
            .prepare_cached("SELECT secret FROM provider_keys WHERE id = ?1")?
            .query_row(params![key_id], |r| r.get(0))
            .optional()?)
    }
}

/// The statement and arguments of a page of access keys.
fn access_key_list_query(page: &PageRequest, filter: &AccessKeyFilter) -> (String, Vec<rusqlite::types::Value>) {
    let mut sql = format!("SELECT {} WHERE (?1 IS NULL OR a.id < ?1)", rows::ACCESS_KEY_COLS);
    let mut args: Vec<rusqlite::types::Value> = vec![page.before_id.clone().into(), limit_i64(page).into()];
    // `lower(a.name)` is the expression of the index access_keys_name_search.
    if let Some((lo, hi)) = filter.name_range() {
        sql.push_str(" AND lower(a.name) >= ?3");
        args.push(lo.into());
        if let Some(hi) = hi {
            sql.push_str(" AND lower(a.name) < ?4");
            args.push(hi.into());
        }
    }
    sql.push_str(" ORDER BY a.id DESC LIMIT ?2");
    (sql, args)
}

impl Store for SqliteStore {
    fn ping(&self) -> StoreResult<()> {
        self.read_gateway(|tx| current_version(tx).map(|_| ()))
    }

    // -------------------------------------------------------- access keys

    fn create_access_key(&self, new: &NewAccessKey, audit: &Audit) -> StoreResult<AccessKey> {
        let id = new_id("ak_")?;
        self.write(|tx| {
            if let Some(c) = &new.config_id {
                check_config_id(tx, c)?;
            }
            let now = now_ms();
            tx.execute(
                "INSERT INTO access_keys(id, name, description, metadata, config_id, expires_at, disabled, digest, redacted, created_ms, updated_ms, budget_json, max_concurrent_requests)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?10, ?11, ?12)",
                params![id, new.name, new.description, new.metadata, new.config_id, new.expires_at, new.disabled, new.digest, new.redacted, now, to_json_opt(new.budget.as_ref())?, count_cell(new.max_concurrent_requests)?],
            )?;
            self.bump(tx, &[Some(new.digest.clone())])?;
            management::record(tx, audit, Some(&id))?;
            get_access_key(tx, &id)
        })
    }

    fn list_access_keys(&self, page: &PageRequest, filter: &AccessKeyFilter) -> StoreResult<Vec<AccessKey>> {
        let (sql, args) = access_key_list_query(page, filter);
        self.read(|tx| {
            let keys = all(tx, &sql, rusqlite::params_from_iter(args.iter()), |r| rows::access_key(r))?;
            let now = now_ms();
            keys.into_iter().map(|k| rows::with_key_usage(&mut SqlLedger(tx), k, now)).collect()
        })
    }

    fn get_access_key(&self, id: &str) -> StoreResult<AccessKey> {
        self.read(|tx| get_access_key(tx, id))
    }

    fn update_access_key(&self, id: &str, ch: &AccessKeyChanges, audit: &Audit) -> StoreResult<AccessKey> {
        self.write(|tx| {
            let digests = digests_of_key(tx, id)?;
            if let Some(Some(c)) = &ch.config_id {
                check_config_id(tx, c)?;
            }
            let a = Assignments::default()
                .set_some("name", ch.name.clone())
                .set_some("description", ch.description.clone())
                .set_some("metadata", ch.metadata.clone())
                .set_some("config_id", ch.config_id.clone())
                .set_some("expires_at", ch.expires_at)
                .set_some("disabled", ch.disabled)
                .set_some("budget_json", json_change(&ch.budget)?)
                .set_some("max_concurrent_requests", count_change(ch.max_concurrent_requests)?)
                .set("updated_ms", now_ms());
            execute(a, tx, "access_keys", id)?;
            self.bump(tx, &digests)?;
            management::record(tx, audit, None)?;
            get_access_key(tx, id)
        })
    }

    fn delete_access_key(&self, id: &str, audit: &Audit) -> StoreResult<()> {
        self.write(|tx| {
            let digests = digests_of_key(tx, id)?;
            tx.execute("DELETE FROM access_keys WHERE id = ?1", params![id])?;
            forget_scope(tx, &key_scope(id))?;
            self.bump(tx, &digests)?;
            management::record(tx, audit, None)
        })
    }

    fn rotate_access_key(
        &self,
        id: &str,
        digest: &str,
        redacted: &str,
        grace_seconds: i64,
        audit: &Audit,
    ) -> StoreResult<AccessKey> {
        self.write(|tx| {
            let mut digests = digests_of_key(tx, id)?;
            let now = now_ms();
            let until = key_status::grace_end(now_secs(), grace_seconds);
            tx.execute(
                "UPDATE access_keys SET prev_digest = digest, prev_until = ?2, digest = ?3, redacted = ?4, updated_ms = ?5
                 WHERE id = ?1",
                params![id, until, digest, redacted, now],
            )?;
            digests.push(Some(digest.to_string()));
            self.bump(tx, &digests)?;
            management::record(tx, audit, None)?;
            get_access_key(tx, id)
        })
    }

    // -------------------------------------------------------- provider keys

    fn create_provider_key(&self, new: &NewProviderKey, audit: &Audit) -> StoreResult<ProviderKey> {
        let id = new_id("pk_")?;
        let sealed = self.cipher.encrypt(&id, new.value.as_bytes())?;
        let redacted = redact_value(&new.value);
        self.write(|tx| {
            refs::require_provider(&new.provider_id, provider_exists(tx, &new.provider_id)?)?;
            let now = now_ms();
            tx.execute(
                "INSERT INTO provider_keys(id, provider_id, name, description, metadata, managed, secret, redacted, created_ms, updated_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?9)",
                params![id, new.provider_id, new.name, new.description, new.metadata, new.managed, sealed, redacted, now],
            )?;
            self.bump(tx, &[None])?;
            management::record(tx, audit, Some(&id))?;
            get_provider_key(tx, &id)
        })
    }

    fn list_provider_keys(&self, page: &PageRequest) -> StoreResult<Vec<ProviderKey>> {
        self.read(|tx| {
            let sql =
                format!("SELECT {} WHERE (?1 IS NULL OR id < ?1) ORDER BY id DESC LIMIT ?2", rows::PROVIDER_KEY_COLS);
            all(tx, &sql, params![page.before_id, limit_i64(page)], |r| rows::provider_key(r))
        })
    }

    fn get_provider_key(&self, id: &str) -> StoreResult<ProviderKey> {
        self.read(|tx| get_provider_key(tx, id))
    }

    fn update_provider_key(&self, id: &str, ch: &ProviderKeyChanges, audit: &Audit) -> StoreResult<ProviderKey> {
        self.write(|tx| {
            get_provider_key(tx, id)?;
            let a = Assignments::default()
                .set_some("name", ch.name.clone())
                .set_some("description", ch.description.clone())
                .set_some("metadata", ch.metadata.clone())
                .set_some("managed", ch.managed)
                .set("updated_ms", now_ms());
            execute(a, tx, "provider_keys", id)?;
            self.bump(tx, &[None])?;
            management::record(tx, audit, None)?;
            get_provider_key(tx, id)
        })
    }

    fn delete_provider_key(&self, id: &str, audit: &Audit) -> StoreResult<()> {
        self.write(|tx| {
            get_provider_key(tx, id)?;
            refs::may_delete_provider_key(id, &config_specs(tx)?)?;
            tx.execute("DELETE FROM provider_keys WHERE id = ?1", params![id])?;
            self.bump(tx, &[None])?;
            management::record(tx, audit, None)
        })
    }

    fn rotate_provider_key(&self, id: &str, value: &str, audit: &Audit) -> StoreResult<ProviderKey> {
        let sealed = self.cipher.encrypt(id, value.as_bytes())?;
        let redacted = redact_value(value);
        self.write(|tx| {
            get_provider_key(tx, id)?;
            tx.execute(
                "UPDATE provider_keys SET secret = ?2, redacted = ?3, updated_ms = ?4 WHERE id = ?1",
                params![id, sealed, redacted, now_ms()],
            )?;
            self.bump(tx, &[None])?;
            management::record(tx, audit, None)?;
            get_provider_key(tx, id)
        })
    }

    // -------------------------------------------------------- configurations

    fn create_config(&self, new: &NewConfig, audit: &Audit) -> StoreResult<AccessKeyConfiguration> {
        let id = new_id("akc_")?;
        self.write(|tx| {
            name_conflict(tx, &new.name, None)?;
            check_refs(tx, new.access.as_ref(), new.router.as_ref())?;
            let now = now_ms();
            tx.execute(
                "INSERT INTO configs(id, name, description, metadata, access_json, router_json, created_ms, updated_ms,
                   rate_limits_json, budget_json, request_limits_json)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7, ?8, ?9, ?10)",
                params![
                    id,
                    new.name,
                    new.description,
                    new.metadata,
                    to_json_opt(new.access.as_ref())?,
                    to_json_opt(new.router.as_ref())?,
                    now,
                    to_json_opt(new.rate_limits.as_ref())?,
                    to_json_opt(new.budget.as_ref())?,
                    to_json_opt(new.request_limits.as_ref())?
                ],
            )?;
            self.bump(tx, &[])?;
            management::record(tx, audit, Some(&id))?;
            get_config(tx, &id)
        })
    }

    fn list_configs(&self, page: &PageRequest) -> StoreResult<Vec<AccessKeyConfiguration>> {
        self.read(|tx| {
            let sql = format!("SELECT {} WHERE (?1 IS NULL OR id < ?1) ORDER BY id DESC LIMIT ?2", rows::CONFIG_COLS);
            let configs = all(tx, &sql, params![page.before_id, limit_i64(page)], |r| rows::config(r))?;
            let now = now_ms();
            configs.into_iter().map(|c| rows::with_config_usage(&mut SqlLedger(tx), c, now)).collect()
        })
    }

    fn get_config(&self, id: &str) -> StoreResult<AccessKeyConfiguration> {
        self.read(|tx| get_config(tx, id))
    }

    fn update_config(&self, id: &str, ch: &ConfigChanges, audit: &Audit) -> StoreResult<AccessKeyConfiguration> {
        self.write(|tx| {
            let current = get_config(tx, id)?;
            if let Some(name) = &ch.name {
                name_conflict(tx, name, Some(id))?;
            }
            let access = ch.access.as_ref().unwrap_or(&current.access);
            let router = ch.router.as_ref().unwrap_or(&current.router);
            check_refs(tx, access.as_ref(), router.as_ref())?;
            let a = Assignments::default()
                .set_some("name", ch.name.clone())
                .set_some("description", ch.description.clone())
                .set_some("metadata", ch.metadata.clone())
                .set_some("access_json", json_change(&ch.access)?)
                .set_some("router_json", json_change(&ch.router)?)
                .set_some("rate_limits_json", json_change(&ch.rate_limits)?)
                .set_some("request_limits_json", json_change(&ch.request_limits)?)
                .set_some("budget_json", json_change(&ch.budget)?)
                .set("updated_ms", now_ms());
            execute(a, tx, "configs", id)?;
            let digests = digests_of_config(tx, id)?;
            self.bump(tx, &digests)?;
            management::record(tx, audit, None)?;
            get_config(tx, id)
        })
    }

    fn delete_config(&self, id: &str, audit: &Audit) -> StoreResult<()> {
        self.write(|tx| {
            get_config(tx, id)?;
            let users: i64 =
                tx.query_row("SELECT COUNT(*) FROM access_keys WHERE config_id = ?1", params![id], |r| r.get(0))?;
            refs::may_delete_config(id, users)?;
            crate::policy::alerts::may_delete_config(id, alerts::webhooks_of_config(tx, id)?)?;
            tx.execute("DELETE FROM configs WHERE id = ?1", params![id])?;
            forget_scope(tx, &config_scope(id))?;
            self.bump(tx, &[])?;
            management::record(tx, audit, None)
        })
    }

    // -------------------------------------------------------- providers

    fn create_provider(&self, new: &NewProvider, audit: &Audit) -> StoreResult<Provider> {
        self.write(|tx| {
            refs::require_new_provider(&new.id, provider_exists(tx, &new.id)?)?;
            let now = now_ms();
            tx.execute(
                "INSERT INTO providers(id, name, base_url, format, auth, models_json, built_in, created_ms, updated_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, 0, ?7, ?7)",
                params![
                    new.id,
                    new.name,
                    new.base_url,
                    format_str(new.format),
                    auth_str(new.auth),
                    serde_json::to_string(&new.models)?,
                    now
                ],
            )?;
            self.bump(tx, &[None])?;
            management::record(tx, audit, Some(&new.id))?;
            get_provider(tx, &new.id)
        })
    }

    fn list_providers(&self) -> StoreResult<Vec<Provider>> {
        self.read(|tx| all(tx, &format!("SELECT {} ORDER BY seq", rows::PROVIDER_COLS), [], |r| rows::provider(r)))
    }

    fn get_provider(&self, id: &str) -> StoreResult<Provider> {
        self.read(|tx| get_provider(tx, id))
    }

    fn update_provider(&self, id: &str, ch: &ProviderChanges, audit: &Audit) -> StoreResult<Provider> {
        self.write(|tx| {
            let current = get_provider(tx, id)?;
            refs::may_change_provider(&current, ch.format)?;
            let a = Assignments::default()
                .set_some("name", ch.name.clone())
                .set_some("base_url", ch.base_url.clone())
                .set_some("format", ch.format.map(|f| format_str(f).to_string()))
                .set_some("auth", ch.auth.map(|a| auth_str(a).to_string()))
                .set_some("models_json", ch.models.as_ref().map(serde_json::to_string).transpose()?)
                .set("updated_ms", now_ms());
            execute(a, tx, "providers", id)?;
            self.bump(tx, &[None])?;
            management::record(tx, audit, None)?;
            get_provider(tx, id)
        })
    }

    fn delete_provider(&self, id: &str, audit: &Audit) -> StoreResult<()> {
        self.write(|tx| {
            let current = get_provider(tx, id)?;
            let keys: i64 =
                tx.query_row("SELECT COUNT(*) FROM provider_keys WHERE provider_id = ?1", params![id], |r| r.get(0))?;
            refs::may_delete_provider(&current, keys, &config_specs(tx)?)?;
            tx.execute("DELETE FROM providers WHERE id = ?1", params![id])?;
            self.bump(tx, &[None])?;
            management::record(tx, audit, None)
        })
    }

    // -------------------------------------------------------- gateway

    fn lookup(&self, digest: &str) -> StoreResult<Lookup> {
        self.read_gateway(|tx| lookup_doc::lookup(&mut SqlLookup(tx), digest, &self.cipher, now_secs()))
    }

    fn changes(&self, since: u64) -> StoreResult<Changes> {
        self.read_gateway(|tx| {
            let version = current_version(tx)?;
            let trimmed: i64 = tx
                .prepare_cached("SELECT value FROM meta WHERE key = 'trimmed_through'")?
                .query_row([], |r| r.get(0))?;
            changes::answer(version, since, trimmed, |since| {
                all(tx, "SELECT version, digest FROM change_log WHERE version > ?1 ORDER BY seq", params![since], |r| {
                    Ok((r.int(0)?, r.opt_text(1)?))
                })
            })
        })
    }

    // -------------------------------------------------------- budgets and usage

    fn reserve(&self, req: &ReserveRequest) -> StoreResult<ReserveResponse> {
        self.write(|tx| reservation::reserve(&mut SqlLedger(tx), req, now_ms()))
    }

    fn lease(&self, req: &LeaseRequest) -> StoreResult<LeaseResponse> {
        // The clock is read inside the transaction: after any wait for it.
        self.write(|tx| leases::lease(tx, req, u64::try_from(now_ms()).unwrap_or(0)))
    }

    fn ingest_usage(&self, records: &[UsageRecord]) -> StoreResult<usize> {
        self.write(|tx| reservation::ingest(&mut SqlLedger(tx), records, now_ms()))
    }

    fn sweep_reservations(&self) -> StoreResult<usize> {
        self.write(|tx| reservation::sweep(&mut SqlLedger(tx), now_ms()))
    }

    fn purge_usage(&self, started_before_ms: i64, limit: usize) -> StoreResult<usize> {
        self.write(|tx| {
            Ok(tx
                .prepare_cached(PURGE_USAGE)?
                .execute(params![started_before_ms, i64::try_from(limit).unwrap_or(i64::MAX)])?)
        })
    }

    fn list_usage(&self, filter: &UsageFilter, page: &PageRequest) -> StoreResult<Vec<UsageItem>> {
        self.read_gateway(|tx| reports::list_usage(tx, filter, page))
    }

    fn usage_summary(&self, filter: &UsageFilter, group_by: GroupBy) -> StoreResult<Vec<SummaryRow>> {
        self.read_gateway(|tx| reports::usage_summary(tx, filter, group_by))
    }

    fn get_credits(&self) -> StoreResult<Credits> {
        self.read(|tx| credits::view(&mut SqlLedger(tx)))
    }

    fn add_credits(&self, micros: i64, audit: &Audit) -> StoreResult<Credits> {
        self.write(|tx| {
            if credits::add(&mut SqlLedger(tx), micros)? {
                self.bump(tx, &[None])?;
            }
            management::record(tx, audit, None)?;
            credits::view(&mut SqlLedger(tx))
        })
    }

    fn set_credits_enabled(&self, enabled: bool, audit: &Audit) -> StoreResult<Credits> {
        self.write(|tx| {
            if credits::set_enabled(&mut SqlLedger(tx), enabled)? {
                self.bump(tx, &[None])?;
            }
            management::record(tx, audit, None)?;
            credits::view(&mut SqlLedger(tx))
        })
    }

    fn list_prices(&self) -> StoreResult<Vec<PriceEntry>> {
        self.read(reports::list_prices)
    }

    fn put_price(&self, provider: &str, model: &str, price: &NewPrice, audit: &Audit) -> StoreResult<PriceEntry> {
        self.write(|tx| {
            let entry = reports::put_price(tx, provider, model, price, now_ms())?;
            management::record(tx, audit, None)?;
            Ok(entry)
        })
    }

    fn delete_price(&self, provider: &str, model: &str, audit: &Audit) -> StoreResult<()> {
        self.write(|tx| {
            reports::delete_price(tx, provider, model)?;
            management::record(tx, audit, None)
        })
    }

    fn gauges(&self) -> StoreResult<Gauges> {
        self.read_gateway(|tx| {
            let access_keys: i64 = tx.query_row("SELECT COUNT(*) FROM access_keys", [], |r| r.get(0))?;
            Ok(Gauges { access_keys, version: current_version(tx)? })
        })
    }

    // -------------------------------------------------------- alert webhooks

    fn create_alert_webhook(&self, new: &NewAlertWebhook, audit: &Audit) -> StoreResult<AlertWebhook> {
        self.write(|tx| {
            let hook = alerts::create_webhook(tx, &self.cipher, new)?;
            management::record(tx, audit, Some(&hook.id))?;
            Ok(hook)
        })
    }

    fn list_alert_webhooks(&self, page: &PageRequest) -> StoreResult<Vec<AlertWebhook>> {
        self.read(|tx| alerts::list_webhooks(tx, page))
    }

    fn get_alert_webhook(&self, id: &str) -> StoreResult<AlertWebhook> {
        self.read(|tx| alerts::get_webhook(tx, id))
    }

    fn update_alert_webhook(
        &self,
        id: &str,
        changes: &AlertWebhookChanges,
        audit: &Audit,
    ) -> StoreResult<AlertWebhook> {
        self.write(|tx| {
            let hook = alerts::update_webhook(tx, &self.cipher, id, changes)?;
            management::record(tx, audit, None)?;
            Ok(hook)
        })
    }

    fn delete_alert_webhook(&self, id: &str, audit: &Audit) -> StoreResult<()> {
        self.write(|tx| {
            alerts::delete_webhook(tx, id)?;
            management::record(tx, audit, None)
        })
    }

    fn list_alert_deliveries(&self, webhook_id: &str, page: &PageRequest) -> StoreResult<Vec<AlertDelivery>> {
        self.read(|tx| alerts::list_deliveries(tx, webhook_id, page))
    }

    fn sweep_alerts(&self) -> StoreResult<usize> {
        self.write(|tx| crate::policy::alerts::sweep_expiry(&mut SqlLedger(tx), now_ms()))
    }

    fn next_alert_due(&self) -> StoreResult<Option<i64>> {
        self.read_gateway(|tx| Ok(tx.prepare_cached(alerts::NEXT_DUE)?.query_row([], |r| r.get(0))?))
    }

    fn claim_alert_deliveries(&self, lease_ms: i64, limit: usize) -> StoreResult<Vec<ClaimedDelivery>> {
        self.write(|tx| alerts::claim(tx, &self.cipher, lease_ms, limit))
    }

    fn finish_alert_attempt(&self, d: &ClaimedDelivery, attempt: &AttemptRecord, next: NextState) -> StoreResult<bool> {
        self.write(|tx| alerts::finish(tx, d, attempt, next))
    }

    // -------------------------------------------------------- management keys, audit log

    fn create_api_key(&self, new: &NewApiKey, audit: &Audit) -> StoreResult<ApiKey> {
        let id = new_id("mk_")?;
        self.write(|tx| management::create_api_key(tx, &id, new, audit))
    }

    fn list_api_keys(&self, page: &PageRequest) -> StoreResult<Vec<ApiKey>> {
        self.read(|tx| management::list_api_keys(tx, page))
    }

    fn get_api_key(&self, id: &str) -> StoreResult<ApiKey> {
        self.read(|tx| management::get_api_key(tx, id))
    }

    fn update_api_key(&self, id: &str, changes: &ApiKeyChanges, audit: &Audit) -> StoreResult<ApiKey> {
        self.write(|tx| management::update_api_key(tx, id, changes, audit))
    }

    fn delete_api_key(&self, id: &str, audit: &Audit) -> StoreResult<()> {
        self.write(|tx| management::delete_api_key(tx, id, audit))
    }

    fn rotate_api_key(&self, id: &str, digest: &str, token_prefix: &str, audit: &Audit) -> StoreResult<ApiKey> {
        self.write(|tx| management::rotate_api_key(tx, id, digest, token_prefix, audit))
    }

    fn api_key_by_digest(&self, digest: &str) -> StoreResult<Option<ApiKeyAuth>> {
        self.read_gateway(|tx| management::api_key_by_digest(tx, digest))
    }

    fn touch_api_key(&self, id: &str, now_ms: i64) -> StoreResult<()> {
        self.write(|tx| management::touch_api_key(tx, id, now_ms))
    }

    fn record_audit(&self, entry: &Audit) -> StoreResult<()> {
        self.write(|tx| management::record(tx, entry, None))
    }

    fn list_audit(&self, filter: &AuditFilter, page: &PageRequest) -> StoreResult<Vec<AuditEntry>> {
        self.read_gateway(|tx| management::list_audit(tx, filter, page))
    }

    fn purge_audit(&self, before_ms: i64, limit: usize) -> StoreResult<usize> {
        self.write(|tx| management::purge_audit(tx, before_ms, limit))
    }

    // -------------------------------------------------------- console sessions

    fn create_console_session(&self, session: &SessionRow) -> StoreResult<()> {
        self.write(|tx| sessions::create(tx, session))
    }

    fn console_session(&self, id: &str) -> StoreResult<Option<SessionRow>> {
        self.read_gateway(|tx| sessions::get(tx, id))
    }

    fn touch_console_session(&self, id: &str, now_ms: i64, touch_before_ms: i64) -> StoreResult<()> {
        self.write(|tx| sessions::touch(tx, id, now_ms, touch_before_ms))
    }

    fn delete_console_session(&self, id: &str) -> StoreResult<bool> {
        self.write(|tx| sessions::delete(tx, id))
    }

    fn set_console_reveal(&self, id: &str, nonce: &str) -> StoreResult<bool> {
        self.write(|tx| sessions::set_reveal(tx, id, nonce))
    }

    fn take_console_reveal(&self, id: &str, nonce: &str) -> StoreResult<bool> {
        self.write(|tx| sessions::take_reveal(tx, id, nonce))
    }

    fn purge_console_sessions(&self, expired: ExpiredSessions) -> StoreResult<usize> {
        self.write(|tx| sessions::purge(tx, expired))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_search_reads_the_name_index() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keygate.db");
        drop(SqliteStore::open(&path, Cipher::new(&[1u8; 32])).unwrap());
        let conn = Connection::open(&path).unwrap();
        let page = PageRequest { limit: 50, before_id: None };
        let filter = AccessKeyFilter { name_prefix: Some("Web".into()) };
        let (sql, args) = access_key_list_query(&page, &filter);
        let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let plan: Vec<String> = stmt
            .query_map(rusqlite::params_from_iter(args.iter()), |r| r.get::<_, String>(3))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(plan.iter().any(|l| l.contains("USING INDEX access_keys_name_search")), "{plan:?}");
    }

    fn plan_of(conn: &Connection, sql: &str, args: &[rusqlite::types::Value]) -> Vec<String> {
        let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        stmt.query_map(rusqlite::params_from_iter(args.iter()), |r| r.get::<_, String>(3))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    #[test]
    fn audit_filters_read_their_indexes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keygate.db");
        drop(SqliteStore::open(&path, Cipher::new(&[1u8; 32])).unwrap());
        let conn = Connection::open(&path).unwrap();
        let first = PageRequest { limit: 50, before_id: None };
        let next = PageRequest { limit: 50, before_id: Some("al_0".into()) };
        let by_actor = AuditFilter { actor: Some("mk_1".into()), ..AuditFilter::default() };
        let by_resource = AuditFilter { resource_id: Some("ak_1".into()), ..AuditFilter::default() };
        let by_actor_and_time = AuditFilter { since_ms: Some(1), until_ms: Some(2), ..by_actor.clone() };
        for (f, index) in [
            (&by_actor, "audit_log_actor"),
            (&by_resource, "audit_log_resource"),
            (&by_actor_and_time, "audit_log_actor"),
        ] {
            for page in [&first, &next] {
                let (sql, args) = management::audit_list_query(f, page);
                let plan = plan_of(&conn, &sql, &args);
                assert!(plan.iter().any(|l| l.contains(&format!("USING INDEX {index}"))), "{f:?} {page:?}: {plan:?}");
                // The index is in id order: the page needs no sort.
                assert!(!plan.iter().any(|l| l.contains("TEMP B-TREE")), "{f:?} {page:?}: {plan:?}");
            }
        }
        // The statement holds a condition for the filters given only.
        let (sql, args) = management::audit_list_query(&AuditFilter::default(), &first);
        assert!(!sql.contains("WHERE"), "{sql}");
        assert_eq!(args.len(), 1);
        let (sql, args) = management::audit_list_query(&by_actor_and_time, &next);
        assert_eq!(args.len(), 5, "{sql}");
        assert!(!sql.contains("IS NULL"), "{sql}");
    }
}
