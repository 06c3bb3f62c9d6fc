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
/// checked for format and checksum (no store call needed to reject junk).
pub fn extract<'a>(authorization: Option<&'a str>, x_api_key: Option<&'a str>) -> Result<&'a str, KeyError> {
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
    token::validate(token).map_err(KeyError::Malformed)?;
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
        assert_eq!(extract(Some(&auth), None), Ok(t.as_str()));
        assert_eq!(extract(None, Some(&t)), Ok(t.as_str()));
        let lower = format!("bearer  {t} ");
        assert_eq!(extract(Some(&lower), None), Ok(t.as_str()));
        // The same key in both headers is not ambiguous.
        assert_eq!(extract(Some(&auth), Some(&t)), Ok(t.as_str()));
    }

    #[test]
    fn missing_ambiguous_and_malformed() {
        let t = good();
        let other = token::from_random(&[1u8; token::RANDOM_BYTES]);
        assert_eq!(extract(None, None), Err(KeyError::Missing));
        assert_eq!(extract(Some(&format!("Bearer {t}")), Some(&other)), Err(KeyError::Ambiguous));
        assert_eq!(extract(Some(&format!("Basic {t}")), None), Err(KeyError::NotBearer));
        assert_eq!(extract(Some("Bearer"), None), Err(KeyError::NotBearer));
        assert_eq!(extract(Some("Bearer sk-abc"), None), Err(KeyError::Malformed(TokenError::Prefix)));
        let typo = format!("{}0", &t[..t.len() - 1]);
        let typo = if typo == t { format!("{}1", &t[..t.len() - 1]) } else { typo };
        assert_eq!(extract(None, Some(&typo)), Err(KeyError::Malformed(TokenError::Checksum)));
        assert_eq!(extract(None, Some("")), Err(KeyError::Malformed(TokenError::Prefix)));
    }
}
