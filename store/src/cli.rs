//! Command line: `keygate serve` and admin subcommands that call the
//! management API over HTTP and print its JSON answers.

use std::io::Read;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use serde_json::{json, Map, Value};

#[derive(Parser)]
#[command(name = "keygate", version, about = "keygate key store: access keys for AI traffic")]
pub struct Cli {
    /// Management API base URL.
    #[arg(long, env = "KEYGATE_API_URL", default_value = "http://127.0.0.1:8081", global = true)]
    pub api_url: String,
    /// Admin token (default: read from <data dir>/admin-token).
    #[arg(long, env = "KEYGATE_ADMIN_TOKEN", hide_env_values = true, global = true)]
    pub admin_token: Option<String>,
    /// A management API key (`kgm_…`) to call the API with, in place of the
    /// admin token (its role decides what it may do).
    #[arg(long, env = "KEYGATE_API_KEY", hide_env_values = true, global = true)]
    pub api_key: Option<String>,
    /// Data directory (database, generated secrets).
    #[arg(long, env = "KEYGATE_DATA_DIR", default_value = "./data", global = true)]
    pub data_dir: PathBuf,
    /// PostgreSQL database (`postgres://user:password@host:port/db`); without
    /// it the store keeps its data in SQLite (`<data dir>/keygate.db`).
    #[arg(long, env = "KEYGATE_DATABASE_URL", hide_env_values = true, global = true)]
    pub database_url: Option<String>,
    /// A PEM bundle of CA certificates to trust, besides Mozilla's roots, for
    /// PostgreSQL's TLS (a private CA, or the cloud provider's database CA).
    #[arg(long, env = "KEYGATE_DATABASE_CA", global = true)]
    pub database_ca: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the key store (management API and gateway lookup API).
    Serve(ServeArgs),
    /// Apply pending schema migrations to the database and exit (`serve`
    /// applies them at start too).
    Migrate,
    /// Copy a SQLite deployment into an empty PostgreSQL database (keys,
    /// configurations, providers, sealed provider keys, usage, budgets,
    /// reservations, prices, credits, the version counter).
    Copy(CopyArgs),
    /// Manage access keys.
    #[command(subcommand)]
    AccessKeys(AccessKeysCmd),
    /// Manage provider keys (upstream credentials).
    #[command(subcommand)]
    ProviderKeys(ProviderKeysCmd),
    /// Manage access key configurations.
    #[command(subcommand)]
    Configs(ConfigsCmd),
    /// Manage providers.
    #[command(subcommand)]
    Providers(ProvidersCmd),
    /// Usage records and summaries.
    #[command(subcommand)]
    Usage(UsageCmd),
    /// The gateway-wide credit balance.
    #[command(subcommand)]
    Credits(CreditsCmd),
    /// The price catalog (USD per million tokens).
    #[command(subcommand)]
    Prices(PricesCmd),
    /// Webhooks told of budget, credit and key-expiry alerts, and what they were sent.
    #[command(subcommand)]
    AlertWebhooks(AlertWebhooksCmd),
    /// Manage management API keys (named credentials of this API, with a role).
    #[command(subcommand)]
    ApiKeys(ApiKeysCmd),
    /// The credential in use: its actor (`bootstrap` or `mk_…`), name and role.
    Whoami,
    /// Management changes, newest first.
    AuditLog(AuditLogArgs),
}

#[derive(Subcommand)]
pub enum ApiKeysCmd {
    /// Create a management API key; prints its token (shown only once).
    Create {
        #[arg(long)]
        name: String,
        /// admin, operator (access keys and configurations) or viewer (reading).
        #[arg(long, value_parser = ["admin", "operator", "viewer"])]
        role: String,
    },
    List(ListArgs),
    Get {
        id: String,
    },
    /// Rename it and/or change its role.
    Update {
        id: String,
        #[arg(long)]
        name: Option<String>,
        #[arg(long, value_parser = ["admin", "operator", "viewer"])]
        role: Option<String>,
    },
    /// Delete it: its token stops working at once.
    Delete {
        id: String,
    },
    /// Issue a new token; the old one stops working at once.
    Rotate {
        id: String,
    },
}

/// Arguments of `keygate audit-log`.
#[derive(Args)]
pub struct AuditLogArgs {
    /// Only changes by this actor: `bootstrap` or a management key id (`mk_…`).
    #[arg(long)]
    pub actor: Option<String>,
    /// Only changes of this resource id (`ak_…`, `openai`, `openai/gpt-4o`, ...).
    #[arg(long)]
    pub resource: Option<String>,
    /// RFC 3339: entries recorded at or after.
    #[arg(long)]
    pub since: Option<String>,
    /// RFC 3339: entries recorded before.
    #[arg(long)]
    pub until: Option<String>,
    #[command(flatten)]
    pub page: ListArgs,
}

