//! Budget and credit alerts: which thresholds a budget has crossed, which
//! webhooks hear of it, what a delivery says, how it is signed, and when a
//! failed delivery is tried again.
//!
//! # When alerts are evaluated
//!
//! Budgets and credits are evaluated **where usage is settled**
//! ([`after_charges`], called by `reservation::ingest` in the transaction that
//! charges the budgets): that is the only moment a budget's use grows, so the
//! alert is exact (the crossing is seen on the very rows just written), costs
//! nothing when no webhook exists (one read of the webhooks), scans no
//! budgets, and is committed together with the spend — an ingest that fails
//! or is run again (PostgreSQL's serialization retries) queues nothing twice.
//! Key expiry is a matter of time passing, not of usage, so it is evaluated by
//! a sweep ([`sweep_expiry`], once a minute).
//!
//! # At most once
//!
//! Each alert first records a mark `(webhook, subject, unit, period,
//! threshold)` under a unique constraint (`alert_fired`) and queues a delivery
//! only if that insert was new. Two evaluations at once (two replicas on one
//! PostgreSQL) cannot both insert it: the second waits for the first and
//! either finds the mark or is run again by the serializable retry. A period
//! is a budget window (`daily:<start ms>`), a credit grant level
//! (`granted:<micro-USD>`: a top-up re-arms the thresholds) or a key's expiry
//! (`expires:<unix s>`). Several thresholds crossed at once send one alert,
//! for the highest; the lower ones are marked and never sent for that period.

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::Sha256;

use super::budget::{self, BudgetRef};
use super::ledger::Ledger;
use crate::error::StoreError;
use crate::ids::{new_id, rfc3339_ms, rfc3339_secs};
use crate::model::BudgetSpec;
use crate::pricing::{micros_to_usd, usd_to_micros, Window};

/// Thresholds of a webhook created without any (percent of the limit).
pub const DEFAULT_THRESHOLDS: [u8; 3] = [50, 80, 100];
/// Days before `expiresAt` a key's expiry is announced, by default.
pub const DEFAULT_EXPIRY_WARNING_DAYS: u32 = 7;
/// Longest expiry warning accepted.
pub const MAX_EXPIRY_WARNING_DAYS: u32 = 365;
/// Most thresholds per webhook.
pub const MAX_THRESHOLDS: usize = 20;

/// Default of `KEYGATE_ALERT_RETRY_BASE_MS`.
pub const DEFAULT_RETRY_BASE_MS: u64 = 1_000;
/// Default of `KEYGATE_ALERT_MAX_ATTEMPTS`.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 8;
/// Longest wait between two attempts, whatever the base and the attempt.
pub const MAX_RETRY_DELAY_MS: u64 = 3_600_000;
/// Finished deliveries (delivered or failed) are kept this long.
pub const DELIVERY_KEEP_MS: i64 = 30 * 24 * 3_600_000;
/// Marks of periods that ended are kept this long after the end.
pub const FIRED_KEEP_MS: i64 = 24 * 3_600_000;

const DAY_SECS: i64 = 86_400;

/// What a webhook is told about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertEvent {
    /// A key's or a configuration's budget crossed a threshold.
    Budget,
    /// The gateway-wide credit balance crossed a threshold of what was granted.
    Credits,
    /// An access key expires within the webhook's `expiryWarningDays`.
    KeyExpiry,
}

impl AlertEvent {
    pub const ALL: [AlertEvent; 3] = [AlertEvent::Budget, AlertEvent::Credits, AlertEvent::KeyExpiry];

    pub fn as_str(self) -> &'static str {
        match self {
            AlertEvent::Budget => "budget",
            AlertEvent::Credits => "credits",
            AlertEvent::KeyExpiry => "key_expiry",
        }
    }

    /// The `event` of a delivery (and its `x-keygate-event` header).
    pub fn delivery_event(self) -> &'static str {
        match self {
            AlertEvent::Budget => "budget.threshold",
            AlertEvent::Credits => "credits.threshold",
            AlertEvent::KeyExpiry => "key.expiry",
        }
    }
}

/// An enabled webhook, as the evaluation sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertTarget {
    pub id: String,
    /// `None`: store-wide; else only this configuration's budget and its keys.
    pub config_id: Option<String>,
    /// Percent, ascending, distinct, 1..=100.
    pub thresholds: Vec<u8>,
    pub events: Vec<AlertEvent>,
    pub expiry_warning_days: u32,
}

impl AlertTarget {
    fn wants(&self, e: AlertEvent) -> bool {
        self.events.contains(&e)
    }

