//! A `spore node` from a TOML config with `[backup]` backs itself up and says so in
//! `spore status`; `spore seed list` checks every seed file of a directory, newest first.

use std::time::Duration;

use super::{json, keyed_procs, register, CALL_MS};
use crate::proc::{path, run, status, wait_until};

#[test]
fn a_node_backs_itself_up_from_its_toml_and_seed_list_checks_every_file() {
    let root = tempfile::tempdir().expect("tempdir");
    let mut procs = keyed_procs(root.path(), 1);
    let node = &mut procs[0];
    let backups = root.path().join("backups");
    let config = root.path().join("n0.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {:?}\nlisten = {:?}\nname = \"n0\"\n[init]\nnetwork_name = \"backed-up\"\n\
             [backup]\ndir = {:?}\ninterval = \"300ms\"\nkeep = 2\n",
            path(&node.dir),
            node.addr,
            path(&backups)
        ),
    )
    .expect("write the config");
    node.start(&["--config".to_string(), path(&config).to_string()]);
    let addr = node.addr.clone();
    let key_file = node.key_file();
    wait_until("a first backup", Duration::from_secs(30), || {
        status(&addr, CALL_MS).filter(|s| s["backup"]["succeeded"].as_u64() >= Some(1))
    });
    register(&key_file, &addr, "svc").expect("a write");
    let st = wait_until("backups after the write", Duration::from_secs(30), || {
        status(&addr, CALL_MS).filter(|s| {
            s["backup"]["last_success"]["head_seq"].as_u64() >= s["head"]["seq"].as_u64()
                && s["backup"]["succeeded"].as_u64() >= Some(3)
        })
    });
    assert_eq!((st["backup"]["keep"].as_u64(), st["backup"]["interval_ms"].as_u64()), (Some(2), Some(300)), "{st}");
    assert!(st["backup"]["last_failure"].is_null(), "{st}");
    let text = run(&["status", "--addr", &addr]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("backup       every 300 ms into") && text.contains("last ok"), "{text}");
    assert_eq!(node.stop().code(), Some(0));

    // Two backups kept; beside them a damaged copy and a file that is no seed.
    // (A stop in the middle of a backup may leave a hidden temporary file, which is no backup.)
    let kept: Vec<_> = std::fs::read_dir(&backups)
        .expect("ls")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("spores-")))
        .collect();
    assert_eq!(kept.len(), 2, "{kept:?}");
    let mut bytes = std::fs::read(&kept[0]).expect("read");
    bytes[200] ^= 0x40;
    std::fs::write(backups.join("broken.seed"), &bytes).expect("write");
    std::fs::write(backups.join("notes.txt"), "not a seed").expect("write");
    let out = run(&["seed", "list", path(&backups), "--json"]);
    assert_eq!(out.status.code(), Some(1), "one does not verify: {}", String::from_utf8_lossy(&out.stderr));
    let listed = json(&out);
    let listed = listed.as_array().expect("a list");
    let names: Vec<&str> = listed.iter().map(|l| l["file"].as_str().expect("file")).collect();
    assert_eq!(listed.len(), 3, "the seed files, not notes.txt: {names:?}");
    // Newest first: the damaged copy was written last; then the backups by the time in their names.
    assert!(names[0].ends_with("broken.seed"), "{names:?}");
    assert!(names[1] > names[2], "{names:?}");
    assert_eq!(listed[0]["ok"], false);
    assert!(listed[0]["error"].as_str().is_some_and(|e| !e.is_empty()), "{}", listed[0]);
    for good in &listed[1..] {
        assert_eq!(good["ok"], true, "{good}");
        assert_eq!(good["signers"][0], node.key.as_str(), "{good}");
        assert!(good["head"]["seq"].as_u64().is_some() && good["bytes"].as_u64() > Some(0), "{good}");
    }
    let human = run(&["seed", "list", path(&backups)]);
    let human = String::from_utf8_lossy(&human.stdout);
    assert!(human.contains("INVALID") && human.contains("3 seed file(s), 1 invalid"), "{human}");

    std::fs::remove_file(backups.join("broken.seed")).expect("rm");
    assert_eq!(run(&["seed", "list", path(&backups)]).status.code(), Some(0));
    assert_eq!(run(&["seed", "list", path(&root.path().join("none"))]).status.code(), Some(2));
}
