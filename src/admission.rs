//! Admission: given what the request is, the key's answer from the store and
//! the current counters, one verdict — refuse, reserve budget first, or
//! forward (cluster, headers, candidate credentials in failover order).
//!
//! The order is: the configuration's rules (`decide`), then the rate limit
//! (counted once per request), then the budget reservation (a store call,
//! after which the request is admitted again with `admitted` set), then the
//! candidates, ordered by their cool-down.

use std::borrow::Cow;

use keygate_proto::lookup::{AuthStyle, Credential, Limits, ModelRef, RefusedBy, RequestLimits};

use crate::body::Fallbacks;
use crate::config::Config;
use crate::decide::{decide, Forward, RequestFacts};
use crate::errors::{Code, Denial};
use crate::failover;
use crate::handover::{Leg, Plan, MAX_ATTEMPTS};
use crate::key_answer::KeyAnswer;
use crate::ratelimit::{self, Pool, Remaining, Take};
use crate::records::Served;
use crate::upstream::credential_header;

/// What admission needs beyond the body's facts.
#[derive(Debug, Clone, Copy)]
pub struct Ask<'a> {
    pub facts: RequestFacts<'a>,
    /// Token estimate (input, output) for limits and budgets.
    pub estimate: (u64, u64),
    /// The client sent `anthropic-version` itself.
    pub anthropic_version: bool,
    /// The request states its output limit (`max_tokens` and its kin).
    pub output_stated: bool,
    /// The body's size is known (the input estimate stands on it).
    pub size_known: bool,
    /// Limits are counted and the budget reserved: only forwarding is left.
    pub admitted: bool,
    pub now_ms: u64,
}

/// The shared counters could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CountersUnavailable;

/// The counters admission reads (shared by every worker of the Envoy).
pub trait Counters {
    /// This Envoy's lease of the key's rate window (`Err`: unreadable).
    fn rate_pool(&self, key_id: &str) -> Result<Option<Pool>, CountersUnavailable>;
    /// Until when (ms) a provider credential cools down (0: it does not).
    fn cool_until(&self, credential_id: &str) -> u64;
}

/// A request counted in its key's rate window: the pool to write back, and
/// what the response headers say.
#[derive(Debug, Clone, PartialEq)]
pub struct Counted {
    pub pool: Pool,
    pub limits: Limits,
    pub remaining: Remaining,
    pub estimated: u64,
}

impl Counted {
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        ratelimit::headers(&self.limits, &self.remaining)
    }
}

/// Where the request goes and how. (`Debug` shows header names only: one
/// may carry the credential.)
#[derive(Clone, PartialEq)]
pub struct Forwarding<'c> {
    /// Where and with which credentials attempts go, in order (sealed for
    /// the upstream filter).
    pub plan: Plan,
    /// One candidate: the credential is set here and the request goes to a
    /// cluster without the upstream filter (one attempt, no retry).
    pub direct: bool,
    /// Request headers to set (an empty value removes the header); values
    /// from the configuration are borrowed.
    pub headers: Vec<(&'c str, Cow<'c, str>)>,
    /// The provider's model name to write into the body.
    pub rewrite_model: Option<String>,
    /// The body's `models` (fallbacks) is taken out.
    pub strip_models: bool,
    pub provider: String,
}

impl std::fmt::Debug for Forwarding<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forwarding")
            .field("plan", &self.plan)
            .field("direct", &self.direct)
            .field("headers", &self.headers.iter().map(|(n, _)| *n).collect::<Vec<_>>())
            .field("rewrite_model", &self.rewrite_model)
            .field("strip_models", &self.strip_models)
            .field("provider", &self.provider)
            .finish()
    }
}

#[derive(Debug, PartialEq)]
pub enum Verdict<'c> {
    Refuse(Denial),
    /// This Envoy's share of the key's rate window cannot cover the request:
    /// lease this much from the store first, then admit again.
    Lease {
        key_id: String,
        requests: u64,
        tokens: u64,
    },
    /// Ask the store to hold the estimate against the key's budgets first.
    Reserve {
        counted: Option<Counted>,
        served: Served,
    },
    Forward {
        counted: Option<Counted>,
        served: Served,
        forwarding: Forwarding<'c>,
    },
}

