//! Three voters over real QUIC, each behind a [`UdpProxy`](crate::udp_proxy) that delays and
//! drops datagrams: the timeouts follow the link. Nodes bind their own sockets and advertise
//! their proxy's address, so every packet between them crosses a proxy.
//!
//! `cargo test -p mycnet-spores --test it wan -- --include-ignored --nocapture` runs the full
//! 200-write version too and prints the figures.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mycnet_spores::net::quic::{Admission, QuicBackend};
use mycnet_spores::{NetworkIdentity, NodeKey, SporeSystem, Timeouts};

use crate::udp_proxy::{ping_through, LinkFaults, UdpProxy};

/// The link of issue 19: 50 ± 20 ms one way, 10 % of the datagrams lost, each direction.
const WAN: LinkFaults = LinkFaults { delay: Duration::from_millis(50), jitter: Duration::from_millis(20), loss: 0.1 };

struct WanVoter {
    system: SporeSystem,
    proxy: UdpProxy,
}

/// A voter bound on 127.0.0.1 behind a fresh proxy, advertising the proxy's address.
async fn wan_voter(root: &std::path::Path, i: u8, key_base: u8, faults: LinkFaults, timeouts: &Timeouts) -> WanVoter {
    let key = NodeKey::from_seed([key_base + i; 32]);
    let proxy = UdpProxy::bind(faults, 1000 + u64::from(key_base) + u64::from(i)).await;
    let system = SporeSystem::builder()
        .data_dir(root.join(format!("n{i}")))
        .key(key.clone())
        .addr("127.0.0.1:0")
        .advertise(proxy.addr.to_string())
        .network(Arc::new(QuicBackend::new(key, Admission::allow_all())))
        .timeouts(timeouts.clone())
        .build();
    system.start().await.expect("start");
    let bound: std::net::SocketAddr = system.local_addr().expect("bound").parse().expect("socket address");
    assert_eq!(system.peer().expect("peer").addr, proxy.addr.to_string(), "peers are told the proxy's address");
    assert_ne!(bound, proxy.addr);
    proxy.forward_to(bound);
    WanVoter { system, proxy }
}

/// Forms three voters behind proxies: n0 initializes, admits and adds the others, all through
/// the proxies.
async fn form_wan_cluster(
    root: &std::path::Path,
    key_base: u8,
    faults: LinkFaults,
    timeouts: &Timeouts,
) -> Vec<WanVoter> {
    let mut voters = Vec::new();
    for i in 0..3 {
        voters.push(wan_voter(root, i, key_base, faults, timeouts).await);
    }
    let identity = NetworkIdentity {
        network_id: uuid::Uuid::from_u128(0xa_0000 + u128::from(key_base)),
        network_name: "wan-test".into(),
        genesis_timestamp: chrono::Utc::now(),
    };
    voters[0].system.initialize(identity).await.expect("initialize");
    for i in 1..3 {
        let (ann, peer) =
            (voters[i].system.announcement().expect("announcement"), voters[i].system.peer().expect("peer"));
        voters[0].system.admit(ann).await.expect("admit");
        voters[0].system.add_member(peer, true).await.expect("add voter");
    }
    voters
}

/// (leader index, term) once every voter agrees on both.
async fn agreed_leader(voters: &[WanVoter], timeout: Duration) -> (usize, u64) {
    crate::wait::some("every voter to agree on one leader and term", timeout, || {
        let st: Vec<_> = voters.iter().filter_map(|v| v.system.status().ok()).collect();
        let first = st.first()?;
        let leader = first.leader?;
        let agree = st.len() == voters.len() && st.iter().all(|s| s.leader == Some(leader) && s.term == first.term);
        let i = voters.iter().position(|v| v.system.node_id().ok() == Some(leader))?;
        agree.then_some((i, first.term))
    })
    .await
}

/// The slowest of ten 4 KiB writes + fdatasync in `dir`: the cost of one log sync, bounded
/// generously (a commit waits for two: the leader's and a follower's).
fn fsync_bound(dir: &std::path::Path) -> Duration {
    use std::io::Write;
    let mut f = std::fs::File::create(dir.join("fsync-probe")).expect("probe file");
    (0..10)
        .map(|_| {
            let started = Instant::now();
            f.write_all(&[7u8; 4096]).expect("write");
            f.sync_data().expect("sync");
            started.elapsed()
        })
        .max()
        .unwrap_or_default()
}

fn percentile(sorted: &[Duration], p: usize) -> Duration {
    sorted[(sorted.len() * p / 100).min(sorted.len() - 1)]
}

/// Concurrent writers at the leader, where a commit's latency is defined (propose, log sync,
/// replication to a follower and its sync, apply, acknowledge).
const LEADER_WRITERS: usize = 6;
/// Concurrent writers at the followers (one at each), whose writes are forwarded to the leader
/// over the same link: one more round trip (and its losses) on top of the commit.
const FORWARDING_WRITERS: usize = 2;

