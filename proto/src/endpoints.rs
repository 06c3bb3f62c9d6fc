//! Names of the provider-account endpoints a configuration may allow
//! (`access.endpoints.allow`). Inference endpoints are judged by the model
//! allow-list; these act on the provider *account* (its files, batches, jobs,
//! stored objects), so a key reaches them only when its configuration names
//! them. The filter's surface table and the store's validation both use this
//! list, so they cannot drift apart.

/// `(name, what it allows)`. `.read` is the GET side, `.write` everything that
/// creates, changes, cancels or deletes.
pub const ENDPOINTS: &[(&str, &str)] = &[
    ("files.read", "list files, read a file's metadata and content"),
    ("files.write", "upload and delete files"),
    ("uploads.write", "create, fill, complete and cancel multi-part uploads"),
    ("batches.read", "list batches, read a batch and its results"),
    ("batches.write", "create, cancel and delete batches"),
    ("fine_tuning.read", "list fine-tuning jobs, their events and checkpoints"),
    ("fine_tuning.write", "create, cancel, pause and resume fine-tuning jobs"),
    ("models.delete", "delete a fine-tuned model"),
    ("responses.read", "read stored responses and their input items"),
    ("responses.write", "delete and cancel stored responses"),
    ("chat_completions.read", "list and read stored chat completions"),
    ("chat_completions.write", "update and delete stored chat completions"),
    ("assistants.read", "read assistants, threads, messages, runs and run steps"),
    ("assistants.write", "create, change, run and delete assistants, threads and messages"),
    ("vector_stores.read", "list, read and search vector stores and their files"),
    ("vector_stores.write", "create, change and delete vector stores and their files"),
    ("conversations.read", "read conversations and their items"),
    ("conversations.write", "create, change and delete conversations and their items"),
];

/// True for an allow-list entry: a name of [`ENDPOINTS`], a group wildcard
/// (`files.*`) or `*` (every account endpoint).
pub fn is_valid_pattern(entry: &str) -> bool {
    if entry == "*" {
        return true;
    }
    match entry.strip_suffix(".*") {
        Some(group) => ENDPOINTS.iter().any(|(name, _)| name.split('.').next() == Some(group)),
        None => ENDPOINTS.iter().any(|(name, _)| *name == entry),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_groups_and_the_wildcard_are_valid() {
        for ok in ["files.read", "batches.*", "*", "models.delete", "models.*"] {
            assert!(is_valid_pattern(ok), "{ok}");
        }
        for bad in ["files", "files.", "files.admin", "*.read", "file.*", "", "FILES.READ", " files.read"] {
            assert!(!is_valid_pattern(bad), "{bad}");
        }
    }

    #[test]
    fn every_name_is_group_dot_action() {
        for (name, what) in ENDPOINTS {
            let (group, action) = name.split_once('.').unwrap();
            assert!(!group.is_empty() && matches!(action, "read" | "write" | "delete"), "{name}");
            assert!(!what.is_empty());
        }
    }
}
