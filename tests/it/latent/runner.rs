//! The gossip runner over an in-memory byte stream: bandwidth, bans, relayed fork evidence
//! and bad frames.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use mycnet_spores::core::event::{ChainedEvent, SignedEvent};
use mycnet_spores::core::gossip::{ForkEvidence, SessionOutcome, Violation};
use mycnet_spores::net::gossip::{GossipConfig, GossipService, GossipStream};
use mycnet_spores::{Ledger, NodeKey, PeerNode};

use super::{ledger_with, open_ledger};
use crate::fixture::synth_events;

fn service(seed: u8, ledger: Arc<RwLock<Ledger>>, pull: bool, cfg: GossipConfig) -> Arc<GossipService> {
    let node = NodeKey::from_seed([seed; 32]).node_id();
    let me = PeerNode { node, addr: format!("test-{seed}") };
    Arc::new(GossipService::new(me, ledger, cfg, move || pull, move || !pull))
}

/// Runs one session between two services over an in-memory byte pipe (the runner is
/// transport-agnostic; QUIC streams are tested elsewhere).
async fn run_pair(
    a: &Arc<GossipService>,
    a_id: u8,
    b: &Arc<GossipService>,
    b_id: u8,
) -> (SessionOutcome, SessionOutcome, u64) {
    let (x, y) = tokio::io::duplex(64 * 1024);
    let (xr, xw) = tokio::io::split(x);
    let (yr, yw) = tokio::io::split(y);
    let sa = GossipStream { peer: NodeKey::from_seed([b_id; 32]).node_id(), send: Box::new(xw), recv: Box::new(xr) };
    let sb = GossipStream { peer: NodeKey::from_seed([a_id; 32]).node_id(), send: Box::new(yw), recv: Box::new(yr) };
    let (ra, rb) = tokio::join!(a.run_session(sa, true), b.run_session(sb, false));
    (ra.0, rb.0, ra.1.stored)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runner_syncs_over_any_byte_stream_and_bounds_bandwidth() {
    let (events, _) = synth_events(0xb4d, 1500);
    let tmp = tempfile::tempdir().unwrap();
    let src = Arc::new(RwLock::new(ledger_with(&tmp.path().join("src"), &events)));
    let dst = Arc::new(RwLock::new(open_ledger(&tmp.path().join("dst"))));
    let record_bytes: u64 = src.read().unwrap().read_raw_range(0, 1499).unwrap().iter().map(|r| r.len() as u64).sum();
    // 3 s worth of records at the configured rate.
    let rate = record_bytes / 3;
    let slow = GossipConfig { serve_bytes_per_sec: Some(rate), ..Default::default() };
    let server = service(1, src.clone(), false, slow);
    let client = service(2, dst.clone(), true, GossipConfig::default());
    let t = Instant::now();
    let (oc, os, stored) = run_pair(&client, 2, &server, 1).await;
    let took = t.elapsed();
    assert_eq!((oc, os), (SessionOutcome::Completed, SessionOutcome::Completed));
    assert_eq!(stored, 1500);
    assert_eq!(dst.read().unwrap().head(), src.read().unwrap().head());
    assert!(took >= Duration::from_millis(2000), "served {record_bytes} bytes at {rate} B/s in {took:?}");
    assert!(client.last_sync_age().is_some(), "a completed session is recorded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_breaks_the_protocol_is_banned() {
    use tokio::io::AsyncWriteExt;
    let (events, _) = synth_events(0xba2, 50);
    let tmp = tempfile::tempdir().unwrap();
    let ledger = Arc::new(RwLock::new(ledger_with(tmp.path(), &events)));
    let svc = service(3, ledger, false, GossipConfig::default());
    let bad = NodeKey::from_seed([4; 32]).node_id();
    let (x, y) = tokio::io::duplex(64 * 1024);
    let (xr, xw) = tokio::io::split(x);
    let (_yr, mut yw) = tokio::io::split(y);
    // A frame with an unknown tag, instead of a hello.
    yw.write_all(&[0, 0, 0, 2, 9, 9]).await.unwrap();
    let (outcome, _) = svc.run_session(GossipStream { peer: bad, send: Box::new(xw), recv: Box::new(xr) }, false).await;
    assert!(matches!(outcome, SessionOutcome::Violation(Violation::BadFrame(_))), "{outcome:?}");
    assert!(svc.is_banned(&bad));
    assert!(svc.candidates().iter().all(|p| p.node != bad), "a banned peer is not contacted");
}

/// Fork evidence a peer relays is kept only by a node whose chain reaches the fork, oriented
/// so that `ours` is its own event. A node whose chain is shorter (one that just yielded a
/// split-brain and is catching up) keeps nothing: a guess at which side is its own would
/// be wrong half the time, and its resolver would then chase a fork between its chain and
/// itself once the chain grows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relayed_fork_evidence_is_kept_only_by_a_node_that_holds_one_side() {
    let (events, synth) = synth_events(0xf0c, 200);
    let tmp = tempfile::tempdir().unwrap();
    let full = ledger_with(&tmp.path().join("relay"), &events);
    let honest = full.read_range(0, 199).unwrap();
    // Another valid event at seq 150 (same author, another time), linked to seq 149.
    let e = &honest[150].event;
    let author = synth.keys().iter().find(|k| k.node_id() == e.author).unwrap().clone();
    let other = ChainedEvent::link(
        150,
        honest[149].hash,
        SignedEvent::sign(&author, e.fingerprint, mycnet_spores::Timestamp(e.timestamp.0 + 1), e.body.clone()),
    );
    // The relaying peer stored it from the other side's point of view.
    let evidence = ForkEvidence { ours: other.clone(), theirs: honest[150].clone() };
    assert_eq!(evidence.check(), Ok(()));
    assert!(mycnet_spores::forensics::forks::record(&full, &evidence).unwrap());
    let relay = service(20, Arc::new(RwLock::new(full)), false, GossipConfig::default());
    let unresolved = |l: &Arc<RwLock<Ledger>>| mycnet_spores::forensics::forks::unresolved(&l.read().unwrap()).unwrap();

    // A member whose chain ends at seq 99: nothing kept.
    let short = Arc::new(RwLock::new(ledger_with(&tmp.path().join("short"), &events[..100])));
    let s = service(21, short.clone(), false, GossipConfig::default());
    run_pair(&s, 21, &relay, 20).await;
    assert_eq!(short.read().unwrap().head().map(|h| h.seq), Some(99), "a member does not pull by gossip");
    assert!(unresolved(&short).is_empty(), "evidence beyond our head is not kept");

    // A member that holds seq 150: kept, with its own event as `ours`.
    let long = Arc::new(RwLock::new(ledger_with(&tmp.path().join("long"), &events)));
    let l = service(22, long.clone(), false, GossipConfig::default());
    run_pair(&l, 22, &relay, 20).await;
    let kept = unresolved(&long);
    assert_eq!(kept.len(), 1);
    assert_eq!((kept[0].ours.hash, kept[0].theirs.hash), (honest[150].hash, other.hash), "oriented to our chain");
}

/// An oversized length prefix and a frame cut short are violations, read without
/// allocating what the prefix promises.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_truncated_frames_are_violations() {
    use tokio::io::AsyncWriteExt;
    let tmp = tempfile::tempdir().unwrap();
    let ledger = Arc::new(RwLock::new(open_ledger(tmp.path())));
    let svc = service(5, ledger, false, GossipConfig::default());
    for (i, bytes) in [vec![0x7f, 0xff, 0xff, 0xff], vec![0, 0, 1, 0, 1, 2, 3]].into_iter().enumerate() {
        let peer = NodeKey::from_seed([6 + i as u8; 32]).node_id();
        let (x, y) = tokio::io::duplex(64 * 1024);
        let (xr, xw) = tokio::io::split(x);
        let (_yr, mut yw) = tokio::io::split(y);
        yw.write_all(&bytes).await.unwrap();
        yw.shutdown().await.unwrap();
        let (outcome, _) = svc.run_session(GossipStream { peer, send: Box::new(xw), recv: Box::new(xr) }, false).await;
        assert!(matches!(outcome, SessionOutcome::Violation(Violation::BadFrame(_))), "case {i}: {outcome:?}");
        assert!(svc.is_banned(&peer), "case {i}");
    }
}
