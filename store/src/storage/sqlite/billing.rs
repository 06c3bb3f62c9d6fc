//! Budgets, reservations, usage records, credits and prices on SQLite: the
//! transaction-level helpers behind the `Store` methods of `SqliteStore`.
//!
//! Every budget has a row per window in `budget_state` (scope `key:<id>`,
//! `config:<id>` or `credits`), holding what settled requests spent and what
//! open reservations hold. A reservation remembers the exact rows it added to,
//! so that releasing and settling hit the same window even after midnight.

use std::collections::{BTreeSet, HashMap};

use keygate_proto::lookup::{RefusedBy, ReserveRequest, ReserveResponse, UsageRecord};
use rusqlite::{params, OptionalExtension, Row, Transaction};
use serde::{Deserialize, Serialize};

use crate::error::StoreError;
use crate::ids::{new_id, rfc3339_ms};
use crate::model::{BudgetSpec, BudgetUsage, Credits, PriceEntry, SummaryRow, UsageItem};
use crate::pricing::{
    cost_micros, match_price, micros_to_usd, usd_to_micros, Price, Window, CATCH_ALL, DEFAULT_PRICES,
    RESERVATION_TTL_MS,
};

use super::error::{DbError, R};
use crate::storage::{GroupBy, NewPrice, PageRequest, UsageFilter};

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

/// Columns added to tables of the first schema (databases created before
/// budgets existed get them on open).
const ADDED_COLUMNS: &[(&str, &str, &str)] = &[
    ("configs", "rate_limits_json", "TEXT"),
    ("configs", "budget_json", "TEXT"),
    ("access_keys", "budget_json", "TEXT"),
    ("access_keys", "last_used_ms", "INTEGER"),
    ("provider_keys", "last_used_ms", "INTEGER"),
];

/// Per-record token counts are clamped to this, so sums never overflow.
const MAX_TOKENS: u64 = 1_000_000_000_000;
/// Settled reservations are kept this long (late records of their request
/// still get charged), then deleted by the sweep.
const RESERVATION_KEEP_MS: i64 = 7 * 24 * 3600 * 1000;
/// Used when the catalog has no `*/*` entry (it cannot be deleted, but be safe).
const FALLBACK_PRICE: Price = Price { input: 15_000_000, output: 75_000_000, cached: None };

pub(super) fn migrate(tx: &Transaction<'_>) -> R<()> {
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

fn to_i64(v: u64) -> i64 {
    i64::try_from(v.min(MAX_TOKENS)).unwrap_or(i64::MAX)
}

// ------------------------------------------------------------ budgets

/// One `budget_state` row a reservation holds against.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct BudgetRef {
    scope: String,
    win: String,
    start: i64,
}

#[derive(Debug, Clone, Copy, Default)]
struct BudgetRow {
    spent_tokens: i64,
    spent_micros: i64,
    reserved_tokens: i64,
    reserved_micros: i64,
}

pub(super) fn key_scope(id: &str) -> String {
    format!("key:{id}")
}

pub(super) fn config_scope(id: &str) -> String {
    format!("config:{id}")
}

const CREDITS_SCOPE: &str = "credits";

fn budget_ref(scope: &str, window: Window, now_ms: i64) -> BudgetRef {
    BudgetRef { scope: scope.to_string(), win: window.as_str().to_string(), start: window.start_ms(now_ms) }
}

fn budget_row(tx: &Transaction<'_>, r: &BudgetRef) -> R<BudgetRow> {
    Ok(tx
        .prepare_cached(
            "SELECT spent_tokens, spent_micros, reserved_tokens, reserved_micros FROM budget_state
             WHERE scope = ?1 AND win = ?2 AND window_start = ?3",
        )?
        .query_row(params![r.scope, r.win, r.start], |row| {
            Ok(BudgetRow {
                spent_tokens: row.get(0)?,
                spent_micros: row.get(1)?,
                reserved_tokens: row.get(2)?,
                reserved_micros: row.get(3)?,
            })
        })
        .optional()?
        .unwrap_or_default())
}

