//! Operating the membership over QUIC, as an embedder does it: a voter lost for good is
//! removed and replaced, and the refusals (the last voter, a key that may not, an unknown
//! node) change nothing.

use std::path::Path;
use std::time::Duration;

use mycnet_spores::node::Place;
use mycnet_spores::wire::rpc::MembershipRefusal;
use mycnet_spores::{Error, LedgerReader, NodeId, NodeRole, NodeStatus, SporeSystem};

use crate::wait;

const T: Duration = Duration::from_secs(20);

/// A node on its own QUIC endpoint on loopback (a free port).
fn node(root: &Path, name: &str, role: NodeRole) -> SporeSystem {
    SporeSystem::builder().data_dir(root.join(name)).addr("127.0.0.1:0").name(name).role(role).build()
}

/// `joiner` admitted by `founder` and joined through it.
async fn join(founder: &SporeSystem, joiner: &SporeSystem, voter: bool) {
    joiner.start().await.expect("start");
    founder.admit(joiner.announcement().expect("announcement")).await.expect("admit");
    joiner.join(founder.peer().expect("peer"), voter).await.expect("join");
    let head = founder.head().expect("head").map_or(0, |h| h.seq);
    let held = || joiner.head().ok().flatten().map(|h| h.seq);
    wait::until("the joiner holds the chain", T, held, |h| h.is_some_and(|s| s >= head)).await;
}

fn voters(s: &SporeSystem) -> Vec<NodeId> {
    let mut v = s.status().expect("status").voters;
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_voter_is_removed_and_replaced_and_refusals_change_nothing() {
    let root = tempfile::tempdir().expect("tempdir");
    let a = node(root.path(), "a", NodeRole::Sclerotium);
    a.initialize(crate::cluster::identity("members")).await.expect("initialize");
    let b = node(root.path(), "b", NodeRole::Sclerotium);
    let c = node(root.path(), "c", NodeRole::Sclerotium);
    join(&a, &b, true).await;
    join(&a, &c, true).await;
    let (a_id, b_id, c_id) = (a.node_id().expect("id"), b.node_id().expect("id"), c.node_id().expect("id"));
    assert_eq!(voters(&a).len(), 3);
    c.register_service("on-c", vec![], vec![], vec![]).await.expect("c writes");

    // c's host is gone for good: stopped, its data dir deleted.
    c.shutdown().await.expect("shutdown c");
    drop(c);
    std::fs::remove_dir_all(root.path().join("c")).expect("delete c");

    // Unknown nodes are refused before anything is asked of the leader.
    let unknown = NodeId([9; 32]);
    let err = a.remove_member(unknown, "typo").await.expect_err("unknown");
    assert!(matches!(err, Error::Membership(MembershipRefusal::NotAMember { node }) if node == unknown), "{err:?}");

    // The operator (an authority) removes c: out of the membership, recorded as left, its
    // services gone.
    a.remove_member(c_id, "host gone").await.expect("remove c");
    wait::until("c out of the voters on b", T, || voters(&b), |v| !v.contains(&c_id)).await;
    assert_eq!(a.node(&c_id).expect("query").map(|n| n.status), Some(NodeStatus::Left));
    assert!(a.services_by_name("on-c").expect("query").is_empty());

    // A new third voter, and writes through every voter.
    let d = node(root.path(), "d", NodeRole::Sclerotium);
    join(&a, &d, true).await;
    let d_id = d.node_id().expect("id");
    let mut want = vec![a_id, b_id, d_id];
    want.sort();
    wait::until("a, b and d the voters on d", T, || voters(&d), |v| v == &want).await;
    for (s, name) in [(&a, "on-a"), (&b, "on-b"), (&d, "on-d")] {
        s.register_service(name, vec![], vec![], vec![]).await.expect("write after the replacement");
    }

    // A node that is no authority may not remove a voter, even joined as a learner.
    let e = node(root.path(), "e", NodeRole::Rhizomorph);
    join(&a, &e, false).await;
    let err = e.remove_member(a_id, "coup").await.expect_err("not an authority");
    assert!(matches!(err, Error::Membership(MembershipRefusal::NotAuthorized { .. })), "{err:?}");
    let err = a.promote(e.node_id().expect("id")).await.expect_err("a Rhizomorph cannot vote");
    assert!(matches!(err, Error::Membership(MembershipRefusal::NotAnAuthority { .. })), "{err:?}");
    assert_eq!(voters(&a), want, "nothing changed");

    // Demote and promote; the last voter can be neither demoted nor removed.
    a.demote(d_id).await.expect("demote d");
    a.demote(b_id).await.expect("demote b");
    wait::until("a the only voter", T, || voters(&a), |v| v == &vec![a_id]).await;
    let err = b.demote(a_id).await.expect_err("last voter");
    assert!(matches!(err, Error::Membership(MembershipRefusal::LastVoter { .. })), "{err:?}");
    let err = a.remove_member(a_id, "bye").await.expect_err("last voter");
    assert!(matches!(err, Error::Membership(MembershipRefusal::LastVoter { .. })), "{err:?}");
    assert_eq!(a.node(&a_id).expect("query").map(|n| n.status), Some(NodeStatus::Active), "nothing recorded");
    a.promote(b_id).await.expect("promote b");
    a.promote(d_id).await.expect("promote d");
    wait::until("three voters again", T, || voters(&a), |v| v == &want).await;
    d.register_service("after-promote", vec![], vec![], vec![]).await.expect("write");

    // Every ledger verifies from genesis, and holds what every voter wrote.
    let head = a.head().expect("head").expect("a head");
    let members = a.members().expect("members");
    let listed: Vec<(NodeId, bool)> = members.iter().map(|m| (m.node, m.place == Place::Voter)).collect();
    assert!(
        !listed.iter().any(|(n, _)| *n == c_id),
        "a node that left and is out of Raft is not a member: {members:?}"
    );
    assert_eq!(listed.iter().filter(|(_, voter)| *voter).count(), 3, "{members:?}");
    assert!(listed.contains(&(e.node_id().expect("id"), false)), "{members:?}");
    for (s, name) in [(&b, "b"), (&d, "d"), (&e, "e")] {
        wait::until(
            &format!("{name} at the head"),
            T,
            || s.head().ok().flatten(),
            |h| h.as_ref().is_some_and(|h| h.seq >= head.seq),
        )
        .await;
    }
    for (s, name) in [(a, "a"), (b, "b"), (d, "d"), (e, "e")] {
        s.shutdown().await.expect("shutdown");
        let reader = LedgerReader::open(&root.path().join(name).join("ledger")).expect("open");
        let report = reader.verify(&|_| {}).expect("verify");
        assert!(report.is_ok(), "{name}: {:?}", report.first_error);
    }
}
