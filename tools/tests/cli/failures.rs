//! What goes wrong on disk: damaged records, a damaged journal and a forged signature are
//! bad data (exit 1) named by seq or file, a node on a full disk stops with the reason, and
//! `spore repair` rebuilds a damaged data dir from a peer or a seed.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::{generated, json, keyed_procs, node_args, one_voter, register, wait_leads, CALL_MS};
use crate::proc::{path, run, status, wait_until};

/// Overwrites one stored record's byte, as a failing disk would.
fn flip_record_byte(dir: &Path, seq: u64, offset: usize) {
    let db = fjall::Database::builder(dir).open().expect("open db");
    let ks = db.keyspace("ledger", fjall::KeyspaceCreateOptions::default).expect("ledger keyspace");
    let key = seq.to_be_bytes();
    let mut value = ks.get(key).expect("read").expect("record present").to_vec();
    let i = offset % value.len();
    value[i] ^= 0x40;
    ks.insert(key, value).expect("write");
    db.persist(fjall::PersistMode::SyncAll).expect("persist");
}

/// Replaces the signature of the record at `seq` with a forged one and re-chains every later
/// record and the head, so that only a signature check can catch it.
fn forge_signature_and_rechain(dir: &Path, seq: u64) {
    use mycnet_spores::store::record::{decode_record, encode_record};
    let db = fjall::Database::builder(dir).open().expect("open db");
    let ks = db.keyspace("ledger", fjall::KeyspaceCreateOptions::default).expect("ledger keyspace");
    let meta = db.keyspace("meta", fjall::KeyspaceCreateOptions::default).expect("meta keyspace");
    let read = |s: u64| decode_record(&ks.get(s.to_be_bytes()).expect("read").expect("present")).expect("decodes");
    let mut prev = read(seq - 1).hash;
    let mut s = seq;
    while let Some(v) = ks.get(s.to_be_bytes()).expect("read") {
        let mut ev = decode_record(&v).expect("decodes").event;
        if s == seq {
            ev.signature.0[40] ^= 0x01;
        }
        let linked = mycnet_spores::ChainedEvent::link(s, prev, ev);
        ks.insert(s.to_be_bytes(), encode_record(&linked)).expect("write");
        prev = linked.hash;
        s += 1;
    }
    let mut head = (s - 1).to_be_bytes().to_vec();
    head.extend_from_slice(prev.as_bytes());
    meta.insert("head", head).expect("write head");
    db.persist(fjall::PersistMode::SyncAll).expect("persist");
}

