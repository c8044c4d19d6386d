//! Status: what a node reports about itself ([`SporeStatus`]), its health, and the
//! operational-mode machine its observations feed.

use openraft::async_runtime::WatchReceiver;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use super::SporeSystem;
use crate::core::modes::{ModeInputs, ModeMachine};
use crate::core::sync;
use crate::core::types::{NodeId, SporeType, Timestamp};
use crate::error::Error;
use crate::net::gossip::GossipService;
use crate::raft::state_machine::SharedLedger;
use crate::raft::{ChainPoint, Raft};
use crate::store::ledger::{LedgerHealth, LedgerLock};
use crate::wire::rpc::PeerNode;
use crate::wire::status::{PeerLag, SporeStatus, TierReach};
use openraft::ServerState;

pub use crate::core::modes::OperationalMode;

impl SporeSystem {
    /// Role, leader, term, head and mode.
    pub fn status(&self) -> Result<SporeStatus, Error> {
        let r = self.running()?;
        let mut st = compute_status(&r.raft, &r.ledger, &r.me, r.gossip.as_deref(), &r.modes)?;
        st.scrub = sync::lock(&r.scrub).clone();
        st.backup = self.shared.backups.report();
        Ok(st)
    }

    /// Overwrites the stored bytes of record `seq` in this node's ledger, as a failing disk
    /// would. For fault tests only.
    #[doc(hidden)]
    pub fn damage_record_for_tests(&self, seq: u64, bytes: &[u8]) -> Result<(), Error> {
        let r = self.running()?;
        let mut l = r.ledger.write_ledger()?;
        Ok(l.damage_record_for_tests(seq, bytes)?)
    }

    /// An operator's acknowledgement of a state divergence ([`SporeStatus::state_divergence`])
    /// after investigating it: the node takes writes again. Returns the divergence cleared.
    pub fn clear_state_divergence(&self) -> Result<Option<crate::core::attest::StateDivergence>, Error> {
        let r = self.running()?;
        let mut l = r.ledger.write_ledger()?;
        let d = l.divergence();
        l.clear_divergence();
        Ok(d)
    }

    /// The operational-mode transitions this node went through, oldest first, each with its
    /// time and reason (the newest [`MODES_KEPT`](crate::store::modes::MODES_KEPT), kept
    /// across restarts).
    pub fn mode_history(&self) -> Result<Vec<crate::core::modes::Transition>, Error> {
        let r = self.running()?;
        let l = r.ledger.read_ledger()?;
        Ok(crate::store::modes::list(&l)?)
    }
}

/// Re-evaluates the operational mode twice a second, so every transition is logged and kept
/// when it happens, not only when somebody asks for the status.
pub(super) fn spawn_mode_task(
    raft: Raft,
    ledger: SharedLedger,
    me: PeerNode,
    gossip: Option<Arc<GossipService>>,
    modes: SharedModes,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let (raft, ledger, me, gossip, modes) =
                (raft.clone(), ledger.clone(), me.clone(), gossip.clone(), modes.clone());
            // Reads fjall: off the async workers.
            let _ = tokio::task::spawn_blocking(move || compute_status(&raft, &ledger, &me, gossip.as_deref(), &modes))
                .await;
        }
    })
}

/// The node's mode state machine, shared by `status`, the RPC status and the mode task.
pub(crate) type SharedModes = Arc<std::sync::Mutex<ModeMachine>>;

/// Feeds `inputs` to the mode machine; a transition is logged (with its reason) and kept in
/// the ledger's `modes` keyspace. Returns the mode, since when, and why.
fn observe_mode(
    modes: &SharedModes,
    ledger: &SharedLedger,
    inputs: &ModeInputs,
) -> (OperationalMode, Timestamp, Option<String>) {
    let Ok(mut m) = modes.lock() else {
        return (OperationalMode::NetworkFormation, Timestamp::now(), Some("mode state poisoned".into()));
    };
    if let Some(t) = m.observe(inputs, Timestamp::now()) {
        match t.to {
            OperationalMode::NormalOperation | OperationalMode::NetworkFormation => {
                tracing::info!(from = %t.from, to = %t.to, reason = %t.reason, "operational mode changed")
            }
            _ => tracing::warn!(from = %t.from, to = %t.to, reason = %t.reason, "operational mode changed"),
        }
        if let Ok(l) = ledger.read() {
            if let Err(e) = crate::store::modes::record(&l, &t) {
                tracing::warn!(error = %e, "could not keep the mode transition");
            }
        }
    }
    (m.mode(), m.since(), m.last().map(|t| t.reason.clone()))
}

