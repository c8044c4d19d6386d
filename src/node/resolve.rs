//! Split-brain resolution, the I/O side: [`core::authority`](crate::core::authority) decides,
//! this module gathers the two branches and carries the decision out.
//!
//! A Raft member that holds unsettled fork evidence (gossip found a second chain of this
//! network, see `net::gossip`) runs, once a second:
//!
//! 1. asks a node that holds the other chain (one gossip saw it on) for chain points
//!    ([`Query::ChainAt`]) and finds the fork sequence number by binary search;
//! 2. reads both branches after the fork — its own from the ledger, the other one by
//!    [`Query::Events`] (at most [`BRANCH_EVENTS_MAX`] events) — and the common prefix's
//!    projection by replay;
//! 3. summarises both with [`summarize`] (every link, hash, signature and rule checked: a
//!    forged branch cannot win) and picks the winner with [`resolve`];
//! 4. **winner, leader**: re-proposes the losing branch's events (signed by their authors, so
//!    they are the same events) except checkpoints and resolutions of that branch and events
//!    already in its own branch; the ones its rules refuse are the *conflicts*, reported in a
//!    JSON file under `DATA_DIR/forks/`; then commits a
//!    [`EventBody::SplitBrainResolved`] event recording the fork point, both heads and the
//!    counts, and marks the evidence settled;
//! 5. **loser**: waits until the winning branch holds a resolution event that names its
//!    branch, checks it, and asks to *yield*: [`SporeSystem::yield_to_winner`](crate::SporeSystem::yield_to_winner)
//!    exports the losing chain as a seed file and keeps its ledger directory under
//!    `DATA_DIR/forks/` (never dropped), then joins the winner.

use openraft::async_runtime::WatchReceiver;
use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tracing::Instrument;

use crate::core::authority::{resolve, summarize, BranchSummary, Resolution};
use crate::core::event::{ChainedEvent, EventBody, SignedEvent};
use crate::core::gossip::ForkEvidence;
use crate::core::keys::NodeKey;
use crate::core::provisional::EventId;
use crate::core::sync;
use crate::core::types::{ChainPoint, Timestamp};
use crate::error::Error;
use crate::forensics::forks::Settled;
use crate::net::gossip::GossipService;
use crate::net::SharedTransport;
use crate::node::SplitBrainError;
use crate::raft::proposer::Proposer;
use crate::raft::state_machine::SharedLedger;
use crate::raft::{raft_id, Raft, RpcRequest, RpcResponse, SporeResponse};
use crate::store::ledger::LedgerLock;
use crate::store::replay::{ReplayOptions, StopAt};
use crate::wire::query::{Query, QueryAnswer};
use crate::wire::rpc::PeerNode;

pub use crate::core::authority::BRANCH_EVENTS_MAX;

/// A loser's instruction to yield: the winning branch's node to join and the decision.
#[derive(Clone, Debug, Serialize)]
pub struct YieldPlan {
    /// A node of the winning chain.
    pub winner_node: PeerNode,
    /// The decision (as this node computed and checked it).
    pub resolution: Resolution,
    /// The resolution event in the winning chain.
    pub recorded_at: ChainPoint,
}

/// One event of the losing branch that the winner's rules refused.
#[derive(Clone, Debug, Serialize)]
pub struct Conflict {
    /// Its sequence number on the losing branch.
    pub seq: u64,
    /// Its kind.
    pub kind: &'static str,
    /// Who signed it.
    pub author: String,
    /// Why the winner refused it.
    pub reason: String,
}

/// After yielding, the Raft peers this node refuses: the members of the losing chain's Raft,
/// as long as they are neither members of this node's own Raft nor of the winner's.
///
/// A node that yields starts again on an empty ledger at the same address, and its old
/// group's members that have not yielded yet still run the losing chain's Raft with it in
/// their membership. Their leader's heartbeats and appends (or a candidate's vote request,
/// which an empty log grants) would make the fresh node a follower of the losing chain again:
/// its ledger refilled with the losing branch, its join routed to the losing leader, the
/// winner's leader fought over its log. Refusing them until they have yielded and joined the
/// winner themselves (then they are members of this node's Raft) keeps it on the winner's.
/// The losing members are also kept in the new ledger (`Ledger::refuse_branch`) and fenced
/// again when the node restarts; the winner's members are learned in memory at the join.
#[derive(Default)]
pub(crate) struct YieldFence {
    state: Mutex<FenceState>,
}

