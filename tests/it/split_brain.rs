//! Split-brain: two groups form a primary each from the same seed while cut off, write on
//! both sides, and heal. Gossip finds the second chain, every node settles on the same
//! winner, the loser's valid events are folded into the winner, conflicts are reported, the
//! losing chain is kept as a seed file, and every node ends on one head.

use std::path::PathBuf;
use std::time::Duration;

use mycnet_spores::core::modes::OperationalMode;
use mycnet_spores::net::gossip::GossipConfig;
use mycnet_spores::net::inproc::InProcNetwork;
use mycnet_spores::node::{AnchorPolicy, YieldPolicy};
use mycnet_spores::seed::VerifyPolicy;
use mycnet_spores::{EventBody, NodeKey, ServiceFilter, SporeSystem};

use crate::cluster::{fast_timeouts, Cluster};
use crate::split_rule::{branch_of, fork_seen, winner};
use crate::wait;

fn node(net: &InProcNetwork, dir: PathBuf, key: &NodeKey, addr: &str) -> SporeSystem {
    SporeSystem::builder()
        .data_dir(dir)
        .key(key.clone())
        .addr(addr)
        .name(addr)
        .inproc(net)
        .timeouts(fast_timeouts())
        .anchors(AnchorPolicy { every_events: 4, every: Duration::from_millis(200) })
        .gossip(GossipConfig {
            interval: Duration::from_millis(100),
            connect_timeout: Duration::from_millis(300),
            ..Default::default()
        })
        // These tests step each yield themselves, in the order they check.
        .yield_policy(YieldPolicy::Manual)
        .build()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_primaries_from_one_seed_settle_on_one_winner_and_lose_nothing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    // A network of three voters writes, exports a seed, and stops.
    let mut old = Cluster::form(3, 0x5b1).await;
    let leader = old.leader(Duration::from_secs(5)).await.expect("leader");
    let mut ids = Vec::new();
    for i in 0..4 {
        ids.push(
            old.sys(leader)
                .register_service(&format!("svc-{i}"), vec![], vec!["cap".into()], vec![])
                .await
                .expect("write"),
        );
    }
    let root = tempfile::tempdir().expect("tempdir");
    let seed = root.path().join("net.seed");
    let seed_head = old.sys(leader).export_seed(&seed, true).await.expect("export");
    let services: Vec<_> = old.sys(leader).services_by_capability("cap").expect("query");
    let keys: Vec<NodeKey> = old.members.iter().map(|m| m.key.clone()).collect();
    let addrs: Vec<String> = old.members.iter().map(|m| m.addr.clone()).collect();
    for i in 0..3 {
        old.crash(i).await;
    }

    // Cut off from each other, group A (two voters) and group B (one) each form a primary
    // from the same seed.
    let net = InProcNetwork::new(0x5b2);
    net.enable_gossip();
    let a: Vec<&str> = vec![&addrs[0], &addrs[1]];
    let b: Vec<&str> = vec![&addrs[2], "latent-b"];
    net.partition(&a, &b);
    let mut nodes: Vec<SporeSystem> =
        (0..3).map(|i| node(&net, root.path().join(format!("n{i}")), &keys[i], &addrs[i])).collect();
    for s in nodes.iter_mut() {
        s.start().await.expect("start");
    }
    nodes[0].form_from_seed(&seed, VerifyPolicy::default()).await.expect("group A forms");
    let via = nodes[0].peer().expect("peer");
    nodes[1].join(via, true).await.expect("a voter joins group A");
    nodes[2].form_from_seed(&seed, VerifyPolicy::default()).await.expect("group B forms");
    // Group B also has a latent node (outside Raft), kept by gossip from B's voter. It is
    // admitted on both sides, so activity counts it on neither side's account alone.
    let latent = SporeSystem::builder()
        .data_dir(root.path().join("latent-b"))
        .key(NodeKey::from_seed([0x5b; 32]))
        .role(mycnet_spores::NodeRole::Rhizomorph)
        .yield_policy(YieldPolicy::Manual)
        .addr("latent-b")
        .name("latent-b")
        .inproc(&net)
        .timeouts(fast_timeouts())
        .gossip(GossipConfig {
            interval: Duration::from_millis(100),
            connect_timeout: Duration::from_millis(300),
            ..Default::default()
        })
        .gossip_peers(vec![nodes[2].peer().expect("peer")])
        .build();
    latent.start().await.expect("start latent node");
    let ann = latent.announcement().expect("announcement");
    nodes[0].admit(ann.clone()).await.expect("A admits the latent node");
    nodes[2].admit(ann).await.expect("B admits the latent node");
    nodes.push(latent);

    // Writes on both sides: new services on each, and the same service deregistered on both
    // (that one conflicts: the winner has already removed it).
    nodes[0].register_service("a-only", vec![], vec!["a".into()], vec![]).await.expect("A write");
    nodes[1].register_service("a-too", vec![], vec!["a".into()], vec![]).await.expect("A write");
    nodes[2].register_service("b-only", vec![], vec!["b".into()], vec![]).await.expect("B write");
    let gone = services[0].service.service_id;
    nodes[0].deregister_service(gone, "removed on side A").await.expect("A deregisters");
    nodes[2].deregister_service(gone, "removed on side B").await.expect("B deregisters");
    // Each side commits that it lost sight of the other's voter, as its SWIM would while
    // cut off. The loser's view must not be folded into the winner.
    let ids: Vec<_> = nodes.iter().map(|s| s.node_id().expect("id")).collect();
    nodes[0].mark_offline(ids[2], mycnet_spores::Timestamp::now()).await.expect("A marks B's voter offline");
    nodes[2].mark_offline(ids[0], mycnet_spores::Timestamp::now()).await.expect("B marks A's voter offline");
    // Anchors on both sides make both branches Primary: each voter holds a checkpoint past
    // the fork (one whose seq is above the fork attests a head at or after it).
    let fork_seq = seed_head.seq + 1;
    // Anchored up to the head: no anchor still in flight that would move a head after the
    // snapshot below (one for the last write may follow an earlier anchor past the fork).
    wait::until(
        "both branches are anchored after the fork, up to their heads (anchor, head)",
        Duration::from_secs(10),
        || nodes[..3].iter().map(|s| s.status().ok().map(|st| (st.anchor, st.head))).collect::<Vec<_>>(),
        |seen| {
            seen.iter().all(|st| {
                st.is_some_and(|(a, h)| a.is_some_and(|a| a.seq > fork_seq && h.is_some_and(|h| h.seq == a.seq)))
            })
        },
    )
    .await;
    wait::until(
        "the latent node holds B's chain (B's head, the latent node's)",
        Duration::from_secs(20),
        || (nodes[2].head().ok().flatten(), nodes[3].head().ok().flatten()),
        |(b, l)| b.map(|h| h.hash) == l.map(|h| h.hash),
    )
    .await;
    let pre_heal: Vec<_> = nodes.iter().map(|s| s.head().expect("head").expect("formed")).collect();
    assert_ne!(pre_heal[0].hash, pre_heal[2].hash, "two chains");
    for s in &nodes {
        assert_eq!(s.status().expect("status").forks, 0, "no fork seen while cut off");
    }
    // Which side must lose, by the documented rule, from the two branches as they stand (no
    // event after the heal changes what it weighs: nothing here runs SWIM, and anchors neither
    // change a tier that is already Primary nor anyone's activity).
    let branches = [branch_of(&nodes[0], fork_seq).await, branch_of(&nodes[2], fork_seq).await];
    assert!(branches.iter().all(|b| b.primary), "both branches are Primary: {branches:?}");
    let (winning_side, rule) = winner(&branches[0], &branches[1]);
    let groups = [vec![0usize, 1], vec![2usize, 3]];
    let (winner_group, loser_group) = (&groups[winning_side], &groups[1 - winning_side]);

    net.heal();
    // Gossip finds the second chain: every node goes into split-brain resolution.
    wait::until(
        "the fork is seen on both sides (who saw it)",
        Duration::from_secs(20),
        || fork_seen(&nodes),
        |seen| seen[..2].iter().any(|s| *s) && seen[2..].iter().any(|s| *s),
    )
    .await;
    // The loser side yields once the winner recorded the resolution.
    let mut yielded = Vec::new();
    wait::ok_async("a yield and then one head and no fork everywhere", Duration::from_secs(60), async || {
        for (i, s) in nodes.iter_mut().enumerate() {
            // A latent node may yield twice: if it synced the losing chain again from a peer
            // that had not yielded yet.
            if s.yield_plan().expect("plan").is_some() {
                let kept = s.yield_to_winner().await.expect("yield");
                assert!(kept.exists(), "the losing chain is kept as a seed file");
                yielded.push(i);
            }
        }
        let heads: Vec<_> = nodes.iter().map(|s| s.head().ok().flatten()).collect();
        let settled = nodes.iter().all(|s| s.status().is_ok_and(|st| st.forks == 0));
        let one_head = heads.iter().all(|h| h.is_some() && h.map(|h| h.hash) == heads[0].map(|h| h.hash));
        if !yielded.is_empty() && settled && one_head {
            Ok(())
        } else {
            Err(format!("heads {heads:?}, yielded {yielded:?}, forks settled: {settled}"))
        }
    })
    .await;
    // Exactly the side the rule makes the loser yielded, the whole group (for group B its
    // voter and its latent node, which syncs the winning chain by gossip); nobody else did.
    yielded.sort();
    yielded.dedup();
    assert_eq!(
        &yielded, loser_group,
        "the losing group by {rule} yields, the winning group {winner_group:?} does not: {branches:?}"
    );
    // Nothing valid is lost: every service written on either side is registered on every
    // node (the losing voter stays committed offline on the winning chain, so discovery lists its
    // services only when asked to include unavailable nodes); the service both sides removed
    // is gone.
    for s in &nodes {
        for name in ["a-only", "a-too", "b-only"] {
            let all = ServiceFilter::name(name).include_unavailable();
            assert_eq!(s.find_services(&all).expect("query").len(), 1, "{name} on every node");
        }
        assert!(s.services_by_capability("cap").expect("query").iter().all(|r| r.service.service_id != gone));
        assert!(s.head().expect("head").expect("head").seq > seed_head.seq);
    }
    // The winning chain records the resolution: fork point, both heads, the counts.
    let mut sub = nodes[0].subscribe(seed_head.seq + 1).expect("subscribe");
    let head = nodes[0].head().expect("head").expect("head");
    let mut resolution = None;
    while let Some(ev) = sub.next().await {
        let ev = ev.expect("event");
        if let EventBody::SplitBrainResolved(r) = &ev.event.body {
            resolution = Some(r.clone());
        }
        if ev.seq == head.seq {
            break;
        }
    }
    let r = resolution.expect("a resolution event in the winning chain");
    assert_eq!(r.fork_seq, fork_seq, "the fork is right after the seed's head");
    assert!(r.adopted >= 1, "the loser's new services were re-proposed");
    assert_eq!(
        r.conflicts, 2,
        "the second deregistration of one service and the second admission of the latent node conflict"
    );
    // It names the branches and the rule the test expected.
    assert_eq!(
        (r.winner_first, r.loser_first),
        (branches[winning_side].first, branches[1 - winning_side].first),
        "the winning branch"
    );
    assert_eq!(r.decided_by, rule);
    let loser = loser_group[0];
    assert_eq!(r.loser_head_seq, pre_heal[loser].seq, "the resolution names the losing chain's head");
    // The loser's "the winner's voter went offline" was not re-proposed: on every node the
    // winning side's voter is still active; the report counts the skipped transition.
    let winner = winner_group[0];
    for s in &nodes {
        let rec = s.node(&ids[winner]).expect("query").expect("registered");
        assert_eq!(rec.status, mycnet_spores::NodeStatus::Active, "the loser's liveness view is not folded in");
    }
    let report = (0..3)
        .filter_map(|i| std::fs::read_dir(root.path().join(format!("n{i}")).join("forks")).ok())
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("resolution-")))
        .expect("the winner's leader wrote a resolution report");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&report).expect("read report")).expect("json");
    assert_eq!(report["skipped_liveness_transitions"], 1, "{report}");
    assert_eq!(report["conflicts"].as_array().map(|c| c.len()), Some(2), "{report}");
    for s in &nodes {
        let st = s.status().expect("status");
        assert_ne!(st.mode, OperationalMode::SplitBrainResolution, "every fork settled");
    }
    for s in nodes {
        s.shutdown().await.expect("shutdown");
    }
}

