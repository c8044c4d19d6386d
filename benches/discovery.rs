//! Discovery benches (issue 21): what liveness and trust filtering cost a query, and how soon
//! a remote watcher sees a write, against limits measured in the same run.
//!
//! Run: `cargo bench --bench discovery`. Prints:
//! - queries at 10k services: `find_services` (passing services of active nodes, a minimum
//!   trust) against the plain unfiltered lookup by name (target ≥ 0.8 ×);
//! - over QUIC on 127.0.0.1, a 3-voter cluster: from a write's start to a remote watcher
//!   (`RemoteWatch`, another connection, the read-only protocol) receiving it, against the
//!   1-client commit latency measured in the same run (median target ≤ 1.5 ×; p99 reported).
//!
//! `SPORES_BENCH_WATCH_ROUNDS` sets the watch rounds (default 200).

// tests and benches: a panic is the failure report
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs, unreachable_pub)]

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use mycnet_spores::core::event::EventFilter;
use mycnet_spores::core::types::NetworkIdentityRecord;
use mycnet_spores::node::RemoteWatch;
use mycnet_spores::{
    Endpoint, EventBody, NodeAnnouncement, NodeKey, NodeRole, Projection, ServiceAnnouncement, ServiceFilter,
    SignedEvent, Timestamp, TrustScore,
};

#[path = "common/cluster.rs"]
mod cluster;
use cluster::{median, Net};

/// A registry of 10,000 services (100 names, 100 instances each) on 200 nodes: every tenth
/// node committed offline, every 20th service critical, trust spread from 0.100 to 1.000.
fn registry() -> Projection {
    let founder = NodeKey::from_seed([1; 32]);
    let keys: Vec<NodeKey> = (0..199u32)
        .map(|i| {
            let mut seed = [2u8; 32];
            seed[..4].copy_from_slice(&i.to_be_bytes());
            NodeKey::from_seed(seed)
        })
        .collect();
    let announce = |k: &NodeKey, role| NodeAnnouncement {
        node: k.node_id(),
        name: format!("n-{}", k.node_id().short()),
        role,
        addresses: vec!["10.0.0.1:7400".into()],
        capabilities: vec![],
    };
    let network = NetworkIdentityRecord {
        network_id: uuid::Uuid::from_u128(21),
        network_name: "bench".into(),
        genesis_timestamp: Timestamp(1),
    };
    let genesis = SignedEvent::genesis(&founder, network, announce(&founder, NodeRole::Sclerotium));
    let fp = genesis.fingerprint;
    let mut p = Projection::new();
    p.append(genesis).expect("genesis");
    let mut t = 1;
    let mut commit = |p: &mut Projection, k: &NodeKey, body: EventBody| {
        t += 1;
        p.append(SignedEvent::sign(k, fp, Timestamp(t), body)).expect("accepted");
    };
    for (i, k) in keys.iter().enumerate() {
        commit(&mut p, &founder, EventBody::NodeJoined(announce(k, NodeRole::Rhizomorph)));
        let score = TrustScore(100 + (i as u16 * 900 / 199));
        commit(&mut p, &founder, EventBody::TrustScoreChanged { node: k.node_id(), score, reason: "bench".into() });
    }
    for i in 0..10_000u128 {
        let k = &keys[(i % 199) as usize];
        let service = ServiceAnnouncement {
            service_id: uuid::Uuid::from_u128(i + 1),
            name: format!("svc-{}", i % 100).into(),
            node: k.node_id(),
            capabilities: vec!["storage".into()].into(),
            endpoints: vec![Endpoint { protocol: "tcp".into(), address: "10.0.0.1:9000".into() }].into(),
            metadata: cluster::metadata().into_iter().map(|(k, v)| (k.into(), v.into())).collect(),
        };
        commit(&mut p, k, EventBody::ServiceRegistered(service));
    }
    for k in keys.iter().step_by(10) {
        commit(&mut p, &founder, EventBody::NodeWentOffline { node: k.node_id(), last_seen: Timestamp(2) });
    }
    // Every 20th service's health check fails.
    for i in (0..10_000u128).step_by(20) {
        let k = &keys[(i % 199) as usize];
        let body = EventBody::ServiceHealthChanged {
            service_id: uuid::Uuid::from_u128(i + 1),
            passing: false,
            reason: "bench".into(),
        };
        commit(&mut p, k, body);
    }
    p
}

fn p99(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[(v.len() * 99 / 100).min(v.len() - 1)]
}

/// Queries per second of `f` over every service name of `p`.
fn rate(p: &Projection, names: &[String], f: impl Fn(&Projection, &str) -> usize) -> f64 {
    let t = Instant::now();
    let mut n = 0u64;
    let mut seen = 0usize;
    while t.elapsed() < Duration::from_secs(2) {
        for name in names {
            seen += f(p, name);
            n += 1;
        }
    }
    std::hint::black_box(seen);
    n as f64 / t.elapsed().as_secs_f64()
}

