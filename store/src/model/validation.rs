//! Validation of request input: names, descriptions and metadata, ids,
//! models, base URLs, rate limits, budgets and prices, and the syntax of a
//! configuration's `access` and `router` (references to other resources are
//! checked by [`crate::policy::references`], against the stored data).
//!
//! Every check returns [`StoreError::Invalid`] naming the field at fault.

use crate::error::StoreError;
use crate::pricing::{time_zone, MAX_PRICE_USD, MAX_USD};

use super::requests::PutPrice;
use super::resources::{AccessSpec, BudgetSpec, RateLimitsSpec, RequestLimitsSpec, RouterSpec, StepSpec};

pub const NAME_MAX: usize = 255;
pub const DESCRIPTION_MAX: usize = 255;
pub const METADATA_MAX: usize = 4096;
pub const PROVIDER_KEY_VALUE_MAX: usize = 8192;
pub const MAX_GRACE_SECONDS: u64 = 30 * 24 * 3600;
const LIST_MAX: usize = 1000;

type V<T> = Result<T, StoreError>;

/// Client input quoted in an error message: at most its first 64 characters,
/// so that an error never echoes a huge or hostile value whole.
pub fn short(s: &str) -> String {
    const MAX: usize = 64;
    match s.char_indices().nth(MAX) {
        Some((end, _)) => format!("{}…", s.get(..end).unwrap_or_default()),
        None => s.to_string(),
    }
}

fn chars(s: &str) -> usize {
    s.chars().count()
}

/// A required, non-blank name of at most [`NAME_MAX`] characters.
pub fn check_name(field: &str, s: &str) -> V<()> {
    if s.trim().is_empty() {
        return Err(StoreError::invalid(field, format!("{field} must not be empty")));
    }
    check_len(field, s, NAME_MAX)
}

pub fn check_len(field: &str, s: &str, max: usize) -> V<()> {
    if chars(s) > max {
        return Err(StoreError::invalid(field, format!("{field} is longer than {max} characters")));
    }
    Ok(())
}

pub fn check_description(s: &str) -> V<()> {
    check_len("description", s, DESCRIPTION_MAX)
}

pub fn check_metadata(s: &str) -> V<()> {
    check_len("metadata", s, METADATA_MAX)
}

/// The `description` and `metadata` of a create body (absent = empty), checked.
pub fn check_texts(description: Option<String>, metadata: Option<String>) -> V<(String, String)> {
    let (description, metadata) = (description.unwrap_or_default(), metadata.unwrap_or_default());
    check_description(&description)?;
    check_metadata(&metadata)?;
    Ok((description, metadata))
}

/// The `name`, `description` and `metadata` of a PATCH body, checked in that
/// order; a `null` description or metadata becomes empty.
pub fn check_text_changes(
    name: Option<&str>,
    description: Option<Option<String>>,
    metadata: Option<Option<String>>,
) -> V<(Option<String>, Option<String>)> {
    if let Some(n) = name {
        check_name("name", n)?;
    }
    let description = description.map(Option::unwrap_or_default);
    let metadata = metadata.map(Option::unwrap_or_default);
    if let Some(d) = &description {
        check_description(d)?;
    }
    if let Some(m) = &metadata {
        check_metadata(m)?;
    }
    Ok((description, metadata))
}

/// Largest rate limit accepted (per minute).
pub const MAX_RATE: u64 = 1_000_000_000;
/// Largest token budget accepted.
pub const MAX_BUDGET_TOKENS: u64 = 1_000_000_000_000_000;

pub fn check_rate_limits(field: &str, r: &RateLimitsSpec) -> V<()> {
    for (name, v) in [("requestsPerMinute", r.requests_per_minute), ("tokensPerMinute", r.tokens_per_minute)] {
        if let Some(v) = v {
            if v == 0 || v > MAX_RATE {
                return Err(StoreError::invalid(
                    format!("{field}.{name}"),
                    format!("{field}.{name} must be an integer from 1 to {MAX_RATE}"),
                ));
            }
        }
    }
    Ok(())
}

