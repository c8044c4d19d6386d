//! The projection as readers see it ([`ProjectionView`]): a snapshot the ledger publishes when
//! a write guard is released (read-copy-update), while somebody reads.
//!
//! A reader takes the newest snapshot — an `Arc` cloned under a lock held only for that
//! clone — and answers from it with no lock at all, however long a writer holds the ledger's
//! (an apply batch of thousands of events holds it for milliseconds). Publishing costs a few
//! reference counts: the projection's maps are persistent (`core::projection::shared`), so
//! the snapshot shares them with the ledger's own projection.
//!
//! What a published snapshot costs is the writer's next change: every path of a map it
//! changes is shared with the snapshot, so it is copied first (at 130k services, a fifth of
//! the write path's CPU). So the ledger publishes only while somebody reads: a release
//! publishes at once if a reader took a snapshot in the last [`EAGER_AFTER_READ`]; otherwise
//! it withdraws the snapshot (the writer's maps are its own again and change in place), and
//! the next reader publishes one itself from the ledger under its read lock — waiting, that
//! once, for a writer holding the ledger. A reader that reads at least that often never waits.
//!
//! Either way a reader sees every write whose guard was released before it asked (or a
//! newer one): a snapshot is published or withdrawn before the write lock is released.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use super::lock::LedgerLock;
use super::Ledger;
use crate::core::projection::Projection;
use crate::store::error::LedgerError;

/// How long after a reader took a snapshot the ledger keeps publishing at each release.
pub(crate) const EAGER_AFTER_READ: Duration = Duration::from_millis(50);

/// How stale the note of the last read may be: readers write it at most this often (a word
/// every reader shares), and a release allows for it, so that a reader that reads at least
/// every [`EAGER_AFTER_READ`] never finds the view withdrawn.
const READ_NOTE_GRAIN: Duration = Duration::from_millis(1);

/// The newest published projection of one ledger (see the module doc).
#[derive(Debug)]
pub struct ProjectionView {
    /// The snapshot out, or `None` when writes nobody has read yet made it stale.
    current: RwLock<Option<Arc<Projection>>>,
    /// When a reader last took a snapshot: nanoseconds after `born`, plus one (0: never).
    last_read: AtomicU64,
    born: Instant,
    /// Set when a writer panicked while holding the ledger: its projection may be half
    /// changed, so none is published any more, and readers get the ledger's poisoned error.
    poisoned: AtomicBool,
}

impl ProjectionView {
    pub(super) fn new(projection: Projection) -> Self {
        ProjectionView {
            current: RwLock::new(Some(Arc::new(projection))),
            last_read: AtomicU64::new(0),
            born: Instant::now(),
            poisoned: AtomicBool::new(false),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.born.elapsed().as_nanos()).unwrap_or(u64::MAX - 1) + 1
    }

    /// The newest snapshot of `ledger` (whose view this is), without its lock when one is
    /// published; else published now from the ledger under its read lock. The ledger's
    /// poisoned error after a writer panicked holding it.
    ///
    /// Never call it holding `ledger`'s write guard: a stale view takes the read lock. Given
    /// another ledger than its own, it answers with that ledger's view.
    pub fn load(&self, ledger: &RwLock<Ledger>) -> Result<Arc<Projection>, LedgerError> {
        if !self.poisoned.load(Ordering::Acquire) {
            // The lock guards one pointer swap and no invariant: a poisoned one still holds
            // a whole snapshot (or none).
            let current = self.current.read().unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(p) = &*current {
                self.mark_read();
                return Ok(p.clone());
            }
        }
        let l = ledger.read_ledger()?;
        if !std::ptr::eq(Arc::as_ptr(&l.view), self) {
            // Another ledger's: its own view answers (and this one is never given its state).
            let theirs = l.view.clone();
            drop(l);
            return theirs.load(ledger);
        }
        if self.poisoned.load(Ordering::Acquire) {
            return Err(LedgerError::LockPoisoned { path: l.path().to_path_buf() });
        }
        let mut current = self.current.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        self.mark_read();
        Ok(current.get_or_insert_with(|| Arc::new(l.projection().clone())).clone())
    }

    /// Notes a read, writing the shared word only when the last note is [`READ_NOTE_GRAIN`] old.
    fn mark_read(&self) {
        let now = self.now();
        if now.saturating_sub(self.last_read.load(Ordering::Relaxed)) > READ_NOTE_GRAIN.as_nanos() as u64 {
            self.last_read.store(now, Ordering::Relaxed);
        }
    }

