//! The price catalog's rules: which price a request pays, and that the
//! catch-all entry stays.

use crate::error::StoreError;
use crate::pricing::{match_price, Price, CATCH_ALL};

/// Used when the catalog has no `*/*` entry (it cannot be deleted, but be safe).
pub const FALLBACK_PRICE: Price = Price { input: 15_000_000, output: 75_000_000, cached: None };

/// The price of `provider/model` in `catalog` (see [`match_price`]).
pub fn price_of(catalog: &[(String, String, Price)], provider: &str, model: Option<&str>) -> Price {
    match_price(catalog, provider, model).copied().unwrap_or(FALLBACK_PRICE)
}

/// The catch-all price cannot be deleted (unknown models would be free).
pub fn may_delete(provider: &str, model: &str) -> Result<(), StoreError> {
    if (provider, model) == CATCH_ALL {
        return Err(StoreError::Conflict(
            "the catch-all price */* cannot be deleted (unknown models would be free); PUT a new price instead".into(),
        ));
    }
    Ok(())
}

/// The answer when there is no price to delete.
pub fn not_found(provider: &str, model: &str) -> StoreError {
    StoreError::NotFound(format!("no price for {provider}/{model}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_catalog_without_a_match_falls_back_to_an_expensive_price() {
        assert_eq!(price_of(&[], "openai", Some("gpt-4o")), FALLBACK_PRICE);
        let cheap = Price { input: 1, output: 2, cached: None };
        let catalog = vec![("openai".to_string(), "gpt-4o".to_string(), cheap)];
        assert_eq!(price_of(&catalog, "openai", Some("gpt-4o")), cheap);
    }

    #[test]
    fn only_the_catch_all_price_is_kept_from_deletion() {
        assert!(matches!(may_delete("*", "*"), Err(StoreError::Conflict(_))));
        assert!(may_delete("openai", "*").is_ok());
    }
}
