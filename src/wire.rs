//! The proxy-wasm ABI's serialized header map, read and written without
//! trusting either side: a count, then a (name length, value length) pair
//! per entry, then each name and value followed by a NUL byte.
//!
//! The SDK's own reader indexes and unwraps UTF-8, so a header value that is
//! not UTF-8 (Envoy passes obs-text bytes on) would panic and kill the VM;
//! this one returns bytes and `None` for a malformed map.

/// `(name, value)` pairs of a serialized map.
pub fn parse_pairs(bytes: &[u8]) -> Option<Vec<(&[u8], &[u8])>> {
    if bytes.is_empty() {
        return Some(Vec::new());
    }
    let read_u32 = |at: usize| -> Option<usize> {
        let b: [u8; 4] = bytes.get(at..at + 4)?.try_into().ok()?;
        Some(u32::from_le_bytes(b) as usize)
    };
    let count = read_u32(0)?;
    let mut data = count.checked_mul(8)?.checked_add(4)?;
    if data > bytes.len() {
        return None;
    }
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        let name_len = read_u32(4 + i * 8)?;
        let value_len = read_u32(8 + i * 8)?;
        let name = bytes.get(data..data.checked_add(name_len)?)?;
        data += name_len + 1;
        let value = bytes.get(data..data.checked_add(value_len)?)?;
        data += value_len + 1;
        out.push((name, value));
    }
    Some(out)
}

/// Serializes pairs for the host (e.g. a local reply's headers).
pub fn serialize_pairs(pairs: &[(&str, &[u8])]) -> Vec<u8> {
    let size: usize = 4 + pairs.iter().map(|(n, v)| 8 + n.len() + v.len() + 2).sum::<usize>();
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(&(pairs.len() as u32).to_le_bytes());
    for (n, v) in pairs {
        out.extend_from_slice(&(n.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (n, v) in pairs {
        out.extend_from_slice(n.as_bytes());
        out.push(0);
        out.extend_from_slice(v);
        out.push(0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_with_bytes_that_are_not_utf8() {
        let pairs: Vec<(&str, &[u8])> = vec![(":path", b"/v1/models"), ("x-latin", b"caf\xe9"), ("empty", b"")];
        let wire = serialize_pairs(&pairs);
        let back = parse_pairs(&wire).unwrap();
        assert_eq!(back.len(), 3);
        assert_eq!(back[1], (&b"x-latin"[..], &b"caf\xe9"[..]));
        assert_eq!(back[2], (&b"empty"[..], &b""[..]));
        assert_eq!(parse_pairs(&[]), Some(vec![]));
    }

    #[test]
    fn malformed_maps_are_none_never_a_panic() {
        let wire = serialize_pairs(&[("a", b"b")]);
        for cut in 1..wire.len() - 1 {
            let _ = parse_pairs(&wire[..cut]);
        }
        assert_eq!(parse_pairs(&[0xff, 0xff, 0xff, 0xff]), None);
        assert_eq!(parse_pairs(&[1, 0, 0, 0, 200, 0, 0, 0, 0, 0, 0, 0]), None);
    }
}
