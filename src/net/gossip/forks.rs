//! Fork evidence from gossip: checked, oriented to this node's chain and recorded, and the
//! peers seen holding the other side remembered for the split-brain resolver.

use super::GossipService;
use crate::core::gossip::ForkEvidence;
use crate::core::keys::verify_many;
use crate::core::sync;
use crate::core::types::{ChainHash, NodeId};

/// Most forks whose holders a node remembers, and most holders per fork.
const FORK_HOLDERS_MAX: usize = 16;

impl GossipService {
    /// Nodes seen holding the other side of a fork at `seq` whose event there hashes to
    /// `hash` (bounded; in memory only: gossip finds them again after a restart).
    pub fn fork_holders(&self, seq: u64, hash: &ChainHash) -> Vec<NodeId> {
        sync::lock(&self.fork_holders).get(&(seq, *hash)).cloned().unwrap_or_default()
    }

    /// Checks fork evidence that came from `peer` (links, network, both signatures), orients
    /// it so `ours` is the event of our own chain when we hold one of the two, records it and
    /// notes which side `peer` holds.
    pub(super) fn record_fork_from(&self, evidence: &ForkEvidence, peer: NodeId) -> bool {
        if evidence.check().is_err() {
            return false;
        }
        let mine = match self.ledger.read() {
            Ok(l) => l.get(evidence.seq()).ok().flatten().map(|e| e.hash),
            Err(_) => return false,
        };
        let Some(mine) = mine else {
            // A node whose chain does not reach the fork (no chain yet, or a shorter one, as a
            // node that just yielded a split-brain and is catching up) is on neither side yet:
            // which event is ours is unknown, and a guess stored now would name our own event
            // as the other chain's once the chain grows, sending the resolver after a fork
            // between our chain and itself for good. It learns of the fork again once its
            // chain reaches it, if it is still unsettled.
            return true;
        };
        let mut e = evidence.clone();
        if mine == e.theirs.hash {
            std::mem::swap(&mut e.ours, &mut e.theirs);
        }
        if self.fingerprint_is_other(&e) || !self.record_fork(&e) {
            return false;
        }
        // The peer holds the side that is not ours, unless it handed over evidence of a fork
        // it is not part of; either way it knows where `theirs` can be found.
        let mut holders = sync::lock(&self.fork_holders);
        if holders.len() < FORK_HOLDERS_MAX || holders.contains_key(&(e.seq(), e.theirs.hash)) {
            let list = holders.entry((e.seq(), e.theirs.hash)).or_default();
            if !list.contains(&peer) && list.len() < FORK_HOLDERS_MAX {
                list.push(peer);
            }
        }
        true
    }

    /// Whether evidence belongs to a network other than ours (evidence about another
    /// network is not ours to keep).
    fn fingerprint_is_other(&self, e: &ForkEvidence) -> bool {
        let ours = self.ledger.read().ok().and_then(|l| l.fingerprint());
        ours.is_some_and(|f| f != e.ours.event.fingerprint)
    }

    /// Checks both signatures of fork evidence and records it in the ledger.
    fn record_fork(&self, evidence: &ForkEvidence) -> bool {
        if evidence.check().is_err() {
            return false;
        }
        let msgs = [evidence.ours.event.signing_message(), evidence.theirs.event.signing_message()];
        let items = [
            (evidence.ours.event.author, msgs[0].as_slice(), evidence.ours.event.signature),
            (evidence.theirs.event.author, msgs[1].as_slice(), evidence.theirs.event.signature),
        ];
        let ok = verify_many(&mut sync::lock(&self.cache), &items);
        if ok.iter().any(|v| !v) {
            return false;
        }
        match self.ledger.read().map(|l| crate::forensics::forks::record(&l, evidence)) {
            Ok(Ok(new)) => {
                if new {
                    tracing::error!(seq = evidence.seq(), ours = %evidence.ours.hash.short(), theirs = %evidence.theirs.hash.short(),
                        "FORK: a peer holds a different chain of this network; evidence stored");
                }
                true
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "could not store fork evidence");
                false
            }
            Err(_) => false,
        }
    }
}