#[derive(Default)]
struct FenceState {
    /// Members of the losing chain's Raft when this node yielded.
    losing: std::collections::BTreeSet<crate::core::types::NodeId>,
    /// Members of the winner's Raft as its node reported them when this node joined.
    winner: std::collections::BTreeSet<crate::core::types::NodeId>,
}

impl YieldFence {
    /// Fences the losing chain's Raft members `losing` (this node yields away from them).
    pub(crate) fn fence(&self, losing: impl IntoIterator<Item = crate::core::types::NodeId>) {
        let mut s = sync::lock(&self.state);
        s.losing.extend(losing);
        s.winner.clear();
    }

    /// The winner's Raft members as reported by its node: they are let through even if they
    /// were on the losing side once (they yielded first and joined it).
    pub(crate) fn winner_members(&self, members: impl IntoIterator<Item = crate::core::types::NodeId>) {
        sync::lock(&self.state).winner.extend(members);
    }

    /// Whether a Raft request from `from` is refused, given whether `from` is a member of this
    /// node's Raft now.
    pub(crate) fn refuses(&self, from: &crate::core::types::NodeId, member_here: impl FnOnce() -> bool) -> bool {
        let s = sync::lock(&self.state);
        s.losing.contains(from) && !s.winner.contains(from) && !member_here()
    }
}

/// State shared between the resolver task and the system.
#[derive(Default)]
pub(crate) struct ResolverState {
    pub(crate) yield_plan: Mutex<Option<YieldPlan>>,
}

pub(crate) struct Resolver {
    pub(crate) raft: Raft,
    pub(crate) proposer: Proposer,
    pub(crate) transport: SharedTransport,
    pub(crate) ledger: SharedLedger,
    pub(crate) gossip: Arc<GossipService>,
    pub(crate) me: PeerNode,
    pub(crate) key: NodeKey,
    pub(crate) rpc_timeout: Duration,
    pub(crate) data_dir: PathBuf,
    pub(crate) state: Arc<ResolverState>,
    pub(crate) modes: crate::node::SharedModes,
}

impl Resolver {
    pub(crate) fn spawn(self) -> tokio::task::JoinHandle<()> {
        let span = tracing::info_span!("split_brain_resolver", node = %self.me.node.short());
        tokio::spawn(
            async move {
                loop {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    if let Err(e) = self.tick().await {
                        tracing::warn!(error = %e, "split-brain resolution step failed; retrying");
                    }
                }
            }
            .instrument(span),
        )
    }

    fn is_leader(&self) -> bool {
        self.raft.metrics().borrow_watched().current_leader == Some(raft_id(&self.me.node))
    }

    /// One step. Every node with gossip runs it: a Raft member's leader decides and records;
    /// any node, Raft member or latent, whose chain lost learns it here and gets a yield plan.
    async fn tick(&self) -> Result<(), Error> {
        let pending = {
            let l = self.ledger.read_ledger()?;
            crate::forensics::forks::unresolved(&l)?
        };
        let Some(evidence) = pending.into_iter().next() else { return Ok(()) };
        // The mode machine sees the fork before it is settled, however fast that goes: the
        // Split-Brain Resolution transition is logged and kept on every node that takes part.
        crate::node::compute_status(&self.raft, &self.ledger, &self.me, Some(&self.gossip), &self.modes)?;
        // Nodes gossip saw holding the other chain first, then every other peer: the one
        // asked must hold exactly the other event at the evidence's sequence number.
        let holders = self.gossip.fork_holders(evidence.seq(), &evidence.theirs.hash);
        let mut candidates = self.gossip.known_peers();
        candidates.sort_by_key(|c| !holders.contains(&c.node));
        for other in candidates {
            match self.chain_at(&other, evidence.seq()).await {
                Ok((Some(at), _)) if at.hash == evidence.theirs.hash => return self.settle(&evidence, &other).await,
                Ok(_) => {}
                Err(e) => tracing::debug!(peer = %other.node.short(), error = %e, "peer did not answer"),
            }
        }
        // Nobody holds the other side any more: if this chain already records a resolution of
        // a fork at or below the evidence, and the evidence's other side is not in this chain,
        // it is a branch that was folded in (its nodes yielded).
        let ledger = self.ledger.clone();
        let e = evidence.clone();
        let recorded = tokio::task::spawn_blocking(move || -> Result<Option<ChainPoint>, Error> {
            let l = ledger.read_ledger()?;
            let mine = l.get(e.seq())?.map(|x| x.hash);
            if mine != Some(e.ours.hash) && mine != Some(e.theirs.hash) {
                return Ok(None);
            }
            let Some(head) = l.head() else { return Ok(None) };
            let mut from = 1;
            while from <= head.seq {
                let to = head.seq.min(from + 1023);
                for ev in l.read_range(from, to)? {
                    if matches!(&ev.event.body, EventBody::SplitBrainResolved(r) if r.fork_seq <= e.seq()) {
                        return Ok(Some(ChainPoint { seq: ev.seq, hash: ev.hash }));
                    }
                }
                from = to + 1;
            }
            Ok(None)
        })
        .await
        .map_err(|source| Error::Task { what: "split-brain resolver", source })??;
        match recorded {
            Some(at) => {
                let l = self.ledger.read_ledger()?;
                crate::forensics::forks::mark_resolved(
                    &l,
                    &evidence,
                    &Settled { resolution: None, recorded_at: Some(at) },
                )?;
                tracing::info!(
                    seq = evidence.seq(),
                    at = at.seq,
                    "fork evidence settled by the resolution recorded in this chain"
                );
            }
            None => tracing::debug!(seq = evidence.seq(), "no reachable holder of the other chain yet"),
        }
        Ok(())
    }

