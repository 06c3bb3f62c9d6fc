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
    AuthStyle, Changes, Format, KeyInfo, KeyStatus, Lookup, ReserveRequest, ReserveResponse, UsageRecord, SCHEMA,
};
use rusqlite::{params, Connection, OptionalExtension, Row, Transaction, TransactionBehavior};

mod error;
mod ledger;
mod reports;
mod schema;

use self::error::{db, DbError, R};
use self::ledger::{forget_scope, SqlLedger};
use super::update::Assignments;
pub use super::Options;
use super::{
    AccessKeyChanges, ConfigChanges, Gauges, GroupBy, NewAccessKey, NewConfig, NewPrice, NewProvider, NewProviderKey,
    PageRequest, ProviderChanges, ProviderKeyChanges, Store, UsageFilter,
};
use crate::catalog::BUILT_INS;
use crate::crypto::Cipher;
use crate::error::{StoreError, StoreResult};
use crate::ids::{new_id, now_ms, now_secs, rfc3339_ms, rfc3339_secs};
use crate::model::{
    redact_value, AccessKey, AccessKeyConfiguration, AccessSpec, BudgetSpec, ConfigRef, Credits, PriceEntry, Provider,
    ProviderKey, RateLimitsSpec, RouterSpec, SummaryRow, UsageItem,
};
use crate::plan::{self, KeyRow, ProviderRow};
use crate::policy::budget::{self, config_scope, key_scope};
use crate::policy::key_status::{self, KeyFacts};
use crate::policy::ledger::Ledger;
use crate::policy::references::{self as refs, not_found, ConfigSpecs, Resource};
use crate::policy::{changes, credits, reservation};

const KEY_CHECK_AAD: &str = "keygate-master-key-check";

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

fn format_str(f: Format) -> &'static str {
    match f {
        Format::Openai => "openai",
        Format::Anthropic => "anthropic",
    }
}

fn auth_str(a: AuthStyle) -> &'static str {
    match a {
        AuthStyle::Bearer => "bearer",
        AuthStyle::XApiKey => "x-api-key",
        AuthStyle::XGoogApiKey => "x-goog-api-key",
        AuthStyle::ApiKey => "api-key",
    }
}

fn parse_enum<T: serde::de::DeserializeOwned>(s: String) -> R<T> {
    Ok(serde_json::from_value(serde_json::Value::String(s))?)
}

fn json_opt<T: serde::de::DeserializeOwned>(s: Option<String>) -> R<Option<T>> {
    s.map(|s| serde_json::from_str(&s)).transpose().map_err(DbError::from)
}

fn to_json_opt<T: serde::Serialize>(v: Option<&T>) -> R<Option<String>> {
    v.map(serde_json::to_string).transpose().map_err(DbError::from)
}

/// A PATCH of a JSON column: absent stays, `null` clears, a value is stored as JSON.
fn json_change<T: serde::Serialize>(change: &Option<Option<T>>) -> R<Option<Option<String>>> {
    change.as_ref().map(|v| to_json_opt(v.as_ref())).transpose()
}

fn limit_i64(page: &PageRequest) -> i64 {
    i64::try_from(page.limit).unwrap_or(100).saturating_add(1)
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
    if let (Some(min), Some(max)) = (min, max) {
        if max - min + 1 > limit {
            let cut = max - limit;
            let trimmed: Option<i64> =
                tx.query_row("SELECT MAX(version) FROM change_log WHERE seq <= ?1", params![cut], |r| r.get(0))?;
            tx.execute("DELETE FROM change_log WHERE seq <= ?1", params![cut])?;
            if let Some(t) = trimmed {
                tx.execute("UPDATE meta SET value = MAX(value, ?1) WHERE key = 'trimmed_through'", params![t])?;
            }
        }
    }
    Ok(version)
}

// ------------------------------------------------------------ row mapping

const ACCESS_KEY_COLS: &str = "a.id, a.name, a.description, a.metadata, a.created_ms, a.updated_ms, a.redacted,
     a.config_id, c.name, a.expires_at, a.disabled, a.budget_json, a.last_used_ms
     FROM access_keys a LEFT JOIN configs c ON c.id = a.config_id";

/// A JSON column that does not parse is a conversion failure of that column.
fn json_col<T: serde::de::DeserializeOwned>(r: &Row<'_>, idx: usize) -> rusqlite::Result<Option<T>> {
    let s: Option<String> = r.get(idx)?;
    s.map(|s| serde_json::from_str(&s))
        .transpose()
        .map_err(|e| rusqlite::Error::FromSqlConversionFailure(idx, rusqlite::types::Type::Text, Box::new(e)))
}

