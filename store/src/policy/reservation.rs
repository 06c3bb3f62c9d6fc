//! Reservation accounting: what a reservation holds, when it is refused (and by
//! which budget), what is released, settled and charged. Driven over a
//! [`Ledger`] inside the backend's transaction.
//!
//! A reservation holds its estimate against every budget that applies (the
//! key's, its configuration's, the credits). It is released when it expires
//! unsettled, or settled when a usage record quotes it: then its hold goes and
//! every not yet charged record of its request is charged, once, to the same
//! budget rows.

use std::collections::{BTreeSet, HashMap};

use keygate_proto::lookup::{RefusedBy, ReserveRequest, ReserveResponse, UsageRecord};

use super::alerts::{self, AlertLedger};
use super::budget::{self, config_scope, key_scope, BudgetRef, Delta};
use super::credits;
use super::ledger::{Catalog, Ledger, Reservation, Uncharged, UsageRow};
use super::prices::price_of;
use crate::error::StoreError;
use crate::ids::new_id;
use crate::pricing::{cost_micros, RESERVATION_TTL_MS};

/// Per-record token counts are clamped to this, so sums never overflow.
pub const MAX_TOKENS: u64 = 1_000_000_000_000;
/// Settled reservations are kept this long (late records of their request
/// still get charged), then deleted by the sweep.
pub const RESERVATION_KEEP_MS: i64 = 7 * 24 * 3600 * 1000;

/// A token count as stored: clamped to [`MAX_TOKENS`].
pub fn tokens_i64(v: u64) -> i64 {
    i64::try_from(v.min(MAX_TOKENS)).unwrap_or(i64::MAX)
}

fn ms_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Fallback models priced per reservation (the filter sends at most 8).
const MAX_FALLBACKS: usize = 8;

/// What a request is estimated to use: (tokens, micro-USD), input and output
/// at the catalog's price for its provider and model, or for the dearest of
/// its fallbacks (any of them may serve).
pub fn estimate(catalog: &Catalog, req: &ReserveRequest) -> (i64, i64) {
    let tokens = tokens_i64(req.input_tokens).saturating_add(tokens_i64(req.output_tokens));
    let (input, output) = (req.input_tokens.min(MAX_TOKENS), req.output_tokens.min(MAX_TOKENS));
    let models = std::iter::once((req.provider.as_str(), req.model.as_deref()))
        .chain(req.fallbacks.iter().take(MAX_FALLBACKS).map(|f| (f.provider.as_str(), f.model.as_deref())));
    let micros = models.map(|(p, m)| cost_micros(&price_of(catalog, p, m), input, output, 0)).max().unwrap_or(0);
    (tokens, micros)
}

/// A usage record as stored under `id`: counts clamped, cost at the catalog's price.
pub fn usage_row<'a>(catalog: &Catalog, rec: &'a UsageRecord, id: String) -> UsageRow<'a> {
    let (input, output, cached) =
        (rec.input_tokens.min(MAX_TOKENS), rec.output_tokens.min(MAX_TOKENS), rec.cached_tokens.min(MAX_TOKENS));
    let cost = cost_micros(&price_of(catalog, &rec.provider, rec.model.as_deref()), input, output, cached);
    UsageRow {
        id,
        record: rec,
        input_tokens: tokens_i64(input),
        output_tokens: tokens_i64(output),
        cached_tokens: tokens_i64(cached),
        reasoning_tokens: tokens_i64(rec.reasoning_tokens),
        cost_micros: cost,
        started_ms: ms_i64(rec.started_ms),
        ended_ms: ms_i64(rec.ended_ms),
    }
}

/// What charging a request's records costs its budgets: (tokens, micro-USD);
/// input, output and cached tokens count.
pub fn charge(records: &[Uncharged]) -> (i64, i64) {
    records.iter().fold((0i64, 0i64), |(t, m), r| {
        (
            t.saturating_add(r.input_tokens).saturating_add(r.output_tokens).saturating_add(r.cached_tokens),
            m.saturating_add(r.cost_micros),
        )
    })
}

/// What a usage record quoting a reservation does to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settlement {
    /// Already settled by an earlier record: nothing.
    AlreadySettled,
    /// The reservation belongs to another request: ignored (and logged).
    OtherRequest,
    /// Settle it; `release` its hold first unless the sweep already did.
    Settle { release: bool },
}

/// How a record of `request_id` settles `r`.
pub fn settlement(r: &Reservation, request_id: &str) -> Settlement {
    if r.settled_ms.is_some() {
        Settlement::AlreadySettled
    } else if r.request_id != request_id {
        Settlement::OtherRequest
    } else {
        Settlement::Settle { release: !r.released }
    }
}

