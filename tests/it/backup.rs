//! Scheduled backups run by the node itself (`SporeSystemBuilder::backups`): verified seeds
//! written while writes go on, the newest `keep` kept across a restart, and a directory that
//! cannot be written reported without stopping the node.

use std::path::Path;
use std::time::Duration;

use mycnet_spores::node::backup::{list_backups, BackupName};
use mycnet_spores::node::{BackupPolicy, ConfigError};
use mycnet_spores::seed::{self, VerifyPolicy};
use mycnet_spores::{Error, SporeSystem, SporeSystemBuilder};
/// The backups in `dir`, each verified offline at the head its name carries.
fn verified_backups(dir: &Path) -> Vec<BackupName> {
    let list = list_backups(dir).expect("list the backups");
    for (name, path) in &list {
        let s = seed::read_file(path, VerifyPolicy::default()).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(s.header.head_seq, name.head_seq, "{} carries its head in its name", path.display());
    }
    list.into_iter().map(|(name, _)| name).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_keeps_its_newest_verified_backups_while_writing_and_across_a_restart() {
    let root = tempfile::tempdir().expect("tempdir");
    let backups = root.path().join("backups");
    std::fs::create_dir_all(&backups).expect("mkdir");
    // What else is in the directory is not the node's to prune.
    std::fs::write(backups.join("notes.txt"), "mine").expect("write");
    std::fs::write(backups.join("spores-manual.seed"), "mine too").expect("write");
    let policy = BackupPolicy { dir: backups.clone(), interval: Duration::from_millis(300), keep: 3, events: false };
    let builder = || -> SporeSystemBuilder {
        SporeSystem::builder().data_dir(root.path().join("n")).private_network().backups(policy.clone())
    };
    let s = builder().build();
    s.initialize(crate::cluster::identity("backups")).await.expect("initialize");

    // Writes go on while the node backs itself up, until five backups were written.
    let writer = s.clone();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stopped = stop.clone();
    let writes = tokio::spawn(async move {
        let mut n = 0u32;
        while !stopped.load(std::sync::atomic::Ordering::Relaxed) && n < 20_000 {
            writer.register_service(&format!("svc-{n}"), vec![], vec![], vec![]).await.expect("write");
            n += 1;
        }
        n
    });
    let st = crate::wait::until(
        "five backups",
        Duration::from_secs(60),
        || s.backup_status().expect("a policy is set"),
        |st| st.succeeded >= 5,
    )
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let written = writes.await.expect("writer");
    assert!(written > 0);
    assert_eq!(st.failed, 0, "{st:?}");
    assert_eq!((st.keep, st.interval_ms, st.events), (3, 300, false));

    // The status reports the newest, in `status()` as in `backup_status()`.
    let reported = s.status().expect("status").backup.expect("backup status");
    assert!(reported.last_success.is_some() && reported.last_failure.is_none(), "{reported:?}");

    // Stopped, the directory is quiet (no backup lands after `shutdown`): exactly three kept
    // (pruning follows each backup), every one verified, heads rising with time, taken while
    // the writes went on.
    s.shutdown().await.expect("shutdown");
    let kept = verified_backups(&backups);
    assert_eq!(kept.len(), 3, "{kept:?}");
    assert!(kept.windows(2).all(|w| w[0].at < w[1].at && w[0].head_seq <= w[1].head_seq), "{kept:?}");
    assert!(kept[0].head_seq < kept[2].head_seq, "taken while writing: {kept:?}");
    assert!(backups.join("notes.txt").exists() && backups.join("spores-manual.seed").exists());
    // The newest on disk is the last success (recorded just after it landed).
    crate::wait::until(
        "the newest backup reported",
        Duration::from_secs(10),
        || s.backup_status().and_then(|st| st.last_success).map(|l| l.head_seq),
        |seq| *seq == Some(kept[2].head_seq),
    )
    .await;
    drop(s);

    // A restart on the same data dir and policy: the newest backup on disk is the last
    // success until the next, three are still kept, and the newest comes to cover the newest
    // head.
    let s = builder().build();
    s.start().await.expect("restart");
    let first = crate::wait::some("the last backup after the restart", Duration::from_secs(10), || {
        s.backup_status().filter(|st| st.last_success.is_some())
    })
    .await;
    if first.succeeded == 0 {
        assert_eq!(first.last_success.map(|l| l.head_seq), Some(kept[2].head_seq), "found on disk");
    }
    // Listed while the node runs: names only (a backup may be pruned while it is read).
    let names = || list_backups(&backups).expect("list").into_iter().map(|(n, _)| n).collect::<Vec<_>>();
    let (head, st, _) = crate::wait::until(
        "a backup of the newest head after the restart",
        Duration::from_secs(30),
        || (s.head().expect("head").expect("a chain").seq, s.backup_status().expect("status"), names()),
        |(head, st, kept)| st.succeeded >= 1 && kept.len() == 3 && kept.last().is_some_and(|n| n.head_seq == *head),
    )
    .await;
    assert_eq!(st.failed, 0, "{st:?}");
    s.shutdown().await.expect("shutdown");
    let kept = verified_backups(&backups);
    assert_eq!(kept.len(), 3, "{kept:?}");
    assert!(kept[2].head_seq >= head, "the newest covers the newest head {head}: {kept:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_dir_that_cannot_be_written_is_reported_and_the_node_goes_on() {
    let root = tempfile::tempdir().expect("tempdir");
    // A file where the directory should be.
    let blocked = root.path().join("blocked");
    std::fs::write(&blocked, "not a directory").expect("write");
    let policy =
        BackupPolicy { dir: blocked.join("backups"), interval: Duration::from_millis(200), keep: 2, events: true };
    let s = SporeSystem::builder().data_dir(root.path().join("n")).private_network().backups(policy).build();
    s.initialize(crate::cluster::identity("backups")).await.expect("initialize");
    let st = crate::wait::until(
        "a failed backup",
        Duration::from_secs(20),
        || s.backup_status().expect("a policy is set"),
        |st| st.failed >= 2,
    )
    .await;
    assert_eq!(st.succeeded, 0);
    assert!(st.last_success.is_none(), "{st:?}");
    let failure = st.last_failure.expect("the failure");
    assert!(failure.error.contains("blocked"), "names the path: {}", failure.error);
    // The node goes on: it takes writes, and says what failed in its status.
    s.register_service("still-here", vec![], vec![], vec![]).await.expect("a write after the failures");
    let status = s.status().expect("status");
    assert!(status.halted.is_none(), "{status:?}");
    assert!(status.backup.and_then(|b| b.last_failure).is_some());
    // ... and in its metrics, for an alert.
    let text = s.metrics_text().expect("metrics");
    let value = |name: &str| text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<f64>().ok());
    assert!(value("spores_backups_failed_total").is_some_and(|n| n >= 2.0), "{text}");
    assert_eq!(value("spores_backups_succeeded_total"), Some(0.0));
    assert!(value("spores_backup_last_failure_timestamp_seconds").is_some_and(|t| t > 1.7e9), "{text}");
    assert_eq!(value("spores_backup_last_success_timestamp_seconds"), Some(-1.0));
    s.shutdown().await.expect("shutdown");

    // A policy that keeps nothing is refused at start, with nothing opened.
    let none_kept = BackupPolicy { keep: 0, ..BackupPolicy::new(root.path().join("b")) };
    let s = SporeSystem::builder().data_dir(root.path().join("m")).private_network().backups(none_kept).build();
    let err = s.start().await.expect_err("keep = 0");
    assert!(matches!(err, Error::Config(ConfigError::Invalid(_))), "{err}");
    assert!(!root.path().join("m").exists(), "nothing was created");
}
