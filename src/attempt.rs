//! The upstream (cluster) filter. It runs once per attempt: it opens the
//! request's sealed plan, puts on the request this attempt's credential and
//! no other, and adds what the attempt got to the request's trail
//! (`handover`). It keeps no state and shares nothing with the keygate filter
//! but the request's filter state, so it works in any VM.
//! Cool-downs, usage and the client's answer are the keygate filter's, from
//! the trail.

use log::{error, warn};

use crate::config::Config;
use crate::errors::{Denial, Dialect};
use crate::failover::retry_hint_ms;
use crate::handover::{self, encode_trail, parse_trail, Outcome, SealKey};
use crate::host::{Buffer, Host, Map};
use crate::upstream::{credential_header, CLIENT_CREDENTIAL_HEADERS};

/// An attempt whose credential went on: its entry in the trail, the trail
/// as it wrote it (attempts are sequential: nobody writes the trail until
/// its answer comes back, so the answer needs no second read), and the
/// model its body must name (a fallback's).
pub struct Sent {
    index: usize,
    trail: Vec<Outcome>,
    pub body_model: Option<String>,
}

/// An attempt's request headers: `None` when it was refused (no plan, or no
/// credential left for it): nothing goes to the provider then.
pub fn attempt_headers(host: &impl Host, key: &SealKey, config: &Config) -> Option<Sent> {
    // One snapshot of the headers: each host call costs ~1 µs. The first of
    // a repeated header counts, read as the keygate filter reads it.
    let (mut request_id, mut authority, mut attempt_count) = (None, None, None);
    for (name, value) in host.headers(Map::RequestHeaders).iter() {
        let text = || String::from_utf8_lossy(value).into_owned();
        match name {
            "x-request-id" if request_id.is_none() => request_id = Some(text()),
            ":authority" if authority.is_none() => authority = Some(text()),
            "x-envoy-attempt-count" if attempt_count.is_none() => attempt_count = text().parse().ok(),
            _ => {}
        }
    }
    let (request_id, authority) = (request_id.unwrap_or_default(), authority.unwrap_or_default());
    // The first attempt (Envoy counts them when the virtual host says so)
    // finds an empty trail; any other reads it.
    let mut trail = match attempt_count {
        Some(1u32) => Vec::new(),
        _ => host.property(&handover::TRAIL_STATE).map(|b| parse_trail(&b)).unwrap_or_default(),
    };
    let index = trail.len();
    // A retry reuses the header map: the previous attempt's credential goes
    // first. (On the first attempt the keygate filter removed every client
    // credential.)
    if index > 0 {
        for name in CLIENT_CREDENTIAL_HEADERS {
            let _ = host.set_header(Map::RequestHeaders, name, None);
        }
    }
    let plan = host
        .property(&handover::PLAN_STATE)
        .and_then(|sealed| handover::open(key, &request_id, &sealed))
        .filter(|plan| plan.goes_to(&authority));
    let Some(plan) = plan else {
        error!("keygate: request {request_id}: an upstream attempt without a plan this filter can open: refused");
        return refuse(host, "the gateway's halves do not agree (is the gateway credential the same for both?)");
    };
    let Some((leg_index, leg, credential)) = plan.attempt(index) else {
        warn!("keygate: request {request_id}: attempt {} has no credential left: refused", index + 1);
        return refuse(host, "no provider key left for this attempt");
    };
    let (name, value) = credential_header(leg.auth, &credential.value);
    let mut headers = vec![(name, value)];
    // With fallbacks, each attempt goes to its leg's path (and, through the
    // hop, its place); the header map is the previous attempt's.
    if plan.legs.len() > 1 {
        headers.push((":path", leg.path.clone()));
        if plan.hop {
            headers.push((":authority", leg.authority.clone()));
            let via = if leg.tls { &config.direct_cluster_https } else { &config.direct_cluster_http };
            headers.push((config.cluster_header.as_str(), via.clone()));
        }
    }
    let body_model = leg.model.clone().filter(|_| leg_index > 0);
    if body_model.is_some() {
        headers.push(("content-length", String::new()));
    }
    for (name, value) in &headers {
        let value = (!value.is_empty()).then_some(value.as_bytes());
        if host.set_header(Map::RequestHeaders, name, value).is_err() {
            warn!("keygate: request {request_id}: could not prepare attempt {}", index + 1);
            return refuse(host, "the gateway could not prepare the request");
        }
    }
    // Sent, not yet answered: a reset or a timeout leaves it so.
    trail.push(Outcome::default());
    if host.set_property(&[handover::TRAIL], encode_trail(&trail).as_bytes()).is_err() {
        warn!("keygate: request {request_id}: could not record attempt {}", index + 1);
    }
    Some(Sent { index, trail, body_model })
}

