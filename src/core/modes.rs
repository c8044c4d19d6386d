//! Operational modes: one explicit state machine, pure (time is passed in).
//!
//! ```text
//!                    chain formed / received, primary reachable
//!  NetworkFormation ─────────────────────────────────────────────▶ NormalOperation
//!                                                                    │        ▲
//!                                no leader / no primary for `grace`  │        │ primary reachable again
//!                                                                    ▼        │
//!                                                                  PartitionRecovery
//!
//!  any mode ── a second chain of this network seen (fork evidence) ──▶ SplitBrainResolution
//!  SplitBrainResolution ── every fork resolved ──▶ NormalOperation / PartitionRecovery
//! ```
//!
//! The node feeds what it observes ([`ModeInputs`]) into [`ModeMachine::observe`]; every
//! change of mode is returned as a [`Transition`] with its reason, and the machine keeps the
//! latest [`TRANSITIONS_KEPT`] of them. Leaving Normal Operation for Partition Recovery waits
//! for the condition to last [`ModeConfig::partition_grace_micros`], so a leader election does
//! not look like a partition; every other transition is immediate.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use super::types::{NodeId, Timestamp};

/// Transitions kept in memory by a [`ModeMachine`].
pub const TRANSITIONS_KEPT: usize = 64;

/// The operational mode of a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum OperationalMode {
    /// No chain yet: the network is being formed or this node has not received it.
    NetworkFormation,
    /// The primary is reachable and the chain is being extended.
    NormalOperation,
    /// No primary reachable: queries are answered from the local (latent) view, writes are
    /// held as provisional events until the primary is back.
    PartitionRecovery,
    /// Two chains of this network were seen; one winner is being chosen and the other branch
    /// folded into it.
    SplitBrainResolution,
    /// A storage error this node cannot survive (a full disk, a failed sync) stopped its Raft:
    /// it takes no writes and serves what it holds until it is restarted. Final.
    Halted,
}

impl std::fmt::Display for OperationalMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            OperationalMode::NetworkFormation => "network formation",
            OperationalMode::NormalOperation => "normal operation",
            OperationalMode::PartitionRecovery => "partition recovery",
            OperationalMode::SplitBrainResolution => "split-brain resolution",
            OperationalMode::Halted => "halted",
        })
    }
}

/// What a node observes, fed to [`ModeMachine::observe`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ModeInputs {
    /// The node holds a chain (at least the genesis).
    pub has_chain: bool,
    /// The node is in the Raft membership.
    pub raft_member: bool,
    /// The leader, if one is known (members).
    pub leader: Option<NodeId>,
    /// A primary (Raft member) was heard from recently by gossip (nodes outside the membership).
    pub primary_reachable: bool,
    /// Forks seen and not yet resolved.
    pub unresolved_forks: usize,
    /// Why the node halted, if a storage error it cannot survive stopped it.
    pub halted: Option<String>,
}

impl ModeInputs {
    fn connected(&self) -> bool {
        self.leader.is_some() || (!self.raft_member && self.primary_reachable)
    }
}

/// Tuning.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModeConfig {
    /// How long the primary must be out of reach before Normal Operation becomes Partition
    /// Recovery (microseconds).
    pub partition_grace_micros: i64,
}

impl Default for ModeConfig {
    fn default() -> Self {
        ModeConfig { partition_grace_micros: 3_000_000 }
    }
}

/// One change of mode, with why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transition {
    /// The mode left.
    pub from: OperationalMode,
    /// The mode entered.
    pub to: OperationalMode,
    /// When (the node's clock, passed in).
    pub at: Timestamp,
    /// Why, for the operator.
    pub reason: String,
}

/// The mode state machine (see the module doc).
#[derive(Clone, Debug)]
pub struct ModeMachine {
    cfg: ModeConfig,
    mode: OperationalMode,
    since: Timestamp,
    /// Out of reach since this time (while in Normal Operation).
    unreachable_since: Option<Timestamp>,
    history: VecDeque<Transition>,
}

impl ModeMachine {
    /// A machine in Network Formation from `now`.
    pub fn new(cfg: ModeConfig, now: Timestamp) -> Self {
        ModeMachine {
            cfg,
            mode: OperationalMode::NetworkFormation,
            since: now,
            unreachable_since: None,
            history: VecDeque::new(),
        }
    }

    /// The current mode.
    pub fn mode(&self) -> OperationalMode {
        self.mode
    }

    /// Since when.
    pub fn since(&self) -> Timestamp {
        self.since
    }

    /// The latest transitions, oldest first (at most [`TRANSITIONS_KEPT`]).
    pub fn history(&self) -> impl Iterator<Item = &Transition> {
        self.history.iter()
    }

    /// The latest transition, if any.
    pub fn last(&self) -> Option<&Transition> {
        self.history.back()
    }

