//! Honest model lists: the provider's answer to `GET /v1/models` (OpenAI's
//! and Anthropic's list formats alike: a `data` array of objects with an
//! `id`) keeps only the models the key may use, so that an SDK's model
//! picker shows the truth. Only a key whose configuration lists models is
//! filtered (without a list, every model of the provider is allowed).

use crate::access::allows;
use crate::model_json::{find_top_level_value, skip_value, skip_ws};

/// Largest model list read (OpenAI's is ~100 KB); a larger one is answered
/// as empty rather than passed unread.
pub const MAX_LIST_BYTES: usize = 4 << 20;

/// The listing `body` of provider `provider`, keeping the models whose
/// qualified name (`provider/id`) `allow` admits; every other byte stays as
/// the provider sent it (no JSON tree is built: the module stays smaller).
/// A body that is not such a list becomes an empty one: what cannot be read
/// is not shown.
pub fn filter_listing(body: &[u8], provider: &str, allow: &[String]) -> Vec<u8> {
    let Some((start, end)) = find_top_level_value(body, "data") else { return empty() };
    let (Some(list), Some(head), Some(tail)) = (body.get(start..end), body.get(..start), body.get(end..)) else {
        return empty();
    };
    let Some(kept) = kept_models(list, provider, allow) else { return empty() };
    let mut out = Vec::with_capacity(body.len());
    out.extend_from_slice(head);
    out.push(b'[');
    out.extend_from_slice(&kept.join(&b","[..]));
    out.push(b']');
    out.extend_from_slice(tail);
    out
}

/// The elements of JSON array `list` that are objects naming an allowed
/// model `id` (`None`: not an array).
fn kept_models<'a>(list: &'a [u8], provider: &str, allow: &[String]) -> Option<Vec<&'a [u8]>> {
    if list.first() != Some(&b'[') {
        return None;
    }
    let mut kept = Vec::new();
    let mut i = skip_ws(list, 1);
    loop {
        match list.get(i)? {
            b']' => return Some(kept),
            b',' => i = skip_ws(list, i + 1),
            _ => {
                let end = skip_value(list, i)?;
                let item = list.get(i..end)?;
                if id_of(item).is_some_and(|id| allows(Some(allow), &format!("{provider}/{id}"))) {
                    kept.push(item);
                }
                i = skip_ws(list, end);
            }
        }
    }
}

/// The string `id` of a JSON object.
fn id_of(item: &[u8]) -> Option<String> {
    let (start, end) = find_top_level_value(item, "id")?;
    let raw = item.get(start..end)?;
    if raw.first() != Some(&b'"') {
        return None;
    }
    crate::body::unescape(raw).ok().map(|id| id.into_owned())
}

fn empty() -> Vec<u8> {
    br#"{"object":"list","data":[]}"#.to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

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
