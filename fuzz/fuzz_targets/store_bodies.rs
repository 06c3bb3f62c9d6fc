//! The key store's request bodies: every management and gateway body type,
//! parsed as the API parses it, then validated as the API validates it.
//! Refused or accepted, never a panic. The first byte picks the type.
#![no_main]
use keygate_proto::lookup::{ReserveRequest, UsageBatch};
use keygate_store::api::extract::parse_json;
use keygate_store::model::*;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&first, body)) = data.split_first() else { return };
    match first % 12 {
        0 => {
            if let Ok(b) = parse_json::<CreateAccessKey>(body) {
                let _ = check_name("name", &b.name);
                let _ = b.description.as_deref().map(check_description);
                let _ = b.metadata.as_deref().map(check_metadata);
                let _ = b.budget.as_ref().map(|x| check_budget("budget", x));
            }
        }
        1 => drop(parse_json::<PatchAccessKey>(body)),
        2 => drop(parse_json::<RotateAccessKey>(body)),
        3 => drop(parse_json::<CreateProviderKey>(body)),
        4 => drop(parse_json::<PatchProviderKey>(body)),
        5 => {
            if let Ok(c) = parse_json::<CreateConfig>(body) {
                let _ = check_config_syntax(c.access.as_ref(), c.router.as_ref());
                let _ = c.rate_limits.as_ref().map(|r| check_rate_limits("rateLimits", r));
                let _ = c.budget.as_ref().map(|x| check_budget("budget", x));
            }
        }
        6 => {
            if let Ok(c) = parse_json::<PatchConfig>(body) {
                let _ = check_config_syntax(c.access.flatten().as_ref(), c.router.flatten().as_ref());
            }
        }
        7 => {
            if let Ok(p) = parse_json::<CreateProvider>(body) {
                let _ = normalize_base_url(&p.base_url);
                let _ = check_models("models", &p.models);
            }
        }
        8 => {
            if let Ok(p) = parse_json::<PatchProvider>(body) {
                let _ = p.base_url.as_deref().map(normalize_base_url);
            }
        }
        9 => {
            if let Ok(p) = parse_json::<PutPrice>(body) {
                let _ = check_price(&p);
            }
        }
        10 => drop(parse_json::<ReserveRequest>(body)),
        _ => drop(parse_json::<UsageBatch>(body)),
    }
});
