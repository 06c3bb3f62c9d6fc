//! The lookup document: everything the filter needs about one token, in one
//! small JSON answer from the store's gateway listener.
//!
//! `GET /v1/lookup/{sha256-hex of token}` with `authorization: Bearer <gateway token>`
//! answers 200 with a [`Lookup`] for every well-formed digest, known or not, so
//! that the filter can cache negative answers exactly like positive ones.
//!
//! `GET /v1/changes?since=N` answers a [`Changes`]: the digests whose answer may
//! have changed since store version N (or `all: true`).

use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Schema version of these documents; bumped on incompatible change.
pub const SCHEMA: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyStatus {
    Active,
    Disabled,
    Expired,
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Lookup {
    /// Schema version ([`SCHEMA`]).
    pub schema: u32,
    /// Store-wide change counter at the time of the answer.
    pub version: u64,
    pub status: KeyStatus,
    /// Present when the key exists (whatever its status).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<KeyInfo>,
    /// Scope. Present only for `active` keys. (`Arc`: many keys share one
    /// configuration, and the filter's cache shares it between their entries.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access: Option<Arc<Access>>,
    /// One entry per provider the key may reach (allowed by `access.providers`),
    /// with credentials in routing order. Present only for `active` keys.
    #[serde(default, skip_serializing_if = "no_providers")]
    pub providers: Arc<Vec<ProviderPlan>>,
    /// Per-key rate limits from the key's configuration (active keys only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<Limits>,
    /// What one request may ask for and how long it may take (active keys only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_limits: Option<RequestLimits>,
    /// A budget or the gateway-wide credit balance applies to this key: every
    /// request must reserve before it goes upstream (`POST /v1/reserve`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub budgeted: bool,
}

fn no_providers(p: &Arc<Vec<ProviderPlan>>) -> bool {
    p.is_empty()
}

/// Rate limits per access key, enforced by each Envoy across its workers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Limits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_minute: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_minute: Option<u64>,
}

/// Per-request limits from the key's configuration (the concurrency cap: the
/// key's own when it has one), enforced by the filter.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestLimits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_input_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_output_tokens: Option<u64>,
    /// Requests in flight at once, per Envoy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent_requests: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt_timeout_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_timeout_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyInfo {
    pub id: String,
    #[serde(default)]
    pub config_id: Option<String>,
    /// Unix seconds after which this token stops working (key expiry or the end
    /// of a rotation grace period, whichever is first).
    #[serde(default)]
    pub valid_until: Option<i64>,
}

/// Allow-lists. `None` = allow all on that dimension; `Some([])` = allow none.
/// Model entries are provider-qualified (`openai/gpt-4o`) and may end in `*`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Access {
    #[serde(default)]
    pub providers: Option<Vec<String>>,
    #[serde(default)]
    pub models: Option<Vec<String>>,
    /// Provider-account endpoints the key may use ([`crate::endpoints`]).
    /// Unlike the other dimensions, `None` allows none of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoints: Option<Vec<String>>,
    /// Client addresses the key may be used from ([`crate::cidr`]); `None`:
    /// any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ips: Option<Vec<String>>,
}

/// Wire format of a provider's API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Openai,
    Anthropic,
}

/// How the provider expects its credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AuthStyle {
    /// `Authorization: Bearer <key>` (OpenAI and compatible).
    Bearer,
    /// `x-api-key: <key>` plus a default `anthropic-version`.
    XApiKey,
    /// `x-goog-api-key: <key>` (Google's native API).
    XGoogApiKey,
    /// `api-key: <key>` (Azure OpenAI).
    ApiKey,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProviderPlan {
    /// Provider id, e.g. `openai`, or a custom provider's id.
    pub id: String,
    pub format: Format,
    pub auth: AuthStyle,
    /// `http(s)://host[:port][/path]`; the path is the API root, the one that
    /// the client's `/v1` maps onto.
    pub base_url: String,
    /// Bare-model patterns this provider serves (`gpt-*`), used to resolve an
    /// unqualified model. May be empty.
    #[serde(default)]
    pub models: Vec<String>,
    /// Routes, most specific first: a route with `model` applies to that
    /// (provider-local) model name or pattern; the route without `model` is the
    /// provider default. Each route lists credentials in failover order.
    #[serde(default)]
    pub routes: Vec<Route>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Route {
    #[serde(default)]
    pub model: Option<String>,
    pub keys: Vec<Credential>,
}

#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Credential {
    /// Provider key id (`pk_…`): safe to log and to return to clients.
    pub id: String,
    /// The decrypted secret. Never logged: `Debug` hides it.
    pub value: String,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential").field("id", &self.id).field("value", &"<redacted>").finish()
    }
}

/// `POST /v1/lease`: a share of an access key's rate-limit window for one
/// Envoy. The store counts what it has granted per key and window for the
/// whole fleet and never grants past the key's limits, so the fleet never
/// admits more than the limit; what an Envoy leased but did not use is the
/// most the fleet can under-admit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LeaseRequest {
    pub access_key_id: String,
    /// The window length (the filter's `rateLimitWindowMs`); windows are
    /// aligned to the store's clock: `start = now - now % windowMs`.
    pub window_ms: u64,
    /// What the Envoy asks for: requests and tokens (0: that dimension has
    /// no limit, or none is needed).
    pub requests: u64,
    pub tokens: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LeaseResponse {
    pub window_start_ms: u64,
    /// Milliseconds until the window ends (by the store's clock).
    pub reset_ms: u64,
    /// What was granted (at most what was asked, and what is left).
    pub requests: u64,
    pub tokens: u64,
    /// What is left for the fleet in this window after this grant.
    pub remaining_requests: u64,
    pub remaining_tokens: u64,
}

