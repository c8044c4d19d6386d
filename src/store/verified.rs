//! Events whose signatures have been checked: the only input [`Ledger::append_verified`]
//! takes, so the storage path can skip verification without any way to be fed an unchecked
//! event.
//!
//! [`VerifiedEvents::verify`] is the only constructor. It encodes every event canonically
//! once (the encoding the chain hash covers; the signing message is a rearrangement of it,
//! see `schema/encoding.md`), verifies the signatures in batches (`verify_batch`, falling back
//! to `the single ZIP-215 check per item in a failing batch) on all cores for large batches, and keeps
//! the encodings so the append does not encode again. Events whose signature does not verify
//! stay in place, marked refused: the append reports them as rejected, in order, and never
//! applies them.
//!
//! The events are owned (`VerifiedEvents`, the default) or borrowed (`VerifiedEvents<&SignedEvent>`):
//! the Raft state machine verifies and appends events that stay in the shared batches of its
//! log entries, so it never copies them.
//!
//! [`Ledger::append_verified`]: super::ledger::Ledger::append_verified

use std::borrow::Borrow;

use rayon::prelude::*;

use crate::core::event::SignedEvent;
use crate::core::keys::{SigningBatch, VerifierCache};
use crate::core::types::SignatureBytes;

/// Signatures verified per `verify_batch` call.
const CHUNK: usize = 128;
/// Below this many events, fanning out to the pool costs more (wake-ups, idle spinning) than
/// it saves.
const PARALLEL_MIN: usize = 256;

/// Signed events in order, each with its canonical encoding and whether its signature
/// verified. See the module doc. Deliberately neither `Clone` nor mutable from outside: what
/// was verified is exactly what gets appended. `E` is how the events are held: owned
/// ([`SignedEvent`]) or borrowed (`&SignedEvent`).
#[derive(Debug)]
pub struct VerifiedEvents<E = SignedEvent> {
    events: Vec<E>,
    /// Canonical encodings of `events`, back to back.
    canonical: Vec<u8>,
    /// End offset of each event's encoding in `canonical`.
    ends: Vec<usize>,
    /// Whether each event's signature verified.
    ok: Vec<bool>,
}

/// The canonical encodings and verdicts of one chunk.
struct ChunkResult {
    canonical: Vec<u8>,
    ends: Vec<usize>,
    ok: Vec<bool>,
}

fn verify_chunk<E: Borrow<SignedEvent>>(
    chunk: &[E],
    cache: &mut VerifierCache,
    known: Option<&PreVerified>,
) -> ChunkResult {
    let mut canonical = Vec::with_capacity(chunk.len() * 320);
    let mut ends = Vec::with_capacity(chunk.len());
    for e in chunk {
        e.borrow().write_canonical_bytes(&mut canonical);
        ends.push(canonical.len());
    }
    let mut ok = vec![false; chunk.len()];
    // Which events still need verifying here (those this process has not verified already).
    let mut todo = Vec::with_capacity(chunk.len());
    let mut start = 0;
    for (i, &end) in ends.iter().enumerate() {
        let bytes = &canonical[start..end];
        start = end;
        match known {
            Some(k) if k.take(&chunk[i].borrow().signature, bytes) => ok[i] = true,
            _ => todo.push((i, start - bytes.len(), end)),
        }
    }
    if todo.is_empty() {
        return ChunkResult { canonical, ends, ok };
    }
    let mut batch = SigningBatch::with_capacity(todo.len());
    for &(i, from, to) in &todo {
        let e = chunk[i].borrow();
        batch.push_canonical(e.author, e.signature, &canonical[from..to]);
    }
    for (&(i, _, _), verdict) in todo.iter().zip(batch.verify(cache)) {
        ok[i] = verdict;
    }
    ChunkResult { canonical, ends, ok }
}

/// The state of one signature in [`PreVerified`].
enum Pre {
    /// Being verified now.
    Pending,
    /// Verified, for the event whose canonical encoding has this blake3 digest.
    Verified([u8; 32]),
}

#[derive(Default)]
struct PreInner {
    map: std::collections::HashMap<SignatureBytes, Pre>,
}

impl PreInner {
    /// Makes room for `n` more signatures: a set that would pass [`PreVerified::CAPACITY`] is
    /// cleared (which only costs re-verification).
    fn make_room(&mut self, n: usize) {
        if self.map.len() + n > PreVerified::CAPACITY {
            self.map.clear();
        }
    }
}

