//! Real crashes: a child process — this test binary, run again on one child "test" that acts
//! as a writer when `SPORES_KILL_CHILD` names its data dir — writes and prints every write it
//! got acknowledged, and is killed with SIGKILL (`kill -9`: no destructor, no flush, no
//! shutdown) at a point chosen by a seed: after a seeded number of acknowledgements and a
//! seeded delay of up to 3 ms, so the kill usually lands inside the next write. The parent
//! then reopens the data dir: nothing the child acknowledged is lost, and the ledger verifies.
//!
//! Two writers: a bare `Ledger` appending batches (with projection checkpoints), and a
//! one-voter `SporeSystem` (Raft log, state machine and ledger in one fjall database, with
//! snapshots and log purges) under four concurrent clients. Each test runs 3 seeds by
//! default; `SPORES_CRASH_SEEDS=N cargo test -p mycnet-spores --test it kill` runs N.

use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use mycnet_spores::net::inproc::InProcNetwork;
use mycnet_spores::{ChainHash, Ledger, LedgerReader, NetworkIdentity, NodeKey, SporeSystem, Timeouts};
use rand::{Rng, SeedableRng};

use crate::fixture::{config, history, verify, HISTORY_LEN};

/// Names the child's data dir; set only in the child.
const CHILD_DIR: &str = "SPORES_KILL_CHILD";
/// The child's seed.
const CHILD_SEED: &str = "SPORES_KILL_SEED";

fn seeds() -> u64 {
    std::env::var("SPORES_CRASH_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(3)
}

/// In a child process: its data dir and seed.
fn child_role() -> Option<(PathBuf, u64)> {
    let dir = std::env::var_os(CHILD_DIR)?;
    let seed = std::env::var(CHILD_SEED).ok().and_then(|s| s.parse().ok()).expect("the child's seed");
    Some((PathBuf::from(dir), seed))
}

/// Runs `child_test` of this binary as a child writing to `dir`, waits for `kill_after`
/// acknowledgements, waits `delay` more, kills it with SIGKILL and returns every
/// acknowledgement it printed (the text after `ACK `) before it died.
fn run_and_kill(child_test: &str, dir: &Path, seed: u64, kill_after: usize, delay: Duration) -> Vec<String> {
    let stderr_path = dir.with_extension("stderr");
    let stderr = std::fs::File::create(&stderr_path).expect("child stderr file");
    let mut child = Command::new(std::env::current_exe().expect("the test binary"))
        .args(["--exact", child_test, "--include-ignored", "--nocapture", "--test-threads=1"])
        .env(CHILD_DIR, dir)
        .env(CHILD_SEED, seed.to_string())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .expect("spawn the writer");
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            // The harness may print its own text before ours on the same line.
            if let Some(at) = line.find("ACK ") {
                let _ = tx.send(line[at + 4..].to_string());
            }
        }
    });
    let mut acks = Vec::new();
    while acks.len() < kill_after {
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(ack) => acks.push(ack),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "seed {seed}: the writer stopped after {} of {kill_after} acknowledgements ({e:?}); its stderr:\n{}",
                    acks.len(),
                    std::fs::read_to_string(&stderr_path).unwrap_or_default()
                );
            }
        }
    }
    // Part of the scenario, not a wait for a condition: where in the next write the kill lands.
    std::thread::sleep(delay);
    child.kill().expect("SIGKILL");
    let status = child.wait().expect("reap the writer");
    assert_eq!(status.signal(), Some(9), "seed {seed}: the writer was killed by SIGKILL, it did not exit: {status:?}");
    reader.join().expect("stdout reader");
    acks.extend(rx.try_iter());
    acks
}

/// The seeded kill point: acknowledgements before the kill, and the delay after the last.
fn kill_point(seed: u64, max_acks: usize) -> (usize, Duration) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0x4b11 + seed);
    (rng.random_range(1..=max_acks), Duration::from_micros(rng.random_range(0..3000)))
}

// ---------------------------------------------------------------------------------------------
// A bare ledger

