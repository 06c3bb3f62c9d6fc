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

use crate::body::BodyFacts;
use crate::decide::ModelField;

/// Names under which each is set (`set_property`), and where each is read
/// back (Envoy keeps a wasm property as filter state `wasm.<name>`).
pub const PLAN: &str = "keygate_plan";
pub const PLAN_STATE: [&str; 2] = ["filter_state", "wasm.keygate_plan"];
pub const TRAIL: &str = "keygate_attempts";
pub const TRAIL_STATE: [&str; 2] = ["filter_state", "wasm.keygate_attempts"];
pub const BODY: &str = "keygate_body";
pub const BODY_STATE: [&str; 2] = ["filter_state", "wasm.keygate_body"];

/// The format of a sealed plan (its first byte).
const SEALED_V1: u8 = 1;
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

    /// The sealed plan (`auth`, `keys`) of request `request_id` to `authority`.
    pub fn seal(&mut self, request_id: &str, authority: &str, auth: AuthStyle, keys: &[Credential]) -> Option<Vec<u8>> {
        let mut nonce = [0u8; NONCE_LEN];
        nonce[..16].copy_from_slice(&self.prefix);
        nonce[16..].copy_from_slice(&self.counter.to_le_bytes());
        self.counter = self.counter.wrapping_add(1);
        let payload = Payload { msg: &encode_plan(auth, keys), aad: &binding(request_id, authority) };
        let sealed = self.key.0.encrypt(XNonce::from_slice(&nonce), payload).ok()?;
        let mut out = Vec::with_capacity(1 + NONCE_LEN + sealed.len());
        out.push(SEALED_V1);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Some(out)
    }
}

/// What a plan is bound to (the associated data). A newline separates
/// them: Envoy refuses one inside a header value.
fn binding(request_id: &str, authority: &str) -> Vec<u8> {
    [request_id.as_bytes(), b"\n", authority.as_bytes()].concat()
}

/// Opens a plan sealed for request `request_id` to `authority` (`None`: not
/// one, not for this request or place, or not under this key).
pub fn open(key: &SealKey, request_id: &str, authority: &str, sealed: &[u8]) -> Option<Plan> {
    let (&version, rest) = sealed.split_first()?;
    if version != SEALED_V1 || rest.len() < NONCE_LEN {
        return None;
    }
    let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
    let payload = Payload { msg: ciphertext, aad: &binding(request_id, authority) };
    let plain = key.0.decrypt(XNonce::from_slice(nonce), payload).ok()?;
    Plan::decode(&plain)
}

/// The candidate credentials of a request, in the order attempts use them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub auth: AuthStyle,
    pub keys: Vec<Credential>,
}

/// Style byte, then each key's id and value, each with a u16 length.
fn encode_plan(auth: AuthStyle, keys: &[Credential]) -> Vec<u8> {
    let mut out = vec![style_byte(auth)];
    for k in keys {
        for field in [k.id.as_bytes(), k.value.as_bytes()] {
            let len = field.len().min(usize::from(u16::MAX));
            out.extend_from_slice(&(len as u16).to_le_bytes());
            out.extend_from_slice(field.get(..len).unwrap_or_default());
        }
    }
    out
}

impl Plan {
    fn decode(bytes: &[u8]) -> Option<Plan> {
        let (&style, mut rest) = bytes.split_first()?;
        let mut field = || -> Option<String> {
            let (len, tail) = rest.split_first_chunk::<2>()?;
            let (value, tail) = tail.split_at_checked(usize::from(u16::from_le_bytes(*len)))?;
            rest = tail;
            String::from_utf8(value.to_vec()).ok()
        };
        let mut keys = Vec::new();
        while let Some(id) = field() {
            keys.push(Credential { id, value: field()? });
        }
        rest.is_empty().then_some(Plan { auth: style_from(style)?, keys })
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
    /// `1|vm|gate|max_tokens|choices|flags|<kind><model>`: the model, the
    /// client's string, comes last and needs no escaping. Flags: 1 an access
    /// key in the body, 2 `"stream": true`, 4 a `stream_options`, 8 a limit
    /// that is not a count.
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
        format!("1|{:x}|{}|{max}|{}|{flags}|{kind}{model}", self.vm, self.gate, f.choices)
    }

