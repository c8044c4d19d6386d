//! Provisional events: writes made on a node cut off from the Primary tier, kept and gossiped
//! until a voter can commit them: the wrapper, its signature and the duplicate check. A
//! latent node's write that no voter takes is held (`store::provisional`), handed to peers by
//! gossip, and committed by the leader as `SporeRequest::Provisional`.
//!
//! A provisional event is a normal signed event plus its author's signed statement "this
//! event is not in the chain up to `absent_through`" (the author's head when it queued it).
//! Whoever commits it checks the chain **after** that point for the event's id
//! ([`check_absent`]): a deterministic function of the chain, so every replica decides alike,
//! snapshots and seeds need nothing extra, a forward that timed out after it was committed is
//! caught, and a replayed wrapper finds its own event in the range it must scan.

use serde::{Deserialize, Serialize};

use super::event::{ChainedEvent, SignedEvent};
use super::keys::{NodeKey, PublicKey};
use super::types::SignatureBytes;

/// Domain tag of the provisional statement's signature.
pub const DOMAIN_PROVISIONAL: &[u8] = b"mycnet-spores/v1/provisional\0";
/// Domain tag of event ids.
pub const DOMAIN_EVENT_ID: &[u8] = b"mycnet-spores/v1/event-id\0";
/// Longest chain range a committer scans for a provisional event; an older statement is
/// refused and its author issues a fresh one.
pub const PROVISIONAL_WINDOW_EVENTS: u64 = 16_384;

/// The id of a signed event: `blake3(DOMAIN_EVENT_ID ‖ canonical event bytes)`. Two events
/// have the same id exactly when they are the same signed bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct EventId(pub [u8; 32]);

impl std::fmt::Display for EventId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for b in &self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl EventId {
    /// The first 12 hex digits, for logs.
    pub fn short(&self) -> String {
        self.to_string()[..12].to_string()
    }

    /// The id of `event`.
    pub fn of(event: &SignedEvent) -> Self {
        Self::of_canonical(&event.canonical_bytes())
    }

    /// The id of the event whose canonical encoding is `canonical`.
    pub fn of_canonical(canonical: &[u8]) -> Self {
        let mut h = blake3::Hasher::new();
        h.update(DOMAIN_EVENT_ID);
        h.update(canonical);
        EventId(*h.finalize().as_bytes())
    }
}

/// A signed event and its author's statement that it is not in the chain up to
/// `absent_through`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProvisionalEvent {
    /// The event, exactly as it will be committed.
    pub event: SignedEvent,
    /// The author's head when it queued the event.
    pub absent_through: Option<u64>,
    /// The author's signature over `DOMAIN_PROVISIONAL ‖ fingerprint ‖ id ‖ absent_through`.
    pub signature: SignatureBytes,
}

/// Why a provisional event cannot be committed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProvisionalError {
    /// The statement's signature is not the event author's.
    #[error("the provisional statement is not signed by the event's author")]
    BadSignature,
    /// The event is already in the chain.
    #[error("already committed at seq {0}")]
    Duplicate(u64),
    /// The statement is older than the window a committer scans.
    #[error(
        "the statement (absent through {absent_through:?}) is older than the {window}-event window before head {head}"
    )]
    TooOld {
        /// The statement's point.
        absent_through: Option<u64>,
        /// The head now.
        head: u64,
        /// The window.
        window: u64,
    },
    /// The statement claims a point beyond the chain's head.
    #[error("the statement claims seq {0}, beyond the head")]
    FromTheFuture(u64),
}

fn message(event: &SignedEvent, id: &EventId, absent_through: Option<u64>) -> Vec<u8> {
    let mut m = Vec::with_capacity(DOMAIN_PROVISIONAL.len() + 32 + 32 + 9);
    m.extend_from_slice(DOMAIN_PROVISIONAL);
    m.extend_from_slice(event.fingerprint.as_bytes());
    m.extend_from_slice(&id.0);
    match absent_through {
        Some(s) => {
            m.push(1);
            m.extend_from_slice(&s.to_be_bytes());
        }
        None => m.push(0),
    }
    m
}

impl ProvisionalEvent {
    /// The author of `event` (whose key `key` must be) states it is absent through its head.
    pub fn new(key: &NodeKey, event: SignedEvent, absent_through: Option<u64>) -> Self {
        let id = EventId::of(&event);
        let signature = key.sign(&message(&event, &id, absent_through));
        ProvisionalEvent { event, absent_through, signature }
    }

    /// The event's id.
    pub fn id(&self) -> EventId {
        EventId::of(&self.event)
    }

    /// Checks the statement's signature (the event's own signature is checked on apply).
    pub fn verify_statement(&self) -> Result<(), ProvisionalError> {
        let key = PublicKey::from_node_id(&self.event.author).ok_or(ProvisionalError::BadSignature)?;
        let m = message(&self.event, &self.id(), self.absent_through);
        if key.verify_msg(&m, &self.signature) {
            Ok(())
        } else {
            Err(ProvisionalError::BadSignature)
        }
    }