fn access_key_row(r: &Row<'_>) -> rusqlite::Result<AccessKey> {
    let config_id: Option<String> = r.get(7)?;
    let config_name: Option<String> = r.get(8)?;
    Ok(AccessKey {
        id: r.get(0)?,
        name: r.get(1)?,
        description: r.get(2)?,
        metadata: r.get(3)?,
        created_at: rfc3339_ms(r.get(4)?),
        updated_at: rfc3339_ms(r.get(5)?),
        last_used: r.get::<_, Option<i64>>(12)?.map(rfc3339_ms),
        key_redacted: r.get(6)?,
        access_key_configuration: config_id.map(|id| ConfigRef { id, name: config_name.unwrap_or_default() }),
        expires_at: r.get::<_, Option<i64>>(9)?.map(rfc3339_secs),
        disabled: r.get(10)?,
        budget: json_col(r, 11)?,
        budget_usage: None,
        token: None,
    })
}

/// Fills `budgetUsage` of an access key read from the database.
fn with_key_usage(tx: &Transaction<'_>, mut key: AccessKey) -> R<AccessKey> {
    if let Some(b) = &key.budget {
        key.budget_usage = Some(budget::usage(&mut SqlLedger(tx), &key_scope(&key.id), b, now_ms())?);
    }
    Ok(key)
}

const PROVIDER_KEY_COLS: &str =
    "id, provider_id, name, description, metadata, managed, redacted, created_ms, updated_ms, last_used_ms FROM provider_keys";

fn provider_key_row(r: &Row<'_>) -> rusqlite::Result<ProviderKey> {
    Ok(ProviderKey {
        id: r.get(0)?,
        provider_id: r.get(1)?,
        name: r.get(2)?,
        description: r.get(3)?,
        metadata: r.get(4)?,
        managed: r.get(5)?,
        key_redacted: r.get(6)?,
        created_at: rfc3339_ms(r.get(7)?),
        updated_at: rfc3339_ms(r.get(8)?),
        last_used: r.get::<_, Option<i64>>(9)?.map(rfc3339_ms),
    })
}

const CONFIG_COLS: &str = "id, name, description, metadata, access_json, router_json, created_ms, updated_ms,
     rate_limits_json, budget_json FROM configs";

struct ConfigRaw {
    id: String,
    name: String,
    description: String,
    metadata: String,
    access: Option<String>,
    router: Option<String>,
    created: i64,
    updated: i64,
    rate_limits: Option<String>,
    budget: Option<String>,
}

fn config_raw(r: &Row<'_>) -> rusqlite::Result<ConfigRaw> {
    Ok(ConfigRaw {
        id: r.get(0)?,
        name: r.get(1)?,
        description: r.get(2)?,
        metadata: r.get(3)?,
        access: r.get(4)?,
        router: r.get(5)?,
        created: r.get(6)?,
        updated: r.get(7)?,
        rate_limits: r.get(8)?,
        budget: r.get(9)?,
    })
}

fn config_from_raw(tx: &Transaction<'_>, raw: ConfigRaw) -> R<AccessKeyConfiguration> {
    let budget: Option<BudgetSpec> = json_opt(raw.budget)?;
    let budget_usage = match &budget {
        Some(b) => Some(budget::usage(&mut SqlLedger(tx), &config_scope(&raw.id), b, now_ms())?),
        None => None,
    };
    Ok(AccessKeyConfiguration {
        id: raw.id,
        name: raw.name,
        description: raw.description,
        metadata: raw.metadata,
        access: json_opt(raw.access)?,
        router: json_opt(raw.router)?,
        rate_limits: json_opt(raw.rate_limits)?,
        budget,
        budget_usage,
        created_at: rfc3339_ms(raw.created),
        updated_at: rfc3339_ms(raw.updated),
    })
}

const PROVIDER_COLS: &str =
    "id, name, base_url, format, auth, models_json, built_in, created_ms, updated_ms FROM providers";

type ProviderRaw = (String, String, String, String, String, String, bool, i64, i64);

fn provider_raw(r: &Row<'_>) -> rusqlite::Result<ProviderRaw> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?, r.get(7)?, r.get(8)?))
}

