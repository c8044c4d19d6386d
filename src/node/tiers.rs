//! Tier views: what each spore tier says, on one node.
//!
//! A node holds one chain. How far each tier reaches in it is given by its anchors
//! ([`Anchors::reach`](crate::core::gossip::Anchors::reach)): the **Primary** view is the registries as of the newest event a voter
//! attested (a Raft member's whole chain; elsewhere the newest checkpoint held), the **Seed**
//! view as of the newest event a verified seed or a checkpoint covers, the **Latent** view as
//! of the head (everything held, verified link by link). Views are monotone: Latent ⊇ Seed ⊇
//! Primary in history.
//!
//! A view that reaches the head is the live projection. One that stops below it is replayed
//! from the stored history ([`crate::store::ledger::History`]) without holding the ledger, and
//! cached: when an anchor moves, the next view continues from the cached one, so only the
//! events since the last view are applied.
//!
//! [`SporeSystem::answer`](crate::SporeSystem::answer) asks the tiers in authority order and
//! answers from the first that has an answer, saying which ([`Tiered`](crate::wire::query::Tiered)).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::core::projection::Projection;
use crate::core::sync;
use crate::core::types::{ChainPoint, SporeType};
use crate::error::Error;
use crate::raft::state_machine::SharedLedger;
use crate::store::ledger::LedgerLock;
use crate::wire::status::TierReach;

/// The tiers in authority order, highest first.
pub const TIERS: [SporeType; 3] = [SporeType::Primary, SporeType::Seed, SporeType::Latent];

/// One tier's view of the registries, from [`SporeSystem::spore`](crate::SporeSystem::spore).
#[derive(Clone, Debug)]
pub struct TierView {
    /// The tier.
    pub tier: SporeType,
    /// The newest event the view covers.
    pub at: ChainPoint,
    /// The registries as of `at`.
    pub projection: Arc<Projection>,
}

/// Where a tier's view is read from.
pub(crate) enum ViewSource {
    /// The live projection (the tier reaches the head).
    Live,
    /// A past point, replayed.
    Past(Arc<Projection>),
}

/// The cache of views replayed below the head, by tier.
#[derive(Default)]
pub(crate) struct TierViews {
    cached: Mutex<HashMap<SporeType, Arc<Projection>>>,
}

impl TierViews {
    /// Where `tier`'s view is, given how far each tier reaches; `None` when the tier has
    /// nothing on this node.
    #[tracing::instrument(level = "debug", skip(self, ledger))]
    pub(crate) fn source(
        &self,
        ledger: &SharedLedger,
        reach: TierReach,
        tier: SporeType,
    ) -> Result<Option<ViewSource>, Error> {
        let Some(seq) = reach.get(tier) else { return Ok(None) };
        let history = {
            let l = ledger.read_ledger()?;
            if l.head().is_some_and(|h| h.seq <= seq) {
                return Ok(Some(ViewSource::Live));
            }
            l.history()
        };
        // Continue from the newest cached view at or below `seq` (any tier's: the chain is one).
        let start = {
            let cached = sync::lock(&self.cached);
            if let Some(v) = cached.get(&tier).filter(|v| v.head().is_some_and(|h| h.seq == seq)) {
                return Ok(Some(ViewSource::Past(v.clone())));
            }
            cached
                .values()
                .filter(|v| v.head().is_some_and(|h| h.seq <= seq))
                .max_by_key(|v| v.head().map(|h| h.seq))
                .cloned()
        };
        let mut view = start.map(|v| (*v).clone()).unwrap_or_else(Projection::new);
        if view.head().is_some() && history.replay_to(&mut view, seq).is_err() {
            // The cached view is of a chain this ledger no longer holds (it was reset): start over.
            view = Projection::new();
        }
        if view.head().is_none() {
            history.replay_to(&mut view, seq)?;
        }
        if view.head().map(|h| h.seq) != Some(seq) {
            tracing::warn!(?tier, seq, ended = ?view.head().map(|h| h.seq), "the stored history ends before the tier's reach");
            return Err(Error::TierUnavailable(tier));
        }
        let view = Arc::new(view);
        sync::lock(&self.cached).insert(tier, view.clone());
        Ok(Some(ViewSource::Past(view)))
    }
}
