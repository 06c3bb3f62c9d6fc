//! Where a request goes and how it authenticates there.

use keygate_proto::lookup::AuthStyle;

/// Request headers that carry a client credential or could steer Envoy; all
/// are removed before anything goes upstream.
pub const CLIENT_CREDENTIAL_HEADERS: [&str; 5] =
    ["authorization", "x-api-key", "x-goog-api-key", "api-key", "proxy-authorization"];

/// Client headers that would choose what the operator's credential acts on
/// (OpenAI's organization and project: a user key may reach several), or
/// make the answer unreadable to keygate (a compressed body: its usage and
/// its credential scrubbing).
pub const CLIENT_CONTROL_HEADERS: [&str; 3] = ["openai-organization", "openai-project", "accept-encoding"];

/// True for a request header the client must not pass through: a credential,
/// a control header, an `x-envoy-*` header, or one of keygate's own.
pub fn is_stripped_header(name: &str) -> bool {
    CLIENT_CREDENTIAL_HEADERS.iter().chain(&CLIENT_CONTROL_HEADERS).any(|h| name.eq_ignore_ascii_case(h))
        || starts_with_ignore_case(name, "x-envoy-")
        || starts_with_ignore_case(name, "x-keygate-")
}

fn starts_with_ignore_case(s: &str, prefix: &str) -> bool {
    s.get(..prefix.len()).is_some_and(|head| head.eq_ignore_ascii_case(prefix))
}

/// A provider's base URL, split for Envoy: the scheme picks the cluster, the
/// authority becomes `:authority`, and the path is prefixed to the request's.
/// Parts of the URL, not copies (it is read for every request).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint<'a> {
    pub tls: bool,
    pub authority: &'a str,
    pub path_prefix: &'a str,
}

pub fn parse_base_url(url: &str) -> Option<Endpoint<'_>> {
    let (tls, rest) = if let Some(rest) = url.strip_prefix("https://") {
        (true, rest)
    } else {
        (false, url.strip_prefix("http://")?)
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let valid = !authority.is_empty()
        && authority.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']' | b'_'));
    if !valid || path.contains(['?', '#']) {
        return None;
    }
    Some(Endpoint { tls, authority, path_prefix: path.trim_end_matches('/') })
}

/// The header that carries a provider credential in that provider's style.
pub fn credential_header(style: AuthStyle, value: &str) -> (&'static str, String) {
    match style {
        AuthStyle::Bearer => ("authorization", format!("Bearer {value}")),
        AuthStyle::XApiKey => ("x-api-key", value.to_string()),
        AuthStyle::XGoogApiKey => ("x-goog-api-key", value.to_string()),
        AuthStyle::ApiKey => ("api-key", value.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls() {
        assert_eq!(
            parse_base_url("https://api.openai.com/v1"),
            Some(Endpoint { tls: true, authority: "api.openai.com", path_prefix: "/v1" })
        );
        assert_eq!(
            parse_base_url("http://127.0.0.1:18101/"),
            Some(Endpoint { tls: false, authority: "127.0.0.1:18101", path_prefix: "" })
        );
        assert_eq!(parse_base_url("ftp://x"), None);
        assert_eq!(parse_base_url("http:///v1"), None);
        assert_eq!(parse_base_url("http://a b/"), None);
        assert_eq!(parse_base_url("http://a/v1?x=1"), None);
    }

    #[test]
    fn credentials_in_each_providers_style() {
        assert_eq!(credential_header(AuthStyle::Bearer, "sk-1"), ("authorization", "Bearer sk-1".to_string()));
        assert_eq!(credential_header(AuthStyle::XApiKey, "sk-ant"), ("x-api-key", "sk-ant".to_string()));
        assert_eq!(credential_header(AuthStyle::XGoogApiKey, "g"), ("x-goog-api-key", "g".to_string()));
        assert_eq!(credential_header(AuthStyle::ApiKey, "az"), ("api-key", "az".to_string()));
    }

    #[test]
    fn stripped_headers() {
        for h in [
            "Authorization",
            "x-api-key",
            "X-Goog-Api-Key",
            "api-key",
            "x-envoy-max-retries",
            "X-Envoy-Upstream-Rq-Timeout-Ms",
            "x-keygate-cluster",
            "OpenAI-Organization",
            "openai-project",
            "accept-encoding",
        ] {
            assert!(is_stripped_header(h), "{h}");
        }
        for h in ["content-type", "anthropic-version", "x-request-id", "anthropic-beta"] {
            assert!(!is_stripped_header(h), "{h}");
        }
    }
}
