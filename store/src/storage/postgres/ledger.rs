//! [`Ledger`] on PostgreSQL: the rows the billing policy reads and writes, in
//! the caller's (serializable) transaction. Statements only; every rule is in
//! `crate::policy`, and every row is mapped by `storage::rows`.

use postgres::types::ToSql;
use postgres::Transaction;

use super::error::R;
use crate::model::BudgetSpec;
use crate::policy::budget::{BudgetRef, BudgetRow};
use crate::policy::credits::CreditState;
use crate::policy::ledger::{Catalog, KeyBudgets, Ledger, Reservation, Uncharged, UsageRow};
use crate::storage::rows::{self, json_opt, Cells};

pub(super) struct PgLedger<'a, 'c>(pub(super) &'a mut Transaction<'c>);

type P<'a> = &'a (dyn ToSql + Sync);

fn meta_i64(tx: &mut Transaction<'_>, key: &str) -> R<i64> {
    Ok(tx.query_opt("SELECT value FROM meta WHERE key = $1", &[&key])?.map(|r| r.int(0)).transpose()?.unwrap_or(0))
}

fn set_meta(tx: &mut Transaction<'_>, key: &str, value: i64) -> R<()> {
    tx.execute(
        "INSERT INTO meta(key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        &[&key, &value],
    )?;
    Ok(())
}

/// Deletes every budget row of a scope (its key or configuration is gone).
pub(super) fn forget_scope(tx: &mut Transaction<'_>, scope: &str) -> R<()> {
    tx.execute("DELETE FROM budget_state WHERE scope = $1", &[&scope])?;
    Ok(())
}

