//! The web console's sessions on SQLite (migration 9). Statements only; the
//! rules (expiry, refresh, sweep) are in `crate::policy::sessions`.

use rusqlite::{params, Transaction};

use super::error::R;
use super::first;
use crate::storage::rows;
use crate::storage::{ExpiredSessions, SessionRow};

/// Migration 9. `id` is the SHA-256 digest of the session token (the cookie
/// holds the token); no column holds a credential. `reveal_nonce`: the
/// token or secret on its way to the page that shows it once (the value
/// travels sealed in a cookie; this row only says it has not been shown).
pub(super) const SCHEMA: &str = r#"
CREATE TABLE console_sessions (
    id                TEXT PRIMARY KEY,
    actor             TEXT NOT NULL,
    credential_digest TEXT NOT NULL,
    csrf              TEXT NOT NULL,
    created_ms        INTEGER NOT NULL,
    expires_ms        INTEGER NOT NULL,
    seen_ms           INTEGER NOT NULL,
    reveal_nonce      TEXT
);
"#;

pub(super) fn create(tx: &Transaction<'_>, s: &SessionRow) -> R<()> {
    tx.prepare_cached(
        "INSERT INTO console_sessions(id, actor, credential_digest, csrf, created_ms, expires_ms, seen_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![s.id, s.actor, s.credential_digest, s.csrf, s.created_ms, s.expires_ms, s.seen_ms])?;
    Ok(())
}

pub(super) fn get(tx: &Transaction<'_>, id: &str) -> R<Option<SessionRow>> {
    let sql = format!("SELECT {} WHERE id = ?1", rows::SESSION_COLS);
    first(tx, &sql, params![id], |r| rows::session(r))
}

pub(super) fn touch(tx: &Transaction<'_>, id: &str, now_ms: i64, touch_before_ms: i64) -> R<()> {
    tx.prepare_cached("UPDATE console_sessions SET seen_ms = ?2 WHERE id = ?1 AND seen_ms <= ?3")?.execute(params![
        id,
        now_ms,
        touch_before_ms
    ])?;
    Ok(())
}

pub(super) fn delete(tx: &Transaction<'_>, id: &str) -> R<bool> {
    Ok(tx.prepare_cached("DELETE FROM console_sessions WHERE id = ?1")?.execute(params![id])? > 0)
}

pub(super) fn set_reveal(tx: &Transaction<'_>, id: &str, nonce: &str) -> R<bool> {
    Ok(tx.prepare_cached("UPDATE console_sessions SET reveal_nonce = ?2 WHERE id = ?1")?.execute(params![id, nonce])?
        > 0)
}

pub(super) fn take_reveal(tx: &Transaction<'_>, id: &str, nonce: &str) -> R<bool> {
    Ok(tx
        .prepare_cached("UPDATE console_sessions SET reveal_nonce = NULL WHERE id = ?1 AND reveal_nonce = ?2")?
        .execute(params![id, nonce])?
        > 0)
}

pub(super) fn purge(tx: &Transaction<'_>, e: ExpiredSessions) -> R<usize> {
    Ok(tx
        .prepare_cached("DELETE FROM console_sessions WHERE expires_ms <= ?1 OR seen_ms <= ?2")?
        .execute(params![e.now_ms, e.idle_before_ms])?)
}
