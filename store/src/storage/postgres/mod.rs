//! PostgreSQL backend: the same statements as the SQLite one in PostgreSQL's
//! dialect, every decision from [`crate::policy`], every row mapped by
//! [`super::rows`], the lookup document assembled by [`super::lookup`].
//!
//! # Driver
//!
//! The synchronous `postgres` crate (the blocking face of `tokio-postgres`,
//! both by the same maintainer) behind an `r2d2` pool (`r2d2_postgres`, same
//! maintainer again): the `Store` trait is synchronous and called from
//! `spawn_blocking`, so a blocking client fits it with no second async
//! runtime of our own, and r2d2 gives a bounded pool with checkout timeouts,
//! lazy connects and the replacement of broken connections.
//!
//! # TLS
//!
//! Every connection goes through rustls (see [`tls`]): the URL's `sslmode`
//! decides whether TLS is used (`disable`, `prefer` — the default —,
//! `require`, `verify-ca`, `verify-full`), and whenever it is, the server's
//! certificate is verified as with `verify-full`, against Mozilla's roots and
//! the bundle of `KEYGATE_DATABASE_CA`. A required TLS connection that cannot
//! be made fails: the store never falls back to plain text.
//!
//! # Several store processes on one database
//!
//! Every write runs in a `SERIALIZABLE` transaction, retried as a whole on a
//! serialization failure or a deadlock (the closures read everything they
//! need inside the transaction; nothing read is kept across attempts). So
//! budget reservations, settlements and credits, which the policy drives as
//! read-then-write over [`Ledger`], stay exact however many processes write.
//! The store-wide version is one `meta` row incremented inside each writing
//! transaction (`UPDATE … RETURNING`): its row lock orders the writers that
//! change lookup answers, so versions are handed out in commit order, and
//! change-log entries take the next sequence number under the same lock.
//! Reads run in `REPEATABLE READ READ ONLY` transactions: one snapshot each.
//!
//! Dropping a `postgres::Client` runs a small runtime of its own, which
//! Tokio forbids inside an async context: the pool is dropped on a plain
//! thread (see `Drop for PgStore`).

use std::time::Duration;

use keygate_proto::lookup::{
    Changes, LeaseRequest, LeaseResponse, Lookup, ReserveRequest, ReserveResponse, UsageRecord,
};
use postgres::types::{to_sql_checked, IsNull, ToSql, Type};
use postgres::{IsolationLevel, Transaction};
use r2d2_postgres::PostgresConnectionManager;

mod alerts;
pub(crate) mod error;
mod leases;
mod ledger;
mod management;
mod reports;
mod schema;
mod sessions;
pub mod tls;

pub use self::tls::PgTarget;
use self::tls::Tls;

use self::error::{PgError, R};
use self::ledger::{forget_scope, PgLedger};
use super::lookup::{self as lookup_doc, ConfigHit, KeyHit, LookupSource};
use super::migrations::Migration;
use super::rows::{
    self, auth_str, count_cell, count_change, format_str, json_change, json_opt, limit_i64, to_json_opt, Cells,
};
use super::update::Assignments;
use super::{
    AccessKeyChanges, AccessKeyFilter, AlertWebhookChanges, ApiKeyAuth, ApiKeyChanges, AttemptRecord, Audit,
    AuditFilter, ClaimedDelivery, ConfigChanges, ExpiredSessions, Gauges, GroupBy, NewAccessKey, NewAlertWebhook,
    NewApiKey, NewConfig, NewPrice, NewProvider, NewProviderKey, Options, PageRequest, ProviderChanges,
    ProviderKeyChanges, SessionRow, Store, UsageFilter,
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
    WHERE u.started_ms < $1 AND NOT EXISTS (SELECT 1 FROM reservations r WHERE r.request_id = u.request_id)
    ORDER BY u.started_ms LIMIT $2)";

/// Connections per store process.
const POOL_SIZE: u32 = 8;

/// Attempts of a write transaction that keeps meeting concurrent writers.
const WRITE_ATTEMPTS: u32 = 50;

type Pool = r2d2::Pool<PostgresConnectionManager<Tls>>;

pub struct PgStore {
    pool: Option<Pool>,
    cipher: Cipher,
    opts: Options,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore").finish_non_exhaustive()
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.take() {
            let _ = std::thread::spawn(move || drop(pool)).join();
        }
    }
}

impl Cells for postgres::Row {
    type Error = PgError;
    fn text(&self, i: usize) -> R<String> {
        Ok(self.try_get(i)?)
    }
    fn opt_text(&self, i: usize) -> R<Option<String>> {
        Ok(self.try_get(i)?)
    }
    fn int(&self, i: usize) -> R<i64> {
        Ok(self.try_get(i)?)
    }
    fn opt_int(&self, i: usize) -> R<Option<i64>> {
        Ok(self.try_get(i)?)
    }
    fn flag(&self, i: usize) -> R<bool> {
        Ok(self.try_get(i)?)
    }
}

