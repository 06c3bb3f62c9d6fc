//! The upstream (cluster) filter. It runs once per attempt: it opens the
//! request's sealed plan, puts on the request this attempt's credential and
//! no other, and adds what the attempt got to the request's trail
//! (`handover`). It keeps no state and shares nothing with the keygate filter
//! but the request's filter state, so it works in any VM.
//! Cool-downs, usage and the client's answer are the keygate filter's, from
//! the trail.

use log::{error, warn};

use crate::errors::{Denial, Dialect};
use crate::failover::retry_hint_ms;
use crate::handover::{self, encode_trail, parse_trail, Outcome, SealKey};
use crate::host::{Host, Map};
use crate::upstream::{credential_header, CLIENT_CREDENTIAL_HEADERS};

/// An attempt whose credential went on: its entry in the trail, and the
/// trail as it wrote it (attempts are sequential: nobody writes the trail
/// until its answer comes back, so the answer needs no second read).
pub struct Sent {
    index: usize,
    trail: Vec<Outcome>,
}

/// An attempt's request headers: `None` when it was refused (no plan, or no
/// credential left for it): nothing goes to the provider then.
pub fn attempt_headers(host: &impl Host, key: &SealKey) -> Option<Sent> {
    // One snapshot of the headers: each host call costs ~1 µs. The first of
    // a repeated header counts, read as the keygate filter reads it.
    let (mut request_id, mut authority, mut attempt_count) = (None, None, None);
    for (name, value) in host.headers(Map::RequestHeaders) {
        let text = || String::from_utf8_lossy(&value).into_owned();
        match name.as_str() {
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
    let plan =
        host.property(&handover::PLAN_STATE).and_then(|sealed| handover::open(key, &request_id, &authority, &sealed));
    let Some(plan) = plan else {
        error!("keygate: request {request_id}: an upstream attempt without a plan this filter can open: refused");
        return refuse(host, "the gateway's halves do not agree (is the gateway credential the same for both?)");
    };
    let Some(credential) = plan.keys.get(index) else {
        warn!("keygate: request {request_id}: attempt {} has no credential left: refused", index + 1);
        return refuse(host, "no provider key left for this attempt");
    };
    let (name, value) = credential_header(plan.auth, &credential.value);
    if host.set_header(Map::RequestHeaders, name, Some(value.as_bytes())).is_err() {
        warn!("keygate: request {request_id}: could not set the credential of attempt {}", index + 1);
        return refuse(host, "the gateway could not prepare the request");
    }
    // Sent, not yet answered: a reset or a timeout leaves it so.
    trail.push(Outcome::default());
    if host.set_property(&[handover::TRAIL], encode_trail(&trail).as_bytes()).is_err() {
        warn!("keygate: request {request_id}: could not record attempt {}", index + 1);
    }
    Some(Sent { index, trail })
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
    use crate::handover::{Plan, Sealer};
    use keygate_proto::lookup::{AuthStyle, Credential};

    fn plan() -> Plan {
        Plan {
            auth: AuthStyle::Bearer,
            keys: vec![
                Credential { id: "pk_a".into(), value: "sk-a".into() },
                Credential { id: "pk_b".into(), value: "sk-b".into() },
            ],
        }
    }

    /// A request whose keygate filter (context 1) sealed `plan` for it; its
    /// attempts run in contexts 10, 11, ... of the same request.
    fn request(host: &FakeHost, token: &str, request_id: &str) {
        host.enter(1);
        let p = plan();
        let sealed =
            Sealer::new(SealKey::derive(token), [3; 16]).seal(request_id, "api.example", p.auth, &p.keys).unwrap();
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
        attempt_headers(host, &SealKey::derive("gw"))
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
        assert!(attempt_headers(&host, &SealKey::derive("gw")).is_none());
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
}
