//! A ledger's health: what would stop it taking writes (a failed durable write, a state
//! divergence), shared so it is read without the ledger's lock.

use std::sync::Mutex;

use crate::core::attest::StateDivergence;
use crate::core::sync::lock;

/// What would stop a ledger taking writes, shared so it is read without the ledger's lock.
#[derive(Debug)]
pub struct LedgerHealth {
    /// Set by a failed durable write (fjall poisons its database then), with the error.
    pub(super) poisoned: Mutex<Option<String>>,
    /// The chain attests a state that a replay of its own records does not reach (found when a
    /// state checkpoint event was applied and a rebuild by replay did not resolve it).
    pub(super) divergence: Mutex<Option<StateDivergence>>,
}

impl LedgerHealth {
    /// The failed durable write that poisoned the ledger, if any.
    pub fn poisoned_by(&self) -> Option<String> {
        lock(&self.poisoned).clone()
    }

    /// The state divergence the ledger found, if any.
    pub fn divergence(&self) -> Option<StateDivergence> {
        *lock(&self.divergence)
    }
}
