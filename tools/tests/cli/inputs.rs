//! `spore node` checks its inputs at the door (issue 19): malformed addresses and keys are
//! usage errors (exit 2) naming the flag and the value before anything starts or is
//! committed; a port that cannot be bound is named as this node's own with the OS's reason;
//! a failed start leaves no data dir it created. Storage errors name the ledger and the step.

use std::process::{Output, Stdio};
use std::time::Duration;

use super::proc::exit_within;
use super::{free_udp_port, keyed_procs, path, spore};

/// Runs `spore ARGS`, failing the test (not hanging) if it has not exited within `limit`.
fn run_within(args: &[&str], limit: Duration) -> Output {
    let mut child = spore().args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn spore");
    if exit_within(&mut child, limit).is_none() {
        let _ = child.kill();
        let out = child.wait_with_output().expect("output");
        panic!("spore {args:?} still running after {limit:?}; stderr:\n{}", String::from_utf8_lossy(&out.stderr));
    }
    child.wait_with_output().expect("output")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A 64-hex string that is no ed25519 public key.
fn not_a_key() -> String {
    (0u8..=255)
        .map(|b| mycnet_spores::NodeId([b; 32]))
        .find(|id| mycnet_spores::core::keys::PublicKey::from_node_id(id).is_none())
        .expect("a 32-byte string that is not a point")
        .to_hex()
}

#[test]
fn node_refuses_malformed_addresses_and_keys_before_starting() {
    let root = tempfile::tempdir().expect("tempdir");
    let procs = keyed_procs(root.path(), 1);
    let key = procs[0].key.clone();
    let dir = root.path().join("new");
    let listen = format!("127.0.0.1:{}", free_udp_port());
    let limit = Duration::from_secs(10);
    let node = |extra: &[&str]| {
        let mut args = vec!["node", "--data-dir", path(&dir), "--listen", &listen];
        args.extend_from_slice(extra);
        run_within(&args, limit)
    };
    let refused = |out: Output, flag: &str, value: &str| {
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "a usage error: {err}");
        assert!(err.contains(&format!("{flag} {value}")), "names the flag and the value: {err}");
        assert!(!dir.exists(), "nothing was created or committed: {err}");
        err
    };

    let err = refused(node(&["--join-addr", "not-an-addr", "--join-key", &key]), "--join-addr", "not-an-addr");
    assert!(err.contains("HOST:PORT"), "{err}");
    refused(node(&["--join-addr", "127.0.0.1:0", "--join-key", &key]), "--join-addr", "127.0.0.1:0");
    refused(node(&["--join-addr", "127.0.0.1:7400", "--join-key", &not_a_key()]), "--join-key", &not_a_key());

    let peer = format!("{key}@127.0.0.1:99999");
    let err = refused(node(&["--init", "x", "--peer", &peer]), "--peer", &peer);
    assert!(err.contains("out of range"), "{err}");
    let latent = format!("{}@127.0.0.1:7400", not_a_key());
    let err = refused(node(&["--init", "x", "--latent-peer", &latent]), "--latent-peer", &latent);
    assert!(err.contains("not a valid node key"), "{err}");
    refused(node(&["--init", "x", "--peer", &format!("{key}@:7400")]), "--peer", &format!("{key}@:7400"));
    refused(node(&["--init", "x", "--advertise", "10.0.0.5"]), "--advertise", "10.0.0.5");

    let out = run_within(&["node", "--data-dir", path(&dir), "--listen", "localhost", "--init", "x"], limit);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--listen localhost"), "{}", stderr(&out));

    // The same checks for a config file, naming the setting.
    let config = root.path().join("node.toml");
    let toml = format!(
        "data_dir = \"{}\"\nlisten = \"{listen}\"\n[join]\nvia_addr = \"h:65536\"\nvia_key = \"{key}\"\n",
        dir.display()
    );
    std::fs::write(&config, toml).expect("write config");
    let out = run_within(&["node", "--config", path(&config)], limit);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("join.via_addr") && stderr(&out).contains("65536"), "{}", stderr(&out));
    assert!(!dir.exists());
}

#[test]
fn a_port_in_use_names_the_local_address_and_leaves_no_new_data_dir() {
    let root = tempfile::tempdir().expect("tempdir");
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").expect("take a port");
    let addr = taken.local_addr().expect("addr").to_string();
    let fresh = root.path().join("fresh/n0");
    // The node waits a few seconds for a port that a restart may still hold, then gives up.
    let limit = Duration::from_secs(30);
    let out = run_within(&["node", "--data-dir", path(&fresh), "--listen", &addr, "--init", "x"], limit);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!("cannot listen on {addr}: ")) && err.contains("in use"),
        "names the address and the cause: {err}"
    );
    assert!(!err.contains("unreachable"), "{err}");
    assert!(!root.path().join("fresh").exists(), "the data dir this run created is gone: {err}");

    // A data dir that existed (a key made by `spore keygen`) is kept as it was.
    let procs = keyed_procs(root.path(), 1);
    let kept = &procs[0].dir;
    let out = run_within(&["node", "--data-dir", path(kept), "--listen", &addr, "--init", "x"], limit);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(kept.join("node.key").is_file(), "the operator's key is kept");
    let again = run_within(&["keygen", "--data-dir", path(kept)], limit);
    assert_eq!(String::from_utf8_lossy(&again.stdout).trim(), procs[0].key, "the same node key");

    // An address that is not on this host.
    let out = run_within(&["node", "--data-dir", path(&fresh), "--listen", "192.0.2.1:7400", "--init", "x"], limit);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("cannot listen on 192.0.2.1:7400: "), "{}", stderr(&out));
    assert!(!root.path().join("fresh").exists());
}

/// A storage failure (here: the ledger's database held open by another process) names the
/// ledger directory and the step that failed, with exit 2.
#[test]
fn a_storage_error_names_the_ledger_and_the_step() {
    let (_root, dir) = super::generated(50);
    let held = fjall::Database::builder(&dir).open().expect("hold the database");
    let out = run_within(&["verify", path(&dir)], Duration::from_secs(30));
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains(&format!("during open database in {}", dir.display())), "names the step and the dir: {err}");
    drop(held);
    assert_eq!(run_within(&["verify", path(&dir)], Duration::from_secs(30)).status.code(), Some(0));
}
