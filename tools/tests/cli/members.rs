//! `spore member` against `spore node` processes: a voter whose host is gone is removed by an
//! operator with an authority's key, and the refusals exit 1 with nothing changed.

use std::time::Duration;

use serde_json::Value;

use super::{json, three_voters, CALL_MS};
use crate::proc::{path, run, status, wait_until};

fn voters(addr: &str) -> Option<Vec<String>> {
    let st = status(addr, CALL_MS)?;
    let mut v: Vec<String> = st["voters"].as_array()?.iter().filter_map(|k| k.as_str().map(String::from)).collect();
    v.sort();
    Some(v)
}

#[test]
fn an_operator_removes_a_lost_voter_and_the_last_voter_stays() {
    let root = tempfile::tempdir().expect("tempdir");
    let (mut procs, _) = three_voters(root.path());
    let founder_key = procs[0].dir.join("node.key");
    let member = |args: &[&str]| run(&[&["member"], args].concat());

    // Node 2's host is gone for good.
    let gone = procs[2].key.clone();
    assert_eq!(procs[2].stop().code(), Some(0));
    std::fs::remove_dir_all(&procs[2].dir).expect("delete its data dir");

    let out = member(&["remove", &gone, "--addr", &procs[1].addr, "--key-file", path(&founder_key), "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(json(&out)["done"], "removed");
    let mut want = vec![procs[0].key.clone(), procs[1].key.clone()];
    want.sort();
    wait_until("two voters", Duration::from_secs(20), || voters(&procs[0].addr).filter(|v| *v == want));
    let list = json(&member(&["list", "--addr", &procs[0].addr, "--json"]));
    let listed: Vec<&Value> = list["members"].as_array().expect("members").iter().collect();
    assert!(listed.iter().all(|m| m["node"] != gone.as_str()), "the removed node is gone from the list: {list}");

    // The last voter can be neither demoted nor removed: exit 1, nothing changed.
    let out = member(&["demote", &procs[1].key, "--addr", &procs[0].addr, "--key-file", path(&founder_key)]);
    assert_eq!(out.status.code(), Some(0), "demote one of two voters: {}", String::from_utf8_lossy(&out.stderr));
    let out = member(&["demote", &procs[0].key, "--addr", &procs[0].addr, "--key-file", path(&founder_key)]);
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("last voter"), "{}", String::from_utf8_lossy(&out.stderr));
    let out = member(&["promote", &procs[1].key, "--addr", &procs[0].addr, "--key-file", path(&founder_key)]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    wait_until("two voters again", Duration::from_secs(20), || voters(&procs[1].addr).filter(|v| *v == want));
    for p in procs.iter_mut().take(2) {
        assert_eq!(p.stop().code(), Some(0), "clean exit on SIGTERM");
        let v = run(&["verify", path(&p.dir), "--json"]);
        assert_eq!(v.status.code(), Some(0), "{}", String::from_utf8_lossy(&v.stdout));
    }
}
