//! Authority resolution: which of two chains of one network wins. Pure, deterministic, no I/O.
//!
//! Two chains of one network share a prefix and differ from a **fork sequence number** on.
//! Each side after the fork is a *branch*, summarised by [`summarize`] from the common prefix's
//! projection and the branch's own events — which it checks on the way: every link, every hash,
//! every signature and every rule, exactly as a replica would have. A branch that does not check
//! cannot be summarised and cannot win.
//!
//! [`resolve`] then picks the winner the same way on every node, from the two summaries only:
//!
//! 1. **Authority** of the branch at the fork ([`SporeType::authority`]): *Primary* when the
//!    branch holds a checkpoint at or after the fork signed by one of its authorities (a voter
//!    attests the fork event), *Seed* when a quorum-signed seed's head lies on the branch at or
//!    after the fork, *Latent* otherwise.
//! 2. **Activity**: distinct nodes of the branch's registry that are active and were heard from
//!    within [`ACTIVITY_WINDOW_MICROS`] of the branch head's timestamp.
//! 3. **Tie-break**: the branch whose event at the fork has the smaller chain hash.
//!
//! Summaries are computed from chain data only (never from a clock or from who asks), so every
//! node that holds the same two branches computes the same winner.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::event::{chain_hash, ChainedEvent, EventBody};
use super::keys::{verify_many, VerifierCache};
use super::projection::{NodeStatus, Projection};
use super::types::{ChainPoint, SporeType};

/// How far back from a branch head a node must have been heard from to count as active:
/// one hour (in microseconds of event time).
pub const ACTIVITY_WINDOW_MICROS: i64 = 3_600_000_000;

/// Longest branch after a fork that is resolved automatically; longer ones are reported and
/// left to the operator (`spore diff`).
pub const BRANCH_EVENTS_MAX: u64 = 65_536;

/// What decides between two branches.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BranchSummary {
    /// The first sequence number where the branches differ.
    pub fork_seq: u64,
    /// This branch's event at the fork.
    pub first: ChainPoint,
    /// This branch's head.
    pub head: ChainPoint,
    /// The branch's authority at the fork.
    pub tier: SporeType,
    /// Distinct active nodes within the activity window of the head.
    pub active_nodes: u32,
    /// Events after the common prefix.
    pub events: u64,
}

/// Which rule decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DecidedBy {
    /// One branch has higher authority at the fork.
    Authority,
    /// Same authority; one branch has more active nodes.
    Activity,
    /// Same authority and activity; the smaller hash at the fork wins.
    TieBreak,
}

impl std::fmt::Display for DecidedBy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DecidedBy::Authority => "authority",
            DecidedBy::Activity => "activity",
            DecidedBy::TieBreak => "tie-break",
        })
    }
}

/// The outcome of [`resolve`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resolution {
    /// The winning branch.
    pub winner: BranchSummary,
    /// The losing branch.
    pub loser: BranchSummary,
    /// The rule that decided.
    pub decided_by: DecidedBy,
}

/// Why a branch could not be summarised (it does not check, so it cannot win).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BranchError {
    /// The branch is empty: nothing after the common prefix.
    #[error("the branch has no event after the common prefix")]
    Empty,
    /// An event does not continue the previous one, or its hash is not its content's.
    #[error("branch event {seq}: broken link or bad hash")]
    BrokenLink {
        /// Where.
        seq: u64,
    },
    /// An event's signature does not verify.
    #[error("branch event {seq}: signature does not verify")]
    BadSignature {
        /// Where.
        seq: u64,
    },
    /// An event breaks the rules on this branch.
    #[error("branch event {seq}: {reason}")]
    Rejected {
        /// Where.
        seq: u64,
        /// The rule's reason.
        reason: String,
    },
    /// The two summaries are not of one fork (different fork points or the same branch).
    #[error("the two branches are not the two sides of one fork: {0}")]
    NotAFork(&'static str),
}

/// Checks `branch` (the events after the common prefix, in order) on top of `prefix` (the
/// projection of the common prefix) and summarises it. `seed` is the head of a quorum-verified
/// seed known to lie on this branch, if any. Returns the summary and the branch's projection.
///
/// Every link, hash, signature and rule is checked; the first failure is the error.
pub fn summarize(
    prefix: &Projection,
    branch: &[ChainedEvent],
    seed: Option<ChainPoint>,
) -> Result<(BranchSummary, Projection), BranchError> {
    let first = branch.first().ok_or(BranchError::Empty)?;
    let fork_seq = prefix.next_seq();
    // Links and hashes.
    let mut prev = prefix.head_hash();
    for (i, ev) in branch.iter().enumerate() {
        let seq = fork_seq + i as u64;
        if ev.seq != seq
            || ev.prev_hash != prev
            || chain_hash(&ev.prev_hash, ev.seq, &ev.event.canonical_bytes()) != ev.hash
        {
            return Err(BranchError::BrokenLink { seq });
        }
        prev = ev.hash;
    }
    // Signatures, batched.
    let messages: Vec<Vec<u8>> = branch.iter().map(|e| e.event.signing_message()).collect();
    let items: Vec<_> =
        branch.iter().zip(&messages).map(|(e, m)| (e.event.author, m.as_slice(), e.event.signature)).collect();
    let mut cache = VerifierCache::default();
    if let Some(i) = verify_many(&mut cache, &items).iter().position(|ok| !ok) {
        return Err(BranchError::BadSignature { seq: fork_seq + i as u64 });
    }
    // Rules.
    let mut p = prefix.clone();
    let mut checkpointed = false;
    for ev in branch {
        p.apply(ev).map_err(|r| BranchError::Rejected { seq: ev.seq, reason: r.to_string() })?;
        if let EventBody::Checkpoint { head_seq, .. } | EventBody::StateCheckpoint { head_seq, .. } = &ev.event.body {
            // Applied, so signed by an authority of this branch and attesting its head.
            if *head_seq >= fork_seq {
                checkpointed = true;
            }
        }
    }
    let last = branch.last().unwrap_or(first);
    let on_branch = |pt: ChainPoint| {
        pt.seq >= fork_seq && branch.get((pt.seq - fork_seq) as usize).is_some_and(|e| e.hash == pt.hash)
    };
    let tier = if checkpointed {
        SporeType::Primary
    } else if seed.is_some_and(on_branch) {
        SporeType::Seed
    } else {
        SporeType::Latent
    };
    let summary = BranchSummary {
        fork_seq,
        first: ChainPoint { seq: first.seq, hash: first.hash },
        head: ChainPoint { seq: last.seq, hash: last.hash },
        tier,
        active_nodes: active_nodes(&p),
        events: branch.len() as u64,
    };
    Ok((summary, p))
}

