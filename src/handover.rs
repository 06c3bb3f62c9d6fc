//! What one filter instance hands to another of the same request. Each goes
//! through Envoy's filter state, which belongs to the request and not to a
//! VM, so it works whatever VM each instance runs in. Istio, for one, puts a
//! `WasmPlugin` in a VM of its own choosing.
//!
//! - The **attempt plan** goes from the keygate filter to the upstream filter.
//!   It holds the candidate credentials in order. It is sealed with
//!   XChaCha20-Poly1305 under a key both halves derive from the gateway
//!   credential, so whatever else can read filter state (an access-log
//!   format, another plugin, a debug dump) sees no provider secret.
//! - The **trail** goes from the upstream filter back to the keygate filter:
//!   what each attempt got. The keygate filter answers, records usage and
//!   cools keys down from it.
//! - The **body facts** go from the gate to the keygate filter: what the gate
//!   read of the body.
//!
//! Only filters write filter state; a client cannot. The plan is sealed all
//! the same because it holds secrets, and it is bound to its request (its
//! `x-request-id`) and to where it may go (the `:authority` the keygate
//! filter set): a plan copied onto another request, or a request sent
//! elsewhere after the keygate filter, does not open.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use keygate_proto::lookup::{AuthStyle, Credential};
use sha2::Sha256;

use crate::body::{BodyFacts, Fallbacks};
use crate::decide::ModelField;

/// Names under which each is set (`set_property`), and where each is read
/// back (Envoy keeps a wasm property as filter state `wasm.<name>`).
pub const PLAN: &str = "keygate_plan";
pub const PLAN_STATE: [&str; 2] = ["filter_state", "wasm.keygate_plan"];
pub const TRAIL: &str = "keygate_attempts";
pub const TRAIL_STATE: [&str; 2] = ["filter_state", "wasm.keygate_attempts"];
pub const BODY: &str = "keygate_body";
pub const BODY_STATE: [&str; 2] = ["filter_state", "wasm.keygate_body"];
/// The request header in which the gate names itself (`gate_tag`): its VM
/// and context. Set in the gate's headers phase, over any a client sent,
/// for a request without a usable `x-request-id` and when the keygate
/// filter runs in another VM; a client's is then not overwritten, and
/// names nothing (`claim_findings` checks the request id). Stripped with
/// every `x-keygate-*` header before the request leaves.
pub const GATE_HEADER: &str = "x-keygate-gate";

/// The gate's name for itself: `<vm tag, 16 hex>.<context id>`.
pub fn gate_tag(vm: u64, gate: u32) -> GateTag {
    let mut tag = GateTag { bytes: [0; GATE_TAG_MAX], len: 0 };
    let mut out = &mut tag.bytes[..];
    // Fits: 16 hex digits, a dot and at most 10 digits.
    if std::io::Write::write_fmt(&mut out, format_args!("{vm:016x}.{gate}")).is_ok() {
        tag.len = GATE_TAG_MAX - out.len();
    }
    tag
}

const GATE_TAG_MAX: usize = 16 + 1 + 10;

/// A gate tag, on the stack (a gate sets one for every request).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GateTag {
    bytes: [u8; GATE_TAG_MAX],
    len: usize,
}

impl GateTag {
    pub fn as_bytes(&self) -> &[u8] {
        self.bytes.get(..self.len).unwrap_or_default()
    }

    /// Always ASCII.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(self.as_bytes()).unwrap_or_default()
    }
}

/// A gate tag read back (`None`: not one).
pub fn parse_gate_tag(value: &[u8]) -> Option<(u64, u32)> {
    let text = std::str::from_utf8(value).ok()?;
    let (vm, gate) = text.split_once('.')?;
    if vm.len() != 16 {
        return None;
    }
    Some((u64::from_str_radix(vm, 16).ok()?, gate.parse().ok()?))
}

/// The format of a sealed plan (its first byte).
const SEALED_V2: u8 = 2;
const NONCE_LEN: usize = 24;
/// Most attempts a trail records: Envoy's retries are bounded by the
/// candidates, this only bounds what a damaged trail could make us parse.
pub const MAX_ATTEMPTS: usize = 64;

/// The sealing key, derived from the gateway credential (HKDF-SHA256).
pub struct SealKey(XChaCha20Poly1305);

