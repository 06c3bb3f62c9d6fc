//! Usage retention (`KEYGATE_USAGE_RETENTION_DAYS`): how long usage records
//! are kept, which ones the sweep may delete, and why no shorter setting is
//! accepted.
//!
//! Budgets never sum usage records: every budget window keeps running totals
//! (its `budget_state` row), charged once when a request settles. Deleting
//! records therefore changes no budget, provided a deleted record can never
//! be charged again. A record is charged while a settled reservation of its
//! request is kept (7 days, [`RESERVATION_KEEP_MS`]); a resent copy of a
//! record deleted before then would be stored anew and charged a second time.
//! So the sweep deletes a record only when it started before the cutoff
//! **and** no reservation of its request is left — whatever the clock of the
//! Envoy that wrote `startedMs`.
//!
//! The shortest retention, [`MIN_DAYS`] (32), keeps every record of every
//! current budget window (the longest, a month, lasts at most 31 days and an
//! hour of DST): `/usage` over a budget's current window still adds up to
//! its `budgetUsage`. A shorter one (other than 0, keep forever) is refused
//! at startup rather than quietly raised.
//!
//! [`RESERVATION_KEEP_MS`]: super::reservation::RESERVATION_KEEP_MS

/// Default of `KEYGATE_USAGE_RETENTION_DAYS`.
pub const DEFAULT_DAYS: u32 = 90;

/// The shortest retention accepted (besides 0): longer than the longest
/// budget window (a month: 31 days, plus an hour across a DST change).
pub const MIN_DAYS: u32 = 32;

/// Records deleted per transaction: a huge backlog never holds the database
/// (SQLite's one writer, or PostgreSQL's locks) for long.
pub const BATCH: usize = 5_000;

/// Batches per sweep at most (the rest waits for the next sweep).
pub const MAX_BATCHES: usize = 200;

const DAY_MS: i64 = 24 * 3600 * 1000;

/// A retention in force: records older than `days` go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    days: u32,
}

impl Retention {
    /// `KEYGATE_USAGE_RETENTION_DAYS`: `None` for 0 (keep forever); an error
    /// for 1 to [`MIN_DAYS`] − 1.
    pub fn from_days(days: u32) -> Result<Option<Self>, String> {
        match days {
            0 => Ok(None),
            d if d < MIN_DAYS => Err(format!(
                "KEYGATE_USAGE_RETENTION_DAYS={d} is shorter than the longest budget window: use 0 (keep usage \
                 records forever) or at least {MIN_DAYS} days"
            )),
            d => Ok(Some(Retention { days: d })),
        }
    }

    pub fn days(self) -> u32 {
        self.days
    }

    /// Records that started before this instant (unix ms) are past retention.
    pub fn cutoff_ms(self, now_ms: i64) -> i64 {
        now_ms.saturating_sub(i64::from(self.days).saturating_mul(DAY_MS))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::reservation::RESERVATION_KEEP_MS;
    use crate::pricing::{time_zone, Window};

    #[test]
    fn zero_keeps_forever_and_short_retentions_are_refused() {
        assert_eq!(Retention::from_days(0), Ok(None));
        assert_eq!(Retention::from_days(DEFAULT_DAYS).unwrap().map(Retention::days), Some(90));
        assert_eq!(Retention::from_days(32).unwrap().map(Retention::days), Some(32));
        for d in [1, 7, 30, 31] {
            let e = Retention::from_days(d).unwrap_err();
            assert!(e.starts_with(&format!("KEYGATE_USAGE_RETENTION_DAYS={d} is shorter")), "{e}");
            assert!(e.contains("at least 32 days"), "{e}");
        }
    }

    #[test]
    fn the_cutoff_is_days_before_now_without_overflow() {
        let r = Retention::from_days(90).unwrap().unwrap();
        assert_eq!(r.cutoff_ms(100 * DAY_MS + 5), 10 * DAY_MS + 5);
        let r = Retention::from_days(u32::MAX).unwrap().unwrap();
        assert!(r.cutoff_ms(0) < 0);
        assert_eq!(r.cutoff_ms(i64::MIN), i64::MIN);
    }

    #[test]
    fn the_shortest_retention_outlasts_every_current_window_and_kept_reservation() {
        let min = Retention::from_days(MIN_DAYS).unwrap().unwrap();
        assert!(i64::from(MIN_DAYS) * DAY_MS > RESERVATION_KEEP_MS);
        // The current window of any budget started after the cutoff, in any
        // zone, across month ends and DST changes.
        for tz in ["UTC", "Europe/Berlin", "America/New_York", "Pacific/Kiritimati", "Pacific/Pago_Pago"] {
            let tz = time_zone(tz).unwrap();
            let mut now = 1_704_067_200_000; // 2024-01-01T00:00:00Z
            while now < 1_767_225_600_000 {
                for w in [Window::Daily, Window::Weekly, Window::Monthly] {
                    let (start, _) = w.bounds(&tz, now);
                    assert!(start > min.cutoff_ms(now), "{w:?} {tz:?} {now}");
                }
                now += 13 * 3_600_000 + 1;
            }
        }
    }
}
