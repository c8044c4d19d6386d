//! The projection as readers see it ([`ProjectionView`]): a snapshot the ledger publishes each
//! time a write guard is released (read-copy-update).
//!
//! A reader takes the newest snapshot — an `Arc` cloned under a lock held only for that
//! clone — and answers from it with no lock at all, however long a writer holds the ledger's
//! (an apply batch of thousands of events holds it for milliseconds). Publishing costs a few
//! reference counts: the projection's maps are persistent (`core::projection::shared`), so
//! the snapshot shares them with the ledger's own projection, and the writer's next change
//! copies only the paths it changes.
//!
//! A snapshot is published before the write lock is released, so a reader that takes the
//! ledger's lock after a write and then the view sees that write (or a newer one).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use crate::core::projection::Projection;

/// The newest published projection of one ledger (see the module doc).
#[derive(Debug, Default)]
pub struct ProjectionView {
    current: RwLock<Arc<Projection>>,
    /// Set when a writer panicked while holding the ledger: its projection may be half
    /// changed, so none is published any more, and readers get the ledger's poisoned error.
    poisoned: AtomicBool,
}

impl ProjectionView {
    pub(super) fn new(projection: Projection) -> Self {
        ProjectionView { current: RwLock::new(Arc::new(projection)), poisoned: AtomicBool::new(false) }
    }

    /// The newest snapshot, or `None` after a writer panicked holding the ledger.
    pub fn load(&self) -> Option<Arc<Projection>> {
        if self.poisoned.load(Ordering::Acquire) {
            return None;
        }
        // The lock guards one pointer swap and no invariant: a poisoned one still holds a
        // whole snapshot.
        Some(self.current.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone())
    }

    /// Publishes `projection` unless it shares everything with the snapshot already out.
    pub(super) fn publish(&self, projection: &Projection) {
        let mut current = self.current.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        if !current.shares_state_with(projection) {
            *current = Arc::new(projection.clone());
        }
    }

    pub(super) fn poison(&self) {
        self.poisoned.store(true, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, RwLock};

    use crate::store::ledger::{Ledger, LedgerConfig, LedgerError, LedgerLock};
    use crate::store::synth::{Synth, SynthConfig};

    fn ledger(dir: &std::path::Path) -> Arc<RwLock<Ledger>> {
        let l = Ledger::open(dir, LedgerConfig { durable: false, ..LedgerConfig::default() }).expect("open");
        Arc::new(RwLock::new(l))
    }

    /// A reader answers from the published snapshot while a writer holds the ledger's lock;
    /// the writer's change is published when its guard is released, before the lock is.
    #[test]
    fn readers_never_wait_for_a_writer_and_see_each_write_once_released() {
        let dir = tempfile::tempdir().expect("tempdir");
        let shared = ledger(dir.path());
        let mut synth = Synth::new(SynthConfig::default());
        shared.write_ledger().expect("write").append(synth.next_chunk(100)).expect("append");
        let view = shared.read_ledger().expect("read").view();
        assert_eq!(view.load().expect("published").head().map(|h| h.seq), Some(99));

        let mut guard = shared.write_ledger().expect("write");
        guard.append(synth.next_chunk(50)).expect("append");
        // The writer still holds the lock: another thread reads the older snapshot at once.
        let (v2, s2) = (view.clone(), shared.clone());
        let reader = std::thread::spawn(move || {
            let seen = v2.load().expect("published").head().map(|h| h.seq);
            let blocked = s2.try_read().is_err();
            (seen, blocked)
        });
        let (seen, blocked) = reader.join().expect("reader");
        assert!(blocked, "the ledger's lock is held");
        assert_eq!(seen, Some(99), "the snapshot from before the write being made");
        drop(guard);
        assert_eq!(view.load().expect("published").head().map(|h| h.seq), Some(149));
        // A snapshot kept by a reader does not change under later writes.
        let kept = view.load().expect("published");
        shared.write_ledger().expect("write").append(synth.next_chunk(10)).expect("append");
        assert_eq!(kept.head().map(|h| h.seq), Some(149));
        assert_eq!(view.load().expect("published").head().map(|h| h.seq), Some(159));
        assert_eq!(&*view.load().expect("published"), shared.read_ledger().expect("read").projection());
    }

    /// A writer that panics while holding the ledger publishes nothing more: readers of the
    /// view get no snapshot, as takers of the lock get its poisoned error.
    #[test]
    fn a_panicking_writer_poisons_the_view() {
        let dir = tempfile::tempdir().expect("tempdir");
        let shared = ledger(dir.path());
        let view = shared.read_ledger().expect("read").view();
        assert!(view.load().is_some());
        let s2 = shared.clone();
        let _ = std::thread::spawn(move || {
            let _g = s2.write_ledger().expect("not poisoned yet");
            panic!("a panic while holding the ledger");
        })
        .join();
        assert!(view.load().is_none());
        assert!(matches!(shared.read_ledger(), Err(LedgerError::LockPoisoned { .. })));
    }

    /// A published snapshot shares its maps with the ledger's projection, which goes on
    /// changing records in place (trust, status, capabilities, services registered and
    /// dropped): the snapshot's state stays byte for byte what it was, and a projection
    /// rebuilt from it equals it.
    #[test]
    fn a_snapshot_is_untouched_by_the_writes_after_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let shared = ledger(dir.path());
        let mut synth = Synth::new(SynthConfig::default());
        let view = shared.read_ledger().expect("read").view();
        let mut kept = Vec::new();
        for _ in 0..8 {
            shared.write_ledger().expect("write").append(synth.next_chunk(400)).expect("append");
            let snap = view.load().expect("published");
            let bytes = crate::store::record::encode_checkpoint(snap.state());
            kept.push((snap, bytes));
        }
        for (snap, bytes) in &kept {
            assert_eq!(&crate::store::record::encode_checkpoint(snap.state()), bytes, "at {:?}", snap.head());
            let rebuilt = crate::core::projection::Projection::from_state(
                crate::store::record::decode_checkpoint(bytes).expect("decodes"),
            );
            assert_eq!(&rebuilt, &**snap);
            assert_eq!(rebuilt.state_digest(), snap.state_digest());
            // The indexes too: each name, capability and node lists what a rebuilt one does.
            let ids = |it: &mut dyn Iterator<Item = &crate::core::projection::ServiceRecord>| {
                it.map(|r| r.service.service_id).collect::<Vec<_>>()
            };
            for r in rebuilt.services() {
                let s = &r.service;
                assert_eq!(ids(&mut snap.services_by_name(&s.name)), ids(&mut rebuilt.services_by_name(&s.name)));
                assert_eq!(ids(&mut snap.services_by_node(&s.node)), ids(&mut rebuilt.services_by_node(&s.node)));
                for c in &s.capabilities {
                    assert_eq!(ids(&mut snap.services_by_capability(c)), ids(&mut rebuilt.services_by_capability(c)));
                }
            }
        }
    }
}