impl SealKey {
    pub fn derive(gateway_token: &str) -> SealKey {
        let mut key = [0u8; 32];
        // 32 bytes is well within HKDF's output bound: `expand` cannot fail.
        let _ = hkdf::Hkdf::<Sha256>::new(Some(b"keygate"), gateway_token.as_bytes())
            .expand(b"keygate attempt plan v1", &mut key);
        SealKey(XChaCha20Poly1305::new(&key.into()))
    }
}

/// Seals plans: nonces are a random per-VM prefix and a counter, so no two
/// plans of any VM share one.
pub struct Sealer {
    key: SealKey,
    prefix: [u8; 16],
    counter: u64,
}

impl Sealer {
    pub fn new(key: SealKey, prefix: [u8; 16]) -> Sealer {
        Sealer { key, prefix, counter: 0 }
    }

    /// A sealer with a random nonce prefix (`None`: no randomness available).
    pub fn random(key: SealKey) -> Option<Sealer> {
        let mut prefix = [0u8; 16];
        getrandom::fill(&mut prefix).ok()?;
        Some(Sealer::new(key, prefix))
    }

    /// The sealed `plan` of request `request_id`.
    pub fn seal(&mut self, request_id: &str, plan: &Plan) -> Option<Vec<u8>> {
        let mut nonce = [0u8; NONCE_LEN];
        nonce[..16].copy_from_slice(&self.prefix);
        nonce[16..].copy_from_slice(&self.counter.to_le_bytes());
        self.counter = self.counter.wrapping_add(1);
        let payload = Payload { msg: &plan.encode(), aad: request_id.as_bytes() };
        let sealed = self.key.0.encrypt(XNonce::from_slice(&nonce), payload).ok()?;
        let mut out = Vec::with_capacity(1 + NONCE_LEN + sealed.len());
        out.push(SEALED_V2);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Some(out)
    }
}

/// Opens a plan sealed for request `request_id` (`None`: not one, not for
/// this request, or not under this key). Where the request may go is the
/// caller's check (`Plan::goes_to`).
pub fn open(key: &SealKey, request_id: &str, sealed: &[u8]) -> Option<Plan> {
    let (&version, rest) = sealed.split_first()?;
    if version != SEALED_V2 || rest.len() < NONCE_LEN {
        return None;
    }
    let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
    let payload = Payload { msg: ciphertext, aad: request_id.as_bytes() };
    let plain = key.0.decrypt(XNonce::from_slice(nonce), payload).ok()?;
    Plan::decode(&plain)
}

/// Where and how a request may be served, in the order attempts go: each
/// leg (a model at a provider) with its candidate credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The attempts go through the hop (the `hopCluster`'s internal
    /// listener): each sets its own `:authority` and inner cluster. Only a
    /// plan whose legs are at different places needs it.
    pub hop: bool,
    /// Never empty: the first is the request's `model`, the others its
    /// fallbacks (`models`).
    pub legs: Vec<Leg>,
}

/// One model at one provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leg {
    pub provider: String,
    /// The provider's name for the model (`None`: the request names none).
    /// A fallback's attempts carry it as the body's `model`.
    pub model: Option<String>,
    pub auth: AuthStyle,
    pub tls: bool,
    pub authority: String,
    pub path: String,
    /// Candidate credentials, in the order attempts use them.
    pub keys: Vec<Credential>,
}

impl Plan {
    /// Every attempt's leg (its index and itself) and credential, in order.
    pub fn candidates(&self) -> impl Iterator<Item = (usize, &Leg, &Credential)> {
        self.legs.iter().enumerate().flat_map(|(i, leg)| leg.keys.iter().map(move |k| (i, leg, k)))
    }

    /// Attempt `index`'s leg (index and leg) and credential.
    pub fn attempt(&self, index: usize) -> Option<(usize, &Leg, &Credential)> {
        self.candidates().nth(index)
    }

    pub fn attempts(&self) -> usize {
        self.legs.iter().map(|l| l.keys.len()).sum()
    }

