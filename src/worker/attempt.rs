//! The upstream (cluster) filter: runs once per attempt, puts that attempt's
//! credential (and only that one) on the request, and notes the provider's
//! answer (a 429 or 401/403 cools the key down: `shared`).

use log::warn;

use super::request::Phase;
use super::shared::note_answer;
use super::{Flow, Worker};
use crate::failover::Attempt;
use crate::host::{Host, Map};
use crate::metrics::Counter;
use crate::upstream::{credential_header, CLIENT_CREDENTIAL_HEADERS};

/// Where Envoy keeps what the keygate filter set as its plan property.
const PLAN_FILTER_STATE: &str = "wasm.keygate_plan";

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
