//! The SQLite backend's own errors: a database error, or a store error raised
//! on the way. Only the backend knows `rusqlite`; at the `Store` boundary both
//! become a [`StoreError`] (a database error is an internal error).

use crate::crypto::CryptoError;
use crate::error::StoreError;

#[derive(Debug)]
pub(crate) enum DbError {
    Sql(rusqlite::Error),
    Store(StoreError),
}

/// Results inside the backend.
pub(crate) type R<T> = Result<T, DbError>;

/// A database error as the store reports it.
fn db(e: rusqlite::Error) -> StoreError {
    StoreError::Internal(format!("sqlite: {e}"))
}

impl From<DbError> for StoreError {
    fn from(e: DbError) -> Self {
        match e {
            DbError::Sql(e) => db(e),
            DbError::Store(e) => e,
        }
    }
}

impl From<rusqlite::Error> for DbError {
    fn from(e: rusqlite::Error) -> Self {
        DbError::Sql(e)
    }
}

impl From<StoreError> for DbError {
    fn from(e: StoreError) -> Self {
        DbError::Store(e)
    }
}

impl From<serde_json::Error> for DbError {
    fn from(e: serde_json::Error) -> Self {
        DbError::Store(e.into())
    }
}

impl From<std::io::Error> for DbError {
    fn from(e: std::io::Error) -> Self {
        DbError::Store(e.into())
    }
}

impl From<CryptoError> for DbError {
    fn from(e: CryptoError) -> Self {
        DbError::Store(e.into())
    }
}
