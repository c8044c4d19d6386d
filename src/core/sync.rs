//! The one way to take a std lock whose data stays valid when a holder panicked.
//!
//! A std `Mutex` or `RwLock` is *poisoned* when a thread panics while holding it: every later
//! `lock()` returns an error that carries the guard anyway. Recovering the guard is right when
//! the guarded data cannot be left half-updated in a way that matters: a cache (a missing or
//! stale entry is refilled), a counter or timestamp (one lost update), a book of peers or
//! waiters (an entry too many or too few is corrected by the next round), a slot a single
//! assignment fills. A panic in one task then does not take down every other task that shares
//! the data.
//!
//! It is wrong for data whose invariants span several fields and that a panic could leave
//! broken, above all the ledger: a poisoned ledger lock is an error its callers see
//! (`store::ledger::LedgerLock`), never recovered silently.

use std::sync::{Condvar, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

/// Locks `m`, recovering the guard if a holder panicked (see the module doc for when that is
/// right).
pub fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Read-locks `l`, recovering the guard if a holder panicked (see the module doc).
pub fn read<T: ?Sized>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}

/// Write-locks `l`, recovering the guard if a holder panicked (see the module doc).
pub fn write<T: ?Sized>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}

/// Waits on `cv` with `guard` for at most `timeout` (or a spurious wake-up), recovering the
/// guard if a holder of its mutex panicked meanwhile (see the module doc).
pub fn wait_timeout<'a, T>(cv: &Condvar, guard: MutexGuard<'a, T>, timeout: Duration) -> MutexGuard<'a, T> {
    match cv.wait_timeout(guard, timeout) {
        Ok((g, _)) => g,
        Err(p) => p.into_inner().0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_poisoned_lock_still_yields_its_data() {
        let m = std::sync::Arc::new(Mutex::new(1));
        let l = std::sync::Arc::new(RwLock::new(2));
        let (m2, l2) = (m.clone(), l.clone());
        let _ = std::thread::spawn(move || {
            let _g = m2.lock();
            let _w = l2.write();
            panic!("poison both");
        })
        .join();
        assert!(m.is_poisoned() && l.is_poisoned());
        *lock(&m) += 1;
        *write(&l) += 1;
        assert_eq!((*lock(&m), *read(&l)), (2, 3));
        let g = wait_timeout(&Condvar::new(), lock(&m), Duration::from_millis(1));
        assert_eq!(*g, 2);
    }
}