    /// A request at `authority` may be served by this plan: the first leg's
    /// place (what the keygate filter set), or, through the hop, any leg's
    /// (an earlier attempt set it). Anything else was sent elsewhere after
    /// the keygate filter.
    pub fn goes_to(&self, authority: &str) -> bool {
        let mut places = self.legs.iter().take(if self.hop { usize::MAX } else { 1 });
        places.any(|l| l.authority == authority)
    }

    /// Flags (1: hop), then per leg its style, TLS, provider, model (`-` or
    /// `+name`), authority, path and credentials (a count, then each id and
    /// value); strings with a u16 length.
    fn encode(&self) -> Vec<u8> {
        let mut out = vec![u8::from(self.hop), self.legs.len().min(255) as u8];
        for leg in self.legs.iter().take(255) {
            out.push(style_byte(leg.auth));
            out.push(u8::from(leg.tls));
            let model = leg.model.as_ref().map_or_else(|| "-".to_string(), |m| format!("+{m}"));
            for field in [&leg.provider, &model, &leg.authority, &leg.path] {
                put(&mut out, field.as_bytes());
            }
            out.push(leg.keys.len().min(255) as u8);
            for k in leg.keys.iter().take(255) {
                put(&mut out, k.id.as_bytes());
                put(&mut out, k.value.as_bytes());
            }
        }
        out
    }

    fn decode(bytes: &[u8]) -> Option<Plan> {
        let mut r = Reader(bytes);
        let hop = match r.byte()? {
            0 => false,
            1 => true,
            _ => return None,
        };
        let mut legs = Vec::new();
        for _ in 0..r.byte()? {
            let auth = style_from(r.byte()?)?;
            let tls = r.byte()? != 0;
            let provider = r.text()?;
            let model = match r.text()? {
                m if m == "-" => None,
                m => Some(m.strip_prefix('+')?.to_string()),
            };
            let (authority, path) = (r.text()?, r.text()?);
            let mut keys = Vec::new();
            for _ in 0..r.byte()? {
                keys.push(Credential { id: r.text()?, value: r.text()? });
            }
            legs.push(Leg { provider, model, auth, tls, authority, path, keys });
        }
        (r.0.is_empty() && !legs.is_empty()).then_some(Plan { hop, legs })
    }
}

fn put(out: &mut Vec<u8>, field: &[u8]) {
    let len = field.len().min(usize::from(u16::MAX));
    out.extend_from_slice(&(len as u16).to_le_bytes());
    out.extend_from_slice(field.get(..len).unwrap_or_default());
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }

    fn text(&mut self) -> Option<String> {
        let (len, tail) = self.0.split_first_chunk::<2>()?;
        let (value, tail) = tail.split_at_checked(usize::from(u16::from_le_bytes(*len)))?;
        self.0 = tail;
        String::from_utf8(value.to_vec()).ok()
    }
}

fn style_byte(style: AuthStyle) -> u8 {
    match style {
        AuthStyle::Bearer => 0,
        AuthStyle::XApiKey => 1,
        AuthStyle::XGoogApiKey => 2,
        AuthStyle::ApiKey => 3,
    }
}

fn style_from(b: u8) -> Option<AuthStyle> {
    Some(match b {
        0 => AuthStyle::Bearer,
        1 => AuthStyle::XApiKey,
        2 => AuthStyle::XGoogApiKey,
        3 => AuthStyle::ApiKey,
        _ => return None,
    })
}

/// What one attempt got: the provider's status (`None`: no answer, e.g. a
/// reset or a timeout) and, for a 429, its `Retry-After` in ms.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Outcome {
    pub status: Option<u16>,
    pub retry_hint_ms: Option<u64>,
}

/// The trail: one entry per attempt, comma-separated: `0` (no answer),
/// `200`, or `429/2000` (status and hint).
pub fn parse_trail(bytes: &[u8]) -> Vec<Outcome> {
    let Ok(text) = std::str::from_utf8(bytes) else { return Vec::new() };
    if text.is_empty() {
        return Vec::new();
    }
    text.split(',')
        .take(MAX_ATTEMPTS)
        .map(|entry| {
            let (status, hint) = entry.split_once('/').unwrap_or((entry, ""));
            Outcome { status: status.parse().ok().filter(|s| *s != 0), retry_hint_ms: hint.parse().ok() }
        })
        .collect()
}

