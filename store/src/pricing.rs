//! Money, prices and budget windows. Pure functions: the storage layer keeps
//! the numbers, this module does the arithmetic.
//!
//! Money is integer micro-USD (1 USD = 1 000 000). Prices are micro-USD per
//! million tokens. Costs round up, so that rounding never makes a request free.

use jiff::civil::Date;
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan};
use serde::{Deserialize, Serialize};

/// Micro-USD per USD.
pub const MICROS: f64 = 1_000_000.0;

/// Largest amount accepted in any USD field (1 billion USD).
pub const MAX_USD: f64 = 1e9;

/// Largest price per million tokens accepted (USD).
pub const MAX_PRICE_USD: f64 = 1e6;

/// The catch-all entry of the price catalog.
pub const CATCH_ALL: (&str, &str) = ("*", "*");

/// Reservations not settled within this time are released by the sweep.
pub const RESERVATION_TTL_MS: i64 = 15 * 60 * 1000;

/// USD as micro-USD (rounded to the nearest micro-USD).
pub fn usd_to_micros(usd: f64) -> i64 {
    // Callers validate the range first; `as` saturates anyway.
    #[allow(clippy::cast_possible_truncation)]
    let m = (usd * MICROS).round() as i64;
    m
}

/// Micro-USD as USD.
pub fn micros_to_usd(micros: i64) -> f64 {
    #[allow(clippy::cast_precision_loss)]
    let u = micros as f64 / MICROS;
    u
}

/// A price in micro-USD per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Price {
    pub input: i64,
    pub output: i64,
    /// Cached input tokens; `None` = the input price.
    pub cached: Option<i64>,
}

/// Default catalog, seeded at first start: (provider, model pattern, input, output, cached) in USD per million tokens.
pub const DEFAULT_PRICES: &[(&str, &str, f64, f64, Option<f64>)] = &[
    ("openai", "gpt-4o", 2.5, 10.0, Some(1.25)),
    ("openai", "gpt-4o-mini", 0.15, 0.6, Some(0.075)),
    ("openai", "gpt-4.1", 2.0, 8.0, Some(0.5)),
    ("openai", "gpt-4.1-mini", 0.4, 1.6, Some(0.1)),
    ("openai", "gpt-4.1-nano", 0.1, 0.4, Some(0.025)),
    ("openai", "o3", 2.0, 8.0, Some(0.5)),
    ("openai", "o4-mini", 1.1, 4.4, Some(0.275)),
    ("openai", "gpt-5", 1.25, 10.0, Some(0.125)),
    ("openai", "gpt-5-mini", 0.25, 2.0, Some(0.025)),
    ("anthropic", "claude-sonnet-4*", 3.0, 15.0, Some(0.3)),
    ("anthropic", "claude-opus-4*", 15.0, 75.0, Some(1.5)),
    ("anthropic", "claude-haiku-4*", 1.0, 5.0, Some(0.1)),
    ("anthropic", "claude-3-5-haiku*", 0.8, 4.0, Some(0.08)),
    ("google", "gemini-2.5-pro*", 1.25, 10.0, None),
    ("google", "gemini-2.5-flash*", 0.3, 2.5, None),
    ("groq", "llama-3.3-70b-versatile", 0.59, 0.79, None),
    ("deepseek", "deepseek-chat", 0.27, 1.1, None),
    ("deepseek", "deepseek-reasoner", 0.55, 2.19, None),
    ("mistral", "mistral-large*", 2.0, 6.0, None),
    ("xai", "grok-4*", 3.0, 15.0, None),
    // Conservative: an unknown model is never free.
    ("*", "*", 15.0, 75.0, None),
];

/// `tokens * per_million / 1e6`, rounded up; never negative.
fn cost_part(tokens: u64, per_million: i64) -> i64 {
    let per = u128::try_from(per_million.max(0)).unwrap_or(0);
    let prod = u128::from(tokens).saturating_mul(per);
    let micros = prod.div_ceil(1_000_000);
    i64::try_from(micros).unwrap_or(i64::MAX)
}

/// Cost in micro-USD: input and output at their prices, cached tokens at the
/// cached price (or the input price when the entry has none).
pub fn cost_micros(price: &Price, input: u64, output: u64, cached: u64) -> i64 {
    cost_part(input, price.input)
        .saturating_add(cost_part(output, price.output))
        .saturating_add(cost_part(cached, price.cached.unwrap_or(price.input)))
}

