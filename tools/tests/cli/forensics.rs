//! `spore diff`, `spore blame` and `spore state` on diverged branches and seed files, and
//! `spore diff` on the data dirs of a split brain over QUIC.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use super::{generated, json};
use crate::proc::{path, run};

/// Two ledgers of one network that share `shared` events and then diverge: A's founder
/// changes its capabilities, B's founder registers a service. Plus B as seed files with and
/// without its events. Returns (root, A, B, B with events, B without events, service id,
/// founder).
fn diverged(shared: usize) -> (tempfile::TempDir, PathBuf, PathBuf, PathBuf, PathBuf, String, String) {
    use mycnet_spores::store::synth::{Synth, SynthConfig};
    use mycnet_spores::{
        Endpoint, EventBody, Ledger, LedgerConfig, Projection, ServiceAnnouncement, SignedEvent, Timestamp,
    };
    let root = tempfile::tempdir().expect("tempdir");
    let mut synth = Synth::new(SynthConfig { seed: 11, nodes: 8, ..Default::default() });
    let events = synth.next_chunk(shared);
    assert_eq!(events.len(), shared);
    let founder = synth.keys()[0].clone();
    let fp = synth.fingerprint();
    let t = events.last().expect("events").timestamp.0 + 1;
    let service_id = uuid::Uuid::from_u128(0x5e_1f_5e_ed);
    let a_tail = vec![SignedEvent::sign(
        &founder,
        fp,
        Timestamp(t),
        EventBody::CapabilitiesChanged { node: founder.node_id(), capabilities: vec!["left".into()] },
    )];
    let b_tail = vec![SignedEvent::sign(
        &founder,
        fp,
        Timestamp(t),
        EventBody::ServiceRegistered(ServiceAnnouncement {
            service_id,
            name: "split-svc".into(),
            node: founder.node_id(),
            capabilities: vec![].into(),
            endpoints: vec![Endpoint { protocol: "quic".into(), address: "10.1.1.1:1".into() }].into(),
            metadata: vec![].into(),
        }),
    )];
    let write = |name: &str, tail: &[SignedEvent]| -> PathBuf {
        let dir = root.path().join(name);
        let mut l = Ledger::open(&dir, LedgerConfig { durable: false, ..LedgerConfig::default() }).expect("ledger");
        let mut all = events.clone();
        all.extend_from_slice(tail);
        for r in l.append(all).expect("append") {
            assert!(r.is_ok(), "{r:?}");
        }
        l.sync().expect("sync");
        dir
    };
    let a = write("a", &a_tail);
    let b = write("b", &b_tail);
    let mut p = Projection::new();
    let chained: Vec<_> = events.iter().chain(&b_tail).map(|e| p.append(e.clone()).expect("valid")).collect();
    let full = root.path().join("b-full.seed");
    let bare = root.path().join("b-bare.seed");
    std::fs::write(&full, mycnet_spores::seed::build(&p, Some(&chained), &[&founder]).expect("seed")).expect("write");
    std::fs::write(&bare, mycnet_spores::seed::build(&p, None, &[&founder]).expect("seed")).expect("write");
    (root, a, b, full, bare, service_id.to_string(), founder.node_id().to_hex())
}

