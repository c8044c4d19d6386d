//! `spore` processes for the process tests (`cli.rs`, `field.rs`): running the binary, node
//! processes (on loopback or in a network namespace) with their logs, the remote calls the
//! tests make to them, and bounded waits that show the nodes' log tails when they fail.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub fn spore() -> Command {
    Command::new(env!("CARGO_BIN_EXE_spore"))
}

pub fn run(args: &[&str]) -> Output {
    spore().args(args).output().expect("spore runs")
}

pub fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// One `spore node` process: its data dir, key and address, and the network namespace it
/// runs in (`None`: this one). Killed on drop.
pub struct Node {
    pub dir: PathBuf,
    pub key: String,
    pub addr: String,
    pub ns: Option<String>,
    pub child: Option<Child>,
}

impl Node {
    /// A node whose data dir `dir` gets a fresh key (`spore keygen`), to listen on `addr`.
    pub fn keygen(dir: PathBuf, addr: String, ns: Option<String>) -> Node {
        let out = run(&["keygen", "--data-dir", path(&dir)]);
        assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
        let key = String::from_utf8_lossy(&out.stdout).trim().to_string();
        Node { dir, key, addr, ns, child: None }
    }

    /// Its key file.
    pub fn key_file(&self) -> PathBuf {
        self.dir.join("node.key")
    }

    /// Starts `spore node ARGS`; its log (stderr) goes to the data dir's name with `.log`,
    /// shown by [`wait_until`] when a wait fails.
    pub fn start(&mut self, args: &[String]) {
        let log_path = self.dir.with_extension("log");
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path).expect("log file");
        NODE_LOGS.with(|logs| {
            let mut logs = logs.borrow_mut();
            if !logs.contains(&log_path) {
                logs.push(log_path);
            }
        });
        let mut cmd = match &self.ns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, env!("CARGO_BIN_EXE_spore")]);
                c
            }
            None => spore(),
        };
        let child = cmd
            .arg("node")
            .args(args)
            .env("RUST_LOG", "info,openraft=warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn spore node");
        self.child = Some(child);
    }

    /// `spore node` flags for this node as node `i` of `all` (each node's key and the address
    /// the others reach it at): its data dir and address, the name `n{i}`, and either forming
    /// the network `network` (node 0) or joining through `all[via]`; every other node is a
    /// peer, a latent one (`--latent-peer`) from `all[latent]` on.
    pub fn args(&self, i: usize, all: &[(String, String)], network: &str, via: usize, latent: usize) -> Vec<String> {
        let mut a = vec!["--data-dir".into(), path(&self.dir).into(), "--listen".into(), self.addr.clone()];
        a.extend(["--name".into(), format!("n{i}")]);
        if i == 0 {
            a.extend(["--init".into(), network.into()]);
        } else {
            a.extend(["--join-addr".into(), all[via].1.clone(), "--join-key".into(), all[via].0.clone()]);
        }
        for (j, (key, addr)) in all.iter().enumerate().filter(|(j, _)| *j != i) {
            let flag = if j >= latent { "--latent-peer" } else { "--peer" };
            a.extend([flag.into(), format!("{key}@{addr}")]);
        }
        a
    }

    /// Sends `sig` (`-STOP`, `-CONT`, `-TERM`, …) to the running process.
    pub fn signal(&self, sig: &str) {
        if let Some(c) = &self.child {
            let sent = Command::new("kill").args([sig, &c.id().to_string()]).status().expect("run kill");
            assert!(sent.success(), "kill {sig} {}", c.id());
        }
    }

    /// SIGTERM, and how the process exited.
    pub fn stop(&mut self) -> ExitStatus {
        self.signal("-TERM");
        self.child.take().expect("running").wait().expect("wait")
    }

    /// SIGKILL, reaped.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
    }
}

thread_local! {
    /// The log files of the node processes this test thread started (shown when a wait fails).
    static NODE_LOGS: std::cell::RefCell<Vec<PathBuf>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The last lines of every node log this test started, for a failure message.
pub fn node_log_tails() -> String {
    NODE_LOGS.with(|logs| {
        logs.borrow()
            .iter()
            .map(|p| {
                let text = std::fs::read_to_string(p).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                let tail = lines[lines.len().saturating_sub(40)..].join("\n");
                format!("==== {} ({} lines) ====\n{tail}\n", p.display(), lines.len())
            })
            .collect()
    })
}

/// Polls `f` every `every` until it returns `Some` or `timeout` has passed (`None`).
pub fn poll<T>(timeout: Duration, every: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        // The poll interval of this bounded wait.
        std::thread::sleep(every);
    }
}

/// Polls `f` until it returns `Some`, and returns the value; after `timeout`, fails naming
/// `what`, with the tails of the node logs.
pub fn wait_until<T>(what: &str, timeout: Duration, f: impl FnMut() -> Option<T>) -> T {
    poll(timeout, Duration::from_millis(100), f)
        .unwrap_or_else(|| panic!("timed out after {timeout:?} waiting for {what}\n{}", node_log_tails()))
}

/// How `child` exited, if it did within `limit`.
pub fn exit_within(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    poll(limit, Duration::from_millis(20), || child.try_wait().expect("poll the child"))
}

/// `spore status` of the node at `addr` (`None`: no answer within `timeout_ms`).
pub fn status(addr: &str, timeout_ms: u64) -> Option<Value> {
    let out = run(&["status", "--addr", addr, "--json", "--timeout-ms", &timeout_ms.to_string()]);
    (out.status.code() == Some(0)).then(|| serde_json::from_slice(&out.stdout).ok()).flatten()
}

/// Registers a service through `addr`, signed with `key_file`; its id if the write was
/// acknowledged within `timeout_ms`.
pub fn register(key_file: &Path, addr: &str, name: &str, timeout_ms: u64) -> Option<String> {
    let out = run(&[
        "service",
        "register",
        "--key-file",
        path(key_file),
        "--addr",
        addr,
        "--name",
        name,
        "--endpoint",
        "tcp://127.0.0.1:1",
        "--timeout-ms",
        &timeout_ms.to_string(),
        "--json",
    ]);
    (out.status.code() == Some(0))
        .then(|| serde_json::from_slice::<Value>(&out.stdout).ok())
        .flatten()
        .and_then(|v| v["service_id"].as_str().map(String::from))
}

/// The ids of the services the node at `addr` holds (`None`: no answer within `timeout_ms`).
pub fn services(addr: &str, timeout_ms: u64) -> Option<BTreeSet<String>> {
    let out = run(&["query", "--addr", addr, "services", "--all", "--json", "--timeout-ms", &timeout_ms.to_string()]);
    if out.status.code() != Some(0) {
        return None;
    }
    let v: Value = serde_json::from_slice(&out.stdout).ok()?;
    Some(v["items"].as_array()?.iter().filter_map(|s| s["service"]["service_id"].as_str().map(String::from)).collect())
}
