//! What one more cached access key costs a worker's memory (issue 19: at
//! most 100 bytes). Its own test binary, so that it can count every
//! allocation with its own global allocator.
//!
//! Native pointers are 8 bytes, wasm32's 4: the figure here is an upper
//! bound of the filter's in Envoy. It counts the bytes asked for, not the
//! allocator's own overhead per allocation (a cached key should need none).
#![allow(clippy::unwrap_used)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use keygate_filter::cache::Cache;
use keygate_filter::intern::Interner;
use keygate_proto::lookup::Lookup;
use keygate_proto::token;

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size as isize - layout.size() as isize, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// As many keys as the benchmark caches (and the default `cacheMaxEntries`):
/// the map's capacity grows in steps, so the figure depends on the count.
const KEYS: usize = 100_000;

/// A store answer for key `n` of one configuration, as `/v1/lookup` sends it.
fn answer(n: usize) -> String {
    format!(
        r#"{{"schema":1,"version":{version},"status":"active",
        "key":{{"id":"ak_{n:014x}5f3a9c0e1d","configId":"akc_0197a3b2c4d5e6f708a1b2c3","validUntil":null}},
        "access":{{"providers":["openai","anthropic"],"models":null}},
        "providers":[{{"id":"openai","format":"openai","auth":"bearer","baseUrl":"https://api.openai.com/v1",
          "models":["gpt-*","o3*"],"routes":[{{"keys":[{{"id":"pk_0197a3b2c4d5e6f708a1b3","value":"sk-proj-0123456789abcdef0123456789abcdef"}}]}}]}},
         {{"id":"anthropic","format":"anthropic","auth":"x-api-key","baseUrl":"https://api.anthropic.com/v1",
          "models":["claude-*"],"routes":[{{"keys":[{{"id":"pk_0197a3b2c4d5e6f708a1b4","value":"sk-ant-0123456789abcdef0123456789abcdef"}}]}}]}}],
        "limits":{{"requestsPerMinute":600,"tokensPerMinute":100000}},
        "requestLimits":{{"maxOutputTokens":4096,"totalTimeoutMs":120000}},
        "budgeted":true}}"#,
        version = 1_000 + n,
    )
}

fn digest(n: usize) -> String {
    let mut random = [0u8; token::RANDOM_BYTES];
    random[..8].copy_from_slice(&(n as u64).to_le_bytes());
    token::digest(&token::from_random(&random))
}

/// Bytes the cache (its table, sized for `KEYS` at once) and its interner
/// hold per key, for `KEYS` answers.
fn per_key(answer: impl Fn(usize) -> String) -> f64 {
    let before = LIVE.load(Ordering::Relaxed);
    let mut cache = Cache::new(KEYS, 4_000, 0);
    let mut interner = Interner::default();
    for n in 0..KEYS {
        // As the worker takes a lookup answer (`Worker::handle`).
        let lookup: Lookup = serde_json::from_str(&answer(n)).unwrap();
        let answer = interner.answer(lookup);
        assert!(cache.insert(&digest(n), &answer, n as u64 / 100));
    }
    assert_eq!(cache.len(), KEYS);
    (LIVE.load(Ordering::Relaxed) - before) as f64 / KEYS as f64
}

/// One test: the allocation count is the whole process's.
#[test]
fn a_cached_key_costs_at_most_100_bytes() {
    let known = per_key(answer);
    let unknown = per_key(|n| format!(r#"{{"schema":1,"version":{n},"status":"unknown"}}"#));
    let arch = std::env::consts::ARCH;
    println!("a cached key costs {known:.1} bytes, an unknown one {unknown:.1} ({arch}, {KEYS} keys)");
    assert!(known <= 100.0, "{known:.1} bytes per cached key");
    assert!(unknown <= 100.0, "{unknown:.1} bytes per cached unknown key");
}