/// Arguments of `keygate copy`.
#[derive(Args)]
pub struct CopyArgs {
    /// The SQLite deployment: a data directory, a `keygate.db` file or a
    /// `sqlite://` path (default: the data directory).
    #[arg(long)]
    pub from: Option<String>,
    /// The PostgreSQL database URL (default: KEYGATE_DATABASE_URL). It must be empty.
    #[arg(long)]
    pub to: Option<String>,
}

/// Budget flags of `access-keys create/update`.
#[derive(Args)]
pub struct BudgetArgs {
    /// Token budget per window.
    #[arg(long)]
    pub budget_tokens: Option<u64>,
    /// Cost budget per window, USD.
    #[arg(long)]
    pub budget_usd: Option<f64>,
    /// Budget window: daily, weekly (from Monday), monthly or none (default none).
    #[arg(long, value_parser = ["daily", "weekly", "monthly", "none"])]
    pub budget_window: Option<String>,
    /// IANA time zone the budget's windows start in at local midnight, e.g.
    /// Europe/Berlin (default UTC).
    #[arg(long, alias = "time-zone")]
    pub budget_time_zone: Option<String>,
}

impl BudgetArgs {
    fn to_json(&self) -> Option<Value> {
        if self.budget_tokens.is_none()
            && self.budget_usd.is_none()
            && self.budget_window.is_none()
            && self.budget_time_zone.is_none()
        {
            return None;
        }
        let mut b = Map::new();
        if let Some(t) = self.budget_tokens {
            b.insert("tokens".into(), json!(t));
        }
        if let Some(u) = self.budget_usd {
            b.insert("costUsd".into(), json!(u));
        }
        if let Some(w) = &self.budget_window {
            b.insert("window".into(), json!(w));
        }
        if let Some(tz) = &self.budget_time_zone {
            b.insert("timeZone".into(), json!(tz));
        }
        Some(Value::Object(b))
    }
}

#[derive(Args)]
pub struct UsageFilterArgs {
    /// Access key id.
    #[arg(long)]
    pub key: Option<String>,
    /// RFC 3339: records started at or after.
    #[arg(long)]
    pub from: Option<String>,
    /// RFC 3339: records started before.
    #[arg(long)]
    pub to: Option<String>,
    #[arg(long)]
    pub provider: Option<String>,
    #[arg(long)]
    pub model: Option<String>,
}

impl UsageFilterArgs {
    fn pairs(&self) -> Vec<(&'static str, String)> {
        [
            ("accessKeyId", &self.key),
            ("from", &self.from),
            ("to", &self.to),
            ("provider", &self.provider),
            ("model", &self.model),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.clone().map(|v| (k, v)))
        .collect()
    }
}

#[derive(Subcommand)]
pub enum UsageCmd {
    /// Usage records, newest first.
    List {
        #[command(flatten)]
        filter: UsageFilterArgs,
        #[command(flatten)]
        page: ListArgs,
    },
    /// Totals grouped by key, provider, model or day.
    Summary {
        #[arg(long, default_value = "key", value_parser = ["key", "provider", "model", "day"])]
        group_by: String,
        #[command(flatten)]
        filter: UsageFilterArgs,
    },
}

#[derive(Subcommand)]
pub enum CreditsCmd {
    /// Balance, reservations and whether credits are enforced.
    Get,
    /// Add USD to the balance (negative to correct); the first grant enables credits.
    Add {
        #[arg(long, allow_hyphen_values = true)]
        usd: f64,
    },
    /// Enforce the balance on every request.
    Enable,
    /// Stop enforcing the balance.
    Disable,
}

#[derive(Subcommand)]
pub enum PricesCmd {
    List,
    /// Set the price of PROVIDER/MODEL (MODEL may end in `*`; `*/*` is the catch-all).
    Set {
        model: String,
        /// USD per million input tokens.
        #[arg(long)]
        input: f64,
        /// USD per million output tokens.
        #[arg(long)]
        output: f64,
        /// USD per million cached input tokens (default: the input price).
        #[arg(long)]
        cached: Option<f64>,
    },
    Delete {
        model: String,
    },
}