/// `writes` writes from [`LEADER_WRITERS`] + [`FORWARDING_WRITERS`] concurrent writers over the
/// issue's WAN link, with the WAN profile.
async fn writes_commit_over_a_lossy_wan(writes: usize, key_base: u8) {
    crate::quic::trace();
    let root = tempfile::tempdir().expect("tempdir");
    // The round trip every pair of nodes sees: through one proxy each way.
    let rtts = ping_through(WAN, u64::from(key_base), 200).await;
    let rtt = percentile(&rtts, 50);
    let fsync = fsync_bound(root.path());
    let voters = Arc::new(form_wan_cluster(root.path(), key_base, WAN, &Timeouts::wan()).await);
    let (leader, term) = agreed_leader(&voters, Duration::from_secs(30)).await;

    let started = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let mut writers = tokio::task::JoinSet::new();
    for w in 0..LEADER_WRITERS + FORWARDING_WRITERS {
        let (voters, next) = (voters.clone(), next.clone());
        let via = if w < FORWARDING_WRITERS { (leader + 1 + w) % 3 } else { leader };
        writers.spawn(async move {
            let mut done = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= writes {
                    return done;
                }
                let t = Instant::now();
                let r =
                    voters[via].system.register_service(&format!("svc-{i}"), vec![], vec!["wan".into()], vec![]).await;
                done.push((i, r.map(|_| ()), t.elapsed(), via == leader));
            }
        });
    }
    let mut results = Vec::new();
    while let Some(r) = writers.join_next().await {
        results.extend(r.expect("writer"));
    }
    let run = started.elapsed();
    let failed: Vec<_> = results.iter().filter_map(|r| r.1.as_ref().err().map(|e| (r.0, e.to_string()))).collect();
    let acked = results.len() - failed.len();
    let latencies = |at_leader: bool| {
        let mut l: Vec<Duration> = results.iter().filter(|r| r.1.is_ok() && r.3 == at_leader).map(|r| r.2).collect();
        l.sort();
        l
    };
    let (commits, forwarded) = (latencies(true), latencies(false));
    let (p50, p99) = (percentile(&commits, 50), percentile(&commits, 99));
    let leader_rtt = voters[(leader + 1) % 3]
        .system
        .node_id()
        .ok()
        .and_then(|f| voters[leader].system.round_trip(&f).ok().flatten());
    eprintln!(
        "WAN {writes} writes: RTT through the proxy p50 {rtt:?} (p10 {:?}, p90 {:?}; {} of 200 pings answered), fsync bound {fsync:?}; \
         {acked} acknowledged in {run:?}; commit (at the leader) p50 {p50:?} p99 {p99:?}; forwarded p50 {:?} p99 {:?}; \
         the leader's estimate of a follower {leader_rtt:?}",
        percentile(&rtts, 10),
        percentile(&rtts, 90),
        rtts.len(),
        percentile(&forwarded, 50),
        percentile(&forwarded, 99),
    );

    let (relayed, dropped) = voters.iter().fold((0, 0), |(r, d), v| {
        (r + v.proxy.stats.relayed.load(Ordering::Relaxed), d + v.proxy.stats.dropped.load(Ordering::Relaxed))
    });
    eprintln!("WAN {writes} writes: the proxies relayed {relayed} datagrams and dropped {dropped}");
    assert!(dropped * 20 >= relayed, "the link was lossy: {dropped} of {} dropped", relayed + dropped);
    // At least 99 % acknowledged.
    assert!(acked * 100 >= writes * 99, "{acked} of {writes} acknowledged; failed: {failed:?}");
    // The median commit: 1.3–1.5 round trips on a quiet machine with replication on append
    // streams, 2.2–2.8 before them (printed above; the figure belongs in the notes, speed is
    // measured by benches). With the suite's other tests sharing the two cores it was seen at
    // 4.2 round trips before, so the test only catches a broken path — a retransmission timeout
    // or a re-election on most writes — at twice that.
    let bound = rtt * 8 + fsync * 2;
    eprintln!(
        "WAN median commit / (4 × RTT + 2 × fsync) = {:.2}",
        p50.as_secs_f64() / (rtt * 4 + fsync * 2).as_secs_f64()
    );
    assert!(p50 <= bound, "median commit {p50:?} exceeds 8 × RTT {rtt:?} + 2 × fsync {fsync:?} = {bound:?}");
    // No leader change during the run.
    for v in voters.iter() {
        let st = v.system.status().expect("status");
        assert_eq!(st.term, term, "the term changed during the run");
    }
    assert_eq!(agreed_leader(&voters, Duration::from_secs(10)).await, (leader, term));
    // The node measured the link, and its deadlines are at least a round trip.
    let est = leader_rtt.expect("the leader measured its round trips to a follower");
    assert!(est.srtt >= rtt / 2 && est.deadline >= rtt, "{est:?} against a round trip of {rtt:?}");
    // And an operator reads the same in the leader's /metrics, for each follower.
    let text = voters[leader].system.metrics_text().expect("metrics");
    for f in (1..3).map(|k| &voters[(leader + k) % 3]) {
        let peer = f.system.node_id().expect("node id").short();
        let read = |name: &str| crate::metrics::sample(&text, &format!("{name}{{peer=\"{peer}\"}}"));
        let srtt = read("spores_peer_round_trip_seconds").unwrap_or_else(|| panic!("{peer}'s round trip:\n{text}"));
        let deadline = read("spores_peer_call_deadline_seconds").expect("the call deadline");
        assert!(srtt >= rtt.as_secs_f64() / 2.0 && deadline >= srtt, "{peer}: {srtt} s, deadline {deadline} s");
        assert!(read("spores_peer_call_timeouts_total").is_some(), "{peer}'s timeouts:\n{text}");
    }
    // Every acknowledged write is on every voter.
    let want = acked;
    for v in voters.iter() {
        crate::wait::some("every acknowledged write on every voter", Duration::from_secs(20), || {
            (v.system.services_by_capability("wan").ok()?.len() >= want).then_some(())
        })
        .await;
    }
    let mut voters = Arc::into_inner(voters).expect("sole owner");
    for v in voters.iter_mut() {
        v.system.shutdown().await.expect("shutdown");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wan_writes_commit_over_a_lossy_link_without_leader_changes() {
    writes_commit_over_a_lossy_wan(60, 150).await;
}

/// The full run of issue 19: 200 writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "about a minute; run with --include-ignored"]
async fn wan_200_writes_commit_over_a_lossy_link_without_leader_changes() {
    writes_commit_over_a_lossy_wan(200, 160).await;
}

/// A link slower than openraft's per-call limit (the heartbeat interval): a 300 ms round trip
/// against a 150 ms heartbeat, no loss. openraft alone would give up on every AppendEntries
/// before its answer came and nothing would commit; with deadlines from the measured round trips
/// every write commits, each within a few round trips.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wan_replication_outlasts_openrafts_ttl_on_a_link_slower_than_the_heartbeat() {
    crate::quic::trace();
    let slow = LinkFaults { delay: Duration::from_millis(150), jitter: Duration::from_millis(10), loss: 0.0 };
    let root = tempfile::tempdir().expect("tempdir");
    let timeouts = Timeouts::wan();
    assert!(timeouts.heartbeat * 2 <= slow.delay * 2, "the round trip is at least twice openraft's limit");
    let voters = form_wan_cluster(root.path(), 170, slow, &timeouts).await;
    let (leader, term) = agreed_leader(&voters, Duration::from_secs(30)).await;
    for i in 0..5 {
        let started = Instant::now();
        voters[leader]
            .system
            .register_service(&format!("slow-{i}"), vec![], vec!["slow".into()], vec![])
            .await
            .expect("committed");
        // One round trip to a follower and two syncs; anything near the write timeout means the
        // calls were cut and retried.
        assert!(started.elapsed() < Duration::from_secs(2), "write {i} took {:?}", started.elapsed());
    }
    assert_eq!(agreed_leader(&voters, Duration::from_secs(10)).await, (leader, term));
    for v in voters {
        v.system.shutdown().await.expect("shutdown");
    }
}

/// The proxy itself: delay, jitter and loss as configured, and a plain relay without faults.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_proxy_delays_and_drops_as_configured() {
    let faults = LinkFaults { delay: Duration::from_millis(50), jitter: Duration::from_millis(20), loss: 0.1 };
    let rtts = ping_through(faults, 7, 200).await;
    // A ping and its answer each cross the proxy once: 60..140 ms, lost with 1 - 0.9² = 19 %.
    let lost = 200 - rtts.len();
    assert!((15..=65).contains(&lost), "{lost} of 200 pings lost");
    assert!(rtts[0] >= Duration::from_millis(60), "fastest {:?}", rtts[0]);
    let median = rtts[rtts.len() / 2];
    assert!((Duration::from_millis(85)..Duration::from_millis(125)).contains(&median), "median {median:?}");
    // Without faults it is a plain relay.
    let clean = LinkFaults { delay: Duration::ZERO, jitter: Duration::ZERO, loss: 0.0 };
    let rtts = ping_through(clean, 7, 50).await;
    assert_eq!(rtts.len(), 50);
    assert!(rtts[25] < Duration::from_millis(20), "{:?}", rtts[25]);
}
