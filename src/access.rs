//! Allow-list matching: `None` allows everything, `Some([])` nothing; an entry
//! matches exactly, or as a prefix when it ends in `*`.

pub fn pattern_matches(pattern: &str, value: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => value.starts_with(prefix),
        None => pattern == value,
    }
}

pub fn allows(list: Option<&[String]>, value: &str) -> bool {
    match list {
        None => true,
        Some(entries) => entries.iter().any(|p| pattern_matches(p, value)),
    }
}

/// Provider-account endpoints: unlike the other dimensions, an absent list
/// allows none of them (they act on the whole provider account).
pub fn endpoint_allowed(list: Option<&[String]>, name: &str) -> bool {
    list.is_some_and(|entries| entries.iter().any(|p| pattern_matches(p, name)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn omitted_allows_all_and_empty_allows_none() {
        assert!(allows(None, "openai"));
        assert!(!allows(Some(&[]), "openai"));
    }

    #[test]
    fn exact_and_wildcard() {
        let l = list(&["openai/gpt-4o", "anthropic/claude-*"]);
        assert!(allows(Some(&l), "openai/gpt-4o"));
        assert!(!allows(Some(&l), "openai/gpt-4o-mini"));
        assert!(allows(Some(&l), "anthropic/claude-sonnet-4-6"));
        assert!(!allows(Some(&l), "anthropic/claud"));
        assert!(!allows(Some(&l), "openai/claude-x"));
        assert!(allows(Some(&list(&["*"])), "anything/at-all"));
    }

    #[test]
    fn endpoints_are_refused_unless_named() {
        assert!(!endpoint_allowed(None, "files.read"));
        assert!(!endpoint_allowed(Some(&[]), "files.read"));
        let l = list(&["files.read", "batches.*"]);
        assert!(endpoint_allowed(Some(&l), "files.read"));
        assert!(!endpoint_allowed(Some(&l), "files.write"));
        assert!(endpoint_allowed(Some(&l), "batches.write"));
        assert!(endpoint_allowed(Some(&list(&["*"])), "models.delete"));
    }
}
