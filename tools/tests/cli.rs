//! The `spore` binary as users run it: exit codes, JSON output, damage reports, and separate
//! `spore node` processes on loopback surviving a `kill -9` of their leader.
//!
//! This file holds what the tests share (running `spore`, JSON, generated ledgers, node
//! processes and their voters); the tests are in `cli/`, one file per scenario: `inspector`,
//! `failures` (damage, a full disk, repair), `forensics` (diff, blame), `nodes` (node processes
//! through `kill -9`, latent nodes), `seeds` (the demo and the seed tools), `generate`,
//! `http` (`spore node --http` read with curl), `inputs`, `members`, `bench` (`spore bench`),
//! `backups` (`[backup]`, `spore seed list`), `upgrade` (a data dir of an earlier build) and
//! `paging` (`spore query --limit/--after/--all`).

// tests and benches: a panic is the failure report
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use serde_json::Value;

#[path = "cli/backups.rs"]
mod backups;
#[path = "cli/bench.rs"]
mod bench;
#[path = "../../tests/it/crafted.rs"]
mod crafted;
#[path = "cli/failures.rs"]
mod failures;
#[path = "cli/forensics.rs"]
mod forensics;
#[path = "cli/generate.rs"]
mod generate;
#[path = "cli/http.rs"]
mod http;
#[path = "cli/inputs.rs"]
mod inputs;
#[path = "cli/inspector.rs"]
mod inspector;
#[path = "cli/members.rs"]
mod members;
#[path = "cli/nodes.rs"]
mod nodes;
#[path = "cli/paging.rs"]
mod paging;
#[path = "common/proc.rs"]
#[allow(dead_code)]
mod proc;
#[path = "cli/seeds.rs"]
mod seeds;
#[path = "cli/upgrade.rs"]
mod upgrade;

use proc::{free_udp_port, path, run, spore, status, wait_until, Node};

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

/// One `spore node` process on loopback that formed a network alone, started and leading.
fn one_voter(root: &Path) -> Node {
    let mut n = keyed_procs(root, 1).remove(0);
    let all = vec![(n.key.clone(), n.addr.clone())];
    let args = node_args(&n, 0, &all);
    n.start(&args);
    wait_leads("the node leads", &n.addr);
    n
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
