//! The field: real `spore node` processes, each in its own network namespace behind a veth on
//! one bridge, under the faults an operator meets — an iptables partition that cuts the
//! leader off, SIGSTOP of the leader, `kill -9` of a node — while a writer keeps going. At the
//! end no acknowledged write is lost, every head converges and every ledger verifies.
//!
//! The nodes talk either directly (a LAN) or over a WAN: each advertises the address of a
//! userspace UDP proxy in front of it (`tests/it/udp_proxy.rs`, on a second address of the
//! bridge in the root namespace) that delays every datagram by 50 ± 20 ms and drops some, so
//! every node-to-node datagram crosses one such link (this kernel has no netem). The
//! partition then also drops what comes from or goes to the proxies' address.
//!
//! Needs root (namespaces, veth, iptables; CI runs as root and `.ci/run` installs iptables).
//! The default run is one round of faults on the LAN; the WAN round is opt-in for now (see its
//! test); `SPORES_FIELD_ROUNDS=N cargo test -p mycnet-spores-tools --test field -- --ignored`
//! runs the long version (N rounds on each link) and the WAN round.

// tests and benches: a panic is the failure report
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs, unreachable_pub)]

#[path = "common/proc.rs"]
#[allow(dead_code)]
mod proc;
#[path = "../../tests/it/udp_proxy.rs"]
#[allow(dead_code)]
mod udp_proxy;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use proc::{path, run, services, wait_until, Node};
use serde_json::Value;
use udp_proxy::{LinkFaults, UdpProxy};

/// How long a status or query call waits for its answer (across namespaces, maybe a WAN).
const CALL_MS: u64 = 1500;

fn status(addr: &str) -> Option<Value> {
    proc::status(addr, CALL_MS)
}

/// Registers a service through `addr`; its id if the write was acknowledged.
fn register(key_file: &Path, addr: &str, name: &str) -> Option<String> {
    proc::register(key_file, addr, name, 4000)
}

