//! The Primary spore: openraft over fjall, through the SporeSystem API, in-process network.

use std::time::Duration;

use mycnet_spores::{Consistency, Endpoint, LedgerReader, NodeStatus, Rejection, SporeSystem, SporeType, TrustScore};

use crate::cluster::Cluster;

/// The seed README's usage, exactly as written (plus the imports it assumes).
#[tokio::test]
async fn seed_readme_usage_works_as_written() -> Result<(), Box<dyn std::error::Error>> {
    use chrono;
    use uuid::Uuid;
    use mycnet_spores::{SporeSystem, SporeType, NetworkIdentity};

    // Initialize spore system
    let mut spore_system = SporeSystem::new();
    let network_identity = NetworkIdentity {
        network_id: Uuid::new_v4(),
        network_name: "my-network".to_string(),
        genesis_timestamp: chrono::Utc::now(),
    };

    spore_system.initialize(network_identity).await?;

    // What a user relies on afterwards: a one-voter network that is the leader and serves writes.
    let status = spore_system.status()?;
    assert_eq!(status.raft_state, "Leader");
    assert_eq!(status.spore_type, SporeType::Primary);
    assert_eq!(status.head.map(|h| h.seq), Some(0));
    let id = spore_system.register_service("object-store", vec![], vec!["storage".into()], vec![]).await?;
    assert_eq!(spore_system.services_by_name("object-store")?[0].service.service_id, id);
    spore_system.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_voters_replicate_and_forward_writes() {
    let c = Cluster::form(3, 11).await;
    let leader = c.leader(Duration::from_secs(5)).await.expect("a leader");
    let follower = (leader + 1) % 3;
    // A write through a follower is forwarded to the leader.
    let sid = c
        .sys(follower)
        .register_service("dns", vec![Endpoint { protocol: "udp".into(), address: "127.0.0.1:53".into() }], vec!["dns".into()], vec![])
        .await
        .expect("forwarded write");
    let head = c.converged_head(Duration::from_secs(5)).await.expect("converged");
    for i in 0..3 {
        let s = c.sys(i);
        assert_eq!(s.head().expect("head"), Some(head));
        assert_eq!(s.services_by_capability("dns").expect("q").len(), 1);
        assert_eq!(s.nodes().expect("nodes").len(), 3);
    }
    // Linearizable read on a follower sees the write.
    let n = c.sys(follower).query(Consistency::Linearizable, |p| p.service(&sid).is_some()).await.expect("read");
    assert!(n);
    let st = c.sys(leader).status().expect("status");
    assert_eq!(st.voters.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_through_the_api_is_rejected_and_changes_nothing() {
    let c = Cluster::form(3, 12).await;
    let s = c.sys(0);
    let before = s.head().expect("head");
    // Trust score out of range.
    let other = c.sys(1).node_id().expect("id");
    let err = s.set_trust(other, TrustScore(5000), "x").await.expect_err("out of range");
    assert!(matches!(err.rejection(), Some(Rejection::TrustOutOfRange(5000))), "{err}");
    // Oversize field.
    let caps: Vec<String> = (0..100).map(|i| format!("c{i}")).collect();
    let err = s.announce(vec![], caps).await;
    // Addresses change commits, the capability change is rejected.
    assert!(matches!(err.as_ref().err().and_then(|e| e.rejection()), Some(Rejection::LimitExceeded { .. })), "{err:?}");
    // A forged signature and another network's event.
    let fp = s.status().expect("status").fingerprint.expect("fp");
    let key = mycnet_spores::NodeKey::from_seed([1; 32]);
    let mut forged = mycnet_spores::SignedEvent::sign(&key, fp, mycnet_spores::Timestamp::now(),
        mycnet_spores::EventBody::NodeBackOnline { node: key.node_id() });
    forged.signature.0[0] ^= 1;
    let err = s.submit(forged).await.expect_err("forged");
    assert!(matches!(err.rejection(), Some(Rejection::BadSignature(_)) | Some(Rejection::InvalidTransition { .. })), "{err}");
    let foreign = mycnet_spores::SignedEvent::sign(&key, mycnet_spores::NetworkFingerprint([9; 32]), mycnet_spores::Timestamp::now(),
        mycnet_spores::EventBody::NodeBackOnline { node: key.node_id() });
    let err = s.submit(foreign).await.expect_err("foreign");
    assert!(matches!(err.rejection(), Some(Rejection::WrongNetwork { .. })), "{err}");
    // Unknown author.
    let stranger = mycnet_spores::NodeKey::from_seed([77; 32]);
    let ev = mycnet_spores::SignedEvent::sign(&stranger, fp, mycnet_spores::Timestamp::now(),
        mycnet_spores::EventBody::NodeBackOnline { node: stranger.node_id() });
    let err = s.submit(ev).await.expect_err("stranger");
    assert!(matches!(err.rejection(), Some(Rejection::UnknownAuthor(_))), "{err}");
    let after = c.converged_head(Duration::from_secs(5)).await.expect("converged");
    // Only the address change was applied.
    assert_eq!(after.seq, before.expect("head").seq + 1);
    let _ = NodeStatus::Active;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_crash_elects_a_new_leader_and_the_old_one_catches_up() {
    let mut c = Cluster::form(3, 13).await;
    let leader = c.leader(Duration::from_secs(5)).await.expect("leader");
    c.crash(leader).await;
    let survivor = (leader + 1) % 3;
    c.sys(survivor).register_service("kv", vec![], vec![], vec![]).await.expect("write after crash");
    let new_leader = c.leader(Duration::from_secs(5)).await.expect("new leader");
    assert_ne!(new_leader, leader);
    c.restart(leader).await;
    let head = c.converged_head(Duration::from_secs(10)).await.expect("converged after restart");
    assert_eq!(c.sys(leader).services_by_name("kv").expect("q").len(), 1);
    // The restarted node's ledger verifies from genesis.
    let dir = c.members[leader].dir.clone();
    c.crash(leader).await;
    let report = LedgerReader::open(&dir).expect("open").verify(&|_| {}).expect("verify");
    assert!(report.is_ok(), "{:?}", report.first_error);
    assert_eq!(report.recorded_head.map(|h| h.0), Some(head.seq));
    let _ = SporeType::Primary;
    let _ = SporeSystem::new();
}
