//! The gateway's lookup document, assembled the same way on every backend
//! from the rows a [`LookupSource`] reads in one read transaction.

use std::sync::Arc;

use keygate_proto::lookup::{KeyInfo, KeyStatus, Lookup, RequestLimits, SCHEMA};

use super::rows::{count_opt, json_opt, parse_enum, Cells};
use crate::crypto::Cipher;
use crate::error::StoreError;
use crate::model::{AccessSpec, RateLimitsSpec, RequestLimitsSpec, RouterSpec};
use crate::plan::{self, KeyRow, ProviderRow};
use crate::policy::budget;
use crate::policy::key_status::{self, KeyFacts};

/// The access key a digest names.
#[derive(Debug)]
pub(crate) struct KeyHit {
    pub id: String,
    pub config_id: Option<String>,
    pub expires_at: Option<i64>,
    pub disabled: bool,
    pub prev_until: Option<i64>,
    pub budget_json: Option<String>,
    /// The key's own concurrency cap, over its configuration's.
    pub max_concurrent_requests: Option<i64>,
}

/// Columns of [`key_hit`]; the backend adds `WHERE digest = ?` or `WHERE prev_digest = ?`.
pub(crate) const KEY_HIT_COLS: &str =
    "id, config_id, expires_at, disabled, prev_until, budget_json, max_concurrent_requests FROM access_keys";

pub(crate) fn key_hit<C: Cells>(r: &C) -> Result<KeyHit, C::Error> {
    Ok(KeyHit {
        id: r.text(0)?,
        config_id: r.opt_text(1)?,
        expires_at: r.opt_int(2)?,
        disabled: r.flag(3)?,
        prev_until: r.opt_int(4)?,
        budget_json: r.opt_text(5)?,
        max_concurrent_requests: r.opt_int(6)?,
    })
}

/// The JSON columns of a configuration that a lookup needs.
#[derive(Debug, Default)]
pub(crate) struct ConfigHit {
    pub access: Option<String>,
    pub router: Option<String>,
    pub rate_limits: Option<String>,
    pub budget: Option<String>,
    pub request_limits: Option<String>,
}

/// Columns of [`config_hit`]; the backend adds `WHERE id = ?`.
pub(crate) const CONFIG_HIT_COLS: &str =
    "access_json, router_json, rate_limits_json, budget_json, request_limits_json FROM configs";

pub(crate) fn config_hit<C: Cells>(r: &C) -> Result<ConfigHit, C::Error> {
    Ok(ConfigHit {
        access: r.opt_text(0)?,
        router: r.opt_text(1)?,
        rate_limits: r.opt_text(2)?,
        budget: r.opt_text(3)?,
        request_limits: r.opt_text(4)?,
    })
}

/// Every provider, in storage order.
pub(crate) const PROVIDER_ROWS_SQL: &str = "SELECT id, format, auth, base_url, models_json FROM providers ORDER BY seq";

pub(crate) fn provider_row<C: Cells>(r: &C) -> Result<ProviderRow, C::Error> {
    Ok(ProviderRow {
        id: r.text(0)?,
        format: parse_enum(r.text(1)?)?,
        auth: parse_enum(r.text(2)?)?,
        base_url: r.text(3)?,
        models: serde_json::from_str(&r.text(4)?)?,
    })
}

/// Every provider key (without its value), by id.
pub(crate) const KEY_ROWS_SQL: &str = "SELECT id, provider_id, managed FROM provider_keys ORDER BY id";

pub(crate) fn key_row<C: Cells>(r: &C) -> Result<KeyRow, C::Error> {
    Ok(KeyRow { id: r.text(0)?, provider_id: r.text(1)?, managed: r.flag(2)? })
}

/// The reads of one lookup, inside one read transaction.
pub(crate) trait LookupSource {
    type Error: From<StoreError> + From<serde_json::Error>;
    fn version(&mut self) -> Result<i64, Self::Error>;
    /// The key whose current digest (or, `grace`, whose previous digest) is `digest`.
    fn key(&mut self, digest: &str, grace: bool) -> Result<Option<KeyHit>, Self::Error>;
    fn config(&mut self, id: &str) -> Result<ConfigHit, Self::Error>;
    fn credits_enabled(&mut self) -> Result<bool, Self::Error>;
    fn providers(&mut self) -> Result<Vec<ProviderRow>, Self::Error>;
    fn provider_keys(&mut self) -> Result<Vec<KeyRow>, Self::Error>;
    /// The sealed value of a provider key.
    fn secret(&mut self, key_id: &str) -> Result<Option<Vec<u8>>, Self::Error>;
}

