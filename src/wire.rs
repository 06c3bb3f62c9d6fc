//! The proxy-wasm ABI's serialized header map, read and written without
//! trusting either side: a count, then a (name length, value length) pair
//! per entry, then each name and value followed by a NUL byte.
//!
//! The SDK's own reader indexes and unwraps UTF-8, so a header value that is
//! not UTF-8 (Envoy passes obs-text bytes on) would panic and kill the VM;
//! this one returns bytes and `None` for a malformed map.

/// Where one entry's name and value lie in a serialized map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Span {
    name: (usize, usize),
    value: (usize, usize),
}

/// The entries of a serialized map, checked against its length.
fn spans(bytes: &[u8]) -> Option<Vec<Span>> {
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
        let name = (data, data.checked_add(name_len)?);
        bytes.get(name.0..name.1)?;
        data = name.1 + 1;
        let value = (data, data.checked_add(value_len)?);
        bytes.get(value.0..value.1)?;
        data = value.1 + 1;
        out.push(Span { name, value });
    }
    Some(out)
}

/// `(name, value)` pairs of a serialized map.
pub fn parse_pairs(bytes: &[u8]) -> Option<Vec<(&[u8], &[u8])>> {
    let spans = spans(bytes)?;
    Some(
        spans
            .iter()
            .map(|s| {
                let part = |(a, b): (usize, usize)| bytes.get(a..b).unwrap_or_default();
                (part(s.name), part(s.value))
            })
            .collect(),
    )
}

/// A header map as the host serialized it: the one buffer the host call
/// filled, and where each entry lies in it. Reading a header copies
/// nothing (a map of fifteen headers was thirty allocations).
#[derive(Debug, Default, Clone)]
pub struct HeaderMap {
    raw: Vec<u8>,
    spans: Vec<Span>,
}

impl HeaderMap {
    /// A serialized map; a malformed one reads as empty.
    pub fn parse(raw: Vec<u8>) -> HeaderMap {
        match spans(&raw) {
            Some(spans) => HeaderMap { raw, spans },
            None => HeaderMap::default(),
        }
    }

    pub fn from_pairs<N: AsRef<[u8]>, V: AsRef<[u8]>>(pairs: &[(N, V)]) -> HeaderMap {
        let pairs: Vec<(&[u8], &[u8])> = pairs.iter().map(|(n, v)| (n.as_ref(), v.as_ref())).collect();
        HeaderMap::parse(serialize_pairs(&pairs))
    }

    fn part(&self, (a, b): (usize, usize)) -> &[u8] {
        self.raw.get(a..b).unwrap_or_default()
    }

    /// Entries in order, names as text: Envoy's codecs admit only token
    /// characters in a name; one that is not UTF-8 reads as `""` and
    /// matches nothing.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.spans.iter().map(|s| (std::str::from_utf8(self.part(s.name)).unwrap_or(""), self.part(s.value)))
    }

    /// Entries in order, names as the host gave them (to write back).
    pub fn raw_iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.spans.iter().map(|s| (self.part(s.name), self.part(s.value)))
    }

    /// The first value of `name`.
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.iter().find(|(n, _)| *n == name).map(|(_, v)| v)
    }

    pub fn len(&self) -> usize {
        self.spans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }
}

/// Serializes pairs for the host (e.g. a local reply's headers).
pub fn serialize_pairs<N: AsRef<[u8]>>(pairs: &[(N, &[u8])]) -> Vec<u8> {
    let size: usize = 4 + pairs.iter().map(|(n, v)| 8 + n.as_ref().len() + v.len() + 2).sum::<usize>();
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(&(pairs.len() as u32).to_le_bytes());
    for (n, v) in pairs {
        out.extend_from_slice(&(n.as_ref().len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (n, v) in pairs {
        out.extend_from_slice(n.as_ref());
        out.push(0);
        out.extend_from_slice(v);
        out.push(0);
    }
    out
}

/// A property path as the ABI takes it: segments joined by NUL.
pub fn property_path(path: &[&str]) -> Vec<u8> {
    path.join("\0").into_bytes()
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
    fn a_header_map_reads_in_place_and_keeps_raw_names() {
        let wire =
            serialize_pairs(&[(&b":path"[..], &b"/v1/models"[..]), (b"x-\xff", b"v"), (b"x-a", b"1"), (b"x-a", b"2")]);
        let map = HeaderMap::parse(wire);
        assert_eq!(map.len(), 4);
        assert_eq!(map.get(":path"), Some(&b"/v1/models"[..]));
        assert_eq!(map.get("x-a"), Some(&b"1"[..]), "the first of a repeated header");
        assert_eq!(map.iter().nth(1), Some(("", &b"v"[..])));
        assert_eq!(map.raw_iter().nth(1), Some((&b"x-\xff"[..], &b"v"[..])));
        assert!(HeaderMap::parse(vec![0xff, 0xff, 0xff, 0xff]).is_empty());
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
