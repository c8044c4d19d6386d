//! Scheduled backups, run by the node itself: every [`BackupPolicy::interval`] it writes a
//! seed of its chain ([`SporeSystem::export_seed`], crash-safe) into [`BackupPolicy::dir`],
//! verifies the file before it gets a backup's name, and removes the oldest backups beyond
//! [`BackupPolicy::keep`]. [`SporeSystem::backup_status`] (and `status().backup`) say how the
//! last runs went.
//!
//! The policy's TOML form is [`BackupConfig`] (`[backup]` in a node's config,
//! [`NodeConfig`](super::NodeConfig)), its interval written as [`parse_duration`] reads it.
//!
//! A backup's file name sorts by time and carries the head it covers:
//! `spores-<UTC yyyymmddThhmmss.mmmZ>-<head seq>.seed` ([`BackupName`], `schema/seed.md`).
//! The seed is exported under a staging name (`.spores-<time>.seed.partial`), verified
//! (`seed::verify` with the default policy, and the head the export reported), then renamed:
//! a file with a backup's name always verified once. Pruning touches only files whose names
//! parse as a backup's; anything else in the directory is left alone. One directory per node:
//! two nodes writing into one would prune each other's backups.
//!
//! Like the upkeep, the task belongs to the [`SporeSystem`]: it lives across a yield's restart
//! and a shutdown followed by a start, holds the system weakly while it waits, and ends with
//! its last handle. After a restart the newest backup found in the directory is the last
//! success, and the next backup is due one interval after it.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use chrono::{DateTime, NaiveDateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{ConfigError, Shared, SporeSystem};
use crate::core::projection::ChainHead;
use crate::core::sync;
use crate::core::types::Timestamp;
use crate::error::Error;
use crate::seed::{SeedError, VerifyPolicy};
use crate::wire::status::{BackupFailure, BackupStatus, BackupSuccess};

/// The shortest interval a policy may have.
pub const BACKUP_INTERVAL_MIN: Duration = Duration::from_millis(100);

/// How soon the task looks again when the node is stopped or holds no chain yet.
const NOT_READY_RETRY: Duration = Duration::from_secs(1);

const PREFIX: &str = "spores-";
const SUFFIX: &str = ".seed";
const STAGING_PREFIX: &str = ".spores-";
const STAGING_SUFFIX: &str = ".seed.partial";
/// `yyyymmddThhmmss.mmm`, the time in a backup's name (before its `Z`).
const STAMP_FORMAT: &str = "%Y%m%dT%H%M%S%.3f";
const STAMP_LEN: usize = 19;

/// When and where a node writes its backups ([`SporeSystemBuilder::backups`]).
///
/// [`SporeSystemBuilder::backups`]: super::SporeSystemBuilder::backups
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackupPolicy {
    /// The directory the seeds go to (created if missing; one per node).
    pub dir: PathBuf,
    /// Time between backups (at least [`BACKUP_INTERVAL_MIN`]).
    pub interval: Duration,
    /// How many backups to keep (at least 1); older ones are removed.
    pub keep: usize,
    /// Every event from genesis in each backup (a full, offline-verifiable history), or the
    /// newest attested state and the events after it (smaller; see `schema/seed.md`).
    pub events: bool,
}

impl BackupPolicy {
    /// Backups into `dir` every hour, the newest 24 kept, state-only.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        BackupPolicy { dir: dir.into(), interval: Duration::from_secs(3600), keep: 24, events: false }
    }

    /// Checks the policy: an interval of at least [`BACKUP_INTERVAL_MIN`], at least one backup
    /// kept, a directory named.
    pub fn check(&self) -> Result<(), ConfigError> {
        if self.dir.as_os_str().is_empty() {
            return Err(ConfigError::Invalid("`backup.dir` is empty"));
        }
        if self.interval < BACKUP_INTERVAL_MIN {
            return Err(ConfigError::Invalid("`backup.interval` is shorter than 100 ms"));
        }
        if self.keep == 0 {
            return Err(ConfigError::Invalid("`backup.keep` must be at least 1"));
        }
        Ok(())
    }
}

/// Scheduled backups as the TOML gives them (`[backup]`; [`BackupPolicy`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupConfig {
    /// The directory the seeds go to (one per node; created if missing).
    pub dir: PathBuf,
    /// Time between backups: a whole number and a unit, `ms`, `s`, `m`, `h` or `d`.
    #[serde(default = "hourly")]
    pub interval: String,
    /// How many backups to keep.
    #[serde(default = "a_day_of_hours")]
    pub keep: usize,
    /// Every event from genesis in each seed (otherwise the attested state and the events
    /// after it).
    #[serde(default)]
    pub events: bool,
}

