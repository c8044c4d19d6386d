//! The tiers of a stored chain: [`Anchors`] say how far Primary, Seed and Latent authority
//! reach, and the tier of each stored event.

use serde::{Deserialize, Serialize};

use crate::core::types::{ChainPoint, SporeType};

/// How far each tier reaches in a chain a node holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Anchors {
    /// The newest voter-signed checkpoint event held (everything up to it is Primary).
    pub checkpoint: Option<ChainPoint>,
    /// The head of the verified seed this chain was imported from (Seed up to it).
    pub seed: Option<ChainPoint>,
    /// Whether this node's chain is committed by Raft here (a voter or learner: Primary up to
    /// its head).
    pub raft_member: bool,
}

impl Anchors {
    /// The tier of the event at `seq` in a chain whose head is `head`.
    pub fn tier_of(&self, seq: u64, head: Option<ChainPoint>) -> Option<SporeType> {
        let head = head?;
        if seq > head.seq {
            return None;
        }
        if self.raft_member || self.checkpoint.is_some_and(|c| seq <= c.seq) {
            Some(SporeType::Primary)
        } else if self.seed.is_some_and(|s| seq <= s.seq) {
            Some(SporeType::Seed)
        } else {
            Some(SporeType::Latent)
        }
    }

    /// The tier of the head: the authority of the view as a whole.
    pub fn head_tier(&self, head: Option<ChainPoint>) -> Option<SporeType> {
        head.and_then(|h| self.tier_of(h.seq, Some(h)))
    }

    /// How far `tier`'s view reaches in a chain whose head is `head`: the newest sequence
    /// number whose authority is at least `tier` (a Seed view includes what a checkpoint
    /// anchors; a Latent view is everything held). `None` when no event has that authority.
    pub fn reach(&self, tier: SporeType, head: Option<ChainPoint>) -> Option<u64> {
        let head = head?;
        let primary = if self.raft_member { Some(head.seq) } else { self.checkpoint.map(|c| c.seq.min(head.seq)) };
        let seed = self.seed.map(|s| s.seq.min(head.seq));
        match tier {
            SporeType::Primary => primary,
            SporeType::Seed => primary.max(seed),
            SporeType::Latent => Some(head.seq),
        }
    }
}
