//! What Envoy's `json_to_metadata` filter leaves in dynamic metadata, read
//! back: without a gate (as in the Istio setup) the keygate filter reads the
//! body's `model` and output limit from there.
//!
//! Envoy hands a string value over as its raw bytes, and a number as 8 bytes
//! (a little-endian f64).

use crate::decide::ModelField;

/// The body's `model`, from the raw `model` value and whether
/// `json_to_metadata` recorded a `body_error` (the body is not JSON).
pub fn model(raw: Option<Vec<u8>>, body_error: impl FnOnce() -> bool) -> ModelField {
    let Some(raw) = raw else {
        return if body_error() { ModelField::InvalidJson } else { ModelField::Absent };
    };
    match String::from_utf8(raw) {
        Ok(s) if !s.chars().any(char::is_control) => ModelField::Str(s),
        _ => ModelField::NotString,
    }
}

/// A token count: a finite, non-negative number.
pub fn count(raw: &[u8]) -> Option<u64> {
    let bytes: [u8; 8] = raw.try_into().ok()?;
    let n = f64::from_le_bytes(bytes);
    (n.is_finite() && n >= 0.0).then_some(n as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_string_is_a_model_and_anything_else_is_not() {
        assert_eq!(model(Some(b"gpt-4o".to_vec()), || false), ModelField::Str("gpt-4o".into()));
        assert_eq!(model(Some(vec![0xff, 0xfe]), || false), ModelField::NotString);
        assert_eq!(model(Some(b"gpt\n4o".to_vec()), || false), ModelField::NotString);
        assert_eq!(model(None, || false), ModelField::Absent);
        assert_eq!(model(None, || true), ModelField::InvalidJson);
    }

    #[test]
    fn counts_are_finite_non_negative_doubles() {
        assert_eq!(count(&512f64.to_le_bytes()), Some(512));
        assert_eq!(count(&(-1f64).to_le_bytes()), None);
        assert_eq!(count(&f64::NAN.to_le_bytes()), None);
        assert_eq!(count(&f64::INFINITY.to_le_bytes()), None);
        assert_eq!(count(b"512"), None, "a string is not a count");
    }
}
