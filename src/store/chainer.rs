//! Chain hashes on a second core: a helper thread of the ledger computes the chain hashes and
//! encodes the records of an append batch while the ledger's own thread validates and applies
//! the same events.
//!
//! The hashes only depend on the events' canonical encodings and on which of them are
//! chained, and nearly always every event whose signature verified is also accepted by the
//! rules, so the helper computes the chain of exactly those (a speculation). The append checks
//! afterwards that the rules accepted exactly those events and recomputes the chain itself if
//! not; it never stores a hash computed for another set of events.
//!
//! A job is claimed once: whoever gets to it first computes it. If the helper has not started
//! a job by the time the ledger thread needs its result (a busy machine), the ledger thread
//! computes it itself, so a slow helper only costs what the sequential path costs.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::Duration;

use super::record::{encode_record_ref_into, ChainedEventRef};
use crate::core::event::{chain_hash, SignedEvent};
use crate::core::sync;
use crate::core::types::ChainHash;

/// What a job computes: the hash of every chained event in place ([`ChainHash::ZERO`] for the
/// others) and the ledger records of the chained events, back to back, with the end offset
/// of each (one per event; an event not chained has an empty record).
#[derive(Debug, Default)]
pub(crate) struct Chained {
    pub(crate) hashes: Vec<ChainHash>,
    pub(crate) records: Vec<u8>,
    pub(crate) record_ends: Vec<usize>,
}

impl Chained {
    /// The record of event `i` (empty if it was not chained).
    pub(crate) fn record(&self, i: usize) -> &[u8] {
        let start = if i == 0 { 0 } else { self.record_ends.get(i - 1).copied().unwrap_or(0) };
        let end = self.record_ends.get(i).copied().unwrap_or(start);
        self.records.get(start..end).unwrap_or_default()
    }
}

/// One batch to chain: the events, their canonical encodings back to back with the end offset
/// of each, which events to chain (`chain[i]`), and the point the chain continues.
pub(crate) struct Job {
    /// Read by both threads while the job runs; the ledger thread takes the events back after
    /// [`Job::join`] ([`Job::take_events`]).
    events: RwLock<Vec<SignedEvent>>,
    canonical: Vec<u8>,
    ends: Vec<usize>,
    chain: Vec<bool>,
    seq: u64,
    prev: ChainHash,
    claimed: AtomicBool,
    result: Mutex<Option<Chained>>,
    done: Condvar,
}

impl Job {
    pub(crate) fn new(
        events: Vec<SignedEvent>,
        canonical: Vec<u8>,
        ends: Vec<usize>,
        chain: Vec<bool>,
        seq: u64,
        prev: ChainHash,
    ) -> Self {
        Job {
            events: RwLock::new(events),
            canonical,
            ends,
            chain,
            seq,
            prev,
            claimed: AtomicBool::new(false),
            result: Mutex::new(None),
            done: Condvar::new(),
        }
    }

    /// The events, for reading while the job runs.
    pub(crate) fn events(&self) -> std::sync::RwLockReadGuard<'_, Vec<SignedEvent>> {
        sync::read(&self.events)
    }

    /// Takes the events back (after [`Job::join`], with no guard of [`Job::events`] held).
    pub(crate) fn take_events(&self) -> Vec<SignedEvent> {
        std::mem::take(&mut *sync::write(&self.events))
    }

    /// The canonical encoding of event `i`.
    pub(crate) fn canonical(&self, i: usize) -> &[u8] {
        let start = if i == 0 { 0 } else { self.ends.get(i - 1).copied().unwrap_or(0) };
        let end = self.ends.get(i).copied().unwrap_or(start);
        self.canonical.get(start..end).unwrap_or_default()
    }

    /// Size of the canonical encoding of event `i`.
    pub(crate) fn size(&self, i: usize) -> usize {
        self.canonical(i).len()
    }

    /// Whether event `i` is chained by the speculation (its signature verified).
    pub(crate) fn chained(&self, i: usize) -> bool {
        self.chain.get(i).copied().unwrap_or(false)
    }

    /// The chain that continues `(seq - 1, prev)` with exactly the chained events: their
    /// hashes and records.
    pub(crate) fn compute(&self) -> Chained {
        let events = self.events();
        let (mut seq, mut prev) = (self.seq, self.prev);
        let mut out = Chained {
            hashes: Vec::with_capacity(self.chain.len()),
            records: Vec::with_capacity(self.canonical.len() + self.chain.len() * 96),
            record_ends: Vec::with_capacity(self.chain.len()),
        };
        for (i, event) in events.iter().enumerate() {
            if !self.chained(i) {
                out.hashes.push(ChainHash::ZERO);
                out.record_ends.push(out.records.len());
                continue;
            }
            let hash = chain_hash(&prev, seq, self.canonical(i));
            encode_record_ref_into(&ChainedEventRef { seq, prev_hash: prev, hash, event }, &mut out.records);
            out.hashes.push(hash);
            out.record_ends.push(out.records.len());
            prev = hash;
            seq += 1;
        }
        out
    }

    /// Computes the hashes if nobody has claimed the job yet.
    fn run(&self) -> Option<Chained> {
        if self.claimed.swap(true, Ordering::AcqRel) {
            return None;
        }
        Some(self.compute())
    }

    /// The hashes: computed here if the helper has not started, else the helper's (waiting
    /// for it to finish; computed here too if it does not within a bound).
    pub(crate) fn join(&self) -> Chained {
        if let Some(h) = self.run() {
            return h;
        }
        let mut g = sync::lock(&self.result);
        let deadline = std::time::Instant::now() + Duration::from_secs(1);
        loop {
            if let Some(h) = g.take() {
                return h;
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                // The helper stalled (it cannot fail otherwise): the hashes are a pure function
                // of the job.
                drop(g);
                return self.compute();
            }
            g = sync::wait_timeout(&self.done, g, left);
        }
    }
}

