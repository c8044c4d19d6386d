//! The seeded gossip simulation of many nodes, over any `ChainStore`: voters receive the
//! writes, latent nodes start empty, and every round each node opens sessions with random
//! peers; every message may be lost (which breaks its session's connection, as a dropped QUIC
//! connection would) and is delayed by a few steps. One seed fixes the whole run.
//!
//! The step loop costs O(sessions) per step (each session is visited once, in a shuffled
//! order), so a round of N nodes costs O(N · steps): nothing is quadratic in N.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use mycnet_spores::core::gossip::{GossipMessage, SyncConfig, SyncSession};
use mycnet_spores::net::gossip::LedgerRecords;
use mycnet_spores::store::chain_store::ChainStore;
use mycnet_spores::store::record::encode_record;
use mycnet_spores::wire::gossip::encode_frame;
use mycnet_spores::{ChainHash, ChainedEvent, SignedEvent};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::{local_view, pump};

/// What a simulation runs.
#[derive(Clone, Debug)]
pub(super) struct SimParams {
    /// Voters: nodes `0..voters` take the writes and never pull.
    pub(super) voters: usize,
    /// The writes land on the voters in this many rounds, in equal chunks.
    pub(super) write_rounds: usize,
    /// Sessions each node opens per round.
    pub(super) fan_out: usize,
    /// Probability that a message is lost (its session's connection breaks).
    pub(super) loss: f64,
    /// Each message is delayed by 0..=`delay_steps_max` steps (order kept per direction).
    pub(super) delay_steps_max: u64,
    /// The rng seed.
    pub(super) seed: u64,
    /// Rounds run after the last write at most.
    pub(super) rounds_after_writes_max: usize,
    /// End the run at the round every head is the same (the rounds after are not run).
    pub(super) stop_when_converged: bool,
}

/// The bound on rounds after the last write for `n` nodes: 2⌈log₂ n⌉ + 2.
pub(super) fn rounds_bound(n: usize) -> usize {
    2 * (n as f64).log2().ceil() as usize + 2
}

impl SimParams {
    /// The setting both the 30-node test and the scale run use: 3 voters take the writes in
    /// 3 rounds, fan-out 2, 5 % loss, delays of 0–3 steps, and at most
    /// [`rounds_bound`]`(n) + 4` rounds after the last write.
    pub(super) fn lossy(n: usize, seed: u64, stop_when_converged: bool) -> Self {
        SimParams {
            voters: 3,
            write_rounds: 3,
            fan_out: 2,
            loss: 0.05,
            delay_steps_max: 3,
            seed,
            rounds_after_writes_max: rounds_bound(n) + 4,
            stop_when_converged,
        }
    }
}

/// What a simulation did.
#[derive(Debug)]
pub(super) struct SimReport {
    /// Rounds after the last write until every head was the same (`None`: not within the run).
    pub(super) converged_after: Option<usize>,
    /// Messages lost: the one that broke its session's connection, and those the session
    /// sent after it (never delivered).
    pub(super) lost: u64,
    /// Gossip frame bytes each node sent (`schema/gossip.md` framing, ranges as ledger
    /// records), lost messages included; nothing is sent on a broken connection.
    pub(super) bytes_sent: Vec<u64>,
    /// Messages sent (lost ones included; none on a broken connection).
    pub(super) messages: u64,
    /// Sessions run.
    pub(super) sessions: u64,
}

/// One session of the simulation, between nodes `a` (initiator) and `b`.
struct SimPair {
    a: usize,
    b: usize,
    sa: SyncSession,
    sb: SyncSession,
    /// Messages in flight with the step they arrive at: (to b, to a).
    to_b: VecDeque<(u64, GossipMessage)>,
    to_a: VecDeque<(u64, GossipMessage)>,
    /// The connection broke (a message was lost): both sides stop hearing each other.
    cut: bool,
    done_a: bool,
    done_b: bool,
}

/// Frame sizes of messages, with the record size of each event computed once.
#[derive(Default)]
struct FrameSizes {
    records: HashMap<ChainHash, u64>,
}

impl FrameSizes {
    /// The bytes `m` takes on the wire: length prefix, tag and body.
    fn of(&mut self, m: &GossipMessage) -> u64 {
        match m {
            GossipMessage::Range(events) => {
                let body: u64 = events.iter().map(|e| 4 + self.record(e)).sum();
                4 + 1 + 4 + body
            }
            other => encode_frame::<LedgerRecords>(other).len() as u64,
        }
    }

    fn record(&mut self, e: &ChainedEvent) -> u64 {
        *self.records.entry(e.hash).or_insert_with(|| encode_record(e).len() as u64)
    }
}

