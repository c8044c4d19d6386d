//! Seed export from a running node while writes continue.

use std::time::Duration;

use mycnet_spores::seed::{self, VerifyPolicy};
use mycnet_spores::Projection;

use crate::cluster::Cluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_seed_is_consistent_at_a_committed_head_while_writes_continue() {
    let cluster = Cluster::form(3, 41).await;
    let leader = cluster.leader(Duration::from_secs(5)).await.expect("leader");
    let writer = cluster.handle(leader).expect("running");
    let writes = tokio::spawn(async move {
        for i in 0..300 {
            writer.register_service(&format!("svc-{i}"), vec![], vec!["cap".into()], vec![]).await.expect("write");
        }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("backup.seed");
    let follower = (leader + 1) % 3;
    let head = cluster.sys(follower).export_seed(&path, true).await.expect("export while writing");
    writes.await.expect("writer");

    // The file verifies offline, at the head it reported, and only the final name exists.
    let s = seed::read_file(&path, VerifyPolicy::default()).expect("verifies");
    assert_eq!((s.header.head_seq, s.header.head_hash), (head.seq, head.hash));
    assert_eq!(s.signers, vec![cluster.sys(follower).node_id().expect("id")]);
    assert_eq!(std::fs::read_dir(dir.path()).expect("ls").count(), 1, "no temporary file left behind");
    // Its events replay exactly to its state, and that head is on the chain the cluster kept.
    let mut p = Projection::new();
    for e in &s.events {
        p.apply(e).expect("replays");
    }
    assert_eq!(p.state(), &s.state);
    let final_head = cluster.converged_head(Duration::from_secs(10)).await.expect("converged");
    assert!(final_head.seq > head.seq, "writes went on after the export");
    let mut sub = cluster.sys(leader).subscribe(head.seq).expect("subscribe");
    let at_head = sub.next().await.expect("an event").expect("readable");
    assert_eq!((at_head.seq, at_head.hash), (head.seq, head.hash), "the seed's head is on the leader's chain");

    // A flipped byte or a cut file is refused with a reason, and nothing is returned.
    let bytes = std::fs::read(&path).expect("read");
    let mut flipped = bytes.clone();
    flipped[bytes.len() / 2] ^= 1;
    assert!(seed::verify(&flipped, VerifyPolicy::default()).is_err());
    assert!(seed::verify(&bytes[..bytes.len() - 10], VerifyPolicy::default()).is_err());
    // One signer of three voters is not a quorum.
    assert!(matches!(
        seed::verify(&bytes, VerifyPolicy { require_quorum: true, expected_network: None }),
        Err(seed::SeedError::UnderSigned { got: 1, voters: 3, needed: 2 })
    ));
}