/// Not a test on its own: the writer process of
/// [`kill_9_of_a_ledger_writer_loses_no_acknowledged_append`]. Appends the shared history in
/// seeded batches and prints `ACK <seq> <hash>` of the head after each append returned.
#[test]
#[ignore = "the child process of kill_9_of_a_ledger_writer_loses_no_acknowledged_append; a writer only with SPORES_KILL_CHILD set"]
fn ledger_writer_child() {
    let Some((dir, seed)) = child_role() else { return };
    let h = history();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut ledger = Ledger::open(&dir, config([0, 7, 32][seed as usize % 3])).expect("open");
    let mut at = 0;
    while at < HISTORY_LEN {
        let n = rng.random_range(1..=24).min(HISTORY_LEN - at);
        let outcome = ledger.append(h.events[at..at + n].to_vec()).expect("append");
        assert!(outcome.iter().all(Result::is_ok), "the history is valid");
        at += n;
        let head = ledger.head().expect("head");
        println!("ACK {} {}", head.seq, head.hash);
    }
    // Every append is in; the parent kills this process well before this point. Not a wait for
    // a condition: the bound keeps an orphan (its parent failed) from living on.
    std::thread::sleep(Duration::from_secs(600));
}

#[test]
fn kill_9_of_a_ledger_writer_loses_no_acknowledged_append() {
    if child_role().is_some() {
        return;
    }
    let h = history();
    for seed in 0..seeds() {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = root.path().join("ledger");
        // At most 24 events an append: the history takes at least 25, so the kill comes
        // before the writer runs out.
        let (kill_after, delay) = kill_point(seed, 20);
        let acks = run_and_kill("kill::ledger_writer_child", &dir, seed, kill_after, delay);
        let acked: Vec<(u64, ChainHash)> = acks
            .iter()
            .map(|a| {
                let (seq, hash) = a.split_once(' ').expect("seq and hash");
                (seq.parse().expect("seq"), hash.parse::<ChainHash>().expect("a chain hash"))
            })
            .collect();
        let last = *acked.last().expect("acknowledged appends");

        // The ledger opens (no damage), at or past the last acknowledged head, and holds
        // exactly the history's prefix: every acknowledged append, nothing else.
        let ledger = Ledger::open(&dir, config(0)).expect("the killed writer's ledger opens");
        let head = ledger.head().expect("a head");
        assert!(
            head.seq >= last.0,
            "seed {seed}: acknowledged head {} lost, the ledger reopened at {}",
            last.0,
            head.seq
        );
        let mut expected = mycnet_spores::Projection::new();
        for ev in &h.events[..=head.seq as usize] {
            expected.append(ev.clone()).expect("valid history");
        }
        assert_eq!(ledger.projection().state(), expected.state(), "seed {seed}: reopened projection");
        drop(ledger);
        let reader = LedgerReader::open(&dir).expect("reader");
        for (seq, hash) in &acked {
            let at = reader.range(*seq, *seq).expect("read");
            assert_eq!(at.first().map(|e| e.hash), Some(*hash), "seed {seed}: acknowledged head {seq} is on the chain");
        }
        drop(reader);
        let report = verify(&dir);
        assert!(report.is_ok(), "seed {seed}: {:?}", report.first_error);
        assert_eq!(report.recorded_head, Some((head.seq, head.hash)), "seed {seed}");
        // And it goes on: the next events append where it stopped.
        let mut ledger = Ledger::open(&dir, config(7)).expect("reopen");
        let next = head.seq as usize + 1;
        let more = h.events[next..(next + 10).min(HISTORY_LEN)].to_vec();
        if !more.is_empty() {
            assert!(ledger.append(more).expect("append after the crash").iter().all(Result::is_ok), "seed {seed}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A one-voter node

const NODE_KEY: [u8; 32] = [0x4b; 32];

/// Odd seeds snapshot and purge the Raft log every few entries, so kills land in those too;
/// even seeds keep the whole log, so only the log's own syncs make a write durable.
fn node_timeouts(seed: u64) -> Timeouts {
    let t = crate::cluster::fast_timeouts();
    if seed % 2 == 1 {
        Timeouts { snapshot_every: 20, logs_kept_after_snapshot: 5, ..t }
    } else {
        t
    }
}

fn node(dir: &Path, net: &InProcNetwork, seed: u64) -> SporeSystem {
    SporeSystem::builder()
        .data_dir(dir)
        .key(NodeKey::from_seed(NODE_KEY))
        .addr("n0")
        .name("n0")
        .inproc(net)
        .timeouts(node_timeouts(seed))
        .build()
}

/// Not a test on its own: the writer process of
/// [`kill_9_of_a_node_loses_no_acknowledged_write`]. Forms a one-voter network and runs four
/// clients registering services; prints `ACK <service id>` for each acknowledged write.
#[test]
#[ignore = "the child process of kill_9_of_a_node_loses_no_acknowledged_write; a writer only with SPORES_KILL_CHILD set"]
fn node_writer_child() {
    let Some((dir, seed)) = child_role() else { return };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    rt.block_on(async move {
        let net = InProcNetwork::new(seed);
        let s = node(&dir, &net, seed);
        s.start().await.expect("start");
        let identity = NetworkIdentity {
            network_id: uuid::Uuid::from_u128(0x4b11),
            network_name: "killed".into(),
            genesis_timestamp: chrono::Utc::now(),
        };
        s.initialize(identity).await.expect("initialize");
        let s = Arc::new(s);
        let mut clients = tokio::task::JoinSet::new();
        for c in 0..4 {
            let s = s.clone();
            clients.spawn(async move {
                for i in 0.. {
                    let id = s
                        .register_service(&format!("c{c}-{i}"), vec![], vec!["cap".into()], vec![])
                        .await
                        .expect("write");
                    println!("ACK {id}");
                }
            });
        }
        while let Some(r) = clients.join_next().await {
            r.expect("client");
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_a_node_loses_no_acknowledged_write() {
    if child_role().is_some() {
        return;
    }
    for seed in 0..seeds() {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = root.path().join("n0");
        let (kill_after, delay) = kill_point(seed, 60);
        let child_dir = dir.clone();
        let acks = tokio::task::spawn_blocking(move || {
            run_and_kill("kill::node_writer_child", &child_dir, seed, kill_after, delay)
        })
        .await
        .expect("child run");
        let acked: Vec<uuid::Uuid> = acks.iter().map(|a| a.trim().parse().expect("a service id")).collect();
        assert!(acked.len() >= kill_after);

        // The node restarts from its data dir, leads its one-voter network again, and holds
        // every acknowledged write.
        let net = InProcNetwork::new(seed);
        let s = node(&dir, &net, seed);
        s.start().await.expect("the killed node restarts");
        crate::wait::some("the restarted node to lead", Duration::from_secs(10), || {
            s.status().ok().filter(|st| st.raft_state == "Leader").map(|_| ())
        })
        .await;
        let missing: Vec<uuid::Uuid> =
            s.with_projection(|p| acked.iter().copied().filter(|id| p.service(id).is_none()).collect()).expect("query");
        assert!(
            missing.is_empty(),
            "seed {seed}: {} of {} acknowledged writes lost: {missing:?}",
            missing.len(),
            acked.len()
        );
        // It takes writes again, and its ledger verifies from genesis with every signature.
        s.register_service("after-the-kill", vec![], vec![], vec![]).await.expect("a write after the restart");
        let head = s.head().expect("head").expect("a chain");
        s.shutdown().await.expect("shutdown");
        let report = LedgerReader::open(&dir).expect("reader").verify(&|_| {}).expect("verify runs");
        assert!(report.is_ok(), "seed {seed}: {:?}", report.first_error);
        assert!(
            report.recorded_head.is_some_and(|(seq, _)| seq >= head.seq),
            "seed {seed}: {:?}",
            report.recorded_head
        );
    }
}
