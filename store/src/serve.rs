//! `keygate serve`: secrets, storage, both listeners, graceful shutdown.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::api::{gateway_app, management_app, AppState};
use crate::crypto::{parse_key, Cipher};
use crate::ids::{is_management_token, random_hex, MANAGEMENT_TOKEN_PREFIX};
use crate::policy::audit::AuditRetention;
use crate::policy::retention::{self, Retention};
use crate::storage::{Backend, Options};
use crate::webhooks::{self, AlertSettings};

#[derive(Clone)]
pub struct ServeConfig {
    pub data_dir: PathBuf,
    /// PostgreSQL instead of SQLite (`KEYGATE_DATABASE_URL`).
    pub database_url: Option<String>,
    /// A CA bundle to trust for PostgreSQL's TLS (`KEYGATE_DATABASE_CA`).
    pub database_ca: Option<PathBuf>,
    pub bind: IpAddr,
    pub api_port: u16,
    pub lookup_port: u16,
    pub admin_token: Option<String>,
    pub master_key: Option<String>,
    pub gateway_token: Option<String>,
    /// Days usage records are kept (`KEYGATE_USAGE_RETENTION_DAYS`; 0 =
    /// forever; 1 to 31 are refused, see [`crate::policy::retention`]).
    pub usage_retention_days: u32,
    /// How alert webhooks are called (`KEYGATE_ALERT_*`).
    pub alerts: AlertSettings,
    /// Days audit-log entries are kept (`KEYGATE_AUDIT_RETENTION_DAYS`; 0 =
    /// forever).
    pub audit_retention_days: u32,
    /// Mark the console's cookies `Secure` whatever the request says
    /// (`KEYGATE_CONSOLE_SECURE_COOKIE`: the console is reached over TLS).
    pub console_secure_cookie: bool,
}

impl std::fmt::Debug for ServeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServeConfig")
            .field("data_dir", &self.data_dir)
            .field("bind", &self.bind)
            .field("api_port", &self.api_port)
            .field("lookup_port", &self.lookup_port)
            .field("usage_retention_days", &self.usage_retention_days)
            .field("alerts", &self.alerts)
            .field("audit_retention_days", &self.audit_retention_days)
            .finish_non_exhaustive()
    }
}

/// Reads a secret file, or creates it (mode 0600) with `generate()`.
/// Returns the secret and whether it was just created.
fn load_or_create_secret(path: &Path, generate: impl FnOnce() -> io::Result<String>) -> io::Result<(String, bool)> {
    match read_secret(path) {
        Ok(s) => Ok((s, false)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let secret = generate()?;
            // Write a temporary file, then link it into place: a crash never
            // leaves a half-written secret, and a concurrent creator wins cleanly.
            let tmp = path.with_extension(format!("tmp-{}", random_hex(6)?));
            let written = (|| {
                let mut f = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
                f.write_all(secret.as_bytes())?;
                f.write_all(b"\n")?;
                f.sync_all()
            })();
            let linked = written.and_then(|()| fs::hard_link(&tmp, path));
            let _ = fs::remove_file(&tmp);
            match linked {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return read_secret(path).map(|s| (s, false)),
                Err(e) => return Err(e),
            }
            if let Some(dir) = path.parent() {
                fs::File::open(dir)?.sync_all()?;
            }
            Ok((secret, true))
        }
        Err(e) => Err(e),
    }
}

fn read_secret(path: &Path) -> io::Result<String> {
    let s = fs::read_to_string(path)?;
    let s = s.trim().to_string();
    if s.is_empty() {
        return Err(io::Error::other(format!("{} is empty", path.display())));
    }
    if let Ok(meta) = fs::metadata(path) {
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(file = %path.display(), "secret file is readable by group or others; chmod 600 it");
        }
    }
    Ok(s)
}

fn fail(what: &str, e: impl std::fmt::Display) -> String {
    format!("{what}: {e}")
}

/// The three secrets and the opened store.
pub struct Prepared {
    pub state: AppState,
}

/// Creates the data directory (mode 0700) if it is missing.
fn prepare_data_dir(data_dir: &Path) -> Result<(), String> {
    if !data_dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(data_dir)
            .map_err(|e| fail(&format!("creating {}", data_dir.display()), e))?;
    } else if let Ok(meta) = fs::metadata(data_dir) {
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(dir = %data_dir.display(), "the data directory is accessible to group or others; chmod 700 it");
        }
    }
    Ok(())
}