/// The request limits the gateway enforces for a key: its configuration's,
/// with the key's own concurrency cap, when it has one, in place of the
/// configuration's (limits of their own even when the configuration has none).
pub(crate) fn request_limits(config: Option<RequestLimitsSpec>, key_cap: Option<u64>) -> Option<RequestLimits> {
    let mut limits = config.map(|r| RequestLimits {
        max_input_tokens: r.max_input_tokens,
        max_output_tokens: r.max_output_tokens,
        max_concurrent_requests: r.max_concurrent_requests,
        attempt_timeout_ms: r.attempt_timeout_ms,
        total_timeout_ms: r.total_timeout_ms,
    });
    if let Some(cap) = key_cap {
        limits.get_or_insert_with(RequestLimits::default).max_concurrent_requests = Some(cap);
    }
    limits
}

/// The lookup document of a token digest at `now_secs`.
pub(crate) fn lookup<S: LookupSource>(
    s: &mut S,
    digest: &str,
    cipher: &Cipher,
    now_secs: i64,
) -> Result<Lookup, S::Error> {
    let mut doc = Lookup {
        schema: SCHEMA,
        version: u64::try_from(s.version()?).unwrap_or(0),
        status: KeyStatus::Unknown,
        key: None,
        access: None,
        providers: Default::default(),
        limits: None,
        request_limits: None,
        budgeted: false,
    };
    let hit = match s.key(digest, false)? {
        Some(h) => Some((h, false)),
        None => s.key(digest, true)?.map(|h| (h, true)),
    };
    let Some((key, is_prev)) = hit else {
        return Ok(doc);
    };
    let facts = KeyFacts {
        expires_at: key.expires_at,
        disabled: key.disabled,
        grace_until: if is_prev { Some(key.prev_until.unwrap_or(0)) } else { None },
    };
    doc.status = facts.status(now_secs);
    doc.key = Some(KeyInfo { id: key.id, config_id: key.config_id.clone(), valid_until: facts.valid_until() });
    if doc.status != KeyStatus::Active {
        return Ok(doc);
    }
    let config = match &key.config_id {
        Some(c) => s.config(c)?,
        None => ConfigHit::default(),
    };
    let access: Option<AccessSpec> = json_opt(config.access)?;
    let router: Option<RouterSpec> = json_opt(config.router)?;
    doc.limits = key_status::limits(json_opt::<RateLimitsSpec>(config.rate_limits)?);
    doc.request_limits =
        request_limits(json_opt::<RequestLimitsSpec>(config.request_limits)?, count_opt(key.max_concurrent_requests)?);
    doc.budgeted = budget::budgeted(key.budget_json.is_some(), config.budget.is_some(), s.credits_enabled()?);
    let providers = s.providers()?;
    let keys = s.provider_keys()?;
    doc.providers = Arc::new(plan::build(
        &providers,
        &keys,
        access.as_ref(),
        router.as_ref(),
        |key_id| -> Result<Option<String>, S::Error> {
            match s.secret(key_id)? {
                None => Ok(None),
                Some(sealed) => {
                    let plain = cipher.decrypt(key_id, &sealed).map_err(StoreError::from)?;
                    String::from_utf8(plain)
                        .map(Some)
                        .map_err(|_| StoreError::Internal("provider key value is not UTF-8".into()).into())
                }
            }
        },
    )?);
    doc.access = Some(Arc::new(plan::access_of(access.as_ref())));
    Ok(doc)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(cap: Option<u64>) -> RequestLimitsSpec {
        RequestLimitsSpec { max_input_tokens: Some(100), max_concurrent_requests: cap, ..Default::default() }
    }

    #[test]
    fn a_keys_own_cap_replaces_its_configurations() {
        let rl = |config, key| request_limits(config, key).map(|r| (r.max_input_tokens, r.max_concurrent_requests));
        assert_eq!(rl(Some(spec(Some(5))), Some(1)), Some((Some(100), Some(1))), "tightened");
        assert_eq!(rl(Some(spec(Some(5))), Some(50)), Some((Some(100), Some(50))), "loosened");
        assert_eq!(rl(Some(spec(Some(5))), None), Some((Some(100), Some(5))), "inherited");
        assert_eq!(rl(Some(spec(None)), Some(2)), Some((Some(100), Some(2))), "the configuration has no cap");
        assert_eq!(rl(None, Some(3)), Some((None, Some(3))), "nor any request limits");
        assert_eq!(rl(None, None), None);
    }
}
