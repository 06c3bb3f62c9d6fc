//! Storage behind a trait, so that another backend can follow the SQLite one.
//! A backend holds statements and transactions only: it asks
//! [`crate::policy`] for every decision (and implements
//! [`crate::policy::ledger::Ledger`] for billing), so a second backend reuses
//! every rule.
//!
//! The trait is synchronous; the HTTP layer calls it from
//! `tokio::task::spawn_blocking`. Every mutation bumps the store-wide version
//! and records which token digests it may have changed (see [`Store::changes`]).

pub mod copy;
mod lookup;
mod migrations;
pub mod postgres;
mod rows;
pub mod sqlite;
mod update;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use keygate_proto::lookup::{
    AuthStyle, Changes, Format, LeaseRequest, LeaseResponse, Lookup, ReserveRequest, ReserveResponse, UsageRecord,
};

use crate::api::principal::Role;
use crate::crypto::Cipher;
use crate::error::StoreResult;
use crate::model::{
    AccessKey, AccessKeyConfiguration, AccessSpec, AlertDelivery, AlertWebhook, ApiKey, AuditEntry, BudgetSpec,
    Credits, PriceEntry, Provider, ProviderKey, RateLimitsSpec, RequestLimitsSpec, RouterSpec, SummaryRow, UsageItem,
};
use crate::policy::alerts::{AlertEvent, NextState};
pub use crate::policy::audit::Audit;
pub use crate::policy::sessions::{Expired as ExpiredSessions, SessionRow};

pub use postgres::{PgStore, PgTarget};
pub use sqlite::SqliteStore;

/// Tunables shared by the backends (tests shrink the change log).
#[derive(Debug, Clone)]
pub struct Options {
    /// Change-log entries kept; `changes(since)` older than that answers `all`.
    pub change_log_limit: i64,
}

impl Default for Options {
    fn default() -> Self {
        Options { change_log_limit: 10_000 }
    }
}

/// Where the store keeps its data: the embedded SQLite database (the
/// default), or PostgreSQL when `KEYGATE_DATABASE_URL` is set.
#[derive(Clone)]
pub enum Backend {
    /// A SQLite database file.
    Sqlite(PathBuf),
    /// A PostgreSQL database: its URL (`postgres://…`) and extra CA bundle.
    Postgres(PgTarget),
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Backend::Sqlite(p) => f.debug_tuple("Sqlite").field(p).finish(),
            // The URL may carry a password.
            Backend::Postgres(_) => f.write_str("Postgres(<url>)"),
        }
    }
}

impl Backend {
    /// PostgreSQL when `database_url` is given (trusting the CA bundle
    /// `database_ca` too), else `keygate.db` in `data_dir`.
    pub fn select(database_url: Option<&str>, database_ca: Option<&Path>, data_dir: &Path) -> Self {
        match database_url.map(str::trim).filter(|u| !u.is_empty()) {
            Some(url) => Backend::Postgres(PgTarget::new(url, database_ca.map(Path::to_path_buf))),
            None => Backend::Sqlite(data_dir.join("keygate.db")),
        }
    }

    /// Where the data is, for messages (a URL without its password).
    pub fn describe(&self) -> String {
        match self {
            Backend::Sqlite(p) => p.display().to_string(),
            Backend::Postgres(target) => match postgres::tls::parse_url(&target.url) {
                Ok(c) => format!(
                    "postgres database {} on {}",
                    c.get_dbname().unwrap_or("(default)"),
                    c.get_hosts()
                        .iter()
                        .map(|h| match h {
                            ::postgres::config::Host::Tcp(h) => h.clone(),
                            ::postgres::config::Host::Unix(p) => p.display().to_string(),
                        })
                        .collect::<Vec<_>>()
                        .join(",")
                ),
                Err(_) => "postgres database (unparsable URL)".into(),
            },
        }
    }

    /// Applies the pending schema migrations; returns the versions applied.
    pub fn migrate(&self) -> StoreResult<Vec<i64>> {
        match self {
            Backend::Sqlite(path) => sqlite::migrate(path),
            Backend::Postgres(target) => postgres::migrate(target),
        }
    }