/// Adds deltas to a budget row (creating it); reservations never go below 0.
fn budget_add(tx: &Transaction<'_>, r: &BudgetRef, spent: (i64, i64), reserved: (i64, i64)) -> R<()> {
    tx.prepare_cached(
        "INSERT INTO budget_state(scope, win, window_start, spent_tokens, spent_micros, reserved_tokens, reserved_micros)
         VALUES (?1, ?2, ?3, ?4, ?5, MAX(0, ?6), MAX(0, ?7))
         ON CONFLICT(scope, win, window_start) DO UPDATE SET
           spent_tokens = spent_tokens + excluded.spent_tokens,
           spent_micros = spent_micros + excluded.spent_micros,
           reserved_tokens = MAX(0, reserved_tokens + ?6),
           reserved_micros = MAX(0, reserved_micros + ?7)",
    )?
    .execute(params![r.scope, r.win, r.start, spent.0, spent.1, reserved.0, reserved.1])?;
    Ok(())
}

/// The current window's usage of a budget.
pub(super) fn budget_usage(tx: &Transaction<'_>, scope: &str, budget: &BudgetSpec, now_ms: i64) -> R<BudgetUsage> {
    let r = budget_ref(scope, budget.window, now_ms);
    let row = budget_row(tx, &r)?;
    Ok(BudgetUsage {
        tokens: row.spent_tokens,
        cost_usd: micros_to_usd(row.spent_micros),
        reserved_tokens: row.reserved_tokens,
        reserved_cost_usd: micros_to_usd(row.reserved_micros),
        window_start: (budget.window != Window::None).then(|| rfc3339_ms(r.start)),
    })
}

pub(super) fn forget_scope(tx: &Transaction<'_>, scope: &str) -> R<()> {
    tx.execute("DELETE FROM budget_state WHERE scope = ?1", params![scope])?;
    Ok(())
}

/// Why a budget cannot cover an estimate, if it cannot.
fn budget_refusal(
    tx: &Transaction<'_>,
    r: &BudgetRef,
    budget: &BudgetSpec,
    what: &str,
    tokens: i64,
    micros: i64,
) -> R<Option<String>> {
    let row = budget_row(tx, r)?;
    if let Some(limit) = budget.tokens {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let need = row.spent_tokens.saturating_add(row.reserved_tokens).saturating_add(tokens);
        if need > limit {
            return Ok(Some(format!(
                "the {} token budget of the {what} is exhausted: used {} + reserved {} + estimate {tokens} > {limit}",
                budget.window.as_str(),
                row.spent_tokens,
                row.reserved_tokens
            )));
        }
    }
    if let Some(limit_usd) = budget.cost_usd {
        let limit = usd_to_micros(limit_usd);
        let need = row.spent_micros.saturating_add(row.reserved_micros).saturating_add(micros);
        if need > limit {
            return Ok(Some(format!(
                "the {} cost budget of the {what} (${limit_usd}) is exhausted: used ${} + reserved ${} + estimate ${}",
                budget.window.as_str(),
                micros_to_usd(row.spent_micros),
                micros_to_usd(row.reserved_micros),
                micros_to_usd(micros)
            )));
        }
    }
    Ok(None)
}

fn json_budget(s: Option<String>) -> R<Option<BudgetSpec>> {
    s.map(|s| serde_json::from_str(&s)).transpose().map_err(DbError::from)
}

// ------------------------------------------------------------ prices

type Catalog = Vec<(String, String, Price)>;

