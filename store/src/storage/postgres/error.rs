//! The PostgreSQL backend's own errors: a database error, or a store error
//! raised on the way. Only the backend knows `postgres`; at the `Store`
//! boundary both become a [`StoreError`] (a database error is an internal
//! error). Serialization failures and deadlocks are retried by the backend.

use postgres::error::SqlState;

use crate::crypto::CryptoError;
use crate::error::StoreError;

/// `e` and its causes: the `postgres` crate's errors name only their kind
/// ("db error", "error performing TLS handshake") and keep the reason (the
/// server's message, the certificate's fault) as their source.
pub(crate) fn full(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        // A server error prints its DETAIL, which may quote a row (a token
        // digest, a sealed secret): only its code and message are kept.
        let c_text = match c.downcast_ref::<postgres::error::DbError>() {
            Some(db) => format!("{} ({})", db.message(), db.code().code()),
            None => c.to_string(),
        };
        if !s.contains(&c_text) {
            s.push_str(": ");
            s.push_str(&c_text);
        }
        cause = c.source();
    }
    s
}

#[derive(Debug)]
pub(crate) enum PgError {
    Sql(postgres::Error),
    Pool(r2d2::Error),
    Store(StoreError),
}

/// Results inside the backend.
pub(crate) type R<T> = Result<T, PgError>;

impl PgError {
    /// A conflict with a concurrent transaction: the whole transaction may be run again.
    pub(super) fn is_retryable(&self) -> bool {
        match self {
            PgError::Sql(e) => {
                matches!(e.code(), Some(c) if *c == SqlState::T_R_SERIALIZATION_FAILURE || *c == SqlState::T_R_DEADLOCK_DETECTED)
            }
            _ => false,
        }
    }
}

impl From<PgError> for StoreError {
    fn from(e: PgError) -> Self {
        match e {
            PgError::Sql(e) => StoreError::Internal(format!("postgres: {}", full(&e))),
            PgError::Pool(e) => StoreError::Internal(format!("postgres pool: {e}")),
            PgError::Store(e) => e,
        }
    }
}

impl From<postgres::Error> for PgError {
    fn from(e: postgres::Error) -> Self {
        PgError::Sql(e)
    }
}

impl From<r2d2::Error> for PgError {
    fn from(e: r2d2::Error) -> Self {
        PgError::Pool(e)
    }
}

impl From<StoreError> for PgError {
    fn from(e: StoreError) -> Self {
        PgError::Store(e)
    }
}

impl From<serde_json::Error> for PgError {
    fn from(e: serde_json::Error) -> Self {
        PgError::Store(e.into())
    }
}

impl From<std::io::Error> for PgError {
    fn from(e: std::io::Error) -> Self {
        PgError::Store(e.into())
    }
}

impl From<CryptoError> for PgError {
    fn from(e: CryptoError) -> Self {
        PgError::Store(e.into())
    }
}
