//! Profiling harness for the 64-client write path (not a criterion bench): forms the same
//! 3-voter in-process cluster as `benches/primary.rs`, writes `SPORES_PROFILE_EVENTS`
//! (default 20 480) pre-signed events from 64 concurrent clients, and reports wall time, the
//! rate, and the CPU the process spent per committed event, split by thread kind (read from
//! `/proc/self/task/*/stat`). CPU per event is much steadier than the rate on a shared VM:
//! use it to compare two builds.
//!
//! ```text
//! cargo bench --bench primary_profile
//! ```
//!
//! `SPORES_PROFILE_ROUNDS` (default 3) repeats the write run on the same cluster;
//! `SPORES_PROFILE_NODES` (default 3) sets the number of voters (1: the leader's own cost).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mycnet_spores::net::inproc::InProcNetwork;
use mycnet_spores::{Endpoint, EventBody, NetworkIdentity, NodeKey, ServiceAnnouncement, SignedEvent, SporeSystem, Timeouts, Timestamp};

const CLIENTS: usize = 64;

/// CPU seconds so far of each thread of this process, keyed by thread id, with its name.
fn thread_cpu() -> BTreeMap<u32, (String, f64)> {
    // Clock ticks per second: 100 on Linux (USER_HZ), the unit of utime/stime in stat.
    const HZ: f64 = 100.0;
    let mut out = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else { return out };
    for entry in dir.flatten() {
        let Ok(tid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        // "tid (name) state ..." — the name may hold spaces, so split at the last ')'.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else { continue };
        let name = stat[open + 1..close].to_string();
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        // After the name: state is field 0, utime field 11, stime field 12.
        let (Some(u), Some(s)) = (fields.get(11).and_then(|v| v.parse::<f64>().ok()), fields.get(12).and_then(|v| v.parse::<f64>().ok())) else {
            continue;
        };
        out.insert(tid, (name, (u + s) / HZ));
    }
    out
}

/// The kind of a thread, from its name.
fn kind(name: &str) -> &'static str {
    match name {
        n if n.starts_with("tokio-rt-worker") => "tokio (workers + blocking pool)",
        n if n.starts_with("spores-raft-flu") => "raft log flusher (fsync)",
        n if n.starts_with("fjall") => "fjall background",
        n if n.starts_with("ledger-chain") => "ledger chain helper",
        n if n.starts_with("primary_profile") || n.starts_with("main") => "main (bench driver)",
        n if n.starts_with("rayon") => "rayon pool (verification)",
        _ => "other",
    }
}

async fn form_cluster(dir: &std::path::Path, nodes: u8) -> Vec<Arc<SporeSystem>> {
    let net = InProcNetwork::new(1);
    let mut systems = Vec::new();
    for i in 0..nodes {
        let key = NodeKey::from_seed([i + 1; 32]);
        let mut s = SporeSystem::builder()
            .data_dir(dir.join(format!("n{i}")))
            .key(key)
            .addr(format!("n{i}"))
            .inproc(&net)
            .timeouts(Timeouts { heartbeat: Duration::from_millis(50), election_min: Duration::from_millis(300), election_max: Duration::from_millis(600), ..Timeouts::default() })
            .build();
        s.start().await.expect("start");
        systems.push(s);
    }
    systems[0]
        .initialize(NetworkIdentity { network_id: uuid::Uuid::from_u128(7), network_name: "bench".into(), genesis_timestamp: chrono::Utc::now() })
        .await
        .expect("init");
    for i in 1..systems.len() {
        let ann = systems[i].announcement().expect("ann");
        let peer = systems[i].peer().expect("peer");
        systems[0].admit(ann).await.expect("admit");
        systems[0].add_member(peer, true).await.expect("add");
    }
    systems.into_iter().map(Arc::new).collect()
}