pub fn admit<'c>(ask: Ask<'_>, lookup: &KeyAnswer, counters: &impl Counters, config: &'c Config) -> Verdict<'c> {
    let forward = match decide(ask.facts, lookup, (ask.now_ms / 1000) as i64) {
        Ok(f) => f,
        Err(denial) => return Verdict::Refuse(denial),
    };
    let served = Served {
        key_id: forward.key_id.to_string(),
        config_id: lookup.config_id().map(String::from),
        provider: forward.primary.provider.id.clone(),
        model: forward.primary.model.clone(),
        fallbacks: forward
            .fallbacks
            .iter()
            .map(|t| ModelRef { provider: t.provider.id.clone(), model: t.model.clone() })
            .collect(),
    };
    if let Some(rl) = &lookup.request_limits {
        if let Err(denial) = check_request_limits(rl, &ask) {
            return Verdict::Refuse(denial);
        }
    }
    let mut counted = None;
    if !ask.admitted {
        if let Some(limits) = &lookup.limits {
            let tokens = ratelimit::counted_tokens(limits, ask.estimate.0.saturating_add(ask.estimate.1));
            let Ok(pool) = counters.rate_pool(forward.key_id) else {
                return Verdict::Refuse(Denial::internal("the rate limiter is unavailable"));
            };
            match ratelimit::take(pool, ask.now_ms, limits, tokens) {
                Take::Admit { pool, remaining } => {
                    counted = Some(Counted { pool, limits: limits.clone(), remaining, estimated: tokens })
                }
                Take::Lease { requests, tokens } => {
                    return Verdict::Lease { key_id: forward.key_id.to_string(), requests, tokens }
                }
                Take::Refuse { requests, retry_after_s, remaining } => {
                    return Verdict::Refuse(ratelimit::refusal(limits, requests, retry_after_s, &remaining))
                }
            }
        }
        if lookup.budgeted {
            return Verdict::Reserve { counted, served };
        }
    }
    let legs = legs(&forward, counters, ask.now_ms);
    let attempts: usize = legs.iter().map(|l| l.keys.len()).sum();
    let Some(first) = legs.first() else {
        return Verdict::Refuse(Denial::internal("no credential"));
    };
    // Legs at different places go through the hop, whose upstream filter
    // sends each attempt to its own.
    let hop = legs.iter().any(|l| (l.tls, &l.authority) != (first.tls, &first.authority));
    if hop && config.hop_cluster.is_empty() {
        let elsewhere = legs.iter().find(|l| l.authority != first.authority).map_or("", |l| l.provider.as_str());
        return Verdict::Refuse(Denial::new(
            400,
            Code::FallbackUnavailable,
            format!(
                "this gateway cannot fall back to another place (`models` reaches provider `{elsewhere}` at another address than the first model's); list models served at the same address"
            ),
        ));
    }
    let direct = attempts == 1;
    let cluster = match (hop, direct, first.tls) {
        (true, _, _) => &config.hop_cluster,
        (false, true, true) => &config.direct_cluster_https,
        (false, true, false) => &config.direct_cluster_http,
        (false, false, true) => &config.upstream_cluster_https,
        (false, false, false) => &config.upstream_cluster_http,
    };
    let mut headers: Vec<(&'c str, Cow<'c, str>)> = Vec::with_capacity(8);
    headers.extend([
        (":authority", Cow::Owned(first.authority.clone())),
        (":path", Cow::Owned(first.path.clone())),
        (config.cluster_header.as_str(), Cow::Borrowed(cluster.as_str())),
    ]);
    // The credential itself is set per attempt by the upstream filter; here
    // only what is not secret (or, for one candidate, that one credential).
    if legs.iter().any(|l| l.auth == AuthStyle::XApiKey) && !ask.anthropic_version {
        headers.push(("anthropic-version", Cow::Borrowed(config.anthropic_version.as_str())));
    }
    headers.push(("x-envoy-max-retries", count(attempts.saturating_sub(1) as u64)));
    // The configuration's timeouts: Envoy's router takes them per request.
    let timeouts = lookup.request_limits.as_ref().map_or((None, None), |r| (r.total_timeout_ms, r.attempt_timeout_ms));
    if let Some(ms) = timeouts.0 {
        headers.push(("x-envoy-upstream-rq-timeout-ms", count(ms)));
    }
    if let Some(ms) = timeouts.1 {
        headers.push(("x-envoy-upstream-rq-per-try-timeout-ms", count(ms)));
    }
    if let (true, Some(key)) = (direct, first.keys.first()) {
        let (name, value) = credential_header(first.auth, &key.value);
        headers.push((name, Cow::Owned(value)));
    }
    let rewrite_model = forward.rewrite_model.then(|| forward.primary.model.clone()).flatten();
    // A body's `models` is keygate's: it never reaches a provider (blanked
    // in place: the body keeps its length).
    let strip_models = matches!(ask.facts.fallbacks, Fallbacks::List(_));
    if rewrite_model.is_some() {
        headers.push(("content-length", Cow::Borrowed("")));
    }
    let forwarding = Forwarding {
        plan: Plan { hop, legs },
        direct,
        headers,
        rewrite_model,
        strip_models,
        provider: forward.primary.provider.id.clone(),
    };
    Verdict::Forward { counted, served, forwarding }
}

