//! Counters and gauges in Envoy's stats (`wasmcustom.keygate.*`, shown by
//! `/stats` and `/stats/prometheus`). Names carry ids and codes, never secrets.

use std::cell::RefCell;
use std::collections::HashMap;

use proxy_wasm::hostcalls;
use proxy_wasm::types::MetricType;

thread_local! {
    static IDS: RefCell<HashMap<String, u32>> = RefCell::new(HashMap::new());
}

fn id(kind: MetricType, name: &str) -> Option<u32> {
    IDS.with(|ids| {
        if let Some(id) = ids.borrow().get(name) {
            return Some(*id);
        }
        let id = hostcalls::define_metric(kind, &format!("keygate.{name}")).ok()?;
        ids.borrow_mut().insert(name.to_string(), id);
        Some(id)
    })
}

/// Adds one to the counter `keygate.<name>`.
pub fn count(name: &str) {
    add_metric(MetricType::Counter, name, 1);
}

/// Adds `n` to the counter `keygate.<name>`.
pub fn add(name: &str, n: u64) {
    if n > 0 {
        add_metric(MetricType::Counter, name, i64::try_from(n).unwrap_or(i64::MAX));
    }
}

/// Moves the gauge `keygate.<name>` by `delta` (each worker adds its share).
pub fn gauge_add(name: &str, delta: i64) {
    if delta != 0 {
        add_metric(MetricType::Gauge, name, delta);
    }
}

fn add_metric(kind: MetricType, name: &str, delta: i64) {
    if let Some(id) = id(kind, name) {
        let _ = hostcalls::increment_metric(id, delta);
    }
}
