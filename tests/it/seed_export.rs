//! Seed export from a running node while writes continue.

use std::time::Duration;

use mycnet_spores::seed::{self, VerifyPolicy};
use mycnet_spores::{EventBody, Projection};

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
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("backup.seed");
    let follower = (leader + 1) % 3;
    // The export starts once the writes are under way on the follower, not after a guess.
    crate::wait::some("the first writes on the follower", Duration::from_secs(10), || {
        (cluster.sys(follower).services_by_capability("cap").ok()?.len() >= 10).then_some(())
    })
    .await;
    let head = cluster.sys(follower).export_seed(&path, true).await.expect("export while writing");
    let writing = !writes.is_finished();
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
    // It was taken while the writes went on: some of them are in it, the rest came after.
    let in_seed = s.state.services.len();
    assert!(
        writing && (10..300).contains(&in_seed),
        "exported mid-write: {in_seed} of 300 services in the seed, writer running: {writing}"
    );
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

/// A network formed again from a seed on new data dirs: the same network, registry and head,
/// the seed's voters as its voters, and new events extending the seed's chain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_network_forms_from_a_seed_and_extends_its_chain() {
    use mycnet_spores::net::inproc::InProcNetwork;
    use mycnet_spores::{NodeKey, SporeSystem};

    let mut old = Cluster::form(3, 43).await;
    let leader = old.leader(Duration::from_secs(5)).await.expect("leader");
    for i in 0..20 {
        old.sys(leader).register_service(&format!("svc-{i}"), vec![], vec!["cap".into()], vec![]).await.expect("write");
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let full = dir.path().join("full.seed");
    let bare = dir.path().join("bare.seed");
    let seed_head = old.sys(leader).export_seed(&full, true).await.expect("export");
    export_state_only(old.sys(leader), &bare).await;
    let fingerprint = old.sys(leader).status().expect("status").fingerprint;
    let keys: Vec<NodeKey> = old.members.iter().map(|m| m.key.clone()).collect();
    for i in 0..3 {
        old.crash(i).await;
    }

    // The same voters (same keys), new data dirs, a new network of processes.
    let net = InProcNetwork::new(44);
    let mut systems = Vec::new();
    for (i, key) in keys.iter().enumerate() {
        let s = SporeSystem::builder()
            .data_dir(dir.path().join(format!("new{i}")))
            .key(key.clone())
            .addr(format!("n{i}"))
            .inproc(&net)
            .timeouts(crate::cluster::fast_timeouts())
            .build();
        s.start().await.expect("start");
        systems.push(s);
    }
    // A seed without events cannot form a network; the wrong network is refused.
    let err = systems[0].form_from_seed(&bare, VerifyPolicy::default()).await.expect_err("needs events");
    assert!(matches!(err, mycnet_spores::Error::Seed(seed::SeedError::EventsRequired)), "{err:?}");
    let other = mycnet_spores::NetworkFingerprint([9; 32]);
    let err = systems[0]
        .form_from_seed(&full, VerifyPolicy { require_quorum: false, expected_network: Some(other) })
        .await
        .expect_err("wrong network");
    assert!(matches!(err, mycnet_spores::Error::Seed(seed::SeedError::WrongNetwork { .. })), "{err:?}");
    assert_eq!(systems[0].head().expect("head"), None, "nothing imported from a refused seed");

    let formed = systems[0].form_from_seed(&full, VerifyPolicy::default()).await.expect("form from seed");
    assert_eq!((formed.seq, formed.hash), (seed_head.seq, seed_head.hash));
    let via = systems[0].peer().expect("peer");
    for s in systems.iter_mut().skip(1) {
        s.join(via.clone(), true).await.expect("a seed voter joins");
    }
    // New writes extend the seed's chain, on every node.
    systems[1].register_service("after-seed", vec![], vec!["cap".into()], vec![]).await.expect("write after formation");
    let heads = crate::wait::until(
        "one head past the seed's on every node (heads)",
        Duration::from_secs(10),
        || systems.iter().map(|s| s.head().expect("head")).collect::<Vec<_>>(),
        |heads| heads.iter().all(|h| *h == heads[0]) && heads[0].is_some_and(|h| h.seq > seed_head.seq),
    )
    .await;
    let head = heads[0].expect("head");
    for s in &systems {
        assert_eq!(s.status().expect("status").fingerprint, fingerprint, "the same network");
        assert_eq!(s.status().expect("status").voters.len(), 3);
        assert_eq!(s.services_by_capability("cap").expect("query").len(), 21);
        assert_eq!(s.head().expect("head"), Some(head));
        let mut sub = s.subscribe(seed_head.seq).expect("subscribe");
        let at = sub.next().await.expect("event").expect("readable");
        assert_eq!(at.hash, seed_head.hash, "the chain passes through the seed's head");
    }
    for s in systems {
        s.shutdown().await.expect("shutdown");
    }
}