    async fn chain_at(&self, other: &PeerNode, seq: u64) -> Result<(Option<ChainPoint>, Option<ChainPoint>), Error> {
        match self.transport.call(other, RpcRequest::Query(Query::ChainAt(seq)), self.rpc_timeout).await? {
            RpcResponse::Query(Ok(QueryAnswer::Chain { at, head, .. })) => Ok((at, head)),
            RpcResponse::Query(Err(failure)) => {
                Err(SplitBrainError::PeerRefused { peer: other.addr.clone(), failure }.into())
            }
            _ => Err(SplitBrainError::UnexpectedAnswer { peer: other.addr.clone() }.into()),
        }
    }

    fn our_hash(&self, seq: u64) -> Result<Option<crate::core::types::ChainHash>, Error> {
        let l = self.ledger.read_ledger()?;
        Ok(l.get(seq)?.map(|e| e.hash))
    }

    /// The first sequence number where our chain and `other`'s differ, at or before `upto`
    /// (where they are known to differ), and `other`'s head.
    async fn fork_seq(&self, other: &PeerNode, upto: u64) -> Result<(u64, ChainPoint), Error> {
        let (at, head) = self.chain_at(other, 0).await?;
        let head = head.ok_or_else(|| SplitBrainError::NoChain { peer: other.addr.clone() })?;
        if at.map(|p| p.hash) != self.our_hash(0)? {
            return Err(SplitBrainError::OtherNetwork { peer: other.addr.clone() }.into());
        }
        // Same at lo, different at hi.
        let (mut lo, mut hi) = (0u64, upto);
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            let (theirs, _) = self.chain_at(other, mid).await?;
            if theirs.is_some() && theirs.map(|p| p.hash) == self.our_hash(mid)? {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        Ok((hi, head))
    }

    async fn their_branch(&self, other: &PeerNode, from: u64, to: u64) -> Result<Vec<ChainedEvent>, Error> {
        let mut out = Vec::new();
        let mut next = from;
        while next <= to {
            let max = crate::wire::query::EVENTS_PER_QUERY_MAX;
            let page = match self
                .transport
                .call(other, RpcRequest::Query(Query::Events { from: next, max }), self.rpc_timeout)
                .await?
            {
                RpcResponse::Query(Ok(QueryAnswer::Events(ev))) => ev,
                RpcResponse::Query(Err(failure)) => {
                    return Err(SplitBrainError::PeerRefused { peer: other.addr.clone(), failure }.into())
                }
                _ => return Err(SplitBrainError::UnexpectedAnswer { peer: other.addr.clone() }.into()),
            };
            let Some(last) = page.last() else { break };
            if page.first().map(|e| e.seq) != Some(next) || last.seq < next {
                return Err(SplitBrainError::OutOfOrder { peer: other.addr.clone() }.into());
            }
            next = last.seq + 1;
            out.extend(page.into_iter().filter(|e| e.seq <= to));
        }
        Ok(out)
    }

    async fn settle(&self, evidence: &ForkEvidence, other: &PeerNode) -> Result<(), Error> {
        let (fork, their_head) = self.fork_seq(other, evidence.seq()).await?;
        let our_head = {
            let l = self.ledger.read_ledger()?;
            l.head().map(|h| h.seq).unwrap_or(0)
        };
        if their_head.seq.saturating_sub(fork) >= BRANCH_EVENTS_MAX
            || our_head.saturating_sub(fork) >= BRANCH_EVENTS_MAX
        {
            tracing::error!(fork, "a branch after the fork is too long to resolve automatically; use `spore diff`");
            return Ok(());
        }
        let theirs = self.their_branch(other, fork, their_head.seq).await?;
        let ledger = self.ledger.clone();
        let (prefix, ours) = tokio::task::spawn_blocking(
            move || -> Result<(crate::core::projection::Projection, Vec<ChainedEvent>), Error> {
                let l = ledger.read_ledger()?;
                let (prefix, _) = l.replay(&ReplayOptions { audit: false, stop: StopAt::Seq(fork - 1) })?;
                let head = l.head().map(|h| h.seq).unwrap_or(0);
                Ok((prefix, l.read_range(fork, head)?))
            },
        )
        .await
        .map_err(|source| Error::Task { what: "split-brain resolver", source })??;
        // No seed evidence on either side: a seed this node imported is known to it alone
        // (and may have been accepted with a single signature), so counting it would let the
        // decision depend on which node decides. Checkpoints are in the chains both sides
        // read; `spore diff` weighs quorum-signed seed files, which anyone can check.
        let (ours_s, _) = summarize(&prefix, &ours, None).map_err(SplitBrainError::OwnBranch)?;
        let theirs_s = match summarize(&prefix, &theirs, None) {
            Ok((s, _)) => s,
            Err(e) => {
                // A branch that does not check cannot win; the evidence is settled for us.
                tracing::error!(fork, error = %e, peer = %other.node.short(), "the other chain does not check: it cannot win");
                return Ok(());
            }
        };
        let res = resolve(&ours_s, &theirs_s).map_err(SplitBrainError::Undecided)?;
        tracing::warn!(fork, winner = %res.winner.first.hash.short(), loser = %res.loser.first.hash.short(), by = %res.decided_by,
            "split-brain: winner chosen");
        if res.winner.first == ours_s.first {
            self.win(evidence, &res, &ours, &theirs).await
        } else {
            self.lose(&res, &theirs, other)
        }
    }

    /// Whether `branch` holds a resolution of the fork that folded in `loser`.
    fn recorded(branch: &[ChainedEvent], fork: u64, loser: &BranchSummary) -> Option<ChainPoint> {
        branch.iter().find_map(|e| match &e.event.body {
            EventBody::SplitBrainResolved(r) if r.fork_seq == fork && r.loser_first == loser.first.hash => {
                Some(ChainPoint { seq: e.seq, hash: e.hash })
            }
            _ => None,
        })
    }

    async fn win(
        &self,
        evidence: &ForkEvidence,
        res: &Resolution,
        ours: &[ChainedEvent],
        theirs: &[ChainedEvent],
    ) -> Result<(), Error> {
        let fork = res.winner.fork_seq;
        if let Some(at) = Self::recorded(ours, fork, &res.loser) {
            return self.mark_settled(evidence, res, Some(at), theirs);
        }
        if !self.is_leader() {
            return Ok(()); // The leader re-proposes and records.
        }
        let present: HashSet<EventId> = ours.iter().map(|e| EventId::of(&e.event)).collect();
        let (mut adopted, mut conflicts, mut stale_liveness) = (0u64, Vec::new(), 0u64);
        for ev in theirs {
            if matches!(
                ev.event.body,
                EventBody::Checkpoint { .. }
                    | EventBody::StateCheckpoint { .. }
                    | EventBody::SplitBrainResolved(_)
                    | EventBody::Genesis { .. }
            ) || present.contains(&EventId::of(&ev.event))
            {
                continue;
            }
            // Liveness transitions say who the losing side could reach while cut off — the
            // winner's own nodes among them. Folded in, they would mark reachable nodes
            // offline; the winner's SWIM commits what holds now.
            if matches!(ev.event.body, EventBody::NodeWentOffline { .. } | EventBody::NodeBackOnline { .. }) {
                stale_liveness += 1;
                continue;
            }
            match self.proposer.propose(ev.event.clone()).await? {
                SporeResponse::Applied(_) => adopted += 1,
                SporeResponse::Rejected(r) => conflicts.push(Conflict {
                    seq: ev.seq,
                    kind: ev.event.body.kind(),
                    author: ev.event.author.to_string(),
                    reason: r.to_string(),
                }),
                other => {
                    let got = format!("{other:?}");
                    return Err(SplitBrainError::UnexpectedCommit { to: "a re-proposal", got }.into());
                }
            }
        }
        let (head, fp) = {
            let l = self.ledger.read_ledger()?;
            (l.head(), l.fingerprint())
        };
        let (Some(head), Some(fp)) = (head, fp) else { return Err(SplitBrainError::NoOwnChain.into()) };
        let body = EventBody::SplitBrainResolved(Box::new(crate::core::event::SplitBrainResolution {
            fork_seq: fork,
            winner_first: res.winner.first.hash,
            winner_head_seq: head.seq,
            winner_head: head.hash,
            loser_first: res.loser.first.hash,
            loser_head_seq: res.loser.head.seq,
            loser_head: res.loser.head.hash,
            decided_by: res.decided_by.to_string(),
            adopted,
            conflicts: conflicts.len() as u64,
        }));
        let at = match self.proposer.propose(SignedEvent::sign(&self.key, fp, Timestamp::now(), body)).await? {
            SporeResponse::Applied(p) => p,
            SporeResponse::Rejected(r) => return Err(SplitBrainError::ResolutionRejected(r).into()),
            other => {
                let got = format!("{other:?}");
                return Err(SplitBrainError::UnexpectedCommit { to: "the resolution event", got }.into());
            }
        };
        self.write_report(res, adopted, &conflicts, stale_liveness, at)?;
        tracing::warn!(
            fork,
            adopted,
            conflicts = conflicts.len(),
            at = at.seq,
            "split-brain resolved: the losing branch is folded in"
        );
        self.mark_settled(evidence, res, Some(at), theirs)
    }

    fn write_report(
        &self,
        res: &Resolution,
        adopted: u64,
        conflicts: &[Conflict],
        stale_liveness: u64,
        at: ChainPoint,
    ) -> Result<(), Error> {
        let dir = self.data_dir.join("forks");
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::Ledger(crate::error::LedgerError::Io { path: dir.clone(), source: e }))?;
        let path = dir.join(format!("resolution-{}-{}.json", res.winner.fork_seq, res.loser.first.hash.short()));
        let report = serde_json::json!({
            "fork_seq": res.winner.fork_seq, "decided_by": res.decided_by, "winner": res.winner, "loser": res.loser,
            "adopted": adopted, "conflicts": conflicts, "skipped_liveness_transitions": stale_liveness, "recorded_at": at,
        });
        let bytes = serde_json::to_vec_pretty(&report).map_err(SplitBrainError::Report)?;
        std::fs::write(&path, bytes).map_err(|e| Error::Ledger(crate::error::LedgerError::Io { path, source: e }))
    }

