//! Reads: queries of the local projection (stale or linearizable), the spore tiers' views and
//! tiered answers, and subscriptions to committed events.

use openraft::async_runtime::WatchReceiver;
use std::sync::Arc;
use std::time::Duration;

use openraft::ServerState;
use tokio::sync::mpsc;

use super::status::leader_is_confirmed;
use super::SporeSystem;
use crate::core::event::ChainedEvent;
use crate::core::projection::{
    ChainHead, FoundService, NodeFilter, NodePage, NodeRecord, Page, Projection, ServiceFilter, ServicePage,
    ServiceRecord,
};
use crate::core::types::{NodeId, SporeType};
use crate::error::Error;
use crate::node::tiers::{TierView, ViewSource};
use crate::raft::error::ConsensusError;
use crate::raft::state_machine::SharedLedger;
use crate::raft::{ChainPoint, Raft, RpcRequest, RpcResponse};
use crate::store::ledger::{Ledger, LedgerLock};
use crate::wire::query::Tiered;
use crate::wire::rpc::PeerNode;
use crate::wire::status::TierReach;

/// Read consistency of a query.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Consistency {
    /// Answer from the local projection (may lag the leader slightly). The default.
    #[default]
    Stale,
    /// Confirm with the leader first and wait until the local projection has caught up.
    Linearizable,
}

impl SporeSystem {
    /// Runs `f` on the local projection (stale-ok): the newest snapshot published, read
    /// without the ledger's lock, so a long apply batch does not delay it. The first read
    /// after writes nobody read for 50 ms publishes the snapshot itself, under the ledger's
    /// read lock ([`ProjectionView`](crate::store::ledger::ProjectionView)).
    pub fn with_projection<R>(&self, f: impl FnOnce(&Projection) -> R) -> Result<R, Error> {
        let p = self.projection_snapshot()?;
        Ok(f(&p))
    }

    /// The newest published projection (stale-ok), to keep and read at leisure: it does not
    /// change, and holding it holds up no writer (but makes the writer's next change of each
    /// path it shares a copy: keep it as long as needed, not longer).
    pub fn projection_snapshot(&self) -> Result<Arc<Projection>, Error> {
        let r = self.running()?;
        Ok(r.view.load(&r.ledger)?)
    }

    /// Runs `f` on the ledger's own projection under its read lock, for the node's background
    /// tasks (the health-check runner's tick): it waits for a writer holding the ledger, but
    /// takes no snapshot, so it never makes the ledger publish one (which would make the
    /// writer's next change copy each path it shares: see
    /// [`ProjectionView`](crate::store::ledger::ProjectionView)).
    pub(super) fn with_ledger_projection<R>(&self, f: impl FnOnce(&Projection) -> R) -> Result<R, Error> {
        let r = self.running()?;
        let l = r.ledger.read_ledger()?;
        Ok(f(l.projection()))
    }

    /// Runs `f` on the projection with the requested consistency. Linearizable reads confirm
    /// leadership (on a follower: ask the leader for its read index) and wait until the local
    /// projection has applied it.
    pub async fn query<R>(&self, consistency: Consistency, f: impl FnOnce(&Projection) -> R) -> Result<R, Error> {
        if consistency == Consistency::Linearizable {
            let r = self.running()?;
            let index = match self.leader_node() {
                Some(l) if l.node == r.me.node => Some(
                    r.raft
                        .ensure_linearizable(openraft::ReadPolicy::ReadIndex)
                        .await
                        .map_err(ConsensusError::from)?
                        .index(),
                ),
                Some(l) => match r.transport.call(&l, RpcRequest::ReadIndex, r.timeouts.rpc).await {
                    Ok(RpcResponse::ReadIndex(Ok(i))) => i,
                    Ok(RpcResponse::ReadIndex(Err(failure))) => {
                        return Err(Error::Remote { peer: l.to_string(), failure })
                    }
                    Ok(other) => {
                        return Err(Error::UnexpectedResponse {
                            to: "a read index request",
                            got: format!("a {} answer", other.kind()),
                        })
                    }
                    Err(e) => return Err(Error::Transport(e)),
                },
                None => return Err(Error::NoLeader { waited: Duration::ZERO }),
            };
            if let Some(i) = index {
                r.raft
                    .wait(Some(r.timeouts.write))
                    .applied_index_at_least(Some(i), "linearizable read")
                    .await
                    .map_err(ConsensusError::from)?;
            }
        }
        self.with_projection(f)
    }

