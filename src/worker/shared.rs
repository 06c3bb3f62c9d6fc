//! What every worker of one Envoy shares, in proxy-wasm shared data: each
//! key's rate-limit lease (`ratelimit::Pool`, read-modify-write with
//! compare-and-swap) and each provider credential's cool-down.

use std::cell::Cell;

use log::info;

use crate::admission::{Counted, Counters, CountersUnavailable};
use crate::callouts::LeaseAsk;
use crate::concurrency::Slots;
use crate::config::Config;
use crate::failover;
use crate::handover::Outcome;
use crate::host::{Host, SharedError};
use crate::metrics::{Counter, Metrics};
use crate::ratelimit::{self, Pool};
use keygate_proto::lookup::LeaseResponse;

const HEALTH_PREFIX: &str = "keygate.cooldown.";
const RATE_PREFIX: &str = "keygate.lease.";
const SLOTS_PREFIX: &str = "keygate.slots.";
/// The CAS token an entry is created with. Envoy ignores the token of an
/// entry that does not exist (and creates it); one that another worker has
/// just created does not match it, so nobody's first write is overwritten.
const CREATE: u32 = u32::MAX;

/// The shared-data entry of this Envoy's lease of a key's rate window.
pub fn rate_key(key_id: &str) -> String {
    format!("{RATE_PREFIX}{key_id}")
}

/// Until when (ms) a provider credential cools down (0: it does not).
pub fn cool_until(host: &impl Host, credential_id: &str) -> u64 {
    host.shared_data(&format!("{HEALTH_PREFIX}{credential_id}"))
        .ok()
        .and_then(|(v, _)| v)
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// Cools provider key `key_id` down after what it answered (a 429 as long
/// as it asked, a 401/403 for `cooldownAuthFailureMs`): every worker of this
/// Envoy skips it until then.
pub fn cool_down(host: &impl Host, metrics: &mut Metrics, key_id: &str, outcome: Outcome, config: &Config) {
    let Some(status) = outcome.status else { return };
    let cooldown = failover::cooldown_ms(
        status,
        outcome.retry_hint_ms,
        config.cooldown_rate_limited_ms,
        config.cooldown_auth_failure_ms,
    );
    if let Some(ms) = cooldown.filter(|ms| *ms > 0) {
        let until = (host.now_ms() + ms).to_string();
        let _ = host.set_shared_data(&format!("{HEALTH_PREFIX}{key_id}"), until.as_bytes(), None);
        info!("keygate: provider key {key_id} answered {status}: skipped for {ms} ms");
        metrics.count(Counter::FailoverCooldowns);
    }
}

/// Counters read from shared data (the rate window's CAS token kept for the write).
pub struct Shared<'h, H: Host> {
    host: &'h H,
    cas: Cell<Option<u32>>,
}

impl<'h, H: Host> Shared<'h, H> {
    pub fn new(host: &'h H) -> Self {
        Shared { host, cas: Cell::new(None) }
    }

    /// The CAS token of the rate window last read.
    pub fn cas(&self) -> Option<u32> {
        self.cas.get()
    }
}

impl<H: Host> Counters for Shared<'_, H> {
    fn rate_pool(&self, key_id: &str) -> Result<Option<Pool>, CountersUnavailable> {
        let (pool, cas) = read_pool(self.host, &rate_key(key_id))?;
        self.cas.set(Some(cas));
        Ok(pool)
    }

    fn cool_until(&self, credential_id: &str) -> u64 {
        cool_until(self.host, credential_id)
    }
}