/// A count as a header value: small ones (a retry count) without an allocation.
fn count(n: u64) -> Cow<'static, str> {
    const SMALL: [&str; 10] = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"];
    match usize::try_from(n).ok().and_then(|i| SMALL.get(i)) {
        Some(s) => Cow::Borrowed(s),
        None => Cow::Owned(n.to_string()),
    }
}

/// The request's legs: its model, then its fallbacks, each with its
/// credentials ordered by cool-down (`failover::order`); at most
/// `MAX_ATTEMPTS` credentials in all.
fn legs(forward: &Forward<'_>, counters: &impl Counters, now_ms: u64) -> Vec<Leg> {
    let mut room = MAX_ATTEMPTS;
    let mut legs = Vec::with_capacity(1 + forward.fallbacks.len());
    for target in std::iter::once(&forward.primary).chain(&forward.fallbacks) {
        // A lone credential is tried whether it cools down or not
        // (`failover::order`): its cool-down is not read (a host call), and
        // there is nothing to order.
        let keys: Vec<Credential> = if target.credentials.len() == 1 {
            target.credentials.iter().take(room).cloned().collect()
        } else {
            let cool: Vec<u64> = target.credentials.iter().map(|c| counters.cool_until(&c.id)).collect();
            failover::order(&cool, now_ms)
                .into_iter()
                .filter_map(|i| target.credentials.get(i).cloned())
                .take(room)
                .collect()
        };
        room -= keys.len();
        if keys.is_empty() {
            break;
        }
        legs.push(Leg {
            provider: target.provider.id.clone(),
            model: target.model.clone(),
            auth: target.provider.auth,
            tls: target.endpoint.tls,
            authority: target.endpoint.authority.to_string(),
            path: target.upstream_path.clone(),
            keys,
        });
    }
    legs
}