/// Joining with a seed as the trust root: accepted when the primary's chain passes through
/// the seed's head; refused, before anything changes, for another network, a different event
/// at the seed's head, or a primary behind the seed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_with_a_seed_trusts_only_a_primary_that_extends_it() {
    use mycnet_spores::seed::SeedError;
    use mycnet_spores::{EventBody, NodeKey, SignedEvent, SporeSystem, Timestamp, TrustScore};

    let cluster = Cluster::form(3, 45).await;
    let leader = cluster.leader(Duration::from_secs(5)).await.expect("leader");
    let l = cluster.sys(leader);
    for i in 0..5 {
        l.register_service(&format!("before-{i}"), vec![], vec![], vec![]).await.expect("write");
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let trusted = dir.path().join("trusted.seed");
    l.export_seed(&trusted, true).await.expect("export");
    for i in 0..5 {
        l.register_service(&format!("after-{i}"), vec![], vec![], vec![]).await.expect("write");
    }
    let via = l.peer().expect("peer");

    // Seeds of the same network whose chains leave the primary's: signed offline by one of
    // its voters, from the trusted seed's events plus events the primary never saw.
    let voter_key = cluster.members[leader].key.clone();
    let base = seed::read_file(&trusted, VerifyPolicy::default()).expect("trusted seed");
    let fork = |extra: usize, name: &str| {
        let mut p = mycnet_spores::Projection::new();
        let mut chained: Vec<mycnet_spores::ChainedEvent> = Vec::new();
        for e in &base.events {
            p.apply(e).expect("replays");
            chained.push(e.clone());
        }
        let fp = p.fingerprint().expect("fingerprint");
        let subject = cluster.members[(leader + 1) % 3].key.node_id();
        for k in 0..extra {
            let body = EventBody::TrustScoreChanged {
                node: subject,
                score: TrustScore(100 + k as u16),
                reason: "fork".into(),
            };
            let ev = SignedEvent::sign(&voter_key, fp, Timestamp::now(), body);
            chained.push(p.append(ev).expect("valid on the fork"));
        }
        let path = dir.path().join(name);
        std::fs::write(&path, seed::build(&p, Some(&chained), &[&voter_key]).expect("build")).expect("write");
        path
    };
    let forked = fork(1, "forked.seed");
    let ahead = fork(20, "ahead.seed");

    // Another network's seed.
    let other = Cluster::form(1, 46).await;
    let foreign = dir.path().join("foreign.seed");
    other.sys(0).export_seed(&foreign, false).await.expect("export");

    let key = NodeKey::from_seed([77; 32]);
    let joiner = SporeSystem::builder()
        .data_dir(dir.path().join("joiner"))
        .key(key.clone())
        .addr("joiner")
        .inproc(&cluster.net)
        .timeouts(crate::cluster::fast_timeouts())
        .build();
    joiner.start().await.expect("start");
    l.admit(joiner.announcement().expect("announcement")).await.expect("admit");

    let err =
        joiner.join_with_seed(via.clone(), false, &foreign, VerifyPolicy::default()).await.expect_err("other network");
    assert!(matches!(err, mycnet_spores::Error::Seed(SeedError::WrongNetwork { .. })), "{err:?}");
    let err = joiner.join_with_seed(via.clone(), false, &forked, VerifyPolicy::default()).await.expect_err("forked");
    assert!(
        matches!(&err, mycnet_spores::Error::Seed(SeedError::NotExtended { reason, .. }) if reason.contains("different event")),
        "{err:?}"
    );
    let err = joiner.join_with_seed(via.clone(), false, &ahead, VerifyPolicy::default()).await.expect_err("ahead");
    assert!(
        matches!(&err, mycnet_spores::Error::Seed(SeedError::NotExtended { reason, .. }) if reason.contains("shorter")),
        "{err:?}"
    );
    let st = l.status().expect("status");
    assert!(
        !st.learners.contains(&key.node_id()) && !st.voters.contains(&key.node_id()),
        "refused joins changed nothing"
    );

    joiner
        .join_with_seed(via, false, &trusted, VerifyPolicy::default())
        .await
        .expect("the primary extends the trusted seed");
    let head = cluster.converged_head(Duration::from_secs(10)).await.expect("converged");
    crate::wait::head_is("the joiner", &joiner, head, Duration::from_secs(10)).await;
    joiner.shutdown().await.expect("shutdown");
}