impl PgLedger<'_, '_> {
    /// Runs one statement.
    fn exec(&mut self, sql: &str, params: &[P<'_>]) -> R<()> {
        self.0.execute(sql, params)?;
        Ok(())
    }

    fn all<T>(&mut self, sql: &str, params: &[P<'_>], map: fn(&postgres::Row) -> R<T>) -> R<Vec<T>> {
        self.0.query(sql, params)?.iter().map(map).collect()
    }

    fn opt<T>(&mut self, sql: &str, params: &[P<'_>], map: fn(&postgres::Row) -> R<T>) -> R<Option<T>> {
        self.0.query_opt(sql, params)?.as_ref().map(map).transpose()
    }
}

impl Ledger for PgLedger<'_, '_> {
    type Error = super::error::PgError;

    fn budget_row(&mut self, at: &BudgetRef) -> R<BudgetRow> {
        let sql = format!("SELECT {} WHERE scope = $1 AND win = $2 AND window_start = $3", rows::BUDGET_ROW_COLS);
        Ok(self.opt(&sql, &[&at.scope, &at.win, &at.start], rows::budget_row)?.unwrap_or_default())
    }

    fn put_budget_row(&mut self, at: &BudgetRef, row: &BudgetRow) -> R<()> {
        self.exec(
            "INSERT INTO budget_state(scope, win, window_start, spent_tokens, spent_micros, reserved_tokens, reserved_micros)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (scope, win, window_start) DO UPDATE SET
               spent_tokens = excluded.spent_tokens, spent_micros = excluded.spent_micros,
               reserved_tokens = excluded.reserved_tokens, reserved_micros = excluded.reserved_micros",
            &[
                &at.scope,
                &at.win,
                &at.start,
                &row.spent_tokens,
                &row.spent_micros,
                &row.reserved_tokens,
                &row.reserved_micros,
            ],
        )
    }

    fn credit_state(&mut self) -> R<CreditState> {
        rows::credit_state(|key| meta_i64(self.0, key))
    }

    fn put_credit_state(&mut self, state: &CreditState) -> R<()> {
        rows::credit_meta(state).iter().try_for_each(|(key, value)| set_meta(self.0, key, *value))
    }

    fn prices(&mut self) -> R<Catalog> {
        self.all(&format!("SELECT {}", rows::PRICE_COLS), &[], rows::catalog_entry)
    }

    fn key_budgets(&mut self, access_key_id: &str) -> R<Option<KeyBudgets>> {
        let key = self.opt("SELECT config_id, budget_json FROM access_keys WHERE id = $1", &[&access_key_id], |r| {
            Ok((r.opt_text(0)?, r.opt_text(1)?))
        })?;
        key.map(|(config_id, budget)| Ok(KeyBudgets { config_id, budget: json_opt(budget)? })).transpose()
    }

    fn config_budget(&mut self, config_id: &str) -> R<Option<BudgetSpec>> {
        let budget = self.opt("SELECT budget_json FROM configs WHERE id = $1", &[&config_id], |r| r.opt_text(0))?;
        Ok(json_opt(budget.flatten())?)
    }

    fn insert_reservation(&mut self, r: &Reservation) -> R<()> {
        self.exec(
            "INSERT INTO reservations(id, request_id, access_key_id, tokens, micros, budgets_json, created_ms,
               expires_ms, released, settled_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            &[
                &r.id,
                &r.request_id,
                &r.access_key_id,
                &r.tokens,
                &r.micros,
                &serde_json::to_string(&r.holds)?,
                &r.created_ms,
                &r.expires_ms,
                &r.released,
                &r.settled_ms,
            ],
        )
    }

    fn reservation(&mut self, id: &str) -> R<Option<Reservation>> {
        self.opt(&format!("SELECT {} WHERE id = $1", rows::RESERVATION_COLS), &[&id], rows::reservation)
    }

    fn expired_reservations(&mut self, now_ms: i64) -> R<Vec<Reservation>> {
        let sql = format!("SELECT {} WHERE NOT released AND expires_ms <= $1", rows::RESERVATION_COLS);
        self.all(&sql, &[&now_ms], rows::reservation)
    }

    fn mark_released(&mut self, id: &str) -> R<()> {
        self.exec("UPDATE reservations SET released = TRUE WHERE id = $1", &[&id])
    }

    fn mark_settled(&mut self, id: &str, now_ms: i64) -> R<()> {
        self.exec("UPDATE reservations SET released = TRUE, settled_ms = $2 WHERE id = $1", &[&id, &now_ms])
    }

    fn forget_released(&mut self, created_before_ms: i64) -> R<()> {
        self.exec("DELETE FROM reservations WHERE released AND created_ms < $1", &[&created_before_ms])
    }

    fn settled_holds(&mut self, request_id: &str) -> R<Option<Vec<BudgetRef>>> {
        let holds = self.opt(
            "SELECT budgets_json FROM reservations WHERE request_id = $1 AND settled_ms IS NOT NULL LIMIT 1",
            &[&request_id],
            |r| r.text(0),
        )?;
        Ok(holds.map(|h| serde_json::from_str(&h)).transpose()?)
    }

    fn insert_usage(&mut self, u: &UsageRow<'_>) -> R<bool> {
        let rec = u.record;
        let n = self.0.execute(
            "INSERT INTO usage(id, request_id, attempt, access_key_id, config_id, provider, model,
               provider_key_id, final, status, streaming, input_tokens, output_tokens, cached_tokens,
               reasoning_tokens, cost_micros, started_ms, ended_ms, reservation_id, estimated)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20)
             ON CONFLICT DO NOTHING",
            &[
                &u.id,
                &rec.request_id,
                &i64::from(rec.attempt),
                &rec.access_key_id,
                &rec.config_id,
                &rec.provider,
                &rec.model,
                &rec.provider_key_id,
                &rec.final_attempt,
                &i64::from(rec.status),
                &rec.streaming,
                &u.input_tokens,
                &u.output_tokens,
                &u.cached_tokens,
                &u.reasoning_tokens,
                &u.cost_micros,
                &u.started_ms,
                &u.ended_ms,
                &rec.reservation_id,
                &rec.estimated,
            ],
        )?;
        Ok(n > 0)
    }

    fn uncharged_usage(&mut self, request_id: &str) -> R<Vec<Uncharged>> {
        let sql = format!("SELECT {} WHERE request_id = $1 AND NOT charged", rows::UNCHARGED_COLS);
        self.all(&sql, &[&request_id], rows::uncharged)
    }

    fn mark_charged(&mut self, request_id: &str) -> R<()> {
        self.exec("UPDATE usage SET charged = TRUE WHERE request_id = $1 AND NOT charged", &[&request_id])
    }

    fn touch_access_key(&mut self, id: &str, ms: i64) -> R<()> {
        self.exec(
            "UPDATE access_keys SET last_used_ms = GREATEST(COALESCE(last_used_ms, 0), $2) WHERE id = $1",
            &[&id, &ms],
        )
    }

    fn touch_provider_key(&mut self, id: &str, ms: i64) -> R<()> {
        self.exec(
            "UPDATE provider_keys SET last_used_ms = GREATEST(COALESCE(last_used_ms, 0), $2) WHERE id = $1",
            &[&id, &ms],
        )
    }
}
