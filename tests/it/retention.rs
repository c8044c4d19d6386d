//! Retention at the store: old history archived as verified seed files, then pruned in one
//! atomic step; the ledger keeps its state, says where its history starts, names its archives
//! for reads below, reopens as it was, and gives the bytes back to the filesystem.

use std::path::Path;
use std::sync::RwLock;

use mycnet_spores::forensics::Branch;
use mycnet_spores::seed::archive::{archive_and_prune, RetentionPolicy};
use mycnet_spores::seed::{self, VerifyPolicy};
use mycnet_spores::store::replay::StopAt;
use mycnet_spores::{Ledger, LedgerError, Projection};

use crate::fixture::{config, synth_events};

fn append(l: &RwLock<Ledger>, events: &[mycnet_spores::SignedEvent]) {
    for chunk in events.chunks(500) {
        let out = l.write().unwrap().append(chunk.to_vec()).expect("append");
        assert!(out.iter().all(|o| o.is_ok()), "synthetic events apply");
    }
}

/// Bytes the directory takes on disk (allocated blocks), as (tables and metadata, journals).
/// fjall's write-ahead journal is one file it rotates at 64 MB and deletes once flushed: it
/// cycles within a bound of its own whatever the retention, so it is counted apart.
fn disk_bytes(dir: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let (mut tables, mut journal) = (0, 0);
    for entry in std::fs::read_dir(dir).expect("read dir").flatten() {
        let meta = entry.metadata().expect("metadata");
        if meta.is_dir() {
            let (t, j) = disk_bytes(&entry.path());
            tables += t;
            journal += j;
        } else if entry.path().extension().is_some_and(|e| e == "jnl") {
            journal += meta.blocks() * 512;
        } else {
            tables += meta.blocks() * 512;
        }
    }
    (tables, journal)
}

#[test]
fn a_ledger_archives_its_old_history_prunes_it_and_names_the_archives_for_reads_below() {
    let (events, mut synth) = synth_events(0x4e7a, 6000);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ledger");
    let archive_dir = tmp.path().join("archive");
    let ledger = RwLock::new(Ledger::open(&dir, config(1024)).expect("open"));
    append(&ledger, &events);
    let voter = &synth.keys()[0].clone();
    let policy = RetentionPolicy { keep_events: Some(2000), keep_for: None };
    let state_before = ledger.read().unwrap().projection().state().clone();
    let head = ledger.read().unwrap().head().expect("head").seq;

    let a = archive_and_prune(&ledger, voter, &archive_dir, &policy).expect("archive").expect("something to prune");
    assert_eq!(a.pruned.from, 0);
    assert!(a.pruned.to < head - 2000 + 1, "keeps at least the newest 2000 events: pruned to {}", a.pruned.to);
    assert!(
        a.pruned.to > 1000,
        "prunes close to the policy (state checkpoints are a few hundred apart): {}",
        a.pruned.to
    );
    {
        let l = ledger.read().unwrap();
        assert_eq!(l.projection().state(), &state_before, "pruning changes no state");
        assert_eq!(l.history_from(), a.pruned.to + 1);
        assert_eq!(l.backfill_point(), None, "a pruned ledger does not ask peers for its old history");
        match l.read_range(0, 10) {
            Err(LedgerError::HistoryArchived { held_from, archives, .. }) => {
                assert_eq!(held_from, a.pruned.to + 1);
                assert_eq!(archives, vec![a.file.clone()]);
            }
            other => panic!("a read below the history held names the archive, got {other:?}"),
        }
        assert!(l.read_range(a.pruned.to + 1, a.pruned.to + 5).is_ok(), "what is held still reads");
    }
    // The archive is a full seed of exactly the events pruned, signed by the voter.
    let full = seed::read_file(&a.file, VerifyPolicy::default()).expect("the archive verifies");
    assert!(full.header.includes_events);
    assert_eq!(full.header.head_seq, a.pruned.to);
    assert_eq!(full.events.len() as u64, a.pruned.to + 1);
    assert!(full.events.iter().zip(&events).all(|(c, e)| &c.event == e), "the archive holds the events as written");

    // More history, a second prune: a state-only archive that starts where the first ended.
    let more = synth.next_chunk(1500);
    append(&ledger, &more);
    let b = archive_and_prune(&ledger, voter, &archive_dir, &policy).expect("archive").expect("more to prune");
    assert_eq!(b.pruned.from, a.pruned.to + 1);
    let second = seed::read_file(&b.file, VerifyPolicy::default()).expect("the second archive verifies");
    assert!(!second.header.includes_events);
    assert_eq!(
        second.base.as_ref().and_then(|s| s.head).map(|h| h.seq),
        Some(a.pruned.to),
        "it starts at the first's head"
    );
    assert_eq!(second.events.first().map(|e| e.seq), Some(a.pruned.to + 1));
    assert_eq!(second.header.head_seq, b.pruned.to);

    // Nothing more to let go: no third archive.
    assert_eq!(archive_and_prune(&ledger, voter, &archive_dir, &policy).expect("plan"), None);

    // Reopened, the ledger is where it was: same state, history start and archives.
    let state = ledger.read().unwrap().projection().state().clone();
    drop(ledger);
    let l = Ledger::open(&dir, config(1024)).expect("reopen");
    assert_eq!(l.projection().state(), &state);
    assert_eq!(l.history_from(), b.pruned.to + 1);
    assert_eq!(l.archives(), vec![a.file.clone(), b.file.clone()]);
    assert_eq!(l.backfill_point(), None);
    let head = l.head().expect("head");
    drop(l);

    // Forensics read the ledger and its archives as one history from genesis.
    let branch = Branch::open(&dir).expect("open the pruned ledger as a branch");
    assert_eq!(branch.head().seq, head.seq);
    assert!(branch.has_events());
    let early = branch.events(0, 9).expect("archived events read");
    assert!(early.iter().zip(&events).all(|(c, e)| &c.event == e) && early.len() == 10);
    assert_eq!(
        branch.hash_at(a.pruned.to + 1).expect("hash").map(Some),
        Some(branch.events(a.pruned.to + 1, a.pruned.to + 1).expect("read").first().map(|e| e.hash))
    );
    let mut want = Projection::new();
    for e in &events[..=500] {
        want.append(e.clone()).expect("replay");
    }
    let at = branch.projection(StopAt::Seq(500), &|_| {}).expect("the state at an archived seq");
    assert_eq!(at.state(), want.state());
    assert_eq!(branch.projection(StopAt::End, &|_| {}).expect("head state").state(), &state);
}

