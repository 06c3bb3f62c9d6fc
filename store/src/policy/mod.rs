//! Store policy: every rule of the key store, apart from any storage backend.
//!
//! # Design
//!
//! A backend (today `storage::sqlite`, next PostgreSQL) owns its transactions
//! and its statements; the policy owns every decision. The two meet in two
//! ways, both narrow:
//!
//! - **Pure functions over values read in the transaction.** The backend
//!   reads what a rule needs, asks the rule, and writes (or refuses with)
//!   what the rule returns: key status and validity ([`key_status`]), rate
//!   limits and the `budgeted` flag, rate-limit leases ([`leases`]), reference checks and "still in use"
//!   refusals ([`references`]), budget and credit decisions ([`budget`],
//!   [`credits`]), prices ([`prices`]), the change feed ([`changes`]), usage retention
//!   ([`retention`]), alert thresholds, signatures and retries ([`alerts`]),
//!   what an audit-log entry may hold and how long it is kept ([`audit`]),
//!   how long a console session lasts and how often one may start ([`sessions`]).
//! - **Billing driven over [`ledger::Ledger`].** Reserving, sweeping and
//!   ingesting usage read and write many rows in an order that is itself the
//!   rule (sweep first; key, then configuration, then credits; settle, then
//!   charge once). So the policy drives it ([`reservation`], [`credits`])
//!   through the `Ledger` trait, which a backend implements with one plain
//!   statement per method, inside the transaction it opened.
//!
//! A second backend thus implements `storage::Store` (CRUD statements, calling
//! the pure rules) and `Ledger` (billing rows), and copies no rule. Every
//! function here is tested natively, the billing ones against an in-memory
//! ledger.

pub mod alerts;
pub mod audit;
pub mod budget;
pub mod changes;
pub mod credits;
pub mod key_status;
pub mod leases;
pub mod ledger;
pub mod prices;
pub mod references;
pub mod reservation;
pub mod retention;
pub mod self_check;
pub mod sessions;
