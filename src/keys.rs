//! Reading the client's access key from its request headers.

use keygate_proto::token::{self, TokenError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyError {
    Missing,
    /// `authorization` and `x-api-key` carry different values: never guess.
    Ambiguous,
    /// `authorization` is present but not a Bearer credential.
    NotBearer,
    Malformed(TokenError),
}

/// Returns the token from `Authorization: Bearer <t>` or `x-api-key: <t>`,
/// checked for format and checksum (no store call needed to reject junk),
/// unless it is `checked`: the token this VM's gate checked already for the
/// same request (a second SHA-256 a hit does not need).
pub fn extract<'a>(
    authorization: Option<&'a str>,
    x_api_key: Option<&'a str>,
    checked: Option<&str>,
) -> Result<&'a str, KeyError> {
    let bearer = match authorization {
        None => None,
        Some(value) => Some(bearer_token(value).ok_or(KeyError::NotBearer)?),
    };
    let api_key = x_api_key.map(str::trim);
    let token = match (bearer, api_key) {
        (None, None) => return Err(KeyError::Missing),
        (Some(a), Some(b)) if a != b => return Err(KeyError::Ambiguous),
        (Some(t), _) | (None, Some(t)) => t,
    };
    if checked != Some(token) {
        token::validate(token).map_err(KeyError::Malformed)?;
    }
    Ok(token)
}

fn bearer_token(value: &str) -> Option<&str> {
    let value = value.trim();
    let (scheme, rest) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> String {
        token::from_random(&[42u8; token::RANDOM_BYTES])
    }

    #[test]
    fn bearer_or_x_api_key() {
        let t = good();
        let auth = format!("Bearer {t}");
        assert_eq!(extract(Some(&auth), None, None), Ok(t.as_str()));
        assert_eq!(extract(None, Some(&t), None), Ok(t.as_str()));
        let lower = format!("bearer  {t} ");
        assert_eq!(extract(Some(&lower), None, None), Ok(t.as_str()));
        // The same key in both headers is not ambiguous.
        assert_eq!(extract(Some(&auth), Some(&t), None), Ok(t.as_str()));
    }

    #[test]
    fn a_token_the_gate_checked_is_not_checked_again_and_no_other_escapes_the_check() {
        let t = good();
        // Its checksum broken: only a token the check skips would pass.
        let mut bad = t.clone();
        bad.replace_range(t.len() - 1.., if t.ends_with('0') { "1" } else { "0" });
        let auth = format!("Bearer {bad}");
        assert!(matches!(extract(Some(&auth), None, None), Err(KeyError::Malformed(TokenError::Checksum))));
        assert_eq!(extract(Some(&auth), None, Some(&bad)), Ok(bad.as_str()), "the gate's token: not checked twice");
        assert!(
            matches!(extract(Some(&auth), None, Some(&t)), Err(KeyError::Malformed(TokenError::Checksum))),
            "another token than the gate's is checked"
        );
        assert_eq!(extract(Some(&format!("Bearer {t}")), None, Some(&t)), Ok(t.as_str()));
    }

    #[test]
    fn missing_ambiguous_and_malformed() {
        let t = good();
        let other = token::from_random(&[1u8; token::RANDOM_BYTES]);
        assert_eq!(extract(None, None, None), Err(KeyError::Missing));
        assert_eq!(extract(Some(&format!("Bearer {t}")), Some(&other), None), Err(KeyError::Ambiguous));
        assert_eq!(extract(Some(&format!("Basic {t}")), None, None), Err(KeyError::NotBearer));
        assert_eq!(extract(Some("Bearer"), None, None), Err(KeyError::NotBearer));
        assert_eq!(extract(Some("Bearer sk-abc"), None, None), Err(KeyError::Malformed(TokenError::Prefix)));
        let typo = format!("{}0", &t[..t.len() - 1]);
        let typo = if typo == t { format!("{}1", &t[..t.len() - 1]) } else { typo };
        assert_eq!(extract(None, Some(&typo), None), Err(KeyError::Malformed(TokenError::Checksum)));
        assert_eq!(extract(None, Some(""), None), Err(KeyError::Malformed(TokenError::Prefix)));
    }
}
