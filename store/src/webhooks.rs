//! Delivering alerts: a background worker of `keygate serve` claims the due
//! deliveries (persisted by `policy::alerts`, so they survive a restart),
//! POSTs each to its webhook, signed, and records the attempt; a failed one
//! is tried again with exponential backoff until it is delivered or out of
//! attempts. With several replicas, a delivery is claimed by one of them at a
//! time (a lease in the database).
//!
//! A request carries the delivery's JSON body (the same bytes on every
//! attempt) and `x-keygate-signature: t=<unix s>,v1=<hex HMAC-SHA256 of
//! "<t>.<body>">`, `x-keygate-delivery: <id>`, `x-keygate-event: <event>`.
//! Any 2xx answer delivers it; a redirect is never followed (it fails the
//! attempt); the connection and the whole attempt have timeouts. Nothing
//! logged or recorded carries the secret, and no recorded error the whole
//! URL (any role reads a delivery's `lastError`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::api::{run, AppState};
use crate::ids::now_ms;
use crate::policy::alerts::{signature_header, NextState, RetryPolicy};
use crate::storage::{AttemptRecord, ClaimedDelivery};

/// Default of `KEYGATE_ALERT_TIMEOUT_MS`: the longest one attempt may take.
pub const DEFAULT_TIMEOUT_MS: u64 = 10_000;
/// Longest connect phase of an attempt.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Deliveries claimed (and sent concurrently) at a time.
const BATCH: usize = 8;
/// How often the worker looks for due deliveries when nothing woke it (the
/// deliveries another replica queued, and retries).
const POLL: Duration = Duration::from_secs(1);
/// Longest recorded error text.
const ERROR_MAX: usize = 200;

/// How alerts are delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AlertSettings {
    pub retry: RetryPolicy,
    /// The longest one attempt may take, connecting included (ms).
    pub timeout_ms: u64,
}

impl Default for AlertSettings {
    fn default() -> Self {
        AlertSettings { retry: RetryPolicy::default(), timeout_ms: DEFAULT_TIMEOUT_MS }
    }
}

impl AlertSettings {
    /// A claim lasts well past an attempt's timeout: a delivery is handed to
    /// another worker only when its holder is gone.
    pub fn lease_ms(&self) -> i64 {
        i64::try_from(self.timeout_ms).unwrap_or(i64::MAX).saturating_add(50_000)
    }
}

/// The HTTP client of the worker: no redirects, timeouts, statuses as answers.
pub fn agent(settings: &AlertSettings) -> ureq::Agent {
    let timeout = Duration::from_millis(settings.timeout_ms);
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .timeout_global(Some(timeout))
        .timeout_connect(Some(timeout.min(CONNECT_TIMEOUT)))
        .user_agent(concat!("keygate-alerts/", env!("CARGO_PKG_VERSION")))
        .build()
        .new_agent()
}

/// What one attempt found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub status: Option<u16>,
    pub error: Option<String>,
}

impl Outcome {
    pub fn ok(&self) -> bool {
        self.error.is_none()
    }
}

/// An error as recorded: one line, at most [`ERROR_MAX`] characters.
fn clean(e: &str) -> String {
    let one_line: String = e.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    one_line.chars().take(ERROR_MAX).collect()
}

/// A failed attempt's error as recorded: [`clean`], with the webhook's URL,
/// should the client's error quote it, redacted as a viewer is shown it.
fn recorded_error(e: &str, url: &str) -> String {
    clean(&e.replace(url, &crate::model::redact_webhook_url(url)))
}

/// Sends `d` once, signed at `t` (unix seconds).
pub fn send(agent: &ureq::Agent, d: &ClaimedDelivery, t: i64) -> Outcome {
    let body = d.payload.as_bytes();
    let result = agent
        .post(&d.url)
        .header("content-type", "application/json")
        .header("x-keygate-signature", &signature_header(&d.secret, t, body))
        .header("x-keygate-delivery", &d.id)
        .header("x-keygate-event", &d.event)
        .send(body);
    match result {
        Ok(resp) => {
            let status = resp.status().as_u16();
            let error = match status {
                200..=299 => None,
                300..=399 => Some(format!("HTTP {status}: redirects are not followed")),
                _ => Some(format!("HTTP {status}")),
            };
            Outcome { status: Some(status), error }
        }
        Err(e) => Outcome { status: None, error: Some(recorded_error(&e.to_string(), &d.url)) },
    }
}

