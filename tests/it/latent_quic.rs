//! The latent tier over real QUIC on loopback: Rhizomorphs outside the Raft membership keep a
//! verified copy of the chain by gossip, answer queries from it, and say in `status()` when
//! they are cut off from the Primary tier.

use std::sync::Arc;
use std::time::Duration;

use mycnet_spores::net::gossip::GossipConfig;
use mycnet_spores::net::quic::{Admission, QuicBackend};
use mycnet_spores::{Endpoint, NodeKey, NodeRole, OperationalMode, SporeSystem, SporeType};

use crate::quic::{converged, form_quic_cluster, leader_of};
use crate::wait;

async fn start_latent(key: &NodeKey, dir: &std::path::Path, bootstrap: Vec<mycnet_spores::PeerNode>) -> SporeSystem {
    let s = SporeSystem::builder()
        .data_dir(dir)
        .key(key.clone())
        .role(NodeRole::Rhizomorph)
        .addr("127.0.0.1:0")
        .network(Arc::new(QuicBackend::new(key.clone(), Admission::allow_all())))
        .timeouts(crate::cluster::fast_timeouts())
        .gossip(GossipConfig {
            interval: Duration::from_millis(100),
            connect_timeout: Duration::from_millis(500),
            ..Default::default()
        })
        .gossip_peers(bootstrap)
        .build();
    s.start().await.expect("start latent node");
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_latent_nodes_converge_by_gossip_and_answer_when_cut_off() {
    let root = tempfile::tempdir().expect("tempdir");
    let mut voters = form_quic_cluster(root.path(), 120, 0x6_0000).await;
    let leader = leader_of(&voters, Duration::from_secs(5)).await;
    // Two Rhizomorphs, each knowing one voter; admitted into the registry, never into Raft.
    let mut latent = Vec::new();
    for i in 0..2u8 {
        let key = NodeKey::from_seed([130 + i; 32]);
        let boot = voters[i as usize].system.as_ref().expect("voter").peer().expect("peer");
        latent.push(start_latent(&key, &root.path().join(format!("l{i}")), vec![boot]).await);
    }
    for l in &latent {
        let s = voters[leader].system.as_ref().expect("leader");
        s.admit(l.announcement().expect("announcement")).await.expect("admit");
    }
    for i in 0..20 {
        let dns = Endpoint { protocol: "udp".into(), address: format!("10.0.0.{i}:53").into() };
        voters[(leader + i) % 3]
            .system
            .as_ref()
            .expect("voter")
            .register_service(&format!("svc-{i}"), vec![dns], vec!["dns".into()], vec![])
            .await
            .expect("write");
    }
    let head = converged(&voters, Duration::from_secs(10)).await;
    for l in &latent {
        wait::head_reaches("the latent node", l, head.seq, Duration::from_secs(20)).await;
        let st = l.status().expect("status");
        assert!(!st.raft_member, "a Rhizomorph stays out of Raft");
        assert!(st.voters.is_empty());
        assert_eq!(l.services_by_capability("dns").expect("query").len(), 20);
        assert_eq!(l.services_by_name("svc-7").expect("query").len(), 1);
        mode_becomes(l, OperationalMode::NormalOperation, Duration::from_secs(5)).await;
    }
    // The chain the latent nodes hold is the voters' chain, byte for byte: once a latent node
    // is at the leader's head (anchors keep landing, so wait for a moment when they agree),
    // its whole state equals the leader's.
    let leader_sys = voters[leader].system.as_ref().expect("leader");
    for (i, l) in latent.iter().enumerate() {
        let (got, want) = wait::some(&format!("latent node {i} at the leader's head"), Duration::from_secs(20), || {
            let want = leader_sys.with_projection(|p| p.state().clone()).expect("state");
            let got = l.with_projection(|p| p.state().clone()).expect("state");
            (got.head == want.head).then_some((got, want))
        })
        .await;
        assert_eq!(got, want, "latent node {i} holds the leader's state at {:?}", want.head);
    }
    // The leader anchors the chain (checkpoint events every 5 s by default); latent nodes
    // learn the anchor and the anchored part becomes Primary in their view.
    wait::until(
        "an anchor at every latent node (anchors)",
        Duration::from_secs(20),
        || latent.iter().map(|l| l.status().ok().and_then(|s| s.anchor)).collect::<Vec<_>>(),
        |anchors| anchors.iter().all(Option::is_some),
    )
    .await;
    let st = latent[0].status().expect("status");
    let expected_tier =
        if st.anchor.map(|a| a.seq) == st.head.map(|h| h.seq) { SporeType::Primary } else { SporeType::Latent };
    assert_eq!(st.spore_type, expected_tier);

    // Cut off from the Primary tier: every voter goes away.
    for v in voters.iter_mut() {
        if let Some(s) = v.system.take() {
            if let Ok(r) = s.raft() {
                let _ = r.shutdown().await;
            }
            drop(s);
        }
    }
    for l in &latent {
        mode_becomes(l, OperationalMode::PartitionRecovery, Duration::from_secs(10)).await;
        // Discovery keeps working from the latent view.
        assert_eq!(l.services_by_capability("dns").expect("query").len(), 20);
    }
}

/// SWIM over QUIC datagrams: a node that stops answering is committed offline by the leader
/// (one event), and back online when it returns — transitions only, never heartbeats.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_liveness_commits_offline_and_back_online_transitions() {
    use mycnet_spores::NodeStatus;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let root = tempfile::tempdir().expect("tempdir");
    let voters = form_quic_cluster(root.path(), 140, 0x7_0000).await;
    let leader = leader_of(&voters, Duration::from_secs(5)).await;
    let key = NodeKey::from_seed([150; 32]);
    let dir = root.path().join("l0");
    let boot = vec![voters[0].system.as_ref().expect("voter").peer().expect("peer")];
    let node = start_latent(&key, &dir, boot.clone()).await;
    let addr = node.peer().expect("peer").addr;
    voters[leader].system.as_ref().expect("leader").admit(node.announcement().expect("ann")).await.expect("admit");
    let status_on_leader = |voters: &[crate::quic::Voter]| {
        let l = leader_of_now(voters);
        l.and_then(|i| voters[i].system.as_ref()?.node(&key.node_id()).ok().flatten()).map(|r| r.status)
    };
    let committed = async |want: NodeStatus| {
        let what = format!("the leader to commit the node {want:?} (its status there)");
        wait::until(&what, Duration::from_secs(30), || status_on_leader(&voters), |st| *st == Some(want)).await;
    };
    // The voters see it up (SWIM), and it stays Active.
    wait::until(
        "the voters see the latent node up (up per voter)",
        Duration::from_secs(20),
        || {
            let up = |s: &SporeSystem| s.liveness().ok().and_then(|m| m.get(&key.node_id()).map(|st| st.up));
            voters.iter().map(|v| v.system.as_ref().and_then(up)).collect::<Vec<_>>()
        },
        |up| up.iter().all(|u| *u == Some(true)),
    )
    .await;
    assert_eq!(status_on_leader(&voters), Some(NodeStatus::Active));
    let before = voters[leader].system.as_ref().expect("leader").head().expect("head").expect("some").seq;

    // It dies: SWIM declares it down, the leader commits one offline transition.
    drop(node);
    committed(NodeStatus::Offline).await;
    // Not a wait for a condition: the assertion below is that nothing more happens in these
    // 2 s (missed heartbeats go on; no further offline event may follow).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let events = voters[leader]
        .system
        .as_ref()
        .expect("leader")
        .with_projection(|p| p.head().map(|h| h.seq))
        .expect("head")
        .expect("some");
    let offline_events = count_kind(&voters[leader], before, events, "node_went_offline").await;
    assert_eq!(offline_events, 1, "one transition, not one event per missed heartbeat");

    // It comes back on the same address: back online.
    let node = start_latent(&key, &dir, boot).await;
    assert_eq!(node.peer().expect("peer").addr.split(':').next(), addr.split(':').next());
    committed(NodeStatus::Active).await;
}