/// Signatures this process has already verified, ahead of the append that needs them, or
/// made itself ([`PreVerified::sign`]).
///
/// A Raft replica receives an event (log append) well before it applies it (after the log is
/// synced and the entry committed). [`PreVerified::spawn_verify`] verifies the signatures on
/// a thread pool in that gap (the background one for a follower's entries, see
/// [`super::verify_pool`]), in parallel with the log's fsync, and remembers each good one
/// with the blake3 digest of the event's whole canonical encoding (a leader's proposer starts
/// the checks of a batch it sends even earlier, and the log store's request is then a
/// no-op); [`VerifiedEvents::verify_with`] then accepts an event without verifying it again
/// only if its signature is remembered for exactly its encoding (so nothing but a verified
/// event can pass), and waits for a verification still under way rather than doing it twice.
/// Entries are consumed when used; the set is bounded ([`PreVerified::CAPACITY`], cleared
/// when full, which only costs re-verification). Cheap to clone (shared).
#[derive(Clone, Default)]
pub struct PreVerified {
    inner: std::sync::Arc<(std::sync::Mutex<PreInner>, std::sync::Condvar)>,
}

impl std::fmt::Debug for PreVerified {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreVerified").finish_non_exhaustive()
    }
}

impl PreVerified {
    /// Most signatures remembered at once.
    pub const CAPACITY: usize = 1 << 20;
    /// Longest wait for a verification under way before verifying again.
    const WAIT_MAX: std::time::Duration = std::time::Duration::from_secs(2);

    /// Marks the signatures of `events` as being verified and verifies them on the pool
    /// `urgency` names (returns at once). A signature already verified or being verified is
    /// not checked again: the leader's proposer starts the checks of a batch before its log
    /// store appends it. (An event that merely reuses a remembered signature gains nothing:
    /// its encoding's digest differs, so apply verifies it itself.)
    pub fn spawn_verify(&self, events: std::sync::Arc<Vec<SignedEvent>>, urgency: super::verify_pool::Urgency) {
        if events.is_empty() {
            return;
        }
        let events = {
            let Ok(mut g) = self.inner.0.lock() else { return };
            g.make_room(events.len());
            let mut fresh = Vec::new();
            for (i, e) in events.iter().enumerate() {
                if let std::collections::hash_map::Entry::Vacant(v) = g.map.entry(e.signature) {
                    v.insert(Pre::Pending);
                    fresh.push(i);
                }
            }
            if fresh.is_empty() {
                return;
            }
            if fresh.len() == events.len() {
                events
            } else {
                std::sync::Arc::new(fresh.into_iter().filter_map(|i| events.get(i).cloned()).collect())
            }
        };
        let this = self.clone();
        super::verify_pool::spawn(urgency, move || {
            let results: Vec<(SignatureBytes, Option<[u8; 32]>)> = events
                .par_chunks(CHUNK)
                .flat_map_iter(|chunk| {
                    let r = super::replay::with_thread_cache(|cache| verify_chunk(chunk, cache, None));
                    let mut start = 0;
                    let mut out = Vec::with_capacity(chunk.len());
                    for ((e, end), ok) in chunk.iter().zip(r.ends).zip(r.ok) {
                        let digest = ok.then(|| *blake3::hash(&r.canonical[start..end]).as_bytes());
                        out.push((e.signature, digest));
                        start = end;
                    }
                    out
                })
                .collect();
            let (lock, cvar) = &*this.inner;
            if let Ok(mut g) = lock.lock() {
                for (sig, digest) in results {
                    match digest {
                        Some(d) => {
                            g.map.insert(sig, Pre::Verified(d));
                        }
                        None => {
                            g.map.remove(&sig);
                        }
                    }
                }
            }
            cvar.notify_all();
        });
    }

