//! The ledger shared between threads ([`SharedLedger`]) and the one way to take its lock
//! ([`LedgerLock`]). Releasing the write guard publishes the projection to readers
//! ([`super::view`]).

use std::ops::{Deref, DerefMut};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use super::Ledger;
use crate::store::error::LedgerError;

/// A ledger shared by the tasks of one node (the Raft state machine, gossip, reads, the
/// resolver, ...). Lock it with [`LedgerLock`].
pub type SharedLedger = Arc<RwLock<Ledger>>;

/// Taking the lock of a shared ledger, as a [`LedgerError`] when it is poisoned.
///
/// A poisoned ledger lock (a thread panicked while holding it, perhaps in the middle of an
/// append that updates the records, the head, the projection and the recent-events window
/// together) is never recovered silently, unlike the caches and books of
/// [`crate::core::sync`]: the ledger's in-memory state may no longer be the one its records
/// lead to. Every later taker gets [`LedgerError::LockPoisoned`] until the node restarts and
/// reopens the ledger from disk.
pub trait LedgerLock {
    /// A shared read guard, or [`LedgerError::LockPoisoned`].
    fn read_ledger(&self) -> Result<RwLockReadGuard<'_, Ledger>, LedgerError>;
    /// The exclusive write guard, or [`LedgerError::LockPoisoned`]. Releasing it publishes
    /// the ledger's projection to its [`ProjectionView`](super::ProjectionView).
    fn write_ledger(&self) -> Result<LedgerWriteGuard<'_>, LedgerError>;
    /// The write guard if nobody holds the lock now (`None` if somebody does), or
    /// [`LedgerError::LockPoisoned`]. Never waits.
    fn try_write_ledger(&self) -> Result<Option<LedgerWriteGuard<'_>>, LedgerError>;
}

/// The ledger's write guard: releasing it publishes the projection (before the lock is
/// released), unless the thread is panicking, which poisons the view as it poisons the lock.
#[derive(Debug)]
pub struct LedgerWriteGuard<'a>(RwLockWriteGuard<'a, Ledger>);

impl Deref for LedgerWriteGuard<'_> {
    type Target = Ledger;
    fn deref(&self) -> &Ledger {
        &self.0
    }
}

impl DerefMut for LedgerWriteGuard<'_> {
    fn deref_mut(&mut self) -> &mut Ledger {
        &mut self.0
    }
}

impl Drop for LedgerWriteGuard<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.view.poison();
        } else {
            self.0.view.release(self.0.projection());
        }
    }
}

impl LedgerLock for RwLock<Ledger> {
    fn read_ledger(&self) -> Result<RwLockReadGuard<'_, Ledger>, LedgerError> {
        self.read().map_err(|p| LedgerError::LockPoisoned { path: p.get_ref().path().to_path_buf() })
    }

    fn write_ledger(&self) -> Result<LedgerWriteGuard<'_>, LedgerError> {
        self.write()
            .map(LedgerWriteGuard)
            .map_err(|p| LedgerError::LockPoisoned { path: p.get_ref().path().to_path_buf() })
    }

    fn try_write_ledger(&self) -> Result<Option<LedgerWriteGuard<'_>>, LedgerError> {
        match self.try_write() {
            Ok(g) => Ok(Some(LedgerWriteGuard(g))),
            Err(std::sync::TryLockError::WouldBlock) => Ok(None),
            Err(std::sync::TryLockError::Poisoned(p)) => {
                Err(LedgerError::LockPoisoned { path: p.get_ref().path().to_path_buf() })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A thread that panics while holding the write guard poisons the lock: every later taker
    /// gets the typed error, naming the ledger, and no guard.
    #[test]
    fn a_poisoned_ledger_lock_is_an_error() {
        let (dir, l) = crate::store::ledger::scratch();
        let shared: SharedLedger = Arc::new(RwLock::new(l));
        assert!(shared.read_ledger().is_ok());
        let s2 = shared.clone();
        let _ = std::thread::spawn(move || {
            let _g = s2.write_ledger().expect("not poisoned yet");
            panic!("a panic while holding the ledger");
        })
        .join();
        match shared.read_ledger() {
            Err(LedgerError::LockPoisoned { path }) => assert_eq!(path, dir.path()),
            other => panic!("expected LockPoisoned, got {:?}", other.map(|_| ())),
        }
        assert!(matches!(shared.write_ledger(), Err(LedgerError::LockPoisoned { .. })));
        assert!(matches!(shared.try_write_ledger(), Err(LedgerError::LockPoisoned { .. })));
    }

    /// `try_write_ledger` never waits: no guard while a reader holds the ledger, the guard
    /// once it is free.
    #[test]
    fn try_write_ledger_gives_no_guard_while_the_ledger_is_held() {
        let (_dir, l) = crate::store::ledger::scratch();
        let shared: SharedLedger = Arc::new(RwLock::new(l));
        let reader = shared.read_ledger().expect("read");
        assert!(shared.try_write_ledger().expect("not poisoned").is_none());
        drop(reader);
        let writer = shared.try_write_ledger().expect("not poisoned");
        assert!(writer.is_some());
        assert!(shared.try_write_ledger().expect("not poisoned").is_none(), "a writer holds it");
    }
}