fn presigned(s: &SporeSystem, n: usize) -> Vec<SignedEvent> {
    let key = NodeKey::from_seed([1; 32]);
    let fp = s.status().expect("status").fingerprint.expect("fingerprint");
    (0..n)
        .map(|_| {
            let body = EventBody::ServiceRegistered(ServiceAnnouncement {
                service_id: uuid::Uuid::new_v4(),
                name: "bench-svc".into(),
                node: key.node_id(),
                capabilities: vec!["storage".into()],
                endpoints: vec![Endpoint { protocol: "quic".into(), address: "127.0.0.1:7400".into() }],
                metadata: vec![("region".into(), "eu-west".into()), ("version".into(), "1.2.3".into())],
            });
            SignedEvent::sign(&key, fp, Timestamp::now(), body)
        })
        .collect()
}

/// Signatures/s of `verify_batch` in batches of 64 on one core, over about `secs` seconds (the
/// raw limit V of `benches/primary.rs`, measured next to each run: this VM's speed drifts).
fn raw_verify_rate(secs: f64) -> f64 {
    let keys: Vec<NodeKey> = (0..64u8).map(|i| NodeKey::from_seed([i + 1; 32])).collect();
    let msgs: Vec<Vec<u8>> = (0..64u8).map(|i| vec![i; 256]).collect();
    let sigs: Vec<ed25519_dalek::Signature> =
        keys.iter().zip(&msgs).map(|(k, m)| ed25519_dalek::Signature::from_bytes(&k.sign(m).0)).collect();
    let vks: Vec<ed25519_dalek::VerifyingKey> = keys.iter().map(|k| k.verifying_key().0).collect();
    let refs: Vec<&[u8]> = msgs.iter().map(|m| m.as_slice()).collect();
    let t = Instant::now();
    let mut n = 0usize;
    while t.elapsed().as_secs_f64() < secs {
        ed25519_dalek::verify_batch(&refs, &sigs, &vks).expect("valid batch");
        n += 64;
    }
    n as f64 / t.elapsed().as_secs_f64()
}

fn main() {
    let total: usize = std::env::var("SPORES_PROFILE_EVENTS").ok().and_then(|v| v.parse().ok()).unwrap_or(20_480) / CLIENTS * CLIENTS;
    let rounds: usize = std::env::var("SPORES_PROFILE_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
    // Named, so their CPU is told apart from tokio's (unnamed threads inherit their creator's name).
    let _ = rayon::ThreadPoolBuilder::new().thread_name(|i| format!("rayon-{i}")).build_global();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let nodes: u8 = std::env::var("SPORES_PROFILE_NODES").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
    let systems = rt.block_on(form_cluster(dir.path(), nodes));
    for round in 0..rounds {
        let mut events = presigned(&systems[0], total);
        let v_before = raw_verify_rate(0.3);
        let before = thread_cpu();
        let t = Instant::now();
        rt.block_on(async {
            let mut tasks = Vec::new();
            for _ in 0..CLIENTS {
                let s = systems[0].clone();
                let mine: Vec<SignedEvent> = events.split_off(events.len() - total / CLIENTS);
                tasks.push(tokio::spawn(async move {
                    for ev in mine {
                        s.submit(ev).await.expect("write");
                    }
                }));
            }
            for t in tasks {
                t.await.expect("task");
            }
        });
        let wall = t.elapsed().as_secs_f64();
        let after = thread_cpu();
        let mut by_kind: BTreeMap<&str, f64> = BTreeMap::new();
        for (tid, (name, cpu)) in &after {
            let was = before.get(tid).map_or(0.0, |b| b.1);
            *by_kind.entry(kind(name)).or_default() += cpu - was;
        }
        let cpu: f64 = by_kind.values().sum();
        let v = (v_before + raw_verify_rate(0.3)) / 2.0;
        eprintln!(
            "round {round}: {total} events in {wall:.3} s = {:.0} ev/s = {:.3} of 2V/3 (V {v:.0}/s); CPU {:.0} % of one core, {:.1} us per event = {:.2} / V",
            total as f64 / wall,
            total as f64 / wall / (2.0 * v / 3.0),
            100.0 * cpu / wall,
            1e6 * cpu / total as f64,
            cpu / total as f64 * v
        );
        for (k, v) in &by_kind {
            eprintln!("    {k:>34}: {:6.1} us/event", 1e6 * v / total as f64);
        }
    }
    for s in &systems {
        if let Ok(raft) = s.raft() {
            let _ = rt.block_on(raft.shutdown());
        }
    }
}
