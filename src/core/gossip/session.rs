//! The session's state machine: [`SyncSession`] exchanges digests, asks for what it lacks in
//! bounded requests, verifies what arrives and hands it out to store (protocol: the module doc
//! of `core::gossip`).

use std::collections::VecDeque;
use std::time::Instant;

use super::{
    BackfillRange, Digest, ForkEvidence, GossipMessage, LinkedRange, LocalView, RangeRecords, SessionEvent,
    SessionOutcome, SessionStats, SyncConfig, Violation,
};
use crate::core::event::ChainedEvent;
use crate::core::limits;
use crate::core::types::{ChainPoint, NetworkFingerprint};

/// One sync exchange with one peer. See the module doc.
#[derive(Debug)]
pub struct SyncSession {
    cfg: SyncConfig,
    pub(super) fingerprint: Option<NetworkFingerprint>,
    /// Our last verified event (stored or handed out to store).
    tail: Option<ChainedEvent>,
    /// Our head when we do not hold its event (see [`LocalView::head_point`]).
    base: Option<ChainPoint>,
    peer: Option<Digest>,
    outstanding: Option<(u64, u32)>,
    /// Whether the outstanding request is a backfill one.
    outstanding_backward: bool,
    /// Where the next backfilled range must end (`None`: nothing to backfill).
    backfill: Option<ChainPoint>,
    /// Events received towards the next backfill range (the peer may answer a request in
    /// several shorter ranges: bounded by bytes), ascending from its start.
    backfill_buf: Vec<ChainedEvent>,
    backfill_buf_bytes: usize,
    /// Events asked per backfill range (halved when a range will not fit the buffer).
    backfill_batch: u32,
    /// The peer could not serve the history we lack: stop asking it.
    backfill_stopped: bool,
    overlap_checked: bool,
    done_requesting: bool,
    unstored: usize,
    sent_bye: bool,
    peer_bye: bool,
    provisional_seen: bool,
    /// Fork messages received: the one after the hello and the one a peer sends when it
    /// finds a fork in this session.
    forks_seen: u8,
    /// A session that does not pull still checks, once, that the peer's chain passes
    /// through our head (fork detection between two primaries).
    probe: bool,
    finished: bool,
    deadline: Instant,
    transmit: VecDeque<GossipMessage>,
    events: VecDeque<SessionEvent>,
    stats: SessionStats,
}

impl SyncSession {
    /// Starts a session; the hello is queued at once.
    pub fn new(cfg: SyncConfig, local: LocalView, now: Instant) -> Self {
        let base = if local.head.is_none() { local.head_point } else { None };
        let head = local.head.as_ref().map(|e| ChainPoint { seq: e.seq, hash: e.hash }).or(base);
        let mut peers = local.peers;
        peers.truncate(limits::GOSSIP_PEERS_MAX);
        let hello =
            Digest { fingerprint: local.fingerprint, head, anchor: local.anchor, peers, primary: local.primary };
        let deadline = now + cfg.idle_timeout;
        let mut transmit = VecDeque::from([GossipMessage::Hello(hello)]);
        let mut provisional = local.provisional;
        provisional.truncate(limits::GOSSIP_PROVISIONAL_MAX);
        if !provisional.is_empty() {
            transmit.push_back(GossipMessage::Provisional(provisional));
        }
        let mut forks = local.forks;
        forks.truncate(limits::GOSSIP_FORKS_MAX);
        if !forks.is_empty() {
            transmit.push_back(GossipMessage::Forks(forks));
        }
        let probe = !local.pull && local.head.is_some();
        let backfill = if local.pull { local.backfill } else { None };
        let backfill_batch = cfg.batch_events.clamp(1, limits::GOSSIP_BATCH_EVENTS_MAX as u32);
        SyncSession {
            cfg,
            fingerprint: local.fingerprint,
            tail: local.head,
            base,
            peer: None,
            outstanding: None,
            outstanding_backward: false,
            backfill,
            backfill_buf: Vec::new(),
            backfill_buf_bytes: 0,
            backfill_batch,
            backfill_stopped: false,
            overlap_checked: false,
            done_requesting: !local.pull,
            unstored: 0,
            sent_bye: false,
            peer_bye: false,
            provisional_seen: false,
            forks_seen: 0,
            probe,
            finished: false,
            deadline,
            transmit,
            events: VecDeque::new(),
            stats: SessionStats::default(),
        }
    }