/// Makes one attempt of a claimed delivery and records it; returns the state
/// it moved to.
pub async fn attempt(
    state: &AppState,
    agent: &ureq::Agent,
    settings: &AlertSettings,
    d: ClaimedDelivery,
) -> Result<NextState, crate::error::ApiError> {
    let started_ms = now_ms();
    let clock = Instant::now();
    let (agent, sent) = (agent.clone(), d.clone());
    let outcome = tokio::task::spawn_blocking(move || send(&agent, &sent, started_ms.div_euclid(1000)))
        .await
        .unwrap_or_else(|e| Outcome { status: None, error: Some(clean(&format!("the attempt failed: {e}"))) });
    let record = AttemptRecord {
        attempt: d.attempts.saturating_add(1),
        started_ms,
        duration_ms: i64::try_from(clock.elapsed().as_millis()).unwrap_or(i64::MAX),
        status: outcome.status,
        error: outcome.error.clone(),
    };
    let next = settings.retry.next(record.attempt, outcome.ok(), now_ms());
    let (id, webhook, attempt) = (d.id.clone(), d.webhook_id.clone(), record.attempt);
    let kept = run(state, move |s| s.finish_alert_attempt(&d, &record, next)).await?;
    let error = outcome.error.as_deref().unwrap_or("");
    match (kept, next) {
        (false, _) => tracing::warn!(delivery = %id, "an alert delivery's claim ran out during its attempt"),
        (true, NextState::Delivered) => {
            tracing::info!(delivery = %id, webhook = %webhook, attempt, status = outcome.status, "alert delivered")
        }
        (true, NextState::Retry(at)) => tracing::warn!(
            delivery = %id, webhook = %webhook, attempt, status = outcome.status, error,
            retry_in_ms = at.saturating_sub(now_ms()), "alert delivery failed; will retry"
        ),
        (true, NextState::Failed) => tracing::warn!(
            delivery = %id, webhook = %webhook, attempt, status = outcome.status, error,
            "alert delivery failed for good: no attempt left"
        ),
    }
    Ok(next)
}

/// Claims what is due and attempts it, concurrently; returns how many.
pub async fn deliver_due(state: &AppState, agent: &ureq::Agent, settings: &AlertSettings) -> usize {
    let lease = settings.lease_ms();
    let claimed = match run(state, move |s| s.claim_alert_deliveries(lease, BATCH)).await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = ?e, "claiming alert deliveries failed");
            return 0;
        }
    };
    let n = claimed.len();
    let mut tasks = tokio::task::JoinSet::new();
    for d in claimed {
        let (state, agent, settings) = (state.clone(), agent.clone(), *settings);
        tasks.spawn(async move {
            if let Err(e) = attempt(&state, &agent, &settings, d).await {
                tracing::warn!(error = ?e, "recording an alert delivery attempt failed");
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    n
}

/// The delivery worker: runs until the process ends. Woken by ingested usage
/// (`AppState::alerts`), by the sweep, and by the next due time.
pub async fn worker(state: AppState, settings: AlertSettings) {
    let agent = agent(&settings);
    let wake: Arc<tokio::sync::Notify> = state.alerts.clone();
    loop {
        if deliver_due(&state, &agent, &settings).await > 0 {
            continue;
        }
        let wait = match run(&state, |s| s.next_alert_due()).await {
            Ok(Some(due)) => {
                let ms = u64::try_from(due.saturating_sub(now_ms())).unwrap_or(0);
                // Due now but claimed by another worker a moment ago: look again shortly.
                Duration::from_millis(ms.max(20)).min(POLL)
            }
            Ok(None) => POLL,
            Err(e) => {
                tracing::warn!(error = ?e, "reading the next alert delivery failed");
                POLL
            }
        };
        tokio::select! {
            () = wake.notified() => {},
            () = tokio::time::sleep(wait) => {},
        }
    }
}

/// Queues the key-expiry alerts and forgets old marks and deliveries, every
/// `every`.
pub async fn sweep(state: AppState, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match run(&state, |s| s.sweep_alerts()).await {
            Ok(0) => {}
            Ok(n) => {
                tracing::info!(queued = n, "queued key-expiry alerts");
                state.alerts.notify_one();
            }
            Err(e) => tracing::warn!(error = ?e, "alert sweep failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_recorded_on_one_short_line() {
        assert_eq!(clean("io: refused\nmore"), "io: refused more");
        assert_eq!(clean(&"x".repeat(500)).len(), ERROR_MAX);
        let url = "https://hooks.slack.com/services/T0/B0/secret";
        assert_eq!(recorded_error(&format!("bad uri: {url} is odd"), url), "bad uri: https://hooks.slack.com/… is odd");
    }

    #[test]
    fn a_claim_outlasts_an_attempt() {
        let s = AlertSettings::default();
        assert!(s.lease_ms() > i64::try_from(s.timeout_ms).unwrap() + 30_000);
        assert_eq!(s.retry, RetryPolicy { base_ms: 1000, max_attempts: 8 });
    }
}