/// Largest per-request token limit accepted.
pub const MAX_REQUEST_TOKENS: u64 = 100_000_000;
/// Largest concurrency cap accepted.
pub const MAX_CONCURRENT: u64 = 1_000_000;
/// Longest per-request timeout accepted (an hour).
pub const MAX_TIMEOUT_MS: u64 = 3_600_000;

/// An access key's own `maxConcurrentRequests`: the bounds of a
/// configuration's `requestLimits.maxConcurrentRequests`.
pub fn check_key_concurrency(v: u64) -> V<()> {
    if v == 0 || v > MAX_CONCURRENT {
        return Err(StoreError::invalid(
            "maxConcurrentRequests",
            format!("maxConcurrentRequests must be an integer from 1 to {MAX_CONCURRENT}"),
        ));
    }
    Ok(())
}

pub fn check_request_limits(field: &str, r: &RequestLimitsSpec) -> V<()> {
    let bounds = [
        ("maxInputTokens", r.max_input_tokens, MAX_REQUEST_TOKENS),
        ("maxOutputTokens", r.max_output_tokens, MAX_REQUEST_TOKENS),
        ("maxConcurrentRequests", r.max_concurrent_requests, MAX_CONCURRENT),
        ("attemptTimeoutMs", r.attempt_timeout_ms, MAX_TIMEOUT_MS),
        ("totalTimeoutMs", r.total_timeout_ms, MAX_TIMEOUT_MS),
    ];
    for (name, v, max) in bounds {
        if v.is_some_and(|v| v == 0 || v > max) {
            return Err(StoreError::invalid(
                format!("{field}.{name}"),
                format!("{field}.{name} must be an integer from 1 to {max}"),
            ));
        }
    }
    Ok(())
}

/// A USD amount: finite, within `[min, max]`.
pub fn check_usd(field: &str, v: f64, min: f64, max: f64) -> V<()> {
    if !v.is_finite() || v < min || v > max {
        return Err(StoreError::invalid(field, format!("{field} must be a number from {min} to {max}")));
    }
    Ok(())
}

pub fn check_budget(field: &str, b: &BudgetSpec) -> V<()> {
    if b.tokens.is_none() && b.cost_usd.is_none() {
        return Err(StoreError::invalid(field, format!("{field} needs tokens and/or costUsd")));
    }
    if let Some(t) = b.tokens {
        if t > MAX_BUDGET_TOKENS {
            return Err(StoreError::invalid(
                format!("{field}.tokens"),
                format!("{field}.tokens must be at most {MAX_BUDGET_TOKENS}"),
            ));
        }
    }
    if let Some(c) = b.cost_usd {
        check_usd(&format!("{field}.costUsd"), c, 0.0, MAX_USD)?;
    }
    if let Some(tz) = &b.time_zone {
        check_time_zone(&format!("{field}.timeZone"), tz)?;
    }
    Ok(())
}

/// An IANA time zone name, spelled as in the tz database (`Europe/Berlin`,
/// `UTC`): what is stored is what every replica looks up.
pub fn check_time_zone(field: &str, name: &str) -> V<()> {
    match time_zone(name).as_ref().and_then(|tz| tz.iana_name()) {
        Some(canonical) if canonical == name => Ok(()),
        Some(canonical) => Err(StoreError::invalid(
            field,
            format!("{field} must be spelled as in the tz database: \"{canonical}\", not \"{}\"", short(name)),
        )),
        None => Err(StoreError::invalid(
            field,
            format!(
                "{field} must be an IANA time zone name such as \"Europe/Berlin\" or \"UTC\", not \"{}\"",
                short(name)
            ),
        )),
    }
}

pub fn check_price(p: &PutPrice) -> V<()> {
    check_usd("inputPerMillionUsd", p.input_per_million_usd, 0.0, MAX_PRICE_USD)?;
    check_usd("outputPerMillionUsd", p.output_per_million_usd, 0.0, MAX_PRICE_USD)?;
    if let Some(c) = p.cached_input_per_million_usd {
        check_usd("cachedInputPerMillionUsd", c, 0.0, MAX_PRICE_USD)?;
    }
    Ok(())
}

