//! Latent sync over QUIC on loopback: one node holding N events, one empty node pulling them
//! with the gossip session, against raw limits measured in the same run.
//!
//! Run: `cargo bench --bench gossip` (`SPORES_BENCH_SYNC_EVENTS`, default 100 000; the fixture
//! is generated once into `target/bench-fixtures/`). Prints:
//! - sync wall time ≤ 1.5 × max(batch-verify of N signatures on both cores, raw fjall bulk
//!   append of the N records);
//! - bytes received by the puller over UDP (everything QUIC carried: frames, headers, acks,
//!   handshake) ≤ 1.1 × the records' size.

// tests and benches: a panic is the failure report
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs, unreachable_pub)]

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use fjall::{Database, KeyspaceCreateOptions, PersistMode};
use mycnet_spores::core::gossip::{SessionOutcome, SyncConfig};
use mycnet_spores::core::keys::{verify_many, VerifierCache};
use mycnet_spores::net::gossip::{GossipAcceptor, GossipConfig, GossipService, GossipStream};
use mycnet_spores::net::quic::{Admission, QuicBackend, QuicTransport};
use mycnet_spores::net::{Binding, BoxFuture, RpcHandler};
use mycnet_spores::raft::{RpcRequest, RpcResponse};
use mycnet_spores::store::record::seq_key;
use mycnet_spores::store::synth::{Synth, SynthConfig};
use mycnet_spores::wire::rpc::RemoteFailure;
use mycnet_spores::{ChainedEvent, Ledger, LedgerConfig, NodeId, NodeKey, PeerNode};
use rayon::prelude::*;

#[path = "common/fixture.rs"]
mod fixture;

fn events_wanted() -> u64 {
    std::env::var("SPORES_BENCH_SYNC_EVENTS").ok().and_then(|v| v.parse().ok()).unwrap_or(100_000)
}

/// A durable ledger of `n` synthetic events (with checkpoint anchors), generated once.
fn fixture(n: u64) -> PathBuf {
    let mut synth = Synth::new(SynthConfig { seed: 11, nodes: 64, voters: 3, ..Default::default() });
    let cfg = LedgerConfig { durable: false, ..LedgerConfig::default() };
    fixture::synth_ledger(&format!("gossip-ledger-{n}"), n, &mut synth, cfg).0
}

/// Serves only gossip.
struct GossipOnly(Arc<GossipService>);

impl RpcHandler for GossipOnly {
    fn handle(&self, _from: NodeId, _req: RpcRequest) -> BoxFuture<'_, RpcResponse> {
        Box::pin(async { RpcResponse::ReadIndex(Err(RemoteFailure::Other("gossip only".into()))) })
    }

    fn gossip(&self) -> Option<Arc<dyn GossipAcceptor>> {
        Some(self.0.clone())
    }
}

fn gossip_config() -> GossipConfig {
    GossipConfig { sync: SyncConfig { batch_events: 2048, ..SyncConfig::default() }, ..GossipConfig::default() }
}

async fn endpoint(
    seed: u8,
    ledger: Arc<RwLock<Ledger>>,
    pull: bool,
) -> (PeerNode, Arc<GossipService>, QuicTransport, Binding) {
    let key = NodeKey::from_seed([seed; 32]);
    let backend = QuicBackend::new(key.clone(), Admission::allow_all());
    let late = Arc::new(mycnet_spores::net::LateHandler::default());
    let (transport, binding) = backend.bind_quic("127.0.0.1:0", late.clone()).await.expect("bind");
    let me = PeerNode { node: key.node_id(), addr: binding.addr.clone() };
    let svc = Arc::new(GossipService::new(me.clone(), ledger, gossip_config(), move || pull, move || !pull));
    late.set(Arc::new(GossipOnly(svc.clone())));
    (me, svc, transport, binding)
}

/// One sync of everything from `server` into a fresh durable ledger. Returns the wall time
/// and the UDP bytes the puller received.
async fn sync_once(server: &PeerNode, head: u64) -> (Duration, u64) {
    let dir = tempfile::tempdir_in(fixture::root()).expect("scratch");
    let ledger = Arc::new(RwLock::new(Ledger::open(dir.path(), LedgerConfig::default()).expect("open")));
    let (_, svc, transport, _binding) = endpoint(2, ledger.clone(), true).await;
    let t = Instant::now();
    let (conn, send, recv) = transport.open_gossip_conn(server).await.expect("connect");
    let stream = GossipStream { peer: server.node, send: Box::new(send), recv: Box::new(recv) };
    let (outcome, report) = svc.run_session(stream, true).await;
    let took = t.elapsed();
    assert_eq!(outcome, SessionOutcome::Completed);
    assert_eq!(report.stored, head + 1);
    assert_eq!(ledger.read().expect("lock").head().map(|h| h.seq), Some(head));
    let udp = conn.stats().udp_rx.bytes;
    (took, udp)
}