/// The settings of `alert-webhooks create/update`.
#[derive(Args)]
pub struct AlertWebhookArgs {
    /// Percent thresholds, comma-separated (default on create: 50,80,100).
    #[arg(long, value_delimiter = ',', allow_hyphen_values = true)]
    pub thresholds: Option<Vec<i64>>,
    /// Events, comma-separated (default on create: all).
    #[arg(long, value_delimiter = ',', value_parser = ["budget", "credits", "key_expiry"])]
    pub events: Option<Vec<String>>,
    /// Days before a key's expiry it is announced (default on create: 7).
    #[arg(long)]
    pub expiry_warning_days: Option<i64>,
    /// Read the signing secret from stdin (one trailing newline removed);
    /// without it, create generates one (printed once).
    #[arg(long)]
    pub secret_stdin: bool,
}

impl AlertWebhookArgs {
    fn fill(self, b: &mut Map<String, Value>) -> Result<(), String> {
        if let Some(t) = self.thresholds {
            b.insert("thresholds".into(), json!(t));
        }
        if let Some(e) = self.events {
            b.insert("events".into(), json!(e));
        }
        if let Some(d) = self.expiry_warning_days {
            b.insert("expiryWarningDays".into(), json!(d));
        }
        if self.secret_stdin {
            b.insert("secret".into(), Value::String(read_stdin_line("the webhook secret")?));
        }
        Ok(())
    }
}

#[derive(Subcommand)]
pub enum AlertWebhooksCmd {
    /// Create a webhook; prints it with its secret (shown only once).
    Create {
        #[arg(long)]
        url: String,
        /// Only this access key configuration's budget and keys (default: store-wide).
        #[arg(long)]
        config: Option<String>,
        #[command(flatten)]
        settings: AlertWebhookArgs,
        /// Create it disabled.
        #[arg(long)]
        disabled: bool,
    },
    List(ListArgs),
    Get {
        id: String,
    },
    Update {
        id: String,
        #[arg(long)]
        url: Option<String>,
        #[arg(long, conflicts_with = "no_config")]
        config: Option<String>,
        /// Make it store-wide.
        #[arg(long)]
        no_config: bool,
        #[command(flatten)]
        settings: AlertWebhookArgs,
        #[arg(long, conflicts_with = "enable")]
        disable: bool,
        #[arg(long)]
        enable: bool,
    },
    Delete {
        id: String,
    },
    /// The webhook's deliveries, newest first, with their attempts.
    Deliveries {
        id: String,
        #[command(flatten)]
        page: ListArgs,
    },
}

#[derive(Args)]
pub struct ServeArgs {
    /// Address both listeners bind to.
    #[arg(long, env = "KEYGATE_BIND", default_value = "127.0.0.1")]
    pub bind: IpAddr,
    /// Management API port.
    #[arg(long, env = "KEYGATE_API_PORT", default_value_t = 8081)]
    pub api_port: u16,
    /// Gateway lookup API port.
    #[arg(long, env = "KEYGATE_LOOKUP_PORT", default_value_t = 8082)]
    pub lookup_port: u16,
    /// AES-256 key for provider-key values, 64 hex characters (env only).
    #[arg(long, env = "KEYGATE_MASTER_KEY", hide_env_values = true, hide = true)]
    pub master_key: Option<String>,
    /// Token of the Envoy filter on the lookup API (env only).
    #[arg(long, env = "KEYGATE_GATEWAY_TOKEN", hide_env_values = true, hide = true)]
    pub gateway_token: Option<String>,
    /// Days usage records are kept before the store's sweep deletes them
    /// (0 = forever; at least 32, the longest budget window, otherwise).
    #[arg(long, env = "KEYGATE_USAGE_RETENTION_DAYS", default_value_t = crate::policy::retention::DEFAULT_DAYS)]
    pub usage_retention_days: u32,
    /// Wait before the second attempt of a failed alert delivery (ms); it
    /// doubles after each attempt (at most an hour).
    #[arg(long, env = "KEYGATE_ALERT_RETRY_BASE_MS", default_value_t = crate::policy::alerts::DEFAULT_RETRY_BASE_MS,
          value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    pub alert_retry_base_ms: u64,
    /// Attempts of an alert delivery before it is marked failed.
    #[arg(long, env = "KEYGATE_ALERT_MAX_ATTEMPTS", default_value_t = crate::policy::alerts::DEFAULT_MAX_ATTEMPTS,
          value_parser = clap::value_parser!(u32).range(1..=50))]
    pub alert_max_attempts: u32,
    /// The longest one alert delivery attempt may take (ms), connecting included.
    #[arg(long, env = "KEYGATE_ALERT_TIMEOUT_MS", default_value_t = crate::webhooks::DEFAULT_TIMEOUT_MS,
          value_parser = clap::value_parser!(u64).range(100..=60_000))]
    pub alert_timeout_ms: u64,
    /// Days audit-log entries are kept before the store's sweep deletes them
    /// (0 = forever).
    #[arg(long, env = "KEYGATE_AUDIT_RETENTION_DAYS", default_value_t = crate::policy::audit::DEFAULT_RETENTION_DAYS)]
    pub audit_retention_days: u32,
    /// Mark the web console's cookies `Secure` always (it is reached over
    /// TLS); without it they are `Secure` when a proxy sends
    /// `X-Forwarded-Proto: https`.
    #[arg(long, env = "KEYGATE_CONSOLE_SECURE_COOKIE")]
    pub console_secure_cookie: bool,
}

