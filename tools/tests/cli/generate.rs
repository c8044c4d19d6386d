//! `spore generate` yields the same history for the same seed, across releases: benches and
//! bug reports name histories by `--events --nodes --seed` alone.

use super::{json, path, run};

/// Head hashes of histories written by the generator before it kept its pools of nodes and
/// services (issue 19): the faster planner must choose exactly the same events.
#[test]
fn generate_writes_the_same_history_for_a_seed() {
    let root = tempfile::tempdir().expect("tempdir");
    for (events, nodes, seed, head) in [
        (3000, 10, 3, "02062e783480ceb9433c10a4779bbad6a4ee95bbb2dafc512cdddbce06f81418"),
        (5000, 300, 9, "d5ff23715167a75fdb1f407a96ae882aa7f94b6ca283c2b3c4f29a743b1bc5db"),
    ] {
        let dir = root.path().join(format!("g-{events}-{nodes}"));
        let (e, n, s) = (events.to_string(), nodes.to_string(), seed.to_string());
        let out = run(&["generate", "--out", path(&dir), "--events", &e, "--nodes", &n, "--seed", &s, "--json"]);
        assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(json(&out)["head"]["hash"], head, "{events} events, {nodes} nodes, seed {seed}");
        assert_eq!(json(&run(&["verify", path(&dir), "--json"]))["ok"], true, "every event verifies");
    }
}
