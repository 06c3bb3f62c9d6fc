//! Management API keys and the audit log on SQLite.

use rusqlite::{params, Transaction};

use super::error::R;
use super::{all, first};
use crate::ids::{new_id, now_ms};
use crate::model::{ApiKey, AuditEntry};
use crate::policy::references::{not_found, Resource};
use crate::storage::rows::{self, limit_i64};
use crate::storage::update::Assignments;
use crate::storage::{ApiKeyAuth, ApiKeyChanges, Audit, AuditFilter, NewApiKey, PageRequest, API_KEY_TOUCH_MS};

/// Writes `audit` (in the transaction of the change it describes);
/// `created` is the id of the resource the change created, if any.
pub(super) fn record(tx: &Transaction<'_>, audit: &Audit, created: Option<&str>) -> R<()> {
    tx.prepare_cached(
        "INSERT INTO audit_log(id, at_ms, actor, via, action, resource_type, resource_id, changes_json)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?
    .execute(params![
        new_id("al_")?,
        now_ms(),
        audit.actor(),
        audit.via().as_str(),
        audit.action(),
        audit.resource_type(),
        audit.resource_id(created),
        audit.changes_json()
    ])?;
    Ok(())
}

pub(super) fn list_audit(tx: &Transaction<'_>, f: &AuditFilter, page: &PageRequest) -> R<Vec<AuditEntry>> {
    let (sql, args) = audit_list_query(f, page);
    all(tx, &sql, rusqlite::params_from_iter(args.iter()), |r| rows::audit_entry(r))
}

/// The statement and arguments of a page of the audit log: a condition for
/// each filter given and none for the others, so that SQLite can read the
/// index of the filter (`audit_log_actor`, `audit_log_resource`: both
/// `(…, id)`, so the page comes in id order without sorting). A condition
/// like `(?4 IS NULL OR actor = ?4)` would hide the index from the planner
/// and scan the whole table.
pub(super) fn audit_list_query(f: &AuditFilter, page: &PageRequest) -> (String, Vec<rusqlite::types::Value>) {
    use rusqlite::types::Value;
    let mut conds: Vec<String> = Vec::new();
    let mut args: Vec<Value> = Vec::new();
    let mut cond = |c: &str, v: Value| {
        args.push(v);
        conds.push(format!("{c} ?{}", args.len()));
    };
    if let Some(actor) = &f.actor {
        cond("actor =", Value::Text(actor.clone()));
    }
    if let Some(resource) = &f.resource_id {
        cond("resource_id =", Value::Text(resource.clone()));
    }
    if let Some(before) = &page.before_id {
        cond("id <", Value::Text(before.clone()));
    }
    if let Some(since) = f.since_ms {
        cond("at_ms >=", Value::Integer(since));
    }
    if let Some(until) = f.until_ms {
        cond("at_ms <", Value::Integer(until));
    }
    let mut sql = format!("SELECT {}", rows::AUDIT_COLS);
    if !conds.is_empty() {
        sql.push_str(" WHERE ");
        sql.push_str(&conds.join(" AND "));
    }
    args.push(Value::Integer(limit_i64(page)));
    sql.push_str(&format!(" ORDER BY id DESC LIMIT ?{}", args.len()));
    (sql, args)
}

pub(super) fn purge_audit(tx: &Transaction<'_>, before_ms: i64, limit: usize) -> R<usize> {
    Ok(tx
        .prepare_cached(
            "DELETE FROM audit_log WHERE id IN (SELECT id FROM audit_log WHERE at_ms < ?1 ORDER BY at_ms LIMIT ?2)",
        )?
        .execute(params![before_ms, i64::try_from(limit).unwrap_or(i64::MAX)])?)
}

pub(super) fn get_api_key(tx: &Transaction<'_>, id: &str) -> R<ApiKey> {
    let sql = format!("SELECT {} WHERE id = ?1", rows::API_KEY_COLS);
    Ok(first(tx, &sql, params![id], |r| rows::api_key(r))?.ok_or_else(|| not_found(Resource::ApiKey, id))?)
}

pub(super) fn create_api_key(tx: &Transaction<'_>, id: &str, new: &NewApiKey, audit: &Audit) -> R<ApiKey> {
    let now = now_ms();
    tx.execute(
        "INSERT INTO api_keys(id, name, role, digest, token_prefix, created_ms, updated_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)",
        params![id, new.name, new.role.as_str(), new.digest, new.token_prefix, now],
    )?;
    record(tx, audit, Some(id))?;
    get_api_key(tx, id)
}

pub(super) fn list_api_keys(tx: &Transaction<'_>, page: &PageRequest) -> R<Vec<ApiKey>> {
    let sql = format!("SELECT {} WHERE (?1 IS NULL OR id < ?1) ORDER BY id DESC LIMIT ?2", rows::API_KEY_COLS);
    all(tx, &sql, params![page.before_id, limit_i64(page)], |r| rows::api_key(r))
}

pub(super) fn update_api_key(tx: &Transaction<'_>, id: &str, ch: &ApiKeyChanges, audit: &Audit) -> R<ApiKey> {
    get_api_key(tx, id)?;
    let a = Assignments::<rusqlite::types::Value>::default()
        .set_some("name", ch.name.clone())
        .set_some("role", ch.role.map(|r| r.as_str().to_string()))
        .set("updated_ms", now_ms());
    super::execute(a, tx, "api_keys", id)?;
    record(tx, audit, None)?;
    get_api_key(tx, id)
}

pub(super) fn delete_api_key(tx: &Transaction<'_>, id: &str, audit: &Audit) -> R<()> {
    if tx.execute("DELETE FROM api_keys WHERE id = ?1", params![id])? == 0 {
        return Err(not_found(Resource::ApiKey, id).into());
    }
    record(tx, audit, None)
}

pub(super) fn rotate_api_key(
    tx: &Transaction<'_>,
    id: &str,
    digest: &str,
    token_prefix: &str,
    audit: &Audit,
) -> R<ApiKey> {
    let n = tx.execute(
        "UPDATE api_keys SET digest = ?2, token_prefix = ?3, updated_ms = ?4 WHERE id = ?1",
        params![id, digest, token_prefix, now_ms()],
    )?;
    if n == 0 {
        return Err(not_found(Resource::ApiKey, id).into());
    }
    record(tx, audit, None)?;
    get_api_key(tx, id)
}

pub(super) fn api_key_by_digest(tx: &Transaction<'_>, digest: &str) -> R<Option<ApiKeyAuth>> {
    let sql = format!("SELECT {} WHERE digest = ?1", rows::API_KEY_AUTH_COLS);
    first(tx, &sql, params![digest], |r| rows::api_key_auth(r))
}

pub(super) fn touch_api_key(tx: &Transaction<'_>, id: &str, now_ms: i64) -> R<()> {
    tx.prepare_cached(
        "UPDATE api_keys SET last_used_ms = ?2 WHERE id = ?1 AND (last_used_ms IS NULL OR last_used_ms <= ?3)",
    )?
    .execute(params![id, now_ms, now_ms.saturating_sub(API_KEY_TOUCH_MS)])?;
    Ok(())
}