/// Provider ids: `[a-z0-9][a-z0-9._-]{0,62}`.
pub fn is_provider_id(s: &str) -> bool {
    let b = s.as_bytes();
    matches!(b.first(), Some(c) if c.is_ascii_lowercase() || c.is_ascii_digit())
        && b.len() <= 63
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'.' | b'_' | b'-'))
}

/// Resource ids as we issue them (`ak_…`, `pk_…`, `akc_…`): short, `[a-z0-9_]`.
pub fn is_plausible_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_')
}

/// A model pattern: non-empty, no whitespace, `*` only as the last character.
pub fn check_model_pattern(field: &str, s: &str) -> V<()> {
    if s.is_empty() {
        return Err(StoreError::invalid(field, format!("{field}: empty model name")));
    }
    check_len(field, s, NAME_MAX)?;
    if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(StoreError::invalid(field, format!("{field}: model names contain no whitespace")));
    }
    if let Some(pos) = s.find('*') {
        if pos + 1 != s.len() {
            return Err(StoreError::invalid(
                field,
                format!("{field}: `*` is allowed only at the end of a model pattern"),
            ));
        }
    }
    Ok(())
}

/// A provider-qualified model (`openai/gpt-4o`, `anthropic/claude-*`):
/// returns `(provider, provider-local model)`.
pub fn split_qualified_model<'a>(field: &str, s: &'a str) -> V<(&'a str, &'a str)> {
    let Some((provider, model)) = s.split_once('/') else {
        return Err(StoreError::invalid(field, format!("{field}: models are provider-qualified, e.g. openai/gpt-4o")));
    };
    if !is_provider_id(provider) {
        return Err(StoreError::invalid(field, format!("{field}: `{}` is not a valid provider id", short(provider))));
    }
    check_model_pattern(field, model)?;
    check_len(field, s, NAME_MAX)?;
    Ok((provider, model))
}

pub fn check_models(field: &str, models: &[String]) -> V<()> {
    if models.len() > LIST_MAX {
        return Err(StoreError::invalid(field, format!("{field}: at most {LIST_MAX} entries")));
    }
    for (i, m) in models.iter().enumerate() {
        check_model_pattern(&format!("{field}[{i}]"), m)?;
    }
    Ok(())
}

/// Normalizes a provider base URL: `http(s)://host[:port][/path]`, no query,
/// fragment or user info; trailing slashes removed.
pub fn normalize_base_url(s: &str) -> V<String> {
    check_http_url("baseUrl", s)
}

/// An alert webhook's `url`: checked as a provider base URL is (http or
/// https, a host and port, a plain path; no user info, query, fragment,
/// whitespace, escape or dot segment), kept as given (a trailing slash too).
pub fn check_webhook_url(s: &str) -> V<String> {
    check_http_url("url", s)?;
    Ok(s.to_string())
}

/// Shortest and longest webhook secret accepted.
pub const WEBHOOK_SECRET_MIN: usize = 16;
pub const WEBHOOK_SECRET_MAX: usize = 256;

/// A webhook secret given by the caller: 16 to 256 printable ASCII
/// characters without spaces (it goes into HMAC keys, never into a header).
pub fn check_webhook_secret(s: &str) -> V<()> {
    let n = s.len();
    if !(WEBHOOK_SECRET_MIN..=WEBHOOK_SECRET_MAX).contains(&n) || !s.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(StoreError::invalid(
            "secret",
            format!(
                "secret must be {WEBHOOK_SECRET_MIN} to {WEBHOOK_SECRET_MAX} printable ASCII characters without spaces"
            ),
        ));
    }
    Ok(())
}