pub(crate) fn compute_status(
    raft: &Raft,
    ledger: &SharedLedger,
    me: &PeerNode,
    gossip: Option<&GossipService>,
    modes: &SharedModes,
) -> Result<SporeStatus, Error> {
    let m = raft.metrics().borrow_watched().clone();
    let (head, fingerprint, anchor, seed_anchor, forks, provisional, history_from, state_divergence) = {
        let l = ledger.read_ledger()?;
        let forks = crate::forensics::forks::unresolved(&l).map(|f| f.len()).unwrap_or(0);
        let provisional = crate::store::provisional::count(&l).unwrap_or(0);
        (
            l.head(),
            l.fingerprint(),
            l.anchor(),
            l.seed_anchor().ok().flatten(),
            forks,
            provisional,
            l.history_from(),
            l.divergence(),
        )
    };
    let members = m.membership_config.membership();
    let by_id: BTreeMap<u64, NodeId> = members.nodes().map(|(id, n)| (*id, n.node)).collect();
    let voters: Vec<NodeId> = members.voter_ids().filter_map(|id| by_id.get(&id).copied()).collect();
    let learners: Vec<NodeId> = members.learner_ids().filter_map(|id| by_id.get(&id).copied()).collect();
    let leader_confirmed = (m.state == ServerState::Leader).then(|| leader_is_confirmed(raft, &m));
    // A leader cut off from the majority does not count as one.
    let leader = m.current_leader.and_then(|id| by_id.get(&id).copied()).filter(|_| leader_confirmed != Some(false));
    let last_log = m.last_log_index;
    let voter_ids: std::collections::BTreeSet<u64> = members.voter_ids().collect();
    let peers: Vec<PeerLag> = members
        .nodes()
        .filter(|(_, n)| n.node != me.node)
        .map(|(id, n)| {
            let matched = m.replication.as_ref().and_then(|r| r.get(id).cloned());
            let lag = matched.map(|mi| last_log.unwrap_or(0).saturating_sub(mi.map_or(0, |l| l.index)));
            PeerLag { node: n.node, addr: n.addr.clone(), voter: voter_ids.contains(id), lag }
        })
        .collect();
    let raft_member = by_id.values().any(|n| *n == me.node);
    let health = ledger.read_ledger()?.health();
    let halted = halted_reason(&m, &health).map(|h| h.to_string());
    let inputs = ModeInputs {
        halted: halted.clone(),
        has_chain: head.is_some(),
        raft_member,
        leader,
        primary_reachable: gossip.is_some_and(|g| g.primary_reachable()),
        unresolved_forks: forks,
    };
    let (mode, mode_since, mode_reason) = observe_mode(modes, ledger, &inputs);
    let point = head.map(|h| ChainPoint { seq: h.seq, hash: h.hash });
    let tiers = crate::core::gossip::Anchors { checkpoint: anchor, seed: seed_anchor, raft_member };
    let spore_type = tiers.head_tier(point).unwrap_or(if raft_member { SporeType::Primary } else { SporeType::Latent });
    let reach = TierReach::of(&tiers, point);
    let raft_state = match m.state {
        ServerState::Leader => "Leader",
        ServerState::Follower => "Follower",
        ServerState::Candidate => "Candidate",
        ServerState::Learner => "Learner",
        ServerState::Shutdown => "Shutdown",
    };
    Ok(SporeStatus {
        node: me.node,
        addr: me.addr.clone(),
        raft_state: raft_state.to_string(),
        leader,
        term: m.current_term,
        last_applied: m.last_applied.map(|l| l.index),
        head,
        fingerprint,
        voters,
        learners,
        mode,
        mode_since,
        mode_reason,
        spore_type,
        reach,
        last_log,
        peers,
        raft_member,
        anchor,
        forks,
        last_gossip_ms: gossip.and_then(|g| g.last_sync_age()).map(|a| a.as_millis() as u64),
        provisional,
        history_from,
        state_divergence,
        leader_confirmed,
        halted,
        scrub: Default::default(),
        backup: None,
    })
}

/// Why a node halted ([`Error::Halted`], and in words [`SporeStatus::halted`]).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HaltCause {
    /// Raft stopped: openraft's core stops on a storage error (or a panic).
    #[error("Raft stopped: {0}")]
    RaftStopped(Box<openraft::error::Fatal<crate::raft::TypeConfig>>),
    /// A durable ledger write failed and poisoned the ledger: it takes no more writes.
    #[error("ledger write failed: {0}")]
    LedgerWriteFailed(
        /// The failed write's error, in words (the ledger's health keeps only its text).
        String,
    ),
}

/// Why this node halted, if a storage error it cannot survive stopped its Raft (openraft's
/// core stops on a storage error) or poisoned its ledger (a failed durable write).
pub(super) fn halted_reason(m: &crate::raft::RaftMetrics, health: &LedgerHealth) -> Option<HaltCause> {
    if let Err(fatal) = &m.running_state {
        return Some(HaltCause::RaftStopped(Box::new(fatal.clone())));
    }
    health.poisoned_by().map(HaltCause::LedgerWriteFailed)
}

/// Whether this leader heard a majority of its voters within the longest election timeout
/// (a leader of a single voter is always confirmed). openraft refreshes
/// `millis_since_quorum_ack` at every turn of its core loop, ticks included.
pub(super) fn leader_is_confirmed(raft: &Raft, m: &crate::raft::RaftMetrics) -> bool {
    if m.membership_config.membership().voter_ids().count() <= 1 {
        return true;
    }
    let limit = raft.config().election_timeout_max;
    crate::raft::millis_since_quorum_ack(m).is_some_and(|ms| ms <= limit)
}
