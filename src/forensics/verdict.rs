//! Which of two diverged branches a split-brain resolution would keep, decided from the chain
//! data only, as every node decides it.

use serde::Serialize;

use super::branch::{Branch, Inner};
use super::diff::{events_after, Relation, Side};
use super::ForensicsError;
use crate::core::authority::{resolve, summarize, BranchSummary, DecidedBy};
use crate::store::replay::StopAt;

/// One branch that cannot win a resolution, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Refusal {
    /// Which branch.
    pub side: Side,
    /// The check it fails (link, hash, signature or rule, with the seq).
    pub reason: String,
}

/// What a split-brain resolution would decide between two diverged branches, computed from
/// the chain data only, as every node computes it (see [`crate::core::authority`]). A seed
/// file's head gives its branch Seed authority only when a majority of the voters at that
/// head signed it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Verdict {
    /// Both branches check; one wins.
    Wins {
        /// The branch kept.
        winner: Side,
        /// The rule that decided.
        decided_by: DecidedBy,
        /// A's summary after the fork.
        a: BranchSummary,
        /// B's summary after the fork.
        b: BranchSummary,
    },
    /// These branches do not check, so they cannot win (if only one is listed, the other
    /// would be kept).
    CannotWin {
        /// The failing branches.
        refused: Vec<Refusal>,
    },
    /// Nothing to decide, or not decidable from these sources.
    Undecided {
        /// Why.
        reason: String,
    },
}

/// Longest branch after the fork [`verdict`] reads (the automatic resolver's limit too).
pub const VERDICT_EVENTS_MAX: u64 = crate::core::authority::BRANCH_EVENTS_MAX;

/// Which of two branches a split-brain resolution would keep (see [`Verdict`]): replays the
/// common prefix, reads each branch after the fork and checks and summarises both with
/// [`summarize`], then [`resolve`]s.
#[tracing::instrument(level = "debug", skip_all, fields(a = %a.info.path.display(), b = %b.info.path.display()))]
pub fn verdict(a: &Branch, b: &Branch, relation: &Relation) -> Result<Verdict, ForensicsError> {
    let undecided = |reason: &str| Ok(Verdict::Undecided { reason: reason.to_string() });
    let common = match relation {
        Relation::Diverged { last_common: Some(c), .. } => *c,
        Relation::Diverged { last_common: None, .. } => {
            return undecided("the chains share no genesis: two networks, not a split-brain")
        }
        Relation::Identical { .. } => return undecided("identical: nothing to resolve"),
        Relation::Prefix { .. } => return undecided("one chain extends the other: no fork to resolve"),
        Relation::Unresolved { .. } => {
            return undecided("the fork point is not known: a seed without events does not carry its branch")
        }
    };
    if !a.has_events() || !b.has_events() {
        return undecided("a seed without events does not carry its branch");
    }
    if [a, b].iter().any(|br| br.head().seq - common.seq > VERDICT_EVENTS_MAX) {
        return undecided("a branch is longer than a resolution reads");
    }
    let prefix = a.projection(StopAt::Seq(common.seq), &|_| {})?;
    let seed_head = |br: &Branch| match &br.inner {
        Inner::Seed(s) if s.is_quorum_signed() => Some(br.head()),
        _ => None,
    };
    let summary = |br: &Branch| -> Result<Result<BranchSummary, String>, ForensicsError> {
        let tail = events_after(br, Some(common.seq), VERDICT_EVENTS_MAX as usize)?.events;
        Ok(summarize(&prefix, &tail, seed_head(br)).map(|(s, _)| s).map_err(|e| e.to_string()))
    };
    Ok(match (summary(a)?, summary(b)?) {
        (Ok(sa), Ok(sb)) => match resolve(&sa, &sb) {
            Ok(r) => Verdict::Wins {
                winner: if r.winner.first == sa.first { Side::A } else { Side::B },
                decided_by: r.decided_by,
                a: sa,
                b: sb,
            },
            Err(e) => Verdict::Undecided { reason: e.to_string() },
        },
        (ra, rb) => Verdict::CannotWin {
            refused: [(Side::A, ra.err()), (Side::B, rb.err())]
                .into_iter()
                .filter_map(|(side, e)| e.map(|reason| Refusal { side, reason }))
                .collect(),
        },
    })
}
