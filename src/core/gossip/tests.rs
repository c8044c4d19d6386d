//! The sync session on a simulated clock, between two in-memory sides whose frames the test
//! passes by hand (the way quinn-proto tests its connections): time only moves when the test
//! moves it, so timeouts, round trips and losses are checked exactly and without sleeping.
//! The sessions against real ledgers, a malicious peer and thirty nodes are in `tests/it/latent.rs`.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::{GossipMessage, LocalView, SessionEvent, SessionOutcome, SyncConfig, SyncSession};
use crate::core::event::{ChainedEvent, EventBody, SignedEvent};
use crate::core::keys::NodeKey;
use crate::core::types::{ChainHash, NetworkFingerprint, Timestamp};

const FP: NetworkFingerprint = NetworkFingerprint([0x5e; 32]);

/// A linked chain of `n` events of network [`FP`] (the session checks links, hashes and the
/// network; signatures are the store's business).
fn chain(n: u64) -> Vec<ChainedEvent> {
    let key = NodeKey::from_seed([0x11; 32]);
    let mut prev = ChainHash::ZERO;
    (0..n)
        .map(|seq| {
            let body = EventBody::NodeBackOnline { node: key.node_id() };
            let ev = ChainedEvent::link(seq, prev, SignedEvent::sign(&key, FP, Timestamp(seq as i64), body));
            prev = ev.hash;
            ev
        })
        .collect()
}

/// One side: its session and the events it holds (a store that takes every verified range).
struct Side {
    session: SyncSession,
    held: Vec<ChainedEvent>,
    outcome: Option<SessionOutcome>,
    /// When the outcome was reached, on the simulated clock.
    ended_at: Option<Instant>,
    /// When the last message arrived (the session's start before any).
    last_heard: Instant,
    /// Events served to the peer.
    served: u64,
}

impl Side {
    fn new(cfg: &SyncConfig, held: Vec<ChainedEvent>, pull: bool, now: Instant) -> Side {
        let view = LocalView { fingerprint: Some(FP), head: held.last().cloned(), pull, ..Default::default() };
        let session = SyncSession::new(cfg.clone(), view, now);
        Side { session, held, outcome: None, ended_at: None, last_heard: now, served: 0 }
    }

    /// Does what the session asks (store, serve) and returns the messages it sends.
    fn pump(&mut self, now: Instant) -> Vec<GossipMessage> {
        let mut out = Vec::new();
        loop {
            let mut progressed = false;
            while let Some(ev) = self.session.poll_event() {
                progressed = true;
                match ev {
                    SessionEvent::Store(range) => {
                        self.held.extend(range.into_events());
                        self.session.stored();
                    }
                    SessionEvent::Serve { from, max_events } => {
                        let from = usize::try_from(from).unwrap_or(usize::MAX).min(self.held.len());
                        let to = (from + max_events as usize).min(self.held.len());
                        self.served += (to - from) as u64;
                        out.push(GossipMessage::Range(self.held[from..to].to_vec()));
                    }
                    SessionEvent::Finished(o) => {
                        self.outcome = Some(o);
                        self.ended_at = Some(now);
                    }
                    other => panic!("nothing else is asked in these sessions: {other:?}"),
                }
            }
            while let Some(m) = self.session.poll_transmit() {
                progressed = true;
                out.push(m);
            }
            if !progressed {
                return out;
            }
        }
    }
}

/// A link between the two sides: each direction is one ordered stream whose messages arrive
/// after `delay` ± `jitter`; with `loss`, a lost message breaks the connection (nothing more
/// arrives either way, as when a QUIC connection drops).
struct Link {
    delay: Duration,
    jitter: Duration,
    loss: f64,
    rng: ChaCha8Rng,
    /// In flight, arrival time first: to side 0, to side 1.
    in_flight: [VecDeque<(Instant, GossipMessage)>; 2],
    cut: bool,
    lost: usize,
}