/// The database of a data directory and `KEYGATE_DATABASE_URL` (with
/// `KEYGATE_DATABASE_CA`): a SQLite file is created (mode 0600, the data
/// directory 0700) before it is opened.
pub fn backend(data_dir: &Path, database_url: Option<&str>, database_ca: Option<&Path>) -> Result<Backend, String> {
    let backend = Backend::select(database_url, database_ca, data_dir);
    if let Backend::Sqlite(db) = &backend {
        prepare_data_dir(data_dir)?;
        // Create the database file 0600 ourselves: SQLite gives -wal and -shm
        // the same permissions.
        if let Err(e) = OpenOptions::new().write(true).create_new(true).mode(0o600).open(db) {
            if e.kind() != io::ErrorKind::AlreadyExists {
                return Err(fail(&db.display().to_string(), e));
            }
        }
    }
    Ok(backend)
}

/// `keygate migrate`: applies the pending schema migrations; returns them.
pub fn migrate(data_dir: &Path, database_url: Option<&str>, database_ca: Option<&Path>) -> Result<Vec<i64>, String> {
    let backend = backend(data_dir, database_url, database_ca)?;
    backend.migrate().map_err(|e| fail(&backend.describe(), e))
}

/// Creates the data directory, resolves the secrets and opens the database.
pub fn prepare(cfg: &ServeConfig) -> Result<Prepared, String> {
    prepare_data_dir(&cfg.data_dir)?;

    let master_key = match &cfg.master_key {
        Some(k) => parse_key(k).map_err(|e| fail("KEYGATE_MASTER_KEY", e))?,
        None => {
            let path = cfg.data_dir.join("master.key");
            let (hex_key, _) =
                load_or_create_secret(&path, || random_hex(32)).map_err(|e| fail(&path.display().to_string(), e))?;
            parse_key(&hex_key).map_err(|e| fail(&path.display().to_string(), e))?
        }
    };
    let cipher = Cipher::new(&master_key);
    // The console's cookie key is derived from the master key: replicas that
    // share the data share it too.
    let console = crate::console::Config::new(&master_key, cfg.console_secure_cookie);

    let admin_token = match &cfg.admin_token {
        Some(t) if !t.trim().is_empty() => t.trim().to_string(),
        Some(_) => return Err("KEYGATE_ADMIN_TOKEN is set but empty".into()),
        None => {
            let path = cfg.data_dir.join("admin-token");
            let (token, created) = load_or_create_secret(&path, || random_hex(32).map(|h| format!("kgadmin-{h}")))
                .map_err(|e| fail(&path.display().to_string(), e))?;
            if created {
                eprintln!(
                    "keygate: generated the admin token (saved to {}, mode 0600; shown only this once):\n{token}",
                    path.display()
                );
            }
            token
        }
    };

    let gateway_token = match &cfg.gateway_token {
        Some(t) if !t.trim().is_empty() => t.trim().to_string(),
        Some(_) => return Err("KEYGATE_GATEWAY_TOKEN is set but empty".into()),
        None => {
            let path = cfg.data_dir.join("gateway-token");
            load_or_create_secret(&path, || random_hex(32).map(|h| format!("kggw-{h}")))
                .map_err(|e| fail(&path.display().to_string(), e))?
                .0
        }
    };
    if admin_token == gateway_token {
        return Err("the admin token and the gateway token must differ".into());
    }
    if keygate_proto::token::validate(&admin_token).is_ok() || keygate_proto::token::validate(&gateway_token).is_ok() {
        return Err("the admin and gateway tokens must not look like access keys (kg-...)".into());
    }
    if is_management_token(&admin_token) || is_management_token(&gateway_token) {
        return Err(format!(
            "the admin and gateway tokens must not look like management API keys ({MANAGEMENT_TOKEN_PREFIX}...)"
        ));
    }

    let backend = backend(&cfg.data_dir, cfg.database_url.as_deref(), cfg.database_ca.as_deref())?;
    let store = backend.open(cipher, Options::default()).map_err(|e| fail(&backend.describe(), e))?;
    Ok(Prepared { state: AppState::new(store, &admin_token, &gateway_token).with_console(console) })
}

/// Waits for SIGINT or SIGTERM. The handlers are installed before this
/// returns its future, so a signal sent right after "ready" is not missed.
fn shutdown_signal(tx: watch::Sender<bool>) -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let int = signal(SignalKind::interrupt());
    let term = signal(SignalKind::terminate());
    async move {
        let (mut int, mut term) = match (int, term) {
            (Ok(i), Ok(t)) => (i, t),
            (Err(e), _) | (_, Err(e)) => {
                tracing::error!(error = %e, "cannot listen for SIGINT/SIGTERM");
                std::future::pending::<()>().await;
                return;
            }
        };
        tokio::select! {
            _ = int.recv() => {},
            _ = term.recv() => {},
        }
        tracing::info!("shutting down");
        let _ = tx.send(true);
    }
}