    /// At a write guard's release: publishes `projection` if a reader took a snapshot lately,
    /// else withdraws the snapshot out (see the module doc). Nothing when `projection` shares
    /// everything with the snapshot out.
    pub(super) fn release(&self, projection: &Projection) {
        let mut current = self.current.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        if current.as_ref().is_some_and(|c| c.shares_state_with(projection)) {
            return;
        }
        let last = self.last_read.load(Ordering::Relaxed);
        let window = (EAGER_AFTER_READ + READ_NOTE_GRAIN).as_nanos() as u64;
        let eager = last != 0 && self.now().saturating_sub(last) <= window;
        *current = eager.then(|| Arc::new(projection.clone()));
    }

    /// Whether a snapshot is published now (none: the next reader publishes one).
    pub fn is_published(&self) -> bool {
        self.current.read().unwrap_or_else(std::sync::PoisonError::into_inner).is_some()
    }

    pub(super) fn poison(&self) {
        self.poisoned.store(true, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, RwLock};
    use std::time::Duration;

    use crate::store::ledger::{Ledger, LedgerError, LedgerLock};
    use crate::store::synth::{Synth, SynthConfig};

    /// A ledger in a temporary dir, events to append to it, and its view.
    fn fixture() -> (tempfile::TempDir, Arc<RwLock<Ledger>>, Synth, Arc<super::ProjectionView>) {
        let (dir, shared) = shared_scratch();
        let view = shared.read_ledger().expect("read").view();
        (dir, shared, Synth::new(SynthConfig::default()), view)
    }

    /// A throwaway ledger ([`crate::store::ledger::scratch`]) behind its lock.
    fn shared_scratch() -> (tempfile::TempDir, Arc<RwLock<Ledger>>) {
        let (dir, l) = crate::store::ledger::scratch();
        (dir, Arc::new(RwLock::new(l)))
    }

    /// A reader answers from the published snapshot while a writer holds the ledger's lock;
    /// the writer's change is published when its guard is released, before the lock is.
    #[test]
    fn readers_never_wait_for_a_writer_and_see_each_write_once_released() {
        let (_dir, shared) = shared_scratch();
        let mut synth = Synth::new(SynthConfig::default());
        shared.write_ledger().expect("write").append(synth.next_chunk(100)).expect("append");
        let view = shared.read_ledger().expect("read").view();
        assert_eq!(view.load(&shared).expect("published").head().map(|h| h.seq), Some(99));

        let mut guard = shared.write_ledger().expect("write");
        guard.append(synth.next_chunk(50)).expect("append");
        // The writer still holds the lock: another thread reads the older snapshot at once.
        let (v2, s2) = (view.clone(), shared.clone());
        let reader = std::thread::spawn(move || {
            let seen = v2.load(&s2).expect("published").head().map(|h| h.seq);
            let blocked = s2.try_read().is_err();
            (seen, blocked)
        });
        let (seen, blocked) = reader.join().expect("reader");
        assert!(blocked, "the ledger's lock is held");
        assert_eq!(seen, Some(99), "the snapshot from before the write being made");
        drop(guard);
        assert_eq!(view.load(&shared).expect("published").head().map(|h| h.seq), Some(149));
        // A snapshot kept by a reader does not change under later writes.
        let kept = view.load(&shared).expect("published");
        shared.write_ledger().expect("write").append(synth.next_chunk(10)).expect("append");
        assert_eq!(kept.head().map(|h| h.seq), Some(149));
        assert_eq!(view.load(&shared).expect("published").head().map(|h| h.seq), Some(159));
        assert_eq!(&*view.load(&shared).expect("published"), shared.read_ledger().expect("read").projection());
    }

    /// A writer that panics while holding the ledger publishes nothing more: readers of the
    /// view get no snapshot, as takers of the lock get its poisoned error.
    #[test]
    fn a_panicking_writer_poisons_the_view() {
        let (_dir, shared) = shared_scratch();
        let view = shared.read_ledger().expect("read").view();
        assert!(view.load(&shared).is_ok());
        let s2 = shared.clone();
        let _ = std::thread::spawn(move || {
            let _g = s2.write_ledger().expect("not poisoned yet");
            panic!("a panic while holding the ledger");
        })
        .join();
        assert!(matches!(view.load(&shared), Err(LedgerError::LockPoisoned { .. })));
        assert!(matches!(shared.read_ledger(), Err(LedgerError::LockPoisoned { .. })));
    }

    /// Writes nobody reads publish nothing (the writer's maps stay its own); the next reader
    /// publishes the newest state itself, and while readers keep reading each release
    /// publishes at once.
    #[test]
    fn the_ledger_publishes_only_while_somebody_reads() {
        let (_dir, shared, mut synth, view) = fixture();
        // Never read: the write withdraws the snapshot out.
        shared.write_ledger().expect("write").append(synth.next_chunk(20)).expect("append");
        assert!(!view.is_published());
        // The reader publishes the newest state from the ledger.
        assert_eq!(view.load(&shared).expect("load").head().map(|h| h.seq), Some(19));
        assert!(view.is_published());
        // Read a moment ago: the next release publishes (unless this thread slept past the
        // window, which the check below allows for).
        let t = std::time::Instant::now();
        shared.write_ledger().expect("write").append(synth.next_chunk(5)).expect("append");
        if t.elapsed() < super::EAGER_AFTER_READ / 2 {
            assert!(view.is_published());
        }
        assert_eq!(view.load(&shared).expect("load").head().map(|h| h.seq), Some(24));
        // Nobody read for longer than the window: withdrawn again, and read back whole.
        std::thread::sleep(super::EAGER_AFTER_READ + std::time::Duration::from_millis(10));
        shared.write_ledger().expect("write").append(synth.next_chunk(5)).expect("append");
        assert!(!view.is_published());
        let p = view.load(&shared).expect("load");
        assert_eq!(p.head().map(|h| h.seq), Some(29));
        assert_eq!(&*p, shared.read_ledger().expect("read").projection());
        // A guard released with no change leaves a published snapshot out.
        drop(shared.write_ledger().expect("write"));
        assert!(view.is_published());
        // Given another ledger, a withdrawn view answers with that ledger's state and keeps
        // none of it.
        let (_dir2, other, mut synth2, _) = fixture();
        other.write_ledger().expect("write").append(synth2.next_chunk(3)).expect("append");
        std::thread::sleep(super::EAGER_AFTER_READ + std::time::Duration::from_millis(10));
        shared.write_ledger().expect("write").append(synth.next_chunk(1)).expect("append");
        assert!(!view.is_published());
        assert_eq!(view.load(&other).expect("load").head().map(|h| h.seq), Some(2));
        assert!(!view.is_published());
        assert_eq!(view.load(&shared).expect("load").head().map(|h| h.seq), Some(30));
    }

    /// Under a writer appending all the time, readers that read often and rarely (the view
    /// published, withdrawn and published again by readers) each see the head only move on,
    /// and the last read equals the ledger's own projection.
    #[test]
    fn readers_never_see_the_state_go_back() {
        let (_dir, shared, mut synth, view) = fixture();
        let chunks: Vec<_> = (0..120).map(|_| synth.next_chunk(2)).collect();
        // The writer notes, right after each release, whether that release published: with a
        // write every 3 ms and the slow reader's reads 70 ms apart, the writes in the last
        // ~19 ms of each of its cycles come more than `EAGER_AFTER_READ` after a read and
        // withdraw the view. A starved machine only stretches those gaps.
        let writer = {
            let (shared, view) = (shared.clone(), view.clone());
            std::thread::spawn(move || {
                let (mut published, mut withdrawn) = (false, false);
                for c in chunks {
                    shared.write_ledger().expect("write").append(c).expect("append");
                    if view.is_published() {
                        published = true
                    } else {
                        withdrawn = true
                    }
                    std::thread::sleep(Duration::from_millis(3));
                }
                (published, withdrawn)
            })
        };
        // One reader reads often for a while, the other every 70 ms throughout: the view is
        // published at each write, then withdrawn and published again by the slow reader.
        let readers: Vec<_> = [(Duration::from_micros(200), 150), (Duration::from_millis(70), 450)]
            .into_iter()
            .map(|(every, for_ms)| {
                let (shared, view) = (shared.clone(), view.clone());
                std::thread::spawn(move || {
                    let mut seen = Vec::new();
                    let started = std::time::Instant::now();
                    while started.elapsed() < Duration::from_millis(for_ms) {
                        seen.push(view.load(&shared).expect("load").head().map(|h| h.seq));
                        std::thread::sleep(every);
                    }
                    seen
                })
            })
            .collect();
        let (published, withdrawn) = writer.join().expect("writer");
        assert!(published && withdrawn, "both ways taken: published {published}, withdrawn {withdrawn}");
        for r in readers {
            let seen = r.join().expect("reader");
            assert!(seen.windows(2).all(|w| w[0] <= w[1]), "a reader saw the head go back: {seen:?}");
        }
        assert_eq!(view.load(&shared).expect("load").head().map(|h| h.seq), Some(239));
        assert_eq!(&*view.load(&shared).expect("load"), shared.read_ledger().expect("read").projection());
    }

    /// A published snapshot shares its maps with the ledger's projection, which goes on
    /// changing records in place (trust, status, capabilities, services registered and
    /// dropped): the snapshot's state stays byte for byte what it was, and a projection
    /// rebuilt from it equals it.
    #[test]
    fn a_snapshot_is_untouched_by_the_writes_after_it() {
        let (_dir, shared, mut synth, view) = fixture();
        let mut kept = Vec::new();
        for _ in 0..8 {
            shared.write_ledger().expect("write").append(synth.next_chunk(400)).expect("append");
            let snap = view.load(&shared).expect("published");
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