#[test]
fn a_prune_refuses_a_state_the_chain_does_not_attest_and_changes_nothing() {
    let (events, _synth) = synth_events(0x4e7b, 1500);
    let tmp = tempfile::tempdir().unwrap();
    let mut l = Ledger::open(tmp.path().join("l"), config(1024)).expect("open");
    for chunk in events.chunks(500) {
        l.append(chunk.to_vec()).expect("append");
    }
    let archive = tmp.path().join("a.seed");
    std::fs::write(&archive, b"not checked by the ledger").unwrap();
    // The state at some event that no state checkpoint follows.
    let mut p = mycnet_spores::Projection::new();
    for e in l.read_range(0, 700).expect("read") {
        p.apply(&e).expect("apply");
    }
    let head = l.head();
    let refused = l.prune_to(p.state().clone(), &archive).map(|(pruned, _)| pruned);
    assert!(matches!(refused, Err(LedgerError::Io { .. })), "{refused:?}");
    assert_eq!(l.history_from(), 0);
    assert_eq!(l.head(), head);
    assert!(l.read_range(0, 5).is_ok());
}

/// An attestation checked against one ledger is refused by another, even one holding the very
/// same chain (so the state would pass its own check): the check read the first ledger's
/// records, and nothing says the second's are the same. The second is left as it was, and its
/// own check of the same state then prunes it.
#[test]
fn a_prune_refuses_a_state_checked_against_another_ledger() {
    let (events, _synth) = synth_events(0x4e7c, 3000);
    let tmp = tempfile::tempdir().unwrap();
    let a = RwLock::new(Ledger::open(tmp.path().join("a"), config(1024)).expect("open a"));
    let b = RwLock::new(Ledger::open(tmp.path().join("b"), config(1024)).expect("open b"));
    append(&a, &events);
    append(&b, &events);
    let policy = RetentionPolicy { keep_events: Some(1000), keep_for: None };
    let keep = mycnet_spores::seed::archive::plan(&a, &policy, mycnet_spores::Timestamp::now())
        .expect("plan")
        .expect("a state to prune to");
    let archive = tmp.path().join("a.seed");
    std::fs::write(&archive, b"not checked by the ledger").unwrap();

    let checked_on_a = a.read().unwrap().attestation_check().check(keep.clone()).expect("attested on a");
    let (head, state) = {
        let l = b.read().unwrap();
        (l.head(), l.projection().state().clone())
    };
    let refused = b.write().unwrap().prune_to_checked(checked_on_a, &archive).map(|(pruned, _)| pruned);
    match refused {
        Err(LedgerError::Io { path, source }) => {
            assert_eq!(path, tmp.path().join("b"), "the error names the ledger refusing");
            assert!(source.to_string().contains("checked against"), "and says why: {source}");
        }
        other => panic!("a state checked against another ledger is refused, got {other:?}"),
    }
    {
        let l = b.read().unwrap();
        assert_eq!((l.history_from(), l.head()), (0, head));
        assert_eq!(l.projection().state(), &state);
        assert!(l.archives().is_empty());
        assert_eq!(l.read_range(0, 5).expect("the whole history still reads").len(), 6);
    }

    let checked_on_b = b.read().unwrap().attestation_check().check(keep.clone()).expect("attested on b");
    let (pruned, remover) = b.write().unwrap().prune_to_checked(checked_on_b, &archive).expect("prunes");
    remover.run().expect("removes");
    assert_eq!(pruned.to, keep.head.expect("head").seq);
    assert_eq!(b.read().unwrap().history_from(), pruned.to + 1);
}

