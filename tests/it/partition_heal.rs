//! Partition and heal with the latent tier on the in-process network (which carries gossip
//! here): writes on both sides, the cut-off side's writes held as provisional events that
//! travel by gossip and are committed after the heal — every one present exactly once.

use std::collections::BTreeMap;
use std::time::Duration;

use mycnet_spores::core::provisional::EventId;
use mycnet_spores::{ChainPoint, Error, NodeKey, SporeSystem};

use crate::cluster::{fast_timeouts, Cluster};
use crate::wait;

/// Every event id in `s`'s chain with how many times it occurs, and the chain's points.
async fn chain_ids(s: &SporeSystem) -> (BTreeMap<EventId, usize>, BTreeMap<u64, ChainPoint>) {
    let head = s.head().expect("head").expect("formed");
    let mut sub = s.subscribe(0).expect("subscribe");
    let mut ids = BTreeMap::new();
    let mut points = BTreeMap::new();
    while let Some(ev) = sub.next().await {
        let ev = ev.expect("event");
        *ids.entry(EventId::of(&ev.event)).or_insert(0) += 1;
        points.insert(ev.seq, ChainPoint { seq: ev.seq, hash: ev.hash });
        if ev.seq == head.seq {
            break;
        }
    }
    (ids, points)
}

fn provisional_id(r: Result<impl std::fmt::Debug, Error>) -> EventId {
    match r {
        Err(Error::Provisional { id }) => id,
        other => panic!("expected the write to be held as provisional, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_and_heal_commits_every_write_exactly_once() {
    let mut t = fast_timeouts();
    t.write = Duration::from_millis(1500);
    t.rpc = Duration::from_millis(300);
    let c = Cluster::form_with_gossip(3, 0x7a11, t.clone()).await;
    let leader = c.leader(Duration::from_secs(5)).await.expect("leader");
    let root = tempfile::tempdir().expect("tempdir");
    // Three Rhizomorphs, each bootstrapped from one voter.
    let mut latent: Vec<SporeSystem> = Vec::new();
    for i in 0..3u8 {
        let key = NodeKey::from_seed([200 + i; 32]);
        latent.push(c.latent(root.path(), key, &format!("l{i}"), i as usize, leader, t.clone()).await);
    }
    let head = c.converged_head(Duration::from_secs(5)).await.expect("voters converged");
    for l in &latent {
        wait::head_reaches("the latent node", l, head.seq, Duration::from_secs(10)).await;
    }
    let mut acked: Vec<ChainPoint> = Vec::new();
    // Connected, a latent node's write goes straight to the voters and commits.
    acked.push(
        latent[0].announce(vec!["l0".into()], vec!["before".into()]).await.expect("latent write while connected"),
    );
    assert_eq!(latent[0].status().expect("status").provisional, 0);

    // Partition: the voters and l0 on one side, l1 and l2 on the other.
    let a: Vec<&str> = vec!["n0", "n1", "n2", "l0"];
    let b: Vec<&str> = vec!["l1", "l2"];
    c.net.partition(&a, &b);
    // Writes on the voters' side commit.
    for k in 0..3 {
        acked
            .push(c.sys(k).announce(vec![format!("n{k}")], vec![format!("side-a-{k}")]).await.expect("majority write"));
    }
    acked.push(
        latent[0].announce(vec!["l0".into()], vec!["side-a-latent".into()]).await.expect("l0 still reaches the voters"),
    );
    // Writes on the cut-off side are held as provisional events (an announce is two events).
    provisional_id(latent[1].announce(vec!["l1".into()], vec!["side-b-1".into()]).await);
    provisional_id(latent[1].register_service("b-svc", vec![], vec!["side-b".into()], vec![]).await);
    provisional_id(latent[2].announce(vec!["l2".into()], vec!["side-b-2".into()]).await);
    let mut held: Vec<EventId> =
        latent[1..].iter().flat_map(|l| l.provisional_events().expect("held")).map(|p| p.id()).collect();
    held.sort();
    held.dedup();
    assert_eq!(held.len(), 5);
    // They travel by gossip: each cut-off node ends up holding the other's too, and says so.
    for l in &latent[1..] {
        wait::until(
            "the 5 provisional events shared by gossip (how many it holds)",
            Duration::from_secs(10),
            || l.provisional_events().ok().map(|v| held.iter().filter(|id| v.iter().any(|p| p.id() == **id)).count()),
            |n| *n == Some(held.len()),
        )
        .await;
        assert_eq!(l.status().expect("status").provisional, 5);
    }
    // Still partitioned: nothing of side B is committed on side A.
    let (ids_a, _) = chain_ids(c.sys(leader)).await;
    assert!(held.iter().all(|id| !ids_a.contains_key(id)), "a provisional event committed across the partition");

    // A lost answer: l0's request reaches the voters but no answer comes back. The write
    // commits, l0 cannot know and holds it as provisional; after the heal its delivery must
    // find the event already in the chain instead of applying it again.
    for v in ["n0", "n1", "n2"] {
        c.net.block_one_way(v, "l0");
    }
    provisional_id(latent[0].announce(vec!["l0".into()], vec!["answer-lost".into()]).await);
    let lost: Vec<EventId> = latent[0].provisional_events().expect("held").iter().map(|p| p.id()).collect();
    assert_eq!(lost.len(), 2, "both events of the announce are held");
    // ... though the voters did commit them.
    c.converged_head(Duration::from_secs(5)).await.expect("voters converged");
    let (ids_a, _) = chain_ids(c.sys(leader)).await;
    assert!(lost.iter().all(|id| ids_a.get(id) == Some(&1)), "the voters committed the write whose answer was lost");
    held.extend(lost);

    c.net.heal();
    // Every held event is committed (or found committed) and forgotten; one head everywhere.
    let all: Vec<&SporeSystem> = (0..3).map(|i| c.sys(i)).chain(latent.iter()).collect();
    wait::until(
        "every provisional event committed and forgotten (held per node)",
        Duration::from_secs(30),
        || all.iter().map(|s| s.status().map(|st| st.provisional).ok()).collect::<Vec<_>>(),
        |held| held.iter().all(|n| *n == Some(0)),
    )
    .await;
    let head = c.converged_head(Duration::from_secs(10)).await.expect("voters converged");
    wait::until(
        "one head on all six nodes (heads)",
        Duration::from_secs(15),
        || all.iter().map(|s| s.head().ok().flatten()).collect::<Vec<_>>(),
        |heads| heads.iter().all(|h| h.is_some_and(|h| h.seq == head.seq && h.hash == head.hash)),
    )
    .await;
    for s in &all {
        let (ids, points) = chain_ids(s).await;
        for id in &held {
            assert_eq!(ids.get(id).copied(), Some(1), "provisional event {id} present exactly once");
        }
        for p in &acked {
            assert_eq!(points.get(&p.seq), Some(p), "an acknowledged write kept its place");
        }
        assert!(ids.values().all(|n| *n == 1), "no event is in the chain twice");
    }
    // The registry reflects the cut-off side's writes.
    assert_eq!(latent[0].services_by_name("b-svc").expect("query").len(), 1);
    let l2 = latent[2].node(&latent[2].node_id().expect("id")).expect("query").expect("registered");
    assert_eq!(l2.capabilities[..], ["side-b-2"]);
    let l0 = latent[0].node(&latent[0].node_id().expect("id")).expect("query").expect("registered");
    assert_eq!(l0.capabilities[..], ["answer-lost"], "the write whose answer was lost took effect once");
}

/// The leader's answers to provisional events, as every replica applies them: committed once,
/// a replay found at its place, a forged or impossible statement refused, a follower naming
/// the leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_state_machine_commits_a_provisional_event_once_and_refuses_bad_statements() {
    use mycnet_spores::core::provisional::ProvisionalEvent;
    use mycnet_spores::net::Transport;
    use mycnet_spores::raft::SporeResponse;
    use mycnet_spores::raft::{RpcRequest, RpcResponse};
    use mycnet_spores::wire::rpc::RemoteFailure;
    use mycnet_spores::{EventBody, Rejection, SignedEvent, Timestamp};

    let c = Cluster::form(3, 0x7a12).await;
    let leader = c.leader(Duration::from_secs(5)).await.expect("leader");
    let follower = (leader + 1) % 3;
    let key = c.members[follower].key.clone();
    let node = key.node_id();
    let fp = c.sys(leader).status().expect("status").fingerprint.expect("formed");
    let head = c.sys(leader).head().expect("head").expect("formed").seq;
    let event = SignedEvent::sign(
        &key,
        fp,
        Timestamp::now(),
        EventBody::CapabilitiesChanged { node, capabilities: vec!["x".into()] },
    );
    let p = ProvisionalEvent::new(&key, event.clone(), Some(head));
    let t = c.net.transport("n0");
    let call = |to: usize, p: ProvisionalEvent| {
        let peer = c.sys(to).peer().expect("peer");
        let t = &t;
        async move {
            match t.call(&peer, RpcRequest::Provisional(p), Duration::from_secs(5)).await.expect("call") {
                RpcResponse::Forward(r) => r,
                other => panic!("unexpected response {other:?}"),
            }
        }
    };
    // A follower names the leader.
    match call(follower, p.clone()).await {
        Err(RemoteFailure::NotLeader { leader: Some(l) }) => assert_eq!(l.node, c.members[leader].key.node_id()),
        other => panic!("expected NotLeader naming the leader, got {other:?}"),
    }
    let point = match call(leader, p.clone()).await {
        Ok(SporeResponse::Applied(point)) => point,
        other => panic!("expected the event applied, got {other:?}"),
    };
    // The same wrapper again (a retry after a lost answer): found where it was committed.
    assert_eq!(call(leader, p.clone()).await, Ok(SporeResponse::Rejected(Rejection::ProvisionalDuplicate(point))));
    // A statement signed by another key than the event's author.
    let other_key = c.members[leader].key.clone();
    let fresh = SignedEvent::sign(
        &key,
        fp,
        Timestamp::now(),
        EventBody::CapabilitiesChanged { node, capabilities: vec!["y".into()] },
    );
    let mut forged = ProvisionalEvent::new(&other_key, fresh.clone(), Some(point.seq));
    assert!(matches!(
        call(leader, forged.clone()).await,
        Ok(SporeResponse::Rejected(Rejection::ProvisionalRefused(_)))
    ));
    // A statement beyond the head.
    forged = ProvisionalEvent::new(&key, fresh.clone(), Some(point.seq + 1000));
    assert!(matches!(call(leader, forged).await, Ok(SporeResponse::Rejected(Rejection::ProvisionalRefused(_)))));
    // Every replica holds the event once, at the same place.
    let head = c.converged_head(Duration::from_secs(5)).await.expect("converged");
    for i in 0..3 {
        let (ids, points) = chain_ids(c.sys(i)).await;
        assert_eq!(ids.get(&EventId::of(&event)), Some(&1));
        assert_eq!(points.get(&point.seq), Some(&point));
        assert_eq!(c.sys(i).head().expect("head").expect("head"), head);
    }
}
