//! The `spore` binary as users run it: exit codes, JSON output, damage reports, and separate
//! `spore node` processes on loopback surviving a `kill -9` of their leader.

// tests and benches: a panic is the failure report
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs, unreachable_pub)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;

#[path = "cli/generate.rs"]
mod generate;
#[path = "cli/inputs.rs"]
mod inputs;
#[path = "cli/members.rs"]
mod members;
#[path = "common/proc.rs"]
#[allow(dead_code)]
mod proc;

use proc::{free_udp_port, path, run, services, spore, status, wait_until, Node};

/// How long a status or query call to a node on loopback waits for its answer.
const CALL_MS: u64 = 1000;

/// Registers a service through `via` (the command's default timeout).
fn register(key_file: &Path, via: &str, name: &str) -> Option<String> {
    proc::register(key_file, via, name, 5000)
}

fn json(out: &Output) -> Value {
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim())
        .unwrap_or_else(|e| panic!("not JSON ({e}): {text}\nstderr: {}", String::from_utf8_lossy(&out.stderr)))
}

fn generated(events: u64) -> (tempfile::TempDir, PathBuf) {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path().join("ledger");
    let out = run(&[
        "generate",
        "--out",
        path(&dir),
        "--events",
        &events.to_string(),
        "--nodes",
        "10",
        "--seed",
        "3",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(json(&out)["events"], events);
    (root, dir)
}

#[test]
fn inspector_commands_agree_on_a_generated_history() {
    let (_root, dir) = generated(3000);
    let d = path(&dir);

    let v = run(&["verify", d, "--json"]);
    assert_eq!(v.status.code(), Some(0));
    let v = json(&v);
    assert_eq!(v["ok"], true);
    assert_eq!(v["events_verified"], 3000);
    assert_eq!(v["signatures_verified"], 3000);
    let head_hash = v["head"]["hash"].as_str().expect("head hash").to_string();
    assert_eq!(v["head"]["seq"], 2999);

    // Dump: JSON Lines, exactly the asked range, linked to each other.
    let dump = run(&["dump", d, "--from", "10", "--to", "19", "--json"]);
    assert_eq!(dump.status.code(), Some(0));
    let lines: Vec<Value> =
        String::from_utf8_lossy(&dump.stdout).lines().map(|l| serde_json::from_str(l).expect("json line")).collect();
    assert_eq!(lines.len(), 10);
    assert_eq!(lines[0]["seq"], 10);
    for w in lines.windows(2) {
        assert_eq!(w[1]["prev_hash"], w[0]["hash"]);
    }
    let last = run(&["dump", d, "--from", "2999", "--json"]);
    assert_eq!(json(&last)["hash"], head_hash.as_str());

    let stats = json(&run(&["stats", d, "--json"]));
    assert_eq!(stats["events"], 3000);
    let by_kind: u64 =
        stats["by_kind"].as_object().expect("by_kind").values().map(|n| n.as_u64().expect("count")).sum();
    assert_eq!(by_kind, 3000);

    // State at a seq and at that event's time name the same head.
    let at = json(&run(&["state", d, "--at-seq", "500", "--json"]));
    assert_eq!(at["head"]["seq"], 500);
    let t500 = json(&run(&["dump", d, "--from", "500", "--to", "500", "--json"]))["timestamp"]
        .as_str()
        .expect("time")
        .to_string();
    let at_time = json(&run(&["state", d, "--at-time", &t500, "--json"]));
    assert_eq!(at_time["head"], at["head"]);
    let full = json(&run(&["state", d, "--json"]));
    assert_eq!(full["head"]["hash"], head_hash.as_str());
    assert_eq!(full["nodes"].as_array().expect("nodes").len() as u64, stats["nodes"].as_u64().expect("nodes"));

    let audit = json(&run(&["replay", d, "--audit", "--json"]));
    assert_eq!(audit["events"], 3000);
    assert_eq!(audit["signatures_verified"], 3000);
    assert_eq!(audit["head"]["hash"], head_hash.as_str());
    assert!(audit["events_per_sec"].as_f64().expect("rate") > 0.0);
}

/// Overwrites one stored record's byte, as a failing disk would.
fn flip_record_byte(dir: &Path, seq: u64, offset: usize) {
    let db = fjall::Database::builder(dir).open().expect("open db");
    let ks = db.keyspace("ledger", fjall::KeyspaceCreateOptions::default).expect("ledger keyspace");
    let key = seq.to_be_bytes();
    let mut value = ks.get(key).expect("read").expect("record present").to_vec();
    let i = offset % value.len();
    value[i] ^= 0x40;
    ks.insert(key, value).expect("write");
    db.persist(fjall::PersistMode::SyncAll).expect("persist");
}

/// Replaces the signature of the record at `seq` with a forged one and re-chains every later
/// record and the head, so that only a signature check can catch it.
fn forge_signature_and_rechain(dir: &Path, seq: u64) {
    use mycnet_spores::store::record::{decode_record, encode_record};
    let db = fjall::Database::builder(dir).open().expect("open db");
    let ks = db.keyspace("ledger", fjall::KeyspaceCreateOptions::default).expect("ledger keyspace");
    let meta = db.keyspace("meta", fjall::KeyspaceCreateOptions::default).expect("meta keyspace");
    let read = |s: u64| decode_record(&ks.get(s.to_be_bytes()).expect("read").expect("present")).expect("decodes");
    let mut prev = read(seq - 1).hash;
    let mut s = seq;
    while let Some(v) = ks.get(s.to_be_bytes()).expect("read") {
        let mut ev = decode_record(&v).expect("decodes").event;
        if s == seq {
            ev.signature.0[40] ^= 0x01;
        }
        let linked = mycnet_spores::ChainedEvent::link(s, prev, ev);
        ks.insert(s.to_be_bytes(), encode_record(&linked)).expect("write");
        prev = linked.hash;
        s += 1;
    }
    let mut head = (s - 1).to_be_bytes().to_vec();
    head.extend_from_slice(prev.as_bytes());
    meta.insert("head", head).expect("write head");
    db.persist(fjall::PersistMode::SyncAll).expect("persist");
}

/// No reading command answers silently from records that fail their checks: a forged,
/// re-chained signature is damage for `verify`, `state`, `stats` and `dump` alike (exit 1).
#[test]
fn reading_commands_refuse_a_forged_signature() {
    let (_root, dir) = generated(400);
    forge_signature_and_rechain(&dir, 250);
    let v = run(&["verify", path(&dir), "--json"]);
    assert_eq!(v.status.code(), Some(1));
    assert_eq!(json(&v)["first_error"]["seq"], 250);
    for args in
        [vec!["state", path(&dir)], vec!["stats", path(&dir)], vec!["dump", path(&dir), "--from", "200", "--to", "260"]]
    {
        let out = run(&args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("250"),
            "{args:?} names the seq: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Before the damage, everything answers.
    assert_eq!(run(&["state", path(&dir), "--at-seq", "249"]).status.code(), Some(0));
    assert_eq!(run(&["dump", path(&dir), "--from", "0", "--to", "249"]).status.code(), Some(0));
}

/// A flipped byte in fjall's journal is damage (exit 1) that names the journal file and the way
/// out, not an I/O error.
#[test]
fn a_damaged_journal_is_bad_data_naming_the_file() {
    let (_root, dir) = generated(300);
    let journal = flip_journal_byte(&dir);
    let out = run(&["verify", path(&dir)]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "damaged data exits 1: {err}");
    let name = journal.file_name().expect("name").to_string_lossy().into_owned();
    assert!(err.contains(&name) && err.contains("damaged"), "names the journal and the damage: {err}");
    assert!(err.contains("spore repair"), "says the way out: {err}");
}

#[test]
fn damage_is_reported_with_its_sequence_number_and_exit_code_1() {
    let (_root, dir) = generated(800);
    flip_record_byte(&dir, 321, 150);
    let v = run(&["verify", path(&dir), "--json"]);
    assert_eq!(v.status.code(), Some(1), "bad data exits 1");
    let v = json(&v);
    assert_eq!(v["ok"], false);
    assert_eq!(v["first_error"]["seq"], 321, "{v}");
    let human = run(&["verify", path(&dir)]);
    assert_eq!(human.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&human.stdout).contains("DAMAGED at seq 321"),
        "{}",
        String::from_utf8_lossy(&human.stdout)
    );
    // Reading past the damage stops there with exit 1; reading before it is fine.
    assert_eq!(run(&["dump", path(&dir), "--from", "300", "--to", "330"]).status.code(), Some(1));
    assert_eq!(run(&["dump", path(&dir), "--from", "0", "--to", "320"]).status.code(), Some(0));
    assert_eq!(run(&["replay", path(&dir)]).status.code(), Some(1));
}

#[test]
fn usage_and_io_errors_exit_2() {
    let (root, dir) = generated(50);
    assert_eq!(run(&["verify", "/nonexistent/spore-ledger"]).status.code(), Some(2));
    let not_a_ledger = root.path().join("empty");
    std::fs::create_dir(&not_a_ledger).expect("mkdir");
    let out = run(&["verify", path(&not_a_ledger)]);
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!String::from_utf8_lossy(&out.stderr).is_empty(), "an error says why");
    assert_eq!(
        run(&["generate", "--out", path(&dir), "--events", "5"]).status.code(),
        Some(2),
        "refuses a non-empty dir"
    );
    assert_eq!(run(&["dump", path(&dir), "--from", "30", "--to", "10"]).status.code(), Some(2));
    assert_eq!(run(&["state", path(&dir), "--at-time", "yesterday"]).status.code(), Some(2));
    let past = run(&["state", path(&dir), "--at-seq", "50"]);
    assert_eq!(past.status.code(), Some(2), "--at-seq past the head (49) is a usage error");
    assert!(
        String::from_utf8_lossy(&past.stderr).contains("past the head"),
        "{}",
        String::from_utf8_lossy(&past.stderr)
    );
    assert_eq!(run(&["state", path(&dir), "--at-seq", "49"]).status.code(), Some(0));
    assert_eq!(run(&["frobnicate"]).status.code(), Some(2));
}

#[test]
fn a_closed_stdout_ends_the_dump_quietly() {
    let (_root, dir) = generated(3000);
    let mut child =
        spore().args(["dump", path(&dir)]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn");
    let mut first = String::new();
    BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut first).expect("one line");
    assert!(first.trim_start().starts_with('0'), "{first}");
    // The reader is gone now (like `| head -1`).
    let out = child.wait_with_output().expect("wait");
    assert_eq!(out.status.code(), Some(0), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    assert!(out.stderr.is_empty(), "no broken-pipe noise: {}", String::from_utf8_lossy(&out.stderr));
}

/// `spore node --timeouts wan` runs with the WAN profile (the TOML's `timeouts` otherwise,
/// LAN by default); anything else is a usage error.
#[test]
fn spore_node_picks_its_timeouts_profile() {
    let root = tempfile::tempdir().expect("tempdir");
    let ready = |extra: &[&str]| {
        let dir = root.path().join(format!("n{}", extra.len()));
        let listen = format!("127.0.0.1:{}", free_udp_port());
        let mut child = spore()
            .args(["node", "--data-dir", path(&dir), "--listen", &listen, "--init", "t", "--json"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn spore node");
        let mut first = String::new();
        BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut first).expect("the ready line");
        let _ = child.kill();
        let _ = child.wait();
        serde_json::from_str::<Value>(first.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {first}"))
    };
    assert_eq!(ready(&[])["timeouts"], "lan");
    assert_eq!(ready(&["--timeouts", "wan"])["timeouts"], "wan");
    assert_eq!(
        run(&["node", "--data-dir", "x", "--listen", "127.0.0.1:1", "--timeouts", "moon"]).status.code(),
        Some(2)
    );
}

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
            capabilities: vec![],
            endpoints: vec![Endpoint { protocol: "quic".into(), address: "10.1.1.1:1".into() }],
            metadata: vec![],
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
// Separate `spore node` processes on loopback

/// `n` node data dirs under `root`, each with a fresh key and a free loopback port.
fn keyed_procs(root: &Path, n: usize) -> Vec<Node> {
    (0..n).map(|i| Node::keygen(root.join(format!("n{i}")), format!("127.0.0.1:{}", free_udp_port()), None)).collect()
}

/// Node `i` of voters `all`: the first forms the network, the others join through it.
fn node_args(p: &Node, i: usize, all: &[(String, String)]) -> Vec<String> {
    p.args(i, all, "proc-test", 0, all.len())
}

/// Waits (30 s at most) until the node at `addr` leads.
fn wait_leads(what: &str, addr: &str) {
    wait_until(what, Duration::from_secs(30), || status(addr, CALL_MS).filter(|s| s["raft_state"] == "Leader"));
}

/// Three `spore node` processes on loopback, running as the three voters of one network, and
/// the (key, address) of each.
fn three_voters(root: &Path) -> (Vec<Node>, Vec<(String, String)>) {
    let mut procs = keyed_procs(root, 3);
    let all: Vec<(String, String)> = procs.iter().map(|p| (p.key.clone(), p.addr.clone())).collect();
    for (i, p) in procs.iter_mut().enumerate() {
        let args = node_args(p, i, &all);
        p.start(&args);
    }
    wait_for_three_voters(&procs);
    (procs, all)
}

/// Waits until every one of `voters` reports a membership of three voters.
fn wait_for_three_voters(voters: &[Node]) {
    wait_until("three voters", Duration::from_secs(30), || {
        voters
            .iter()
            .all(|p| status(&p.addr, CALL_MS).is_some_and(|s| s["voters"].as_array().is_some_and(|v| v.len() == 3)))
            .then_some(())
    });
}

#[test]
fn node_processes_keep_every_acknowledged_write_through_a_kill_9_of_the_leader() {
    let root = tempfile::tempdir().expect("tempdir");
    // All three are voters of one network.
    let (mut procs, all) = three_voters(root.path());
    let members = json(&run(&["member", "list", "--addr", &procs[1].addr, "--json"]));
    let places: Vec<&str> =
        members["members"].as_array().expect("members").iter().filter_map(|m| m["membership"].as_str()).collect();
    assert_eq!(places, ["voter", "voter", "voter"], "{members}");

    // A watcher in its own process follows the registrations as they commit.
    let mut watcher = spore()
        .args(["watch", "--addr", &procs[2].addr, "--kind", "service_registered", "--json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spore watch");
    let lines = std::io::BufRead::lines(std::io::BufReader::new(watcher.stdout.take().expect("stdout")));
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });

    let mut acked = Vec::new();
    for k in 0..5 {
        let via = &procs[k % 3];
        acked.push(
            register(&procs[(k + 1) % 3].dir.join("node.key"), &via.addr, &format!("svc-{k}"))
                .expect("write acknowledged"),
        );
    }
    let watched: Vec<String> = (0..5)
        .map(|_| {
            let line = rx.recv_timeout(Duration::from_secs(20)).expect("a watched event");
            let v: Value = serde_json::from_str(&line).expect("one JSON event per line");
            assert_eq!(v["kind"], "service_registered", "{v}");
            v["event"]["ServiceRegistered"]["service_id"].as_str().expect("service id").to_string()
        })
        .collect();
    assert_eq!(watched, acked, "every registration, in commit order");
    watcher.kill().expect("stop the watcher");
    let _ = watcher.wait();

    // Discovery reads trust: the founder's services (trust 1.000) pass a minimum of 0.6, the
    // admitted nodes' (0.500) do not.
    let trusted = json(&run(&["query", "--addr", &procs[0].addr, "services", "--min-trust", "0.6", "--json"]));
    let trusted = trusted.as_array().expect("services");
    assert!(!trusted.is_empty() && trusted.len() < acked.len(), "{trusted:?}");
    assert!(trusted.iter().all(|s| s["node_trust"].as_u64().is_some_and(|t| t >= 600)), "{trusted:?}");

    // A running node exports a seed at its committed head; only its own key may ask.
    let live = root.path().join("live.seed");
    let out = run(&[
        "seed",
        "export",
        "--addr",
        &procs[2].addr,
        "--key-file",
        path(&procs[2].dir.join("node.key")),
        "--out",
        path(&live),
        "--events",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let live_head = json(&out)["head"].clone();
    let inspected = json(&run(&["seed", "inspect", path(&live), "--json"]));
    assert_eq!(inspected["head"], live_head);
    assert_eq!(inspected["signers"][0], procs[2].key.as_str());
    let other = root.path().join("other.seed");
    let refused = run(&[
        "seed",
        "export",
        "--addr",
        &procs[2].addr,
        "--key-file",
        path(&procs[0].dir.join("node.key")),
        "--out",
        path(&other),
    ]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(!other.exists(), "nothing written for another key");

    // kill -9 the leader.
    let leader_key = wait_until("a leader", Duration::from_secs(10), || {
        status(&procs[0].addr, CALL_MS)?["leader"].as_str().map(String::from)
    });
    let li = procs.iter().position(|p| p.key == leader_key).expect("leader is one of ours");
    // The leader reports its two peers, their addresses and how far behind they are.
    let st = wait_until("peer lag", Duration::from_secs(10), || {
        let st = status(&procs[li].addr, CALL_MS)?;
        st["peers"].as_array()?.iter().all(|p| p["lag"].as_u64() == Some(0)).then_some(st)
    });
    let peers = st["peers"].as_array().expect("peers");
    assert_eq!(peers.len(), 2);
    assert!(peers
        .iter()
        .all(|p| procs.iter().any(|q| q.addr == p["addr"].as_str().unwrap_or_default() && q.key != leader_key)));
    let mut victim = procs[li].child.take().expect("running");
    victim.kill().expect("SIGKILL");
    victim.wait().expect("reaped");

    // Writes go on through the survivors (a new leader is elected).
    let survivor = (li + 1) % 3;
    for k in 5..10 {
        let id = wait_until("a write after the kill", Duration::from_secs(30), || {
            register(&procs[survivor].dir.join("node.key"), &procs[survivor].addr, &format!("svc-{k}"))
        });
        acked.push(id);
    }

    // Restart the killed leader from its data dir: it catches up, nothing acknowledged is lost.
    let args = node_args(&procs[li], li, &all);
    procs[li].start(&args);
    for p in &procs {
        wait_until("every acknowledged write on every node", Duration::from_secs(30), || {
            let have = services(&p.addr, CALL_MS)?;
            acked.iter().all(|id| have.contains(id)).then_some(())
        });
    }

    // SIGTERM: every node stops cleanly, and the ledgers verify with one head.
    for p in &mut procs {
        assert_eq!(p.stop().code(), Some(0), "clean exit on SIGTERM");
    }
    let heads: Vec<Value> = procs
        .iter()
        .map(|p| {
            let v = run(&["verify", path(&p.dir), "--json"]);
            assert_eq!(v.status.code(), Some(0), "{}", String::from_utf8_lossy(&v.stdout));
            json(&v)["head"].clone()
        })
        .collect();
    assert!(heads.windows(2).all(|w| w[0] == w[1]), "{heads:?}");

    // Backup and re-formation: a seed of n1's data dir forms the same network on a new data
    // dir holding n1's key, at the same head, and it takes writes again.
    let seed = root.path().join("backup.seed");
    let out = run(&["seed", "export", "--data-dir", path(&procs[1].dir), "--out", path(&seed), "--events"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let reborn_dir = root.path().join("reborn");
    std::fs::create_dir_all(&reborn_dir).expect("mkdir");
    std::fs::copy(procs[1].dir.join("node.key"), reborn_dir.join("node.key")).expect("copy key");
    let mut reborn = Node {
        dir: reborn_dir,
        addr: format!("127.0.0.1:{}", free_udp_port()),
        key: procs[1].key.clone(),
        ns: None,
        child: None,
    };
    let args = vec![
        "--data-dir".into(),
        path(&reborn.dir).to_string(),
        "--listen".into(),
        reborn.addr.clone(),
        "--from-seed".into(),
        path(&seed).to_string(),
    ];
    reborn.start(&args);
    let st = wait_until("the network formed from the seed", Duration::from_secs(30), || {
        status(&reborn.addr, CALL_MS).filter(|s| s["raft_state"] == "Leader" && s["head"]["hash"] == heads[0]["hash"])
    });
    assert_eq!(st["head"]["seq"], heads[0]["seq"]);
    assert!(
        register(&reborn.dir.join("node.key"), &reborn.addr, "after-restore").is_some(),
        "writes extend the seed's chain"
    );
}

/// Three voters and two latent nodes as five `spore node` processes on loopback: the latent
/// nodes stay out of Raft, learn the chain by QUIC gossip, answer queries, and their ledgers
/// verify with the voters' head.
#[test]
fn voter_and_latent_node_processes_converge_by_gossip() {
    let root = tempfile::tempdir().expect("tempdir");
    let mut procs = keyed_procs(root.path(), 5);
    let all: Vec<(String, String)> = procs.iter().map(|p| (p.key.clone(), p.addr.clone())).collect();
    for (i, p) in procs.iter_mut().enumerate() {
        // Voters join through n0; each latent node is pointed at a different voter.
        let via = if i < 3 { 0 } else { i - 2 };
        let mut a = p.args(i, &all, "gossip-test", via, 3);
        if i >= 3 {
            a.extend(["--role".into(), "latent".into()]);
        }
        p.start(&a);
    }
    wait_for_three_voters(&procs[..3]);
    let mut acked = Vec::new();
    for k in 0..6 {
        acked.push(
            register(&procs[k % 3].dir.join("node.key"), &procs[k % 3].addr, &format!("svc-{k}"))
                .expect("write acknowledged"),
        );
    }
    // A write handed to a latent node (signed with its own key) reaches the voters through it
    // and is committed once (once the node has synced the network it answers with the point).
    for (i, p) in procs[3..].iter().enumerate() {
        let key = p.dir.join("node.key");
        acked.push(wait_until("a write through a latent node", Duration::from_secs(30), || {
            register(&key, &p.addr, &format!("via-latent-{i}"))
        }));
    }
    for p in &procs[3..] {
        wait_until("every acknowledged write on the latent node", Duration::from_secs(30), || {
            let have = services(&p.addr, CALL_MS)?;
            acked.iter().all(|id| have.contains(id)).then_some(())
        });
        let st = status(&p.addr, CALL_MS).expect("status");
        assert_eq!(st["raft_member"], false, "a latent node stays out of Raft: {st}");
        assert_eq!(st["voters"].as_array().map(|v| v.len()), Some(0));
    }
    // The latent nodes are registered as Rhizomorphs.
    let out = run(&["query", "--addr", &procs[0].addr, "nodes", "--json"]);
    let nodes = json(&out);
    for p in &procs[3..] {
        let rec = nodes.as_array().expect("array").iter().find(|n| n["node"] == p.key.as_str()).expect("registered");
        assert_eq!(rec["role"], "Rhizomorph");
    }
    // Same head everywhere (anchors may still be landing: wait for a quiet moment).
    wait_until("one head on all five nodes", Duration::from_secs(60), || {
        let heads: Vec<Value> =
            procs.iter().map(|p| status(&p.addr, CALL_MS).map(|s| s["head"].clone())).collect::<Option<_>>()?;
        heads.windows(2).all(|w| w[0] == w[1]).then_some(())
    });
    // Asked for a tiered answer, a latent node answers from the most authoritative tier that
    // has the services and says which: Primary once a voter's checkpoint covering them
    // reached it (anchors come at least every 5 s), as of no later than its head.
    let p = &procs[3];
    wait_until("a Primary-tier answer on the latent node", Duration::from_secs(30), || {
        let out = run(&["query", "--addr", &p.addr, "services", "--tiered", "--json", "--timeout-ms", "1000"]);
        let v = (out.status.code() == Some(0)).then(|| json(&out))?;
        let ids: Vec<&str> =
            v["answer"].as_array()?.iter().filter_map(|s| s["service"]["service_id"].as_str()).collect();
        assert!(!ids.is_empty(), "a tiered answer is never empty when a tier has services: {v}");
        let st = status(&p.addr, CALL_MS)?;
        assert!(v["at"]["seq"].as_u64()? <= st["head"]["seq"].as_u64()?, "answered from beyond the head: {v}");
        (v["tier"] == "Primary"
            && acked.iter().all(|id| ids.contains(&id.as_str()))
            && st["reach"]["primary"].as_u64().is_some())
        .then_some(())
    });
    for p in &mut procs {
        assert_eq!(p.stop().code(), Some(0), "clean exit on SIGTERM");
    }
    for p in &procs[3..] {
        let v = run(&["verify", path(&p.dir), "--json"]);
        assert_eq!(v.status.code(), Some(0), "the gossiped ledger verifies: {}", String::from_utf8_lossy(&v.stdout));
    }
}

#[test]
fn the_demo_runs_and_verifies_every_node() {
    let root = tempfile::tempdir().expect("tempdir");
    let out = spore().args(["demo", "--dir", path(root.path())]).output().expect("demo runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("new leader:"), "{text}");
    assert!(text.contains("All 6 nodes hold the same verified chain"), "{text}");
    assert!(text.contains("backfilled everything below the seed down to genesis"), "{text}");
    // --dir keeps the data for the inspector.
    for n in ["v0", "v1", "v2", "l0", "l1", "g0"] {
        assert_eq!(run(&["verify", path(&root.path().join(n))]).status.code(), Some(0));
    }

    // A kept dir is a complete node data dir: seed export signs with its key.
    let seed = root.path().join("v1.seed");
    let out = run(&[
        "seed",
        "export",
        "--data-dir",
        path(&root.path().join("v1")),
        "--out",
        path(&seed),
        "--events",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let exported = json(&out);
    let info = json(&run(&["seed", "inspect", path(&seed), "--json"]));
    assert_eq!(info["head"], exported["head"]);
    assert_eq!(info["voters"], 3);
    assert_eq!(info["events"].as_u64(), exported["head"]["seq"].as_u64().map(|s| s + 1));
    let fp = info["fingerprint"].as_str().expect("fingerprint");
    assert_eq!(run(&["seed", "verify", path(&seed), "--network", fp]).status.code(), Some(0));
    // Exactly what failed, exit 1: another network, no quorum, a flipped byte, a cut file.
    let other = "ab".repeat(32);
    let wrong = run(&["seed", "verify", path(&seed), "--network", &other, "--json"]);
    assert_eq!(wrong.status.code(), Some(1));
    assert!(json(&wrong)["error"].as_str().expect("reason").contains("network"), "{}", json(&wrong));
    let under = run(&["seed", "verify", path(&seed), "--quorum", "--json"]);
    assert_eq!(under.status.code(), Some(1));
    assert!(json(&under)["error"].as_str().expect("reason").contains("quorum"), "{}", json(&under));
    let mut bytes = std::fs::read(&seed).expect("read");
    let damaged = root.path().join("damaged.seed");
    bytes[300] ^= 0x10;
    std::fs::write(&damaged, &bytes).expect("write");
    assert_eq!(run(&["seed", "verify", path(&damaged)]).status.code(), Some(1));
    std::fs::write(&damaged, &bytes[..bytes.len() / 2]).expect("write");
    assert_eq!(run(&["seed", "verify", path(&damaged)]).status.code(), Some(1));
    assert_eq!(run(&["seed", "verify", path(&root.path().join("missing.seed"))]).status.code(), Some(2));

    // Import into a new data dir gives the same verified chain; a seed that is not newer, a
    // Raft member's data dir, and a damaged seed are refused with nothing imported.
    let copy = root.path().join("copy");
    let out = run(&["seed", "import", "--data-dir", path(&copy), path(&seed), "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(json(&out)["head"], exported["head"]);
    let v = json(&run(&["verify", path(&copy), "--json"]));
    assert_eq!(v["ok"], true);
    assert_eq!(v["head"], exported["head"]);
    let again = run(&["seed", "import", "--data-dir", path(&copy), path(&seed)]);
    assert_eq!(again.status.code(), Some(1), "a seed not newer than the ledger");
    assert!(String::from_utf8_lossy(&again.stderr).contains("not newer"), "{}", String::from_utf8_lossy(&again.stderr));
    let member = run(&["seed", "import", "--data-dir", path(&root.path().join("v2")), path(&seed)]);
    assert_eq!(member.status.code(), Some(2), "a Raft member's data dir: {}", String::from_utf8_lossy(&member.stderr));
    // Co-signed by the other voters it becomes quorum-signed, and imports in bulk.
    for v in ["v0", "v2"] {
        let out =
            run(&["seed", "sign", path(&seed), "--key-file", path(&root.path().join(v).join("node.key")), "--json"]);
        assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    }
    assert_eq!(run(&["seed", "verify", path(&seed), "--quorum"]).status.code(), Some(0));
    assert_eq!(
        run(&["seed", "sign", path(&seed), "--key-file", path(&root.path().join("l0").join("node.key"))]).status.code(),
        Some(1),
        "a non-voter cannot sign"
    );
    let bulk = root.path().join("bulk");
    let out = run(&["seed", "import", "--data-dir", path(&bulk), path(&seed), "--quorum", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(json(&run(&["verify", path(&bulk), "--json"]))["head"], exported["head"]);

    let fresh = root.path().join("fresh");
    assert_eq!(run(&["seed", "import", "--data-dir", path(&fresh), path(&damaged)]).status.code(), Some(1));
    assert!(!fresh.join("ledger").exists(), "nothing created for a seed that does not verify");

    // A state-only seed (the state the chain attests and the events after it) imports as that
    // state and those events; the inspector says the history below is not held yet and checks
    // what is there.
    let bare = root.path().join("v1-state.seed");
    let out = run(&["seed", "export", "--data-dir", path(&root.path().join("v1")), "--out", path(&bare), "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let written = json(&out);
    assert_eq!(written["includes_events"], false, "the demo's chain attests a state: {written}");
    let head_seq = exported["head"]["seq"].as_u64().expect("head seq");
    let state_seq = written["state_seq"].as_u64().expect("state seq");
    assert!(state_seq < head_seq, "{written}");
    let checked = json(&run(&["seed", "verify", path(&bare), "--json"]));
    assert_eq!(
        (checked["format_version"].as_u64(), checked["state"]["kind"].as_str()),
        (Some(2), Some("attested_at")),
        "{checked}"
    );
    assert_eq!(checked["state"]["seq"].as_u64(), Some(state_seq));
    let latent = root.path().join("from-state");
    let out = run(&["seed", "import", "--data-dir", path(&latent), path(&bare), "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(json(&out)["history_from"].as_u64(), Some(state_seq + 1));
    assert_eq!(json(&out)["imported_events"].as_u64(), Some(head_seq - state_seq));
    let v = json(&run(&["verify", path(&latent), "--json"]));
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["head"], exported["head"]);
    assert_eq!(v["history_from"].as_u64(), Some(state_seq + 1));
    assert_eq!(v["base"]["seq"].as_u64(), Some(state_seq));
    assert_eq!(v["base_attested"], true, "the chain attests the state the seed started from: {v}");
    assert_eq!(json(&run(&["stats", path(&latent), "--json"]))["history_from"].as_u64(), Some(state_seq + 1));
    let state = run(&["state", path(&latent), "--json"]);
    assert_eq!(
        state.status.code(),
        Some(0),
        "the state at the head is the seed's: {}",
        String::from_utf8_lossy(&state.stderr)
    );
    let early = run(&["state", path(&latent), "--at-seq", "1"]);
    assert_eq!(early.status.code(), Some(2), "before the seed's head there is nothing to replay");
    assert!(
        String::from_utf8_lossy(&early.stderr).contains("backfilled"),
        "{}",
        String::from_utf8_lossy(&early.stderr)
    );
    let dump = run(&["dump", path(&latent)]);
    assert_eq!(dump.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&dump.stderr).contains("state-only seed"),
        "{}",
        String::from_utf8_lossy(&dump.stderr)
    );
    // Into a ledger that already holds a chain a state-only seed cannot go.
    assert_eq!(run(&["seed", "import", "--data-dir", path(&copy), path(&bare)]).status.code(), Some(1));
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

#[path = "../../tests/it/crafted.rs"]
mod crafted;

/// One signature validity rule (`schema/encoding.md`): events an admitted author signed with a
/// torsion component in `R` were accepted when appended, so `spore verify`, `spore state` and
/// `spore seed verify` accept them too, whatever batch they land in.
#[test]
fn verify_and_seed_verify_reach_the_append_verdict_on_crafted_signatures() {
    use mycnet_spores::{
        EventBody, Ledger, LedgerConfig, NetworkIdentity, NodeAnnouncement, NodeKey, NodeRole, SignedEvent, Timestamp,
    };

    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path().join("ledger");
    let founder = NodeKey::from_seed([0x18; 32]);
    let identity = NetworkIdentity {
        network_id: uuid::Uuid::from_u128(18),
        network_name: "crafted".into(),
        genesis_timestamp: chrono::Utc::now(),
    };
    let ann = NodeAnnouncement {
        node: founder.node_id(),
        name: "founder".into(),
        role: NodeRole::Sclerotium,
        addresses: vec!["127.0.0.1:7400".into()],
        capabilities: vec![],
    };
    let genesis = SignedEvent::genesis(&founder, identity.to_record(), ann);
    let fp = genesis.fingerprint;
    let t0 = genesis.timestamp;
    let mut events = vec![genesis];
    for i in 1..=700i64 {
        let body = EventBody::CapabilitiesChanged { node: founder.node_id(), capabilities: vec![format!("c{i}")] };
        let mut ev = SignedEvent::sign(&founder, fp, Timestamp(t0.0 + i), body);
        if i % 2 == 0 {
            ev.signature = crafted::torsioned(&founder, &ev.signing_message());
        }
        events.push(ev);
    }
    let mut ledger = Ledger::open(&dir, LedgerConfig::default()).expect("open");
    for chunk in events.chunks(97) {
        assert!(ledger.append(chunk.to_vec()).expect("append").iter().all(|o| o.is_ok()));
    }
    let chained = ledger.read_range(0, 700).expect("read");
    let seed_bytes = mycnet_spores::seed::build(ledger.projection(), Some(&chained), &[&founder]).expect("seed");
    drop(ledger);
    let seed = root.path().join("crafted.seed");
    std::fs::write(&seed, seed_bytes).expect("write seed");

    let v = run(&["verify", path(&dir), "--json"]);
    assert_eq!(v.status.code(), Some(0), "{}", String::from_utf8_lossy(&v.stdout));
    assert_eq!(json(&v)["signatures_verified"], 701);
    assert_eq!(run(&["state", path(&dir), "--json"]).status.code(), Some(0));
    let s = run(&["seed", "verify", path(&seed), "--json"]);
    assert_eq!(s.status.code(), Some(0), "{}", String::from_utf8_lossy(&s.stdout));
}

/// `spore node` on a full disk stops with a one-line reason and a non-zero exit (a supervisor
/// restarts it once space is freed). Mounts a small tmpfs: needs root, as CI runs.
#[test]
fn a_node_whose_disk_fills_exits_non_zero_with_the_reason() {
    let root = tempfile::tempdir().expect("tempdir");
    // The data dir is the small disk; the node's log (next to it) is not, as a supervisor's
    // would not be, so the last line can be read.
    let mnt = root.path().join("n0");
    std::fs::create_dir(&mnt).expect("mkdir");
    let mounted =
        Command::new("mount").args(["-t", "tmpfs", "-o", "size=32m", "tmpfs"]).arg(&mnt).output().expect("run mount");
    assert!(
        mounted.status.success(),
        "mounting a tmpfs needs root (CI runs as root): {}",
        String::from_utf8_lossy(&mounted.stderr)
    );
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(mnt.clone());
    let mut procs = keyed_procs(root.path(), 1);
    assert_eq!(procs[0].dir, mnt);
    let all = vec![(procs[0].key.clone(), procs[0].addr.clone())];
    let args = node_args(&procs[0], 0, &all);
    procs[0].start(&args);
    let addr = procs[0].addr.clone();
    wait_leads("the node leads", &addr);
    // Leave the node a little room, then write until it is gone.
    let free = {
        let out = Command::new("df").args(["--output=avail", "-B1"]).arg(&mnt).output().expect("df");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        text.lines().nth(1).and_then(|l| l.trim().parse::<u64>().ok()).expect("df prints the free bytes")
    };
    let filler = vec![0u8; (free.saturating_sub(512 * 1024)) as usize];
    let _ = std::fs::write(mnt.join("filler"), &filler);
    let key = procs[0].dir.join("node.key");
    // Incompressible metadata (the journal compresses), different in every write.
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let exit = wait_until("the node stops on the full disk", Duration::from_secs(60), || {
        let meta: Vec<String> = (0..8)
            .map(|k| {
                let v: String = (0..60)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        format!("{:08x}", x as u32)
                    })
                    .collect();
                format!("--meta=k{k}={v}")
            })
            .collect();
        let mut a = vec![
            "service",
            "register",
            "--key-file",
            path(&key),
            "--addr",
            &addr,
            "--name",
            "fill",
            "--endpoint",
            "tcp://127.0.0.1:1",
            "--timeout-ms",
            "2000",
        ];
        a.extend(meta.iter().map(String::as_str));
        let _ = run(&a);
        procs[0].child.as_mut().and_then(|c| c.try_wait().expect("try_wait"))
    });
    assert!(!exit.success(), "a halted node exits non-zero: {exit:?}");
    let log = std::fs::read_to_string(procs[0].dir.with_extension("log")).expect("log");
    let last = log.lines().rfind(|l| !l.trim().is_empty()).unwrap_or_default().to_string();
    assert!(
        last.contains("halted") && last.contains("No space left"),
        "the last line says why: {last}\nlog tail:\n{}",
        log.lines().rev().take(20).collect::<Vec<_>>().join("\n")
    );
    // Space freed, the supervisor's restart brings writes back with nothing acknowledged lost.
    std::fs::remove_file(mnt.join("filler")).expect("free space");
    let args: Vec<String> = vec!["--data-dir".into(), path(&procs[0].dir).into(), "--listen".into(), addr.clone()];
    procs[0].start(&args);
    wait_leads("the restarted node leads", &addr);
    assert!(register(&key, &addr, "after").is_some(), "writes are taken again");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read dir").flatten() {
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        if src.is_dir() {
            copy_dir(&src, &dst);
        } else {
            std::fs::copy(&src, &dst).expect("copy");
        }
    }
}

/// Flips one byte of the fjall journal in `ledger_dir`, as a failing disk would; returns the
/// journal's path. The journal is preallocated: its first kilobytes hold what was written.
fn flip_journal_byte(ledger_dir: &Path) -> PathBuf {
    let journal = std::fs::read_dir(ledger_dir)
        .expect("ledger dir")
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "jnl"))
        .expect("a journal file");
    let mut bytes = std::fs::read(&journal).expect("read journal");
    bytes[1000] ^= 0x01;
    std::fs::write(&journal, &bytes).expect("write journal");
    journal
}

/// `spore repair` rebuilds a damaged data dir from a peer or from a seed, keeps the node key
/// and the damaged ledger, and refuses a ledger that verifies.
#[test]
fn repair_rebuilds_a_damaged_data_dir_from_a_peer_or_a_seed() {
    let root = tempfile::tempdir().expect("tempdir");
    let mut procs = keyed_procs(root.path(), 1);
    let all = vec![(procs[0].key.clone(), procs[0].addr.clone())];
    let args = node_args(&procs[0], 0, &all);
    procs[0].start(&args);
    let addr = procs[0].addr.clone();
    wait_leads("the node leads", &addr);
    let key = procs[0].dir.join("node.key");
    for i in 0..5 {
        register(&key, &addr, &format!("svc-{i}")).expect("write");
    }
    // A stopped copy of the node's data dir, then its journal damaged: fjall cannot open it.
    assert!(procs[0].stop().success());
    let (by_peer, by_seed) = (root.path().join("by-peer"), root.path().join("by-seed"));
    for d in [&by_peer, &by_seed] {
        copy_dir(&procs[0].dir, d);
        flip_journal_byte(&d.join("ledger"));
        assert_eq!(run(&["verify", path(d)]).status.code(), Some(1), "the copy is damaged");
    }
    let healthy_refused = run(&["repair", "--data-dir", path(&procs[0].dir), "--from-peer", &addr]);
    assert_eq!(healthy_refused.status.code(), Some(2), "nothing to repair in a ledger that verifies");
    let restart = ["--data-dir".to_string(), path(&procs[0].dir).to_string(), "--listen".to_string(), addr.clone()];
    procs[0].start(&restart);
    wait_leads("the node leads again", &addr);
    let head = status(&addr, CALL_MS).expect("status")["head"]["seq"].as_u64().expect("head");

    let key_before = std::fs::read(by_peer.join("node.key")).expect("key");
    let out = run(&["repair", "--data-dir", path(&by_peer), "--from-peer", &addr, "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let report = json(&out);
    assert!(report["damage"].as_str().is_some_and(|d| d.contains("damaged")), "{report}");
    assert!(report["head"]["seq"].as_u64().is_some_and(|s| s >= head), "{report}");
    assert_eq!(std::fs::read(by_peer.join("node.key")).expect("key"), key_before, "the node key is kept");
    assert!(std::path::Path::new(report["kept"].as_str().expect("kept")).is_dir(), "the damaged ledger is kept");
    assert_eq!(run(&["verify", path(&by_peer)]).status.code(), Some(0), "the rebuilt ledger verifies");

    let seed = root.path().join("n0.seed");
    let out = run(&["seed", "export", "--addr", &addr, "--key-file", path(&key), "--out", path(&seed), "--events"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let out = run(&["repair", "--data-dir", path(&by_seed), "--from-seed", path(&seed)]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(run(&["verify", path(&by_seed)]).status.code(), Some(0));
}