/// A parameter of an [`Assignments`] update.
#[derive(Debug)]
enum Value {
    Text(Option<String>),
    Int(Option<i64>),
    Bool(bool),
}

impl From<String> for Value {
    fn from(v: String) -> Self {
        Value::Text(Some(v))
    }
}
impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::Text(Some(v.to_string()))
    }
}
impl From<Option<String>> for Value {
    fn from(v: Option<String>) -> Self {
        Value::Text(v)
    }
}
impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::Int(Some(v))
    }
}
impl From<Option<i64>> for Value {
    fn from(v: Option<i64>) -> Self {
        Value::Int(v)
    }
}
impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Value::Bool(v)
    }
}

impl ToSql for Value {
    fn to_sql(&self, ty: &Type, out: &mut bytes::BytesMut) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self {
            Value::Text(v) => v.to_sql(ty, out),
            Value::Int(v) => v.to_sql(ty, out),
            Value::Bool(v) => v.to_sql(ty, out),
        }
    }

    fn accepts(ty: &Type) -> bool {
        <String as ToSql>::accepts(ty) || <i64 as ToSql>::accepts(ty) || <bool as ToSql>::accepts(ty)
    }

    to_sql_checked!();
}

/// Runs the update of row `id` of `table`; returns the rows changed.
fn execute(a: Assignments<Value>, tx: &mut Transaction<'_>, table: &'static str, id: &str) -> R<u64> {
    let (sql, values) = a.statement(table, id, |n| format!("${n}"));
    let params: Vec<&(dyn ToSql + Sync)> = values.iter().map(|v| v as &(dyn ToSql + Sync)).collect();
    Ok(tx.execute(&sql, &params)?)
}

/// Applies the pending schema migrations of the database at `target`.
pub fn migrate(target: &PgTarget) -> StoreResult<Vec<i64>> {
    let run = || -> R<Vec<Migration>> {
        let (cfg, tls) = target.parts()?;
        let mut client = cfg.connect(tls)?;
        schema::migrate(&mut client)
    };
    Ok(off_runtime(run)?.iter().map(|m| m.version).collect())
}

/// Logs whether the store's connections are encrypted (with `prefer`, that
/// depends on the server), as the server reports it (`pg_stat_ssl`).
fn log_tls(client: &mut postgres::Client, mode: postgres::config::SslMode) {
    let ssl = client
        .query_opt("SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[])
        .ok()
        .flatten()
        .and_then(|r| Some((r.try_get::<_, bool>(0).ok()?, r.try_get::<_, Option<String>>(1).ok()?)));
    match ssl {
        Some((true, version)) => {
            tracing::info!(sslmode = ?mode, tls = version.as_deref().unwrap_or("?"), "connected to PostgreSQL over TLS")
        }
        Some((false, _)) if mode == postgres::config::SslMode::Disable => {
            tracing::info!(sslmode = ?mode, "connected to PostgreSQL without TLS")
        }
        Some((false, _)) => {
            tracing::warn!(sslmode = ?mode, "connected to PostgreSQL without TLS: the server does not offer it")
        }
        None => tracing::info!(sslmode = ?mode, "connected to PostgreSQL"),
    }
}

/// Runs `f` on a plain thread: the blocking client must not run (nor be
/// dropped) on a thread that drives async tasks.
fn off_runtime<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| s.spawn(f).join()).unwrap_or_else(|p| std::panic::resume_unwind(p))
}

impl PgStore {
    /// Connects, applies pending migrations, checks the master key and seeds
    /// the built-in providers.
    pub fn open(target: &PgTarget, cipher: Cipher) -> StoreResult<Self> {
        Self::open_with(target, cipher, Options::default())
    }

    pub fn open_with(target: &PgTarget, cipher: Cipher, opts: Options) -> StoreResult<Self> {
        off_runtime(|| Self::try_open(target, cipher, opts)).map_err(StoreError::from)
    }

