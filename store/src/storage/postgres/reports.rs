//! Reports on PostgreSQL: usage listings and summaries, and the price catalog.

use postgres::Transaction;

use super::error::R;
use crate::model::{PriceEntry, SummaryRow, UsageItem};
use crate::policy::prices;
use crate::storage::rows::{self, limit_i64};
use crate::storage::{GroupBy, NewPrice, PageRequest, UsageFilter};

pub(super) fn list_prices(tx: &mut Transaction<'_>) -> R<Vec<PriceEntry>> {
    let sql = format!("SELECT {} ORDER BY provider = '*', provider, model", rows::PRICE_COLS);
    tx.query(&sql, &[])?.iter().map(rows::price_entry).collect()
}

pub(super) fn put_price(
    tx: &mut Transaction<'_>,
    provider: &str,
    model: &str,
    p: &NewPrice,
    now_ms: i64,
) -> R<PriceEntry> {
    tx.execute(
        "INSERT INTO prices(provider, model, input_micros, output_micros, cached_micros, updated_ms)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (provider, model) DO UPDATE SET input_micros = excluded.input_micros,
           output_micros = excluded.output_micros, cached_micros = excluded.cached_micros, updated_ms = excluded.updated_ms",
        &[&provider, &model, &p.input, &p.output, &p.cached, &now_ms],
    )?;
    let sql = format!("SELECT {} WHERE provider = $1 AND model = $2", rows::PRICE_COLS);
    rows::price_entry(&tx.query_one(&sql, &[&provider, &model])?)
}

pub(super) fn delete_price(tx: &mut Transaction<'_>, provider: &str, model: &str) -> R<()> {
    prices::may_delete(provider, model)?;
    let n = tx.execute("DELETE FROM prices WHERE provider = $1 AND model = $2", &[&provider, &model])?;
    if n == 0 {
        return Err(prices::not_found(provider, model).into());
    }
    Ok(())
}

const USAGE_FILTER: &str = "($1::BIGINT IS NULL OR started_ms >= $1) AND ($2::BIGINT IS NULL OR started_ms < $2)
     AND ($3::TEXT IS NULL OR access_key_id = $3) AND ($4::TEXT IS NULL OR provider = $4)
     AND ($5::TEXT IS NULL OR model = $5)";

pub(super) fn list_usage(tx: &mut Transaction<'_>, f: &UsageFilter, page: &PageRequest) -> R<Vec<UsageItem>> {
    let sql = format!(
        "SELECT {} WHERE {USAGE_FILTER} AND ($6::TEXT IS NULL OR id < $6) ORDER BY id DESC LIMIT $7",
        rows::USAGE_COLS
    );
    let limit = limit_i64(page);
    tx.query(&sql, &[&f.from_ms, &f.to_ms, &f.access_key_id, &f.provider, &f.model, &page.before_id, &limit])?
        .iter()
        .map(rows::usage_item)
        .collect()
}

pub(super) fn usage_summary(tx: &mut Transaction<'_>, f: &UsageFilter, group_by: GroupBy) -> R<Vec<SummaryRow>> {
    let group = match group_by {
        GroupBy::Key => "access_key_id",
        GroupBy::Provider => "provider",
        GroupBy::Model => "provider || '/' || COALESCE(model, '')",
        GroupBy::Day => "to_char(to_timestamp(started_ms / 1000) AT TIME ZONE 'UTC', 'YYYY-MM-DD')",
    };
    let sql = format!(
        "SELECT {group} AS g, COALESCE(SUM(final::INT), 0)::BIGINT, COALESCE(SUM((attempt > 0)::INT), 0)::BIGINT,
           COALESCE(SUM(input_tokens), 0)::BIGINT, COALESCE(SUM(output_tokens), 0)::BIGINT,
           COALESCE(SUM(cost_micros), 0)::BIGINT
         FROM usage WHERE {USAGE_FILTER} GROUP BY g ORDER BY g"
    );
    tx.query(&sql, &[&f.from_ms, &f.to_ms, &f.access_key_id, &f.provider, &f.model])?
        .iter()
        .map(rows::summary_row)
        .collect()
}