fn refused(by: RefusedBy, message: String) -> ReserveResponse {
    ReserveResponse { ok: false, reservation_id: None, refused_by: Some(by), message: Some(message) }
}

fn release<L: Ledger>(l: &mut L, r: &Reservation) -> Result<(), L::Error> {
    for at in &r.holds {
        budget::add(l, at, Delta::release(r.tokens, r.micros))?;
    }
    Ok(())
}

/// Releases reservations past their expiry and forgets old released ones;
/// returns how many were released.
pub fn sweep<L: Ledger>(l: &mut L, now_ms: i64) -> Result<usize, L::Error> {
    let expired = l.expired_reservations(now_ms)?;
    for r in &expired {
        release(l, r)?;
        l.mark_released(&r.id)?;
    }
    if !expired.is_empty() {
        tracing::info!(count = expired.len(), "released expired reservations");
    }
    l.forget_released(now_ms.saturating_sub(RESERVATION_KEEP_MS))?;
    Ok(expired.len())
}

/// Checks every budget that applies (key, then configuration, then credits)
/// and, if all can cover the estimate, holds it against each. Releases expired
/// reservations first.
pub fn reserve<L: Ledger>(l: &mut L, req: &ReserveRequest, now_ms: i64) -> Result<ReserveResponse, L::Error> {
    sweep(l, now_ms)?;
    let Some(key) = l.key_budgets(&req.access_key_id)? else {
        return Ok(refused(RefusedBy::Key, format!("unknown access key {}", req.access_key_id)));
    };
    let (tokens, micros) = estimate(&l.prices()?, req);
    let mut holds = Vec::new();
    let config_budget = match &key.config_id {
        Some(c) => l.config_budget(c)?.map(|b| (config_scope(c), b)),
        None => None,
    };
    let budgets = [
        key.budget.map(|b| (key_scope(&req.access_key_id), b, RefusedBy::Key, "access key")),
        config_budget.map(|(scope, b)| (scope, b, RefusedBy::Configuration, "access key configuration")),
    ];
    for (scope, b, by, what) in budgets.into_iter().flatten() {
        let at = BudgetRef::of(&scope, &b, now_ms);
        if let Some(msg) = budget::refusal(&l.budget_row(&at)?, &b, what, tokens, micros) {
            return Ok(refused(by, msg));
        }
        holds.push(at);
    }
    match credits::check(l, micros)? {
        Some(Err(msg)) => return Ok(refused(RefusedBy::Credits, msg)),
        Some(Ok(at)) => holds.push(at),
        None => {}
    }
    let id = new_id("rsv_").map_err(StoreError::from)?;
    l.insert_reservation(&Reservation {
        id: id.clone(),
        request_id: req.request_id.clone(),
        access_key_id: req.access_key_id.clone(),
        tokens,
        micros,
        holds: holds.clone(),
        created_ms: now_ms,
        expires_ms: now_ms.saturating_add(RESERVATION_TTL_MS),
        released: false,
        settled_ms: None,
    })?;
    for at in &holds {
        budget::add(l, at, Delta::hold(tokens, micros))?;
    }
    Ok(ReserveResponse { ok: true, reservation_id: Some(id), refused_by: None, message: None })
}