    /// Waits (bounded) until none of the signatures of `events` is being verified. Not on a
    /// thread-pool thread: the verification it would wait for may need that thread.
    fn wait_settled<E: Borrow<SignedEvent>>(&self, events: &[E]) {
        if rayon::current_thread_index().is_some() {
            return;
        }
        let (lock, cvar) = &*self.inner;
        let Ok(mut g) = lock.lock() else { return };
        let deadline = std::time::Instant::now() + Self::WAIT_MAX;
        while events.iter().any(|e| matches!(g.map.get(&e.borrow().signature), Some(Pre::Pending))) {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return;
            }
            g = match cvar.wait_timeout(g, left) {
                Ok((g, _)) => g,
                Err(_) => return,
            };
        }
    }

    /// Signs `body` as `key`'s node and remembers the signature as verified for the signed
    /// event's exact encoding. A signature this process has just made, with the key of the
    /// event's own author, verifies by construction: the replica that signed the event need
    /// not check it again at its apply, and its log store starts no check for it. Every other
    /// replica still checks it.
    pub fn sign(
        &self,
        key: &crate::core::keys::NodeKey,
        fingerprint: crate::core::types::NetworkFingerprint,
        timestamp: crate::core::types::Timestamp,
        body: crate::core::event::EventBody,
    ) -> SignedEvent {
        let event = SignedEvent::sign(key, fingerprint, timestamp, body);
        let digest = *blake3::hash(&event.canonical_bytes()).as_bytes();
        if let Ok(mut g) = self.inner.0.lock() {
            g.make_room(1);
            g.map.insert(event.signature, Pre::Verified(digest));
        }
        event
    }

    /// Whether every one of `events` was verified already (so [`VerifiedEvents::verify_with`]
    /// checks no signature itself). Does not wait.
    pub fn all_verified<'a>(&self, mut events: impl Iterator<Item = &'a SignedEvent>) -> bool {
        let Ok(g) = self.inner.0.lock() else { return false };
        events.all(|e| matches!(g.map.get(&e.signature), Some(Pre::Verified(_))))
    }

    /// Whether `signature` was verified for the event encoded as `canonical` (consuming the
    /// entry). Does not wait.
    fn take(&self, signature: &SignatureBytes, canonical: &[u8]) -> bool {
        let Ok(mut g) = self.inner.0.lock() else { return false };
        match g.map.get(signature) {
            Some(Pre::Verified(d)) => {
                let ok = *d == *blake3::hash(canonical).as_bytes();
                g.map.remove(signature);
                ok
            }
            _ => false,
        }
    }
}

impl<E: Borrow<SignedEvent> + Sync> VerifiedEvents<E> {
    /// Verifies the signatures of `events` (batched; on all cores for large batches) and
    /// encodes each one canonically. Returns the events, in order, with the indices of those
    /// whose signature does not verify (they are kept, marked refused: appending reports
    /// them rejected and never applies them).
    #[tracing::instrument(level = "debug", skip_all, fields(events = events.len()))]
    pub fn verify(events: Vec<E>, cache: &mut VerifierCache) -> (VerifiedEvents<E>, Vec<usize>) {
        Self::verify_inner(events, cache, None)
    }

    /// [`VerifiedEvents::verify`], skipping the signatures `known` already verified for
    /// exactly these events (see [`PreVerified`]).
    #[tracing::instrument(level = "debug", skip_all, fields(events = events.len()))]
    pub fn verify_with(
        events: Vec<E>,
        cache: &mut VerifierCache,
        known: &PreVerified,
    ) -> (VerifiedEvents<E>, Vec<usize>) {
        Self::verify_inner(events, cache, Some(known))
    }

    fn verify_inner(
        events: Vec<E>,
        cache: &mut VerifierCache,
        known: Option<&PreVerified>,
    ) -> (VerifiedEvents<E>, Vec<usize>) {
        if let Some(k) = known {
            // Rather than verify twice what is being verified right now.
            k.wait_settled(&events);
        }
        let parts: Vec<ChunkResult> = if events.len() < PARALLEL_MIN {
            events.chunks(CHUNK).map(|c| verify_chunk(c, cache, known)).collect()
        } else {
            events
                .par_chunks(CHUNK)
                .map(|c| super::replay::with_thread_cache(|cache| verify_chunk(c, cache, known)))
                .collect()
        };
        let total: usize = parts.iter().map(|p| p.canonical.len()).sum();
        let mut canonical = Vec::with_capacity(total);
        let mut ends = Vec::with_capacity(events.len());
        let mut ok = Vec::with_capacity(events.len());
        for p in parts {
            let base = canonical.len();
            canonical.extend_from_slice(&p.canonical);
            ends.extend(p.ends.into_iter().map(|e| base + e));
            ok.extend(p.ok);
        }
        let bad = ok.iter().enumerate().filter(|(_, ok)| !**ok).map(|(i, _)| i).collect();
        (VerifiedEvents { events, canonical, ends, ok }, bad)
    }

    /// How many events (refused ones included).
    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// Whether there are no events.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// Whether every signature verified.
    pub fn all_verified(&self) -> bool {
        self.ok.iter().all(|ok| *ok)
    }

    /// The events, in order, with whether each one's signature verified.
    pub fn iter(&self) -> impl Iterator<Item = (&SignedEvent, bool)> {
        self.events.iter().map(Borrow::borrow).zip(self.ok.iter().copied())
    }