fn provider_from_raw(raw: ProviderRaw) -> R<Provider> {
    let (id, name, base_url, format, auth, models, built_in, created, updated) = raw;
    Ok(Provider {
        id,
        name,
        base_url,
        format: parse_enum(format)?,
        auth: parse_enum(auth)?,
        models: serde_json::from_str(&models)?,
        built_in,
        created_at: rfc3339_ms(created),
        updated_at: rfc3339_ms(updated),
    })
}

fn get_access_key(tx: &Transaction<'_>, id: &str) -> R<AccessKey> {
    let key = tx
        .prepare_cached(&format!("SELECT {ACCESS_KEY_COLS} WHERE a.id = ?1"))?
        .query_row(params![id], access_key_row)
        .optional()?
        .ok_or_else(|| not_found(Resource::AccessKey, id))?;
    with_key_usage(tx, key)
}

fn get_provider_key(tx: &Transaction<'_>, id: &str) -> R<ProviderKey> {
    Ok(tx
        .prepare_cached(&format!("SELECT {PROVIDER_KEY_COLS} WHERE id = ?1"))?
        .query_row(params![id], provider_key_row)
        .optional()?
        .ok_or_else(|| not_found(Resource::ProviderKey, id))?)
}

fn get_config(tx: &Transaction<'_>, id: &str) -> R<AccessKeyConfiguration> {
    let raw = tx
        .prepare_cached(&format!("SELECT {CONFIG_COLS} WHERE id = ?1"))?
        .query_row(params![id], config_raw)
        .optional()?
        .ok_or_else(|| not_found(Resource::Config, id))?;
    config_from_raw(tx, raw)
}