    fn try_open(target: &PgTarget, cipher: Cipher, opts: Options) -> R<Self> {
        let (cfg, tls) = target.parts()?;
        // A first connection of our own: a wrong URL (or a TLS connection
        // that cannot be made) fails now, not after the pool's checkout
        // timeout.
        let mut first = cfg.connect(tls.clone())?;
        log_tls(&mut first, cfg.get_ssl_mode());
        schema::migrate(&mut first)?;
        drop(first);
        let pool = r2d2::Pool::builder()
            .max_size(POOL_SIZE)
            .min_idle(Some(1))
            .test_on_check_out(false)
            .connection_timeout(Duration::from_secs(10))
            .build(PostgresConnectionManager::new(cfg, tls))?;
        let store = PgStore { pool: Some(pool), cipher, opts };
        store.write(|tx| {
            let sealed = store.cipher.encrypt(KEY_CHECK_AAD, b"ok")?;
            tx.execute("INSERT INTO key_check(sealed) VALUES ($1) ON CONFLICT DO NOTHING", &[&sealed])?;
            let stored: Vec<u8> = tx.query_one("SELECT sealed FROM key_check", &[])?.try_get(0)?;
            store.cipher.decrypt(KEY_CHECK_AAD, &stored).map_err(|_| {
                StoreError::Internal("the master key does not match the one this database was written with".into())
            })?;
            let now = now_ms();
            let mut added = 0;
            for b in BUILT_INS {
                added += tx.execute(
                    "INSERT INTO providers(id, name, base_url, format, auth, models_json, built_in, created_ms, updated_ms)
                     VALUES ($1, $2, $3, $4, $5, $6, TRUE, $7, $7) ON CONFLICT (id) DO NOTHING",
                    &[&b.id, &b.name, &b.base_url, &format_str(b.format), &auth_str(b.auth), &serde_json::to_string(b.models)?, &now],
                )?;
            }
            if added > 0 && current_version(tx)? > 0 {
                store.bump(tx, &[None])?;
            }
            Ok(())
        })?;
        Ok(store)
    }

    fn conn(&self) -> R<r2d2::PooledConnection<PostgresConnectionManager<Tls>>> {
        let pool = self.pool.as_ref().ok_or_else(|| StoreError::Internal("the store is closed".into()))?;
        Ok(pool.get()?)
    }

    /// Runs `f` in a serializable write transaction, committed when `f`
    /// succeeds and run again (from the start) when a concurrent transaction
    /// got in the way.
    fn write<T>(&self, mut f: impl FnMut(&mut Transaction<'_>) -> R<T>) -> StoreResult<T> {
        let mut conn = self.conn()?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut run = || -> R<T> {
                let mut tx = conn.build_transaction().isolation_level(IsolationLevel::Serializable).start()?;
                let out = f(&mut tx)?;
                tx.commit()?;
                Ok(out)
            };
            match run() {
                Err(e) if e.is_retryable() && attempt < WRITE_ATTEMPTS => {
                    tracing::debug!(attempt, "a concurrent transaction got in the way; running the write again");
                    backoff(attempt);
                }
                done => return Ok(done?),
            }
        }
    }

