//! [`Ledger`]: the narrow interface through which the billing policy reads and
//! writes rows inside a backend's transaction. A backend implements it with
//! plain statements (no decision of its own); the policy drives it, so a
//! second backend gets every billing rule by implementing these methods.

use keygate_proto::lookup::UsageRecord;

use super::budget::{BudgetRef, BudgetRow};
use super::credits::CreditState;
use crate::error::StoreError;
use crate::model::BudgetSpec;
use crate::pricing::Price;

/// The price catalog: (provider, model pattern, price).
pub type Catalog = Vec<(String, String, Price)>;

/// What an access key is budgeted by.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KeyBudgets {
    pub config_id: Option<String>,
    pub budget: Option<BudgetSpec>,
}

/// A stored reservation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    pub id: String,
    pub request_id: String,
    pub access_key_id: String,
    pub tokens: i64,
    pub micros: i64,
    /// The budget rows it holds against.
    pub holds: Vec<BudgetRef>,
    pub created_ms: i64,
    pub expires_ms: i64,
    pub released: bool,
    pub settled_ms: Option<i64>,
}

/// A usage record as stored: counts clamped and the cost computed.
#[derive(Debug, Clone, PartialEq)]
pub struct UsageRow<'a> {
    pub id: String,
    pub record: &'a UsageRecord,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cached_tokens: i64,
    pub reasoning_tokens: i64,
    pub cost_micros: i64,
    pub started_ms: i64,
    pub ended_ms: i64,
}

/// Tokens and cost of one stored, not yet charged usage record.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Uncharged {
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cached_tokens: i64,
    pub cost_micros: i64,
}

/// Rows of budgets, credits, prices, reservations and usage, read and written
/// in the caller's transaction. Missing rows read as `None` or zero.
pub trait Ledger {
    /// The backend's error; store errors raised by the policy convert into it.
    type Error: From<StoreError>;

    fn budget_row(&mut self, at: &BudgetRef) -> Result<BudgetRow, Self::Error>;
    fn put_budget_row(&mut self, at: &BudgetRef, row: &BudgetRow) -> Result<(), Self::Error>;

    fn credit_state(&mut self) -> Result<CreditState, Self::Error>;
    fn put_credit_state(&mut self, state: &CreditState) -> Result<(), Self::Error>;

    fn prices(&mut self) -> Result<Catalog, Self::Error>;
    /// `None` when no access key has this id.
    fn key_budgets(&mut self, access_key_id: &str) -> Result<Option<KeyBudgets>, Self::Error>;
    /// `None` when the configuration has no budget (or does not exist).
    fn config_budget(&mut self, config_id: &str) -> Result<Option<BudgetSpec>, Self::Error>;

    fn insert_reservation(&mut self, r: &Reservation) -> Result<(), Self::Error>;
    fn reservation(&mut self, id: &str) -> Result<Option<Reservation>, Self::Error>;
    /// Reservations not released whose expiry is at or before `now_ms`.
    fn expired_reservations(&mut self, now_ms: i64) -> Result<Vec<Reservation>, Self::Error>;
    fn mark_released(&mut self, id: &str) -> Result<(), Self::Error>;
    /// Marks a reservation released and settled at `now_ms`.
    fn mark_settled(&mut self, id: &str, now_ms: i64) -> Result<(), Self::Error>;
    /// Deletes released reservations created before `created_before_ms`.
    fn forget_released(&mut self, created_before_ms: i64) -> Result<(), Self::Error>;
    /// The holds of a settled reservation of `request_id`, if there is one.
    fn settled_holds(&mut self, request_id: &str) -> Result<Option<Vec<BudgetRef>>, Self::Error>;