    /// Every node in the registry (stale-ok), unbounded: an in-process read of the caller's
    /// own projection; [`SporeSystem::nodes_page`] reads a large registry a page at a time.
    pub fn nodes(&self) -> Result<Vec<NodeRecord>, Error> {
        self.with_projection(|p| p.nodes().cloned().collect())
    }

    /// One node (stale-ok).
    pub fn node(&self, id: &NodeId) -> Result<Option<NodeRecord>, Error> {
        self.with_projection(|p| p.node(id).cloned())
    }

    /// Services with this name whose node is active (stale-ok): a node committed as offline
    /// offers nothing a caller can reach now. [`SporeSystem::find_services`] says more of
    /// each and can include them. The records are shared with the projection snapshot they
    /// were read from (nothing is copied).
    pub fn services_by_name(&self, name: &str) -> Result<Vec<Arc<ServiceRecord>>, Error> {
        self.find_records(&ServiceFilter::name(name))
    }

    /// Services providing this capability whose node is active (stale-ok; see
    /// [`SporeSystem::services_by_name`]).
    pub fn services_by_capability(&self, capability: &str) -> Result<Vec<Arc<ServiceRecord>>, Error> {
        self.find_records(&ServiceFilter::capability(capability))
    }

    /// The services `filter` selects (stale-ok), each with its node's status and trust: by
    /// name, capability, node and minimum trust; services of offline nodes only when
    /// `include_unavailable` asks for them (`core::projection::find`). Unbounded (an
    /// in-process read); [`SporeSystem::find_services_page`] reads a page at a time.
    pub fn find_services(&self, filter: &ServiceFilter) -> Result<Vec<FoundService>, Error> {
        self.with_projection(|p| p.find_services(filter))
    }

    /// One page of [`SporeSystem::find_services`] (stale-ok): at most `page.limit` services
    /// (0: [`PAGE_LIMIT_DEFAULT`](crate::core::limits::PAGE_LIMIT_DEFAULT), clipped to
    /// [`PAGE_LIMIT_MAX`](crate::core::limits::PAGE_LIMIT_MAX)) in service id order after the
    /// cursor `page.after`, and the next cursor (`None` on the last page). A walk that follows
    /// `next` returns every service present for the whole walk exactly once, whatever commits
    /// meanwhile (`core::projection::page`).
    pub fn find_services_page(&self, filter: &ServiceFilter, page: &Page<uuid::Uuid>) -> Result<ServicePage, Error> {
        self.with_projection(|p| p.find_services_page(filter, page))
    }

    /// One page of the nodes `filter` selects (stale-ok; name, capability, status, minimum
    /// trust), in node id order after the cursor `page.after`, paged as
    /// [`SporeSystem::find_services_page`] pages services.
    pub fn nodes_page(&self, filter: &NodeFilter, page: &Page<NodeId>) -> Result<NodePage, Error> {
        self.with_projection(|p| p.nodes_page(filter, page))
    }

    fn find_records(&self, filter: &ServiceFilter) -> Result<Vec<Arc<ServiceRecord>>, Error> {
        self.with_projection(|p| p.find_records(filter))
    }

    /// Nodes an authority committed as offline (stale-ok).
    pub fn offline_nodes(&self) -> Result<Vec<NodeRecord>, Error> {
        self.with_projection(|p| p.offline_nodes().cloned().collect())
    }

    /// How far each spore tier reaches in this node's chain (see [`crate::node::tiers`]).
    pub fn tier_reach(&self) -> Result<TierReach, Error> {
        let r = self.running()?;
        let l = r.ledger.read_ledger()?;
        Ok(tier_reach(&r.raft, &r.me, &l))
    }