/// A view of the records taken before a prune reads every record it saw, byte for byte, while
/// the prune drops the tables holding them and deletes the rest, and the reclaimer compacts
/// the keyspace: the archive and the planning read through such a view.
#[test]
fn a_records_view_reads_what_it_saw_while_a_prune_drops_the_tables_under_it() {
    let (events, mut synth) = synth_events(0x4e7d, 6000);
    let tmp = tempfile::tempdir().unwrap();
    let ledger = RwLock::new(Ledger::open(tmp.path().join("l"), config(1024)).expect("open"));
    append(&ledger, &events);
    // Records in tables on disk, not only in the memtable, so the prune has tables to drop.
    ledger.read().unwrap().reclaimer().compact_all().expect("flush and compact");
    let (tables_before, _) = disk_bytes(&tmp.path().join("l"));
    let head = ledger.read().unwrap().head().expect("head").seq;
    let mut before = Vec::new();
    ledger
        .read()
        .unwrap()
        .visit_raw_range(0, head, |seq, rec| {
            before.push((seq, rec.to_vec()));
            Ok(())
        })
        .expect("reads");
    let view = ledger.read().unwrap().records_view();

    let policy = RetentionPolicy { keep_events: Some(1500), keep_for: None };
    let voter = synth.keys()[0].clone();
    let done = archive_and_prune(&ledger, &voter, &tmp.path().join("archive"), &policy)
        .expect("archive")
        .expect("something to prune");
    assert!(done.pruned.to > 3000, "most of the history went: pruned to {}", done.pruned.to);
    {
        let l = ledger.read().unwrap();
        assert!(matches!(l.read_range(0, 10), Err(LedgerError::HistoryArchived { .. })));
        let reclaimer = l.reclaimer();
        drop(l);
        reclaimer.run().expect("drops what was flushed since");
        reclaimer.compact_all().expect("compacts what is held");
    }

    let mut seen = Vec::new();
    let n = view
        .visit_raw_range(0, head, |seq, rec| {
            seen.push((seq, rec.to_vec()));
            Ok(())
        })
        .expect("the view still reads the pruned records");
    assert_eq!(n, head + 1);
    assert!(seen == before, "the same records, byte for byte, as before the prune");
    drop(view);
    // Once the view is gone the pruned records' bytes go too: fjall deletes the files of
    // tables no snapshot sees at its next change of tables (here the next compaction).
    append(&ledger, &synth.next_chunk(100));
    ledger.read().unwrap().reclaimer().compact_all().expect("compact");
    let (tables_after, _) = disk_bytes(&tmp.path().join("l"));
    assert!(tables_after * 2 < tables_before, "tables {tables_before} -> {tables_after} bytes");
    // A view taken now starts where the ledger's history does.
    let fresh = ledger.read().unwrap().records_view();
    assert!(matches!(fresh.visit_raw_range(0, head, |_, _| Ok(())), Err(LedgerError::HistoryArchived { .. })));
    assert_eq!(fresh.visit_raw_range(done.pruned.to + 1, head, |_, _| Ok(())).expect("held"), head - done.pruned.to);
}