fn catalog(tx: &Transaction<'_>) -> R<Catalog> {
    let mut stmt =
        tx.prepare_cached("SELECT provider, model, input_micros, output_micros, cached_micros FROM prices")?;
    let rows = stmt.query_map([], |r| {
        Ok((r.get(0)?, r.get(1)?, Price { input: r.get(2)?, output: r.get(3)?, cached: r.get(4)? }))
    })?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

fn price_of(catalog: &Catalog, provider: &str, model: Option<&str>) -> Price {
    match_price(catalog, provider, model).copied().unwrap_or(FALLBACK_PRICE)
}

fn price_row(r: &Row<'_>) -> rusqlite::Result<PriceEntry> {
    Ok(PriceEntry {
        provider: r.get(0)?,
        model: r.get(1)?,
        input_per_million_usd: micros_to_usd(r.get(2)?),
        output_per_million_usd: micros_to_usd(r.get(3)?),
        cached_input_per_million_usd: r.get::<_, Option<i64>>(4)?.map(micros_to_usd),
        updated_at: rfc3339_ms(r.get(5)?),
    })
}

const PRICE_COLS: &str = "provider, model, input_micros, output_micros, cached_micros, updated_ms FROM prices";

pub(super) fn list_prices(tx: &Transaction<'_>) -> R<Vec<PriceEntry>> {
    let mut stmt = tx.prepare_cached(&format!("SELECT {PRICE_COLS} ORDER BY provider = '*', provider, model"))?;
    let rows = stmt.query_map([], price_row)?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

pub(super) fn put_price(tx: &Transaction<'_>, provider: &str, model: &str, p: &NewPrice, now_ms: i64) -> R<PriceEntry> {
    tx.execute(
        "INSERT INTO prices(provider, model, input_micros, output_micros, cached_micros, updated_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT(provider, model) DO UPDATE SET input_micros = excluded.input_micros,
           output_micros = excluded.output_micros, cached_micros = excluded.cached_micros, updated_ms = excluded.updated_ms",
        params![provider, model, p.input, p.output, p.cached, now_ms],
    )?;
    Ok(tx
        .prepare_cached(&format!("SELECT {PRICE_COLS} WHERE provider = ?1 AND model = ?2"))?
        .query_row(params![provider, model], price_row)?)
}

pub(super) fn delete_price(tx: &Transaction<'_>, provider: &str, model: &str) -> R<()> {
    if (provider, model) == CATCH_ALL {
        return Err(StoreError::Conflict(
            "the catch-all price */* cannot be deleted (unknown models would be free); PUT a new price instead".into(),
        )
        .into());
    }
    let n = tx.execute("DELETE FROM prices WHERE provider = ?1 AND model = ?2", params![provider, model])?;
    if n == 0 {
        return Err(StoreError::NotFound(format!("no price for {provider}/{model}")).into());
    }
    Ok(())
}

// ------------------------------------------------------------ credits

fn meta_i64(tx: &Transaction<'_>, key: &str) -> R<i64> {
    Ok(tx
        .prepare_cached("SELECT value FROM meta WHERE key = ?1")?
        .query_row(params![key], |r| r.get::<_, i64>(0))
        .optional()?
        .unwrap_or(0))
}

fn set_meta(tx: &Transaction<'_>, key: &str, value: i64) -> R<()> {
    tx.prepare_cached("INSERT INTO meta(key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = ?2")?
        .execute(params![key, value])?;
    Ok(())
}

pub(super) fn credits_enabled(tx: &Transaction<'_>) -> R<bool> {
    Ok(meta_i64(tx, "credits_enabled")? != 0)
}

fn credits_ref() -> BudgetRef {
    BudgetRef { scope: CREDITS_SCOPE.into(), win: Window::None.as_str().into(), start: 0 }
}

/// (balance = granted - spent, reserved), micro-USD.
fn credit_numbers(tx: &Transaction<'_>) -> R<(i64, i64)> {
    let granted = meta_i64(tx, "credits_granted")?;
    let row = budget_row(tx, &credits_ref())?;
    Ok((granted.saturating_sub(row.spent_micros), row.reserved_micros))
}

pub(super) fn get_credits(tx: &Transaction<'_>) -> R<Credits> {
    let (balance, reserved) = credit_numbers(tx)?;
    Ok(Credits {
        enabled: credits_enabled(tx)?,
        balance_usd: micros_to_usd(balance),
        reserved_usd: micros_to_usd(reserved),
    })
}

/// Adds to the balance. Returns whether credits became enabled (the first
/// grant ever enables them, unless they were switched explicitly before).
pub(super) fn add_credits(tx: &Transaction<'_>, micros: i64) -> R<bool> {
    let granted = meta_i64(tx, "credits_granted")?;
    set_meta(tx, "credits_granted", granted.saturating_add(micros))?;
    if meta_i64(tx, "credits_touched")? == 0 {
        set_meta(tx, "credits_touched", 1)?;
        if !credits_enabled(tx)? {
            set_meta(tx, "credits_enabled", 1)?;
            return Ok(true);
        }
    }
    Ok(false)
}

/// Switches credits on or off; returns whether that changed anything.
pub(super) fn set_credits_enabled(tx: &Transaction<'_>, enabled: bool) -> R<bool> {
    set_meta(tx, "credits_touched", 1)?;
    if credits_enabled(tx)? == enabled {
        return Ok(false);
    }
    set_meta(tx, "credits_enabled", i64::from(enabled))?;
    Ok(true)
}

// ------------------------------------------------------------ reservations

fn refused(by: RefusedBy, message: String) -> ReserveResponse {
    ReserveResponse { ok: false, reservation_id: None, refused_by: Some(by), message: Some(message) }
}

fn release(tx: &Transaction<'_>, refs: &[BudgetRef], tokens: i64, micros: i64) -> R<()> {
    for r in refs {
        budget_add(tx, r, (0, 0), (-tokens, -micros))?;
    }
    Ok(())
}

/// Releases reservations past their expiry and forgets old settled ones.
pub(super) fn sweep(tx: &Transaction<'_>, now_ms: i64) -> R<usize> {
    let expired = {
        let mut stmt = tx.prepare_cached(
            "SELECT id, tokens, micros, budgets_json FROM reservations WHERE released = 0 AND expires_ms <= ?1",
        )?;
        let rows = stmt.query_map(params![now_ms], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?, r.get::<_, i64>(2)?, r.get::<_, String>(3)?))
        })?;
        rows.collect::<Result<Vec<_>, _>>()?
    };
    for (id, tokens, micros, refs) in &expired {
        let refs: Vec<BudgetRef> = serde_json::from_str(refs)?;
        release(tx, &refs, *tokens, *micros)?;
        tx.prepare_cached("UPDATE reservations SET released = 1 WHERE id = ?1")?.execute(params![id])?;
    }
    if !expired.is_empty() {
        tracing::info!(count = expired.len(), "released expired reservations");
    }
    tx.prepare_cached("DELETE FROM reservations WHERE released = 1 AND created_ms < ?1")?
        .execute(params![now_ms.saturating_sub(RESERVATION_KEEP_MS)])?;
    Ok(expired.len())
}