/// Picks the catalog entry of `provider/model`: the exact entry, else the
/// longest matching `prefix*` entry of that provider, else `*/*`. `model`
/// `None` goes straight to `*/*`.
pub fn match_price<'a, T>(entries: &'a [(String, String, T)], provider: &str, model: Option<&str>) -> Option<&'a T> {
    if let Some(model) = model {
        if let Some((_, _, p)) = entries.iter().find(|(ep, em, _)| ep == provider && em == model) {
            return Some(p);
        }
        let best = entries
            .iter()
            .filter_map(|(ep, em, p)| {
                let prefix = em.strip_suffix('*')?;
                (ep == provider && model.starts_with(prefix)).then_some((prefix.len(), p))
            })
            .max_by_key(|(len, _)| *len);
        if let Some((_, p)) = best {
            return Some(p);
        }
    }
    entries.iter().find(|(ep, em, _)| ep == CATCH_ALL.0 && em == CATCH_ALL.1).map(|(_, _, p)| p)
}

/// How often a budget starts over. Windows start at local midnight in the
/// budget's time zone (UTC unless it names one): see [`Window::bounds`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Window {
    /// Resets at 00:00 every day.
    Daily,
    /// Resets at 00:00 every Monday.
    Weekly,
    /// Resets at 00:00 on the first of the month.
    Monthly,
    /// Never resets.
    #[default]
    None,
}

/// An IANA time zone of the bundled tz database (names match without regard
/// to ASCII case); `None` for a name it does not know, and for `Etc/Unknown`
/// and the like, which name no zone.
pub fn time_zone(name: &str) -> Option<TimeZone> {
    let tz = TimeZone::get(name).ok()?;
    tz.iana_name().is_some().then_some(tz)
}