    /// Whether a budget or key of configuration `config` (none: a key
    /// without one) is in this webhook's scope.
    fn covers(&self, config: Option<&str>) -> bool {
        match &self.config_id {
            None => true,
            Some(c) => config == Some(c.as_str()),
        }
    }
}

/// The mark of one alert: unique per (webhook, subject, unit, period, threshold).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fired {
    pub webhook_id: String,
    /// A budget scope (`key:<id>`, `config:<id>`, `credits`).
    pub subject: String,
    /// `tokens`, `usd` or `expiry`.
    pub unit: String,
    pub period: String,
    pub threshold: i64,
    /// When the period ends (unix ms); `None` for one that never ends.
    pub period_end_ms: Option<i64>,
    pub created_ms: i64,
}

/// A delivery to queue: its body is final (retries send the same bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDelivery {
    pub id: String,
    pub webhook_id: String,
    pub event: &'static str,
    pub payload: String,
    pub created_ms: i64,
}

/// An access key that expires soon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpiringKey {
    pub id: String,
    pub name: String,
    pub config_id: Option<String>,
    /// Unix seconds.
    pub expires_at: i64,
}

/// The rows of alerts, read and written in the caller's transaction.
pub trait AlertLedger: Ledger {
    /// The enabled webhooks.
    fn alert_targets(&mut self) -> Result<Vec<AlertTarget>, Self::Error>;
    fn key_name(&mut self, id: &str) -> Result<Option<String>, Self::Error>;
    fn config_name(&mut self, id: &str) -> Result<Option<String>, Self::Error>;
    /// Keys not disabled whose `expires_at` is after `after_secs` and at or
    /// before `until_secs`.
    fn expiring_keys(&mut self, after_secs: i64, until_secs: i64) -> Result<Vec<ExpiringKey>, Self::Error>;
    /// Records the mark; `false` when it was there already (nothing changes).
    fn insert_fired(&mut self, f: &Fired) -> Result<bool, Self::Error>;
    fn insert_delivery(&mut self, d: &NewDelivery) -> Result<(), Self::Error>;
    /// Deletes the marks of periods that ended before `ended_before_ms` and
    /// the deliveries (with their attempts) that finished and were created
    /// before `finished_before_ms`.
    fn forget_alerts(&mut self, ended_before_ms: i64, finished_before_ms: i64) -> Result<(), Self::Error>;
}

/// A webhook may be scoped only to a configuration that exists.
pub fn require_config(id: &str, exists: bool) -> Result<(), StoreError> {
    if exists {
        Ok(())
    } else {
        Err(StoreError::invalid("configurationId", format!("access key configuration {id} does not exist")))
    }
}

/// A configuration goes only when no webhook is scoped to it.
pub fn may_delete_config(id: &str, webhooks: i64) -> Result<(), StoreError> {
    if webhooks > 0 {
        return Err(StoreError::Conflict(format!(
            "access key configuration {id} is the scope of {webhooks} alert webhook(s): delete them or make them \
             store-wide (configurationId null) first"
        )));
    }
    Ok(())
}

/// The thresholds `used` of `limit` has reached: `used / limit ≥ t %`
/// (exact integer arithmetic). A limit of 0 is reached by any use.
pub fn crossed(thresholds: &[u8], used: i64, limit: i64) -> Vec<u8> {
    let used = i128::from(used.max(0)) * 100;
    let limit = i128::from(limit.max(0));
    thresholds.iter().copied().filter(|t| used >= i128::from(*t) * limit).collect()
}

/// `used` as a percent of `limit`, to a tenth (for the payload only).
pub fn percent(used: i64, limit: i64) -> f64 {
    if limit <= 0 {
        return 100.0;
    }
    let tenths = i128::from(used.max(0)) * 1000 / i128::from(limit);
    #[allow(clippy::cast_precision_loss)]
    let p = i64::try_from(tenths).unwrap_or(i64::MAX) as f64 / 10.0;
    p
}

/// Thresholds as a webhook keeps them: sorted, distinct.
pub fn normalize_thresholds(mut t: Vec<u8>) -> Vec<u8> {
    t.sort_unstable();
    t.dedup();
    t
}

/// What a budget scope names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Subject<'a> {
    Key(&'a str),
    Config(&'a str),
    Credits,
}

fn subject(scope: &str) -> Option<Subject<'_>> {
    if let Some(id) = scope.strip_prefix("key:") {
        Some(Subject::Key(id))
    } else if let Some(id) = scope.strip_prefix("config:") {
        Some(Subject::Config(id))
    } else if scope == BudgetRef::credits().scope {
        Some(Subject::Credits)
    } else {
        None
    }
}