/// Stores usage records (duplicates of (requestId, attempt) ignored), settles
/// the reservations they quote, charges the records of settled requests,
/// evaluates the alerts of the budgets charged (`policy::alerts`) and moves
/// the keys' last use forward. Returns how many records were new.
pub fn ingest<L: AlertLedger>(l: &mut L, records: &[UsageRecord], now_ms: i64) -> Result<usize, L::Error> {
    let catalog = l.prices()?;
    let mut inserted = 0;
    let mut requests: BTreeSet<&str> = BTreeSet::new();
    let mut settle: Vec<(&str, &str)> = Vec::new();
    let mut key_used: HashMap<&str, i64> = HashMap::new();
    let mut pk_used: HashMap<&str, i64> = HashMap::new();
    for rec in records {
        let row = usage_row(&catalog, rec, new_id("usg_").map_err(StoreError::from)?);
        if !l.insert_usage(&row)? {
            continue;
        }
        inserted += 1;
        requests.insert(&rec.request_id);
        if let Some(r) = &rec.reservation_id {
            settle.push((r, &rec.request_id));
        }
        let e = key_used.entry(&rec.access_key_id).or_insert(0);
        *e = (*e).max(row.ended_ms);
        if let Some(pk) = &rec.provider_key_id {
            let e = pk_used.entry(pk).or_insert(0);
            *e = (*e).max(row.ended_ms);
        }
    }
    for (rsv, request_id) in settle {
        let Some(r) = l.reservation(rsv)? else {
            tracing::warn!(reservation = rsv, "usage quotes an unknown reservation");
            continue;
        };
        match settlement(&r, request_id) {
            Settlement::AlreadySettled => continue,
            Settlement::OtherRequest => {
                tracing::warn!(reservation = rsv, "usage quotes a reservation of another request");
                continue;
            }
            Settlement::Settle { release: true } => release(l, &r)?,
            Settlement::Settle { release: false } => {}
        }
        l.mark_settled(rsv, now_ms)?;
    }
    // Charge every not-yet-charged record of a settled request, once.
    let mut charged: Vec<BudgetRef> = Vec::new();
    for request_id in requests {
        let Some(holds) = l.settled_holds(request_id)? else { continue };
        let (tokens, micros) = charge(&l.uncharged_usage(request_id)?);
        l.mark_charged(request_id)?;
        for at in holds {
            budget::add(l, &at, Delta::spend(tokens, micros))?;
            if (tokens, micros) != (0, 0) {
                charged.push(at);
            }
        }
    }
    alerts::after_charges(l, &charged, now_ms)?;
    for (id, ended) in key_used {
        l.touch_access_key(id, ended)?;
    }
    for (id, ended) in pk_used {
        l.touch_provider_key(id, ended)?;
    }
    Ok(inserted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::BudgetSpec;
    use crate::policy::budget::BudgetRow;
    use crate::policy::credits::CreditState;
    use crate::policy::ledger::memory::MemoryLedger;
    use crate::policy::ledger::KeyBudgets;
    use crate::pricing::{Price, Window};

    const NOW: i64 = 1_700_000_000_000;

    /// $1 per million input and output tokens: 1 micro-USD a token.
    fn ledger() -> MemoryLedger {
        let mut l = MemoryLedger::default();
        l.prices.push(("*".into(), "*".into(), Price { input: 1_000_000, output: 1_000_000, cached: None }));
        l.keys.insert("ak_1".into(), KeyBudgets { config_id: Some("akc_1".into()), budget: None });
        l
    }

    fn tokens(n: u64) -> BudgetSpec {
        BudgetSpec { tokens: Some(n), cost_usd: None, window: Window::None, time_zone: None }
    }

    /// [`ledger`] with token budgets on the key and on its configuration.
    fn budgeted(key: Option<u64>, config: Option<u64>) -> MemoryLedger {
        let mut l = ledger();
        if let Some(k) = l.keys.get_mut("ak_1") {
            k.budget = key.map(tokens);
        }
        if let Some(c) = config {
            l.configs.insert("akc_1".into(), tokens(c));
        }
        l
    }

    fn request(id: &str, input: u64, output: u64) -> ReserveRequest {
        ReserveRequest {
            request_id: id.into(),
            access_key_id: "ak_1".into(),
            config_id: None,
            provider: "openai".into(),
            model: Some("gpt-4o".into()),
            input_tokens: input,
            output_tokens: output,
            fallbacks: Vec::new(),
        }
    }

    fn record(request_id: &str, attempt: u32, reservation: Option<&str>, input: u64) -> UsageRecord {
        UsageRecord {
            request_id: request_id.into(),
            access_key_id: "ak_1".into(),
            provider: "openai".into(),
            model: Some("gpt-4o".into()),
            provider_key_id: Some("pk_1".into()),
            attempt,
            final_attempt: true,
            status: 200,
            input_tokens: input,
            ended_ms: 7,
            reservation_id: reservation.map(String::from),
            ..UsageRecord::default()
        }
    }

    fn key_row(l: &MemoryLedger) -> BudgetRow {
        l.row(&BudgetRef::at("key:ak_1", Window::None, NOW))
    }

    fn reserve_ok(l: &mut MemoryLedger, req: &ReserveRequest) -> String {
        let r = reserve(l, req, NOW).unwrap();
        assert!(r.ok, "{r:?}");
        r.reservation_id.unwrap()
    }

    #[test]
    fn an_estimate_counts_input_and_output_at_the_catalog_price() {
        assert_eq!(estimate(&ledger().prices, &request("r", 10, 5)), (15, 15));
    }

    #[test]
    fn an_estimate_with_fallbacks_is_priced_at_the_dearest_model() {
        let mut l = ledger();
        l.prices
            .insert(0, ("other".into(), "dear".into(), Price { input: 3_000_000, output: 3_000_000, cached: None }));
        l.prices.insert(0, ("other".into(), "cheap".into(), Price { input: 0, output: 0, cached: None }));
        let fallback =
            |model: &str| keygate_proto::lookup::ModelRef { provider: "other".into(), model: Some(model.into()) };
        let mut req = request("r", 10, 5);
        req.fallbacks = vec![fallback("cheap"), fallback("dear")];
        assert_eq!(estimate(&l.prices, &req), (15, 45), "tokens once, cost at the dearest");
        req.fallbacks = vec![fallback("cheap")];
        assert_eq!(estimate(&l.prices, &req), (15, 15), "never below the model's own price");
    }

    #[test]
    fn huge_token_counts_are_clamped() {
        assert_eq!(tokens_i64(u64::MAX), 1_000_000_000_000);
    }

    #[test]
    fn an_unknown_access_key_is_refused_by_the_key() {
        let mut l = ledger();
        let mut req = request("r", 1, 1);
        req.access_key_id = "ak_9".into();
        let r = reserve(&mut l, &req, NOW).unwrap();
        assert_eq!((r.ok, r.refused_by), (false, Some(RefusedBy::Key)));
        assert_eq!(r.message.as_deref(), Some("unknown access key ak_9"));
    }

    #[test]
    fn a_key_without_budgets_or_credits_reserves_and_holds_nothing() {
        let mut l = ledger();
        reserve_ok(&mut l, &request("r", 1, 1));
        assert!(l.budgets.is_empty());
        assert_eq!(l.reservations.len(), 1);
    }

    #[test]
    fn a_reservation_that_fits_holds_the_estimate_in_every_budget() {
        let mut l = budgeted(Some(100), Some(100));
        l.credits = CreditState { enabled: true, granted: 1_000, touched: true };
        let id = reserve_ok(&mut l, &request("r", 10, 5));
        let held = BudgetRow { reserved_tokens: 15, reserved_micros: 15, ..BudgetRow::default() };
        assert_eq!(key_row(&l), held);
        assert_eq!(l.row(&BudgetRef::at("config:akc_1", Window::None, NOW)), held);
        assert_eq!(l.row(&BudgetRef::credits()), held);
        let r = l.reservations.iter().find(|r| r.id == id).unwrap();
        assert_eq!(r.holds.len(), 3);
        assert_eq!(r.expires_ms, NOW + RESERVATION_TTL_MS);
    }

    #[test]
    fn a_zoned_daily_budget_is_refused_up_to_local_midnight_and_not_after() {
        // Berlin in summer (CEST, UTC+2): the day ends at 22:00 UTC.
        let mut l = ledger();
        let daily = BudgetSpec { window: Window::Daily, time_zone: Some("Europe/Berlin".into()), ..tokens(100) };
        if let Some(k) = l.keys.get_mut("ak_1") {
            k.budget = Some(daily);
        }
        let before = crate::ids::parse_rfc3339("2025-06-15T21:59:59Z").unwrap() * 1000 + 999;
        let midnight = before + 1;
        // Exactly at the bound: spent + reserved + estimate = 100 fits, 101 does not.
        assert!(reserve(&mut l, &request("r1", 60, 0), before - 60_000).unwrap().ok);
        assert!(reserve(&mut l, &request("r2", 40, 0), before - 1).unwrap().ok);
        let r = reserve(&mut l, &request("r3", 1, 0), before).unwrap();
        assert_eq!(r.refused_by, Some(RefusedBy::Key));
        assert_eq!(
            r.message.as_deref(),
            Some("the daily token budget of the access key is exhausted: used 0 + reserved 100 + estimate 1 > 100")
        );
        // Local midnight (22:00 UTC, not 00:00 UTC): a new window with nothing in it.
        let r = reserve(&mut l, &request("r4", 100, 0), midnight).unwrap();
        assert!(r.ok, "{r:?}");
        let mut starts: Vec<i64> = l.budgets.keys().map(|(_, _, start)| *start).collect();
        starts.sort_unstable();
        assert_eq!(starts, vec![midnight - 24 * 3_600_000, midnight]);
    }

    #[test]
    fn the_key_budget_refuses_before_the_configuration_budget() {
        let mut l = budgeted(Some(10), Some(10));
        let r = reserve(&mut l, &request("r", 10, 5), NOW).unwrap();
        assert_eq!(r.refused_by, Some(RefusedBy::Key));
        assert!(l.reservations.is_empty());
    }

    #[test]
    fn a_refused_reservation_holds_nothing_in_the_budgets_that_had_room() {
        let mut l = budgeted(Some(100), Some(10));
        let r = reserve(&mut l, &request("r", 10, 5), NOW).unwrap();
        assert_eq!(r.refused_by, Some(RefusedBy::Configuration));
        assert_eq!(key_row(&l), BudgetRow::default());
    }

    #[test]
    fn credits_refuse_when_the_balance_after_reservations_is_short() {
        let mut l = ledger();
        l.credits = CreditState { enabled: true, granted: 20, touched: true };
        reserve_ok(&mut l, &request("r1", 10, 5));
        let r = reserve(&mut l, &request("r2", 10, 5), NOW).unwrap();
        assert_eq!(r.refused_by, Some(RefusedBy::Credits));
    }

    #[test]
    fn an_expired_reservation_is_released_by_the_sweep() {
        let mut l = budgeted(Some(100), None);
        reserve_ok(&mut l, &request("r", 10, 5));
        assert_eq!(sweep(&mut l, NOW + RESERVATION_TTL_MS - 1).unwrap(), 0);
        assert_eq!(sweep(&mut l, NOW + RESERVATION_TTL_MS).unwrap(), 1);
        assert_eq!(key_row(&l), BudgetRow::default());
        assert!(l.reservations.iter().all(|r| r.released));
        sweep(&mut l, NOW + RESERVATION_KEEP_MS + 1).unwrap();
        assert!(l.reservations.is_empty());
    }

    #[test]
    fn usage_settles_its_reservation_and_charges_the_budgets_once() {
        let mut l = budgeted(Some(100), None);
        let id = reserve_ok(&mut l, &request("r", 10, 5));
        let records = [record("r", 1, Some(&id), 3), record("r", 2, Some(&id), 4)];
        assert_eq!(ingest(&mut l, &records, NOW + 1).unwrap(), 2);
        assert_eq!(key_row(&l), BudgetRow { spent_tokens: 7, spent_micros: 7, ..BudgetRow::default() });
        assert_eq!(l.reservations[0].settled_ms, Some(NOW + 1));
        // The same records again change nothing; a late attempt is charged.
        assert_eq!(ingest(&mut l, &records, NOW + 2).unwrap(), 0);
        assert_eq!(ingest(&mut l, &[record("r", 3, None, 1)], NOW + 3).unwrap(), 1);
        assert_eq!(key_row(&l).spent_tokens, 8);
        assert_eq!(l.last_used.get("ak:ak_1"), Some(&7));
        assert_eq!(l.last_used.get("pk:pk_1"), Some(&7));
    }

    #[test]
    fn a_record_quoting_another_request_s_reservation_settles_nothing() {
        let mut l = budgeted(Some(100), None);
        let id = reserve_ok(&mut l, &request("r", 10, 5));
        assert_eq!(ingest(&mut l, &[record("other", 1, Some(&id), 3)], NOW).unwrap(), 1);
        assert_eq!(l.reservations[0].settled_ms, None);
        assert_eq!(key_row(&l).reserved_tokens, 15);
        assert_eq!(key_row(&l).spent_tokens, 0);
    }

    #[test]
    fn settling_a_reservation_the_sweep_released_does_not_release_it_twice() {
        let mut l = budgeted(Some(100), None);
        let a = reserve_ok(&mut l, &request("a", 10, 5));
        let swept = NOW + RESERVATION_TTL_MS;
        sweep(&mut l, swept).unwrap();
        let b = reserve(&mut l, &request("b", 10, 5), swept).unwrap();
        assert!(b.ok);
        ingest(&mut l, &[record("a", 1, Some(&a), 3)], swept).unwrap();
        let row = key_row(&l);
        assert_eq!((row.reserved_tokens, row.spent_tokens), (15, 3));
    }

    #[test]
    fn settlement_checks_settled_first_then_the_request() {
        let r = Reservation {
            id: "rsv_1".into(),
            request_id: "r".into(),
            access_key_id: "ak_1".into(),
            tokens: 1,
            micros: 1,
            holds: vec![],
            created_ms: 0,
            expires_ms: 0,
            released: true,
            settled_ms: None,
        };
        assert_eq!(settlement(&r, "r"), Settlement::Settle { release: false });
        assert_eq!(
            settlement(&Reservation { released: false, ..r.clone() }, "r"),
            Settlement::Settle { release: true }
        );
        assert_eq!(settlement(&r, "x"), Settlement::OtherRequest);
        assert_eq!(settlement(&Reservation { settled_ms: Some(1), ..r }, "x"), Settlement::AlreadySettled);
    }

    #[test]
    fn a_charge_counts_input_output_and_cached_tokens() {
        let u = Uncharged { input_tokens: 1, output_tokens: 2, cached_tokens: 3, cost_micros: 4 };
        assert_eq!(charge(&[u, u]), (12, 8));
    }
}