#[test]
fn diff_blame_and_state_on_branches_and_seed_files() {
    let (root, a, b, full, bare, service_id, founder) = diverged(200);
    let (pa, pb, pfull, pbare) = (path(&a), path(&b), path(&full), path(&bare));

    // The fork point, both branches' events after it, and the registries' differences.
    let out = run(&["diff", pa, pb, "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let d = json(&out);
    assert_eq!(d["fork"]["relation"], "diverged");
    assert_eq!(d["fork"]["last_common"]["seq"], 199);
    assert_eq!(d["fork"]["first_diverging_seq"], 200);
    assert_eq!(d["events"]["a"]["total"], 1);
    assert_eq!(d["events"]["a"]["events"][0]["kind"], "capabilities_changed");
    assert_eq!(d["events"]["b"]["events"][0]["kind"], "service_registered");
    assert_eq!(d["entities"]["services"]["only_in_b"][0]["service"]["service_id"], service_id.as_str());
    assert_eq!(d["entities"]["nodes"]["changed"][0]["node"], founder.as_str());
    assert_eq!(d["entities"]["nodes"]["changed"][0]["fields"][0], "capabilities");
    // Which branch a resolution would keep: neither has a checkpoint or seed after the fork,
    // so authority does not decide; the same branch wins with the sources swapped.
    assert_eq!(d["verdict"]["outcome"], "wins", "{}", d["verdict"]);
    assert_ne!(d["verdict"]["decided_by"], "Authority");
    assert_eq!(
        (d["verdict"]["a"]["tier"].clone(), d["verdict"]["a"]["fork_seq"].clone()),
        (Value::from("Latent"), Value::from(200))
    );
    let swapped = json(&run(&["diff", pb, pa, "--json"]));
    assert_ne!(swapped["verdict"]["winner"], d["verdict"]["winner"], "a and b swapped: the same branch wins");
    let human = run(&["diff", pa, pb]);
    assert_eq!(human.status.code(), Some(0));
    let text = String::from_utf8_lossy(&human.stdout);
    assert!(text.contains("first diverging seq 200") && text.contains("only in B"), "{text}");
    assert!(text.contains("verdict: ") && text.contains("would be kept"), "{text}");

    // A seed file with its events is a branch like a ledger; identical sources are identical.
    let d = json(&run(&["diff", pa, pfull, "--json"]));
    assert_eq!(d["fork"]["first_diverging_seq"], 200);
    assert_eq!(d["b"]["source"], "seed");
    let same = json(&run(&["diff", pb, pfull, "--json"]));
    assert_eq!(same["fork"]["relation"], "identical");
    assert_eq!(run(&["diff", pb, pb]).status.code(), Some(2), "the same source twice is a usage error");
    let limited = json(&run(&["diff", pa, pbare, "--json", "--limit", "0"]));
    assert_eq!(limited["fork"]["relation"], "unresolved", "{limited}");
    assert_eq!(limited["fork"]["diverged_at_or_before"], 200, "the bare seed's head differs from A's");
    assert_eq!(
        (limited["events"]["a"]["total"].clone(), limited["events"]["a"]["more"].clone()),
        (Value::from(201), Value::from(201))
    );
    assert_eq!(limited["events"]["b"]["available"], false);

    // Blame: a service by id, the founder by a prefix of its id.
    let bl = run(&["blame", pb, &service_id, "--json"]);
    assert_eq!(bl.status.code(), Some(0), "{}", String::from_utf8_lossy(&bl.stderr));
    let bl = json(&bl);
    assert_eq!(bl["total"], 1);
    assert_eq!(bl["entries"][0]["seq"], 200);
    assert_eq!(bl["entries"][0]["author"], founder.as_str());
    assert_eq!(bl["entries"][0]["touch"]["how"], "subject");
    let bl = json(&run(&["blame", pfull, &founder[..8], "--json"]));
    assert_eq!(bl["target"]["kind"], "node");
    assert_eq!(bl["entries"][0]["kind"], "genesis");
    let last = bl["entries"].as_array().expect("entries").last().expect("one").clone();
    assert_eq!(
        (last["seq"].clone(), last["touch"]["how"].clone()),
        (Value::from(200), Value::from("service_of_node_registered"))
    );

    // State of a seed file: before its head from its events, at its head from its state; a
    // seed without events says what it can answer.
    let from_seed = json(&run(&["state", pfull, "--at-seq", "100", "--json"]));
    let from_ledger = json(&run(&["state", pb, "--at-seq", "100", "--json"]));
    assert_eq!(from_seed["head"]["seq"], 100);
    assert_eq!(from_seed, from_ledger);
    assert_eq!(json(&run(&["state", pbare, "--json"]))["head"]["seq"], 200);
    // A format 1 state-only seed still verifies, and says its state rests on its signers alone.
    let checked = run(&["seed", "verify", pbare]);
    assert_eq!(checked.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&checked.stdout).contains("NOT proven"),
        "{}",
        String::from_utf8_lossy(&checked.stdout)
    );
    assert_eq!(json(&run(&["seed", "verify", pbare, "--json"]))["state"]["kind"], "signers_only");
    let imported = root.path().join("from-bare");
    assert_eq!(run(&["seed", "import", "--data-dir", path(&imported), pbare]).status.code(), Some(0));
    let v = json(&run(&["verify", path(&imported), "--json"]));
    assert_eq!((v["ok"].as_bool(), v["base_attested"].as_bool()), (Some(true), Some(false)), "{v}");
    let refused = run(&["state", pbare, "--at-seq", "100"]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("carries no events"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    // Bad data exits 1: a corrupt seed, another network. A missing path exits 2.
    let corrupt = root.path().join("corrupt.seed");
    let mut bytes = std::fs::read(&full).expect("read");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x10;
    std::fs::write(&corrupt, bytes).expect("write");
    assert_eq!(run(&["diff", pa, path(&corrupt), "--json"]).status.code(), Some(1));
    assert_eq!(run(&["state", path(&corrupt)]).status.code(), Some(1));
    assert_eq!(run(&["blame", path(&corrupt), &service_id]).status.code(), Some(1));
    let (_other_root, other) = generated(20);
    assert_eq!(run(&["diff", pa, path(&other)]).status.code(), Some(1));
    assert_eq!(run(&["diff", pa, "/nonexistent/spore-branch"]).status.code(), Some(2));
    assert_eq!(run(&["blame", "/nonexistent/spore-branch", &service_id]).status.code(), Some(2));
    assert_eq!(run(&["blame", pb, "no-such-service"]).status.code(), Some(2));
}

// ---------------------------------------------------------------------------------------------
// `spore diff` on the data dirs of a split brain over QUIC

/// Two groups of a network formed from one seed over QUIC on loopback, cut apart by admission
/// (each side admits only its own keys), each writing on its own primary: `spore diff` on one
/// data dir of each names the exact fork — the seq right after the seed's head — and each
/// side's services.
#[test]
fn diff_names_the_fork_of_a_split_brain_over_quic() {
    use std::sync::Arc;

    use mycnet_spores::net::quic::{Admission, QuicBackend};
    use mycnet_spores::node::AnchorPolicy;
    use mycnet_spores::seed::VerifyPolicy;
    use mycnet_spores::{NetworkIdentity, NodeKey, SporeSystem, Timeouts};

    fn node(key: &NodeKey, dir: &Path, addr: &str, admission: Admission) -> SporeSystem {
        let timeouts = Timeouts {
            heartbeat: Duration::from_millis(50),
            election_min: Duration::from_millis(200),
            election_max: Duration::from_millis(400),
            write: Duration::from_secs(10),
            rpc: Duration::from_secs(1),
            ..Timeouts::default()
        };
        SporeSystem::builder()
            .data_dir(dir)
            .key(key.clone())
            .addr(addr)
            .network(Arc::new(QuicBackend::new(key.clone(), admission)))
            .timeouts(timeouts)
            .anchors(AnchorPolicy { every_events: 4, every: Duration::from_millis(200) })
            .build()
    }

    let root = tempfile::tempdir().expect("tempdir");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let keys: Vec<NodeKey> = (0..3u8).map(|i| NodeKey::from_seed([60 + i; 32])).collect();
    let seed = root.path().join("net.seed");
    let seed_head = rt.block_on(async {
        // Three voters write and export a seed with every event, then stop.
        let mut old = Vec::new();
        for (i, k) in keys.iter().enumerate() {
            let s = node(k, &root.path().join(format!("old{i}")), "127.0.0.1:0", Admission::allow_all());
            s.start().await.expect("start");
            old.push(s);
        }
        let identity = NetworkIdentity {
            network_id: uuid::Uuid::from_u128(0xd1ff),
            network_name: "split-diff".into(),
            genesis_timestamp: chrono::Utc::now(),
        };
        old[0].initialize(identity).await.expect("initialize");
        for i in 1..3 {
            let (ann, peer) = (old[i].announcement().expect("announcement"), old[i].peer().expect("peer"));
            old[0].admit(ann).await.expect("admit");
            old[0].add_member(peer, true).await.expect("add voter");
        }
        for i in 0..3 {
            old[0].register_service(&format!("svc-{i}"), vec![], vec!["cap".into()], vec![]).await.expect("write");
        }
        let head = old[0].export_seed(&seed, true).await.expect("export");
        let addrs: Vec<String> = old.iter().map(|s| s.peer().expect("peer").addr).collect();
        for s in &mut old {
            s.shutdown().await.expect("shutdown");
        }
        // Group A (n0, n1) and group B (n2) admit only their own keys; each forms from the seed.
        let a = Admission::only([keys[0].node_id(), keys[1].node_id()]);
        let b = Admission::only([keys[2].node_id()]);
        let mut n: Vec<SporeSystem> = (0..3)
            .map(|i| {
                node(&keys[i], &root.path().join(format!("n{i}")), &addrs[i], if i < 2 { a.clone() } else { b.clone() })
            })
            .collect();
        for s in &mut n {
            s.start().await.expect("start");
        }
        n[0].form_from_seed(&seed, VerifyPolicy::default()).await.expect("A forms");
        let via = n[0].peer().expect("peer");
        n[1].join(via, true).await.expect("A's second voter");
        n[2].form_from_seed(&seed, VerifyPolicy::default()).await.expect("B forms");
        n[1].register_service("a-side", vec![], vec!["a".into()], vec![]).await.expect("A write");
        n[2].register_service("b-side", vec![], vec!["b".into()], vec![]).await.expect("B write");
        for s in &mut n {
            s.shutdown().await.expect("shutdown");
        }
        head
    });
    drop(rt);

    let out = run(&["diff", path(&root.path().join("n1")), path(&root.path().join("n2")), "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let d = json(&out);
    assert_eq!(d["fork"]["relation"], "diverged", "{d}");
    assert_eq!(d["fork"]["first_diverging_seq"], seed_head.seq + 1, "{d}");
    assert_eq!(d["fork"]["last_common"]["seq"], seed_head.seq);
    assert_eq!(d["fork"]["last_common"]["hash"], serde_json::to_value(seed_head.hash).expect("hash"));
    let names = |side: &str| -> Vec<String> {
        d["entities"]["services"][side]
            .as_array()
            .expect("services")
            .iter()
            .map(|s| s["service"]["name"].as_str().expect("name").to_string())
            .collect()
    };
    assert_eq!(names("only_in_a"), vec!["a-side".to_string()]);
    assert_eq!(names("only_in_b"), vec!["b-side".to_string()]);
}

/// `spore state --at-seq` on a ledger that archived and pruned its old history reads the
/// archive for a point below what the ledger holds, and the ledger above it: both answers are
/// the registries a replay of the whole history gives at that point.
#[test]
fn state_at_a_seq_below_a_pruned_ledger_s_history_reads_its_archive() {
    use mycnet_spores::seed::archive::{archive_and_prune, RetentionPolicy};
    use mycnet_spores::store::synth::{Synth, SynthConfig};
    use mycnet_spores::{Ledger, LedgerConfig, Projection};
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path().join("ledger");
    let mut synth = Synth::new(SynthConfig { seed: 5, nodes: 12, ..Default::default() });
    // Chunks of 150: each starts with a checkpoint, and state checkpoints (what a prune stops
    // at) come among them.
    let events: Vec<_> = (0..27).flat_map(|_| synth.next_chunk(150)).collect();
    let config = LedgerConfig { durable: false, checkpoint_interval: 1024, ..LedgerConfig::default() };
    let ledger = std::sync::RwLock::new(Ledger::open(&dir, config).expect("open"));
    for chunk in events.chunks(500) {
        let out = ledger.write().expect("lock").append(chunk.to_vec()).expect("append");
        assert!(out.iter().all(|o| o.is_ok()), "synthetic events apply");
    }
    let policy = RetentionPolicy { keep_events: Some(1500), keep_for: None };
    let voter = synth.keys()[0].clone();
    let archived =
        archive_and_prune(&ledger, &voter, &root.path().join("archive"), &policy).expect("archive").expect("pruned");
    drop(ledger);
    let below = archived.pruned.to / 2;
    let above = archived.pruned.to + 100;
    for at in [below, above] {
        let mut want = Projection::new();
        for ev in &events[..=at as usize] {
            want.append(ev.clone()).expect("replays");
        }
        let out = run(&["state", path(&dir), "--at-seq", &at.to_string(), "--json"]);
        assert_eq!(out.status.code(), Some(0), "at {at}: {}", String::from_utf8_lossy(&out.stderr));
        let got = json(&out);
        assert_eq!(got["head"]["seq"], at, "at {at}");
        let ids = |v: &Value, key: &str| -> Vec<String> {
            v[key].as_array().expect("a list").iter().map(|n| n["node"].to_string()).collect()
        };
        assert_eq!(ids(&got, "nodes").len(), want.nodes().count(), "nodes at {at}");
        assert_eq!(got["services"].as_array().map(Vec::len), Some(want.services().count()), "services at {at}");
        assert_eq!(
            got["head"]["hash"].as_str().map(str::to_string),
            want.head().map(|h| h.hash.to_string()),
            "the chain point at {at}"
        );
    }
}