fn sh(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed (needs root; CI runs as root): {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A bridge and one network namespace per node, removed on drop.
struct Net {
    tag: String,
    subnet: String,
    nodes: usize,
}

impl Net {
    fn new(nodes: usize) -> Net {
        // Short, unique names (interface names are at most 15 bytes): per process and run.
        static RUNS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let run = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 2;
        let id = (std::process::id() % 100) * 2 + run + 20;
        let tag = format!("spf{id}");
        let subnet = format!("10.213.{id}");
        let net = Net { tag, subnet, nodes };
        net.teardown();
        sh(&["ip", "link", "add", &net.bridge(), "type", "bridge"]);
        sh(&["ip", "addr", "add", &format!("{}.254/24", net.subnet), "dev", &net.bridge()]);
        // The proxies' own address (secondary, so the root namespace still talks to the nodes
        // from .254 and a partition can tell proxied traffic apart).
        sh(&["ip", "addr", "add", &format!("{}/24", net.proxy_ip()), "dev", &net.bridge()]);
        sh(&["ip", "link", "set", &net.bridge(), "up"]);
        for i in 0..nodes {
            let ns = net.ns(i);
            let (host, inner) = (format!("{}v{i}", net.tag), format!("{}e{i}", net.tag));
            sh(&["ip", "netns", "add", &ns]);
            sh(&["ip", "link", "add", &host, "type", "veth", "peer", "name", &inner]);
            sh(&["ip", "link", "set", &inner, "netns", &ns]);
            sh(&["ip", "link", "set", &host, "master", &net.bridge(), "up"]);
            sh(&["ip", "netns", "exec", &ns, "ip", "addr", "add", &format!("{}/24", net.ip(i)), "dev", &inner]);
            sh(&["ip", "netns", "exec", &ns, "ip", "link", "set", &inner, "up"]);
            sh(&["ip", "netns", "exec", &ns, "ip", "link", "set", "lo", "up"]);
        }
        net
    }

    fn bridge(&self) -> String {
        format!("{}br", self.tag)
    }

    fn ns(&self, i: usize) -> String {
        format!("{}n{i}", self.tag)
    }

    fn ip(&self, i: usize) -> String {
        format!("{}.{}", self.subnet, i + 1)
    }

    fn proxy_ip(&self) -> String {
        format!("{}.253", self.subnet)
    }

    /// Cuts node `i` off from every other node (both directions), as a partition would: the
    /// other nodes' addresses and the proxies' one.
    fn isolate(&self, i: usize) {
        let others = (0..self.nodes).filter(|j| *j != i).map(|j| self.ip(j));
        for ip in others.chain([self.proxy_ip()]) {
            sh(&["ip", "netns", "exec", &self.ns(i), "iptables", "-A", "INPUT", "-s", &ip, "-j", "DROP"]);
            sh(&["ip", "netns", "exec", &self.ns(i), "iptables", "-A", "OUTPUT", "-d", &ip, "-j", "DROP"]);
        }
    }

    fn heal(&self, i: usize) {
        sh(&["ip", "netns", "exec", &self.ns(i), "iptables", "-F"]);
    }

    fn teardown(&self) {
        for i in 0..self.nodes {
            let _ = Command::new("ip").args(["netns", "del", &self.ns(i)]).output();
            let _ = Command::new("ip").args(["link", "del", &format!("{}v{i}", self.tag)]).output();
        }
        let _ = Command::new("ip").args(["link", "del", &self.bridge()]).output();
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        self.teardown();
    }
}

fn leader_index(nodes: &[Node]) -> Option<usize> {
    nodes.iter().position(|n| {
        n.child.is_some()
            && status(&n.addr).is_some_and(|s| s["raft_state"] == "Leader" && s["leader_confirmed"] != false)
    })
}

/// Writes `n` services through the running nodes in turn; returns the acknowledged ids.
fn write_some(nodes: &[Node], key: &Path, n: usize, tag: &str) -> Vec<String> {
    let running: Vec<&Node> = nodes.iter().filter(|n| n.child.is_some()).collect();
    (0..n).filter_map(|k| register(key, &running[k % running.len()].addr, &format!("{tag}-{k}"))).collect()
}

/// How the nodes reach each other.
#[derive(Clone, Copy, Debug)]
enum Link {
    /// Directly over the bridge.
    Lan,
    /// Through a delay/loss proxy in front of each node, with the WAN timeouts profile.
    Wan(LinkFaults),
}

/// 50 ± 20 ms one way, 10 % of datagrams lost.
const WAN: LinkFaults = LinkFaults { delay: Duration::from_millis(50), jitter: Duration::from_millis(20), loss: 0.1 };

/// One field run at a time: six node processes on two cores are enough, and the fault timings
/// mean something only without a second run competing.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn field_run(rounds: usize, link: Link) {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let net = Net::new(3);
    let root = tempfile::tempdir().expect("tempdir");
    let mut nodes: Vec<Node> = (0..3)
        .map(|i| Node::keygen(root.path().join(format!("n{i}")), format!("{}:7400", net.ip(i)), Some(net.ns(i))))
        .collect();
    // Over the WAN each node advertises its proxy; the test's own calls go to the nodes directly.
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let _in_rt = rt.enter();
    let proxies: Vec<UdpProxy> = match link {
        Link::Lan => Vec::new(),
        Link::Wan(faults) => nodes
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let ip = net.proxy_ip().parse().expect("proxy ip");
                let proxy = rt.block_on(UdpProxy::bind_on(ip, faults, 0xf1e1d + i as u64));
                proxy.forward_to(n.addr.parse().expect("node address"));
                proxy
            })
            .collect(),
    };
    let reach: Vec<String> = match link {
        Link::Lan => nodes.iter().map(|n| n.addr.clone()).collect(),
        Link::Wan(_) => proxies.iter().map(|p| p.addr.to_string()).collect(),
    };
    let all: Vec<(String, String)> = nodes.iter().zip(&reach).map(|(n, r)| (n.key.clone(), r.clone())).collect();
    let profile: Vec<String> = match link {
        Link::Lan => vec![],
        Link::Wan(_) => vec!["--timeouts".into(), "wan".into()],
    };
    let args = |i: usize| -> Vec<String> {
        let mut a = nodes[i].args(i, &all, "field", 0, all.len());
        a.extend(profile.iter().cloned());
        if let Link::Wan(_) = link {
            a.extend(["--advertise".into(), reach[i].clone()]);
        }
        a
    };
    let argv: Vec<Vec<String>> = (0..3).map(args).collect();
    // Bounds on waiting: a WAN link's elections and joins take seconds, not hundreds of ms.
    let patience = |secs: u64| Duration::from_secs(if matches!(link, Link::Wan(_)) { secs * 3 } else { secs });
    for (i, a) in argv.iter().enumerate() {
        nodes[i].start(a);
        if i == 0 {
            wait_until("the founder leads", patience(30), || {
                status(&nodes[0].addr).filter(|s| s["raft_state"] == "Leader")
            });
        }
    }
    wait_until("three voters", patience(60), || {
        nodes
            .iter()
            .all(|n| status(&n.addr).is_some_and(|s| s["voters"].as_array().is_some_and(|v| v.len() == 3)))
            .then_some(())
    });
    let key = nodes[0].dir.join("node.key");
    let mut acked = write_some(&nodes, &key, 6, "start");
    for round in 0..rounds {
        // 1. The leader cut off by iptables: the others elect a leader and take writes.
        let l = wait_until("a leader", patience(30), || leader_index(&nodes));
        net.isolate(l);
        let others: Vec<&Node> = nodes.iter().enumerate().filter(|(i, _)| *i != l).map(|(_, n)| n).collect();
        wait_until("a leader on the majority side", patience(30), || {
            others.iter().any(|n| status(&n.addr).is_some_and(|s| s["raft_state"] == "Leader")).then_some(())
        });
        for k in 0..4 {
            if let Some(id) = register(&key, &others[k % 2].addr, &format!("r{round}-part-{k}")) {
                acked.push(id);
            }
        }
        net.heal(l);
        // 2. The leader stopped (SIGSTOP) for a few seconds, then continued.
        let l = wait_until("a leader after the heal", patience(30), || leader_index(&nodes));
        nodes[l].signal("-STOP");
        let start = Instant::now();
        let others: Vec<usize> = (0..3).filter(|i| *i != l).collect();
        while start.elapsed() < Duration::from_secs(4) {
            if let Some(id) =
                register(&key, &nodes[others[0]].addr, &format!("r{round}-stop-{}", start.elapsed().as_millis()))
            {
                acked.push(id);
            }
        }
        nodes[l].signal("-CONT");
        acked.extend(write_some(&nodes, &key, 3, &format!("r{round}-cont")));
        // 3. A node killed with SIGKILL and restarted from its data dir.
        let victim = (l + 1) % 3;
        nodes[victim].kill9();
        acked.extend(write_some(&nodes, &key, 3, &format!("r{round}-kill")));
        let mut restart = vec![
            "--data-dir".to_string(),
            path(&nodes[victim].dir).to_string(),
            "--listen".to_string(),
            nodes[victim].addr.clone(),
        ];
        restart.extend(profile.iter().cloned());
        if let Link::Wan(_) = link {
            restart.extend(["--advertise".to_string(), reach[victim].clone()]);
        }
        nodes[victim].start(&restart);
    }
    // Every head converges and every acknowledged write is on every node.
    let heads = wait_until("every head converges", patience(60), || {
        let heads: Vec<Value> =
            nodes.iter().filter_map(|n| status(&n.addr).map(|s| s["head"]["hash"].clone())).collect();
        (heads.len() == 3 && heads.iter().all(|h| *h == heads[0] && !h.is_null())).then_some(heads)
    });
    assert!(!heads.is_empty());
    for n in &nodes {
        let held = wait_until("services answered", patience(20), || services(&n.addr, CALL_MS));
        let lost: Vec<&String> = acked.iter().filter(|id| !held.contains(*id)).collect();
        assert!(lost.is_empty(), "{} lost acknowledged writes: {lost:?}", n.addr);
    }
    assert!(acked.len() >= 10, "the writer got writes through: {}", acked.len());
    // Stopped cleanly, every ledger verifies.
    for n in &mut nodes {
        assert!(n.stop().success(), "{} stopped cleanly", n.addr);
        let v = run(&["verify", path(&n.dir)]);
        assert_eq!(v.status.code(), Some(0), "{}: {}", n.addr, String::from_utf8_lossy(&v.stdout));
    }
    // Over the WAN, the links did carry the run and drop some of it.
    for p in &proxies {
        let relayed = p.stats.relayed.load(std::sync::atomic::Ordering::Relaxed);
        let dropped = p.stats.dropped.load(std::sync::atomic::Ordering::Relaxed);
        assert!(relayed > 100 && dropped > 0, "proxy {}: {relayed} relayed, {dropped} dropped", p.addr);
    }
}

#[test]
fn node_processes_in_namespaces_lose_no_acknowledged_write_through_partition_stop_and_kill() {
    field_run(1, Link::Lan);
}

// Not in the default run yet: on a loaded machine (other builds on the two cores) the WAN
// cluster failed to reach three voters within three minutes in 2 of about 5 runs, which points
// at a join that does not finish over a lossy link, not at a slow one; it passes alone (50-60 s).
// Until that is understood: `cargo test -p mycnet-spores-tools --test field -- --include-ignored`.
#[test]
#[ignore = "a join over the lossy link sometimes does not finish under load; see the comment"]
fn over_a_lossy_wan_link_node_processes_lose_no_acknowledged_write_through_partition_stop_and_kill() {
    field_run(1, Link::Wan(WAN));
}

#[test]
#[ignore = "long: SPORES_FIELD_ROUNDS=N cargo test -p mycnet-spores-tools --test field -- --ignored"]
fn the_long_field_run() {
    let rounds = std::env::var("SPORES_FIELD_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(10);
    field_run(rounds, Link::Lan);
    field_run(rounds, Link::Wan(WAN));
}