/// No reading command answers silently from records that fail their checks: a forged,
/// re-chained signature is damage for `verify`, `state`, `stats` and `dump` alike (exit 1).
#[test]
fn reading_commands_refuse_a_forged_signature() {
    let (_root, dir) = generated(400);
    forge_signature_and_rechain(&dir, 250);
    let v = run(&["verify", path(&dir), "--json"]);
    assert_eq!(v.status.code(), Some(1));
    assert_eq!(json(&v)["first_error"]["seq"], 250);
    for args in
        [vec!["state", path(&dir)], vec!["stats", path(&dir)], vec!["dump", path(&dir), "--from", "200", "--to", "260"]]
    {
        let out = run(&args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("250"),
            "{args:?} names the seq: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Before the damage, everything answers.
    assert_eq!(run(&["state", path(&dir), "--at-seq", "249"]).status.code(), Some(0));
    assert_eq!(run(&["dump", path(&dir), "--from", "0", "--to", "249"]).status.code(), Some(0));
}

/// A flipped byte in fjall's journal is damage (exit 1) that names the journal file and the way
/// out, not an I/O error.
#[test]
fn a_damaged_journal_is_bad_data_naming_the_file() {
    let (_root, dir) = generated(300);
    let journal = flip_journal_byte(&dir);
    let out = run(&["verify", path(&dir)]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "damaged data exits 1: {err}");
    let name = journal.file_name().expect("name").to_string_lossy().into_owned();
    assert!(err.contains(&name) && err.contains("damaged"), "names the journal and the damage: {err}");
    assert!(err.contains("spore repair"), "says the way out: {err}");
}

#[test]
fn damage_is_reported_with_its_sequence_number_and_exit_code_1() {
    let (_root, dir) = generated(800);
    flip_record_byte(&dir, 321, 150);
    let v = run(&["verify", path(&dir), "--json"]);
    assert_eq!(v.status.code(), Some(1), "bad data exits 1");
    let v = json(&v);
    assert_eq!(v["ok"], false);
    assert_eq!(v["first_error"]["seq"], 321, "{v}");
    let human = run(&["verify", path(&dir)]);
    assert_eq!(human.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&human.stdout).contains("DAMAGED at seq 321"),
        "{}",
        String::from_utf8_lossy(&human.stdout)
    );
    // Reading past the damage stops there with exit 1; reading before it is fine.
    assert_eq!(run(&["dump", path(&dir), "--from", "300", "--to", "330"]).status.code(), Some(1));
    assert_eq!(run(&["dump", path(&dir), "--from", "0", "--to", "320"]).status.code(), Some(0));
    assert_eq!(run(&["replay", path(&dir)]).status.code(), Some(1));
}

/// `spore node` on a full disk stops with a one-line reason and a non-zero exit (a supervisor
/// restarts it once space is freed). Mounts a small tmpfs: needs root, as CI runs.
#[test]
fn a_node_whose_disk_fills_exits_non_zero_with_the_reason() {
    let root = tempfile::tempdir().expect("tempdir");
    // The data dir is the small disk; the node's log (next to it) is not, as a supervisor's
    // would not be, so the last line can be read.
    let mnt = root.path().join("n0");
    std::fs::create_dir(&mnt).expect("mkdir");
    let mounted =
        Command::new("mount").args(["-t", "tmpfs", "-o", "size=32m", "tmpfs"]).arg(&mnt).output().expect("run mount");
    assert!(
        mounted.status.success(),
        "mounting a tmpfs needs root (CI runs as root): {}",
        String::from_utf8_lossy(&mounted.stderr)
    );
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(mnt.clone());
    let mut procs = keyed_procs(root.path(), 1);
    assert_eq!(procs[0].dir, mnt);
    let all = vec![(procs[0].key.clone(), procs[0].addr.clone())];
    let args = node_args(&procs[0], 0, &all);
    procs[0].start(&args);
    let addr = procs[0].addr.clone();
    wait_leads("the node leads", &addr);
    // Leave the node a little room, then write until it is gone.
    let free = {
        let out = Command::new("df").args(["--output=avail", "-B1"]).arg(&mnt).output().expect("df");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        text.lines().nth(1).and_then(|l| l.trim().parse::<u64>().ok()).expect("df prints the free bytes")
    };
    let filler = vec![0u8; (free.saturating_sub(512 * 1024)) as usize];
    let _ = std::fs::write(mnt.join("filler"), &filler);
    let key = procs[0].dir.join("node.key");
    // Incompressible metadata (the journal compresses), different in every write.
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let exit = wait_until("the node stops on the full disk", Duration::from_secs(60), || {
        let meta: Vec<String> = (0..8)
            .map(|k| {
                let v: String = (0..60)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        format!("{:08x}", x as u32)
                    })
                    .collect();
                format!("--meta=k{k}={v}")
            })
            .collect();
        let mut a = vec![
            "service",
            "register",
            "--key-file",
            path(&key),
            "--addr",
            &addr,
            "--name",
            "fill",
            "--endpoint",
            "tcp://127.0.0.1:1",
            "--timeout-ms",
            "2000",
        ];
        a.extend(meta.iter().map(String::as_str));
        let _ = run(&a);
        procs[0].child.as_mut().and_then(|c| c.try_wait().expect("try_wait"))
    });
    assert!(!exit.success(), "a halted node exits non-zero: {exit:?}");
    let log = std::fs::read_to_string(procs[0].dir.with_extension("log")).expect("log");
    let last = log.lines().rfind(|l| !l.trim().is_empty()).unwrap_or_default().to_string();
    assert!(
        last.contains("halted") && last.contains("No space left"),
        "the last line says why: {last}\nlog tail:\n{}",
        log.lines().rev().take(20).collect::<Vec<_>>().join("\n")
    );
    // Space freed, the supervisor's restart brings writes back with nothing acknowledged lost.
    std::fs::remove_file(mnt.join("filler")).expect("free space");
    let args: Vec<String> = vec!["--data-dir".into(), path(&procs[0].dir).into(), "--listen".into(), addr.clone()];
    procs[0].start(&args);
    wait_leads("the restarted node leads", &addr);
    assert!(register(&key, &addr, "after").is_some(), "writes are taken again");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read dir").flatten() {
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        if src.is_dir() {
            copy_dir(&src, &dst);
        } else {
            std::fs::copy(&src, &dst).expect("copy");
        }
    }
}

