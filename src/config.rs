//! The filter's plugin configuration (JSON), validated once in `on_configure`.

use serde::Deserialize;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Config {
    /// `downstream` (the HTTP filter: authenticate, authorize, route) or
    /// `upstream` (the cluster filter: put each attempt's credential on it).
    #[serde(default)]
    pub role: Role,
    /// Envoy cluster of the key store's lookup listener (downstream role).
    #[serde(default)]
    pub store_cluster: String,
    /// `:authority` sent on store callouts.
    #[serde(default = "defaults::store_authority")]
    pub store_authority: String,
    /// Environment variable (exposed to the VM through `vm_config.environment_variables`)
    /// holding the gateway credential for the store: it stays out of Envoy's config.
    #[serde(default = "defaults::gateway_token_env")]
    pub gateway_token_env: String,
    /// Store callout timeout. An uncached key gets 503 after this.
    #[serde(default = "defaults::callout_timeout_ms")]
    pub callout_timeout_ms: u64,
    /// Largest request body accepted (checked against `content-length`; Envoy's
    /// buffer limit enforces it for bodies without one).
    #[serde(default = "defaults::max_body_bytes")]
    pub max_body_bytes: u64,
    /// Longest time a cached answer is used without being confirmed by the
    /// store's change feed: the hard bound on revocation latency.
    #[serde(default = "defaults::cache_ttl_ms")]
    pub cache_ttl_ms: u64,
    /// How often each worker asks the store what changed.
    #[serde(default = "defaults::poll_interval_ms")]
    pub poll_interval_ms: u64,
    /// Most entries a worker's cache holds (least recently fetched go first).
    #[serde(default = "defaults::cache_max_entries")]
    pub cache_max_entries: usize,
    /// While the store is unreachable, keep serving cached approvals this much
    /// longer than `cacheTtlMs` (0 = strict: never).
    #[serde(default)]
    pub stale_if_error_ms: u64,
    /// Upstream clusters (dynamic forward proxies) for plaintext and TLS providers.
    #[serde(default = "defaults::cluster_http")]
    pub upstream_cluster_http: String,
    #[serde(default = "defaults::cluster_https")]
    pub upstream_cluster_https: String,
    /// The same without the upstream filter, for requests with one
    /// candidate, and behind the hop.
    #[serde(default = "defaults::direct_http")]
    pub direct_cluster_http: String,
    #[serde(default = "defaults::direct_https")]
    pub direct_cluster_https: String,
    /// The cluster of the hop: an internal listener that sends each attempt
    /// to the place its upstream filter chose, for fallbacks served at
    /// different places. Empty: no hop (such fallbacks are refused).
    #[serde(default)]
    pub hop_cluster: String,
    /// Request header the route's `cluster_header` reads.
    #[serde(default = "defaults::cluster_header")]
    pub cluster_header: String,
    /// Dynamic-metadata namespace where `json_to_metadata` puts `model` (configurations
    /// without the gate filter, e.g. the Istio setup).
    #[serde(default = "defaults::metadata_namespace")]
    pub metadata_namespace: String,
    /// `anthropic-version` sent upstream when the client sent none.
    #[serde(default = "defaults::anthropic_version")]
    pub anthropic_version: String,
    /// How long a provider key that answered 429 is skipped when the provider
    /// gave no `Retry-After`.
    #[serde(default = "defaults::cooldown_rate_limited_ms")]
    pub cooldown_rate_limited_ms: u64,
    /// Length of a rate-limit window: limits are "per minute" by default.
    #[serde(default = "defaults::rate_limit_window_ms")]
    pub rate_limit_window_ms: u64,
    /// How long a provider key that answered 401/403 is skipped.
    #[serde(default = "defaults::cooldown_auth_failure_ms")]
    pub cooldown_auth_failure_ms: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum Role {
    /// The keygate filter: keys, allow-lists, credentials, routing.
    #[default]
    Downstream,
    /// The cluster filter: each attempt's credential.
    Upstream,
    /// The gate ahead of Envoy's buffer filter: refuses from the headers,
    /// starts the key lookup, reads the body as it passes (see `worker::gate`).
    Gate,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Downstream => "keygate",
            Role::Upstream => "upstream",
            Role::Gate => "gate",
        }
    }
}

impl TryFrom<String> for Role {
    type Error = String;
    fn try_from(s: String) -> Result<Role, String> {
        match s.as_str() {
            "downstream" => Ok(Role::Downstream),
            "upstream" => Ok(Role::Upstream),
            "gate" => Ok(Role::Gate),
            _ => Err(format!("role must be \"downstream\", \"upstream\" or \"gate\", got {s:?}")),
        }
    }
}