    /// The view of one spore tier: the registries as of the newest event that tier covers on
    /// this node (Primary: what a voter attests; Seed: what a verified seed or a checkpoint
    /// covers; Latent: everything held). [`Error::TierUnavailable`] when the tier has nothing
    /// here, e.g. Primary on a latent node that has not received a checkpoint yet. A view
    /// below the head is replayed once from the stored history and cached; see
    /// [`crate::node::tiers`].
    pub fn spore(&self, tier: SporeType) -> Result<TierView, Error> {
        let r = self.running()?;
        match r.tier_views.source(&r.ledger, self.tier_reach()?, tier)? {
            None => Err(Error::TierUnavailable(tier)),
            Some(ViewSource::Live) => {
                self.with_projection(|p| TierView { tier, at: point_of(p), projection: Arc::new(p.clone()) })
            }
            Some(ViewSource::Past(p)) => Ok(TierView { tier, at: point_of(&p), projection: p }),
        }
    }

    /// Answers from the most authoritative tier that has an answer, and says which: `f` is
    /// asked of the Primary view, then the Seed view, then the Latent view, and the first
    /// `Some` is returned with its tier and chain point (`None`: no tier has an answer). A
    /// node attested by a voter is answered with Primary authority even when it was changed
    /// since by events only gossip carried; [`SporeSystem::with_projection`] reads the newest
    /// view instead.
    pub fn answer<T>(&self, f: impl Fn(&Projection) -> Option<T>) -> Result<Option<Tiered<T>>, Error> {
        let r = self.running()?;
        answer_tiered(&r.raft, &r.me, &r.ledger, &r.tier_views, f)
    }

    /// One node, from the most authoritative tier that has it (see [`SporeSystem::answer`]).
    pub fn node_answer(&self, id: &NodeId) -> Result<Option<Tiered<NodeRecord>>, Error> {
        self.answer(|p| p.node(id).cloned())
    }

    /// Services with this name, from the most authoritative tier that has any (see
    /// [`SporeSystem::answer`]).
    pub fn services_by_name_answer(&self, name: &str) -> Result<Option<Tiered<Vec<ServiceRecord>>>, Error> {
        self.answer(|p| Some(p.services_by_name(name).cloned().collect::<Vec<_>>()).filter(|v| !v.is_empty()))
    }

    /// Services providing this capability, from the most authoritative tier that has any
    /// (see [`SporeSystem::answer`]).
    pub fn services_by_capability_answer(&self, capability: &str) -> Result<Option<Tiered<Vec<ServiceRecord>>>, Error> {
        self.answer(|p| {
            Some(p.services_by_capability(capability).cloned().collect::<Vec<_>>()).filter(|v| !v.is_empty())
        })
    }

    /// The ledger head.
    pub fn head(&self) -> Result<Option<ChainHead>, Error> {
        self.with_projection(|p| p.head())
    }

    /// Up to `max` committed events from `from_seq` on, in order: fewer at the head, none past
    /// it (a page of history, read and checked on the blocking pool). A start below the history
    /// this node holds is [`Error::HistoryNotHeld`], or, when the node pruned it under its
    /// retention policy, [`LedgerError::HistoryArchived`](crate::store::error::LedgerError::HistoryArchived)
    /// naming the archives.
    pub async fn read_events(&self, from_seq: u64, max: u64) -> Result<Vec<ChainedEvent>, Error> {
        let ledger = self.running()?.ledger.clone();
        let first_held = ledger.read_ledger()?.history_from();
        if from_seq < first_held {
            // A pruned ledger names its archives; otherwise the history is still to come.
            return Err(match ledger.read_ledger()?.history_not_held() {
                Some(e @ crate::store::error::LedgerError::HistoryArchived { .. }) => e.into(),
                _ => Error::HistoryNotHeld { from: from_seq, first_held },
            });
        }
        if max == 0 {
            return Ok(Vec::new());
        }
        let to = from_seq.saturating_add(max - 1);
        tokio::task::spawn_blocking(move || Ok(ledger.read_ledger()?.read_range(from_seq, to)?))
            .await
            .map_err(|source| Error::Task { what: "event read", source })?
    }