/// Flips one byte of the fjall journal in `ledger_dir`, as a failing disk would; returns the
/// journal's path. The journal is preallocated: its first kilobytes hold what was written.
fn flip_journal_byte(ledger_dir: &Path) -> PathBuf {
    let journal = std::fs::read_dir(ledger_dir)
        .expect("ledger dir")
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "jnl"))
        .expect("a journal file");
    let mut bytes = std::fs::read(&journal).expect("read journal");
    bytes[1000] ^= 0x01;
    std::fs::write(&journal, &bytes).expect("write journal");
    journal
}

/// `spore repair` rebuilds a damaged data dir from a peer or from a seed, keeps the node key
/// and the damaged ledger, and refuses a ledger that verifies.
#[test]
fn repair_rebuilds_a_damaged_data_dir_from_a_peer_or_a_seed() {
    let root = tempfile::tempdir().expect("tempdir");
    let mut procs = [one_voter(root.path())];
    let addr = procs[0].addr.clone();
    let key = procs[0].dir.join("node.key");
    for i in 0..5 {
        register(&key, &addr, &format!("svc-{i}")).expect("write");
    }
    // A stopped copy of the node's data dir, then its journal damaged: fjall cannot open it.
    assert!(procs[0].stop().success());
    let (by_peer, by_seed) = (root.path().join("by-peer"), root.path().join("by-seed"));
    for d in [&by_peer, &by_seed] {
        copy_dir(&procs[0].dir, d);
        flip_journal_byte(&d.join("ledger"));
        assert_eq!(run(&["verify", path(d)]).status.code(), Some(1), "the copy is damaged");
    }
    let healthy_refused = run(&["repair", "--data-dir", path(&procs[0].dir), "--from-peer", &addr]);
    assert_eq!(healthy_refused.status.code(), Some(2), "nothing to repair in a ledger that verifies");
    let restart = ["--data-dir".to_string(), path(&procs[0].dir).to_string(), "--listen".to_string(), addr.clone()];
    procs[0].start(&restart);
    wait_leads("the node leads again", &addr);
    let head = status(&addr, CALL_MS).expect("status")["head"]["seq"].as_u64().expect("head");

    let key_before = std::fs::read(by_peer.join("node.key")).expect("key");
    let out = run(&["repair", "--data-dir", path(&by_peer), "--from-peer", &addr, "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let report = json(&out);
    assert!(report["damage"].as_str().is_some_and(|d| d.contains("damaged")), "{report}");
    assert!(report["head"]["seq"].as_u64().is_some_and(|s| s >= head), "{report}");
    assert_eq!(std::fs::read(by_peer.join("node.key")).expect("key"), key_before, "the node key is kept");
    assert!(std::path::Path::new(report["kept"].as_str().expect("kept")).is_dir(), "the damaged ledger is kept");
    assert_eq!(run(&["verify", path(&by_peer)]).status.code(), Some(0), "the rebuilt ledger verifies");

    let seed = root.path().join("n0.seed");
    let out = run(&["seed", "export", "--addr", &addr, "--key-file", path(&key), "--out", path(&seed), "--events"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let out = run(&["repair", "--data-dir", path(&by_seed), "--from-seed", path(&seed)]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(run(&["verify", path(&by_seed)]).status.code(), Some(0));
}
