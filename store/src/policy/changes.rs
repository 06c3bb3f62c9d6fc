//! The change feed the filter polls: from the store-wide version and the log
//! of which token digests each version touched (`None` = every answer), what
//! a caller at version `since` must refetch.

use std::collections::HashMap;

use keygate_proto::lookup::Changes;

fn nothing(version: i64) -> Changes {
    Changes {
        version: u64::try_from(version).unwrap_or(0),
        all: false,
        all_at: 0,
        digests: vec![],
        digest_versions: vec![],
    }
}

/// The answer when the log need not be read: nothing when `since` is current,
/// everything when `since` is older than the log keeps (`trimmed_through`).
pub fn without_log(version: i64, since: u64, trimmed_through: i64) -> Option<Changes> {
    let since = i64::try_from(since).unwrap_or(i64::MAX);
    let mut out = nothing(version);
    if since >= version {
        return Some(out);
    }
    if since < trimmed_through {
        out.all = true;
        out.all_at = out.version;
        return Some(out);
    }
    None
}

/// The answer from the log entries (version, digest) after `since`, in log
/// order. An all-wide change is reported by its version (`allAt`), so that
/// answers fetched after it stay cached; per-key changes are listed once each,
/// with the latest version that touched them.
pub fn from_log(version: i64, entries: impl IntoIterator<Item = (i64, Option<String>)>) -> Changes {
    let mut out = nothing(version);
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (v, digest) in entries {
        let v = u64::try_from(v).unwrap_or(0);
        match digest {
            None => {
                out.all = true;
                out.all_at = out.all_at.max(v);
            }
            Some(d) => match seen.get(&d) {
                Some(&i) => {
                    if let Some(slot) = out.digest_versions.get_mut(i) {
                        *slot = (*slot).max(v);
                    }
                }
                None => {
                    seen.insert(d.clone(), out.digests.len());
                    out.digests.push(d);
                    out.digest_versions.push(v);
                }
            },
        }
    }
    out
}

/// The answer to `changes(since)`: [`without_log`] when it suffices, else
/// [`from_log`] over the log entries after `since` that `entries_after` reads.
pub fn answer<E>(
    version: i64,
    since: u64,
    trimmed_through: i64,
    entries_after: impl FnOnce(i64) -> Result<Vec<(i64, Option<String>)>, E>,
) -> Result<Changes, E> {
    if let Some(answer) = without_log(version, since, trimmed_through) {
        return Ok(answer);
    }
    Ok(from_log(version, entries_after(i64::try_from(since).unwrap_or(i64::MAX))?))
}

/// The log keeps its last `limit` entries: given the lowest and highest entry
/// sequence numbers, the highest one to delete (if any).
pub fn trim_through(min_seq: Option<i64>, max_seq: Option<i64>, limit: i64) -> Option<i64> {
    match (min_seq, max_seq) {
        (Some(min), Some(max)) if max - min + 1 > limit => Some(max - limit),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_caller_at_the_current_version_has_nothing_to_refetch() {
        let c = without_log(5, 5, 0).unwrap();
        assert!(!c.all && c.digests.is_empty());
        assert_eq!(c.version, 5);
        assert!(without_log(5, 9, 0).is_some());
    }

    #[test]
    fn a_caller_older_than_the_log_refetches_everything() {
        let c = without_log(9, 2, 3).unwrap();
        assert_eq!((c.all, c.all_at), (true, 9));
        assert!(without_log(9, 3, 3).is_none());
    }

    #[test]
    fn each_digest_is_listed_once_with_its_latest_version() {
        let c = from_log(9, [(4, Some("a".into())), (5, Some("b".into())), (7, Some("a".into()))]);
        assert_eq!(c.digests, vec!["a".to_string(), "b".to_string()]);
        assert_eq!(c.digest_versions, vec![7, 5]);
        assert!(!c.all);
    }

    #[test]
    fn the_log_keeps_its_last_entries() {
        assert_eq!(trim_through(None, None, 5), None);
        assert_eq!(trim_through(Some(1), Some(5), 5), None);
        assert_eq!(trim_through(Some(1), Some(6), 5), Some(1));
        assert_eq!(trim_through(Some(3), Some(12), 5), Some(7));
    }

    #[test]
    fn the_log_is_read_only_when_needed() {
        let read = |_| -> Result<Vec<(i64, Option<String>)>, ()> { Err(()) };
        assert!(answer(5, 5, 0, read).is_ok());
        assert!(answer(5, 1, 3, read).unwrap().all);
        let c = answer(5, 3, 0, |since| Ok::<_, ()>(vec![(since + 1, Some("a".into()))])).unwrap();
        assert_eq!(c.digest_versions, vec![4]);
    }

    #[test]
    fn an_all_wide_change_is_reported_by_its_version() {
        let c = from_log(9, [(4, None), (6, Some("a".into())), (8, None)]);
        assert_eq!((c.all, c.all_at), (true, 8));
        assert_eq!(c.digests, vec!["a".to_string()]);
    }
}
