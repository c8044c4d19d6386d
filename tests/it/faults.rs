//! Raft under faults: leader crash under load, minority partitions, snapshot catch-up, and
//! crash/restart at random points. In-process network, real fjall in temp dirs.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mycnet_spores::{LedgerReader, ReplayOptions, StopAt};
use rand::{Rng, SeedableRng};
use uuid::Uuid;

use crate::cluster::{fast_timeouts, Cluster};

/// Every acknowledged service id is present on every replica, heads agree and chains verify.
async fn assert_no_acknowledged_write_lost(c: &Cluster, acked: &BTreeSet<Uuid>) -> mycnet_spores::ChainHead {
    let head = c.converged_head(Duration::from_secs(20)).await.expect("replicas converge on one head");
    for (i, m) in c.members.iter().enumerate() {
        let Some(s) = &m.system else { continue };
        let missing: Vec<&Uuid> =
            s.with_projection(|p| acked.iter().filter(|id| p.service(id).is_none()).collect()).expect("q");
        assert!(missing.is_empty(), "node {i} lost {} acknowledged writes", missing.len());
    }
    head
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_crash_during_concurrent_writes_loses_no_acknowledged_write() {
    const CLIENTS: usize = 64;
    const WRITES: usize = 10_000;
    let mut c = Cluster::form(3, 21).await;
    let leader = c.leader(Duration::from_secs(5)).await.expect("leader");
    let acked = Arc::new(Mutex::new(BTreeSet::new()));
    let attempted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let handles: Vec<_> = (0..3).map(|i| c.handle(i).expect("running")).collect();
    let mut tasks = Vec::new();
    for k in 0..CLIENTS {
        let handles = handles.clone();
        let acked = acked.clone();
        let attempted = attempted.clone();
        tasks.push(tokio::spawn(async move {
            let mut node = k % 3;
            let mut done = 0;
            while done < WRITES / CLIENTS {
                attempted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                match handles[node].register_service("load", vec![], vec![], vec![]).await {
                    Ok(id) => {
                        acked.lock().expect("lock").insert(id);
                        done += 1;
                    }
                    // The node crashed or lost the leader mid-write: not acknowledged, so the
                    // client tries again through another node.
                    Err(_) => node = (node + 1) % 3,
                }
            }
        }));
    }
    // Crash the leader once a good part of the load is in.
    crate::wait::until(
        &format!("{} acknowledged writes (acknowledged)", WRITES / 3),
        Duration::from_secs(120),
        || acked.lock().expect("lock").len(),
        |n| *n >= WRITES / 3,
    )
    .await;
    c.crash(leader).await;
    drop(handles);
    for t in tasks {
        t.await.expect("client task");
    }
    let new_leader = c.leader(Duration::from_secs(5)).await.expect("a new leader");
    assert_ne!(new_leader, leader);
    let acked = acked.lock().expect("lock").clone();
    assert!(acked.len() >= WRITES / CLIENTS * CLIENTS);
    c.restart(leader).await;
    let head = assert_no_acknowledged_write_lost(&c, &acked).await;
    // Every replica's chain verifies from genesis with every signature and holds the
    // converged head (the leader may have committed an anchor on top since).
    for i in 0..3 {
        let dir = c.members[i].dir.clone();
        c.crash(i).await;
        let reader = LedgerReader::open(&dir).expect("open");
        let report = reader.verify(&|_| {}).expect("verify");
        assert!(report.is_ok(), "node {i}: {:?}", report.first_error);
        assert!(report.recorded_head.is_some_and(|h| h.0 >= head.seq), "node {i}: {:?}", report.recorded_head);
        let at = reader.range(head.seq, head.seq).expect("read");
        assert_eq!(at.first().map(|e| e.hash), Some(head.hash), "node {i} holds the converged head");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minority_partition_commits_nothing_and_catches_up_after_healing() {
    let mut t = fast_timeouts();
    t.write = Duration::from_millis(1500);
    let c = Cluster::form_with(5, 22, t).await;
    let leader = c.leader(Duration::from_secs(5)).await.expect("leader");
    let buddy = (leader + 1) % 5;
    let majority: Vec<usize> = (0..5).filter(|i| *i != leader && *i != buddy).collect();
    let minority_addrs = [c.members[leader].addr.as_str(), c.members[buddy].addr.as_str()];
    let majority_addrs: Vec<&str> = majority.iter().map(|i| c.members[*i].addr.as_str()).collect();
    c.net.partition(&minority_addrs, &majority_addrs);
    let before = c.sys(leader).head().expect("head").expect("genesis");
    // The old leader cannot commit: its write fails within the write timeout.
    let err = c.sys(leader).register_service("lost", vec![], vec![], vec![]).await.expect_err("minority write");
    assert!(matches!(err, mycnet_spores::Error::NoLeader { .. }), "{err}");
    assert_eq!(c.sys(leader).head().expect("head").expect("head").seq, before.seq, "minority applied nothing");
    // The majority elects a leader and commits.
    let id = c.sys(majority[0]).register_service("kept", vec![], vec![], vec![]).await.expect("majority write");
    c.net.heal();
    let head = assert_no_acknowledged_write_lost(&c, &BTreeSet::from([id])).await;
    assert!(head.seq > before.seq);
    for i in 0..5 {
        assert!(c.sys(i).services_by_name("lost").expect("q").is_empty(), "uncommitted tail was discarded on {i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_cut_off_past_the_purged_log_catches_up_from_a_snapshot() {
    catch_up_from_a_snapshot(false).await;
}

/// The leader keeps its snapshot in a file (`raft-snapshot` in its ledger's directory), not
/// in memory. Damaged under it, the file is not sent: the leader builds a new snapshot, the
/// follower catches up, and the leader's Raft keeps running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_snapshot_file_is_rebuilt_not_sent() {
    catch_up_from_a_snapshot(true).await;
}

/// The snapshot file of the node whose data dir is `dir`, if there is one.
fn snapshot_file(dir: &std::path::Path) -> Option<std::path::PathBuf> {
    Some(dir.join(mycnet_spores::store::inspect::LEDGER_SUBDIR).join("raft-snapshot")).filter(|p| p.exists())
}

async fn catch_up_from_a_snapshot(damage: bool) {
    let mut t = fast_timeouts();
    t.snapshot_every = 50;
    t.logs_kept_after_snapshot = 5;
    let c = Cluster::form_with(3, 23, t).await;
    let leader = c.leader(Duration::from_secs(5)).await.expect("leader");
    let lagger = (leader + 1) % 3;
    let others: Vec<&str> = (0..3).filter(|i| *i != lagger).map(|i| c.members[i].addr.as_str()).collect();
    c.net.partition(&[c.members[lagger].addr.as_str()], &others);
    let mut acked = BTreeSet::new();
    for _ in 0..200 {
        acked.insert(c.sys(leader).register_service("s", vec![], vec![], vec![]).await.expect("write"));
    }
    // The leader purges its log past what the lagger holds (openraft defers a purge while a
    // replication request that needs those entries is in flight, so give it a moment). What
    // the lagger holds is its last log index, not its applied one: it may have appended
    // entries whose commit it never heard of, and those let it catch up from the log alone.
    use openraft::async_runtime::WatchReceiver;
    let lag_last = c.sys(lagger).raft().expect("raft").metrics().borrow_watched().last_log_index;
    let raft = c.sys(leader).raft().expect("raft");
    raft.wait(Some(Duration::from_secs(10)))
        .metrics(|m| m.purged.map(|l| l.index) > lag_last, "leader purged past the lagger")
        .await
        .expect("leader purges its log past the lagger");
    let file = snapshot_file(&c.members[leader].dir).expect("the leader's snapshot is in a file");
    if damage {
        let mut bytes = std::fs::read(&file).expect("read the snapshot file");
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x40;
        std::fs::write(&file, bytes).expect("damage the snapshot file");
    }
    c.net.heal();
    assert_no_acknowledged_write_lost(&c, &acked).await;
    // The installed events are readable before openraft reports the snapshot (the file is
    // written, then Raft's metrics say so): wait for the report, not for the data.
    c.sys(lagger)
        .raft()
        .expect("raft")
        .wait(Some(Duration::from_secs(10)))
        .metrics(|m| m.snapshot.is_some(), "the lagger installed a snapshot")
        .await
        .expect("the lagger installed a snapshot");
    assert!(snapshot_file(&c.members[lagger].dir).is_some(), "the lagger keeps the snapshot it installed in a file");
    // The leader still commits.
    let id = c.sys(leader).register_service("after", vec![], vec![], vec![]).await.expect("the leader still commits");
    acked.insert(id);
    assert_no_acknowledged_write_lost(&c, &acked).await;
}

/// Crash and restart nodes at random points under writes. After each run: replicas agree,
/// each live projection equals a full audit replay of its ledger, and no node's term went
/// backwards across restarts. `SPORES_CRASH_SEEDS` sets the number of seeds (default 50).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_and_restart_at_random_points() {
    let seeds: u64 = std::env::var("SPORES_CRASH_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(50);
    for seed in 0..seeds {
        crash_restart_run(seed).await;
    }
}

async fn crash_restart_run(seed: u64) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut c = Cluster::form(3, 1000 + seed).await;
    let mut acked = BTreeSet::new();
    let mut terms = [0u64; 3];
    for _round in 0..3 {
        let writes = rng.random_range(1..8);
        for _ in 0..writes {
            let via = rng.random_range(0..3);
            if let Some(s) = c.handle(via) {
                if let Ok(id) = s.register_service("r", vec![], vec![], vec![]).await {
                    acked.insert(id);
                }
            }
        }
        let victim = rng.random_range(0..3);
        let mut before = None;
        if let Some(s) = c.handle(victim) {
            let st = s.status().expect("st");
            terms[victim] = terms[victim].max(st.term);
            before = Some((st.head.map(|h| h.seq), st.last_applied));
        }
        c.crash(victim).await;
        // Sometimes write while it is down.
        if rng.random_bool(0.5) {
            let via = (victim + 1) % 3;
            if let Ok(id) = c.sys(via).register_service("r", vec![], vec![], vec![]).await {
                acked.insert(id);
            }
        }
        c.restart(victim).await;
        let st = c.sys(victim).status().expect("st");
        assert!(
            st.term >= terms[victim],
            "seed {seed}: term went backwards on {victim}: {} < {}",
            st.term,
            terms[victim]
        );
        if let Some((head, applied)) = before {
            // The ledger reopens at least where it was; Raft re-applies at least as far.
            assert!(st.head.map(|h| h.seq) >= head, "seed {seed}: head went backwards on {victim}");
            let raft = c.sys(victim).raft().expect("raft");
            raft.wait(Some(Duration::from_secs(10)))
                .metrics(|m| m.last_applied.map(|l| l.index) >= applied, "applied index recovers")
                .await
                .expect("applied index never goes backwards for good");
        }
    }
    assert_no_acknowledged_write_lost(&c, &acked).await;
    for i in 0..3 {
        let live = c.sys(i).with_projection(|p| p.state().clone()).expect("state");
        let dir = c.members[i].dir.clone();
        c.crash(i).await;
        let (replayed, _) = LedgerReader::open(&dir)
            .expect("open")
            .replay(&ReplayOptions { audit: true, stop: StopAt::End }, &|_| {})
            .expect("replay");
        assert_eq!(replayed.state(), &live, "seed {seed}: node {i} projection differs from its replay");
    }
}

/// A leader cut off from the majority stops claiming it leads: within an election timeout its
/// status says it is unconfirmed, after the grace period its mode is Partition Recovery, and
/// its answers say they may be stale; once healed it follows the new leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_leader_reports_itself_unconfirmed_and_enters_partition_recovery() {
    let c = Cluster::form(3, 0x1e).await;
    let leader = c.leader(Duration::from_secs(5)).await.expect("leader");
    let st = c.sys(leader).status().expect("status");
    assert_eq!(st.leader_confirmed, Some(true), "a leader with its majority is confirmed");
    let fresh = c.sys(leader).services_by_name_answer("none").expect("answer");
    assert!(fresh.is_none() || fresh.is_some_and(|t| !t.stale));
    let answer = c.sys(leader).node_answer(&c.members[leader].key.node_id()).expect("answer").expect("known");
    assert!(!answer.stale, "a confirmed leader's answer is current");

    let others: Vec<&str> = (0..3).filter(|i| *i != leader).map(|i| c.members[i].addr.as_str()).collect();
    c.net.partition(&[c.members[leader].addr.as_str()], &others);
    let (_, confirmed) = crate::wait::until(
        "the isolated leader in partition recovery (mode, leader confirmed)",
        Duration::from_secs(15),
        || {
            let st = c.sys(leader).status().expect("status");
            (st.mode, st.leader_confirmed)
        },
        |(mode, _)| *mode == mycnet_spores::OperationalMode::PartitionRecovery,
    )
    .await;
    assert_ne!(confirmed, Some(true), "an isolated leader does not claim to be confirmed");
    let answer = c.sys(leader).node_answer(&c.members[leader].key.node_id()).expect("answer").expect("known");
    assert!(answer.stale, "an isolated node's answers say they may be stale");

    c.net.heal();
    crate::wait::until(
        "the healed node back in normal operation (its mode)",
        Duration::from_secs(15),
        || c.sys(leader).status().expect("status").mode,
        |mode| *mode == mycnet_spores::OperationalMode::NormalOperation,
    )
    .await;
}