/// A webhook's `thresholds`: 1 to 20 integers from 1 to 100 (percent);
/// returned sorted and without duplicates.
pub fn check_thresholds(t: &[i64]) -> V<Vec<u8>> {
    use crate::policy::alerts::MAX_THRESHOLDS;
    if t.is_empty() || t.len() > MAX_THRESHOLDS {
        return Err(StoreError::invalid(
            "thresholds",
            format!("thresholds must list 1 to {MAX_THRESHOLDS} percentages"),
        ));
    }
    let mut out = Vec::with_capacity(t.len());
    for (i, v) in t.iter().enumerate() {
        match u8::try_from(*v) {
            Ok(p) if (1..=100).contains(&p) => out.push(p),
            _ => {
                return Err(StoreError::invalid(
                    format!("thresholds[{i}]"),
                    format!("thresholds[{i}] must be an integer percentage from 1 to 100"),
                ))
            }
        }
    }
    Ok(crate::policy::alerts::normalize_thresholds(out))
}

/// A webhook's `events`: at least one; returned sorted, without duplicates.
pub fn check_events(e: &[crate::policy::alerts::AlertEvent]) -> V<Vec<crate::policy::alerts::AlertEvent>> {
    if e.is_empty() {
        return Err(StoreError::invalid("events", "events must name at least one of budget, credits, key_expiry"));
    }
    let mut out = e.to_vec();
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

/// A webhook's `expiryWarningDays`: 1 to 365.
pub fn check_expiry_warning_days(d: i64) -> V<u32> {
    use crate::policy::alerts::MAX_EXPIRY_WARNING_DAYS;
    match u32::try_from(d) {
        Ok(d) if (1..=MAX_EXPIRY_WARNING_DAYS).contains(&d) => Ok(d),
        _ => Err(StoreError::invalid(
            "expiryWarningDays",
            format!("expiryWarningDays must be an integer from 1 to {MAX_EXPIRY_WARNING_DAYS}"),
        )),
    }
}

/// An `http(s)://host[:port][/path]` URL (see [`normalize_base_url`]), in
/// errors called `field`; returned without trailing slashes.
fn check_http_url(field: &str, s: &str) -> V<String> {
    let bad = |why: &str| StoreError::invalid(field, format!("{field} {why}"));
    if chars(s) > 2048 {
        return Err(bad("is too long"));
    }
    let rest = if let Some(r) = s.strip_prefix("https://") {
        r
    } else if let Some(r) = s.strip_prefix("http://") {
        r
    } else {
        return Err(bad("must start with http:// or https://"));
    };
    if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad("must not contain whitespace"));
    }
    if s.contains('?') || s.contains('#') {
        return Err(bad("must not have a query or fragment"));
    }
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    // The path is the API root every request path is appended to: it must
    // mean the same to every server (no dot segment, escape or backslash).
    let path = path.trim_end_matches('/');
    let clean_segment = |seg: &str| {
        !matches!(seg, "" | "." | "..") && seg.bytes().all(|b| b.is_ascii_alphanumeric() || b"._:-~".contains(&b))
    };
    if !path.is_empty() && !path.get(1..).unwrap_or_default().split('/').all(clean_segment) {
        return Err(bad("path may hold only letters, digits and . _ : - ~, with no empty, `.` or `..` segment"));
    }
    if authority.contains('@') {
        return Err(bad("must not contain user info"));
    }
    let host_ok = if let Some(v6) = authority.strip_prefix('[') {
        match v6.split_once(']') {
            Some((h, port)) => {
                !h.is_empty()
                    && h.chars().all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.')
                    && (port.is_empty() || port.strip_prefix(':').is_some_and(valid_port))
            }
            None => false,
        }
    } else {
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        };
        !host.is_empty()
            && host.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_')
            && port.is_none_or(valid_port)
    };
    if !host_ok {
        return Err(bad("must have a valid host (and optional port)"));
    }
    Ok(s.trim_end_matches('/').to_string())
}

fn valid_port(p: &str) -> bool {
    !p.is_empty() && p.len() <= 5 && p.bytes().all(|c| c.is_ascii_digit()) && p.parse::<u16>().is_ok_and(|n| n > 0)
}