    /// Opens the store (applying pending migrations first).
    pub fn open(&self, cipher: Cipher, opts: Options) -> StoreResult<Arc<dyn Store>> {
        Ok(match self {
            Backend::Sqlite(path) => Arc::new(SqliteStore::open_with(path, cipher, opts)?),
            Backend::Postgres(target) => Arc::new(PgStore::open_with(target, cipher, opts)?),
        })
    }
}

/// A page request: at most `limit` items with ids below `before_id`, newest first.
#[derive(Debug, Clone)]
pub struct PageRequest {
    pub limit: usize,
    pub before_id: Option<String>,
}

/// Filters of `GET /access-keys` (combined with the page).
#[derive(Debug, Clone, Default)]
pub struct AccessKeyFilter {
    /// Keys whose name starts with this, ASCII letters compared without
    /// regard to case (`q`). Served from an index on the folded name.
    pub name_prefix: Option<String>,
}

impl AccessKeyFilter {
    /// The folded names a prefix search covers: `lo <= name < hi` (no upper
    /// bound when `hi` is `None`). Names fold as the index folds them: ASCII
    /// letters to lower case, every other character as it is (SQLite's
    /// `lower()`, PostgreSQL's `lower()` under the "C" collation), and both
    /// compare folded names by code point (byte order of UTF-8).
    pub fn name_range(&self) -> Option<(String, Option<String>)> {
        let prefix = self.name_prefix.as_deref().filter(|p| !p.is_empty())?;
        let lo = prefix.to_ascii_lowercase();
        let mut hi: Vec<char> = lo.chars().collect();
        // The smallest string above every string that starts with `lo`:
        // `lo` with its last character raised by one (a character that is
        // already the largest is dropped and the one before it raised).
        let hi = loop {
            let Some(last) = hi.pop() else { break None };
            let next = match last {
                '\u{D7FF}' => Some('\u{E000}'),
                c => char::from_u32(u32::from(c) + 1),
            };
            if let Some(n) = next {
                hi.push(n);
                break Some(hi.into_iter().collect());
            }
        };
        Some((lo, hi))
    }
}

/// A new access key. The token itself never reaches the store: only its digest
/// and redacted form.
#[derive(Debug, Clone)]
pub struct NewAccessKey {
    pub name: String,
    pub description: String,
    pub metadata: String,
    pub config_id: Option<String>,
    /// Unix seconds.
    pub expires_at: Option<i64>,
    pub disabled: bool,
    pub digest: String,
    pub redacted: String,
    pub budget: Option<BudgetSpec>,
    /// The key's own concurrency cap (`None`: its configuration's).
    pub max_concurrent_requests: Option<u64>,
}

#[derive(Debug, Clone, Default)]
pub struct AccessKeyChanges {
    pub name: Option<String>,
    pub description: Option<String>,
    pub metadata: Option<String>,
    pub config_id: Option<Option<String>>,
    pub expires_at: Option<Option<i64>>,
    pub disabled: Option<bool>,
    pub budget: Option<Option<BudgetSpec>>,
    pub max_concurrent_requests: Option<Option<u64>>,
}

/// A new provider key; `value` is encrypted by the store. No `Debug`.
#[derive(Clone)]
pub struct NewProviderKey {
    pub provider_id: String,
    pub name: String,
    pub description: String,
    pub metadata: String,
    pub managed: bool,
    pub value: String,
}

#[derive(Debug, Clone, Default)]
pub struct ProviderKeyChanges {
    pub name: Option<String>,
    pub description: Option<String>,
    pub metadata: Option<String>,
    pub managed: Option<bool>,
}

#[derive(Debug, Clone)]
pub struct NewConfig {
    pub name: String,
    pub description: String,
    pub metadata: String,
    pub access: Option<AccessSpec>,
    pub router: Option<RouterSpec>,
    pub rate_limits: Option<RateLimitsSpec>,
    pub request_limits: Option<RequestLimitsSpec>,
    pub budget: Option<BudgetSpec>,
}