/// An attempt's request body, once whole: a fallback's names its model.
/// (`false`: not whole yet, Envoy buffers it.)
pub fn attempt_body(host: &impl Host, sent: &Sent, body_size: usize, end_of_stream: bool) -> bool {
    let Some(model) = &sent.body_model else { return true };
    if !end_of_stream {
        return false;
    }
    let body = host.buffer(Buffer::RequestBody, 0, body_size).unwrap_or_default();
    // The keygate filter checked that the body names a `model` (JSON): a
    // body that does not would go out naming another leg's model.
    let rewritten = crate::model_json::rewrite_model(&body, model);
    if rewritten.is_none_or(|b| host.set_buffer(Buffer::RequestBody, 0, body_size, &b).is_err()) {
        warn!("keygate: a fallback attempt's body could not name its model: refused");
        let _ = refuse(host, "the gateway could not prepare the request");
        return false;
    }
    true
}

/// An attempt's response headers: its outcome goes into the trail.
pub fn attempt_response(host: &impl Host, mut sent: Sent) {
    let header = |name: &str| host.header_str(Map::ResponseHeaders, name);
    let status = header(":status").and_then(|s| s.parse::<u16>().ok());
    // A provider's header may hold any bytes: read, never trusted to be UTF-8.
    let retry_hint_ms = if status == Some(429) {
        retry_hint_ms(header("retry-after-ms").as_deref(), header("retry-after").as_deref())
    } else {
        None
    };
    let Some(entry) = sent.trail.get_mut(sent.index) else { return };
    *entry = Outcome { status, retry_hint_ms };
    let _ = host.set_property(&[handover::TRAIL], encode_trail(&sent.trail).as_bytes());
}

/// Marks the upstream filter's own refusal for the keygate filter, which
/// answers it in the client's dialect (and removes the mark).
pub const REFUSED_HEADER: &str = "x-keygate-upstream-refused";