/// One measured quantity of a budget: (unit, used, limit), both in tokens or
/// micro-USD.
type Measure = (&'static str, i64, i64);

fn measures(b: &BudgetSpec, row: &budget::BudgetRow) -> Vec<Measure> {
    let mut out = Vec::new();
    if let Some(t) = b.tokens {
        out.push(("tokens", row.spent_tokens, i64::try_from(t).unwrap_or(i64::MAX)));
    }
    if let Some(usd) = b.cost_usd {
        out.push(("usd", row.spent_micros, usd_to_micros(usd)));
    }
    out
}

fn amount(unit: &str, v: i64) -> Value {
    if unit == "usd" {
        json!(micros_to_usd(v))
    } else {
        json!(v)
    }
}

/// Marks every crossed threshold of `target` in `period` and queues one
/// delivery for the highest newly marked; returns whether it queued one.
#[allow(clippy::too_many_arguments)]
fn fire<L: AlertLedger>(
    l: &mut L,
    target: &AlertTarget,
    event: AlertEvent,
    scope: &str,
    measure: Measure,
    period: &str,
    period_end_ms: Option<i64>,
    now_ms: i64,
    payload: impl FnOnce(&str, u8) -> Value,
) -> Result<bool, L::Error> {
    let (unit, used, limit) = measure;
    let mut top = None;
    for t in crossed(&target.thresholds, used, limit) {
        let f = Fired {
            webhook_id: target.id.clone(),
            subject: scope.to_string(),
            unit: unit.to_string(),
            period: period.to_string(),
            threshold: i64::from(t),
            period_end_ms,
            created_ms: now_ms,
        };
        if l.insert_fired(&f)? {
            top = Some(t);
        }
    }
    let Some(t) = top else { return Ok(false) };
    let id = new_id("awd_").map_err(StoreError::from)?;
    let body = payload(&id, t);
    l.insert_delivery(&NewDelivery {
        id,
        webhook_id: target.id.clone(),
        event: event.delivery_event(),
        payload: body.to_string(),
        created_ms: now_ms,
    })?;
    Ok(true)
}

fn envelope(id: &str, event: AlertEvent, webhook: &str, now_ms: i64) -> serde_json::Map<String, Value> {
    let mut m = serde_json::Map::new();
    m.insert("id".into(), json!(id));
    m.insert("event".into(), json!(event.delivery_event()));
    m.insert("createdAt".into(), json!(rfc3339_ms(now_ms)));
    m.insert("webhookId".into(), json!(webhook));
    m
}

/// Evaluates the budget rows just charged (`charged`, as the holds of the
/// settled requests name them) against every enabled webhook in scope, in
/// the charging transaction. Returns how many deliveries it queued.
pub fn after_charges<L: AlertLedger>(l: &mut L, charged: &[BudgetRef], now_ms: i64) -> Result<usize, L::Error> {
    if charged.is_empty() {
        return Ok(0);
    }
    let targets = l.alert_targets()?;
    if targets.is_empty() {
        return Ok(0);
    }
    let mut seen: Vec<&BudgetRef> = Vec::new();
    let mut queued = 0;
    for at in charged {
        if seen.contains(&at) {
            continue;
        }
        seen.push(at);
        queued += match subject(&at.scope) {
            Some(Subject::Credits) => credits(l, &targets, now_ms)?,
            Some(s) => budget_alerts(l, &targets, at, s, now_ms)?,
            None => 0,
        };
    }
    Ok(queued)
}

fn budget_alerts<L: AlertLedger>(
    l: &mut L,
    targets: &[AlertTarget],
    at: &BudgetRef,
    s: Subject<'_>,
    now_ms: i64,
) -> Result<usize, L::Error> {
    let (spec, config, kind, id) = match s {
        Subject::Key(id) => {
            let Some(k) = l.key_budgets(id)? else { return Ok(0) };
            (k.budget, k.config_id, "access_key", id)
        }
        Subject::Config(id) => (l.config_budget(id)?, Some(id.to_string()), "configuration", id),
        Subject::Credits => return Ok(0),
    };
    // A budget removed, or given another window since the request reserved:
    // its old window is no longer the budget's.
    let Some(spec) = spec.filter(|b| b.window.as_str() == at.win) else { return Ok(0) };
    let targets: Vec<&AlertTarget> =
        targets.iter().filter(|t| t.wants(AlertEvent::Budget) && t.covers(config.as_deref())).collect();
    if targets.is_empty() {
        return Ok(0);
    }
    let name = match s {
        Subject::Key(id) => l.key_name(id)?,
        _ => l.config_name(id)?,
    }
    .unwrap_or_default();
    let row = l.budget_row(at)?;
    let end = budget::bounds(&spec, at.start).1;
    let window = json!({
        "kind": spec.window.as_str(),
        "timeZone": spec.time_zone.as_deref().unwrap_or("UTC"),
        "start": (spec.window != Window::None).then(|| rfc3339_ms(at.start)),
        "end": end.map(rfc3339_ms),
    });
    let period = format!("{}:{}", at.win, at.start);
    let mut queued = 0;
    for m in measures(&spec, &row) {
        for t in &targets {
            let payload = |did: &str, threshold: u8| {
                let (unit, used, limit) = m;
                let mut p = envelope(did, AlertEvent::Budget, &t.id, now_ms);
                p.insert("threshold".into(), json!(threshold));
                p.insert("subject".into(), json!({"type": kind, "id": id, "name": name}));
                p.insert("window".into(), window.clone());
                p.insert("used".into(), amount(unit, used));
                p.insert("limit".into(), amount(unit, limit));
                p.insert("unit".into(), json!(unit));
                p.insert("usedPercent".into(), json!(percent(used, limit)));
                Value::Object(p)
            };
            if fire(l, t, AlertEvent::Budget, &at.scope, m, &period, end, now_ms, payload)? {
                queued += 1;
            }
        }
    }
    Ok(queued)
}

fn credits<L: AlertLedger>(l: &mut L, targets: &[AlertTarget], now_ms: i64) -> Result<usize, L::Error> {
    let state = l.credit_state()?;
    if !state.enabled || state.granted <= 0 {
        return Ok(0);
    }
    // Credits are gateway-wide: only store-wide webhooks hear of them.
    let targets: Vec<&AlertTarget> =
        targets.iter().filter(|t| t.wants(AlertEvent::Credits) && t.config_id.is_none()).collect();
    if targets.is_empty() {
        return Ok(0);
    }
    let at = BudgetRef::credits();
    let row = l.budget_row(&at)?;
    let m: Measure = ("usd", row.spent_micros, state.granted);
    let period = format!("granted:{}", state.granted);
    let mut queued = 0;
    for t in targets {
        let payload = |did: &str, threshold: u8| {
            let mut p = envelope(did, AlertEvent::Credits, &t.id, now_ms);
            p.insert("threshold".into(), json!(threshold));
            p.insert("subject".into(), json!({"type": "credits", "id": "credits", "name": "credit balance"}));
            p.insert("window".into(), json!({"kind": "grant", "timeZone": null, "start": null, "end": null}));
            p.insert("used".into(), amount("usd", row.spent_micros));
            p.insert("limit".into(), amount("usd", state.granted));
            p.insert("unit".into(), json!("usd"));
            p.insert("usedPercent".into(), json!(percent(row.spent_micros, state.granted)));
            p.insert("balanceUsd".into(), json!(micros_to_usd(state.granted.saturating_sub(row.spent_micros))));
            Value::Object(p)
        };
        if fire(l, t, AlertEvent::Credits, &at.scope, m, &period, None, now_ms, payload)? {
            queued += 1;
        }
    }
    Ok(queued)
}

/// Announces the keys that expire within each webhook's warning, once per
/// webhook, key and expiry; then forgets marks and deliveries past keeping.
/// Returns how many deliveries it queued.
pub fn sweep_expiry<L: AlertLedger>(l: &mut L, now_ms: i64) -> Result<usize, L::Error> {
    l.forget_alerts(now_ms.saturating_sub(FIRED_KEEP_MS), now_ms.saturating_sub(DELIVERY_KEEP_MS))?;
    let targets: Vec<AlertTarget> = l.alert_targets()?.into_iter().filter(|t| t.wants(AlertEvent::KeyExpiry)).collect();
    let Some(longest) = targets.iter().map(|t| t.expiry_warning_days).max() else { return Ok(0) };
    let now_secs = now_ms.div_euclid(1000);
    let keys = l.expiring_keys(now_secs, now_secs.saturating_add(i64::from(longest) * DAY_SECS))?;
    let mut queued = 0;
    for t in &targets {
        let until = now_secs.saturating_add(i64::from(t.expiry_warning_days) * DAY_SECS);
        for k in keys.iter().filter(|k| k.expires_at <= until && t.covers(k.config_id.as_deref())) {
            let f = Fired {
                webhook_id: t.id.clone(),
                subject: budget::key_scope(&k.id),
                unit: "expiry".into(),
                period: format!("expires:{}", k.expires_at),
                threshold: 0,
                period_end_ms: Some(k.expires_at.saturating_mul(1000)),
                created_ms: now_ms,
            };
            if !l.insert_fired(&f)? {
                continue;
            }
            let id = new_id("awd_").map_err(StoreError::from)?;
            let mut p = envelope(&id, AlertEvent::KeyExpiry, &t.id, now_ms);
            p.insert("threshold".into(), Value::Null);
            p.insert("subject".into(), json!({"type": "access_key", "id": k.id, "name": k.name}));
            p.insert("window".into(), Value::Null);
            p.insert("used".into(), Value::Null);
            p.insert("limit".into(), Value::Null);
            p.insert("unit".into(), Value::Null);
            p.insert("expiresAt".into(), json!(rfc3339_secs(k.expires_at)));
            p.insert("expiryWarningDays".into(), json!(t.expiry_warning_days));
            l.insert_delivery(&NewDelivery {
                id,
                webhook_id: t.id.clone(),
                event: AlertEvent::KeyExpiry.delivery_event(),
                payload: Value::Object(p).to_string(),
                created_ms: now_ms,
            })?;
            queued += 1;
        }
    }
    Ok(queued)
}

// ------------------------------------------------------------ delivery

/// How failed deliveries are tried again (`KEYGATE_ALERT_RETRY_BASE_MS`,
/// `KEYGATE_ALERT_MAX_ATTEMPTS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub base_ms: u64,
    pub max_attempts: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy { base_ms: DEFAULT_RETRY_BASE_MS, max_attempts: DEFAULT_MAX_ATTEMPTS }
    }
}