/// A voter whose data dir is lost is restored from a seed: it serves the seed's view at once,
/// rejoins with its key, and ends on the same chain as everyone — no event applied twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_voter_restored_from_a_seed_rejoins_without_applying_anything_twice() {
    let mut cluster = Cluster::form(3, 47).await;
    let leader = cluster.leader(Duration::from_secs(5)).await.expect("leader");
    for i in 0..10 {
        cluster
            .sys(leader)
            .register_service(&format!("svc-{i}"), vec![], vec!["cap".into()], vec![])
            .await
            .expect("write");
    }
    let lost = (leader + 1) % 3;
    // Events that would be accepted a second time if replayed (unlike registrations, which
    // would be refused as duplicates): a trust change and an announcement.
    let subject = cluster.members[lost].key.node_id();
    cluster.sys(leader).set_trust(subject, mycnet_spores::TrustScore(700), "reliable").await.expect("trust");
    cluster.sys(leader).announce(vec!["10.0.0.9:1".into()], vec!["storage".into()]).await.expect("announce");
    let dir = tempfile::tempdir().expect("tempdir");
    let backup = dir.path().join("backup.seed");
    cluster.sys(lost).export_seed(&backup, true).await.expect("backup");
    for i in 10..15 {
        cluster
            .sys(leader)
            .register_service(&format!("svc-{i}"), vec![], vec!["cap".into()], vec![])
            .await
            .expect("write");
    }

    // The disk is lost; the node is restored from the backup into an empty data dir.
    cluster.crash(lost).await;
    std::fs::remove_dir_all(&cluster.members[lost].dir).expect("lose the data dir");
    let s = seed::read_file(&backup, VerifyPolicy::default()).expect("backup verifies");
    {
        let ledger_dir = cluster.members[lost].dir.join("ledger");
        let mut l =
            mycnet_spores::Ledger::open(&ledger_dir, mycnet_spores::LedgerConfig::default()).expect("new ledger");
        let head = seed::import(&mut l, &s).expect("import");
        // The imported chain carries Seed authority up to the seed's head.
        assert_eq!(l.seed_anchor().expect("read"), Some(mycnet_spores::ChainPoint { seq: head.seq, hash: head.hash }));
    }
    let in_backup = s.state.services.len();
    assert!(in_backup >= 9, "the backup holds the services the node had applied");
    cluster.restart(lost).await;
    assert_eq!(
        cluster.sys(lost).services_by_capability("cap").expect("query").len(),
        in_backup,
        "the seed's view, served at once"
    );

    for i in 15..20 {
        cluster
            .sys(leader)
            .register_service(&format!("svc-{i}"), vec![], vec!["cap".into()], vec![])
            .await
            .expect("write");
    }
    let head = cluster.converged_head(Duration::from_secs(15)).await.expect("the restored node converges");
    for i in 0..3 {
        assert_eq!(cluster.sys(i).head().expect("head"), Some(head));
        assert_eq!(
            cluster.sys(i).services_by_capability("cap").expect("query").len(),
            20,
            "node {i}: every service once"
        );
    }
    // The restored ledger verifies from genesis, holds the converged head, and carries the trust
    // change and the announcement exactly once (the leader may have anchored on top since).
    let restored = cluster.members[lost].dir.clone();
    cluster.crash(lost).await;
    let reader =
        crate::wait::ok("the restored node's ledger to open once it is stopped", Duration::from_secs(10), || {
            mycnet_spores::LedgerReader::open(&restored)
        })
        .await;
    let report = reader.verify(&|_| {}).expect("verify runs");
    assert!(report.is_ok(), "{:?}", report.first_error);
    assert_eq!(report.history_from, 0, "the restored ledger holds the history from genesis");
    assert!(report.recorded_head.is_some_and(|(seq, _)| seq >= head.seq), "{:?}", report.recorded_head);
    let chain = reader.range(0, head.seq).expect("read the restored chain");
    assert_eq!(
        chain.last().map(|e| (e.seq, e.hash)),
        Some((head.seq, head.hash)),
        "the restored node holds the converged chain"
    );
    let trust = chain
        .iter()
        .filter(|e| matches!(&e.event.body, EventBody::TrustScoreChanged { node, .. } if *node == subject))
        .count();
    assert_eq!(trust, 1, "the trust change is in the chain once");
    let announced = chain
        .iter()
        .filter(|e| matches!(&e.event.body, EventBody::AddressesChanged { addresses, .. } if addresses == &["10.0.0.9:1".to_string()]))
        .count();
    assert_eq!(announced, 1, "the announcement's address change is in the chain once");
}