/// A configuration's per-request token limits, judged on the estimate
/// (input: from the body's size, as for budgets; output: the stated limit
/// times `n`).
fn check_request_limits(rl: &RequestLimits, ask: &Ask<'_>) -> Result<(), Denial> {
    if let Some(max) = rl.max_input_tokens {
        if !ask.size_known {
            return Err(Denial::new(
                413,
                Code::InputTokensExceeded,
                format!("this access key allows {max} input tokens per request, and the request's size is unknown (send `content-length`)"),
            ));
        }
        if ask.estimate.0 > max {
            return Err(Denial::new(
                413,
                Code::InputTokensExceeded,
                format!(
                    "the request's input is estimated at {} tokens (its body's size); this access key allows {max} per request",
                    ask.estimate.0
                ),
            ));
        }
    }
    if let Some(max) = rl.max_output_tokens.filter(|_| ask.facts.surface.generates_text()) {
        if !ask.output_stated {
            return Err(Denial::new(
                400,
                Code::OutputTokensExceeded,
                format!("this access key allows at most {max} output tokens per request: set `max_tokens` (or `max_completion_tokens` / `max_output_tokens`) to a count of at most that (and `n` to a count)"),
            ));
        }
        if ask.estimate.1 > max {
            return Err(Denial::new(
                400,
                Code::OutputTokensExceeded,
                format!(
                    "the request asks for up to {} output tokens; this access key allows {max} per request",
                    ask.estimate.1
                ),
            ));
        }
    }
    Ok(())
}