/// A key's pool and its CAS token. Envoy writes a missing entry whatever the
/// CAS token, so two workers writing a key's first pool would both succeed
/// (and one grant be lost): the entry is created empty first (with a token
/// that cannot match an entry another worker has just created), and every
/// write is a compare-and-swap on an entry that exists.
fn read_pool(host: &impl Host, key: &str) -> Result<(Option<Pool>, u32), CountersUnavailable> {
    let read = || host.shared_data(key).map_err(|_| CountersUnavailable);
    let (mut value, mut cas) = read()?;
    if cas.is_none() {
        let _ = host.set_shared_data(key, b"", Some(CREATE));
        (value, cas) = read()?;
    }
    let cas = cas.ok_or(CountersUnavailable)?;
    Ok((value.as_deref().and_then(Pool::parse), cas))
}

/// Read-modify-write of a key's pool with compare-and-swap (`f` returns
/// `None`: nothing to write).
fn update_pool(host: &impl Host, key_id: &str, mut f: impl FnMut(Option<Pool>) -> Option<Pool>) -> bool {
    let key = rate_key(key_id);
    for _ in 0..16 {
        let Ok((pool, cas)) = read_pool(host, &key) else { return false };
        let Some(next) = f(pool) else { return true };
        match host.set_shared_data(&key, next.encode().as_bytes(), Some(cas)) {
            Ok(()) => return true,
            Err(SharedError::CasMismatch) => continue,
            Err(SharedError::Failed) => return false,
        }
    }
    false
}

/// The shared-data entry of a key's concurrency slots on this Envoy.
fn slots_key(key_id: &str) -> String {
    format!("{SLOTS_PREFIX}{key_id}")
}

/// Read-modify-write of a key's slots with compare-and-swap (`f` returns
/// `None`: nothing to write, and the answer is `Ok(false)`).
fn update_slots(host: &impl Host, key_id: &str, mut f: impl FnMut(&Slots) -> Option<Slots>) -> Result<bool, ()> {
    let key = slots_key(key_id);
    for _ in 0..16 {
        let read = || host.shared_data(&key).map_err(|_| ());
        let (mut value, mut cas) = read()?;
        if cas.is_none() {
            let _ = host.set_shared_data(&key, b"", Some(CREATE));
            (value, cas) = read()?;
        }
        let Some(cas) = cas else { return Err(()) };
        let Some(next) = f(&Slots::parse(value.as_deref().unwrap_or_default())) else { return Ok(false) };
        match host.set_shared_data(&key, next.encode().as_bytes(), Some(cas)) {
            Ok(()) => return Ok(true),
            Err(SharedError::CasMismatch) => continue,
            Err(SharedError::Failed) => return Err(()),
        }
    }
    Err(())
}

/// Takes one of the key's `max` slots for VM `vm` (`Ok(false)`: all taken).
pub fn take_slot(host: &impl Host, key_id: &str, vm: u64, max: u64) -> Result<bool, ()> {
    let now = host.now_ms();
    update_slots(host, key_id, |s| s.take(vm, max, now))
}

/// Gives back one of VM `vm`'s slots of the key.
pub fn give_back_slot(host: &impl Host, key_id: &str, vm: u64) {
    let now = host.now_ms();
    let _ = update_slots(host, key_id, |s| Some(s.give_back(vm, now)));
}

/// VM `vm` vouches that it holds `count` of the key's slots.
pub fn vouch_slots(host: &impl Host, key_id: &str, vm: u64, count: u32) {
    let now = host.now_ms();
    let _ = update_slots(host, key_id, |s| Some(s.vouch(vm, count, now)));
}

/// Adds a lease the store granted to this Envoy's pool of the key.
pub fn add_grant(host: &impl Host, ask: &LeaseAsk, grant: &LeaseResponse) -> bool {
    let now = host.now_ms();
    update_pool(host, &ask.key_id, |pool| {
        Some(pool.unwrap_or_default().with_grant(grant, ask.sent_ms, now, ask.needed, &ask.limits))
    })
}

/// Corrects the pool's tokens from the estimate to the real usage.
pub fn settle_rate(host: &impl Host, key_id: &str, rate: &Counted, actual: u64) {
    update_pool(host, key_id, |pool| ratelimit::settle(pool?, rate.pool.start_ms, rate.estimated, actual));
}