#[derive(Debug, Clone, Default)]
pub struct ConfigChanges {
    pub name: Option<String>,
    pub description: Option<String>,
    pub metadata: Option<String>,
    pub access: Option<Option<AccessSpec>>,
    pub router: Option<Option<RouterSpec>>,
    pub rate_limits: Option<Option<RateLimitsSpec>>,
    pub request_limits: Option<Option<RequestLimitsSpec>>,
    pub budget: Option<Option<BudgetSpec>>,
}

#[derive(Debug, Clone)]
pub struct NewProvider {
    pub id: String,
    pub name: String,
    pub base_url: String,
    pub format: Format,
    pub auth: AuthStyle,
    pub models: Vec<String>,
}

#[derive(Debug, Clone, Default)]
pub struct ProviderChanges {
    pub name: Option<String>,
    pub base_url: Option<String>,
    pub format: Option<Format>,
    pub auth: Option<AuthStyle>,
    pub models: Option<Vec<String>>,
}

/// A new management API key. Only the token's digest and its recognisable
/// prefix reach the store.
#[derive(Debug, Clone)]
pub struct NewApiKey {
    pub name: String,
    pub role: Role,
    pub digest: String,
    pub token_prefix: String,
}

#[derive(Debug, Clone, Default)]
pub struct ApiKeyChanges {
    pub name: Option<String>,
    pub role: Option<Role>,
}

/// The management key that holds a token, as authentication needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyAuth {
    pub id: String,
    pub name: String,
    pub role: Role,
    /// Unix ms of the last recorded use.
    pub last_used_ms: Option<i64>,
}

/// How stale `last_used_ms` of a management key may get: a key's use is
/// written at most once per this many milliseconds.
pub const API_KEY_TOUCH_MS: i64 = 60_000;

/// Filters of `/audit-log` (all optional, combined with AND).
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    /// Entries recorded at or after (unix ms).
    pub since_ms: Option<i64>,
    /// Entries recorded before (unix ms).
    pub until_ms: Option<i64>,
    pub actor: Option<String>,
    pub resource_id: Option<String>,
}

/// A price to store, micro-USD per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewPrice {
    pub input: i64,
    pub output: i64,
    pub cached: Option<i64>,
}

/// A new alert webhook; `secret` is encrypted by the store. No `Debug`.
#[derive(Clone)]
pub struct NewAlertWebhook {
    pub url: String,
    pub secret: String,
    pub config_id: Option<String>,
    pub thresholds: Vec<u8>,
    pub events: Vec<AlertEvent>,
    pub expiry_warning_days: u32,
    pub enabled: bool,
}

/// A PATCH of an alert webhook (`secret`: a new one). No `Debug`.
#[derive(Clone, Default)]
pub struct AlertWebhookChanges {
    pub url: Option<String>,
    pub secret: Option<String>,
    pub config_id: Option<Option<String>>,
    pub thresholds: Option<Vec<u8>>,
    pub events: Option<Vec<AlertEvent>>,
    pub expiry_warning_days: Option<u32>,
    pub enabled: Option<bool>,
}

/// A delivery claimed by one worker until `lease_until_ms` (its `lease` token
/// proves the claim when the attempt is recorded). Holds the webhook's secret
/// in clear: no `Debug`.
#[derive(Clone)]
pub struct ClaimedDelivery {
    pub id: String,
    pub webhook_id: String,
    pub event: String,
    pub url: String,
    pub secret: String,
    pub payload: String,
    /// Attempts made before this one.
    pub attempts: u32,
    pub lease: String,
}

/// What one attempt of a delivery found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptRecord {
    /// 1-based.
    pub attempt: u32,
    pub started_ms: i64,
    pub duration_ms: i64,
    /// The HTTP status, if the receiver answered.
    pub status: Option<u16>,
    /// Why it failed (never a secret), if it did.
    pub error: Option<String>,
}

