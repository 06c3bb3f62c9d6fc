//! The gateway-wide credit balance: granting, switching, and whether the
//! balance can cover an estimate. Money is micro-USD.

use super::budget::BudgetRef;
use super::ledger::Ledger;
use crate::model::Credits;
use crate::pricing::micros_to_usd;

/// The stored switches and grants of credits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CreditState {
    pub enabled: bool,
    /// Everything ever granted (minus what was taken back).
    pub granted: i64,
    /// Whether credits were ever granted or switched (after that, a grant no
    /// longer enables them).
    pub touched: bool,
}

impl CreditState {
    /// After adding `micros`: the first grant ever enables credits, unless
    /// they were switched explicitly before. Returns whether that enabled them.
    pub fn grant(self, micros: i64) -> (Self, bool) {
        let enables = !self.touched && !self.enabled;
        let next = CreditState {
            enabled: self.enabled || enables,
            granted: self.granted.saturating_add(micros),
            touched: true,
        };
        (next, enables)
    }

    /// After switching credits on or off. Returns whether that changed anything.
    pub fn switch(self, enabled: bool) -> (Self, bool) {
        (CreditState { enabled, granted: self.granted, touched: true }, self.enabled != enabled)
    }
}

/// (balance = granted - spent, reserved), micro-USD.
fn numbers<L: Ledger>(l: &mut L, state: &CreditState) -> Result<(i64, i64), L::Error> {
    let row = l.budget_row(&BudgetRef::credits())?;
    Ok((state.granted.saturating_sub(row.spent_micros), row.reserved_micros))
}

/// Why the balance cannot cover an estimate of `micros`, if it cannot: what is
/// left after reservations must be positive and at least the estimate.
pub fn refusal(balance: i64, reserved: i64, micros: i64) -> Option<String> {
    let available = balance.saturating_sub(reserved);
    (available <= 0 || available < micros).then(|| {
        format!(
            "the credit balance cannot cover this request: balance ${} - reserved ${} < estimate ${}",
            micros_to_usd(balance),
            micros_to_usd(reserved),
            micros_to_usd(micros)
        )
    })
}

/// Checks the credits (when enabled) for an estimate: `Ok(None)` when they
/// are off, `Ok(Some(Err(message)))` when they refuse.
pub fn check<L: Ledger>(l: &mut L, micros: i64) -> Result<Option<Result<BudgetRef, String>>, L::Error> {
    let state = l.credit_state()?;
    if !state.enabled {
        return Ok(None);
    }
    let (balance, reserved) = numbers(l, &state)?;
    Ok(Some(match refusal(balance, reserved, micros) {
        Some(msg) => Err(msg),
        None => Ok(BudgetRef::credits()),
    }))
}

/// What `/credits` shows.
pub fn view<L: Ledger>(l: &mut L) -> Result<Credits, L::Error> {
    let state = l.credit_state()?;
    let (balance, reserved) = numbers(l, &state)?;
    Ok(Credits { enabled: state.enabled, balance_usd: micros_to_usd(balance), reserved_usd: micros_to_usd(reserved) })
}

/// Adds (or, negative, takes back) `micros`; returns whether credits became
/// enabled (then every lookup answer changes).
pub fn add<L: Ledger>(l: &mut L, micros: i64) -> Result<bool, L::Error> {
    let (next, enabled) = l.credit_state()?.grant(micros);
    l.put_credit_state(&next)?;
    Ok(enabled)
}

/// Switches credits; returns whether that changed anything.
pub fn set_enabled<L: Ledger>(l: &mut L, enabled: bool) -> Result<bool, L::Error> {
    let (next, changed) = l.credit_state()?.switch(enabled);
    l.put_credit_state(&next)?;
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_grant_ever_enables_credits() {
        let (s, enabled) = CreditState::default().grant(5);
        assert!(enabled);
        assert_eq!(s, CreditState { enabled: true, granted: 5, touched: true });
    }

    #[test]
    fn a_grant_after_credits_were_switched_off_leaves_them_off() {
        let (off, changed) = CreditState::default().switch(false);
        assert!(!changed);
        let (s, enabled) = off.grant(5);
        assert!(!enabled);
        assert_eq!(s, CreditState { enabled: false, granted: 5, touched: true });
    }

    #[test]
    fn later_grants_only_add_and_negative_grants_take_back() {
        let (s, _) = CreditState::default().grant(5);
        let (s, enabled) = s.grant(-2);
        assert!(!enabled);
        assert_eq!(s.granted, 3);
    }

    #[test]
    fn switching_reports_a_change_only_when_the_switch_moves() {
        let on = CreditState { enabled: true, granted: 0, touched: true };
        assert!(!on.switch(true).1);
        assert!(on.switch(false).1);
    }

    #[test]
    fn the_balance_must_cover_reservations_and_the_estimate() {
        assert_eq!(refusal(10, 4, 6), None);
        assert_eq!(
            refusal(10, 4, 7).as_deref(),
            Some("the credit balance cannot cover this request: balance $0.00001 - reserved $0.000004 < estimate $0.000007")
        );
    }

    #[test]
    fn an_empty_balance_refuses_even_a_free_request() {
        assert!(refusal(0, 0, 0).is_some());
        assert!(refusal(5, 5, 0).is_some());
    }
}
