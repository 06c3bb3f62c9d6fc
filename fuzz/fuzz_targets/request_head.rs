//! A request's headers as the host hands them over (its serialized map
//! format, any bytes): reading them, screening them (surface table, query,
//! tokens, key format) and the host-format parser itself never panic.
#![no_main]
use keygate_filter::inbound::Inbound;
use keygate_filter::screen::screen;
use keygate_filter::wire::{parse_pairs, HeaderMap};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = parse_pairs(data);
    let map = HeaderMap::parse(data.to_vec());
    let _ = Inbound::from_headers(map.iter());
    // Also as text: `name: value` lines, the first two being method and path.
    let text = String::from_utf8_lossy(data);
    let mut lines = text.split('\n');
    let mut headers: Vec<(String, Vec<u8>)> = Vec::new();
    headers.push((":method".into(), lines.next().unwrap_or("").as_bytes().to_vec()));
    headers.push((":path".into(), lines.next().unwrap_or("").as_bytes().to_vec()));
    for line in lines {
        let (n, v) = line.split_once(':').unwrap_or((line, ""));
        headers.push((n.to_ascii_lowercase(), v.as_bytes().to_vec()));
    }
    let inbound = Inbound::from_headers(headers.iter().map(|(n, v)| (n.as_str(), v.as_slice())));
    let _ = screen(&inbound, data.len() % 2 == 0, 1 << 20);
});