impl Window {
    pub fn as_str(self) -> &'static str {
        match self {
            Window::Daily => "daily",
            Window::Weekly => "weekly",
            Window::Monthly => "monthly",
            Window::None => "none",
        }
    }

    /// Start (unix ms) of the UTC window containing `now_ms`; 0 for [`Window::None`].
    pub fn start_ms(self, now_ms: i64) -> i64 {
        self.bounds(&TimeZone::UTC, now_ms).0
    }

    /// The window containing `now_ms` in `tz`: its start and the start of the
    /// next one (unix ms). The first day of a window is the local date of
    /// `now_ms` (daily), the Monday on or before it (weekly) or the first of
    /// its month (monthly); a window starts at that day's first instant —
    /// local midnight, or the end of a DST gap that swallows midnight — so a
    /// day lasts 23 or 25 hours across a DST change. [`Window::None`] (and a
    /// time out of range): `(0, None)`.
    pub fn bounds(self, tz: &TimeZone, now_ms: i64) -> (i64, Option<i64>) {
        let first_instant = |d: Date| d.to_zoned_datetime(tz.clone()).ok().map(|z| z.timestamp().as_millisecond());
        let days = |d: Date, n: i64| d.checked_add(n.days()).ok();
        let Some(today) = Timestamp::from_millisecond(now_ms).ok().map(|t| t.to_zoned_datetime(tz.clone()).date())
        else {
            return (0, None);
        };
        let civil = match self {
            Window::None => None,
            Window::Daily => days(today, 1).map(|next| (today, next)),
            Window::Weekly => days(today, -i64::from(today.weekday().to_monday_zero_offset()))
                .and_then(|monday| Some((monday, days(monday, 7)?))),
            Window::Monthly => {
                let first = today.first_of_month();
                first.checked_add(1.month()).ok().map(|next| (first, next))
            }
        };
        match civil.and_then(|(start, next)| Some((first_instant(start)?, first_instant(next)))) {
            Some((start, next)) => (start, next),
            None => (0, None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::parse_rfc3339;

    fn ms(s: &str) -> i64 {
        parse_rfc3339(s).unwrap() * 1000
    }

    #[test]
    fn windows_start_at_utc_midnight_and_first_of_month() {
        let now = ms("2025-03-17T13:45:10Z") + 123;
        assert_eq!(Window::Daily.start_ms(now), ms("2025-03-17T00:00:00Z"));
        assert_eq!(Window::Weekly.start_ms(now), ms("2025-03-17T00:00:00Z"), "a Monday");
        assert_eq!(Window::Weekly.start_ms(ms("2025-03-16T23:59:59Z")), ms("2025-03-10T00:00:00Z"), "a Sunday");
        assert_eq!(Window::Monthly.start_ms(now), ms("2025-03-01T00:00:00Z"));
        assert_eq!(Window::None.start_ms(now), 0);
        assert_eq!(Window::Daily.start_ms(ms("2025-03-17T00:00:00Z")), ms("2025-03-17T00:00:00Z"));
        assert_eq!(Window::None.bounds(&TimeZone::UTC, now), (0, None));
    }

    /// The UTC windows of the code before time zones (the rows that budgets
    /// without `timeZone` already have are named by these starts).
    fn old_utc_start(w: Window, now_ms: i64) -> i64 {
        use time::{Date as TDate, OffsetDateTime, Time};
        let day_start = |d: TDate| d.with_time(Time::MIDNIGHT).assume_utc().unix_timestamp().saturating_mul(1000);
        let t = OffsetDateTime::from_unix_timestamp(now_ms.div_euclid(1000)).unwrap();
        match w {
            Window::Daily => day_start(t.date()),
            Window::Monthly => day_start(t.date().replace_day(1).unwrap()),
            Window::Weekly | Window::None => unreachable!(),
        }
    }

    #[test]
    fn utc_windows_are_the_ones_budgets_without_a_time_zone_always_had() {
        let mut now = ms("2023-12-30T00:00:00Z") - 1;
        while now < ms("2026-03-02T00:00:00Z") {
            for w in [Window::Daily, Window::Monthly] {
                assert_eq!(w.start_ms(now), old_utc_start(w, now), "{w:?} at {now}");
            }
            now += 7 * 3_600_000 + 13 * 60_000 + 17_001;
        }
    }

    fn zone(name: &str) -> TimeZone {
        time_zone(name).unwrap()
    }

    /// (start, next) as RFC 3339 UTC.
    fn bounds(w: Window, tz: &str, now: &str) -> (String, String) {
        let (start, next) = w.bounds(&zone(tz), ms(now));
        (crate::ids::rfc3339_ms(start), crate::ids::rfc3339_ms(next.unwrap()))
    }

    fn pair(a: &str, b: &str) -> (String, String) {
        (a.to_string(), b.to_string())
    }

    const H: i64 = 3_600_000;

    #[test]
    fn berlin_days_last_23_hours_in_spring_and_25_in_autumn() {
        // 2025-03-30: 02:00 CET becomes 03:00 CEST.
        let (start, next) = Window::Daily.bounds(&zone("Europe/Berlin"), ms("2025-03-30T12:00:00Z"));
        assert_eq!((start, next), (ms("2025-03-29T23:00:00Z"), Some(ms("2025-03-30T22:00:00Z"))));
        assert_eq!(next.unwrap() - start, 23 * H);
        // The day before and after, by the last and first millisecond.
        assert_eq!(
            bounds(Window::Daily, "Europe/Berlin", "2025-03-29T22:59:59.999Z"),
            pair("2025-03-28T23:00:00.000Z", "2025-03-29T23:00:00.000Z")
        );
        assert_eq!(
            bounds(Window::Daily, "Europe/Berlin", "2025-03-30T22:00:00Z"),
            pair("2025-03-30T22:00:00.000Z", "2025-03-31T22:00:00.000Z")
        );
        // 2025-10-26: 03:00 CEST becomes 02:00 CET.
        let (start, next) = Window::Daily.bounds(&zone("Europe/Berlin"), ms("2025-10-26T02:30:00Z"));
        assert_eq!((start, next), (ms("2025-10-25T22:00:00Z"), Some(ms("2025-10-26T23:00:00Z"))));
        assert_eq!(next.unwrap() - start, 25 * H);
    }

    #[test]
    fn new_york_days_last_23_hours_in_spring_and_25_in_autumn() {
        // 2025-03-09: 02:00 EST becomes 03:00 EDT.
        let (start, next) = Window::Daily.bounds(&zone("America/New_York"), ms("2025-03-09T12:00:00Z"));
        assert_eq!((start, next), (ms("2025-03-09T05:00:00Z"), Some(ms("2025-03-10T04:00:00Z"))));
        assert_eq!(next.unwrap() - start, 23 * H);
        // 2025-11-02: 02:00 EDT becomes 01:00 EST; 01:30 happens twice, both in that day.
        for now in ["2025-11-02T05:30:00Z", "2025-11-02T06:30:00Z"] {
            let (start, next) = Window::Daily.bounds(&zone("America/New_York"), ms(now));
            assert_eq!((start, next), (ms("2025-11-02T04:00:00Z"), Some(ms("2025-11-03T05:00:00Z"))), "{now}");
        }
        // Before local midnight it is still the day before, whatever the UTC date says.
        assert_eq!(
            bounds(Window::Daily, "America/New_York", "2025-11-03T04:59:59.999Z"),
            pair("2025-11-02T04:00:00.000Z", "2025-11-03T05:00:00.000Z")
        );
    }

    #[test]
    fn weeks_start_on_monday_at_local_midnight_across_dst() {
        // Berlin, the week of the spring change: Monday 2025-03-24 to Monday 2025-03-31, 7 days − 1 hour.
        for now in ["2025-03-23T23:00:00Z", "2025-03-26T12:00:00Z", "2025-03-30T21:59:59.999Z"] {
            assert_eq!(
                bounds(Window::Weekly, "Europe/Berlin", now),
                pair("2025-03-23T23:00:00.000Z", "2025-03-30T22:00:00.000Z"),
                "{now}"
            );
        }
        // Sunday 23:59:59.999 UTC is already Monday in Berlin.
        assert_eq!(
            bounds(Window::Weekly, "Europe/Berlin", "2025-03-30T23:59:59.999Z"),
            pair("2025-03-30T22:00:00.000Z", "2025-04-06T22:00:00.000Z")
        );
        // New York, the week of the autumn change: 7 days + 1 hour.
        let (start, next) = Window::Weekly.bounds(&zone("America/New_York"), ms("2025-11-02T12:00:00Z"));
        assert_eq!((start, next), (ms("2025-10-27T04:00:00Z"), Some(ms("2025-11-03T05:00:00Z"))));
        assert_eq!(next.unwrap() - start, 7 * 24 * H + H);
        // And the spring one: Monday 2025-03-03 00:00 EST to Monday 2025-03-10 00:00 EDT.
        assert_eq!(
            bounds(Window::Weekly, "America/New_York", "2025-03-09T07:00:00Z"),
            pair("2025-03-03T05:00:00.000Z", "2025-03-10T04:00:00.000Z")
        );
    }

    #[test]
    fn months_start_on_the_first_at_local_midnight() {
        // 00:30 on April 1st in Berlin is still March 31st in UTC.
        assert_eq!(
            bounds(Window::Monthly, "Europe/Berlin", "2025-03-31T22:30:00Z"),
            pair("2025-03-31T22:00:00.000Z", "2025-04-30T22:00:00.000Z")
        );
        // March holds the spring change: 31 days − 1 hour.
        assert_eq!(
            bounds(Window::Monthly, "Europe/Berlin", "2025-03-31T21:59:59.999Z"),
            pair("2025-02-28T23:00:00.000Z", "2025-03-31T22:00:00.000Z")
        );
        // Across the year, and a leap February.
        assert_eq!(
            bounds(Window::Monthly, "Europe/Berlin", "2025-12-31T23:30:00Z"),
            pair("2025-12-31T23:00:00.000Z", "2026-01-31T23:00:00.000Z")
        );
        assert_eq!(
            bounds(Window::Monthly, "UTC", "2024-02-29T23:59:59.999Z"),
            pair("2024-02-01T00:00:00.000Z", "2024-03-01T00:00:00.000Z")
        );
        assert_eq!(
            bounds(Window::Monthly, "America/New_York", "2025-11-01T03:59:59.999Z"),
            pair("2025-10-01T04:00:00.000Z", "2025-11-01T04:00:00.000Z")
        );
        // A zone east of UTC by more than a day's half.
        assert_eq!(
            bounds(Window::Monthly, "Pacific/Kiritimati", "2025-05-31T10:00:00Z"),
            pair("2025-05-31T10:00:00.000Z", "2025-06-30T10:00:00.000Z")
        );
    }

    #[test]
    fn a_day_whose_midnight_does_not_exist_starts_when_the_gap_ends() {
        // Santiago de Chile, 2024-09-08: 24:00 −04 becomes 01:00 −03.
        assert_eq!(
            bounds(Window::Daily, "America/Santiago", "2024-09-08T12:00:00Z"),
            pair("2024-09-08T04:00:00.000Z", "2024-09-09T03:00:00.000Z")
        );
        assert_eq!(
            bounds(Window::Daily, "America/Santiago", "2024-09-08T03:59:59.999Z"),
            pair("2024-09-07T04:00:00.000Z", "2024-09-08T04:00:00.000Z")
        );
    }

    #[test]
    fn every_instant_lies_in_its_window_and_windows_tile_time() {
        for tz in
            ["UTC", "Europe/Berlin", "America/New_York", "America/Santiago", "Australia/Lord_Howe", "Asia/Kolkata"]
        {
            let tz = zone(tz);
            for w in [Window::Daily, Window::Weekly, Window::Monthly] {
                let mut now = ms("2024-01-01T00:00:00Z");
                while now < ms("2026-01-01T00:00:00Z") {
                    let (start, next) = w.bounds(&tz, now);
                    let next = next.unwrap();
                    assert!(start <= now && now < next, "{w:?} {tz:?} {now}: {start}..{next}");
                    // The next window starts where this one ends.
                    assert_eq!(w.bounds(&tz, next).0, next, "{w:?} {tz:?} {now}");
                    assert_eq!(w.bounds(&tz, next - 1).0, start, "{w:?} {tz:?} {now}");
                    now += 5 * H + 7 * 60_000 + 11;
                }
            }
        }
    }

    #[test]
    fn time_zones_are_iana_names_of_the_bundled_database() {
        assert_eq!(zone("Europe/Berlin").iana_name(), Some("Europe/Berlin"));
        assert_eq!(zone("europe/berlin").iana_name(), Some("Europe/Berlin"), "any ASCII case finds it");
        assert_eq!(zone("UTC").iana_name(), Some("UTC"));
        assert_eq!(zone("US/Eastern").iana_name(), Some("US/Eastern"), "links are names too");
        for bad in ["", "Mars/Olympus_Mons", "Etc/Unknown", "+02:00", "CET-1CEST,M3.5.0,M10.5.0/3", "../etc/passwd"] {
            assert!(time_zone(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn costs_round_up_and_use_the_cached_price() {
        let p = Price { input: 2_500_000, output: 10_000_000, cached: None };
        // 1000 in at 2.5/M = 2500 micros; 500 out at 10/M = 5000 micros.
        assert_eq!(cost_micros(&p, 1000, 500, 0), 7500);
        // Cached tokens at the input price when no cached price is set.
        assert_eq!(cost_micros(&p, 0, 0, 1000), 2500);
        let p = Price { cached: Some(1_250_000), ..p };
        assert_eq!(cost_micros(&p, 0, 0, 1000), 1250);
        // One token at 0.15/M is 0.15 micro-USD: rounds up to 1.
        assert_eq!(cost_micros(&Price { input: 150_000, output: 0, cached: None }, 1, 0, 0), 1);
        assert_eq!(cost_micros(&p, u64::MAX, u64::MAX, u64::MAX), i64::MAX);
    }

    #[test]
    fn matching_prefers_exact_then_longest_prefix_then_catch_all() {
        let e = |p: &str, m: &str, v: i32| (p.to_string(), m.to_string(), v);
        let entries =
            vec![e("openai", "gpt-4o", 1), e("openai", "gpt-4o*", 2), e("openai", "gpt-*", 3), e("*", "*", 9)];
        assert_eq!(match_price(&entries, "openai", Some("gpt-4o")), Some(&1));
        assert_eq!(match_price(&entries, "openai", Some("gpt-4o-2024-08-06")), Some(&2));
        assert_eq!(match_price(&entries, "openai", Some("gpt-3.5")), Some(&3));
        assert_eq!(match_price(&entries, "anthropic", Some("gpt-4o")), Some(&9));
        assert_eq!(match_price(&entries, "openai", None), Some(&9));
        assert_eq!(match_price(&entries[..3], "x", None), None);
    }

    #[test]
    fn money_conversions() {
        assert_eq!(usd_to_micros(2.5), 2_500_000);
        assert_eq!(usd_to_micros(0.075), 75_000);
        assert!((micros_to_usd(1_250_000) - 1.25).abs() < 1e-12);
    }
}