pub fn encode_trail(trail: &[Outcome]) -> String {
    let entries: Vec<String> = trail
        .iter()
        .map(|o| match (o.status.unwrap_or(0), o.retry_hint_ms) {
            (s, Some(h)) => format!("{s}/{h}"),
            (s, None) => s.to_string(),
        })
        .collect();
    entries.join(",")
}

/// What the gate read of the body, and where the gate runs: its VM (a tag
/// random per worker) and context. The keygate filter files callouts for
/// the gate only when they share a VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tapped {
    pub vm: u64,
    pub gate: u32,
    pub facts: BodyFacts,
}

impl Tapped {
    /// `2|vm|gate|max_tokens|choices|flags|<fallbacks>|<kind><model>`: the
    /// model, the client's string, comes last and needs no escaping; the
    /// fallbacks are `-` (none), `x` (malformed), `c` (`models` but for
    /// case) or `l` and each name as `<byte length>:<name>`. Flags: 1 an access key
    /// in the body, 2 `"stream": true`, 4 a `stream_options`, 8 a limit that
    /// is not a count.
    pub fn encode(&self) -> String {
        let f = &self.facts;
        let max = f.max_tokens.map(|m| m.to_string()).unwrap_or_default();
        let (kind, model) = match &f.model {
            ModelField::Absent => ('a', ""),
            ModelField::Str(s) => ('s', s.as_str()),
            ModelField::NotString => ('n', ""),
            ModelField::Repeated => ('r', ""),
            ModelField::CaseVariant => ('c', ""),
            ModelField::InvalidJson => ('j', ""),
            ModelField::InvalidMultipart => ('m', ""),
        };
        let flags = u8::from(f.access_key)
            | u8::from(f.stream) << 1
            | u8::from(f.stream_options) << 2
            | u8::from(f.unclear_limit) << 3;
        let fallbacks = match &f.fallbacks {
            Fallbacks::None => "-".to_string(),
            Fallbacks::Malformed => "x".to_string(),
            Fallbacks::CaseVariant => "c".to_string(),
            Fallbacks::List(names) => {
                let mut out = String::from("l");
                for name in names {
                    out.push_str(&format!("{}:{name}", name.len()));
                }
                out
            }
        };
        format!("2|{:x}|{}|{max}|{}|{flags}|{fallbacks}|{kind}{model}", self.vm, self.gate, f.choices)
    }

    pub fn decode(bytes: &[u8]) -> Option<Tapped> {
        let text = std::str::from_utf8(bytes).ok()?;
        let mut parts = text.splitn(7, '|');
        let mut next = || parts.next();
        if next()? != "2" {
            return None;
        }
        let vm = u64::from_str_radix(next()?, 16).ok()?;
        let gate = next()?.parse().ok()?;
        let max_tokens = match next()? {
            "" => None,
            m => Some(m.parse().ok()?),
        };
        let choices = next()?.parse().ok()?;
        let flags: u8 = next()?.parse().ok().filter(|f| *f < 16)?;
        let (fallbacks, model) = decode_fallbacks(next()?)?;
        let mut chars = model.chars();
        let model = match chars.next()? {
            'a' => ModelField::Absent,
            's' => ModelField::Str(chars.as_str().to_string()),
            'n' => ModelField::NotString,
            'r' => ModelField::Repeated,
            'c' => ModelField::CaseVariant,
            'j' => ModelField::InvalidJson,
            'm' => ModelField::InvalidMultipart,
            _ => return None,
        };
        let facts = BodyFacts {
            model,
            max_tokens,
            choices,
            access_key: flags & 1 != 0,
            stream: flags & 2 != 0,
            stream_options: flags & 4 != 0,
            unclear_limit: flags & 8 != 0,
            fallbacks,
        };
        Some(Tapped { vm, gate, facts })
    }
}

