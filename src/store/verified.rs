//! Events whose signatures have been checked: the only input [`Ledger::append_verified`]
//! takes, so the storage path can skip verification without any way to be fed an unchecked
//! event.
//!
//! [`VerifiedEvents::verify`] is the only constructor. It encodes every event canonically
//! once (the encoding the chain hash covers; the signing message is a rearrangement of it,
//! see `schema/encoding.md`), verifies the signatures in batches (`verify_batch`, falling back
//! to `verify_strict` per item in a failing batch) on all cores for large batches, and keeps
//! the encodings so the append does not encode again. Events whose signature does not verify
//! stay in place, marked refused: the append reports them as rejected, in order, and never
//! applies them.
//!
//! [`Ledger::append_verified`]: super::ledger::Ledger::append_verified

use rayon::prelude::*;

use crate::core::event::{signing_message_from_canonical, SignedEvent};
use crate::core::keys::{verify_many, VerifierCache};

/// Signatures verified per `verify_batch` call.
const CHUNK: usize = 128;
/// Below this many events, fanning out to the pool costs more (wake-ups, idle spinning) than
/// it saves.
const PARALLEL_MIN: usize = 256;

/// Signed events in order, each with its canonical encoding and whether its signature
/// verified. See the module doc. Deliberately neither `Clone` nor mutable from outside: what
/// was verified is exactly what gets appended.
#[derive(Debug)]
pub struct VerifiedEvents {
    events: Vec<SignedEvent>,
    /// Canonical encodings of `events`, back to back.
    canonical: Vec<u8>,
    /// End offset of each event's encoding in `canonical`.
    ends: Vec<usize>,
    /// Whether each event's signature verified.
    ok: Vec<bool>,
}

/// One event as [`VerifiedEvents`] hands it to the append.
pub(crate) struct VerifiedEvent<'a> {
    /// The event.
    pub event: SignedEvent,
    /// Its canonical encoding.
    pub canonical: &'a [u8],
    /// Whether its signature verified.
    pub signature_ok: bool,
}

/// The canonical encodings and verdicts of one chunk.
struct ChunkResult {
    canonical: Vec<u8>,
    ends: Vec<usize>,
    ok: Vec<bool>,
}

fn verify_chunk(chunk: &[SignedEvent], cache: &mut VerifierCache) -> ChunkResult {
    let mut canonical = Vec::with_capacity(chunk.len() * 320);
    let mut ends = Vec::with_capacity(chunk.len());
    for e in chunk {
        e.write_canonical_bytes(&mut canonical);
        ends.push(canonical.len());
    }
    let mut msgs = Vec::with_capacity(canonical.len() + chunk.len() * 64);
    let mut msg_ends = Vec::with_capacity(chunk.len());
    let mut start = 0;
    for &end in &ends {
        // An encoding is always longer than the fixed fields, so this never fails; if it did
        // the message would be empty and the signature would not verify.
        let _ = signing_message_from_canonical(&canonical[start..end], &mut msgs);
        msg_ends.push(msgs.len());
        start = end;
    }
    let mut items = Vec::with_capacity(chunk.len());
    let mut start = 0;
    for (e, &end) in chunk.iter().zip(&msg_ends) {
        items.push((e.author, &msgs[start..end], e.signature));
        start = end;
    }
    let ok = verify_many(cache, &items);
    ChunkResult { canonical, ends, ok }
}

impl VerifiedEvents {
    /// Verifies the signatures of `events` (batched; on all cores for large batches) and
    /// encodes each one canonically. Returns the events, in order, with the indices of those
    /// whose signature does not verify (they are kept, marked refused: appending reports
    /// them rejected and never applies them).
    #[tracing::instrument(level = "debug", skip_all, fields(events = events.len()))]
    pub fn verify(events: Vec<SignedEvent>, cache: &mut VerifierCache) -> (VerifiedEvents, Vec<usize>) {
        let parts: Vec<ChunkResult> = if events.len() < PARALLEL_MIN {
            events.chunks(CHUNK).map(|c| verify_chunk(c, cache)).collect()
        } else {
            events
                .par_chunks(CHUNK)
                .map(|c| super::replay::with_thread_cache(|cache| verify_chunk(c, cache)))
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
        self.events.iter().zip(self.ok.iter().copied())
    }

    /// Gives the events back (for instance to re-verify them elsewhere).
    pub fn into_events(self) -> Vec<SignedEvent> {
        self.events
    }

    /// Visits every event with its canonical encoding and verdict, in order, moving the
    /// events out.
    pub(crate) fn for_each(self, mut f: impl FnMut(VerifiedEvent<'_>)) {
        let VerifiedEvents { events, canonical, ends, ok } = self;
        let mut start = 0;
        for ((event, end), signature_ok) in events.into_iter().zip(ends).zip(ok) {
            f(VerifiedEvent { event, canonical: &canonical[start..end], signature_ok });
            start = end;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::keys::NodeKey;
    use crate::core::types::{NetworkFingerprint, Timestamp};
    use crate::EventBody;

    fn events(n: usize) -> Vec<SignedEvent> {
        let k = NodeKey::from_seed([4; 32]);
        (0..n)
            .map(|i| {
                SignedEvent::sign(&k, NetworkFingerprint([1; 32]), Timestamp(i as i64), EventBody::NodeBackOnline { node: k.node_id() })
            })
            .collect()
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
            v.for_each(|e| {
                assert_eq!(e.canonical, evs[seen].canonical_bytes().as_slice());
                seen += 1;
            });
            assert_eq!(seen, n);
        }
    }

    #[test]
    fn valid_events_verify() {
        let (v, bad) = VerifiedEvents::verify(events(5), &mut VerifierCache::default());
        assert!(bad.is_empty() && v.all_verified());
        let (v, bad) = VerifiedEvents::verify(Vec::new(), &mut VerifierCache::default());
        assert!(bad.is_empty() && v.is_empty());
    }
}