fn hourly() -> String {
    "1h".to_string()
}

fn a_day_of_hours() -> usize {
    24
}

impl BackupConfig {
    /// The policy, checked: the interval parses and is long enough, something is kept.
    pub fn policy(&self) -> Result<BackupPolicy, ConfigError> {
        let interval = parse_duration(&self.interval)
            .ok_or_else(|| ConfigError::BadDuration { field: "backup.interval", value: self.interval.clone() })?;
        let policy = BackupPolicy { dir: self.dir.clone(), interval, keep: self.keep, events: self.events };
        policy.check()?;
        Ok(policy)
    }
}

/// A duration as operators write it: a whole number and a unit, `ms`, `s`, `m`, `h` or `d`
/// (`300ms`, `30s`, `1h`). `None` for anything else.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = text.split_at(split);
    if number.is_empty() {
        return None;
    }
    let n: u64 = number.parse().ok()?;
    let ms_per = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return None,
    };
    Some(Duration::from_millis(n.checked_mul(ms_per)?))
}

/// Why one backup failed (kept in words in [`BackupStatus::last_failure`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackupError {
    /// The backup directory or a file in it could not be made, listed, renamed or removed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
    /// The node could not export its seed.
    #[error("export failed: {0}")]
    Export(#[source] Box<Error>),
    /// The written seed does not verify (it was removed).
    #[error("{path} does not verify (removed): {source}")]
    Verify {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: SeedError,
    },
    /// The written seed verifies but covers another head than the export reported (removed).
    #[error("{path} covers seq {found}, the export reported seq {expected} (removed)")]
    HeadMismatch {
        /// The file.
        path: PathBuf,
        /// The head the export reported.
        expected: u64,
        /// The head in the file.
        found: u64,
    },
    /// The node stopped (or restarted) while the backup was verified: it was dropped, so
    /// nothing lands in the directory after a shutdown.
    #[error("the node stopped during the backup; it was dropped")]
    Stopped,
    /// The blocking work of a backup did not finish (a panic, or the runtime shutting down).
    #[error("the backup task failed: {0}")]
    Task(#[source] tokio::task::JoinError),
}

fn io_at(path: &Path) -> impl FnOnce(std::io::Error) -> BackupError + '_ {
    move |source| BackupError::Io { path: path.to_path_buf(), source }
}

/// A backup's file name: the time it was taken (UTC, milliseconds) and the head it covers.
/// Names order by time, then head.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct BackupName {
    /// When the backup was taken, to the millisecond.
    pub at: DateTime<Utc>,
    /// The sequence number of the head it covers.
    pub head_seq: u64,
}

impl BackupName {
    /// `spores-<yyyymmddThhmmss.mmmZ>-<head seq>.seed`.
    pub fn file_name(&self) -> String {
        format!("{PREFIX}{}Z-{}{SUFFIX}", self.at.format(STAMP_FORMAT), self.head_seq)
    }

    /// The name `name` stands for, if it is a backup's (exactly the form
    /// [`BackupName::file_name`] writes; nothing else is ever pruned).
    pub fn parse(file_name: &str) -> Option<BackupName> {
        let inner = file_name.strip_prefix(PREFIX)?.strip_suffix(SUFFIX)?;
        let (stamp, seq) = inner.split_once("Z-")?;
        if stamp.len() != STAMP_LEN || seq.is_empty() || !seq.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let at = NaiveDateTime::parse_from_str(stamp, STAMP_FORMAT).ok()?.and_utc();
        let name = BackupName { at, head_seq: seq.parse().ok()? };
        // One spelling per backup: a name that does not print back the same is not ours.
        (name.file_name() == file_name).then_some(name)
    }
}

/// The backups in `dir`, oldest first (files whose names parse as a [`BackupName`]).
pub fn list_backups(dir: &Path) -> std::io::Result<Vec<(BackupName, PathBuf)>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let Some(name) = entry.file_name().to_str().and_then(BackupName::parse) else { continue };
        if entry.file_type()?.is_file() {
            found.push((name, entry.path()));
        }
    }
    found.sort();
    Ok(found)
}

/// A system's backup policy and how its runs went.
pub(crate) struct Backups {
    policy: Option<BackupPolicy>,
    status: Mutex<BackupStatus>,
}