/// Filters of `/usage` and `/usage/summary` (all optional, combined with AND).
#[derive(Debug, Clone, Default)]
pub struct UsageFilter {
    /// Records started at or after (unix ms).
    pub from_ms: Option<i64>,
    /// Records started before (unix ms).
    pub to_ms: Option<i64>,
    pub access_key_id: Option<String>,
    pub provider: Option<String>,
    pub model: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupBy {
    Key,
    Provider,
    Model,
    Day,
}

impl GroupBy {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "key" => Some(GroupBy::Key),
            "provider" => Some(GroupBy::Provider),
            "model" => Some(GroupBy::Model),
            "day" => Some(GroupBy::Day),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            GroupBy::Key => "key",
            GroupBy::Provider => "provider",
            GroupBy::Model => "model",
            GroupBy::Day => "day",
        }
    }
}

/// Store-wide gauges for `/metrics`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Gauges {
    pub access_keys: i64,
    pub version: i64,
}

/// The key store. Lists return up to `limit + 1` items so that the caller can
/// tell whether there is a next page.
///
/// Every management change takes the [`Audit`] entry that describes it and
/// records it in the change's own transaction: no change without its entry.
pub trait Store: Send + Sync + 'static {
    /// Cheap readiness check.
    fn ping(&self) -> StoreResult<()>;

    fn create_access_key(&self, new: &NewAccessKey, audit: &Audit) -> StoreResult<AccessKey>;
    fn list_access_keys(&self, page: &PageRequest, filter: &AccessKeyFilter) -> StoreResult<Vec<AccessKey>>;
    fn get_access_key(&self, id: &str) -> StoreResult<AccessKey>;
    fn update_access_key(&self, id: &str, changes: &AccessKeyChanges, audit: &Audit) -> StoreResult<AccessKey>;
    fn delete_access_key(&self, id: &str, audit: &Audit) -> StoreResult<()>;
    /// Installs a new token digest; the previous one keeps working for
    /// `grace_seconds` (replacing any earlier grace token).
    fn rotate_access_key(
        &self,
        id: &str,
        digest: &str,
        redacted: &str,
        grace_seconds: i64,
        audit: &Audit,
    ) -> StoreResult<AccessKey>;

    fn create_provider_key(&self, new: &NewProviderKey, audit: &Audit) -> StoreResult<ProviderKey>;
    fn list_provider_keys(&self, page: &PageRequest) -> StoreResult<Vec<ProviderKey>>;
    fn get_provider_key(&self, id: &str) -> StoreResult<ProviderKey>;
    fn update_provider_key(&self, id: &str, changes: &ProviderKeyChanges, audit: &Audit) -> StoreResult<ProviderKey>;
    fn delete_provider_key(&self, id: &str, audit: &Audit) -> StoreResult<()>;
    fn rotate_provider_key(&self, id: &str, value: &str, audit: &Audit) -> StoreResult<ProviderKey>;

    fn create_config(&self, new: &NewConfig, audit: &Audit) -> StoreResult<AccessKeyConfiguration>;
    fn list_configs(&self, page: &PageRequest) -> StoreResult<Vec<AccessKeyConfiguration>>;
    fn get_config(&self, id: &str) -> StoreResult<AccessKeyConfiguration>;
    fn update_config(&self, id: &str, changes: &ConfigChanges, audit: &Audit) -> StoreResult<AccessKeyConfiguration>;
    fn delete_config(&self, id: &str, audit: &Audit) -> StoreResult<()>;

    fn create_provider(&self, new: &NewProvider, audit: &Audit) -> StoreResult<Provider>;
    fn list_providers(&self) -> StoreResult<Vec<Provider>>;
    fn get_provider(&self, id: &str) -> StoreResult<Provider>;
    fn update_provider(&self, id: &str, changes: &ProviderChanges, audit: &Audit) -> StoreResult<Provider>;
    fn delete_provider(&self, id: &str, audit: &Audit) -> StoreResult<()>;

    /// The lookup document of a token digest (64 lowercase hex).
    fn lookup(&self, digest: &str) -> StoreResult<Lookup>;
    /// Digests whose lookup answer may have changed since version `since`.
    fn changes(&self, since: u64) -> StoreResult<Changes>;

    /// Checks every budget that applies and, if all can cover the estimate,
    /// holds it in one transaction. Releases expired reservations first.
    fn reserve(&self, req: &ReserveRequest) -> StoreResult<ReserveResponse>;
    /// Grants a share of an access key's rate-limit window to one Envoy,
    /// never past the key's limits (`policy::leases`).
    fn lease(&self, _req: &LeaseRequest) -> StoreResult<LeaseResponse> {
        Err(crate::error::StoreError::Internal("rate-limit leases are not available on this backend".into()))
    }
    /// Stores usage records (duplicates of (requestId, attempt) ignored) and
    /// settles the reservations they quote. Returns how many were new.
    fn ingest_usage(&self, records: &[UsageRecord]) -> StoreResult<usize>;
    /// Releases reservations past their expiry; returns how many.
    fn sweep_reservations(&self) -> StoreResult<usize>;
    /// Deletes at most `limit` usage records that started before
    /// `started_before_ms` and whose request has no reservation left (see
    /// `policy::retention`), in one transaction; returns how many.
    fn purge_usage(&self, started_before_ms: i64, limit: usize) -> StoreResult<usize>;
    fn list_usage(&self, filter: &UsageFilter, page: &PageRequest) -> StoreResult<Vec<UsageItem>>;
    fn usage_summary(&self, filter: &UsageFilter, group_by: GroupBy) -> StoreResult<Vec<SummaryRow>>;

    fn get_credits(&self) -> StoreResult<Credits>;
    /// Adds (or, negative, removes) micro-USD; the first grant ever enables credits.
    fn add_credits(&self, micros: i64, audit: &Audit) -> StoreResult<Credits>;
    fn set_credits_enabled(&self, enabled: bool, audit: &Audit) -> StoreResult<Credits>;

    fn list_prices(&self) -> StoreResult<Vec<PriceEntry>>;
    fn put_price(&self, provider: &str, model: &str, price: &NewPrice, audit: &Audit) -> StoreResult<PriceEntry>;
    fn delete_price(&self, provider: &str, model: &str, audit: &Audit) -> StoreResult<()>;

    fn gauges(&self) -> StoreResult<Gauges>;

    // Alert webhooks (`policy::alerts`). Deliveries are queued by
    // `ingest_usage` (budgets, credits) and `sweep_alerts` (key expiry).
    fn create_alert_webhook(&self, new: &NewAlertWebhook, audit: &Audit) -> StoreResult<AlertWebhook>;
    fn list_alert_webhooks(&self, page: &PageRequest) -> StoreResult<Vec<AlertWebhook>>;
    fn get_alert_webhook(&self, id: &str) -> StoreResult<AlertWebhook>;
    fn update_alert_webhook(&self, id: &str, changes: &AlertWebhookChanges, audit: &Audit)
        -> StoreResult<AlertWebhook>;
    /// Deletes the webhook with its deliveries and marks.
    fn delete_alert_webhook(&self, id: &str, audit: &Audit) -> StoreResult<()>;
    /// A webhook's deliveries, newest first, with their attempts.
    fn list_alert_deliveries(&self, webhook_id: &str, page: &PageRequest) -> StoreResult<Vec<AlertDelivery>>;
    /// Queues the key-expiry alerts due and forgets old marks and finished
    /// deliveries; returns how many deliveries it queued.
    fn sweep_alerts(&self) -> StoreResult<usize>;
    /// When the next pending delivery (of an enabled webhook) may be claimed.
    fn next_alert_due(&self) -> StoreResult<Option<i64>>;
    /// Claims up to `limit` due deliveries for `lease_ms`: no other worker
    /// (of this or another replica) claims them until then.
    fn claim_alert_deliveries(&self, lease_ms: i64, limit: usize) -> StoreResult<Vec<ClaimedDelivery>>;
    /// Records an attempt of a claimed delivery and moves it to `next`;
    /// `false` (nothing written) when the claim was lost meanwhile.
    fn finish_alert_attempt(&self, d: &ClaimedDelivery, attempt: &AttemptRecord, next: NextState) -> StoreResult<bool>;

    fn create_api_key(&self, new: &NewApiKey, audit: &Audit) -> StoreResult<ApiKey>;
    fn list_api_keys(&self, page: &PageRequest) -> StoreResult<Vec<ApiKey>>;
    fn get_api_key(&self, id: &str) -> StoreResult<ApiKey>;
    fn update_api_key(&self, id: &str, changes: &ApiKeyChanges, audit: &Audit) -> StoreResult<ApiKey>;
    fn delete_api_key(&self, id: &str, audit: &Audit) -> StoreResult<()>;
    /// Replaces the token digest: the old token stops working when this commits.
    fn rotate_api_key(&self, id: &str, digest: &str, token_prefix: &str, audit: &Audit) -> StoreResult<ApiKey>;
    /// The management key whose token has this digest (read afresh on every
    /// call: nothing is cached).
    fn api_key_by_digest(&self, digest: &str) -> StoreResult<Option<ApiKeyAuth>>;
    /// Records a use of management key `id` at `now_ms`, unless one within
    /// [`API_KEY_TOUCH_MS`] is already recorded.
    fn touch_api_key(&self, id: &str, now_ms: i64) -> StoreResult<()>;

    /// Records an entry that goes with no stored change (a console sign-in).
    fn record_audit(&self, audit: &Audit) -> StoreResult<()>;
    /// Audit-log entries, newest first.
    fn list_audit(&self, filter: &AuditFilter, page: &PageRequest) -> StoreResult<Vec<AuditEntry>>;
    /// Deletes at most `limit` audit-log entries recorded before `before_ms`,
    /// oldest first, in one transaction; returns how many.
    fn purge_audit(&self, before_ms: i64, limit: usize) -> StoreResult<usize>;

    // Console sessions (`console_sessions`, migration 9; the rules are in
    // `policy::sessions`). Not copied by `keygate copy`: a copy starts with
    // everyone signed out.
    /// Stores a new session.
    fn create_console_session(&self, session: &SessionRow) -> StoreResult<()>;
    /// The session with this id, open or not ([`SessionRow::live`] decides).
    fn console_session(&self, id: &str) -> StoreResult<Option<SessionRow>>;
    /// Records a use at `now_ms`, unless one after `touch_before_ms` is
    /// recorded already (a conditional update: several replicas do not
    /// write more often either).
    fn touch_console_session(&self, id: &str, now_ms: i64, touch_before_ms: i64) -> StoreResult<()>;
    /// Deletes a session (sign-out); whether there was one.
    fn delete_console_session(&self, id: &str) -> StoreResult<bool>;
    /// Makes `nonce` the session's pending reveal (a token or secret on its
    /// way to the one page that shows it), replacing any earlier one;
    /// `false` when there is no such session.
    fn set_console_reveal(&self, id: &str, nonce: &str) -> StoreResult<bool>;
    /// Takes the session's pending reveal if it is `nonce`: `true` once, and
    /// `false` ever after (one statement: of two requests at once, one wins).
    fn take_console_reveal(&self, id: &str, nonce: &str) -> StoreResult<bool>;
    /// Deletes the sessions past their absolute or idle expiry; how many.
    fn purge_console_sessions(&self, expired: ExpiredSessions) -> StoreResult<usize>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(p: &str) -> Option<(String, Option<String>)> {
        AccessKeyFilter { name_prefix: Some(p.into()) }.name_range()
    }

    #[test]
    fn a_name_prefix_covers_a_range_of_folded_names() {
        assert_eq!(range(""), None);
        assert_eq!(AccessKeyFilter::default().name_range(), None);
        assert_eq!(range("Web"), Some(("web".into(), Some("wec".into()))));
        assert_eq!(range("a\u{D7FF}"), Some(("a\u{D7FF}".into(), Some("a\u{E000}".into()))));
        assert_eq!(range("a\u{10FFFF}"), Some(("a\u{10FFFF}".into(), Some("b".into()))));
        assert_eq!(range("\u{10FFFF}"), Some(("\u{10FFFF}".into(), None)));
        // Only ASCII letters fold, as the indexes fold them.
        assert_eq!(range("É"), Some(("É".into(), Some("Ê".into()))));
    }
}