    /// Marks `evidence`, and every other unsettled evidence whose other side lies on the
    /// losing branch, settled.
    fn mark_settled(
        &self,
        evidence: &ForkEvidence,
        res: &Resolution,
        at: Option<ChainPoint>,
        losing: &[ChainedEvent],
    ) -> Result<(), Error> {
        let hashes: HashSet<_> = losing.iter().map(|e| e.hash).collect();
        let how = Settled { resolution: Some(res.clone()), recorded_at: at };
        let l = self.ledger.read_ledger()?;
        crate::forensics::forks::mark_resolved(&l, evidence, &how)?;
        for e in crate::forensics::forks::unresolved(&l)? {
            if hashes.contains(&e.theirs.hash) || hashes.contains(&e.ours.hash) {
                crate::forensics::forks::mark_resolved(&l, &e, &how)?;
            }
        }
        Ok(())
    }

    fn lose(&self, res: &Resolution, theirs: &[ChainedEvent], other: &PeerNode) -> Result<(), Error> {
        let Some(at) = Self::recorded(theirs, res.winner.fork_seq, &res.loser) else {
            tracing::info!(
                fork = res.winner.fork_seq,
                "this chain lost; waiting for the winner to record the resolution"
            );
            return Ok(());
        };
        // Join through the authority that recorded the resolution (a member of the winning
        // cluster); the peer asked may be a latent node, which cannot add anyone to Raft.
        let author = theirs.iter().find(|e| e.seq == at.seq).map(|e| e.event.author);
        let winner_node =
            self.gossip.known_peers().into_iter().find(|p| Some(p.node) == author).unwrap_or_else(|| other.clone());
        let plan = YieldPlan { winner_node, resolution: res.clone(), recorded_at: at };
        let mut slot = sync::lock(&self.state.yield_plan);
        if slot.is_none() {
            tracing::warn!(fork = res.winner.fork_seq, winner = %other.node.short(), "this chain lost the split-brain; ready to yield to the winner");
        }
        *slot = Some(plan);
        Ok(())
    }
}
