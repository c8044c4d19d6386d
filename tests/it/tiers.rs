//! Tier views on a latent node: the Primary view stops at the newest checkpoint it holds, the
//! Latent view reaches its head, and tiered answers come from the most authoritative tier that
//! has them and say which.

use std::time::Duration;

use mycnet_spores::net::gossip::GossipConfig;
use mycnet_spores::net::inproc::InProcNetwork;
use mycnet_spores::node::AnchorPolicy;
use mycnet_spores::{ChainPoint, Error, NetworkIdentity, NodeKey, NodeRole, SporeSystem, SporeType};

use crate::cluster::fast_timeouts;
use crate::wait;

/// The head of `s` as a chain point.
fn head_of(s: &SporeSystem) -> ChainPoint {
    let h = s.head().expect("head").expect("formed");
    ChainPoint { seq: h.seq, hash: h.hash }
}

fn gossip() -> GossipConfig {
    GossipConfig {
        interval: Duration::from_millis(50),
        connect_timeout: Duration::from_millis(300),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_latent_node_answers_from_the_most_authoritative_tier_and_says_which() {
    let net = InProcNetwork::new(0x71e5);
    net.enable_gossip();
    let root = tempfile::tempdir().expect("tempdir");
    // One voter that anchors every third event and never by time, so the test decides when
    // a checkpoint exists.
    let voter = SporeSystem::builder()
        .data_dir(root.path().join("v"))
        .key(NodeKey::from_seed([0x31; 32]))
        .addr("v")
        .inproc(&net)
        .timeouts(fast_timeouts())
        .anchors(AnchorPolicy { every_events: 3, every: Duration::from_secs(3600) })
        .gossip(gossip())
        .build();
    voter.start().await.expect("start voter");
    let identity = NetworkIdentity {
        network_id: uuid::Uuid::from_u128(0x71e5),
        network_name: "tiers".into(),
        genesis_timestamp: chrono::Utc::now(),
    };
    voter.initialize(identity).await.expect("initialize");
    let latent = SporeSystem::builder()
        .data_dir(root.path().join("l"))
        .key(NodeKey::from_seed([0x32; 32]))
        .role(NodeRole::Rhizomorph)
        .addr("l")
        .inproc(&net)
        .timeouts(fast_timeouts())
        .gossip(gossip())
        .gossip_peers(vec![voter.peer().expect("peer")])
        .build();
    latent.start().await.expect("start latent node");
    voter.admit(latent.announcement().expect("announcement")).await.expect("admit");

    // Before any checkpoint reaches it, a latent node has no Primary view.
    voter.register_service("early", vec![], vec!["x".into()], vec![]).await.expect("write");
    let early = head_of(&voter);
    // Two more writes make three events since the last anchor (there is none yet): a checkpoint
    // follows (the anchor task looks once a second) and becomes the voter's head.
    for i in 0..2 {
        voter.register_service(&format!("filler-{i}"), vec![], vec![], vec![]).await.expect("write");
    }
    let (anchor, _) = wait::until(
        "a checkpoint after the early write at the voter's head (anchor, head)",
        Duration::from_secs(10),
        || {
            let st = voter.status().expect("status");
            (st.anchor, st.head)
        },
        |(a, h)| a.is_some_and(|a| a.seq > early.seq && h.is_some_and(|h| h.seq == a.seq)),
    )
    .await;
    let anchor = anchor.expect("anchor");
    // One write after the checkpoint: only the Latent tier has it (no checkpoint follows
    // until two more events).
    voter.register_service("late", vec![], vec!["x".into()], vec![]).await.expect("write");
    let late = head_of(&voter);
    wait::head_reaches("the latent node", &latent, late.seq, Duration::from_secs(10)).await;

    let reach = latent.tier_reach().expect("reach");
    assert_eq!(reach.primary, Some(anchor.seq), "Primary reaches the newest checkpoint held");
    assert_eq!(reach.seed, Some(anchor.seq), "no seed: the Seed view is the Primary one");
    assert_eq!(reach.latent, Some(late.seq), "Latent reaches the head");
    assert_eq!(latent.status().expect("status").reach, reach);
    assert_eq!(latent.status().expect("status").spore_type, SporeType::Latent);

    // Each tier's view is the registries as of its reach.
    let primary = latent.spore(SporeType::Primary).expect("primary view");
    assert_eq!(primary.at, anchor);
    assert_eq!(primary.projection.services_by_name("early").count(), 1);
    assert_eq!(primary.projection.services_by_name("late").count(), 0, "the Primary view stops at the checkpoint");
    let newest = latent.spore(SporeType::Latent).expect("latent view");
    assert_eq!(newest.at, late);
    assert_eq!(newest.projection.services_by_name("late").count(), 1);
    assert_eq!(latent.spore(SporeType::Seed).expect("seed view").at, anchor);

    // Tiered answers: from the most authoritative tier that has one, saying which.
    let a = latent.services_by_name_answer("early").expect("answer").expect("found");
    assert_eq!((a.tier, a.at, a.value.len()), (SporeType::Primary, anchor, 1));
    let a = latent.services_by_name_answer("late").expect("answer").expect("found");
    assert_eq!((a.tier, a.at, a.value.len()), (SporeType::Latent, late, 1));
    assert!(latent.services_by_name_answer("nowhere").expect("answer").is_none());
    let a = latent.services_by_capability_answer("x").expect("answer").expect("found");
    assert_eq!((a.tier, a.value.len()), (SporeType::Primary, 1), "the highest tier with any answer answers");
    let voter_id = voter.node_id().expect("id");
    let a = latent.node_answer(&voter_id).expect("answer").expect("found");
    assert_eq!(a.tier, SporeType::Primary);
    // On a voter the whole chain is Primary.
    let a = voter.services_by_name_answer("late").expect("answer").expect("found");
    assert_eq!((a.tier, a.at), (SporeType::Primary, late));

    // Two more events bring a checkpoint; once the latent node holds it, the late write is
    // answered with Primary authority (the cached view continues from where it was).
    voter.register_service("after-1", vec![], vec![], vec![]).await.expect("write");
    voter.register_service("after-2", vec![], vec![], vec![]).await.expect("write");
    wait::until(
        "a checkpoint covering the late write at the latent node (its anchor, its head)",
        Duration::from_secs(10),
        || (latent.status().ok().and_then(|s| s.anchor), latent.head().ok().flatten()),
        |(a, h)| a.is_some_and(|a| a.seq > late.seq && h.is_some_and(|h| h.seq >= a.seq)),
    )
    .await;
    let a = latent.services_by_name_answer("late").expect("answer").expect("found");
    assert_eq!(a.tier, SporeType::Primary);
    assert!(a.at.seq >= late.seq);

    // A node that holds nothing has no tier at all.
    let empty = SporeSystem::builder()
        .data_dir(root.path().join("e"))
        .key(NodeKey::from_seed([0x33; 32]))
        .addr("e")
        .inproc(&net)
        .timeouts(fast_timeouts())
        .build();
    empty.start().await.expect("start");
    assert!(matches!(empty.spore(SporeType::Latent), Err(Error::TierUnavailable(SporeType::Latent))));
    assert!(empty.services_by_name_answer("early").expect("answer").is_none());
    for s in [latent, voter, empty] {
        s.shutdown().await.expect("shutdown");
    }
}
