//! Budgets: which rows a budget keeps its numbers in, what a window has used,
//! and whether a budget can cover an estimate (and what the refusal says).
//!
//! Every budget has a row per window (scope `key:<id>`, `config:<id>` or
//! `credits`), holding what settled requests spent and what open reservations
//! hold. A reservation remembers the exact rows ([`BudgetRef`]) it added to, so
//! that releasing and settling hit the same window even after midnight.
//!
//! A row is named by its window's kind and start instant (unix ms), not by
//! the time zone: a window starts where [`Window::bounds`] puts it in the
//! budget's `timeZone` (UTC without one), the same on every backend and
//! replica (the tz database is compiled in). A budget given another window or
//! time zone counts in the rows of its new windows.

use jiff::tz::TimeZone;
use serde::{Deserialize, Serialize};

use super::ledger::Ledger;
use crate::ids::rfc3339_ms;
use crate::model::{BudgetSpec, BudgetUsage};
use crate::pricing::{self, micros_to_usd, usd_to_micros, Window};

/// The scope of an access key's own budget.
pub fn key_scope(id: &str) -> String {
    format!("key:{id}")
}

/// The scope of a configuration's budget (shared by its access keys).
pub fn config_scope(id: &str) -> String {
    format!("config:{id}")
}

const CREDITS_SCOPE: &str = "credits";

/// One budget row: a scope's window. Stored with reservations as JSON
/// (`{"scope", "win", "start"}`), so the field names are fixed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BudgetRef {
    pub scope: String,
    pub win: String,
    pub start: i64,
}

impl BudgetRef {
    /// The row of `scope`'s window that contains `now_ms`.
    pub fn at(scope: &str, window: Window, now_ms: i64) -> Self {
        BudgetRef { scope: scope.to_string(), win: window.as_str().to_string(), start: window.start_ms(now_ms) }
    }

    /// The row of `scope`'s window of `budget` (in its time zone) that contains `now_ms`.
    pub fn of(scope: &str, budget: &BudgetSpec, now_ms: i64) -> Self {
        BudgetRef { scope: scope.to_string(), win: budget.window.as_str().to_string(), start: bounds(budget, now_ms).0 }
    }

    /// The row of the gateway's credits (one window that never resets).
    pub fn credits() -> Self {
        BudgetRef { scope: CREDITS_SCOPE.into(), win: Window::None.as_str().into(), start: 0 }
    }
}

/// The time zone of `budget`'s windows: UTC without `timeZone` (budgets
/// stored before there was one). A name the compiled-in tz database does not
/// know (validation refuses those, so only a newer build's data could hold
/// one) counts in UTC too, with a warning.
pub fn zone(budget: &BudgetSpec) -> TimeZone {
    let Some(name) = budget.time_zone.as_deref() else { return TimeZone::UTC };
    pricing::time_zone(name).unwrap_or_else(|| {
        tracing::warn!(time_zone = name, "unknown budget time zone; counting its windows in UTC");
        TimeZone::UTC
    })
}

/// The window of `budget` that contains `now_ms`: (start, start of the next
/// window) in unix ms; `(0, None)` for a window that never resets.
pub fn bounds(budget: &BudgetSpec, now_ms: i64) -> (i64, Option<i64>) {
    if budget.window == Window::None {
        return (0, None);
    }
    budget.window.bounds(&zone(budget), now_ms)
}

/// The numbers of a budget row (a missing row is all zero).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BudgetRow {
    pub spent_tokens: i64,
    pub spent_micros: i64,
    pub reserved_tokens: i64,
    pub reserved_micros: i64,
}

/// A change to a budget row.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Delta {
    pub spent_tokens: i64,
    pub spent_micros: i64,
    pub reserved_tokens: i64,
    pub reserved_micros: i64,
}

impl Delta {
    /// Holding an estimate.
    pub fn hold(tokens: i64, micros: i64) -> Self {
        Delta { reserved_tokens: tokens, reserved_micros: micros, ..Delta::default() }
    }

    /// Letting go of what a reservation held.
    pub fn release(tokens: i64, micros: i64) -> Self {
        Delta::hold(tokens.saturating_neg(), micros.saturating_neg())
    }

    /// Charging what was spent.
    pub fn spend(tokens: i64, micros: i64) -> Self {
        Delta { spent_tokens: tokens, spent_micros: micros, ..Delta::default() }
    }
}

impl BudgetRow {
    /// The row after `d`; what is reserved never goes below zero.
    pub fn apply(self, d: Delta) -> Self {
        BudgetRow {
            spent_tokens: self.spent_tokens.saturating_add(d.spent_tokens),
            spent_micros: self.spent_micros.saturating_add(d.spent_micros),
            reserved_tokens: self.reserved_tokens.saturating_add(d.reserved_tokens).max(0),
            reserved_micros: self.reserved_micros.saturating_add(d.reserved_micros).max(0),
        }
    }