    /// Stores a usage record; `false` when its (request id, attempt) is
    /// already stored (then nothing changes).
    fn insert_usage(&mut self, u: &UsageRow<'_>) -> Result<bool, Self::Error>;
    /// The records of `request_id` not charged yet.
    fn uncharged_usage(&mut self, request_id: &str) -> Result<Vec<Uncharged>, Self::Error>;
    fn mark_charged(&mut self, request_id: &str) -> Result<(), Self::Error>;
    /// Moves the last use of an access key forward to `ms` (never back).
    fn touch_access_key(&mut self, id: &str, ms: i64) -> Result<(), Self::Error>;
    /// Moves the last use of a provider key forward to `ms` (never back).
    fn touch_provider_key(&mut self, id: &str, ms: i64) -> Result<(), Self::Error>;
}

/// An in-memory [`Ledger`] for the policy's unit tests.
#[cfg(test)]
pub(crate) mod memory {
    use std::collections::HashMap;

    use super::*;
    use crate::policy::alerts::{AlertLedger, AlertTarget, ExpiringKey, Fired, NewDelivery};

    #[derive(Debug, Clone, PartialEq)]
    pub struct StoredUsage {
        pub request_id: String,
        pub attempt: u32,
        pub charge: Uncharged,
        pub charged: bool,
    }

    #[derive(Debug, Default)]
    pub struct MemoryLedger {
        pub budgets: HashMap<(String, String, i64), BudgetRow>,
        pub credits: CreditState,
        pub prices: Catalog,
        pub keys: HashMap<String, KeyBudgets>,
        pub configs: HashMap<String, BudgetSpec>,
        pub reservations: Vec<Reservation>,
        pub usage: Vec<StoredUsage>,
        pub last_used: HashMap<String, i64>,
        /// Alerts: enabled webhooks, key and configuration names, keys
        /// expiring, marks, deliveries and what was forgotten.
        pub targets: Vec<AlertTarget>,
        pub names: HashMap<String, String>,
        pub expiring: Vec<ExpiringKey>,
        pub fired: Vec<Fired>,
        pub deliveries: Vec<NewDelivery>,
        pub forgotten: Vec<(i64, i64)>,
    }

    fn key(at: &BudgetRef) -> (String, String, i64) {
        (at.scope.clone(), at.win.clone(), at.start)
    }

    impl MemoryLedger {
        pub fn row(&self, at: &BudgetRef) -> BudgetRow {
            self.budgets.get(&key(at)).copied().unwrap_or_default()
        }

        fn find(&mut self, id: &str) -> Option<&mut Reservation> {
            self.reservations.iter_mut().find(|r| r.id == id)
        }
    }

    impl Ledger for MemoryLedger {
        type Error = StoreError;