    /// Runs `f` in a read-only transaction on one snapshot.
    fn read<T>(&self, f: impl FnOnce(&mut Transaction<'_>) -> R<T>) -> StoreResult<T> {
        let run = || -> R<T> {
            let mut conn = self.conn()?;
            let mut tx =
                conn.build_transaction().isolation_level(IsolationLevel::RepeatableRead).read_only(true).start()?;
            let out = f(&mut tx)?;
            tx.commit()?;
            Ok(out)
        };
        Ok(run()?)
    }

    fn bump(&self, tx: &mut Transaction<'_>, digests: &[Option<String>]) -> R<i64> {
        bump(tx, digests, self.opts.change_log_limit)
    }
}

/// Sleeps a little before attempt `attempt + 1`, longer (and jittered) as
/// attempts add up, so that colliding writers spread out.
fn backoff(attempt: u32) {
    let mut b = [0u8; 2];
    let random = crate::ids::fill_random(&mut b).map(|()| u16::from_le_bytes(b)).unwrap_or(0);
    std::thread::sleep(Duration::from_micros(backoff_us(attempt, random)));
}

/// The wait before a write's next attempt: a window that doubles from 2 ms
/// to 64 ms, and a random point in its upper half. Writers that collided
/// retry at different times (a fixed step made them collide again, in step,
/// until one ran out of attempts: six writers on one key's budget did).
fn backoff_us(attempt: u32, random: u16) -> u64 {
    let window = 1000u64 << attempt.clamp(1, 6);
    window / 2 + u64::from(random) * (window / 2) / u64::from(u16::MAX)
}

fn current_version(tx: &mut Transaction<'_>) -> R<i64> {
    tx.query_one("SELECT value FROM meta WHERE key = 'version'", &[])?.int(0)
}

/// Bumps the version and logs the digests whose answers change (`None` = all).
/// The version row's lock, held to commit, orders the writers: versions and
/// log sequence numbers are handed out in commit order, without gaps.
fn bump(tx: &mut Transaction<'_>, digests: &[Option<String>], limit: i64) -> R<i64> {
    let version =
        tx.query_one("UPDATE meta SET value = value + 1 WHERE key = 'version' RETURNING value", &[])?.int(0)?;
    for d in digests {
        tx.execute(
            "INSERT INTO change_log(seq, version, digest) SELECT COALESCE(MAX(seq), 0) + 1, $1, $2 FROM change_log",
            &[&version, d],
        )?;
    }
    let span = tx.query_one("SELECT MIN(seq), MAX(seq) FROM change_log", &[])?;
    if let Some(cut) = changes::trim_through(span.opt_int(0)?, span.opt_int(1)?, limit) {
        let trimmed = tx.query_one("SELECT MAX(version) FROM change_log WHERE seq <= $1", &[&cut])?.opt_int(0)?;
        tx.execute("DELETE FROM change_log WHERE seq <= $1", &[&cut])?;
        if let Some(t) = trimmed {
            tx.execute("UPDATE meta SET value = GREATEST(value, $1) WHERE key = 'trimmed_through'", &[&t])?;
        }
    }
    Ok(version)
}

// ------------------------------------------------------------ reads

fn one<T>(tx: &mut Transaction<'_>, sql: &str, id: &str, map: fn(&postgres::Row) -> R<T>) -> R<Option<T>> {
    tx.query_opt(sql, &[&id])?.as_ref().map(map).transpose()
}

fn get_access_key(tx: &mut Transaction<'_>, id: &str) -> R<AccessKey> {
    let sql = format!("SELECT {} WHERE a.id = $1", rows::ACCESS_KEY_COLS);
    let key = one(tx, &sql, id, rows::access_key)?.ok_or_else(|| not_found(Resource::AccessKey, id))?;
    rows::with_key_usage(&mut PgLedger(tx), key, now_ms())
}

fn get_provider_key(tx: &mut Transaction<'_>, id: &str) -> R<ProviderKey> {
    let sql = format!("SELECT {} WHERE id = $1", rows::PROVIDER_KEY_COLS);
    Ok(one(tx, &sql, id, rows::provider_key)?.ok_or_else(|| not_found(Resource::ProviderKey, id))?)
}

fn get_config(tx: &mut Transaction<'_>, id: &str) -> R<AccessKeyConfiguration> {
    let sql = format!("SELECT {} WHERE id = $1", rows::CONFIG_COLS);
    let c = one(tx, &sql, id, rows::config)?.ok_or_else(|| not_found(Resource::Config, id))?;
    rows::with_config_usage(&mut PgLedger(tx), c, now_ms())
}

fn get_provider(tx: &mut Transaction<'_>, id: &str) -> R<Provider> {
    let sql = format!("SELECT {} WHERE id = $1", rows::PROVIDER_COLS);
    Ok(one(tx, &sql, id, rows::provider)?.ok_or_else(|| not_found(Resource::Provider, id))?)
}

fn exists(tx: &mut Transaction<'_>, sql: &str, id: &str) -> R<bool> {
    Ok(tx.query_opt(sql, &[&id])?.is_some())
}

fn provider_exists(tx: &mut Transaction<'_>, id: &str) -> R<bool> {
    exists(tx, "SELECT 1 FROM providers WHERE id = $1", id)
}

fn check_refs(tx: &mut Transaction<'_>, access: Option<&AccessSpec>, router: Option<&RouterSpec>) -> R<()> {
    // Read what the checks may ask first (one round trip each), so that a
    // database error keeps its kind (a serialization failure is retried).
    let providers: Vec<String> =
        tx.query("SELECT id FROM providers", &[])?.iter().map(|r| r.text(0)).collect::<R<_>>()?;
    let keys: std::collections::HashMap<String, String> = tx
        .query("SELECT id, provider_id FROM provider_keys", &[])?
        .iter()
        .map(|r| Ok((r.text(0)?, r.text(1)?)))
        .collect::<R<_>>()?;
    Ok(refs::check_config_refs(
        access,
        router,
        |p| Ok(providers.iter().any(|id| id == p)),
        |k| Ok(keys.get(k).cloned()),
    )?)
}

/// Current and grace digests of an access key.
fn digests_of_key(tx: &mut Transaction<'_>, id: &str) -> R<Vec<Option<String>>> {
    let (d, p) =
        one(tx, "SELECT digest, prev_digest FROM access_keys WHERE id = $1", id, |r| Ok((r.text(0)?, r.opt_text(1)?)))?
            .ok_or_else(|| not_found(Resource::AccessKey, id))?;
    Ok([Some(d), p].into_iter().flatten().map(Some).collect())
}

/// Digests of every access key using a configuration.
fn digests_of_config(tx: &mut Transaction<'_>, config_id: &str) -> R<Vec<Option<String>>> {
    let mut out = Vec::new();
    for r in tx.query("SELECT digest, prev_digest FROM access_keys WHERE config_id = $1", &[&config_id])? {
        out.push(Some(r.text(0)?));
        if let Some(p) = r.opt_text(1)? {
            out.push(Some(p));
        }
    }
    Ok(out)
}

/// What every configuration refers to (in storage order).
fn config_specs(tx: &mut Transaction<'_>) -> R<Vec<ConfigSpecs>> {
    tx.query("SELECT id, access_json, router_json FROM configs", &[])?
        .iter()
        .map(|r| {
            Ok(ConfigSpecs { id: r.text(0)?, access: json_opt(r.opt_text(1)?)?, router: json_opt(r.opt_text(2)?)? })
        })
        .collect()
}

fn name_conflict(tx: &mut Transaction<'_>, name: &str, except: Option<&str>) -> R<()> {
    let holder = one(tx, "SELECT id FROM configs WHERE name = $1", name, |r| r.text(0))?;
    Ok(refs::require_free_config_name(name, holder.as_deref(), except)?)
}

fn check_config_id(tx: &mut Transaction<'_>, id: &str) -> R<()> {
    Ok(refs::require_config(id, exists(tx, "SELECT 1 FROM configs WHERE id = $1", id)?)?)
}

fn count(tx: &mut Transaction<'_>, sql: &str, id: &str) -> R<i64> {
    tx.query_one(sql, &[&id])?.int(0)
}

/// The rows of a lookup, read in one transaction.
struct PgLookup<'a, 'c>(&'a mut Transaction<'c>);

impl LookupSource for PgLookup<'_, '_> {
    type Error = PgError;