mod defaults {
    pub fn store_authority() -> String {
        "keygate-store".into()
    }
    pub fn gateway_token_env() -> String {
        "KEYGATE_GATEWAY_TOKEN".into()
    }
    pub fn callout_timeout_ms() -> u64 {
        500
    }
    pub fn max_body_bytes() -> u64 {
        8 * 1024 * 1024
    }
    pub fn cache_ttl_ms() -> u64 {
        4_000
    }
    pub fn poll_interval_ms() -> u64 {
        200
    }
    pub fn cache_max_entries() -> usize {
        100_000
    }
    pub fn cluster_http() -> String {
        "keygate_upstream_http".into()
    }
    pub fn cluster_https() -> String {
        "keygate_upstream_https".into()
    }
    pub fn direct_http() -> String {
        "keygate_direct_http".into()
    }
    pub fn direct_https() -> String {
        "keygate_direct_https".into()
    }
    pub fn cluster_header() -> String {
        "x-keygate-cluster".into()
    }
    pub fn metadata_namespace() -> String {
        "keygate".into()
    }
    pub fn anthropic_version() -> String {
        "2023-06-01".into()
    }
    pub fn cooldown_rate_limited_ms() -> u64 {
        30_000
    }
    pub fn rate_limit_window_ms() -> u64 {
        60_000
    }
    pub fn cooldown_auth_failure_ms() -> u64 {
        300_000
    }
}

impl Config {
    /// Parses and checks; the error names the offending field.
    pub fn parse(bytes: &[u8]) -> Result<Config, String> {
        let config: Config = serde_json::from_slice(bytes).map_err(|e| format!("plugin configuration: {e}"))?;
        config.check()?;
        Ok(config)
    }

    fn check(&self) -> Result<(), String> {
        if self.role == Role::Downstream && self.store_cluster.trim().is_empty() {
            return Err("plugin configuration: storeCluster must be set (the key store's Envoy cluster)".into());
        }
        let non_empty = [
            ("storeAuthority", &self.store_authority),
            ("gatewayTokenEnv", &self.gateway_token_env),
            ("upstreamClusterHttp", &self.upstream_cluster_http),
            ("upstreamClusterHttps", &self.upstream_cluster_https),
            ("directClusterHttp", &self.direct_cluster_http),
            ("directClusterHttps", &self.direct_cluster_https),
            ("clusterHeader", &self.cluster_header),
            ("metadataNamespace", &self.metadata_namespace),
            ("anthropicVersion", &self.anthropic_version),
        ];
        for (field, value) in non_empty {
            if value.trim().is_empty() {
                return Err(format!("plugin configuration: {field} must not be empty"));
            }
        }
        let ranges = [
            ("calloutTimeoutMs", self.callout_timeout_ms, 1, 60_000),
            ("maxBodyBytes", self.max_body_bytes, 1, 1 << 30),
            ("cacheTtlMs", self.cache_ttl_ms, 100, 5_000),
            ("pollIntervalMs", self.poll_interval_ms, 10, 5_000),
            ("staleIfErrorMs", self.stale_if_error_ms, 0, 86_400_000),
            ("cooldownRateLimitedMs", self.cooldown_rate_limited_ms, 0, 86_400_000),
            ("cooldownAuthFailureMs", self.cooldown_auth_failure_ms, 0, 86_400_000),
            ("rateLimitWindowMs", self.rate_limit_window_ms, 1_000, 3_600_000),
        ];
        for (field, value, min, max) in ranges {
            if !(min..=max).contains(&value) {
                return Err(format!("plugin configuration: {field} must be between {min} and {max}, got {value}"));
            }
        }
        if self.poll_interval_ms >= self.cache_ttl_ms {
            return Err("plugin configuration: pollIntervalMs must be below cacheTtlMs".into());
        }
        if !(1..=10_000_000).contains(&self.cache_max_entries) {
            return Err("plugin configuration: cacheMaxEntries must be between 1 and 10000000".into());
        }
        if !self.cluster_header.bytes().all(|b| b.is_ascii_lowercase() || b == b'-') {
            return Err("plugin configuration: clusterHeader must be a lowercase header name".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_config_gets_defaults() {
        let c = Config::parse(br#"{"storeCluster":"keygate_store"}"#).unwrap();
        assert_eq!(c.callout_timeout_ms, 500);
        assert_eq!(c.cluster_header, "x-keygate-cluster");
        assert_eq!(c.stale_if_error_ms, 0);
        assert_eq!(c.role, Role::Downstream);
        let up = Config::parse(br#"{"role":"upstream"}"#).unwrap();
        assert_eq!(up.role, Role::Upstream);
        let gate = Config::parse(br#"{"role":"gate","maxBodyBytes":1024}"#).unwrap();
        assert_eq!((gate.role, gate.max_body_bytes), (Role::Gate, 1024));
    }

    #[test]
    fn errors_name_the_field() {
        let cases: [(&[u8], &str); 7] = [
            (b"{}", "storeCluster"),
            (br#"{"storeCluster":"s","calloutTimeoutMs":0}"#, "calloutTimeoutMs"),
            (br#"{"storeCluster":"s","cacheTtlMs":60000}"#, "cacheTtlMs"),
            (br#"{"storeCluster":"s","bogus":1}"#, "bogus"),
            (br#"{"storeCluster":""}"#, "storeCluster"),
            (br#"{"storeCluster":"s","calloutTimeoutMs":"fast"}"#, "invalid type"),
            (br#"{"role":"sideways"}"#, "role"),
        ];
        for (input, needle) in cases {
            let err = Config::parse(input).unwrap_err();
            assert!(err.contains(needle), "{err} should mention {needle}");
        }
        assert!(Config::parse(b"not json").is_err());
    }
}
