//! Counters and gauges in Envoy's stats (`wasmcustom.keygate.*`, shown by
//! `/stats` and `/stats/prometheus` as `keygate_*`). Every name is in the
//! enums below; labels carry ids and codes, never secrets.
//!
//! Requests only add to worker-local sums (no host call on the request path);
//! the root context's tick hands the sums to Envoy (`flush`, every 20 ms).

use std::collections::HashMap;

use crate::host::{Host, MetricKind};

macro_rules! names {
    ($(#[$doc:meta])* $enum:ident { $($(#[$vdoc:meta])* $variant:ident => $name:literal,)* }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $enum { $($(#[$vdoc])* $variant,)* }

        impl $enum {
            pub const ALL: &'static [$enum] = &[$($enum::$variant,)*];

            /// The name after `keygate.`.
            pub fn name(self) -> &'static str {
                match self { $($enum::$variant => $name,)* }
            }
        }
    };
}

names! {
    /// A counter: `keygate.<name>`.
    Counter {
        CacheHits => "cache.hits",
        CacheMisses => "cache.misses",
        CacheStaleServed => "cache.stale_served",
        StoreLookups => "store.lookups",
        StoreCoalesced => "store.coalesced",
        StoreErrors => "store.errors",
        StoreRetries => "store.retries",
        StorePollErrors => "store.poll_errors",
        RequestsAllowed => "requests.allowed",
        RequestsDenied => "requests.denied",
        GateEarlyRefusals => "gate.early_refusals",
        RatelimitRefused => "ratelimit.refused",
        ConcurrencyRefused => "concurrency.refused",
        RatelimitLeases => "ratelimit.leases",
        BudgetReserves => "budget.reserves",
        FailoverRetries => "failover.retries",
        FailoverCooldowns => "failover.cooldowns",
        FailoverExhausted => "failover.exhausted",
        ScrubbedHeaders => "scrubbed.headers",
        ScrubbedBodies => "scrubbed.bodies",
        /// Answers reset part-way (`request::cut_answer`).
        AnswersCut => "answers.cut",
        TokensInput => "tokens.input",
        TokensOutput => "tokens.output",
        UsageDropped => "usage.dropped",
    }
}

names! {
    /// A counter per label: `keygate.<name>.<label>`.
    Labeled {
        /// By error code.
        Denied => "denied",
        /// By provider id.
        RequestsProvider => "requests.provider",
    }
}

names! {
    /// A gauge: `keygate.<name>`, each worker adding its share.
    Gauge {
        CacheEntries => "cache.entries",
    }
}

/// Sums not yet handed to Envoy (one slot per name, in the enums' order),
/// and the ids Envoy gave each full name.
#[derive(Default)]
pub struct Metrics {
    counters: [i64; Counter::ALL.len()],
    labeled: [HashMap<String, i64>; Labeled::ALL.len()],
    gauges: [i64; Gauge::ALL.len()],
    ids: HashMap<String, u32>,
}

impl Metrics {
    pub fn count(&mut self, c: Counter) {
        self.add(c, 1);
    }

    pub fn add(&mut self, c: Counter, n: u64) {
        if let Some(sum) = self.counters.get_mut(c as usize).filter(|_| n > 0) {
            *sum += i64::try_from(n).unwrap_or(i64::MAX);
        }
    }

    pub fn count_labeled(&mut self, l: Labeled, label: &str) {
        let Some(by_label) = self.labeled.get_mut(l as usize) else { return };
        match by_label.get_mut(label) {
            Some(v) => *v += 1,
            None => {
                by_label.insert(label.to_string(), 1);
            }
        }
    }

    pub fn gauge_add(&mut self, g: Gauge, delta: i64) {
        if let Some(sum) = self.gauges.get_mut(g as usize).filter(|_| delta != 0) {
            *sum += delta;
        }
    }

    /// Hands the sums to Envoy.
    pub fn flush(&mut self, host: &impl Host) {
        let Metrics { counters, labeled, gauges, ids } = self;
        for (c, n) in Counter::ALL.iter().zip(counters.iter_mut()).filter(|(_, n)| **n != 0) {
            emit(host, ids, MetricKind::Counter, format!("keygate.{}", c.name()), n);
        }
        for (l, by_label) in Labeled::ALL.iter().zip(labeled.iter_mut()) {
            for (label, n) in by_label.iter_mut().filter(|(_, n)| **n != 0) {
                emit(host, ids, MetricKind::Counter, format!("keygate.{}.{label}", l.name()), n);
            }
        }
        for (g, delta) in Gauge::ALL.iter().zip(gauges.iter_mut()).filter(|(_, d)| **d != 0) {
            emit(host, ids, MetricKind::Gauge, format!("keygate.{}", g.name()), delta);
        }
    }
}

fn emit(host: &impl Host, ids: &mut HashMap<String, u32>, kind: MetricKind, full: String, n: &mut i64) {
    let id = match ids.get(&full) {
        Some(id) => *id,
        None => match host.define_metric(kind, &full) {
            Ok(id) => *ids.entry(full).or_insert(id),
            Err(_) => return,
        },
    };
    let _ = host.increment_metric(id, *n);
    *n = 0;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake_host::FakeHost;

    #[test]
    fn sums_reach_envoy_once_per_flush() {
        let host = FakeHost::new();
        let mut m = Metrics::default();
        m.count(Counter::CacheHits);
        m.count(Counter::CacheHits);
        m.count_labeled(Labeled::Denied, "invalid_access_key");
        m.gauge_add(Gauge::CacheEntries, 3);
        m.flush(&host);
        m.flush(&host);
        assert_eq!(host.metric("keygate.cache.hits"), 2);
        assert_eq!(host.metric("keygate.denied.invalid_access_key"), 1);
        assert_eq!(host.metric("keygate.cache.entries"), 3);
    }

    #[test]
    fn each_name_has_its_slot() {
        assert!(Counter::ALL.iter().enumerate().all(|(i, &c)| c as usize == i));
        assert!(Labeled::ALL.iter().enumerate().all(|(i, &l)| l as usize == i));
        assert!(Gauge::ALL.iter().enumerate().all(|(i, &g)| g as usize == i));
    }

    #[test]
    fn names_are_unique() {
        let mut names: Vec<&str> = Counter::ALL.iter().map(|c| c.name()).collect();
        names.extend(Labeled::ALL.iter().map(|l| l.name()));
        names.extend(Gauge::ALL.iter().map(|g| g.name()));
        let n = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), n);
    }
}
