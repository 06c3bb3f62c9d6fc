//! TLS to PostgreSQL: rustls (the `ring` provider, pure Rust and C/asm built
//! by `cc`: no system OpenSSL, no cmake) through `tokio-postgres-rustls`.
//!
//! # `sslmode`
//!
//! The database URL's `sslmode` decides, as with libpq:
//!
//! * `disable`: no TLS.
//! * `prefer` (the default when the URL names none): TLS when the server
//!   offers it, plain text when it does not.
//! * `require`, `verify-ca`, `verify-full`: TLS or no connection. The store
//!   refuses to start, and a connection lost later is not replaced by a
//!   plain-text one: requests that need the database fail until TLS works.
//!
//! # Certificates
//!
//! Whenever TLS is used, whatever the mode (`prefer` and `require` too), the
//! server's certificate is verified as libpq's `verify-full` does: a chain to
//! a trusted root, and the URL's host name (or IP address) in the
//! certificate. libpq's `require` would encrypt without checking who answers;
//! here a certificate that cannot be verified fails the connection (with
//! `prefer` too: TLS was offered, so it is used, and verified). `verify-ca` is
//! therefore as strict as `verify-full` (the host name is checked too).
//!
//! Trusted roots: Mozilla's (`webpki-roots`, compiled in: the machine's trust
//! store is not read), plus every certificate of the PEM bundle named by
//! `KEYGATE_DATABASE_CA` (a private CA, or the cloud provider's database CA:
//! RDS and Cloud SQL sign with CAs of their own). An unreadable bundle, or
//! one without a certificate, stops the store from starting, whatever the
//! mode.
//!
//! The `postgres` crate parses only `disable`, `prefer` and `require`: the
//! two `verify-*` modes are read as `require` (which, here, verifies fully).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::RootCertStore;
use tokio_postgres_rustls::MakeRustlsConnect;

use super::error::full;
use crate::error::{StoreError, StoreResult};

/// The connector the store uses for every connection, TLS or not.
pub type Tls = MakeRustlsConnect;

/// A PostgreSQL database: its URL (`KEYGATE_DATABASE_URL`) and an extra CA
/// bundle to trust (`KEYGATE_DATABASE_CA`).
#[derive(Clone, Default)]
pub struct PgTarget {
    pub url: String,
    pub ca: Option<PathBuf>,
}

impl std::fmt::Debug for PgTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may carry a password.
        f.debug_struct("PgTarget").field("url", &"<url>").field("ca", &self.ca).finish()
    }
}

impl From<String> for PgTarget {
    fn from(url: String) -> Self {
        PgTarget { url, ca: None }
    }
}

impl From<&str> for PgTarget {
    fn from(url: &str) -> Self {
        PgTarget { url: url.to_string(), ca: None }
    }
}

impl PgTarget {
    pub fn new(url: impl Into<String>, ca: Option<PathBuf>) -> Self {
        PgTarget { url: url.into(), ca: ca.filter(|p| !p.as_os_str().is_empty()) }
    }

    /// The parsed URL (`verify-ca` and `verify-full` read as `require`) and
    /// the TLS connector.
    pub(crate) fn parts(&self) -> StoreResult<(postgres::Config, Tls)> {
        let mut config = parse_url(&self.url)?;
        // A database that stops answering must not hold a pool slot (or a
        // replica's start) forever: bounded connects, TCP keepalives, and a
        // statement bound well past any keygate statement. The URL's own
        // settings win.
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(std::time::Duration::from_secs(5));
        }
        config.keepalives(true).keepalives_idle(std::time::Duration::from_secs(30));
        if config.get_options().is_none() {
            config.options("-c statement_timeout=30000 -c lock_timeout=30000");
        }
        let tls = connector(self.ca.as_deref())?;
        Ok((config, tls))
    }

    /// One connection, as the store makes them (for `keygate copy` and
    /// tests). It blocks: call it off any async runtime.
    pub fn connect(&self) -> StoreResult<postgres::Client> {
        let (config, tls) = self.parts()?;
        config.connect(tls).map_err(|e| StoreError::Internal(format!("postgres: {}", full(&e))))
    }
}

