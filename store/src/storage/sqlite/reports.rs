//! Reports on SQLite: usage listings and summaries, and the price catalog.

use rusqlite::{params, Row, Transaction};

use super::error::R;
use crate::ids::rfc3339_ms;
use crate::model::{PriceEntry, SummaryRow, UsageItem};
use crate::policy::prices;
use crate::pricing::micros_to_usd;
use crate::storage::{GroupBy, NewPrice, PageRequest, UsageFilter};

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
    prices::may_delete(provider, model)?;
    let n = tx.execute("DELETE FROM prices WHERE provider = ?1 AND model = ?2", params![provider, model])?;
    if n == 0 {
        return Err(prices::not_found(provider, model).into());
    }
    Ok(())
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
    let limit = super::limit_i64(page);
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
