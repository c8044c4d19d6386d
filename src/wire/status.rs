//! What a node reports about itself: [`SporeStatus`] and the parts it is made of.

use serde::{Deserialize, Serialize};

use crate::core::gossip::Anchors;
use crate::core::modes::OperationalMode;
use crate::core::projection::ChainHead;
use crate::core::types::{ChainPoint, NetworkFingerprint, NodeId, SporeType, Timestamp};

/// A snapshot of the node's state, from [`SporeSystem::status`](crate::SporeSystem::status).
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct SporeStatus {
    /// This node.
    pub node: NodeId,
    /// Its Raft address.
    pub addr: String,
    /// Its Raft state: `Leader`, `Follower`, `Candidate` or `Learner`.
    pub raft_state: String,
    /// The leader, if known.
    pub leader: Option<NodeId>,
    /// Current term.
    pub term: u64,
    /// Last applied Raft log index.
    pub last_applied: Option<u64>,
    /// The ledger head.
    pub head: Option<ChainHead>,
    /// The network.
    pub fingerprint: Option<NetworkFingerprint>,
    /// Voters of the Raft membership.
    pub voters: Vec<NodeId>,
    /// Learners of the Raft membership.
    pub learners: Vec<NodeId>,
    /// The operational mode.
    pub mode: OperationalMode,
    /// Since when (this node's clock).
    pub mode_since: Timestamp,
    /// Why the node entered this mode (`None` before its first transition).
    pub mode_reason: Option<String>,
    /// The tier of this node's head: the authority of its newest view.
    pub spore_type: SporeType,
    /// How far each tier reaches in this node's chain (see [`crate::node::tiers`]).
    #[serde(default)]
    pub reach: TierReach,
    /// Index of the last entry in this node's Raft log.
    pub last_log: Option<u64>,
    /// Every other member with its address and, as seen by the leader (only the leader
    /// knows), how far its log is behind the leader's.
    pub peers: Vec<PeerLag>,
    /// Whether this node is in the Raft membership (its chain is Primary); otherwise it keeps
    /// a latent view by gossip.
    pub raft_member: bool,
    /// The newest voter-signed checkpoint this node holds (everything up to it is Primary).
    pub anchor: Option<ChainPoint>,
    /// Forks seen and not yet settled (two chains of this network: fork evidence stored and no
    /// resolution recorded for it).
    pub forks: usize,
    /// Milliseconds since a gossip session last completed (`None`: never, or no gossip).
    pub last_gossip_ms: Option<u64>,
    /// Provisional events this node holds (written while cut off from the voters, not
    /// committed yet).
    pub provisional: usize,
    /// The first sequence number whose event this node holds: 0, or above it while the
    /// history below a state-only seed it started from is being backfilled by gossip.
    pub history_from: u64,
    /// A state divergence this node found: the chain attests a state its own records do not
    /// lead to. While it is set the node takes no writes (`SporeSystem::clear_state_divergence`).
    #[serde(default)]
    pub state_divergence: Option<crate::core::attest::StateDivergence>,
    /// On a leader: whether a majority of the voters acknowledged it within the longest
    /// election timeout. A leader cut off from the majority reports `Some(false)`: it is then
    /// no leader for the mode (Partition Recovery after the grace period) and its answers may
    /// be stale. `None` on a node that is not the leader.
    #[serde(default)]
    pub leader_confirmed: Option<bool>,
    /// Why this node halted (mode `Halted`): a storage error it cannot survive, such as a full
    /// disk. It takes no writes until restarted.
    #[serde(default)]
    pub halted: Option<String>,
    /// What the background scrub has checked, repaired and found damaged.
    #[serde(default)]
    pub scrub: ScrubStatus,
    /// Scheduled backups (`None`: this node has no backup policy).
    #[serde(default)]
    pub backup: Option<BackupStatus>,
}

/// A Raft member as `status()` reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct PeerLag {
    /// The member.
    pub node: NodeId,
    /// Its address.
    pub addr: String,
    /// Voter or learner.
    pub voter: bool,
    /// Entries the leader has that it has not acknowledged (`None` when this node is not
    /// the leader, or has not heard from it yet).
    pub lag: Option<u64>,
}

/// How far each tier reaches in this node's chain (sequence numbers; `None`: the tier has
/// nothing here).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TierReach {
    /// The newest event a voter attests (a Raft member: its head).
    pub primary: Option<u64>,
    /// The newest event a verified seed or a checkpoint covers.
    pub seed: Option<u64>,
    /// The head.
    pub latent: Option<u64>,
}

impl TierReach {
    /// From a chain's anchors and head.
    pub fn of(anchors: &Anchors, head: Option<ChainPoint>) -> TierReach {
        TierReach {
            primary: anchors.reach(SporeType::Primary, head),
            seed: anchors.reach(SporeType::Seed, head),
            latent: anchors.reach(SporeType::Latent, head),
        }
    }

    /// The reach of one tier.
    pub fn get(&self, tier: SporeType) -> Option<u64> {
        match tier {
            SporeType::Primary => self.primary,
            SporeType::Seed => self.seed,
            SporeType::Latent => self.latent,
        }
    }
}

/// What the scrub has done, for `status`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScrubStatus {
    /// Completed passes over the held history.
    pub passes: u64,
    /// Events checked since the node started.
    pub checked: u64,
    /// The next seq the scrub checks.
    pub cursor: u64,
    /// Records repaired from peers since the node started.
    pub repaired: u64,
    /// Damage found and not repaired yet (seq and what is wrong).
    pub damage: Option<String>,
}

/// Scheduled backups of a node (`SporeSystemBuilder::backups`): the policy and how its runs
/// went, for `status`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupStatus {
    /// The directory the seeds are written to.
    pub dir: String,
    /// Milliseconds between backups.
    pub interval_ms: u64,
    /// How many backups are kept (older ones are removed).
    pub keep: u64,
    /// Whether each backup carries every event from genesis (else the newest attested state
    /// and the events after it).
    pub events: bool,
    /// Backups written and verified since the node started.
    pub succeeded: u64,
    /// Backups that failed since the node started.
    pub failed: u64,
    /// The newest verified backup (after a restart, the newest one found in `dir`).
    pub last_success: Option<BackupSuccess>,
    /// The newest failure.
    pub last_failure: Option<BackupFailure>,
}

/// A backup written and verified.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupSuccess {
    /// When it was taken (the time in its file name).
    pub at: Timestamp,
    /// The seed file.
    pub path: String,
    /// The chain head it covers.
    pub head_seq: u64,
}

/// A backup that failed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupFailure {
    /// When.
    pub at: Timestamp,
    /// Why.
    pub error: String,
}
