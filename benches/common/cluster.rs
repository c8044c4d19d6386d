//! Shared by the primary benches: a cluster of voters on durable fjall in temp dirs,
//! pre-signed ~256-byte service registrations to write through it, and the raw limits that
//! the primary figures are ratios to.
// Each bench includes this module and uses the helpers it needs.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{Seek, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mycnet_spores::net::inproc::InProcNetwork;
use mycnet_spores::net::quic::{Admission, QuicBackend};
use mycnet_spores::{
    Endpoint, EventBody, NetworkIdentity, NodeKey, ServiceAnnouncement, SignedEvent, SporeSystem, Timeouts, Timestamp,
};

/// The network the cluster runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Net {
    /// The in-process transport (no faults injected).
    InProc,
    /// Real QUIC on 127.0.0.1.
    Quic,
}

/// Builds and starts voter `i` of a cluster under `dir` (its key from seed `[i + 1; 32]`).
async fn start_node(dir: &Path, i: u8, kind: Net, net: &InProcNetwork) -> SporeSystem {
    let key = NodeKey::from_seed([i + 1; 32]);
    // `SPORES_BENCH_METRICS=off`: the write path records no metrics (the A/B of issue 22).
    let metrics = std::env::var("SPORES_BENCH_METRICS").as_deref() != Ok("off");
    let b = SporeSystem::builder().data_dir(dir.join(format!("n{i}"))).key(key.clone()).metrics(metrics);
    let b = match kind {
        Net::InProc => b.addr(format!("n{i}")).inproc(net),
        Net::Quic => b.addr("127.0.0.1:0").network(Arc::new(QuicBackend::new(key, Admission::allow_all()))),
    };
    let s = b
        .timeouts(Timeouts {
            heartbeat: Duration::from_millis(50),
            election_min: Duration::from_millis(300),
            election_max: Duration::from_millis(600),
            // `SPORES_BENCH_IN_FLIGHT=N`: the proposer's batches in flight (A/B runs).
            batches_in_flight: std::env::var("SPORES_BENCH_IN_FLIGHT")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(Timeouts::default().batches_in_flight),
            ..Timeouts::default()
        })
        .build();
    s.start().await.expect("start");
    s
}