/// Waits until `l` reports `mode`.
async fn mode_becomes(l: &SporeSystem, mode: OperationalMode, timeout: Duration) {
    wait::until(&format!("{mode} (its mode)"), timeout, || l.status().map(|s| s.mode).ok(), |m| *m == Some(mode)).await;
}

fn leader_of_now(voters: &[crate::quic::Voter]) -> Option<usize> {
    voters.iter().position(|v| v.system.as_ref().is_some_and(|s| s.status().is_ok_and(|st| st.raft_state == "Leader")))
}

async fn count_kind(v: &crate::quic::Voter, from: u64, to: u64, kind: &str) -> usize {
    let s = v.system.as_ref().expect("running");
    let mut sub = s.subscribe(from).expect("subscribe");
    let mut n = 0;
    while let Ok(Some(Ok(e))) = tokio::time::timeout(Duration::from_secs(5), sub.next()).await {
        if e.event.body.kind() == kind {
            n += 1;
        }
        if e.seq >= to {
            break;
        }
    }
    n
}

/// A Rhizomorph started from a **state-only** seed (the registries at a state the chain attests
/// and the events after it, not the whole history) answers from the seed's state at once, follows the
/// chain forward by gossip and backfills the history below the seed, back to genesis, over
/// QUIC; its ledger then verifies from genesis and holds the voters' chain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_latent_node_from_a_state_only_seed_backfills_to_genesis() {
    let root = tempfile::tempdir().expect("tempdir");
    let mut voters = form_quic_cluster(root.path(), 160, 0x6_0001).await;
    let leader = leader_of(&voters, Duration::from_secs(5)).await;
    let key = NodeKey::from_seed([165; 32]);
    let dir = root.path().join("l0");
    // Admitted before the seed is taken, so the voters' registry lets it gossip.
    {
        let s = voters[leader].system.as_ref().expect("leader");
        let ann = mycnet_spores::NodeAnnouncement {
            node: key.node_id(),
            name: "l0".into(),
            role: NodeRole::Rhizomorph,
            addresses: vec![],
            capabilities: vec![],
        };
        s.admit(ann).await.expect("admit");
        for i in 0..300 {
            let dns = Endpoint { protocol: "udp".into(), address: format!("10.1.{}.{}:53", i / 200, i % 200).into() };
            s.register_service(&format!("before-{i}"), vec![dns], vec!["dns".into()], vec![]).await.expect("write");
        }
    }
    // A state-only seed starts at a state the chain attests: the leader's first anchor (within
    // its anchor interval) is a state checkpoint. Until then an export carries every event.
    let seed_path = root.path().join("state-only.seed");
    let (at, seed) =
        crate::seed_export::export_state_only(voters[leader].system.as_ref().expect("leader"), &seed_path).await;
    let mycnet_spores::seed::StateProof::AttestedAt { seq: attested, .. } = seed.proof else {
        panic!("not attested: {:?}", seed.proof)
    };
    assert!(std::fs::metadata(&seed_path).expect("seed").len() < 256 * 1024, "a state-only seed is small");
    {
        let mut l =
            mycnet_spores::Ledger::open(dir.join("ledger"), mycnet_spores::LedgerConfig::default()).expect("ledger");
        let head = mycnet_spores::seed::import(&mut l, &seed).expect("import the state-only seed");
        assert_eq!((head.seq, head.hash), (at.seq, at.hash));
        assert_eq!(l.history_from(), attested + 1, "nothing below the attested state is held yet");
    }
    let report = mycnet_spores::LedgerReader::open(&dir).expect("reader").verify(&|_| {}).expect("verify");
    assert!(report.is_ok(), "{report:?}");
    assert_eq!((report.history_from, report.events_verified), (attested + 1, at.seq - attested));

    // More writes after the seed, then the node starts with one voter to gossip with.
    for i in 0..20 {
        let s = voters[(leader + i) % 3].system.as_ref().expect("voter");
        s.register_service(&format!("after-{i}"), vec![], vec!["dns".into()], vec![]).await.expect("write");
    }
    let boot = voters[(leader + 1) % 3].system.as_ref().expect("voter").peer().expect("peer");
    let l = start_latent(&key, &dir, vec![boot]).await;
    // It answers from the seed's registries before anything arrives.
    assert!(l.services_by_capability("dns").expect("query").len() >= 300);
    let head = converged(&voters, Duration::from_secs(10)).await;
    wait::until(
        &format!("the latent node at head {} with history from genesis (history_from, head)", head.seq),
        Duration::from_secs(30),
        || l.status().ok().map(|s| (s.history_from, s.head)),
        |st| st.is_some_and(|(from, h)| from == 0 && h.is_some_and(|h| h.seq >= head.seq)),
    )
    .await;
    assert_eq!(l.services_by_capability("dns").expect("query").len(), 320);
    // The whole chain, genesis included, arrived: the node can replay it from the start.
    let from_genesis: Vec<_> = {
        let mut sub = l.subscribe(0).expect("subscribe from genesis");
        let mut out = Vec::new();
        while out.len() <= head.seq as usize {
            let ev = tokio::time::timeout(Duration::from_secs(5), sub.next())
                .await
                .expect("in time")
                .expect("open")
                .expect("event");
            out.push(ev);
        }
        out
    };
    assert_eq!(from_genesis[0].seq, 0);
    assert_eq!(from_genesis[head.seq as usize].hash, head.hash, "the voters' chain, hash for hash");
    l.shutdown().await.expect("shutdown");
    let report = mycnet_spores::LedgerReader::open(&dir).expect("reader").verify(&|_| {}).expect("verify");
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(report.history_from, 0);
    assert!(report.base.is_none(), "a complete history is verified from genesis, every rule applied");
    assert!(report.events_verified > head.seq);
    for v in voters.iter_mut() {
        if let Some(s) = v.system.take() {
            let _ = s.shutdown().await;
        }
    }
}