/// How often expired reservations are released (reserve calls also do it).
const SWEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// Releases reservations that were not settled in time, once a minute.
async fn sweep_reservations(state: AppState) {
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = crate::api::run(&state, |s| s.sweep_reservations()).await {
            tracing::warn!(error = ?e, "reservation sweep failed");
        }
    }
}

/// Deletes the web console's sessions past their absolute or idle expiry
/// (`policy::sessions`); returns how many. Every replica sweeps the shared
/// table; an expired session is refused before the sweep comes anyway.
pub async fn purge_console_sessions(state: &AppState, now_ms: i64) -> Result<usize, crate::error::ApiError> {
    let expired = crate::policy::sessions::Expired::at(now_ms);
    crate::api::run(state, move |s| s.purge_console_sessions(expired)).await
}

/// Deletes expired console sessions, once a minute.
async fn sweep_console_sessions(state: AppState) {
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match purge_console_sessions(&state, crate::ids::now_ms()).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(deleted = n, "deleted expired console sessions"),
            Err(e) => tracing::warn!(error = ?e, "console session sweep failed"),
        }
    }
}

/// Deletes the usage records past `retention` (and free of reservations, see
/// [`crate::policy::retention`]), `batch` per transaction, at most
/// `max_batches` transactions; returns how many. Other writes run between
/// the batches.
pub async fn purge_usage(
    state: &AppState,
    retention: Retention,
    now_ms: i64,
    batch: usize,
    max_batches: usize,
) -> Result<usize, crate::error::ApiError> {
    let cutoff = retention.cutoff_ms(now_ms);
    purge_in_batches(state, batch, max_batches, move |s| s.purge_usage(cutoff, batch)).await
}

/// Deletes usage records past retention, once a minute (beside the
/// reservation sweep).
async fn sweep_usage(state: AppState, retention: Retention) {
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match purge_usage(&state, retention, crate::ids::now_ms(), retention::BATCH, retention::MAX_BATCHES).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted = n, days = retention.days(), "deleted usage records past retention"),
            Err(e) => tracing::warn!(error = ?e, "usage retention sweep failed"),
        }
    }
}

/// Deletes the audit-log entries past `retention`, `batch` per transaction,
/// at most `max_batches` transactions; returns how many.
pub async fn purge_audit(
    state: &AppState,
    retention: AuditRetention,
    now_ms: i64,
    batch: usize,
    max_batches: usize,
) -> Result<usize, crate::error::ApiError> {
    let cutoff = retention.cutoff_ms(now_ms);
    purge_in_batches(state, batch, max_batches, move |s| s.purge_audit(cutoff, batch)).await
}

/// Runs `purge` (one transaction deleting at most `batch` rows) until it
/// deletes fewer than `batch`, at most `max_batches` times; returns how many
/// rows went. Other writes run between the batches.
async fn purge_in_batches<F>(
    state: &AppState,
    batch: usize,
    max_batches: usize,
    purge: F,
) -> Result<usize, crate::error::ApiError>
where
    F: Fn(&dyn crate::storage::Store) -> crate::error::StoreResult<usize> + Clone + Send + 'static,
{
    let mut deleted = 0;
    for _ in 0..max_batches {
        let purge = purge.clone();
        let n = crate::api::run(state, move |s| purge(s)).await?;
        deleted += n;
        if n < batch {
            break;
        }
    }
    Ok(deleted)
}

/// Deletes audit-log entries past retention, once a minute.
async fn sweep_audit(state: AppState, retention: AuditRetention) {
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match purge_audit(&state, retention, crate::ids::now_ms(), retention::BATCH, retention::MAX_BATCHES).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted = n, days = retention.days(), "deleted audit-log entries past retention"),
            Err(e) => tracing::warn!(error = ?e, "audit-log retention sweep failed"),
        }
    }
}

