//! The inspector on a generated history: `verify`, `dump`, `stats`, `state` and `replay` agree,
//! usage and I/O errors exit 2, a closed stdout ends a dump quietly, and `verify` reaches the
//! append verdict on crafted signatures.

use std::io::{BufRead, BufReader};
use std::process::Stdio;

use serde_json::Value;

use super::{crafted, generated, json};
use crate::proc::{path, run, spore};

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