/// Exports a **state-only** seed from `system` once its chain attests a state (the leader's
/// first anchor is a state checkpoint; until then an export carries every event), and returns
/// its head and the verified seed.
pub(crate) async fn export_state_only(
    system: &mycnet_spores::SporeSystem,
    path: &std::path::Path,
) -> (mycnet_spores::ChainHead, seed::Seed) {
    // An export is a heavy try: first wait (cheaply) for the first anchor, a state checkpoint.
    crate::wait::until(
        "the first anchor (the node's anchor)",
        Duration::from_secs(20),
        || system.status().expect("status").anchor,
        Option::is_some,
    )
    .await;
    let (at, seed) = crate::wait::ok_async("a state-only seed export", Duration::from_secs(20), async || {
        let at = system.export_seed(path, false).await.expect("export a state-only seed");
        let seed = seed::read_file(path, VerifyPolicy::default()).expect("verify the seed");
        if seed.header.includes_events {
            return Err(format!("the export at seq {} still carries every event", at.seq));
        }
        Ok((at, seed))
    })
    .await;
    assert!(matches!(seed.proof, seed::StateProof::AttestedAt { .. }), "{:?}", seed.proof);
    (at, seed)
}

/// A node with 8 services whose chain attests a state early (anchors every 4 events), a
/// state-only seed of it at `root/state.seed`, imported into `root/b`, and a latent node
/// started there on its own QUIC endpoint with nobody to backfill from: that node, and the
/// first seq it holds (> 0: the history below the attested state is not there).
pub(crate) async fn latent_from_state_only_seed(
    root: &std::path::Path,
    network_name: &str,
) -> (mycnet_spores::SporeSystem, u64) {
    use mycnet_spores::node::AnchorPolicy;
    let a = mycnet_spores::SporeSystem::builder()
        .data_dir(root.join("a"))
        .private_network()
        .anchors(AnchorPolicy { every_events: 4, every: Duration::from_millis(100) })
        .build();
    a.initialize(crate::cluster::identity(network_name)).await.expect("initialize");
    for i in 0..8 {
        a.register_service(&format!("s-{i}"), vec![], vec![], vec![]).await.expect("write");
    }
    let (_, seed) = export_state_only(&a, &root.join("state.seed")).await;
    a.shutdown().await.expect("shutdown");
    let first_held = {
        let mut l = mycnet_spores::Ledger::open(root.join("b").join("ledger"), Default::default()).expect("ledger");
        seed::import(&mut l, &seed).expect("import");
        l.history_from()
    };
    assert!(first_held > 0, "the seed leaves the history below its state out");
    let b = mycnet_spores::SporeSystem::builder()
        .data_dir(root.join("b"))
        .role(mycnet_spores::NodeRole::Rhizomorph)
        .addr("127.0.0.1:0")
        .build();
    b.start().await.expect("start from the state-only seed");
    (b, first_held)
}