#[derive(Args)]
pub struct ListArgs {
    /// Page size (1..=100).
    #[arg(long)]
    pub limit: Option<u32>,
    /// Continue below this id (from nextPageUri).
    #[arg(long)]
    pub before_id: Option<String>,
}

#[derive(Subcommand)]
pub enum AccessKeysCmd {
    /// Create an access key; prints its token (shown only once).
    Create {
        #[arg(long)]
        name: String,
        /// Access key configuration id (omit for allow-all).
        #[arg(long)]
        config: Option<String>,
        #[arg(long)]
        description: Option<String>,
        #[arg(long)]
        metadata: Option<String>,
        /// RFC 3339 expiry, e.g. 2030-01-01T00:00:00Z.
        #[arg(long)]
        expires_at: Option<String>,
        #[arg(long)]
        disabled: bool,
        #[command(flatten)]
        budget: BudgetArgs,
        /// This key's own cap on its requests in flight at once (per Envoy),
        /// in place of its configuration's (1 to 1000000).
        #[arg(long)]
        max_concurrent_requests: Option<u64>,
    },
    List(ListArgs),
    Get {
        id: String,
    },
    Delete {
        id: String,
    },
    /// Issue a new token; the old one works for --grace-seconds more.
    Rotate {
        id: String,
        #[arg(long, default_value_t = 0)]
        grace_seconds: u64,
    },
    Update {
        id: String,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        description: Option<String>,
        #[arg(long)]
        metadata: Option<String>,
        #[arg(long, conflicts_with = "no_config")]
        config: Option<String>,
        /// Remove the configuration (allow-all).
        #[arg(long)]
        no_config: bool,
        #[arg(long, conflicts_with = "no_expiry")]
        expires_at: Option<String>,
        #[arg(long)]
        no_expiry: bool,
        #[arg(long, conflicts_with = "enable")]
        disable: bool,
        #[arg(long)]
        enable: bool,
        /// Replaces the whole budget (give every part you want to keep).
        #[command(flatten)]
        budget: BudgetArgs,
        /// Remove the budget.
        #[arg(long, conflicts_with_all = ["budget_tokens", "budget_usd", "budget_window", "budget_time_zone"])]
        no_budget: bool,
        /// This key's own cap on its requests in flight at once (per Envoy),
        /// in place of its configuration's (1 to 1000000).
        #[arg(long, conflicts_with = "no_max_concurrent_requests")]
        max_concurrent_requests: Option<u64>,
        /// Remove the key's own cap (its configuration's applies again).
        #[arg(long)]
        no_max_concurrent_requests: bool,
    },
}

#[derive(Subcommand)]
pub enum ProviderKeysCmd {
    /// Create a provider key; the value is read from stdin.
    Create {
        #[arg(long)]
        provider: String,
        #[arg(long)]
        name: String,
        #[arg(long)]
        description: Option<String>,
        #[arg(long)]
        metadata: Option<String>,
        /// Default credential of the provider.
        #[arg(long)]
        managed: bool,
    },
    List(ListArgs),
    Get {
        id: String,
    },
    Delete {
        id: String,
    },
    /// Replace the value (read from stdin), keeping the id.
    Rotate {
        id: String,
    },
    Update {
        id: String,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        description: Option<String>,
        #[arg(long)]
        metadata: Option<String>,
        #[arg(long, conflicts_with = "unmanaged")]
        managed: bool,
        #[arg(long)]
        unmanaged: bool,
    },
}

#[derive(Subcommand)]
pub enum ConfigsCmd {
    /// Create from a JSON file (`-` = stdin) with the API's request body.
    Create {
        #[arg(long)]
        file: PathBuf,
    },
    List(ListArgs),
    Get {
        id: String,
    },
    Delete {
        id: String,
    },
    Update {
        id: String,
        #[arg(long)]
        file: PathBuf,
    },
}