    /// Feeds what the node observes at `now`; returns the transition if the mode changed.
    pub fn observe(&mut self, inputs: &ModeInputs, now: Timestamp) -> Option<Transition> {
        use OperationalMode::*;
        if self.mode == Halted {
            return None;
        }
        let (to, reason) = if let Some(why) = &inputs.halted {
            (Halted, format!("halted: {why}"))
        } else if inputs.unresolved_forks > 0 {
            (
                SplitBrainResolution,
                format!("{} unresolved fork(s): a second chain of this network was seen", inputs.unresolved_forks),
            )
        } else if !inputs.has_chain {
            (NetworkFormation, "no chain yet: waiting for the genesis or a peer's chain".to_string())
        } else if inputs.connected() {
            let via = match inputs.leader {
                Some(l) => format!("leader {}", l.short()),
                None => "a primary node heard from by gossip".to_string(),
            };
            let reason = match self.mode {
                NetworkFormation => format!("chain formed or received; {via}"),
                PartitionRecovery => format!("primary reachable again ({via})"),
                SplitBrainResolution => format!("every fork resolved; {via}"),
                NormalOperation | Halted => String::new(),
            };
            (NormalOperation, reason)
        } else {
            let why = if inputs.raft_member { "no leader known" } else { "no primary node heard from recently" };
            if self.mode == NormalOperation {
                let since = *self.unreachable_since.get_or_insert(now);
                if now.0.saturating_sub(since.0) < self.cfg.partition_grace_micros {
                    return None;
                }
                let secs = (now.0 - since.0) as f64 / 1e6;
                (PartitionRecovery, format!("{why} for {secs:.1} s"))
            } else {
                (PartitionRecovery, why.to_string())
            }
        };
        if to != PartitionRecovery {
            self.unreachable_since = None;
        }
        if to == self.mode {
            return None;
        }
        let t = Transition { from: self.mode, to, at: now, reason };
        self.mode = to;
        self.since = now;
        self.unreachable_since = None;
        if self.history.len() == TRANSITIONS_KEPT {
            self.history.pop_front();
        }
        self.history.push_back(t.clone());
        Some(t)
    }
}

#[cfg(test)]
mod tests {
    use super::OperationalMode::*;
    use super::*;

    fn at(secs: i64) -> Timestamp {
        Timestamp(secs * 1_000_000)
    }

    fn member(leader: bool) -> ModeInputs {
        ModeInputs {
            has_chain: true,
            raft_member: true,
            leader: leader.then_some(NodeId([7; 32])),
            ..Default::default()
        }
    }

    #[test]
    fn formation_normal_partition_and_back_with_reasons() {
        let mut m = ModeMachine::new(ModeConfig::default(), at(0));
        assert_eq!(m.observe(&ModeInputs::default(), at(1)), None, "formation stays formation");
        let t = m.observe(&member(true), at(2)).expect("a transition");
        assert_eq!((t.from, t.to), (NetworkFormation, NormalOperation));
        assert!(t.reason.contains("leader"), "{}", t.reason);
        // An election: no leader for less than the grace is not a partition.
        assert_eq!(m.observe(&member(false), at(3)), None);
        assert_eq!(m.observe(&member(true), at(4)), None);
        assert_eq!(m.observe(&member(false), at(5)), None);
        let t = m.observe(&member(false), at(9)).expect("a transition");
        assert_eq!((t.from, t.to), (NormalOperation, PartitionRecovery));
        assert!(t.reason.contains("no leader known for 4.0 s"), "{}", t.reason);
        let t = m.observe(&member(true), at(10)).expect("a transition");
        assert_eq!(t.to, NormalOperation);
        assert!(t.reason.contains("reachable again"), "{}", t.reason);
        assert_eq!(m.history().count(), 3);
    }

    #[test]
    fn a_fork_overrides_everything_until_resolved() {
        let mut m = ModeMachine::new(ModeConfig::default(), at(0));
        m.observe(&member(true), at(1));
        let forked = ModeInputs { unresolved_forks: 1, ..member(true) };
        assert_eq!(m.observe(&forked, at(2)).expect("a transition").to, SplitBrainResolution);
        assert_eq!(m.observe(&ModeInputs { unresolved_forks: 1, ..member(false) }, at(30)), None);
        let t = m.observe(&member(true), at(31)).expect("a transition");
        assert_eq!((t.from, t.to), (SplitBrainResolution, NormalOperation));
        assert!(t.reason.contains("resolved"));
    }

    #[test]
    fn a_latent_node_is_normal_while_it_hears_a_primary() {
        let mut m = ModeMachine::new(ModeConfig::default(), at(0));
        let latent = |reachable| ModeInputs { has_chain: true, primary_reachable: reachable, ..Default::default() };
        assert_eq!(m.observe(&latent(false), at(1)).expect("a transition").to, PartitionRecovery);
        assert_eq!(m.observe(&latent(true), at(2)).expect("a transition").to, NormalOperation);
        assert_eq!(m.observe(&latent(false), at(3)), None);
        assert!(m.observe(&latent(false), at(6)).expect("a transition").reason.contains("no primary node heard"));
    }

    fn at_micros(micros: i64) -> Timestamp {
        Timestamp(micros)
    }