/// Parses a PostgreSQL URL (or `key=value` string), accepting libpq's
/// `sslmode=verify-ca` and `sslmode=verify-full` as `require`.
pub(crate) fn parse_url(url: &str) -> StoreResult<postgres::Config> {
    normalize_sslmode(url)
        .parse::<postgres::Config>()
        .map_err(|e| StoreError::Internal(format!("KEYGATE_DATABASE_URL: {}", full(&e))))
}

fn is_verify(v: &str) -> bool {
    matches!(v, "verify-ca" | "verify-full")
}

/// `url` with `sslmode=verify-ca|verify-full` replaced by `sslmode=require`:
/// in the query of a `postgres://` URL, or as a `key=value` word.
fn normalize_sslmode(url: &str) -> String {
    let url = url.trim();
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let Some((head, query)) = url.split_once('?') else { return url.to_string() };
        let query: Vec<String> = query
            .split('&')
            .map(|kv| match kv.split_once('=') {
                Some(("sslmode", v)) if is_verify(v) => "sslmode=require".to_string(),
                _ => kv.to_string(),
            })
            .collect();
        format!("{head}?{}", query.join("&"))
    } else {
        url.split(' ')
            .map(|w| match w.split_once('=') {
                Some(("sslmode", v)) if is_verify(v) => "sslmode=require",
                _ => w,
            })
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// rustls with the `ring` provider, Mozilla's roots and those of `ca`.
fn connector(ca: Option<&Path>) -> StoreResult<Tls> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca {
        let fail = |e: String| StoreError::Internal(format!("KEYGATE_DATABASE_CA ({}): {e}", path.display()));
        let pem = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
        let mut added = 0;
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|e| fail(format!("not a PEM bundle: {e}")))?;
            roots.add(cert).map_err(|e| fail(format!("a certificate is not usable as a CA: {e}")))?;
            added += 1;
        }
        if added == 0 {
            return Err(fail("no certificate in the file".into()));
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| StoreError::Internal(format!("TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;
    use postgres::config::SslMode;

    fn mode(url: &str) -> SslMode {
        parse_url(url).unwrap().get_ssl_mode()
    }

    #[test]
    fn sslmodes_as_libpq_names_them() {
        assert_eq!(mode("postgres://u:p@h/db"), SslMode::Prefer);
        assert_eq!(mode("postgres://u:p@h/db?sslmode=disable"), SslMode::Disable);
        assert_eq!(mode("postgres://u:p@h/db?sslmode=prefer"), SslMode::Prefer);
        assert_eq!(mode("postgres://u:p@h/db?sslmode=require"), SslMode::Require);
        assert_eq!(mode("postgres://u:p@h/db?sslmode=verify-ca"), SslMode::Require);
        assert_eq!(mode("postgresql://u:p@h/db?connect_timeout=5&sslmode=verify-full"), SslMode::Require);
        assert_eq!(mode("host=h user=u sslmode=verify-full dbname=db"), SslMode::Require);
        assert_eq!(mode("host=h user=u sslmode=disable"), SslMode::Disable);
        assert!(parse_url("postgres://u:p@h/db?sslmode=sometimes").is_err());
        // Only the sslmode parameter is rewritten.
        let c = parse_url("postgres://u:sslmode=verify-full@h/db?sslmode=verify-ca").unwrap();
        assert_eq!(c.get_password(), Some(&b"sslmode=verify-full"[..]));
    }

    #[test]
    fn a_ca_bundle_must_hold_a_certificate() {
        let dir = std::env::temp_dir().join(format!("keygate-ca-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let empty = dir.join("empty.pem");
        let _ = std::fs::write(&empty, "not a certificate\n");
        for path in [empty.as_path(), dir.join("missing.pem").as_path()] {
            let err = PgTarget::new("postgres://u@h/db", Some(path.to_path_buf())).parts().err();
            assert!(err.is_some_and(|e| e.to_string().contains("KEYGATE_DATABASE_CA")), "{}", path.display());
        }
        assert!(PgTarget::new("postgres://u@h/db", None).parts().is_ok());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