    /// The range a committer must scan, given its head: `(absent_through, head]`, refused when
    /// longer than [`PROVISIONAL_WINDOW_EVENTS`] or claiming a point beyond the head.
    pub fn scan_range(&self, head: Option<u64>) -> Result<Option<(u64, u64)>, ProvisionalError> {
        let Some(head) = head else {
            return match self.absent_through {
                Some(s) => Err(ProvisionalError::FromTheFuture(s)),
                None => Ok(None),
            };
        };
        let from = match self.absent_through {
            Some(s) if s > head => return Err(ProvisionalError::FromTheFuture(s)),
            Some(s) => s + 1,
            None => 0,
        };
        if head + 1 - from > PROVISIONAL_WINDOW_EVENTS {
            return Err(ProvisionalError::TooOld {
                absent_through: self.absent_through,
                head,
                window: PROVISIONAL_WINDOW_EVENTS,
            });
        }
        Ok((from <= head).then_some((from, head)))
    }
}

/// The duplicate check: the event must not be among `scanned` (the chain's events in
/// [`ProvisionalEvent::scan_range`]).
pub fn check_absent<'a>(
    p: &ProvisionalEvent,
    scanned: impl IntoIterator<Item = &'a ChainedEvent>,
) -> Result<(), ProvisionalError> {
    let id = p.id();
    for ce in scanned {
        if ce.event.author == p.event.author && EventId::of(&ce.event) == id {
            return Err(ProvisionalError::Duplicate(ce.seq));
        }
    }
    Ok(())
}

/// One provisional write through the life of a chain that grows under it: the chain's head is
/// the clock a committer reads (its window is counted in events), advanced here by hand.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::event::EventBody;
    use crate::core::types::{ChainHash, NetworkFingerprint, Timestamp};

    const FP: NetworkFingerprint = NetworkFingerprint([0x9a; 32]);

    fn event(key: &NodeKey, t: i64) -> SignedEvent {
        SignedEvent::sign(key, FP, Timestamp(t), EventBody::NodeBackOnline { node: key.node_id() })
    }

    /// The chain after `events` are committed in order from seq 0.
    fn chain(events: &[SignedEvent]) -> Vec<ChainedEvent> {
        let mut prev = ChainHash::ZERO;
        (0u64..)
            .zip(events)
            .map(|(seq, e)| {
                let c = ChainedEvent::link(seq, prev, e.clone());
                prev = c.hash;
                c
            })
            .collect()
    }

    /// What a committer at `head` decides for `p` over the chain `c`.
    fn decide(p: &ProvisionalEvent, c: &[ChainedEvent], head: u64) -> Result<(), ProvisionalError> {
        match p.scan_range(Some(head))? {
            Some((from, to)) => check_absent(p, &c[from as usize..=to as usize]),
            None => Ok(()),
        }
    }

    #[test]
    fn a_write_is_committable_until_it_is_in_the_chain_or_its_statement_falls_out_of_the_window() {
        let (author, other) = (NodeKey::from_seed([1; 32]), NodeKey::from_seed([2; 32]));
        // A latent node writes while its head is 9, cut off; the chain grows without it.
        let mine = event(&author, 1_000);
        let p = ProvisionalEvent::new(&author, mine.clone(), Some(9));
        let mut events: Vec<SignedEvent> = (0..10).map(|t| event(&other, t)).collect();
        assert_eq!(p.verify_statement(), Ok(()));
        assert_eq!(decide(&p, &chain(&events), 9), Ok(()), "nothing after its head yet");
        assert_eq!(p.scan_range(Some(8)), Err(ProvisionalError::FromTheFuture(9)), "a committer that lags");
        for t in 10..30 {
            events.push(event(&other, t));
            let c = chain(&events);
            assert_eq!(p.scan_range(Some(t as u64)), Ok(Some((10, t as u64))), "scans what came after");
            assert_eq!(decide(&p, &c, t as u64), Ok(()), "absent at head {t}: committable");
        }
        // Committed at seq 30 (a forward whose answer was lost): every later offer of the same
        // write, by any wrapper of it, is a duplicate naming where it is.
        events.push(mine.clone());
        let renewed = ProvisionalEvent::new(&author, mine, Some(20));
        assert_eq!(renewed.id(), p.id(), "a renewed statement is still the same write");
        for t in 31..40 {
            events.push(event(&other, t));
            let c = chain(&events);
            assert_eq!(decide(&p, &c, t as u64), Err(ProvisionalError::Duplicate(30)), "head {t}");
            assert_eq!(decide(&renewed, &c, t as u64), Err(ProvisionalError::Duplicate(30)), "head {t}");
        }

        // The window: the statement at 9 may be committed up to head 9 + WINDOW, not after.
        let w = PROVISIONAL_WINDOW_EVENTS;
        assert_eq!(p.scan_range(Some(9 + w)), Ok(Some((10, 9 + w))));
        let too_old = ProvisionalError::TooOld { absent_through: Some(9), head: 10 + w, window: w };
        assert_eq!(p.scan_range(Some(10 + w)), Err(too_old));
        // A write made before the node held anything scans from genesis.
        let first = ProvisionalEvent::new(&author, event(&author, 5), None);
        assert_eq!(first.scan_range(None), Ok(None));
        assert_eq!(first.scan_range(Some(w - 1)), Ok(Some((0, w - 1))));
        assert!(matches!(first.scan_range(Some(w)), Err(ProvisionalError::TooOld { .. })));
    }
}