    pub fn decode(bytes: &[u8]) -> Option<Tapped> {
        let text = std::str::from_utf8(bytes).ok()?;
        let mut parts = text.splitn(7, '|');
        let mut next = || parts.next();
        if next()? != "1" {
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
        let model = next()?;
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
        };
        Some(Tapped { vm, gate, facts })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn plan() -> Plan {
        Plan {
            auth: AuthStyle::XApiKey,
            keys: vec![
                Credential { id: "pk_a".into(), value: "sk-ant-a".into() },
                Credential { id: "pk_b".into(), value: "sk|with,odd\u{e9}bytes".into() },
            ],
        }
    }

    #[test]
    fn a_sealed_plan_opens_for_its_request_under_the_same_credential() {
        let mut sealer = Sealer::new(SealKey::derive("gateway-secret"), [7; 16]);
        let sealed = {
            let p = plan();
            sealer.seal("req-1", "api.example", p.auth, &p.keys)
        }
        .unwrap();
        let key = SealKey::derive("gateway-secret");
        assert_eq!(open(&key, "req-1", "api.example", &sealed), Some(plan()));
        assert_eq!(open(&SealKey::derive("another-secret"), "req-1", "api.example", &sealed), None, "another key");
        assert_eq!(open(&key, "req-2", "api.example", &sealed), None, "another request");
        assert_eq!(open(&key, "req-1", "evil.example", &sealed), None, "another place");
        assert_eq!(open(&key, "req-1\napi", ".example", &sealed), None, "the parts cannot shift");
    }

    #[test]
    fn sealed_plans_hide_their_secrets_and_never_repeat_a_nonce() {
        let mut sealer = Sealer::new(SealKey::derive("t"), [0; 16]);
        let a = {
            let p = plan();
            sealer.seal("r", "a", p.auth, &p.keys)
        }
        .unwrap();
        let b = {
            let p = plan();
            sealer.seal("r", "a", p.auth, &p.keys)
        }
        .unwrap();
        assert_ne!(a.get(1..25), b.get(1..25), "nonces differ");
        assert_ne!(a, b);
        for secret in ["sk-ant-a", "pk_a", "odd"] {
            assert!(!a.windows(secret.len()).any(|w| w == secret.as_bytes()), "{secret} in clear");
        }
    }

    #[test]
    fn a_tampered_plan_does_not_open() {
        let key = SealKey::derive("t");
        let sealed = Sealer::new(SealKey::derive("t"), [1; 16]).seal("r", "a", plan().auth, &plan().keys).unwrap();
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x01;
            assert_eq!(open(&key, "r", "a", &bad), None, "byte {i}");
        }
        assert_eq!(open(&key, "r", "a", &sealed), Some(plan()));
        assert_eq!(open(&key, "r", "a", &sealed[..sealed.len() - 1]), None);
        assert_eq!(open(&key, "r", "a", b""), None);
        assert_eq!(open(&key, "r", "a", &[1; 30]), None);
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
                },
            };
            assert_eq!(Tapped::decode(t.encode().as_bytes()), Some(t.clone()));
            let t = Tapped {
                facts: BodyFacts {
                    max_tokens: None,
                    access_key: false,
                    stream: false,
                    stream_options: true,
                    ..t.facts
                },
                ..t
            };
            assert_eq!(Tapped::decode(t.encode().as_bytes()), Some(t));
        }
        for bad in ["", "2|0|0||1|0|a", "1|zz|0||1|0|a", "1|0|0||1|16|a", "1|0|0||1|0|q", "1|0|0||1|0|"] {
            assert_eq!(Tapped::decode(bad.as_bytes()), None, "{bad}");
        }
    }

    proptest! {
        #[test]
        fn opening_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = open(&SealKey::derive("t"), "r", "a", &bytes);
            let _ = Plan::decode(&bytes);
            let _ = parse_trail(&bytes);
            let _ = Tapped::decode(&bytes);
        }

        #[test]
        fn plans_round_trip(ids in proptest::collection::vec((".{0,20}", ".{0,40}"), 0..6)) {
            let p = Plan {
                auth: AuthStyle::Bearer,
                keys: ids.into_iter().map(|(id, value)| Credential { id, value }).collect(),
            };
            prop_assert_eq!(Plan::decode(&encode_plan(p.auth, &p.keys)), Some(p));
        }
    }
}