/// The backups of one system, shared with its RPC server.
pub(crate) type SharedBackups = Arc<Backups>;

impl Backups {
    /// For `policy` (`None`: no backups).
    pub(crate) fn new(policy: Option<BackupPolicy>) -> SharedBackups {
        let status = policy.as_ref().map_or_else(BackupStatus::default, |p| BackupStatus {
            dir: p.dir.display().to_string(),
            interval_ms: u64::try_from(p.interval.as_millis()).unwrap_or(u64::MAX),
            keep: p.keep as u64,
            events: p.events,
            ..BackupStatus::default()
        });
        Arc::new(Backups { policy, status: Mutex::new(status) })
    }

    /// The policy, if backups are on.
    pub(crate) fn policy(&self) -> Option<&BackupPolicy> {
        self.policy.as_ref()
    }

    /// What `status` reports (`None`: no backups).
    pub(crate) fn report(&self) -> Option<BackupStatus> {
        self.policy.as_ref().map(|_| sync::lock(&self.status).clone())
    }

    fn succeeded(&self, done: BackupSuccess) {
        let mut s = sync::lock(&self.status);
        s.succeeded += 1;
        s.last_success = Some(done);
    }

    fn failed(&self, error: &BackupError) {
        let mut s = sync::lock(&self.status);
        s.failed += 1;
        s.last_failure = Some(BackupFailure { at: Timestamp::now(), error: error.to_string() });
    }

    /// After a restart: the newest backup found in the directory, unless one was written since.
    fn found(&self, name: BackupName, path: &Path) {
        let mut s = sync::lock(&self.status);
        if s.last_success.is_none() {
            s.last_success = Some(success(name, path));
        }
    }
}

fn success(name: BackupName, path: &Path) -> BackupSuccess {
    BackupSuccess { at: Timestamp::from_datetime(name.at), path: path.display().to_string(), head_seq: name.head_seq }
}

impl SporeSystem {
    /// How the scheduled backups went: the policy, the last success (time, file, head) and
    /// the last failure (time, error). `None` when the node has no backup policy
    /// ([`SporeSystemBuilder::backups`](super::SporeSystemBuilder::backups)).
    pub fn backup_status(&self) -> Option<BackupStatus> {
        self.shared.backups.report()
    }
}

/// Spawns the backup task of the system behind `shared`, for `policy`.
pub(super) fn spawn(shared: Weak<Shared>, policy: BackupPolicy) -> tokio::task::JoinHandle<()> {
    tokio::spawn(run(shared, policy))
}

/// Runs the backups of the system behind `shared` until its last handle is dropped.
async fn run(shared: Weak<Shared>, policy: BackupPolicy) {
    let mut wait = first_wait(&shared, &policy).await;
    loop {
        tokio::time::sleep(wait).await;
        let Some(strong) = shared.upgrade() else { return };
        let system = SporeSystem { shared: strong };
        // A stopped node, or one that holds no chain yet, has nothing to back up.
        if !matches!(system.head(), Ok(Some(_))) {
            wait = NOT_READY_RETRY.min(policy.interval);
            continue;
        }
        let started = Instant::now();
        match backup_once(&system, &policy).await {
            Ok((done, pruned)) => {
                tracing::info!(path = %done.path, head_seq = done.head_seq, "backup written and verified");
                system.shared.backups.succeeded(done);
                match pruned {
                    Ok(0) => {}
                    Ok(removed) => tracing::debug!(removed, "old backups removed"),
                    Err(e) => {
                        tracing::warn!(error = %e, "could not remove old backups");
                        system.shared.backups.failed(&e);
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, dir = %policy.dir.display(), "backup failed");
                system.shared.backups.failed(&e);
            }
        }
        wait = policy.interval.saturating_sub(started.elapsed());
    }
}

/// How long to wait for the first backup: one interval after the newest backup already in the
/// directory (recorded as the last success), at once when there is none. Leftover staging
/// files of an interrupted run are removed.
async fn first_wait(shared: &Weak<Shared>, policy: &BackupPolicy) -> Duration {
    let dir = policy.dir.clone();
    let listed = tokio::task::spawn_blocking(move || {
        remove_staging_files(&dir);
        list_backups(&dir)
    })
    .await;
    let newest = match listed {
        Ok(Ok(list)) => list.into_iter().last(),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => None,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, dir = %policy.dir.display(), "cannot list the backup directory");
            None
        }
        Err(e) => {
            tracing::warn!(error = %e, "the backup listing task failed");
            None
        }
    };
    let Some((name, path)) = newest else { return Duration::ZERO };
    if let Some(s) = shared.upgrade() {
        s.backups.found(name, &path);
    }
    let age = (Timestamp::now().to_datetime() - name.at).to_std().unwrap_or(Duration::ZERO);
    policy.interval.saturating_sub(age)
}

