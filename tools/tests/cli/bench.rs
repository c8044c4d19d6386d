//! `spore bench` against `spore node` processes: committed writes, the latency histogram and
//! the cleanup (or `--keep`), and the inputs it refuses with exit code 2.

use std::collections::BTreeSet;
use std::time::Duration;

use super::{json, keyed_procs, node_args, three_voters, wait_for_three_voters, wait_leads, CALL_MS};
use crate::proc::{path, run, services, status, wait_until};

/// The services the node at `addr` holds, once it answers.
fn services_at(addr: &str) -> BTreeSet<String> {
    wait_until("a services answer", Duration::from_secs(10), || services(addr, CALL_MS))
}

#[test]
fn spore_bench_commits_every_write_reports_percentiles_and_cleans_up() {
    let root = tempfile::tempdir().expect("tempdir");
    let (procs, _) = three_voters(root.path());
    let key = procs[1].key_file();
    // Through a follower or the leader alike: the writes follow the leader.
    let out = run(&[
        "bench",
        "--addr",
        &procs[2].addr,
        "--key-file",
        path(&key),
        "--events",
        "300",
        "--clients",
        "8",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let report = json(&out);
    assert_eq!(report["committed"], 300, "{report}");
    assert_eq!((report["failed"].as_u64(), report["clients"].as_u64()), (Some(0), Some(8)), "{report}");
    assert_eq!(report["deregistered"], 300, "{report}");
    assert!(report["writes_per_sec"].as_f64().is_some_and(|r| r > 0.0), "{report}");
    // Every client connected before the clock started, and the handshakes are reported apart.
    let connect = &report["connect"];
    assert_eq!((connect["connected"].as_u64(), connect["failed"].as_u64()), (Some(8), Some(0)), "{report}");
    assert!(connect["p50_us"].as_u64().is_some_and(|p| p >= 1 && Some(p) <= connect["max_us"].as_u64()), "{report}");
    let lat = &report["latency_us"];
    let q: Vec<u64> =
        ["min", "p50", "p90", "p99", "p99_9", "max"].iter().map(|k| lat[k].as_u64().expect("a latency")).collect();
    assert!(q.windows(2).all(|w| w[0] <= w[1]), "percentiles in order: {lat}");
    assert!(q[0] >= 1 && q[5] < 10_000_000, "a commit on loopback takes between 1 µs and 10 s: {lat}");
    // About the size asked for (256 by default).
    assert!(report["event_bytes"].as_u64().is_some_and(|b| (200..400).contains(&b)), "{report}");
    // Nothing of it is left: every node comes to hold no service.
    for p in &procs {
        wait_until("the bench's services gone", Duration::from_secs(10), || {
            services(&p.addr, CALL_MS).filter(BTreeSet::is_empty)
        });
    }

    // With --keep they stay, padded to the size asked for.
    let out = run(&[
        "bench",
        "--addr",
        &procs[0].addr,
        "--key-file",
        path(&key),
        "--events",
        "20",
        "--clients",
        "4",
        "--size",
        "2000",
        "--keep",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let report = json(&out);
    assert_eq!((report["committed"].as_u64(), report["deregistered"].as_u64()), (Some(20), Some(0)), "{report}");
    assert_eq!(report["kept"], true);
    assert!(report["event_bytes"].as_u64().is_some_and(|b| (1900..2100).contains(&b)), "{report}");
    let leader = wait_until("a leader", Duration::from_secs(10), || {
        let st = status(&procs[0].addr, CALL_MS)?;
        procs.iter().find(|p| st["leader"].as_str() == Some(p.key.as_str())).map(|p| p.addr.clone())
    });
    assert_eq!(services_at(&leader).len(), 20);
}

#[test]
fn spore_bench_refuses_a_bad_key_file_and_a_node_the_network_has_not_admitted() {
    let root = tempfile::tempdir().expect("tempdir");
    // One voter is network enough to ask.
    let mut procs = keyed_procs(root.path(), 2);
    let all = vec![(procs[0].key.clone(), procs[0].addr.clone())];
    let args = procs[0].args(0, &all, "bench-inputs", 0, 1);
    procs[0].start(&args);
    let addr = procs[0].addr.clone();
    wait_until("the founder leads", Duration::from_secs(30), || {
        status(&addr, CALL_MS).filter(|s| s["raft_state"] == "Leader")
    });
    let bench = |key: &std::path::Path, extra: &[&str]| {
        let mut a = vec!["bench", "--addr", &addr, "--key-file", path(key)];
        a.extend_from_slice(extra);
        let out = run(&a);
        (out.status.code(), String::from_utf8_lossy(&out.stderr).to_string())
    };

    // Not a key file.
    let garbage = root.path().join("garbage.key");
    std::fs::write(&garbage, "not a key").expect("write");
    let (code, err) = bench(&garbage, &["--events", "5"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("garbage.key") && err.contains("not a node key file"), "{err}");
    // A missing one.
    let (code, err) = bench(&root.path().join("missing.key"), &["--events", "5"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("missing.key"), "{err}");
    // A real key of a node this network never admitted: nothing written.
    let (code, err) = bench(&procs[1].key_file(), &["--events", "5"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains(&procs[1].key) && err.contains("has not admitted"), "{err}");
    assert!(services_at(&addr).is_empty());
    // Neither --events nor --duration, a duration that is none, a size over the rules'.
    let founder = procs[0].key_file();
    assert_eq!(bench(&founder, &[]).0, Some(2));
    assert_eq!(bench(&founder, &["--duration", "soon"]).0, Some(2));
    let (code, err) = bench(&founder, &["--events", "5", "--size", "1000000"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--size"), "{err}");
    // The founder's own key works.
    let (code, err) = bench(&founder, &["--duration", "300ms", "--clients", "2"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(services_at(&addr).is_empty(), "cleaned up");
}

/// The node TOML of voter `i` of `all` (key, address) taking at most `connections_max` client
/// connections: the first forms the network, the others join through it.
fn voter_toml(dir: &std::path::Path, i: usize, all: &[(String, String)], connections_max: usize) -> String {
    let mut t = format!(
        "data_dir = {:?}\nlisten = {:?}\nname = \"n{i}\"\nconnections_max = {connections_max}\n",
        path(dir),
        all[i].1
    );
    if i == 0 {
        t.push_str("[init]\nnetwork_name = \"limits\"\n");
    } else {
        t.push_str(&format!("[join]\nvia_addr = {:?}\nvia_key = {:?}\n", all[0].1, all[0].0));
    }
    for (j, (key, addr)) in all.iter().enumerate().filter(|(j, _)| *j != i) {
        t.push_str(&format!("[[peers]]\naddr = {addr:?}\nkey = {key:?}\nname = \"n{j}\"\n"));
    }
    t
}

/// As many bench clients as the leader takes (`connections_max` in the node TOML) fill its
/// table without locking its voters out (their connections have places of their own), and a
/// bench run gives its places back as it ends: a second run right after gets them at once,
/// not after the connections' 10 s idle timeout. Both commit every write. (Found with
/// `--clients 256` against the default limit, `benches/README.md`, session 26.)
#[test]
fn spore_bench_at_the_connection_limit_commits_every_write_run_after_run() {
    const LIMIT: usize = 6;
    let root = tempfile::tempdir().expect("tempdir");
    let mut procs = keyed_procs(root.path(), 3);
    let all: Vec<(String, String)> = procs.iter().map(|p| (p.key.clone(), p.addr.clone())).collect();
    for (i, p) in procs.iter_mut().enumerate() {
        let toml = root.path().join(format!("n{i}.toml"));
        std::fs::write(&toml, voter_toml(&p.dir, i, &all, LIMIT)).expect("write the node TOML");
        p.start(&["--config".into(), path(&toml).into()]);
    }
    wait_for_three_voters(&procs);
    let leader = wait_until("a leader", Duration::from_secs(10), || {
        let st = status(&procs[0].addr, CALL_MS)?;
        procs.iter().find(|p| st["leader"].as_str() == Some(p.key.as_str())).map(|p| p.addr.clone())
    });
    let key = procs[1].key_file();
    let clients = LIMIT.to_string();
    for round in 1..=2 {
        let out = run(&[
            "bench",
            "--addr",
            &leader,
            "--key-file",
            path(&key),
            "--events",
            "120",
            "--clients",
            &clients,
            "--keep",
            "--json",
        ]);
        assert_eq!(out.status.code(), Some(0), "round {round}: {}", String::from_utf8_lossy(&out.stderr));
        let report = json(&out);
        assert_eq!((report["committed"].as_u64(), report["failed"].as_u64()), (Some(120), Some(0)), "{report}");
        // Each client got a place before the clock started.
        assert_eq!(report["connect"]["connected"].as_u64(), Some(LIMIT as u64), "round {round}: {report}");
        // Places held over from the first run would hold the second's clients off for the
        // connections' idle timeout (10 s), and its writes time out at 10 s.
        assert!(report["seconds"].as_f64().is_some_and(|s| s < 8.0), "round {round}: {report}");
    }
    assert_eq!(services_at(&leader).len(), 240);

    // Two clients more than the node takes: they take no part (retrying, they would only load
    // the node), the others commit every write, and the bench ends with an error saying so.
    let over = (LIMIT + 2).to_string();
    let out =
        run(&["bench", "--addr", &leader, "--key-file", path(&key), "--events", "60", "--clients", &over, "--json"]);
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    let report = json(&out);
    assert_eq!((report["committed"].as_u64(), report["failed"].as_u64()), (Some(60), Some(0)), "{report}");
    assert_eq!((report["connect"]["connected"].as_u64(), report["connect"]["failed"].as_u64()), (Some(6), Some(2)));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("2 of 8 client(s) could not connect") && stderr.contains("connection limit"), "{stderr}");
}

#[test]
fn spore_node_connections_max_flag_bounds_the_clients_a_node_takes() {
    // Out of range: refused before anything starts.
    let out = run(&["node", "--data-dir", "unused", "--listen", "127.0.0.1:1", "--connections-max", "0"]);
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--connections-max"));

    let root = tempfile::tempdir().expect("tempdir");
    let mut n = keyed_procs(root.path(), 1).remove(0);
    let all = vec![(n.key.clone(), n.addr.clone())];
    let mut args = node_args(&n, 0, &all);
    args.extend(["--connections-max".to_string(), "2".to_string()]);
    n.start(&args);
    wait_leads("the node leads", &n.addr);
    let key = n.key_file();
    let out =
        run(&["bench", "--addr", &n.addr, "--key-file", path(&key), "--events", "20", "--clients", "5", "--json"]);
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    let report = json(&out);
    let (connected, failed) = (report["connect"]["connected"].as_u64(), report["connect"]["failed"].as_u64());
    // Two places (one may still be held by a status call that just ended); the rest refused.
    assert!(connected.is_some_and(|c| (1..=2).contains(&c)), "{report}");
    assert_eq!(connected.zip(failed).map(|(c, f)| c + f), Some(5), "{report}");
    assert_eq!((report["committed"].as_u64(), report["failed"].as_u64()), (Some(20), Some(0)), "{report}");
}
