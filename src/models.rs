//! Honest model lists: the provider's answer to `GET /v1/models` (OpenAI's
//! and Anthropic's list formats alike: a `data` array of objects with an
//! `id`) keeps only the models the key may use, so that an SDK's model
//! picker shows the truth. Only a key whose configuration lists models is
//! filtered (without a list, every model of the provider is allowed).

use serde_json::Value;

use crate::access::allows;

/// Largest model list read (OpenAI's is ~100 KB); a larger one is answered
/// as empty rather than passed unread.
pub const MAX_LIST_BYTES: usize = 4 << 20;

/// The listing `body` of provider `provider`, keeping the models whose
/// qualified name (`provider/id`) `allow` admits. A body that is not such a
/// list becomes an empty one: what cannot be read is not shown.
pub fn filter_listing(body: &[u8], provider: &str, allow: &[String]) -> Vec<u8> {
    let Ok(mut doc) = serde_json::from_slice::<Value>(body) else { return empty() };
    let Some(list) = doc.get_mut("data").and_then(Value::as_array_mut) else { return empty() };
    list.retain(|m| {
        m.get("id").and_then(Value::as_str).is_some_and(|id| allows(Some(allow), &format!("{provider}/{id}")))
    });
    // Anthropic's page cursors (`first_id`, `last_id`, `has_more`) stay the
    // provider's: the next page starts where this one did, filtered too.
    serde_json::to_vec(&doc).unwrap_or_else(|_| empty())
}

fn empty() -> Vec<u8> {
    br#"{"object":"list","data":[]}"#.to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allow(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    fn ids(body: &[u8]) -> Vec<String> {
        let v: Value = serde_json::from_slice(body).unwrap();
        v["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap().to_string()).collect()
    }

    #[test]
    fn openai_lists_keep_the_allowed_models() {
        let body = br#"{"object":"list","data":[{"id":"gpt-4o","object":"model"},{"id":"gpt-4o-mini","object":"model"},{"id":"o3","object":"model"}]}"#;
        let out = filter_listing(body, "openai", &allow(&["openai/gpt-4o*"]));
        assert_eq!(ids(&out), ["gpt-4o", "gpt-4o-mini"]);
        assert_eq!(ids(&filter_listing(body, "openai", &allow(&["anthropic/*"]))), Vec::<String>::new());
        assert_eq!(ids(&filter_listing(body, "openai", &[])), Vec::<String>::new(), "[] allows nothing");
    }

    #[test]
    fn anthropic_lists_keep_their_page_cursors() {
        let body = br#"{"data":[{"type":"model","id":"claude-opus-4"},{"type":"model","id":"claude-sonnet-4-6"},{"type":"model","id":"claude-haiku-4"}],"has_more":true,"first_id":"claude-opus-4","last_id":"claude-haiku-4"}"#;
        let out = filter_listing(body, "anthropic", &allow(&["anthropic/claude-sonnet-*"]));
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(ids(&out), ["claude-sonnet-4-6"]);
        assert_eq!(v["has_more"], true, "the next page is asked for where the provider's ends");
        assert_eq!((v["first_id"].as_str(), v["last_id"].as_str()), (Some("claude-opus-4"), Some("claude-haiku-4")));
    }

    #[test]
    fn what_cannot_be_read_is_not_shown() {
        for body in [&b"not json"[..], b"{}", br#"{"data":"x"}"#, br#"[1,2]"#] {
            assert_eq!(ids(&filter_listing(body, "openai", &allow(&["openai/*"]))), Vec::<String>::new());
        }
        let odd = br#"{"object":"list","data":[{"id":7},{"name":"gpt-4o"},{"id":"gpt-4o"}]}"#;
        assert_eq!(ids(&filter_listing(odd, "openai", &allow(&["openai/*"]))), ["gpt-4o"]);
    }
}
