//! Write-path metrics of one ledger database, recorded as they happen: how long each durable
//! ledger batch and each Raft log sync took, and how many events were appended. The node's
//! `/metrics` registers them at every scrape (`node/metrics.rs`); everything else it reports is
//! read at scrape time.
//!
//! One observation is a lock-free-in-practice histogram update (an uncontended mutex of
//! `prometheus-client`) and a few atomics, next to a write that costs tens of microseconds or
//! more; `LedgerConfig::metrics = false` records nothing (the bench's "off").

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

/// The write-path metrics of one ledger database (cheap to clone: shared).
#[derive(Clone, Debug, Default)]
pub struct WriteMetrics {
    inner: Option<Arc<Inner>>,
}

#[derive(Debug)]
struct Inner {
    ledger_write: Histogram,
    raft_log_sync: Histogram,
    events_appended: Counter,
}

/// 50 µs to about 1.6 s, doubling.
fn buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
}

impl WriteMetrics {
    /// Recording metrics, or (`enabled = false`) recording nothing.
    pub fn new(enabled: bool) -> Self {
        let inner = enabled.then(|| {
            Arc::new(Inner { ledger_write: buckets(), raft_log_sync: buckets(), events_appended: Counter::default() })
        });
        WriteMetrics { inner }
    }

    /// A ledger batch of `events` events was written in `took`.
    pub fn ledger_write(&self, took: Duration, events: usize) {
        if let Some(m) = &self.inner {
            m.ledger_write.observe(took.as_secs_f64());
            m.events_appended.inc_by(events as u64);
        }
    }

    /// A sync of the Raft log took `took`.
    pub fn raft_log_sync(&self, took: Duration) {
        if let Some(m) = &self.inner {
            m.raft_log_sync.observe(took.as_secs_f64());
        }
    }

    /// Registers these metrics (shared, not copied) in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        let Some(m) = &self.inner else { return };
        registry.register_with_unit(
            "ledger_write",
            "Durable ledger batch writes (events appended in one atomic batch)",
            Unit::Seconds,
            m.ledger_write.clone(),
        );
        registry.register_with_unit(
            "raft_log_sync",
            "Syncs of the Raft log (each may cover several appends)",
            Unit::Seconds,
            m.raft_log_sync.clone(),
        );
        registry.register("ledger_events_appended", "Events appended to the ledger", m.events_appended.clone());
    }
}