        fn budget_row(&mut self, at: &BudgetRef) -> Result<BudgetRow, StoreError> {
            Ok(self.row(at))
        }
        fn put_budget_row(&mut self, at: &BudgetRef, row: &BudgetRow) -> Result<(), StoreError> {
            self.budgets.insert(key(at), *row);
            Ok(())
        }
        fn credit_state(&mut self) -> Result<CreditState, StoreError> {
            Ok(self.credits)
        }
        fn put_credit_state(&mut self, state: &CreditState) -> Result<(), StoreError> {
            self.credits = *state;
            Ok(())
        }
        fn prices(&mut self) -> Result<Catalog, StoreError> {
            Ok(self.prices.clone())
        }
        fn key_budgets(&mut self, access_key_id: &str) -> Result<Option<KeyBudgets>, StoreError> {
            Ok(self.keys.get(access_key_id).cloned())
        }
        fn config_budget(&mut self, config_id: &str) -> Result<Option<BudgetSpec>, StoreError> {
            Ok(self.configs.get(config_id).cloned())
        }
        fn insert_reservation(&mut self, r: &Reservation) -> Result<(), StoreError> {
            self.reservations.push(r.clone());
            Ok(())
        }
        fn reservation(&mut self, id: &str) -> Result<Option<Reservation>, StoreError> {
            Ok(self.find(id).map(|r| r.clone()))
        }
        fn expired_reservations(&mut self, now_ms: i64) -> Result<Vec<Reservation>, StoreError> {
            Ok(self.reservations.iter().filter(|r| !r.released && r.expires_ms <= now_ms).cloned().collect())
        }
        fn mark_released(&mut self, id: &str) -> Result<(), StoreError> {
            if let Some(r) = self.find(id) {
                r.released = true;
            }
            Ok(())
        }
        fn mark_settled(&mut self, id: &str, now_ms: i64) -> Result<(), StoreError> {
            if let Some(r) = self.find(id) {
                r.released = true;
                r.settled_ms = Some(now_ms);
            }
            Ok(())
        }
        fn forget_released(&mut self, created_before_ms: i64) -> Result<(), StoreError> {
            self.reservations.retain(|r| !(r.released && r.created_ms < created_before_ms));
            Ok(())
        }
        fn settled_holds(&mut self, request_id: &str) -> Result<Option<Vec<BudgetRef>>, StoreError> {
            Ok(self
                .reservations
                .iter()
                .find(|r| r.request_id == request_id && r.settled_ms.is_some())
                .map(|r| r.holds.clone()))
        }
        fn insert_usage(&mut self, u: &UsageRow<'_>) -> Result<bool, StoreError> {
            let (request_id, attempt) = (&u.record.request_id, u.record.attempt);
            if self.usage.iter().any(|s| &s.request_id == request_id && s.attempt == attempt) {
                return Ok(false);
            }
            self.usage.push(StoredUsage {
                request_id: request_id.clone(),
                attempt,
                charge: Uncharged {
                    input_tokens: u.input_tokens,
                    output_tokens: u.output_tokens,
                    cached_tokens: u.cached_tokens,
                    cost_micros: u.cost_micros,
                },
                charged: false,
            });
            Ok(true)
        }
        fn uncharged_usage(&mut self, request_id: &str) -> Result<Vec<Uncharged>, StoreError> {
            Ok(self.usage.iter().filter(|s| s.request_id == request_id && !s.charged).map(|s| s.charge).collect())
        }
        fn mark_charged(&mut self, request_id: &str) -> Result<(), StoreError> {
            self.usage.iter_mut().filter(|s| s.request_id == request_id).for_each(|s| s.charged = true);
            Ok(())
        }
        fn touch_access_key(&mut self, id: &str, ms: i64) -> Result<(), StoreError> {
            let e = self.last_used.entry(format!("ak:{id}")).or_insert(0);
            *e = (*e).max(ms);
            Ok(())
        }
        fn touch_provider_key(&mut self, id: &str, ms: i64) -> Result<(), StoreError> {
            let e = self.last_used.entry(format!("pk:{id}")).or_insert(0);
            *e = (*e).max(ms);
            Ok(())
        }
    }

    impl AlertLedger for MemoryLedger {
        fn alert_targets(&mut self) -> Result<Vec<AlertTarget>, StoreError> {
            Ok(self.targets.clone())
        }
        fn key_name(&mut self, id: &str) -> Result<Option<String>, StoreError> {
            Ok(self.names.get(id).cloned())
        }
        fn config_name(&mut self, id: &str) -> Result<Option<String>, StoreError> {
            Ok(self.names.get(id).cloned())
        }
        fn expiring_keys(&mut self, after_secs: i64, until_secs: i64) -> Result<Vec<ExpiringKey>, StoreError> {
            Ok(self
                .expiring
                .iter()
                .filter(|k| k.expires_at > after_secs && k.expires_at <= until_secs)
                .cloned()
                .collect())
        }
        fn insert_fired(&mut self, f: &Fired) -> Result<bool, StoreError> {
            let same = |o: &Fired| {
                (&o.webhook_id, &o.subject, &o.unit, &o.period, o.threshold)
                    == (&f.webhook_id, &f.subject, &f.unit, &f.period, f.threshold)
            };
            if self.fired.iter().any(same) {
                return Ok(false);
            }
            self.fired.push(f.clone());
            Ok(true)
        }
        fn insert_delivery(&mut self, d: &NewDelivery) -> Result<(), StoreError> {
            self.deliveries.push(d.clone());
            Ok(())
        }
        fn forget_alerts(&mut self, ended_before_ms: i64, finished_before_ms: i64) -> Result<(), StoreError> {
            self.fired.retain(|f| f.period_end_ms.is_none_or(|e| e >= ended_before_ms));
            self.forgotten.push((ended_before_ms, finished_before_ms));
            Ok(())
        }
    }
}