fn queries(c: &mut Criterion) {
    let p = registry();
    let mut names: Vec<String> = p.services().map(|s| s.service.name.to_string()).collect();
    names.sort();
    names.dedup();
    let filter = |name: &str| ServiceFilter::name(name).min_trust(TrustScore(300));
    let mut g = c.benchmark_group("discovery_query");
    g.sample_size(20);
    g.bench_function("services_by_name_unfiltered", |b| {
        b.iter(|| names.iter().map(|n| p.services_by_name(n).cloned().collect::<Vec<_>>().len()).sum::<usize>())
    });
    g.bench_function("find_services_live_min_trust", |b| {
        b.iter(|| names.iter().map(|n| p.find_services(&filter(n)).len()).sum::<usize>())
    });
    g.finish();
    let plain = rate(&p, &names, |p, n| p.services_by_name(n).cloned().collect::<Vec<_>>().len());
    let filtered = rate(&p, &names, |p, n| p.find_services(&filter(n)).len());
    let offline = p.offline_nodes().count();
    let critical = p.state().critical.len();
    println!("\n=== discovery summary: queries ===");
    println!(
        "{} services ({critical} critical) on {} nodes ({offline} offline), {} names",
        p.services().count(),
        p.nodes().count(),
        names.len()
    );
    println!("{:>48}: {plain:.0}", "plain lookup by name (queries/s)");
    println!("{:>48}: {filtered:.0}", "live + passing + min-trust find_services (q/s)");
    println!("filtered / unfiltered = {:.3} (target >= 0.8)", filtered / plain);
}

fn watch(_c: &mut Criterion) {
    let rounds: usize = std::env::var("SPORES_BENCH_WATCH_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(200);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let (commit, seen) = rt.block_on(async {
        let systems = cluster::form(dir.path(), 3, Net::Quic).await;
        let leader = systems[0].clone();
        // Warm up: connections, the leader's first heartbeats.
        for i in 0..20 {
            leader.register_service(&format!("warm-{i}"), vec![], vec![], vec![]).await.expect("write");
        }
        // 1 client, commit latency over QUIC (the write returns once committed and applied).
        let mut commit = Vec::with_capacity(rounds);
        for i in 0..rounds {
            let t = Instant::now();
            leader.register_service(&format!("c-{i}"), vec![], vec![], vec![]).await.expect("write");
            commit.push(t.elapsed());
        }
        // A watcher in another client, over the read-only protocol, waiting when each write
        // starts; the clock stops when it holds the event. On the leader, and on a follower
        // (which applies a commit when the next AppendEntries or heartbeat tells it).
        let mut seen_by = Vec::new();
        for node in [&systems[0], &systems[1]] {
            let addr = node.local_addr().expect("addr");
            seen_by.push(watch_rounds(&leader, addr, rounds).await);
        }
        for s in systems.iter() {
            s.shutdown().await.expect("shutdown");
        }
        (commit, seen_by)
    });
    let cm = median(commit.clone());
    println!("\n=== discovery summary: watch over QUIC ===");
    println!("{:>56}: {:.0} / {:.0}", "1-client commit median / p99 (us)", cm.as_micros(), p99(commit).as_micros());
    for (who, (seen, same)) in ["leader", "follower"].iter().zip(seen) {
        let wm = median(seen.clone());
        let sm = median(same);
        let label = format!("write start -> watcher of the {who} median / p99 (us)");
        println!("{label:>56}: {:.0} / {:.0}", wm.as_micros(), p99(seen).as_micros());
        println!("{:>56}: {:.0}", "the same writes' own commit median (us)", sm.as_micros());
        println!(
            "watch of the {who}: median / commit median = {:.3} (target <= 1.5); / the same writes' commit = {:.3}",
            wm.as_secs_f64() / cm.as_secs_f64(),
            wm.as_secs_f64() / sm.as_secs_f64()
        );
    }
}

/// `rounds` writes through `leader`, each started while a `RemoteWatch` of `addr` waits; how
/// long from each write's start until the watcher held it, and until the write returned
/// (committed).
async fn watch_rounds(
    leader: &mycnet_spores::SporeSystem,
    addr: String,
    rounds: usize,
) -> (Vec<Duration>, Vec<Duration>) {
    let from = leader.head().expect("head").map_or(0, |h| h.seq + 1);
    let filter = EventFilter { kinds: vec!["service_registered".into()], ..Default::default() };
    let mut w = RemoteWatch::new(addr, None, filter, from);
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Instant>(1);
    let watcher = tokio::spawn(async move {
        let mut seen = Vec::with_capacity(rounds);
        while seen.len() < rounds {
            w.next().await.expect("watched");
            seen.push(Instant::now());
            let _ = tx.send(Instant::now()).await;
        }
        seen
    });
    let mut started = Vec::with_capacity(rounds);
    let mut committed = Vec::with_capacity(rounds);
    for i in 0..rounds {
        // Let the watcher's next query reach the node first.
        tokio::time::sleep(Duration::from_millis(5)).await;
        let t = Instant::now();
        started.push(t);
        leader.register_service(&format!("w-{i}"), vec![], vec![], vec![]).await.expect("write");
        committed.push(t.elapsed());
        rx.recv().await.expect("the watcher saw it");
    }
    let seen = watcher.await.expect("watcher");
    (seen.iter().zip(&started).map(|(s, t)| s.duration_since(*t)).collect(), committed)
}

criterion_group!(benches, queries, watch);
criterion_main!(benches);
