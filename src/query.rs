//! Credentials in the query string. A URL ends up in access logs, proxies'
//! logs and the provider's: a query parameter that carries a credential
//! (`?key=…`, `?api_key=…`) or any keygate token is refused, so it is neither
//! forwarded nor logged (Envoy's access log prints the path without query).

use keygate_proto::token;

/// Parameter names that carry credentials in some API (Google's `key`,
/// OAuth's `access_token`, ...), compared after percent-decoding and
/// lower-casing.
const CREDENTIAL_PARAMS: [&str; 8] =
    ["key", "api_key", "api-key", "apikey", "x-api-key", "access_token", "token", "authorization"];

/// True when the query names a credential parameter or carries a keygate
/// token in any form a server would decode (raw, percent-encoded, `+` for
/// space). `&` and `;` both separate parameters (some servers split on `;`).
pub fn has_credential(query: &str) -> bool {
    if token::contains_token(query.as_bytes()) {
        return true;
    }
    query.split(['&', ';']).any(|param| {
        let (name, value) = param.split_once('=').unwrap_or((param, ""));
        let name = decode(name);
        let name = String::from_utf8_lossy(&name);
        let name = name.trim().to_ascii_lowercase();
        CREDENTIAL_PARAMS.contains(&name.as_str()) || token::contains_token(&decode(value))
    })
}

/// `application/x-www-form-urlencoded` decoding: `%XX` and `+`. A malformed
/// escape is kept as it is (a server would do the same or refuse).
fn decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        let hex = |j: usize| b.get(j).and_then(|h| (*h as char).to_digit(16));
        match (c, hex(i + 1), hex(i + 2)) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (b'+', ..) => {
                out.push(b' ');
                i += 1;
            }
            _ => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tok() -> String {
        token::from_random(&[9u8; token::RANDOM_BYTES])
    }

    #[test]
    fn credential_names_are_refused_whatever_their_value() {
        for q in [
            "key=abc",
            "api-version=1&key=",
            "KEY=1",
            "%6bey=1",
            "api_key=x",
            "x=1;access_token=y",
            "Api-Key=z",
            " token =1",
        ] {
            assert!(has_credential(q), "{q}");
        }
    }

    #[test]
    fn tokens_are_refused_in_any_parameter_and_encoding() {
        let t = tok();
        let encoded: String = t.bytes().map(|b| format!("%{b:02x}")).collect();
        for q in [format!("user={t}"), format!("x={encoded}"), t.clone(), format!("a=1&b=pre{t}post")] {
            assert!(has_credential(&q), "{q}");
        }
    }

    #[test]
    fn ordinary_queries_pass() {
        for q in ["", "api-version=2024-06-01", "beta=true", "limit=20&after=file_abc", "keys=1", "monkey=2", "%zz=1&a"]
        {
            assert!(!has_credential(q), "{q}");
        }
    }
}