    fn version(&mut self) -> R<i64> {
        current_version(self.0)
    }

    fn key(&mut self, digest: &str, grace: bool) -> R<Option<KeyHit>> {
        let column = if grace { "prev_digest" } else { "digest" };
        let sql = format!("SELECT {} WHERE {column} = $1", lookup_doc::KEY_HIT_COLS);
        one(self.0, &sql, digest, lookup_doc::key_hit)
    }

    fn config(&mut self, id: &str) -> R<ConfigHit> {
        let sql = format!("SELECT {} WHERE id = $1", lookup_doc::CONFIG_HIT_COLS);
        Ok(one(self.0, &sql, id, lookup_doc::config_hit)?.unwrap_or_default())
    }

    fn credits_enabled(&mut self) -> R<bool> {
        Ok(PgLedger(self.0).credit_state()?.enabled)
    }

    fn providers(&mut self) -> R<Vec<ProviderRow>> {
        self.0.query(lookup_doc::PROVIDER_ROWS_SQL, &[])?.iter().map(lookup_doc::provider_row).collect()
    }

    fn provider_keys(&mut self) -> R<Vec<KeyRow>> {
        self.0.query(lookup_doc::KEY_ROWS_SQL, &[])?.iter().map(lookup_doc::key_row).collect()
    }

    fn secret(&mut self, key_id: &str) -> R<Option<Vec<u8>>> {
        one(self.0, "SELECT secret FROM provider_keys WHERE id = $1", key_id, |r| Ok(r.try_get(0)?))
    }
}

impl Store for PgStore {
    fn ping(&self) -> StoreResult<()> {
        self.read(|tx| current_version(tx).map(|_| ()))
    }

    // -------------------------------------------------------- access keys

    fn create_access_key(&self, new: &NewAccessKey, audit: &Audit) -> StoreResult<AccessKey> {
        let id = new_id("ak_")?;
        let budget = to_json_opt(new.budget.as_ref())?;
        let cap = count_cell(new.max_concurrent_requests)?;
        self.write(|tx| {
            if let Some(c) = &new.config_id {
                check_config_id(tx, c)?;
            }
            let now = now_ms();
            tx.execute(
                "INSERT INTO access_keys(id, name, description, metadata, config_id, expires_at, disabled, digest, redacted, created_ms, updated_ms, budget_json, max_concurrent_requests)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10, $11, $12)",
                &[&id, &new.name, &new.description, &new.metadata, &new.config_id, &new.expires_at, &new.disabled, &new.digest, &new.redacted, &now, &budget, &cap],
            )?;
            self.bump(tx, &[Some(new.digest.clone())])?;
            management::record(tx, audit, Some(&id))?;
            get_access_key(tx, &id)
        })
    }

