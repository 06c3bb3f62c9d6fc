//! A callback's header changes, written in as few host calls as the ABI
//! allows.
//!
//! Each `replace_header_map_value` or `remove_header_map_value` is a host
//! call (about a microsecond of Envoy CPU). A forwarded request changes
//! five to eight headers, its answer four to six. Collected here, they go
//! out in one `set_header_map_pairs`: Envoy removes every header of the map
//! and adds the given list, so the list is the snapshot the callback read,
//! without the names changed, plus the new values.
//!
//! A removal or a replacement drops *every* copy of the name (a client's
//! repeated `authorization` does not survive next to the provider's).

use std::io::Write;
use std::ops::Range;

use crate::host::{HeaderMap, Host, HostError, Map};

/// One change: where its name lies in `Edits::bytes`, and its value's
/// (`None`: removed).
type Change = (Range<usize>, Option<Range<usize>>);

/// A callback's changes. The worker keeps one and clears it for each
/// callback: the names, values and the serialized map reuse its buffers, so
/// that a callback's changes cost no allocation once they have grown.
#[derive(Default)]
pub struct Edits {
    /// Names and values, back to back (a change of a name already changed
    /// appends its new value and leaves the old bytes unused).
    bytes: Vec<u8>,
    /// In order; a later change of a name overrides an earlier one. Names
    /// are bytes: a header named in bytes that are not UTF-8 can be removed.
    changes: Vec<Change>,
    /// The serialized map of the last `write`.
    out: Vec<u8>,
    /// Which of the snapshot's headers the last `write` kept.
    kept: Vec<bool>,
}

impl Edits {
    pub fn new() -> Edits {
        Edits::default()
    }

