//! Counters and gauges in Envoy's stats (`wasmcustom.keygate.*`, shown by
//! `/stats` and `/stats/prometheus` as `keygate_*`). Names carry ids and
//! codes, never secrets.
//!
//! Requests only add to VM-local sums (no host call on the request path); the
//! root context's tick hands the sums to Envoy (`flush`, every 20 ms).

use std::cell::RefCell;
use std::collections::HashMap;

use proxy_wasm::hostcalls;
use proxy_wasm::types::MetricType;

#[derive(Default)]
struct Pending {
    /// By static name, then by label ("" for none): no allocation once seen.
    counters: HashMap<&'static str, HashMap<String, i64>>,
    gauges: HashMap<&'static str, i64>,
    ids: HashMap<String, u32>,
}

thread_local! {
    static PENDING: RefCell<Pending> = RefCell::new(Pending::default());
}

/// Adds one to the counter `keygate.<name>`.
pub fn count(name: &'static str) {
    add_labeled(name, "", 1);
}

/// Adds `n` to the counter `keygate.<name>`.
pub fn add(name: &'static str, n: u64) {
    add_labeled(name, "", i64::try_from(n).unwrap_or(i64::MAX));
}

/// Adds one to `keygate.<name>.<label>` (e.g. `denied.<code>`, `provider.<id>.requests`
/// written as name `provider` + label `<id>.requests`).
pub fn count_labeled(name: &'static str, label: &str) {
    add_labeled(name, label, 1);
}

fn add_labeled(name: &'static str, label: &str, n: i64) {
    if n == 0 {
        return;
    }
    PENDING.with(|p| {
        let mut p = p.borrow_mut();
        let by_label = p.counters.entry(name).or_default();
        match by_label.get_mut(label) {
            Some(v) => *v += n,
            None => {
                by_label.insert(label.to_string(), n);
            }
        }
    });
}

/// Moves the gauge `keygate.<name>` by `delta` (each worker adds its share).
pub fn gauge_add(name: &'static str, delta: i64) {
    if delta != 0 {
        PENDING.with(|p| *p.borrow_mut().gauges.entry(name).or_default() += delta);
    }
}

/// Hands the sums to Envoy.
pub fn flush() {
    PENDING.with(|p| {
        let mut p = p.borrow_mut();
        let Pending { counters, gauges, ids } = &mut *p;
        for (name, by_label) in counters.iter_mut() {
            for (label, n) in by_label.iter_mut().filter(|(_, n)| **n != 0) {
                let full = if label.is_empty() { format!("keygate.{name}") } else { format!("keygate.{name}.{label}") };
                if let Some(id) = id(ids, MetricType::Counter, full) {
                    let _ = hostcalls::increment_metric(id, *n);
                }
                *n = 0;
            }
        }
        for (name, delta) in gauges.iter_mut().filter(|(_, d)| **d != 0) {
            if let Some(id) = id(ids, MetricType::Gauge, format!("keygate.{name}")) {
                let _ = hostcalls::increment_metric(id, *delta);
            }
            *delta = 0;
        }
    });
}

fn id(ids: &mut HashMap<String, u32>, kind: MetricType, full: String) -> Option<u32> {
    if let Some(id) = ids.get(&full) {
        return Some(*id);
    }
    let id = hostcalls::define_metric(kind, &full).ok()?;
    ids.insert(full, id);
    Some(id)
}