/// Distinct nodes of `p`'s registry that are active and were heard from within
/// [`ACTIVITY_WINDOW_MICROS`] of its head's timestamp.
pub fn active_nodes(p: &Projection) -> u32 {
    let Some(head) = p.head() else { return 0 };
    let since = head.timestamp.0.saturating_sub(ACTIVITY_WINDOW_MICROS);
    let active: BTreeSet<_> =
        p.nodes().filter(|n| n.status == NodeStatus::Active && n.last_activity.0 >= since).map(|n| n.node).collect();
    active.len() as u32
}

/// Picks the winner of two branches of one fork (see the module doc). Symmetric: the order
/// of the arguments does not matter.
pub fn resolve(a: &BranchSummary, b: &BranchSummary) -> Result<Resolution, BranchError> {
    if a.fork_seq != b.fork_seq {
        return Err(BranchError::NotAFork("different fork sequence numbers"));
    }
    if a.first.hash == b.first.hash {
        return Err(BranchError::NotAFork("both branches start with the same event"));
    }
    let (a_wins, decided_by) = if a.tier.authority() != b.tier.authority() {
        (a.tier.authority() > b.tier.authority(), DecidedBy::Authority)
    } else if a.active_nodes != b.active_nodes {
        (a.active_nodes > b.active_nodes, DecidedBy::Activity)
    } else {
        (a.first.hash.as_bytes() < b.first.hash.as_bytes(), DecidedBy::TieBreak)
    };
    let (winner, loser) = if a_wins { (a.clone(), b.clone()) } else { (b.clone(), a.clone()) };
    Ok(Resolution { winner, loser, decided_by })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::types::ChainHash;
    use proptest::prelude::*;

    fn h(b: u8) -> ChainHash {
        ChainHash([b; 32])
    }

    fn summary(tier: SporeType, active: u32, first: u8) -> BranchSummary {
        BranchSummary {
            fork_seq: 10,
            first: ChainPoint { seq: 10, hash: h(first) },
            head: ChainPoint { seq: 20, hash: h(first.wrapping_add(1)) },
            tier,
            active_nodes: active,
            events: 11,
        }
    }

    #[test]
    fn authority_then_activity_then_the_smaller_hash() {
        let r = resolve(&summary(SporeType::Latent, 50, 1), &summary(SporeType::Primary, 1, 9)).expect("a decision");
        assert_eq!((r.winner.tier, r.decided_by), (SporeType::Primary, DecidedBy::Authority));
        let r = resolve(&summary(SporeType::Seed, 2, 1), &summary(SporeType::Seed, 3, 9)).expect("a decision");
        assert_eq!((r.winner.active_nodes, r.decided_by), (3, DecidedBy::Activity));
        let r = resolve(&summary(SporeType::Primary, 3, 9), &summary(SporeType::Primary, 3, 1)).expect("a decision");
        assert_eq!((r.winner.first.hash, r.decided_by), (h(1), DecidedBy::TieBreak));
    }

    #[test]
    fn summaries_of_different_forks_are_refused() {
        let mut b = summary(SporeType::Primary, 1, 2);
        b.fork_seq = 11;
        assert!(resolve(&summary(SporeType::Primary, 1, 1), &b).is_err());
        assert!(resolve(&summary(SporeType::Primary, 1, 1), &summary(SporeType::Latent, 1, 1)).is_err());
    }

    fn tier() -> impl Strategy<Value = SporeType> {
        prop_oneof![Just(SporeType::Primary), Just(SporeType::Seed), Just(SporeType::Latent)]
    }

    proptest! {
        #[test]
        fn resolution_is_symmetric_and_total(t1 in tier(), t2 in tier(), a1 in 0u32..4, a2 in 0u32..4, f1: u8, f2: u8) {
            prop_assume!(f1 != f2);
            let (a, b) = (summary(t1, a1, f1), summary(t2, a2, f2));
            let ab = resolve(&a, &b).expect("a decision");
            let ba = resolve(&b, &a).expect("a decision");
            prop_assert_eq!(&ab, &ba);
            prop_assert!(ab.winner.tier.authority() >= ab.loser.tier.authority());
        }
    }
}
