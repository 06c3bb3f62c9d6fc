//! Management API keys and the audit log on PostgreSQL.

use postgres::types::ToSql;
use postgres::Transaction;

use super::error::R;
use super::{execute, one};
use crate::ids::{new_id, now_ms};
use crate::model::{ApiKey, AuditEntry};
use crate::policy::references::{not_found, Resource};
use crate::storage::rows::{self, limit_i64};
use crate::storage::update::Assignments;
use crate::storage::{ApiKeyAuth, ApiKeyChanges, Audit, AuditFilter, NewApiKey, PageRequest, API_KEY_TOUCH_MS};

/// Writes `audit` (in the transaction of the change it describes);
/// `created` is the id of the resource the change created, if any.
pub(super) fn record(tx: &mut Transaction<'_>, audit: &Audit, created: Option<&str>) -> R<()> {
    tx.execute(
        "INSERT INTO audit_log(id, at_ms, actor, via, action, resource_type, resource_id, changes_json)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        &[
            &new_id("al_")?,
            &now_ms(),
            &audit.actor(),
            &audit.via().as_str(),
            &audit.action(),
            &audit.resource_type(),
            &audit.resource_id(created),
            &audit.changes_json(),
        ],
    )?;
    Ok(())
}

pub(super) fn list_audit(tx: &mut Transaction<'_>, f: &AuditFilter, page: &PageRequest) -> R<Vec<AuditEntry>> {
    let limit = limit_i64(page);
    let (sql, mut args) = audit_list_query(f, page);
    args.push(&limit);
    tx.query(&sql, &args)?.iter().map(rows::audit_entry).collect()
}

/// The statement and arguments (but the limit, the last one) of a page of
/// the audit log: a condition for each filter given and none for the
/// others, so that the planner sees the indexes `audit_log_actor` and
/// `audit_log_resource` (`(…, id)`: the page in id order without sorting),
/// as it would not behind `($4::TEXT IS NULL OR actor = $4)`.
pub(super) fn audit_list_query<'a>(f: &'a AuditFilter, page: &'a PageRequest) -> (String, Vec<&'a (dyn ToSql + Sync)>) {
    let mut conds: Vec<String> = Vec::new();
    let mut args: Vec<&'a (dyn ToSql + Sync)> = Vec::new();
    let mut cond = |c: &str, v: &'a (dyn ToSql + Sync)| {
        args.push(v);
        conds.push(format!("{c} ${}", args.len()));
    };
    if let Some(actor) = &f.actor {
        cond("actor =", actor);
    }
    if let Some(resource) = &f.resource_id {
        cond("resource_id =", resource);
    }
    if let Some(before) = &page.before_id {
        cond("id <", before);
    }
    if let Some(since) = &f.since_ms {
        cond("at_ms >=", since);
    }
    if let Some(until) = &f.until_ms {
        cond("at_ms <", until);
    }
    let mut sql = format!("SELECT {}", rows::AUDIT_COLS);
    if !conds.is_empty() {
        sql.push_str(" WHERE ");
        sql.push_str(&conds.join(" AND "));
    }
    sql.push_str(&format!(" ORDER BY id DESC LIMIT ${}", args.len() + 1));
    (sql, args)
}

pub(super) fn purge_audit(tx: &mut Transaction<'_>, before_ms: i64, limit: usize) -> R<u64> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    Ok(tx.execute(
        "DELETE FROM audit_log WHERE id IN (SELECT id FROM audit_log WHERE at_ms < $1 ORDER BY at_ms LIMIT $2)",
        &[&before_ms, &limit],
    )?)
}

pub(super) fn get_api_key(tx: &mut Transaction<'_>, id: &str) -> R<ApiKey> {
    let sql = format!("SELECT {} WHERE id = $1", rows::API_KEY_COLS);
    Ok(one(tx, &sql, id, rows::api_key)?.ok_or_else(|| not_found(Resource::ApiKey, id))?)
}

pub(super) fn create_api_key(tx: &mut Transaction<'_>, id: &str, new: &NewApiKey, audit: &Audit) -> R<ApiKey> {
    let now = now_ms();
    tx.execute(
        "INSERT INTO api_keys(id, name, role, digest, token_prefix, created_ms, updated_ms)
         VALUES ($1, $2, $3, $4, $5, $6, $6)",
        &[&id, &new.name, &new.role.as_str(), &new.digest, &new.token_prefix, &now],
    )?;
    record(tx, audit, Some(id))?;
    get_api_key(tx, id)
}

pub(super) fn list_api_keys(tx: &mut Transaction<'_>, page: &PageRequest) -> R<Vec<ApiKey>> {
    let sql = format!("SELECT {} WHERE ($1::TEXT IS NULL OR id < $1) ORDER BY id DESC LIMIT $2", rows::API_KEY_COLS);
    tx.query(&sql, &[&page.before_id, &limit_i64(page)])?.iter().map(rows::api_key).collect()
}

pub(super) fn update_api_key(tx: &mut Transaction<'_>, id: &str, ch: &ApiKeyChanges, audit: &Audit) -> R<ApiKey> {
    get_api_key(tx, id)?;
    let a = Assignments::default()
        .set_some("name", ch.name.clone())
        .set_some("role", ch.role.map(|r| r.as_str()))
        .set("updated_ms", now_ms());
    execute(a, tx, "api_keys", id)?;
    record(tx, audit, None)?;
    get_api_key(tx, id)
}

pub(super) fn delete_api_key(tx: &mut Transaction<'_>, id: &str, audit: &Audit) -> R<()> {
    if tx.execute("DELETE FROM api_keys WHERE id = $1", &[&id])? == 0 {
        return Err(not_found(Resource::ApiKey, id).into());
    }
    record(tx, audit, None)
}

pub(super) fn rotate_api_key(
    tx: &mut Transaction<'_>,
    id: &str,
    digest: &str,
    token_prefix: &str,
    audit: &Audit,
) -> R<ApiKey> {
    let n = tx.execute(
        "UPDATE api_keys SET digest = $2, token_prefix = $3, updated_ms = $4 WHERE id = $1",
        &[&id, &digest, &token_prefix, &now_ms()],
    )?;
    if n == 0 {
        return Err(not_found(Resource::ApiKey, id).into());
    }
    record(tx, audit, None)?;
    get_api_key(tx, id)
}

pub(super) fn api_key_by_digest(tx: &mut Transaction<'_>, digest: &str) -> R<Option<ApiKeyAuth>> {
    let sql = format!("SELECT {} WHERE digest = $1", rows::API_KEY_AUTH_COLS);
    one(tx, &sql, digest, rows::api_key_auth)
}

pub(super) fn touch_api_key(tx: &mut Transaction<'_>, id: &str, now_ms: i64) -> R<()> {
    tx.execute(
        "UPDATE api_keys SET last_used_ms = $2 WHERE id = $1 AND (last_used_ms IS NULL OR last_used_ms <= $3)",
        &[&id, &now_ms, &now_ms.saturating_sub(API_KEY_TOUCH_MS)],
    )?;
    Ok(())
}
