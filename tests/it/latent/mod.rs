//! Latent sync: the sans-IO session against real fjall ledgers (and in-memory stores for
//! large simulations), in an in-process simulation with loss and delay, and against a
//! malicious peer.
//!
//! The helpers every scenario shares (a ledger, its view, the adapter loop, a lossless
//! session) are here; the scenarios are in their own files:
//! - `convergence`: honest peers converge, two of them in small batches, thirty with loss and
//!   delay, and a dropped connection resumes;
//! - `malicious`: a peer that answers whatever it likes;
//! - `ranges`: what the ledger takes from a sync (whole ranges, the verdicts handed in, never a
//!   refused branch);
//! - `anchors`: the anchor tier a synced chain's checkpoints set;
//! - `runner`: the gossip runner over a byte stream (bandwidth, bans, relayed fork evidence);
//! - `provisional`: the groundwork of provisional writes;
//! - `backfill`, `backfill_props`: a ledger from a state-only seed fills in its history below;
//! - `sim`: the seeded gossip simulation of many nodes with loss and delay, over any
//!   `ChainStore` (fjall ledgers in `convergence`, in-memory chains in `scale`);
//! - `mem_store`: the in-memory store refuses what the ledger refuses;
//! - `scale`: thousands of nodes on in-memory stores (opt-in, `--ignored`).

use std::collections::VecDeque;
use std::time::Instant;

use mycnet_spores::core::event::{ChainedEvent, SignedEvent};
use mycnet_spores::core::gossip::{GossipMessage, LocalView, SessionEvent, SessionOutcome, SyncConfig, SyncSession};
use mycnet_spores::store::chain_store::ChainStore;
use mycnet_spores::{Ledger, LedgerConfig};

mod anchors;
mod backfill;
mod backfill_props;
mod convergence;
mod malicious;
mod mem_store;
mod provisional;
mod ranges;
mod runner;
mod scale;
mod sim;

fn open_ledger(dir: &std::path::Path) -> Ledger {
    Ledger::open(dir, LedgerConfig { durable: false, ..Default::default() }).expect("open ledger")
}

/// The view a session of `l` starts from (see `ChainStore::local_view`).
fn local_view<S: ChainStore>(l: &S, pull: bool) -> LocalView {
    l.local_view(pull).expect("read the head")
}

/// Serves a request from a store as the drivers do: `from..` up to `max` events, nothing
/// below the history held (as `Ledger::read_raw_batch` serves).
fn serve<S: ChainStore>(l: &S, from: u64, max: u32) -> Vec<ChainedEvent> {
    l.serve_range(from, max).expect("read range")
}

/// What one side of a session did with the adapter's help.
#[derive(Debug)]
struct SideResult {
    outcome: SessionOutcome,
    stored: u64,
}

/// Runs the adapter loop for one side: store, serve (at most `cap` events per answer, as a
/// peer bounded by bytes does); returns messages to send.
fn pump<S: ChainStore>(
    s: &mut SyncSession,
    l: &mut S,
    out: &mut VecDeque<GossipMessage>,
    stored: &mut u64,
    cap: u32,
) -> Option<SessionOutcome> {
    let mut outcome = None;
    loop {
        let mut progressed = false;
        while let Some(ev) = s.poll_event() {
            progressed = true;
            match ev {
                SessionEvent::Store(range) => match l.append_linked(&range) {
                    Ok(_) => {
                        *stored += range.len() as u64;
                        s.stored();
                    }
                    Err(e) => s.store_failed(e.to_string()),
                },
                SessionEvent::Backfill(range) => match l.append_backfill(&range) {
                    Ok(_) => {
                        *stored += range.len() as u64;
                        s.stored();
                    }
                    Err(e) => s.store_failed(e.to_string()),
                },
                SessionEvent::Serve { from, max_events } => {
                    out.push_back(GossipMessage::Range(serve(l, from, max_events.min(cap))))
                }
                SessionEvent::Provisional(_) | SessionEvent::Forks(_) => {}
                SessionEvent::Finished(o) => outcome = Some(o),
            }
        }
        while let Some(m) = s.poll_transmit() {
            progressed = true;
            out.push_back(m);
        }
        if !progressed {
            return outcome;
        }
    }
}

/// Runs a lossless session between two ledgers to the end.
fn sync_pair<S: ChainStore>(a: &mut S, b: &mut S, cfg: &SyncConfig) -> (SideResult, SideResult) {
    sync_sessions(a, b, true, cfg, u32::MAX)
}

/// Runs a lossless session between `a` (pulling) and `b` (pulling if `b_pulls`), each
/// answering with at most `cap` events, until both finish.
fn sync_sessions<S: ChainStore>(
    a: &mut S,
    b: &mut S,
    b_pulls: bool,
    cfg: &SyncConfig,
    cap: u32,
) -> (SideResult, SideResult) {
    let now = Instant::now();
    let mut sa = SyncSession::new(cfg.clone(), local_view(a, true), now);
    let mut sb = SyncSession::new(cfg.clone(), local_view(b, b_pulls), now);
    let (mut to_b, mut to_a) = (VecDeque::new(), VecDeque::new());
    let (mut oa, mut ob) = (None, None);
    let (mut na, mut nb) = (0, 0);
    for _ in 0..100_000 {
        if let Some(o) = pump(&mut sa, a, &mut to_b, &mut na, cap) {
            oa = Some(o);
        }
        if let Some(o) = pump(&mut sb, b, &mut to_a, &mut nb, cap) {
            ob = Some(o);
        }
        if oa.is_some() && ob.is_some() {
            break;
        }
        if to_a.is_empty() && to_b.is_empty() {
            break;
        }
        while let Some(m) = to_b.pop_front() {
            sb.handle(m, now);
        }
        while let Some(m) = to_a.pop_front() {
            sa.handle(m, now);
        }
    }
    (
        SideResult { outcome: oa.expect("side a finished"), stored: na },
        SideResult { outcome: ob.expect("side b finished"), stored: nb },
    )
}

fn ledger_with(dir: &std::path::Path, events: &[SignedEvent]) -> Ledger {
    let mut l = open_ledger(dir);
    for chunk in events.chunks(256) {
        let out = l.append(chunk.to_vec()).expect("append");
        assert!(out.iter().all(|o| o.is_ok()), "synthetic events are valid");
    }
    l
}
