//! Money, prices and budget windows. Pure functions: the storage layer keeps
//! the numbers, this module does the arithmetic.
//!
//! Money is integer micro-USD (1 USD = 1 000 000). Prices are micro-USD per
//! million tokens. Costs round up, so that rounding never makes a request free.

use serde::{Deserialize, Serialize};
use time::{Date, OffsetDateTime, Time};

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

/// How often a budget starts over.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Window {
    /// Resets at 00:00 UTC.
    Daily,
    /// Resets at 00:00 UTC on the first of the month.
    Monthly,
    /// Never resets.
    #[default]
    None,
}

impl Window {
    pub fn as_str(self) -> &'static str {
        match self {
            Window::Daily => "daily",
            Window::Monthly => "monthly",
            Window::None => "none",
        }
    }

    /// Start (unix ms) of the window containing `now_ms`; 0 for [`Window::None`].
    pub fn start_ms(self, now_ms: i64) -> i64 {
        let day_start = |d: Date| d.with_time(Time::MIDNIGHT).assume_utc().unix_timestamp().saturating_mul(1000);
        let Ok(t) = OffsetDateTime::from_unix_timestamp(now_ms.div_euclid(1000)) else {
            return 0;
        };
        match self {
            Window::None => 0,
            Window::Daily => day_start(t.date()),
            Window::Monthly => t.date().replace_day(1).map(day_start).unwrap_or(0),
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
        assert_eq!(Window::Monthly.start_ms(now), ms("2025-03-01T00:00:00Z"));
        assert_eq!(Window::None.start_ms(now), 0);
        assert_eq!(Window::Daily.start_ms(ms("2025-03-17T00:00:00Z")), ms("2025-03-17T00:00:00Z"));
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
