//! A data dir written by an earlier build opens in this one: the node resumes its chain and
//! its Raft state, and goes on committing.
//!
//! `tools/tests/fixtures/raft09-node.tar.gz` is the data dir of a one-voter network run by
//! `spore node` built with openraft 0.9.25 (before issue 23): genesis, the node's join and three
//! registrations (`svc-1` … `svc-3`), then a SIGTERM. Its Raft log, vote, applied log id and
//! membership are openraft 0.9's types, postcard-encoded.

use std::path::Path;
use std::time::Duration;

use crate::proc::{free_udp_port, path, register, run, services, status, wait_until, Node};

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/raft09-node.tar.gz");

fn unpack(into: &Path) {
    let out = std::process::Command::new("tar").args(["xzf", FIXTURE, "-C", path(into)]).output().expect("run tar");
    assert!(out.status.success(), "tar: {}", String::from_utf8_lossy(&out.stderr));
}

fn head_seq(addr: &str) -> Option<u64> {
    status(addr, 1_000).and_then(|s| s["head"]["seq"].as_u64())
}

#[test]
fn a_data_dir_written_with_openraft_0_9_resumes_and_keeps_committing() {
    let root = tempfile::tempdir().expect("tempdir");
    unpack(root.path());
    let dir = root.path().join("n0");
    let verified = run(&["verify", path(&dir), "--json"]);
    assert_eq!(verified.status.code(), Some(0), "{}", String::from_utf8_lossy(&verified.stdout));

    let mut node = Node {
        dir: dir.clone(),
        key: String::new(),
        addr: format!("127.0.0.1:{}", free_udp_port()),
        ns: None,
        child: None,
    };
    node.start(&["--data-dir".into(), path(&dir).into(), "--listen".into(), node.addr.clone()]);
    let st = wait_until("the 0.9 node leads again", Duration::from_secs(20), || {
        status(&node.addr, 1_000).filter(|s| s["raft_state"] == "Leader")
    });
    assert_eq!(st["head"]["seq"], 4, "{st}");
    assert!(st["term"].as_u64().is_some_and(|t| t >= 1), "its stored vote is read: {st}");
    assert_eq!(services(&node.addr, 2_000).map(|s| s.len()), Some(3), "the three services of the fixture");

    let id = register(&node.key_file(), &node.addr, "svc-after-upgrade", 10_000).expect("a new write commits");
    assert_eq!(head_seq(&node.addr), Some(5));
    assert!(services(&node.addr, 2_000).is_some_and(|s| s.contains(&id)));
    assert!(node.stop().success());

    // Closed and reopened by this build, the ledger still verifies from genesis.
    let verified = run(&["verify", path(&dir), "--json"]);
    assert_eq!(verified.status.code(), Some(0), "{}", String::from_utf8_lossy(&verified.stdout));
}