/// Answers the attempt locally: nothing reaches the provider.
fn refuse(host: &impl Host, why: &str) -> Option<Sent> {
    let denial = Denial::internal(why);
    let headers: [(&str, &[u8]); 3] = [
        ("content-type", b"application/json"),
        ("x-keygate-error", denial.code.as_str().as_bytes()),
        (REFUSED_HEADER, b"1"),
    ];
    let _ = host.send_response(denial.status, &headers, denial.body(Dialect::OpenAi).as_bytes());
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake_host::FakeHost;
    use crate::handover::{Leg, Plan, Sealer};
    use keygate_proto::lookup::{AuthStyle, Credential};

    fn leg(provider: &str, authority: &str, path: &str, keys: &[&str]) -> Leg {
        Leg {
            provider: provider.into(),
            model: Some(format!("{provider}-model")),
            auth: AuthStyle::Bearer,
            tls: true,
            authority: authority.into(),
            path: path.into(),
            keys: keys.iter().map(|k| Credential { id: format!("pk_{k}"), value: format!("sk-{k}") }).collect(),
        }
    }

    /// Two credentials for one model.
    fn plan() -> Plan {
        Plan { hop: false, legs: vec![leg("openai", "api.example", "/v1/chat/completions", &["a", "b"])] }
    }

    fn config() -> Config {
        Config::parse(br#"{"role":"upstream"}"#).unwrap()
    }

    /// A request whose keygate filter (context 1) sealed `plan` for it; its
    /// attempts run in contexts 10, 11, ... of the same request.
    fn request(host: &FakeHost, token: &str, request_id: &str) {
        request_with(host, token, request_id, &plan());
    }

    fn request_with(host: &FakeHost, token: &str, request_id: &str, plan: &Plan) {
        host.enter(1);
        let sealed = Sealer::new(SealKey::derive(token), [3; 16]).seal(request_id, plan).unwrap();
        host.set_property(&[handover::PLAN], &sealed).unwrap();
    }

    /// Attempt `ctx` of request 1 (`count`: its `x-envoy-attempt-count`).
    fn attempt(host: &FakeHost, ctx: u32, request_id: &str, count: Option<&str>) -> Option<Sent> {
        host.join_stream(ctx, 1);
        host.enter(ctx);
        let mut headers =
            vec![("x-request-id", request_id), (":authority", "api.example"), ("authorization", "Bearer sk-a")];
        headers.extend(count.map(|c| ("x-envoy-attempt-count", c)));
        host.set_headers(ctx, Map::RequestHeaders, &headers);
        attempt_headers(host, &SealKey::derive("gw"), &config())
    }

    fn answer(host: &FakeHost, ctx: u32, sent: Sent, headers: &[(&str, &str)]) {
        host.set_headers(ctx, Map::ResponseHeaders, headers);
        attempt_response(host, sent);
    }

    fn trail(host: &FakeHost) -> String {
        String::from_utf8(host.property(&handover::TRAIL_STATE).unwrap_or_default()).unwrap()
    }

    #[test]
    fn each_attempt_carries_its_own_credential_and_leaves_its_outcome() {
        let host = FakeHost::default();
        request(&host, "gw", "r1");
        let first = attempt(&host, 10, "r1", Some("1")).unwrap();
        assert_eq!(first.index, 0);
        assert_eq!(host.header_of(10, Map::RequestHeaders, "authorization").as_deref(), Some("Bearer sk-a"));
        answer(&host, 10, first, &[(":status", "429"), ("retry-after", "2")]);
        assert_eq!(trail(&host), "429/2000");

        // Without Envoy's attempt count the trail says which attempt this is.
        let second = attempt(&host, 11, "r1", None).unwrap();
        assert_eq!(second.index, 1);
        assert_eq!(host.header_of(11, Map::RequestHeaders, "authorization").as_deref(), Some("Bearer sk-b"));
        assert_eq!(trail(&host), "429/2000,0", "sent, not yet answered");
        answer(&host, 11, second, &[(":status", "200")]);
        assert_eq!(trail(&host), "429/2000,200");
        assert!(host.replies.borrow().is_empty());
    }

    #[test]
    fn no_credential_goes_out_without_a_plan_that_opens() {
        for (token, request_id) in [("another-credential", "r1"), ("gw", "another-request")] {
            let host = FakeHost::default();
            request(&host, token, request_id);
            assert!(attempt(&host, 10, "r1", Some("1")).is_none());
            assert_eq!(
                host.header_of(10, Map::RequestHeaders, "authorization").as_deref(),
                Some("Bearer sk-a"),
                "untouched"
            );
            let replies = host.replies_to(10);
            assert_eq!(replies.len(), 1, "answered locally: nothing reaches the provider");
            assert_eq!((replies[0].status, replies[0].code()), (500, "internal_error"));
            assert_eq!(trail(&host), "");
        }
    }

    #[test]
    fn a_request_sent_elsewhere_after_the_keygate_filter_gets_no_credential() {
        let host = FakeHost::default();
        request(&host, "gw", "r1");
        host.join_stream(10, 1);
        host.enter(10);
        host.set_headers(10, Map::RequestHeaders, &[("x-request-id", "r1"), (":authority", "evil.example")]);
        assert!(attempt_headers(&host, &SealKey::derive("gw"), &config()).is_none());
        assert_eq!(host.header_of(10, Map::RequestHeaders, "authorization"), None);
        assert_eq!(host.replies_to(10).len(), 1);
    }

    #[test]
    fn an_attempt_past_the_plan_is_refused() {
        let host = FakeHost::default();
        request(&host, "gw", "r1");
        host.set_property(&[handover::TRAIL], b"500,500").unwrap();
        assert!(attempt(&host, 12, "r1", Some("3")).is_none());
        assert_eq!(host.replies_to(12).len(), 1);
    }

    /// Attempt `ctx` of a request with fallbacks, its header map as the
    /// attempt before left it, with `body`; returns its headers and body.
    fn fallback_attempt(
        host: &FakeHost,
        ctx: u32,
        authority: &str,
        body: &str,
    ) -> (Option<Sent>, Vec<(String, String)>, String) {
        host.join_stream(ctx, 1);
        host.enter(ctx);
        let headers = [
            ("x-request-id", "r1"),
            (":authority", authority),
            (":path", "/v1/chat/completions"),
            ("content-length", "9"),
        ];
        host.set_headers(ctx, Map::RequestHeaders, &headers);
        host.set_buffer_of(ctx, Buffer::RequestBody, body.as_bytes());
        let sent = attempt_headers(host, &SealKey::derive("gw"), &config());
        if let Some(s) = &sent {
            assert!(attempt_body(host, s, body.len(), true));
        }
        let body = String::from_utf8(host.buffer_of(ctx, Buffer::RequestBody)).unwrap();
        (sent, host.headers_of(ctx, Map::RequestHeaders), body)
    }

    fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
        headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    #[test]
    fn a_fallback_attempt_goes_to_its_leg_with_its_model() {
        let host = FakeHost::default();
        let plan = Plan {
            hop: true,
            legs: vec![
                leg("openai", "api.example", "/v1/chat/completions", &["a"]),
                leg("other", "other.example:8443", "/compat/v1/chat/completions", &["c"]),
            ],
        };
        request_with(&host, "gw", "r1", &plan);
        let body = r#"{"model":"openai-model","messages":[]}"#;
        let (first, headers, sent_body) = fallback_attempt(&host, 10, "api.example", body);
        let first = first.unwrap();
        assert_eq!(header(&headers, "authorization"), Some("Bearer sk-a"));
        assert_eq!(header(&headers, ":authority"), Some("api.example"));
        assert_eq!(header(&headers, "x-keygate-cluster"), Some("keygate_direct_https"));
        assert_eq!(header(&headers, "content-length"), Some("9"), "the first leg's body is the keygate filter's");
        assert_eq!(sent_body, body);
        answer(&host, 10, first, &[(":status", "503")]);

        // The second attempt finds the header map as the first left it.
        let (second, headers, sent_body) = fallback_attempt(&host, 11, "api.example", body);
        assert!(second.is_some());
        assert_eq!(header(&headers, "authorization"), Some("Bearer sk-c"), "its own credential only");
        assert_eq!(header(&headers, ":authority"), Some("other.example:8443"));
        assert_eq!(header(&headers, ":path"), Some("/compat/v1/chat/completions"));
        assert_eq!(header(&headers, "content-length"), None);
        assert_eq!(sent_body, r#"{"model":"other-model","messages":[]}"#);
        assert_eq!(trail(&host), "503,0");
    }

    #[test]
    fn without_the_hop_a_fallback_stays_at_the_first_place() {
        let host = FakeHost::default();
        let plan = Plan {
            hop: false,
            legs: vec![
                leg("openai", "api.example", "/v1/chat/completions", &["a"]),
                leg("openai", "api.example", "/v1/chat/completions", &["b"]),
            ],
        };
        request_with(&host, "gw", "r1", &plan);
        let (first, headers, _) = fallback_attempt(&host, 10, "api.example", r#"{"model":"x"}"#);
        assert_eq!(header(&headers, "x-keygate-cluster"), None, "the route's cluster stays");
        answer(&host, 10, first.unwrap(), &[(":status", "429")]);
        // A plan without the hop opens only at the first leg's place.
        let (refused, _, _) = fallback_attempt(&host, 11, "other.example:8443", r#"{"model":"x"}"#);
        assert!(refused.is_none());
        assert_eq!(host.replies_to(11).len(), 1);
    }
}