    /// The peer's digest, once its hello arrived.
    pub fn peer_digest(&self) -> Option<&Digest> {
        self.peer.as_ref()
    }

    /// Whether the session has ended.
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// Counters so far.
    pub fn stats(&self) -> &SessionStats {
        &self.stats
    }

    /// The next message to send.
    pub fn poll_transmit(&mut self) -> Option<GossipMessage> {
        self.transmit.pop_front()
    }

    /// The next action for the adapter.
    pub fn poll_event(&mut self) -> Option<SessionEvent> {
        self.events.pop_front()
    }

    /// When [`SyncSession::handle_timeout`] must be called (`None` once finished).
    pub fn poll_timeout(&self) -> Option<Instant> {
        (!self.finished).then_some(self.deadline)
    }

    /// Ends the session if its deadline passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        if !self.finished && now >= self.deadline {
            self.finish(SessionOutcome::TimedOut);
        }
    }

    /// Reports a frame that could not be decoded: a violation.
    pub fn handle_bad_frame(&mut self, reason: String) {
        self.violation(Violation::BadFrame(reason));
    }

    /// Handles one message from the peer.
    pub fn handle(&mut self, msg: GossipMessage, now: Instant) {
        self.handle_with_records(msg, None, now)
    }

    /// [`SyncSession::handle`] of a message decoded from a frame; `records` are the ledger
    /// records a `Range` arrived as (one per event; ignored otherwise), kept with the range
    /// for the store.
    pub(crate) fn handle_with_records(&mut self, msg: GossipMessage, records: Option<RangeRecords>, now: Instant) {
        if self.finished {
            return;
        }
        self.deadline = now + self.cfg.idle_timeout;
        match msg {
            GossipMessage::Hello(d) => self.on_hello(d),
            GossipMessage::Request { from, max_events } => {
                if self.peer.is_none() {
                    return self.violation(Violation::Protocol("request before hello"));
                }
                if self.peer_bye {
                    return self.violation(Violation::Protocol("request after bye"));
                }
                let max_events = max_events.clamp(1, limits::GOSSIP_BATCH_EVENTS_MAX as u32);
                self.stats.requests_served += 1;
                self.events.push_back(SessionEvent::Serve { from, max_events });
            }
            GossipMessage::Range(events) => self.on_range(events, records),
            GossipMessage::Provisional(list) => {
                if self.peer.is_none() {
                    return self.violation(Violation::Protocol("provisional events before hello"));
                }
                if self.provisional_seen {
                    return self.violation(Violation::Protocol("a second provisional message"));
                }
                if list.len() > limits::GOSSIP_PROVISIONAL_MAX {
                    return self.violation(Violation::Protocol("too many provisional events"));
                }
                self.provisional_seen = true;
                self.events.push_back(SessionEvent::Provisional(list));
            }
            GossipMessage::Forks(list) => {
                if self.peer.is_none() {
                    return self.violation(Violation::Protocol("fork evidence before hello"));
                }
                if self.forks_seen >= 2 {
                    return self.violation(Violation::Protocol("a third fork message"));
                }
                if list.len() > limits::GOSSIP_FORKS_MAX {
                    return self.violation(Violation::Protocol("too much fork evidence"));
                }
                self.forks_seen += 1;
                self.events.push_back(SessionEvent::Forks(list));
            }
            GossipMessage::Bye => {
                if self.peer.is_none() {
                    return self.violation(Violation::Protocol("bye before hello"));
                }
                self.peer_bye = true;
                self.maybe_finish();
            }
        }
    }

    /// The adapter stored the range of the oldest outstanding [`SessionEvent::Store`].
    pub fn stored(&mut self) {
        self.unstored = self.unstored.saturating_sub(1);
        self.plan();
    }

    /// The ledger refused a range the session verified (bad signature, broken rule).
    pub fn store_failed(&mut self, reason: String) {
        self.unstored = self.unstored.saturating_sub(1);
        self.violation(Violation::Refused(reason));
    }

    fn on_hello(&mut self, d: Digest) {
        if self.peer.is_some() {
            return self.violation(Violation::Protocol("second hello"));
        }
        if d.peers.len() > limits::GOSSIP_PEERS_MAX {
            return self.violation(Violation::Protocol("too many peers in hello"));
        }
        match (self.fingerprint, d.fingerprint) {
            (Some(ours), Some(theirs)) if ours != theirs => {
                return self.violation(Violation::WrongNetwork { ours, theirs })
            }
            (Some(_), Some(_)) => {}
            // A peer that holds nothing claims no network; a fresh node with no expectation
            // learns the network from its first peer (the genesis rules check the claim).
            (None, theirs) => self.fingerprint = theirs,
            (Some(_), None) => {}
        }
        if d.fingerprint.is_none() && d.head.is_some() {
            return self.violation(Violation::Protocol("a head without a network"));
        }
        self.peer = Some(d);
        self.plan();
    }

    pub(super) fn tail_point(&self) -> Option<ChainPoint> {
        self.tail.as_ref().map(|e| ChainPoint { seq: e.seq, hash: e.hash }).or(self.base)
    }

    /// Where the history we still miss below should be fetched next: `(from, max_events)`.
    fn next_backfill_request(&self) -> Option<(u64, u32)> {
        let end = self.backfill.filter(|_| !self.backfill_stopped)?;
        // The peer's chain must reach the point (it may still not hold the history below).
        if self.peer.as_ref().is_none_or(|p| p.head.is_none_or(|h| h.seq < end.seq)) {
            return None;
        }
        match self.backfill_buf.last() {
            Some(last) => Some((last.seq + 1, u32::try_from(end.seq - last.seq).unwrap_or(u32::MAX))),
            None => {
                let from = end.seq.saturating_sub(u64::from(self.backfill_batch) - 1);
                Some((from, u32::try_from(end.seq - from + 1).unwrap_or(u32::MAX)))
            }
        }
    }

    /// Decides the next request, or that we are done asking.
    fn plan(&mut self) {
        if self.finished || self.outstanding.is_some() {
            return self.maybe_finish();
        }
        if self.probe {
            if let (Some(peer), Some(t)) = (self.peer.as_ref(), self.tail_point()) {
                self.probe = false;
                // Ask for the peer's event at our head when its chain reaches that far and is
                // not simply ours; a different event there is fork evidence.
                if peer.head.is_some_and(|ph| ph.seq >= t.seq && ph != t) {
                    self.outstanding = Some((t.seq, 1));
                    self.transmit.push_back(GossipMessage::Request { from: t.seq, max_events: 1 });
                    return;
                }
            }
        }
        if self.done_requesting {
            return self.maybe_finish();
        }
        let Some(peer_head) = self.peer.as_ref().map(|p| p.head) else { return };
        let next = match (peer_head, self.tail_point()) {
            (None, _) => None,
            (Some(_), None) => Some((0, self.cfg.batch_events)),
            (Some(ph), Some(t)) if ph.seq > t.seq => {
                // Without our head's event (a state-only ledger) there is nothing to overlap.
                if self.overlap_checked || self.tail.is_none() {
                    Some((t.seq + 1, self.cfg.batch_events))
                } else {
                    Some((t.seq, self.cfg.batch_events))
                }
            }
            (Some(ph), Some(t))
                if ph.seq == t.seq && ph.hash != t.hash && !self.overlap_checked && self.tail.is_some() =>
            {
                Some((t.seq, 1))
            }
            _ => None,
        };
        // Forward first (what is new matters most), then the history below.
        let (next, backward) = match next {
            Some(n) => (Some(n), false),
            None => (self.next_backfill_request(), true),
        };
        match next {
            Some(_) if self.unstored >= self.cfg.max_unstored => {}
            Some((from, n)) => {
                let n = n.clamp(1, limits::GOSSIP_BATCH_EVENTS_MAX as u32);
                self.outstanding = Some((from, n));
                self.outstanding_backward = backward;
                self.transmit.push_back(GossipMessage::Request { from, max_events: n });
            }
            None => {
                self.done_requesting = true;
                self.maybe_finish();
            }
        }
    }

    /// A range answering a backfill request: collect it until it reaches the point, then
    /// check the whole backwards from there and hand it out to store.
    fn on_backfill_range(&mut self, from: u64, asked: u32, events: Vec<ChainedEvent>) {
        if events.len() > asked as usize {
            return self.violation(Violation::TooLong { asked, got: events.len() });
        }
        let Some(first) = events.first() else {
            // The peer does not hold that part of the history (it may be backfilling too).
            self.backfill_stopped = true;
            self.backfill_buf.clear();
            self.backfill_buf_bytes = 0;
            return self.plan();
        };
        if first.seq != from {
            return self.violation(Violation::StartMismatch { asked: from, got: first.seq });
        }
        let Some(end) = self.backfill else { return self.violation(Violation::Unrequested(events.len())) };
        if events.last().is_some_and(|l| l.seq > end.seq) {
            return self.violation(Violation::TooLong { asked, got: events.len() });
        }
        self.stats.ranges_received += 1;
        self.backfill_buf_bytes += events.iter().map(|e| e.event.encoded_len()).sum::<usize>();
        self.backfill_buf.extend(events);
        if self.backfill_buf.last().is_some_and(|l| l.seq == end.seq) {
            let events = std::mem::take(&mut self.backfill_buf);
            self.backfill_buf_bytes = 0;
            let range = match BackfillRange::verify(end, events, self.fingerprint) {
                Ok(r) => r,
                Err(v) => return self.violation(v),
            };
            self.stats.events_received += range.len() as u64;
            self.backfill = range.next_point();
            self.unstored += 1;
            self.events.push_back(SessionEvent::Backfill(range));
        } else if self.backfill_buf_bytes > limits::GOSSIP_BACKFILL_BYTES_MAX {
            // Nothing of it can be checked before it reaches the point: start over with
            // shorter ranges.
            self.backfill_buf.clear();
            self.backfill_buf_bytes = 0;
            self.backfill_batch = (self.backfill_batch / 2).max(1);
        }
        self.plan();
    }

    fn maybe_finish(&mut self) {
        if self.finished || !self.done_requesting || self.outstanding.is_some() {
            return;
        }
        if !self.sent_bye {
            self.sent_bye = true;
            self.transmit.push_back(GossipMessage::Bye);
        }
        if self.peer_bye && self.unstored == 0 {
            self.finish(SessionOutcome::Completed);
        }
    }

    fn on_range(&mut self, mut events: Vec<ChainedEvent>, records: Option<RangeRecords>) {
        let Some((from, asked)) = self.outstanding.take() else {
            return self.violation(Violation::Unrequested(events.len()));
        };
        if std::mem::take(&mut self.outstanding_backward) {
            return self.on_backfill_range(from, asked, events);
        }
        if events.len() > asked as usize {
            return self.violation(Violation::TooLong { asked, got: events.len() });
        }
        let Some(first) = events.first() else {
            // The peer has nothing from there (its head moved back, or it lied in its hello):
            // nothing to store; stop asking it.
            self.done_requesting = true;
            return self.maybe_finish();
        };
        if first.seq != from {
            return self.violation(Violation::StartMismatch { asked: from, got: first.seq });
        }
        let mut skip = 0;
        if !self.overlap_checked {
            if let Some(tail) = &self.tail {
                if from == tail.seq {
                    self.overlap_checked = true;
                    if first.hash != tail.hash {
                        if !first.hash_is_valid() {
                            return self.violation(Violation::BadHash { seq: first.seq });
                        }
                        let evidence = ForkEvidence { ours: tail.clone(), theirs: first.clone() };
                        // Tell the peer too: it may not be able to see the fork from its side.
                        self.transmit.push_back(GossipMessage::Forks(vec![evidence.clone()]));
                        return self.finish(SessionOutcome::Fork(Box::new(evidence)));
                    }
                    skip = 1;
                }
            }
        }
        self.overlap_checked = true;
        if self.done_requesting {
            // A probe: the peer's chain passes through our head; nothing to store.
            return self.maybe_finish();
        }
        let (canonical, ends) = match self.verify_links(&events[skip..]) {
            Ok(c) => c,
            Err(v) => return self.violation(v),
        };
        self.stats.ranges_received += 1;
        // Records are kept only if there is exactly one per event received.
        let records = records.filter(|r| r.len() == events.len()).map(|r| r.skip(skip));
        events.drain(..skip);
        if let Some(last) = events.last() {
            self.stats.events_received += events.len() as u64;
            self.tail = Some(last.clone());
            self.unstored += 1;
            self.events.push_back(SessionEvent::Store(LinkedRange { events, canonical, ends, records }));
        }
        self.plan();
    }

    fn violation(&mut self, v: Violation) {
        self.finish(SessionOutcome::Violation(v));
    }

    fn finish(&mut self, outcome: SessionOutcome) {
        if self.finished {
            return;
        }
        self.finished = true;
        self.transmit.retain(|m| !matches!(m, GossipMessage::Request { .. }));
        self.events.retain(|e| matches!(e, SessionEvent::Store(_) | SessionEvent::Backfill(_)));
        self.events.push_back(SessionEvent::Finished(outcome));
    }
}
