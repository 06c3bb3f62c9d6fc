//! Reports on SQLite: usage listings and summaries, and the price catalog.

use rusqlite::{params, Transaction};

use super::error::R;
use super::{all, first};
use crate::model::{PriceEntry, SummaryRow, UsageItem};
use crate::policy::prices;
use crate::storage::rows::{self, limit_i64};
use crate::storage::{GroupBy, NewPrice, PageRequest, UsageFilter};

pub(super) fn list_prices(tx: &Transaction<'_>) -> R<Vec<PriceEntry>> {
    let sql = format!("SELECT {} ORDER BY provider = '*', provider, model", rows::PRICE_COLS);
    all(tx, &sql, [], |r| rows::price_entry(r))
}

pub(super) fn put_price(tx: &Transaction<'_>, provider: &str, model: &str, p: &NewPrice, now_ms: i64) -> R<PriceEntry> {
    tx.execute(
        "INSERT INTO prices(provider, model, input_micros, output_micros, cached_micros, updated_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT(provider, model) DO UPDATE SET input_micros = excluded.input_micros,
           output_micros = excluded.output_micros, cached_micros = excluded.cached_micros, updated_ms = excluded.updated_ms",
        params![provider, model, p.input, p.output, p.cached, now_ms],
    )?;
    let sql = format!("SELECT {} WHERE provider = ?1 AND model = ?2", rows::PRICE_COLS);
    first(tx, &sql, params![provider, model], |r| rows::price_entry(r))?
        .ok_or_else(|| prices::not_found(provider, model).into())
}

pub(super) fn delete_price(tx: &Transaction<'_>, provider: &str, model: &str) -> R<()> {
    prices::may_delete(provider, model)?;
    let n = tx.execute("DELETE FROM prices WHERE provider = ?1 AND model = ?2", params![provider, model])?;
    if n == 0 {
        return Err(prices::not_found(provider, model).into());
    }
    Ok(())
}

const USAGE_FILTER: &str = "(?1 IS NULL OR started_ms >= ?1) AND (?2 IS NULL OR started_ms < ?2)
     AND (?3 IS NULL OR access_key_id = ?3) AND (?4 IS NULL OR provider = ?4) AND (?5 IS NULL OR model = ?5)";

pub(super) fn list_usage(tx: &Transaction<'_>, f: &UsageFilter, page: &PageRequest) -> R<Vec<UsageItem>> {
    let sql = format!(
        "SELECT {} WHERE {USAGE_FILTER} AND (?6 IS NULL OR id < ?6) ORDER BY id DESC LIMIT ?7",
        rows::USAGE_COLS
    );
    let params = params![f.from_ms, f.to_ms, f.access_key_id, f.provider, f.model, page.before_id, limit_i64(page)];
    all(tx, &sql, params, |r| rows::usage_item(r))
}

pub(super) fn usage_summary(tx: &Transaction<'_>, f: &UsageFilter, group_by: GroupBy) -> R<Vec<SummaryRow>> {
    let group = match group_by {
        GroupBy::Key => "access_key_id",
        GroupBy::Provider => "provider",
        GroupBy::Model => "provider || '/' || COALESCE(model, '')",
        GroupBy::Day => "strftime('%Y-%m-%d', started_ms / 1000, 'unixepoch')",
    };
    let sql = format!(
        "SELECT {group} AS g, COALESCE(SUM(final), 0), COALESCE(SUM(attempt > 0), 0), COALESCE(SUM(input_tokens), 0),
           COALESCE(SUM(output_tokens), 0), COALESCE(SUM(cost_micros), 0)
         FROM usage WHERE {USAGE_FILTER} GROUP BY g ORDER BY g"
    );
    all(tx, &sql, params![f.from_ms, f.to_ms, f.access_key_id, f.provider, f.model], |r| rows::summary_row(r))
}