pub(super) fn reserve(tx: &Transaction<'_>, req: &ReserveRequest, now_ms: i64) -> R<ReserveResponse> {
    sweep(tx, now_ms)?;
    let key: Option<(Option<String>, Option<String>)> = tx
        .prepare_cached("SELECT config_id, budget_json FROM access_keys WHERE id = ?1")?
        .query_row(params![req.access_key_id], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let Some((config_id, key_budget)) = key else {
        return Ok(refused(RefusedBy::Key, format!("unknown access key {}", req.access_key_id)));
    };
    let catalog = catalog(tx)?;
    let price = price_of(&catalog, &req.provider, req.model.as_deref());
    let tokens = to_i64(req.input_tokens).saturating_add(to_i64(req.output_tokens));
    let micros = cost_micros(&price, req.input_tokens.min(MAX_TOKENS), req.output_tokens.min(MAX_TOKENS), 0);
    let mut refs = Vec::new();

    if let Some(budget) = json_budget(key_budget)? {
        let r = budget_ref(&key_scope(&req.access_key_id), budget.window, now_ms);
        if let Some(msg) = budget_refusal(tx, &r, &budget, "access key", tokens, micros)? {
            return Ok(refused(RefusedBy::Key, msg));
        }
        refs.push(r);
    }
    if let Some(c) = &config_id {
        let budget: Option<String> = tx
            .prepare_cached("SELECT budget_json FROM configs WHERE id = ?1")?
            .query_row(params![c], |r| r.get(0))
            .optional()?
            .flatten();
        if let Some(budget) = json_budget(budget)? {
            let r = budget_ref(&config_scope(c), budget.window, now_ms);
            if let Some(msg) = budget_refusal(tx, &r, &budget, "access key configuration", tokens, micros)? {
                return Ok(refused(RefusedBy::Configuration, msg));
            }
            refs.push(r);
        }
    }
    if credits_enabled(tx)? {
        let (balance, reserved) = credit_numbers(tx)?;
        let available = balance.saturating_sub(reserved);
        if available <= 0 || available < micros {
            return Ok(refused(
                RefusedBy::Credits,
                format!(
                    "the credit balance cannot cover this request: balance ${} - reserved ${} < estimate ${}",
                    micros_to_usd(balance),
                    micros_to_usd(reserved),
                    micros_to_usd(micros)
                ),
            ));
        }
        refs.push(credits_ref());
    }

    let id = new_id("rsv_")?;
    tx.prepare_cached(
        "INSERT INTO reservations(id, request_id, access_key_id, tokens, micros, budgets_json, created_ms, expires_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?
    .execute(params![
        id,
        req.request_id,
        req.access_key_id,
        tokens,
        micros,
        serde_json::to_string(&refs)?,
        now_ms,
        now_ms.saturating_add(RESERVATION_TTL_MS)
    ])?;
    for r in &refs {
        budget_add(tx, r, (0, 0), (tokens, micros))?;
    }
    Ok(ReserveResponse { ok: true, reservation_id: Some(id), refused_by: None, message: None })
}

// ------------------------------------------------------------ usage

fn ms_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

pub(super) fn ingest(tx: &Transaction<'_>, records: &[UsageRecord], now_ms: i64) -> R<usize> {
    let catalog = catalog(tx)?;
    let mut inserted = 0;
    let mut requests: BTreeSet<&str> = BTreeSet::new();
    let mut settle: Vec<(&str, &str)> = Vec::new();
    let mut key_used: HashMap<&str, i64> = HashMap::new();
    let mut pk_used: HashMap<&str, i64> = HashMap::new();
    for rec in records {
        let (input, output, cached) =
            (rec.input_tokens.min(MAX_TOKENS), rec.output_tokens.min(MAX_TOKENS), rec.cached_tokens.min(MAX_TOKENS));
        let cost = cost_micros(&price_of(&catalog, &rec.provider, rec.model.as_deref()), input, output, cached);
        let id = new_id("usg_")?;
        let n = tx
            .prepare_cached(
                "INSERT OR IGNORE INTO usage(id, request_id, attempt, access_key_id, config_id, provider, model,
                   provider_key_id, final, status, streaming, input_tokens, output_tokens, cached_tokens,
                   reasoning_tokens, cost_micros, started_ms, ended_ms, reservation_id)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19)",
            )?
            .execute(params![
                id,
                rec.request_id,
                rec.attempt,
                rec.access_key_id,
                rec.config_id,
                rec.provider,
                rec.model,
                rec.provider_key_id,
                rec.final_attempt,
                rec.status,
                rec.streaming,
                to_i64(input),
                to_i64(output),
                to_i64(cached),
                to_i64(rec.reasoning_tokens),
                cost,
                ms_i64(rec.started_ms),
                ms_i64(rec.ended_ms),
                rec.reservation_id
            ])?;
        if n == 0 {
            continue;
        }
        inserted += 1;
        requests.insert(&rec.request_id);
        if let Some(r) = &rec.reservation_id {
            settle.push((r, &rec.request_id));
        }
        let ended = ms_i64(rec.ended_ms);
        let e = key_used.entry(&rec.access_key_id).or_insert(0);
        *e = (*e).max(ended);
        if let Some(pk) = &rec.provider_key_id {
            let e = pk_used.entry(pk).or_insert(0);
            *e = (*e).max(ended);
        }
    }
    for (rsv, request_id) in settle {
        let row: Option<(String, i64, i64, String, bool, Option<i64>)> = tx
            .prepare_cached(
                "SELECT request_id, tokens, micros, budgets_json, released, settled_ms FROM reservations WHERE id = ?1",
            )?
            .query_row(params![rsv], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?)))
            .optional()?;
        let Some((rid, tokens, micros, refs, released, settled)) = row else {
            tracing::warn!(reservation = rsv, "usage quotes an unknown reservation");
            continue;
        };
        if settled.is_some() {
            continue;
        }
        if rid != request_id {
            tracing::warn!(reservation = rsv, "usage quotes a reservation of another request");
            continue;
        }
        if !released {
            let refs: Vec<BudgetRef> = serde_json::from_str(&refs)?;
            release(tx, &refs, tokens, micros)?;
        }
        tx.prepare_cached("UPDATE reservations SET released = 1, settled_ms = ?2 WHERE id = ?1")?
            .execute(params![rsv, now_ms])?;
    }
    // Charge every not-yet-charged record of a settled request, once.
    for request_id in requests {
        let refs: Option<String> = tx
            .prepare_cached(
                "SELECT budgets_json FROM reservations WHERE request_id = ?1 AND settled_ms IS NOT NULL LIMIT 1",
            )?
            .query_row(params![request_id], |r| r.get(0))
            .optional()?;
        let Some(refs) = refs else { continue };
        let refs: Vec<BudgetRef> = serde_json::from_str(&refs)?;
        let (tokens, micros): (i64, i64) = tx
            .prepare_cached(
                "SELECT COALESCE(SUM(input_tokens + output_tokens + cached_tokens), 0), COALESCE(SUM(cost_micros), 0)
                 FROM usage WHERE request_id = ?1 AND charged = 0",
            )?
            .query_row(params![request_id], |r| Ok((r.get(0)?, r.get(1)?)))?;
        tx.prepare_cached("UPDATE usage SET charged = 1 WHERE request_id = ?1 AND charged = 0")?
            .execute(params![request_id])?;
        for r in &refs {
            budget_add(tx, r, (tokens, micros), (0, 0))?;
        }
    }
    for (id, ended) in key_used {
        tx.prepare_cached("UPDATE access_keys SET last_used_ms = MAX(COALESCE(last_used_ms, 0), ?2) WHERE id = ?1")?
            .execute(params![id, ended])?;
    }
    for (id, ended) in pk_used {
        tx.prepare_cached("UPDATE provider_keys SET last_used_ms = MAX(COALESCE(last_used_ms, 0), ?2) WHERE id = ?1")?
            .execute(params![id, ended])?;
    }
    Ok(inserted)
}