    /// What the API shows of this row, the current window of `budget`.
    pub fn usage(&self, budget: &BudgetSpec, at: &BudgetRef) -> BudgetUsage {
        BudgetUsage {
            tokens: self.spent_tokens,
            cost_usd: micros_to_usd(self.spent_micros),
            reserved_tokens: self.reserved_tokens,
            reserved_cost_usd: micros_to_usd(self.reserved_micros),
            window_start: (budget.window != Window::None).then(|| rfc3339_ms(at.start)),
            resets_at: bounds(budget, at.start).1.map(rfc3339_ms),
        }
    }
}

/// Applies `d` to a budget row.
pub fn add<L: Ledger>(l: &mut L, at: &BudgetRef, d: Delta) -> Result<(), L::Error> {
    let row = l.budget_row(at)?.apply(d);
    l.put_budget_row(at, &row)
}

/// The current window's usage of `scope`'s budget.
pub fn usage<L: Ledger>(l: &mut L, scope: &str, budget: &BudgetSpec, now_ms: i64) -> Result<BudgetUsage, L::Error> {
    let at = BudgetRef::of(scope, budget, now_ms);
    Ok(l.budget_row(&at)?.usage(budget, &at))
}

/// Why `budget` (of the `what`, e.g. "access key") cannot cover an estimate of
/// `tokens` and `micros` on top of its row, if it cannot.
pub fn refusal(row: &BudgetRow, budget: &BudgetSpec, what: &str, tokens: i64, micros: i64) -> Option<String> {
    if let Some(limit) = budget.tokens {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let need = row.spent_tokens.saturating_add(row.reserved_tokens).saturating_add(tokens);
        if need > limit {
            return Some(format!(
                "the {} token budget of the {what} is exhausted: used {} + reserved {} + estimate {tokens} > {limit}",
                budget.window.as_str(),
                row.spent_tokens,
                row.reserved_tokens
            ));
        }
    }
    if let Some(limit_usd) = budget.cost_usd {
        let limit = usd_to_micros(limit_usd);
        let need = row.spent_micros.saturating_add(row.reserved_micros).saturating_add(micros);
        if need > limit {
            return Some(format!(
                "the {} cost budget of the {what} (${limit_usd}) is exhausted: used ${} + reserved ${} + estimate ${}",
                budget.window.as_str(),
                micros_to_usd(row.spent_micros),
                micros_to_usd(row.reserved_micros),
                micros_to_usd(micros)
            ));
        }
    }
    None
}