    /// Visits every event with its canonical encoding and whether its signature verified, in
    /// order, without moving them.
    #[inline]
    pub(crate) fn for_each_ref(&self, mut f: impl FnMut(&SignedEvent, &[u8], bool)) {
        let mut start = 0;
        for ((event, &end), &signature_ok) in self.events.iter().zip(&self.ends).zip(&self.ok) {
            f(event.borrow(), self.canonical.get(start..end).unwrap_or_default(), signature_ok);
            start = end;
        }
    }
}

impl VerifiedEvents {
    /// Gives the events back (for instance to re-verify them elsewhere).
    pub fn into_events(self) -> Vec<SignedEvent> {
        self.events
    }

    /// The events, their canonical encodings (back to back), the end offset of each encoding
    /// and each signature's verdict.
    pub(crate) fn into_parts(self) -> (Vec<SignedEvent>, Vec<u8>, Vec<usize>, Vec<bool>) {
        (self.events, self.canonical, self.ends, self.ok)
    }
}

/// `n` events signed by the test key of `seed`, timestamps 0, 1, … (for tests).
#[cfg(test)]
pub(crate) fn test_events(seed: u8, n: usize) -> Vec<SignedEvent> {
    use crate::core::types::{NetworkFingerprint, Timestamp};
    let k = crate::core::keys::NodeKey::from_seed([seed; 32]);
    (0..n)
        .map(|i| {
            SignedEvent::sign(
                &k,
                NetworkFingerprint([1; 32]),
                Timestamp(i as i64),
                crate::EventBody::NodeBackOnline { node: k.node_id() },
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::types::Timestamp;

    fn events(n: usize) -> Vec<SignedEvent> {
        test_events(4, n)
    }

    #[test]
    fn a_forged_signature_is_refused_in_place() {
        for n in [3usize, 300] {
            let mut evs = events(n);
            evs[1].signature.0[7] ^= 1;
            evs[n - 1].timestamp = Timestamp(-5); // signed content changed after signing
            let (v, bad) = VerifiedEvents::verify(evs.clone(), &mut VerifierCache::default());
            assert_eq!(bad, vec![1, n - 1]);
            assert_eq!(v.len(), n);
            assert!(!v.all_verified());
            let verdicts: Vec<bool> = v.iter().map(|(_, ok)| ok).collect();
            assert!(verdicts.iter().enumerate().all(|(i, ok)| *ok == (i != 1 && i != n - 1)));
            let mut seen = 0;
            v.for_each_ref(|_, canonical, _| {
                assert_eq!(canonical, evs[seen].canonical_bytes().as_slice());
                seen += 1;
            });
            assert_eq!(seen, n);
        }
    }

    /// An event this replica signed itself counts as verified at once (no check to run or to
    /// wait for), for exactly that event and once: the same signature on altered content is
    /// checked, and refused.
    #[test]
    fn an_event_signed_here_is_verified_by_construction_and_only_that_event() {
        let known = PreVerified::default();
        let key = crate::core::keys::NodeKey::from_seed([9; 32]);
        let body = crate::EventBody::NodeBackOnline { node: key.node_id() };
        let ev = known.sign(&key, crate::core::types::NetworkFingerprint([1; 32]), Timestamp(7), body);
        let msg = ev.signing_message();
        let really = crate::core::keys::verify_many(&mut VerifierCache::default(), &[(ev.author, &msg, ev.signature)]);
        assert_eq!(really, vec![true], "the signature made here verifies");
        assert!(known.all_verified(std::iter::once(&ev)));
        let (v, bad) = VerifiedEvents::verify_with(vec![ev.clone()], &mut VerifierCache::default(), &known);
        assert!(bad.is_empty() && v.all_verified());
        // The verdict was used once; a copy altered after signing is checked and refused.
        assert!(!known.all_verified(std::iter::once(&ev)));
        let mut altered = ev;
        altered.timestamp = Timestamp(8);
        let (_, bad) = VerifiedEvents::verify_with(vec![altered], &mut VerifierCache::default(), &known);
        assert_eq!(bad, vec![0]);
    }

    #[test]
    fn pre_verified_signatures_are_only_trusted_for_the_exact_event() {
        let known = PreVerified::default();
        let evs = events(6);
        let mut forged = evs[2].clone();
        forged.signature.0[0] ^= 1;
        known.spawn_verify(
            std::sync::Arc::new(vec![evs[0].clone(), evs[1].clone(), forged.clone()]),
            crate::store::verify_pool::Urgency::Foreground,
        );
        // Same signature, different content: the remembered digest does not match.
        let mut altered = evs[1].clone();
        altered.timestamp = Timestamp(1_000);
        let batch = vec![evs[0].clone(), altered, forged, evs[3].clone()];
        let (v, bad) = VerifiedEvents::verify_with(batch, &mut VerifierCache::default(), &known);
        assert_eq!(bad, vec![1, 2]);
        assert_eq!(v.len(), 4);
        // Entries are consumed: a replay of the same batch verifies again, with the same verdicts.
        let (_, bad) =
            VerifiedEvents::verify_with(vec![evs[0].clone(), evs[1].clone()], &mut VerifierCache::default(), &known);
        assert!(bad.is_empty());
    }

    /// `all_verified` is true only once every signature of the events was checked and found
    /// valid here: not while one is being checked, not for one never asked for (a node that
    /// restarted re-applies entries it did not pre-verify) and not for a forged one. What lets an
    /// apply run on the runtime's thread without checking a signature itself.
    #[test]
    fn all_verified_only_once_every_signature_checked_out() {
        let known = PreVerified::default();
        let evs = events(3);
        assert!(!known.all_verified(evs.iter()), "never asked for");
        assert!(known.all_verified(evs[..0].iter()), "no events: nothing to check");
        if let Ok(mut g) = known.inner.0.lock() {
            g.map.insert(evs[1].signature, Pre::Pending);
        }
        assert!(!known.all_verified(evs[1..2].iter()), "being checked");
        if let Ok(mut g) = known.inner.0.lock() {
            g.map.remove(&evs[1].signature);
        }
        let mut forged = evs[2].clone();
        forged.signature.0[3] ^= 1;
        // On the background pool, as a follower's checks run: the same verdicts.
        known.spawn_verify(
            std::sync::Arc::new(vec![evs[0].clone(), evs[1].clone(), forged.clone()]),
            crate::store::verify_pool::Urgency::Background,
        );
        known.wait_settled(&evs);
        assert!(known.all_verified(evs[..2].iter()));
        assert!(!known.all_verified([&evs[0], &forged].into_iter()), "a forged signature is not verified");
        let (v, bad) = VerifiedEvents::verify_with(evs[..2].to_vec(), &mut VerifierCache::default(), &known);
        assert!(bad.is_empty() && v.all_verified());
    }

    /// The leader's proposer starts a batch's checks and its log store asks again at the
    /// append: a signature already being checked (or checked) is not checked twice, and an
    /// event that only reuses such a signature over other content is still refused.
    #[test]
    fn checks_already_started_are_not_repeated() {
        let known = PreVerified::default();
        let evs = events(3);
        if let Ok(mut g) = known.inner.0.lock() {
            g.map.insert(evs[0].signature, Pre::Pending);
        }
        known.spawn_verify(
            std::sync::Arc::new(vec![evs[0].clone(), evs[1].clone()]),
            crate::store::verify_pool::Urgency::Foreground,
        );
        // One job checks what it was given together: once evs[1] is checked, a repeat of
        // evs[0]'s check would have settled it too.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !known.all_verified(evs[1..2].iter()) {
            assert!(std::time::Instant::now() < deadline, "evs[1] never checked");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert!(!known.all_verified(evs[..1].iter()), "the check under way was started again");
        if let Ok(mut g) = known.inner.0.lock() {
            g.map.remove(&evs[0].signature);
        }
        // evs[1]'s content changed under its remembered signature: not checked again at the
        // append, refused at apply all the same.
        let mut altered = evs[1].clone();
        altered.timestamp = Timestamp(1_000);
        known.spawn_verify(
            std::sync::Arc::new(vec![altered.clone(), evs[2].clone()]),
            crate::store::verify_pool::Urgency::Foreground,
        );
        known.wait_settled(&evs);
        let batch = vec![evs[0].clone(), altered, evs[2].clone()];
        let (v, bad) = VerifiedEvents::verify_with(batch, &mut VerifierCache::default(), &known);
        assert_eq!(bad, vec![1]);
        assert_eq!(v.len(), 3);
    }

    #[test]
    fn valid_events_verify() {
        let (v, bad) = VerifiedEvents::verify(events(5), &mut VerifierCache::default());
        assert!(bad.is_empty() && v.all_verified());
        let (v, bad) = VerifiedEvents::<SignedEvent>::verify(Vec::new(), &mut VerifierCache::default());
        assert!(bad.is_empty() && v.is_empty());
    }
}