/// Raw: verify every signature with `verify_batch` in batches of 256 on all cores.
fn raw_verify(events: &[ChainedEvent]) -> Duration {
    let t = Instant::now();
    let ok: usize = events
        .par_chunks(256)
        .map(|chunk| {
            let msgs: Vec<Vec<u8>> = chunk.iter().map(|e| e.event.signing_message()).collect();
            let items: Vec<_> =
                chunk.iter().zip(&msgs).map(|(e, m)| (e.event.author, m.as_slice(), e.event.signature)).collect();
            verify_many(&mut VerifierCache::default(), &items).into_iter().filter(|v| *v).count()
        })
        .sum();
    assert_eq!(ok, events.len());
    t.elapsed()
}

/// Raw: append the records to a fresh fjall keyspace in batches, one sync at the end.
fn raw_bulk_append(records: &[Vec<u8>]) -> Duration {
    let dir = tempfile::tempdir_in(fixture::root()).expect("scratch");
    let db = Database::builder(dir.path()).open().expect("open");
    let ks = db.keyspace("ledger", KeyspaceCreateOptions::default).expect("ks");
    let t = Instant::now();
    for (i, chunk) in records.chunks(4096).enumerate() {
        let mut b = db.batch();
        for (k, rec) in chunk.iter().enumerate() {
            b.insert(&ks, seq_key((i * 4096 + k) as u64), rec.clone());
        }
        b.commit().expect("commit");
    }
    db.persist(PersistMode::SyncAll).expect("persist");
    t.elapsed()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn bench_gossip(c: &mut Criterion) {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).try_init();
    }
    let n = events_wanted();
    let dir = fixture(n);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let source = Ledger::open(&dir, LedgerConfig { create: false, ..LedgerConfig::default() }).expect("open fixture");
    let head = source.head().expect("fixture has events").seq;
    let records = source.read_raw_range(0, head).expect("records");
    let record_bytes: u64 = records.iter().map(|r| r.len() as u64).sum();
    let events = source.read_range(0, head).expect("events");
    let shared = Arc::new(RwLock::new(source));
    let (server, _svc, _t, _binding) = rt.block_on(endpoint(1, shared, false));

    let mut g = c.benchmark_group("gossip");
    g.sample_size(10).measurement_time(Duration::from_secs(30));
    g.bench_function(format!("sync_{n}_quic"), |b| {
        b.iter_custom(|iters| (0..iters).map(|_| rt.block_on(sync_once(&server, head)).0).sum())
    });
    g.finish();

    // The summary: three runs of each, medians, all in this process.
    let verify = median((0..3).map(|_| raw_verify(&events)).collect());
    let append = median((0..3).map(|_| raw_bulk_append(&records)).collect());
    let runs: Vec<(Duration, u64)> = (0..3).map(|_| rt.block_on(sync_once(&server, head))).collect();
    let sync = median(runs.iter().map(|r| r.0).collect());
    let udp = runs.iter().map(|r| r.1).max().unwrap_or(0);
    let budget = verify.max(append);
    eprintln!("\n=== gossip sync summary ({} events, {} record bytes) ===", head + 1, record_bytes);
    eprintln!("{:>48}: {:.3} s", "raw verify_batch of every signature (2 cores)", verify.as_secs_f64());
    eprintln!("{:>48}: {:.3} s", "raw fjall bulk append of the records", append.as_secs_f64());
    eprintln!("{:>48}: {:.3} s", "ours: sync over QUIC into a durable ledger", sync.as_secs_f64());
    eprintln!("ratio sync / max(verify, append) = {:.3} (target <= 1.5)", sync.as_secs_f64() / budget.as_secs_f64());
    eprintln!(
        "bytes received over UDP = {udp}; ratio to the records' size = {:.3} (target <= 1.1)",
        udp as f64 / record_bytes as f64
    );
}

criterion_group!(benches, bench_gossip);
criterion_main!(benches);
