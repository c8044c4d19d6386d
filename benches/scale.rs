//! Scale bench (issue 24, item 6; first part: the baseline): builds a registry through the
//! real write path — one durable voter, 64 concurrent writers, every event signed by the node
//! it is about — and prints the write rate, query latencies, resident memory per service,
//! restart time and disk per event.
//!
//! Run: `cargo bench --bench scale`. `SPORES_SCALE=NODES/SERVICES` (default `2000/20000`;
//! the issue also asks for `10000/100000`). Services share 1,000 names (20 a name at 20k, 100
//! at 100k) and 8 capabilities. Lookups are timed while the registrations commit (a reader
//! thread, one lookup pair every 200 µs) and again on the idle node afterwards. The projection's
//! heap is measured twice: as the node holds it (its last snapshot, freed after the node stops)
//! and as a restart holds it (decoded from a checkpoint, indexes rebuilt).

// tests and benches: a panic is the failure report
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs, unreachable_pub, unsafe_code)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use mycnet_spores::{EventBody, NetworkIdentity, NodeAnnouncement, NodeRole, SignedEvent, SporeSystem, Timestamp};

const WRITERS: usize = 64;

#[path = "common/heap.rs"]
mod heap;
use heap::live;

/// Resident memory of this process, in bytes (`/proc/self/statm`, 4 KiB pages).
fn resident() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("statm");
    statm.split_whitespace().nth(1).and_then(|p| p.parse::<u64>().ok()).expect("resident pages") * 4096
}