/// Whether the gateway must reserve before forwarding a key's requests: the
/// key or its configuration has a budget, or credits are on.
pub fn budgeted(key_budget: bool, config_budget: bool, credits_enabled: bool) -> bool {
    key_budget || config_budget || credits_enabled
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(tokens: Option<u64>, cost_usd: Option<f64>, window: Window) -> BudgetSpec {
        BudgetSpec { tokens, cost_usd, window, time_zone: None }
    }

    #[test]
    fn scopes_name_the_key_the_configuration_or_the_credits() {
        assert_eq!(key_scope("ak_1"), "key:ak_1");
        assert_eq!(config_scope("akc_1"), "config:akc_1");
        assert_eq!(BudgetRef::credits(), BudgetRef { scope: "credits".into(), win: "none".into(), start: 0 });
    }

    #[test]
    fn a_budget_ref_is_stored_as_scope_win_and_start() {
        let json = serde_json::to_string(&BudgetRef::at("key:ak_1", Window::None, 5)).unwrap();
        assert_eq!(json, r#"{"scope":"key:ak_1","win":"none","start":0}"#);
    }

    #[test]
    fn a_daily_budget_ref_starts_at_utc_midnight() {
        let at = BudgetRef::at("key:a", Window::Daily, 86_400_000 + 5_000);
        assert_eq!((at.win.as_str(), at.start), ("daily", 86_400_000));
    }

    #[test]
    fn releasing_more_than_is_reserved_stops_at_zero_while_spending_adds() {
        let row = BudgetRow { spent_tokens: 5, spent_micros: 7, reserved_tokens: 10, reserved_micros: 20 };
        let after = row.apply(Delta::release(15, 25)).apply(Delta::spend(1, 2));
        assert_eq!(after, BudgetRow { spent_tokens: 6, spent_micros: 9, reserved_tokens: 0, reserved_micros: 0 });
        assert_eq!(BudgetRow::default().apply(Delta::hold(3, 4)).reserved_micros, 4);
    }

    #[test]
    fn a_budget_with_room_for_the_estimate_does_not_refuse() {
        let row = BudgetRow { spent_tokens: 40, reserved_tokens: 30, ..BudgetRow::default() };
        assert_eq!(refusal(&row, &budget(Some(100), None, Window::Daily), "access key", 30, 0), None);
    }

    #[test]
    fn the_token_budget_counts_spent_reserved_and_estimate() {
        let row = BudgetRow { spent_tokens: 40, reserved_tokens: 30, ..BudgetRow::default() };
        assert_eq!(
            refusal(&row, &budget(Some(100), None, Window::Daily), "access key", 31, 0).as_deref(),
            Some("the daily token budget of the access key is exhausted: used 40 + reserved 30 + estimate 31 > 100")
        );
    }

    #[test]
    fn the_cost_budget_refusal_quotes_dollars() {
        let row = BudgetRow { spent_micros: 1_500_000, reserved_micros: 500_000, ..BudgetRow::default() };
        let b = budget(None, Some(2.0), Window::Monthly);
        assert_eq!(
            refusal(&row, &b, "access key configuration", 0, 1).as_deref(),
            Some(
                "the monthly cost budget of the access key configuration ($2) is exhausted: \
                 used $1.5 + reserved $0.5 + estimate $0.000001"
            )
        );
        assert_eq!(refusal(&row, &b, "access key configuration", 0, 0), None);
    }

    #[test]
    fn usage_shows_a_window_start_only_for_windows_that_reset() {
        let row = BudgetRow { spent_tokens: 1, spent_micros: 2_000_000, reserved_tokens: 3, reserved_micros: 0 };
        let at = BudgetRef::at("key:a", Window::Daily, 0);
        let u = row.usage(&budget(Some(9), None, Window::Daily), &at);
        assert_eq!((u.tokens, u.cost_usd, u.reserved_tokens), (1, 2.0, 3));
        assert_eq!(u.window_start.as_deref(), Some("1970-01-01T00:00:00.000Z"));
        assert_eq!(row.usage(&budget(Some(9), None, Window::None), &BudgetRef::credits()).window_start, None);
    }

    fn ms(s: &str) -> i64 {
        crate::ids::parse_rfc3339(s).unwrap() * 1000
    }

    fn zoned(window: Window, tz: &str) -> BudgetSpec {
        BudgetSpec { time_zone: Some(tz.into()), ..budget(Some(100), None, window) }
    }

    #[test]
    fn a_budget_stored_without_a_time_zone_counts_in_utc_rows() {
        // As stored before `timeZone` existed.
        let old: BudgetSpec = serde_json::from_str(r#"{"tokens":5,"window":"daily"}"#).unwrap();
        assert_eq!(old.time_zone, None);
        assert_eq!(serde_json::to_string(&old).unwrap(), r#"{"tokens":5,"window":"daily"}"#);
        let now = ms("2025-03-30T12:00:00Z");
        assert_eq!(BudgetRef::of("key:a", &old, now), BudgetRef::at("key:a", Window::Daily, now));
        assert_eq!(BudgetRef::of("key:a", &old, now).start, ms("2025-03-30T00:00:00Z"));
        assert_eq!(BudgetRef::of("key:a", &zoned(Window::Daily, "UTC"), now), BudgetRef::of("key:a", &old, now));
    }

    #[test]
    fn a_zoned_budget_ref_starts_at_local_midnight() {
        let b = zoned(Window::Daily, "Europe/Berlin");
        let at = BudgetRef::of("config:c", &b, ms("2025-03-30T12:00:00Z"));
        assert_eq!((at.win.as_str(), at.start), ("daily", ms("2025-03-29T23:00:00Z")));
        let json = serde_json::to_value(&b).unwrap();
        assert_eq!(json, serde_json::json!({"tokens": 100, "window": "daily", "timeZone": "Europe/Berlin"}));
        // A window that never resets has one row whatever the zone.
        assert_eq!(BudgetRef::of("k", &zoned(Window::None, "Asia/Tokyo"), 5).start, 0);
    }

    #[test]
    fn a_time_zone_this_build_does_not_know_counts_in_utc() {
        let b = zoned(Window::Daily, "Mars/Olympus_Mons");
        let now = ms("2025-03-30T12:00:00Z");
        assert_eq!(bounds(&b, now), (ms("2025-03-30T00:00:00Z"), Some(ms("2025-03-31T00:00:00Z"))));
    }

    #[test]
    fn usage_shows_when_the_window_resets() {
        let row = BudgetRow::default();
        let b = zoned(Window::Weekly, "America/New_York");
        let at = BudgetRef::of("key:a", &b, ms("2025-11-02T12:00:00Z"));
        let u = row.usage(&b, &at);
        assert_eq!(u.window_start.as_deref(), Some("2025-10-27T04:00:00.000Z"));
        assert_eq!(u.resets_at.as_deref(), Some("2025-11-03T05:00:00.000Z"));
        let json = serde_json::to_value(&u).unwrap();
        assert_eq!(json["resetsAt"], "2025-11-03T05:00:00.000Z");
        let none = row.usage(&budget(Some(1), None, Window::None), &BudgetRef::credits());
        assert_eq!((none.window_start, none.resets_at), (None, None));
    }

    #[test]
    fn a_key_is_budgeted_by_its_budget_its_configuration_s_or_credits() {
        assert!(!budgeted(false, false, false));
        assert!(budgeted(true, false, false));
        assert!(budgeted(false, true, false));
        assert!(budgeted(false, false, true));
    }
}