/// Runs the simulation over `stores` (all empty) with `events` written to the voters.
pub(super) fn run<S: ChainStore>(stores: &mut [S], events: &[SignedEvent], params: &SimParams) -> SimReport {
    let n = stores.len();
    assert!(n > params.voters && params.voters > 0 && params.write_rounds > 0);
    let mut rng = ChaCha8Rng::seed_from_u64(params.seed);
    let cfg = SyncConfig { batch_events: 128, idle_timeout: Duration::from_millis(200), ..Default::default() };
    let base = Instant::now();
    let step_time = Duration::from_millis(10);
    let mut writes = events.chunks(events.len() / params.write_rounds + 1);
    let mut sizes = FrameSizes::default();
    let mut report = SimReport { converged_after: None, lost: 0, bytes_sent: vec![0; n], messages: 0, sessions: 0 };
    for round in 0..(params.write_rounds + params.rounds_after_writes_max) {
        if round < params.write_rounds {
            let chunk = writes.next().expect("a chunk per write round");
            for l in stores.iter_mut().take(params.voters) {
                assert!(l.append(chunk.to_vec()).expect("append").iter().all(|o| o.is_ok()));
            }
        }
        // Pick the round's sessions; a node pulls in at most one session at a time.
        let mut pulling = vec![false; n];
        let mut pairs: Vec<SimPair> = Vec::with_capacity(n * params.fan_out);
        for a in 0..n {
            for _ in 0..params.fan_out {
                let mut b = rng.random_range(0..n - 1);
                if b >= a {
                    b += 1;
                }
                let pa = !pulling[a] && a >= params.voters;
                let pb = !pulling[b] && b >= params.voters;
                pulling[a] |= pa;
                pulling[b] |= pb;
                pairs.push(SimPair {
                    a,
                    b,
                    sa: SyncSession::new(cfg.clone(), local_view(&stores[a], pa), base),
                    sb: SyncSession::new(cfg.clone(), local_view(&stores[b], pb), base),
                    to_b: VecDeque::new(),
                    to_a: VecDeque::new(),
                    cut: false,
                    done_a: false,
                    done_b: false,
                });
            }
        }
        report.sessions += pairs.len() as u64;
        // Interleave all sessions of the round step by step, in random order.
        let mut step = 0u64;
        let mut open = pairs.len();
        let mut order: Vec<usize> = (0..pairs.len()).collect();
        while open > 0 {
            step += 1;
            assert!(step < 100_000, "round {round} does not end");
            let now = base + step_time * step as u32;
            for i in (1..order.len()).rev() {
                order.swap(i, rng.random_range(0..=i));
            }
            for &pi in &order {
                let p = &mut pairs[pi];
                if p.done_a && p.done_b {
                    continue;
                }
                for side_a in [true, false] {
                    let (s, node, inbox, outbox, done) = if side_a {
                        (&mut p.sa, p.a, &mut p.to_a, &mut p.to_b, &mut p.done_a)
                    } else {
                        (&mut p.sb, p.b, &mut p.to_b, &mut p.to_a, &mut p.done_b)
                    };
                    if *done {
                        continue;
                    }
                    while inbox.front().is_some_and(|(at, _)| *at <= step) {
                        let Some((_, m)) = inbox.pop_front() else { break };
                        s.handle(m, now);
                    }
                    s.handle_timeout(now);
                    let mut out = VecDeque::new();
                    let mut ignored = 0;
                    if pump(s, &mut stores[node], &mut out, &mut ignored, u32::MAX).is_some() {
                        *done = true;
                    }
                    for m in out {
                        if !p.cut {
                            report.bytes_sent[node] += sizes.of(&m);
                            report.messages += 1;
                        }
                        if p.cut || rng.random_bool(params.loss) {
                            p.cut = true;
                            report.lost += 1;
                            continue;
                        }
                        let delay = rng.random_range(0..=params.delay_steps_max);
                        // One QUIC stream: order is kept, so a message never overtakes another.
                        let at = outbox.back().map_or(0, |(t, _)| *t).max(step + delay);
                        outbox.push_back((at, m));
                    }
                }
                if p.done_a && p.done_b {
                    open -= 1;
                }
            }
        }
        let reference = stores[0].head();
        if round + 1 >= params.write_rounds
            && report.converged_after.is_none()
            && stores.iter().all(|l| l.head() == reference)
        {
            report.converged_after = Some(round + 1 - params.write_rounds);
            if params.stop_when_converged {
                break;
            }
        }
    }
    report
}