/// Forms a network of `nodes` voters under `dir` (node 0 initializes it, admits the others
/// and adds them as voters). Node `i` signs with the key of seed `[i + 1; 32]`.
pub async fn form(dir: &Path, nodes: u8, kind: Net) -> Vec<Arc<SporeSystem>> {
    let net = InProcNetwork::new(1);
    let mut systems = Vec::new();
    for i in 0..nodes {
        systems.push(start_node(dir, i, kind, &net).await);
    }
    systems[0]
        .initialize(NetworkIdentity {
            network_id: uuid::Uuid::from_u128(7),
            network_name: "bench".into(),
            genesis_timestamp: chrono::Utc::now(),
        })
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

/// Restarts the in-process network [`form`] made under `dir` (its nodes shut down first):
/// each node reopens its data dir. Returns the nodes in their order under `dir`.
pub async fn reopen_inproc(dir: &Path, nodes: u8) -> Vec<Arc<SporeSystem>> {
    let net = InProcNetwork::new(1);
    let mut systems = Vec::new();
    for i in 0..nodes {
        systems.push(Arc::new(start_node(dir, i, Net::InProc, &net).await));
    }
    systems
}

/// Metadata that pads a registration to ~256 bytes of canonical encoding, like a real one.
pub fn metadata() -> Vec<(String, String)> {
    vec![("region".into(), "eu-west".into()), ("version".into(), "1.2.3".into())]
}

/// `n` service registrations signed by node 0 for the network `s` belongs to (signed before
/// any timing starts), with time-ordered ids as `SporeSystem::register_service` makes them.
pub fn presigned(s: &SporeSystem, n: usize) -> Vec<SignedEvent> {
    let key = NodeKey::from_seed([1; 32]);
    let fp = s.status().expect("status").fingerprint.expect("fingerprint");
    (0..n)
        .map(|_| {
            let body = EventBody::ServiceRegistered(ServiceAnnouncement {
                service_id: uuid::Uuid::now_v7(),
                name: "bench-svc".into(),
                node: key.node_id(),
                capabilities: vec!["storage".into()].into(),
                endpoints: vec![Endpoint { protocol: "quic".into(), address: "127.0.0.1:7400".into() }].into(),
                metadata: metadata().into_iter().map(|(k, v)| (k.into(), v.into())).collect(),
            });
            SignedEvent::sign(&key, fp, Timestamp::now(), body)
        })
        .collect()
}

/// A measure of V: signatures/s of `verify_batch` in batches of 64 (distinct
/// keys) on one core, over about `secs` seconds.
pub fn raw_verify_batch_rate(secs: f64) -> f64 {
    let keys: Vec<NodeKey> = (0..64u8).map(|i| NodeKey::from_seed([i + 1; 32])).collect();
    let msgs: Vec<Vec<u8>> = (0..64u8).map(|i| vec![i; 256]).collect();
    let sigs: Vec<ed25519_dalek::Signature> =
        keys.iter().zip(&msgs).map(|(k, m)| ed25519_dalek::Signature::from_bytes(&k.sign(m).0)).collect();
    let vks: Vec<ed25519_dalek::VerifyingKey> =
        keys.iter().map(|k| ed25519_dalek::VerifyingKey::from_bytes(k.node_id().as_bytes()).expect("a key")).collect();
    let refs: Vec<&[u8]> = msgs.iter().map(|m| m.as_slice()).collect();
    let t = std::time::Instant::now();
    let mut n = 0usize;
    while t.elapsed().as_secs_f64() < secs {
        ed25519_dalek::verify_batch(&refs, &sigs, &vks).expect("valid batch");
        n += 64;
    }
    n as f64 / t.elapsed().as_secs_f64()
}

/// Writes all of `events` through `leader` from `clients` concurrent writers, each submitting
/// its share one at a time (the next once the last one is committed).
pub async fn write_concurrently(leader: &Arc<SporeSystem>, mut events: Vec<SignedEvent>, clients: usize) {
    let share = events.len().div_ceil(clients.max(1));
    let mut tasks = Vec::new();
    while !events.is_empty() {
        let s = leader.clone();
        let mine: Vec<SignedEvent> = events.split_off(events.len().saturating_sub(share));
        tasks.push(tokio::spawn(async move {
            for ev in mine {
                s.submit(ev).await.expect("write");
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
}

/// The median of `v` (which must not be empty).
pub fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Rounds of the raw fdatasync medians.
const SYNC_ROUNDS: usize = 300;

/// The fdatasync after each of `n` `len`-byte writes at `f`'s position.
fn syncs_after_writes(f: &mut std::fs::File, len: usize, n: usize) -> Vec<Duration> {
    let buf = vec![7u8; len];
    (0..n)
        .map(|_| {
            f.write_all(&buf).expect("write");
            let t = Instant::now();
            f.sync_data().expect("sync");
            t.elapsed()
        })
        .collect()
}

/// Median fdatasync after a 4 KiB append: the fsync of the 1-client latency budget.
pub fn raw_fdatasync_median() -> Duration {
    AppendSyncProbe::new().median(SYNC_ROUNDS)
}

/// [`raw_fdatasync_median`]'s measurement taken in pieces: a bench takes some between its own
/// writes, so the budget's sync and the writes it is compared with see the same minutes of a
/// disk whose speed drifts.
pub struct AppendSyncProbe {
    _dir: tempfile::TempDir,
    file: std::fs::File,
}

impl AppendSyncProbe {
    /// A new, empty file in a directory of its own.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = std::fs::File::create(dir.path().join("f")).expect("create");
        AppendSyncProbe { _dir: dir, file }
    }

    /// The fdatasync after each of `n` 4 KiB appends.
    pub fn sample(&mut self, n: usize) -> Vec<Duration> {
        syncs_after_writes(&mut self.file, 4096, n)
    }

    /// The median of `n` of them.
    pub fn median(&mut self, n: usize) -> Duration {
        median(self.sample(n))
    }
}

/// Bytes a 1-client write adds to the leader's fjall journal before its sync (its Raft entry
/// and the records of its apply): the median `write(2)` to the journal was 814 B under
/// `strace` (benches/README.md, session 24).
pub const JOURNAL_WRITE_BYTES: usize = 800;

/// How a journal's file was made before its writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JournalFile {
    /// Sized with `set_len` and no blocks written, as fjall 3.1 makes each journal.
    PreSized,
    /// Zero-filled and synced ahead (etcd's WAL, ScyllaDB's commitlog).
    ZeroFilled,
}

/// Median fdatasync after a [`JOURNAL_WRITE_BYTES`] write into a journal made as `how` says:
/// the sync a 1-client write's journal pays. Small writes share a block: only the first write
/// into a block of a pre-sized file allocates it, so such a journal syncs near the zero-filled
/// one's cost, both below [`raw_fdatasync_median`]'s appends, which grow the file each time.
pub fn raw_fdatasync_journal_median(how: JournalFile) -> Duration {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut f = std::fs::File::create(dir.path().join("f")).expect("create");
    let size = SYNC_ROUNDS * JOURNAL_WRITE_BYTES;
    match how {
        JournalFile::PreSized => f.set_len(size as u64).expect("set_len"),
        JournalFile::ZeroFilled => {
            f.write_all(&vec![0u8; size]).expect("zero-fill");
            f.seek(std::io::SeekFrom::Start(0)).expect("rewind");
        }
    }
    f.sync_all().expect("sync the new journal");
    median(syncs_after_writes(&mut f, JOURNAL_WRITE_BYTES, SYNC_ROUNDS))
}

/// The disk's own floor for a commit of three voters on this one disk: three threads, each
/// with a file of its own, write 4 KiB and `fdatasync` at the same moment, and a round lasts
/// until the second sync returns (a quorum of three). Median of [`SYNC_ROUNDS`] rounds. Compare it with
/// [`raw_fdatasync_median`], one sync alone: the 1-client budget assumes a commit costs one.
pub fn raw_quorum_fdatasync_median() -> Duration {
    use std::sync::{mpsc, Barrier};
    let dir = tempfile::tempdir().expect("tempdir");
    let start = Arc::new(Barrier::new(4));
    let (done_tx, done_rx) = mpsc::channel::<Instant>();
    let workers: Vec<_> = (0..3)
        .map(|i| {
            let mut f = std::fs::File::create(dir.path().join(format!("f{i}"))).expect("create");
            let (start, done_tx) = (start.clone(), done_tx.clone());
            std::thread::spawn(move || {
                let buf = [7u8; 4096];
                for _ in 0..SYNC_ROUNDS {
                    start.wait();
                    f.write_all(&buf).expect("write");
                    f.sync_data().expect("sync");
                    done_tx.send(Instant::now()).expect("report");
                }
            })
        })
        .collect();
    let mut samples = Vec::with_capacity(SYNC_ROUNDS);
    for _ in 0..SYNC_ROUNDS {
        start.wait();
        let t = Instant::now();
        let mut ends: Vec<Instant> = (0..3).map(|_| done_rx.recv().expect("sync done")).collect();
        ends.sort();
        samples.push(ends[1] - t);
    }
    for w in workers {
        w.join().expect("sync thread");
    }
    median(samples)
}

/// The name and CPU time (user and system) in a `/proc/.../stat` line, of a process or of one
/// of its threads: "pid (name) state ...", where the name may hold spaces and brackets, so the
/// fields are counted from its last ')'. Times are in clock ticks: 100 per second on Linux
/// (USER_HZ).
pub fn stat_cpu(stat: &str) -> Option<(String, Duration)> {
    let (open, close) = (stat.find('(')?, stat.rfind(')')?);
    let name = stat.get(open + 1..close)?.to_string();
    let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    // After the name: state is field 0, utime field 11, stime field 12.
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some((name, Duration::from_millis(ticks * 10)))
}

/// CPU seconds so far of each thread of this process, keyed by thread id, with its name.
pub fn thread_cpu() -> BTreeMap<u32, (String, f64)> {
    let mut out = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else { return out };
    for entry in dir.flatten() {
        let Ok(tid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        let Some((name, cpu)) = stat_cpu(&stat) else { continue };
        out.insert(tid, (name, cpu.as_secs_f64()));
    }
    out
}

/// The kind of thread `tid`, named `name`: the library's own threads by their names, and this
/// process's main thread as the bench's driver.
pub fn thread_kind(tid: u32, name: &str) -> &'static str {
    match name {
        _ if tid == std::process::id() => "main (bench driver)",
        n if n.starts_with("tokio-rt-worker") => "tokio (workers + blocking pool)",
        n if n.starts_with("spores-raft-flu") => "raft log flusher (fsync)",
        n if n.starts_with("fjall") => "fjall background",
        n if n.starts_with("ledger-chain") => "ledger chain helper",
        n if n.starts_with("spores-check") => "verification, foreground pool",
        n if n.starts_with("rayon") => "rayon's global pool",
        n if n.starts_with("spores-verify") => "verification, background pool",
        _ => "other",
    }
}

/// CPU seconds by kind of thread between two [`thread_cpu`] readings (a thread that started
/// in between counts from zero).
pub fn cpu_by_kind(
    before: &BTreeMap<u32, (String, f64)>,
    after: &BTreeMap<u32, (String, f64)>,
) -> BTreeMap<&'static str, f64> {
    let mut by_kind: BTreeMap<&'static str, f64> = BTreeMap::new();
    for (tid, (name, cpu)) in after {
        let was = before.get(tid).map_or(0.0, |b| b.1);
        *by_kind.entry(thread_kind(*tid, name)).or_default() += cpu - was;
    }
    by_kind
}

/// (sign, verify) time of one ~256-byte message: the rest of the 1-client latency budget.
pub fn raw_sign_verify() -> (Duration, Duration) {
    let k = NodeKey::from_seed([3; 32]);
    let msg = [5u8; 256];
    let n = 2000;
    let t = Instant::now();
    let mut sig = k.sign(&msg);
    for _ in 0..n {
        sig = k.sign(&msg);
    }
    let sign = t.elapsed() / n;
    let pk = k.verifying_key();
    let t = Instant::now();
    for _ in 0..n {
        assert!(pk.verify_msg(&msg, &sig));
    }
    (sign, t.elapsed() / n)
}
