//! The demo runs and verifies every node; its kept data dirs are the ground for the seed tools:
//! `seed export`, `inspect`, `verify`, `sign` and `import`, with events or state-only.

use super::json;
use crate::proc::{path, run, spore};

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