    /// The committed chained events from `from_seq` on, in order, without gaps or duplicates,
    /// first from the ledger and then live as they commit. Resume after a restart by passing
    /// the last seen seq + 1. On a node still backfilling the history below a state-only seed,
    /// a subscription from below [`SporeStatus::history_from`](crate::wire::status::SporeStatus::history_from)
    /// ends with [`LedgerError::HistoryIncomplete`](crate::LedgerError::HistoryIncomplete).
    pub fn subscribe(&self, from_seq: u64) -> Result<Subscription, Error> {
        let r = self.running()?;
        let (tx, rx) = mpsc::channel(1024);
        // Weak: a subscription nobody reads must not keep the ledger (and its database lock)
        // alive after the system shut down.
        let ledger = Arc::downgrade(&r.ledger);
        let mut head_rx = r.head_rx.clone();
        tokio::spawn(async move {
            let mut next = from_seq;
            loop {
                let head = *head_rx.borrow_and_update();
                if let Some(h) = head.filter(|h| *h >= next) {
                    let to = h.min(next + crate::core::limits::REPLAY_CHUNK_EVENTS as u64 - 1);
                    // The system shut down: the subscription ends after what it delivered.
                    let Some(l2) = ledger.upgrade() else { return };
                    let page = tokio::task::spawn_blocking(move || Ok(l2.read_ledger()?.read_range(next, to)?)).await;
                    let page = page.unwrap_or_else(|source| Err(Error::Task { what: "subscription read", source }));
                    match page {
                        Ok(events) => {
                            for ev in events {
                                next = ev.seq + 1;
                                if tx.send(Ok(ev)).await.is_err() {
                                    return;
                                }
                            }
                        }
                        Err(e) => {
                            let _ = tx.send(Err(e)).await;
                            return;
                        }
                    }
                    continue;
                }
                if head_rx.changed().await.is_err() {
                    return;
                }
            }
        });
        Ok(Subscription { rx })
    }
}

/// The chain point of a projection's head (seq 0 with a zero hash before genesis).
fn point_of(p: &Projection) -> ChainPoint {
    p.head()
        .map(|h| ChainPoint { seq: h.seq, hash: h.hash })
        .unwrap_or(ChainPoint { seq: 0, hash: crate::core::types::ChainHash::ZERO })
}

/// Asks `f` of the tier views in authority order; see [`SporeSystem::answer`].
pub(super) fn answer_tiered<T>(
    raft: &Raft,
    me: &PeerNode,
    ledger: &SharedLedger,
    views: &crate::node::tiers::TierViews,
    f: impl Fn(&Projection) -> Option<T>,
) -> Result<Option<Tiered<T>>, Error> {
    let reach = {
        let l = ledger.read_ledger()?;
        tier_reach(raft, me, &l)
    };
    let confirmed = {
        let m = raft.metrics().borrow_watched().clone();
        m.current_leader.is_some() && (m.state != ServerState::Leader || leader_is_confirmed(raft, &m))
    };
    let mut asked = None;
    for tier in crate::node::tiers::TIERS {
        let stale = tier != SporeType::Primary || !confirmed;
        // Two tiers that reach the same event have the same view: ask it once.
        if reach.get(tier).is_none() || reach.get(tier) == asked {
            continue;
        }
        asked = reach.get(tier);
        let found = match views.source(ledger, reach, tier)? {
            None => None,
            Some(ViewSource::Live) => {
                let l = ledger.read_ledger()?;
                let p = l.projection();
                f(p).map(|value| Tiered { value, tier, at: point_of(p), stale })
            }
            Some(ViewSource::Past(p)) => f(&p).map(|value| Tiered { value, tier, at: point_of(&p), stale }),
        };
        if found.is_some() {
            return Ok(found);
        }
    }
    Ok(None)
}

/// Whether `me` is in the Raft membership (its chain is Primary to the head).
fn is_raft_member(raft: &Raft, me: &PeerNode) -> bool {
    raft.metrics().borrow_watched().membership_config.membership().nodes().any(|(_, n)| n.node == me.node)
}

/// How far each tier reaches in the chain `l` holds, as seen by `me`.
fn tier_reach(raft: &Raft, me: &PeerNode, l: &Ledger) -> TierReach {
    let anchors = crate::core::gossip::Anchors {
        checkpoint: l.anchor(),
        seed: l.seed_anchor().ok().flatten(),
        raft_member: is_raft_member(raft, me),
    };
    TierReach::of(&anchors, l.head().map(|h| ChainPoint { seq: h.seq, hash: h.hash }))
}

/// A stream of committed events; see [`SporeSystem::subscribe`].
pub struct Subscription {
    rx: mpsc::Receiver<Result<ChainedEvent, Error>>,
}

impl Subscription {
    /// The next committed event; `None` once the system has shut down.
    pub async fn next(&mut self) -> Option<Result<ChainedEvent, Error>> {
        self.rx.recv().await
    }
}