/// Syntax checks of a configuration's `access` and `router` (no lookups).
pub fn check_config_syntax(access: Option<&AccessSpec>, router: Option<&RouterSpec>) -> V<()> {
    if let Some(a) = access {
        if let Some(p) = &a.providers {
            if p.allow.len() > LIST_MAX {
                return Err(StoreError::invalid("access.providers.allow", "too many entries"));
            }
            for (i, id) in p.allow.iter().enumerate() {
                if !is_provider_id(id) {
                    return Err(StoreError::invalid(
                        format!("access.providers.allow[{i}]"),
                        format!("`{}` is not a valid provider id", short(id)),
                    ));
                }
            }
        }
        if let Some(m) = &a.models {
            if m.allow.len() > LIST_MAX {
                return Err(StoreError::invalid("access.models.allow", "too many entries"));
            }
            for (i, model) in m.allow.iter().enumerate() {
                split_qualified_model(&format!("access.models.allow[{i}]"), model)?;
            }
        }
        if let Some(e) = &a.endpoints {
            if e.allow.len() > LIST_MAX {
                return Err(StoreError::invalid("access.endpoints.allow", "too many entries"));
            }
            for (i, name) in e.allow.iter().enumerate() {
                if !keygate_proto::endpoints::is_valid_pattern(name) {
                    return Err(StoreError::invalid(
                        format!("access.endpoints.allow[{i}]"),
                        format!(
                            "`{}` is not an endpoint name (e.g. files.read, batches.*, *; see the README)",
                            short(name)
                        ),
                    ));
                }
            }
        }
    }
    if let Some(ips) = access.and_then(|a| a.client_ips.as_ref()) {
        if ips.allow.len() > LIST_MAX {
            return Err(StoreError::invalid("access.clientIps.allow", "too many entries"));
        }
        for (i, entry) in ips.allow.iter().enumerate() {
            if keygate_proto::cidr::Cidr::parse(entry).is_none() {
                return Err(StoreError::invalid(
                    format!("access.clientIps.allow[{i}]"),
                    format!(
                        "`{}` is not an IPv4/IPv6 address or CIDR block without host bits (e.g. 10.0.0.0/8, 2001:db8::/32)",
                        short(entry)
                    ),
                ));
            }
        }
    }
    if let Some(r) = router {
        if r.rules.len() > LIST_MAX {
            return Err(StoreError::invalid("router.rules", "too many rules"));
        }
        let mut scopes: Vec<(Option<&str>, Option<&str>)> = Vec::new();
        for (i, rule) in r.rules.iter().enumerate() {
            let f = format!("router.rules[{i}]");
            if let Some(p) = &rule.provider {
                if !is_provider_id(p) {
                    return Err(StoreError::invalid(
                        format!("{f}.provider"),
                        format!("`{}` is not a valid provider id", short(p)),
                    ));
                }
            }
            match (&rule.provider, &rule.model) {
                (None, None) => {
                    return Err(StoreError::invalid(&f, format!("{f} needs a provider and/or a model")));
                }
                (p, Some(m)) => {
                    let (mp, _) = split_qualified_model(&format!("{f}.model"), m)?;
                    if let Some(p) = p {
                        if p != mp {
                            return Err(StoreError::invalid(
                                format!("{f}.model"),
                                format!("{f}: model `{m}` does not belong to provider `{p}`"),
                            ));
                        }
                    }
                }
                (Some(_), None) => {}
            }
            let scope = (rule.provider_id(), rule.model.as_deref());
            if scopes.contains(&scope) {
                return Err(StoreError::invalid(&f, format!("{f} repeats the scope of an earlier rule")));
            }
            scopes.push(scope);
            if rule.steps.is_empty() {
                return Err(StoreError::invalid(format!("{f}.steps"), format!("{f} needs at least one step")));
            }
            for (j, step) in rule.steps.iter().enumerate() {
                if let StepSpec::User { keys, .. } = step {
                    if keys.is_empty() {
                        return Err(StoreError::invalid(
                            format!("{f}.steps[{j}].keys"),
                            "a user step needs at least one key",
                        ));
                    }
                    for (k, key) in keys.iter().enumerate() {
                        if !is_plausible_id(&key.id) {
                            return Err(StoreError::invalid(
                                format!("{f}.steps[{j}].keys[{k}].id"),
                                "not a provider key id",
                            ));
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{AllowList, RuleSpec};

    #[test]
    fn budget_time_zones_are_iana_names_spelled_as_in_the_database() {
        let b = |tz: &str| BudgetSpec {
            tokens: Some(1),
            cost_usd: None,
            window: crate::pricing::Window::Daily,
            time_zone: Some(tz.into()),
        };
        for ok in ["Europe/Berlin", "America/New_York", "UTC", "Asia/Kolkata", "US/Eastern"] {
            assert!(check_budget("budget", &b(ok)).is_ok(), "{ok}");
        }
        let msg = |tz: &str| match check_budget("budget", &b(tz)) {
            Err(StoreError::Invalid { field, msg }) => (field, msg),
            other => panic!("{tz}: {other:?}"),
        };
        assert_eq!(
            msg("Europe/Berln"),
            (
                "budget.timeZone".into(),
                "budget.timeZone must be an IANA time zone name such as \"Europe/Berlin\" or \"UTC\", not \"Europe/Berln\"".into()
            )
        );
        assert_eq!(
            msg("europe/berlin").1,
            "budget.timeZone must be spelled as in the tz database: \"Europe/Berlin\", not \"europe/berlin\""
        );
        for bad in ["", "+02:00", "Etc/Unknown", "CET-1CEST", "Europe/Berlin ", &"A".repeat(5000)] {
            assert_eq!(msg(bad).0, "budget.timeZone", "{bad}");
        }
    }

    #[test]
    fn base_urls() {
        assert_eq!(normalize_base_url("https://api.openai.com/v1/").unwrap(), "https://api.openai.com/v1");
        assert_eq!(normalize_base_url("http://127.0.0.1:9999").unwrap(), "http://127.0.0.1:9999");
        assert_eq!(normalize_base_url("http://[::1]:80/x").unwrap(), "http://[::1]:80/x");
        for bad in [
            "ftp://x",
            "https://",
            "https:///v1",
            "https://a b",
            "https://x/v1?q=1",
            "https://x#f",
            "https://u:p@x",
            "https://x:99999",
            "https://x:",
            "api.openai.com",
            "http://h/v1/../admin",
            "http://h/./v1",
            "http://h/v1//x",
            "http://h/v1/%2e%2e",
            "http://h/v1\\x",
            "http://h/a;b",
        ] {
            assert!(normalize_base_url(bad).is_err(), "{bad}");
        }
        let azure = "https://az.example/openai/deployments/gpt-4o.v2";
        assert_eq!(normalize_base_url(azure).unwrap(), azure);
    }

    #[test]
    fn webhook_urls_are_checked_as_base_urls_are_and_kept_as_given() {
        assert_eq!(check_webhook_url("https://hooks.example/keygate/").unwrap(), "https://hooks.example/keygate/");
        assert_eq!(check_webhook_url("http://127.0.0.1:9999/h").unwrap(), "http://127.0.0.1:9999/h");
        for bad in [
            "ftp://x/h",
            "https://user:pass@x/h",
            "https://token@x/h",
            "https://x/h?token=1",
            "https://x/h#f",
            "https://x/h/../admin",
            "https://x/h%2f",
            "https://x /h",
            "https://x/h\n",
            "https://x:0/h",
            "javascript:alert(1)",
            "//x/h",
            "",
        ] {
            match check_webhook_url(bad) {
                Err(StoreError::Invalid { field, .. }) => assert_eq!(field, "url", "{bad}"),
                other => panic!("{bad}: {other:?}"),
            }
        }
    }

    #[test]
    fn webhook_thresholds_events_days_and_secrets() {
        assert_eq!(check_thresholds(&[100, 50, 80, 50]).unwrap(), vec![50, 80, 100]);
        assert_eq!(check_thresholds(&[1, 100]).unwrap(), vec![1, 100]);
        for (bad, field) in [
            (vec![], "thresholds"),
            (vec![0], "thresholds[0]"),
            (vec![50, 101], "thresholds[1]"),
            (vec![-1], "thresholds[0]"),
        ] {
            match check_thresholds(&bad) {
                Err(StoreError::Invalid { field: f, .. }) => assert_eq!(f, field, "{bad:?}"),
                other => panic!("{bad:?}: {other:?}"),
            }
        }
        assert!(check_thresholds(&[5; 21]).is_err());
        use crate::policy::alerts::AlertEvent::{Budget, KeyExpiry};
        assert_eq!(check_events(&[KeyExpiry, Budget, KeyExpiry]).unwrap(), vec![Budget, KeyExpiry]);
        assert!(check_events(&[]).is_err());
        assert_eq!(check_expiry_warning_days(7).unwrap(), 7);
        assert!(check_expiry_warning_days(0).is_err() && check_expiry_warning_days(366).is_err());
        assert!(check_webhook_secret(&"a".repeat(16)).is_ok());
        for bad in [
            "short".to_string(),
            "a".repeat(257),
            format!("{} x", "a".repeat(20)),
            format!("{}\n", "a".repeat(20)),
            "é".repeat(10),
        ] {
            assert!(check_webhook_secret(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn model_patterns() {
        assert!(check_model_pattern("m", "gpt-*").is_ok());
        assert!(check_model_pattern("m", "*").is_ok());
        assert!(check_model_pattern("m", "g*t").is_err());
        assert!(check_model_pattern("m", "").is_err());
        assert_eq!(split_qualified_model("m", "openai/gpt-4o").unwrap(), ("openai", "gpt-4o"));
        assert_eq!(split_qualified_model("m", "openrouter/openai/gpt-4o").unwrap(), ("openrouter", "openai/gpt-4o"));
        assert!(split_qualified_model("m", "gpt-4o").is_err());
        assert!(split_qualified_model("m", "open*/gpt").is_err());
        assert!(split_qualified_model("m", "openai/").is_err());
    }

    #[test]
    fn provider_ids() {
        assert!(is_provider_id("openai"));
        assert!(is_provider_id("my-vllm.local_1"));
        assert!(!is_provider_id("-x"));
        assert!(!is_provider_id("OpenAI"));
        assert!(!is_provider_id(""));
        assert!(!is_provider_id(&"a".repeat(64)));
    }

    #[test]
    fn config_syntax() {
        let rule = |p: Option<&str>, m: Option<&str>| RuleSpec {
            provider: p.map(String::from),
            model: m.map(String::from),
            steps: vec![StepSpec::Managed {}],
        };
        let ok = RouterSpec { rules: vec![rule(Some("openai"), None), rule(None, Some("openai/gpt-4o"))] };
        assert!(check_config_syntax(None, Some(&ok)).is_ok());
        let mismatch = RouterSpec { rules: vec![rule(Some("openai"), Some("anthropic/claude-*"))] };
        assert!(check_config_syntax(None, Some(&mismatch)).is_err());
        let neither = RouterSpec { rules: vec![rule(None, None)] };
        assert!(check_config_syntax(None, Some(&neither)).is_err());
        let dup = RouterSpec { rules: vec![rule(Some("openai"), None), rule(Some("openai"), None)] };
        assert!(check_config_syntax(None, Some(&dup)).is_err());
        let access =
            AccessSpec { models: Some(AllowList { allow: vec!["openai/g*4".into()] }), ..AccessSpec::default() };
        let err = check_config_syntax(Some(&access), None).unwrap_err();
        assert!(matches!(err, StoreError::Invalid { field, .. } if field == "access.models.allow[0]"));
    }
}