#[derive(Subcommand)]
pub enum ProvidersCmd {
    List,
    Get {
        id: String,
    },
    Create {
        #[arg(long)]
        file: PathBuf,
    },
    Update {
        id: String,
        #[arg(long)]
        file: PathBuf,
    },
    Delete {
        id: String,
    },
}

/// A management API client.
pub struct Client {
    agent: ureq::Agent,
    base: String,
    token: String,
}

#[derive(Debug, Clone, Copy)]
enum Verb {
    Get,
    Post,
    Put,
    Patch,
    Delete,
}

impl Client {
    pub fn new(api_url: &str, token: String) -> Self {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            .build()
            .new_agent();
        Client { agent, base: api_url.trim_end_matches('/').to_string(), token }
    }

    fn call(&self, verb: Verb, path: &str, body: Option<Value>) -> Result<Option<Value>, String> {
        let url = format!("{}{path}", self.base);
        let auth = format!("Bearer {}", self.token);
        let result = match (verb, body) {
            (Verb::Get, _) => self.agent.get(&url).header("authorization", &auth).call(),
            (Verb::Delete, _) => self.agent.delete(&url).header("authorization", &auth).call(),
            (Verb::Post, Some(b)) => self.agent.post(&url).header("authorization", &auth).send_json(&b),
            (Verb::Post, None) => self.agent.post(&url).header("authorization", &auth).send_empty(),
            (Verb::Put, b) => {
                self.agent.put(&url).header("authorization", &auth).send_json(b.unwrap_or_else(|| json!({})))
            }
            (Verb::Patch, b) => {
                self.agent.patch(&url).header("authorization", &auth).send_json(b.unwrap_or_else(|| json!({})))
            }
        };
        let mut resp = result.map_err(|e| format!("cannot reach the key store at {}: {e}", self.base))?;
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string().map_err(|e| format!("reading the response: {e}"))?;
        if (200..300).contains(&status) {
            if text.trim().is_empty() {
                return Ok(None);
            }
            return serde_json::from_str(&text).map(Some).map_err(|e| format!("bad JSON from the key store: {e}"));
        }
        match serde_json::from_str::<Value>(&text) {
            Ok(v) if v.get("msg").is_some() => {
                let text = |p: &str| v.pointer(p).and_then(Value::as_str);
                let mut msg =
                    format!("error {status} {}: {}", text("/errorCode").unwrap_or("error"), text("/msg").unwrap_or(""));
                if let Some(f) = text("/details/field") {
                    msg.push_str(&format!(" (field: {f})"));
                }
                Err(msg)
            }
            _ => Err(format!("error {status}")),
        }
    }
}

fn read_token_file(data_dir: &Path) -> Result<String, String> {
    let path = data_dir.join("admin-token");
    std::fs::read_to_string(&path).map(|s| s.trim().to_string()).map_err(|e| {
        format!("no admin token: set KEYGATE_ADMIN_TOKEN or --admin-token (could not read {}: {e})", path.display())
    })
}

fn read_stdin_value() -> Result<String, String> {
    read_stdin_line("the provider key value")
}

/// A secret from stdin, one trailing newline removed.
fn read_stdin_line(what: &str) -> Result<String, String> {
    let mut s = String::new();
    std::io::stdin().read_to_string(&mut s).map_err(|e| format!("reading stdin: {e}"))?;
    let v = s.trim_end_matches(['\n', '\r']).to_string();
    if v.is_empty() {
        return Err(format!("expected {what} on stdin"));
    }
    Ok(v)
}

fn read_json_file(path: &Path) -> Result<Value, String> {
    let text = if path == Path::new("-") {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s).map_err(|e| format!("reading stdin: {e}"))?;
        s
    } else {
        std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?
    };
    serde_json::from_str(&text).map_err(|e| format!("{} is not valid JSON: {e}", path.display()))
}

fn list_path(base: &str, a: &ListArgs) -> String {
    let mut q = Vec::new();
    if let Some(l) = a.limit {
        q.push(format!("limit={l}"));
    }
    if let Some(b) = &a.before_id {
        q.push(format!("beforeId={b}"));
    }
    if q.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", q.join("&"))
    }
}

fn seg(id: &str) -> Result<&str, String> {
    if !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.')) {
        Ok(id)
    } else {
        Err(format!("{id:?} is not a valid id"))
    }
}