/// Removes the staging files an interrupted backup left in `dir` (best effort).
fn remove_staging_files(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with(STAGING_PREFIX) && name.ends_with(STAGING_SUFFIX) {
            if let Err(e) = std::fs::remove_file(entry.path()) {
                tracing::warn!(error = %e, file = name, "cannot remove a leftover backup staging file");
            }
        }
    }
}

/// Runs blocking backup work on the blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, BackupError> + Send + 'static,
) -> Result<T, BackupError> {
    tokio::task::spawn_blocking(f).await.map_err(BackupError::Task)?
}

/// One backup: export under a staging name, verify, rename to the backup's name, prune the
/// oldest beyond `keep` (how that went is the second part of the answer).
#[tracing::instrument(name = "backup", skip_all, fields(dir = %policy.dir.display(), events = policy.events))]
async fn backup_once(
    system: &SporeSystem,
    policy: &BackupPolicy,
) -> Result<(BackupSuccess, Result<usize, BackupError>), BackupError> {
    let dir = policy.dir.clone();
    blocking(move || std::fs::create_dir_all(&dir).map_err(io_at(&dir))).await?;
    // The time in the name, to the millisecond (the name carries no more).
    let at = Timestamp::now().to_datetime();
    let at = at - chrono::Duration::nanoseconds(i64::from(at.timestamp_subsec_nanos() % 1_000_000));
    let staging = policy.dir.join(format!("{STAGING_PREFIX}{}Z{STAGING_SUFFIX}", at.format(STAMP_FORMAT)));
    // The running node that exports; weakly, so a shutdown does not wait for the verification.
    let exporter = system.running().map(|r| Arc::downgrade(&r)).map_err(|e| BackupError::Export(Box::new(e)))?;
    let head = match system.export_seed(&staging, policy.events).await {
        Ok(head) => head,
        Err(e) => {
            // The export writes a temporary file and renames it last: nothing to clean up
            // unless the rename happened and something failed after it.
            let _ = std::fs::remove_file(&staging);
            return Err(BackupError::Export(Box::new(e)));
        }
    };
    let name = BackupName { at, head_seq: head.seq };
    let path = policy.dir.join(name.file_name());
    let (dir, target, system, keep) = (policy.dir.clone(), path.clone(), system.clone(), policy.keep);
    blocking(move || {
        let checked = verify_file(&staging, &head).and_then(|()| {
            // Named only while the node that exported it still runs, under the lock a
            // shutdown takes to stop it: no backup lands in the directory after `shutdown`.
            let running = sync::read(&system.shared.running);
            if !running.as_ref().is_some_and(|r| std::ptr::eq(Arc::as_ptr(r), exporter.as_ptr())) {
                return Err(BackupError::Stopped);
            }
            std::fs::rename(&staging, &target).map_err(io_at(&target))?;
            sync_dir(&dir);
            let pruned = prune(&dir, keep);
            drop(running);
            Ok(pruned)
        });
        if checked.is_err() {
            let _ = std::fs::remove_file(&staging);
        }
        checked
    })
    .await
    .map(|pruned| (success(name, &path), pruned))
}

/// Verifies the seed at `path` with the default policy, at the head the export reported.
#[tracing::instrument(name = "backup_verify", skip_all, fields(path = %path.display()))]
fn verify_file(path: &Path, head: &ChainHead) -> Result<(), BackupError> {
    let seed = crate::seed::read_file(path, VerifyPolicy::default())
        .map_err(|source| BackupError::Verify { path: path.to_path_buf(), source })?;
    if (seed.header.head_seq, seed.header.head_hash) != (head.seq, head.hash) {
        return Err(BackupError::HeadMismatch {
            path: path.to_path_buf(),
            expected: head.seq,
            found: seed.header.head_seq,
        });
    }
    Ok(())
}

