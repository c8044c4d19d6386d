//! Separate `spore node` processes on loopback: the timeouts profile, three voters through a
//! `kill -9` of their leader (with a watcher, trust-filtered queries, live seed export and a
//! re-formation from a backup seed), and voters with latent nodes converging by gossip.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;

use super::{json, keyed_procs, node_args, register, three_voters, wait_for_three_voters, CALL_MS};
use crate::proc::{free_udp_port, path, run, services, spore, status, wait_until, Node};

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
    let trusted = trusted["items"].as_array().expect("services");
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

    // SIGTERM: every node stops cleanly, the ledgers verify, and they hold one chain: equal,
    // or one a prefix of another (a follower stopped before it heard that the last entry it
    // holds committed applies it when it starts again).
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
    for pair in procs.windows(2) {
        let d = json(&run(&["diff", path(&pair[0].dir), path(&pair[1].dir), "--json"]));
        let relation = d["fork"]["relation"].as_str().unwrap_or_default();
        assert!(relation == "identical" || relation == "prefix", "one chain: {d}");
    }

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
        status(&reborn.addr, CALL_MS).filter(|s| s["raft_state"] == "Leader" && s["head"]["hash"] == heads[1]["hash"])
    });
    assert_eq!(st["head"]["seq"], heads[1]["seq"], "n1's head, which its seed carries");
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
        let rec =
            nodes["items"].as_array().expect("array").iter().find(|n| n["node"] == p.key.as_str()).expect("registered");
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

/// `spore service register --check` gives a service a check its node process runs: when the
/// target stops answering the service goes critical, `spore query` leaves it out and
/// `--include-critical` lists it with the reason; a spec out of the bounds is a usage error.
#[test]
fn a_node_process_runs_the_check_a_registration_carries() {
    let root = tempfile::tempdir().expect("tempdir");
    let mut procs = keyed_procs(root.path(), 1);
    let all = vec![(procs[0].key.clone(), procs[0].addr.clone())];
    let args = node_args(&procs[0], 0, &all);
    procs[0].start(&args);
    let n = &procs[0];
    wait_until("a leader", Duration::from_secs(30), || {
        status(&n.addr, CALL_MS).filter(|s| s["raft_state"] == "Leader")
    });
    let target = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let check = format!("tcp {} interval=1s timeout=500ms flips=1", target.local_addr().expect("addr"));
    let key_file = n.key_file();
    let base = ["service", "register", "--key-file", path(&key_file), "--addr", &n.addr, "--name", "db"];
    let out = run(&[&base[..], &["--check", &check, "--json"]].concat());
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let bad = run(&[&base[..], &["--check", "tcp 127.0.0.1:1 interval=5ms"]].concat());
    assert_eq!(bad.status.code(), Some(2), "a check out of the bounds is refused before anything is signed");
    assert!(String::from_utf8_lossy(&bad.stderr).contains("interval"), "{}", String::from_utf8_lossy(&bad.stderr));

    let query = |extra: &[&str]| {
        json(&run(&[&["query", "--addr", &n.addr, "services", "--json"][..], extra].concat()))["items"].clone()
    };
    let listed = query(&[]);
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "passing while its target answers: {listed}");
    drop(target);
    let critical = wait_until("the service critical", Duration::from_secs(30), || {
        let all = query(&["--include-critical"]);
        let reason = all.as_array()?.first()?["critical"]["reason"].as_str()?.to_string();
        Some(reason)
    });
    assert!(critical.contains("refused"), "{critical}");
    assert_eq!(query(&[]).as_array().map(Vec::len), Some(0), "left out by default");
}

/// `admin_reads = "keys"` in the node TOML: `spore status` from a throw-away key is refused,
/// and `--client-key-file` with a listed key reads.
#[test]
fn a_node_reads_only_to_the_keys_its_toml_lists() {
    let root = tempfile::tempdir().expect("tempdir");
    let node = crate::proc::Node::keygen(root.path().join("n"), format!("127.0.0.1:{}", free_udp_port()), None);
    let reader = crate::proc::Node::keygen(root.path().join("reader"), String::new(), None);
    let toml = format!(
        "data_dir = {:?}\nlisten = {:?}\nadmin_reads = \"keys\"\nadmin_keys = [{:?}]\n\n[init]\nnetwork_name = \"reads\"\n",
        path(&node.dir),
        node.addr,
        reader.key
    );
    let config = root.path().join("n.toml");
    std::fs::write(&config, toml).expect("write config");
    let mut n = node;
    n.start(&["--config".to_string(), path(&config).to_string()]);
    let reader_key = reader.key_file();
    let as_reader = ["--client-key-file", path(&reader_key)];
    wait_until("the listed key reads", Duration::from_secs(30), || {
        let out = run(&[&as_reader[..], &["status", "--addr", &n.addr, "--json"]].concat());
        (out.status.code() == Some(0)).then_some(())
    });
    let stranger = run(&["status", "--addr", &n.addr, "--timeout-ms", "3000"]);
    assert_ne!(stranger.status.code(), Some(0), "a throw-away key is refused");
    let bad = run(&["--client-key-file", path(&root.path().join("missing.key")), "status", "--addr", &n.addr]);
    assert_eq!(bad.status.code(), Some(2), "a missing client key file is a usage error");
}

/// `spore node --log-format json` logs one JSON object per line (level, fields, target).
#[test]
fn spore_node_logs_json_lines_when_asked() {
    let root = tempfile::tempdir().expect("tempdir");
    let listen = format!("127.0.0.1:{}", free_udp_port());
    let mut child = spore()
        .args(["node", "--data-dir", path(&root.path().join("n")), "--listen", &listen, "--init", "t"])
        .args(["--log-format", "json"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn spore node");
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let first = lines.next().expect("a log line").expect("read");
    let _ = child.kill();
    let _ = child.wait();
    let v: Value = serde_json::from_str(&first).unwrap_or_else(|e| panic!("not a JSON line ({e}): {first}"));
    assert!(v["level"].is_string() && v["fields"].is_object() && v["timestamp"].is_string(), "{v}");
}