    /// No changes (the buffers are kept).
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.changes.clear();
    }

    /// Sets `name` to `value` (every copy of it replaced).
    pub fn set(&mut self, name: &str, value: impl AsRef<[u8]>) {
        let at = self.bytes.len();
        self.bytes.extend_from_slice(value.as_ref());
        self.change(name.as_bytes(), Some(at..self.bytes.len()));
    }

    /// Sets `name` to a number, written in decimal.
    pub fn set_number(&mut self, name: &str, value: u64) {
        let at = self.bytes.len();
        // Writing to a `Vec` cannot fail.
        let _ = write!(self.bytes, "{value}");
        self.change(name.as_bytes(), Some(at..self.bytes.len()));
    }

    /// Removes every copy of `name`.
    pub fn remove(&mut self, name: &str) {
        self.change(name.as_bytes(), None);
    }

    /// Removes every copy of a header named in any bytes.
    pub fn remove_raw(&mut self, name: &[u8]) {
        self.change(name, None);
    }

    /// Adds `value` as one more copy of `name`, after the copies set before
    /// (a name not set yet, or removed: as `set`). A header that comes in
    /// several copies keeps them all.
    pub fn append(&mut self, name: &str, value: impl AsRef<[u8]>) {
        let at = self.bytes.len();
        self.bytes.extend_from_slice(value.as_ref());
        let value = at..self.bytes.len();
        let bytes = &self.bytes;
        let set = self.changes.iter().find(|(n, v)| v.is_some() && bytes.get(n.clone()) == Some(name.as_bytes()));
        match set.map(|(n, _)| n.clone()) {
            Some(name) => self.changes.push((name, Some(value))),
            None => self.change(name.as_bytes(), Some(value)),
        }
    }

    /// The first change of `name` becomes `value`; any other (copies
    /// appended) goes.
    fn change(&mut self, name: &[u8], value: Option<Range<usize>>) {
        let bytes = &self.bytes;
        let mut first = true;
        self.changes.retain_mut(|(n, v)| {
            if bytes.get(n.clone()) != Some(name) {
                return true;
            }
            if first {
                first = false;
                *v = value.clone();
                return true;
            }
            false
        });
        if first {
            let at = self.bytes.len();
            self.bytes.extend_from_slice(name);
            self.changes.push((at..self.bytes.len(), value));
        }
    }

    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    fn part(&self, range: &Range<usize>) -> &[u8] {
        self.bytes.get(range.clone()).unwrap_or_default()
    }

    /// Each change: its name, and its value (`None`: removed).
    fn iter(&self) -> impl Iterator<Item = (&[u8], Option<&[u8]>)> {
        self.changes.iter().map(|(n, v)| (self.part(n), v.as_ref().map(|v| self.part(v))))
    }

    fn changed(&self, name: &[u8]) -> bool {
        self.iter().any(|(n, _)| n == name)
    }

    /// The map after the changes: `snapshot` (the map as the callback read
    /// it, in order) without the changed names, then the values set.
    pub fn applied<'a>(&'a self, snapshot: &'a HeaderMap) -> Vec<(&'a [u8], &'a [u8])> {
        let kept = snapshot.raw_iter().filter(|(n, _)| !self.changed(n));
        let set = self.iter().filter_map(|(n, v)| v.map(|v| (n, v)));
        kept.chain(set).collect()
    }

    /// `applied`, serialized for the host into `out` (no list of pairs in
    /// between: `wire::serialize_pairs`'s format, written in two passes).
    fn serialize_applied(&mut self, snapshot: &HeaderMap) {
        let mut out = std::mem::take(&mut self.out);
        out.clear();
        // Each header of the snapshot is looked up in the changes once.
        let mut flags = std::mem::take(&mut self.kept);
        flags.clear();
        flags.extend(snapshot.raw_iter().map(|(n, _)| !self.changed(n)));
        let kept = || snapshot.raw_iter().zip(&flags).filter(|(_, keep)| **keep).map(|(pair, _)| pair);
        let set = || self.iter().filter_map(|(n, v)| v.map(|v| (n, v)));
        let count = kept().count() + set().count();
        out.extend_from_slice(&(count as u32).to_le_bytes());
        for (n, v) in kept().chain(set()) {
            out.extend_from_slice(&(n.len() as u32).to_le_bytes());
            out.extend_from_slice(&(v.len() as u32).to_le_bytes());
        }
        for (n, v) in kept().chain(set()) {
            out.extend_from_slice(n);
            out.push(0);
            out.extend_from_slice(v);
            out.push(0);
        }
        self.out = out;
        self.kept = flags;
    }

    /// Writes each change by itself (for a map not read first); a change
    /// the host refuses is skipped. A name with several copies keeps only
    /// its last (the host's call replaces).
    pub fn write_each(&self, host: &impl Host, map: Map) {
        for (name, value) in self.iter() {
            // (A name that is not UTF-8 is only ever removed, with the map.)
            if let Ok(name) = std::str::from_utf8(name) {
                let _ = host.set_header(map, name, value);
            }
        }
    }

    /// Writes the changes to `map`, whose headers were `snapshot` when the
    /// callback read them: one host call for any number of changes (none
    /// for none).
    pub fn write(&mut self, host: &impl Host, map: Map, snapshot: &HeaderMap) -> Result<(), HostError> {
        if self.changes.is_empty() {
            return Ok(());
        }
        if let ([_], Some((Ok(name), value))) =
            (self.changes.as_slice(), self.iter().next().map(|(n, v)| (std::str::from_utf8(n), v)))
        {
            return host.set_header(map, name, value);
        }
        self.serialize_applied(snapshot);
        host.set_headers(map, &self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake_host::FakeHost;

    fn snapshot(pairs: &[(&str, &str)]) -> HeaderMap {
        HeaderMap::from_pairs(pairs)
    }

    #[test]
    fn changed_names_lose_every_copy_and_the_rest_keep_their_order() {
        let before = snapshot(&[
            (":method", "POST"),
            (":path", "/v1/chat/completions"),
            ("authorization", "Bearer kg-client"),
            ("x-request-id", "r1"),
            ("authorization", "Bearer kg-second"),
            ("x-envoy-max-retries", "9"),
        ]);
        let mut edits = Edits::new();
        edits.remove("x-envoy-max-retries");
        edits.set("authorization", "Bearer sk-provider");
        edits.set(":authority", "api.openai.com");
        let applied = edits.applied(&before);
        let after: Vec<(&str, &str)> = applied
            .into_iter()
            .map(|(n, v)| (std::str::from_utf8(n).unwrap(), std::str::from_utf8(v).unwrap()))
            .collect();
        assert_eq!(
            after,
            [
                (":method", "POST"),
                (":path", "/v1/chat/completions"),
                ("x-request-id", "r1"),
                ("authorization", "Bearer sk-provider"),
                (":authority", "api.openai.com"),
            ]
        );
    }

    #[test]
    fn a_header_named_in_bytes_that_are_not_utf8_can_be_removed() {
        let before = HeaderMap::from_pairs(&[(&b":status"[..], &b"200"[..]), (b"x-\xff", b"sk-secret")]);
        let mut edits = Edits::new();
        edits.remove_raw(b"x-\xff");
        assert_eq!(edits.applied(&before), [(&b":status"[..], &b"200"[..])]);
        let host = FakeHost::new();
        host.enter(1);
        host.set_headers(1, Map::ResponseHeaders, &[(":status", "200")]);
        edits.write(&host, Map::ResponseHeaders, &before).unwrap();
        assert_eq!(host.headers_of(1, Map::ResponseHeaders), [(":status".to_string(), "200".to_string())]);
    }

    #[test]
    fn a_later_change_of_a_name_wins() {
        let mut edits = Edits::new();
        edits.set("content-length", "10");
        edits.remove("content-length");
        edits.set("x-a", "1");
        edits.set("x-a", "2");
        let empty = HeaderMap::default();
        assert_eq!(edits.applied(&empty), [(&b"x-a"[..], &b"2"[..])]);
    }

    #[test]
    fn appended_copies_are_all_written_until_the_name_is_set_again() {
        let before = snapshot(&[(":status", "200"), ("set-cookie", "a=1"), ("x-a", "0")]);
        let mut edits = Edits::new();
        edits.append("set-cookie", "b=2");
        edits.set("x-a", "1");
        edits.append("set-cookie", "c=3");
        let host = FakeHost::new();
        host.enter(1);
        edits.write(&host, Map::ResponseHeaders, &before).unwrap();
        let written = host.headers_of(1, Map::ResponseHeaders);
        let written: Vec<(&str, &str)> = written.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
        assert_eq!(written, [(":status", "200"), ("set-cookie", "b=2"), ("x-a", "1"), ("set-cookie", "c=3")]);
        edits.set("set-cookie", "d=4");
        assert_eq!(edits.applied(&before), [(&b":status"[..], &b"200"[..]), (b"set-cookie", b"d=4"), (b"x-a", b"1")]);
        edits.remove("set-cookie");
        edits.append("set-cookie", "e=5");
        assert_eq!(edits.applied(&before), [(&b":status"[..], &b"200"[..]), (b"set-cookie", b"e=5"), (b"x-a", b"1")]);
    }

    #[test]
    fn many_changes_are_one_host_call_and_one_is_a_plain_one() {
        let host = crate::host_calls::Counting::new(FakeHost::new());
        host.inner().enter(1);
        host.inner().set_headers(1, Map::ResponseHeaders, &[(":status", "200"), ("x-debug", "a")]);
        let before = host.headers(Map::ResponseHeaders);
        let mut edits = Edits::new();
        edits.set("x-keygate-attempts", "1");
        edits.set("x-keygate-provider", "openai");
        edits.remove("x-debug");
        host.take();
        edits.write(&host, Map::ResponseHeaders, &before).unwrap();
        assert_eq!(host.total(), 1);
        assert_eq!(
            host.inner().headers_of(1, Map::ResponseHeaders),
            [(":status", "200"), ("x-keygate-attempts", "1"), ("x-keygate-provider", "openai")]
                .map(|(n, v)| (n.to_string(), v.to_string()))
        );
        let mut one = Edits::new();
        one.set("x-a", "1");
        one.write(&host, Map::ResponseHeaders, &before).unwrap();
        assert_eq!(host.get(crate::host_calls::Kind::HeaderSet), 1);
        assert!(Edits::new().write(&host, Map::ResponseHeaders, &before).is_ok());
        assert_eq!(host.total(), 2);
    }
}
