//! [`Ledger`] on SQLite: the rows the billing policy reads and writes, in the
//! caller's transaction. Statements only; every rule is in `crate::policy`.

use rusqlite::{params, OptionalExtension, Transaction};

use super::error::{DbError, R};
use super::{all, first};
use crate::model::BudgetSpec;
use crate::policy::budget::{BudgetRef, BudgetRow};
use crate::policy::credits::CreditState;
use crate::policy::ledger::{Catalog, KeyBudgets, Ledger, Reservation, Uncharged, UsageRow};
use crate::storage::rows::{self, json_opt};

pub(super) struct SqlLedger<'a, 'c>(pub(super) &'a Transaction<'c>);

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

/// Deletes every budget row of a scope (its key or configuration is gone).
pub(super) fn forget_scope(tx: &Transaction<'_>, scope: &str) -> R<()> {
    tx.execute("DELETE FROM budget_state WHERE scope = ?1", params![scope])?;
    Ok(())
}

impl SqlLedger<'_, '_> {
    /// Runs one cached statement.
    fn exec(&self, sql: &str, params: impl rusqlite::Params) -> R<()> {
        self.0.prepare_cached(sql)?.execute(params)?;
        Ok(())
    }
}

impl Ledger for SqlLedger<'_, '_> {
    type Error = DbError;

    fn budget_row(&mut self, at: &BudgetRef) -> R<BudgetRow> {
        let sql = format!("SELECT {} WHERE scope = ?1 AND win = ?2 AND window_start = ?3", rows::BUDGET_ROW_COLS);
        Ok(first(self.0, &sql, params![at.scope, at.win, at.start], |r| rows::budget_row(r))?.unwrap_or_default())
    }

    fn put_budget_row(&mut self, at: &BudgetRef, row: &BudgetRow) -> R<()> {
        self.0
            .prepare_cached(
                "INSERT INTO budget_state(scope, win, window_start, spent_tokens, spent_micros, reserved_tokens, reserved_micros)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT(scope, win, window_start) DO UPDATE SET
                   spent_tokens = excluded.spent_tokens, spent_micros = excluded.spent_micros,
                   reserved_tokens = excluded.reserved_tokens, reserved_micros = excluded.reserved_micros",
            )?
            .execute(params![
                at.scope,
                at.win,
                at.start,
                row.spent_tokens,
                row.spent_micros,
                row.reserved_tokens,
                row.reserved_micros
            ])?;
        Ok(())
    }

    fn credit_state(&mut self) -> R<CreditState> {
        rows::credit_state(|key| meta_i64(self.0, key))
    }

    fn put_credit_state(&mut self, state: &CreditState) -> R<()> {
        rows::credit_meta(state).iter().try_for_each(|(key, value)| set_meta(self.0, key, *value))
    }

    fn prices(&mut self) -> R<Catalog> {
        all(self.0, &format!("SELECT {}", rows::PRICE_COLS), [], |r| rows::catalog_entry(r))
    }