fn get_provider(tx: &Transaction<'_>, id: &str) -> R<Provider> {
    let raw = tx
        .prepare_cached(&format!("SELECT {PROVIDER_COLS} WHERE id = ?1"))?
        .query_row(params![id], provider_raw)
        .optional()?
        .ok_or_else(|| not_found(Resource::Provider, id))?;
    provider_from_raw(raw)
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

impl Store for SqliteStore {
    fn ping(&self) -> StoreResult<()> {
        self.read_gateway(|tx| current_version(tx).map(|_| ()))
    }

    // -------------------------------------------------------- access keys

    fn create_access_key(&self, new: &NewAccessKey) -> StoreResult<AccessKey> {
        let id = new_id("ak_")?;
        self.write(|tx| {
            if let Some(c) = &new.config_id {
                check_config_id(tx, c)?;
            }
            let now = now_ms();
            tx.execute(
                "INSERT INTO access_keys(id, name, description, metadata, config_id, expires_at, disabled, digest, redacted, created_ms, updated_ms, budget_json)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?10, ?11)",
                params![id, new.name, new.description, new.metadata, new.config_id, new.expires_at, new.disabled, new.digest, new.redacted, now, to_json_opt(new.budget.as_ref())?],
            )?;
            self.bump(tx, &[Some(new.digest.clone())])?;
            get_access_key(tx, &id)
        })
    }

    fn list_access_keys(&self, page: &PageRequest) -> StoreResult<Vec<AccessKey>> {
        self.read(|tx| {
            let mut stmt = tx.prepare_cached(&format!(
                "SELECT {ACCESS_KEY_COLS} WHERE (?1 IS NULL OR a.id < ?1) ORDER BY a.id DESC LIMIT ?2"
            ))?;
            let rows = stmt.query_map(params![page.before_id, limit_i64(page)], access_key_row)?;
            let keys = rows.collect::<Result<Vec<_>, _>>()?;
            keys.into_iter().map(|k| with_key_usage(tx, k)).collect()
        })
    }

    fn get_access_key(&self, id: &str) -> StoreResult<AccessKey> {
        self.read(|tx| get_access_key(tx, id))
    }

    fn update_access_key(&self, id: &str, ch: &AccessKeyChanges) -> StoreResult<AccessKey> {
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
                .set("updated_ms", now_ms());
            execute(a, tx, "access_keys", id)?;
            self.bump(tx, &digests)?;
            get_access_key(tx, id)
        })
    }

    fn delete_access_key(&self, id: &str) -> StoreResult<()> {
        self.write(|tx| {
            let digests = digests_of_key(tx, id)?;
            tx.execute("DELETE FROM access_keys WHERE id = ?1", params![id])?;
            forget_scope(tx, &key_scope(id))?;
            self.bump(tx, &digests)?;
            Ok(())
        })
    }

    fn rotate_access_key(&self, id: &str, digest: &str, redacted: &str, grace_seconds: i64) -> StoreResult<AccessKey> {
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
            get_access_key(tx, id)
        })
    }

    // -------------------------------------------------------- provider keys

    fn create_provider_key(&self, new: &NewProviderKey) -> StoreResult<ProviderKey> {
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
            get_provider_key(tx, &id)
        })
    }

    fn list_provider_keys(&self, page: &PageRequest) -> StoreResult<Vec<ProviderKey>> {
        self.read(|tx| {
            let mut stmt = tx.prepare_cached(&format!(
                "SELECT {PROVIDER_KEY_COLS} WHERE (?1 IS NULL OR id < ?1) ORDER BY id DESC LIMIT ?2"
            ))?;
            let rows = stmt.query_map(params![page.before_id, limit_i64(page)], provider_key_row)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    fn get_provider_key(&self, id: &str) -> StoreResult<ProviderKey> {
        self.read(|tx| get_provider_key(tx, id))
    }

    fn update_provider_key(&self, id: &str, ch: &ProviderKeyChanges) -> StoreResult<ProviderKey> {
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
            get_provider_key(tx, id)
        })
    }

    fn delete_provider_key(&self, id: &str) -> StoreResult<()> {
        self.write(|tx| {
            get_provider_key(tx, id)?;
            refs::may_delete_provider_key(id, &config_specs(tx)?)?;
            tx.execute("DELETE FROM provider_keys WHERE id = ?1", params![id])?;
            self.bump(tx, &[None])?;
            Ok(())
        })
    }

    fn rotate_provider_key(&self, id: &str, value: &str) -> StoreResult<ProviderKey> {
        let sealed = self.cipher.encrypt(id, value.as_bytes())?;
        let redacted = redact_value(value);
        self.write(|tx| {
            get_provider_key(tx, id)?;
            tx.execute(
                "UPDATE provider_keys SET secret = ?2, redacted = ?3, updated_ms = ?4 WHERE id = ?1",
                params![id, sealed, redacted, now_ms()],
            )?;
            self.bump(tx, &[None])?;
            get_provider_key(tx, id)
        })
    }

    // -------------------------------------------------------- configurations

    fn create_config(&self, new: &NewConfig) -> StoreResult<AccessKeyConfiguration> {
        let id = new_id("akc_")?;
        self.write(|tx| {
            name_conflict(tx, &new.name, None)?;
            check_refs(tx, new.access.as_ref(), new.router.as_ref())?;
            let now = now_ms();
            tx.execute(
                "INSERT INTO configs(id, name, description, metadata, access_json, router_json, created_ms, updated_ms,
                   rate_limits_json, budget_json)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7, ?8, ?9)",
                params![
                    id,
                    new.name,
                    new.description,
                    new.metadata,
                    to_json_opt(new.access.as_ref())?,
                    to_json_opt(new.router.as_ref())?,
                    now,
                    to_json_opt(new.rate_limits.as_ref())?,
                    to_json_opt(new.budget.as_ref())?
                ],
            )?;
            self.bump(tx, &[])?;
            get_config(tx, &id)
        })
    }

    fn list_configs(&self, page: &PageRequest) -> StoreResult<Vec<AccessKeyConfiguration>> {
        self.read(|tx| {
            let mut stmt = tx.prepare_cached(&format!(
                "SELECT {CONFIG_COLS} WHERE (?1 IS NULL OR id < ?1) ORDER BY id DESC LIMIT ?2"
            ))?;
            let raws =
                stmt.query_map(params![page.before_id, limit_i64(page)], config_raw)?.collect::<Result<Vec<_>, _>>()?;
            raws.into_iter().map(|r| config_from_raw(tx, r)).collect()
        })
    }

    fn get_config(&self, id: &str) -> StoreResult<AccessKeyConfiguration> {
        self.read(|tx| get_config(tx, id))
    }

    fn update_config(&self, id: &str, ch: &ConfigChanges) -> StoreResult<AccessKeyConfiguration> {
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
                .set_some("budget_json", json_change(&ch.budget)?)
                .set("updated_ms", now_ms());
            execute(a, tx, "configs", id)?;
            let digests = digests_of_config(tx, id)?;
            self.bump(tx, &digests)?;
            get_config(tx, id)
        })
    }

    fn delete_config(&self, id: &str) -> StoreResult<()> {
        self.write(|tx| {
            get_config(tx, id)?;
            let users: i64 =
                tx.query_row("SELECT COUNT(*) FROM access_keys WHERE config_id = ?1", params![id], |r| r.get(0))?;
            refs::may_delete_config(id, users)?;
            tx.execute("DELETE FROM configs WHERE id = ?1", params![id])?;
            forget_scope(tx, &config_scope(id))?;
            self.bump(tx, &[])?;
            Ok(())
        })
    }

    // -------------------------------------------------------- providers

    fn create_provider(&self, new: &NewProvider) -> StoreResult<Provider> {
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
            get_provider(tx, &new.id)
        })
    }

    fn list_providers(&self) -> StoreResult<Vec<Provider>> {
        self.read(|tx| {
            let mut stmt = tx.prepare_cached(&format!("SELECT {PROVIDER_COLS} ORDER BY seq"))?;
            let raws = stmt.query_map([], provider_raw)?.collect::<Result<Vec<_>, _>>()?;
            raws.into_iter().map(provider_from_raw).collect()
        })
    }

    fn get_provider(&self, id: &str) -> StoreResult<Provider> {
        self.read(|tx| get_provider(tx, id))
    }

    fn update_provider(&self, id: &str, ch: &ProviderChanges) -> StoreResult<Provider> {
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
            get_provider(tx, id)
        })
    }

    fn delete_provider(&self, id: &str) -> StoreResult<()> {
        self.write(|tx| {
            let current = get_provider(tx, id)?;
            let keys: i64 =
                tx.query_row("SELECT COUNT(*) FROM provider_keys WHERE provider_id = ?1", params![id], |r| r.get(0))?;
            refs::may_delete_provider(&current, keys, &config_specs(tx)?)?;
            tx.execute("DELETE FROM providers WHERE id = ?1", params![id])?;
            self.bump(tx, &[None])?;
            Ok(())
        })
    }

    // -------------------------------------------------------- gateway

    fn lookup(&self, digest: &str) -> StoreResult<Lookup> {
        self.read_gateway(|tx| {
            let version = u64::try_from(current_version(tx)?).unwrap_or(0);
            let mut doc = Lookup {
                schema: SCHEMA,
                version,
                status: KeyStatus::Unknown,
                key: None,
                access: None,
                providers: Default::default(),
                limits: None,
                budgeted: false,
            };
            type KeyHit = (String, Option<String>, Option<i64>, bool, Option<i64>, Option<String>);
            let map = |r: &Row<'_>| -> rusqlite::Result<KeyHit> {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?))
            };
            let current = tx
                .prepare_cached(
                    "SELECT id, config_id, expires_at, disabled, NULL, budget_json FROM access_keys WHERE digest = ?1",
                )?
                .query_row(params![digest], map)
                .optional()?;
            let hit = match current {
                Some(h) => Some((h, false)),
                None => tx
                    .prepare_cached(
                        "SELECT id, config_id, expires_at, disabled, prev_until, budget_json FROM access_keys WHERE prev_digest = ?1",
                    )?
                    .query_row(params![digest], map)
                    .optional()?
                    .map(|h| (h, true)),
            };
            let Some(((id, config_id, expires_at, disabled, prev_until, key_budget), is_prev)) = hit else {
                return Ok(doc);
            };
            let facts = KeyFacts {
                expires_at,
                disabled,
                grace_until: if is_prev { Some(prev_until.unwrap_or(0)) } else { None },
            };
            doc.status = facts.status(now_secs());
            doc.key = Some(KeyInfo { id, config_id: config_id.clone(), valid_until: facts.valid_until() });
            if doc.status != KeyStatus::Active {
                return Ok(doc);
            }
            type ConfigHit = (Option<String>, Option<String>, Option<String>, Option<String>);
            let (a, r, limits, config_budget): ConfigHit = match &config_id {
                Some(c) => tx
                    .prepare_cached(
                        "SELECT access_json, router_json, rate_limits_json, budget_json FROM configs WHERE id = ?1",
                    )?
                    .query_row(params![c], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?,
                None => (None, None, None, None),
            };
            let (access, router): (Option<AccessSpec>, Option<RouterSpec>) = (json_opt(a)?, json_opt(r)?);
            doc.limits = key_status::limits(json_opt::<RateLimitsSpec>(limits)?);
            doc.budgeted =
                budget::budgeted(key_budget.is_some(), config_budget.is_some(), SqlLedger(tx).credit_state()?.enabled);
            let providers = {
                let mut stmt =
                    tx.prepare_cached("SELECT id, format, auth, base_url, models_json FROM providers ORDER BY seq")?;
                let raws = stmt
                    .query_map([], |r| {
                        Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?, r.get::<_, String>(3)?, r.get::<_, String>(4)?))
                    })?
                    .collect::<Result<Vec<_>, _>>()?;
                raws.into_iter()
                    .map(|(id, format, auth, base_url, models)| {
                        Ok(ProviderRow {
                            id,
                            format: parse_enum(format)?,
                            auth: parse_enum(auth)?,
                            base_url,
                            models: serde_json::from_str(&models)?,
                        })
                    })
                    .collect::<R<Vec<_>>>()?
            };
            let keys = {
                let mut stmt = tx.prepare_cached("SELECT id, provider_id, managed FROM provider_keys ORDER BY id")?;
                let rows = stmt
                    .query_map([], |r| Ok(KeyRow { id: r.get(0)?, provider_id: r.get(1)?, managed: r.get(2)? }))?
                    .collect::<Result<Vec<_>, _>>()?;
                rows
            };
            let mut secret_stmt = tx.prepare_cached("SELECT secret FROM provider_keys WHERE id = ?1")?;
            let cipher = &self.cipher;
            doc.providers = std::sync::Arc::new(plan::build(&providers, &keys, access.as_ref(), router.as_ref(), |key_id| {
                let sealed: Option<Vec<u8>> = secret_stmt.query_row(params![key_id], |r| r.get(0)).optional().map_err(db)?;
                match sealed {
                    None => Ok(None),
                    Some(s) => {
                        let plain = cipher.decrypt(key_id, &s)?;
                        String::from_utf8(plain)
                            .map(Some)
                            .map_err(|_| StoreError::Internal("provider key value is not UTF-8".into()))
                    }
                }
            })?);
            doc.access = Some(std::sync::Arc::new(plan::access_of(access.as_ref())));
            Ok(doc)
        })
    }

    fn changes(&self, since: u64) -> StoreResult<Changes> {
        self.read_gateway(|tx| {
            let version = current_version(tx)?;
            let trimmed: i64 = tx
                .prepare_cached("SELECT value FROM meta WHERE key = 'trimmed_through'")?
                .query_row([], |r| r.get(0))?;
            if let Some(answer) = changes::without_log(version, since, trimmed) {
                return Ok(answer);
            }
            let since = i64::try_from(since).unwrap_or(i64::MAX);
            let mut stmt =
                tx.prepare_cached("SELECT version, digest FROM change_log WHERE version > ?1 ORDER BY seq")?;
            let entries = stmt
                .query_map(params![since], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Option<String>>(1)?)))?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(changes::from_log(version, entries))
        })
    }

    // -------------------------------------------------------- budgets and usage

    fn reserve(&self, req: &ReserveRequest) -> StoreResult<ReserveResponse> {
        self.write(|tx| reservation::reserve(&mut SqlLedger(tx), req, now_ms()))
    }

    fn ingest_usage(&self, records: &[UsageRecord]) -> StoreResult<usize> {
        self.write(|tx| reservation::ingest(&mut SqlLedger(tx), records, now_ms()))
    }

    fn sweep_reservations(&self) -> StoreResult<usize> {
        self.write(|tx| reservation::sweep(&mut SqlLedger(tx), now_ms()))
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

    fn add_credits(&self, micros: i64) -> StoreResult<Credits> {
        self.write(|tx| {
            if credits::add(&mut SqlLedger(tx), micros)? {
                self.bump(tx, &[None])?;
            }
            credits::view(&mut SqlLedger(tx))
        })
    }

    fn set_credits_enabled(&self, enabled: bool) -> StoreResult<Credits> {
        self.write(|tx| {
            if credits::set_enabled(&mut SqlLedger(tx), enabled)? {
                self.bump(tx, &[None])?;
            }
            credits::view(&mut SqlLedger(tx))
        })
    }

    fn list_prices(&self) -> StoreResult<Vec<PriceEntry>> {
        self.read(reports::list_prices)
    }

    fn put_price(&self, provider: &str, model: &str, price: &NewPrice) -> StoreResult<PriceEntry> {
        self.write(|tx| reports::put_price(tx, provider, model, price, now_ms()))
    }

    fn delete_price(&self, provider: &str, model: &str) -> StoreResult<()> {
        self.write(|tx| reports::delete_price(tx, provider, model))
    }

    fn gauges(&self) -> StoreResult<Gauges> {
        self.read_gateway(|tx| {
            let access_keys: i64 = tx.query_row("SELECT COUNT(*) FROM access_keys", [], |r| r.get(0))?;
            Ok(Gauges { access_keys, version: current_version(tx)? })
        })
    }
}