/// Runs the store until SIGTERM/SIGINT.
pub async fn serve(cfg: ServeConfig) -> Result<(), String> {
    let retention = Retention::from_days(cfg.usage_retention_days)?;
    let prepared = {
        let cfg = cfg.clone();
        tokio::task::spawn_blocking(move || prepare(&cfg)).await.map_err(|e| e.to_string())??
    };
    let api = TcpListener::bind(SocketAddr::new(cfg.bind, cfg.api_port))
        .await
        .map_err(|e| fail(&format!("binding the management API to {}:{}", cfg.bind, cfg.api_port), e))?;
    let lookup = TcpListener::bind(SocketAddr::new(cfg.bind, cfg.lookup_port))
        .await
        .map_err(|e| fail(&format!("binding the lookup API to {}:{}", cfg.bind, cfg.lookup_port), e))?;
    let api_addr = api.local_addr().map_err(|e| e.to_string())?;
    let lookup_addr = lookup.local_addr().map_err(|e| e.to_string())?;

    let (tx, rx) = watch::channel(false);
    let wait = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    tokio::spawn(sweep_reservations(prepared.state.clone()));
    tokio::spawn(sweep_console_sessions(prepared.state.clone()));
    if let Some(retention) = retention {
        tokio::spawn(sweep_usage(prepared.state.clone(), retention));
    }
    tokio::spawn(webhooks::sweep(prepared.state.clone(), SWEEP_EVERY));
    tokio::spawn(webhooks::worker(prepared.state.clone(), cfg.alerts));
    if let Some(retention) = AuditRetention::from_days(cfg.audit_retention_days) {
        tokio::spawn(sweep_audit(prepared.state.clone(), retention));
    }
    let api_server = axum::serve(api, management_app(prepared.state.clone())).with_graceful_shutdown(wait(rx.clone()));
    let lookup_server = axum::serve(lookup, gateway_app(prepared.state)).with_graceful_shutdown(wait(rx));
    tokio::spawn(shutdown_signal(tx));

    println!("keygate store ready: api={api_addr} lookup={lookup_addr} data={}", cfg.data_dir.display());
    let _ = io::stdout().flush();
    tracing::info!(api = %api_addr, lookup = %lookup_addr, "keygate store ready");

    let (a, b) = tokio::join!(api_server, lookup_server);
    a.map_err(|e| fail("management API", e))?;
    b.map_err(|e| fail("lookup API", e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_created_once_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let (a, created) = load_or_create_secret(&path, || Ok("one".into())).unwrap();
        assert!(created);
        let (b, created) = load_or_create_secret(&path, || Ok("two".into())).unwrap();
        assert!(!created);
        assert_eq!((a.as_str(), b.as_str()), ("one", "one"));
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    }

    #[test]
    fn prepare_generates_distinct_secrets() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = ServeConfig {
            data_dir: dir.path().join("data"),
            database_url: None,
            database_ca: None,
            bind: IpAddr::from([127, 0, 0, 1]),
            api_port: 0,
            lookup_port: 0,
            admin_token: None,
            master_key: None,
            gateway_token: None,
            usage_retention_days: retention::DEFAULT_DAYS,
            alerts: AlertSettings::default(),
            audit_retention_days: crate::policy::audit::DEFAULT_RETENTION_DAYS,
            console_secure_cookie: false,
        };
        let prepared = prepare(&cfg).map_err(|e| e.to_string()).unwrap();
        assert_eq!(fs::metadata(&cfg.data_dir).unwrap().permissions().mode() & 0o777, 0o700);
        for f in ["admin-token", "gateway-token", "master.key", "keygate.db", "keygate.db-wal"] {
            let p = cfg.data_dir.join(f);
            assert_eq!(fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600, "{f}");
        }
        let admin = fs::read_to_string(cfg.data_dir.join("admin-token")).unwrap();
        let gw = fs::read_to_string(cfg.data_dir.join("gateway-token")).unwrap();
        assert_ne!(admin, gw);
        drop(prepared);
        // A different master key is refused rather than silently breaking decryption.
        let other = ServeConfig { master_key: Some("11".repeat(32)), ..cfg.clone() };
        assert!(prepare(&other).is_err());
        let same = ServeConfig { gateway_token: Some(admin.trim().to_string()), ..cfg.clone() };
        assert!(prepare(&same).is_err());
        // Neither token may have the form of a management key.
        let like_mgmt = ServeConfig { admin_token: Some(format!("kgm_{}", "0".repeat(48))), ..cfg };
        assert!(prepare(&like_mgmt).err().unwrap().contains("management API keys"));
    }

    #[tokio::test]
    async fn a_retention_shorter_than_a_month_is_refused_before_anything_starts() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = ServeConfig {
            data_dir: dir.path().join("data"),
            database_url: None,
            database_ca: None,
            bind: IpAddr::from([127, 0, 0, 1]),
            api_port: 0,
            lookup_port: 0,
            admin_token: None,
            master_key: None,
            gateway_token: None,
            usage_retention_days: 7,
            alerts: AlertSettings::default(),
            audit_retention_days: 0,
            console_secure_cookie: false,
        };
        let e = serve(cfg).await.unwrap_err();
        assert!(e.starts_with("KEYGATE_USAGE_RETENTION_DAYS=7 is shorter than the longest budget window"), "{e}");
        assert!(!dir.path().join("data").exists(), "nothing was created");
    }
}