/// Bytes of the files under `path` (recursively) whose path `counts`.
fn files_bytes(path: &std::path::Path, counts: &dyn Fn(&std::path::Path) -> bool) -> u64 {
    std::fs::read_dir(path)
        .map(|rd| {
            rd.flatten()
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => files_bytes(&e.path(), counts),
                    Ok(m) if counts(&e.path()) => m.len(),
                    _ => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

fn dir_bytes(path: &std::path::Path) -> u64 {
    files_bytes(path, &|_| true)
}

/// Bytes of fjall's journal files (`*.jnl`) under `path`: bounded (sealed files are evicted
/// past the ledger's 96 MiB, the active one is sealed past 64 MB), and until memtables are
/// flushed they hold the same events as the tables.
fn journal_bytes(path: &std::path::Path) -> u64 {
    files_bytes(path, &|p| p.extension().is_some_and(|x| x == "jnl"))
}

fn percentile(mut v: Vec<Duration>, p: usize) -> Duration {
    v.sort();
    v[(v.len() * p / 100).min(v.len() - 1)]
}

/// Submits `events` from `WRITERS` concurrent writers; returns events/s.
async fn write_all(n: &SporeSystem, events: Vec<SignedEvent>) -> f64 {
    let count = events.len();
    let queue = Arc::new(std::sync::Mutex::new(events));
    let t = Instant::now();
    let mut writers = Vec::new();
    for _ in 0..WRITERS {
        let (n, queue) = (n.clone(), queue.clone());
        writers.push(tokio::spawn(async move {
            loop {
                let Some(ev) = queue.lock().expect("queue").pop() else { return };
                n.submit(ev).await.expect("committed");
            }
        }));
    }
    for w in writers {
        w.await.expect("writer");
    }
    count as f64 / t.elapsed().as_secs_f64()
}

fn main() {
    let (nodes, services) = heap::scale((2_000, 20_000));
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let root = std::env::var_os("CARGO_TARGET_DIR").map(std::path::PathBuf::from).unwrap_or_else(|| "target".into());
    let dir = tempfile::Builder::new().prefix("scale-").tempdir_in(&root).expect("scratch");
    let data = dir.path().join("n");
    let rss_before = resident();
    let (join_rate, write_rate, head_seq, rss_after) = rt.block_on(async {
        let n = SporeSystem::builder().data_dir(&data).private_network().build();
        n.initialize(NetworkIdentity {
            network_id: uuid::Uuid::new_v4(),
            network_name: "scale".into(),
            genesis_timestamp: chrono::Utc::now(),
        })
        .await
        .expect("initialize");
        let fp = n.status().expect("status").fingerprint.expect("formed");
        let key_file = data.join(mycnet_spores::store::keyfile::KEY_FILE_NAME);
        let founder = mycnet_spores::store::keyfile::load(&key_file).expect("the founder's key");
        let keys = heap::keys(nodes);
        let joins: Vec<SignedEvent> = keys
            .iter()
            .enumerate()
            .map(|(i, k)| {
                let ann = NodeAnnouncement { role: NodeRole::Rhizomorph, ..heap::node(i, k) };
                SignedEvent::sign(&founder, fp, Timestamp::now(), EventBody::NodeJoined(ann))
            })
            .collect();
        let join_rate = write_all(&n, joins).await;
        let regs: Vec<SignedEvent> = (0..services)
            .map(|i| {
                let k = &keys[i % nodes];
                // Random, as the v4 ids registrants draw (`register_service` does).
                let id = uuid::Uuid::from_u128(
                        (i as u128 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835),
                    );
                let s = heap::service(i, id, k.node_id(), services.min(1_000));
                SignedEvent::sign(k, fp, Timestamp::now(), EventBody::ServiceRegistered(s))
            })
            .collect();
        // Lookups while the registrations commit: what a reader sees under a full write load.
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reader = {
            let (n, stop, ids) = (n.clone(), stop.clone(), keys.iter().map(|k| k.node_id()).collect::<Vec<_>>());
            tokio::task::spawn_blocking(move || {
                let (mut by_name, mut by_node) = (Vec::new(), Vec::new());
                let mut i = 0usize;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let t = Instant::now();
                    let _ = n.services_by_name(&format!("svc-{}", i % 1_000)).expect("query");
                    by_name.push(t.elapsed());
                    let t = Instant::now();
                    let _ = n.node(&ids[i % ids.len()]).expect("query");
                    by_node.push(t.elapsed());
                    i += 1;
                    std::thread::sleep(Duration::from_micros(200));
                }
                (by_name, by_node)
            })
        };
        let write_rate = write_all(&n, regs).await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let (by_name, by_node) = reader.await.expect("reader");
        let (p50, p99) = (percentile(by_name.clone(), 50), percentile(by_name, 99));
        println!(
            "under writes: services_by_name p50 / p99: {p50:?} / {p99:?}; node(id) p50: {:?}",
            percentile(by_node, 50)
        );
        let head_seq = n.head().expect("head").expect("formed").seq;
        let rss_after = resident();
        // Query latencies on the live node.
        let mut by_name = Vec::new();
        let mut by_node = Vec::new();
        let mut by_cap = Vec::new();
        let mut found = 0usize;
        for i in 0..2_000usize {
            let t = Instant::now();
            found = n.services_by_name(&format!("svc-{}", i % services.min(1_000))).expect("query").len();
            by_name.push(t.elapsed());
            let t = Instant::now();
            n.node(&keys[i % nodes].node_id()).expect("query").expect("known");
            by_node.push(t.elapsed());
            if i < 50 {
                let t = Instant::now();
                n.services_by_capability(&format!("cap-{}", i % 8)).expect("query");
                by_cap.push(t.elapsed());
            }
        }
        let (p50, p99) = (percentile(by_name.clone(), 50), percentile(by_name, 99));
        println!("idle: services_by_name ({found} hits) p50 / p99: {p50:?} / {p99:?}");
        println!("idle: node(id) p50: {:?}", percentile(by_node, 50));
        println!("idle: services_by_capability ({} hits) p50: {:?}", services / 8, percentile(by_cap, 50));
        // The projection's own heap: what a fresh copy of it (decoded from a checkpoint of its
        // state, indexes rebuilt) holds once the decoding buffers are freed.
        let projection = n
            .with_projection(|p| {
                let bytes = mycnet_spores::store::record::encode_checkpoint(p.state());
                let before = live();
                let state = mycnet_spores::store::record::decode_checkpoint(&bytes).expect("decodes");
                let copy = mycnet_spores::Projection::from_state(state);
                let now = live();
                let held = (now.0 - before.0, now.1 - before.1);
                assert_eq!(&copy, p);
                held
            })
            .expect("projection");
        println!(
            "projection heap: {} MB = {:.0} bytes per service asked of malloc, {:.0} in malloc chunks (with {nodes} nodes)",
            projection.0 >> 20,
            projection.0 as f64 / services as f64,
            projection.1 as f64 / services as f64
        );
        println!("heap live in the whole process: {} MB", live().0 >> 20);
        // The projection the node built through the write path, as it holds it: keep its
        // last snapshot, stop the node, then see what letting go of the snapshot frees.
        let snapshot = n.projection_snapshot().expect("projection");
        n.shutdown().await.expect("shutdown");
        drop(n);
        tokio::time::sleep(Duration::from_millis(500)).await;
        let before = live();
        let sole = Arc::strong_count(&snapshot) == 1;
        drop(snapshot);
        let after = live();
        let freed = (before.0 - after.0, before.1 - after.1);
        if sole {
            println!(
                "live projection heap: {} MB = {:.0} bytes per service asked of malloc, {:.0} in malloc chunks",
                freed.0 >> 20,
                freed.0 as f64 / services as f64,
                freed.1 as f64 / services as f64
            );
        } else {
            println!("live projection heap: not measured (the stopped node still holds its projection)");
        }
        (join_rate, write_rate, head_seq, rss_after)
    });
    let t = Instant::now();
    rt.block_on(async {
        let n = SporeSystem::builder().data_dir(&data).private_network().build();
        n.start().await.expect("restart");
        // At least where it stopped: the restarted leader may commit an anchor at once.
        assert!(n.head().expect("head").expect("formed").seq >= head_seq);
        n.shutdown().await.expect("shutdown");
    });
    let restart = t.elapsed();
    let disk = dir_bytes(&data);
    let journal = journal_bytes(&data);
    println!("\n=== scale summary: {nodes} nodes + {services} services ===");
    println!("{:>40}: {join_rate:.0} events/s", "joins committed");
    println!("{:>40}: {write_rate:.0} events/s", "registrations committed");
    println!(
        "{:>40}: {:.0} bytes (RSS {} -> {} MB: an upper bound, the node's buffers count too)",
        "resident memory per service",
        (rss_after.saturating_sub(rss_before)) as f64 / services as f64,
        rss_before >> 20,
        rss_after >> 20
    );
    println!("{:>40}: {restart:?}", "restart (open + resume)");
    let events = head_seq + 1;
    println!(
        "{:>40}: {:.0} bytes ({} MB for {events} events)",
        "disk per event",
        disk as f64 / events as f64,
        disk >> 20
    );
    println!(
        "{:>40}: {:.0} bytes per event in the tables; the journal {} MB (bounded, and until a memtable is flushed it holds the same events)",
        "of which",
        (disk - journal) as f64 / events as f64,
        journal >> 20
    );
}