const USAGE_FILTER: &str = "(?1 IS NULL OR started_ms >= ?1) AND (?2 IS NULL OR started_ms < ?2)
     AND (?3 IS NULL OR access_key_id = ?3) AND (?4 IS NULL OR provider = ?4) AND (?5 IS NULL OR model = ?5)";

fn usage_row(r: &Row<'_>) -> rusqlite::Result<UsageItem> {
    Ok(UsageItem {
        id: r.get(0)?,
        request_id: r.get(1)?,
        access_key_id: r.get(2)?,
        access_key_configuration_id: r.get(3)?,
        provider: r.get(4)?,
        model: r.get(5)?,
        provider_key_id: r.get(6)?,
        attempt: r.get(7)?,
        final_attempt: r.get(8)?,
        status: r.get(9)?,
        streaming: r.get(10)?,
        input_tokens: r.get(11)?,
        output_tokens: r.get(12)?,
        cached_tokens: r.get(13)?,
        reasoning_tokens: r.get(14)?,
        cost_usd: micros_to_usd(r.get(15)?),
        started_at: rfc3339_ms(r.get(16)?),
        ended_at: rfc3339_ms(r.get(17)?),
    })
}

pub(super) fn list_usage(tx: &Transaction<'_>, f: &UsageFilter, page: &PageRequest) -> R<Vec<UsageItem>> {
    let limit = i64::try_from(page.limit).unwrap_or(100).saturating_add(1);
    let mut stmt = tx.prepare_cached(&format!(
        "SELECT id, request_id, access_key_id, config_id, provider, model, provider_key_id, attempt, final, status,
           streaming, input_tokens, output_tokens, cached_tokens, reasoning_tokens, cost_micros, started_ms, ended_ms
         FROM usage WHERE {USAGE_FILTER} AND (?6 IS NULL OR id < ?6) ORDER BY id DESC LIMIT ?7"
    ))?;
    let rows = stmt.query_map(
        params![f.from_ms, f.to_ms, f.access_key_id, f.provider, f.model, page.before_id, limit],
        usage_row,
    )?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

pub(super) fn usage_summary(tx: &Transaction<'_>, f: &UsageFilter, group_by: GroupBy) -> R<Vec<SummaryRow>> {
    let group = match group_by {
        GroupBy::Key => "access_key_id",
        GroupBy::Provider => "provider",
        GroupBy::Model => "provider || '/' || COALESCE(model, '')",
        GroupBy::Day => "strftime('%Y-%m-%d', started_ms / 1000, 'unixepoch')",
    };
    let mut stmt = tx.prepare(&format!(
        "SELECT {group} AS g, COALESCE(SUM(final), 0), COALESCE(SUM(attempt > 0), 0), COALESCE(SUM(input_tokens), 0),
           COALESCE(SUM(output_tokens), 0), COALESCE(SUM(cost_micros), 0)
         FROM usage WHERE {USAGE_FILTER} GROUP BY g ORDER BY g"
    ))?;
    let rows = stmt.query_map(params![f.from_ms, f.to_ms, f.access_key_id, f.provider, f.model], |r| {
        Ok(SummaryRow {
            group: r.get::<_, Option<String>>(0)?.unwrap_or_default(),
            requests: r.get(1)?,
            attempts: r.get(2)?,
            input_tokens: r.get(3)?,
            output_tokens: r.get(4)?,
            cost_usd: micros_to_usd(r.get(5)?),
        })
    })?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}