/// Where a delivery stands after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextState {
    Delivered,
    /// Try again at this instant (unix ms).
    Retry(i64),
    /// No attempt left.
    Failed,
}

impl RetryPolicy {
    /// The wait after the `attempt`-th attempt failed: base × 2^(attempt−1),
    /// at most [`MAX_RETRY_DELAY_MS`].
    pub fn delay_ms(&self, attempt: u32) -> u64 {
        let doublings = attempt.saturating_sub(1).min(40);
        self.base_ms.saturating_mul(1u64 << doublings).min(MAX_RETRY_DELAY_MS)
    }

    /// After the `attempt`-th attempt (1-based), answered 2xx or not.
    pub fn next(&self, attempt: u32, ok: bool, now_ms: i64) -> NextState {
        if ok {
            NextState::Delivered
        } else if attempt >= self.max_attempts {
            NextState::Failed
        } else {
            NextState::Retry(now_ms.saturating_add(i64::try_from(self.delay_ms(attempt)).unwrap_or(i64::MAX)))
        }
    }
}

/// The hex HMAC-SHA256 of `"<t>.<body>"` under `secret` (its UTF-8 bytes).
pub fn signature(secret: &str, t: i64, body: &[u8]) -> String {
    // HMAC takes keys of any length: `new_from_slice` cannot fail for it.
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret.as_bytes()) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// The `x-keygate-signature` header: `t=<unix seconds>,v1=<hex>`.
pub fn signature_header(secret: &str, t: i64, body: &[u8]) -> String {
    format!("t={t},v1={}", signature(secret, t, body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::budget::{BudgetRow, Delta};
    use crate::policy::credits::CreditState;
    use crate::policy::ledger::memory::MemoryLedger;
    use crate::policy::ledger::KeyBudgets;

    #[test]
    fn a_threshold_is_reached_at_exactly_its_percent() {
        assert_eq!(crossed(&[50, 80, 100], 49, 100), Vec::<u8>::new());
        assert_eq!(crossed(&[50, 80, 100], 50, 100), vec![50]);
        assert_eq!(crossed(&[50, 80, 100], 79, 100), vec![50]);
        assert_eq!(crossed(&[50, 80, 100], 80, 100), vec![50, 80]);
        assert_eq!(crossed(&[50, 80, 100], 250, 100), vec![50, 80, 100]);
        // 1/3 of 3 tokens is 33.3 %: 33 is reached, 34 is not.
        assert_eq!(crossed(&[33, 34], 1, 3), vec![33]);
        // No overflow with the largest numbers.
        assert_eq!(crossed(&[100], i64::MAX, i64::MAX), vec![100]);
        assert_eq!(crossed(&[1], i64::MAX - 1, i64::MAX), vec![1]);
        // A limit of 0 is reached by anything; a negative use never counts.
        assert_eq!(crossed(&[100], 0, 0), vec![100]);
        assert_eq!(crossed(&[1], -5, 10), Vec::<u8>::new());
        assert_eq!(percent(812, 1000), 81.2);
        assert_eq!(percent(1, 3), 33.3);
        assert_eq!(normalize_thresholds(vec![100, 50, 80, 50]), vec![50, 80, 100]);
    }

    #[test]
    fn retries_back_off_exponentially_and_stop_after_the_last_attempt() {
        let p = RetryPolicy { base_ms: 1000, max_attempts: 4 };
        assert_eq!((1..=4).map(|a| p.delay_ms(a)).collect::<Vec<_>>(), vec![1000, 2000, 4000, 8000]);
        assert_eq!(p.next(1, false, 10), NextState::Retry(1010));
        assert_eq!(p.next(3, false, 10), NextState::Retry(4010));
        assert_eq!(p.next(4, false, 10), NextState::Failed);
        assert_eq!(p.next(4, true, 10), NextState::Delivered);
        assert_eq!(RetryPolicy { base_ms: u64::MAX, max_attempts: 99 }.delay_ms(60), MAX_RETRY_DELAY_MS);
        assert_eq!(RetryPolicy::default(), RetryPolicy { base_ms: 1000, max_attempts: 8 });
    }

    #[test]
    fn the_signature_is_hmac_sha256_of_the_timestamp_a_dot_and_the_body() {
        // RFC 4231, test case 2: HMAC-SHA256("Jefe", "what do ya want for nothing?").
        // Signing t = "what" is impossible (t is a number), so the vector is
        // checked on the primitive, and the construction ("<t>.<body>") apart.
        let mut mac = Hmac::<Sha256>::new_from_slice(b"Jefe").unwrap();
        mac.update(b"what do ya want for nothing?");
        assert_eq!(
            hex::encode(mac.finalize().into_bytes()),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        let mut mac = Hmac::<Sha256>::new_from_slice(b"whsec_test").unwrap();
        mac.update(b"1700000000.{\"id\":\"awd_1\"}");
        let want = hex::encode(mac.finalize().into_bytes());
        assert_eq!(signature("whsec_test", 1_700_000_000, br#"{"id":"awd_1"}"#), want);
        assert_eq!(
            signature_header("whsec_test", 1_700_000_000, br#"{"id":"awd_1"}"#),
            format!("t=1700000000,v1={want}")
        );
        assert_ne!(signature("s", 5, b"{}"), signature("s", 6, b"{}"), "the timestamp is signed");
        assert_ne!(signature("s", 5, b"{}"), signature("t", 5, b"{}"));
    }

    // ---- evaluation over the in-memory ledger

    const NOW: i64 = 1_700_000_000_000;

    fn target(id: &str, config: Option<&str>, events: &[AlertEvent]) -> AlertTarget {
        AlertTarget {
            id: id.into(),
            config_id: config.map(String::from),
            thresholds: DEFAULT_THRESHOLDS.to_vec(),
            events: events.to_vec(),
            expiry_warning_days: 7,
        }
    }

    fn ledger(budget: BudgetSpec) -> MemoryLedger {
        let mut l = MemoryLedger::default();
        l.keys.insert("ak_1".into(), KeyBudgets { config_id: Some("akc_1".into()), budget: Some(budget) });
        l.names.insert("ak_1".into(), "key one".into());
        l
    }

    fn tokens(n: u64, window: Window) -> BudgetSpec {
        BudgetSpec { tokens: Some(n), cost_usd: None, window, time_zone: None }
    }

    fn spend(l: &mut MemoryLedger, at: &BudgetRef, tokens: i64, micros: i64) -> usize {
        budget::add(l, at, Delta::spend(tokens, micros)).unwrap();
        after_charges(l, std::slice::from_ref(at), NOW).unwrap()
    }

    fn sent(l: &MemoryLedger) -> Vec<Value> {
        l.deliveries.iter().map(|d| serde_json::from_str(&d.payload).unwrap()).collect()
    }

    #[test]
    fn each_threshold_fires_once_per_window_and_a_new_window_fires_again() {
        let b = tokens(1000, Window::Daily);
        let mut l = ledger(b.clone());
        l.targets.push(target("awh_1", None, &[AlertEvent::Budget]));
        let day1 = BudgetRef::of("key:ak_1", &b, NOW);
        assert_eq!(spend(&mut l, &day1, 400, 0), 0);
        assert_eq!(spend(&mut l, &day1, 100, 0), 1, "50 % reached");
        assert_eq!(spend(&mut l, &day1, 100, 0), 0, "still past 50 %, already sent");
        assert_eq!(spend(&mut l, &day1, 250, 0), 1, "80 %");
        let p = sent(&l);
        assert_eq!(p.iter().map(|p| p["threshold"].as_u64().unwrap()).collect::<Vec<_>>(), vec![50, 80]);
        let last = &p[1];
        assert_eq!(last["event"], "budget.threshold");
        assert_eq!(last["subject"], json!({"type": "access_key", "id": "ak_1", "name": "key one"}));
        assert_eq!(
            (last["used"].clone(), last["limit"].clone(), last["unit"].clone()),
            (json!(850), json!(1000), json!("tokens"))
        );
        assert_eq!(last["usedPercent"], 85.0);
        assert_eq!(last["window"]["kind"], "daily");
        assert_eq!(last["window"]["start"], "2023-11-14T00:00:00.000Z");
        assert_eq!(last["window"]["end"], "2023-11-15T00:00:00.000Z");
        assert_eq!(last["id"], json!(l.deliveries[1].id));
        // The next day is a new window: 50 % fires again.
        let day2 = BudgetRef::of("key:ak_1", &b, NOW + 86_400_000);
        assert_eq!(spend(&mut l, &day2, 600, 0), 1);
        assert_eq!(sent(&l)[2]["window"]["start"], "2023-11-15T00:00:00.000Z");
        assert_eq!(l.deliveries.len(), 3);
    }

    #[test]
    fn a_jump_past_several_thresholds_sends_one_alert_for_the_highest() {
        let b = tokens(100, Window::None);
        let mut l = ledger(b.clone());
        l.targets.push(target("awh_1", None, &[AlertEvent::Budget]));
        let at = BudgetRef::of("key:ak_1", &b, NOW);
        assert_eq!(spend(&mut l, &at, 95, 0), 1);
        assert_eq!(sent(&l)[0]["threshold"], 80);
        assert_eq!(sent(&l)[0]["window"], json!({"kind": "none", "timeZone": "UTC", "start": null, "end": null}));
        assert_eq!(spend(&mut l, &at, 5, 0), 1);
        assert_eq!(sent(&l)[1]["threshold"], 100);
        assert_eq!(l.fired.len(), 3, "50 was marked with 80 and never sent alone");
    }

    #[test]
    fn tokens_and_cost_are_measured_apart() {
        let b = BudgetSpec { tokens: Some(100), cost_usd: Some(1.0), window: Window::None, time_zone: None };
        let mut l = ledger(b.clone());
        l.targets.push(target("awh_1", None, &[AlertEvent::Budget]));
        let at = BudgetRef::of("key:ak_1", &b, NOW);
        assert_eq!(spend(&mut l, &at, 10, 600_000), 1);
        let p = &sent(&l)[0];
        assert_eq!((p["unit"].clone(), p["used"].clone(), p["limit"].clone()), (json!("usd"), json!(0.6), json!(1.0)));
        assert_eq!(spend(&mut l, &at, 45, 0), 1);
        assert_eq!(sent(&l)[1]["unit"], "tokens");
    }

    #[test]
    fn webhooks_hear_only_of_their_scope_and_events() {
        let b = tokens(10, Window::None);
        let mut l = ledger(b.clone());
        l.configs.insert("akc_1".into(), b.clone());
        l.names.insert("akc_1".into(), "team".into());
        l.targets = vec![
            target("awh_all", None, &[AlertEvent::Budget]),
            target("awh_mine", Some("akc_1"), &[AlertEvent::Budget]),
            target("awh_other", Some("akc_2"), &[AlertEvent::Budget]),
            target("awh_expiry", None, &[AlertEvent::KeyExpiry]),
        ];
        let key = BudgetRef::of("key:ak_1", &b, NOW);
        let config = BudgetRef::of("config:akc_1", &b, NOW);
        budget::add(&mut l, &key, Delta::spend(10, 0)).unwrap();
        budget::add(&mut l, &config, Delta::spend(10, 0)).unwrap();
        // A hold listed twice is evaluated once.
        assert_eq!(after_charges(&mut l, &[key.clone(), config.clone(), key], NOW).unwrap(), 4);
        let mut got: Vec<(String, String)> = l
            .deliveries
            .iter()
            .map(|d| {
                let p: Value = serde_json::from_str(&d.payload).unwrap();
                (d.webhook_id.clone(), p["subject"]["type"].as_str().unwrap().to_string())
            })
            .collect();
        got.sort();
        let want = [
            ("awh_all", "access_key"),
            ("awh_all", "configuration"),
            ("awh_mine", "access_key"),
            ("awh_mine", "configuration"),
        ];
        assert_eq!(got, want.map(|(a, b)| (a.to_string(), b.to_string())).to_vec());
    }

    #[test]
    fn no_webhook_means_nothing_is_read_or_written() {
        let b = tokens(10, Window::None);
        let mut l = ledger(b.clone());
        let at = BudgetRef::of("key:ak_1", &b, NOW);
        assert_eq!(spend(&mut l, &at, 10, 0), 0);
        assert!(l.fired.is_empty() && l.deliveries.is_empty());
    }

    #[test]
    fn a_budget_given_another_window_is_not_judged_by_its_old_rows() {
        let mut l = ledger(tokens(10, Window::Monthly));
        l.targets.push(target("awh_1", None, &[AlertEvent::Budget]));
        let old = BudgetRef::of("key:ak_1", &tokens(10, Window::Daily), NOW);
        assert_eq!(spend(&mut l, &old, 10, 0), 0);
    }

    #[test]
    fn credits_thresholds_count_spend_against_grants_and_a_top_up_rearms_them() {
        let mut l = MemoryLedger {
            targets: vec![
                target("awh_1", None, &[AlertEvent::Credits]),
                target("awh_c", Some("akc_1"), &[AlertEvent::Credits]),
            ],
            credits: CreditState { enabled: true, granted: 10_000_000, touched: true },
            ..MemoryLedger::default()
        };
        let at = BudgetRef::credits();
        assert_eq!(spend(&mut l, &at, 0, 5_000_000), 1, "half of $10 spent; store-wide webhooks only");
        let p = &sent(&l)[0];
        assert_eq!(p["event"], "credits.threshold");
        assert_eq!(
            (p["threshold"].clone(), p["used"].clone(), p["limit"].clone()),
            (json!(50), json!(5.0), json!(10.0))
        );
        assert_eq!(p["balanceUsd"], 5.0);
        assert_eq!(p["subject"]["type"], "credits");
        assert_eq!(spend(&mut l, &at, 0, 1_000_000), 0);
        // $10 more: 6 of 20 spent, below every threshold; then 50 % of 20 again.
        l.credits.granted = 20_000_000;
        assert_eq!(spend(&mut l, &at, 0, 0), 0);
        assert_eq!(spend(&mut l, &at, 0, 4_000_000), 1);
        assert_eq!(sent(&l)[1]["limit"], 20.0);
        // Credits off: nothing.
        l.credits.enabled = false;
        assert_eq!(spend(&mut l, &at, 0, 10_000_000), 0);
    }

    #[test]
    fn a_key_expiring_within_the_warning_is_announced_once_per_expiry() {
        let now_s = NOW / 1000;
        let mut t = target("awh_1", None, &[AlertEvent::KeyExpiry]);
        t.expiry_warning_days = 2;
        let key = |id: &str, at: i64| ExpiringKey { id: id.into(), name: id.into(), config_id: None, expires_at: at };
        let mut l = MemoryLedger {
            targets: vec![t, target("awh_c", Some("akc_9"), &[AlertEvent::KeyExpiry])],
            expiring: vec![key("ak_soon", now_s + 86_400), key("ak_later", now_s + 5 * 86_400)],
            ..MemoryLedger::default()
        };
        assert_eq!(sweep_expiry(&mut l, NOW).unwrap(), 1);
        let p = &sent(&l)[0];
        assert_eq!(p["event"], "key.expiry");
        assert_eq!(p["subject"], json!({"type": "access_key", "id": "ak_soon", "name": "ak_soon"}));
        assert_eq!(p["expiresAt"], rfc3339_secs(now_s + 86_400));
        assert_eq!(p["threshold"], Value::Null);
        assert_eq!(sweep_expiry(&mut l, NOW + 60_000).unwrap(), 0, "once per key and expiry");
        // The expiry moved: a new one to announce.
        l.expiring[0].expires_at += 3600;
        assert_eq!(sweep_expiry(&mut l, NOW + 120_000).unwrap(), 1);
        // The later key comes within two days.
        assert_eq!(sweep_expiry(&mut l, NOW + 3 * 86_400_000 + 1000).unwrap(), 1);
    }

    #[test]
    fn marks_of_ended_periods_and_old_finished_deliveries_are_forgotten() {
        let mut l = MemoryLedger::default();
        l.targets.push(target("awh_1", None, &[AlertEvent::KeyExpiry]));
        sweep_expiry(&mut l, NOW).unwrap();
        assert_eq!(l.forgotten, vec![(NOW - FIRED_KEEP_MS, NOW - DELIVERY_KEEP_MS)]);
    }

    #[test]
    fn a_budget_row_unknown_to_alerts_is_ignored() {
        assert_eq!(subject("key:ak_1"), Some(Subject::Key("ak_1")));
        assert_eq!(subject("config:c"), Some(Subject::Config("c")));
        assert_eq!(subject("credits"), Some(Subject::Credits));
        assert_eq!(subject("other"), None);
        let row = BudgetRow { spent_tokens: 5, spent_micros: 7, ..BudgetRow::default() };
        let b = BudgetSpec { tokens: None, cost_usd: None, window: Window::None, time_zone: None };
        assert!(measures(&b, &row).is_empty());
    }
}