/// The fallbacks at the start of `text`, and what follows their `|`.
fn decode_fallbacks(text: &str) -> Option<(Fallbacks, &str)> {
    let (kind, mut rest) = text.split_at_checked(1)?;
    let fallbacks = match kind {
        "-" => Fallbacks::None,
        "x" => Fallbacks::Malformed,
        "c" => Fallbacks::CaseVariant,
        "l" => {
            let mut names = Vec::new();
            while !rest.starts_with('|') {
                let (len, tail) = rest.split_once(':')?;
                let (name, tail) = tail.split_at_checked(len.parse().ok()?)?;
                names.push(name.to_string());
                rest = tail;
                if names.len() > crate::body::MAX_FALLBACKS {
                    return None;
                }
            }
            Fallbacks::List(names)
        }
        _ => return None,
    };
    Some((fallbacks, rest.strip_prefix('|')?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gate_tags_read_back_at_every_width() {
        for (vm, gate) in [(0, 0), (0x0123_4567_89ab_cdef, 21), (u64::MAX, u32::MAX)] {
            let tag = gate_tag(vm, gate);
            assert_eq!(tag.as_str(), format!("{vm:016x}.{gate}"));
            assert_eq!(parse_gate_tag(tag.as_bytes()), Some((vm, gate)));
        }
    }
    use proptest::prelude::*;

    /// A plan for `model` at `anthropic` with two credentials, falling back
    /// to `other` at another place with one.
    pub(crate) fn plan() -> Plan {
        let leg = |provider: &str, model: &str, authority: &str, keys: &[(&str, &str)]| Leg {
            provider: provider.into(),
            model: Some(model.into()),
            auth: AuthStyle::XApiKey,
            tls: true,
            authority: authority.into(),
            path: "/v1/messages".into(),
            keys: keys.iter().map(|(id, value)| Credential { id: (*id).into(), value: (*value).into() }).collect(),
        };
        Plan {
            hop: true,
            legs: vec![
                leg("anthropic", "claude", "api.example", &[("pk_a", "sk-ant-a"), ("pk_b", "sk|with,odd\u{e9}bytes")]),
                leg("other", "o|ther", "other.example:8443", &[("pk_c", "sk-c")]),
            ],
        }
    }

    #[test]
    fn a_sealed_plan_opens_for_its_request_under_the_same_credential() {
        let mut sealer = Sealer::new(SealKey::derive("gateway-secret"), [7; 16]);
        let sealed = sealer.seal("req-1", &plan()).unwrap();
        let key = SealKey::derive("gateway-secret");
        assert_eq!(open(&key, "req-1", &sealed), Some(plan()));
        assert_eq!(open(&SealKey::derive("another-secret"), "req-1", &sealed), None, "another key");
        assert_eq!(open(&key, "req-2", &sealed), None, "another request");
    }

    #[test]
    fn a_plan_goes_only_to_its_places() {
        let mut p = plan();
        assert!(p.goes_to("api.example") && p.goes_to("other.example:8443"), "through the hop: any leg's");
        assert!(!p.goes_to("evil.example") && !p.goes_to(""));
        p.hop = false;
        assert!(p.goes_to("api.example") && !p.goes_to("other.example:8443"), "without: the first leg's only");
    }

    #[test]
    fn attempts_walk_the_legs_in_order() {
        let p = plan();
        let at = |i| p.attempt(i).map(|(leg, _, k)| (leg, k.id.as_str()));
        assert_eq!([at(0), at(1), at(2), at(3)], [Some((0, "pk_a")), Some((0, "pk_b")), Some((1, "pk_c")), None]);
        assert_eq!(p.attempts(), 3);
    }

    #[test]
    fn sealed_plans_hide_their_secrets_and_never_repeat_a_nonce() {
        let mut sealer = Sealer::new(SealKey::derive("t"), [0; 16]);
        let a = sealer.seal("r", &plan()).unwrap();
        let b = sealer.seal("r", &plan()).unwrap();
        assert_ne!(a.get(1..25), b.get(1..25), "nonces differ");
        assert_ne!(a, b);
        for secret in ["sk-ant-a", "pk_a", "odd"] {
            assert!(!a.windows(secret.len()).any(|w| w == secret.as_bytes()), "{secret} in clear");
        }
    }

    #[test]
    fn a_tampered_plan_does_not_open() {
        let key = SealKey::derive("t");
        let sealed = Sealer::new(SealKey::derive("t"), [1; 16]).seal("r", &plan()).unwrap();
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x01;
            assert_eq!(open(&key, "r", &bad), None, "byte {i}");
        }
        assert_eq!(open(&key, "r", &sealed), Some(plan()));
        assert_eq!(open(&key, "r", &sealed[..sealed.len() - 1]), None);
        assert_eq!(open(&key, "r", b""), None);
        assert_eq!(open(&key, "r", &[2; 30]), None);
    }

    #[test]
    fn trails() {
        let t = parse_trail(b"429/2000,401,0,200");
        assert_eq!(
            t,
            vec![
                Outcome { status: Some(429), retry_hint_ms: Some(2000) },
                Outcome { status: Some(401), retry_hint_ms: None },
                Outcome { status: None, retry_hint_ms: None },
                Outcome { status: Some(200), retry_hint_ms: None },
            ]
        );
        assert_eq!(encode_trail(&t), "429/2000,401,0,200");
        assert!(parse_trail(b"").is_empty());
        assert_eq!(parse_trail(&[b'0', b','].repeat(1000)).len(), MAX_ATTEMPTS);
        assert_eq!(parse_trail(b"x/y"), vec![Outcome::default()], "garbage is an attempt without answer");
    }

    #[test]
    fn body_facts_round_trip() {
        for model in [
            ModelField::Absent,
            ModelField::Str("gpt|4o|x".into()),
            ModelField::Str(String::new()),
            ModelField::NotString,
            ModelField::Repeated,
            ModelField::CaseVariant,
            ModelField::InvalidJson,
            ModelField::InvalidMultipart,
        ] {
            let t = Tapped {
                vm: u64::MAX,
                gate: 42,
                facts: BodyFacts {
                    model,
                    max_tokens: Some(7),
                    choices: 3,
                    access_key: true,
                    stream: true,
                    stream_options: false,
                    unclear_limit: true,
                    fallbacks: Fallbacks::List(vec!["a|b".into(), "2:x".into(), String::new(), "é".into()]),
                },
            };
            assert_eq!(Tapped::decode(t.encode().as_bytes()), Some(t.clone()));
            let t = Tapped {
                facts: BodyFacts {
                    max_tokens: None,
                    access_key: false,
                    stream: false,
                    stream_options: true,
                    fallbacks: Fallbacks::None,
                    ..t.facts
                },
                ..t
            };
            assert_eq!(Tapped::decode(t.encode().as_bytes()), Some(t));
        }
        for fallbacks in [Fallbacks::Malformed, Fallbacks::CaseVariant, Fallbacks::List(vec![])] {
            let t = Tapped { vm: 1, gate: 2, facts: BodyFacts { fallbacks, ..BodyFacts::of(ModelField::Absent) } };
            assert_eq!(Tapped::decode(t.encode().as_bytes()), Some(t));
        }
        for bad in [
            "",
            "1|0|0||1|0|-|a",
            "2|zz|0||1|0|-|a",
            "2|0|0||1|16|-|a",
            "2|0|0||1|0|-|q",
            "2|0|0||1|0|-|",
            "2|0|0||1|0|a",
            "2|0|0||1|0|l5:ab|a",
            "2|0|0||1|0|l1:a1:b1:c1:d1:e1:f1:g1:h1:i|a",
            "2|0|0||1|0|l1:é|a",
        ] {
            assert_eq!(Tapped::decode(bad.as_bytes()), None, "{bad}");
        }
    }

    proptest! {
        #[test]
        fn opening_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = open(&SealKey::derive("t"), "r", &bytes);
            let _ = Plan::decode(&bytes);
            let _ = parse_trail(&bytes);
            let _ = Tapped::decode(&bytes);
        }

        #[test]
        fn plans_round_trip(
            hop in any::<bool>(),
            legs in proptest::collection::vec(
                (".{0,20}", proptest::option::of(".{0,20}"), any::<bool>(), ".{0,20}", ".{0,20}",
                 proptest::collection::vec((".{0,20}", ".{0,40}"), 0..4)),
                1..4,
            ),
        ) {
            let p = Plan {
                hop,
                legs: legs
                    .into_iter()
                    .map(|(provider, model, tls, authority, path, keys)| Leg {
                        provider,
                        model,
                        auth: AuthStyle::Bearer,
                        tls,
                        authority,
                        path,
                        keys: keys.into_iter().map(|(id, value)| Credential { id, value }).collect(),
                    })
                    .collect(),
            };
            prop_assert_eq!(Plan::decode(&p.encode()), Some(p));
        }
    }
}
