//! The node's own upkeep, so an embedder runs no loop of its own: every
//! [`UPKEEP_INTERVAL`] it keeps the QUIC admission set in step with the registry, yields to
//! the winner of a lost split-brain under the [`YieldPolicy`], and reports what it did or
//! found as [`NodeEvent`]s ([`SporeSystem::events`]).
//!
//! The task belongs to the [`SporeSystem`], not to one running instance of it: yielding
//! restarts the node, and the task that asked for it lives on. It holds the system weakly and
//! ends with its last handle.

use openraft::async_runtime::WatchReceiver;
use std::path::PathBuf;
use std::sync::Weak;
use std::time::Duration;

use tokio::sync::broadcast;

use super::resolve::YieldPlan;
use super::{Shared, SporeSystem};

/// How often the upkeep runs.
pub const UPKEEP_INTERVAL: Duration = Duration::from_millis(250);

/// How many [`NodeEvent`]s a slow receiver may fall behind before it misses some.
const EVENTS_BUFFERED: usize = 64;

/// What a node does when its chain lost a split-brain and the winner recorded the resolution
/// (`schema/split-brain.md`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum YieldPolicy {
    /// Yield at once, by itself ([`SporeSystem::yield_to_winner`]), retrying at every tick
    /// until it succeeds. The default: a losing side heals without an operator.
    #[default]
    Automatic,
    /// Report [`NodeEvent::YieldPending`] and wait for the embedder to call
    /// [`SporeSystem::yield_to_winner`] (an operator who wants to look at the losing chain
    /// first).
    Manual,
}

/// Something a node did or found by itself.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum NodeEvent {
    /// This node's chain lost a split-brain. Under [`YieldPolicy::Manual`] the node waits for
    /// [`SporeSystem::yield_to_winner`]; under [`YieldPolicy::Automatic`] it yields next.
    YieldPending(Box<YieldPlan>),
    /// It yielded: the losing chain is kept (the seed file's path), and it joined the winner.
    Yielded {
        /// The exported seed of the losing chain (its ledger is kept beside it).
        seed: PathBuf,
    },
    /// A yield failed; under [`YieldPolicy::Automatic`] it is tried again at the next tick.
    YieldFailed {
        /// Why.
        error: String,
    },
    /// A storage error the node cannot survive halted it (a full disk, a failed sync): it
    /// takes no writes until restarted once the cause is fixed.
    Halted {
        /// The cause.
        reason: String,
    },
}

/// The sending side of a system's events.
pub(super) fn channel() -> broadcast::Sender<NodeEvent> {
    broadcast::channel(EVENTS_BUFFERED).0
}

/// Spawns the upkeep of the system behind `shared`.
pub(super) fn spawn(shared: Weak<Shared>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(boxed(shared))
}

/// [`run`] behind a box: it yields, which starts the node again, which spawns the upkeep — a
/// cycle the compiler cannot see through without a named, `Send` future type.
fn boxed(shared: Weak<Shared>) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
    Box::pin(run(shared))
}

/// Runs the upkeep of the system behind `shared` until its last handle is dropped.
async fn run(shared: Weak<Shared>) {
    let mut tick = tokio::time::interval(UPKEEP_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // What was reported already, so each finding is reported once.
    let mut reported_plan = None;
    let mut reported_halt = false;
    loop {
        tick.tick().await;
        let Some(shared) = shared.upgrade() else { return };
        let system = SporeSystem { shared };
        let Ok(running) = system.running() else { continue };
        if let Some(admission) = &running.admission {
            admission.refresh();
        }
        let halted = super::status::halted_reason(&running.raft.metrics().borrow_watched(), &running.health)
            .map(|h| h.to_string());
        drop(running);
        if let Some(reason) = halted {
            if !reported_halt {
                tracing::error!(%reason, "this node halted; restart it once the cause is fixed");
                let _ = system.shared.events.send(NodeEvent::Halted { reason });
                reported_halt = true;
            }
            continue;
        }
        let plan = match system.yield_plan() {
            Ok(Some(plan)) => plan,
            _ => continue,
        };
        let key = (plan.resolution.loser.fork_seq, plan.resolution.loser.first.hash);
        if reported_plan != Some(key) {
            tracing::warn!(winner = %plan.winner_node.node.short(), "this node's chain lost a split-brain");
            let _ = system.shared.events.send(NodeEvent::YieldPending(Box::new(plan)));
            reported_plan = Some(key);
        }
        if system.shared.yield_policy != YieldPolicy::Automatic {
            continue;
        }
        match system.yield_to_winner().await {
            Ok(seed) => {
                tracing::warn!(kept = %seed.display(), "yielded to the split-brain winner");
                let _ = system.shared.events.send(NodeEvent::Yielded { seed });
                reported_plan = None;
            }
            // A caller's own yield came first (the policy does not forbid one).
            Err(crate::error::Error::SplitBrain(super::SplitBrainError::NothingToYield)) => reported_plan = None,
            Err(e) => {
                tracing::error!(error = %e, "could not yield to the split-brain winner; retrying");
                let _ = system.shared.events.send(NodeEvent::YieldFailed { error: e.to_string() });
            }
        }
    }
}