/// The store refused a reservation.
pub fn budget_refusal(by: RefusedBy) -> Denial {
    let message = match by {
        RefusedBy::Key => "this access key has used up its budget",
        RefusedBy::Configuration => "the budget of this access key's configuration is used up",
        RefusedBy::Credits => "the gateway's credit balance is used up",
        RefusedBy::Other => "a budget that applies to this access key is used up",
    };
    Denial::new(402, Code::InsufficientCredits, message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::ModelField;
    use crate::surface;
    use std::collections::HashMap;

    #[derive(Default)]
    struct Now {
        pool: Option<Pool>,
        cool: HashMap<String, u64>,
    }

    impl Counters for Now {
        fn rate_pool(&self, _key_id: &str) -> Result<Option<Pool>, CountersUnavailable> {
            Ok(self.pool)
        }
        fn cool_until(&self, id: &str) -> u64 {
            self.cool.get(id).copied().unwrap_or(0)
        }
    }

    const NOW: u64 = 1_700_000_000_000;

    fn lookup(extra: &str, keys: &[&str]) -> KeyAnswer {
        let creds: Vec<String> = keys.iter().map(|k| format!(r#"{{"id":"{k}","value":"sk-{k}"}}"#)).collect();
        let json = format!(
            r#"{{"schema":1,"version":1,"status":"active","key":{{"id":"ak_1","configId":"cfg_1"}},
            "providers":[{{"id":"openai","format":"openai","auth":"bearer","baseUrl":"https://api.openai.com/v1",
            "models":["gpt-*"],"routes":[{{"keys":[{}]}}]}}]{extra}}}"#,
            creds.join(",")
        );
        KeyAnswer::whole(serde_json::from_str(&json).unwrap())
    }

    fn admit_chat<'c>(l: &KeyAnswer, counters: &Now, config: &'c Config, admitted: bool) -> Verdict<'c> {
        admit_with(l, counters, config, admitted, &Fallbacks::None)
    }

    fn admit_with<'c>(
        l: &KeyAnswer,
        counters: &Now,
        config: &'c Config,
        admitted: bool,
        fallbacks: &Fallbacks,
    ) -> Verdict<'c> {
        let model = ModelField::Str("gpt-4o".into());
        let surface = surface::classify("POST", "/v1/chat/completions", false).unwrap();
        let facts = RequestFacts { surface, model: &model, fallbacks, access_key_in_body: false, client_ip: None };
        let ask = Ask {
            facts,
            estimate: (10, 90),
            output_stated: true,
            size_known: true,
            anthropic_version: false,
            admitted,
            now_ms: NOW,
        };
        admit(ask, l, counters, config)
    }

    /// A request to `path` estimated at `estimate`, stating its output limit or not.
    fn admit_sized<'c>(
        l: &KeyAnswer,
        config: &'c Config,
        path: &str,
        estimate: (u64, u64),
        stated: bool,
    ) -> Verdict<'c> {
        let model = ModelField::Str("gpt-4o".into());
        let surface = surface::classify("POST", path, false).unwrap();
        let facts = RequestFacts {
            surface,
            model: &model,
            fallbacks: &Fallbacks::None,
            access_key_in_body: false,
            client_ip: None,
        };
        let ask = Ask {
            facts,
            estimate,
            output_stated: stated,
            size_known: true,
            anthropic_version: false,
            admitted: false,
            now_ms: NOW,
        };
        admit(ask, l, &Now::default(), config)
    }

    fn refused_code(v: Verdict<'_>) -> Option<(u16, String)> {
        match v {
            Verdict::Refuse(d) => Some((d.status, d.code.as_str().to_string())),
            _ => None,
        }
    }

    #[test]
    fn per_request_limits_refuse_exactly_past_their_bounds() {
        let config = config();
        let l = lookup(r#","requestLimits":{"maxInputTokens":100,"maxOutputTokens":50}"#, &["pk_a"]);
        let chat = "/v1/chat/completions";
        assert_eq!(refused_code(admit_sized(&l, &config, chat, (100, 50), true)), None, "at the bounds");
        assert_eq!(
            refused_code(admit_sized(&l, &config, chat, (101, 50), true)),
            Some((413, "input_tokens_exceeded".into()))
        );
        assert_eq!(
            refused_code(admit_sized(&l, &config, chat, (100, 51), true)),
            Some((400, "output_tokens_exceeded".into()))
        );
        let unstated = refused_code(admit_sized(&l, &config, chat, (10, 4096), false));
        assert_eq!(unstated, Some((400, "output_tokens_exceeded".into())), "a generating request must state its limit");
        // A body of unknown size (no content-length: Istio has no buffer
        // filter to set one) cannot be judged: refused.
        let model = ModelField::Str("gpt-4o".into());
        let surface = surface::classify("POST", chat, false).unwrap();
        let facts = RequestFacts {
            surface,
            model: &model,
            fallbacks: &Fallbacks::None,
            access_key_in_body: false,
            client_ip: None,
        };
        let unknown = Ask {
            facts,
            estimate: (0, 50),
            output_stated: true,
            size_known: false,
            anthropic_version: false,
            admitted: false,
            now_ms: NOW,
        };
        assert_eq!(
            refused_code(admit(unknown, &l, &Now::default(), &config)),
            Some((413, "input_tokens_exceeded".into()))
        );
        // Embeddings generate no text: only the input limit applies.
        assert_eq!(refused_code(admit_sized(&l, &config, "/v1/embeddings", (10, 4096), false)), None);
        assert_eq!(
            refused_code(admit_sized(&l, &config, "/v1/embeddings", (101, 0), false)),
            Some((413, "input_tokens_exceeded".into()))
        );
    }

    #[test]
    fn per_request_timeouts_go_to_envoy() {
        let config = config();
        let l = lookup(r#","requestLimits":{"attemptTimeoutMs":1500,"totalTimeoutMs":4000}"#, &["pk_a", "pk_b"]);
        let Verdict::Forward { forwarding: f, .. } = admit_chat(&l, &Now::default(), &config, false) else {
            panic!("not forwarded")
        };
        assert!(f.headers.contains(&("x-envoy-upstream-rq-timeout-ms", "4000".into())));
        assert!(f.headers.contains(&("x-envoy-upstream-rq-per-try-timeout-ms", "1500".into())));
        let Verdict::Forward { forwarding: plain, .. } =
            admit_chat(&lookup("", &["pk_a"]), &Now::default(), &config, false)
        else {
            panic!("not forwarded")
        };
        assert!(plain.headers.iter().all(|(n, _)| !n.starts_with("x-envoy-upstream-rq")), "the route's own otherwise");
    }

    fn config() -> Config {
        Config::parse(br#"{"storeCluster":"store"}"#).unwrap()
    }

    #[test]
    fn one_candidate_goes_direct_with_its_credential() {
        let config = config();
        let Verdict::Forward { forwarding: f, served, counted } =
            admit_chat(&lookup("", &["pk_a"]), &Now::default(), &config, false)
        else {
            panic!("not forwarded")
        };
        assert!(f.direct && counted.is_none());
        assert_eq!(served.key_id, "ak_1");
        assert_eq!(served.config_id.as_deref(), Some("cfg_1"));
        let header = |n: &str| f.headers.iter().find(|(k, _)| *k == n).map(|(_, v)| v.as_ref());
        assert_eq!(header("authorization"), Some("Bearer sk-pk_a"));
        assert_eq!(header(&config.cluster_header), Some(config.direct_cluster_https.as_str()));
        assert_eq!(header("x-envoy-max-retries"), Some("0"));
        assert_eq!(header(":path"), Some("/v1/chat/completions"));
    }

    #[test]
    fn several_candidates_go_through_the_upstream_filter_first_to_recover_first() {
        let config = config();
        let mut now = Now::default();
        now.cool.insert("pk_a".into(), NOW + 5_000);
        now.cool.insert("pk_b".into(), NOW + 1_000);
        let Verdict::Forward { forwarding: f, .. } = admit_chat(&lookup("", &["pk_a", "pk_b"]), &now, &config, false)
        else {
            panic!("not forwarded")
        };
        assert!(!f.direct);
        let ids: Vec<&str> = f.plan.candidates().map(|(_, _, k)| k.id.as_str()).collect();
        assert_eq!(ids, ["pk_b", "pk_a"]);
        assert!(f.headers.iter().all(|(n, _)| *n != "authorization"), "no credential before the attempt");
        assert!(f.headers.contains(&(config.cluster_header.as_str(), config.upstream_cluster_https.as_str().into())));
        assert!(f.headers.contains(&("x-envoy-max-retries", "1".into())));
    }

    #[test]
    fn a_rate_limited_key_leases_then_counts_then_is_refused_with_429() {
        let config = config();
        let l = lookup(r#","limits":{"requestsPerMinute":1}"#, &["pk_a"]);
        let Verdict::Lease { key_id, requests, .. } = admit_chat(&l, &Now::default(), &config, false) else {
            panic!("no lease asked for")
        };
        assert_eq!((key_id.as_str(), requests), ("ak_1", 1));
        let grant = keygate_proto::lookup::LeaseResponse {
            window_start_ms: 0,
            reset_ms: 60_000,
            requests: 1,
            ..Default::default()
        };
        let limits = l.limits.clone().unwrap();
        let leased =
            Now { pool: Some(Pool::default().with_grant(&grant, NOW, NOW, (1, 100), &limits)), ..Now::default() };
        let Verdict::Forward { counted: Some(c), .. } = admit_chat(&l, &leased, &config, false) else {
            panic!("not counted")
        };
        assert_eq!(c.pool.requests, 0);
        let grant = keygate_proto::lookup::LeaseResponse { window_start_ms: 0, reset_ms: 60_000, ..Default::default() };
        let dry = Now { pool: Some(c.pool.with_grant(&grant, NOW, NOW, (1, 100), &limits)), ..Now::default() };
        let Verdict::Refuse(d) = admit_chat(&l, &dry, &config, false) else { panic!("second request admitted") };
        assert_eq!((d.status, d.code), (429, Code::RateLimitExceeded));
        // Admitted once (reservation done), it is not counted again.
        assert!(matches!(admit_chat(&l, &dry, &config, true), Verdict::Forward { counted: None, .. }));
    }

    #[test]
    fn a_budgeted_key_reserves_before_it_forwards() {
        let config = config();
        let l = lookup(r#","budgeted":true"#, &["pk_a"]);
        assert!(matches!(admit_chat(&l, &Now::default(), &config, false), Verdict::Reserve { .. }));
        assert!(matches!(admit_chat(&l, &Now::default(), &config, true), Verdict::Forward { .. }));
    }

    #[test]
    fn the_configuration_refuses_before_any_counter_moves() {
        let config = config();
        let l = lookup(r#","limits":{"requestsPerMinute":1},"access":{"models":["openai/gpt-3*"]}"#, &["pk_a"]);
        let Verdict::Refuse(d) = admit_chat(&l, &Now::default(), &config, false) else { panic!("admitted") };
        assert_eq!(d.code, Code::ModelNotAllowed);
    }

    /// A lookup whose `openai` has keys a, b and whose `other` (another
    /// address) has c; and whose `same` serves at openai's address.
    fn two_places() -> KeyAnswer {
        let json = r#"{"schema":1,"version":1,"status":"active","key":{"id":"ak_1"},"providers":[
            {"id":"openai","format":"openai","auth":"bearer","baseUrl":"https://api.openai.com/v1","models":["gpt-*"],
             "routes":[{"keys":[{"id":"pk_a","value":"sk-a"},{"id":"pk_b","value":"sk-b"}]}]},
            {"id":"other","format":"openai","auth":"api-key","baseUrl":"http://10.0.0.5:8000/compat/v1","models":[],
             "routes":[{"keys":[{"id":"pk_c","value":"sk-c"}]}]},
            {"id":"same","format":"openai","auth":"bearer","baseUrl":"https://api.openai.com/v1","models":[],
             "routes":[{"keys":[{"id":"pk_d","value":"sk-d"}]}]}]}"#;
        KeyAnswer::whole(serde_json::from_str(json).unwrap())
    }

    fn forwarded(v: Verdict<'_>) -> Forwarding<'_> {
        match v {
            Verdict::Forward { forwarding, .. } => forwarding,
            other => panic!("not forwarded: {other:?}"),
        }
    }

    #[test]
    fn fallbacks_elsewhere_go_through_the_hop_leg_by_leg() {
        let config = Config::parse(br#"{"storeCluster":"store","hopCluster":"hop"}"#).unwrap();
        let mut now = Now::default();
        now.cool.insert("pk_a".into(), NOW + 5_000);
        let list = Fallbacks::List(vec!["other/m".into()]);
        let f = forwarded(admit_with(&two_places(), &now, &config, false, &list));
        assert!(f.plan.hop && !f.direct && f.strip_models);
        let order: Vec<(usize, &str)> = f.plan.candidates().map(|(leg, _, k)| (leg, k.id.as_str())).collect();
        assert_eq!(order, [(0, "pk_b"), (1, "pk_c")], "a cooling key sits out while its leg has another");
        let other = &f.plan.legs[1];
        assert_eq!(
            (other.authority.as_str(), other.path.as_str(), other.tls, other.auth, other.model.as_deref()),
            ("10.0.0.5:8000", "/compat/v1/chat/completions", false, AuthStyle::ApiKey, Some("m"))
        );
        let header = |n: &str| f.headers.iter().find(|(k, _)| *k == n).map(|(_, v)| v.as_ref());
        assert_eq!(header(&config.cluster_header), Some("hop"));
        assert_eq!(header("x-envoy-max-retries"), Some("1"));
        assert_eq!(header(":authority"), Some("api.openai.com"));
        assert_eq!(header("content-length"), None, "`models` is blanked: the length stands");
    }

    #[test]
    fn fallbacks_at_the_same_place_need_no_hop_and_without_one_others_are_refused() {
        let config = config();
        let same = Fallbacks::List(vec!["same/m".into()]);
        let f = forwarded(admit_with(&two_places(), &Now::default(), &config, false, &same));
        assert!(!f.plan.hop);
        assert!(f.headers.contains(&(config.cluster_header.as_str(), config.upstream_cluster_https.as_str().into())));
        let elsewhere = Fallbacks::List(vec!["other/m".into()]);
        let Verdict::Refuse(d) = admit_with(&two_places(), &Now::default(), &config, false, &elsewhere) else {
            panic!("forwarded without a hop")
        };
        assert_eq!((d.status, d.code), (400, Code::FallbackUnavailable));
        assert!(d.message.contains("`other`"), "{}", d.message);
    }

    #[test]
    fn budget_refusals_name_the_budget() {
        assert!(budget_refusal(RefusedBy::Configuration).message.contains("configuration"));
        assert_eq!(budget_refusal(RefusedBy::Credits).status, 402);
    }
}