/// Makes a rename in `dir` durable (best effort: not every platform syncs directories).
fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Removes the oldest backups in `dir` beyond `keep`; returns how many.
#[tracing::instrument(name = "backup_prune", skip_all, fields(dir = %dir.display(), keep))]
fn prune(dir: &Path, keep: usize) -> Result<usize, BackupError> {
    let list = list_backups(dir).map_err(io_at(dir))?;
    let excess = list.len().saturating_sub(keep);
    for (_, path) in &list[..excess] {
        std::fs::remove_file(path).map_err(io_at(path))?;
    }
    if excess > 0 {
        sync_dir(dir);
    }
    Ok(excess)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::{ConfigError, NodeConfig};

    /// `[backup]`: every value checked when read, the defaults filled in.
    #[test]
    fn reads_the_backup_section_and_checks_each_value() {
        let base = "data_dir = \"x\"\nlisten = \"a:1\"\n[backup]\ndir = \"b\"\n";
        let c = NodeConfig::from_toml(base).expect("valid");
        let policy = c.backup.as_ref().map(|b| b.policy().expect("policy"));
        assert_eq!(policy, Some(BackupPolicy::new("b")), "1h, 24 kept, state-only by default");
        let c =
            NodeConfig::from_toml(&format!("{base}interval = \"300ms\"\nkeep = 3\nevents = true\n")).expect("valid");
        let p = c.backup.as_ref().map(|b| b.policy().expect("policy")).expect("set");
        assert_eq!((p.interval, p.keep, p.events), (Duration::from_millis(300), 3, true));
        for (bad, field) in [("interval = \"1 hour\"\n", "backup.interval"), ("interval = \"h\"\n", "backup.interval")]
        {
            let e = NodeConfig::from_toml(&format!("{base}{bad}")).expect_err(bad);
            assert!(matches!(&e, ConfigError::BadDuration { field: f, .. } if *f == field), "{e}");
        }
        assert!(matches!(NodeConfig::from_toml(&format!("{base}interval = \"10ms\"\n")), Err(ConfigError::Invalid(_))));
        assert!(matches!(NodeConfig::from_toml(&format!("{base}keep = 0\n")), Err(ConfigError::Invalid(_))));
        assert!(matches!(NodeConfig::from_toml(&format!("{base}keep = -1\n")), Err(ConfigError::Parse(_))));
        assert!(matches!(NodeConfig::from_toml(&format!("{base}every = 3\n")), Err(ConfigError::Parse(_))));
        assert!(matches!(
            NodeConfig::from_toml("data_dir = \"x\"\nlisten = \"a:1\"\n[backup]\n"),
            Err(ConfigError::Parse(_))
        ));
        assert_eq!(parse_duration("90s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("2d"), Some(Duration::from_secs(2 * 86_400)));
        assert_eq!(parse_duration(""), None);
        assert_eq!(parse_duration("5"), None);
        assert_eq!(parse_duration("99999999999999999999h"), None);
    }

    #[test]
    fn names_sort_by_time_and_parse_back_exactly() {
        let at = |s: &str| NaiveDateTime::parse_from_str(s, STAMP_FORMAT).expect("time").and_utc();
        let a = BackupName { at: at("20250102T030405.006"), head_seq: 42 };
        assert_eq!(a.file_name(), "spores-20250102T030405.006Z-42.seed");
        assert_eq!(BackupName::parse(&a.file_name()), Some(a));
        let b = BackupName { at: at("20250102T030405.100"), head_seq: 7 };
        assert!(a < b && a.file_name() < b.file_name());
        for other in [
            "spores-20250102T030405Z-42.seed",
            "spores-20250102T030405.006Z-.seed",
            "spores-20250102T030405.006Z-4x.seed",
            "spores-20250102T030405.006Z-42.seed.partial",
            ".spores-20250102T030405.006Z.seed.partial",
            "spores-20251302T030405.006Z-42.seed",
            "spores-20250102T030405.006Z-042.seed",
            "backup.seed",
        ] {
            assert_eq!(BackupName::parse(other), None, "{other}");
        }
    }

    #[test]
    fn a_policy_needs_a_dir_an_interval_and_something_kept() {
        let ok = BackupPolicy { interval: BACKUP_INTERVAL_MIN, ..BackupPolicy::new("b") };
        assert!(ok.check().is_ok());
        assert!(BackupPolicy { keep: 0, ..ok.clone() }.check().is_err());
        assert!(BackupPolicy { interval: Duration::from_millis(99), ..ok.clone() }.check().is_err());
        assert!(BackupPolicy { dir: PathBuf::new(), ..ok }.check().is_err());
    }
}