    /// A voter's life on a simulated clock, with the grace period checked to the microsecond:
    /// an outage shorter than the grace is an election, not a partition, however often it
    /// recurs; a longer one is a partition from exactly the grace on; a fork overrides both;
    /// a halt is final.
    #[test]
    fn a_voter_moves_through_every_mode_at_the_simulated_times() {
        let grace = ModeConfig::default().partition_grace_micros;
        let mut m = ModeMachine::new(ModeConfig::default(), at(0));
        assert_eq!((m.mode(), m.since()), (NetworkFormation, at(0)));
        // Started, no chain and no leader yet: still forming, however long it takes.
        assert_eq!(m.observe(&ModeInputs { raft_member: true, ..Default::default() }, at(60)), None);
        assert_eq!(m.observe(&member(true), at(61)).map(|t| t.to), Some(NormalOperation));
        assert_eq!(m.since(), at(61));

        // Elections: the leader is gone for just under the grace, twice in a row.
        for start in [at(70), at(80)] {
            assert_eq!(m.observe(&member(false), start), None);
            assert_eq!(m.observe(&member(false), at_micros(start.0 + grace - 1)), None, "within the grace");
            assert_eq!(m.observe(&member(true), at_micros(start.0 + grace - 1)), None, "a new leader in time");
        }
        assert_eq!(m.mode(), NormalOperation);

        // A partition: the leader is gone for the whole grace, to the microsecond.
        let lost = at(100);
        assert_eq!(m.observe(&member(false), lost), None);
        assert_eq!(m.observe(&member(false), at_micros(lost.0 + grace - 1)), None);
        let t = m.observe(&member(false), at_micros(lost.0 + grace)).expect("a partition at the grace");
        assert_eq!((t.from, t.to, t.at), (NormalOperation, PartitionRecovery, at_micros(lost.0 + grace)));
        assert!(t.reason.contains("no leader known for 3.0 s"), "{}", t.reason);
        // Staying cut off is no new transition.
        assert_eq!(m.observe(&member(false), at(200)), None);

        // A fork seen while cut off: split-brain resolution at once, whatever else holds.
        let forked = |leader| ModeInputs { unresolved_forks: 2, ..member(leader) };
        let t = m.observe(&forked(false), at(201)).expect("a fork is immediate");
        assert_eq!((t.from, t.to), (PartitionRecovery, SplitBrainResolution));
        assert!(t.reason.starts_with("2 unresolved fork(s)"), "{}", t.reason);
        assert_eq!(m.observe(&forked(true), at(202)), None);
        // Resolved while no leader is known: straight to partition recovery, no grace.
        let t = m.observe(&member(false), at(203)).expect("resolved");
        assert_eq!((t.from, t.to), (SplitBrainResolution, PartitionRecovery));
        assert_eq!(m.observe(&member(true), at(204)).map(|t| t.to), Some(NormalOperation));

        // A clock that steps back (NTP) neither panics nor counts as an outage.
        assert_eq!(m.observe(&member(false), at(300)), None);
        assert_eq!(m.observe(&member(false), at(250)), None);
        assert_eq!(m.mode(), NormalOperation);

        // Halted: final, whatever comes after.
        let halted = ModeInputs { halted: Some("No space left on device".into()), ..member(true) };
        let t = m.observe(&halted, at(400)).expect("halted");
        assert_eq!((t.from, t.to), (NormalOperation, Halted));
        assert!(t.reason.contains("No space left"), "{}", t.reason);
        assert_eq!(m.observe(&member(true), at(500)), None);
        assert_eq!(m.observe(&forked(true), at(501)), None);
        assert_eq!((m.mode(), m.since()), (Halted, at(400)));
        let path: Vec<_> = m.history().map(|t| (t.to, t.at)).collect();
        assert_eq!(
            path,
            vec![
                (NormalOperation, at(61)),
                (PartitionRecovery, at_micros(lost.0 + grace)),
                (SplitBrainResolution, at(201)),
                (PartitionRecovery, at(203)),
                (NormalOperation, at(204)),
                (Halted, at(400)),
            ]
        );
    }

    /// A latent node is connected while it hears a primary by gossip; a member is connected
    /// only through its leader (hearing a primary by gossip does not count for it).
    #[test]
    fn a_member_without_a_leader_is_not_rescued_by_gossip() {
        let mut m = ModeMachine::new(ModeConfig::default(), at(0));
        m.observe(&member(true), at(1));
        let gossiping = ModeInputs { primary_reachable: true, ..member(false) };
        assert_eq!(m.observe(&gossiping, at(2)), None);
        let t = m.observe(&gossiping, at(5)).expect("partition after the grace");
        assert_eq!(t.to, PartitionRecovery);
        assert!(t.reason.contains("no leader known"), "{}", t.reason);
    }

    #[test]
    fn history_is_bounded() {
        let mut m = ModeMachine::new(ModeConfig { partition_grace_micros: 0 }, at(0));
        for i in 0..200 {
            m.observe(&member(i % 2 == 0), at(i));
        }
        assert_eq!(m.history().count(), TRANSITIONS_KEPT);
        assert_eq!(m.last().map(|t| t.at), Some(at(199)));
    }
}
