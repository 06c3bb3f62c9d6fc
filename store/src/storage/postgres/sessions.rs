//! The web console's sessions on PostgreSQL (migration 9): the same table
//! and statements as on SQLite. Every replica reads and writes the same rows,
//! so a session opened on one is open on all, and ends on all at sign-out.

use postgres::Transaction;

use super::error::R;
use super::one;
use crate::storage::rows;
use crate::storage::{ExpiredSessions, SessionRow};

/// Migration 9 (see the SQLite schema for the columns).
pub(super) const SCHEMA: &str = r#"
CREATE TABLE console_sessions (
    id                TEXT COLLATE "C" PRIMARY KEY,
    actor             TEXT COLLATE "C" NOT NULL,
    credential_digest TEXT COLLATE "C" NOT NULL,
    csrf              TEXT COLLATE "C" NOT NULL,
    created_ms        BIGINT NOT NULL,
    expires_ms        BIGINT NOT NULL,
    seen_ms           BIGINT NOT NULL,
    reveal_nonce      TEXT COLLATE "C"
);
"#;

pub(super) fn create(tx: &mut Transaction<'_>, s: &SessionRow) -> R<()> {
    tx.execute(
        "INSERT INTO console_sessions(id, actor, credential_digest, csrf, created_ms, expires_ms, seen_ms)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
        &[&s.id, &s.actor, &s.credential_digest, &s.csrf, &s.created_ms, &s.expires_ms, &s.seen_ms],
    )?;
    Ok(())
}

pub(super) fn get(tx: &mut Transaction<'_>, id: &str) -> R<Option<SessionRow>> {
    let sql = format!("SELECT {} WHERE id = $1", rows::SESSION_COLS);
    one(tx, &sql, id, rows::session)
}

pub(super) fn touch(tx: &mut Transaction<'_>, id: &str, now_ms: i64, touch_before_ms: i64) -> R<()> {
    tx.execute(
        "UPDATE console_sessions SET seen_ms = $2 WHERE id = $1 AND seen_ms <= $3",
        &[&id, &now_ms, &touch_before_ms],
    )?;
    Ok(())
}

pub(super) fn delete(tx: &mut Transaction<'_>, id: &str) -> R<bool> {
    Ok(tx.execute("DELETE FROM console_sessions WHERE id = $1", &[&id])? > 0)
}

pub(super) fn set_reveal(tx: &mut Transaction<'_>, id: &str, nonce: &str) -> R<bool> {
    Ok(tx.execute("UPDATE console_sessions SET reveal_nonce = $2 WHERE id = $1", &[&id, &nonce])? > 0)
}

pub(super) fn take_reveal(tx: &mut Transaction<'_>, id: &str, nonce: &str) -> R<bool> {
    Ok(tx.execute(
        "UPDATE console_sessions SET reveal_nonce = NULL WHERE id = $1 AND reveal_nonce = $2",
        &[&id, &nonce],
    )? > 0)
}

pub(super) fn purge(tx: &mut Transaction<'_>, e: ExpiredSessions) -> R<u64> {
    Ok(tx.execute(
        "DELETE FROM console_sessions WHERE expires_ms <= $1 OR seen_ms <= $2",
        &[&e.now_ms, &e.idle_before_ms],
    )?)
}