    fn key_budgets(&mut self, access_key_id: &str) -> R<Option<KeyBudgets>> {
        let key: Option<(Option<String>, Option<String>)> = self
            .0
            .prepare_cached("SELECT config_id, budget_json FROM access_keys WHERE id = ?1")?
            .query_row(params![access_key_id], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        key.map(|(config_id, budget)| Ok(KeyBudgets { config_id, budget: json_opt(budget)? })).transpose()
    }

    fn config_budget(&mut self, config_id: &str) -> R<Option<BudgetSpec>> {
        let budget: Option<String> = self
            .0
            .prepare_cached("SELECT budget_json FROM configs WHERE id = ?1")?
            .query_row(params![config_id], |r| r.get(0))
            .optional()?
            .flatten();
        Ok(json_opt(budget)?)
    }

    fn insert_reservation(&mut self, r: &Reservation) -> R<()> {
        self.0
            .prepare_cached(
                "INSERT INTO reservations(id, request_id, access_key_id, tokens, micros, budgets_json, created_ms,
                   expires_ms, released, settled_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            )?
            .execute(params![
                r.id,
                r.request_id,
                r.access_key_id,
                r.tokens,
                r.micros,
                serde_json::to_string(&r.holds)?,
                r.created_ms,
                r.expires_ms,
                r.released,
                r.settled_ms
            ])?;
        Ok(())
    }

    fn reservation(&mut self, id: &str) -> R<Option<Reservation>> {
        first(self.0, &format!("SELECT {} WHERE id = ?1", rows::RESERVATION_COLS), params![id], |r| {
            rows::reservation(r)
        })
    }

    fn expired_reservations(&mut self, now_ms: i64) -> R<Vec<Reservation>> {
        let sql = format!("SELECT {} WHERE released = 0 AND expires_ms <= ?1", rows::RESERVATION_COLS);
        all(self.0, &sql, params![now_ms], |r| rows::reservation(r))
    }

    fn mark_released(&mut self, id: &str) -> R<()> {
        self.exec("UPDATE reservations SET released = 1 WHERE id = ?1", params![id])
    }

    fn mark_settled(&mut self, id: &str, now_ms: i64) -> R<()> {
        self.exec("UPDATE reservations SET released = 1, settled_ms = ?2 WHERE id = ?1", params![id, now_ms])
    }

    fn forget_released(&mut self, created_before_ms: i64) -> R<()> {
        self.exec("DELETE FROM reservations WHERE released = 1 AND created_ms < ?1", params![created_before_ms])
    }

    fn settled_holds(&mut self, request_id: &str) -> R<Option<Vec<BudgetRef>>> {
        let holds: Option<String> = self
            .0
            .prepare_cached(
                "SELECT budgets_json FROM reservations WHERE request_id = ?1 AND settled_ms IS NOT NULL LIMIT 1",
            )?
            .query_row(params![request_id], |r| r.get(0))
            .optional()?;
        Ok(holds.map(|h| serde_json::from_str(&h)).transpose()?)
    }

    fn insert_usage(&mut self, u: &UsageRow<'_>) -> R<bool> {
        let rec = u.record;
        let n = self
            .0
            .prepare_cached(
                "INSERT OR IGNORE INTO usage(id, request_id, attempt, access_key_id, config_id, provider, model,
                   provider_key_id, final, status, streaming, input_tokens, output_tokens, cached_tokens,
                   reasoning_tokens, cost_micros, started_ms, ended_ms, reservation_id, estimated)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20)",
            )?
            .execute(params![
                u.id,
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
                u.input_tokens,
                u.output_tokens,
                u.cached_tokens,
                u.reasoning_tokens,
                u.cost_micros,
                u.started_ms,
                u.ended_ms,
                rec.reservation_id,
                rec.estimated
            ])?;
        Ok(n > 0)
    }

    fn uncharged_usage(&mut self, request_id: &str) -> R<Vec<Uncharged>> {
        let sql = format!("SELECT {} WHERE request_id = ?1 AND charged = 0", rows::UNCHARGED_COLS);
        all(self.0, &sql, params![request_id], |r| rows::uncharged(r))
    }

    fn mark_charged(&mut self, request_id: &str) -> R<()> {
        self.exec("UPDATE usage SET charged = 1 WHERE request_id = ?1 AND charged = 0", params![request_id])
    }

    fn touch_access_key(&mut self, id: &str, ms: i64) -> R<()> {
        self.exec(
            "UPDATE access_keys SET last_used_ms = MAX(COALESCE(last_used_ms, 0), ?2) WHERE id = ?1",
            params![id, ms],
        )
    }

    fn touch_provider_key(&mut self, id: &str, ms: i64) -> R<()> {
        self.exec(
            "UPDATE provider_keys SET last_used_ms = MAX(COALESCE(last_used_ms, 0), ?2) WHERE id = ?1",
            params![id, ms],
        )
    }
}