/// `POST /v1/reserve`: hold an estimate against every budget that applies
/// before the request goes upstream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReserveRequest {
    pub request_id: String,
    pub access_key_id: String,
    #[serde(default)]
    pub config_id: Option<String>,
    pub provider: String,
    /// The provider's own model name, if the request names one.
    #[serde(default)]
    pub model: Option<String>,
    /// Upper estimates: prompt tokens from the body size, output from `max_tokens`.
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// The request's fallback models (`models`), in order: the estimate is
    /// priced at the dearest of them and the model (a fallback may serve).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fallbacks: Vec<ModelRef>,
}

/// A model at a provider (the provider's own model name).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ModelRef {
    pub provider: String,
    #[serde(default)]
    pub model: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReserveResponse {
    pub ok: bool,
    /// Present when `ok`: quote it when the usage is reported, to settle.
    #[serde(default)]
    pub reservation_id: Option<String>,
    /// When refused: which budget refused.
    #[serde(default)]
    pub refused_by: Option<RefusedBy>,
    #[serde(default)]
    pub message: Option<String>,
}

/// Which budget refused a reservation (`refusedBy` on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RefusedBy {
    /// The access key's own budget (or the key is unknown).
    Key,
    /// The budget of the key's configuration.
    Configuration,
    /// The gateway's credit balance.
    Credits,
    /// A reason a newer store sends that this side does not know yet.
    #[serde(other)]
    Other,
}

impl RefusedBy {
    /// The name on the wire and in the store's metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            RefusedBy::Key => "key",
            RefusedBy::Configuration => "configuration",
            RefusedBy::Credits => "credits",
            RefusedBy::Other => "other",
        }
    }
}

/// `POST /v1/usage`: what the gateway observed, in batches. Idempotent per
/// (requestId, attempt), so a batch may be sent again after a failure.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UsageBatch {
    pub records: Vec<UsageRecord>,
}

/// One upstream attempt (or, with `attempt` 0, a request refused before any).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UsageRecord {
    pub request_id: String,
    pub access_key_id: String,
    #[serde(default)]
    pub config_id: Option<String>,
    pub provider: String,
    /// The model as served (the provider's name).
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub provider_key_id: Option<String>,
    pub attempt: u32,
    /// The attempt whose answer went to the client.
    pub final_attempt: bool,
    /// Upstream status; 0 when no response came (connection failure, timeout).
    pub status: u16,
    pub streaming: bool,
    pub input_tokens: u64,
    pub output_tokens: u64,
    #[serde(default)]
    pub cached_tokens: u64,
    #[serde(default)]
    pub reasoning_tokens: u64,
    pub started_ms: u64,
    pub ended_ms: u64,
    /// On the final record: the reservation this request settles (released
    /// and replaced by the real cost).
    #[serde(default)]
    pub reservation_id: Option<String>,
    /// The tokens are keygate's estimate: no usage came from the provider
    /// (a stream cut short, the client gone, an answer without `usage`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub estimated: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Changes {
    /// The store's current version; ask again with `since` = this.
    pub version: u64,
    /// Every cached answer fetched before store version `allAt` may be stale
    /// (a provider or provider-key change, or `since` older than the store's
    /// change log). Answers fetched at `allAt` or later already reflect it.
    #[serde(default)]
    pub all: bool,
    #[serde(default)]
    pub all_at: u64,
    /// Token digests whose answer may have changed.
    #[serde(default)]
    pub digests: Vec<String>,
    /// For each of `digests`, the store version of its latest change: a cached
    /// answer fetched at that version or later is still current.
    #[serde(default)]
    pub digest_versions: Vec<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_key_document_is_tiny() {
        let doc = Lookup {
            schema: SCHEMA,
            version: 7,
            status: KeyStatus::Unknown,
            key: None,
            access: None,
            providers: Arc::default(),
            limits: None,
            request_limits: None,
            budgeted: false,
        };
        let json = serde_json::to_string(&doc).unwrap();
        assert_eq!(json, r#"{"schema":1,"version":7,"status":"unknown"}"#);
        assert_eq!(serde_json::from_str::<Lookup>(&json).unwrap(), doc);
    }

    #[test]
    fn credential_debug_hides_the_value() {
        let c = Credential { id: "pk_1".into(), value: "sk-secret".into() };
        let shown = format!("{c:?}");
        assert!(shown.contains("pk_1") && !shown.contains("sk-secret"));
    }

    #[test]
    fn active_document_round_trips() {
        let json = r#"{"schema":1,"version":3,"status":"active",
          "key":{"id":"ak_1","configId":null,"validUntil":null},
          "access":{"providers":["openai"],"models":null},
          "providers":[{"id":"openai","format":"openai","auth":"bearer",
            "baseUrl":"https://api.openai.com/v1","models":["gpt-*"],
            "routes":[{"model":null,"keys":[{"id":"pk_1","value":"sk-x"}]}]}]}"#;
        let doc: Lookup = serde_json::from_str(json).unwrap();
        assert_eq!(doc.providers[0].auth, AuthStyle::Bearer);
        assert_eq!(doc.access.unwrap().models, None);
    }
}