    fn list_access_keys(&self, page: &PageRequest, filter: &AccessKeyFilter) -> StoreResult<Vec<AccessKey>> {
        let limit = limit_i64(page);
        let range = filter.name_range();
        let mut sql = format!("SELECT {} WHERE ($1::TEXT IS NULL OR a.id < $1)", rows::ACCESS_KEY_COLS);
        let mut args: Vec<&(dyn ToSql + Sync)> = vec![&page.before_id, &limit];
        // `lower(a.name COLLATE "C")` is the expression of the index
        // access_keys_name_search: ASCII letters folded, code-point order.
        if let Some((lo, hi)) = &range {
            sql.push_str(r#" AND lower(a.name COLLATE "C") >= $3"#);
            args.push(lo);
            if let Some(hi) = hi {
                sql.push_str(r#" AND lower(a.name COLLATE "C") < $4"#);
                args.push(hi);
            }
        }
        sql.push_str(" ORDER BY a.id DESC LIMIT $2");
        self.read(|tx| {
            let keys = tx.query(&sql, &args)?.iter().map(rows::access_key).collect::<R<Vec<_>>>()?;
            let now = now_ms();
            keys.into_iter().map(|k| rows::with_key_usage(&mut PgLedger(tx), k, now)).collect()
        })
    }

    fn get_access_key(&self, id: &str) -> StoreResult<AccessKey> {
        self.read(|tx| get_access_key(tx, id))
    }

    fn update_access_key(&self, id: &str, ch: &AccessKeyChanges, audit: &Audit) -> StoreResult<AccessKey> {
        let budget = json_change(&ch.budget)?;
        let cap = count_change(ch.max_concurrent_requests)?;
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
                .set_some("budget_json", budget.clone())
                .set_some("max_concurrent_requests", cap)
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
            tx.execute("DELETE FROM access_keys WHERE id = $1", &[&id])?;
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
                "UPDATE access_keys SET prev_digest = digest, prev_until = $2, digest = $3, redacted = $4, updated_ms = $5
                 WHERE id = $1",
                &[&id, &until, &digest, &redacted, &now],
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
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9)",
                &[&id, &new.provider_id, &new.name, &new.description, &new.metadata, &new.managed, &sealed, &redacted, &now],
            )?;
            self.bump(tx, &[None])?;
            management::record(tx, audit, Some(&id))?;
            get_provider_key(tx, &id)
        })
    }

    fn list_provider_keys(&self, page: &PageRequest) -> StoreResult<Vec<ProviderKey>> {
        self.read(|tx| {
            let sql = format!(
                "SELECT {} WHERE ($1::TEXT IS NULL OR id < $1) ORDER BY id DESC LIMIT $2",
                rows::PROVIDER_KEY_COLS
            );
            tx.query(&sql, &[&page.before_id, &limit_i64(page)])?.iter().map(rows::provider_key).collect()
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
            tx.execute("DELETE FROM provider_keys WHERE id = $1", &[&id])?;
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
                "UPDATE provider_keys SET secret = $2, redacted = $3, updated_ms = $4 WHERE id = $1",
                &[&id, &sealed, &redacted, &now_ms()],
            )?;
            self.bump(tx, &[None])?;
            management::record(tx, audit, None)?;
            get_provider_key(tx, id)
        })
    }

    // -------------------------------------------------------- configurations

    fn create_config(&self, new: &NewConfig, audit: &Audit) -> StoreResult<AccessKeyConfiguration> {
        let id = new_id("akc_")?;
        let access = to_json_opt(new.access.as_ref())?;
        let router = to_json_opt(new.router.as_ref())?;
        let limits = to_json_opt(new.rate_limits.as_ref())?;
        let budget = to_json_opt(new.budget.as_ref())?;
        let request_limits = to_json_opt(new.request_limits.as_ref())?;
        self.write(|tx| {
            name_conflict(tx, &new.name, None)?;
            check_refs(tx, new.access.as_ref(), new.router.as_ref())?;
            let now = now_ms();
            tx.execute(
                "INSERT INTO configs(id, name, description, metadata, access_json, router_json, created_ms, updated_ms,
                   rate_limits_json, budget_json, request_limits_json)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $7, $8, $9, $10)",
                &[
                    &id,
                    &new.name,
                    &new.description,
                    &new.metadata,
                    &access,
                    &router,
                    &now,
                    &limits,
                    &budget,
                    &request_limits,
                ],
            )?;
            self.bump(tx, &[])?;
            management::record(tx, audit, Some(&id))?;
            get_config(tx, &id)
        })
    }

    fn list_configs(&self, page: &PageRequest) -> StoreResult<Vec<AccessKeyConfiguration>> {
        self.read(|tx| {
            let sql =
                format!("SELECT {} WHERE ($1::TEXT IS NULL OR id < $1) ORDER BY id DESC LIMIT $2", rows::CONFIG_COLS);
            let configs = tx
                .query(&sql, &[&page.before_id, &limit_i64(page)])?
                .iter()
                .map(rows::config)
                .collect::<R<Vec<_>>>()?;
            let now = now_ms();
            configs.into_iter().map(|c| rows::with_config_usage(&mut PgLedger(tx), c, now)).collect()
        })
    }

    fn get_config(&self, id: &str) -> StoreResult<AccessKeyConfiguration> {
        self.read(|tx| get_config(tx, id))
    }

    fn update_config(&self, id: &str, ch: &ConfigChanges, audit: &Audit) -> StoreResult<AccessKeyConfiguration> {
        let (access_json, router_json) = (json_change(&ch.access)?, json_change(&ch.router)?);
        let (limits_json, budget_json) = (json_change(&ch.rate_limits)?, json_change(&ch.budget)?);
        let request_limits_json = json_change(&ch.request_limits)?;
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
                .set_some("access_json", access_json.clone())
                .set_some("router_json", router_json.clone())
                .set_some("rate_limits_json", limits_json.clone())
                .set_some("request_limits_json", request_limits_json.clone())
                .set_some("budget_json", budget_json.clone())
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
            let users = count(tx, "SELECT COUNT(*) FROM access_keys WHERE config_id = $1", id)?;
            refs::may_delete_config(id, users)?;
            crate::policy::alerts::may_delete_config(id, alerts::webhooks_of_config(tx, id)?)?;
            tx.execute("DELETE FROM configs WHERE id = $1", &[&id])?;
            forget_scope(tx, &config_scope(id))?;
            self.bump(tx, &[])?;
            management::record(tx, audit, None)
        })
    }

    // -------------------------------------------------------- providers

    fn create_provider(&self, new: &NewProvider, audit: &Audit) -> StoreResult<Provider> {
        let models = serde_json::to_string(&new.models)?;
        self.write(|tx| {
            refs::require_new_provider(&new.id, provider_exists(tx, &new.id)?)?;
            let now = now_ms();
            tx.execute(
                "INSERT INTO providers(id, name, base_url, format, auth, models_json, built_in, created_ms, updated_ms)
                 VALUES ($1, $2, $3, $4, $5, $6, FALSE, $7, $7)",
                &[&new.id, &new.name, &new.base_url, &format_str(new.format), &auth_str(new.auth), &models, &now],
            )?;
            self.bump(tx, &[None])?;
            management::record(tx, audit, Some(&new.id))?;
            get_provider(tx, &new.id)
        })
    }

    fn list_providers(&self) -> StoreResult<Vec<Provider>> {
        self.read(|tx| {
            tx.query(&format!("SELECT {} ORDER BY seq", rows::PROVIDER_COLS), &[])?.iter().map(rows::provider).collect()
        })
    }

    fn get_provider(&self, id: &str) -> StoreResult<Provider> {
        self.read(|tx| get_provider(tx, id))
    }

    fn update_provider(&self, id: &str, ch: &ProviderChanges, audit: &Audit) -> StoreResult<Provider> {
        let models = ch.models.as_ref().map(serde_json::to_string).transpose()?;
        self.write(|tx| {
            let current = get_provider(tx, id)?;
            refs::may_change_provider(&current, ch.format)?;
            let a = Assignments::default()
                .set_some("name", ch.name.clone())
                .set_some("base_url", ch.base_url.clone())
                .set_some("format", ch.format.map(format_str))
                .set_some("auth", ch.auth.map(auth_str))
                .set_some("models_json", models.clone())
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
            let keys = count(tx, "SELECT COUNT(*) FROM provider_keys WHERE provider_id = $1", id)?;
            refs::may_delete_provider(&current, keys, &config_specs(tx)?)?;
            tx.execute("DELETE FROM providers WHERE id = $1", &[&id])?;
            self.bump(tx, &[None])?;
            management::record(tx, audit, None)
        })
    }

    // -------------------------------------------------------- gateway

    fn lookup(&self, digest: &str) -> StoreResult<Lookup> {
        self.read(|tx| lookup_doc::lookup(&mut PgLookup(tx), digest, &self.cipher, now_secs()))
    }

    fn changes(&self, since: u64) -> StoreResult<Changes> {
        self.read(|tx| {
            let version = current_version(tx)?;
            let trimmed = tx.query_one("SELECT value FROM meta WHERE key = 'trimmed_through'", &[])?.int(0)?;
            changes::answer(version, since, trimmed, |since| {
                tx.query("SELECT version, digest FROM change_log WHERE version > $1 ORDER BY seq", &[&since])?
                    .iter()
                    .map(|r| Ok((r.int(0)?, r.opt_text(1)?)))
                    .collect()
            })
        })
    }

    // -------------------------------------------------------- budgets and usage

    fn reserve(&self, req: &ReserveRequest) -> StoreResult<ReserveResponse> {
        self.write(|tx| reservation::reserve(&mut PgLedger(tx), req, now_ms()))
    }

    fn lease(&self, req: &LeaseRequest) -> StoreResult<LeaseResponse> {
        self.write(|tx| leases::lease(tx, req))
    }

    fn ingest_usage(&self, records: &[UsageRecord]) -> StoreResult<usize> {
        self.write(|tx| reservation::ingest(&mut PgLedger(tx), records, now_ms()))
    }

    fn sweep_reservations(&self) -> StoreResult<usize> {
        self.write(|tx| reservation::sweep(&mut PgLedger(tx), now_ms()))
    }

    fn purge_usage(&self, started_before_ms: i64, limit: usize) -> StoreResult<usize> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let n = self.write(|tx| Ok(tx.execute(PURGE_USAGE, &[&started_before_ms, &limit])?))?;
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }

    fn list_usage(&self, filter: &UsageFilter, page: &PageRequest) -> StoreResult<Vec<UsageItem>> {
        self.read(|tx| reports::list_usage(tx, filter, page))
    }

    fn usage_summary(&self, filter: &UsageFilter, group_by: GroupBy) -> StoreResult<Vec<SummaryRow>> {
        self.read(|tx| reports::usage_summary(tx, filter, group_by))
    }

    fn get_credits(&self) -> StoreResult<Credits> {
        self.read(|tx| credits::view(&mut PgLedger(tx)))
    }

    fn add_credits(&self, micros: i64, audit: &Audit) -> StoreResult<Credits> {
        self.write(|tx| {
            if credits::add(&mut PgLedger(tx), micros)? {
                self.bump(tx, &[None])?;
            }
            management::record(tx, audit, None)?;
            credits::view(&mut PgLedger(tx))
        })
    }

    fn set_credits_enabled(&self, enabled: bool, audit: &Audit) -> StoreResult<Credits> {
        self.write(|tx| {
            if credits::set_enabled(&mut PgLedger(tx), enabled)? {
                self.bump(tx, &[None])?;
            }
            management::record(tx, audit, None)?;
            credits::view(&mut PgLedger(tx))
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
        self.read(|tx| {
            let access_keys = tx.query_one("SELECT COUNT(*) FROM access_keys", &[])?.int(0)?;
            Ok(Gauges { access_keys, version: current_version(tx)? })
        })
    }

    // -------------------------------------------------------- alert webhooks

    fn create_alert_webhook(&self, new: &NewAlertWebhook, audit: &Audit) -> StoreResult<AlertWebhook> {
        let id = alerts::new_webhook_id()?;
        self.write(|tx| {
            let hook = alerts::create_webhook(tx, &self.cipher, &id, new)?;
            management::record(tx, audit, Some(&id))?;
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
        self.write(|tx| crate::policy::alerts::sweep_expiry(&mut PgLedger(tx), now_ms()))
    }

    fn next_alert_due(&self) -> StoreResult<Option<i64>> {
        self.read(|tx| tx.query_one(alerts::NEXT_DUE, &[])?.opt_int(0))
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
        self.read(|tx| management::api_key_by_digest(tx, digest))
    }

    fn touch_api_key(&self, id: &str, now_ms: i64) -> StoreResult<()> {
        self.write(|tx| management::touch_api_key(tx, id, now_ms))
    }

    fn record_audit(&self, entry: &Audit) -> StoreResult<()> {
        self.write(|tx| management::record(tx, entry, None))
    }

    fn list_audit(&self, filter: &AuditFilter, page: &PageRequest) -> StoreResult<Vec<AuditEntry>> {
        self.read(|tx| management::list_audit(tx, filter, page))
    }

    fn purge_audit(&self, before_ms: i64, limit: usize) -> StoreResult<usize> {
        let n = self.write(|tx| management::purge_audit(tx, before_ms, limit))?;
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }

    // -------------------------------------------------------- console sessions

    fn create_console_session(&self, session: &SessionRow) -> StoreResult<()> {
        self.write(|tx| sessions::create(tx, session))
    }

    fn console_session(&self, id: &str) -> StoreResult<Option<SessionRow>> {
        self.read(|tx| sessions::get(tx, id))
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
        let n = self.write(|tx| sessions::purge(tx, expired))?;
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_retry_waits_in_the_upper_half_of_a_window_that_doubles_to_64_ms() {
        for attempt in 0..60 {
            let window = 1000 << attempt.clamp(1, 6);
            let (low, high) = (backoff_us(attempt, 0), backoff_us(attempt, u16::MAX));
            assert_eq!((low, high), (window / 2, window), "attempt {attempt}");
            assert!((low..=high).contains(&backoff_us(attempt, 12345)));
        }
        assert_eq!(backoff_us(1, u16::MAX), 2_000);
        assert_eq!(backoff_us(50, u16::MAX), 64_000);
        // All attempts together wait at most ~3 s.
        assert!((1..WRITE_ATTEMPTS).map(|a| backoff_us(a, u16::MAX)).sum::<u64>() < 3_200_000);
    }
}
