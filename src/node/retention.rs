//! Retention, run by the node itself: every [`RetentionSettings::every`] it archives the
//! history its [`RetentionPolicy`] lets go as a verified seed file in
//! [`RetentionSettings::archive_dir`], prunes it from the ledger in one atomic step, and drops
//! the ledger's tables that held only pruned records, so the bytes return to the filesystem
//! without a compaction rewriting the history kept (`crate::seed::archive`). The node
//! keeps serving throughout: only the prune itself holds the ledger's write lock, for one synced
//! batch. `status().history_from` says where the history held starts; reads below it fail with
//! [`crate::LedgerError::HistoryArchived`], naming the archives.
//!
//! Archives are signed by the node's key and verified against the voters at their head, so a
//! node whose key is not a voter's cannot archive (each run then fails and says why).
//!
//! The settings' TOML form is [`RetentionConfig`] (`[retention]` in a node's config). Like the
//! backups, the task belongs to the [`SporeSystem`]: it lives across a yield's restart, holds
//! the system weakly while it waits, and ends with its last handle.

use std::path::{Path, PathBuf};
use std::sync::Weak;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{parse_duration, ConfigError, Shared, SporeSystem};
use crate::error::Error;
use crate::seed::archive::{archive_and_prune, Archived, RetentionPolicy};

/// The shortest time between two retention runs.
pub const RETENTION_EVERY_MIN: Duration = Duration::from_millis(100);

/// How much history a node keeps, where the rest goes, and how often it looks
/// ([`SporeSystemBuilder::retention`](super::SporeSystemBuilder::retention)).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetentionSettings {
    /// How much history to keep.
    pub policy: RetentionPolicy,
    /// Where the archives go (created if missing; one per node).
    pub archive_dir: PathBuf,
    /// Time between runs (at least [`RETENTION_EVERY_MIN`]).
    pub every: Duration,
}

impl RetentionSettings {
    /// Checks the settings: something is bounded, runs are not too frequent.
    pub fn check(&self) -> Result<(), ConfigError> {
        if !self.policy.prunes() {
            return Err(ConfigError::Invalid("retention needs `keep_events` or `keep_for`"));
        }
        if self.policy.keep_events == Some(0) {
            return Err(ConfigError::Invalid("retention.keep_events must be at least 1"));
        }
        if self.every < RETENTION_EVERY_MIN {
            return Err(ConfigError::Invalid("retention.every must be at least 100ms"));
        }
        Ok(())
    }
}

/// `[retention]` in a node's TOML config.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionConfig {
    /// Keep at least the newest this many events.
    #[serde(default)]
    pub keep_events: Option<u64>,
    /// Keep at least this much time of events: a whole number and a unit, `ms`, `s`, `m`, `h`
    /// or `d`.
    #[serde(default)]
    pub keep_for: Option<String>,
    /// Where the archives go.
    pub archive_dir: PathBuf,
    /// Time between runs (default `10m`).
    #[serde(default = "ten_minutes")]
    pub every: String,
}

fn ten_minutes() -> String {
    "10m".to_string()
}

impl RetentionConfig {
    /// The settings, checked.
    pub fn settings(&self) -> Result<RetentionSettings, ConfigError> {
        let keep_for = match &self.keep_for {
            None => None,
            Some(v) => Some(
                parse_duration(v)
                    .ok_or_else(|| ConfigError::BadDuration { field: "retention.keep_for", value: v.clone() })?,
            ),
        };
        let every = parse_duration(&self.every)
            .ok_or_else(|| ConfigError::BadDuration { field: "retention.every", value: self.every.clone() })?;
        let s = RetentionSettings {
            policy: RetentionPolicy { keep_events: self.keep_events, keep_for },
            archive_dir: self.archive_dir.clone(),
            every,
        };
        s.check()?;
        Ok(s)
    }
}

impl SporeSystem {
    /// Archives and prunes now what `policy` lets go, into `archive_dir` (see the module doc),
    /// then returns the freed bytes to the filesystem. `None` when there is nothing to prune yet.
    pub async fn prune_history(
        &self,
        policy: RetentionPolicy,
        archive_dir: impl AsRef<Path>,
    ) -> Result<Option<Archived>, Error> {
        let r = self.running()?;
        let (ledger, key, dir) = (r.ledger.clone(), r.key.clone(), archive_dir.as_ref().to_path_buf());
        let done = tokio::task::spawn_blocking(move || archive_and_prune(&ledger, &key, &dir, &policy))
            .await
            .map_err(|source| Error::Task { what: "archive and prune", source })??;
        if done.is_some() {
            let reclaimer = {
                use crate::store::ledger::LedgerLock;
                r.ledger.read_ledger()?.reclaimer()
            };
            tokio::task::spawn_blocking(move || reclaimer.run())
                .await
                .map_err(|source| Error::Task { what: "drop the pruned tables", source })??;
        }
        Ok(done)
    }
}

/// Spawns the retention task of the system behind `shared`.
pub(super) fn spawn(shared: Weak<Shared>, settings: RetentionSettings) -> tokio::task::JoinHandle<()> {
    tokio::spawn(run(shared, settings))
}

async fn run(shared: Weak<Shared>, settings: RetentionSettings) {
    loop {
        tokio::time::sleep(settings.every).await;
        let Some(strong) = shared.upgrade() else { return };
        let system = SporeSystem { shared: strong };
        if !matches!(system.head(), Ok(Some(_))) {
            continue;
        }
        match system.prune_history(settings.policy, &settings.archive_dir).await {
            Ok(None) => {}
            Ok(Some(a)) => tracing::info!(
                file = %a.file.display(),
                from = a.pruned.from,
                to = a.pruned.to,
                bytes = a.bytes,
                prune = ?a.pruned.took,
                "history archived and pruned"
            ),
            Err(e) => tracing::warn!(error = %e, dir = %settings.archive_dir.display(), "retention run failed"),
        }
    }
}