impl Link {
    fn new(delay: Duration, jitter: Duration, loss: f64, seed: u64) -> Link {
        let rng = ChaCha8Rng::seed_from_u64(seed);
        Link { delay, jitter, loss, rng, in_flight: [VecDeque::new(), VecDeque::new()], cut: false, lost: 0 }
    }

    fn send(&mut self, to: usize, now: Instant, msgs: Vec<GossipMessage>) {
        for m in msgs {
            if self.cut || self.rng.random_bool(self.loss) {
                self.cut = true;
                self.lost += 1;
                continue;
            }
            let spread = self.jitter.as_micros() as u64;
            let jitter = Duration::from_micros(self.rng.random_range(0..=2 * spread));
            let arrive = now + self.delay + jitter - self.jitter;
            // One stream: a message never overtakes the one sent before it.
            let arrive = self.in_flight[to].back().map_or(arrive, |(t, _)| arrive.max(*t));
            self.in_flight[to].push_back((arrive, m));
        }
    }
}

/// Runs a session between `sides` over `link` on the simulated clock from `t0`: the clock
/// jumps to the next arrival or the next session deadline, whichever comes first, until both
/// sides have ended. Returns when the last one ended.
fn run(sides: &mut [Side; 2], link: &mut Link, t0: Instant) -> Instant {
    let mut now = t0;
    for (i, side) in sides.iter_mut().enumerate() {
        let out = side.pump(now);
        link.send(1 - i, now, out);
    }
    for _ in 0..100_000 {
        if sides.iter().all(|s| s.outcome.is_some()) {
            return sides.iter().filter_map(|s| s.ended_at).max().unwrap_or(now);
        }
        let arrivals = link.in_flight.iter().filter_map(|q| q.front().map(|(t, _)| *t));
        let deadlines = sides.iter().filter_map(|s| s.session.poll_timeout());
        now = arrivals.chain(deadlines).min().expect("a side that has not ended has a deadline");
        for (i, side) in sides.iter_mut().enumerate() {
            while link.in_flight[i].front().is_some_and(|(t, _)| *t <= now) {
                let (_, m) = link.in_flight[i].pop_front().expect("front");
                side.session.handle(m, now);
                side.last_heard = now;
            }
            side.session.handle_timeout(now);
            let out = side.pump(now);
            link.send(1 - i, now, out);
        }
    }
    panic!("the session never ended");
}

fn cfg(batch: u32) -> SyncConfig {
    SyncConfig { batch_events: batch, idle_timeout: Duration::from_secs(10), max_unstored: 2 }
}

/// With no message the session ends exactly at its idle timeout, and every message received
/// pushes that deadline back by the full timeout.
#[test]
fn a_silent_peer_ends_the_session_exactly_at_the_idle_timeout() {
    let t0 = Instant::now();
    let held = chain(5);
    let mut s = Side::new(&cfg(8), held.clone(), true, t0);
    assert!(matches!(s.pump(t0).as_slice(), [GossipMessage::Hello(_)]), "the hello goes out at once");
    assert_eq!(s.session.poll_timeout(), Some(t0 + Duration::from_secs(10)));
    s.session.handle_timeout(t0 + Duration::from_secs(10) - Duration::from_nanos(1));
    assert!(!s.session.is_finished(), "not a nanosecond early");

    // The peer's hello at 4 s: the deadline is 14 s now.
    let t1 = t0 + Duration::from_secs(4);
    let hello = Side::new(&cfg(8), held, false, t1).pump(t1).remove(0);
    s.session.handle(hello, t1);
    s.pump(t1);
    assert_eq!(s.session.poll_timeout(), Some(t1 + Duration::from_secs(10)));
    s.session.handle_timeout(t0 + Duration::from_secs(10));
    assert!(!s.session.is_finished(), "the first deadline has moved");
    s.session.handle_timeout(t1 + Duration::from_secs(10));
    s.pump(t1 + Duration::from_secs(10));
    assert_eq!(s.outcome, Some(SessionOutcome::TimedOut));
    assert_eq!(s.session.poll_timeout(), None, "a finished session wants no more timeouts");
}