/// A node that keeps the newest `keep` events takes about the same disk however long it runs:
/// pruned records' bytes go back to the filesystem. It holds between `keep` events and `keep`
/// plus the spacing of the chain's state checkpoints (the points it can prune to) plus one
/// write burst, so `keep` must be large against that spacing (a few thousand events here).
/// `SPORES_RETENTION_EVENTS` (default 60,000) and `SPORES_RETENTION_KEEP` (default 20,000)
/// scale it (the run: 1,000,000 and 100,000).
#[test]
fn disk_stays_flat_under_retention() {
    let total: usize = std::env::var("SPORES_RETENTION_EVENTS").ok().and_then(|v| v.parse().ok()).unwrap_or(60_000);
    let keep: u64 = std::env::var("SPORES_RETENTION_KEEP").ok().and_then(|v| v.parse().ok()).unwrap_or(20_000);
    let (first, mut synth) = synth_events(0x4e7c, keep as usize);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ledger");
    let archive_dir = tmp.path().join("archive");
    let ledger = RwLock::new(Ledger::open(&dir, config(16_384)).expect("open"));
    append(&ledger, &first);
    let policy = RetentionPolicy { keep_events: Some(keep), keep_for: None };
    ledger.read().unwrap().reclaimer().compact_all().expect("settle");
    let at_keep = disk_bytes(&dir);
    let mut written = keep as usize;
    let mut prunes = 0;
    while written < total {
        let chunk = synth.next_chunk((keep as usize / 20).min(total - written));
        written += chunk.len();
        append(&ledger, &chunk);
        if archive_and_prune(&ledger, &synth.keys()[0], &archive_dir, &policy).expect("prune").is_some() {
            prunes += 1;
            ledger.read().unwrap().reclaimer().run().expect("reclaim");
        }
    }
    let (after, journal) = disk_bytes(&dir);
    let held = {
        let l = ledger.read().unwrap();
        l.head().map_or(0, |h| h.seq + 1) - l.history_from()
    };
    let archived: u64 = std::fs::read_dir(&archive_dir).unwrap().flatten().map(|e| e.metadata().unwrap().len()).sum();
    eprintln!(
        "{written} events, keeping {keep}: {prunes} prunes, {held} held; ledger tables {} B at {keep} events (journal {} B), {after} B after (journal {journal} B); archives {archived} B",
        at_keep.0, at_keep.1
    );
    assert!(prunes >= 2, "it pruned along the way");
    assert!(
        after as f64 <= 1.2 * at_keep.0 as f64,
        "tables after {written} events ({after} B) stay within 1.2 x those at {keep} ({} B)",
        at_keep.0
    );
    // The journal does not grow with the run: the sealed journals are evicted at the ledger's
    // bound (96 MiB; the meta keyspace, written with every batch, keeps each one until then),
    // and fjall seals the active one at its next memtable flush after 64 MB (one memtable, at
    // most 24 MiB: its bound is drawn from 16-24 MiB when the keyspace is created).
    let journal_bound = (96u64 << 20) + 64_000_000 + (24u64 << 20);
    assert!(journal <= journal_bound, "the journal stays within its bound ({journal_bound} B): {journal} B");
}

mod node {
    //! Retention run by `SporeSystem` nodes over QUIC: a voter archives and prunes while it
    //! serves, and a voter that joins afterwards gets the pruned ledger's state in a state-only
    //! snapshot.

    use std::time::Duration;

    use mycnet_spores::node::retention::RetentionSettings;
    use mycnet_spores::node::AnchorPolicy;
    use mycnet_spores::seed::archive::RetentionPolicy;
    use mycnet_spores::seed::{self, VerifyPolicy};
    use mycnet_spores::{Error, LedgerError, SporeSystem, Timeouts};

