//! The upstream (cluster) filter: runs once per attempt, puts that attempt's
//! credential (and only that one) on the request, and notes the provider's
//! answer; a 429 or 401/403 cools the key down for every worker of the Envoy.

use log::{info, warn};

use super::request::Phase;
use super::{Flow, Worker};
use crate::config::Config;
use crate::failover::{self, Attempt};
use crate::host::{Host, Map};
use crate::metrics::{Counter, Metrics};
use crate::upstream::{credential_header, CLIENT_CREDENTIAL_HEADERS};

/// Where Envoy keeps what the keygate filter set as its plan property.
const PLAN_FILTER_STATE: &str = "wasm.keygate_plan";
const HEALTH_PREFIX: &str = "keygate.cooldown.";
const RATE_PREFIX: &str = "keygate.rate.";

/// The shared-data entry of a key's rate window.
pub fn rate_key(key_id: &str) -> String {
    format!("{RATE_PREFIX}{key_id}")
}

/// Until when (ms) a provider credential cools down (0: it does not).
pub fn cool_until(host: &impl Host, credential_id: &str) -> u64 {
    host.shared_data(&format!("{HEALTH_PREFIX}{credential_id}"))
        .ok()
        .and_then(|(v, _)| v)
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// Records what the provider answered to one attempt (response headers of
/// the effective context) and cools the key down after a 429 or 401/403.
pub fn note_answer(host: &impl Host, metrics: &mut Metrics, attempt: &mut Attempt, status: u16, config: &Config) {
    // A provider's header may hold any bytes: read, never trusted to be UTF-8.
    let header = |name: &str| host.header_str(Map::ResponseHeaders, name);
    attempt.status = Some(status);
    let (retry_after_ms, retry_after) =
        if status == 429 { (header("retry-after-ms"), header("retry-after")) } else { (None, None) };
    let cooldown = failover::cooldown_ms(
        status,
        retry_after_ms.as_deref(),
        retry_after.as_deref(),
        config.cooldown_rate_limited_ms,
        config.cooldown_auth_failure_ms,
    );
    if let Some(ms) = cooldown.filter(|ms| *ms > 0) {
        // Process-wide: every worker skips this key until then.
        let until = (host.now_ms() + ms).to_string();
        let _ = host.set_shared_data(&format!("{HEALTH_PREFIX}{}", attempt.key_id), until.as_bytes(), None);
        info!("keygate: provider key {} answered {status}: skipped for {ms} ms", attempt.key_id);
        metrics.count(Counter::FailoverCooldowns);
    }
}

impl Worker {
    /// An upstream attempt's request headers: returns the plan it belongs to.
    pub fn attempt_headers(&mut self, host: &impl Host) -> (Flow, Option<u64>) {
        let attempt = host
            .header_str(Map::RequestHeaders, "x-envoy-attempt-count")
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(1);
        // A retry reuses the header map: the previous attempt's credential
        // goes first. (On the first attempt the keygate filter already
        // removed every client credential.)
        if attempt > 1 {
            for name in CLIENT_CREDENTIAL_HEADERS {
                let _ = host.set_header(Map::RequestHeaders, name, None);
            }
        }
        let plan_id = host
            .property(&["filter_state", PLAN_FILTER_STATE])
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|s| s.parse::<u64>().ok());
        let plan = plan_id.and_then(|p| self.plans.get(&p)).and_then(|id| self.requests.get_mut(id));
        let Some(Phase::Forwarded(fw)) = plan.map(|r| &mut r.phase) else {
            warn!("keygate: upstream attempt without a plan: sent without credentials");
            return (Flow::Continue, None);
        };
        let Some(key) = fw.keys.get(attempt.saturating_sub(1)).cloned() else {
            warn!("keygate: attempt {attempt} has no credential left");
            return (Flow::Continue, None);
        };
        let (name, value) = credential_header(fw.auth, &key.value);
        if host.set_header(Map::RequestHeaders, name, Some(value.as_bytes())).is_err() {
            warn!("keygate: could not set the credential of attempt {attempt}");
        }
        if attempt > 1 {
            self.metrics.count(Counter::FailoverRetries);
        }
        fw.attempts.push(Attempt { key_id: key.id, status: None });
        (Flow::Continue, plan_id)
    }

    /// An upstream attempt's response headers.
    pub fn attempt_response(&mut self, host: &impl Host, plan_id: u64) {
        let config = self.config.clone();
        let plan = self.plans.get(&plan_id).and_then(|id| self.requests.get_mut(id));
        let Some(Phase::Forwarded(fw)) = plan.map(|r| &mut r.phase) else { return };
        let status = host.header_str(Map::ResponseHeaders, ":status").and_then(|s| s.parse::<u16>().ok()).unwrap_or(0);
        if let Some(attempt) = fw.attempts.last_mut() {
            note_answer(host, &mut self.metrics, attempt, status, &config);
        }
    }
}