/// Two groups of two voters each form a primary from one seed, write, and heal. On the losing
/// side a follower yields first while its old leader still runs the losing chain's Raft: the
/// old leader must not win the restarted follower back (its heartbeats, appends or votes would
/// re-fill the fresh ledger with the losing chain and fight the winner's leader over it). The
/// follower joins the winner and holds the winning chain; then its old leader yields too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loser_that_yields_first_is_not_taken_back_by_its_old_leader() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let mut old = Cluster::form(4, 0x5b3).await;
    let leader = old.leader(Duration::from_secs(5)).await.expect("leader");
    for i in 0..3 {
        old.sys(leader).register_service(&format!("svc-{i}"), vec![], vec!["cap".into()], vec![]).await.expect("write");
    }
    let root = tempfile::tempdir().expect("tempdir");
    let seed = root.path().join("net.seed");
    let seed_head = old.sys(leader).export_seed(&seed, true).await.expect("export");
    let keys: Vec<NodeKey> = old.members.iter().map(|m| m.key.clone()).collect();
    let addrs: Vec<String> = old.members.iter().map(|m| m.addr.clone()).collect();
    for i in 0..4 {
        old.crash(i).await;
    }

    // Groups {n0, n1} and {n2, n3}, cut off from each other, each forms from the seed.
    let net = InProcNetwork::new(0x5b4);
    net.enable_gossip();
    net.partition(&[&addrs[0], &addrs[1]], &[&addrs[2], &addrs[3]]);
    let mut nodes: Vec<SporeSystem> =
        (0..4).map(|i| node(&net, root.path().join(format!("n{i}")), &keys[i], &addrs[i])).collect();
    for s in nodes.iter_mut() {
        s.start().await.expect("start");
    }
    for (founder, second) in [(0, 1), (2, 3)] {
        nodes[founder].form_from_seed(&seed, VerifyPolicy::default()).await.expect("a group forms");
        let via = nodes[founder].peer().expect("peer");
        nodes[second].join(via, true).await.expect("its second voter joins");
    }
    nodes[1].register_service("a-side", vec![], vec!["a".into()], vec![]).await.expect("A write");
    nodes[3].register_service("b-side", vec![], vec!["b".into()], vec![]).await.expect("B write");
    // A checkpoint above the fork's seq attests a head at or after the fork.
    wait::until(
        "both branches are anchored after the fork (anchors)",
        Duration::from_secs(10),
        || nodes.iter().map(|s| s.status().ok().map(|st| st.anchor)).collect::<Vec<_>>(),
        |anchors| anchors.iter().all(|a| a.flatten().is_some_and(|a| a.seq > seed_head.seq + 1)),
    )
    .await;

    // The group that must lose, by the documented rule, from the branches as they stand.
    let fork_seq = seed_head.seq + 1;
    let branches = [branch_of(&nodes[0], fork_seq).await, branch_of(&nodes[2], fork_seq).await];
    assert!(branches.iter().all(|b| b.primary), "both branches are Primary: {branches:?}");
    let (winning_side, rule) = winner(&branches[0], &branches[1]);
    let group_of = |i: usize| if i < 2 { [0, 1] } else { [2, 3] };
    let (winners, losers) = ([[0usize, 1], [2, 3]][winning_side], [[0usize, 1], [2, 3]][1 - winning_side]);

    net.heal();
    // The losing group's follower yields as soon as it may, its leader waits; the winning
    // group is never told to yield.
    let what = format!("a follower of the losing group {losers:?} (by {rule}) ready to yield: {branches:?}");
    let follower = wait::ok(&what, Duration::from_secs(30), || {
        for w in winners {
            assert!(
                nodes[w].yield_plan().expect("plan").is_none(),
                "node {w} of the winning group (by {rule}) was told to yield: {branches:?}"
            );
        }
        let told = |i: usize| nodes[i].yield_plan().is_ok_and(|p| p.is_some());
        let leads = |i: usize| nodes[i].status().is_ok_and(|st| st.raft_state == "Leader");
        let ready = losers.into_iter().find(|&i| told(i) && group_of(i).iter().any(|&j| j != i && leads(j)));
        // What each loser sees: (node, told to yield, leads).
        ready.ok_or_else(|| losers.map(|i| (i, told(i), leads(i))))
    })
    .await;
    let old_leader = group_of(follower).into_iter().find(|&j| j != follower).expect("the other member of its group");
    let kept = nodes[follower].yield_to_winner().await.expect("the follower yields and joins the winner");
    assert!(kept.exists());
    // It holds the winning chain, not the losing one its old leader still serves.
    wait::until(
        "the yielded follower holds the winner's head (the winner's, the follower's)",
        Duration::from_secs(20),
        || (nodes[winners[0]].head().ok().flatten(), nodes[follower].head().ok().flatten()),
        |(w, f)| w.is_some() && f == w,
    )
    .await;
    wait::until(
        "the yielded follower is a voter of the winner (its voters)",
        Duration::from_secs(10),
        || nodes[follower].status().map(|st| st.voters).ok(),
        |v| v.as_ref().is_some_and(|v| v.contains(&keys[follower].node_id()) && v.len() == 3),
    )
    .await;
    assert_eq!(nodes[follower].services_by_name("a-side").expect("query").len(), 1);
    assert_eq!(nodes[follower].services_by_name("b-side").expect("query").len(), 1);
    assert_ne!(
        nodes[old_leader].head().expect("head"),
        nodes[follower].head().expect("head"),
        "the old leader is still on the losing chain"
    );
    // However the terms fall: an append stream from the old leader is answered as a stopped
    // Raft, and one from a member of the winner is served.
    for (from, refused) in [(old_leader, true), (winners[0], false)] {
        use futures_util::StreamExt;
        use mycnet_spores::net::Transport;
        let to = nodes[follower].peer().expect("peer");
        let probe = Box::pin(futures_util::stream::iter([crate::append_stream::request(1)]));
        let answers = net.transport(&addrs[from]).append_stream(&to, probe, Duration::from_secs(3)).await;
        let answers: Vec<_> = answers.expect("opened").collect().await;
        // One answer either way: "stopped" from the fence, or the Raft's own (a term 0 leader
        // is told of the higher vote).
        let stopped = match answers.as_slice() {
            [Ok(Err(openraft::error::Fatal::Stopped))] => true,
            [Ok(Ok(_))] => false,
            other => panic!("an append stream from node {from}: {other:?}"),
        };
        assert_eq!(stopped, refused, "an append stream from node {from}: {answers:?}");
    }

    // The old leader yields too; everybody ends on one head, in one membership of four.
    wait::some("the old leader told to yield", Duration::from_secs(20), || {
        nodes[old_leader].yield_plan().ok().flatten()
    })
    .await;
    nodes[old_leader].yield_to_winner().await.expect("the old leader yields");
    wait::until(
        "one head, no fork and four voters everywhere (head, forks, voters)",
        Duration::from_secs(20),
        || {
            let status = |s: &SporeSystem| s.status().ok().map(|st| (st.forks, st.voters.len()));
            nodes.iter().map(|s| (s.head().ok().flatten(), status(s))).collect::<Vec<_>>()
        },
        |seen| seen[0].0.is_some() && seen.iter().all(|(h, st)| *h == seen[0].0 && *st == Some((0, 4))),
    )
    .await;
    // The one chain is the winning branch: its event at the fork is the winner's.
    let mut sub = nodes[0].subscribe(fork_seq).expect("subscribe");
    let at_fork = tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .expect("in time")
        .expect("open")
        .expect("event");
    assert_eq!(at_fork.hash, branches[winning_side].first, "the chain everyone holds is the winning branch");
    drop(sub);
    for s in nodes {
        s.shutdown().await.expect("shutdown");
    }
}