    use crate::cluster::identity;
    use crate::wait;

    const T: Duration = Duration::from_secs(30);

    fn node(root: &std::path::Path, name: &str, keep: Option<u64>) -> SporeSystem {
        let mut b = SporeSystem::builder()
            .data_dir(root.join(name))
            .addr("127.0.0.1:0")
            .name(name)
            // A state checkpoint often, so there are states to prune to.
            .anchors(AnchorPolicy { every_events: 40, every: Duration::from_millis(100) })
            .timeouts(Timeouts { snapshot_every: 50, logs_kept_after_snapshot: 5, ..crate::cluster::fast_timeouts() });
        if let Some(keep) = keep {
            b = b.retention(RetentionSettings {
                policy: RetentionPolicy { keep_events: Some(keep), keep_for: None },
                archive_dir: root.join(format!("{name}-archive")),
                every: Duration::from_millis(200),
            });
        }
        b.build()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_voter_prunes_while_serving_and_a_later_voter_starts_from_its_state() {
        let root = tempfile::tempdir().expect("tempdir");
        let a = node(root.path(), "a", Some(100));
        a.start().await.expect("start");
        a.initialize(identity("retention")).await.expect("initialize");
        // An unbroken stream of writes from four writers: the leader still attests its state
        // (a state checkpoint is proposed at the head, committed before the next batch), and
        // retention prunes to that state once 100 newer events exist.
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writers: Vec<_> = (0..4)
            .map(|w| {
                let (a, stop) = (a.clone(), stop.clone());
                tokio::spawn(async move {
                    let mut i = 0;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        a.register_service(&format!("w{w}-{i}"), vec![], vec![], vec![]).await.expect("write");
                        i += 1;
                    }
                    i
                })
            })
            .collect();
        let pruned =
            wait::until("a pruned its history under writes", T, || a.status().expect("status"), |s| s.history_from > 0)
                .await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut written = 0;
        for w in writers {
            written += w.await.expect("writer");
        }
        assert!(written >= 100, "pruned while the writes went on: {written} writes, {pruned:?}");
        let st = a.status().expect("status");
        let head = st.head.expect("head").seq;
        assert!(head + 1 - st.history_from >= 100, "keeps at least 100 events: {} from {}", head, st.history_from);
        match a.read_events(0, 10).await {
            Err(Error::Ledger(LedgerError::HistoryArchived { archives, .. })) => {
                assert!(!archives.is_empty());
                for f in &archives {
                    seed::read_file(f, VerifyPolicy::default()).expect("every archive verifies");
                }
            }
            other => panic!("a read below the history held names the archives: {other:?}"),
        }
        assert!(a.read_events(st.history_from, 5).await.is_ok());
        // Writes go on; the Raft snapshots a builds from now on hold only its pruned ledger.
        for i in 0..120 {
            a.register_service(&format!("t{i}"), vec![], vec![], vec![]).await.expect("write after the prune");
        }

        // A voter that joins now cannot get the history from genesis: it starts from a's state.
        let b = node(root.path(), "b", None);
        b.start().await.expect("start b");
        a.admit(b.announcement().expect("announcement")).await.expect("admit");
        b.join(a.peer().expect("peer"), true).await.expect("join");
        let a_head = a.head().expect("head").expect("a head");
        let held = || b.head().ok().flatten();
        wait::until("b holds a's chain", T, held, |h| h.is_some_and(|h| h.seq >= a_head.seq)).await;
        assert!(b.status().expect("status").history_from > 0, "b's history starts at a's pruned state");
        let digest = |s: &SporeSystem| s.with_projection(|p| (p.head(), p.state_digest())).expect("projection");
        b.register_service("after", vec![], vec![], vec![]).await.expect("a write after the join");
        let after = a.head().expect("head").expect("head").seq;
        wait::until(
            "both applied it",
            T,
            || (digest(&a), digest(&b)),
            |(x, y)| x == y && x.0.is_some_and(|h| h.seq >= after),
        )
        .await;
        b.shutdown().await.expect("shutdown b");
        a.shutdown().await.expect("shutdown a");
    }
}
