//! The Primary spore: openraft over fjall, through the SporeSystem API, in-process network.

use std::time::Duration;

use mycnet_spores::{Consistency, Endpoint, LedgerReader, NodeStatus, Rejection, SporeSystem, SporeType, TrustScore};
use openraft::async_runtime::WatchReceiver;

use crate::cluster::Cluster;

/// The seed README's usage, exactly as written (plus the imports it assumes).
#[tokio::test]
async fn seed_readme_usage_works_as_written() -> Result<(), Box<dyn std::error::Error>> {
    use chrono;
    use uuid::Uuid;
    // README example: seed usage
    #[rustfmt::skip] // the seed README's order
    use mycnet_spores::{SporeSystem, SporeType, NetworkIdentity};

    // Initialize spore system
    #[allow(unused_mut)] // as the seed README writes it (every method takes &self)
    let mut spore_system = SporeSystem::new();
    let network_identity = NetworkIdentity {
        network_id: Uuid::new_v4(),
        network_name: "my-network".to_string(),
        genesis_timestamp: chrono::Utc::now(),
    };

    spore_system.initialize(network_identity).await?;
    // README example end

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

/// Group commit: writers at once share Raft entries (far fewer entries than writes), while a
/// writer alone, whose writes the proposer has nothing to pack with, gets each one committed
/// and applied by the time it returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_share_raft_entries_and_a_lone_writer_commits_each_write() {
    let c = Cluster::form(3, 12).await;
    let leader = c.leader(Duration::from_secs(5)).await.expect("a leader");
    let sys = c.handle(leader).expect("leader running");
    let raft = sys.raft().expect("raft");
    let last_index = || raft.metrics().borrow_watched().last_log_index.unwrap_or(0);
    let start = last_index();
    for i in 0..20 {
        let id = sys.register_service(&format!("lone-{i}"), vec![], vec![], vec![]).await.expect("write");
        let found = sys.services_by_name(&format!("lone-{i}")).expect("read");
        assert_eq!(found.iter().map(|r| r.service.service_id).collect::<Vec<_>>(), vec![id], "applied on return");
    }
    let lone = last_index() - start;
    assert!(lone >= 20, "each lone write is an entry of its own: {lone} entries for 20 writes");

    let (writers, each) = (64, 8);
    let before = last_index();
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let s = sys.clone();
            tokio::spawn(async move {
                for k in 0..each {
                    s.register_service(&format!("w{w}-{k}"), vec![], vec![], vec![]).await.expect("write");
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("writer");
    }
    let entries = last_index() - before;
    let writes = (writers * each) as u64;
    // Entries besides the writes' (a state checkpoint, a heartbeat blank) are few.
    assert!(entries * 4 <= writes, "{writes} concurrent writes took {entries} Raft entries");
    assert_eq!(sys.with_projection(|p| p.services().count()).expect("read"), 20 + writers * each);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_voters_replicate_and_forward_writes() {
    let c = Cluster::form(3, 11).await;
    let leader = c.leader(Duration::from_secs(5)).await.expect("a leader");
    let follower = (leader + 1) % 3;
    // A write through a follower is forwarded to the leader.
    let sid = c
        .sys(follower)
        .register_service(
            "dns",
            vec![Endpoint { protocol: "udp".into(), address: "127.0.0.1:53".into() }],
            vec!["dns".into()],
            vec![],
        )
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
    // A forged signature: node 1 renaming itself, which its rules allow, with one bit of the
    // signature flipped. Everything but the signature is valid, so only the signature check
    // can refuse it.
    let fp = s.status().expect("status").fingerprint.expect("fp");
    let author = c.members[1].key.clone();
    let mut forged = mycnet_spores::SignedEvent::sign(
        &author,
        fp,
        mycnet_spores::Timestamp::now(),
        mycnet_spores::EventBody::NodeUpdated { node: other, name: Some("forged-name".into()), role: None },
    );
    forged.signature.0[0] ^= 1;
    let rules = s.query(mycnet_spores::Consistency::Stale, |p| p.check(&forged)).await.expect("query");
    assert_eq!(rules, Ok(()), "the forged event breaks no rule: only its signature is wrong");
    let err = s.submit(forged).await.expect_err("forged");
    assert_eq!(err.rejection(), Some(&Rejection::BadSignature(other)), "{err}");
    assert_ne!(
        c.sys(1).node(&other).expect("query").expect("registered").name,
        "forged-name",
        "the forged rename changed nothing"
    );
    // Another network's event.
    let key = mycnet_spores::NodeKey::from_seed([1; 32]);
    let foreign = mycnet_spores::SignedEvent::sign(
        &key,
        mycnet_spores::NetworkFingerprint([9; 32]),
        mycnet_spores::Timestamp::now(),
        mycnet_spores::EventBody::NodeBackOnline { node: key.node_id() },
    );
    let err = s.submit(foreign).await.expect_err("foreign");
    assert!(matches!(err.rejection(), Some(Rejection::WrongNetwork { .. })), "{err}");
    // Unknown author.
    let stranger = mycnet_spores::NodeKey::from_seed([77; 32]);
    let ev = mycnet_spores::SignedEvent::sign(
        &stranger,
        fp,
        mycnet_spores::Timestamp::now(),
        mycnet_spores::EventBody::NodeBackOnline { node: stranger.node_id() },
    );
    let err = s.submit(ev).await.expect_err("stranger");
    assert!(matches!(err.rejection(), Some(Rejection::UnknownAuthor(_))), "{err}");
    // An oversize event (a 70 kB name) is refused by size, whatever its fields.
    let big = mycnet_spores::SignedEvent::sign(
        &key,
        fp,
        mycnet_spores::Timestamp::now(),
        mycnet_spores::EventBody::NodeUpdated { node: key.node_id(), name: Some("x".repeat(70_000)), role: None },
    );
    let err = s.submit(big).await.expect_err("oversize");
    assert!(matches!(err.rejection(), Some(Rejection::LimitExceeded { what, .. }) if what == "event"), "{err}");
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
    // At least the converged head (the leader may have committed an anchor on top since).
    assert!(report.recorded_head.is_some_and(|h| h.0 >= head.seq), "{:?}", report.recorded_head);
    let _ = SporeType::Primary;
    let _ = SporeSystem::new();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_joins_as_learner_then_voter_and_leaves() {
    use mycnet_spores::{NodeKey, NodeRole};
    let c = Cluster::form(3, 14).await;
    let root = tempfile::tempdir().expect("tempdir");
    let key = NodeKey::from_seed([40; 32]);
    let newcomer = SporeSystem::builder()
        .data_dir(root.path().join("n3"))
        .key(key.clone())
        .addr("n3")
        .role(NodeRole::Sclerotium)
        .inproc(&c.net)
        .timeouts(crate::cluster::fast_timeouts())
        .build();
    newcomer.start().await.expect("start");
    let via = c.sys(1).peer().expect("peer");
    // Not admitted yet: the membership change is refused.
    let err = newcomer.join(via.clone(), false).await.expect_err("unadmitted join");
    assert!(matches!(err, mycnet_spores::Error::NotAdmitted { .. }), "{err:?}");
    assert!(err.to_string().contains("not admitted"), "{err}");
    c.sys(0).admit(newcomer.announcement().expect("ann")).await.expect("admit");
    newcomer.join(via.clone(), false).await.expect("join as learner");
    let st = c.sys(0).status().expect("status");
    assert!(st.learners.contains(&key.node_id()), "{st:?}");
    newcomer.join(via, true).await.expect("promote to voter");
    let st = c.sys(0).status().expect("status");
    assert!(st.voters.contains(&key.node_id()) && st.voters.len() == 4, "{st:?}");
    // It replicates the chain and serves queries.
    let head = c.converged_head(Duration::from_secs(5)).await.expect("converged");
    crate::wait::head_is("the newcomer", &newcomer, head, Duration::from_secs(5)).await;
    assert_eq!(newcomer.nodes().expect("nodes").len(), 4);
    // Leaving commits NodeLeft and removes it from the membership.
    newcomer.leave("maintenance").await.expect("leave");
    let st = c.sys(0).status().expect("status");
    assert!(!st.voters.contains(&key.node_id()) && !st.learners.contains(&key.node_id()), "{st:?}");
    assert_eq!(c.sys(0).node(&key.node_id()).expect("q").map(|n| n.status), Some(NodeStatus::Left));
}

/// A node started from its config with `join` before an authority admitted it keeps asking
/// (the member's refusal is `Error::NotAdmitted`, which `start_node` retries) and joins once
/// it is admitted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_join_waits_for_the_admission() {
    use mycnet_spores::net::inproc::InProcNetwork;
    use mycnet_spores::node::{self, JoinConfig, NodeConfig};
    use mycnet_spores::store::keyfile;
    use mycnet_spores::{NetworkIdentity, NodeAnnouncement, NodeKey, NodeRole};
    let root = tempfile::tempdir().expect("tempdir");
    let net = InProcNetwork::new(15);
    let founder_key = NodeKey::from_seed([42; 32]);
    let founder = SporeSystem::builder()
        .data_dir(root.path().join("founder"))
        .key(founder_key.clone())
        .addr("127.0.0.1:7001")
        .inproc(&net)
        .timeouts(crate::cluster::fast_timeouts())
        .build();
    let identity = NetworkIdentity {
        network_id: uuid::Uuid::from_u128(15),
        network_name: "configured-join".into(),
        genesis_timestamp: chrono::Utc::now(),
    };
    founder.initialize(identity).await.expect("initialize");

    let dir = root.path().join("joiner");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let key = NodeKey::from_seed([41; 32]);
    keyfile::save(&dir.join(keyfile::KEY_FILE_NAME), &key).expect("key file");
    let config = NodeConfig {
        data_dir: dir,
        listen: "127.0.0.1:7002".into(),
        advertise: None,
        name: None,
        role: node::RoleConfig::Voter,
        capabilities: vec![],
        addresses: vec![],
        init: None,
        join: Some(JoinConfig {
            via_addr: "127.0.0.1:7001".into(),
            via_key: founder_key.node_id().to_hex(),
            as_voter: false,
            trust_seed: None,
        }),
        peers: vec![],
        from_seed: None,
        seed_quorum: false,
        write_timeout_ms: Some(2000),
        timeouts: node::TimeoutProfile::Lan,
        ..Default::default()
    };
    let backend = std::sync::Arc::new(net.clone()) as std::sync::Arc<dyn mycnet_spores::net::NetworkBackend>;
    let started = tokio::spawn(async move { node::start_node(&config, Some(backend)).await });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!started.is_finished(), "the join is retried while the node is not admitted");
    let announcement = NodeAnnouncement {
        node: key.node_id(),
        name: "joiner".into(),
        role: NodeRole::Sclerotium,
        addresses: vec!["127.0.0.1:7002".into()],
        capabilities: vec![],
    };
    founder.admit(announcement).await.expect("admit");
    let joiner = tokio::time::timeout(Duration::from_secs(30), started)
        .await
        .expect("joins once admitted")
        .expect("task")
        .expect("start_node");
    let st = founder.status().expect("status");
    assert!(st.learners.contains(&key.node_id()), "{st:?}");
    joiner.shutdown().await.expect("shutdown joiner");
    founder.shutdown().await.expect("shutdown founder");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_resumes_after_restart_without_gaps_or_duplicates() {
    let mut c = Cluster::form(3, 15).await;
    let mut sub = c.sys(2).subscribe(0).expect("subscribe");
    for _ in 0..20 {
        c.sys(0).register_service("sub", vec![], vec![], vec![]).await.expect("write");
    }
    let head = c.converged_head(Duration::from_secs(5)).await.expect("converged");
    let mut seen = Vec::new();
    while seen.last().copied() != Some(head.seq) {
        let ev = tokio::time::timeout(Duration::from_secs(5), sub.next())
            .await
            .expect("in time")
            .expect("open")
            .expect("ok");
        seen.push(ev.seq);
    }
    assert_eq!(seen, (0..=head.seq).collect::<Vec<_>>());
    // Restart the subscriber's node; resume from the next seq while writes continue.
    drop(sub);
    c.crash(2).await;
    for _ in 0..10 {
        c.sys(0).register_service("sub", vec![], vec![], vec![]).await.expect("write while down");
    }
    c.restart(2).await;
    let mut sub = c.sys(2).subscribe(head.seq + 1).expect("resubscribe");
    for _ in 0..5 {
        c.sys(1).register_service("sub", vec![], vec![], vec![]).await.expect("write after restart");
    }
    let head2 = c.converged_head(Duration::from_secs(10)).await.expect("converged again");
    let mut resumed = Vec::new();
    while resumed.last().copied() != Some(head2.seq) {
        let ev = tokio::time::timeout(Duration::from_secs(5), sub.next())
            .await
            .expect("in time")
            .expect("open")
            .expect("ok");
        resumed.push(ev.seq);
    }
    assert_eq!(resumed, (head.seq + 1..=head2.seq).collect::<Vec<_>>());
    // The restarted node resumed with the same state as the others.
    let a = c.sys(2).with_projection(|p| p.state().clone()).expect("state");
    let b = c.sys(0).with_projection(|p| p.state().clone()).expect("state");
    assert_eq!(a, b);
}

/// A subscriber that stops reading (its channel full, the feeding task blocked on it) does
/// not keep the ledger's database open: shutdown still releases it at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unread_subscription_does_not_hold_the_ledger_past_shutdown() {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path().join("n");
    let s = SporeSystem::builder()
        .data_dir(&dir)
        .addr("n")
        .inproc(&mycnet_spores::net::inproc::InProcNetwork::new(0x5b5))
        .build();
    s.start().await.expect("start");
    let identity = mycnet_spores::NetworkIdentity {
        network_id: uuid::Uuid::from_u128(0x5b5),
        network_name: "unread".into(),
        genesis_timestamp: chrono::Utc::now(),
    };
    s.initialize(identity).await.expect("initialize");
    let s = std::sync::Arc::new(s);
    // More events than a subscription buffers (1 024), written by concurrent clients.
    let mut writers = tokio::task::JoinSet::new();
    for w in 0..16 {
        let s = s.clone();
        writers.spawn(async move {
            for i in 0..70 {
                s.register_service(&format!("svc-{w}-{i}"), vec![], vec![], vec![]).await.expect("write");
            }
        });
    }
    while let Some(r) = writers.join_next().await {
        r.expect("writer");
    }
    let unread = s.subscribe(0).expect("subscribe");
    // Part of the scenario, not a wait for a condition: time for its task to fill the channel
    // and block on it (nothing shows that from here); the shutdown must not hang either way.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let s = std::sync::Arc::try_unwrap(s).ok().expect("the only handle");
    s.shutdown().await.expect("shutdown releases the ledger though a subscription is unread");
    let reopened = mycnet_spores::Ledger::open(
        dir.join("ledger"),
        mycnet_spores::LedgerConfig { create: false, ..Default::default() },
    )
    .expect("the data dir opens again");
    assert!(reopened.head().is_some_and(|h| h.seq >= 1120));
    drop(unread);
}

#[tokio::test]
async fn writes_fail_with_no_leader_after_a_bounded_time() {
    let mut t = crate::cluster::fast_timeouts();
    t.write = Duration::from_millis(800);
    let mut c = Cluster::form_with(3, 16, t).await;
    let leader = c.leader(Duration::from_secs(5)).await.expect("leader");
    let others: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    c.crash(others[0]).await;
    c.crash(others[1]).await;
    let started = std::time::Instant::now();
    let err = c.sys(leader).register_service("x", vec![], vec![], vec![]).await.expect_err("no quorum");
    assert!(matches!(err, mycnet_spores::Error::NoLeader { .. }), "{err}");
    assert!(started.elapsed() < Duration::from_secs(3), "bounded: {:?}", started.elapsed());
    // Queries still answer from the local view.
    assert_eq!(c.sys(leader).nodes().expect("nodes").len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_queries_are_served_over_the_transport() {
    use mycnet_spores::net::Transport;
    use mycnet_spores::raft::{RpcRequest, RpcResponse};
    use mycnet_spores::wire::query::{Query, QueryAnswer};
    let c = Cluster::form(3, 17).await;
    c.sys(0).register_service("web", vec![], vec!["http".into()], vec![]).await.expect("write");
    c.converged_head(Duration::from_secs(5)).await.expect("converged");
    let t = c.net.transport("n0");
    let peer = c.sys(2).peer().expect("peer");
    match t.call(&peer, RpcRequest::Status, Duration::from_secs(1)).await.expect("call") {
        RpcResponse::Status(Ok(st)) => {
            assert_eq!(st.node, peer.node);
            assert_eq!(st.voters.len(), 3);
            assert!(st.leader.is_some());
        }
        other => panic!("unexpected {other:?}"),
    }
    match t
        .call(&peer, RpcRequest::Query(Query::ServicesByCapability("http".into())), Duration::from_secs(1))
        .await
        .expect("call")
    {
        RpcResponse::Query(Ok(QueryAnswer::Services(s))) => assert_eq!(s.len(), 1),
        other => panic!("unexpected {other:?}"),
    }
}

/// An authority that attests a wrong state: every replica applies the event (the chain is the
/// ground truth), finds that a replay of the chain does not reach the attested state, reports a
/// state divergence in its status and takes no writes until an operator clears it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_state_attestation_is_a_divergence_every_replica_reports_and_writes_stop() {
    let c = Cluster::form(3, 0x19).await;
    let leader = c.leader(Duration::from_secs(10)).await.expect("leader");
    c.sys(leader).register_service("kv", vec![], vec![], vec![]).await.expect("write");
    let head = c.converged_head(Duration::from_secs(10)).await.expect("converged");
    let fp = c.sys(0).with_projection(|p| p.fingerprint()).expect("projection").expect("formed");
    let mut wrong = c.sys(0).with_projection(|p| p.state_digest()).expect("projection");
    wrong.0[31] ^= 0x80;
    let body =
        mycnet_spores::EventBody::StateCheckpoint { head_seq: head.seq, head_hash: head.hash, state_digest: wrong };
    let ev =
        mycnet_spores::SignedEvent::sign(&c.members[0].key, fp, mycnet_spores::Timestamp(head.timestamp.0 + 1), body);
    let point = c.sys(leader).submit(ev).await.expect("the attestation is committed: it is not a rule");
    assert_eq!(point.seq, head.seq + 1);
    for i in 0..3 {
        let d = crate::wait::some(&format!("replica {i} to report the divergence"), Duration::from_secs(10), || {
            c.sys(i).status().expect("status").state_divergence
        })
        .await;
        assert_eq!((d.seq, d.attested), (head.seq + 1, wrong), "replica {i}");
        let refused = c.sys(i).register_service("after", vec![], vec![], vec![]).await;
        assert!(
            matches!(refused, Err(mycnet_spores::Error::StateDivergence(_))),
            "replica {i} took a write: {refused:?}"
        );
    }
    // An operator acknowledges it on every node: writes are taken again.
    for i in 0..3 {
        assert!(c.sys(i).clear_state_divergence().expect("clear").is_some());
    }
    c.sys(leader).register_service("after", vec![], vec![], vec![]).await.expect("writes resume");
}

/// Submits are idempotent: the same signed event submitted again (a retry whose answer was
/// lost) answers where it committed and is not committed twice — sequentially, concurrently,
/// through a follower and after the leader restarted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resubmitting_a_committed_signed_event_answers_where_it_committed() {
    use mycnet_spores::{EventBody, ServiceAnnouncement, SignedEvent, Timestamp};
    let mut c = Cluster::form(3, 0x17).await;
    let leader = c.leader(Duration::from_secs(10)).await.expect("leader");
    let follower = (leader + 1) % 3;
    let key = c.members[0].key.clone();
    let fp = c.sys(0).with_projection(|p| p.fingerprint()).expect("projection").expect("formed");
    let service = SignedEvent::sign(
        &key,
        fp,
        Timestamp::now(),
        EventBody::ServiceRegistered(ServiceAnnouncement {
            service_id: uuid::Uuid::from_u128(0x1de),
            name: "retry".into(),
            node: key.node_id(),
            capabilities: vec![].into(),
            endpoints: vec![Endpoint { protocol: "tcp".into(), address: "127.0.0.1:1".into() }].into(),
            metadata: vec![].into(),
        }),
    );
    // Would be a second, valid event if committed again.
    let caps = SignedEvent::sign(
        &key,
        fp,
        Timestamp::now(),
        EventBody::CapabilitiesChanged { node: key.node_id(), capabilities: vec!["retried".into()] },
    );

    let first = c.sys(leader).submit(service.clone()).await.expect("first submit");
    assert_eq!(
        c.sys(leader).submit(service.clone()).await.expect("retry"),
        first,
        "a retry answers where it committed (not ServiceExists)"
    );
    assert_eq!(c.sys(follower).submit(service.clone()).await.expect("retry via a follower"), first);

    // The same event twice at once: one commit, one answer for both.
    let (a, b) = (c.handle(leader).expect("leader"), c.handle(follower).expect("follower"));
    let (e1, e2) = (caps.clone(), caps.clone());
    let (r1, r2) = tokio::join!(async move { a.submit(e1).await }, async move { b.submit(e2).await });
    let (p1, p2) = (r1.expect("first"), r2.expect("second"));
    assert_eq!(p1, p2, "both writers get the one commit");
    c.converged_head(Duration::from_secs(10)).await.expect("converged");

    // After the leader restarts, the window is rebuilt from its records.
    c.crash(leader).await;
    c.restart(leader).await;
    c.converged_head(Duration::from_secs(10)).await.expect("converged after restart");
    assert_eq!(c.sys(leader).submit(service.clone()).await.expect("retry after restart"), first);
    assert_eq!(c.sys(leader).submit(caps.clone()).await.expect("retry after restart"), p1);
    // Each event is in the chain exactly once (anchors may have been committed meanwhile).
    let head = c.sys(leader).head().expect("head").expect("head").seq;
    let mut sub = c.sys(leader).subscribe(first.seq).expect("subscribe");
    let (mut services, mut changes) = (0, 0);
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(10), sub.next())
            .await
            .expect("events flow")
            .expect("open")
            .expect("event");
        services += usize::from(ev.event == service);
        changes += usize::from(ev.event == caps);
        if ev.seq >= head {
            break;
        }
    }
    assert_eq!((services, changes), (1, 1), "every retried event committed exactly once");
}
