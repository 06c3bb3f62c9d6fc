//! Versioned schema migrations, the bookkeeping both backends share: each
//! backend lists its migrations (version, what it does) and records the
//! versions applied in a `schema_migrations` table.

use crate::error::StoreError;

/// One schema change of a backend.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Migration {
    pub version: i64,
    pub name: &'static str,
}

/// The migrations to apply, in version order, given the versions already
/// applied. A database migrated by a newer keygate (a version this build does
/// not know) is refused rather than written with an older schema in mind.
pub(crate) fn pending(known: &[Migration], applied: &[i64]) -> Result<Vec<Migration>, StoreError> {
    if let Some(v) = applied.iter().find(|v| !known.iter().any(|m| m.version == **v)) {
        return Err(StoreError::Internal(format!(
            "the database has schema version {v}, which this keygate does not know (a newer keygate migrated it)"
        )));
    }
    let mut out: Vec<Migration> = known.iter().filter(|m| !applied.contains(&m.version)).copied().collect();
    out.sort_by_key(|m| m.version);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KNOWN: &[Migration] = &[Migration { version: 2, name: "b" }, Migration { version: 1, name: "a" }];

    #[test]
    fn pending_migrations_run_in_version_order() {
        let v = |ms: Vec<Migration>| ms.iter().map(|m| m.version).collect::<Vec<_>>();
        assert_eq!(v(pending(KNOWN, &[]).unwrap()), vec![1, 2]);
        assert_eq!(v(pending(KNOWN, &[1]).unwrap()), vec![2]);
        assert!(pending(KNOWN, &[1, 2]).unwrap().is_empty());
    }

    #[test]
    fn a_database_from_a_newer_keygate_is_refused() {
        assert!(pending(KNOWN, &[1, 2, 3]).is_err());
    }
}