/// The helper thread (it ends when its [`Chainer`] is dropped).
pub(crate) struct Chainer {
    tx: mpsc::Sender<Arc<Job>>,
}

impl std::fmt::Debug for Chainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chainer").finish_non_exhaustive()
    }
}

impl Chainer {
    /// Starts the helper thread; `None` if no thread can be started.
    pub(crate) fn start() -> Option<Chainer> {
        let (tx, rx) = mpsc::channel::<Arc<Job>>();
        std::thread::Builder::new()
            .name("ledger-chain".into())
            .spawn(move || {
                for job in rx {
                    if let Some(h) = job.run() {
                        *sync::lock(&job.result) = Some(h);
                        job.done.notify_all();
                    }
                }
            })
            .ok()?;
        Some(Chainer { tx })
    }

    /// Hands `job` to the helper (if the helper is gone, [`Job::join`] computes it).
    pub(crate) fn submit(&self, job: Arc<Job>) {
        let _ = self.tx.send(job);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::keys::NodeKey;
    use crate::core::types::{NetworkFingerprint, Timestamp};
    use crate::store::record::encode_record;
    use crate::{ChainedEvent, EventBody};

    fn job(chain: &[bool]) -> Job {
        let k = NodeKey::from_seed([4; 32]);
        let events: Vec<SignedEvent> = (0..chain.len())
            .map(|i| {
                SignedEvent::sign(
                    &k,
                    NetworkFingerprint([1; 32]),
                    Timestamp(i as i64),
                    EventBody::NodeBackOnline { node: k.node_id() },
                )
            })
            .collect();
        let mut canonical = Vec::new();
        let mut ends = Vec::new();
        for e in &events {
            e.write_canonical_bytes(&mut canonical);
            ends.push(canonical.len());
        }
        Job::new(events, canonical, ends, chain.to_vec(), 7, ChainHash([3; 32]))
    }

    fn check(j: &Job, got: &Chained, chain: &[bool]) {
        let events = j.events();
        let (mut seq, mut prev) = (7u64, ChainHash([3; 32]));
        for (i, c) in chain.iter().enumerate() {
            if *c {
                let e = ChainedEvent::link(seq, prev, events[i].clone());
                assert_eq!(got.hashes[i], e.hash);
                assert_eq!(got.record(i), encode_record(&e).as_slice());
                prev = e.hash;
                seq += 1;
            } else {
                assert_eq!(got.hashes[i], ChainHash::ZERO);
                assert!(got.record(i).is_empty());
            }
        }
    }

    #[test]
    fn the_helper_and_the_caller_compute_the_same_chain() {
        let chain = [true, false, true, true, false, true];
        // By the caller alone.
        let j = job(&chain);
        let got = j.join();
        check(&j, &got, &chain);
        assert_eq!(j.take_events().len(), chain.len());
        // By the helper (or the caller, whichever claims it first).
        let chainer = Chainer::start().expect("thread");
        for _ in 0..20 {
            let j = Arc::new(job(&chain));
            chainer.submit(j.clone());
            let got = j.join();
            check(&j, &got, &chain);
            assert_eq!(j.take_events().len(), chain.len());
        }
    }
}