/// Percent-encodes one path segment (keeps `*`).
fn encode_segment(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'*') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `/prices/{provider}/{model}` of `PROVIDER/MODEL`.
fn price_path(spec: &str) -> Result<String, String> {
    let (p, m) = spec.split_once('/').ok_or_else(|| format!("{spec:?} is not PROVIDER/MODEL"))?;
    if p.is_empty() || m.is_empty() {
        return Err(format!("{spec:?} is not PROVIDER/MODEL"));
    }
    Ok(format!("/prices/{}/{}", encode_segment(p), encode_segment(m)))
}

fn with_query(base: &str, pairs: &[(&str, String)]) -> String {
    if pairs.is_empty() {
        return base.to_string();
    }
    format!("{base}?{}", serde_urlencoded::to_string(pairs).unwrap_or_default())
}

fn put_opt(m: &mut Map<String, Value>, k: &str, v: Option<String>) {
    if let Some(v) = v {
        m.insert(k.into(), Value::String(v));
    }
}

/// Runs an admin subcommand; returns what to print. It calls the API with
/// the management key of `--api-key` (`KEYGATE_API_KEY`) if given, else the
/// admin token (`--admin-token`, `KEYGATE_ADMIN_TOKEN`, or the data
/// directory's `admin-token` file).
pub fn run_admin(cli: Cli) -> Result<Option<Value>, String> {
    let token = match (cli.api_key.clone(), cli.admin_token.clone()) {
        (Some(k), _) if !k.trim().is_empty() => k.trim().to_string(),
        (_, Some(t)) if !t.trim().is_empty() => t.trim().to_string(),
        _ => read_token_file(&cli.data_dir)?,
    };
    let c = Client::new(&cli.api_url, token);
    let deleted = |id: &str| Some(json!({ "id": id, "deleted": true }));
    match cli.command {
        Command::Serve(_) | Command::Migrate | Command::Copy(_) => Err("not an admin command".into()),
        Command::AccessKeys(cmd) => match cmd {
            AccessKeysCmd::Create {
                name,
                config,
                description,
                metadata,
                expires_at,
                disabled,
                budget,
                max_concurrent_requests,
            } => {
                let mut b = Map::new();
                b.insert("name".into(), Value::String(name));
                put_opt(&mut b, "accessKeyConfigurationId", config);
                put_opt(&mut b, "description", description);
                put_opt(&mut b, "metadata", metadata);
                put_opt(&mut b, "expiresAt", expires_at);
                if disabled {
                    b.insert("disabled".into(), Value::Bool(true));
                }
                if let Some(v) = budget.to_json() {
                    b.insert("budget".into(), v);
                }
                if let Some(n) = max_concurrent_requests {
                    b.insert("maxConcurrentRequests".into(), json!(n));
                }
                c.call(Verb::Post, "/access-keys", Some(Value::Object(b)))
            }
            AccessKeysCmd::List(a) => c.call(Verb::Get, &list_path("/access-keys", &a), None),
            AccessKeysCmd::Get { id } => c.call(Verb::Get, &format!("/access-keys/{}", seg(&id)?), None),
            AccessKeysCmd::Delete { id } => {
                c.call(Verb::Delete, &format!("/access-keys/{}", seg(&id)?), None)?;
                Ok(deleted(&id))
            }
            AccessKeysCmd::Rotate { id, grace_seconds } => c.call(
                Verb::Post,
                &format!("/access-keys/{}/rotate", seg(&id)?),
                Some(json!({ "gracePeriodSeconds": grace_seconds })),
            ),
            AccessKeysCmd::Update {
                id,
                name,
                description,
                metadata,
                config,
                no_config,
                expires_at,
                no_expiry,
                disable,
                enable,
                budget,
                no_budget,
                max_concurrent_requests,
                no_max_concurrent_requests,
            } => {
                let mut b = Map::new();
                put_opt(&mut b, "name", name);
                put_opt(&mut b, "description", description);
                put_opt(&mut b, "metadata", metadata);
                put_opt(&mut b, "accessKeyConfigurationId", config);
                if no_config {
                    b.insert("accessKeyConfigurationId".into(), Value::Null);
                }
                put_opt(&mut b, "expiresAt", expires_at);
                if no_expiry {
                    b.insert("expiresAt".into(), Value::Null);
                }
                if disable || enable {
                    b.insert("disabled".into(), Value::Bool(disable));
                }
                if let Some(v) = budget.to_json() {
                    b.insert("budget".into(), v);
                }
                if no_budget {
                    b.insert("budget".into(), Value::Null);
                }
                if let Some(n) = max_concurrent_requests {
                    b.insert("maxConcurrentRequests".into(), json!(n));
                }
                if no_max_concurrent_requests {
                    b.insert("maxConcurrentRequests".into(), Value::Null);
                }
                c.call(Verb::Patch, &format!("/access-keys/{}", seg(&id)?), Some(Value::Object(b)))
            }
        },
        Command::ProviderKeys(cmd) => match cmd {
            ProviderKeysCmd::Create { provider, name, description, metadata, managed } => {
                let value = read_stdin_value()?;
                let mut b = Map::new();
                b.insert("providerId".into(), Value::String(provider));
                b.insert("name".into(), Value::String(name));
                b.insert("value".into(), Value::String(value));
                put_opt(&mut b, "description", description);
                put_opt(&mut b, "metadata", metadata);
                b.insert("managed".into(), Value::Bool(managed));
                c.call(Verb::Post, "/provider-keys", Some(Value::Object(b)))
            }
            ProviderKeysCmd::List(a) => c.call(Verb::Get, &list_path("/provider-keys", &a), None),
            ProviderKeysCmd::Get { id } => c.call(Verb::Get, &format!("/provider-keys/{}", seg(&id)?), None),
            ProviderKeysCmd::Delete { id } => {
                c.call(Verb::Delete, &format!("/provider-keys/{}", seg(&id)?), None)?;
                Ok(deleted(&id))
            }
            ProviderKeysCmd::Rotate { id } => {
                let path = format!("/provider-keys/{}/rotate", seg(&id)?);
                let value = read_stdin_value()?;
                c.call(Verb::Post, &path, Some(json!({ "value": value })))
            }
            ProviderKeysCmd::Update { id, name, description, metadata, managed, unmanaged } => {
                let mut b = Map::new();
                put_opt(&mut b, "name", name);
                put_opt(&mut b, "description", description);
                put_opt(&mut b, "metadata", metadata);
                if managed || unmanaged {
                    b.insert("managed".into(), Value::Bool(managed));
                }
                c.call(Verb::Patch, &format!("/provider-keys/{}", seg(&id)?), Some(Value::Object(b)))
            }
        },
        Command::Configs(cmd) => match cmd {
            ConfigsCmd::Create { file } => {
                c.call(Verb::Post, "/access-key-configurations", Some(read_json_file(&file)?))
            }
            ConfigsCmd::List(a) => c.call(Verb::Get, &list_path("/access-key-configurations", &a), None),
            ConfigsCmd::Get { id } => c.call(Verb::Get, &format!("/access-key-configurations/{}", seg(&id)?), None),
            ConfigsCmd::Delete { id } => {
                c.call(Verb::Delete, &format!("/access-key-configurations/{}", seg(&id)?), None)?;
                Ok(deleted(&id))
            }
            ConfigsCmd::Update { id, file } => {
                c.call(Verb::Patch, &format!("/access-key-configurations/{}", seg(&id)?), Some(read_json_file(&file)?))
            }
        },
        Command::Providers(cmd) => match cmd {
            ProvidersCmd::List => c.call(Verb::Get, "/providers", None),
            ProvidersCmd::Get { id } => c.call(Verb::Get, &format!("/providers/{}", seg(&id)?), None),
            ProvidersCmd::Create { file } => c.call(Verb::Post, "/providers", Some(read_json_file(&file)?)),
            ProvidersCmd::Update { id, file } => {
                c.call(Verb::Patch, &format!("/providers/{}", seg(&id)?), Some(read_json_file(&file)?))
            }
            ProvidersCmd::Delete { id } => {
                c.call(Verb::Delete, &format!("/providers/{}", seg(&id)?), None)?;
                Ok(deleted(&id))
            }
        },
        Command::Usage(cmd) => match cmd {
            UsageCmd::List { filter, page } => {
                let mut q = filter.pairs();
                if let Some(l) = page.limit {
                    q.push(("limit", l.to_string()));
                }
                if let Some(b) = page.before_id {
                    q.push(("beforeId", b));
                }
                c.call(Verb::Get, &with_query("/usage", &q), None)
            }
            UsageCmd::Summary { group_by, filter } => {
                let mut q = vec![("groupBy", group_by)];
                q.extend(filter.pairs());
                c.call(Verb::Get, &with_query("/usage/summary", &q), None)
            }
        },
        Command::Credits(cmd) => match cmd {
            CreditsCmd::Get => c.call(Verb::Get, "/credits", None),
            CreditsCmd::Add { usd } => c.call(Verb::Post, "/credits", Some(json!({ "addUsd": usd }))),
            CreditsCmd::Enable => c.call(Verb::Patch, "/credits", Some(json!({ "enabled": true }))),
            CreditsCmd::Disable => c.call(Verb::Patch, "/credits", Some(json!({ "enabled": false }))),
        },
        Command::Prices(cmd) => match cmd {
            PricesCmd::List => c.call(Verb::Get, "/prices", None),
            PricesCmd::Set { model, input, output, cached } => {
                let mut b = Map::new();
                b.insert("inputPerMillionUsd".into(), json!(input));
                b.insert("outputPerMillionUsd".into(), json!(output));
                if let Some(x) = cached {
                    b.insert("cachedInputPerMillionUsd".into(), json!(x));
                }
                c.call(Verb::Put, &price_path(&model)?, Some(Value::Object(b)))
            }
            PricesCmd::Delete { model } => {
                c.call(Verb::Delete, &price_path(&model)?, None)?;
                Ok(Some(json!({ "price": model, "deleted": true })))
            }
        },
        Command::AlertWebhooks(cmd) => match cmd {
            AlertWebhooksCmd::Create { url, config, settings, disabled } => {
                let mut b = Map::new();
                b.insert("url".into(), Value::String(url));
                put_opt(&mut b, "configurationId", config);
                settings.fill(&mut b)?;
                if disabled {
                    b.insert("enabled".into(), Value::Bool(false));
                }
                c.call(Verb::Post, "/alert-webhooks", Some(Value::Object(b)))
            }
            AlertWebhooksCmd::List(a) => c.call(Verb::Get, &list_path("/alert-webhooks", &a), None),
            AlertWebhooksCmd::Get { id } => c.call(Verb::Get, &format!("/alert-webhooks/{}", seg(&id)?), None),
            AlertWebhooksCmd::Update { id, url, config, no_config, settings, disable, enable } => {
                let mut b = Map::new();
                put_opt(&mut b, "url", url);
                put_opt(&mut b, "configurationId", config);
                if no_config {
                    b.insert("configurationId".into(), Value::Null);
                }
                settings.fill(&mut b)?;
                if disable || enable {
                    b.insert("enabled".into(), Value::Bool(enable));
                }
                c.call(Verb::Patch, &format!("/alert-webhooks/{}", seg(&id)?), Some(Value::Object(b)))
            }
            AlertWebhooksCmd::Delete { id } => {
                c.call(Verb::Delete, &format!("/alert-webhooks/{}", seg(&id)?), None)?;
                Ok(deleted(&id))
            }
            AlertWebhooksCmd::Deliveries { id, page } => {
                let base = format!("/alert-webhooks/{}/deliveries", seg(&id)?);
                c.call(Verb::Get, &list_path(&base, &page), None)
            }
        },
        Command::ApiKeys(cmd) => match cmd {
            ApiKeysCmd::Create { name, role } => {
                c.call(Verb::Post, "/api-keys", Some(json!({ "name": name, "role": role })))
            }
            ApiKeysCmd::List(a) => c.call(Verb::Get, &list_path("/api-keys", &a), None),
            ApiKeysCmd::Get { id } => c.call(Verb::Get, &format!("/api-keys/{}", seg(&id)?), None),
            ApiKeysCmd::Update { id, name, role } => {
                let mut b = Map::new();
                put_opt(&mut b, "name", name);
                put_opt(&mut b, "role", role);
                c.call(Verb::Patch, &format!("/api-keys/{}", seg(&id)?), Some(Value::Object(b)))
            }
            ApiKeysCmd::Delete { id } => {
                c.call(Verb::Delete, &format!("/api-keys/{}", seg(&id)?), None)?;
                Ok(deleted(&id))
            }
            ApiKeysCmd::Rotate { id } => c.call(Verb::Post, &format!("/api-keys/{}/rotate", seg(&id)?), None),
        },
        Command::Whoami => c.call(Verb::Get, "/whoami", None),
        Command::AuditLog(a) => {
            let mut q: Vec<(&str, String)> =
                [("actor", a.actor), ("resourceId", a.resource), ("since", a.since), ("until", a.until)]
                    .into_iter()
                    .filter_map(|(k, v)| v.map(|v| (k, v)))
                    .collect();
            if let Some(l) = a.page.limit {
                q.push(("limit", l.to_string()));
            }
            if let Some(b) = a.page.before_id {
                q.push(("beforeId", b));
            }
            c.call(Verb::Get, &with_query("/audit-log", &q), None)
        }
    }
}