/// Over a link with 50 ms each way, a node behind by 260 events catches up in batches of 32,
/// one batch in flight at a time: one round trip for the hellos and one per batch, and the
/// idle timeout never fires.
#[test]
fn a_node_behind_catches_up_one_round_trip_per_batch() {
    let t0 = Instant::now();
    let full = chain(300);
    let mut sides = [Side::new(&cfg(32), full.clone(), false, t0), Side::new(&cfg(32), full[..40].to_vec(), true, t0)];
    let mut link = Link::new(Duration::from_millis(50), Duration::ZERO, 0.0, 1);
    let ended = run(&mut sides, &mut link, t0);
    assert_eq!(sides[0].outcome, Some(SessionOutcome::Completed));
    assert_eq!(sides[1].outcome, Some(SessionOutcome::Completed));
    assert_eq!(sides[1].held, full, "the whole chain, each event once and in order");
    let batches = sides[1].session.stats().ranges_received;
    // The first request overlaps the head by one event: 31 new ones, then 32 a batch.
    assert_eq!(batches, 1 + (260u64 - 31).div_ceil(32));
    assert_eq!(sides[1].session.stats().events_received, 260);
    assert_eq!(ended - t0, Duration::from_millis(100) * (batches as u32 + 1));
}

/// Sessions over a link that delays each message by 20 ± 15 ms (the two directions
/// interleave in every order) and drops one message in ten, which breaks the connection: a
/// broken session ends exactly one idle timeout after the last message it heard, keeps what it
/// stored, and the next session goes on from there. The node converges, verifying every event
/// once; the server sends again at most the one batch that was in flight when a link broke.
#[test]
fn sessions_over_a_lossy_reordering_link_resume_and_converge() {
    let full = chain(500);
    let mut held = full[..10].to_vec();
    let config = SyncConfig { idle_timeout: Duration::from_millis(500), ..cfg(16) };
    let mut now = Instant::now();
    let (mut sessions, mut timed_out, mut received, mut served) = (0u64, 0u64, 0u64, 0u64);
    while held.len() < full.len() {
        sessions += 1;
        assert!(sessions <= 200, "no convergence after 200 sessions: {} of {} events", held.len(), full.len());
        let before = held.len();
        let mut sides =
            [Side::new(&config, full.clone(), false, now), Side::new(&config, std::mem::take(&mut held), true, now)];
        let mut link = Link::new(Duration::from_millis(20), Duration::from_millis(15), 0.1, sessions);
        now = run(&mut sides, &mut link, now);
        let [server, puller] = sides;
        received += puller.session.stats().events_received;
        served += server.served;
        match puller.outcome {
            Some(SessionOutcome::TimedOut) => {
                timed_out += 1;
                assert!(link.cut, "session {sessions}: only a broken link times out");
                assert_eq!(puller.ended_at, Some(puller.last_heard + config.idle_timeout), "session {sessions}");
            }
            // The link may break after the puller has all it needs (its bye lost).
            ref o => assert_eq!(o, &Some(SessionOutcome::Completed), "session {sessions}"),
        }
        assert!(puller.held.len() >= before, "session {sessions}: what was stored is kept");
        held = puller.held;
        assert_eq!(held[..], full[..held.len()], "session {sessions}: a prefix of the chain, each event once");
    }
    assert!(timed_out > 0, "the link did break sessions");
    assert_eq!(received, 490, "every missing event verified once");
    // Each session's first request overlaps the puller's head by one event; a broken session
    // may have lost the batch in flight (at most 16 events).
    assert!(served <= 490 + sessions + timed_out * 16, "{served} served in {sessions} sessions, {timed_out} broken");
}
